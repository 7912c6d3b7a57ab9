//! One listening address: accept under the connection cap, hand each
//! connection to a worker, where its handshake (`tls`) and its HTTP
//! (`proxy`) run.

use std::{net::SocketAddr, sync::Arc};

use arc_swap::ArcSwap;
use tokio::{
    net::{TcpListener, TcpStream},
    sync::{watch, OwnedSemaphorePermit, Semaphore},
};

use super::workers::Workers;
use crate::{
    proxy::{self, metrics::HttpMetrics, Client, Closing, HttpProtocol, UpstreamClient},
    tls::{self, Refuse, SiteTable, TlsMetrics, Verified},
};

/// What every connection of every listener shares.
#[derive(Debug)]
pub struct Shared {
    pub metrics: TlsMetrics,
    pub http_metrics: HttpMetrics,
    /// Where accepted connections are served, each with its worker's
    /// upstream client.
    pub workers: Workers,
    pub refuse: Refuse,
}

/// One listener's sites as one reload built them, and what tells the
/// connections accepted under them to close: retired by the next reload,
/// or shut down with the frontend.
#[derive(Debug)]
pub struct Generation {
    pub table: SiteTable,
    pub closing: watch::Receiver<Closing>,
}

/// Accepts until the task is aborted. The permit is taken before `accept`,
/// so at the cap the kernel backlog holds new connections (accepting pauses)
/// instead of shield accepting and dropping them.
pub async fn run(
    listener: TcpListener,
    table: Arc<ArcSwap<Generation>>,
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
    generation: Arc<Generation>,
    permit: OwnedSemaphorePermit,
    shared: Arc<Shared>,
    upstream: UpstreamClient,
) {
    // Boxed: the handshake's state is several times the size of a served
    // connection's, and the task would keep that size while idle.
    let handshake = tls::handshake(
        tcp,
        peer,
        &generation.table,
        &shared.refuse,
        &shared.metrics,
    );
    let Some(Verified {
        tls,
        site,
        sni,
        cert_sha256,
    }) = Box::pin(handshake).await
    else {
        return;
    };
    let closing = generation.closing.clone();
    drop(generation);
    let protocol = match tls.get_ref().1.alpn_protocol() {
        Some(b"h2") => HttpProtocol::Http2(site.h2),
        _ => HttpProtocol::Http1,
    };
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
        closing,
    )
    .await;
    drop(permit);
}
