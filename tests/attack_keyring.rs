//! Found by the outside review of issue 20 (the keyring's 32-byte slots and
//! cuckoo table), through the public API: claims of the change that did not
//! hold at first, each now a test of the fix.
//!
//! `allocation-counter` installs a counting `#[global_allocator]` in this
//! test binary only (it counts per thread).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::sync::mpsc;
use std::time::Duration;

use keygate::{mint, Keyring, MintRequest, Pepper, UnixMillis};
use rand_core::SeedableRng;

/// `testing::unknown_id_sharing_window` promises "a key id that `keyring`
/// does not hold, whose two index buckets are `known`'s".
///
/// At first it did not deliver at scale: with the second bucket drawn from
/// independent hash bits, a twin must match both bucket indices, so a
/// random candidate fitted with probability 1/B² (B = buckets): ~2^40
/// candidates at 1M keys, more than the helper's 62^6, after which it
/// returned `*known`, an id the keyring holds. The second bucket is now the
/// first XOR one of 256 offsets (so a twin takes ~256·B candidates), and
/// the helper returns `None` rather than a known id.
///
/// The table here is the one a keyring of 1M keys has (`with_capacity`
/// reserves it); one key is enough for the helper's search.
#[test]
fn twin_helper_finds_an_unknown_twin_at_1m_keys_in_reasonable_time() {
    let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(20);
    let mut keyring = Keyring::with_capacity(Pepper::generate(&mut rng), 1_000_000);
    let now = UnixMillis::from_millis(0);
    let request = MintRequest::standard(None, None, now).unwrap();
    let (record, _token) = mint(keyring.pepper(), &request, &mut rng, now).into_parts();
    let known = record.id();
    keyring.insert(record).unwrap();

    let (send, receive) = mpsc::channel();
    let keyring = std::sync::Arc::new(keyring);
    let searched = std::sync::Arc::clone(&keyring);
    std::thread::spawn(move || {
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(21);
        let twin = keygate::testing::unknown_id_sharing_window(&searched, &known, &mut rng)
            .expect("a twin");
        let _ = send.send(twin);
    });
    // About 256 candidates per bucket: 2^28 hashes. One twin of the 1 024
    // that dudect needs.
    match receive.recv_timeout(Duration::from_secs(300)) {
        Ok(twin) => {
            assert_ne!(twin, known, "the helper gave back the known id itself");
            assert!(!keyring.contains(&twin), "the twin is a known id");
        }
        Err(_) => panic!("no twin of one key after 300 s at 1M keys (2^20 buckets)"),
    }
}

/// `Keyring::table_bytes(n)` is offered to set `Keyring::set_max_keys` from
/// a memory budget. The table grows by building the doubled table beside
/// the old one and dropping the old one after, so while a keyring fills to
/// its bound the heap holds both at the last doubling: 1.5 ×
/// `table_bytes(max)`. At first no doc said so; now `table_bytes` says to
/// budget 1.5 times it, and this test holds the keyring to that.
#[test]
fn filling_a_keyring_to_its_bound_stays_within_one_and_a_half_table_bytes() {
    let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(22);
    let pepper = Pepper::generate(&mut rng);
    let now = UnixMillis::from_millis(0);
    let request = MintRequest::standard(None, None, now).unwrap();
    let max = 6_000;
    let records: Vec<_> = (0..max)
        .map(|_| mint(&pepper, &request, &mut rng, now).into_parts().0)
        .collect();
    let budget = Keyring::table_bytes(max) * 3 / 2;
    let mut keyring = Keyring::new(pepper);
    keyring.set_max_keys(max);
    let info = allocation_counter::measure(|| {
        for record in &records {
            keyring.insert(record.clone()).unwrap();
        }
    });
    assert_eq!(keyring.len(), max);
    // 5 % slack for the search queues and the like.
    assert!(
        info.bytes_max as usize <= budget + budget / 20,
        "peak {} bytes for a budget of 1.5 × table_bytes({max}) = {budget} ({:.2}×)",
        info.bytes_max,
        info.bytes_max as f64 / budget as f64
    );
}
