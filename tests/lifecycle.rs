//! The key lifecycle's laws, checked with proptest through the public API:
//! the change feed, rolls, attenuated expiry and cascading revocation.

// Test code: a panic is a failed test (clippy.toml allows these only inside #[test] fns).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::collections::{BTreeMap, BTreeSet};

use keygate::lineage::Lineage;
use keygate::{
    mint, roll, Applied, Change, ChangeOp, KeyId, KeyRecord, Keyring, MintError, MintPolicy,
    MintRequest, Pepper, Scopes,
};
use proptest::prelude::*;
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;

const PEPPER: [u8; 32] = [5; 32];

/// `n` distinct records, minted from a fixed seed, with varied expiries.
fn records(n: usize, seed: u64) -> Vec<KeyRecord> {
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    let pepper = Pepper::from_bytes(&PEPPER);
    (0..n)
        .map(|i| {
            let expiry = (i % 3 == 0).then_some(1_000 + i as i64);
            let request =
                MintRequest::restricted(Some("k"), "objects:read".parse().unwrap(), expiry, 0)
                    .unwrap();
            mint(&pepper, &request, &mut rng, 0).into_parts().0
        })
        .collect()
}

/// A log over a few keys: each step upserts a version of a key (its name
/// records the step) or revokes it. Sequence numbers are 1, 2, 3, ...
fn log(ops: &[(usize, bool)], keys: &[KeyRecord]) -> Vec<Change> {
    let pepper = Pepper::from_bytes(&PEPPER);
    let mut rng = ChaCha20Rng::seed_from_u64(99);
    ops.iter()
        .enumerate()
        .map(|(i, &(key, revoke))| {
            let seq = i as u64 + 1;
            let base = &keys[key % keys.len()];
            if revoke {
                Change::revoke(seq, base.id())
            } else {
                // A later version of the same key: roll's old record has a
                // new expiry; here a shorter one per step stands for it.
                let version = roll(&pepper, base, 10_000 - seq, &mut rng, -1)
                    .unwrap()
                    .into_parts()
                    .1;
                Change::upsert(seq, version)
            }
        })
        .collect()
}

fn apply_all(changes: impl IntoIterator<Item = Change>) -> Keyring {
    let mut keyring = Keyring::new(Pepper::from_bytes(&PEPPER));
    for change in changes {
        keyring.apply(change).unwrap();
    }
    keyring
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Any order, any duplicates: the same keyring as applying once in order.
    #[test]
    fn feed_is_order_and_duplicate_insensitive(
        ops in proptest::collection::vec((0usize..6, proptest::bool::weighted(0.25)), 1..40),
        shuffle_seed in any::<u64>(),
        dupes in proptest::collection::vec(any::<prop::sample::Index>(), 0..20),
    ) {
        let keys = records(6, 1);
        let changes = log(&ops, &keys);
        let in_order = apply_all(changes.clone());

        let mut scrambled = changes.clone();
        for d in &dupes {
            scrambled.push(d.get(&changes).clone());
        }
        let mut rng = ChaCha20Rng::seed_from_u64(shuffle_seed);
        // Fisher-Yates with the test's own seed.
        for i in (1..scrambled.len()).rev() {
            let j = (rand_core::RngCore::next_u64(&mut rng) % (i as u64 + 1)) as usize;
            scrambled.swap(i, j);
        }
        let shuffled = apply_all(scrambled);
        prop_assert!(shuffled == in_order);

        // And the model: per id, revoked if any revoke, else the last upsert.
        let mut model: BTreeMap<KeyId, Option<KeyRecord>> = BTreeMap::new();
        for change in &changes {
            let id = change.key_id();
            match &change.op {
                ChangeOp::Revoke(_) => { model.insert(id, None); }
                ChangeOp::Upsert(r) => {
                    if model.get(&id) != Some(&None) {
                        model.insert(id, Some(r.clone()));
                    }
                }
            }
        }
        for (id, expected) in &model {
            prop_assert_eq!(in_order.get(id), expected.as_ref());
            prop_assert_eq!(in_order.is_revoked(id), expected.is_none());
        }
        prop_assert_eq!(in_order.len(), model.values().filter(|v| v.is_some()).count());
        prop_assert_eq!(in_order.last_seq(), changes.len() as u64);

        // Re-applying everything changes nothing.
        let mut again = in_order.clone();
        for change in changes {
            prop_assert_eq!(again.apply(change).unwrap(), Applied::Unchanged);
        }
        prop_assert!(again == in_order);
    }

    /// A roll never extends a life: of the old key, or through the new one.
    #[test]
    fn no_roll_extends_a_life(
        expiry in proptest::option::of(-1_000i64..1_000_000),
        now in -2_000i64..2_000_000,
        overlap in prop_oneof![Just(0u64), 0u64..10_000_000, Just(u64::MAX)],
        seed in any::<u64>(),
    ) {
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        let pepper = Pepper::from_bytes(&PEPPER);
        let request = MintRequest::standard(None, None, 0).unwrap();
        let minted = mint(&pepper, &request, &mut rng, -5_000).into_parts().0;
        // Give it the generated expiry through the store's path.
        let record = KeyRecord::from_parts(keygate::KeyRecordParts {
            expires_at_ms: expiry,
            ..parts(&minted)
        }).unwrap();
        match roll(&pepper, &record, overlap, &mut rng, now) {
            Err(_) => prop_assert!(record.is_expired_at(now)),
            Ok(rolled) => {
                prop_assert!(!record.is_expired_at(now));
                let (new_key, old) = rolled.into_parts();
                let old_end = old.expires_at_ms().unwrap();
                prop_assert!(old_end <= record.expires_at_ms().unwrap_or(i64::MAX));
                prop_assert!(old_end <= now.saturating_add(i64::try_from(overlap).unwrap_or(i64::MAX)));
                prop_assert!(old_end >= now);
                prop_assert_eq!(new_key.record().expires_at_ms(), record.expires_at_ms());
                if overlap == 0 {
                    prop_assert!(old.is_expired_at(now));
                }
            }
        }
    }

    /// Under the attenuating policy no authorized child outlives its parent.
    #[test]
    fn no_attenuated_child_outlives_its_parent(
        parent_expiry in proptest::option::of(1i64..1_000_000),
        child_expiry in proptest::option::of(1i64..2_000_000),
        standard_parent in any::<bool>(),
        seed in any::<u64>(),
    ) {
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        let pepper = Pepper::from_bytes(&PEPPER);
        let parent_request = if standard_parent {
            MintRequest::standard(None, parent_expiry, 0).unwrap()
        } else {
            MintRequest::restricted(None, Scopes::all(), parent_expiry, 0).unwrap()
        };
        let parent = mint(&pepper, &parent_request, &mut rng, 0).record().principal();
        let child = MintRequest::restricted(None, "objects:read".parse().unwrap(), child_expiry, 0)
            .unwrap()
            .created_by(&parent);
        let verdict = MintPolicy::Attenuating.authorize(&parent, &child);
        match (parent_expiry, child_expiry) {
            (None, _) => prop_assert_eq!(verdict, Ok(())),
            (Some(p), None) => prop_assert_eq!(verdict, Err(MintError::ChildMustExpire { parent_expires_at_ms: p })),
            (Some(p), Some(c)) if c > p => prop_assert_eq!(
                verdict,
                Err(MintError::ChildOutlivesParent { expires_at_ms: c, parent_expires_at_ms: p })
            ),
            (Some(_), Some(_)) => prop_assert_eq!(verdict, Ok(())),
        }
        // The spec's own policy has no such rule.
        prop_assert_eq!(MintPolicy::Spec.authorize(&parent, &child), Ok(()));
        let minted = mint(&pepper, &child, &mut rng, 0);
        prop_assert_eq!(minted.record().creator_id(), Some(parent.id()));
    }

    /// Cascading revocation removes exactly the descendants.
    #[test]
    fn cascade_removes_exactly_the_descendants(
        parents in proptest::collection::vec(proptest::option::of(any::<prop::sample::Index>()), 1..40),
        root in any::<prop::sample::Index>(),
    ) {
        // Key i's creator is some key minted before it, or none.
        let base = records(parents.len(), 3);
        let mut made: Vec<KeyRecord> = Vec::new();
        for (i, parent) in parents.iter().enumerate() {
            let creator = match parent {
                Some(p) if i > 0 => Some(made[p.index(i)].id()),
                _ => None,
            };
            made.push(KeyRecord::from_parts(keygate::KeyRecordParts {
                creator_id: creator,
                ..parts(&base[i])
            }).unwrap());
        }
        let root = made[root.index(made.len())].id();
        let lineage = Lineage::from_records(&made);
        let cascade: BTreeSet<KeyId> = lineage.descendants(root).into_iter().collect();

        // Reference: a key is a descendant iff its creator chain reaches root.
        let creator: BTreeMap<KeyId, Option<KeyId>> =
            made.iter().map(|r| (r.id(), r.creator_id())).collect();
        let expected: BTreeSet<KeyId> = made
            .iter()
            .map(KeyRecord::id)
            .filter(|&id| {
                let mut cur = creator[&id];
                while let Some(c) = cur {
                    if c == root { return true; }
                    cur = creator[&c];
                }
                false
            })
            .collect();
        prop_assert_eq!(&cascade, &expected);
        for r in &made {
            prop_assert_eq!(lineage.is_descendant(r.id(), root), expected.contains(&r.id()));
        }

        // Revoking root and its descendants through the feed leaves exactly
        // the others.
        let mut keyring = Keyring::new(Pepper::from_bytes(&PEPPER));
        let mut seq = 0;
        for r in &made {
            seq += 1;
            keyring.apply(Change::upsert(seq, r.clone())).unwrap();
        }
        for id in std::iter::once(root).chain(cascade.iter().copied()) {
            seq += 1;
            keyring.apply(Change::revoke(seq, id)).unwrap();
        }
        for r in &made {
            let gone = r.id() == root || cascade.contains(&r.id());
            prop_assert_eq!(keyring.get(&r.id()).is_none(), gone);
        }
    }
}

fn parts(record: &KeyRecord) -> keygate::KeyRecordParts {
    keygate::KeyRecordParts {
        id: record.id(),
        kind: record.kind(),
        name: record.name().to_owned(),
        secret_hash: record.secret_hash(),
        scopes: record.scopes(),
        expires_at_ms: record.expires_at_ms(),
        created_at_ms: record.created_at_ms(),
        creator_id: record.creator_id(),
    }
}

#[test]
fn eviction_drops_exactly_the_expired_and_keeps_them_revocable() {
    let keys = records(9, 4); // keys 0, 3, 6 expire at 1 000, 1 003, 1 006
    let mut keyring = Keyring::new(Pepper::from_bytes(&PEPPER));
    for (i, r) in keys.iter().enumerate() {
        keyring
            .apply(Change::upsert(i as u64 + 1, r.clone()))
            .unwrap();
    }
    assert_eq!(keyring.evict_expired(999), 0);
    assert_eq!(keyring.evict_expired(1_003), 2);
    assert_eq!(keyring.len(), 7);
    assert!(keyring.get(&keys[0].id()).is_none());
    assert!(keyring.get(&keys[3].id()).is_none());
    assert!(keyring.get(&keys[6].id()).is_some());
    // An evicted id is not revoked; revoking it still leaves a tombstone.
    assert!(!keyring.is_revoked(&keys[0].id()));
    assert_eq!(
        keyring.apply(Change::revoke(20, keys[0].id())).unwrap(),
        Applied::Changed
    );
    assert!(keyring.is_revoked(&keys[0].id()));
    assert_eq!(keyring.evict_expired(i64::MAX), 1);
}

#[test]
fn a_stale_cache_fill_after_a_revocation_cannot_resurrect() {
    let keys = records(1, 5);
    let mut keyring = Keyring::new(Pepper::from_bytes(&PEPPER));
    keyring.apply(Change::upsert(1, keys[0].clone())).unwrap();
    keyring.apply(Change::revoke(2, keys[0].id())).unwrap();
    // The fill read the record before the revocation, and lands after it.
    assert_eq!(
        keyring.apply(Change::upsert(1, keys[0].clone())).unwrap(),
        Applied::Unchanged
    );
    // Even a higher sequence number cannot: revocation is final.
    assert_eq!(
        keyring.apply(Change::upsert(3, keys[0].clone())).unwrap(),
        Applied::Unchanged
    );
    assert_eq!(
        keyring.insert(keys[0].clone()),
        Err(keygate::KeyringError::Revoked { id: keys[0].id() })
    );
    assert!(keyring.get(&keys[0].id()).is_none());
    assert_eq!(keyring.last_seq(), 3);
}
