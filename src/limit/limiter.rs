//! [`Limiter`]: every limited key's state, beside the keyring.

use alloc::sync::Arc;
use alloc::vec::Vec;

use core::sync::atomic::{AtomicU64, Ordering};

use hashbrown::HashMap;

use crate::keyring::IdHasher;
use crate::limit::credits::{
    add_clamped, CreditBalance, CreditDecision, CreditState, Credits, Refill, MAX_CREDITS,
};
use crate::limit::rate::{RateDecision, RateLimit, RateState};
use crate::limit::{Meter, Refusal};
use crate::time::UnixMillis;
use crate::token::KeyId;

/// A key's limits: an optional rate limit and optional credits.
///
/// ```
/// let none = keygate::KeyLimits::default();
/// assert!(none.is_unlimited());
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct KeyLimits {
    /// Requests per period.
    pub rate: Option<RateLimit>,
    /// The initial balance and its refill.
    pub credits: Option<Credits>,
}

impl KeyLimits {
    /// Neither a rate limit nor credits.
    pub const fn is_unlimited(&self) -> bool {
        self.rate.is_none() && self.credits.is_none()
    }
}

/// One meter's configuration and state, shared by its keys.
#[derive(Debug)]
struct Entry {
    since: UnixMillis,
    rate: Option<(RateLimit, RateState)>,
    /// The cost asked of the rate limit since the last [`Limiter::take_demand`].
    demand: AtomicU64,
    config: Option<Credits>,
    refill: Option<Refill>,
    credits: Option<CreditState>,
}

impl Entry {
    /// A new entry for `limits`, carrying over `old`'s state: a rate limit
    /// keeps its theoretical arrival time (the same instant, in the new
    /// limit's ticks), so changing a limit or an instance's share of it
    /// hands out no fresh burst; the same credits keep their balance (a
    /// repeated configuration is no fresh grant).
    fn new(since: UnixMillis, limits: KeyLimits, old: Option<&Entry>) -> Entry {
        Entry::carried(since, limits, old, None)
    }

    /// [`Entry::new`]; with `now`, a rate limit also keeps no more tokens
    /// than it had at `now` (see [`carry`]).
    fn carried(
        since: UnixMillis,
        limits: KeyLimits,
        old: Option<&Entry>,
        now: Option<UnixMillis>,
    ) -> Entry {
        let rate = limits
            .rate
            .map(|r| match old.and_then(|o| o.rate.as_ref()) {
                Some((before, state)) => {
                    (r, RateState::from_tat(carry(state.tat(), before, &r, now)))
                }
                None => (r, RateState::new()),
            });
        let refill = limits.credits.and_then(|c| c.refill());
        let credits = limits.credits.map(|c| {
            let balance = match old {
                Some(o) if o.config == Some(c) => o
                    .credits
                    .as_ref()
                    .map(CreditState::load)
                    .unwrap_or_default(),
                _ => CreditBalance::new(c.remaining()),
            };
            CreditState::new(balance, refill.as_ref())
        });
        Entry {
            since,
            rate,
            demand: AtomicU64::new(old.map_or(0, |o| o.demand.load(Ordering::Relaxed))),
            config: limits.credits,
            refill,
            credits,
        }
    }
}

/// A theoretical arrival time in `from`'s ticks (`1/limit` ms), as the same
/// instant in `to`'s, rounded up (never earlier: no fresh burst).
fn rescale(tat: u64, from: &RateLimit, to: &RateLimit) -> u64 {
    let scaled = (u128::from(tat) * u128::from(to.limit())).div_ceil(u128::from(from.limit()));
    u64::try_from(scaled).unwrap_or(u64::MAX)
}

/// A theoretical arrival time carried from `from` to `to`: the same instant
/// ([`rescale`]); with `now`, also no earlier than keeps the tokens left at
/// `now` (the requests that would pass at once) from growing. Kept in time
/// alone, a higher limit over an idle state would hand out its whole new
/// burst at once; kept in tokens alone, a lower one would keep a burst its
/// window no longer holds. The later of the two keeps neither.
fn carry(tat: u64, from: &RateLimit, to: &RateLimit, now: Option<UnixMillis>) -> u64 {
    let in_time = rescale(tat, from, to);
    let Some(now) = now else {
        return in_time;
    };
    let ms = u128::try_from(now.as_millis()).unwrap_or(0);
    let period = u128::from(from.period_ms());
    // Ticks ahead of `now` in `from`'s ticks; the tokens left are
    // `(window - ahead) / period`, and `to` keeps as many when it is ahead by
    // `ahead + period * (to.limit - from.limit)` of its own ticks.
    let ahead = u128::from(tat).saturating_sub(ms * u128::from(from.limit()));
    let more = period * u128::from(to.limit());
    let less = period * u128::from(from.limit());
    let kept = (ahead + more).saturating_sub(less);
    let in_tokens = ms * u128::from(to.limit()) + kept;
    in_time.max(u64::try_from(in_tokens).unwrap_or(u64::MAX))
}

/// A meter: its entry and the keys charged to it.
#[derive(Debug)]
struct MeterSlot {
    entry: Arc<Entry>,
    keys: Vec<KeyId>,
    /// The limits as configured (before this instance's share).
    limits: KeyLimits,
    /// This instance's share of the rate limit, `num / den`.
    share: (u32, u32),
}

impl MeterSlot {
    /// The limits this instance enforces: the configured ones, the rate
    /// scaled to its share.
    fn effective(&self) -> KeyLimits {
        let (num, den) = self.share;
        KeyLimits {
            rate: self
                .limits
                .rate
                .map(|r| if num == den { r } else { r.share(num, den) }),
            credits: self.limits.credits,
        }
    }
}

/// The rate-limit and credit state of every limited key.
///
/// Checks take `&self` and allocate nothing; [`Limiter::apply`],
/// [`Limiter::configure`] and [`Limiter::forget`] take `&mut self`, as
/// [`Keyring::apply`](crate::Keyring::apply) does. Keys that share a
/// [`Meter`] (a rolled key and its successor; the keys a limited key
/// minted) share one state. A key with no entry is unlimited.
///
/// ```
/// use core::time::Duration;
/// use keygate::{KeyId, KeyLimits, Limiter, RateLimit, UnixMillis};
/// let id = KeyId::parse("4GZ6bQvR9cXw2LmT")?;
/// let mut limiter = Limiter::new();
/// let rate = RateLimit::new(1, Duration::from_secs(1))?;
/// limiter.configure(id, UnixMillis::EPOCH, KeyLimits { rate: Some(rate), credits: None });
/// let now = UnixMillis::from_millis(10_000);
/// assert!(limiter.check(&id, now, 1).result().is_ok());
/// let refused = limiter.check(&id, now, 1);
/// assert_eq!(refused.result().unwrap_err().retry_after(), Some(Duration::from_secs(1)));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Default)]
pub struct Limiter {
    /// Every limited key to its meter's entry: the hot path's one lookup.
    keys: HashMap<KeyId, Arc<Entry>, IdHasher>,
    /// Every meter to its entry and keys.
    meters: HashMap<KeyId, MeterSlot, IdHasher>,
    /// Every limited key to its meter.
    meter_of: HashMap<KeyId, KeyId, IdHasher>,
    /// The share a meter new here starts with ([`Limiter::set_default_share`];
    /// `(0, 0)` is the whole limit).
    default_share: (u32, u32),
}

/// A share as [`MeterSlot::share`] keeps it: a fraction below 1, or `(1, 1)`.
fn normal_share(num: u32, den: u32) -> (u32, u32) {
    if den == 0 || num >= den {
        (1, 1)
    } else {
        (num, den)
    }
}

impl Limiter {
    /// An empty limiter: every key unlimited.
    pub fn new() -> Limiter {
        Limiter::default()
    }

    /// Limits `id` as its own meter, created at `created_at`: what
    /// [`Limiter::apply`] does for a key that was neither rolled nor minted
    /// by a limited key.
    pub fn configure(&mut self, id: KeyId, created_at: UnixMillis, limits: KeyLimits) {
        self.charge(
            id,
            Meter {
                id,
                since: created_at,
            },
            limits,
        );
    }

    /// Charges `id` to `meter`, whose limits (for all its keys) become `limits`.
    pub fn charge(&mut self, id: KeyId, meter: Meter, limits: KeyLimits) {
        if self.meter_of.get(&id).is_some_and(|m| *m != meter.id) {
            self.forget(&id);
        }
        if limits.is_unlimited() {
            self.forget(&id);
            return;
        }
        let (num, den) = self.default_share;
        let slot = self.meters.entry(meter.id).or_insert_with(|| MeterSlot {
            entry: Arc::new(Entry::new(meter.since, limits, None)),
            keys: Vec::new(),
            limits,
            share: normal_share(num, den),
        });
        slot.limits = limits;
        let entry = Entry::new(meter.since, slot.effective(), Some(&slot.entry));
        slot.entry = Arc::new(entry);
        if !slot.keys.contains(&id) {
            slot.keys.push(id);
        }
        for key in &slot.keys {
            self.keys.insert(*key, Arc::clone(&slot.entry));
        }
        self.meter_of.insert(id, meter.id);
    }

    /// Sets this instance's share of `meter`'s rate limit to `num / den`
    /// (at most 1; at least one request per period), when several instances
    /// enforce one limit: each is given a share by its demand
    /// ([`Limiter::take_demand`]). The state carries over as of `now`: a
    /// lower share keeps the backlog in time (the requests that would pass
    /// at once shrink with it), a higher one keeps the requests that would
    /// pass at once (the rate rises, and the burst refills at it): a share
    /// never hands out a fresh burst. So when the shares of the instances
    /// add up to at most 1, so do their bursts. Returns whether the meter is
    /// here.
    ///
    /// ```
    /// use core::time::Duration;
    /// use keygate::{KeyId, KeyLimits, Limiter, RateLimit, UnixMillis};
    /// let id = KeyId::parse("4GZ6bQvR9cXw2LmT")?;
    /// let mut limiter = Limiter::new();
    /// let rate = RateLimit::new(200, Duration::from_secs(1))?;
    /// limiter.configure(id, UnixMillis::EPOCH, KeyLimits { rate: Some(rate), credits: None });
    /// assert!(limiter.set_share(&id, 1, 10, UnixMillis::EPOCH));
    /// assert!(limiter.set_share(&id, 7, 10, UnixMillis::EPOCH));
    /// let verdict = limiter.check(&id, UnixMillis::EPOCH, 1);
    /// assert_eq!(verdict.rate().map(|r| r.limit()), Some(140));
    /// // The burst is the 20 of the tenth, not 140.
    /// assert_eq!(verdict.rate().map(|r| r.remaining()), Some(19));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn set_share(&mut self, meter: &KeyId, num: u32, den: u32, now: UnixMillis) -> bool {
        let Some(slot) = self.meters.get_mut(meter) else {
            return false;
        };
        let share = normal_share(num, den);
        if slot.share == share {
            return true;
        }
        slot.share = share;
        let since = slot.entry.since;
        let entry = Entry::carried(since, slot.effective(), Some(&slot.entry), Some(now));
        slot.entry = Arc::new(entry);
        for key in &slot.keys {
            self.keys.insert(*key, Arc::clone(&slot.entry));
        }
        true
    }

    /// Sets the share that meters new here start with ([`Limiter::set_share`]
    /// sets it later): `1 / n` when `n` instances split every limit, so that
    /// a key none of them has seen used yet has its burst split too. Meters
    /// already here keep theirs. The default is the whole limit.
    ///
    /// ```
    /// use core::time::Duration;
    /// use keygate::{KeyId, KeyLimits, Limiter, RateLimit, UnixMillis};
    /// let id = KeyId::parse("4GZ6bQvR9cXw2LmT")?;
    /// let mut limiter = Limiter::new();
    /// limiter.set_default_share(1, 4);
    /// let rate = RateLimit::new(200, Duration::from_secs(1))?;
    /// limiter.configure(id, UnixMillis::EPOCH, KeyLimits { rate: Some(rate), credits: None });
    /// assert_eq!(limiter.shares().collect::<Vec<_>>(), [(id, (1, 4))]);
    /// assert_eq!(limiter.check(&id, UnixMillis::EPOCH, 1).rate().map(|r| r.limit()), Some(50));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn set_default_share(&mut self, num: u32, den: u32) {
        self.default_share = normal_share(num, den);
    }

    /// Every meter with a rate limit here, and this instance's share of it
    /// (`(1, 1)`: the whole limit).
    pub fn shares(&self) -> impl Iterator<Item = (KeyId, (u32, u32))> + '_ {
        self.meters
            .iter()
            .filter(|(_, slot)| slot.limits.rate.is_some())
            .map(|(meter, slot)| (*meter, slot.share))
    }

    /// Forgets `id` (revoked, evicted or unlimited); its meter's state stays
    /// while another key is charged to it. Returns whether it was limited.
    pub fn forget(&mut self, id: &KeyId) -> bool {
        let Some(meter) = self.meter_of.remove(id) else {
            return false;
        };
        self.keys.remove(id);
        if let Some(slot) = self.meters.get_mut(&meter) {
            // A meter outlives its last key: a change feed may deliver a
            // revocation before the upsert of the key that shares the meter
            // (a roll's successor), which must find the meter's state, not
            // a fresh one. `prune_meters` drops the empty ones.
            slot.keys.retain(|k| k != id);
        }
        true
    }

    /// Drops the state of meters no key is charged to any more, and returns
    /// how many. Call it where the keyring's own history is compacted
    /// ([`Keyring::compact`](crate::Keyring::compact)): after it, a late
    /// change for a key of such a meter starts it afresh.
    ///
    /// ```
    /// use core::time::Duration;
    /// use keygate::{KeyId, KeyLimits, Limiter, RateLimit, UnixMillis};
    /// let id = KeyId::parse("4GZ6bQvR9cXw2LmT")?;
    /// let mut limiter = Limiter::new();
    /// let rate = RateLimit::new(1, Duration::from_secs(60))?;
    /// limiter.configure(id, UnixMillis::EPOCH, KeyLimits { rate: Some(rate), credits: None });
    /// limiter.forget(&id);
    /// assert_eq!(limiter.prune_meters(), 1);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn prune_meters(&mut self) -> usize {
        let before = self.meters.len();
        self.meters.retain(|_, slot| !slot.keys.is_empty());
        before - self.meters.len()
    }

    /// Whether `id` has a rate limit or credits here.
    pub fn is_limited(&self, id: &KeyId) -> bool {
        self.keys.contains_key(id)
    }

    /// The number of limited keys.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether no key is limited.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Decides a request of `cost` by `id` at `now`: the rate limit first,
    /// then the credits. A refused request spends no credits; a request the
    /// credits refuse has passed the rate limit and counts toward it. A
    /// `cost` of 0 asks whether a request of 1 would pass and spends nothing.
    #[inline]
    pub fn check(&self, id: &KeyId, now: UnixMillis, cost: u32) -> Verdict {
        self.check_with(id, now, || cost)
    }

    /// [`Limiter::check`] with the cost computed only for a limited key
    /// (a route table's lookup, say): one map lookup either way.
    ///
    /// ```
    /// let limiter = keygate::Limiter::new();
    /// let id = keygate::KeyId::parse("4GZ6bQvR9cXw2LmT")?;
    /// let verdict = limiter.check_with(&id, keygate::UnixMillis::EPOCH, || unreachable!());
    /// assert!(verdict.is_unlimited());
    /// # Ok::<(), keygate::TokenError>(())
    /// ```
    #[inline]
    pub fn check_with(&self, id: &KeyId, now: UnixMillis, cost: impl FnOnce() -> u32) -> Verdict {
        let Some(entry) = self.keys.get(id) else {
            return Verdict::UNLIMITED;
        };
        let cost = cost();
        let rate = entry.rate.as_ref().map(|(limit, state)| {
            entry.demand.fetch_add(u64::from(cost), Ordering::Relaxed);
            state.check(limit, now, cost)
        });
        let spend = if rate.is_some_and(|r| !r.allowed()) {
            0
        } else {
            u64::from(cost)
        };
        let credits = entry
            .credits
            .as_ref()
            .map(|c| c.spend(entry.refill.as_ref(), entry.since, now, spend));
        Verdict { rate, credits }
    }

    /// The cost each rate-limited meter was asked since the last call,
    /// reset to 0: what an instance reports when several share a limit
    /// (each is given a share of it by demand, [`RateLimit::share`]).
    ///
    /// ```
    /// use core::time::Duration;
    /// use keygate::{KeyId, KeyLimits, Limiter, RateLimit, UnixMillis};
    /// let id = KeyId::parse("4GZ6bQvR9cXw2LmT")?;
    /// let mut limiter = Limiter::new();
    /// let rate = RateLimit::new(10, Duration::from_secs(1))?;
    /// limiter.configure(id, UnixMillis::EPOCH, KeyLimits { rate: Some(rate), credits: None });
    /// for _ in 0..15 {
    ///     limiter.check(&id, UnixMillis::EPOCH, 1);
    /// }
    /// let mut seen = Vec::new();
    /// limiter.take_demand(|meter, cost| seen.push((meter, cost)));
    /// assert_eq!(seen, [(id, 15)]);
    /// limiter.take_demand(|_, _| panic!("nothing since"));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn take_demand(&self, mut report: impl FnMut(KeyId, u64)) {
        for (meter, slot) in &self.meters {
            let asked = slot.entry.demand.swap(0, Ordering::Relaxed);
            if asked > 0 {
                report(*meter, asked);
            }
        }
    }

    /// Adds `delta` to the credits `id` is charged to, as of `now` (clamped
    /// at 0); `None` if it has no credits here.
    pub fn add_credits(&self, id: &KeyId, delta: i64, now: UnixMillis) -> Option<u64> {
        let e = self.keys.get(id)?;
        let cell = e.credits.as_ref()?;
        Some(cell.update(e.refill.as_ref(), e.since, now, |r| add_clamped(r, delta)))
    }

    /// Sets the credits `id` is charged to, as of `now`; `None` if it has
    /// no credits here.
    pub fn set_credits(&self, id: &KeyId, remaining: u64, now: UnixMillis) -> Option<u64> {
        let e = self.keys.get(id)?;
        let cell = e.credits.as_ref()?;
        let remaining = remaining.min(MAX_CREDITS);
        Some(cell.update(e.refill.as_ref(), e.since, now, |_| remaining))
    }

    /// The balance `id` is charged to, as of `now`, refilled; `None` if it
    /// has no credits here.
    pub fn credits(&self, id: &KeyId, now: UnixMillis) -> Option<CreditBalance> {
        let e = self.keys.get(id)?;
        let cell = e.credits.as_ref()?;
        Some(cell.load().at(e.refill.as_ref(), e.since, now))
    }
}

/// The answer of [`Limiter::check`]: each limit's decision, for the answer's
/// header fields, and [`Verdict::result`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Verdict {
    rate: Option<RateDecision>,
    credits: Option<CreditDecision>,
}

impl Verdict {
    /// The verdict for a key with no limits: allowed, nothing to report.
    ///
    /// ```
    /// assert!(keygate::Verdict::UNLIMITED.result().is_ok());
    /// ```
    pub const UNLIMITED: Verdict = Verdict {
        rate: None,
        credits: None,
    };

    /// A verdict of decisions made elsewhere: say, the rate limit by a
    /// [`Limiter`] and the credits by a store shared by several instances
    /// ([`CreditDecision::new`]), so that [`Verdict::result`] and the
    /// answers built from the verdict are the same as the [`Limiter`]'s. As
    /// in [`Limiter::check`], a caller should spend credits only once the
    /// rate limit has passed.
    ///
    /// ```
    /// use core::time::Duration;
    /// use keygate::{CreditDecision, Refusal, Verdict};
    /// let credits = CreditDecision::new(false, 0, Some(Duration::from_secs(1)));
    /// let verdict = Verdict::new(None, Some(credits));
    /// assert_eq!(
    ///     verdict.result(),
    ///     Err(Refusal::CreditsExhausted { retry_after: Some(Duration::from_secs(1)) })
    /// );
    /// assert_eq!(verdict.credits().map(|c| c.remaining()), Some(0));
    /// assert!(Verdict::new(None, None).is_unlimited());
    /// ```
    pub const fn new(rate: Option<RateDecision>, credits: Option<CreditDecision>) -> Verdict {
        Verdict { rate, credits }
    }

    /// Allowed, or why not: the rate limit is checked first.
    #[inline]
    pub fn result(&self) -> Result<(), Refusal> {
        if let Some(r) = self.rate.filter(|r| !r.allowed()) {
            // Waiting out the rate limit helps only if the credits will
            // cover the request then: not when they are spent for good, and
            // not before their next refill.
            let retry_after = match self.credits.filter(|c| !c.allowed()) {
                Some(c) => r
                    .retry_after()
                    .zip(c.retry_after())
                    .map(|(rate, credits)| rate.max(credits)),
                None => r.retry_after(),
            };
            return Err(Refusal::RateLimited { retry_after });
        }
        if let Some(c) = self.credits.filter(|c| !c.allowed()) {
            return Err(Refusal::CreditsExhausted {
                retry_after: c.retry_after(),
            });
        }
        Ok(())
    }

    /// The rate limit's decision, if the key has one.
    pub const fn rate(&self) -> Option<RateDecision> {
        self.rate
    }

    /// The credits' decision, if the key has credits. After a rate-limit
    /// refusal it reports the balance, untouched.
    pub const fn credits(&self) -> Option<CreditDecision> {
        self.credits
    }

    /// Neither limit applies to the key.
    pub const fn is_unlimited(&self) -> bool {
        self.rate.is_none() && self.credits.is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::time::Duration;

    fn id(n: u8) -> KeyId {
        let mut s = [b'0'; 16];
        s[15] = b'0' + n;
        KeyId::parse(core::str::from_utf8(&s).unwrap()).unwrap()
    }

    fn at(ms: i64) -> UnixMillis {
        UnixMillis::from_millis(ms)
    }

    #[test]
    fn a_rate_limited_request_spends_no_credits() {
        let mut l = Limiter::new();
        l.configure(
            id(1),
            at(0),
            KeyLimits {
                rate: Some(RateLimit::new(1, Duration::from_secs(1)).unwrap()),
                credits: Some(Credits::new(10, None).unwrap()),
            },
        );
        assert!(l.check(&id(1), at(0), 1).result().is_ok());
        let v = l.check(&id(1), at(0), 1);
        assert!(matches!(v.result(), Err(Refusal::RateLimited { .. })));
        assert_eq!(v.credits().map(|c| c.remaining()), Some(9));
        assert_eq!(l.credits(&id(1), at(0)).map(|b| b.remaining), Some(9));
    }

    #[test]
    fn unlimited_keys_have_no_entry() {
        let mut l = Limiter::new();
        assert!(l.check(&id(2), at(0), 1_000).is_unlimited());
        l.configure(
            id(2),
            at(0),
            KeyLimits {
                rate: None,
                credits: Some(Credits::new(1, None).unwrap()),
            },
        );
        assert!(l.is_limited(&id(2)));
        l.configure(id(2), at(0), KeyLimits::default());
        assert!(!l.is_limited(&id(2)));
        assert!(l.is_empty());
    }

    #[test]
    fn new_credits_replace_the_balance_and_the_same_keep_it() {
        let mut l = Limiter::new();
        let credits = |n| KeyLimits {
            rate: None,
            credits: Some(Credits::new(n, None).unwrap()),
        };
        l.configure(id(5), at(0), credits(5));
        assert!(l.check(&id(5), at(0), 2).result().is_ok());
        l.configure(id(5), at(0), credits(5));
        assert_eq!(l.credits(&id(5), at(0)).map(|b| b.remaining), Some(3));
        l.configure(id(5), at(0), credits(10));
        assert_eq!(l.credits(&id(5), at(0)).map(|b| b.remaining), Some(10));
        // A key that had a rate limit only starts its new credits in full.
        let rate = Some(RateLimit::new(1, Duration::from_secs(1)).unwrap());
        l.configure(
            id(6),
            at(0),
            KeyLimits {
                rate,
                credits: None,
            },
        );
        l.configure(
            id(6),
            at(0),
            KeyLimits {
                rate,
                credits: Some(Credits::new(4, None).unwrap()),
            },
        );
        assert_eq!(l.credits(&id(6), at(0)).map(|b| b.remaining), Some(4));
    }

    #[test]
    fn meters_follow_their_keys_and_empty_ones_are_pruned() {
        let rate = KeyLimits {
            rate: Some(RateLimit::new(10, Duration::from_secs(1)).unwrap()),
            credits: None,
        };
        let meter = |n| Meter {
            id: id(n),
            since: at(0),
        };
        let mut l = Limiter::new();
        l.configure(id(1), at(0), rate);
        l.charge(id(2), meter(1), rate);
        l.configure(id(3), at(0), rate);
        assert_eq!(l.len(), 3);
        // Key 2 moves to a meter of its own, and leaves key 1's.
        l.charge(id(2), meter(2), rate);
        assert_eq!(l.len(), 3);
        assert_eq!(l.prune_meters(), 0);
        assert!(l.forget(&id(1)));
        assert!(!l.forget(&id(1)));
        assert!(l.forget(&id(3)));
        assert_eq!(l.len(), 1);
        // Meters 1 and 3 have no key left; meter 2 keeps its own.
        assert_eq!(l.prune_meters(), 2);
        assert_eq!(l.prune_meters(), 0);
        assert_eq!(l.shares().collect::<Vec<_>>(), [(id(2), (1, 1))]);
    }

    #[test]
    fn a_default_share_applies_to_meters_new_here() {
        let rate = KeyLimits {
            rate: Some(RateLimit::new(100, Duration::from_secs(1)).unwrap()),
            credits: None,
        };
        let mut l = Limiter::new();
        l.configure(id(1), at(0), rate);
        l.set_default_share(1, 4);
        l.configure(id(2), at(0), rate);
        let limit = |l: &Limiter, n| l.check(&id(n), at(0), 1).rate().map(|r| r.limit());
        assert_eq!(limit(&l, 1), Some(100));
        assert_eq!(limit(&l, 2), Some(25));
        let mut shares = l.shares().collect::<Vec<_>>();
        shares.sort();
        assert_eq!(shares, [(id(1), (1, 1)), (id(2), (1, 4))]);
    }

    #[test]
    fn demand_is_the_cost_each_meter_was_asked_since_last_taken() {
        let rate = KeyLimits {
            rate: Some(RateLimit::new(2, Duration::from_secs(1)).unwrap()),
            credits: None,
        };
        let mut l = Limiter::new();
        l.configure(id(1), at(0), rate);
        l.configure(id(2), at(0), rate);
        assert!(!l.is_empty());
        // Refused requests count too: demand is what was asked.
        for cost in [1, 3, 2] {
            assert!(!l.check(&id(1), at(0), cost).is_unlimited());
        }
        let mut seen = Vec::new();
        l.take_demand(|meter, cost| seen.push((meter, cost)));
        assert_eq!(seen, [(id(1), 6)]);
        seen.clear();
        l.take_demand(|meter, cost| seen.push((meter, cost)));
        assert!(seen.is_empty(), "{seen:?}");
    }

    #[test]
    fn reconfiguring_the_same_limits_keeps_the_state() {
        let mut l = Limiter::new();
        let limits = KeyLimits {
            rate: Some(RateLimit::new(1, Duration::from_secs(60)).unwrap()),
            credits: Some(Credits::new(5, None).unwrap()),
        };
        l.configure(id(3), at(0), limits);
        assert!(l.check(&id(3), at(0), 1).result().is_ok());
        l.configure(id(3), at(0), limits);
        assert!(l.check(&id(3), at(1), 1).result().is_err());
        assert_eq!(l.credits(&id(3), at(1)).map(|b| b.remaining), Some(4));
        // A new rate limit keeps the backlog (a minute ahead, now 30 s a
        // request: the next passes after 30 s); the balance stays.
        l.configure(
            id(3),
            at(0),
            KeyLimits {
                rate: Some(RateLimit::new(2, Duration::from_secs(60)).unwrap()),
                ..limits
            },
        );
        assert!(l.check(&id(3), at(29_999), 1).result().is_err());
        assert!(l.check(&id(3), at(30_000), 1).result().is_ok());
        assert_eq!(l.credits(&id(3), at(2)).map(|b| b.remaining), Some(3));
        assert_eq!(l.add_credits(&id(3), -100, at(2)), Some(0));
        assert_eq!(l.set_credits(&id(3), 8, at(2)), Some(8));
        assert_eq!(l.add_credits(&id(4), 1, at(2)), None);
    }
}

#[cfg(test)]
mod rescale_tests {
    use super::*;
    use core::time::Duration;

    /// Changing a limit (or an instance's share of it) keeps the backlog in
    /// time: no fresh burst, and no lost one.
    #[test]
    fn a_new_limit_keeps_the_backlog_in_time() {
        let id = KeyId::parse("0000000000000009").unwrap();
        let mut l = Limiter::new();
        let at = |ms| UnixMillis::from_millis(ms);
        let limits = |n| KeyLimits {
            rate: Some(RateLimit::new(n, Duration::from_secs(1)).unwrap()),
            credits: None,
        };
        l.configure(id, at(0), limits(10));
        for _ in 0..10 {
            assert!(l.check(&id, at(5_000), 1).result().is_ok());
        }
        assert!(l.check(&id, at(5_000), 1).result().is_err());
        // Halved: the key stays a second ahead (until 6 000 ms); a request
        // now costs 200 ms, so the next passes once 200 ms have drained.
        l.configure(id, at(0), limits(5));
        assert!(l.check(&id, at(5_000), 1).result().is_err());
        assert!(l.check(&id, at(5_199), 1).result().is_err());
        assert!(l.check(&id, at(5_200), 1).result().is_ok());
        // Doubled: still a second ahead (until 6 200 ms); 50 ms a request.
        l.configure(id, at(0), limits(20));
        assert!(l.check(&id, at(5_249), 1).result().is_err());
        assert!(l.check(&id, at(5_250), 1).result().is_ok());
        assert!(l.check(&id, at(5_250), 1).result().is_err());
    }
}

#[cfg(test)]
mod share_tests {
    use super::*;
    use core::time::Duration;

    fn at(ms: i64) -> UnixMillis {
        UnixMillis::from_millis(ms)
    }

    fn limited(id: KeyId, limit: u32) -> Limiter {
        let mut l = Limiter::new();
        l.configure(
            id,
            at(0),
            KeyLimits {
                rate: Some(RateLimit::new(limit, Duration::from_secs(1)).unwrap()),
                credits: None,
            },
        );
        l
    }

    fn passes(l: &Limiter, id: &KeyId, now: i64, tries: u32) -> u32 {
        (0..tries)
            .filter(|_| l.check(id, at(now), 1).result().is_ok())
            .count() as u32
    }

    /// A higher share over an idle state keeps the tokens it had (no fresh
    /// burst); a lower one keeps the backlog in time.
    #[test]
    fn a_share_never_hands_out_a_fresh_burst() {
        let id = KeyId::parse("000000000000000s").unwrap();
        let mut l = limited(id, 100);
        assert!(l.set_share(&id, 1, 10, at(10_000)));
        // Idle at a tenth: 10 tokens. Raised to nine tenths: still 10 now,
        // and the rate is 90/s from here.
        assert!(l.set_share(&id, 9, 10, at(10_000)));
        assert_eq!(passes(&l, &id, 10_000, 100), 10);
        assert_eq!(passes(&l, &id, 10_100, 100), 9);
        // Saturated, lowered to a half: a full window behind stays a full
        // window behind; 50/s from here.
        assert!(l.set_share(&id, 1, 2, at(10_100)));
        assert_eq!(passes(&l, &id, 10_100, 100), 0);
        assert_eq!(passes(&l, &id, 10_120, 100), 1);
        // Unknown meters are not here; the same share changes nothing.
        assert!(!l.set_share(&KeyId::parse("000000000000000t").unwrap(), 1, 2, at(0)));
        assert!(l.set_share(&id, 1, 2, at(10_120)));
        assert_eq!(l.shares().collect::<Vec<_>>(), [(id, (1, 2))]);
        assert!(l.set_share(&id, 5, 4, at(10_120)));
        assert_eq!(l.shares().collect::<Vec<_>>(), [(id, (1, 1))]);
    }

    /// Three instances whose shares of one limit move around every 200 ms
    /// (adding up to at most 1 at every step) allow together at most the
    /// limit's rate over the time, plus one burst.
    #[test]
    fn moving_shares_that_add_up_to_one_allow_one_limit() {
        let id = KeyId::parse("000000000000000u").unwrap();
        const LIMIT: u32 = 200;
        let mut instances: [Limiter; 3] = core::array::from_fn(|_| limited(id, LIMIT));
        for l in &mut instances {
            l.set_share(&id, 1, 3, at(0));
        }
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        let mut allowed = 0u64;
        const END_MS: i64 = 20_000;
        for tick in 0..END_MS / 200 {
            // New shares: random weights, parts of 65 536 rounded down.
            let w: [u64; 3] = core::array::from_fn(|_| 1 + next(100));
            let total: u64 = w.iter().sum();
            for (l, wi) in instances.iter_mut().zip(w) {
                let num = u32::try_from(wi * 65_536 / total).unwrap();
                l.set_share(&id, num, 65_536, at(tick * 200));
            }
            // Bursty demand within the tick: each instance, every 10 ms,
            // asks 0 to 40 requests.
            for ms in (0..200).step_by(10) {
                for l in &instances {
                    let tries = u32::try_from(next(41)).unwrap();
                    allowed += u64::from(passes(l, &id, tick * 200 + ms, tries));
                }
            }
        }
        let bound = u64::from(LIMIT) * (END_MS as u64) / 1_000 + u64::from(LIMIT);
        assert!(allowed <= bound, "{allowed} > {bound}");
        // And the shares are used: most of the limit passes.
        assert!(allowed * 10 >= bound * 8, "{allowed} of {bound}");
    }
}
