//! The key lifecycle over HTTP (keygate extensions beyond the spec): list,
//! read, revoke, roll and self-revocation (a key's limits: `limits`).
//!
//! The reads (`GET /v1/keys`, `GET /v1/keys/{id}`) need `account:read`, the
//! writes `account:write` (a standard key has both; the tower layer checks);
//! self-revocation needs only the token. Under the attenuating policy a restricted caller sees and acts
//! on only the keys it minted, directly or transitively; any other id is a
//! 404 to it, and revoking a key revokes its descendants too.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::Extension;
use keygate::tower::problem;
use keygate::{AuthError, Change, KeyId, KeyKind, MintPolicy, Principal, RollError};
use serde::{Deserialize, Serialize};

use crate::clock::now_ms;
use crate::http::extract::{parse_body, parse_id, parse_limit, query_pairs, DEFAULT_LIMIT};
use crate::http::problem::{
    bad_request, internal_error, json_response, ok_json, store_error, with_caller,
};
use crate::http::state::AppState;
use crate::http::view::KeyView;
use crate::store::{Scope, StoreError};

/// The longest overlap a roll may ask for: 7 days, in milliseconds.
pub const MAX_OVERLAP_MS: u64 = 7 * 24 * 60 * 60 * 1_000;

/// The body of `GET /v1/keys`.
#[derive(Debug, Serialize)]
pub struct KeyListView {
    /// The page.
    pub keys: Vec<KeyView>,
    /// Whether more keys follow; pass the last id as `starting_after`.
    pub has_more: bool,
}

/// The query of `GET /v1/keys`.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ListQuery {
    /// 1 to 100.
    pub limit: usize,
    /// The id after which the page starts.
    pub starting_after: Option<KeyId>,
}

impl ListQuery {
    /// Parses `limit` and `starting_after`; anything else is an error.
    pub fn parse(query: Option<&str>) -> Result<ListQuery, String> {
        let mut out = ListQuery {
            limit: DEFAULT_LIMIT,
            starting_after: None,
        };
        for (key, value) in query_pairs(query, &["limit", "starting_after"])? {
            match key.as_str() {
                "limit" => out.limit = parse_limit(&value)?,
                _ => out.starting_after = Some(parse_id(&value, "starting_after")?),
            }
        }
        Ok(out)
    }
}

/// The body of `POST /v1/keys/{id}/roll`.
#[derive(Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RollParameters {
    /// How long the old key keeps working, 0 to 7 days; default 0.
    #[serde(default)]
    pub overlap_ms: u64,
}

/// The body of `POST /v1/keys/revoke`.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct SelfRevokeParameters {
    /// The full token to revoke.
    #[serde(default)]
    token: Option<zeroize::Zeroizing<String>>,
}

/// Which keys `caller` may see and touch.
pub fn scope_of(policy: MintPolicy, caller: &Principal) -> Scope {
    match (policy, caller.kind()) {
        (MintPolicy::Attenuating, KeyKind::Restricted) => Scope::DescendantsOf(caller.id()),
        _ => Scope::All,
    }
}

fn cascade(policy: MintPolicy) -> bool {
    policy == MintPolicy::Attenuating
}

/// What every lifecycle route checks of its caller in the store first: live
/// there too (another instance may have revoked it) and not rolled (a rolled
/// key authorizes requests in its overlap but manages no key). The answer to
/// send when it is not.
pub(crate) async fn refuse_caller(state: &AppState, caller: &Principal) -> Option<Response> {
    match state.store().check_caller(caller.id(), now_ms()).await {
        Ok(()) => None,
        Err(e) => Some(with_caller(
            store_error(&e, "cannot check the calling key"),
            *caller,
        )),
    }
}

/// `GET /v1/keys?limit=N&starting_after=ID`.
pub async fn list(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Principal>,
    RawQuery(query): RawQuery,
) -> Response {
    let query = match ListQuery::parse(query.as_deref()) {
        Ok(q) => q,
        Err(detail) => return with_caller(bad_request(&detail), caller),
    };
    if let Some(refused) = refuse_caller(&state, &caller).await {
        return refused;
    }
    let scope = scope_of(state.policy(), &caller);
    match state
        .store()
        .list(scope, query.starting_after, query.limit)
        .await
    {
        Ok(page) => {
            let keys = state.key_views(&page.keys).await;
            let body = KeyListView {
                keys,
                has_more: page.has_more,
            };
            ok_json(StatusCode::OK, &body, caller)
        }
        Err(e) => with_caller(store_error(&e, "cannot list keys"), caller),
    }
}

/// The id a route names and the scope the caller may act in, once the id
/// parses (400) and the store has checked the caller ([`refuse_caller`]).
/// What the routes of `/v1/keys/{id}` share (`GET`, `DELETE`, `PATCH`,
/// its credits and its usage).
pub(crate) async fn target(
    state: &AppState,
    caller: &Principal,
    id: &str,
) -> Result<(KeyId, Scope), Response> {
    let id = parse_id(id, "id").map_err(|detail| with_caller(bad_request(&detail), *caller))?;
    match refuse_caller(state, caller).await {
        Some(refused) => Err(refused),
        None => Ok((id, scope_of(state.policy(), caller))),
    }
}

/// `GET /v1/keys/{id}`: 404 for an unknown or revoked id, or one outside
/// the caller's scope (as `DELETE` and the list treat them; a revoked key's
/// history stays in `GET /v1/events`).
pub async fn get_key(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Principal>,
    Path(id): Path<String>,
) -> Response {
    let (id, scope) = match target(&state, &caller, &id).await {
        Ok(target) => target,
        Err(refused) => return refused,
    };
    match state.store().get(id, scope).await {
        Ok(Some(key)) if key.revoked_at_ms.is_none() => {
            let view = state.key_view(&key).await;
            ok_json(StatusCode::OK, &view, caller)
        }
        Ok(_) => with_caller(problem(StatusCode::NOT_FOUND, "no such key"), caller),
        Err(e) => with_caller(store_error(&e, "cannot read the key"), caller),
    }
}

/// `GET /v1/whoami`: the caller's own view, for any valid key (a console
/// shows what its key may do; under `--attenuate` a restricted key cannot
/// read itself through `GET /v1/keys/{id}`).
pub async fn whoami(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Principal>,
) -> Response {
    if let Some(refused) = refuse_caller(&state, &caller).await {
        return refused;
    }
    match state.store().get(caller.id(), Scope::All).await {
        Ok(Some(key)) if key.revoked_at_ms.is_none() => {
            let mut view = state.key_view(&key).await;
            // The creator is outside a scoped caller's subtree: not named,
            // as the audit log names no actor outside it.
            if scope_of(state.policy(), &caller) != Scope::All {
                view.creator_id = None;
            }
            ok_json(StatusCode::OK, &view, caller)
        }
        // Revoked between the check and the read.
        Ok(_) => with_caller(
            problem(StatusCode::UNAUTHORIZED, "the key was revoked"),
            caller,
        ),
        Err(e) => with_caller(store_error(&e, "cannot read the key"), caller),
    }
}

/// Revokes in the store, then in this instance's keyring at once.
async fn revoke_now(
    state: &AppState,
    id: KeyId,
    scope: Scope,
    actor: KeyId,
) -> Result<(), StoreError> {
    let now = now_ms();
    let revoked = state
        .store()
        .revoke(id, scope, cascade(state.policy()), Some(actor), now)
        .await?;
    for (_, id) in &revoked {
        state.usage().forget(id);
    }
    state
        .cache()
        .apply(revoked.into_iter().map(|(seq, id)| Change::revoke(seq, id)));
    Ok(())
}

/// `DELETE /v1/keys/{id}`: 204, or 404 for an unknown, already revoked or
/// out-of-scope id.
pub async fn revoke(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Principal>,
    Path(id): Path<String>,
) -> Response {
    let (id, scope) = match target(&state, &caller, &id).await {
        Ok(target) => target,
        Err(refused) => return refused,
    };
    match revoke_now(&state, id, scope, caller.id()).await {
        Ok(()) => {
            let mut response = Response::new(axum::body::Body::empty());
            *response.status_mut() = StatusCode::NO_CONTENT;
            with_caller(response, caller)
        }
        Err(e) => with_caller(store_error(&e, "cannot revoke the key"), caller),
    }
}

/// `POST /v1/keys/{id}/roll`: a new key like the old one; the old one ends
/// after `overlap_ms`. 200 with the spec's created view of the key's kind.
pub async fn roll(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Principal>,
    Path(id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let id = match parse_id(&id, "id") {
        Ok(id) => id,
        Err(detail) => return with_caller(bad_request(&detail), caller),
    };
    let params: RollParameters = match parse_body(body) {
        Ok(p) => p,
        Err((status, detail)) => return with_caller(problem(status, &detail), caller),
    };
    if params.overlap_ms > MAX_OVERLAP_MS {
        let detail = format!(
            "`overlap_ms` `{}` is more than {MAX_OVERLAP_MS} (7 days)",
            params.overlap_ms
        );
        return with_caller(bad_request(&detail), caller);
    }
    if id == caller.id() && params.overlap_ms == 0 {
        let detail = "a key cannot roll itself with `overlap_ms` 0: it would end at once, and \
                      if the answer were lost its holder would be locked out; give an overlap";
        return with_caller(bad_request(detail), caller);
    }
    if let Some(refused) = refuse_caller(&state, &caller).await {
        return refused;
    }
    let scope = scope_of(state.policy(), &caller);
    let key = match state.store().get(id, scope).await {
        Ok(Some(key)) if key.revoked_at_ms.is_none() => key,
        Ok(_) => return with_caller(problem(StatusCode::NOT_FOUND, "no such key"), caller),
        Err(e) => return with_caller(store_error(&e, "cannot read the key"), caller),
    };
    // A roll mints a key like the target and hands its secret to the
    // caller: the minting policy decides, as for a create.
    if let Err(e) = state.policy().authorize_roll(&caller, &key.record) {
        let mut response = problem(StatusCode::FORBIDDEN, &e.to_string());
        response.headers_mut().insert(
            axum::http::header::WWW_AUTHENTICATE,
            axum::http::HeaderValue::from_static(keygate::tower::INSUFFICIENT_SCOPE_CHALLENGE),
        );
        return with_caller(response, caller);
    }
    let now = now_ms();
    let pepper = state.cache().pepper();
    let rolled = match keygate::roll(
        &pepper,
        &key.record,
        core::time::Duration::from_millis(params.overlap_ms),
        &mut keygate::os_entropy(),
        keygate::UnixMillis::from_millis(now),
    ) {
        Ok(rolled) => rolled,
        Err(e @ RollError::Expired { .. }) => {
            return with_caller(problem(StatusCode::CONFLICT, &e.to_string()), caller)
        }
        Err(e) => return with_caller(internal_error(&e.to_string()), caller),
    };
    let (new_key, old) = rolled.into_parts();
    let new_record = new_key.record().clone();
    match state
        .store()
        .roll(&old, &new_record, scope, Some(caller.id()), now)
        .await
    {
        Ok((created_seq, rolled_seq)) => {
            state.cache().apply([
                Change::upsert(created_seq, new_record),
                Change::upsert(rolled_seq, old),
            ]);
        }
        Err(e) => return with_caller(store_error(&e, "cannot roll the key"), caller),
    }
    ok_json(
        StatusCode::OK,
        &keygate::wire::CreatedKeyView::from(new_key),
        caller,
    )
}

/// `POST /v1/keys/revoke` with `{"token": "..."}`: self-revocation, in the
/// manner of RFC 7009. Holding the token is the proof. The answer is 200
/// `{}` whether or not the token matched a key, so it is no oracle; an
/// expired token is revoked too.
pub async fn self_revoke(
    State(state): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let params: SelfRevokeParameters = match parse_body(body) {
        Ok(p) => p,
        Err((status, detail)) => return problem(status, &detail),
    };
    let Some(token) = params.token else {
        return bad_request("the `token` field is required");
    };
    let now = now_ms();
    let id = match state.cache().authenticate(token.as_bytes(), now) {
        Ok(principal) => Some(principal.id()),
        Err(AuthError::Expired { id, .. }) => Some(id),
        Err(_) => None,
    };
    drop(token);
    if let Some(id) = id {
        match revoke_now(&state, id, Scope::All, id).await {
            // Revoked meanwhile by someone else: the outcome is the same.
            Ok(()) | Err(StoreError::NotFound) => {}
            Err(e) => return store_error(&e, "cannot revoke the key"),
        }
    }
    json_response(StatusCode::OK, b"{}".to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_query() {
        assert_eq!(
            ListQuery::parse(None),
            Ok(ListQuery {
                limit: 20,
                starting_after: None
            })
        );
        let q = ListQuery::parse(Some("limit=100&starting_after=abcdefghijklmnop")).unwrap();
        assert_eq!(q.limit, 100);
        assert_eq!(q.starting_after.unwrap().as_str(), "abcdefghijklmnop");
        assert_eq!(ListQuery::parse(Some("limit=1")).unwrap().limit, 1);
        for bad in [
            "limit=0",
            "limit=101",
            "limit=-1",
            "limit=+5",
            "limit=",
            "limit=1.5",
            "limit=1&limit=2",
            "starting_after=short",
            "starting_after=abcdefghijklmno%21",
            "cursor=x",
            "limit=99999999999999999999999",
        ] {
            assert!(ListQuery::parse(Some(bad)).is_err(), "{bad}");
        }
        assert_eq!(
            ListQuery::parse(Some("x%79z=1")).unwrap_err(),
            "unknown query parameter `xyz`"
        );
    }

    #[test]
    fn roll_body() {
        assert_eq!(
            serde_json::from_str::<RollParameters>("{}")
                .unwrap()
                .overlap_ms,
            0
        );
        assert!(serde_json::from_str::<RollParameters>(r#"{"overlap_ms":-1}"#).is_err());
        assert!(serde_json::from_str::<RollParameters>(r#"{"overlap":1}"#).is_err());
        assert!(serde_json::from_str::<RollParameters>(r#"{"overlap_ms":null}"#).is_err());
    }

    #[test]
    fn restricted_callers_are_scoped_only_under_attenuation() {
        let restricted = keygate::testing::principal_of(&keygate::testing::example_record());
        assert_eq!(scope_of(MintPolicy::Spec, &restricted), Scope::All);
        assert_eq!(
            scope_of(MintPolicy::Attenuating, &restricted),
            Scope::DescendantsOf(restricted.id())
        );
    }
}
