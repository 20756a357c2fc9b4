//! The digest index: key id → digest and grant, in 32-byte slots, two to a
//! cache line, with a lookup that does the same work whether or not the id
//! is known.

use core::hash::BuildHasher;

use hashbrown::HashMap;

use super::hash::IdHasher;
use super::slot::{PackedId, Slot, GRANT_EXPIRES_FAR};
use super::KeyringError;
use crate::time::UnixMillis;
use crate::token::KeyId;

/// The most keys `Keyring::with_capacity` reserves room for up front.
pub(crate) const MAX_PREALLOCATED_KEYS: usize = 1 << 20;

/// The most keys a keyring holds (134 217 728); see
/// [`Keyring::MAX_KEYS`](crate::Keyring::MAX_KEYS).
pub(crate) const MAX_KEYS: usize = 1 << 27;

/// Slots in a bucket: a bucket is one 64-byte cache line.
const BUCKET_SLOTS: usize = 2;

/// The second bucket is the first XOR one of `2^(64 - TAG_SHIFT)` (256)
/// offsets, picked by the hash's top bits. Random ids fill such a table as
/// far as with a second bucket drawn at random (about 87 %, measured from
/// 2^12 to 2^22 buckets), and an id with a given key's two buckets (a
/// dudect twin) is found in about 256 candidates per bucket, not one per
/// bucket squared.
const TAG_SHIFT: u32 = 56;

/// The fewest buckets a table has.
const MIN_BUCKETS: usize = 8;

/// The table is at most `MAX_LOAD_NUM / MAX_LOAD_DEN` (80 %) full: it
/// doubles before that, so after a doubling it is at least 40 % full.
/// Random ids fill a table to about 87 % before an insert finds no free
/// slot within [`MAX_SEARCH`] buckets (`random_ids_fill_a_table_past_the_load_bound`).
const MAX_LOAD_NUM: usize = 4;
/// See [`MAX_LOAD_NUM`].
const MAX_LOAD_DEN: usize = 5;

/// A table may have at most `SLOTS_PER_KEY` slots per key (rounded up to a
/// power of two): an insert whose key does not fit a table that size fails
/// with [`KeyringError::Crowded`] rather than grow it further.
const SLOTS_PER_KEY: usize = 4;

/// How many buckets [`DigestIndex::place`] searches for a free slot, breadth
/// first, before it gives up on the table.
const MAX_SEARCH: usize = 1024;

/// Two slots, one 64-byte cache line.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C, align(64))]
pub(crate) struct Bucket(pub(crate) [Slot; BUCKET_SLOTS]);

/// An empty bucket, for the lookup's unreachable out-of-bounds case.
static EMPTY_BUCKET: Bucket = Bucket(
    [Slot {
        id_lo: 0,
        id_hi: 0,
        digest_hi: 0,
        digest_lo: 0,
        grant: 0,
    }; BUCKET_SLOTS],
);

/// The stored digests and grants by key id, laid out so that a lookup does
/// the same work and reads the same memory for a known and an unknown id.
///
/// A key lives in one of two buckets its seeded id hash names (cuckoo
/// hashing, buckets of two slots): the hash's low bits, and that XOR one of
/// 256 offsets the hash's top bits pick. A lookup reads both buckets, always (two independent reads, which
/// the CPU overlaps), and
/// selects the slot that holds the id with masks, with no branch on whether
/// a slot matched. An insert that finds both buckets full moves keys
/// between their two buckets, breadth first, to free one.
///
/// The table is at most 80 % full: it doubles before that, and when an
/// insert finds no free slot within [`MAX_SEARCH`] buckets. It never loses
/// a key: a larger table that cannot place every key is thrown away, and
/// the old one stays. Its size is bounded: at most `max_keys` keys and
/// [`SLOTS_PER_KEY`] slots per key; an insert past either bound fails with a
/// [`KeyringError`] and changes nothing.
///
/// The cold parts live apart, where the hot path never reads them: the
/// sequence number of each slot's change in a parallel array, and the rare
/// expiries a slot cannot hold (before 1970 or after 2248) in a map.
#[derive(Clone)]
pub(crate) struct DigestIndex {
    pub(crate) buckets: alloc::vec::Vec<Bucket>,
    /// Per slot, the sequence number of the change that wrote it.
    seqs: alloc::vec::Vec<u64>,
    /// The expiries the slots marked [`GRANT_EXPIRES_FAR`] cannot hold.
    far: HashMap<KeyId, i64, IdHasher>,
    /// `buckets.len() - 1`; the length is a power of two.
    mask: usize,
    pub(crate) len: usize,
    /// At most [`MAX_KEYS`]; set by `Keyring::set_max_keys`, and by tests.
    pub(crate) max_keys: usize,
    hasher: IdHasher,
}

/// Where a key is: its bucket and the slot in it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct At {
    bucket: usize,
    slot: usize,
}

impl At {
    /// The index of the slot in the parallel arrays.
    fn flat(self) -> usize {
        self.bucket * BUCKET_SLOTS + self.slot
    }
}

/// The largest table (in buckets) for `keys` keys.
fn bucket_limit(keys: usize) -> usize {
    (keys.saturating_mul(SLOTS_PER_KEY) / BUCKET_SLOTS)
        .max(MIN_BUCKETS)
        .next_power_of_two()
}

/// Whether `keys` keys fit `buckets` buckets under the load bound.
fn fits(keys: usize, buckets: usize) -> bool {
    keys.saturating_mul(MAX_LOAD_DEN) <= buckets.saturating_mul(BUCKET_SLOTS * MAX_LOAD_NUM)
}

/// The fewest buckets (a power of two) that hold `keys` keys under the load
/// bound.
fn buckets_for(keys: usize) -> usize {
    let mut buckets = MIN_BUCKETS;
    while !fits(keys, buckets) {
        buckets = buckets.saturating_mul(2);
    }
    buckets
}

impl DigestIndex {
    /// Room for `capacity` keys (preallocating for at most 2^20).
    pub(crate) fn with_capacity(capacity: usize, hasher: IdHasher) -> DigestIndex {
        let buckets = buckets_for(capacity.min(MAX_PREALLOCATED_KEYS));
        let far = HashMap::with_hasher(hasher);
        let (table, seqs) = DigestIndex::empty(buckets);
        DigestIndex {
            buckets: table,
            seqs,
            far,
            mask: buckets - 1,
            len: 0,
            max_keys: MAX_KEYS,
            hasher,
        }
    }

    /// The buckets and sequence numbers of an empty table.
    fn empty(buckets: usize) -> (alloc::vec::Vec<Bucket>, alloc::vec::Vec<u64>) {
        (
            alloc::vec![Bucket::default(); buckets],
            alloc::vec![0; buckets * BUCKET_SLOTS],
        )
    }

    /// The number of slots.
    #[cfg(test)]
    pub(crate) fn slots(&self) -> usize {
        self.buckets.len() * BUCKET_SLOTS
    }

    /// The two buckets of `id`: the hash's low bits, and that XOR an
    /// offset the hash's top 8 bits pick ([`TAG_SHIFT`]). They may be one
    /// bucket.
    #[inline(always)]
    pub(crate) fn buckets_of(&self, id: &KeyId) -> (usize, usize) {
        let hash = self.hasher.hash_one(u128::from_le_bytes(*id.as_bytes()));
        let first = hash as usize & self.mask;
        let tag = (hash >> TAG_SHIFT) + 1;
        let offset = (tag.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 32) as usize;
        (first, (first ^ offset) & self.mask)
    }

    #[inline(always)]
    fn bucket(&self, at: usize) -> &Bucket {
        self.buckets.get(at).unwrap_or(&EMPTY_BUCKET)
    }

    /// The slot stored for `id` and an all-ones mask, or a slot of no
    /// grant holding the `decoy` digest and 0. It reads both of the id's
    /// buckets and merges each slot with a mask: the same work for a known
    /// and an unknown id.
    #[inline(always)]
    pub(crate) fn lookup(&self, id: &KeyId, decoy: &Slot) -> (u64, Slot) {
        let (first, second) = self.buckets_of(id);
        let (first, second) = (self.bucket(first), self.bucket(second));
        let packed = PackedId::of(id);
        // Pass 1: per slot, all ones if it holds the id, else 0. The masks
        // are independent, so the CPU computes them in parallel.
        let [a, b] = [&first.0, &second.0];
        let slots = a.iter().chain(b.iter());
        let mut equal = [0u64; 2 * BUCKET_SLOTS];
        for (mask, slot) in equal.iter_mut().zip(slots) {
            *mask = slot.holds(packed);
        }
        // The barrier hides that each mask is 0 or all ones, so the
        // optimizer can't turn the merge into branches.
        let equal = core::hint::black_box(equal);
        // Pass 2: OR in each slot under its mask (one is set at most, or
        // the same slot twice when both buckets are one), then the decoy if
        // none was.
        let mut found = 0u64;
        let mut merged = Slot::default();
        for (mask, slot) in equal.iter().zip(a.iter().chain(b.iter())) {
            found |= mask;
            merged.digest_lo |= slot.digest_lo & mask;
            merged.digest_hi |= slot.digest_hi & (*mask as u32);
            merged.grant |= slot.grant & mask;
        }
        merged.digest_lo |= decoy.digest_lo & !found;
        merged.digest_hi |= decoy.digest_hi & !(found as u32);
        merged.id_lo = packed.lo;
        merged.id_hi = packed.hi;
        (found, merged)
    }

    /// Where `id` is, if the index holds it (not constant-time: for
    /// writes and management reads).
    fn find(&self, id: &KeyId) -> Option<At> {
        let packed = PackedId::of(id);
        let (first, second) = self.buckets_of(id);
        [first, second].into_iter().find_map(|bucket| {
            self.bucket(bucket)
                .0
                .iter()
                .position(|slot| slot.id() == packed)
                .map(|slot| At { bucket, slot })
        })
    }

    fn slot(&self, at: At) -> Option<&Slot> {
        self.buckets.get(at.bucket)?.0.get(at.slot)
    }

    fn slot_mut(&mut self, at: At) -> Option<&mut Slot> {
        self.buckets.get_mut(at.bucket)?.0.get_mut(at.slot)
    }

    fn seq(&self, at: At) -> u64 {
        self.seqs.get(at.flat()).copied().unwrap_or(0)
    }

    /// Writes `slot` and `seq` at `at`.
    fn write(&mut self, at: At, slot: Slot, seq: u64) {
        if let Some(to) = self.slot_mut(at) {
            *to = slot;
        }
        if let Some(to) = self.seqs.get_mut(at.flat()) {
            *to = seq;
        }
    }

    /// The slot and sequence number of `id`.
    pub(crate) fn get(&self, id: &KeyId) -> Option<(Slot, u64)> {
        let at = self.find(id)?;
        Some((*self.slot(at)?, self.seq(at)))
    }

    /// Whether the index holds `id`.
    pub(crate) fn contains(&self, id: &KeyId) -> bool {
        self.find(id).is_some()
    }

    /// The expiry of the key `id` whose slot is `slot`.
    #[inline]
    pub(crate) fn expires_at(&self, id: &KeyId, slot: &Slot) -> Option<UnixMillis> {
        match slot.expiry() {
            Ok(expiry) => expiry,
            // Kept aside when the slot was written; a missing entry (never)
            // fails closed: expired since the first instant.
            Err(()) => Some(UnixMillis::from_millis(
                self.far.get(id).copied().unwrap_or(i64::MIN),
            )),
        }
    }

    /// Puts `new` (whose id the index does not hold) in a free slot of one
    /// of its buckets, moving other keys to their other bucket to free one.
    /// Changes nothing and returns false if no free slot is found within
    /// [`MAX_SEARCH`] buckets.
    fn place(&mut self, new: Slot, seq: u64) -> bool {
        let id = new.id().unpack();
        let (first, second) = self.buckets_of(&id);
        // Breadth first over buckets: each entry is a bucket, and the
        // entry and slot the key that would move into it comes from.
        let mut queue: alloc::vec::Vec<(usize, usize, usize)> = alloc::vec::Vec::new();
        queue.push((first, usize::MAX, 0));
        if second != first {
            queue.push((second, usize::MAX, 0));
        }
        let mut next = 0;
        while let Some(&(bucket, _, _)) = queue.get(next) {
            if let Some(free) = self.bucket(bucket).0.iter().position(|s| s.id().is_empty()) {
                if let Some(path) = self.path(&queue, next, free) {
                    self.shift(&path, new, seq);
                    self.len += 1;
                    return true;
                }
            }
            if queue.len() < MAX_SEARCH {
                for (at, slot) in self.bucket(bucket).0.iter().enumerate() {
                    let (a, b) = self.buckets_of(&slot.id().unpack());
                    let other = if a == bucket { b } else { a };
                    if other != bucket && queue.len() < MAX_SEARCH {
                        queue.push((other, next, at));
                    }
                }
            }
            next += 1;
        }
        false
    }

    /// The slots from the new key's bucket to the free one, in order: the
    /// key in each moves to the next. `None` if the path passes a slot
    /// twice (it would move a key twice).
    fn path(
        &self,
        queue: &[(usize, usize, usize)],
        end: usize,
        free: usize,
    ) -> Option<alloc::vec::Vec<At>> {
        let mut path = alloc::vec![At {
            bucket: queue.get(end)?.0,
            slot: free,
        }];
        let mut node = end;
        while let Some(&(_, parent, slot)) = queue.get(node) {
            let Some(&(bucket, _, _)) = queue.get(parent) else {
                break;
            };
            let at = At { bucket, slot };
            if path.contains(&at) {
                return None;
            }
            path.push(at);
            node = parent;
        }
        path.reverse();
        Some(path)
    }

    /// Moves each key of `path` (but the last, free slot) to the next slot,
    /// last first, then writes `new` in the first.
    fn shift(&mut self, path: &[At], new: Slot, seq: u64) {
        for pair in path.windows(2).rev() {
            if let [from, to] = *pair {
                let moved = self.slot(from).copied().unwrap_or_default();
                let moved_seq = self.seq(from);
                self.write(to, moved, moved_seq);
            }
        }
        if let Some(&start) = path.first() {
            self.write(start, new, seq);
        }
    }

    /// Adds or replaces the key of `slot` (its expiry `far` if the slot
    /// cannot hold it), written by the change `seq`; returns the slot and
    /// number it replaced. On an error the index holds every key it held
    /// (some may have moved to their other bucket), and not this one.
    pub(crate) fn insert(
        &mut self,
        slot: Slot,
        far: Option<i64>,
        seq: u64,
    ) -> Result<Option<(Slot, u64)>, KeyringError> {
        let id = slot.id().unpack();
        let replaced = match self.find(&id) {
            // A replacement reuses the id's slot: it always fits.
            Some(at) => {
                let old = self.slot(at).copied().map(|old| (old, self.seq(at)));
                self.write(at, slot, seq);
                old
            }
            None => {
                self.add(slot, seq)?;
                None
            }
        };
        match far {
            Some(ms) => self.far.insert(id, ms),
            None => self.far.remove(&id),
        };
        Ok(replaced)
    }

    /// Adds a key the index does not hold.
    fn add(&mut self, new: Slot, seq: u64) -> Result<(), KeyringError> {
        let id = new.id().unpack();
        if self.len >= self.max_keys {
            return Err(KeyringError::Full { max: self.max_keys });
        }
        let keys = self.len + 1;
        let limit = bucket_limit(keys);
        let mut buckets = self.buckets.len();
        while !fits(keys, buckets) {
            buckets = buckets.saturating_mul(2);
        }
        if buckets == self.buckets.len() {
            if self.place(new, seq) {
                return Ok(());
            }
            buckets = buckets.saturating_mul(2);
        }
        while buckets <= limit {
            if let Some(bigger) = self.rebuilt(buckets, new, seq) {
                *self = bigger;
                return Ok(());
            }
            buckets = buckets.saturating_mul(2);
        }
        Err(KeyringError::Crowded { id })
    }

    /// Every key and `new` in a table of `buckets` buckets, or `None` if
    /// one does not fit.
    fn rebuilt(&self, buckets: usize, new: Slot, seq: u64) -> Option<DigestIndex> {
        let (table, seqs) = DigestIndex::empty(buckets);
        let mut bigger = DigestIndex {
            buckets: table,
            seqs,
            far: HashMap::with_hasher(self.hasher),
            mask: buckets - 1,
            len: 0,
            max_keys: self.max_keys,
            hasher: self.hasher,
        };
        let fits = self
            .occupied()
            .chain(core::iter::once((new, seq)))
            .all(|(slot, seq)| bigger.place(slot, seq));
        bigger.far = self.far.clone();
        fits.then_some(bigger)
    }

    /// Every stored slot and its sequence number, in table order.
    pub(crate) fn occupied(&self) -> impl Iterator<Item = (Slot, u64)> + '_ {
        self.buckets
            .iter()
            .flat_map(|bucket| bucket.0.iter())
            .zip(self.seqs.iter())
            .filter(|(slot, _)| !slot.id().is_empty())
            .map(|(slot, seq)| (*slot, *seq))
    }

    /// Removes `id`; returns its slot and sequence number.
    pub(crate) fn remove(&mut self, id: &KeyId) -> Option<(Slot, u64)> {
        let at = self.find(id)?;
        let old = (*self.slot(at)?, self.seq(at));
        self.write(at, Slot::default(), 0);
        self.len -= 1;
        if old.0.grant & GRANT_EXPIRES_FAR != 0 {
            self.far.remove(id);
        }
        Some(old)
    }

    /// Removes the keys expired at `now`, calling `evicted` with each one's
    /// id and sequence number; returns how many. It reads the expiry from
    /// the slot, and unpacks an id only for a key it removes or whose
    /// expiry is kept aside.
    pub(crate) fn evict_expired(
        &mut self,
        now: UnixMillis,
        mut evicted: impl FnMut(KeyId, u64),
    ) -> usize {
        let mut removed = 0;
        for bucket in 0..self.buckets.len() {
            for slot in 0..BUCKET_SLOTS {
                let at = At { bucket, slot };
                let Some(&stored) = self.slot(at) else {
                    continue;
                };
                let expired = match stored.expiry() {
                    Ok(expiry) => expiry.is_some_and(|t| now >= t),
                    Err(()) => self
                        .expires_at(&stored.id().unpack(), &stored)
                        .is_some_and(|t| now >= t),
                };
                // An empty slot has no expiry, so it is never expired.
                if expired {
                    let id = stored.id().unpack();
                    evicted(id, self.seq(at));
                    self.write(at, Slot::default(), 0);
                    self.len -= 1;
                    if stored.grant & GRANT_EXPIRES_FAR != 0 {
                        self.far.remove(&id);
                    }
                    removed += 1;
                }
            }
        }
        removed
    }

    /// How many expiries are kept aside (for tests).
    #[cfg(test)]
    pub(crate) fn far_len(&self) -> usize {
        self.far.len()
    }
}

/// The bytes of the table a keyring sizes for `keys` keys: its buckets and
/// their sequence numbers.
pub(crate) fn table_bytes(keys: usize) -> usize {
    buckets_for(keys.min(MAX_KEYS))
        .saturating_mul(core::mem::size_of::<Bucket>() + BUCKET_SLOTS * core::mem::size_of::<u64>())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scope::Scopes;
    use crate::secret::SecretHash;
    use crate::token::KeyKind;
    use rand_core::SeedableRng;

    fn slot_of(id: &KeyId, n: u8) -> Slot {
        let digest = SecretHash::from_bytes([n; 32]);
        Slot::new(id, KeyKind::Standard, Scopes::all(), None, &digest).0
    }

    /// How full a table of `buckets` buckets gets with random ids before
    /// an insert finds no free slot within its search.
    fn load_reached(buckets: usize, seed: u64) -> f64 {
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(seed);
        let mut index = DigestIndex::with_capacity(0, IdHasher::with_seeds([seed, !seed]));
        (index.buckets, index.seqs) = DigestIndex::empty(buckets);
        index.mask = buckets - 1;
        while index.place(slot_of(&KeyId::generate(&mut rng), 1), 1) {}
        index.len as f64 / (buckets * BUCKET_SLOTS) as f64
    }

    /// The load bound (80 %) is under what the table reaches (about
    /// 87 %, at every size from 2^12 to 2^22 buckets when this was
    /// written): an insert that forces a doubling below it is rare.
    #[test]
    fn random_ids_fill_a_table_past_the_load_bound() {
        for seed in 0..4 {
            let load = load_reached(1 << 12, seed);
            assert!(load > 0.85, "seed {seed}: {load}");
        }
    }

    #[test]
    fn a_key_moves_to_its_other_bucket_to_free_a_slot() {
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(16);
        let mut index = DigestIndex::with_capacity(0, IdHasher::default());
        assert_eq!(index.buckets.len(), MIN_BUCKETS);
        let ids: alloc::vec::Vec<KeyId> = (0..4000).map(|_| KeyId::generate(&mut rng)).collect();
        let new = *ids
            .iter()
            .find(|id| index.buckets_of(id).0 != index.buckets_of(id).1)
            .unwrap();
        let (a, b) = index.buckets_of(&new);
        // Two keys whose first bucket is a, two whose first is b, each
        // with its other bucket elsewhere: a and b fill, the rest is empty.
        let of = |id: &KeyId| index.buckets_of(id);
        let with_first = |first: usize| {
            ids.iter()
                .filter(|id| {
                    let (x, y) = of(id);
                    x == first && y != a && y != b && **id != new
                })
                .take(2)
                .copied()
                .collect::<alloc::vec::Vec<_>>()
        };
        let (in_a, in_b) = (with_first(a), with_first(b));
        let moved_to = of(&in_a[0]).1;
        for (n, id) in in_a.iter().chain(&in_b).enumerate() {
            assert!(index.place(slot_of(id, n as u8), 10 + n as u64));
        }
        assert_eq!(index.find(&in_a[0]), Some(At { bucket: a, slot: 0 }));
        assert_eq!(index.find(&in_b[1]), Some(At { bucket: b, slot: 1 }));
        // The new key finds a and b full: the first key of a moves to its
        // other bucket (empty), and the new key takes its slot.
        assert!(index.place(slot_of(&new, 9), 99));
        assert_eq!(index.len, 5);
        assert_eq!(index.find(&new), Some(At { bucket: a, slot: 0 }));
        assert_eq!(index.seq(At { bucket: a, slot: 0 }), 99);
        let moved = index.find(&in_a[0]).unwrap();
        assert_eq!(moved.bucket, moved_to);
        // Every key keeps its digest and sequence number, in one of its
        // two buckets.
        for (n, id) in in_a.iter().chain(&in_b).enumerate() {
            let at = index.find(id).unwrap();
            assert_eq!(
                index.slot(at).unwrap().digest(),
                slot_of(id, n as u8).digest()
            );
            assert_eq!(index.seq(at), 10 + n as u64);
        }
    }

    #[test]
    fn a_failed_placement_changes_nothing() {
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(17);
        let mut index = DigestIndex::with_capacity(0, IdHasher::default());
        let mut n = 0u64;
        loop {
            let id = KeyId::generate(&mut rng);
            let before = (index.buckets.clone(), index.seqs.clone(), index.len);
            if !index.place(slot_of(&id, n as u8), n) {
                assert_eq!(
                    (index.buckets.clone(), index.seqs.clone(), index.len),
                    before
                );
                assert!(!index.contains(&id));
                break;
            }
            n += 1;
        }
        assert_eq!(index.len as u64, n);
        assert!(n >= 12, "{n}");
    }
}
