//! Test helpers: run the real `keygate` binary, talk raw HTTP/1.1 to it.
#![allow(dead_code, missing_docs)]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_keygate");

/// A fresh temporary directory, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!(
            "keygate-test-{tag}-{}-{n}-{}",
            std::process::id(),
            Instant::now().elapsed().as_nanos()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
    pub fn db(&self) -> PathBuf {
        self.0.join("keygate.db")
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A running `keygate serve`.
pub struct Server {
    pub child: Child,
    pub addr: SocketAddr,
    /// Every stderr line so far.
    pub log: Arc<Mutex<Vec<String>>>,
    /// The bootstrap token, if this start wrote one (to
    /// `<db>.bootstrap-key`; the harness reads the file, then removes it).
    pub bootstrap: Option<String>,
}

impl Server {
    pub fn start(db: &Path, extra: &[&str]) -> Server {
        Server::start_logging(db, extra, "info")
    }

    /// [`Server::start`] with `KEYGATE_LOG` set to `filter`.
    pub fn start_logging(db: &Path, extra: &[&str], filter: &str) -> Server {
        Server::start_with_env(db, extra, &[("KEYGATE_LOG", filter)])
    }

    /// [`Server::start`] with these environment variables set.
    pub fn start_with_env(db: &Path, extra: &[&str], env: &[(&str, &str)]) -> Server {
        let mut child = Command::new(BIN)
            .args(["serve", "--listen", "127.0.0.1:0", "--db"])
            .arg(db)
            .args(extra)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        {
            let log = Arc::clone(&log);
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    if let Some(addr) = line.strip_prefix("listening on ") {
                        let _ = tx.send(addr.parse::<SocketAddr>().unwrap());
                    }
                    // `--log-format json`: the `listening` event says it.
                    if line.starts_with('{') && line.contains(r#""message":"listening""#) {
                        if let Some(addr) = line
                            .split(r#""local":""#)
                            .nth(1)
                            .and_then(|rest| rest.split('"').next())
                        {
                            let _ = tx.send(addr.parse::<SocketAddr>().unwrap());
                        }
                    }
                    log.lock().unwrap().push(line);
                }
            });
        }
        let addr = rx
            .recv_timeout(Duration::from_secs(20))
            .unwrap_or_else(|_| panic!("server did not start: {:?}", log.lock().unwrap()));
        let bootstrap = take_bootstrap_file(db);
        Server {
            child,
            addr,
            log,
            bootstrap,
        }
    }

    /// The address of `--metrics-listen`, from the `metrics listening on`
    /// line.
    pub fn metrics_addr(&self) -> SocketAddr {
        self.log
            .lock()
            .unwrap()
            .iter()
            .find_map(|line| line.strip_prefix("metrics listening on "))
            .unwrap_or_else(|| panic!("no metrics listener: {:?}", self.log.lock().unwrap()))
            .parse()
            .unwrap()
    }

    /// The text of `GET /metrics`.
    pub fn scrape(&self) -> String {
        let resp = request(self.metrics_addr(), "GET", "/metrics", &[], None);
        assert_eq!(resp.status, 200, "{}", resp.text());
        resp.text()
    }

    pub fn token(&self) -> &str {
        self.bootstrap.as_deref().unwrap()
    }

    pub fn req(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
    ) -> Resp {
        request(self.addr, method, path, headers, body)
    }

    /// A request with `Authorization: Bearer <token>`.
    pub fn authed(&self, method: &str, path: &str, token: &str, body: Option<&str>) -> Resp {
        let auth = format!("Bearer {token}");
        self.req(
            method,
            path,
            &[("Authorization", &auth)],
            body.map(str::as_bytes),
        )
    }

    pub fn authorize(&self, token: &str, resource: &str, access: &str) -> Resp {
        self.authed(
            "GET",
            &format!("/v1/authorize?resource_type=RESOURCE_TYPE_{resource}&access_level=ACCESS_LEVEL_{access}"),
            token,
            None,
        )
    }

    /// Waits (up to 2 s) until `token` is accepted: a key minted by the CLI
    /// reaches the running server through its change-log poll. A key with
    /// limits counts as known once it is refused for them (429: an instance
    /// may not hold a lease of its credits yet).
    pub fn wait_accepted(&self, token: &str) {
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            let status = self.authorize(token, "OBJECTS", "NONE").status;
            if status == 204 || status == 429 {
                return;
            }
            assert_eq!(status, 401);
            assert!(
                Instant::now() < deadline,
                "the server never accepted the key"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn log_text(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    pub fn sigterm(&self) {
        self.signal("TERM");
    }

    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "server did not exit");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The path of the bootstrap key file of `db`.
pub fn bootstrap_path(db: &Path) -> PathBuf {
    let mut s = db.as_os_str().to_owned();
    s.push(".bootstrap-key");
    PathBuf::from(s)
}

/// Reads and removes the bootstrap key file of `db`, if there is one.
pub fn take_bootstrap_file(db: &Path) -> Option<String> {
    let path = bootstrap_path(db);
    let text = std::fs::read_to_string(&path).ok()?;
    std::fs::remove_file(&path).unwrap();
    Some(text.trim().to_owned())
}

/// Runs the CLI with `args` (after the subcommand, `--db db` is added) and
/// returns (exit ok, stdout, stderr).
pub fn cli(db: &Path, command: &[&str], args: &[&str]) -> (bool, String, String) {
    let out = Command::new(BIN)
        .args(command)
        .arg("--db")
        .arg(db)
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

/// An HTTP response.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not json ({e}): {}", self.text()))
    }
    /// Asserts an RFC 9457 problem with `status`, and returns its detail.
    pub fn problem(&self, status: u16) -> String {
        assert_eq!(self.status, status, "{}", self.text());
        assert_eq!(
            self.header("content-type"),
            Some("application/problem+json")
        );
        let v = self.json();
        assert_eq!(v["status"], status);
        assert_eq!(v["type"], "about:blank");
        assert!(v["title"].is_string());
        let keys: Vec<&String> = v.as_object().unwrap().keys().collect();
        assert_eq!(keys.len(), 4, "{keys:?}");
        v["detail"].as_str().unwrap().to_owned()
    }
}

/// A free TCP port on 127.0.0.1 (bound, then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A program a test runs: `$var` if set, else `/usr/bin/<name>`. Missing,
/// the test fails with `hint` (what installs it): it never skips.
pub fn installed(name: &str, var: &str, hint: &str) -> PathBuf {
    let path = std::env::var_os(var)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin").join(name));
    assert!(
        path.exists(),
        "`{}` not found: {hint} (scripts/test.sh does), or set {var}",
        path.display()
    );
    path
}

/// One request on a fresh connection (`Connection: close`).
pub fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> Resp {
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    if let Some(b) = body {
        head.push_str(&format!("Content-Length: {}\r\n", b.len()));
    }
    head.push_str("\r\n");
    let mut raw = head.into_bytes();
    if let Some(b) = body {
        raw.extend_from_slice(b);
    }
    raw_request(addr, &raw)
}

/// Sends raw bytes, reads the response until the server closes.
pub fn raw_request(addr: SocketAddr, raw: &[u8]) -> Resp {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    // The server may answer (413, 401) before it reads a large body.
    let _ = stream.write_all(raw);
    read_response(&mut stream)
}

pub fn read_response(stream: &mut TcpStream) -> Resp {
    let mut buf = Vec::new();
    let read = stream.read_to_end(&mut buf);
    if let (Err(e), false) = (&read, buf.windows(4).any(|w| w == b"\r\n\r\n")) {
        // Say how the connection failed (reset, timeout), not only that the
        // response is missing.
        panic!(
            "reading the response failed after {} bytes: {e} ({:?})",
            buf.len(),
            e.kind()
        );
    }
    parse_response(&buf)
}

/// Reads one response (its head, then `Content-Length` bytes), without
/// waiting for the server to close the connection.
pub fn read_one_response(stream: &mut TcpStream) -> Resp {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        let end = buf.windows(4).position(|w| w == b"\r\n\r\n");
        if let Some(end) = end {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map_or(0, |v| v.trim().parse().unwrap());
            if buf.len() >= end + 4 + length {
                return parse_response(&buf);
            }
        }
        match stream.read(&mut byte) {
            Ok(1) => buf.push(byte[0]),
            other => panic!(
                "the response ended early ({other:?}) after {} bytes",
                buf.len()
            ),
        }
    }
}

pub fn parse_response(buf: &[u8]) -> Resp {
    let end = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no response head in {:?}", String::from_utf8_lossy(buf)));
    let head = std::str::from_utf8(&buf[..end]).unwrap();
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers: Vec<(String, String)> = lines
        .map(|l| {
            let (k, v) = l.split_once(':').unwrap();
            (k.trim().to_ascii_lowercase(), v.trim().to_owned())
        })
        .collect();
    let mut body = buf[end + 4..].to_vec();
    let chunked = headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.contains("chunked"));
    if chunked {
        let mut out = Vec::new();
        let mut rest = &body[..];
        loop {
            let nl = rest.windows(2).position(|w| w == b"\r\n").unwrap();
            let size = usize::from_str_radix(std::str::from_utf8(&rest[..nl]).unwrap().trim(), 16)
                .unwrap();
            rest = &rest[nl + 2..];
            if size == 0 {
                break;
            }
            out.extend_from_slice(&rest[..size]);
            rest = &rest[size + 2..];
        }
        body = out;
    }
    Resp {
        status,
        headers,
        body,
    }
}

/// Runs `keygate mint` and returns (exit ok, stdout, stderr).
pub fn cli_mint(db: &Path, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(BIN)
        .arg("mint")
        .arg("--db")
        .arg(db)
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

/// Mints via the CLI and returns the token.
pub fn mint_token(db: &Path, args: &[&str]) -> String {
    let (ok, out, err) = cli_mint(db, args);
    assert!(ok, "mint failed: {err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v["key_secret"].as_str().unwrap().to_owned()
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// The sorted field names of a JSON object.
pub fn fields(v: &serde_json::Value) -> Vec<String> {
    let mut k: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
    k.sort();
    k
}
