//! Problem responses (RFC 9457 `application/problem+json`) and the other
//! answer builders the handlers share.

use axum::body::Body;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::Response;
use keygate::tower::problem;
use keygate::Rejection;
use keygate::{AuthError, Principal};
use serde::Serialize;

use crate::metrics::StoreSource;
use crate::store::StoreError;

pub(crate) fn json_response(status: StatusCode, body: Vec<u8>) -> Response {
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

pub(crate) fn bad_request(detail: &str) -> Response {
    problem(StatusCode::BAD_REQUEST, detail)
}

/// A 403 for a valid key that may not do what it asked, with the
/// `insufficient_scope` challenge every 403 carries.
pub(crate) fn forbidden(detail: &str) -> Response {
    let mut response = problem(StatusCode::FORBIDDEN, detail);
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static(keygate::tower::INSUFFICIENT_SCOPE_CHALLENGE),
    );
    response
}

pub(crate) fn internal_error(detail: &str) -> Response {
    problem(StatusCode::INTERNAL_SERVER_ERROR, detail)
}

/// The answer to a failed store call: 503 with `Retry-After` while the
/// store is unreachable or a write stays in conflict, 404 for an unknown
/// key, 401 when the caller was revoked meanwhile, else 500 (logged; the
/// client sees `detail` only).
pub(crate) fn store_error(e: &StoreError, detail: &str) -> Response {
    match e {
        StoreError::Unavailable(_) => {
            crate::metrics::store_error(StoreSource::Request);
            tracing::warn!("{detail}: {e}");
            let mut response = problem(
                StatusCode::SERVICE_UNAVAILABLE,
                "the key store is unavailable; retry later",
            );
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            response
        }
        StoreError::NotFound => problem(StatusCode::NOT_FOUND, "no such key"),
        // Revoked (or ended) while the request waited for the store: the
        // answer any revoked key gets.
        StoreError::CallerRevoked => Rejection::from(AuthError::InvalidCredentials).to_response(),
        StoreError::Conflict(m) => problem(StatusCode::CONFLICT, m),
        StoreError::Fatal(_) => {
            crate::metrics::store_error(StoreSource::Request);
            tracing::error!("{detail}: {e}");
            internal_error(detail)
        }
    }
}

/// Copies user input for an error message: redacted first
/// ([`keygate::redact_tokens`]: a token pasted where an id or a value
/// belongs keeps its public id, never its secret), then cut at 64
/// characters (after redaction, so a cut cannot leave a fragment of a
/// secret that the redaction would no longer recognize).
pub(crate) fn quote(input: &str) -> String {
    let input = keygate::redact_tokens(input);
    match input.char_indices().nth(64) {
        Some((end, _)) => format!("{}…", input.get(..end).unwrap_or_default()),
        None => input.into_owned(),
    }
}
pub(crate) fn ok_json<T: Serialize>(status: StatusCode, value: &T, caller: Principal) -> Response {
    match serde_json::to_vec(value) {
        Ok(body) => {
            let mut response = json_response(status, body);
            response.extensions_mut().insert(caller);
            response
        }
        Err(_) => internal_error("cannot encode the response"),
    }
}

pub(crate) fn with_caller(mut response: Response, caller: Principal) -> Response {
    response.extensions_mut().insert(caller);
    response
}

/// The request header by which a gateway that can only pass 2xx, 401 and
/// 403 on from a subrequest (nginx's `auth_request`) asks for limit
/// refusals as 403: `X-Keygate-Refusal-Status: 403`.
pub(crate) static REFUSAL_STATUS: axum::http::HeaderName =
    axum::http::HeaderName::from_static("x-keygate-refusal-status");

/// On such a 403, the status the client should get (`429`).
static KEYGATE_STATUS: axum::http::HeaderName =
    axum::http::HeaderName::from_static("x-keygate-status");

/// On such a 403, the problem type, and the detail, for the gateway to
/// build the client's 429 from.
static KEYGATE_PROBLEM: axum::http::HeaderName =
    axum::http::HeaderName::from_static("x-keygate-problem");
static KEYGATE_DETAIL: axum::http::HeaderName =
    axum::http::HeaderName::from_static("x-keygate-detail");

/// The answer to a request the key's limits refused: 429, or (when the
/// gateway asked with [`REFUSAL_STATUS`]) the same document and fields as a
/// 403 that names the 429 in `X-Keygate-Status`, its type in
/// `X-Keygate-Problem` and its detail in `X-Keygate-Detail`. Asking for 403
/// only changes the status of a refusal: it can never let a request through.
pub(crate) fn limit_refusal(
    refusal: keygate::Refusal,
    verdict: &keygate::Verdict,
    request: &axum::http::HeaderMap,
    caller: Principal,
) -> Response {
    let mut response: Response = refusal.to_response(verdict);
    if request
        .get(&REFUSAL_STATUS)
        .is_some_and(|v| v.as_bytes() == b"403")
    {
        *response.status_mut() = StatusCode::FORBIDDEN;
        let kind = match refusal {
            keygate::Refusal::CreditsExhausted { .. } => keygate::tower::CREDITS_EXHAUSTED_TYPE,
            _ => keygate::tower::RATE_LIMITED_TYPE,
        };
        let headers = response.headers_mut();
        headers.insert(&KEYGATE_STATUS, HeaderValue::from_static("429"));
        headers.insert(&KEYGATE_PROBLEM, HeaderValue::from_static(kind));
        if let Ok(detail) = HeaderValue::try_from(refusal.to_string()) {
            headers.insert(&KEYGATE_DETAIL, detail);
        }
    }
    response.extensions_mut().insert(caller);
    response
}
