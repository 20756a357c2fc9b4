//! Many `keygate serve` processes on one real PostgreSQL 15 (a throwaway
//! cluster per test, `support/pg.rs`): keys and revocations propagate
//! between instances, measured; concurrent creates; PostgreSQL stopped and
//! restarted; an instance killed mid-create; the wrong pepper refused.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;
#[path = "support/pg.rs"]
mod pg;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use pg::TestPg;
use serde_json::Value;

/// One cluster, a pepper file, and the instances started on them.
struct Cluster {
    pg: TestPg,
    dir: TempDir,
    url: String,
}

impl Cluster {
    fn new(tag: &str) -> Cluster {
        let pg = TestPg::start();
        Cluster {
            url: pg.url(),
            pg,
            dir: TempDir::new(tag),
        }
    }

    /// A cluster that serves TLS, and instances that connect with
    /// `sslmode=verify-full` to `localhost` against the test's CA.
    fn new_tls(tag: &str) -> Cluster {
        let pg = TestPg::start_tls(&["localhost", "127.0.0.1"]);
        Cluster {
            url: format!(
                "postgres://postgres@localhost:{}/keygate?sslmode=verify-full&sslrootcert={}",
                pg.port,
                pg.ca_file().display()
            ),
            pg,
            dir: TempDir::new(tag),
        }
    }

    fn url(&self) -> String {
        self.url.clone()
    }

    fn pepper(&self) -> PathBuf {
        self.dir.0.join("pepper")
    }

    /// Starts `keygate serve` on the cluster; the first start on an empty
    /// database writes the bootstrap key beside the pepper file.
    fn serve(&self, extra: &[&str]) -> Server {
        let pepper = self.pepper();
        let mut args = vec!["--pepper-file", pepper.to_str().unwrap()];
        args.extend_from_slice(extra);
        let mut server = Server::start(Path::new(&self.url()), &args);
        server.bootstrap = take_bootstrap_file(&pepper);
        server
    }

    /// Runs a CLI command on the cluster.
    fn cli(&self, command: &[&str], args: &[&str]) -> (bool, String, String) {
        let pepper = self.pepper();
        let mut all = vec!["--pepper-file", pepper.to_str().unwrap()];
        all.extend_from_slice(args);
        cli(Path::new(&self.url()), command, &all)
    }
}

fn create(server: &Server, admin: &str) -> (String, String) {
    let r = server.authed("POST", "/v1/apikeys", admin, Some("{}"));
    assert_eq!(r.status, 200, "{}", r.text());
    let v: Value = r.json();
    (
        v["id"].as_str().unwrap().to_owned(),
        v["key_secret"].as_str().unwrap().to_owned(),
    )
}

fn status(server: &Server, token: &str) -> u16 {
    let s = server.authorize(token, "OBJECTS", "READ").status;
    assert!(s == 204 || s == 401, "{s}");
    s
}

/// Polls `server` until `token` answers `want`; returns how long it took.
fn until(server: &Server, token: &str, want: u16, limit: Duration) -> Duration {
    let start = Instant::now();
    loop {
        if status(server, token) == want {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < limit,
            "{} never answered {want} for the key",
            server.addr
        );
        std::thread::sleep(Duration::from_micros(500));
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// A key created on A is accepted by B and C; a key revoked on one instance
/// is refused by the other two. Over 210 revocations (rotating which
/// instance revokes), the time from the 204 to the moment every other
/// instance refuses the key is measured and printed. The assertion is the
/// design bound (p99 within the 1 s poll promise, on a debug build sharing
/// a busy 2-core machine); BENCHMARKS.md has the release-build figures
/// against the 100 ms target.
#[test]
fn keys_and_revocations_propagate_between_three_instances() {
    propagate(&Cluster::new("pg-propagate"), 210);
}

/// The same over TLS (`sslmode=verify-full`): every connection of every
/// instance, the listener's included, is encrypted.
#[test]
fn keys_and_revocations_propagate_between_three_instances_over_tls() {
    let c = Cluster::new_tls("pg-propagate-tls");
    let _servers = propagate(&c, 60);
    let count = |filter: &str| {
        c.pg.psql(&format!(
            "SELECT count(*) FROM pg_stat_activity JOIN pg_stat_ssl USING (pid) \
             WHERE application_name = 'keygate' AND {filter}"
        ))
    };
    assert_eq!(count("NOT ssl"), "0");
    assert_eq!(
        count("ssl AND query LIKE 'LISTEN%'"),
        "3",
        "the three listeners"
    );
}

/// Three instances on `c`; `n` keys created round-robin, then revoked one by
/// one, each refusal timed on the other two instances.
fn propagate(c: &Cluster, n: usize) -> [Server; 3] {
    let a = c.serve(&[]);
    let admin = a.token().to_owned();
    let b = c.serve(&[]);
    let d = c.serve(&[]);
    assert!(b.bootstrap.is_none() && d.bootstrap.is_none());
    let servers = [&a, &b, &d];

    let (_, key) = create(&a, &admin);
    for s in [&b, &d] {
        let t = until(s, &key, 204, Duration::from_secs(2));
        eprintln!("created on A, accepted by {}: {:.1} ms", s.addr, ms(t));
    }

    let keys: Vec<(String, String)> = (0..n).map(|i| create(servers[i % 3], &admin)).collect();
    for (_, token) in &keys {
        for s in servers {
            until(s, token, 204, Duration::from_secs(5));
        }
    }
    // `KEYGATE_FLOOD_CLIENTS=N` (by hand, for BENCHMARKS.md): N clients
    // flood B with `GET /v1/keys?limit=100` while the revocations run; the
    // follower reads the log on a connection of its own.
    let flooding = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let flood: Vec<_> = (0..std::env::var("KEYGATE_FLOOD_CLIENTS")
        .ok()
        .and_then(|n| n.parse::<usize>().ok())
        .unwrap_or(0))
        .map(|_| {
            let (addr, admin, flooding) = (b.addr, admin.clone(), Arc::clone(&flooding));
            std::thread::spawn(move || {
                let auth = format!("Bearer {admin}");
                let mut n = 0u64;
                while flooding.load(std::sync::atomic::Ordering::Relaxed) {
                    let r = request(
                        addr,
                        "GET",
                        "/v1/keys?limit=100",
                        &[("Authorization", &auth)],
                        None,
                    );
                    assert_eq!(r.status, 200);
                    n += 1;
                }
                n
            })
        })
        .collect();
    let mut lags = Vec::with_capacity(n);
    for (i, (id, token)) in keys.iter().enumerate() {
        let revoker = servers[i % 3];
        let others: Vec<&Server> = servers
            .iter()
            .copied()
            .filter(|s| s.addr != revoker.addr)
            .collect();
        let r = revoker.authed("DELETE", &format!("/v1/keys/{id}"), &admin, None);
        assert_eq!(r.status, 204, "{}", r.text());
        let revoked_at = Instant::now();
        // The revoker itself refuses at once.
        assert_eq!(status(revoker, token), 401);
        // Poll the other two in parallel; the lag is when the last refuses.
        let lag = std::thread::scope(|scope| {
            let handles: Vec<_> = others
                .iter()
                .map(|s| {
                    scope.spawn(move || {
                        until(s, token, 401, Duration::from_secs(5));
                        revoked_at.elapsed()
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap())
                .max()
                .unwrap()
        });
        lags.push(lag);
    }
    flooding.store(false, std::sync::atomic::Ordering::Relaxed);
    let listed: u64 = flood.into_iter().map(|t| t.join().unwrap()).sum();
    if listed > 0 {
        eprintln!("flood: {listed} list requests on B during the revocations");
    }
    lags.sort();
    let (p50, p99, max) = (
        percentile(&lags, 0.5),
        percentile(&lags, 0.99),
        *lags.last().unwrap(),
    );
    eprintln!(
        "revocation propagation over {n} revocations (3 instances, loopback): \
         p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        ms(p50),
        ms(p99),
        ms(max)
    );
    assert!(p99 <= Duration::from_secs(1), "p99 {p99:?} over 1 s");
    // Every instance still accepts the first key and refuses all revoked ones.
    for s in servers {
        assert_eq!(status(s, &key), 204);
    }
    [a, b, d]
}

/// 3 instances × 100 concurrent creates: 300 distinct keys, each accepted
/// by every instance, and a gap-free change log.
#[test]
fn concurrent_creates_on_three_instances_give_unique_keys_everywhere() {
    let c = Cluster::new("pg-creates");
    let a = c.serve(&[]);
    let admin = a.token().to_owned();
    let b = c.serve(&[]);
    let d = c.serve(&[]);
    let servers = [&a, &b, &d];
    let created: Vec<(String, String)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..300)
            .map(|i| {
                let s = servers[i % 3];
                let admin = &admin;
                scope.spawn(move || create(s, admin))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let ids: BTreeSet<&str> = created.iter().map(|(id, _)| id.as_str()).collect();
    assert_eq!(ids.len(), 300);
    for (_, token) in &created {
        for s in servers {
            until(s, token, 204, Duration::from_secs(5));
        }
    }
    // Every instance lists all 301 keys (300 + bootstrap).
    for s in servers {
        let mut listed = BTreeSet::new();
        let mut after = String::new();
        loop {
            let q = if after.is_empty() {
                "/v1/keys?limit=100".to_owned()
            } else {
                format!("/v1/keys?limit=100&starting_after={after}")
            };
            let v = s.authed("GET", &q, &admin, None).json();
            for k in v["keys"].as_array().unwrap() {
                listed.insert(k["id"].as_str().unwrap().to_owned());
            }
            after = listed.iter().next_back().unwrap().clone();
            if !v["has_more"].as_bool().unwrap() {
                break;
            }
        }
        assert_eq!(listed.len(), 301);
        assert!(ids.iter().all(|id| listed.contains(*id)));
    }
    // The log's sequence numbers are 1..=301 with no gap.
    assert_eq!(
        c.pg.psql("SELECT count(*), min(seq), max(seq) FROM changes"),
        "301|1|301"
    );
}

/// PostgreSQL stopped hard: authorize answers from memory, creates get 503
/// with Retry-After, `/readyz` is 503 and `/healthz` 200, a CLI revocation
/// waits for the database; after the restart every instance applies the
/// revocation made while it was cut off, and no key is lost.
#[test]
fn postgres_down_then_back() {
    let c = Cluster::new("pg-down");
    let a = c.serve(&[]);
    let admin = a.token().to_owned();
    let b = c.serve(&[]);
    let (victim_id, victim) = create(&a, &admin);
    let (_, keeper) = create(&b, &admin);
    for s in [&a, &b] {
        until(s, &victim, 204, Duration::from_secs(2));
        until(s, &keeper, 204, Duration::from_secs(2));
    }
    let before: String = c.pg.psql("SELECT count(*) FROM keys");

    c.pg.stop_immediate();
    for s in [&a, &b] {
        assert_eq!(status(s, &victim), 204, "authorize answers from memory");
        assert_eq!(status(s, &admin), 204);
        let r = s.authed("POST", "/v1/apikeys", &admin, Some("{}"));
        r.problem(503);
        assert!(r.header("retry-after").is_some(), "503 carries Retry-After");
        assert_eq!(s.req("GET", "/readyz", &[], None).status, 503);
        assert_eq!(s.req("GET", "/healthz", &[], None).status, 200);
    }

    // A CLI revocation from another process waits for the database.
    let pepper = c.pepper();
    let url = c.url();
    let mut revoker = Command::new(BIN)
        .args(["revoke", &victim_id, "--db", &url, "--pepper-file"])
        .arg(&pepper)
        .env("KEYGATE_DB_WAIT", "60")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        revoker.try_wait().unwrap().is_none(),
        "the CLI waits while the database is down"
    );
    c.pg.pg_ctl_start();
    let out = revoker.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "CLI revoke after restart: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    for s in [&a, &b] {
        let t = until(s, &victim, 401, Duration::from_secs(5));
        eprintln!(
            "after the restart, {} refused the revoked key in {:.0} ms",
            s.addr,
            ms(t)
        );
        assert_eq!(status(s, &keeper), 204, "no key lost");
        let deadline = Instant::now() + Duration::from_secs(5);
        while s.req("GET", "/readyz", &[], None).status != 200 {
            assert!(Instant::now() < deadline, "readyz back to 200");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    assert_eq!(c.pg.psql("SELECT count(*) FROM keys"), before);
    // Writes work again, and reach the other instance.
    let (_, fresh) = create(&a, &admin);
    until(&b, &fresh, 204, Duration::from_secs(2));
}

/// An instance SIGKILLed while creates are in flight leaves no half-written
/// key: every key row has its `created` event and the reverse, and every
/// create that was answered 200 works on a new instance.
#[test]
fn sigkill_mid_create_leaves_no_half_written_key() {
    let c = Cluster::new("pg-kill");
    let a = c.serve(&[]);
    let admin = a.token().to_owned();
    let addr = a.addr;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let answered: Vec<String> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..8)
            .map(|_| {
                let stop = Arc::clone(&stop);
                let admin = &admin;
                scope.spawn(move || {
                    let mut ok = Vec::new();
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        let auth = format!("Bearer {admin}");
                        let r = std::panic::catch_unwind(|| {
                            request(
                                addr,
                                "POST",
                                "/v1/apikeys",
                                &[("Authorization", &auth)],
                                Some(b"{}"),
                            )
                        });
                        match r {
                            Ok(r) if r.status == 200 => {
                                ok.push(r.json()["key_secret"].as_str().unwrap().to_owned())
                            }
                            _ => break,
                        }
                    }
                    ok
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(700));
        a.signal("KILL");
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });
    drop(a);
    assert!(
        answered.len() > 5,
        "creates were in flight: {}",
        answered.len()
    );
    assert_eq!(
        c.pg.psql(
            "SELECT count(*) FROM keys k WHERE NOT EXISTS \
             (SELECT 1 FROM changes c WHERE c.key_id = k.id AND c.action = 'created')"
        ),
        "0",
        "a key without its created event"
    );
    assert_eq!(
        c.pg.psql(
            "SELECT count(*) FROM changes c WHERE c.action = 'created' AND NOT EXISTS \
             (SELECT 1 FROM keys k WHERE k.id = c.key_id)"
        ),
        "0",
        "an event without its key"
    );
    let b = c.serve(&[]);
    for token in &answered {
        assert_eq!(status(&b, token), 204, "a key answered 200 is there");
    }
    let rows: usize = c.pg.psql("SELECT count(*) FROM keys").parse().unwrap();
    assert!(rows > answered.len(), "bootstrap + every answered key");
}

/// A pepper file other than the one the database was made with is refused
/// at start-up with a message that says so; a URL without `--pepper-file`
/// is refused too; `KEYGATE_DATABASE_URL` selects the database.
#[test]
fn the_wrong_pepper_is_refused_at_startup() {
    let c = Cluster::new("pg-pepper");
    let a = c.serve(&[]);
    drop(a);
    let wrong = c.dir.0.join("wrong-pepper");
    std::fs::write(&wrong, [42u8; 32]).unwrap();
    let run = |args: &[&str], env: Option<&str>| {
        let mut cmd = Command::new(BIN);
        cmd.args(args).env("KEYGATE_DB_WAIT", "0");
        if let Some(url) = env {
            cmd.env("KEYGATE_DATABASE_URL", url);
        }
        cmd.output().unwrap()
    };
    let url = c.url();
    let out = run(
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--db",
            &url,
            "--pepper-file",
            wrong.to_str().unwrap(),
        ],
        None,
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("pepper file does not belong to this database"),
        "{err}"
    );
    assert!(!err.contains("listening on"));

    let out = run(&["serve", "--listen", "127.0.0.1:0", "--db", &url], None);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("needs `--pepper-file PATH`"), "{err}");

    // The environment variable instead of --db, for the CLI as for serve.
    let pepper = c.pepper();
    let out = run(
        &["list", "--json", "--pepper-file", pepper.to_str().unwrap()],
        Some(&url),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listed: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 1, "the bootstrap key");
    let (ok, _, err) = c.cli(&["events"], &[]);
    assert!(ok, "{err}");
}

/// Starts `n` instances at once on the cluster's empty database, instance
/// `i` with the pepper file `peppers[i]`, and waits until all listen.
fn serve_at_once(c: &Cluster, peppers: &[PathBuf]) -> Vec<Server> {
    let url = c.url();
    std::thread::scope(|scope| {
        let handles: Vec<_> = peppers
            .iter()
            .map(|p| {
                let url = url.clone();
                scope.spawn(move || {
                    Server::start(Path::new(&url), &["--pepper-file", p.to_str().unwrap()])
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

/// Several instances started at once on one empty database bootstrap it
/// exactly once, whether each has its own copy of the pepper file (one
/// machine each) or they share one (one file system): one key, one
/// bootstrap file, and its token is accepted everywhere.
#[test]
fn instances_started_at_once_on_an_empty_database_bootstrap_it_once() {
    for shared_file in [false, true] {
        let c = Cluster::new("pg-bootstrap-race");
        let peppers: Vec<PathBuf> = (0..4)
            .map(|i| {
                let p = if shared_file {
                    c.pepper()
                } else {
                    let dir = c.dir.0.join(format!("machine-{i}"));
                    std::fs::create_dir_all(&dir).unwrap();
                    dir.join("pepper")
                };
                std::fs::write(&p, [7u8; 32]).unwrap();
                p
            })
            .collect();
        let servers = serve_at_once(&c, &peppers);
        let files: BTreeSet<PathBuf> = peppers
            .iter()
            .map(|p| bootstrap_path(p))
            .filter(|f| f.exists())
            .collect();
        assert_eq!(files.len(), 1, "shared file {shared_file}: {files:?}");
        let token = take_bootstrap_file(&peppers[0])
            .or_else(|| peppers.iter().find_map(|p| take_bootstrap_file(p)))
            .unwrap();
        assert_eq!(
            c.pg.psql("SELECT count(*) FROM keys").trim(),
            "1",
            "shared file {shared_file}"
        );
        for s in &servers {
            until(s, &token, 204, Duration::from_secs(5));
        }
        let bootstrapped = servers
            .iter()
            .filter(|s| s.log_text().contains("bootstrap key created"))
            .count();
        assert_eq!(bootstrapped, 1, "shared file {shared_file}");
    }
}
