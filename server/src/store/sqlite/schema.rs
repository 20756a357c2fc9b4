//! The schema, its migrations (from the 0.1.0 JSON layout, and between
//! versions), the durability check and the pepper fingerprint.

use std::path::Path;

use keygate::KeyRecord;
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};

use super::super::{Action, StoreError, SCHEMA_VERSION};
use super::queries::{append, insert_v2_key, sql};

/// How long a connection waits for another writer (another process, e.g.
/// the CLI) before a write fails as unavailable.
pub(super) const BUSY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Schema version 2 (version 3 adds [`MIGRATE_V3`]).
pub(super) const SCHEMA_V2: &str = "
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
pub(super) const MIGRATE_V3: &str = "
ALTER TABLE keys ADD COLUMN rolled_from TEXT;
CREATE INDEX keys_rolled_from ON keys (rolled_from);
CREATE INDEX changes_key_id ON changes (key_id);
UPDATE keys SET rolled_from = (
    SELECT c.key_id FROM changes c
    WHERE c.action = 'rolled' AND c.new_key_id = keys.id
    ORDER BY c.seq LIMIT 1
);
";

/// Version 3 to 4: per-key usage counts, per minute and (after retention
/// folds the minutes older than 30 days) per day.
pub(super) const MIGRATE_V4: &str = "
CREATE TABLE usage_minutes (
    key_id            TEXT NOT NULL,
    minute_ms         INTEGER NOT NULL,
    allowed           INTEGER NOT NULL DEFAULT 0,
    forbidden         INTEGER NOT NULL DEFAULT 0,
    rate_limited      INTEGER NOT NULL DEFAULT 0,
    credits_exhausted INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (key_id, minute_ms)
) WITHOUT ROWID;
CREATE INDEX usage_minutes_minute_ms ON usage_minutes (minute_ms);
CREATE TABLE usage_days (
    key_id            TEXT NOT NULL,
    day_ms            INTEGER NOT NULL,
    allowed           INTEGER NOT NULL DEFAULT 0,
    forbidden         INTEGER NOT NULL DEFAULT 0,
    rate_limited      INTEGER NOT NULL DEFAULT 0,
    credits_exhausted INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (key_id, day_ms)
) WITHOUT ROWID;
CREATE INDEX usage_days_day_ms ON usage_days (day_ms);
";

/// Version 5's columns of `keys`: a key's rate limit, its credits (the
/// configured grant and refill) and the meter it is charged to (NULL for its
/// own), each NULL where the key has none.
pub(super) const LIMIT_COLUMNS: [(&str, &str); 7] = [
    ("rate_limit", "INTEGER"),
    ("rate_period_ms", "INTEGER"),
    ("credits_remaining", "INTEGER"),
    ("credits_refill_amount", "INTEGER"),
    ("credits_refill_interval_ms", "INTEGER"),
    ("meter_id", "TEXT"),
    ("meter_since_ms", "INTEGER"),
];

/// Version 5's index and table: the keys of a meter, for updates by meter,
/// and each meter's balance (`period`: the refill period it belongs to).
pub(super) const MIGRATE_V5_TABLES: &str = "
CREATE INDEX IF NOT EXISTS keys_meter ON keys (COALESCE(meter_id, id));
CREATE TABLE IF NOT EXISTS credit_balances (
    meter_id  TEXT PRIMARY KEY NOT NULL,
    remaining INTEGER NOT NULL,
    period    INTEGER NOT NULL
) WITHOUT ROWID;
";

/// The step to version 5 (per-key limits): the limit columns, the meter
/// index, `credit_balances`, and the `limits_changed` action in the log.
/// Self-contained and idempotent (each part is skipped where it is done),
/// so it may run after any other step and be renumbered.
pub(super) fn migrate_v5(tx: &Connection, path: &str) -> Result<(), StoreError> {
    for (column, kind) in LIMIT_COLUMNS {
        if !column_exists(tx, "keys", column)? {
            tx.execute_batch(&format!("ALTER TABLE keys ADD COLUMN {column} {kind}"))
                .map_err(sql)?;
        }
    }
    tx.execute_batch(MIGRATE_V5_TABLES).map_err(sql)?;
    allow_action(tx, "limits_changed", path)
}

/// Widens the `CHECK` of `changes.action` to take `action`. SQLite cannot
/// alter a constraint, so the table is rebuilt from its own definition
/// (whatever columns another step added), with its rows, its indexes and
/// its `AUTOINCREMENT` counter (sequence numbers are never reused).
pub(super) fn allow_action(tx: &Connection, action: &str, path: &str) -> Result<(), StoreError> {
    let definition: String = tx
        .query_row(
            "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'changes'",
            [],
            |r| r.get(0),
        )
        .map_err(sql)?;
    if definition.contains(&format!("'{action}'")) {
        return Ok(());
    }
    let widened = definition
        .replacen("'rolled')", &format!("'rolled', '{action}')"), 1)
        .replacen("CREATE TABLE changes ", "CREATE TABLE changes_widened ", 1);
    if !widened.contains(&format!("'{action}'")) || !widened.contains("changes_widened") {
        return Err(StoreError::Fatal(format!(
            "database `{path}` has a `changes` table of an unknown layout"
        )));
    }
    let indexes: Vec<String> = {
        let mut stmt = tx
            .prepare(
                "SELECT sql FROM sqlite_master
                 WHERE type = 'index' AND tbl_name = 'changes' AND sql IS NOT NULL",
            )
            .map_err(sql)?;
        let rows = stmt.query_map([], |r| r.get(0)).map_err(sql)?;
        rows.collect::<Result<_, _>>().map_err(sql)?
    };
    let counter: Option<i64> = tx
        .query_row(
            "SELECT seq FROM sqlite_sequence WHERE name = 'changes'",
            [],
            |r| r.get(0),
        )
        .optional()
        .map_err(sql)?;
    tx.execute_batch(&format!(
        "{widened};
         INSERT INTO changes_widened SELECT * FROM changes;
         DROP TABLE changes;
         ALTER TABLE changes_widened RENAME TO changes;"
    ))
    .map_err(sql)?;
    for index in indexes {
        tx.execute_batch(&index).map_err(sql)?;
    }
    if let Some(counter) = counter {
        let kept = tx
            .execute(
                "UPDATE sqlite_sequence SET seq = max(seq, ?1) WHERE name = 'changes'",
                params![counter],
            )
            .map_err(sql)?;
        if kept == 0 {
            tx.execute(
                "INSERT INTO sqlite_sequence (name, seq) VALUES ('changes', ?1)",
                params![counter],
            )
            .map_err(sql)?;
        }
    }
    Ok(())
}

/// The schema version the credit leases step produces (`store::lease`),
/// after the configuration plane's version 5. The step stands alone (every
/// part `IF NOT EXISTS`), so it may run after any other step and be
/// renumbered by changing this number.
pub(super) const LEASES_VERSION: i64 = 6;

/// Credit pools and leases (`store::lease`). The pool table exists already
/// (version 5 creates it, of the same shape); a database that skipped it
/// gets it here.
pub(super) const MIGRATE_LEASES: &str = "
CREATE TABLE IF NOT EXISTS credit_balances (
    meter_id  TEXT PRIMARY KEY NOT NULL,
    remaining INTEGER NOT NULL,
    period    INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS credit_leases (
    meter_id      TEXT NOT NULL,
    instance_id   TEXT NOT NULL,
    period        INTEGER NOT NULL,
    amount        INTEGER NOT NULL,
    expires_at_ms INTEGER NOT NULL,
    PRIMARY KEY (meter_id, instance_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS credit_leases_instance ON credit_leases (instance_id);
CREATE INDEX IF NOT EXISTS credit_leases_expires ON credit_leases (expires_at_ms);
";

pub(super) fn hex(bytes: &[u8]) -> String {
    hex::encode(bytes)
}

/// Fails unless `conn` journals to a WAL and fsyncs it on every commit
/// (`synchronous` FULL = 2 or EXTRA = 3).
pub(super) fn check_durability(conn: &Connection, path: &str) -> Result<(), StoreError> {
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
pub(super) fn open_connection(path: &Path, shown: &str) -> Result<Connection, StoreError> {
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

pub(super) fn table_exists(conn: &Connection, name: &str) -> Result<bool, StoreError> {
    conn.query_row(
        "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?1)",
        params![name],
        |r| r.get(0),
    )
    .map_err(sql)
}

pub(super) fn column_exists(
    conn: &Connection,
    table: &str,
    column: &str,
) -> Result<bool, StoreError> {
    conn.query_row(
        "SELECT EXISTS (SELECT 1 FROM pragma_table_info(?1) WHERE name = ?2)",
        params![table, column],
        |r| r.get(0),
    )
    .map_err(sql)
}

pub(super) fn meta_get(conn: &Connection, key: &str) -> Result<Option<String>, StoreError> {
    conn.query_row("SELECT value FROM meta WHERE key = ?1", params![key], |r| {
        r.get(0)
    })
    .optional()
    .map_err(sql)
}

pub(super) fn meta_set(conn: &Connection, key: &str, value: &str) -> Result<(), StoreError> {
    conn.execute(
        "INSERT INTO meta (key, value) VALUES (?1, ?2)
         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        params![key, value],
    )
    .map_err(sql)?;
    Ok(())
}

/// Brings the database to [`SCHEMA_VERSION`], in one immediate
/// transaction: creates a new one, migrates a 0.1.0 or an older one step by
/// step (2 to 3, 3 to 4, 4 to 5, 5 to 6), refuses a newer one.
pub(super) fn migrate(conn: &mut Connection, path: &str) -> Result<(), StoreError> {
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
        if version < SCHEMA_VERSION {
            upgrade(&tx, version, path)?;
            meta_set(&tx, "schema_version", &SCHEMA_VERSION.to_string())?;
        }
        return tx.commit().map_err(sql);
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
    upgrade(&tx, 2, path)?;
    meta_set(&tx, "schema_version", &SCHEMA_VERSION.to_string())?;
    tx.commit().map_err(sql)
}

/// The migration steps from schema `version` (at least 2) to
/// [`SCHEMA_VERSION`], each in turn, inside the caller's transaction.
fn upgrade(tx: &rusqlite::Transaction<'_>, version: i64, path: &str) -> Result<(), StoreError> {
    if version < 3 {
        tx.execute_batch(MIGRATE_V3).map_err(sql)?;
    }
    if version < 4 {
        tx.execute_batch(MIGRATE_V4).map_err(sql)?;
    }
    if version < 5 {
        migrate_v5(tx, path)?;
    }
    if version < LEASES_VERSION {
        tx.execute_batch(MIGRATE_LEASES).map_err(sql)?;
    }
    Ok(())
}

/// Moves the 0.1.0 JSON records into the version-2 tables; each gets a
/// `created` event at its creation time, in creation order.
pub(super) fn migrate_v1(tx: &rusqlite::Transaction<'_>, path: &str) -> Result<(), StoreError> {
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
    records
        .sort_by(|a, b| (a.created_at(), a.id().as_str()).cmp(&(b.created_at(), b.id().as_str())));
    for record in &records {
        // 0.1.0 records hold no limits: the version-2 columns hold them whole.
        insert_v2_key(tx, record)?;
        append(
            tx,
            record.created_at().as_millis(),
            Action::Created,
            record.id(),
            None,
            None,
        )?;
    }
    tx.execute_batch("DROP TABLE keys_v1").map_err(sql)?;
    Ok(())
}

pub(super) fn pepper_tx(
    conn: &mut Connection,
    fingerprint: &[u8; 32],
    path: &str,
) -> Result<(), StoreError> {
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
