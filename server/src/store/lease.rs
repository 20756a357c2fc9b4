//! Credit leases: what the stores keep of a meter's credits, and the
//! arithmetic both stores share.
//!
//! A meter's credits live in two places. `credit_balances` holds the
//! *pool*: the credits no instance holds, with the refill period they
//! belong to. `credit_leases` holds one row per meter and instance: credits
//! moved out of the pool to that instance for one refill period, which it
//! spends in memory (`crate::sync::credits`). The row records what the
//! instance holds as last known (`amount`: raised by each grant, set by each
//! renewal and return to what the instance says it has left; for reporting
//! only, the instance's memory is what counts) and when the lease lapses if
//! it is not renewed (`expires_at_ms`).
//!
//! Credits held by an instance are spent or handed back by that instance
//! only. A lease row that expires (its instance stopped renewing: it
//! crashed, or cannot reach the store) is deleted, **not** returned to the
//! pool: the instance may have spent its credits after its last report, and
//! returning the reported amount could grant them twice. So a crash forfeits
//! what the crashed instance held (its leases are sized by its demand, and
//! shrink near zero), and an instance that was only cut off keeps spending
//! or returning what it holds, and its next renewal writes the row again.
//!
//! The invariant every method keeps: over a refill period, the credits
//! allowed by all instances together never exceed what the pool started the
//! period with plus what was added in it.

use keygate::{CreditBalance, KeyId, Meter, Refill, UnixMillis, MAX_CREDITS};

use super::StoreError;

/// A meter and its refill: what every credit method needs to bring the pool
/// to the current refill period.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CreditMeter {
    /// The meter (its id names the pool; refills count from its `since`).
    pub meter: Meter,
    /// The refill, if the meter's credits have one.
    pub refill: Option<Refill>,
}

/// Credits moved to one instance by [`Store::lease_credits`](super::Store::lease_credits).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Lease {
    /// The credits moved to the instance now (0 when the pool is empty).
    pub granted: u64,
    /// The refill period they belong to (the pool's, refilled as of now).
    pub period: u64,
    /// What the pool holds after the grant.
    pub pool: u64,
    /// What the other instances' leases of this period held, as last
    /// reported: credits that may come back to the pool.
    pub elsewhere: u64,
    /// The lease was asked under a refill other than the one the meter's
    /// keys have in the store (the caller's copy of them is stale): nothing
    /// was granted, and `period` and `pool` are the caller's period and 0,
    /// not the pool's.
    pub stale_refill: bool,
}

/// One of an instance's leases, as it reports it to
/// [`Store::renew_leases`](super::Store::renew_leases).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseReport {
    /// The meter.
    pub meter_id: KeyId,
    /// The refill period of the credits the instance holds.
    pub period: u64,
    /// What it has left of them (0: the row goes).
    pub unspent: u64,
}

/// A meter's pool as [`Store::renew_leases`](super::Store::renew_leases)
/// read it (not refilled: `period` is the pool's own).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolView {
    /// The meter.
    pub meter_id: KeyId,
    /// The credits in the pool.
    pub remaining: u64,
    /// The refill period they belong to.
    pub period: u64,
    /// What the other instances' leases of that period held, as last reported.
    pub elsewhere: u64,
}

/// What [`Store::expire_leases`](super::Store::expire_leases) deleted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Expired {
    /// Lease rows whose time-to-live had passed (their instances stopped
    /// renewing).
    pub leases: u64,
    /// What those leases held when last known: forfeited, never returned
    /// to the pool.
    pub forfeited: u64,
    /// Rows of a refill period the pool has left (void, holding nothing).
    pub void: u64,
}

/// A lease write ([`Store::lease_credits`](super::Store::lease_credits),
/// [`Store::return_credits`](super::Store::return_credits)) that failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseWriteError {
    /// Why.
    pub error: StoreError,
    /// The connection was lost while the transaction committed: it may
    /// have committed. The caller must act as if the write happened when
    /// that loses credits (a return), and as if it did not when that loses
    /// credits (a grant): never as if it happened twice.
    pub maybe_applied: bool,
}

impl From<StoreError> for LeaseWriteError {
    fn from(error: StoreError) -> LeaseWriteError {
        LeaseWriteError {
            error,
            maybe_applied: false,
        }
    }
}

impl std::fmt::Display for LeaseWriteError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.maybe_applied {
            write!(f, "{} (it may have committed)", self.error)
        } else {
            self.error.fmt(f)
        }
    }
}

impl std::error::Error for LeaseWriteError {}

/// A pool row as read: `(remaining, period)`.
pub(crate) type PoolRow = (u64, u64);

/// `m` under the refill its keys have in the store (`stored`: their credits),
/// and whether the caller asked under another. Every pool write goes by the
/// stored refill: an instance whose copy of a key is stale (a limits change
/// it has yet to read) must never set the pool back, or number its periods,
/// under an old refill. Without a key with credits (`None`) there is nothing
/// to be stale against: a meter whose credits were removed has no pool row
/// either, so nothing is granted.
pub(crate) fn as_stored(m: CreditMeter, stored: Option<keygate::Credits>) -> (CreditMeter, bool) {
    match stored {
        Some(credits) => {
            let refill = credits.refill();
            (CreditMeter { refill, ..m }, refill != m.refill)
        }
        None => (m, false),
    }
}

/// The answer to a lease asked under a stale refill: nothing granted, the
/// caller's own period.
pub(crate) fn stale_lease(asked: CreditMeter, now_ms: i64) -> Lease {
    Lease {
        period: period_now(asked, 0, now_ms),
        stale_refill: true,
        ..Lease::default()
    }
}

/// The pool as of `now`: set back to the refill amount when a refill
/// boundary has passed since its period. The second value says whether it
/// was (the leases of older periods are then void).
pub(crate) fn refilled(pool: PoolRow, m: CreditMeter, now_ms: i64) -> (PoolRow, bool) {
    let before = CreditBalance {
        remaining: pool.0,
        period: pool.1,
    };
    let after = before.at(
        m.refill.as_ref(),
        m.meter.since,
        UnixMillis::from_millis(now_ms),
    );
    ((after.remaining, after.period), after != before)
}

/// The refill period `now_ms` falls in for a pool with `refill` (the pool's
/// own period without one).
pub(crate) fn period_now(m: CreditMeter, pool_period: u64, now_ms: i64) -> u64 {
    m.refill.map_or(pool_period, |r| {
        r.period_at(m.meter.since, UnixMillis::from_millis(now_ms))
            .max(pool_period)
    })
}

/// How much of `remaining` to grant to an instance that asks for `want`
/// and needs at least `need` (one request's cost) to serve anything:
/// `want`, while the pool holds twice that; below, half of what is left
/// (rounded up), so the last credits spread over the instances that ask
/// instead of sitting in one; never less than `need`, never more than
/// `remaining`.
pub fn grant(remaining: u64, want: u64, need: u64) -> u64 {
    let mut granted = want;
    if remaining < want.saturating_mul(2) {
        granted = granted.min(remaining.div_ceil(2));
    }
    granted.max(need).min(remaining)
}

/// `n` clamped to `0..=MAX_CREDITS`, as a column value.
pub(crate) fn col(n: u64) -> i64 {
    i64::try_from(n.min(MAX_CREDITS)).unwrap_or(0)
}

/// A column value as credits (a negative one, which no write produces, as 0).
pub(crate) fn credits(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0).min(MAX_CREDITS)
}

/// A period as a column value.
pub(crate) fn period_col(p: u64) -> i64 {
    i64::try_from(p).unwrap_or(i64::MAX)
}

/// A period column as a period.
pub(crate) fn period_of(p: i64) -> u64 {
    u64::try_from(p).unwrap_or(0)
}

/// `a + b`, clamped at [`MAX_CREDITS`].
pub(crate) fn add(a: u64, b: u64) -> u64 {
    a.saturating_add(b).min(MAX_CREDITS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grants_shrink_near_zero_down_to_one() {
        assert_eq!(grant(10_000, 100, 1), 100);
        assert_eq!(grant(200, 100, 1), 100);
        assert_eq!(grant(199, 100, 1), 100);
        assert_eq!(grant(150, 100, 1), 75);
        assert_eq!(grant(3, 100, 1), 2);
        assert_eq!(grant(1, 100, 1), 1);
        assert_eq!(grant(0, 100, 1), 0);
        assert_eq!(grant(50, 0, 0), 0);
        // One request's cost is granted whole if the pool holds it.
        assert_eq!(grant(10, 20, 10), 10);
        assert_eq!(grant(9, 20, 10), 9);
        assert_eq!(grant(MAX_CREDITS, u64::MAX, 1), MAX_CREDITS.div_ceil(2));
    }

    #[test]
    fn a_refill_boundary_sets_the_pool_back() {
        let meter = Meter {
            id: KeyId::parse("0000000000000001").unwrap(),
            since: UnixMillis::from_millis(1_000),
        };
        let r = Refill::new(50, std::time::Duration::from_secs(10)).unwrap();
        let m = CreditMeter {
            meter,
            refill: Some(r),
        };
        let plain = CreditMeter {
            meter,
            refill: None,
        };
        assert_eq!(refilled((7, 0), m, 10_999), ((7, 0), false));
        assert_eq!(refilled((7, 0), m, 11_000), ((50, 1), true));
        assert_eq!(refilled((7, 3), plain, 99_999), ((7, 3), false));
        assert_eq!(period_now(m, 0, 31_000), 3);
        // A pool ahead of this clock (another instance's) stays current.
        assert_eq!(period_now(m, 5, 31_000), 5);
        assert_eq!(period_now(plain, 2, 31_000), 2);
    }
}
