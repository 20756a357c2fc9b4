//! The PostgreSQL store: many `keygate serve` instances on one database.
//!
//! # Driver
//!
//! `tokio-postgres` with `deadpool-postgres`, not `sqlx`: the server already
//! runs on tokio, needs no compile-time checked queries (there are a dozen
//! fixed statements, covered by tests against a real PostgreSQL), and
//! `tokio-postgres` hands us the raw connection, whose
//! [`poll_message`](tokio_postgres::Connection::poll_message) is what a
//! `LISTEN` connection needs. The pair is a fraction of `sqlx`'s dependency
//! tree (no macros, no `sqlx-core` drivers for other databases), and
//! `deadpool-postgres` adds a small pool with a prepared-statement cache per
//! connection.
//!
//! # Schema (version [`SCHEMA_VERSION`])
//!
//! The same tables and columns as the SQLite store:
//!
//! * `keys(id, kind, name, secret_hash, scopes, created_at_ms,
//!   expires_at_ms, creator_id, revoked_at_ms, last_used_at_ms, rolled_from,
//!   rate_limit, rate_period_ms, credits_remaining, credits_refill_amount,
//!   credits_refill_interval_ms, meter_id, meter_since_ms)`:
//!   one row per key, revoked ones included; `secret_hash` is 32 bytes of
//!   `BYTEA`, `scopes` the [`Scopes::bits`]; `rolled_from` the key a rolled
//!   key replaced (version 3), whose children it inherits; the limits and
//!   the meter (version 5), NULL where the key has none (`meter_id` NULL:
//!   its own), indexed by `COALESCE(meter_id, id)`. Ids compare bytewise
//!   (`COLLATE "C"`), so `GET /v1/keys` pages in the same order as on
//!   SQLite.
//! * `changes(seq, at_ms, action, key_id, actor_id, new_key_id)`: the
//!   change log, which is also the audit log.
//! * `meta(schema_version, pepper_fingerprint)`: one row; the fingerprint
//!   is hex.
//! * `usage_minutes(key_id, minute_ms, allowed, forbidden, rate_limited,
//!   credits_exhausted)` and `usage_days(key_id, day_ms, ...)` (version 4):
//!   request counts per key and minute (and per day once retention folds
//!   minutes older than 30 days). Every instance's flush adds to the same
//!   rows (`INSERT ... ON CONFLICT DO UPDATE SET n = n + excluded.n`); a
//!   retention pass moves minute rows into day rows in one statement, taking
//!   rows with `FOR UPDATE SKIP LOCKED`, so instances pruning at once never
//!   fold a row twice.
//! * `change_seq(seq)`: one row, the last sequence number handed out (see
//!   below), and `schema_migrations(version, applied_at_ms, applied_by)`: one
//!   row per migration this database has run.
//! * `rate_instances(instance_id, updated_at_ms)` and
//!   `rate_demand(meter_id, instance_id, demand, updated_at_ms)`: each
//!   running instance's heartbeat and its demand per rate-limited meter
//!   ([`Store::exchange_demand`]), by which instances split each key's rate
//!   limit. Soft state, seconds old: `UNLOGGED` (no WAL, emptied by a crash
//!   of PostgreSQL, not on standbys), outside the numbered migrations
//!   (created where missing at every start, under the migration lock).

//! * `credit_balances(meter_id, remaining, period)` (version 5) and
//!   `credit_leases(meter_id, instance_id, period, amount, expires_at_ms)`
//!   (version 6): each meter's pool of unleased credits and the refill
//!   period it belongs to, and the credits each instance holds of it
//!   (`store::lease`); the balance is the pool plus the leases. A lease
//!   write locks the
//!   pool row `FOR UPDATE`, so concurrent grants from several instances
//!   never hand out more than the pool holds.
//!
//! Migrations run in [`PgStore::connect`], in one transaction that first
//! takes a transaction-level advisory lock: instances that start together
//! queue on the lock, and all but the first find nothing left to do. A
//! database whose schema is newer than this binary's is refused.
//!
//! # Commit-ordered sequence numbers
//!
//! A `bigserial` hands out numbers at `INSERT` time, not at commit: a
//! transaction can take 7, commit after another took 8 and committed, and a
//! follower that has read up to 8 never looks at 7 again. Here every writing
//! transaction takes its numbers as its last step with
//! `UPDATE change_seq SET seq = seq + n RETURNING seq`. The row lock this
//! takes is held until commit, so the next writer cannot take a number until
//! the previous one has committed (or rolled back, returning its numbers):
//! numbers are dense, and they become visible in order. A reader that has
//! seen `n` has seen everything below it.
//!
//! # Change signal
//!
//! Every writing transaction also runs `pg_notify('keygate_changes', seq)`,
//! which PostgreSQL delivers at commit. [`Store::change_signal`] starts (on
//! first use) a task that holds one dedicated connection in `LISTEN
//! keygate_changes`, reconnects with exponential backoff (50 ms to 2 s)
//! when it drops, and signals the returned [`Notify`] on every notification
//! and once after every (re)connect, so that the follower catches up on what
//! it missed while the listener was away. Notifications are only a hint: the
//! follower polls the log by sequence number either way.
//!
//! # Failures
//!
//! A database that cannot be reached (connection refused, reset, a pool
//! timeout, PostgreSQL shutting down) is [`StoreError::Unavailable`], which
//! the HTTP layer answers with 503 and `Retry-After`. Anything else
//! PostgreSQL refuses is [`StoreError::Fatal`]. A database that vanishes
//! without closing its connections (a partition) is found by TCP
//! keepalives and a 5 s TCP user timeout, so calls fail as unavailable
//! within seconds instead of hanging; that case is not simulated by the
//! tests (they stop PostgreSQL, which closes every connection).

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use backon::{ExponentialBuilder, Retryable};
use deadpool_postgres::{
    GenericClient, Manager, ManagerConfig, Pool, PoolError, RecyclingMethod, Runtime,
};
use keygate::{
    Change, CreditBalance, Credits, KeyId, KeyKind, KeyRecord, KeyRecordParts, Meter, Scopes,
    SecretHash, UnixMillis,
};
use tokio::sync::Notify;
use tokio_postgres::error::SqlState;
use tokio_postgres::{AsyncMessage, IsolationLevel, Row};

pub(crate) mod connect;
use connect::Target;

use super::lease::{
    add, as_stored, col, credits, grant, period_col, period_now, period_of, refilled, stale_lease,
    PoolRow,
};
use super::{
    balance_at, fresh_balance, no_credits, rolled_target, usage_cutoffs, Action, Bucket,
    CreditMeter, DemandReport, Event, Expired, KeyPage, KeyUsage, Lease, LeaseReport,
    LeaseWriteError, LimitColumns, LimitsChange, PeerDemand, PoolView, Pruned, Scope, SetOrAdd,
    Snapshot, Store, StoreError, StoredKey, UsageBucket, UsageCounts, UsageQuery, UsageRow, DAY_MS,
    SCHEMA_VERSION,
};

/// The channel every write notifies and every listener listens on.
pub const CHANNEL: &str = "keygate_changes";

/// The advisory lock that serializes migrations (`"keygate"` in ASCII).
const MIGRATION_LOCK: i64 = 0x006b_6579_6761_7465;

/// Connections per pool (per process), besides the listener's.
const POOL_SIZE: usize = 16;
/// How long a request waits for a pooled connection while all are busy (a
/// database that is down fails faster: opening a connection is refused).
const POOL_WAIT: Duration = Duration::from_secs(15);
/// How long opening a connection may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// The first and the longest pause between connection attempts.
const BACKOFF_MIN: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(2);
/// How often the listener checks that its connection still answers.
const HEARTBEAT: Duration = Duration::from_secs(5);
/// How often a write is retried after PostgreSQL broke a deadlock.
const WRITE_ATTEMPTS: u32 = 3;

/// The key columns, in the order [`stored_key`] reads them.
const KEY_COLUMNS: &str = "id, kind, name, secret_hash, scopes, created_at_ms, expires_at_ms, \
     creator_id, revoked_at_ms, last_used_at_ms, rate_limit, rate_period_ms, \
     credits_remaining, credits_refill_amount, credits_refill_interval_ms, meter_id, \
     meter_since_ms";

/// The tables of [`Store::exchange_demand`]: soft state, outside the
/// numbered migrations, created where missing at every start.
const ENSURE_DEMAND: &str = r#"
    CREATE UNLOGGED TABLE IF NOT EXISTS rate_instances (
        instance_id TEXT COLLATE "C" PRIMARY KEY,
        updated_at_ms BIGINT NOT NULL
    );
    CREATE UNLOGGED TABLE IF NOT EXISTS rate_demand (
        meter_id TEXT COLLATE "C" NOT NULL,
        instance_id TEXT COLLATE "C" NOT NULL,
        demand DOUBLE PRECISION NOT NULL,
        updated_at_ms BIGINT NOT NULL,
        PRIMARY KEY (meter_id, instance_id)
    );
    "#;

/// The migrations, by the schema version they produce. Version 1 was the
/// SQLite-only JSON table of 0.1.0, so PostgreSQL starts at 2.
const MIGRATIONS: &[(i64, &str)] = &[
    (
        2,
        r#"
    CREATE TABLE meta (
        one BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (one),
        schema_version BIGINT NOT NULL,
        pepper_fingerprint TEXT
    );
    INSERT INTO meta (schema_version) VALUES (0);
    CREATE TABLE schema_migrations (
        version BIGINT PRIMARY KEY,
        applied_at_ms BIGINT NOT NULL,
        applied_by TEXT NOT NULL
    );
    CREATE TABLE keys (
        id TEXT COLLATE "C" PRIMARY KEY,
        kind TEXT NOT NULL CHECK (kind IN ('standard', 'restricted')),
        name TEXT NOT NULL,
        secret_hash BYTEA NOT NULL CHECK (octet_length(secret_hash) = 32),
        scopes BIGINT NOT NULL,
        created_at_ms BIGINT NOT NULL,
        expires_at_ms BIGINT,
        creator_id TEXT COLLATE "C",
        revoked_at_ms BIGINT,
        last_used_at_ms BIGINT
    );
    CREATE INDEX keys_creator_id ON keys (creator_id);
    CREATE TABLE change_seq (
        one BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (one),
        seq BIGINT NOT NULL
    );
    INSERT INTO change_seq (seq) VALUES (0);
    CREATE TABLE changes (
        seq BIGINT PRIMARY KEY,
        at_ms BIGINT NOT NULL,
        action TEXT NOT NULL CHECK (action IN ('created', 'revoked', 'rolled')),
        key_id TEXT COLLATE "C" NOT NULL,
        actor_id TEXT COLLATE "C",
        new_key_id TEXT COLLATE "C"
    );
    "#,
    ),
    (
        3,
        r#"
    ALTER TABLE keys ADD COLUMN rolled_from TEXT COLLATE "C";
    CREATE INDEX keys_rolled_from ON keys (rolled_from);
    CREATE INDEX changes_key_id ON changes (key_id);
    UPDATE keys k SET rolled_from = c.key_id
    FROM changes c WHERE c.action = 'rolled' AND c.new_key_id = k.id;
    "#,
    ),
    (
        4,
        r#"
    CREATE TABLE usage_minutes (
        key_id TEXT COLLATE "C" NOT NULL,
        minute_ms BIGINT NOT NULL,
        allowed BIGINT NOT NULL DEFAULT 0,
        forbidden BIGINT NOT NULL DEFAULT 0,
        rate_limited BIGINT NOT NULL DEFAULT 0,
        credits_exhausted BIGINT NOT NULL DEFAULT 0,
        PRIMARY KEY (key_id, minute_ms)
    );
    CREATE INDEX usage_minutes_minute_ms ON usage_minutes (minute_ms);
    CREATE TABLE usage_days (
        key_id TEXT COLLATE "C" NOT NULL,
        day_ms BIGINT NOT NULL,
        allowed BIGINT NOT NULL DEFAULT 0,
        forbidden BIGINT NOT NULL DEFAULT 0,
        rate_limited BIGINT NOT NULL DEFAULT 0,
        credits_exhausted BIGINT NOT NULL DEFAULT 0,
        PRIMARY KEY (key_id, day_ms)
    );
    CREATE INDEX usage_days_day_ms ON usage_days (day_ms);
    "#,
    ),
    (5, MIGRATE_V5),
    // The credit leases stand alone (every part `IF NOT EXISTS`), so the
    // step may follow any other and be renumbered.
    (6, MIGRATE_LEASES),
];

/// Per-key limits: a key's rate limit, credits (the configured grant and
/// refill) and the meter it is charged to (NULL for its own), NULL where it
/// has none; the meter index; each meter's balance and the refill period it
/// belongs to; the `limits_changed` action.
const MIGRATE_V5: &str = r#"
    ALTER TABLE keys
        ADD COLUMN IF NOT EXISTS rate_limit BIGINT,
        ADD COLUMN IF NOT EXISTS rate_period_ms BIGINT,
        ADD COLUMN IF NOT EXISTS credits_remaining BIGINT,
        ADD COLUMN IF NOT EXISTS credits_refill_amount BIGINT,
        ADD COLUMN IF NOT EXISTS credits_refill_interval_ms BIGINT,
        ADD COLUMN IF NOT EXISTS meter_id TEXT COLLATE "C",
        ADD COLUMN IF NOT EXISTS meter_since_ms BIGINT;
    CREATE INDEX IF NOT EXISTS keys_meter ON keys ((COALESCE(meter_id, id)));
    CREATE TABLE IF NOT EXISTS credit_balances (
        meter_id TEXT COLLATE "C" PRIMARY KEY,
        remaining BIGINT NOT NULL,
        period BIGINT NOT NULL
    );
    ALTER TABLE changes DROP CONSTRAINT IF EXISTS changes_action_check;
    ALTER TABLE changes ADD CONSTRAINT changes_action_check
        CHECK (action IN ('created', 'revoked', 'rolled', 'limits_changed'));
    "#;

/// Credit pools and leases (`store::lease`): each meter's pool of unleased
/// credits and the refill period it belongs to (version 5 creates the pool
/// table, of the same shape; a database that skipped it gets it here), and
/// the credits each instance holds on lease.
const MIGRATE_LEASES: &str = r#"
    CREATE TABLE IF NOT EXISTS credit_balances (
        meter_id TEXT COLLATE "C" PRIMARY KEY,
        remaining BIGINT NOT NULL,
        period BIGINT NOT NULL
    );
    CREATE TABLE IF NOT EXISTS credit_leases (
        meter_id TEXT COLLATE "C" NOT NULL,
        instance_id TEXT COLLATE "C" NOT NULL,
        period BIGINT NOT NULL,
        amount BIGINT NOT NULL,
        expires_at_ms BIGINT NOT NULL,
        PRIMARY KEY (meter_id, instance_id)
    );
    CREATE INDEX IF NOT EXISTS credit_leases_instance ON credit_leases (instance_id);
    CREATE INDEX IF NOT EXISTS credit_leases_expires ON credit_leases (expires_at_ms);
"#;

/// Key storage in PostgreSQL, shared by any number of instances. See the
/// module documentation.
pub struct PgStore {
    pool: Pool,
    /// The follower's own connection (the change log), so a flood of
    /// requests on `pool` does not delay revocations.
    follower: Pool,
    /// The demand exchange's own connection ([`Store::exchange_demand`]).
    shares: Pool,
    /// Key rows and log entries the feed could not read (each failed closed).
    corrupt: std::sync::atomic::AtomicU64,
    /// The config and TLS connector of every connection, the listener's too.
    target: Target,
    listener: OnceLock<Listener>,
}

/// The `LISTEN` task and the signal it raises; the task ends with the store.
struct Listener {
    signal: Arc<Notify>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The config may hold a password: name only where it points.
        f.debug_struct("PgStore")
            .field("hosts", &self.target.config.get_hosts())
            .field("ports", &self.target.config.get_ports())
            .field("dbname", &self.target.config.get_dbname())
            .field("sslmode", &self.target.sslmode)
            .finish_non_exhaustive()
    }
}

/// A write's event before it has a sequence number.
struct NewEvent {
    action: Action,
    key_id: KeyId,
    new_key_id: Option<KeyId>,
}

impl PgStore {
    /// Connects to the database at `url` (`postgres://USER@HOST:PORT/DB`,
    /// or any libpq-style URL or key-value string, with libpq's `sslmode`
    /// and `sslrootcert`, the `PG*` environment and the password file:
    /// see `connect.rs`), migrates it to [`SCHEMA_VERSION`] under an
    /// advisory lock, and returns the store.
    ///
    /// An unreachable database is [`StoreError::Unavailable`]; a malformed
    /// URL, a refused TLS connection or a newer schema is
    /// [`StoreError::Fatal`]. Connection errors name the host and port.
    pub async fn connect(url: &str) -> Result<PgStore, StoreError> {
        let mut target = Target::resolve(url)?;
        let config = &mut target.config;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        // A database that vanishes without closing the connection (a
        // network partition, a host that died) must turn into errors, not
        // requests that hang: keepalives find an idle dead connection in
        // about 5 + 3 × 1 s, and the TCP user timeout fails a query whose
        // bytes stay unacknowledged for 5 s.
        config
            .keepalives(true)
            .keepalives_idle(Duration::from_secs(5))
            .keepalives_interval(Duration::from_secs(1))
            .keepalives_retries(3);
        if config.get_tcp_user_timeout().is_none() {
            config.tcp_user_timeout(Duration::from_secs(5));
        }
        if config.get_application_name().is_none() {
            config.application_name("keygate");
        }
        let pool_of = |size: usize| {
            let manager = Manager::from_config(
                target.config.clone(),
                target.tls.clone(),
                ManagerConfig {
                    recycling_method: RecyclingMethod::Fast,
                },
            );
            Pool::builder(manager)
                .max_size(size)
                .runtime(Runtime::Tokio1)
                .wait_timeout(Some(POOL_WAIT))
                .create_timeout(Some(CONNECT_TIMEOUT))
                .recycle_timeout(Some(CONNECT_TIMEOUT))
                .build()
                .map_err(|e| StoreError::Fatal(format!("cannot build the connection pool: {e}")))
        };
        let store = PgStore {
            pool: pool_of(POOL_SIZE)?,
            follower: pool_of(1)?,
            shares: pool_of(1)?,
            corrupt: std::sync::atomic::AtomicU64::new(0),
            listener: OnceLock::new(),
            target: target.clone(),
        };
        // The first connection's failure names the host and port it tried.
        drop(store.pool.get().await.map_err(|e| target.pool_error(e))?);
        store.migrate().await?;
        Ok(store)
    }

    /// Like [`PgStore::connect`], but retries while the database is
    /// unavailable, for up to `wait` (the CLI waits for a database that is
    /// restarting instead of failing at once).
    pub async fn connect_waiting(url: &str, wait: Duration) -> Result<PgStore, StoreError> {
        let deadline = tokio::time::Instant::now() + wait;
        (|| PgStore::connect(url))
            .retry(backoff())
            .sleep(tokio::time::sleep)
            .when(|e| {
                matches!(e, StoreError::Unavailable(_)) && tokio::time::Instant::now() < deadline
            })
            .notify(|e, _| tracing::warn!("database unavailable, retrying: {e}"))
            .await
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, StoreError> {
        self.pool.get().await.map_err(pool_error)
    }

    /// Runs the migrations this database lacks, in one transaction under
    /// the migration lock. Returns the versions applied (none when another
    /// instance got there first).
    async fn migrate(&self) -> Result<Vec<i64>, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(db_error)?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
            .await
            .map_err(db_error)?;
        let has_meta: bool = tx
            .query_one("SELECT to_regclass('meta') IS NOT NULL", &[])
            .await
            .map_err(db_error)?
            .get(0);
        let current: i64 = if has_meta {
            tx.query_one("SELECT schema_version FROM meta", &[])
                .await
                .map_err(db_error)?
                .get(0)
        } else {
            0
        };
        if current > SCHEMA_VERSION {
            return Err(StoreError::Fatal(format!(
                "database schema version {current} is newer than this binary's ({SCHEMA_VERSION}); \
                 upgrade keygate"
            )));
        }
        let mut applied = Vec::new();
        for &(version, sql) in MIGRATIONS.iter().filter(|(v, _)| *v > current) {
            tx.batch_execute(sql).await.map_err(db_error)?;
            tx.execute(
                "INSERT INTO schema_migrations (version, applied_at_ms, applied_by) \
                 VALUES ($1, $2, $3)",
                &[
                    &version,
                    &keygate::UnixMillis::now().as_millis(),
                    &format!(
                        "keygate {} pid {}",
                        env!("CARGO_PKG_VERSION"),
                        std::process::id()
                    ),
                ],
            )
            .await
            .map_err(db_error)?;
            tx.execute("UPDATE meta SET schema_version = $1", &[&version])
                .await
                .map_err(db_error)?;
            applied.push(version);
        }
        tx.batch_execute(ENSURE_DEMAND).await.map_err(db_error)?;
        tx.commit().await.map_err(db_error)?;
        if !applied.is_empty() {
            tracing::info!(?applied, "migrated the database");
        }
        Ok(applied)
    }
}

/// Runs `$body` (which may use `?` on PostgreSQL and store errors) in a
/// transaction bound to `$tx` and commits, retrying when PostgreSQL aborted
/// it to break a deadlock or a serialization conflict.
macro_rules! write_tx {
    ($store:expr, $tx:ident => $body:block) => {{
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let mut client = $store.client().await?;
            let owned = client.transaction().await.map_err(db_error)?;
            let result: Result<_, WriteError> = async {
                let $tx = &owned;
                $body
            }
            .await;
            let result = match result {
                Ok(value) => owned.commit().await.map(|()| value).map_err(WriteError::Db),
                Err(e) => Err(e),
            };
            match result {
                Ok(value) => break Ok(value),
                Err(WriteError::Db(e)) if is_retryable(&e) && attempt < WRITE_ATTEMPTS => {
                    tracing::debug!("write conflict, retrying: {e}");
                }
                // Still in conflict after the retries: the client may retry
                // later (503 with `Retry-After`), as for an unreachable store.
                Err(WriteError::Db(e)) if is_retryable(&e) => {
                    break Err(StoreError::Unavailable(format!(
                        "write conflict after {WRITE_ATTEMPTS} attempts: {}",
                        describe(&e)
                    )))
                }
                Err(WriteError::Db(e)) => break Err(db_error(e)),
                Err(WriteError::Store(e)) => break Err(e),
            }
        }
    }};
}

/// [`write_tx`] for a lease write, whose caller must know whether a failed
/// write may have committed: an error while committing that PostgreSQL did
/// not answer (the connection dropped) is `maybe_applied`; every error
/// before it rolled the transaction back.
macro_rules! lease_tx {
    ($store:expr, $tx:ident => $body:block) => {{
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let mut client = $store.client().await?;
            let owned = client.transaction().await.map_err(db_error)?;
            let result: Result<_, WriteError> = async {
                let $tx = &owned;
                $body
            }
            .await;
            let value = match result {
                Ok(value) => value,
                Err(WriteError::Db(e)) if is_retryable(&e) && attempt < WRITE_ATTEMPTS => {
                    tracing::debug!("lease write conflict, retrying: {e}");
                    continue;
                }
                Err(WriteError::Db(e)) if is_retryable(&e) => {
                    break Err(LeaseWriteError::from(StoreError::Unavailable(format!(
                        "write conflict after {WRITE_ATTEMPTS} attempts: {}",
                        describe(&e)
                    ))))
                }
                Err(WriteError::Db(e)) => break Err(db_error(e).into()),
                Err(WriteError::Store(e)) => break Err(e.into()),
            };
            match owned.commit().await {
                Ok(()) => break Ok(value),
                Err(e) => {
                    break Err(LeaseWriteError {
                        maybe_applied: e.as_db_error().is_none(),
                        error: db_error(e),
                    })
                }
            }
        }
    }};
}

/// Whether `db` names a PostgreSQL database (a `postgres://` or
/// `postgresql://` URL) rather than a SQLite file.
pub fn is_postgres_url(db: &str) -> bool {
    db.starts_with("postgres://") || db.starts_with("postgresql://")
}

/// How long `serve` and the CLI wait for an unreachable database at start
/// (`KEYGATE_DB_WAIT`, in seconds; default 30).
pub fn wait_from_env() -> Duration {
    std::env::var("KEYGATE_DB_WAIT")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .map_or(Duration::from_secs(30), Duration::from_secs)
}

/// Opens the PostgreSQL store at `url` for `serve` or a CLI command: waits
/// up to [`wait_from_env`] for the database, migrates it, loads the pepper
/// file (created only while the database holds no keys) and checks it
/// against the stored fingerprint. The error is a message for the operator.
///
/// With PostgreSQL the pepper file has no default: every instance must be
/// given the same file (`--pepper-file`).
pub async fn open(
    url: &str,
    pepper_file: Option<&std::path::Path>,
) -> Result<(Arc<dyn Store>, keygate::Pepper), String> {
    let path = pepper_file.ok_or_else(|| {
        String::from(
            "a PostgreSQL database needs `--pepper-file PATH`: every instance must read the same pepper file",
        )
    })?;
    let store = PgStore::connect_waiting(url, wait_from_env())
        .await
        .map_err(|e| format!("cannot open the PostgreSQL database: {e}"))?;
    let count = store.count().await.map_err(|e| e.to_string())?;
    let (pepper, _created) = crate::store::pepper::load_or_create(path, count == 0).map_err(|e| {
        if count > 0 && !path.exists() {
            format!(
                "pepper file `{}` is missing but the database holds {count} keys; copy the pepper file the other instances use",
                path.display()
            )
        } else {
            e
        }
    })?;
    store
        .check_pepper(pepper.fingerprint())
        .await
        .map_err(|e| match e {
            StoreError::Fatal(m) => format!("{m} (pepper file `{}`)", path.display()),
            other => other.to_string(),
        })?;
    Ok((Arc::new(store), pepper))
}

/// Where `serve` writes the bootstrap key file for a database named `db`:
/// beside the SQLite file, or beside the pepper file for PostgreSQL.
pub fn bootstrap_base(
    db: &std::path::Path,
    pepper_file: Option<&std::path::Path>,
) -> std::path::PathBuf {
    match (db.to_str().is_some_and(is_postgres_url), pepper_file) {
        (true, Some(pepper)) => pepper.to_path_buf(),
        _ => db.to_path_buf(),
    }
}

/// An error inside a write transaction: PostgreSQL's (maybe retryable) or
/// the store's own verdict.
enum WriteError {
    Db(tokio_postgres::Error),
    Store(StoreError),
}

impl From<tokio_postgres::Error> for WriteError {
    fn from(e: tokio_postgres::Error) -> WriteError {
        WriteError::Db(e)
    }
}

impl From<StoreError> for WriteError {
    fn from(e: StoreError) -> WriteError {
        WriteError::Store(e)
    }
}

fn is_retryable(e: &tokio_postgres::Error) -> bool {
    matches!(
        e.code(),
        Some(c) if *c == SqlState::T_R_DEADLOCK_DETECTED || *c == SqlState::T_R_SERIALIZATION_FAILURE
    )
}

/// Maps a PostgreSQL error by what the caller should do: unreachable or
/// shutting down is [`StoreError::Unavailable`], the rest is fatal.
fn db_error(e: tokio_postgres::Error) -> StoreError {
    db_error_ref(&e)
}

/// [`db_error`] of a borrowed error.
fn db_error_ref(e: &tokio_postgres::Error) -> StoreError {
    let unavailable = match e.code() {
        Some(code) => {
            let c = code.code();
            // 08: connection exception; 57P01-57P03: admin/crash shutdown,
            // cannot connect now; 53: insufficient resources (too many
            // connections, disk full).
            c.starts_with("08") || c.starts_with("57P") || c.starts_with("53")
        }
        None => {
            e.is_closed()
                || std::error::Error::source(&e).is_some_and(|s| s.is::<std::io::Error>())
                || e.to_string().contains("timeout")
        }
    };
    if unavailable {
        StoreError::Unavailable(format!("database unreachable: {}", describe(e)))
    } else {
        StoreError::Fatal(format!("database error: {}", describe(e)))
    }
}

/// The server's message, when there is one, rather than `db error`.
fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{}: {}", db.code().code(), db.message()),
        None => connect::with_causes(e),
    }
}

fn pool_error(e: PoolError) -> StoreError {
    match e {
        PoolError::Backend(e) => db_error(e),
        PoolError::Timeout(kind) => {
            StoreError::Unavailable(format!("database unreachable: pool timeout ({kind:?})"))
        }
        other => StoreError::Unavailable(format!("database unreachable: {other}")),
    }
}

fn corrupt(id: &str, what: &str) -> StoreError {
    StoreError::Fatal(format!("corrupt key row `{id}` in database: {what}"))
}

/// How many rows of `keys` one fetch of the start-up snapshot takes (2 in
/// the unit tests, so that their snapshots take several).
const SNAPSHOT_BATCH: i32 = if cfg!(test) { 2 } else { 10_000 };

/// A key row ([`KEY_COLUMNS`]) as a [`StoredKey`].
fn stored_key(row: &Row) -> Result<StoredKey, StoreError> {
    stored_key_at(row, 0)
}

fn key_id(text: &str) -> Result<KeyId, StoreError> {
    KeyId::parse(text).map_err(|_| StoreError::Fatal(format!("corrupt id `{text}` in change log")))
}

fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn to_u64(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

/// Inserts a key row, its limits included; a key with credits on a meter
/// that has no balance yet (its own, new) starts it at the grant.
async fn insert_key(
    tx: &deadpool_postgres::Transaction<'_>,
    r: &KeyRecord,
) -> Result<(), WriteError> {
    let stmt = tx
        .prepare_cached(
            "INSERT INTO keys (id, kind, name, secret_hash, scopes, created_at_ms, expires_at_ms, \
             creator_id, rate_limit, rate_period_ms, credits_remaining, credits_refill_amount, \
             credits_refill_interval_ms, meter_id, meter_since_ms) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)",
        )
        .await?;
    let limits = LimitColumns::of(r);
    tx.execute(
        &stmt,
        &[
            &r.id().as_str(),
            &r.kind().as_str(),
            &r.name(),
            &r.secret_hash().as_bytes().as_slice(),
            &i64::from(r.scopes().bits()),
            &r.created_at().as_millis(),
            &r.expires_at().map(UnixMillis::as_millis),
            &r.creator_id().as_ref().map(KeyId::as_str),
            &limits.rate_limit,
            &limits.rate_period_ms,
            &limits.credits_remaining,
            &limits.credits_refill_amount,
            &limits.credits_refill_interval_ms,
            &limits.meter_id,
            &limits.meter_since_ms,
        ],
    )
    .await?;
    if let Some(credits) = r.limits().credits {
        let meter = r.meter();
        let balance = fresh_balance(&credits, meter.since, r.created_at());
        write_balance(tx, meter.id, balance, false).await?;
    }
    Ok(())
}

/// Writes a meter's balance: always with `replace`, else only where the
/// meter has none.
async fn write_balance(
    tx: &deadpool_postgres::Transaction<'_>,
    meter: KeyId,
    balance: CreditBalance,
    replace: bool,
) -> Result<(), WriteError> {
    let stmt = tx
        .prepare_cached(if replace {
            "INSERT INTO credit_balances (meter_id, remaining, period) VALUES ($1, $2, $3) \
             ON CONFLICT (meter_id) DO UPDATE SET remaining = excluded.remaining, \
             period = excluded.period"
        } else {
            "INSERT INTO credit_balances (meter_id, remaining, period) VALUES ($1, $2, $3) \
             ON CONFLICT (meter_id) DO NOTHING"
        })
        .await?;
    tx.execute(
        &stmt,
        &[
            &meter.as_str(),
            &to_i64(balance.remaining),
            &to_i64(balance.period),
        ],
    )
    .await?;
    Ok(())
}

/// The credits configured for `meter` (on its keys, live ones first), if
/// any; with `lock`, the row read is locked `FOR SHARE`, so a change of the
/// meter's limits waits for this transaction, or this one for it.
async fn meter_credits<C: GenericClient>(
    client: &C,
    meter: KeyId,
    lock: bool,
) -> Result<Option<Credits>, WriteError> {
    let text = format!(
        "SELECT credits_remaining, credits_refill_amount, credits_refill_interval_ms FROM keys \
         WHERE COALESCE(meter_id, id) = $1 AND credits_remaining IS NOT NULL \
         ORDER BY revoked_at_ms IS NOT NULL, id LIMIT 1{}",
        if lock { " FOR SHARE" } else { "" }
    );
    let stmt = client.prepare_cached(&text).await?;
    let Some(row) = client.query_opt(&stmt, &[&meter.as_str()]).await? else {
        return Ok(None);
    };
    let columns = LimitColumns {
        credits_remaining: row.get(0),
        credits_refill_amount: row.get(1),
        credits_refill_interval_ms: row.get(2),
        ..LimitColumns::default()
    };
    columns
        .limits()
        .map(|(limits, _)| limits.credits)
        .map_err(|m| {
            StoreError::Fatal(format!(
                "corrupt credits of meter `{meter}` in database: {m}"
            ))
            .into()
        })
}

/// Takes the next sequence numbers for `events`, appends them to the log
/// and notifies, in one statement (one round trip): the last step of every
/// writing transaction, so the `change_seq` row lock, which serializes
/// writers, is held only from here to the commit.
/// Inserts a new key and its `created` event; returns the event's seq.
async fn insert_created(
    tx: &deadpool_postgres::Transaction<'_>,
    record: &KeyRecord,
    actor: Option<KeyId>,
    at_ms: i64,
) -> Result<u64, WriteError> {
    insert_key(tx, record).await?;
    let event = NewEvent {
        action: Action::Created,
        key_id: record.id(),
        new_key_id: None,
    };
    let seqs = append(tx, &[event], actor, at_ms).await?;
    Ok(seqs.first().copied().unwrap_or_default())
}

async fn append(
    tx: &deadpool_postgres::Transaction<'_>,
    events: &[NewEvent],
    actor: Option<KeyId>,
    at_ms: i64,
) -> Result<Vec<u64>, WriteError> {
    let n = i64::try_from(events.len()).unwrap_or(i64::MAX);
    let stmt = tx
        .prepare_cached(
            "WITH s AS (UPDATE change_seq SET seq = seq + $1 RETURNING seq), \
             i AS ( \
                 INSERT INTO changes (seq, at_ms, action, key_id, actor_id, new_key_id) \
                 SELECT s.seq - $1 + e.ord, $2, e.action, e.key_id, $3, e.new_key_id \
                 FROM s, unnest($4::text[], $5::text[], $6::text[]) \
                     WITH ORDINALITY AS e(action, key_id, new_key_id, ord) \
                 RETURNING seq \
             ) \
             SELECT array_agg(seq ORDER BY seq), pg_notify($7, max(seq)::text) FROM i",
        )
        .await?;
    let actions: Vec<&str> = events.iter().map(|e| e.action.as_str()).collect();
    let keys: Vec<&str> = events.iter().map(|e| e.key_id.as_str()).collect();
    let new_keys: Vec<Option<&str>> = events
        .iter()
        .map(|e| e.new_key_id.as_ref().map(KeyId::as_str))
        .collect();
    let row = tx
        .query_one(
            &stmt,
            &[
                &n,
                &at_ms,
                &actor.as_ref().map(KeyId::as_str),
                &actions,
                &keys,
                &new_keys,
                &CHANNEL,
            ],
        )
        .await?;
    let seqs: Option<Vec<i64>> = row.get(0);
    Ok(seqs.unwrap_or_default().into_iter().map(to_u64).collect())
}

/// The key `id`'s row, if there is one.
async fn read_key<C: GenericClient>(
    client: &C,
    id: KeyId,
) -> Result<Option<StoredKey>, WriteError> {
    let stmt = client
        .prepare_cached(&format!("SELECT {KEY_COLUMNS} FROM keys WHERE id = $1"))
        .await?;
    match client.query_opt(&stmt, &[&id.as_str()]).await? {
        Some(row) => Ok(Some(stored_key(&row)?)),
        None => Ok(None),
    }
}

/// The family of `root`: the key and every key rolled into it, transitively;
/// empty if the key was itself rolled (its children belong to the key that
/// replaced it). Read on its own, so that the descendants query gets it as
/// an array.
async fn family_ids<C: GenericClient>(
    client: &C,
    root: KeyId,
) -> Result<Vec<String>, tokio_postgres::Error> {
    let stmt = client
        .prepare_cached(
            "WITH RECURSIVE fam(id) AS ( \
                 SELECT $1::text COLLATE \"C\" \
                 WHERE NOT EXISTS (SELECT 1 FROM keys WHERE rolled_from = $1::text COLLATE \"C\") \
                 UNION \
                 SELECT k.rolled_from FROM keys k JOIN fam ON k.id = fam.id \
                 WHERE k.rolled_from IS NOT NULL \
             ) SELECT id FROM fam",
        )
        .await?;
    Ok(client
        .query(&stmt, &[&root.as_str()])
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect())
}

/// The family given as the text array `${n}` ([`family_ids`]), as a common
/// table expression named `fam`.
fn family_cte(n: u8) -> String {
    format!("fam(id) AS (SELECT unnest(${n}::text[]) COLLATE \"C\")")
}

/// The keys minted by a member of the family `${n}`, transitively (`d`), and
/// the caller's subtree proper (`sub`: `d` without the family),
/// materialized: scoped queries are driven by it, so they cost what the
/// caller's own subtree costs, whatever the target (after [`family_cte`]).
fn descendants_cte(n: u8) -> String {
    format!(
        "d(id) AS ( \
             SELECT k.id FROM keys k WHERE k.creator_id = ANY(${n}::text[]) \
             UNION \
             SELECT k.id FROM keys k JOIN d ON k.creator_id = d.id \
         ), \
         sub(id) AS MATERIALIZED (SELECT id FROM d WHERE id NOT IN (SELECT id FROM fam))"
    )
}

/// Whether `id` is within `scope`: for [`Scope::DescendantsOf`], whether it
/// is in `ancestor`'s subtree. The whole subtree is computed first, so the
/// answer costs the same for an unknown id, another tenant's id and one of
/// the caller's.
async fn in_scope<C: GenericClient>(
    client: &C,
    id: KeyId,
    scope: Scope,
) -> Result<bool, tokio_postgres::Error> {
    let ancestor = match scope {
        Scope::All => return Ok(true),
        Scope::DescendantsOf(ancestor) => ancestor,
    };
    let family = family_ids(client, ancestor).await?;
    let stmt = client
        .prepare_cached(&format!(
            "WITH RECURSIVE {fam}, {d} \
             SELECT count(*) > 0 AND bool_or(id = $1::text COLLATE \"C\") FROM sub",
            fam = family_cte(2),
            d = descendants_cte(2)
        ))
        .await?;
    Ok(client
        .query_one(&stmt, &[&id.as_str(), &family])
        .await?
        .get::<_, Option<bool>>(0)
        .unwrap_or(false))
}

/// Locks the live key `id` for update, if it is live and within `scope`;
/// returns its stored expiry.
async fn lock_live(
    tx: &deadpool_postgres::Transaction<'_>,
    id: KeyId,
    scope: Scope,
) -> Result<Option<i64>, WriteError> {
    let stmt = tx
        .prepare_cached(
            "SELECT expires_at_ms FROM keys WHERE id = $1 AND revoked_at_ms IS NULL FOR UPDATE",
        )
        .await?;
    // The scope first, always: see `in_scope`.
    let member = in_scope(tx, id, scope).await?;
    match tx.query_opt(&stmt, &[&id.as_str()]).await? {
        Some(row) if member => Ok(row.get(0)),
        _ => Err(StoreError::NotFound.into()),
    }
}

/// Fails with [`StoreError::CallerRevoked`] unless `actor` is a known key,
/// not revoked and not expired at `at_ms`; locks its row `FOR SHARE`, so a
/// revocation of it waits for this transaction, and this one for it.
async fn lock_caller(
    tx: &deadpool_postgres::Transaction<'_>,
    actor: KeyId,
    at_ms: i64,
) -> Result<(), WriteError> {
    let stmt = tx
        .prepare_cached("SELECT revoked_at_ms, expires_at_ms FROM keys WHERE id = $1 FOR SHARE")
        .await?;
    let live = match tx.query_opt(&stmt, &[&actor.as_str()]).await? {
        Some(row) => match (row.get::<_, Option<i64>>(0), row.get::<_, Option<i64>>(1)) {
            (None, None) => true,
            (None, Some(expires_at_ms)) => at_ms < expires_at_ms,
            (Some(_), _) => false,
        },
        None => false,
    };
    if live {
        Ok(())
    } else {
        Err(StoreError::CallerRevoked.into())
    }
}

/// A rolled key is on its way out: it mints and rolls no more; its children
/// belong to the key that replaced it. Run with `id`'s row locked, so a roll
/// of it commits before this reads, or waits for this transaction.
async fn check_not_rolled<C: GenericClient>(client: &C, id: KeyId) -> Result<(), WriteError> {
    let stmt = client
        .prepare_cached("SELECT EXISTS (SELECT 1 FROM keys WHERE rolled_from = $1)")
        .await?;
    if client.query_one(&stmt, &[&id.as_str()]).await?.get(0) {
        Err(super::rolled(id).into())
    } else {
        Ok(())
    }
}

/// [`lock_caller`], then [`check_not_rolled`]: what every write checks of
/// the key that asks for it.
async fn lock_acting_caller(
    tx: &deadpool_postgres::Transaction<'_>,
    actor: KeyId,
    at_ms: i64,
) -> Result<(), WriteError> {
    lock_caller(tx, actor, at_ms).await?;
    check_not_rolled(tx, actor).await
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

/// The pool row of `meter_id`, locked `FOR UPDATE` until the transaction
/// ends, if there is one.
async fn lock_pool(
    tx: &deadpool_postgres::Transaction<'_>,
    meter_id: KeyId,
) -> Result<Option<PoolRow>, WriteError> {
    let stmt = tx
        .prepare_cached(
            "SELECT remaining, period FROM credit_balances WHERE meter_id = $1 FOR UPDATE",
        )
        .await?;
    Ok(tx
        .query_opt(&stmt, &[&meter_id.as_str()])
        .await?
        .map(|r| (credits(r.get(0)), period_of(r.get(1)))))
}

async fn write_pool(
    tx: &deadpool_postgres::Transaction<'_>,
    meter_id: KeyId,
    pool: PoolRow,
) -> Result<(), WriteError> {
    let stmt = tx
        .prepare_cached(
            "INSERT INTO credit_balances (meter_id, remaining, period) VALUES ($1, $2, $3) \
             ON CONFLICT (meter_id) DO UPDATE \
             SET remaining = excluded.remaining, period = excluded.period",
        )
        .await?;
    tx.execute(
        &stmt,
        &[&meter_id.as_str(), &col(pool.0), &period_col(pool.1)],
    )
    .await?;
    Ok(())
}

/// Deletes the meter's leases of any period but `period`: void.
/// Sets `meter`'s credits to `remaining` inside `tx` ([`Store::set_credits`]):
/// the pool gets `remaining` less what the live leases of the current period
/// hold (they stay with their instances), in the current period of the
/// meter's refill as given; leases of another period are void. Returns the
/// new total.
async fn set_pool(
    tx: &deadpool_postgres::Transaction<'_>,
    meter: CreditMeter,
    remaining: u64,
    now_ms: i64,
) -> Result<u64, WriteError> {
    let id = meter.meter.id;
    let stored = lock_pool(tx, id).await?.map_or(0, |(_, p)| p);
    // The period of the refill as given, not at least the stored one: a
    // changed interval numbers its periods anew.
    let period = meter.refill.map_or(stored, |r| {
        r.period_at(meter.meter.since, UnixMillis::from_millis(now_ms))
    });
    void_others(tx, id, period).await?;
    let held = leased(tx, id, period, "", now_ms).await?;
    let pool = remaining.min(keygate::MAX_CREDITS).saturating_sub(held);
    write_pool(tx, id, (pool, period)).await?;
    Ok(add(pool, held))
}

/// Adds `delta` to `meter`'s pool inside `tx` ([`Store::add_credits`]),
/// refilled first, clamped at 0 and [`keygate::MAX_CREDITS`]; the new total,
/// or `None` without a pool row.
async fn add_pool(
    tx: &deadpool_postgres::Transaction<'_>,
    meter: CreditMeter,
    delta: i64,
    now_ms: i64,
) -> Result<Option<u64>, WriteError> {
    let id = meter.meter.id;
    let Some(row) = lock_pool(tx, id).await? else {
        return Ok(None);
    };
    let ((remaining, period), refill) = refilled(row, meter, now_ms);
    if refill {
        void_others(tx, id, period).await?;
    }
    let sum = i128::from(remaining) + i128::from(delta);
    let pool = u64::try_from(sum.clamp(0, i128::from(keygate::MAX_CREDITS))).unwrap_or(0);
    write_pool(tx, id, (pool, period)).await?;
    let held = leased(tx, id, period, "", now_ms).await?;
    Ok(Some(add(pool, held)))
}

async fn void_others(
    tx: &deadpool_postgres::Transaction<'_>,
    meter_id: KeyId,
    period: u64,
) -> Result<(), WriteError> {
    let stmt = tx
        .prepare_cached("DELETE FROM credit_leases WHERE meter_id = $1 AND period <> $2")
        .await?;
    tx.execute(&stmt, &[&meter_id.as_str(), &period_col(period)])
        .await?;
    Ok(())
}

/// What the live leases of `period` hold, as last known, but `except`'s.
async fn leased<C: GenericClient>(
    client: &C,
    meter_id: KeyId,
    period: u64,
    except: &str,
    now_ms: i64,
) -> Result<u64, tokio_postgres::Error> {
    let stmt = client
        .prepare_cached(
            "SELECT COALESCE(SUM(amount), 0)::bigint FROM credit_leases \
             WHERE meter_id = $1 AND period = $2 AND instance_id <> $3 AND expires_at_ms >= $4",
        )
        .await?;
    let row = client
        .query_one(
            &stmt,
            &[&meter_id.as_str(), &period_col(period), &except, &now_ms],
        )
        .await?;
    Ok(credits(row.get(0)))
}

#[async_trait]
impl Store for PgStore {
    async fn create(
        &self,
        record: &KeyRecord,
        actor: Option<KeyId>,
        at_ms: i64,
    ) -> Result<u64, StoreError> {
        write_tx!(self, tx => {
            // A key minted by a key that is being revoked: lock the
            // creator's row, so that the revocation either sees this key
            // (and revokes it too) or this insert sees the revocation.
            for caller in [actor, record.creator_id()].into_iter().flatten() {
                lock_acting_caller(tx, caller, at_ms).await?;
            }
            // The creator's row is locked: its limits cannot change before
            // this commits.
            if let Some(creator) = record.creator_id() {
                if let Some(creator) = read_key(tx, creator).await? {
                    super::check_charged(record, &creator.record)?;
                }
            }
            insert_created(tx, record, actor, at_ms).await
        })
    }

    async fn revoke(
        &self,
        id: KeyId,
        scope: Scope,
        cascade: bool,
        actor: Option<KeyId>,
        at_ms: i64,
    ) -> Result<Vec<(u64, KeyId)>, StoreError> {
        write_tx!(self, tx => {
            if let Some(actor) = actor.filter(|&actor| actor != id) {
                lock_acting_caller(tx, actor, at_ms).await?;
            }
            lock_live(tx, id, scope).await?;
            let revoke = tx
                .prepare_cached(
                    "UPDATE keys SET revoked_at_ms = $2 \
                     WHERE id = ANY($1) AND revoked_at_ms IS NULL RETURNING id",
                )
                .await?;
            tx.execute(&revoke, &[&vec![id.as_str()], &at_ms]).await?;
            let mut revoked = vec![id];
            // The keys rolled into `id`, still in their overlap: the same
            // credential, revoked with it, cascade or not.
            let predecessors = tx
                .prepare_cached(
                    "WITH RECURSIVE p(id) AS ( \
                         SELECT rolled_from FROM keys WHERE id = $1 AND rolled_from IS NOT NULL \
                         UNION \
                         SELECT k.rolled_from FROM keys k JOIN p ON k.id = p.id \
                         WHERE k.rolled_from IS NOT NULL \
                     ) SELECT id FROM p WHERE id != $1",
                )
                .await?;
            let ids: Vec<String> = tx
                .query(&predecessors, &[&id.as_str()])
                .await?
                .iter()
                .map(|r| r.get(0))
                .collect();
            for row in tx.query(&revoke, &[&ids, &at_ms]).await? {
                revoked.push(key_id(row.get(0))?);
            }
            if cascade {
                // Live descendants, at any depth (`UNION` stops at a
                // cycle). Repeated until none is left: a child minted by a
                // descendant that committed after the previous round shows
                // up in the next one (a mint locks its creator's row, which
                // this transaction now holds, so none can slip in after the
                // last round).
                let live = tx
                    .prepare_cached(&format!(
                        "WITH RECURSIVE {fam}, {d} \
                         SELECT sub.id FROM sub JOIN keys k ON k.id = sub.id \
                         WHERE k.revoked_at_ms IS NULL ORDER BY sub.id",
                        fam = family_cte(1),
                        d = descendants_cte(1)
                    ))
                    .await?;
                let family = family_ids(tx, id).await?;
                loop {
                    let rows = tx.query(&live, &[&family]).await?;
                    if rows.is_empty() {
                        break;
                    }
                    let ids: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
                    let done = tx.query(&revoke, &[&ids, &at_ms]).await?;
                    let done: std::collections::HashSet<String> =
                        done.iter().map(|r| r.get(0)).collect();
                    for text in ids.iter().filter(|t| done.contains(*t)) {
                        revoked.push(key_id(text)?);
                    }
                }
            }
            if let Some(rest) = revoked.get_mut(1..) {
                rest.sort_by(|a, b| a.as_str().cmp(b.as_str()));
            }
            let events: Vec<NewEvent> = revoked
                .iter()
                .map(|&key_id| NewEvent {
                    action: Action::Revoked,
                    key_id,
                    new_key_id: None,
                })
                .collect();
            let seqs = append(tx, &events, actor, at_ms).await?;
            Ok(seqs.into_iter().zip(revoked).collect())
        })
    }

    async fn roll(
        &self,
        old: &KeyRecord,
        new: &KeyRecord,
        scope: Scope,
        actor: Option<KeyId>,
        at_ms: i64,
    ) -> Result<(u64, u64), StoreError> {
        write_tx!(self, tx => {
            if let Some(actor) = actor.filter(|&actor| actor != old.id()) {
                lock_acting_caller(tx, actor, at_ms).await?;
            }
            let stored = lock_live(tx, old.id(), scope).await?;
            if actor == Some(old.id()) && stored.is_some_and(|e| at_ms >= e) {
                return Err(StoreError::CallerRevoked.into());
            }
            check_not_rolled(tx, old.id()).await?;
            super::check_roll_fits(old, new, stored)?;
            // The row is locked: its limits are the ones the new key keeps.
            if let Some(current) = read_key(tx, old.id()).await? {
                super::check_roll_limits(&current.record, new)?;
            }
            let shorten = tx
                .prepare_cached("UPDATE keys SET expires_at_ms = $2 WHERE id = $1")
                .await?;
            let expires_at_ms = old.expires_at().map(UnixMillis::as_millis);
            tx.execute(&shorten, &[&old.id().as_str(), &expires_at_ms])
                .await?;
            insert_key(tx, new).await?;
            let link = tx
                .prepare_cached("UPDATE keys SET rolled_from = $2 WHERE id = $1")
                .await?;
            tx.execute(&link, &[&new.id().as_str(), &old.id().as_str()])
                .await?;
            let events = [
                NewEvent {
                    action: Action::Created,
                    key_id: new.id(),
                    new_key_id: None,
                },
                NewEvent {
                    action: Action::Rolled,
                    key_id: old.id(),
                    new_key_id: Some(new.id()),
                },
            ];
            let seqs = append(tx, &events, actor, at_ms).await?;
            match seqs.as_slice() {
                [created, rolled] => Ok((*created, *rolled)),
                _ => Err(StoreError::Fatal("roll appended no events".into()).into()),
            }
        })
    }

    async fn set_limits(
        &self,
        id: KeyId,
        change: LimitsChange,
        scope: Scope,
        actor: Option<KeyId>,
        at_ms: i64,
    ) -> Result<Vec<(u64, KeyRecord)>, StoreError> {
        write_tx!(self, tx => {
            if let Some(actor) = actor {
                lock_acting_caller(tx, actor, at_ms).await?;
            }
            lock_live(tx, id, scope).await?;
            let successor = tx
                .prepare_cached("SELECT EXISTS (SELECT 1 FROM keys WHERE rolled_from = $1)")
                .await?;
            if tx.query_one(&successor, &[&id.as_str()]).await?.get::<_, bool>(0) {
                return Err(rolled_target(id).into());
            }
            let target = read_key(tx, id).await?.ok_or(StoreError::NotFound)?;
            let meter = target.record.meter();
            let old = target.record.limits();
            let new = change.apply_to(old);
            let (rate_limit, rate_period_ms) = LimitColumns::rate(new.rate);
            let (remaining, refill_amount, refill_interval_ms) = LimitColumns::credits(new.credits);
            let update = tx
                .prepare_cached(
                    "UPDATE keys SET rate_limit = $2, rate_period_ms = $3, credits_remaining = $4, \
                     credits_refill_amount = $5, credits_refill_interval_ms = $6 \
                     WHERE COALESCE(meter_id, id) = $1",
                )
                .await?;
            tx.execute(
                &update,
                &[
                    &meter.id.as_str(),
                    &rate_limit,
                    &rate_period_ms,
                    &remaining,
                    &refill_amount,
                    &refill_interval_ms,
                ],
            )
            .await?;
            let now = UnixMillis::from_millis(at_ms);
            match new.credits {
                None => {
                    for text in [
                        "DELETE FROM credit_balances WHERE meter_id = $1",
                        "DELETE FROM credit_leases WHERE meter_id = $1",
                    ] {
                        let drop = tx.prepare_cached(text).await?;
                        tx.execute(&drop, &[&meter.id.as_str()]).await?;
                    }
                }
                // Changed credits: the meter's total (its pool plus the
                // live leases) becomes their grant.
                Some(credits) if old.credits != Some(credits) => {
                    let m = CreditMeter {
                        meter,
                        refill: credits.refill(),
                    };
                    set_pool(tx, m, credits.remaining(), at_ms).await?;
                }
                Some(credits) => {
                    let balance = fresh_balance(&credits, meter.since, now);
                    write_balance(tx, meter.id, balance, false).await?;
                }
            }
            let others = tx
                .prepare_cached(&format!(
                    "SELECT {KEY_COLUMNS} FROM keys \
                     WHERE COALESCE(meter_id, id) = $1 AND revoked_at_ms IS NULL AND id <> $2 \
                     ORDER BY id"
                ))
                .await?;
            let rows = tx.query(&others, &[&meter.id.as_str(), &id.as_str()]).await?;
            let mut keys = vec![(id, read_key(tx, id).await.ok().flatten())];
            for row in &rows {
                let text: &str = row.get(0);
                // A row that cannot be read still gets its event: the feed
                // fails it closed.
                match stored_key(row) {
                    Ok(key) => keys.push((key.record.id(), Some(key))),
                    Err(e) => {
                        tracing::error!("limits changed on an unreadable row: {e}");
                        if let Ok(id) = KeyId::parse(text) {
                            keys.push((id, None));
                        }
                    }
                }
            }
            let events: Vec<NewEvent> = keys
                .iter()
                .map(|&(key_id, _)| NewEvent {
                    action: Action::LimitsChanged,
                    key_id,
                    new_key_id: None,
                })
                .collect();
            let seqs = append(tx, &events, actor, at_ms).await?;
            Ok(seqs
                .into_iter()
                .zip(keys)
                .filter_map(|(seq, (_, key))| key.map(|k| (seq, k.record)))
                .collect())
        })
    }

    async fn change_credits(
        &self,
        meter: Meter,
        op: SetOrAdd,
        now: UnixMillis,
    ) -> Result<u64, StoreError> {
        let now_ms = now.as_millis();
        write_tx!(self, tx => {
            let credits = meter_credits(tx, meter.id, true)
                .await?
                .ok_or_else(no_credits)?;
            let m = CreditMeter {
                meter,
                refill: credits.refill(),
            };
            match op {
                SetOrAdd::Set(n) => set_pool(tx, m, n, now_ms).await,
                SetOrAdd::Add(delta) => {
                    // A pool where the meter has none yet: its grant, as
                    // `balance_at` reads a missing one.
                    let fresh = balance_at(None, &credits, meter.since, now);
                    write_balance(tx, meter.id, fresh, false).await?;
                    Ok(add_pool(tx, m, delta, now_ms).await?.unwrap_or(0))
                }
            }
        })
    }

    async fn credit_balance(
        &self,
        meter: Meter,
        now: UnixMillis,
    ) -> Result<Option<u64>, StoreError> {
        let credits = {
            let client = self.client().await?;
            match meter_credits(&client, meter.id, false).await {
                Ok(Some(credits)) => credits,
                Ok(None) => return Ok(None),
                Err(WriteError::Db(e)) => return Err(db_error(e)),
                Err(WriteError::Store(e)) => return Err(e),
            }
        };
        let m = CreditMeter {
            meter,
            refill: credits.refill(),
        };
        Ok(Some(match self.credit_total(m, now.as_millis()).await? {
            Some(total) => total,
            None => balance_at(None, &credits, meter.since, now).remaining,
        }))
    }

    async fn is_rolled(&self, id: KeyId) -> Result<bool, StoreError> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached("SELECT EXISTS (SELECT 1 FROM keys WHERE rolled_from = $1)")
            .await
            .map_err(db_error)?;
        Ok(client
            .query_one(&stmt, &[&id.as_str()])
            .await
            .map_err(db_error)?
            .get(0))
    }

    async fn get(&self, id: KeyId, scope: Scope) -> Result<Option<StoredKey>, StoreError> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(&format!("SELECT {KEY_COLUMNS} FROM keys WHERE id = $1"))
            .await
            .map_err(db_error)?;
        // The scope first, always: see `in_scope`.
        let member = in_scope(&client, id, scope).await.map_err(db_error)?;
        let row = client
            .query_opt(&stmt, &[&id.as_str()])
            .await
            .map_err(db_error)?;
        match row {
            Some(row) if member => stored_key(&row).map(Some),
            _ => Ok(None),
        }
    }

    async fn list(
        &self,
        scope: Scope,
        starting_after: Option<KeyId>,
        limit: usize,
    ) -> Result<KeyPage, StoreError> {
        let client = self.client().await?;
        let after = starting_after.as_ref().map_or("", KeyId::as_str);
        let fetch = to_i64(u64::try_from(limit).unwrap_or(u64::MAX).saturating_add(1));
        let rows = match scope {
            Scope::All => {
                let stmt = client
                    .prepare_cached(&format!(
                        "SELECT {KEY_COLUMNS} FROM keys WHERE revoked_at_ms IS NULL AND id > $1 \
                         ORDER BY id LIMIT $2"
                    ))
                    .await
                    .map_err(db_error)?;
                client.query(&stmt, &[&after, &fetch]).await
            }
            Scope::DescendantsOf(ancestor) => {
                let family = family_ids(&client, ancestor).await.map_err(db_error)?;
                let stmt = client
                    .prepare_cached(&format!(
                        "WITH RECURSIVE {fam}, {d} \
                         SELECT {KEY_COLUMNS} FROM keys WHERE id IN (SELECT id FROM sub) \
                         AND revoked_at_ms IS NULL AND id > $1 ORDER BY id LIMIT $2",
                        fam = family_cte(3),
                        d = descendants_cte(3)
                    ))
                    .await
                    .map_err(db_error)?;
                client.query(&stmt, &[&after, &fetch, &family]).await
            }
        }
        .map_err(db_error)?;
        let mut keys = rows.iter().map(stored_key).collect::<Result<Vec<_>, _>>()?;
        let has_more = keys.len() > limit;
        keys.truncate(limit);
        Ok(KeyPage { keys, has_more })
    }

    async fn events(
        &self,
        after: u64,
        limit: usize,
        scope: Scope,
    ) -> Result<(Vec<Event>, bool), StoreError> {
        let client = self.client().await?;
        let fetch = to_i64(u64::try_from(limit).unwrap_or(u64::MAX).saturating_add(1));
        let rows = match scope {
            Scope::All => {
                let stmt = client
                    .prepare_cached(
                        "SELECT seq, at_ms, action, key_id, actor_id, new_key_id FROM changes \
                         WHERE seq > $1 ORDER BY seq LIMIT $2",
                    )
                    .await
                    .map_err(db_error)?;
                client.query(&stmt, &[&to_i64(after), &fetch]).await
            }
            Scope::DescendantsOf(ancestor) => {
                let family = family_ids(&client, ancestor).await.map_err(db_error)?;
                let stmt = client
                    .prepare_cached(&format!(
                        "WITH RECURSIVE {fam}, {d} \
                         SELECT seq, at_ms, action, key_id, \
                                CASE WHEN actor_id IN (SELECT id FROM fam) \
                                       OR actor_id IN (SELECT id FROM sub) THEN actor_id END, \
                                new_key_id FROM changes \
                         WHERE seq > $1 AND key_id IN (SELECT id FROM sub) \
                         ORDER BY seq LIMIT $2",
                        fam = family_cte(3),
                        d = descendants_cte(3)
                    ))
                    .await
                    .map_err(db_error)?;
                client
                    .query(&stmt, &[&to_i64(after), &fetch, &family])
                    .await
            }
        }
        .map_err(db_error)?;
        let mut events = Vec::with_capacity(rows.len());
        for row in &rows {
            let action: &str = row.get(2);
            let optional = |i: usize| -> Result<Option<KeyId>, StoreError> {
                row.get::<_, Option<&str>>(i).map(key_id).transpose()
            };
            events.push(Event {
                seq: to_u64(row.get(0)),
                at_ms: row.get(1),
                action: Action::from_name(action).ok_or_else(|| {
                    StoreError::Fatal(format!("unknown action `{action}` in change log"))
                })?,
                key_id: key_id(row.get(3))?,
                actor_id: optional(4)?,
                new_key_id: optional(5)?,
            });
        }
        let has_more = events.len() > limit;
        events.truncate(limit);
        Ok((events, has_more))
    }

    async fn changes_since(&self, after: u64, limit: usize) -> Result<Vec<Change>, StoreError> {
        let client = self.follower.get().await.map_err(pool_error)?;
        let stmt = client
            .prepare_cached(&format!(
                "SELECT c.seq, c.key_id, {} FROM changes c LEFT JOIN keys k ON k.id = c.key_id \
                 WHERE c.seq > $1 ORDER BY c.seq LIMIT $2",
                KEY_COLUMNS
                    .split(", ")
                    .map(|c| format!("k.{c}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
            .await
            .map_err(db_error)?;
        let limit = to_i64(u64::try_from(limit).unwrap_or(u64::MAX));
        let rows = client
            .query(&stmt, &[&to_i64(after), &limit])
            .await
            .map_err(db_error)?;
        let mut changes = Vec::with_capacity(rows.len());
        for row in &rows {
            let seq = to_u64(row.get(0));
            let text: &str = row.get(1);
            let Ok(id) = KeyId::parse(text) else {
                fail_closed(
                    &self.corrupt,
                    seq,
                    text,
                    "the change names no valid key id; skipped",
                );
                continue;
            };
            if row.get::<_, Option<&str>>(2).is_none() {
                fail_closed(
                    &self.corrupt,
                    seq,
                    text,
                    "the key has no row; treated as revoked",
                );
                changes.push(Change::revoke(seq, id));
                continue;
            }
            match stored_key_at(row, 2) {
                Ok(key) if key.revoked_at_ms.is_some() => changes.push(Change::revoke(seq, id)),
                Ok(key) if key.record.id() == id => changes.push(Change::upsert(seq, key.record)),
                Ok(_) => {
                    fail_closed(
                        &self.corrupt,
                        seq,
                        text,
                        "the row is another key's; treated as revoked",
                    );
                    changes.push(Change::revoke(seq, id));
                }
                Err(e) => {
                    fail_closed(
                        &self.corrupt,
                        seq,
                        text,
                        &format!("{e}; treated as revoked"),
                    );
                    changes.push(Change::revoke(seq, id));
                }
            }
        }
        Ok(changes)
    }

    async fn snapshot(&self) -> Result<Snapshot, StoreError> {
        // The request pool: a snapshot is taken at start, before the
        // follower's runtime exists, and its connection must live there.
        let mut client = self.client().await?;
        let tx = client
            .build_transaction()
            .isolation_level(IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await
            .map_err(db_error)?;
        let seq: i64 = tx
            .query_one("SELECT seq FROM change_seq", &[])
            .await
            .map_err(db_error)?
            .get(0);
        // Read through a portal, SNAPSHOT_BATCH rows at a time, each batch
        // parsed before the next is fetched: the rows are never all in
        // memory at once beside the records they become.
        let stmt = tx
            .prepare(&format!(
                "SELECT {KEY_COLUMNS} FROM keys WHERE revoked_at_ms IS NULL"
            ))
            .await
            .map_err(db_error)?;
        let portal = tx.bind(&stmt, &[]).await.map_err(db_error)?;
        let mut records = Vec::new();
        loop {
            let rows = tx
                .query_portal(&portal, SNAPSHOT_BATCH)
                .await
                .map_err(db_error)?;
            for row in &rows {
                match stored_key(row) {
                    Ok(key) => records.push(key.record),
                    Err(e) => {
                        fail_closed(&self.corrupt, to_u64(seq), "-", &format!("{e}; left out"));
                    }
                }
            }
            if rows.len() < usize::try_from(SNAPSHOT_BATCH).unwrap_or(usize::MAX) {
                break;
            }
        }
        tx.commit().await.map_err(db_error)?;
        Ok(Snapshot {
            records,
            seq: to_u64(seq),
        })
    }

    async fn record_last_used(&self, batch: &[(KeyId, i64)]) -> Result<(), StoreError> {
        if batch.is_empty() {
            return Ok(());
        }
        // In id order, so two instances flushing at once lock rows in the
        // same order.
        let mut sorted: Vec<(KeyId, i64)> = batch.to_vec();
        sorted.sort_unstable();
        let ids: Vec<&str> = sorted.iter().map(|(id, _)| id.as_str()).collect();
        let at: Vec<i64> = sorted.iter().map(|&(_, at)| at).collect();
        let ids = &ids;
        let at = &at;
        write_tx!(self, tx => {
            let stmt = tx
                .prepare_cached(
                    "UPDATE keys SET last_used_at_ms = b.at \
                     FROM unnest($1::text[], $2::bigint[]) AS b(id, at) \
                     WHERE keys.id = b.id \
                     AND (keys.last_used_at_ms IS NULL OR keys.last_used_at_ms < b.at)",
                )
                .await?;
            tx.execute(&stmt, &[ids, at]).await?;
            Ok(())
        })
    }

    async fn record_usage(&self, batch: &[UsageRow]) -> Result<(), StoreError> {
        if batch.is_empty() {
            return Ok(());
        }
        // In (key, minute) order, so two instances flushing at once lock
        // rows in the same order.
        let mut sorted = batch.to_vec();
        sorted.sort_unstable_by_key(|row| (row.key_id, row.minute_ms));
        let ids: Vec<&str> = sorted.iter().map(|r| r.key_id.as_str()).collect();
        let minutes: Vec<i64> = sorted.iter().map(|r| r.minute_ms).collect();
        let column = |i: usize| -> Vec<i64> {
            sorted
                .iter()
                .map(|r| r.counts.columns().get(i).copied().unwrap_or(0))
                .collect()
        };
        let (allowed, forbidden, rate_limited, credits) =
            (column(0), column(1), column(2), column(3));
        let (ids, minutes) = (&ids, &minutes);
        let (allowed, forbidden, rate_limited, credits) =
            (&allowed, &forbidden, &rate_limited, &credits);
        write_tx!(self, tx => {
            let stmt = tx
                .prepare_cached(
                    "INSERT INTO usage_minutes \
                         (key_id, minute_ms, allowed, forbidden, rate_limited, credits_exhausted) \
                     SELECT * FROM unnest($1::text[], $2::bigint[], $3::bigint[], $4::bigint[], \
                                          $5::bigint[], $6::bigint[]) \
                     ORDER BY 1, 2 \
                     ON CONFLICT (key_id, minute_ms) DO UPDATE SET \
                         allowed = usage_minutes.allowed + excluded.allowed, \
                         forbidden = usage_minutes.forbidden + excluded.forbidden, \
                         rate_limited = usage_minutes.rate_limited + excluded.rate_limited, \
                         credits_exhausted = \
                             usage_minutes.credits_exhausted + excluded.credits_exhausted",
                )
                .await?;
            tx.execute(&stmt, &[ids, minutes, allowed, forbidden, rate_limited, credits])
                .await?;
            Ok(())
        })
    }

    async fn usage(
        &self,
        id: KeyId,
        scope: Scope,
        query: UsageQuery,
    ) -> Result<Option<KeyUsage>, StoreError> {
        let mut client = self.client().await?;
        // One snapshot for the key and its rows; a retention pass that
        // commits meanwhile is seen whole or not at all.
        let tx = client
            .build_transaction()
            .isolation_level(IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await
            .map_err(db_error)?;
        let key = tx
            .prepare_cached("SELECT revoked_at_ms FROM keys WHERE id = $1")
            .await
            .map_err(db_error)?;
        // The scope first, always: see `in_scope`.
        let member = in_scope(&tx, id, scope).await.map_err(db_error)?;
        let revoked_at_ms: Option<i64> = match tx
            .query_opt(&key, &[&id.as_str()])
            .await
            .map_err(db_error)?
        {
            Some(row) if member => row.get(0),
            _ => return Ok(None),
        };
        let (start, end) = query.span();
        let stmt = tx
            .prepare_cached(
                "SELECT (t.at / $4) * $4 AS b, sum(t.allowed)::bigint, sum(t.forbidden)::bigint, \
                        sum(t.rate_limited)::bigint, sum(t.credits_exhausted)::bigint \
                 FROM ( \
                     SELECT minute_ms AS at, allowed, forbidden, rate_limited, credits_exhausted \
                     FROM usage_minutes \
                     WHERE key_id = $1 AND minute_ms >= $2 AND minute_ms < $3 \
                     UNION ALL \
                     SELECT day_ms, allowed, forbidden, rate_limited, credits_exhausted \
                     FROM usage_days \
                     WHERE $5 AND key_id = $1 AND day_ms >= $2 AND day_ms < $3 \
                 ) t \
                 GROUP BY b ORDER BY b",
            )
            .await
            .map_err(db_error)?;
        let rows = tx
            .query(
                &stmt,
                &[
                    &id.as_str(),
                    &start,
                    &end,
                    &query.bucket.ms(),
                    &(query.bucket == Bucket::Day),
                ],
            )
            .await
            .map_err(db_error)?;
        tx.commit().await.map_err(db_error)?;
        let mut buckets = Vec::with_capacity(rows.len());
        for row in &rows {
            let counts =
                UsageCounts::from_columns([row.get(1), row.get(2), row.get(3), row.get(4)]);
            if !counts.is_zero() {
                buckets.push(UsageBucket {
                    start_ms: row.get(0),
                    counts,
                });
            }
        }
        Ok(Some(KeyUsage {
            revoked_at_ms,
            buckets,
        }))
    }

    async fn prune_usage(&self, now_ms: i64, limit: usize) -> Result<Pruned, StoreError> {
        let (minute_cutoff, day_cutoff) = usage_cutoffs(now_ms);
        let limit = to_i64(u64::try_from(limit).unwrap_or(u64::MAX));
        write_tx!(self, tx => {
            // The minutes leave and their days grow in one statement: a
            // count is never in both, nor in neither. `SKIP LOCKED`: rows
            // another instance is folding are left to it.
            let fold = tx
                .prepare_cached(
                    "WITH old AS ( \
                         SELECT key_id, minute_ms FROM usage_minutes WHERE minute_ms < $1 \
                         ORDER BY minute_ms LIMIT $2 FOR UPDATE SKIP LOCKED \
                     ), moved AS ( \
                         DELETE FROM usage_minutes m USING old \
                         WHERE m.key_id = old.key_id AND m.minute_ms = old.minute_ms \
                         RETURNING m.key_id, m.minute_ms, m.allowed, m.forbidden, \
                                   m.rate_limited, m.credits_exhausted \
                     ), days AS ( \
                         INSERT INTO usage_days \
                             (key_id, day_ms, allowed, forbidden, rate_limited, credits_exhausted) \
                         SELECT key_id, (minute_ms / $3) * $3, sum(allowed), sum(forbidden), \
                                sum(rate_limited), sum(credits_exhausted) \
                         FROM moved GROUP BY 1, 2 ORDER BY 1, 2 \
                         ON CONFLICT (key_id, day_ms) DO UPDATE SET \
                             allowed = usage_days.allowed + excluded.allowed, \
                             forbidden = usage_days.forbidden + excluded.forbidden, \
                             rate_limited = usage_days.rate_limited + excluded.rate_limited, \
                             credits_exhausted = \
                                 usage_days.credits_exhausted + excluded.credits_exhausted \
                     ) \
                     SELECT count(*) FROM moved",
                )
                .await?;
            let folded: i64 = tx
                .query_one(&fold, &[&minute_cutoff, &limit, &DAY_MS])
                .await?
                .get(0);
            let drop = tx
                .prepare_cached(
                    "DELETE FROM usage_days d USING ( \
                         SELECT key_id, day_ms FROM usage_days WHERE day_ms < $1 \
                         LIMIT $2 FOR UPDATE SKIP LOCKED \
                     ) old \
                     WHERE d.key_id = old.key_id AND d.day_ms = old.day_ms",
                )
                .await?;
            let deleted = tx.execute(&drop, &[&day_cutoff, &limit]).await?;
            Ok(Pruned {
                folded: to_u64(folded),
                deleted,
            })
        })
    }

    async fn create_first(
        &self,
        record: &KeyRecord,
        at_ms: i64,
    ) -> Result<Option<u64>, StoreError> {
        write_tx!(self, tx => {
            // meta's one row serializes the instances that bootstrap at once:
            // the second waits here, then counts the first one's key.
            tx.execute("SELECT 1 FROM meta FOR UPDATE", &[]).await?;
            let keys: i64 = tx.query_one("SELECT count(*) FROM keys", &[]).await?.get(0);
            if keys != 0 {
                return Ok(None);
            }
            insert_created(tx, record, None, at_ms).await.map(Some)
        })
    }

    async fn count(&self) -> Result<u64, StoreError> {
        let client = self.client().await?;
        let n: i64 = client
            .query_one("SELECT count(*) FROM keys", &[])
            .await
            .map_err(db_error)?
            .get(0);
        Ok(to_u64(n))
    }

    async fn ping(&self) -> Result<(), StoreError> {
        let client = self.client().await?;
        client.simple_query("SELECT 1").await.map_err(db_error)?;
        Ok(())
    }

    async fn check_pepper(&self, fingerprint: [u8; 32]) -> Result<(), StoreError> {
        let hex = &hex::encode(fingerprint);
        write_tx!(self, tx => {
            let stored: Option<String> = tx
                .query_one("SELECT pepper_fingerprint FROM meta FOR UPDATE", &[])
                .await?
                .get(0);
            match stored {
                None => {
                    tx.execute("UPDATE meta SET pepper_fingerprint = $1", &[hex])
                        .await?;
                    Ok(())
                }
                Some(stored) if stored.eq_ignore_ascii_case(hex) => Ok(()),
                Some(_) => Err(StoreError::Fatal(
                    "the pepper file does not belong to this database (its fingerprint \
                     differs from the one stored): every key would be refused; start with \
                     the pepper file the other instances use"
                        .into(),
                )
                .into()),
            }
        })
    }

    async fn check_caller(&self, id: KeyId, at_ms: i64) -> Result<(), StoreError> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(
                "SELECT revoked_at_ms, expires_at_ms, \
                        EXISTS (SELECT 1 FROM keys WHERE rolled_from = $1) \
                 FROM keys WHERE id = $1",
            )
            .await
            .map_err(db_error)?;
        let row = client
            .query_opt(&stmt, &[&id.as_str()])
            .await
            .map_err(db_error)?;
        let Some(row) = row else {
            return Err(StoreError::CallerRevoked);
        };
        let (revoked, expires): (Option<i64>, Option<i64>) = (row.get(0), row.get(1));
        if revoked.is_some() || expires.is_some_and(|e| at_ms >= e) {
            return Err(StoreError::CallerRevoked);
        }
        if row.get::<_, bool>(2) {
            return Err(super::rolled(id));
        }
        Ok(())
    }

    fn corrupt_rows(&self) -> u64 {
        self.corrupt.load(std::sync::atomic::Ordering::Relaxed)
    }

    async fn exchange_demand(&self, report: &DemandReport) -> Result<PeerDemand, StoreError> {
        let client = self.shares.get().await.map_err(pool_error)?;
        // Every part in one statement: the heartbeat, the demand (in meter
        // order), the purge of stale reports (rows another purge holds are
        // skipped, never waited for), and the read of the other instances'
        // fresh reports, which sees the tables as they were before it.
        let stmt = client
            .prepare_cached(
                "WITH beat AS ( \
                     INSERT INTO rate_instances (instance_id, updated_at_ms) VALUES ($1, $2) \
                     ON CONFLICT (instance_id) DO UPDATE SET updated_at_ms = excluded.updated_at_ms \
                 ), mine AS ( \
                     INSERT INTO rate_demand (meter_id, instance_id, demand, updated_at_ms) \
                     SELECT u.m, $1, u.d, $2 FROM unnest($3::text[], $4::float8[]) AS u(m, d) \
                     ON CONFLICT (meter_id, instance_id) DO UPDATE \
                     SET demand = excluded.demand, updated_at_ms = excluded.updated_at_ms \
                 ), stale_demand AS ( \
                     DELETE FROM rate_demand WHERE (meter_id, instance_id) IN ( \
                         SELECT meter_id, instance_id FROM rate_demand \
                         WHERE $6::bigint IS NOT NULL AND updated_at_ms < $6 \
                         FOR UPDATE SKIP LOCKED) \
                 ), stale_instances AS ( \
                     DELETE FROM rate_instances WHERE instance_id IN ( \
                         SELECT instance_id FROM rate_instances \
                         WHERE $6::bigint IS NOT NULL AND updated_at_ms < $6 \
                         FOR UPDATE SKIP LOCKED) \
                 ) \
                 SELECT NULL::text, count(*)::float8 FROM rate_instances \
                 WHERE instance_id <> $1 AND updated_at_ms >= $5 \
                 UNION ALL \
                 SELECT meter_id, sum(demand) FROM rate_demand \
                 WHERE instance_id <> $1 AND updated_at_ms >= $5 GROUP BY meter_id \
                 ORDER BY 1 NULLS FIRST",
            )
            .await
            .map_err(db_error)?;
        let mut mine: Vec<&(KeyId, f64)> = report.demand.iter().collect();
        mine.sort_by(|a, b| a.0.as_str().cmp(b.0.as_str()));
        let meters: Vec<&str> = mine.iter().map(|(m, _)| m.as_str()).collect();
        let demand: Vec<f64> = mine.iter().map(|(_, d)| *d).collect();
        let rows = client
            .query(
                &stmt,
                &[
                    &report.instance,
                    &report.at_ms,
                    &meters,
                    &demand,
                    &report.fresh_since_ms,
                    &report.purge_before_ms,
                ],
            )
            .await
            .map_err(db_error)?;
        let mut peers = PeerDemand::default();
        for row in &rows {
            let value: f64 = row.get(1);
            match row.get::<_, Option<&str>>(0) {
                // A count of rows: a small whole number.
                None => peers.instances = value as u32,
                Some(text) => match KeyId::parse(text) {
                    Ok(meter) => peers.demand.push((meter, value)),
                    Err(_) => tracing::warn!(
                        meter = %super::redacted(text),
                        "a demand report names no valid meter; ignored"
                    ),
                },
            }
        }
        Ok(peers)
    }

    async fn withdraw_demand(&self, instance: &str) -> Result<(), StoreError> {
        let client = self.shares.get().await.map_err(pool_error)?;
        client
            .execute(
                "WITH d AS (DELETE FROM rate_demand WHERE instance_id = $1) \
                 DELETE FROM rate_instances WHERE instance_id = $1",
                &[&instance],
            )
            .await
            .map_err(db_error)?;
        Ok(())
    }

    async fn lease_credits(
        &self,
        meter: CreditMeter,
        instance: &str,
        want: u64,
        need: u64,
        now_ms: i64,
        ttl_ms: i64,
    ) -> Result<Lease, LeaseWriteError> {
        let id = meter.meter.id;
        lease_tx!(self, tx => {
            // The keys first, as a limits change locks them (then the pool).
            let (stored, stale) = as_stored(meter, meter_credits(tx, id, true).await?);
            if stale {
                return Ok(stale_lease(meter, now_ms));
            }
            let meter = stored;
            let Some(row) = lock_pool(tx, id).await? else {
                return Ok(Lease {
                    period: period_now(meter, 0, now_ms),
                    ..Lease::default()
                });
            };
            let ((remaining, period), refill) = refilled(row, meter, now_ms);
            if refill {
                void_others(tx, id, period).await?;
            }
            let granted = grant(remaining, want, need);
            if granted > 0 {
                let stmt = tx
                    .prepare_cached(
                        "INSERT INTO credit_leases \
                             (meter_id, instance_id, period, amount, expires_at_ms) \
                         VALUES ($1, $2, $3, $4, $5) \
                         ON CONFLICT (meter_id, instance_id) DO UPDATE SET \
                             amount = CASE WHEN credit_leases.period = excluded.period \
                                      THEN LEAST(credit_leases.amount + excluded.amount, $6) \
                                      ELSE excluded.amount END, \
                             period = excluded.period, \
                             expires_at_ms = excluded.expires_at_ms",
                    )
                    .await?;
                tx.execute(
                    &stmt,
                    &[
                        &id.as_str(),
                        &instance,
                        &period_col(period),
                        &col(granted),
                        &now_ms.saturating_add(ttl_ms),
                        &col(keygate::MAX_CREDITS),
                    ],
                )
                .await?;
            }
            let pool = remaining - granted;
            if refill || granted > 0 {
                write_pool(tx, id, (pool, period)).await?;
            }
            let elsewhere = leased(tx, id, period, instance, now_ms).await?;
            Ok(Lease {
                granted,
                period,
                pool,
                elsewhere,
                stale_refill: false,
            })
        })
    }

    async fn return_credits(
        &self,
        meter: CreditMeter,
        instance: &str,
        amount: u64,
        of_period: u64,
        kept: u64,
        now_ms: i64,
    ) -> Result<bool, LeaseWriteError> {
        let id = meter.meter.id;
        lease_tx!(self, tx => {
            let mut back = false;
            // Credits leased under another refill than the stored one
            // lapse: their period is numbered under that refill.
            let (meter, stale) = as_stored(meter, meter_credits(tx, id, true).await?);
            if let Some(row) = lock_pool(tx, id).await? {
                let ((mut remaining, period), refill) = refilled(row, meter, now_ms);
                if refill {
                    void_others(tx, id, period).await?;
                }
                back = !stale && period == of_period;
                if back {
                    remaining = add(remaining, amount);
                }
                if refill || back {
                    write_pool(tx, id, (remaining, period)).await?;
                }
            }
            let stmt = tx
                .prepare_cached(
                    "WITH gone AS ( \
                         DELETE FROM credit_leases \
                         WHERE meter_id = $1 AND instance_id = $2 AND period = $3 \
                           AND $4::bigint = 0 \
                     ) \
                     UPDATE credit_leases SET amount = $4::bigint \
                     WHERE meter_id = $1 AND instance_id = $2 AND period = $3 \
                       AND $4::bigint <> 0",
                )
                .await?;
            tx.execute(
                &stmt,
                &[&id.as_str(), &instance, &period_col(of_period), &col(kept)],
            )
            .await?;
            Ok(back)
        })
    }

    async fn renew_leases(
        &self,
        instance: &str,
        now_ms: i64,
        ttl_ms: i64,
        reports: &[LeaseReport],
    ) -> Result<Vec<PoolView>, StoreError> {
        // In meter order, so two writers lock rows in the same order.
        let mut sorted = reports.to_vec();
        sorted.sort_unstable_by_key(|r| r.meter_id);
        let ids: Vec<&str> = sorted.iter().map(|r| r.meter_id.as_str()).collect();
        let periods: Vec<i64> = sorted.iter().map(|r| period_col(r.period)).collect();
        let amounts: Vec<i64> = sorted.iter().map(|r| col(r.unspent)).collect();
        let (ids, periods, amounts) = (&ids, &periods, &amounts);
        let until = now_ms.saturating_add(ttl_ms);
        write_tx!(self, tx => {
            let extend = tx
                .prepare_cached(
                    "UPDATE credit_leases SET expires_at_ms = $2 WHERE instance_id = $1",
                )
                .await?;
            tx.execute(&extend, &[&instance, &until]).await?;
            let report = tx
                .prepare_cached(
                    "WITH r AS ( \
                         SELECT * FROM unnest($2::text[], $3::bigint[], $4::bigint[]) \
                             AS r(meter_id, period, amount) \
                     ), gone AS ( \
                         DELETE FROM credit_leases l USING r \
                         WHERE r.amount = 0 AND l.meter_id = r.meter_id \
                           AND l.instance_id = $1 AND l.period <= r.period \
                     ) \
                     INSERT INTO credit_leases \
                         (meter_id, instance_id, period, amount, expires_at_ms) \
                     SELECT r.meter_id, $1, r.period, r.amount, $5 FROM r \
                     WHERE r.amount > 0 ORDER BY r.meter_id \
                     ON CONFLICT (meter_id, instance_id) DO UPDATE SET \
                         amount = CASE WHEN credit_leases.period <= excluded.period \
                                  THEN excluded.amount ELSE credit_leases.amount END, \
                         period = GREATEST(credit_leases.period, excluded.period), \
                         expires_at_ms = excluded.expires_at_ms",
                )
                .await?;
            tx.execute(&report, &[&instance, ids, periods, amounts, &until])
                .await?;
            let pools = tx
                .prepare_cached(
                    "SELECT b.meter_id, b.remaining, b.period, \
                         COALESCE((SELECT SUM(l.amount) FROM credit_leases l \
                                   WHERE l.meter_id = b.meter_id AND l.period = b.period \
                                     AND l.instance_id <> $1 AND l.expires_at_ms >= $3), 0)::bigint \
                     FROM credit_balances b WHERE b.meter_id = ANY($2::text[])",
                )
                .await?;
            let rows = tx.query(&pools, &[&instance, ids, &now_ms]).await?;
            let mut views = Vec::with_capacity(rows.len());
            for row in &rows {
                views.push(PoolView {
                    meter_id: key_id(row.get(0))?,
                    remaining: credits(row.get(1)),
                    period: period_of(row.get(2)),
                    elsewhere: credits(row.get(3)),
                });
            }
            Ok(views)
        })
    }

    async fn expire_leases(&self, now_ms: i64) -> Result<Expired, StoreError> {
        write_tx!(self, tx => {
            let expired = tx
                .prepare_cached(
                    "WITH gone AS ( \
                         DELETE FROM credit_leases WHERE expires_at_ms < $1 RETURNING amount \
                     ) SELECT count(*), COALESCE(SUM(amount), 0)::bigint FROM gone",
                )
                .await?;
            let row = tx.query_one(&expired, &[&now_ms]).await?;
            let void = tx
                .prepare_cached(
                    "DELETE FROM credit_leases l USING credit_balances b \
                     WHERE b.meter_id = l.meter_id AND b.period <> l.period",
                )
                .await?;
            let void = tx.execute(&void, &[]).await?;
            Ok(Expired {
                leases: to_u64(row.get(0)),
                forfeited: credits(row.get(1)),
                void,
            })
        })
    }

    async fn credit_total(
        &self,
        meter: CreditMeter,
        now_ms: i64,
    ) -> Result<Option<u64>, StoreError> {
        let mut client = self.client().await?;
        // One snapshot: the pool and the leases as of the same moment.
        let tx = client
            .build_transaction()
            .isolation_level(IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await
            .map_err(db_error)?;
        let stmt = tx
            .prepare_cached("SELECT remaining, period FROM credit_balances WHERE meter_id = $1")
            .await
            .map_err(db_error)?;
        let Some(row) = tx
            .query_opt(&stmt, &[&meter.meter.id.as_str()])
            .await
            .map_err(db_error)?
        else {
            return Ok(None);
        };
        let row = (credits(row.get(0)), period_of(row.get(1)));
        let (meter, _) = as_stored(
            meter,
            meter_credits(&tx, meter.meter.id, false)
                .await
                .map_err(|e| match e {
                    WriteError::Db(e) => db_error(e),
                    WriteError::Store(e) => e,
                })?,
        );
        let ((remaining, period), refill) = refilled(row, meter, now_ms);
        let held = if refill {
            0
        } else {
            leased(&tx, meter.meter.id, period, "", now_ms)
                .await
                .map_err(db_error)?
        };
        tx.commit().await.map_err(db_error)?;
        Ok(Some(add(remaining, held)))
    }

    #[cfg(test)]
    async fn set_credits(
        &self,
        meter: CreditMeter,
        remaining: u64,
        now_ms: i64,
    ) -> Result<u64, StoreError> {
        write_tx!(self, tx => {
            set_pool(tx, meter, remaining, now_ms).await
        })
    }

    #[cfg(test)]
    async fn add_credits(
        &self,
        meter: CreditMeter,
        delta: i64,
        now_ms: i64,
    ) -> Result<Option<u64>, StoreError> {
        write_tx!(self, tx => {
            add_pool(tx, meter, delta, now_ms).await
        })
    }

    fn shared(&self) -> bool {
        true
    }

    async fn head_seq(&self) -> Result<u64, StoreError> {
        let client = self.client().await?;
        let row = client
            .query_one("SELECT COALESCE(MAX(seq), 0) FROM changes", &[])
            .await
            .map_err(db_error)?;
        Ok(u64::try_from(row.get::<_, i64>(0)).unwrap_or(0))
    }

    fn pool_status(&self) -> Option<crate::store::PoolStatus> {
        let status = self.pool.status();
        Some(crate::store::PoolStatus {
            in_use: status.size.saturating_sub(status.available),
            idle: status.available,
            max: status.max_size,
            waiting: status.waiting,
        })
    }

    fn change_signal(&self) -> Option<Arc<Notify>> {
        let handle = tokio::runtime::Handle::try_current().ok()?;
        let listener = self.listener.get_or_init(|| {
            let signal = Arc::new(Notify::new());
            let task = handle.spawn(listen(self.target.clone(), Arc::clone(&signal)));
            Listener { signal, task }
        });
        Some(Arc::clone(&listener.signal))
    }
}

/// [`stored_key`] for a row whose key columns start at `offset`.
fn stored_key_at(row: &Row, offset: usize) -> Result<StoredKey, StoreError> {
    let id_text: &str = row.try_get(offset).map_err(db_error)?;
    let id = KeyId::parse(id_text).map_err(|_| corrupt(id_text, "malformed id"))?;
    let kind = match row.try_get::<_, &str>(offset + 1).map_err(db_error)? {
        "standard" => KeyKind::Standard,
        "restricted" => KeyKind::Restricted,
        other => return Err(corrupt(id_text, &format!("unknown kind `{other}`"))),
    };
    let hash: &[u8] = row.try_get(offset + 3).map_err(db_error)?;
    let hash: [u8; 32] = hash
        .try_into()
        .map_err(|_| corrupt(id_text, "secret hash is not 32 bytes"))?;
    let bits: i64 = row.try_get(offset + 4).map_err(db_error)?;
    let scopes = u32::try_from(bits)
        .ok()
        .and_then(Scopes::from_bits)
        .ok_or_else(|| corrupt(id_text, "invalid scope bits"))?;
    let creator_id = row
        .try_get::<_, Option<&str>>(offset + 7)
        .map_err(db_error)?
        .map(KeyId::parse)
        .transpose()
        .map_err(|_| corrupt(id_text, "malformed creator id"))?;
    let (limits, meter) = LimitColumns {
        rate_limit: row.try_get(offset + 10).map_err(db_error)?,
        rate_period_ms: row.try_get(offset + 11).map_err(db_error)?,
        credits_remaining: row.try_get(offset + 12).map_err(db_error)?,
        credits_refill_amount: row.try_get(offset + 13).map_err(db_error)?,
        credits_refill_interval_ms: row.try_get(offset + 14).map_err(db_error)?,
        meter_id: row.try_get(offset + 15).map_err(db_error)?,
        meter_since_ms: row.try_get(offset + 16).map_err(db_error)?,
    }
    .limits()
    .map_err(|m| corrupt(id_text, &m))?;
    let record = KeyRecord::from_parts(KeyRecordParts {
        id,
        kind,
        name: row.try_get(offset + 2).map_err(db_error)?,
        secret_hash: SecretHash::from_bytes(hash),
        scopes,
        created_at: UnixMillis::from_millis(row.try_get(offset + 5).map_err(db_error)?),
        expires_at: row
            .try_get::<_, Option<i64>>(offset + 6)
            .map_err(db_error)?
            .map(UnixMillis::from_millis),
        creator_id,
        limits,
        meter,
    })
    .map_err(|e| corrupt(id_text, &e.to_string()))?;
    Ok(StoredKey {
        record,
        revoked_at_ms: row.try_get(offset + 8).map_err(db_error)?,
        last_used_at_ms: row.try_get(offset + 9).map_err(db_error)?,
    })
}

/// The listener task: `LISTEN` on a dedicated connection, forever,
/// reconnecting with backoff.
async fn listen(target: Target, signal: Arc<Notify>) {
    loop {
        // Until a listener is established and later lost: the backoff
        // starts again from its shortest pause after each such loss.
        let mut warned = false;
        let lost = (|| listen_once(&target, &signal))
            .retry(backoff())
            .sleep(tokio::time::sleep)
            .notify(|e, _| {
                if !warned {
                    let e = target.connect_error(e);
                    tracing::warn!("change listener: cannot listen: {e}; retrying");
                    warned = true;
                }
            })
            .await;
        if let Err(e) = lost {
            let e = target.connect_error(&e);
            tracing::warn!("change listener: cannot listen: {e}; retrying");
        } else {
            tracing::warn!("change listener: connection lost; reconnecting");
        }
        tokio::time::sleep(BACKOFF_MIN).await;
    }
}

/// The reconnection backoff: exponential from [`BACKOFF_MIN`] to
/// [`BACKOFF_MAX`], without end (a caller's `when` decides when to stop).
fn backoff() -> ExponentialBuilder {
    ExponentialBuilder::new()
        .with_min_delay(BACKOFF_MIN)
        .with_max_delay(BACKOFF_MAX)
        .with_factor(2.0)
        .without_max_times()
}

/// One listening connection: returns `Ok` when an established listener
/// lost its connection, `Err` when it could not be established.
async fn listen_once(target: &Target, signal: &Arc<Notify>) -> Result<(), tokio_postgres::Error> {
    // The pool's TLS connector: the listener is held to the same sslmode.
    let (client, mut connection) = target.config.connect(target.tls.clone()).await?;
    let driver_signal = Arc::clone(signal);
    let mut driver = tokio::spawn(async move {
        loop {
            match std::future::poll_fn(|cx| connection.poll_message(cx)).await {
                Some(Ok(AsyncMessage::Notification(_))) => driver_signal.notify_one(),
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    tracing::debug!("change listener connection: {e}");
                    return;
                }
                None => return,
            }
        }
    });
    struct Abort(tokio::task::AbortHandle);
    impl Drop for Abort {
        fn drop(&mut self) {
            self.0.abort();
        }
    }
    let _abort = Abort(driver.abort_handle());
    client.batch_execute(&format!("LISTEN {CHANNEL}")).await?;
    tracing::info!("change listener: listening");
    // Whatever was written while no one listened: catch up now.
    signal.notify_one();
    loop {
        tokio::select! {
            _ = &mut driver => return Ok(()),
            () = tokio::time::sleep(HEARTBEAT) => {
                // A half-open connection (no RST) answers nothing: find out.
                match tokio::time::timeout(HEARTBEAT, client.simple_query("")).await {
                    Ok(Ok(_)) => {}
                    _ => return Ok(()),
                }
            }
        }
    }
}

// `keygate migrate`: export and import (store::copy).
mod copy;

#[cfg(test)]
#[path = "../../tests/support/pg.rs"]
pub(crate) mod pg;

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]
mod tests;
