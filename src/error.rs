//! The umbrella [`Error`]. Each error type lives with its domain (token,
//! scope, keyring, mint, roll, key, route) and knows its HTTP status, so a
//! server never re-derives it. Messages are lowercase, name the rule that
//! failed and quote user input in backticks, but never a token or a secret.

use thiserror::Error;

use crate::key::RecordError;
use crate::keyring::{AuthError, KeyringError};
use crate::limit::{LimitError, Refusal};
use crate::mint::{MintError, ValidationError};
use crate::roll::RollError;
use crate::scope::ScopeParseError;
use crate::token::TokenError;

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
    /// See [`Rejection`](crate::Rejection) (a refused path converts too).
    #[error(transparent)]
    Rejection(#[from] crate::route::Rejection),
    /// A bad rate limit or credit configuration.
    #[error(transparent)]
    Limit(#[from] LimitError),
    /// A request the rate limit or the credits refused.
    #[error(transparent)]
    Refused(#[from] Refusal),
}

impl From<crate::route::PathError> for Error {
    fn from(e: crate::route::PathError) -> Error {
        Error::Rejection(e.into())
    }
}

impl Error {
    /// The HTTP status that answers this error: 400, 401, 403, 409, 429, 500 or 503.
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
            Error::Rejection(e) => e.http_status(),
            Error::Limit(e) => e.http_status(),
            Error::Refused(e) => e.http_status(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scope::{Access, Resource};
    use crate::token::KeyId;
    use crate::UnixMillis;

    #[test]
    fn messages_are_lowercase() {
        let errors: [&dyn core::fmt::Display; 6] = [
            &TokenError::Checksum,
            &AuthError::InvalidCredentials,
            &ValidationError::ScopesMissing,
            &MintError::MissingAccountWrite,
            &ScopeParseError::UnknownResource("x".into()),
            &ValidationError::ExpiryNegative(UnixMillis::from_millis(-5)),
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
                    expires_at: UnixMillis::from_millis(1),
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
                    expires_at: UnixMillis::from_millis(5),
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
                expires_at: UnixMillis::EPOCH
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
            ValidationError::ExpiryNegative(UnixMillis::from_millis(-1)),
            ValidationError::ExpiryNotInFuture {
                expires_at: UnixMillis::from_millis(1),
                now: UnixMillis::from_millis(2),
            },
        ];
        for e in other_errors {
            assert!(!e.is_invalid_scopes(), "{e}");
        }
    }
}
