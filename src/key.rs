//! Stored key records and the errors of a bad one.

use alloc::string::String;

use serde::{Deserialize, Serialize};

use crate::limit::{Credits, KeyLimits, Meter, RateLimit};
use crate::scope::Scopes;
use crate::secret::SecretHash;
use crate::time::UnixMillis;
use crate::token::{KeyId, KeyKind};

/// A record whose fields break a rule of [`KeyRecord`](crate::KeyRecord),
/// as read from a store (a corrupt row, or one edited by hand).
///
/// ```
/// use keygate::RecordError;
/// # let id = keygate::testing::example_record().id();
/// let err = RecordError::StandardWithoutAllScopes { id };
/// assert_eq!(err.http_status(), 500);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
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

/// What a store keeps for a key: everything but the secret.
///
/// It serializes with serde, secret hash included; the secret itself is
/// never part of it. A standard record always holds [`Scopes::all`];
/// deserialization (and [`KeyRecord::from_parts`]) rejects one that does
/// not. `creator_id` may be absent from the serialized form (records written
/// by keygate 0.1.0 lack it) and then reads as `None`.
///
/// ```
/// use rand_core::SeedableRng;
/// let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(3);
/// let pepper = keygate::Pepper::generate(&mut rng);
/// let request = keygate::MintRequest::restricted(Some("ci"), "objects:read".parse()?, None, keygate::UnixMillis::from_millis(0))?;
/// let record = keygate::mint(&pepper, &request, &mut rng, keygate::UnixMillis::from_millis(0)).into_parts().0;
/// let json = serde_json::to_string(&record)?;
/// assert!(json.contains("\"scopes\":\"objects:read\""));
/// let back: keygate::KeyRecord = serde_json::from_str(&json)?;
/// assert_eq!(back, record);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "RecordFields")]
pub struct KeyRecord {
    id: KeyId,
    kind: KeyKind,
    name: String,
    secret_hash: SecretHash,
    scopes: Scopes,
    #[serde(rename = "expires_at_ms")]
    expires_at: Option<UnixMillis>,
    #[serde(rename = "created_at_ms")]
    created_at: UnixMillis,
    creator_id: Option<KeyId>,
    #[serde(skip_serializing_if = "Option::is_none")]
    rate_limit: Option<RateLimit>,
    #[serde(skip_serializing_if = "Option::is_none")]
    credits: Option<Credits>,
    #[serde(skip_serializing_if = "Option::is_none")]
    meter: Option<Meter>,
}

/// A [`KeyRecord`] as separate fields, for a store that keeps records in
/// columns: build one from a row and call [`KeyRecord::from_parts`].
///
/// ```
/// # let record = keygate::testing::example_record();
/// let parts = keygate::KeyRecordParts {
///     id: record.id(),
///     kind: record.kind(),
///     name: record.name().into(),
///     secret_hash: record.secret_hash(),
///     scopes: record.scopes(),
///     expires_at: record.expires_at(),
///     created_at: record.created_at(),
///     creator_id: record.creator_id(),
///     limits: record.limits(),
///     meter: Some(record.meter()),
/// };
/// assert_eq!(keygate::KeyRecord::from_parts(parts)?, record);
/// # Ok::<(), keygate::RecordError>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyRecordParts {
    /// The public key id.
    pub id: KeyId,
    /// Standard or restricted.
    pub kind: KeyKind,
    /// The key's name.
    pub name: String,
    /// The stored digest of the secret.
    pub secret_hash: SecretHash,
    /// The granted scopes; must be [`Scopes::all`] for a standard key.
    pub scopes: Scopes,
    /// The expiry; `None` never expires.
    pub expires_at: Option<UnixMillis>,
    /// When the key was minted.
    pub created_at: UnixMillis,
    /// The key that minted this one; `None` for keys made outside the API
    /// (a bootstrap or CLI key).
    pub creator_id: Option<KeyId>,
    /// The rate limit and credits (of the key's meter).
    pub limits: KeyLimits,
    /// The meter the key is charged to; `None` for its own.
    pub meter: Option<Meter>,
}

/// The serialized fields, checked before they become a [`KeyRecord`].
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RecordFields {
    id: KeyId,
    kind: KeyKind,
    name: String,
    secret_hash: SecretHash,
    scopes: Scopes,
    expires_at_ms: Option<UnixMillis>,
    created_at_ms: UnixMillis,
    #[serde(default)]
    creator_id: Option<KeyId>,
    #[serde(default)]
    rate_limit: Option<RateLimit>,
    #[serde(default)]
    credits: Option<Credits>,
    #[serde(default)]
    meter: Option<Meter>,
}

impl TryFrom<RecordFields> for KeyRecord {
    type Error = RecordError;
    fn try_from(f: RecordFields) -> Result<Self, Self::Error> {
        KeyRecord::from_parts(KeyRecordParts {
            id: f.id,
            kind: f.kind,
            name: f.name,
            secret_hash: f.secret_hash,
            scopes: f.scopes,
            expires_at: f.expires_at_ms,
            created_at: f.created_at_ms,
            creator_id: f.creator_id,
            limits: KeyLimits {
                rate: f.rate_limit,
                credits: f.credits,
            },
            meter: f.meter,
        })
    }
}

impl KeyRecord {
    /// Rebuilds a record from its fields, as a store read them; see
    /// [`KeyRecordParts`] for an example. [`mint`](fn@crate::mint) is the way
    /// to make a new key.
    ///
    /// A standard record must hold [`Scopes::all`], and a key may not be its
    /// own creator.
    ///
    /// ```
    /// # let record = keygate::testing::example_record();
    /// let mut parts = keygate::KeyRecordParts {
    ///     id: record.id(),
    ///     kind: keygate::KeyKind::Standard,
    ///     name: "x".into(),
    ///     secret_hash: record.secret_hash(),
    ///     scopes: "objects:read".parse()?,
    ///     expires_at: None,
    ///     created_at: keygate::UnixMillis::EPOCH,
    ///     creator_id: None,
    ///     limits: Default::default(),
    ///     meter: None,
    /// };
    /// assert!(keygate::KeyRecord::from_parts(parts.clone()).is_err());
    /// parts.scopes = keygate::Scopes::all();
    /// assert!(keygate::KeyRecord::from_parts(parts).is_ok());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn from_parts(parts: KeyRecordParts) -> Result<KeyRecord, RecordError> {
        if parts.kind == KeyKind::Standard && parts.scopes != Scopes::all() {
            return Err(RecordError::StandardWithoutAllScopes { id: parts.id });
        }
        if parts.creator_id == Some(parts.id) {
            return Err(RecordError::OwnCreator { id: parts.id });
        }
        // A key's own meter is stored as none: one form per meaning.
        let meter = parts.meter.filter(|m| m.id != parts.id);
        Ok(KeyRecord {
            id: parts.id,
            kind: parts.kind,
            name: parts.name,
            secret_hash: parts.secret_hash,
            scopes: parts.scopes,
            expires_at: parts.expires_at,
            created_at: parts.created_at,
            creator_id: parts.creator_id,
            rate_limit: parts.limits.rate,
            credits: parts.limits.credits,
            meter,
        })
    }

    /// Builds a record; [`mint`](fn@crate::mint) is the usual way. A standard
    /// record gets [`Scopes::all`] whatever `scopes` says.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        id: KeyId,
        kind: KeyKind,
        name: String,
        secret_hash: SecretHash,
        scopes: Scopes,
        expires_at: Option<UnixMillis>,
        created_at: UnixMillis,
        creator_id: Option<KeyId>,
    ) -> KeyRecord {
        let scopes = match kind {
            KeyKind::Standard => Scopes::all(),
            KeyKind::Restricted => scopes,
        };
        KeyRecord {
            id,
            kind,
            name,
            secret_hash,
            scopes,
            expires_at,
            created_at,
            creator_id,
            rate_limit: None,
            credits: None,
            meter: None,
        }
    }

    /// The same record with other limits (for all keys of its meter: a store
    /// updates them together).
    ///
    /// ```
    /// use core::time::Duration;
    /// # let record = keygate::testing::example_record();
    /// let rate = keygate::RateLimit::new(10, Duration::from_secs(1))?;
    /// let limited = record.with_limits(keygate::KeyLimits { rate: Some(rate), credits: None });
    /// assert_eq!(limited.limits().rate, Some(rate));
    /// # Ok::<(), keygate::LimitError>(())
    /// ```
    pub fn with_limits(mut self, limits: KeyLimits) -> KeyRecord {
        self.rate_limit = limits.rate;
        self.credits = limits.credits;
        self
    }

    /// The same record charged to `meter` (its own when `meter.id` is its id).
    pub(crate) fn with_meter(mut self, meter: Meter) -> KeyRecord {
        self.meter = Some(meter).filter(|m| m.id != self.id);
        self
    }

    /// The same record with another expiry (a roll shortens the old key's).
    pub(crate) fn with_expiry(mut self, expires_at: Option<UnixMillis>) -> KeyRecord {
        self.expires_at = expires_at;
        self
    }

    /// The public key id.
    pub fn id(&self) -> KeyId {
        self.id
    }

    /// Standard or restricted.
    pub fn kind(&self) -> KeyKind {
        self.kind
    }

    /// The key's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The stored digest of the secret.
    pub fn secret_hash(&self) -> SecretHash {
        self.secret_hash
    }

    /// The granted scopes; [`Scopes::all`] for a standard key.
    pub fn scopes(&self) -> Scopes {
        self.scopes
    }

    /// The expiry; `None` never expires. Stores and the wire keep it as
    /// `expires_at_ms`, its [`UnixMillis::as_millis`].
    ///
    /// ```
    /// # let record = keygate::testing::example_record();
    /// assert_eq!(record.expires_at(), Some(keygate::UnixMillis::from_millis(2_000)));
    /// ```
    pub fn expires_at(&self) -> Option<UnixMillis> {
        self.expires_at
    }

    /// When the key was minted. Stores and the wire keep it as
    /// `created_at_ms`, its [`UnixMillis::as_millis`].
    ///
    /// ```
    /// # let record = keygate::testing::example_record();
    /// assert_eq!(record.created_at().as_millis(), 1_000);
    /// ```
    pub fn created_at(&self) -> UnixMillis {
        self.created_at
    }

    /// The key that minted this one, or `None` for a key made outside the
    /// API (the server's bootstrap key, `keygate mint`).
    pub fn creator_id(&self) -> Option<KeyId> {
        self.creator_id
    }

    /// The rate limit and credits the key is charged against (its meter's).
    pub fn limits(&self) -> KeyLimits {
        KeyLimits {
            rate: self.rate_limit,
            credits: self.credits,
        }
    }

    /// The meter the key is charged to: its own (its id and creation), or
    /// the one it shares with the key it was rolled from or the limited key
    /// that minted it.
    pub fn meter(&self) -> Meter {
        self.meter.unwrap_or(Meter {
            id: self.id,
            since: self.created_at,
        })
    }

    /// A key is valid while `now < expires_at`; a null expiry never expires.
    ///
    /// ```
    /// # let record = keygate::testing::example_record();
    /// assert!(!record.is_expired_at(keygate::UnixMillis::from_millis(1_999)));
    /// assert!(record.is_expired_at(keygate::UnixMillis::from_millis(2_000)));
    /// ```
    #[inline]
    pub fn is_expired_at(&self, now: UnixMillis) -> bool {
        matches!(self.expires_at, Some(expiry) if now >= expiry)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scope::{Access, Resource};
    use crate::testing::example_record;

    #[test]
    fn standard_record_holds_all_scopes() {
        let r = example_record();
        let std = KeyRecord::new(
            r.id,
            KeyKind::Standard,
            "s".into(),
            r.secret_hash,
            Scopes::empty(),
            None,
            UnixMillis::EPOCH,
            None,
        );
        assert_eq!(std.scopes(), Scopes::all());
        assert!(!std.is_expired_at(UnixMillis::from_millis(i64::MAX)));
    }

    #[test]
    fn deserialize_rejects_standard_with_partial_scopes() {
        let r = example_record();
        let json = serde_json::to_string(&r)
            .unwrap()
            .replace("\"restricted\"", "\"standard\"");
        assert!(serde_json::from_str::<KeyRecord>(&json).is_err());
    }

    #[test]
    fn records_of_0_1_0_lack_creator_and_still_read() {
        let r = example_record();
        let json = serde_json::to_string(&r).unwrap();
        assert!(json.contains("\"creator_id\":null"));
        let old = json.replace(",\"creator_id\":null", "");
        assert!(!old.contains("creator_id"));
        assert_eq!(serde_json::from_str::<KeyRecord>(&old).unwrap(), r);
    }

    #[test]
    fn instants_serialize_as_the_integer_millisecond_fields() {
        let r = example_record();
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["expires_at_ms"], 2_000);
        assert_eq!(json["created_at_ms"], 1_000);
        assert!(json.get("expires_at").is_none() && json.get("created_at").is_none());
        let never = serde_json::to_value(r.clone().with_expiry(None)).unwrap();
        assert!(never["expires_at_ms"].is_null());
        // The typed field names are not part of the stored form.
        let renamed = serde_json::to_string(&r)
            .unwrap()
            .replace("\"expires_at_ms\"", "\"expires_at\"");
        assert!(serde_json::from_str::<KeyRecord>(&renamed).is_err());
    }

    #[test]
    fn from_parts_rejects_own_creator() {
        let r = example_record();
        let parts = KeyRecordParts {
            id: r.id(),
            kind: r.kind(),
            name: r.name().into(),
            secret_hash: r.secret_hash(),
            scopes: r.scopes(),
            expires_at: None,
            created_at: UnixMillis::EPOCH,
            creator_id: Some(r.id()),
            limits: Default::default(),
            meter: None,
        };
        assert_eq!(
            KeyRecord::from_parts(parts),
            Err(RecordError::OwnCreator { id: r.id() })
        );
    }

    #[test]
    fn expiry_edges() {
        let r = example_record();
        assert!(!r.is_expired_at(UnixMillis::from_millis(i64::MIN)));
        assert!(r.is_expired_at(UnixMillis::from_millis(i64::MAX)));
    }

    #[test]
    fn accessors_read_back_the_parts() {
        let r = example_record();
        let creator = KeyId::parse("CreatorCreator00").unwrap();
        let parts = KeyRecordParts {
            id: r.id(),
            kind: KeyKind::Restricted,
            name: "ci deploy".into(),
            secret_hash: SecretHash::from_bytes([7; 32]),
            scopes: Scopes::grant(Resource::Agents, Access::Read),
            expires_at: Some(UnixMillis::from_millis(9_000)),
            created_at: UnixMillis::from_millis(4_000),
            creator_id: Some(creator),
            limits: Default::default(),
            meter: None,
        };
        let record = KeyRecord::from_parts(parts).unwrap();
        assert_eq!(record.id(), r.id());
        assert_eq!(record.kind(), KeyKind::Restricted);
        assert_eq!(record.name(), "ci deploy");
        assert_eq!(record.secret_hash(), SecretHash::from_bytes([7; 32]));
        assert_eq!(
            record.scopes(),
            Scopes::grant(Resource::Agents, Access::Read)
        );
        assert_eq!(record.expires_at(), Some(UnixMillis::from_millis(9_000)));
        assert_eq!(record.created_at(), UnixMillis::from_millis(4_000));
        assert_eq!(record.creator_id(), Some(creator));
        assert!(!record.is_expired_at(UnixMillis::from_millis(8_999)));
        assert!(record.is_expired_at(UnixMillis::from_millis(9_000)));
    }
}
