//! Keeping this instance in step with the store: the in-memory keyring
//! (`cache`), the follower that applies the change log to it (`follow`) and
//! what it flushes: the last-use tracker (`usage`) and the per-key usage
//! counts (`counts`); the credit leases spent in memory and kept topped up
//! beside it (`credits`); and this instance's shares of the rate limits it
//! enforces with others (`shares`).

pub mod cache;
pub mod counts;
pub mod credits;
pub mod follow;
pub mod shares;
pub mod usage;

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use keygate::tower::Authenticate;
use keygate::{AuthError, CreditDecision, KeyId, Principal, UnixMillis, Verdict};

use crate::store::Store;
use crate::sync::cache::KeyCache;
use crate::sync::counts::Counts;
use crate::sync::credits::{CreditLeases, LeaseConfig};
use crate::sync::usage::Usage;

/// The keys this instance serves: the keyring, the store it follows, the
/// last uses and usage counts not yet written, the credit leases, and
/// whether the store
/// answered last time.
pub struct Keys {
    cache: KeyCache,
    store: Arc<dyn Store>,
    usage: Usage,
    counts: Counts,
    credits: Arc<CreditLeases>,
    /// Whether the store answered the follower's last read.
    ready: AtomicBool,
}

impl Keys {
    /// Keys over a loaded cache and its store; credit leases sized for a
    /// shared store ([`LeaseConfig::shared`]) or a sole instance
    /// ([`LeaseConfig::sole`]).
    pub fn new(cache: KeyCache, store: Arc<dyn Store>) -> Keys {
        let config = if store.shared() {
            LeaseConfig::shared()
        } else {
            LeaseConfig::sole()
        };
        Keys {
            cache,
            credits: Arc::new(CreditLeases::new(Arc::clone(&store), config)),
            store,
            usage: Usage::default(),
            counts: Counts::default(),
            ready: AtomicBool::new(true),
        }
    }

    /// The credit leases: [`CreditLeases::spend`] on the hot path.
    pub fn credits(&self) -> &Arc<CreditLeases> {
        &self.credits
    }

    /// Decides a request of `cost` by `id` at `now_ms`: the rate limit
    /// first (the keyring's [`keygate::Limiter`]), then the credits, spent
    /// from this instance's leases ([`CreditLeases::spend`]); never the
    /// store. A rate-limited request spends no credits (it reports the
    /// balance, as a probe would); a `cost` of 0 asks whether a request of
    /// 1 would pass and spends nothing. The answer is the library's
    /// [`Verdict`], for the same 429s and header fields.
    #[inline]
    pub fn check_limits(&self, id: &KeyId, now_ms: i64, cost: u32) -> Verdict {
        let checked = self.cache.check_limits(id, now_ms, cost);
        let Some(metered) = checked.metered else {
            return Verdict::new(checked.rate, None);
        };
        let rate_limited = checked.rate.is_some_and(|r| !r.allowed());
        let spend = if rate_limited { 0 } else { u64::from(cost) };
        let spent = self.credits.spend(
            metered.meter,
            metered.refill,
            spend,
            UnixMillis::from_millis(now_ms),
        );
        Verdict::new(
            checked.rate,
            Some(CreditDecision::new(
                spent.allowed,
                spent.remaining,
                spent.retry_after,
            )),
        )
    }

    /// Hands back the leases of the meters whose last key with credits
    /// went ([`KeyCache::take_released`]): called by the follower after it
    /// applies changes.
    pub fn release_meters(&self) {
        for meter in self.cache.take_released() {
            self.credits.forget(&meter);
        }
    }

    /// The keyring.
    pub fn cache(&self) -> &KeyCache {
        &self.cache
    }

    /// The store.
    pub fn store(&self) -> &dyn Store {
        &*self.store
    }

    /// The last-use tracker.
    pub fn usage(&self) -> &Usage {
        &self.usage
    }

    /// The per-key usage counts.
    pub fn counts(&self) -> &Counts {
        &self.counts
    }

    /// Whether the store answered last time.
    pub fn ready_flag(&self) -> &AtomicBool {
        &self.ready
    }
}

impl Authenticate for Keys {
    /// The library's constant-time path, and nothing else: no store lookup,
    /// no branch on whether the id is known. A success notes the key's use.
    #[inline]
    fn authenticate(&self, token: &[u8], now: keygate::UnixMillis) -> Result<Principal, AuthError> {
        let now_ms = now.as_millis();
        let principal = self.cache.authenticate(token, now_ms)?;
        self.usage.touch(principal.id(), now_ms);
        Ok(principal)
    }
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]
mod tests {
    use std::time::Duration;

    use keygate::{Change, Credits, KeyLimits, MintRequest, Pepper, RateLimit, Refusal};

    use super::*;
    use crate::store::sqlite::SqliteStore;
    use crate::store::CreditMeter;

    fn keyed(limits: KeyLimits, now_ms: i64) -> keygate::KeyRecord {
        let now = UnixMillis::from_millis(now_ms);
        let request = MintRequest::standard(None, None, now)
            .unwrap()
            .with_limits(limits);
        let minted = keygate::mint(
            &Pepper::from_bytes(&[9u8; 32]),
            &request,
            &mut keygate::os_entropy(),
            now,
        );
        minted.record().clone()
    }

    /// The rate limit is decided first and a request it refuses spends no
    /// credits; the credits come from the lease, refused whole; a meter's
    /// last key revoked hands its lease back to the pool.
    #[tokio::test]
    async fn the_rate_limit_then_the_leased_credits() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&dir.path().join("k.db")).unwrap());
        let keys = Keys::new(
            KeyCache::new(Pepper::from_bytes(&[9u8; 32]), 4),
            Arc::clone(&store),
        );
        let now_ms = 1_000_000;
        let limits = KeyLimits {
            rate: Some(RateLimit::new(4, Duration::from_secs(60)).unwrap()),
            credits: Some(Credits::new(3, None).unwrap()),
        };
        let record = keyed(limits, now_ms);
        let (id, meter) = (record.id(), record.meter());
        keys.cache().apply([Change::upsert(1, record)]);
        let pool = CreditMeter {
            meter,
            refill: None,
        };
        store.set_credits(pool, 3, now_ms).await.unwrap();
        keys.credits()
            .ensure_now(meter, None, UnixMillis::from_millis(now_ms))
            .await;

        // Cost 2 of 3: allowed, with both fields.
        let v = keys.check_limits(&id, now_ms, 2);
        assert!(v.result().is_ok());
        assert_eq!(v.rate().map(|r| r.remaining()), Some(2));
        assert_eq!(v.credits().map(|c| c.remaining()), Some(1));
        // Cost 2 of the 1 left: the rate limit passes (and counts it), the
        // credits refuse whole, with no wait that helps.
        let v = keys.check_limits(&id, now_ms, 2);
        assert_eq!(
            v.result(),
            Err(Refusal::CreditsExhausted { retry_after: None })
        );
        assert_eq!(v.credits().map(|c| c.remaining()), Some(1));
        // Rate-limited now: the credit is not spent, and a probe says so.
        let v = keys.check_limits(&id, now_ms, 1);
        assert!(matches!(v.result(), Err(Refusal::RateLimited { .. })));
        assert_eq!(v.credits().map(|c| c.remaining()), Some(1));
        assert_eq!(keys.credits().held(&meter.id), 1);
        // An unknown key is unlimited.
        let other = keyed(KeyLimits::default(), now_ms).id();
        assert!(keys.check_limits(&other, now_ms, 1).is_unlimited());

        // The meter's last key revoked: its lease goes back to the pool at
        // the next tick.
        keys.cache().apply([Change::revoke(2, id)]);
        keys.release_meters();
        keys.credits()
            .tick(UnixMillis::from_millis(now_ms + 1))
            .await;
        assert_eq!(keys.credits().held(&meter.id), 0);
        assert_eq!(store.credit_total(pool, now_ms + 2).await.unwrap(), Some(1));
        assert!(keys.check_limits(&id, now_ms, 1).is_unlimited());
    }

    /// Setting the credits on one instance is exact: its lease goes back
    /// first, the pool is set, and the lease is taken anew at once.
    #[tokio::test]
    async fn a_set_after_a_reclaim_is_exact_on_one_instance() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&dir.path().join("k.db")).unwrap());
        let keys = Keys::new(
            KeyCache::new(Pepper::from_bytes(&[9u8; 32]), 4),
            Arc::clone(&store),
        );
        let now_ms = 5_000_000;
        let now = UnixMillis::from_millis(now_ms);
        let limits = KeyLimits {
            rate: None,
            credits: Some(Credits::new(30, None).unwrap()),
        };
        let record = keyed(limits, now_ms);
        let (id, meter) = (record.id(), record.meter());
        keys.cache().apply([Change::upsert(1, record)]);
        let pool = CreditMeter {
            meter,
            refill: None,
        };
        store.set_credits(pool, 30, now_ms).await.unwrap();
        keys.credits().ensure_now(meter, None, now).await;
        assert_eq!(keys.credits().held(&meter.id), 30);
        assert!(keys.check_limits(&id, now_ms, 10).result().is_ok());
        // Set to 5 with 20 leased here: without the reclaim the lease would
        // keep its 20.
        assert_eq!(keys.credits().reclaim(&meter.id, now).await.unwrap(), 20);
        assert_eq!(store.set_credits(pool, 5, now_ms).await.unwrap(), 5);
        keys.credits().ensure_now(meter, None, now).await;
        assert_eq!(keys.credits().held(&meter.id), 5);
        let v = keys.check_limits(&id, now_ms, 6);
        assert_eq!(
            v.result(),
            Err(Refusal::CreditsExhausted { retry_after: None })
        );
        assert_eq!(v.credits().map(|c| c.remaining()), Some(5));
        // An add reaches this instance's next lease at once.
        assert_eq!(store.add_credits(pool, 4, now_ms).await.unwrap(), Some(9));
        keys.credits().ensure_now(meter, None, now).await;
        assert!(keys.check_limits(&id, now_ms, 9).result().is_ok());
        assert!(keys.check_limits(&id, now_ms, 1).result().is_err());
    }
}
