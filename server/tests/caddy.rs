//! A real Caddy with `forward_auth` in front of a small upstream: one site
//! for every route, keygate's route table deciding (forward-auth with
//! `X-Forwarded-Method` and `X-Forwarded-Uri`, `keygate serve
//! --forwarded-headers x-forwarded`). Client-sent forward-auth headers of
//! either family change no decision.
//!
//! Caddy must be installed (`scripts/test.sh` apt-installs Debian's `caddy`).
//! Set `KEYGATE_SKIP_CADDY=1` to skip this test on a machine without it.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;
mod gateway;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use common::*;
use gateway::*;

fn find_caddy() -> Option<PathBuf> {
    let path = std::env::var("PATH").unwrap_or_default();
    let found = path
        .split(':')
        .chain(["/usr/bin", "/usr/local/bin"])
        .map(|d| PathBuf::from(d).join("caddy"))
        .find(|p| p.is_file());
    found
}

struct Caddy(Child);

impl Drop for Caddy {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn caddy_forward_auth_end_to_end() {
    let Some(caddy) = find_caddy() else {
        if std::env::var("KEYGATE_SKIP_CADDY").as_deref() == Ok("1") {
            eprintln!("caddy not found; skipped (KEYGATE_SKIP_CADDY=1)");
            return;
        }
        panic!("caddy not found: install it (scripts/test.sh does) or set KEYGATE_SKIP_CADDY=1");
    };
    let dir = TempDir::new("caddy");
    let table = write_table(&dir);
    let keygate = Server::start(
        &dir.db(),
        &[
            "--routes",
            table.to_str().unwrap(),
            "--forwarded-headers",
            "x-forwarded",
        ],
    );
    let upstream = start_upstream();
    let port = free_port();
    // The README's snippet, with the test's addresses.
    let conf = format!(
        r#"{{
    admin off
    auto_https off
}}

http://127.0.0.1:{port} {{
    forward_auth {keygate} {{
        uri /v1/authorize
        copy_headers X-Keygate-Key-Id
        header_up -X-Original-Method
        header_up -X-Original-URI
    }}
    reverse_proxy 127.0.0.1:{upstream}
}}
"#,
        keygate = keygate.addr
    );
    let conf_path = dir.0.join("Caddyfile");
    std::fs::write(&conf_path, conf).unwrap();
    let log_path = dir.0.join("caddy.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let _caddy = Caddy(
        Command::new(&caddy)
            .args(["run", "--adapter", "caddyfile", "--config"])
            .arg(&conf_path)
            .env("HOME", &dir.0)
            .env("XDG_DATA_HOME", dir.0.join("data"))
            .env("XDG_CONFIG_HOME", dir.0.join("config"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    wait_listening(addr, &log_path);

    // Caddy hands keygate's refusals (400 included) to the client as they are.
    check_gateway(addr, &keygate, &dir.db(), 400);

    // Caddy sets X-Forwarded-Method/-Uri itself, over what a client sent;
    // the config drops a client's X-Original-*. Client-sent forward-auth
    // headers change no decision.
    check_forged_forwarded_headers(addr, &keygate, &dir.db());
}
