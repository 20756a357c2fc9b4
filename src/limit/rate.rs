//! The rate limit: GCRA (the generic cell rate algorithm) with one `u64` of
//! state per key, updated by one compare-and-swap.
//!
//! Time is counted in ticks of `1 / limit` milliseconds, so that the
//! emission interval (`period_ms` ticks) and the window (`period_ms * limit`
//! ticks) are whole numbers and every decision is exact.

use core::sync::atomic::{AtomicU64, Ordering};
use core::time::Duration;

use serde::{Deserialize, Serialize};

use crate::limit::LimitError;
use crate::time::UnixMillis;

/// The largest `limit` of a [`RateLimit`]: with it, tick counts of instants
/// up to the year 2262 fit in half a `u64`; past that a check fails closed.
pub const MAX_RATE_LIMIT: u32 = 1_000_000;

/// The longest `period` of a [`RateLimit`]: 31 days.
pub const MAX_RATE_PERIOD: Duration = Duration::from_secs(31 * 24 * 60 * 60);

/// `limit` requests per `period`, with a burst of `limit`.
///
/// ```
/// use core::time::Duration;
/// let rate = keygate::RateLimit::new(100, Duration::from_secs(1))?;
/// assert_eq!((rate.limit(), rate.period_ms()), (100, 1_000));
/// assert!(keygate::RateLimit::new(0, Duration::from_secs(1)).is_err());
/// # Ok::<(), keygate::LimitError>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "RateLimitFields")]
pub struct RateLimit {
    limit: u32,
    period_ms: u32,
}

/// The JSON form, `{"limit": 100, "period_ms": 1000}`, checked by
/// [`RateLimit::new`].
#[derive(Deserialize)]
#[serde(remote = "Self", deny_unknown_fields)]
struct RateLimitFields {
    limit: i128,
    period_ms: i128,
}

crate::object::object_deserialize!(RateLimitFields);

impl TryFrom<RateLimitFields> for RateLimit {
    type Error = LimitError;
    fn try_from(f: RateLimitFields) -> Result<RateLimit, LimitError> {
        let limit = u32::try_from(f.limit).map_err(|_| LimitError::RateLimit(f.limit))?;
        let period_ms =
            u64::try_from(f.period_ms).map_err(|_| LimitError::RatePeriod(f.period_ms))?;
        RateLimit::new(limit, Duration::from_millis(period_ms))
    }
}

impl RateLimit {
    /// A rate limit of `limit` (1 to [`MAX_RATE_LIMIT`]) per `period`
    /// (1 ms to [`MAX_RATE_PERIOD`], in whole milliseconds).
    pub fn new(limit: u32, period: Duration) -> Result<RateLimit, LimitError> {
        if limit == 0 || limit > MAX_RATE_LIMIT {
            return Err(LimitError::RateLimit(i128::from(limit)));
        }
        let ms = period.as_millis();
        if period.subsec_nanos() % 1_000_000 != 0 || ms == 0 || period > MAX_RATE_PERIOD {
            return Err(LimitError::RatePeriod(ms_of(period)));
        }
        let period_ms = u32::try_from(ms).map_err(|_| LimitError::RatePeriod(ms_of(period)))?;
        Ok(RateLimit { limit, period_ms })
    }

    /// Requests allowed per period (and the burst).
    pub const fn limit(&self) -> u32 {
        self.limit
    }

    /// The period in milliseconds.
    pub const fn period_ms(&self) -> u32 {
        self.period_ms
    }

    /// The period.
    pub const fn period(&self) -> Duration {
        Duration::from_millis(self.period_ms as u64)
    }

    /// This limit scaled to a share of `num / den` (a fraction of 1), at least
    /// one request per period: what one of several instances may allow.
    ///
    /// ```
    /// use core::time::Duration;
    /// let rate = keygate::RateLimit::new(200, Duration::from_secs(1))?;
    /// assert_eq!(rate.share(7, 10).limit(), 140);
    /// assert_eq!(rate.share(0, 10).limit(), 1);
    /// # Ok::<(), keygate::LimitError>(())
    /// ```
    pub fn share(&self, num: u32, den: u32) -> RateLimit {
        let scaled = if den == 0 {
            u64::from(self.limit)
        } else {
            u64::from(self.limit) * u64::from(num.min(den)) / u64::from(den)
        };
        RateLimit {
            limit: u32::try_from(scaled)
                .unwrap_or(self.limit)
                .clamp(1, self.limit),
            period_ms: self.period_ms,
        }
    }

    /// `now` in ticks of `1 / limit` ms; instants before the epoch are 0.
    /// `None` past half the range of a `u64` of ticks (the year 2262 at the
    /// largest limit, later at smaller ones): the check then fails closed.
    #[inline]
    fn ticks(&self, now: UnixMillis) -> Option<u64> {
        let ms = u64::try_from(now.as_millis()).unwrap_or(0);
        // Half the range: room for a window on top (a saturated cost only
        // ever refuses).
        ms.checked_mul(u64::from(self.limit))
            .filter(|t| *t <= u64::MAX / 2)
    }

    /// The window: `period_ms * limit` ticks.
    #[inline]
    fn window(&self) -> u64 {
        u64::from(self.period_ms) * u64::from(self.limit)
    }
}

/// A duration's milliseconds for an error message (sub-millisecond parts show as a fraction's floor).
fn ms_of(d: Duration) -> i128 {
    i128::try_from(d.as_millis()).unwrap_or(i128::MAX)
}

/// One key's rate-limit state: the theoretical arrival time, in ticks.
///
/// Shared by reference: [`RateState::check`] takes `&self` and one
/// compare-and-swap, so any number of threads check one key at once.
///
/// ```
/// use core::time::Duration;
/// use keygate::{RateLimit, RateState, UnixMillis};
/// let rate = RateLimit::new(2, Duration::from_secs(1))?;
/// let state = RateState::new();
/// let now = UnixMillis::from_millis(1_700_000_000_000);
/// assert!(state.check(&rate, now, 1).allowed());
/// assert!(state.check(&rate, now, 1).allowed());
/// let third = state.check(&rate, now, 1);
/// assert!(!third.allowed());
/// assert_eq!(third.retry_after(), Some(Duration::from_millis(500)));
/// # Ok::<(), keygate::LimitError>(())
/// ```
#[derive(Debug, Default)]
pub struct RateState {
    tat: AtomicU64,
}

impl RateState {
    /// A fresh state: a full burst is available.
    pub const fn new() -> RateState {
        RateState {
            tat: AtomicU64::new(0),
        }
    }

    /// Decides a request of `cost` at `now`, and spends it if allowed. A
    /// `cost` of 0 asks whether a request of 1 would pass, and spends nothing.
    #[inline]
    pub fn check(&self, rate: &RateLimit, now: UnixMillis, cost: u32) -> RateDecision {
        let Some(now_t) = rate.ticks(now) else {
            // A clock past the range: refuse, and say no wait will help.
            return RateDecision::refuse(rate, 0, 0, u32::MAX);
        };
        let window = rate.window();
        let step = u64::from(rate.period_ms);
        let mut tat = self.tat.load(Ordering::Acquire);
        loop {
            let base = tat.max(now_t);
            let spend = step.saturating_mul(u64::from(cost.max(1)));
            let next = base.saturating_add(spend);
            let ahead = next - now_t;
            if ahead > window {
                return RateDecision::refuse(rate, base - now_t, ahead - window, cost);
            }
            if cost == 0 {
                return RateDecision::pass(rate, base - now_t);
            }
            match self
                .tat
                .compare_exchange_weak(tat, next, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return RateDecision::pass(rate, ahead),
                Err(seen) => tat = seen,
            }
        }
    }

    /// The raw state, for tests and for moving a key's state between
    /// instances.
    pub fn tat(&self) -> u64 {
        self.tat.load(Ordering::Acquire)
    }

    /// A state from [`RateState::tat`].
    pub const fn from_tat(tat: u64) -> RateState {
        RateState {
            tat: AtomicU64::new(tat),
        }
    }
}

/// The answer of [`RateState::check`]: what the `RateLimit` and
/// `RateLimit-Policy` header fields report.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateDecision {
    allowed: bool,
    limit: u32,
    period_ms: u32,
    /// Ticks the key is ahead of `now` after this decision.
    ahead: u64,
    /// On refusal, the ticks to wait; `u64::MAX` when no wait helps.
    wait: u64,
}

impl RateDecision {
    #[inline]
    fn pass(rate: &RateLimit, ahead: u64) -> RateDecision {
        RateDecision {
            allowed: true,
            limit: rate.limit,
            period_ms: rate.period_ms,
            ahead,
            wait: 0,
        }
    }

    #[inline]
    fn refuse(rate: &RateLimit, ahead: u64, wait: u64, cost: u32) -> RateDecision {
        RateDecision {
            allowed: false,
            limit: rate.limit,
            period_ms: rate.period_ms,
            ahead,
            wait: if cost > rate.limit { u64::MAX } else { wait },
        }
    }

    /// Whether the request may go on.
    #[inline]
    pub const fn allowed(&self) -> bool {
        self.allowed
    }

    /// The key's limit per period.
    pub const fn limit(&self) -> u32 {
        self.limit
    }

    /// The key's period.
    pub const fn period(&self) -> Duration {
        Duration::from_millis(self.period_ms as u64)
    }

    /// Requests of cost 1 that would pass right after this decision.
    pub fn remaining(&self) -> u32 {
        let window = u64::from(self.period_ms) * u64::from(self.limit);
        let free = window.saturating_sub(self.ahead) / u64::from(self.period_ms.max(1));
        u32::try_from(free).unwrap_or(self.limit)
    }

    /// The time until the full burst is available again.
    pub fn reset_after(&self) -> Duration {
        Duration::from_millis(self.ahead.div_ceil(u64::from(self.limit.max(1))))
    }

    /// On refusal, the time after which the same request would pass; `None`
    /// when it is allowed, or when its cost exceeds the limit and no wait helps.
    pub fn retry_after(&self) -> Option<Duration> {
        if self.allowed || self.wait == u64::MAX {
            return None;
        }
        Some(Duration::from_millis(
            self.wait.div_ceil(u64::from(self.limit.max(1))),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ms: i64) -> UnixMillis {
        UnixMillis::from_millis(ms)
    }

    #[test]
    fn validation_names_the_bounds() {
        assert!(RateLimit::new(1, Duration::from_millis(1)).is_ok());
        assert!(RateLimit::new(MAX_RATE_LIMIT, MAX_RATE_PERIOD).is_ok());
        assert_eq!(
            RateLimit::new(MAX_RATE_LIMIT + 1, Duration::from_secs(1)),
            Err(LimitError::RateLimit(i128::from(MAX_RATE_LIMIT) + 1))
        );
        assert!(RateLimit::new(1, Duration::ZERO).is_err());
        assert!(RateLimit::new(1, Duration::from_micros(1_500)).is_err());
        assert!(RateLimit::new(1, MAX_RATE_PERIOD + Duration::from_millis(1)).is_err());
    }

    #[test]
    fn a_bad_period_is_named_in_whole_milliseconds() {
        let err = |period| RateLimit::new(1, period).err();
        let too_long = MAX_RATE_PERIOD + Duration::from_millis(1);
        assert_eq!(err(too_long), Some(LimitError::RatePeriod(2_678_400_001)));
        assert_eq!(
            err(Duration::from_micros(1_500)),
            Some(LimitError::RatePeriod(1))
        );
        assert_eq!(err(Duration::ZERO), Some(LimitError::RatePeriod(0)));
    }

    #[test]
    fn burst_then_steady_rate() {
        let rate = RateLimit::new(3, Duration::from_millis(1_000)).unwrap();
        let s = RateState::new();
        for left in [2, 1, 0] {
            let d = s.check(&rate, at(10_000), 1);
            assert!(d.allowed());
            assert_eq!(d.remaining(), left);
        }
        let d = s.check(&rate, at(10_000), 1);
        assert!(!d.allowed());
        assert_eq!(d.retry_after(), Some(Duration::from_millis(334)));
        assert_eq!(d.reset_after(), Duration::from_millis(1_000));
        assert!(!s.check(&rate, at(10_333), 1).allowed());
        assert!(s.check(&rate, at(10_334), 1).allowed());
    }

    #[test]
    fn a_clock_past_the_range_fails_closed() {
        let rate = RateLimit::new(MAX_RATE_LIMIT, Duration::from_secs(1)).unwrap();
        let s = RateState::new();
        let far = at(18_446_744_073_710);
        for _ in 0..3 {
            let d = s.check(&rate, far, 1);
            assert!(!d.allowed());
            assert_eq!(d.retry_after(), None);
        }
        // In range it decides as ever.
        assert!(s.check(&rate, at(1_700_000_000_000), 1).allowed());
    }

    #[test]
    fn cost_zero_probes_and_spends_nothing() {
        let rate = RateLimit::new(1, Duration::from_millis(100)).unwrap();
        let s = RateState::new();
        assert!(s.check(&rate, at(0), 0).allowed());
        assert_eq!(s.tat(), 0);
        assert!(s.check(&rate, at(0), 1).allowed());
        let probe = s.check(&rate, at(0), 0);
        assert!(!probe.allowed());
        assert_eq!(probe.retry_after(), Some(Duration::from_millis(100)));
    }

    #[test]
    fn a_cost_above_the_limit_never_passes_and_spends_nothing() {
        let rate = RateLimit::new(5, Duration::from_secs(1)).unwrap();
        let s = RateState::new();
        let d = s.check(&rate, at(0), 6);
        assert!(!d.allowed());
        assert_eq!(d.retry_after(), None);
        assert_eq!(s.check(&rate, at(0), 5).remaining(), 0);
    }

    #[test]
    fn share_rounds_down_to_at_least_one() {
        let rate = RateLimit::new(10, Duration::from_secs(1)).unwrap();
        assert_eq!(rate.share(1, 3).limit(), 3);
        assert_eq!(rate.share(5, 3).limit(), 10);
        assert_eq!(rate.share(1, 0).limit(), 10);
    }
}
