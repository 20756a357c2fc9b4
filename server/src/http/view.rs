//! The key view every answer about a key shows (`GET /v1/keys`, `GET
//! /v1/keys/{id}`, `PATCH /v1/keys/{id}`, and the CLI's `--json`).

use keygate::wire::{scope_entries, ScopeEntryView};
use keygate::{KeyRecord, RateLimit, Refill, UnixMillis};
use serde::Serialize;

use crate::store::{CreditMeter, Store, StoreError, StoredKey};

/// A key as `GET /v1/keys` shows it: no secret, no digest.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct KeyView {
    /// The key id.
    pub id: String,
    /// The key's name.
    pub name: String,
    /// `standard` or `restricted`.
    pub kind: &'static str,
    /// The grants; a standard key lists all nine at `ACCESS_LEVEL_WRITE`.
    pub scopes: Vec<ScopeEntryView>,
    /// When it was minted.
    pub created_at_ms: i64,
    /// When it expires; null never.
    pub expires_at_ms: Option<i64>,
    /// When it last authenticated; null never (as far as this instance
    /// knows: flushed uses from every instance, plus this one's unflushed).
    pub last_used_at_ms: Option<i64>,
    /// The key that minted it; null for the CLI and the bootstrap key.
    pub creator_id: Option<String>,
    /// Its rate limit (its meter's); null for none.
    pub rate_limit: Option<RateLimit>,
    /// Its credits (its meter's); null for none.
    pub credits: Option<CreditsView>,
}

/// A key's credits in a [`KeyView`]: `{"remaining": N, "refill": {...} | null}`.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct CreditsView {
    /// The balance reported (see `AppState::credits_view`).
    pub remaining: u64,
    /// The refill, if any.
    pub refill: Option<Refill>,
}

impl CreditsView {
    /// The credits `record` is configured with: its grant and refill.
    pub fn configured(record: &KeyRecord) -> Option<CreditsView> {
        record.limits().credits.map(|c| CreditsView {
            remaining: c.remaining(),
            refill: c.refill(),
        })
    }

    /// The credits of `record`'s meter as of `now_ms`: its refill, and as
    /// `remaining` the meter's total, its pool plus what the live leases
    /// held at their last renewal (at most a second old;
    /// [`Store::credit_total`]); the configured grant where the store has
    /// no pool for the meter. `None` for a key without credits.
    pub async fn live(
        store: &dyn Store,
        record: &KeyRecord,
        now_ms: i64,
    ) -> Result<Option<CreditsView>, StoreError> {
        let Some(configured) = CreditsView::configured(record) else {
            return Ok(None);
        };
        let meter = CreditMeter {
            meter: record.meter(),
            refill: configured.refill,
        };
        Ok(Some(match store.credit_total(meter, now_ms).await? {
            Some(remaining) => CreditsView {
                remaining,
                ..configured
            },
            None => configured,
        }))
    }
}

impl KeyView {
    /// The view of a stored key, with a last use noted in memory merged in
    /// and the credits to show (`AppState::key_view` picks them).
    pub fn of(
        key: &StoredKey,
        last_used_in_memory: Option<i64>,
        credits: Option<CreditsView>,
    ) -> KeyView {
        let record = &key.record;
        KeyView {
            id: record.id().as_str().to_owned(),
            name: record.name().to_owned(),
            kind: record.kind().as_str(),
            scopes: scope_entries(record.scopes()),
            created_at_ms: record.created_at().as_millis(),
            expires_at_ms: record.expires_at().map(UnixMillis::as_millis),
            last_used_at_ms: key.last_used_at_ms.max(last_used_in_memory),
            creator_id: record.creator_id().map(|id| id.as_str().to_owned()),
            rate_limit: record.limits().rate,
            credits,
        }
    }
}
