//! The keyring's unit tests.

use super::*;

/// Every single-bit change of the hashed value changes `IdHasher`'s hash:
/// for a key id (one `u128` write) and for a longer byte string (several
/// writes, chained through the state).
#[test]
fn id_hasher_sees_every_bit() {
    use core::hash::BuildHasher;
    let hasher = IdHasher::default();
    let base: u128 = 0x0123_4567_89ab_cdef_fedc_ba98_7654_3210;
    let mut seen = std::collections::HashSet::new();
    assert!(seen.insert(hasher.hash_one(base)));
    for bit in 0..128 {
        assert!(
            seen.insert(hasher.hash_one(base ^ (1u128 << bit))),
            "bit {bit}"
        );
    }
    let bytes = [0x5au8; 40];
    let mut seen = std::collections::HashSet::new();
    assert!(seen.insert(hasher.hash_one(bytes)));
    for bit in 0..bytes.len() * 8 {
        let mut flipped = bytes;
        flipped[bit / 8] ^= 1 << (bit % 8);
        assert!(seen.insert(hasher.hash_one(flipped)), "bit {bit}");
    }
}
use crate::mint::{mint, MintRequest};
use crate::scope::Scopes;
use alloc::string::String;
use rand_core::SeedableRng;

fn setup(scopes: Option<Scopes>, expires: Option<i64>) -> (Keyring, String) {
    let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(9);
    let mut keyring = Keyring::new(Pepper::generate(&mut rng));
    let expires = expires.map(UnixMillis::from_millis);
    let request = match scopes {
        Some(s) => MintRequest::restricted(None, s, expires, UnixMillis::from_millis(0)).unwrap(),
        None => MintRequest::standard(None, expires, UnixMillis::from_millis(0)).unwrap(),
    };
    let (record, token) = mint(
        keyring.pepper(),
        &request,
        &mut rng,
        UnixMillis::from_millis(0),
    )
    .into_parts();
    keyring.insert(record).unwrap();
    (keyring, String::from(token.expose_secret()))
}

#[test]
fn a_stale_upsert_below_the_horizon_cannot_resurrect_a_compacted_key() {
    // A server rolls a key (seq 1, the new key), its follower reads 1,
    // then a revocation of the new key (2), applies both and compacts
    // at 2; the roll's handler, late, applies its own upsert at 1.
    let (mut keyring, token) = setup(None, None);
    let id = Token::parse(&token).unwrap().key_id();
    let record = keyring.revoke(&id).unwrap();
    let mut keyring = Keyring::new(keyring.pepper().clone());
    keyring.apply(Change::upsert(1, record.clone())).unwrap();
    keyring.apply(Change::revoke(2, id)).unwrap();
    assert_eq!(keyring.compact(2), 1);
    assert_eq!(
        keyring.apply(Change::upsert(1, record.clone())).unwrap(),
        Applied::Unchanged
    );
    assert!(keyring
        .authenticate(&token, UnixMillis::from_millis(5))
        .is_err());
    // A later change still applies.
    assert_eq!(
        keyring.apply(Change::upsert(3, record)).unwrap(),
        Applied::Changed
    );
}

#[test]
fn zero_mask_is_all_ones_only_for_zero() {
    assert_eq!(zero_mask(0), u64::MAX);
    // Every single-bit difference, the top bit included (where `x ^ -x`
    // would be 0), and a few wider ones.
    for bit in 0..64 {
        assert_eq!(zero_mask(1u64 << bit), 0, "bit {bit}");
    }
    for diff in [u64::MAX, 3, 0x8000_0000_0000_0001, 0xff00] {
        assert_eq!(zero_mask(diff), 0, "{diff:#x}");
    }
}

#[test]
fn index_differs_only_for_a_nonzero_difference() {
    use index::differs;
    assert_eq!(differs(0), 0);
    for bit in 0..128 {
        assert_eq!(differs(1u128 << bit), 1, "bit {bit}");
    }
    assert_eq!(differs(u128::MAX), 1);
}

#[test]
fn the_index_stays_at_most_half_full() {
    let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(11);
    let mut keyring = Keyring::new(Pepper::generate(&mut rng));
    let request = MintRequest::standard(None, None, UnixMillis::from_millis(0)).unwrap();
    for n in 1..=100 {
        let (record, _) = mint(
            keyring.pepper(),
            &request,
            &mut rng,
            UnixMillis::from_millis(0),
        )
        .into_parts();
        keyring.insert(record).unwrap();
        assert_eq!(keyring.index.len, n);
        assert!(
            2 * keyring.index.len <= keyring.index.size(),
            "{n} keys in {}",
            keyring.index.size()
        );
    }
}

#[test]
fn standard_key_can_everything() {
    let (keyring, token) = setup(None, None);
    for r in Resource::ALL {
        for a in Access::ALL {
            assert!(keyring
                .authorize(&token, r, a, UnixMillis::from_millis(5))
                .is_ok());
        }
    }
}

#[test]
fn relabelled_prefix_fails() {
    let (keyring, token) = setup(Some(Scopes::grant(Resource::Agents, Access::Read)), None);
    let relabelled = crate::token::SecretToken::assemble(
        KeyKind::Standard,
        &Token::parse(&token).unwrap().key_id(),
        Token::parse(&token).unwrap().secret(),
    );
    assert_eq!(
        keyring.authenticate(relabelled.expose_secret(), UnixMillis::from_millis(1)),
        Err(AuthError::InvalidCredentials)
    );
}

#[test]
fn expiry_is_exclusive() {
    let (keyring, token) = setup(None, Some(100));
    assert!(keyring
        .authenticate(&token, UnixMillis::from_millis(99))
        .is_ok());
    assert!(matches!(
        keyring.authenticate(&token, UnixMillis::from_millis(100)),
        Err(AuthError::Expired { expires_at, .. }) if expires_at == UnixMillis::from_millis(100)
    ));
    assert!(keyring
        .authenticate(&token, UnixMillis::from_millis(i64::MAX))
        .is_err());
    assert!(keyring
        .authenticate(&token, UnixMillis::from_millis(i64::MIN))
        .is_ok());
}

#[test]
fn revoked_key_fails_like_unknown() {
    let (mut keyring, token) = setup(None, None);
    let id = Token::parse(&token).unwrap().key_id();
    keyring.revoke(&id);
    assert_eq!(
        keyring.authenticate(&token, UnixMillis::from_millis(1)),
        Err(AuthError::InvalidCredentials)
    );
}

#[test]
fn digest_moved_to_another_record_fails() {
    let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(11);
    let pepper = Pepper::generate(&mut rng);
    let mut keyring = Keyring::new(pepper.clone());
    let req = MintRequest::standard(None, None, UnixMillis::from_millis(0)).unwrap();
    let (a, token_a) = mint(&pepper, &req, &mut rng, UnixMillis::from_millis(0)).into_parts();
    let (b, _token_b) = mint(&pepper, &req, &mut rng, UnixMillis::from_millis(0)).into_parts();
    // Record b now carries a's digest: a's secret under b's id must fail.
    let forged = KeyRecord::new(
        b.id(),
        b.kind(),
        b.name().into(),
        a.secret_hash(),
        b.scopes(),
        None,
        UnixMillis::EPOCH,
        None,
    );
    keyring.insert(forged).unwrap();
    let parsed = token_a.parse().unwrap();
    let moved = crate::token::SecretToken::assemble(parsed.kind(), &b.id(), parsed.secret());
    assert_eq!(
        keyring.authenticate(moved.expose_secret(), UnixMillis::from_millis(1)),
        Err(AuthError::InvalidCredentials)
    );
}

#[test]
fn a_digest_that_differs_in_any_bit_fails() {
    let (mut keyring, token) = setup(None, None);
    let id = Token::parse(&token).unwrap().key_id();
    let record = keyring.get(&id).unwrap().clone();
    let right = *record.secret_hash().as_bytes();
    for byte in 0..32 {
        for bit in [0, 7] {
            let mut wrong = right;
            wrong[byte] ^= 1 << bit;
            let forged = KeyRecord::new(
                id,
                record.kind(),
                "f".into(),
                SecretHash::from_bytes(wrong),
                record.scopes(),
                None,
                UnixMillis::EPOCH,
                None,
            );
            keyring.insert(forged).unwrap();
            assert_eq!(
                keyring.authenticate(&token, UnixMillis::from_millis(1)),
                Err(AuthError::InvalidCredentials),
                "byte {byte} bit {bit}"
            );
        }
    }
    keyring.insert(record).unwrap();
    assert!(keyring
        .authenticate(&token, UnixMillis::from_millis(1))
        .is_ok());
}

#[test]
fn digest_index_follows_inserts_revokes_and_growth() {
    let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(12);
    // Capacity 0: the index starts at its minimum and grows many times.
    let mut keyring = Keyring::new(Pepper::generate(&mut rng));
    let req = MintRequest::standard(None, None, UnixMillis::from_millis(0)).unwrap();
    let mut tokens = alloc::vec::Vec::new();
    for _ in 0..3_000 {
        let (record, token) =
            mint(keyring.pepper(), &req, &mut rng, UnixMillis::from_millis(0)).into_parts();
        keyring.insert(record).unwrap();
        tokens.push(token);
    }
    assert_eq!(keyring.index.len, 3_000);
    assert!(keyring.index.slots.len() >= 6_000);
    for t in &tokens {
        assert!(keyring
            .authenticate(t.expose_secret(), UnixMillis::from_millis(1))
            .is_ok());
    }
    for t in tokens.iter().step_by(2) {
        let id = t.parse().unwrap().key_id();
        assert!(keyring.revoke(&id).is_some());
        assert!(keyring.revoke(&id).is_none());
    }
    assert_eq!(keyring.index.len, 1_500);
    for (i, t) in tokens.iter().enumerate() {
        let result = keyring.authenticate(t.expose_secret(), UnixMillis::from_millis(1));
        assert_eq!(result.is_ok(), i % 2 == 1, "token {i}");
    }
    // Replacing a record replaces its digest: the old token stops working.
    let id = tokens[1].parse().unwrap().key_id();
    let old = keyring.get(&id).unwrap().clone();
    let replacement = KeyRecord::new(
        id,
        old.kind(),
        old.name().into(),
        SecretHash::from_bytes([9; 32]),
        old.scopes(),
        None,
        UnixMillis::EPOCH,
        None,
    );
    keyring.insert(replacement).unwrap();
    assert_eq!(keyring.index.len, 1_500);
    assert_eq!(
        keyring.authenticate(tokens[1].expose_secret(), UnixMillis::from_millis(1)),
        Err(AuthError::InvalidCredentials)
    );
    // The lookup selects the stored slot, or the decoy with mask 0 and
    // no grant.
    let (found, slot) = keyring.index.lookup(DigestIndex::key(&id), &keyring.decoy);
    assert_eq!(found, u64::MAX);
    assert_eq!(
        DigestIndex::digest(&slot.digest),
        SecretHash::from_bytes([9; 32])
    );
    assert_eq!(slot.scopes(), Scopes::all());
    assert_eq!(slot.kind(), KeyKind::Standard);
    assert_eq!(slot.expires_at(), None);
    let unknown = KeyId::parse("0000000000000000").unwrap();
    let (found, slot) = keyring
        .index
        .lookup(DigestIndex::key(&unknown), &keyring.decoy);
    assert_eq!(found, 0);
    assert_eq!(DigestIndex::digest(&slot.digest), keyring.decoy);
    assert_eq!(slot.grant, 0);
}

#[test]
fn slots_carry_the_grant() {
    let (keyring, token) = setup(Some("objects:read,agents:write".parse().unwrap()), Some(77));
    let id = Token::parse(&token).unwrap().key_id();
    let (found, slot) = keyring.index.lookup(DigestIndex::key(&id), &keyring.decoy);
    assert_eq!(found, u64::MAX);
    assert_eq!(core::mem::size_of::<Slot>(), 64);
    assert_eq!(slot.kind(), KeyKind::Restricted);
    assert_eq!(slot.expires_at(), Some(UnixMillis::from_millis(77)));
    assert_eq!(slot.scopes(), keyring.get(&id).unwrap().scopes());
    assert_eq!(
        keyring
            .authenticate(&token, UnixMillis::from_millis(1))
            .unwrap(),
        Principal::of_record(keyring.get(&id).unwrap())
    );
    // A negative expiry survives the masking (sign bits included).
    let record = keyring.get(&id).unwrap();
    let negative = KeyRecord::new(
        id,
        record.kind(),
        "n".into(),
        record.secret_hash(),
        record.scopes(),
        Some(UnixMillis::from_millis(-5)),
        UnixMillis::EPOCH,
        None,
    );
    let mut keyring = keyring.clone();
    keyring.insert(negative).unwrap();
    assert!(matches!(
        keyring.authenticate(&token, UnixMillis::from_millis(-6)),
        Ok(p) if p.scopes() == record.scopes()
    ));
    assert_eq!(
        keyring.authenticate(&token, UnixMillis::from_millis(-5)),
        Err(AuthError::Expired {
            id,
            expires_at: UnixMillis::from_millis(-5)
        })
    );
}

/// A record with `id` and a digest of its own.
fn record_with_id(id: KeyId, n: u8) -> KeyRecord {
    KeyRecord::new(
        id,
        KeyKind::Standard,
        "crafted".into(),
        SecretHash::from_bytes([n; 32]),
        Scopes::all(),
        None,
        UnixMillis::EPOCH,
        None,
    )
}

/// `count` random ids whose home, under `keyring`'s seeded hash, is the
/// same in every table of up to 2^12 slots: found by brute force.
fn colliding_ids(keyring: &Keyring, count: usize) -> alloc::vec::Vec<KeyId> {
    let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(77);
    let [_, _, lo, hi] = keyring.pepper.index_seeds();
    let big = DigestIndex::with_capacity(1 << 11, IdHasher::with_seeds([lo, hi]));
    assert_eq!(big.size(), 1 << 12);
    let target = big.home(DigestIndex::key(&KeyId::generate(&mut rng)));
    let mut ids = alloc::vec::Vec::new();
    while ids.len() < count {
        let id = KeyId::generate(&mut rng);
        if big.home(DigestIndex::key(&id)) == target {
            ids.push(id);
        }
    }
    ids
}

#[test]
fn crafted_colliding_ids_are_refused_and_no_key_is_lost() {
    let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(13);
    let mut keyring = Keyring::new(Pepper::generate(&mut rng));
    let ids = colliding_ids(&keyring, 9);
    // Eight share one window; the index grows for load only.
    for (n, id) in ids.iter().take(8).enumerate() {
        assert!(keyring
            .insert(record_with_id(*id, n as u8))
            .unwrap()
            .is_none());
    }
    assert_eq!(keyring.index.size(), 16);
    // The ninth lands in a full window at every size the index may take
    // for nine keys (at most 8 slots per key, rounded up: 128): refused.
    let ninth = ids[8];
    assert_eq!(
        keyring.insert(record_with_id(ninth, 8)),
        Err(KeyringError::Crowded { id: ninth })
    );
    assert_eq!(
        alloc::string::ToString::to_string(&KeyringError::Crowded { id: ninth }),
        alloc::format!("key id `{ninth}` lands in a full slot window; the keyring refuses it rather than drop a key or exceed its memory bound")
    );
    // Nothing changed: the table, the map and every stored digest.
    assert_eq!(keyring.index.size(), 16);
    assert_eq!(keyring.index.len, 8);
    assert_eq!(keyring.len(), 8);
    assert!(keyring.get(&ninth).is_none());
    for (n, id) in ids.iter().take(8).enumerate() {
        let (found, slot) = keyring.index.lookup(DigestIndex::key(id), &keyring.decoy);
        assert_eq!(found, u64::MAX, "key {n} lost");
        assert_eq!(
            DigestIndex::digest(&slot.digest),
            SecretHash::from_bytes([n as u8; 32])
        );
    }
    // A replacement of a crowded id still works: it reuses its slot.
    assert!(keyring
        .insert(record_with_id(ids[0], 100))
        .unwrap()
        .is_some());
    let (_, slot) = keyring
        .index
        .lookup(DigestIndex::key(&ids[0]), &keyring.decoy);
    assert_eq!(
        DigestIndex::digest(&slot.digest),
        SecretHash::from_bytes([100; 32])
    );
    // Random ids still go in. With enough of them, the index may grow
    // past 2^12 slots, where the crafted ids no longer share a home, and
    // takes the ninth too.
    let req = MintRequest::standard(None, None, UnixMillis::from_millis(0)).unwrap();
    let mut tokens = alloc::vec::Vec::new();
    for _ in 0..600 {
        let (record, token) =
            mint(keyring.pepper(), &req, &mut rng, UnixMillis::from_millis(0)).into_parts();
        keyring.insert(record).unwrap();
        tokens.push(token);
    }
    for t in &tokens {
        assert!(keyring
            .authenticate(t.expose_secret(), UnixMillis::from_millis(1))
            .is_ok());
    }
    assert_eq!(keyring.index.size(), 2048);
    assert_eq!(keyring.insert(record_with_id(ninth, 8)).unwrap(), None);
    assert_eq!(keyring.index.size(), 8192);
    assert_eq!(keyring.len(), 609);
    for id in &ids {
        assert_eq!(
            keyring.index.lookup(DigestIndex::key(id), &keyring.decoy).0,
            u64::MAX
        );
    }
}

#[test]
fn a_full_window_is_freed_by_moving_a_key_within_its_own_window() {
    let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(16);
    let mut index = DigestIndex::with_capacity(0, IdHasher::default());
    assert_eq!(index.size(), 16);
    let mut with_home = |home: usize, count: usize| {
        let mut ids = alloc::vec::Vec::new();
        while ids.len() < count {
            let id = KeyId::generate(&mut rng);
            if index.home(DigestIndex::key(&id)) == home {
                ids.push(id);
            }
        }
        ids
    };
    let at_0 = with_home(0, 6);
    let at_2 = with_home(2, 6);
    // Slots 0-3 hold four keys of home 0, slots 4-7 the keys of home 2.
    for (n, id) in at_0.iter().take(4).chain(&at_2[..4]).enumerate() {
        assert!(index.place(Slot::of(&record_with_id(*id, n as u8))));
    }
    let slot_of = |index: &DigestIndex, id: &KeyId| {
        index
            .slots
            .iter()
            .position(|s| s.id == DigestIndex::key(id))
    };
    assert_eq!(slot_of(&index, &at_2[0]), Some(4));
    // The fifth key of home 0 finds slots 0-7 full: the key in slot 4
    // (home 2, window 2-9) moves to slot 8, and the new key takes 4.
    assert!(index.place(Slot::of(&record_with_id(at_0[4], 99))));
    assert_eq!(slot_of(&index, &at_2[0]), Some(8));
    assert_eq!(slot_of(&index, &at_0[4]), Some(4));
    assert_eq!(index.len, 9);
    for id in at_0[..5].iter().chain(&at_2[..4]) {
        let (found, _) = index.lookup(DigestIndex::key(id), &SecretHash::from_bytes([0; 32]));
        assert_eq!(found, u64::MAX, "{id:?}");
    }
    // One more of home 2 takes slot 9. Then slots 0-9 are full and no
    // key in them may move past 9: a sixth key of home 0 or another of
    // home 2 has nowhere to go.
    assert!(index.place(Slot::of(&record_with_id(at_2[4], 5))));
    assert_eq!(slot_of(&index, &at_2[4]), Some(9));
    assert!(!index.place(Slot::of(&record_with_id(at_0[5], 1))));
    assert!(!index.place(Slot::of(&record_with_id(at_2[5], 1))));
    assert_eq!(index.len, 10);
}

#[test]
fn the_index_stays_within_its_memory_bound_under_collisions() {
    // 64 ids with one home in every table up to 2^12 slots: at most 8
    // fit one window, and the index never exceeds 8 slots per key.
    let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(14);
    let mut keyring = Keyring::new(Pepper::generate(&mut rng));
    let mut accepted = 0;
    for (n, id) in colliding_ids(&keyring, 64).into_iter().enumerate() {
        match keyring.insert(record_with_id(id, n as u8)) {
            Ok(None) => accepted += 1,
            Err(KeyringError::Crowded { id: refused }) => assert_eq!(refused, id),
            other => panic!("{other:?}"),
        }
        let limit = (8 * keyring.len().max(2)).next_power_of_two().max(16);
        assert!(
            keyring.index.size() <= limit,
            "{} > {limit}",
            keyring.index.size()
        );
    }
    assert_eq!(accepted, 8);
    assert_eq!(keyring.len(), 8);
}

#[test]
fn a_full_keyring_refuses_new_keys_and_keeps_replacing() {
    let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(15);
    let mut keyring = Keyring::new(Pepper::generate(&mut rng));
    assert_eq!(keyring.index.max_keys, Keyring::MAX_KEYS);
    keyring.index.max_keys = 50;
    let req = MintRequest::standard(None, None, UnixMillis::from_millis(0)).unwrap();
    let mut records = alloc::vec::Vec::new();
    for _ in 0..50 {
        let (record, _) =
            mint(keyring.pepper(), &req, &mut rng, UnixMillis::from_millis(0)).into_parts();
        records.push(record);
    }
    keyring.try_extend(records.iter().cloned()).unwrap();
    let (extra, token) =
        mint(keyring.pepper(), &req, &mut rng, UnixMillis::from_millis(0)).into_parts();
    let err = keyring.insert(extra.clone()).unwrap_err();
    assert_eq!(err, KeyringError::Full { max: 50 });
    assert_eq!(err.http_status(), 503);
    assert_eq!(
        alloc::string::ToString::to_string(&err),
        "the keyring is full: it holds at most 50 keys"
    );
    assert_eq!(keyring.len(), 50);
    assert_eq!(
        keyring.authenticate(token.expose_secret(), UnixMillis::from_millis(1)),
        Err(AuthError::InvalidCredentials)
    );
    assert_eq!(keyring.try_extend([extra.clone()]), Err(err));
    // Replacing a stored key needs no new slot.
    assert!(keyring.insert(records[7].clone()).unwrap().is_some());
    // After a revocation there is room again.
    keyring.revoke(&records[0].id());
    assert!(keyring.insert(extra).unwrap().is_none());
    assert!(keyring
        .authenticate(token.expose_secret(), UnixMillis::from_millis(1))
        .is_ok());
}

#[test]
fn try_extend_stops_at_a_full_keyring_rather_than_drop_a_record() {
    let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(17);
    let mut keyring = Keyring::new(Pepper::generate(&mut rng));
    keyring.index.max_keys = 2;
    let req = MintRequest::standard(None, None, UnixMillis::from_millis(0)).unwrap();
    let records: alloc::vec::Vec<_> = (0..3)
        .map(|_| {
            mint(keyring.pepper(), &req, &mut rng, UnixMillis::from_millis(0))
                .into_parts()
                .0
        })
        .collect();
    assert_eq!(
        keyring.try_extend(records.clone()),
        Err(KeyringError::Full { max: 2 })
    );
    assert_eq!(keyring.len(), 2);
    assert!(keyring.get(&records[2].id()).is_none());
    // A failed insert through the feed changes nothing either.
    assert_eq!(
        keyring.apply(Change::upsert(9, records[2].clone())),
        Err(KeyringError::Full { max: 2 })
    );
    assert_eq!(keyring.last_seq(), 0);
    assert_eq!(keyring.len(), 2);
}

#[test]
fn the_id_hash_is_seeded_by_the_pepper() {
    let a = Pepper::from_bytes(&[1; 32]).index_seeds();
    let b = Pepper::from_bytes(&[2; 32]).index_seeds();
    assert_ne!(a, b);
    assert_eq!(a, Pepper::from_bytes(&[1; 32]).index_seeds());
    let id = DigestIndex::key(&crate::testing::EXAMPLE_KEY_ID);
    let homes = |seeds: [u64; 4]| {
        let [_, _, lo, hi] = seeds;
        let index = DigestIndex::with_capacity(1 << 20, IdHasher::with_seeds([lo, hi]));
        index.home(id)
    };
    assert_ne!(homes(a), homes(b));
    // The map's hash is not the index's.
    use core::hash::BuildHasher;
    assert_ne!(
        IdHasher::with_seeds([a[0], a[1]]).hash_one(id),
        IdHasher::with_seeds([a[2], a[3]]).hash_one(id)
    );
    assert_eq!(
        alloc::format!("{:?}", IdHasher::with_seeds([a[0], a[1]])),
        "IdHasher(<seeded>)"
    );
}

#[cfg(feature = "testing")]
#[test]
fn twins_share_the_known_keys_window_and_are_unknown() {
    let (keyring, text) = setup(None, None);
    let known = Token::parse(&text).unwrap().key_id();
    let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(3);
    let home = keyring.index.home(DigestIndex::key(&known));
    let mut twins = alloc::vec::Vec::new();
    for _ in 0..20 {
        let twin = crate::testing::unknown_id_sharing_window(&keyring, &known, &mut rng);
        assert_eq!(keyring.index.home(DigestIndex::key(&twin)), home);
        assert!(!keyring.contains(&twin));
        twins.push(twin);
    }
    // Drawn, not one fixed id.
    twins.sort();
    twins.dedup();
    assert_eq!(twins.len(), 20);
    // An id of another window does not share it.
    let other = (0u8..)
        .map(|n| KeyId::parse(&alloc::format!("{n:0>16}")).unwrap())
        .find(|id| keyring.index.home(DigestIndex::key(id)) != home)
        .unwrap();
    assert!(!keyring.shares_window(&other, &known));
    assert!(keyring.shares_window(&twins[0], &known));
}

#[test]
fn debug_hides_pepper() {
    let (keyring, _) = setup(None, None);
    assert_eq!(
        alloc::format!("{keyring:?}"),
        "Keyring { pepper: Pepper(<redacted>), keys: 1 }"
    );
}

/// A principal carries exactly its record's grant.
#[test]
fn a_principal_of_a_record_carries_its_grant() {
    use crate::key::KeyRecordParts;
    let r = crate::testing::example_record();
    let record = KeyRecord::from_parts(KeyRecordParts {
        id: r.id(),
        kind: KeyKind::Restricted,
        name: "ci deploy".into(),
        secret_hash: SecretHash::from_bytes([7; 32]),
        scopes: crate::scope::Scopes::grant(Resource::Agents, Access::Read),
        expires_at: Some(UnixMillis::from_millis(9_000)),
        created_at: UnixMillis::from_millis(4_000),
        creator_id: None,
        limits: Default::default(),
        meter: None,
    })
    .unwrap();
    let p = Principal::of_record(&record);
    assert_eq!(p.id(), r.id());
    assert_eq!(p.kind(), KeyKind::Restricted);
    assert_eq!(p.scopes(), record.scopes());
    assert_eq!(p.expires_at(), Some(UnixMillis::from_millis(9_000)));
    assert!(p.can(Resource::Agents, Access::Read));
    assert!(!p.can(Resource::Agents, Access::Write));
    assert!(p.require(Resource::Agents, Access::Read).is_ok());
    assert!(p.require(Resource::Account, Access::Read).is_err());
}

/// A record never seen in the feed (sequence number 0, put in by `insert`)
/// leaves no eviction mark when it expires: no change of the feed can bring
/// it back, so there is nothing to remember.
#[test]
fn evicting_a_record_of_no_change_leaves_no_mark() {
    let mut keyring = Keyring::new(Pepper::from_bytes(&[0u8; 32]));
    keyring.insert(crate::testing::example_record()).unwrap();
    assert_eq!(keyring.evict_expired(UnixMillis::from_millis(2_000)), 1);
    assert_eq!(keyring.tombstones(), 0);
}

/// The id hasher's state prints no seed.
#[test]
fn id_hash_debug_hides_its_seeds() {
    use core::hash::BuildHasher;
    let hash = IdHasher::default().build_hasher();
    assert_eq!(alloc::format!("{hash:?}"), "IdHash(<seeded>)");
}
