//! One listening address: accept under the connection cap, read the
//! ClientHello, pick the site by SNI, finish the handshake with that site's
//! policy under its timeout, count the result, serve HTTP.

use std::{net::SocketAddr, sync::Arc};

use arc_swap::ArcSwap;
use rustls::{
    server::{Acceptor, ClientHello, ResolvesServerCert},
    sign::CertifiedKey,
    ServerConfig,
};
use sha2::{Digest, Sha256};
use tokio::{
    net::{TcpListener, TcpStream},
    sync::{watch, OwnedSemaphorePermit, Semaphore},
    time::{timeout_at, Instant},
};
use tokio_rustls::{server::TlsStream, LazyConfigAcceptor};

use super::{metrics::HandshakeResult, verify, workers::Workers, Site, SiteTable, TlsMetrics};
use crate::proxy::{
    self,
    metrics::{HttpMetrics, NO_SITE},
    Client, Protocol, UpstreamClient,
};

/// What every connection of every listener shares.
#[derive(Debug)]
pub struct Shared {
    pub metrics: TlsMetrics,
    pub http_metrics: HttpMetrics,
    /// Where accepted connections are served, each with its worker's
    /// upstream client.
    pub workers: Workers,
    /// Finishes a ClientHello whose SNI names no site with a fatal alert.
    pub refuse: Arc<ServerConfig>,
    /// Turns true when the frontend shuts down.
    pub shutdown: watch::Receiver<bool>,
}

impl Shared {
    pub fn refuse_config() -> Arc<ServerConfig> {
        let config = ServerConfig::builder_with_provider(super::provider())
            .with_safe_default_protocol_versions()
            .map(|builder| {
                builder
                    .with_no_client_auth()
                    .with_cert_resolver(Arc::new(NoCertificate))
            });
        match config {
            Ok(config) => Arc::new(config),
            // Only fails if the provider lacks TLS 1.2 and 1.3 suites, which
            // the provider we build never does; then the plain default.
            Err(_) => Arc::new(
                ServerConfig::builder()
                    .with_no_client_auth()
                    .with_cert_resolver(Arc::new(NoCertificate)),
            ),
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

/// Accepts until the task is aborted. The permit is taken before `accept`,
/// so at the cap the kernel backlog holds new connections (accepting pauses)
/// instead of shield accepting and dropping them.
pub async fn run(
    listener: TcpListener,
    table: Arc<ArcSwap<SiteTable>>,
    limit: Arc<Semaphore>,
    shared: Arc<Shared>,
) {
    loop {
        let Ok(permit) = limit.clone().acquire_owned().await else {
            return;
        };
        let (tcp, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(%error, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let table = table.load_full();
        let shared_for_connection = shared.clone();
        // The permit moves with the connection to its worker.
        shared.workers.spawn(tcp, peer, move |tcp, upstream| {
            connection(tcp, peer, table, permit, shared_for_connection, upstream)
        });
    }
}

async fn connection(
    tcp: TcpStream,
    peer: SocketAddr,
    table: Arc<SiteTable>,
    permit: OwnedSemaphorePermit,
    shared: Arc<Shared>,
    upstream: UpstreamClient,
) {
    // Boxed: the handshake's state is several times the size of a served
    // connection's, and the task would keep that size while idle.
    let Some((tls, site, sni)) = Box::pin(handshake(tcp, peer, table, &shared)).await else {
        return;
    };
    let (_, session) = tls.get_ref();
    let protocol = match session.alpn_protocol() {
        Some(b"h2") => Protocol::Http2(site.h2),
        _ => Protocol::Http1,
    };
    let cert_sha256 = session
        .peer_certificates()
        .and_then(|chain| chain.first())
        .map(|leaf| hex(&Sha256::digest(leaf.as_ref())))
        .unwrap_or_default();
    let route = site.route.clone();
    drop(site);
    let client = Client {
        sni,
        peer: peer.ip(),
        cert_sha256,
    };
    proxy::serve(
        tls,
        protocol,
        route,
        client,
        upstream,
        shared.http_metrics.clone(),
        shared.shutdown.clone(),
    )
    .await;
    drop(permit);
}

/// The verified TLS stream, its site and its SNI (lowercase), or `None`
/// when the handshake failed (counted and logged here).
async fn handshake(
    tcp: TcpStream,
    peer: SocketAddr,
    table: Arc<SiteTable>,
    shared: &Shared,
) -> Option<(Box<TlsStream<TcpStream>>, Arc<Site>, String)> {
    let started = Instant::now();
    let metrics = &shared.metrics;
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
            start.into_stream(shared.refuse.clone()),
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
    // Boxed: the stream is moved through several futures on its way to
    // hyper, each of which would otherwise keep a copy's worth of space.
    Some((Box::new(tls), site, sni.unwrap_or_default()))
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
