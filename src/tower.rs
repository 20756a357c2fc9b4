//! HTTP glue (feature `tower`): one tower layer, [`Require`], generic over a
//! [`Policy`] that decides each request, with refusals answered as RFC 9457
//! problem details and RFC 6750 `WWW-Authenticate` headers.
//!
//! The policy is a fixed [`Decision`] (every request needs one scope) or a
//! [`RouteTable`] (the scope comes from the method and path), as tower-http's
//! `ValidateRequest` is generic over its validator:
//!
//! * no, or a non-bearer, `Authorization` header, or a malformed, unknown,
//!   wrong or expired token: **401** with
//!   `WWW-Authenticate: Bearer error="invalid_token"`;
//! * a valid key without the scope, or a `deny`/unmatched route: **403**
//!   (`error="insufficient_scope"` for a key without the scope);
//! * a path refused as unsafe: **400** (`error="invalid_request"`);
//! * otherwise the request reaches the inner service with the [`Decision`]
//!   and the verified [`Principal`] (none on a `public` route) in its
//!   extensions, and the principal in the response's, for logging.
//!
//! The keys come from anything that implements [`Authenticate`]: a
//! [`Keyring`](crate::Keyring), an `RwLock<Keyring>`, an `Arc` of either, or
//! your own type (keygate's server implements it to fall back to its
//! database). The time comes from a clock function,
//! [`UnixMillis::now`] unless you pass another.
//!
//! ```
//! use std::sync::{Arc, RwLock};
//! use keygate::tower::Require;
//! use keygate::{Access, Keyring, Pepper, Resource, RouteTable};
//!
//! let keyring = Arc::new(RwLock::new(Keyring::new(Pepper::from_bytes(&[7u8; 32]))));
//! let layer = Require::scope(Arc::clone(&keyring), Resource::Devboxes, Access::Write);
//! // axum: Router::new().route("/devboxes", post(handler)).layer(layer)
//! let table: RouteTable = "GET /v1/devboxes/** devboxes:read".parse()?;
//! let layer = Require::new(keyring, Arc::new(table));
//! // axum: Router::new().nest("/v1", api).layer(layer)
//! # let _ = layer;
//! # Ok::<(), keygate::RouteParseError>(())
//! ```

use std::string::String;
use std::task::{Context, Poll};

use http::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE, WWW_AUTHENTICATE};
use http::{HeaderMap, Request, Response, StatusCode};
use pin_project_lite::pin_project;

use crate::keyring::Principal;
use crate::limit::{Limiter, Refusal, Verdict};
use crate::route::{Decision, Rejection, RouteTable};
use crate::scope::{Access, Resource};
use crate::time::UnixMillis;
use crate::token::KeyId;

pub use crate::route::Authenticate;

/// The media type of every error body.
pub const PROBLEM_JSON: &str = "application/problem+json";

/// `WWW-Authenticate` of a 401 (RFC 6750 section 3.1).
pub const INVALID_TOKEN_CHALLENGE: &str = "Bearer error=\"invalid_token\"";

/// `WWW-Authenticate` of a 403 (RFC 6750 section 3.1).
pub const INSUFFICIENT_SCOPE_CHALLENGE: &str = "Bearer error=\"insufficient_scope\"";

/// `WWW-Authenticate` of a 400 for a path refused as unsafe (RFC 6750
/// section 3.1).
pub const INVALID_REQUEST_CHALLENGE: &str = "Bearer error=\"invalid_request\"";

impl Rejection {
    /// The RFC 6750 challenge for the `WWW-Authenticate` header.
    ///
    /// ```
    /// use keygate::{tower::INVALID_TOKEN_CHALLENGE, Rejection};
    /// assert_eq!(Rejection::MissingCredential.challenge(), INVALID_TOKEN_CHALLENGE);
    /// ```
    pub const fn challenge(&self) -> &'static str {
        match self.http_status() {
            403 => INSUFFICIENT_SCOPE_CHALLENGE,
            400 => INVALID_REQUEST_CHALLENGE,
            _ => INVALID_TOKEN_CHALLENGE,
        }
    }

    /// The 400, 401 or 403 response: problem+json body, `WWW-Authenticate`
    /// header, and the rejection itself in the response extensions.
    ///
    /// ```
    /// use keygate::Rejection;
    /// let response: http::Response<String> = Rejection::MissingCredential.to_response();
    /// assert_eq!(response.status(), 401);
    /// assert_eq!(response.headers()["www-authenticate"], "Bearer error=\"invalid_token\"");
    /// ```
    pub fn to_response<B: From<String>>(&self) -> Response<B> {
        let status = StatusCode::from_u16(self.http_status()).unwrap_or(StatusCode::UNAUTHORIZED);
        let mut response = problem_with(status, self);
        response
            .headers_mut()
            .insert(WWW_AUTHENTICATE, HeaderValue::from_static(self.challenge()));
        response.extensions_mut().insert(*self);
        response
    }
}

/// A problem details document (RFC 9457): `type` `about:blank`, `title` the
/// status's reason phrase, `status`, and `detail`.
///
/// `detail` must not hold a secret; keygate's error messages never do.
///
/// ```
/// let r: http::Response<String> = keygate::tower::problem(http::StatusCode::BAD_REQUEST, "bad `x`");
/// assert_eq!(r.headers()["content-type"], "application/problem+json");
/// let body: serde_json::Value = serde_json::from_str(r.body())?;
/// assert_eq!(
///     body,
///     serde_json::json!({"type": "about:blank", "title": "Bad Request", "status": 400, "detail": "bad `x`"})
/// );
/// # Ok::<(), serde_json::Error>(())
/// ```
pub fn problem<B: From<String>>(status: StatusCode, detail: &str) -> Response<B> {
    problem_with(status, &detail)
}

/// [`problem`] with any displayable detail, written straight into the body:
/// one allocation (the body) for the usual short document.
fn problem_with<B: From<String>>(
    status: StatusCode,
    detail: &dyn core::fmt::Display,
) -> Response<B> {
    problem_of_type(status, "about:blank", detail)
}

/// [`problem_with`] with a `type` URI of its own.
fn problem_of_type<B: From<String>>(
    status: StatusCode,
    kind: &'static str,
    detail: &dyn core::fmt::Display,
) -> Response<B> {
    /// The document, in RFC 9457's member order.
    struct Problem<'a> {
        kind: &'static str,
        status: StatusCode,
        detail: &'a dyn core::fmt::Display,
    }
    impl serde::Serialize for Problem<'_> {
        fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
            use serde::ser::SerializeStruct;
            let mut s = serializer.serialize_struct("Problem", 4)?;
            s.serialize_field("type", self.kind)?;
            s.serialize_field("title", self.status.canonical_reason().unwrap_or("Error"))?;
            s.serialize_field("status", &self.status.as_u16())?;
            s.serialize_field("detail", &Collected(self.detail))?;
            s.end()
        }
    }
    /// Serializes a `Display` value as a JSON string, escaped as written.
    struct Collected<'a>(&'a dyn core::fmt::Display);
    impl serde::Serialize for Collected<'_> {
        fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
            serializer.collect_str(self.0)
        }
    }
    // Serializing strings and a number into a `Vec` cannot fail.
    let body = serde_json::to_string(&Problem {
        kind,
        status,
        detail,
    })
    .unwrap_or_default();
    let mut response = Response::new(B::from(body));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
    response
}

/// The problem `type` of a 429 for a key over its rate limit.
pub const RATE_LIMITED_TYPE: &str = "urn:keygate:problem:rate-limited";

/// The problem `type` of a 429 for a key whose credits do not cover the request.
pub const CREDITS_EXHAUSTED_TYPE: &str = "urn:keygate:problem:credits-exhausted";

/// The field that carries a key's credit balance after the request.
pub const CREDITS_REMAINING: http::HeaderName =
    http::HeaderName::from_static("keygate-credits-remaining");

/// `RateLimit-Policy` (draft-ietf-httpapi-ratelimit-headers-09).
pub const RATELIMIT_POLICY: http::HeaderName = http::HeaderName::from_static("ratelimit-policy");

/// `RateLimit` (draft-ietf-httpapi-ratelimit-headers-09).
pub const RATELIMIT: http::HeaderName = http::HeaderName::from_static("ratelimit");

/// Adds what a [`Verdict`] reports to an answer about a limited key: for a
/// rate limit, `RateLimit-Policy: "rate";q=LIMIT;w=SECONDS` and `RateLimit:
/// "rate";r=REMAINING;t=SECONDS` (draft-ietf-httpapi-ratelimit-headers-09;
/// a period that is not whole seconds is stated over its length rounded up
/// to whole seconds, with the quota rounded down);
/// for credits, `Keygate-Credits-Remaining`. An unlimited key gets none.
///
/// ```
/// use core::time::Duration;
/// use keygate::{KeyId, KeyLimits, Limiter, RateLimit, UnixMillis};
/// let id = KeyId::parse("4GZ6bQvR9cXw2LmT")?;
/// let mut limiter = Limiter::new();
/// let rate = RateLimit::new(100, Duration::from_secs(60))?;
/// limiter.configure(id, UnixMillis::EPOCH, KeyLimits { rate: Some(rate), credits: None });
/// let verdict = limiter.check(&id, UnixMillis::EPOCH, 1);
/// let mut headers = http::HeaderMap::new();
/// keygate::tower::insert_limit_headers(&mut headers, &verdict);
/// assert_eq!(headers["ratelimit-policy"], r#""rate";q=100;w=60"#);
/// assert_eq!(headers["ratelimit"], r#""rate";r=99;t=1"#);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn insert_limit_headers(headers: &mut HeaderMap, verdict: &Verdict) {
    if let Some(rate) = verdict.rate() {
        // The window in whole seconds, rounded up, and the quota the limit
        // allows in it, rounded down: never more than the key may do, and
        // never below the remaining count.
        let period_ms = rate.period().as_millis().max(1);
        let window = period_ms.div_ceil(1_000);
        let quota = u128::from(rate.limit()) * window * 1_000 / period_ms;
        let reset = rate.reset_after().as_millis().div_ceil(1_000);
        if let Ok(v) = HeaderValue::try_from(std::format!("\"rate\";q={quota};w={window}")) {
            headers.insert(RATELIMIT_POLICY, v);
        }
        let remaining = rate.remaining();
        if let Ok(v) = HeaderValue::try_from(std::format!("\"rate\";r={remaining};t={reset}")) {
            headers.insert(RATELIMIT, v);
        }
    }
    if let Some(credits) = verdict.credits() {
        headers.insert(CREDITS_REMAINING, HeaderValue::from(credits.remaining()));
    }
}

impl Refusal {
    /// The 429 answer: problem details of type [`RATE_LIMITED_TYPE`] or
    /// [`CREDITS_EXHAUSTED_TYPE`], `Retry-After` in whole seconds (at least
    /// 1) when a wait will help, and the [`insert_limit_headers`] fields.
    ///
    /// ```
    /// use core::time::Duration;
    /// use keygate::{KeyId, KeyLimits, Limiter, RateLimit, UnixMillis};
    /// let id = KeyId::parse("4GZ6bQvR9cXw2LmT")?;
    /// let mut limiter = Limiter::new();
    /// let rate = RateLimit::new(1, Duration::from_millis(1_500))?;
    /// limiter.configure(id, UnixMillis::EPOCH, KeyLimits { rate: Some(rate), credits: None });
    /// limiter.check(&id, UnixMillis::EPOCH, 1);
    /// let verdict = limiter.check(&id, UnixMillis::EPOCH, 1);
    /// let response: http::Response<String> = verdict.result().unwrap_err().to_response(&verdict);
    /// assert_eq!(response.status(), 429);
    /// assert_eq!(response.headers()["retry-after"], "2");
    /// assert!(response.body().contains("urn:keygate:problem:rate-limited"));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn to_response<B: From<String>>(&self, verdict: &Verdict) -> Response<B> {
        let kind = match self {
            Refusal::CreditsExhausted { .. } => CREDITS_EXHAUSTED_TYPE,
            _ => RATE_LIMITED_TYPE,
        };
        let mut response = problem_of_type(StatusCode::TOO_MANY_REQUESTS, kind, self);
        let headers = response.headers_mut();
        if let Some(wait) = self.retry_after() {
            let secs = wait.as_millis().div_ceil(1_000).max(1);
            if let Ok(v) = HeaderValue::try_from(std::format!("{secs}")) {
                headers.insert(http::header::RETRY_AFTER, v);
            }
        }
        insert_limit_headers(headers, verdict);
        response.extensions_mut().insert(*self);
        response
    }
}

/// The token of an `Authorization: Bearer <token>` header. The scheme is
/// case-insensitive; spaces before the token are skipped. Nothing is copied.
///
/// ```
/// use keygate::{tower::bearer_token, Rejection};
/// let mut headers = http::HeaderMap::new();
/// assert_eq!(bearer_token(&headers), Err(Rejection::MissingCredential));
/// headers.insert("authorization", "bEaReR abc".parse()?);
/// assert_eq!(bearer_token(&headers), Ok(&b"abc"[..]));
/// headers.insert("authorization", "Basic abc".parse()?);
/// assert_eq!(bearer_token(&headers), Err(Rejection::NotBearer));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn bearer_token(headers: &HeaderMap) -> Result<&[u8], Rejection> {
    let mut values = headers.get_all(AUTHORIZATION).iter();
    let value = values.next().ok_or(Rejection::MissingCredential)?;
    if values.next().is_some() {
        return Err(Rejection::NotBearer);
    }
    let bytes = value.as_bytes();
    let split = bytes
        .iter()
        .position(|&b| b == b' ')
        .ok_or(Rejection::NotBearer)?;
    let (scheme, rest) = bytes.split_at(split);
    if !scheme.eq_ignore_ascii_case(b"bearer") {
        return Err(Rejection::NotBearer);
    }
    let start = rest
        .iter()
        .position(|&b| b != b' ')
        .ok_or(Rejection::NotBearer)?;
    rest.get(start..).ok_or(Rejection::NotBearer)
}

/// Authenticates the bearer token of `headers` at `now`.
///
/// ```
/// use keygate::{tower::authenticate_headers, Rejection};
/// let keyring = keygate::Keyring::new(keygate::Pepper::from_bytes(&[0u8; 32]));
/// let headers = http::HeaderMap::new();
/// assert_eq!(authenticate_headers(&keyring, &headers, keygate::UnixMillis::from_millis(0)), Err(Rejection::MissingCredential));
/// ```
#[inline]
pub fn authenticate_headers<A: Authenticate + ?Sized>(
    auth: &A,
    headers: &HeaderMap,
    now: UnixMillis,
) -> Result<Principal, Rejection> {
    Ok(auth.authenticate(bearer_token(headers)?, now)?)
}

/// What [`Require`] asks of each request: the [`Decision`] for it and, unless
/// it is public, the principal the bearer token of `headers` authenticates
/// as, checked against the decision's scope.
///
/// keygate implements it for a fixed [`Decision`] (every request needs the
/// same scope) and for a [`RouteTable`] (the scope comes from the method and
/// path, as [`RouteTable::authorize_request`] decides).
///
/// ```
/// use keygate::tower::Policy;
/// use keygate::{Access, Decision, Rejection, Resource, RouteTable};
/// let keyring = keygate::Keyring::new(keygate::Pepper::from_bytes(&[0u8; 32]));
/// let headers = http::HeaderMap::new();
/// let fixed = Decision::Scope(Resource::Agents, Access::Read);
/// let err = fixed.check(&keyring, b"GET", b"/x", &headers, keygate::UnixMillis::from_millis(0)).unwrap_err();
/// assert_eq!(err, Rejection::MissingCredential);
/// let table: RouteTable = "GET /healthz public".parse()?;
/// let (principal, decision) = table.check(&keyring, b"GET", b"/healthz", &headers, keygate::UnixMillis::from_millis(0))?;
/// assert_eq!((principal, decision), (None, Decision::Public));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub trait Policy {
    /// Decides the request `method` `target` (path and query, as sent) with
    /// `headers`, checking keys against `auth` at `now`.
    fn check<A: Authenticate + ?Sized>(
        &self,
        auth: &A,
        method: &[u8],
        target: &[u8],
        headers: &HeaderMap,
        now: UnixMillis,
    ) -> Result<(Option<Principal>, Decision), Rejection>;

    /// What a request costs against the key's rate limit and credits: 1,
    /// unless the policy says otherwise (a route table's `cost=N`).
    ///
    /// ```
    /// use keygate::tower::Policy;
    /// let table: keygate::RouteTable = "POST /v1/devboxes devboxes:write cost=5".parse()?;
    /// assert_eq!(table.cost(b"POST", b"/v1/devboxes"), 5);
    /// assert_eq!(keygate::Decision::Public.cost(b"GET", b"/"), 1);
    /// # Ok::<(), keygate::RouteParseError>(())
    /// ```
    fn cost(&self, _method: &[u8], _target: &[u8]) -> u32 {
        1
    }
}

impl Policy for Decision {
    /// The same decision for every request; the method and path are not read.
    #[inline]
    fn check<A: Authenticate + ?Sized>(
        &self,
        auth: &A,
        _method: &[u8],
        _target: &[u8],
        headers: &HeaderMap,
        now: UnixMillis,
    ) -> Result<(Option<Principal>, Decision), Rejection> {
        match *self {
            Decision::Public => Ok((None, *self)),
            Decision::Deny => Err(Rejection::Unmatched),
            Decision::Scope(resource, access) => {
                let principal = authenticate_headers(auth, headers, now)?;
                principal.require(resource, access)?;
                Ok((Some(principal), *self))
            }
        }
    }
}

impl Policy for RouteTable {
    /// [`RouteTable::authorize_request`] with the bearer token of `headers`.
    #[inline]
    fn check<A: Authenticate + ?Sized>(
        &self,
        auth: &A,
        method: &[u8],
        target: &[u8],
        headers: &HeaderMap,
        now: UnixMillis,
    ) -> Result<(Option<Principal>, Decision), Rejection> {
        let token = bearer_token(headers);
        match self.authorize_request(auth, token.ok(), method, target, now) {
            Ok(ok) => Ok((ok.principal(), ok.route().decision())),
            // A header that is there but not a bearer credential says so.
            Err(Rejection::MissingCredential) => {
                Err(token.err().unwrap_or(Rejection::MissingCredential))
            }
            Err(e) => Err(e),
        }
    }

    /// The matched rule's `cost=N` (1 without one).
    fn cost(&self, method: &[u8], target: &[u8]) -> u32 {
        self.lookup(method, target).map_or(1, |m| m.cost())
    }
}

impl<P: Policy + ?Sized> Policy for std::sync::Arc<P> {
    #[inline]
    fn cost(&self, method: &[u8], target: &[u8]) -> u32 {
        (**self).cost(method, target)
    }

    #[inline]
    fn check<A: Authenticate + ?Sized>(
        &self,
        auth: &A,
        method: &[u8],
        target: &[u8],
        headers: &HeaderMap,
        now: UnixMillis,
    ) -> Result<(Option<Principal>, Decision), Rejection> {
        (**self).check(auth, method, target, headers, now)
    }
}

/// Where [`Require`] looks up a key's rate limit and credits: a
/// [`Limiter`], behind an `RwLock` or an `Arc`, or [`NoLimits`] (the
/// default).
pub trait Limits {
    /// [`Limiter::check_with`]: `cost` is called only for a limited key.
    fn check_limits(&self, id: &KeyId, now: UnixMillis, cost: impl FnOnce() -> u32) -> Verdict;
}

/// No limits: every key unlimited.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoLimits;

impl Limits for NoLimits {
    #[inline]
    fn check_limits(&self, _: &KeyId, _: UnixMillis, _: impl FnOnce() -> u32) -> Verdict {
        Verdict::UNLIMITED
    }
}

impl Limits for Limiter {
    #[inline]
    fn check_limits(&self, id: &KeyId, now: UnixMillis, cost: impl FnOnce() -> u32) -> Verdict {
        self.check_with(id, now, cost)
    }
}

impl<L: Limits> Limits for std::sync::RwLock<L> {
    #[inline]
    fn check_limits(&self, id: &KeyId, now: UnixMillis, cost: impl FnOnce() -> u32) -> Verdict {
        self.read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .check_limits(id, now, cost)
    }
}

impl<L: Limits + ?Sized> Limits for std::sync::Arc<L> {
    #[inline]
    fn check_limits(&self, id: &KeyId, now: UnixMillis, cost: impl FnOnce() -> u32) -> Verdict {
        (**self).check_limits(id, now, cost)
    }
}

/// A tower layer that lets a request through only if its [`Policy`] says so:
/// a fixed scope ([`Require::scope`]) or a [`RouteTable`]
/// ([`Require::new`] with an `Arc<RouteTable>`). See the [module docs](self).
///
/// A route table matches `request.uri().path()` as it reaches the layer: put
/// it where the full path is seen (in axum, outside any `Router::nest`, which
/// strips the prefix before inner layers run).
///
/// ```
/// use keygate::tower::Require;
/// use keygate::{Access, Decision, Keyring, Pepper, Resource};
/// let keyring = std::sync::Arc::new(Keyring::new(Pepper::from_bytes(&[1u8; 32])));
/// let layer = Require::scope(keyring, Resource::Objects, Access::Read).with_clock(|| keygate::UnixMillis::from_millis(0));
/// assert_eq!(*layer.policy(), Decision::Scope(Resource::Objects, Access::Read));
/// ```
///
/// With [`Require::with_limits`], a request that passes the policy is then
/// checked against its key's rate limit and credits at the policy's cost:
/// 429 answers as [`Refusal::to_response`] makes them, and the
/// [`insert_limit_headers`] fields on the inner service's answers.
#[derive(Clone, Debug)]
pub struct Require<A, P, L = NoLimits> {
    auth: A,
    policy: P,
    limits: L,
    clock: fn() -> UnixMillis,
}

impl<A> Require<A, Decision> {
    /// Requires `access` on `resource` of every request.
    pub fn scope(auth: A, resource: Resource, access: Access) -> Require<A, Decision> {
        Require::new(auth, Decision::Scope(resource, access))
    }
}

impl<A, P> Require<A, P> {
    /// Decides requests by `policy`, checking tokens against `auth`.
    pub fn new(auth: A, policy: P) -> Require<A, P> {
        Require {
            auth,
            policy,
            limits: NoLimits,
            clock: UnixMillis::now,
        }
    }
}

impl<A, P, L> Require<A, P, L> {
    /// Enforces the keys' rate limits and credits from `limits` too.
    ///
    /// ```
    /// use std::sync::{Arc, RwLock};
    /// use keygate::tower::Require;
    /// use keygate::{Access, Keyring, Limiter, Pepper, Resource};
    /// let keyring = Arc::new(RwLock::new(Keyring::new(Pepper::from_bytes(&[7u8; 32]))));
    /// let limiter = Arc::new(RwLock::new(Limiter::new()));
    /// let layer = Require::scope(keyring, Resource::Devboxes, Access::Write).with_limits(limiter);
    /// # let _ = layer;
    /// ```
    pub fn with_limits<M>(self, limits: M) -> Require<A, P, M> {
        Require {
            auth: self.auth,
            policy: self.policy,
            limits,
            clock: self.clock,
        }
    }

    /// Replaces the clock ([`UnixMillis::now`] by default), e.g. for tests.
    pub fn with_clock(mut self, clock: fn() -> UnixMillis) -> Require<A, P, L> {
        self.clock = clock;
        self
    }

    /// The policy.
    pub fn policy(&self) -> &P {
        &self.policy
    }
}

impl<S, A: Clone, P: Clone, L: Clone> tower_layer::Layer<S> for Require<A, P, L> {
    type Service = RequireService<S, A, P, L>;

    fn layer(&self, inner: S) -> Self::Service {
        RequireService {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service [`Require`] makes.
#[derive(Clone, Debug)]
pub struct RequireService<S, A, P, L = NoLimits> {
    inner: S,
    layer: Require<A, P, L>,
}

impl<S, A, P, L, ReqBody, ResBody> tower_service::Service<Request<ReqBody>>
    for RequireService<S, A, P, L>
where
    S: tower_service::Service<Request<ReqBody>, Response = Response<ResBody>>,
    A: Authenticate,
    P: Policy,
    L: Limits,
    ResBody: From<String>,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, ResBody>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<ReqBody>) -> Self::Future {
        let layer = &self.layer;
        let now = (layer.clock)();
        // The path as sent (still percent-encoded); a route table canonicalizes it.
        let (method, path) = (
            request.method().as_str().as_bytes(),
            request.uri().path().as_bytes(),
        );
        let decided = layer
            .policy
            .check(&layer.auth, method, path, request.headers(), now);
        match decided {
            Ok((principal, decision)) => {
                // The cost is looked up only for a limited key.
                let verdict = match &principal {
                    Some(p) => layer
                        .limits
                        .check_limits(&p.id(), now, || layer.policy.cost(method, path)),
                    None => Verdict::UNLIMITED,
                };
                if let Err(refusal) = verdict.result() {
                    let mut response = refusal.to_response(&verdict);
                    if let Some(p) = principal {
                        response.extensions_mut().insert(p);
                    }
                    return ResponseFuture {
                        state: State::Rejected {
                            response: Some(response),
                        },
                    };
                }
                request.extensions_mut().insert(decision);
                if let Some(p) = principal {
                    request.extensions_mut().insert(p);
                }
                ResponseFuture {
                    state: State::Inner {
                        future: self.inner.call(request),
                        principal,
                        verdict,
                    },
                }
            }
            Err(rejection) => ResponseFuture {
                state: State::Rejected {
                    response: Some(rejection.to_response()),
                },
            },
        }
    }
}

pin_project! {
    /// The future of [`RequireService`].
    pub struct ResponseFuture<F, B> {
        #[pin]
        state: State<F, B>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F, B> {
        Inner { #[pin] future: F, principal: Option<Principal>, verdict: Verdict },
        Rejected { response: Option<Response<B>> },
    }
}

impl<F, B, E> core::future::Future for ResponseFuture<F, B>
where
    F: core::future::Future<Output = Result<Response<B>, E>>,
    B: From<String>,
{
    type Output = Result<Response<B>, E>;

    fn poll(self: core::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            StateProj::Inner {
                future,
                principal,
                verdict,
            } => match future.poll(cx) {
                Poll::Ready(Ok(mut response)) => {
                    if let Some(p) = principal {
                        response.extensions_mut().insert(*p);
                    }
                    insert_limit_headers(response.headers_mut(), verdict);
                    Poll::Ready(Ok(response))
                }
                other => other,
            },
            StateProj::Rejected { response } => {
                Poll::Ready(Ok(response.take().unwrap_or_else(|| {
                    problem(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "response future polled after completion",
                    )
                })))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keyring::AuthError;
    use crate::keyring::Keyring;
    use crate::mint::{mint, MintRequest};
    use crate::scope::Scopes;
    use crate::Pepper;
    use core::future::Future;
    use rand_core::SeedableRng;
    use std::format;
    use std::sync::{Arc, RwLock};
    use std::vec::Vec;
    use tower_layer::Layer;
    use tower_service::Service;

    #[test]
    fn problem_bodies_are_exact_and_escaped() {
        let r: Response<String> = problem(StatusCode::BAD_REQUEST, "a \"q\" \\ \n\u{1}");
        assert_eq!(
            r.body(),
            r#"{"type":"about:blank","title":"Bad Request","status":400,"detail":"a \"q\" \\ \n\u0001"}"#
        );
        let r: Response<String> = Rejection::from(AuthError::InvalidCredentials).to_response();
        assert_eq!(
            r.body(),
            r#"{"type":"about:blank","title":"Unauthorized","status":401,"detail":"unknown key or wrong secret"}"#
        );
        let r: Response<String> = problem(StatusCode::from_u16(599).unwrap(), "x");
        assert_eq!(
            r.body(),
            r#"{"type":"about:blank","title":"Error","status":599,"detail":"x"}"#
        );
    }

    /// Echoes 200 with the principal's id, if the request carries one.
    #[derive(Clone)]
    struct Echo;

    impl Service<Request<()>> for Echo {
        type Response = Response<String>;
        type Error = core::convert::Infallible;
        type Future = core::future::Ready<Result<Response<String>, Self::Error>>;
        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            Poll::Ready(Ok(()))
        }
        fn call(&mut self, req: Request<()>) -> Self::Future {
            let id = req
                .extensions()
                .get::<Principal>()
                .map(|p| String::from(p.id().as_str()))
                .unwrap_or_default();
            core::future::ready(Ok(Response::new(id)))
        }
    }

    fn block_on<F: Future>(f: F) -> F::Output {
        let mut f = core::pin::pin!(f);
        let mut cx = Context::from_waker(core::task::Waker::noop());
        loop {
            if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
                return v;
            }
        }
    }

    fn setup() -> (Arc<RwLock<Keyring>>, String, String, String) {
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(5);
        let mut keyring = Keyring::new(Pepper::generate(&mut rng));
        let mut make = |scopes: Option<Scopes>, expires: Option<i64>| {
            let expires = expires.map(UnixMillis::from_millis);
            let req = match scopes {
                Some(s) => {
                    MintRequest::restricted(None, s, expires, UnixMillis::from_millis(0)).unwrap()
                }
                None => MintRequest::standard(None, expires, UnixMillis::from_millis(0)).unwrap(),
            };
            let (record, token) =
                mint(keyring.pepper(), &req, &mut rng, UnixMillis::from_millis(0)).into_parts();
            keyring.insert(record).unwrap();
            String::from(token.expose_secret())
        };
        let standard = make(None, None);
        let reader = make(Some(Scopes::grant(Resource::Devboxes, Access::Read)), None);
        let expired = make(None, Some(50));
        (Arc::new(RwLock::new(keyring)), standard, reader, expired)
    }

    fn call(
        layer: &Require<Arc<RwLock<Keyring>>, Decision>,
        auth: Option<&str>,
    ) -> Response<String> {
        let mut svc = layer.layer(Echo);
        let mut req = Request::new(());
        if let Some(a) = auth {
            req.headers_mut()
                .insert(AUTHORIZATION, HeaderValue::from_str(a).unwrap());
        }
        match block_on(svc.call(req)) {
            Ok(r) => r,
            Err(e) => match e {},
        }
    }

    #[test]
    fn layer_statuses() {
        let (keyring, standard, reader, expired) = setup();
        let layer = Require::scope(keyring, Resource::Devboxes, Access::Write)
            .with_clock(|| UnixMillis::from_millis(100));
        let ok = call(&layer, Some(&format!("Bearer {standard}")));
        assert_eq!(ok.status(), 200);
        assert_eq!(ok.body().len(), 16);
        assert!(ok.extensions().get::<Principal>().is_some());
        let lower = call(&layer, Some(&format!("bearer   {standard}")));
        assert_eq!(lower.status(), 200);

        let forbidden = call(&layer, Some(&format!("Bearer {reader}")));
        assert_eq!(forbidden.status(), 403);
        assert_eq!(
            forbidden.headers()[WWW_AUTHENTICATE],
            INSUFFICIENT_SCOPE_CHALLENGE
        );
        assert_eq!(forbidden.headers()[CONTENT_TYPE], PROBLEM_JSON);
        let body: serde_json::Value = serde_json::from_str(forbidden.body()).unwrap();
        assert_eq!(body["status"], 403);
        assert!(body["detail"]
            .as_str()
            .unwrap()
            .contains("lacks devboxes:write"));

        let mut changed: Vec<u8> = standard.clone().into_bytes();
        changed[30] = if changed[30] == b'a' { b'b' } else { b'a' };
        let changed = String::from_utf8(changed).unwrap();
        let relabelled = format!("rk_{}", &standard[3..]);
        for auth in [
            None,
            Some(String::from("Basic abc")),
            Some(String::from("Bearer")),
            Some(String::from("Bearer ")),
            Some(format!("Bearer {changed}")),
            Some(format!("Bearer {relabelled}")),
            Some(format!("Bearer {expired}")),
            Some(format!("Token {standard}")),
        ] {
            let r = call(&layer, auth.as_deref());
            assert_eq!(r.status(), 401, "{auth:?}");
            assert_eq!(r.headers()[WWW_AUTHENTICATE], INVALID_TOKEN_CHALLENGE);
            assert!(!r.body().contains(&standard[20..]), "secret echoed");
            assert!(r.extensions().get::<Rejection>().is_some());
        }
    }

    #[test]
    fn two_authorization_headers_are_refused() {
        let (keyring, standard, _, _) = setup();
        let mut headers = HeaderMap::new();
        let v = HeaderValue::from_str(&format!("Bearer {standard}")).unwrap();
        headers.append(AUTHORIZATION, v.clone());
        headers.append(AUTHORIZATION, v);
        assert_eq!(
            authenticate_headers(&keyring, &headers, UnixMillis::from_millis(0)),
            Err(Rejection::NotBearer)
        );
    }

    #[test]
    fn rejection_names_key_id_only_when_known() {
        let (keyring, _, reader, expired) = setup();
        let mut headers = HeaderMap::new();
        headers.insert(
            AUTHORIZATION,
            HeaderValue::from_str(&format!("Bearer {expired}")).unwrap(),
        );
        let e = authenticate_headers(&keyring, &headers, UnixMillis::from_millis(60)).unwrap_err();
        assert_eq!(e.key_id().unwrap().as_str(), &expired[3..19]);
        headers.insert(
            AUTHORIZATION,
            HeaderValue::from_str(&format!("Bearer {reader}")).unwrap(),
        );
        let e = Decision::Scope(Resource::Account, Access::Read)
            .check(
                &keyring,
                b"GET",
                b"/",
                &headers,
                UnixMillis::from_millis(60),
            )
            .unwrap_err();
        assert_eq!(e.http_status(), 403);
        assert_eq!(e.key_id().unwrap().as_str(), &reader[3..19]);
    }

    #[test]
    fn system_clock_is_the_real_time() {
        let before = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64;
        let now = UnixMillis::now();
        let after = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64;
        let before = UnixMillis::from_millis(before);
        assert!(
            before <= now && now <= UnixMillis::from_millis(after),
            "{before} <= {now} <= {after}"
        );
    }

    #[test]
    fn default_clock_refuses_a_key_that_expired_a_millisecond_ago() {
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(11);
        let mut keyring = Keyring::new(Pepper::generate(&mut rng));
        let now = UnixMillis::now().as_millis();
        let mut make = |expires: i64| {
            let minted_at = UnixMillis::from_millis(now - 60_000);
            let expires = Some(UnixMillis::from_millis(expires));
            let req = MintRequest::standard(None, expires, minted_at).unwrap();
            let (record, token) = mint(keyring.pepper(), &req, &mut rng, minted_at).into_parts();
            keyring.insert(record).unwrap();
            String::from(token.expose_secret())
        };
        let just_expired = make(now - 1);
        let live = make(now + 600_000);
        // No `with_clock`: the layer reads the system clock.
        let layer = Require::scope(
            Arc::new(RwLock::new(keyring)),
            Resource::Devboxes,
            Access::Read,
        );
        let r = call(&layer, Some(&format!("Bearer {just_expired}")));
        assert_eq!(r.status(), 401);
        assert!(r.body().contains("expired"), "{}", r.body());
        let r = call(&layer, Some(&format!("Bearer {live}")));
        assert_eq!(r.status(), 200);
    }

    #[test]
    fn layer_reports_what_it_guards() {
        let (keyring, _, _, _) = setup();
        let layer = Require::scope(keyring, Resource::Agents, Access::Write);
        assert_eq!(
            *layer.policy(),
            Decision::Scope(Resource::Agents, Access::Write)
        );
        let layer = Require::scope(layer.auth, Resource::Objects, Access::Read);
        assert_eq!(
            *layer.policy(),
            Decision::Scope(Resource::Objects, Access::Read)
        );
    }

    /// A service that is never ready, or fails readiness.
    struct Busy(bool);

    impl Service<Request<()>> for Busy {
        type Response = Response<String>;
        type Error = &'static str;
        type Future = core::future::Ready<Result<Response<String>, Self::Error>>;
        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            if self.0 {
                Poll::Ready(Err("broken"))
            } else {
                Poll::Pending
            }
        }
        fn call(&mut self, _: Request<()>) -> Self::Future {
            core::future::ready(Ok(Response::new(String::new())))
        }
    }

    #[test]
    fn readiness_is_the_inner_services() {
        let (keyring, _, _, _) = setup();
        let layer = Require::scope(keyring, Resource::Agents, Access::Write);
        let mut cx = Context::from_waker(core::task::Waker::noop());
        let mut pending = layer.layer(Busy(false));
        assert!(pending.poll_ready(&mut cx).is_pending());
        let mut failing = layer.layer(Busy(true));
        assert_eq!(failing.poll_ready(&mut cx), Poll::Ready(Err("broken")));
        let mut ready = layer.layer(Echo);
        assert!(matches!(ready.poll_ready(&mut cx), Poll::Ready(Ok(()))));
    }

    #[test]
    fn a_rejection_polled_again_is_a_500() {
        let (keyring, _, _, _) = setup();
        let layer = Require::scope(keyring, Resource::Agents, Access::Write);
        let mut svc = layer.layer(Echo);
        let mut future = core::pin::pin!(svc.call(Request::new(())));
        let mut cx = Context::from_waker(core::task::Waker::noop());
        let Poll::Ready(Ok(first)) = future.as_mut().poll(&mut cx) else {
            panic!("a rejection is ready at once");
        };
        assert_eq!(first.status(), 401);
        let Poll::Ready(Ok(second)) = future.as_mut().poll(&mut cx) else {
            panic!("a rejection is ready at once");
        };
        assert_eq!(second.status(), 500);
    }

    #[test]
    fn references_authenticate_like_their_target() {
        let (keyring, standard, _, _) = setup();
        let mut headers = HeaderMap::new();
        headers.insert(
            AUTHORIZATION,
            HeaderValue::from_str(&format!("Bearer {standard}")).unwrap(),
        );
        let by_ref: &RwLock<Keyring> = &keyring;
        let p = authenticate_headers(&by_ref, &headers, UnixMillis::from_millis(0)).unwrap();
        assert_eq!(p.id().as_str(), &standard[3..19]);
    }

    fn call_route(
        layer: &Require<Arc<RwLock<Keyring>>, Arc<RouteTable>>,
        method: &str,
        uri: &str,
        auth: Option<&str>,
    ) -> Response<String> {
        let mut svc = layer.layer(Echo);
        let mut req = Request::builder().method(method).uri(uri).body(()).unwrap();
        if let Some(a) = auth {
            req.headers_mut()
                .insert(AUTHORIZATION, HeaderValue::from_str(a).unwrap());
        }
        match block_on(svc.call(req)) {
            Ok(r) => r,
            Err(e) => match e {},
        }
    }

    #[test]
    fn route_layer_statuses() {
        let (keyring, standard, reader, expired) = setup();
        let table: RouteTable = "GET  /v1/devboxes/**  devboxes:read\n\
                                 POST /v1/devboxes/**  devboxes:write\n\
                                 GET  /healthz         public\n\
                                 *    /internal/**     deny"
            .parse()
            .unwrap();
        let layer =
            Require::new(keyring, Arc::new(table)).with_clock(|| UnixMillis::from_millis(100));
        let bearer = |t: &str| format!("Bearer {t}");

        // Allowed: the principal reaches the inner service and the response.
        for (method, token) in [("GET", &reader), ("POST", &standard), ("GET", &standard)] {
            let r = call_route(
                &layer,
                method,
                "/v1/devboxes/dbx_1/logs?x=1",
                Some(&bearer(token)),
            );
            assert_eq!(r.status(), 200, "{method}");
            assert_eq!(r.body(), &token[3..19]);
            assert!(r.extensions().get::<Principal>().is_some());
        }
        // 403: the reader may not write.
        let r = call_route(
            &layer,
            "POST",
            "/v1/devboxes/dbx_1/execute",
            Some(&bearer(&reader)),
        );
        assert_eq!(r.status(), 403);
        assert_eq!(r.headers()[WWW_AUTHENTICATE], INSUFFICIENT_SCOPE_CHALLENGE);
        // 403: deny and unmatched, even for a standard key and without one.
        for (uri, auth) in [
            ("/internal/x", Some(bearer(&standard))),
            ("/internal/x", None),
            ("/v2/other", Some(bearer(&standard))),
        ] {
            let r = call_route(&layer, "GET", uri, auth.as_deref());
            assert_eq!(r.status(), 403, "{uri}");
            assert!(!r.body().contains(&standard[20..]));
            assert!(matches!(
                r.extensions().get::<Rejection>(),
                Some(Rejection::Denied { .. } | Rejection::Unmatched)
            ));
        }
        // 401: missing, not bearer, expired.
        for auth in [None, Some(String::from("Basic x")), Some(bearer(&expired))] {
            let r = call_route(&layer, "GET", "/v1/devboxes", auth.as_deref());
            assert_eq!(r.status(), 401, "{auth:?}");
            assert_eq!(r.headers()[WWW_AUTHENTICATE], INVALID_TOKEN_CHALLENGE);
        }
        // public: no key needed, none recorded; a bad header is ignored.
        for auth in [None, Some(String::from("Basic x"))] {
            let r = call_route(&layer, "GET", "/healthz", auth.as_deref());
            assert_eq!(r.status(), 200);
            assert_eq!(r.body(), "");
            assert!(r.extensions().get::<Principal>().is_none());
        }
        // 400: path confusion never reaches the inner service.
        for uri in [
            "/v1/devboxes/..%2F..%2Finternal/x",
            "/v1/devboxes/%2e%2e/%2e%2e/internal",
            "/v1//devboxes",
            "/v1/devboxes;jsessionid=1",
        ] {
            let r = call_route(&layer, "GET", uri, Some(&bearer(&standard)));
            assert_eq!(r.status(), 400, "{uri}");
            assert_eq!(r.headers()[WWW_AUTHENTICATE], INVALID_REQUEST_CHALLENGE);
            assert_eq!(r.headers()[CONTENT_TYPE], PROBLEM_JSON);
        }
    }

    #[test]
    fn the_layer_enforces_limits_at_the_routes_cost() {
        use crate::limit::{Credits, KeyLimits, RateLimit};
        let (keyring, standard, reader, _) = setup();
        let reader_id = crate::token::Token::parse(reader.as_str())
            .unwrap()
            .key_id();
        let mut limiter = Limiter::new();
        limiter.configure(
            reader_id,
            UnixMillis::EPOCH,
            KeyLimits {
                rate: Some(RateLimit::new(100, core::time::Duration::from_secs(60)).unwrap()),
                credits: Some(Credits::new(7, None).unwrap()),
            },
        );
        let table: RouteTable =
            "GET /v1/devboxes/** devboxes:read cost=3\nGET /v1/cheap devboxes:read"
                .parse()
                .unwrap();
        let layer = Require::new(keyring, Arc::new(table))
            .with_limits(Arc::new(RwLock::new(limiter)))
            .with_clock(|| UnixMillis::from_millis(1_000));
        let run = |path: &str, token: &str| {
            let mut svc = layer.layer(Echo);
            let mut req = Request::builder().uri(path).body(()).unwrap();
            req.headers_mut().insert(
                AUTHORIZATION,
                HeaderValue::from_str(&format!("Bearer {token}")).unwrap(),
            );
            match block_on(svc.call(req)) {
                Ok(r) => r,
                Err(e) => match e {},
            }
        };
        let ok = run("/v1/devboxes/a", &reader);
        assert_eq!(ok.status(), 200);
        assert_eq!(ok.headers()["keygate-credits-remaining"], "4");
        assert_eq!(ok.headers()["ratelimit-policy"], "\"rate\";q=100;w=60");
        assert_eq!(
            run("/v1/devboxes/b", &reader).headers()["keygate-credits-remaining"],
            "1"
        );
        let refused = run("/v1/devboxes/c", &reader);
        assert_eq!(refused.status(), 429);
        assert!(refused.body().contains(CREDITS_EXHAUSTED_TYPE));
        assert!(refused.extensions().get::<Principal>().is_some());
        assert_eq!(run("/v1/cheap", &reader).status(), 200);
        assert_eq!(run("/v1/cheap", &reader).status(), 429);
        // An unlimited key carries no limit fields.
        let free = run("/v1/devboxes/a", &standard);
        assert_eq!(free.status(), 200);
        assert!(free.headers().get("ratelimit").is_none());
    }

    #[test]
    fn a_fixed_scope_charges_one_credit_a_request() {
        use crate::limit::{Credits, KeyLimits};
        let (keyring, _, reader, _) = setup();
        let reader_id = crate::token::Token::parse(reader.as_str())
            .unwrap()
            .key_id();
        let mut limiter = Limiter::new();
        limiter.configure(
            reader_id,
            UnixMillis::EPOCH,
            KeyLimits {
                rate: None,
                credits: Some(Credits::new(2, None).unwrap()),
            },
        );
        let layer = Require::scope(keyring, Resource::Devboxes, Access::Read)
            .with_limits(Arc::new(limiter))
            .with_clock(|| UnixMillis::from_millis(1_000));
        let run = || {
            let mut svc = layer.layer(Echo);
            let mut req = Request::new(());
            req.headers_mut().insert(
                AUTHORIZATION,
                HeaderValue::from_str(&format!("Bearer {reader}")).unwrap(),
            );
            match block_on(svc.call(req)) {
                Ok(r) => r,
                Err(e) => match e {},
            }
        };
        for left in ["1", "0"] {
            let ok = run();
            assert_eq!(ok.status(), 200);
            assert_eq!(ok.headers()["keygate-credits-remaining"], left);
        }
        assert_eq!(run().status(), 429);
    }

    #[test]
    fn limit_fields_never_promise_more_than_the_limit() {
        for (limit, period_ms, policy) in [
            (1, 1_500, r#""rate";q=1;w=2"#),
            (10, 2_500, r#""rate";q=12;w=3"#),
            (100, 1_000, r#""rate";q=100;w=1"#),
            (5, 250, r#""rate";q=20;w=1"#),
        ] {
            let id = crate::token::KeyId::parse("0000000000000003").unwrap();
            let mut l = Limiter::new();
            let rate =
                crate::limit::RateLimit::new(limit, core::time::Duration::from_millis(period_ms))
                    .unwrap();
            l.configure(
                id,
                UnixMillis::EPOCH,
                crate::limit::KeyLimits {
                    rate: Some(rate),
                    credits: None,
                },
            );
            let v = l.check(&id, UnixMillis::from_millis(1_000_000), 1);
            let mut headers = http::HeaderMap::new();
            insert_limit_headers(&mut headers, &v);
            assert_eq!(headers["ratelimit-policy"], policy);
            let r: u32 = headers["ratelimit"]
                .to_str()
                .unwrap()
                .split(";r=")
                .nth(1)
                .unwrap()
                .split(';')
                .next()
                .unwrap()
                .parse()
                .unwrap();
            let q: u32 = policy
                .split(";q=")
                .nth(1)
                .unwrap()
                .split(';')
                .next()
                .unwrap()
                .parse()
                .unwrap();
            assert!(r <= q, "{limit}/{period_ms}: r={r} q={q}");
        }
    }
}
