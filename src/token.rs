//! The token format: `ak_`/`rk_` prefix, public key id, secret, CRC32.
//!
//! ```text
//! rk_4GZ6bQvR9cXw2LmT_Yq3...(43 secret chars)...0aZ9kP
//! └┬┘└──────┬───────┘│└────────── secret ──────────┘└crc─┘
//! kind   key id (16) '_'        43 chars            6 chars
//! ```
//!
//! * 69 ASCII characters, all in `[A-Za-z0-9_]`, so a double-click selects
//!   the whole token. The length is fixed for format version 1; a later
//!   version will have another length.
//! * The key id is 16 base62 characters (95 bits) drawn from a CSPRNG. It is
//!   public: it is the `id` of the created views and the lookup key of a
//!   [`Keyring`](crate::Keyring).
//! * The secret is 43 base62 characters drawn uniformly from a CSPRNG:
//!   43 · log2(62) ≈ 256.03 bits.
//! * The checksum is the CRC32 (IEEE) of the first 63 characters, in 6 base62
//!   digits, most significant first. It lets [`Token::parse`] reject typos,
//!   truncation and extension without a store lookup.
//!
//! Secret scanners can match tokens with
//! `\b(?:ak|rk)_[0-9A-Za-z]{16}_[0-9A-Za-z]{49}\b` and then verify the checksum.

use core::fmt;

use rand_core::CryptoRng;
use serde::{Deserialize, Serialize};
use zeroize::{Zeroize, ZeroizeOnDrop};

use alloc::string::String;

/// The longest user input an error message quotes, in characters.
const QUOTE_MAX: usize = 64;

/// Copies user input for an error message: first redacted
/// ([`redact_tokens`](crate::redact_tokens): no token secret, whole or in
/// part, survives), then cut at [`QUOTE_MAX`] characters. Redacting first
/// means a cut cannot leave secret characters that the redaction, seeing
/// only a fragment, would have missed.
pub(crate) fn quote(input: &str) -> String {
    let input = crate::token::redact_tokens(input);
    let input: &str = &input;
    match input.char_indices().nth(QUOTE_MAX) {
        Some((end, _)) => {
            let mut s = String::from(input.get(..end).unwrap_or_default());
            s.push('…');
            s
        }
        None => String::from(input),
    }
}

/// A token that is not a well-formed keygate token. Parsing alone finds
/// these, before any store lookup. No variant carries token bytes.
///
/// ```
/// let err = keygate::Token::parse("ak_123").unwrap_err();
/// assert_eq!(err.to_string(), "token is 6 bytes long, expected 69");
/// assert_eq!(err.http_status(), 401);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TokenError {
    /// The token does not have the fixed length.
    #[error("token is {len} bytes long, expected {TOKEN_LEN}")]
    Length {
        /// The length that was presented.
        len: usize,
    },
    /// The token starts with neither `ak_` nor `rk_`.
    #[error("token does not start with `ak_` or `rk_`")]
    Prefix,
    /// The `_` between key id and secret is missing.
    #[error("token lacks the `_` after its 16-character key id")]
    Separator,
    /// A byte outside `[A-Za-z0-9]` where the format wants one.
    #[error("token has a byte outside [A-Za-z0-9] at position {position}")]
    Character {
        /// Zero-based offset of the first bad byte.
        position: usize,
    },
    /// The CRC32 does not match: a typo, or not a keygate token.
    #[error("token checksum does not match")]
    Checksum,
    /// A key id that is not 16 characters long.
    #[error("key id is {len} bytes long, expected 16")]
    KeyIdLength {
        /// The length that was presented.
        len: usize,
    },
}

impl TokenError {
    /// Always 401: a malformed credential.
    ///
    /// ```
    /// assert_eq!(keygate::TokenError::Checksum.http_status(), 401);
    /// ```
    pub const fn http_status(&self) -> u16 {
        401
    }
}

/// Length of a version-1 token, in bytes.
pub const TOKEN_LEN: usize = 69;
/// Length of the kind prefix (`ak_` or `rk_`).
pub const PREFIX_LEN: usize = 3;
/// Length of a key id.
pub const KEY_ID_LEN: usize = 16;
/// Length of the secret part.
pub const SECRET_LEN: usize = 43;
/// Length of the base62 checksum.
pub const CHECKSUM_LEN: usize = 6;
/// Offset of the `_` between the key id and the secret.
const SEPARATOR_AT: usize = PREFIX_LEN + KEY_ID_LEN;
/// Number of leading bytes covered by the checksum.
const CHECKED_LEN: usize = TOKEN_LEN - CHECKSUM_LEN;

// The layout, checked when the crate compiles (a wrong constant is a build
// error): the parts add up to the token; 6 base62 digits hold every CRC32
// (62^6 > 2^32); 43 base62 digits carry more than 256 bits (43 · log2 62 >
// 256, in fixed point with log2 62 rounded down to 5.954196310; the unit
// test `secret_entropy_fixed_point_bound_is_sound` checks the rounding).
const _: () = assert!(PREFIX_LEN + KEY_ID_LEN + 1 + SECRET_LEN + CHECKSUM_LEN == TOKEN_LEN);
const _: () = assert!(62u64.pow(CHECKSUM_LEN as u32) > u32::MAX as u64);
const _: () = assert!(SECRET_LEN as u64 * 5_954_196_310 > 256 * 1_000_000_000);

/// An owned token text, such as a freshly minted key's `key_secret`.
///
/// `Debug` and `Display` are redacted, the text is zeroized on drop, and the
/// type does not implement `Serialize`: reading it takes an explicit
/// [`SecretToken::expose_secret`]. It does implement `Deserialize`, for
/// clients that read a created view. It has no `PartialEq`, so nobody compares
/// secrets with a short-circuiting `==`: verify tokens with a
/// [`Keyring`](crate::Keyring), which compares digests in constant time.
///
/// ```
/// # let text = keygate::testing::example_token();
/// let token = keygate::SecretToken::new(text.clone());
/// assert_eq!(format!("{token:?}"), "SecretToken(<redacted>)");
/// assert_eq!(token.expose_secret(), text);
/// ```
#[derive(Clone, Zeroize, ZeroizeOnDrop, Deserialize)]
#[serde(transparent)]
pub struct SecretToken(String);

impl SecretToken {
    /// Wraps token text.
    ///
    /// ```
    /// let t = keygate::SecretToken::new("rk_...".into());
    /// # let _ = t;
    /// ```
    pub fn new(text: String) -> SecretToken {
        SecretToken(text)
    }

    /// The token text. Don't log it.
    pub fn expose_secret(&self) -> &str {
        &self.0
    }

    /// Parses the text as a [`Token`].
    ///
    /// ```
    /// # let text = keygate::testing::example_token();
    /// let t = keygate::SecretToken::new(text);
    /// assert_eq!(t.parse()?.kind(), keygate::KeyKind::Restricted);
    /// # Ok::<(), keygate::TokenError>(())
    /// ```
    pub fn parse(&self) -> Result<Token<'_>, TokenError> {
        Token::parse(&self.0)
    }

    /// Lays out a token from its parts and appends the checksum.
    pub(crate) fn assemble(kind: KeyKind, id: &KeyId, secret: &[u8; SECRET_LEN]) -> SecretToken {
        let mut buf = [0u8; TOKEN_LEN];
        let (body, checksum) = buf.split_at_mut(TOKEN_LEN - CHECKSUM_LEN);
        let (prefix, rest) = body.split_at_mut(3);
        prefix.copy_from_slice(kind.prefix().as_bytes());
        let (id_part, rest) = rest.split_at_mut(KEY_ID_LEN);
        id_part.copy_from_slice(id.as_bytes());
        let (sep, secret_part) = rest.split_at_mut(1);
        sep.copy_from_slice(b"_");
        secret_part.copy_from_slice(secret);
        if let Ok(checksum) = <&mut [u8; CHECKSUM_LEN]>::try_from(checksum) {
            write_checksum(body, checksum);
        }
        let mut text = String::with_capacity(TOKEN_LEN);
        // Every byte written above is ASCII.
        text.extend(buf.iter().map(|&b| char::from(b)));
        buf.zeroize();
        SecretToken(text)
    }
}

impl fmt::Debug for SecretToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretToken(<redacted>)")
    }
}

impl fmt::Display for SecretToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// The regular expression that matches a version-1 token, for secret scanners.
///
/// ```
/// assert!(keygate::TOKEN_REGEX.contains("{49}"));
/// ```
pub const TOKEN_REGEX: &str = r"\b(?:ak|rk)_[0-9A-Za-z]{16}_[0-9A-Za-z]{49}\b";

const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// Value of a base62 digit, or 0xFF for any other byte.
// Evaluated at compile time: an out-of-range index is a build error.
#[allow(clippy::indexing_slicing)]
const BASE62_VALUE: [u8; 256] = {
    let mut table = [0xFFu8; 256];
    let mut i = 0;
    while i < 62 {
        table[BASE62[i] as usize] = i as u8;
        i += 1;
    }
    table
};

#[inline(always)]
fn base62_value(byte: u8) -> u8 {
    // A u8 always indexes a 256-entry table; `get` keeps clippy's rule uniform.
    BASE62_VALUE.get(usize::from(byte)).copied().unwrap_or(0xFF)
}

/// The base62 digit of `value` (`0` for a value past 61).
#[cfg(any(test, feature = "testing"))]
pub(crate) fn base62_digit(value: u8) -> u8 {
    BASE62.get(usize::from(value)).copied().unwrap_or(b'0')
}

/// Whether `byte` is a base62 digit, by arithmetic rather than a table, so
/// that [`all_base62`] compiles to a few SIMD compares.
#[inline(always)]
const fn is_base62(byte: u8) -> bool {
    // `| 0x20` folds `A-Z` onto `a-z`; no other byte lands in `a-z`.
    // Non-short-circuit `|` keeps the loop below branch-free.
    (byte.wrapping_sub(b'0') < 10) | ((byte | 0x20).wrapping_sub(b'a') < 26)
}

/// Whether every byte of `bytes` is a base62 digit. It looks at every byte,
/// with no early exit, so LLVM vectorizes it.
#[inline(always)]
fn all_base62<const N: usize>(bytes: &[u8; N]) -> bool {
    bytes.iter().fold(true, |ok, &b| ok & is_base62(b))
}

/// The two kinds of key.
///
/// ```
/// use keygate::KeyKind;
/// assert_eq!(KeyKind::Standard.prefix(), "ak_");
/// assert_eq!(KeyKind::Restricted.prefix(), "rk_");
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyKind {
    /// A standard key (`ak_`): may do everything.
    Standard,
    /// A restricted key (`rk_`): may do what its scopes grant.
    Restricted,
}

impl KeyKind {
    /// The token prefix, underscore included.
    ///
    /// ```
    /// assert_eq!(keygate::KeyKind::Standard.prefix(), "ak_");
    /// ```
    pub const fn prefix(self) -> &'static str {
        match self {
            KeyKind::Standard => "ak_",
            KeyKind::Restricted => "rk_",
        }
    }

    /// The kind whose tag is `tag`: `r` is restricted, any other byte
    /// standard (only a text whose framing is valid counts).
    #[inline(always)]
    pub(crate) const fn of_tag(tag: u8) -> KeyKind {
        if tag == b'r' {
            KeyKind::Restricted
        } else {
            KeyKind::Standard
        }
    }

    /// A one-byte tag that binds the kind into the secret hash.
    pub(crate) const fn tag(self) -> u8 {
        match self {
            KeyKind::Standard => b'a',
            KeyKind::Restricted => b'r',
        }
    }

    /// The lowercase name (`standard` or `restricted`).
    ///
    /// ```
    /// assert_eq!(keygate::KeyKind::Restricted.as_str(), "restricted");
    /// ```
    pub const fn as_str(self) -> &'static str {
        match self {
            KeyKind::Standard => "standard",
            KeyKind::Restricted => "restricted",
        }
    }
}

impl fmt::Display for KeyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A public key id: 16 base62 characters.
///
/// It is `Copy` and needs no allocation, so a [`Keyring`](crate::Keyring)
/// lookup by id costs one hash of 16 bytes.
///
/// ```
/// use keygate::KeyId;
/// let id = KeyId::parse("4GZ6bQvR9cXw2LmT")?;
/// assert_eq!(id.as_str(), "4GZ6bQvR9cXw2LmT");
/// assert!(KeyId::parse("too-short").is_err());
/// # Ok::<(), keygate::TokenError>(())
/// ```
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct KeyId([u8; KEY_ID_LEN]);

impl KeyId {
    /// Parses a key id: exactly 16 characters of `[0-9A-Za-z]`.
    ///
    /// ```
    /// assert!(keygate::KeyId::parse("0000000000000000").is_ok());
    /// ```
    pub fn parse(text: &str) -> Result<KeyId, TokenError> {
        let bytes: &[u8; KEY_ID_LEN] = text
            .as_bytes()
            .try_into()
            .map_err(|_| TokenError::KeyIdLength { len: text.len() })?;
        if let Some(at) = bytes.iter().position(|&b| base62_value(b) == 0xFF) {
            return Err(TokenError::Character { position: at });
        }
        Ok(KeyId(*bytes))
    }

    /// The id as text.
    ///
    /// ```
    /// let id = keygate::KeyId::parse("abcdefghijklmnop")?;
    /// assert_eq!(id.as_str(), "abcdefghijklmnop");
    /// # Ok::<(), keygate::TokenError>(())
    /// ```
    pub fn as_str(&self) -> &str {
        // Only base62 ASCII is ever stored.
        core::str::from_utf8(&self.0).unwrap_or_default()
    }

    /// The id's bytes, as they are bound into the secret hash.
    pub(crate) fn as_bytes(&self) -> &[u8; KEY_ID_LEN] {
        &self.0
    }

    /// Draws a fresh id from `rng`.
    pub(crate) fn generate<R: CryptoRng + ?Sized>(rng: &mut R) -> KeyId {
        let mut id = [0u8; KEY_ID_LEN];
        fill_base62(rng, &mut id);
        KeyId(id)
    }
}

/// Hashes the 16 bytes as one `u128`: a single write for the keyring's hasher.
impl core::hash::Hash for KeyId {
    #[inline]
    fn hash<H: core::hash::Hasher>(&self, state: &mut H) {
        state.write_u128(u128::from_le_bytes(self.0));
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyId({})", self.as_str())
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl core::str::FromStr for KeyId {
    type Err = TokenError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        KeyId::parse(s)
    }
}

impl Serialize for KeyId {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for KeyId {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = KeyId;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a 16-character base62 key id")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<KeyId, E> {
                KeyId::parse(v).map_err(E::custom)
            }
        }
        deserializer.deserialize_str(Visitor)
    }
}

/// A parsed token, borrowed from the caller's buffer.
///
/// Parsing checks the layout and the checksum, never panics and never
/// allocates. It has no `PartialEq`, since that would compare secrets in
/// variable time. It says nothing about whether the key exists: that is
/// [`Keyring::verify`](crate::Keyring::verify)'s job. `Debug` and `Display`
/// show the kind and id, never the secret.
///
/// ```
/// use keygate::{KeyKind, Token, TokenError};
/// # let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(7);
/// # use rand_core::SeedableRng;
/// # let pepper = keygate::Pepper::generate(&mut rng);
/// # let req = keygate::MintRequest::standard(None, None, keygate::UnixMillis::from_millis(0))?;
/// # let minted = keygate::mint(&pepper, &req, &mut rng, keygate::UnixMillis::from_millis(0));
/// # let text = minted.token().expose_secret();
/// let token = Token::parse(text)?;
/// assert_eq!(token.kind(), KeyKind::Standard);
/// assert!(!format!("{token:?}").contains(&text[20..]));
/// assert_eq!(Token::parse("ak_short").err(), Some(TokenError::Length { len: 8 }));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Copy)]
pub struct Token<'a> {
    kind: KeyKind,
    id: KeyId,
    secret: &'a [u8; SECRET_LEN],
}

impl<'a> Token<'a> {
    /// Parses a token from text or bytes (such as an HTTP header value).
    ///
    /// The checks run in this order: length, prefix, separator, alphabet,
    /// checksum. The first that fails is the error.
    ///
    /// ```
    /// use keygate::{Token, TokenError};
    /// assert!(Token::parse("rk_nope").is_err());
    /// assert_eq!(Token::parse(&[b'x'; 69]).err(), Some(TokenError::Prefix));
    /// ```
    #[inline]
    pub fn parse<T: AsRef<[u8]> + ?Sized>(text: &'a T) -> Result<Token<'a>, TokenError> {
        Token::parse_bytes(text.as_ref())
    }

    fn parse_bytes(bytes: &'a [u8]) -> Result<Token<'a>, TokenError> {
        let all: &[u8; TOKEN_LEN] = bytes
            .try_into()
            .map_err(|_| TokenError::Length { len: bytes.len() })?;
        let (prefix, rest) = all
            .split_first_chunk::<PREFIX_LEN>()
            .ok_or(TokenError::Prefix)?;
        let kind = match prefix {
            b"ak_" => KeyKind::Standard,
            b"rk_" => KeyKind::Restricted,
            _ => return Err(TokenError::Prefix),
        };
        let (id, rest) = rest
            .split_first_chunk::<KEY_ID_LEN>()
            .ok_or(TokenError::Prefix)?;
        let (sep, rest) = rest.split_first().ok_or(TokenError::Separator)?;
        if *sep != b'_' {
            return Err(TokenError::Separator);
        }
        let (secret, checksum) = rest
            .split_first_chunk::<SECRET_LEN>()
            .ok_or(TokenError::Separator)?;
        let tail = rest
            .first_chunk::<{ SECRET_LEN + CHECKSUM_LEN }>()
            .ok_or(TokenError::Separator)?;

        // Alphabet: two fixed-length, branch-free scans (they vectorize).
        if !(all_base62(id) & all_base62(tail)) {
            return Err(TokenError::Character {
                position: first_bad_position(all),
            });
        }

        let expected = checksum
            .first_chunk::<CHECKSUM_LEN>()
            .map_or(u64::MAX, checksum_value);
        let checked = all
            .first_chunk::<CHECKED_LEN>()
            .ok_or(TokenError::Checksum)?;
        if expected != u64::from(crc32(checked)) {
            return Err(TokenError::Checksum);
        }
        Ok(Token {
            kind,
            id: KeyId(*id),
            secret,
        })
    }

    /// The kind named by the prefix.
    #[inline]
    pub fn kind(&self) -> KeyKind {
        self.kind
    }

    /// The public key id, for a store lookup.
    #[inline]
    pub fn key_id(&self) -> KeyId {
        self.id
    }

    /// The secret characters. Handle with care: never log them.
    #[inline]
    pub(crate) fn secret(&self) -> &'a [u8; SECRET_LEN] {
        self.secret
    }

    /// Formats the token back into its text, as an owned, zeroizing
    /// [`SecretToken`]. For a parsed token this is the parsed text.
    ///
    /// ```
    /// # let t = keygate::testing::example_token();
    /// let token = keygate::Token::parse(&t)?;
    /// assert_eq!(token.to_secret_token().expose_secret(), t);
    /// # Ok::<(), keygate::TokenError>(())
    /// ```
    pub fn to_secret_token(&self) -> SecretToken {
        SecretToken::assemble(self.kind, &self.id, self.secret)
    }
}

impl fmt::Debug for Token<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Token")
            .field("kind", &self.kind)
            .field("id", &self.id)
            .field("secret", &"<redacted>")
            .finish()
    }
}

/// Shows `rk_<id>_<redacted>`: safe to log.
impl fmt::Display for Token<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}_<redacted>", self.kind.prefix(), self.id)
    }
}

/// The parts of a token text that its digest does not bind: whether the
/// prefix reads `ak_` or `rk_`, the separator is `_`, and the checksum is six
/// base62 digits that match the text. Only for a text whose tag, id and
/// secret a stored digest has just matched: those are then the minted ones
/// (base62, as a parse requires), so this and the digest together give
/// [`Token::parse`]'s verdict without its alphabet scans. Any other
/// text goes through the parse, for the exact error.
#[inline(always)]
pub(crate) fn framing_is_valid(text: &[u8; TOKEN_LEN]) -> bool {
    let prefix_ok = matches!(text.first_chunk::<PREFIX_LEN>(), Some(b"ak_" | b"rk_"));
    let separator_ok = text.get(SEPARATOR_AT) == Some(&b'_');
    let Some((checked, checksum)) = text.split_first_chunk::<CHECKED_LEN>() else {
        return false;
    };
    let Some(checksum) = checksum.first_chunk::<CHECKSUM_LEN>() else {
        return false;
    };
    prefix_ok & separator_ok & all_base62(checksum)
        && checksum_value(checksum) == u64::from(crc32(checked))
}

/// The number the six base62 `digits` spell, most significant first. The
/// digits are weighted independently rather than by Horner's rule, so the
/// multiplies don't wait on each other; six digits below 62 sum to less
/// than 62^6 < 2^36: no overflow.
#[inline(always)]
fn checksum_value(digits: &[u8; CHECKSUM_LEN]) -> u64 {
    let mut value = 0u64;
    let mut weight = 1u64;
    for &b in digits.iter().rev() {
        value += u64::from(base62_value(b)) * weight;
        weight *= 62;
    }
    value
}

/// The key id of a token text, unchecked: bytes 3 to 19. It keys the index
/// lookup of a text that is not parsed yet; it names a principal only once
/// the digest matched and [`framing_is_valid`].
#[inline(always)]
pub(crate) fn key_id_of_text(text: &[u8; TOKEN_LEN]) -> KeyId {
    KeyId(
        text.get(PREFIX_LEN..)
            .and_then(|rest| rest.first_chunk::<KEY_ID_LEN>())
            .copied()
            .unwrap_or([b'0'; KEY_ID_LEN]),
    )
}

/// Position of the first byte outside the token alphabet (cold path).
#[cold]
fn first_bad_position(all: &[u8; TOKEN_LEN]) -> usize {
    all.iter()
        .enumerate()
        .skip(PREFIX_LEN)
        .find(|&(i, &b)| i != SEPARATOR_AT && base62_value(b) == 0xFF)
        .map_or(0, |(i, _)| i)
}

/// Fills `out` with base62 characters drawn uniformly from `rng`, by
/// rejection sampling: bytes 248..=255 are dropped, so `b % 62` is uniform.
pub(crate) fn fill_base62<R: CryptoRng + ?Sized>(rng: &mut R, out: &mut [u8]) {
    let mut pool = [0u8; 64];
    let mut filled = 0;
    while filled < out.len() {
        rng.fill_bytes(&mut pool);
        for &b in pool.iter().filter(|&&b| b < 248) {
            if let Some(slot) = out.get_mut(filled) {
                *slot = BASE62.get(usize::from(b % 62)).copied().unwrap_or(b'0');
                filled += 1;
            }
        }
    }
    zeroize::Zeroize::zeroize(&mut pool);
}

/// The CRC32 (IEEE) of `bytes`. With `std`, crc32fast detects the CPU's
/// features once, not on every call (its `hash` does, for 40-odd
/// instructions, a seventh of a parse).
#[inline(always)]
fn crc32(bytes: &[u8]) -> u32 {
    #[cfg(feature = "std")]
    {
        static DETECTED: std::sync::OnceLock<crc32fast::Hasher> = std::sync::OnceLock::new();
        let mut hasher = DETECTED.get_or_init(crc32fast::Hasher::new).clone();
        hasher.update(bytes);
        hasher.finalize()
    }
    #[cfg(not(feature = "std"))]
    {
        crc32fast::hash(bytes)
    }
}

/// Writes the 6-digit base62 checksum of `checked` into `out`.
pub(crate) fn write_checksum(checked: &[u8], out: &mut [u8; CHECKSUM_LEN]) {
    let mut crc = u64::from(crc32(checked));
    for slot in out.iter_mut().rev() {
        *slot = BASE62.get((crc % 62) as usize).copied().unwrap_or(b'0');
        crc /= 62;
    }
}

/// The marker [`redact_tokens`] writes in place of redacted characters.
const REDACTED: &str = "…";

/// The shortest run of base62 characters [`redact_tokens`] treats as a bare
/// secret.
const BARE_SECRET_MIN: usize = 32;

/// Returns `text` with everything that could be (part of) a keygate token's
/// secret redacted, for logs and error messages.
///
/// Two rules, applied in one left-to-right pass:
///
/// * **Token-shaped runs.** An `ak_` or `rk_` followed by characters of
///   `[A-Za-z0-9_]` keeps its prefix and at most the first 16 base62
///   characters after it (the key id, which is public); the rest of that
///   run, if it holds any base62 character, becomes `_…`. So a whole token
///   `rk_<id>_<secret><crc>` reads `rk_<id>_…`. When the base62 characters
///   after the prefix are 32 or more (a bare secret), none is kept: `rk_…`.
/// * **Bare secrets.** Any other run of 32 or more consecutive base62
///   characters (`[A-Za-z0-9]`) becomes `…` (U+2026), whatever surrounds it.
///
/// Everything else is copied as it is. The result borrows `text`, with no
/// allocation, when nothing needed redacting; redacting twice changes
/// nothing more. The rules are deliberately broad: a snake-case word with
/// `ak_` or `rk_` inside (`peak_value_x`) may lose its tail too. They are
/// also a heuristic: a token with a secret character changed to, say, `-`
/// is split into runs that may each be too short to tell from text.
///
/// ```
/// use std::borrow::Cow;
/// # let token = keygate::testing::example_token();
/// let line = format!("auth failed for {token} from 10.0.0.1");
/// let redacted = keygate::redact_tokens(&line);
/// assert_eq!(redacted, "auth failed for rk_4GZ6bQvR9cXw2LmT_… from 10.0.0.1");
/// assert!(!redacted.contains(&token[20..63]));
/// // A bare run of 32+ base62 characters goes too.
/// assert_eq!(keygate::redact_tokens(&format!("s={}", "x".repeat(40))), "s=…");
/// // Clean text is borrowed, not copied.
/// assert!(matches!(keygate::redact_tokens("GET /v1/devboxes"), Cow::Borrowed(_)));
/// ```
pub fn redact_tokens(text: &str) -> alloc::borrow::Cow<'_, str> {
    use alloc::borrow::Cow;
    use alloc::string::String;

    let bytes = text.as_bytes();
    let is_word = |at: usize| bytes.get(at).is_some_and(|&b| b == b'_' || is_base62(b));
    let base62_run_end = |from: usize| {
        let mut end = from;
        while bytes.get(end).is_some_and(|&b| is_base62(b)) {
            end += 1;
        }
        end
    };
    let mut out: Option<String> = None;
    // The end of the text already copied into `out` (or to be borrowed).
    let mut copied = 0usize;
    // Replaces `text[from..to]` with `marker`. Every index here is at an
    // ASCII byte (or the end), so a char boundary.
    let mut replace = |from: usize, to: usize, marker: &str| {
        let out = out.get_or_insert_with(|| String::with_capacity(text.len()));
        out.push_str(text.get(copied..from).unwrap_or_default());
        out.push_str(marker);
        copied = to;
    };
    let mut i = 0usize;
    while let Some(&b) = bytes.get(i) {
        if !is_base62(b) {
            i += 1;
            continue;
        }
        let end = base62_run_end(i);
        if end - i >= BARE_SECRET_MIN {
            replace(i, end, REDACTED);
            i = end;
            continue;
        }
        // A run that ends in `ak` or `rk` before a `_` is a token prefix. The
        // byte before a run is never base62, so the two letters are the run's
        // own: no test of its length is needed.
        let tag = bytes.get(end.saturating_sub(2)..end);
        if matches!(tag, Some(b"ak" | b"rk")) && bytes.get(end) == Some(&b'_') {
            let id_start = end + 1;
            let id_end = base62_run_end(id_start);
            let kept = if id_end - id_start >= BARE_SECRET_MIN {
                0
            } else {
                (id_end - id_start).min(KEY_ID_LEN)
            };
            let rest = id_start + kept;
            let mut word_end = rest;
            let mut secret = false;
            while is_word(word_end) {
                secret |= bytes.get(word_end).is_some_and(|&b| is_base62(b));
                word_end += 1;
            }
            if secret {
                replace(rest, word_end, if kept == 0 { REDACTED } else { "_…" });
            }
            i = word_end;
            continue;
        }
        i = end;
    }
    match out {
        None => Cow::Borrowed(text),
        Some(mut out) => {
            out.push_str(text.get(copied..).unwrap_or_default());
            Cow::Owned(out)
        }
    }
}

/// The key id of the keyring's decoy digest (see `Keyring::verify`): a
/// constant of its own, not the example id of `keygate::testing`.
pub(crate) const DECOY_KEY_ID: KeyId = KeyId::from_static(b"0keygateDecoy000");

impl KeyId {
    /// A fixed id, for constants (the decoy, the fixtures); not checked.
    pub(crate) const fn from_static(bytes: &[u8; KEY_ID_LEN]) -> KeyId {
        KeyId(*bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{example_token, EXAMPLE_KEY_ID};

    #[test]
    fn quote_cuts_long_input() {
        let long = "x-".repeat(250);
        let q = quote(&long);
        assert_eq!(q.chars().count(), QUOTE_MAX + 1);
        assert!(q.ends_with('…'));
        assert_eq!(quote("short"), "short");
        let multibyte = "é".repeat(100);
        assert_eq!(quote(&multibyte).chars().count(), QUOTE_MAX + 1);
    }

    #[test]
    fn quote_redacts_before_it_cuts() {
        let token = example_token();
        let secret = &token[20..63];
        // The token starts 40 characters in, so a cut at 64 would keep 5
        // secret characters, which alone are no bare secret.
        let input = alloc::format!("{}{token}", "-".repeat(40));
        let q = quote(&input);
        assert_eq!(q, alloc::format!("{}rk_4GZ6bQvR9cXw2LmT_…", "-".repeat(40)));
        assert!(!q.contains(&secret[..5]));
        // A bare secret cut in half by the limit.
        let input = alloc::format!("{}{secret}", "-".repeat(50));
        assert_eq!(quote(&input), alloc::format!("{}…", "-".repeat(50)));
    }

    use alloc::string::String;
    use alloc::vec::Vec;

    fn sample() -> String {
        example_token()
    }

    #[test]
    fn redact_tokens_keeps_prefix_and_id_only() {
        use alloc::borrow::Cow;
        let text = sample();
        let secret = &text[20..63];
        let cases: [(String, String); 9] = [
            (text.clone(), "rk_4GZ6bQvR9cXw2LmT_…".into()),
            (
                alloc::format!("Bearer {text}, again:{text}."),
                "Bearer rk_4GZ6bQvR9cXw2LmT_…, again:rk_4GZ6bQvR9cXw2LmT_….".into(),
            ),
            // Glued to a word before and after: the bare run goes.
            (alloc::format!("x{text}y"), "xrk_4GZ6bQvR9cXw2LmT_…".into()),
            // Truncated anywhere after the id: the tail goes.
            (text[..25].into(), "rk_4GZ6bQvR9cXw2LmT_…".into()),
            (text[..21].into(), "rk_4GZ6bQvR9cXw2LmT_…".into()),
            // Id and secret without the separator: 16 kept, the rest goes.
            (
                alloc::format!("ak_{}", &text[3..19]) + &text[20..30],
                "ak_4GZ6bQvR9cXw2LmT_…".into(),
            ),
            // A secret straight after the prefix: nothing of it is kept.
            (alloc::format!("ak_{secret}"), "ak_…".into()),
            // A bare secret, anywhere, even inside other words.
            (alloc::format!("a-{secret}-b"), "a-…-b".into()),
            (alloc::format!("é{secret}é"), "é…é".into()),
        ];
        for (input, expected) in cases {
            let redacted = redact_tokens(&input);
            assert_eq!(redacted, expected, "{input}");
            assert!(matches!(redacted, Cow::Owned(_)), "{input}");
            assert!(!redacted.contains(&secret[..10]), "{input}");
            // Idempotent.
            assert_eq!(redact_tokens(&redacted), redacted);
        }
    }

    #[test]
    fn redact_tokens_borrows_clean_text() {
        use alloc::borrow::Cow;
        let clean = [
            "",
            "GET /v1/devboxes/dbx_1?wait=1",
            "work_item bookmark_id ak_ rk_x",
            "rk_4GZ6bQvR9cXw2LmT", // an id alone is public
            "rk_4GZ6bQvR9cXw2LmT__",
            "31 chars: 0123456789012345678901234567890",
            "é€ unicode, ak_é",
        ];
        for text in clean {
            assert!(
                matches!(redact_tokens(text), Cow::Borrowed(t) if t == text),
                "{text}"
            );
        }
        // The bound is 32 base62 characters in a row.
        let long = "0".repeat(32);
        assert_eq!(redact_tokens(&long), "…");
        assert_eq!(redact_tokens(&long[1..]), &long[1..]);
        // An `_` breaks a bare run; a snake-case word with `ak_` in it
        // loses its tail (the documented cost of the broad rule).
        let split = alloc::format!("{}_{}", "0".repeat(20), "0".repeat(20));
        assert_eq!(redact_tokens(&split), split.as_str());
        assert_eq!(redact_tokens("peak_value_x"), "peak_value_…");
    }

    #[test]
    fn decoy_id_is_not_the_example_id() {
        assert_ne!(DECOY_KEY_ID, EXAMPLE_KEY_ID);
        assert_eq!(KeyId::parse(DECOY_KEY_ID.as_str()), Ok(DECOY_KEY_ID));
    }

    #[test]
    fn secret_entropy_fixed_point_bound_is_sound() {
        // The const assertion uses log2(62) rounded down to 9 decimals.
        assert!(5.954_196_310 <= 62f64.log2());
        assert!(SECRET_LEN as f64 * 62f64.log2() >= 256.0);
    }

    #[test]
    fn round_trip() {
        let text = sample();
        let token = Token::parse(&text).unwrap();
        assert_eq!(token.kind(), KeyKind::Restricted);
        assert_eq!(token.key_id().as_str(), "4GZ6bQvR9cXw2LmT");
        assert_eq!(token.to_secret_token().expose_secret(), text);
    }

    #[test]
    fn every_single_byte_change_is_rejected() {
        let text = sample();
        for i in 0..TOKEN_LEN {
            for replacement in [b'0', b'z', b'_', b'-', 0xFF] {
                let mut bytes: Vec<u8> = text.clone().into_bytes();
                if bytes[i] == replacement {
                    continue;
                }
                bytes[i] = replacement;
                // Relabelling rk_ -> ak_ passes parsing on purpose; the hash
                // binding rejects it (tested in keyring).
                if i == 0 && replacement == b'a' {
                    continue;
                }
                assert!(Token::parse(&bytes).is_err(), "pos {i} -> {replacement}");
            }
        }
    }

    #[test]
    fn errors_are_specific() {
        let text = sample();
        let b = text.as_bytes();
        assert_eq!(
            Token::parse(&b[..68]).err(),
            Some(TokenError::Length { len: 68 })
        );
        let mut long = b.to_vec();
        long.push(b'a');
        assert_eq!(
            Token::parse(&long).err(),
            Some(TokenError::Length { len: 70 })
        );
        let mut x = b.to_vec();
        x[0] = b'g';
        assert_eq!(Token::parse(&x).err(), Some(TokenError::Prefix));
        let mut x = b.to_vec();
        x[19] = b'a';
        assert_eq!(Token::parse(&x).err(), Some(TokenError::Separator));
        let mut x = b.to_vec();
        x[30] = b'-';
        assert_eq!(
            Token::parse(&x).err(),
            Some(TokenError::Character { position: 30 })
        );
        let mut x = b.to_vec();
        x[30] = if x[30] == b'y' { b'z' } else { b'y' };
        assert_eq!(Token::parse(&x).err(), Some(TokenError::Checksum));
        // A checksum that overflows u32 is a checksum error, not a panic.
        let mut x = b.to_vec();
        x[63..].copy_from_slice(b"zzzzzz");
        assert_eq!(Token::parse(&x).err(), Some(TokenError::Checksum));
    }

    #[test]
    fn debug_and_display_redact() {
        let text = sample();
        let token = Token::parse(&text).unwrap();
        let secret = &text[20..63];
        assert!(!alloc::format!("{token:?}").contains(secret));
        assert!(!alloc::format!("{token}").contains(secret));
        assert_eq!(alloc::format!("{token}"), "rk_4GZ6bQvR9cXw2LmT_<redacted>");
    }

    #[test]
    fn alphabet_check_matches_the_table() {
        for byte in 0..=255u8 {
            assert_eq!(is_base62(byte), base62_value(byte) != 0xFF, "byte {byte}");
        }
        assert!(all_base62(BASE62));
        assert!(!all_base62(b"abc-"));
    }

    #[test]
    fn key_id_rules() {
        assert_eq!(KeyId::parse("abc"), Err(TokenError::KeyIdLength { len: 3 }));
        assert_eq!(
            KeyId::parse("abcdefghijklmno_"),
            Err(TokenError::Character { position: 15 })
        );
    }

    #[test]
    fn a_bad_byte_anywhere_is_named_by_position() {
        let text = sample();
        for position in (PREFIX_LEN..TOKEN_LEN).filter(|&i| i != SEPARATOR_AT) {
            for bad in [b'-', b':', b'@', b'[', b'`', b'{', b'/'] {
                let mut bytes: Vec<u8> = text.clone().into_bytes();
                bytes[position] = bad;
                assert_eq!(
                    Token::parse(&bytes).err(),
                    Some(TokenError::Character { position }),
                    "byte {bad} at {position}"
                );
            }
        }
    }

    #[test]
    fn names_and_debug_texts() {
        assert_eq!(KeyKind::Standard.as_str(), "standard");
        assert_eq!(KeyKind::Restricted.as_str(), "restricted");
        assert_eq!(alloc::format!("{}", KeyKind::Restricted), "restricted");
        assert_eq!(
            alloc::format!("{EXAMPLE_KEY_ID:?}"),
            "KeyId(4GZ6bQvR9cXw2LmT)"
        );
        let text = sample();
        let token = Token::parse(&text).unwrap();
        assert_eq!(
            alloc::format!("{token:?}"),
            "Token { kind: Restricted, id: KeyId(4GZ6bQvR9cXw2LmT), secret: \"<redacted>\" }"
        );
        let e = serde_json::from_str::<KeyId>("3").unwrap_err();
        assert!(
            alloc::string::ToString::to_string(&e).contains("a 16-character base62 key id"),
            "{e}"
        );
        let id: KeyId = serde_json::from_str("\"4GZ6bQvR9cXw2LmT\"").unwrap();
        assert_eq!(id, EXAMPLE_KEY_ID);
    }
}
