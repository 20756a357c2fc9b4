//! A real Prometheus (Debian's `prometheus`; `scripts/test.sh` installs it)
//! scrapes a running keygate: its decision counter rises after known
//! requests, as Prometheus's HTTP API reads it; `promtool check metrics`
//! accepts the exposition; and every query of the shipped Grafana dashboard
//! (`examples/grafana/keygate.json`) runs in Prometheus against it.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::io::Write;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// `prometheus` or `promtool`: `$KEYGATE_PROMETHEUS`/`$KEYGATE_PROMTOOL`, else
/// `/usr/bin`. Missing: the test fails, it never skips.
fn bin(name: &str) -> PathBuf {
    let var = format!("KEYGATE_{}", name.to_ascii_uppercase());
    installed(name, &var, "install prometheus")
}

/// A Prometheus process that scrapes one target every second.
struct Prometheus {
    child: Child,
    addr: std::net::SocketAddr,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Prometheus {
    fn start(dir: &std::path::Path, target: std::net::SocketAddr) -> Prometheus {
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
                 scrape_configs:\n  - job_name: keygate\n    static_configs:\n      - targets: ['{target}']\n"
            ),
        )
        .unwrap();
        let port = free_port();
        let child = Command::new(bin("prometheus"))
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("tsdb").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--log.level=warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let prometheus = Prometheus {
            child,
            addr: format!("127.0.0.1:{port}").parse().unwrap(),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if std::net::TcpStream::connect(prometheus.addr).is_ok()
                && request(prometheus.addr, "GET", "/-/ready", &[], None).status == 200
            {
                return prometheus;
            }
            assert!(Instant::now() < deadline, "prometheus did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// An instant query's result vector.
    fn query(&self, expr: &str) -> Vec<serde_json::Value> {
        let query: String = form_urlencoded::Serializer::new(String::new())
            .append_pair("query", expr)
            .finish();
        let resp = request(
            self.addr,
            "GET",
            &format!("/api/v1/query?{query}"),
            &[],
            None,
        );
        let v = resp.json();
        assert_eq!(v["status"], "success", "`{expr}`: {}", resp.text());
        v["data"]["result"].as_array().unwrap().clone()
    }

    /// The single sample of an instant query, once there is one (10 s).
    fn scalar(&self, expr: &str) -> f64 {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(sample) = self.query(expr).first() {
                return sample["value"][1].as_str().unwrap().parse().unwrap();
            }
            assert!(Instant::now() < deadline, "no sample for `{expr}`");
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Waits until `expr` is at least `want` (15 s).
    fn wait_at_least(&self, expr: &str, want: f64) {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let got = self.scalar(expr);
            if got >= want {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "`{expr}` stayed at {got}, below {want}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

#[test]
fn prometheus_scrapes_keygate_and_sees_its_decisions() {
    let dir = TempDir::new("prometheus");
    let server = Server::start(&dir.db(), &["--metrics-listen", "127.0.0.1:0"]);
    let prometheus = Prometheus::start(&dir.0, server.metrics_addr());
    assert_eq!(prometheus.scalar(r#"up{job="keygate"}"#), 1.0);
    let allowed = r#"keygate_authorize_decisions_total{job="keygate",outcome="allowed"}"#;
    let unauthorized = r#"keygate_authorize_decisions_total{job="keygate",outcome="unauthorized"}"#;
    let before = prometheus.scalar(allowed);
    let before_401 = prometheus.scalar(unauthorized);
    for _ in 0..5 {
        assert_eq!(
            server.authorize(server.token(), "DEVBOXES", "READ").status,
            204
        );
    }
    for _ in 0..2 {
        assert_eq!(
            server
                .req("GET", "/v1/authorize?resource_type=RESOURCE_TYPE_DEVBOXES&access_level=ACCESS_LEVEL_READ", &[], None)
                .status,
            401
        );
    }
    prometheus.wait_at_least(allowed, before + 5.0);
    prometheus.wait_at_least(unauthorized, before_401 + 2.0);
    // No more than happened.
    assert_eq!(prometheus.scalar(allowed), before + 5.0);
    assert_eq!(prometheus.scalar(r#"keygate_keys{job="keygate"}"#), 1.0);
    assert_eq!(
        prometheus.scalar(r#"keygate_build_info{job="keygate",store="sqlite"}"#),
        1.0
    );

    // promtool's lint of the exposition: names, types, units, help.
    let mut check = Command::new(bin("promtool"))
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    check
        .stdin
        .take()
        .unwrap()
        .write_all(server.scrape().as_bytes())
        .unwrap();
    let out = check.wait_with_output().unwrap();
    assert!(
        out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // The Grafana dashboard: every query parses and runs in Prometheus, and
    // each, except the PostgreSQL pool's on this SQLite server, has data.
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../examples/grafana/keygate.json"
        ))
        .unwrap(),
    )
    .unwrap();
    // Two scrapes at least since the traffic, for rate().
    std::thread::sleep(Duration::from_secs(2));
    let mut queries = 0;
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"]
                .as_str()
                .unwrap()
                .replace("$__rate_interval", "30s");
            let result = prometheus.query(&expr);
            if !expr.contains("keygate_store_pool_connections") {
                assert!(!result.is_empty(), "no data for `{expr}`");
            }
            queries += 1;
        }
    }
    assert!(queries >= 10, "{queries}");
}
