//! The SQLite store: [`SqliteStore`], schema version 6.
//!
//! Tables:
//!
//! * `keys`: one row per key, in real columns (the secret digest as a
//!   32-byte BLOB, the scopes as [`Scopes::bits`]), revoked rows kept;
//!   indexed by `creator_id` for the attenuating policy's descendant rules;
//!   `rolled_from` names the key a rolled key replaced (version 3), so a
//!   roll's new key inherits the old key's children. Version 5 adds the
//!   limit columns (`rate_limit`, `rate_period_ms`, `credits_remaining`,
//!   `credits_refill_amount`, `credits_refill_interval_ms`: NULL where the
//!   key has none) and the meter the key is charged to (`meter_id`,
//!   `meter_since_ms`: NULL for its own), indexed by
//!   `COALESCE(meter_id, id)`, so the keys of one meter change together.
//! * `credit_balances(meter_id, remaining, period)`: each meter's pool of
//!   credits no instance holds, and the refill period it belongs to
//!   (version 5); the balance is the pool plus the leases.
//! * `changes`: the append-only change log, which is also the audit log.
//!   `seq` is an `AUTOINCREMENT` key assigned inside the write transaction;
//!   SQLite serializes writers, so sequence numbers grow with commit order
//!   and are never reused.
//! * `meta`: `schema_version` and `pepper_fingerprint` (hex).
//! * `usage_minutes(key_id, minute_ms, allowed, forbidden, rate_limited,
//!   credits_exhausted)` and `usage_days(key_id, day_ms, ...)` (version 4):
//!   request counts per key and minute, added to by the follower's flushes;
//!   retention folds minutes older than 30 days into days and deletes days
//!   older than two years (`usage.rs`).
//! * `credit_leases` (version 6): the credits each instance holds of a
//!   meter's pool (see `store::lease`). On SQLite one instance holds the
//!   leases, so the credits are exact: the pool plus the one lease is the
//!   balance.
//!
//! The demand reports by which instances split rate limits
//! ([`Store::exchange_demand`](super::Store::exchange_demand)) are kept in
//! memory, not in the file: one process serves it (`demand`).
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
use keygate::{Change, KeyId, KeyRecord, Meter, UnixMillis};
use rusqlite::{Connection, TransactionBehavior};

use super::{
    Action, CreditMeter, DemandReport, Event, Expired, KeyPage, KeyUsage, Lease, LeaseReport,
    LeaseWriteError, LimitsChange, PeerDemand, PoolView, Pruned, Scope, SetOrAdd, Snapshot,
    StoreError, StoredKey, UsageQuery, UsageRow,
};

mod copy;
mod demand;
mod leases;
pub mod lock;
mod queries;
mod schema;
#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]
mod tests;
mod usage;

use queries::*;
use schema::*;

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
    /// The demand reports (in memory: see `demand`).
    demand: Mutex<demand::DemandTable>,
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path`: a writer and a
    /// reader connection, both checked for WAL and `synchronous` FULL or
    /// EXTRA; creates the schema, migrates a 0.1.0 or older one, or refuses
    /// a newer one.
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
                demand: Mutex::new(demand::DemandTable::default()),
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
                check_caller(&tx, caller, at_ms)?;
            }
            if let Some(creator) = record.creator_id() {
                if let Some(creator) = get_key(&tx, creator)? {
                    super::check_charged(&record, &creator.record)?;
                }
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

    async fn set_limits(
        &self,
        id: KeyId,
        change: LimitsChange,
        scope: Scope,
        actor: Option<KeyId>,
        at_ms: i64,
    ) -> Result<Vec<(u64, KeyRecord)>, StoreError> {
        self.write(move |conn, _| set_limits_tx(conn, id, change, scope, actor, at_ms))
            .await
    }

    async fn change_credits(
        &self,
        meter: Meter,
        op: SetOrAdd,
        now: UnixMillis,
    ) -> Result<u64, StoreError> {
        self.write(move |conn, _| change_credits_tx(conn, meter, op, now))
            .await
    }

    async fn credit_balance(
        &self,
        meter: Meter,
        now: UnixMillis,
    ) -> Result<Option<u64>, StoreError> {
        self.read(move |conn| read_balance(conn, meter, now)).await
    }

    async fn is_rolled(&self, id: KeyId) -> Result<bool, StoreError> {
        self.read(move |conn| successor(conn, id).map(|s| s.is_some()))
            .await
    }

    async fn get(&self, id: KeyId, scope: Scope) -> Result<Option<StoredKey>, StoreError> {
        self.read(move |conn| {
            // The scope first, always: see `in_scope`.
            let member = in_scope(conn, id, scope)?;
            Ok(get_key(conn, id)?.filter(|_| member))
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

    async fn check_caller(&self, id: KeyId, at_ms: i64) -> Result<(), StoreError> {
        self.read(move |conn| check_caller(conn, id, at_ms)).await
    }

    async fn record_last_used(&self, batch: &[(KeyId, i64)]) -> Result<(), StoreError> {
        if batch.is_empty() {
            return Ok(());
        }
        // In id order, as the table is: each of its B-tree pages is then
        // visited once, in turn, not once per row at random (a store of a
        // million keys does not fit SQLite's page cache).
        let mut batch = batch.to_vec();
        batch.sort_unstable();
        self.write(move |conn, _| write_last_used(conn, &batch))
            .await
    }

    async fn record_usage(&self, batch: &[UsageRow]) -> Result<(), StoreError> {
        if batch.is_empty() {
            return Ok(());
        }
        // In (key, minute) order, the table's: see `record_last_used`.
        let mut batch = batch.to_vec();
        batch.sort_unstable_by_key(|row| (row.key_id, row.minute_ms));
        self.write(move |conn, _| usage::write_usage(conn, &batch))
            .await
    }

    async fn usage(
        &self,
        id: KeyId,
        scope: Scope,
        query: UsageQuery,
    ) -> Result<Option<KeyUsage>, StoreError> {
        self.read(move |conn| usage::read_usage(conn, id, scope, query))
            .await
    }

    async fn prune_usage(&self, now_ms: i64, limit: usize) -> Result<Pruned, StoreError> {
        self.write(move |conn, _| usage::prune(conn, now_ms, limit))
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

    async fn head_seq(&self) -> Result<u64, StoreError> {
        self.read(|conn| {
            conn.query_row("SELECT COALESCE(MAX(seq), 0) FROM changes", [], |r| {
                r.get::<_, i64>(0)
            })
            .map(|seq| u64::try_from(seq).unwrap_or(0))
            .map_err(sql)
        })
        .await
    }

    async fn check_pepper(&self, fingerprint: [u8; 32]) -> Result<(), StoreError> {
        self.write(move |conn, path| pepper_tx(conn, &fingerprint, path))
            .await
    }

    async fn exchange_demand(&self, report: &DemandReport) -> Result<PeerDemand, StoreError> {
        let mut table = self
            .inner
            .demand
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        Ok(table.exchange(report))
    }

    async fn withdraw_demand(&self, instance: &str) -> Result<(), StoreError> {
        let mut table = self
            .inner
            .demand
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        table.withdraw(instance);
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
        // SQLite's outcome is never in doubt: a failed commit rolled back.
        let instance = instance.to_owned();
        self.write(move |conn, _| leases::lease(conn, meter, &instance, want, need, now_ms, ttl_ms))
            .await
            .map_err(LeaseWriteError::from)
    }

    async fn return_credits(
        &self,
        meter: CreditMeter,
        instance: &str,
        amount: u64,
        period: u64,
        kept: u64,
        now_ms: i64,
    ) -> Result<bool, LeaseWriteError> {
        let instance = instance.to_owned();
        self.write(move |conn, _| {
            leases::give_back(conn, meter, &instance, amount, period, kept, now_ms)
        })
        .await
        .map_err(LeaseWriteError::from)
    }

    async fn renew_leases(
        &self,
        instance: &str,
        now_ms: i64,
        ttl_ms: i64,
        reports: &[LeaseReport],
    ) -> Result<Vec<PoolView>, StoreError> {
        let (instance, reports) = (instance.to_owned(), reports.to_vec());
        self.write(move |conn, _| leases::renew(conn, &instance, now_ms, ttl_ms, &reports))
            .await
    }

    async fn expire_leases(&self, now_ms: i64) -> Result<Expired, StoreError> {
        self.write(move |conn, _| leases::expire(conn, now_ms))
            .await
    }

    async fn credit_total(
        &self,
        meter: CreditMeter,
        now_ms: i64,
    ) -> Result<Option<u64>, StoreError> {
        self.read(move |conn| leases::total(conn, meter, now_ms))
            .await
    }

    #[cfg(test)]
    async fn set_credits(
        &self,
        meter: CreditMeter,
        remaining: u64,
        now_ms: i64,
    ) -> Result<u64, StoreError> {
        self.write(move |conn, _| leases::set(conn, meter, remaining, now_ms))
            .await
    }

    #[cfg(test)]
    async fn add_credits(
        &self,
        meter: CreditMeter,
        delta: i64,
        now_ms: i64,
    ) -> Result<Option<u64>, StoreError> {
        self.write(move |conn, _| leases::adjust(conn, meter, delta, now_ms))
            .await
    }
}
