//! The accuracy target on a real PostgreSQL (`tests/support/pg.rs`): three
//! instances' leases (three managers, each with its own connection pool, as
//! separate processes would have) on one store, 10 000 credits, clients
//! spending through all three until every one is refused for good. Allowed:
//! at most 10 000, exactly; at least 9 900 once the leases settle. Then the
//! same with an instance killed mid-run (its leases forfeited), and with
//! PostgreSQL stopped mid-run and started again. The figures are printed
//! (`--nocapture`); BENCHMARKS.md has a run's.

use std::sync::atomic::AtomicU64;
use std::time::Instant;

use crate::store::postgres::pg::TestPg;
use crate::store::postgres::PgStore;

use super::*;

const CREDITS: u64 = 10_000;
const INSTANCES: usize = 3;
const CLIENTS: usize = 4;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// One instance: its leases, the background's stop switch and task, and
/// its clients' stop switch.
struct Instance {
    leases: Arc<CreditLeases>,
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
    clients: Arc<AtomicBool>,
}

/// What every client counts.
#[derive(Default)]
struct Tally {
    allowed: AtomicU64,
    /// Clients refused for good (`retry_after` none).
    done: AtomicU64,
    /// Refusals with a retry, while the store was down.
    retried: AtomicU64,
}

async fn instance(url: &str, cfg: LeaseConfig, m: Meter) -> Instance {
    let store: Arc<dyn Store> = Arc::new(PgStore::connect(url).await.unwrap());
    let leases = Arc::new(CreditLeases::new(store, cfg));
    leases.ensure(m, None);
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(Arc::clone(&leases).run(stopped));
    Instance {
        leases,
        stop,
        task,
        clients: Arc::new(AtomicBool::new(false)),
    }
}

/// A client of `leases`: spends 1 credit at a time (a pause of `pace`
/// between allowed requests, none for 0), retries after 20 ms when asked
/// to retry, and stops when refused for good or told to.
fn client(
    leases: Arc<CreditLeases>,
    m: Meter,
    pace: Duration,
    tally: Arc<Tally>,
    stopped: Arc<AtomicBool>,
    down: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        while !stopped.load(Ordering::Relaxed) {
            let s = leases.spend(m, None, 1, UnixMillis::now());
            if s.allowed {
                tally.allowed.fetch_add(1, Ordering::Relaxed);
                if pace.is_zero() {
                    tokio::task::yield_now().await;
                } else {
                    tokio::time::sleep(pace).await;
                }
                continue;
            }
            match s.retry_after {
                None => {
                    tally.done.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                Some(_) => {
                    if down.load(Ordering::Relaxed) {
                        tally.retried.fetch_add(1, Ordering::Relaxed);
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
    })
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Trouble {
    None,
    /// An instance is killed (its leases forfeited) after this many allowed.
    Crash(u64),
    /// PostgreSQL stops after this many allowed, for two seconds.
    StopDb(u64),
}

fn held(all: &[Option<Instance>], m: &Meter) -> u64 {
    all.iter().flatten().map(|i| i.leases.held(&m.id)).sum()
}

fn accuracy(trouble: Trouble) {
    let pg = TestPg::start();
    let rt = runtime();
    rt.block_on(async {
        let url = pg.url();
        let m = meter(77, 0);
        let cfg = LeaseConfig {
            ttl: Duration::from_secs(3),
            ..LeaseConfig::shared()
        };
        PgStore::connect(&url)
            .await
            .unwrap()
            .set_credits(cm(m, None), CREDITS, 0)
            .await
            .unwrap();
        let mut all = Vec::new();
        for _ in 0..INSTANCES {
            all.push(Some(instance(&url, cfg, m).await));
        }
        let tally = Arc::new(Tally::default());
        let down = Arc::new(AtomicBool::new(false));
        let started = Instant::now();
        let mut clients = Vec::new();
        for i in all.iter().flatten() {
            for _ in 0..CLIENTS {
                clients.push(client(
                    Arc::clone(&i.leases),
                    m,
                    Duration::from_millis(2),
                    Arc::clone(&tally),
                    Arc::clone(&i.clients),
                    Arc::clone(&down),
                ));
            }
        }
        let mut forfeited = 0u64;
        let mut crashed_lost = 0u64;
        let mut reached_9900 = None;
        let mut last_count = 0;
        let mut last_change = Instant::now();
        let mut troubled = false;
        let total_clients = u64::try_from(INSTANCES * CLIENTS).unwrap();
        loop {
            tokio::time::sleep(Duration::from_millis(5)).await;
            let allowed = tally.allowed.load(Ordering::Relaxed);
            assert!(allowed <= CREDITS, "allowed {allowed}");
            if allowed != last_count {
                last_count = allowed;
                last_change = Instant::now();
            }
            if reached_9900.is_none() && allowed >= 9_900 {
                reached_9900 = Some(started.elapsed());
            }
            match trouble {
                Trouble::Crash(after) if !troubled && allowed >= after => {
                    troubled = true;
                    // SIGKILL: its clients and its background stop at once;
                    // what it holds is gone.
                    let victim = all[2].take().unwrap();
                    victim.clients.store(true, Ordering::Relaxed);
                    victim.task.abort();
                    forfeited = victim.leases.held(&m.id);
                    crashed_lost = victim.leases.stats().possibly_lost;
                    eprintln!(
                        "killed an instance holding {forfeited} credits at {allowed} allowed"
                    );
                }
                Trouble::StopDb(after) if !troubled && allowed >= after => {
                    troubled = true;
                    let before = held(&all, &m);
                    let at_stop = tally.allowed.load(Ordering::Relaxed);
                    down.store(true, Ordering::Relaxed);
                    pg.stop_immediate();
                    tokio::time::sleep(Duration::from_secs(2)).await;
                    let during = tally.allowed.load(Ordering::Relaxed) - at_stop;
                    eprintln!(
                        "PostgreSQL down for 2 s at {at_stop} allowed: {before} credits \
                         leased, {during} spent while down, {} refusals with a retry",
                        tally.retried.load(Ordering::Relaxed)
                    );
                    assert!(during <= before, "spent {during} of {before} leased");
                    assert!(tally.retried.load(Ordering::Relaxed) > 0);
                    assert_eq!(tally.done.load(Ordering::Relaxed), 0);
                    pg.pg_ctl_start();
                    pg.wait_ready(Duration::from_secs(30));
                    down.store(false, Ordering::Relaxed);
                }
                _ => {}
            }
            let live_clients = if matches!(trouble, Trouble::Crash(_)) && troubled {
                total_clients - u64::try_from(CLIENTS).unwrap()
            } else {
                total_clients
            };
            if tally.done.load(Ordering::Relaxed) >= live_clients {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(90),
                "not settled: {allowed} allowed, {} clients done",
                tally.done.load(Ordering::Relaxed)
            );
        }
        let settled = started.elapsed();
        let allowed = tally.allowed.load(Ordering::Relaxed);
        for c in &clients {
            c.abort();
        }
        // Writes per instance for the meter, over the spending.
        let spending = last_change.duration_since(started).as_secs_f64();
        for (n, i) in all.iter().flatten().enumerate() {
            let s = i.leases.stats();
            eprintln!(
                "instance {n}: {} lease/return writes for the meter ({:.1}/s over {spending:.1} s \
                 of spending), {} renewals, granted {}, returned {}, possibly lost {}",
                i.leases.meter_writes(&m.id),
                i.leases.meter_writes(&m.id) as f64 / spending.max(0.001),
                s.renewals,
                s.granted,
                s.returned,
                s.possibly_lost
            );
        }
        // Every instance stops gracefully: their leases go back.
        let mut possibly_lost = crashed_lost;
        for i in all.into_iter().flatten() {
            i.stop.send(true).unwrap();
            i.task.await.unwrap();
            possibly_lost += i.leases.stats().possibly_lost;
        }
        let store = PgStore::connect(&url).await.unwrap();
        // The crashed instance's rows expire (forfeited, not returned).
        store.expire_leases(i64::MAX).await.unwrap();
        let left = store
            .credit_total(cm(m, None), crate::clock::now_ms())
            .await
            .unwrap()
            .unwrap();
        eprintln!(
            "{trouble:?}: allowed {allowed} of {CREDITS}; 9 900 reached after {:?}; last credit \
             at {:.2} s; every client refused for good at {:.2} s; left {left}, forfeited \
             {forfeited}, possibly lost {possibly_lost}",
            reached_9900,
            spending,
            settled.as_secs_f64()
        );
        assert!(allowed + left + forfeited <= CREDITS);
        assert!(allowed + left + forfeited + possibly_lost >= CREDITS);
        assert!(
            allowed + forfeited >= 9_900,
            "only {allowed} allowed (and {forfeited} forfeited)"
        );
        assert!(settled < Duration::from_secs(60), "settled in {settled:?}");
    });
}

#[test]
fn three_instances_spend_exactly_the_credits() {
    accuracy(Trouble::None);
}

#[test]
fn a_killed_instance_forfeits_only_what_it_held() {
    accuracy(Trouble::Crash(3_000));
}

#[test]
fn postgres_stopped_mid_run_spends_only_what_is_leased() {
    accuracy(Trouble::StopDb(3_000));
}

/// Clients spending as fast as they can (no pause) on a meter that does not
/// run out: lease writes per instance stay within one per tick (20 a
/// second), whatever the request rate; printed.
#[test]
fn store_writes_per_hot_meter_are_bounded() {
    let pg = TestPg::start();
    runtime().block_on(async {
        let url = pg.url();
        let m = meter(78, 0);
        PgStore::connect(&url)
            .await
            .unwrap()
            .set_credits(cm(m, None), 1_000_000_000, 0)
            .await
            .unwrap();
        let mut all = Vec::new();
        for _ in 0..INSTANCES {
            all.push(instance(&url, LeaseConfig::shared(), m).await);
        }
        let tally = Arc::new(Tally::default());
        let never = Arc::new(AtomicBool::new(false));
        let started = Instant::now();
        let mut clients = Vec::new();
        for i in &all {
            for _ in 0..CLIENTS {
                clients.push(client(
                    Arc::clone(&i.leases),
                    m,
                    Duration::ZERO,
                    Arc::clone(&tally),
                    Arc::clone(&i.clients),
                    Arc::clone(&never),
                ));
            }
        }
        tokio::time::sleep(Duration::from_secs(5)).await;
        for i in &all {
            i.clients.store(true, Ordering::Relaxed);
        }
        for c in clients {
            c.await.unwrap();
        }
        let secs = started.elapsed().as_secs_f64();
        let allowed = tally.allowed.load(Ordering::Relaxed);
        eprintln!(
            "{allowed} requests allowed in {secs:.1} s ({:.0}/s over {INSTANCES} instances)",
            allowed as f64 / secs
        );
        for (n, i) in all.iter().enumerate() {
            let writes = i.leases.meter_writes(&m.id);
            let s = i.leases.stats();
            eprintln!(
                "instance {n}: {writes} lease/return writes ({:.1}/s), {} renewals ({:.1}/s)",
                writes as f64 / secs,
                s.renewals,
                s.renewals as f64 / secs
            );
            assert!(writes as f64 / secs <= 21.0, "{writes} writes in {secs} s");
        }
        for i in all {
            i.stop.send(true).unwrap();
            i.task.await.unwrap();
        }
    });
}
