//! Credit leases: a meter's credits spent in memory, never overspent
//! across instances, and a hot path that never waits on the store.
//!
//! Each instance takes credits out of a meter's pool (`store::lease`) in
//! *leases* sized by its own demand, and spends them with one
//! compare-and-swap per request ([`CreditLeases::spend`]). A background
//! task ([`CreditLeases::run`], on the follower's runtime) keeps the leases
//! topped up before they run out, hands idle ones back so that credits do
//! not sit in one instance while another starves, and renews them. So:
//!
//! * **Never overspent.** A credit is spent only by the instance that holds
//!   it, and moves between the pool and an instance only in a transaction
//!   that locks the pool row. Over a refill period, the credits allowed by
//!   all instances together never exceed what the pool started it with plus
//!   what was added. A lease of a past period is void (its credits lapsed
//!   with the refill) and spends nothing.
//! * **Accurate.** Leases are sized by demand: an instance asks for two
//!   seconds' worth of its demand (the larger of the last second's and the
//!   rate since its last lease, so a burst that began a moment ago counts
//!   in full), at least one request's cost and the floor, when what it holds
//!   falls below one second's worth, or half the floor. The floor is
//!   [`LeaseConfig::floor`]; shared, a thousandth of the pool as last seen
//!   when that is more (up to 10 000), so a burst on a large balance runs
//!   on the lease while it is topped up. Shared, an instance holds at most
//!   half of what the meter has left (its pool as last seen plus its lease),
//!   or more only for one request's cost: the largest spent in the last 10
//!   to 20 s, or refused in the last 2 to 4 s (leased for, so that the
//!   request passes when retried, then forgotten).
//!   Pools are refilled by the refill the meter's keys have in the store
//!   (`store::lease::as_stored`), whatever refill an instance asks under.
//!   Near zero, grants shrink to half of
//!   what the pool has left, down to one credit, so the last credits spread
//!   over the instances that ask. A lease idle for [`LeaseConfig::idle`]
//!   shrinks to one request's worth, and to nothing when the pool is empty.
//!   The last credits are therefore spent wherever the demand is, a little
//!   after they run out elsewhere (about `idle` plus a tick).
//! * **Woken, not only ticked.** A spend that takes a lease below its low
//!   level, or a refusal while the pool may cover it, wakes the background
//!   at once ([`CreditLeases::wake_pass`]) rather than at the next tick; it
//!   runs on the server's own workers, beside the requests, so a request
//!   flood cannot starve it. A key with credits left is not refused for
//!   want of a lease, from its first request on or after sitting idle.
//! * **Bounded writes.** Lease and return writes per meter are budgeted:
//!   at most four at once (wakes within one tick), then one more per
//!   [`LeaseConfig::tick`] (50 ms: at most 20 a second per meter and
//!   instance over time, whatever the request rate; in steady demand about
//!   one a second, because each lease holds two seconds' worth); per
//!   instance, ticks and wakes together write at most
//!   [`LeaseConfig::writes_per_tick`] between two ticks (a meter left out
//!   goes first at the next tick); and one renewal and one expiry pass per
//!   instance every [`LeaseConfig::renew`] (1 s), for all its meters
//!   together.
//! * **The store down.** The hot path spends what is leased, then refuses
//!   with a `retry_after`; the background retries each tick. Nothing is
//!   lost or spent twice: credits move only in transactions, and a write
//!   whose commit is in doubt (the connection dropped while committing) is
//!   counted as the outcome that loses credits rather than the one that
//!   could spend them twice ([`LeaseStats::possibly_lost`] bounds it).
//! * **Shutdown and crashes.** A graceful shutdown returns every lease. A
//!   crash forfeits what the instance held: its lease rows expire after
//!   [`LeaseConfig::ttl`] and are deleted, never returned (see
//!   `store::lease`).
//!
//! One instance alone (SQLite: [`LeaseConfig::sole`]) holds a larger lease
//! and never hands it back before shutdown: a request is refused only when
//! the meter's credits are spent, exactly.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use keygate::{KeyId, Meter, Refill, UnixMillis, MAX_CREDITS};
use portable_atomic::AtomicU128;
use tokio::sync::watch;

use crate::store::{CreditMeter, LeaseReport, LeaseWriteError, Store, StoreError};

/// How the background sizes, renews and hands back leases.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseConfig {
    /// How often the background looks at every meter; a meter's write
    /// budget grows by one each tick (at most four).
    pub tick: Duration,
    /// How often this instance's leases are renewed and crashed instances'
    /// leases expired.
    pub renew: Duration,
    /// How long a lease lives without a renewal.
    pub ttl: Duration,
    /// A lease without demand for this long is handed back (down to one
    /// request's worth, or to nothing when the pool is empty).
    pub idle: Duration,
    /// A meter without demand for this long holds nothing (on a shared
    /// store) and is no longer leased for at refills before it is asked.
    pub warm: Duration,
    /// The credits a meter in use holds at least, whatever its demand (the
    /// first lease after [`CreditLeases::ensure`] is this big).
    pub floor: u64,
    /// Whether this is the only instance (SQLite): no shrinking grants, no
    /// idle returns.
    pub sole: bool,
    /// At most this many lease writes per tick, over all meters (a start
    /// with many metered keys leases over several ticks).
    pub writes_per_tick: usize,
}

impl LeaseConfig {
    /// For instances sharing one store (PostgreSQL).
    pub const fn shared() -> LeaseConfig {
        LeaseConfig {
            tick: Duration::from_millis(50),
            renew: Duration::from_secs(1),
            ttl: Duration::from_secs(10),
            idle: Duration::from_secs(1),
            warm: Duration::from_secs(60),
            floor: 10,
            sole: false,
            writes_per_tick: 256,
        }
    }

    /// For the only instance of a store (SQLite): a meter in use holds at
    /// least 10 000 credits (or all there are), so refusals are exact; a
    /// crash forfeits at most that, or two seconds of demand if more.
    pub const fn sole() -> LeaseConfig {
        LeaseConfig {
            floor: 10_000,
            sole: true,
            ..LeaseConfig::shared()
        }
    }

    /// Ticks in a second: the slots of the demand window.
    fn slots(&self) -> usize {
        let tick = self.tick.as_millis().max(1);
        usize::try_from(1_000u128.div_ceil(tick))
            .unwrap_or(1)
            .max(1)
    }
}

/// The answer of [`CreditLeases::spend`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Spent {
    /// Whether the request may go on (its cost was spent).
    pub allowed: bool,
    /// The meter's credits as this instance best knows them: its lease plus
    /// the pool as last seen.
    pub remaining: u64,
    /// On refusal, when a retry may pass: 1 s while credits may come (from
    /// the pool, or back from other instances, or the lease is being
    /// renewed after a refill), else the time to the next refill that covers
    /// the cost; `None` when no retry can pass.
    pub retry_after: Option<Duration>,
}

/// Counters of what the background did, since start.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LeaseStats {
    /// Lease writes (`lease_credits`).
    pub leases: u64,
    /// Return writes (`return_credits`).
    pub returns: u64,
    /// Renewals (`renew_leases`).
    pub renewals: u64,
    /// Credits granted to this instance.
    pub granted: u64,
    /// Credits handed back into the pool.
    pub returned: u64,
    /// Credits handed back after their period ended (lapsed, not pooled).
    pub lapsed: u64,
    /// Credits of crashed instances' leases this instance expired.
    pub expired: u64,
    /// An upper bound of the credits lost to writes whose commit was in
    /// doubt (see the module documentation).
    pub possibly_lost: u64,
    /// Store calls that failed.
    pub errors: u64,
}

#[derive(Default)]
struct Counters {
    leases: AtomicU64,
    returns: AtomicU64,
    renewals: AtomicU64,
    granted: AtomicU64,
    returned: AtomicU64,
    lapsed: AtomicU64,
    expired: AtomicU64,
    possibly_lost: AtomicU64,
    errors: AtomicU64,
}

/// The pool as last seen, before any answer.
const UNKNOWN: u64 = u64::MAX;
/// The retry hint while credits may come.
const RETRY: Duration = Duration::from_secs(1);
/// Lease and return writes a meter may make at once (on wakes within one
/// tick); one more is allowed each tick.
const WRITE_BURST: u64 = 4;
/// The shortest span a demand rate is measured over.
const MIN_RATE_SPAN_MS: i64 = 10;
/// The most a shared instance holds for a meter in use whatever its demand
/// (a thousandth of the pool, up to this).
const SHARED_FLOOR_CAP: u64 = 10_000;
/// How long a spent cost keeps a lease at least that big (one to two of
/// these).
const SPENT_COST_WINDOW: Duration = Duration::from_secs(10);
/// How long a refused cost keeps a lease at least that big (one to two of
/// these): the time its request has to be retried.
const ASKED_COST_WINDOW: Duration = Duration::from_secs(2);

/// `(period, unspent)` in one word.
fn pack(period: u64, unspent: u64) -> u128 {
    (u128::from(period) << 64) | u128::from(unspent)
}

fn unpack(word: u128) -> (u64, u64) {
    ((word >> 64) as u64, word as u64)
}

/// A refill in one word (0: none; a refill's interval is never 0).
fn pack_refill(refill: Option<Refill>) -> u128 {
    refill.map_or(0, |r| {
        (u128::from(r.interval_ms()) << 64) | u128::from(r.amount())
    })
}

fn unpack_refill(word: u128) -> Option<Refill> {
    let (interval_ms, amount) = unpack(word);
    if interval_ms == 0 {
        return None;
    }
    Refill::new(amount, Duration::from_millis(interval_ms)).ok()
}

/// One meter's lease on this instance.
struct Local {
    since: UnixMillis,
    /// `(period, unspent)`: the credits held and the refill period they
    /// belong to.
    word: AtomicU128,
    /// The refill the lease was taken under.
    leased_refill: AtomicU128,
    /// The refill the meter's keys have now.
    wanted_refill: AtomicU128,
    /// The pool and its period as last seen ([`UNKNOWN`] before).
    pool: AtomicU64,
    pool_period: AtomicU64,
    /// Other instances' leases of `pool_period` as last seen.
    elsewhere: AtomicU64,
    /// Costs refused since the background last looked.
    refused: AtomicU64,
    /// Changes of `unspent` other than spends since the background last
    /// looked (grants, returns), so it can tell what was spent.
    adjusted: AtomicI64,
    /// The largest cost spent since the background last looked.
    max_cost: AtomicU64,
    /// The largest cost refused since the background last looked.
    asked: AtomicU64,
    /// Lease at the next tick, whatever the demand ([`CreditLeases::ensure`]).
    nudged: AtomicBool,
    /// Return everything and drop the meter ([`CreditLeases::forget`]).
    forgotten: AtomicBool,
    /// A store call for this meter is in flight.
    busy: AtomicBool,
    /// Lease and return writes for this meter.
    writes: AtomicU64,
    /// The level below which the lease is topped up, as the background
    /// last sized it: a spend that crosses it wakes the background.
    low: AtomicU64,
    /// A wake for this meter is pending (set by a spend, cleared when the
    /// background looks at the meter).
    woken: AtomicBool,
    bg: Mutex<Background>,
}

/// What only the background reads and writes.
struct Background {
    /// Demand per tick over the last second.
    ring: Vec<u64>,
    at: usize,
    /// `unspent` when last looked at.
    last_seen: u64,
    /// When a request (spent or refused) was last seen: a meter without one
    /// for [`LeaseConfig::warm`] holds nothing.
    last_demand_ms: i64,
    /// The largest cost spent lately ([`SPENT_COST_WINDOW`]): a lease holds
    /// at least that much.
    spent_cost: RecentMax,
    /// The largest cost refused lately ([`ASKED_COST_WINDOW`]): leased for,
    /// so that the request passes when retried, and soon forgotten if it is
    /// not (a cost asked and never spent holds a shared pool only that
    /// long).
    asked_cost: RecentMax,
    /// No lease before this (the pool was empty).
    retry_at_ms: i64,
    /// Demand since the last lease write, and when that write was.
    since_write: u64,
    last_write_ms: i64,
    /// Lease and return writes this meter may still make now: one more
    /// each tick, at most [`WRITE_BURST`].
    write_budget: u64,
    budget_at_ms: i64,
}

/// The largest value noted in the current window of a fixed length and in
/// the one before it: forgotten one to two windows after it was noted.
#[derive(Debug, Default, Clone, Copy)]
struct RecentMax {
    current: u64,
    previous: u64,
    /// When the current window began (`None`: nothing noted yet).
    since_ms: Option<i64>,
}

impl RecentMax {
    fn note(&mut self, value: u64, now_ms: i64, window_ms: i64) {
        let since = *self.since_ms.get_or_insert(now_ms);
        let passed = now_ms.saturating_sub(since);
        if passed >= window_ms.saturating_mul(2) {
            (self.previous, self.current) = (0, 0);
            self.since_ms = Some(now_ms);
        } else if passed >= window_ms {
            (self.previous, self.current) = (self.current, 0);
            self.since_ms = Some(since.saturating_add(window_ms));
        }
        self.current = self.current.max(value);
    }

    fn get(&self) -> u64 {
        self.current.max(self.previous)
    }
}

impl Background {
    /// Whether the write budget at `now_ms` (one more per tick since it was
    /// last topped up, at most [`WRITE_BURST`]) allows a write.
    fn may_write(&mut self, now_ms: i64, tick_ms: i64) -> bool {
        if self.budget_at_ms == i64::MIN {
            self.budget_at_ms = now_ms;
        }
        let ticks = now_ms.saturating_sub(self.budget_at_ms) / tick_ms.max(1);
        if ticks > 0 {
            self.write_budget = self
                .write_budget
                .saturating_add(u64::try_from(ticks).unwrap_or(u64::MAX))
                .min(WRITE_BURST);
            self.budget_at_ms = self
                .budget_at_ms
                .saturating_add(ticks.saturating_mul(tick_ms));
        }
        self.write_budget > 0
    }

    /// Takes one write from the budget.
    fn wrote(&mut self) {
        self.write_budget = self.write_budget.saturating_sub(1);
    }
}

impl Local {
    fn new(meter: Meter, refill: Option<Refill>, slots: usize) -> Local {
        let refill = pack_refill(refill);
        Local {
            since: meter.since,
            word: AtomicU128::new(0),
            leased_refill: AtomicU128::new(refill),
            wanted_refill: AtomicU128::new(refill),
            pool: AtomicU64::new(UNKNOWN),
            pool_period: AtomicU64::new(0),
            elsewhere: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            adjusted: AtomicI64::new(0),
            max_cost: AtomicU64::new(0),
            asked: AtomicU64::new(0),
            nudged: AtomicBool::new(true),
            forgotten: AtomicBool::new(false),
            busy: AtomicBool::new(false),
            writes: AtomicU64::new(0),
            low: AtomicU64::new(0),
            woken: AtomicBool::new(false),
            bg: Mutex::new(Background {
                ring: vec![0; slots],
                at: 0,
                last_seen: 0,
                // Set at the first look: a new meter counts as just used.
                last_demand_ms: i64::MIN,
                spent_cost: RecentMax::default(),
                asked_cost: RecentMax::default(),
                retry_at_ms: i64::MIN,
                since_write: 0,
                last_write_ms: i64::MIN,
                write_budget: WRITE_BURST,
                budget_at_ms: i64::MIN,
            }),
        }
    }

    fn bg(&self) -> MutexGuard<'_, Background> {
        self.bg.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Changes `(period, unspent)` atomically (not a spend): returns the
    /// old and the new value, and notes the change of `unspent`.
    fn update(&self, f: impl Fn(u64, u64) -> (u64, u64)) -> ((u64, u64), (u64, u64)) {
        let mut word = self.word.load(Ordering::Acquire);
        loop {
            let old = unpack(word);
            let new = f(old.0, old.1);
            match self.word.compare_exchange_weak(
                word,
                pack(new.0, new.1),
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => {
                    let delta = i128::from(new.1) - i128::from(old.1);
                    let delta = i64::try_from(delta).unwrap_or(0);
                    self.adjusted.fetch_add(delta, Ordering::Relaxed);
                    return (old, new);
                }
                Err(seen) => word = seen,
            }
        }
    }

    /// Adds a grant of `period`: to the lease if of the same period, in
    /// its place if of a later one; a grant of an earlier period (answered
    /// out of order) lapsed.
    fn credit(&self, period: u64, granted: u64) {
        self.update(|p, u| {
            if p == period {
                (p, u.saturating_add(granted).min(MAX_CREDITS))
            } else if p < period {
                (period, granted)
            } else {
                (p, u)
            }
        });
    }

    /// Takes what the lease holds above `keep`: `(period, taken, kept)`.
    fn take_above(&self, keep: u64) -> (u64, u64, u64) {
        let ((period, before), (_, after)) = self.update(|p, u| (p, u.min(keep)));
        (period, before - after, after)
    }

    /// The pool as of `now_period` as last seen (`None`: not yet seen).
    fn pool_now(&self, refill: Option<Refill>, now_period: Option<u64>) -> Option<u64> {
        let pool = self.pool.load(Ordering::Relaxed);
        if pool == UNKNOWN {
            return None;
        }
        match (refill, now_period) {
            (Some(r), Some(np)) if self.pool_period.load(Ordering::Relaxed) < np => {
                Some(r.amount())
            }
            _ => Some(pool),
        }
    }

    /// Other instances' leases of `now_period`, as last seen.
    fn elsewhere_now(&self, now_period: Option<u64>) -> u64 {
        match now_period {
            Some(np) if self.pool_period.load(Ordering::Relaxed) < np => 0,
            _ => self.elsewhere.load(Ordering::Relaxed),
        }
    }

    fn seen(&self, pool: u64, period: u64, elsewhere: u64) {
        self.pool_period.store(period, Ordering::Relaxed);
        self.elsewhere.store(elsewhere, Ordering::Relaxed);
        self.pool.store(pool, Ordering::Relaxed);
    }
}

/// Marks a meter busy while its store call runs.
struct Busy<'a>(&'a AtomicBool);

impl<'a> Busy<'a> {
    fn try_new(flag: &'a AtomicBool) -> Option<Busy<'a>> {
        flag.compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
            .ok()
            .map(|_| Busy(flag))
    }

    /// Waits for the store call in flight to end, then marks it busy.
    async fn wait(flag: &'a AtomicBool) -> Busy<'a> {
        loop {
            if let Some(busy) = Busy::try_new(flag) {
                return busy;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
}

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

/// A random instance id: 16 base62 characters from the OS RNG.
fn instance_id() -> String {
    use rand_core::{RngCore, TryRngCore};
    const ALPHABET: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let mut rng = rand_core::OsRng.unwrap_err();
    let mut id = String::with_capacity(16);
    while id.len() < 16 {
        // 248 = 4 × 62: no modulo bias.
        let byte = (rng.next_u32() & 0xff) as u8;
        if byte < 248 {
            if let Some(c) = ALPHABET.get(usize::from(byte % 62)) {
                id.push(char::from(*c));
            }
        }
    }
    id
}

/// This instance's credit leases: one per metered key family.
pub struct CreditLeases {
    store: Arc<dyn Store>,
    instance: String,
    config: LeaseConfig,
    /// Lock-free reads (`papaya`): every request of a hot meter reads its
    /// entry, from every worker at once.
    meters: papaya::HashMap<KeyId, Arc<Local>>,
    counters: Counters,
    /// Whether the store answered the last call (for logging changes only).
    reachable: AtomicBool,
    /// When the last renewal ran.
    renewed_ms: AtomicI64,
    /// Wakes the background between ticks: a lease ran low.
    wake: tokio::sync::Notify,
    /// The meters whose lease ran low since the background last woke.
    woken: Mutex<Vec<KeyId>>,
    /// Lease and return writes since the last tick, ticks' and wakes'
    /// together: at most [`LeaseConfig::writes_per_tick`].
    writes_since_tick: std::sync::atomic::AtomicUsize,
    /// Where the next tick starts among the meters.
    rotation: std::sync::atomic::AtomicUsize,
}

impl CreditLeases {
    /// Leases on `store` for a new instance (a fresh random instance id).
    pub fn new(store: Arc<dyn Store>, config: LeaseConfig) -> CreditLeases {
        CreditLeases {
            store,
            instance: instance_id(),
            config,
            meters: papaya::HashMap::new(),
            counters: Counters::default(),
            reachable: AtomicBool::new(true),
            renewed_ms: AtomicI64::new(i64::MIN),
            wake: tokio::sync::Notify::new(),
            woken: Mutex::new(Vec::new()),
            writes_since_tick: std::sync::atomic::AtomicUsize::new(0),
            rotation: std::sync::atomic::AtomicUsize::new(0),
        }
    }

    /// Asks the background to look at `meter_id`'s lease now rather than at
    /// the next tick (once until it looks).
    #[cold]
    fn wake(&self, local: &Local, meter_id: KeyId) {
        if local.woken.swap(true, Ordering::AcqRel) {
            return;
        }
        self.woken
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(meter_id);
        self.wake.notify_one();
    }

    /// This instance's id in `credit_leases`.
    pub fn instance(&self) -> &str {
        &self.instance
    }

    /// The configuration.
    #[cfg(test)]
    pub fn config(&self) -> &LeaseConfig {
        &self.config
    }

    /// Spends `cost` credits of `meter` at `now`, from this instance's
    /// lease: one map lookup and one compare-and-swap; never touches the
    /// store. `refill` is the meter's refill as the key's record has it. A
    /// cost of 0 asks whether 1 would pass and spends nothing. A meter
    /// never [`ensure`](CreditLeases::ensure)d is registered now and
    /// refused this once (`retry_after` 1 s).
    #[inline]
    pub fn spend(&self, meter: Meter, refill: Option<Refill>, cost: u64, now: UnixMillis) -> Spent {
        let need = cost.max(1);
        let meters = self.meters.pin();
        let Some(local) = meters.get(&meter.id) else {
            drop(meters);
            self.ensure(meter, refill);
            return Spent {
                allowed: false,
                remaining: 0,
                retry_after: Some(RETRY),
            };
        };
        let packed = pack_refill(refill);
        if local.leased_refill.load(Ordering::Acquire) != packed {
            // The refill changed: the lease is taken anew under it.
            local.wanted_refill.store(packed, Ordering::Release);
            local.refused.fetch_add(need, Ordering::Relaxed);
            self.wake(local, meter.id);
            return Spent {
                allowed: false,
                remaining: 0,
                retry_after: Some(RETRY),
            };
        }
        let now_period = refill.map(|r| r.period_at(meter.since, now));
        let mut word = local.word.load(Ordering::Acquire);
        loop {
            let (period, unspent) = unpack(word);
            if now_period.is_some_and(|np| period < np) {
                // A refill boundary passed: this lease lapsed; the
                // background leases anew now.
                local.refused.fetch_add(need, Ordering::Relaxed);
                self.wake(local, meter.id);
                return Spent {
                    allowed: false,
                    remaining: refill.map_or(0, |r| r.amount()),
                    retry_after: Some(RETRY),
                };
            }
            if unspent < need {
                local.refused.fetch_add(need, Ordering::Relaxed);
                if need > local.asked.load(Ordering::Relaxed) {
                    local.asked.fetch_max(need, Ordering::Relaxed);
                }
                let spent = refuse(local, meter, refill, now, now_period, period, unspent, need);
                // Wake the background if the pool may cover it (not when
                // it was seen empty: it asks again in a second or at the
                // refill, whatever the refusals).
                if local
                    .pool_now(refill, now_period)
                    .is_none_or(|p| unspent.saturating_add(p) >= need)
                {
                    self.wake(local, meter.id);
                }
                return spent;
            }
            let pool = local.pool_now(refill, now_period).unwrap_or(0);
            if cost == 0 {
                return Spent {
                    allowed: true,
                    remaining: unspent.saturating_add(pool).min(MAX_CREDITS),
                    retry_after: None,
                };
            }
            match local.word.compare_exchange_weak(
                word,
                pack(period, unspent - cost),
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => {
                    if cost > local.max_cost.load(Ordering::Relaxed) {
                        local.max_cost.fetch_max(cost, Ordering::Relaxed);
                    }
                    let left = unspent - cost;
                    // The lease crossed its low level: top it up now.
                    let low = local.low.load(Ordering::Relaxed);
                    if left < low && unspent >= low {
                        self.wake(local, meter.id);
                    }
                    return Spent {
                        allowed: true,
                        remaining: left.saturating_add(pool).min(MAX_CREDITS),
                        retry_after: None,
                    };
                }
                Err(seen) => word = seen,
            }
        }
    }

    /// Registers `meter` (with the refill its keys have), so that the
    /// background leases for it at its next tick, before its first request;
    /// call it when a key with credits is created or its change arrives,
    /// and for every such key at start. A changed refill takes the lease
    /// anew under it. Cheap when nothing changed.
    pub fn ensure(&self, meter: Meter, refill: Option<Refill>) {
        let packed = pack_refill(refill);
        let meters = self.meters.pin();
        if let Some(local) = meters.get(&meter.id) {
            if local.wanted_refill.load(Ordering::Relaxed) != packed {
                local.wanted_refill.store(packed, Ordering::Release);
            }
            local.forgotten.store(false, Ordering::Relaxed);
            return;
        }
        meters.get_or_insert_with(meter.id, || {
            Arc::new(Local::new(meter, refill, self.config.slots()))
        });
    }

    /// [`CreditLeases::ensure`], then a lease now rather than at the next
    /// tick, whatever the meter's recent demand and any wait after an
    /// empty grant: a create path awaits it, so the key's first request
    /// finds credits here, and so do the credit routes after they change
    /// the pool.
    pub async fn ensure_now(&self, meter: Meter, refill: Option<Refill>, now: UnixMillis) {
        self.ensure(meter, refill);
        let Some(local) = self.meters.pin().get(&meter.id).cloned() else {
            return;
        };
        local.nudged.store(true, Ordering::Relaxed);
        local.bg().retry_at_ms = i64::MIN;
        // Twice at most: the first lease shows the pool, which may call
        // for a larger floor than the configured one.
        for _ in 0..2 {
            let busy = Busy::wait(&local.busy).await;
            if let Err(e) = self
                .service_busy(meter.id, &local, now.as_millis(), Trigger::Now, busy)
                .await
            {
                tracing::debug!(meter = %meter.id, "cannot lease credits yet: {e}");
                return;
            }
            let now_period = refill.map(|r| r.period_at(meter.since, now));
            let floor = self.floor(local.pool_now(refill, now_period));
            if unpack(local.word.load(Ordering::Acquire)).1 >= floor / 2 {
                return;
            }
        }
    }

    /// The credits a meter in use holds at least, the pool as last seen
    /// being `pool`.
    fn floor(&self, pool: Option<u64>) -> u64 {
        if self.config.sole {
            return self.config.floor;
        }
        pool.map_or(0, |p| p / 1_000)
            .min(SHARED_FLOOR_CAP)
            .max(self.config.floor)
    }

    /// Hands this instance's lease of `meter_id` back to the pool now (the
    /// meter stays registered, and is leased for again at the next tick or
    /// [`CreditLeases::ensure_now`]), and deletes its lease row: before the
    /// credits are changed, so that on one instance the new total is exact.
    /// Returns the credits that went back. Waits for a store call of the background on the same
    /// meter to end first.
    pub async fn reclaim(&self, meter_id: &KeyId, now: UnixMillis) -> Result<u64, StoreError> {
        let Some(local) = self.meters.pin().get(meter_id).cloned() else {
            return Ok(0);
        };
        let _busy = Busy::wait(&local.busy).await;
        let refill = unpack_refill(local.leased_refill.load(Ordering::Acquire));
        let (period, taken, _) = local.take_above(0);
        // Even with nothing left, the write clears this instance's lease
        // row, whose last reported amount the total would count.
        if is_stale(&local, refill, period, now) {
            return Ok(0);
        }
        match self
            .give_back(*meter_id, &local, refill, taken, period, 0, now.as_millis())
            .await
        {
            Ok(back) => Ok(if back { taken } else { 0 }),
            Err(e) => {
                if !e.maybe_applied {
                    local.credit(period, taken);
                }
                Err(e.error)
            }
        }
    }

    /// Hands the meter's lease back at the next tick and forgets it (its
    /// last key was revoked).
    pub fn forget(&self, meter_id: &KeyId) {
        if let Some(local) = self.meters.pin().get(meter_id) {
            local.forgotten.store(true, Ordering::Relaxed);
        }
    }

    /// What this instance holds of `meter_id`'s credits now (0 when its
    /// lease lapsed or it has none).
    #[cfg(test)]
    pub fn held(&self, meter_id: &KeyId) -> u64 {
        self.meters
            .pin()
            .get(meter_id)
            .map_or(0, |l| unpack(l.word.load(Ordering::Acquire)).1)
    }

    /// The meters waiting for a wake of the background.
    #[cfg(test)]
    pub fn woken_now(&self) -> Vec<KeyId> {
        self.woken
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The lease of `meter_id` as held: its period and unspent credits.
    #[cfg(test)]
    pub fn lease_of(&self, meter_id: &KeyId) -> Option<(u64, u64)> {
        self.meters
            .pin()
            .get(meter_id)
            .map(|l| unpack(l.word.load(Ordering::Acquire)))
    }

    /// Lease and return writes for `meter_id` since start.
    #[cfg(test)]
    pub fn meter_writes(&self, meter_id: &KeyId) -> u64 {
        self.meters
            .pin()
            .get(meter_id)
            .map_or(0, |l| l.writes.load(Ordering::Relaxed))
    }

    /// The counters.
    pub fn stats(&self) -> LeaseStats {
        let c = &self.counters;
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        LeaseStats {
            leases: load(&c.leases),
            returns: load(&c.returns),
            renewals: load(&c.renewals),
            granted: load(&c.granted),
            returned: load(&c.returned),
            lapsed: load(&c.lapsed),
            expired: load(&c.expired),
            possibly_lost: load(&c.possibly_lost),
            errors: load(&c.errors),
        }
    }

    /// The background: a [`tick`](CreditLeases::tick) every
    /// [`LeaseConfig::tick`] until `shutdown` turns true (or its sender
    /// goes); then every lease goes back ([`CreditLeases::return_all`]).
    pub async fn run(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(self.config.tick);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let woke = tokio::select! {
                _ = tick.tick() => false,
                () = self.wake.notified() => true,
                _ = shutdown.changed() => break,
            };
            if *shutdown.borrow() {
                break;
            }
            if woke {
                self.wake_pass(UnixMillis::now()).await;
            } else {
                self.tick(UnixMillis::now()).await;
            }
        }
        let returned = self.return_all(UnixMillis::now()).await;
        let stats = self.stats();
        tracing::info!(
            instance = %self.instance(),
            credits = returned,
            leases = stats.leases,
            granted = stats.granted,
            returns = stats.returns,
            expired = stats.expired,
            possibly_lost = stats.possibly_lost,
            errors = stats.errors,
            "returned the credit leases"
        );
    }

    /// One pass of the background at `now`: every meter's lease topped
    /// up, handed back or left as it is; every [`LeaseConfig::renew`], this
    /// instance's leases renewed and crashed instances' expired. A store
    /// error ends the pass (the next tick tries again).
    pub async fn tick(&self, now: UnixMillis) {
        let now_ms = now.as_millis();
        let mut locals: Vec<(KeyId, Arc<Local>)> = self
            .meters
            .pin()
            .iter()
            .map(|(id, local)| (*id, Arc::clone(local)))
            .collect();
        // Fair when the writes run out: the meters waiting on a wake first,
        // then the others from where the last tick left off.
        if !locals.is_empty() {
            let start = self.rotation.fetch_add(1, Ordering::Relaxed) % locals.len();
            locals.rotate_left(start);
            locals.sort_by_key(|(_, l)| !l.woken.load(Ordering::Relaxed));
        }
        self.writes_since_tick.store(0, Ordering::Relaxed);
        for (id, local) in &locals {
            if !self.writes_left() {
                break;
            }
            let result = self.service(*id, local, now_ms, Trigger::Tick).await;
            if !self.count_turn(*id, result) {
                // The store is down: the next tick tries again.
                return;
            }
        }
        let renew_ms = i64::try_from(self.config.renew.as_millis()).unwrap_or(i64::MAX);
        // Nothing to renew without meters (and no write every second).
        if !locals.is_empty()
            && now_ms.saturating_sub(self.renewed_ms.load(Ordering::Relaxed)) >= renew_ms
        {
            if let Err(e) = self.renew(&locals, now_ms).await {
                self.failed(&e);
                return;
            }
            self.renewed_ms.store(now_ms, Ordering::Relaxed);
        }
        if !self.reachable.swap(true, Ordering::Relaxed) {
            tracing::info!("credit leases: store reachable again");
        }
    }

    /// The meters whose lease ran low (or lapsed, or was refused with
    /// credits in the pool) since the last wake, each looked at now: at
    /// most [`WRITE_BURST`] writes per meter at once, one more per tick.
    /// A meter out of budget stays woken for the next tick.
    pub async fn wake_pass(&self, now: UnixMillis) {
        let woken = std::mem::take(&mut *self.woken.lock().unwrap_or_else(PoisonError::into_inner));
        let mut left = Vec::new();
        let mut ids = woken.into_iter();
        for id in ids.by_ref() {
            let Some(local) = self.meters.pin().get(&id).cloned() else {
                continue;
            };
            if !local.woken.load(Ordering::Acquire) {
                // The tick looked at it since.
                continue;
            }
            // The writes of a tick, shared with the wakes since: what is
            // not looked at stays woken, and the next tick takes it first.
            if !self.writes_left() {
                left.push(id);
                break;
            }
            let result = self
                .service(id, &local, now.as_millis(), Trigger::Wake)
                .await;
            // Busy, or out of its write budget: still woken, still listed.
            if local.woken.load(Ordering::Acquire) {
                left.push(id);
            }
            if !self.count_turn(id, result) {
                break;
            }
        }
        left.extend(ids);
        if !left.is_empty() {
            self.woken
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .extend(left);
        }
    }

    /// Whether ticks and wakes may still write before the next tick
    /// ([`LeaseConfig::writes_per_tick`]).
    fn writes_left(&self) -> bool {
        self.writes_since_tick.load(Ordering::Relaxed) < self.config.writes_per_tick
    }

    /// Counts a meter's turn (its write, or its error); false when the
    /// store is down, so the pass ends (the next tick tries again). Any
    /// other error is the meter's own: the others go on.
    fn count_turn(&self, id: KeyId, result: Result<bool, StoreError>) -> bool {
        match result {
            Ok(wrote) => {
                self.writes_since_tick
                    .fetch_add(usize::from(wrote), Ordering::Relaxed);
                true
            }
            Err(e @ StoreError::Unavailable(_)) => {
                self.failed(&e);
                false
            }
            Err(e) => {
                self.counters.errors.fetch_add(1, Ordering::Relaxed);
                crate::metrics::store_error(crate::metrics::StoreSource::Credits);
                tracing::error!(meter = %id, "credit lease: {e}");
                true
            }
        }
    }

    /// Hands every lease back (graceful shutdown); returns the credits
    /// that went back into pools.
    pub async fn return_all(&self, now: UnixMillis) -> u64 {
        let now_ms = now.as_millis();
        let mut back = 0u64;
        let locals: Vec<(KeyId, Arc<Local>)> = self
            .meters
            .pin()
            .iter()
            .map(|(id, local)| (*id, Arc::clone(local)))
            .collect();
        for (id, local) in locals {
            let refill = unpack_refill(local.leased_refill.load(Ordering::Acquire));
            let (period, taken, _) = local.take_above(0);
            if taken == 0 || is_stale(&local, refill, period, now) {
                continue;
            }
            match self
                .give_back(id, &local, refill, taken, period, 0, now_ms)
                .await
            {
                Ok(true) => back = back.saturating_add(taken),
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(meter = %id, credits = taken, "cannot return a credit lease: {e}");
                }
            }
        }
        back
    }

    fn failed(&self, e: &StoreError) {
        self.counters.errors.fetch_add(1, Ordering::Relaxed);
        crate::metrics::store_error(crate::metrics::StoreSource::Credits);
        if self.reachable.swap(false, Ordering::Relaxed) {
            tracing::warn!("credit leases: {e}; spending what is leased, retrying each tick");
        }
    }

    /// Renews this instance's leases and reads the pools; expires crashed
    /// instances' leases.
    async fn renew(&self, locals: &[(KeyId, Arc<Local>)], now_ms: i64) -> Result<(), StoreError> {
        let now = UnixMillis::from_millis(now_ms);
        // A meter with a lease write in flight (a create or a credit route
        // leasing now) is left out this time: its report, read before that
        // write commits, would undo the write's record of the lease. Each
        // reported meter stays marked busy until the renewal commits.
        let mut held = Vec::with_capacity(locals.len());
        let reports: Vec<LeaseReport> = locals
            .iter()
            .filter_map(|(id, local)| {
                held.push(Busy::try_new(&local.busy)?);
                let refill = unpack_refill(local.leased_refill.load(Ordering::Acquire));
                let (period, unspent) = unpack(local.word.load(Ordering::Acquire));
                Some(LeaseReport {
                    meter_id: *id,
                    period,
                    unspent: if is_stale(local, refill, period, now) {
                        0
                    } else {
                        unspent
                    },
                })
            })
            .collect();
        let pools = self
            .store
            .renew_leases(&self.instance, now_ms, self.ttl_ms(), &reports)
            .await;
        drop(held);
        let pools = pools?;
        self.counters.renewals.fetch_add(1, Ordering::Relaxed);
        for view in pools {
            if let Some(local) = self.meters.pin().get(&view.meter_id) {
                local.seen(view.remaining, view.period, view.elsewhere);
            }
        }
        let expired = self.store.expire_leases(now_ms).await?;
        if expired.leases > 0 {
            self.counters
                .expired
                .fetch_add(expired.forfeited, Ordering::Relaxed);
            tracing::warn!(
                leases = expired.leases,
                credits = expired.forfeited,
                "expired the credit leases of instances that stopped renewing them (forfeited)"
            );
        }
        Ok(())
    }

    fn ttl_ms(&self) -> i64 {
        i64::try_from(self.config.ttl.as_millis()).unwrap_or(i64::MAX)
    }

    /// One meter's turn: at most one lease or return write. Returns
    /// whether it wrote.
    async fn service(
        &self,
        id: KeyId,
        local: &Local,
        now_ms: i64,
        trigger: Trigger,
    ) -> Result<bool, StoreError> {
        let Some(busy) = Busy::try_new(&local.busy) else {
            return Ok(false);
        };
        self.service_busy(id, local, now_ms, trigger, busy).await
    }

    /// [`CreditLeases::service`] with the meter marked busy by the caller.
    async fn service_busy(
        &self,
        id: KeyId,
        local: &Local,
        now_ms: i64,
        trigger: Trigger,
        _busy: Busy<'_>,
    ) -> Result<bool, StoreError> {
        let now = UnixMillis::from_millis(now_ms);
        let cfg = &self.config;
        // What was asked since the last look: spent plus refused; and the
        // demand per second, the larger of the last second's and the rate
        // since the last lease write (a burst that began this second).
        let (d1s, since_demand, retry_at_ms, may_write, spent_cost, asked_cost) = {
            let mut bg = local.bg();
            // Out of writes: a wake waits for the next tick (still woken,
            // so that spends do not wake it again meanwhile); a tick keeps
            // the demand's count and writes nothing.
            let may_write = trigger == Trigger::Now || bg.may_write(now_ms, ms(cfg.tick));
            if !may_write && trigger == Trigger::Wake {
                return Ok(false);
            }
            local.woken.store(false, Ordering::Release);
            let unspent = unpack(local.word.load(Ordering::Acquire)).1;
            let adjusted = local.adjusted.swap(0, Ordering::Relaxed);
            let spent = i128::from(bg.last_seen) + i128::from(adjusted) - i128::from(unspent);
            bg.last_seen = unspent;
            let spent = u64::try_from(spent.max(0)).unwrap_or(0);
            let demand = spent.saturating_add(local.refused.swap(0, Ordering::Relaxed));
            // A tick opens the next slot of the ring; a wake adds to the
            // current one.
            if trigger == Trigger::Tick {
                bg.at = (bg.at + 1) % bg.ring.len().max(1);
                let at = bg.at;
                if let Some(slot) = bg.ring.get_mut(at) {
                    *slot = 0;
                }
            }
            let at = bg.at;
            if let Some(slot) = bg.ring.get_mut(at) {
                *slot = slot.saturating_add(demand);
            }
            if demand > 0 || bg.last_demand_ms == i64::MIN {
                bg.last_demand_ms = now_ms;
            }
            let (spent_max, asked_max) = (
                local.max_cost.swap(0, Ordering::Relaxed),
                local.asked.swap(0, Ordering::Relaxed),
            );
            bg.spent_cost.note(spent_max, now_ms, ms(SPENT_COST_WINDOW));
            bg.asked_cost.note(asked_max, now_ms, ms(ASKED_COST_WINDOW));
            // The rate since the last write counts what was spent, not
            // what was refused: a refused cost is leased for as such
            // (`asked_cost`), never multiplied into a rate.
            bg.since_write = bg.since_write.saturating_add(spent);
            let d1s = bg.ring.iter().fold(0u64, |a, d| a.saturating_add(*d));
            let rate = if bg.last_write_ms == i64::MIN {
                0
            } else {
                let span = now_ms
                    .saturating_sub(bg.last_write_ms)
                    .max(MIN_RATE_SPAN_MS);
                let per_s =
                    u128::from(bg.since_write) * 1_000 / u128::try_from(span).unwrap_or(1).max(1);
                u64::try_from(per_s).unwrap_or(u64::MAX)
            };
            (
                d1s.max(rate),
                now_ms.saturating_sub(bg.last_demand_ms),
                bg.retry_at_ms,
                may_write,
                bg.spent_cost.get(),
                bg.asked_cost.get(),
            )
        };

        if local.forgotten.load(Ordering::Relaxed) {
            let refill = unpack_refill(local.leased_refill.load(Ordering::Acquire));
            let (period, taken, _) = local.take_above(0);
            if taken > 0 && !is_stale(local, refill, period, now) {
                if let Err(e) = self
                    .give_back(id, local, refill, taken, period, 0, now_ms)
                    .await
                {
                    if !e.maybe_applied {
                        local.credit(period, taken);
                    }
                    return Err(e.error);
                }
            }
            let _ = self
                .meters
                .pin()
                .remove_if(&id, |_, l| l.forgotten.load(Ordering::Relaxed));
            return Ok(taken > 0);
        }

        // A changed refill: the lease goes back under the old one (it
        // lapses if the pool's periods moved on) and is taken anew.
        let wanted = local.wanted_refill.load(Ordering::Acquire);
        let leased = local.leased_refill.load(Ordering::Acquire);
        if wanted != leased {
            let old = unpack_refill(leased);
            let (period, taken, _) = local.take_above(0);
            if taken > 0 && !is_stale(local, old, period, now) {
                if let Err(e) = self
                    .give_back(id, local, old, taken, period, 0, now_ms)
                    .await
                {
                    if !e.maybe_applied {
                        local.credit(period, taken);
                    }
                    return Err(e.error);
                }
            }
            local.update(|_, _| (0, 0));
            local.pool.store(UNKNOWN, Ordering::Relaxed);
            local.leased_refill.store(wanted, Ordering::Release);
            local.nudged.store(true, Ordering::Relaxed);
            return Ok(taken > 0);
        }

        let refill = unpack_refill(leased);
        let now_period = refill.map(|r| r.period_at(local.since, now));
        let (period, unspent) = unpack(local.word.load(Ordering::Acquire));
        let stale = now_period.is_some_and(|np| period < np);
        let pool_seen = local.pool_now(refill, now_period);
        let held = if stale { 0 } else { unspent };
        // Shared, an instance holds at most half of what the meter has left
        // (its pool as last seen plus this lease), or more only for one
        // request's cost: the largest spent in the last 10 to 20 s, or
        // refused in the last 2 to 4 s (leased for, so that the request
        // passes when retried, and given back if it is not), if the meter
        // has that much left at all.
        let left = match pool_seen {
            Some(p) if !cfg.sole => p.saturating_add(held),
            _ => u64::MAX,
        };
        let cap = left.div_ceil(2);
        let asked = if asked_cost <= left { asked_cost } else { 0 };
        let keep = spent_cost.max(asked).max(1);
        let scarce = pool_seen == Some(0);
        // Shared, a meter in use holds at least a thousandth of the pool as
        // last seen (up to [`SHARED_FLOOR_CAP`]), so that a burst on a
        // large balance runs on the lease while it is topped up; a small
        // pool keeps the configured floor, spread over the instances.
        let floor = self.floor(pool_seen);
        let nudged = local.nudged.load(Ordering::Relaxed);
        let idle = since_demand >= ms(cfg.idle) && !nudged;
        let warm = since_demand < ms(cfg.warm) || nudged;
        // What to hold, the level to top up below, and (shared only) the
        // most to keep while idle or scarce.
        let (hold, low) = if !warm {
            (0, 0)
        } else if idle && !cfg.sole {
            // The pool empty: the last credits go where they are asked for,
            // unless a refused request here awaits them.
            let hold = if scarce { asked } else { keep.max(floor) };
            (hold, hold)
        } else {
            let hold = d1s.saturating_mul(2).max(floor).min(cap).max(keep);
            (hold, d1s.max(floor / 2).min(hold).max(keep))
        };
        local.low.store(low, Ordering::Relaxed);

        if may_write && held < low && held < hold && (nudged || now_ms >= retry_at_ms) {
            let want = hold.saturating_sub(held).min(MAX_CREDITS);
            // Alone, take all of it (nobody to spread the last credits to);
            // shared, at least one request's worth.
            let need = if cfg.sole {
                want
            } else {
                keep.saturating_sub(held)
            };
            let meter = CreditMeter {
                meter: Meter {
                    id,
                    since: local.since,
                },
                refill,
            };
            local.writes.fetch_add(1, Ordering::Relaxed);
            self.counters.leases.fetch_add(1, Ordering::Relaxed);
            {
                let mut bg = local.bg();
                bg.since_write = 0;
                bg.last_write_ms = now_ms;
                bg.wrote();
            }
            match self
                .store
                .lease_credits(meter, &self.instance, want, need, now_ms, self.ttl_ms())
                .await
            {
                Ok(lease) if lease.stale_refill => {
                    // Asked under a refill the meter's keys no longer have
                    // (a stale copy): nothing granted; ask again in a second
                    // or when a spend brings the current refill.
                    local.nudged.store(false, Ordering::Relaxed);
                    local.bg().retry_at_ms = now_ms.saturating_add(1_000);
                    Ok(true)
                }
                Ok(lease) => {
                    local.nudged.store(false, Ordering::Relaxed);
                    local.credit(lease.period, lease.granted);
                    local.seen(lease.pool, lease.period, lease.elsewhere);
                    self.counters
                        .granted
                        .fetch_add(lease.granted, Ordering::Relaxed);
                    // Nothing left: ask again in a second, or at the refill.
                    local.bg().retry_at_ms = if lease.granted == 0 && lease.pool == 0 {
                        let next = refill.map_or(i64::MAX, |r| {
                            r.next_refill(local.since, lease.period).as_millis()
                        });
                        now_ms.saturating_add(1_000).min(next)
                    } else {
                        i64::MIN
                    };
                    Ok(true)
                }
                Err(e) => {
                    if e.maybe_applied {
                        self.counters
                            .possibly_lost
                            .fetch_add(want, Ordering::Relaxed);
                        tracing::warn!(meter = %id, credits = want, "a credit lease may have committed unseen: {e}");
                    }
                    Err(e.error)
                }
            }
        } else if may_write && !cfg.sole && !stale && held > hold && (idle || scarce || !warm) {
            let (period, taken, kept) = local.take_above(hold);
            if taken == 0 {
                return Ok(false);
            }
            local.bg().wrote();
            match self
                .give_back(id, local, refill, taken, period, kept, now_ms)
                .await
            {
                Ok(_) => Ok(true),
                Err(e) => {
                    if !e.maybe_applied {
                        local.credit(period, taken);
                    }
                    Err(e.error)
                }
            }
        } else {
            Ok(false)
        }
    }

    /// `return_credits`, counted. A return whose commit is in doubt is
    /// taken as done: the credits stay out of this instance (possibly lost,
    /// never spent twice).
    #[allow(clippy::too_many_arguments)]
    async fn give_back(
        &self,
        id: KeyId,
        local: &Local,
        refill: Option<Refill>,
        amount: u64,
        period: u64,
        kept: u64,
        now_ms: i64,
    ) -> Result<bool, LeaseWriteError> {
        let meter = CreditMeter {
            meter: Meter {
                id,
                since: local.since,
            },
            refill,
        };
        local.writes.fetch_add(1, Ordering::Relaxed);
        self.counters.returns.fetch_add(1, Ordering::Relaxed);
        match self
            .store
            .return_credits(meter, &self.instance, amount, period, kept, now_ms)
            .await
        {
            Ok(back) => {
                if back {
                    // The pool as seen holds them again (until the next
                    // renewal says exactly): a refusal meanwhile says they
                    // may come.
                    let _ = local
                        .pool
                        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |p| {
                            (p != UNKNOWN).then(|| p.saturating_add(amount).min(MAX_CREDITS))
                        });
                }
                let counter = if back {
                    &self.counters.returned
                } else {
                    &self.counters.lapsed
                };
                counter.fetch_add(amount, Ordering::Relaxed);
                Ok(back)
            }
            Err(e) => {
                if e.maybe_applied {
                    self.counters
                        .possibly_lost
                        .fetch_add(amount, Ordering::Relaxed);
                    tracing::warn!(meter = %id, credits = amount, "a credit return may not have committed: {e}");
                }
                Err(e)
            }
        }
    }
}

/// What asked for a meter's turn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Trigger {
    /// The background's tick: the demand ring moves on a slot.
    Tick,
    /// A spend saw the lease run low: within the meter's write budget.
    Wake,
    /// [`CreditLeases::ensure_now`]: a create or a credit route awaits it.
    Now,
}

/// Whether a lease of `period` lapsed by `now`.
fn is_stale(local: &Local, refill: Option<Refill>, period: u64, now: UnixMillis) -> bool {
    refill.is_some_and(|r| period < r.period_at(local.since, now))
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// The refusal of a request whose cost the lease does not cover.
#[allow(clippy::too_many_arguments)]
fn refuse(
    local: &Local,
    meter: Meter,
    refill: Option<Refill>,
    now: UnixMillis,
    now_period: Option<u64>,
    period: u64,
    unspent: u64,
    need: u64,
) -> Spent {
    let pool = local.pool_now(refill, now_period);
    let remaining = unspent.saturating_add(pool.unwrap_or(0)).min(MAX_CREDITS);
    let elsewhere = local.elsewhere_now(now_period);
    // Credits may come from the pool or back from other instances, or the
    // pool was never seen.
    let may_come = pool.is_none_or(|p| unspent.saturating_add(p).saturating_add(elsewhere) >= need);
    let retry_after = if may_come {
        Some(RETRY)
    } else {
        refill.filter(|r| r.amount() >= need).map(|r| {
            let at = r.next_refill(meter.since, period.max(now_period.unwrap_or(0)));
            let wait = at.as_millis().saturating_sub(now.as_millis());
            Duration::from_millis(u64::try_from(wait).unwrap_or(0).max(1))
        })
    };
    Spent {
        allowed: false,
        remaining,
        retry_after,
    }
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]
mod tests;
