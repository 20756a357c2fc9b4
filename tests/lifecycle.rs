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
            let expiry = (i % 3 == 0).then_some(keygate::UnixMillis::from_millis(1_000 + i as i64));
            let request = MintRequest::restricted(
                Some("k"),
                "objects:read".parse().unwrap(),
                expiry,
                keygate::UnixMillis::from_millis(0),
            )
            .unwrap();
            mint(
                &pepper,
                &request,
                &mut rng,
                keygate::UnixMillis::from_millis(0),
            )
            .into_parts()
            .0
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
                let version = roll(
                    &pepper,
                    base,
                    core::time::Duration::from_millis(10_000 - seq),
                    &mut rng,
                    keygate::UnixMillis::from_millis(-1),
                )
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
        // (Each version has its own expiry, so the entry tells them apart.)
        let mut model: BTreeMap<KeyId, Option<(KeyRecord, u64)>> = BTreeMap::new();
        for change in &changes {
            let id = change.key_id();
            match &change.op {
                ChangeOp::Revoke(_) => { model.insert(id, None); }
                ChangeOp::Upsert(r) => {
                    if model.get(&id) != Some(&None) {
                        model.insert(id, Some((r.clone(), change.seq)));
                    }
                }
            }
        }
        for (id, expected) in &model {
            let held = in_order
                .get(id)
                .map(|e| (e.id(), e.kind(), e.scopes(), e.expires_at(), e.seq()));
            let wanted = expected
                .as_ref()
                .map(|(r, seq)| (r.id(), r.kind(), r.scopes(), r.expires_at(), *seq));
            prop_assert_eq!(held, wanted);
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
        let request = MintRequest::standard(None, None, keygate::UnixMillis::from_millis(0)).unwrap();
        let minted = mint(&pepper, &request, &mut rng, keygate::UnixMillis::from_millis(-5_000)).into_parts().0;
        // Give it the generated expiry through the store's path.
        let record = KeyRecord::from_parts(keygate::KeyRecordParts {
            expires_at: expiry.map(keygate::UnixMillis::from_millis),
            ..parts(&minted)
        }).unwrap();
        match roll(&pepper, &record, core::time::Duration::from_millis(overlap), &mut rng, keygate::UnixMillis::from_millis(now)) {
            Err(_) => prop_assert!(record.is_expired_at(keygate::UnixMillis::from_millis(now))),
            Ok(rolled) => {
                prop_assert!(!record.is_expired_at(keygate::UnixMillis::from_millis(now)));
                let (new_key, old) = rolled.into_parts();
                let old_end = old.expires_at().unwrap().as_millis();
                prop_assert!(old_end <= record.expires_at().map_or(i64::MAX, keygate::UnixMillis::as_millis));
                // now + overlap, exactly, capped at the largest instant.
                let bound = (i128::from(now) + i128::from(overlap)).min(i128::from(i64::MAX));
                prop_assert!(i128::from(old_end) <= bound);
                prop_assert!(old_end >= now);
                prop_assert_eq!(new_key.record().expires_at(), record.expires_at());
                if overlap == 0 {
                    prop_assert!(old.is_expired_at(keygate::UnixMillis::from_millis(now)));
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
        let parent_expiry = parent_expiry.map(keygate::UnixMillis::from_millis);
        let child_expiry = child_expiry.map(keygate::UnixMillis::from_millis);
        let parent_request = if standard_parent {
            MintRequest::standard(None, parent_expiry, keygate::UnixMillis::from_millis(0)).unwrap()
        } else {
            MintRequest::restricted(None, Scopes::all(), parent_expiry, keygate::UnixMillis::from_millis(0)).unwrap()
        };
        let parent = keygate::testing::principal_of(mint(&pepper, &parent_request, &mut rng, keygate::UnixMillis::from_millis(0)).record());
        let child = MintRequest::restricted(None, "objects:read".parse().unwrap(), child_expiry, keygate::UnixMillis::from_millis(0))
            .unwrap()
            .created_by(&parent);
        let verdict = MintPolicy::Attenuating.authorize(&parent, &child);
        match (parent_expiry, child_expiry) {
            (None, _) => prop_assert_eq!(verdict, Ok(())),
            (Some(p), None) => prop_assert_eq!(verdict, Err(MintError::ChildMustExpire { parent_expires_at: p })),
            (Some(p), Some(c)) if c > p => prop_assert_eq!(
                verdict,
                Err(MintError::ChildOutlivesParent { expires_at: c, parent_expires_at: p })
            ),
            (Some(_), Some(_)) => prop_assert_eq!(verdict, Ok(())),
        }
        // The spec's own policy has no such rule.
        prop_assert_eq!(MintPolicy::Spec.authorize(&parent, &child), Ok(()));
        let minted = mint(&pepper, &child, &mut rng, keygate::UnixMillis::from_millis(0));
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
        expires_at: record.expires_at(),
        created_at: record.created_at(),
        creator_id: record.creator_id(),
        limits: record.limits(),
        meter: Some(record.meter()),
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
    assert_eq!(
        keyring.evict_expired(keygate::UnixMillis::from_millis(999)),
        0
    );
    assert_eq!(
        keyring.evict_expired(keygate::UnixMillis::from_millis(1_003)),
        2
    );
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
    assert_eq!(
        keyring.evict_expired(keygate::UnixMillis::from_millis(i64::MAX)),
        1
    );
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

/// `changes` with some of them repeated, in an order drawn from `seed`.
fn scramble(changes: &[Change], dupes: &[prop::sample::Index], seed: u64) -> Vec<Change> {
    let mut scrambled = changes.to_vec();
    if !changes.is_empty() {
        for d in dupes {
            scrambled.push(d.get(changes).clone());
        }
    }
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    for i in (1..scrambled.len()).rev() {
        let j = (rand_core::RngCore::next_u64(&mut rng) % (i as u64 + 1)) as usize;
        scrambled.swap(i, j);
    }
    scrambled
}

/// The log a store would write: no upsert of an id after its revocation.
fn store_log(ops: &[(usize, bool)], keys: &[KeyRecord]) -> Vec<Change> {
    let mut revoked = BTreeSet::new();
    log(ops, keys)
        .into_iter()
        .filter(|change| match &change.op {
            ChangeOp::Revoke(id) => {
                revoked.insert(*id);
                true
            }
            ChangeOp::Upsert(r) => !revoked.contains(&r.id()),
        })
        .collect()
}

/// Panics unless `a` and `b` hold the same records and tombstones for `ids`.
fn assert_same_keys(a: &Keyring, b: &Keyring, ids: &[KeyId]) {
    for id in ids {
        assert_eq!(a.get(id), b.get(id), "{id}");
        assert_eq!(a.is_revoked(id), b.is_revoked(id), "{id}");
    }
    assert_eq!(a.len(), b.len());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Evicting at any point, any number of times, while the changes arrive
    /// in any order with duplicates, ends where applying them in order and
    /// evicting once at the end does: an evicted record never comes back
    /// through an older change.
    #[test]
    fn eviction_at_any_point_keeps_the_outcome(
        ops in proptest::collection::vec((0usize..6, proptest::bool::weighted(0.2)), 1..40),
        shuffle_seed in any::<u64>(),
        dupes in proptest::collection::vec(any::<prop::sample::Index>(), 0..20),
        // Versions of a key expire at 9 999 - seq (or earlier): evictions
        // around there drop newer versions and leave older ones alive.
        evictions in proptest::collection::vec(
            (any::<prop::sample::Index>(), prop_oneof![3 => 9_950i64..10_000, 1 => 0i64..12_000]),
            1..4,
        ),
    ) {
        let keys = records(6, 1);
        let ids: Vec<KeyId> = keys.iter().map(KeyRecord::id).collect();
        let changes = log(&ops, &keys);
        let last_eviction = evictions.iter().map(|e| e.1).max().unwrap();
        let mut in_order = apply_all(changes.clone());
        in_order.evict_expired(keygate::UnixMillis::from_millis(last_eviction));

        let scrambled = scramble(&changes, &dupes, shuffle_seed);
        let mut at: BTreeMap<usize, Vec<i64>> = BTreeMap::new();
        for (index, now) in &evictions {
            at.entry(index.index(scrambled.len() + 1)).or_default().push(*now);
        }
        let mut evicting = Keyring::new(Pepper::from_bytes(&PEPPER));
        for (i, change) in scrambled.into_iter().enumerate() {
            for now in at.get(&i).into_iter().flatten() {
                evicting.evict_expired(keygate::UnixMillis::from_millis(*now));
            }
            evicting.apply(change).unwrap();
        }
        for now in at.get(&(changes.len() + dupes.len())).into_iter().flatten() {
            evicting.evict_expired(keygate::UnixMillis::from_millis(*now));
        }
        evicting.evict_expired(keygate::UnixMillis::from_millis(last_eviction));
        assert_same_keys(&in_order, &evicting, &ids);
        prop_assert_eq!(in_order.last_seq(), evicting.last_seq());
    }

    /// After `compact(h)`, a replay of the changes above `h` (in any order,
    /// with duplicates) leaves the keyring as it was, and a revoked key whose
    /// tombstone went stays gone.
    #[test]
    fn a_replay_above_the_horizon_behaves_after_compact(
        ops in proptest::collection::vec((0usize..6, proptest::bool::weighted(0.25)), 1..40),
        horizon in any::<prop::sample::Index>(),
        evict_at in proptest::option::of(9_950i64..10_000),
        shuffle_seed in any::<u64>(),
        dupes in proptest::collection::vec(any::<prop::sample::Index>(), 0..20),
    ) {
        let keys = records(6, 2);
        let ids: Vec<KeyId> = keys.iter().map(KeyRecord::id).collect();
        let changes = store_log(&ops, &keys);
        let mut leader = apply_all(changes.clone());
        if let Some(now) = evict_at {
            leader.evict_expired(keygate::UnixMillis::from_millis(now));
        }
        let horizon = horizon.index(leader.last_seq() as usize + 1) as u64;
        let mut compacted = leader.clone();
        let held = compacted.tombstones();
        let dropped = compacted.compact(horizon);
        prop_assert_eq!(compacted.tombstones(), held - dropped);
        prop_assert_eq!(compacted.compact(horizon), 0);
        let tail: Vec<Change> = changes.iter().filter(|c| c.seq > horizon).cloned().collect();
        for change in scramble(&tail, &dupes, shuffle_seed) {
            compacted.apply(change).unwrap();
        }
        assert_same_keys_but_forgotten_tombstones(&leader, &compacted, &ids);
        // Every key revoked in the log is gone, tombstone or not.
        for change in &changes {
            if let ChangeOp::Revoke(id) = change.op {
                prop_assert!(compacted.get(&id).is_none());
            }
        }
    }
}

/// [`assert_same_keys`], except that `compacted` may have forgotten a
/// tombstone `leader` holds.
fn assert_same_keys_but_forgotten_tombstones(leader: &Keyring, compacted: &Keyring, ids: &[KeyId]) {
    for id in ids {
        assert_eq!(leader.get(id), compacted.get(id), "{id}");
        if compacted.is_revoked(id) {
            assert!(leader.is_revoked(id), "{id}");
        }
    }
    assert_eq!(leader.len(), compacted.len());
}

/// A key and its token, minted from `seed` with no expiry.
fn key_with_token(seed: u64) -> (KeyRecord, String) {
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    let request =
        MintRequest::standard(Some("a"), None, keygate::UnixMillis::from_millis(0)).unwrap();
    let (record, token) = mint(
        &Pepper::from_bytes(&PEPPER),
        &request,
        &mut rng,
        keygate::UnixMillis::from_millis(0),
    )
    .into_parts();
    (record, token.expose_secret().to_owned())
}

#[test]
fn an_evicted_key_stays_dead_for_older_changes() {
    let (a, token) = key_with_token(21);
    let pepper = Pepper::from_bytes(&PEPPER);
    let mut rng = ChaCha20Rng::seed_from_u64(22);
    let (new_key, a_rolled) = roll(
        &pepper,
        &a,
        core::time::Duration::from_millis(100),
        &mut rng,
        keygate::UnixMillis::from_millis(0),
    )
    .unwrap()
    .into_parts();
    assert_eq!(
        a_rolled.expires_at(),
        Some(keygate::UnixMillis::from_millis(100))
    );
    let mut keyring = Keyring::new(pepper);
    assert_eq!(
        keyring.apply(Change::upsert(1, a.clone())).unwrap(),
        Applied::Changed
    );
    assert_eq!(
        keyring.apply(Change::upsert(2, a_rolled)).unwrap(),
        Applied::Changed
    );
    keyring
        .apply(Change::upsert(3, new_key.record().clone()))
        .unwrap();
    assert_eq!(
        keyring.evict_expired(keygate::UnixMillis::from_millis(1_000)),
        1
    );
    assert_eq!(keyring.tombstones(), 1);
    // The replay of A's record from before the roll changes nothing.
    assert_eq!(
        keyring.apply(Change::upsert(1, a.clone())).unwrap(),
        Applied::Unchanged
    );
    assert_eq!(
        keyring.apply(Change::upsert(2, a.clone())).unwrap(),
        Applied::Unchanged
    );
    assert_eq!(
        keyring.authenticate(&token, keygate::UnixMillis::from_millis(10_000)),
        Err(keygate::AuthError::InvalidCredentials)
    );
    assert!(keyring.get(&a.id()).is_none());
    // A newer change wins as usual (and the mark goes with it).
    assert_eq!(
        keyring.apply(Change::upsert(4, a.clone())).unwrap(),
        Applied::Changed
    );
    assert!(keyring
        .authenticate(&token, keygate::UnixMillis::from_millis(10_000))
        .is_ok());
    assert_eq!(keyring.tombstones(), 0);
    // Two keyrings that differ only in a mark are not equal.
    let mut marked = apply_all([Change::upsert(1, a_with_expiry(&a, 5))]);
    let unmarked = marked.clone();
    marked.evict_expired(keygate::UnixMillis::from_millis(5));
    let mut plain = unmarked.clone();
    plain.apply(Change::revoke(1, a.id())).unwrap();
    plain.compact(1);
    assert_eq!(marked.len(), plain.len());
    assert_eq!(marked.tombstones(), 1);
    assert!(marked != plain);
    assert_eq!(marked.compact(1), 1);
    assert!(marked == plain);
}

fn a_with_expiry(record: &KeyRecord, expiry: i64) -> KeyRecord {
    KeyRecord::from_parts(keygate::KeyRecordParts {
        expires_at: Some(keygate::UnixMillis::from_millis(expiry)),
        ..parts(record)
    })
    .unwrap()
}

#[test]
fn compact_drops_exactly_the_tombstones_and_marks_at_or_below_the_horizon() {
    let keys = records(6, 7); // keys 0 and 3 expire at 1 000 and 1 003
    let mut keyring = Keyring::new(Pepper::from_bytes(&PEPPER));
    for (i, r) in keys.iter().enumerate() {
        keyring
            .apply(Change::upsert(i as u64 + 1, r.clone()))
            .unwrap(); // seqs 1..=6
    }
    keyring.apply(Change::revoke(7, keys[1].id())).unwrap();
    keyring.apply(Change::revoke(9, keys[2].id())).unwrap();
    assert_eq!(
        keyring.evict_expired(keygate::UnixMillis::from_millis(2_000)),
        2
    ); // marks at 1 and 4
       // Revoking an evicted id turns its mark into a tombstone.
    keyring.apply(Change::revoke(11, keys[3].id())).unwrap();
    // A revocation without a feed carries the last sequence number, 11.
    keyring.revoke(&keys[4].id());
    assert_eq!(keyring.tombstones(), 5); // tombstones 7, 9, 11, 11; mark 1
    assert_eq!(keyring.compact(0), 0);
    assert_eq!(keyring.compact(1), 1);
    assert_eq!(keyring.compact(8), 1);
    assert!(!keyring.is_revoked(&keys[1].id()));
    assert!(keyring.is_revoked(&keys[2].id()));
    assert_eq!(keyring.compact(10), 1);
    assert_eq!(keyring.tombstones(), 2);
    assert!(keyring.is_revoked(&keys[3].id()) && keyring.is_revoked(&keys[4].id()));
    assert_eq!(keyring.compact(11), 2);
    assert_eq!(keyring.tombstones(), 0);
    // What is left: the keys never revoked nor evicted.
    assert_eq!(keyring.len(), 1);
    assert!(keyring.get(&keys[5].id()).is_some());
    // A change at or below the horizon that arrives after all (a server's
    // own write, late) is stale: it cannot bring a forgotten key back.
    assert_eq!(
        keyring.apply(Change::upsert(6, keys[1].clone())).unwrap(),
        Applied::Unchanged
    );
    assert!(keyring.get(&keys[1].id()).is_none());
}

#[test]
fn a_compacted_revocation_is_not_undone_by_the_store_s_later_changes() {
    let (a, token) = key_with_token(31);
    let (b, _) = key_with_token(32);
    let mut keyring = Keyring::new(Pepper::from_bytes(&PEPPER));
    keyring.apply(Change::upsert(1, a.clone())).unwrap();
    keyring.apply(Change::upsert(2, b.clone())).unwrap();
    keyring.apply(Change::revoke(3, a.id())).unwrap();
    assert_eq!(keyring.compact(3), 1);
    assert!(!keyring.is_revoked(&a.id()));
    // What a store may send after the horizon: other keys' changes, and the
    // revocation again (a replay); never an upsert of a revoked id.
    keyring.apply(Change::upsert(4, b.clone())).unwrap();
    assert_eq!(
        keyring.apply(Change::revoke(5, a.id())).unwrap(),
        Applied::Changed
    );
    assert_eq!(
        keyring.authenticate(&token, keygate::UnixMillis::from_millis(10)),
        Err(keygate::AuthError::InvalidCredentials)
    );
    assert!(keyring.is_revoked(&a.id()));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// `descendants` and `is_descendant` follow the rule written out naively:
    /// family(X) = X and its predecessors through rolls, or nothing if X was
    /// rolled itself; children(X) = keys
    /// whose creator is in family(X), less family(X); descendants = the
    /// closure of children, less family(X). Rolls and links are arbitrary,
    /// cycles included.
    #[test]
    fn lineage_follows_the_roll_rule(
        creators in proptest::collection::vec(proptest::option::of(0usize..12), 12),
        rolls in proptest::collection::vec((0usize..12, 0usize..12), 0..8),
    ) {
        let ids: Vec<KeyId> = (0..12u32)
            .map(|n| KeyId::parse(&format!("{n:0>16}")).unwrap())
            .collect();
        let creator: Vec<Option<usize>> = creators
            .iter()
            .enumerate()
            .map(|(i, c)| c.filter(|&c| c != i))
            .collect();
        let lineage = Lineage::from_links(
            creator.iter().enumerate().map(|(i, c)| (ids[i], c.map(|c| ids[c]))),
        )
        .with_rolls(rolls.iter().map(|&(o, n)| (ids[o], ids[n])));

        let family = |x: usize| {
            if rolls.iter().any(|&(o, _)| o == x) {
                return BTreeSet::new();
            }
            let mut f = BTreeSet::from([x]);
            loop {
                let more: Vec<usize> = rolls
                    .iter()
                    .filter(|&&(o, n)| f.contains(&n) && !f.contains(&o))
                    .map(|&(o, _)| o)
                    .collect();
                if more.is_empty() {
                    return f;
                }
                f.extend(more);
            }
        };
        let children = |x: usize| -> BTreeSet<usize> {
            let fam = family(x);
            (0..12)
                .filter(|k| creator[*k].is_some_and(|c| fam.contains(&c)) && !fam.contains(k))
                .collect()
        };
        for root in 0..12 {
            let mut all: BTreeSet<usize> = children(root);
            loop {
                let more: BTreeSet<usize> = all.iter().flat_map(|&k| children(k)).collect();
                let before = all.len();
                all.extend(more);
                if all.len() == before {
                    break;
                }
            }
            for f in family(root) {
                all.remove(&f);
            }
            let expected: BTreeSet<KeyId> = all.iter().map(|&k| ids[k]).collect();
            let got = lineage.descendants(ids[root]);
            prop_assert_eq!(got.len(), expected.len(), "duplicates in {:?}", got);
            prop_assert_eq!(got.into_iter().collect::<BTreeSet<_>>(), expected.clone());
            for k in 0..12 {
                prop_assert_eq!(
                    lineage.is_descendant(ids[k], ids[root]),
                    expected.contains(&ids[k]),
                    "is_descendant({}, {})", k, root
                );
            }
            let fam: BTreeSet<KeyId> = family(root).into_iter().map(|k| ids[k]).collect();
            prop_assert_eq!(lineage.family(ids[root]).into_iter().collect::<BTreeSet<_>>(), fam);
        }
    }
}
