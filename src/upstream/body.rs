//! The request body as the upstream receives it: the client's body, streamed
//! frame by frame, with its trailers held to the same rule as its headers —
//! every identity-prefixed name and the assertion header removed, so that a
//! trailer can smuggle no identity past the strip.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::HeaderName;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use crate::headers::{self, IdentityHeaderNames};

/// What identity stripping needs, shared by every request.
pub struct StripRule {
    pub names: IdentityHeaderNames,
    pub assertion: HeaderName,
}

/// The client's body with stripped trailers.
pub struct UpstreamBody {
    inner: Incoming,
    rule: Arc<StripRule>,
}

impl UpstreamBody {
    pub fn new(inner: Incoming, rule: Arc<StripRule>) -> Self {
        Self { inner, rule }
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        Pin::new(&mut this.inner).poll_frame(cx).map(|frame| {
            frame.map(|frame| {
                frame.map(|frame| match frame.into_trailers() {
                    Ok(mut trailers) => {
                        headers::strip_identity(&mut trailers, &this.rule.names, &this.rule.assertion);
                        Frame::trailers(trailers)
                    }
                    Err(frame) => frame,
                })
            })
        })
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
