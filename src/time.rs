//! Time as a type: [`UnixMillis`], an instant in Unix milliseconds, next to
//! [`core::time::Duration`] for overlaps and periods. keygate never reads a
//! clock in its core: the caller passes `now`.

use core::fmt;
use core::time::Duration;

use serde::{Deserialize, Serialize};

/// An instant: milliseconds since the Unix epoch (negative before it), as
/// rustls-pki-types' `UnixTime` is seconds. The wire format (JSON `*_ms`
/// fields) and the stores keep the integer; this type keeps `now`,
/// `expires_at` and an overlap from being swapped by mistake.
///
/// ```
/// use core::time::Duration;
/// use keygate::UnixMillis;
/// let t = UnixMillis::from_millis(1_000);
/// assert_eq!(t.saturating_add(Duration::from_secs(2)).as_millis(), 3_000);
/// assert!(t < UnixMillis::from_millis(1_001));
/// assert_eq!(t.to_string(), "1000");
/// ```
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct UnixMillis(i64);

impl UnixMillis {
    /// The Unix epoch.
    pub const EPOCH: UnixMillis = UnixMillis(0);

    /// The instant `ms` milliseconds after the epoch.
    #[inline]
    pub const fn from_millis(ms: i64) -> UnixMillis {
        UnixMillis(ms)
    }

    /// Milliseconds since the epoch.
    ///
    /// ```
    /// assert_eq!(keygate::UnixMillis::from_millis(-5).as_millis(), -5);
    /// ```
    #[inline]
    pub const fn as_millis(self) -> i64 {
        self.0
    }

    /// `self + duration`, or `None` past `i64::MAX` milliseconds.
    ///
    /// ```
    /// use keygate::UnixMillis;
    /// let t = UnixMillis::from_millis(i64::MAX - 1);
    /// assert_eq!(t.checked_add(core::time::Duration::from_millis(2)), None);
    /// ```
    #[inline]
    pub fn checked_add(self, duration: Duration) -> Option<UnixMillis> {
        // In 128 bits: a duration past `i64::MAX` ms can still land in range
        // from a negative instant.
        let ms = i128::try_from(duration.as_millis()).ok()?;
        let sum = i128::from(self.0).checked_add(ms)?;
        i64::try_from(sum).ok().map(UnixMillis)
    }

    /// `self + duration`, stopping at the largest instant.
    ///
    /// ```
    /// use keygate::UnixMillis;
    /// let far = UnixMillis::from_millis(i64::MAX).saturating_add(core::time::Duration::MAX);
    /// assert_eq!(far.as_millis(), i64::MAX);
    /// ```
    #[inline]
    pub fn saturating_add(self, duration: Duration) -> UnixMillis {
        self.checked_add(duration).unwrap_or(UnixMillis(i64::MAX))
    }

    /// The system clock (the epoch before 1970). Requires `std`.
    ///
    /// ```
    /// assert!(keygate::UnixMillis::now().as_millis() > 1_700_000_000_000);
    /// ```
    #[cfg(feature = "std")]
    pub fn now() -> UnixMillis {
        match std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
            // Seconds and millis apart: no 128-bit division on the hot path.
            Ok(d) => UnixMillis(
                i64::try_from(d.as_secs())
                    .unwrap_or(i64::MAX)
                    .saturating_mul(1_000)
                    .saturating_add(i64::from(d.subsec_millis())),
            ),
            Err(_) => UnixMillis::EPOCH,
        }
    }
}

impl fmt::Display for UnixMillis {
    /// The milliseconds, as the wire writes them.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl From<UnixMillis> for i64 {
    fn from(t: UnixMillis) -> i64 {
        t.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_integer_is_the_milliseconds() {
        for ms in [i64::MIN, -1, 0, 1, 1_700_000_000_000, i64::MAX] {
            let t = UnixMillis::from_millis(ms);
            assert_eq!(t.as_millis(), ms);
            assert_eq!(i64::from(t), ms);
            assert_eq!(
                alloc::string::ToString::to_string(&t),
                alloc::format!("{ms}")
            );
        }
        assert_eq!(UnixMillis::EPOCH, UnixMillis::from_millis(0));
    }

    #[test]
    fn addition_is_exact_in_range_and_saturates_past_it() {
        let past_i64 = Duration::from_millis(u64::MAX);
        // From a negative instant, a duration past i64::MAX ms can land in
        // range: exact, not saturated.
        let t = UnixMillis::from_millis(i64::MIN);
        assert_eq!(
            t.checked_add(past_i64),
            Some(UnixMillis::from_millis(i64::MAX))
        );
        assert_eq!(UnixMillis::from_millis(-1).checked_add(past_i64), None);
        assert_eq!(
            UnixMillis::from_millis(-1).saturating_add(past_i64),
            UnixMillis::from_millis(i64::MAX)
        );
        assert_eq!(
            UnixMillis::from_millis(5).checked_add(Duration::from_millis(7)),
            Some(UnixMillis::from_millis(12))
        );
        assert_eq!(
            UnixMillis::from_millis(i64::MAX).checked_add(Duration::from_millis(1)),
            None
        );
        assert_eq!(
            UnixMillis::from_millis(i64::MAX).saturating_add(Duration::MAX),
            UnixMillis::from_millis(i64::MAX)
        );
    }
}
