//! The bodies that cross to and from the upstream on hyper's path.

use std::{
    future::Future as _,
    sync::{
        atomic::{AtomicBool, Ordering::Relaxed},
        Arc,
    },
    task::Poll,
    time::Duration,
};

use bytes::Bytes;
use http::uri::Authority;
use http_body_util::BodyExt as _;
use hyper::{
    body::{Body, Frame, Incoming},
    client::conn::http1::SendRequest,
};

use super::pool::Pool;
use crate::proxy::body::{Watch, Watched};

/// A verified client's request body on its way to the upstream. A body
/// whose framing the client broke (a malformed chunk, more data than its
/// length) surfaces as a failure of the upstream request it was streamed
/// into; its [`BrokenByClient`] remembers that the client was at fault, so
/// the answer is a 400 counted as the client's error, not a 502 logged as
/// the upstream's.
pub type ClientBody = Watched<Incoming, BrokenByClient>;

/// Whether a [`ClientBody`]'s framing was broken by the client.
#[derive(Debug, Clone, Default)]
pub struct BrokenByClient(Arc<AtomicBool>);

impl BrokenByClient {
    pub fn get(&self) -> bool {
        self.0.load(Relaxed)
    }
}

impl Watch for BrokenByClient {
    fn polled(&mut self, frame: Option<&Result<Frame<Bytes>, hyper::Error>>, _: bool) {
        if matches!(frame, Some(Err(_))) {
            self.0.store(true, Relaxed);
        }
    }
}

/// The client's body for the upstream, and what tells afterwards whether
/// the client broke it.
pub fn client_body(body: Incoming) -> (ClientBody, BrokenByClient) {
    let broken = BrokenByClient::default();
    (Watched::new(body, broken.clone()), broken)
}

/// An upstream response body that puts its connection back in the pool
/// once it has been read to the end. Dropped before the end, the connection
/// is closed instead (hyper cannot reuse it with unread body on the wire).
pub type PooledBody = Watched<Incoming, Release>;

/// Where a response body's connection goes back to; `None` once it went,
/// or once the body broke (a broken body means a broken connection).
#[derive(Debug)]
pub struct Release(pub(super) Option<Returned>);

#[derive(Debug)]
pub(super) struct Returned {
    pub(super) pool: Arc<Pool<SendRequest<ClientBody>>>,
    pub(super) authority: Authority,
    pub(super) sender: SendRequest<ClientBody>,
}

impl Release {
    fn release(&mut self) {
        if let Some(Returned {
            pool,
            authority,
            sender,
        }) = self.0.take()
        {
            pool.put(&authority, sender);
        }
    }
}

impl Watch for Release {
    fn polled(&mut self, frame: Option<&Result<Frame<Bytes>, hyper::Error>>, ended: bool) {
        match frame {
            Some(Err(_)) => self.0 = None,
            Some(Ok(_)) if !ended => {}
            // Released as soon as the last frame is read: hyper's server
            // stops polling a body once `is_end_stream` says it is done.
            _ => self.release(),
        }
    }

    fn dropped(&mut self, ended: bool) {
        if ended {
            self.release();
        }
    }
}

/// How long a response's head waits for the start of its body: long
/// enough for a body that came with the head, short enough not to hold
/// back the head of a stream whose first event comes later.
const FIRST_FRAME_WAIT: Duration = Duration::from_millis(50);

/// Reads the first frame of `body` if it comes within [`FIRST_FRAME_WAIT`],
/// before the response's head goes to the client, so that a body broken
/// from its first byte (bad chunk framing, say) is still answered with a
/// 502 instead of a head and a closed connection; an error in it is the
/// caller's to answer.
pub async fn started<B: Body<Data = Bytes> + Unpin>(
    mut body: B,
) -> Result<Watched<B, ()>, B::Error> {
    let first = if body.is_end_stream() {
        None
    } else {
        let mut frame = std::pin::pin!(body.frame());
        // Most bodies arrive with their head: read without arming a timer,
        // which costs more than the read itself.
        let now = std::future::poll_fn(|cx| Poll::Ready(frame.as_mut().poll(cx))).await;
        let waited = match now {
            Poll::Ready(frame) => Ok(frame),
            Poll::Pending => tokio::time::timeout(FIRST_FRAME_WAIT, frame).await,
        };
        match waited {
            Ok(Some(frame)) => Some(frame?),
            // Ended, or a stream taking its time: passed on as it comes.
            Ok(None) | Err(_) => None,
        }
    };
    Ok(Watched::read_ahead(first, body, ()))
}
