//! The scope text form: parsing never panics, and parse/display round-trip.
#![no_main]

use keygate::{Access, Resource, Scopes};
use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
enum Input<'a> {
    /// Arbitrary text through `Scopes::parse`.
    Text(&'a str),
    /// Arbitrary bytes, lossily decoded, through `Scopes::parse`.
    Bytes(&'a [u8]),
    /// Raw bits through `Scopes::from_bits`.
    Bits(u32),
    /// Grants built through the API.
    Grants(Vec<(u8, u8)>),
}

/// A valid set displays canonically and parses back to itself.
fn round_trip(scopes: Scopes) {
    let text = scopes.to_string();
    assert_eq!(Scopes::parse(&text), Ok(scopes), "text {text:?}");
    assert_eq!(
        Scopes::parse(&text).map(|s| s.to_string()),
        Ok(text.clone())
    );
    assert_eq!(Scopes::from_bits(scopes.bits()), Some(scopes));
    // WRITE implies READ, and `access` agrees with `can`.
    for r in Resource::ALL {
        if scopes.can(r, Access::Write) {
            assert!(scopes.can(r, Access::Read));
        }
        assert!(scopes.can(r, Access::None));
        let a = scopes.access(r);
        assert!(scopes.can(r, a));
        assert_eq!(text.contains(&format!("{r}:")), a != Access::None);
    }
    assert_eq!(
        scopes.iter().count(),
        text.split(',').filter(|s| !s.is_empty()).count()
    );
}

fn parse(text: &str) {
    match Scopes::parse(text) {
        Ok(scopes) => round_trip(scopes),
        Err(e) => {
            // Errors quote at most 64 characters of the input and an
            // ellipsis; the longest fixed text (the unknown resource's,
            // which lists the names) is 151 characters with its backticks.
            let msg = e.to_string();
            assert!(msg.chars().count() <= 65 + 151, "error too long: {msg:?}");
            assert_eq!(e.http_status(), 400);
        }
    }
}

fuzz_target!(|input: Input<'_>| {
    match input {
        Input::Text(text) => parse(text),
        Input::Bytes(bytes) => parse(&String::from_utf8_lossy(bytes)),
        Input::Bits(bits) => {
            if let Some(scopes) = Scopes::from_bits(bits) {
                assert_eq!(scopes.bits(), bits);
                round_trip(scopes);
            }
        }
        Input::Grants(grants) => {
            let mut scopes = Scopes::empty();
            for (r, a) in grants {
                let r = Resource::ALL[usize::from(r) % Resource::ALL.len()];
                let a = Access::ALL[usize::from(a) % Access::ALL.len()];
                let before = scopes.access(r);
                scopes = scopes.with(r, a);
                assert_eq!(scopes.access(r), before.max(a));
            }
            round_trip(scopes);
        }
    }
});
