//! `keygate usage ID|TOKEN [--from TIME] [--to TIME] [--bucket B] [--json]`:
//! a key's request counts from the database, as a table (and, on a
//! terminal, a sparkline of the allowed requests), or as the JSON of
//! `GET /v1/keys/{id}/usage`.

use std::io::IsTerminal;
use std::time::UNIX_EPOCH;

use crate::cli::{open_store, parse_id, print_json, store_err, table, time, StoreArgs};
use crate::clock::now_ms as system_now_ms;
use crate::http::problem::quote;
use crate::http::usage::{UsageParams, UsageView};
use crate::store::{Bucket, Scope, UsageBucket, UsageQuery};

/// The widest sparkline, in characters: wider ranges sum several buckets
/// into one column.
const SPARK_WIDTH: i64 = 120;

/// The sparkline's levels, lowest first: the lowest is zero.
const LEVELS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];

/// Reads `--from` or `--to`: Unix milliseconds, an RFC 3339 UTC time, or a
/// duration before `now_ms`.
pub fn parse_time(text: &str, flag: &str, now_ms: i64) -> Result<i64, String> {
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        return text
            .parse::<i64>()
            .map_err(|_| format!("`{flag}` `{}` is out of range", quote(text)));
    }
    if let Ok(at) = humantime::parse_rfc3339(text) {
        return at
            .duration_since(UNIX_EPOCH)
            .ok()
            .and_then(|d| i64::try_from(d.as_millis()).ok())
            .ok_or_else(|| format!("`{flag}` `{}` is out of range", quote(text)));
    }
    match humantime::parse_duration(text) {
        Ok(ago) => Ok(i64::try_from(ago.as_millis())
            .ok()
            .and_then(|ago| now_ms.checked_sub(ago))
            .unwrap_or(i64::MIN)
            .max(0)),
        Err(_) => Err(format!(
            "invalid `{flag}` `{}`: expected Unix milliseconds, an RFC 3339 UTC time like \
             `2027-01-01T00:00:00Z`, or a duration before now like `7d` or `90m`",
            quote(text)
        )),
    }
}

/// The sparkline of the allowed requests over every bucket of `query`
/// (empty ones too), at most [`SPARK_WIDTH`] columns: a column sums
/// `per_column` buckets. Zero is the lowest level, and any count above zero
/// shows above it.
pub fn sparkline(buckets: &[UsageBucket], query: &UsageQuery) -> (String, i64) {
    let (start, _) = query.span();
    let width = query.bucket.ms();
    let total = query.buckets().max(1);
    let per_column = (total + SPARK_WIDTH - 1) / SPARK_WIDTH;
    let columns = usize::try_from((total + per_column - 1) / per_column).unwrap_or(0);
    let mut sums = vec![0u64; columns];
    for b in buckets {
        let column = usize::try_from((b.start_ms - start) / width / per_column).ok();
        if let Some(sum) = column.and_then(|c| sums.get_mut(c)) {
            *sum = sum.saturating_add(b.counts.allowed);
        }
    }
    let max = sums.iter().copied().max().unwrap_or(0);
    let top = LEVELS.len() as u64 - 1;
    let line = sums
        .iter()
        .map(|&n| {
            let level = if n == 0 || max == 0 {
                0
            } else {
                // 1..=top, in proportion to the largest column.
                1 + (u128::from(n) * u128::from(top - 1) / u128::from(max)) as u64
            };
            LEVELS
                .get(usize::try_from(level).unwrap_or(0))
                .copied()
                .unwrap_or(' ')
        })
        .collect();
    (line, per_column)
}

/// `keygate usage`.
pub async fn run(
    args: &StoreArgs,
    id: &str,
    from: Option<&str>,
    to: Option<&str>,
    bucket: Bucket,
    json: bool,
) -> Result<(), String> {
    let id = parse_id(id)?;
    let now = system_now_ms();
    let params = UsageParams {
        from_ms: from.map(|t| parse_time(t, "--from", now)).transpose()?,
        to_ms: to.map(|t| parse_time(t, "--to", now)).transpose()?,
        bucket,
    };
    let query = params.resolve(now).map_err(|e| {
        e.replace("`from_ms`", "`--from`")
            .replace("`to_ms`", "`--to`")
            .replace("`bucket`", "`--bucket`")
    })?;
    let (store, _pepper) = open_store(args).await?;
    let usage = store
        .usage(id, Scope::All, query)
        .await
        .map_err(store_err)?
        .ok_or_else(|| format!("no key `{id}`"))?;
    if let Some(at) = usage.revoked_at_ms {
        eprintln!("key {id} was revoked at {}", time(at));
    }
    if json {
        return print_json(&UsageView {
            buckets: usage.buckets,
        });
    }
    let rows: Vec<Vec<String>> = usage
        .buckets
        .iter()
        .map(|b| {
            let c = &b.counts;
            vec![
                time(b.start_ms),
                c.allowed.to_string(),
                c.forbidden.to_string(),
                c.rate_limited.to_string(),
                c.credits_exhausted.to_string(),
            ]
        })
        .collect();
    print!(
        "{}",
        table(
            &[
                "START",
                "ALLOWED",
                "FORBIDDEN",
                "RATE LIMITED",
                "CREDITS EXHAUSTED"
            ],
            &rows
        )
    );
    if std::io::stdout().is_terminal() {
        let (line, per_column) = sparkline(&usage.buckets, &query);
        let (start, end) = query.span();
        let unit = match per_column {
            1 => format!("per {}", bucket.as_str()),
            n => format!("per {n} {}s", bucket.as_str()),
        };
        println!("allowed {unit}, {} to {}: {line}", time(start), time(end));
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::store::{UsageCounts, DAY_MS, HOUR_MS, MINUTE_MS};

    #[test]
    fn times() {
        let now = 10 * DAY_MS;
        assert_eq!(parse_time("12345", "--from", now), Ok(12_345));
        assert_eq!(
            parse_time("1970-01-02T00:00:00Z", "--from", now),
            Ok(DAY_MS)
        );
        assert_eq!(parse_time("7d", "--from", now), Ok(3 * DAY_MS));
        assert_eq!(parse_time("90m", "--to", now), Ok(now - 90 * MINUTE_MS));
        assert_eq!(parse_time("20d", "--from", now), Ok(0));
        for bad in ["", "yesterday", "-5", "1.5", "99999999999999999999"] {
            let e = parse_time(bad, "--from", now).unwrap_err();
            assert!(e.contains("`--from`"), "{bad}: {e}");
        }
        let token = format!("rk_{}_{}", "b".repeat(16), "Z".repeat(43));
        let e = parse_time(&token, "--to", now).unwrap_err();
        assert!(!e.contains(&"Z".repeat(20)), "{e}");
    }

    fn allowed(start_ms: i64, n: u64) -> UsageBucket {
        UsageBucket {
            start_ms,
            counts: UsageCounts {
                allowed: n,
                forbidden: 99,
                ..UsageCounts::default()
            },
        }
    }

    #[test]
    fn sparklines() {
        let query = UsageQuery {
            bucket: Bucket::Hour,
            from_ms: 0,
            to_ms: 5 * HOUR_MS,
        };
        let (line, per) = sparkline(
            &[
                allowed(0, 1),
                allowed(2 * HOUR_MS, 70),
                allowed(5 * HOUR_MS, 35),
            ],
            &query,
        );
        assert_eq!((line.as_str(), per), ("▂▁█▁▁▅", 1));
        // Nothing counted: a flat line.
        let (line, _) = sparkline(&[], &query);
        assert_eq!(line, "▁▁▁▁▁▁");
        // A week of minutes: 84 minutes a column, 120 columns.
        let week = UsageQuery {
            bucket: Bucket::Minute,
            from_ms: 0,
            to_ms: 7 * DAY_MS - 1,
        };
        let (line, per) = sparkline(
            &[allowed(83 * MINUTE_MS, 1), allowed(84 * MINUTE_MS, 2)],
            &week,
        );
        assert_eq!(per, 84);
        assert_eq!(line.chars().count(), 120);
        assert!(line.starts_with("▅█▁"), "{line}");
    }
}
