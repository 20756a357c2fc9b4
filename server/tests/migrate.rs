//! `keygate migrate` against the real binary: a store served on SQLite
//! moved to a throwaway PostgreSQL 15 (`support/pg.rs`) and back, checked
//! over HTTP (every token, its scopes, revocations, credits, the audit
//! log); the 0.1.0 fixture moved; a second run, a failure mid-way, the
//! wrong pepper and a running instance refused, the destination unchanged.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;
#[path = "support/pg.rs"]
mod pg;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::*;
use pg::TestPg;
use serde_json::Value;

/// Runs `keygate migrate ARGS`: (exit ok, stdout, stderr).
fn migrate(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(BIN)
        .arg("migrate")
        .args(args)
        .env_remove("KEYGATE_PEPPER_FILE")
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

fn create(server: &Server, caller: &str, path: &str, body: &str) -> Value {
    let r = server.authed("POST", path, caller, Some(body));
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()
}

fn secret(v: &Value) -> String {
    v["key_secret"].as_str().unwrap().to_owned()
}

fn id_of(token: &str) -> String {
    token[3..19].to_owned()
}

/// The whole audit log over HTTP, page by page.
fn events(server: &Server, token: &str) -> Vec<Value> {
    let mut all = Vec::new();
    let mut after = 0;
    loop {
        let r = server.authed(
            "GET",
            &format!("/v1/events?after={after}&limit=100"),
            token,
            None,
        );
        assert_eq!(r.status, 200, "{}", r.text());
        let v = r.json();
        let page = v["events"].as_array().unwrap().clone();
        if let Some(last) = page.last() {
            after = last["seq"].as_u64().unwrap();
        }
        all.extend(page);
        if !v["has_more"].as_bool().unwrap() {
            return all;
        }
    }
}

/// `keygate list --json` on a store: every live key's view.
fn list(db: &Path, pepper: &Path) -> Value {
    let (ok, out, err) = cli(
        db,
        &["list"],
        &["--json", "--pepper-file", pepper.to_str().unwrap()],
    );
    assert!(ok, "{err}");
    serde_json::from_str(&out).unwrap()
}

/// A key's usage by day over the last week, as the CLI reads it.
fn usage(db: &Path, pepper: &Path, id: &str) -> Value {
    let (ok, out, err) = cli(
        db,
        &["usage", id],
        &[
            "--json",
            "--bucket",
            "day",
            "--from",
            "7d",
            "--pepper-file",
            pepper.to_str().unwrap(),
        ],
    );
    assert!(ok, "{err}");
    serde_json::from_str(&out).unwrap()
}

/// What the moved keys must answer on any store: `(token, resource,
/// access, status)`.
type Expect = Vec<(String, &'static str, &'static str, u16)>;

fn check(server: &Server, expect: &Expect) {
    for (token, resource, access, want) in expect {
        let r = server.authorize(token, resource, access);
        assert_eq!(
            r.status,
            *want,
            "{} {resource}:{access} on {}: {}",
            id_of(token),
            server.addr,
            r.text()
        );
    }
}

fn serve(db: &Path, pepper: &Path) -> Server {
    let server = Server::start(db, &["--pepper-file", pepper.to_str().unwrap()]);
    assert!(server.bootstrap.is_none(), "a moved store holds keys");
    server
}

fn stop(mut server: Server) {
    server.sigterm();
    assert!(server.wait_exit(Duration::from_secs(20)).success());
}

fn credits_remaining(server: &Server, admin: &str, id: &str) -> u64 {
    let r = server.authed("GET", &format!("/v1/keys/{id}"), admin, None);
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["credits"]["remaining"].as_u64().unwrap()
}

/// The issue's walk-through: serve on SQLite and make every kind of
/// record (standard, restricted with scopes, rolled in its overlap,
/// revoked, with a rate limit and spent credits), stop, move to
/// PostgreSQL, serve there: every token answers as before, the revoked
/// one 401, the audit log and the key views are the same, the credits
/// balance too, and a new event takes the next seq. A second run refuses.
/// Then back to a new SQLite file (the rollback): the same again.
#[test]
fn sqlite_to_postgres_and_back_keeps_every_token_and_event() {
    let dir = TempDir::new("migrate-round");
    let db = dir.db();
    let pepper = dir.0.join("keygate.db.pepper");
    let pg = TestPg::start();
    let url = pg.url();
    let pg_db = PathBuf::from(&url);

    let s1 = Server::start(&db, &[]);
    let admin = s1.token().to_owned();
    let std_key = secret(&create(&s1, &admin, "/v1/apikeys", r#"{"name":"std"}"#));
    let restricted = secret(&create(
        &s1,
        &admin,
        "/v1/restricted_keys",
        r#"{"name":"ci","scopes":[
            {"resource_type":"RESOURCE_TYPE_DEVBOXES","access_level":"ACCESS_LEVEL_WRITE"},
            {"resource_type":"RESOURCE_TYPE_OBJECTS","access_level":"ACCESS_LEVEL_READ"}]}"#,
    ));
    let old = secret(&create(&s1, &admin, "/v1/apikeys", r#"{"name":"rolled"}"#));
    let r = s1.authed(
        "POST",
        &format!("/v1/keys/{}/roll", id_of(&old)),
        &admin,
        Some(r#"{"overlap_ms": 600000}"#),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let successor = secret(&r.json());
    let revoked = secret(&create(&s1, &admin, "/v1/apikeys", r#"{"name":"gone"}"#));
    let r = s1.authed(
        "DELETE",
        &format!("/v1/keys/{}", id_of(&revoked)),
        &admin,
        None,
    );
    assert_eq!(r.status, 204, "{}", r.text());
    let metered = secret(&create(&s1, &admin, "/v1/apikeys", r#"{"name":"metered"}"#));
    let metered_id = id_of(&metered);
    let r = s1.authed(
        "PATCH",
        &format!("/v1/keys/{metered_id}"),
        &admin,
        Some(
            r#"{"rate_limit":{"limit":1000,"period_ms":1000},
                "credits":{"remaining":50,"refill":null}}"#,
        ),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    s1.wait_accepted(&metered);
    let mut spent = 0;
    while spent < 5 {
        let status = s1.authorize(&metered, "OBJECTS", "READ").status;
        assert!(status == 204 || status == 429, "{status}");
        if status == 204 {
            spent += 1;
        } else {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    let expect: Expect = vec![
        (admin.clone(), "ACCOUNT", "WRITE", 204),
        (std_key.clone(), "ACCOUNT", "WRITE", 204),
        (restricted.clone(), "DEVBOXES", "WRITE", 204),
        (restricted.clone(), "OBJECTS", "READ", 204),
        (restricted.clone(), "OBJECTS", "WRITE", 403),
        (restricted.clone(), "ACCOUNT", "READ", 403),
        (old.clone(), "ACCOUNT", "WRITE", 204),
        (successor.clone(), "ACCOUNT", "WRITE", 204),
        (revoked.clone(), "OBJECTS", "READ", 401),
    ];
    check(&s1, &expect);
    let before = events(&s1, &admin);
    assert!(before.len() >= 8, "{before:?}");

    // While the instance runs: refused, nothing written to PostgreSQL.
    let (ok, out, err) = migrate(&["--from", db.to_str().unwrap(), "--to", &url]);
    assert!(!ok, "{out}");
    assert!(
        err.contains("a `keygate serve` runs on the source"),
        "{err}"
    );
    assert_eq!(pg.psql("SELECT to_regclass('keys') IS NULL"), "t");
    stop(s1);
    let views = list(&db, &pepper);
    let balance = views
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["id"] == metered_id.as_str())
        .unwrap()["credits"]["remaining"]
        .as_u64()
        .unwrap();
    // 50, less the 5 spent and the one `wait_accepted` spent.
    assert_eq!(balance, 44);
    let metered_usage = usage(&db, &pepper, &metered_id);
    assert!(
        metered_usage["buckets"]
            .as_array()
            .is_some_and(|b| !b.is_empty()),
        "{metered_usage}"
    );

    let t = std::time::Instant::now();
    let (ok, out, err) = migrate(&["--from", db.to_str().unwrap(), "--to", &url]);
    assert!(ok, "{err}");
    eprintln!("sqlite -> postgres: {:?}: {out}", t.elapsed());
    assert!(out.contains(&format!("{} events", before.len())), "{out}");
    let seq = before.last().unwrap()["seq"].as_u64().unwrap();
    assert_eq!(pg.psql("SELECT seq FROM change_seq"), seq.to_string());

    let s2 = serve(&pg_db, &pepper);
    // Before any request moves a last-used time or a count.
    assert_eq!(list(&pg_db, &pepper), views, "every key view moved whole");
    assert_eq!(usage(&pg_db, &pepper, &metered_id), metered_usage);
    check(&s2, &expect);
    assert_eq!(events(&s2, &admin), before, "the audit log moved whole");
    assert_eq!(credits_remaining(&s2, &admin, &metered_id), balance);
    // A write on the new store continues the log.
    let fresh = secret(&create(&s2, &admin, "/v1/apikeys", r#"{"name":"after"}"#));
    let after = events(&s2, &admin);
    assert_eq!(after.len(), before.len() + 1);
    assert_eq!(after.last().unwrap()["seq"].as_u64().unwrap(), seq + 1);
    assert_eq!(after.last().unwrap()["key_id"], id_of(&fresh));
    // A second instance follows the moved log: it sees the new key, and a
    // revocation made on it reaches the first.
    let s2b = serve(&pg_db, &pepper);
    check(&s2b, &expect);
    s2b.wait_accepted(&fresh);
    let doomed = secret(&create(&s2b, &admin, "/v1/apikeys", "{}"));
    s2.wait_accepted(&doomed);
    let r = s2b.authed(
        "DELETE",
        &format!("/v1/keys/{}", id_of(&doomed)),
        &admin,
        None,
    );
    assert_eq!(r.status, 204, "{}", r.text());
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while s2.authorize(&doomed, "OBJECTS", "READ").status != 401 {
        assert!(
            std::time::Instant::now() < deadline,
            "the revocation never arrived"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    stop(s2b);
    let after = events(&s2, &admin);
    assert_eq!(after.len(), before.len() + 3);

    // Twice: refused, and nothing changes.
    let keys = pg.psql("SELECT count(*) FROM keys");
    let (ok, _, err) = migrate(&["--from", db.to_str().unwrap(), "--to", &url]);
    assert!(!ok);
    assert!(
        err.contains("not empty") && err.contains("changed nothing"),
        "{err}"
    );
    assert_eq!(pg.psql("SELECT count(*) FROM keys"), keys);
    assert_eq!(events(&s2, &admin), after);
    // Not while an instance runs on the source.
    let (ok, _, err) = migrate(&[
        "--from",
        &url,
        "--to",
        dir.0.join("early.db").to_str().unwrap(),
        "--pepper-file",
        pepper.to_str().unwrap(),
    ]);
    assert!(!ok && err.contains("still run on it"), "{err}");
    assert!(!dir.0.join("early.db").exists());
    stop(s2);

    // The rollback: PostgreSQL to a new SQLite file.
    let views = list(&pg_db, &pepper);
    let back = dir.0.join("back.db");
    let t = std::time::Instant::now();
    let (ok, out, err) = migrate(&[
        "--from",
        &url,
        "--to",
        back.to_str().unwrap(),
        "--pepper-file",
        pepper.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    eprintln!("postgres -> sqlite: {:?}: {out}", t.elapsed());
    let s3 = serve(&back, &pepper);
    assert_eq!(list(&back, &pepper), views);
    check(&s3, &expect);
    assert!(s3.authorize(&fresh, "ACCOUNT", "WRITE").status == 204);
    assert_eq!(events(&s3, &admin), after);
    assert_eq!(credits_remaining(&s3, &admin, &metered_id), balance);
    let newer = secret(&create(&s3, &admin, "/v1/apikeys", "{}"));
    let last = events(&s3, &admin);
    assert_eq!(last.last().unwrap()["seq"].as_u64().unwrap(), seq + 4);
    assert_eq!(last.last().unwrap()["key_id"], id_of(&newer));
}

/// The 0.1.0 fixture (migrated to the current schema on open) moves to
/// PostgreSQL, given as a URL with a password that is never printed; every
/// token still authenticates, the expired one does not.
#[test]
fn the_0_1_0_fixture_moves_to_postgres() {
    let dir = TempDir::new("migrate-fixture");
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let db = dir.db();
    let pepper = dir.0.join("pepper");
    std::fs::copy(fixtures.join("keys-0.1.0.sqlite3"), &db).unwrap();
    std::fs::copy(fixtures.join("keys-0.1.0.pepper-bin"), &pepper).unwrap();
    let views: Vec<Value> = serde_json::from_str(
        &std::fs::read_to_string(fixtures.join("keys-0.1.0.views.json")).unwrap(),
    )
    .unwrap();
    let token = |name: &str| secret(views.iter().find(|v| v["name"] == name).unwrap());
    let pg = TestPg::start();
    let url = format!("postgres://postgres:s3cret@127.0.0.1:{}/keygate", pg.port);

    let (ok, out, err) = migrate(&[
        "--from",
        db.to_str().unwrap(),
        "--to",
        &url,
        "--pepper-file",
        pepper.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    assert!(out.contains("copied 4 keys, 4 events"), "{out}");
    assert!(
        !out.contains("s3cret") && !err.contains("s3cret"),
        "{out}{err}"
    );
    assert!(
        out.contains(&format!(
            "postgres://postgres@127.0.0.1:{}/keygate",
            pg.port
        )),
        "{out}"
    );
    // Once more: refused, the password still unprinted.
    let (ok, out, err) = migrate(&[
        "--from",
        db.to_str().unwrap(),
        "--to",
        &url,
        "--pepper-file",
        pepper.to_str().unwrap(),
    ]);
    assert!(!ok && err.contains("not empty"), "{err}");
    assert!(
        !out.contains("s3cret") && !err.contains("s3cret"),
        "{out}{err}"
    );

    let server = serve(Path::new(&pg.url()), &pepper);
    let expect: Expect = vec![
        (token("std-key"), "ACCOUNT", "WRITE", 204),
        (token("ci"), "DEVBOXES", "WRITE", 204),
        (token("ci"), "OBJECTS", "READ", 204),
        (token("ci"), "OBJECTS", "WRITE", 403),
        (token("short"), "ACCOUNT", "WRITE", 204),
        (token("short"), "DEVBOXES", "READ", 403),
        (token("gone"), "DEVBOXES", "READ", 401),
    ];
    check(&server, &expect);
    let log = events(&server, &token("std-key"));
    assert_eq!(log.len(), 4);
    assert!(log.iter().all(|e| e["action"] == "created"), "{log:?}");
}

/// A row the destination refuses, after keys and events went in, rolls
/// the whole copy back: PostgreSQL stays empty (no key, no event, the
/// counter at 0, no fingerprint). A source row of the wrong type fails the
/// same way into SQLite. Once fixed, the copy goes through.
#[test]
fn a_failure_mid_way_leaves_the_destination_empty() {
    let dir = TempDir::new("migrate-fail");
    let db = dir.db();
    let pepper = dir.0.join("keygate.db.pepper");
    for name in ["a", "b", "c"] {
        mint_token(&db, &["--name", name]);
    }
    let bad = |sql: &str| {
        let conn = rusqlite::Connection::open(&db).unwrap();
        conn.execute_batch(sql).unwrap();
    };
    // PostgreSQL takes no NUL in text; SQLite does. usage_days goes last.
    bad("INSERT INTO usage_days (key_id, day_ms, allowed) VALUES ('x' || char(0) || 'y', 0, 1)");
    let pg = TestPg::start();
    let url = pg.url();
    let (ok, out, err) = migrate(&["--from", db.to_str().unwrap(), "--to", &url]);
    assert!(!ok, "{out}");
    assert!(err.contains("nothing was copied"), "{err}");
    assert_eq!(pg.psql("SELECT count(*) FROM keys"), "0");
    assert_eq!(pg.psql("SELECT count(*) FROM changes"), "0");
    assert_eq!(pg.psql("SELECT seq FROM change_seq"), "0");
    assert_eq!(pg.psql("SELECT count(pepper_fingerprint) FROM meta"), "0");

    // Into SQLite: a source value of the wrong type, found mid-way.
    bad("DELETE FROM usage_days; INSERT INTO usage_days (key_id, day_ms, allowed) VALUES ('k', 0, 'many')");
    let dest = dir.0.join("dest.db");
    let (ok, _, err) = cli(
        &dest,
        &["list"],
        &["--pepper-file", pepper.to_str().unwrap()],
    );
    assert!(ok, "{err}");
    let (ok, _, err) = migrate(&[
        "--from",
        db.to_str().unwrap(),
        "--to",
        dest.to_str().unwrap(),
    ]);
    assert!(!ok);
    assert!(
        err.contains("`usage_days`")
            && err.contains("`allowed`")
            && err.contains("nothing was copied"),
        "{err}"
    );
    let (ok, out, err) = cli(
        &dest,
        &["events"],
        &["--json", "--pepper-file", pepper.to_str().unwrap()],
    );
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "[]");
    // A destination file this run would have created is not left behind.
    let fresh = dir.0.join("fresh.db");
    let (ok, _, _) = migrate(&[
        "--from",
        db.to_str().unwrap(),
        "--to",
        fresh.to_str().unwrap(),
    ]);
    assert!(!ok);
    assert!(!fresh.exists());

    bad("DELETE FROM usage_days");
    let (ok, out, err) = migrate(&["--from", db.to_str().unwrap(), "--to", &url]);
    assert!(ok, "{err}");
    assert!(out.contains("copied 3 keys, 3 events"), "{out}");
    let (ok, out, err) = migrate(&[
        "--from",
        db.to_str().unwrap(),
        "--to",
        dest.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    assert!(out.contains("copied 3 keys, 3 events"), "{out}");
}

/// Refused before anything is written: a pepper file that is not the
/// source's, a destination made with another pepper, the same store twice,
/// a missing source (not created), a PostgreSQL source without a pepper
/// file. Every flag reads its environment variable.
#[test]
fn refusals_change_nothing() {
    let dir = TempDir::new("migrate-refuse");
    let db = dir.db();
    mint_token(&db, &["--name", "a"]);
    let src = db.to_str().unwrap();

    let other = dir.0.join("other.pepper");
    std::fs::write(&other, [7u8; 32]).unwrap();
    let dest = dir.0.join("dest.db");
    let (ok, _, err) = migrate(&[
        "--from",
        src,
        "--to",
        dest.to_str().unwrap(),
        "--pepper-file",
        other.to_str().unwrap(),
    ]);
    assert!(!ok);
    assert!(err.contains("does not belong to the source"), "{err}");
    assert!(!dest.exists());

    // A destination served once with its own pepper.
    let (ok, _, err) = cli(&dest, &["list"], &[]);
    assert!(ok, "{err}");
    let (ok, _, err) = migrate(&["--from", src, "--to", dest.to_str().unwrap()]);
    assert!(!ok);
    assert!(err.contains("another pepper"), "{err}");
    let (_, out, _) = cli(&dest, &["events"], &["--json"]);
    assert_eq!(out.trim(), "[]");

    let (ok, _, err) = migrate(&["--from", src, "--to", src]);
    assert!(!ok && err.contains("same store"), "{err}");

    let missing = dir.0.join("missing.db");
    let (ok, _, err) = migrate(&[
        "--from",
        missing.to_str().unwrap(),
        "--to",
        dir.0.join("x.db").to_str().unwrap(),
    ]);
    assert!(!ok && err.contains("does not exist"), "{err}");
    assert!(!missing.exists());

    let (ok, _, err) = migrate(&[
        "--from",
        "postgres://kg:s3cret@127.0.0.1:1/keygate",
        "--to",
        dir.0.join("y.db").to_str().unwrap(),
    ]);
    assert!(!ok && err.contains("--pepper-file"), "{err}");
    assert!(!err.contains("s3cret"), "{err}");

    // Every flag names its environment variable, and one set there works.
    let out = Command::new(BIN)
        .args(["migrate", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8(out.stdout).unwrap();
    let flags = help
        .lines()
        .map(str::trim_start)
        .filter(|l| l.starts_with("--") && !l.starts_with("--help"))
        .count();
    assert_eq!(flags, 3, "{help}");
    assert_eq!(help.matches("[env: KEYGATE_").count(), flags, "{help}");
    let env_dest = dir.0.join("env.db");
    let out = Command::new(BIN)
        .arg("migrate")
        .env("KEYGATE_MIGRATE_FROM", &db)
        .env("KEYGATE_MIGRATE_TO", &env_dest)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(env_dest.exists());
}

/// F9: two databases that both use `verify-full` are two stores, and each
/// is named in messages (not as an unreadable URL).
#[test]
fn urls_with_verify_full_are_named_and_told_apart() {
    let dir = TempDir::new("migrate-verify-full");
    let pepper = dir.0.join("pepper");
    std::fs::write(&pepper, [7u8; 32]).unwrap();
    let url = |db: &str| format!("postgres://kq:s3cret@127.0.0.1:1/{db}?sslmode=verify-full");
    let out = Command::new(BIN)
        .args(["migrate", "--from", &url("kq2"), "--to", &url("kq3")])
        .arg("--pepper-file")
        .arg(&pepper)
        .env("KEYGATE_DB_WAIT", "0")
        .output()
        .unwrap();
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(!out.status.success());
    assert!(!err.contains("same store"), "{err}");
    assert!(err.contains("`postgres://kq@127.0.0.1:1/kq2`"), "{err}");
    assert!(
        !err.contains("unreadable") && !err.contains("s3cret"),
        "{err}"
    );
}

/// F4: an unescaped `@` in the password: no part of it on stdout or stderr.
#[test]
fn an_unescaped_at_in_the_password_is_never_printed() {
    let dir = TempDir::new("migrate-at");
    let db = dir.db();
    mint_token(&db, &["--name", "a"]);
    let url = "postgres://ka:Pa@ssTail99@127.0.0.1:1/ka";
    let pepper = dir.0.join("pepper");
    std::fs::write(&pepper, [7u8; 32]).unwrap();
    let (src, dest) = (db.to_str().unwrap(), dir.0.join("dest.db"));
    for args in [
        vec!["--from", src, "--to", url],
        vec!["--from", url, "--to", dest.to_str().unwrap()],
        vec!["--from", url, "--to", url],
    ] {
        let out = Command::new(BIN)
            .arg("migrate")
            .args(&args)
            .args(["--pepper-file", pepper.to_str().unwrap()].iter().skip(
                // A SQLite source's pepper is found beside it.
                if args[1] == src { 2 } else { 0 },
            ))
            .env("KEYGATE_DB_WAIT", "0")
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!out.status.success(), "{text}");
        assert!(
            !text.contains("ssTail99") && !text.contains("Pa@"),
            "{text}"
        );
    }
}

/// A migration killed (SIGKILL) mid-way, with keys and events already
/// inserted in its transaction, leaves PostgreSQL empty. Another session's
/// uncommitted row holds the copy at its last table: the copy's insert of
/// the same key waits for it, and is killed there.
#[test]
fn a_migration_killed_mid_way_leaves_postgres_empty() {
    let dir = TempDir::new("migrate-kill");
    let db = dir.db();
    for name in ["a", "b", "c"] {
        mint_token(&db, &["--name", name]);
    }
    rusqlite::Connection::open(&db)
        .unwrap()
        .execute_batch("INSERT INTO usage_days (key_id, day_ms, allowed) VALUES ('k', 0, 1)")
        .unwrap();
    let pg = TestPg::start();
    let url = pg.url();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    // The schema first (an empty store), then the blocking row.
    let (ok, _, err) = cli(
        Path::new(&url),
        &["list"],
        &[
            "--pepper-file",
            dir.0.join("keygate.db.pepper").to_str().unwrap(),
        ],
    );
    assert!(ok, "{err}");
    let blocker = runtime.block_on(async {
        let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(connection);
        client
            .batch_execute(
                "BEGIN; INSERT INTO usage_days (key_id, day_ms, allowed) VALUES ('k', 0, 9)",
            )
            .await
            .unwrap();
        client
    });
    let mut child = Command::new(BIN)
        .args(["migrate", "--from", db.to_str().unwrap(), "--to", &url])
        .env_remove("KEYGATE_PEPPER_FILE")
        .spawn()
        .unwrap();
    let waiting = "SELECT count(*) FROM pg_stat_activity \
                   WHERE application_name = 'keygate' AND wait_event_type = 'Lock'";
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while pg.psql(waiting) != "1" {
        assert!(
            std::time::Instant::now() < deadline,
            "the copy never reached its last table"
        );
        assert!(child.try_wait().unwrap().is_none(), "the copy ended");
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    runtime.block_on(async {
        blocker.batch_execute("ROLLBACK").await.unwrap();
    });
    // The killed copy's backend finishes its insert, finds its client
    // gone, and rolls back.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while pg.psql("SELECT count(*) FROM pg_stat_activity WHERE application_name = 'keygate'") != "0"
    {
        assert!(std::time::Instant::now() < deadline, "the backend stayed");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(pg.psql("SELECT count(*) FROM keys"), "0");
    assert_eq!(pg.psql("SELECT count(*) FROM changes"), "0");
    assert_eq!(pg.psql("SELECT seq FROM change_seq"), "0");
    // And the next run copies everything.
    let (ok, out, err) = migrate(&["--from", db.to_str().unwrap(), "--to", &url]);
    assert!(ok, "{err}");
    assert!(out.contains("copied 3 keys, 3 events"), "{out}");
}

/// A SQLite store with a `keygate serve` on it, even one holding no credit
/// lease, is refused as a source: what the server
/// writes after the copy's snapshot would stay behind, a revocation among
/// it coming back to life on the new store. Stopped, it moves.
#[test]
fn a_sqlite_store_in_use_by_a_server_is_refused() {
    let dir = TempDir::new("migrate-in-use");
    let db = dir.db();
    let server = Server::start(&db, &[]);
    let pg = TestPg::start();
    let url = pg.url();
    let (ok, _, err) = migrate(&["--from", db.to_str().unwrap(), "--to", &url]);
    assert!(!ok);
    assert!(
        err.contains("a `keygate serve` runs on the source"),
        "{err}"
    );
    drop(server);
    let (ok, out, err) = migrate(&["--from", db.to_str().unwrap(), "--to", &url]);
    assert!(ok, "{out}{err}");
}
