//! `keygate serve --routes --forwarded-headers x-original|x-forwarded`: the
//! server reads the original request from the one header family it is told
//! to trust; a request carrying the other family is refused (400), never
//! decided by it; under `x-original` (nginx) a fixed-scope query is decided
//! by the query, whatever forward-auth headers a client added.
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
GET  /healthz         public
*    /internal/**     deny
";

const XF: (&str, &str) = ("X-Forwarded-Method", "X-Forwarded-Uri");
const XO: (&str, &str) = ("X-Original-Method", "X-Original-URI");

fn ask(server: &Server, query: &str, token: Option<&str>, extra: &[(&str, &str)]) -> Resp {
    let auth = token.map(|t| format!("Bearer {t}"));
    let mut headers: Vec<(&str, &str)> = extra.to_vec();
    if let Some(a) = &auth {
        headers.push(("Authorization", a));
    }
    server.req("GET", &format!("/v1/authorize{query}"), &headers, None)
}

#[test]
fn only_the_named_family_decides() {
    let dir = TempDir::new("fwd");
    let file = dir.0.join("t.routes");
    std::fs::write(&file, TABLE).unwrap();
    let file = file.to_str().unwrap();
    // The default is x-original.
    let xo = Server::start(&dir.db(), &["--routes", file]);
    let xf = Server::start(
        &dir.db(),
        &["--routes", file, "--forwarded-headers", "x-forwarded"],
    );
    let reader = mint_token(&dir.db(), &["--scope", "devboxes:read"]);
    xo.wait_accepted(&reader);
    xf.wait_accepted(&reader);
    const FIXED: &str = "?resource_type=RESOURCE_TYPE_DEVBOXES&access_level=ACCESS_LEVEL_WRITE";

    for (server, trusted, other, flag) in
        [(&xo, XO, XF, "x-original"), (&xf, XF, XO, "x-forwarded")]
    {
        // The trusted family decides.
        let r = ask(
            server,
            "",
            None,
            &[(trusted.0, "GET"), (trusted.1, "/healthz")],
        );
        assert_eq!(r.status, 204, "{flag}: {}", r.text());
        assert_eq!(r.header("x-keygate-decision"), Some("public"));
        ask(
            server,
            "",
            None,
            &[(trusted.0, "GET"), (trusted.1, "/v1/devboxes/x")],
        )
        .problem(401);
        // The other family claims a public path: refused, never 204, with
        // or without the trusted family, whole or one header of it.
        for extra in [
            vec![(other.0, "GET"), (other.1, "/healthz")],
            vec![(other.1, "/healthz")],
            vec![(other.0, "GET")],
            vec![
                (trusted.0, "GET"),
                (trusted.1, "/v1/devboxes/x"),
                (other.0, "GET"),
                (other.1, "/healthz"),
            ],
        ] {
            for token in [None, Some(reader.as_str())] {
                let detail = ask(server, "", token, &extra).problem(400);
                assert!(detail.contains("is not trusted"), "{flag}: {detail}");
                assert!(
                    detail.contains(&format!("--forwarded-headers {flag}")),
                    "{detail}"
                );
            }
        }
    }

    // x-original (nginx): a fixed-scope query is the location's own, and
    // decides; no forward-auth header a client adds is read.
    for extra in [
        vec![],
        vec![(XO.0, "GET"), (XO.1, "/healthz")],
        vec![(XF.0, "GET"), (XF.1, "/healthz")],
        vec![(XO.1, "/healthz"), (XF.1, "/healthz")],
    ] {
        ask(&xo, FIXED, None, &extra).problem(401);
        ask(&xo, FIXED, Some(&reader), &extra).problem(403);
        let r = ask(
            &xo,
            "?resource_type=RESOURCE_TYPE_DEVBOXES&access_level=ACCESS_LEVEL_READ",
            Some(&reader),
            &extra,
        );
        assert_eq!(r.status, 204, "{extra:?}: {}", r.text());
        assert_eq!(r.header("x-keygate-decision"), None, "{extra:?}");
    }
    // x-forwarded (Caddy keeps the client's query): the forwarded request
    // decides over a fixed-scope query.
    let r = ask(
        &xf,
        "?resource_type=RESOURCE_TYPE_DEVBOXES&access_level=ACCESS_LEVEL_READ",
        Some(&reader),
        &[(XF.0, "GET"), (XF.1, "/internal/x")],
    );
    r.problem(403);
}

#[test]
fn an_unknown_family_stops_start_up() {
    let dir = TempDir::new("fwd-bad");
    let out = Command::new(BIN)
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--forwarded-headers",
            "forwarded",
            "--db",
        ])
        .arg(dir.db())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("x-original") && err.contains("x-forwarded"),
        "{err}"
    );
    assert!(!dir.db().exists());
}

/// A decoded `?` or `#` in a forwarded path (`%3F`, `%3f`, `%23`) does not
/// get around a rule: refused (400), never the `default public` 204.
#[test]
fn an_encoded_query_or_fragment_in_a_forwarded_path_is_refused() {
    let dir = TempDir::new("fwd-qf");
    let file = dir.0.join("admin.routes");
    std::fs::write(&file, "GET /v1/admin account:write\ndefault public\n").unwrap();
    let file = file.to_str().unwrap();
    let xo = Server::start(&dir.db(), &["--routes", file]);
    let xf = Server::start(
        &dir.db(),
        &["--routes", file, "--forwarded-headers", "x-forwarded"],
    );
    let reader = mint_token(&dir.db(), &["--scope", "devboxes:read"]);
    xo.wait_accepted(&reader);
    xf.wait_accepted(&reader);
    for (server, (m, u)) in [(&xo, XO), (&xf, XF)] {
        // The controls: the rule holds, and other paths are public.
        ask(server, "", None, &[(m, "GET"), (u, "/v1/admin")]).problem(401);
        ask(server, "", Some(&reader), &[(m, "GET"), (u, "/v1/admin")]).problem(403);
        assert_eq!(
            ask(server, "", None, &[(m, "GET"), (u, "/v1/other")]).status,
            204
        );
        // A real query is no way around the rule either.
        ask(server, "", None, &[(m, "GET"), (u, "/v1/admin?x=1")]).problem(401);
        for uri in [
            "/v1/admin%3Fx",
            "/v1/admin%3fx=1",
            "/v1/admin%23frag",
            "/v1/admin%3F",
            "/v1/admin%23",
            "/v1/admin/%3F/x",
        ] {
            for token in [None, Some(reader.as_str())] {
                let r = ask(server, "", token, &[(m, "GET"), (u, uri)]);
                let detail = r.problem(400);
                assert!(
                    detail.contains("encoded `?` (`%3F`)")
                        || detail.contains("encoded `#` (`%23`)"),
                    "{uri}: {detail}"
                );
            }
        }
    }
}
