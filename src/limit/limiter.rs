//! [`Limiter`]: every limited key's state, beside the keyring.

use hashbrown::HashMap;

use crate::keyring::IdHasher;
use crate::limit::credits::{CreditBalance, CreditCell, CreditDecision, Credits, Refill};
use crate::limit::rate::{RateDecision, RateLimit, RateState};
use crate::limit::Refusal;
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

#[derive(Debug)]
struct Entry {
    created_at: UnixMillis,
    rate: Option<(RateLimit, RateState)>,
    refill: Option<Refill>,
    credits: Option<CreditCell>,
}

/// The rate-limit and credit state of every limited key.
///
/// Checks take `&self` and allocate nothing; [`Limiter::configure`] and
/// [`Limiter::remove`] take `&mut self`, as [`Keyring::apply`](crate::Keyring::apply)
/// does. A key with no entry is unlimited.
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
    entries: HashMap<KeyId, Entry, IdHasher>,
}

impl Limiter {
    /// An empty limiter: every key unlimited.
    pub fn new() -> Limiter {
        Limiter::default()
    }

    /// Sets `id`'s limits. A rate limit that is unchanged keeps its state;
    /// credits that are unchanged keep their balance. New credits start at
    /// their `remaining`. Unlimited removes the entry.
    pub fn configure(&mut self, id: KeyId, created_at: UnixMillis, limits: KeyLimits) {
        if limits.is_unlimited() {
            self.entries.remove(&id);
            return;
        }
        let old = self.entries.remove(&id);
        let (old_rate, old_credits) = match old {
            Some(e) => (e.rate, e.credits.map(|c| (e.refill, c))),
            None => (None, None),
        };
        let rate = limits.rate.map(|r| match old_rate {
            Some((old, state)) if old == r => (r, state),
            _ => (r, RateState::new()),
        });
        let refill = limits.credits.and_then(|c| c.refill());
        let credits = limits.credits.map(|c| match old_credits {
            // Same refill: the balance carries over (a PATCH of the same
            // credits must not hand out a fresh grant).
            Some((old_refill, cell)) if old_refill == refill => cell,
            _ => CreditCell::new(CreditBalance::new(c.remaining())),
        });
        self.entries.insert(
            id,
            Entry {
                created_at,
                rate,
                refill,
                credits,
            },
        );
    }

    /// Forgets `id` (revoked, evicted or unlimited). Returns whether it was limited.
    pub fn remove(&mut self, id: &KeyId) -> bool {
        self.entries.remove(id).is_some()
    }

    /// Whether `id` has a rate limit or credits here.
    pub fn is_limited(&self, id: &KeyId) -> bool {
        self.entries.contains_key(id)
    }

    /// The number of limited keys.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no key is limited.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Decides a request of `cost` by `id` at `now`: the rate limit first,
    /// then the credits. A refused request spends no credits; a request the
    /// credits refuse has passed the rate limit and counts toward it. A
    /// `cost` of 0 asks whether a request of 1 would pass and spends nothing.
    #[inline]
    pub fn check(&self, id: &KeyId, now: UnixMillis, cost: u32) -> Verdict {
        let Some(entry) = self.entries.get(id) else {
            return Verdict::UNLIMITED;
        };
        let rate = entry
            .rate
            .as_ref()
            .map(|(limit, state)| state.check(limit, now, cost));
        if rate.is_some_and(|r| !r.allowed()) {
            let credits = entry
                .credits
                .as_ref()
                .map(|c| c.spend(entry.refill.as_ref(), entry.created_at, now, 0));
            return Verdict { rate, credits };
        }
        let credits = entry.credits.as_ref().map(|c| {
            c.spend(
                entry.refill.as_ref(),
                entry.created_at,
                now,
                u64::from(cost),
            )
        });
        Verdict { rate, credits }
    }

    /// Adds `delta` to `id`'s credits as of `now` (clamped at 0); `None` if
    /// the key has no credits here.
    pub fn add_credits(&self, id: &KeyId, delta: i64, now: UnixMillis) -> Option<u64> {
        let e = self.entries.get(id)?;
        let cell = e.credits.as_ref()?;
        Some(cell.add(delta, e.refill.as_ref(), e.created_at, now))
    }

    /// Sets `id`'s credits as of `now`; `None` if the key has no credits here.
    pub fn set_credits(&self, id: &KeyId, remaining: u64, now: UnixMillis) -> Option<u64> {
        let e = self.entries.get(id)?;
        let cell = e.credits.as_ref()?;
        Some(cell.set(remaining, e.refill.as_ref(), e.created_at, now))
    }

    /// `id`'s balance as of `now`, refilled; `None` if it has no credits here.
    pub fn credits(&self, id: &KeyId, now: UnixMillis) -> Option<CreditBalance> {
        let e = self.entries.get(id)?;
        let cell = e.credits.as_ref()?;
        Some(cell.load().at(e.refill.as_ref(), e.created_at, now))
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
    const UNLIMITED: Verdict = Verdict {
        rate: None,
        credits: None,
    };

    /// Allowed, or why not: the rate limit is checked first.
    #[inline]
    pub fn result(&self) -> Result<(), Refusal> {
        if let Some(r) = self.rate.filter(|r| !r.allowed()) {
            return Err(Refusal::RateLimited {
                retry_after: r.retry_after(),
            });
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
        // A new rate limit starts fresh; the balance stays.
        l.configure(
            id(3),
            at(0),
            KeyLimits {
                rate: Some(RateLimit::new(2, Duration::from_secs(60)).unwrap()),
                ..limits
            },
        );
        assert!(l.check(&id(3), at(2), 1).result().is_ok());
        assert_eq!(l.add_credits(&id(3), -100, at(2)), Some(0));
        assert_eq!(l.set_credits(&id(3), 8, at(2)), Some(8));
        assert_eq!(l.add_credits(&id(4), 1, at(2)), None);
    }
}
