//! End-to-end flows through the public API: wire JSON → validation → policy
//! → mint → keyring → authenticate → can.

// Test code: a panic is a failed test (clippy.toml allows these only inside #[test] fns).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;
use common::with_checksum;

use keygate::wire::{ApiKeyCreateParameters, CreatedKeyView, RestrictedKeyCreateParameters};
use keygate::{
    mint, Access, AuthError, Error, KeyKind, Keyring, MintError, MintPolicy, MintRequest, Pepper,
    Resource, Scopes, Token, TokenError,
};
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;
use serde::de::DeserializeOwned;

/// The two create bodies, for one generic handler (as the server does).
trait CreateParameters {
    fn validate(&self, now: keygate::UnixMillis) -> Result<MintRequest, keygate::ValidationError>;
}

impl CreateParameters for ApiKeyCreateParameters {
    fn validate(&self, now: keygate::UnixMillis) -> Result<MintRequest, keygate::ValidationError> {
        ApiKeyCreateParameters::validate(self, now)
    }
}

impl CreateParameters for RestrictedKeyCreateParameters {
    fn validate(&self, now: keygate::UnixMillis) -> Result<MintRequest, keygate::ValidationError> {
        RestrictedKeyCreateParameters::validate(self, now)
    }
}

const NOW: i64 = 1_764_000_000_000;

struct Gateway {
    keyring: Keyring,
    rng: ChaCha20Rng,
    policy: MintPolicy,
}

impl Gateway {
    fn new(policy: MintPolicy) -> Gateway {
        let mut rng = ChaCha20Rng::seed_from_u64(0xC0FFEE);
        Gateway {
            keyring: Keyring::new(Pepper::generate(&mut rng)),
            rng,
            policy,
        }
    }

    fn bootstrap(&mut self) -> String {
        let req = MintRequest::standard(
            Some("bootstrap"),
            None,
            keygate::UnixMillis::from_millis(NOW),
        )
        .unwrap();
        let (record, token) = mint(
            self.keyring.pepper(),
            &req,
            &mut self.rng,
            keygate::UnixMillis::from_millis(NOW),
        )
        .into_parts();
        self.keyring.insert(record).unwrap();
        token.expose_secret().to_owned()
    }

    /// What the server does for `POST /v1/restricted_keys`: status and body.
    fn create_restricted(&mut self, bearer: &str, body: &str) -> (u16, serde_json::Value) {
        self.create::<RestrictedKeyCreateParameters>(bearer, body)
    }

    /// What the server's generic create handler does: authenticate, parse
    /// the body with the library's wire types (an empty body is the default
    /// parameters; a body that does not deserialize is a 400 of its own),
    /// validate through `CreateParameters`, authorize, mint, insert.
    fn create<P: CreateParameters + DeserializeOwned + Default>(
        &mut self,
        bearer: &str,
        body: &str,
    ) -> (u16, serde_json::Value) {
        let caller = match self
            .keyring
            .authenticate(bearer, keygate::UnixMillis::from_millis(NOW))
        {
            Ok(caller) => caller,
            Err(e) => return failure(&e.into()),
        };
        let params: P = if body.trim().is_empty() {
            P::default()
        } else {
            match serde_json::from_str(body) {
                Ok(params) => params,
                Err(e) => {
                    let detail = format!("invalid request body: {e}");
                    return (400, serde_json::json!({ "detail": detail }));
                }
            }
        };
        let result = (|| -> Result<CreatedKeyView, Error> {
            let request = params.validate(keygate::UnixMillis::from_millis(NOW))?;
            self.policy.authorize(&caller, &request)?;
            let minted = mint(
                self.keyring.pepper(),
                &request,
                &mut self.rng,
                keygate::UnixMillis::from_millis(NOW),
            );
            self.keyring.insert(minted.record().clone())?;
            Ok(keygate::wire::CreatedKeyView::from(minted))
        })();
        match result {
            Ok(view) => (200, serde_json::to_value(view).unwrap()),
            Err(e) => failure(&e),
        }
    }
}

fn failure(e: &Error) -> (u16, serde_json::Value) {
    (
        e.http_status(),
        serde_json::json!({ "detail": e.to_string() }),
    )
}

fn scope_body(scopes: &str) -> String {
    let s: Scopes = scopes.parse().unwrap();
    let entries: Vec<_> = s
        .iter()
        .map(|(r, a)| serde_json::json!({"resource_type": r.api_name(), "access_level": a.api_name()}))
        .collect();
    serde_json::json!({ "name": "k", "scopes": entries }).to_string()
}

#[test]
fn standard_key_mints_restricted_key_that_is_enforced() {
    let mut gw = Gateway::new(MintPolicy::Spec);
    let root = gw.bootstrap();
    let (status, body) = gw.create_restricted(&root, &scope_body("devboxes:write,objects:read"));
    assert_eq!(status, 200, "{body}");
    let token = body["key_secret"].as_str().unwrap().to_owned();
    assert!(token.starts_with("rk_"));
    assert_eq!(body["id"], &token[3..19]);
    assert_eq!(body["scopes"].as_array().unwrap().len(), 2);
    assert_eq!(body["scopes"][0]["resource_type"], "RESOURCE_TYPE_DEVBOXES");
    assert_eq!(body["scopes"][0]["access_level"], "ACCESS_LEVEL_WRITE");
    assert!(body["expires_at_ms"].is_null());

    let ok = |r, a| {
        gw.keyring
            .authorize(&token, r, a, keygate::UnixMillis::from_millis(NOW))
            .is_ok()
    };
    assert!(ok(Resource::Devboxes, Access::Write));
    assert!(ok(Resource::Devboxes, Access::Read));
    assert!(ok(Resource::Objects, Access::Read));
    assert!(!ok(Resource::Objects, Access::Write));
    assert!(!ok(Resource::Account, Access::Read));
    let err = gw
        .keyring
        .authorize(
            &token,
            Resource::Account,
            Access::Write,
            keygate::UnixMillis::from_millis(NOW),
        )
        .unwrap_err();
    assert_eq!(err.http_status(), 403);
    assert!(matches!(err, AuthError::InsufficientScope { .. }));
}

#[test]
fn restricted_key_without_account_write_cannot_mint() {
    let mut gw = Gateway::new(MintPolicy::Spec);
    let root = gw.bootstrap();
    let (_, body) = gw.create_restricted(&root, &scope_body("devboxes:write,account:read"));
    let limited = body["key_secret"].as_str().unwrap().to_owned();
    let (status, body) = gw.create_restricted(&limited, &scope_body("devboxes:read"));
    assert_eq!(status, 403, "{body}");
}

#[test]
fn spec_policy_allows_escalation_and_attenuation_closes_it() {
    for (policy, wide_status) in [(MintPolicy::Spec, 200), (MintPolicy::Attenuating, 403)] {
        let mut gw = Gateway::new(policy);
        let root = gw.bootstrap();
        let (_, body) = gw.create_restricted(&root, &scope_body("account:write,agents:read"));
        let admin = body["key_secret"].as_str().unwrap().to_owned();
        let (status, _) = gw.create_restricted(&admin, &scope_body("agents:write"));
        assert_eq!(status, wide_status, "{policy:?}");
        let (status, _) = gw.create_restricted(&admin, &scope_body("agents:read"));
        assert_eq!(status, 200, "{policy:?}");
        let caller = gw
            .keyring
            .authenticate(&admin, keygate::UnixMillis::from_millis(NOW))
            .unwrap();
        let standard =
            MintRequest::standard(None, None, keygate::UnixMillis::from_millis(NOW)).unwrap();
        let expected = match policy {
            MintPolicy::Spec => Ok(()),
            _ => Err(MintError::StandardFromRestricted),
        };
        assert_eq!(policy.authorize(&caller, &standard), expected);
    }
}

#[test]
fn invalid_scopes_are_400() {
    let mut gw = Gateway::new(MintPolicy::Spec);
    let root = gw.bootstrap();
    for (body, detail) in [
        ("{}", "invalid scopes: the `scopes` field is required"),
        ("", "invalid scopes: the `scopes` field is required"),
        (
            r#"{"scopes":[]}"#,
            "invalid scopes: the scopes grant no access",
        ),
        (
            r#"{"scopes":[{"resource_type":"RESOURCE_TYPE_AGENTS","access_level":"ACCESS_LEVEL_NONE"}]}"#,
            "invalid scopes: the scopes grant no access",
        ),
        (
            r#"{"scopes":[{"resource_type":"RESOURCE_TYPE_AGENTS"}]}"#,
            "invalid scopes: entry 0 lacks `access_level`",
        ),
    ] {
        let (status, body_json) = gw.create_restricted(&root, body);
        assert_eq!(status, 400, "{body}");
        assert_eq!(body_json["detail"], detail, "{body}");
    }
}

#[test]
fn bodies_that_do_not_parse_are_400_but_not_invalid_scopes() {
    let mut gw = Gateway::new(MintPolicy::Spec);
    let root = gw.bootstrap();
    for body in [
        r#"{"scopes":"devboxes:read"}"#,
        r#"{"scopes":[{"resource_type":"RESOURCE_TYPE_NOPE","access_level":"ACCESS_LEVEL_READ"}]}"#,
        r#"{"name":"k","surprise":1}"#,
        r#"["k"]"#,
        "{",
    ] {
        let (status, detail) = gw.create_restricted(&root, body);
        assert_eq!(status, 400, "{body}");
        let detail = detail["detail"].as_str().unwrap();
        assert!(
            detail.starts_with("invalid request body: "),
            "{body}: {detail}"
        );
        assert!(!detail.contains("invalid scopes"), "{body}: {detail}");
    }
    // The other create route goes through the same parsing.
    let (status, detail) = gw.create::<ApiKeyCreateParameters>(&root, r#"{"name":5}"#);
    assert_eq!(status, 400);
    assert_eq!(
        detail["detail"],
        "invalid request body: invalid type: integer `5`, expected a string at line 1 column 9"
    );
    let (status, view) = gw.create::<ApiKeyCreateParameters>(&root, "");
    assert_eq!(status, 200, "{view}");
    assert!(view["key_secret"].as_str().unwrap().starts_with("ak_"));
}

#[test]
fn credentials_failures_are_401_and_alike() {
    let mut gw = Gateway::new(MintPolicy::Spec);
    let root = gw.bootstrap();
    let (status, _) = gw.create_restricted("", &scope_body("devboxes:read"));
    assert_eq!(status, 401);

    // An unknown id (minted under another pepper, so well-formed).
    let mut rng = ChaCha20Rng::seed_from_u64(99);
    let stranger = mint(
        &Pepper::generate(&mut rng),
        &MintRequest::standard(None, None, keygate::UnixMillis::from_millis(NOW)).unwrap(),
        &mut rng,
        keygate::UnixMillis::from_millis(NOW),
    );
    let stranger = stranger.token().expose_secret().to_owned();
    assert!(Token::parse(&stranger).is_ok());
    let unknown = gw
        .keyring
        .authenticate(&stranger, keygate::UnixMillis::from_millis(NOW))
        .unwrap_err();
    assert_eq!(unknown, AuthError::InvalidCredentials);

    // The root key's id with a wrong secret (one character changed, the
    // checksum recomputed, so it parses).
    let mut wrong = root.clone().into_bytes();
    wrong[40] = if wrong[40] == b'a' { b'b' } else { b'a' };
    let wrong = with_checksum(std::str::from_utf8(&wrong).unwrap());
    let parsed = Token::parse(&wrong).unwrap();
    assert_eq!(parsed.key_id(), Token::parse(&root).unwrap().key_id());
    assert_eq!(parsed.kind(), KeyKind::Standard);
    let wrong_secret = gw
        .keyring
        .authenticate(&wrong, keygate::UnixMillis::from_millis(NOW))
        .unwrap_err();
    assert_eq!(wrong_secret, AuthError::InvalidCredentials);

    let malformed = gw
        .keyring
        .authenticate("ak_not_a_token", keygate::UnixMillis::from_millis(NOW))
        .unwrap_err();
    assert_eq!(
        malformed,
        AuthError::Malformed(TokenError::Length { len: 14 })
    );
    for e in [unknown, wrong_secret, malformed] {
        assert_eq!(e.http_status(), 401);
        assert!(!e.to_string().contains(&root[20..63]));
    }
    // Unknown id and wrong secret are indistinguishable to the caller: the
    // same status and the same body, byte for byte; the right secret works.
    let body = scope_body("devboxes:read");
    let answer_unknown = gw.create_restricted(&stranger, &body);
    let answer_wrong = gw.create_restricted(&wrong, &body);
    assert_eq!(answer_unknown.0, 401);
    assert_eq!(answer_unknown, answer_wrong);
    assert_eq!(
        serde_json::to_vec(&answer_unknown.1).unwrap(),
        serde_json::to_vec(&answer_wrong.1).unwrap()
    );
    assert_eq!(gw.create_restricted(&root, &body).0, 200);
}

#[test]
fn expiry_takes_effect() {
    let mut gw = Gateway::new(MintPolicy::Spec);
    let req = MintRequest::restricted(
        None,
        "objects:read".parse().unwrap(),
        Some(keygate::UnixMillis::from_millis(NOW + 1_000)),
        keygate::UnixMillis::from_millis(NOW),
    )
    .unwrap();
    let (record, token) = mint(
        gw.keyring.pepper(),
        &req,
        &mut gw.rng,
        keygate::UnixMillis::from_millis(NOW),
    )
    .into_parts();
    gw.keyring.insert(record).unwrap();
    let token = token.expose_secret();
    assert!(gw
        .keyring
        .authenticate(token, keygate::UnixMillis::from_millis(NOW + 999))
        .is_ok());
    let err = gw
        .keyring
        .authenticate(token, keygate::UnixMillis::from_millis(NOW + 1_000))
        .unwrap_err();
    assert!(
        matches!(err, AuthError::Expired { expires_at, .. } if expires_at.as_millis() == NOW + 1_000)
    );
    assert_eq!(err.http_status(), 401);
}

#[test]
fn revoke_stops_a_key() {
    let mut gw = Gateway::new(MintPolicy::Spec);
    let root = gw.bootstrap();
    let id = Token::parse(&root).unwrap().key_id();
    assert!(gw
        .keyring
        .authenticate(&root, keygate::UnixMillis::from_millis(NOW))
        .is_ok());
    assert!(gw.keyring.revoke(&id).is_some());
    assert_eq!(
        gw.keyring
            .authenticate(&root, keygate::UnixMillis::from_millis(NOW)),
        Err(AuthError::InvalidCredentials)
    );
}

#[test]
fn secrets_never_show_in_debug_or_errors() {
    let mut gw = Gateway::new(MintPolicy::Spec);
    let req =
        MintRequest::standard(Some("x"), None, keygate::UnixMillis::from_millis(NOW)).unwrap();
    let minted = mint(
        gw.keyring.pepper(),
        &req,
        &mut gw.rng,
        keygate::UnixMillis::from_millis(NOW),
    );
    let secret = minted.token().expose_secret().to_owned();
    let secret_part = &secret[20..63];
    let shown = [
        format!("{minted:?}"),
        format!("{:?}", minted.record()),
        format!("{:?}", minted.token()),
        format!("{}", minted.token()),
        format!("{:?}", Token::parse(&secret).unwrap()),
        format!("{}", Token::parse(&secret).unwrap()),
        format!("{:?}", gw.keyring),
        serde_json::to_string(minted.record()).unwrap(),
    ];
    for s in shown {
        assert!(!s.contains(secret_part), "{s}");
    }
    let view = keygate::wire::CreatedKeyView::from(minted);
    assert!(!format!("{view:?}").contains(secret_part));
    assert!(serde_json::to_string(&view).unwrap().contains(&secret));
}

#[test]
fn documented_regex_finds_minted_tokens_in_text() {
    let re = regex_lite::Regex::new(keygate::TOKEN_REGEX).unwrap();
    let mut rng = ChaCha20Rng::seed_from_u64(5);
    let pepper = Pepper::generate(&mut rng);
    for request in [
        MintRequest::standard(None, None, keygate::UnixMillis::from_millis(NOW)).unwrap(),
        MintRequest::restricted(
            None,
            Scopes::all(),
            None,
            keygate::UnixMillis::from_millis(NOW),
        )
        .unwrap(),
    ] {
        let token = mint(
            &pepper,
            &request,
            &mut rng,
            keygate::UnixMillis::from_millis(NOW),
        )
        .token()
        .expose_secret()
        .to_owned();
        let text = format!("export KEY=\"{token}\"\nurl=https://x/?k={token}&y=1");
        let found: Vec<&str> = re.find_iter(&text).map(|m| m.as_str()).collect();
        assert_eq!(found, [token.as_str(), token.as_str()]);
        // Glued to more word characters, it is not a token.
        assert!(!re.is_match(&format!("{token}x")));
        assert!(!re.is_match(&format!("x{token}")));
        assert!(!re.is_match(&token[..68]));
    }
}

#[test]
fn keyring_is_shareable_across_threads() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Keyring>();
    assert_send_sync::<keygate::Principal>();
    assert_send_sync::<keygate::KeyRecord>();
}
