//! Per-key usage counts over real HTTP, on real `keygate serve` processes:
//! `/v1/authorize` (fixed scope and forward-auth) counts allowed and
//! forbidden decisions; `GET /v1/keys/{id}/usage` answers them at once, with
//! the access rules of `GET /v1/keys/{id}` and 400s for bad parameters; the
//! counts survive a restart (flushed at shutdown) and `keygate usage`
//! prints them. The same core test runs on SQLite and on two PostgreSQL
//! instances sharing one store, whose counts add up.
//!
//! The server reads the system clock, so these tests count within the
//! current minute (summing over buckets, should a minute turn meanwhile);
//! the minutes, days and retention at explicit times are the stores' unit
//! tests (`store/usage_tests.rs`).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;
#[path = "support/pg.rs"]
mod pg;

use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

const ROUTES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/runloop.routes");

const ADMIN_SCOPES: &str = r#"{"name":"tenant","scopes":[
    {"resource_type":"RESOURCE_TYPE_ACCOUNT","access_level":"ACCESS_LEVEL_WRITE"},
    {"resource_type":"RESOURCE_TYPE_OBJECTS","access_level":"ACCESS_LEVEL_WRITE"}]}"#;
const OBJECTS_READ: &str =
    r#"{"scopes":[{"resource_type":"RESOURCE_TYPE_OBJECTS","access_level":"ACCESS_LEVEL_READ"}]}"#;

/// (allowed, forbidden, rate limited, credits exhausted)
type Totals = (u64, u64, u64, u64);

fn create(server: &Server, caller: &str, body: &str) -> (String, String) {
    let r = server.authed("POST", "/v1/restricted_keys", caller, Some(body));
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    (
        v["id"].as_str().unwrap().to_owned(),
        v["key_secret"].as_str().unwrap().to_owned(),
    )
}

fn usage(server: &Server, caller: &str, id: &str, query: &str) -> Resp {
    server.authed("GET", &format!("/v1/keys/{id}/usage{query}"), caller, None)
}

/// The buckets of a 200, checked for shape and order; their sum.
fn totals(r: &Resp) -> Totals {
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("content-type"), Some("application/json"));
    let v = r.json();
    assert_eq!(fields(&v), ["buckets"]);
    let mut sum = (0, 0, 0, 0);
    let mut last = i64::MIN;
    for b in v["buckets"].as_array().unwrap() {
        assert_eq!(
            fields(b),
            [
                "allowed",
                "credits_exhausted",
                "forbidden",
                "rate_limited",
                "start_ms"
            ]
        );
        let start = b["start_ms"].as_i64().unwrap();
        assert!(start > last, "buckets out of order: {v}");
        last = start;
        let n = |k: &str| b[k].as_u64().unwrap();
        assert!(
            n("allowed") + n("forbidden") + n("rate_limited") + n("credits_exhausted") > 0,
            "an empty bucket: {v}"
        );
        sum.0 += n("allowed");
        sum.1 += n("forbidden");
        sum.2 += n("rate_limited");
        sum.3 += n("credits_exhausted");
    }
    sum
}

/// Polls `server` (up to 5 s) until `id`'s totals are `want`.
fn until_totals(server: &Server, caller: &str, id: &str, want: Totals) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let got = totals(&usage(server, caller, id, "?bucket=minute"));
        if got == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{}: {got:?}, want {want:?}",
            server.addr
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Makes `allowed` fixed-scope decisions and `forbidden` refusals for
/// `token` on `server`, plus requests that count nothing (400, 401).
fn decide(server: &Server, token: &str, allowed: u32, forbidden: u32) {
    for _ in 0..allowed {
        assert_eq!(server.authorize(token, "OBJECTS", "READ").status, 204);
    }
    for i in 0..forbidden {
        let (resource, access) = if i % 2 == 0 {
            ("OBJECTS", "WRITE")
        } else {
            ("DEVBOXES", "READ")
        };
        assert_eq!(server.authorize(token, resource, access).status, 403);
    }
    // Counted nowhere: a bad query (400) and a wrong secret (401).
    let r = server.authed(
        "GET",
        "/v1/authorize?resource_type=NOPE&access_level=ACCESS_LEVEL_READ",
        token,
        None,
    );
    assert_eq!(r.status, 400);
    let mut wrong = token.to_owned();
    let last = wrong.pop().unwrap();
    wrong.push(if last == 'x' { 'y' } else { 'x' });
    assert_eq!(server.authorize(&wrong, "OBJECTS", "READ").status, 401);
}

/// The access rules of `GET /v1/keys/{id}`, and the 400s.
fn access_rules_and_bad_parameters(server: &Server, admin: &str, key: (&str, &str)) {
    let (id, token) = key;
    // Two tenants with account write, under --attenuate: each sees only
    // its own keys' usage; another's id gets the 404 of an unknown id.
    let (t1_id, t1) = create(server, admin, ADMIN_SCOPES);
    let (_, t2) = create(server, admin, ADMIN_SCOPES);
    let (mine, mine_token) = create(server, &t1, OBJECTS_READ);
    assert_eq!(server.authorize(&mine_token, "OBJECTS", "READ").status, 204);
    assert_eq!(totals(&usage(server, &t1, &mine, "")), (1, 0, 0, 0));
    let stranger = usage(server, &t2, &mine, "");
    let unknown = usage(server, &t2, "0000000000000000", "");
    assert_eq!(stranger.problem(404), "no such key");
    assert_eq!(unknown.problem(404), "no such key");
    assert_eq!(stranger.body, unknown.body);
    // Nor the caller itself, nor a key outside its subtree.
    assert_eq!(usage(server, &t1, &t1_id, "").problem(404), "no such key");
    assert_eq!(usage(server, &t1, id, "").problem(404), "no such key");
    // A key without account:read: 403; no key: 401.
    let r = usage(server, token, id, "");
    r.problem(403);
    assert_eq!(
        r.header("www-authenticate"),
        Some(r#"Bearer error="insufficient_scope""#)
    );
    let r = server.req("GET", &format!("/v1/keys/{id}/usage"), &[], None);
    r.problem(401);
    // A revoked key's usage is a 404, as the key is.
    let r = server.authed("DELETE", &format!("/v1/keys/{mine}"), &t1, None);
    assert_eq!(r.status, 204, "{}", r.text());
    assert_eq!(usage(server, &t1, &mine, "").problem(404), "no such key");
    assert_eq!(usage(server, admin, &mine, "").problem(404), "no such key");
    // 400s name the parameter; a token pasted into one is not echoed.
    let now = now_ms();
    for (query, names) in [
        ("?bucket=week", "`bucket`"),
        ("?from_ms=abc", "`from_ms`"),
        ("?to_ms=-1", "`to_ms`"),
        ("?from_ms=10&to_ms=9", "`from_ms` (10) is after `to_ms` (9)"),
        ("?since=5", "`since`"),
        ("?bucket=hour&bucket=day", "`bucket`"),
        (
            &format!(
                "?from_ms={}&to_ms={now}&bucket=minute",
                now - 8 * 86_400_000
            ) as &str,
            "the limit of 10080",
        ),
        (&format!("?bucket={token}") as &str, "`bucket`"),
    ] {
        let detail = usage(server, admin, id, query).problem(400);
        assert!(detail.contains(names), "{query}: {detail}");
        assert!(!detail.contains(&token[21..]), "{detail}");
    }
    assert!(usage(server, admin, "not-an-id", "")
        .problem(400)
        .contains("`id`"));
    // A week of minutes is the most one answer holds; ten years of days
    // are fine.
    let r = usage(
        server,
        admin,
        id,
        &format!(
            "?from_ms={}&to_ms={now}&bucket=minute",
            now - 7 * 86_400_000 + 60_000
        ),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let r = usage(
        server,
        admin,
        id,
        &format!("?from_ms={}&bucket=day", now - 3_650 * 86_400_000),
    );
    assert_eq!(r.status, 200, "{}", r.text());
}

/// The core test on `servers` (one, or several sharing a store): decisions
/// on each count on the key; every instance's endpoint sums every
/// instance's counts (at once for its own, after a flush for the others').
fn core(servers: &[&Server], admin: &str) -> (String, String, Totals) {
    let (id, token) = create(servers[0], admin, OBJECTS_READ);
    // `wait_accepted` asks with objects:none until its first 204: one
    // allowed decision on each instance (its 401s count nothing).
    for s in servers {
        s.wait_accepted(&token);
    }
    let mut want: Totals = (servers.len() as u64, 0, 0, 0);
    for (i, s) in servers.iter().enumerate() {
        let before = totals(&usage(s, admin, &id, "?bucket=minute"));
        let (allowed, forbidden) = (5 + i as u64, 3 + 2 * i as u64);
        decide(s, &token, allowed as u32, forbidden as u32);
        want.0 += allowed;
        want.1 += forbidden;
        // On the instance that answered, at once: nothing was flushed (on
        // SQLite the flush interval is 10 s; on PostgreSQL another
        // instance's flush may add its counts meanwhile).
        let after = totals(&usage(s, admin, &id, "?bucket=minute"));
        let made = (after.0 - before.0, after.1 - before.1);
        if servers.len() == 1 {
            assert_eq!(made, (allowed, forbidden));
            assert_eq!(after, want);
        } else {
            assert!(made.0 >= allowed && made.1 >= forbidden, "{made:?}");
        }
    }
    // Every instance ends up with every instance's counts.
    for s in servers {
        until_totals(s, admin, &id, want);
    }
    // Every bucket width gives the same totals.
    for bucket in ["", "?bucket=hour", "?bucket=day"] {
        assert_eq!(
            totals(&usage(servers[0], admin, &id, bucket)),
            want,
            "{bucket}"
        );
    }
    (id, token, want)
}

/// Forward-auth: an allowed route counts as allowed, a key without the
/// route's scope as forbidden; a public route, a route denied before any
/// key, and a 401 count nothing.
fn forward_auth_counts(server: &Server, admin: &str) {
    let (id, token) = create(server, admin, OBJECTS_READ);
    let auth = format!("Bearer {token}");
    let ask = |method: &str, uri: &str, auth: Option<&str>| {
        let mut headers = vec![("X-Original-Method", method), ("X-Original-URI", uri)];
        if let Some(a) = auth {
            headers.push(("Authorization", a));
        }
        server.req("GET", "/v1/authorize", &headers, None).status
    };
    assert_eq!(ask("GET", "/v1/objects/o1", Some(&auth)), 204);
    assert_eq!(ask("GET", "/v1/objects/o2/download", Some(&auth)), 204);
    assert_eq!(ask("POST", "/v1/objects/o1/complete", Some(&auth)), 403);
    assert_eq!(ask("GET", "/v1/devboxes/d1", Some(&auth)), 403);
    assert_eq!(ask("DELETE", "/v1/nothing/here", Some(&auth)), 403);
    assert_eq!(ask("GET", "/healthz", Some(&auth)), 204);
    assert_eq!(ask("GET", "/v1/objects/o1", None), 401);
    assert_eq!(totals(&usage(server, admin, &id, "")), (2, 2, 0, 0));
}

#[test]
fn usage_on_sqlite_counts_at_once_and_survives_a_restart() {
    let dir = TempDir::new("usage");
    let db = dir.db();
    let routes = ["--attenuate", "--routes", ROUTES];
    let mut server = Server::start(&db, &routes);
    let admin = server.token().to_owned();
    let (id, token, total) = core(&[&server], &admin);
    access_rules_and_bad_parameters(&server, &admin, (&id, &token));
    forward_auth_counts(&server, &admin);
    // Flushed at shutdown (the flush interval, 10 s, has not passed).
    server.sigterm();
    assert_eq!(server.wait_exit(Duration::from_secs(20)).code(), Some(0));
    let server = Server::start(&db, &routes);
    assert_eq!(totals(&usage(&server, &admin, &id, "")), total);
    drop(server);

    // `keygate usage`: the same counts from the database; a token is taken
    // for its id and never echoed.
    let (ok, out, err) = cli(&db, &["usage", &token, "--json"], &[]);
    assert!(ok, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    let r = Resp {
        status: 200,
        headers: vec![("content-type".into(), "application/json".into())],
        body: out.clone().into_bytes(),
    };
    assert_eq!(totals(&r), total);
    assert!(v["buckets"].as_array().unwrap().len() <= 2);
    let (ok, out, err) = cli(&db, &["usage", &id, "--bucket", "day", "--from", "2d"], &[]);
    assert!(ok, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines[0].split_whitespace().collect::<Vec<_>>(),
        [
            "START",
            "ALLOWED",
            "FORBIDDEN",
            "RATE",
            "LIMITED",
            "CREDITS",
            "EXHAUSTED"
        ]
    );
    let day: Vec<&str> = lines[1..]
        .iter()
        .map(|l| l.split_whitespace().nth(1).unwrap())
        .collect();
    let allowed: u64 = day.iter().map(|n| n.parse::<u64>().unwrap()).sum();
    assert_eq!(allowed, total.0);
    // Not a terminal: no sparkline.
    assert!(!out.contains('▁') && !out.contains('█'), "{out}");
    for bad in [
        vec!["usage", &id, "--from", "yesterday"],
        vec!["usage", &id, "--from", "10", "--to", "9"],
        vec!["usage", &id, "--bucket", "week"],
        vec!["usage", "0000000000000000"],
    ] {
        let (ok, out, err) = cli(&db, &bad, &[]);
        assert!(!ok && out.is_empty(), "{bad:?}: {out}");
        assert!(!err.contains(&token[21..]), "{err}");
    }
    let (_, _, err) = cli(&db, &["usage", "0000000000000000"], &[]);
    assert!(err.contains("no key `0000000000000000`"), "{err}");
    let (_, _, err) = cli(&db, &["usage", &id, "--from", "10", "--to", "9"], &[]);
    assert!(err.contains("`--from` (10) is after `--to` (9)"), "{err}");
}

#[test]
fn usage_on_two_postgres_instances_adds_up() {
    let pg = pg::TestPg::start();
    let dir = TempDir::new("usage-pg");
    let pepper = dir.0.join("pepper");
    let url = pg.url();
    let args = [
        "--attenuate",
        "--routes",
        ROUTES,
        "--last-used-flush-ms",
        "100",
        "--pepper-file",
        pepper.to_str().unwrap(),
    ];
    let mut a = Server::start(Path::new(&url), &args);
    a.bootstrap = take_bootstrap_file(&pepper);
    let admin = a.token().to_owned();
    let b = Server::start(Path::new(&url), &args);
    let (id, token, total) = core(&[&a, &b], &admin);
    access_rules_and_bad_parameters(&b, &admin, (&id, &token));
    forward_auth_counts(&a, &admin);
    // The CLI reads what both flushed.
    let (ok, out, err) = cli(
        Path::new(&url),
        &[
            "usage",
            &id,
            "--json",
            "--pepper-file",
            pepper.to_str().unwrap(),
        ],
        &[],
    );
    assert!(ok, "{err}");
    let r = Resp {
        status: 200,
        headers: vec![("content-type".into(), "application/json".into())],
        body: out.into_bytes(),
    };
    assert_eq!(totals(&r), total);
    // A's counts survive its restart, and B still sees them.
    a.sigterm();
    assert_eq!(a.wait_exit(Duration::from_secs(20)).code(), Some(0));
    until_totals(&b, &admin, &id, total);
}
