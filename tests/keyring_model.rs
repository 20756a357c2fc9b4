//! A state-machine test of the keyring's table against a plain map.
//!
//! Random sequences of inserts (new keys, some with expiries a slot cannot
//! hold), replacements (new scopes or expiry, or a digest that no longer
//! matches the token), revocations, feed upserts and revocations with
//! sequence numbers, evictions and bound changes run against a `Keyring`
//! that starts empty (so its table doubles many times) and a `BTreeMap`
//! model. After every step:
//!
//! 1. no key is lost: every key of the model authenticates with its token,
//!    with the model's kind, scopes and expiry, and its entry (`get`) and
//!    sequence number are the model's;
//! 2. nothing else is held: `len` and `entries` are exactly the model's,
//!    and a key the model does not hold (revoked, evicted, replaced by a
//!    digest its token does not match, or refused) does not authenticate;
//! 3. an insert past the bound fails with `Full` and changes nothing.
//!
//! ```text
//! PROPTEST_CASES=2000 cargo test -p keygate --all-features --release --test keyring_model
//! ```
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::collections::BTreeMap;

use keygate::{
    mint, AuthError, Change, KeyId, KeyKind, KeyRecord, KeyRecordParts, Keyring, KeyringError,
    MintRequest, Pepper, Scopes, SecretHash, UnixMillis,
};
use proptest::prelude::*;
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;

const NOW: i64 = 1_000_000;

#[derive(Clone, Debug)]
enum Op {
    /// A new key, restricted or standard, with the expiry chosen by the index.
    Insert {
        standard: bool,
        expiry: usize,
    },
    /// The key at an index of the model's keys, with new scopes and expiry.
    Replace {
        key: usize,
        scopes: u32,
        expiry: usize,
    },
    /// The key at an index, with a digest its token does not match.
    Rekey {
        key: usize,
    },
    Revoke {
        key: usize,
    },
    /// A feed upsert of the key at an index (its current record), at a
    /// sequence number this many above or below the last.
    Upsert {
        key: usize,
        ahead: i64,
    },
    FeedRevoke {
        key: usize,
    },
    Evict {
        at: usize,
    },
    /// Lower (or raise) the bound to the model's size plus this.
    Bound {
        room: usize,
    },
}

/// Expiries: none, ordinary ones around `NOW`, and ones a slot cannot
/// hold (before 1970, after 2248).
const EXPIRIES: [Option<i64>; 7] = [
    None,
    Some(NOW + 10),
    Some(NOW + 1_000),
    Some(NOW + 5_000_000),
    Some(-7),
    Some(1 << 43),
    Some(i64::MAX),
];

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => (any::<bool>(), 0..EXPIRIES.len()).prop_map(|(standard, expiry)| Op::Insert { standard, expiry }),
        2 => (any::<usize>(), 0u32..(1 << 18), 0..EXPIRIES.len())
            .prop_map(|(key, scopes, expiry)| Op::Replace { key, scopes, expiry }),
        1 => any::<usize>().prop_map(|key| Op::Rekey { key }),
        2 => any::<usize>().prop_map(|key| Op::Revoke { key }),
        2 => (any::<usize>(), -3i64..4).prop_map(|(key, ahead)| Op::Upsert { key, ahead }),
        1 => any::<usize>().prop_map(|key| Op::FeedRevoke { key }),
        1 => (0..EXPIRIES.len()).prop_map(|at| Op::Evict { at }),
        1 => (0usize..40).prop_map(|room| Op::Bound { room }),
    ]
}

/// What the model knows of a key.
#[derive(Clone, Debug)]
struct Held {
    record: KeyRecord,
    token: String,
    seq: u64,
    /// Whether the token matches the stored digest.
    matches: bool,
}

fn with(
    record: &KeyRecord,
    scopes: Scopes,
    expires_at: Option<i64>,
    digest: SecretHash,
) -> KeyRecord {
    KeyRecord::from_parts(KeyRecordParts {
        id: record.id(),
        kind: record.kind(),
        name: record.name().to_owned(),
        secret_hash: digest,
        scopes: if record.kind() == KeyKind::Standard {
            Scopes::all()
        } else {
            scopes
        },
        expires_at: expires_at.map(UnixMillis::from_millis),
        created_at: record.created_at(),
        creator_id: record.creator_id(),
        limits: Default::default(),
        meter: None,
    })
    .unwrap()
}

fn check(
    keyring: &Keyring,
    model: &BTreeMap<KeyId, Held>,
    gone: &BTreeMap<KeyId, String>,
) -> Result<(), TestCaseError> {
    let now = UnixMillis::from_millis(NOW);
    prop_assert_eq!(keyring.len(), model.len());
    let mut listed: Vec<_> = keyring
        .entries()
        .map(|e| (e.id(), e.kind(), e.scopes(), e.expires_at(), e.seq()))
        .collect();
    listed.sort_by_key(|e| e.0);
    let wanted: Vec<_> = model
        .values()
        .map(|h| {
            (
                h.record.id(),
                h.record.kind(),
                h.record.scopes(),
                h.record.expires_at(),
                h.seq,
            )
        })
        .collect();
    prop_assert_eq!(&listed, &wanted);
    for (id, held) in model {
        let entry = keyring.get(id).unwrap();
        prop_assert_eq!(entry.seq(), held.seq);
        prop_assert_eq!(entry.expires_at(), held.record.expires_at());
        let result = keyring.authenticate(&held.token, now);
        if !held.matches {
            prop_assert_eq!(result, Err(AuthError::InvalidCredentials));
        } else if held.record.is_expired_at(now) {
            prop_assert!(
                matches!(result, Err(AuthError::Expired { .. })),
                "{:?}",
                result
            );
        } else {
            let p = result.unwrap();
            prop_assert_eq!(
                (p.id(), p.kind(), p.scopes(), p.expires_at()),
                (
                    held.record.id(),
                    held.record.kind(),
                    held.record.scopes(),
                    held.record.expires_at()
                )
            );
        }
    }
    for (id, token) in gone {
        if !model.contains_key(id) {
            prop_assert!(!keyring.contains(id));
            prop_assert_eq!(
                keyring.authenticate(token, now),
                Err(AuthError::InvalidCredentials)
            );
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn the_table_never_loses_or_invents_a_key(ops in proptest::collection::vec(op(), 1..400), seed in any::<u64>()) {
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        let pepper = Pepper::generate(&mut rng);
        let mut keyring = Keyring::new(pepper.clone());
        let mut model: BTreeMap<KeyId, Held> = BTreeMap::new();
        // Every key ever made, and its token: those not in the model must fail.
        let mut gone: BTreeMap<KeyId, String> = BTreeMap::new();
        let mut seq = 0u64;
        let mut bound = Keyring::MAX_KEYS;
        let pick = |model: &BTreeMap<KeyId, Held>, i: usize| model.keys().nth(i % model.len().max(1)).copied();
        for op in ops {
            match op {
                Op::Insert { standard, expiry } => {
                    let expires = EXPIRIES[expiry].map(UnixMillis::from_millis);
                    let request = if standard {
                        MintRequest::standard(None, None, UnixMillis::EPOCH).unwrap()
                    } else {
                        MintRequest::restricted(None, "devboxes:read".parse().unwrap(), None, UnixMillis::EPOCH).unwrap()
                    };
                    let (record, token) = mint(&pepper, &request, &mut rng, UnixMillis::EPOCH).into_parts();
                    let record = with(&record, record.scopes(), expires.map(UnixMillis::as_millis), record.secret_hash());
                    let token = token.expose_secret().to_owned();
                    gone.insert(record.id(), token.clone());
                    let result = keyring.insert(record.clone());
                    if model.len() >= bound {
                        prop_assert_eq!(result, Err(KeyringError::Full { max: bound }));
                    } else {
                        prop_assert_eq!(result, Ok(None));
                        model.insert(record.id(), Held { record, token, seq: 0, matches: true });
                    }
                }
                Op::Replace { key, scopes, expiry } => {
                    let Some(id) = pick(&model, key) else { continue };
                    let held = model.get_mut(&id).unwrap();
                    let scopes = Scopes::from_bits(scopes).unwrap_or(Scopes::empty());
                    let record = with(&held.record, scopes, EXPIRIES[expiry], held.record.secret_hash());
                    let old = keyring.insert(record.clone()).unwrap().unwrap();
                    prop_assert_eq!(old.expires_at(), held.record.expires_at());
                    prop_assert_eq!(old.scopes(), held.record.scopes());
                    held.record = record;
                }
                Op::Rekey { key } => {
                    let Some(id) = pick(&model, key) else { continue };
                    let held = model.get_mut(&id).unwrap();
                    let record = with(&held.record, held.record.scopes(), held.record.expires_at().map(UnixMillis::as_millis), SecretHash::from_bytes([7; 32]));
                    keyring.insert(record.clone()).unwrap();
                    held.record = record;
                    held.matches = false;
                }
                Op::Revoke { key } => {
                    let Some(id) = pick(&model, key) else { continue };
                    prop_assert!(keyring.revoke(&id).is_some());
                    model.remove(&id);
                }
                Op::Upsert { key, ahead } => {
                    let Some(id) = pick(&model, key) else { continue };
                    let at = seq.saturating_add_signed(ahead).max(1);
                    let held = model.get_mut(&id).unwrap();
                    let result = keyring.apply(Change::upsert(at, held.record.clone())).unwrap();
                    // Applied when newer than what the key holds (and than
                    // anything compacted, which this test never does).
                    let applies = at > held.seq;
                    prop_assert_eq!(result == keygate::Applied::Changed, applies);
                    if applies {
                        held.seq = at;
                    }
                    seq = seq.max(at);
                }
                Op::FeedRevoke { key } => {
                    let Some(id) = pick(&model, key) else { continue };
                    seq += 1;
                    keyring.apply(Change::revoke(seq, id)).unwrap();
                    model.remove(&id);
                }
                Op::Evict { at } => {
                    let now = UnixMillis::from_millis(EXPIRIES[at].unwrap_or(NOW));
                    let expired: Vec<KeyId> = model
                        .values()
                        .filter(|h| h.record.is_expired_at(now))
                        .map(|h| h.record.id())
                        .collect();
                    prop_assert_eq!(keyring.evict_expired(now), expired.len());
                    for id in expired {
                        model.remove(&id);
                    }
                }
                Op::Bound { room } => {
                    bound = model.len() + room;
                    keyring.set_max_keys(bound);
                }
            }
            check(&keyring, &model, &gone)?;
        }
    }
}
