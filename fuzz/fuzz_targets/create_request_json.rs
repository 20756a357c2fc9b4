//! Create-request JSON through validation, for both request types.
//!
//! Input layout: byte 0 picks the type (even: `ApiKeyCreateParameters`, odd:
//! `RestrictedKeyCreateParameters`); bytes 1..9 are `now_ms` (i64, little
//! endian) when byte 0 has bit 1 set, otherwise `now_ms` is a fixed
//! realistic time; the rest is the JSON body. Nothing may panic, and every
//! request that validation accepts must hold the spec's invariants.
#![no_main]

use keygate::wire::{ApiKeyCreateParameters, RestrictedKeyCreateParameters};
use keygate::{KeyKind, Keyring, MintRequest, Pepper, Scopes, DEFAULT_KEY_NAME, MAX_NAME_LEN};
use libfuzzer_sys::fuzz_target;
use rand_core::SeedableRng;

const FIXED_NOW_MS: i64 = 1_764_000_000_000;

/// Invariants shared by both request types.
fn check_common(req: &MintRequest, name: Option<&str>, expires_at_ms: Option<i64>, now_ms: i64) {
    // Name within bounds, no control character, and the one asked for.
    assert!(req.name().len() <= MAX_NAME_LEN, "name too long");
    assert!(!req.name().chars().any(char::is_control), "control char");
    assert_eq!(req.name(), name.unwrap_or(DEFAULT_KEY_NAME));
    // Expiry: absent, or not negative and strictly after now.
    assert_eq!(
        req.expires_at().map(keygate::UnixMillis::as_millis),
        expires_at_ms
    );
    if let Some(e) = req.expires_at().map(keygate::UnixMillis::as_millis) {
        assert!(e >= 0, "negative expiry accepted");
        assert!(e > now_ms, "expiry not after now accepted");
    }
    // The scope set keeps WRITE => READ and round-trips through its text form.
    assert_eq!(Scopes::from_bits(req.scopes().bits()), Some(req.scopes()));
    assert_eq!(Scopes::parse(&req.scopes().to_string()), Ok(req.scopes()));

    // An accepted request mints a key that authenticates at `now_ms`.
    let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(0);
    let mut keyring = Keyring::new(Pepper::from_bytes(&[7u8; 32]));
    let (record, token) = keygate::mint(
        keyring.pepper(),
        req,
        &mut rng,
        keygate::UnixMillis::from_millis(now_ms),
    )
    .into_parts();
    keyring.insert(record).unwrap();
    let principal = keyring
        .authenticate(
            token.expose_secret(),
            keygate::UnixMillis::from_millis(now_ms),
        )
        .expect("a fresh key authenticates at its creation time");
    assert_eq!(principal.kind(), req.kind());
    assert_eq!(principal.scopes(), req.scopes());
}

fn standard(json: &[u8], now_ms: i64) {
    let Ok(params) = serde_json::from_slice::<ApiKeyCreateParameters>(json) else {
        return;
    };
    // The type round-trips through JSON.
    let again = serde_json::to_vec(&params).expect("serializes");
    assert_eq!(
        serde_json::from_slice::<ApiKeyCreateParameters>(&again).expect("reparses"),
        params
    );
    match params.validate(keygate::UnixMillis::from_millis(now_ms)) {
        Ok(req) => {
            assert_eq!(req.kind(), KeyKind::Standard);
            assert_eq!(req.scopes(), Scopes::all());
            check_common(&req, params.name.as_deref(), params.expires_at_ms, now_ms);
        }
        Err(e) => {
            assert_eq!(e.http_status(), 400);
            assert!(!e.is_invalid_scopes());
            let _ = e.to_string();
        }
    }
}

fn restricted(json: &[u8], now_ms: i64) {
    let Ok(params) = serde_json::from_slice::<RestrictedKeyCreateParameters>(json) else {
        return;
    };
    let again = serde_json::to_vec(&params).expect("serializes");
    assert_eq!(
        serde_json::from_slice::<RestrictedKeyCreateParameters>(&again).expect("reparses"),
        params
    );
    match params.validate(keygate::UnixMillis::from_millis(now_ms)) {
        Ok(req) => {
            assert_eq!(req.kind(), KeyKind::Restricted);
            let entries = params.scopes.as_deref().expect("scopes required");
            // Known enums, both fields present, no resource twice.
            let mut seen = Vec::new();
            let mut expected = Scopes::empty();
            for entry in entries {
                let resource = entry.resource_type.expect("resource_type required");
                let access = entry.access_level.expect("access_level required");
                assert!(!seen.contains(&resource), "duplicate {resource:?} accepted");
                seen.push(resource);
                expected = expected.with(resource, access);
            }
            // The request grants exactly what the entries say, and something.
            assert_eq!(req.scopes(), expected);
            assert!(!req.scopes().is_empty());
            check_common(&req, params.name.as_deref(), params.expires_at_ms, now_ms);
        }
        Err(e) => {
            assert_eq!(e.http_status(), 400);
            let _ = e.to_string();
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let (now_ms, json) = if selector & 2 != 0 && rest.len() >= 8 {
        let (now, json) = rest.split_at(8);
        (i64::from_le_bytes(now.try_into().unwrap()), json)
    } else {
        (FIXED_NOW_MS, rest)
    };
    if selector & 1 == 0 {
        standard(json, now_ms);
    } else {
        restricted(json, now_ms);
    }
});
