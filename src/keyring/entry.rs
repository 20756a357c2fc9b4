//! What a keyring holds of a key: what authentication needs, no more.

use crate::scope::Scopes;
use crate::time::UnixMillis;
use crate::token::{KeyId, KeyKind};

/// One key as a [`Keyring`](crate::Keyring) holds it: its id, kind, scopes
/// and expiry, and the sequence number of the change that wrote it.
///
/// The keyring keeps what a request's check needs, in 32 bytes a key; a
/// key's name, creator, creation time and lineage are the store's (see
/// `docs/scale.md`). It holds no secret.
///
/// ```
/// let mut keyring = keygate::Keyring::new(keygate::Pepper::from_bytes(&[0u8; 32]));
/// let record = keygate::testing::example_record();
/// keyring.insert(record.clone())?;
/// let entry = keyring.get(&record.id()).unwrap();
/// assert_eq!(entry.id(), record.id());
/// assert_eq!(entry.scopes(), record.scopes());
/// assert_eq!(entry.expires_at(), record.expires_at());
/// assert_eq!(entry.seq(), 0); // inserted, not applied from a feed
/// # Ok::<(), keygate::KeyringError>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeyringEntry {
    pub(crate) id: KeyId,
    pub(crate) kind: KeyKind,
    pub(crate) scopes: Scopes,
    pub(crate) expires_at: Option<UnixMillis>,
    pub(crate) seq: u64,
}

impl KeyringEntry {
    /// The key id.
    pub fn id(&self) -> KeyId {
        self.id
    }

    /// Standard or restricted.
    pub fn kind(&self) -> KeyKind {
        self.kind
    }

    /// What the key may do; [`Scopes::all`] for a standard key.
    pub fn scopes(&self) -> Scopes {
        self.scopes
    }

    /// When the key expires; `None` never.
    pub fn expires_at(&self) -> Option<UnixMillis> {
        self.expires_at
    }

    /// The sequence number of the change that wrote the key
    /// ([`Keyring::apply`](crate::Keyring::apply)); 0 for
    /// [`Keyring::insert`](crate::Keyring::insert).
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// Whether the key has expired at `now`: its expiry is at or before it.
    ///
    /// ```
    /// # let mut keyring = keygate::Keyring::new(keygate::Pepper::from_bytes(&[0u8; 32]));
    /// # let record = keygate::testing::example_record(); // expires at 2 000 ms
    /// # keyring.insert(record.clone())?;
    /// let entry = keyring.get(&record.id()).unwrap();
    /// assert!(!entry.is_expired_at(keygate::UnixMillis::from_millis(1_999)));
    /// assert!(entry.is_expired_at(keygate::UnixMillis::from_millis(2_000)));
    /// # Ok::<(), keygate::KeyringError>(())
    /// ```
    pub fn is_expired_at(&self, now: UnixMillis) -> bool {
        self.expires_at.is_some_and(|at| now >= at)
    }
}
