//! HTTP/1.1 and HTTP/2 cleartext (prior knowledge) side by side on one
//! port: every route answers alike, with a real h2 client; and a client
//! that opens and resets streams as fast as it can ("rapid reset") does not
//! stop the server from answering others.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;
#[path = "common/h2c.rs"]
mod h2c;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use h2c::{Client, Proto};

const DEVBOXES_READ: &str =
    r#"{"scopes":[{"resource_type":"RESOURCE_TYPE_DEVBOXES","access_level":"ACCESS_LEVEL_READ"}]}"#;

/// What a response looks like, minus what differs by design (fresh ids and
/// secrets): status, the headers a client acts on, and the problem's body
/// (with the ids of keys minted on this run replaced).
fn shape(label: &str, r: &Resp, minted: &[&str]) -> String {
    let body = if r.header("content-type") == Some("application/problem+json") {
        minted
            .iter()
            .fold(r.text(), |text, id| text.replace(id, "<minted id>"))
    } else {
        format!("{} bytes", if r.body.is_empty() { 0 } else { 1 })
    };
    format!(
        "{label}: {} type={:?} www-authenticate={:?} allow={:?} kind={:?} id={} body={body}",
        r.status,
        r.header("content-type"),
        r.header("www-authenticate"),
        r.header("allow"),
        r.header("x-keygate-key-kind"),
        r.header("x-keygate-key-id").is_some(),
    )
}

/// Every route's statuses, problem bodies, challenges and headers, on one
/// protocol. Returns the transcript of response shapes.
fn conformance(c: &mut Client, admin: &str) -> Vec<String> {
    let mut t = Vec::new();
    let proto = c.proto;

    // Health, OpenAPI, 404, 405.
    let r = c.req("GET", "/healthz", &[], None);
    assert_eq!(r.status, 200, "{proto:?}");
    assert_eq!(r.json()["status"], "ok");
    t.push(shape("healthz", &r, &[]));
    let r = c.req("GET", "/openapi.yaml", &[], None);
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("application/yaml"));
    assert!(r.text().starts_with("openapi: "), "{proto:?}");
    t.push(shape("openapi", &r, &[]));
    let r = c.req("GET", "/nope", &[], None);
    r.problem(404);
    t.push(shape("404", &r, &[]));
    let r = c.req("DELETE", "/v1/apikeys", &[], None);
    r.problem(405);
    assert_eq!(r.header("allow"), Some("POST"));
    t.push(shape("405", &r, &[]));

    // Minting: 200 with exactly the spec's fields and keygate's two extensions.
    let r = c.authed("POST", "/v1/apikeys", admin, None);
    assert_eq!(r.status, 200, "{proto:?} {}", r.text());
    assert_eq!(r.header("content-type"), Some("application/json"));
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
    t.push(shape("apikeys", &r, &[]));
    let expires = now_ms() + 3_600_000;
    let r = c.authed(
        "POST",
        "/v1/apikeys",
        admin,
        Some(&format!(r#"{{"name":"exp","expires_at_ms":{expires}}}"#)),
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["expires_at_ms"], expires);
    t.push(shape("apikeys expiring", &r, &[]));
    let r = c.authed("POST", "/v1/restricted_keys", admin, Some(DEVBOXES_READ));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        fields(&r.json()),
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
    let reader = r.json()["key_secret"].as_str().unwrap().to_owned();
    t.push(shape("restricted_keys", &r, &[&reader[3..19]]));

    // 401 with the invalid_token challenge; 403 with insufficient_scope.
    for (label, auth) in [
        ("401 none", None),
        (
            "401 basic",
            Some("Basic YWxhZGRpbjpvcGVuc2VzYW1l".to_owned()),
        ),
        ("401 malformed", Some("Bearer ak_short".to_owned())),
        ("401 changed", Some(format!("Bearer {}x", admin))),
        (
            "401 oversized",
            Some(format!("Bearer ak_{}", "A".repeat(100 * 1024))),
        ),
    ] {
        let headers: Vec<(&str, &str)> = auth
            .as_deref()
            .map(|a| vec![("Authorization", a)])
            .unwrap_or_default();
        for path in [
            "/v1/authorize?resource_type=RESOURCE_TYPE_DEVBOXES&access_level=ACCESS_LEVEL_READ",
            "/v1/apikeys",
        ] {
            let method = if path == "/v1/apikeys" { "POST" } else { "GET" };
            let r = c.req(method, path, &headers, None);
            r.problem(401);
            assert_eq!(
                r.header("www-authenticate"),
                Some(r#"Bearer error="invalid_token""#),
                "{proto:?} {label}"
            );
            t.push(shape(label, &r, &[&reader[3..19]]));
        }
    }
    for (path, body) in [
        ("/v1/apikeys", None),
        ("/v1/restricted_keys", Some(DEVBOXES_READ)),
    ] {
        let r = c.authed("POST", path, &reader, body);
        let d = r.problem(403);
        assert!(d.contains("account:write"), "{d}");
        assert_eq!(
            r.header("www-authenticate"),
            Some(r#"Bearer error="insufficient_scope""#)
        );
        t.push(shape("403 mint", &r, &[&reader[3..19]]));
    }

    // /v1/authorize: 204 with the key's id and kind, 403, 400.
    let r = c.authorize(admin, "ACCOUNT", "WRITE");
    assert_eq!(r.status, 204);
    assert_eq!(r.header("x-keygate-key-id"), Some(&admin[3..19]));
    assert_eq!(r.header("x-keygate-key-kind"), Some("standard"));
    assert!(r.body.is_empty());
    t.push(shape("authorize standard", &r, &[&reader[3..19]]));
    let r = c.authorize(&reader, "DEVBOXES", "READ");
    assert_eq!(r.status, 204);
    assert_eq!(r.header("x-keygate-key-id"), Some(&reader[3..19]));
    assert_eq!(r.header("x-keygate-key-kind"), Some("restricted"));
    t.push(shape("authorize restricted", &r, &[&reader[3..19]]));
    let r = c.authorize(&reader, "DEVBOXES", "WRITE");
    let d = r.problem(403);
    assert!(d.contains("devboxes:write"), "{d}");
    assert_eq!(
        r.header("www-authenticate"),
        Some(r#"Bearer error="insufficient_scope""#)
    );
    t.push(shape("authorize 403", &r, &[&reader[3..19]]));
    let r = c.authed(
        "GET",
        "/v1/authorize?resource_type=RESOURCE_TYPE_DEVBOXES",
        admin,
        None,
    );
    r.problem(400);
    t.push(shape("authorize 400", &r, &[&reader[3..19]]));

    // 400s on the create endpoints.
    for body in [
        "{}",
        r#"{"scopes":[]}"#,
        r#"{"scopes":[{"resource_type":"RESOURCE_TYPE_AGENTS","access_level":"ACCESS_LEVEL_NONE"}]}"#,
        "{",
    ] {
        let r = c.authed("POST", "/v1/restricted_keys", admin, Some(body));
        r.problem(400);
        t.push(shape("restricted 400", &r, &[&reader[3..19]]));
    }
    let r = c.authed("POST", "/v1/apikeys", admin, Some(r#"{"nam":"x"}"#));
    r.problem(400);
    t.push(shape("apikeys 400", &r, &[&reader[3..19]]));

    // The 64 KiB body limit: over it 413, exactly at it read (and refused
    // for its too long name).
    let big = format!(r#"{{"name":"{}"}}"#, "a".repeat(70 * 1024));
    let r = c.authed("POST", "/v1/apikeys", admin, Some(&big));
    r.problem(413);
    t.push(shape("413", &r, &[&reader[3..19]]));
    let edge = format!(r#"{{"name":"{}"}}"#, "a".repeat(64 * 1024 - 11));
    assert_eq!(edge.len(), 64 * 1024);
    let r = c.authed("POST", "/v1/apikeys", admin, Some(&edge));
    let d = r.problem(400);
    assert!(d.contains("limit is 256"), "{d}");
    t.push(shape("64 KiB", &r, &[&reader[3..19]]));
    t
}

#[test]
fn every_route_answers_alike_over_http1_and_h2c() {
    let dir = TempDir::new("h2-conformance");
    let admin = mint_token(&dir.db(), &["--name", "admin"]);
    let server = Server::start(&dir.db(), &[]);
    let mut h1 = Client::new(Proto::H1, server.addr);
    let mut h2 = Client::new(Proto::H2, server.addr);
    let over_h1 = conformance(&mut h1, &admin);
    let over_h2 = conformance(&mut h2, &admin);
    assert_eq!(over_h1.len(), over_h2.len());
    for (a, b) in over_h1.iter().zip(&over_h2) {
        assert_eq!(a, b, "HTTP/1.1 and h2c differ");
    }

    // h2 has no chunked encoding: a body in DATA frames without a
    // content-length is limited all the same.
    let auth = format!("Bearer {admin}");
    let chunks: Vec<Bytes> = (0..20).map(|_| Bytes::from(vec![b'a'; 4096])).collect();
    h2.req_streamed("POST", "/v1/apikeys", &[("Authorization", &auth)], chunks)
        .problem(413);
    let r = h2.req_streamed(
        "POST",
        "/v1/apikeys",
        &[("Authorization", &auth)],
        vec![
            Bytes::from_static(b"{\"name\":"),
            Bytes::from_static(b"\"split\"}"),
        ],
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["name"], "split");

    // A header list over the HTTP/2 limit: 431 from the h2 layer, and the
    // connection still serves the next stream.
    let r = h2.req(
        "GET",
        "/healthz",
        &[("x-big", &"b".repeat(200 * 1024))],
        None,
    );
    assert_eq!(r.status, 431);
    assert_eq!(h2.req("GET", "/healthz", &[], None).status, 200);
    // HTTP/1.1 heads are limited by hyper's read buffer (about 400 KiB).
    let big = "b".repeat(500 * 1024);
    assert_eq!(
        h1.req("GET", "/healthz", &[("x-big", &big)], None).status,
        431
    );

    // The log names both protocols' requests alike, and shows no secret.
    std::thread::sleep(Duration::from_millis(100));
    let log = server.log_text();
    assert!(
        log.matches("path=/v1/authorize status=204").count() >= 4,
        "{log}"
    );
    assert!(!log.contains(&admin[19..]), "secret in log");
}

/// `curl --http2-prior-knowledge`, an independent h2 client, where installed
/// (scripts/test.sh installs it).
#[test]
fn curl_http2_prior_knowledge() {
    let dir = TempDir::new("h2-curl");
    let admin = mint_token(&dir.db(), &[]);
    let server = Server::start(&dir.db(), &[]);
    let url = format!(
        "http://{}/v1/authorize?resource_type=RESOURCE_TYPE_DEVBOXES&access_level=ACCESS_LEVEL_READ",
        server.addr
    );
    for (auth, status) in [
        (format!("Authorization: Bearer {admin}"), "204"),
        (String::from("X-None: 1"), "401"),
    ] {
        let out = std::process::Command::new("curl")
            .args([
                "-sS",
                "--http2-prior-knowledge",
                "-o",
                "/dev/null",
                "-w",
                "%{http_version} %{http_code}",
                "-H",
            ])
            .arg(&auth)
            .arg(&url)
            .output()
            .expect("curl is installed (scripts/test.sh installs it)");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(String::from_utf8_lossy(&out.stdout), format!("2 {status}"));
    }
}

#[test]
fn sigterm_drains_an_in_flight_h2_stream() {
    let dir = TempDir::new("h2-sigterm");
    let admin = mint_token(&dir.db(), &[]);
    let mut server = Server::start(&dir.db(), &[]);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let addr = server.addr;
    let response = rt.block_on(async {
        let client = h2c::connect(addr).await;
        let request = http::Request::builder()
            .method("POST")
            .uri(format!("http://{addr}/v1/apikeys"))
            .header("authorization", format!("Bearer {admin}"))
            .body(())
            .unwrap();
        let mut ready = client.ready().await.unwrap();
        let (response, mut body) = ready.send_request(request, false).unwrap();
        body.send_data(Bytes::from_static(b"{\"name\":"), false)
            .unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        server.sigterm();
        tokio::time::sleep(Duration::from_millis(300)).await;
        body.send_data(Bytes::from_static(b"\"late\"}"), true)
            .unwrap();
        let response = response.await.unwrap();
        let status = response.status();
        let mut body = response.into_body();
        let mut bytes = Vec::new();
        while let Some(chunk) = body.data().await {
            bytes.extend_from_slice(&chunk.unwrap());
        }
        (status, bytes)
    });
    assert_eq!(response.0, 200, "{}", String::from_utf8_lossy(&response.1));
    let v: serde_json::Value = serde_json::from_slice(&response.1).unwrap();
    assert_eq!(v["name"], "late");
    assert_eq!(server.wait_exit(Duration::from_secs(10)).code(), Some(0));
}

/// Opens and resets streams as fast as it can on raw h2c connections, and
/// reconnects whenever the server hangs up. Returns (streams sent,
/// connections the server ended with GOAWAY).
fn rapid_reset(addr: SocketAddr, stop: &AtomicBool) -> (u64, u64) {
    let mut streams = 0u64;
    let mut goaways = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let Ok(mut tcp) = TcpStream::connect(addr) else {
            continue;
        };
        tcp.set_write_timeout(Some(Duration::from_secs(2))).unwrap();
        let mut reader = tcp.try_clone().unwrap();
        let saw_goaway = Arc::new(AtomicBool::new(false));
        let drain = {
            let saw_goaway = Arc::clone(&saw_goaway);
            std::thread::spawn(move || {
                // Reads frames until EOF; notes a GOAWAY.
                let mut head = [0u8; 9];
                while reader.read_exact(&mut head).is_ok() {
                    let len = (usize::from(head[0]) << 16)
                        | (usize::from(head[1]) << 8)
                        | usize::from(head[2]);
                    if head[3] == 0x7 {
                        saw_goaway.store(true, Ordering::Relaxed);
                    }
                    let mut payload = vec![0u8; len];
                    if reader.read_exact(&mut payload).is_err() {
                        break;
                    }
                }
            })
        };
        let mut hello = h2c::PREFACE.to_vec();
        hello.extend(h2c::settings());
        let mut ok = tcp.write_all(&hello).is_ok();
        let mut id = 1u32;
        let authority = addr.to_string();
        while ok && !stop.load(Ordering::Relaxed) && id < 2_000_000 {
            // 100 HEADERS + RST_STREAM pairs per write.
            let mut batch = Vec::with_capacity(100 * 64);
            for _ in 0..100 {
                batch.extend(h2c::get_headers(id, &authority, "/healthz"));
                batch.extend(h2c::rst_stream(id));
                id += 2;
            }
            ok = tcp.write_all(&batch).is_ok();
            if ok {
                streams += 100;
            }
        }
        let _ = tcp.shutdown(std::net::Shutdown::Both);
        drain.join().unwrap();
        if saw_goaway.load(Ordering::Relaxed) {
            goaways += 1;
        }
    }
    (streams, goaways)
}

#[test]
fn rapid_reset_does_not_stop_the_server_answering_others() {
    let dir = TempDir::new("h2-rapid-reset");
    let token = mint_token(&dir.db(), &["--scope", "devboxes:read"]);
    let server = Server::start(&dir.db(), &["--h2-max-concurrent-streams", "100"]);
    let addr = server.addr;
    let stop = Arc::new(AtomicBool::new(false));

    // Two attackers.
    let attackers: Vec<_> = (0..2)
        .map(|_| {
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || rapid_reset(addr, &stop))
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));

    // Meanwhile, well-behaved clients over both protocols, for 4 s.
    let worst = Arc::new(AtomicU64::new(0));
    let clients: Vec<_> = [Proto::H1, Proto::H2]
        .into_iter()
        .map(|proto| {
            let token = token.clone();
            let worst = Arc::clone(&worst);
            std::thread::spawn(move || {
                let mut c = Client::new(proto, addr);
                let until = Instant::now() + Duration::from_secs(4);
                let mut n = 0;
                while Instant::now() < until {
                    let t0 = Instant::now();
                    let r = c.authorize(&token, "DEVBOXES", "READ");
                    assert_eq!(r.status, 204, "{proto:?}: {}", r.text());
                    let r = c.req("GET", "/healthz", &[], None);
                    assert_eq!(r.status, 200, "{proto:?}");
                    worst.fetch_max(t0.elapsed().as_millis() as u64, Ordering::Relaxed);
                    n += 1;
                    std::thread::sleep(Duration::from_millis(20));
                }
                n
            })
        })
        .collect();
    let served: Vec<u32> = clients.into_iter().map(|h| h.join().unwrap()).collect();
    stop.store(true, Ordering::Relaxed);
    let (mut streams, mut goaways) = (0, 0);
    for a in attackers {
        let (s, g) = a.join().unwrap();
        streams += s;
        goaways += g;
    }
    let worst = worst.load(Ordering::Relaxed);
    eprintln!(
        "rapid reset: {streams} streams opened and reset, {goaways} connections ended with GOAWAY; \
         others served {served:?} request pairs, slowest pair {worst} ms"
    );
    // The attack ran at a real rate, and the server fended it off.
    assert!(streams >= 2_000, "the attack hardly ran: {streams} streams");
    assert!(goaways >= 1, "the server never sent GOAWAY to the attacker");
    // Others kept being answered, promptly.
    assert!(served.iter().all(|&n| n >= 20), "{served:?}");
    assert!(worst < 2_000, "a request pair took {worst} ms");
    // And the server is fine afterwards, over both protocols.
    for proto in [Proto::H1, Proto::H2] {
        let mut c = Client::new(proto, addr);
        assert_eq!(c.authorize(&token, "DEVBOXES", "READ").status, 204);
    }
}
