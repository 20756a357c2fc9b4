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
    let (keyring, token, _) = setup_with_record(scopes, expires);
    (keyring, token)
}

/// [`setup`], and the record it inserted.
fn setup_with_record(scopes: Option<Scopes>, expires: Option<i64>) -> (Keyring, String, KeyRecord) {
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
    keyring.insert(record.clone()).unwrap();
    (keyring, String::from(token.expose_secret()), record)
}

#[test]
fn a_stale_upsert_below_the_horizon_cannot_resurrect_a_compacted_key() {
    // A server rolls a key (seq 1, the new key), its follower reads 1,
    // then a revocation of the new key (2), applies both and compacts
    // at 2; the roll's handler, late, applies its own upsert at 1.
    let (keyring, token, record) = setup_with_record(None, None);
    let id = Token::parse(&token).unwrap().key_id();
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
fn the_index_stays_at_most_80_percent_full() {
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
            5 * keyring.index.len <= 4 * keyring.index.slots(),
            "{n} keys in {}",
            keyring.index.slots()
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
fn a_digest_that_differs_in_any_compared_bit_fails() {
    let (mut keyring, token) = setup(None, None);
    let id = Token::parse(&token).unwrap().key_id();
    let record = KeyRecord::new(
        id,
        KeyKind::Standard,
        "f".into(),
        keyring.pepper().digest(&Token::parse(&token).unwrap()),
        Scopes::all(),
        None,
        UnixMillis::EPOCH,
        None,
    );
    let right = *record.secret_hash().as_bytes();
    // The index holds the digest's first 96 bits (the store all 256).
    for byte in 0..12 {
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
    assert!(keyring.index.slots() >= 3_530);
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
    assert_eq!(keyring.len(), 1_500);
    assert_eq!(keyring.entries().count(), 1_500);
    for (i, t) in tokens.iter().enumerate() {
        let result = keyring.authenticate(t.expose_secret(), UnixMillis::from_millis(1));
        assert_eq!(result.is_ok(), i % 2 == 1, "token {i}");
    }
    // Replacing a record replaces its digest: the old token stops working.
    let id = tokens[1].parse().unwrap().key_id();
    let old = keyring.get(&id).unwrap();
    let replacement = KeyRecord::new(
        id,
        old.kind(),
        "r".into(),
        SecretHash::from_bytes([9; 32]),
        old.scopes(),
        None,
        UnixMillis::EPOCH,
        None,
    );
    assert_eq!(keyring.insert(replacement).unwrap(), Some(old));
    assert_eq!(keyring.index.len, 1_500);
    assert_eq!(
        keyring.authenticate(tokens[1].expose_secret(), UnixMillis::from_millis(1)),
        Err(AuthError::InvalidCredentials)
    );
    // The lookup selects the stored slot, or the decoy with mask 0 and
    // no grant.
    let (found, slot) = keyring.index.lookup(&id, &keyring.decoy);
    assert_eq!(found, u64::MAX);
    assert_eq!(
        slot.digest(),
        Digest96::of(&SecretHash::from_bytes([9; 32]))
    );
    assert_eq!(slot.scopes(), Scopes::all());
    assert_eq!(slot.kind(), KeyKind::Standard);
    assert_eq!(slot.expiry(), Ok(None));
    let unknown = KeyId::parse("0000000000000000").unwrap();
    let (found, slot) = keyring.index.lookup(&unknown, &keyring.decoy);
    assert_eq!(found, 0);
    assert_eq!(slot.digest(), keyring.decoy.digest());
    assert_eq!(slot.grant, 0);
}

#[test]
fn slots_carry_the_grant() {
    let (keyring, token) = setup(Some("objects:read,agents:write".parse().unwrap()), Some(77));
    let id = Token::parse(&token).unwrap().key_id();
    let (found, slot) = keyring.index.lookup(&id, &keyring.decoy);
    assert_eq!(found, u64::MAX);
    assert_eq!(slot.kind(), KeyKind::Restricted);
    assert_eq!(slot.expiry(), Ok(Some(UnixMillis::from_millis(77))));
    let scopes: Scopes = "objects:read,agents:write".parse().unwrap();
    assert_eq!(slot.scopes(), scopes);
    let principal = keyring
        .authenticate(&token, UnixMillis::from_millis(1))
        .unwrap();
    assert_eq!(
        (
            principal.id(),
            principal.kind(),
            principal.scopes(),
            principal.expires_at()
        ),
        (
            id,
            KeyKind::Restricted,
            scopes,
            Some(UnixMillis::from_millis(77))
        )
    );
    // Expiries a slot cannot hold (before 1970, after 2248) are kept
    // aside, exactly, and leave with the key.
    let digest = keyring.pepper().digest(&Token::parse(&token).unwrap());
    for ms in [-5, i64::MIN, (1 << 43) - 1, 1 << 43, i64::MAX] {
        let record = KeyRecord::new(
            id,
            KeyKind::Restricted,
            "n".into(),
            digest,
            scopes,
            Some(UnixMillis::from_millis(ms)),
            UnixMillis::EPOCH,
            None,
        );
        let mut keyring = keyring.clone();
        keyring.insert(record).unwrap();
        assert_eq!(
            keyring.get(&id).unwrap().expires_at(),
            Some(UnixMillis::from_millis(ms))
        );
        assert!(
            matches!(
                keyring.authenticate(&token, UnixMillis::from_millis(ms.saturating_sub(1))),
                Ok(p) if p.scopes() == scopes && p.expires_at() == Some(UnixMillis::from_millis(ms))
            ) || ms == i64::MIN
        );
        assert_eq!(
            keyring.authenticate(&token, UnixMillis::from_millis(ms)),
            Err(AuthError::Expired {
                id,
                expires_at: UnixMillis::from_millis(ms)
            })
        );
        let far = !(0..1 << 43).contains(&ms);
        assert_eq!(keyring.index.far_len(), usize::from(far), "{ms}");
        // Replaced by a key without expiry, or revoked: nothing stays aside.
        let mut replaced = keyring.clone();
        replaced
            .insert(KeyRecord::new(
                id,
                KeyKind::Restricted,
                "n".into(),
                digest,
                scopes,
                None,
                UnixMillis::EPOCH,
                None,
            ))
            .unwrap();
        assert_eq!(replaced.index.far_len(), 0);
        assert!(replaced
            .authenticate(&token, UnixMillis::from_millis(i64::MAX))
            .is_ok());
        keyring.revoke(&id);
        assert_eq!(keyring.index.far_len(), 0);
    }
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

/// `count` ids whose two buckets, under `keyring`'s seeded hash, are the
/// same in every table of up to 2^8 buckets: found by brute force (what
/// someone who knows the pepper could do), counting through ids.
fn colliding_ids(keyring: &Keyring, count: usize) -> alloc::vec::Vec<KeyId> {
    let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(77);
    let [_, _, lo, hi] = keyring.pepper.index_seeds();
    let big = DigestIndex::with_capacity(300, IdHasher::with_seeds([lo, hi]));
    assert_eq!(big.slots(), 1 << 9);
    let known = KeyId::generate(&mut rng);
    let target = big.buckets_of(&known);
    let digits = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let mut ids = alloc::vec![known];
    for n in 0u64.. {
        if ids.len() == count {
            break;
        }
        let mut bytes = *known.as_bytes();
        let mut rest = n;
        for at in [2, 3, 4, 10, 11, 12] {
            bytes[at] = digits[(rest % 62) as usize];
            rest /= 62;
        }
        let id = KeyId::parse(core::str::from_utf8(&bytes).unwrap()).unwrap();
        if id != known && big.buckets_of(&id) == target {
            ids.push(id);
        }
    }
    ids
}

#[test]
fn crafted_colliding_ids_are_refused_and_no_key_is_lost() {
    let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(13);
    let mut keyring = Keyring::new(Pepper::generate(&mut rng));
    let ids = colliding_ids(&keyring, 5);
    // Four share two buckets; the index grows for load only.
    for (n, id) in ids.iter().take(4).enumerate() {
        assert!(keyring
            .insert(record_with_id(*id, n as u8))
            .unwrap()
            .is_none());
    }
    assert_eq!(keyring.index.slots(), 16);
    // The fifth finds both buckets full at every size the index may take
    // for five keys (at most 4 slots per key, rounded up: 32): refused.
    let fifth = ids[4];
    assert_eq!(
        keyring.insert(record_with_id(fifth, 8)),
        Err(KeyringError::Crowded { id: fifth })
    );
    assert_eq!(
        alloc::string::ToString::to_string(&KeyringError::Crowded { id: fifth }),
        alloc::format!("key id `{fifth}` lands in full buckets; the keyring refuses it rather than drop a key or exceed its memory bound")
    );
    // Nothing changed: the table and every stored digest.
    assert_eq!(keyring.index.slots(), 16);
    assert_eq!(keyring.index.len, 4);
    assert_eq!(keyring.len(), 4);
    assert!(keyring.get(&fifth).is_none());
    for (n, id) in ids.iter().take(4).enumerate() {
        let (found, slot) = keyring.index.lookup(id, &keyring.decoy);
        assert_eq!(found, u64::MAX, "key {n} lost");
        assert_eq!(
            slot.digest(),
            Digest96::of(&SecretHash::from_bytes([n as u8; 32]))
        );
    }
    // A replacement of a crowded id still works: it reuses its slot.
    assert!(keyring
        .insert(record_with_id(ids[0], 100))
        .unwrap()
        .is_some());
    let (_, slot) = keyring.index.lookup(&ids[0], &keyring.decoy);
    assert_eq!(
        slot.digest(),
        Digest96::of(&SecretHash::from_bytes([100; 32]))
    );
    // Random ids still go in. With enough of them, the index grows past
    // 2^8 buckets, where the crafted ids no longer share both buckets
    // (not all of them, at least), and takes the fifth too.
    let req = MintRequest::standard(None, None, UnixMillis::from_millis(0)).unwrap();
    let mut tokens = alloc::vec::Vec::new();
    while keyring.index.slots() < 1 << 13 {
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
    assert_eq!(keyring.insert(record_with_id(fifth, 8)).unwrap(), None);
    assert_eq!(keyring.len(), tokens.len() + 5);
    for id in &ids {
        assert_eq!(keyring.index.lookup(id, &keyring.decoy).0, u64::MAX);
    }
}

#[test]
fn the_index_stays_within_its_memory_bound_under_collisions() {
    // 24 ids with the same two buckets in every table up to 2^8
    // buckets: at most 4 fit, and the index never exceeds 4 slots per key.
    let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(14);
    let mut keyring = Keyring::new(Pepper::generate(&mut rng));
    let mut accepted = 0;
    for (n, id) in colliding_ids(&keyring, 24).into_iter().enumerate() {
        match keyring.insert(record_with_id(id, n as u8)) {
            Ok(None) => accepted += 1,
            Err(KeyringError::Crowded { id: refused }) => assert_eq!(refused, id),
            other => panic!("{other:?}"),
        }
        let limit = (4 * keyring.len().max(2)).next_power_of_two().max(16);
        assert!(
            keyring.index.slots() <= limit,
            "{} > {limit}",
            keyring.index.slots()
        );
    }
    assert_eq!(accepted, 4);
    assert_eq!(keyring.len(), 4);
}

#[test]
fn a_full_keyring_refuses_new_keys_and_keeps_replacing() {
    let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(15);
    let mut keyring = Keyring::new(Pepper::generate(&mut rng));
    assert_eq!(keyring.max_keys(), Keyring::MAX_KEYS);
    keyring.set_max_keys(50);
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
    keyring.set_max_keys(2);
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
    let id = crate::testing::EXAMPLE_KEY_ID;
    let buckets = |seeds: [u64; 4]| {
        let [_, _, lo, hi] = seeds;
        let index = DigestIndex::with_capacity(1 << 20, IdHasher::with_seeds([lo, hi]));
        index.buckets_of(&id)
    };
    assert_ne!(buckets(a), buckets(b));
    // The maps' hash is not the index's.
    use core::hash::BuildHasher;
    let key = u128::from_le_bytes(*id.as_bytes());
    assert_ne!(
        IdHasher::with_seeds([a[0], a[1]]).hash_one(key),
        IdHasher::with_seeds([a[2], a[3]]).hash_one(key)
    );
    assert_eq!(
        alloc::format!("{:?}", IdHasher::with_seeds([a[0], a[1]])),
        "IdHasher(<seeded>)"
    );
}

#[cfg(feature = "testing")]
#[test]
fn twins_share_the_known_keys_buckets_and_are_unknown() {
    let (keyring, text) = setup(None, None);
    let known = Token::parse(&text).unwrap().key_id();
    let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(3);
    let buckets = keyring.index.buckets_of(&known);
    let mut twins = alloc::vec::Vec::new();
    for _ in 0..20 {
        let twin = crate::testing::unknown_id_sharing_window(&keyring, &known, &mut rng).unwrap();
        assert_eq!(keyring.index.buckets_of(&twin), buckets);
        assert!(!keyring.contains(&twin));
        twins.push(twin);
    }
    // Drawn, not one fixed id.
    twins.sort();
    twins.dedup();
    assert_eq!(twins.len(), 20);
    // An id of other buckets does not share them.
    let other = (0u8..)
        .map(|n| KeyId::parse(&alloc::format!("{n:0>16}")).unwrap())
        .find(|id| keyring.index.buckets_of(id) != buckets)
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
