//! A real nginx with `auth_request` in front of a small upstream, configured
//! by the shipped `examples/nginx/keygate.conf` (the README's config): one
//! `location /` for every route, keygate's route table deciding (forward-auth
//! with `X-Original-Method` and `X-Original-URI`, keygate's default
//! `--forwarded-headers x-original`). Client-sent forward-auth headers of
//! either family change no decision; refusals reach the client as
//! keygate's problem+json.
//!
//! nginx must be installed (`scripts/test.sh` apt-installs it). Set
//! `KEYGATE_SKIP_NGINX=1` to skip this test on a machine without it.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;
mod gateway;
#[path = "support/pg.rs"]
mod pg;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use common::*;
use gateway::*;

fn find_nginx() -> Option<PathBuf> {
    let path = std::env::var("PATH").unwrap_or_default();
    let found = path
        .split(':')
        .chain(["/usr/sbin", "/usr/local/sbin", "/usr/local/nginx/sbin"])
        .map(|d| PathBuf::from(d).join("nginx"))
        .find(|p| p.is_file());
    found
}

struct Nginx(Child);

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The nginx binary; `None` (skip) only with `KEYGATE_SKIP_NGINX=1`.
fn nginx_or_skip() -> Option<PathBuf> {
    let found = find_nginx();
    if found.is_none() {
        if std::env::var("KEYGATE_SKIP_NGINX").as_deref() == Ok("1") {
            eprintln!("nginx not found; skipped (KEYGATE_SKIP_NGINX=1)");
            return None;
        }
        panic!("nginx not found: install it (scripts/test.sh does) or set KEYGATE_SKIP_NGINX=1");
    }
    found
}

/// Runs the shipped `examples/nginx/NAME` with the test's ports (keygate,
/// the upstream, a free port for nginx) and nginx's prefix in `dir`.
fn run_shipped(
    nginx: &Path,
    dir: &TempDir,
    name: &str,
    keygate: &Server,
    upstream: u16,
) -> (Nginx, SocketAddr) {
    run_config(
        nginx,
        dir,
        name,
        &[
            ("127.0.0.1:8080", keygate.addr.to_string()),
            ("127.0.0.1:9000", format!("127.0.0.1:{upstream}")),
        ],
    )
}

/// Runs the shipped `examples/nginx/NAME` with each address of `ports`
/// replaced, nginx itself on a free port instead of `127.0.0.1:8000`.
fn run_config(
    nginx: &Path,
    dir: &TempDir,
    name: &str,
    ports: &[(&str, String)],
) -> (Nginx, SocketAddr) {
    let port = free_port();
    let shipped = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../examples/nginx/{name}")),
    )
    .unwrap();
    let mut conf = shipped;
    let own = ("127.0.0.1:8000", format!("127.0.0.1:{port}"));
    for (from, to) in ports.iter().chain([&own]) {
        assert!(conf.contains(from), "`{name}` lost `{from}`");
        conf = conf.replace(from, to);
    }
    let conf_path = dir.0.join(name);
    std::fs::write(&conf_path, conf).unwrap();
    let child = Command::new(nginx)
        .arg("-c")
        .arg(&conf_path)
        .args([
            "-p",
            &format!("{}/", dir.0.display()),
            "-g",
            "master_process off;",
        ])
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let nginx = Nginx(child);
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    wait_listening(addr, &dir.0.join("error.log"));
    (nginx, addr)
}

#[test]
fn nginx_auth_request_end_to_end() {
    let Some(nginx) = nginx_or_skip() else {
        return;
    };
    let dir = TempDir::new("nginx");
    let table = write_table(&dir);
    let keygate = Server::start(&dir.db(), &["--routes", table.to_str().unwrap()]);
    let upstream = start_upstream();
    let (_nginx, addr) = run_shipped(&nginx, &dir, "keygate.conf", &keygate, upstream);

    // nginx's auth_request answers 500 for any auth status but 2xx, 401 and
    // 403, so keygate's 400 (path refused) reaches the client as 500.
    check_gateway(addr, &keygate, &dir.db(), 500);

    // keygate's refusals reach the client as they are: problem+json with
    // keygate's detail and challenge, not nginx's HTML page.
    let detail = assert_keygate_refusal(
        &request(addr, "GET", "/v1/devboxes/dbx_42", &[], None),
        401,
        r#"Bearer error="invalid_token""#,
    );
    assert!(detail.contains("Authorization"), "{detail}");
    let reader = mint_token(&dir.db(), &["--scope", "devboxes:read"]);
    keygate.wait_accepted(&reader);
    let auth = format!("Bearer {reader}");
    let r = request(
        addr,
        "POST",
        "/v1/devboxes/dbx_42/execute?x=1",
        &[("Authorization", &auth)],
        Some(b"{}"),
    );
    let detail = assert_keygate_refusal(&r, 403, r#"Bearer error="insufficient_scope""#);
    assert!(detail.contains("devboxes"), "{detail}");

    // Client-sent forward-auth headers change no decision.
    check_forged_forwarded_headers(addr, &keygate, &dir.db());

    // A key's limits: nginx passes only 2xx, 401 and 403 on from
    // auth_request, so keygate answers its 429 as a 403 that names it, and
    // the shipped config answers the client's 429 from its fields, without
    // asking again (which would spend again).
    let body = r#"{"scopes":[{"resource_type":"RESOURCE_TYPE_DEVBOXES","access_level":"ACCESS_LEVEL_READ"}],"credits":{"remaining":1},"rate_limit":{"limit":100,"period_ms":60000}}"#;
    let created = keygate.authed("POST", "/v1/restricted_keys", keygate.token(), Some(body));
    assert_eq!(created.status, 200, "{}", created.text());
    let limited = format!("Bearer {}", created.json()["key_secret"].as_str().unwrap());
    let r = request(
        addr,
        "GET",
        "/v1/devboxes/dbx_42",
        &[("Authorization", &limited)],
        None,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    for _ in 0..2 {
        let r = request(
            addr,
            "GET",
            "/v1/devboxes/dbx_42",
            &[("Authorization", &limited)],
            None,
        );
        assert_eq!(r.status, 429, "{}", r.text());
        assert_eq!(r.header("content-type"), Some("application/problem+json"));
        let v = r.json();
        assert_eq!(v["type"], "urn:keygate:problem:credits-exhausted");
        assert_eq!(v["status"], 429);
        assert_eq!(v["detail"], "credits exhausted");
        assert_eq!(r.header("retry-after"), None);
        assert_eq!(r.header("keygate-credits-remaining"), Some("0"));
        assert!(r.header("ratelimit").unwrap().starts_with(r#""rate";r="#));
    }
    // A client cannot ask for anything but a refusal's status: the header
    // on a direct request only turns a 429 into a 403.
    let direct = keygate.req(
        "GET",
        "/v1/authorize?resource_type=RESOURCE_TYPE_DEVBOXES&access_level=ACCESS_LEVEL_READ",
        &[
            ("Authorization", &limited),
            ("X-Keygate-Refusal-Status", "200"),
        ],
        None,
    );
    assert_eq!(direct.status, 429);
    let direct = keygate.req(
        "GET",
        "/v1/authorize?resource_type=RESOURCE_TYPE_DEVBOXES&access_level=ACCESS_LEVEL_READ",
        &[
            ("Authorization", &limited),
            ("X-Keygate-Refusal-Status", "403"),
        ],
        None,
    );
    assert_eq!(direct.status, 403);
    assert_eq!(direct.header("x-keygate-status"), Some("429"));

    // The fixed-scope form still works next to the table.
    let r = keygate.authorize(keygate.token(), "DEVBOXES", "WRITE");
    assert_eq!(r.status, 204, "{}", r.text());
    assert_eq!(r.header("x-keygate-key-id"), Some(&keygate.token()[3..19]));
}

/// The README's fixed-scope config (`examples/nginx/keygate-fixed-scope.conf`)
/// next to a keygate that also has a route table: the location's query
/// decides, and no forward-auth header a client sends (either family) turns
/// the table on (`/healthz` is public there) or changes an answer.
#[test]
fn nginx_fixed_scope_config() {
    let Some(nginx) = nginx_or_skip() else {
        return;
    };
    let dir = TempDir::new("nginx-fixed");
    let table = write_table(&dir);
    let keygate = Server::start(&dir.db(), &["--routes", table.to_str().unwrap()]);
    let upstream = start_upstream();
    let (_nginx, addr) = run_shipped(&nginx, &dir, "keygate-fixed-scope.conf", &keygate, upstream);
    let writer = mint_token(&dir.db(), &["--scope", "devboxes:write"]);
    let reader = mint_token(&dir.db(), &["--scope", "devboxes:read"]);
    keygate.wait_accepted(&writer);
    keygate.wait_accepted(&reader);
    let forged: Vec<Vec<(&str, &str)>> = vec![
        vec![],
        vec![
            ("X-Forwarded-Method", "GET"),
            ("X-Forwarded-Uri", "/healthz"),
        ],
        vec![("X-Original-Method", "GET"), ("X-Original-URI", "/healthz")],
        vec![("X-Forwarded-Uri", "/healthz")],
        vec![("X-Original-URI", "/healthz")],
        vec![
            ("X-Forwarded-Method", "GET"),
            ("X-Forwarded-Uri", "/healthz"),
            ("X-Original-Method", "GET"),
            ("X-Original-URI", "/healthz"),
        ],
    ];
    for extra in &forged {
        let with_key = |token: &str| {
            let auth = format!("Bearer {token}");
            let mut headers = vec![("Authorization", auth.as_str())];
            headers.extend_from_slice(extra);
            request(addr, "POST", "/devboxes/dbx_1/execute", &headers, Some(b""))
        };
        let r = with_key(&writer);
        assert_eq!(r.status, 200, "{extra:?}: {}", r.text());
        assert_eq!(
            r.text(),
            format!(
                "upstream POST /devboxes/dbx_1/execute for {}",
                &writer[3..19]
            )
        );
        let detail = assert_keygate_refusal(
            &with_key(&reader),
            403,
            r#"Bearer error="insufficient_scope""#,
        );
        assert!(detail.contains("devboxes"), "{extra:?}: {detail}");
        let r = request(addr, "POST", "/devboxes/dbx_1/execute", extra, Some(b""));
        let detail = assert_keygate_refusal(&r, 401, r#"Bearer error="invalid_token""#);
        assert!(detail.contains("Authorization"), "{extra:?}: {detail}");
    }
    // A limit refusal reaches the client as a 429 (not nginx's 500).
    let body = r#"{"scopes":[{"resource_type":"RESOURCE_TYPE_DEVBOXES","access_level":"ACCESS_LEVEL_WRITE"}],"credits":{"remaining":0}}"#;
    let created = keygate.authed("POST", "/v1/restricted_keys", keygate.token(), Some(body));
    assert_eq!(created.status, 200, "{}", created.text());
    let spent = format!("Bearer {}", created.json()["key_secret"].as_str().unwrap());
    let r = request(
        addr,
        "GET",
        "/devboxes/x",
        &[("Authorization", &spent)],
        None,
    );
    assert_eq!(r.status, 429, "{}", r.text());
    assert_eq!(r.json()["type"], "urn:keygate:problem:credits-exhausted");
}

/// Three instances on one real PostgreSQL for the HA config, each with a
/// metrics listener (to count the decisions each made); the admin token.
fn ha_instances(db: &pg::TestPg, dir: &TempDir) -> (Vec<Server>, String) {
    let pepper = dir.0.join("pepper");
    let url = db.url();
    let serve = || {
        Server::start(
            Path::new(&url),
            &[
                "--pepper-file",
                pepper.to_str().unwrap(),
                "--poll-ms",
                "20",
                "--metrics-listen",
                "127.0.0.1:0",
            ],
        )
    };
    let first = serve();
    let admin = take_bootstrap_file(&pepper).unwrap();
    (vec![first, serve(), serve()], admin)
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

const AUTHORIZE: &str =
    "/v1/authorize?resource_type=RESOURCE_TYPE_DEVBOXES&access_level=ACCESS_LEVEL_READ";

fn authorize_via(addr: SocketAddr, token: &str) -> u16 {
    request(
        addr,
        "GET",
        AUTHORIZE,
        &[("Authorization", &bearer(token))],
        None,
    )
    .status
}

/// The `/v1/authorize` decisions `server` made, by its metrics.
fn decisions_made(server: &Server) -> u64 {
    let text = server.scrape();
    text.lines()
        .filter(|l| l.starts_with("keygate_authorize_decisions_total{"))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
        .sum()
}

/// The operator's guide's load balancer (`examples/nginx/keygate-ha.conf`):
/// nginx in front of three instances on one real PostgreSQL. A key created
/// through it is accepted by every instance, a revocation through it is
/// refused by every instance, every instance takes a share of the
/// requests, strangers' large bodies take no instance out, and with one
/// instance stopped every request but a decision already sent to it still
/// succeeds.
#[test]
fn nginx_balances_three_instances_on_postgresql() {
    let Some(nginx) = nginx_or_skip() else {
        return;
    };
    let db = pg::TestPg::start();
    let dir = TempDir::new("nginx-ha");
    let (mut instances, admin) = ha_instances(&db, &dir);
    let (_nginx, addr) = run_config(
        &nginx,
        &dir,
        "keygate-ha.conf",
        &[
            ("127.0.0.1:8081", instances[0].addr.to_string()),
            ("127.0.0.1:8082", instances[1].addr.to_string()),
            ("127.0.0.1:8083", instances[2].addr.to_string()),
        ],
    );
    let json = ("Content-Type", "application/json");

    // Strangers' bodies, large and not so large, without a key: refused,
    // and no instance is taken out for them.
    let big = vec![b'x'; 1 << 20];
    for path in ["/v1/keys/revoke", "/v1/apikeys", "/v1/restricted_keys"] {
        for _ in 0..4 {
            assert_eq!(request(addr, "POST", path, &[json], Some(&big)).status, 413);
        }
    }
    let just_under = vec![b' '; 60 * 1024];
    for _ in 0..12 {
        let r = request(addr, "POST", "/v1/apikeys", &[json], Some(&just_under));
        assert_eq!(r.status, 401, "{}", r.text());
    }
    let small = br#"{"token":"not a token"}"#.repeat(60);
    assert_eq!(
        request(addr, "POST", "/v1/keys/revoke", &[json], Some(&small)).status,
        413
    );
    for _ in 0..30 {
        assert_eq!(request(addr, "GET", "/healthz", &[], None).status, 200);
    }

    let body = br#"{"name":"ci","scopes":[{"resource_type":"RESOURCE_TYPE_DEVBOXES","access_level":"ACCESS_LEVEL_READ"}]}"#;
    let admin_auth = bearer(&admin);
    let create = || {
        request(
            addr,
            "POST",
            "/v1/restricted_keys",
            &[("Authorization", &admin_auth), json],
            Some(body),
        )
    };
    let created = create();
    assert_eq!(created.status, 200, "{}", created.text());
    let v = created.json();
    let (id, token) = (
        v["id"].as_str().unwrap().to_owned(),
        v["key_secret"].as_str().unwrap().to_owned(),
    );
    // Every instance accepts it, then so does every request through nginx.
    for instance in &instances {
        instance.wait_accepted(&token);
    }
    let made: Vec<u64> = instances.iter().map(decisions_made).collect();
    for _ in 0..30 {
        assert_eq!(authorize_via(addr, &token), 204);
    }
    // Each instance took a share, and each request was decided once.
    let shares: Vec<u64> = instances
        .iter()
        .zip(&made)
        .map(|(i, before)| decisions_made(i) - before)
        .collect();
    assert!(shares.iter().all(|&n| n >= 3), "{shares:?}");
    assert_eq!(shares.iter().sum::<u64>(), 30, "{shares:?}");

    let revoked = request(
        addr,
        "DELETE",
        &format!("/v1/keys/{id}"),
        &[("Authorization", &admin_auth)],
        None,
    );
    assert_eq!(revoked.status, 204, "{}", revoked.text());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    for instance in &instances {
        while instance.authorize(&token, "DEVBOXES", "READ").status != 401 {
            assert!(
                std::time::Instant::now() < deadline,
                "{} kept the key",
                instance.addr
            );
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }
    for _ in 0..30 {
        assert_eq!(authorize_via(addr, &token), 401);
    }

    // One instance stopped: a decision sent its way fails (502, never made
    // twice) until nginx leaves it out; every other request succeeds.
    instances[1].child.kill().unwrap();
    instances[1].child.wait().unwrap();
    let statuses: Vec<u16> = (0..30).map(|_| authorize_via(addr, &admin)).collect();
    let failed = statuses.iter().filter(|&&s| s != 204).count();
    assert!(
        failed <= 3 && statuses.iter().all(|&s| s == 204 || s == 502),
        "{statuses:?}"
    );
    assert!(
        statuses[statuses.len() - 10..].iter().all(|&s| s == 204),
        "{statuses:?}"
    );
    for _ in 0..5 {
        assert_eq!(create().status, 200);
        assert_eq!(
            request(
                addr,
                "GET",
                "/v1/keys?limit=1",
                &[("Authorization", &admin_auth)],
                None
            )
            .status,
            200
        );
    }
}

/// An instance that decides and then fails before its answer reaches nginx
/// (here a proxy that forwards the request, then closes without passing
/// the answer on): the client gets a 502, and the decision, which may have
/// spent credits, is not made again on another instance.
#[test]
fn nginx_never_makes_a_decision_twice() {
    let Some(nginx) = nginx_or_skip() else {
        return;
    };
    let db = pg::TestPg::start();
    let dir = TempDir::new("nginx-ha-once");
    let (instances, admin) = ha_instances(&db, &dir);
    let (dropper, dropped) = start_dropper(instances[0].addr);
    let (_nginx, addr) = run_config(
        &nginx,
        &dir,
        "keygate-ha.conf",
        &[
            ("127.0.0.1:8081", format!("127.0.0.1:{dropper}")),
            ("127.0.0.1:8082", instances[1].addr.to_string()),
            ("127.0.0.1:8083", instances[2].addr.to_string()),
        ],
    );
    let before: u64 = instances.iter().map(decisions_made).sum();
    let statuses: Vec<u16> = (0..9).map(|_| authorize_via(addr, &admin)).collect();
    assert!(
        dropped.load(std::sync::atomic::Ordering::SeqCst) >= 1,
        "{statuses:?}"
    );
    assert!(
        statuses.iter().all(|&s| s == 204 || s == 502),
        "{statuses:?}"
    );
    let after: u64 = instances.iter().map(decisions_made).sum();
    assert_eq!(after - before, 9, "decisions for 9 requests: {statuses:?}");
}

/// A TCP proxy to `target` that passes each request head on, lets the
/// target answer, then closes both sides without passing the answer back.
fn start_dropper(target: SocketAddr) -> (u16, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = std::sync::Arc::clone(&seen);
    std::thread::spawn(move || {
        for client in listener.incoming() {
            let Ok(mut client) = client else { continue };
            let counter = std::sync::Arc::clone(&counter);
            std::thread::spawn(move || {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    match client.read(&mut byte) {
                        Ok(1) => head.push(byte[0]),
                        _ => return,
                    }
                }
                let mut upstream = std::net::TcpStream::connect(target).unwrap();
                upstream.write_all(&head).unwrap();
                std::thread::sleep(std::time::Duration::from_millis(200));
                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            });
        }
    });
    (port, seen)
}
