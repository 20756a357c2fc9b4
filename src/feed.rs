//! The change feed: how a store keeps every [`Keyring`](crate::Keyring) in
//! step with it.
//!
//! A store appends one [`Change`] per write to a log, each with a sequence
//! number that only grows. A gateway reads the log from its cursor and hands
//! each change to [`Keyring::apply`](crate::Keyring::apply). Applying is
//! idempotent and order-insensitive: per key id, the change with the highest
//! sequence number wins, and a revocation is final (it leaves a tombstone),
//! so the same change twice, an older change, or a stale cache fill landing
//! after a revocation changes nothing.
//!
//! ```
//! use keygate::{Applied, Change, Keyring, Pepper};
//! # let record = keygate::testing::example_record();
//! let mut keyring = Keyring::new(Pepper::from_bytes(&[0u8; 32]));
//! let id = record.id();
//! assert_eq!(keyring.apply(Change::upsert(1, record.clone()))?, Applied::Changed);
//! assert_eq!(keyring.apply(Change::revoke(2, id))?, Applied::Changed);
//! // A stale upsert (seq 1 again, or a later cache fill) cannot bring it back.
//! assert_eq!(keyring.apply(Change::upsert(1, record.clone()))?, Applied::Unchanged);
//! assert_eq!(keyring.apply(Change::upsert(3, record))?, Applied::Unchanged);
//! assert!(keyring.get(&id).is_none());
//! assert_eq!(keyring.last_seq(), 3);
//! # Ok::<(), keygate::KeyringError>(())
//! ```

use crate::key::KeyRecord;
use crate::limit::Limiter;
use crate::token::KeyId;

/// One entry of a change log: what happened to a key, and when in the log.
///
/// Sequence numbers are unique and grow with commit order; 0 is never used
/// (a cursor of 0 means "from the start").
///
/// ```
/// # let record = keygate::testing::example_record();
/// let change = keygate::Change::upsert(7, record.clone());
/// assert_eq!(change.seq, 7);
/// assert_eq!(change.key_id(), record.id());
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    /// The position in the log.
    pub seq: u64,
    /// What happened.
    pub op: ChangeOp,
}

/// What a [`Change`] does.
///
/// ```
/// # let id = keygate::testing::example_record().id();
/// let op = keygate::ChangeOp::Revoke(id);
/// assert!(matches!(op, keygate::ChangeOp::Revoke(_)));
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChangeOp {
    /// A key was created, or its record changed (a roll shortens the old
    /// key's expiry).
    Upsert(KeyRecord),
    /// A key was revoked, for good.
    Revoke(KeyId),
}

impl Change {
    /// An upsert of `record` at `seq`.
    ///
    /// ```
    /// # let record = keygate::testing::example_record();
    /// let change = keygate::Change::upsert(1, record);
    /// assert!(matches!(change.op, keygate::ChangeOp::Upsert(_)));
    /// ```
    pub fn upsert(seq: u64, record: KeyRecord) -> Change {
        Change {
            seq,
            op: ChangeOp::Upsert(record),
        }
    }

    /// A revocation of `id` at `seq`.
    ///
    /// ```
    /// # let id = keygate::testing::example_record().id();
    /// let change = keygate::Change::revoke(2, id);
    /// assert_eq!(change.key_id(), id);
    /// ```
    pub fn revoke(seq: u64, id: KeyId) -> Change {
        Change {
            seq,
            op: ChangeOp::Revoke(id),
        }
    }

    /// The id of the key the change is about.
    ///
    /// ```
    /// # let record = keygate::testing::example_record();
    /// assert_eq!(keygate::Change::upsert(1, record.clone()).key_id(), record.id());
    /// ```
    pub fn key_id(&self) -> KeyId {
        match &self.op {
            ChangeOp::Upsert(record) => record.id(),
            ChangeOp::Revoke(id) => *id,
        }
    }
}

/// Whether [`Keyring::apply`](crate::Keyring::apply) changed the keyring.
///
/// ```
/// # let record = keygate::testing::example_record();
/// let mut keyring = keygate::Keyring::new(keygate::Pepper::from_bytes(&[0u8; 32]));
/// let change = keygate::Change::upsert(1, record);
/// assert_eq!(keyring.apply(change.clone())?, keygate::Applied::Changed);
/// assert_eq!(keyring.apply(change)?, keygate::Applied::Unchanged);
/// # Ok::<(), keygate::KeyringError>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Applied {
    /// The change was new and took effect.
    Changed,
    /// The change was a duplicate, older than what the keyring holds for its
    /// key, or an upsert of a revoked key: nothing changed.
    Unchanged,
}

impl Limiter {
    /// Takes a change's limits: an upsert charges the key to its record's
    /// meter with its record's limits, a revocation forgets it. Feed it the
    /// changes that [`Keyring::apply`](crate::Keyring::apply) applied
    /// ([`Applied::Changed`]), so that a stale change never comes back here.
    ///
    /// ```
    /// use core::time::Duration;
    /// use keygate::{Change, KeyLimits, Limiter, RateLimit};
    /// # let record = keygate::testing::example_record();
    /// let rate = RateLimit::new(5, Duration::from_secs(1))?;
    /// let limited = record.with_limits(KeyLimits { rate: Some(rate), credits: None });
    /// let mut limiter = Limiter::new();
    /// limiter.apply(&Change::upsert(1, limited.clone()));
    /// assert!(limiter.is_limited(&limited.id()));
    /// limiter.apply(&Change::revoke(2, limited.id()));
    /// assert!(limiter.is_empty());
    /// # Ok::<(), keygate::LimitError>(())
    /// ```
    pub fn apply(&mut self, change: &Change) {
        match &change.op {
            ChangeOp::Upsert(record) => self.charge(record.id(), record.meter(), record.limits()),
            ChangeOp::Revoke(id) => {
                self.forget(id);
            }
        }
    }
}
