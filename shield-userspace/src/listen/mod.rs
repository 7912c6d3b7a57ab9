//! The listeners, above `tls` and `proxy`: every site's TLS listener with
//! its site table and connection cap, port 80, the per-core workers that
//! serve accepted connections, reload and shutdown.

mod accept;
pub mod plain;
mod workers;

use std::{
    collections::HashMap,
    net::SocketAddr,
    num::NonZeroUsize,
    sync::{Arc, Mutex, MutexGuard, Weak},
    time::Duration,
};

use arc_swap::ArcSwap;
use tokio::{
    net::{TcpListener, TcpSocket},
    sync::{watch, Semaphore},
    task::JoinHandle,
};

pub use self::workers::WorkerError;
use self::{
    accept::{Generation, Shared},
    plain::PlainRoutes,
    workers::Workers,
};
use crate::{
    config::{Config, HttpAction},
    proxy::{metrics::HttpMetrics, Closing},
    tls::{watch::Stamps, Refuse, Site, SiteTable, TlsError, TlsMetrics},
};

/// Why the listeners could not be started or reloaded; the running state
/// is kept.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ListenError {
    /// A site's TLS state could not be built from its files.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// A listener could not be bound.
    #[error("cannot listen on {addr}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    /// A connection worker could not be started.
    #[error(transparent)]
    Workers(#[from] WorkerError),
}

/// Pending connections the kernel queues per listener: room for Cloudflare's
/// bursts, and for the backlog that builds while accepting is paused at
/// `max_connections`.
const LISTEN_BACKLOG: u32 = 4096;

#[derive(Debug, Clone)]
pub struct FrontendOptions {
    /// How often certificate, key, CA and CRL files are checked for
    /// changes; `None` disables the watcher.
    pub watch_interval: Option<Duration>,
    /// Connection workers; `None`: one per core.
    pub workers: Option<NonZeroUsize>,
}

impl Default for FrontendOptions {
    fn default() -> Self {
        FrontendOptions {
            watch_interval: Some(Duration::from_secs(2)),
            workers: None,
        }
    }
}

/// The TLS terminator of all sites, and the port-80 handler.
///
/// Reloads are atomic: the new state is built completely (every file read
/// and checked, every new address bound) before any of it replaces the old;
/// on error the old state keeps serving. Established connections keep the
/// site state they were accepted with while they finish what is in flight,
/// then close ([`Closing::Retired`]): the next request comes on a new
/// connection, verified under the new state.
#[derive(Debug, Clone)]
pub struct Frontend {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    shared: Arc<Shared>,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    /// The config in force; `None` until the first successful load.
    config: Option<Config>,
    stamps: Stamps,
    listeners: HashMap<SocketAddr, Listener>,
    plain: Option<PlainListener>,
    watcher: Option<JoinHandle<()>>,
    /// Tells the connections accepted under the config in force to close.
    closing: watch::Sender<Closing>,
    /// The same, of earlier configs whose connections are not all gone:
    /// retired, and told again at shutdown.
    retired: Vec<watch::Sender<Closing>>,
}

#[derive(Debug)]
struct Listener {
    local_addr: SocketAddr,
    table: Arc<ArcSwap<Generation>>,
    limit: Arc<Semaphore>,
    capacity: usize,
    task: JoinHandle<()>,
}

#[derive(Debug)]
struct PlainListener {
    configured: SocketAddr,
    local_addr: SocketAddr,
    routes: Arc<ArcSwap<PlainRoutes>>,
    task: JoinHandle<()>,
}

/// The new state, fully built, not yet in force.
struct Prepared {
    tables: HashMap<SocketAddr, SiteTable>,
    bound: HashMap<SocketAddr, TcpListener>,
    plain_bound: Option<TcpListener>,
    stamps: Stamps,
}

/// A reload ready to apply; dropping it closes the listeners it bound and
/// changes nothing.
pub struct PreparedReload<'a> {
    frontend: &'a Frontend,
    state: MutexGuard<'a, State>,
    config: &'a Config,
    prepared: Prepared,
}

impl PreparedReload<'_> {
    /// Applies the reload; it cannot fail.
    pub fn commit(self) {
        let PreparedReload {
            frontend,
            mut state,
            config,
            prepared,
        } = self;
        frontend.commit(&mut state, config, prepared);
    }
}

impl Frontend {
    /// Binds every site's listener (and port 80 unless `[http].action` is
    /// off) and accepts on the current tokio runtime; TLS connections are
    /// served on per-core worker threads (see `workers`).
    pub fn start(
        config: &Config,
        metrics: TlsMetrics,
        http_metrics: HttpMetrics,
    ) -> Result<Frontend, ListenError> {
        Frontend::start_with(config, metrics, http_metrics, FrontendOptions::default())
    }

    pub fn start_with(
        config: &Config,
        metrics: TlsMetrics,
        http_metrics: HttpMetrics,
        options: FrontendOptions,
    ) -> Result<Frontend, ListenError> {
        let shared = Arc::new(Shared {
            metrics,
            workers: match options.workers {
                Some(count) => Workers::start(count.get(), &http_metrics)?,
                None => Workers::per_core(&http_metrics)?,
            },
            http_metrics,
            refuse: Refuse::new(),
        });
        let empty = State {
            config: None,
            stamps: Stamps::default(),
            listeners: HashMap::new(),
            plain: None,
            watcher: None,
            closing: watch::Sender::new(Closing::Open),
            retired: Vec::new(),
        };
        let frontend = Frontend {
            inner: Arc::new(Inner {
                shared,
                state: Mutex::new(empty),
            }),
        };
        frontend.reload(config)?;
        if let Some(interval) = options.watch_interval {
            let weak = Arc::downgrade(&frontend.inner);
            let task = tokio::spawn(watch_files(weak, interval));
            frontend.state().watcher = Some(task);
        }
        Ok(frontend)
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves consistent data: every
        // mutation below happens after all fallible steps.
        self.inner
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Applies `config`: new certificates, CAs, CRLs, pins and upstreams
    /// for new connections, listeners opened and closed as needed. On error
    /// nothing changes and the error says which file or key is at fault.
    pub fn reload(&self, config: &Config) -> Result<(), ListenError> {
        self.prepare_reload(config)?.commit();
        Ok(())
    }

    /// Every fallible step of a reload (files read and checked, new
    /// listeners bound), with nothing applied yet, so the daemon can apply
    /// the kernel maps in between and drop this if they fail: then neither
    /// layer changes. Holds the frontend's state until committed or dropped.
    pub fn prepare_reload<'a>(
        &'a self,
        config: &'a Config,
    ) -> Result<PreparedReload<'a>, ListenError> {
        let state = self.state();
        let prepared = prepare(config, &state)?;
        Ok(PreparedReload {
            frontend: self,
            state,
            config,
            prepared,
        })
    }

    fn commit(&self, state: &mut State, config: &Config, prepared: Prepared) {
        let Prepared {
            tables,
            mut bound,
            plain_bound,
            stamps,
        } = prepared;
        let metrics = &self.inner.shared.metrics;

        // Gauges of sites that are gone fall to 0; the rest are set below.
        for old in state.config.iter().flat_map(|c| &c.sites) {
            if !config.sites.iter().any(|s| s.label() == old.label()) {
                metrics.set_shared_ca_in_use(old.label(), false);
            }
        }
        for table in tables.values() {
            for site in table.sites() {
                metrics.set_shared_ca_in_use(site.label(), site.uses_shared_ca);
                if site.uses_shared_ca {
                    tracing::warn!(
                        site = site.label(),
                        "client_ca = [\"cloudflare-shared\"]: any Cloudflare customer can present \
                         this certificate, so it proves only that a request came through \
                         Cloudflare, not through your zone. Enable zone-level Authenticated \
                         Origin Pulls with a certificate from your own CA and list that CA here."
                    );
                }
            }
        }

        // The connections accepted from now on close with this config; those
        // accepted before are retired once every table is in place (below).
        let (closing, closing_rx) = watch::channel(Closing::Open);
        state.listeners.retain(|addr, listener| {
            let keep = tables.contains_key(addr);
            if !keep {
                // Accepting stops; established connections are retired.
                listener.task.abort();
                tracing::info!(listen = %addr, "listener closed");
            }
            keep
        });
        for (addr, table) in tables {
            let capacity = table.max_connections;
            let generation = Generation {
                table,
                closing: closing_rx.clone(),
            };
            match state.listeners.get_mut(&addr) {
                Some(listener) => {
                    resize(listener, capacity);
                    listener.table.store(Arc::new(generation));
                }
                None => {
                    let Some(tcp) = bound.remove(&addr) else {
                        continue;
                    };
                    let local_addr = tcp.local_addr().unwrap_or(addr);
                    let table = Arc::new(ArcSwap::from_pointee(generation));
                    let limit = Arc::new(Semaphore::new(capacity));
                    let task = tokio::spawn(accept::run(
                        tcp,
                        table.clone(),
                        limit.clone(),
                        self.inner.shared.clone(),
                    ));
                    tracing::info!(listen = %local_addr, "TLS listener open");
                    state.listeners.insert(
                        addr,
                        Listener {
                            local_addr,
                            table,
                            limit,
                            capacity,
                            task,
                        },
                    );
                }
            }
        }

        // Redirects name the port each site is really served on.
        let routes: Vec<_> = state
            .listeners
            .values()
            .flat_map(|listener| {
                let port = listener.local_addr.port();
                let generation = listener.table.load_full();
                generation
                    .table
                    .sites()
                    .map(|site| (site.route.clone(), port))
                    .collect::<Vec<_>>()
            })
            .collect();
        let plain_routes = PlainRoutes::new(config.http.action, routes);
        let wanted = config.http.action != HttpAction::Off && !config.sites.is_empty();
        match (&state.plain, wanted) {
            (Some(plain), true) if plain.configured == config.http.listen => {
                plain.routes.store(Arc::new(plain_routes));
            }
            _ => {
                if let Some(old) = state.plain.take() {
                    old.task.abort();
                }
                if let Some(tcp) = plain_bound {
                    let local_addr = tcp.local_addr().unwrap_or(config.http.listen);
                    let routes = Arc::new(ArcSwap::from_pointee(plain_routes));
                    let task = tokio::spawn(plain::run(
                        tcp,
                        routes.clone(),
                        self.inner.shared.http_metrics.clone(),
                    ));
                    tracing::info!(listen = %local_addr, action = ?config.http.action, "port-80 listener open");
                    state.plain = Some(PlainListener {
                        configured: config.http.listen,
                        local_addr,
                        routes,
                        task,
                    });
                }
            }
        }
        // Every table is in place: what was accepted before finishes its
        // in-flight work and closes (h2 with GOAWAY), so no connection
        // outlives the config it was verified under.
        let previous = std::mem::replace(&mut state.closing, closing);
        previous.send_replace(Closing::Retired);
        state.retired.retain(|sender| sender.receiver_count() > 0);
        if previous.receiver_count() > 0 {
            state.retired.push(previous);
        }
        state.config = Some(config.clone());
        state.stamps = stamps;
    }

    /// The address a site listener configured as `listen` is bound to
    /// (differs when the config asked for port 0).
    pub fn local_addr(&self, listen: SocketAddr) -> Option<SocketAddr> {
        self.state().listeners.get(&listen).map(|l| l.local_addr)
    }

    /// The bound port-80 address, if that listener is on.
    pub fn http_local_addr(&self) -> Option<SocketAddr> {
        self.state().plain.as_ref().map(|p| p.local_addr)
    }

    /// Stops accepting everywhere and asks open connections to close once
    /// their in-flight requests are answered.
    pub fn shutdown(&self) {
        let mut state = self.state();
        for (_, listener) in state.listeners.drain() {
            listener.task.abort();
        }
        if let Some(plain) = state.plain.take() {
            plain.task.abort();
        }
        if let Some(watcher) = state.watcher.take() {
            watcher.abort();
        }
        state.closing.send_replace(Closing::Shutdown);
        for retired in &state.retired {
            retired.send_replace(Closing::Shutdown);
        }
    }
}

/// Builds everything `config` needs without touching the running state.
fn prepare(config: &Config, state: &State) -> Result<Prepared, ListenError> {
    // Stamps first: a file that changes while we read it is seen as changed
    // again by the next poll.
    let stamps = Stamps::of(config);
    let mut tables: HashMap<SocketAddr, SiteTable> = HashMap::new();
    for site_config in &config.sites {
        let site = Arc::new(Site::build(site_config)?);
        tables.entry(site_config.listen).or_default().insert(site);
    }
    let mut bound = HashMap::new();
    for addr in tables.keys() {
        if !state.listeners.contains_key(addr) {
            bound.insert(*addr, bind(*addr)?);
        }
    }
    let plain_wanted = config.http.action != HttpAction::Off && !config.sites.is_empty();
    let plain_kept = state
        .plain
        .as_ref()
        .is_some_and(|p| p.configured == config.http.listen);
    let plain_bound = if plain_wanted && !plain_kept {
        Some(bind(config.http.listen)?)
    } else {
        None
    };
    Ok(Prepared {
        tables,
        bound,
        plain_bound,
        stamps,
    })
}

fn bind(addr: SocketAddr) -> Result<TcpListener, ListenError> {
    let fail = |source| ListenError::Bind { addr, source };
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .map_err(fail)?;
    socket.set_reuseaddr(true).map_err(fail)?;
    socket.bind(addr).map_err(fail)?;
    socket.listen(LISTEN_BACKLOG).map_err(fail)
}

/// Applies a changed `max_connections`. A lower cap takes only free
/// permits now; busy ones vanish as their connections close.
fn resize(listener: &mut Listener, capacity: usize) {
    if capacity > listener.capacity {
        listener.limit.add_permits(capacity - listener.capacity);
    } else if capacity < listener.capacity {
        let mut owed = listener.capacity - capacity;
        owed -= listener.limit.forget_permits(owed);
        if owed > 0 {
            let limit = listener.limit.clone();
            tokio::spawn(async move {
                let owed = u32::try_from(owed).unwrap_or(u32::MAX);
                if let Ok(permits) = limit.acquire_many(owed).await {
                    permits.forget();
                }
            });
        }
    }
    listener.capacity = capacity;
}

async fn watch_files(inner: Weak<Inner>, interval: Duration) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let Some(inner) = inner.upgrade() else {
            return;
        };
        let frontend = Frontend { inner };
        let (config, changed) = {
            let state = frontend.state();
            let Some(config) = state.config.clone() else {
                continue;
            };
            let changed = Stamps::of(&config).changed_since(&state.stamps).cloned();
            (config, changed)
        };
        let Some(path) = changed else {
            continue;
        };
        tracing::info!(file = %path.display(), "TLS file changed, reloading");
        if let Err(error) = frontend.reload(&config) {
            tracing::error!(error = %crate::error::Chain(&error), "reload after file change failed; the previous certificates stay in force");
            // Remember the broken version so the next poll does not retry
            // until the file changes again.
            frontend.state().stamps = Stamps::of(&config);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::tests::count_in_chain;

    #[test]
    fn a_bind_failure_prints_its_cause_once() {
        let source = std::io::Error::from_raw_os_error(libc::EADDRINUSE);
        let cause = source.to_string();
        let bind = ListenError::Bind {
            addr: "0.0.0.0:443".parse().unwrap(),
            source,
        };
        let (count, text) = count_in_chain(bind, &cause);
        assert_eq!(count, 1, "{text}");
        assert!(text.contains("cannot listen on 0.0.0.0:443"), "{text}");
    }
}
