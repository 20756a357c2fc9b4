//! `GET /v1/keys/{id}/usage?from_ms=&to_ms=&bucket=minute|hour|day`: a
//! key's request counts by outcome, in buckets (a keygate extension). It
//! needs `account:read` and follows the rules of `GET /v1/keys/{id}`: the
//! caller checked in the store, under `--attenuate` only the caller's
//! subtree, and one 404 for an unknown, revoked or out-of-scope id, as
//! long for each.
//!
//! The counts are the store's (every instance's flushed counts) plus this
//! instance's not yet flushed, so a request shows at once on the instance
//! that answered it, and on the others after its next flush.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::Extension;
use keygate::tower::problem;
use keygate::Principal;
use serde::Serialize;

use crate::clock::now_ms;
use crate::http::extract::query_pairs;
use crate::http::keys::target;
use crate::http::problem::{bad_request, ok_json, quote, store_error, with_caller};
use crate::http::state::AppState;
use crate::store::{Bucket, UsageBucket, UsageCounts, UsageQuery, HOUR_MS, MAX_USAGE_MS};

/// The most buckets one answer holds: a week of minutes, 420 days of
/// hours, 27 years of days.
pub const MAX_BUCKETS: i64 = 10_080;

/// The range when neither end is given: the last 24 hours.
pub const DEFAULT_RANGE_MS: i64 = 24 * HOUR_MS;

/// The body of `GET /v1/keys/{id}/usage`.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct UsageView {
    /// The buckets with counts, by start.
    pub buckets: Vec<UsageBucket>,
}

/// The query of `GET /v1/keys/{id}/usage`, as given.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct UsageParams {
    /// The range's first millisecond; default `to_ms` less 24 hours.
    pub from_ms: Option<i64>,
    /// The range's last millisecond; default now.
    pub to_ms: Option<i64>,
    /// The bucket width; default an hour.
    pub bucket: Bucket,
}

fn parse_ms(value: &str, name: &str) -> Result<i64, String> {
    match value.parse::<i64>() {
        Ok(n) if (0..=MAX_USAGE_MS).contains(&n) && !value.starts_with('+') => Ok(n),
        _ => Err(format!(
            "`{name}` must be Unix milliseconds from 0 to {MAX_USAGE_MS}, not `{}`",
            quote(value)
        )),
    }
}

impl UsageParams {
    /// Parses `from_ms`, `to_ms` and `bucket`; anything else is an error.
    pub fn parse(query: Option<&str>) -> Result<UsageParams, String> {
        let mut out = UsageParams::default();
        for (key, value) in query_pairs(query, &["from_ms", "to_ms", "bucket"])? {
            match key.as_str() {
                "from_ms" => out.from_ms = Some(parse_ms(&value, "from_ms")?),
                "to_ms" => out.to_ms = Some(parse_ms(&value, "to_ms")?),
                _ => {
                    out.bucket = Bucket::from_name(&value).ok_or_else(|| {
                        format!(
                            "`bucket` must be `minute`, `hour` or `day`, not `{}`",
                            quote(&value)
                        )
                    })?;
                }
            }
        }
        Ok(out)
    }

    /// The range at `now_ms`, with the defaults filled in; an error if it
    /// runs backwards or spans more than [`MAX_BUCKETS`] buckets.
    pub fn resolve(&self, now_ms: i64) -> Result<UsageQuery, String> {
        for (name, value) in [("from_ms", self.from_ms), ("to_ms", self.to_ms)] {
            if let Some(v) = value.filter(|v| !(0..=MAX_USAGE_MS).contains(v)) {
                return Err(format!(
                    "`{name}` must be Unix milliseconds from 0 to {MAX_USAGE_MS}, not `{v}`"
                ));
            }
        }
        let to_ms = self.to_ms.unwrap_or(now_ms.clamp(0, MAX_USAGE_MS));
        let from_ms = self
            .from_ms
            .unwrap_or_else(|| to_ms.saturating_sub(DEFAULT_RANGE_MS).max(0));
        if from_ms > to_ms {
            return Err(format!("`from_ms` ({from_ms}) is after `to_ms` ({to_ms})"));
        }
        let query = UsageQuery {
            bucket: self.bucket,
            from_ms,
            to_ms,
        };
        let n = query.buckets();
        if n > MAX_BUCKETS {
            return Err(format!(
                "`from_ms` to `to_ms` spans {n} {} buckets, more than the limit of {MAX_BUCKETS} \
                 in one answer: narrow the range or use a wider `bucket`",
                self.bucket.as_str()
            ));
        }
        Ok(query)
    }
}

/// The stored buckets plus the minutes not yet flushed (by minute start)
/// that fall within the query's span, by start, empty ones left out.
pub fn merge_pending(
    stored: Vec<UsageBucket>,
    pending: &[(i64, UsageCounts)],
    query: &UsageQuery,
) -> Vec<UsageBucket> {
    let (start, end) = query.span();
    let mut buckets: BTreeMap<i64, UsageCounts> =
        stored.into_iter().map(|b| (b.start_ms, b.counts)).collect();
    for (minute_ms, counts) in pending {
        if (start..end).contains(minute_ms) {
            buckets
                .entry(query.bucket.floor(*minute_ms))
                .or_default()
                .add(counts);
        }
    }
    buckets
        .into_iter()
        .filter(|(_, counts)| !counts.is_zero())
        .map(|(start_ms, counts)| UsageBucket { start_ms, counts })
        .collect()
}

/// `GET /v1/keys/{id}/usage`: 200 with the key's buckets; 400 for a
/// malformed id or query, 404 as `GET /v1/keys/{id}` answers it.
pub async fn usage(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Principal>,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
) -> Response {
    let query = match UsageParams::parse(query.as_deref()).and_then(|p| p.resolve(now_ms())) {
        Ok(q) => q,
        Err(detail) => return with_caller(bad_request(&detail), caller),
    };
    let (id, scope) = match target(&state, &caller, &id).await {
        Ok(target) => target,
        Err(refused) => return refused,
    };
    // No flush between the store's counts and memory's: each count once.
    let _reading = state.counts().read_guard().await;
    match state.store().usage(id, scope, query).await {
        Ok(Some(usage)) if usage.revoked_at_ms.is_none() => {
            let pending = state.counts().pending(&id);
            let buckets = merge_pending(usage.buckets, &pending, &query);
            ok_json(StatusCode::OK, &UsageView { buckets }, caller)
        }
        Ok(_) => with_caller(problem(StatusCode::NOT_FOUND, "no such key"), caller),
        Err(e) => with_caller(store_error(&e, "cannot read the key's usage"), caller),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;
    use crate::store::{DAY_MS, MINUTE_MS};

    fn counts(allowed: u64, forbidden: u64) -> UsageCounts {
        UsageCounts {
            allowed,
            forbidden,
            ..UsageCounts::default()
        }
    }

    #[test]
    fn parse_and_resolve() {
        let now = 10 * DAY_MS + 5 * MINUTE_MS + 7;
        let q = UsageParams::parse(None).unwrap().resolve(now).unwrap();
        assert_eq!(
            q,
            UsageQuery {
                bucket: Bucket::Hour,
                from_ms: now - DEFAULT_RANGE_MS,
                to_ms: now
            }
        );
        assert_eq!(q.buckets(), 25);
        let q = UsageParams::parse(Some("from_ms=0&to_ms=59999&bucket=minute"))
            .unwrap()
            .resolve(now)
            .unwrap();
        assert_eq!((q.span(), q.buckets()), ((0, MINUTE_MS), 1));
        // Only `to_ms`: the 24 hours before it, never before 0.
        let q = UsageParams::parse(Some("to_ms=1000&bucket=day"))
            .unwrap()
            .resolve(now)
            .unwrap();
        assert_eq!((q.from_ms, q.to_ms, q.span()), (0, 1000, (0, DAY_MS)));
        // The limit: a week of minutes, exactly.
        let week = 7 * DAY_MS;
        assert!(
            UsageParams::parse(Some(&format!("from_ms=0&to_ms={}&bucket=minute", week - 1)))
                .unwrap()
                .resolve(now)
                .is_ok()
        );
        let e = UsageParams::parse(Some(&format!("from_ms=0&to_ms={week}&bucket=minute")))
            .unwrap()
            .resolve(now)
            .unwrap_err();
        assert!(e.contains("10081 minute buckets"), "{e}");
        assert!(e.contains("limit of 10080"), "{e}");
        let e = UsageParams::parse(Some("from_ms=5&to_ms=4"))
            .unwrap()
            .resolve(now)
            .unwrap_err();
        assert_eq!(e, "`from_ms` (5) is after `to_ms` (4)");
        // Only `from_ms`, in the future: after the default `to_ms`, now.
        assert!(UsageParams::parse(Some(&format!("from_ms={}", now + 1)))
            .unwrap()
            .resolve(now)
            .is_err());
        for (bad, names) in [
            ("from_ms=-1", "from_ms"),
            ("from_ms=+1", "from_ms"),
            ("from_ms=1.5", "from_ms"),
            ("to_ms=", "to_ms"),
            ("to_ms=253402300800000", "to_ms"),
            ("to_ms=99999999999999999999999", "to_ms"),
            ("bucket=week", "bucket"),
            ("bucket=Hour", "bucket"),
            ("bucket=hour&bucket=day", "bucket"),
            ("since=1", "since"),
        ] {
            let e = UsageParams::parse(Some(bad)).unwrap_err();
            assert!(e.contains(&format!("`{names}`")), "{bad}: {e}");
        }
        // Values made elsewhere (the CLI) are checked too.
        let e = UsageParams {
            to_ms: Some(MAX_USAGE_MS + 1),
            ..UsageParams::default()
        }
        .resolve(now)
        .unwrap_err();
        assert!(e.starts_with("`to_ms` must be"), "{e}");
        // A token pasted as a value is quoted redacted.
        let token = format!("ak_{}_{}", "a".repeat(16), "S".repeat(43));
        let e = UsageParams::parse(Some(&format!("bucket={token}"))).unwrap_err();
        assert!(!e.contains(&"S".repeat(20)), "{e}");
    }

    #[test]
    fn pending_minutes_join_their_buckets_within_the_span() {
        let query = UsageQuery {
            bucket: Bucket::Hour,
            from_ms: HOUR_MS + 1,
            to_ms: 2 * HOUR_MS + 1,
        };
        let stored = vec![UsageBucket {
            start_ms: HOUR_MS,
            counts: counts(2, 1),
        }];
        let pending = [
            (HOUR_MS + MINUTE_MS, counts(1, 0)),
            (2 * HOUR_MS + 59 * MINUTE_MS, counts(0, 3)),
            // Outside the span: before the first bucket, after the last.
            (HOUR_MS - MINUTE_MS, counts(7, 7)),
            (3 * HOUR_MS, counts(7, 7)),
            (2 * HOUR_MS, UsageCounts::default()),
        ];
        assert_eq!(
            merge_pending(stored, &pending, &query),
            vec![
                UsageBucket {
                    start_ms: HOUR_MS,
                    counts: counts(3, 1)
                },
                UsageBucket {
                    start_ms: 2 * HOUR_MS,
                    counts: counts(0, 3)
                },
            ]
        );
    }
}
