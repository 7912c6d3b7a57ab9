//! Per-core connection workers: one thread per core, each with its own
//! single-threaded tokio runtime and its own pooled upstream client.
//!
//! Why: on the multi-threaded runtime a client connection's task and the
//! upstream connection it borrows from the shared pool could sit on
//! different threads, so each keep-alive request woke another thread
//! (measured ~9% of samples in cross-thread wake-ups), and the shared pool
//! paid for locking. Here a connection is pinned to one worker for its whole
//! life and only ever uses that worker's pool, so a request and its upstream
//! exchange stay on one thread.

use std::{
    future::Future,
    io,
    net::SocketAddr,
    num::NonZeroUsize,
    sync::atomic::{AtomicUsize, Ordering::Relaxed},
    thread,
};

use tokio::{runtime, sync::oneshot};

use crate::proxy::{self, metrics::HttpMetrics, UpstreamClient};

/// The workers; dropping this stops them (their runtimes, and any
/// connections still on them, are dropped on their own threads).
#[derive(Debug)]
pub struct Workers {
    workers: Vec<Worker>,
    next: AtomicUsize,
}

#[derive(Debug)]
struct Worker {
    handle: runtime::Handle,
    upstream: UpstreamClient,
    /// Dropped with the worker, which ends the thread's `block_on`.
    _stop: oneshot::Sender<()>,
}

/// A worker thread or its runtime could not be started.
#[derive(Debug, thiserror::Error)]
#[error("cannot start connection worker {index}")]
pub struct WorkerError {
    index: usize,
    #[source]
    source: io::Error,
}

impl Workers {
    /// One worker per core the process may use.
    pub fn per_core(metrics: &HttpMetrics) -> Result<Workers, WorkerError> {
        let count = thread::available_parallelism().map_or(1, NonZeroUsize::get);
        Workers::start(count, metrics)
    }

    pub fn start(count: usize, metrics: &HttpMetrics) -> Result<Workers, WorkerError> {
        let workers = (0..count.max(1))
            .map(|index| {
                let fail = |source| WorkerError { index, source };
                let runtime = runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(fail)?;
                let handle = runtime.handle().clone();
                let (stop, stopped) = oneshot::channel::<()>();
                thread::Builder::new()
                    .name(format!("shield-worker-{index}"))
                    // Spawned tasks run while `block_on` waits; it returns
                    // when `Workers` is dropped, and dropping the runtime
                    // then drops whatever connections remain.
                    .spawn(move || {
                        let _ = runtime.block_on(stopped);
                    })
                    .map_err(fail)?;
                Ok(Worker {
                    handle,
                    upstream: proxy::upstream_client(metrics.clone()),
                    _stop: stop,
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(Workers {
            workers,
            next: AtomicUsize::new(0),
        })
    }

    /// Runs `serve` on the next worker (round-robin), with that worker's
    /// upstream client. The socket moves as a std stream and is registered
    /// with the worker's reactor there, so all its I/O wakes that worker.
    pub fn spawn<F, Fut>(&self, tcp: tokio::net::TcpStream, peer: SocketAddr, serve: F)
    where
        F: FnOnce(tokio::net::TcpStream, UpstreamClient) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let tcp = match tcp.into_std() {
            Ok(tcp) => tcp,
            Err(error) => {
                tracing::warn!(%peer, %error, "cannot hand the connection to a worker");
                return;
            }
        };
        let index = self.next.fetch_add(1, Relaxed) % self.workers.len();
        let worker = &self.workers[index];
        let upstream = worker.upstream.clone();
        worker.handle.spawn(async move {
            // `into_std` left the socket non-blocking, as `from_std` needs.
            match tokio::net::TcpStream::from_std(tcp) {
                Ok(tcp) => serve(tcp, upstream).await,
                Err(error) => {
                    tracing::warn!(%peer, %error, "worker cannot register the connection");
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_worker_error_names_its_cause_once() {
        let source = io::Error::from_raw_os_error(libc::EAGAIN);
        let cause = source.to_string();
        let error = WorkerError { index: 1, source };
        let (count, text) = crate::error::tests::count_in_chain(error, &cause);
        assert_eq!(count, 1, "{text}");
    }

    use tokio::{io::AsyncWriteExt as _, net::TcpListener, sync::mpsc};

    use super::*;

    /// Connections go round-robin to the workers' threads, and the socket
    /// works there (it was registered with that worker's reactor).
    #[tokio::test]
    async fn connections_are_served_round_robin_on_worker_threads() {
        let workers = Workers::start(2, &HttpMetrics::default()).expect("workers");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (seen, mut threads) = mpsc::unbounded_channel();
        for _ in 0..4 {
            let client = tokio::net::TcpStream::connect(addr);
            let (accepted, client) = tokio::join!(listener.accept(), client);
            let (tcp, peer) = accepted.expect("accept");
            let mut client = client.expect("connect");
            let seen = seen.clone();
            workers.spawn(tcp, peer, move |mut tcp, _upstream| async move {
                // Reported before the byte is written, so the client's read
                // below orders the reports: sent after the write, a worker
                // could report after the next connection's worker.
                let _ = seen.send(thread::current().name().map(str::to_owned));
                let _ = tcp.write_all(b"x").await;
            });
            let mut byte = [0u8; 1];
            tokio::io::AsyncReadExt::read_exact(&mut client, &mut byte)
                .await
                .expect("served");
        }
        let mut names = Vec::new();
        for _ in 0..4 {
            names.push(threads.recv().await.flatten().expect("a named thread"));
        }
        assert_eq!(
            names,
            [
                "shield-worker-0",
                "shield-worker-1",
                "shield-worker-0",
                "shield-worker-1"
            ]
        );
    }
}
