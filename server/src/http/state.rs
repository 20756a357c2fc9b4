//! The state every handler reads: the synchronised keys and the policy.

use std::collections::HashMap;
use std::sync::Arc;

use keygate::tower::Authenticate;
use keygate::{AuthError, KeyId, MintPolicy, Principal};

use crate::clock::now_ms;
use crate::http::view::{CreditsView, KeyView};
use crate::store::{Store, StoredKey};
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

    /// The view of a stored key, as every answer that carries one shows it:
    /// with the last use noted in memory, and its credits as
    /// [`AppState::credits_view`] reports them.
    pub async fn key_view(&self, key: &StoredKey) -> KeyView {
        let credits = self.credits_view(key).await;
        KeyView::of(key, self.usage().last_used(&key.record.id()), credits)
    }

    /// [`AppState::key_view`] of each key of a page, reading each meter's
    /// credits once.
    pub async fn key_views(&self, keys: &[StoredKey]) -> Vec<KeyView> {
        let mut meters: HashMap<KeyId, Option<CreditsView>> = HashMap::new();
        let mut views = Vec::with_capacity(keys.len());
        for key in keys {
            let meter = key.record.meter().id;
            let credits = match meters.get(&meter) {
                Some(credits) => *credits,
                None => {
                    let credits = self.credits_view(key).await;
                    meters.insert(meter, credits);
                    credits
                }
            };
            views.push(KeyView::of(
                key,
                self.usage().last_used(&key.record.id()),
                credits,
            ));
        }
        views
    }

    /// The credits a key view shows: the one place that decides what
    /// `remaining` reports. The meter's total as of now
    /// ([`CreditsView::live`]: its pool plus what the live leases held at
    /// their last renewal); the configured grant where the store cannot
    /// answer (logged).
    pub async fn credits_view(&self, key: &StoredKey) -> Option<CreditsView> {
        match CreditsView::live(self.store(), &key.record, now_ms()).await {
            Ok(credits) => credits,
            Err(e) => {
                let meter = key.record.meter().id;
                tracing::warn!(meter = %meter, "cannot read a meter's credits: {e}");
                CreditsView::configured(&key.record)
            }
        }
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
