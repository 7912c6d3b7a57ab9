//! The bodies that cross to and from the upstream on hyper's path.

use std::{
    pin::Pin,
    sync::{
        atomic::{AtomicBool, Ordering::Relaxed},
        Arc,
    },
    task::{ready, Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use http::uri::Authority;
use http_body_util::BodyExt as _;
use hyper::{
    body::{Body, Frame, Incoming, SizeHint},
    client::conn::http1::SendRequest,
};

use super::pool::Pool;

/// A verified client's request body on its way to the upstream. A body
/// whose framing the client broke (a malformed chunk, more data than its
/// length) surfaces as a failure of the upstream request it was streamed
/// into; this remembers that the client was at fault, so the answer is a
/// 400 counted as the client's error, not a 502 logged as the upstream's.
#[derive(Debug)]
pub struct ClientBody {
    body: Incoming,
    broken: Arc<AtomicBool>,
}

/// Whether a [`ClientBody`]'s framing was broken by the client.
#[derive(Debug, Clone)]
pub struct BrokenByClient(Arc<AtomicBool>);

impl BrokenByClient {
    pub fn get(&self) -> bool {
        self.0.load(Relaxed)
    }
}

impl ClientBody {
    pub fn new(body: Incoming) -> (ClientBody, BrokenByClient) {
        let broken = Arc::new(AtomicBool::new(false));
        let flag = BrokenByClient(Arc::clone(&broken));
        (ClientBody { body, broken }, flag)
    }
}

impl Body for ClientBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let frame = ready!(Pin::new(&mut self.body).poll_frame(cx));
        if matches!(frame, Some(Err(_))) {
            self.broken.store(true, Relaxed);
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// An upstream response body that puts its connection back in the pool
/// once it has been read to the end. Dropped before the end, the connection
/// is closed instead (hyper cannot reuse it with unread body on the wire).
#[derive(Debug)]
pub struct PooledBody {
    pub(super) body: Incoming,
    pub(super) release: Option<Release>,
}

#[derive(Debug)]
pub(super) struct Release {
    pub(super) pool: Arc<Pool<SendRequest<ClientBody>>>,
    pub(super) authority: Authority,
    pub(super) sender: SendRequest<ClientBody>,
}

impl PooledBody {
    fn release(&mut self) {
        if let Some(Release {
            pool,
            authority,
            sender,
        }) = self.release.take()
        {
            pool.put(&authority, sender);
        }
    }
}

impl Body for PooledBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let frame = ready!(Pin::new(&mut self.body).poll_frame(cx));
        match &frame {
            // A broken body means a broken connection.
            Some(Err(_)) => self.release = None,
            Some(Ok(_)) if !self.body.is_end_stream() => {}
            // Released as soon as the last frame is read: hyper's server
            // stops polling a body once `is_end_stream` says it is done.
            _ => self.release(),
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl Drop for PooledBody {
    fn drop(&mut self) {
        // An empty body (204, HEAD, Content-Length: 0) is never polled.
        if self.body.is_end_stream() {
            self.release();
        }
    }
}

/// How long a response's head waits for the start of its body: long
/// enough for a body that came with the head, short enough not to hold
/// back the head of a stream whose first event comes later.
const FIRST_FRAME_WAIT: Duration = Duration::from_millis(50);

/// An upstream response body whose first frame was read before its head
/// went to the client, so that a body broken from its first byte (bad
/// chunk framing, say) is still answered with a 502 instead of a head and
/// a closed connection.
#[derive(Debug)]
pub struct Started {
    first: Option<Frame<Bytes>>,
    rest: PooledBody,
}

impl Started {
    /// Reads the first frame if it comes within [`FIRST_FRAME_WAIT`]; an
    /// error in it is the caller's to answer.
    pub async fn read(mut rest: PooledBody) -> Result<Started, hyper::Error> {
        let first = if rest.is_end_stream() {
            None
        } else {
            match tokio::time::timeout(FIRST_FRAME_WAIT, rest.frame()).await {
                Ok(Some(frame)) => Some(frame?),
                // Ended, or a stream taking its time: passed on as it comes.
                Ok(None) | Err(_) => None,
            }
        };
        Ok(Started { first, rest })
    }
}

impl Body for Started {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.first.take() {
            Some(frame) => Poll::Ready(Some(Ok(frame))),
            None => Pin::new(&mut self.rest).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.first.is_none() && self.rest.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        // The first frame's data still counts, or hyper would state a
        // shorter Content-Length than what it sends.
        let mut hint = self.rest.size_hint();
        if let Some(data) = self.first.as_ref().and_then(Frame::data_ref) {
            let len = data.len() as u64;
            // Upper first: a lower bound above the upper one panics.
            if let Some(upper) = hint.upper() {
                hint.set_upper(upper + len);
            }
            hint.set_lower(hint.lower() + len);
        }
        hint
    }
}
