//! Does applying changes stall readers? At 1M keys, two reader threads
//! authenticate as fast as they can, timing each call, while a writer
//! applies 100 revocations per second (one every 10 ms), and, in a third
//! phase, also an eviction pass once a second (the follower's, which walks
//! every record). The server's sharded [`cache::KeyCache`] is measured
//! against a single `RwLock<Keyring>` (the cache before it was sharded), in
//! the same run, phases alternating over rounds.
//!
//! The readers are closed-loop (each call starts when the last ended), so a
//! reader blocked for a while counts as one slow call, not as the many that
//! would have queued up behind it: the writer's lock-holding calls are timed
//! as well, and are the stall a client at a fixed rate would see.
//!
//! ```text
//! cargo bench -p keygate-server --bench reader_stall
//! KEYS=1000000 SECS=4 ROUNDS=3 cargo bench -p keygate-server --bench reader_stall
//! ```
#![allow(
    missing_docs,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

#[path = "../src/sync/cache.rs"]
#[allow(dead_code)]
mod cache;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{PoisonError, RwLock};
use std::time::{Duration, Instant};

use keygate::{AuthError, Change, KeyId, Keyring, MintRequest, Pepper, Principal};

/// The cache before sharding: one lock over one keyring.
struct Single(RwLock<Keyring>);

trait Cache: Sync {
    fn authenticate(&self, token: &[u8], now_ms: i64) -> Result<Principal, AuthError>;
    fn revoke(&self, seq: u64, id: KeyId);
    fn evict(&self, now_ms: i64) -> usize;
}

impl Cache for Single {
    fn authenticate(&self, token: &[u8], now_ms: i64) -> Result<Principal, AuthError> {
        self.0
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .authenticate(token, keygate::UnixMillis::from_millis(now_ms))
    }
    fn revoke(&self, seq: u64, id: KeyId) {
        let _ = self
            .0
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .apply(Change::revoke(seq, id));
    }
    fn evict(&self, now_ms: i64) -> usize {
        self.0
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .evict_expired(keygate::UnixMillis::from_millis(now_ms))
    }
}

impl Cache for cache::KeyCache {
    fn authenticate(&self, token: &[u8], now_ms: i64) -> Result<Principal, AuthError> {
        cache::KeyCache::authenticate(self, token, now_ms)
    }
    fn revoke(&self, seq: u64, id: KeyId) {
        self.apply([Change::revoke(seq, id)]);
    }
    fn evict(&self, now_ms: i64) -> usize {
        self.evict_expired(now_ms)
    }
}

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[derive(Clone, Copy, PartialEq)]
enum Phase {
    Idle,
    Revoking,
    RevokingEvicting,
}

impl Phase {
    fn name(self) -> &'static str {
        match self {
            Phase::Idle => "idle",
            Phase::Revoking => "100 revocations/s",
            Phase::RevokingEvicting => "100 revocations/s + evict pass/s",
        }
    }
}

/// The writer's calls of a phase: how long each revocation, and each
/// eviction pass over every shard, took (a single lock holds readers off
/// for the whole of it; 64 shards for about 1/64 of it each).
#[derive(Default, Clone)]
struct Holds {
    revoke: Vec<Duration>,
    evict: Vec<Duration>,
}

/// Runs one phase; returns every call's latency in ns, sorted.
fn run(
    cache: &dyn Cache,
    tokens: &[String],
    victims: &mut impl Iterator<Item = KeyId>,
    seq: &mut u64,
    phase: Phase,
    secs: u64,
    holds: &mut Holds,
) -> Vec<u32> {
    let stop = AtomicBool::new(false);
    let duration = Duration::from_secs(secs);
    let mut all = std::thread::scope(|scope| {
        let readers: Vec<_> = (0..2)
            .map(|r| {
                let stop = &stop;
                scope.spawn(move || {
                    let mut lat = Vec::with_capacity(8_000_000);
                    let mut i = r * 7;
                    while !stop.load(Ordering::Relaxed) {
                        let token = tokens[i % tokens.len()].as_bytes();
                        i += 1;
                        let t = Instant::now();
                        let ok = cache.authenticate(token, 1).is_ok();
                        let ns = t.elapsed().as_nanos();
                        assert!(ok);
                        lat.push(u32::try_from(ns).unwrap_or(u32::MAX));
                    }
                    lat
                })
            })
            .collect();
        let start = Instant::now();
        let mut next = start;
        let mut last_evict = start;
        while start.elapsed() < duration {
            if phase != Phase::Idle {
                *seq += 1;
                let t = Instant::now();
                cache.revoke(*seq, victims.next().unwrap());
                holds.revoke.push(t.elapsed());
                if phase == Phase::RevokingEvicting
                    && last_evict.elapsed() >= Duration::from_secs(1)
                {
                    // Nothing has expired: the pass walks every record.
                    let t = Instant::now();
                    assert_eq!(cache.evict(1), 0);
                    holds.evict.push(t.elapsed());
                    last_evict = Instant::now();
                }
            }
            next += Duration::from_millis(10);
            if let Some(wait) = next.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
        }
        stop.store(true, Ordering::Relaxed);
        readers
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect::<Vec<u32>>()
    });
    all.sort_unstable();
    all
}

fn pct(sorted: &[u32], p: f64) -> u32 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn median(mut v: Vec<u32>) -> u32 {
    v.sort_unstable();
    v[v.len() / 2]
}

fn main() {
    // `cargo bench` passes `--bench`; nothing else to parse.
    let keys = env("KEYS", 1_000_000) as usize;
    let secs = env("SECS", 4);
    let rounds = env("ROUNDS", 3);
    let pepper = Pepper::from_bytes(&[5u8; 32]);
    let t = Instant::now();
    let request =
        MintRequest::standard(Some("k"), None, keygate::UnixMillis::from_millis(0)).unwrap();
    let mut records = Vec::with_capacity(keys);
    let mut tokens = Vec::new();
    let mut rng = keygate::os_entropy();
    for i in 0..keys {
        let (record, token) = keygate::mint(
            &pepper,
            &request,
            &mut rng,
            keygate::UnixMillis::from_millis(0),
        )
        .into_parts();
        if i % 256 == 0 {
            tokens.push(token.expose_secret().to_owned());
        }
        records.push(record);
    }
    let sharded = cache::KeyCache::new(pepper.clone(), keys);
    let mut single = Keyring::with_capacity(pepper, keys);
    for (seq, record) in records.iter().enumerate() {
        single
            .apply(Change::upsert(seq as u64 + 1, record.clone()))
            .unwrap();
    }
    sharded.apply(
        records
            .iter()
            .enumerate()
            .map(|(seq, r)| Change::upsert(seq as u64 + 1, r.clone())),
    );
    let single = Single(RwLock::new(single));
    eprintln!(
        "{keys} keys in both caches in {:.1} s; {} reader tokens; {secs} s per phase, {rounds} rounds",
        t.elapsed().as_secs_f64(),
        tokens.len()
    );
    // Victims: keys whose tokens the readers never use.
    let victim_ids: Vec<KeyId> = records
        .iter()
        .enumerate()
        .filter(|(i, _)| i % 256 != 0)
        .map(|(_, r)| r.id())
        .collect();
    drop(records);
    let mut seq = keys as u64;
    let phases = [Phase::Idle, Phase::Revoking, Phase::RevokingEvicting];
    let caches: [(&str, &dyn Cache); 2] = [("single RwLock", &single), ("64 shards", &sharded)];
    // p99 and p99.9 per (cache, phase), per round.
    let mut p99 = vec![vec![Vec::new(); phases.len()]; caches.len()];
    let mut p999 = vec![vec![Vec::new(); phases.len()]; caches.len()];
    let mut p50 = vec![vec![Vec::new(); phases.len()]; caches.len()];
    let mut worst = vec![vec![0u32; phases.len()]; caches.len()];
    let mut held = vec![Holds::default(); caches.len()];
    // Each cache revokes its own copy of the victims, in the same order.
    let mut victims: Vec<_> = (0..caches.len())
        .map(|_| victim_ids.clone().into_iter())
        .collect();
    let mut seqs = vec![seq; caches.len()];
    for round in 0..rounds {
        for (p, &phase) in phases.iter().enumerate() {
            for (c, (name, cache)) in caches.iter().enumerate() {
                let lat = run(
                    *cache,
                    &tokens,
                    &mut victims[c],
                    &mut seqs[c],
                    phase,
                    secs,
                    &mut held[c],
                );
                eprintln!(
                    "round {round} {name:>13} {:>33}: {} calls, p50 {} ns, p99 {} ns, p99.9 {} ns, max {} us",
                    phase.name(),
                    lat.len(),
                    pct(&lat, 0.5),
                    pct(&lat, 0.99),
                    pct(&lat, 0.999),
                    lat.last().unwrap() / 1000
                );
                p50[c][p].push(pct(&lat, 0.5));
                p99[c][p].push(pct(&lat, 0.99));
                p999[c][p].push(pct(&lat, 0.999));
                worst[c][p] = worst[c][p].max(*lat.last().unwrap());
            }
        }
    }
    seq = seqs[0];
    let _ = seq;
    for (c, (name, _)) in caches.iter().enumerate() {
        let Holds {
            revoke: r,
            evict: e,
        } = &mut held[c];
        r.sort_unstable();
        e.sort_unstable();
        println!(
            "{name}: writer calls: revocation apply median {:.1} us, p99 {:.1} us ({} calls); \
             eviction pass median {:.0} us ({} passes; a single lock holds every reader off \
             for all of it, a shard for 1/64 of it)",
            r[r.len() / 2].as_secs_f64() * 1e6,
            r[(r.len() - 1) * 99 / 100].as_secs_f64() * 1e6,
            r.len(),
            e[e.len() / 2].as_secs_f64() * 1e6,
            e.len()
        );
    }
    println!("\nmedians over {rounds} rounds ({keys} keys, 2 reader threads, {secs} s per phase):");
    println!(
        "| cache | phase | p50 ns | p99 ns | p99 / idle p99 | p99.9 ns | max us |\n|---|---|---|---|---|---|---|"
    );
    for (c, (name, _)) in caches.iter().enumerate() {
        let idle = median(p99[c][0].clone());
        for (p, phase) in phases.iter().enumerate() {
            let m99 = median(p99[c][p].clone());
            println!(
                "| {name} | {} | {} | {} | {:.2} | {} | {} |",
                phase.name(),
                median(p50[c][p].clone()),
                m99,
                f64::from(m99) / f64::from(idle),
                median(p999[c][p].clone()),
                worst[c][p] / 1000
            );
        }
    }
}
