//! Criterion benches of route policy (issue 9): `RouteTable::lookup` on the
//! Runloop table (hits, a miss, an encoded path, a refused path) in the same
//! group as `Scopes::can`, and `RouteTable::authorize_request` against
//! `Keyring::authorize` (authenticate + can) for the same request.
//!
//! Run: `cargo bench -p keygate --bench routes -- --warm-up-time 1
//! --measurement-time 3`, then `python3 benches/medians.py` for the medians.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    missing_docs
)]

use std::hint::black_box;

use criterion::{criterion_group, Criterion};
use keygate::{mint, Access, Keyring, MintRequest, Pepper, Resource, RouteTable, Scopes};
use rand_core::SeedableRng;

const RUNLOOP: &str = include_str!("../examples/runloop.routes");
const NOW_MS: i64 = 1_000;

fn lookups(c: &mut Criterion) {
    let table: RouteTable = RUNLOOP.parse().unwrap();
    let scopes: Scopes = "devboxes:write,objects:read".parse().unwrap();
    let cases: [(&str, &str, &str); 5] = [
        ("lookup_hit", "POST", "/v1/devboxes/dbx_123/execute"),
        (
            "lookup_hit_deep",
            "POST",
            "/v1/devboxes/dbx_123/executions/exe_456/wait_for_status",
        ),
        ("lookup_miss", "GET", "/v1/unknown_family/abc/def"),
        ("lookup_encoded", "GET", "/v1/dev%62oxes/dbx_123/logs"),
        ("lookup_refused", "GET", "/v1/devboxes/..%2Faccounts/me"),
    ];
    // The cases are what their names say.
    assert!(table
        .lookup(cases[0].1, cases[0].2)
        .unwrap()
        .line()
        .is_some());
    assert!(table
        .lookup(cases[1].1, cases[1].2)
        .unwrap()
        .line()
        .is_some());
    assert!(table
        .lookup(cases[2].1, cases[2].2)
        .unwrap()
        .line()
        .is_none());
    assert!(table
        .lookup(cases[3].1, cases[3].2)
        .unwrap()
        .line()
        .is_some());
    assert!(table.lookup(cases[4].1, cases[4].2).is_err());

    let mut group = c.benchmark_group("routes");
    group.bench_function("scopes_can", |b| {
        b.iter(|| black_box(scopes).can(black_box(Resource::Objects), black_box(Access::Read)))
    });
    for (name, method, path) in cases {
        group.bench_function(name, |b| {
            b.iter(|| {
                table
                    .lookup(black_box(method), black_box(path))
                    .map(|m| m.decision())
            })
        });
    }
    group.finish();
}

fn authorize(c: &mut Criterion) {
    let table: RouteTable = RUNLOOP.parse().unwrap();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(9);
    let mut keyring = Keyring::with_capacity(Pepper::from_bytes(&[7u8; 32]), 10_000);
    let request = MintRequest::restricted(
        None,
        "devboxes:write,objects:read".parse().unwrap(),
        None,
        keygate::UnixMillis::from_millis(0),
    )
    .unwrap();
    let mut token = String::new();
    for i in 0..10_000 {
        let (record, t) = mint(
            keyring.pepper(),
            &request,
            &mut rng,
            keygate::UnixMillis::from_millis(0),
        )
        .into_parts();
        keyring.insert(record).unwrap();
        if i == 5_000 {
            token = t.expose_secret().to_owned();
        }
    }
    let (method, path) = ("POST", "/v1/devboxes/dbx_123/execute");
    assert!(keyring
        .authorize(
            &token,
            Resource::Devboxes,
            Access::Write,
            keygate::UnixMillis::from_millis(NOW_MS)
        )
        .is_ok());
    assert!(table
        .authorize_request(
            &keyring,
            Some(token.as_bytes()),
            method.as_bytes(),
            path.as_bytes(),
            keygate::UnixMillis::from_millis(NOW_MS)
        )
        .unwrap()
        .principal()
        .is_some());

    let mut group = c.benchmark_group("route_auth");
    group.bench_function("authenticate_can", |b| {
        b.iter(|| {
            keyring
                .authorize(
                    black_box(&token),
                    black_box(Resource::Devboxes),
                    black_box(Access::Write),
                    keygate::UnixMillis::from_millis(NOW_MS),
                )
                .is_ok()
        })
    });
    group.bench_function("authorize_request", |b| {
        b.iter(|| {
            table
                .authorize_request(
                    &keyring,
                    Some(black_box(token.as_bytes())),
                    black_box(method.as_bytes()),
                    black_box(path.as_bytes()),
                    keygate::UnixMillis::from_millis(NOW_MS),
                )
                .is_ok()
        })
    });
    group.finish();
}

criterion_group!(benches, lookups, authorize);

/// Runs `f` `n` times; callgrind counts only inside this function
/// (`--toggle-collect='routes::counted*'`).
#[inline(never)]
fn counted<R>(n: usize, mut f: impl FnMut() -> R) {
    for _ in 0..n {
        black_box(f());
    }
}

/// `KEYGATE_COUNT=op`: 10 000 calls of one op, for callgrind.
fn count_instructions(op: &str) {
    let table: RouteTable = RUNLOOP.parse().unwrap();
    let (method, path) = match op {
        "hit" => ("POST", "/v1/devboxes/dbx_123/execute"),
        "hit_deep" => (
            "POST",
            "/v1/devboxes/dbx_123/executions/exe_456/wait_for_status",
        ),
        "miss" => ("GET", "/v1/unknown_family/abc/def"),
        "encoded" => ("GET", "/v1/dev%62oxes/dbx_123/logs"),
        "refused" => ("GET", "/v1/devboxes/..%2Faccounts/me"),
        other => panic!("unknown op {other}: hit, hit_deep, miss, encoded, refused"),
    };
    counted(10_000, || {
        table
            .lookup(black_box(method), black_box(path))
            .map(|m| m.decision())
    });
}

fn main() {
    if let Ok(op) = std::env::var("KEYGATE_COUNT") {
        count_instructions(&op);
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
