//! Bodies as they cross the proxy, streamed frame by frame, with their
//! trailers held to the rules of headers: a request's lose every
//! identity-prefixed name, the assertion header, hop-by-hop fields, routing
//! overrides and what belongs in the header section only, so that a trailer
//! can smuggle nothing past the strip; an answer's lose hop-by-hop fields,
//! which an HTTP/2 client's stream would be reset for.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{HeaderMap, HeaderName};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use crate::headers::{self, IdentityHeaderNames};

/// What identity stripping needs, shared by every request.
pub struct StripRule {
    pub names: IdentityHeaderNames,
    pub assertion: HeaderName,
}

/// How a request body's passage went, shared with the request's context.
#[derive(Debug, Default)]
pub struct BodyProgress {
    /// Set when the client's body fails (bad chunk framing, a connection cut):
    /// the request to the upstream then fails by the client's fault.
    pub failed: AtomicBool,
    /// Data bytes passed to the upstream so far (the access line's `request_bytes`).
    pub bytes: AtomicU64,
}

/// Which trailers rule a body's trailers are held to.
enum Direction {
    ToUpstream(Arc<StripRule>, Arc<BodyProgress>),
    ToClient,
}

/// A body passed through with its trailers filtered.
pub struct FilteredBody {
    inner: Incoming,
    direction: Direction,
}

/// The client's request body, as the upstream receives it.
pub type UpstreamBody = FilteredBody;

impl FilteredBody {
    /// A request body on its way to the upstream.
    pub fn to_upstream(inner: Incoming, rule: Arc<StripRule>) -> Self {
        Self { inner, direction: Direction::ToUpstream(rule, Arc::default()) }
    }

    /// For a request body: whether reading the client's body failed, and
    /// how many bytes of it went through.
    pub fn progress(&self) -> Option<Arc<BodyProgress>> {
        match &self.direction {
            Direction::ToUpstream(_, progress) => Some(progress.clone()),
            Direction::ToClient => None,
        }
    }

    /// The upstream's answer body on its way to the client.
    pub fn to_client(inner: Incoming) -> Self {
        Self { inner, direction: Direction::ToClient }
    }

    fn filter(&self, trailers: &mut HeaderMap) {
        match &self.direction {
            Direction::ToUpstream(rule, _) => {
                headers::strip_identity(trailers, &rule.names, &rule.assertion);
                headers::strip_request_trailers(trailers);
            }
            Direction::ToClient => headers::strip_response_trailers(trailers),
        }
    }
}

impl Body for FilteredBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        if let Direction::ToUpstream(_, progress) = &this.direction {
            match &polled {
                Poll::Ready(Some(Err(_))) => progress.failed.store(true, Ordering::Release),
                Poll::Ready(Some(Ok(frame))) => {
                    if let Some(data) = frame.data_ref() {
                        progress.bytes.fetch_add(data.len() as u64, Ordering::Relaxed);
                    }
                }
                _ => {}
            }
        }
        polled.map(|frame| {
            frame.map(|frame| {
                frame.map(|frame| match frame.into_trailers() {
                    Ok(mut trailers) => {
                        this.filter(&mut trailers);
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
