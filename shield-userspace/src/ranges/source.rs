//! Fetching a range set: Cloudflare's JSON API, the plain text lists, or a
//! local file. Bounded in time and size, because a stuck or hostile source
//! must not stall the refresh or exhaust memory.

use std::{path::Path, time::Duration};

use rustls::pki_types::CertificateDer;

use super::{Networks, Provenance, RangeSet, RangesError};
use crate::{config::RangeSource, error::Chain};

/// Limits of one fetch.
#[derive(Debug, Clone)]
pub struct FetchOptions {
    /// TCP connect plus TLS handshake.
    pub connect_timeout: Duration,
    /// Whole request, body included.
    pub timeout: Duration,
    /// Largest body accepted; the real API answer is under 1 KiB.
    pub max_body: usize,
    /// Trust only these roots instead of the system's (tests use a test CA).
    pub roots: Option<Vec<CertificateDer<'static>>>,
}

impl Default for FetchOptions {
    fn default() -> Self {
        FetchOptions {
            connect_timeout: Duration::from_secs(10),
            timeout: Duration::from_secs(30),
            max_body: 1 << 20,
            roots: None,
        }
    }
}

/// Why a source gave no range set.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FetchError {
    /// No complete answer within the fetch timeout.
    #[error("{source_name}: timed out after {timeout:?}; check the host's connectivity to it")]
    Timeout {
        source_name: String,
        timeout: Duration,
    },
    /// The TLS handshake failed: an untrusted certificate, or interception.
    #[error("{source_name}: TLS failed; the certificate is not trusted or the connection is intercepted")]
    Tls {
        source_name: String,
        #[source]
        source: rustls::Error,
    },
    /// DNS, connect, reset, or a broken body.
    #[error("{source_name}: cannot connect or read; check DNS, routes and proxies")]
    Network {
        source_name: String,
        #[source]
        source: reqwest::Error,
    },
    /// An answer other than 2xx.
    #[error("{source_name}: HTTP status {status}; the source is failing, try again later")]
    Status { source_name: String, status: u16 },
    /// A body over [`FetchOptions::max_body`].
    #[error("{source_name}: body larger than {limit} bytes; that is not a range list")]
    TooLarge { source_name: String, limit: usize },
    /// A body that is not UTF-8 text, so neither JSON nor a text list.
    #[error("{source_name}: the body is not UTF-8 text; that is not a range list")]
    NotUtf8 {
        source_name: String,
        #[source]
        source: std::str::Utf8Error,
    },
    /// A file source that cannot be read.
    #[error("{source_name}: cannot read the file")]
    File {
        source_name: String,
        #[source]
        source: std::io::Error,
    },
    /// Text that is not a range list.
    #[error("{source_name}")]
    Parse {
        source_name: String,
        #[source]
        source: RangesError,
    },
    /// The HTTPS client could not be set up (TLS roots, system config).
    #[error("cannot build the HTTPS client")]
    Client(#[source] reqwest::Error),
    /// Nothing to fetch from.
    #[error("[ranges].sources is empty; list the Cloudflare API or the text lists")]
    NoSources,
}

/// Fetches range sets with one HTTPS client (connections are reused).
#[derive(Debug, Clone)]
pub struct Fetcher {
    client: reqwest::Client,
    options: FetchOptions,
}

impl Fetcher {
    pub fn new(options: FetchOptions) -> Result<Fetcher, FetchError> {
        let mut builder = reqwest::Client::builder()
            .user_agent(concat!("shield/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(options.connect_timeout)
            .timeout(options.timeout)
            // Ranges must come over TLS; a plain-HTTP redirect would be a
            // downgrade an on-path attacker could use.
            .https_only(true)
            .redirect(reqwest::redirect::Policy::limited(3))
            .tls_backend_rustls();
        if let Some(roots) = &options.roots {
            let roots = roots
                .iter()
                .map(|der| reqwest::Certificate::from_der(der))
                .collect::<Result<Vec<_>, _>>()
                .map_err(FetchError::Client)?;
            builder = builder.tls_certs_only(roots);
        }
        let client = builder.build().map_err(FetchError::Client)?;
        Ok(Fetcher { client, options })
    }

    pub fn options(&self) -> &FetchOptions {
        &self.options
    }

    /// The first source that yields a parsed set wins. A JSON answer is a
    /// whole set; text lists (`ips-v4`, `ips-v6`) each hold part of one, so
    /// the text sources that answer are merged into one set, used when no
    /// JSON source answered. Data that parses but is bad is not a reason to
    /// fall back: validation refuses it loudly instead.
    ///
    /// With the China Network, every HTTPS source is asked with
    /// `?networks=jdcloud`: whether a URL is the API or a text list is only
    /// known from its answer, and the text list servers ignore the query.
    /// A text answer (or file) then has no `jdcloud_cidrs`, which the
    /// judgement refuses; without the China Network a `jdcloud_cidrs` in a
    /// JSON answer or file is dropped here.
    pub async fn fetch(
        &self,
        sources: &[RangeSource],
        networks: Networks,
    ) -> Result<RangeSet, FetchError> {
        let mut first_error = None;
        let mut text: Option<(Vec<String>, String)> = None;
        for source in sources {
            let name = source.to_string();
            let body = match self.fetch_body(source, networks).await {
                Ok(body) => body,
                Err(error) => {
                    tracing::warn!(error = %Chain(&error), "range source failed; trying the next one");
                    first_error.get_or_insert(error);
                    continue;
                }
            };
            if body.trim_start().starts_with('{') {
                match RangeSet::from_api_json(&body, Provenance::Named(name.clone())) {
                    Ok(set) => return Ok(set.for_networks(networks)),
                    Err(source) => {
                        let error = FetchError::Parse {
                            source_name: name,
                            source,
                        };
                        tracing::warn!(error = %Chain(&error), "range source failed; trying the next one");
                        first_error.get_or_insert(error);
                    }
                }
            } else {
                let (names, joined) = text.get_or_insert_with(Default::default);
                names.push(name);
                joined.push_str(&body);
                // The lists are served without a trailing newline.
                joined.push('\n');
            }
        }
        if let Some((names, joined)) = text {
            let name = names.join(" + ");
            return RangeSet::from_text(&joined, Provenance::Named(name.clone())).map_err(
                |source| FetchError::Parse {
                    source_name: name,
                    source,
                },
            );
        }
        Err(first_error.unwrap_or(FetchError::NoSources))
    }

    /// The body of one source, as text, within the size cap.
    pub async fn fetch_body(
        &self,
        source: &RangeSource,
        networks: Networks,
    ) -> Result<String, FetchError> {
        match source {
            RangeSource::Https(url) => {
                let request = request_url(url, networks);
                // The total timeout is enforced by reqwest too; this outer
                // one also bounds a body trickled in small chunks.
                match tokio::time::timeout(self.options.timeout, self.fetch_url(url, request)).await
                {
                    Ok(result) => result,
                    Err(_) => Err(FetchError::Timeout {
                        source_name: url.to_string(),
                        timeout: self.options.timeout,
                    }),
                }
            }
            RangeSource::File(path) => read_file(path, self.options.max_body),
        }
    }

    /// `url` names the source in errors (as configured); `request` is what
    /// is asked for.
    async fn fetch_url(&self, url: &url::Url, request: url::Url) -> Result<String, FetchError> {
        let url_text = url.as_str();
        let classify = |error: reqwest::Error| self.classify(url_text, error);
        let mut response = self.client.get(request).send().await.map_err(classify)?;
        let status = response.status();
        if !status.is_success() {
            return Err(FetchError::Status {
                source_name: url_text.to_owned(),
                status: status.as_u16(),
            });
        }
        let too_large = || FetchError::TooLarge {
            source_name: url_text.to_owned(),
            limit: self.options.max_body,
        };
        if response
            .content_length()
            .is_some_and(|length| length > self.options.max_body as u64)
        {
            return Err(too_large());
        }
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(classify)? {
            if body.len() + chunk.len() > self.options.max_body {
                return Err(too_large());
            }
            body.extend_from_slice(&chunk);
        }
        text(body, url_text)
    }

    fn classify(&self, url_text: &str, error: reqwest::Error) -> FetchError {
        if error.is_timeout() {
            return FetchError::Timeout {
                source_name: url_text.to_owned(),
                timeout: self.options.timeout,
            };
        }
        if let Some(source) = tls_cause(&error) {
            return FetchError::Tls {
                source_name: url_text.to_owned(),
                source,
            };
        }
        FetchError::Network {
            source_name: url_text.to_owned(),
            source: error,
        }
    }
}

/// The URL asked for a configured source. The China Network's ranges come
/// from the same endpoint with `networks=jdcloud` (Cloudflare API, "List
/// Cloudflare IPs": <https://developers.cloudflare.com/api/resources/ips/methods/list/>);
/// a URL that already asks for it is left as configured.
fn request_url(url: &url::Url, networks: Networks) -> url::Url {
    let mut request = url.clone();
    let asked = url
        .query_pairs()
        .any(|(key, value)| key == "networks" && value == "jdcloud");
    if networks.china() && !asked {
        request.query_pairs_mut().append_pair("networks", "jdcloud");
    }
    request
}

/// The rustls error somewhere in the chain, if the failure was TLS. rustls
/// errors reach us wrapped in (nested) `io::Error`s, whose `source()` skips
/// the wrapped error itself, so each `io::Error` is unwrapped by hand.
fn tls_cause(error: &(dyn std::error::Error + 'static)) -> Option<rustls::Error> {
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(error) = current {
        if let Some(tls) = error.downcast_ref::<rustls::Error>() {
            return Some(tls.clone());
        }
        current = match error.downcast_ref::<std::io::Error>() {
            // io::Errors nest (hyper wraps the TLS stream's own io::Error).
            Some(io) => match io.get_ref() {
                Some(inner) => Some(inner as &(dyn std::error::Error + 'static)),
                None => None,
            },
            None => error.source(),
        };
    }
    None
}

/// A body as text; a range list is ASCII, so anything else is refused
/// with its own result rather than as a bad entry.
fn text(body: Vec<u8>, source_name: &str) -> Result<String, FetchError> {
    String::from_utf8(body).map_err(|error| FetchError::NotUtf8 {
        source_name: source_name.to_owned(),
        source: error.utf8_error(),
    })
}

fn read_file(path: &Path, max_body: usize) -> Result<String, FetchError> {
    use std::io::Read as _;
    let source_name = path.display().to_string();
    let file_error = |source| FetchError::File {
        source_name: source_name.clone(),
        source,
    };
    let file = std::fs::File::open(path).map_err(file_error)?;
    let mut body = Vec::new();
    // One byte past the cap tells "exactly at the cap" from "over it".
    file.take(max_body as u64 + 1)
        .read_to_end(&mut body)
        .map_err(file_error)?;
    if body.len() > max_body {
        return Err(FetchError::TooLarge {
            source_name,
            limit: max_body,
        });
    }
    text(body, &source_name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn files_json_and_text_lists() {
        let dir = tempfile::tempdir().unwrap();
        let json = dir.path().join("ips.json");
        std::fs::write(&json, include_str!("../../data/cloudflare-ips-api.json")).unwrap();
        let v4 = dir.path().join("ips-v4");
        std::fs::write(&v4, include_str!("../../data/cloudflare-ips-v4.txt")).unwrap();
        let v6 = dir.path().join("ips-v6");
        std::fs::write(&v6, include_str!("../../data/cloudflare-ips-v6.txt")).unwrap();
        let name = |p: &std::path::Path| RangeSource::File(p.to_owned());
        let fetcher = Fetcher::new(FetchOptions::default()).unwrap();

        let set = fetcher
            .fetch(&[name(&json)], Networks::Global)
            .await
            .unwrap();
        assert!(set.same_prefixes(&RangeSet::snapshot()));
        assert_eq!(set.etag, RangeSet::snapshot().etag);

        // The JSON source is missing: the two text lists make one set.
        let missing = dir.path().join("missing.json");
        let set = fetcher
            .fetch(&[name(&missing), name(&v4), name(&v6)], Networks::Global)
            .await
            .unwrap();
        assert!(set.same_prefixes(&RangeSet::snapshot()));
        assert_eq!(
            set.source.to_string(),
            format!("{} + {}", v4.display(), v6.display())
        );

        let error = fetcher
            .fetch(&[name(&missing)], Networks::Global)
            .await
            .unwrap_err();
        assert!(matches!(error, FetchError::File { .. }), "{error}");

        let big = dir.path().join("big");
        std::fs::write(&big, vec![b' '; (1 << 20) + 1]).unwrap();
        let error = fetcher
            .fetch(&[name(&big)], Networks::Global)
            .await
            .unwrap_err();
        assert!(matches!(error, FetchError::TooLarge { .. }), "{error}");

        let binary = dir.path().join("binary");
        std::fs::write(&binary, [0xff, 0xfe, b'1']).unwrap();
        let error = fetcher
            .fetch(&[name(&binary)], Networks::Global)
            .await
            .unwrap_err();
        assert!(matches!(error, FetchError::NotUtf8 { .. }), "{error}");
    }

    #[test]
    fn the_china_network_is_asked_for_only_when_on() {
        let api = url::Url::parse("https://api.cloudflare.com/client/v4/ips").unwrap();
        assert_eq!(request_url(&api, Networks::Global), api);
        assert_eq!(
            request_url(&api, Networks::GlobalAndChina).as_str(),
            "https://api.cloudflare.com/client/v4/ips?networks=jdcloud"
        );
        let with_query = url::Url::parse("https://mirror.example/ips?key=1").unwrap();
        assert_eq!(
            request_url(&with_query, Networks::GlobalAndChina).as_str(),
            "https://mirror.example/ips?key=1&networks=jdcloud"
        );
        let asked = url::Url::parse("https://mirror.example/ips?networks=jdcloud").unwrap();
        assert_eq!(request_url(&asked, Networks::GlobalAndChina), asked);
    }

    #[tokio::test]
    async fn a_jdcloud_list_in_a_file_counts_only_for_the_china_network() {
        let dir = tempfile::tempdir().unwrap();
        let json = dir.path().join("ips.json");
        let mut api: serde_json::Value =
            serde_json::from_str(include_str!("../../data/cloudflare-ips-api.json")).unwrap();
        api["result"]["jdcloud_cidrs"] = serde_json::json!(["116.196.0.0/17"]);
        std::fs::write(&json, api.to_string()).unwrap();
        let v4 = dir.path().join("ips-v4");
        std::fs::write(&v4, include_str!("../../data/cloudflare-ips-v4.txt")).unwrap();
        let fetcher = Fetcher::new(FetchOptions::default()).unwrap();
        let sources = [RangeSource::File(json)];

        let china = fetcher
            .fetch(&sources, Networks::GlobalAndChina)
            .await
            .unwrap();
        assert_eq!(china.jdcloud, Some(vec!["116.196.0.0/17".parse().unwrap()]));
        let global = fetcher.fetch(&sources, Networks::Global).await.unwrap();
        assert_eq!(global.jdcloud, None, "ignored without china_network");
        // Text lists never carry the China Network.
        let text = fetcher
            .fetch(&[RangeSource::File(v4)], Networks::GlobalAndChina)
            .await
            .unwrap();
        assert_eq!(text.jdcloud, None);
    }

    #[test]
    fn each_cause_is_printed_once() {
        use crate::error::tests::count_in_chain;
        let io = std::io::Error::from_raw_os_error(libc::ENOENT);
        let cause = io.to_string();
        let error = FetchError::File {
            source_name: "/x/ips.json".into(),
            source: io,
        };
        let (count, text) = count_in_chain(error, &cause);
        assert_eq!(count, 1, "{text}");

        let json = serde_json::from_str::<serde_json::Value>("{").unwrap_err();
        let cause = json.to_string();
        let error = FetchError::Parse {
            source_name: "/x/ips.json".into(),
            source: RangesError::Json(json),
        };
        let (count, text) = count_in_chain(error, &cause);
        assert_eq!(count, 1, "{text}");
        assert!(
            text.starts_with("/x/ips.json: range list is not valid JSON"),
            "{text}"
        );
    }
}
