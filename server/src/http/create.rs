//! `POST /v1/apikeys` and `POST /v1/restricted_keys`: minting.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use axum::Extension;
use keygate::tower::problem;
use keygate::{Change, KeyRecord, MintRequest, Principal, ValidationError};
use serde::de::DeserializeOwned;

use crate::clock::now_ms as system_now_ms;
use crate::http::extract::parse_body;
use crate::http::problem::{
    bad_request, forbidden, internal_error, json_response, quote, store_error,
};
use crate::http::state::AppState;
use crate::store::{Scope, StoreError};

fn validation_error(e: &ValidationError) -> Response {
    bad_request(&e.to_string())
}

/// The two create bodies, for one generic handler: each validates into a
/// [`MintRequest`] (the library's inherent `validate`).
pub(crate) trait CreateParameters {
    /// The request the body asks for, validated at `now`.
    fn validate(&self, now: keygate::UnixMillis) -> Result<MintRequest, ValidationError>;
}

impl CreateParameters for keygate::wire::ApiKeyCreateParameters {
    fn validate(&self, now: keygate::UnixMillis) -> Result<MintRequest, ValidationError> {
        keygate::wire::ApiKeyCreateParameters::validate(self, now)
    }
}

impl CreateParameters for keygate::wire::RestrictedKeyCreateParameters {
    fn validate(&self, now: keygate::UnixMillis) -> Result<MintRequest, ValidationError> {
        keygate::wire::RestrictedKeyCreateParameters::validate(self, now)
    }
}

/// `POST /v1/apikeys` and `POST /v1/restricted_keys`: the caller is already
/// authenticated by the layer; parse, validate, authorize, mint, store.
pub(crate) async fn create<P: CreateParameters + DeserializeOwned + Default>(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Principal>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let params: P = match parse_body(body) {
        Ok(p) => p,
        Err((status, detail)) => return problem(status, &detail),
    };
    let now_ms = system_now_ms();
    match params.validate(keygate::UnixMillis::from_millis(now_ms)) {
        Ok(request) => match check_name(request.name()) {
            Ok(()) => mint_and_store(state, caller, request, now_ms).await,
            Err(detail) => bad_request(&detail),
        },
        Err(e) => validation_error(&e),
    }
}

/// Refuses a key name that holds what looks like a token or a secret (what
/// [`keygate::redact_tokens`] would redact): a name is shown in every
/// listing, created view and event, so a token pasted as a name would be
/// echoed for good.
pub(crate) fn check_name(name: &str) -> Result<(), String> {
    if keygate::redact_tokens(name) == name {
        return Ok(());
    }
    Err(format!(
        "name `{}` holds what looks like a key token or secret (a run of 32 or more \
         letters and digits, or an `ak_`/`rk_` token); names are shown in listings: choose another",
        quote(name)
    ))
}

/// Checks the minting policy, mints, commits the record, adds it to the
/// keyring, and only then answers 200 with the created view.
async fn mint_and_store(
    state: Arc<AppState>,
    caller: Principal,
    request: MintRequest,
    now_ms: i64,
) -> Response {
    if let Some(refused) = super::keys::refuse_caller(&state, &caller).await {
        return refused;
    }
    if let Err(e) = state.policy().authorize(&caller, &request) {
        return forbidden(&e.to_string());
    }
    // A caller with limits mints only keys on its own meter, with its own
    // limits (the store checks it again, in the create's transaction).
    let own = match state.store().get(caller.id(), Scope::All).await {
        Ok(Some(own)) if own.revoked_at_ms.is_none() => own.record,
        Ok(_) => return store_error(&StoreError::CallerRevoked, "cannot read the calling key"),
        Err(e) => return store_error(&e, "cannot read the calling key"),
    };
    let request = match request.charged_to(&own) {
        Ok(request) => request.created_by(&caller),
        Err(e) => return forbidden(&e.to_string()),
    };
    let minted = keygate::mint(
        &state.cache().pepper(),
        &request,
        &mut keygate::os_entropy(),
        keygate::UnixMillis::from_millis(now_ms),
    );
    let record: KeyRecord = minted.record().clone();
    let credits = record.limits().credits;
    let meter = record.meter();
    match state
        .store()
        .create(&record, Some(caller.id()), now_ms)
        .await
    {
        Ok(seq) => {
            state.cache().apply([Change::upsert(seq, record)]);
        }
        Err(e) => return store_error(&e, "cannot store the key"),
    }
    // A key with credits: this instance leases from its meter now (the
    // create wrote a new meter's pool in its transaction), so the key's
    // first request here finds credits; other instances lease when its
    // change arrives.
    if let Some(credits) = credits {
        let now = keygate::UnixMillis::from_millis(now_ms);
        state
            .keys()
            .credits()
            .ensure_now(meter, credits.refill(), now)
            .await;
    }
    match serde_json::to_vec(&keygate::wire::CreatedKeyView::from(minted)) {
        Ok(body) => {
            let mut response = json_response(StatusCode::OK, body);
            // The log names the caller; the new key's id is in the body.
            response.extensions_mut().insert(caller);
            response
        }
        Err(_) => internal_error("cannot encode the created key"),
    }
}
