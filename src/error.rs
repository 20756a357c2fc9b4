//! Errors. Each knows its HTTP status ([`Error::http_status`]), so a server
//! never re-derives it. Messages are lowercase, name the rule that failed and
//! quote user input in backticks, but never a token or a secret.

use alloc::string::String;

use thiserror::Error;

use crate::scope::{Access, Resource};
use crate::token::{KeyId, TOKEN_LEN};

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

/// An invalid scope list in the text form (`devboxes:write,objects:read`).
///
/// ```
/// let err = "devboxes:root".parse::<keygate::Scopes>().unwrap_err();
/// assert_eq!(err.to_string(), "unknown access level `root` in scope list");
/// assert_eq!(err.http_status(), 400);
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum ScopeParseError {
    /// A resource name that is not one of the nine.
    #[error("unknown resource `{0}` in scope list")]
    UnknownResource(String),
    /// An access level other than `none`, `read` or `write`.
    #[error("unknown access level `{0}` in scope list")]
    UnknownAccess(String),
    /// An item without the `:` between resource and access level.
    #[error("scope `{0}` lacks `:access`; write it as `resource:access`")]
    MissingAccess(String),
    /// The same resource listed twice.
    #[error("resource `{0}` appears twice in scope list")]
    DuplicateResource(Resource),
}

impl ScopeParseError {
    /// Always 400: the input is invalid.
    ///
    /// ```
    /// # let err = "x:read".parse::<keygate::Scopes>().unwrap_err();
    /// assert_eq!(err.http_status(), 400);
    /// ```
    pub const fn http_status(&self) -> u16 {
        400
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
#[derive(Clone, Copy, Debug, PartialEq, Eq, Error)]
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

/// Why a presented token was not accepted, or not allowed to act.
///
/// ```
/// use keygate::AuthError;
/// assert_eq!(AuthError::InvalidCredentials.http_status(), 401);
/// assert_eq!(AuthError::InvalidCredentials.to_string(), "unknown key or wrong secret");
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum AuthError {
    /// The token is malformed; see [`TokenError`].
    #[error(transparent)]
    Malformed(#[from] TokenError),
    /// The key id is unknown, or the secret is wrong. The two cases are one
    /// error on purpose: telling them apart would help guessing.
    #[error("unknown key or wrong secret")]
    InvalidCredentials,
    /// The key was valid, but its expiry has passed.
    #[error("key `{id}` expired at {expires_at_ms} ms")]
    Expired {
        /// The key's id.
        id: KeyId,
        /// When it expired, in Unix milliseconds.
        expires_at_ms: i64,
    },
    /// The key is valid but its scopes do not allow the action.
    #[error("key `{id}` lacks {resource}:{access} access")]
    InsufficientScope {
        /// The key's id.
        id: KeyId,
        /// The resource asked for.
        resource: Resource,
        /// The access level asked for.
        access: Access,
    },
}

impl AuthError {
    /// 401 when the credential is missing, malformed, unknown, wrong or
    /// expired; 403 when a valid key lacks the scope.
    ///
    /// ```
    /// use keygate::{Access, AuthError, KeyId, Resource};
    /// let id = KeyId::parse("0000000000000000")?;
    /// let e = AuthError::InsufficientScope { id, resource: Resource::Account, access: Access::Write };
    /// assert_eq!(e.http_status(), 403);
    /// # Ok::<(), keygate::TokenError>(())
    /// ```
    pub const fn http_status(&self) -> u16 {
        match self {
            AuthError::InsufficientScope { .. } => 403,
            _ => 401,
        }
    }
}

/// A create request that breaks one of the spec's rules (always 400).
///
/// ```
/// use keygate::wire::RestrictedKeyCreateParameters;
/// let err = RestrictedKeyCreateParameters::default().validate(0).unwrap_err();
/// assert_eq!(err.to_string(), "invalid scopes: the `scopes` field is required");
/// assert_eq!(err.http_status(), 400);
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Error)]
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
    /// A name with a control character (Unicode `Cc`) or a bidirectional
    /// formatting character (U+202A..U+202E, U+2066..U+2069, U+200E, U+200F,
    /// U+061C).
    #[error("name `{name}` has a control character at byte {position}")]
    NameControlCharacter {
        /// The name, with control characters escaped and cut to 64 characters.
        name: String,
        /// Byte offset of the first control character.
        position: usize,
    },
    /// A negative `expires_at_ms`.
    #[error("`expires_at_ms` is negative: `{0}`")]
    ExpiryNegative(i64),
    /// An `expires_at_ms` that is not after now.
    #[error("`expires_at_ms` `{expires_at_ms}` is not after now ({now_ms})")]
    ExpiryNotInFuture {
        /// The expiry asked for.
        expires_at_ms: i64,
        /// The time of the request.
        now_ms: i64,
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
    /// assert!(!keygate::ValidationError::ExpiryNegative(-1).is_invalid_scopes());
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
#[derive(Clone, Copy, Debug, PartialEq, Eq, Error)]
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
    #[error("a key that expires at {parent_expires_at_ms} ms may only mint keys with an `expires_at_ms` under the attenuating policy")]
    ChildMustExpire {
        /// The caller's expiry, in Unix milliseconds.
        parent_expires_at_ms: i64,
    },
    /// The child would outlive the caller.
    #[error("`expires_at_ms` `{expires_at_ms}` is later than the caller's own expiry ({parent_expires_at_ms}) under the attenuating policy")]
    ChildOutlivesParent {
        /// The expiry asked for.
        expires_at_ms: i64,
        /// The caller's expiry, in Unix milliseconds.
        parent_expires_at_ms: i64,
    },
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

/// A record whose fields break a rule of [`KeyRecord`](crate::KeyRecord),
/// as read from a store (a corrupt row, or one edited by hand).
///
/// ```
/// use keygate::RecordError;
/// # let id = keygate::testing::example_record().id();
/// let err = RecordError::StandardWithoutAllScopes { id };
/// assert_eq!(err.http_status(), 500);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum RecordError {
    /// A standard record must hold every scope.
    #[error("record `{id}` is a standard key but does not hold every scope")]
    StandardWithoutAllScopes {
        /// The record's id.
        id: KeyId,
    },
    /// A key cannot mint itself.
    #[error("record `{id}` names itself as its creator")]
    OwnCreator {
        /// The record's id.
        id: KeyId,
    },
}

impl RecordError {
    /// 500: a bad record comes from the store, not from the request.
    pub const fn http_status(&self) -> u16 {
        500
    }
}

/// A record a [`Keyring`](crate::Keyring) will not take. When it is
/// returned, nothing has changed: the keyring still holds every key it held.
///
/// ```
/// # let record = keygate::testing::example_record();
/// let mut keyring = keygate::Keyring::new(keygate::Pepper::from_bytes(&[0u8; 32]));
/// keyring.insert(record.clone())?;
/// keyring.revoke(&record.id());
/// let err = keyring.insert(record).unwrap_err();
/// assert_eq!(err.http_status(), 409);
/// let err = keygate::KeyringError::Full { max: keygate::Keyring::MAX_KEYS };
/// assert_eq!(err.to_string(), "the keyring is full: it holds at most 4194304 keys");
/// assert_eq!(err.http_status(), 503);
/// # Ok::<(), keygate::KeyringError>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum KeyringError {
    /// The id was revoked.
    #[error("key `{id}` was revoked; a revoked id never comes back")]
    Revoked {
        /// The revoked id.
        id: KeyId,
    },
    /// The keyring holds [`Keyring::MAX_KEYS`](crate::Keyring::MAX_KEYS) keys.
    #[error("the keyring is full: it holds at most {max} keys")]
    Full {
        /// The bound.
        max: usize,
    },
    /// The id's slot window is full and the digest index may not grow
    /// further for the keys it holds (see
    /// [`Keyring::MAX_KEYS`](crate::Keyring::MAX_KEYS)). With random ids
    /// this does not happen; it takes ids chosen with knowledge of the
    /// pepper.
    #[error("key id `{id}` lands in a full slot window; the keyring refuses it rather than drop a key or exceed its memory bound")]
    Crowded {
        /// The refused key's id.
        id: KeyId,
    },
}

impl KeyringError {
    /// 409 for a revoked id: the request conflicts with the key's state.
    /// 503 for `Full` and `Crowded`: not the client's fault, so not 4xx, and
    /// a state of the server that an operator resolves (revoke keys, shard,
    /// rotate the pepper), which may pass; generic clients and proxies
    /// treat 503 as "try later" already (507 is WebDAV's).
    ///
    /// ```
    /// assert_eq!(keygate::KeyringError::Full { max: 1 }.http_status(), 503);
    /// ```
    pub const fn http_status(&self) -> u16 {
        match self {
            KeyringError::Revoked { .. } => 409,
            KeyringError::Full { .. } | KeyringError::Crowded { .. } => 503,
        }
    }
}

/// A key that cannot be rolled.
///
/// ```
/// # let id = keygate::testing::example_record().id();
/// let err = keygate::RollError::Expired { id, expires_at_ms: 5 };
/// assert_eq!(err.http_status(), 409);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum RollError {
    /// The key has already expired.
    #[error("key `{id}` expired at {expires_at_ms} ms; a roll never extends a key's life")]
    Expired {
        /// The key's id.
        id: KeyId,
        /// When it expired, in Unix milliseconds.
        expires_at_ms: i64,
    },
}

impl RollError {
    /// 409: the key's state, not the request, is in the way.
    pub const fn http_status(&self) -> u16 {
        409
    }
}

/// Any keygate error, for callers that want one type.
///
/// ```
/// let err: keygate::Error = keygate::TokenError::Prefix.into();
/// assert_eq!(err.http_status(), 401);
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum Error {
    /// See [`ScopeParseError`].
    #[error(transparent)]
    Scope(#[from] ScopeParseError),
    /// See [`TokenError`].
    #[error(transparent)]
    Token(#[from] TokenError),
    /// See [`AuthError`].
    #[error(transparent)]
    Auth(#[from] AuthError),
    /// See [`ValidationError`].
    #[error(transparent)]
    Validation(#[from] ValidationError),
    /// See [`MintError`].
    #[error(transparent)]
    Mint(#[from] MintError),
    /// A bad stored record.
    #[error(transparent)]
    Record(#[from] RecordError),
    /// A record the keyring refused.
    #[error(transparent)]
    Keyring(#[from] KeyringError),
    /// A key that cannot be rolled.
    #[error(transparent)]
    Roll(#[from] RollError),
    /// See [`RouteParseError`](crate::RouteParseError).
    #[error(transparent)]
    RouteParse(#[from] crate::route::RouteParseError),
    /// See [`RouteError`](crate::RouteError) (a refused path converts too).
    #[error(transparent)]
    Route(#[from] crate::route::RouteError),
}

impl From<crate::route::PathError> for Error {
    fn from(e: crate::route::PathError) -> Error {
        Error::Route(e.into())
    }
}

impl Error {
    /// The HTTP status that answers this error: 400, 401, 403, 409, 500 or 503.
    ///
    /// ```
    /// let err: keygate::Error = keygate::ValidationError::NoAccessGranted.into();
    /// assert_eq!(err.http_status(), 400);
    /// ```
    pub const fn http_status(&self) -> u16 {
        match self {
            Error::Scope(e) => e.http_status(),
            Error::Token(e) => e.http_status(),
            Error::Auth(e) => e.http_status(),
            Error::Validation(e) => e.http_status(),
            Error::Mint(e) => e.http_status(),
            Error::Record(e) => e.http_status(),
            Error::Keyring(e) => e.http_status(),
            Error::Roll(e) => e.http_status(),
            Error::RouteParse(e) => e.http_status(),
            Error::Route(e) => e.http_status(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let token = crate::token::example_token();
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

    #[test]
    fn messages_are_lowercase() {
        let errors: [&dyn core::fmt::Display; 6] = [
            &TokenError::Checksum,
            &AuthError::InvalidCredentials,
            &ValidationError::ScopesMissing,
            &MintError::MissingAccountWrite,
            &ScopeParseError::UnknownResource("x".into()),
            &ValidationError::ExpiryNegative(-5),
        ];
        for e in errors {
            let s = alloc::string::ToString::to_string(e);
            assert!(s.starts_with(|c: char| !c.is_uppercase()), "{s}");
        }
    }

    fn some_id() -> KeyId {
        KeyId::parse("0000000000000000").unwrap()
    }

    #[test]
    fn every_error_answers_its_status() {
        let id = some_id();
        let cases: [(Error, u16); 12] = [
            (
                ScopeParseError::DuplicateResource(Resource::Agents).into(),
                400,
            ),
            (TokenError::Checksum.into(), 401),
            (TokenError::Length { len: 3 }.into(), 401),
            (AuthError::InvalidCredentials.into(), 401),
            (
                AuthError::Expired {
                    id,
                    expires_at_ms: 1,
                }
                .into(),
                401,
            ),
            (
                AuthError::InsufficientScope {
                    id,
                    resource: Resource::Account,
                    access: Access::Write,
                }
                .into(),
                403,
            ),
            (ValidationError::NoAccessGranted.into(), 400),
            (MintError::ScopesExceedCaller.into(), 403),
            (RecordError::OwnCreator { id }.into(), 500),
            (KeyringError::Revoked { id }.into(), 409),
            (
                RollError::Expired {
                    id,
                    expires_at_ms: 5,
                }
                .into(),
                409,
            ),
            (AuthError::Malformed(TokenError::Prefix).into(), 401),
        ];
        for (error, status) in cases {
            assert_eq!(error.http_status(), status, "{error}");
        }
        assert_eq!(
            ScopeParseError::UnknownResource("x".into()).http_status(),
            400
        );
        assert_eq!(TokenError::Separator.http_status(), 401);
        assert_eq!(ValidationError::ScopesMissing.http_status(), 400);
        assert_eq!(MintError::MissingAccountWrite.http_status(), 403);
        assert_eq!(
            RecordError::StandardWithoutAllScopes { id }.http_status(),
            500
        );
        assert_eq!(KeyringError::Revoked { id }.http_status(), 409);
        assert_eq!(
            RollError::Expired {
                id,
                expires_at_ms: 0
            }
            .http_status(),
            409
        );
    }

    #[test]
    fn invalid_scopes_are_exactly_the_scope_rules() {
        let scope_errors = [
            ValidationError::ScopesMissing,
            ValidationError::ScopeEntryIncomplete {
                index: 0,
                field: "resource_type",
            },
            ValidationError::DuplicateResource(Resource::Objects),
            ValidationError::NoAccessGranted,
        ];
        for e in scope_errors {
            assert!(e.is_invalid_scopes(), "{e}");
        }
        let other_errors = [
            ValidationError::NameTooLong { len: 300, max: 256 },
            ValidationError::NameControlCharacter {
                name: "a".into(),
                position: 1,
            },
            ValidationError::ExpiryNegative(-1),
            ValidationError::ExpiryNotInFuture {
                expires_at_ms: 1,
                now_ms: 2,
            },
        ];
        for e in other_errors {
            assert!(!e.is_invalid_scopes(), "{e}");
        }
    }
}
