//! The request hot path allocates nothing: parse → authenticate → can, for
//! standard and restricted keys, on success and on every failure path.
//!
//! `allocation-counter` installs a counting `#[global_allocator]` in this test
//! binary only (a file of its own, so other tests keep the system allocator),
//! and counts per thread, so tests running in parallel do not disturb the
//! count. The workspace forbids `unsafe`, which a hand-written `GlobalAlloc`
//! would need.
// Helpers outside `#[test]` functions may unwrap and index too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;
use common::with_checksum;

use std::hint::black_box;

use allocation_counter::{measure, AllocationInfo};
use keygate::{
    mint, Access, AuthError, KeyKind, Keyring, MintRequest, Pepper, Resource, Scopes, Token,
    TokenError,
};
use rand_core::{RngCore, SeedableRng};

const NOW_MS: i64 = 1_000;
const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

struct Setup {
    keyring: Keyring,
    standard: String,
    restricted: String,
    expired: String,
    unknown_id: String,
    wrong_secret: String,
    relabelled: String,
}

fn setup() -> Setup {
    let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(3);
    let mut keyring = Keyring::new(Pepper::generate(&mut rng));
    let mut add = |request: MintRequest, keyring: &mut Keyring| {
        let (record, token) = mint(
            keyring.pepper(),
            &request,
            &mut rng,
            keygate::UnixMillis::from_millis(0),
        )
        .into_parts();
        keyring.insert(record).unwrap();
        token.expose_secret().to_owned()
    };
    let standard = add(
        MintRequest::standard(None, None, keygate::UnixMillis::from_millis(0)).unwrap(),
        &mut keyring,
    );
    let scopes: Scopes = "devboxes:write,objects:read".parse().unwrap();
    let restricted = add(
        MintRequest::restricted(
            Some("ci"),
            scopes,
            None,
            keygate::UnixMillis::from_millis(0),
        )
        .unwrap(),
        &mut keyring,
    );
    let expired = add(
        MintRequest::restricted(
            None,
            scopes,
            Some(keygate::UnixMillis::from_millis(NOW_MS)),
            keygate::UnixMillis::from_millis(0),
        )
        .unwrap(),
        &mut keyring,
    );
    // Many more keys, so lookups probe a real table.
    for _ in 0..1_000 {
        add(
            MintRequest::standard(None, None, keygate::UnixMillis::from_millis(0)).unwrap(),
            &mut keyring,
        );
    }

    let mut other = rand_chacha::ChaCha20Rng::seed_from_u64(4);
    let mut unknown_id = restricted.clone().into_bytes();
    for byte in &mut unknown_id[3..19] {
        *byte = BASE62[(other.next_u32() % 62) as usize];
    }
    let mut wrong_secret = restricted.clone().into_bytes();
    wrong_secret[40] = if wrong_secret[40] == b'a' { b'b' } else { b'a' };
    let mut relabelled = restricted.clone().into_bytes();
    relabelled[0] = b'a';
    Setup {
        keyring,
        standard,
        restricted,
        expired,
        unknown_id: with_checksum(std::str::from_utf8(&unknown_id).unwrap()),
        wrong_secret: with_checksum(std::str::from_utf8(&wrong_secret).unwrap()),
        relabelled: with_checksum(std::str::from_utf8(&relabelled).unwrap()),
    }
}

/// Runs the whole hot path on `token` 100 times: parse, verify,
/// authenticate (text and bytes), `can` on the principal and on the keyring.
fn hot_path(keyring: &Keyring, token: &str) -> AllocationInfo {
    measure(|| {
        for _ in 0..100 {
            let token = black_box(token);
            if let Ok(parsed) = Token::parse(token) {
                let _ = black_box(
                    keyring.verify(black_box(&parsed), keygate::UnixMillis::from_millis(NOW_MS)),
                );
            }
            let _ = black_box(Token::parse(token.as_bytes()));
            if let Ok(principal) =
                black_box(keyring.authenticate(token, keygate::UnixMillis::from_millis(NOW_MS)))
            {
                black_box(principal.can(Resource::Devboxes, Access::Write));
                black_box(principal.can(Resource::Account, Access::Write));
                let _ = black_box(principal.require(Resource::Account, Access::Write));
            }
            let _ = black_box(
                keyring.authenticate(token.as_bytes(), keygate::UnixMillis::from_millis(NOW_MS)),
            );
            let _ = black_box(keyring.authorize(
                token,
                Resource::Objects,
                Access::Read,
                keygate::UnixMillis::from_millis(NOW_MS),
            ));
            let _ = black_box(keyring.authorize(
                token,
                Resource::Account,
                Access::Write,
                keygate::UnixMillis::from_millis(NOW_MS),
            ));
        }
    })
}

fn assert_zero(name: &str, info: AllocationInfo) {
    assert_eq!(
        info.count_total, 0,
        "{name}: the hot path allocated {info:?}"
    );
}

#[test]
fn the_counter_counts() {
    // Control: the counter sees an allocation made inside `measure`, so a
    // zero below means none happened rather than none counted.
    let info = measure(|| {
        black_box(Box::new(black_box(1u64)));
    });
    assert_eq!(info.count_total, 1);
    let s = setup();
    let info = measure(|| {
        // The error's message is formatted into a String: one allocation.
        black_box(
            s.keyring
                .authenticate(&s.wrong_secret, keygate::UnixMillis::from_millis(NOW_MS))
                .unwrap_err()
                .to_string(),
        );
    });
    assert!(info.count_total >= 1, "{info:?}");
}

#[test]
fn success_paths_allocate_nothing() {
    let s = setup();
    let k = &s.keyring;
    assert_eq!(
        k.authenticate(&s.standard, keygate::UnixMillis::from_millis(NOW_MS))
            .unwrap()
            .kind(),
        KeyKind::Standard
    );
    let restricted = k
        .authenticate(&s.restricted, keygate::UnixMillis::from_millis(NOW_MS))
        .unwrap();
    assert!(restricted.can(Resource::Devboxes, Access::Write));
    // Insufficient scope (a 403) is on this path too.
    assert!(matches!(
        k.authorize(
            &s.restricted,
            Resource::Account,
            Access::Write,
            keygate::UnixMillis::from_millis(NOW_MS)
        ),
        Err(AuthError::InsufficientScope { .. })
    ));
    assert_zero("standard", hot_path(k, &s.standard));
    assert_zero("restricted", hot_path(k, &s.restricted));
}

#[test]
fn failure_paths_allocate_nothing() {
    let s = setup();
    let k = &s.keyring;
    for (name, token) in [
        ("unknown id", &s.unknown_id),
        ("wrong secret", &s.wrong_secret),
        ("relabelled kind", &s.relabelled),
    ] {
        assert_eq!(
            k.authenticate(token, keygate::UnixMillis::from_millis(NOW_MS)),
            Err(AuthError::InvalidCredentials),
            "{name}"
        );
        assert_zero(name, hot_path(k, token));
    }
    assert!(matches!(
        k.authenticate(&s.expired, keygate::UnixMillis::from_millis(NOW_MS)),
        Err(AuthError::Expired { .. })
    ));
    assert_zero("expired", hot_path(k, &s.expired));
}

#[test]
fn malformed_tokens_allocate_nothing() {
    let s = setup();
    let good = s.restricted.as_bytes();
    let mut bad_checksum = good.to_vec();
    bad_checksum[68] = if bad_checksum[68] == b'0' { b'1' } else { b'0' };
    let mut bad_char = good.to_vec();
    bad_char[30] = b'-';
    let mut bad_prefix = good.to_vec();
    bad_prefix[0] = b'x';
    let mut bad_separator = good.to_vec();
    bad_separator[19] = b'a';
    let cases: [(&[u8], TokenError); 6] = [
        (&good[..68], TokenError::Length { len: 68 }),
        (b"", TokenError::Length { len: 0 }),
        (&bad_prefix, TokenError::Prefix),
        (&bad_separator, TokenError::Separator),
        (&bad_char, TokenError::Character { position: 30 }),
        (&bad_checksum, TokenError::Checksum),
    ];
    for (bytes, expected) in cases {
        assert_eq!(Token::parse(bytes).err(), Some(expected));
        let text = std::str::from_utf8(bytes).unwrap();
        assert_zero(&format!("{expected:?}"), hot_path(&s.keyring, text));
    }
}

#[test]
fn redact_tokens_allocates_nothing_on_clean_text() {
    let s = setup();
    let clean = [
        "GET /v1/devboxes/dbx_1?wait=1 200 1.2ms",
        "key rk_4GZ6bQvR9cXw2LmT revoked by bookmark_id",
        "",
    ];
    for text in clean {
        let info: AllocationInfo = measure(|| {
            black_box(keygate::redact_tokens(black_box(text)));
        });
        assert_eq!(info.count_total, 0, "{text}");
    }
    // A token in the text: one allocation, for the copy.
    let line = format!("Bearer {}", s.standard);
    let info: AllocationInfo = measure(|| {
        black_box(keygate::redact_tokens(black_box(&line)));
    });
    assert_eq!(info.count_total, 1);
}

#[test]
fn limit_checks_allocate_nothing() {
    use keygate::{Credits, KeyLimits, Limiter, RateLimit, Refill};
    use std::time::Duration;
    let s = setup();
    let principal = s
        .keyring
        .authenticate(&s.restricted, keygate::UnixMillis::from_millis(NOW_MS))
        .unwrap();
    let mut limiter = Limiter::new();
    limiter.configure(
        principal.id(),
        keygate::UnixMillis::EPOCH,
        KeyLimits {
            rate: Some(RateLimit::new(10, Duration::from_secs(1)).unwrap()),
            credits: Some(
                Credits::new(5, Some(Refill::new(5, Duration::from_secs(1)).unwrap())).unwrap(),
            ),
        },
    );
    let unlimited = s
        .keyring
        .authenticate(&s.standard, keygate::UnixMillis::from_millis(NOW_MS))
        .unwrap();
    let mut refused = 0;
    let info = measure(|| {
        for i in 0..100 {
            // Allowed, then rate limited, then refilled seconds later.
            let now = keygate::UnixMillis::from_millis(NOW_MS + (i / 20) * 1_000);
            let v = black_box(limiter.check(&principal.id(), now, black_box(1)));
            refused += usize::from(v.result().is_err());
            black_box(
                v.rate()
                    .map(|r| (r.remaining(), r.reset_after(), r.retry_after())),
            );
            black_box(limiter.check(&unlimited.id(), now, 1));
        }
    });
    assert_zero("limiter", info);
    // Each second: 5 credits pass, then 15 refusals.
    assert_eq!(refused, 75);
}
