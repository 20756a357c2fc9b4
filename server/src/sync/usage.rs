//! `last_used_at_ms`: noted in memory when a key authenticates, at most
//! once per second per key, and written to the store in batches by the
//! follower, never in a request's critical section.

use std::sync::atomic::{AtomicI64, Ordering};

use dashmap::DashMap;
use keygate::KeyId;

/// Last-use times not yet written, and the ones written.
#[derive(Default)]
pub struct Usage {
    /// Per key: the last use noted (ms), and whether it awaits a flush.
    /// Hashed with the keyring's one-multiply id hash, not SipHash: only
    /// keys that authenticated get here, and their ids come from a CSPRNG,
    /// so no client can choose colliding ones.
    seen: DashMap<KeyId, Entry>,
}

struct Entry {
    last_ms: AtomicI64,
    flushed_ms: AtomicI64,
}

impl Usage {
    /// Notes that `id` authenticated at `now_ms`. Within the second of the
    /// last noted use this is one shard read lock and one load.
    #[inline]
    pub fn touch(&self, id: KeyId, now_ms: i64) {
        if let Some(entry) = self.seen.get(&id) {
            let last = entry.last_ms.load(Ordering::Relaxed);
            if now_ms.div_euclid(1_000) > last.div_euclid(1_000) {
                entry.last_ms.fetch_max(now_ms, Ordering::Relaxed);
            }
            return;
        }
        self.seen.entry(id).or_insert_with(|| Entry {
            last_ms: AtomicI64::new(now_ms),
            flushed_ms: AtomicI64::new(i64::MIN),
        });
    }

    /// The last use noted in memory for `id`, flushed or not.
    pub fn last_used(&self, id: &KeyId) -> Option<i64> {
        self.seen
            .get(id)
            .map(|entry| entry.last_ms.load(Ordering::Relaxed))
    }

    /// The uses noted since the last flush, marked as flushed. If writing
    /// them fails, hand them back with [`Usage::unflush`].
    pub fn take_dirty(&self) -> Vec<(KeyId, i64)> {
        let mut out = Vec::new();
        for entry in self.seen.iter() {
            let last = entry.last_ms.load(Ordering::Relaxed);
            if entry.flushed_ms.swap(last, Ordering::Relaxed) < last {
                out.push((*entry.key(), last));
            }
        }
        out
    }

    /// Marks a batch that could not be written as dirty again.
    pub fn unflush(&self, batch: &[(KeyId, i64)]) {
        for (id, _) in batch {
            if let Some(entry) = self.seen.get(id) {
                entry.flushed_ms.store(i64::MIN, Ordering::Relaxed);
            }
        }
    }

    /// Forgets keys that no longer exist (revoked or evicted).
    pub fn forget(&self, id: &KeyId) {
        self.seen.remove(id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> KeyId {
        KeyId::parse(&format!("{n:0>16}")).unwrap()
    }

    #[test]
    fn at_most_once_per_second_and_flushed_once() {
        let usage = Usage::default();
        usage.touch(id(1), 10_500);
        usage.touch(id(1), 10_900); // same second: not noted
        assert_eq!(usage.last_used(&id(1)), Some(10_500));
        usage.touch(id(1), 11_000);
        assert_eq!(usage.last_used(&id(1)), Some(11_000));
        usage.touch(id(2), 5);
        let mut batch = usage.take_dirty();
        batch.sort();
        assert_eq!(batch, vec![(id(1), 11_000), (id(2), 5)]);
        assert!(usage.take_dirty().is_empty());
        usage.touch(id(2), 1_005);
        assert_eq!(usage.take_dirty(), vec![(id(2), 1_005)]);
        usage.unflush(&[(id(2), 1_005)]);
        assert_eq!(usage.take_dirty(), vec![(id(2), 1_005)]);
        // Time never goes back, even if the clock does.
        usage.touch(id(2), 9_000);
        usage.touch(id(2), 3_000);
        assert_eq!(usage.last_used(&id(2)), Some(9_000));
        usage.forget(&id(2));
        assert_eq!(usage.last_used(&id(2)), None);
    }
}
