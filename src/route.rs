//! Route policy: map a request's method and path to a scope.
//!
//! A gateway is not asked "can this key write devboxes?"; it sees
//! `POST /v1/devboxes/dbx_123/execute` with a bearer token. A [`RouteTable`]
//! turns the method and path into a [`Decision`] — a scope, `public` or
//! `deny` — and [`RouteTable::authorize_request`] does the whole check in
//! one call: canonicalize the path (400), decide the route (403 for `deny`
//! or no match), authenticate (401) and require the scope (403).
//!
//! * [`RouteTable`]: the text format, the parser and the matcher.
//! * [`CanonicalPath`]: the path-safety rules, one set for every caller.
//! * [`Rejection`], [`PathError`], [`RouteParseError`]: each knows its status.
//!
//! ```
//! use keygate::{Keyring, MintRequest, Pepper, RouteTable};
//! use rand_core::SeedableRng;
//!
//! let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(1);
//! let mut keyring = Keyring::new(Pepper::generate(&mut rng));
//! let request = MintRequest::restricted(None, "devboxes:read".parse()?, None, keygate::UnixMillis::from_millis(0))?;
//! let (record, token) = keygate::mint(keyring.pepper(), &request, &mut rng, keygate::UnixMillis::from_millis(0)).into_parts();
//! keyring.insert(record)?;
//! let token = Some(token.expose_secret().as_bytes());
//!
//! let table: RouteTable = "GET /v1/devboxes/** devboxes:read\nPOST /v1/devboxes/** devboxes:write\nGET /healthz public".parse()?;
//! let ok = table.authorize_request(&keyring, token, b"GET", b"/v1/devboxes/dbx_1", keygate::UnixMillis::from_millis(10))?;
//! assert!(ok.principal().is_some());
//! let err = table.authorize_request(&keyring, token, b"POST", b"/v1/devboxes/dbx_1/execute", keygate::UnixMillis::from_millis(10)).unwrap_err();
//! assert_eq!(err.http_status(), 403);
//! let err = table.authorize_request(&keyring, token, b"GET", b"/v1/devboxes/%2e%2e/x", keygate::UnixMillis::from_millis(10)).unwrap_err();
//! assert_eq!(err.http_status(), 400);
//! assert!(table.authorize_request(&keyring, None, b"GET", b"/healthz", keygate::UnixMillis::from_millis(10))?.principal().is_none());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod explain;
mod path;
mod syntax;
mod trie;

pub use explain::{Candidate, Explanation};
pub use path::{CanonicalPath, PathError, Segment, Segments};
pub use syntax::{
    Decision, Method, RouteParseError, RouteParseErrorKind, Rule, MAX_PATTERN_SEGMENTS,
};
pub use trie::{MatchedBy, RouteMatch, RouteTable};

use thiserror::Error;

use crate::keyring::{AuthError, Keyring, Principal};
use crate::time::UnixMillis;

/// A source of keys that checks a presented token at a given time: a
/// [`Keyring`], a reference, an `Arc` or (with `std`) an `RwLock` of one, or
/// your own type (keygate's server falls back to its database).
///
/// ```
/// use keygate::route::Authenticate;
/// let keyring = keygate::Keyring::new(keygate::Pepper::from_bytes(&[0u8; 32]));
/// assert!(Authenticate::authenticate(&keyring, b"ak_x", keygate::UnixMillis::from_millis(0)).is_err());
/// ```
pub trait Authenticate {
    /// Verifies `token` (the raw bearer token) at `now`, Unix milliseconds.
    fn authenticate(&self, token: &[u8], now: UnixMillis) -> Result<Principal, AuthError>;
}

impl Authenticate for Keyring {
    #[inline]
    fn authenticate(&self, token: &[u8], now: UnixMillis) -> Result<Principal, AuthError> {
        Keyring::authenticate(self, token, now)
    }
}

#[cfg(feature = "std")]
impl<A: Authenticate + ?Sized> Authenticate for std::sync::RwLock<A> {
    /// Takes the read lock (a poisoned lock still reads: the keyring has
    /// no invariant a panicking writer could break halfway).
    #[inline]
    fn authenticate(&self, token: &[u8], now: UnixMillis) -> Result<Principal, AuthError> {
        self.read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .authenticate(token, now)
    }
}

#[cfg(target_has_atomic = "ptr")]
impl<A: Authenticate + ?Sized> Authenticate for alloc::sync::Arc<A> {
    #[inline]
    fn authenticate(&self, token: &[u8], now: UnixMillis) -> Result<Principal, AuthError> {
        (**self).authenticate(token, now)
    }
}

impl<A: Authenticate + ?Sized> Authenticate for &A {
    #[inline]
    fn authenticate(&self, token: &[u8], now: UnixMillis) -> Result<Principal, AuthError> {
        (**self).authenticate(token, now)
    }
}

/// Why a request was refused, by [`RouteTable::authorize_request`] or by
/// the tower layer: 400, 401 or 403. The one rejection type of keygate.
///
/// ```
/// use keygate::{AuthError, PathError, Rejection};
/// assert_eq!(Rejection::from(PathError::NotAbsolute).http_status(), 400);
/// assert_eq!(Rejection::MissingCredential.http_status(), 401);
/// assert_eq!(Rejection::Denied { line: 3 }.http_status(), 403);
/// assert_eq!(Rejection::Denied { line: 3 }.to_string(), "the route table denies this request (line 3)");
/// assert_eq!(Rejection::from(AuthError::InvalidCredentials).http_status(), 401);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum Rejection {
    /// The method or path was refused before matching (400).
    #[error(transparent)]
    Path(#[from] PathError),
    /// A `deny` rule (or `default deny`) matched (403).
    #[error("the route table denies this request (line {line})")]
    Denied {
        /// The deciding line.
        line: u32,
    },
    /// No rule matched and the table has no `default` (403).
    #[error("no route matches this request")]
    Unmatched,
    /// The route needs a key and none was presented (401).
    #[error("missing `Authorization: Bearer` credential")]
    MissingCredential,
    /// An `Authorization` header that is not one `Bearer <token>` (401).
    #[error("the `Authorization` header is not a bearer credential")]
    NotBearer,
    /// The key was refused (401) or lacks the route's scope (403).
    #[error(transparent)]
    Auth(#[from] AuthError),
}

impl Rejection {
    /// 400 for a refused path, 401 for a missing or refused key, 403 for a
    /// denied route or a key without the scope.
    ///
    /// ```
    /// assert_eq!(keygate::Rejection::Unmatched.http_status(), 403);
    /// ```
    pub const fn http_status(&self) -> u16 {
        match self {
            Rejection::Path(e) => e.http_status(),
            Rejection::Denied { .. } | Rejection::Unmatched => 403,
            Rejection::MissingCredential | Rejection::NotBearer => 401,
            Rejection::Auth(e) => e.http_status(),
        }
    }

    /// The key id the rejection names, if any (an expired key, or one that
    /// lacks the scope). Public information, safe to log.
    ///
    /// ```
    /// assert!(keygate::Rejection::NotBearer.key_id().is_none());
    /// ```
    pub fn key_id(&self) -> Option<crate::token::KeyId> {
        match self {
            Rejection::Auth(AuthError::Expired { id, .. })
            | Rejection::Auth(AuthError::InsufficientScope { id, .. }) => Some(*id),
            _ => None,
        }
    }
}

/// A request [`RouteTable::authorize_request`] let through.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Authorized<'t> {
    principal: Option<Principal>,
    route: RouteMatch<'t>,
}

impl<'t> Authorized<'t> {
    /// The verified key; `None` on a `public` route.
    pub fn principal(&self) -> Option<Principal> {
        self.principal
    }

    /// The route decision and the rule that made it.
    pub fn route(&self) -> RouteMatch<'t> {
        self.route
    }
}

impl RouteTable {
    /// One call for a gateway: canonicalize `target` and decide the route,
    /// then, unless it is `public`, authenticate `token` against `auth` at
    /// `now` and require the route's scope. Allocates nothing.
    ///
    /// The order fixes the status: a refused path is 400 whatever the token;
    /// a `deny` or unmatched route is 403 even for a standard key (and with
    /// no key at all); a missing or refused key is 401; a key without the
    /// scope is 403. A `public` route ignores the token.
    ///
    /// ```
    /// # let keyring = keygate::Keyring::new(keygate::Pepper::from_bytes(&[0u8; 32]));
    /// let table: keygate::RouteTable = "GET /v1/objects/** objects:read".parse()?;
    /// let err = table.authorize_request(&keyring, None, b"GET", b"/v1/objects", keygate::UnixMillis::from_millis(0)).unwrap_err();
    /// assert_eq!(err, keygate::Rejection::MissingCredential);
    /// let err = table.authorize_request(&keyring, None, b"GET", b"/v1/other", keygate::UnixMillis::from_millis(0)).unwrap_err();
    /// assert_eq!(err, keygate::Rejection::Unmatched);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn authorize_request<A: Authenticate + ?Sized>(
        &self,
        auth: &A,
        token: Option<&[u8]>,
        method: &[u8],
        target: &[u8],
        now: UnixMillis,
    ) -> Result<Authorized<'_>, Rejection> {
        let route = self.lookup(method, target)?;
        let (resource, access) = match route.decision() {
            Decision::Public => {
                return Ok(Authorized {
                    principal: None,
                    route,
                })
            }
            Decision::Deny => {
                return Err(match route.line() {
                    Some(line) => Rejection::Denied { line },
                    None => Rejection::Unmatched,
                })
            }
            Decision::Scope(resource, access) => (resource, access),
        };
        let principal = auth.authenticate(token.ok_or(Rejection::MissingCredential)?, now)?;
        principal.require(resource, access)?;
        Ok(Authorized {
            principal: Some(principal),
            route,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mint::{mint, MintRequest};
    use crate::scope::{Access, Resource, Scopes};
    use crate::secret::Pepper;
    use alloc::string::String;
    use rand_core::SeedableRng;

    #[test]
    fn statuses_in_order() {
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(9);
        let mut keyring = Keyring::new(Pepper::generate(&mut rng));
        let mut add = |req: MintRequest| {
            let (record, token) =
                mint(keyring.pepper(), &req, &mut rng, UnixMillis::from_millis(0)).into_parts();
            keyring.insert(record).unwrap();
            String::from(token.expose_secret())
        };
        let standard = add(MintRequest::standard(None, None, UnixMillis::from_millis(0)).unwrap());
        let reader = add(MintRequest::restricted(
            None,
            Scopes::grant(Resource::Devboxes, Access::Read),
            None,
            UnixMillis::from_millis(0),
        )
        .unwrap());
        let table: RouteTable = "GET /v1/devboxes/** devboxes:read\n\
             POST /v1/devboxes/** devboxes:write\n\
             GET /healthz public\n\
             * /internal/** deny"
            .parse()
            .unwrap();
        let run = |token: Option<&str>, m: &str, p: &str| {
            table
                .authorize_request(
                    &keyring,
                    token.map(str::as_bytes),
                    m.as_bytes(),
                    p.as_bytes(),
                    UnixMillis::from_millis(5),
                )
                .map(|a| a.principal().map(|p| p.id()))
        };
        let std_id = crate::KeyId::parse(&standard[3..19]).unwrap();
        assert_eq!(
            run(Some(&standard), "POST", "/v1/devboxes/x"),
            Ok(Some(std_id))
        );
        assert!(run(Some(&reader), "GET", "/v1/devboxes/x").is_ok());
        let e = run(Some(&reader), "POST", "/v1/devboxes/x").unwrap_err();
        assert!(matches!(
            e,
            Rejection::Auth(AuthError::InsufficientScope { .. })
        ));
        assert_eq!(e.http_status(), 403);
        assert_eq!(run(None, "GET", "/healthz"), Ok(None));
        assert_eq!(run(Some("ak_garbage"), "GET", "/healthz"), Ok(None));
        // Deny and no match: 403 even for a standard key, and without one.
        assert_eq!(
            run(Some(&standard), "GET", "/internal/x"),
            Err(Rejection::Denied { line: 4 })
        );
        assert_eq!(
            run(None, "GET", "/internal/x"),
            Err(Rejection::Denied { line: 4 })
        );
        assert_eq!(
            run(Some(&standard), "GET", "/v2"),
            Err(Rejection::Unmatched)
        );
        // 401s.
        assert_eq!(
            run(None, "GET", "/v1/devboxes"),
            Err(Rejection::MissingCredential)
        );
        assert_eq!(
            run(Some("ak_garbage"), "GET", "/v1/devboxes").map_err(|e| e.http_status()),
            Err(401)
        );
        // 400 before anything else.
        for p in [
            "/v1/devboxes/..%2Finternal",
            "/internal/../x",
            "/v1//devboxes",
        ] {
            assert_eq!(
                run(Some(&standard), "GET", p).map_err(|e| e.http_status()),
                Err(400),
                "{p}"
            );
        }
    }
}
