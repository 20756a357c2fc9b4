//! Laws and round-trips, checked with proptest through the public API.

// Test code: a panic is a failed test (clippy.toml allows these only inside #[test] fns).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;
use common::with_checksum;

use keygate::wire::{ApiKeyCreateParameters, RestrictedKeyCreateParameters, ScopeEntryView};
use keygate::{
    mint, Access, AuthError, KeyKind, KeyRecord, Keyring, MintError, MintPolicy, MintRequest,
    Pepper, Resource, Scopes,
};
use proptest::prelude::*;
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;

fn access() -> impl Strategy<Value = Access> {
    prop_oneof![Just(Access::None), Just(Access::Read), Just(Access::Write)]
}

/// A naive model: one access level per resource, in spec order.
fn model() -> impl Strategy<Value = [Access; 9]> {
    proptest::array::uniform9(access())
}

fn scopes_of(model: &[Access; 9]) -> Scopes {
    Resource::ALL
        .into_iter()
        .zip(model.iter().copied())
        .collect()
}

fn scopes() -> impl Strategy<Value = Scopes> {
    model().prop_map(|m| scopes_of(&m))
}

fn non_empty_scopes() -> impl Strategy<Value = Scopes> {
    scopes().prop_filter("grants something", |s| !s.is_empty())
}

/// A keyring holding one freshly minted key, and that key's token text.
fn keyring_with(seed: u64, request: &MintRequest) -> (Keyring, String) {
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    let mut keyring = Keyring::new(Pepper::generate(&mut rng));
    let (record, token) = mint(
        keyring.pepper(),
        request,
        &mut rng,
        keygate::UnixMillis::from_millis(0),
    )
    .into_parts();
    keyring.insert(record).unwrap();
    (keyring, token.expose_secret().to_owned())
}

const TOKEN_CHARS: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz_-+/= ";

proptest! {
    #[test]
    fn can_agrees_with_naive_model(m in model()) {
        let s = scopes_of(&m);
        for (i, r) in Resource::ALL.into_iter().enumerate() {
            for a in Access::ALL {
                prop_assert_eq!(s.can(r, a), m[i] >= a, "{:?} {:?} {:?}", r, a, m[i]);
            }
            prop_assert_eq!(s.access(r), m[i]);
        }
    }

    #[test]
    fn write_implies_read(s in scopes()) {
        for r in Resource::ALL {
            if s.can(r, Access::Write) {
                prop_assert!(s.can(r, Access::Read));
            }
            prop_assert!(s.can(r, Access::None));
        }
    }

    #[test]
    fn text_form_round_trips(s in scopes()) {
        let text = s.to_string();
        prop_assert_eq!(text.parse::<Scopes>().unwrap(), s);
        prop_assert_eq!(Scopes::from_bits(s.bits()), Some(s));
    }

    #[test]
    fn serde_round_trips(s in scopes()) {
        let json = serde_json::to_string(&s).unwrap();
        prop_assert_eq!(serde_json::from_str::<Scopes>(&json).unwrap(), s);
    }

    #[test]
    fn union_laws(a in scopes(), b in scopes(), c in scopes()) {
        prop_assert_eq!(a | b, b | a);
        prop_assert_eq!((a | b) | c, a | (b | c));
        prop_assert_eq!(a | a, a);
        prop_assert_eq!(a | Scopes::empty(), a);
        prop_assert_eq!(a | Scopes::all(), Scopes::all());
        prop_assert!(a.is_subset(&(a | b)));
        prop_assert!(b.is_subset(&(a | b)));
        for r in Resource::ALL {
            prop_assert_eq!((a | b).access(r), a.access(r).max(b.access(r)));
            prop_assert_eq!((a & b).access(r), a.access(r).min(b.access(r)));
        }
    }

    #[test]
    fn intersection_and_subset_laws(a in scopes(), b in scopes()) {
        prop_assert_eq!(a & b, b & a);
        prop_assert!((a & b).is_subset(&a));
        prop_assert!((a & b).is_subset(&b));
        prop_assert_eq!(a.is_subset(&b), (a | b) == b);
        prop_assert_eq!(a.is_subset(&b), (a & b) == a);
        prop_assert!(Scopes::empty().is_subset(&a));
        prop_assert!(a.is_subset(&Scopes::all()));
        // Subset means every grant of a is allowed by b.
        let by_can = Resource::ALL.into_iter().all(|r| b.can(r, a.access(r)));
        prop_assert_eq!(a.is_subset(&b), by_can);
    }

    #[test]
    fn iteration_is_in_spec_order(s in scopes()) {
        let resources: Vec<Resource> = s.iter().map(|(r, _)| r).collect();
        let mut sorted = resources.clone();
        sorted.sort();
        prop_assert_eq!(&resources, &sorted);
        prop_assert!(s.iter().all(|(_, a)| a != Access::None));
        prop_assert_eq!(s.iter().collect::<Scopes>(), s);
    }

    #[test]
    fn wire_parameters_round_trip(
        name in proptest::option::of("[a-zA-Z0-9 ]{0,20}"),
        expires in proptest::option::of(any::<i64>()),
        s in scopes(),
    ) {
        let api = ApiKeyCreateParameters { name: name.clone(), expires_at_ms: expires, rate_limit: None, credits: None, };
        let json = serde_json::to_string(&api).unwrap();
        prop_assert_eq!(serde_json::from_str::<ApiKeyCreateParameters>(&json).unwrap(), api);
        let entries: Vec<ScopeEntryView> =
            s.iter().map(|(r, a)| ScopeEntryView::new(r, a)).collect();
        let restricted = RestrictedKeyCreateParameters { name, scopes: Some(entries), expires_at_ms: expires, rate_limit: None, credits: None, };
        let json = serde_json::to_string(&restricted).unwrap();
        prop_assert_eq!(serde_json::from_str::<RestrictedKeyCreateParameters>(&json).unwrap(), restricted);
    }

    #[test]
    fn record_serde_round_trips(seed in any::<u64>(), s in non_empty_scopes(), expires in proptest::option::of(1i64..)) {
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        let pepper = Pepper::generate(&mut rng);
        let expires = expires.map(keygate::UnixMillis::from_millis);
        let request = MintRequest::restricted(Some("k"), s, expires, keygate::UnixMillis::from_millis(0)).unwrap();
        let minted = mint(&pepper, &request, &mut rng, keygate::UnixMillis::from_millis(0));
        let json = serde_json::to_string(minted.record()).unwrap();
        prop_assert!(!json.contains(&minted.token().expose_secret()[20..63]));
        prop_assert_eq!(&serde_json::from_str::<KeyRecord>(&json).unwrap(), minted.record());
    }

    #[test]
    fn mint_then_authenticate(seed in any::<u64>(), s in proptest::option::of(non_empty_scopes())) {
        let request = match s {
            Some(s) => MintRequest::restricted(None, s, None, keygate::UnixMillis::from_millis(0)).unwrap(),
            None => MintRequest::standard(None, None, keygate::UnixMillis::from_millis(0)).unwrap(),
        };
        let (keyring, token) = keyring_with(seed, &request);
        let principal = keyring.authenticate(&token, keygate::UnixMillis::from_millis(1)).unwrap();
        prop_assert_eq!(principal.scopes(), request.scopes());
        prop_assert_eq!(principal.kind(), request.kind());
        let id = principal.id();
        prop_assert_eq!(id.as_str(), &token[3..19]);
    }

    #[test]
    fn any_one_character_change_fails(
        seed in any::<u64>(),
        position in 0usize..69,
        replacement in proptest::sample::select(TOKEN_CHARS),
    ) {
        let request = MintRequest::restricted(None, Scopes::all(), None, keygate::UnixMillis::from_millis(0)).unwrap();
        let (keyring, token) = keyring_with(seed, &request);
        let mut bytes = token.clone().into_bytes();
        prop_assume!(bytes[position] != replacement);
        bytes[position] = replacement;
        prop_assert!(keyring.authenticate(&bytes, keygate::UnixMillis::from_millis(1)).is_err());
    }

    #[test]
    fn truncated_or_extended_token_fails(seed in any::<u64>(), cut in 0usize..69, extra in "[a-zA-Z0-9_]{1,8}") {
        let request = MintRequest::standard(None, None, keygate::UnixMillis::from_millis(0)).unwrap();
        let (keyring, token) = keyring_with(seed, &request);
        prop_assert!(keyring.authenticate(&token[..cut], keygate::UnixMillis::from_millis(1)).is_err());
        let extended = format!("{token}{extra}");
        prop_assert!(keyring.authenticate(&extended, keygate::UnixMillis::from_millis(1)).is_err());
    }

    #[test]
    fn relabelled_prefix_fails(seed in any::<u64>(), s in non_empty_scopes(), standard in any::<bool>()) {
        let request = if standard {
            MintRequest::standard(None, None, keygate::UnixMillis::from_millis(0)).unwrap()
        } else {
            MintRequest::restricted(None, s, None, keygate::UnixMillis::from_millis(0)).unwrap()
        };
        let (keyring, token) = keyring_with(seed, &request);
        let other = if standard { "rk_" } else { "ak_" };
        // Relabel, then re-seal the checksum so only the hash binding can catch it.
        let relabelled = with_checksum(&format!("{other}{}", &token[3..63]));
        prop_assert!(keygate::Token::parse(&relabelled).is_ok());
        prop_assert_eq!(keyring.authenticate(&relabelled, keygate::UnixMillis::from_millis(1)), Err(AuthError::InvalidCredentials));
    }

    #[test]
    fn attenuated_minter_never_exceeds_itself(
        seed in any::<u64>(),
        caller_scopes in non_empty_scopes(),
        wanted in non_empty_scopes(),
        want_standard in any::<bool>(),
    ) {
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        let pepper = Pepper::generate(&mut rng);
        let caller_req = MintRequest::restricted(None, caller_scopes, None, keygate::UnixMillis::from_millis(0)).unwrap();
        let caller = keygate::testing::principal_of(mint(&pepper, &caller_req, &mut rng, keygate::UnixMillis::from_millis(0)).record());
        let request = if want_standard {
            MintRequest::standard(None, None, keygate::UnixMillis::from_millis(0)).unwrap()
        } else {
            MintRequest::restricted(None, wanted, None, keygate::UnixMillis::from_millis(0)).unwrap()
        };
        match MintPolicy::Attenuating.authorize(&caller, &request) {
            Ok(()) => {
                prop_assert_eq!(request.kind(), KeyKind::Restricted);
                prop_assert!(request.scopes().is_subset(&caller.scopes()));
                prop_assert!(caller.can(Resource::Account, Access::Write));
                let minted = mint(&pepper, &request, &mut rng, keygate::UnixMillis::from_millis(0));
                prop_assert!(minted.record().scopes().is_subset(&caller.scopes()));
            }
            Err(e) => {
                prop_assert_eq!(e.http_status(), 403);
                let allowed_by_spec = caller.can(Resource::Account, Access::Write);
                prop_assert_eq!(MintPolicy::Spec.authorize(&caller, &request).is_ok(), allowed_by_spec);
                if allowed_by_spec {
                    prop_assert!(matches!(e, MintError::StandardFromRestricted | MintError::ScopesExceedCaller));
                }
            }
        }
    }
}

#[test]
fn checksum_helper_matches_minted_checksums() {
    let request = MintRequest::standard(None, None, keygate::UnixMillis::from_millis(0)).unwrap();
    let (_, token) = keyring_with(1, &request);
    assert_eq!(with_checksum(&token[..63]), token);
}
