//! `Keyring::authenticate` checks a token text in its own order (hash
//! first, then only what the digest does not bind, the full parse only when
//! the digest does not match). Its verdict must be, for every text, exactly
//! that of the plain order: `Token::parse`, then `Keyring::verify`.
//! Public API only.

// Test code: a panic is a failed test (clippy.toml allows these only inside #[test] fns).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use keygate::{
    mint, Access, AuthError, Keyring, MintRequest, Pepper, Principal, Resource, Scopes, Token,
    TokenError,
};
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;

const NOW: i64 = 1_764_000_000_000;
const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// A keyring with a standard key, a restricted key and a key that has
/// expired at [`NOW`], and their tokens.
fn keyring() -> (Keyring, Vec<String>) {
    let mut rng = ChaCha20Rng::seed_from_u64(5);
    let mut keyring = Keyring::new(Pepper::generate(&mut rng));
    let requests = [
        MintRequest::standard(Some("s"), None, keygate::UnixMillis::from_millis(NOW)).unwrap(),
        MintRequest::restricted(
            Some("r"),
            Scopes::grant(Resource::Objects, Access::Write),
            None,
            keygate::UnixMillis::from_millis(NOW),
        )
        .unwrap(),
        MintRequest::restricted(
            Some("e"),
            Scopes::grant(Resource::Devboxes, Access::Read),
            Some(keygate::UnixMillis::from_millis(NOW + 1)),
            keygate::UnixMillis::from_millis(NOW),
        )
        .unwrap(),
    ];
    let mut tokens = Vec::new();
    for request in &requests {
        let (record, token) = mint(
            keyring.pepper(),
            request,
            &mut rng,
            keygate::UnixMillis::from_millis(NOW),
        )
        .into_parts();
        keyring.insert(record).unwrap();
        tokens.push(token.expose_secret().to_owned());
    }
    (keyring, tokens)
}

/// The plain order's verdict.
fn reference(keyring: &Keyring, text: &[u8], now_ms: i64) -> Result<Principal, AuthError> {
    let token = Token::parse(text)?;
    keyring.verify(&token, keygate::UnixMillis::from_millis(now_ms))
}

/// The text with its six checksum digits recomputed, so that it parses
/// whenever its other bytes do.
fn with_checksum(mut text: Vec<u8>) -> Vec<u8> {
    let mut crc = u64::from(crc32fast::hash(&text[..63]));
    for at in (63..69).rev() {
        text[at] = BASE62[(crc % 62) as usize];
        crc /= 62;
    }
    text
}

#[test]
fn every_single_byte_change_gets_the_plain_orders_verdict() {
    let (keyring, tokens) = keyring();
    let mut outcomes = std::collections::BTreeMap::<String, usize>::new();
    for now_ms in [NOW, NOW + 1] {
        for token in &tokens {
            let text = token.as_bytes();
            assert_eq!(
                keyring.authenticate(text, keygate::UnixMillis::from_millis(now_ms)),
                reference(&keyring, text, now_ms)
            );
            for at in 0..text.len() {
                for byte in 0..=255u8 {
                    if byte == text[at] {
                        continue;
                    }
                    let mut changed = text.to_vec();
                    changed[at] = byte;
                    let expected = reference(&keyring, &changed, now_ms);
                    assert_eq!(
                        keyring.authenticate(&changed, keygate::UnixMillis::from_millis(now_ms)),
                        expected,
                        "byte {at} set to {byte}"
                    );
                    // The same change under a valid checksum: only the
                    // digest can refuse the ones that then parse.
                    let rechecked = with_checksum(changed);
                    let expected_rechecked = reference(&keyring, &rechecked, now_ms);
                    assert_eq!(
                        keyring.authenticate(&rechecked, keygate::UnixMillis::from_millis(now_ms)),
                        expected_rechecked,
                        "byte {at} set to {byte}, checksum recomputed"
                    );
                    for outcome in [expected, expected_rechecked] {
                        let name = match outcome {
                            Ok(_) => "ok".to_owned(),
                            Err(AuthError::Malformed(e)) => format!("{e:?}")
                                .split([' ', '{', '('])
                                .next()
                                .unwrap()
                                .to_owned(),
                            Err(e) => format!("{e:?}")
                                .split([' ', '{'])
                                .next()
                                .unwrap()
                                .to_owned(),
                        };
                        *outcomes.entry(name).or_default() += 1;
                    }
                }
            }
        }
    }
    // The sweep reached every kind of verdict, so the equalities above
    // compared more than one path. (A change to the checksum digits that
    // recomputing undoes gives back the valid token: `ok`, and `Expired` for
    // the expiring key at NOW + 1.)
    for verdict in [
        "ok",
        "Expired",
        "InvalidCredentials",
        "Checksum",
        "Character",
        "Prefix",
        "Separator",
    ] {
        assert!(
            outcomes.get(verdict).copied().unwrap_or(0) > 0,
            "no {verdict} in {outcomes:?}"
        );
    }
}

#[test]
fn the_valid_tokens_authenticate_and_their_kinds_relabelled_do_not() {
    let (keyring, tokens) = keyring();
    for token in &tokens[..2] {
        let principal = keyring
            .authenticate(token, keygate::UnixMillis::from_millis(NOW))
            .unwrap();
        assert_eq!(principal.id(), Token::parse(token).unwrap().key_id());
        let mut relabelled = token.as_bytes().to_vec();
        relabelled[0] = if relabelled[0] == b'a' { b'r' } else { b'a' };
        let relabelled = with_checksum(relabelled);
        assert!(Token::parse(&relabelled).is_ok());
        assert_eq!(
            keyring.authenticate(&relabelled, keygate::UnixMillis::from_millis(NOW)),
            Err(AuthError::InvalidCredentials)
        );
    }
    assert!(matches!(
        keyring.authenticate(&tokens[2], keygate::UnixMillis::from_millis(NOW + 1)),
        Err(AuthError::Expired { .. })
    ));
    // A valid token's checksum digit changed: malformed, not a credential
    // failure, although the digest matches.
    let mut text = tokens[0].as_bytes().to_vec();
    text[68] = if text[68] == b'0' { b'1' } else { b'0' };
    assert_eq!(
        keyring.authenticate(&text, keygate::UnixMillis::from_millis(NOW)),
        Err(AuthError::Malformed(TokenError::Checksum))
    );
}

/// A token whose checksum has a digit `7` (value 7) after one of value 4 or
/// more, and that position.
fn token_with_a_seven_in_its_checksum() -> (Keyring, String, usize) {
    let mut rng = ChaCha20Rng::seed_from_u64(11);
    let mut keyring = Keyring::new(Pepper::generate(&mut rng));
    for _ in 0..10_000 {
        let request =
            MintRequest::standard(None, None, keygate::UnixMillis::from_millis(NOW)).unwrap();
        let (record, token) = mint(
            keyring.pepper(),
            &request,
            &mut rng,
            keygate::UnixMillis::from_millis(NOW),
        )
        .into_parts();
        let text = token.expose_secret().as_bytes();
        let value = |b: u8| BASE62.iter().position(|&c| c == b).unwrap();
        if let Some(at) = (64..69).find(|&at| text[at] == b'7' && value(text[at - 1]) >= 4) {
            keyring.insert(record).unwrap();
            return (keyring, token.expose_secret().to_owned(), at);
        }
    }
    panic!("no checksum with a 7 in 10 000 tokens");
}

#[test]
fn checksum_digits_outside_the_alphabet_are_refused_even_when_their_value_matches() {
    // A byte outside the alphabet reads as 255 in the digit table: 62 * 4 + 7.
    // In place of a 7, with the digit before it lowered by 4, the six digits
    // still add up to the checksum; only the alphabet check refuses them.
    let (keyring, token, at) = token_with_a_seven_in_its_checksum();
    let mut text = token.into_bytes();
    text[at] = b'!';
    let before = BASE62.iter().position(|&c| c == text[at - 1]).unwrap();
    text[at - 1] = BASE62[before - 4];
    let expected = Err(AuthError::Malformed(TokenError::Character { position: at }));
    assert_eq!(reference(&keyring, &text, NOW), expected);
    assert_eq!(
        keyring.authenticate(&text, keygate::UnixMillis::from_millis(NOW)),
        expected
    );
}
