//! Minting keys: validated requests, the policies of who may mint, and
//! [`mint`] itself, which takes its entropy from the caller.

use alloc::string::String;

use rand_core::CryptoRng;

use crate::key::KeyRecord;
use crate::keyring::Principal;
use crate::limit::{KeyLimits, Meter};
use crate::scope::{Access, Resource, Scopes};
use crate::secret::Pepper;
use crate::time::UnixMillis;
use crate::token::{fill_base62, KeyId, KeyKind, SecretToken, SECRET_LEN};

/// A create request that breaks one of the spec's rules (always 400).
///
/// ```
/// use keygate::wire::RestrictedKeyCreateParameters;
/// let err = RestrictedKeyCreateParameters::default().validate(keygate::UnixMillis::from_millis(0)).unwrap_err();
/// assert_eq!(err.to_string(), "invalid scopes: the `scopes` field is required");
/// assert_eq!(err.http_status(), 400);
/// ```
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ValidationError {
    /// A restricted-key request without a `scopes` field.
    #[error("invalid scopes: the `scopes` field is required")]
    ScopesMissing,
    /// A scope entry without `resource_type` or `access_level`.
    #[error("invalid scopes: entry {index} lacks `{field}`")]
    ScopeEntryIncomplete {
        /// Zero-based position of the entry.
        index: usize,
        /// The missing field's name.
        field: &'static str,
    },
    /// The same resource in two entries.
    #[error("invalid scopes: `{}` appears more than once", .0.api_name())]
    DuplicateResource(Resource),
    /// Scopes that are empty or all `ACCESS_LEVEL_NONE`.
    #[error("invalid scopes: the scopes grant no access")]
    NoAccessGranted,
    /// A name longer than [`MAX_NAME_LEN`](crate::MAX_NAME_LEN) bytes.
    #[error("name is {len} bytes long, the limit is {max}")]
    NameTooLong {
        /// The name's length in bytes.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A name with a control character (Unicode `Cc`), an invisible format
    /// character (U+200B, U+2060..U+2064, U+FEFF, U+00AD, U+180E), a joiner
    /// (U+200C, U+200D) at either end, or a bidirectional
    /// formatting character (U+202A..U+202E, U+2066..U+2069, U+200E, U+200F,
    /// U+061C).
    #[error("name `{name}` has a control character at byte {position}")]
    NameControlCharacter {
        /// The name, with control characters escaped and cut to 64 characters.
        name: String,
        /// Byte offset of the first control character.
        position: usize,
    },
    /// An expiry before the Unix epoch (a negative `expires_at_ms`).
    #[error("`expires_at_ms` is negative: `{0}`")]
    ExpiryNegative(UnixMillis),
    /// An expiry that is not after now.
    #[error("`expires_at_ms` `{expires_at}` is not after now ({now})")]
    ExpiryNotInFuture {
        /// The expiry asked for.
        expires_at: UnixMillis,
        /// The time of the request.
        now: UnixMillis,
    },
}

impl ValidationError {
    /// Always 400.
    ///
    /// ```
    /// assert_eq!(keygate::ValidationError::NoAccessGranted.http_status(), 400);
    /// ```
    pub const fn http_status(&self) -> u16 {
        400
    }

    /// Whether the spec calls this "invalid scopes".
    ///
    /// ```
    /// assert!(keygate::ValidationError::ScopesMissing.is_invalid_scopes());
    /// let negative = keygate::ValidationError::ExpiryNegative(keygate::UnixMillis::from_millis(-1));
    /// assert!(!negative.is_invalid_scopes());
    /// ```
    pub const fn is_invalid_scopes(&self) -> bool {
        matches!(
            self,
            ValidationError::ScopesMissing
                | ValidationError::ScopeEntryIncomplete { .. }
                | ValidationError::DuplicateResource(_)
                | ValidationError::NoAccessGranted
        )
    }
}

/// A caller that may not mint the requested key (403).
///
/// ```
/// assert_eq!(keygate::MintError::MissingAccountWrite.http_status(), 403);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MintError {
    /// The caller is a restricted key without `RESOURCE_TYPE_ACCOUNT` write.
    #[error("minting keys needs a standard key or `account:write` scope")]
    MissingAccountWrite,
    /// Attenuating policy: a restricted caller asked for a standard key.
    #[error("a restricted key may not mint a standard key under the attenuating policy")]
    StandardFromRestricted,
    /// Attenuating policy: the requested scopes exceed the caller's.
    #[error("requested scopes exceed the caller's under the attenuating policy")]
    ScopesExceedCaller,
    /// The caller expires, so its children must too.
    #[error("a key that expires at {parent_expires_at} ms may only mint keys with an `expires_at_ms` under the attenuating policy")]
    ChildMustExpire {
        /// The caller's expiry.
        parent_expires_at: UnixMillis,
    },
    /// The child would outlive the caller.
    #[error("`expires_at_ms` `{expires_at}` is later than the caller's own expiry ({parent_expires_at}) under the attenuating policy")]
    ChildOutlivesParent {
        /// The expiry asked for.
        expires_at: UnixMillis,
        /// The caller's expiry.
        parent_expires_at: UnixMillis,
    },
    /// A caller with a rate limit or credits asked for other limits: the
    /// keys it mints share its own.
    #[error(
        "a key with a rate limit or credits mints keys that share them; \
         omit `rate_limit` and `credits`, or repeat the caller's own"
    )]
    LimitsOfCaller,
}

impl MintError {
    /// Always 403.
    ///
    /// ```
    /// assert_eq!(keygate::MintError::ScopesExceedCaller.http_status(), 403);
    /// ```
    pub const fn http_status(&self) -> u16 {
        403
    }
}

/// The longest key name, in bytes.
pub const MAX_NAME_LEN: usize = 256;

/// The name a key gets when the request has none.
pub const DEFAULT_KEY_NAME: &str = "unnamed";

/// A validated request for a new key: only [`MintRequest::standard`],
/// [`MintRequest::restricted`] and the wire types' `validate` make one, so
/// every value obeys the spec's rules.
///
/// ```
/// use keygate::{MintRequest, UnixMillis};
/// let now = UnixMillis::from_millis(1_000);
/// let req = MintRequest::restricted(Some("ci"), "objects:read".parse()?, Some(UnixMillis::from_millis(5_000)), now)?;
/// assert_eq!(req.name(), "ci");
/// assert!(MintRequest::standard(None, Some(UnixMillis::from_millis(500)), now).is_err()); // expiry in the past
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MintRequest {
    pub(crate) kind: KeyKind,
    pub(crate) name: String,
    pub(crate) scopes: Scopes,
    pub(crate) expires_at: Option<UnixMillis>,
    pub(crate) creator_id: Option<KeyId>,
    pub(crate) limits: KeyLimits,
    pub(crate) meter: Option<Meter>,
}

impl MintRequest {
    /// A request for a standard (`ak_`) key.
    ///
    /// `name` defaults to [`DEFAULT_KEY_NAME`]; see [`MintRequest::restricted`]
    /// for the name and expiry rules.
    ///
    /// ```
    /// let req = keygate::MintRequest::standard(None, None, keygate::UnixMillis::from_millis(0))?;
    /// assert_eq!(req.name(), keygate::DEFAULT_KEY_NAME);
    /// assert_eq!(req.scopes(), keygate::Scopes::all());
    /// # Ok::<(), keygate::ValidationError>(())
    /// ```
    pub fn standard(
        name: Option<&str>,
        expires_at: Option<UnixMillis>,
        now: UnixMillis,
    ) -> Result<MintRequest, ValidationError> {
        Ok(MintRequest {
            kind: KeyKind::Standard,
            name: validate_name(name)?,
            scopes: Scopes::all(),
            expires_at: validate_expiry(expires_at, now)?,
            creator_id: None,
            limits: KeyLimits::default(),
            meter: None,
        })
    }

    /// A request for a restricted (`rk_`) key.
    ///
    /// * `scopes` must grant something ([`ValidationError::NoAccessGranted`]).
    /// * `name` is at most [`MAX_NAME_LEN`] bytes with no control character
    ///   (Unicode `Cc`, a bidirectional formatting character such as U+202E,
    ///   or an invisible one such as U+200B: each could make a name display
    ///   as another).
    /// * `expires_at`, when given, is not before the Unix epoch and is after
    ///   `now`.
    ///
    /// ```
    /// use keygate::{MintRequest, Scopes, ValidationError};
    /// assert_eq!(
    ///     MintRequest::restricted(None, Scopes::empty(), None, keygate::UnixMillis::from_millis(0)),
    ///     Err(ValidationError::NoAccessGranted)
    /// );
    /// assert!(MintRequest::restricted(Some("a\nb"), Scopes::all(), None, keygate::UnixMillis::from_millis(0)).is_err());
    /// ```
    pub fn restricted(
        name: Option<&str>,
        scopes: Scopes,
        expires_at: Option<UnixMillis>,
        now: UnixMillis,
    ) -> Result<MintRequest, ValidationError> {
        let name = validate_name(name)?;
        if scopes.is_empty() {
            return Err(ValidationError::NoAccessGranted);
        }
        Ok(MintRequest {
            kind: KeyKind::Restricted,
            name,
            scopes,
            expires_at: validate_expiry(expires_at, now)?,
            creator_id: None,
            limits: KeyLimits::default(),
            meter: None,
        })
    }

    /// Standard or restricted.
    pub fn kind(&self) -> KeyKind {
        self.kind
    }

    /// The key's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The scopes the key will hold ([`Scopes::all`] for a standard key).
    pub fn scopes(&self) -> Scopes {
        self.scopes
    }

    /// The expiry, if any.
    ///
    /// ```
    /// use keygate::{MintRequest, UnixMillis};
    /// let expiry = Some(UnixMillis::from_millis(60_000));
    /// let req = MintRequest::standard(None, expiry, UnixMillis::EPOCH)?;
    /// assert_eq!(req.expires_at(), expiry);
    /// # Ok::<(), keygate::ValidationError>(())
    /// ```
    pub fn expires_at(&self) -> Option<UnixMillis> {
        self.expires_at
    }

    /// The same request, made by `creator`: the minted record names it as
    /// [`KeyRecord::creator_id`]. A server sets it to the calling key, so it
    /// can answer who minted what and revoke a key's descendants.
    ///
    /// ```
    /// # let caller = keygate::testing::principal_of(&keygate::testing::example_record());
    /// let req = keygate::MintRequest::standard(None, None, keygate::UnixMillis::from_millis(0))?.created_by(&caller);
    /// assert_eq!(req.creator_id(), Some(caller.id()));
    /// # Ok::<(), keygate::ValidationError>(())
    /// ```
    #[must_use]
    pub fn created_by(mut self, creator: &Principal) -> MintRequest {
        self.creator_id = Some(creator.id());
        self
    }

    /// The key that asks for this one, if the request says.
    pub fn creator_id(&self) -> Option<KeyId> {
        self.creator_id
    }
}

impl MintRequest {
    /// A request for a key like `record`: its kind, name, scopes, expiry
    /// and creator, which were validated when it was minted.
    pub(crate) fn like(record: &KeyRecord) -> MintRequest {
        MintRequest {
            kind: record.kind(),
            name: String::from(record.name()),
            scopes: record.scopes(),
            expires_at: record.expires_at(),
            creator_id: record.creator_id(),
            limits: record.limits(),
            // A successor shares its predecessor's meter: a roll is no
            // fresh rate limit or balance.
            meter: Some(record.meter()),
        }
    }

    /// The same request with a rate limit and credits.
    ///
    /// ```
    /// use core::time::Duration;
    /// use keygate::{Credits, KeyLimits, MintRequest, UnixMillis};
    /// let limits = KeyLimits { rate: None, credits: Some(Credits::new(100, None)?) };
    /// let req = MintRequest::standard(None, None, UnixMillis::EPOCH)?.with_limits(limits);
    /// assert_eq!(req.limits(), limits);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn with_limits(mut self, limits: KeyLimits) -> MintRequest {
        self.limits = limits;
        self
    }

    /// The rate limit and credits the key will have.
    pub fn limits(&self) -> KeyLimits {
        self.limits
    }

    /// The request as `caller` may make it: a key with limits mints only
    /// keys charged to its own meter, with its limits, so that minting can
    /// never multiply a rate limit or a balance. Such a caller may leave the
    /// limits out (they are filled in) or repeat its own; anything else is
    /// [`MintError::LimitsOfCaller`]. A caller without limits changes nothing.
    ///
    /// ```
    /// use core::time::Duration;
    /// use keygate::{KeyLimits, MintRequest, RateLimit, UnixMillis};
    /// # let caller = keygate::testing::example_record();
    /// let rate = RateLimit::new(10, Duration::from_secs(1))?;
    /// let caller = caller.with_limits(KeyLimits { rate: Some(rate), credits: None });
    /// let req = MintRequest::restricted(None, "objects:read".parse()?, None, UnixMillis::EPOCH)?;
    /// assert_eq!(req.clone().charged_to(&caller)?.limits(), caller.limits());
    /// let looser = RateLimit::new(1_000, Duration::from_secs(1))?;
    /// let asked = req.with_limits(KeyLimits { rate: Some(looser), credits: None });
    /// assert_eq!(asked.charged_to(&caller), Err(keygate::MintError::LimitsOfCaller));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn charged_to(mut self, caller: &KeyRecord) -> Result<MintRequest, MintError> {
        let theirs = caller.limits();
        if theirs.is_unlimited() {
            return Ok(self);
        }
        if !self.limits.is_unlimited() && self.limits != theirs {
            return Err(MintError::LimitsOfCaller);
        }
        self.limits = theirs;
        self.meter = Some(caller.meter());
        Ok(self)
    }
}

fn validate_name(name: Option<&str>) -> Result<String, ValidationError> {
    let name = name.unwrap_or(DEFAULT_KEY_NAME);
    if name.len() > MAX_NAME_LEN {
        return Err(ValidationError::NameTooLong {
            len: name.len(),
            max: MAX_NAME_LEN,
        });
    }
    let last = name.char_indices().last().map(|(at, _)| at);
    if let Some((position, _)) = name.char_indices().find(|&(at, c)| {
        c.is_control()
            || is_bidi_control(c)
            || is_invisible(c)
            // A joiner joins: at either end it only hides (`\u{200D}admin`).
            || (is_joiner(c) && (at == 0 || Some(at) == last))
    }) {
        let escaped: String = name.chars().flat_map(char::escape_default).collect();
        return Err(ValidationError::NameControlCharacter {
            name: crate::token::quote(&escaped),
            position,
        });
    }
    Ok(String::from(name))
}

/// Format characters that show nothing and join nothing, so that a name
/// holding one looks like another (`boot\u{200B}strap`): the zero-width
/// space, the word joiner and the invisible operators, the byte order mark,
/// the soft hyphen and the Mongolian vowel separator.
fn is_invisible(c: char) -> bool {
    matches!(
        c,
        '\u{00AD}' | '\u{180E}' | '\u{200B}' | '\u{2060}'..='\u{2064}' | '\u{FEFF}'
    )
}

/// The zero-width joiner and non-joiner: needed inside emoji sequences and
/// some scripts, never at a name's ends.
fn is_joiner(c: char) -> bool {
    matches!(c, '\u{200C}' | '\u{200D}')
}

/// The Unicode bidirectional formatting characters (UAX #9): they reorder how
/// a name is displayed ("Trojan Source" spoofing), so names may not hold them.
fn is_bidi_control(c: char) -> bool {
    matches!(
        c,
        '\u{061C}' | '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}'
    )
}

fn validate_expiry(
    expires_at: Option<UnixMillis>,
    now: UnixMillis,
) -> Result<Option<UnixMillis>, ValidationError> {
    match expires_at {
        Some(e) if e < UnixMillis::EPOCH => Err(ValidationError::ExpiryNegative(e)),
        Some(e) if e <= now => Err(ValidationError::ExpiryNotInFuture { expires_at: e, now }),
        other => Ok(other),
    }
}

/// Who may mint keys.
///
/// ```
/// use keygate::{MintPolicy, MintRequest};
/// # let caller = keygate::testing::principal_of(&keygate::testing::example_record()); // devboxes:write,objects:read
/// let req = MintRequest::restricted(None, "objects:read".parse()?, None, keygate::UnixMillis::from_millis(0))?;
/// // The caller lacks account:write, so neither policy lets it mint.
/// assert!(MintPolicy::Spec.authorize(&caller, &req).is_err());
/// assert!(MintPolicy::Attenuating.authorize(&caller, &req).is_err());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum MintPolicy {
    /// The spec's rule: a standard key, or a restricted key with
    /// `RESOURCE_TYPE_ACCOUNT` write, may mint any key, standard included.
    #[default]
    Spec,
    /// The spec's rule, narrowed so that no key can mint more than it has:
    ///
    /// * a restricted caller may mint only restricted keys whose scopes are
    ///   a subset of its own, and never a standard key;
    /// * a caller that expires (standard or restricted) may mint only keys
    ///   that expire, no later than it does. A caller that never expires
    ///   may give its children any expiry.
    Attenuating,
}

impl MintPolicy {
    /// Whether `caller` may mint `request` under this policy.
    ///
    /// ```
    /// use keygate::{MintError, MintPolicy, MintRequest};
    /// # use rand_core::SeedableRng;
    /// # let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(1);
    /// # let pepper = keygate::Pepper::generate(&mut rng);
    /// let admin = MintRequest::restricted(None, "account:write,objects:read".parse()?, None, keygate::UnixMillis::from_millis(0))?;
    /// let caller = keygate::testing::principal_of(keygate::mint(&pepper, &admin, &mut rng, keygate::UnixMillis::from_millis(0)).record());
    ///
    /// let standard = MintRequest::standard(None, None, keygate::UnixMillis::from_millis(0))?;
    /// assert!(MintPolicy::Spec.authorize(&caller, &standard).is_ok());
    /// assert_eq!(
    ///     MintPolicy::Attenuating.authorize(&caller, &standard),
    ///     Err(MintError::StandardFromRestricted)
    /// );
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn authorize(self, caller: &Principal, request: &MintRequest) -> Result<(), MintError> {
        if caller.kind() == KeyKind::Restricted && !caller.can(Resource::Account, Access::Write) {
            return Err(MintError::MissingAccountWrite);
        }
        if self == MintPolicy::Spec {
            return Ok(());
        }
        if caller.kind() == KeyKind::Restricted {
            match request.kind {
                KeyKind::Standard => return Err(MintError::StandardFromRestricted),
                KeyKind::Restricted if !request.scopes.is_subset(&caller.scopes()) => {
                    return Err(MintError::ScopesExceedCaller)
                }
                KeyKind::Restricted => {}
            }
        }
        match (caller.expires_at(), request.expires_at) {
            (None, _) => Ok(()),
            (Some(parent_expires_at), None) => {
                Err(MintError::ChildMustExpire { parent_expires_at })
            }
            (Some(parent_expires_at), Some(expires_at)) if expires_at > parent_expires_at => {
                Err(MintError::ChildOutlivesParent {
                    expires_at,
                    parent_expires_at,
                })
            }
            (Some(_), Some(_)) => Ok(()),
        }
    }

    /// Whether `caller` may roll `target`. A roll mints a key like `target`
    /// (its kind, scopes and expiry) and hands its secret to the caller, so
    /// it needs what minting that key needs: under the attenuating policy an
    /// expiring caller cannot roll a key that outlives it, nor a restricted
    /// caller a key wider than itself.
    ///
    /// ```
    /// use keygate::{MintError, MintPolicy, MintRequest};
    /// # use rand_core::SeedableRng;
    /// # let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(2);
    /// # let pepper = keygate::Pepper::generate(&mut rng);
    /// let t0 = keygate::UnixMillis::EPOCH;
    /// let forever = MintRequest::standard(Some("service"), None, t0)?;
    /// let service = keygate::mint(&pepper, &forever, &mut rng, t0).into_parts().0;
    /// let brief = MintRequest::standard(Some("temp"), Some(keygate::UnixMillis::from_millis(60_000)), t0)?;
    /// let temp = keygate::testing::principal_of(keygate::mint(&pepper, &brief, &mut rng, t0).record());
    ///
    /// assert!(MintPolicy::Spec.authorize_roll(&temp, &service).is_ok());
    /// assert!(matches!(
    ///     MintPolicy::Attenuating.authorize_roll(&temp, &service),
    ///     Err(MintError::ChildMustExpire { .. })
    /// ));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn authorize_roll(self, caller: &Principal, target: &KeyRecord) -> Result<(), MintError> {
        self.authorize(caller, &MintRequest::like(target))
    }
}

/// A freshly minted key: the record to store, and the token to show once.
///
/// ```
/// # use rand_core::SeedableRng;
/// # let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(1);
/// # let pepper = keygate::Pepper::generate(&mut rng);
/// let req = keygate::MintRequest::standard(Some("ops"), None, keygate::UnixMillis::from_millis(0))?;
/// let minted = keygate::mint(&pepper, &req, &mut rng, keygate::UnixMillis::from_millis(0));
/// assert_eq!(minted.record().name(), "ops");
/// let json = serde_json::to_value(keygate::wire::CreatedKeyView::from(minted))?;
/// assert!(json["key_secret"].as_str().unwrap().starts_with("ak_"));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct MintedKey {
    record: KeyRecord,
    token: SecretToken,
}

impl MintedKey {
    /// The record to store; it holds the digest, not the secret.
    pub fn record(&self) -> &KeyRecord {
        &self.record
    }

    /// The token, to hand to the key's owner once.
    pub fn token(&self) -> &SecretToken {
        &self.token
    }

    /// Splits into record and token.
    ///
    /// ```
    /// # let minted = keygate::testing::example_minted();
    /// let (record, token) = minted.into_parts();
    /// # let _ = (record, token);
    /// ```
    pub fn into_parts(self) -> (KeyRecord, SecretToken) {
        (self.record, self.token)
    }
}

/// Mints a key for `request` at `now`, with entropy from `rng`.
///
/// It does not check who asks: call [`MintPolicy::authorize`] first. Store
/// the record durably before you show the token.
///
/// ```
/// use rand_core::SeedableRng;
/// let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(5);
/// let pepper = keygate::Pepper::generate(&mut rng);
/// let req = keygate::MintRequest::restricted(None, "devboxes:write".parse()?, None, keygate::UnixMillis::from_millis(0))?;
/// let minted = keygate::mint(&pepper, &req, &mut rng, keygate::UnixMillis::from_millis(1_700_000_000_000));
/// assert_eq!(minted.record().created_at().as_millis(), 1_700_000_000_000);
/// assert!(minted.token().expose_secret().starts_with("rk_"));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn mint<R: CryptoRng + ?Sized>(
    pepper: &Pepper,
    request: &MintRequest,
    rng: &mut R,
    now: UnixMillis,
) -> MintedKey {
    let id = KeyId::generate(rng);
    let mut secret = [0u8; SECRET_LEN];
    fill_base62(rng, &mut secret);
    let token = SecretToken::assemble(request.kind, &id, &secret);
    let digest = pepper.digest_parts(request.kind, &id, &secret);
    zeroize::Zeroize::zeroize(&mut secret);
    let record = KeyRecord::new(
        id,
        request.kind,
        request.name.clone(),
        digest,
        request.scopes,
        request.expires_at,
        now,
        request.creator_id,
    )
    .with_limits(request.limits);
    let record = match request.meter {
        Some(meter) => record.with_meter(meter),
        None => record,
    };
    MintedKey { record, token }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Keyring;
    use rand_core::SeedableRng;

    #[test]
    fn name_rules() {
        assert!(validate_name(Some(&"a".repeat(256))).is_ok());
        assert_eq!(
            validate_name(Some(&"a".repeat(257))),
            Err(ValidationError::NameTooLong { len: 257, max: 256 })
        );
        // 128 two-byte characters = 256 bytes: allowed; one more: not.
        assert!(validate_name(Some(&"é".repeat(128))).is_ok());
        assert!(validate_name(Some(&"é".repeat(129))).is_err());
        for bad in [
            "a\u{0}",
            "\t",
            "x\u{7f}",
            "x\u{85}y",
            "admin\u{202E}nimda",
            "a\u{2066}b",
            "\u{200F}",
            "\u{061C}",
            "\u{200B}bootstrap",
            "boot\u{200B}strap",
            "admin\u{FEFF}",
            "a\u{2060}b",
            "soft\u{00AD}",
            "\u{200D}bootstrap",
            "bootstrap\u{200C}",
        ] {
            assert!(matches!(
                validate_name(Some(bad)),
                Err(ValidationError::NameControlCharacter { .. })
            ));
        }
        assert_eq!(validate_name(Some("")), Ok(String::new()));
        // Joiners inside a name stay allowed: ZWJ joins emoji sequences.
        assert!(validate_name(Some("deploy \u{1F469}\u{200D}\u{1F4BB} bot")).is_ok());
        assert!(validate_name(Some("\u{1F469}\u{200D}\u{1F4BB}")).is_ok());
        assert_eq!(validate_name(None), Ok(String::from(DEFAULT_KEY_NAME)));
    }

    #[test]
    fn control_character_error_escapes_name() {
        let e = validate_name(Some("ab\ncd")).unwrap_err();
        assert_eq!(
            alloc::string::ToString::to_string(&e),
            "name `ab\\ncd` has a control character at byte 2"
        );
    }

    #[test]
    fn expiry_rules() {
        let at = UnixMillis::from_millis;
        assert_eq!(validate_expiry(None, at(5)), Ok(None));
        assert_eq!(validate_expiry(Some(at(6)), at(5)), Ok(Some(at(6))));
        assert!(validate_expiry(Some(at(5)), at(5)).is_err());
        assert_eq!(
            validate_expiry(Some(at(-1)), at(-10)),
            Err(ValidationError::ExpiryNegative(at(-1)))
        );
        assert_eq!(
            validate_expiry(Some(at(i64::MIN)), at(0)),
            Err(ValidationError::ExpiryNegative(at(i64::MIN)))
        );
        assert_eq!(
            validate_expiry(Some(at(i64::MAX)), at(i64::MAX - 1)),
            Ok(Some(at(i64::MAX)))
        );
        assert!(validate_expiry(Some(at(i64::MAX)), at(i64::MAX)).is_err());
    }

    #[test]
    fn spec_policy() {
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(2);
        let pepper = Pepper::generate(&mut rng);
        let caller = |s: &str, rng: &mut rand_chacha::ChaCha20Rng| {
            let req =
                MintRequest::restricted(None, s.parse().unwrap(), None, UnixMillis::from_millis(0))
                    .unwrap();
            Principal::of_record(mint(&pepper, &req, rng, UnixMillis::from_millis(0)).record())
        };
        let account_read = caller("account:read,devboxes:write", &mut rng);
        let account_write = caller("account:write", &mut rng);
        let standard = MintRequest::standard(None, None, UnixMillis::from_millis(0)).unwrap();
        assert_eq!(
            MintPolicy::Spec.authorize(&account_read, &standard),
            Err(MintError::MissingAccountWrite)
        );
        assert_eq!(
            MintPolicy::Spec.authorize(&account_write, &standard),
            Ok(())
        );
        let wide =
            MintRequest::restricted(None, Scopes::all(), None, UnixMillis::from_millis(0)).unwrap();
        assert_eq!(MintPolicy::Spec.authorize(&account_write, &wide), Ok(()));
        assert_eq!(
            MintPolicy::Attenuating.authorize(&account_write, &wide),
            Err(MintError::ScopesExceedCaller)
        );
        let narrow = MintRequest::restricted(
            None,
            account_write.scopes(),
            None,
            UnixMillis::from_millis(0),
        )
        .unwrap();
        assert_eq!(
            MintPolicy::Attenuating.authorize(&account_write, &narrow),
            Ok(())
        );
    }

    #[test]
    fn minted_keys_are_distinct_and_verify() {
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(3);
        let mut keyring = Keyring::new(Pepper::generate(&mut rng));
        let req = MintRequest::standard(None, None, UnixMillis::from_millis(0)).unwrap();
        let mut tokens = alloc::vec::Vec::new();
        for _ in 0..100 {
            let (record, token) =
                mint(keyring.pepper(), &req, &mut rng, UnixMillis::from_millis(0)).into_parts();
            assert!(keyring.insert(record).unwrap().is_none());
            tokens.push(token);
        }
        for t in &tokens {
            assert!(keyring
                .authenticate(t.expose_secret(), UnixMillis::from_millis(1))
                .is_ok());
        }
    }

    #[test]
    fn base62_sampling_is_roughly_uniform() {
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(4);
        let mut counts = [0u32; 256];
        let mut buf = [0u8; 62 * 200];
        fill_base62(&mut rng, &mut buf);
        for &b in buf.iter() {
            counts[usize::from(b)] += 1;
        }
        let used: alloc::vec::Vec<u32> = counts.iter().copied().filter(|&c| c > 0).collect();
        assert_eq!(used.len(), 62);
        // Expected 200 each; a 5-sigma band is about ±70.
        assert!(used.iter().all(|&c| (130..=270).contains(&c)), "{used:?}");
    }

    #[test]
    fn request_reads_back_and_names_its_creator() {
        let caller = Principal::of_record(&crate::testing::example_record());
        let scopes = Scopes::grant(crate::Resource::Agents, crate::Access::Read);
        let req = MintRequest::restricted(
            Some("bot"),
            scopes,
            Some(UnixMillis::from_millis(50)),
            UnixMillis::from_millis(10),
        )
        .unwrap()
        .created_by(&caller);
        assert_eq!(req.kind(), KeyKind::Restricted);
        assert_eq!(req.name(), "bot");
        assert_eq!(req.scopes(), scopes);
        assert_eq!(req.expires_at(), Some(UnixMillis::from_millis(50)));
        assert_eq!(req.creator_id(), Some(caller.id()));
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(8);
        let pepper = crate::Pepper::generate(&mut rng);
        let minted = mint(&pepper, &req, &mut rng, UnixMillis::from_millis(10));
        assert_eq!(minted.record().creator_id(), Some(caller.id()));
        assert_eq!(minted.record().name(), "bot");
        assert_eq!(minted.record().created_at(), UnixMillis::from_millis(10));
    }

    #[test]
    fn expiry_zero_is_not_negative() {
        let at = UnixMillis::from_millis;
        assert_eq!(
            MintRequest::standard(None, Some(at(0)), at(0)).err(),
            Some(ValidationError::ExpiryNotInFuture {
                expires_at: at(0),
                now: at(0)
            })
        );
        assert_eq!(
            MintRequest::standard(None, Some(at(0)), at(-5))
                .unwrap()
                .expires_at(),
            Some(at(0))
        );
        assert_eq!(
            MintRequest::standard(None, Some(at(-1)), at(-5)).err(),
            Some(ValidationError::ExpiryNegative(at(-1)))
        );
    }

    #[test]
    fn a_roll_needs_what_minting_the_target_needs() {
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(9);
        let pepper = Pepper::generate(&mut rng);
        let t0 = UnixMillis::EPOCH;
        let minted = |expiry: Option<i64>, rng: &mut rand_chacha::ChaCha20Rng| {
            let expiry = expiry.map(UnixMillis::from_millis);
            let request = MintRequest::standard(None, expiry, t0).unwrap();
            mint(&pepper, &request, rng, t0).into_parts().0
        };
        let caller = Principal::of_record(&minted(Some(2_000), &mut rng));
        let forever = minted(None, &mut rng);
        let later = minted(Some(2_001), &mut rng);
        let sooner = minted(Some(2_000), &mut rng);
        let policy = MintPolicy::Attenuating;
        let parent_expires_at = UnixMillis::from_millis(2_000);
        assert_eq!(
            policy.authorize_roll(&caller, &forever),
            Err(MintError::ChildMustExpire { parent_expires_at })
        );
        assert_eq!(
            policy.authorize_roll(&caller, &later),
            Err(MintError::ChildOutlivesParent {
                expires_at: UnixMillis::from_millis(2_001),
                parent_expires_at
            })
        );
        assert_eq!(policy.authorize_roll(&caller, &sooner), Ok(()));
        assert_eq!(MintPolicy::Spec.authorize_roll(&caller, &forever), Ok(()));
    }

    #[test]
    fn attenuated_child_may_expire_with_its_parent_but_not_after() {
        let parent = crate::testing::example_record(); // expires at 2 000
        let caller = Principal::of_record(&parent);
        let scopes = Scopes::grant(crate::Resource::Devboxes, crate::Access::Read);
        let child = |expires: i64| {
            let expires = Some(UnixMillis::from_millis(expires));
            MintRequest::restricted(None, scopes, expires, UnixMillis::EPOCH).unwrap()
        };
        let caller = crate::keyring::Principal::new(
            caller.id(),
            caller.kind(),
            caller.scopes() | Scopes::grant(crate::Resource::Account, crate::Access::Write),
            caller.expires_at(),
        );
        let policy = MintPolicy::Attenuating;
        assert_eq!(policy.authorize(&caller, &child(1_999)), Ok(()));
        assert_eq!(policy.authorize(&caller, &child(2_000)), Ok(()));
        assert_eq!(
            policy.authorize(&caller, &child(2_001)),
            Err(MintError::ChildOutlivesParent {
                expires_at: UnixMillis::from_millis(2_001),
                parent_expires_at: UnixMillis::from_millis(2_000)
            })
        );
    }
}
