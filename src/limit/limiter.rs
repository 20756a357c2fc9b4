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
        let rate = limits
            .rate
            .map(|r| match old.and_then(|o| o.rate.as_ref()) {
                Some((before, state)) => (r, RateState::from_tat(rescale(state.tat(), before, &r))),
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
        let slot = self.meters.entry(meter.id).or_insert_with(|| MeterSlot {
            entry: Arc::new(Entry::new(meter.since, limits, None)),
            keys: Vec::new(),
            limits,
            share: (1, 1),
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
    /// ([`Limiter::take_demand`]). The state carries over. Returns whether
    /// the meter is here.
    ///
    /// ```
    /// use core::time::Duration;
    /// use keygate::{KeyId, KeyLimits, Limiter, RateLimit, UnixMillis};
    /// let id = KeyId::parse("4GZ6bQvR9cXw2LmT")?;
    /// let mut limiter = Limiter::new();
    /// let rate = RateLimit::new(200, Duration::from_secs(1))?;
    /// limiter.configure(id, UnixMillis::EPOCH, KeyLimits { rate: Some(rate), credits: None });
    /// assert!(limiter.set_share(&id, 7, 10));
    /// let verdict = limiter.check(&id, UnixMillis::EPOCH, 1);
    /// assert_eq!(verdict.rate().map(|r| r.limit()), Some(140));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn set_share(&mut self, meter: &KeyId, num: u32, den: u32) -> bool {
        let Some(slot) = self.meters.get_mut(meter) else {
            return false;
        };
        let share = if den == 0 || num >= den {
            (1, 1)
        } else {
            (num, den)
        };
        if slot.share == share {
            return true;
        }
        slot.share = share;
        let since = slot.entry.since;
        slot.entry = Arc::new(Entry::new(since, slot.effective(), Some(&slot.entry)));
        for key in &slot.keys {
            self.keys.insert(*key, Arc::clone(&slot.entry));
        }
        true
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
        let Some(entry) = self.keys.get(id) else {
            return Verdict::UNLIMITED;
        };
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
