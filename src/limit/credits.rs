//! Usage credits: a balance that requests spend, optionally set back to a
//! fixed amount at each interval boundary counted from the key's creation.

use core::time::Duration;

use portable_atomic::{AtomicU128, Ordering};
use serde::{Deserialize, Serialize};

use crate::limit::LimitError;
use crate::time::UnixMillis;

/// The largest balance, refill amount or adjustment: 2^53 − 1, the largest
/// integer a JSON number carries exactly.
pub const MAX_CREDITS: u64 = (1 << 53) - 1;

/// The shortest refill interval: one second.
pub const MIN_REFILL_INTERVAL: Duration = Duration::from_secs(1);

/// Sets the balance back to `amount` at each `interval` boundary, counted
/// from the key's creation.
///
/// ```
/// use core::time::Duration;
/// let monthly = keygate::Refill::new(5_000, Duration::from_secs(30 * 86_400))?;
/// assert_eq!(monthly.amount(), 5_000);
/// assert!(keygate::Refill::new(5_000, Duration::from_millis(999)).is_err());
/// # Ok::<(), keygate::LimitError>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "RefillFields")]
pub struct Refill {
    amount: u64,
    interval_ms: u64,
}

/// `{"amount": 5000, "interval_ms": 2592000000}`, checked by [`Refill::new`].
#[derive(Deserialize)]
#[serde(remote = "Self", deny_unknown_fields)]
struct RefillFields {
    amount: i128,
    interval_ms: i128,
}

crate::object::object_deserialize!(RefillFields);

impl TryFrom<RefillFields> for Refill {
    type Error = LimitError;
    fn try_from(f: RefillFields) -> Result<Refill, LimitError> {
        let amount = u64::try_from(f.amount).map_err(|_| LimitError::RefillAmount(f.amount))?;
        let interval_ms =
            u64::try_from(f.interval_ms).map_err(|_| LimitError::RefillInterval(f.interval_ms))?;
        Refill::new(amount, Duration::from_millis(interval_ms))
    }
}

impl Refill {
    /// A refill of `amount` (at most [`MAX_CREDITS`]) every `interval` (whole
    /// milliseconds, at least [`MIN_REFILL_INTERVAL`]).
    pub fn new(amount: u64, interval: Duration) -> Result<Refill, LimitError> {
        if amount > MAX_CREDITS {
            return Err(LimitError::RefillAmount(i128::from(amount)));
        }
        let whole_ms = interval.subsec_nanos() % 1_000_000 == 0;
        let interval_ms = u64::try_from(interval.as_millis())
            .ok()
            .filter(|ms| whole_ms && *ms < i64::MAX as u64)
            .ok_or(LimitError::RefillInterval(ms_of(interval)))?;
        if interval < MIN_REFILL_INTERVAL {
            return Err(LimitError::RefillInterval(ms_of(interval)));
        }
        Ok(Refill {
            amount,
            interval_ms,
        })
    }

    /// The balance after each refill.
    pub const fn amount(&self) -> u64 {
        self.amount
    }

    /// The interval between refills.
    pub const fn interval(&self) -> Duration {
        Duration::from_millis(self.interval_ms)
    }

    /// The interval in milliseconds.
    pub const fn interval_ms(&self) -> u64 {
        self.interval_ms
    }

    /// The number of whole intervals from `created_at` to `now` (0 before it).
    pub fn period_at(&self, created_at: UnixMillis, now: UnixMillis) -> u64 {
        let since = i128::from(now.as_millis()) - i128::from(created_at.as_millis());
        u64::try_from(since / i128::from(self.interval_ms)).unwrap_or(0)
    }

    /// The instant period `period + 1` starts: the next refill.
    pub fn next_refill(&self, created_at: UnixMillis, period: u64) -> UnixMillis {
        let ms = i128::from(created_at.as_millis())
            + i128::from(period.saturating_add(1)) * i128::from(self.interval_ms);
        UnixMillis::from_millis(i64::try_from(ms).unwrap_or(i64::MAX))
    }
}

/// A duration's whole milliseconds, for an error message.
fn ms_of(d: Duration) -> i128 {
    i128::try_from(d.as_millis()).unwrap_or(i128::MAX)
}

/// A key's credit configuration: the initial balance and the refill.
///
/// ```
/// let credits = keygate::Credits::new(5_000, None)?;
/// assert_eq!(credits.remaining(), 5_000);
/// assert!(keygate::Credits::new(keygate::MAX_CREDITS + 1, None).is_err());
/// # Ok::<(), keygate::LimitError>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "CreditsFields")]
pub struct Credits {
    remaining: u64,
    refill: Option<Refill>,
}

/// `{"remaining": 5000, "refill": {…} | null}` (`refill` may be omitted),
/// checked by [`Credits::new`].
#[derive(Deserialize)]
#[serde(remote = "Self", deny_unknown_fields)]
struct CreditsFields {
    remaining: i128,
    #[serde(default)]
    refill: Option<Refill>,
}

crate::object::object_deserialize!(CreditsFields);

impl TryFrom<CreditsFields> for Credits {
    type Error = LimitError;
    fn try_from(f: CreditsFields) -> Result<Credits, LimitError> {
        let remaining =
            u64::try_from(f.remaining).map_err(|_| LimitError::Remaining(f.remaining))?;
        Credits::new(remaining, f.refill)
    }
}

impl Credits {
    /// A balance of `remaining` (at most [`MAX_CREDITS`]), with an optional refill.
    pub fn new(remaining: u64, refill: Option<Refill>) -> Result<Credits, LimitError> {
        if remaining > MAX_CREDITS {
            return Err(LimitError::Remaining(i128::from(remaining)));
        }
        Ok(Credits { remaining, refill })
    }

    /// The balance the key starts with.
    pub const fn remaining(&self) -> u64 {
        self.remaining
    }

    /// The refill, if any.
    pub const fn refill(&self) -> Option<Refill> {
        self.refill
    }
}

/// A balance at one moment: the credits left and the refill period they
/// belong to. Pure arithmetic: stores and [`CreditCell`] both use it.
///
/// ```
/// use core::time::Duration;
/// use keygate::{CreditBalance, Refill, UnixMillis};
/// let refill = Refill::new(10, Duration::from_secs(60))?;
/// let created = UnixMillis::from_millis(0);
/// let mut balance = CreditBalance::new(3);
/// assert!(balance.spend(Some(&refill), created, UnixMillis::from_millis(1_000), 3).allowed());
/// assert!(!balance.spend(Some(&refill), created, UnixMillis::from_millis(2_000), 1).allowed());
/// // The next minute starts with 10.
/// let d = balance.spend(Some(&refill), created, UnixMillis::from_millis(60_000), 4);
/// assert_eq!(d.remaining(), 6);
/// # Ok::<(), keygate::LimitError>(())
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct CreditBalance {
    /// Credits left.
    pub remaining: u64,
    /// The refill period `remaining` belongs to (0 without a refill).
    pub period: u64,
}

impl CreditBalance {
    /// A balance of `remaining` in the key's first period.
    pub const fn new(remaining: u64) -> CreditBalance {
        CreditBalance {
            remaining,
            period: 0,
        }
    }

    /// This balance as of `now`: set back to the refill amount if a refill
    /// boundary has passed since its period.
    pub fn at(self, refill: Option<&Refill>, created_at: UnixMillis, now: UnixMillis) -> Self {
        match refill {
            Some(r) => {
                let now_period = r.period_at(created_at, now);
                if now_period > self.period {
                    CreditBalance {
                        remaining: r.amount,
                        period: now_period,
                    }
                } else {
                    self
                }
            }
            None => self,
        }
    }

    /// Spends `cost` at `now` if the balance (refilled as of `now`) covers it
    /// whole; a refused request spends nothing. A `cost` of 0 asks whether a
    /// request of 1 would pass, and spends nothing.
    pub fn spend(
        &mut self,
        refill: Option<&Refill>,
        created_at: UnixMillis,
        now: UnixMillis,
        cost: u64,
    ) -> CreditDecision {
        let current = self.at(refill, created_at, now);
        let (decision, next) = current.decide(refill, created_at, now, cost);
        *self = next;
        decision
    }

    fn decide(
        self,
        refill: Option<&Refill>,
        created_at: UnixMillis,
        now: UnixMillis,
        cost: u64,
    ) -> (CreditDecision, CreditBalance) {
        if self.remaining >= cost.max(1) {
            let next = CreditBalance {
                remaining: self.remaining - cost,
                period: self.period,
            };
            return (
                CreditDecision {
                    allowed: true,
                    remaining: next.remaining,
                    retry_after_ms: None,
                },
                next,
            );
        }
        // A refill helps only if it covers the cost.
        let retry_after_ms = refill.filter(|r| r.amount >= cost.max(1)).map(|r| {
            let at = r.next_refill(created_at, self.period);
            let wait = i128::from(at.as_millis()) - i128::from(now.as_millis());
            u64::try_from(wait).unwrap_or(0)
        });
        (
            CreditDecision {
                allowed: false,
                remaining: self.remaining,
                retry_after_ms,
            },
            self,
        )
    }
}

/// The answer of a credit check.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CreditDecision {
    allowed: bool,
    remaining: u64,
    retry_after_ms: Option<u64>,
}

impl CreditDecision {
    /// A decision made elsewhere: for credits kept outside a [`Limiter`]
    /// (say, leased from a store shared by several instances), to build the
    /// same [`Verdict`] and answers with [`Verdict::new`]. `retry_after`
    /// is kept to the millisecond, as much as fits in a `u64`.
    ///
    /// ```
    /// use core::time::Duration;
    /// use keygate::CreditDecision;
    /// let refused = CreditDecision::new(false, 0, Some(Duration::from_millis(1_500)));
    /// assert!(!refused.allowed());
    /// assert_eq!(refused.remaining(), 0);
    /// assert_eq!(refused.retry_after(), Some(Duration::from_millis(1_500)));
    /// ```
    ///
    /// [`Limiter`]: crate::Limiter
    /// [`Verdict`]: crate::Verdict
    /// [`Verdict::new`]: crate::Verdict::new
    pub const fn new(
        allowed: bool,
        remaining: u64,
        retry_after: Option<Duration>,
    ) -> CreditDecision {
        let retry_after_ms = match retry_after {
            Some(wait) => {
                let ms = wait.as_millis();
                Some(if ms > u64::MAX as u128 {
                    u64::MAX
                } else {
                    ms as u64
                })
            }
            None => None,
        };
        CreditDecision {
            allowed,
            remaining,
            retry_after_ms,
        }
    }

    /// Whether the request may go on.
    pub const fn allowed(&self) -> bool {
        self.allowed
    }

    /// Credits left after this decision.
    pub const fn remaining(&self) -> u64 {
        self.remaining
    }

    /// On refusal, the time to the next refill that covers the cost; `None`
    /// when allowed or when no refill will help.
    pub fn retry_after(&self) -> Option<Duration> {
        self.retry_after_ms.map(Duration::from_millis)
    }
}

/// One key's balance, shared by reference and spent by one 128-bit
/// compare-and-swap (the balance and its refill period together), so a
/// refill and a spend can never race.
///
/// ```
/// use keygate::{CreditBalance, CreditCell, UnixMillis};
/// let cell = CreditCell::new(CreditBalance::new(2));
/// let (created, now) = (UnixMillis::EPOCH, UnixMillis::from_millis(5));
/// assert!(cell.spend(None, created, now, 2).allowed());
/// assert!(!cell.spend(None, created, now, 1).allowed());
/// assert_eq!(cell.add(5, None, created, now), 5);
/// ```
#[derive(Debug)]
pub struct CreditCell {
    word: AtomicU128,
}

impl Default for CreditCell {
    fn default() -> CreditCell {
        CreditCell::new(CreditBalance::default())
    }
}

fn pack(b: CreditBalance) -> u128 {
    (u128::from(b.period) << 64) | u128::from(b.remaining)
}

fn unpack(w: u128) -> CreditBalance {
    CreditBalance {
        remaining: w as u64,
        period: (w >> 64) as u64,
    }
}

impl CreditCell {
    /// A cell holding `balance`.
    pub const fn new(balance: CreditBalance) -> CreditCell {
        CreditCell {
            word: AtomicU128::new(((balance.period as u128) << 64) | balance.remaining as u128),
        }
    }

    /// The balance as stored (not refilled to any instant).
    pub fn load(&self) -> CreditBalance {
        unpack(self.word.load(Ordering::Acquire))
    }

    /// [`CreditBalance::spend`], atomically.
    pub fn spend(
        &self,
        refill: Option<&Refill>,
        created_at: UnixMillis,
        now: UnixMillis,
        cost: u64,
    ) -> CreditDecision {
        let mut word = self.word.load(Ordering::Acquire);
        loop {
            let current = unpack(word).at(refill, created_at, now);
            let (decision, next) = current.decide(refill, created_at, now, cost);
            let next_word = pack(next);
            if next_word == word {
                return decision;
            }
            match self.word.compare_exchange_weak(
                word,
                next_word,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return decision,
                Err(seen) => word = seen,
            }
        }
    }

    /// Adds `delta` (negative takes away) to the balance as of `now`,
    /// clamped to `0..=MAX_CREDITS`, and returns the new balance.
    pub fn add(
        &self,
        delta: i64,
        refill: Option<&Refill>,
        created_at: UnixMillis,
        now: UnixMillis,
    ) -> u64 {
        self.update(refill, created_at, now, |r| add_clamped(r, delta))
    }

    /// Sets the balance as of `now` to `remaining` (clamped to
    /// [`MAX_CREDITS`]) and returns it.
    pub fn set(
        &self,
        remaining: u64,
        refill: Option<&Refill>,
        created_at: UnixMillis,
        now: UnixMillis,
    ) -> u64 {
        self.update(refill, created_at, now, |_| remaining.min(MAX_CREDITS))
    }

    pub(crate) fn update(
        &self,
        refill: Option<&Refill>,
        created_at: UnixMillis,
        now: UnixMillis,
        f: impl Fn(u64) -> u64,
    ) -> u64 {
        let mut word = self.word.load(Ordering::Acquire);
        loop {
            let mut b = unpack(word).at(refill, created_at, now);
            b.remaining = f(b.remaining);
            match self.word.compare_exchange_weak(
                word,
                pack(b),
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return b.remaining,
                Err(seen) => word = seen,
            }
        }
    }
}

/// The balance a [`Limiter`](crate::Limiter) keeps per meter: one 64-bit
/// compare-and-swap when the credits never refill (the period never
/// changes), the 128-bit [`CreditCell`] when they do.
#[derive(Debug)]
pub(crate) enum CreditState {
    /// No refill: the balance alone.
    Plain(core::sync::atomic::AtomicU64),
    /// With a refill: the balance and its period together.
    Periodic(CreditCell),
}

impl CreditState {
    pub(crate) fn new(balance: CreditBalance, refill: Option<&Refill>) -> CreditState {
        match refill {
            None => CreditState::Plain(core::sync::atomic::AtomicU64::new(balance.remaining)),
            Some(_) => CreditState::Periodic(CreditCell::new(balance)),
        }
    }

    pub(crate) fn load(&self) -> CreditBalance {
        match self {
            CreditState::Plain(a) => CreditBalance::new(a.load(Ordering::Acquire)),
            CreditState::Periodic(c) => c.load(),
        }
    }

    #[inline]
    pub(crate) fn spend(
        &self,
        refill: Option<&Refill>,
        since: UnixMillis,
        now: UnixMillis,
        cost: u64,
    ) -> CreditDecision {
        let plain = match self {
            CreditState::Plain(a) => a,
            CreditState::Periodic(c) => return c.spend(refill, since, now, cost),
        };
        let need = cost.max(1);
        let mut seen = plain.load(Ordering::Acquire);
        loop {
            if seen < need {
                return CreditDecision {
                    allowed: false,
                    remaining: seen,
                    retry_after_ms: None,
                };
            }
            if cost == 0 {
                return CreditDecision {
                    allowed: true,
                    remaining: seen,
                    retry_after_ms: None,
                };
            }
            match plain.compare_exchange_weak(
                seen,
                seen - cost,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => {
                    return CreditDecision {
                        allowed: true,
                        remaining: seen - cost,
                        retry_after_ms: None,
                    }
                }
                Err(now_seen) => seen = now_seen,
            }
        }
    }

    pub(crate) fn update(
        &self,
        refill: Option<&Refill>,
        since: UnixMillis,
        now: UnixMillis,
        f: impl Fn(u64) -> u64,
    ) -> u64 {
        match self {
            CreditState::Plain(a) => {
                let mut seen = a.load(Ordering::Acquire);
                loop {
                    let next = f(seen);
                    match a.compare_exchange_weak(seen, next, Ordering::AcqRel, Ordering::Acquire) {
                        Ok(_) => return next,
                        Err(s) => seen = s,
                    }
                }
            }
            CreditState::Periodic(c) => c.update(refill, since, now, f),
        }
    }
}

/// `delta` added to `r`, clamped to `0..=MAX_CREDITS`.
pub(crate) fn add_clamped(r: u64, delta: i64) -> u64 {
    let sum = i128::from(r) + i128::from(delta);
    u64::try_from(sum.clamp(0, i128::from(MAX_CREDITS))).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ms: i64) -> UnixMillis {
        UnixMillis::from_millis(ms)
    }

    #[test]
    fn validation_names_the_field() {
        assert_eq!(
            Credits::new(MAX_CREDITS + 1, None),
            Err(LimitError::Remaining(i128::from(MAX_CREDITS) + 1))
        );
        assert_eq!(
            Refill::new(1, Duration::from_millis(999)),
            Err(LimitError::RefillInterval(999))
        );
        assert_eq!(
            Refill::new(MAX_CREDITS + 1, Duration::from_secs(1)),
            Err(LimitError::RefillAmount(i128::from(MAX_CREDITS) + 1))
        );
        assert!(Refill::new(0, Duration::from_secs(1)).is_ok());
        assert!(Refill::new(1, Duration::from_nanos(1_000_000_001)).is_err());
    }

    #[test]
    fn the_largest_balance_is_the_largest_integer_json_carries_exactly() {
        // 2^53 - 1: every integer up to it survives a trip through an f64.
        const LARGEST: u64 = 9_007_199_254_740_991;
        assert_eq!(LARGEST as f64 as u64, LARGEST);
        assert_eq!(
            Credits::new(LARGEST, None).map(|c| c.remaining()),
            Ok(LARGEST)
        );
        assert_eq!(
            Credits::new(LARGEST + 1, None),
            Err(LimitError::Remaining(9_007_199_254_740_992))
        );
        assert!(Refill::new(LARGEST, Duration::from_secs(1)).is_ok());
        assert!(Refill::new(LARGEST + 1, Duration::from_secs(1)).is_err());
    }

    #[test]
    fn refill_sets_back_at_each_boundary_from_creation() {
        let r = Refill::new(5, Duration::from_secs(10)).unwrap();
        let created = at(3_000);
        let mut b = CreditBalance::new(1);
        assert!(b.spend(Some(&r), created, at(12_999), 1).allowed());
        let refused = b.spend(Some(&r), created, at(12_999), 1);
        assert!(!refused.allowed());
        assert_eq!(refused.retry_after(), Some(Duration::from_millis(1)));
        let d = b.spend(Some(&r), created, at(13_000), 2);
        assert_eq!((d.allowed(), d.remaining()), (true, 3));
        // Two intervals later: back to 5, not 5 + 5.
        assert_eq!(b.spend(Some(&r), created, at(33_000), 0).remaining(), 5);
    }

    #[test]
    fn a_cost_above_the_balance_is_refused_whole() {
        let mut b = CreditBalance::new(4);
        let d = b.spend(None, at(0), at(0), 5);
        assert!(!d.allowed());
        assert_eq!(d.retry_after(), None);
        assert_eq!(b.remaining, 4);
        // A refill smaller than the cost never helps.
        let r = Refill::new(3, Duration::from_secs(1)).unwrap();
        assert_eq!(b.spend(Some(&r), at(0), at(0), 5).retry_after(), None);
    }

    #[test]
    fn cell_add_and_set_clamp() {
        let c = CreditCell::new(CreditBalance::new(3));
        assert_eq!(c.add(-10, None, at(0), at(0)), 0);
        assert_eq!(c.add(i64::MAX, None, at(0), at(0)), MAX_CREDITS);
        assert_eq!(c.set(u64::MAX, None, at(0), at(0)), MAX_CREDITS);
        assert_eq!(c.set(7, None, at(0), at(0)), 7);
        assert!(!c.spend(None, at(0), at(0), 8).allowed());
        assert_eq!(c.load().remaining, 7);
    }
}
