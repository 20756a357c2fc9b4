//! The spec's wire types (`components/schemas` of `openapi.yaml`).
//!
//! Field names, optionality and enum names are the spec's exactly. Objects
//! have `additionalProperties: false`, so they deny unknown fields. Fields
//! that the spec does not mark `nullable` reject `null`.
//!
//! Deserializing checks types; [`ApiKeyCreateParameters::validate`] and
//! [`RestrictedKeyCreateParameters::validate`] check the rules and return a
//! [`MintRequest`].

use alloc::string::String;
use alloc::vec::Vec;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::limit::{Credits, KeyLimits, RateLimit};
use crate::mint::{MintRequest, MintedKey, ValidationError};
use crate::object::object_serde;
use crate::scope::{Access, Resource, Scopes};
use crate::time::UnixMillis;
use crate::token::{KeyKind, SecretToken};

/// Deserializes a present, non-null value into `Some`.
fn non_null<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Option<T>, D::Error> {
    T::deserialize(d).map(Some)
}

/// Serializes a token; the one place a created view exposes it.
fn expose_token<S: Serializer>(token: &SecretToken, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(token.expose_secret())
}

object_serde!(
    ApiKeyCreateParameters,
    RestrictedKeyCreateParameters,
    ScopeEntryView,
    ApiKeyCreatedView,
    RestrictedKeyCreatedView
);

/// Body of `POST /v1/apikeys` (`ApiKeyCreateParameters`).
///
/// ```
/// use keygate::wire::ApiKeyCreateParameters;
/// let params: ApiKeyCreateParameters = serde_json::from_str(r#"{"name":"ops","expires_at_ms":null}"#)?;
/// let request = params.validate(keygate::UnixMillis::from_millis(1_000))?;
/// assert_eq!(request.name(), "ops");
/// assert!(serde_json::from_str::<ApiKeyCreateParameters>(r#"{"nam":"x"}"#).is_err());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(remote = "Self", deny_unknown_fields)]
pub struct ApiKeyCreateParameters {
    /// The key's name; [`DEFAULT_KEY_NAME`](crate::DEFAULT_KEY_NAME) if absent.
    #[serde(
        default,
        deserialize_with = "non_null",
        skip_serializing_if = "Option::is_none"
    )]
    pub name: Option<String>,
    /// Expiry in Unix milliseconds; absent or `null` never expires.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at_ms: Option<i64>,
    /// keygate's extension: a rate limit, `{"limit": 100, "period_ms": 1000}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimit>,
    /// keygate's extension: credits, `{"remaining": 5000, "refill": {"amount": 5000, "interval_ms": 2592000000}}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credits: Option<Credits>,
}

impl ApiKeyCreateParameters {
    /// Checks the name and expiry rules at `now`.
    ///
    /// ```
    /// use keygate::wire::ApiKeyCreateParameters;
    /// let p = ApiKeyCreateParameters { expires_at_ms: Some(-1), ..Default::default() };
    /// assert_eq!(p.validate(keygate::UnixMillis::from_millis(0)).unwrap_err().to_string(), "`expires_at_ms` is negative: `-1`");
    /// ```
    pub fn validate(&self, now: UnixMillis) -> Result<MintRequest, ValidationError> {
        let expires_at = self.expires_at_ms.map(UnixMillis::from_millis);
        Ok(
            MintRequest::standard(self.name.as_deref(), expires_at, now)?
                .with_limits(self.limits()),
        )
    }

    /// The extension fields `rate_limit` and `credits`, together.
    pub fn limits(&self) -> KeyLimits {
        KeyLimits {
            rate: self.rate_limit,
            credits: self.credits,
        }
    }
}

/// Body of `POST /v1/restricted_keys` (`RestrictedKeyCreateParameters`).
///
/// ```
/// use keygate::wire::RestrictedKeyCreateParameters;
/// let params: RestrictedKeyCreateParameters = serde_json::from_str(r#"{
///     "name": "ci",
///     "scopes": [
///         {"resource_type": "RESOURCE_TYPE_DEVBOXES", "access_level": "ACCESS_LEVEL_WRITE"},
///         {"resource_type": "RESOURCE_TYPE_OBJECTS", "access_level": "ACCESS_LEVEL_NONE"}
///     ]
/// }"#)?;
/// let request = params.validate(keygate::UnixMillis::from_millis(0))?;
/// assert_eq!(request.scopes().to_string(), "devboxes:write");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(remote = "Self", deny_unknown_fields)]
pub struct RestrictedKeyCreateParameters {
    /// The key's name; [`DEFAULT_KEY_NAME`](crate::DEFAULT_KEY_NAME) if absent.
    #[serde(
        default,
        deserialize_with = "non_null",
        skip_serializing_if = "Option::is_none"
    )]
    pub name: Option<String>,
    /// The grants. Required by validation, although the schema lets it be absent.
    #[serde(
        default,
        deserialize_with = "non_null",
        skip_serializing_if = "Option::is_none"
    )]
    pub scopes: Option<Vec<ScopeEntryView>>,
    /// Expiry in Unix milliseconds; absent or `null` never expires.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at_ms: Option<i64>,
    /// keygate's extension: a rate limit, `{"limit": 100, "period_ms": 1000}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimit>,
    /// keygate's extension: credits, `{"remaining": 5000, "refill": {"amount": 5000, "interval_ms": 2592000000}}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credits: Option<Credits>,
}

impl RestrictedKeyCreateParameters {
    /// Checks every rule at `now`: invalid scopes (absent, an entry that
    /// lacks a field, a resource twice, nothing granted), then the name, then
    /// the expiry.
    ///
    /// ```
    /// use keygate::wire::{RestrictedKeyCreateParameters, ScopeEntryView};
    /// use keygate::{Access, Resource, ValidationError};
    /// let entry = ScopeEntryView::new(Resource::Agents, Access::Read);
    /// let p = RestrictedKeyCreateParameters { scopes: Some(vec![entry, entry]), ..Default::default() };
    /// assert_eq!(p.validate(keygate::UnixMillis::from_millis(0)), Err(ValidationError::DuplicateResource(Resource::Agents)));
    /// ```
    pub fn validate(&self, now: UnixMillis) -> Result<MintRequest, ValidationError> {
        let entries = self
            .scopes
            .as_deref()
            .ok_or(ValidationError::ScopesMissing)?;
        let mut scopes = Scopes::empty();
        let mut seen = 0u16;
        for (index, entry) in entries.iter().enumerate() {
            let resource = entry
                .resource_type
                .ok_or(ValidationError::ScopeEntryIncomplete {
                    index,
                    field: "resource_type",
                })?;
            let access = entry
                .access_level
                .ok_or(ValidationError::ScopeEntryIncomplete {
                    index,
                    field: "access_level",
                })?;
            let bit = 1u16 << resource as u16;
            if seen & bit != 0 {
                return Err(ValidationError::DuplicateResource(resource));
            }
            seen |= bit;
            scopes = scopes.with(resource, access);
        }
        if scopes.is_empty() {
            return Err(ValidationError::NoAccessGranted);
        }
        let expires_at = self.expires_at_ms.map(UnixMillis::from_millis);
        Ok(
            MintRequest::restricted(self.name.as_deref(), scopes, expires_at, now)?
                .with_limits(self.limits()),
        )
    }

    /// The extension fields `rate_limit` and `credits`, together.
    pub fn limits(&self) -> KeyLimits {
        KeyLimits {
            rate: self.rate_limit,
            credits: self.credits,
        }
    }
}

/// One grant on the wire (`ScopeEntryView`). Both fields are optional in
/// the schema; validation requires them.
///
/// ```
/// use keygate::wire::ScopeEntryView;
/// use keygate::{Access, Resource};
/// let json = serde_json::to_string(&ScopeEntryView::new(Resource::Objects, Access::Read))?;
/// assert_eq!(json, r#"{"resource_type":"RESOURCE_TYPE_OBJECTS","access_level":"ACCESS_LEVEL_READ"}"#);
/// # Ok::<(), serde_json::Error>(())
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(remote = "Self", deny_unknown_fields)]
pub struct ScopeEntryView {
    /// The resource.
    #[serde(
        default,
        deserialize_with = "non_null",
        skip_serializing_if = "Option::is_none"
    )]
    pub resource_type: Option<Resource>,
    /// The access level on it.
    #[serde(
        default,
        deserialize_with = "non_null",
        skip_serializing_if = "Option::is_none"
    )]
    pub access_level: Option<Access>,
}

impl ScopeEntryView {
    /// An entry with both fields set.
    ///
    /// ```
    /// let e = keygate::wire::ScopeEntryView::new(keygate::Resource::Account, keygate::Access::Write);
    /// assert_eq!(e.access_level, Some(keygate::Access::Write));
    /// ```
    pub const fn new(resource: Resource, access: Access) -> ScopeEntryView {
        ScopeEntryView {
            resource_type: Some(resource),
            access_level: Some(access),
        }
    }
}

/// The granted scopes as wire entries: the non-NONE grants, in spec order.
///
/// ```
/// let entries = keygate::wire::scope_entries("objects:read,devboxes:write".parse()?);
/// assert_eq!(entries.len(), 2);
/// assert_eq!(entries[0].resource_type, Some(keygate::Resource::Devboxes));
/// # Ok::<(), keygate::ScopeParseError>(())
/// ```
pub fn scope_entries(scopes: Scopes) -> Vec<ScopeEntryView> {
    scopes
        .iter()
        .map(|(r, a)| ScopeEntryView::new(r, a))
        .collect()
}

/// The 200 response of `POST /v1/apikeys` (`ApiKeyCreatedView`).
///
/// `key_secret` is a [`SecretToken`]: the view serializes it (that is its
/// purpose, once), while `Debug` keeps it redacted.
///
/// ```
/// # let minted = keygate::testing::example_minted();
/// # let view = keygate::wire::ApiKeyCreatedView { id: "x".into(), name: "n".into(),
/// #     key_secret: minted.token().clone(), expires_at_ms: None, rate_limit: None, credits: None };
/// assert!(!format!("{view:?}").contains(view.key_secret.expose_secret()));
/// let json = serde_json::to_value(&view)?;
/// assert_eq!(json["key_secret"], view.key_secret.expose_secret());
/// assert!(json["expires_at_ms"].is_null());
/// # Ok::<(), serde_json::Error>(())
/// ```
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(remote = "Self", deny_unknown_fields)]
pub struct ApiKeyCreatedView {
    /// The key id.
    pub id: String,
    /// The key's name.
    pub name: String,
    /// The token, shown once.
    #[serde(serialize_with = "expose_token")]
    pub key_secret: SecretToken,
    /// Expiry in Unix milliseconds, or `null`.
    pub expires_at_ms: Option<i64>,
    /// keygate's extension: the rate limit, or `null`.
    #[serde(default)]
    pub rate_limit: Option<RateLimit>,
    /// keygate's extension: the credits, or `null`.
    #[serde(default)]
    pub credits: Option<Credits>,
}

/// The 200 response of `POST /v1/restricted_keys` (`RestrictedKeyCreatedView`).
/// `scopes` are the granted scopes: the non-NONE grants, in spec order.
///
/// ```
/// # let minted = keygate::testing::example_minted();
/// let keygate::wire::CreatedKeyView::Restricted(view) = keygate::wire::CreatedKeyView::from(minted) else { unreachable!() };
/// let json = serde_json::to_value(&view)?;
/// assert_eq!(json["scopes"][0]["access_level"], "ACCESS_LEVEL_WRITE");
/// # Ok::<(), serde_json::Error>(())
/// ```
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(remote = "Self", deny_unknown_fields)]
pub struct RestrictedKeyCreatedView {
    /// The key id.
    pub id: String,
    /// The key's name.
    pub name: String,
    /// The token, shown once.
    #[serde(serialize_with = "expose_token")]
    pub key_secret: SecretToken,
    /// The granted scopes.
    pub scopes: Vec<ScopeEntryView>,
    /// Expiry in Unix milliseconds, or `null`.
    pub expires_at_ms: Option<i64>,
    /// keygate's extension: the rate limit, or `null`.
    #[serde(default)]
    pub rate_limit: Option<RateLimit>,
    /// keygate's extension: the credits, or `null`.
    #[serde(default)]
    pub credits: Option<Credits>,
}

/// Either created view; serializes as the inner view.
///
/// ```
/// # let minted = keygate::testing::example_minted();
/// let view = keygate::wire::CreatedKeyView::from(minted);
/// assert_eq!(view.id().len(), 16);
/// ```
#[derive(Clone, Debug, Serialize)]
#[serde(untagged)]
pub enum CreatedKeyView {
    /// From `POST /v1/apikeys`.
    Standard(ApiKeyCreatedView),
    /// From `POST /v1/restricted_keys`.
    Restricted(RestrictedKeyCreatedView),
}

impl CreatedKeyView {
    /// The key id.
    ///
    /// ```
    /// # let minted = keygate::testing::example_minted();
    /// # let id = minted.record().id();
    /// assert_eq!(keygate::wire::CreatedKeyView::from(minted).id(), id.as_str());
    /// ```
    pub fn id(&self) -> &str {
        match self {
            CreatedKeyView::Standard(v) => &v.id,
            CreatedKeyView::Restricted(v) => &v.id,
        }
    }

    /// The token, shown once.
    ///
    /// ```
    /// # let minted = keygate::testing::example_minted();
    /// assert!(keygate::wire::CreatedKeyView::from(minted).key_secret().expose_secret().starts_with("rk_"));
    /// ```
    pub fn key_secret(&self) -> &SecretToken {
        match self {
            CreatedKeyView::Standard(v) => &v.key_secret,
            CreatedKeyView::Restricted(v) => &v.key_secret,
        }
    }
}

/// The spec's created view of a freshly minted key: [`ApiKeyCreatedView`]
/// for a standard key, [`RestrictedKeyCreatedView`] for a restricted one. It
/// carries the secret; the record stays with the caller's store.
///
/// ```
/// # let minted = keygate::testing::example_minted();
/// let view = keygate::wire::CreatedKeyView::from(minted);
/// assert!(matches!(view, keygate::wire::CreatedKeyView::Restricted(_)));
/// ```
impl From<MintedKey> for CreatedKeyView {
    fn from(minted: MintedKey) -> CreatedKeyView {
        let (record, token) = minted.into_parts();
        match record.kind() {
            KeyKind::Standard => CreatedKeyView::Standard(ApiKeyCreatedView {
                id: String::from(record.id().as_str()),
                name: String::from(record.name()),
                key_secret: token,
                expires_at_ms: record.expires_at().map(UnixMillis::as_millis),
                rate_limit: record.limits().rate,
                credits: record.limits().credits,
            }),
            KeyKind::Restricted => CreatedKeyView::Restricted(RestrictedKeyCreatedView {
                id: String::from(record.id().as_str()),
                name: String::from(record.name()),
                key_secret: token,
                scopes: scope_entries(record.scopes()),
                expires_at_ms: record.expires_at().map(UnixMillis::as_millis),
                rate_limit: record.limits().rate,
                credits: record.limits().credits,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scope::{Access, Resource};

    fn restricted(json: &str) -> Result<MintRequest, String> {
        let p: RestrictedKeyCreateParameters =
            serde_json::from_str(json).map_err(|e| alloc::format!("json: {e}"))?;
        p.validate(UnixMillis::from_millis(1_000))
            .map_err(|e| alloc::string::ToString::to_string(&e))
    }

    #[test]
    fn invalid_scopes_rules() {
        assert_eq!(
            restricted("{}").unwrap_err(),
            "invalid scopes: the `scopes` field is required"
        );
        assert_eq!(
            restricted(r#"{"scopes":[]}"#).unwrap_err(),
            "invalid scopes: the scopes grant no access"
        );
        assert_eq!(
            restricted(r#"{"scopes":[{"resource_type":"RESOURCE_TYPE_AGENTS","access_level":"ACCESS_LEVEL_NONE"}]}"#)
                .unwrap_err(),
            "invalid scopes: the scopes grant no access"
        );
        assert_eq!(
            restricted(r#"{"scopes":[{"resource_type":"RESOURCE_TYPE_AGENTS"}]}"#).unwrap_err(),
            "invalid scopes: entry 0 lacks `access_level`"
        );
        assert_eq!(
            restricted(r#"{"scopes":[{"access_level":"ACCESS_LEVEL_READ"}]}"#).unwrap_err(),
            "invalid scopes: entry 0 lacks `resource_type`"
        );
        let dup = r#"{"scopes":[
            {"resource_type":"RESOURCE_TYPE_AGENTS","access_level":"ACCESS_LEVEL_READ"},
            {"resource_type":"RESOURCE_TYPE_AGENTS","access_level":"ACCESS_LEVEL_NONE"}]}"#;
        assert_eq!(
            restricted(dup).unwrap_err(),
            "invalid scopes: `RESOURCE_TYPE_AGENTS` appears more than once"
        );
        let unknown = restricted(
            r#"{"scopes":[{"resource_type":"RESOURCE_TYPE_GADGETS","access_level":"ACCESS_LEVEL_READ"}]}"#,
        );
        assert!(unknown.unwrap_err().contains("RESOURCE_TYPE_GADGETS"));
    }

    #[test]
    fn strict_json() {
        assert!(restricted(r#"{"scopes":null}"#)
            .unwrap_err()
            .starts_with("json"));
        assert!(restricted(r#"{"name":null,"scopes":[]}"#)
            .unwrap_err()
            .starts_with("json"));
        assert!(restricted(r#"{"scopes":[{"resource_type":null}]}"#)
            .unwrap_err()
            .starts_with("json"));
        assert!(restricted(r#"{"scopes":[],"extra":1}"#)
            .unwrap_err()
            .starts_with("json"));
        assert!(restricted(r#"{"scopes":[{"resource_type":"RESOURCE_TYPE_AGENTS","access_level":"ACCESS_LEVEL_READ","x":1}]}"#)
            .unwrap_err()
            .starts_with("json"));
        assert!(
            serde_json::from_str::<ApiKeyCreateParameters>(r#"{"expires_at_ms":1.5}"#).is_err()
        );
        assert!(serde_json::from_str::<ApiKeyCreateParameters>(
            r#"{"expires_at_ms":9223372036854775808}"#
        )
        .is_err());
        assert!(
            serde_json::from_str::<ApiKeyCreateParameters>(r#"{"expires_at_ms":null}"#).is_ok()
        );
    }

    #[test]
    fn objects_only() {
        assert!(restricted("[]").unwrap_err().contains("a JSON object"));
        assert!(serde_json::from_str::<ApiKeyCreateParameters>("[]").is_err());
        assert!(serde_json::from_str::<ApiKeyCreateParameters>(r#"["x", 5]"#).is_err());
        let seq_entry = r#"{"scopes":[["RESOURCE_TYPE_AGENTS","ACCESS_LEVEL_READ"]]}"#;
        assert!(restricted(seq_entry).unwrap_err().starts_with("json"));
        assert!(serde_json::from_str::<ApiKeyCreateParameters>("{}").is_ok());
    }

    #[test]
    fn valid_request() {
        let r = restricted(
            r#"{"name":"ci","expires_at_ms":2000,"scopes":[
            {"resource_type":"RESOURCE_TYPE_OBJECTS","access_level":"ACCESS_LEVEL_READ"},
            {"resource_type":"RESOURCE_TYPE_DEVBOXES","access_level":"ACCESS_LEVEL_WRITE"}]}"#,
        )
        .unwrap();
        assert_eq!(r.name(), "ci");
        assert_eq!(r.expires_at(), Some(UnixMillis::from_millis(2000)));
        assert_eq!(
            r.scopes(),
            Scopes::grant(Resource::Devboxes, Access::Write).with(Resource::Objects, Access::Read)
        );
        assert_eq!(
            scope_entries(r.scopes()),
            [
                ScopeEntryView::new(Resource::Devboxes, Access::Write),
                ScopeEntryView::new(Resource::Objects, Access::Read)
            ]
        );
    }

    #[test]
    fn views_have_exactly_the_spec_fields_and_the_two_extensions() {
        let minted = crate::testing::example_minted();
        let v = serde_json::to_value(CreatedKeyView::from(minted)).unwrap();
        let mut keys: Vec<_> = v.as_object().unwrap().keys().cloned().collect();
        keys.sort();
        // The spec's five, and keygate's `rate_limit` and `credits` (null here).
        assert_eq!(
            keys,
            [
                "credits",
                "expires_at_ms",
                "id",
                "key_secret",
                "name",
                "rate_limit",
                "scopes"
            ]
        );
        assert!(v["rate_limit"].is_null() && v["credits"].is_null());
    }

    #[test]
    fn created_views_name_their_key() {
        let rng = &mut <rand_chacha::ChaCha20Rng as rand_core::SeedableRng>::seed_from_u64(3);
        let pepper = crate::Pepper::generate(rng);
        for request in [
            MintRequest::standard(Some("s"), None, UnixMillis::from_millis(0)).unwrap(),
            MintRequest::restricted(
                Some("r"),
                crate::Scopes::grant(Resource::Agents, Access::Read),
                None,
                UnixMillis::from_millis(0),
            )
            .unwrap(),
        ] {
            let minted = crate::mint(&pepper, &request, rng, UnixMillis::from_millis(0));
            let id = minted.record().id();
            let token = alloc::string::String::from(minted.token().expose_secret());
            let view = CreatedKeyView::from(minted);
            assert_eq!(view.id(), id.as_str());
            assert_eq!(view.key_secret().expose_secret(), token);
        }
    }
}
