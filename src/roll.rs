//! Rolling a key: a new secret under a new id, with an overlap in which the
//! old key still works, and never a longer life.

use core::time::Duration;

use rand_core::CryptoRng;

use crate::key::KeyRecord;
use crate::mint::{mint, MintRequest, MintedKey};
use crate::secret::Pepper;
use crate::time::UnixMillis;
use crate::token::KeyId;

/// A key that cannot be rolled.
///
/// ```
/// # let id = keygate::testing::example_record().id();
/// let err = keygate::RollError::Expired { id, expires_at: keygate::UnixMillis::from_millis(5) };
/// assert_eq!(err.http_status(), 409);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RollError {
    /// The key has already expired.
    #[error("key `{id}` expired at {expires_at} ms; a roll never extends a key's life")]
    Expired {
        /// The key's id.
        id: KeyId,
        /// When it expired.
        expires_at: UnixMillis,
    },
}

impl RollError {
    /// 409: the key's state, not the request, is in the way.
    pub const fn http_status(&self) -> u16 {
        409
    }
}

/// The outcome of [`roll()`]: the new key, and the old record with its
/// shortened expiry. Store both in one transaction, then show the new token.
///
/// ```
/// # let (pepper, record) = (keygate::Pepper::from_bytes(&[0u8; 32]), keygate::testing::example_record());
/// # let mut rng = keygate::os_entropy();
/// let rolled = keygate::roll(&pepper, &record, core::time::Duration::from_millis(100), &mut rng, keygate::UnixMillis::from_millis(1_500))?;
/// assert_eq!(rolled.old().expires_at(), Some(keygate::UnixMillis::from_millis(1_600)));
/// assert_eq!(rolled.new_key().record().expires_at(), record.expires_at());
/// # Ok::<(), keygate::RollError>(())
/// ```
#[derive(Debug)]
pub struct RolledKey {
    new_key: MintedKey,
    old: KeyRecord,
}

impl RolledKey {
    /// The new key: record and token.
    pub fn new_key(&self) -> &MintedKey {
        &self.new_key
    }

    /// The old key's record, with its new expiry.
    pub fn old(&self) -> &KeyRecord {
        &self.old
    }

    /// Splits into the new key and the old key's updated record.
    ///
    /// ```
    /// # let (pepper, record) = (keygate::Pepper::from_bytes(&[0u8; 32]), keygate::testing::example_record());
    /// # let rolled = keygate::roll(&pepper, &record, core::time::Duration::from_millis(0), &mut keygate::os_entropy(), keygate::UnixMillis::from_millis(1_000))?;
    /// let (new_key, old) = rolled.into_parts();
    /// assert_eq!(new_key.record().scopes(), old.scopes());
    /// # Ok::<(), keygate::RollError>(())
    /// ```
    pub fn into_parts(self) -> (MintedKey, KeyRecord) {
        (self.new_key, self.old)
    }
}

/// Rolls `record` at `now`: mints a new key with a new id and secret
/// that keeps the kind, name, scopes, creator and expiry, and ends the old
/// key after `overlap`.
///
/// **A roll never extends a life.** The new key expires when the old one
/// did; the old one's expiry becomes `min(old expiry, now + overlap)`.
/// An overlap of 0 ends the old key at once. A key that has already expired
/// cannot be rolled ([`RollError::Expired`]).
///
/// ```
/// use rand_core::SeedableRng;
/// let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(8);
/// let pepper = keygate::Pepper::generate(&mut rng);
/// let request = keygate::MintRequest::restricted(Some("ci"), "objects:read".parse()?, None, keygate::UnixMillis::from_millis(0))?;
/// let (record, _old_token) = keygate::mint(&pepper, &request, &mut rng, keygate::UnixMillis::from_millis(0)).into_parts();
///
/// let rolled = keygate::roll(&pepper, &record, core::time::Duration::from_millis(60_000), &mut rng, keygate::UnixMillis::from_millis(10_000))?;
/// assert_eq!(rolled.old().expires_at(), Some(keygate::UnixMillis::from_millis(70_000)));
/// let new = rolled.new_key().record();
/// assert_eq!((new.name(), new.scopes(), new.expires_at()), ("ci", record.scopes(), None));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn roll<R: CryptoRng + ?Sized>(
    pepper: &Pepper,
    record: &KeyRecord,
    overlap: Duration,
    rng: &mut R,
    now: UnixMillis,
) -> Result<RolledKey, RollError> {
    if let Some(expires_at) = record.expires_at() {
        if now >= expires_at {
            return Err(RollError::Expired {
                id: record.id(),
                expires_at,
            });
        }
    }
    let overlap_end = now.saturating_add(overlap);
    let old_expiry = match record.expires_at() {
        Some(expiry) => expiry.min(overlap_end),
        None => overlap_end,
    };
    let request = MintRequest::like(record);
    let new_key = mint(pepper, &request, rng, now);
    Ok(RolledKey {
        new_key,
        old: record.clone().with_expiry(Some(old_expiry)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::testing::example_record;
    use rand_core::SeedableRng;

    #[test]
    fn a_roll_never_extends_a_life() {
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(1);
        let pepper = Pepper::from_bytes(&[4; 32]);
        let record = example_record(); // expires at 2 000
        let rolled = roll(
            &pepper,
            &record,
            core::time::Duration::from_millis(5_000),
            &mut rng,
            UnixMillis::from_millis(1_000),
        )
        .unwrap();
        assert_eq!(
            rolled.old().expires_at(),
            Some(UnixMillis::from_millis(2_000))
        );
        let new = rolled.new_key().record();
        assert_eq!(new.expires_at(), Some(UnixMillis::from_millis(2_000)));
        assert_eq!(new.kind(), record.kind());
        assert_eq!(new.name(), record.name());
        assert_eq!(new.scopes(), record.scopes());
        assert_eq!(new.creator_id(), record.creator_id());
        assert_eq!(new.created_at(), UnixMillis::from_millis(1_000));
        assert_ne!(new.id(), record.id());
        assert_ne!(new.secret_hash(), record.secret_hash());
        // Everything else about the old record is unchanged.
        assert_eq!(
            rolled.old().clone().with_expiry(record.expires_at()),
            record
        );
    }

    #[test]
    fn overlap_zero_ends_now_and_expired_keys_do_not_roll() {
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(2);
        let pepper = Pepper::from_bytes(&[4; 32]);
        let record = example_record();
        let rolled = roll(
            &pepper,
            &record,
            core::time::Duration::from_millis(0),
            &mut rng,
            UnixMillis::from_millis(1_999),
        )
        .unwrap();
        assert_eq!(
            rolled.old().expires_at(),
            Some(UnixMillis::from_millis(1_999))
        );
        assert!(rolled.old().is_expired_at(UnixMillis::from_millis(1_999)));
        assert_eq!(
            roll(
                &pepper,
                &record,
                core::time::Duration::from_millis(0),
                &mut rng,
                UnixMillis::from_millis(2_000)
            )
            .unwrap_err(),
            RollError::Expired {
                id: record.id(),
                expires_at: UnixMillis::from_millis(2_000)
            }
        );
        // A huge overlap saturates instead of wrapping.
        let forever = record.with_expiry(None);
        let rolled = roll(
            &pepper,
            &forever,
            core::time::Duration::from_millis(u64::MAX),
            &mut rng,
            UnixMillis::from_millis(5),
        )
        .unwrap();
        assert_eq!(
            rolled.old().expires_at(),
            Some(UnixMillis::from_millis(i64::MAX))
        );
        assert_eq!(rolled.new_key().record().expires_at(), None);
    }

    #[test]
    fn the_new_token_verifies_and_the_old_one_ends() {
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(3);
        let pepper = Pepper::generate(&mut rng);
        let req = MintRequest::standard(Some("svc"), None, UnixMillis::from_millis(0)).unwrap();
        let (record, old_token) =
            mint(&pepper, &req, &mut rng, UnixMillis::from_millis(0)).into_parts();
        let mut keyring = crate::Keyring::new(pepper.clone());
        keyring.insert(record.clone()).unwrap();
        let (new_key, old) = roll(
            &pepper,
            &record,
            core::time::Duration::from_millis(100),
            &mut rng,
            UnixMillis::from_millis(50),
        )
        .unwrap()
        .into_parts();
        let (new_record, new_token) = new_key.into_parts();
        keyring.insert(old).unwrap();
        keyring.insert(new_record).unwrap();
        assert!(keyring
            .authenticate(old_token.expose_secret(), UnixMillis::from_millis(149))
            .is_ok());
        assert!(keyring
            .authenticate(old_token.expose_secret(), UnixMillis::from_millis(150))
            .is_err());
        assert!(keyring
            .authenticate(
                new_token.expose_secret(),
                UnixMillis::from_millis(1_000_000)
            )
            .is_ok());
        assert!(new_token.expose_secret().starts_with("ak_"));
    }
}
