//! The in-memory keyring every request is checked against, kept in step
//! with the store by the follower (`crate::sync::follow`) and by this instance's
//! own writes.
//!
//! The hot path picks a shard by the token's id bytes, takes its read lock
//! and calls the library's constant-time [`Keyring::authenticate`]
//! (which parses only when the digest does not match): an unknown id costs
//! what a wrong secret costs, and no request ever reaches the database.
//!
//! # Shards
//!
//! The keys are spread over [`SHARDS`] keyrings by a hash of the key id,
//! each behind its own `RwLock`. A write (a change from the log, an
//! eviction pass) locks one shard at a time, so it stalls at most the
//! readers of that shard, for the time of a write to a keyring
//! 1/[`SHARDS`] the size: an index that grows rehashes 1/64 of the keys,
//! and eviction walks the shards one after another instead of a million
//! records under one lock. `server/benches/reader_stall.rs` measures it
//! against a single lock (BENCHMARKS.md). The shard depends on the key id
//! only, which is public; the secret comparison is the library's, per
//! shard, unchanged.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use keygate::{
    AuthError, Change, ChangeOp, KeyId, KeyLimits, Keyring, Limiter, Meter, Pepper, Principal,
    RateDecision, Refill,
};

/// How many shards the keys are spread over (a power of two).
pub const SHARDS: usize = 64;

/// How many meters' shares [`KeyCache::set_shares`] sets per write lock.
pub const SHARE_BATCH: usize = 256;

/// The keyring, in shards behind locks.
pub struct KeyCache {
    shards: Vec<RwLock<Keyring>>,
    pepper: Pepper,
    /// The rate limits of limited keys and the meters of keys with
    /// credits, kept in step with the shards by [`KeyCache::apply`].
    limits: RwLock<Limits>,
    /// Whether any key is limited: while none is, a check takes no lock.
    limited: AtomicBool,
    /// Meters whose last key with credits went (revoked, or its credits
    /// removed), for [`KeyCache::take_released`].
    released: Mutex<Vec<KeyId>>,
}

/// What the hot path needs of a key's credits: its meter (the pool its
/// credits are leased from) and the refill its record has. The credits
/// themselves are spent from this instance's leases
/// (`crate::sync::credits::CreditLeases::spend`), never here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Metered {
    /// The meter the key is charged to.
    pub meter: Meter,
    /// The refill of its credits, if any.
    pub refill: Option<Refill>,
}

/// The limits of limited keys, behind one lock.
#[derive(Default)]
struct Limits {
    /// Rate limits only: credits are leased (`crate::sync::credits`), so a
    /// key is charged here with `credits: None`.
    limiter: Limiter,
    /// Every key with credits, to its meter and refill.
    metered: HashMap<KeyId, Metered>,
    /// Every meter of `metered`, to how many of its keys have credits.
    keys_of: HashMap<KeyId, usize>,
    /// Every key with a rate limit (charged to `limiter`).
    rated: std::collections::HashSet<KeyId>,
}

impl Limits {
    fn is_empty(&self) -> bool {
        self.limiter.is_empty() && self.metered.is_empty()
    }

    /// Sets `id`'s credit meter (`None`: no credits); returns the meter
    /// that lost its last key, if one did.
    fn meter(&mut self, id: KeyId, metered: Option<Metered>) -> Option<KeyId> {
        let old = match metered {
            Some(m) => self.metered.insert(id, m),
            None => self.metered.remove(&id),
        };
        if let Some(m) = metered {
            if old.map(|o| o.meter.id) != Some(m.meter.id) {
                *self.keys_of.entry(m.meter.id).or_insert(0) += 1;
            }
        }
        let old = old?;
        if metered.is_some_and(|m| m.meter.id == old.meter.id) {
            return None;
        }
        let n = self.keys_of.get_mut(&old.meter.id)?;
        *n = n.saturating_sub(1);
        if *n > 0 {
            return None;
        }
        self.keys_of.remove(&old.meter.id);
        Some(old.meter.id)
    }
}

/// What [`KeyCache::check_limits`] decided and found: the rate limit's
/// decision, if the key has one, and the key's credit meter, if it has
/// credits.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Checked {
    /// The rate limit's decision (the request counted toward it).
    pub rate: Option<RateDecision>,
    /// Where the key's credits are spent.
    pub metered: Option<Metered>,
}

/// The shard of `id`. Ids are random base62, so one multiply of their
/// first eight bytes spreads them evenly; the top bits of the product mix
/// every byte. A hot-path cost of one multiply, not a hash over 16 bytes.
fn shard_of(id: &KeyId) -> usize {
    shard_of_head(id.as_str().as_bytes())
}

/// [`shard_of`] an id whose text starts `head` (shorter: zero-padded).
fn shard_of_head(head: &[u8]) -> usize {
    let mut first = [0u8; 8];
    for (to, from) in first.iter_mut().zip(head) {
        *to = *from;
    }
    let mixed = u64::from_le_bytes(first).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    (mixed >> (u64::BITS - SHARDS.trailing_zeros())) as usize
}

/// Where a token's key id starts: after `ak_` or `rk_`.
const ID_AT: usize = keygate::KeyKind::Standard.prefix().len();

impl KeyCache {
    /// An empty cache whose digests are keyed by `pepper`, with room for
    /// `capacity` keys.
    pub fn new(pepper: Pepper, capacity: usize) -> KeyCache {
        let per_shard = capacity.div_ceil(SHARDS);
        KeyCache {
            shards: (0..SHARDS)
                .map(|_| RwLock::new(Keyring::with_capacity(pepper.clone(), per_shard)))
                .collect(),
            pepper,
            limits: RwLock::new(Limits::default()),
            limited: AtomicBool::new(false),
            released: Mutex::new(Vec::new()),
        }
    }

    /// Decides a request of `cost` by `id` at `now_ms` against the key's rate
    /// limit, and finds its credit meter (the caller spends the credits,
    /// once the rate limit has passed: `crate::sync::Keys::check_limits`).
    /// An unlimited key's answer takes no lock while no key is limited, and
    /// one read lock otherwise.
    #[inline]
    pub fn check_limits(&self, id: &KeyId, now_ms: i64, cost: u32) -> Checked {
        if !self.limited.load(Ordering::Acquire) {
            return Checked::default();
        }
        let limits = self.limits.read().unwrap_or_else(PoisonError::into_inner);
        let verdict = limits
            .limiter
            .check(id, keygate::UnixMillis::from_millis(now_ms), cost);
        Checked {
            rate: verdict.rate(),
            metered: limits.metered.get(id).copied(),
        }
    }

    /// The meters whose last key with credits went since the last call
    /// (each checked again now: a meter that has a key with credits again
    /// is left out), so their leases can be handed back.
    pub fn take_released(&self) -> Vec<KeyId> {
        let released =
            std::mem::take(&mut *self.released.lock().unwrap_or_else(PoisonError::into_inner));
        if released.is_empty() {
            return released;
        }
        let limits = self.limits.read().unwrap_or_else(PoisonError::into_inner);
        let mut gone: Vec<KeyId> = released
            .into_iter()
            .filter(|m| !limits.keys_of.contains_key(m))
            .collect();
        gone.sort_unstable_by(|a, b| a.as_str().cmp(b.as_str()));
        gone.dedup();
        gone
    }

    fn shard(&self, id: &KeyId) -> Option<&RwLock<Keyring>> {
        self.shards.get(shard_of(id))
    }

    fn read(lock: &RwLock<Keyring>) -> RwLockReadGuard<'_, Keyring> {
        lock.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(lock: &RwLock<Keyring>) -> RwLockWriteGuard<'_, Keyring> {
        lock.write().unwrap_or_else(PoisonError::into_inner)
    }

    /// Verifies a bearer token at `now_ms`.
    #[inline]
    pub fn authenticate(&self, token: &[u8], now_ms: i64) -> Result<Principal, AuthError> {
        // The shard of the bytes where the id would be; a text too short to
        // hold one fails in the keyring like any malformed token.
        let head = token.get(ID_AT..).unwrap_or_default();
        match self.shards.get(shard_of_head(head)) {
            Some(shard) => {
                Self::read(shard).authenticate(token, keygate::UnixMillis::from_millis(now_ms))
            }
            // Unreachable (the shard index is masked); fail closed.
            None => Err(AuthError::InvalidCredentials),
        }
    }

    /// Whether the key `id` is live in memory.
    pub fn contains(&self, id: &KeyId) -> bool {
        self.shard(id)
            .is_some_and(|shard| Self::read(shard).contains(id))
    }

    /// A copy of the pepper, to mint and roll keys this cache accepts.
    pub fn pepper(&self) -> Pepper {
        self.pepper.clone()
    }

    /// Applies changes of the log, each under its own shard's write lock.
    /// Returns how many changed the keyring. A change the keyring refuses
    /// is logged and skipped: one bad row must not stop the feed.
    pub fn apply(&self, changes: impl IntoIterator<Item = Change>) -> usize {
        let mut changed = 0;
        for change in changes {
            let (seq, id) = (change.seq, change.key_id());
            let Some(shard) = self.shard(&id) else {
                continue;
            };
            // What the limiter needs of it, taken before the keyring keeps it.
            let limits = match &change.op {
                ChangeOp::Upsert(r) => Some((r.meter(), r.limits())),
                ChangeOp::Revoke(_) => None,
            };
            match Self::write(shard).apply(change) {
                Ok(keygate::Applied::Changed) => {
                    changed += 1;
                    self.sync_limits(id, limits);
                }
                Ok(keygate::Applied::Unchanged) => {}
                Err(e) => tracing::error!(seq, key_id = %id, "cannot apply change: {e}"),
            }
        }
        changed
    }

    /// Takes an applied change's limits: an upsert's meter and limits, or a
    /// revocation (`None`). The limiter is charged with the rate limit
    /// only; a key with credits is noted with its meter and refill.
    /// Unlimited keys never take the write lock unless they were limited
    /// before.
    fn sync_limits(&self, id: KeyId, limits: Option<(Meter, KeyLimits)>) {
        let unlimited = limits.is_none_or(|(_, l)| l.is_unlimited());
        if unlimited && !self.limited.load(Ordering::Acquire) {
            return;
        }
        let mut all = self.limits.write().unwrap_or_else(PoisonError::into_inner);
        let metered = match limits {
            Some((meter, l)) => {
                let rate = KeyLimits {
                    rate: l.rate,
                    credits: None,
                };
                all.limiter.charge(id, meter, rate);
                if l.rate.is_some() {
                    all.rated.insert(id);
                } else {
                    all.rated.remove(&id);
                }
                l.credits.map(|c| Metered {
                    meter,
                    refill: c.refill(),
                })
            }
            None => {
                all.limiter.forget(&id);
                all.rated.remove(&id);
                None
            }
        };
        if let Some(meter) = all.meter(id, metered) {
            self.released
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(meter);
        }
        self.limited.store(!all.is_empty(), Ordering::Release);
    }

    /// The cost asked of each rate-limited meter since the last call
    /// ([`Limiter::take_demand`]), under the limiter's read lock.
    pub fn take_demand(&self, report: impl FnMut(KeyId, u64)) {
        self.limits
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .limiter
            .take_demand(report);
    }

    /// Every rate-limited meter and this instance's share of it.
    pub fn shares(&self) -> Vec<(KeyId, (u32, u32))> {
        self.limits
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .limiter
            .shares()
            .collect()
    }

    /// Sets this instance's share of each meter named ([`Limiter::set_share`],
    /// as of `now_ms`), [`SHARE_BATCH`] meters per write lock, so a check of
    /// a limited key waits at most for that many; and the share meters new
    /// here start with, if given. Meters not here are skipped.
    pub fn set_shares(
        &self,
        shares: &[(KeyId, (u32, u32))],
        default: Option<(u32, u32)>,
        now_ms: i64,
    ) {
        let now = keygate::UnixMillis::from_millis(now_ms);
        if let Some((num, den)) = default {
            self.limits
                .write()
                .unwrap_or_else(PoisonError::into_inner)
                .limiter
                .set_default_share(num, den);
        }
        for batch in shares.chunks(SHARE_BATCH) {
            let mut limits = self.limits.write().unwrap_or_else(PoisonError::into_inner);
            for (meter, (num, den)) in batch {
                limits.limiter.set_share(meter, *num, *den, now);
            }
        }
    }

    /// Drops the records expired by `now_ms`, one shard at a time, and
    /// the limits of those that had any (a metered key's meter, when it was
    /// the last, goes to [`KeyCache::take_released`]); returns how many.
    pub fn evict_expired(&self, now_ms: i64) -> usize {
        let evicted = self
            .shards
            .iter()
            .map(|shard| Self::write(shard).evict_expired(keygate::UnixMillis::from_millis(now_ms)))
            .sum();
        if evicted > 0 && self.limited.load(Ordering::Acquire) {
            let limited: Vec<KeyId> = {
                let all = self.limits.read().unwrap_or_else(PoisonError::into_inner);
                all.rated
                    .iter()
                    .chain(all.metered.keys())
                    .copied()
                    .collect()
            };
            for id in limited {
                let gone = self
                    .shard(&id)
                    .is_none_or(|shard| !Self::read(shard).contains(&id));
                if gone {
                    self.sync_limits(id, None);
                }
            }
        }
        evicted
    }

    /// The number of keys whose limits this cache holds (a rate limit,
    /// credits or both).
    #[cfg(test)]
    pub fn limited_keys(&self) -> usize {
        let all = self.limits.read().unwrap_or_else(PoisonError::into_inner);
        all.rated
            .union(&all.metered.keys().copied().collect())
            .count()
    }

    /// Forgets the tombstones and eviction marks at or below `horizon_seq`
    /// ([`Keyring::compact`]): the follower has applied the log through it,
    /// in order, and reads only after it. Returns how many were dropped.
    pub fn compact(&self, horizon_seq: u64) -> usize {
        let dropped = self
            .shards
            .iter()
            .map(|shard| Self::write(shard).compact(horizon_seq))
            .sum();
        // The rate limits of meters whose last key went, likewise: a late
        // change for one of their keys is refused now.
        self.limits
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .limiter
            .prune_meters();
        dropped
    }

    /// Tombstones and eviction marks held, over every shard.
    pub fn tombstones(&self) -> usize {
        self.shards
            .iter()
            .map(|shard| Self::read(shard).tombstones())
            .sum()
    }

    /// The number of live records.
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|shard| Self::read(shard).len())
            .sum()
    }
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]
mod tests {
    use super::*;
    use keygate::MintRequest;

    fn minted(pepper: &Pepper, expires: Option<i64>) -> (keygate::KeyRecord, String) {
        let expires = expires.map(keygate::UnixMillis::from_millis);
        let request =
            MintRequest::standard(None, expires, keygate::UnixMillis::from_millis(0)).unwrap();
        let (record, token) = keygate::mint(
            pepper,
            &request,
            &mut keygate::os_entropy(),
            keygate::UnixMillis::from_millis(0),
        )
        .into_parts();
        (record, token.expose_secret().to_owned())
    }

    #[test]
    fn shards_spread_keys_and_the_cache_acts_as_one_keyring() {
        let pepper = Pepper::from_bytes(&[3u8; 32]);
        let cache = KeyCache::new(pepper.clone(), 10);
        let keys: Vec<_> = (0..2_000)
            .map(|i| minted(&pepper, (i % 2 == 0).then_some(1_000)))
            .collect();
        let mut per_shard = [0usize; SHARDS];
        for (seq, (record, _)) in keys.iter().enumerate() {
            per_shard[shard_of(&record.id())] += 1;
            assert_eq!(
                cache.apply([Change::upsert(seq as u64 + 1, record.clone())]),
                1
            );
        }
        // 2 000 keys over 64 shards: about 31 each; none empty or lopsided.
        assert!(
            per_shard.iter().all(|&n| (8..=80).contains(&n)),
            "{per_shard:?}"
        );
        assert_eq!(cache.len(), 2_000);
        for (record, token) in &keys {
            let p = cache.authenticate(token.as_bytes(), 1).unwrap();
            assert_eq!(p.id(), record.id());
            assert!(p.can(keygate::Resource::Account, keygate::Access::Write));
        }
        // A revocation lands in the key's shard; a stale upsert can't undo it.
        let (victim, token) = &keys[1];
        assert_eq!(cache.apply([Change::revoke(5_000, victim.id())]), 1);
        assert_eq!(cache.apply([Change::upsert(5_001, victim.clone())]), 0);
        assert_eq!(
            cache.authenticate(token.as_bytes(), 1),
            Err(AuthError::InvalidCredentials)
        );
        // Malformed tokens fail before any lock.
        assert!(matches!(
            cache.authenticate(b"ak_nope", 1),
            Err(AuthError::Malformed(_))
        ));
        // Eviction walks every shard.
        assert_eq!(cache.evict_expired(1_000), 1_000);
        assert_eq!(cache.len(), 999);
        // The follower compacts what it has read past: the memory comes
        // back, and a late own write at or below the horizon stays refused.
        assert_eq!(cache.tombstones(), 1 + 1_000);
        assert_eq!(cache.compact(5_000), 1 + 1_000);
        assert_eq!(cache.tombstones(), 0);
        assert_eq!(cache.apply([Change::upsert(5_000, victim.clone())]), 0);
        assert_eq!(
            cache.authenticate(token.as_bytes(), 1),
            Err(AuthError::InvalidCredentials)
        );
        assert_eq!(cache.pepper().fingerprint(), pepper.fingerprint());
    }

    /// An expired key's limits go with it when it is evicted: its rate
    /// limit and credit meter are not kept for ever, and a meter that lost
    /// its last key is released (its credit lease goes back).
    #[test]
    fn eviction_drops_the_limits_of_expired_keys() {
        let pepper = Pepper::from_bytes(&[4u8; 32]);
        let cache = KeyCache::new(pepper.clone(), 10);
        let limits = KeyLimits {
            rate: Some(keygate::RateLimit::new(10, std::time::Duration::from_secs(1)).unwrap()),
            credits: Some(keygate::Credits::new(100, None).unwrap()),
        };
        let at = keygate::UnixMillis::from_millis;
        let mint = |expires: Option<i64>, limits: KeyLimits| {
            let request = MintRequest::standard(None, expires.map(at), at(0))
                .unwrap()
                .with_limits(limits);
            keygate::mint(&pepper, &request, &mut keygate::os_entropy(), at(0))
                .into_parts()
                .0
        };
        let dying = mint(Some(1_000), limits);
        let rated = mint(
            Some(1_000),
            KeyLimits {
                credits: None,
                ..limits
            },
        );
        let living = mint(None, limits);
        for (seq, r) in [&dying, &rated, &living].into_iter().enumerate() {
            assert_eq!(cache.apply([Change::upsert(seq as u64 + 1, r.clone())]), 1);
        }
        assert_eq!(cache.limited_keys(), 3);
        assert!(cache.check_limits(&dying.id(), 10, 1).rate.is_some());
        assert_eq!(cache.evict_expired(999), 0);
        assert_eq!(cache.limited_keys(), 3);
        assert_eq!(cache.evict_expired(1_000), 2);
        assert_eq!(cache.limited_keys(), 1);
        assert_eq!(
            cache.check_limits(&dying.id(), 1_001, 1),
            Checked::default()
        );
        assert_eq!(
            cache.check_limits(&rated.id(), 1_001, 1),
            Checked::default()
        );
        assert!(cache.check_limits(&living.id(), 1_001, 1).rate.is_some());
        assert_eq!(cache.take_released(), vec![dying.meter().id]);
    }
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]
mod metered_tests {
    use super::*;

    fn id(n: u8) -> KeyId {
        KeyId::parse(&format!("{n:0>16}")).unwrap()
    }

    fn metered(meter: u8) -> Option<Metered> {
        Some(Metered {
            meter: Meter {
                id: id(meter),
                since: keygate::UnixMillis::EPOCH,
            },
            refill: None,
        })
    }

    /// A meter is released when its last key with credits goes (revoked,
    /// its credits removed, or charged elsewhere), not before.
    #[test]
    fn a_meter_is_released_with_its_last_key() {
        let mut l = Limits::default();
        assert_eq!(l.meter(id(1), metered(9)), None);
        assert_eq!(l.meter(id(2), metered(9)), None);
        // The same meter again changes nothing.
        assert_eq!(l.meter(id(1), metered(9)), None);
        assert_eq!(l.keys_of.get(&id(9)), Some(&2));
        assert_eq!(l.meter(id(1), None), None);
        // Charged to another meter: the old one loses its last key.
        assert_eq!(l.meter(id(2), metered(8)), Some(id(9)));
        assert_eq!(l.meter(id(2), None), Some(id(8)));
        assert_eq!(l.meter(id(3), None), None);
        assert!(l.is_empty());
        assert!(l.keys_of.is_empty());
    }
}
