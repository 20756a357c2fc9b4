//! `GET /metrics` on its own listener (`serve --metrics-listen`): the
//! counters of `crate::metrics`, and gauges read at scrape time from the
//! keyring, the follower and the store, in the Prometheus text format
//! (encoded by `prometheus-client`).

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric as _, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};

use crate::clock::now_ms;
use crate::metrics::{Closed, Decision, FlushKind, Metrics, StoreSource, ROUTES};
use crate::store::PoolStatus;
use crate::sync::Keys;

/// How long a scrape waits for the store's head of the log.
const HEAD_TIMEOUT: Duration = Duration::from_secs(1);

/// The most connections the metrics listener serves at once: a scraper or
/// two, and an operator's curl.
pub const MAX_CONNECTIONS: u32 = 16;

/// Serves `GET /metrics` on `listener` until `shutdown` resolves, with the
/// API's header read and idle timeouts and [`MAX_CONNECTIONS`]; drains as the
/// API's listener does.
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: &'static Metrics,
    keys: Arc<Keys>,
    limits: &crate::http::listen::Args,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let router = Router::new()
        .route("/metrics", get(scrape))
        .with_state((metrics, keys));
    let limits = crate::http::listen::Args {
        max_connections: MAX_CONNECTIONS,
        ..limits.clone()
    };
    crate::http::listen::serve(listener, router, &limits, false, shutdown).await;
}

async fn scrape(State((metrics, keys)): State<(&'static Metrics, Arc<Keys>)>) -> Response {
    let head = match tokio::time::timeout(HEAD_TIMEOUT, keys.store().head_seq()).await {
        Ok(Ok(seq)) => Some(seq),
        _ => None,
    };
    let body = encode(metrics, &keys, head, now_ms());
    match body {
        Ok(text) => {
            let mut response = Response::new(Body::from(text));
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static(
                    prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
                ),
            );
            response
        }
        Err(_) => {
            let mut response = Response::new(Body::empty());
            *response.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
            response
        }
    }
}

/// The exposition text: every metric, with the store's head of the log
/// `head` (`None`: the store did not answer) as of `now_ms`.
pub fn encode(
    metrics: &'static Metrics,
    keys: &Arc<Keys>,
    head: Option<u64>,
    now_ms: i64,
) -> Result<String, std::fmt::Error> {
    if let Some(per_key) = &metrics.per_key {
        // Keys gone from memory (revoked, removed, expired) leave the series.
        per_key.pin().retain(|id, _| keys.cache().contains(id));
    }
    let mut registry = Registry::with_prefix("keygate");
    registry.register_collector(Box::new(Scrape {
        metrics,
        keys: Arc::clone(keys),
        head,
        pool: keys.store().pool_status(),
        now_ms,
    }));
    let mut text = String::new();
    prometheus_client::encoding::prometheus_text::encode(&mut text, &registry)?;
    Ok(text)
}

/// One scrape's view.
struct Scrape {
    metrics: &'static Metrics,
    keys: Arc<Keys>,
    head: Option<u64>,
    pool: Option<PoolStatus>,
    now_ms: i64,
}

impl std::fmt::Debug for Scrape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scrape").finish_non_exhaustive()
    }
}

/// Seconds since `at_ms`, or `None` when it never happened (0).
fn age(now_ms: i64, at_ms: i64) -> Option<f64> {
    (at_ms > 0).then(|| (now_ms.saturating_sub(at_ms)).max(0) as f64 / 1e3)
}

fn one<T>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    kind: MetricType,
    value: T,
) -> Result<(), std::fmt::Error>
where
    T: Value,
{
    let metric = encoder.encode_descriptor(name, help, unit, kind)?;
    value.encode(metric)
}

fn family<'a, T: Value>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    kind: MetricType,
    rows: impl IntoIterator<Item = (&'a [(&'a str, &'a str)], T)>,
) -> Result<(), std::fmt::Error> {
    let mut metric = encoder.encode_descriptor(name, help, None, kind)?;
    for (labels, value) in rows {
        value.encode(metric.encode_family(&labels)?)?;
    }
    Ok(())
}

/// A counter or gauge value.
trait Value {
    fn encode(self, encoder: prometheus_client::encoding::MetricEncoder) -> std::fmt::Result;
}

/// A counter's value.
struct Count(u64);

impl Value for Count {
    fn encode(self, mut e: prometheus_client::encoding::MetricEncoder) -> std::fmt::Result {
        e.encode_counter::<NoLabelSet, _, u64>(&self.0, None)
    }
}

/// A gauge's value.
struct Level(f64);

impl Value for Level {
    fn encode(self, mut e: prometheus_client::encoding::MetricEncoder) -> std::fmt::Result {
        e.encode_gauge(&self.0)
    }
}

impl Collector for Scrape {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let m = self.metrics;
        let c = |a: &std::sync::atomic::AtomicU64| Count(a.load(Relaxed));
        let build = [
            ("version", env!("CARGO_PKG_VERSION")),
            ("store", m.build.store),
            (
                "attenuate",
                if m.build.attenuate { "true" } else { "false" },
            ),
        ];
        prometheus_client::metrics::info::Info::new(build.to_vec()).encode(
            e.encode_descriptor(
                "build",
                "The version, store and minting policy",
                None,
                MetricType::Info,
            )?,
        )?;

        let outcomes: Vec<[(&str, &str); 1]> = Decision::ALL
            .iter()
            .map(|d| [("outcome", d.label())])
            .collect();
        family(
            &mut e,
            "authorize_decisions",
            "Answers of /v1/authorize by outcome: allowed (204), bad_request (400), unauthorized (401), forbidden (403), limited (429), other",
            MetricType::Counter,
            outcomes.iter().zip(&m.decisions).map(|(l, n)| (&l[..], c(n))),
        )?;
        let (sum, count, buckets) = m.authorize_latency.snapshot();
        e.encode_descriptor(
            "authorize_duration",
            "The time the server takes to answer /v1/authorize, from the request head to the answer",
            Some(&Unit::Seconds),
            MetricType::Histogram,
        )?
        .encode_histogram::<NoLabelSet>(sum, count, &buckets, None)?;
        if let Some(per_key) = &m.per_key {
            let per_key = per_key.pin();
            let ids: Vec<(String, Vec<u64>)> = per_key
                .iter()
                .map(|(id, counts)| {
                    (
                        id.to_string(),
                        counts.iter().map(|n| n.load(Relaxed)).collect(),
                    )
                })
                .collect();
            let mut metric = e.encode_descriptor(
                "key_authorize_decisions",
                "Answers of /v1/authorize by key and outcome (--metrics-per-key)",
                None,
                MetricType::Counter,
            )?;
            for (id, counts) in &ids {
                for (d, n) in Decision::ALL.iter().zip(counts) {
                    let labels = [("key_id", id.as_str()), ("outcome", d.label())];
                    Count(*n).encode(metric.encode_family(&&labels[..])?)?;
                }
            }
        }

        let mut routes = Vec::new();
        for (route, by_class) in ROUTES.iter().zip(&m.requests) {
            for (class, n) in ["1xx", "2xx", "3xx", "4xx", "5xx"].iter().zip(by_class) {
                let n = n.load(Relaxed);
                // keygate answers no 1xx or 3xx of its own: shown only if seen.
                if n > 0 || matches!(*class, "2xx" | "4xx" | "5xx") {
                    routes.push(([("route", *route), ("status_class", *class)], n));
                }
            }
        }
        family(
            &mut e,
            "http_requests",
            "Requests by route and status class",
            MetricType::Counter,
            routes.iter().map(|(l, n)| (&l[..], Count(*n))),
        )?;

        let cache = self.keys.cache();
        one(
            &mut e,
            "keys",
            "Live keys in memory",
            None,
            MetricType::Gauge,
            Level(cache.len() as f64),
        )?;
        one(
            &mut e,
            "tombstones",
            "Revoked or removed key ids held in memory until the log passes them",
            None,
            MetricType::Gauge,
            Level(cache.tombstones() as f64),
        )?;

        let f = &m.follower;
        let applied = f.applied_seq.load(Relaxed);
        one(
            &mut e,
            "follower_applied_seq",
            "The last change log sequence number applied to the keyring",
            None,
            MetricType::Gauge,
            Level(applied as f64),
        )?;
        if let Some(head) = self.head {
            one(
                &mut e,
                "follower_store_seq",
                "The last sequence number in the store's change log, read at scrape",
                None,
                MetricType::Gauge,
                Level(head as f64),
            )?;
            one(
                &mut e,
                "follower_lag_seq",
                "Changes in the store not yet applied here",
                None,
                MetricType::Gauge,
                Level(head.saturating_sub(applied) as f64),
            )?;
        }
        if let Some(age) = age(self.now_ms, f.caught_up_ms.load(Relaxed)) {
            one(
                &mut e,
                "follower_caught_up_age",
                "Time since the follower last read the change log to its end",
                Some(&Unit::Seconds),
                MetricType::Gauge,
                Level(age),
            )?;
        }
        if let Some(age) = age(self.now_ms, f.last_applied_ms.load(Relaxed)) {
            one(
                &mut e,
                "follower_last_applied_age",
                "Time since the follower last applied a change",
                Some(&Unit::Seconds),
                MetricType::Gauge,
                Level(age),
            )?;
        }
        one(
            &mut e,
            "follower_errors",
            "Reads of the change log that failed",
            None,
            MetricType::Counter,
            c(&f.errors),
        )?;

        let sources: Vec<[(&str, &str); 1]> = StoreSource::ALL
            .iter()
            .map(|s| [("source", s.label())])
            .collect();
        family(
            &mut e,
            "store_errors",
            "Store errors by where they surfaced",
            MetricType::Counter,
            sources
                .iter()
                .zip(&m.store_errors)
                .map(|(l, n)| (&l[..], c(n))),
        )?;
        one(
            &mut e,
            "store_corrupt_rows",
            "Key rows or log entries the feed could not read (each treated as revoked)",
            None,
            MetricType::Counter,
            Count(self.keys.store().corrupt_rows()),
        )?;
        one(
            &mut e,
            "store_up",
            "Whether the store answered the follower's last read (1) or not (0)",
            None,
            MetricType::Gauge,
            Level(if self.keys.ready_flag().load(Relaxed) {
                1.0
            } else {
                0.0
            }),
        )?;
        if let Some(pool) = self.pool {
            let states = [
                ([("state", "in_use")], pool.in_use),
                ([("state", "idle")], pool.idle),
                ([("state", "waiting")], pool.waiting),
                ([("state", "max")], pool.max),
            ];
            family(
                &mut e,
                "store_pool_connections",
                "The PostgreSQL request pool: connections in use, idle, the most it opens, and tasks waiting for one",
                MetricType::Gauge,
                states.iter().map(|(l, n)| (&l[..], Level(*n as f64))),
            )?;
        }

        one(
            &mut e,
            "connections_open",
            "Connections open now",
            None,
            MetricType::Gauge,
            Level(m.connections_open.load(Relaxed) as f64),
        )?;
        one(
            &mut e,
            "connections_at_cap",
            "Times the listener reached --max-connections and stopped accepting (new connections wait in the listen backlog)",
            None,
            MetricType::Counter,
            c(&m.connections_at_cap),
        )?;
        let reasons: Vec<[(&str, &str); 1]> = Closed::ALL
            .iter()
            .map(|r| [("reason", r.label())])
            .collect();
        family(
            &mut e,
            "connections_closed",
            "Connections closed, by reason: ended, error, header_read_timeout, idle_timeout, drain_timeout",
            MetricType::Counter,
            reasons.iter().zip(&m.connections_closed).map(|(l, n)| (&l[..], c(n))),
        )?;
        let protocols = [[("protocol", "h1")], [("protocol", "h2")]];
        family(
            &mut e,
            "requests_abandoned",
            "Requests dropped before their answer: h2, the client reset the stream (RST_STREAM); h1, the connection was dropped with the request in flight",
            MetricType::Counter,
            protocols.iter().zip(&m.requests_abandoned).map(|(l, n)| (&l[..], c(n))),
        )?;

        let kinds: Vec<[(&str, &str); 1]> = FlushKind::ALL
            .iter()
            .map(|k| [("kind", k.label())])
            .collect();
        family(
            &mut e,
            "flushes",
            "Writes of last-used times and usage counts to the store",
            MetricType::Counter,
            kinds
                .iter()
                .zip(&m.flushes)
                .map(|(l, f)| (&l[..], c(&f.count))),
        )?;
        family(
            &mut e,
            "flush_failures",
            "Writes of last-used times and usage counts the store refused (kept for the next)",
            MetricType::Counter,
            kinds
                .iter()
                .zip(&m.flushes)
                .map(|(l, f)| (&l[..], c(&f.failures))),
        )?;
        let mut durations = e.encode_descriptor(
            "flush_duration",
            "The time a write of last-used times or usage counts took",
            Some(&Unit::Seconds),
            MetricType::Histogram,
        )?;
        for (labels, flush) in kinds.iter().zip(&m.flushes) {
            let (sum, count, buckets) = flush.duration.snapshot();
            durations
                .encode_family(&&labels[..])?
                .encode_histogram::<NoLabelSet>(sum, count, &buckets, None)?;
        }

        let results = [[("result", "ok")], [("result", "error")]];
        family(
            &mut e,
            "route_reloads",
            "Route table reloads at SIGHUP: ok, or error (the previous table stays)",
            MetricType::Counter,
            results
                .iter()
                .zip(&m.route_reloads)
                .map(|(l, n)| (&l[..], c(n))),
        )?;
        Ok(())
    }
}
