//! Fixtures for documentation examples and tests (the `testing` feature):
//! fixed records, tokens and ids, never for production use.
//!
//! ```
//! let record = keygate::testing::example_record();
//! assert_eq!(record.name(), "example");
//! ```

use rand_core::CryptoRng;

use crate::keyring::{Keyring, Principal};
use crate::token::KeyId;

use alloc::string::String;

use crate::key::KeyRecord;
use crate::mint::{mint, MintRequest, MintedKey};
use crate::scope::{Access, Resource, Scopes};
use crate::secret::{Pepper, SecretHash};
use crate::time::UnixMillis;
use crate::token::{KeyKind, SecretToken, SECRET_LEN};

/// A key id that `keyring` does not hold, whose two index buckets are
/// `known`'s: for timing tests (dudect) that compare a known id and an
/// unknown one on the same memory. Ids drawn at random read other buckets,
/// and on this machine which buckets an id reads shifts its time by a
/// fraction of a nanosecond, known or not, which a t-test over a million
/// samples sees.
///
/// It draws one id from `rng`, then counts through eight of its characters
/// (four in each half) until the buckets match: about 256 candidates per
/// bucket of the index, one hash each (2^28 at 1M keys, about a second).
/// `None` only if all 62^8 candidates were tried, which no table makes
/// necessary.
///
/// ```
/// use keygate::{mint, Keyring, MintRequest, Pepper};
/// use rand_core::SeedableRng;
/// let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(1);
/// let mut keyring = Keyring::new(Pepper::from_bytes(&[7u8; 32]));
/// let request = MintRequest::standard(None, None, keygate::UnixMillis::from_millis(0))?;
/// let (record, _token) = mint(keyring.pepper(), &request, &mut rng, keygate::UnixMillis::from_millis(0)).into_parts();
/// let known = record.id();
/// keyring.insert(record)?;
/// let twin = keygate::testing::unknown_id_sharing_window(&keyring, &known, &mut rng).unwrap();
/// assert!(!keyring.contains(&twin));
/// assert_ne!(twin, known);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn unknown_id_sharing_window<R: CryptoRng + ?Sized>(
    keyring: &Keyring,
    known: &KeyId,
    rng: &mut R,
) -> Option<KeyId> {
    let start = *KeyId::generate(rng).as_bytes();
    (0..62u64.pow(8)).find_map(|n| {
        let mut bytes = start;
        let mut rest = n;
        for at in [4, 5, 6, 7, 12, 13, 14, 15] {
            if let Some(byte) = bytes.get_mut(at) {
                *byte = crate::token::base62_digit((rest % 62) as u8);
            }
            rest /= 62;
        }
        let id = KeyId::from_static(&bytes);
        (keyring.shares_window(&id, known) && !keyring.contains(&id)).then_some(id)
    })
}

/// The [`Principal`] `record` would authenticate as, without a token and
/// whether or not it has expired: for tests that need a caller. Production
/// code gets a principal only from [`Keyring::authenticate`].
///
/// ```
/// let record = keygate::testing::example_record();
/// assert_eq!(keygate::testing::principal_of(&record).id(), record.id());
/// ```
pub fn principal_of(record: &KeyRecord) -> Principal {
    Principal::of_record(record)
}

/// The key id of [`example_token`], for documentation examples.
pub const EXAMPLE_KEY_ID: KeyId = KeyId::from_static(b"4GZ6bQvR9cXw2LmT");

/// A valid restricted token, made from fixed bytes, for documentation examples.
pub fn example_token() -> String {
    let secret = [b'x'; SECRET_LEN];
    SecretToken::assemble(KeyKind::Restricted, &EXAMPLE_KEY_ID, &secret)
        .expose_secret()
        .into()
}

/// A restricted record (`devboxes:write,objects:read`, created at 1 000,
/// expires at 2 000), for documentation examples.
pub fn example_record() -> KeyRecord {
    KeyRecord::new(
        EXAMPLE_KEY_ID,
        KeyKind::Restricted,
        "example".into(),
        SecretHash::from_bytes([0; 32]),
        Scopes::grant(Resource::Devboxes, Access::Write).with(Resource::Objects, Access::Read),
        Some(UnixMillis::from_millis(2_000)),
        UnixMillis::from_millis(1_000),
        None,
    )
}

/// Four fixed ids, for documentation examples.
pub fn example_ids() -> [KeyId; 4] {
    [
        "aaaaaaaaaaaaaaaa",
        "bbbbbbbbbbbbbbbb",
        "cccccccccccccccc",
        "dddddddddddddddd",
    ]
    .map(|text| KeyId::parse(text).unwrap_or(EXAMPLE_KEY_ID))
}

/// A restricted key minted from fixed entropy, for documentation examples.
pub fn example_minted() -> MintedKey {
    struct Counter(u8);
    impl rand_core::RngCore for Counter {
        fn next_u32(&mut self) -> u32 {
            rand_core::impls::next_u32_via_fill(self)
        }
        fn next_u64(&mut self) -> u64 {
            rand_core::impls::next_u64_via_fill(self)
        }
        fn fill_bytes(&mut self, dst: &mut [u8]) {
            for b in dst {
                self.0 = self.0.wrapping_mul(31).wrapping_add(7);
                *b = self.0;
            }
        }
    }
    impl CryptoRng for Counter {}
    let pepper = Pepper::from_bytes(&[0u8; 32]);
    let request = MintRequest {
        kind: KeyKind::Restricted,
        name: String::from("example"),
        scopes: Scopes::grant(Resource::Devboxes, Access::Write),
        expires_at: None,
        creator_id: None,
        limits: crate::limit::KeyLimits::default(),
        meter: None,
    };
    mint(&pepper, &request, &mut Counter(1), UnixMillis::EPOCH)
}
