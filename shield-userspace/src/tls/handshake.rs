//! One connection's handshake: read the ClientHello, pick the site by SNI,
//! finish the handshake with that site's policy under its timeout, count
//! the result.

use std::{net::SocketAddr, sync::Arc};

use rustls::{
    server::{Acceptor, ClientHello, ResolvesServerCert},
    sign::CertifiedKey,
    ServerConfig,
};
use sha2::{Digest, Sha256};
use tokio::{
    net::TcpStream,
    time::{timeout_at, Instant},
};
use tokio_rustls::{server::TlsStream, LazyConfigAcceptor};

use super::{metrics::HandshakeResult, verify, Site, SiteTable, TlsMetrics};
use crate::config::NO_SITE;

/// A finished handshake with a verified client certificate.
pub struct Verified {
    pub tls: Box<TlsStream<TcpStream>>,
    pub site: Arc<Site>,
    /// The SNI the client sent, lowercase.
    pub sni: String,
    /// Hex SHA-256 of the verified leaf certificate.
    pub cert_sha256: String,
}

/// Finishes a ClientHello whose SNI names no site with a fatal alert.
#[derive(Debug, Clone)]
pub struct Refuse(Arc<ServerConfig>);

impl Default for Refuse {
    fn default() -> Self {
        Refuse::new()
    }
}

impl Refuse {
    pub fn new() -> Refuse {
        let config = ServerConfig::builder_with_provider(super::provider())
            .with_safe_default_protocol_versions()
            .map(|builder| {
                builder
                    .with_no_client_auth()
                    .with_cert_resolver(Arc::new(NoCertificate))
            });
        match config {
            Ok(config) => Refuse(Arc::new(config)),
            // Only fails if the provider lacks TLS 1.2 and 1.3 suites, which
            // the provider we build never does; then the plain default.
            Err(_) => Refuse(Arc::new(
                ServerConfig::builder()
                    .with_no_client_auth()
                    .with_cert_resolver(Arc::new(NoCertificate)),
            )),
        }
    }
}

/// rustls answers a resolver that finds no certificate with a fatal alert,
/// which tells the client plainly that this name is not served here.
#[derive(Debug)]
struct NoCertificate;

impl ResolvesServerCert for NoCertificate {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        None
    }
}

/// Finishes the handshake of an accepted connection: the ClientHello read,
/// the site picked by SNI, the client certificate verified by the site's
/// policy, all under the site's timeout; `None` when it failed (counted
/// and logged here).
pub async fn handshake(
    tcp: TcpStream,
    peer: SocketAddr,
    table: &SiteTable,
    refuse: &Refuse,
    metrics: &TlsMetrics,
) -> Option<Verified> {
    let started = Instant::now();
    let hello = timeout_at(
        started + table.hello_timeout,
        LazyConfigAcceptor::new(Acceptor::default(), tcp),
    )
    .await;
    let start = match hello {
        Ok(Ok(start)) => start,
        Ok(Err(error)) => {
            metrics.handshake(NO_SITE, verify::classify(&error));
            return None;
        }
        Err(_) => {
            metrics.handshake(NO_SITE, HandshakeResult::Timeout);
            return None;
        }
    };
    let sni = start
        .client_hello()
        .server_name()
        .map(|name| name.trim_end_matches('.').to_ascii_lowercase());
    let Some(site) = table.lookup(sni.as_deref()).cloned() else {
        metrics.handshake(NO_SITE, HandshakeResult::UnknownSni);
        tracing::debug!(%peer, sni = ?sni, "refused: no site for this SNI");
        let _ = timeout_at(
            started + table.hello_timeout,
            start.into_stream(refuse.0.clone()),
        )
        .await;
        return None;
    };
    let label = site.label();
    let handshake = timeout_at(
        started + site.handshake_timeout,
        start.into_stream(site.tls.clone()),
    )
    .await;
    let tls = match handshake {
        Ok(Ok(tls)) => tls,
        Ok(Err(error)) => {
            let result = verify::classify(&error);
            metrics.handshake(label, result);
            tracing::info!(site = label, %peer, %result, %error, "handshake refused");
            return None;
        }
        Err(_) => {
            metrics.handshake(label, HandshakeResult::Timeout);
            tracing::info!(site = label, %peer, "handshake timed out");
            return None;
        }
    };
    metrics.handshake(label, HandshakeResult::Ok);
    let cert_sha256 = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|chain| chain.first())
        .map(|leaf| hex(&Sha256::digest(leaf.as_ref())))
        .unwrap_or_default();
    Some(Verified {
        // Boxed: the stream is moved through several futures on its way to
        // hyper, each of which would otherwise keep a copy's worth of space.
        tls: Box::new(tls),
        site,
        sni: sni.unwrap_or_default(),
        cert_sha256,
    })
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut out, b| {
            let _ = write!(out, "{b:02x}");
            out
        })
}
