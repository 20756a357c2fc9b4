//! Credit pools and leases (`credit_balances`, `credit_leases`): the SQLite
//! side of `store::lease`. Each function is one immediate transaction (or
//! one read), on a connection the caller holds.

use keygate::{KeyId, MAX_CREDITS};
use rusqlite::{params, Connection, OptionalExtension, Transaction, TransactionBehavior};

use super::super::lease::{
    add, as_stored, col, credits, grant, period_col, period_now, period_of, refilled, stale_lease,
    CreditMeter, Expired, Lease, LeaseReport, PoolRow, PoolView,
};
use super::super::StoreError;
use super::queries::{meter_credits, sql};

fn immediate(conn: &mut Connection) -> Result<Transaction<'_>, StoreError> {
    conn.transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(sql)
}

/// The pool row of `meter_id`, if there is one.
fn read_pool(conn: &Connection, meter_id: KeyId) -> Result<Option<PoolRow>, StoreError> {
    conn.query_row(
        "SELECT remaining, period FROM credit_balances WHERE meter_id = ?1",
        params![meter_id.as_str()],
        |r| Ok((credits(r.get(0)?), period_of(r.get(1)?))),
    )
    .optional()
    .map_err(sql)
}

fn write_pool(conn: &Connection, meter_id: KeyId, pool: PoolRow) -> Result<(), StoreError> {
    conn.execute(
        "INSERT INTO credit_balances (meter_id, remaining, period) VALUES (?1, ?2, ?3)
         ON CONFLICT (meter_id) DO UPDATE SET remaining = excluded.remaining, period = excluded.period",
        params![meter_id.as_str(), col(pool.0), period_col(pool.1)],
    )
    .map_err(sql)?;
    Ok(())
}

/// Deletes the meter's leases of any period but `period`: void.
fn void_others(conn: &Connection, meter_id: KeyId, period: u64) -> Result<(), StoreError> {
    conn.execute(
        "DELETE FROM credit_leases WHERE meter_id = ?1 AND period <> ?2",
        params![meter_id.as_str(), period_col(period)],
    )
    .map_err(sql)?;
    Ok(())
}

/// What the live leases of `period` hold, as last known, but `except`'s.
fn leased(
    conn: &Connection,
    meter_id: KeyId,
    period: u64,
    except: &str,
    now_ms: i64,
) -> Result<u64, StoreError> {
    conn.query_row(
        "SELECT COALESCE(SUM(amount), 0) FROM credit_leases
         WHERE meter_id = ?1 AND period = ?2 AND instance_id <> ?3 AND expires_at_ms >= ?4",
        params![meter_id.as_str(), period_col(period), except, now_ms],
        |r| r.get::<_, i64>(0),
    )
    .map(credits)
    .map_err(sql)
}

pub(super) fn lease(
    conn: &mut Connection,
    m: CreditMeter,
    instance: &str,
    want: u64,
    need: u64,
    now_ms: i64,
    ttl_ms: i64,
) -> Result<Lease, StoreError> {
    let tx = immediate(conn)?;
    let id = m.meter.id;
    let (stored, stale) = as_stored(m, meter_credits(&tx, id)?);
    if stale {
        return Ok(stale_lease(m, now_ms));
    }
    let m = stored;
    let Some(row) = read_pool(&tx, id)? else {
        return Ok(Lease {
            period: period_now(m, 0, now_ms),
            ..Lease::default()
        });
    };
    let ((remaining, period), refill) = refilled(row, m, now_ms);
    if refill {
        void_others(&tx, id, period)?;
    }
    let granted = grant(remaining, want, need);
    if granted > 0 {
        tx.execute(
            "INSERT INTO credit_leases (meter_id, instance_id, period, amount, expires_at_ms)
             VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT (meter_id, instance_id) DO UPDATE SET
                 amount = CASE WHEN credit_leases.period = excluded.period
                          THEN min(credit_leases.amount + excluded.amount, ?6)
                          ELSE excluded.amount END,
                 period = excluded.period,
                 expires_at_ms = excluded.expires_at_ms",
            params![
                id.as_str(),
                instance,
                period_col(period),
                col(granted),
                now_ms.saturating_add(ttl_ms),
                col(MAX_CREDITS)
            ],
        )
        .map_err(sql)?;
    }
    let pool = remaining - granted;
    if refill || granted > 0 {
        write_pool(&tx, id, (pool, period))?;
    }
    let elsewhere = leased(&tx, id, period, instance, now_ms)?;
    tx.commit().map_err(sql)?;
    Ok(Lease {
        granted,
        period,
        pool,
        elsewhere,
        stale_refill: false,
    })
}

pub(super) fn give_back(
    conn: &mut Connection,
    m: CreditMeter,
    instance: &str,
    amount: u64,
    of_period: u64,
    kept: u64,
    now_ms: i64,
) -> Result<bool, StoreError> {
    let tx = immediate(conn)?;
    let id = m.meter.id;
    let mut back = false;
    // Credits leased under another refill than the stored one lapse: their
    // period is numbered under that refill, not the pool's.
    let (m, stale) = as_stored(m, meter_credits(&tx, id)?);
    if let Some(row) = read_pool(&tx, id)? {
        let ((mut remaining, period), refill) = refilled(row, m, now_ms);
        if refill {
            void_others(&tx, id, period)?;
        }
        back = !stale && period == of_period;
        if back {
            remaining = add(remaining, amount);
        }
        if refill || back {
            write_pool(&tx, id, (remaining, period))?;
        }
    }
    if kept == 0 {
        tx.execute(
            "DELETE FROM credit_leases WHERE meter_id = ?1 AND instance_id = ?2 AND period = ?3",
            params![id.as_str(), instance, period_col(of_period)],
        )
        .map_err(sql)?;
    } else {
        tx.execute(
            "UPDATE credit_leases SET amount = ?4
             WHERE meter_id = ?1 AND instance_id = ?2 AND period = ?3",
            params![id.as_str(), instance, period_col(of_period), col(kept)],
        )
        .map_err(sql)?;
    }
    tx.commit().map_err(sql)?;
    Ok(back)
}

pub(super) fn renew(
    conn: &mut Connection,
    instance: &str,
    now_ms: i64,
    ttl_ms: i64,
    reports: &[LeaseReport],
) -> Result<Vec<PoolView>, StoreError> {
    let tx = immediate(conn)?;
    let until = now_ms.saturating_add(ttl_ms);
    tx.execute(
        "UPDATE credit_leases SET expires_at_ms = ?2 WHERE instance_id = ?1",
        params![instance, until],
    )
    .map_err(sql)?;
    let mut pools = Vec::with_capacity(reports.len());
    {
        let mut gone = tx
            .prepare(
                "DELETE FROM credit_leases
                 WHERE meter_id = ?1 AND instance_id = ?2 AND period <= ?3",
            )
            .map_err(sql)?;
        let mut upsert = tx
            .prepare(
                "INSERT INTO credit_leases (meter_id, instance_id, period, amount, expires_at_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (meter_id, instance_id) DO UPDATE SET
                     amount = CASE WHEN credit_leases.period <= excluded.period
                              THEN excluded.amount ELSE credit_leases.amount END,
                     period = max(credit_leases.period, excluded.period),
                     expires_at_ms = excluded.expires_at_ms",
            )
            .map_err(sql)?;
        for r in reports {
            let (meter, period) = (r.meter_id.as_str(), period_col(r.period));
            if r.unspent == 0 {
                gone.execute(params![meter, instance, period])
                    .map_err(sql)?;
            } else {
                upsert
                    .execute(params![meter, instance, period, col(r.unspent), until])
                    .map_err(sql)?;
            }
        }
        for r in reports {
            if let Some((remaining, period)) = read_pool(&tx, r.meter_id)? {
                pools.push(PoolView {
                    meter_id: r.meter_id,
                    remaining,
                    period,
                    elsewhere: leased(&tx, r.meter_id, period, instance, now_ms)?,
                });
            }
        }
    }
    tx.commit().map_err(sql)?;
    Ok(pools)
}

pub(super) fn expire(conn: &mut Connection, now_ms: i64) -> Result<Expired, StoreError> {
    let tx = immediate(conn)?;
    let (leases, forfeited): (i64, i64) = tx
        .query_row(
            "SELECT COUNT(*), COALESCE(SUM(amount), 0) FROM credit_leases WHERE expires_at_ms < ?1",
            params![now_ms],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .map_err(sql)?;
    let mut expired = Expired {
        leases: credits(leases),
        forfeited: credits(forfeited),
        void: 0,
    };
    if leases > 0 {
        tx.execute(
            "DELETE FROM credit_leases WHERE expires_at_ms < ?1",
            params![now_ms],
        )
        .map_err(sql)?;
    }
    let void = tx
        .execute(
            "DELETE FROM credit_leases WHERE EXISTS (
                 SELECT 1 FROM credit_balances b
                 WHERE b.meter_id = credit_leases.meter_id AND b.period <> credit_leases.period
             )",
            [],
        )
        .map_err(sql)?;
    expired.void = u64::try_from(void).unwrap_or(0);
    tx.commit().map_err(sql)?;
    Ok(expired)
}

pub(super) fn total(
    conn: &mut Connection,
    m: CreditMeter,
    now_ms: i64,
) -> Result<Option<u64>, StoreError> {
    // One read transaction: the pool and the leases of one snapshot.
    let tx = conn.transaction().map_err(sql)?;
    let total = total_in(&tx, m, now_ms)?;
    tx.commit().map_err(sql)?;
    Ok(total)
}

/// [`total`] inside the caller's transaction.
pub(super) fn total_in(
    tx: &Connection,
    m: CreditMeter,
    now_ms: i64,
) -> Result<Option<u64>, StoreError> {
    let Some(row) = read_pool(tx, m.meter.id)? else {
        return Ok(None);
    };
    let (m, _) = as_stored(m, meter_credits(tx, m.meter.id)?);
    let ((remaining, period), refill) = refilled(row, m, now_ms);
    let held = if refill {
        0
    } else {
        leased(tx, m.meter.id, period, "", now_ms)?
    };
    Ok(Some(add(remaining, held)))
}

#[cfg(test)]
pub(super) fn set(
    conn: &mut Connection,
    m: CreditMeter,
    remaining: u64,
    now_ms: i64,
) -> Result<u64, StoreError> {
    let tx = immediate(conn)?;
    let total = set_in(&tx, m, remaining, now_ms)?;
    tx.commit().map_err(sql)?;
    Ok(total)
}

/// [`set`] inside the caller's transaction: the pool gets `remaining` less
/// what the live leases of the current period hold (they stay with their
/// instances), in the current period of the meter's refill as given;
/// leases of another period are void. Returns the new total.
pub(super) fn set_in(
    tx: &Connection,
    m: CreditMeter,
    remaining: u64,
    now_ms: i64,
) -> Result<u64, StoreError> {
    let id = m.meter.id;
    let stored = read_pool(tx, id)?.map_or(0, |(_, p)| p);
    // The period of the refill as given, not at least the stored one: a
    // changed interval numbers its periods anew.
    let period = m.refill.map_or(stored, |r| {
        r.period_at(m.meter.since, keygate::UnixMillis::from_millis(now_ms))
    });
    void_others(tx, id, period)?;
    let held = leased(tx, id, period, "", now_ms)?;
    let pool = remaining.min(MAX_CREDITS).saturating_sub(held);
    write_pool(tx, id, (pool, period))?;
    Ok(add(pool, held))
}

#[cfg(test)]
pub(super) fn adjust(
    conn: &mut Connection,
    m: CreditMeter,
    delta: i64,
    now_ms: i64,
) -> Result<Option<u64>, StoreError> {
    let tx = immediate(conn)?;
    let total = adjust_in(&tx, m, delta, now_ms)?;
    tx.commit().map_err(sql)?;
    Ok(total)
}

/// [`adjust`] inside the caller's transaction: `delta` added to the pool
/// (refilled first), clamped at 0 and [`MAX_CREDITS`]; the new total, or
/// `None` without a pool row.
pub(super) fn adjust_in(
    tx: &Connection,
    m: CreditMeter,
    delta: i64,
    now_ms: i64,
) -> Result<Option<u64>, StoreError> {
    let id = m.meter.id;
    let Some(row) = read_pool(tx, id)? else {
        return Ok(None);
    };
    let ((remaining, period), refill) = refilled(row, m, now_ms);
    if refill {
        void_others(tx, id, period)?;
    }
    let sum = i128::from(remaining) + i128::from(delta);
    let pool = u64::try_from(sum.clamp(0, i128::from(MAX_CREDITS))).unwrap_or(0);
    write_pool(tx, id, (pool, period))?;
    let held = leased(tx, id, period, "", now_ms)?;
    Ok(Some(add(pool, held)))
}

/// Drops a meter's pool and its leases (its credits were removed): the
/// instances that hold leases of it hand nothing back (their keys have no
/// credits any more).
pub(super) fn drop_meter(tx: &Connection, meter_id: KeyId) -> Result<(), StoreError> {
    tx.execute(
        "DELETE FROM credit_balances WHERE meter_id = ?1",
        params![meter_id.as_str()],
    )
    .map_err(sql)?;
    tx.execute(
        "DELETE FROM credit_leases WHERE meter_id = ?1",
        params![meter_id.as_str()],
    )
    .map_err(sql)?;
    Ok(())
}
