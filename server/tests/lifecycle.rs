//! The key lifecycle over real HTTP, against the real binary: list, read,
//! revoke, roll, self-revocation, the audit log, attenuation, last-used
//! tracking, and changes made by the CLI while the server runs.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;
/// The library tests' token forger (a checksum over any body).
#[path = "../../tests/common/mod.rs"]
mod forge;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

const OPS_SCOPES: &str = r#"{"name":"ops","scopes":[
    {"resource_type":"RESOURCE_TYPE_ACCOUNT","access_level":"ACCESS_LEVEL_WRITE"},
    {"resource_type":"RESOURCE_TYPE_OBJECTS","access_level":"ACCESS_LEVEL_WRITE"}]}"#;

fn create(server: &Server, caller: &str, path: &str, body: &str) -> Value {
    let r = server.authed("POST", path, caller, Some(body));
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()
}

fn secret(v: &Value) -> String {
    v["key_secret"].as_str().unwrap().to_owned()
}

fn id(v: &Value) -> String {
    v["id"].as_str().unwrap().to_owned()
}

fn id_of(token: &str) -> String {
    token[3..19].to_owned()
}

fn works(server: &Server, token: &str) -> bool {
    let status = server.authorize(token, "OBJECTS", "READ").status;
    assert!(status == 204 || status == 401, "{status}");
    status == 204
}

#[test]
fn list_paginates_in_id_order_and_hides_revoked_keys() {
    let dir = TempDir::new("list");
    let server = Server::start(&dir.db(), &[]);
    let admin = server.token().to_owned();
    let mut ids = BTreeSet::from([id_of(&admin)]);
    for i in 0..249 {
        let v = create(
            &server,
            &admin,
            "/v1/apikeys",
            &format!(r#"{{"name":"k{i}"}}"#),
        );
        ids.insert(id(&v));
    }
    assert_eq!(ids.len(), 250);

    let page = |query: &str| -> Value {
        let r = server.authed("GET", &format!("/v1/keys{query}"), &admin, None);
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.header("content-type"), Some("application/json"));
        r.json()
    };
    // Default page size 20.
    let first = page("");
    assert_eq!(first["keys"].as_array().unwrap().len(), 20);
    assert_eq!(first["has_more"], true);

    let mut seen = Vec::new();
    let mut query = String::from("?limit=100");
    loop {
        let v = page(&query);
        let keys = v["keys"].as_array().unwrap();
        seen.extend(keys.iter().map(|k| k["id"].as_str().unwrap().to_owned()));
        if v["has_more"] == false {
            break;
        }
        query = format!("?limit=100&starting_after={}", seen.last().unwrap());
    }
    assert_eq!(seen.len(), 250);
    assert_eq!(seen, ids.iter().cloned().collect::<Vec<_>>(), "id order");

    // A standard key's view: all nine resources at WRITE, no secret, no hash.
    let v = &first["keys"][0];
    assert_eq!(
        fields(v),
        [
            "created_at_ms",
            "creator_id",
            "credits",
            "expires_at_ms",
            "id",
            "kind",
            "last_used_at_ms",
            "name",
            "rate_limit",
            "scopes"
        ]
    );
    assert_eq!(v["kind"], "standard");
    assert_eq!(v["scopes"].as_array().unwrap().len(), 9);
    assert!(v["scopes"]
        .as_array()
        .unwrap()
        .iter()
        .all(|s| s["access_level"] == "ACCESS_LEVEL_WRITE"));

    // Revoked keys are not listed.
    let victim = seen[10].clone();
    assert_eq!(
        server
            .authed("DELETE", &format!("/v1/keys/{victim}"), &admin, None)
            .status,
        204
    );
    let v = page(&format!("?limit=100&starting_after={}", seen[9]));
    assert_eq!(v["keys"][0]["id"], seen[11]);

    // Bad queries are 400.
    for q in [
        "?limit=0",
        "?limit=101",
        "?limit=x",
        "?starting_after=short",
        "?starting_after=aaaaaaaaaaaaaaa%21",
        "?cursor=1",
        "?limit=5&limit=6",
    ] {
        server
            .authed("GET", &format!("/v1/keys{q}"), &admin, None)
            .problem(400);
    }
}

#[test]
fn get_revoke_and_the_audit_log() {
    let dir = TempDir::new("get");
    let server = Server::start(&dir.db(), &[]);
    let admin = server.token().to_owned();
    let expires = now_ms() + 3_600_000;
    let v = create(
        &server,
        &admin,
        "/v1/restricted_keys",
        &format!(
            r#"{{"name":"reader","expires_at_ms":{expires},"scopes":[{{"resource_type":"RESOURCE_TYPE_OBJECTS","access_level":"ACCESS_LEVEL_READ"}}]}}"#
        ),
    );
    let key = secret(&v);
    let key_id = id(&v);

    let r = server.authed("GET", &format!("/v1/keys/{key_id}"), &admin, None);
    assert_eq!(r.status, 200, "{}", r.text());
    let view = r.json();
    assert_eq!(view["id"], key_id.as_str());
    assert_eq!(view["name"], "reader");
    assert_eq!(view["kind"], "restricted");
    assert_eq!(view["expires_at_ms"], expires);
    assert_eq!(view["creator_id"], id_of(&admin).as_str());
    assert_eq!(
        view["scopes"],
        serde_json::json!([{"resource_type":"RESOURCE_TYPE_OBJECTS","access_level":"ACCESS_LEVEL_READ"}])
    );
    assert!(!r.text().contains(&key[19..]));

    // 404 unknown, 400 malformed.
    server
        .authed("GET", "/v1/keys/0000000000000000", &admin, None)
        .problem(404);
    server
        .authed("GET", "/v1/keys/not-an-id", &admin, None)
        .problem(400);
    server
        .authed("DELETE", "/v1/keys/0000000000000000", &admin, None)
        .problem(404);

    // A key without account:write may not use the lifecycle endpoints.
    for (method, path) in [
        ("GET", "/v1/keys".to_owned()),
        ("GET", format!("/v1/keys/{key_id}")),
        ("DELETE", format!("/v1/keys/{key_id}")),
        ("POST", format!("/v1/keys/{key_id}/roll")),
        ("GET", "/v1/events".to_owned()),
    ] {
        let r = server.authed(method, &path, &key, None);
        assert_eq!(r.status, 403, "{method} {path}: {}", r.text());
        let r = server.req(method, &path, &[], None);
        assert_eq!(r.status, 401, "{method} {path}");
    }

    // Revoke: 204, then the key is refused at once, then 404.
    assert!(works(&server, &key));
    let r = server.authed("DELETE", &format!("/v1/keys/{key_id}"), &admin, None);
    assert_eq!(r.status, 204);
    assert!(r.body.is_empty());
    assert!(!works(&server, &key));
    server
        .authed("DELETE", &format!("/v1/keys/{key_id}"), &admin, None)
        .problem(404);
    // A revoked key is gone for GET too; its history stays in the log.
    server
        .authed("GET", &format!("/v1/keys/{key_id}"), &admin, None)
        .problem(404);

    // The audit log: bootstrap created (no actor), reader created, revoked.
    let r = server.authed("GET", "/v1/events", &admin, None);
    assert_eq!(r.status, 200, "{}", r.text());
    let log = r.json();
    assert_eq!(log["has_more"], false);
    let events = log["events"].as_array().unwrap();
    let summary: Vec<(String, String, Value)> = events
        .iter()
        .map(|e| {
            (
                e["action"].as_str().unwrap().to_owned(),
                e["key_id"].as_str().unwrap().to_owned(),
                e["actor_id"].clone(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            ("created".into(), id_of(&admin), Value::Null),
            ("created".into(), key_id.clone(), Value::from(id_of(&admin))),
            ("revoked".into(), key_id.clone(), Value::from(id_of(&admin))),
        ]
    );
    let seqs: Vec<u64> = events.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
    for e in events {
        assert!(e["at_ms"].as_i64().unwrap() > 1_700_000_000_000);
    }
    // Paging through the log.
    let r = server.authed(
        "GET",
        &format!("/v1/events?after={}&limit=1", seqs[0]),
        &admin,
        None,
    );
    let page = r.json();
    assert_eq!(page["events"].as_array().unwrap().len(), 1);
    assert_eq!(page["events"][0]["seq"], seqs[1]);
    assert_eq!(page["has_more"], true);
    for q in ["?after=-1", "?limit=0", "?after=1&after=2", "?seq=1"] {
        server
            .authed("GET", &format!("/v1/events{q}"), &admin, None)
            .problem(400);
    }
}

#[test]
fn roll_with_an_overlap_ends_the_old_key_and_keeps_the_rest() {
    let dir = TempDir::new("roll");
    let server = Server::start(&dir.db(), &[]);
    let admin = server.token().to_owned();
    let v = create(&server, &admin, "/v1/restricted_keys", OPS_SCOPES);
    let old = secret(&v);
    let old_id = id(&v);

    // Validation first.
    for body in [
        r#"{"overlap_ms":-1}"#,
        r#"{"overlap_ms":604800001}"#,
        r#"{"overlap":5}"#,
        r#"[]"#,
    ] {
        server
            .authed(
                "POST",
                &format!("/v1/keys/{old_id}/roll"),
                &admin,
                Some(body),
            )
            .problem(400);
    }
    server
        .authed("POST", "/v1/keys/0000000000000000/roll", &admin, None)
        .problem(404);

    let overlap = 1_500;
    let started = now_ms();
    let r = server.authed(
        "POST",
        &format!("/v1/keys/{old_id}/roll"),
        &admin,
        Some(&format!(r#"{{"overlap_ms":{overlap}}}"#)),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let rolled = r.json();
    // The spec's RestrictedKeyCreatedView, same name and scopes, new id.
    assert_eq!(
        fields(&rolled),
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
    assert_eq!(rolled["name"], "ops");
    assert_eq!(rolled["scopes"], v["scopes"]);
    assert!(rolled["expires_at_ms"].is_null());
    let new = secret(&rolled);
    let new_id = id(&rolled);
    assert_ne!(new_id, old_id);
    assert!(new.starts_with("rk_"));

    // Both work during the overlap; the old one's expiry is now + overlap.
    assert!(works(&server, &new));
    assert!(works(&server, &old));
    let old_view = server
        .authed("GET", &format!("/v1/keys/{old_id}"), &admin, None)
        .json();
    let end = old_view["expires_at_ms"].as_i64().unwrap();
    assert!(
        end >= started + overlap && end <= now_ms() + overlap,
        "{end}"
    );
    let new_view = server
        .authed("GET", &format!("/v1/keys/{new_id}"), &admin, None)
        .json();
    assert_eq!(new_view["creator_id"], old_view["creator_id"]);
    assert_eq!(new_view["expires_at_ms"], Value::Null);

    // Until the overlap ends; then the old key fails and the new one works.
    while now_ms() < end {
        std::thread::sleep(Duration::from_millis(50));
    }
    let r = server.authorize(&old, "OBJECTS", "READ");
    assert_eq!(r.status, 401);
    assert!(r.text().contains("expired"), "{}", r.text());
    assert!(works(&server, &new));

    // The log: created (new), then rolled (old) naming the new id.
    let events = server.authed("GET", "/v1/events", &admin, None).json();
    let events = events["events"].as_array().unwrap();
    let n = events.len();
    assert_eq!(events[n - 2]["action"], "created");
    assert_eq!(events[n - 2]["key_id"], new_id.as_str());
    assert_eq!(events[n - 1]["action"], "rolled");
    assert_eq!(events[n - 1]["key_id"], old_id.as_str());
    assert_eq!(events[n - 1]["new_key_id"], new_id.as_str());

    // A roll never extends a life: an expired key cannot be rolled (409),
    // and a standard key's roll with overlap 0 ends it now.
    let r = server.authed("POST", &format!("/v1/keys/{old_id}/roll"), &admin, None);
    assert_eq!(r.status, 409, "{}", r.text());
    let std_key = create(&server, &admin, "/v1/apikeys", "{}");
    let r = server.authed(
        "POST",
        &format!("/v1/keys/{}/roll", id(&std_key)),
        &admin,
        None,
    );
    assert_eq!(r.status, 200);
    assert_eq!(
        fields(&r.json()),
        [
            "credits",
            "expires_at_ms",
            "id",
            "key_secret",
            "name",
            "rate_limit"
        ]
    );
    assert!(!works(&server, &secret(&std_key)));
    assert!(works(&server, &secret(&r.json())));
}

#[test]
fn self_revocation_is_no_oracle() {
    let dir = TempDir::new("selfrevoke");
    let server = Server::start(&dir.db(), &[]);
    let admin = server.token().to_owned();
    let leaked = secret(&create(&server, &admin, "/v1/apikeys", "{}"));

    let revoke = |token: &str| {
        server.req(
            "POST",
            "/v1/keys/revoke",
            &[("Content-Type", "application/json")],
            Some(format!(r#"{{"token":"{token}"}}"#).as_bytes()),
        )
    };
    // A random well-formed token, a malformed one, and the real one: the
    // same answer, with no Authorization header.
    let random = format!("ak_{}_{}", "R".repeat(16), "Q".repeat(49));
    let answers: Vec<Resp> = [random.as_str(), "nonsense", leaked.as_str()]
        .iter()
        .map(|t| revoke(t))
        .collect();
    for r in &answers {
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.body, b"{}");
        assert_eq!(r.header("content-type"), Some("application/json"));
    }
    assert!(!works(&server, &leaked));
    assert!(works(&server, &admin));
    // Again: still 200 {}.
    assert_eq!(revoke(&leaked).body, b"{}");
    // The log names the key as its own actor.
    let events = server.authed("GET", "/v1/events", &admin, None).json();
    let last = events["events"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["action"], "revoked");
    assert_eq!(last["key_id"], id_of(&leaked).as_str());
    assert_eq!(last["actor_id"], id_of(&leaked).as_str());
    // A body that is not the expected JSON is a 400 (it says nothing about
    // any token).
    for body in [
        &b"{}"[..],
        b"[]",
        br#"{"token":1}"#,
        br#"{"token":"x","y":1}"#,
    ] {
        server
            .req("POST", "/v1/keys/revoke", &[], Some(body))
            .problem(400);
    }
}

#[test]
fn attenuation_scopes_callers_to_their_descendants_and_cascades() {
    let dir = TempDir::new("attenuate");
    let server = Server::start(&dir.db(), &["--attenuate"]);
    let admin = server.token().to_owned();
    let a = create(&server, &admin, "/v1/restricted_keys", OPS_SCOPES);
    let b = create(&server, &admin, "/v1/restricted_keys", OPS_SCOPES);
    let (a_key, b_key) = (secret(&a), secret(&b));
    // a mints a1, a1 mints a2: a's descendants.
    let a1 = create(&server, &a_key, "/v1/restricted_keys", OPS_SCOPES);
    let a2 = create(&server, &secret(&a1), "/v1/restricted_keys", OPS_SCOPES);
    let b1 = create(&server, &b_key, "/v1/restricted_keys", OPS_SCOPES);

    // b cannot see or touch a's keys: 404, as for an unknown id.
    for (method, path) in [
        ("GET", format!("/v1/keys/{}", id(&a1))),
        ("DELETE", format!("/v1/keys/{}", id(&a2))),
        ("POST", format!("/v1/keys/{}/roll", id(&a1))),
        ("GET", format!("/v1/keys/{}", id(&a))),
        ("GET", format!("/v1/keys/{}", id_of(&admin))),
    ] {
        server.authed(method, &path, &b_key, None).problem(404);
    }
    // ...nor itself: a key is not its own descendant.
    server
        .authed("GET", &format!("/v1/keys/{}", id(&b)), &b_key, None)
        .problem(404);
    // a lists exactly its descendants; the admin lists everything.
    let listed = |token: &str| -> BTreeSet<String> {
        let v = server
            .authed("GET", "/v1/keys?limit=100", token, None)
            .json();
        v["keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k["id"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(listed(&a_key), BTreeSet::from([id(&a1), id(&a2)]));
    assert_eq!(listed(&b_key), BTreeSet::from([id(&b1)]));
    assert_eq!(listed(&admin).len(), 6);
    assert_eq!(
        server
            .authed("GET", &format!("/v1/keys/{}", id(&a2)), &a_key, None)
            .status,
        200
    );

    // Revoking a revokes a1 and a2, each with its own event; b's stay.
    assert_eq!(
        server
            .authed("DELETE", &format!("/v1/keys/{}", id(&a)), &admin, None)
            .status,
        204
    );
    for k in [&a, &a1, &a2] {
        assert!(!works(&server, &secret(k)));
    }
    for k in [&b, &b1] {
        assert!(works(&server, &secret(k)));
    }
    let events = server
        .authed("GET", "/v1/events?limit=100", &admin, None)
        .json();
    let revoked: BTreeSet<String> = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "revoked")
        .map(|e| e["key_id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(revoked, BTreeSet::from([id(&a), id(&a1), id(&a2)]));

    // A short-lived key cannot mint a child that outlives it.
    let soon = now_ms() + 600_000;
    let short = create(
        &server,
        &admin,
        "/v1/restricted_keys",
        &format!(
            r#"{{"expires_at_ms":{soon},"scopes":[{{"resource_type":"RESOURCE_TYPE_ACCOUNT","access_level":"ACCESS_LEVEL_WRITE"}}]}}"#
        ),
    );
    let child = r#"{"scopes":[{"resource_type":"RESOURCE_TYPE_ACCOUNT","access_level":"ACCESS_LEVEL_READ"}]}"#;
    let d = server
        .authed("POST", "/v1/restricted_keys", &secret(&short), Some(child))
        .problem(403);
    assert!(d.contains("expires_at_ms"), "{d}");
    let later = format!(
        r#"{{"expires_at_ms":{},"scopes":[{{"resource_type":"RESOURCE_TYPE_ACCOUNT","access_level":"ACCESS_LEVEL_READ"}}]}}"#,
        soon + 1
    );
    server
        .authed("POST", "/v1/restricted_keys", &secret(&short), Some(&later))
        .problem(403);
    let within = format!(
        r#"{{"expires_at_ms":{soon},"scopes":[{{"resource_type":"RESOURCE_TYPE_ACCOUNT","access_level":"ACCESS_LEVEL_READ"}}]}}"#
    );
    create(&server, &secret(&short), "/v1/restricted_keys", &within);
}

#[test]
fn last_used_is_tracked_in_memory_and_flushed() {
    let dir = TempDir::new("lastused");
    let server = Server::start(&dir.db(), &["--last-used-flush-ms", "200"]);
    let admin = server.token().to_owned();
    let key = secret(&create(&server, &admin, "/v1/apikeys", "{}"));
    let path = format!("/v1/keys/{}", id_of(&key));
    let before = server.authed("GET", &path, &admin, None).json();
    assert!(before["last_used_at_ms"].is_null());
    let t0 = now_ms();
    assert!(works(&server, &key));
    let seen = server.authed("GET", &path, &admin, None).json()["last_used_at_ms"]
        .as_i64()
        .unwrap();
    assert!(seen >= t0 && seen <= now_ms(), "{seen}");
    // Flushed to the store within the interval: survives a restart.
    std::thread::sleep(Duration::from_millis(600));
    let mut server = server;
    server.sigterm();
    assert!(server.wait_exit(Duration::from_secs(10)).success());
    drop(server);
    let server = Server::start(&dir.db(), &[]);
    let after = server.authed("GET", &path, &admin, None).json()["last_used_at_ms"]
        .as_i64()
        .unwrap();
    assert!(after >= seen, "{after} < {seen}");
}

#[test]
fn known_id_wrong_secret_and_unknown_id_answer_byte_for_byte_alike() {
    let dir = TempDir::new("alike");
    let server = Server::start(&dir.db(), &[]);
    let admin = server.token().to_owned();
    let key = secret(&create(&server, &admin, "/v1/apikeys", "{}"));
    // Same id, another secret (checksum fixed up), and an unknown id.
    let wrong_secret = forge::with_checksum(&format!("{}{}", &key[..20], "Z".repeat(43)));
    let unknown_id = forge::with_checksum(&format!("ak_{}{}", "U".repeat(16), &key[19..63]));
    assert_ne!(wrong_secret, key);
    let strip_date = |r: Resp| -> (u16, Vec<(String, String)>, Vec<u8>) {
        let headers = r.headers.into_iter().filter(|(k, _)| k != "date").collect();
        (r.status, headers, r.body)
    };
    for path in [
        "/v1/authorize?resource_type=RESOURCE_TYPE_OBJECTS&access_level=ACCESS_LEVEL_READ",
        "/v1/keys",
    ] {
        let a = strip_date(server.authed("GET", path, &wrong_secret, None));
        let b = strip_date(server.authed("GET", path, &unknown_id, None));
        assert_eq!(a.0, 401);
        assert_eq!(a, b, "{path}");
    }
}

#[test]
fn the_bootstrap_secret_goes_to_a_0600_file_never_to_stderr() {
    use std::os::unix::fs::PermissionsExt;
    let dir = TempDir::new("bootstrap");
    // Start without the harness's file handling, to see the file itself.
    let path = bootstrap_path(&dir.db());
    let server = Server::start(&dir.db(), &[]);
    let token = server.token().to_owned();
    assert!(token.starts_with("ak_") && token.len() == 69, "{token}");
    assert!(!path.exists(), "the harness removed it");
    let log = server.log_text();
    assert!(!log.contains(&token[19..]), "secret in stderr: {log}");
    assert!(log.contains(".bootstrap-key"), "{log}");
    drop(server);

    let dir = TempDir::new("bootstrap-mode");
    let mut child = std::process::Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--db"])
        .arg(dir.db())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let path = bootstrap_path(&dir.db());
    let deadline = Instant::now() + Duration::from_secs(20);
    while !path.exists() {
        assert!(Instant::now() < deadline, "no bootstrap file");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(100));
    let meta = std::fs::metadata(&path).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    assert!(std::fs::read_to_string(&path).unwrap().starts_with("ak_"));
    child.kill().unwrap();
    child.wait().unwrap();
}

#[test]
fn a_cli_revocation_is_refused_by_the_running_server_within_a_second() {
    let dir = TempDir::new("clirevoke");
    let server = Server::start(&dir.db(), &[]);
    let admin = server.token().to_owned();
    let mut latencies = Vec::new();
    for _ in 0..10 {
        let key = secret(&create(&server, &admin, "/v1/apikeys", "{}"));
        assert!(works(&server, &key));
        let (ok, _, err) = cli(&dir.db(), &["revoke", &id_of(&key)], &[]);
        assert!(ok, "{err}");
        let revoked_at = Instant::now();
        while works(&server, &key) {
            assert!(
                revoked_at.elapsed() < Duration::from_secs(1),
                "still accepted after 1 s"
            );
            std::thread::sleep(Duration::from_millis(2));
        }
        latencies.push(revoked_at.elapsed());
    }
    latencies.sort();
    eprintln!(
        "cli revoke -> first refusal: min {:?}, median {:?}, max {:?}",
        latencies[0], latencies[5], latencies[9]
    );
    // A key minted by the CLI works without a restart, within a second too.
    let minted = mint_token(&dir.db(), &[]);
    let t = Instant::now();
    while !works(&server, &minted) {
        assert!(t.elapsed() < Duration::from_secs(1), "CLI key not seen");
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[test]
fn a_0_1_0_database_migrates_and_every_key_still_works() {
    let dir = TempDir::new("migrate");
    let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let db = dir.db();
    let pepper = dir.0.join("pepper");
    std::fs::copy(fixtures.join("keys-0.1.0.sqlite3"), &db).unwrap();
    std::fs::copy(fixtures.join("keys-0.1.0.pepper-bin"), &pepper).unwrap();
    let views: Vec<Value> = serde_json::from_str(
        &std::fs::read_to_string(fixtures.join("keys-0.1.0.views.json")).unwrap(),
    )
    .unwrap();
    let server = Server::start(&db, &["--pepper-file", pepper.to_str().unwrap()]);
    assert!(server.bootstrap.is_none(), "the database holds keys");
    let token = |name: &str| {
        secret(
            views
                .iter()
                .find(|v| v["name"] == name)
                .unwrap_or_else(|| panic!("{name}")),
        )
    };
    let std_key = token("std-key");
    let ci = token("ci");
    let short = token("short");
    let gone = token("gone");
    // Scopes and expiry survive.
    assert_eq!(server.authorize(&std_key, "ACCOUNT", "WRITE").status, 204);
    assert_eq!(server.authorize(&ci, "DEVBOXES", "WRITE").status, 204);
    assert_eq!(server.authorize(&ci, "OBJECTS", "READ").status, 204);
    assert_eq!(server.authorize(&ci, "OBJECTS", "WRITE").status, 403);
    assert_eq!(server.authorize(&short, "ACCOUNT", "WRITE").status, 204);
    assert_eq!(server.authorize(&short, "DEVBOXES", "READ").status, 403);
    let r = server.authorize(&gone, "DEVBOXES", "READ");
    assert_eq!(r.status, 401);
    assert!(r.text().contains("expired"), "{}", r.text());
    // The migrated keys are listed with their fields, no creator.
    let listed = server.authed("GET", "/v1/keys", &std_key, None).json();
    let keys = listed["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 4);
    let short_view = keys.iter().find(|k| k["name"] == "short").unwrap();
    assert_eq!(short_view["expires_at_ms"], 4_102_444_800_000_i64);
    assert!(short_view["creator_id"].is_null());
    // And each has a `created` event.
    let events = server.authed("GET", "/v1/events", &std_key, None).json();
    assert_eq!(events["events"].as_array().unwrap().len(), 4);
    // New keys work alongside.
    let fresh = secret(&create(&server, &std_key, "/v1/apikeys", "{}"));
    assert!(works(&server, &fresh));
}
