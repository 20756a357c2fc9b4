//! A key's rate limit and credits over HTTP (keygate extensions):
//! `PATCH /v1/keys/{id}` replaces them for every key of the target's meter,
//! `POST /v1/keys/{id}/credits` sets or tops up the meter's balance.
//!
//! Both need `account:write` (the tower layer checks), act within the
//! caller's scope as `GET /v1/keys/{id}` does (the same 404 for an unknown
//! id and one outside the caller's keys), and never on the caller's own
//! meter: a limited key with `account:write` must not lift its own limit,
//! through itself, its roll family, or the keys it shares a meter with.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::Extension;
use keygate::tower::problem;
use keygate::{Change, Credits, Principal, RateLimit, UnixMillis, MAX_CREDITS};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{Map, Value};

use crate::clock::now_ms;
use crate::http::extract::{parse_body, parse_id};
use crate::http::keys::target;
use crate::http::problem::{bad_request, forbidden, ok_json, quote, store_error, with_caller};
use crate::http::state::AppState;
use crate::store::{LimitsChange, Scope, SetOrAdd, StoreError, StoredKey};

/// The answer to a key that names its own meter.
pub const OWN_LIMITS: &str = "a key may not change its own limits";

/// The body of `POST /v1/keys/{id}/credits`' answer.
#[derive(Debug, Serialize)]
pub struct BalanceView {
    /// The meter's balance after the change.
    pub remaining: u64,
}

/// A JSON value as an error message quotes it: redacted and cut.
fn shown(value: &Value) -> String {
    quote(&value.to_string())
}

/// Checks that `value` (the member `field` of a body) is an object whose
/// members are among `members` (name, required), each a JSON integer (or,
/// for `refill`, an object or null, checked by the library's type), so that
/// every error names the field it is about. The library's own checks
/// ([`keygate::LimitError`], whose messages name the field too) follow in
/// [`limit_of`].
fn check_shape(value: &Value, field: &str, members: &[(&str, bool)]) -> Result<(), String> {
    let Some(object) = value.as_object() else {
        return Err(format!(
            "`{field}` must be an object or null, not `{}`",
            shown(value)
        ));
    };
    for (name, member) in object {
        match members.iter().find(|(m, _)| m == name) {
            None => {
                let expected: Vec<String> = members.iter().map(|(m, _)| format!("`{m}`")).collect();
                return Err(format!(
                    "unknown field `{field}.{}`; expected {}",
                    quote(name),
                    expected.join(" and ")
                ));
            }
            Some((_, _)) if name == "refill" => {
                if !member.is_null() {
                    check_shape(
                        member,
                        "credits.refill",
                        &[("amount", true), ("interval_ms", true)],
                    )?;
                }
            }
            Some(_) if !(member.is_i64() || member.is_u64()) => {
                return Err(format!(
                    "`{field}.{name}` must be an integer, not `{}`",
                    shown(member)
                ));
            }
            Some(_) => {}
        }
    }
    for (name, required) in members {
        if *required && !object.contains_key(*name) {
            return Err(format!("`{field}.{name}` is required"));
        }
    }
    Ok(())
}

/// A limit from its JSON value, after [`check_shape`], through the
/// library's validated form (its error names the field).
fn limit_of<T: DeserializeOwned>(value: Value) -> Result<T, String> {
    serde_json::from_value(value).map_err(|e| keygate::redact_tokens(&e.to_string()).into_owned())
}

/// The body of `PATCH /v1/keys/{id}`: `rate_limit` and/or `credits`, each a
/// value (replace) or null (remove); absent fields stay as they are.
pub fn parse_limits_change(body: Map<String, Value>) -> Result<LimitsChange, String> {
    if body.is_empty() {
        return Err(String::from(
            "the body changes nothing: give `rate_limit`, `credits` or both (null removes one)",
        ));
    }
    let mut change = LimitsChange::default();
    for (field, value) in body {
        match field.as_str() {
            "rate_limit" if value.is_null() => change.rate = Some(None),
            "rate_limit" => {
                check_shape(
                    &value,
                    "rate_limit",
                    &[("limit", true), ("period_ms", true)],
                )?;
                change.rate = Some(Some(limit_of::<RateLimit>(value)?));
            }
            "credits" if value.is_null() => change.credits = Some(None),
            "credits" => {
                check_shape(&value, "credits", &[("remaining", true), ("refill", false)])?;
                change.credits = Some(Some(limit_of::<Credits>(value)?));
            }
            other => {
                return Err(format!(
                    "unknown field `{}`; expected `rate_limit` or `credits`",
                    quote(other)
                ))
            }
        }
    }
    Ok(change)
}

/// The body of `POST /v1/keys/{id}/credits`: exactly one of `{"set": N}`
/// (N from 0; above [`MAX_CREDITS`] it is clamped) or `{"add": N}` (N may be
/// negative; the result is clamped to `0..=MAX_CREDITS`).
pub fn parse_credit_op(body: Map<String, Value>) -> Result<SetOrAdd, String> {
    const ONE: &str = "give exactly one of `set` or `add`";
    let mut op = None;
    for (field, value) in body {
        let parsed = match field.as_str() {
            "set" => match value.as_u64() {
                Some(n) if n <= MAX_CREDITS => SetOrAdd::Set(n),
                None if value.is_i64() => {
                    return Err(format!("`set` must be 0 or more, not `{}`", shown(&value)))
                }
                _ => {
                    return Err(format!(
                        "`set` must be an integer from 0 to {MAX_CREDITS}, not `{}`",
                        shown(&value)
                    ))
                }
            },
            "add" => match value.as_i64() {
                Some(n) => SetOrAdd::Add(n),
                None => {
                    return Err(format!(
                        "`add` must be an integer from {} to {}, not `{}`",
                        i64::MIN,
                        i64::MAX,
                        shown(&value)
                    ))
                }
            },
            other => return Err(format!("unknown field `{}`; {ONE}", quote(other))),
        };
        if op.replace(parsed).is_some() {
            return Err(String::from(ONE));
        }
    }
    op.ok_or_else(|| String::from(ONE))
}

/// The target of a limits route, once the caller may change its limits: a
/// live key within the caller's scope (404 otherwise, the same answer
/// whatever the reason), not on the caller's own meter (403).
async fn changeable(
    state: &AppState,
    caller: &Principal,
    id: &str,
) -> Result<(StoredKey, Scope), Response> {
    let (id, scope) = target(state, caller, id).await?;
    let not_found = || with_caller(problem(StatusCode::NOT_FOUND, "no such key"), *caller);
    let key = match state.store().get(id, scope).await {
        Ok(Some(key)) if key.revoked_at_ms.is_none() => key,
        Ok(_) => return Err(not_found()),
        Err(e) => return Err(with_caller(store_error(&e, "cannot read the key"), *caller)),
    };
    let own = match state.store().get(caller.id(), Scope::All).await {
        Ok(Some(own)) if own.revoked_at_ms.is_none() => own,
        Ok(_) => {
            let e = StoreError::CallerRevoked;
            return Err(with_caller(
                store_error(&e, "cannot read the calling key"),
                *caller,
            ));
        }
        Err(e) => {
            return Err(with_caller(
                store_error(&e, "cannot read the calling key"),
                *caller,
            ))
        }
    };
    if own.record.meter().id == key.record.meter().id {
        return Err(with_caller(forbidden(OWN_LIMITS), *caller));
    }
    Ok((key, scope))
}

/// What both routes read first, in order: the id (400), the JSON object
/// and its fields (`parse`, 400), then the target as the caller may change
/// it ([`changeable`]).
async fn change_request<T>(
    state: &AppState,
    caller: Principal,
    id: &str,
    body: Result<Bytes, BytesRejection>,
    parse: fn(Map<String, Value>) -> Result<T, String>,
) -> Result<(T, StoredKey, Scope), Response> {
    if let Err(detail) = parse_id(id, "id") {
        return Err(with_caller(bad_request(&detail), caller));
    }
    let body: Map<String, Value> = match parse_body(body) {
        Ok(b) => b,
        Err((status, detail)) => return Err(with_caller(problem(status, &detail), caller)),
    };
    let parsed = parse(body).map_err(|detail| with_caller(bad_request(&detail), caller))?;
    let (key, scope) = changeable(state, &caller, id).await?;
    Ok((parsed, key, scope))
}

/// `PATCH /v1/keys/{id}` with `{"rate_limit": …, "credits": …}`: replaces
/// them for every key of the target's meter; 200 with the target's view.
pub async fn patch(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Principal>,
    Path(id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let (change, key, scope) =
        match change_request(&state, caller, &id, body, parse_limits_change).await {
            Ok(found) => found,
            Err(refused) => return refused,
        };
    let id = key.record.id();
    let meter = key.record.meter();
    let now = now_ms();
    let leases = state.keys().credits();
    // New credits set the meter's total: this instance's lease goes back
    // first, so that on one instance the total is exactly the new grant.
    if change.credits.is_some() {
        if let Err(e) = leases
            .reclaim(&meter.id, UnixMillis::from_millis(now))
            .await
        {
            tracing::warn!(meter = %meter.id, "cannot hand a credit lease back: {e}");
        }
    }
    let result = state
        .store()
        .set_limits(id, change, scope, Some(caller.id()), now)
        .await;
    let credits = match &result {
        Ok(changed) => changed.first().and_then(|(_, r)| r.limits().credits),
        Err(_) => key.record.limits().credits,
    };
    // Leased for again now (under the new refill, if it changed); a meter
    // whose credits went hands its lease back.
    if let Some(credits) = credits {
        leases
            .ensure_now(meter, credits.refill(), UnixMillis::from_millis(now))
            .await;
    }
    let changed = match result {
        Ok(changed) => changed,
        Err(e) => return with_caller(store_error(&e, "cannot change the limits"), caller),
    };
    let record = changed
        .iter()
        .find(|(_, r)| r.id() == id)
        .map(|(_, r)| r.clone());
    state.cache().apply(
        changed
            .into_iter()
            .map(|(seq, record)| Change::upsert(seq, record)),
    );
    state.keys().release_meters();
    let key = StoredKey {
        record: record.unwrap_or(key.record),
        ..key
    };
    let view = state.key_view(&key).await;
    ok_json(StatusCode::OK, &view, caller)
}

/// `POST /v1/keys/{id}/credits` with `{"set": N}` or `{"add": N}`: changes
/// the balance of the target's meter as of now; 200 `{"remaining": N}`.
pub async fn credits(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Principal>,
    Path(id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let (op, key, _scope) = match change_request(&state, caller, &id, body, parse_credit_op).await {
        Ok(found) => found,
        Err(refused) => return refused,
    };
    let id = key.record.id();
    match state.store().is_rolled(id).await {
        Ok(false) => {}
        Ok(true) => {
            let e = crate::store::rolled_target(id);
            return with_caller(store_error(&e, "cannot change the credits"), caller);
        }
        Err(e) => return with_caller(store_error(&e, "cannot read the key"), caller),
    }
    if key.record.limits().credits.is_none() {
        let detail = format!("key `{id}` has no credits; PATCH it with `credits` first");
        return with_caller(problem(StatusCode::CONFLICT, &detail), caller);
    }
    let now = UnixMillis::from_millis(now_ms());
    let meter = key.record.meter();
    let refill = key.record.limits().credits.and_then(|c| c.refill());
    // This instance's lease goes back first, so that the total the answer
    // reports (the pool plus the live leases) is exact on one instance;
    // then it leases anew at once.
    let leases = state.keys().credits();
    if let Err(e) = leases.reclaim(&meter.id, now).await {
        tracing::warn!(meter = %meter.id, "cannot hand a credit lease back: {e}");
    }
    let result = state.store().change_credits(meter, op, now).await;
    leases.ensure_now(meter, refill, now).await;
    match result {
        Ok(remaining) => ok_json(StatusCode::OK, &BalanceView { remaining }, caller),
        Err(e) => with_caller(store_error(&e, "cannot change the credits"), caller),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(json: &str) -> Map<String, Value> {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn limits_bodies() {
        let c = parse_limits_change(map(r#"{"rate_limit":{"limit":5,"period_ms":1000}}"#)).unwrap();
        assert_eq!(c.rate.unwrap().unwrap().limit(), 5);
        assert_eq!(c.credits, None);
        let c = parse_limits_change(map(r#"{"rate_limit":null,"credits":null}"#)).unwrap();
        assert_eq!((c.rate, c.credits), (Some(None), Some(None)));
        let c = parse_limits_change(map(
            r#"{"credits":{"remaining":5,"refill":{"amount":5,"interval_ms":60000}}}"#,
        ))
        .unwrap();
        assert_eq!(c.credits.unwrap().unwrap().refill().unwrap().amount(), 5);
        for (body, needle) in [
            ("{}", "changes nothing"),
            (r#"{"rate":null}"#, "unknown field `rate`"),
            (
                r#"{"rate_limit":5}"#,
                "`rate_limit` must be an object or null",
            ),
            (
                r#"{"rate_limit":{"limit":0,"period_ms":1000}}"#,
                "rate_limit.limit must be 1 to",
            ),
            (
                r#"{"rate_limit":{"limit":1,"period_ms":0}}"#,
                "rate_limit.period_ms must be",
            ),
            (
                r#"{"rate_limit":{"limit":"x","period_ms":1}}"#,
                "`rate_limit.limit` must be an integer",
            ),
            (
                r#"{"rate_limit":{"limit":1.5,"period_ms":1}}"#,
                "`rate_limit.limit` must be an integer",
            ),
            (
                r#"{"rate_limit":{"limit":1}}"#,
                "`rate_limit.period_ms` is required",
            ),
            (
                r#"{"rate_limit":{"limit":1,"period_ms":1,"x":1}}"#,
                "unknown field `rate_limit.x`",
            ),
            (
                r#"{"credits":{"remaining":-1}}"#,
                "credits.remaining must be 0 to",
            ),
            (r#"{"credits":{}}"#, "`credits.remaining` is required"),
            (
                r#"{"credits":{"remaining":1,"refill":{"amount":1,"interval_ms":999}}}"#,
                "credits.refill.interval_ms must be 1000",
            ),
            (
                r#"{"credits":{"remaining":1,"refill":{"amount":-1,"interval_ms":1000}}}"#,
                "credits.refill.amount must be",
            ),
            (
                r#"{"credits":{"remaining":1,"refill":{"amount":1}}}"#,
                "`credits.refill.interval_ms` is required",
            ),
            (
                r#"{"credits":{"remaining":1,"refill":7}}"#,
                "`credits.refill` must be an object",
            ),
        ] {
            let e = parse_limits_change(map(body)).unwrap_err();
            assert!(e.contains(needle), "{body}: {e}");
        }
    }

    #[test]
    fn credit_bodies() {
        assert_eq!(parse_credit_op(map(r#"{"set":5}"#)), Ok(SetOrAdd::Set(5)));
        assert_eq!(parse_credit_op(map(r#"{"add":-5}"#)), Ok(SetOrAdd::Add(-5)));
        for (body, needle) in [
            ("{}", "exactly one of `set` or `add`"),
            (r#"{"set":1,"add":1}"#, "exactly one of `set` or `add`"),
            (r#"{"set":-1}"#, "`set` must be 0 or more"),
            (r#"{"set":1.5}"#, "`set` must be an integer"),
            (r#"{"add":"1"}"#, "`add` must be an integer"),
            (r#"{"add":9223372036854775808}"#, "`add` must be an integer"),
            (r#"{"sub":1}"#, "unknown field `sub`"),
        ] {
            let e = parse_credit_op(map(body)).unwrap_err();
            assert!(e.contains(needle), "{body}: {e}");
        }
    }
}
