//! No text keygate writes (its error messages, `redact_tokens`'s output)
//! holds a token's secret, or any 20-character piece of it, whatever text
//! the token is embedded in.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use keygate::{mint, redact_tokens, KeyId, MintRequest, Pepper, RouteTable, Scopes, Token};
use proptest::prelude::*;
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;

/// A real token, minted from `seed`; restricted or standard.
fn real_token(seed: u64) -> String {
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    let pepper = Pepper::generate(&mut rng);
    let request = if seed % 2 == 0 {
        MintRequest::standard(None, None, keygate::UnixMillis::from_millis(0)).unwrap()
    } else {
        MintRequest::restricted(
            None,
            "objects:read".parse().unwrap(),
            None,
            keygate::UnixMillis::from_millis(0),
        )
        .unwrap()
    };
    let minted = mint(
        &pepper,
        &request,
        &mut rng,
        keygate::UnixMillis::from_millis(0),
    );
    minted.token().expose_secret().to_owned()
}

/// Panics if `written` holds `secret` or any 20-character piece of it.
fn assert_no_secret(what: &str, written: &str, secret: &str) {
    assert!(secret.len() == 43);
    for start in 0..=secret.len() - 20 {
        let piece = &secret[start..start + 20];
        assert!(
            !written.contains(piece),
            "{what} leaks secret characters {start}..{}: {written}",
            start + 20
        );
    }
}

/// Text around a token: a mix of base62, `_`, separators the parsers care
/// about, and non-ASCII.
fn filler() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9_ :,/%.?#é-]{0,40}"
}

/// Every message keygate builds from text that holds `text`.
fn messages(text: &str) -> Vec<(&'static str, String)> {
    let mut out = Vec::new();
    let mut push = |what, r: Result<(), String>| {
        if let Err(message) = r {
            out.push((what, message));
        }
    };
    push("redact_tokens", Err(redact_tokens(text).into_owned()));
    push(
        "KeyId::parse",
        KeyId::parse(text).map(drop).map_err(|e| e.to_string()),
    );
    push(
        "Token::parse",
        Token::parse(text).map(drop).map_err(|e| e.to_string()),
    );
    for scopes in [
        text.to_owned(),
        format!("objects:read,{text}"),
        format!("{text}:read"),
        format!("objects:{text}"),
    ] {
        push(
            "Scopes::from_str",
            scopes
                .parse::<Scopes>()
                .map(drop)
                .map_err(|e| e.to_string()),
        );
    }
    for table in [
        format!("{text} /v1/x public"),
        format!("GET /v1/{text} public"),
        format!("GET /v1/x {text}"),
        format!("GET /v1/x objects:{text}"),
        format!("GET /v1/x public {text}"),
        format!("GET {text} public"),
    ] {
        push(
            "RouteTable::parse",
            table
                .parse::<RouteTable>()
                .map(drop)
                .map_err(|e| e.to_string()),
        );
    }
    // A route lookup's explanation echoes the request.
    let table: RouteTable = "GET /v1/** objects:read\nGET /v1/{x} deny".parse().unwrap();
    if let Ok(explanation) = table.explain("GET", &format!("/v1/{text}")) {
        push("RouteTable::explain", Err(explanation.to_string()));
    }
    let name = format!("{text}\n");
    push(
        "MintRequest name",
        MintRequest::standard(Some(&name), None, keygate::UnixMillis::from_millis(0))
            .map(drop)
            .map_err(|e| e.to_string()),
    );
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn no_message_holds_a_secret(seed in any::<u64>(), before in filler(), after in filler()) {
        let token = real_token(seed);
        let secret = &token[20..63];
        let text = format!("{before}{token}{after}");
        for (what, message) in messages(&text) {
            assert_no_secret(what, &message, secret);
        }
        // The token alone too, as a header value would carry it.
        for (what, message) in messages(&token) {
            assert_no_secret(what, &message, secret);
        }
    }

    #[test]
    fn parse_errors_of_a_corrupted_token_hold_no_secret(seed in any::<u64>(), at in 0..69usize, byte in 0..128u8) {
        let token = real_token(seed);
        let secret = &token[20..63];
        let mut corrupted = token.clone();
        corrupted.replace_range(at..=at, &char::from(byte).to_string());
        // (A byte of the secret changed to a non-word character splits it
        // into runs too short to be told from text; only the parse errors,
        // which quote nothing, are promised to hold none of it.)
        if let Err(e) = Token::parse(&corrupted) {
            assert_no_secret("Token::parse", &e.to_string(), secret);
        }
        let e = KeyId::parse(&corrupted).unwrap_err();
        assert_no_secret("KeyId::parse", &e.to_string(), secret);
        let auth = keygate::Keyring::new(Pepper::from_bytes(&[1; 32])).authenticate(&corrupted, keygate::UnixMillis::from_millis(0));
        assert_no_secret("Keyring::authenticate", &auth.unwrap_err().to_string(), secret);
    }

    #[test]
    fn redaction_is_idempotent_and_borrows_clean_text(text in "\\PC{0,80}") {
        let once = redact_tokens(&text).into_owned();
        prop_assert_eq!(redact_tokens(&once), once.as_str());
        prop_assert!(matches!(redact_tokens(&once), std::borrow::Cow::Borrowed(_)));
    }
}

#[test]
fn the_checks_above_would_see_a_leak() {
    // The oracle itself: an unredacted token fails it.
    let token = real_token(1);
    let secret = &token[20..63];
    let leaked = std::panic::catch_unwind(|| assert_no_secret("raw", &token[5..40], secret));
    assert!(leaked.is_err());
    // Every message built from the bare token names no secret, but the
    // texts do go through the parsers (they are errors, not skipped).
    let messages = messages(&format!("x {token} y"));
    assert!(messages.len() >= 10, "{messages:?}");
    for (what, message) in &messages {
        assert!(!message.contains(secret), "{what}: {message}");
    }
    // The scope parser quotes the item, redacted.
    let scope_error = "objects:read,".to_owned() + &token;
    let scope_error = scope_error.parse::<Scopes>().unwrap_err().to_string();
    assert!(
        scope_error.contains(&format!("`{}_…`", &token[..19])),
        "{scope_error}"
    );
}
