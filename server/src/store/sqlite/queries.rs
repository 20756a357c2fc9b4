//! The queries: reads and writes of keys and the change log, each on a
//! connection the caller holds.

use keygate::{
    Change, Credits, KeyId, KeyKind, KeyRecord, KeyRecordParts, Meter, Scopes, SecretHash,
    UnixMillis,
};
use rusqlite::{params, Connection, ErrorCode, OptionalExtension, TransactionBehavior};

use super::super::{
    balance_at, fresh_balance, no_credits, rolled_target, Action, CreditMeter, Event, KeyPage,
    LimitColumns, LimitsChange, Scope, SetOrAdd, Snapshot, StoreError, StoredKey,
};
use super::leases;

/// The columns of `keys`, in the order [`read_key`] reads them.
pub(super) const KEY_COLUMNS: &str =
    "k.id, k.kind, k.name, k.secret_hash, k.scopes, k.created_at_ms, \
                           k.expires_at_ms, k.creator_id, k.revoked_at_ms, k.last_used_at_ms, \
                           k.rate_limit, k.rate_period_ms, k.credits_remaining, \
                           k.credits_refill_amount, k.credits_refill_interval_ms, \
                           k.meter_id, k.meter_since_ms";

/// The family of the key bound to `?{n}`: the key and every key rolled into
/// it, transitively (a common table expression named `fam`); empty if the
/// key was itself rolled (its children belong to the key that replaced it).
pub(super) fn family_cte(n: u8) -> String {
    format!(
        "fam(id) AS (
             SELECT ?{n} WHERE NOT EXISTS (SELECT 1 FROM keys WHERE rolled_from = ?{n})
             UNION
             SELECT k.rolled_from FROM keys k JOIN fam ON k.id = fam.id
             WHERE k.rolled_from IS NOT NULL
         )"
    )
}

/// The keys minted by a member of `fam`, transitively (`d`), and the
/// caller's subtree proper (`sub`: `d` without the family), materialized:
/// every scoped query is driven by it, so it costs what the caller's own
/// subtree costs, whatever the target or the size of the table (common table
/// expressions after [`family_cte`]).
pub(super) const DESCENDANTS_CTE: &str = "d(id) AS (
    SELECT k.id FROM keys k WHERE k.creator_id IN (SELECT id FROM fam)
    UNION
    SELECT k.id FROM keys k JOIN d ON k.creator_id = d.id
),
sub(id) AS MATERIALIZED (SELECT id FROM d WHERE id NOT IN (SELECT id FROM fam))";

/// Maps a SQLite error: contention and I/O trouble are worth a retry;
/// anything else (a corrupt file, a constraint broken, a bug) is not.
pub(super) fn sql(e: rusqlite::Error) -> StoreError {
    match e.sqlite_error_code() {
        Some(
            ErrorCode::DatabaseBusy
            | ErrorCode::DatabaseLocked
            | ErrorCode::SystemIoFailure
            | ErrorCode::DiskFull
            | ErrorCode::CannotOpen
            | ErrorCode::OutOfMemory,
        ) => StoreError::Unavailable(format!("database error: {e}")),
        _ => StoreError::Fatal(format!("database error: {e}")),
    }
}

pub(super) fn to_seq(seq: i64) -> u64 {
    u64::try_from(seq).unwrap_or(0)
}

pub(super) fn from_seq(seq: u64) -> i64 {
    i64::try_from(seq).unwrap_or(i64::MAX)
}

pub(super) fn limit_sql(limit: usize) -> i64 {
    i64::try_from(limit).unwrap_or(i64::MAX)
}

/// Inserts a key row, its limits included; a key with credits on a meter
/// that has no balance yet (its own, new) starts it at the grant.
pub(super) fn insert_key(conn: &Connection, record: &KeyRecord) -> Result<(), StoreError> {
    let limits = LimitColumns::of(record);
    conn.execute(
        "INSERT INTO keys (id, kind, name, secret_hash, scopes, created_at_ms, expires_at_ms,
                           creator_id, revoked_at_ms, last_used_at_ms,
                           rate_limit, rate_period_ms, credits_remaining, credits_refill_amount,
                           credits_refill_interval_ms, meter_id, meter_since_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, NULL, NULL, ?9, ?10, ?11, ?12, ?13, ?14, ?15)",
        params![
            record.id().as_str(),
            record.kind().as_str(),
            record.name(),
            &record.secret_hash().as_bytes()[..],
            i64::from(record.scopes().bits()),
            record.created_at().as_millis(),
            record.expires_at().map(UnixMillis::as_millis),
            record.creator_id().as_ref().map(KeyId::as_str),
            limits.rate_limit,
            limits.rate_period_ms,
            limits.credits_remaining,
            limits.credits_refill_amount,
            limits.credits_refill_interval_ms,
            limits.meter_id,
            limits.meter_since_ms,
        ],
    )
    .map_err(sql)?;
    if let Some(credits) = record.limits().credits {
        let meter = record.meter();
        write_balance(
            conn,
            meter.id,
            fresh_balance(&credits, meter.since, record.created_at()),
            false,
        )?;
    }
    Ok(())
}

/// Inserts a key row of schema version 2 (no limits): the migration from
/// 0.1.0, which runs before the later columns exist.
pub(super) fn insert_v2_key(conn: &Connection, record: &KeyRecord) -> Result<(), StoreError> {
    conn.execute(
        "INSERT INTO keys (id, kind, name, secret_hash, scopes, created_at_ms, expires_at_ms,
                           creator_id, revoked_at_ms, last_used_at_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, NULL, NULL)",
        params![
            record.id().as_str(),
            record.kind().as_str(),
            record.name(),
            &record.secret_hash().as_bytes()[..],
            i64::from(record.scopes().bits()),
            record.created_at().as_millis(),
            record.expires_at().map(UnixMillis::as_millis),
            record.creator_id().as_ref().map(KeyId::as_str),
        ],
    )
    .map_err(sql)?;
    Ok(())
}

/// Writes a meter's balance: always with `replace`, else only where the
/// meter has none.
pub(super) fn write_balance(
    conn: &Connection,
    meter: KeyId,
    balance: keygate::CreditBalance,
    replace: bool,
) -> Result<(), StoreError> {
    let text = if replace {
        "INSERT INTO credit_balances (meter_id, remaining, period) VALUES (?1, ?2, ?3)
         ON CONFLICT (meter_id) DO UPDATE SET remaining = excluded.remaining,
                                              period = excluded.period"
    } else {
        "INSERT INTO credit_balances (meter_id, remaining, period) VALUES (?1, ?2, ?3)
         ON CONFLICT (meter_id) DO NOTHING"
    };
    conn.execute(
        text,
        params![
            meter.as_str(),
            i64::try_from(balance.remaining).unwrap_or(i64::MAX),
            i64::try_from(balance.period).unwrap_or(i64::MAX)
        ],
    )
    .map_err(sql)?;
    Ok(())
}

/// Appends an event to the log; returns its sequence number.
pub(super) fn append(
    conn: &Connection,
    at_ms: i64,
    action: Action,
    key_id: KeyId,
    actor: Option<KeyId>,
    new_key_id: Option<KeyId>,
) -> Result<u64, StoreError> {
    conn.execute(
        "INSERT INTO changes (at_ms, action, key_id, actor_id, new_key_id)
         VALUES (?1, ?2, ?3, ?4, ?5)",
        params![
            at_ms,
            action.as_str(),
            key_id.as_str(),
            actor.as_ref().map(KeyId::as_str),
            new_key_id.as_ref().map(KeyId::as_str),
        ],
    )
    .map_err(sql)?;
    Ok(to_seq(conn.last_insert_rowid()))
}

/// Reads a `keys` row whose [`KEY_COLUMNS`] start at column `at`. The outer
/// error is SQLite's; the inner one names the key whose row is corrupt.
pub(super) fn read_key(
    row: &rusqlite::Row<'_>,
    at: usize,
) -> rusqlite::Result<Result<StoredKey, StoreError>> {
    let id: String = row.get(at)?;
    let parsed = (|| -> Result<StoredKey, String> {
        let col = |i: usize| at + i;
        let err = |e: rusqlite::Error| e.to_string();
        let key_id = KeyId::parse(&id).map_err(|e| e.to_string())?;
        let kind: String = row.get(col(1)).map_err(err)?;
        let kind = match kind.as_str() {
            "standard" => KeyKind::Standard,
            "restricted" => KeyKind::Restricted,
            other => return Err(format!("unknown kind `{other}`")),
        };
        let name: String = row.get(col(2)).map_err(err)?;
        let hash: Vec<u8> = row.get(col(3)).map_err(err)?;
        let hash: [u8; 32] = hash
            .try_into()
            .map_err(|h: Vec<u8>| format!("secret hash of {} bytes, not 32", h.len()))?;
        let bits: i64 = row.get(col(4)).map_err(err)?;
        let scopes = u32::try_from(bits)
            .ok()
            .and_then(Scopes::from_bits)
            .ok_or_else(|| format!("invalid scope bits {bits}"))?;
        let created_at_ms: i64 = row.get(col(5)).map_err(err)?;
        let expires_at_ms: Option<i64> = row.get(col(6)).map_err(err)?;
        let creator: Option<String> = row.get(col(7)).map_err(err)?;
        let creator_id = creator
            .map(|c| KeyId::parse(&c).map_err(|e| format!("creator id: {e}")))
            .transpose()?;
        let revoked_at_ms: Option<i64> = row.get(col(8)).map_err(err)?;
        let last_used_at_ms: Option<i64> = row.get(col(9)).map_err(err)?;
        let (limits, meter) = LimitColumns {
            rate_limit: row.get(col(10)).map_err(err)?,
            rate_period_ms: row.get(col(11)).map_err(err)?,
            credits_remaining: row.get(col(12)).map_err(err)?,
            credits_refill_amount: row.get(col(13)).map_err(err)?,
            credits_refill_interval_ms: row.get(col(14)).map_err(err)?,
            meter_id: row.get(col(15)).map_err(err)?,
            meter_since_ms: row.get(col(16)).map_err(err)?,
        }
        .limits()?;
        let record = KeyRecord::from_parts(KeyRecordParts {
            id: key_id,
            kind,
            name,
            secret_hash: SecretHash::from_bytes(hash),
            scopes,
            expires_at: expires_at_ms.map(UnixMillis::from_millis),
            created_at: UnixMillis::from_millis(created_at_ms),
            creator_id,
            limits,
            meter,
        })
        .map_err(|e| e.to_string())?;
        Ok(StoredKey {
            record,
            revoked_at_ms,
            last_used_at_ms,
        })
    })();
    Ok(parsed.map_err(|m| StoreError::Fatal(format!("corrupt database row for key `{id}`: {m}"))))
}

pub(super) fn parse_id(text: &str, what: &str) -> Result<KeyId, StoreError> {
    KeyId::parse(text)
        .map_err(|e| StoreError::Fatal(format!("corrupt {what} `{text}` in database: {e}")))
}

/// Whether `id` is within `scope`: for `DescendantsOf(root)`, whether it is
/// in `root`'s subtree. The whole subtree is computed first, so the answer
/// costs the same for an unknown id, another tenant's id and one of the
/// caller's: the time of a 404 tells nothing about keys outside it.
pub(super) fn in_scope(conn: &Connection, id: KeyId, scope: Scope) -> Result<bool, StoreError> {
    match scope {
        Scope::All => Ok(true),
        Scope::DescendantsOf(root) => conn
            .query_row(
                &format!(
                    "WITH RECURSIVE {fam}, {DESCENDANTS_CTE}
                     SELECT count(*), sum(id = ?1) FROM sub",
                    fam = family_cte(2)
                ),
                params![id.as_str(), root.as_str()],
                |r| Ok(r.get::<_, Option<i64>>(1)?.unwrap_or(0) > 0),
            )
            .map_err(sql),
    }
}

/// The key `id` was rolled into, if it was.
pub(super) fn successor(conn: &Connection, id: KeyId) -> Result<Option<String>, StoreError> {
    conn.query_row(
        "SELECT id FROM keys WHERE rolled_from = ?1",
        params![id.as_str()],
        |r| r.get(0),
    )
    .optional()
    .map_err(sql)
}

/// A rolled key is on its way out: it mints and rolls no more; its children
/// belong to the key that replaced it.
pub(super) fn check_not_rolled(conn: &Connection, id: KeyId) -> Result<(), StoreError> {
    match successor(conn, id)? {
        None => Ok(()),
        Some(_) => Err(super::super::rolled(id)),
    }
}

/// The keys rolled into `id`, transitively (its predecessors), in id order.
pub(super) fn predecessors(conn: &Connection, id: KeyId) -> Result<Vec<KeyId>, StoreError> {
    let mut stmt = conn
        .prepare(
            "WITH RECURSIVE p(id) AS (
                 SELECT rolled_from FROM keys WHERE id = ?1 AND rolled_from IS NOT NULL
                 UNION
                 SELECT k.rolled_from FROM keys k JOIN p ON k.id = p.id
                 WHERE k.rolled_from IS NOT NULL
             )
             SELECT id FROM p WHERE id != ?1 ORDER BY id",
        )
        .map_err(sql)?;
    let rows = stmt
        .query_map(params![id.as_str()], |r| r.get::<_, String>(0))
        .map_err(sql)?;
    let mut ids = Vec::new();
    for row in rows {
        ids.push(parse_id(&row.map_err(sql)?, "key id")?);
    }
    Ok(ids)
}

/// The checks every write and every scoped read make of its caller: live
/// ([`StoreError::CallerRevoked`]) and not rolled ([`StoreError::Conflict`]).
pub(super) fn check_caller(conn: &Connection, actor: KeyId, at_ms: i64) -> Result<(), StoreError> {
    check_live(conn, actor, at_ms)?;
    check_not_rolled(conn, actor)
}

/// Fails with [`StoreError::CallerRevoked`] unless `actor` is a known key,
/// not revoked, and not expired at `at_ms`. Run inside a write transaction.
pub(super) fn check_live(conn: &Connection, actor: KeyId, at_ms: i64) -> Result<(), StoreError> {
    let row: Option<(Option<i64>, Option<i64>)> = conn
        .query_row(
            "SELECT revoked_at_ms, expires_at_ms FROM keys WHERE id = ?1",
            params![actor.as_str()],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()
        .map_err(sql)?;
    match row {
        Some((None, None)) => Ok(()),
        Some((None, Some(expires_at_ms))) if at_ms < expires_at_ms => Ok(()),
        _ => Err(StoreError::CallerRevoked),
    }
}

pub(super) fn get_key(conn: &Connection, id: KeyId) -> Result<Option<StoredKey>, StoreError> {
    conn.query_row(
        &format!("SELECT {KEY_COLUMNS} FROM keys k WHERE k.id = ?1"),
        params![id.as_str()],
        |r| read_key(r, 0),
    )
    .optional()
    .map_err(sql)?
    .transpose()
}

/// The key `id` if it exists, is not revoked, and is within `scope`;
/// otherwise [`StoreError::NotFound`].
pub(super) fn live_in_scope(
    conn: &Connection,
    id: KeyId,
    scope: Scope,
) -> Result<StoredKey, StoreError> {
    // The scope first, always: see `in_scope`.
    let member = in_scope(conn, id, scope)?;
    match get_key(conn, id)? {
        Some(key) if member && key.revoked_at_ms.is_none() => Ok(key),
        _ => Err(StoreError::NotFound),
    }
}

/// Every key minted from `root`'s family, transitively (revoked ones
/// included: they still link their children), in id order.
pub(super) fn descendants(conn: &Connection, root: KeyId) -> Result<Vec<KeyId>, StoreError> {
    let mut stmt = conn
        .prepare(&format!(
            "WITH RECURSIVE {fam}, {DESCENDANTS_CTE}
             SELECT id FROM d WHERE id NOT IN (SELECT id FROM fam) ORDER BY id",
            fam = family_cte(1)
        ))
        .map_err(sql)?;
    let rows = stmt
        .query_map(params![root.as_str()], |r| r.get::<_, String>(0))
        .map_err(sql)?;
    let mut ids = Vec::new();
    for row in rows {
        ids.push(parse_id(&row.map_err(sql)?, "key id")?);
    }
    Ok(ids)
}

pub(super) fn revoke_tx(
    conn: &mut Connection,
    id: KeyId,
    scope: Scope,
    cascade: bool,
    actor: Option<KeyId>,
    at_ms: i64,
) -> Result<Vec<(u64, KeyId)>, StoreError> {
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(sql)?;
    if let Some(actor) = actor.filter(|&actor| actor != id) {
        check_caller(&tx, actor, at_ms)?;
    }
    live_in_scope(&tx, id, scope)?;
    // The key, the keys rolled into it (the same credential, in their
    // overlap) and, with `cascade`, its descendants: id first, then in id
    // order.
    let mut rest = predecessors(&tx, id)?;
    if cascade {
        rest.extend(descendants(&tx, id)?);
    }
    rest.sort_by(|a, b| a.as_str().cmp(b.as_str()));
    rest.dedup();
    let mut targets = vec![id];
    targets.extend(rest);
    let mut revoked = Vec::new();
    for target in targets {
        let changed = tx
            .execute(
                "UPDATE keys SET revoked_at_ms = ?2 WHERE id = ?1 AND revoked_at_ms IS NULL",
                params![target.as_str(), at_ms],
            )
            .map_err(sql)?;
        if changed == 1 {
            let seq = append(&tx, at_ms, Action::Revoked, target, actor, None)?;
            revoked.push((seq, target));
        }
    }
    tx.commit().map_err(sql)?;
    Ok(revoked)
}

pub(super) fn roll_tx(
    conn: &mut Connection,
    old: &KeyRecord,
    new: &KeyRecord,
    scope: Scope,
    actor: Option<KeyId>,
    at_ms: i64,
) -> Result<(u64, u64), StoreError> {
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(sql)?;
    if let Some(actor) = actor.filter(|&actor| actor != old.id()) {
        check_caller(&tx, actor, at_ms)?;
    }
    let current = live_in_scope(&tx, old.id(), scope)?;
    if actor == Some(old.id()) {
        check_live(&tx, old.id(), at_ms)?;
    }
    check_not_rolled(&tx, old.id())?;
    super::super::check_roll_fits(
        old,
        new,
        current.record.expires_at().map(UnixMillis::as_millis),
    )?;
    super::super::check_roll_limits(&current.record, new)?;
    tx.execute(
        "UPDATE keys SET expires_at_ms = ?2 WHERE id = ?1",
        params![
            old.id().as_str(),
            old.expires_at().map(UnixMillis::as_millis)
        ],
    )
    .map_err(sql)?;
    insert_key(&tx, new)?;
    tx.execute(
        "UPDATE keys SET rolled_from = ?2 WHERE id = ?1",
        params![new.id().as_str(), old.id().as_str()],
    )
    .map_err(sql)?;
    let created = append(&tx, at_ms, Action::Created, new.id(), actor, None)?;
    let rolled = append(&tx, at_ms, Action::Rolled, old.id(), actor, Some(new.id()))?;
    tx.commit().map_err(sql)?;
    Ok((created, rolled))
}

/// [`Store::set_limits`](super::super::Store::set_limits) in one immediate
/// transaction.
pub(super) fn set_limits_tx(
    conn: &mut Connection,
    id: KeyId,
    change: LimitsChange,
    scope: Scope,
    actor: Option<KeyId>,
    at_ms: i64,
) -> Result<Vec<(u64, KeyRecord)>, StoreError> {
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(sql)?;
    if let Some(actor) = actor {
        check_caller(&tx, actor, at_ms)?;
    }
    let target = live_in_scope(&tx, id, scope)?;
    if successor(&tx, id)?.is_some() {
        return Err(rolled_target(id));
    }
    let meter = target.record.meter();
    let old = target.record.limits();
    let new = change.apply_to(old);
    let (rate_limit, rate_period_ms) = LimitColumns::rate(new.rate);
    let (remaining, refill_amount, refill_interval_ms) = LimitColumns::credits(new.credits);
    tx.execute(
        "UPDATE keys SET rate_limit = ?2, rate_period_ms = ?3, credits_remaining = ?4,
                         credits_refill_amount = ?5, credits_refill_interval_ms = ?6
         WHERE COALESCE(meter_id, id) = ?1",
        params![
            meter.id.as_str(),
            rate_limit,
            rate_period_ms,
            remaining,
            refill_amount,
            refill_interval_ms
        ],
    )
    .map_err(sql)?;
    let now = UnixMillis::from_millis(at_ms);
    match new.credits {
        None => leases::drop_meter(&tx, meter.id)?,
        // Changed credits: the meter's total (its pool plus the live
        // leases) becomes their grant.
        Some(credits) if old.credits != Some(credits) => {
            let m = CreditMeter {
                meter,
                refill: credits.refill(),
            };
            leases::set_in(&tx, m, credits.remaining(), at_ms)?;
        }
        Some(credits) => {
            write_balance(
                &tx,
                meter.id,
                fresh_balance(&credits, meter.since, now),
                false,
            )?;
        }
    }
    let mut others = Vec::new();
    {
        let mut stmt = tx
            .prepare(
                "SELECT id FROM keys
                 WHERE COALESCE(meter_id, id) = ?1 AND revoked_at_ms IS NULL AND id != ?2
                 ORDER BY id",
            )
            .map_err(sql)?;
        let rows = stmt
            .query_map(params![meter.id.as_str(), id.as_str()], |r| {
                r.get::<_, String>(0)
            })
            .map_err(sql)?;
        for row in rows {
            others.push(parse_id(&row.map_err(sql)?, "key id")?);
        }
    }
    let mut changed = Vec::new();
    for key in std::iter::once(id).chain(others) {
        let seq = append(&tx, at_ms, Action::LimitsChanged, key, actor, None)?;
        // A row that cannot be read still gets its event: the feed fails
        // it closed.
        match get_key(&tx, key) {
            Ok(Some(stored)) => changed.push((seq, stored.record)),
            Ok(None) => {}
            Err(e) => tracing::error!(key_id = %key, "limits changed on an unreadable row: {e}"),
        }
    }
    tx.commit().map_err(sql)?;
    Ok(changed)
}

/// The credits configured for `meter` (on its keys, live ones first), if
/// any.
pub(super) fn meter_credits(
    conn: &Connection,
    meter: KeyId,
) -> Result<Option<Credits>, StoreError> {
    let row: Option<(Option<i64>, Option<i64>, Option<i64>)> = conn
        .query_row(
            "SELECT credits_remaining, credits_refill_amount, credits_refill_interval_ms
             FROM keys WHERE COALESCE(meter_id, id) = ?1 AND credits_remaining IS NOT NULL
             ORDER BY revoked_at_ms IS NOT NULL, id LIMIT 1",
            params![meter.as_str()],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .optional()
        .map_err(sql)?;
    let Some((remaining, amount, interval)) = row else {
        return Ok(None);
    };
    let columns = LimitColumns {
        credits_remaining: remaining,
        credits_refill_amount: amount,
        credits_refill_interval_ms: interval,
        ..LimitColumns::default()
    };
    columns
        .limits()
        .map(|(limits, _)| limits.credits)
        .map_err(|m| {
            StoreError::Fatal(format!(
                "corrupt credits of meter `{meter}` in database: {m}"
            ))
        })
}

/// A meter's stored balance row: `(remaining, period)`.
fn stored_balance(conn: &Connection, meter: KeyId) -> Result<Option<(i64, i64)>, StoreError> {
    conn.query_row(
        "SELECT remaining, period FROM credit_balances WHERE meter_id = ?1",
        params![meter.as_str()],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )
    .optional()
    .map_err(sql)
}

/// [`Store::change_credits`](super::super::Store::change_credits) in one
/// immediate transaction: the meter's total (its pool plus the live leases,
/// `store::lease`) is set, or added to through the pool.
pub(super) fn change_credits_tx(
    conn: &mut Connection,
    meter: Meter,
    op: SetOrAdd,
    now: UnixMillis,
) -> Result<u64, StoreError> {
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(sql)?;
    let credits = meter_credits(&tx, meter.id)?.ok_or_else(no_credits)?;
    let m = CreditMeter {
        meter,
        refill: credits.refill(),
    };
    let now_ms = now.as_millis();
    let total = match op {
        SetOrAdd::Set(n) => leases::set_in(&tx, m, n, now_ms)?,
        SetOrAdd::Add(delta) => {
            // A pool where the meter has none yet: its grant, as
            // `balance_at` reads a missing one.
            if stored_balance(&tx, meter.id)?.is_none() {
                let fresh = balance_at(None, &credits, meter.since, now);
                write_balance(&tx, meter.id, fresh, false)?;
            }
            leases::adjust_in(&tx, m, delta, now_ms)?.ok_or_else(no_credits)?
        }
    };
    tx.commit().map_err(sql)?;
    Ok(total)
}

/// [`Store::credit_balance`](super::super::Store::credit_balance): the
/// pool plus the live leases (`store::lease`), in one read transaction.
pub(super) fn read_balance(
    conn: &mut Connection,
    meter: Meter,
    now: UnixMillis,
) -> Result<Option<u64>, StoreError> {
    let tx = conn.transaction().map_err(sql)?;
    let Some(credits) = meter_credits(&tx, meter.id)? else {
        return Ok(None);
    };
    let m = CreditMeter {
        meter,
        refill: credits.refill(),
    };
    let total = match leases::total_in(&tx, m, now.as_millis())? {
        Some(total) => total,
        None => balance_at(None, &credits, meter.since, now).remaining,
    };
    tx.commit().map_err(sql)?;
    Ok(Some(total))
}

pub(super) fn list_keys(
    conn: &Connection,
    scope: Scope,
    starting_after: Option<KeyId>,
    limit: usize,
) -> Result<KeyPage, StoreError> {
    let after = starting_after.as_ref().map(KeyId::as_str).unwrap_or("");
    let fetch = limit_sql(limit.saturating_add(1));
    let (sql_text, root) = match scope {
        Scope::All => (
            format!(
                "SELECT {KEY_COLUMNS} FROM keys k
                 WHERE k.revoked_at_ms IS NULL AND k.id > ?1 AND ?3 IS NULL
                 ORDER BY k.id LIMIT ?2"
            ),
            None,
        ),
        Scope::DescendantsOf(root) => (
            format!(
                "WITH RECURSIVE {fam}, {DESCENDANTS_CTE}
                 SELECT {KEY_COLUMNS} FROM sub CROSS JOIN keys k ON k.id = sub.id
                 WHERE k.revoked_at_ms IS NULL AND k.id > ?1
                 ORDER BY k.id LIMIT ?2",
                fam = family_cte(3)
            ),
            Some(root),
        ),
    };
    let mut stmt = conn.prepare(&sql_text).map_err(sql)?;
    let rows = stmt
        .query_map(
            params![after, fetch, root.as_ref().map(KeyId::as_str)],
            |r| read_key(r, 0),
        )
        .map_err(sql)?;
    let mut keys = Vec::new();
    for row in rows {
        keys.push(row.map_err(sql)??);
    }
    let has_more = keys.len() > limit;
    keys.truncate(limit);
    Ok(KeyPage { keys, has_more })
}

pub(super) fn read_events(
    conn: &Connection,
    after: u64,
    limit: usize,
    scope: Scope,
) -> Result<(Vec<Event>, bool), StoreError> {
    let (text, root) = match scope {
        Scope::All => (
            String::from(
                "SELECT seq, at_ms, action, key_id, actor_id, new_key_id FROM changes
                 WHERE seq > ?1 AND ?3 IS NULL ORDER BY seq LIMIT ?2",
            ),
            None,
        ),
        // An actor outside the caller's family and subtree (an ancestor
        // acting on the subtree) is not named.
        Scope::DescendantsOf(root) => (
            format!(
                "WITH RECURSIVE {fam}, {DESCENDANTS_CTE}
                 SELECT c.seq, c.at_ms, c.action, c.key_id,
                        CASE WHEN c.actor_id IN (SELECT id FROM fam)
                               OR c.actor_id IN (SELECT id FROM sub)
                             THEN c.actor_id END,
                        c.new_key_id
                 FROM sub CROSS JOIN changes c ON c.key_id = sub.id
                 WHERE c.seq > ?1
                 ORDER BY c.seq LIMIT ?2",
                fam = family_cte(3)
            ),
            Some(root),
        ),
    };
    let mut stmt = conn.prepare(&text).map_err(sql)?;
    let rows = stmt
        .query_map(
            params![
                from_seq(after),
                limit_sql(limit.saturating_add(1)),
                root.as_ref().map(KeyId::as_str)
            ],
            |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, String>(3)?,
                    r.get::<_, Option<String>>(4)?,
                    r.get::<_, Option<String>>(5)?,
                ))
            },
        )
        .map_err(sql)?;
    let mut events = Vec::new();
    for row in rows {
        let (seq, at_ms, action, key_id, actor, new_key) = row.map_err(sql)?;
        let action = Action::from_name(&action).ok_or_else(|| {
            StoreError::Fatal(format!(
                "corrupt change {seq} in database: action `{action}`"
            ))
        })?;
        events.push(Event {
            seq: to_seq(seq),
            at_ms,
            action,
            key_id: parse_id(&key_id, "key id")?,
            actor_id: actor.map(|a| parse_id(&a, "actor id")).transpose()?,
            new_key_id: new_key.map(|n| parse_id(&n, "key id")).transpose()?,
        });
    }
    let has_more = events.len() > limit;
    events.truncate(limit);
    Ok((events, has_more))
}

/// Reads the log after `after`; a key row that cannot be read becomes a
/// revocation and a change naming no valid id is skipped, each logged and
/// counted in `corrupt`.
pub(super) fn read_changes(
    conn: &Connection,
    after: u64,
    limit: usize,
    corrupt: &std::sync::atomic::AtomicU64,
) -> Result<Vec<Change>, StoreError> {
    let mut stmt = conn
        .prepare(&format!(
            "SELECT c.seq, c.key_id, {KEY_COLUMNS} FROM changes c LEFT JOIN keys k ON k.id = c.key_id
             WHERE c.seq > ?1 ORDER BY c.seq LIMIT ?2"
        ))
        .map_err(sql)?;
    let mut rows = stmt
        .query(params![from_seq(after), limit_sql(limit)])
        .map_err(sql)?;
    let mut changes = Vec::new();
    while let Some(row) = rows.next().map_err(sql)? {
        let seq = to_seq(row.get(0).map_err(sql)?);
        let key_id: String = row.get(1).map_err(sql)?;
        let Ok(id) = KeyId::parse(&key_id) else {
            fail_closed(
                corrupt,
                seq,
                &key_id,
                "the change names no valid key id; skipped",
            );
            continue;
        };
        let present: Option<String> = row.get(2).map_err(sql)?;
        if present.is_none() {
            fail_closed(
                corrupt,
                seq,
                &key_id,
                "the key has no row; treated as revoked",
            );
            changes.push(Change::revoke(seq, id));
            continue;
        }
        match read_key(row, 2).map_err(sql)? {
            Ok(key) if key.record.id() != id => {
                fail_closed(
                    corrupt,
                    seq,
                    &key_id,
                    "the row is another key's; treated as revoked",
                );
                changes.push(Change::revoke(seq, id));
            }
            Ok(key) if key.revoked_at_ms.is_some() => changes.push(Change::revoke(seq, id)),
            Ok(key) => changes.push(Change::upsert(seq, key.record)),
            Err(e) => {
                fail_closed(corrupt, seq, &key_id, &format!("{e}; treated as revoked"));
                changes.push(Change::revoke(seq, id));
            }
        }
    }
    Ok(changes)
}

/// Logs and counts a row the feed could not read.
pub(super) fn fail_closed(
    corrupt: &std::sync::atomic::AtomicU64,
    seq: u64,
    key_id: &str,
    what: &str,
) {
    corrupt.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    tracing::error!(
        seq,
        key_id = %super::super::redacted(key_id),
        "unreadable key row in the change log: {what}"
    );
}

pub(super) fn read_snapshot(
    conn: &mut Connection,
    corrupt: &std::sync::atomic::AtomicU64,
) -> Result<Snapshot, StoreError> {
    let tx = conn.transaction().map_err(sql)?;
    let seq: i64 = tx
        .query_row("SELECT COALESCE(MAX(seq), 0) FROM changes", [], |r| {
            r.get(0)
        })
        .map_err(sql)?;
    let mut records = Vec::new();
    {
        let mut stmt = tx
            .prepare(&format!(
                "SELECT {KEY_COLUMNS} FROM keys k WHERE k.revoked_at_ms IS NULL"
            ))
            .map_err(sql)?;
        let rows = stmt.query_map([], |r| read_key(r, 0)).map_err(sql)?;
        for row in rows {
            match row.map_err(sql)? {
                Ok(key) => records.push(key.record),
                Err(e) => fail_closed(corrupt, to_seq(seq), "-", &format!("{e}; left out")),
            }
        }
    }
    tx.commit().map_err(sql)?;
    Ok(Snapshot {
        records,
        seq: to_seq(seq),
    })
}

pub(super) fn write_last_used(
    conn: &mut Connection,
    batch: &[(KeyId, i64)],
) -> Result<(), StoreError> {
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(sql)?;
    {
        let mut stmt = tx
            .prepare(
                "UPDATE keys SET last_used_at_ms = ?2
                 WHERE id = ?1 AND (last_used_at_ms IS NULL OR last_used_at_ms < ?2)",
            )
            .map_err(sql)?;
        for (id, at_ms) in batch {
            stmt.execute(params![id.as_str(), at_ms]).map_err(sql)?;
        }
    }
    tx.commit().map_err(sql)
}
