//! Lingering reads for HTTP/1.1: a request refused before its body was read
//! (401 from the scope check, 413 over a limit) gets the rest of its body
//! read and dropped, up to [`DRAIN_LIMIT`] bytes within [`DRAIN_TIME`], after
//! the answer. Closing with unread bytes makes the kernel send a reset,
//! which can destroy the answer before the peer reads it: a proxy in front
//! then sees a failed instance (nginx's `max_fails`), and any stranger
//! could take instances out with bodies they know will be refused.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::Request;
use axum::http::{header, Version};
use axum::middleware::Next;
use axum::response::Response;
use http_body::{Body as _, Frame, SizeHint};
use http_body_util::BodyExt as _;

use crate::http::extract::BODY_LIMIT;

/// The most bytes read and dropped after an answer.
pub const DRAIN_LIMIT: usize = BODY_LIMIT;

/// The longest a body is read after its answer.
pub const DRAIN_TIME: Duration = Duration::from_secs(2);

/// Middleware: an HTTP/1.x request's body is drained if its handler drops
/// it unread. Not for `Expect: 100-continue` (its client sends no body
/// unless asked), nor HTTP/2 (a stream ends alone).
pub async fn drain_unread_body(request: Request, next: Next) -> Response {
    let expects = request.headers().contains_key(header::EXPECT);
    if request.version() >= Version::HTTP_2 || expects {
        return next.run(request).await;
    }
    let request = request.map(|body| Body::new(DrainOnDrop { inner: Some(body) }));
    next.run(request).await
}

/// A request body that, dropped before its end, is read to its end (within
/// the bounds above) by a task of its own.
struct DrainOnDrop {
    inner: Option<Body>,
}

impl http_body::Body for DrainOnDrop {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        match self.inner.as_mut() {
            Some(body) => Pin::new(body).poll_frame(cx),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), Body::size_hint)
    }
}

impl Drop for DrainOnDrop {
    fn drop(&mut self) {
        let Some(body) = self.inner.take() else {
            return;
        };
        if body.is_end_stream() {
            return;
        }
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(drain(body));
        }
    }
}

async fn drain(mut body: Body) {
    let read = async {
        let mut left = DRAIN_LIMIT;
        while let Some(Ok(frame)) = body.frame().await {
            let n = frame.data_ref().map_or(0, Bytes::len);
            left = match left.checked_sub(n) {
                Some(left) if left > 0 => left,
                _ => return,
            };
        }
    };
    let _ = tokio::time::timeout(DRAIN_TIME, read).await;
}
