//! Per-key rate limits and usage credits, decided on the hot path.
//!
//! A key may carry a [`RateLimit`] (GCRA: `limit` per `period`, a burst of
//! `limit`) and [`Credits`] (a balance that requests spend, with an optional
//! [`Refill`]). Their state lives in a [`Limiter`] beside the
//! [`Keyring`](crate::Keyring), so the keyring stays shared and read-only:
//! a check takes `&Limiter`, allocates nothing, and is one atomic
//! compare-and-swap per limit.
//!
//! The order of checks is the caller's: authenticate (401), then scope
//! (403), then [`Limiter::check`]: the rate limit, then the credits (both 429).
//! A request refused by the rate limit spends no credits.
//!
//! ```
//! use core::time::Duration;
//! use keygate::{Credits, KeyId, KeyLimits, Limiter, RateLimit, Refusal, UnixMillis};
//!
//! let id = KeyId::parse("4GZ6bQvR9cXw2LmT")?;
//! let created = UnixMillis::from_millis(1_700_000_000_000);
//! let mut limiter = Limiter::new();
//! limiter.configure(id, created, KeyLimits {
//!     rate: Some(RateLimit::new(100, Duration::from_secs(1))?),
//!     credits: Some(Credits::new(2, None)?),
//! });
//! let now = created;
//! assert!(limiter.check(&id, now, 1).result().is_ok());
//! assert!(limiter.check(&id, now, 1).result().is_ok());
//! let third = limiter.check(&id, now, 1);
//! assert!(matches!(third.result(), Err(Refusal::CreditsExhausted { retry_after: None })));
//! assert_eq!(third.credits().map(|c| c.remaining()), Some(0));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod credits;
mod limiter;
mod rate;

use core::time::Duration;

pub use credits::{
    CreditBalance, CreditCell, CreditDecision, Credits, Refill, MAX_CREDITS, MIN_REFILL_INTERVAL,
};
pub use limiter::{KeyLimits, Limiter, Verdict};
pub use rate::{RateDecision, RateLimit, RateState, MAX_RATE_LIMIT, MAX_RATE_PERIOD};

/// The limit state a key is charged to: its own (`id` is the key's, `since`
/// its creation) or, for a rolled key or a key minted by a limited key, its
/// predecessor's or minter's. Credits refill at each interval counted from
/// `since`. Keys that share a meter share one rate limit and one balance.
///
/// ```
/// # let record = keygate::testing::example_record();
/// let meter = record.meter();
/// assert_eq!((meter.id, meter.since), (record.id(), record.created_at()));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Meter {
    /// The key whose limits these are: the first of its family.
    pub id: crate::token::KeyId,
    /// That key's creation: refills are counted from it.
    #[serde(rename = "since_ms")]
    pub since: crate::time::UnixMillis,
}

/// A rate limit or credit configuration that breaks a rule (HTTP 400). The
/// message names the field, as the HTTP API spells it.
///
/// ```
/// let err = keygate::RateLimit::new(0, core::time::Duration::from_secs(1)).unwrap_err();
/// assert_eq!(err.to_string(), "rate_limit.limit must be 1 to 1000000, not `0`");
/// assert_eq!(err.http_status(), 400);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LimitError {
    /// `limit` is 0 or above [`MAX_RATE_LIMIT`].
    #[error("rate_limit.limit must be 1 to {MAX_RATE_LIMIT}, not `{0}`")]
    RateLimit(i128),
    /// `period_ms` is not 1 ms to 31 days (or not whole milliseconds).
    #[error("rate_limit.period_ms must be 1 to 2678400000 (31 days), not `{0}`")]
    RatePeriod(i128),
    /// The balance is negative or above [`MAX_CREDITS`].
    #[error("credits.remaining must be 0 to {MAX_CREDITS}, not `{0}`")]
    Remaining(i128),
    /// The refill amount is negative or above [`MAX_CREDITS`].
    #[error("credits.refill.amount must be 0 to {MAX_CREDITS}, not `{0}`")]
    RefillAmount(i128),
    /// The refill interval is shorter than a second (or not whole milliseconds).
    #[error("credits.refill.interval_ms must be 1000 to 9223372036854775806, not `{0}`")]
    RefillInterval(i128),
}

impl LimitError {
    /// 400: the request is malformed.
    pub const fn http_status(&self) -> u16 {
        400
    }
}

/// Why [`Limiter::check`] refused a request (HTTP 429).
///
/// ```
/// let refusal = keygate::Refusal::RateLimited { retry_after: None };
/// assert_eq!(refusal.http_status(), 429);
/// assert_eq!(refusal.to_string(), "rate limit exceeded");
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Refusal {
    /// Too many requests in the key's period.
    #[error("rate limit exceeded")]
    RateLimited {
        /// When the same request would pass; `None` if its cost exceeds the limit.
        retry_after: Option<Duration>,
    },
    /// The key's credits do not cover the request.
    #[error("credits exhausted")]
    CreditsExhausted {
        /// The time to the next refill that covers the cost; `None` without one.
        retry_after: Option<Duration>,
    },
}

impl Refusal {
    /// 429: too many requests.
    pub const fn http_status(&self) -> u16 {
        429
    }

    /// When a retry can pass, if ever.
    pub const fn retry_after(&self) -> Option<Duration> {
        match self {
            Refusal::RateLimited { retry_after } | Refusal::CreditsExhausted { retry_after } => {
                *retry_after
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_configuration_is_400_and_a_refusal_429_with_its_wait() {
        let bad = [
            LimitError::RateLimit(0),
            LimitError::RatePeriod(0),
            LimitError::Remaining(-1),
            LimitError::RefillAmount(-1),
            LimitError::RefillInterval(999),
        ];
        for e in bad {
            assert_eq!(e.http_status(), 400, "{e}");
            assert_eq!(crate::Error::from(e).http_status(), 400, "{e}");
        }
        let wait = Some(Duration::from_millis(1_500));
        let refusals = [
            Refusal::RateLimited { retry_after: wait },
            Refusal::CreditsExhausted { retry_after: wait },
        ];
        for r in refusals {
            assert_eq!(r.http_status(), 429, "{r}");
            assert_eq!(crate::Error::from(r).http_status(), 429, "{r}");
            assert_eq!(r.retry_after(), wait, "{r}");
        }
        let never = Refusal::CreditsExhausted { retry_after: None };
        assert_eq!(never.retry_after(), None);
    }
}
