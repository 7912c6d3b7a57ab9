//! Where a site's requests go, and which Host values belong to it.

use std::time::Duration;

use http::{uri::Authority, uri::PathAndQuery, Uri};

use crate::config::SiteConfig;

/// The HTTP side of one site.
#[derive(Debug)]
pub struct Route {
    /// The `site` label: the first server name.
    pub label: String,
    /// Lowercase server names.
    pub names: Vec<String>,
    pub upstream: Upstream,
    pub header_timeout: Duration,
    pub idle_timeout: Duration,
    pub upstream_timeout: Duration,
}

impl Route {
    pub fn new(config: &SiteConfig) -> Result<Route, String> {
        Ok(Route {
            label: config.label().to_owned(),
            names: config
                .server_names
                .iter()
                .map(|n| n.trim_end_matches('.').to_ascii_lowercase())
                .collect(),
            upstream: Upstream::parse(&config.upstream)?,
            header_timeout: config.header_timeout,
            idle_timeout: config.idle_timeout,
            upstream_timeout: config.upstream_timeout,
        })
    }

    pub fn serves(&self, host: &str) -> bool {
        self.names.iter().any(|n| n == host)
    }
}

/// `upstream = "http://host:port[/prefix]"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstream {
    authority: Authority,
    /// Empty, or a path starting with '/' and not ending with one.
    prefix: String,
}

impl Upstream {
    pub fn parse(text: &str) -> Result<Upstream, String> {
        let uri: Uri = text
            .parse()
            .map_err(|e| format!("{text:?} is not a URL: {e}"))?;
        match uri.scheme_str() {
            Some("http") => {}
            // The upstream is the local application; TLS to it would only
            // add a second handshake per pooled connection on loopback.
            Some("https") => {
                return Err(format!(
                "{text:?}: https upstreams are not supported; use http:// to the local application"
            ))
            }
            _ => return Err(format!("{text:?} must start with http://")),
        }
        let authority = uri
            .authority()
            .cloned()
            .ok_or_else(|| format!("{text:?} has no host"))?;
        if uri.query().is_some() {
            return Err(format!("{text:?}: an upstream URL cannot have a query"));
        }
        let prefix = uri.path().trim_end_matches('/').to_owned();
        Ok(Upstream { authority, prefix })
    }

    /// The upstream's host and port: the pool key for its connections.
    pub fn authority(&self) -> &Authority {
        &self.authority
    }

    /// The origin-form target (`/prefix/path?query`) for a request's path
    /// and query; the authority goes separately to the upstream client.
    pub fn target_for(&self, path: Option<&PathAndQuery>) -> Result<Uri, http::Error> {
        match path {
            // No prefix, or a non-origin form (`*` for OPTIONS): the
            // client's path and query go as they are, sharing their bytes.
            Some(path) if self.prefix.is_empty() || !path.as_str().starts_with('/') => {
                Ok(Uri::from(path.clone()))
            }
            None if self.prefix.is_empty() => Ok(Uri::from_static("/")),
            _ => {
                let path = path.map_or("/", PathAndQuery::as_str);
                let joined = format!("{}{path}", self.prefix);
                Ok(Uri::from(PathAndQuery::try_from(joined)?))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_targets_join_prefix_and_path() {
        let table: [(&str, Option<&str>, &str); 6] = [
            ("http://127.0.0.1:8080/app/", Some("/x?y=1"), "/app/x?y=1"),
            ("http://127.0.0.1:8080/app", None, "/app/"),
            ("http://127.0.0.1:8080", Some("/x?y=1"), "/x?y=1"),
            ("http://127.0.0.1:8080", None, "/"),
            ("http://127.0.0.1:8080/", Some("/"), "/"),
            ("http://127.0.0.1:8080/app", Some("*"), "*"),
        ];
        for (upstream, path, want) in table {
            let up = Upstream::parse(upstream).unwrap();
            let path: Option<PathAndQuery> = path.map(|p| p.parse().unwrap());
            let target = up.target_for(path.as_ref()).unwrap();
            assert_eq!(target.to_string(), want, "{upstream} {path:?}");
            assert!(target.authority().is_none(), "origin-form: {target}");
            assert_eq!(up.authority().as_str(), "127.0.0.1:8080");
        }
        assert!(Upstream::parse("ftp://x").is_err());
        assert!(Upstream::parse("https://127.0.0.1").is_err());
    }
}
