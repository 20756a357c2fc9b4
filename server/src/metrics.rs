//! The server's metrics, as `serve --metrics-listen` exposes them: counters
//! and histograms kept in atomics, so a request pays a few relaxed atomic
//! adds and takes no lock.
//!
//! This module is a leaf: the layers above record into it through the free
//! functions below, each a no-op until [`install`] ran (metrics off costs a
//! load and a branch). `http::metrics` reads it, with the keyring and the
//! store, and encodes the exposition with `prometheus-client`.

pub mod histogram;

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::OnceLock;
use std::time::Duration;

use keygate::KeyId;

pub use histogram::Histogram;

/// The metrics of this process, once [`install`]ed.
static METRICS: OnceLock<Metrics> = OnceLock::new();

/// Turns metrics on for this process (at most once; later calls return the
/// first). `per_key`: also count decisions per key id (`--metrics-per-key`).
pub fn install(build: Build, per_key: bool) -> &'static Metrics {
    METRICS.get_or_init(|| Metrics::new(build, per_key))
}

/// The metrics, when on.
#[inline]
pub fn get() -> Option<&'static Metrics> {
    METRICS.get()
}

/// What the build info metric says of this process.
#[derive(Debug, Clone)]
pub struct Build {
    /// `sqlite` or `postgres`.
    pub store: &'static str,
    /// Whether minting uses the attenuating policy.
    pub attenuate: bool,
}

/// Every metric this process keeps itself (gauges read from the keyring and
/// the store at scrape time are not here).
#[derive(Debug)]
pub struct Metrics {
    /// The build info.
    pub build: Build,
    /// `/v1/authorize` answers by [`Decision`].
    pub decisions: [AtomicU64; Decision::ALL.len()],
    /// The time `/v1/authorize` took to decide, in the server.
    pub authorize_latency: Histogram,
    /// Requests by route (index into [`ROUTES`]) and status class (1xx to 5xx).
    pub requests: [[AtomicU64; 5]; ROUTES.len()],
    /// Connections open now.
    pub connections_open: AtomicI64,
    /// Times the listener reached the connection cap and stopped accepting.
    pub connections_at_cap: AtomicU64,
    /// Connections closed, by [`Closed`].
    pub connections_closed: [AtomicU64; Closed::ALL.len()],
    /// Requests whose answer was never produced (the client reset the
    /// stream or closed the connection), by protocol: h1, h2.
    pub requests_abandoned: [AtomicU64; 2],
    /// The follower.
    pub follower: Follower,
    /// Store errors, by [`StoreSource`].
    pub store_errors: [AtomicU64; StoreSource::ALL.len()],
    /// Flushes of last-used times and usage counts, by [`FlushKind`].
    pub flushes: [Flush; FlushKind::ALL.len()],
    /// Route table reloads: succeeded, failed.
    pub route_reloads: [AtomicU64; 2],
    /// Decisions per key id, with `--metrics-per-key`.
    pub per_key: Option<papaya::HashMap<KeyId, [AtomicU64; Decision::ALL.len()]>>,
}

impl Metrics {
    fn new(build: Build, per_key: bool) -> Metrics {
        Metrics {
            build,
            decisions: Default::default(),
            authorize_latency: Histogram::new(histogram::AUTHORIZE_BOUNDS),
            requests: Default::default(),
            connections_open: AtomicI64::new(0),
            connections_at_cap: AtomicU64::new(0),
            connections_closed: Default::default(),
            requests_abandoned: Default::default(),
            follower: Follower::default(),
            store_errors: Default::default(),
            flushes: [(); FlushKind::ALL.len()].map(|()| Flush::default()),
            route_reloads: Default::default(),
            per_key: per_key.then(papaya::HashMap::new),
        }
    }
}

/// The follower's progress.
#[derive(Debug, Default)]
pub struct Follower {
    /// The last sequence number applied to the keyring.
    pub applied_seq: AtomicU64,
    /// When a change was last applied (Unix ms; 0: none yet).
    pub last_applied_ms: AtomicI64,
    /// When the follower last read the log to its end (Unix ms; 0: never).
    pub caught_up_ms: AtomicI64,
    /// Reads of the change log that failed.
    pub errors: AtomicU64,
}

/// One kind of flush's figures.
#[derive(Debug)]
pub struct Flush {
    /// Flushes that wrote something.
    pub count: AtomicU64,
    /// Flushes the store refused (their rows stay in memory for the next).
    pub failures: AtomicU64,
    /// How long the writes took.
    pub duration: Histogram,
}

impl Default for Flush {
    fn default() -> Flush {
        Flush {
            count: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            duration: Histogram::new(histogram::STORE_BOUNDS),
        }
    }
}

/// How `/v1/authorize` answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// 204.
    Allowed,
    /// 400: a bad query or forwarded request.
    BadRequest,
    /// 401: no key, or one that does not authenticate.
    Unauthorized,
    /// 403: the key lacks the scope.
    Forbidden,
    /// 429: rate limited or out of credits.
    Limited,
    /// Anything else (a 5xx).
    Other,
}

impl Decision {
    /// Every decision, in label order.
    pub const ALL: [Decision; 6] = [
        Decision::Allowed,
        Decision::BadRequest,
        Decision::Unauthorized,
        Decision::Forbidden,
        Decision::Limited,
        Decision::Other,
    ];

    /// The decision an answer's status is.
    #[inline]
    pub fn of(status: u16) -> Decision {
        match status {
            200..=299 => Decision::Allowed,
            400 => Decision::BadRequest,
            401 => Decision::Unauthorized,
            403 => Decision::Forbidden,
            429 => Decision::Limited,
            _ => Decision::Other,
        }
    }

    /// The `outcome` label.
    pub fn label(self) -> &'static str {
        match self {
            Decision::Allowed => "allowed",
            Decision::BadRequest => "bad_request",
            Decision::Unauthorized => "unauthorized",
            Decision::Forbidden => "forbidden",
            Decision::Limited => "limited",
            Decision::Other => "other",
        }
    }
}

/// [`ROUTES`]' index of `/v1/authorize`.
const AUTHORIZE: usize = 0;

/// The routes, as the router names them; the last is every request that
/// matched none. A fixed list keeps the `route` label's values bounded
/// whatever paths clients send.
pub const ROUTES: [&str; 16] = [
    "/v1/authorize",
    "/v1/apikeys",
    "/v1/restricted_keys",
    "/v1/keys",
    "/v1/keys/{id}",
    "/v1/keys/{id}/usage",
    "/v1/keys/{id}/roll",
    "/v1/keys/{id}/credits",
    "/v1/keys/revoke",
    "/v1/events",
    "/v1/whoami",
    "/healthz",
    "/readyz",
    "/openapi.yaml",
    "/console",
    "unmatched",
];

/// The index in [`ROUTES`] of the route that serves `path` (the last:
/// none). The router's patterns, matched by segment: what axum's
/// `MatchedPath` would say, without its cost on every request.
fn route_index(path: &str) -> usize {
    let unmatched = ROUTES.len() - 1;
    let mut segments = path.strip_prefix('/').unwrap_or("\0").split('/');
    let pattern = match (
        segments.next(),
        segments.next(),
        segments.next(),
        segments.next(),
    ) {
        (Some("v1"), Some("keys"), None, _) => "/v1/keys",
        // An empty id matches no route.
        (Some("v1"), Some("keys"), Some(""), _) => return unmatched,
        (Some("v1"), Some("keys"), Some("revoke"), None) => "/v1/keys/revoke",
        (Some("v1"), Some("keys"), Some(_), None) => "/v1/keys/{id}",
        (Some("v1"), Some("keys"), Some(_), Some(tail)) if segments.next().is_none() => {
            match tail {
                "usage" => "/v1/keys/{id}/usage",
                "roll" => "/v1/keys/{id}/roll",
                "credits" => "/v1/keys/{id}/credits",
                _ => return unmatched,
            }
        }
        // The console's page and assets (`serve --console`), one label.
        (Some("console"), _, _, _) => "/console",
        _ => path,
    };
    ROUTES
        .iter()
        .position(|r| *r == pattern)
        .unwrap_or(unmatched)
}

/// Why a connection closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Closed {
    /// The peer closed it, or it finished (HTTP/1.1 `Connection: close`).
    Ended,
    /// A protocol or I/O error (HTTP/2: including `GOAWAY` for too many resets).
    Error,
    /// No request head within the header read timeout.
    HeaderReadTimeout,
    /// Idle past the idle timeout (or, HTTP/1.1, the next head too slow).
    IdleTimeout,
    /// Still open when the drain after shutdown ended.
    DrainTimeout,
}

impl Closed {
    /// Every reason, in label order.
    pub const ALL: [Closed; 5] = [
        Closed::Ended,
        Closed::Error,
        Closed::HeaderReadTimeout,
        Closed::IdleTimeout,
        Closed::DrainTimeout,
    ];

    /// The `reason` label.
    pub fn label(self) -> &'static str {
        match self {
            Closed::Ended => "ended",
            Closed::Error => "error",
            Closed::HeaderReadTimeout => "header_read_timeout",
            Closed::IdleTimeout => "idle_timeout",
            Closed::DrainTimeout => "drain_timeout",
        }
    }
}

/// Where a store error surfaced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreSource {
    /// A request's read or write (answered 5xx).
    Request,
    /// The follower's read of the change log.
    Follower,
    /// A flush of last-used times or usage counts, or a retention pass.
    Flush,
    /// Credit leases (lease, renew, return).
    Credits,
    /// The rate-limit demand exchange.
    Shares,
}

impl StoreSource {
    /// Every source, in label order.
    pub const ALL: [StoreSource; 5] = [
        StoreSource::Request,
        StoreSource::Follower,
        StoreSource::Flush,
        StoreSource::Credits,
        StoreSource::Shares,
    ];

    /// The `source` label.
    pub fn label(self) -> &'static str {
        match self {
            StoreSource::Request => "request",
            StoreSource::Follower => "follower",
            StoreSource::Flush => "flush",
            StoreSource::Credits => "credits",
            StoreSource::Shares => "shares",
        }
    }
}

/// What a flush writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlushKind {
    /// `last_used_at_ms`.
    LastUsed,
    /// The per-minute usage counts.
    Usage,
}

impl FlushKind {
    /// Every kind, in label order.
    pub const ALL: [FlushKind; 2] = [FlushKind::LastUsed, FlushKind::Usage];

    /// The `kind` label.
    pub fn label(self) -> &'static str {
        match self {
            FlushKind::LastUsed => "last_used",
            FlushKind::Usage => "usage",
        }
    }
}

/// Counts a request for `path` answered with `status` after `took`; for
/// `/v1/authorize`, its decision and its time too, and with
/// `--metrics-per-key` the decision for the key `key` names.
#[inline]
pub fn request(path: &str, status: u16, took: Duration, key: impl FnOnce() -> Option<KeyId>) {
    let Some(m) = get() else { return };
    let route = route_index(path);
    let class = usize::from((status / 100).clamp(1, 5) - 1);
    if let Some(counter) = m
        .requests
        .get(route)
        .and_then(|by_class| by_class.get(class))
    {
        counter.fetch_add(1, Relaxed);
    }
    if route != AUTHORIZE {
        return;
    }
    let decision = Decision::of(status) as usize;
    m.authorize_latency.observe(took);
    if let Some(counter) = m.decisions.get(decision) {
        counter.fetch_add(1, Relaxed);
    }
    if let (Some(per_key), Some(id)) = (&m.per_key, key()) {
        let map = per_key.pin();
        let counters = map.get_or_insert_with(id, Default::default);
        if let Some(counter) = counters.get(decision) {
            counter.fetch_add(1, Relaxed);
        }
    }
}

/// Counts a connection opened.
#[inline]
pub fn connection_opened() {
    if let Some(m) = get() {
        m.connections_open.fetch_add(1, Relaxed);
    }
}

/// Counts a connection closed, and why.
pub fn connection_closed(why: Closed) {
    if let Some(m) = get() {
        m.connections_open.fetch_sub(1, Relaxed);
        add(&m.connections_closed, why as usize);
    }
}

/// Counts the listener reaching its connection cap.
pub fn connections_at_cap() {
    if let Some(m) = get() {
        m.connections_at_cap.fetch_add(1, Relaxed);
    }
}

/// Counts a request abandoned before its answer (`h2`: a reset stream).
pub fn request_abandoned(h2: bool) {
    if let Some(m) = get() {
        add(&m.requests_abandoned, usize::from(h2));
    }
}

/// Counts a store error surfaced at `source`.
pub fn store_error(source: StoreSource) {
    if let Some(m) = get() {
        add(&m.store_errors, source as usize);
    }
}

/// Notes the follower's read of the log at `now_ms`: `applied` is its
/// cursor after the read, `changed` whether it applied anything, and
/// `caught_up` whether it read to the end.
pub fn follower_read(applied: u64, changed: bool, caught_up: bool, now_ms: i64) {
    if let Some(m) = get() {
        let f = &m.follower;
        f.applied_seq.store(applied, Relaxed);
        if changed {
            f.last_applied_ms.store(now_ms, Relaxed);
        }
        if caught_up {
            f.caught_up_ms.store(now_ms, Relaxed);
        }
    }
}

/// Counts a failed read of the change log.
pub fn follower_error() {
    if let Some(m) = get() {
        m.follower.errors.fetch_add(1, Relaxed);
    }
    store_error(StoreSource::Follower);
}

/// Counts a flush of `kind` that took `took` and succeeded or not.
pub fn flushed(kind: FlushKind, took: Duration, ok: bool) {
    if let Some(m) = get() {
        if let Some(flush) = m.flushes.get(kind as usize) {
            flush.count.fetch_add(1, Relaxed);
            flush.duration.observe(took);
            if !ok {
                flush.failures.fetch_add(1, Relaxed);
            }
        }
    }
    if !ok {
        store_error(StoreSource::Flush);
    }
}

/// Counts a route table reload that succeeded or not.
pub fn route_reload(ok: bool) {
    if let Some(m) = get() {
        add(&m.route_reloads, usize::from(!ok));
    }
}

fn add(counters: &[AtomicU64], at: usize) {
    if let Some(counter) = counters.get(at) {
        counter.fetch_add(1, Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_map_to_decisions() {
        assert_eq!(Decision::of(204), Decision::Allowed);
        assert_eq!(Decision::of(400), Decision::BadRequest);
        assert_eq!(Decision::of(401), Decision::Unauthorized);
        assert_eq!(Decision::of(403), Decision::Forbidden);
        assert_eq!(Decision::of(429), Decision::Limited);
        assert_eq!(Decision::of(503), Decision::Other);
        for (i, d) in Decision::ALL.iter().enumerate() {
            assert_eq!(*d as usize, i, "ALL is in discriminant order");
        }
        for (i, c) in Closed::ALL.iter().enumerate() {
            assert_eq!(*c as usize, i);
        }
        for (i, s) in StoreSource::ALL.iter().enumerate() {
            assert_eq!(*s as usize, i);
        }
        for (i, k) in FlushKind::ALL.iter().enumerate() {
            assert_eq!(*k as usize, i);
        }
    }

    #[test]
    fn paths_map_to_their_routes_and_the_rest_to_unmatched() {
        assert_eq!(ROUTES[AUTHORIZE], "/v1/authorize");
        let route = |path| ROUTES[route_index(path)];
        assert_eq!(route("/v1/authorize"), "/v1/authorize");
        assert_eq!(route("/v1/keys"), "/v1/keys");
        assert_eq!(route("/v1/keys/abc"), "/v1/keys/{id}");
        assert_eq!(route("/v1/keys/revoke"), "/v1/keys/revoke");
        assert_eq!(route("/v1/keys/abc/roll"), "/v1/keys/{id}/roll");
        assert_eq!(route("/v1/keys/abc/usage"), "/v1/keys/{id}/usage");
        assert_eq!(route("/v1/keys/abc/credits"), "/v1/keys/{id}/credits");
        assert_eq!(route("/healthz"), "/healthz");
        assert_eq!(route("/console"), "/console");
        assert_eq!(route("/v1/whoami"), "/v1/whoami");
        assert_eq!(route("/console/assets/app.js"), "/console");
        for path in [
            "",
            "/",
            "/v1/keys/abc/other",
            "/v1/keys/abc/roll/x",
            "/v1/authorize/x",
            "/{id}",
            "/v1/keys/",
            "/v1/keys//roll",
            "unmatched",
        ] {
            assert_eq!(route(path), "unmatched", "{path}");
        }
    }
}
