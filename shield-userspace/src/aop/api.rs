//! The Cloudflare API v4 calls of an enrollment, on the project's reqwest
//! and rustls client. The token goes only into the `Authorization` header
//! (marked sensitive); no error or log line carries it.

use std::time::Duration;

use reqwest::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE};
use rustls::pki_types::CertificateDer;
use serde::Deserialize;

use super::token::Token;

/// Cloudflare's API; tests point a hidden flag at a local fake.
pub const DEFAULT_BASE: &str = "https://api.cloudflare.com/client/v4";

/// Which call failed, for the operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Upload,
    Status,
    Enable,
}

impl std::fmt::Display for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Step::Upload => "uploading the client certificate",
            Step::Status => "reading the certificate's status",
            Step::Enable => "enabling Authenticated Origin Pulls",
        })
    }
}

/// Why one API call gave no usable answer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ApiError {
    /// No complete answer within the request timeout.
    #[error("{step}: no answer from the Cloudflare API within {timeout:?}")]
    Timeout { step: Step, timeout: Duration },
    /// DNS, connect, TLS or a broken body.
    #[error("{step}: cannot reach the Cloudflare API; check DNS, routes and proxies")]
    Network {
        step: Step,
        #[source]
        source: reqwest::Error,
    },
    /// Cloudflare refused the call; its own error codes and messages.
    #[error("{step}: Cloudflare answered HTTP {status}: {errors}")]
    Refused {
        step: Step,
        status: u16,
        errors: String,
    },
    /// A 2xx answer that is not the documented envelope.
    #[error("{step}: unexpected answer from the Cloudflare API (HTTP {status}): {reason}")]
    Unexpected {
        step: Step,
        status: u16,
        reason: String,
    },
    /// The HTTPS client could not be set up.
    #[error("cannot build the HTTPS client for the Cloudflare API")]
    Client(#[source] reqwest::Error),
}

/// Cloudflare's v4 envelope.
#[derive(Debug, Deserialize)]
struct Envelope<T> {
    success: bool,
    #[serde(default)]
    errors: Vec<Message>,
    result: Option<T>,
}

#[derive(Debug, Deserialize)]
struct Message {
    code: Option<i64>,
    message: Option<String>,
}

/// A zone-level AOP certificate as the API reports it.
#[derive(Debug, Clone, Deserialize)]
pub struct Certificate {
    pub id: String,
    /// `initializing`, `pending_deployment`, `active`, `deployment_timed_out`, ...
    #[serde(default)]
    pub status: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Setting {
    enabled: Option<bool>,
}

/// The API client of one enrollment.
#[derive(Debug, Clone)]
pub struct Api {
    client: reqwest::Client,
    base: String,
    timeout: Duration,
    auth: HeaderValue,
}

impl Api {
    /// `roots`: trust only these instead of the system's (a test's fake).
    pub fn new(
        base: &str,
        token: &Token,
        timeout: Duration,
        roots: Option<Vec<CertificateDer<'static>>>,
    ) -> Result<Api, ApiError> {
        let mut builder = reqwest::Client::builder()
            .user_agent(concat!("shield/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(timeout)
            .timeout(timeout)
            // The token must never travel in clear, nor follow a redirect
            // to another host.
            .https_only(true)
            .redirect(reqwest::redirect::Policy::none())
            .tls_backend_rustls();
        if let Some(roots) = roots {
            let roots = roots
                .iter()
                .map(|der| reqwest::Certificate::from_der(der))
                .collect::<Result<Vec<_>, _>>()
                .map_err(ApiError::Client)?;
            builder = builder.tls_certs_only(roots);
        }
        let mut auth =
            HeaderValue::from_str(&format!("Bearer {}", token.expose())).map_err(|_| {
                ApiError::Unexpected {
                    step: Step::Upload,
                    status: 0,
                    reason: "the token is not a valid header value".to_owned(),
                }
            })?;
        auth.set_sensitive(true);
        Ok(Api {
            client: builder.build().map_err(ApiError::Client)?,
            base: base.trim_end_matches('/').to_owned(),
            timeout,
            auth,
        })
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    pub fn certificates_url(&self, zone: &str) -> String {
        format!("{}/zones/{zone}/origin_tls_client_auth", self.base)
    }

    /// Also the undo of an upload: Delete Certificate is `DELETE` on it.
    /// https://developers.cloudflare.com/api/resources/origin_tls_client_auth/
    pub fn certificate_url(&self, zone: &str, id: &str) -> String {
        format!("{}/zones/{zone}/origin_tls_client_auth/{id}", self.base)
    }

    pub fn settings_url(&self, zone: &str) -> String {
        format!("{}/zones/{zone}/origin_tls_client_auth/settings", self.base)
    }

    /// Upload Certificate: `POST /zones/{zone_id}/origin_tls_client_auth`
    /// with `certificate` and `private_key` (PEM); the result carries the
    /// certificate's `id` and `status`.
    /// https://developers.cloudflare.com/api/go/resources/origin_tls_client_auth/methods/create
    pub async fn upload(
        &self,
        zone: &str,
        certificate: &str,
        private_key: &str,
    ) -> Result<Certificate, ApiError> {
        let body = serde_json::json!({ "certificate": certificate, "private_key": private_key });
        let request = self
            .client
            .post(self.certificates_url(zone))
            .header(CONTENT_TYPE, "application/json")
            .body(body.to_string());
        self.send(Step::Upload, request).await
    }

    /// Get Certificate Details: `GET /zones/{zone_id}/origin_tls_client_auth/{certificate_id}`;
    /// `status` is one of `initializing`, `pending_deployment`, `active`,
    /// `pending_deletion`, `deleted`, `deployment_timed_out`, `deletion_timed_out`.
    /// https://developers.cloudflare.com/api/go/resources/origin_tls_client_auth/subresources/zone_certificates
    /// https://developers.cloudflare.com/api/resources/origin_tls_client_auth/
    pub async fn certificate(&self, zone: &str, id: &str) -> Result<Certificate, ApiError> {
        let request = self.client.get(self.certificate_url(zone, id));
        self.send(Step::Status, request).await
    }

    /// Set Enablement for Zone: `PUT /zones/{zone_id}/origin_tls_client_auth/settings`
    /// with `{"enabled": true}`; the result echoes `enabled`.
    /// https://developers.cloudflare.com/api/resources/origin_tls_client_auth/subresources/settings/methods/update
    pub async fn enable(&self, zone: &str) -> Result<(), ApiError> {
        let request = self
            .client
            .put(self.settings_url(zone))
            .header(CONTENT_TYPE, "application/json")
            .body(serde_json::json!({ "enabled": true }).to_string());
        let setting: Setting = self.send(Step::Enable, request).await?;
        match setting.enabled {
            Some(true) => Ok(()),
            other => Err(ApiError::Unexpected {
                step: Step::Enable,
                status: 200,
                reason: format!("the answer says enabled = {other:?}"),
            }),
        }
    }

    async fn send<T: serde::de::DeserializeOwned>(
        &self,
        step: Step,
        request: reqwest::RequestBuilder,
    ) -> Result<T, ApiError> {
        let request = request.header(AUTHORIZATION, self.auth.clone());
        let failed = |source: reqwest::Error| {
            if source.is_timeout() {
                ApiError::Timeout {
                    step,
                    timeout: self.timeout,
                }
            } else {
                // Without the URL: it holds nothing secret, but the step
                // already names the call and the chain stays short.
                ApiError::Network {
                    step,
                    source: source.without_url(),
                }
            }
        };
        let response = request.send().await.map_err(failed)?;
        let status = response.status().as_u16();
        let body = response.bytes().await.map_err(failed)?;
        let envelope: Result<Envelope<T>, _> = serde_json::from_slice(&body);
        match envelope {
            Ok(envelope) if envelope.success && (200..300).contains(&status) => {
                envelope.result.ok_or_else(|| ApiError::Unexpected {
                    step,
                    status,
                    reason: "no `result`".to_owned(),
                })
            }
            Ok(envelope) => Err(ApiError::Refused {
                step,
                status,
                errors: describe(&envelope.errors),
            }),
            // An error answer whose body is no envelope (a proxy's page):
            // its status is all there is to say.
            Err(_) if !(200..300).contains(&status) => Err(ApiError::Refused {
                step,
                status,
                errors: "no Cloudflare error body".to_owned(),
            }),
            Err(error) => Err(ApiError::Unexpected {
                step,
                status,
                reason: error.to_string(),
            }),
        }
    }
}

/// `code 1234: message; code 5678: message`, as Cloudflare sent them.
fn describe(errors: &[Message]) -> String {
    if errors.is_empty() {
        return "no error details".to_owned();
    }
    errors
        .iter()
        .map(|error| {
            let code = error
                .code
                .map_or_else(|| "code ?".to_owned(), |code| format!("code {code}"));
            format!("{code}: {}", error.message.as_deref().unwrap_or("-"))
        })
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cloudflare_errors_are_listed_with_their_codes() {
        let envelope: Result<Envelope<Certificate>, _> = serde_json::from_str(
            r#"{"success":false,"errors":[{"code":1406,"message":"Invalid certificate"},{"code":10000,"message":"Authentication error"}],"messages":[],"result":null}"#,
        );
        let Ok(envelope) = envelope else {
            panic!("the documented envelope parses")
        };
        assert!(!envelope.success);
        assert_eq!(
            describe(&envelope.errors),
            "code 1406: Invalid certificate; code 10000: Authentication error"
        );
    }
}
