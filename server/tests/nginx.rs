//! A real nginx with `auth_request` in front of a small upstream: one
//! `location /` for every route, keygate's route table deciding (forward-auth
//! with `X-Original-Method` and `X-Original-URI`).
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

use std::path::PathBuf;
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

#[test]
fn nginx_auth_request_end_to_end() {
    let Some(nginx) = find_nginx() else {
        if std::env::var("KEYGATE_SKIP_NGINX").as_deref() == Ok("1") {
            eprintln!("nginx not found; skipped (KEYGATE_SKIP_NGINX=1)");
            return;
        }
        panic!("nginx not found: install it (scripts/test.sh does) or set KEYGATE_SKIP_NGINX=1");
    };
    let dir = TempDir::new("nginx");
    let table = write_table(&dir);
    let keygate = Server::start(&dir.db(), &["--routes", table.to_str().unwrap()]);
    let upstream = start_upstream();
    let port = free_port();
    let d = dir.0.display();
    // The README's snippet, with the test's addresses.
    let conf = format!(
        r#"
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log info;
events {{ worker_connections 64; }}
http {{
    access_log {d}/access.log;
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;

    upstream keygate {{ server {keygate}; }}

    server {{
        listen 127.0.0.1:{port};

        location = /_keygate {{
            internal;
            proxy_pass http://keygate/v1/authorize;
            proxy_pass_request_body off;
            proxy_set_header Content-Length "";
            proxy_set_header X-Original-Method $request_method;
            proxy_set_header X-Original-URI $request_uri;
            # keygate refuses a request with both header pairs: drop any
            # X-Forwarded-* a client sent.
            proxy_set_header X-Forwarded-Method "";
            proxy_set_header X-Forwarded-Uri "";
        }}

        location / {{
            auth_request /_keygate;
            auth_request_set $keygate_key_id $upstream_http_x_keygate_key_id;
            proxy_set_header X-Keygate-Key-Id $keygate_key_id;
            proxy_pass http://127.0.0.1:{upstream};
        }}
    }}
}}
"#,
        keygate = keygate.addr
    );
    let conf_path = dir.0.join("nginx.conf");
    std::fs::write(&conf_path, conf).unwrap();
    let _nginx = Nginx(
        Command::new(&nginx)
            .arg("-c")
            .arg(&conf_path)
            .args([
                "-p",
                &d.to_string(),
                "-g",
                "daemon off; master_process off;",
            ])
            .stdin(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    wait_listening(addr, &dir.0.join("error.log"));

    // nginx's auth_request answers 500 for any auth status but 2xx, 401 and
    // 403, so keygate's 400 (path refused) reaches the client as 500.
    check_gateway(addr, &keygate, &dir.db(), 500);

    // The fixed-scope form still works next to the table.
    let r = keygate.authorize(keygate.token(), "DEVBOXES", "WRITE");
    assert_eq!(r.status, 204, "{}", r.text());
    assert_eq!(r.header("x-keygate-key-id"), Some(&keygate.token()[3..19]));
}
