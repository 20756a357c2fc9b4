//! No token is ever echoed back: a real token (a pre-existing key's, not
//! one the request creates) placed in every path segment, query name and
//! value, header and JSON body field of every route, and in every argument
//! of every CLI command, never shows up, whole or as any 20-character window
//! of its 43-character secret, in any response (status line, headers,
//! body), any line the server logs at `KEYGATE_LOG=debug`, or any CLI
//! stdout or stderr. The placements are a deterministic, exhaustive loop.
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

/// Every 20-character window of the secret, and the secret itself.
struct Probe {
    token: String,
    windows: Vec<String>,
}

impl Probe {
    fn new(token: &str) -> Probe {
        assert_eq!(token.len(), 69, "{token}");
        let secret = &token[20..63];
        assert_eq!(secret.len(), 43);
        let windows = (0..=secret.len() - 20)
            .map(|i| secret[i..i + 20].to_owned())
            .collect();
        Probe {
            token: token.to_owned(),
            windows,
        }
    }

    /// Panics if `text` holds the secret or any 20-character window of it.
    fn assert_absent(&self, text: &str, what: &dyn std::fmt::Display) {
        for w in &self.windows {
            assert!(
                !text.contains(w.as_str()),
                "the secret leaked ({w}) in {what}:\n{text}"
            );
        }
    }
}

/// One placement: a request to send.
struct Placed {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
    body: Option<String>,
}

impl std::fmt::Display for Placed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {} {:?} {:?}",
            self.method,
            self.path,
            self.headers,
            self.body.as_deref().unwrap_or("")
        )
    }
}

/// A route: method, path template (`{}` marks where the route's own id
/// goes), the route's own query pairs and JSON body fields.
struct Route {
    method: &'static str,
    path: &'static str,
    query: &'static [(&'static str, &'static str)],
    body: Option<&'static [(&'static str, &'static str)]>,
}

const ROUTES: &[Route] = &[
    Route {
        method: "POST",
        path: "/v1/apikeys",
        query: &[],
        body: Some(&[("name", "\"n\""), ("expires_at_ms", "null")]),
    },
    Route {
        method: "POST",
        path: "/v1/restricted_keys",
        query: &[],
        body: Some(&[
            ("name", "\"n\""),
            (
                "scopes",
                r#"[{"resource_type":"RESOURCE_TYPE_DEVBOXES","access_level":"ACCESS_LEVEL_READ"}]"#,
            ),
            ("expires_at_ms", "null"),
        ]),
    },
    Route {
        method: "GET",
        path: "/v1/keys",
        query: &[("limit", "5"), ("starting_after", "0000000000000000")],
        body: None,
    },
    Route {
        method: "GET",
        path: "/v1/keys/{}",
        query: &[],
        body: None,
    },
    Route {
        method: "GET",
        path: "/v1/keys/{}/usage",
        query: &[("from_ms", "0"), ("to_ms", "1"), ("bucket", "minute")],
        body: None,
    },
    Route {
        method: "DELETE",
        path: "/v1/keys/{}",
        query: &[],
        body: None,
    },
    Route {
        method: "POST",
        path: "/v1/keys/{}/roll",
        query: &[],
        body: Some(&[("overlap_ms", "0")]),
    },
    Route {
        method: "PATCH",
        path: "/v1/keys/{}",
        query: &[],
        body: Some(&[("rate_limit", "null")]),
    },
    Route {
        method: "POST",
        path: "/v1/keys/{}/credits",
        query: &[],
        body: Some(&[("set", "1")]),
    },
    Route {
        method: "GET",
        path: "/v1/events",
        query: &[("after", "0"), ("limit", "5")],
        body: None,
    },
    Route {
        method: "GET",
        path: "/v1/whoami",
        query: &[],
        body: None,
    },
    Route {
        method: "GET",
        path: "/v1/authorize",
        query: &[
            ("resource_type", "RESOURCE_TYPE_DEVBOXES"),
            ("access_level", "ACCESS_LEVEL_READ"),
        ],
        body: None,
    },
    Route {
        method: "GET",
        path: "/healthz",
        query: &[],
        body: None,
    },
    Route {
        method: "GET",
        path: "/readyz",
        query: &[],
        body: None,
    },
    Route {
        method: "GET",
        path: "/openapi.yaml",
        query: &[],
        body: None,
    },
    Route {
        method: "GET",
        path: "/no/such/route",
        query: &[],
        body: None,
    },
    // Last: one of its placements revokes the probe.
    Route {
        method: "POST",
        path: "/v1/keys/revoke",
        query: &[],
        body: Some(&[("token", "\"ak_x\"")]),
    },
];

/// The JSON body of `fields`, with field `replace` (if any) set to `value`
/// (raw JSON) and an extra field `extra` (if any).
fn json_body(
    fields: &[(&str, &str)],
    replace: Option<(usize, &str)>,
    extra: Option<&str>,
) -> String {
    let mut parts: Vec<String> = fields
        .iter()
        .enumerate()
        .map(|(i, (k, v))| match replace {
            Some((j, value)) if i == j => format!("\"{k}\":{value}"),
            _ => format!("\"{k}\":{v}"),
        })
        .collect();
    if let Some(name) = extra {
        parts.push(format!("\"{name}\":1"));
    }
    format!("{{{}}}", parts.join(","))
}

/// Every placement of `t` for `route`, with `admin` as the caller and `id`
/// as the route's own key id.
fn placements(route: &Route, t: &str, admin: &str, id: &str) -> Vec<Placed> {
    let auth = vec![("Authorization".to_owned(), format!("Bearer {admin}"))];
    let path = route.path.replace("{}", id);
    let query = |pairs: &[(String, String)]| {
        if pairs.is_empty() {
            String::new()
        } else {
            let joined: Vec<String> = pairs.iter().map(|(k, v)| format!("{k}={v}")).collect();
            format!("?{}", joined.join("&"))
        }
    };
    let own: Vec<(String, String)> = route
        .query
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    let own_body = route.body.map(|fields| json_body(fields, None, None));
    let placed = |path: String, headers: Vec<(String, String)>, body: Option<String>| Placed {
        method: route.method.to_owned(),
        path,
        headers,
        body,
    };
    let mut out = Vec::new();
    // Each path segment, raw and with its first character percent-encoded.
    let segments: Vec<&str> = path.split('/').skip(1).collect();
    for i in 0..segments.len() {
        for token in [t.to_owned(), format!("%{:02X}{}", t.as_bytes()[0], &t[1..])] {
            let mut s: Vec<String> = segments.iter().map(|s| (*s).to_owned()).collect();
            s[i] = token;
            out.push(placed(
                format!("/{}{}", s.join("/"), query(&own)),
                auth.clone(),
                own_body.clone(),
            ));
        }
    }
    // A segment more.
    out.push(placed(
        format!("{path}/{t}"),
        auth.clone(),
        own_body.clone(),
    ));
    // Each query value, and the token as a query name, a bare query and an
    // extra value.
    for i in 0..own.len() {
        let mut q = own.clone();
        q[i].1 = t.to_owned();
        out.push(placed(
            format!("{path}{}", query(&q)),
            auth.clone(),
            own_body.clone(),
        ));
    }
    for extra in [
        (t.to_owned(), "1".to_owned()),
        ("x".to_owned(), t.to_owned()),
    ] {
        let mut q = own.clone();
        q.push(extra);
        out.push(placed(
            format!("{path}{}", query(&q)),
            auth.clone(),
            own_body.clone(),
        ));
    }
    out.push(placed(
        format!("{path}?{t}"),
        auth.clone(),
        own_body.clone(),
    ));
    // Headers: as the credential, in a wrong scheme, bare, and in other
    // headers; the route's own request otherwise.
    let with_own = format!("{path}{}", query(&own));
    for headers in [
        vec![("Authorization", format!("Bearer {t}"))],
        vec![("Authorization", format!("Basic {t}"))],
        vec![("Authorization", t.to_owned())],
        vec![("Authorization", format!("Bearer {t}x"))],
        vec![
            ("Authorization", format!("Bearer {t}")),
            ("Authorization", format!("Bearer {admin}")),
        ],
        vec![
            ("Authorization", format!("Bearer {admin}")),
            ("X-Api-Key", t.to_owned()),
        ],
        vec![
            ("Authorization", format!("Bearer {admin}")),
            ("Cookie", format!("session={t}")),
        ],
        vec![
            ("Authorization", format!("Bearer {admin}")),
            ("User-Agent", t.to_owned()),
        ],
        vec![
            ("Authorization", format!("Bearer {admin}")),
            ("Referer", format!("http://x/{t}")),
        ],
        vec![
            ("Authorization", format!("Bearer {admin}")),
            ("Content-Type", t.to_owned()),
        ],
        vec![
            ("Authorization", format!("Bearer {admin}")),
            ("X-Keygate-Key-Id", t.to_owned()),
        ],
        // Forward-auth headers: the trusted family (x-original), the other
        // one, and each value.
        vec![
            ("X-Original-Method", "GET".to_owned()),
            ("X-Original-URI", format!("/v1/devboxes/{t}")),
        ],
        vec![
            ("X-Original-Method", "GET".to_owned()),
            ("X-Original-URI", format!("/{t}?q={t}")),
        ],
        vec![
            ("X-Original-Method", "GET".to_owned()),
            ("X-Original-URI", format!("/v1/devboxes/{t}/..%2Fx")),
        ],
        vec![
            ("X-Original-Method", "GET".to_owned()),
            ("X-Original-URI", t.to_owned()),
        ],
        vec![
            ("X-Original-Method", t.to_owned()),
            ("X-Original-URI", "/v1/devboxes/x".to_owned()),
        ],
        vec![
            ("X-Original-Method", "GET".to_owned()),
            ("X-Original-URI", "/v1/devboxes/x".to_owned()),
            ("Authorization", format!("Bearer {t}")),
        ],
        vec![
            ("X-Original-Method", "GET".to_owned()),
            ("X-Original-URI", "/internal/x".to_owned()),
            ("Authorization", format!("Bearer {t}")),
        ],
        vec![("X-Original-URI", format!("/{t}"))],
        vec![
            ("X-Forwarded-Method", "GET".to_owned()),
            ("X-Forwarded-Uri", format!("/{t}")),
        ],
        vec![
            ("X-Forwarded-Method", t.to_owned()),
            ("X-Forwarded-Uri", "/healthz".to_owned()),
        ],
        vec![
            ("X-Original-Method", "GET".to_owned()),
            ("X-Original-URI", format!("/{t}")),
            ("X-Original-URI", format!("/{t}")),
        ],
    ] {
        let headers = headers
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect();
        out.push(placed(with_own.clone(), headers, own_body.clone()));
    }
    // JSON body fields: each value (as a string), each as the token's name,
    // an extra field named by it, the whole body, and a body on a route
    // without one.
    let quoted = format!("\"{t}\"");
    match route.body {
        Some(fields) => {
            for i in 0..fields.len() {
                out.push(placed(
                    with_own.clone(),
                    auth.clone(),
                    Some(json_body(fields, Some((i, &quoted)), None)),
                ));
                out.push(placed(
                    with_own.clone(),
                    auth.clone(),
                    Some(json_body(fields, Some((i, &format!("[{quoted}]"))), None)),
                ));
            }
            if route.path.ends_with("restricted_keys") {
                for scope in [
                    format!(r#"[{{"resource_type":{quoted},"access_level":"ACCESS_LEVEL_READ"}}]"#),
                    format!(
                        r#"[{{"resource_type":"RESOURCE_TYPE_DEVBOXES","access_level":{quoted}}}]"#
                    ),
                    format!(
                        r#"[{{"resource_type":"RESOURCE_TYPE_DEVBOXES","access_level":"ACCESS_LEVEL_READ",{quoted}:1}}]"#
                    ),
                ] {
                    out.push(placed(
                        with_own.clone(),
                        auth.clone(),
                        Some(json_body(fields, Some((1, &scope)), None)),
                    ));
                }
            }
            out.push(placed(
                with_own.clone(),
                auth.clone(),
                Some(json_body(fields, None, Some(t))),
            ));
            for raw in [
                t.to_owned(),
                quoted.clone(),
                format!("{{{quoted}}}"),
                format!("{{\"name\":\"x\" {t}}}"),
            ] {
                out.push(placed(with_own.clone(), auth.clone(), Some(raw)));
            }
        }
        None => out.push(placed(
            with_own.clone(),
            auth.clone(),
            Some(format!("{{{quoted}:1}}")),
        )),
    }
    out
}

#[test]
fn no_response_log_line_or_cli_output_echoes_a_token() {
    scan("text");
}

/// The same with the server logging JSON (`--log-format json`).
#[test]
fn no_json_log_line_echoes_a_token() {
    scan("json");
}

fn scan(log_format: &str) {
    let t0 = std::time::Instant::now();
    let dir = TempDir::new(&format!("secret-scan-{log_format}"));
    let table = dir.0.join("t.routes");
    std::fs::write(&table, TABLE).unwrap();
    let server = Server::start_logging(
        &dir.db(),
        &[
            "--routes",
            table.to_str().unwrap(),
            "--log-format",
            log_format,
        ],
        "debug",
    );
    let admin = server.token().to_owned();
    // The probe: a pre-existing key's token, minted before any request.
    let probe = Probe::new(&mint_token(
        &dir.db(),
        &["--scope", "devboxes:read", "--name", "probe"],
    ));
    server.wait_accepted(&probe.token);
    // A key each route with an `{id}` acts on.
    let target = mint_token(&dir.db(), &["--name", "target"]);
    let target_id = target[3..19].to_owned();
    let t = probe.token.clone();

    let mut sent = 0;
    for route in ROUTES {
        for placed in placements(route, &t, &admin, &target_id) {
            let mut raw = format!(
                "{} {} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n",
                placed.method, placed.path, server.addr
            );
            for (k, v) in &placed.headers {
                raw.push_str(&format!("{k}: {v}\r\n"));
            }
            if let Some(b) = &placed.body {
                raw.push_str(&format!("Content-Length: {}\r\n", b.len()));
            }
            raw.push_str("\r\n");
            if let Some(b) = &placed.body {
                raw.push_str(b);
            }
            let mut stream = std::net::TcpStream::connect(server.addr).unwrap();
            stream
                .set_read_timeout(Some(std::time::Duration::from_secs(10)))
                .unwrap();
            std::io::Write::write_all(&mut stream, raw.as_bytes()).unwrap();
            let mut buf = Vec::new();
            let _ = std::io::Read::read_to_end(&mut stream, &mut buf);
            assert!(!buf.is_empty(), "no answer to {placed}");
            // Everything the server sent: status line, headers, body.
            probe.assert_absent(&String::from_utf8_lossy(&buf), &placed);
            sent += 1;
        }
    }
    // A method that is the token.
    let r = request(server.addr, &t, "/healthz", &[], None);
    probe.assert_absent(&format!("{r:?} {}", r.text()), &"the token as the method");
    sent += 1;

    // The CLI: the token as every argument of every command.
    let db = dir.db();
    let db = db.to_str().unwrap();
    let table_path = table.to_str().unwrap();
    let missing = dir.0.join(&t);
    let missing = missing.to_str().unwrap();
    // `migrate` into a file named by the token succeeds: its summary names it.
    let moved = dir.0.join("moved.db").to_str().unwrap().to_owned();
    let moved_t = dir.0.join(format!("{t}.db"));
    let moved_t = moved_t.to_str().unwrap();
    let (scope_t, flag_t, path_t, dots_t) = (
        format!("devboxes:{t}"),
        format!("--{t}"),
        format!("/v1/devboxes/{t}"),
        format!("/{t}/..%2Fx"),
    );
    let commands: Vec<Vec<&str>> = vec![
        vec!["roll", "--db", db, &t],
        vec!["roll", "--db", db, "--overlap", &t, &target_id],
        vec!["roll", "--db", db, "--overlap", "1s", &t],
        vec!["revoke", "--db", db, &t],
        vec!["revoke", "--db", db, "--cascade", &t],
        vec!["revoke", "--db", db, &t, &t],
        vec!["mint", "--db", db, "--name", &t],
        vec!["mint", "--db", db, "--scope", &t],
        vec!["mint", "--db", db, "--scope", &scope_t],
        vec!["mint", "--db", db, "--expires-at-ms", &t],
        vec!["mint", "--db", db, &t],
        vec!["list", "--db", db, &t],
        vec!["list", "--db", db, "--json", &flag_t],
        vec!["list", "--db", db, "--pepper-file", missing],
        vec!["list", "--db", missing],
        vec!["usage", "--db", db, &t],
        vec!["usage", "--db", db, "--json", &t],
        vec!["usage", "--db", db, "--from", &t, &target_id],
        vec!["usage", "--db", db, "--to", &t, &target_id],
        vec!["usage", "--db", db, "--bucket", &t, &target_id],
        vec!["events", "--db", db, "--after", &t],
        vec!["events", "--db", db, "--json"],
        vec!["events", "--db", db],
        vec!["list", "--db", db],
        vec!["migrate", "--from", missing, "--to", &moved],
        vec!["migrate", "--from", db, "--to", moved_t],
        vec![
            "migrate",
            "--from",
            db,
            "--to",
            &moved,
            "--pepper-file",
            missing,
        ],
        vec!["migrate", "--from", &t, "--to", &moved],
        vec!["routes", "check", missing],
        vec!["routes", "explain", table_path, "GET", &path_t],
        vec!["routes", "explain", table_path, "GET", &dots_t],
        vec!["routes", "explain", table_path, &t, "/healthz"],
        vec!["routes", "explain", missing, "GET", "/"],
        vec!["serve", "--db", db, "--listen", &t],
        vec![
            "serve",
            "--db",
            db,
            "--listen",
            "127.0.0.1:0",
            "--routes",
            missing,
        ],
        vec![
            "serve",
            "--db",
            db,
            "--listen",
            "127.0.0.1:0",
            "--poll-ms",
            &t,
        ],
        vec![
            "serve",
            "--db",
            db,
            "--listen",
            "127.0.0.1:0",
            "--header-read-timeout",
            &t,
        ],
        vec![
            "serve",
            "--db",
            db,
            "--listen",
            "127.0.0.1:0",
            "--forwarded-headers",
            &t,
        ],
        vec![
            "serve",
            "--db",
            db,
            "--listen",
            "127.0.0.1:0",
            "--pepper-file",
            missing,
        ],
        vec![&t],
    ];
    for args in &commands {
        let out = Command::new(BIN)
            .args(args)
            .env("KEYGATE_LOG", "debug")
            .output()
            .unwrap();
        let what = format!("keygate {args:?}");
        probe.assert_absent(&String::from_utf8_lossy(&out.stdout), &what);
        probe.assert_absent(&String::from_utf8_lossy(&out.stderr), &what);
        sent += 1;
    }
    // The HTTP self-revoke (last route) and the CLI took the probe's id
    // from it: the probe no longer works.
    assert_eq!(server_status_after_revoke(&server, &t), 401);

    // Everything the server logged, at debug, for all of it.
    std::thread::sleep(std::time::Duration::from_millis(200));
    let log = server.log_text();
    assert!(log.contains("DEBUG"), "not a debug log");
    probe.assert_absent(&log, &"the server's log");
    eprintln!(
        "{sent} placements and commands, {} log lines, in {:?}",
        log.lines().count(),
        t0.elapsed()
    );
    assert!(sent > 300, "{sent}");
}

/// The probe's answer once the CLI's revoke reached the server.
fn server_status_after_revoke(server: &Server, token: &str) -> u16 {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    loop {
        let status = server.authorize(token, "OBJECTS", "NONE").status;
        if status == 401 || std::time::Instant::now() > deadline {
            return status;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// F10: a database URL or `password=` string misplaced on the command line
/// is quoted by the argument parser's error without its password.
#[test]
fn argument_errors_never_echo_a_database_password() {
    let dir = TempDir::new("secret-scan-argv");
    let db = dir.db();
    let db = db.to_str().unwrap();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec![
                "migrate",
                "--from",
                db,
                "--to",
                "X",
                "postgres://u:S3CRETPW2@h/db",
            ],
            "S3CRETPW2",
        ),
        (
            vec!["serve", "--metrics-listen", "postgres://u:S3CRETPW4@h/db"],
            "S3CRETPW4",
        ),
        (
            vec![
                "serve",
                "--listen",
                "postgresql://u:S3C@RETPW5@h:5432/db?x=1",
            ],
            "RETPW5",
        ),
        (
            vec!["list", "--db", db, "host=h password=S3CRETPW6 dbname=d"],
            "S3CRETPW6",
        ),
        (
            vec!["list", "--db", db, "host=h password='S3CRET PW7' dbname=d"],
            "PW7",
        ),
    ];
    for (args, secret) in cases {
        let out = Command::new(BIN).args(&args).output().unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!out.status.success(), "{args:?}: {text}");
        assert!(!text.contains(secret), "{args:?}: {text}");
        assert!(!text.contains("S3C"), "{args:?}: {text}");
    }
}
