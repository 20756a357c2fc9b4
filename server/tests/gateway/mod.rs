//! Shared by the real-gateway tests (nginx, Caddy): the route table they
//! use, a small upstream that echoes what reaches it, and the checks both
//! gateways must pass.
#![allow(dead_code)]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::common::*;

/// The table both gateways use: one `location /` (one site) for every
/// route, the table deciding.
pub const TABLE: &str = "\
# method  pattern                                  decision
GET       /v1/devboxes/**                          devboxes:read
POST      /v1/devboxes/**                          devboxes:write
POST      /v1/devboxes/{id}/read_file_contents     devboxes:read
GET       /v1/objects/**                           objects:read
GET       /healthz                                 public
*         /internal/**                             deny
";

/// Writes [`TABLE`] next to the database and returns its path.
pub fn write_table(dir: &TempDir) -> PathBuf {
    let path = dir.0.join("gateway.routes");
    std::fs::write(&path, TABLE).unwrap();
    path
}

/// An upstream that answers 200 with `upstream METHOD PATH for KEY_ID`,
/// KEY_ID being the `X-Keygate-Key-Id` header it received (`none` if absent).
pub fn start_upstream() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut key_id = String::from("none");
            let mut request_line = String::new();
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if request_line.is_empty() {
                    request_line = line.trim_end().to_owned();
                }
                if let Some((name, value)) = line.split_once(':') {
                    if name.eq_ignore_ascii_case("x-keygate-key-id") {
                        key_id = value.trim().to_owned();
                    }
                }
            }
            let mut parts = request_line.split(' ');
            let method = parts.next().unwrap_or("").to_owned();
            let path = parts.next().unwrap_or("").to_owned();
            let body = format!("upstream {method} {path} for {key_id}");
            let _ = write!(
                stream,
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    port
}

/// Waits until something listens on `addr`, or fails with `log`'s text.
pub fn wait_listening(addr: SocketAddr, log: &Path) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while std::net::TcpStream::connect(addr).is_err() {
        assert!(
            Instant::now() < deadline,
            "gateway did not start: {}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The checks of issue 9 through a gateway at `addr` in front of `keygate`
/// (started with `--routes` [`TABLE`]): allow, 401, 403, path confusion
/// refused, `public`, and the upstream receiving the key id.
/// `confusion_status` is what the gateway answers when keygate answers 400
/// (nginx's `auth_request` turns any status but 401 and 403 into 500).
pub fn check_gateway(addr: SocketAddr, keygate: &Server, db: &Path, confusion_status: u16) {
    let admin = keygate.token().to_owned();
    let writer = mint_token(db, &["--scope", "devboxes:write"]);
    let reader = mint_token(db, &["--scope", "devboxes:read"]);
    // CLI keys reach the running server through its change-log poll.
    keygate.wait_accepted(&writer);
    keygate.wait_accepted(&reader);
    let send = |method: &str, path: &str, token: Option<&str>| {
        let auth = token.map(|t| format!("Bearer {t}"));
        let headers: Vec<(&str, &str)> =
            auth.iter().map(|a| ("Authorization", a.as_str())).collect();
        let body: Option<&[u8]> = (method == "POST").then_some(b"");
        request(addr, method, path, &headers, body)
    };
    let id = |t: &str| t[3..19].to_owned();

    // Allowed: the upstream answers, and it received the key id.
    for (method, path, token) in [
        ("POST", "/v1/devboxes/dbx_42/execute", &writer),
        ("POST", "/v1/devboxes/dbx_42/execute", &admin),
        ("GET", "/v1/devboxes/dbx_42/logs?limit=5", &reader),
        ("POST", "/v1/devboxes/dbx_42/read_file_contents", &reader),
        ("GET", "/v1/devboxes/", &reader),
    ] {
        let r = send(method, path, Some(token));
        assert_eq!(r.status, 200, "{method} {path}: {}", r.text());
        assert_eq!(
            r.text(),
            format!("upstream {method} {path} for {}", id(token)),
            "{method} {path}"
        );
    }

    // 401: missing, malformed or changed tokens never reach the upstream.
    let mut changed = writer.clone().into_bytes();
    changed[40] = if changed[40] == b'Q' { b'R' } else { b'Q' };
    let changed = String::from_utf8(changed).unwrap();
    for token in [None, Some("ak_nope"), Some(changed.as_str())] {
        let r = send("GET", "/v1/devboxes/dbx_42", token);
        assert_eq!(r.status, 401, "{token:?}: {}", r.text());
        assert!(!r.text().contains("upstream"));
        assert_eq!(
            r.header("www-authenticate"),
            Some(r#"Bearer error="invalid_token""#)
        );
    }

    // 403: a key without the route's scope; a `deny` route; an unmatched
    // route, even for the standard key.
    for (method, path, token) in [
        ("POST", "/v1/devboxes/dbx_42/execute", &reader),
        ("GET", "/v1/objects/obj_1", &writer),
        ("GET", "/internal/metrics", &admin),
        ("GET", "/v1/secrets/GITHUB_TOKEN", &admin),
        ("DELETE", "/v1/devboxes/dbx_42", &admin),
    ] {
        let r = send(method, path, Some(token));
        assert_eq!(r.status, 403, "{method} {path}: {}", r.text());
        assert!(!r.text().contains("upstream"), "{method} {path}");
    }

    // A fixed-scope query on the original request must not turn the table
    // off (Caddy keeps the client's query when it rewrites to /v1/authorize).
    for path in [
        "/internal/metrics?resource_type=RESOURCE_TYPE_DEVBOXES&access_level=ACCESS_LEVEL_READ",
        "/v1/devboxes/dbx_42/execute?resource_type=RESOURCE_TYPE_DEVBOXES&access_level=ACCESS_LEVEL_READ",
    ] {
        let r = send("POST", path, Some(&reader));
        assert_eq!(r.status, 403, "{path}: {}", r.text());
        assert!(!r.text().contains("upstream"), "{path}");
    }

    // Path confusion: refused by keygate (400), never reaching the upstream,
    // even with the standard key.
    for path in [
        "/v1/devboxes/..%2F..%2Finternal/metrics",
        "/v1/devboxes/%2e%2e/%2e%2e/internal/metrics",
        "/v1/devboxes/dbx_1;jsessionid=x/read_file_contents",
        "/v1/devboxes/dbx_1%2Fread_file_contents",
    ] {
        let r = send("POST", path, Some(&reader));
        assert_eq!(r.status, confusion_status, "{path}: {}", r.text());
        assert!(!r.text().contains("upstream"), "{path}");
        let r = send("GET", path, Some(&admin));
        assert_eq!(r.status, confusion_status, "{path}: {}", r.text());
        assert!(!r.text().contains("upstream"), "{path}");
    }

    // public: no key needed; the upstream gets `-` for the key id (keygate
    // always sends the header), never a forged one.
    let r = send("GET", "/healthz", None);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.text(), "upstream GET /healthz for -");
    let r = request(
        addr,
        "GET",
        "/healthz",
        &[("X-Keygate-Key-Id", "forged")],
        None,
    );
    assert_eq!(r.status, 200);
    assert!(!r.text().contains("forged"), "{}", r.text());
    // A forged header on an authenticated route is replaced by the real id.
    let auth = format!("Bearer {reader}");
    let r = request(
        addr,
        "GET",
        "/v1/devboxes/dbx_42",
        &[("Authorization", &auth), ("X-Keygate-Key-Id", "forged")],
        None,
    );
    assert_eq!(r.status, 200);
    assert_eq!(
        r.text(),
        format!("upstream GET /v1/devboxes/dbx_42 for {}", id(&reader))
    );

    // keygate decided each of them: its log has the refusals and the ids.
    std::thread::sleep(Duration::from_millis(100));
    let log = keygate.log_text();
    assert!(log.contains("status=400"), "{log}");
    assert!(log.contains("status=403"), "{log}");
    assert!(log.contains(&format!("key_id={}", id(&reader))), "{log}");
}

/// Forward-auth headers a client sends itself, through the gateway at
/// `addr`: for every family and part of one (`X-Forwarded-Method`/`-Uri`,
/// `X-Original-Method`/`-URI`) and every claimed original request, each
/// request gets exactly the answer it gets without them: a protected route
/// stays 401/403 without a key even when the client claims a public path,
/// a refused one stays refused, an allowed one stays allowed.
pub fn check_forged_forwarded_headers(addr: SocketAddr, keygate: &Server, db: &Path) {
    let reader = mint_token(db, &["--scope", "devboxes:read"]);
    keygate.wait_accepted(&reader);
    let send = |method: &str, path: &str, token: Option<&str>, extra: &[(&str, &str)]| {
        let auth = token.map(|t| format!("Bearer {t}"));
        let mut headers: Vec<(&str, &str)> =
            auth.iter().map(|a| ("Authorization", a.as_str())).collect();
        headers.extend_from_slice(extra);
        let body: Option<&[u8]> = (method == "POST").then_some(b"");
        request(addr, method, path, &headers, body)
    };
    // (method, path, token, the answer without forged headers)
    let cases: [(&str, &str, Option<&str>, u16); 6] = [
        ("GET", "/v1/devboxes/dbx_42", None, 401),
        ("POST", "/v1/devboxes/dbx_42/execute", None, 401),
        ("POST", "/v1/devboxes/dbx_42/execute", Some(&reader), 403),
        ("GET", "/internal/metrics", Some(&reader), 403),
        ("GET", "/v1/devboxes/dbx_42", Some(&reader), 200),
        ("GET", "/healthz", None, 200),
    ];
    // What a client might claim: a public path, a path the reader may
    // read, a denied one.
    let claims = [
        ("GET", "/healthz"),
        ("GET", "/v1/devboxes/dbx_42"),
        ("DELETE", "/internal/metrics"),
    ];
    let families = [
        ("X-Forwarded-Method", "X-Forwarded-Uri"),
        ("X-Original-Method", "X-Original-URI"),
    ];
    let mut checked = 0;
    for (method, path, token, expected) in cases {
        let baseline = send(method, path, token, &[]);
        assert_eq!(
            baseline.status,
            expected,
            "{method} {path}: {}",
            baseline.text()
        );
        for (claimed_method, claimed_uri) in claims {
            for (m, u) in families {
                let forged: [&[(&str, &str)]; 4] = [
                    &[(m, claimed_method), (u, claimed_uri)],
                    &[(u, claimed_uri)],
                    &[(m, claimed_method)],
                    // Both families at once.
                    &[
                        (families[0].0, claimed_method),
                        (families[0].1, claimed_uri),
                        (families[1].0, claimed_method),
                        (families[1].1, claimed_uri),
                    ],
                ];
                for extra in forged {
                    let r = send(method, path, token, extra);
                    assert_eq!(
                        r.status,
                        expected,
                        "{method} {path} claiming {extra:?}: {}",
                        r.text()
                    );
                    assert_eq!(
                        r.text().contains("upstream"),
                        expected == 200,
                        "{method} {path} claiming {extra:?}: {}",
                        r.text()
                    );
                    if expected == 200 {
                        assert_eq!(r.text(), baseline.text(), "{extra:?}");
                    }
                    checked += 1;
                }
            }
        }
    }
    assert_eq!(checked, 6 * 3 * 2 * 4);
}

/// Asserts that a refusal reached the client as keygate's problem+json
/// (not the gateway's own error page), with its `WWW-Authenticate`.
pub fn assert_keygate_refusal(r: &Resp, status: u16, challenge: &str) -> String {
    let detail = r.problem(status);
    assert_eq!(
        r.header("www-authenticate"),
        Some(challenge),
        "{}",
        r.text()
    );
    detail
}
