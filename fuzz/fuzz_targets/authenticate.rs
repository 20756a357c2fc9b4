//! `Keyring::authenticate` on a keyring of a few real keys.
//!
//! With arbitrary bytes, or with real tokens mutated (bit flips, inserts,
//! deletes, replaced bytes, a relabelled prefix, a recomputed checksum so the
//! mutation reaches the digest check), it never panics and never
//! authenticates a token that it did not mint: only the exact minted texts
//! authenticate, as their own id, kind and scopes. Its verdict is, for every
//! input, that of the plain order (`Token::parse`, then
//! `Keyring::verify`): the hot path hashes first and parses only what the
//! digest does not bind, and must not differ from it in any outcome.
#![no_main]

use std::sync::OnceLock;

use keygate::{Access, AuthError, KeyKind, Keyring, MintRequest, Principal, Resource, Token};
use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use rand_core::SeedableRng;

mod common;

/// Creation time of every key, and the expiry of the expiring one.
const CREATED_MS: i64 = 1_000;
const EXPIRES_MS: i64 = 2_000;

struct Fixture {
    keyring: Keyring,
    /// Minted token texts and the principal and expiry each must yield.
    keys: Vec<(String, Principal, Option<keygate::UnixMillis>)>,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(0x6b65_7967);
        let mut keyring = Keyring::new(keygate::Pepper::generate(&mut rng));
        let requests = [
            MintRequest::standard(
                Some("admin"),
                None,
                keygate::UnixMillis::from_millis(CREATED_MS),
            )
            .unwrap(),
            MintRequest::restricted(
                Some("ci"),
                "devboxes:write,objects:read".parse().unwrap(),
                None,
                keygate::UnixMillis::from_millis(CREATED_MS),
            )
            .unwrap(),
            MintRequest::restricted(
                None,
                "account:write".parse().unwrap(),
                None,
                keygate::UnixMillis::from_millis(CREATED_MS),
            )
            .unwrap(),
            MintRequest::standard(
                Some("short-lived"),
                Some(keygate::UnixMillis::from_millis(EXPIRES_MS)),
                keygate::UnixMillis::from_millis(CREATED_MS),
            )
            .unwrap(),
            MintRequest::restricted(
                Some("expiring"),
                "agents:read".parse().unwrap(),
                Some(keygate::UnixMillis::from_millis(EXPIRES_MS)),
                keygate::UnixMillis::from_millis(CREATED_MS),
            )
            .unwrap(),
        ];
        let mut keys = Vec::new();
        for request in &requests {
            let (record, token) = keygate::mint(
                keyring.pepper(),
                request,
                &mut rng,
                keygate::UnixMillis::from_millis(CREATED_MS),
            )
            .into_parts();
            keys.push((
                token.expose_secret().to_owned(),
                keygate::testing::principal_of(&record),
                record.expires_at(),
            ));
            assert!(keyring.insert(record).unwrap().is_none());
        }
        Fixture { keyring, keys }
    })
}

#[derive(Arbitrary, Debug)]
enum Op {
    Flip {
        at: u8,
        bit: u8,
    },
    Insert {
        at: u8,
        byte: u8,
    },
    Delete {
        at: u8,
    },
    Replace {
        at: u8,
        byte: u8,
    },
    /// Replace with a base62 character, so the alphabet check passes.
    ReplaceBase62 {
        at: u8,
        digit: u8,
    },
    /// Swap `ak_` and `rk_`.
    Relabel,
    /// Move the token's secret onto another key's id.
    GraftId {
        from: u8,
    },
    Truncate {
        len: u8,
    },
    FixChecksum,
}

#[derive(Arbitrary, Debug)]
enum Input {
    Raw { bytes: Vec<u8>, now_ms: i64 },
    Mutate { key: u8, ops: Vec<Op>, now_ms: i64 },
}

fn apply(bytes: &mut Vec<u8>, op: &Op, keys: &[(String, Principal, Option<keygate::UnixMillis>)]) {
    let len = bytes.len();
    let at = |i: u8| if len == 0 { 0 } else { usize::from(i) % len };
    match *op {
        Op::Flip { at: i, bit } => {
            if len > 0 {
                bytes[at(i)] ^= 1 << (bit % 8);
            }
        }
        Op::Insert { at: i, byte } => bytes.insert(usize::from(i) % (len + 1), byte),
        Op::Delete { at: i } => {
            if len > 0 {
                bytes.remove(at(i));
            }
        }
        Op::Replace { at: i, byte } => {
            if len > 0 {
                bytes[at(i)] = byte;
            }
        }
        Op::ReplaceBase62 { at: i, digit } => {
            if len > 0 {
                bytes[at(i)] = common::BASE62[usize::from(digit) % 62];
            }
        }
        Op::Relabel => {
            if len >= 1 {
                bytes[0] = match bytes[0] {
                    b'a' => b'r',
                    b'r' => b'a',
                    other => other,
                };
                common::fix_checksum(bytes);
            }
        }
        Op::GraftId { from } => {
            let other = keys[usize::from(from) % keys.len()].0.as_bytes();
            if len == common::TOKEN_LEN {
                bytes[3..19].copy_from_slice(&other[3..19]);
                common::fix_checksum(bytes);
            }
        }
        Op::Truncate { len: n } => bytes.truncate(usize::from(n)),
        Op::FixChecksum => common::fix_checksum(bytes),
    }
}

fn check(bytes: &[u8], now_ms: i64) {
    let f = fixture();
    let result = f
        .keyring
        .authenticate(bytes, keygate::UnixMillis::from_millis(now_ms));
    let plain = Token::parse(bytes)
        .map_err(AuthError::from)
        .and_then(|token| {
            f.keyring
                .verify(&token, keygate::UnixMillis::from_millis(now_ms))
        });
    assert_eq!(
        result, plain,
        "hot path and plain order disagree on {bytes:?}"
    );
    if let Ok(text) = std::str::from_utf8(bytes) {
        assert_eq!(
            f.keyring
                .authenticate(text, keygate::UnixMillis::from_millis(now_ms)),
            result
        );
        let via_can = f.keyring.authorize(
            text,
            Resource::Devboxes,
            Access::Read,
            keygate::UnixMillis::from_millis(now_ms),
        );
        match &result {
            Ok(p) if p.can(Resource::Devboxes, Access::Read) => assert_eq!(via_can, Ok(*p)),
            _ => assert!(via_can.is_err()),
        }
    }
    match f.keys.iter().find(|(text, _, _)| text.as_bytes() == bytes) {
        Some((_, principal, expiry)) => match expiry {
            Some(e) if now_ms >= e.as_millis() => assert_eq!(
                result,
                Err(AuthError::Expired {
                    id: principal.id(),
                    expires_at: *e
                })
            ),
            _ => {
                let p = result.expect("a minted token authenticates");
                assert_eq!(p, *principal);
                assert_eq!(p.kind() == KeyKind::Standard, bytes.starts_with(b"ak_"));
            }
        },
        None => match result {
            Ok(p) => panic!("authenticated a token it did not mint, as {p:?}: {bytes:?}"),
            // `Expired` is only reported after the secret matched: for a
            // token we did not mint it would be a verification bypass.
            Err(AuthError::Expired { .. }) => panic!("expired reported for a forged token"),
            Err(AuthError::InsufficientScope { .. }) => panic!("authenticate checked a scope"),
            Err(e) => assert_eq!(e.http_status(), 401),
        },
    }
}

fuzz_target!(|input: Input| {
    match input {
        Input::Raw { bytes, now_ms } => check(&bytes, now_ms),
        Input::Mutate { key, ops, now_ms } => {
            let f = fixture();
            let mut bytes = f.keys[usize::from(key) % f.keys.len()]
                .0
                .clone()
                .into_bytes();
            // The unmutated token first, then after each operation.
            check(&bytes, now_ms);
            for op in ops.iter().take(16) {
                apply(&mut bytes, op, &f.keys);
                check(&bytes, now_ms);
            }
        }
    }
});
