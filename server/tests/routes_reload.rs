//! `SIGHUP` reloads the route table while serving: under load, 50 reloads
//! (some of a table that does not parse) fail no request, each good table
//! takes effect, and a bad one leaves the table being served in place.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;

const READ: &str = "GET /v1/devboxes/** devboxes:read\n";
const WRITE: &str = "GET /v1/devboxes/** devboxes:write\n";
const BROKEN: &str = "GET /v1/devboxes/** devboxes:bogus\n";

fn forward(server_addr: std::net::SocketAddr, token: &str) -> Option<u16> {
    let auth = format!("Bearer {token}");
    let r = std::panic::catch_unwind(|| {
        request(
            server_addr,
            "GET",
            "/v1/authorize",
            &[
                ("Authorization", &auth),
                ("X-Original-Method", "GET"),
                ("X-Original-URI", "/v1/devboxes/x"),
            ],
            None,
        )
    });
    r.ok().map(|r| r.status)
}

fn hangup(server: &Server) {
    let ok = std::process::Command::new("kill")
        .args(["-HUP", &server.child.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -HUP failed");
}

/// Waits (up to 5 s) until the key's decision is `status`.
fn decision_becomes(server: &Server, token: &str, status: u16) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while forward(server.addr, token) != Some(status) {
        assert!(
            Instant::now() < deadline,
            "the decision never became {status}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn sighup_swaps_the_route_table_under_load_and_a_bad_one_changes_nothing() {
    let dir = TempDir::new("routes-reload");
    let file = dir.0.join("t.routes");
    std::fs::write(&file, READ).unwrap();
    let server = Server::start(&dir.db(), &["--routes", file.to_str().unwrap()]);
    let token = mint_token(&dir.db(), &["--scope", "devboxes:read"]);
    server.wait_accepted(&token);
    decision_becomes(&server, &token, 204);

    // Load: four clients, each request on its own connection.
    let stop = Arc::new(AtomicBool::new(false));
    let (sent, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let (stop, sent, failed) = (stop.clone(), sent.clone(), failed.clone());
            let (addr, token) = (server.addr, token.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    sent.fetch_add(1, Ordering::Relaxed);
                    // Either table's answer; nothing else.
                    if !matches!(forward(addr, &token), Some(204 | 403)) {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();

    let mut expected = 204;
    let mut bad = 0;
    for i in 0..50 {
        if i % 5 == 4 {
            std::fs::write(&file, BROKEN).unwrap();
            hangup(&server);
            bad += 1;
            // The error is logged; the table being served stays.
            let deadline = Instant::now() + Duration::from_secs(5);
            while server
                .log_text()
                .matches("route table not reloaded")
                .count()
                < bad
            {
                assert!(
                    Instant::now() < deadline,
                    "no error logged for the bad table"
                );
                std::thread::sleep(Duration::from_millis(5));
            }
            assert_eq!(forward(server.addr, &token), Some(expected));
        } else {
            let (text, status) = if expected == 204 {
                (WRITE, 403)
            } else {
                (READ, 204)
            };
            std::fs::write(&file, text).unwrap();
            hangup(&server);
            decision_becomes(&server, &token, status);
            expected = status;
        }
    }
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.join().unwrap();
    }
    let (sent, failed) = (sent.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    eprintln!("{sent} requests during 50 reloads ({bad} of a bad table), {failed} failed");
    assert_eq!(failed, 0);
    assert!(sent > 200, "{sent}");
    // The error names the line and the problem.
    let log = server.log_text();
    let line = log
        .lines()
        .find(|l| l.contains("route table not reloaded"))
        .unwrap();
    assert!(line.contains("line 1"), "{line}");
    assert!(line.contains("bogus"), "{line}");
    assert_eq!(log.matches("reloaded route table").count(), 50 - bad);
}

/// A `SIGHUP` sent the moment the server says it listens reloads the table:
/// the handler is in place before that line, so the signal never meets its
/// default action (ending the process).
#[test]
fn a_sighup_at_once_after_start_reloads_and_never_ends_the_server() {
    for round in 0..10 {
        let dir = TempDir::new("routes-reload-early");
        let table = dir.0.join("routes");
        std::fs::write(&table, READ).unwrap();
        let server = Server::start(&dir.db(), &["--routes", table.to_str().unwrap()]);
        server.signal("HUP");
        let deadline = Instant::now() + Duration::from_secs(5);
        while !server.log_text().contains("reloaded route table") {
            assert!(
                Instant::now() < deadline,
                "round {round}: no reload: {}",
                server.log_text()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(server.req("GET", "/healthz", &[], None).status, 200);
    }
}

/// Without `--routes` a `SIGHUP` is logged and ignored: it never ends the
/// server (its default action), whose requests go on being answered.
#[test]
fn a_sighup_without_a_route_table_is_ignored() {
    let dir = TempDir::new("routes-reload-none");
    let server = Server::start(&dir.db(), &[]);
    for n in 1..=3 {
        hangup(&server);
        let deadline = Instant::now() + Duration::from_secs(5);
        while server.log_text().matches("SIGHUP ignored").count() < n {
            assert!(Instant::now() < deadline, "{}", server.log_text());
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    assert_eq!(server.req("GET", "/healthz", &[], None).status, 200);
    assert_eq!(
        server.authorize(server.token(), "DEVBOXES", "READ").status,
        204
    );
}
