//! The seeded hash of key ids, for the keyring's digest index and its maps.

use core::hash::BuildHasher;

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
