//! Token parsing: any bytes give `Ok` or `Err`, never a panic; `Ok` formats
//! back to the same bytes; acceptance agrees with an independent model of
//! the format. Inputs of 63+ bytes are also tried with a correct checksum
//! appended, so the fuzzer reaches the `Ok` path without solving CRC32.
#![no_main]

use keygate::{KeyKind, Token};
use libfuzzer_sys::fuzz_target;

mod common;

fn check(bytes: &[u8]) {
    let parsed = Token::parse(bytes);
    assert_eq!(
        parsed.is_ok(),
        common::reference_accepts(bytes),
        "library and model disagree on {bytes:?}: {parsed:?}"
    );
    match parsed {
        Ok(token) => {
            let text = token.to_secret_token();
            assert_eq!(text.expose_secret().as_bytes(), bytes);
            assert_eq!(token.key_id().as_str().as_bytes(), &bytes[3..19]);
            let prefix = match token.kind() {
                KeyKind::Standard => b"ak_",
                KeyKind::Restricted => b"rk_",
            };
            assert_eq!(&bytes[..3], prefix);
            // The &str entry point agrees, and the redacted forms hide the secret.
            let as_str = std::str::from_utf8(bytes).expect("a parsed token is ASCII");
            let again = Token::parse(as_str).expect("the &str entry point accepts it too");
            assert_eq!(again.kind(), token.kind());
            assert_eq!(again.key_id(), token.key_id());
            assert_eq!(again.to_secret_token().expose_secret(), as_str);
            let secret = &as_str[20..63];
            assert!(!format!("{token}").contains(secret));
            assert!(!format!("{token:?}").contains(secret));
        }
        Err(e) => {
            assert_eq!(e.http_status(), 401);
            let _ = e.to_string();
            if let Ok(s) = std::str::from_utf8(bytes) {
                assert_eq!(Token::parse(s).err(), Some(e));
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    check(data);
    if data.len() >= common::CHECKED_LEN {
        check(&common::with_checksum(&data[..common::CHECKED_LEN]));
    }
});
