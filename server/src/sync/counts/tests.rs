//! The in-memory counts: minutes, late counts, failed flushes, idle keys,
//! concurrent increments, and a model of record, flush and failed flush.

use std::collections::BTreeMap;
use std::sync::Arc;

use proptest::prelude::*;

use super::*;

fn id(n: u8) -> KeyId {
    KeyId::parse(&format!("{n:0>16}")).unwrap()
}

fn counts(allowed: u64, forbidden: u64, rate_limited: u64, credits_exhausted: u64) -> UsageCounts {
    UsageCounts {
        allowed,
        forbidden,
        rate_limited,
        credits_exhausted,
    }
}

fn row(key: u8, minute: i64, c: UsageCounts) -> UsageRow {
    UsageRow {
        key_id: id(key),
        minute_ms: minute * MINUTE_MS,
        counts: c,
    }
}

#[test]
fn counts_by_key_minute_and_outcome() {
    let c = Counts::default();
    let m = 1_000;
    c.record(id(1), m * MINUTE_MS, Outcome::Allowed);
    c.record(id(1), m * MINUTE_MS + 59_999, Outcome::Allowed);
    c.record(id(1), m * MINUTE_MS + 5, Outcome::Forbidden);
    c.record(id(1), (m + 1) * MINUTE_MS, Outcome::RateLimited);
    c.record(id(2), m * MINUTE_MS, Outcome::CreditsExhausted);
    assert_eq!(
        c.pending(&id(1)),
        vec![
            (m * MINUTE_MS, counts(2, 1, 0, 0)),
            ((m + 1) * MINUTE_MS, counts(0, 0, 1, 0))
        ]
    );
    assert_eq!(
        c.take((m + 1) * MINUTE_MS),
        vec![
            row(1, m, counts(2, 1, 0, 0)),
            row(1, m + 1, counts(0, 0, 1, 0)),
            row(2, m, counts(0, 0, 0, 1)),
        ]
    );
    // Taken: nothing pending, nothing taken twice.
    assert!(c.pending(&id(1)).is_empty());
    assert!(c.take((m + 1) * MINUTE_MS).is_empty());
    assert!(c.pending(&id(9)).is_empty());
}

#[test]
fn a_slot_that_moves_on_spills_what_was_not_taken_and_late_counts_are_kept() {
    let c = Counts::default();
    let m = 7_000;
    c.record(id(1), m * MINUTE_MS, Outcome::Allowed);
    c.record(id(1), (m + 1) * MINUTE_MS, Outcome::Allowed);
    // Minute m + 2 takes minute m's slot: m's count moves to the spill.
    c.record(id(1), (m + 2) * MINUTE_MS, Outcome::Forbidden);
    // A late count for m (a slot now holds m + 2) and one for m - 5.
    c.record(id(1), m * MINUTE_MS + 1, Outcome::Allowed);
    c.record(id(1), (m - 5) * MINUTE_MS, Outcome::Allowed);
    assert_eq!(
        c.take((m + 2) * MINUTE_MS),
        vec![
            row(1, m - 5, counts(1, 0, 0, 0)),
            row(1, m, counts(2, 0, 0, 0)),
            row(1, m + 1, counts(1, 0, 0, 0)),
            row(1, m + 2, counts(0, 1, 0, 0)),
        ]
    );
}

#[test]
fn a_failed_flush_hands_its_counts_back() {
    let c = Counts::default();
    c.record(id(1), 0, Outcome::Allowed);
    let batch = c.take(0);
    assert_eq!(batch, vec![row(1, 0, counts(1, 0, 0, 0))]);
    c.record(id(1), 1, Outcome::Allowed);
    c.unflush(&batch);
    assert_eq!(c.pending(&id(1)), vec![(0, counts(2, 0, 0, 0))]);
    assert_eq!(c.take(0), vec![row(1, 0, counts(2, 0, 0, 0))]);
    // Handed back for a key forgotten meanwhile: it comes back.
    c.unflush(&[row(3, 4, counts(0, 2, 0, 0))]);
    assert_eq!(c.take(10 * MINUTE_MS), vec![row(3, 4, counts(0, 2, 0, 0))]);
}

#[test]
fn idle_keys_are_forgotten_and_busy_ones_kept() {
    let c = Counts::default();
    c.record(id(1), 0, Outcome::Allowed);
    c.record(id(2), 5 * MINUTE_MS, Outcome::Allowed);
    assert_eq!(c.take(5 * MINUTE_MS).len(), 2);
    // Key 1 counted nothing since minute 0, key 2 is in minute 5.
    assert!(!c.keys.contains_key(&id(1)));
    assert!(c.keys.contains_key(&id(2)));
    // The minute after still counts it as recent; two minutes after, not.
    c.take(6 * MINUTE_MS);
    assert!(c.keys.contains_key(&id(2)));
    c.take(7 * MINUTE_MS);
    assert!(!c.keys.contains_key(&id(2)));
    // A forgotten key counts again from scratch.
    c.record(id(2), 7 * MINUTE_MS, Outcome::Forbidden);
    assert_eq!(c.take(7 * MINUTE_MS), vec![row(2, 7, counts(0, 1, 0, 0))]);
}

#[test]
fn the_hasher_spreads_ids() {
    use std::hash::BuildHasher;
    let build = BuildHasherDefault::<IdHasher>::default();
    let hashes: std::collections::HashSet<u64> =
        (0..=255u8).map(|n| build.hash_one(id(n))).collect();
    assert_eq!(hashes.len(), 256);
    // The top bits (dashmap's shard) take many values.
    let tops: std::collections::HashSet<u64> = hashes.iter().map(|h| h >> 58).collect();
    assert!(tops.len() > 40, "{}", tops.len());
}

/// Threads count at once, across minute boundaries, while a flusher takes
/// (and now and then hands back) batches: every count is taken exactly
/// once, in its key and minute.
#[test]
fn concurrent_counts_sum_exactly() {
    const THREADS: usize = 6;
    const PER_THREAD: u64 = 60_000;
    let c = Arc::new(Counts::default());
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flusher = {
        let (c, done) = (Arc::clone(&c), Arc::clone(&done));
        std::thread::spawn(move || {
            let mut taken: Vec<UsageRow> = Vec::new();
            let mut round = 0u64;
            while !done.load(Ordering::Relaxed) {
                let batch = c.take(3 * MINUTE_MS);
                round += 1;
                if round.is_multiple_of(3) {
                    c.unflush(&batch);
                } else {
                    taken.extend(batch);
                }
                std::thread::yield_now();
            }
            taken
        })
    };
    let workers: Vec<_> = (0..THREADS)
        .map(|t| {
            let c = Arc::clone(&c);
            std::thread::spawn(move || {
                for i in 0..PER_THREAD {
                    // Four keys, minutes 0..4 in a staggered walk, all
                    // four outcomes.
                    let key = id((i % 4) as u8);
                    let minute = ((i / 1_000 + t as u64) % 4) as i64;
                    let outcome = Outcome::ALL[(i % 4) as usize];
                    c.record(key, minute * MINUTE_MS + (i % 1_000) as i64, outcome);
                }
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
    done.store(true, Ordering::Relaxed);
    let mut taken = flusher.join().unwrap();
    taken.extend(c.take(3 * MINUTE_MS));
    let mut got: BTreeMap<(KeyId, i64), UsageCounts> = BTreeMap::new();
    for r in taken {
        got.entry((r.key_id, r.minute_ms))
            .or_default()
            .add(&r.counts);
    }
    let mut want: BTreeMap<(KeyId, i64), UsageCounts> = BTreeMap::new();
    for t in 0..THREADS {
        for i in 0..PER_THREAD {
            let minute = ((i / 1_000 + t as u64) % 4) as i64;
            let mut one = [0u64; OUTCOMES];
            *at_mut(&mut one, Outcome::ALL[(i % 4) as usize]) += 1;
            want.entry((id((i % 4) as u8), minute * MINUTE_MS))
                .or_default()
                .add(&to_counts(one));
        }
    }
    assert_eq!(got, want);
    let total: u64 = got
        .values()
        .map(|c| c.allowed + c.forbidden + c.rate_limited + c.credits_exhausted)
        .sum();
    assert_eq!(total, THREADS as u64 * PER_THREAD);
}

#[derive(Debug, Clone)]
enum Op {
    /// Counts one request of key `key` at minute `minute` (+ `ms`).
    Record {
        key: u8,
        minute: i64,
        ms: i64,
        outcome: usize,
    },
    /// A flush at minute `now` whose write succeeds, or fails.
    Flush { now: i64, ok: bool },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0u8..3, 0i64..6, 0i64..MINUTE_MS, 0usize..4).prop_map(|(key, minute, ms, outcome)| Op::Record {
            key,
            minute,
            ms,
            outcome
        }),
        1 => (0i64..8, any::<bool>()).prop_map(|(now, ok)| Op::Flush { now, ok }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Any sequence of counts (minutes in any order), flushes and failed
    /// flushes: what the store got plus what memory still holds is the
    /// model's count, per key and minute, after every step.
    #[test]
    fn record_and_flush_against_a_model(ops in proptest::collection::vec(op(), 1..120)) {
        let c = Counts::default();
        let mut model: BTreeMap<(KeyId, i64), UsageCounts> = BTreeMap::new();
        let mut stored: BTreeMap<(KeyId, i64), UsageCounts> = BTreeMap::new();
        for op in ops {
            match op {
                Op::Record { key, minute, ms, outcome } => {
                    let outcome = Outcome::ALL[outcome];
                    c.record(id(key), minute * MINUTE_MS + ms, outcome);
                    let mut one = [0u64; OUTCOMES];
                    *at_mut(&mut one, outcome) += 1;
                    model.entry((id(key), minute * MINUTE_MS)).or_default().add(&to_counts(one));
                }
                Op::Flush { now, ok } => {
                    let batch = c.take(now * MINUTE_MS);
                    // One row per key and minute, in order, none empty.
                    for pair in batch.windows(2) {
                        prop_assert!((pair[0].key_id, pair[0].minute_ms) < (pair[1].key_id, pair[1].minute_ms));
                    }
                    prop_assert!(batch.iter().all(|r| !r.counts.is_zero()));
                    if ok {
                        for r in &batch {
                            stored.entry((r.key_id, r.minute_ms)).or_default().add(&r.counts);
                        }
                    } else {
                        c.unflush(&batch);
                    }
                }
            }
            let mut seen = stored.clone();
            for key in 0..3 {
                for (minute_ms, counts) in c.pending(&id(key)) {
                    seen.entry((id(key), minute_ms)).or_default().add(&counts);
                }
            }
            prop_assert_eq!(&seen, &model);
        }
    }
}

/// What `record` costs, by hand (debug builds mean nothing here):
/// `cargo test -p keygate-server --release --bin keygate record_cost -- --ignored --nocapture`.
/// One thread on one key; two threads on one key (the same counter, the
/// worst case for its cache line); two threads on 1 000 keys each.
#[test]
#[ignore = "a measurement, run by hand in release"]
fn record_cost() {
    use std::time::Instant;
    const N: u64 = 20_000_000;
    let minute = 29_000_000 * MINUTE_MS;
    let run = |threads: usize, keys: u16| {
        let c = Arc::new(Counts::default());
        let start = Instant::now();
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let c = Arc::clone(&c);
                std::thread::spawn(move || {
                    let ids: Vec<KeyId> = (0..keys)
                        .map(|k| KeyId::parse(&format!("{t:0>8}{k:0>8}")).unwrap())
                        .collect();
                    for i in 0..N {
                        let id = ids[(i % u64::from(keys)) as usize];
                        c.record(std::hint::black_box(id), minute, Outcome::Allowed);
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        let ns = start.elapsed().as_nanos() as f64 / N as f64;
        let total: u64 = c.take(minute).iter().map(|r| r.counts.allowed).sum();
        assert_eq!(total, N * threads as u64);
        ns
    };
    for _ in 0..2 {
        println!("1 thread, 1 key:         {:.1} ns per record", run(1, 1));
        println!("1 thread, 200 keys:      {:.1} ns per record", run(1, 200));
        println!(
            "2 threads, 200 keys each: {:.1} ns per record (per thread)",
            run(2, 200)
        );
    }
    // The first count of each minute: the write-lock path.
    let c = Counts::default();
    let start = Instant::now();
    const MINUTES: i64 = 1_000_000;
    for m in 0..MINUTES {
        c.record(id(1), m * MINUTE_MS, Outcome::Allowed);
    }
    println!(
        "a new minute each time:   {:.1} ns per record (spills the slot two minutes back)",
        start.elapsed().as_nanos() as f64 / MINUTES as f64
    );
}
