//! `serve --metrics-listen`: `GET /metrics` on a listener of its own counts
//! what a real server did, over real HTTP/1.1 and h2c connections.
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
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::*;

/// The value of the series `series` (name and labels, as printed) in an
/// exposition `text`; 0 when absent.
fn value(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .map(|v| v.trim().parse().unwrap())
        .unwrap_or(0.0)
}

/// Scrapes until `series` reaches `at_least` (2 s at most).
fn wait_for(server: &Server, series: &str, at_least: f64) -> String {
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let text = server.scrape();
        if value(&text, series) >= at_least {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "`{series}` stayed below {at_least}:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn key_id(token: &str) -> &str {
    &token[3..19]
}

fn decisions(outcome: &str) -> String {
    format!("keygate_authorize_decisions_total{{outcome=\"{outcome}\"}}")
}

fn requests(route: &str, class: &str) -> String {
    format!("keygate_http_requests_total{{route=\"{route}\",status_class=\"{class}\"}}")
}

#[test]
fn metrics_are_off_by_default_and_never_on_the_api_port() {
    let dir = TempDir::new("metrics-off");
    let server = Server::start(&dir.db(), &[]);
    assert_eq!(server.req("GET", "/metrics", &[], None).status, 404);
    assert!(!server.log_text().contains("metrics listening"));
    // On, the API port still has no /metrics.
    let dir = TempDir::new("metrics-on");
    let server = Server::start(&dir.db(), &["--metrics-listen", "127.0.0.1:0"]);
    assert_eq!(server.req("GET", "/metrics", &[], None).status, 404);
    assert!(server.metrics_addr() != server.addr);
    assert!(server.scrape().contains("keygate_build_info"));
}

#[test]
fn per_key_series_need_their_flag() {
    let dir = TempDir::new("metrics-per-key-flag");
    let (ok, _, err) = cli(&dir.db(), &["serve"], &["--metrics-per-key"]);
    assert!(!ok);
    assert!(err.contains("--metrics-listen"), "{err}");
}

#[test]
fn decisions_routes_keys_and_the_follower_count_what_happened() {
    let dir = TempDir::new("metrics-count");
    let db = dir.db();
    let admin = mint_token(&db, &["--name", "admin"]);
    let reader = mint_token(&db, &["--name", "reader", "--scope", "devboxes:read"]);
    let limited = mint_token(&db, &["--name", "limited", "--scope", "devboxes:read"]);
    let id = key_id(&limited).to_owned();
    let (ok, _, err) = cli(&db, &["limit"], &[&id, "--rate", "1/1h"]);
    assert!(ok, "{err}");
    let server = Server::start(&db, &["--metrics-listen", "127.0.0.1:0", "--poll-ms", "10"]);
    let before = server.scrape();
    assert_eq!(value(&before, "keygate_keys"), 3.0, "{before}");
    assert!(before
        .contains(r#"keygate_build_info{version="0.2.0",store="sqlite",attenuate="false"} 1"#));

    for _ in 0..3 {
        assert_eq!(server.authorize(&reader, "DEVBOXES", "READ").status, 204);
    }
    let last = if reader.ends_with('x') { 'y' } else { 'x' };
    let wrong = format!("{}{last}", &reader[..reader.len() - 1]);
    assert_eq!(server.authorize(&wrong, "DEVBOXES", "READ").status, 401);
    assert_eq!(
        server
            .req(
                "GET",
                "/v1/authorize?resource_type=RESOURCE_TYPE_DEVBOXES&access_level=ACCESS_LEVEL_READ",
                &[],
                None
            )
            .status,
        401
    );
    assert_eq!(server.authorize(&reader, "ACCOUNT", "WRITE").status, 403);
    assert_eq!(server.authorize(&reader, "NOPE", "READ").status, 400);
    assert_eq!(server.authorize(&limited, "DEVBOXES", "READ").status, 204);
    assert_eq!(server.authorize(&limited, "DEVBOXES", "READ").status, 429);
    assert_eq!(server.req("GET", "/nowhere", &[], None).status, 404);
    let path = format!("/v1/keys/{id}");
    assert_eq!(server.authed("GET", &path, &admin, None).status, 200);
    assert_eq!(server.req("GET", "/healthz", &[], None).status, 200);

    let after = server.scrape();
    let delta = |series: &str| value(&after, series) - value(&before, series);
    assert_eq!(delta(&decisions("allowed")), 4.0, "{after}");
    assert_eq!(delta(&decisions("unauthorized")), 2.0);
    assert_eq!(delta(&decisions("forbidden")), 1.0);
    assert_eq!(delta(&decisions("bad_request")), 1.0);
    assert_eq!(delta(&decisions("limited")), 1.0);
    assert_eq!(delta(&decisions("other")), 0.0);
    // Every decision is timed, in the buckets and the count.
    assert_eq!(delta("keygate_authorize_duration_seconds_count"), 9.0);
    assert_eq!(
        delta(r#"keygate_authorize_duration_seconds_bucket{le="+Inf"}"#),
        9.0
    );
    assert!(value(&after, "keygate_authorize_duration_seconds_sum") > 0.0);
    assert_eq!(delta(&requests("/v1/authorize", "2xx")), 4.0);
    assert_eq!(delta(&requests("/v1/authorize", "4xx")), 5.0);
    assert_eq!(delta(&requests("unmatched", "4xx")), 1.0);
    assert_eq!(delta(&requests("/v1/keys/{id}", "2xx")), 1.0);
    assert_eq!(delta(&requests("/healthz", "2xx")), 1.0);
    // The scrapes themselves are on the other listener.
    assert_eq!(delta(&requests("unmatched", "2xx")), 0.0);

    // A key minted by the CLI: the follower applies it, and its seq is the
    // store's.
    let third = mint_token(&db, &["--name", "third"]);
    server.wait_accepted(&third);
    let text = server.scrape();
    assert_eq!(value(&text, "keygate_keys"), 4.0, "{text}");
    let applied = value(&text, "keygate_follower_applied_seq");
    assert!(applied >= 4.0, "{text}");
    assert_eq!(value(&text, "keygate_follower_store_seq"), applied);
    assert_eq!(value(&text, "keygate_follower_lag_seq"), 0.0);
    assert!(value(&text, "keygate_follower_caught_up_age_seconds") < 1.0);
    assert_eq!(value(&text, "keygate_store_up"), 1.0);

    // Revoked: out of memory.
    let revoke = format!("/v1/keys/{}", key_id(&third));
    assert_eq!(server.authed("DELETE", &revoke, &admin, None).status, 204);
    assert_eq!(value(&server.scrape(), "keygate_keys"), 3.0);

    // No secret, and no token, anywhere in the exposition.
    let text = server.scrape();
    for token in [&admin, &reader, &limited, &third] {
        assert!(!text.contains(&token[19..]), "a secret in /metrics");
    }
    assert_eq!(keygate::redact_tokens(&text), text);
}

#[test]
fn connections_closed_by_timeout_and_abandoned_requests_are_counted() {
    let dir = TempDir::new("metrics-conns");
    let server = Server::start(
        &dir.db(),
        &[
            "--metrics-listen",
            "127.0.0.1:0",
            "--header-read-timeout",
            "300ms",
            "--body-read-timeout",
            "5s",
        ],
    );
    // Silent: closed by the header read timeout.
    let mut silent = TcpStream::connect(server.addr).unwrap();
    silent
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    assert_eq!(silent.read(&mut [0u8; 16]).unwrap_or(0), 0);
    let text = wait_for(
        &server,
        r#"keygate_connections_closed_total{reason="header_read_timeout"}"#,
        1.0,
    );
    assert_eq!(value(&text, "keygate_connections_open"), 0.0, "{text}");

    // HTTP/2: a stream reset by the client (RST_STREAM) while its handler
    // waits for the store (held locked by another writer here).
    let lock = rusqlite::Connection::open(dir.db()).unwrap();
    lock.execute_batch("BEGIN EXCLUSIVE").unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let addr = server.addr;
    let token = server.token().to_owned();
    rt.block_on(async move {
        let mut client = h2c::connect(addr).await;
        let request = http::Request::post(format!("http://{addr}/v1/apikeys"))
            .header("authorization", format!("Bearer {token}"))
            .header("content-type", "application/json")
            .body(())
            .unwrap();
        let (_response, mut body) = client.send_request(request, false).unwrap();
        body.send_data(bytes::Bytes::from_static(b"{}"), true)
            .unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        body.send_reset(h2::Reason::CANCEL);
        tokio::time::sleep(Duration::from_millis(100)).await;
    });
    let text = wait_for(
        &server,
        r#"keygate_requests_abandoned_total{protocol="h2"}"#,
        1.0,
    );
    assert_eq!(
        value(&text, r#"keygate_requests_abandoned_total{protocol="h1"}"#),
        0.0
    );
    drop(lock);
}

#[test]
fn per_key_series_follow_the_keys_in_memory() {
    let dir = TempDir::new("metrics-per-key");
    let db = dir.db();
    let admin = mint_token(&db, &["--name", "admin"]);
    let token = mint_token(&db, &["--name", "a", "--scope", "devboxes:read"]);
    let id = key_id(&token).to_owned();
    let server = Server::start(
        &db,
        &["--metrics-listen", "127.0.0.1:0", "--metrics-per-key"],
    );
    assert_eq!(server.authorize(&token, "DEVBOXES", "READ").status, 204);
    assert_eq!(server.authorize(&token, "ACCOUNT", "READ").status, 403);
    let series = |outcome: &str| {
        format!("keygate_key_authorize_decisions_total{{key_id=\"{id}\",outcome=\"{outcome}\"}}")
    };
    let text = server.scrape();
    assert_eq!(value(&text, &series("allowed")), 1.0, "{text}");
    assert_eq!(value(&text, &series("forbidden")), 1.0);
    // Revoked: the key's series go.
    let path = format!("/v1/keys/{id}");
    assert_eq!(server.authed("DELETE", &path, &admin, None).status, 204);
    assert!(!server.scrape().contains(&id));

    // Without the flag, no per-key series.
    let dir = TempDir::new("metrics-no-per-key");
    let server = Server::start(&dir.db(), &["--metrics-listen", "127.0.0.1:0"]);
    assert_eq!(
        server.authorize(server.token(), "DEVBOXES", "READ").status,
        204
    );
    assert!(!server.scrape().contains("keygate_key_authorize_decisions"));
}

#[test]
fn route_reloads_and_flushes_are_counted() {
    let dir = TempDir::new("metrics-reload");
    let routes = dir.0.join("routes");
    std::fs::write(&routes, "GET /v1/devboxes/** devboxes:read\n").unwrap();
    let server = Server::start(
        &dir.db(),
        &[
            "--metrics-listen",
            "127.0.0.1:0",
            "--routes",
            routes.to_str().unwrap(),
            "--last-used-flush-ms",
            "100",
        ],
    );
    std::fs::write(&routes, "GET /v1/devboxes/** devboxes:nope\n").unwrap();
    server.signal("HUP");
    wait_for(
        &server,
        r#"keygate_route_reloads_total{result="error"}"#,
        1.0,
    );
    std::fs::write(&routes, "GET /v1/objects/** objects:read\n").unwrap();
    server.signal("HUP");
    let text = wait_for(&server, r#"keygate_route_reloads_total{result="ok"}"#, 1.0);
    assert_eq!(
        value(&text, r#"keygate_route_reloads_total{result="error"}"#),
        1.0
    );

    // A use, then its last-used write.
    assert_eq!(
        server.authorize(server.token(), "DEVBOXES", "READ").status,
        204
    );
    let text = wait_for(&server, r#"keygate_flushes_total{kind="last_used"}"#, 1.0);
    assert!(
        value(
            &text,
            r#"keygate_flush_duration_seconds_count{kind="last_used"}"#
        ) >= 1.0,
        "{text}"
    );
    assert_eq!(
        value(&text, r#"keygate_flush_failures_total{kind="last_used"}"#),
        0.0
    );
    assert_eq!(
        value(&text, r#"keygate_store_errors_total{source="flush"}"#),
        0.0
    );
}

/// The metrics listener has the API's timeouts and drains with it: a client
/// that sends half a request head is closed after the header read timeout,
/// and holds no shutdown open; its connections are not the API's.
#[test]
fn the_metrics_listener_times_out_slow_clients_and_holds_no_shutdown_open() {
    let dir = TempDir::new("metrics-slow");
    let mut server = Server::start(
        &dir.db(),
        &[
            "--metrics-listen",
            "127.0.0.1:0",
            "--header-read-timeout",
            "500ms",
        ],
    );
    let mut half = TcpStream::connect(server.metrics_addr()).unwrap();
    half.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    half.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let started = Instant::now();
    assert_eq!(half.read(&mut [0u8; 64]).unwrap_or(0), 0);
    assert!(started.elapsed() < Duration::from_secs(3));
    // Not counted as the API's.
    let text = server.scrape();
    assert_eq!(
        value(
            &text,
            r#"keygate_connections_closed_total{reason="header_read_timeout"}"#
        ),
        0.0,
        "{text}"
    );
    // Another half head, then SIGTERM: the process ends, not waiting on it.
    let mut held = TcpStream::connect(server.metrics_addr()).unwrap();
    held.write_all(b"GET /metrics HTTP/1.1\r\n").unwrap();
    std::thread::sleep(Duration::from_millis(50));
    server.sigterm();
    let status = server.wait_exit(Duration::from_secs(10));
    assert!(status.success(), "{status:?}");
}
