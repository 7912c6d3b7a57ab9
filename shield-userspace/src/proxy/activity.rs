//! Per-connection clocks for the header and idle timeouts.
//!
//! hyper's own h1 header timer also runs while a keep-alive connection
//! waits for its next request, which would close Cloudflare's idle
//! connections after `header_timeout` instead of `idle_timeout`, and h2 has
//! no idle timeout at all. So the connection's IO records when bytes move,
//! requests record when they start and end, and [`Activity::check`] decides.
//!
//! The same clocks tell when a connection is quiet enough for its TLS stream
//! to give its record buffer back ([`ReleaseIdle`]): a busy connection would
//! otherwise free and take it again at every burst of reads.

use std::{
    io,
    pin::Pin,
    sync::{
        atomic::{
            AtomicBool, AtomicU64, AtomicUsize,
            Ordering::{Relaxed, SeqCst},
        },
        Arc,
    },
    task::{Context, Poll},
    time::Duration,
};

use bytes::{Buf, Bytes};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    sync::{futures::Notified, Notify},
    time::Instant,
};

use super::lifecycle::PARK_AFTER;

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
    /// Signalled when the last request in flight ends and the last
    /// [`Activity::check`] asked to be looked at again only after the
    /// connection's quiet instant: its driver would otherwise sleep past it.
    quiet: Notify,
    /// Milliseconds since `epoch` until which the last check's caller sleeps.
    next_check: AtomicU64,
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
            quiet: Notify::new(),
            next_check: AtomicU64::new(0),
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

    /// Resolves when the connection may have become quiet later than its
    /// driver's next look (the last request ended, or a read after other IO
    /// found nothing); a signal given while nobody waits is kept for the
    /// next call.
    pub fn went_quiet(&self) -> Notified<'_> {
        self.quiet.notified()
    }

    /// When the connection becomes quiet, in milliseconds since `epoch`,
    /// if nothing moves before: PARK_AFTER after the last IO.
    fn quiet_at(&self) -> u64 {
        self.last_io.load(Relaxed).saturating_add(ms(PARK_AFTER))
    }

    /// A read found nothing. True when the connection has been quiet for
    /// [`PARK_AFTER`] (nothing in flight, nothing of a next request read,
    /// nothing left to write): its stream may give its buffer back. When it
    /// is not quiet yet but could become so, makes sure the driver looks
    /// again by then: IO that is not a request (a PING, a window update, a
    /// write that was blocked) moves the quiet instant past the driver's
    /// one wake, and the read that moved it has taken the buffer again.
    fn read_found_nothing(&self) -> bool {
        if self.inflight.load(Relaxed) != 0 || self.head_since.load(Relaxed) != NOT_WAITING {
            return false;
        }
        let quiet_at = self.quiet_at();
        if self.now() >= quiet_at {
            return !self.write_blocked.load(Relaxed);
        }
        if self.next_check.load(SeqCst) > quiet_at {
            self.quiet.notify_one();
        }
        false
    }

    pub fn check(
        &self,
        header_timeout: Duration,
        idle_timeout: Duration,
        park_after: Option<Duration>,
    ) -> Check {
        loop {
            let busy = self.inflight.load(SeqCst) != 0;
            let check = self.check_once(busy, header_timeout, idle_timeout, park_after);
            // The last request may have ended while this looked: it then
            // saw the old `next_check` and did not signal, or this sees it
            // gone now (the two sides store, then load, in one total order).
            if busy && matches!(check, Check::WaitUntil(_)) && self.inflight.load(SeqCst) == 0 {
                continue;
            }
            return check;
        }
    }

    fn check_once(
        &self,
        busy: bool,
        header_timeout: Duration,
        idle_timeout: Duration,
        park_after: Option<Duration>,
    ) -> Check {
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
        if !busy {
            let due = self.last_io.load(Relaxed).saturating_add(ms(idle_timeout));
            if now >= due {
                return Check::Idle;
            }
            next = next.min(due);
        }
        if let Some(park_after) = park_after {
            // A connection that cannot park yet looks again later: its
            // driver needs no signal at a request's end to park on time.
            let due = if !busy && head == NOT_WAITING && !self.write_blocked.load(Relaxed) {
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
        // One wake when the connection has been quiet for PARK_AFTER, so
        // that its stream is read once more and gives its buffer back
        // (`Tracked`); an h2 connection is otherwise not polled at all while
        // idle. Once that instant has passed, no more wakes until new IO.
        if !busy && head == NOT_WAITING && !self.write_blocked.load(Relaxed) {
            let due = self.quiet_at();
            if now < due {
                next = next.min(due);
            }
        }
        self.next_check.store(next, SeqCst);
        Check::WaitUntil(self.epoch + Duration::from_millis(next))
    }
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX / 4)
}

/// A stream that keeps a buffer between reads and can give it back while
/// its connection is idle. Once given back, each read takes it again and a
/// read that finds nothing gives it back once more: cheap while such reads
/// are rare, which on a quiet connection they are (a wake, a timer).
pub trait ReleaseIdle {
    /// Gives back what the stream keeps between reads, when it holds none
    /// of the peer's data; the next read takes it again.
    fn release_idle(&mut self);
}

/// rustls keeps a 4 KiB record buffer for a connection's life otherwise
/// (the vendored rustls's `release_read_buffer`, third_party/README.md).
impl<IO> ReleaseIdle for tokio_rustls::server::TlsStream<IO> {
    fn release_idle(&mut self) {
        self.get_mut().1.release_read_buffer();
    }
}

/// For the size test of `serve` only: every served connection is TLS.
#[cfg(test)]
impl ReleaseIdle for tokio::net::TcpStream {
    fn release_idle(&mut self) {}
}

/// The handshake hands its stream over boxed (`tls::Verified`).
impl<T: ReleaseIdle + ?Sized> ReleaseIdle for Box<T> {
    fn release_idle(&mut self) {
        (**self).release_idle();
    }
}

/// Held by a response body until it is sent or dropped.
#[derive(Debug)]
pub struct RequestGuard(Arc<Activity>);

impl Drop for RequestGuard {
    fn drop(&mut self) {
        let activity = &self.0;
        let was = activity.inflight.fetch_sub(1, SeqCst);
        activity.on_write();
        // Under load the driver is already due to look within PARK_AFTER,
        // and is left alone: a wake per request would cost a poll of the
        // whole connection each.
        if was == 1 && activity.next_check.load(SeqCst) > activity.quiet_at() {
            activity.quiet.notify_one();
        }
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

impl<IO: AsyncRead + ReleaseIdle + Unpin> AsyncRead for Tracked<IO> {
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
        match result {
            Poll::Ready(Ok(())) if buf.filled().len() > before => self.activity.on_read(),
            // A read that finds nothing on a connection quiet for
            // PARK_AFTER: the client is idle, maybe for minutes. A busy
            // connection also ends each burst of reads here, but is never
            // quiet that long, so it keeps its buffer.
            Poll::Pending if self.activity.read_found_nothing() => self.io.release_idle(),
            _ => {}
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

    /// A stream with nothing to read, counting the releases asked of it.
    #[derive(Default)]
    struct Quiet {
        released: usize,
    }

    impl AsyncRead for Quiet {
        fn poll_read(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            _: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            Poll::Pending
        }
    }

    impl ReleaseIdle for Quiet {
        fn release_idle(&mut self) {
            self.released += 1;
        }
    }

    /// Polls one read; true when it found nothing.
    async fn read_once(io: &mut Tracked<Quiet>) -> bool {
        std::future::poll_fn(|cx| {
            let mut byte = [0; 1];
            let mut buf = ReadBuf::new(&mut byte);
            Poll::Ready(Pin::new(&mut *io).poll_read(cx, &mut buf).is_pending())
        })
        .await
    }

    /// A served request, ended now.
    fn one_request(activity: &Arc<Activity>) {
        drop(activity.begin_request());
    }

    #[tokio::test(start_paused = true)]
    async fn a_read_that_finds_nothing_gives_the_buffer_back_only_on_a_quiet_connection() {
        let activity = Arc::new(Activity::new(false));
        one_request(&activity);
        let mut io = Tracked::new(Quiet::default(), activity.clone());
        // The end of a burst on a busy connection: the buffer is kept.
        assert!(read_once(&mut io).await);
        assert_eq!(io.io.released, 0);
        tokio::time::advance(PARK_AFTER).await;
        assert!(read_once(&mut io).await);
        assert_eq!(io.io.released, 1, "quiet for PARK_AFTER: given back");

        // Never while a request is in flight, however long it takes.
        let request = activity.begin_request();
        tokio::time::advance(PARK_AFTER * 4).await;
        assert!(read_once(&mut io).await);
        assert_eq!(io.io.released, 1);
        drop(request);
        assert!(read_once(&mut io).await);
        assert_eq!(io.io.released, 1, "the request's end is activity");
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_going_quiet_is_woken_once_to_give_its_buffer_back() {
        let activity = Activity::new(false);
        let (header, idle) = (Duration::from_secs(10), Duration::from_secs(900));
        // Before its first request, a connection is timed by its header
        // timeout only.
        let start = Instant::now();
        assert_eq!(
            activity.check(header, idle, None),
            Check::WaitUntil(start + header)
        );
        let activity = Arc::new(activity);
        one_request(&activity);
        // h2 asks for no parking, but is woken when it has been quiet for
        // PARK_AFTER ...
        assert_eq!(
            activity.check(header, idle, None),
            Check::WaitUntil(start + PARK_AFTER)
        );
        // ... and after that only by its idle timeout.
        tokio::time::advance(PARK_AFTER).await;
        assert_eq!(
            activity.check(header, idle, None),
            Check::WaitUntil(start + idle)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn io_after_the_quiet_wake_has_the_driver_look_again() {
        let (header, idle) = (Duration::from_secs(10), Duration::from_secs(900));
        let activity = Arc::new(Activity::new(false));
        one_request(&activity);
        let mut io = Tracked::new(Quiet::default(), activity.clone());
        tokio::time::advance(PARK_AFTER).await;
        // The one wake: the driver would now sleep until the idle timeout.
        assert!(
            matches!(activity.check(header, idle, None), Check::WaitUntil(at) if at > Instant::now() + PARK_AFTER)
        );
        assert!(read_once(&mut io).await);
        assert_eq!(io.io.released, 1);
        // A PING: its read took the buffer again, and the next read that
        // finds nothing is not quiet yet, so it tells the driver instead.
        activity.on_read();
        assert!(read_once(&mut io).await);
        assert_eq!(io.io.released, 1);
        let told = tokio::time::timeout(Duration::from_millis(1), activity.went_quiet()).await;
        assert!(told.is_ok(), "the driver was not told to look again");
        assert_eq!(
            activity.check(header, idle, None),
            Check::WaitUntil(Instant::now() + PARK_AFTER)
        );
        tokio::time::advance(PARK_AFTER).await;
        assert!(read_once(&mut io).await);
        assert_eq!(io.io.released, 2);
    }
}
