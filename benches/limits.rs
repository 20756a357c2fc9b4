//! Criterion benches of the limits on the hot path (issue 19):
//! `authenticate` and `can` alone, and with a rate limit, with credits, and
//! with both, for one key among 10 000, in one group so that the ratios come from one run.
//!
//! Run: `cargo bench -p keygate --bench limits`, then
//! `python3 benches/medians.py target/criterion/limits` for the medians.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    missing_docs
)]

use std::hint::black_box;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use keygate::{
    mint, Access, Credits, KeyLimits, Keyring, Limiter, MintRequest, Pepper, RateLimit, Resource,
    UnixMillis, MAX_CREDITS,
};
use rand_core::SeedableRng;

const NOW_MS: i64 = 1_700_000_000_000;

fn bench_limits(c: &mut Criterion) {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(19);
    let mut keyring = Keyring::with_capacity(Pepper::from_bytes(&[7u8; 32]), 10_000);
    let request = MintRequest::restricted(
        Some("bench"),
        "devboxes:write,objects:read".parse().unwrap(),
        None,
        UnixMillis::from_millis(0),
    )
    .unwrap();
    let mut tokens = Vec::new();
    for _ in 0..10_000 {
        let (record, token) =
            mint(keyring.pepper(), &request, &mut rng, UnixMillis::EPOCH).into_parts();
        keyring.insert(record).unwrap();
        tokens.push(token.expose_secret().to_owned());
    }
    // Every key limited: the limiter's map is as large as the keyring.
    // A limit the bench never reaches, so that every check takes the
    // allowed path (one compare-and-swap each).
    let mut limiter = Limiter::new();
    let rate = RateLimit::new(1_000_000, Duration::from_millis(1)).unwrap();
    let credits = Credits::new(MAX_CREDITS, None).unwrap();
    for record in keyring.entries() {
        limiter.configure(
            record.id(),
            UnixMillis::EPOCH,
            KeyLimits {
                rate: Some(rate),
                credits: Some(credits),
            },
        );
    }
    let mut rate_only = Limiter::new();
    let mut credits_only = Limiter::new();
    for record in keyring.entries() {
        let id = record.id();
        rate_only.configure(
            id,
            UnixMillis::EPOCH,
            KeyLimits {
                rate: Some(rate),
                credits: None,
            },
        );
        credits_only.configure(
            id,
            UnixMillis::EPOCH,
            KeyLimits {
                rate: None,
                credits: Some(credits),
            },
        );
    }
    let token = tokens[4_321].as_str();
    // A millisecond per call keeps the one hot key under its limit.
    let clock = AtomicI64::new(NOW_MS);
    let tick = || UnixMillis::from_millis(clock.fetch_add(1, Ordering::Relaxed));

    let mut group = c.benchmark_group("limits");
    group.bench_function("authenticate_can", |b| {
        b.iter(|| {
            let now = tick();
            match keyring.authenticate(black_box(token), now) {
                Ok(p) => p.can(Resource::Devboxes, Access::Write),
                Err(_) => false,
            }
        })
    });
    let run = |limiter: &Limiter| {
        let now = tick();
        match keyring.authenticate(black_box(token), now) {
            Ok(p) => {
                p.can(Resource::Devboxes, Access::Write)
                    && limiter.check(&p.id(), now, 1).result().is_ok()
            }
            Err(_) => false,
        }
    };
    group.bench_function("authenticate_can_rate", |b| b.iter(|| run(&rate_only)));
    group.bench_function("authenticate_can_credits", |b| {
        b.iter(|| run(&credits_only))
    });
    group.bench_function("authenticate_can_rate_credits", |b| {
        b.iter(|| run(&limiter))
    });
    let empty = Limiter::new();
    group.bench_function("authenticate_can_unlimited", |b| b.iter(|| run(&empty)));
    group.finish();
    assert!(run(&limiter));
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(50)
}

criterion_group! {
    name = benches;
    config = config();
    targets = bench_limits
}
criterion_main!(benches);
