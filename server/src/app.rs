//! The HTTP service: routes, handlers, the keyring with its database
//! fallback, and the request log.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, HeaderName, HeaderValue, StatusCode, Uri};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{get, post};
use axum::{Extension, Router};
use keygate::tower::{problem, system_now_ms, Authenticate, Rejection, RequireScope};
use keygate::wire::{ApiKeyCreateParameters, CreateParameters, RestrictedKeyCreateParameters};
use keygate::{
    Access, AuthError, KeyId, KeyRecord, Keyring, MintPolicy, MintRequest, Principal, Resource,
    Token, ValidationError,
};
use serde::de::DeserializeOwned;

use crate::store::Store;

/// The largest request body, in bytes (64 KiB).
pub const BODY_LIMIT: usize = 64 * 1024;

/// The header of the 204 of `/v1/authorize` that names the key (a static,
/// so the hot path does not parse the name again).
static KEY_ID_HEADER: HeaderName = HeaderName::from_static("x-keygate-key-id");
/// The header of the 204 of `/v1/authorize` that gives the key's kind.
static KEY_KIND_HEADER: HeaderName = HeaderName::from_static("x-keygate-key-kind");

/// The served OpenAPI document.
pub const OPENAPI_YAML: &str = include_str!("../openapi.yaml");

/// How long an id that the database did not have stays known-unknown.
const NEGATIVE_TTL: Duration = Duration::from_secs(10);
/// The most ids the negative cache holds.
const NEGATIVE_CAP: usize = 16_384;
/// Database lookups for ids the keyring lacks: the bucket's size...
const MISS_BURST: f64 = 50.0;
/// ...and its refill, per second.
const MISS_PER_SEC: f64 = 50.0;

/// Shared server state.
pub struct AppState {
    keyring: RwLock<Keyring>,
    writer: Mutex<Store>,
    reader: Mutex<Store>,
    misses: Mutex<MissGuard>,
    policy: MintPolicy,
}

/// Bounds what unknown ids cost: a per-id negative cache with a TTL, and a
/// global token bucket on database lookups.
struct MissGuard {
    unknown: HashMap<KeyId, Instant>,
    tokens: f64,
    last: Instant,
}

impl MissGuard {
    fn new() -> MissGuard {
        MissGuard {
            unknown: HashMap::new(),
            tokens: MISS_BURST,
            last: Instant::now(),
        }
    }

    /// Whether the database may be asked about `id` now. Takes a token.
    fn may_lookup(&mut self, id: &KeyId, now: Instant) -> bool {
        if let Some(&at) = self.unknown.get(id) {
            if now.duration_since(at) < NEGATIVE_TTL {
                return false;
            }
            self.unknown.remove(id);
        }
        let elapsed = now.duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * MISS_PER_SEC).min(MISS_BURST);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Remembers that the database lacks `id`.
    fn remember_unknown(&mut self, id: KeyId, now: Instant) {
        if self.unknown.len() >= NEGATIVE_CAP {
            self.unknown
                .retain(|_, at| now.duration_since(*at) < NEGATIVE_TTL);
            if self.unknown.len() >= NEGATIVE_CAP {
                self.unknown.clear();
            }
        }
        self.unknown.insert(id, now);
    }
}

/// What the server hands the tower layer: the state, behind an `Arc`.
#[derive(Clone)]
pub struct Shared(pub Arc<AppState>);

impl AppState {
    /// State over an opened keyring (already loaded from the store).
    pub fn new(keyring: Keyring, writer: Store, reader: Store, policy: MintPolicy) -> AppState {
        AppState {
            keyring: RwLock::new(keyring),
            writer: Mutex::new(writer),
            reader: Mutex::new(reader),
            misses: Mutex::new(MissGuard::new()),
            policy,
        }
    }

    fn keyring(&self) -> std::sync::RwLockReadGuard<'_, Keyring> {
        self.keyring.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// Looks an id up in the database, if the miss guard allows it, and
    /// adds a found record to the keyring.
    fn fetch_missing(&self, id: KeyId) {
        let now = Instant::now();
        let allowed = self
            .misses
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .may_lookup(&id, now);
        if !allowed {
            return;
        }
        let found = tokio::task::block_in_place(|| {
            self.reader
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .get(&id)
        });
        match found {
            Ok(Some(record)) => {
                self.keyring
                    .write()
                    .unwrap_or_else(PoisonError::into_inner)
                    .insert(record);
            }
            Ok(None) => self
                .misses
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .remember_unknown(id, now),
            Err(e) => tracing::warn!(key_id = %id, "key lookup failed: {e}"),
        }
    }
}

impl Authenticate for AppState {
    fn authenticate(&self, token: &[u8], now_ms: i64) -> Result<Principal, AuthError> {
        let token = Token::parse_bytes(token)?;
        {
            let keyring = self.keyring();
            if keyring.contains(&token.key_id()) {
                return keyring.verify(&token, now_ms);
            }
        }
        self.fetch_missing(token.key_id());
        self.keyring().verify(&token, now_ms)
    }
}

impl Authenticate for Shared {
    #[inline]
    fn authenticate(&self, token: &[u8], now_ms: i64) -> Result<Principal, AuthError> {
        self.0.authenticate(token, now_ms)
    }
}

/// The router with every route and layer.
pub fn router(state: Arc<AppState>) -> Router {
    let shared = Shared(Arc::clone(&state));
    let mint_routes = Router::new()
        .route("/v1/apikeys", post(create::<ApiKeyCreateParameters>))
        .route(
            "/v1/restricted_keys",
            post(create::<RestrictedKeyCreateParameters>),
        )
        .route_layer(RequireScope::new(shared, Resource::Account, Access::Write))
        .layer(DefaultBodyLimit::max(BODY_LIMIT));
    Router::new()
        .merge(mint_routes)
        .route("/v1/authorize", get(authorize))
        .route("/healthz", get(healthz))
        .route("/openapi.yaml", get(openapi))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn(log_request))
        .with_state(state)
}

/// One log line per request: method, path, status, latency, key id.
async fn log_request(request: Request, next: Next) -> Response {
    let start = Instant::now();
    let method = request.method().clone();
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

/// Displays a URI's path, without the query.
struct PathOnly(Uri);

impl std::fmt::Display for PathOnly {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0.path())
    }
}

fn json_response(status: StatusCode, body: Vec<u8>) -> Response {
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

fn bad_request(detail: &str) -> Response {
    problem(StatusCode::BAD_REQUEST, detail)
}

/// Reads an optional JSON body: empty (or only whitespace) counts as `{}`.
/// Any content type is accepted; the bytes must be a JSON object. The error
/// is the status (400 or 413) and the problem's detail.
fn parse_body<T: DeserializeOwned + Default>(
    body: Result<Bytes, BytesRejection>,
) -> Result<T, (StatusCode, String)> {
    let bytes = body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            (
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("request body is larger than {BODY_LIMIT} bytes"),
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
    serde_json::from_slice(&bytes).map_err(|e| {
        (
            StatusCode::BAD_REQUEST,
            format!("invalid request body: {e}"),
        )
    })
}

fn validation_error(e: &ValidationError) -> Response {
    bad_request(&e.to_string())
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
    match params.validate(now_ms) {
        Ok(request) => mint_and_store(state, caller, request, now_ms).await,
        Err(e) => validation_error(&e),
    }
}

fn internal_error(detail: &str) -> Response {
    problem(StatusCode::INTERNAL_SERVER_ERROR, detail)
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
    let minted = {
        let keyring = state.keyring();
        keygate::mint(
            keyring.pepper(),
            &request,
            &mut keygate::os_entropy(),
            now_ms,
        )
    };
    let record: KeyRecord = minted.record().clone();
    let committed = tokio::task::spawn_blocking({
        let state = Arc::clone(&state);
        let record = record.clone();
        move || {
            state
                .writer
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(&record)
        }
    })
    .await;
    match committed {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            tracing::error!(key_id = %record.id(), "cannot store key: {e}");
            return internal_error("cannot store the key");
        }
        Err(e) => {
            tracing::error!(key_id = %record.id(), "store task failed: {e}");
            return internal_error("cannot store the key");
        }
    }
    state
        .keyring
        .write()
        .unwrap_or_else(PoisonError::into_inner)
        .insert(record);
    match serde_json::to_vec(&minted.into_view()) {
        Ok(body) => {
            let mut response = json_response(StatusCode::OK, body);
            // The log names the caller; the new key's id is in the body.
            response.extensions_mut().insert(caller);
            response
        }
        Err(_) => internal_error("cannot encode the created key"),
    }
}

/// The two query parameters of `/v1/authorize`, parsed without copying
/// (bytes, not chars: this is the hot path). The error is the 400's detail.
fn parse_authorize_query(query: Option<&str>) -> Result<(Resource, Access), String> {
    let mut resource = None;
    let mut access = None;
    for pair in query.unwrap_or_default().as_bytes().split(|&b| b == b'&') {
        let (key, value) = match pair.iter().position(|&b| b == b'=') {
            Some(at) => (
                pair.get(..at).unwrap_or_default(),
                pair.get(at + 1..).unwrap_or_default(),
            ),
            None => (pair, &[][..]),
        };
        // The query is a `&str` split at ASCII bytes, so `value` is UTF-8.
        let value = std::str::from_utf8(value).unwrap_or_default();
        match key {
            b"resource_type" => {
                if resource.is_some() {
                    return Err(String::from(
                        "query parameter `resource_type` appears twice",
                    ));
                }
                resource = Some(
                    Resource::from_api_name(value)
                        .ok_or_else(|| format!("unknown `resource_type` `{}`", quote(value)))?,
                );
            }
            b"access_level" => {
                if access.is_some() {
                    return Err(String::from("query parameter `access_level` appears twice"));
                }
                access = Some(
                    Access::from_api_name(value)
                        .ok_or_else(|| format!("unknown `access_level` `{}`", quote(value)))?,
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

/// Cuts user input for an error message at 64 characters.
fn quote(input: &str) -> String {
    match input.char_indices().nth(64) {
        Some((end, _)) => format!("{}…", input.get(..end).unwrap_or_default()),
        None => input.to_owned(),
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
    let principal =
        match keygate::tower::authenticate_headers(&*state, request.headers(), system_now_ms()) {
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
    fn miss_guard_bounds_lookups() {
        let mut g = MissGuard::new();
        let t0 = Instant::now();
        let id = |n: u8| KeyId::parse(&format!("{:0>16}", n)).unwrap();
        let mut allowed = 0;
        for n in 0..200u8 {
            if g.may_lookup(&id(n), t0) {
                allowed += 1;
                g.remember_unknown(id(n), t0);
            }
        }
        assert_eq!(allowed, MISS_BURST as usize);
        // A remembered id is not looked up again within the TTL...
        let later = t0 + Duration::from_secs(1);
        assert!(!g.may_lookup(&id(0), later));
        // ...but a new id is, once tokens refill.
        assert!(g.may_lookup(&id(250), later));
        assert!(g.may_lookup(&id(0), t0 + NEGATIVE_TTL + Duration::from_secs(1)));
    }

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
}
