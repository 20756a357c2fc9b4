//! The in-memory keyring every request is checked against, kept in step
//! with the store by the follower (`crate::follow`) and by this instance's
//! own writes.
//!
//! The hot path takes a read lock and calls the library's constant-time
//! [`Keyring::authenticate_bytes`]: an unknown id costs what a wrong secret
//! costs, and no request ever reaches the database.

use std::sync::{PoisonError, RwLock, RwLockReadGuard};

use keygate::{AuthError, Change, Keyring, Pepper, Principal};

/// The keyring behind a lock.
pub struct KeyCache {
    keyring: RwLock<Keyring>,
}

impl KeyCache {
    /// An empty cache whose digests are keyed by `pepper`, with room for
    /// `capacity` keys.
    pub fn new(pepper: Pepper, capacity: usize) -> KeyCache {
        KeyCache {
            keyring: RwLock::new(Keyring::with_capacity(pepper, capacity)),
        }
    }

    fn read(&self) -> RwLockReadGuard<'_, Keyring> {
        self.keyring.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// Verifies a bearer token at `now_ms`.
    #[inline]
    pub fn authenticate(&self, token: &[u8], now_ms: i64) -> Result<Principal, AuthError> {
        self.read().authenticate_bytes(token, now_ms)
    }

    /// A copy of the pepper, to mint and roll keys this cache accepts.
    pub fn pepper(&self) -> Pepper {
        self.read().pepper().clone()
    }

    /// Applies changes of the log, in one write-lock section per call.
    /// Returns how many changed the keyring. A change the keyring refuses
    /// is logged and skipped: one bad row must not stop the feed.
    pub fn apply(&self, changes: impl IntoIterator<Item = Change>) -> usize {
        let mut keyring = self.keyring.write().unwrap_or_else(PoisonError::into_inner);
        let mut changed = 0;
        for change in changes {
            let (seq, id) = (change.seq, change.key_id());
            match keyring.apply(change) {
                Ok(keygate::Applied::Changed) => changed += 1,
                Ok(keygate::Applied::Unchanged) => {}
                Err(e) => tracing::error!(seq, key_id = %id, "cannot apply change: {e}"),
            }
        }
        changed
    }

    /// Drops the records expired by `now_ms`; returns how many.
    pub fn evict_expired(&self, now_ms: i64) -> usize {
        self.keyring
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .evict_expired(now_ms)
    }

    /// The number of live records.
    pub fn len(&self) -> usize {
        self.read().len()
    }
}
