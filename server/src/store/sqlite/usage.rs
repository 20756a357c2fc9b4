//! The usage counts: adding a flushed batch, reading a key's buckets, and
//! the retention pass (schema version 4: `usage_minutes`, `usage_days`).

use keygate::KeyId;
use rusqlite::{params, Connection, TransactionBehavior};

use super::super::{
    usage_cutoffs, Bucket, KeyUsage, Pruned, Scope, StoreError, UsageBucket, UsageCounts,
    UsageQuery, UsageRow, DAY_MS,
};
use super::queries::{get_key, in_scope, limit_sql, sql};

/// Adds `batch` to the minute rows, in one transaction.
pub(super) fn write_usage(conn: &mut Connection, batch: &[UsageRow]) -> Result<(), StoreError> {
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(sql)?;
    {
        let mut stmt = tx
            .prepare_cached(
                "INSERT INTO usage_minutes
                     (key_id, minute_ms, allowed, forbidden, rate_limited, credits_exhausted)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                 ON CONFLICT (key_id, minute_ms) DO UPDATE SET
                     allowed = allowed + excluded.allowed,
                     forbidden = forbidden + excluded.forbidden,
                     rate_limited = rate_limited + excluded.rate_limited,
                     credits_exhausted = credits_exhausted + excluded.credits_exhausted",
            )
            .map_err(sql)?;
        for row in batch {
            let [a, f, r, c] = row.counts.columns();
            stmt.execute(params![row.key_id.as_str(), row.minute_ms, a, f, r, c])
                .map_err(sql)?;
        }
    }
    tx.commit().map_err(sql)
}

/// The counts of a row whose four count columns start at column `at`.
fn counts_at(row: &rusqlite::Row<'_>, at: usize) -> rusqlite::Result<UsageCounts> {
    Ok(UsageCounts::from_columns([
        row.get(at)?,
        row.get(at + 1)?,
        row.get(at + 2)?,
        row.get(at + 3)?,
    ]))
}

/// `id`'s usage in the buckets `query` spans, if it is within `scope`; the
/// scope first, always (see `in_scope`). One statement over both tables,
/// so a retention pass committing meanwhile is seen whole or not at all.
pub(super) fn read_usage(
    conn: &mut Connection,
    id: KeyId,
    scope: Scope,
    query: UsageQuery,
) -> Result<Option<KeyUsage>, StoreError> {
    let tx = conn.transaction().map_err(sql)?;
    let member = in_scope(&tx, id, scope)?;
    let key = match get_key(&tx, id)? {
        Some(key) if member => key,
        _ => return Ok(None),
    };
    let (start, end) = query.span();
    let width = query.bucket.ms();
    let mut buckets = Vec::new();
    {
        let mut stmt = tx
            .prepare_cached(
                "SELECT (t.at / ?4) * ?4 AS b, sum(t.allowed), sum(t.forbidden),
                        sum(t.rate_limited), sum(t.credits_exhausted)
                 FROM (
                     SELECT minute_ms AS at, allowed, forbidden, rate_limited, credits_exhausted
                     FROM usage_minutes WHERE key_id = ?1 AND minute_ms >= ?2 AND minute_ms < ?3
                     UNION ALL
                     SELECT day_ms, allowed, forbidden, rate_limited, credits_exhausted
                     FROM usage_days WHERE ?5 AND key_id = ?1 AND day_ms >= ?2 AND day_ms < ?3
                 ) t
                 GROUP BY b ORDER BY b",
            )
            .map_err(sql)?;
        let rows = stmt
            .query_map(
                params![id.as_str(), start, end, width, query.bucket == Bucket::Day],
                |r| {
                    Ok(UsageBucket {
                        start_ms: r.get(0)?,
                        counts: counts_at(r, 1)?,
                    })
                },
            )
            .map_err(sql)?;
        for row in rows {
            let bucket = row.map_err(sql)?;
            if !bucket.counts.is_zero() {
                buckets.push(bucket);
            }
        }
    }
    tx.commit().map_err(sql)?;
    Ok(Some(KeyUsage {
        revoked_at_ms: key.revoked_at_ms,
        buckets,
    }))
}

/// One retention pass, in one transaction: up to `limit` minute rows past
/// the minute window move into their day rows, and up to `limit` day rows
/// past the day window go.
pub(super) fn prune(
    conn: &mut Connection,
    now_ms: i64,
    limit: usize,
) -> Result<Pruned, StoreError> {
    let (minute_cutoff, day_cutoff) = usage_cutoffs(now_ms);
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(sql)?;
    let mut old: Vec<(String, i64, UsageCounts)> = Vec::new();
    {
        let mut stmt = tx
            .prepare_cached(
                "SELECT key_id, minute_ms, allowed, forbidden, rate_limited, credits_exhausted
                 FROM usage_minutes WHERE minute_ms < ?1 ORDER BY minute_ms LIMIT ?2",
            )
            .map_err(sql)?;
        let rows = stmt
            .query_map(params![minute_cutoff, limit_sql(limit)], |r| {
                Ok((r.get(0)?, r.get(1)?, counts_at(r, 2)?))
            })
            .map_err(sql)?;
        for row in rows {
            old.push(row.map_err(sql)?);
        }
    }
    {
        let mut fold = tx
            .prepare_cached(
                "INSERT INTO usage_days
                     (key_id, day_ms, allowed, forbidden, rate_limited, credits_exhausted)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                 ON CONFLICT (key_id, day_ms) DO UPDATE SET
                     allowed = allowed + excluded.allowed,
                     forbidden = forbidden + excluded.forbidden,
                     rate_limited = rate_limited + excluded.rate_limited,
                     credits_exhausted = credits_exhausted + excluded.credits_exhausted",
            )
            .map_err(sql)?;
        let mut delete = tx
            .prepare_cached("DELETE FROM usage_minutes WHERE key_id = ?1 AND minute_ms = ?2")
            .map_err(sql)?;
        for (key_id, minute_ms, counts) in &old {
            let [a, f, r, c] = counts.columns();
            let day_ms = minute_ms.div_euclid(DAY_MS) * DAY_MS;
            fold.execute(params![key_id, day_ms, a, f, r, c])
                .map_err(sql)?;
            delete.execute(params![key_id, minute_ms]).map_err(sql)?;
        }
    }
    let deleted = tx
        .execute(
            "DELETE FROM usage_days WHERE (key_id, day_ms) IN (
                 SELECT key_id, day_ms FROM usage_days WHERE day_ms < ?1 LIMIT ?2
             )",
            params![day_cutoff, limit_sql(limit)],
        )
        .map_err(sql)?;
    tx.commit().map_err(sql)?;
    Ok(Pruned {
        folded: u64::try_from(old.len()).unwrap_or(u64::MAX),
        deleted: u64::try_from(deleted).unwrap_or(u64::MAX),
    })
}
