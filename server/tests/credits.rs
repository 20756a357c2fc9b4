//! Credits end to end, over real HTTP to real `keygate serve` processes:
//! spent from leases (`sync/credits.rs`), never overspent, and exact.
//!
//! * SQLite, one instance: a key's 50 credits are spent exactly once across
//!   a graceful restart (SIGTERM hands the lease back; the balance
//!   survives), and a top-up (`POST /v1/keys/{id}/credits {"add": 10}`)
//!   gives exactly 10 more.
//! * PostgreSQL, three instances, one key with 10 000 credits created
//!   through the HTTP API; eight clients spend on all three until each is
//!   refused for good (a 429 without `Retry-After`): at most 10 000
//!   allowed, and at least 9 900 once the leases have settled. Then the
//!   same with one instance killed mid-run (it forfeits what it held,
//!   nothing else is lost) and with PostgreSQL stopped mid-run. The figures
//!   are printed (`--nocapture`).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;
#[path = "support/pg.rs"]
mod pg;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use pg::TestPg;

/// A restricted key with `objects:write` and `credits` (a JSON object),
/// minted through the HTTP API: `(id, token)`.
fn create(server: &Server, admin: &str, credits: &str) -> (String, String) {
    let body = format!(
        r#"{{"scopes":[{{"resource_type":"RESOURCE_TYPE_OBJECTS","access_level":"ACCESS_LEVEL_WRITE"}}],"credits":{credits}}}"#
    );
    let resp = server.authed("POST", "/v1/restricted_keys", admin, Some(&body));
    assert_eq!(resp.status, 200, "{}", resp.text());
    let v = resp.json();
    (
        v["id"].as_str().unwrap().to_owned(),
        v["key_secret"].as_str().unwrap().to_owned(),
    )
}

/// One decision's answer: the status and its `Retry-After`, if any.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Answer {
    Allowed,
    /// 429 with `Retry-After`: credits may come.
    Wait,
    /// 429 without: refused for good.
    Refused,
    /// 401: the key has not reached this instance yet.
    Unknown,
}

/// `GET /v1/authorize` for `objects:read` at `cost` on a fresh connection;
/// `None` when the instance is gone (connection refused or reset).
fn decide(addr: SocketAddr, token: &str, cost: u32) -> Option<Answer> {
    let raw = format!(
        "GET /v1/authorize?resource_type=RESOURCE_TYPE_OBJECTS&access_level=ACCESS_LEVEL_READ&cost={cost} HTTP/1.1\r\n\
         Host: {addr}\r\nConnection: close\r\nAuthorization: Bearer {token}\r\n\r\n"
    );
    let mut stream = TcpStream::connect(addr).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    stream.write_all(raw.as_bytes()).ok()?;
    let mut buf = Vec::new();
    stream.read_to_end(&mut buf).ok()?;
    if !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        return None;
    }
    let resp = parse_response(&buf);
    Some(match resp.status {
        204 => Answer::Allowed,
        429 => {
            let v = resp.json();
            assert_eq!(
                v["type"],
                "urn:keygate:problem:credits-exhausted",
                "{}",
                resp.text()
            );
            match resp.header("retry-after") {
                Some(secs) => {
                    assert!(secs.parse::<u64>().unwrap() >= 1, "{secs}");
                    Answer::Wait
                }
                None => Answer::Refused,
            }
        }
        401 => Answer::Unknown,
        other => panic!("unexpected {other}: {}", resp.text()),
    })
}

/// Spends one credit at a time until refused for good; returns how many
/// were allowed. A 429 with `Retry-After` waits `pause` and tries again.
fn spend_all(addr: SocketAddr, token: &str, pause: Duration) -> u64 {
    let mut allowed = 0;
    loop {
        match decide(addr, token, 1) {
            Some(Answer::Allowed) => allowed += 1,
            Some(Answer::Wait) => std::thread::sleep(pause),
            Some(Answer::Refused) => return allowed,
            Some(Answer::Unknown) => panic!("the key is unknown at {addr}"),
            None => panic!("{addr} is gone"),
        }
    }
}

#[test]
fn credits_survive_a_restart_and_a_top_up_on_sqlite() {
    let dir = TempDir::new("credits-restart");
    let mut server = Server::start(&dir.db(), &[]);
    let admin = server.token().to_owned();
    let (id, token) = create(&server, &admin, r#"{"remaining":50}"#);
    let addr = server.addr;
    // 20 now: the first request after the create finds credits.
    for left in (30..50).rev() {
        let resp = server.authorize(&token, "OBJECTS", "READ");
        assert_eq!(resp.status, 204, "{}", resp.text());
        assert_eq!(
            resp.header("keygate-credits-remaining"),
            Some(left.to_string().as_str())
        );
    }
    // A graceful stop hands the lease back to the pool.
    server.sigterm();
    assert!(server.wait_exit(Duration::from_secs(20)).success());
    assert!(
        server.log_text().contains("returned the credit leases"),
        "{}",
        server.log_text()
    );
    drop(server);

    let server = Server::start(&dir.db(), &[]);
    assert_ne!(server.addr, addr);
    let first = Instant::now();
    let spent = spend_all(server.addr, &token, Duration::from_millis(20));
    assert_eq!(spent, 30, "50 credits, 20 spent before the restart");
    println!(
        "sqlite: 20 + {spent} of 50 allowed across a restart ({:.0} ms for the 30)",
        first.elapsed().as_secs_f64() * 1e3
    );

    // A top-up: exactly 10 more.
    let resp = server.authed(
        "POST",
        &format!("/v1/keys/{id}/credits"),
        &admin,
        Some(r#"{"add":10}"#),
    );
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(resp.json()["remaining"], 10);
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut more = 0;
    while more < 10 {
        match decide(server.addr, &token, 1).unwrap() {
            Answer::Allowed => more += 1,
            _ => {
                assert!(Instant::now() < deadline, "only {more} of the 10 added");
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
    // And none after them, even once the leases have had time to move.
    std::thread::sleep(Duration::from_millis(1_500));
    for _ in 0..5 {
        assert_eq!(decide(server.addr, &token, 1), Some(Answer::Refused));
    }
    println!("sqlite: a top-up of 10 allowed exactly {more}");
}

/// One cluster, a pepper file, and the instances on them.
struct Cluster {
    pg: TestPg,
    dir: TempDir,
}

impl Cluster {
    fn new(tag: &str) -> Cluster {
        Cluster {
            pg: TestPg::start(),
            dir: TempDir::new(tag),
        }
    }

    fn pepper(&self) -> PathBuf {
        self.dir.0.join("pepper")
    }

    fn serve(&self) -> Server {
        let pepper = self.pepper();
        let mut server = Server::start(
            Path::new(&self.pg.url()),
            &["--pepper-file", pepper.to_str().unwrap()],
        );
        server.bootstrap = take_bootstrap_file(&pepper);
        server
    }
}

/// Three instances and one key with `credits` credits, created on the
/// first through the HTTP API and known to all three.
fn three_with_a_key(c: &Cluster, credits: u64) -> (Vec<Server>, String) {
    let a = c.serve();
    let admin = a.token().to_owned();
    let servers = vec![a, c.serve(), c.serve()];
    let (_, token) = create(
        &servers[0],
        &admin,
        &format!(r#"{{"remaining":{credits}}}"#),
    );
    // The key reaches the other two through the change log (a probe
    // spends nothing).
    for s in &servers {
        let deadline = Instant::now() + Duration::from_secs(10);
        while decide(s.addr, &token, 0) == Some(Answer::Unknown) {
            assert!(Instant::now() < deadline, "{} never knew the key", s.addr);
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    (servers, token)
}

/// What a run of clients saw.
#[derive(Debug, Default)]
struct Run {
    /// Allowed per instance.
    allowed: [u64; 3],
    /// From the start to the last allowed request.
    last_credit: Duration,
    /// From the start to the last client's refusal for good.
    settled: Duration,
    /// Refusals with `Retry-After` (credits may come).
    waits: u64,
    /// Clients whose instance went away.
    lost_clients: usize,
}

impl Run {
    fn total(&self) -> u64 {
        self.allowed.iter().sum()
    }
}

/// `clients` threads (client `i` on instance `i % 3`) spend one credit at a
/// time until refused for good (or their instance is gone), pausing 20 ms
/// after a refusal with `Retry-After`. `meanwhile` runs on this thread with
/// the running total until it returns.
fn run_clients(
    servers: &[&Server],
    token: &str,
    clients: usize,
    meanwhile: impl FnOnce(&AtomicU64),
) -> Run {
    let addrs: Vec<SocketAddr> = servers.iter().map(|s| s.addr).collect();
    let total = Arc::new(AtomicU64::new(0));
    let per = Arc::new([AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)]);
    let waits = Arc::new(AtomicU64::new(0));
    let last = Arc::new(Mutex::new(Instant::now()));
    let start = Instant::now();
    let deadline = start + Duration::from_secs(120);
    let threads: Vec<_> = (0..clients)
        .map(|i| {
            let (addr, token) = (addrs[i % 3], token.to_owned());
            let (total, per, waits, last) = (
                Arc::clone(&total),
                Arc::clone(&per),
                Arc::clone(&waits),
                Arc::clone(&last),
            );
            std::thread::spawn(move || -> (Instant, bool) {
                loop {
                    assert!(Instant::now() < deadline, "client {i} never settled");
                    match decide(addr, &token, 1) {
                        Some(Answer::Allowed) => {
                            total.fetch_add(1, Ordering::Relaxed);
                            per[i % 3].fetch_add(1, Ordering::Relaxed);
                            *last.lock().unwrap() = Instant::now();
                        }
                        Some(Answer::Wait) => {
                            waits.fetch_add(1, Ordering::Relaxed);
                            std::thread::sleep(Duration::from_millis(20));
                        }
                        Some(Answer::Refused) => return (Instant::now(), false),
                        Some(Answer::Unknown) => panic!("the key is unknown at {addr}"),
                        None => return (Instant::now(), true),
                    }
                }
            })
        })
        .collect();
    meanwhile(&total);
    let mut settled = start;
    let mut lost_clients = 0;
    for t in threads {
        let (at, lost) = t.join().unwrap();
        settled = settled.max(at);
        lost_clients += usize::from(lost);
    }
    let last_credit = last.lock().unwrap().duration_since(start);
    Run {
        allowed: [0, 1, 2].map(|i| per[i].load(Ordering::Relaxed)),
        last_credit,
        settled: settled.duration_since(start),
        waits: waits.load(Ordering::Relaxed),
        lost_clients,
    }
}

/// Waits until `total` reaches `n`.
fn wait_for(total: &AtomicU64, n: u64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while total.load(Ordering::Relaxed) < n {
        assert!(Instant::now() < deadline, "the clients stalled");
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// The pool and the live leases of every meter, summed, from the database.
fn stored_credits(pg: &TestPg) -> (u64, u64) {
    let pool = pg.psql("SELECT COALESCE(sum(remaining), 0) FROM credit_balances");
    let leased = pg.psql("SELECT COALESCE(sum(amount), 0) FROM credit_leases");
    (pool.parse().unwrap(), leased.parse().unwrap())
}

const CREDITS: u64 = 10_000;

#[test]
fn three_postgres_instances_spend_exactly_the_credits() {
    let c = Cluster::new("credits-pg3");
    let (servers, token) = three_with_a_key(&c, CREDITS);
    let all: Vec<&Server> = servers.iter().collect();
    let run = run_clients(&all, &token, 8, |_| {});
    let total = run.total();
    println!(
        "postgres, 3 instances, 8 clients: {total} of {CREDITS} allowed ({:?} per instance); \
         last credit at {:.2} s, every client refused for good at {:.2} s ({:.2} s after); \
         {} refusals with Retry-After",
        run.allowed,
        run.last_credit.as_secs_f64(),
        run.settled.as_secs_f64(),
        (run.settled - run.last_credit).as_secs_f64(),
        run.waits
    );
    assert!(total <= CREDITS, "overspent: {total}");
    assert!(total >= CREDITS - 100, "only {total} allowed");
    assert!(
        run.settled - run.last_credit <= Duration::from_secs(30),
        "settled {:?} after the last credit",
        run.settled - run.last_credit
    );
    // Nothing left anywhere: the pool and every lease are empty.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (pool, leased) = stored_credits(&c.pg);
        if pool + leased + total == CREDITS || Instant::now() > deadline {
            println!("stored after the run: pool {pool}, leases {leased}");
            assert_eq!(pool + leased + total, CREDITS, "credits lost");
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The instance killed by SIGKILL forfeits what it held (its lease rows
/// expire and are deleted, never returned); nothing else is lost.
#[test]
fn a_killed_instance_forfeits_only_what_it_held() {
    let c = Cluster::new("credits-pg-kill");
    let (mut servers, token) = three_with_a_key(&c, CREDITS);
    let killed_at = Mutex::new(0u64);
    let mut victim = servers.pop().unwrap();
    let pid = victim.child.id();
    let all: Vec<&Server> = servers.iter().chain([&victim]).collect();
    let run = run_clients(&all, &token, 8, |total| {
        wait_for(total, 3_000);
        let status = std::process::Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        *killed_at.lock().unwrap() = total.load(Ordering::Relaxed);
    });
    let _ = victim.child.wait();
    let total = run.total();
    // The survivors expire its leases after their time-to-live (10 s).
    let deadline = Instant::now() + Duration::from_secs(30);
    let forfeited = loop {
        let found: u64 = servers
            .iter()
            .flat_map(|s| {
                s.log_text()
                    .lines()
                    .filter(|l| l.contains("expired the credit leases"))
                    .filter_map(|l| {
                        let at = l.find("credits=")? + "credits=".len();
                        l[at..]
                            .split(|ch: char| !ch.is_ascii_digit())
                            .next()?
                            .parse::<u64>()
                            .ok()
                    })
                    .collect::<Vec<_>>()
            })
            .sum();
        if found > 0 || Instant::now() > deadline {
            break found;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let (pool, leased) = stored_credits(&c.pg);
    println!(
        "postgres, one of 3 instances killed after {} allowed: {total} allowed ({:?} per \
         instance), {forfeited} forfeited as last reported; allowed + forfeited = {}; \
         {} clients lost their instance; stored after: pool {pool}, leases {leased}",
        killed_at.lock().unwrap(),
        run.allowed,
        total + forfeited,
        run.lost_clients
    );
    assert!(total <= CREDITS, "overspent: {total}");
    assert!(forfeited > 0, "the killed instance's leases never expired");
    // What it held at its last report covers what it spent after it: the
    // sum is at least the credits (nothing else lost; less the requests in
    // flight when it died, decided but never answered, at most one per
    // client it had), and above them by what it spent in its last second.
    assert!(
        total + forfeited + run.lost_clients as u64 >= CREDITS,
        "credits lost beyond the forfeit"
    );
    assert_eq!(pool + leased, 0);
}

/// PostgreSQL stopped for 2 s mid-run: each instance spends what it
/// leased, then answers with `Retry-After`; nothing is lost or spent twice.
#[test]
fn postgres_stopped_mid_run_loses_nothing() {
    let c = Cluster::new("credits-pg-down");
    let (servers, token) = three_with_a_key(&c, CREDITS);
    let stopped_at = Mutex::new(0u64);
    let during = Mutex::new(0u64);
    let all: Vec<&Server> = servers.iter().collect();
    let run = run_clients(&all, &token, 8, |total| {
        wait_for(total, 3_000);
        c.pg.stop_immediate();
        let at = total.load(Ordering::Relaxed);
        *stopped_at.lock().unwrap() = at;
        std::thread::sleep(Duration::from_secs(2));
        *during.lock().unwrap() = total.load(Ordering::Relaxed) - at;
        c.pg.pg_ctl_start();
        c.pg.wait_ready(Duration::from_secs(30));
    });
    let total = run.total();
    println!(
        "postgres stopped for 2 s after {} allowed: {} allowed while it was down; {total} of \
         {CREDITS} allowed in all ({:?} per instance); last credit at {:.2} s, settled at \
         {:.2} s; {} refusals with Retry-After",
        stopped_at.lock().unwrap(),
        during.lock().unwrap(),
        run.allowed,
        run.last_credit.as_secs_f64(),
        run.settled.as_secs_f64(),
        run.waits
    );
    assert!(total <= CREDITS, "overspent: {total}");
    assert!(total >= CREDITS - 100, "only {total} allowed");
}
