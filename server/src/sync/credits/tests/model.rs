//! Random runs of several instances' leases on one store against the
//! ledger they must keep: spends, background ticks, time passing over
//! refills, admin adds, crashes (a manager dropped with its leases),
//! graceful shutdowns, a store that goes down, writes whose commit is in
//! doubt. Per refill period, the credits allowed never exceed what the
//! period started with plus what was added in it; at the end, what was
//! allowed, what is left and what crashes forfeited add up to exactly that,
//! less at most what writes in doubt may have lost.

use std::collections::BTreeMap;

use proptest::prelude::*;

use super::*;

#[derive(Debug, Clone)]
enum Op {
    Spend {
        who: usize,
        cost: u64,
        n: u64,
    },
    Tick {
        who: usize,
    },
    /// The background woken between ticks (by the spends that ran its
    /// lease low).
    Wake {
        who: usize,
    },
    TickAll,
    Advance(i64),
    Add(u64),
    Crash(usize),
    Shutdown(usize),
    Down(usize),
    Up(usize),
    Doubt {
        who: usize,
        applied: bool,
    },
}

fn op() -> impl Strategy<Value = Op> {
    let who = 0usize..3;
    prop_oneof![
        6 => (who.clone(), 0u64..4, 1u64..30).prop_map(|(who, cost, n)| Op::Spend { who, cost, n }),
        4 => who.clone().prop_map(|who| Op::Tick { who }),
        3 => who.clone().prop_map(|who| Op::Wake { who }),
        4 => Just(Op::TickAll),
        4 => (0i64..1_500).prop_map(Op::Advance),
        1 => (1u64..60).prop_map(Op::Add),
        1 => who.clone().prop_map(Op::Crash),
        1 => who.clone().prop_map(Op::Shutdown),
        1 => who.clone().prop_map(Op::Down),
        1 => who.clone().prop_map(Op::Up),
        1 => (who, any::<bool>()).prop_map(|(who, applied)| Op::Doubt { who, applied }),
    ]
}

struct Instance {
    flaky: Arc<Flaky>,
    leases: CreditLeases,
}

fn start(inner: &Arc<dyn Store>, cfg: LeaseConfig, m: Meter, r: Option<Refill>) -> Instance {
    let flaky = Arc::new(Flaky::new(Arc::clone(inner)));
    let leases = CreditLeases::new(flaky.clone(), cfg);
    leases.ensure(m, r);
    Instance { flaky, leases }
}

async fn run(ops: Vec<Op>, instances: usize, sole: bool, refill: bool, initial: u64) {
    let (_dir, inner) = sqlite();
    let m = meter(9, 0);
    let r = refill.then(|| Refill::new(40, Duration::from_secs(2)).unwrap());
    let period = |t: i64| r.map_or(0, |r| r.period_at(m.since, at(t)));
    // What each period may spend: what it starts with, plus adds.
    let start_of = |p: u64| {
        if p == 0 {
            initial
        } else {
            r.map_or(0, |r| r.amount())
        }
    };
    inner.set_credits(cm(m, r), initial, 0).await.unwrap();
    let cfg = LeaseConfig {
        floor: 3,
        ..if sole {
            LeaseConfig::sole()
        } else {
            LeaseConfig::shared()
        }
    };
    let mut all: Vec<Instance> = (0..instances).map(|_| start(&inner, cfg, m, r)).collect();
    let mut t = 0i64;
    let mut allowed: BTreeMap<u64, u64> = BTreeMap::new();
    let mut added: BTreeMap<u64, u64> = BTreeMap::new();
    let mut forfeited: BTreeMap<u64, u64> = BTreeMap::new();
    let mut possibly_lost = 0u64;
    for op in ops {
        match op {
            Op::Spend { who, cost, n } => {
                let i = &all[who % instances];
                let ok = spend_n(&i.leases, m, r, cost, n, t);
                *allowed.entry(period(t)).or_default() += ok * cost;
            }
            Op::Tick { who } => all[who % instances].leases.tick(at(t)).await,
            Op::Wake { who } => all[who % instances].leases.wake_pass(at(t)).await,
            Op::TickAll => {
                for i in &all {
                    i.leases.tick(at(t)).await;
                }
            }
            Op::Advance(dt) => t += dt,
            Op::Add(n) => {
                let delta = i64::try_from(n).unwrap();
                inner.add_credits(cm(m, r), delta, t).await.unwrap();
                *added.entry(period(t)).or_default() += n;
            }
            Op::Crash(who) => {
                let who = who % instances;
                let old = std::mem::replace(&mut all[who], start(&inner, cfg, m, r));
                // Its leases go with it: forfeited.
                if let Some((p, unspent)) = old.leases.lease_of(&m.id) {
                    *forfeited.entry(p).or_default() += unspent;
                }
                possibly_lost += old.leases.stats().possibly_lost;
            }
            Op::Shutdown(who) => {
                let who = who % instances;
                let i = &all[who];
                i.flaky.down.store(false, Ordering::Relaxed);
                i.flaky.doubt.store(0, Ordering::Relaxed);
                i.leases.return_all(at(t)).await;
                let old = std::mem::replace(&mut all[who], start(&inner, cfg, m, r));
                possibly_lost += old.leases.stats().possibly_lost;
            }
            Op::Down(who) => all[who % instances]
                .flaky
                .down
                .store(true, Ordering::Relaxed),
            Op::Up(who) => all[who % instances]
                .flaky
                .down
                .store(false, Ordering::Relaxed),
            Op::Doubt { who, applied } => all[who % instances]
                .flaky
                .doubt
                .store(if applied { 1 } else { 2 }, Ordering::Relaxed),
        }
        for (p, spent) in &allowed {
            let may = start_of(*p) + added.get(p).copied().unwrap_or(0);
            assert!(*spent <= may, "period {p}: allowed {spent} of {may}");
        }
    }
    // Every instance stops gracefully; crashed leases expire.
    for i in &all {
        i.flaky.down.store(false, Ordering::Relaxed);
        i.flaky.doubt.store(0, Ordering::Relaxed);
        i.leases.return_all(at(t)).await;
        possibly_lost += i.leases.stats().possibly_lost;
    }
    inner.expire_leases(i64::MAX).await.unwrap();
    let left = inner.credit_total(cm(m, r), t).await.unwrap().unwrap();
    let p = period(t);
    let had = start_of(p) + added.get(&p).copied().unwrap_or(0);
    let accounted =
        allowed.get(&p).copied().unwrap_or(0) + left + forfeited.get(&p).copied().unwrap_or(0);
    assert!(
        accounted <= had,
        "period {p}: {accounted} accounted of {had}"
    );
    assert!(
        accounted + possibly_lost >= had,
        "period {p}: {accounted} accounted + {possibly_lost} possibly lost of {had}"
    );
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn credits_are_never_overspent_and_nothing_is_lost_unaccounted(
        ops in proptest::collection::vec(op(), 1..80),
        instances in 1usize..=3,
        sole in any::<bool>(),
        refill in any::<bool>(),
        initial in 0u64..200,
    ) {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(run(ops, instances, sole, refill, initial));
    }
}
