//! The server's log: `--log-format json` is one object per line with stable
//! field names, the request line carries what an operator filters on, and
//! every `serve` flag can come from the environment.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;
#[path = "common/h2c.rs"]
mod h2c;

use common::*;
use h2c::{Client, Proto};

fn parse(line: &str) -> serde_json::Map<String, serde_json::Value> {
    match serde_json::from_str::<serde_json::Value>(line) {
        Ok(serde_json::Value::Object(map)) => map,
        other => panic!("not a JSON object per line: {line:?} ({other:?})"),
    }
}

#[test]
fn json_logs_are_one_object_per_line_with_the_request_fields() {
    let dir = TempDir::new("logs-json");
    // The format from the environment, as every flag may be.
    let server = Server::start_with_env(&dir.db(), &[], &[("KEYGATE_LOG_FORMAT", "json")]);
    let admin = server.token().to_owned();
    let admin_id = admin[3..19].to_owned();
    assert_eq!(server.authorize(&admin, "DEVBOXES", "READ").status, 204);
    let unknown = format!("ak_{}_{}", "0".repeat(16), "A".repeat(49));
    assert_eq!(server.authorize(&unknown, "DEVBOXES", "READ").status, 401);
    let mut h2 = Client::new(Proto::H2, server.addr);
    assert_eq!(h2.authorize(&admin, "DEVBOXES", "READ").status, 204);
    std::thread::sleep(std::time::Duration::from_millis(200));

    let log = server.log.lock().unwrap().clone();
    assert!(log.len() >= 5, "{log:?}");
    let events: Vec<_> = log.iter().map(|line| parse(line)).collect();
    for e in &events {
        for field in ["timestamp", "level", "message", "target"] {
            assert!(e.contains_key(field), "no `{field}` in {e:?}");
        }
    }
    let requests: Vec<_> = events
        .iter()
        .filter(|e| e.get("path").and_then(|p| p.as_str()) == Some("/v1/authorize"))
        .collect();
    assert_eq!(requests.len(), 3, "{requests:?}");
    let field = |e: &serde_json::Map<String, serde_json::Value>, k: &str| e[k].clone();
    for (e, status, key, protocol) in [
        (requests[0], 204, admin_id.as_str(), "h1"),
        (requests[1], 401, "-", "h1"),
        (requests[2], 204, admin_id.as_str(), "h2"),
    ] {
        assert_eq!(field(e, "method"), "GET");
        assert_eq!(field(e, "status"), status);
        assert_eq!(field(e, "key_id"), key);
        assert_eq!(field(e, "protocol"), protocol);
        assert!(field(e, "latency_us").is_u64(), "{e:?}");
        assert_eq!(field(e, "level"), "INFO");
    }
    // The path is the path: no query, and no token anywhere.
    let text = log.join("\n");
    assert!(!text.contains("resource_type="), "{text}");
    assert!(!text.contains(&admin[20..]), "a secret in the log");
}

/// Every `serve` flag names its environment variable in `--help`, and one
/// set there takes effect.
#[test]
fn every_serve_flag_can_come_from_the_environment() {
    let out = std::process::Command::new(BIN)
        .args(["serve", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8(out.stdout).unwrap();
    let flags: Vec<&str> = help
        .lines()
        .map(str::trim_start)
        .filter(|l| l.starts_with("--"))
        .collect();
    assert!(flags.len() >= 15, "{help}");
    // clap puts `[env: …]` at the end of each flag's description: count
    // them against the flags (all but `--help`).
    let envs = help.matches("[env: KEYGATE_").count();
    assert_eq!(envs, flags.len(), "{help}");

    let dir = TempDir::new("logs-env");
    let server = Server::start_with_env(&dir.db(), &[], &[("KEYGATE_MAX_CONNECTIONS", "1")]);
    // One connection at a time: a second one waits in the backlog while the
    // first stays open.
    let held = std::net::TcpStream::connect(server.addr).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(200));
    let mut second = std::net::TcpStream::connect(server.addr).unwrap();
    second
        .set_read_timeout(Some(std::time::Duration::from_millis(500)))
        .unwrap();
    use std::io::{Read, Write};
    second
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut buf = [0u8; 64];
    assert!(
        second.read(&mut buf).is_err(),
        "served beyond KEYGATE_MAX_CONNECTIONS=1"
    );
    drop(held);
    second
        .set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .unwrap();
    let n = second.read(&mut buf).unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"), "{:?}", &buf[..n]);
}
