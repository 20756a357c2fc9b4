//! The HTTP service: routes, handlers, the keyring with its database
//! fallback, and the request log.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, HeaderName, HeaderValue, StatusCode, Uri};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{get, post};
use axum::{Extension, Router};
use keygate::tower::{problem, Authenticate, Require};
use keygate::wire::{ApiKeyCreateParameters, RestrictedKeyCreateParameters};
use keygate::Rejection;
use keygate::{
    Access, AuthError, Change, KeyRecord, MintPolicy, MintRequest, Principal, Resource,
    ValidationError,
};
use serde::de::DeserializeOwned;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::timeout::RequestBodyDeadlineLayer;

use crate::cache::KeyCache;
use crate::clock::now_ms as system_now_ms;
use crate::lifecycle;
use crate::store::{Store, StoreError};
use crate::usage::Usage;

/// The largest request body, in bytes (64 KiB).
pub const BODY_LIMIT: usize = 64 * 1024;

/// The largest body of `POST /v1/keys/revoke`, in bytes (1 KiB): the one
/// body-reading route without authentication, whose `{"token":"..."}` is
/// about 80 bytes.
pub const SELF_REVOKE_BODY_LIMIT: usize = 1024;

/// The header of the 204 of `/v1/authorize` that names the key (a static,
/// so the hot path does not parse the name again).
static KEY_ID_HEADER: HeaderName = HeaderName::from_static("x-keygate-key-id");
/// The header of the 204 of `/v1/authorize` that gives the key's kind.
static KEY_KIND_HEADER: HeaderName = HeaderName::from_static("x-keygate-key-kind");

/// The served OpenAPI document.
pub const OPENAPI_YAML: &str = include_str!("../openapi.yaml");

/// Shared server state.
pub struct AppState {
    cache: KeyCache,
    store: Arc<dyn Store>,
    usage: Usage,
    /// Whether the store answered the follower's last read.
    ready: AtomicBool,
    policy: MintPolicy,
}

/// What the server hands the tower layer: the state, behind an `Arc`.
#[derive(Clone)]
pub struct Shared(pub Arc<AppState>);

impl AppState {
    /// State over a loaded cache and its store.
    pub fn new(cache: KeyCache, store: Arc<dyn Store>, policy: MintPolicy) -> AppState {
        AppState {
            cache,
            store,
            usage: Usage::default(),
            ready: AtomicBool::new(true),
            policy,
        }
    }

    /// The keyring.
    pub fn cache(&self) -> &KeyCache {
        &self.cache
    }

    /// The store.
    pub fn store(&self) -> &dyn Store {
        &*self.store
    }

    /// The last-use tracker.
    pub fn usage(&self) -> &Usage {
        &self.usage
    }

    /// Whether the store answered last time.
    pub fn ready_flag(&self) -> &AtomicBool {
        &self.ready
    }

    /// The minting policy.
    pub fn policy(&self) -> MintPolicy {
        self.policy
    }
}

impl Authenticate for AppState {
    /// The library's constant-time path, and nothing else: no store lookup,
    /// no branch on whether the id is known. A success notes the key's use.
    #[inline]
    fn authenticate(&self, token: &[u8], now: keygate::UnixMillis) -> Result<Principal, AuthError> {
        let now_ms = now.as_millis();
        let principal = self.cache.authenticate(token, now_ms)?;
        self.usage.touch(principal.id(), now_ms);
        Ok(principal)
    }
}

impl Authenticate for Shared {
    #[inline]
    fn authenticate(&self, token: &[u8], now: keygate::UnixMillis) -> Result<Principal, AuthError> {
        self.0.authenticate(token, now)
    }
}

/// The router with every route and layer. A request body must be complete
/// within `body_read_timeout` of the request head (`--body-read-timeout`).
pub fn router(state: Arc<AppState>, body_read_timeout: Duration) -> Router {
    let shared = Shared(Arc::clone(&state));
    let account_routes = Router::new()
        .route("/v1/apikeys", post(create::<ApiKeyCreateParameters>))
        .route(
            "/v1/restricted_keys",
            post(create::<RestrictedKeyCreateParameters>),
        )
        .route("/v1/keys", get(lifecycle::list))
        .route(
            "/v1/keys/{id}",
            get(lifecycle::get_key).delete(lifecycle::revoke),
        )
        .route("/v1/keys/{id}/roll", post(lifecycle::roll))
        .route("/v1/events", get(lifecycle::events))
        .route_layer(Require::scope(shared, Resource::Account, Access::Write));
    let body_routes = Router::new()
        .merge(account_routes)
        // Holding the token is the proof: no Authorization header. Nobody is
        // known yet, so the body it reads is small.
        .route(
            "/v1/keys/revoke",
            post(lifecycle::self_revoke)
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
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .route("/v1/authorize", get(authorize))
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

/// One log line per request: method, path, status, latency, key id.
async fn log_request(request: Request, next: Next) -> Response {
    let start = Instant::now();
    // An extension method is any token of letters, digits and `_`: it may
    // be a pasted key too.
    let method = Redacted(request.method().clone());
    let path = PathOnly(request.uri().clone());
    let response = next.run(request).await;
    let latency_us = start.elapsed().as_micros() as u64;
    let status = response.status().as_u16();
    // The key id: from the 204 of /v1/authorize (as text, no parsing), the
    // principal a handler or the tower layer left, or the rejection
    // (expired, lacks the scope).
    let extensions = response.extensions();
    if let Some(id) = response
        .headers()
        .get(&KEY_ID_HEADER)
        .and_then(|v| v.to_str().ok())
    {
        tracing::info!(%method, path = %path, status, latency_us, key_id = %id);
    } else if let Some(id) = extensions
        .get::<Principal>()
        .map(Principal::id)
        .or_else(|| extensions.get::<Rejection>().and_then(Rejection::key_id))
    {
        tracing::info!(%method, path = %path, status, latency_us, key_id = %id);
    } else {
        tracing::info!(%method, path = %path, status, latency_us, key_id = %"-");
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

/// Whether a body read failed because the body read timeout passed
/// (`--body-read-timeout`: the listener's deadline, tower-http's
/// `TimeoutError`, somewhere in the rejection's source chain).
fn timed_out(rejection: &BytesRejection) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(rejection);
    while let Some(e) = source {
        if e.is::<tower_http::timeout::TimeoutError>() {
            return true;
        }
        source = e.source();
    }
    false
}

/// Reads an optional JSON body: empty (or only whitespace) counts as `{}`.
/// Any content type is accepted; the bytes must be a JSON object. The error
/// is the status (400, 408 or 413) and the problem's detail.
pub(crate) fn parse_body<T: DeserializeOwned + Default>(
    body: Result<Bytes, BytesRejection>,
) -> Result<T, (StatusCode, String)> {
    let bytes = body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            (
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("request body is larger than {BODY_LIMIT} bytes"),
            )
        } else if timed_out(&rejection) {
            (
                StatusCode::REQUEST_TIMEOUT,
                String::from("the request body did not arrive within the body read timeout"),
            )
        } else {
            (
                StatusCode::BAD_REQUEST,
                String::from("cannot read request body"),
            )
        }
    })?;
    // The body is optional; the wire types accept a JSON object only.
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    // serde's derive also reads a struct from a JSON array; only an object
    // is a valid body.
    if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err((
            StatusCode::BAD_REQUEST,
            String::from("invalid request body: expected a JSON object"),
        ));
    }
    // serde quotes what it could not read (an unknown field's name, a
    // string of the wrong type): redacted, as any user input.
    serde_json::from_slice(&bytes).map_err(|e| {
        (
            StatusCode::BAD_REQUEST,
            format!(
                "invalid request body: {}",
                keygate::redact_tokens(&e.to_string())
            ),
        )
    })
}

fn validation_error(e: &ValidationError) -> Response {
    bad_request(&e.to_string())
}

/// The two create bodies, for one generic handler: each validates into a
/// [`MintRequest`] (the library's inherent `validate`).
trait CreateParameters {
    fn validate(&self, now: keygate::UnixMillis) -> Result<MintRequest, ValidationError>;
}

impl CreateParameters for ApiKeyCreateParameters {
    fn validate(&self, now: keygate::UnixMillis) -> Result<MintRequest, ValidationError> {
        ApiKeyCreateParameters::validate(self, now)
    }
}

impl CreateParameters for RestrictedKeyCreateParameters {
    fn validate(&self, now: keygate::UnixMillis) -> Result<MintRequest, ValidationError> {
        RestrictedKeyCreateParameters::validate(self, now)
    }
}

/// `POST /v1/apikeys` and `POST /v1/restricted_keys`: the caller is already
/// authenticated by the layer; parse, validate, authorize, mint, store.
async fn create<P: CreateParameters + DeserializeOwned + Default>(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Principal>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let params: P = match parse_body(body) {
        Ok(p) => p,
        Err((status, detail)) => return problem(status, &detail),
    };
    let now_ms = system_now_ms();
    match params.validate(keygate::UnixMillis::from_millis(now_ms)) {
        Ok(request) => match check_name(request.name()) {
            Ok(()) => mint_and_store(state, caller, request, now_ms).await,
            Err(detail) => bad_request(&detail),
        },
        Err(e) => validation_error(&e),
    }
}

/// Refuses a key name that holds what looks like a token or a secret (what
/// [`keygate::redact_tokens`] would redact): a name is shown in every
/// listing, created view and event, so a token pasted as a name would be
/// echoed for good.
pub(crate) fn check_name(name: &str) -> Result<(), String> {
    if keygate::redact_tokens(name) == name {
        return Ok(());
    }
    Err(format!(
        "name `{}` holds what looks like a key token or secret (a run of 32 or more \
         letters and digits, or an `ak_`/`rk_` token); names are shown in listings: choose another",
        quote(name)
    ))
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
            tracing::error!("{detail}: {e}");
            internal_error(detail)
        }
    }
}

/// Checks the minting policy, mints, commits the record, adds it to the
/// keyring, and only then answers 200 with the created view.
async fn mint_and_store(
    state: Arc<AppState>,
    caller: Principal,
    request: MintRequest,
    now_ms: i64,
) -> Response {
    if let Err(e) = state.policy.authorize(&caller, &request) {
        let mut response = problem(StatusCode::FORBIDDEN, &e.to_string());
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static(keygate::tower::INSUFFICIENT_SCOPE_CHALLENGE),
        );
        return response;
    }
    let request = request.created_by(&caller);
    let minted = keygate::mint(
        &state.cache.pepper(),
        &request,
        &mut keygate::os_entropy(),
        keygate::UnixMillis::from_millis(now_ms),
    );
    let record: KeyRecord = minted.record().clone();
    match state.store.create(&record, Some(caller.id()), now_ms).await {
        Ok(seq) => {
            state.cache.apply([Change::upsert(seq, record)]);
        }
        Err(e) => return store_error(&e, "cannot store the key"),
    }
    match serde_json::to_vec(&keygate::wire::CreatedKeyView::from(minted)) {
        Ok(body) => {
            let mut response = json_response(StatusCode::OK, body);
            // The log names the caller; the new key's id is in the body.
            response.extensions_mut().insert(caller);
            response
        }
        Err(_) => internal_error("cannot encode the created key"),
    }
}

/// The two query parameters of `/v1/authorize`, percent-decoded
/// (`application/x-www-form-urlencoded`). Other parameters are ignored. The
/// error is the 400's detail.
fn parse_authorize_query(query: Option<&str>) -> Result<(Resource, Access), String> {
    let query = query.unwrap_or_default();
    match plain_authorize_query(query) {
        Some(found) => Ok(found),
        None => decode_authorize_query(query),
    }
}

/// [`parse_authorize_query`]'s common case, read in place: text with no
/// `%` and no `+` decodes to itself, so when each parameter appears once,
/// plainly named, with a known value, this is the decoding parse's answer
/// without its per-pair allocations and UTF-8 checks (about 2 800 of the 9 000
/// instructions that `/v1/authorize` added to a request over h2c, measured
/// under callgrind). `None` for anything else: the decoding parse then
/// decides and words the error.
fn plain_authorize_query(query: &str) -> Option<(Resource, Access)> {
    let (mut resource, mut access) = (None, None);
    for pair in query.as_bytes().split(|&b| b == b'&') {
        let (key, value) = match pair.iter().position(|&b| b == b'=') {
            Some(at) => (
                pair.get(..at).unwrap_or_default(),
                pair.get(at + 1..).unwrap_or_default(),
            ),
            None => (pair, &[][..]),
        };
        // A value that names a resource or level has no `%` or `+`: an
        // exact match is the decoded match.
        let value = || core::str::from_utf8(value).ok();
        match key {
            b"resource_type" if resource.is_none() => {
                resource = Some(Resource::from_api_name(value()?)?);
            }
            b"access_level" if access.is_none() => {
                access = Some(Access::from_api_name(value()?)?);
            }
            b"resource_type" | b"access_level" => return None,
            // Another name is ignored, unless it may decode to one of ours.
            _ if key.iter().any(|&b| b == b'%' || b == b'+') => return None,
            _ => {}
        }
    }
    Some((resource?, access?))
}

/// [`parse_authorize_query`] by `form_urlencoded`, with the errors.
fn decode_authorize_query(query: &str) -> Result<(Resource, Access), String> {
    let mut resource = None;
    let mut access = None;
    for (key, value) in form_urlencoded::parse(query.as_bytes()) {
        match &*key {
            "resource_type" => {
                if resource.is_some() {
                    return Err(String::from(
                        "query parameter `resource_type` appears twice",
                    ));
                }
                resource = Some(
                    Resource::from_api_name(&value)
                        .ok_or_else(|| format!("unknown `resource_type` `{}`", quote(&value)))?,
                );
            }
            "access_level" => {
                if access.is_some() {
                    return Err(String::from("query parameter `access_level` appears twice"));
                }
                access = Some(
                    Access::from_api_name(&value)
                        .ok_or_else(|| format!("unknown `access_level` `{}`", quote(&value)))?,
                );
            }
            _ => {}
        }
    }
    match (resource, access) {
        (Some(r), Some(a)) => Ok((r, a)),
        (None, _) => Err(String::from("query parameter `resource_type` is required")),
        (_, None) => Err(String::from("query parameter `access_level` is required")),
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

/// `GET /v1/authorize`: 204 with the key's id and kind when the presented
/// key may act; 401, 400 (bad query) or 403 otherwise, in that order.
///
/// The hot path: it borrows the request (no header map or URI copy) and
/// the 204 carries the key id in a header, where the log reads it.
async fn authorize(State(state): State<Arc<AppState>>, request: Request) -> Response {
    // Forward-auth (method and URI in headers, decided by `--routes`).
    if let Some(response) = crate::routes::forward_auth(&*state, &request) {
        return response;
    }
    let principal = match keygate::tower::authenticate_headers(
        &*state,
        request.headers(),
        keygate::UnixMillis::from_millis(system_now_ms()),
    ) {
        Ok(p) => p,
        Err(rejection) => return rejection.to_response(),
    };
    let (resource, access) = match parse_authorize_query(request.uri().query()) {
        Ok(q) => q,
        Err(detail) => {
            let mut response = bad_request(&detail);
            response.extensions_mut().insert(principal);
            return response;
        }
    };
    if let Err(e) = principal.require(resource, access) {
        return Rejection::from(e).to_response();
    }
    let mut response = Response::new(Body::empty());
    *response.status_mut() = StatusCode::NO_CONTENT;
    let headers = response.headers_mut();
    if let Ok(id) = HeaderValue::from_str(principal.id().as_str()) {
        headers.insert(&KEY_ID_HEADER, id);
    }
    headers.insert(
        &KEY_KIND_HEADER,
        HeaderValue::from_static(principal.kind().as_str()),
    );
    response
}

async fn healthz() -> Response {
    json_response(StatusCode::OK, br#"{"status":"ok"}"#.to_vec())
}

/// `GET /readyz`: 200 while the store answers, 503 while it does not (the
/// hot path keeps answering from memory either way). It asks the store,
/// with a one-second limit, and tells the follower's flag what it saw.
async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    let ping = tokio::time::timeout(std::time::Duration::from_secs(1), state.store.ping()).await;
    let ready = matches!(ping, Ok(Ok(())));
    state.ready.store(ready, Ordering::Relaxed);
    if ready {
        // Key rows the feed could not read (each treated as revoked): a
        // number an operator should see go above zero.
        let body = format!(
            r#"{{"status":"ready","corrupt_rows":{}}}"#,
            state.store.corrupt_rows()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authorize_query() {
        assert_eq!(
            parse_authorize_query(Some(
                "resource_type=RESOURCE_TYPE_AGENTS&access_level=ACCESS_LEVEL_READ&x=1"
            ))
            .ok(),
            Some((Resource::Agents, Access::Read))
        );
        for bad in [
            None,
            Some(""),
            Some("resource_type=RESOURCE_TYPE_AGENTS"),
            Some("resource_type=NOPE&access_level=ACCESS_LEVEL_READ"),
            Some("resource_type=RESOURCE_TYPE_AGENTS&access_level=ACCESS_LEVEL_READ&access_level=ACCESS_LEVEL_READ"),
        ] {
            assert!(parse_authorize_query(bad).is_err());
        }
    }

    #[test]
    fn the_plain_query_read_agrees_with_the_decoding_parse() {
        // Every query of up to three pairs over a vocabulary of names and
        // values, plain and encoded, valid and not, plus odd separators.
        let keys = [
            "resource_type",
            "access_level",
            "resource%5Ftype",
            "access_level+",
            "other",
            "",
        ];
        let values = [
            "RESOURCE_TYPE_DEVBOXES",
            "RESOURCE_TYPE_OBJECTS",
            "ACCESS_LEVEL_READ",
            "ACCESS_LEVEL_%57RITE",
            "ACCESS_LEVEL_WRITE+",
            "nope",
            "",
        ];
        let mut pairs: Vec<String> = vec![String::new(), String::from("=")];
        for key in keys {
            pairs.push(key.to_owned());
            for value in values {
                pairs.push(format!("{key}={value}"));
            }
        }
        let (mut plain_answers, mut checked) = (0, 0);
        for a in &pairs {
            for b in &pairs {
                for c in &pairs {
                    let query = format!("{a}&{b}&{c}");
                    let decoded = decode_authorize_query(&query);
                    if let Some(found) = plain_authorize_query(&query) {
                        assert_eq!(decoded, Ok(found), "{query}");
                        plain_answers += 1;
                    }
                    assert_eq!(parse_authorize_query(Some(&query)), decoded, "{query}");
                    checked += 1;
                }
            }
        }
        assert!(plain_answers > 100, "{plain_answers} of {checked}");
        assert_eq!(
            plain_authorize_query(
                "resource_type=RESOURCE_TYPE_DEVBOXES&access_level=ACCESS_LEVEL_READ"
            ),
            Some((Resource::Devboxes, Access::Read))
        );
        // Other parameters are passed over in place, unless their names
        // could decode to one of the two.
        assert_eq!(
            plain_authorize_query(
                "x=1&resource_type=RESOURCE_TYPE_DEVBOXES&y=%41+&access_level=ACCESS_LEVEL_READ"
            ),
            Some((Resource::Devboxes, Access::Read))
        );
        for name in ["resource%5Ftype", "access+level", "%61ccess_level"] {
            let query = format!(
                "resource_type=RESOURCE_TYPE_DEVBOXES&access_level=ACCESS_LEVEL_READ&{name}=x"
            );
            assert_eq!(plain_authorize_query(&query), None, "{query}");
        }
        // Escapes, and a parameter given twice, go to the decoding parse.
        assert_eq!(
            plain_authorize_query(
                "resource_type=RESOURCE%5FTYPE%5FOBJECTS&access_level=ACCESS_LEVEL_READ"
            ),
            None
        );
        assert_eq!(
            plain_authorize_query(
                "resource_type=RESOURCE_TYPE_OBJECTS&access_level=ACCESS_LEVEL_READ&access_level=ACCESS_LEVEL_READ"
            ),
            None
        );
    }

    #[test]
    fn authorize_query_values_are_percent_decoded() {
        // `%5F` is `_`; `+` is a space in form encoding, so it never names
        // an enum value.
        assert_eq!(
            parse_authorize_query(Some(
                "resource%5Ftype=RESOURCE%5FTYPE%5FOBJECTS&access_level=ACCESS_LEVEL_%57RITE"
            ))
            .ok(),
            Some((Resource::Objects, Access::Write))
        );
        let err = parse_authorize_query(Some(
            "resource_type=RESOURCE_TYPE_OBJECTS+&access_level=ACCESS_LEVEL_READ",
        ))
        .unwrap_err();
        assert_eq!(err, "unknown `resource_type` `RESOURCE_TYPE_OBJECTS `");
        // A doubled parameter is caught after decoding too.
        assert!(parse_authorize_query(Some(
            "access_level=ACCESS_LEVEL_READ&resource_type=RESOURCE_TYPE_AGENTS&access%5Flevel=ACCESS_LEVEL_READ"
        ))
        .unwrap_err()
        .contains("twice"));
    }

    #[derive(Debug, Default, PartialEq, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Body {
        #[serde(default)]
        n: u32,
    }

    fn parse(text: &'static str) -> Result<Body, (StatusCode, String)> {
        parse_body::<Body>(Ok(Bytes::from_static(text.as_bytes())))
    }

    #[test]
    fn body_is_optional_and_must_be_an_object() {
        assert_eq!(parse(""), Ok(Body::default()));
        assert_eq!(parse(" \r\n\t"), Ok(Body::default()));
        assert_eq!(parse(" \n{\"n\": 3}"), Ok(Body { n: 3 }));
        for not_an_object in ["[3]", " [3]", "3", "x{}", "null"] {
            assert_eq!(
                parse(not_an_object),
                Err((
                    StatusCode::BAD_REQUEST,
                    String::from("invalid request body: expected a JSON object")
                )),
                "{not_an_object}"
            );
        }
        let (status, detail) = parse(r#"{"m": 1}"#).unwrap_err();
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(
            detail.starts_with("invalid request body: unknown field `m`"),
            "{detail}"
        );
    }

    #[tokio::test]
    async fn an_oversized_body_is_a_413() {
        use axum::extract::FromRequest;
        let request = axum::http::Request::builder()
            .body(axum::body::Body::from(vec![b' '; 3 * 1024 * 1024]))
            .unwrap();
        let bytes = Bytes::from_request(request, &()).await;
        let (status, detail) = parse_body::<Body>(bytes).unwrap_err();
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(
            detail,
            format!("request body is larger than {BODY_LIMIT} bytes")
        );
    }
}
