//! Per-connection clocks for the header and idle timeouts.
//!
//! hyper's own h1 header timer also runs while a keep-alive connection
//! waits for its next request, which would close Cloudflare's idle
//! connections after `header_timeout` instead of `idle_timeout`, and h2 has
//! no idle timeout at all. So the connection's IO records when bytes move,
//! requests record when they start and end, and [`Activity::check`] decides.

use std::{
    io,
    pin::Pin,
    sync::{
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed},
        Arc,
    },
    task::{Context, Poll},
    time::Duration,
};

use bytes::{Buf, Bytes};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    time::Instant,
};

const NOT_WAITING: u64 = u64::MAX;

#[derive(Debug)]
pub struct Activity {
    epoch: Instant,
    /// Milliseconds since `epoch` of the last read or write.
    last_io: AtomicU64,
    /// When the first byte of a request head arrived, or [`NOT_WAITING`].
    head_since: AtomicU64,
    inflight: AtomicUsize,
    /// The last write or flush could not finish (the socket is full).
    write_blocked: AtomicBool,
    /// h1: every request head is timed from its first byte. h2 multiplexes
    /// control frames with requests, so only the first request is timed.
    time_every_head: bool,
}

/// What the connection should do now.
#[derive(Debug, PartialEq, Eq)]
pub enum Check {
    /// Nothing is due before this instant.
    WaitUntil(Instant),
    /// A request head took longer than `header_timeout` (slowloris).
    HeaderTimeout,
    /// No request in flight and no bytes for `idle_timeout`.
    Idle,
    /// Nothing in flight, nothing of a next request read, nothing left to
    /// write, for the `park_after` given to [`Activity::check`].
    Park,
}

impl Activity {
    /// A freshly handshaken connection: its first request head is due
    /// within `header_timeout` from now.
    pub fn new(time_every_head: bool) -> Self {
        Activity {
            epoch: Instant::now(),
            last_io: AtomicU64::new(0),
            head_since: AtomicU64::new(0),
            inflight: AtomicUsize::new(0),
            write_blocked: AtomicBool::new(false),
            time_every_head,
        }
    }

    fn now(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX - 1)
    }

    fn on_read(&self) {
        let now = self.now();
        self.last_io.store(now, Relaxed);
        if self.time_every_head && self.inflight.load(Relaxed) == 0 {
            let _ = self
                .head_since
                .compare_exchange(NOT_WAITING, now, Relaxed, Relaxed);
        }
    }

    fn on_write(&self) {
        self.last_io.store(self.now(), Relaxed);
    }

    /// A request head is complete; the guard marks the request's end.
    pub fn begin_request(self: &Arc<Self>) -> RequestGuard {
        self.inflight.fetch_add(1, Relaxed);
        self.head_since.store(NOT_WAITING, Relaxed);
        self.last_io.store(self.now(), Relaxed);
        RequestGuard(self.clone())
    }

    pub fn check(
        &self,
        header_timeout: Duration,
        idle_timeout: Duration,
        park_after: Option<Duration>,
    ) -> Check {
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX / 4);
        let now = self.now();
        let mut next = now.saturating_add(ms(idle_timeout));
        let head = self.head_since.load(Relaxed);
        if head != NOT_WAITING {
            let due = head.saturating_add(ms(header_timeout));
            if now >= due {
                return Check::HeaderTimeout;
            }
            next = next.min(due);
        }
        if self.inflight.load(Relaxed) == 0 {
            let due = self.last_io.load(Relaxed).saturating_add(ms(idle_timeout));
            if now >= due {
                return Check::Idle;
            }
            next = next.min(due);
        }
        if let Some(park_after) = park_after {
            // Nothing tells the connection's driver when a request ends, so
            // a connection that cannot park yet looks again later.
            let due = if self.inflight.load(Relaxed) == 0
                && head == NOT_WAITING
                && !self.write_blocked.load(Relaxed)
            {
                let due = self.last_io.load(Relaxed).saturating_add(ms(park_after));
                if now >= due {
                    return Check::Park;
                }
                due
            } else {
                now.saturating_add(ms(park_after))
            };
            next = next.min(due);
        }
        Check::WaitUntil(self.epoch + Duration::from_millis(next))
    }
}

/// Held by a response body until it is sent or dropped.
#[derive(Debug)]
pub struct RequestGuard(Arc<Activity>);

impl Drop for RequestGuard {
    fn drop(&mut self) {
        self.0.inflight.fetch_sub(1, Relaxed);
        self.0.on_write();
    }
}

/// IO that reports to an [`Activity`].
#[derive(Debug)]
pub struct Tracked<IO> {
    io: IO,
    activity: Arc<Activity>,
    /// Read from `io` already, to be read again first.
    unread: Bytes,
    /// Bytes written to `io` so far (for the access log).
    written: u64,
}

impl<IO> Tracked<IO> {
    pub fn new(io: IO, activity: Arc<Activity>) -> Self {
        Tracked {
            io,
            activity,
            unread: Bytes::new(),
            written: 0,
        }
    }

    /// Puts `bytes` back in front of what is still to be read.
    pub fn unread(&mut self, bytes: Bytes) {
        if self.unread.is_empty() {
            self.unread = bytes;
        } else {
            let mut joined = Vec::with_capacity(bytes.len() + self.unread.len());
            joined.extend_from_slice(&bytes);
            joined.extend_from_slice(&self.unread);
            self.unread = joined.into();
        }
    }

    /// Bytes written so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    fn record_write<T>(&self, result: &Poll<io::Result<T>>) {
        let blocked = result.is_pending();
        if self.activity.write_blocked.load(Relaxed) != blocked {
            self.activity.write_blocked.store(blocked, Relaxed);
        }
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Tracked<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.unread.is_empty() {
            let n = self.unread.len().min(buf.remaining());
            buf.put_slice(&self.unread[..n]);
            self.unread.advance(n);
            self.activity.on_read();
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        let result = Pin::new(&mut self.io).poll_read(cx, buf);
        if matches!(result, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.on_read();
        }
        result
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Tracked<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.io).poll_write(cx, data);
        self.record_write(&result);
        if let Poll::Ready(Ok(n)) = result {
            if n > 0 {
                self.written += n as u64;
                self.activity.on_write();
            }
        }
        result
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.record_write(&result);
        if let Poll::Ready(Ok(n)) = result {
            if n > 0 {
                self.written += n as u64;
                self.activity.on_write();
            }
        }
        result
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let result = Pin::new(&mut self.io).poll_flush(cx);
        self.record_write(&result);
        result
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn first_head_is_timed_from_the_handshake() {
        let activity = Arc::new(Activity::new(true));
        let (h, i) = (Duration::from_secs(10), Duration::from_secs(900));
        assert!(matches!(activity.check(h, i, None), Check::WaitUntil(_)));
        tokio::time::advance(Duration::from_secs(11)).await;
        assert_eq!(activity.check(h, i, None), Check::HeaderTimeout);
    }

    #[tokio::test(start_paused = true)]
    async fn idle_after_a_request_and_not_during_one() {
        let activity = Arc::new(Activity::new(true));
        let (h, i) = (Duration::from_secs(10), Duration::from_secs(900));
        let guard = activity.begin_request();
        tokio::time::advance(Duration::from_secs(1000)).await;
        assert!(matches!(activity.check(h, i, None), Check::WaitUntil(_)));
        drop(guard);
        tokio::time::advance(Duration::from_secs(899)).await;
        assert!(matches!(activity.check(h, i, None), Check::WaitUntil(_)));
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(activity.check(h, i, None), Check::Idle);
    }

    #[tokio::test(start_paused = true)]
    async fn a_trickled_second_head_times_out() {
        let activity = Arc::new(Activity::new(true));
        let (h, i) = (Duration::from_secs(10), Duration::from_secs(900));
        drop(activity.begin_request());
        activity.on_read();
        tokio::time::advance(Duration::from_secs(5)).await;
        activity.on_read();
        tokio::time::advance(Duration::from_secs(6)).await;
        activity.on_read();
        assert_eq!(activity.check(h, i, None), Check::HeaderTimeout);
    }

    #[tokio::test(start_paused = true)]
    async fn parks_only_when_nothing_is_pending() {
        let activity = Arc::new(Activity::new(true));
        let (h, i, p) = (
            Duration::from_secs(10),
            Duration::from_secs(900),
            Some(Duration::from_millis(250)),
        );
        // Before the first request head: not parked, looked at again soon.
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(matches!(activity.check(h, i, p), Check::WaitUntil(_)));
        let guard = activity.begin_request();
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(matches!(activity.check(h, i, p), Check::WaitUntil(_)));
        drop(guard);
        tokio::time::advance(Duration::from_millis(100)).await;
        assert!(matches!(activity.check(h, i, p), Check::WaitUntil(_)));
        tokio::time::advance(Duration::from_millis(200)).await;
        assert_eq!(activity.check(h, i, p), Check::Park);
        // Part of a next head arrived: it is timed instead.
        activity.on_read();
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(matches!(activity.check(h, i, p), Check::WaitUntil(_)));
    }
}
