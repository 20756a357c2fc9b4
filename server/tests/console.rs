//! The web console (`serve --console`) in a real browser: Debian's
//! `chromium`, driven by `chromedriver` over the W3C WebDriver protocol
//! (spoken here with the raw HTTP helpers; `scripts/test.sh` installs both).
//! A user's path end to end, a tenant's view under `--attenuate`, the
//! secret gone from the page once its dialog closes, axe-core on every
//! page, no console error, failed request or other origin, and screenshots
//! of every page at 1280×800 and 390×844 under `target/console-screenshots/`.
//! Missing chromium or chromedriver fail these tests; they never skip.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

/// The vendored axe-core (tests only; never served).
const AXE: &str = include_str!("console/vendor/axe.min.js");

const SIZES: [(u32, u32); 2] = [(1280, 800), (390, 844)];

/// `target/console-screenshots/`, from this test binary's path
/// (`target/debug/deps/console-…`), whatever `CARGO_TARGET_DIR` is.
fn screenshot_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let target = exe.ancestors().nth(3).unwrap().to_path_buf();
    let dir = target.join("console-screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A chromedriver with one Chromium session; both end on drop.
struct Browser {
    driver: Child,
    addr: SocketAddr,
    session: String,
    origin: String,
    _profile: TempDir,
    /// Whether the first page of the test has started loading.
    started: std::cell::Cell<bool>,
    requests: std::cell::Cell<u32>,
}

impl Browser {
    fn start(origin: &str) -> Browser {
        let chromium = installed("chromium", "KEYGATE_CHROMIUM", "install chromium");
        let chromedriver = installed(
            "chromedriver",
            "KEYGATE_CHROMEDRIVER",
            "install chromium-driver",
        );
        let port = free_port();
        let driver = Command::new(chromedriver)
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(addr).is_err() {
            assert!(Instant::now() < deadline, "chromedriver did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        let profile = TempDir::new("chromium");
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium,
                // The background-networking flags: a closed network refuses
                // Chromium's own connections, which would be failed requests.
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic",
                         "--no-first-run", "--disable-background-networking",
                         "--disable-component-update", "--disable-sync",
                         "--disable-dev-shm-usage", "--window-size=1280,800",
                         format!("--user-data-dir={}", profile.0.display()),
                         ],
            },
            "goog:loggingPrefs": {"browser": "ALL", "performance": "ALL"},
        }}});
        let mut b = Browser {
            driver,
            addr,
            session: String::new(),
            origin: origin.to_owned(),
            _profile: profile,
            started: std::cell::Cell::new(false),
            requests: std::cell::Cell::new(0),
        };
        let v = b.call("POST", "/session", Some(caps));
        b.session = v["sessionId"].as_str().unwrap().to_owned();
        b
    }

    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let (status, v) = webdriver(self.addr, method, path, body);
        assert_eq!(status, 200, "{method} {path}: {v}");
        v["value"].clone()
    }

    fn s(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        self.call(method, &format!("/session/{}{path}", self.session), body)
    }

    fn go(&self, path: &str) {
        self.s(
            "POST",
            "/url",
            Some(json!({"url": format!("{}{path}", self.origin)})),
        );
    }

    fn js(&self, script: &str, args: Value) -> Value {
        self.s(
            "POST",
            "/execute/sync",
            Some(json!({"script": script, "args": args})),
        )
    }

    /// Waits (up to 10 s) until `expr` (a JS expression) is truthy.
    fn wait(&self, expr: &str) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if self.js(&format!("return !!({expr});"), json!([])) == json!(true) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for `{expr}`; page: {}",
                self.js("return document.body.innerText", json!([]))
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn find(&self, css: &str) -> String {
        self.wait(&format!("document.querySelector({})", json!(css)));
        let v = self.s(
            "POST",
            "/element",
            Some(json!({"using": "css selector", "value": css})),
        );
        v.as_object()
            .unwrap()
            .values()
            .next()
            .unwrap()
            .as_str()
            .unwrap()
            .to_owned()
    }

    fn click(&self, css: &str) {
        let e = self.find(css);
        self.s("POST", &format!("/element/{e}/click"), Some(json!({})));
    }

    /// Types `text` into the element (as keystrokes; `\u{E014}` is ArrowRight).
    fn keys(&self, css: &str, text: &str) {
        let e = self.find(css);
        self.s(
            "POST",
            &format!("/element/{e}/value"),
            Some(json!({"text": text})),
        );
    }

    fn text(&self, css: &str) -> String {
        self.find(css);
        self.js(
            "return document.querySelector(arguments[0]).textContent",
            json!([css]),
        )
        .as_str()
        .unwrap()
        .to_owned()
    }

    /// axe-core on the page as it is now: no violation of any rule.
    fn axe(&self, page: &str) {
        if self.js("return typeof axe", json!([])) != json!("object") {
            self.js(AXE, json!([]));
        }
        let v = self.s(
            "POST",
            "/execute/async",
            Some(json!({"script": "const done = arguments[0]; axe.run(document).then(r => done(r.violations.map(v => ({id: v.id, help: v.help, nodes: v.nodes.map(n => n.html)})))).catch(e => done([{id: 'axe failed', help: String(e)}]));", "args": []})),
        );
        assert_eq!(v, json!([]), "axe-core violations on {page}");
    }

    /// A screenshot of the page at each size, then back to the first;
    /// axe-core runs at each size too.
    fn screenshots(&self, page: &str) {
        let dir = screenshot_dir();
        for (w, h) in SIZES {
            self.size(w, h);
            std::thread::sleep(Duration::from_millis(150));
            self.axe(&format!("{page} at {w}x{h}"));
            let png = self.s("GET", "/screenshot", None);
            let bytes = decode_base64(png.as_str().unwrap());
            std::fs::write(dir.join(format!("{page}-{w}x{h}.png")), bytes).unwrap();
        }
        self.size(SIZES[0].0, SIZES[0].1);
    }

    /// The viewport, exactly (a window's size would include its frame).
    fn size(&self, width: u32, height: u32) {
        self.s(
            "POST",
            "/goog/cdp/execute",
            Some(
                json!({"cmd": "Emulation.setDeviceMetricsOverride", "params": {
                "width": width, "height": height, "deviceScaleFactor": 1, "mobile": width < 600}}),
            ),
        );
    }

    fn log(&self, kind: &str) -> Vec<Value> {
        self.s("POST", "/se/log", Some(json!({"type": kind})))
            .as_array()
            .unwrap()
            .clone()
    }

    /// Console errors and warnings, failed requests (status 400 and up, or
    /// no answer) and requests to another origin since the last call, one
    /// line each.
    fn failures(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .log("browser")
            .into_iter()
            .filter(|e| e["level"] == "SEVERE" || e["level"] == "WARNING")
            .map(|e| format!("console: {}", e["message"]))
            .collect();
        let mut urls = std::collections::HashMap::new();
        for entry in self.log("performance") {
            let m: Value = serde_json::from_str(entry["message"].as_str().unwrap()).unwrap();
            let (method, params) = (&m["message"]["method"], &m["message"]["params"]);
            // Debian's Chromium loads its search engine's start page
            // (start.duckduckgo.com) as it starts, before the first page of the
            // test: the browser's, not the console's. Checks start there.
            if !self.started.get() {
                let first = method == "Network.requestWillBeSent"
                    && params["request"]["url"]
                        .as_str()
                        .is_some_and(|u| u.starts_with(&self.origin));
                if !first {
                    continue;
                }
                self.started.set(true);
            }
            let id = params["requestId"].to_string();
            if method == "Network.requestWillBeSent" {
                self.requests.set(self.requests.get() + 1);
                let url = params["request"]["url"].as_str().unwrap();
                if !url.starts_with(&format!("{}/", self.origin)) && !url.starts_with("data:") {
                    out.push(format!("another origin: {url}"));
                }
                urls.insert(id, url.to_owned());
            } else if method == "Network.loadingFailed" {
                out.push(format!("failed: {:?} {params}", urls.get(&id)));
            } else if method == "Network.responseReceived" {
                let status = params["response"]["status"].as_u64().unwrap();
                if status >= 400 {
                    out.push(format!("{status}: {}", params["response"]["url"]));
                }
            }
        }
        out
    }

    /// No console error, no failed request, no request to another origin
    /// since the last check.
    fn assert_clean(&self) {
        let failures = self.failures();
        assert!(failures.is_empty(), "{failures:#?}");
        assert!(
            self.requests.get() > 0,
            "the performance log saw no request"
        );
    }

    /// The page's whole DOM (dialogs and input values too) and both storages.
    fn everything(&self) -> String {
        self.js(
            "const values = [...document.querySelectorAll('input,textarea')].map(e => e.value).join(' ');\
             return document.documentElement.outerHTML + values \
               + JSON.stringify(Object.assign({}, localStorage)) + JSON.stringify(Object.assign({}, sessionStorage));",
            json!([]),
        )
        .as_str()
        .unwrap()
        .to_owned()
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let _ = webdriver(
                self.addr,
                "DELETE",
                &format!("/session/{}", self.session),
                None,
            );
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// One WebDriver command. chromedriver keeps the connection open whatever
/// `Connection` says, so the body is read by its `Content-Length`.
fn webdriver(addr: SocketAddr, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    use std::io::{BufRead, BufReader, Read, Write};
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    let status: u16 = line.split(' ').nth(1).unwrap().parse().unwrap();
    let mut length = 0;
    loop {
        line.clear();
        reader.read_line(&mut line).unwrap();
        if line.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            if k.eq_ignore_ascii_case("content-length") {
                length = v.trim().parse().unwrap();
            }
        }
    }
    let mut buf = vec![0; length];
    reader.read_exact(&mut buf).unwrap();
    (status, serde_json::from_slice(&buf).unwrap())
}

fn decode_base64(s: &str) -> Vec<u8> {
    let table = |c: u8| -> u32 {
        match c {
            b'A'..=b'Z' => u32::from(c - b'A'),
            b'a'..=b'z' => u32::from(c - b'a') + 26,
            b'0'..=b'9' => u32::from(c - b'0') + 52,
            b'+' => 62,
            b'/' => 63,
            _ => panic!("not base64: {c}"),
        }
    };
    let mut out = Vec::new();
    for chunk in s.as_bytes().chunks(4) {
        let digits: Vec<u32> = chunk
            .iter()
            .filter(|&&c| c != b'=')
            .map(|&c| table(c))
            .collect();
        let mut n = 0u32;
        for (i, d) in digits.iter().enumerate() {
            n |= d << (18 - 6 * i);
        }
        out.extend_from_slice(&n.to_be_bytes()[1..digits.len()]);
    }
    out
}

fn origin(server: &Server) -> String {
    format!("http://{}", server.addr)
}

fn created(server: &Server, token: &str, route: &str, body: Value) -> Value {
    let r = server.authed("POST", route, token, Some(&body.to_string()));
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()
}

fn sign_in(b: &Browser, token: &str) {
    b.go("/console");
    b.keys("#token", token);
    b.click("#signin");
    b.wait("document.querySelector('table.keys tbody tr')");
}

#[test]
fn a_users_path_through_the_console() {
    let dir = TempDir::new("console-path");
    let server = Server::start(&dir.db(), &["--console"]);
    let admin = server.token().to_owned();
    // A hostile name: it must show as text, never as markup.
    let xss = "<img src=x onerror=alert(1)>";
    created(&server, &admin, "/v1/apikeys", json!({"name": xss}));
    let b = Browser::start(&origin(&server));

    b.go("/console");
    b.find("#token");
    b.screenshots("sign-in");
    // By keyboard: Enter submits.
    b.keys("#token", &format!("{admin}\u{E007}"));
    b.wait("document.querySelector('table.keys tbody tr')");
    assert!(b.text("#who").contains("bootstrap"));
    assert!(b.text("table.keys").contains(xss), "the name shows as text");
    assert_eq!(
        b.js("return document.querySelectorAll('img').length", json!([])),
        json!(0)
    );
    b.screenshots("keys");

    // Create: a restricted key, its scopes set by keyboard in the matrix.
    b.click("#create");
    b.keys("#name", "deploy bot");
    b.click("#scope-DEVBOXES-NONE");
    b.keys("#scope-DEVBOXES-NONE", "\u{E014}\u{E014}");
    b.click("#scope-OBJECTS-NONE");
    b.keys("#scope-OBJECTS-NONE", "\u{E014}");
    b.wait("document.querySelector('#scope-DEVBOXES-WRITE').checked && document.querySelector('#scope-OBJECTS-READ').checked");
    b.screenshots("create");
    b.click("#create-submit");
    let secret = b.js(
        "return document.querySelector('#secret') && document.querySelector('#secret').value",
        json!([]),
    );
    let secret = if secret.is_string() {
        secret.as_str().unwrap().to_owned()
    } else {
        b.find("#secret");
        b.js("return document.querySelector('#secret').value", json!([]))
            .as_str()
            .unwrap()
            .to_owned()
    };
    assert!(secret.starts_with("rk_"), "{secret}");
    b.screenshots("secret");
    // Escape closes it, as the button does.
    b.keys("#secret-done", "\u{E00C}");
    b.wait("!document.querySelector('dialog')");
    assert!(
        !b.everything().contains(&secret),
        "the secret stays in the page"
    );
    let id = secret[3..19].to_owned();
    // The secret works, with exactly the scopes the matrix gave it.
    assert_eq!(server.authorize(&secret, "DEVBOXES", "WRITE").status, 204);
    assert_eq!(server.authorize(&secret, "OBJECTS", "READ").status, 204);
    assert_eq!(server.authorize(&secret, "OBJECTS", "WRITE").status, 403);
    assert_eq!(server.authorize(&secret, "ACCOUNT", "READ").status, 403);

    // The detail page: its matrix, read-only, and its usage chart (a
    // reload, so that it shows the requests above).
    b.wait(&format!("location.hash === '#/keys/{id}'"));
    for _ in 0..3 {
        assert_eq!(server.authorize(&secret, "DEVBOXES", "READ").status, 204);
    }
    b.go("/console");
    b.wait("location.hash === '#/keys' && document.querySelector('table.keys tbody tr')");
    b.go(&format!("/console#/keys/{id}"));
    b.wait("document.querySelector('.usage .note') && document.querySelector('.usage .note').textContent.includes('5 allowed, 2 forbidden')");
    b.wait("document.querySelector('table.matrix') && document.querySelector('.uplot')");
    let matrix = b.text("table.matrix");
    assert!(
        matrix.contains("● WRITE") && matrix.contains("● READ"),
        "{matrix}"
    );
    b.wait("document.querySelector('#ev-h') && document.querySelector('#ev-h').parentElement.querySelector('table')");
    b.screenshots("key");

    // Found in the table by the filter.
    b.go("/console#/keys");
    b.keys("#filter", "deploy");
    b.wait(&format!(
        "document.querySelector('table.keys').textContent.includes('{id}')"
    ));
    assert_eq!(
        b.js(
            "return document.querySelectorAll('table.keys tbody tr').length",
            json!([])
        ),
        json!(1)
    );

    // Roll, with no overlap: a new secret, shown once; the old one ends.
    b.click(&format!("a[href='#/keys/{id}']"));
    b.click("#roll");
    b.js("document.querySelector('#overlap').value = '0'", json!([]));
    b.screenshots("roll");
    b.click("#roll-submit");
    b.find("#secret");
    let rolled = b
        .js("return document.querySelector('#secret').value", json!([]))
        .as_str()
        .unwrap()
        .to_owned();
    assert!(rolled.starts_with("rk_") && rolled != secret);
    // The copy button answers, copied or (a headless clipboard may refuse)
    // the secret selected for the user to copy.
    b.click("#copy");
    b.wait("document.querySelector('#copied').textContent !== ''");
    b.click("#secret-done");
    b.wait("!document.querySelector('dialog')");
    let everything = b.everything();
    assert!(!everything.contains(&rolled) && !everything.contains(&secret));
    assert_eq!(server.authorize(&rolled, "DEVBOXES", "WRITE").status, 204);
    assert_eq!(server.authorize(&secret, "DEVBOXES", "WRITE").status, 401);
    let new_id = rolled[3..19].to_owned();

    // Revoke: confirmed by typing the name; the cascade count is said.
    b.wait(&format!("location.hash === '#/keys/{new_id}'"));
    b.click("#revoke");
    assert!(b.text("#cascade").contains("0 keys minted from it"));
    b.screenshots("revoke");
    b.keys("#confirm", "deploy bot");
    b.click("#revoke-submit");
    b.wait("location.hash === '#/keys'");
    assert_eq!(server.authorize(&rolled, "DEVBOXES", "WRITE").status, 401);

    // A standard key with an expiry, a rate limit and credits: the form's
    // fields reach the API as they read.
    b.click("#create");
    b.keys("#name", "limited");
    b.click("#kind-standard");
    b.wait("document.querySelector('#scopes-fieldset').hidden");
    b.js(
        "const e = document.querySelector('#expires'); e.value = '2030-01-01T00:00'; e.dispatchEvent(new Event('input'));",
        json!([]),
    );
    b.keys("#rate-limit", "100");
    b.keys("#credits", "500");
    b.click("#create-submit");
    b.find("#secret");
    let limited = b
        .js("return document.querySelector('#secret').value", json!([]))
        .as_str()
        .unwrap()
        .to_owned();
    b.click("#secret-done");
    b.wait("!document.querySelector('dialog')");
    assert!(limited.starts_with("ak_"), "{limited}");
    let view = server
        .authed(
            "GET",
            &format!("/v1/keys/{}", &limited[3..19]),
            &admin,
            None,
        )
        .json();
    assert_eq!(view["kind"], "standard");
    assert_eq!(view["expires_at_ms"], 1_893_456_000_000_i64);
    assert_eq!(view["rate_limit"], json!({"limit": 100, "period_ms": 1000}));
    assert_eq!(view["credits"]["remaining"], 500);

    // The audit log shows it all.
    b.go("/console#/events");
    b.wait("document.querySelector('table.events')");
    let log = b.text("table.events");
    for needle in [
        format!("created{id}"),
        format!("rolled{id}"),
        format!("revoked{new_id}"),
    ] {
        assert!(
            log.replace(['\n', ' '], "").contains(&needle),
            "{needle} in {log}"
        );
    }
    b.js(
        "const s = document.querySelector('#ev-action'); s.value = 'rolled'; s.dispatchEvent(new Event('change'))",
        json!([]),
    );
    b.wait("document.querySelectorAll('table.events tbody tr').length === 1");
    b.screenshots("events");

    b.click("#signout");
    b.find("#token");
    assert_eq!(
        b.js(
            "return sessionStorage.length + localStorage.length",
            json!([])
        ),
        json!(0)
    );
    b.assert_clean();
}

#[test]
fn a_tenant_sees_only_its_own_subtree() {
    let dir = TempDir::new("console-tenant");
    let server = Server::start(&dir.db(), &["--console", "--attenuate"]);
    let admin = server.token().to_owned();
    let tenant = |name: &str| {
        created(
            &server,
            &admin,
            "/v1/restricted_keys",
            json!({"name": name, "scopes": [
                {"resource_type": "RESOURCE_TYPE_ACCOUNT", "access_level": "ACCESS_LEVEL_WRITE"},
                {"resource_type": "RESOURCE_TYPE_DEVBOXES", "access_level": "ACCESS_LEVEL_WRITE"}]}),
        )["key_secret"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let (a, other) = (tenant("tenant-a"), tenant("tenant-b"));
    let child = |token: &str, name: &str| {
        created(
            &server,
            token,
            "/v1/restricted_keys",
            json!({"name": name, "scopes": [
                {"resource_type": "RESOURCE_TYPE_DEVBOXES", "access_level": "ACCESS_LEVEL_READ"}]}),
        )["id"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let a1 = child(&a, "a-worker");
    // A sub-tenant of A's, with a key of its own: A's revoke cascades to it.
    let sub = created(
        &server,
        &a,
        "/v1/restricted_keys",
        json!({"name": "a-team", "scopes": [
            {"resource_type": "RESOURCE_TYPE_ACCOUNT", "access_level": "ACCESS_LEVEL_WRITE"}]}),
    );
    let (sub_id, sub_token) = (
        sub["id"].as_str().unwrap().to_owned(),
        sub["key_secret"].as_str().unwrap().to_owned(),
    );
    let grandchild = created(
        &server,
        &sub_token,
        "/v1/restricted_keys",
        json!({"name": "a-team-bot", "scopes": [
            {"resource_type": "RESOURCE_TYPE_ACCOUNT", "access_level": "ACCESS_LEVEL_READ"}]}),
    )["key_secret"]
        .as_str()
        .unwrap()
        .to_owned();
    let b1 = child(&other, "b-worker");
    // A read-only key of tenant A's (account:read).
    let reader = created(
        &server,
        &a,
        "/v1/restricted_keys",
        json!({"name": "a-reader", "scopes": [
            {"resource_type": "RESOURCE_TYPE_ACCOUNT", "access_level": "ACCESS_LEVEL_READ"}]}),
    )["key_secret"]
        .as_str()
        .unwrap()
        .to_owned();
    let a_reader = reader[3..19].to_owned();

    let b = Browser::start(&origin(&server));
    sign_in(&b, &a);
    let table = b.text("table.keys");
    assert!(table.contains(&a1) && table.contains(&a_reader), "{table}");
    for foreign in [&b1, &other[3..19].to_owned(), &admin[3..19].to_owned()] {
        assert!(!table.contains(foreign.as_str()), "{foreign} in {table}");
    }
    b.screenshots("tenant-keys");
    // A worker has no descendant; the sub-tenant has one, which the
    // cascade revokes with it, as the dialog says.
    b.click(&format!("a[href='#/keys/{a1}']"));
    b.click("#revoke");
    assert!(b.text("#cascade").contains("its 0 descendants"));
    b.click("dialog button[type=button]");
    b.wait("!document.querySelector('dialog')");
    b.go(&format!("/console#/keys/{sub_id}"));
    b.wait("document.querySelector('#kids-h') && document.querySelector('#kids-h').parentElement.querySelector('table')");
    b.click("#revoke");
    assert!(b.text("#cascade").contains("its 1 descendant "));
    b.keys("#confirm", &sub_id);
    b.click("#revoke-submit");
    b.wait("location.hash === '#/keys'");
    assert_eq!(server.authorize(&sub_token, "ACCOUNT", "READ").status, 401);
    assert_eq!(server.authorize(&grandchild, "ACCOUNT", "READ").status, 401);
    b.go("/console#/events");
    b.wait("document.querySelector('table.events')");
    let log = b.text("table.events");
    assert!(log.contains(&a1) && !log.contains(&b1), "{log}");
    b.click("#signout");

    // account:read only: a read-only console, no create or revoke button.
    sign_in(&b, &reader);
    assert!(b.text("#who").contains("read-only"));
    assert_eq!(
        b.js("return !!document.querySelector('#create')", json!([])),
        json!(false)
    );
    b.screenshots("read-only");
    b.click("#signout");
    b.assert_clean();

    // A key without account:read: the API's 403, said plainly, and nothing
    // else failed.
    let plain = created(
        &server,
        &a,
        "/v1/restricted_keys",
        json!({"name": "a-devboxes", "scopes": [
            {"resource_type": "RESOURCE_TYPE_DEVBOXES", "access_level": "ACCESS_LEVEL_READ"}]}),
    )["key_secret"]
        .as_str()
        .unwrap()
        .to_owned();
    b.keys("#token", &format!("{plain}\u{E007}"));
    let refusal = b.text("main .error");
    assert!(
        refusal.contains("not allowed") && refusal.contains("HTTP 403"),
        "{refusal}"
    );
    b.screenshots("forbidden");
    let failures = b.failures();
    assert!(
        failures.len() == 2
            && failures
                .iter()
                .any(|f| f.starts_with("403: ") && f.contains("/v1/keys?limit=100"))
            && failures
                .iter()
                .any(|f| f.starts_with("console: ") && f.contains("403")),
        "{failures:#?}"
    );
}

#[test]
fn keys_page_by_20_and_the_audit_log_follows_has_more() {
    let dir = TempDir::new("console-paging");
    let server = Server::start(&dir.db(), &["--console"]);
    let admin = server.token().to_owned();
    // 105 keys and as many `created` events: the API's pages of 100 and the
    // console's of 20 both turn.
    let mut ids = Vec::new();
    for i in 0..104 {
        let v = created(
            &server,
            &admin,
            "/v1/apikeys",
            json!({"name": format!("bulk-{i:03}")}),
        );
        ids.push(v["id"].as_str().unwrap().to_owned());
    }
    let b = Browser::start(&origin(&server));
    sign_in(&b, &admin);
    let rows = "document.querySelectorAll('table.keys tbody tr').length";
    assert_eq!(b.js(&format!("return {rows}"), json!([])), json!(20));
    assert_eq!(b.text(".page-info"), "1–20 of 105");
    b.click(".pager button:last-child");
    assert_eq!(b.text(".page-info"), "21–40 of 105");
    b.keys("#filter", "bulk-10");
    b.wait(&format!("{rows} === 4"));
    assert_eq!(b.text(".page-info"), "1–4 of 4");
    b.keys("#filter", &"\u{E003}".repeat(7));
    b.keys("#filter", &ids[57]);
    b.wait(&format!("{rows} === 1"));
    assert!(b.text("table.keys").contains("bulk-057"));

    b.go("/console#/events");
    let events = "document.querySelectorAll('table.events tbody tr').length";
    b.wait(&format!("{events} === 100"));
    b.click("#ev-more");
    b.wait(&format!("{events} === 105"));
    assert_eq!(
        b.js(
            "return document.querySelector('#ev-more').hidden",
            json!([])
        ),
        json!(true)
    );
    b.keys("#ev-key", &ids[103]);
    b.wait(&format!("{events} === 1"));
    b.assert_clean();
}

#[test]
fn the_console_is_off_by_default_and_sends_its_headers() {
    let dir = TempDir::new("console-off");
    let off = Server::start(&dir.db(), &[]);
    for path in ["/console", "/console/", "/console/assets/app.js"] {
        assert_eq!(off.req("GET", path, &[], None).status, 404, "{path}");
    }
    drop(off);
    // KEYGATE_CONSOLE turns it on, as --console does.
    let on = Server::start_with_env(&dir.db(), &[], &[("KEYGATE_CONSOLE", "true")]);
    for (path, status, content_type) in [
        ("/console", 200, "text/html; charset=utf-8"),
        ("/console/", 200, "text/html; charset=utf-8"),
        (
            "/console/assets/app.js",
            200,
            "text/javascript; charset=utf-8",
        ),
        (
            "/console/assets/uPlot.iife.min.js",
            200,
            "text/javascript; charset=utf-8",
        ),
        (
            "/console/assets/console.css",
            200,
            "text/css; charset=utf-8",
        ),
        (
            "/console/assets/uPlot.min.css",
            200,
            "text/css; charset=utf-8",
        ),
        ("/console/config.json", 200, "application/json"),
        ("/console/assets/nope.js", 404, "application/problem+json"),
    ] {
        let r = on.req("GET", path, &[], None);
        assert_eq!(r.status, status, "{path}");
        assert_eq!(r.header("content-type"), Some(content_type), "{path}");
        let csp = r.header("content-security-policy").unwrap();
        assert!(csp.starts_with("default-src 'self'"), "{csp}");
        assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
        assert!(!csp.contains("unsafe-"), "{csp}");
        assert_eq!(r.header("x-content-type-options"), Some("nosniff"));
        assert_eq!(r.header("referrer-policy"), Some("no-referrer"));
    }
    let html = on.req("GET", "/console", &[], None).text();
    assert!(!html.contains("<style") && !html.contains(" style=") && !html.contains(" on"));
    assert!(!html.contains("http://") && !html.contains("https://"));
    assert_eq!(
        on.req("GET", "/console/config.json", &[], None).json(),
        json!({"cascade": false})
    );
    // Logged like any request.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !on
        .log_text()
        .contains("path=/console/assets/app.js status=200")
    {
        assert!(Instant::now() < deadline, "{}", on.log_text());
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `GET /v1/whoami`: any valid key reads its own view, scopes or none.
#[test]
fn whoami_answers_the_callers_own_view() {
    let dir = TempDir::new("whoami");
    let server = Server::start(&dir.db(), &["--attenuate"]);
    let admin = server.token().to_owned();
    let r = server.authed("GET", "/v1/whoami", &admin, None);
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["name"], "bootstrap");
    assert_eq!(r.json()["kind"], "standard");
    let v = created(
        &server,
        &admin,
        "/v1/restricted_keys",
        json!({"name": "objects only", "scopes": [
            {"resource_type": "RESOURCE_TYPE_OBJECTS", "access_level": "ACCESS_LEVEL_READ"}]}),
    );
    let token = v["key_secret"].as_str().unwrap();
    let me = server.authed("GET", "/v1/whoami", token, None).json();
    assert_eq!(me["id"], v["id"]);
    assert_eq!(me["kind"], "restricted");
    assert_eq!(me["scopes"], v["scopes"]);
    assert!(me.get("key_secret").is_none());
    // Its creator is outside its subtree: not named (as in the audit log).
    assert!(me["creator_id"].is_null(), "{me}");
    // The admin, unscoped, sees creators.
    let admin_me = server.authed("GET", "/v1/whoami", &admin, None).json();
    assert!(admin_me.get("creator_id").is_some());
    // Under --attenuate it cannot read itself by id: why whoami exists.
    let own = format!("/v1/keys/{}", v["id"].as_str().unwrap());
    assert_eq!(server.authed("GET", &own, token, None).status, 403);
    server.req("GET", "/v1/whoami", &[], None).problem(401);
    // A rolled key manages nothing, itself included.
    let rolled = server.authed(
        "POST",
        &format!("/v1/keys/{}/roll", v["id"].as_str().unwrap()),
        &admin,
        Some(r#"{"overlap_ms": 60000}"#),
    );
    assert_eq!(rolled.status, 200, "{}", rolled.text());
    server.authed("GET", "/v1/whoami", token, None).problem(409);
}

/// A view still loading when its user signs out (or moves on) never renders
/// afterwards: its answers are dropped. And the skip link moves the focus
/// without leaving the page it is on.
#[test]
fn a_view_left_or_signed_out_never_renders_late() {
    let dir = TempDir::new("console-late");
    let server = Server::start(&dir.db(), &["--console"]);
    let admin = server.token().to_owned();
    let id = created(&server, &admin, "/v1/apikeys", json!({"name": "late-view"}))["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let b = Browser::start(&origin(&server));
    sign_in(&b, &admin);

    // The skip link: the Audit log stays the Audit log.
    b.js("location.hash = '#/events'", json!([]));
    b.wait("document.querySelector('main h1') && document.querySelector('main h1').textContent === 'Audit log'");
    // By keyboard, as it is meant to be used (it shows only when focused).
    b.js("document.querySelector('a.skip').focus()", json!([]));
    b.keys("a.skip", "\u{E007}");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(b.text("main h1"), "Audit log");

    // Slow answers; the key's page asked for, then sign-out at once.
    let slow = |latency: u64| {
        b.s(
            "POST",
            "/chromium/network_conditions",
            Some(
                json!({"network_conditions": {"offline": false, "latency": latency,
                "download_throughput": -1, "upload_throughput": -1}}),
            ),
        );
    };
    slow(1500);
    b.js(&format!("location.hash = '#/keys/{id}'"), json!([]));
    std::thread::sleep(Duration::from_millis(300));
    b.click("#signout");
    std::thread::sleep(Duration::from_millis(4000));
    let page = b.js(
        "return document.getElementById('main').innerText",
        json!([]),
    );
    let page = page.as_str().unwrap();
    assert!(page.contains("Signed out"), "{page}");
    assert!(!page.contains(&id) && !page.contains("late-view"), "{page}");
    b.find("#signin");
    slow(0);
}

/// Past the 2 000 keys the console reads, it says so, and the revoke
/// dialog's count becomes "at least": a tenant with many keys cannot make
/// the admin's console understate what it does not show.
#[test]
fn past_what_it_reads_the_console_says_so() {
    let dir = TempDir::new("console-many");
    let server = Server::start(&dir.db(), &["--console"]);
    let admin = server.token().to_owned();
    let admin_id = &admin[3..19];
    let auth = format!("Bearer {admin}");
    for n in 0..2010 {
        let body = format!(r#"{{"name":"bulk-{n}"}}"#);
        let r = request(
            server.addr,
            "POST",
            "/v1/apikeys",
            &[
                ("Authorization", &auth),
                ("Content-Type", "application/json"),
            ],
            Some(body.as_bytes()),
        );
        assert_eq!(r.status, 200, "{}", r.text());
    }
    let b = Browser::start(&origin(&server));
    sign_in(&b, &admin);
    b.wait("document.querySelector('#truncated')");
    assert!(b.text("#truncated").contains("more exist"));
    b.js(&format!("location.hash = '#/keys/{admin_id}'"), json!([]));
    b.wait("document.querySelector('#revoke')");
    b.click("#revoke");
    b.wait("document.querySelector('#cascade')");
    assert!(
        b.text("#cascade").contains("at least"),
        "{}",
        b.text("#cascade")
    );
    b.assert_clean();
}
