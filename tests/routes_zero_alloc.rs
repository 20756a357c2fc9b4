//! `RouteTable::lookup` and `RouteTable::authorize_request` allocate
//! nothing: hits, misses, encoded paths, refused paths, and every status.
//!
//! `allocation-counter` counts per thread in this test binary only (see
//! `tests/zero_alloc.rs` for the pattern).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::hint::black_box;

use allocation_counter::measure;
use keygate::{mint, Keyring, MintRequest, Pepper, RouteTable};
use rand_core::SeedableRng;

const RUNLOOP: &str = include_str!("../examples/runloop.routes");

const PATHS: &[(&str, &str)] = &[
    ("POST", "/v1/devboxes/dbx_123/execute"),
    ("POST", "/v1/devboxes/dbx_123/read_file_contents"),
    ("POST", "/v1/devboxes/dbx_1/executions/exe_1/wait_for_status?x=1"),
    ("GET", "/v1/devboxes/disk_snapshots/snp_1/status"),
    ("GET", "/v1/objects/obj_1/download/"),
    ("HEAD", "/v1/accounts/me"),
    ("GET", "/healthz"),
    ("GET", "/v1/secrets/x"),
    ("GET", "/v1/nothing/here"),
    ("PROPFIND", "/v1/devboxes"),
    ("DELETE", "/v1/devboxes/dbx_1"),
    // Encoded, and long enough to cross the 64-byte UTF-8 chunk.
    ("GET", "/v1/dev%62oxes/caf%C3%A9%C3%A9%C3%A9%C3%A9%C3%A9%C3%A9%C3%A9%C3%A9%C3%A9%C3%A9%C3%A9%C3%A9%C3%A9%C3%A9%C3%A9%C3%A9%C3%A9%C3%A9%C3%A9%C3%A9%C3%A9%C3%A9%C3%A9%C3%A9%C3%A9%C3%A9%C3%A9%C3%A9%C3%A9%C3%A9%C3%A9%C3%A9%C3%A9%C3%A9%C3%A9"),
    // Refused (400).
    ("GET", "/v1/devboxes/..%2Faccounts"),
    ("GET", "/v1//devboxes"),
    ("GET", "/v1/devboxes;jsessionid=1"),
    ("GET", "/v1/%FF"),
    ("GET", "/v1/%zz"),
    ("GET", "relative"),
    ("G ET", "/v1/devboxes"),
];

#[test]
fn the_counter_counts() {
    let info = measure(|| {
        black_box(Box::new(black_box(1u64)));
    });
    assert_eq!(info.count_total, 1);
    let table: RouteTable = RUNLOOP.parse().unwrap();
    let info = measure(|| {
        black_box(table.explain("GET", "/v1/devboxes").unwrap());
    });
    assert!(info.count_total >= 1, "{info:?}");
}

#[test]
fn lookup_allocates_nothing() {
    let table: RouteTable = RUNLOOP.parse().unwrap();
    // The cases do what they say: hits, misses and refusals.
    assert!(table
        .lookup(PATHS[0].0, PATHS[0].1)
        .unwrap()
        .line()
        .is_some());
    assert!(table
        .lookup("GET", "/v1/nothing/here")
        .unwrap()
        .line()
        .is_none());
    assert!(table.lookup("GET", "/v1/devboxes/..%2Faccounts").is_err());
    let info = measure(|| {
        for _ in 0..50 {
            for (method, path) in PATHS {
                let _ = black_box(table.lookup(black_box(method), black_box(path)));
                let _ = black_box(table.lookup(method.as_bytes(), path.as_bytes()));
            }
        }
    });
    assert_eq!(info.count_total, 0, "lookup allocated: {info:?}");
}

#[test]
fn authorize_request_allocates_nothing() {
    let table: RouteTable = RUNLOOP.parse().unwrap();
    let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(11);
    let mut keyring = Keyring::new(Pepper::generate(&mut rng));
    let mut tokens = Vec::new();
    for scopes in [None, Some("devboxes:write"), Some("objects:read")] {
        let request = match scopes {
            None => MintRequest::standard(None, None, keygate::UnixMillis::from_millis(0)).unwrap(),
            Some(s) => MintRequest::restricted(
                None,
                s.parse().unwrap(),
                None,
                keygate::UnixMillis::from_millis(0),
            )
            .unwrap(),
        };
        let (record, token) = mint(
            keyring.pepper(),
            &request,
            &mut rng,
            keygate::UnixMillis::from_millis(0),
        )
        .into_parts();
        keyring.insert(record).unwrap();
        tokens.push(Some(token.expose_secret().as_bytes().to_vec()));
    }
    tokens.push(Some(b"ak_garbage".to_vec()));
    tokens.push(None);
    // Every status occurs: 200-equivalent, 400, 401, 403.
    let mut statuses = std::collections::BTreeSet::new();
    for token in &tokens {
        for (method, path) in PATHS {
            let r = table.authorize_request(
                &keyring,
                token.as_deref(),
                method.as_bytes(),
                path.as_bytes(),
                keygate::UnixMillis::from_millis(1),
            );
            statuses.insert(r.map_or_else(|e| e.http_status(), |_| 200));
        }
    }
    assert_eq!(
        statuses.into_iter().collect::<Vec<_>>(),
        [200, 400, 401, 403]
    );
    let info = measure(|| {
        for _ in 0..10 {
            for token in &tokens {
                for (method, path) in PATHS {
                    let _ = black_box(table.authorize_request(
                        &keyring,
                        black_box(token.as_deref()),
                        method.as_bytes(),
                        path.as_bytes(),
                        keygate::UnixMillis::from_millis(1),
                    ));
                }
            }
        }
    });
    assert_eq!(info.count_total, 0, "authorize_request allocated: {info:?}");
}
