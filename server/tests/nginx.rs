//! A real nginx with `auth_request` in front of a small upstream, asking
//! keygate's `/v1/authorize` for each request.
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

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

fn find_nginx() -> Option<PathBuf> {
    let path = std::env::var("PATH").unwrap_or_default();
    let found = path
        .split(':')
        .chain(["/usr/sbin", "/usr/local/sbin", "/usr/local/nginx/sbin"])
        .map(|d| PathBuf::from(d).join("nginx"))
        .find(|p| p.is_file());
    found
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// An upstream that answers 200 and echoes the key id nginx passed on.
fn start_upstream() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut key_id = String::from("none");
            let mut path = String::new();
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if path.is_empty() {
                    path = line.split(' ').nth(1).unwrap_or("").to_owned();
                }
                if let Some((name, value)) = line.split_once(':') {
                    if name.eq_ignore_ascii_case("x-keygate-key-id") {
                        key_id = value.trim().to_owned();
                    }
                }
            }
            let body = format!("upstream {path} for {key_id}");
            let _ = write!(
                stream,
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    port
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
    let keygate = Server::start(&dir.db(), &[]);
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

        location = /_keygate_devboxes_write {{
            internal;
            proxy_pass http://keygate/v1/authorize?resource_type=RESOURCE_TYPE_DEVBOXES&access_level=ACCESS_LEVEL_WRITE;
            proxy_pass_request_body off;
            proxy_set_header Content-Length "";
        }}

        location /devboxes/ {{
            auth_request /_keygate_devboxes_write;
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
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(addr).is_err() {
        assert!(
            Instant::now() < deadline,
            "nginx did not start: {}",
            std::fs::read_to_string(dir.0.join("error.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    let admin = keygate.token().to_owned();
    let writer = mint_token(&dir.db(), &["--scope", "devboxes:write"]);
    let reader = mint_token(&dir.db(), &["--scope", "devboxes:read"]);
    keygate.wait_accepted(&writer);
    keygate.wait_accepted(&reader);
    let get = |token: Option<&str>| {
        let auth = token.map(|t| format!("Bearer {t}"));
        let headers: Vec<(&str, &str)> =
            auth.iter().map(|a| ("Authorization", a.as_str())).collect();
        request(addr, "GET", "/devboxes/42", &headers, None)
    };

    // Allowed: the upstream answers and sees the key id.
    for token in [&admin, &writer] {
        let r = get(Some(token));
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(
            r.text(),
            format!("upstream /devboxes/42 for {}", &token[3..19])
        );
    }
    // 401: missing, malformed, or changed tokens never reach the upstream.
    let r = get(None);
    assert_eq!(r.status, 401);
    assert!(!r.text().contains("upstream"));
    assert_eq!(
        r.header("www-authenticate"),
        Some(r#"Bearer error="invalid_token""#)
    );
    assert_eq!(get(Some("ak_nope")).status, 401);
    let mut changed = writer.clone().into_bytes();
    changed[40] = if changed[40] == b'Q' { b'R' } else { b'Q' };
    assert_eq!(
        get(Some(std::str::from_utf8(&changed).unwrap())).status,
        401
    );
    // 403: a valid key without devboxes:write.
    let r = get(Some(&reader));
    assert_eq!(r.status, 403);
    assert!(!r.text().contains("upstream"));

    // keygate saw every decision.
    std::thread::sleep(Duration::from_millis(100));
    let log = keygate.log_text();
    assert!(log.contains("status=403"));
    assert!(log.contains(&format!("key_id={}", &reader[3..19])));
}
