//! Behaviour that mutation testing (`scripts/mutants.sh`) found unpinned:
//! pepper generation, the secret alphabet's uniformity, and the keyring's
//! read-only accessors. Public API only.

// Test code: a panic is a failed test (clippy.toml allows these only inside #[test] fns).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::collections::HashSet;

use keygate::{mint, KeyId, Keyring, MintRequest, Pepper, Resource, Scopes, PEPPER_LEN};
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;

const NOW: i64 = 1_764_000_000_000;

#[test]
fn generated_peppers_are_random() {
    let mut rng = ChaCha20Rng::seed_from_u64(1);
    let a = *Pepper::generate_bytes(&mut rng);
    let b = *Pepper::generate_bytes(&mut rng);
    assert_ne!(a, [0u8; PEPPER_LEN], "an all-zero pepper");
    assert_ne!(b, [0u8; PEPPER_LEN], "an all-zero pepper");
    assert_ne!(a, b, "two draws gave the same pepper");
    // Not a constant fill either.
    assert!(a.iter().collect::<HashSet<_>>().len() > 8, "{a:?}");

    // `generate` is `from_bytes(generate_bytes)`: the same draw, the same pepper.
    let p1 = Pepper::generate(&mut ChaCha20Rng::seed_from_u64(2));
    let p2 = Pepper::from_bytes(&Pepper::generate_bytes(&mut ChaCha20Rng::seed_from_u64(2)));
    assert_eq!(p1.fingerprint(), p2.fingerprint());
    let p3 = Pepper::generate(&mut ChaCha20Rng::seed_from_u64(3));
    assert_ne!(p1.fingerprint(), p3.fingerprint());
    assert_ne!(
        p1.fingerprint(),
        Pepper::from_bytes(&[0u8; PEPPER_LEN]).fingerprint()
    );
}

/// Pearson's chi-square statistic of `counts` against a uniform distribution.
fn chi_square(counts: &[u64]) -> f64 {
    let total: u64 = counts.iter().sum();
    let expected = total as f64 / counts.len() as f64;
    counts
        .iter()
        .map(|&c| {
            let d = c as f64 - expected;
            d * d / expected
        })
        .sum()
}

#[test]
fn secret_alphabet_is_uniform() {
    const ALPHABET: &str = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let pepper = Pepper::from_bytes(&[9u8; PEPPER_LEN]);
    let mut rng = ChaCha20Rng::seed_from_u64(0x5EED);
    let request = MintRequest::standard(None, None, keygate::UnixMillis::from_millis(NOW)).unwrap();
    let mut counts = [0u64; 62];
    // 4000 tokens: 4000 * (16 + 43) = 236 000 random characters, about 3800
    // per character. A rejection bound of `<= 248` instead of `< 248` makes
    // `0` about 25 % more likely, which adds about 230 to the statistic.
    for _ in 0..4000 {
        let minted = mint(
            &pepper,
            &request,
            &mut rng,
            keygate::UnixMillis::from_millis(NOW),
        );
        let text = minted.token().expose_secret();
        let random = text[3..19].bytes().chain(text[20..63].bytes());
        for b in random {
            let i = ALPHABET.bytes().position(|a| a == b).unwrap();
            counts[i] += 1;
        }
    }
    let stat = chi_square(&counts);
    // 61 degrees of freedom: mean 61, standard deviation 11; 110 is about
    // p = 1e-4. The seed is fixed, so the test is deterministic.
    assert!(stat < 110.0, "chi-square {stat:.1} over {counts:?}");
    // And the test can see a bias of the size the mutant would cause.
    let mut biased = counts;
    biased[0] = biased[0] * 5 / 4;
    assert!(chi_square(&biased) > 110.0);
}

fn keyring_with(n: usize) -> (Keyring, Vec<KeyId>) {
    let mut rng = ChaCha20Rng::seed_from_u64(77);
    let mut keyring = Keyring::new(Pepper::generate(&mut rng));
    let mut ids = Vec::new();
    for i in 0..n {
        let scopes = Scopes::grant(Resource::ALL[i % 9], keygate::Access::Read);
        let req =
            MintRequest::restricted(None, scopes, None, keygate::UnixMillis::from_millis(NOW))
                .unwrap();
        let (record, _token) = mint(
            keyring.pepper(),
            &req,
            &mut rng,
            keygate::UnixMillis::from_millis(NOW),
        )
        .into_parts();
        ids.push(record.id());
        keyring.insert(record).unwrap();
    }
    (keyring, ids)
}

#[test]
fn keyring_counts_and_lists_its_records() {
    let (empty, _) = keyring_with(0);
    assert!(empty.is_empty());
    assert_eq!(empty.len(), 0);
    assert_eq!(empty.entries().count(), 0);

    let (mut keyring, ids) = keyring_with(5);
    assert!(!keyring.is_empty());
    assert_eq!(keyring.len(), 5);
    for id in &ids {
        assert!(keyring.contains(id));
    }
    let listed: HashSet<KeyId> = keyring.entries().map(|r| r.id()).collect();
    assert_eq!(listed, ids.iter().copied().collect::<HashSet<_>>());

    let unknown = KeyId::parse("zzzzzzzzzzzzzzzz").unwrap();
    assert!(!keyring.contains(&unknown));

    keyring.revoke(&ids[0]);
    assert!(!keyring.contains(&ids[0]));
    assert_eq!(keyring.len(), 4);
    assert_eq!(keyring.entries().count(), 4);
    for id in &ids[1..] {
        keyring.revoke(id);
    }
    assert!(keyring.is_empty());
    assert_eq!(keyring.len(), 0);
}

#[test]
fn keyring_tracks_revocations_sequence_and_expiry() {
    use keygate::{Applied, Change};
    let mut rng = ChaCha20Rng::seed_from_u64(78);
    let pepper_bytes = Pepper::generate_bytes(&mut rng);
    let mut keyring = Keyring::new(Pepper::from_bytes(&pepper_bytes));
    let mut mint_one = |expires: Option<i64>| {
        let expires = expires.map(keygate::UnixMillis::from_millis);
        let req =
            MintRequest::standard(None, expires, keygate::UnixMillis::from_millis(NOW)).unwrap();
        mint(
            &Pepper::from_bytes(&pepper_bytes),
            &req,
            &mut rng,
            keygate::UnixMillis::from_millis(NOW),
        )
        .into_parts()
        .0
    };
    let short = mint_one(Some(NOW + 10));
    let long = mint_one(Some(NOW + 1_000));
    let forever = mint_one(None);
    assert_eq!(keyring.last_seq(), 0);
    for (seq, record) in [(5, &short), (6, &long), (7, &forever)] {
        assert_eq!(
            keyring.apply(Change::upsert(seq, record.clone())),
            Ok(Applied::Changed)
        );
    }
    assert_eq!(keyring.last_seq(), 7);
    let copy = keyring.clone();
    assert_eq!(copy, keyring);

    assert!(!keyring.is_revoked(&forever.id()));
    assert_eq!(
        keyring.apply(Change::revoke(8, forever.id())),
        Ok(Applied::Changed)
    );
    assert!(keyring.is_revoked(&forever.id()));
    assert!(!keyring.contains(&forever.id()));
    assert_eq!(keyring.last_seq(), 8);
    // A second revoke of the same id changes nothing.
    assert_eq!(
        keyring.apply(Change::revoke(9, forever.id())),
        Ok(Applied::Unchanged)
    );
    assert_ne!(copy, keyring);

    assert_eq!(
        keyring.evict_expired(keygate::UnixMillis::from_millis(NOW + 9)),
        0
    );
    assert_eq!(
        keyring.evict_expired(keygate::UnixMillis::from_millis(NOW + 10)),
        1
    );
    assert!(!keyring.contains(&short.id()));
    assert!(keyring.contains(&long.id()));
    assert_eq!(
        keyring.evict_expired(keygate::UnixMillis::from_millis(NOW + 10)),
        0
    );
    assert_eq!(
        keyring.evict_expired(keygate::UnixMillis::from_millis(NOW + 5_000)),
        1
    );
    assert!(keyring.is_empty());
}

#[test]
fn evicting_expired_keys_leaves_the_others_authenticating() {
    use keygate::AuthError;
    let mut rng = ChaCha20Rng::seed_from_u64(79);
    let pepper_bytes = Pepper::generate_bytes(&mut rng);
    let mut keyring = Keyring::new(Pepper::from_bytes(&pepper_bytes));
    let mut mint_one = |expires: Option<i64>| {
        let expires = expires.map(keygate::UnixMillis::from_millis);
        let req =
            MintRequest::standard(None, expires, keygate::UnixMillis::from_millis(NOW)).unwrap();
        mint(
            &Pepper::from_bytes(&pepper_bytes),
            &req,
            &mut rng,
            keygate::UnixMillis::from_millis(NOW),
        )
        .into_parts()
    };
    let (short, short_token) = mint_one(Some(NOW + 10));
    let (long, long_token) = mint_one(Some(NOW + 1_000));
    keyring.insert(short.clone()).unwrap();
    keyring.insert(long.clone()).unwrap();
    // Before eviction an expired key is known, and says so.
    assert!(matches!(
        keyring.authenticate(
            short_token.expose_secret(),
            keygate::UnixMillis::from_millis(NOW + 20)
        ),
        Err(AuthError::Expired { .. })
    ));
    assert_eq!(
        keyring.evict_expired(keygate::UnixMillis::from_millis(NOW + 20)),
        1
    );
    // After it, the key is gone from the lookup too: unknown, not expired.
    assert_eq!(
        keyring.authenticate(
            short_token.expose_secret(),
            keygate::UnixMillis::from_millis(NOW + 20)
        ),
        Err(AuthError::InvalidCredentials)
    );
    // And the key that stays still authenticates.
    let principal = keyring
        .authenticate(
            long_token.expose_secret(),
            keygate::UnixMillis::from_millis(NOW + 20),
        )
        .unwrap();
    assert_eq!(principal.id(), long.id());
    assert!(principal.can(Resource::Account, keygate::Access::Write));
}

#[test]
fn keyrings_differing_in_one_part_are_unequal() {
    use keygate::Change;
    let mut rng = ChaCha20Rng::seed_from_u64(80);
    let pepper_bytes = Pepper::generate_bytes(&mut rng);
    let ring = || Keyring::new(Pepper::from_bytes(&pepper_bytes));
    let req = MintRequest::standard(None, None, keygate::UnixMillis::from_millis(NOW)).unwrap();
    let pepper = Pepper::from_bytes(&pepper_bytes);
    let r1 = mint(
        &pepper,
        &req,
        &mut rng,
        keygate::UnixMillis::from_millis(NOW),
    )
    .into_parts()
    .0;
    let r2 = mint(
        &pepper,
        &req,
        &mut rng,
        keygate::UnixMillis::from_millis(NOW),
    )
    .into_parts()
    .0;
    let with = |changes: &[Change]| {
        let mut k = ring();
        for c in changes {
            k.apply(c.clone()).unwrap();
        }
        k
    };
    // Only the pepper differs.
    assert_eq!(ring(), ring());
    assert_ne!(ring(), Keyring::new(Pepper::generate(&mut rng)));
    // Only the last sequence number differs.
    let a = with(&[Change::upsert(5, r1.clone())]);
    assert_eq!(a, with(&[Change::upsert(5, r1.clone())]));
    assert_ne!(a, with(&[Change::upsert(6, r1.clone())]));
    // Only the keys differ.
    assert_ne!(a, with(&[Change::upsert(5, r2.clone())]));
    // Only the tombstones differ.
    let b = with(&[Change::upsert(1, r1.clone()), Change::revoke(2, r2.id())]);
    let c = with(&[
        Change::upsert(1, r1.clone()),
        Change::revoke(2, KeyId::parse("0000000000000000").unwrap()),
    ]);
    assert_eq!(b.len(), c.len());
    assert_eq!(b.last_seq(), c.last_seq());
    assert_ne!(b, c);
}

#[test]
fn debug_texts_name_the_type_and_hide_the_secret() {
    use keygate::SecretHash;
    let hash = SecretHash::from_bytes([0xab; 32]);
    assert_eq!(format!("{hash:?}"), "SecretHash(abababab…)");
    let mut rng = ChaCha20Rng::seed_from_u64(81);
    let pepper = Pepper::generate(&mut rng);
    let req = MintRequest::standard(None, None, keygate::UnixMillis::from_millis(NOW)).unwrap();
    let (_, token) = mint(
        &pepper,
        &req,
        &mut rng,
        keygate::UnixMillis::from_millis(NOW),
    )
    .into_parts();
    assert_eq!(format!("{token:?}"), "SecretToken(<redacted>)");
    assert_eq!(format!("{token}"), "<redacted>");
    // A digest that is not a JSON string says what it expected.
    let err = serde_json::from_str::<SecretHash>("7").unwrap_err();
    assert_eq!(
        err.to_string(),
        "invalid type: integer `7`, expected 64 hex characters at line 1 column 1"
    );
}

/// A stored digest that differs from the presented one in the bits the
/// keyring compares (the first 96: a 64-bit and a 32-bit word) is refused,
/// also when the differences of its words cancel out under XOR (a
/// comparison that folded the words with `^` instead of `|` would accept
/// it).
#[test]
fn a_digest_differing_in_words_that_cancel_is_refused() {
    use keygate::{AuthError, KeyRecord, KeyRecordParts, SecretHash};
    let mut rng = ChaCha20Rng::seed_from_u64(82);
    let pepper = Pepper::generate(&mut rng);
    let req = MintRequest::standard(None, None, keygate::UnixMillis::from_millis(NOW)).unwrap();
    let (record, token) = mint(
        &pepper,
        &req,
        &mut rng,
        keygate::UnixMillis::from_millis(NOW),
    )
    .into_parts();
    let stored = *record.secret_hash().as_bytes();
    // Bytes 8..12 line up with bytes 0..4 (the words' low halves).
    for pattern in [0xa5u8, 0x01, 0x80] {
        let mut forged = stored;
        for i in 0..4 {
            forged[i] ^= pattern;
            forged[8 + i] ^= pattern;
        }
        let parts = KeyRecordParts {
            id: record.id(),
            kind: record.kind(),
            name: record.name().to_owned(),
            secret_hash: SecretHash::from_bytes(forged),
            scopes: record.scopes(),
            expires_at: record.expires_at(),
            created_at: record.created_at(),
            creator_id: record.creator_id(),
            limits: Default::default(),
            meter: None,
        };
        let mut keyring = Keyring::new(pepper.clone());
        keyring
            .insert(KeyRecord::from_parts(parts).unwrap())
            .unwrap();
        assert_eq!(
            keyring.authenticate(token.expose_secret(), keygate::UnixMillis::from_millis(NOW)),
            Err(AuthError::InvalidCredentials),
            "pattern {pattern:#x}"
        );
    }
    // The untouched digest is accepted (the test's own control).
    let mut keyring = Keyring::new(pepper.clone());
    keyring.insert(record).unwrap();
    assert!(keyring
        .authenticate(token.expose_secret(), keygate::UnixMillis::from_millis(NOW))
        .is_ok());
}
