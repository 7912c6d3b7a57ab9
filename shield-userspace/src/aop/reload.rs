//! Makes the running daemon re-read its config, then proves that it
//! accepts the new client certificate: the step that must succeed before
//! Cloudflare is told anything.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    path::PathBuf,
    sync::Arc,
    time::Duration,
};

use rustls::{
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    pki_types::{pem::PemObject as _, CertificateDer, PrivateKeyDer, ServerName, UnixTime},
    DigitallySignedStruct, SignatureScheme,
};

use super::AopError;

/// How the daemon is told to reload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reload {
    /// `systemctl reload UNIT` (the packaged unit's ExecReload is SIGHUP).
    Systemd { unit: String },
    /// SIGHUP to this process (a daemon started by hand, or by a test).
    Pid(u32),
}

impl std::fmt::Display for Reload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Reload::Systemd { unit } => write!(f, "systemctl reload {unit}"),
            Reload::Pid(pid) => write!(f, "SIGHUP to pid {pid}"),
        }
    }
}

impl Reload {
    pub fn trigger(&self) -> Result<(), AopError> {
        match self {
            Reload::Systemd { unit } => {
                let status = std::process::Command::new("systemctl")
                    .args(["reload", unit])
                    .stdin(std::process::Stdio::null())
                    .status()
                    .map_err(|source| AopError::ReloadSpawn {
                        how: self.to_string(),
                        source,
                    })?;
                if !status.success() {
                    return Err(AopError::ReloadFailed {
                        how: self.to_string(),
                        status: status.to_string(),
                    });
                }
                Ok(())
            }
            Reload::Pid(pid) => {
                let pid = libc::pid_t::try_from(*pid).map_err(|_| AopError::ReloadFailed {
                    how: self.to_string(),
                    status: "not a process id".to_owned(),
                })?;
                // SAFETY: kill(2) takes plain integers and touches no memory.
                if unsafe { libc::kill(pid, libc::SIGHUP) } != 0 {
                    return Err(AopError::ReloadSpawn {
                        how: self.to_string(),
                        source: std::io::Error::last_os_error(),
                    });
                }
                Ok(())
            }
        }
    }
}

/// Where the check connects: the site's listen address, with a wildcard
/// replaced by loopback of its family (the daemon listens there too).
pub fn local_address(listen: SocketAddr) -> SocketAddr {
    let ip = match listen.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, listen.port())
}

/// One check: a handshake as Cloudflare will make it.
#[derive(Debug, Clone)]
pub struct Probe {
    pub address: SocketAddr,
    /// SNI: the site's first server name, as Cloudflare sends it.
    pub server_name: String,
    /// The site's certificate file: the server must present exactly it.
    pub site_cert: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

impl Probe {
    /// Retries until shield accepts the client certificate or `timeout`
    /// passes: the reload is asynchronous, and until it lands the handshake
    /// is refused (`unknown_ca`).
    pub async fn wait_accepted(&self, timeout: Duration) -> Result<(), AopError> {
        let config = self.client_config()?;
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let attempt = tokio::time::timeout(Duration::from_secs(5), self.handshake(&config))
                .await
                .unwrap_or_else(|_| Err("no answer within 5 s".to_owned()));
            match attempt {
                Ok(()) => return Ok(()),
                Err(last) if tokio::time::Instant::now() + PAUSE >= deadline => {
                    return Err(AopError::NotAccepted {
                        address: self.address,
                        waited: timeout,
                        last,
                    })
                }
                Err(_) => tokio::time::sleep(PAUSE).await,
            }
        }
    }

    fn client_config(&self) -> Result<Arc<rustls::ClientConfig>, AopError> {
        let site_cert = CertificateDer::pem_file_iter(&self.site_cert)
            .ok()
            .and_then(|mut certs| certs.next())
            .and_then(Result::ok)
            .ok_or_else(|| AopError::ProbeSetup {
                reason: format!(
                    "cannot read a certificate from {}",
                    self.site_cert.display()
                ),
            })?;
        let chain = CertificateDer::pem_file_iter(&self.client_cert)
            .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
            .map_err(|error| AopError::ProbeSetup {
                reason: format!("{}: {error}", self.client_cert.display()),
            })?;
        let key = PrivateKeyDer::from_pem_file(&self.client_key).map_err(|error| {
            AopError::ProbeSetup {
                reason: format!("{}: {error}", self.client_key.display()),
            }
        })?;
        let provider = crate::tls::provider();
        let verifier = Arc::new(SiteCertificate {
            expected: site_cert,
            provider: provider.clone(),
        });
        // TLS 1.2 only: there the server checks the client certificate
        // before its Finished, so a completed handshake means accepted. In
        // TLS 1.3 the client finishes first and a refusal arrives later.
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS12])
            .map_err(|error| AopError::ProbeSetup {
                reason: error.to_string(),
            })?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_client_auth_cert(chain, key)
            .map_err(|error| AopError::ProbeSetup {
                reason: error.to_string(),
            })?;
        Ok(Arc::new(config))
    }

    async fn handshake(&self, config: &Arc<rustls::ClientConfig>) -> Result<(), String> {
        let tcp = tokio::net::TcpStream::connect(self.address)
            .await
            .map_err(|error| format!("connect: {error}"))?;
        let name = ServerName::try_from(self.server_name.clone())
            .map_err(|error| format!("server name {}: {error}", self.server_name))?;
        tokio_rustls::TlsConnector::from(config.clone())
            .connect(name, tcp)
            .await
            .map(drop)
            .map_err(|error| format!("handshake: {error}"))
    }
}

const PAUSE: Duration = Duration::from_millis(250);

/// Trusts the server when it presents the site's own certificate file: the
/// check talks to this host's shield, whose certificate may come from a
/// CA (Cloudflare's Origin CA) that this host does not trust.
#[derive(Debug)]
struct SiteCertificate {
    expected: CertificateDer<'static>,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl ServerCertVerifier for SiteCertificate {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if end_entity.as_ref() == self.expected.as_ref() {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General(
                "the server's certificate is not the site's `cert`: another server answers there"
                    .to_owned(),
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

impl std::fmt::Display for Probe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "a TLS handshake to {} (SNI {}) presenting {}",
            self.address,
            self.server_name,
            self.client_cert.display()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcard_listen_addresses_are_checked_on_loopback() {
        let check = |listen: &str, want: &str| {
            assert_eq!(
                local_address(listen.parse().unwrap_or_else(|_| panic!("{listen}"))),
                want.parse().unwrap_or_else(|_| panic!("{want}"))
            )
        };
        check("0.0.0.0:443", "127.0.0.1:443");
        check("[::]:8443", "[::1]:8443");
        check("192.0.2.5:443", "192.0.2.5:443");
    }
}
