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
