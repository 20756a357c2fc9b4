//! Key storage: one trait, [`Store`], and its implementations. No handler
//! knows which one runs.
//!
//! Every write appends to a change log in the same transaction. The log is
//! both the audit log (`GET /v1/events`) and the change feed that keeps
//! every running instance's keyring up to date (see `crate::sync::follow`): each
//! entry names a key, and [`Store::changes_since`] turns entries into
//! [`keygate::Change`]s from the key's current row.

pub mod copy;
pub mod lease;
pub mod pepper;
pub mod postgres;
pub mod sqlite;

use async_trait::async_trait;
use keygate::{
    Change, CreditBalance, Credits, KeyId, KeyLimits, KeyRecord, Meter, RateLimit, Refill,
    UnixMillis, MAX_CREDITS,
};
use serde::Serialize;

pub use lease::{CreditMeter, Expired, Lease, LeaseReport, LeaseWriteError, PoolView};

/// The newest schema this binary knows. Version 3 added `keys.rolled_from`
/// (the key a rolled key replaced), which carries lineage through rolls;
/// version 4 the usage counts (`usage_minutes`, `usage_days`); version 5
/// the limit columns of `keys` (a key's rate limit, its credits and the
/// meter it is charged to), `credit_balances`, and the `limits_changed`
/// action; version 6 the credit leases (`credit_leases`; see [`lease`]).
pub const SCHEMA_VERSION: i64 = 6;

/// What went wrong in a store, by what the caller should do about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreError {
    /// The store cannot be reached now (a database that is down): retry
    /// later. HTTP 503 with `Retry-After`.
    Unavailable(String),
    /// The key is unknown, or revoked where a live key was needed.
    NotFound,
    /// The caller's own key was revoked, or ended, before the write could
    /// commit (checked inside the write's transaction). HTTP 401, as for
    /// any revoked key.
    CallerRevoked,
    /// The key changed between the read a write was computed from and the
    /// write (two rolls racing): read again and retry. HTTP 409.
    Conflict(String),
    /// The database is not one this binary can use (newer schema, another
    /// pepper, a corrupt row): stop and tell the operator.
    Fatal(String),
}

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreError::Unavailable(m) => write!(f, "store unavailable: {m}"),
            StoreError::NotFound => f.write_str("no such key"),
            StoreError::CallerRevoked => f.write_str("the calling key is revoked or expired"),
            StoreError::Conflict(m) => f.write_str(m),
            StoreError::Fatal(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for StoreError {}

/// A key as the store keeps it: the record, plus what only the store knows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredKey {
    /// The record (no secret).
    pub record: KeyRecord,
    /// When it was revoked, if it was.
    pub revoked_at_ms: Option<i64>,
    /// When it last authenticated, as last flushed.
    pub last_used_at_ms: Option<i64>,
}

/// What an event records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// A key was minted.
    Created,
    /// A key was revoked.
    Revoked,
    /// A key was rolled: its expiry shortened, a new key (`new_key_id`) made.
    Rolled,
    /// The rate limit or credits of the key's meter were replaced (one
    /// event per key of the meter).
    LimitsChanged,
}

impl Action {
    /// The name stored in the log.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Created => "created",
            Action::Revoked => "revoked",
            Action::Rolled => "rolled",
            Action::LimitsChanged => "limits_changed",
        }
    }

    /// The action stored as `name`.
    pub fn from_name(name: &str) -> Option<Action> {
        match name {
            "created" => Some(Action::Created),
            "revoked" => Some(Action::Revoked),
            "rolled" => Some(Action::Rolled),
            "limits_changed" => Some(Action::LimitsChanged),
            _ => None,
        }
    }
}

/// One entry of the change log, as `GET /v1/events` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Event {
    /// Its position in the log; grows with commit order.
    pub seq: u64,
    /// When it happened, in Unix milliseconds.
    pub at_ms: i64,
    /// What happened.
    pub action: Action,
    /// The key it happened to.
    pub key_id: KeyId,
    /// The key that asked for it; `None` for the CLI and the bootstrap.
    pub actor_id: Option<KeyId>,
    /// For `rolled`, the new key's id.
    pub new_key_id: Option<KeyId>,
}

/// A page of keys, in id order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyPage {
    /// The keys of the page.
    pub keys: Vec<StoredKey>,
    /// Whether keys follow the last one.
    pub has_more: bool,
}

/// Whose keys a read or a write may touch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Every key.
    All,
    /// Only the keys minted from this one, directly or transitively (the
    /// attenuating policy's rule for a restricted caller). The key itself is
    /// not among them. A roll's new key inherits the old key's children: the
    /// children of a key are the keys minted by it or by any key rolled into
    /// it (its predecessors), and those predecessors are not descendants.
    DescendantsOf(KeyId),
}

/// The live records and the log position they reflect, read in one snapshot.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// Every key that is not revoked, expired ones included: the caller
    /// evicts by its own clock.
    pub records: Vec<KeyRecord>,
    /// The last sequence number the snapshot includes.
    pub seq: u64,
}

/// One instance's demand on the rate limits it enforces, for
/// [`Store::exchange_demand`]: how instances that share a store split each
/// key's rate limit (see `crate::sync::shares`).
#[derive(Debug, Clone, PartialEq)]
pub struct DemandReport {
    /// The instance's id: random, one per process.
    pub instance: String,
    /// Now, by the instance's clock (Unix ms): the time the report is
    /// stamped with.
    pub at_ms: i64,
    /// Reports stamped before this are stale: neither the instance nor its
    /// demand counts.
    pub fresh_since_ms: i64,
    /// The demand on each meter here, in cost per second; meters without
    /// any are left out.
    pub demand: Vec<(KeyId, f64)>,
    /// With a time, every report stamped before it (any instance's) is
    /// deleted too: the reports of instances that stopped without
    /// withdrawing them ([`Store::withdraw_demand`]).
    pub purge_before_ms: Option<i64>,
}

/// What the other instances reported, as [`Store::exchange_demand`] saw it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PeerDemand {
    /// How many other instances have a fresh report.
    pub instances: u32,
    /// The demand on each meter, summed over the other instances' fresh
    /// reports (cost per second), in meter id order; meters without any are
    /// left out.
    pub demand: Vec<(KeyId, f64)>,
}

/// The answer to a rolled key that tries to manage keys: it keeps
/// authorizing requests in its overlap, but manages none. The message names
/// no successor (a thief holding the old key must not learn the new one).
pub fn rolled(id: KeyId) -> StoreError {
    StoreError::Conflict(format!(
        "key `{id}` was rolled: in its overlap it authorizes requests but manages no key; \
         use the key that replaced it"
    ))
}

/// At most the first 16 characters of a stored id that failed to parse, for
/// a log line: a corrupt column can hold anything, a token included.
pub fn redacted(text: &str) -> String {
    let mut shown: String = text.chars().take(16).collect();
    if text.chars().nth(16).is_some() {
        shown.push('…');
    }
    shown
}

/// Checks, inside a roll's write transaction, that the rolled records still
/// fit the stored key: `old` and `new` were computed from a read made before
/// the transaction, and if another roll shortened the key since, writing
/// them would lengthen a life. `stored_expiry` is the key's expiry as the
/// transaction reads it.
pub fn check_roll_fits(
    old: &KeyRecord,
    new: &KeyRecord,
    stored_expiry: Option<i64>,
) -> Result<(), StoreError> {
    let never_longer = |e: Option<i64>| match (e, stored_expiry) {
        (_, None) => true,
        (Some(e), Some(s)) => e <= s,
        (None, Some(_)) => false,
    };
    let ms = |r: &KeyRecord| r.expires_at().map(keygate::UnixMillis::as_millis);
    if never_longer(ms(old)) && never_longer(ms(new)) {
        Ok(())
    } else {
        Err(StoreError::Conflict(format!(
            "key `{}` changed while it was being rolled; try again",
            old.id()
        )))
    }
}

/// Checks, inside a roll's write transaction, that the new key still
/// carries the stored key's limits and meter: `new` was computed from a
/// read made before the transaction, and a change of the meter's limits in
/// between would leave the new key with the old ones.
pub fn check_roll_limits(stored: &KeyRecord, new: &KeyRecord) -> Result<(), StoreError> {
    if stored.limits() == new.limits() && stored.meter() == new.meter() {
        Ok(())
    } else {
        Err(StoreError::Conflict(format!(
            "the limits of key `{}` changed while it was being rolled; try again",
            stored.id()
        )))
    }
}

/// Checks, inside a create's write transaction, that `record` is charged as
/// its creator (as the transaction reads it) demands: a creator with limits
/// mints only keys on its own meter with its own limits
/// ([`keygate::MintRequest::charged_to`]), and a key on another key's meter
/// carries that meter's current limits. The record was computed from a read
/// made before the transaction; a change of the creator's limits in
/// between is a conflict, never a key that escapes them.
pub fn check_charged(record: &KeyRecord, creator: &KeyRecord) -> Result<(), StoreError> {
    let theirs = creator.limits();
    let charged = record.meter() == creator.meter() && record.limits() == theirs;
    let foreign_meter = record.meter().id != record.id();
    if charged || (theirs.is_unlimited() && !foreign_meter) {
        Ok(())
    } else {
        Err(StoreError::Conflict(String::from(
            "the calling key's rate limit or credits changed while the key was being \
             created; try again",
        )))
    }
}

/// The answer to a key that was rolled, named as the target of a limits or
/// credits change: its meter is its successor's, changed through it.
pub fn rolled_target(id: KeyId) -> StoreError {
    StoreError::Conflict(format!(
        "key `{id}` was rolled; change the limits of the key that replaced it"
    ))
}

/// The answer when a meter has no credits configured (any more).
pub fn no_credits() -> StoreError {
    StoreError::Conflict(String::from(
        "the key has no credits (removed meanwhile); PATCH it with `credits` first",
    ))
}

/// A change of a key's limits, as `PATCH /v1/keys/{id}` asks for it: each
/// `Some` replaces that limit (`Some(None)` removes it), `None` keeps it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LimitsChange {
    /// The new rate limit, if it changes.
    pub rate: Option<Option<RateLimit>>,
    /// The new credits, if they change.
    pub credits: Option<Option<Credits>>,
}

impl LimitsChange {
    /// `limits` with this change applied.
    pub fn apply_to(&self, limits: KeyLimits) -> KeyLimits {
        KeyLimits {
            rate: self.rate.unwrap_or(limits.rate),
            credits: self.credits.unwrap_or(limits.credits),
        }
    }
}

/// One minute, in milliseconds.
pub const MINUTE_MS: i64 = 60_000;
/// One hour, in milliseconds.
pub const HOUR_MS: i64 = 60 * MINUTE_MS;
/// One day (UTC), in milliseconds.
pub const DAY_MS: i64 = 24 * HOUR_MS;
/// How many whole days of minute rows retention keeps before today: older
/// minutes are folded into day rows.
pub const MINUTE_RETENTION_DAYS: i64 = 30;
/// How many whole days of day rows retention keeps before today (two
/// years, a leap day included): older day rows are deleted.
pub const DAY_RETENTION_DAYS: i64 = 731;

/// A key's request counts by outcome, in one minute, day or bucket.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct UsageCounts {
    /// Requests allowed.
    pub allowed: u64,
    /// Requests refused for want of a scope (403).
    pub forbidden: u64,
    /// Requests refused by the key's rate limit (429).
    pub rate_limited: u64,
    /// Requests refused because the key's credits ran out (429).
    pub credits_exhausted: u64,
}

impl UsageCounts {
    /// Whether every count is zero.
    pub fn is_zero(&self) -> bool {
        *self == UsageCounts::default()
    }

    /// Adds `other`'s counts (saturating: a count never wraps).
    pub fn add(&mut self, other: &UsageCounts) {
        self.allowed = self.allowed.saturating_add(other.allowed);
        self.forbidden = self.forbidden.saturating_add(other.forbidden);
        self.rate_limited = self.rate_limited.saturating_add(other.rate_limited);
        self.credits_exhausted = self
            .credits_exhausted
            .saturating_add(other.credits_exhausted);
    }

    /// The counts as the four SQL `BIGINT` columns, in table order
    /// (saturating at `i64::MAX`).
    pub fn columns(&self) -> [i64; 4] {
        [
            self.allowed,
            self.forbidden,
            self.rate_limited,
            self.credits_exhausted,
        ]
        .map(|n| i64::try_from(n).unwrap_or(i64::MAX))
    }

    /// The counts from the four columns (a negative value, which no write
    /// makes, reads as 0).
    pub fn from_columns(columns: [i64; 4]) -> UsageCounts {
        let [allowed, forbidden, rate_limited, credits_exhausted] =
            columns.map(|n| u64::try_from(n).unwrap_or(0));
        UsageCounts {
            allowed,
            forbidden,
            rate_limited,
            credits_exhausted,
        }
    }
}

/// A change of a balance: set it, or add to it (a negative amount takes
/// away). The result is clamped to `0..=MAX_CREDITS`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SetOrAdd {
    /// The balance becomes this.
    Set(u64),
    /// The balance changes by this.
    Add(i64),
}

/// The balance a meter starts with when its credits are configured at
/// `now`: the configured grant, in the refill period of `now`.
pub fn fresh_balance(credits: &Credits, since: UnixMillis, now: UnixMillis) -> CreditBalance {
    CreditBalance {
        remaining: credits.remaining(),
        period: credits.refill().map_or(0, |r| r.period_at(since, now)),
    }
}

/// A meter's balance as of `now`: the stored one (`(remaining, period)`, or
/// the configured grant in the first period where no row is stored),
/// refilled as the library refills ([`CreditBalance::at`]).
pub fn balance_at(
    stored: Option<(i64, i64)>,
    credits: &Credits,
    since: UnixMillis,
    now: UnixMillis,
) -> CreditBalance {
    let stored = match stored {
        Some((remaining, period)) => CreditBalance {
            remaining: u64::try_from(remaining).unwrap_or(0).min(MAX_CREDITS),
            period: u64::try_from(period).unwrap_or(0),
        },
        None => CreditBalance::new(credits.remaining()),
    };
    stored.at(credits.refill().as_ref(), since, now)
}

/// A number the library keeps as `u64` (all below 2^63), as a column.
fn column(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// The limit columns of a `keys` row (`rate_limit`, `rate_period_ms`,
/// `credits_remaining`, `credits_refill_amount`,
/// `credits_refill_interval_ms`, `meter_id`, `meter_since_ms`), each NULL
/// where the record has none.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LimitColumns {
    /// Requests per period.
    pub rate_limit: Option<i64>,
    /// The period, in milliseconds.
    pub rate_period_ms: Option<i64>,
    /// The configured grant.
    pub credits_remaining: Option<i64>,
    /// The refill's amount.
    pub credits_refill_amount: Option<i64>,
    /// The refill's interval, in milliseconds.
    pub credits_refill_interval_ms: Option<i64>,
    /// The meter's key; NULL for the key's own.
    pub meter_id: Option<String>,
    /// The meter's start; NULL for the key's own (its creation).
    pub meter_since_ms: Option<i64>,
}

impl LimitColumns {
    /// The columns of `record`.
    pub fn of(record: &KeyRecord) -> LimitColumns {
        let limits = record.limits();
        let (rate_limit, rate_period_ms) = Self::rate(limits.rate);
        let (credits_remaining, credits_refill_amount, credits_refill_interval_ms) =
            Self::credits(limits.credits);
        let meter = Some(record.meter()).filter(|m| m.id != record.id());
        LimitColumns {
            rate_limit,
            rate_period_ms,
            credits_remaining,
            credits_refill_amount,
            credits_refill_interval_ms,
            meter_id: meter.map(|m| m.id.as_str().to_owned()),
            meter_since_ms: meter.map(|m| m.since.as_millis()),
        }
    }

    /// The columns of a rate limit: `(rate_limit, rate_period_ms)`.
    pub fn rate(rate: Option<RateLimit>) -> (Option<i64>, Option<i64>) {
        match rate {
            Some(r) => (Some(i64::from(r.limit())), Some(i64::from(r.period_ms()))),
            None => (None, None),
        }
    }

    /// The columns of credits: `(credits_remaining, credits_refill_amount,
    /// credits_refill_interval_ms)`.
    pub fn credits(credits: Option<Credits>) -> (Option<i64>, Option<i64>, Option<i64>) {
        match credits {
            Some(c) => (
                Some(column(c.remaining())),
                c.refill().map(|r| column(r.amount())),
                c.refill().map(|r| column(r.interval_ms())),
            ),
            None => (None, None, None),
        }
    }

    /// The limits and meter the columns hold, through the library's
    /// validated constructors; a message naming the broken rule if they
    /// hold none (a corrupt row: the callers fail closed).
    pub fn limits(&self) -> Result<(KeyLimits, Option<Meter>), String> {
        let millis = |ms: i64, what: &str| {
            u64::try_from(ms)
                .map(core::time::Duration::from_millis)
                .map_err(|_| format!("{what} `{ms}` is negative"))
        };
        let rate = match (self.rate_limit, self.rate_period_ms) {
            (None, None) => None,
            (Some(limit), Some(period)) => {
                let limit = u32::try_from(limit)
                    .map_err(|_| format!("rate limit `{limit}` out of range"))?;
                Some(
                    RateLimit::new(limit, millis(period, "rate period")?)
                        .map_err(|e| e.to_string())?,
                )
            }
            _ => {
                return Err(String::from(
                    "a rate limit without its period, or a period without its limit",
                ))
            }
        };
        let refill = match (self.credits_refill_amount, self.credits_refill_interval_ms) {
            (None, None) => None,
            (Some(amount), Some(interval)) => {
                let amount = u64::try_from(amount)
                    .map_err(|_| format!("refill amount `{amount}` is negative"))?;
                Some(
                    Refill::new(amount, millis(interval, "refill interval")?)
                        .map_err(|e| e.to_string())?,
                )
            }
            _ => {
                return Err(String::from(
                    "a refill amount without its interval, or an interval without its amount",
                ))
            }
        };
        let credits = match self.credits_remaining {
            None if refill.is_some() => return Err(String::from("a refill without credits")),
            None => None,
            Some(remaining) => {
                let remaining = u64::try_from(remaining)
                    .map_err(|_| format!("credits `{remaining}` are negative"))?;
                Some(Credits::new(remaining, refill).map_err(|e| e.to_string())?)
            }
        };
        let meter = match (&self.meter_id, self.meter_since_ms) {
            (None, None) => None,
            (Some(id), Some(since)) => Some(Meter {
                id: KeyId::parse(id).map_err(|e| format!("meter id: {e}"))?,
                since: UnixMillis::from_millis(since),
            }),
            _ => {
                return Err(String::from(
                    "a meter id without its start, or a start without its id",
                ))
            }
        };
        Ok((KeyLimits { rate, credits }, meter))
    }
}

/// One key's counts in one minute, as the follower flushes them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UsageRow {
    /// The key.
    pub key_id: KeyId,
    /// The minute's start, in Unix milliseconds (a multiple of [`MINUTE_MS`]).
    pub minute_ms: i64,
    /// The counts to add.
    pub counts: UsageCounts,
}

/// The width of a bucket of `GET /v1/keys/{id}/usage`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Bucket {
    /// One minute.
    Minute,
    /// One hour.
    #[default]
    Hour,
    /// One day (UTC).
    Day,
}

impl Bucket {
    /// The width in milliseconds.
    pub fn ms(self) -> i64 {
        match self {
            Bucket::Minute => MINUTE_MS,
            Bucket::Hour => HOUR_MS,
            Bucket::Day => DAY_MS,
        }
    }

    /// The name in a query: `minute`, `hour` or `day`.
    pub fn as_str(self) -> &'static str {
        match self {
            Bucket::Minute => "minute",
            Bucket::Hour => "hour",
            Bucket::Day => "day",
        }
    }

    /// The bucket named `name`.
    pub fn from_name(name: &str) -> Option<Bucket> {
        match name {
            "minute" => Some(Bucket::Minute),
            "hour" => Some(Bucket::Hour),
            "day" => Some(Bucket::Day),
            _ => None,
        }
    }

    /// The start of the bucket that holds `ms`.
    pub fn floor(self, ms: i64) -> i64 {
        ms.div_euclid(self.ms()) * self.ms()
    }
}

/// What [`Store::usage`] reads: the buckets of width `bucket` that overlap
/// `from_ms..=to_ms`, whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UsageQuery {
    /// The width of a bucket.
    pub bucket: Bucket,
    /// The first millisecond of the range (at least 0).
    pub from_ms: i64,
    /// The last millisecond of the range (at least `from_ms`, at most
    /// [`MAX_USAGE_MS`]).
    pub to_ms: i64,
}

/// The latest instant a usage query may name: the end of year 9999, so
/// that no bucket arithmetic overflows.
pub const MAX_USAGE_MS: i64 = 253_402_300_799_999;

impl UsageQuery {
    /// The minutes the query reads: from the start of the first bucket to
    /// the end of the last one (exclusive).
    pub fn span(&self) -> (i64, i64) {
        let b = self.bucket;
        (b.floor(self.from_ms), b.floor(self.to_ms) + b.ms())
    }

    /// How many buckets the range spans.
    pub fn buckets(&self) -> i64 {
        let (start, end) = self.span();
        (end - start) / self.bucket.ms()
    }
}

/// One bucket of a key's usage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct UsageBucket {
    /// The bucket's start, in Unix milliseconds.
    pub start_ms: i64,
    /// Its counts.
    #[serde(flatten)]
    pub counts: UsageCounts,
}

/// A key's usage as the store holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyUsage {
    /// When the key was revoked, if it was.
    pub revoked_at_ms: Option<i64>,
    /// The buckets with counts, by start.
    pub buckets: Vec<UsageBucket>,
}

/// Where retention cuts, as of `now_ms`: minute rows before the first
/// (the start of the day [`MINUTE_RETENTION_DAYS`] days before today) are
/// folded into day rows, day rows before the second (the start of the day
/// [`DAY_RETENTION_DAYS`] before today) are deleted.
pub fn usage_cutoffs(now_ms: i64) -> (i64, i64) {
    let today = Bucket::Day.floor(now_ms);
    (
        today.saturating_sub(MINUTE_RETENTION_DAYS * DAY_MS),
        today.saturating_sub(DAY_RETENTION_DAYS * DAY_MS),
    )
}

/// What one retention pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pruned {
    /// Minute rows folded into day rows (and deleted).
    pub folded: u64,
    /// Day rows deleted.
    pub deleted: u64,
}

/// Key storage. Implementations: [`sqlite::SqliteStore`] (and PostgreSQL).
///
/// Every method that writes commits durably before it returns, and appends
/// its events to the log in the same transaction.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Stores a newly minted key and its `created` event; returns the
    /// event's sequence number. In the same transaction, checks that `actor`
    /// (and the record's creator) is live at `at_ms`: not revoked, not
    /// expired, known; [`StoreError::CallerRevoked`] otherwise. So a key
    /// being revoked can never commit a child after its cascade.
    async fn create(
        &self,
        record: &KeyRecord,
        actor: Option<KeyId>,
        at_ms: i64,
    ) -> Result<u64, StoreError>;

    /// Stores the first key of an empty store (the bootstrap key) and its
    /// `created` event, and returns the event's sequence number; returns
    /// `None`, and stores nothing, if the store already holds a key. Atomic
    /// against the other instances of a shared store: of several started
    /// at once on an empty store, exactly one bootstraps it.
    async fn create_first(&self, record: &KeyRecord, at_ms: i64)
        -> Result<Option<u64>, StoreError>;

    /// Revokes `id` and, with `cascade`, every live key minted from it
    /// (transitively), each with its own `revoked` event; all or nothing.
    /// `scope` limits which `id` may be named ([`StoreError::NotFound`]
    /// otherwise, as for an unknown or already revoked id). `actor`, unless
    /// it is `id` itself (self-revocation), must be live at `at_ms` and not
    /// rolled ([`Store::check_caller`]). The keys rolled into `id` (its
    /// predecessors, still in their overlap) are revoked with it, cascade or
    /// not: they are the same credential. Returns the revoked ids with their
    /// events' sequence numbers, `id` first, then the others in id order.
    async fn revoke(
        &self,
        id: KeyId,
        scope: Scope,
        cascade: bool,
        actor: Option<KeyId>,
        at_ms: i64,
    ) -> Result<Vec<(u64, KeyId)>, StoreError>;

    /// Rolls a key: writes `old` (the same key with its shortened expiry)
    /// and the new key, with a `created` event for the new key and then a
    /// `rolled` event for the old one, in one transaction; the new key
    /// records `old` as the key it replaced, and so inherits its children.
    /// Fails with [`StoreError::NotFound`] if `old` is unknown, revoked, or
    /// outside `scope`, and with [`StoreError::CallerRevoked`] if `actor` is
    /// not live at `at_ms`. Returns the two events' sequence numbers.
    async fn roll(
        &self,
        old: &KeyRecord,
        new: &KeyRecord,
        scope: Scope,
        actor: Option<KeyId>,
        at_ms: i64,
    ) -> Result<(u64, u64), StoreError>;

    /// Replaces the rate limit and/or the credits (`change`) of every key
    /// charged to the meter of `id` (the keys whose `COALESCE(meter_id, id)`
    /// is its meter's), revoked ones included, in one transaction, with a
    /// `limits_changed` event for each live one. Credits that change set
    /// the meter's total afresh to their grant (in the refill period of
    /// `at_ms`): the pool gets the grant less what the live leases hold, as
    /// [`Store::change_credits`] sets it; removed credits drop the pool and
    /// its leases; the same credits again keep them.
    ///
    /// Fails with [`StoreError::NotFound`] if `id` is unknown, revoked or
    /// outside `scope`, with [`StoreError::Conflict`] if `id` was rolled
    /// (its meter is changed through the key that replaced it), and with
    /// [`StoreError::CallerRevoked`] if `actor` is not live at `at_ms`.
    /// Returns the live keys' records with their events' sequence numbers,
    /// `id` first, then the others in id order.
    async fn set_limits(
        &self,
        id: KeyId,
        change: LimitsChange,
        scope: Scope,
        actor: Option<KeyId>,
        at_ms: i64,
    ) -> Result<Vec<(u64, KeyRecord)>, StoreError>;

    /// Sets or adds to the credits of `meter` as of `now`, and returns its
    /// new total: the pool plus what the live leases of the current period
    /// hold ([`lease`]). A set gives the pool the amount less what the
    /// leases hold (they stay with their instances; an instance hands its
    /// own back first to make a set exact, `CreditLeases::reclaim`); an add
    /// goes to the pool (refilled first), and a negative one takes from the
    /// pool only; both clamped to `0..=MAX_CREDITS`. The meter's credits
    /// must be configured, read in the same transaction
    /// ([`StoreError::Conflict`] otherwise), and give the refill.
    async fn change_credits(
        &self,
        meter: Meter,
        op: SetOrAdd,
        now: UnixMillis,
    ) -> Result<u64, StoreError>;

    /// The credits of `meter` as of `now`, refilled: the pool plus what the
    /// live leases of the current period held at their last renewal (at
    /// most a second old); `None` when the meter has no credits configured.
    async fn credit_balance(
        &self,
        meter: Meter,
        now: UnixMillis,
    ) -> Result<Option<u64>, StoreError>;

    /// Whether a key replaced `id` in a roll.
    async fn is_rolled(&self, id: KeyId) -> Result<bool, StoreError>;

    /// The key `id`, revoked or not, if it is within `scope`.
    async fn get(&self, id: KeyId, scope: Scope) -> Result<Option<StoredKey>, StoreError>;

    /// Up to `limit` keys that are not revoked, within `scope`, with ids
    /// after `starting_after`, in id order.
    async fn list(
        &self,
        scope: Scope,
        starting_after: Option<KeyId>,
        limit: usize,
    ) -> Result<KeyPage, StoreError>;

    /// Up to `limit` events with sequence numbers after `after`, in order,
    /// of keys within `scope`; and whether more such events follow.
    async fn events(
        &self,
        after: u64,
        limit: usize,
        scope: Scope,
    ) -> Result<(Vec<Event>, bool), StoreError>;

    /// Up to `limit` changes after `after`, in sequence order, each built
    /// from its key's current row (a revoked key gives a revocation).
    ///
    /// A key row that cannot be read fails closed: its change is a
    /// revocation, and it is logged and counted ([`Store::corrupt_rows`]),
    /// so one bad row never stops the feed. A change naming no valid id is
    /// skipped, logged and counted. Runs on a connection of its own, so a
    /// flood of reads does not delay the feed.
    async fn changes_since(&self, after: u64, limit: usize) -> Result<Vec<Change>, StoreError>;

    /// The live records and the last sequence number, in one snapshot. A key
    /// row that cannot be read is left out (it fails closed, as in
    /// [`Store::changes_since`]).
    async fn snapshot(&self) -> Result<Snapshot, StoreError>;

    /// Checks that the key `id`, calling a management route, is live at
    /// `at_ms` ([`StoreError::CallerRevoked`]) and was not rolled
    /// ([`StoreError::Conflict`]): the store's view, which is ahead of this
    /// instance's keyring when another instance revoked or rolled it.
    async fn check_caller(&self, id: KeyId, at_ms: i64) -> Result<(), StoreError>;

    /// How many key rows or log entries could not be read by
    /// [`Store::changes_since`] and [`Store::snapshot`] (each was treated as
    /// revoked).
    fn corrupt_rows(&self) -> u64;

    /// Writes a batch of `last_used_at_ms` values (never moving one back).
    async fn record_last_used(&self, batch: &[(KeyId, i64)]) -> Result<(), StoreError>;

    /// Adds a batch of per-minute counts to the stored ones (an upsert that
    /// adds: several instances add to the same rows). The batch holds each
    /// (key, minute) at most once. All or nothing.
    async fn record_usage(&self, batch: &[UsageRow]) -> Result<(), StoreError>;

    /// The usage of key `id` in the buckets `query` spans, only those with
    /// counts, by start: minute rows, and for [`Bucket::Day`] the day rows
    /// too. `None` if the key is unknown or outside `scope`, with the scope
    /// computed first whatever the id (as in [`Store::get`]); a revoked key
    /// answers with its rows and its revocation time.
    async fn usage(
        &self,
        id: KeyId,
        scope: Scope,
        query: UsageQuery,
    ) -> Result<Option<KeyUsage>, StoreError>;

    /// One bounded retention pass as of `now_ms` ([`usage_cutoffs`]): folds
    /// up to `limit` minute rows older than the minute window into day rows
    /// (adding to them, deleting the minutes, in one transaction, so a count
    /// is never in both or neither), and deletes up to `limit` day rows older
    /// than the day window. Safe to run on several instances at once.
    async fn prune_usage(&self, now_ms: i64, limit: usize) -> Result<Pruned, StoreError>;

    /// Writes `report` (the instance's heartbeat and its demand, replacing
    /// its previous ones) and reads the other instances' fresh reports, as
    /// they were before this write: one statement, one round trip, on a
    /// connection of its own (so the exchange neither waits for request
    /// handlers nor delays the change feed). The reports are soft state: a
    /// store may lose them (PostgreSQL keeps them in an unlogged table, SQLite
    /// in memory, as one process serves a SQLite file).
    async fn exchange_demand(&self, report: &DemandReport) -> Result<PeerDemand, StoreError>;

    /// Deletes the reports of `instance` (at a graceful shutdown): the
    /// others stop counting it at once, not when its reports go stale.
    async fn withdraw_demand(&self, instance: &str) -> Result<(), StoreError>;

    /// How many keys the store holds, revoked ones included.
    async fn count(&self) -> Result<u64, StoreError>;

    /// Whether the store answers now (for `/readyz`).
    async fn ping(&self) -> Result<(), StoreError>;

    /// Checks the pepper's fingerprint ([`keygate::Pepper::fingerprint`])
    /// against the one stored, or stores it if there is none yet (a new or
    /// just-migrated database). A mismatch is [`StoreError::Fatal`], with a
    /// message that says the pepper file does not belong to this database.
    async fn check_pepper(&self, fingerprint: [u8; 32]) -> Result<(), StoreError>;

    /// Moves up to `want` credits of `meter`'s pool to `instance`'s lease,
    /// in one transaction with the pool row locked: first the pool is
    /// refilled to the period of `now_ms` (leases of older periods are void
    /// and deleted); then [`lease::grant`] decides how much (`want` while
    /// the pool holds twice that, half of what is left below, at least
    /// `need` if there), and the lease row gets it (added when the row is
    /// of the same period, replaced otherwise) with a time-to-live of
    /// `ttl_ms`. A meter without a pool row grants nothing.
    async fn lease_credits(
        &self,
        meter: CreditMeter,
        instance: &str,
        want: u64,
        need: u64,
        now_ms: i64,
        ttl_ms: i64,
    ) -> Result<Lease, LeaseWriteError>;

    /// Hands `amount` credits of refill period `period` back from
    /// `instance` to the pool, if the pool (refilled as of `now_ms`) is
    /// still in that period, clamped at [`keygate::MAX_CREDITS`]; returns
    /// whether they went back (else they lapsed with the refill). The lease
    /// row, if of that period, is set to `kept` (what the instance still
    /// holds), or deleted when that is 0.
    async fn return_credits(
        &self,
        meter: CreditMeter,
        instance: &str,
        amount: u64,
        period: u64,
        kept: u64,
        now_ms: i64,
    ) -> Result<bool, LeaseWriteError>;

    /// Extends every lease of `instance` to `now_ms + ttl_ms` and records
    /// each reported lease's unspent credits (a row with nothing left goes;
    /// a row that expired while the instance could not reach the store is
    /// written again). Returns the pools of the reported meters, in one
    /// transaction.
    async fn renew_leases(
        &self,
        instance: &str,
        now_ms: i64,
        ttl_ms: i64,
        reports: &[LeaseReport],
    ) -> Result<Vec<PoolView>, StoreError>;

    /// Deletes the leases whose time-to-live passed before `now_ms`: their
    /// instances crashed or cannot reach the store. **Forfeited, never
    /// returned** (see [`lease`]). Also deletes lease rows of a period
    /// their pool has left.
    async fn expire_leases(&self, now_ms: i64) -> Result<Expired, StoreError>;

    /// The meter's credits as of `now_ms`: the pool (refilled) plus what
    /// the live leases of the current period held when last reported.
    /// `None` without a pool row.
    async fn credit_total(
        &self,
        meter: CreditMeter,
        now_ms: i64,
    ) -> Result<Option<u64>, StoreError>;

    /// Sets the meter's credits to `remaining` as of `now_ms` (clamped at
    /// [`keygate::MAX_CREDITS`]), creating the pool row if there is none:
    /// the pool gets `remaining` less what the live leases of the current
    /// period hold as last reported (they stay with their instances), and
    /// the current period of `meter`'s refill (so a changed refill starts
    /// counting now; leases of another period are void and deleted).
    /// Returns the new total.
    // The pool arithmetic the tests set pools with; the server changes
    // credits through `change_credits` and `set_limits`, which do the same
    // inside their transactions.
    #[cfg(test)]
    async fn set_credits(
        &self,
        meter: CreditMeter,
        remaining: u64,
        now_ms: i64,
    ) -> Result<u64, StoreError>;

    /// Adds `delta` credits (negative takes away, from the pool only,
    /// clamped at 0 and at [`keygate::MAX_CREDITS`]) to the meter's pool as
    /// of `now_ms` (refilled first). Returns the new total; `None` without a
    /// pool row.
    // The pool arithmetic the tests set pools with; the server changes
    // credits through `change_credits` and `set_limits`, which do the same
    // inside their transactions.
    #[cfg(test)]
    async fn add_credits(
        &self,
        meter: CreditMeter,
        delta: i64,
        now_ms: i64,
    ) -> Result<Option<u64>, StoreError>;

    /// Whether several instances may share this store (PostgreSQL): credit
    /// leases then spread a meter's credits over them; alone (SQLite), one
    /// instance holds them (`crate::sync::credits`).
    fn shared(&self) -> bool {
        false
    }

    /// A signal that new changes may be in the log (PostgreSQL's `NOTIFY`),
    /// so the follower polls at once instead of at its next tick. `None`
    /// where the store has no such signal; the follower polls either way.
    fn change_signal(&self) -> Option<std::sync::Arc<tokio::sync::Notify>> {
        None
    }

    /// The last sequence number in the log that a reader can see now (for
    /// the follower's lag in `/metrics`).
    async fn head_seq(&self) -> Result<u64, StoreError>;

    /// The connection pool's connections in use and idle, where the store
    /// keeps one (PostgreSQL's request pool).
    fn pool_status(&self) -> Option<PoolStatus> {
        None
    }
}

/// A connection pool's state ([`Store::pool_status`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolStatus {
    /// Connections lent out now.
    pub in_use: usize,
    /// Connections open and idle.
    pub idle: usize,
    /// The most connections the pool opens.
    pub max: usize,
    /// Tasks waiting for a connection.
    pub waiting: usize,
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]
mod model_tests;

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    missing_docs
)]
pub(crate) mod lease_tests;

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]
mod limits_tests;

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
pub(crate) mod usage_tests;

#[cfg(test)]
mod tests {
    use super::*;
    use keygate::{MintRequest, Pepper};

    fn expiring(at: Option<i64>) -> KeyRecord {
        let at = at.map(keygate::UnixMillis::from_millis);
        let request = MintRequest::standard(None, at, keygate::UnixMillis::from_millis(0)).unwrap();
        keygate::mint(
            &Pepper::from_bytes(&[5u8; 32]),
            &request,
            &mut keygate::os_entropy(),
            keygate::UnixMillis::from_millis(0),
        )
        .into_parts()
        .0
    }

    #[test]
    fn a_roll_fits_only_if_neither_record_outlives_the_stored_key() {
        let fits = |old: Option<i64>, new: Option<i64>, stored: Option<i64>| {
            check_roll_fits(&expiring(old), &expiring(new), stored).is_ok()
        };
        // A key that never expires takes any roll.
        assert!(fits(None, None, None));
        assert!(fits(Some(500), None, None));
        // Equal or shorter lives fit; a longer one, or none, does not.
        assert!(fits(Some(100), Some(100), Some(100)));
        assert!(fits(Some(100), Some(50), Some(100)));
        assert!(fits(Some(60), Some(99), Some(100)));
        assert!(!fits(Some(101), Some(50), Some(100)));
        assert!(!fits(Some(50), Some(101), Some(100)));
        assert!(!fits(None, Some(50), Some(100)));
        assert!(!fits(Some(50), None, Some(100)));
        let err = check_roll_fits(&expiring(Some(101)), &expiring(Some(1)), Some(100)).unwrap_err();
        assert!(
            matches!(err, StoreError::Conflict(ref m) if m.contains("changed while it was being rolled")),
            "{err}"
        );
    }
}
