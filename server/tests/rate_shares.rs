//! One key's rate limit enforced by three `keygate serve` processes on one
//! throwaway PostgreSQL (issue 19), over real HTTP: load split 70/20/10
//! between the instances, twice the limit in all, for 20 s; the instances
//! together allow what one would, within the bound `docs/operations.md`
//! proves ("Rate limits across instances"). Then PostgreSQL stops, and each
//! instance goes on within its last share. And on SQLite, one instance keeps
//! the whole limit.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;
#[path = "support/pg.rs"]
mod pg;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use pg::TestPg;

/// The key's limit: 200 per second.
const LIMIT: u64 = 200;

const AUTHORIZE: &str =
    "/v1/authorize?resource_type=RESOURCE_TYPE_OBJECTS&access_level=ACCESS_LEVEL_READ";

/// A restricted key limited to [`LIMIT`] per second, minted on `server`.
fn limited_key(server: &Server) -> String {
    let body = format!(
        r#"{{"scopes":[{{"resource_type":"RESOURCE_TYPE_OBJECTS","access_level":"ACCESS_LEVEL_READ"}}],"rate_limit":{{"limit":{LIMIT},"period_ms":1000}}}}"#
    );
    let resp = server.authed("POST", "/v1/restricted_keys", server.token(), Some(&body));
    assert_eq!(resp.status, 200, "{}", resp.text());
    resp.json()["key_secret"].as_str().unwrap().to_owned()
}

/// The quota `server` enforces for `token` now (its `RateLimit-Policy`),
/// asked at cost 0: nothing spent. `None` while it does not limit the key.
fn quota(server: &Server, token: &str) -> Option<u64> {
    let resp = server.authed("GET", &format!("{AUTHORIZE}&cost=0"), token, None);
    assert!(resp.status == 204 || resp.status == 429 || resp.status == 401);
    let policy = resp.header("ratelimit-policy")?;
    let q = policy.split(";q=").nth(1)?.split(';').next()?;
    Some(q.parse().unwrap())
}

/// One keep-alive HTTP/1.1 connection sending `GET /v1/authorize`.
struct Client {
    reader: BufReader<TcpStream>,
    request: Vec<u8>,
}

impl Client {
    fn connect(addr: SocketAddr, token: &str) -> Client {
        let stream = TcpStream::connect(addr).unwrap();
        stream.set_nodelay(true).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let request = format!(
            "GET {AUTHORIZE} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\n\r\n"
        )
        .into_bytes();
        Client {
            reader: BufReader::new(stream),
            request,
        }
    }

    /// Sends one request and returns its status.
    fn authorize(&mut self) -> u16 {
        self.reader.get_mut().write_all(&self.request).unwrap();
        let mut line = String::new();
        self.reader.read_line(&mut line).unwrap();
        let status: u16 = line.split(' ').nth(1).unwrap().parse().unwrap();
        let mut length = 0usize;
        loop {
            line.clear();
            self.reader.read_line(&mut line).unwrap();
            let header = line.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    length = value.trim().parse().unwrap();
                }
            }
        }
        let mut body = vec![0u8; length];
        self.reader.read_exact(&mut body).unwrap();
        status
    }
}

/// What one instance's clients saw.
#[derive(Default)]
struct Tally {
    sent: AtomicU64,
    allowed: AtomicU64,
    refused: AtomicU64,
}

/// Sends `rate(elapsed)` requests per second to `addr` for `run`, from
/// `workers` connections, each on its own schedule (open loop: a late
/// request goes at once, a schedule more than 100 ms behind skips ahead).
/// Counts 204s and 429s; anything else fails the test.
fn load(
    addr: SocketAddr,
    token: &str,
    rate: impl Fn(Duration) -> f64 + Copy + Send + 'static,
    workers: u32,
    run: Duration,
) -> Arc<Tally> {
    let tally = Arc::new(Tally::default());
    let start = Instant::now();
    let handles: Vec<_> = (0..workers)
        .map(|w| {
            let tally = Arc::clone(&tally);
            let token = token.to_owned();
            std::thread::spawn(move || {
                let mut client = Client::connect(addr, &token);
                let every = |at: Instant| {
                    Duration::from_secs_f64(f64::from(workers) / rate(at - start).max(0.1))
                };
                let mut next = start + every(start).mul_f64(f64::from(w) / f64::from(workers));
                while next < start + run {
                    let now = Instant::now();
                    if next > now {
                        std::thread::sleep(next - now);
                    } else if now - next > Duration::from_millis(100) {
                        next = now;
                    }
                    tally.sent.fetch_add(1, Ordering::Relaxed);
                    match client.authorize() {
                        204 => tally.allowed.fetch_add(1, Ordering::Relaxed),
                        429 => tally.refused.fetch_add(1, Ordering::Relaxed),
                        other => panic!("{addr} answered {other}"),
                    };
                    next += every(next);
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    tally
}

/// Rows written to the demand tables so far (inserted or updated), as
/// PostgreSQL's statistics count them: heartbeats (one per exchange
/// statement) and demand rows.
fn writes(pg: &TestPg) -> (u64, u64) {
    let text = pg.psql(
        "SELECT coalesce(sum(n_tup_ins + n_tup_upd) FILTER (WHERE relname = 'rate_instances'), 0) \
             || ' ' || \
                coalesce(sum(n_tup_ins + n_tup_upd) FILTER (WHERE relname = 'rate_demand'), 0) \
         FROM pg_stat_user_tables",
    );
    let (beats, rows) = text.split_once(' ').unwrap();
    (beats.parse().unwrap(), rows.parse().unwrap())
}

/// The parts of the load of the issue: 70/20/10.
const PARTS: [f64; 3] = [0.7, 0.2, 0.1];

/// The load of the issue: 280, 80 and 40 requests per second (70/20/10,
/// twice the limit in all) on three instances; with `rotate`, the parts
/// move one instance on every `rotate` (A's 70 % to B, and so on). Returns
/// each instance's tally and the seconds the run took.
fn split_load(
    servers: [&Server; 3],
    token: &str,
    run: Duration,
    rotate: Option<Duration>,
) -> (Vec<Arc<Tally>>, f64) {
    let started = Instant::now();
    let tallies: Vec<Arc<Tally>> = std::thread::scope(|s| {
        let runs: Vec<_> = servers
            .iter()
            .enumerate()
            .map(|(i, server)| {
                let addr = server.addr;
                let rate = move |at: Duration| {
                    let step = rotate.map_or(0, |r| (at.as_millis() / r.as_millis()) as usize);
                    2.0 * LIMIT as f64 * PARTS[(i + 3 - step % 3) % 3]
                };
                let workers = if rotate.is_some() { 4 } else { [4, 2, 1][i] };
                s.spawn(move || load(addr, token, rate, workers, run))
            })
            .collect();
        runs.into_iter().map(|r| r.join().unwrap()).collect()
    });
    (tallies, started.elapsed().as_secs_f64())
}

/// A cluster of three instances on one new PostgreSQL, and a key limited
/// to [`LIMIT`] that each of them limits, split evenly while no one asks.
fn three_instances(pg: &TestPg, dir: &TempDir) -> ([Server; 3], String) {
    let pepper = dir.0.join("pepper");
    let serve = || {
        let mut server = Server::start(
            Path::new(&pg.url()),
            &["--pepper-file", pepper.to_str().unwrap()],
        );
        server.bootstrap = take_bootstrap_file(&pepper);
        server
    };
    let servers = [serve(), serve(), serve()];
    let token = limited_key(&servers[0]);
    // Every instance limits the key (from the change feed, with the limit
    // the store keeps), and with three of them, splits it evenly until
    // someone asks.
    let deadline = Instant::now() + Duration::from_secs(5);
    for s in &servers {
        while quota(s, &token) != Some(LIMIT / 3) {
            assert!(Instant::now() < deadline, "{} never took its share", s.addr);
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    (servers, token)
}

fn print_run(what: &str, tallies: &[Arc<Tally>], secs: f64) -> u64 {
    let mut total = 0;
    for (name, t) in ["A", "B", "C"].iter().zip(tallies) {
        let (sent, allowed, refused) = (
            t.sent.load(Ordering::Relaxed),
            t.allowed.load(Ordering::Relaxed),
            t.refused.load(Ordering::Relaxed),
        );
        total += allowed;
        eprintln!(
            "{what}: {name}: offered {:.0}/s, allowed {allowed} ({:.1}/s), refused {refused}",
            sent as f64 / secs,
            allowed as f64 / secs
        );
    }
    total
}

#[test]
fn three_instances_allow_one_rate_limit_between_them() {
    let pg = TestPg::start();
    let dir = TempDir::new("rate-shares");
    let (instances, token) = three_instances(&pg, &dir);
    let [a, b, c] = &instances;
    let servers = [a, b, c];

    const RUN: Duration = Duration::from_secs(20);
    let before = writes(&pg);
    let (tallies, secs) = split_load(servers, &token, RUN, None);
    let steady: Vec<u64> = servers.iter().map(|s| quota(s, &token).unwrap()).collect();
    // Statistics reach the views within a second.
    std::thread::sleep(Duration::from_millis(1_500));
    let after = writes(&pg);
    let total = print_run("shared", &tallies, secs);
    let one = LIMIT as f64 * RUN.as_secs_f64();
    let ratio = total as f64 / one;
    eprintln!(
        "shared: allowed {total} in {secs:.1} s; one instance would allow {one:.0} (+{LIMIT} burst): \
         {:.1}%",
        ratio * 100.0
    );
    eprintln!("shared: quotas under load (RateLimit-Policy q): {steady:?}");
    assert!(steady.iter().sum::<u64>() <= LIMIT, "{steady:?}");
    let window = secs + 1.5;
    let statements = (after.0 - before.0) as f64 / window / 3.0;
    let rows = (after.1 - before.1) as f64 / window;
    eprintln!(
        "shared: store writes: {statements:.1} statements/s per instance, \
         {rows:.1} demand rows/s for the hot key (all instances), at {:.0} requests/s",
        tallies
            .iter()
            .map(|t| t.sent.load(Ordering::Relaxed))
            .sum::<u64>() as f64
            / secs
    );
    assert!(
        total as f64 <= 1.05 * (one + LIMIT as f64),
        "allowed {total} > 105% of {one} + {LIMIT}"
    );
    assert!(total as f64 >= 0.90 * one, "allowed {total} < 90% of {one}");
    // Each instance got about its part of the demand.
    for (t, part) in tallies.iter().zip(PARTS) {
        let got = t.allowed.load(Ordering::Relaxed) as f64 / total as f64;
        assert!((got - part).abs() < 0.05, "{got} for {part}");
    }
    // One statement per instance per 200 ms tick, whatever the load.
    assert!(statements <= 5.5, "{statements} statements/s per instance");
    assert!(rows <= 3.0 * 5.5, "{rows} rows/s for one key");

    // PostgreSQL stops: each instance keeps deciding alone, within its last
    // share (its burst, then its rate), and the three together within the
    // limit. (Idle for a second and a half, the shares are below their sum
    // under load: each instance's own demand fades a tick before the others'
    // reports of theirs do.)
    let last: Vec<u64> = servers.iter().map(|s| quota(s, &token).unwrap()).collect();
    assert!(last.iter().sum::<u64>() <= LIMIT, "{last:?}");
    pg.stop_immediate();
    const CUT: Duration = Duration::from_secs(5);
    let (tallies, secs) = split_load(servers, &token, CUT, None);
    let total = print_run("PostgreSQL down", &tallies, secs);
    let quotas: Vec<u64> = servers.iter().map(|s| quota(s, &token).unwrap()).collect();
    eprintln!(
        "PostgreSQL down: allowed {total} in {secs:.1} s ({:.1}% of {LIMIT}/s); quotas {quotas:?}",
        total as f64 / (LIMIT as f64 * CUT.as_secs_f64()) * 100.0
    );
    assert_eq!(quotas, last, "the shares stay as they were");
    for (t, q) in tallies.iter().zip(&last) {
        let allowed = t.allowed.load(Ordering::Relaxed) as f64;
        let bound = *q as f64 * (secs + 1.0) + 1.0;
        assert!(allowed <= bound, "{allowed} > {bound}");
        assert!(allowed >= 0.9 * *q as f64 * secs, "{allowed} for {q}/s");
    }
    for s in servers {
        assert!(s
            .log_text()
            .contains("rate-limit shares: cannot exchange demand"));
    }
}

/// The same load, its parts moving one instance on every 4 s: what the
/// shares' lag costs. By hand (`--ignored --nocapture`), for the figures of
/// docs/operations.md.
#[test]
#[ignore = "a measurement, by hand"]
fn moving_load() {
    let pg = TestPg::start();
    let dir = TempDir::new("rate-shares-moving");
    let (instances, token) = three_instances(&pg, &dir);
    let [a, b, c] = &instances;
    const RUN: Duration = Duration::from_secs(20);
    let (tallies, secs) = split_load([a, b, c], &token, RUN, Some(Duration::from_secs(4)));
    let total = print_run("moving", &tallies, secs);
    let one = LIMIT as f64 * RUN.as_secs_f64();
    eprintln!(
        "moving: allowed {total} in {secs:.1} s: {:.1}% of {one:.0}",
        total as f64 / one * 100.0
    );
    assert!(total as f64 <= 1.05 * (one + LIMIT as f64), "{total}");
}

/// One instance on SQLite: the exchange finds no other, the key keeps its
/// whole limit, and the limit is exact: a burst of 200, then nothing.
#[test]
fn one_instance_on_sqlite_keeps_the_whole_limit() {
    let dir = TempDir::new("rate-shares-sqlite");
    let server = Server::start(&dir.db(), &[]);
    let token = limited_key(&server);
    assert_eq!(quota(&server, &token), Some(LIMIT));
    let mut client = Client::connect(server.addr, &token);
    let started = Instant::now();
    let allowed = (0..LIMIT + 50)
        .filter(|_| client.authorize() == 204)
        .count() as u64;
    // The burst, and what drained while the requests were sent.
    let drained = (started.elapsed().as_secs_f64() * LIMIT as f64).ceil() as u64;
    assert!(
        (LIMIT..=LIMIT + drained).contains(&allowed),
        "{allowed} with {drained} drained"
    );
    // Several ticks later, the share is still whole.
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(quota(&server, &token), Some(LIMIT));
}
