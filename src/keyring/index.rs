//! The digest index: key id → digest and grant, with a lookup that does the
//! same work whether or not the id is known.

use core::hash::BuildHasher;

use super::KeyringError;
use crate::key::KeyRecord;
use crate::scope::Scopes;
use crate::secret::SecretHash;
use crate::time::UnixMillis;
use crate::token::{KeyId, KeyKind};

/// The hash of key ids, for the keyring's map and its digest index: one
/// folded multiply (the 128-bit product's halves XORed, as foldhash does for
/// a `u128`) of the id's two 64-bit halves, each XORed with a 64-bit seed.
///
/// [`Keyring::new`](crate::Keyring::new) derives the seeds from the pepper
/// (blake3 `derive_key` under their own context, see
/// [`Pepper`](crate::Pepper)), so they are secret and random, and ids crafted
/// without the pepper cannot aim at a slot: minted ids come from a CSPRNG,
/// and ids from an import or from `KeyRecord` deserialization spread like
/// random ones. The hash is not cryptographic, and the keyring's correctness
/// does not rest on it: ids that do collide (from someone who knows the
/// pepper) make [`Keyring::insert`](crate::Keyring::insert) fail with an
/// error, never drop a key or grow without bound.
///
/// `IdHasher::default()` uses fixed seeds. `Debug` hides the seeds.
#[derive(Clone, Copy)]
pub(crate) struct IdHasher {
    seeds: [u64; 2],
}

impl IdHasher {
    /// The hasher keyed by `seeds`.
    pub(crate) fn with_seeds(seeds: [u64; 2]) -> IdHasher {
        IdHasher { seeds }
    }
}

impl Default for IdHasher {
    fn default() -> IdHasher {
        IdHasher::with_seeds([0x6b65_7967_6174_6531, 0x9e37_79b9_7f4a_7c15])
    }
}

impl core::fmt::Debug for IdHasher {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("IdHasher(<seeded>)")
    }
}

impl BuildHasher for IdHasher {
    type Hasher = IdHash;
    #[inline(always)]
    fn build_hasher(&self) -> IdHash {
        IdHash {
            seeds: self.seeds,
            state: 0,
        }
    }
}

/// The [`Hasher`](core::hash::Hasher) that [`IdHasher`] builds. A key id
/// hashes as one `u128` write.
#[derive(Clone, Copy)]
pub(crate) struct IdHash {
    seeds: [u64; 2],
    state: u64,
}

impl core::fmt::Debug for IdHash {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("IdHash(<seeded>)")
    }
}

/// The 128-bit product of `a` and `b`, its halves XORed.
#[inline(always)]
const fn folded_multiply(a: u64, b: u64) -> u64 {
    let product = (a as u128) * (b as u128);
    (product as u64) ^ ((product >> 64) as u64)
}

impl core::hash::Hasher for IdHash {
    #[inline(always)]
    fn write_u128(&mut self, i: u128) {
        let [lo_seed, hi_seed] = self.seeds;
        self.state = folded_multiply(
            (i as u64) ^ lo_seed ^ self.state,
            ((i >> 64) as u64) ^ hi_seed,
        );
    }

    /// Other keys: 16 bytes at a time, zero-padded, then the length.
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(16) {
            let mut block = [0u8; 16];
            for (to, from) in block.iter_mut().zip(chunk) {
                *to = *from;
            }
            self.write_u128(u128::from_le_bytes(block));
        }
        self.write_u128(bytes.len() as u128);
    }

    #[inline(always)]
    fn finish(&self) -> u64 {
        self.state
    }
}

/// 1 if `diff` is not 0, else 0, by arithmetic: `x | -x` has its top bit
/// set iff `x != 0`.
#[inline(always)]
pub(crate) const fn differs(diff: u128) -> u64 {
    ((diff | diff.wrapping_neg()) >> 127) as u64
}

/// The most keys `Keyring::with_capacity` reserves room for up front.
pub(crate) const MAX_PREALLOCATED_KEYS: usize = 1 << 20;

/// The most keys a keyring holds (4 194 304); see [`Keyring::MAX_KEYS`](crate::Keyring::MAX_KEYS).
pub(crate) const MAX_KEYS: usize = 1 << 22;

/// A [`DigestIndex`] of `n` keys has at most `SLOTS_PER_KEY · n` slots
/// (rounded up to a power of two, at least `2 · WINDOW`), plus `WINDOW - 1`
/// spare ones: 512 bytes per key at most, 128 to 256 in the usual case.
const SLOTS_PER_KEY: usize = 8;

/// How far past its home [`DigestIndex::place`] looks for a free slot to
/// move into the window.
const MAX_PROBE: usize = 256;

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
        let expires = if record.expires_at().is_some() {
            GRANT_EXPIRES
        } else {
            0
        };
        Slot {
            id: DigestIndex::key(&record.id()),
            digest: DigestIndex::words(&record.secret_hash()),
            grant: u64::from(record.scopes().bits()) | kind | expires,
            expires_at_ms: record.expires_at().map_or(0, UnixMillis::as_millis),
        }
    }

    pub(crate) fn kind(&self) -> KeyKind {
        if self.grant & GRANT_RESTRICTED == 0 {
            KeyKind::Standard
        } else {
            KeyKind::Restricted
        }
    }

    pub(crate) fn expires_at(&self) -> Option<UnixMillis> {
        (self.grant & GRANT_EXPIRES != 0).then_some(UnixMillis::from_millis(self.expires_at_ms))
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
/// no branch on whether a slot matched.
///
/// The table is at most half full: it doubles before that, and when a new
/// key's window is full. It never loses a key: a rebuild that cannot place
/// every key is thrown away, and the old table stays. Its size is bounded:
/// at most [`MAX_KEYS`] keys and `SLOTS_PER_KEY` slots per key; an insert
/// past either bound fails with a [`KeyringError`] and changes nothing.
#[derive(Clone)]
pub(crate) struct DigestIndex {
    pub(crate) slots: alloc::vec::Vec<Slot>,
    /// `size - 1`, for a power-of-two `size`; `slots.len()` is
    /// `size + WINDOW - 1`.
    pub(crate) mask: usize,
    pub(crate) len: usize,
    /// [`MAX_KEYS`]; lowered by tests.
    pub(crate) max_keys: usize,
    hasher: IdHasher,
}

/// The largest table for `keys` keys (at most [`MAX_KEYS`], checked before,
/// so at most `MAX_KEYS · SLOTS_PER_KEY` slots).
fn size_limit(keys: usize) -> usize {
    keys.saturating_mul(SLOTS_PER_KEY)
        .max(2 * WINDOW)
        .next_power_of_two()
}

impl DigestIndex {
    /// Room for `capacity` keys (preallocating for at most 2^20).
    pub(crate) fn with_capacity(capacity: usize, hasher: IdHasher) -> DigestIndex {
        let size = capacity
            .min(MAX_PREALLOCATED_KEYS)
            .saturating_mul(2)
            .max(2 * WINDOW)
            .next_power_of_two();
        DigestIndex::with_size(size, hasher)
    }

    /// An empty table of `size` (a power of two, at least `2 · WINDOW`) slots.
    fn with_size(size: usize, hasher: IdHasher) -> DigestIndex {
        DigestIndex {
            // WINDOW - 1 spare slots at the end, so no window wraps around.
            slots: alloc::vec![Slot::default(); size + WINDOW - 1],
            mask: size - 1,
            len: 0,
            max_keys: MAX_KEYS,
            hasher,
        }
    }

    /// The number of home slots, a power of two.
    pub(crate) fn size(&self) -> usize {
        self.mask + 1
    }

    #[inline(always)]
    pub(crate) fn key(id: &KeyId) -> u128 {
        u128::from_le_bytes(*id.as_bytes())
    }

    #[inline(always)]
    pub(crate) fn home(&self, key: u128) -> usize {
        (self.hasher.hash_one(key) as usize) & self.mask
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

    #[inline(always)]
    pub(crate) fn words(digest: &SecretHash) -> [u64; 4] {
        let mut words = [0u64; 4];
        for (word, chunk) in words.iter_mut().zip(digest.as_bytes().chunks_exact(8)) {
            let mut bytes = [0u8; 8];
            bytes.copy_from_slice(chunk);
            *word = u64::from_le_bytes(bytes);
        }
        words
    }

    #[cfg(test)]
    pub(crate) fn digest(words: &[u64; 4]) -> SecretHash {
        let mut bytes = [0u8; 32];
        for (chunk, word) in bytes.chunks_exact_mut(8).zip(words) {
            chunk.copy_from_slice(&word.to_le_bytes());
        }
        SecretHash::from_bytes(bytes)
    }

    /// Puts `new` in its window: over the slot of the same id, or in a free
    /// slot of the window. When the window is full, it takes the first free
    /// slot after it and moves it back into the window by moving other keys
    /// within their own windows (hopscotch hashing). False if that fails.
    ///
    /// With random ids, a window overflows this way about 100 times less
    /// often than with plain probing: in a simulation of 2^16-slot tables,
    /// 4·10^-5 of inserts at load 1/2 (plain probing: 5·10^-3), none in
    /// 10^5 at load 0.4.
    pub(crate) fn place(&mut self, new: Slot) -> bool {
        let home = self.home(new.id);
        let Some(window) = self.window_mut(new.id) else {
            return false;
        };
        if let Some(slot) = window.iter_mut().find(|slot| slot.id == new.id) {
            *slot = new;
            return true;
        }
        // The first free slot from home on; the slots before it are taken.
        let Some(mut free) = self
            .slots
            .iter()
            .enumerate()
            .skip(home)
            .take(MAX_PROBE)
            .find(|(_, slot)| slot.id == 0)
            .map(|(at, _)| at)
        else {
            return false;
        };
        while free - home >= WINDOW {
            // The farthest key back whose own window reaches `free`.
            let mover = (free + 1 - WINDOW..free).find(|&at| {
                self.slots
                    .get(at)
                    .is_some_and(|slot| free - self.home(slot.id) < WINDOW)
            });
            let Some(at) = mover else {
                return false;
            };
            self.slots.swap(at, free);
            free = at;
        }
        match self.slots.get_mut(free) {
            Some(slot) => {
                *slot = new;
                self.len += 1;
                true
            }
            None => false,
        }
    }

    /// Adds or replaces `record`'s slot. On an error the index still holds
    /// every key it held (slots may have moved within their windows), and not
    /// `record`.
    pub(crate) fn insert(&mut self, record: &KeyRecord) -> Result<(), KeyringError> {
        let new = Slot::of(record);
        // A replacement reuses the id's slot: it always fits.
        if let Some(slot) = self
            .window_mut(new.id)
            .and_then(|window| window.iter_mut().find(|slot| slot.id == new.id))
        {
            *slot = new;
            return Ok(());
        }
        if self.len >= self.max_keys {
            return Err(KeyringError::Full { max: self.max_keys });
        }
        let keys = self.len + 1;
        let limit = size_limit(keys);
        let mut size = self.size();
        while keys.saturating_mul(2) > size {
            size = size.saturating_mul(2);
        }
        if size == self.size() {
            if self.place(new) {
                return Ok(());
            }
            size = size.saturating_mul(2);
        }
        while size <= limit {
            if let Some(bigger) = self.rebuilt(size, new) {
                *self = bigger;
                return Ok(());
            }
            size = size.saturating_mul(2);
        }
        Err(KeyringError::Crowded { id: record.id() })
    }

    /// Every key and `new` in a table of `size` slots, or `None` if a window
    /// overflows.
    fn rebuilt(&self, size: usize, new: Slot) -> Option<DigestIndex> {
        let mut bigger = DigestIndex::with_size(size, self.hasher);
        bigger.max_keys = self.max_keys;
        let fits = self
            .slots
            .iter()
            .filter(|slot| slot.id != 0)
            .chain(core::iter::once(&new))
            .all(|slot| bigger.place(*slot));
        fits.then_some(bigger)
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

    /// The slot stored for the id `key` and an all-ones mask, or a slot holding the
    /// `decoy` digest (and no grant) and 0. It reads the [`WINDOW`] slots
    /// from the id's home and merges each with a mask, the same work for a
    /// known and an unknown id.
    #[inline]
    pub(crate) fn lookup(&self, key: u128, decoy: &SecretHash) -> (u64, Slot) {
        let window = self.window(key);
        // Pass 1: per slot, all ones if it holds `key`, else 0. The masks
        // are independent of each other, so the CPU computes them in
        // parallel.
        let mut equal = [0u64; WINDOW];
        for (mask, slot) in equal.iter_mut().zip(window) {
            *mask = differs(slot.id ^ key).wrapping_sub(1);
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
