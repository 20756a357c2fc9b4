//! Sans-IO API-key authorization for the Runloop API Keys model.
//!
//! keygate parses `ak_`/`rk_` tokens, verifies their blake3-peppered secrets
//! in constant time and answers `can(key, resource, access)` on the request
//! hot path. It does no I/O: the caller passes the time (`now`, Unix
//! milliseconds) and the entropy (any [`rand_core::CryptoRng`]).
//!
//! * [`Scopes`], [`Resource`], [`Access`]: the scope model (a bitset).
//! * [`Token`], [`KeyId`], [`KeyKind`]: the token format.
//! * [`Pepper`], [`SecretHash`], [`SecretToken`]: secrets and their digests.
//! * [`KeyRecord`], [`Principal`], [`Keyring`]: storage and the hot path.
//! * [`MintRequest`], [`MintPolicy`], [`mint()`]: making keys.
//! * [`roll()`], [`Change`], [`lineage`]: the key lifecycle: rotation with
//!   an overlap, a change feed that keeps keyrings in step with a store,
//!   and who minted whom.
//! * [`RouteTable`], [`Decision`]: method and path to a scope ([`route`]).
//! * [`wire`]: the spec's JSON types.
//! * [`Error`] and friends: each knows its HTTP status.
//!
//! ```
//! use keygate::{Access, Keyring, MintRequest, Pepper, Resource};
//! use rand_core::SeedableRng;
//!
//! let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(1); // or keygate::os_entropy()
//! let mut keyring = Keyring::new(Pepper::generate(&mut rng));
//! let request = MintRequest::restricted(Some("ci"), "devboxes:write".parse()?, None, keygate::UnixMillis::from_millis(0))?;
//! let (record, token) = keygate::mint(keyring.pepper(), &request, &mut rng, keygate::UnixMillis::from_millis(0)).into_parts();
//! keyring.insert(record)?;
//! assert!(keyring.authorize(token.expose_secret(), Resource::Devboxes, Access::Read, keygate::UnixMillis::from_millis(1)).is_ok());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Features
//! * `std` (default): [`os_entropy`], and runtime CPU detection in crc32fast
//!   and blake3. Without it the crate is `no_std` with `alloc`.
//! * `tower`: a tower layer that enforces `can(resource, access)` on a
//!   route, with 401/403 problem+json answers (implies `std`).
#![no_std]
#![cfg_attr(docsrs, feature(doc_auto_cfg))]

extern crate alloc;
#[cfg(feature = "std")]
extern crate std;

mod error;
mod feed;
mod key;
mod keyring;
pub mod lineage;
mod mint;
mod roll;
pub mod route;
mod scope;
mod secret;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
mod time;
mod token;
#[cfg(feature = "tower")]
pub mod tower;
pub mod wire;

pub use error::Error;
pub use feed::{Applied, Change, ChangeOp};
pub use key::{KeyRecord, KeyRecordParts, RecordError};
pub use keyring::{AuthError, Keyring, KeyringError, Principal};
pub use mint::{
    mint, MintError, MintPolicy, MintRequest, MintedKey, ValidationError, DEFAULT_KEY_NAME,
    MAX_NAME_LEN,
};
pub use roll::{roll, RollError, RolledKey};
pub use route::{Decision, PathError, Rejection, RouteParseError, RouteTable};
pub use scope::{Access, Resource, ScopeParseError, Scopes, ScopesIter};
#[cfg(feature = "std")]
pub use secret::{os_entropy, OsEntropy};
pub use secret::{Pepper, SecretHash, FINGERPRINT_CONTEXT, PEPPER_CONTEXT, PEPPER_LEN};
pub use time::UnixMillis;
pub use token::{
    redact_tokens, KeyId, KeyKind, SecretToken, Token, TokenError, CHECKSUM_LEN, KEY_ID_LEN,
    PREFIX_LEN, SECRET_LEN, TOKEN_LEN, TOKEN_REGEX,
};

/// The README's examples, compiled as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
