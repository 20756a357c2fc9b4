//! The README's "someone else's axum gateway" example, served for real:
//! `keygate::tower::Require` on an axum route.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::sync::{Arc, RwLock};

use axum::{routing::post, Extension, Router};
use keygate::tower::Require;
use keygate::{Access, Keyring, MintRequest, Pepper, Principal, Resource, Scopes};

// --- as in the README ---
async fn create_devbox(Extension(key): Extension<Principal>) -> String {
    format!("devbox created by key {}", key.id())
}

fn app(keyring: Arc<RwLock<Keyring>>) -> Router {
    Router::new()
        .route("/devboxes", post(create_devbox))
        .route_layer(Require::scope(keyring, Resource::Devboxes, Access::Write))
}
// ---

#[test]
fn require_scope_guards_an_axum_route() {
    let mut rng = keygate::os_entropy();
    let keyring = Arc::new(RwLock::new(Keyring::new(Pepper::generate(&mut rng))));
    let mut mint = |scopes: Option<Scopes>| {
        let request = match scopes {
            Some(s) => {
                MintRequest::restricted(None, s, None, keygate::UnixMillis::from_millis(0)).unwrap()
            }
            None => MintRequest::standard(None, None, keygate::UnixMillis::from_millis(0)).unwrap(),
        };
        let mut ring = keyring.write().unwrap();
        let (record, token) = keygate::mint(
            ring.pepper(),
            &request,
            &mut rng,
            keygate::UnixMillis::from_millis(0),
        )
        .into_parts();
        ring.insert(record).unwrap();
        token.expose_secret().to_owned()
    };
    let writer = mint(Some("devboxes:write".parse().unwrap()));
    let reader = mint(Some("devboxes:read".parse().unwrap()));
    let admin = mint(None);

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let router = app(Arc::clone(&keyring));
    runtime.spawn(async move { axum::serve(listener, router).await });

    for token in [&writer, &admin] {
        let r = common::request(
            addr,
            "POST",
            "/devboxes",
            &[("Authorization", &format!("Bearer {token}"))],
            None,
        );
        assert_eq!(r.status, 200);
        assert_eq!(r.text(), format!("devbox created by key {}", &token[3..19]));
    }
    let r = common::request(
        addr,
        "POST",
        "/devboxes",
        &[("Authorization", &format!("bearer {reader}"))],
        None,
    );
    r.problem(403);
    assert_eq!(
        r.header("www-authenticate"),
        Some(r#"Bearer error="insufficient_scope""#)
    );
    let r = common::request(addr, "POST", "/devboxes", &[], None);
    r.problem(401);
    assert_eq!(
        r.header("www-authenticate"),
        Some(r#"Bearer error="invalid_token""#)
    );
    // Revoking in the shared keyring takes effect at once.
    let id = keygate::Token::parse(&writer).unwrap().key_id();
    keyring.write().unwrap().revoke(&id);
    let r = common::request(
        addr,
        "POST",
        "/devboxes",
        &[("Authorization", &format!("Bearer {writer}"))],
        None,
    );
    r.problem(401);
}
