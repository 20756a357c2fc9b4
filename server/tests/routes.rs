//! `keygate serve --routes`, forward-auth on `/v1/authorize` over real HTTP,
//! and the `keygate routes check|explain` commands.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::process::Command;

use common::*;

const TABLE: &str = "\
GET  /v1/devboxes/**  devboxes:read
POST /v1/devboxes/**  devboxes:write
GET  /healthz         public
*    /internal/**     deny
";

fn table_file(dir: &TempDir, text: &str) -> String {
    let path = dir.0.join("t.routes");
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_owned()
}

fn forward(
    server: &Server,
    token: Option<&str>,
    pair: (&str, &str),
    method: &str,
    uri: &str,
) -> Resp {
    let auth = token.map(|t| format!("Bearer {t}"));
    let mut headers: Vec<(&str, &str)> = vec![(pair.0, method), (pair.1, uri)];
    if let Some(a) = &auth {
        headers.push(("Authorization", a));
    }
    server.req("GET", "/v1/authorize", &headers, None)
}

const XF: (&str, &str) = ("X-Forwarded-Method", "X-Forwarded-Uri");
const XO: (&str, &str) = ("X-Original-Method", "X-Original-URI");

#[test]
fn forward_auth_decides_by_the_table() {
    let dir = TempDir::new("routes");
    let file = table_file(&dir, TABLE);
    let xo_server = Server::start(&dir.db(), &["--routes", &file]);
    let admin = xo_server.token().to_owned();
    let reader = mint_token(&dir.db(), &["--scope", "devboxes:read"]);
    xo_server.wait_accepted(&reader);
    // A second instance on the same database, trusting X-Forwarded-*.
    let xf_server = Server::start(
        &dir.db(),
        &["--routes", &file, "--forwarded-headers", "x-forwarded"],
    );

    // Each server reads the one family it is told to trust.
    for (server, pair) in [(&xf_server, XF), (&xo_server, XO)] {
        let r = forward(server, Some(&reader), pair, "GET", "/v1/devboxes/dbx_1?x=1");
        assert_eq!(r.status, 204, "{}", r.text());
        assert_eq!(r.header("x-keygate-key-id"), Some(&reader[3..19]));
        assert_eq!(r.header("x-keygate-key-kind"), Some("restricted"));
        assert_eq!(r.header("x-keygate-decision"), Some("devboxes:read"));
        assert_eq!(r.header("x-keygate-rule"), Some("1"));

        let r = forward(
            server,
            Some(&reader),
            pair,
            "POST",
            "/v1/devboxes/dbx_1/execute",
        );
        r.problem(403);
        assert_eq!(
            r.header("www-authenticate"),
            Some(r#"Bearer error="insufficient_scope""#)
        );
        let r = forward(
            server,
            Some(&admin),
            pair,
            "POST",
            "/v1/devboxes/dbx_1/execute",
        );
        assert_eq!(r.status, 204);
        assert_eq!(r.header("x-keygate-decision"), Some("devboxes:write"));

        forward(server, None, pair, "GET", "/v1/devboxes").problem(401);
        forward(server, Some(&admin), pair, "GET", "/internal/x").problem(403);
        forward(server, Some(&admin), pair, "GET", "/v9").problem(403);
        let detail = forward(
            server,
            Some(&admin),
            pair,
            "GET",
            "/v1/devboxes/..%2Finternal",
        )
        .problem(400);
        assert!(detail.contains("encoded `/`"), "{detail}");

        let r = forward(server, None, pair, "GET", "/healthz");
        assert_eq!(r.status, 204);
        assert_eq!(r.header("x-keygate-key-id"), Some("-"));
        assert_eq!(r.header("x-keygate-decision"), Some("public"));
    }

    let server = &xf_server;
    // One pair only: a client must not be able to add the other.
    let r = server.req(
        "GET",
        "/v1/authorize",
        &[
            ("X-Forwarded-Method", "GET"),
            ("X-Forwarded-Uri", "/healthz"),
            ("X-Original-Method", "POST"),
            ("X-Original-URI", "/v1/devboxes/x"),
        ],
        None,
    );
    assert!(r.problem(400).contains("is not trusted"));
    let r = server.req(
        "GET",
        "/v1/authorize",
        &[("X-Forwarded-Method", "GET")],
        None,
    );
    assert!(r.problem(400).contains("needs both"));

    // With a table, the forwarded request decides even when the query names
    // a scope the key has: a client must not pick its own scope (Caddy
    // passes the client's query on to /v1/authorize).
    let auth = format!("Bearer {reader}");
    let r = server.req(
        "GET",
        "/v1/authorize?resource_type=RESOURCE_TYPE_DEVBOXES&access_level=ACCESS_LEVEL_READ",
        &[
            ("Authorization", &auth),
            ("X-Forwarded-Method", "GET"),
            ("X-Forwarded-Uri", "/internal/x"),
        ],
        None,
    );
    r.problem(403);

    // Without forwarded headers, the fixed-scope form keeps working.
    let r = server.authorize(&reader, "DEVBOXES", "READ");
    assert_eq!(r.status, 204);
    assert_eq!(r.header("x-keygate-key-id"), Some(&reader[3..19]));
    server.authorize(&reader, "DEVBOXES", "WRITE").problem(403);
}

#[test]
fn forward_auth_without_a_table_says_how_to_enable_it() {
    let dir = TempDir::new("routes-none");
    let server = Server::start(&dir.db(), &[]);
    let token = server.token().to_owned();
    let detail = forward(&server, Some(&token), XF, "GET", "/v1/devboxes").problem(400);
    assert!(detail.contains("--routes"), "{detail}");
    assert_eq!(server.authorize(&token, "DEVBOXES", "WRITE").status, 204);
}

#[test]
fn a_bad_table_stops_start_up() {
    let dir = TempDir::new("routes-bad");
    let file = table_file(&dir, "GET /a public\nGET /a/{id}/** devboxes:reed\n");
    let out = Command::new(BIN)
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--routes",
            &file,
            "--db",
        ])
        .arg(dir.db())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("line 2, column 16: decision `devboxes:reed`: unknown access level `reed`"),
        "{err}"
    );
    assert!(!err.contains("listening"), "{err}");
    assert!(!dir.db().exists(), "start-up went on to open the database");
    let out = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--routes"])
        .arg(dir.0.join("missing.routes"))
        .arg("--db")
        .arg(dir.db())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read route table"));
}

#[test]
fn routes_check_and_explain() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/runloop.routes");
    let out = Command::new(BIN)
        .args(["routes", "check", example])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("ok: "), "{text}");
    assert!(text.contains("unmatched requests: deny"), "{text}");

    let dir = TempDir::new("routes-cli");
    let bad = table_file(&dir, "GET /a public\nGET /a deny\n");
    let out = Command::new(BIN)
        .args(["routes", "check", &bad])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("line 2, column 1") && err.contains("line 1"),
        "{err}"
    );

    let out = Command::new(BIN)
        .args([
            "routes",
            "explain",
            example,
            "POST",
            "/v1/devboxes/dbx_1/read_file_contents",
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("decision: devboxes:read (line"), "{text}");
    assert!(text.contains("wins"), "{text}");
    assert!(text.contains("loses at segment 3"), "{text}");

    let out = Command::new(BIN)
        .args([
            "routes",
            "explain",
            example,
            "GET",
            "/v1/devboxes/..%2Fsecrets",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("answered with 400"));
}

/// `examples/runloop.routes` and keygate agree on keygate's own routes: for
/// each route keygate serves behind a gateway, and each kind of caller, the
/// table's decision (forward-auth: 204, or 401/403) is keygate's own (its
/// answer is neither 401 nor 403: the request passed the scope check, and
/// a 400 or 404 after it comes from the handler).
#[test]
fn the_runloop_table_agrees_with_keygate_on_its_own_routes() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/runloop.routes");
    let dir = TempDir::new("routes-agree");
    let server = Server::start(&dir.db(), &["--routes", example]);
    let standard = server.token().to_owned();
    let callers: Vec<(&str, Option<String>)> = vec![
        ("no key", None),
        ("standard", Some(standard)),
        (
            "account:read",
            Some(mint_token(&dir.db(), &["--scope", "account:read"])),
        ),
        (
            "account:write",
            Some(mint_token(&dir.db(), &["--scope", "account:write"])),
        ),
        (
            "devboxes:write",
            Some(mint_token(&dir.db(), &["--scope", "devboxes:write"])),
        ),
    ];
    for (_, token) in &callers {
        if let Some(t) = token {
            server.wait_accepted(t);
        }
    }
    // An id that names no key: an allowed revoke or roll answers 404 and
    // changes nothing; a body that does not parse keeps creates from minting.
    let id = "0000000000000000";
    let routes: [(&str, String, Option<&str>); 8] = [
        ("POST", "/v1/apikeys".into(), Some(r#"{"bogus":1}"#)),
        ("POST", "/v1/restricted_keys".into(), Some(r#"{"bogus":1}"#)),
        ("GET", "/v1/keys".into(), None),
        ("GET", format!("/v1/keys/{id}"), None),
        ("DELETE", format!("/v1/keys/{id}"), None),
        (
            "POST",
            format!("/v1/keys/{id}/roll"),
            Some(r#"{"bogus":1}"#),
        ),
        ("POST", "/v1/keys/revoke".into(), Some("{}")),
        ("GET", "/v1/events".into(), None),
    ];
    for (method, path, body) in &routes {
        for (who, token) in &callers {
            let table = forward(&server, token.as_deref(), XO, method, path);
            assert!(
                [204, 401, 403].contains(&table.status),
                "{method} {path} as {who}: the table answered {}",
                table.text()
            );
            let own = match token {
                Some(t) => server.authed(method, path, t, *body),
                None => server.req(method, path, &[], body.map(str::as_bytes)),
            };
            assert!(
                ![405, 500].contains(&own.status),
                "{method} {path} as {who}: keygate answered {}",
                own.text()
            );
            let table_allows = table.status == 204;
            let keygate_allows = ![401, 403].contains(&own.status);
            assert_eq!(
                table_allows,
                keygate_allows,
                "{method} {path} as {who}: the table says {} ({}), keygate {} ({})",
                table.status,
                table.header("x-keygate-decision").unwrap_or("-"),
                own.status,
                own.text()
            );
        }
    }
    // Reads need only `account:read` in both.
    let reader = callers[2].1.as_deref().unwrap();
    assert_eq!(server.authed("GET", "/v1/keys", reader, None).status, 200);
    assert_eq!(server.authed("GET", "/v1/events", reader, None).status, 200);
    let d = server
        .authed("DELETE", &format!("/v1/keys/{id}"), reader, None)
        .problem(403);
    assert!(d.contains("account:write"), "{d}");
}
