//! The CLI subcommands, run as real processes against a temporary database:
//! `mint`, `list`, `revoke`, `roll`, `limit`, `credits`, `events`, and the
//! 0.1.0 migration on first use.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::path::Path;
use std::process::Command;

use common::*;
use serde_json::Value;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");

/// Runs `keygate ARGS --db DB`; returns (exit ok, stdout, stderr).
fn run(db: &Path, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(BIN)
        .args(args)
        .arg("--db")
        .arg(db)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

/// Runs a command that must succeed; returns its stdout.
fn ok(db: &Path, args: &[&str]) -> String {
    let (success, out, err) = run(db, args);
    assert!(success, "keygate {args:?} failed: {err}");
    out
}

/// Runs a command that must fail; returns its stderr.
fn fails(db: &Path, args: &[&str]) -> String {
    let (success, out, err) = run(db, args);
    assert!(!success, "keygate {args:?} succeeded: {out}");
    assert!(out.is_empty(), "a failure prints nothing on stdout: {out}");
    assert!(err.starts_with("error: "), "{err}");
    err
}

fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

fn list(db: &Path) -> Vec<Value> {
    json(&ok(db, &["list", "--json"]))
        .as_array()
        .unwrap()
        .clone()
}

fn events(db: &Path, after: Option<u64>) -> Vec<Value> {
    let after = after.map(|a| a.to_string());
    let mut args = vec!["events", "--json"];
    if let Some(a) = &after {
        args.extend(["--after", a.as_str()]);
    }
    json(&ok(db, &args)).as_array().unwrap().clone()
}

fn find<'a>(keys: &'a [Value], id: &str) -> &'a Value {
    keys.iter()
        .find(|k| k["id"] == id)
        .unwrap_or_else(|| panic!("`{id}` not listed"))
}

#[test]
fn mint_list_roll_revoke_events_round_trip() {
    let dir = TempDir::new("cli");
    let db = dir.db();
    let expiry = now_ms() + 3_600_000;
    let admin = json(&ok(&db, &["mint", "--name", "admin"]));
    let ci = json(&ok(
        &db,
        &[
            "mint",
            "--name",
            "ci",
            "--scope",
            "devboxes:write,objects:read",
            "--expires-at-ms",
            &expiry.to_string(),
        ],
    ));
    let (admin_id, ci_id) = (admin["id"].as_str().unwrap(), ci["id"].as_str().unwrap());

    // list --json: key views by id, no secret, no hash.
    let keys = list(&db);
    assert_eq!(keys.len(), 2);
    let mut ids: Vec<&str> = keys.iter().map(|k| k["id"].as_str().unwrap()).collect();
    let listed = ids.clone();
    ids.sort_unstable();
    assert_eq!(listed, ids, "listed in id order");
    let a = find(&keys, admin_id);
    assert_eq!(
        fields(a),
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
    let first_created = a["created_at_ms"].as_i64().unwrap();
    assert_eq!(a["kind"], "standard");
    assert_eq!(a["name"], "admin");
    let all = a["scopes"].as_array().unwrap();
    assert_eq!(all.len(), 9);
    assert!(all
        .iter()
        .all(|s| s["access_level"] == "ACCESS_LEVEL_WRITE"));
    assert_eq!(
        (&a["expires_at_ms"], &a["creator_id"], &a["last_used_at_ms"]),
        (&Value::Null, &Value::Null, &Value::Null)
    );
    let c = find(&keys, ci_id);
    assert_eq!(c["kind"], "restricted");
    assert_eq!(c["expires_at_ms"], expiry);
    assert_eq!(c["scopes"], ci["scopes"]);
    let created = c["created_at_ms"].as_i64().unwrap();
    assert!((now_ms() - 60_000..=now_ms()).contains(&created));

    // The table: a header and one line per key.
    let table = ok(&db, &["list"]);
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 3, "{table}");
    for column in [
        "ID",
        "KIND",
        "NAME",
        "SCOPES",
        "CREATED",
        "EXPIRES",
        "LAST USED",
        "CREATOR",
    ] {
        assert!(lines[0].contains(column), "{table}");
    }
    let ci_line = lines.iter().find(|l| l.starts_with(ci_id)).unwrap();
    assert!(ci_line.contains("restricted"), "{ci_line}");
    assert!(
        ci_line.contains(" ci ") && ci_line.contains("devboxes:write,objects:read"),
        "{ci_line}"
    );
    let admin_line = lines.iter().find(|l| l.starts_with(admin_id)).unwrap();
    assert!(
        admin_line.contains("standard") && admin_line.contains(" all "),
        "{admin_line}"
    );
    assert!(admin_line.contains("never"), "{admin_line}");

    // roll with an overlap: the created view of the same kind, a new id and
    // secret, the same name, scopes and expiry; the old key ends after the
    // overlap (which here is sooner than its expiry).
    let before_roll = now_ms();
    let rolled = json(&ok(&db, &["roll", ci_id, "--overlap", "15m"]));
    let new_id = rolled["id"].as_str().unwrap();
    assert_ne!(new_id, ci_id);
    let secret = rolled["key_secret"].as_str().unwrap();
    assert!(secret.starts_with(&format!("rk_{new_id}_")), "{secret}");
    assert_eq!(rolled["name"], "ci");
    assert_eq!(rolled["scopes"], ci["scopes"]);
    assert_eq!(rolled["expires_at_ms"], expiry);
    let keys = list(&db);
    assert_eq!(keys.len(), 3);
    let old_end = find(&keys, ci_id)["expires_at_ms"].as_i64().unwrap();
    assert!(
        (before_roll + 900_000..=now_ms() + 900_000).contains(&old_end),
        "{old_end}"
    );
    assert_eq!(find(&keys, new_id)["expires_at_ms"], expiry);
    assert_eq!(find(&keys, new_id)["creator_id"], Value::Null);

    // A roll with overlap 0 of a key that never expires: the old one ends
    // now, the new one never expires.
    let admin2 = json(&ok(&db, &["roll", admin_id]));
    let admin2_id = admin2["id"].as_str().unwrap();
    assert_eq!(admin2["expires_at_ms"], Value::Null);
    assert!(admin2["key_secret"].as_str().unwrap().starts_with("ak_"));
    assert!(admin2.get("scopes").is_none(), "a standard created view");
    let old_admin_end = find(&list(&db), admin_id)["expires_at_ms"]
        .as_i64()
        .unwrap();
    assert!(old_admin_end <= now_ms());
    // An expired key cannot be rolled again.
    let err = fails(&db, &["roll", admin_id]);
    assert!(err.contains("expired"), "{err}");

    // revoke: one line per revoked key; then it is gone from the list.
    let out = ok(&db, &["revoke", ci_id]);
    assert_eq!(out, format!("revoked {ci_id} (event 7)\n"));
    assert!(list(&db).iter().all(|k| k["id"] != ci_id));
    let err = fails(&db, &["revoke", ci_id]);
    assert!(err.contains(&format!("no live key `{ci_id}`")), "{err}");
    let err = fails(&db, &["roll", ci_id]);
    assert!(err.contains(&format!("no live key `{ci_id}`")), "{err}");
    // --cascade is accepted (this key minted nothing: only itself goes).
    assert_eq!(
        ok(&db, &["revoke", "--cascade", new_id]),
        format!("revoked {new_id} (event 8)\n")
    );

    // events: the audit log in order, actor null for the CLI.
    let log = events(&db, None);
    let summary: Vec<(u64, &str, &str, Value)> = log
        .iter()
        .map(|e| {
            (
                e["seq"].as_u64().unwrap(),
                e["action"].as_str().unwrap(),
                e["key_id"].as_str().unwrap(),
                e["new_key_id"].clone(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            (1, "created", admin_id, Value::Null),
            (2, "created", ci_id, Value::Null),
            (3, "created", new_id, Value::Null),
            (4, "rolled", ci_id, Value::String(new_id.into())),
            (5, "created", admin2_id, Value::Null),
            (6, "rolled", admin_id, Value::String(admin2_id.into())),
            (7, "revoked", ci_id, Value::Null),
            (8, "revoked", new_id, Value::Null),
        ]
    );
    assert!(log.iter().all(|e| e["actor_id"].is_null()));
    assert!(log
        .iter()
        .all(|e| (first_created..=now_ms()).contains(&e["at_ms"].as_i64().unwrap())));
    let tail = events(&db, Some(6));
    assert_eq!(tail, log[6..].to_vec());
    assert!(events(&db, Some(8)).is_empty());
    let table = ok(&db, &["events", "--after", "5"]);
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 4, "{table}");
    assert!(lines[0].starts_with("SEQ") && lines[0].contains("NEW KEY"));
    assert!(lines[1].starts_with("6 ") && lines[1].contains("rolled"));
    assert!(lines[1].contains(admin2_id), "{table}");

    // A running server (started on this database) honours all of it.
    let server = Server::start(&db, &[]);
    assert!(server.bootstrap.is_none(), "the database holds keys");
    assert_eq!(
        server
            .authorize(admin2["key_secret"].as_str().unwrap(), "ACCOUNT", "WRITE")
            .status,
        204
    );
    for dead in [
        admin["key_secret"].as_str().unwrap(), // rolled, overlap 0
        ci["key_secret"].as_str().unwrap(),    // revoked
        secret,                                // revoked
    ] {
        assert_eq!(server.authorize(dead, "DEVBOXES", "READ").status, 401);
    }
}

#[test]
fn a_rolled_key_works_through_its_overlap() {
    let dir = TempDir::new("cli-overlap");
    let db = dir.db();
    let old = json(&ok(&db, &["mint", "--scope", "agents:read"]));
    let new = json(&ok(
        &db,
        &["roll", old["id"].as_str().unwrap(), "--overlap", "1h"],
    ));
    let server = Server::start(&db, &[]);
    for token in [&old, &new] {
        let token = token["key_secret"].as_str().unwrap();
        assert_eq!(server.authorize(token, "AGENTS", "READ").status, 204);
        assert_eq!(server.authorize(token, "AGENTS", "WRITE").status, 403);
    }
}

#[test]
fn bad_durations_and_ids_are_refused_before_any_write() {
    let dir = TempDir::new("cli-bad");
    let db = dir.db();
    let key = json(&ok(&db, &["mint"]));
    let id = key["id"].as_str().unwrap();
    for (overlap, message) in [
        ("8d", "overlap `8d` is longer than the maximum of 7 days"),
        (
            "169h",
            "overlap `169h` is longer than the maximum of 7 days",
        ),
        ("5", "invalid duration `5`"),
        ("abc", "invalid duration `abc`"),
        ("-5s", "invalid duration `-5s`"),
        ("", "invalid duration ``"),
    ] {
        let err = fails(&db, &["roll", id, &format!("--overlap={overlap}")]);
        assert!(err.contains(message), "{overlap}: {err}");
    }
    // 7 days exactly is allowed.
    json(&ok(&db, &["roll", id, "--overlap", "7d"]));
    let err = fails(&db, &["revoke", "not-an-id"]);
    assert!(err.contains("invalid key id `not-an-id`"), "{err}");
    let err = fails(&db, &["roll", "too-short"]);
    assert!(err.contains("invalid key id `too-short`"), "{err}");
    let err = fails(&db, &["revoke", "0000000000000000"]);
    assert!(err.contains("no live key `0000000000000000`"), "{err}");
    let err = fails(&db, &["events", "--after=-1"]);
    assert!(
        err.contains("invalid value '-1' for '--after <SEQ>'"),
        "{err}"
    );
    // Only the mint and the 7-day roll were written.
    assert_eq!(events(&db, None).len(), 3);
}

#[test]
fn a_wrong_pepper_file_is_refused() {
    let dir = TempDir::new("cli-pepper");
    let db = dir.db();
    ok(&db, &["mint"]);
    let other = dir.0.join("other.pepper");
    std::fs::write(&other, [9u8; 32]).unwrap();
    for cmd in ["list", "events"] {
        let err = fails(&db, &[cmd, "--pepper-file", other.to_str().unwrap()]);
        assert!(
            err.contains("the pepper file does not match this database's pepper"),
            "{err}"
        );
    }
}

#[test]
fn the_0_1_0_fixture_migrates_on_first_cli_use() {
    let dir = TempDir::new("cli-migrate");
    let db = dir.0.join("keys.sqlite3");
    std::fs::copy(format!("{FIXTURES}/keys-0.1.0.sqlite3"), &db).unwrap();
    let pepper = dir.0.join("keys.pepper");
    std::fs::copy(format!("{FIXTURES}/keys-0.1.0.pepper-bin"), &pepper).unwrap();
    let views: Vec<Value> =
        json(&std::fs::read_to_string(format!("{FIXTURES}/keys-0.1.0.views.json")).unwrap())
            .as_array()
            .unwrap()
            .clone();
    assert_eq!(views.len(), 4);
    let pepper_arg = pepper.to_str().unwrap();

    let keys = json(&ok(&db, &["list", "--json", "--pepper-file", pepper_arg]))
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(keys.len(), 4);
    for view in &views {
        let key = find(&keys, view["id"].as_str().unwrap());
        assert_eq!(key["name"], view["name"]);
        assert_eq!(key["expires_at_ms"], view["expires_at_ms"]);
        assert_eq!(key["creator_id"], Value::Null);
        assert_eq!(key["last_used_at_ms"], Value::Null);
        let secret = view["key_secret"].as_str().unwrap();
        if secret.starts_with("ak_") {
            assert_eq!(key["kind"], "standard");
            assert_eq!(key["scopes"].as_array().unwrap().len(), 9);
        } else {
            assert_eq!(key["kind"], "restricted");
            assert_eq!(key["scopes"], view["scopes"]);
        }
    }
    // One `created` event per key, actor null, at its creation time.
    let log = json(&ok(&db, &["events", "--json", "--pepper-file", pepper_arg]));
    let log = log.as_array().unwrap();
    assert_eq!(log.len(), 4);
    for (i, e) in log.iter().enumerate() {
        assert_eq!(e["seq"], i as u64 + 1);
        assert_eq!(e["action"], "created");
        assert_eq!(e["actor_id"], Value::Null);
        let key = find(&keys, e["key_id"].as_str().unwrap());
        assert_eq!(e["at_ms"], key["created_at_ms"]);
    }
    // A second use does not migrate again.
    assert_eq!(
        json(&ok(&db, &["events", "--json", "--pepper-file", pepper_arg]))
            .as_array()
            .unwrap()
            .len(),
        4
    );

    // Every key still authenticates, with its scopes; the expired one not.
    let server = Server::start(&db, &["--pepper-file", pepper_arg]);
    assert!(server.bootstrap.is_none());
    let by_name = |name: &str| {
        views.iter().find(|v| v["name"] == name).unwrap()["key_secret"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    assert_eq!(
        server
            .authorize(&by_name("std-key"), "ACCOUNT", "WRITE")
            .status,
        204
    );
    assert_eq!(
        server.authorize(&by_name("ci"), "DEVBOXES", "WRITE").status,
        204
    );
    assert_eq!(
        server.authorize(&by_name("ci"), "OBJECTS", "READ").status,
        204
    );
    assert_eq!(
        server.authorize(&by_name("ci"), "OBJECTS", "WRITE").status,
        403
    );
    assert_eq!(
        server
            .authorize(&by_name("short"), "ACCOUNT", "WRITE")
            .status,
        204
    );
    assert_eq!(
        server
            .authorize(&by_name("short"), "DEVBOXES", "READ")
            .status,
        403
    );
    assert_eq!(
        server.authorize(&by_name("gone"), "ACCOUNT", "READ").status,
        401
    );
}

#[test]
fn a_serve_that_cannot_listen_leaves_nothing_behind() {
    let dir = TempDir::new("port-taken");
    let db = dir.0.join("x.db");
    // Hold a port: no SO_REUSEPORT, so keygate's bind fails.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = Command::new(BIN)
        .args(["serve", "--listen", &addr, "--db"])
        .arg(&db)
        .env("KEYGATE_LOG", "info")
        .output()
        .unwrap();
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!("error: cannot listen on `{addr}`")),
        "{stderr}"
    );
    for left in ["x.db", "x.db.pepper", "x.db.bootstrap-key"] {
        assert!(!dir.0.join(left).exists(), "`{left}` was created: {stderr}");
    }
    assert_eq!(std::fs::read_dir(&dir.0).unwrap().count(), 0, "{stderr}");
    assert!(!stderr.contains("bootstrap"), "{stderr}");
    drop(taken);
}

#[test]
fn revoke_and_roll_take_a_pasted_token_and_never_echo_it() {
    let dir = TempDir::new("cli-token");
    let db = dir.db();
    let view = json(&ok(&db, &["mint", "--name", "pasted"]));
    let token = view["key_secret"].as_str().unwrap().to_owned();
    let id = view["id"].as_str().unwrap().to_owned();
    let secret = &token[20..63];
    // roll TOKEN: rolls the key the token names.
    let (success, out, err) = run(&db, &["roll", &token, "--overlap", "1h"]);
    assert!(success, "{err}");
    assert!(!out.contains(secret) && !err.contains(secret), "{out}{err}");
    let rolled = json(&out);
    assert_ne!(rolled["id"], id.as_str());
    // revoke TOKEN: revokes it, and says so by id only.
    let (success, out, err) = run(&db, &["revoke", &token]);
    assert!(success, "{err}");
    assert!(out.starts_with(&format!("revoked {id} (event ")), "{out}");
    assert!(!err.contains(secret), "{err}");
    // Again: the key is gone; the error names the id, not the token.
    let (success, out, err) = run(&db, &["revoke", &token]);
    assert!(!success);
    assert!(err.contains(&format!("no live key `{id}`")), "{err}");
    assert!(!out.contains(secret) && !err.contains(secret), "{out}{err}");
    // A token with a changed secret is no token: refused as an id, quoted
    // redacted (its id kept, its secret not).
    let mut broken = token.clone().into_bytes();
    broken[40] = if broken[40] == b'Q' { b'R' } else { b'Q' };
    let broken = String::from_utf8(broken).unwrap();
    let err = fails(&db, &["revoke", &broken]);
    assert!(err.contains("invalid key id `"), "{err}");
    assert!(err.contains(&id), "{err}");
    for w in 0..=secret.len() - 20 {
        assert!(!err.contains(&broken[20 + w..40 + w]), "{err}");
    }
}

#[test]
fn mint_takes_an_expiry_as_a_duration_or_a_time() {
    let dir = TempDir::new("cli-expiry");
    let db = dir.db();
    let before = now_ms();
    let a = json(&ok(&db, &["mint", "--name", "a", "--expires-in", "90d"]));
    let after = now_ms();
    let ninety_days = 90 * 24 * 3600 * 1000;
    let at = a["expires_at_ms"].as_i64().unwrap();
    assert!(
        (before + ninety_days..=after + ninety_days).contains(&at),
        "{a}"
    );
    let b = json(&ok(
        &db,
        &[
            "mint",
            "--name",
            "b",
            "--expires-at",
            "2099-01-01T00:00:00Z",
        ],
    ));
    assert_eq!(b["expires_at_ms"], 4_070_908_800_000_i64);
    let c = json(&ok(&db, &["mint", "--expires-at-ms", "4070908800001"]));
    assert_eq!(c["expires_at_ms"], 4_070_908_800_001_i64);
    // One of the three at most; bad values are refused before any write.
    for args in [
        &[
            "mint",
            "--expires-in",
            "1d",
            "--expires-at",
            "2099-01-01T00:00:00Z",
        ][..],
        &[
            "mint",
            "--expires-in",
            "1d",
            "--expires-at-ms",
            "4070908800001",
        ][..],
    ] {
        let (success, _, err) = run(&db, args);
        assert!(!success);
        assert!(err.contains("cannot be used with"), "{err}");
    }
    let err = fails(&db, &["mint", "--expires-in", "ninety days"]);
    assert!(err.contains("`--expires-in`"), "{err}");
    let err = fails(&db, &["mint", "--expires-at", "2099-01-01"]);
    assert!(err.contains("RFC 3339"), "{err}");
    // A time in the past is the library's error, as with `--expires-at-ms`.
    fails(&db, &["mint", "--expires-at", "2001-01-01T00:00:00Z"]);
    assert_eq!(list(&db).len(), 3);
}

#[test]
fn get_list_filters_events_by_key_and_roll_reports_the_old_expiry() {
    let dir = TempDir::new("cli-get");
    let db = dir.db();
    let alpha = json(&ok(
        &db,
        &["mint", "--name", "alpha", "--scope", "objects:read"],
    ));
    let beta = json(&ok(&db, &["mint", "--name", "beta"]));
    let alpha_id = alpha["id"].as_str().unwrap().to_owned();
    let alpha_token = alpha["key_secret"].as_str().unwrap().to_owned();
    let beta_id = beta["id"].as_str().unwrap().to_owned();

    // get: a table by default, the key view with --json; id or token.
    let table = ok(&db, &["get", &alpha_id]);
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 2, "{table}");
    assert!(lines[0].starts_with("ID "), "{table}");
    assert!(lines[1].starts_with(&alpha_id), "{table}");
    assert!(lines[1].contains("objects:read"), "{table}");
    let view = json(&ok(&db, &["get", &alpha_token, "--json"]));
    assert_eq!(view, *find(&list(&db), &alpha_id));
    assert!(!ok(&db, &["get", &alpha_token]).contains(&alpha_token[20..]));
    let err = fails(&db, &["get", "0000000000000000"]);
    assert!(err.contains("no key"), "{err}");

    // roll: stdout is the new key's created view alone; stderr has the old
    // key's new expiry.
    let (success, out, err) = run(&db, &["roll", &alpha_id, "--overlap", "15m"]);
    assert!(success, "{err}");
    let rolled = json(&out);
    let new_id = rolled["id"].as_str().unwrap().to_owned();
    let old_expiry = find(&list(&db), &alpha_id)["expires_at_ms"]
        .as_i64()
        .unwrap();
    assert!(
        err.contains(&format!("old key {alpha_id} now expires at "))
            && err.contains(&format!("(expires_at_ms {old_expiry})")),
        "{err}"
    );

    // list --name filters by substring; --sort created puts the rolled pair
    // side by side (by id they may be apart).
    let names: Vec<String> = json(&ok(&db, &["list", "--json", "--name", "alp"]))
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(names.len(), 2);
    assert!(names.contains(&alpha_id) && names.contains(&new_id));
    let by_created: Vec<String> = json(&ok(&db, &["list", "--json", "--sort", "created"]))
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        by_created,
        [alpha_id.clone(), beta_id.clone(), new_id.clone()]
    );
    let table = ok(&db, &["list", "--name", "bet"]);
    assert_eq!(table.lines().count(), 2, "{table}");
    assert!(table.contains(&beta_id));
    assert!(ok(&db, &["list", "--name", "nobody"]).lines().count() == 1);
    let (success, _, err) = run(&db, &["list", "--sort", "name"]);
    assert!(!success && err.contains("--sort"), "{err}");

    // events --key: the events that name the key, as subject or new key.
    ok(&db, &["revoke", &beta_id]);
    let named: Vec<(String, String)> = json(&ok(&db, &["events", "--json", "--key", &new_id]))
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["action"].as_str().unwrap().to_owned(),
                e["key_id"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        named,
        [
            ("created".to_owned(), new_id.clone()),
            ("rolled".to_owned(), alpha_id.clone())
        ]
    );
    let table = ok(&db, &["events", "--key", &beta_id]);
    assert_eq!(table.lines().count(), 3, "{table}");
    assert!(table.contains("revoked"), "{table}");
    assert_eq!(
        json(&ok(
            &db,
            &["events", "--json", "--key", &beta_id, "--after", "100"]
        )),
        serde_json::json!([])
    );
    fails(&db, &["events", "--key", "nope"]);

    // A revoked key: get says so and points at its history.
    let err = fails(&db, &["get", &beta_id]);
    assert!(
        err.contains("was revoked") && err.contains("events --key"),
        "{err}"
    );
}

#[test]
fn serve_tells_the_operator_to_replace_the_bootstrap_key() {
    let dir = TempDir::new("cli-bootstrap-advice");
    let server = Server::start(&dir.db(), &[]);
    let id = &server.token()[3..19];
    let log = server.log_text();
    assert!(
        log.contains("mint an admin key") && log.contains(&format!("keygate revoke {id}")),
        "{log}"
    );
}

/// The `--help` texts of `keygate` and every subcommand, as the reference
/// `docs/cli.md` shows them: `(command path, help text)`, in the order the
/// help lists them.
fn help_texts() -> Vec<(Vec<String>, String)> {
    fn help(path: &[String]) -> String {
        let out = Command::new(BIN)
            .args(path)
            .arg("--help")
            .env_remove("KEYGATE_DATABASE_URL")
            .output()
            .unwrap();
        assert!(out.status.success(), "keygate {path:?} --help failed");
        String::from_utf8(out.stdout).unwrap()
    }
    fn subcommands(text: &str) -> Vec<String> {
        let Some(start) = text.find("\nCommands:\n") else {
            return Vec::new();
        };
        text[start + "\nCommands:\n".len()..]
            .lines()
            .take_while(|l| l.starts_with("  "))
            .filter_map(|l| l.split_whitespace().next())
            .filter(|&name| name != "help")
            .map(str::to_owned)
            .collect()
    }
    fn walk(path: Vec<String>, out: &mut Vec<(Vec<String>, String)>) {
        let text = help(&path);
        let children = subcommands(&text);
        out.push((path.clone(), text));
        for child in children {
            let mut next = path.clone();
            next.push(child);
            walk(next, out);
        }
    }
    let mut out = Vec::new();
    walk(Vec::new(), &mut out);
    out
}

/// `docs/cli.md` holds, under a heading per command, that command's
/// `--help` exactly (in a fenced block). `KEYGATE_BLESS=1` rewrites the
/// blocks from the binary, keeping the prose around them.
#[test]
fn the_cli_reference_is_the_binarys_help() {
    let file = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/cli.md");
    let text = std::fs::read_to_string(file).unwrap_or_default();
    let helps = help_texts();
    let heading = |path: &[String]| {
        if path.is_empty() {
            "## `keygate`".to_owned()
        } else {
            format!("## `keygate {}`", path.join(" "))
        }
    };
    // The file's sections: the preamble, then (heading, prose) pairs; the
    // prose is what precedes the section's fenced block.
    let mut preamble = String::new();
    let mut prose: Vec<(String, String)> = Vec::new();
    let mut blocks: Vec<(String, String)> = Vec::new();
    let mut current: Option<String> = None;
    let mut lines = text.lines();
    while let Some(line) = lines.next() {
        if line.starts_with("## `keygate") {
            current = Some(line.to_owned());
            prose.push((line.to_owned(), String::new()));
            continue;
        }
        match &current {
            None => {
                preamble.push_str(line);
                preamble.push('\n');
            }
            Some(h) if line == "```text" => {
                let mut block = String::new();
                for l in lines.by_ref() {
                    if l == "```" {
                        break;
                    }
                    block.push_str(l);
                    block.push('\n');
                }
                blocks.push((h.clone(), block));
            }
            Some(_) => {
                let p = &mut prose.last_mut().unwrap().1;
                p.push_str(line);
                p.push('\n');
            }
        }
    }
    let want: Vec<(String, String)> = helps
        .iter()
        .map(|(path, help)| (heading(path), help.clone()))
        .collect();
    if std::env::var_os("KEYGATE_BLESS").is_some() {
        let mut out = if preamble.trim().is_empty() {
            "# `keygate` command-line reference\n\n\
             Generated from the binary's `--help` (`KEYGATE_BLESS=1 cargo test -p \
             keygate-server --test cli the_cli_reference` rewrites the blocks; the \
             test fails when they differ).\n\n"
                .to_owned()
        } else {
            preamble.clone()
        };
        for (h, help) in &want {
            // The prose before the block, if any, between blank lines (the
            // blank lines after a block are read into its prose too: one
            // blessing after another must not add them up).
            let kept = prose
                .iter()
                .find(|(ph, _)| ph == h)
                .map(|(_, p)| p.trim())
                .filter(|p| !p.is_empty())
                .map_or_else(|| "\n".to_owned(), |p| format!("\n{p}\n\n"));
            out.push_str(&format!("{h}\n{kept}```text\n{help}```\n\n"));
        }
        std::fs::write(file, out.trim_end().to_owned() + "\n").unwrap();
        return;
    }
    assert_eq!(
        blocks.iter().map(|(h, _)| h.as_str()).collect::<Vec<_>>(),
        want.iter().map(|(h, _)| h.as_str()).collect::<Vec<_>>(),
        "docs/cli.md: one section per command, in the help's order \
         (KEYGATE_BLESS=1 rewrites it)"
    );
    for ((h, got), (_, help)) in blocks.iter().zip(&want) {
        assert_eq!(
            got, help,
            "docs/cli.md {h} differs from --help (KEYGATE_BLESS=1 rewrites it)"
        );
    }
    // Every flag of every command appears; `routes` and `serve --routes` too.
    for flag in [
        "--routes",
        "--forwarded-headers",
        "--expires-in",
        "--expires-at",
        "--sort",
        "--key",
        "--rate",
        "--no-rate",
        "--refill",
        "--no-credits",
        "--bucket",
        "--from",
        "--to",
    ] {
        assert!(text.contains(flag), "{flag}");
    }
    assert!(text.contains("## `keygate routes explain`"));
}

/// `keygate limit` and `keygate credits`: set and remove a rate limit and
/// credits, by id or pasted token (never echoed), for the whole meter (a
/// roll family together); bad forms refused before any write.
#[test]
fn limit_and_credits_change_a_meter() {
    let dir = TempDir::new("cli-limits");
    let db = dir.db();
    let view = json(&ok(&db, &["mint", "--name", "metered"]));
    let token = view["key_secret"].as_str().unwrap().to_owned();
    let id = view["id"].as_str().unwrap().to_owned();
    let secret = &token[20..63];

    let v = json(&ok(&db, &["limit", &id, "--rate", "100/1s"]));
    assert_eq!(
        v,
        serde_json::json!({"id": id, "rate_limit": {"limit": 100, "period_ms": 1000},
                           "credits": null, "balance": null})
    );
    for (form, limit, period_ms) in [("5/250ms", 5, 250), ("1000/1m", 1000, 60_000)] {
        let v = json(&ok(&db, &["limit", &id, "--rate", form]));
        assert_eq!(
            v["rate_limit"],
            serde_json::json!({"limit": limit, "period_ms": period_ms}),
            "{form}"
        );
    }
    // A pasted token names its key; neither output shows its secret.
    let (success, out, err) = run(&db, &["limit", &token, "--no-rate"]);
    assert!(success, "{err}");
    assert!(!out.contains(secret) && !err.contains(secret), "{out}{err}");
    assert!(json(&out)["rate_limit"].is_null());

    let err = fails(&db, &["credits", &id, "--add", "5"]);
    assert!(err.contains("has no credits"), "{err}");
    let v = json(&ok(
        &db,
        &["credits", &id, "--set", "100", "--refill", "5000/30d"],
    ));
    assert_eq!(
        v["credits"],
        serde_json::json!({"remaining": 100, "refill": {"amount": 5000, "interval_ms": 2_592_000_000u64}})
    );
    assert_eq!(v["balance"], 100);
    assert_eq!(
        json(&ok(&db, &["credits", &id, "--add", "-30"]))["balance"],
        70
    );
    assert_eq!(
        json(&ok(&db, &["credits", &id, "--add", "-300"]))["balance"],
        0
    );
    assert_eq!(
        json(&ok(&db, &["credits", &id, "--set", "7"]))["balance"],
        7
    );
    // A new refill is a new configuration: the balance starts afresh at the
    // grant, then `--add` applies.
    let v = json(&ok(
        &db,
        &["credits", &id, "--add", "1", "--refill", "10/1h"],
    ));
    assert_eq!(v["credits"]["refill"]["amount"], 10);
    assert_eq!(v["balance"], 101);
    // The key's view shows the meter's credits now (its pool and leases),
    // as the HTTP views do; the created view of a roll, the grant.
    let got = json(&ok(&db, &["get", &id, "--json"]));
    assert_eq!(got["credits"]["remaining"], 101);

    // The whole meter: a roll family changes together.
    let rolled = json(&ok(&db, &["roll", &id, "--overlap", "1h"]));
    let new_id = rolled["id"].as_str().unwrap().to_owned();
    assert_eq!(rolled["credits"]["remaining"], 100);
    let (success, out, err) = run(&db, &["limit", &new_id, "--rate", "3/1s"]);
    assert!(success, "{err}");
    assert!(err.contains("changed the limits of 2 keys"), "{err}");
    assert_eq!(
        json(&out)["balance"],
        101,
        "a rate limit leaves the balance"
    );
    for key in [&id, &new_id] {
        let got = json(&ok(&db, &["get", key, "--json"]));
        assert_eq!(
            got["rate_limit"],
            serde_json::json!({"limit": 3, "period_ms": 1000})
        );
    }
    // The rolled key is changed through its successor.
    let err = fails(&db, &["limit", &id, "--no-rate"]);
    assert!(err.contains("was rolled"), "{err}");
    let err = fails(&db, &["credits", &id, "--set", "1"]);
    assert!(err.contains("was rolled"), "{err}");
    let v = json(&ok(&db, &["credits", &new_id, "--no-credits"]));
    assert!(v["credits"].is_null() && v["balance"].is_null());

    // Bad forms: refused, nothing written.
    let before = events(&db, None).len();
    for (args, needle) in [
        (
            &["limit", &new_id, "--rate", "100"][..],
            "expected N/DURATION",
        ),
        (
            &["limit", &new_id, "--rate", "x/1s"],
            "N must be a whole number",
        ),
        (&["limit", &new_id, "--rate", "0/1s"], "rate_limit.limit"),
        (
            &["limit", &new_id, "--rate", "1/0s"],
            "rate_limit.period_ms",
        ),
        (
            &["limit", &new_id, "--rate", "1/32d"],
            "rate_limit.period_ms",
        ),
        (
            &["limit", &new_id, "--rate", "1/fortnight"],
            "invalid `--rate`",
        ),
        (
            &["credits", &new_id, "--set", "1", "--refill", "1/500ms"],
            "interval_ms",
        ),
        (
            &["credits", &new_id, "--set", "9007199254740992"],
            "credits.remaining",
        ),
        (&["limit", "0000000000000000", "--no-rate"], "no live key"),
    ] {
        let err = fails(&db, args);
        assert!(err.contains(needle), "{args:?}: {err}");
    }
    // clap: exactly one change.
    for args in [
        &["limit", &new_id][..],
        &["limit", &new_id, "--rate", "1/1s", "--no-rate"],
        &["credits", &new_id],
        &["credits", &new_id, "--set", "1", "--add", "1"],
        &["credits", &new_id, "--no-credits", "--refill", "1/1s"],
    ] {
        let (success, out, _) = run(&db, args);
        assert!(!success && out.is_empty(), "{args:?}");
    }
    assert_eq!(events(&db, None).len(), before);
    // Every limit change is in the log.
    let changes = events(&db, None)
        .iter()
        .filter(|e| e["action"] == "limits_changed")
        .count();
    assert!(changes >= 8, "{changes}");
}
