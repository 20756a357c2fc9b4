//! Per-key usage counts: every decision of `/v1/authorize` (fixed scope or
//! forward-auth) counted by key, minute and outcome in memory, and written
//! to the store in batches by the follower, never in a request's critical
//! section.
//!
//! # The hot path
//!
//! [`Counts::record`] for a key already counted this minute is one shard
//! read lock of a map, one load and one `fetch_add`: no allocation, no
//! write lock. Each key holds two minute slots (this minute and the last,
//! by the minute's parity); the first count of a new minute takes the
//! shard's write lock once to move the slot on, and moves counts the
//! follower has not taken yet (it takes them every flush interval, at most
//! 10 s) into a spill list, so no count is ever lost, even when the store
//! is down for hours. A late count for a minute older than its slot (a
//! thread that read the clock just before the minute turned) goes to the
//! spill as well.
//!
//! A decision counts with one call: `state.counts().record(key_id, now_ms,
//! Outcome::Allowed)` (`/v1/authorize` and forward-auth count `Allowed` and
//! `Forbidden`; a 429 of the rate limits or credits counts `RateLimited` or
//! `CreditsExhausted` the same way).
//!
//! # Flushes and readers
//!
//! The follower takes every count ([`Counts::take`]), writes the batch, and
//! hands it back if the write failed ([`Counts::unflush`]). It holds the
//! write half of a lock from the take to the end of the write
//! ([`Counts::flush_guard`]), and `GET /v1/keys/{id}/usage` holds the read
//! half while it reads the store and then memory ([`Counts::read_guard`]):
//! so a reader sees each count exactly once, in the store or in memory,
//! never in a batch on its way between them. `record` takes no lock.

use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};

use dashmap::DashMap;
use keygate::KeyId;

use crate::store::{UsageCounts, UsageRow, MINUTE_MS};

/// What became of a request, as counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Allowed (204).
    Allowed,
    /// Refused: the key lacks the scope (403).
    Forbidden,
    /// Refused by the key's rate limit (429).
    RateLimited,
    /// Refused: the key's credits ran out (429).
    CreditsExhausted,
}

impl Outcome {
    /// The outcome of a request that passed its scope: allowed, or the
    /// limit that refused it.
    pub fn of(verdict: &keygate::Verdict) -> Outcome {
        match verdict.result() {
            Ok(()) => Outcome::Allowed,
            Err(keygate::Refusal::CreditsExhausted { .. }) => Outcome::CreditsExhausted,
            Err(_) => Outcome::RateLimited,
        }
    }
}

#[cfg(test)]
impl Outcome {
    /// Every outcome, in column order.
    pub const ALL: [Outcome; OUTCOMES] = [
        Outcome::Allowed,
        Outcome::Forbidden,
        Outcome::RateLimited,
        Outcome::CreditsExhausted,
    ];
}

/// How many outcomes are counted.
const OUTCOMES: usize = 4;

/// The element of a per-outcome array that counts `outcome`.
#[inline]
fn at<T>(array: &[T; OUTCOMES], outcome: Outcome) -> &T {
    let [allowed, forbidden, rate_limited, credits_exhausted] = array;
    match outcome {
        Outcome::Allowed => allowed,
        Outcome::Forbidden => forbidden,
        Outcome::RateLimited => rate_limited,
        Outcome::CreditsExhausted => credits_exhausted,
    }
}

/// [`at`], mutably.
fn at_mut<T>(array: &mut [T; OUTCOMES], outcome: Outcome) -> &mut T {
    let [allowed, forbidden, rate_limited, credits_exhausted] = array;
    match outcome {
        Outcome::Allowed => allowed,
        Outcome::Forbidden => forbidden,
        Outcome::RateLimited => rate_limited,
        Outcome::CreditsExhausted => credits_exhausted,
    }
}

/// A slot that holds no minute yet.
const EMPTY: i64 = i64::MIN;

/// Four counts as an array, in [`Outcome`] order.
type Tally = [u64; OUTCOMES];

fn to_counts(t: Tally) -> UsageCounts {
    let [allowed, forbidden, rate_limited, credits_exhausted] = t;
    UsageCounts {
        allowed,
        forbidden,
        rate_limited,
        credits_exhausted,
    }
}

fn to_tally(c: &UsageCounts) -> Tally {
    [c.allowed, c.forbidden, c.rate_limited, c.credits_exhausted]
}

/// One minute's counts of one key.
struct Slot {
    /// The minute (Unix ms / 60 000) the counts belong to, or [`EMPTY`].
    /// Changed only under the map shard's write lock.
    minute: AtomicI64,
    counts: [AtomicU64; OUTCOMES],
}

impl Slot {
    fn new() -> Slot {
        Slot {
            minute: AtomicI64::new(EMPTY),
            counts: Default::default(),
        }
    }

    /// Takes the counts, leaving zeros (concurrent increments land before
    /// or after, never lost).
    fn take(&self) -> Tally {
        self.counts.each_ref().map(|c| c.swap(0, Ordering::Relaxed))
    }

    fn load(&self) -> Tally {
        self.counts.each_ref().map(|c| c.load(Ordering::Relaxed))
    }
}

/// One key's counts: two minute slots and the spill.
struct KeyCounts {
    slots: [Slot; 2],
    /// Counts of minutes no slot holds: a slot's counts not yet taken when
    /// it moved on, a late count, a batch handed back after a failed write.
    spill: Mutex<Vec<(i64, Tally)>>,
}

impl KeyCounts {
    fn new() -> KeyCounts {
        KeyCounts {
            slots: [Slot::new(), Slot::new()],
            spill: Mutex::new(Vec::new()),
        }
    }

    fn slot(&self, minute: i64) -> &Slot {
        let [even, odd] = &self.slots;
        if minute & 1 == 0 {
            even
        } else {
            odd
        }
    }

    fn spill(&self) -> std::sync::MutexGuard<'_, Vec<(i64, Tally)>> {
        self.spill.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Counts `outcome` in `minute`, with the entry held exclusively (the
    /// shard's write lock): moves the slot on to `minute` if it is behind.
    fn count_exclusive(&mut self, minute: i64, outcome: Outcome) {
        let [even, odd] = &mut self.slots;
        let slot = if minute & 1 == 0 { even } else { odd };
        let held = *slot.minute.get_mut();
        if held == minute {
            *at_mut(&mut slot.counts, outcome).get_mut() += 1;
            return;
        }
        let spill = self.spill.get_mut().unwrap_or_else(PoisonError::into_inner);
        if held < minute {
            let old = slot.counts.each_mut().map(|c| std::mem::take(c.get_mut()));
            if held != EMPTY && old != Tally::default() {
                spill.push((held, old));
            }
            *slot.minute.get_mut() = minute;
            *at_mut(&mut slot.counts, outcome).get_mut() = 1;
        } else {
            let mut late = Tally::default();
            *at_mut(&mut late, outcome) = 1;
            spill.push((minute, late));
        }
    }

    /// Whether the entry holds no count and no minute at or after `minute`.
    fn idle_before(&self, minute: i64) -> bool {
        self.slots
            .iter()
            .all(|s| s.minute.load(Ordering::Relaxed) < minute && s.load() == Tally::default())
            && self.spill().is_empty()
    }
}

/// The hasher of the map: key ids come from a CSPRNG and only keys that
/// authenticated are counted, so no client chooses colliding ids; one
/// folded multiply of the id's 128 bits spreads them (SipHash would cost
/// more than the count).
#[derive(Default)]
pub struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        }
    }

    fn write_u128(&mut self, n: u128) {
        let folded = (n as u64) ^ ((n >> 64) as u64) ^ self.0;
        let product = u128::from(folded) * u128::from(0x9e37_79b9_7f4a_7c15_u64);
        self.0 = (product as u64) ^ ((product >> 64) as u64);
    }
}

/// The per-key, per-minute counts not yet written. See the module
/// documentation.
pub struct Counts {
    keys: DashMap<KeyId, KeyCounts, BuildHasherDefault<IdHasher>>,
    /// Write half: a flush, from its take to the end of its write. Read
    /// half: a reader of the store and memory.
    flushing: tokio::sync::RwLock<()>,
}

/// How many shards the map has: as many as the keyring (`sync::cache`),
/// so that threads counting different keys seldom share a shard's lock
/// (dashmap's default, four per core, is 8 on two cores).
const SHARDS: usize = 64;

impl Default for Counts {
    fn default() -> Counts {
        Counts {
            keys: DashMap::with_hasher_and_shard_amount(BuildHasherDefault::default(), SHARDS),
            flushing: tokio::sync::RwLock::new(()),
        }
    }
}

impl Counts {
    /// Counts one request of key `id` at `now_ms` with its outcome. For a
    /// key already counted this minute: a shard read lock, a load and an
    /// atomic add; no allocation.
    #[inline]
    pub fn record(&self, id: KeyId, now_ms: i64, outcome: Outcome) {
        let minute = now_ms.div_euclid(MINUTE_MS);
        if let Some(key) = self.keys.get(&id) {
            let slot = key.slot(minute);
            if slot.minute.load(Ordering::Relaxed) == minute {
                at(&slot.counts, outcome).fetch_add(1, Ordering::Relaxed);
                return;
            }
        }
        self.record_new_minute(id, minute, outcome);
    }

    /// [`Counts::record`]'s first count of a key in a minute: once per key
    /// and minute, under the shard's write lock.
    #[cold]
    fn record_new_minute(&self, id: KeyId, minute: i64, outcome: Outcome) {
        self.keys
            .entry(id)
            .or_insert_with(KeyCounts::new)
            .value_mut()
            .count_exclusive(minute, outcome);
    }

    /// Takes every count not yet written, one row per key and minute, in
    /// (key, minute) order; forgets the keys that have counted nothing since
    /// the minute before `now_ms`'s. If writing the rows fails, hand them
    /// back with [`Counts::unflush`].
    pub fn take(&self, now_ms: i64) -> Vec<UsageRow> {
        let mut rows: Vec<(KeyId, i64, Tally)> = Vec::new();
        let mut idle = Vec::new();
        let current = now_ms.div_euclid(MINUTE_MS);
        for key in self.keys.iter() {
            for slot in &key.slots {
                let minute = slot.minute.load(Ordering::Relaxed);
                if minute == EMPTY {
                    continue;
                }
                let tally = slot.take();
                if tally != Tally::default() {
                    rows.push((*key.key(), minute, tally));
                }
            }
            rows.extend(key.spill().drain(..).map(|(m, t)| (*key.key(), m, t)));
            if key
                .slots
                .iter()
                .all(|s| s.minute.load(Ordering::Relaxed) < current - 1)
            {
                idle.push(*key.key());
            }
        }
        for id in idle {
            // Checked again under the write lock: a count since is kept.
            self.keys
                .remove_if(&id, |_, key| key.idle_before(current - 1));
        }
        merge(rows)
    }

    /// Hands back a batch that [`Counts::take`] took and the store did not
    /// write: its counts count again, and go out with the next flush.
    pub fn unflush(&self, batch: &[UsageRow]) {
        for row in batch {
            self.keys
                .entry(row.key_id)
                .or_insert_with(KeyCounts::new)
                .value_mut()
                .spill
                .get_mut()
                .unwrap_or_else(PoisonError::into_inner)
                .push((row.minute_ms.div_euclid(MINUTE_MS), to_tally(&row.counts)));
        }
    }

    /// `id`'s counts not yet written (taken by no flush), by minute start
    /// (Unix ms), in minute order.
    pub fn pending(&self, id: &KeyId) -> Vec<(i64, UsageCounts)> {
        let Some(key) = self.keys.get(id) else {
            return Vec::new();
        };
        let mut rows: Vec<(KeyId, i64, Tally)> = key
            .slots
            .iter()
            .filter(|s| s.minute.load(Ordering::Relaxed) != EMPTY)
            .map(|s| (*id, s.minute.load(Ordering::Relaxed), s.load()))
            .collect();
        rows.extend(key.spill().iter().map(|&(m, t)| (*id, m, t)));
        drop(key);
        merge(rows)
            .into_iter()
            .map(|row| (row.minute_ms, row.counts))
            .collect()
    }

    /// The flush's half of the lock: held from [`Counts::take`] to the end
    /// of the store write (and [`Counts::unflush`]).
    pub async fn flush_guard(&self) -> tokio::sync::RwLockWriteGuard<'_, ()> {
        self.flushing.write().await
    }

    /// A reader's half: held while it reads the store and then
    /// [`Counts::pending`], so no batch is between the two meanwhile.
    pub async fn read_guard(&self) -> tokio::sync::RwLockReadGuard<'_, ()> {
        self.flushing.read().await
    }
}

/// Sums rows of the same key and minute, drops empty ones, and sorts.
fn merge(mut rows: Vec<(KeyId, i64, Tally)>) -> Vec<UsageRow> {
    rows.sort_unstable_by_key(|&(id, minute, _)| (id, minute));
    let mut out: Vec<UsageRow> = Vec::with_capacity(rows.len());
    for (key_id, minute, tally) in rows {
        let counts = to_counts(tally);
        if counts.is_zero() {
            continue;
        }
        let minute_ms = minute.saturating_mul(MINUTE_MS);
        match out.last_mut() {
            Some(last) if last.key_id == key_id && last.minute_ms == minute_ms => {
                last.counts.add(&counts);
            }
            _ => out.push(UsageRow {
                key_id,
                minute_ms,
                counts,
            }),
        }
    }
    out
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]
mod tests;
