//! One key as the digest index holds it: 32 bytes, two to a cache line.
//!
//! What authentication needs of a key is its id, its digest and its grant
//! (kind, scopes, expiry). A slot packs them into 32 bytes:
//!
//! | bytes | what |
//! |---|---|
//! | 12 | the id, 6 bits a character ([`PackedId`]) |
//! | 12 | the first 96 bits of the digest ([`Digest96`]) |
//! | 8 | the grant: scopes, kind and expiry ([`Slot::grant`]) |
//!
//! The store keeps the whole 32-byte digest; only memory holds 96 bits of it.
//! Matching 96 bits of a digest keyed by the pepper is still out of reach of
//! any guesser: one guess in 2^96 succeeds, and guesses are online.

use crate::scope::Scopes;
use crate::secret::SecretHash;
use crate::time::UnixMillis;
use crate::token::{KeyId, KeyKind, KEY_ID_LEN};

/// A key id in 96 bits: each of its 16 characters in 6 bits, `0-9` as 54
/// to 63, `A-Z` as 1 to 26, `a-z` as 27 to 52 ([`code`]), so that no id
/// packs to 0 (the empty slot).
///
/// The code is arithmetic on the whole id at once (SWAR on two `u64`s),
/// no table: the hot path packs the id of every token it sees. A byte
/// that is not base62 gets some code too; such a token's digest, over its
/// own bytes, matches no stored key's.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct PackedId {
    /// Characters 0 to 9 and the low 4 bits of character 10.
    pub(crate) lo: u64,
    /// The rest: the top 2 bits of character 10, then characters 11 to 15.
    pub(crate) hi: u32,
}

/// Bytes of `0x3F`.
const LOW6: u64 = 0x3F3F_3F3F_3F3F_3F3F;

/// The 6-bit code of each of the 8 bytes of `x`, in place: `(c & 63) + 12`
/// minus `6 · ((c >> 5) & 3)`, modulo 64. The digits (`c >> 5` = 1) land on
/// 54 to 63, the capitals (2) on 1 to 26, the small letters (3) on 27 to 52.
#[inline(always)]
const fn code(x: u64) -> u64 {
    // Each byte's `(c >> 5) & 3` times 58 (= -6 mod 64) stays in its byte
    // (3 · 58 < 256); each sum stays under 256 (63 + 63 + 12), so no byte
    // carries into the next.
    let band = ((x >> 5) & 0x0303_0303_0303_0303).wrapping_mul(58) & LOW6;
    ((x & LOW6) + band + 0x0C0C_0C0C_0C0C_0C0C) & LOW6
}

/// The 6-bit fields of the 8 bytes of `x` (one per byte, in its low bits)
/// side by side: byte `i`'s at bits `6i` to `6i + 5`.
#[inline(always)]
const fn squeeze(x: u64) -> u64 {
    let x = (x & 0x003F_003F_003F_003F) | ((x >> 2) & 0x0FC0_0FC0_0FC0_0FC0);
    let x = (x & 0x0000_0FFF_0000_0FFF) | ((x >> 4) & 0x00FF_F000_00FF_F000);
    (x & 0x00FF_FFFF) | ((x >> 8) & 0xFFFF_FF00_0000)
}

/// The character of each code: the inverse of [`code`] on base62.
// Evaluated at compile time: an out-of-range index is a build error.
#[allow(clippy::indexing_slicing)]
const CHAR_OF_CODE: [u8; 64] = {
    let mut table = [b'0'; 64];
    let digits = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let mut i = 0;
    while i < digits.len() {
        let c = digits[i];
        table[(code(c as u64) & 63) as usize] = c;
        i += 1;
    }
    table
};

impl PackedId {
    /// The empty slot's id.
    pub(crate) const EMPTY: PackedId = PackedId { lo: 0, hi: 0 };

    /// Packs `id`'s bytes, valid or not.
    #[inline(always)]
    pub(crate) fn of(id: &KeyId) -> PackedId {
        let bytes = u128::from_le_bytes(*id.as_bytes());
        // Two independent halves of 8 characters (48 bits each).
        let a = squeeze(code(bytes as u64));
        let b = squeeze(code((bytes >> 64) as u64));
        PackedId {
            lo: a | b << 48,
            hi: (b >> 16) as u32,
        }
    }

    /// The id packed in `self`. Only ids of stored slots are unpacked, and
    /// those were packed from parsed ids.
    pub(crate) fn unpack(self) -> KeyId {
        let mut bytes = [0u8; KEY_ID_LEN];
        let all = u128::from(self.lo) | u128::from(self.hi) << 64;
        for (at, byte) in bytes.iter_mut().enumerate() {
            let code = ((all >> (6 * at)) & 63) as usize;
            *byte = CHAR_OF_CODE.get(code).copied().unwrap_or(b'0');
        }
        KeyId::from_static(&bytes)
    }

    /// Whether this is the empty slot's id.
    pub(crate) fn is_empty(self) -> bool {
        self == PackedId::EMPTY
    }
}

/// The first 96 bits of a digest, as the index keeps it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Digest96 {
    /// Bytes 0 to 7, little-endian.
    pub(crate) lo: u64,
    /// Bytes 8 to 11, little-endian.
    pub(crate) hi: u32,
}

impl Digest96 {
    /// The first 12 bytes of `digest`.
    #[inline(always)]
    pub(crate) fn of(digest: &SecretHash) -> Digest96 {
        let bytes = digest.as_bytes();
        let mut lo = [0u8; 8];
        let mut hi = [0u8; 4];
        lo.copy_from_slice(bytes.get(..8).unwrap_or(&[0; 8]));
        hi.copy_from_slice(bytes.get(8..12).unwrap_or(&[0; 4]));
        Digest96 {
            lo: u64::from_le_bytes(lo),
            hi: u32::from_le_bytes(hi),
        }
    }

    /// 0 if `self` and `other` are equal, else not 0, by arithmetic (no
    /// early exit).
    #[inline(always)]
    pub(crate) fn diff(self, other: Digest96) -> u64 {
        (self.lo ^ other.lo) | u64::from(self.hi ^ other.hi)
    }
}

/// [`Slot::grant`]: the scope bits (18).
const GRANT_SCOPES: u64 = (1 << 18) - 1;
/// [`Slot::grant`] bit: the key is restricted (else standard).
const GRANT_RESTRICTED: u64 = 1 << 18;
/// [`Slot::grant`] bit: the key expires at the time in [`GRANT_EXPIRY_SHIFT`]'s bits.
const GRANT_EXPIRES: u64 = 1 << 19;
/// [`Slot::grant`] bit: the key expires at a time the slot cannot hold (before
/// 1970, or after [`MAX_INLINE_EXPIRY`]); the index keeps it aside.
pub(crate) const GRANT_EXPIRES_FAR: u64 = 1 << 20;
/// Where the expiry's 43 bits start.
const GRANT_EXPIRY_SHIFT: u32 = 21;
/// The latest expiry a slot holds: 2^43 - 1 ms, in the year 2248.
pub(crate) const MAX_INLINE_EXPIRY: i64 = (1 << (64 - GRANT_EXPIRY_SHIFT)) - 1;

/// One key in 32 bytes: its id, 96 bits of its digest and its grant.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub(crate) struct Slot {
    /// [`PackedId::lo`].
    pub(crate) id_lo: u64,
    /// [`PackedId::hi`].
    pub(crate) id_hi: u32,
    /// [`Digest96::hi`].
    pub(crate) digest_hi: u32,
    /// [`Digest96::lo`].
    pub(crate) digest_lo: u64,
    /// [`Scopes::bits`] in the low 18 bits, [`GRANT_RESTRICTED`], then how
    /// the key expires ([`GRANT_EXPIRES`], [`GRANT_EXPIRES_FAR`]) and the
    /// expiry in milliseconds from [`GRANT_EXPIRY_SHIFT`] up.
    pub(crate) grant: u64,
}

impl Slot {
    /// The slot of a key, and its expiry if the slot cannot hold it.
    pub(crate) fn new(
        id: &KeyId,
        kind: KeyKind,
        scopes: Scopes,
        expires_at: Option<UnixMillis>,
        digest: &SecretHash,
    ) -> (Slot, Option<i64>) {
        let id = PackedId::of(id);
        let digest = Digest96::of(digest);
        let kind = match kind {
            KeyKind::Standard => 0,
            KeyKind::Restricted => GRANT_RESTRICTED,
        };
        let (expiry, far) = match expires_at.map(UnixMillis::as_millis) {
            None => (0, None),
            Some(ms @ 0..=MAX_INLINE_EXPIRY) => {
                (GRANT_EXPIRES | (ms as u64) << GRANT_EXPIRY_SHIFT, None)
            }
            Some(ms) => (GRANT_EXPIRES_FAR, Some(ms)),
        };
        let slot = Slot {
            id_lo: id.lo,
            id_hi: id.hi,
            digest_hi: digest.hi,
            digest_lo: digest.lo,
            grant: u64::from(scopes.bits()) | kind | expiry,
        };
        (slot, far)
    }

    /// The packed id; [`PackedId::EMPTY`] for an empty slot.
    #[inline(always)]
    pub(crate) fn id(&self) -> PackedId {
        PackedId {
            lo: self.id_lo,
            hi: self.id_hi,
        }
    }

    /// The digest's first 96 bits.
    #[inline(always)]
    pub(crate) fn digest(&self) -> Digest96 {
        Digest96 {
            lo: self.digest_lo,
            hi: self.digest_hi,
        }
    }

    /// All ones if the slot holds `id`, else 0, by arithmetic.
    #[inline(always)]
    pub(crate) fn holds(&self, id: PackedId) -> u64 {
        let diff = (self.id_lo ^ id.lo) | u64::from(self.id_hi ^ id.hi);
        ((diff | diff.wrapping_neg()) >> 63).wrapping_sub(1)
    }

    /// Standard or restricted.
    #[inline(always)]
    pub(crate) fn kind(&self) -> KeyKind {
        if self.grant & GRANT_RESTRICTED == 0 {
            KeyKind::Standard
        } else {
            KeyKind::Restricted
        }
    }

    /// The scopes.
    #[inline(always)]
    pub(crate) fn scopes(&self) -> Scopes {
        // Written from a `Scopes` by `Slot::new`; a bad pattern grants nothing.
        Scopes::from_bits((self.grant & GRANT_SCOPES) as u32).unwrap_or(Scopes::empty())
    }

    /// The expiry: `Ok(None)` never, `Ok(Some(_))` the slot's, `Err(())`
    /// kept aside by the index ([`GRANT_EXPIRES_FAR`]).
    #[inline(always)]
    pub(crate) fn expiry(&self) -> Result<Option<UnixMillis>, ()> {
        if self.grant & GRANT_EXPIRES_FAR != 0 {
            return Err(());
        }
        Ok((self.grant & GRANT_EXPIRES != 0)
            .then(|| UnixMillis::from_millis((self.grant >> GRANT_EXPIRY_SHIFT) as i64)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_core::SeedableRng;

    #[test]
    fn a_slot_is_32_bytes() {
        assert_eq!(core::mem::size_of::<Slot>(), 32);
    }

    #[test]
    fn ids_pack_and_unpack_exactly() {
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(1);
        for text in ["0000000000000000", "zzzzzzzzzzzzzzzz", "0123456789ABCDEF"] {
            let id = KeyId::parse(text).unwrap();
            assert_eq!(PackedId::of(&id).unpack(), id);
            assert!(!PackedId::of(&id).is_empty());
        }
        let mut seen = std::collections::HashSet::new();
        for _ in 0..10_000 {
            let id = KeyId::generate(&mut rng);
            let packed = PackedId::of(&id);
            assert_eq!(packed.unpack(), id);
            assert!(seen.insert((packed.lo, packed.hi)));
        }
    }

    #[test]
    fn the_codes_of_base62_are_distinct_and_not_zero() {
        let digits = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
        let mut seen = std::collections::HashSet::new();
        for &c in digits {
            let code = code(u64::from(c)) & 0xFF;
            assert!((1..64).contains(&code), "{c}: {code}");
            assert!(seen.insert(code), "{c}");
            assert_eq!(CHAR_OF_CODE[code as usize], c);
        }
        // Per byte: a word of eight characters codes as each alone.
        let word = u64::from_le_bytes(*b"0zA9aZ5q");
        for (at, &c) in b"0zA9aZ5q".iter().enumerate() {
            assert_eq!((code(word) >> (8 * at)) & 0xFF, code(u64::from(c)) & 0xFF);
        }
        // Any byte at all gets a code of 6 bits, without touching its
        // neighbours.
        for byte in 0..=255u8 {
            let x = u64::from_le_bytes([b'0', byte, b'z', 0, 0xFF, byte, b'A', 0x80]);
            let coded = code(x).to_le_bytes();
            assert_eq!(coded[0] as u64, code(u64::from(b'0')) & 0xFF);
            assert_eq!(coded[2] as u64, code(u64::from(b'z')) & 0xFF);
            assert_eq!(coded[6] as u64, code(u64::from(b'A')) & 0xFF);
            assert!(coded.iter().all(|&c| c < 64));
        }
    }

    #[test]
    fn every_character_has_its_own_bits() {
        // Changing one character of an id to another base62 character
        // changes its packed form.
        let base = *KeyId::parse("0123456789abcdef").unwrap().as_bytes();
        let packed = PackedId::of(&KeyId::from_static(&base));
        for at in 0..KEY_ID_LEN {
            for replacement in [b'0', b'9', b'A', b'Z', b'a', b'z'] {
                if base[at] == replacement {
                    continue;
                }
                let mut other = base;
                other[at] = replacement;
                assert_ne!(PackedId::of(&KeyId::from_static(&other)), packed, "{at}");
            }
        }
    }

    #[test]
    fn grants_round_trip() {
        let id = KeyId::parse("abcdefghijklmnop").unwrap();
        let digest = SecretHash::from_bytes([7; 32]);
        let scopes: Scopes = "objects:read,agents:write".parse().unwrap();
        for (expiry, far) in [
            (None, false),
            (Some(0), false),
            (Some(77), false),
            (Some(MAX_INLINE_EXPIRY), false),
            (Some(MAX_INLINE_EXPIRY + 1), true),
            (Some(-1), true),
            (Some(i64::MIN), true),
            (Some(i64::MAX), true),
        ] {
            let at = expiry.map(UnixMillis::from_millis);
            let (slot, aside) = Slot::new(&id, KeyKind::Restricted, scopes, at, &digest);
            assert_eq!(slot.kind(), KeyKind::Restricted);
            assert_eq!(slot.scopes(), scopes);
            assert_eq!(slot.id().unpack(), id);
            assert_eq!(slot.digest(), Digest96::of(&digest));
            if far {
                assert_eq!(slot.expiry(), Err(()));
                assert_eq!(aside, expiry);
            } else {
                assert_eq!(slot.expiry(), Ok(at));
                assert_eq!(aside, None);
            }
        }
        let (slot, _) = Slot::new(&id, KeyKind::Standard, Scopes::all(), None, &digest);
        assert_eq!(slot.kind(), KeyKind::Standard);
        assert_eq!(slot.scopes(), Scopes::all());
    }

    #[test]
    fn the_digest_keeps_its_first_twelve_bytes() {
        let mut bytes = [0u8; 32];
        for (at, b) in bytes.iter_mut().enumerate() {
            *b = at as u8 + 1;
        }
        let d = Digest96::of(&SecretHash::from_bytes(bytes));
        assert_eq!(d.lo, u64::from_le_bytes([1, 2, 3, 4, 5, 6, 7, 8]));
        assert_eq!(d.hi, u32::from_le_bytes([9, 10, 11, 12]));
        for byte in 0..12 {
            let mut other = bytes;
            other[byte] ^= 0x80;
            assert_ne!(d.diff(Digest96::of(&SecretHash::from_bytes(other))), 0);
        }
    }
}
