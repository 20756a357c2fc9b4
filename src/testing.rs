//! Fixtures for documentation examples and tests (the `testing` feature):
//! fixed records, tokens and ids, never for production use.
//!
//! ```
//! let record = keygate::testing::example_record();
//! assert_eq!(record.name(), "example");
//! ```

use rand_core::CryptoRng;

use crate::key::KeyRecord;
use crate::keyring::{Keyring, Principal};
use crate::token::KeyId;

pub use crate::key::example_record;
pub use crate::lineage::example_ids;
pub use crate::mint::example_minted;
pub use crate::token::{example_token, EXAMPLE_KEY_ID};

/// A key id that `keyring` does not hold, whose index window is `known`'s:
/// for timing tests (dudect) that compare a known id and an unknown one on
/// the same memory. Ids drawn at random land in other windows, and on this
/// machine which window an id reads shifts its time by a fraction of a
/// nanosecond, known or not, which a t-test over a million samples sees.
/// Draws ids from `rng` until one fits: about as many draws as the index
/// has home slots (twice the keys, rounded up to a power of two).
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
/// let twin = keygate::testing::unknown_id_sharing_window(&keyring, &known, &mut rng);
/// assert!(!keyring.contains(&twin));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn unknown_id_sharing_window<R: CryptoRng + ?Sized>(
    keyring: &Keyring,
    known: &KeyId,
    rng: &mut R,
) -> KeyId {
    loop {
        let id = KeyId::generate(rng);
        if keyring.shares_window(&id, known) && !keyring.contains(&id) {
            return id;
        }
    }
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
