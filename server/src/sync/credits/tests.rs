//! Credit leases: at explicit times on SQLite (one instance, several, a
//! store that fails), a model of random runs, and the accuracy target on a
//! real PostgreSQL (`postgres_tests.rs`).

use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use keygate::{Change, KeyId, KeyRecord, Meter, Refill, UnixMillis};

use super::*;
use crate::store::sqlite::SqliteStore;
use crate::store::{
    CreditMeter, Event, Expired, KeyPage, KeyUsage, Lease, LeaseReport, LeaseWriteError,
    LimitsChange, PoolView, Pruned, Scope, SetOrAdd, Snapshot, Store, StoreError, StoredKey,
    UsageQuery, UsageRow,
};

pub(super) fn at(ms: i64) -> UnixMillis {
    UnixMillis::from_millis(ms)
}

pub(super) fn meter(n: u8, since_ms: i64) -> Meter {
    Meter {
        id: KeyId::parse(&format!("{n:0>16}")).unwrap(),
        since: at(since_ms),
    }
}

pub(super) fn cm(m: Meter, refill: Option<Refill>) -> CreditMeter {
    CreditMeter { meter: m, refill }
}

fn sqlite() -> (tempfile::TempDir, Arc<dyn Store>) {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("k.db")).unwrap();
    (dir, Arc::new(store))
}

/// A store that can be taken down, or made to lose the answer of its next
/// lease write (applied or not): what a database that stops, or a
/// connection that drops while committing, does to the leases.
pub(super) struct Flaky {
    inner: Arc<dyn Store>,
    down: AtomicBool,
    /// 0: answer; 1: apply the next lease write and lose its answer;
    /// 2: lose the next lease write and its answer.
    doubt: AtomicU8,
    /// Changes the log answers with once, instead of the inner store's.
    feed: std::sync::Mutex<Vec<Change>>,
}

impl Flaky {
    pub(super) fn new(inner: Arc<dyn Store>) -> Flaky {
        Flaky {
            inner,
            down: AtomicBool::new(false),
            doubt: AtomicU8::new(0),
            feed: std::sync::Mutex::new(Vec::new()),
        }
    }

    fn check(&self) -> Result<(), StoreError> {
        if self.down.load(Ordering::Relaxed) {
            Err(StoreError::Unavailable(String::from("down for the test")))
        } else {
            Ok(())
        }
    }

    fn in_doubt() -> LeaseWriteError {
        LeaseWriteError {
            error: StoreError::Unavailable(String::from("connection lost while committing")),
            maybe_applied: true,
        }
    }
}

#[async_trait]
impl Store for Flaky {
    async fn create(&self, r: &KeyRecord, a: Option<KeyId>, t: i64) -> Result<u64, StoreError> {
        self.inner.create(r, a, t).await
    }
    async fn create_first(&self, r: &KeyRecord, t: i64) -> Result<Option<u64>, StoreError> {
        self.inner.create_first(r, t).await
    }
    async fn revoke(
        &self,
        id: KeyId,
        scope: Scope,
        cascade: bool,
        actor: Option<KeyId>,
        t: i64,
    ) -> Result<Vec<(u64, KeyId)>, StoreError> {
        self.inner.revoke(id, scope, cascade, actor, t).await
    }
    async fn roll(
        &self,
        old: &KeyRecord,
        new: &KeyRecord,
        scope: Scope,
        actor: Option<KeyId>,
        t: i64,
    ) -> Result<(u64, u64), StoreError> {
        self.inner.roll(old, new, scope, actor, t).await
    }
    async fn set_limits(
        &self,
        id: KeyId,
        change: LimitsChange,
        scope: Scope,
        actor: Option<KeyId>,
        t: i64,
    ) -> Result<Vec<(u64, KeyRecord)>, StoreError> {
        self.inner.set_limits(id, change, scope, actor, t).await
    }
    async fn change_credits(
        &self,
        meter: Meter,
        op: SetOrAdd,
        now: UnixMillis,
    ) -> Result<u64, StoreError> {
        self.check()?;
        self.inner.change_credits(meter, op, now).await
    }
    async fn credit_balance(
        &self,
        meter: Meter,
        now: UnixMillis,
    ) -> Result<Option<u64>, StoreError> {
        self.inner.credit_balance(meter, now).await
    }
    async fn is_rolled(&self, id: KeyId) -> Result<bool, StoreError> {
        self.inner.is_rolled(id).await
    }
    async fn get(&self, id: KeyId, scope: Scope) -> Result<Option<StoredKey>, StoreError> {
        self.inner.get(id, scope).await
    }
    async fn list(
        &self,
        scope: Scope,
        after: Option<KeyId>,
        limit: usize,
    ) -> Result<KeyPage, StoreError> {
        self.inner.list(scope, after, limit).await
    }
    async fn events(
        &self,
        after: u64,
        limit: usize,
        scope: Scope,
    ) -> Result<(Vec<Event>, bool), StoreError> {
        self.inner.events(after, limit, scope).await
    }
    async fn changes_since(&self, after: u64, limit: usize) -> Result<Vec<Change>, StoreError> {
        let fed = std::mem::take(&mut *self.feed.lock().unwrap());
        if !fed.is_empty() {
            return Ok(fed);
        }
        self.inner.changes_since(after, limit).await
    }
    async fn snapshot(&self) -> Result<Snapshot, StoreError> {
        self.inner.snapshot().await
    }
    async fn check_caller(&self, id: KeyId, t: i64) -> Result<(), StoreError> {
        self.inner.check_caller(id, t).await
    }
    fn corrupt_rows(&self) -> u64 {
        self.inner.corrupt_rows()
    }
    async fn record_last_used(&self, batch: &[(KeyId, i64)]) -> Result<(), StoreError> {
        self.inner.record_last_used(batch).await
    }
    async fn record_usage(&self, batch: &[UsageRow]) -> Result<(), StoreError> {
        self.inner.record_usage(batch).await
    }
    async fn usage(
        &self,
        id: KeyId,
        scope: Scope,
        query: UsageQuery,
    ) -> Result<Option<KeyUsage>, StoreError> {
        self.inner.usage(id, scope, query).await
    }
    async fn prune_usage(&self, now_ms: i64, limit: usize) -> Result<Pruned, StoreError> {
        self.inner.prune_usage(now_ms, limit).await
    }
    async fn count(&self) -> Result<u64, StoreError> {
        self.inner.count().await
    }
    async fn ping(&self) -> Result<(), StoreError> {
        self.check()?;
        self.inner.ping().await
    }
    async fn head_seq(&self) -> Result<u64, StoreError> {
        self.check()?;
        self.inner.head_seq().await
    }
    async fn check_pepper(&self, fingerprint: [u8; 32]) -> Result<(), StoreError> {
        self.inner.check_pepper(fingerprint).await
    }
    async fn lease_credits(
        &self,
        m: CreditMeter,
        instance: &str,
        want: u64,
        need: u64,
        now_ms: i64,
        ttl_ms: i64,
    ) -> Result<Lease, LeaseWriteError> {
        self.check()?;
        match self.doubt.swap(0, Ordering::Relaxed) {
            1 => {
                self.inner
                    .lease_credits(m, instance, want, need, now_ms, ttl_ms)
                    .await?;
                Err(Flaky::in_doubt())
            }
            2 => Err(Flaky::in_doubt()),
            _ => {
                self.inner
                    .lease_credits(m, instance, want, need, now_ms, ttl_ms)
                    .await
            }
        }
    }
    async fn return_credits(
        &self,
        m: CreditMeter,
        instance: &str,
        amount: u64,
        period: u64,
        kept: u64,
        now_ms: i64,
    ) -> Result<bool, LeaseWriteError> {
        self.check()?;
        match self.doubt.swap(0, Ordering::Relaxed) {
            1 => {
                self.inner
                    .return_credits(m, instance, amount, period, kept, now_ms)
                    .await?;
                Err(Flaky::in_doubt())
            }
            2 => Err(Flaky::in_doubt()),
            _ => {
                self.inner
                    .return_credits(m, instance, amount, period, kept, now_ms)
                    .await
            }
        }
    }
    async fn renew_leases(
        &self,
        instance: &str,
        now_ms: i64,
        ttl_ms: i64,
        reports: &[LeaseReport],
    ) -> Result<Vec<PoolView>, StoreError> {
        self.check()?;
        self.inner
            .renew_leases(instance, now_ms, ttl_ms, reports)
            .await
    }
    async fn expire_leases(&self, now_ms: i64) -> Result<Expired, StoreError> {
        self.check()?;
        self.inner.expire_leases(now_ms).await
    }
    async fn credit_total(&self, m: CreditMeter, now_ms: i64) -> Result<Option<u64>, StoreError> {
        self.check()?;
        self.inner.credit_total(m, now_ms).await
    }
    async fn exchange_demand(
        &self,
        report: &crate::store::DemandReport,
    ) -> Result<crate::store::PeerDemand, StoreError> {
        self.check()?;
        self.inner.exchange_demand(report).await
    }
    async fn withdraw_demand(&self, instance: &str) -> Result<(), StoreError> {
        self.check()?;
        self.inner.withdraw_demand(instance).await
    }
    async fn set_credits(
        &self,
        m: CreditMeter,
        remaining: u64,
        now_ms: i64,
    ) -> Result<u64, StoreError> {
        self.check()?;
        self.inner.set_credits(m, remaining, now_ms).await
    }
    async fn add_credits(
        &self,
        m: CreditMeter,
        delta: i64,
        now_ms: i64,
    ) -> Result<Option<u64>, StoreError> {
        self.check()?;
        self.inner.add_credits(m, delta, now_ms).await
    }
    fn shared(&self) -> bool {
        self.inner.shared()
    }
}

/// Spends `n` requests of `cost` at `now`; returns how many were allowed.
fn spend_n(l: &CreditLeases, m: Meter, r: Option<Refill>, cost: u64, n: u64, now: i64) -> u64 {
    (0..n)
        .filter(|_| l.spend(m, r, cost, at(now)).allowed)
        .count() as u64
}

#[tokio::test]
async fn one_instance_alone_is_exact() {
    let (_dir, store) = sqlite();
    let m = meter(1, 0);
    store.set_credits(cm(m, None), 25_000, 0).await.unwrap();
    let l = CreditLeases::new(Arc::clone(&store), LeaseConfig::sole());
    l.ensure(m, None);
    let mut t = 0;
    l.tick(at(t)).await;
    assert_eq!(l.held(&m.id), 10_000);
    // 2 000 requests a second (100 a tick): the lease never runs dry
    // before the pool does, so every refusal is the last credit's.
    let mut allowed = 0;
    loop {
        let mut refused = None;
        for _ in 0..100 {
            let s = l.spend(m, None, 1, at(t));
            if s.allowed {
                allowed += 1;
            } else {
                refused = Some(s);
                break;
            }
        }
        if let Some(s) = refused {
            assert_eq!(allowed, 25_000);
            assert_eq!((s.remaining, s.retry_after), (0, None));
            break;
        }
        t += 50;
        l.tick(at(t)).await;
        assert!(t < 100_000);
    }
    // Every lease write was one per tick at most; far fewer in fact.
    let writes = l.meter_writes(&m.id);
    assert!(writes <= 12, "{writes} writes");
    // The total counts the lease as last renewed: 0 after the next renewal.
    t += 1_000;
    l.tick(at(t)).await;
    assert_eq!(store.credit_total(cm(m, None), t).await.unwrap(), Some(0));
    // An add is leased at the next tick (a refused request asked for it).
    store.add_credits(cm(m, None), 3, t).await.unwrap();
    assert!(!l.spend(m, None, 1, at(t)).allowed);
    l.tick(at(t + 1_000)).await;
    assert_eq!(spend_n(&l, m, None, 1, 5, t + 1_000), 3);
}

#[tokio::test]
async fn a_refill_boundary_lapses_the_lease_and_the_next_one_comes_within_a_tick() {
    let (_dir, store) = sqlite();
    let refill = Some(Refill::new(100, Duration::from_secs(10)).unwrap());
    let m = meter(2, 1_000);
    store.set_credits(cm(m, refill), 30, 1_000).await.unwrap();
    let l = CreditLeases::new(Arc::clone(&store), LeaseConfig::sole());
    l.ensure(m, refill);
    l.tick(at(1_000)).await;
    assert_eq!(spend_n(&l, m, refill, 1, 40, 2_000), 30);
    // Spent: the next refill (at 11 000) covers a retry.
    let s = l.spend(m, refill, 1, at(3_000));
    assert_eq!((s.allowed, s.remaining), (false, 0));
    assert_eq!(s.retry_after, Some(Duration::from_millis(8_000)));
    // A cost above the refill: no retry helps.
    assert_eq!(l.spend(m, refill, 101, at(3_000)).retry_after, None);
    // The boundary passed, the background has not leased yet: refused,
    // retry in a second; the lease comes at the next tick.
    let s = l.spend(m, refill, 1, at(11_000));
    assert!(!s.allowed);
    assert_eq!(
        (s.remaining, s.retry_after),
        (100, Some(Duration::from_secs(1)))
    );
    l.tick(at(11_010)).await;
    assert_eq!(spend_n(&l, m, refill, 1, 150, 11_020), 100);
}

#[tokio::test]
async fn a_cost_of_zero_asks_and_spends_nothing() {
    let (_dir, store) = sqlite();
    let m = meter(3, 0);
    store.set_credits(cm(m, None), 2, 0).await.unwrap();
    let l = CreditLeases::new(Arc::clone(&store), LeaseConfig::sole());
    // Before `ensure`: registered, refused once.
    let s = l.spend(m, None, 1, at(0));
    assert_eq!(
        (s.allowed, s.retry_after),
        (false, Some(Duration::from_secs(1)))
    );
    l.tick(at(0)).await;
    let s = l.spend(m, None, 0, at(1));
    assert_eq!((s.allowed, s.remaining), (true, 2));
    assert_eq!(spend_n(&l, m, None, 2, 1, 1), 1);
    let s = l.spend(m, None, 0, at(2));
    assert_eq!((s.allowed, s.retry_after), (false, None));
}

#[tokio::test]
async fn idle_leases_go_back_and_the_last_credits_go_where_the_demand_is() {
    let (_dir, store) = sqlite();
    let m = meter(4, 0);
    store.set_credits(cm(m, None), 10_000, 0).await.unwrap();
    let cfg = LeaseConfig::shared();
    let a = CreditLeases::new(Arc::clone(&store), cfg);
    let b = CreditLeases::new(Arc::clone(&store), cfg);
    a.ensure(m, None);
    b.ensure(m, None);
    let mut t = 0;
    a.tick(at(t)).await;
    b.tick(at(t)).await;
    assert_eq!((a.held(&m.id), b.held(&m.id)), (10, 10));
    // A serves 20 requests a tick (400 a second) for a second; B nothing.
    let mut allowed = 0;
    for _ in 0..20 {
        allowed += spend_n(&a, m, None, 1, 20, t);
        t += 50;
        a.tick(at(t)).await;
        b.tick(at(t)).await;
    }
    assert!(a.held(&m.id) > 100, "{}", a.held(&m.id));
    // B was idle for a second: it keeps one floor's worth.
    assert_eq!(b.held(&m.id), 10);
    // A stops; a second later its lease shrinks back to the floor.
    for _ in 0..22 {
        t += 50;
        a.tick(at(t)).await;
        b.tick(at(t)).await;
    }
    assert_eq!(a.held(&m.id), 10);
    // B now spends everything that is left, at 200 a tick.
    let exhausted = loop {
        allowed += spend_n(&b, m, None, 1, 200, t);
        t += 50;
        a.tick(at(t)).await;
        b.tick(at(t)).await;
        if allowed == 10_000 {
            break t;
        }
        assert!(t < 200_000, "stuck at {allowed}");
    };
    // All of it: A handed its last ten back once the pool was empty.
    eprintln!("the last credit spent at {exhausted} ms");
    for _ in 0..30 {
        t += 50;
        a.tick(at(t)).await;
        b.tick(at(t)).await;
    }
    assert_eq!(a.held(&m.id) + b.held(&m.id), 0);
    let s = b.spend(m, None, 1, at(t));
    assert_eq!((s.allowed, s.retry_after), (false, None));
    assert_eq!(store.credit_total(cm(m, None), t).await.unwrap(), Some(0));
}

#[tokio::test]
async fn the_store_down_spends_what_is_leased_and_nothing_is_lost() {
    let (_dir, inner) = sqlite();
    let m = meter(5, 0);
    inner.set_credits(cm(m, None), 1_000, 0).await.unwrap();
    let flaky = Arc::new(Flaky::new(Arc::clone(&inner)));
    let l = CreditLeases::new(flaky.clone(), LeaseConfig::shared());
    l.ensure(m, None);
    l.tick(at(0)).await;
    // Demand of 10 a tick: leases of a second's demand and more.
    let mut t = 0;
    let mut allowed = 0;
    for _ in 0..10 {
        allowed += spend_n(&l, m, None, 1, 10, t);
        t += 50;
        l.tick(at(t)).await;
    }
    let held = l.held(&m.id);
    assert!(held > 0);
    flaky.down.store(true, Ordering::Relaxed);
    // Down: what is leased is spent, then refusals with a retry.
    let mut down_allowed = 0;
    for _ in 0..40 {
        down_allowed += spend_n(&l, m, None, 1, 10, t);
        t += 50;
        l.tick(at(t)).await;
    }
    assert_eq!(down_allowed, held);
    let s = l.spend(m, None, 1, at(t));
    assert_eq!(
        (s.allowed, s.retry_after),
        (false, Some(Duration::from_secs(1)))
    );
    assert!(l.stats().errors > 0);
    allowed += down_allowed;
    // Back: the rest, exactly.
    flaky.down.store(false, Ordering::Relaxed);
    for _ in 0..400 {
        allowed += spend_n(&l, m, None, 1, 10, t);
        t += 50;
        l.tick(at(t)).await;
    }
    assert_eq!(allowed, 1_000);
    assert_eq!(l.stats().possibly_lost, 0);
}

#[tokio::test]
async fn a_write_in_doubt_is_counted_as_lost_never_as_spendable_twice() {
    let (_dir, inner) = sqlite();
    let m = meter(6, 0);
    inner.set_credits(cm(m, None), 50, 0).await.unwrap();
    let flaky = Arc::new(Flaky::new(Arc::clone(&inner)));
    let l = CreditLeases::new(flaky.clone(), LeaseConfig::shared());
    l.ensure(m, None);
    // The first lease commits, but its answer is lost: the credits are
    // gone from the pool and not held here.
    flaky.doubt.store(1, Ordering::Relaxed);
    l.tick(at(0)).await;
    assert_eq!(l.held(&m.id), 0);
    assert_eq!(l.stats().possibly_lost, 10);
    // The next tick leases again (the meter is still new).
    l.tick(at(50)).await;
    assert_eq!(l.held(&m.id), 10);
    // A return whose commit is in doubt (and did not commit): taken as
    // done; the credits are out of this instance.
    l.forget(&m.id);
    flaky.doubt.store(2, Ordering::Relaxed);
    l.tick(at(100)).await;
    assert_eq!(l.held(&m.id), 0);
    assert_eq!(l.stats().possibly_lost, 20);
    // The pool holds the rest: 50 − 10 (lost in the lease) − 10 (lost in
    // the return).
    // The row holds what the last renewal reported (10), not the 20
    // granted: forfeited when it expires.
    assert_eq!(inner.expire_leases(i64::MAX).await.unwrap().forfeited, 10);
    assert_eq!(
        inner.credit_total(cm(m, None), 200).await.unwrap(),
        Some(30)
    );
}

#[tokio::test]
async fn a_changed_refill_takes_the_lease_anew() {
    let (_dir, store) = sqlite();
    let m = meter(7, 0);
    store.set_credits(cm(m, None), 100, 0).await.unwrap();
    let l = CreditLeases::new(Arc::clone(&store), LeaseConfig::sole());
    l.ensure(m, None);
    l.tick(at(0)).await;
    assert_eq!(l.held(&m.id), 100);
    // The key's refill changed (its change arrived, or a request carries it).
    let refill = Some(Refill::new(10, Duration::from_secs(60)).unwrap());
    let s = l.spend(m, refill, 1, at(10));
    assert_eq!(
        (s.allowed, s.retry_after),
        (false, Some(Duration::from_secs(1)))
    );
    // The background hands the lease back and takes it anew under it.
    l.tick(at(50)).await;
    l.tick(at(100)).await;
    assert_eq!(spend_n(&l, m, refill, 1, 200, 150), 100);
}

#[tokio::test]
async fn a_graceful_shutdown_returns_everything() {
    let (_dir, store) = sqlite();
    let m = meter(8, 0);
    store.set_credits(cm(m, None), 40_000, 0).await.unwrap();
    let l = Arc::new(CreditLeases::new(Arc::clone(&store), LeaseConfig::sole()));
    l.ensure(m, None);
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(Arc::clone(&l).run(stopped));
    while l.held(&m.id) == 0 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(spend_n(&l, m, None, 1, 7, crate::clock::now_ms()), 7);
    stop.send(true).unwrap();
    task.await.unwrap();
    assert_eq!(l.held(&m.id), 0);
    let now = crate::clock::now_ms();
    assert_eq!(
        store.credit_total(cm(m, None), now).await.unwrap(),
        Some(39_993)
    );
    assert_eq!(store.expire_leases(i64::MAX).await.unwrap().leases, 0);
}

#[tokio::test]
async fn ensure_now_leases_before_the_first_request() {
    let (_dir, store) = sqlite();
    let m = meter(10, 0);
    store.set_credits(cm(m, None), 100, 0).await.unwrap();
    let l = CreditLeases::new(Arc::clone(&store), LeaseConfig::shared());
    assert!(!l.config().sole);
    let id = l.instance();
    assert!(
        id.len() == 16 && id.bytes().all(|b| b.is_ascii_alphanumeric()),
        "{id}"
    );
    assert_ne!(
        id,
        CreditLeases::new(Arc::clone(&store), LeaseConfig::shared()).instance()
    );
    l.ensure_now(m, None, at(1)).await;
    // A burst of ten passes at once: the floor's worth; the eleventh is
    // asked to come back when the next lease is in.
    assert_eq!(spend_n(&l, m, None, 1, 10, 2), 10);
    let s = l.spend(m, None, 1, at(2));
    assert_eq!(
        (s.allowed, s.remaining, s.retry_after),
        (false, 90, Some(RETRY))
    );
}
/// The follower's thread runs the leases' background and, at shutdown,
/// awaits it: every lease is back in the pool when the thread ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_follower_runs_the_leases_and_returns_them_when_it_stops() {
    let (_dir, store) = sqlite();
    let m = meter(11, 0);
    store.set_credits(cm(m, None), 50_000, 0).await.unwrap();
    let cache = crate::sync::cache::KeyCache::new(keygate::Pepper::from_bytes(&[1; 32]), 0);
    let keys = Arc::new(crate::sync::Keys::new(cache, Arc::clone(&store)));
    let credits = Arc::clone(keys.credits());
    assert!(credits.config().sole, "SQLite: one instance");
    credits.ensure(m, None);
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let (thread, first_read) = crate::sync::follow::spawn(
        Arc::clone(&keys),
        0,
        crate::sync::follow::Intervals::default(),
        stopped,
    )
    .unwrap();
    first_read.await.unwrap();
    while credits.held(&m.id) == 0 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(credits.held(&m.id), 10_000);
    assert_eq!(spend_n(&credits, m, None, 1, 5, crate::clock::now_ms()), 5);
    stop.send(true).unwrap();
    tokio::task::spawn_blocking(move || thread.join().unwrap())
        .await
        .unwrap();
    assert_eq!(credits.held(&m.id), 0);
    let now = crate::clock::now_ms();
    assert_eq!(
        store.credit_total(cm(m, None), now).await.unwrap(),
        Some(49_995)
    );
}

/// A key with credits arriving in the change log gets its meter a lease
/// before its first request here.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_metered_key_from_the_log_is_leased_for() {
    let (_dir, inner) = sqlite();
    let flaky = Arc::new(Flaky::new(Arc::clone(&inner)));
    let pepper = keygate::Pepper::from_bytes(&[2; 32]);
    let now = at(crate::clock::now_ms());
    let limits = keygate::KeyLimits {
        rate: None,
        credits: Some(keygate::Credits::new(500, None).unwrap()),
    };
    let request = keygate::MintRequest::standard(Some("metered"), None, now)
        .unwrap()
        .with_limits(limits);
    let record = keygate::mint(&pepper, &request, &mut keygate::os_entropy(), now)
        .into_parts()
        .0;
    let m = record.meter();
    inner
        .set_credits(cm(m, None), 500, now.as_millis())
        .await
        .unwrap();
    flaky
        .feed
        .lock()
        .unwrap()
        .push(Change::upsert(1, record.clone()));
    let cache = crate::sync::cache::KeyCache::new(pepper, 0);
    let keys = Arc::new(crate::sync::Keys::new(cache, flaky.clone()));
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let (thread, first_read) = crate::sync::follow::spawn(
        Arc::clone(&keys),
        0,
        crate::sync::follow::Intervals::default(),
        stopped,
    )
    .unwrap();
    first_read.await.unwrap();
    let credits = Arc::clone(keys.credits());
    while credits.held(&m.id) == 0 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(credits.held(&m.id), 500);
    stop.send(true).unwrap();
    tokio::task::spawn_blocking(move || thread.join().unwrap())
        .await
        .unwrap();
    assert_eq!(credits.held(&m.id), 0);
}

mod model;
mod postgres;

/// A spend that takes the lease below its low level wakes the background
/// once, which tops the lease up between ticks to two seconds of the rate
/// since its last write: a burst is served from the first wake on.
#[tokio::test]
async fn a_lease_run_low_wakes_the_background_which_leases_for_the_burst() {
    let (_dir, store) = sqlite();
    let m = meter(12, 0);
    store
        .set_credits(cm(m, None), 1_000_000_000, 0)
        .await
        .unwrap();
    let l = CreditLeases::new(Arc::clone(&store), LeaseConfig::sole());
    l.ensure(m, None);
    l.tick(at(0)).await;
    assert_eq!(l.held(&m.id), 10_000);
    // Down to the low level (half the floor): no wake yet.
    assert_eq!(spend_n(&l, m, None, 1, 5_000, 5), 5_000);
    assert!(l.woken_now().is_empty());
    // Below it: one wake, however many spends follow.
    assert_eq!(spend_n(&l, m, None, 1, 100, 10), 100);
    assert_eq!(l.woken_now(), vec![m.id]);
    l.wake_pass(at(10)).await;
    assert!(l.woken_now().is_empty());
    // 5 100 credits in the 10 ms since the lease: 510 000 a second, two
    // seconds of which are now held.
    assert_eq!(l.held(&m.id), 1_020_000);
    assert_eq!(l.meter_writes(&m.id), 2);
    // Well above the new low level: spends wake nothing.
    assert_eq!(spend_n(&l, m, None, 1, 1_000, 11), 1_000);
    assert!(l.woken_now().is_empty());
}

/// Wakes write at most [`WRITE_BURST`] times at once per meter, then one
/// more per tick: a burst cannot turn every request into a store write.
#[tokio::test]
async fn wakes_write_within_the_meters_budget() {
    let (_dir, store) = sqlite();
    let m = meter(13, 0);
    store
        .set_credits(cm(m, None), 1_000_000_000, 0)
        .await
        .unwrap();
    let l = CreditLeases::new(Arc::clone(&store), LeaseConfig::shared());
    l.ensure(m, None);
    l.tick(at(0)).await;
    // Shared, the pool unseen: the configured floor.
    assert_eq!(l.held(&m.id), 10);
    for t in 1..=10 {
        // Spend the lease down to nothing: a wake each time it crosses its
        // low level (or a refusal finds the pool not empty).
        let held = l.held(&m.id);
        if held > 0 {
            assert!(l.spend(m, None, held, at(t)).allowed);
        }
        assert!(!l.spend(m, None, 1, at(t)).allowed);
        l.wake_pass(at(t)).await;
    }
    // The tick's write and three wakes' within the first tick, whatever the
    // ten wakes asked.
    assert_eq!(l.meter_writes(&m.id), WRITE_BURST);
    // Once the pool was seen, a thousandth of it (capped) is the floor.
    assert_eq!(l.held(&m.id), 0);
    l.tick(at(50)).await;
    assert_eq!(l.meter_writes(&m.id), WRITE_BURST + 1);
    assert!(l.held(&m.id) >= SHARED_FLOOR_CAP, "{}", l.held(&m.id));
}

/// Once the pool is seen empty, refusals wake nothing: the background asks
/// again in a second or at the refill, not at every request.
#[tokio::test]
async fn refusals_on_an_empty_pool_wake_nothing() {
    let (_dir, store) = sqlite();
    let m = meter(14, 0);
    store.set_credits(cm(m, None), 5, 0).await.unwrap();
    let l = CreditLeases::new(Arc::clone(&store), LeaseConfig::sole());
    l.ensure_now(m, None, at(0)).await;
    assert_eq!(spend_n(&l, m, None, 1, 100, 1), 5);
    assert!(l.woken_now().is_empty());
    // A cost the lease cannot cover while the pool is unseen does wake.
    let fresh = meter(15, 0);
    store.set_credits(cm(fresh, None), 500, 0).await.unwrap();
    l.ensure(fresh, None);
    assert!(!l.spend(fresh, None, 1, at(1)).allowed);
    assert_eq!(l.woken_now(), vec![fresh.id]);
    l.wake_pass(at(1)).await;
    assert_eq!(spend_n(&l, fresh, None, 1, 1_000, 2), 500);
}

/// A fresh key at full load, and again after it sat idle, is never refused
/// while its credits last: the background runs beside the spenders and is
/// woken as the lease runs low. Two threads spend 200 000 credits a second
/// each (four times what one server answers on this machine: the floor
/// lasts a quarter of a tick) for a second, then again after a second's
/// idle.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_key_at_full_load_is_never_refused_while_credits_remain() {
    let (_dir, store) = sqlite();
    let m = meter(16, 0);
    store
        .set_credits(cm(m, None), 1_000_000_000, 0)
        .await
        .unwrap();
    let l = Arc::new(CreditLeases::new(Arc::clone(&store), LeaseConfig::sole()));
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let background = tokio::spawn(Arc::clone(&l).run(stopped));
    l.ensure_now(m, None, UnixMillis::now()).await;
    for burst in 0..2 {
        let threads: Vec<_> = (0..2)
            .map(|_| {
                let l = Arc::clone(&l);
                std::thread::spawn(move || {
                    let start = std::time::Instant::now();
                    let (mut allowed, mut refused) = (0u64, 0u64);
                    while start.elapsed() < Duration::from_secs(1) {
                        // 200 a millisecond, paced.
                        let due = start.elapsed().as_micros() as u64 / 5;
                        while allowed + refused < due {
                            if l.spend(m, None, 1, UnixMillis::now()).allowed {
                                allowed += 1;
                            } else {
                                refused += 1;
                            }
                        }
                        std::thread::yield_now();
                    }
                    (allowed, refused)
                })
            })
            .collect();
        let mut total = (0, 0);
        for t in threads {
            let (a, r) = tokio::task::spawn_blocking(move || t.join().unwrap())
                .await
                .unwrap();
            total = (total.0 + a, total.1 + r);
        }
        eprintln!("burst {burst}: {} allowed, {} refused", total.0, total.1);
        assert!(total.0 >= 200_000, "burst {burst}: {total:?}");
        assert_eq!(total.1, 0, "burst {burst}: {total:?}");
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    stop.send(true).unwrap();
    background.await.unwrap();
}

/// A request served from a stale copy of a key (a limits change this
/// instance has yet to apply) must not bring the old refill back: the store
/// goes by the refill the meter's keys have, so a lease asked under the old
/// one is refused and the pool is never set back to the old amount (found
/// by the outside review: 360 000 allowed after a change to 100).
#[tokio::test]
async fn a_request_under_the_old_refill_during_a_patch_cannot_reset_the_pool() {
    let (_dir, store) = sqlite();
    let pepper = keygate::Pepper::from_bytes(&[9; 32]);
    let t0 = 100_000;
    let old = Some(Refill::new(1_000_000, Duration::from_secs(1)).unwrap());
    let new = Some(Refill::new(100, Duration::from_secs(30 * 86_400)).unwrap());
    // A real key in the store, so that the store knows the meter's refill.
    let limits = |refill: Option<Refill>, remaining| keygate::KeyLimits {
        rate: None,
        credits: Some(keygate::Credits::new(remaining, refill).unwrap()),
    };
    let request = keygate::MintRequest::standard(Some("metered"), None, at(0))
        .unwrap()
        .with_limits(limits(old, 1_000_000));
    let record = keygate::mint(&pepper, &request, &mut keygate::os_entropy(), at(0))
        .into_parts()
        .0;
    let m = record.meter();
    store.create(&record, None, 0).await.unwrap();
    let l = CreditLeases::new(Arc::clone(&store), LeaseConfig::sole());
    l.ensure_now(m, old, at(t0)).await;
    assert_eq!(l.held(&m.id), 10_000);
    // The PATCH: the lease goes back, the keys and the pool change.
    l.reclaim(&m.id, at(t0 + 1)).await.unwrap();
    store
        .set_limits(
            record.id(),
            crate::store::LimitsChange {
                rate: None,
                credits: Some(Some(keygate::Credits::new(100, new).unwrap())),
            },
            crate::store::Scope::All,
            None,
            t0 + 1,
        )
        .await
        .unwrap();
    l.ensure_now(m, new, at(t0 + 1)).await;
    // A request from the stale copy, before the cache applies the change.
    assert!(!l.spend(m, old, 1, at(t0 + 2)).allowed);
    l.tick(at(t0 + 50)).await;
    l.tick(at(t0 + 100)).await;
    let mut allowed = 0;
    for k in 0..20 {
        let t = t0 + 150 + 50 * k;
        allowed += spend_n(&l, m, new, 1, 20_000, t);
        l.tick(at(t)).await;
    }
    assert_eq!(allowed, 100);
    assert_eq!(
        store.credit_total(cm(m, new), t0 + 2_000).await.unwrap(),
        Some(0)
    );
    // Asked under the old refill, the store lends nothing.
    let lease = store
        .lease_credits(cm(m, old), "other", 10, 1, t0 + 2_000, 10_000)
        .await
        .unwrap();
    assert!(lease.stale_refill);
    assert_eq!(lease.granted, 0);
}

fn meter_n(n: u32, since_ms: i64) -> Meter {
    Meter {
        id: KeyId::parse(&format!("{n:0>16}")).unwrap(),
        since: at(since_ms),
    }
}

/// Refused requests spend nothing and must not make an instance hoard a
/// shared pool: a cost one above the lease, asked without ever being spent,
/// once every 500 ms, while the other instance serves 40 000 honest
/// requests a second (the outside review's finding: A held 911 789 of a
/// million having spent nothing, B refused everything).
#[tokio::test]
async fn refused_costs_do_not_hoard_a_shared_pool() {
    let (_dir, store) = sqlite();
    let m = meter(41, 0);
    store.set_credits(cm(m, None), 1_000_000, 0).await.unwrap();
    let a = CreditLeases::new(Arc::clone(&store), LeaseConfig::shared());
    let b = CreditLeases::new(Arc::clone(&store), LeaseConfig::shared());
    a.ensure_now(m, None, at(0)).await;
    b.ensure_now(m, None, at(0)).await;
    for t in 1..=2 {
        let cost = a.held(&m.id) + 1;
        assert!(!a.spend(m, None, cost, at(t)).allowed);
        a.wake_pass(at(t)).await;
    }
    let (mut b_refused_last_s, mut a_allowed, mut a_max) = (0u64, 0u64, 0u64);
    for k in 1..=100i64 {
        let t = 2 + 50 * k;
        let ok = spend_n(&b, m, None, 1, 2_000, t);
        if k > 80 {
            b_refused_last_s += 2_000 - ok;
        }
        if k % 10 == 0 {
            let cost = a.held(&m.id) + 1;
            a_allowed += u64::from(a.spend(m, None, cost, at(t)).allowed);
            a.wake_pass(at(t)).await;
        }
        a.tick(at(t)).await;
        b.tick(at(t)).await;
        a_max = a_max.max(a.held(&m.id));
    }
    eprintln!(
        "A held at most {a_max} (allowed {a_allowed}); B refused {b_refused_last_s} in the last second"
    );
    assert_eq!(b_refused_last_s, 0);
    // A held at most about half of what was left; once the asking stops,
    // what it holds for the unspent asks goes back within seconds.
    assert!(a_max <= 500_000, "{a_max}");
    for k in 1..=100i64 {
        let t = 5_002 + 50 * k;
        a.tick(at(t)).await;
        b.tick(at(t)).await;
    }
    assert!(a.held(&m.id) <= 10_000, "{}", a.held(&m.id));
}

/// Wakes share the tick's write cap: 400 meters woken at once make at most
/// `writes_per_tick` writes in one pass; the rest stay woken and the next
/// tick leases for them first (the review's finding: 400 writes in one
/// 886 ms pass, with no tick or renewal meanwhile).
#[tokio::test]
async fn wakes_share_the_ticks_write_cap_and_the_rest_come_next_tick() {
    let (_dir, store) = sqlite();
    let l = CreditLeases::new(Arc::clone(&store), LeaseConfig::shared());
    let ms: Vec<Meter> = (1_000..1_400u32).map(|n| meter_n(n, 0)).collect();
    for m in &ms {
        store.set_credits(cm(*m, None), 1_000_000, 0).await.unwrap();
        l.ensure(*m, None);
    }
    for m in &ms {
        assert!(!l.spend(*m, None, 1, at(1)).allowed);
    }
    l.wake_pass(at(1)).await;
    let cap = l.config().writes_per_tick as u64;
    assert_eq!(l.stats().leases, cap);
    assert_eq!(l.woken_now().len(), 400 - cap as usize);
    l.tick(at(50)).await;
    assert!(ms.iter().all(|m| l.held(&m.id) > 0));
}

/// A wake that finds its meter busy (a credit route's lease in flight) is
/// kept, not lost: the meter stays listed, and the next wake or tick leases
/// for it (the review's finding: the list emptied, the flag stayed set, and
/// spends never woke the background again).
#[tokio::test]
async fn a_wake_that_finds_its_meter_busy_is_kept() {
    let (_dir, store) = sqlite();
    let m = meter(42, 0);
    store.set_credits(cm(m, None), 1_000_000, 0).await.unwrap();
    let l = CreditLeases::new(Arc::clone(&store), LeaseConfig::sole());
    l.ensure_now(m, None, at(0)).await;
    assert_eq!(spend_n(&l, m, None, 1, 10_000, 1), 10_000);
    assert_eq!(l.woken_now(), vec![m.id]);
    let local = l.meters.pin().get(&m.id).cloned().unwrap();
    {
        let _busy = Busy::try_new(&local.busy).unwrap();
        l.wake_pass(at(2)).await;
    }
    assert_eq!(l.woken_now(), vec![m.id]);
    l.wake_pass(at(3)).await;
    assert!(l.woken_now().is_empty());
    assert_eq!(spend_n(&l, m, None, 1, 100, 4), 100);
}

/// A request that costs everything the meter has left passes when retried
/// a second later, and is told to retry meanwhile (second review: it was
/// refused forever, with no `Retry-After`, while the store held its 10).
#[tokio::test]
async fn a_cost_of_all_that_is_left_passes_when_retried() {
    let (_dir, store) = sqlite();
    let m = meter(60, 0);
    store.set_credits(cm(m, None), 10, 0).await.unwrap();
    let l = CreditLeases::new(Arc::clone(&store), LeaseConfig::shared());
    l.ensure_now(m, None, at(0)).await;
    let mut allowed = 0u64;
    for k in 0..40i64 {
        let t = 1 + 1_000 * k;
        let s = l.spend(m, None, 10, at(t));
        if s.allowed {
            allowed += 1;
        } else if allowed == 0 {
            assert_eq!(s.retry_after, Some(RETRY), "at {t}: {s:?}");
        }
        l.wake_pass(at(t)).await;
        for j in 1..20 {
            l.tick(at(t + 50 * j)).await;
        }
    }
    assert_eq!(allowed, 1);
}

/// A big cost on a meter quiet on this instance is leased for and still
/// there when the request is retried a second later (second review: the
/// next tick handed it back, 0 of 20 passed).
#[tokio::test]
async fn a_big_cost_leased_for_stays_for_the_retry() {
    let (_dir, store) = sqlite();
    let m = meter(61, 0);
    store.set_credits(cm(m, None), 1_000_000, 0).await.unwrap();
    let l = CreditLeases::new(Arc::clone(&store), LeaseConfig::shared());
    l.ensure_now(m, None, at(0)).await;
    assert!(l.spend(m, None, 1, at(1)).allowed);
    for t in (50..5_000).step_by(50) {
        l.tick(at(t)).await;
    }
    let mut allowed = 0u64;
    for k in 0..20i64 {
        let t = 5_000 + 1_000 * k;
        allowed += u64::from(l.spend(m, None, 50_000, at(t)).allowed);
        l.wake_pass(at(t)).await;
        for j in 1..20 {
            l.tick(at(t + 50 * j)).await;
        }
    }
    // The first is refused (nothing leased for it yet), the rest pass.
    assert_eq!(allowed, 19);
}

/// One big spend keeps a lease of its size for 10 to 20 s, not for good
/// (second review: 400 000 of 600 000 held for 115 s, refused probes
/// keeping the meter warm).
#[tokio::test]
async fn one_big_spend_holds_its_cost_for_a_while_not_for_good() {
    let (_dir, store) = sqlite();
    let m = meter(62, 0);
    store.set_credits(cm(m, None), 1_000_000, 0).await.unwrap();
    let a = CreditLeases::new(Arc::clone(&store), LeaseConfig::shared());
    a.ensure_now(m, None, at(0)).await;
    assert!(!a.spend(m, None, 400_000, at(1)).allowed);
    a.wake_pass(at(1)).await;
    assert!(a.spend(m, None, 400_000, at(2)).allowed);
    let mut late_max = 0;
    for t in (50..120_000).step_by(50) {
        if t % 20_000 == 0 {
            assert!(!a.spend(m, None, u64::MAX / 4, at(t)).allowed);
        }
        a.tick(at(t)).await;
        if t > 25_000 {
            late_max = late_max.max(a.held(&m.id));
        }
    }
    let total = store
        .credit_total(cm(m, None), 120_000)
        .await
        .unwrap()
        .unwrap();
    assert!(late_max <= total / 2, "{late_max} of {total}");
}
