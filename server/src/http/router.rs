//! The router: every route and layer, the request log, and the small
//! routes (health, readiness, the OpenAPI document, the fallbacks).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, HeaderValue, StatusCode, Uri};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{delete, get, post};
use axum::Router;
use keygate::tower::{problem, Require};
use keygate::wire::{ApiKeyCreateParameters, RestrictedKeyCreateParameters};
use keygate::Rejection;
use keygate::{Access, Principal, Resource};
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::timeout::RequestBodyDeadlineLayer;

use crate::http::authorize::{authorize, KEY_ID_HEADER};
use crate::http::create::create;
use crate::http::extract::BODY_LIMIT;
use crate::http::problem::json_response;
use crate::http::state::{AppState, Shared};
use crate::http::{events, keys, limits, usage};

/// The largest body of `POST /v1/keys/revoke`, in bytes (1 KiB): the one
/// body-reading route without authentication, whose `{"token":"..."}` is
/// about 80 bytes.
pub const SELF_REVOKE_BODY_LIMIT: usize = 1024;

/// The served OpenAPI document.
pub const OPENAPI_YAML: &str = include_str!("../../openapi.yaml");

/// The router with every route and layer. A request body must be complete
/// within `body_read_timeout` of the request head (`--body-read-timeout`).
pub fn router(state: Arc<AppState>, body_read_timeout: Duration) -> Router {
    let shared = Shared(Arc::clone(&state));
    // Reads need `account:read`; a key with `account:write` has it too.
    let read_routes = Router::new()
        .route("/v1/keys", get(keys::list))
        .route("/v1/keys/{id}", get(keys::get_key))
        .route("/v1/keys/{id}/usage", get(usage::usage))
        .route("/v1/events", get(events::events))
        .route_layer(Require::scope(
            shared.clone(),
            Resource::Account,
            Access::Read,
        ));
    let account_routes = Router::new()
        .route("/v1/apikeys", post(create::<ApiKeyCreateParameters>))
        .route(
            "/v1/restricted_keys",
            post(create::<RestrictedKeyCreateParameters>),
        )
        .route("/v1/keys/{id}", delete(keys::revoke).patch(limits::patch))
        .route("/v1/keys/{id}/roll", post(keys::roll))
        .route("/v1/keys/{id}/credits", post(limits::credits))
        .route_layer(Require::scope(shared, Resource::Account, Access::Write));
    let body_routes = Router::new()
        .merge(account_routes)
        // Holding the token is the proof: no Authorization header. Nobody is
        // known yet, so the body it reads is small.
        .route(
            "/v1/keys/revoke",
            post(keys::self_revoke)
                // A `Content-Length` over the limit is refused before any
                // byte of the body is read or waited for.
                .layer(RequestBodyLimitLayer::new(SELF_REVOKE_BODY_LIMIT))
                .layer::<_, std::convert::Infallible>(middleware::map_response(
                    self_revoke_too_large,
                )),
        );
    Router::new()
        // Only the routes that read a body get the body deadline: the hot
        // path (`/v1/authorize`, `/healthz`) pays for no layer.
        .merge(with_body_deadline(body_routes, body_read_timeout))
        .merge(read_routes)
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .route("/v1/authorize", get(authorize))
        // Any valid key may read itself: no scope (ACCESS_LEVEL_NONE).
        .route(
            "/v1/whoami",
            get(keys::whoami).route_layer(Require::scope(
                Shared(Arc::clone(&state)),
                Resource::Account,
                Access::None,
            )),
        )
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/openapi.yaml", get(openapi))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn(log_request))
        .with_state(state)
}

/// Every request body of `router`'s routes must be complete within
/// `timeout` of its head (tower-http's `RequestBodyDeadlineLayer`: one
/// deadline for the whole body, so a trickle does not extend it); a handler
/// still waiting then reads an error, which [`parse_body`] answers with 408.
/// An HTTP/1.1 connection whose request got a 408 is closed: its body is
/// unread, so it cannot carry another request.
fn with_body_deadline(router: Router<Arc<AppState>>, timeout: Duration) -> Router<Arc<AppState>> {
    router
        .layer(middleware::from_fn(close_after_408))
        .layer(RequestBodyDeadlineLayer::new(timeout))
        .layer(middleware::from_fn(crate::http::drain::drain_unread_body))
}

/// Adds `Connection: close` to an HTTP/1.x 408 (HTTP/2 has no such header:
/// the stream ends with the answer).
async fn close_after_408(request: Request, next: Next) -> Response {
    let h1 = request.version() < axum::http::Version::HTTP_2;
    let mut response = next.run(request).await;
    if h1 && response.status() == StatusCode::REQUEST_TIMEOUT {
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

/// A 413 of `POST /v1/keys/revoke` names its own limit.
async fn self_revoke_too_large(response: Response) -> Response {
    if response.status() == StatusCode::PAYLOAD_TOO_LARGE {
        return problem(
            StatusCode::PAYLOAD_TOO_LARGE,
            &format!("request body is larger than {SELF_REVOKE_BODY_LIMIT} bytes"),
        );
    }
    response
}

/// One log line per request: method, path, status, latency, key id, and
/// the protocol (`h1` or `h2`).
pub(crate) async fn log_request(request: Request, next: Next) -> Response {
    let start = Instant::now();
    let protocol = if request.version() < axum::http::Version::HTTP_2 {
        "h1"
    } else {
        "h2"
    };
    // An extension method is any token of letters, digits and `_`: it may
    // be a pasted key too.
    let method = Redacted(request.method().clone());
    let path = PathOnly(request.uri().clone());
    let response = next.run(request).await;
    let elapsed = start.elapsed();
    let latency_us = elapsed.as_micros() as u64;
    let status = response.status().as_u16();
    // The same clock readings time the request in the metrics.
    crate::metrics::request(path.0.path(), status, elapsed, || {
        crate::http::authorize::key_of(&response)
    });
    // The key id: from the 204 of /v1/authorize (as text, no parsing), the
    // principal a handler or the tower layer left, or the rejection
    // (expired, lacks the scope).
    let extensions = response.extensions();
    if let Some(id) = response
        .headers()
        .get(&KEY_ID_HEADER)
        .and_then(|v| v.to_str().ok())
    {
        tracing::info!(%method, path = %path, status, latency_us, key_id = %id, protocol, "request");
    } else if let Some(id) = extensions
        .get::<Principal>()
        .map(Principal::id)
        .or_else(|| extensions.get::<Rejection>().and_then(Rejection::key_id))
    {
        tracing::info!(%method, path = %path, status, latency_us, key_id = %id, protocol, "request");
    } else {
        tracing::info!(%method, path = %path, status, latency_us, key_id = %"-", protocol, "request");
    }
    response
}

/// Displays a method, with any token in it redacted.
struct Redacted(axum::http::Method);

impl std::fmt::Display for Redacted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&keygate::redact_tokens(self.0.as_str()))
    }
}

/// Displays a URI's path, without the query, with any token in it
/// redacted ([`keygate::redact_tokens`]: `DELETE /v1/keys/<token>` logs the
/// key id only).
struct PathOnly(Uri);

impl std::fmt::Display for PathOnly {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&keygate::redact_tokens(self.0.path()))
    }
}

async fn healthz() -> Response {
    json_response(StatusCode::OK, br#"{"status":"ok"}"#.to_vec())
}

/// `GET /readyz`: 200 while the store answers, 503 while it does not (the
/// hot path keeps answering from memory either way). It asks the store,
/// with a one-second limit, and tells the follower's flag what it saw.
async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    let ping = tokio::time::timeout(std::time::Duration::from_secs(1), state.store().ping()).await;
    let ready = matches!(ping, Ok(Ok(())));
    state.keys().ready_flag().store(ready, Ordering::Relaxed);
    if ready {
        // Key rows the feed could not read (each treated as revoked): a
        // number an operator should see go above zero.
        let body = format!(
            r#"{{"status":"ready","corrupt_rows":{}}}"#,
            state.store().corrupt_rows()
        );
        json_response(StatusCode::OK, body.into_bytes())
    } else {
        let mut response = problem(
            StatusCode::SERVICE_UNAVAILABLE,
            "the key store is unreachable; serving keys from memory",
        );
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        response
    }
}

async fn openapi() -> Response {
    let mut response = Response::new(Body::from(OPENAPI_YAML));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/yaml"),
    );
    response
}

async fn not_found() -> Response {
    problem(StatusCode::NOT_FOUND, "no such route")
}

async fn method_not_allowed() -> Response {
    problem(
        StatusCode::METHOD_NOT_ALLOWED,
        "method not allowed on this route",
    )
}
