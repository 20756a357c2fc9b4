//! Secrets: the server-side pepper, the stored secret hash and owned tokens.
//!
//! # Hash construction
//!
//! ```text
//! key    = blake3::derive_key(PEPPER_CONTEXT, pepper)          (once, at Pepper::from_bytes)
//! digest = blake3::keyed_hash(key, kind_tag || key_id || secret)
//! seeds  = blake3::derive_key(INDEX_SEED_CONTEXT, key)           (the keyring's id hashes)
//! ```
//!
//! `kind_tag` is `a` or `r`, `key_id` the 16 id characters and `secret` the 43
//! secret characters: 60 bytes, one blake3 block. The fields have fixed
//! lengths, so the encoding is unambiguous. Binding the kind and the id means
//! that a digest copied to another record, or an `rk_` token relabelled as
//! `ak_`, does not verify. Deriving the key with a context string separates
//! this use of the pepper from any other.

use core::fmt;

use rand_core::CryptoRng;
use serde::{Deserialize, Serialize};
use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::token::{KeyId, KeyKind, Token, KEY_ID_LEN, PREFIX_LEN, SECRET_LEN, TOKEN_LEN};

/// The blake3 `derive_key` context that turns a pepper into the hashing key.
pub const PEPPER_CONTEXT: &str = "keygate 2026-11-26 v1 api-key secret digest";

/// The blake3 `derive_key` context of [`Pepper::fingerprint`].
pub const FINGERPRINT_CONTEXT: &str = "keygate 2026-11-29 v1 pepper fingerprint";

/// The blake3 `derive_key` context that turns the pepper's hashing key into
/// the seeds of a [`Keyring`](crate::Keyring)'s id hash.
pub(crate) const INDEX_SEED_CONTEXT: &str = "keygate 2026-11-29 v1 keyring id-hash seeds";

/// Length of a pepper, in bytes.
pub const PEPPER_LEN: usize = 32;

/// Length of the hashed message: kind tag, key id, secret.
const MESSAGE_LEN: usize = 1 + KEY_ID_LEN + SECRET_LEN;
// `Message::of_text`'s 16-byte moves cover the message exactly when the id
// is one move and the secret two to three.
const _: () = assert!(KEY_ID_LEN == 16 && SECRET_LEN > 32 && SECRET_LEN <= 48);

/// The server-side secret that keys every secret hash.
///
/// It is never stored beside the records: a leaked database without the
/// pepper gives an attacker nothing to test guesses against. The pepper
/// itself is not kept; only the key derived from it is, and that key is
/// zeroized on drop. `Debug` prints `Pepper(<redacted>)`.
///
/// ```
/// use keygate::Pepper;
/// let pepper = Pepper::from_bytes(&[7u8; 32]);
/// assert_eq!(format!("{pepper:?}"), "Pepper(<redacted>)");
/// ```
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct Pepper {
    key: [u8; 32],
}

impl Pepper {
    /// Derives the hashing key from 32 pepper bytes. Zeroize your copy of the
    /// bytes once the pepper is built.
    ///
    /// ```
    /// let pepper = keygate::Pepper::from_bytes(&[1u8; 32]);
    /// # let _ = pepper;
    /// ```
    pub fn from_bytes(bytes: &[u8; PEPPER_LEN]) -> Pepper {
        Pepper {
            key: blake3::derive_key(PEPPER_CONTEXT, bytes),
        }
    }

    /// Draws a new pepper from a CSPRNG. Store its bytes with
    /// [`Pepper::generate_bytes`] instead if you need to persist it.
    ///
    /// ```
    /// use rand_core::SeedableRng;
    /// let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(1);
    /// let pepper = keygate::Pepper::generate(&mut rng);
    /// # let _ = pepper;
    /// ```
    pub fn generate<R: CryptoRng + ?Sized>(rng: &mut R) -> Pepper {
        Pepper::from_bytes(&Pepper::generate_bytes(rng))
    }

    /// Draws 32 fresh pepper bytes, for a caller that persists them. They
    /// are zeroized when dropped, on every path.
    ///
    /// ```
    /// use rand_core::SeedableRng;
    /// let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(1);
    /// let bytes: zeroize::Zeroizing<[u8; 32]> = keygate::Pepper::generate_bytes(&mut rng);
    /// let pepper = keygate::Pepper::from_bytes(&bytes);
    /// # let _ = pepper;
    /// ```
    pub fn generate_bytes<R: CryptoRng + ?Sized>(
        rng: &mut R,
    ) -> zeroize::Zeroizing<[u8; PEPPER_LEN]> {
        let mut bytes = zeroize::Zeroizing::new([0u8; PEPPER_LEN]);
        rng.fill_bytes(bytes.as_mut_slice());
        bytes
    }

    /// The seeds of the keyring's id hashes (two for the map, two for the
    /// digest index): secret and random, like the pepper, and independent of
    /// the digests (another `derive_key` context).
    pub(crate) fn index_seeds(&self) -> [u64; 4] {
        let seed = zeroize::Zeroizing::new(blake3::derive_key(INDEX_SEED_CONTEXT, &self.key));
        let mut words = [0u64; 4];
        for (word, chunk) in words.iter_mut().zip(seed.chunks_exact(8)) {
            let mut bytes = [0u8; 8];
            bytes.copy_from_slice(chunk);
            *word = u64::from_le_bytes(bytes);
        }
        words
    }

    /// The digest of a token's kind, id and secret.
    #[inline]
    pub(crate) fn digest_parts(
        &self,
        kind: KeyKind,
        id: &KeyId,
        secret: &[u8; SECRET_LEN],
    ) -> SecretHash {
        self.digest_raw(kind.tag(), id.as_bytes(), secret)
    }

    /// The digest of a [`Message`].
    #[inline(always)]
    pub(crate) fn digest_message(&self, message: &Message) -> SecretHash {
        SecretHash(blake3::keyed_hash(&self.key, &message.0))
    }

    #[inline(always)]
    fn digest_raw(&self, tag: u8, id: &[u8; KEY_ID_LEN], secret: &[u8; SECRET_LEN]) -> SecretHash {
        self.digest_message(&Message::new(tag, id, secret))
    }

    /// A public value that tells peppers apart without revealing them: a
    /// store keeps it beside the records, and a server started with another
    /// pepper file refuses to start instead of answering 401 to every key.
    ///
    /// It is `derive_key(FINGERPRINT_CONTEXT, hashing key)`, its own domain:
    /// it tests no guess at a secret and gives no digest.
    ///
    /// ```
    /// let a = keygate::Pepper::from_bytes(&[1u8; 32]);
    /// let b = keygate::Pepper::from_bytes(&[2u8; 32]);
    /// assert_eq!(a.fingerprint(), keygate::Pepper::from_bytes(&[1u8; 32]).fingerprint());
    /// assert_ne!(a.fingerprint(), b.fingerprint());
    /// ```
    pub fn fingerprint(&self) -> [u8; 32] {
        blake3::derive_key(FINGERPRINT_CONTEXT, &self.key)
    }

    /// The digest a record stores for `token`.
    ///
    /// ```
    /// # let text = keygate::testing::example_token();
    /// let pepper = keygate::Pepper::from_bytes(&[9u8; 32]);
    /// let token = keygate::Token::parse(&text)?;
    /// assert_eq!(pepper.digest(&token), pepper.digest(&token));
    /// # Ok::<(), keygate::TokenError>(())
    /// ```
    #[inline]
    pub fn digest(&self, token: &Token<'_>) -> SecretHash {
        self.digest_parts(token.kind(), &token.key_id(), token.secret())
    }
}

/// The hashed message (kind tag, key id, secret): secret, so zeroized on
/// drop.
pub(crate) struct Message([u8; MESSAGE_LEN]);

impl Message {
    #[inline(always)]
    fn new(tag: u8, id: &[u8; KEY_ID_LEN], secret: &[u8; SECRET_LEN]) -> Message {
        let mut message = [0u8; MESSAGE_LEN];
        let (tag_part, rest) = message.split_at_mut(1);
        let (id_part, secret_part) = rest.split_at_mut(KEY_ID_LEN);
        if let Some(t) = tag_part.first_mut() {
            *t = tag;
        }
        id_part.copy_from_slice(id);
        secret_part.copy_from_slice(secret);
        Message(message)
    }

    /// The message of a token text that is not parsed yet: the tag is the
    /// prefix's first byte (`a` or `r`, as [`KeyKind`]'s tag), the id bytes
    /// 3 to 19, the secret bytes 20 to 63. Meaningful only once the text
    /// parses; it lets the hash start before the parse (see
    /// `Keyring::authenticate`).
    #[inline(always)]
    pub(crate) fn of_text(text: &[u8; TOKEN_LEN]) -> Message {
        // Four overlapping 16-byte moves, not two copies (why: BENCHMARKS.md,
        // "Why the hot path looks as it does").
        const SECRET_AT: usize = PREFIX_LEN + KEY_ID_LEN + 1;
        let mut message = [0u8; MESSAGE_LEN];
        if let Some(t) = message.first_mut() {
            *t = text.first().copied().unwrap_or(0);
        }
        move16(&mut message, 1, text, PREFIX_LEN);
        move16(&mut message, 1 + KEY_ID_LEN, text, SECRET_AT);
        move16(&mut message, 1 + KEY_ID_LEN + 16, text, SECRET_AT + 16);
        move16(
            &mut message,
            MESSAGE_LEN - 16,
            text,
            SECRET_AT + SECRET_LEN - 16,
        );
        Message(message)
    }
}

/// Copies the 16 bytes of `from` at `src` to `to` at `dst`; out of range
/// (never, for the constant offsets above) it copies nothing.
#[inline(always)]
fn move16(to: &mut [u8], dst: usize, from: &[u8], src: usize) {
    let chunk = from.get(src..).and_then(|rest| rest.first_chunk::<16>());
    let slot = to
        .get_mut(dst..)
        .and_then(|rest| rest.first_chunk_mut::<16>());
    if let (Some(chunk), Some(slot)) = (chunk, slot) {
        *slot = *chunk;
    }
}

impl Drop for Message {
    #[inline(always)]
    fn drop(&mut self) {
        // As a slice: with zeroize 1.9, one bulk fill behind an optimization
        // barrier, rather than the array impl's 60 single-byte volatile writes.
        self.0.as_mut_slice().zeroize();
    }
}

impl fmt::Debug for Pepper {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Pepper(<redacted>)")
    }
}

/// The stored blake3 digest of a token's secret (see the module docs).
///
/// Equality is constant-time (it is `blake3::Hash` equality). It serializes
/// as 64 lowercase hex characters; it is safe to store, but only useful
/// together with the pepper.
///
/// ```
/// # let text = keygate::testing::example_token();
/// let pepper = keygate::Pepper::from_bytes(&[9u8; 32]);
/// let digest = pepper.digest(&keygate::Token::parse(&text)?);
/// let json = serde_json::to_string(&digest)?;
/// assert_eq!(json.len(), 66);
/// assert_eq!(serde_json::from_str::<keygate::SecretHash>(&json)?, digest);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct SecretHash(blake3::Hash);

impl SecretHash {
    /// The digest's 32 bytes.
    ///
    /// Comparing these with `==` is not constant-time; compare `SecretHash`
    /// values instead.
    pub fn as_bytes(&self) -> &[u8; 32] {
        self.0.as_bytes()
    }

    /// Rebuilds a digest from bytes, e.g. a store's BLOB column.
    ///
    /// ```
    /// let h = keygate::SecretHash::from_bytes([1u8; 32]);
    /// assert_eq!(h, keygate::SecretHash::from_bytes(*h.as_bytes()));
    /// ```
    pub fn from_bytes(bytes: [u8; 32]) -> SecretHash {
        SecretHash(blake3::Hash::from_bytes(bytes))
    }
}

impl fmt::Debug for SecretHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let hex = self.0.to_hex();
        write!(f, "SecretHash({}…)", hex.get(..8).unwrap_or_default())
    }
}

impl Serialize for SecretHash {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.0.to_hex().as_str())
    }
}

impl<'de> Deserialize<'de> for SecretHash {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = SecretHash;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("64 hex characters")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<SecretHash, E> {
                blake3::Hash::from_hex(v)
                    .map(SecretHash)
                    .map_err(|_| E::custom("secret hash is not 64 hex characters"))
            }
        }
        deserializer.deserialize_str(Visitor)
    }
}

/// OS entropy: the operating system's CSPRNG, for [`mint`](fn@crate::mint) and
/// [`Pepper::generate`]. Requires the `std` feature.
///
/// ```
/// let mut rng = keygate::os_entropy();
/// let pepper = keygate::Pepper::generate(&mut rng);
/// # let _ = pepper;
/// ```
#[cfg(feature = "std")]
pub type OsEntropy = rand_core::UnwrapErr<rand_core::OsRng>;

/// The operating system's CSPRNG (see [`OsEntropy`]).
///
/// ```
/// let mut rng = keygate::os_entropy();
/// # let _ = &mut rng;
/// ```
#[cfg(feature = "std")]
pub fn os_entropy() -> OsEntropy {
    rand_core::UnwrapErr(rand_core::OsRng)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::example_token;
    use crate::token::SecretToken;

    #[test]
    fn digest_binds_kind_and_id() {
        let pepper = Pepper::from_bytes(&[3u8; 32]);
        let text = example_token();
        let token = Token::parse(&text).unwrap();
        let base = pepper.digest(&token);
        let relabelled = pepper.digest_parts(KeyKind::Standard, &token.key_id(), token.secret());
        assert_ne!(base, relabelled);
        let other_id = KeyId::parse("0000000000000000").unwrap();
        assert_ne!(
            base,
            pepper.digest_parts(token.kind(), &other_id, token.secret())
        );
        let other_pepper = Pepper::from_bytes(&[4u8; 32]);
        assert_ne!(base, other_pepper.digest(&token));
    }

    #[test]
    fn digest_is_the_documented_construction() {
        let pepper_bytes = [5u8; 32];
        let pepper = Pepper::from_bytes(&pepper_bytes);
        let text = example_token();
        let token = Token::parse(&text).unwrap();
        let key = blake3::derive_key(PEPPER_CONTEXT, &pepper_bytes);
        let mut message = alloc::vec![b'r'];
        message.extend_from_slice(&text.as_bytes()[3..19]);
        message.extend_from_slice(&text.as_bytes()[20..63]);
        assert_eq!(message.len(), 60);
        assert_eq!(pepper.digest(&token).0, blake3::keyed_hash(&key, &message));
    }

    #[test]
    fn digest_of_the_text_is_the_digest_of_the_parsed_token() {
        let pepper = Pepper::from_bytes(&[6u8; 32]);
        let text = example_token();
        let bytes: &[u8; TOKEN_LEN] = text.as_bytes().try_into().unwrap();
        let token = Token::parse(&text).unwrap();
        assert_eq!(
            pepper.digest_message(&Message::of_text(bytes)),
            pepper.digest(&token)
        );
        let standard = SecretToken::assemble(KeyKind::Standard, &token.key_id(), token.secret());
        let bytes: &[u8; TOKEN_LEN] = standard.expose_secret().as_bytes().try_into().unwrap();
        assert_eq!(
            pepper.digest_message(&Message::of_text(bytes)),
            pepper.digest_parts(KeyKind::Standard, &token.key_id(), token.secret())
        );
    }

    #[test]
    fn secret_hash_hex_rejects_garbage() {
        assert!(serde_json::from_str::<SecretHash>("\"zz\"").is_err());
    }

    #[test]
    fn redaction() {
        let t = SecretToken::new(example_token());
        assert_eq!(alloc::format!("{t}"), "<redacted>");
        assert!(!alloc::format!("{:?}", Pepper::from_bytes(&[0; 32])).contains('0'));
    }
}
