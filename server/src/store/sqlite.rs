//! The SQLite store: [`SqliteStore`], schema version 3.
//!
//! Tables:
//!
//! * `keys`: one row per key, in real columns (the secret digest as a
//!   32-byte BLOB, the scopes as [`Scopes::bits`]), revoked rows kept;
//!   indexed by `creator_id` for the attenuating policy's descendant rules;
//!   `rolled_from` names the key a rolled key replaced (version 3), so a
//!   roll's new key inherits the old key's children.
//! * `changes`: the append-only change log, which is also the audit log.
//!   `seq` is an `AUTOINCREMENT` key assigned inside the write transaction;
//!   SQLite serializes writers, so sequence numbers grow with commit order
//!   and are never reused.
//! * `meta`: `schema_version` and `pepper_fingerprint` (hex).
//!
//! Durability: every connection must be in WAL mode with `synchronous`
//! FULL or EXTRA, checked when it opens (it fails to open otherwise), so a
//! write has been fsynced to the WAL before the method returns.
//!
//! Writes go through one connection behind a mutex; reads through another,
//! so they do not wait for a write's fsync; the follower's reads of the log
//! through a third, so a flood of reads does not delay revocations. All the
//! SQLite work runs on tokio's blocking pool.
//!
//! Every write checks, inside its immediate transaction, that the calling
//! key is live: writers are serialized, so a create or roll by a key that a
//! revocation is removing either commits before the revocation (and is
//! cascaded by it) or sees it and fails.
//!
//! A database written by keygate 0.1.0 (`keys(id, record)` with the record
//! as serde JSON) is migrated on open, in one transaction: every record
//! moves into the columns and gets a `created` event (actor null, at its
//! creation time). A database with a newer schema than [`SCHEMA_VERSION`]
//! is refused.

use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};

use async_trait::async_trait;
use keygate::{Change, KeyId, KeyKind, KeyRecord, KeyRecordParts, Scopes, SecretHash};
use rusqlite::{params, Connection, ErrorCode, OptionalExtension, TransactionBehavior};

use super::{Action, Event, KeyPage, Scope, Snapshot, StoreError, StoredKey, SCHEMA_VERSION};

/// How long a connection waits for another writer (another process, e.g.
/// the CLI) before a write fails as unavailable.
const BUSY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// The columns of `keys`, in the order [`read_key`] reads them.
const KEY_COLUMNS: &str = "k.id, k.kind, k.name, k.secret_hash, k.scopes, k.created_at_ms, \
                           k.expires_at_ms, k.creator_id, k.revoked_at_ms, k.last_used_at_ms";

/// Schema version 2 (version 3 adds [`MIGRATE_V3`]).
const SCHEMA_V2: &str = "
CREATE TABLE keys (
    id              TEXT PRIMARY KEY NOT NULL,
    kind            TEXT NOT NULL CHECK (kind IN ('standard', 'restricted')),
    name            TEXT NOT NULL,
    secret_hash     BLOB NOT NULL CHECK (length(secret_hash) = 32),
    scopes          INTEGER NOT NULL,
    created_at_ms   INTEGER NOT NULL,
    expires_at_ms   INTEGER,
    creator_id      TEXT,
    revoked_at_ms   INTEGER,
    last_used_at_ms INTEGER
) WITHOUT ROWID;
CREATE INDEX keys_creator_id ON keys (creator_id);
CREATE TABLE changes (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    at_ms      INTEGER NOT NULL,
    action     TEXT NOT NULL CHECK (action IN ('created', 'revoked', 'rolled')),
    key_id     TEXT NOT NULL,
    actor_id   TEXT,
    new_key_id TEXT
);
CREATE TABLE meta (
    key   TEXT PRIMARY KEY NOT NULL,
    value TEXT NOT NULL
) WITHOUT ROWID;
";

/// Version 2 to 3: `keys.rolled_from`, filled from the log's `rolled` events.
const MIGRATE_V3: &str = "
ALTER TABLE keys ADD COLUMN rolled_from TEXT;
CREATE INDEX keys_rolled_from ON keys (rolled_from);
UPDATE keys SET rolled_from = (
    SELECT c.key_id FROM changes c
    WHERE c.action = 'rolled' AND c.new_key_id = keys.id
    ORDER BY c.seq LIMIT 1
);
";

/// The family of the key bound to `?{n}`: the key and every key rolled into
/// it, transitively (a common table expression named `fam`); empty if the
/// key was itself rolled (its children belong to the key that replaced it).
fn family_cte(n: u8) -> String {
    format!(
        "fam(id) AS (
             SELECT ?{n} WHERE NOT EXISTS (SELECT 1 FROM keys WHERE rolled_from = ?{n})
             UNION
             SELECT k.rolled_from FROM keys k JOIN fam ON k.id = fam.id
             WHERE k.rolled_from IS NOT NULL
         )"
    )
}

/// The keys minted by a member of `fam`, transitively (a common table
/// expression named `d`, after [`family_cte`]). Members of `fam` themselves
/// are excluded by the callers.
const DESCENDANTS_CTE: &str = "d(id) AS (
    SELECT k.id FROM keys k WHERE k.creator_id IN (SELECT id FROM fam)
    UNION
    SELECT k.id FROM keys k JOIN d ON k.creator_id = d.id
)";

/// The SQLite implementation of [`Store`](super::Store).
pub struct SqliteStore {
    inner: Arc<Inner>,
}

struct Inner {
    writer: Mutex<Connection>,
    reader: Mutex<Connection>,
    /// The follower's own connection: the change log and snapshots.
    follower: Mutex<Connection>,
    /// Key rows and log entries the feed could not read (each failed closed).
    corrupt: std::sync::atomic::AtomicU64,
    /// The database path, for messages.
    path: String,
}

/// Maps a SQLite error: contention and I/O trouble are worth a retry;
/// anything else (a corrupt file, a constraint broken, a bug) is not.
fn sql(e: rusqlite::Error) -> StoreError {
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

fn to_seq(seq: i64) -> u64 {
    u64::try_from(seq).unwrap_or(0)
}

fn from_seq(seq: u64) -> i64 {
    i64::try_from(seq).unwrap_or(i64::MAX)
}

fn limit_sql(limit: usize) -> i64 {
    i64::try_from(limit).unwrap_or(i64::MAX)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Fails unless `conn` journals to a WAL and fsyncs it on every commit
/// (`synchronous` FULL = 2 or EXTRA = 3).
fn check_durability(conn: &Connection, path: &str) -> Result<(), StoreError> {
    let mode: String = conn
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .map_err(sql)?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(StoreError::Fatal(format!(
            "database `{path}` is not in WAL mode (journal_mode is `{mode}`)"
        )));
    }
    let sync: i64 = conn
        .query_row("PRAGMA synchronous", [], |r| r.get(0))
        .map_err(sql)?;
    if sync != 2 && sync != 3 {
        return Err(StoreError::Fatal(format!(
            "database `{path}` connection has synchronous={sync}; FULL (2) or EXTRA (3) is required"
        )));
    }
    Ok(())
}

/// Opens one connection in WAL mode with `synchronous=FULL`, and checks it.
fn open_connection(path: &Path, shown: &str) -> Result<Connection, StoreError> {
    let conn = Connection::open(path)
        .map_err(|e| StoreError::Unavailable(format!("cannot open database `{shown}`: {e}")))?;
    let setup = |conn: &Connection| -> Result<(), rusqlite::Error> {
        conn.busy_timeout(BUSY_TIMEOUT)?;
        conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get::<_, String>(0))?;
        conn.execute_batch("PRAGMA synchronous=FULL")
    };
    setup(&conn).map_err(|e| match sql(e) {
        StoreError::Unavailable(m) => {
            StoreError::Unavailable(format!("cannot open database `{shown}`: {m}"))
        }
        other => StoreError::Fatal(format!("cannot open database `{shown}`: {other}")),
    })?;
    check_durability(&conn, shown)?;
    Ok(conn)
}

fn table_exists(conn: &Connection, name: &str) -> Result<bool, StoreError> {
    conn.query_row(
        "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?1)",
        params![name],
        |r| r.get(0),
    )
    .map_err(sql)
}

fn column_exists(conn: &Connection, table: &str, column: &str) -> Result<bool, StoreError> {
    conn.query_row(
        "SELECT EXISTS (SELECT 1 FROM pragma_table_info(?1) WHERE name = ?2)",
        params![table, column],
        |r| r.get(0),
    )
    .map_err(sql)
}

fn meta_get(conn: &Connection, key: &str) -> Result<Option<String>, StoreError> {
    conn.query_row("SELECT value FROM meta WHERE key = ?1", params![key], |r| {
        r.get(0)
    })
    .optional()
    .map_err(sql)
}

fn meta_set(conn: &Connection, key: &str, value: &str) -> Result<(), StoreError> {
    conn.execute(
        "INSERT INTO meta (key, value) VALUES (?1, ?2)
         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        params![key, value],
    )
    .map_err(sql)?;
    Ok(())
}

/// Brings the database to schema version 3, in one immediate transaction:
/// creates a new one, migrates a 0.1.0 or a version-2 one, refuses a newer
/// one.
fn migrate(conn: &mut Connection, path: &str) -> Result<(), StoreError> {
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(sql)?;
    if table_exists(&tx, "meta")? {
        let version = meta_get(&tx, "schema_version")?.ok_or_else(|| {
            StoreError::Fatal(format!(
                "database `{path}` has a meta table without a schema_version"
            ))
        })?;
        let version: i64 = version.parse().map_err(|_| {
            StoreError::Fatal(format!(
                "database `{path}` has an unreadable schema_version `{version}`"
            ))
        })?;
        if version > SCHEMA_VERSION {
            return Err(StoreError::Fatal(format!(
                "database `{path}` has schema version {version}, newer than this keygate \
                 knows ({SCHEMA_VERSION}); upgrade keygate to open it"
            )));
        }
        if version < 2 {
            return Err(StoreError::Fatal(format!(
                "database `{path}` has schema version {version}, which this keygate cannot migrate"
            )));
        }
        if version == 2 {
            tx.execute_batch(MIGRATE_V3).map_err(sql)?;
            meta_set(&tx, "schema_version", &SCHEMA_VERSION.to_string())?;
            tx.commit().map_err(sql)?;
        }
        return Ok(());
    }
    if table_exists(&tx, "keys")? {
        if !column_exists(&tx, "keys", "record")? {
            return Err(StoreError::Fatal(format!(
                "database `{path}` has a `keys` table of an unknown layout"
            )));
        }
        migrate_v1(&tx, path)?;
    } else {
        tx.execute_batch(SCHEMA_V2).map_err(sql)?;
    }
    tx.execute_batch(MIGRATE_V3).map_err(sql)?;
    meta_set(&tx, "schema_version", &SCHEMA_VERSION.to_string())?;
    tx.commit().map_err(sql)
}

/// Moves the 0.1.0 JSON records into the version-2 tables; each gets a
/// `created` event at its creation time, in creation order.
fn migrate_v1(tx: &rusqlite::Transaction<'_>, path: &str) -> Result<(), StoreError> {
    tx.execute_batch("ALTER TABLE keys RENAME TO keys_v1")
        .map_err(sql)?;
    tx.execute_batch(SCHEMA_V2).map_err(sql)?;
    let mut records = Vec::new();
    {
        let mut stmt = tx.prepare("SELECT id, record FROM keys_v1").map_err(sql)?;
        let rows = stmt
            .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))
            .map_err(sql)?;
        for row in rows {
            let (id, json) = row.map_err(sql)?;
            let record: KeyRecord = serde_json::from_str(&json).map_err(|e| {
                StoreError::Fatal(format!(
                    "cannot migrate database `{path}`: key `{id}` has a corrupt record: {e}"
                ))
            })?;
            if record.id().as_str() != id {
                return Err(StoreError::Fatal(format!(
                    "cannot migrate database `{path}`: row `{id}` holds the record of key `{}`",
                    record.id()
                )));
            }
            records.push(record);
        }
    }
    records.sort_by(|a, b| {
        (a.created_at_ms(), a.id().as_str()).cmp(&(b.created_at_ms(), b.id().as_str()))
    });
    for record in &records {
        insert_key(tx, record)?;
        append(
            tx,
            record.created_at_ms(),
            Action::Created,
            record.id(),
            None,
            None,
        )?;
    }
    tx.execute_batch("DROP TABLE keys_v1").map_err(sql)?;
    Ok(())
}

fn insert_key(conn: &Connection, record: &KeyRecord) -> Result<(), StoreError> {
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
            record.created_at_ms(),
            record.expires_at_ms(),
            record.creator_id().as_ref().map(KeyId::as_str),
        ],
    )
    .map_err(sql)?;
    Ok(())
}

/// Appends an event to the log; returns its sequence number.
fn append(
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
fn read_key(row: &rusqlite::Row<'_>, at: usize) -> rusqlite::Result<Result<StoredKey, StoreError>> {
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
        let record = KeyRecord::from_parts(KeyRecordParts {
            id: key_id,
            kind,
            name,
            secret_hash: SecretHash::from_bytes(hash),
            scopes,
            expires_at_ms,
            created_at_ms,
            creator_id,
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

fn parse_id(text: &str, what: &str) -> Result<KeyId, StoreError> {
    KeyId::parse(text)
        .map_err(|e| StoreError::Fatal(format!("corrupt {what} `{text}` in database: {e}")))
}

/// Whether `id` is within `scope`: for `DescendantsOf(root)`, whether a
/// member of `root`'s family (`root` and the keys rolled into it) is on
/// `id`'s chain of creators, and `id` is not itself of that family (walked
/// by primary key; `UNION` stops at a cycle).
fn in_scope(conn: &Connection, id: KeyId, scope: Scope) -> Result<bool, StoreError> {
    match scope {
        Scope::All => Ok(true),
        Scope::DescendantsOf(root) => conn
            .query_row(
                &format!(
                    "WITH RECURSIVE {fam},
                     up(id) AS (
                         SELECT creator_id FROM keys WHERE id = ?1 AND creator_id IS NOT NULL
                         UNION
                         SELECT k.creator_id FROM keys k JOIN up ON k.id = up.id
                         WHERE k.creator_id IS NOT NULL
                     )
                     SELECT EXISTS (SELECT 1 FROM up WHERE id IN (SELECT id FROM fam))
                        AND ?1 NOT IN (SELECT id FROM fam)",
                    fam = family_cte(2)
                ),
                params![id.as_str(), root.as_str()],
                |r| r.get(0),
            )
            .map_err(sql),
    }
}

/// The key `id` was rolled into, if it was.
fn successor(conn: &Connection, id: KeyId) -> Result<Option<String>, StoreError> {
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
fn check_not_rolled(conn: &Connection, id: KeyId, what: &str) -> Result<(), StoreError> {
    match successor(conn, id)? {
        None => Ok(()),
        Some(new) => Err(StoreError::Conflict(format!(
            "key `{id}` was rolled into `{}`; {what} with the new key",
            super::redacted(&new)
        ))),
    }
}

/// Fails with [`StoreError::CallerRevoked`] unless `actor` is a known key,
/// not revoked, and not expired at `at_ms`. Run inside a write transaction.
fn check_live(conn: &Connection, actor: KeyId, at_ms: i64) -> Result<(), StoreError> {
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

fn get_key(conn: &Connection, id: KeyId) -> Result<Option<StoredKey>, StoreError> {
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
fn live_in_scope(conn: &Connection, id: KeyId, scope: Scope) -> Result<StoredKey, StoreError> {
    match get_key(conn, id)? {
        Some(key) if key.revoked_at_ms.is_none() && in_scope(conn, id, scope)? => Ok(key),
        _ => Err(StoreError::NotFound),
    }
}

/// Every key minted from `root`'s family, transitively (revoked ones
/// included: they still link their children), in id order.
fn descendants(conn: &Connection, root: KeyId) -> Result<Vec<KeyId>, StoreError> {
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

fn revoke_tx(
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
        check_live(&tx, actor, at_ms)?;
    }
    live_in_scope(&tx, id, scope)?;
    let mut targets = vec![id];
    if cascade {
        targets.extend(descendants(&tx, id)?);
    }
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

fn roll_tx(
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
        check_live(&tx, actor, at_ms)?;
    }
    let current = live_in_scope(&tx, old.id(), scope)?;
    if actor == Some(old.id()) {
        check_live(&tx, old.id(), at_ms)?;
    }
    check_not_rolled(&tx, old.id(), "roll")?;
    super::check_roll_fits(old, new, current.record.expires_at_ms())?;
    tx.execute(
        "UPDATE keys SET expires_at_ms = ?2 WHERE id = ?1",
        params![old.id().as_str(), old.expires_at_ms()],
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

fn list_keys(
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
                 SELECT {KEY_COLUMNS} FROM keys k JOIN d ON k.id = d.id
                 WHERE k.revoked_at_ms IS NULL AND k.id > ?1
                   AND k.id NOT IN (SELECT id FROM fam)
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

fn read_events(
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
        Scope::DescendantsOf(root) => (
            format!(
                "WITH RECURSIVE {fam}, {DESCENDANTS_CTE}
                 SELECT seq, at_ms, action, key_id, actor_id, new_key_id FROM changes
                 WHERE seq > ?1
                   AND key_id IN (SELECT id FROM d WHERE id NOT IN (SELECT id FROM fam))
                 ORDER BY seq LIMIT ?2",
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
fn read_changes(
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
fn fail_closed(corrupt: &std::sync::atomic::AtomicU64, seq: u64, key_id: &str, what: &str) {
    corrupt.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    tracing::error!(
        seq,
        key_id = %super::redacted(key_id),
        "unreadable key row in the change log: {what}"
    );
}

fn read_snapshot(
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

fn write_last_used(conn: &mut Connection, batch: &[(KeyId, i64)]) -> Result<(), StoreError> {
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

fn pepper_tx(conn: &mut Connection, fingerprint: &[u8; 32], path: &str) -> Result<(), StoreError> {
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(sql)?;
    let want = hex(fingerprint);
    match meta_get(&tx, "pepper_fingerprint")? {
        Some(stored) if stored == want => Ok(()),
        Some(_) => Err(StoreError::Fatal(format!(
            "the pepper file does not match this database's pepper (database `{path}`); \
             start with the pepper file that was created with this database"
        ))),
        None => {
            meta_set(&tx, "pepper_fingerprint", &want)?;
            tx.commit().map_err(sql)
        }
    }
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path`: a writer and a
    /// reader connection, both checked for WAL and `synchronous` FULL or
    /// EXTRA; creates schema version 2, migrates a 0.1.0 database, or
    /// refuses a newer one.
    pub fn open(path: &Path) -> Result<SqliteStore, StoreError> {
        let shown = path.display().to_string();
        let mut writer = open_connection(path, &shown)?;
        migrate(&mut writer, &shown)?;
        let reader = open_connection(path, &shown)?;
        let follower = open_connection(path, &shown)?;
        Ok(SqliteStore {
            inner: Arc::new(Inner {
                writer: Mutex::new(writer),
                reader: Mutex::new(reader),
                follower: Mutex::new(follower),
                corrupt: std::sync::atomic::AtomicU64::new(0),
                path: shown,
            }),
        })
    }

    /// Runs `f` on the writer connection, on the blocking pool.
    async fn write<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection, &str) -> Result<T, StoreError> + Send + 'static,
    {
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || {
            let mut conn = inner.writer.lock().unwrap_or_else(PoisonError::into_inner);
            f(&mut conn, &inner.path)
        })
        .await
        .map_err(|e| StoreError::Unavailable(format!("store task failed: {e}")))?
    }

    /// Runs `f` on the follower's connection, on the blocking pool.
    async fn follow<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection, &std::sync::atomic::AtomicU64) -> Result<T, StoreError>
            + Send
            + 'static,
    {
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || {
            let mut conn = inner
                .follower
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            f(&mut conn, &inner.corrupt)
        })
        .await
        .map_err(|e| StoreError::Unavailable(format!("store task failed: {e}")))?
    }

    /// Runs `f` on the reader connection, on the blocking pool.
    async fn read<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || {
            let mut conn = inner.reader.lock().unwrap_or_else(PoisonError::into_inner);
            f(&mut conn)
        })
        .await
        .map_err(|e| StoreError::Unavailable(format!("store task failed: {e}")))?
    }
}

#[async_trait]
impl super::Store for SqliteStore {
    async fn create(
        &self,
        record: &KeyRecord,
        actor: Option<KeyId>,
        at_ms: i64,
    ) -> Result<u64, StoreError> {
        let record = record.clone();
        self.write(move |conn, _| {
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(sql)?;
            for caller in [actor, record.creator_id()].into_iter().flatten() {
                check_live(&tx, caller, at_ms)?;
            }
            if let Some(creator) = record.creator_id() {
                check_not_rolled(&tx, creator, "mint")?;
            }
            insert_key(&tx, &record)?;
            let seq = append(&tx, at_ms, Action::Created, record.id(), actor, None)?;
            tx.commit().map_err(sql)?;
            Ok(seq)
        })
        .await
    }

    async fn create_first(
        &self,
        record: &KeyRecord,
        at_ms: i64,
    ) -> Result<Option<u64>, StoreError> {
        let record = record.clone();
        self.write(move |conn, _| {
            // IMMEDIATE takes the database's write lock first: no other
            // process can insert between the count and the insert.
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(sql)?;
            let keys: i64 = tx
                .query_row("SELECT count(*) FROM keys", [], |row| row.get(0))
                .map_err(sql)?;
            if keys != 0 {
                return Ok(None);
            }
            insert_key(&tx, &record)?;
            let seq = append(&tx, at_ms, Action::Created, record.id(), None, None)?;
            tx.commit().map_err(sql)?;
            Ok(Some(seq))
        })
        .await
    }

    async fn revoke(
        &self,
        id: KeyId,
        scope: Scope,
        cascade: bool,
        actor: Option<KeyId>,
        at_ms: i64,
    ) -> Result<Vec<(u64, KeyId)>, StoreError> {
        self.write(move |conn, _| revoke_tx(conn, id, scope, cascade, actor, at_ms))
            .await
    }

    async fn roll(
        &self,
        old: &KeyRecord,
        new: &KeyRecord,
        scope: Scope,
        actor: Option<KeyId>,
        at_ms: i64,
    ) -> Result<(u64, u64), StoreError> {
        let (old, new) = (old.clone(), new.clone());
        self.write(move |conn, _| roll_tx(conn, &old, &new, scope, actor, at_ms))
            .await
    }

    async fn get(&self, id: KeyId, scope: Scope) -> Result<Option<StoredKey>, StoreError> {
        self.read(move |conn| match get_key(conn, id)? {
            Some(key) if in_scope(conn, id, scope)? => Ok(Some(key)),
            _ => Ok(None),
        })
        .await
    }

    async fn list(
        &self,
        scope: Scope,
        starting_after: Option<KeyId>,
        limit: usize,
    ) -> Result<KeyPage, StoreError> {
        self.read(move |conn| list_keys(conn, scope, starting_after, limit))
            .await
    }

    async fn events(
        &self,
        after: u64,
        limit: usize,
        scope: Scope,
    ) -> Result<(Vec<Event>, bool), StoreError> {
        self.read(move |conn| read_events(conn, after, limit, scope))
            .await
    }

    async fn changes_since(&self, after: u64, limit: usize) -> Result<Vec<Change>, StoreError> {
        self.follow(move |conn, corrupt| read_changes(conn, after, limit, corrupt))
            .await
    }

    async fn snapshot(&self) -> Result<Snapshot, StoreError> {
        self.follow(read_snapshot).await
    }

    fn corrupt_rows(&self) -> u64 {
        self.inner
            .corrupt
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    async fn record_last_used(&self, batch: &[(KeyId, i64)]) -> Result<(), StoreError> {
        if batch.is_empty() {
            return Ok(());
        }
        let batch = batch.to_vec();
        self.write(move |conn, _| write_last_used(conn, &batch))
            .await
    }

    async fn count(&self) -> Result<u64, StoreError> {
        self.read(|conn| {
            conn.query_row("SELECT COUNT(*) FROM keys", [], |r| r.get::<_, i64>(0))
                .map(to_seq)
                .map_err(sql)
        })
        .await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.read(|conn| {
            conn.query_row("SELECT 1", [], |r| r.get::<_, i64>(0))
                .map(drop)
                .map_err(sql)
        })
        .await
    }

    async fn check_pepper(&self, fingerprint: [u8; 32]) -> Result<(), StoreError> {
        self.write(move |conn, path| pepper_tx(conn, &fingerprint, path))
            .await
    }
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]
mod tests {
    use super::super::Store as _;
    use super::*;
    use keygate::{ChangeOp, Keyring, MintRequest, Pepper};

    const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");

    fn pepper() -> Pepper {
        Pepper::from_bytes(&[7; 32])
    }

    fn new_store() -> (tempfile::TempDir, SqliteStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("k.db")).unwrap();
        (dir, store)
    }

    /// A restricted key (objects:read) minted at `at` by `creator`.
    fn record(creator: Option<&KeyRecord>, at: i64) -> KeyRecord {
        let mut req = MintRequest::restricted(
            Some("k"),
            "objects:read".parse().unwrap(),
            None,
            keygate::UnixMillis::from_millis(at),
        )
        .unwrap();
        if let Some(c) = creator {
            req = req.created_by(&keygate::testing::principal_of(c));
        }
        keygate::mint(
            &pepper(),
            &req,
            &mut keygate::os_entropy(),
            keygate::UnixMillis::from_millis(at),
        )
        .into_parts()
        .0
    }

    fn raw(store: &SqliteStore) -> std::sync::MutexGuard<'_, Connection> {
        store.inner.writer.lock().unwrap()
    }

    #[tokio::test]
    async fn create_first_stores_only_into_an_empty_store() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("k.db")).unwrap();
        let a = record(None, 5);
        let b = record(None, 6);
        assert_eq!(store.create_first(&a, 5).await.unwrap(), Some(1));
        assert_eq!(store.create_first(&b, 6).await.unwrap(), None);
        assert_eq!(store.count().await.unwrap(), 1);
        assert!(store.get(a.id(), Scope::All).await.unwrap().is_some());
        assert!(store.get(b.id(), Scope::All).await.unwrap().is_none());
        // One change: the first key's creation.
        let changes = store.changes_since(0, 10).await.unwrap();
        assert_eq!(changes.len(), 1);
    }

    #[tokio::test]
    async fn create_get_count_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.db");
        let store = SqliteStore::open(&path).unwrap();
        assert_eq!(store.count().await.unwrap(), 0);
        store.ping().await.unwrap();
        let std_req =
            MintRequest::standard(Some("s"), Some(9_000), keygate::UnixMillis::from_millis(5))
                .unwrap();
        let a = keygate::mint(
            &pepper(),
            &std_req,
            &mut keygate::os_entropy(),
            keygate::UnixMillis::from_millis(5),
        )
        .into_parts()
        .0;
        let b = record(Some(&a), 6);
        assert_eq!(store.create(&a, None, 5).await.unwrap(), 1);
        assert_eq!(store.create(&b, Some(a.id()), 6).await.unwrap(), 2);
        // A duplicate id is a bug, not a retry.
        assert!(matches!(
            store.create(&a, None, 7).await,
            Err(StoreError::Fatal(_))
        ));
        let got = store.get(b.id(), Scope::All).await.unwrap().unwrap();
        assert_eq!(got.record, b);
        assert_eq!((got.revoked_at_ms, got.last_used_at_ms), (None, None));
        assert_eq!(store.count().await.unwrap(), 2);
        drop(store);
        let again = SqliteStore::open(&path).unwrap();
        assert_eq!(
            again.get(a.id(), Scope::All).await.unwrap().unwrap().record,
            a
        );
        let snap = again.snapshot().await.unwrap();
        assert_eq!(snap.seq, 2);
        assert_eq!(snap.records.len(), 2);
        assert_eq!(
            meta_get(&raw(&again), "schema_version").unwrap().as_deref(),
            Some("3")
        );
    }

    #[test]
    fn every_connection_is_wal_and_synchronous_full() {
        let (_dir, store) = new_store();
        for conn in [&store.inner.writer, &store.inner.reader] {
            let conn = conn.lock().unwrap();
            let mode: String = conn
                .query_row("PRAGMA journal_mode", [], |r| r.get(0))
                .unwrap();
            let sync: i64 = conn
                .query_row("PRAGMA synchronous", [], |r| r.get(0))
                .unwrap();
            assert_eq!((mode.as_str(), sync), ("wal", 2));
            check_durability(&conn, "x").unwrap();
            conn.execute_batch("PRAGMA synchronous=NORMAL").unwrap();
            let e = check_durability(&conn, "x").unwrap_err();
            assert!(e.to_string().contains("synchronous=1"), "{e}");
            conn.execute_batch("PRAGMA synchronous=EXTRA").unwrap();
            check_durability(&conn, "x").unwrap();
        }
        // A file that is no database fails to open, naming it.
        let dir = tempfile::tempdir().unwrap();
        let junk = dir.path().join("junk.db");
        std::fs::write(&junk, vec![b'x'; 4096]).unwrap();
        let e = SqliteStore::open(&junk).err().unwrap();
        assert!(matches!(e, StoreError::Fatal(_)), "{e:?}");
        assert!(e.to_string().contains("junk.db"), "{e}");
        // A database that cannot journal to a WAL (in memory) fails to open.
        let e = SqliteStore::open(Path::new(":memory:")).err().unwrap();
        assert!(e.to_string().contains("not in WAL mode"), "{e}");
    }

    // The writer's lock is held across the reads on purpose: they must not
    // need it.
    #[allow(clippy::await_holding_lock)]
    #[tokio::test]
    async fn reads_do_not_wait_for_a_write_in_progress() {
        let (_dir, store) = new_store();
        let [a, ..] = family(&store).await;
        let late = record(None, 99);
        // Hold the writer, mid-transaction, with an uncommitted insert.
        let mut writer = raw(&store);
        let tx = writer
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .unwrap();
        insert_key(&tx, &late).unwrap();
        let read = tokio::time::timeout(std::time::Duration::from_secs(5), async {
            (
                store.get(a.id(), Scope::All).await.unwrap(),
                store.get(late.id(), Scope::All).await.unwrap(),
                store.snapshot().await.unwrap().seq,
            )
        })
        .await
        .expect("a read waited for the writer");
        assert!(read.0.is_some());
        assert!(read.1.is_none(), "an uncommitted row is invisible");
        assert_eq!(read.2, 5);
        tx.commit().unwrap();
        drop(writer);
        assert!(store.get(late.id(), Scope::All).await.unwrap().is_some());
    }

    #[tokio::test]
    async fn list_pages_in_id_order_without_revoked_keys() {
        let (_dir, store) = new_store();
        let mut ids = Vec::new();
        for i in 0..25 {
            let r = record(None, i);
            store.create(&r, None, i).await.unwrap();
            ids.push(r.id());
        }
        ids.sort_by(|a, b| a.as_str().cmp(b.as_str()));
        let gone = ids.remove(3);
        store
            .revoke(gone, Scope::All, false, None, 100)
            .await
            .unwrap();
        let mut seen = Vec::new();
        let mut after = None;
        let mut pages = Vec::new();
        loop {
            let page = store.list(Scope::All, after, 10).await.unwrap();
            pages.push((page.keys.len(), page.has_more));
            seen.extend(page.keys.iter().map(|k| k.record.id()));
            after = seen.last().copied();
            if !page.has_more {
                break;
            }
        }
        assert_eq!(pages, vec![(10, true), (10, true), (4, false)]);
        assert_eq!(seen, ids);
        // Exactly `limit` left: no more after it.
        let page = store.list(Scope::All, Some(ids[13]), 10).await.unwrap();
        assert_eq!((page.keys.len(), page.has_more), (10, false));
        // The revoked key is still readable by get.
        let g = store.get(gone, Scope::All).await.unwrap().unwrap();
        assert_eq!(g.revoked_at_ms, Some(100));
    }

    /// a minted b and d; b minted c; e stands alone.
    async fn family(store: &SqliteStore) -> [KeyRecord; 5] {
        let a = record(None, 1);
        let b = record(Some(&a), 2);
        let c = record(Some(&b), 3);
        let d = record(Some(&a), 4);
        let e = record(None, 5);
        for (r, actor) in [
            (&a, None),
            (&b, Some(a.id())),
            (&c, Some(b.id())),
            (&d, Some(a.id())),
            (&e, None),
        ] {
            store.create(r, actor, r.created_at_ms()).await.unwrap();
        }
        [a, b, c, d, e]
    }

    fn sorted(mut ids: Vec<KeyId>) -> Vec<KeyId> {
        ids.sort_by(|x, y| x.as_str().cmp(y.as_str()));
        ids
    }

    async fn listed(store: &SqliteStore, scope: Scope) -> Vec<KeyId> {
        let page = store.list(scope, None, 100).await.unwrap();
        page.keys.iter().map(|k| k.record.id()).collect()
    }

    #[tokio::test]
    async fn descendant_scoping() {
        let (_dir, store) = new_store();
        let [a, b, c, d, e] = family(&store).await;
        let of_a = Scope::DescendantsOf(a.id());
        assert_eq!(
            listed(&store, of_a).await,
            sorted(vec![b.id(), c.id(), d.id()])
        );
        assert_eq!(
            listed(&store, Scope::DescendantsOf(b.id())).await,
            vec![c.id()]
        );
        assert!(listed(&store, Scope::DescendantsOf(e.id()))
            .await
            .is_empty());
        // get: a key is not its own descendant; a stranger is out of scope.
        assert!(store.get(c.id(), of_a).await.unwrap().is_some());
        assert!(store.get(a.id(), of_a).await.unwrap().is_none());
        assert!(store.get(e.id(), of_a).await.unwrap().is_none());
        assert!(store
            .get(d.id(), Scope::DescendantsOf(b.id()))
            .await
            .unwrap()
            .is_none());
        // revoke and roll outside the scope: NotFound, nothing written.
        let of_b = Scope::DescendantsOf(b.id());
        assert_eq!(
            store.revoke(d.id(), of_b, false, Some(b.id()), 9).await,
            Err(StoreError::NotFound)
        );
        let rolled = keygate::roll(
            &pepper(),
            &d,
            core::time::Duration::from_millis(0),
            &mut keygate::os_entropy(),
            keygate::UnixMillis::from_millis(9),
        )
        .unwrap();
        assert_eq!(
            store
                .roll(rolled.old(), rolled.new_key().record(), of_b, None, 9)
                .await,
            Err(StoreError::NotFound)
        );
        assert_eq!(store.events(0, 100, Scope::All).await.unwrap().0.len(), 5);
        // A revoked key still links its children to their grandparent.
        store
            .revoke(b.id(), of_a, false, Some(a.id()), 10)
            .await
            .unwrap();
        assert_eq!(listed(&store, of_a).await, sorted(vec![c.id(), d.id()]));
        assert!(store.get(c.id(), of_a).await.unwrap().is_some());
        // Within scope, revoke works.
        assert_eq!(
            store
                .revoke(c.id(), of_a, false, Some(a.id()), 11)
                .await
                .unwrap(),
            vec![(7, c.id())]
        );
    }

    #[tokio::test]
    async fn cascade_revokes_exactly_the_live_descendants() {
        let (_dir, store) = new_store();
        let [a, b, c, d, e] = family(&store).await;
        // Without cascade: only the key.
        assert_eq!(
            store
                .revoke(b.id(), Scope::All, false, None, 10)
                .await
                .unwrap(),
            vec![(6, b.id())]
        );
        assert_eq!(
            store.revoke(b.id(), Scope::All, true, None, 11).await,
            Err(StoreError::NotFound)
        );
        // Cascade from a: a first, then its live descendants in id order
        // (b is already revoked and gets no second event), each with its
        // own event; e is untouched.
        let revoked = store
            .revoke(a.id(), Scope::All, true, Some(e.id()), 12)
            .await
            .unwrap();
        let ids: Vec<KeyId> = revoked.iter().map(|(_, id)| *id).collect();
        assert_eq!(ids[0], a.id());
        assert_eq!(ids[1..].to_vec(), sorted(vec![c.id(), d.id()]));
        assert_eq!(
            revoked.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
            vec![7, 8, 9]
        );
        let (events, more) = store.events(6, 100, Scope::All).await.unwrap();
        assert!(!more);
        assert_eq!(events.len(), 3);
        for (ev, (seq, id)) in events.iter().zip(&revoked) {
            assert_eq!(
                (
                    ev.seq,
                    ev.action,
                    ev.key_id,
                    ev.actor_id,
                    ev.at_ms,
                    ev.new_key_id
                ),
                (*seq, Action::Revoked, *id, Some(e.id()), 12, None)
            );
        }
        assert_eq!(listed(&store, Scope::All).await, vec![e.id()]);
        let snap = store.snapshot().await.unwrap();
        assert_eq!((snap.records, snap.seq), (vec![e.clone()], 9));
    }

    #[tokio::test]
    async fn roll_writes_both_keys_and_two_events() {
        let (_dir, store) = new_store();
        let [a, b, ..] = family(&store).await;
        let rolled = keygate::roll(
            &pepper(),
            &b,
            core::time::Duration::from_millis(1_000),
            &mut keygate::os_entropy(),
            keygate::UnixMillis::from_millis(50),
        )
        .unwrap();
        let (new_key, old) = rolled.into_parts();
        let new = new_key.record().clone();
        let seqs = store
            .roll(&old, &new, Scope::DescendantsOf(a.id()), Some(a.id()), 50)
            .await
            .unwrap();
        assert_eq!(seqs, (6, 7));
        let stored_old = store.get(b.id(), Scope::All).await.unwrap().unwrap();
        assert_eq!(stored_old.record.expires_at_ms(), Some(1_050));
        assert_eq!(stored_old.record, old);
        assert_eq!(
            store
                .get(new.id(), Scope::All)
                .await
                .unwrap()
                .unwrap()
                .record,
            new
        );
        assert_eq!(new.creator_id(), Some(a.id()));
        let (events, more) = store.events(5, 10, Scope::All).await.unwrap();
        assert!(!more);
        assert_eq!(
            events,
            vec![
                Event {
                    seq: 6,
                    at_ms: 50,
                    action: Action::Created,
                    key_id: new.id(),
                    actor_id: Some(a.id()),
                    new_key_id: None
                },
                Event {
                    seq: 7,
                    at_ms: 50,
                    action: Action::Rolled,
                    key_id: b.id(),
                    actor_id: Some(a.id()),
                    new_key_id: Some(new.id())
                },
            ]
        );
        // The feed carries the shortened old record.
        let changes = store.changes_since(6, 10).await.unwrap();
        assert_eq!(changes, vec![Change::upsert(7, old.clone())]);
        // A second roll computed from the stale (longer-lived) record is
        // refused: it would lengthen the key's life again.
        let stale = keygate::roll(
            &pepper(),
            &b,
            core::time::Duration::from_millis(5_000),
            &mut keygate::os_entropy(),
            keygate::UnixMillis::from_millis(60),
        )
        .unwrap();
        assert!(matches!(
            store
                .roll(stale.old(), stale.new_key().record(), Scope::All, None, 60)
                .await,
            Err(StoreError::Conflict(_))
        ));
        assert_eq!(
            store.get(b.id(), Scope::All).await.unwrap().unwrap().record,
            old
        );
        // A revoked key does not roll.
        store
            .revoke(b.id(), Scope::All, false, None, 70)
            .await
            .unwrap();
        let again = keygate::roll(
            &pepper(),
            &old,
            core::time::Duration::from_millis(0),
            &mut keygate::os_entropy(),
            keygate::UnixMillis::from_millis(80),
        )
        .unwrap();
        assert_eq!(
            store
                .roll(again.old(), again.new_key().record(), Scope::All, None, 80)
                .await,
            Err(StoreError::NotFound)
        );
    }

    #[tokio::test]
    async fn events_page_with_has_more() {
        let (_dir, store) = new_store();
        family(&store).await;
        let (first, more) = store.events(0, 2, Scope::All).await.unwrap();
        assert_eq!(first.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![1, 2]);
        assert!(more);
        let (rest, more) = store.events(2, 3, Scope::All).await.unwrap();
        assert_eq!(
            rest.iter().map(|e| e.seq).collect::<Vec<_>>(),
            vec![3, 4, 5]
        );
        assert!(!more);
        assert!(rest.iter().all(|e| e.action == Action::Created));
        let (none, more) = store.events(5, 3, Scope::All).await.unwrap();
        assert!(none.is_empty() && !more);
    }

    #[tokio::test]
    async fn changes_since_builds_from_the_current_row() {
        let (_dir, store) = new_store();
        let [a, b, ..] = family(&store).await;
        store
            .revoke(b.id(), Scope::All, false, None, 9)
            .await
            .unwrap();
        let changes = store.changes_since(0, 100).await.unwrap();
        assert_eq!(changes.len(), 6);
        // b's creation (seq 2) now reads as a revocation, as does seq 6.
        assert_eq!(changes[1], Change::revoke(2, b.id()));
        assert_eq!(changes[5], Change::revoke(6, b.id()));
        assert_eq!(changes[0], Change::upsert(1, a.clone()));
        assert_eq!(store.changes_since(0, 2).await.unwrap().len(), 2);
        assert!(store.changes_since(6, 100).await.unwrap().is_empty());
        // A keyring fed the whole log ends where a snapshot starts.
        let mut keyring = Keyring::new(pepper());
        for change in changes {
            keyring.apply(change).unwrap();
        }
        let snap = store.snapshot().await.unwrap();
        assert_eq!(keyring.last_seq(), snap.seq);
        assert_eq!(keyring.len(), snap.records.len());
        assert!(keyring.is_revoked(&b.id()));
        assert!(!matches!(
            store.changes_since(0, 1).await.unwrap()[0].op,
            ChangeOp::Revoke(_)
        ));
    }

    #[tokio::test]
    async fn last_used_never_goes_back() {
        let (_dir, store) = new_store();
        let [a, b, ..] = family(&store).await;
        store
            .record_last_used(&[(a.id(), 100), (b.id(), 50)])
            .await
            .unwrap();
        store
            .record_last_used(&[(a.id(), 90), (b.id(), 60), (a.id(), 80)])
            .await
            .unwrap();
        store.record_last_used(&[]).await.unwrap();
        let get = |id| {
            let store = &store;
            async move {
                store
                    .get(id, Scope::All)
                    .await
                    .unwrap()
                    .unwrap()
                    .last_used_at_ms
            }
        };
        assert_eq!(get(a.id()).await, Some(100));
        assert_eq!(get(b.id()).await, Some(60));
        // Not a change: the log is untouched.
        assert_eq!(store.events(0, 100, Scope::All).await.unwrap().0.len(), 5);
    }

    #[tokio::test]
    async fn pepper_fingerprint_is_stored_then_checked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.db");
        let store = SqliteStore::open(&path).unwrap();
        let fp = pepper().fingerprint();
        store.check_pepper(fp).await.unwrap();
        store.check_pepper(fp).await.unwrap();
        assert_eq!(
            meta_get(&raw(&store), "pepper_fingerprint").unwrap(),
            Some(hex(&fp))
        );
        drop(store);
        let store = SqliteStore::open(&path).unwrap();
        let other = Pepper::from_bytes(&[8; 32]).fingerprint();
        match store.check_pepper(other).await {
            Err(StoreError::Fatal(m)) => {
                assert!(m.contains("pepper file does not match"), "{m}");
            }
            other => panic!("expected a fatal mismatch, got {other:?}"),
        }
        store.check_pepper(fp).await.unwrap();
    }

    #[tokio::test]
    async fn a_corrupt_row_fails_closed_in_the_feed_and_is_fatal_elsewhere() {
        let (_dir, store) = new_store();
        let [a, b, c, ..] = family(&store).await;
        raw(&store)
            .execute(
                "UPDATE keys SET scopes = 2 WHERE id = ?1",
                params![b.id().as_str()],
            )
            .unwrap();
        // A direct read names the key and the broken rule.
        for result in [
            store.get(b.id(), Scope::All).await.map(drop),
            store.list(Scope::All, None, 10).await.map(drop),
        ] {
            match result {
                Err(StoreError::Fatal(m)) => {
                    assert!(m.contains(b.id().as_str()), "{m}");
                    assert!(m.contains("scope bits"), "{m}");
                }
                other => panic!("expected fatal, got {other:?}"),
            }
        }
        // The feed goes on: b's change is a revocation, the rest as stored.
        let changes = store.changes_since(0, 100).await.unwrap();
        assert_eq!(changes.len(), 5);
        assert_eq!(changes[1], Change::revoke(2, b.id()));
        assert_eq!(changes[2], Change::upsert(3, c.clone()));
        assert_eq!(store.corrupt_rows(), 1);
        // A snapshot leaves it out.
        let snap = store.snapshot().await.unwrap();
        assert_eq!(snap.records.len(), 4);
        assert!(snap.records.iter().all(|r| r.id() != b.id()));
        assert_eq!(store.corrupt_rows(), 2);
        // A change naming no key row, and one naming no valid id.
        raw(&store)
            .execute_batch(
                "INSERT INTO changes (at_ms, action, key_id) VALUES (9, 'created', 'zzzzzzzzzzzzzzzz');
                 INSERT INTO changes (at_ms, action, key_id) VALUES (9, 'created', 'not an id');",
            )
            .unwrap();
        let tail = store.changes_since(5, 100).await.unwrap();
        let ghost = KeyId::parse("zzzzzzzzzzzzzzzz").unwrap();
        assert_eq!(tail, vec![Change::revoke(6, ghost)]);
        assert_eq!(store.corrupt_rows(), 4);
        // A standard row without all scopes breaks `from_parts`.
        raw(&store)
            .execute(
                "UPDATE keys SET kind = 'standard', scopes = 1 WHERE id = ?1",
                params![a.id().as_str()],
            )
            .unwrap();
        let e = store.get(a.id(), Scope::All).await.unwrap_err();
        assert!(e.to_string().contains(a.id().as_str()), "{e}");
        assert_eq!(
            store.changes_since(0, 1).await.unwrap(),
            vec![Change::revoke(1, a.id())]
        );
    }

    #[tokio::test]
    async fn a_roll_passes_the_old_keys_children_to_the_new_key() {
        let (_dir, store) = new_store();
        // a minted b and d; b minted c.
        let [a, b, c, d, _e] = family(&store).await;
        let (new_a, old_a) = keygate::roll(
            &pepper(),
            &a,
            core::time::Duration::from_millis(100),
            &mut keygate::os_entropy(),
            keygate::UnixMillis::from_millis(10),
        )
        .unwrap()
        .into_parts();
        store
            .roll(&old_a, new_a.record(), Scope::All, None, 10)
            .await
            .unwrap();
        let a2 = new_a.record().id();
        // The new key sees the old key's subtree; the old key is not in it.
        assert_eq!(
            listed(&store, Scope::DescendantsOf(a2)).await,
            sorted(vec![b.id(), c.id(), d.id()])
        );
        assert!(store
            .get(c.id(), Scope::DescendantsOf(a2))
            .await
            .unwrap()
            .is_some());
        assert!(store
            .get(a.id(), Scope::DescendantsOf(a2))
            .await
            .unwrap()
            .is_none());
        assert!(store
            .get(a2, Scope::DescendantsOf(a2))
            .await
            .unwrap()
            .is_none());
        // The old key, in its overlap, has no subtree, mints nothing and
        // rolls no more; the new key mints into the inherited subtree.
        assert!(listed(&store, Scope::DescendantsOf(a.id()))
            .await
            .is_empty());
        assert!(matches!(
            store.create(&record(Some(&a), 11), Some(a.id()), 11).await,
            Err(StoreError::Conflict(m)) if m.contains("was rolled into")
        ));
        let (again, old_again) = keygate::roll(
            &pepper(),
            &old_a,
            core::time::Duration::from_millis(5),
            &mut keygate::os_entropy(),
            keygate::UnixMillis::from_millis(11),
        )
        .unwrap()
        .into_parts();
        assert!(matches!(
            store
                .roll(&old_again, again.record(), Scope::All, None, 11)
                .await,
            Err(StoreError::Conflict(_))
        ));
        let late = record(Some(new_a.record()), 11);
        store.create(&late, Some(a2), 11).await.unwrap();
        // The events of the subtree, and nothing else.
        let (events, _) = store
            .events(0, 100, Scope::DescendantsOf(a2))
            .await
            .unwrap();
        let keys: std::collections::BTreeSet<KeyId> = events.iter().map(|e| e.key_id).collect();
        assert_eq!(
            keys,
            [b.id(), c.id(), d.id(), late.id()].into_iter().collect()
        );
        // Revoking the new key cascades to all of them, and not to the old
        // key (which ends with its overlap).
        let revoked: Vec<KeyId> = store
            .revoke(a2, Scope::All, true, None, 12)
            .await
            .unwrap()
            .into_iter()
            .map(|(_, id)| id)
            .collect();
        assert_eq!(revoked[0], a2);
        assert_eq!(
            revoked[1..].to_vec(),
            sorted(vec![b.id(), c.id(), d.id(), late.id()])
        );
    }

    #[tokio::test]
    async fn writes_by_a_revoked_or_expired_caller_are_refused() {
        let (_dir, store) = new_store();
        let [a, b, c, ..] = family(&store).await;
        store
            .revoke(b.id(), Scope::All, false, None, 10)
            .await
            .unwrap();
        // Create, roll and revoke by the revoked b: 401's error.
        assert_eq!(
            store.create(&record(Some(&b), 11), Some(b.id()), 11).await,
            Err(StoreError::CallerRevoked)
        );
        let (n, o) = keygate::roll(
            &pepper(),
            &c,
            core::time::Duration::from_millis(5),
            &mut keygate::os_entropy(),
            keygate::UnixMillis::from_millis(11),
        )
        .unwrap()
        .into_parts();
        assert_eq!(
            store
                .roll(&o, n.record(), Scope::All, Some(b.id()), 11)
                .await,
            Err(StoreError::CallerRevoked)
        );
        assert_eq!(
            store
                .revoke(c.id(), Scope::All, false, Some(b.id()), 11)
                .await,
            Err(StoreError::CallerRevoked)
        );
        // An unknown caller, and one past its expiry.
        let ghost = KeyId::parse("zzzzzzzzzzzzzzzz").unwrap();
        assert_eq!(
            store
                .revoke(c.id(), Scope::All, false, Some(ghost), 11)
                .await,
            Err(StoreError::CallerRevoked)
        );
        let mortal = {
            let req = MintRequest::restricted(
                Some("m"),
                "objects:read".parse().unwrap(),
                Some(20),
                keygate::UnixMillis::from_millis(12),
            )
            .unwrap()
            .created_by(&keygate::testing::principal_of(&a));
            keygate::mint(
                &pepper(),
                &req,
                &mut keygate::os_entropy(),
                keygate::UnixMillis::from_millis(12),
            )
            .into_parts()
            .0
        };
        store.create(&mortal, Some(a.id()), 12).await.unwrap();
        assert_eq!(
            store
                .create(&record(Some(&mortal), 20), Some(mortal.id()), 20)
                .await,
            Err(StoreError::CallerRevoked)
        );
        store
            .create(&record(Some(&mortal), 19), Some(mortal.id()), 19)
            .await
            .unwrap();
        // Self-revocation needs no live caller: the token is the proof.
        store
            .revoke(mortal.id(), Scope::All, false, Some(mortal.id()), 30)
            .await
            .unwrap();
    }

    #[test]
    fn a_version_2_database_gains_rolled_from_from_its_log() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v2.db");
        let (a, a2) = (record(None, 1), record(None, 2));
        {
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(SCHEMA_V2).unwrap();
            meta_set(&conn, "schema_version", "2").unwrap();
            for r in [&a, &a2] {
                conn.execute(
                    "INSERT INTO keys (id, kind, name, secret_hash, scopes, created_at_ms)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                    params![
                        r.id().as_str(),
                        r.kind().as_str(),
                        r.name(),
                        &r.secret_hash().as_bytes()[..],
                        i64::from(r.scopes().bits()),
                        r.created_at_ms()
                    ],
                )
                .unwrap();
            }
            conn.execute(
                "INSERT INTO changes (at_ms, action, key_id, new_key_id) VALUES (2, 'rolled', ?1, ?2)",
                params![a.id().as_str(), a2.id().as_str()],
            )
            .unwrap();
        }
        let store = SqliteStore::open(&path).unwrap();
        let conn = raw(&store);
        assert_eq!(
            meta_get(&conn, "schema_version").unwrap().as_deref(),
            Some("3")
        );
        let from: Option<String> = conn
            .query_row(
                "SELECT rolled_from FROM keys WHERE id = ?1",
                params![a2.id().as_str()],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(from.as_deref(), Some(a.id().as_str()));
    }

    #[test]
    fn an_older_schema_version_in_meta_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.db");
        drop(SqliteStore::open(&path).unwrap());
        {
            let conn = Connection::open(&path).unwrap();
            meta_set(&conn, "schema_version", "1").unwrap();
        }
        let e = SqliteStore::open(&path).err().unwrap();
        let m = e.to_string();
        assert!(matches!(e, StoreError::Fatal(_)));
        assert!(
            m.contains("schema version 1, which this keygate cannot migrate"),
            "{m}"
        );
    }

    #[test]
    fn a_newer_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.db");
        drop(SqliteStore::open(&path).unwrap());
        {
            let conn = Connection::open(&path).unwrap();
            meta_set(&conn, "schema_version", "4").unwrap();
        }
        let e = SqliteStore::open(&path).err().unwrap();
        let m = e.to_string();
        assert!(matches!(e, StoreError::Fatal(_)));
        assert!(
            m.contains("schema version 4, newer than this keygate knows (3)"),
            "{m}"
        );
        // Refused without a change.
        let conn = Connection::open(&path).unwrap();
        assert_eq!(
            meta_get(&conn, "schema_version").unwrap().as_deref(),
            Some("4")
        );
    }

    fn fixture_copy() -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.sqlite3");
        std::fs::copy(format!("{FIXTURES}/keys-0.1.0.sqlite3"), &path).unwrap();
        (dir, path)
    }

    fn fixture_pepper() -> Pepper {
        let bytes = std::fs::read(format!("{FIXTURES}/keys-0.1.0.pepper-bin")).unwrap();
        Pepper::from_bytes(&bytes.try_into().unwrap())
    }

    #[tokio::test]
    async fn migrates_the_0_1_0_fixture_in_place() {
        let (_dir, path) = fixture_copy();
        // What 0.1.0 wrote: the JSON records.
        let before: Vec<KeyRecord> = {
            let conn = Connection::open(&path).unwrap();
            let mut stmt = conn.prepare("SELECT record FROM keys").unwrap();
            let rows = stmt
                .query_map([], |r| r.get::<_, String>(0))
                .unwrap()
                .map(|j| serde_json::from_str(&j.unwrap()).unwrap())
                .collect();
            rows
        };
        assert_eq!(before.len(), 4);
        let store = SqliteStore::open(&path).unwrap();
        {
            let conn = raw(&store);
            assert_eq!(
                meta_get(&conn, "schema_version").unwrap().as_deref(),
                Some("3")
            );
            assert!(!table_exists(&conn, "keys_v1").unwrap());
            assert!(!column_exists(&conn, "keys", "record").unwrap());
        }
        // Every record intact, in the columns.
        for r in &before {
            let got = store.get(r.id(), Scope::All).await.unwrap().unwrap();
            assert_eq!(&got.record, r);
            assert_eq!((got.revoked_at_ms, got.last_used_at_ms), (None, None));
        }
        // One `created` event each, actor null, at its creation, in order.
        let (events, more) = store.events(0, 100, Scope::All).await.unwrap();
        assert!(!more);
        let mut by_creation = before.clone();
        by_creation.sort_by_key(|r| r.created_at_ms());
        assert_eq!(
            events
                .iter()
                .map(|e| (e.seq, e.action, e.key_id, e.actor_id, e.at_ms))
                .collect::<Vec<_>>(),
            by_creation
                .iter()
                .enumerate()
                .map(|(i, r)| (
                    i as u64 + 1,
                    Action::Created,
                    r.id(),
                    None,
                    r.created_at_ms()
                ))
                .collect::<Vec<_>>()
        );
        // The fixture's pepper is recorded on first check.
        store
            .check_pepper(fixture_pepper().fingerprint())
            .await
            .unwrap();
        // Every token still authenticates, with its scopes and expiry.
        let snap = store.snapshot().await.unwrap();
        assert_eq!(snap.seq, 4);
        let mut keyring = Keyring::new(fixture_pepper());
        for r in snap.records {
            keyring.apply(Change::upsert(snap.seq, r)).unwrap();
        }
        let views: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(format!("{FIXTURES}/keys-0.1.0.views.json")).unwrap(),
        )
        .unwrap();
        let now = 1_800_000_000_000; // after "gone" expired, before 2100
        let mut checked = 0;
        for v in views.as_array().unwrap() {
            let token = v["key_secret"].as_str().unwrap();
            let id = KeyId::parse(v["id"].as_str().unwrap()).unwrap();
            let record = before.iter().find(|r| r.id() == id).unwrap();
            assert_eq!(record.expires_at_ms(), v["expires_at_ms"].as_i64());
            let result = keyring.authenticate(token, keygate::UnixMillis::from_millis(now));
            if v["name"] == "gone" {
                assert!(result.is_err(), "the expired key must stay expired");
                assert!(keyring
                    .authenticate(
                        token,
                        keygate::UnixMillis::from_millis(record.created_at_ms())
                    )
                    .is_ok());
            } else {
                let p = result.unwrap();
                assert_eq!(p.id(), id);
                assert_eq!(p.scopes(), record.scopes());
            }
            checked += 1;
        }
        assert_eq!(checked, 4);
        // Opening again migrates nothing twice.
        drop(store);
        let store = SqliteStore::open(&path).unwrap();
        assert_eq!(store.events(0, 100, Scope::All).await.unwrap().0.len(), 4);
        assert_eq!(store.count().await.unwrap(), 4);
    }

    #[test]
    fn a_failed_migration_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.db");
        let good = record(None, 1);
        {
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(
                "CREATE TABLE keys (id TEXT PRIMARY KEY NOT NULL, record TEXT NOT NULL) WITHOUT ROWID",
            )
            .unwrap();
            conn.execute(
                "INSERT INTO keys VALUES (?1, ?2)",
                params![good.id().as_str(), serde_json::to_string(&good).unwrap()],
            )
            .unwrap();
            conn.execute(
                "INSERT INTO keys VALUES ('BADBADBADBADBADB', '{\"id\": 1}')",
                [],
            )
            .unwrap();
        }
        let e = SqliteStore::open(&path).err().unwrap().to_string();
        assert!(e.contains("`BADBADBADBADBADB` has a corrupt record"), "{e}");
        let conn = Connection::open(&path).unwrap();
        assert!(column_exists(&conn, "keys", "record").unwrap());
        assert!(!table_exists(&conn, "meta").unwrap());
        assert!(!table_exists(&conn, "changes").unwrap());
        let n: i64 = conn
            .query_row("SELECT COUNT(*) FROM keys", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 2);
    }
}
