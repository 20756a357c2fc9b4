//! The credit pool and lease methods, at explicit times, run against both
//! stores (`sqlite/tests.rs`, `postgres/tests.rs`).

use std::time::Duration;

use keygate::{KeyId, Meter, Refill, UnixMillis, MAX_CREDITS};

use super::{CreditMeter, Lease, LeaseReport, Store};

fn meter(n: u8, since_ms: i64, refill: Option<Refill>) -> CreditMeter {
    CreditMeter {
        meter: Meter {
            id: KeyId::parse(&format!("{n:0>16}")).unwrap(),
            since: UnixMillis::from_millis(since_ms),
        },
        refill,
    }
}

const TTL: i64 = 10_000;

async fn lease(store: &dyn Store, m: CreditMeter, who: &str, want: u64, at: i64) -> Lease {
    store.lease_credits(m, who, want, 1, at, TTL).await.unwrap()
}

async fn total(store: &dyn Store, m: CreditMeter, at: i64) -> Option<u64> {
    store.credit_total(m, at).await.unwrap()
}

/// A meter without a pool row has no credits: nothing is granted.
pub async fn no_pool_no_credits(store: &dyn Store) {
    let m = meter(1, 0, None);
    let l = lease(store, m, "A", 10, 5).await;
    assert_eq!((l.granted, l.pool, l.elsewhere), (0, 0, 0));
    assert_eq!(total(store, m, 5).await, None);
    assert_eq!(store.add_credits(m, 5, 5).await.unwrap(), None);
    assert!(!store.return_credits(m, "A", 3, 0, 0, 5).await.unwrap());
}

/// Grants come out of the pool and shrink near zero, down to one credit,
/// never more than the pool; the total counts the leases.
pub async fn grants_shrink_near_zero(store: &dyn Store) {
    let m = meter(2, 0, None);
    assert_eq!(store.set_credits(m, 100, 1).await.unwrap(), 100);
    let a = lease(store, m, "A", 30, 2).await;
    assert_eq!((a.granted, a.period, a.pool, a.elsewhere), (30, 0, 70, 0));
    let b = lease(store, m, "B", 30, 3).await;
    assert_eq!((b.granted, b.pool, b.elsewhere), (30, 40, 30));
    assert_eq!(total(store, m, 4).await, Some(100));
    // 40 < 2 × 30: half of what is left.
    assert_eq!(lease(store, m, "A", 30, 5).await.granted, 20);
    assert_eq!(lease(store, m, "B", 30, 6).await.granted, 10);
    let mut grants = Vec::new();
    loop {
        let l = lease(store, m, "A", 30, 7).await;
        if l.granted == 0 {
            assert_eq!(l.pool, 0);
            break;
        }
        grants.push(l.granted);
    }
    assert_eq!(grants, [5, 3, 1, 1]);
    // Every credit is in a lease: A holds 30 + 20 + 10, B 30 + 10.
    assert_eq!(total(store, m, 8).await, Some(100));
    // One request's cost is granted whole when the pool holds it.
    store.add_credits(m, 10, 9).await.unwrap();
    let l = store.lease_credits(m, "B", 20, 10, 9, TTL).await.unwrap();
    assert_eq!((l.granted, l.pool), (10, 0));
}

/// Returns go back to the pool within the period; the row keeps what the
/// instance still holds, or goes.
pub async fn returns_and_renewals(store: &dyn Store) {
    let m = meter(3, 0, None);
    store.set_credits(m, 100, 1).await.unwrap();
    lease(store, m, "A", 40, 2).await;
    // A spent 10 of 40, hands back 25, keeps 5.
    assert!(store.return_credits(m, "A", 25, 0, 5, 3).await.unwrap());
    assert_eq!(total(store, m, 4).await, Some(90));
    // A renewal records what is left; the pool answers with the others'
    // leases.
    lease(store, m, "B", 10, 5).await;
    let views = store
        .renew_leases(
            "A",
            6,
            TTL,
            &[LeaseReport {
                meter_id: m.meter.id,
                period: 0,
                unspent: 2,
            }],
        )
        .await
        .unwrap();
    assert_eq!(views.len(), 1);
    assert_eq!(
        (views[0].meter_id, views[0].remaining, views[0].period),
        (m.meter.id, 75, 0)
    );
    assert_eq!(views[0].elsewhere, 10);
    assert_eq!(total(store, m, 7).await, Some(87));
    // A returns its last 2: its row goes.
    assert!(store.return_credits(m, "A", 2, 0, 0, 8).await.unwrap());
    assert_eq!(total(store, m, 9).await, Some(87));
    // A report of nothing left removes B's row too.
    store
        .renew_leases(
            "B",
            10,
            TTL,
            &[LeaseReport {
                meter_id: m.meter.id,
                period: 0,
                unspent: 0,
            }],
        )
        .await
        .unwrap();
    assert_eq!(total(store, m, 11).await, Some(77));
}

/// A refill sets the pool back and voids the leases of the past period:
/// their returns lapse.
pub async fn a_refill_voids_old_leases(store: &dyn Store) {
    let r = Refill::new(50, Duration::from_secs(10)).unwrap();
    let m = meter(4, 1_000, Some(r));
    store.set_credits(m, 20, 1_000).await.unwrap();
    let a = lease(store, m, "A", 15, 2_000).await;
    assert_eq!((a.granted, a.period, a.pool), (10, 0, 10));
    // Period 1 starts at 11 000: the pool is 50 again, A's lease void.
    assert_eq!(total(store, m, 10_999).await, Some(20));
    assert_eq!(total(store, m, 11_000).await, Some(50));
    let b = lease(store, m, "B", 15, 11_500).await;
    assert_eq!((b.granted, b.period, b.pool, b.elsewhere), (15, 1, 35, 0));
    // A's credits of period 0 lapsed: not back into the pool.
    assert!(!store
        .return_credits(m, "A", 10, 0, 0, 12_000)
        .await
        .unwrap());
    assert_eq!(total(store, m, 12_000).await, Some(50));
    // A return within the period goes back.
    assert!(store
        .return_credits(m, "B", 5, 1, 10, 12_500)
        .await
        .unwrap());
    assert_eq!(total(store, m, 12_500).await, Some(50));
    // Two periods later: 50, not 100; B's lease void.
    assert_eq!(total(store, m, 31_000).await, Some(50));
    let a = lease(store, m, "A", 100, 31_000).await;
    assert_eq!((a.granted, a.period, a.pool), (25, 3, 25));
    // Adds go into the current period's pool.
    assert_eq!(store.add_credits(m, 7, 31_500).await.unwrap(), Some(57));
    assert_eq!(
        store.add_credits(m, -1_000, 31_600).await.unwrap(),
        Some(25)
    );
    assert_eq!(
        store.add_credits(m, i64::MAX, 31_700).await.unwrap(),
        Some(MAX_CREDITS)
    );
}

/// Leases not renewed within their time-to-live are deleted and forfeited
/// (never returned); a renewal from an instance that was only cut off
/// writes its row again.
pub async fn expiry_forfeits(store: &dyn Store) {
    let m = meter(5, 0, None);
    store.set_credits(m, 100, 0).await.unwrap();
    lease(store, m, "A", 30, 0).await;
    lease(store, m, "B", 20, 1_000).await;
    // A renews at 5 000 (to 15 000); B's lease runs to 11 000.
    store.renew_leases("A", 5_000, TTL, &[]).await.unwrap();
    let none = store.expire_leases(11_000).await.unwrap();
    assert_eq!((none.leases, none.forfeited), (0, 0));
    let gone = store.expire_leases(11_001).await.unwrap();
    assert_eq!((gone.leases, gone.forfeited), (1, 20));
    // B's 20 are forfeited: the total no longer counts them, and the pool
    // did not get them back.
    assert_eq!(total(store, m, 11_001).await, Some(80));
    let views = store
        .renew_leases(
            "B",
            11_002,
            TTL,
            &[LeaseReport {
                meter_id: m.meter.id,
                period: 0,
                unspent: 12,
            }],
        )
        .await
        .unwrap();
    assert_eq!((views[0].remaining, views[0].elsewhere), (50, 30));
    assert_eq!(total(store, m, 11_003).await, Some(92));
    // B may still hand them back: they were never returned by the expiry.
    assert!(store
        .return_credits(m, "B", 12, 0, 0, 11_004)
        .await
        .unwrap());
    assert_eq!(total(store, m, 11_005).await, Some(92));
}

/// Setting the credits leaves what instances hold with them: the pool gets
/// the rest; a changed refill numbers periods anew.
pub async fn set_counts_the_leases(store: &dyn Store) {
    let m = meter(6, 0, None);
    store.set_credits(m, 100, 0).await.unwrap();
    lease(store, m, "A", 30, 0).await;
    assert_eq!(store.set_credits(m, 50, 1).await.unwrap(), 50);
    let l = lease(store, m, "B", 10, 2).await;
    assert_eq!((l.granted, l.pool), (10, 10));
    // Less than the leases hold: the pool is empty, the leases stay.
    assert_eq!(store.set_credits(m, 10, 3).await.unwrap(), 40);
    assert_eq!(total(store, m, 4).await, Some(40));
    // A refill from now on: period 0 of a daily refill, counted from `since`.
    let daily = Refill::new(7, Duration::from_secs(86_400)).unwrap();
    let refilled = CreditMeter {
        refill: Some(daily),
        ..m
    };
    assert_eq!(store.set_credits(refilled, 5, 5).await.unwrap(), 40);
    assert_eq!(total(store, refilled, 86_400_000).await, Some(7));
}

/// Every scenario above, on `store`.
pub async fn all(store: &dyn Store) {
    // First: its expiry pass would take the later scenarios' leases too.
    expiry_forfeits(store).await;
    no_pool_no_credits(store).await;
    grants_shrink_near_zero(store).await;
    returns_and_renewals(store).await;
    a_refill_voids_old_leases(store).await;
    set_counts_the_leases(store).await;
}
