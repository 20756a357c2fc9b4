//! Panic-freedom and arithmetic edges of untrusted input, through the public
//! API: extreme times and expiries, name bounds, malformed and oversized
//! tokens, huge scope text and hostile JSON. Each test asserts the exact
//! outcome, not only the absence of a panic.
// Test code: helpers outside `#[test]` functions may unwrap and index too.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod common;
use common::with_checksum;

use keygate::wire::{ApiKeyCreateParameters, RestrictedKeyCreateParameters, ScopeEntryView};
use keygate::{
    Access, AuthError, KeyId, KeyKind, Keyring, MintRequest, Pepper, Resource, ScopeParseError,
    Scopes, Token, TokenError, UnixMillis, ValidationError, MAX_NAME_LEN,
};
use rand_core::SeedableRng;

fn rng() -> rand_chacha::ChaCha20Rng {
    rand_chacha::ChaCha20Rng::seed_from_u64(0xed6e)
}

/// A keyring holding one key minted from `request` at `created_ms`.
fn keyring_with(request: &MintRequest, created_ms: i64) -> (Keyring, String) {
    let mut rng = rng();
    let mut keyring = Keyring::new(Pepper::generate(&mut rng));
    let (record, token) = keygate::mint(
        keyring.pepper(),
        request,
        &mut rng,
        keygate::UnixMillis::from_millis(created_ms),
    )
    .into_parts();
    assert_eq!(record.created_at().as_millis(), created_ms);
    keyring.insert(record).unwrap();
    (keyring, token.expose_secret().to_owned())
}

// ---- expires_at_ms and now_ms at the extremes -------------------------------

#[test]
fn expiry_at_i64_max() {
    let end = UnixMillis::from_millis(i64::MAX);
    let request = MintRequest::standard(None, Some(end), UnixMillis::EPOCH).unwrap();
    assert_eq!(request.expires_at(), Some(end));
    let (keyring, token) = keyring_with(&request, 0);
    assert!(keyring
        .authenticate(&token, keygate::UnixMillis::from_millis(i64::MIN))
        .is_ok());
    assert!(keyring
        .authenticate(&token, keygate::UnixMillis::from_millis(i64::MAX - 1))
        .is_ok());
    // Valid while now < expiry: at i64::MAX itself it has expired.
    assert!(matches!(
        keyring.authenticate(&token, keygate::UnixMillis::from_millis(i64::MAX)),
        Err(AuthError::Expired { expires_at, .. }) if expires_at == end
    ));
    // Accepted one millisecond before the end of time, not at it.
    assert!(MintRequest::standard(None, Some(end), UnixMillis::from_millis(i64::MAX - 1)).is_ok());
    assert_eq!(
        MintRequest::standard(None, Some(end), end),
        Err(ValidationError::ExpiryNotInFuture {
            expires_at: end,
            now: end
        })
    );
}

#[test]
fn negative_expiries_are_rejected_whatever_now_is() {
    for expiry in [i64::MIN, i64::MIN + 1, -1].map(UnixMillis::from_millis) {
        for now in [i64::MIN, -2, 0, i64::MAX] {
            assert_eq!(
                MintRequest::standard(None, Some(expiry), keygate::UnixMillis::from_millis(now)),
                Err(ValidationError::ExpiryNegative(expiry)),
                "expiry {expiry}, now {now}"
            );
            assert_eq!(
                MintRequest::restricted(
                    None,
                    Scopes::all(),
                    Some(expiry),
                    keygate::UnixMillis::from_millis(now)
                ),
                Err(ValidationError::ExpiryNegative(expiry))
            );
        }
    }
    let msg = ValidationError::ExpiryNegative(UnixMillis::from_millis(i64::MIN)).to_string();
    assert_eq!(msg, "`expires_at_ms` is negative: `-9223372036854775808`");
}

#[test]
fn expiry_zero_needs_a_negative_now() {
    let epoch = UnixMillis::EPOCH;
    assert_eq!(
        MintRequest::standard(None, Some(epoch), epoch),
        Err(ValidationError::ExpiryNotInFuture {
            expires_at: epoch,
            now: epoch
        })
    );
    assert_eq!(
        MintRequest::standard(None, Some(epoch), UnixMillis::from_millis(-1))
            .unwrap()
            .expires_at(),
        Some(epoch)
    );
    assert_eq!(
        MintRequest::standard(None, Some(epoch), UnixMillis::from_millis(i64::MIN))
            .unwrap()
            .expires_at(),
        Some(epoch)
    );
}

#[test]
fn now_at_the_extremes() {
    // No expiry: valid at any time, minted at any time.
    for now in [i64::MIN, -1, 0, i64::MAX] {
        let request =
            MintRequest::standard(None, None, keygate::UnixMillis::from_millis(now)).unwrap();
        let (keyring, token) = keyring_with(&request, now);
        for at in [i64::MIN, -1, 0, i64::MAX] {
            assert!(
                keyring
                    .authenticate(&token, keygate::UnixMillis::from_millis(at))
                    .is_ok(),
                "minted {now}, at {at}"
            );
        }
    }
    // A key minted at i64::MIN with the smallest expiry.
    let request = MintRequest::restricted(
        None,
        Scopes::all(),
        Some(UnixMillis::EPOCH),
        keygate::UnixMillis::from_millis(i64::MIN),
    )
    .unwrap();
    let (keyring, token) = keyring_with(&request, i64::MIN);
    assert!(keyring
        .authenticate(&token, keygate::UnixMillis::from_millis(-1))
        .is_ok());
    assert!(keyring
        .authenticate(&token, keygate::UnixMillis::from_millis(0))
        .is_err());
}

#[test]
fn wire_expiry_edges() {
    let parse = |json: &str| serde_json::from_str::<ApiKeyCreateParameters>(json);
    let max = parse(r#"{"expires_at_ms":9223372036854775807}"#).unwrap();
    assert_eq!(
        max.validate(keygate::UnixMillis::from_millis(0))
            .unwrap()
            .expires_at(),
        Some(UnixMillis::from_millis(i64::MAX))
    );
    assert!(max
        .validate(keygate::UnixMillis::from_millis(i64::MAX))
        .is_err());
    let min = parse(r#"{"expires_at_ms":-9223372036854775808}"#).unwrap();
    assert_eq!(
        min.validate(keygate::UnixMillis::from_millis(i64::MIN)),
        Err(ValidationError::ExpiryNegative(UnixMillis::from_millis(
            i64::MIN
        )))
    );
    // Out of range, fractional or exponent forms are JSON errors, not wraps.
    for bad in [
        r#"{"expires_at_ms":9223372036854775808}"#,
        r#"{"expires_at_ms":-9223372036854775809}"#,
        r#"{"expires_at_ms":18446744073709551616}"#,
        r#"{"expires_at_ms":1e3}"#,
        r#"{"expires_at_ms":1.0}"#,
        r#"{"expires_at_ms":"1000"}"#,
    ] {
        assert!(parse(bad).is_err(), "{bad}");
    }
}

// ---- names ------------------------------------------------------------------

#[test]
fn name_length_bounds() {
    let at_limit = "n".repeat(MAX_NAME_LEN);
    assert_eq!(MAX_NAME_LEN, 256);
    assert_eq!(
        MintRequest::standard(Some(&at_limit), None, keygate::UnixMillis::from_millis(0))
            .unwrap()
            .name(),
        at_limit
    );
    let over = "n".repeat(MAX_NAME_LEN + 1);
    assert_eq!(
        MintRequest::standard(Some(&over), None, keygate::UnixMillis::from_millis(0)),
        Err(ValidationError::NameTooLong { len: 257, max: 256 })
    );
    // Bytes, not characters: 64 four-byte characters fit, 65 don't.
    assert!(MintRequest::standard(
        Some(&"🔑".repeat(64)),
        None,
        keygate::UnixMillis::from_millis(0)
    )
    .is_ok());
    assert!(MintRequest::standard(
        Some(&"🔑".repeat(65)),
        None,
        keygate::UnixMillis::from_millis(0)
    )
    .is_err());
    let huge = "n".repeat(1 << 20);
    assert_eq!(
        MintRequest::standard(Some(&huge), None, keygate::UnixMillis::from_millis(0)),
        Err(ValidationError::NameTooLong {
            len: 1 << 20,
            max: 256
        })
    );
}

#[test]
fn control_characters_in_names() {
    for (name, position) in [
        ("\0", 0),
        ("a\nb", 1),
        ("ab\u{1b}[31m", 2),
        ("x\u{7f}", 1),
        ("é\u{85}", 2),
    ] {
        match MintRequest::restricted(
            Some(name),
            Scopes::all(),
            None,
            keygate::UnixMillis::from_millis(0),
        ) {
            Err(ValidationError::NameControlCharacter {
                position: at,
                name: shown,
            }) => {
                assert_eq!(at, position, "{name:?}");
                assert!(!shown.chars().any(char::is_control), "escaped: {shown:?}");
            }
            other => panic!("{name:?}: {other:?}"),
        }
    }
    // The message quotes at most 64 characters of a long hostile name.
    let long = "\u{7}".repeat(MAX_NAME_LEN);
    let err =
        MintRequest::standard(Some(&long), None, keygate::UnixMillis::from_millis(0)).unwrap_err();
    assert!(err.to_string().chars().count() < 160, "{err}");
}

// ---- tokens -----------------------------------------------------------------

fn real_token() -> (Keyring, String) {
    keyring_with(
        &MintRequest::standard(None, None, keygate::UnixMillis::from_millis(0)).unwrap(),
        0,
    )
}

#[test]
fn token_lengths() {
    let (keyring, token) = real_token();
    let bytes = token.as_bytes();
    let mut long = bytes.to_vec();
    long.push(b'0');
    let cases: Vec<Vec<u8>> = vec![
        Vec::new(),
        bytes[..1].to_vec(),
        bytes[..68].to_vec(),
        long,
        vec![b'a'; 4096],
        vec![b'a'; 1 << 20],
    ];
    for case in &cases {
        let err = Token::parse(case).err();
        assert_eq!(err, Some(TokenError::Length { len: case.len() }));
        assert_eq!(
            keyring.authenticate(case, keygate::UnixMillis::from_millis(0)),
            Err(AuthError::Malformed(TokenError::Length { len: case.len() }))
        );
    }
    assert!(keyring
        .authenticate(bytes, keygate::UnixMillis::from_millis(0))
        .is_ok());
}

#[test]
fn non_utf8_and_non_ascii_bytes() {
    let (keyring, token) = real_token();
    for (at, byte) in [(3, 0xFF), (18, 0x80), (20, 0xC3), (40, 0x00), (68, 0xFE)] {
        let mut bytes = token.as_bytes().to_vec();
        bytes[at] = byte;
        assert_eq!(
            Token::parse(&bytes).err(),
            Some(TokenError::Character { position: at })
        );
        assert_eq!(
            keyring
                .authenticate(&bytes, keygate::UnixMillis::from_millis(0))
                .unwrap_err()
                .http_status(),
            401
        );
    }
    // A two-byte character in place of two bytes: still 69 bytes, and the
    // error names the character's first byte.
    let text = format!("{}é{}", &token[..30], &token[32..]);
    assert_eq!(text.len(), 69);
    assert_eq!(
        Token::parse(&text).err(),
        Some(TokenError::Character { position: 30 })
    );
    // Prefix and separator come first in the order of checks.
    let mut bad = token.as_bytes().to_vec();
    bad[0] = 0xFF;
    assert_eq!(Token::parse(&bad).err(), Some(TokenError::Prefix));
    let mut bad = token.as_bytes().to_vec();
    bad[19] = 0xFF;
    assert_eq!(Token::parse(&bad).err(), Some(TokenError::Separator));
}

#[test]
fn checksum_digits_beyond_u32_do_not_overflow() {
    const BASE62: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let digits = |mut value: u64| {
        let mut out = [b'0'; 6];
        for d in out.iter_mut().rev() {
            *d = BASE62[(value % 62) as usize];
            value /= 62;
        }
        assert_eq!(value, 0, "more than 6 digits");
        String::from_utf8(out.to_vec()).unwrap()
    };
    let value = |digits: &str| {
        digits.bytes().fold(0u64, |v, b| {
            v * 62 + BASE62.iter().position(|&c| c == b).unwrap() as u64
        })
    };
    let (_, token) = real_token();
    let crc = value(&token[63..]);
    assert!(crc <= u64::from(u32::MAX));
    let max = 62u64.pow(6) - 1;
    assert_eq!(digits(max), "zzzzzz");
    // Each case with its exact outcome. The ones above u32::MAX are the CRC
    // plus multiples of 2^32: a parser that truncated the digits to u32
    // (or wrapped) would accept them.
    let cases = [
        (crc, Ok(())),
        (crc + (1 << 32), Err(TokenError::Checksum)),
        (crc + (12 << 32), Err(TokenError::Checksum)),
        (max, Err(TokenError::Checksum)),
        (value("ZZZZZZ"), Err(TokenError::Checksum)),
        (u64::from(u32::MAX) + 1, Err(TokenError::Checksum)),
        ((crc + 1) % (1 << 32), Err(TokenError::Checksum)),
    ];
    for (checksum, expected) in cases {
        let text = format!("{}{}", &token[..63], digits(checksum));
        assert_eq!(
            Token::parse(&text).map(|_| ()),
            expected,
            "{checksum} = {}",
            &text[63..]
        );
    }
    assert!(value("ZZZZZZ") > u64::from(u32::MAX));
    assert!((12 << 32) + crc <= max);
}

#[test]
fn relabelled_token_fails_as_invalid_credentials() {
    let mut rng = rng();
    let mut keyring = Keyring::new(Pepper::generate(&mut rng));
    let scopes: Scopes = "account:write".parse().unwrap();
    let req =
        MintRequest::restricted(None, scopes, None, keygate::UnixMillis::from_millis(0)).unwrap();
    let (record, token) = keygate::mint(
        keyring.pepper(),
        &req,
        &mut rng,
        keygate::UnixMillis::from_millis(0),
    )
    .into_parts();
    keyring.insert(record).unwrap();
    let text = token.expose_secret();
    // rk_ -> ak_ with a recomputed checksum: well-formed, but the kind is
    // bound into the digest.
    let relabelled = with_checksum(&format!("ak_{}", &text[3..63]));
    assert_eq!(Token::parse(&relabelled).unwrap().kind(), KeyKind::Standard);
    assert_eq!(
        keyring.authenticate(&relabelled, keygate::UnixMillis::from_millis(1)),
        Err(AuthError::InvalidCredentials)
    );
}

#[test]
fn key_id_edges() {
    assert_eq!(KeyId::parse(""), Err(TokenError::KeyIdLength { len: 0 }));
    assert_eq!(
        KeyId::parse(&"a".repeat(17)),
        Err(TokenError::KeyIdLength { len: 17 })
    );
    assert_eq!(
        KeyId::parse("aaaaaaaaaaaaaaé"),
        Err(TokenError::Character { position: 14 })
    );
    assert!(serde_json::from_str::<KeyId>("\"aaaaaaaaaaaaaaa\\u0000\"").is_err());
}

// ---- scopes -----------------------------------------------------------------

#[test]
fn huge_scope_text() {
    // A megabyte of spaces is the empty set.
    assert_eq!(Scopes::parse(&" ".repeat(1 << 20)), Ok(Scopes::empty()));
    // Repetition fails on the second item, whatever the length.
    let repeated = "devboxes:read,".repeat(1 << 16);
    assert_eq!(
        Scopes::parse(&repeated),
        Err(ScopeParseError::DuplicateResource(Resource::Devboxes))
    );
    // Long unknown names are quoted cut to 64 characters.
    let long = format!("{}:read", "x".repeat(1 << 20));
    let err = Scopes::parse(&long).unwrap_err();
    assert!(matches!(err, ScopeParseError::UnknownResource(_)));
    // The cut input, plus the list of the nine valid names.
    assert!(err.to_string().chars().count() < 220, "{err}");
    let commas = ",".repeat(1 << 20);
    assert!(matches!(
        Scopes::parse(&commas),
        Err(ScopeParseError::MissingAccess(_))
    ));
    // Raw bits: every u32 outside the 18 defined bits is refused.
    assert_eq!(Scopes::from_bits(u32::MAX), None);
    assert_eq!(Scopes::from_bits(1 << 18), None);
    assert_eq!(Scopes::from_bits(0), Some(Scopes::empty()));
}

#[test]
fn every_single_grant_round_trips() {
    for r in Resource::ALL {
        for a in Access::ALL {
            let s = Scopes::grant(r, a);
            assert_eq!(Scopes::parse(&s.to_string()), Ok(s));
        }
    }
}

// ---- hostile JSON -----------------------------------------------------------

#[test]
fn deeply_nested_json_is_an_error_not_a_stack_overflow() {
    let depth = 100_000;
    // Untyped first, so the nesting is really parsed: serde_json stops at
    // its recursion limit of 128 with an error, not a stack overflow.
    let json = format!("{{\"scopes\":{}{}}}", "[".repeat(depth), "]".repeat(depth));
    let err = serde_json::from_str::<serde_json::Value>(&json).unwrap_err();
    assert_eq!(
        err.to_string(),
        "recursion limit exceeded at line 1 column 137"
    );
    // 127 levels in all fit the limit; the typed parser then rejects the
    // shape at the first level a scope entry must be an object.
    let fits = format!("{{\"scopes\":{}{}}}", "[".repeat(126), "]".repeat(126));
    let value: serde_json::Value = serde_json::from_str(&fits).unwrap();
    let err = serde_json::from_value::<RestrictedKeyCreateParameters>(value).unwrap_err();
    assert_eq!(
        err.to_string(),
        "invalid type: sequence, expected a JSON object"
    );
    // Typed, straight from the text: the same shape error at depth 2, and
    // for a nested name, at depth 1.
    let err = serde_json::from_str::<RestrictedKeyCreateParameters>(&json).unwrap_err();
    assert_eq!(
        err.to_string(),
        "invalid type: sequence, expected a JSON object at line 1 column 11"
    );
    let json = format!("{}{}", "{\"name\":".repeat(depth), "}".repeat(depth));
    let err = serde_json::from_str::<ApiKeyCreateParameters>(&json).unwrap_err();
    assert_eq!(
        err.to_string(),
        "invalid type: map, expected a string at line 1 column 8"
    );
    let err = serde_json::from_str::<serde_json::Value>(&json).unwrap_err();
    assert_eq!(
        err.to_string(),
        "recursion limit exceeded at line 1 column 1017"
    );
}

#[test]
fn many_scope_entries() {
    // Nine resources at most: the tenth entry repeats one, however long the list.
    let entry = |r| ScopeEntryView::new(r, Access::Read);
    let mut entries: Vec<_> = Resource::ALL.iter().copied().map(entry).collect();
    let params = RestrictedKeyCreateParameters {
        scopes: Some(entries.clone()),
        ..Default::default()
    };
    assert_eq!(
        params
            .validate(keygate::UnixMillis::from_millis(0))
            .unwrap()
            .scopes()
            .iter()
            .count(),
        9
    );
    entries.extend(std::iter::repeat_n(entry(Resource::Objects), 100_000));
    let params = RestrictedKeyCreateParameters {
        scopes: Some(entries),
        ..Default::default()
    };
    assert_eq!(
        params.validate(keygate::UnixMillis::from_millis(0)),
        Err(ValidationError::DuplicateResource(Resource::Objects))
    );
}

// ---- the keyring ------------------------------------------------------------

#[test]
fn absurd_capacity_does_not_panic() {
    let keyring = Keyring::with_capacity(Pepper::from_bytes(&[0; 32]), usize::MAX);
    assert!(keyring.is_empty());
    let (_, token) = real_token();
    assert_eq!(
        keyring.authenticate(&token, keygate::UnixMillis::from_millis(0)),
        Err(AuthError::InvalidCredentials)
    );
}
