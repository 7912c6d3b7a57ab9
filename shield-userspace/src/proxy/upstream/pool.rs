//! Idle upstream connections, per upstream authority, kept for reuse and
//! handed out only when provably clean.

use std::{
    collections::VecDeque,
    io,
    mem::MaybeUninit,
    sync::{Arc, Mutex, MutexGuard, PoisonError, Weak},
    time::{Duration, Instant},
};

use http::uri::Authority;
use hyper::client::conn::http1::SendRequest;
use tokio::net::TcpStream;

use super::ClientBody;
use crate::proxy::metrics::{Discard, HttpMetrics};

/// Idle upstream connections are kept this long for reuse.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// Idle connections kept per upstream and worker; more than the busiest
/// burst of concurrent requests one worker sends to one upstream would only
/// hold the application's sockets open. Beyond it the oldest is closed.
const MAX_IDLE_PER_UPSTREAM: usize = 512;

/// What an idle connection is fit for, asked just before it is reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Fitness {
    Clean,
    Discard(Discard),
}

/// An upstream connection that can wait in the pool.
pub(super) trait Reusable: std::fmt::Debug + Send + 'static {
    /// Whether another request may be sent on it now: asked at checkout.
    /// Cheap: a flag, or one non-blocking system call.
    fn fitness(&self) -> Fitness;

    /// Known closed without a system call: asked when it comes back, so a
    /// request pays for at most one check.
    fn known_closed(&self) -> bool {
        false
    }
}

impl Reusable for SendRequest<ClientBody> {
    /// hyper's connection task reads the socket while it is idle and closes
    /// it on EOF or on bytes no request asked for, which `is_closed` shows.
    fn fitness(&self) -> Fitness {
        if self.is_closed() {
            Fitness::Discard(Discard::Closed)
        } else {
            Fitness::Clean
        }
    }

    fn known_closed(&self) -> bool {
        self.is_closed()
    }
}

impl Reusable for TcpStream {
    /// Nothing reads a pooled plain stream while it is idle, so whatever the
    /// upstream sent since its last response (a HEAD or 204 answered with a
    /// late body, a second response, or an EOF) still waits in the socket:
    /// a peek at the kernel's receive queue finds it. Only a stream whose
    /// read would block is clean. The peek goes to the socket directly, not
    /// through tokio's readiness cache, which may not have seen the bytes.
    ///
    /// Bytes that arrive after the next request was written cannot be told
    /// apart from its response: HTTP/1.1 has no request ids. That race is
    /// the upstream's bug and lasts only while its stray bytes are in
    /// flight; this check closes it for everything that arrived before.
    fn fitness(&self) -> Fitness {
        let mut byte = [MaybeUninit::<u8>::uninit()];
        loop {
            return match socket2::SockRef::from(self).peek(&mut byte) {
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => Fitness::Clean,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                Ok(0) | Err(_) => Fitness::Discard(Discard::Closed),
                Ok(_) => Fitness::Discard(Discard::UnsolicitedBytes),
            };
        }
    }
}

#[derive(Debug)]
pub(super) struct Pool<C> {
    state: Mutex<State<C>>,
    metrics: HttpMetrics,
}

#[derive(Debug)]
struct State<C> {
    /// Per upstream, oldest first: checkout pops the newest (LIFO), so a
    /// burst's extra connections age out instead of being kept warm. A list
    /// searched by the authority's text rather than a map: a host has a
    /// handful of upstreams, and hashing an `Authority` with the default
    /// hasher (plus its case-insensitive `==`) cost more per request than
    /// the search.
    idle: Vec<(Authority, VecDeque<Idle<C>>)>,
    /// Whether a task is reaping expired idle connections.
    reaping: bool,
}

impl<C> State<C> {
    fn idle_position(&self, authority: &Authority) -> Option<usize> {
        let key = authority.as_str();
        self.idle.iter().position(|(a, _)| a.as_str() == key)
    }

    fn idle_for(&mut self, authority: &Authority) -> Option<&mut VecDeque<Idle<C>>> {
        let at = self.idle_position(authority)?;
        Some(&mut self.idle[at].1)
    }
}

#[derive(Debug)]
struct Idle<C> {
    conn: C,
    since: Instant,
}

impl<C> Idle<C> {
    fn expired(&self, now: Instant) -> bool {
        now.duration_since(self.since) >= POOL_IDLE_TIMEOUT
    }
}

impl<C: Reusable> Pool<C> {
    pub(super) fn new(metrics: HttpMetrics) -> Self {
        Pool {
            state: Mutex::new(State {
                idle: Vec::new(),
                reaping: false,
            }),
            metrics,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State<C>> {
        // Nothing panics while holding it; if something did, the map is
        // still consistent.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn pop(&self, authority: &Authority) -> Option<Idle<C>> {
        self.lock().idle_for(authority)?.pop_back()
    }

    /// The newest idle connection that is not expired and is clean now;
    /// the others met on the way are closed (and counted when unfit).
    pub(super) fn pop_clean(&self, authority: &Authority) -> Option<C> {
        loop {
            let idle = self.pop(authority)?;
            if idle.expired(Instant::now()) {
                continue;
            }
            match idle.conn.fitness() {
                Fitness::Clean => return Some(idle.conn),
                Fitness::Discard(reason) => self.discarded(authority, reason),
            }
        }
    }

    fn discarded(&self, authority: &Authority, reason: Discard) {
        self.metrics.upstream_discard(authority.as_str(), reason);
        if reason == Discard::UnsolicitedBytes {
            tracing::warn!(
                upstream = %authority,
                "the upstream sent bytes on an idle connection that no request asked for (a late body or an extra response); closed it instead of reusing it"
            );
        }
    }

    pub(super) fn put(self: &Arc<Self>, authority: &Authority, conn: C) {
        if conn.known_closed() {
            self.discarded(authority, Discard::Closed);
            return;
        }
        // The reaper needs a runtime; outside one (a worker shutting down)
        // the connection is simply closed.
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let evicted;
        let start_reaper;
        {
            let mut state = self.lock();
            let at = state.idle_position(authority).unwrap_or_else(|| {
                state.idle.push((authority.clone(), VecDeque::new()));
                state.idle.len() - 1
            });
            let idle = &mut state.idle[at].1;
            evicted = if idle.len() >= MAX_IDLE_PER_UPSTREAM {
                idle.pop_front()
            } else {
                None
            };
            idle.push_back(Idle {
                conn,
                since: Instant::now(),
            });
            start_reaper = !state.reaping;
            state.reaping = true;
        }
        // Closed outside the lock.
        drop(evicted);
        if start_reaper {
            runtime.spawn(reap(Arc::downgrade(self)));
        }
    }
}

/// Closes idle connections past `POOL_IDLE_TIMEOUT`, checking every
/// `POOL_IDLE_TIMEOUT` as hyper-util's pool did; ends when the pool is
/// empty (`put` starts another) or dropped. Unfit connections are left for
/// checkout to find, which counts them.
async fn reap<C: Reusable>(pool: Weak<Pool<C>>) {
    loop {
        tokio::time::sleep(POOL_IDLE_TIMEOUT).await;
        let Some(pool) = pool.upgrade() else {
            return;
        };
        let mut expired = Vec::new();
        let mut state = pool.lock();
        let now = Instant::now();
        state.idle.retain_mut(|(_, idle)| {
            // Oldest first, so the expired ones are at the front.
            while idle.front().is_some_and(|first| first.expired(now)) {
                expired.extend(idle.pop_front());
            }
            !idle.is_empty()
        });
        let done = state.idle.is_empty();
        if done {
            state.reaping = false;
        }
        drop(state);
        drop(expired);
        if done {
            return;
        }
    }
}
