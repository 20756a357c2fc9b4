//! What one tenant's key can do to another, over real HTTP against the real
//! binary, on SQLite and on a throwaway PostgreSQL: lineage through rolls,
//! the scoped audit log, a self-roll that would lock its holder out, and
//! creates and rolls racing their caller's revocation (no child survives).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;
#[path = "support/pg.rs"]
mod pg;

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;

use common::*;
use serde_json::Value;

const ADMIN_SCOPES: &str = r#"{"name":"tenant","scopes":[
    {"resource_type":"RESOURCE_TYPE_ACCOUNT","access_level":"ACCESS_LEVEL_WRITE"},
    {"resource_type":"RESOURCE_TYPE_OBJECTS","access_level":"ACCESS_LEVEL_WRITE"}]}"#;

fn create(server: &Server, caller: &str, body: &str) -> Value {
    let r = server.authed("POST", "/v1/restricted_keys", caller, Some(body));
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()
}

fn secret(v: &Value) -> String {
    v["key_secret"].as_str().unwrap().to_owned()
}

fn id(v: &Value) -> String {
    v["id"].as_str().unwrap().to_owned()
}

fn works(server: &Server, token: &str) -> bool {
    let status = server.authorize(token, "OBJECTS", "READ").status;
    assert!(status == 204 || status == 401, "{status}");
    status == 204
}

fn roll(server: &Server, caller: &str, id: &str, overlap_ms: u64) -> Value {
    let r = server.authed(
        "POST",
        &format!("/v1/keys/{id}/roll"),
        caller,
        Some(&format!(r#"{{"overlap_ms":{overlap_ms}}}"#)),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()
}

fn event_keys(server: &Server, caller: &str) -> BTreeSet<String> {
    let v = server
        .authed("GET", "/v1/events?limit=100", caller, None)
        .json();
    v["events"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|e| [e["key_id"].as_str(), e["new_key_id"].as_str()])
        .flatten()
        .map(str::to_owned)
        .collect()
}

/// A roll's new key inherits the old key's children: it reads them, and
/// revoking it revokes them (the review's P, C, P′).
fn a_roll_keeps_the_subtree(server: &Server) {
    let admin = server.token().to_owned();
    let p = create(server, &admin, ADMIN_SCOPES);
    let c = create(server, &secret(&p), ADMIN_SCOPES);
    let g = create(server, &secret(&c), ADMIN_SCOPES);
    let p2 = roll(server, &admin, &id(&p), 0);
    assert!(!works(server, &secret(&p)));
    for child in [&c, &g] {
        let r = server.authed(
            "GET",
            &format!("/v1/keys/{}", id(child)),
            &secret(&p2),
            None,
        );
        assert_eq!(r.status, 200, "{}", r.text());
    }
    // The new key mints into the same subtree.
    let d = create(server, &secret(&p2), ADMIN_SCOPES);
    let r = server.authed("DELETE", &format!("/v1/keys/{}", id(&p2)), &admin, None);
    assert_eq!(r.status, 204, "{}", r.text());
    for k in [&p2, &c, &g, &d] {
        assert!(!works(server, &secret(k)), "{}", id(k));
    }
}

/// A rolled key in its overlap is on its way out: it keeps authorizing,
/// but mints nothing that could escape the new key's cascade.
fn a_rolled_key_mints_no_more(server: &Server) {
    let admin = server.token().to_owned();
    let p = create(server, &admin, ADMIN_SCOPES);
    let p2 = roll(server, &admin, &id(&p), 60_000);
    assert!(works(server, &secret(&p)));
    // (Within the old key's shortened life, so the policy would allow it.)
    let body = format!(
        r#"{{"expires_at_ms":{},"scopes":[{{"resource_type":"RESOURCE_TYPE_OBJECTS","access_level":"ACCESS_LEVEL_READ"}}]}}"#,
        now_ms() + 30_000
    );
    let r = server.authed("POST", "/v1/restricted_keys", &secret(&p), Some(&body));
    assert_eq!(r.status, 409, "{}", r.text());
    assert!(r.text().contains("was rolled"), "{}", r.text());
    // Nor can the old key be rolled a second time.
    let r = server.authed(
        "POST",
        &format!("/v1/keys/{}/roll", id(&p)),
        &admin,
        Some(r#"{"overlap_ms":1000}"#),
    );
    assert_eq!(r.status, 409, "{}", r.text());
    create(server, &secret(&p2), ADMIN_SCOPES);
}

/// Two tenants with account write: neither reads the other's audit log.
fn the_audit_log_is_scoped(server: &Server) {
    let admin = server.token().to_owned();
    let t1 = create(server, &admin, ADMIN_SCOPES);
    let t2 = create(server, &admin, ADMIN_SCOPES);
    let k1 = create(server, &secret(&t1), ADMIN_SCOPES);
    let k1b = roll(server, &secret(&t1), &id(&k1), 1_000);
    let k2 = create(server, &secret(&t2), ADMIN_SCOPES);
    assert_eq!(
        event_keys(server, &secret(&t1)),
        BTreeSet::from([id(&k1), id(&k1b)])
    );
    assert_eq!(event_keys(server, &secret(&t2)), BTreeSet::from([id(&k2)]));
    let all = event_keys(server, &admin);
    for k in [&t1, &t2, &k1, &k1b, &k2] {
        assert!(all.contains(&id(k)));
    }
}

/// A self-roll with no overlap would end the caller's key at once; if the
/// answer were lost its holder would be locked out.
fn a_self_roll_needs_an_overlap(server: &Server) {
    let admin = server.token().to_owned();
    let r = server.authed("POST", "/v1/apikeys", &admin, Some(r#"{"name":"self"}"#));
    let me: Value = r.json();
    let path = format!("/v1/keys/{}/roll", id(&me));
    let detail = server
        .authed("POST", &path, &secret(&me), Some(r#"{"overlap_ms":0}"#))
        .problem(400);
    assert!(detail.contains("overlap_ms"), "{detail}");
    assert!(works(server, &secret(&me)));
    let r = server.authed("POST", &path, &secret(&me), Some(r#"{"overlap_ms":5000}"#));
    assert_eq!(r.status, 200, "{}", r.text());
}

/// A key sends creates and rolls while the root revokes it: every answer is
/// 200, 401, 404 (a roll's target revoked by the cascade) or 409 (rolled
/// already by a sibling request), never 5xx, and
/// afterwards nothing it minted authorizes.
fn creates_racing_their_callers_revocation_leave_no_child(server: &Server, rounds: usize) {
    let admin = server.token().to_owned();
    for round in 0..rounds {
        let tenant = create(server, &admin, ADMIN_SCOPES);
        let victim = create(server, &secret(&tenant), ADMIN_SCOPES);
        let token = Arc::new(secret(&tenant));
        let addr = server.addr;
        let barrier = Arc::new(std::sync::Barrier::new(41));
        let mut workers = Vec::new();
        for i in 0..40 {
            let token = Arc::clone(&token);
            let barrier = Arc::clone(&barrier);
            let victim = id(&victim);
            workers.push(std::thread::spawn(move || {
                barrier.wait();
                let auth = format!("Bearer {token}");
                let (path, body) = if i % 4 == 3 {
                    (format!("/v1/keys/{victim}/roll"), r#"{"overlap_ms":0}"#)
                } else {
                    (String::from("/v1/restricted_keys"), ADMIN_SCOPES)
                };
                let r = request(
                    addr,
                    "POST",
                    &path,
                    &[("Authorization", &auth)],
                    Some(body.as_bytes()),
                );
                let minted =
                    (r.status == 200).then(|| r.json()["key_secret"].as_str().unwrap().to_owned());
                (r.status, minted)
            }));
        }
        barrier.wait();
        let r = server.authed("DELETE", &format!("/v1/keys/{}", id(&tenant)), &admin, None);
        assert_eq!(r.status, 204, "{}", r.text());
        let mut statuses = Vec::new();
        let mut minted = Vec::new();
        for w in workers {
            let (status, key) = w.join().unwrap();
            statuses.push(status);
            minted.extend(key);
        }
        assert!(
            statuses.iter().all(|s| [200, 401, 404, 409].contains(s)),
            "round {round}: {statuses:?}"
        );
        // The revocation reached this instance's memory before its 204.
        let alive: Vec<&String> = minted.iter().filter(|t| works(server, t)).collect();
        assert!(
            alive.is_empty(),
            "round {round}: {} of {} children survive",
            alive.len(),
            minted.len()
        );
        assert!(!works(server, &secret(&victim)));
    }
}

#[test]
fn tenancy_on_sqlite() {
    let dir = TempDir::new("tenancy");
    let server = Server::start(&dir.db(), &["--attenuate"]);
    a_roll_keeps_the_subtree(&server);
    a_rolled_key_mints_no_more(&server);
    the_audit_log_is_scoped_fresh(&dir);
    a_self_roll_needs_an_overlap(&server);
    creates_racing_their_callers_revocation_leave_no_child(&server, 5);
}

/// The audit-log test wants a log with only its own tenants in it.
fn the_audit_log_is_scoped_fresh(dir: &TempDir) {
    let db = dir.0.join("events.db");
    let server = Server::start(&db, &["--attenuate"]);
    the_audit_log_is_scoped(&server);
}

#[test]
fn tenancy_on_postgres() {
    let pg = pg::TestPg::start();
    let dir = TempDir::new("tenancy-pg");
    let pepper = dir.0.join("pepper");
    let mut server = Server::start(
        Path::new(&pg.url()),
        &["--attenuate", "--pepper-file", pepper.to_str().unwrap()],
    );
    server.bootstrap = take_bootstrap_file(&pepper);
    the_audit_log_is_scoped(&server);
    a_roll_keeps_the_subtree(&server);
    a_rolled_key_mints_no_more(&server);
    a_self_roll_needs_an_overlap(&server);
    creates_racing_their_callers_revocation_leave_no_child(&server, 5);
}

// ---- Found by the outside review of this change ---------------------------

fn standard(server: &Server, caller: &str, body: &str) -> Value {
    let r = server.authed("POST", "/v1/apikeys", caller, Some(body));
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()
}

/// A thief holding a rolled (old) key must not act on the key that replaced
/// it, nor on anything else: a rolled key keeps authorizing requests in its
/// overlap, but manages no key. The 409 names no successor.
fn a_rolled_key_manages_nothing(server: &Server, admin: &str, victim: &Value) {
    let old = secret(victim);
    let new = roll(server, admin, &id(victim), 3_600_000);
    assert!(works(server, &old));
    let other = standard(server, admin, r#"{"name":"bystander"}"#);
    for (method, path, body) in [
        (
            "POST",
            format!("/v1/keys/{}/roll", id(&new)),
            Some(r#"{"overlap_ms":0}"#),
        ),
        ("DELETE", format!("/v1/keys/{}", id(&new)), None),
        (
            "POST",
            format!("/v1/keys/{}/roll", id(&other)),
            Some(r#"{"overlap_ms":0}"#),
        ),
        ("DELETE", format!("/v1/keys/{}", id(&other)), None),
        ("GET", format!("/v1/keys/{}", id(&new)), None),
        ("GET", String::from("/v1/keys"), None),
        ("GET", String::from("/v1/events"), None),
        ("POST", String::from("/v1/apikeys"), Some("{}")),
    ] {
        let r = server.authed(method, &path, &old, body);
        assert_eq!(r.status, 409, "{method} {path}: {}", r.text());
        assert!(!r.text().contains(&id(&new)), "{}", r.text());
    }
    for k in [&new, &other] {
        assert!(works(server, &secret(k)), "{}", id(k));
    }
    // Self-revocation still works: the holder may end the old key early.
    let r = server.req(
        "POST",
        "/v1/keys/revoke",
        &[],
        Some(format!(r#"{{"token":"{old}"}}"#).as_bytes()),
    );
    assert_eq!(r.status, 200);
    assert!(!works(server, &old));
    assert!(works(server, &secret(&new)));
}

/// Revoking a key ends the keys rolled into it that are still in their
/// overlap: the credential, not just its newest secret.
fn revoking_a_successor_ends_its_predecessors(server: &Server, admin: &str) {
    let t = standard(server, admin, r#"{"name":"t"}"#);
    let t2 = roll(server, admin, &id(&t), 604_800_000);
    let t3 = roll(server, admin, &id(&t2), 604_800_000);
    assert!(works(server, &secret(&t)) && works(server, &secret(&t2)));
    let r = server.authed("DELETE", &format!("/v1/keys/{}", id(&t3)), admin, None);
    assert_eq!(r.status, 204, "{}", r.text());
    for k in [&t, &t2, &t3] {
        assert!(!works(server, &secret(k)), "{}", id(k));
    }
}

#[test]
fn rolled_keys_under_attenuate_and_under_the_spec_policy() {
    let dir = TempDir::new("rolled");
    let server = Server::start(&dir.db(), &["--attenuate"]);
    let admin = server.token().to_owned();
    let victim = standard(&server, &admin, r#"{"name":"ops"}"#);
    a_rolled_key_manages_nothing(&server, &admin, &victim);
    revoking_a_successor_ends_its_predecessors(&server, &admin);

    // Under the spec's policy, a restricted key with account write acts on
    // every key: the same rule must hold.
    let db = dir.0.join("spec.db");
    let spec = Server::start(&db, &[]);
    let admin = spec.token().to_owned();
    let victim = create(&spec, &admin, ADMIN_SCOPES);
    a_rolled_key_manages_nothing(&spec, &admin, &victim);
}

/// Under `--attenuate` a roll is a mint: an expiring caller cannot roll a
/// key that outlives it (and get its new, longer-lived secret), nor a
/// restricted caller a key wider than itself.
#[test]
fn a_roll_obeys_the_attenuating_policy() {
    let dir = TempDir::new("roll-policy");
    let server = Server::start(&dir.db(), &["--attenuate"]);
    let admin = server.token().to_owned();
    let service = standard(&server, &admin, r#"{"name":"service"}"#);
    let soon = now_ms() + 600_000;
    let mortal = standard(&server, &admin, &format!(r#"{{"expires_at_ms":{soon}}}"#));
    let r = server.authed(
        "POST",
        &format!("/v1/keys/{}/roll", id(&service)),
        &secret(&mortal),
        Some(r#"{"overlap_ms":604800000}"#),
    );
    assert_eq!(r.status, 403, "{}", r.text());
    assert!(r.text().contains("expires_at_ms"), "{}", r.text());
    // A key that expires no later than the caller may be rolled by it.
    let child = standard(
        &server,
        &secret(&mortal),
        &format!(r#"{{"expires_at_ms":{soon}}}"#),
    );
    roll(&server, &secret(&mortal), &id(&child), 1_000);
}

/// The scoped audit log names no key outside the caller's subtree: an
/// admin's roll of a tenant's key shows no actor.
#[test]
fn scoped_events_name_no_actor_outside_the_subtree() {
    let dir = TempDir::new("actors");
    let server = Server::start(&dir.db(), &["--attenuate"]);
    let admin = server.token().to_owned();
    let tenant = create(&server, &admin, ADMIN_SCOPES);
    let k = create(&server, &secret(&tenant), ADMIN_SCOPES);
    roll(&server, &admin, &id(&k), 1_000);
    let v = server
        .authed("GET", "/v1/events?limit=100", &secret(&tenant), None)
        .json();
    let events = v["events"].as_array().unwrap();
    assert_eq!(events.len(), 3, "{v}");
    let admin_id = &admin[3..19];
    assert!(!v.to_string().contains(admin_id), "{v}");
    assert_eq!(events[0]["actor_id"], id(&tenant).as_str());
    assert!(events[2]["actor_id"].is_null(), "{v}");
}
