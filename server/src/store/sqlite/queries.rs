//! The queries: reads and writes of keys and the change log, each on a
//! connection the caller holds.

use keygate::{Change, KeyId, KeyKind, KeyRecord, KeyRecordParts, Scopes, SecretHash, UnixMillis};
use rusqlite::{params, Connection, ErrorCode, OptionalExtension, TransactionBehavior};

use super::super::{Action, Event, KeyPage, Scope, Snapshot, StoreError, StoredKey};

/// The columns of `keys`, in the order [`read_key`] reads them.
pub(super) const KEY_COLUMNS: &str =
    "k.id, k.kind, k.name, k.secret_hash, k.scopes, k.created_at_ms, \
                           k.expires_at_ms, k.creator_id, k.revoked_at_ms, k.last_used_at_ms, \
                           k.rate_limit, k.rate_period_ms, k.meter_id, k.meter_since_ms";

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

pub(super) fn insert_key(conn: &Connection, record: &KeyRecord) -> Result<(), StoreError> {
    let rate = record.limits().rate;
    let meter = Some(record.meter()).filter(|m| m.id != record.id());
    conn.execute(
        "INSERT INTO keys (id, kind, name, secret_hash, scopes, created_at_ms, expires_at_ms,
                           creator_id, revoked_at_ms, last_used_at_ms, rate_limit,
                           rate_period_ms, meter_id, meter_since_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, NULL, NULL, ?9, ?10, ?11, ?12)",
        params![
            record.id().as_str(),
            record.kind().as_str(),
            record.name(),
            &record.secret_hash().as_bytes()[..],
            i64::from(record.scopes().bits()),
            record.created_at().as_millis(),
            record.expires_at().map(UnixMillis::as_millis),
            record.creator_id().as_ref().map(KeyId::as_str),
            rate.map(|l| l.limit()),
            rate.map(|l| l.period_ms()),
            meter.as_ref().map(|m| m.id.as_str()),
            meter.map(|m| m.since.as_millis()),
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
        let rate = match (
            row.get::<_, Option<i64>>(col(10)).map_err(err)?,
            row.get::<_, Option<i64>>(col(11)).map_err(err)?,
        ) {
            (None, None) => None,
            (Some(limit), Some(period)) => Some(
                keygate::RateLimit::new(
                    u32::try_from(limit).map_err(|_| format!("rate limit {limit}"))?,
                    std::time::Duration::from_millis(
                        u64::try_from(period).map_err(|_| format!("rate period {period}"))?,
                    ),
                )
                .map_err(|e| e.to_string())?,
            ),
            _ => return Err("a rate limit without its period, or the reverse".into()),
        };
        let meter = match (
            row.get::<_, Option<String>>(col(12)).map_err(err)?,
            row.get::<_, Option<i64>>(col(13)).map_err(err)?,
        ) {
            (None, None) => None,
            (Some(meter), Some(since)) => Some(keygate::Meter {
                id: KeyId::parse(&meter).map_err(|e| format!("meter id: {e}"))?,
                since: UnixMillis::from_millis(since),
            }),
            _ => return Err("a meter without its start, or the reverse".into()),
        };
        let record = KeyRecord::from_parts(KeyRecordParts {
            id: key_id,
            kind,
            name,
            secret_hash: SecretHash::from_bytes(hash),
            scopes,
            expires_at: expires_at_ms.map(UnixMillis::from_millis),
            created_at: UnixMillis::from_millis(created_at_ms),
            creator_id,
            limits: keygate::KeyLimits {
                rate,
                credits: None,
            },
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
