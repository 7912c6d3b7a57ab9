//! The final types of config values that are more than a string: each is
//! parsed once, while the config is read, so `shield check-config` refuses
//! whatever `shield run` would, and the layers above never classify text.

use std::{
    fmt,
    path::{Path, PathBuf},
    str::FromStr,
    time::Duration,
};

use base64::{engine::general_purpose::STANDARD as BASE64, Engine as _};
use http::{
    uri::{Authority, InvalidUri, PathAndQuery},
    Method, Uri,
};
use serde::{Deserialize, Serialize};

/// Deserializes a string through `T::from_str`. The message carries the
/// whole cause chain, because serde keeps only text.
fn from_text<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: FromStr,
    T::Err: std::error::Error + 'static,
{
    let text = String::deserialize(deserializer)?;
    text.parse()
        .map_err(|error: T::Err| serde::de::Error::custom(crate::error::Chain(&error)))
}

/// Implements `Deserialize` through `FromStr` and `Serialize` through
/// `Display`, so `check-config` prints what the file says.
macro_rules! text_serde {
    ($type:ty) => {
        impl<'de> Deserialize<'de> for $type {
            fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                from_text(deserializer)
            }
        }

        impl Serialize for $type {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.collect_str(self)
            }
        }
    };
}

/// `[[site]].upstream = "http://host:port[/prefix]"` (HTTP/1.1) or
/// `"h2c://host:port[/prefix]"` (HTTP/2 with prior knowledge, for gRPC).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstream {
    protocol: UpstreamProtocol,
    authority: Authority,
    /// Empty, or a path starting with '/' and not ending with one.
    prefix: String,
}

/// What shield speaks to an upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum UpstreamProtocol {
    /// `http://`: HTTP/1.1, pooled connections.
    Http1,
    /// `h2c://`: HTTP/2 over plain TCP with prior knowledge (RFC 9113
    /// 3.3), one multiplexed connection per worker; what a gRPC server
    /// listens for.
    H2c,
}

impl UpstreamProtocol {
    fn scheme(self) -> &'static str {
        match self {
            UpstreamProtocol::Http1 => "http",
            UpstreamProtocol::H2c => "h2c",
        }
    }
}

/// Why an `upstream` value was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum InvalidUpstream {
    /// The text does not parse as a URI.
    #[error("{text:?} is not a URL")]
    NotAUrl {
        text: String,
        #[source]
        source: InvalidUri,
    },
    /// An `https://` upstream: TLS to the local application is not offered.
    #[error("{text:?}: https upstreams are not supported; use http:// to the local application")]
    Https { text: String },
    /// A scheme other than `http` or `h2c`, or none.
    #[error("{text:?} must start with http:// (HTTP/1.1) or h2c:// (HTTP/2)")]
    Scheme { text: String },
    /// No host and port after the scheme.
    #[error("{text:?} has no host")]
    NoHost { text: String },
    /// A query, which would be sent with every request.
    #[error("{text:?}: an upstream URL cannot have a query")]
    Query { text: String },
}

impl Upstream {
    pub fn parse(text: &str) -> Result<Upstream, InvalidUpstream> {
        let uri: Uri = text.parse().map_err(|source| InvalidUpstream::NotAUrl {
            text: text.to_owned(),
            source,
        })?;
        let text = || text.to_owned();
        let protocol = match uri.scheme_str() {
            Some("http") => UpstreamProtocol::Http1,
            Some("h2c") => UpstreamProtocol::H2c,
            // The upstream is the local application; TLS to it would only
            // add a second handshake per pooled connection on loopback.
            Some("https") => return Err(InvalidUpstream::Https { text: text() }),
            _ => return Err(InvalidUpstream::Scheme { text: text() }),
        };
        let authority = uri
            .authority()
            .cloned()
            .ok_or_else(|| InvalidUpstream::NoHost { text: text() })?;
        if uri.query().is_some() {
            return Err(InvalidUpstream::Query { text: text() });
        }
        let prefix = uri.path().trim_end_matches('/').to_owned();
        Ok(Upstream {
            protocol,
            authority,
            prefix,
        })
    }

    pub fn protocol(&self) -> UpstreamProtocol {
        self.protocol
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

impl FromStr for Upstream {
    type Err = InvalidUpstream;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Upstream::parse(text)
    }
}

impl fmt::Display for Upstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = self.protocol.scheme();
        write!(f, "{scheme}://{}{}", self.authority, self.prefix)
    }
}

text_serde!(Upstream);

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

/// One `[[site]].client_ca` entry: a trust anchor for client certificates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientCa {
    /// Cloudflare's shared origin-pull CA, embedded in the binary. Any
    /// Cloudflare customer's requests carry a certificate it issued.
    CloudflareShared,
    /// A PEM file of CA certificates (the zone's own AOP CA).
    File(PathBuf),
}

impl ClientCa {
    /// How the shared CA is spelled in the config.
    pub const CLOUDFLARE_SHARED: &'static str = "cloudflare-shared";

    /// The file to read, if this entry is one.
    pub fn file(&self) -> Option<&Path> {
        match self {
            ClientCa::CloudflareShared => None,
            ClientCa::File(path) => Some(path),
        }
    }
}

/// Why a `client_ca` entry was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum InvalidClientCa {
    /// Neither the shared CA's name nor an absolute path (a typo of the
    /// name, or a path relative to a working directory shield does not
    /// choose).
    #[error("{text:?} is neither \"cloudflare-shared\" nor an absolute path to a CA file")]
    Unknown { text: String },
}

impl FromStr for ClientCa {
    type Err = InvalidClientCa;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        if text == ClientCa::CLOUDFLARE_SHARED {
            return Ok(ClientCa::CloudflareShared);
        }
        let path = Path::new(text);
        if path.is_absolute() {
            return Ok(ClientCa::File(path.to_owned()));
        }
        Err(InvalidClientCa::Unknown {
            text: text.to_owned(),
        })
    }
}

impl fmt::Display for ClientCa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientCa::CloudflareShared => f.write_str(ClientCa::CLOUDFLARE_SHARED),
            ClientCa::File(path) => write!(f, "{}", path.display()),
        }
    }
}

text_serde!(ClientCa);

/// One `[ranges].sources` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RangeSource {
    /// Cloudflare's JSON API or a text list, over HTTPS only: plain http
    /// would let anyone on the path rewrite the allowlist.
    Https(url::Url),
    /// A local file (JSON API shape or a text list).
    File(PathBuf),
}

/// Why a `[ranges].sources` entry was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum InvalidRangeSource {
    /// `http://`: open to tampering on the path.
    #[error("{text:?}: plain http is refused (anyone on the path could rewrite the allowlist); use https://")]
    PlainHttp { text: String },
    /// Starts like an https URL but does not parse as one.
    #[error("{text:?} is not a valid URL")]
    BadUrl {
        text: String,
        #[source]
        source: url::ParseError,
    },
    /// Neither a URL nor an absolute path.
    #[error("{text:?} is neither an https:// URL nor an absolute file path")]
    Unknown { text: String },
}

impl RangeSource {
    /// Cloudflare's API, the default source.
    pub fn cloudflare_api() -> RangeSource {
        const API: &str = "https://api.cloudflare.com/client/v4/ips";
        // A constant checked by `range_sources_are_https_urls_or_absolute_paths`.
        RangeSource::Https(
            url::Url::parse(API).unwrap_or_else(|e| unreachable!("{API} is a URL: {e}")),
        )
    }
}

impl FromStr for RangeSource {
    type Err = InvalidRangeSource;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let owned = || text.to_owned();
        if text.starts_with('/') {
            return Ok(RangeSource::File(PathBuf::from(text)));
        }
        let scheme = text.split_once("://").map(|(scheme, _)| scheme);
        match scheme.map(str::to_ascii_lowercase).as_deref() {
            Some("https") => {}
            Some("http") => return Err(InvalidRangeSource::PlainHttp { text: owned() }),
            _ => return Err(InvalidRangeSource::Unknown { text: owned() }),
        }
        let url = url::Url::parse(text).map_err(|source| InvalidRangeSource::BadUrl {
            text: owned(),
            source,
        })?;
        if url.host().is_none() {
            return Err(InvalidRangeSource::BadUrl {
                text: owned(),
                source: url::ParseError::EmptyHost,
            });
        }
        Ok(RangeSource::Https(url))
    }
}

impl fmt::Display for RangeSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RangeSource::Https(url) => f.write_str(url.as_str()),
            RangeSource::File(path) => write!(f, "{}", path.display()),
        }
    }
}

text_serde!(RangeSource);

/// One `[[site]].client_spki_pins` entry: the SHA-256 digest of a DER
/// SubjectPublicKeyInfo, as HPKP and
/// `openssl pkey -pubin -outform der | openssl dgst -sha256 -binary | base64` produce.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SpkiPin(pub [u8; 32]);

/// Why a `client_spki_pins` entry was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum InvalidSpkiPin {
    /// Not base64, or not 32 bytes once decoded.
    #[error("{text:?} is not the base64 of a SHA-256 digest")]
    NotADigest { text: String },
}

impl FromStr for SpkiPin {
    type Err = InvalidSpkiPin;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        BASE64
            .decode(text.trim())
            .ok()
            .and_then(|bytes| <[u8; 32]>::try_from(bytes.as_slice()).ok())
            .map(SpkiPin)
            .ok_or_else(|| InvalidSpkiPin::NotADigest {
                text: text.to_owned(),
            })
    }
}

impl fmt::Display for SpkiPin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&BASE64.encode(self.0))
    }
}

text_serde!(SpkiPin);

/// `[ranges].refresh`: a period, or `"off"` for cache/snapshot only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refresh {
    Off,
    Every(Duration),
}

/// Why a `[ranges].refresh` value was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum InvalidRefresh {
    /// Neither `"off"` nor a duration.
    #[error("expected a duration such as \"6h\" or \"off\", got {text:?}")]
    NotADuration {
        text: String,
        #[source]
        source: humantime::DurationError,
    },
    /// A period that would poll the API for nothing.
    #[error("{text:?} is shorter than a minute; Cloudflare changes its ranges rarely")]
    TooShort { text: String },
}

impl FromStr for Refresh {
    type Err = InvalidRefresh;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        if text == "off" {
            return Ok(Refresh::Off);
        }
        let period =
            humantime::parse_duration(text).map_err(|source| InvalidRefresh::NotADuration {
                text: text.to_owned(),
                source,
            })?;
        if period < Duration::from_secs(60) {
            return Err(InvalidRefresh::TooShort {
                text: text.to_owned(),
            });
        }
        Ok(Refresh::Every(period))
    }
}

impl fmt::Display for Refresh {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refresh::Off => f.write_str("off"),
            Refresh::Every(period) => write!(f, "{}", humantime::format_duration(*period)),
        }
    }
}

text_serde!(Refresh);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::tests::count_in_chain;

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
    }

    #[test]
    fn upstreams_are_refused_by_cause_and_print_back() {
        assert!(matches!(
            Upstream::parse("ftp://x"),
            Err(InvalidUpstream::Scheme { .. })
        ));
        assert!(matches!(
            Upstream::parse("https://127.0.0.1"),
            Err(InvalidUpstream::Https { .. })
        ));
        assert!(matches!(
            Upstream::parse("127.0.0.1:1"),
            Err(InvalidUpstream::Scheme { .. })
        ));
        assert!(matches!(
            Upstream::parse("http://127.0.0.1:1/?a=b"),
            Err(InvalidUpstream::Query { .. })
        ));
        assert!(matches!(
            Upstream::parse("http://exa mple"),
            Err(InvalidUpstream::NotAUrl { .. })
        ));
        for text in [
            "http://127.0.0.1:8080",
            "http://[::1]:81/app",
            "h2c://127.0.0.1:50051",
        ] {
            let up = Upstream::parse(text).unwrap();
            assert_eq!(up.to_string(), text);
            assert_eq!(Upstream::parse(&up.to_string()).unwrap(), up);
        }
        assert_eq!(
            Upstream::parse("h2c://127.0.0.1:50051").unwrap().protocol(),
            UpstreamProtocol::H2c
        );
    }

    #[test]
    fn an_invalid_url_names_its_cause_once() {
        let error = Upstream::parse("http://exa mple").unwrap_err();
        let cause = std::error::Error::source(&error).unwrap().to_string();
        let (count, text) = count_in_chain(error, &cause);
        assert_eq!(count, 1, "{text}");
    }

    #[test]
    fn client_ca_is_the_shared_name_or_an_absolute_path() {
        assert_eq!(
            "cloudflare-shared".parse::<ClientCa>().unwrap(),
            ClientCa::CloudflareShared
        );
        assert_eq!(
            "/etc/shield/ca.pem".parse::<ClientCa>().unwrap(),
            ClientCa::File("/etc/shield/ca.pem".into())
        );
        for bad in ["cloudflare_shared", "Cloudflare-Shared", "ca.pem", ""] {
            assert!(bad.parse::<ClientCa>().is_err(), "{bad:?}");
        }
        assert_eq!(ClientCa::CloudflareShared.to_string(), "cloudflare-shared");
    }

    #[test]
    fn range_sources_are_https_urls_or_absolute_paths() {
        assert!(matches!(
            "https://api.cloudflare.com/client/v4/ips".parse(),
            Ok(RangeSource::Https(_))
        ));
        assert!(matches!(
            "/var/lib/ips.json".parse(),
            Ok(RangeSource::File(_))
        ));
        assert!(matches!(
            "http://api.cloudflare.com/client/v4/ips".parse::<RangeSource>(),
            Err(InvalidRangeSource::PlainHttp { .. })
        ));
        assert!(matches!(
            "HTTP://api.cloudflare.com/".parse::<RangeSource>(),
            Err(InvalidRangeSource::PlainHttp { .. })
        ));
        assert!(matches!(
            "relative/path".parse::<RangeSource>(),
            Err(InvalidRangeSource::Unknown { .. })
        ));
        assert!(matches!(
            "https://exa mple.com/".parse::<RangeSource>(),
            Err(InvalidRangeSource::BadUrl { .. })
        ));
        assert_eq!(
            RangeSource::cloudflare_api().to_string(),
            "https://api.cloudflare.com/client/v4/ips"
        );
        let url = "https://www.cloudflare.com/ips-v4";
        assert_eq!(url.parse::<RangeSource>().unwrap().to_string(), url);
    }

    #[test]
    fn pins_are_base64_sha256() {
        let pin = BASE64.encode([7u8; 32]);
        assert_eq!(pin.parse::<SpkiPin>().unwrap(), SpkiPin([7u8; 32]));
        assert_eq!(SpkiPin([7u8; 32]).to_string(), pin);
        assert!("not base64!".parse::<SpkiPin>().is_err());
        assert!(BASE64.encode([1u8; 20]).parse::<SpkiPin>().is_err());
    }

    #[test]
    fn refresh_accepts_off_and_durations() {
        let parse = |text: &str| text.parse::<Refresh>();
        assert_eq!(parse("off").unwrap(), Refresh::Off);
        assert_eq!(
            parse("6h").unwrap(),
            Refresh::Every(Duration::from_secs(21600))
        );
        assert_eq!(
            parse("90m").unwrap(),
            Refresh::Every(Duration::from_secs(5400))
        );
        assert!(matches!(parse("1s"), Err(InvalidRefresh::TooShort { .. })));
        assert!(matches!(
            parse(""),
            Err(InvalidRefresh::NotADuration { .. })
        ));
        let error = parse("soon").unwrap_err();
        let cause = std::error::Error::source(&error).unwrap().to_string();
        assert_eq!(count_in_chain(error, &cause).0, 1);
    }
}
