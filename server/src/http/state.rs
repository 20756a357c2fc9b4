//! The state every handler reads: the synchronised keys and the policy.

use std::sync::Arc;

use keygate::tower::Authenticate;
use keygate::{AuthError, MintPolicy, Principal};

use crate::store::Store;
use crate::sync::cache::KeyCache;
use crate::sync::counts::Counts;
use crate::sync::usage::Usage;
use crate::sync::Keys;

/// Shared server state: the keys this instance serves, and the policy.
pub struct AppState {
    keys: Arc<Keys>,
    policy: MintPolicy,
}

/// What the server hands the tower layer: the state, behind an `Arc`.
#[derive(Clone)]
pub struct Shared(pub Arc<AppState>);

impl AppState {
    /// State over the synchronised keys, minting under `policy`.
    pub fn new(keys: Arc<Keys>, policy: MintPolicy) -> AppState {
        AppState { keys, policy }
    }

    /// The keyring.
    pub fn cache(&self) -> &KeyCache {
        self.keys.cache()
    }

    /// The store.
    pub fn store(&self) -> &dyn Store {
        self.keys.store()
    }

    /// The last-use tracker.
    pub fn usage(&self) -> &Usage {
        self.keys.usage()
    }

    /// The per-key usage counts.
    pub fn counts(&self) -> &Counts {
        self.keys.counts()
    }

    /// The synchronised keys (for the readiness flag).
    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// The minting policy.
    pub fn policy(&self) -> MintPolicy {
        self.policy
    }
}

impl Authenticate for AppState {
    #[inline]
    fn authenticate(&self, token: &[u8], now: keygate::UnixMillis) -> Result<Principal, AuthError> {
        self.keys.authenticate(token, now)
    }
}

impl Authenticate for Shared {
    #[inline]
    fn authenticate(&self, token: &[u8], now: keygate::UnixMillis) -> Result<Principal, AuthError> {
        self.0.authenticate(token, now)
    }
}
