//! A body passed on unchanged while something watches its frames: what the
//! proxy's bodies have in common (one keeps a request counted in flight,
//! one remembers a client's broken framing, one returns its upstream
//! connection to the pool at the end, one was read ahead by a frame).

use std::{
    pin::Pin,
    task::{ready, Context, Poll},
};

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};

/// What watches a [`Watched`] body whose errors are `E`.
pub trait Watch<E = hyper::Error>: Unpin {
    /// After each poll that gave a frame, an error or the end (`None`);
    /// `ended` says whether the body has nothing more.
    fn polled(&mut self, _frame: Option<&Result<Frame<Bytes>, E>>, _ended: bool) {}

    /// When the body is dropped; `ended` as above. A body that is empty
    /// from the start (204, HEAD) may be dropped without ever being polled.
    fn dropped(&mut self, _ended: bool) {}
}

/// Nothing watches.
impl<E> Watch<E> for () {}

#[derive(Debug)]
pub struct Watched<B: Body<Data = Bytes> + Unpin, W: Watch<B::Error>> {
    /// A frame read ahead from `body`, passed on first.
    first: Option<Frame<Bytes>>,
    body: B,
    watch: W,
}

impl<B: Body<Data = Bytes> + Unpin, W: Watch<B::Error>> Watched<B, W> {
    pub fn new(body: B, watch: W) -> Self {
        Watched {
            first: None,
            body,
            watch,
        }
    }

    /// `body` of which `first` was read already.
    pub fn read_ahead(first: Option<Frame<Bytes>>, body: B, watch: W) -> Self {
        Watched { first, body, watch }
    }
}

impl<B: Body<Data = Bytes> + Unpin, W: Watch<B::Error>> Body for Watched<B, W> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = &mut *self;
        if let Some(frame) = this.first.take() {
            return Poll::Ready(Some(Ok(frame)));
        }
        let frame = ready!(Pin::new(&mut this.body).poll_frame(cx));
        this.watch.polled(frame.as_ref(), this.body.is_end_stream());
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.first.is_none() && self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        // A frame read ahead still counts, or hyper would state a shorter
        // Content-Length than what it sends.
        let mut hint = self.body.size_hint();
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

impl<B: Body<Data = Bytes> + Unpin, W: Watch<B::Error>> Drop for Watched<B, W> {
    fn drop(&mut self) {
        self.watch.dropped(self.body.is_end_stream());
    }
}
