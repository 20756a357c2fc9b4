//! Criterion benches of key creation (issue 3): minting a standard and a
//! restricted key with a fixed, seeded CSPRNG (no OS entropy), and
//! validating a restricted-key create request from JSON.
//!
//! Run: `cargo bench -p keygate --bench mint`.
// A bench is not a test for clippy's `allow-*-in-tests`: fixtures may unwrap,
// panic and index, and the bench binary has no public API to document.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    missing_docs
)]

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use keygate::wire::RestrictedKeyCreateParameters;
use keygate::{mint, MintRequest, Pepper};
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;

const NOW_MS: i64 = 1_700_000_000_000;

const RESTRICTED_JSON: &str = r#"{
    "name": "ci deploy",
    "expires_at_ms": 1800000000000,
    "scopes": [
        {"resource_type": "RESOURCE_TYPE_DEVBOXES", "access_level": "ACCESS_LEVEL_WRITE"},
        {"resource_type": "RESOURCE_TYPE_BLUEPRINTS", "access_level": "ACCESS_LEVEL_READ"},
        {"resource_type": "RESOURCE_TYPE_OBJECTS", "access_level": "ACCESS_LEVEL_READ"},
        {"resource_type": "RESOURCE_TYPE_AGENTS", "access_level": "ACCESS_LEVEL_NONE"}
    ]
}"#;

fn bench_mint(c: &mut Criterion) {
    let mut group = c.benchmark_group("mint");
    let pepper = Pepper::from_bytes(&[7u8; 32]);
    let standard =
        MintRequest::standard(Some("ops"), None, keygate::UnixMillis::from_millis(NOW_MS)).unwrap();
    let restricted = RestrictedKeyCreateParameters::validate(
        &serde_json::from_str(RESTRICTED_JSON).unwrap(),
        keygate::UnixMillis::from_millis(NOW_MS),
    )
    .unwrap();
    for (name, request) in [("standard", &standard), ("restricted", &restricted)] {
        group.bench_function(name, |b| {
            let mut rng = ChaCha20Rng::seed_from_u64(3);
            b.iter(|| {
                mint(
                    black_box(&pepper),
                    black_box(request),
                    &mut rng,
                    keygate::UnixMillis::from_millis(NOW_MS),
                )
            })
        });
    }
    group.finish();
}

fn bench_validate(c: &mut Criterion) {
    let mut group = c.benchmark_group("wire");
    group.bench_function("restricted_create_from_json", |b| {
        b.iter(|| {
            serde_json::from_str::<RestrictedKeyCreateParameters>(black_box(RESTRICTED_JSON))
                .unwrap()
                .validate(keygate::UnixMillis::from_millis(NOW_MS))
        })
    });
    let params: RestrictedKeyCreateParameters = serde_json::from_str(RESTRICTED_JSON).unwrap();
    group.bench_function("restricted_validate_only", |b| {
        b.iter(|| black_box(&params).validate(keygate::UnixMillis::from_millis(NOW_MS)))
    });
    group.finish();
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
    targets = bench_mint, bench_validate
}
criterion_main!(benches);
