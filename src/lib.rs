//! Sans-IO API-key authorization for the Runloop API Keys model.
//!
//! keygate parses `ak_`/`rk_` tokens, verifies their blake3-peppered secrets
//! in constant time and answers "may this key do that?" on the request hot
//! path. It does no I/O: the caller passes the time (a [`UnixMillis`]) and
//! the entropy (any [`rand_core::CryptoRng`]).
//!
//! # The public API
//!
//! | Concern | Items |
//! |---|---|
//! | scopes | [`Scopes`], [`Resource`], [`Access`], [`ScopeParseError`] |
//! | tokens | [`Token::parse`], [`KeyId`], [`KeyKind`], [`SecretToken`], [`TokenError`], [`redact_tokens`], the `*_LEN` constants, [`TOKEN_REGEX`] |
//! | secrets | [`Pepper`], [`SecretHash`], [`os_entropy`] (`std`), [`PEPPER_CONTEXT`], [`FINGERPRINT_CONTEXT`] |
//! | time | [`UnixMillis`] (instants), [`core::time::Duration`] (overlaps) |
//! | records | [`KeyRecord`], [`KeyRecordParts`], [`RecordError`] |
//! | the hot path | [`Keyring::authenticate`], [`Keyring::authorize`], [`Principal`] (with [`Principal::can`]), [`AuthError`], [`KeyringError`] |
//! | making keys | [`mint()`], [`MintRequest`], [`MintPolicy`], [`MintedKey`], [`MintError`], [`ValidationError`] |
//! | limits | [`Limiter`] ([`Limiter::check`] → [`Verdict`], [`Refusal`]), [`KeyLimits`], [`RateLimit`], [`Credits`], [`Refill`], [`LimitError`]; the states [`RateState`], [`CreditCell`], [`CreditBalance`] |
//! | lifecycle | [`roll()`], [`RolledKey`], [`RollError`], [`Change`] and [`Keyring::apply`], [`lineage`] |
//! | routes | [`RouteTable`] ([`RouteTable::lookup`], [`RouteTable::authorize_request`]), [`Decision`], [`Rejection`], [`route`] |
//! | HTTP | `tower::Require` (one layer, a fixed scope or a route table; feature `tower`) |
//! | JSON | [`wire`]: the spec's request and view types, `CreatedKeyView::from(minted)` |
//! | errors | [`Error`]: any of the above; each error knows its HTTP status |
//! | fixtures | `testing` (feature `testing`): example records, tokens and principals |
//!
//! `public-api.txt` at the repository root lists every item
//! (`scripts/public-api.sh`).
//!
//! ```
//! use keygate::{Access, Keyring, MintRequest, Pepper, Resource, UnixMillis};
//! use rand_core::SeedableRng;
//!
//! let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(1); // or keygate::os_entropy()
//! let mut keyring = Keyring::new(Pepper::generate(&mut rng));
//! let now = UnixMillis::from_millis(1_700_000_000_000); // or UnixMillis::now()
//! let request = MintRequest::restricted(Some("ci"), "devboxes:write".parse()?, None, now)?;
//! let (record, token) = keygate::mint(keyring.pepper(), &request, &mut rng, now).into_parts();
//! keyring.insert(record)?;
//! assert!(keyring.authorize(token.expose_secret(), Resource::Devboxes, Access::Read, now).is_ok());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Features
//! * `std` (default): [`os_entropy`], [`UnixMillis::now`], and runtime CPU
//!   detection in crc32fast and blake3. Without it the crate is `no_std`
//!   with `alloc`.
//! * `tower`: the tower layer `tower::Require`, with 400/401/403
//!   problem+json answers (implies `std`).
//! * `testing`: the fixtures of `keygate::testing`.
#![no_std]
#![cfg_attr(docsrs, feature(doc_auto_cfg))]

extern crate alloc;
#[cfg(feature = "std")]
extern crate std;

mod error;
mod feed;
mod key;
mod keyring;
mod limit;
pub mod lineage;
mod mint;
mod object;
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
pub use keyring::{AuthError, Keyring, KeyringEntry, KeyringError, Principal};
pub use limit::{
    CreditBalance, CreditCell, CreditDecision, Credits, KeyLimits, LimitError, Limiter, Meter,
    RateDecision, RateLimit, RateState, Refill, Refusal, Verdict, MAX_CREDITS, MAX_RATE_LIMIT,
    MAX_RATE_PERIOD, MIN_REFILL_INTERVAL,
};
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

/// `docs/lifecycle.md`'s examples, compiled as doctests.
#[cfg(doctest)]
#[doc = include_str!("../docs/lifecycle.md")]
pub struct LifecycleDocDoctests;

/// `docs/limits.md`'s examples, compiled as doctests.
#[cfg(doctest)]
#[doc = include_str!("../docs/limits.md")]
pub struct LimitsDocDoctests;

/// `docs/gateway.md`'s examples (the tower layers; `ignore`d, as in the README before).
#[cfg(doctest)]
#[doc = include_str!("../docs/gateway.md")]
pub struct GatewayDocDoctests;
