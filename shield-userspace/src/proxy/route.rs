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

    /// The upstream URI for a request's path and query.
    pub fn uri_for(&self, path: Option<&PathAndQuery>) -> Result<Uri, http::Error> {
        let path = path.map(PathAndQuery::as_str).unwrap_or("/");
        let path = if path.starts_with('/') {
            format!("{}{path}", self.prefix)
        } else {
            // `*` (OPTIONS) and other non-origin forms go as they are.
            path.to_owned()
        };
        Uri::builder()
            .scheme("http")
            .authority(self.authority.clone())
            .path_and_query(path)
            .build()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_joins_prefix_and_path() {
        let up = Upstream::parse("http://127.0.0.1:8080/app/").unwrap();
        let pq: PathAndQuery = "/x?y=1".parse().unwrap();
        assert_eq!(
            up.uri_for(Some(&pq)).unwrap().to_string(),
            "http://127.0.0.1:8080/app/x?y=1"
        );
        let bare = Upstream::parse("http://127.0.0.1:8080").unwrap();
        assert_eq!(
            bare.uri_for(None).unwrap().to_string(),
            "http://127.0.0.1:8080/"
        );
        assert!(Upstream::parse("ftp://x").is_err());
        assert!(Upstream::parse("https://127.0.0.1").is_err());
    }
}
