//! The digest index: key id → digest and grant, with a lookup that does the
//! same work whether or not the id is known.

use core::hash::BuildHasher;

use crate::key::KeyRecord;
use crate::scope::Scopes;
use crate::secret::SecretHash;
use crate::token::{KeyId, KeyKind};

/// Key ids are minted from a CSPRNG, so the map needs no keyed hash against
/// flooding: an attacker's lookups can't make stored ids collide. A fixed
/// seed keeps the core free of hidden randomness.
#[derive(Clone, Copy, Default, Debug)]
pub struct IdHasher;

impl BuildHasher for IdHasher {
    type Hasher = foldhash::fast::FoldHasher<'static>;
    #[inline]
    fn build_hasher(&self) -> Self::Hasher {
        foldhash::fast::FixedState::with_seed(0x6b65_7967_6174_6531).build_hasher()
    }
}

/// The most keys `Keyring::with_capacity` reserves room for up front.
pub(crate) const MAX_PREALLOCATED_KEYS: usize = 1 << 20;

/// How many consecutive slots of a [`DigestIndex`] may hold the keys whose
/// home is one slot; every lookup reads all of them.
const WINDOW: usize = 8;

/// [`Slot::grant`] bit: the key is restricted (else standard).
const GRANT_RESTRICTED: u64 = 1 << 32;
/// [`Slot::grant`] bit: the key has an expiry.
const GRANT_EXPIRES: u64 = 1 << 33;

/// An empty window, for the lookup's unreachable out-of-bounds case.
static EMPTY_WINDOW: [Slot; WINDOW] = [Slot {
    id: 0,
    digest: [0; 4],
    grant: 0,
    expires_at_ms: 0,
}; WINDOW];

/// One slot of a [`DigestIndex`]: a key id, its stored digest, and what a
/// verified token may do, so that the hot path reads nothing else. One
/// slot is one 64-byte cache line.
#[derive(Clone, Copy, Default)]
#[repr(align(64))]
pub(crate) struct Slot {
    /// The id's 16 bytes as one number. 0 marks an empty slot: a key id is
    /// base62 text, so none is 16 zero bytes.
    pub(crate) id: u128,
    /// The digest's 32 bytes as little-endian words.
    pub(crate) digest: [u64; 4],
    /// [`Scopes::bits`] in the low 32 bits, then [`GRANT_RESTRICTED`] and
    /// [`GRANT_EXPIRES`].
    pub(crate) grant: u64,
    /// The expiry, when [`GRANT_EXPIRES`] is set.
    pub(crate) expires_at_ms: i64,
}

impl Slot {
    pub(crate) fn of(record: &KeyRecord) -> Slot {
        let kind = match record.kind() {
            KeyKind::Standard => 0,
            KeyKind::Restricted => GRANT_RESTRICTED,
        };
        let expires = if record.expires_at_ms().is_some() {
            GRANT_EXPIRES
        } else {
            0
        };
        Slot {
            id: DigestIndex::key(&record.id()),
            digest: DigestIndex::words(&record.secret_hash()),
            grant: u64::from(record.scopes().bits()) | kind | expires,
            expires_at_ms: record.expires_at_ms().unwrap_or(0),
        }
    }

    pub(crate) fn kind(&self) -> KeyKind {
        if self.grant & GRANT_RESTRICTED == 0 {
            KeyKind::Standard
        } else {
            KeyKind::Restricted
        }
    }

    pub(crate) fn expires_at_ms(&self) -> Option<i64> {
        (self.grant & GRANT_EXPIRES != 0).then_some(self.expires_at_ms)
    }

    pub(crate) fn scopes(&self) -> Scopes {
        // Written from a `Scopes` by `Slot::of`; a bad pattern would grant nothing.
        Scopes::from_bits(self.grant as u32).unwrap_or(Scopes::empty())
    }
}

/// The stored digests by key id, laid out so that a lookup does the same
/// work and reads the same amount of memory whether or not the id is known.
///
/// A hash map answers a miss faster than a hit (a hit also loads and
/// compares the stored key), and dudect tells the two apart within a million
/// samples. Here a key lives in one of the [`WINDOW`] slots that follow its
/// home slot (`hash(id) & mask`, open addressing without displacement); a
/// lookup reads all [`WINDOW`] slots and selects the digest with masks, with
/// no branch on whether a slot matched. The table is at most half full and
/// doubles when a window overflows.
#[derive(Clone)]
pub(crate) struct DigestIndex {
    pub(crate) slots: alloc::vec::Vec<Slot>,
    /// `slots.len() - 1`; `slots.len()` is a power of two.
    pub(crate) mask: usize,
    pub(crate) len: usize,
}

impl DigestIndex {
    /// Room for `capacity` keys (preallocating for at most 2^20).
    pub(crate) fn with_capacity(capacity: usize) -> DigestIndex {
        DigestIndex::with_slots(capacity.min(MAX_PREALLOCATED_KEYS).saturating_mul(2))
    }

    pub(crate) fn with_slots(slots: usize) -> DigestIndex {
        let size = slots
            .max(2 * WINDOW)
            .checked_next_power_of_two()
            .unwrap_or(1 << (usize::BITS - 1));
        DigestIndex {
            // WINDOW - 1 spare slots at the end, so no window wraps around.
            slots: alloc::vec![Slot::default(); size + WINDOW - 1],
            mask: size - 1,
            len: 0,
        }
    }

    #[inline(always)]
    pub(crate) fn key(id: &KeyId) -> u128 {
        u128::from_le_bytes(*id.as_bytes())
    }

    #[inline(always)]
    fn home(&self, key: u128) -> usize {
        (IdHasher.hash_one(key) as usize) & self.mask
    }

    /// The [`WINDOW`] slots from `key`'s home: one bounds check, and the
    /// loops over the array unroll.
    #[inline(always)]
    fn window(&self, key: u128) -> &[Slot; WINDOW] {
        self.slots
            .get(self.home(key)..)
            .and_then(|rest| rest.first_chunk::<WINDOW>())
            .unwrap_or(&EMPTY_WINDOW)
    }

    pub(crate) fn window_mut(&mut self, key: u128) -> Option<&mut [Slot; WINDOW]> {
        let home = self.home(key);
        self.slots
            .get_mut(home..)
            .and_then(|rest| rest.first_chunk_mut::<WINDOW>())
    }

    pub(crate) fn words(digest: &SecretHash) -> [u64; 4] {
        let mut words = [0u64; 4];
        for (word, chunk) in words.iter_mut().zip(digest.as_bytes().chunks_exact(8)) {
            let mut bytes = [0u8; 8];
            bytes.copy_from_slice(chunk);
            *word = u64::from_le_bytes(bytes);
        }
        words
    }

    pub(crate) fn digest(words: &[u64; 4]) -> SecretHash {
        let mut bytes = [0u8; 32];
        for (chunk, word) in bytes.chunks_exact_mut(8).zip(words) {
            chunk.copy_from_slice(&word.to_le_bytes());
        }
        SecretHash::from_bytes(bytes)
    }

    /// Puts `new` in its window: over the slot of the same id, or in the
    /// first free one. False if the window is full.
    pub(crate) fn place(&mut self, new: Slot) -> bool {
        let Some(window) = self.window_mut(new.id) else {
            return false;
        };
        if let Some(slot) = window.iter_mut().find(|slot| slot.id == new.id) {
            *slot = new;
            return true;
        }
        match window.iter_mut().find(|slot| slot.id == 0) {
            Some(slot) => {
                *slot = new;
                self.len += 1;
                true
            }
            None => false,
        }
    }

    pub(crate) fn insert(&mut self, record: &KeyRecord) {
        let new = Slot::of(record);
        if self.len.saturating_add(1).saturating_mul(2) > self.slots.len() {
            self.grow();
        }
        while !self.place(new) {
            self.grow();
        }
    }

    /// Rebuilds at twice the size, or larger, until every key fits its window.
    pub(crate) fn grow(&mut self) {
        let mut size = self.slots.len().saturating_mul(2);
        loop {
            let mut bigger = DigestIndex::with_slots(size);
            let fits = self
                .slots
                .iter()
                .filter(|slot| slot.id != 0)
                .all(|slot| bigger.place(*slot));
            if fits || size >= 1 << (usize::BITS - 2) {
                *self = bigger;
                return;
            }
            size = size.saturating_mul(2);
        }
    }

    pub(crate) fn remove(&mut self, id: &KeyId) {
        let key = DigestIndex::key(id);
        let removed = self
            .window_mut(key)
            .and_then(|window| window.iter_mut().find(|slot| slot.id == key))
            .map(|slot| *slot = Slot::default());
        if removed.is_some() {
            self.len -= 1;
        }
    }

    /// The slot stored for `id` and an all-ones mask, or a slot holding the
    /// `decoy` digest (and no grant) and 0. It reads the [`WINDOW`] slots
    /// from the id's home and merges each with a mask, the same work for a
    /// known and an unknown id.
    #[inline]
    pub(crate) fn lookup(&self, id: &KeyId, decoy: &SecretHash) -> (u64, Slot) {
        let key = DigestIndex::key(id);
        let window = self.window(key);
        // Pass 1: per slot, all ones if it holds `key`, else 0. The masks
        // are independent of each other, so the CPU computes them in
        // parallel.
        let mut equal = [0u64; WINDOW];
        for (mask, slot) in equal.iter_mut().zip(window) {
            let diff = slot.id ^ key;
            // `x | -x` has its top bit set iff x != 0.
            let differs = ((diff | diff.wrapping_neg()) >> 127) as u64;
            *mask = differs.wrapping_sub(1);
        }
        // The barrier hides that each mask is 0 or all ones, so the
        // optimizer can't turn the merge below into branches.
        let equal = core::hint::black_box(equal);
        // Pass 2: OR in each slot's digest under its mask (at most one is
        // set), then the decoy if none was.
        let mut found = 0u64;
        let mut merged = Slot::default();
        for (mask, stored) in equal.iter().zip(window) {
            found |= mask;
            for (word, stored) in merged.digest.iter_mut().zip(stored.digest) {
                *word |= stored & mask;
            }
            merged.grant |= stored.grant & mask;
            merged.expires_at_ms |= stored.expires_at_ms & (*mask as i64);
        }
        for (word, decoy) in merged.digest.iter_mut().zip(DigestIndex::words(decoy)) {
            *word |= decoy & !found;
        }
        merged.id = key;
        (found, merged)
    }
}
