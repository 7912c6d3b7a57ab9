//! Where a site's requests go, and which Host values belong to it.

use std::time::Duration;

use http::{uri::Authority, uri::PathAndQuery, Method, Uri};

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
    /// `None` for a target the upstream must not get: a path not starting
    /// with `/` (h2 lets a client send `:path: ?x=1`), `*` other than for
    /// OPTIONS, or, under a prefix, a `.` or `..` segment that an upstream
    /// normalizing the path would take outside the prefix.
    pub fn target_for(&self, method: &Method, path: Option<&PathAndQuery>) -> Option<Uri> {
        let Some(path) = path else {
            return self.prefixed("/");
        };
        let text = path.as_str();
        if text == "*" {
            return (method == Method::OPTIONS).then(|| Uri::from(path.clone()));
        }
        if !text.starts_with('/') {
            return None;
        }
        if self.prefix.is_empty() {
            // The client's path and query go as they are, sharing their bytes.
            return Some(Uri::from(path.clone()));
        }
        if has_dot_segment(path.path()) {
            return None;
        }
        self.prefixed(text)
    }

    fn prefixed(&self, path: &str) -> Option<Uri> {
        let joined = format!("{}{path}", self.prefix);
        PathAndQuery::try_from(joined).ok().map(Uri::from)
    }
}

/// Whether a path has a `.` or `..` segment, percent-encoded or not.
fn has_dot_segment(path: &str) -> bool {
    // At most two dots, each possibly spelled `%2e`.
    path.split('/')
        .filter(|segment| segment.len() <= 6)
        .any(|segment| {
            let decoded = segment.to_ascii_lowercase().replace("%2e", ".");
            decoded == "." || decoded == ".."
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_targets_join_prefix_and_path() {
        const APP: &str = "http://127.0.0.1:8080/app/";
        const BARE: &str = "http://127.0.0.1:8080";
        // (upstream, method, client path, target sent or None for a 400)
        let table: [(&str, Method, Option<&str>, Option<&str>); 15] = [
            (APP, Method::GET, Some("/x?y=1"), Some("/app/x?y=1")),
            (APP, Method::GET, None, Some("/app/")),
            (BARE, Method::GET, Some("/x?y=1"), Some("/x?y=1")),
            (BARE, Method::GET, None, Some("/")),
            (BARE, Method::GET, Some("/"), Some("/")),
            (APP, Method::OPTIONS, Some("*"), Some("*")),
            (APP, Method::GET, Some("*"), None),
            // h2 lets a client send a :path that is not origin-form.
            (APP, Method::GET, Some("?x=1"), None),
            (BARE, Method::GET, Some("?x=1"), None),
            // Under a prefix, no way out of it; the query is not a path.
            (APP, Method::GET, Some("/../admin"), None),
            (APP, Method::GET, Some("/a/%2E%2e/admin"), None),
            (APP, Method::GET, Some("/a/./b"), None),
            (
                APP,
                Method::GET,
                Some("/a/..b/c?x=../y"),
                Some("/app/a/..b/c?x=../y"),
            ),
            // Without a prefix the upstream owns its whole path space.
            (BARE, Method::GET, Some("/../admin"), Some("/../admin")),
            (
                APP,
                Method::GET,
                Some("/.well-known/x"),
                Some("/app/.well-known/x"),
            ),
        ];
        for (upstream, method, path, want) in table {
            let up = Upstream::parse(upstream).unwrap();
            let path: Option<PathAndQuery> = path.map(|p| p.parse().unwrap());
            let target = up.target_for(&method, path.as_ref());
            assert_eq!(
                target.as_ref().map(Uri::to_string).as_deref(),
                want,
                "{upstream} {method} {path:?}"
            );
            if let Some(target) = target {
                assert!(target.authority().is_none(), "origin-form: {target}");
            }
            assert_eq!(up.authority().as_str(), "127.0.0.1:8080");
        }
        assert!(Upstream::parse("ftp://x").is_err());
        assert!(Upstream::parse("https://127.0.0.1").is_err());
    }
}
