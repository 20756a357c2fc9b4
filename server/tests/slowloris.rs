//! Connections cannot be held hostage: slow header senders, silent h2c
//! connections and idle keep-alive connections are closed within their
//! timeout (plus a margin) while normal requests keep succeeding, and the
//! connection cap holds. Small timeouts via the serve flags keep each test
//! to a few seconds.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;
#[path = "common/h2c.rs"]
mod h2c;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::*;
use h2c::{Client, Proto};

/// Slack for a loaded shared CI machine, on top of each timeout.
const MARGIN: Duration = Duration::from_millis(2_500);

/// The server process's open file descriptors.
fn open_fds(server: &Server) -> usize {
    std::fs::read_dir(format!("/proc/{}/fd", server.child.id()))
        .unwrap()
        .count()
}

/// Normal clients over both protocols, every 50 ms until stopped. The
/// result: (request pairs served, slowest pair in ms); a failure panics.
struct Normal {
    stop: Arc<AtomicBool>,
    worst: Arc<AtomicU64>,
    threads: Vec<JoinHandle<u32>>,
}

impl Normal {
    fn start(addr: SocketAddr, token: &str) -> Normal {
        let stop = Arc::new(AtomicBool::new(false));
        let worst = Arc::new(AtomicU64::new(0));
        let threads = [Proto::H1, Proto::H2]
            .into_iter()
            .map(|proto| {
                let (stop, worst, token) =
                    (Arc::clone(&stop), Arc::clone(&worst), token.to_owned());
                std::thread::spawn(move || {
                    let mut n = 0;
                    while !stop.load(Ordering::Relaxed) {
                        // A fresh h2 connection each time: a new connection
                        // must get through, not only an old one.
                        let mut c = Client::new(proto, addr);
                        let t0 = Instant::now();
                        assert_eq!(c.req("GET", "/healthz", &[], None).status, 200, "{proto:?}");
                        assert_eq!(
                            c.authorize(&token, "DEVBOXES", "READ").status,
                            204,
                            "{proto:?}"
                        );
                        worst.fetch_max(t0.elapsed().as_millis() as u64, Ordering::Relaxed);
                        n += 1;
                        std::thread::sleep(Duration::from_millis(50));
                    }
                    n
                })
            })
            .collect();
        Normal {
            stop,
            worst,
            threads,
        }
    }

    /// Stops the clients; asserts they were served throughout, promptly.
    fn finish(self, seconds: u64) {
        self.stop.store(true, Ordering::Relaxed);
        let served: Vec<u32> = self
            .threads
            .into_iter()
            .map(|t| t.join().unwrap())
            .collect();
        let worst = self.worst.load(Ordering::Relaxed);
        eprintln!("normal clients: {served:?} request pairs, slowest {worst} ms");
        // At one pair per 50 ms plus the request time, at least a few a second.
        let least = (seconds * 4) as u32;
        assert!(served.iter().all(|&n| n >= least), "{served:?} < {least}");
        assert!(worst < 2_000, "a normal request pair took {worst} ms");
    }
}

/// A hostile connection and when the server closed it.
struct Hostile {
    stream: TcpStream,
    opened: Instant,
    closed: Option<Duration>,
    how: String,
}

impl Hostile {
    fn open(addr: SocketAddr, first: &[u8]) -> Hostile {
        let mut stream = TcpStream::connect(addr).unwrap();
        let opened = Instant::now();
        stream.write_all(first).unwrap();
        stream.set_nonblocking(true).unwrap();
        Hostile {
            stream,
            opened,
            closed: None,
            how: String::new(),
        }
    }

    /// Reads what is there; notes the close (EOF or reset), as the time
    /// since the connection opened.
    fn poll(&mut self) {
        if self.closed.is_some() {
            return;
        }
        let at = self.opened.elapsed();
        let mut buf = [0u8; 4096];
        loop {
            match self.stream.read(&mut buf) {
                Ok(0) => {
                    self.how = String::from("eof");
                    break self.closed = Some(at);
                }
                Ok(_) => continue,
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) => {
                    self.how = e.to_string();
                    break self.closed = Some(at);
                }
            }
        }
    }

    /// Sends one more byte of a never-ending header.
    fn dribble(&mut self) {
        if self.closed.is_some() {
            return;
        }
        let at = self.opened.elapsed();
        if let Err(e) = self.stream.write_all(b"a") {
            self.how = format!("write: {e}");
            self.closed = Some(at);
        }
    }
}

/// Polls `conns` every 100 ms (dribbling a byte if `dribble`) until all are
/// closed or `limit` passed since `start` (before the first opened); checks
/// at `midway` that none is closed yet and that the server holds their
/// descriptors. Returns how long each stayed open.
fn watch(
    server: &Server,
    conns: &mut [Hostile],
    start: Instant,
    dribble: bool,
    midway: Duration,
    limit: Duration,
) -> Vec<Duration> {
    let mut checked_midway = false;
    loop {
        let at = start.elapsed();
        for c in conns.iter_mut() {
            if dribble {
                c.dribble();
            }
            c.poll();
        }
        if !checked_midway && at >= midway {
            checked_midway = true;
            let open = conns.iter().filter(|c| c.closed.is_none()).count();
            let early: Vec<(usize, &str)> = conns
                .iter()
                .enumerate()
                .filter(|(_, c)| c.closed.is_some())
                .map(|(i, c)| (i, c.how.as_str()))
                .collect();
            assert_eq!(open, conns.len(), "closed before the timeout: {early:?}");
            let fds = open_fds(server);
            assert!(
                fds >= conns.len(),
                "the server holds only {fds} descriptors"
            );
        }
        if conns.iter().all(|c| c.closed.is_some()) || at > limit {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let open = conns.iter().filter(|c| c.closed.is_none()).count();
    assert_eq!(open, 0, "{open} connections still open after {limit:?}");
    conns.iter().map(|c| c.closed.unwrap()).collect()
}

/// Once every hostile connection is open: when to check that the server
/// holds them all (shortly), and when to give up waiting for the closes.
fn after_opening(start: Instant, timeout: Duration) -> (Duration, Duration) {
    let opened = start.elapsed();
    assert!(
        opened < timeout / 2,
        "opening the connections took {opened:?}"
    );
    (
        opened + Duration::from_millis(300),
        opened + timeout + MARGIN,
    )
}

/// Waits for the server's descriptor count to come back down.
fn assert_fds_released(server: &Server, baseline: usize) {
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let fds = open_fds(server);
        if fds <= baseline + 10 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the server still holds {fds} descriptors (baseline {baseline})"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn start(tag: &str, flags: &[&str]) -> (TempDir, Server, String) {
    let dir = TempDir::new(tag);
    let token = mint_token(&dir.db(), &["--scope", "devboxes:read"]);
    let server = Server::start(&dir.db(), flags);
    (dir, server, token)
}

#[test]
fn slow_http1_header_senders_are_closed_in_time() {
    let timeout = Duration::from_secs(2);
    let (_dir, server, token) = start("slowloris-h1", &["--header-read-timeout", "2s"]);
    let baseline = open_fds(&server);
    let normal = Normal::start(server.addr, &token);

    // 300 connections each send a request line and one header, then one
    // more byte of another header every 100 ms, forever; half of them after
    // a complete first request on the same (kept-alive) connection.
    let start = Instant::now();
    let mut conns: Vec<Hostile> = (0..300)
        .map(|i| {
            let first: &[u8] = if i % 2 == 0 {
                b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: "
            } else {
                b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\nGET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: "
            };
            Hostile::open(server.addr, first)
        })
        .collect();
    let (midway, limit) = after_opening(start, timeout);
    let closed = watch(&server, &mut conns, start, true, midway, limit);
    let (first, last) = (closed.iter().min().unwrap(), closed.iter().max().unwrap());
    eprintln!("slow HTTP/1.1 senders closed between {first:?} and {last:?}");
    assert!(*first >= timeout - Duration::from_millis(300), "{first:?}");
    assert_fds_released(&server, baseline);
    normal.finish(start.elapsed().as_secs());
}

#[test]
fn h2c_connections_that_never_send_a_frame_are_closed_in_time() {
    let timeout = Duration::from_secs(2);
    let (_dir, server, token) = start("slowloris-h2", &["--header-read-timeout", "2s"]);
    let baseline = open_fds(&server);
    let normal = Normal::start(server.addr, &token);

    // 100 each: nothing at all; the preface only; the preface, the first
    // byte of a frame, and then nothing; the preface and SETTINGS, a frame
    // but never a request.
    let mut preface_settings = h2c::PREFACE.to_vec();
    preface_settings.extend(h2c::settings());
    let start = Instant::now();
    let mut conns = Vec::new();
    for first in [
        &b""[..],
        h2c::PREFACE,
        &[h2c::PREFACE, &[0u8][..]].concat(),
        &preface_settings,
    ] {
        for _ in 0..100 {
            conns.push(Hostile::open(server.addr, first));
        }
    }
    let (midway, limit) = after_opening(start, timeout);
    let closed = watch(&server, &mut conns, start, false, midway, limit);
    let (first, last) = (closed.iter().min().unwrap(), closed.iter().max().unwrap());
    eprintln!("silent h2c connections closed between {first:?} and {last:?}");
    assert!(*first >= timeout - Duration::from_millis(300), "{first:?}");
    assert_fds_released(&server, baseline);
    normal.finish(start.elapsed().as_secs());
}

#[test]
fn idle_keep_alive_connections_are_closed() {
    let idle = Duration::from_secs(1);
    let header_read = Duration::from_secs(3);
    let (_dir, server, _token) = start(
        "idle",
        &["--header-read-timeout", "3s", "--idle-timeout", "1s"],
    );

    // HTTP/1.1: a kept-alive connection, one request, then nothing.
    let mut h1 = TcpStream::connect(server.addr).unwrap();
    h1.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    h1.set_read_timeout(Some(idle + header_read + MARGIN))
        .unwrap();
    let mut buf = [0u8; 4096];
    let n = h1.read(&mut buf).unwrap();
    assert!(
        buf[..n].starts_with(b"HTTP/1.1 200"),
        "{:?}",
        String::from_utf8_lossy(&buf[..n])
    );
    let answered = Instant::now();
    assert_eq!(h1.read(&mut buf).unwrap(), 0, "closed by the server");
    let h1_closed = answered.elapsed();

    // HTTP/2, a well-behaved client (the h2 crate): one request, then idle.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let addr = server.addr;
    let h2_closed = rt.block_on(async {
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (client, connection) = h2::client::handshake(tcp).await.unwrap();
        let driver = tokio::spawn(connection);
        let mut client = client.ready().await.unwrap();
        let request = http::Request::get(format!("http://{addr}/healthz"))
            .body(())
            .unwrap();
        let (response, _) = client.send_request(request, true).unwrap();
        assert_eq!(response.await.unwrap().status(), 200);
        let answered = Instant::now();
        tokio::time::timeout(idle + header_read + MARGIN, driver)
            .await
            .expect("the server did not close the idle h2 connection")
            .unwrap()
            .unwrap();
        answered.elapsed()
    });

    // HTTP/2, a client that answers nothing (not even the GOAWAY's PING):
    // GOAWAY after the idle timeout, dropped a header read timeout later.
    let mut raw = TcpStream::connect(server.addr).unwrap();
    let mut hello = h2c::PREFACE.to_vec();
    hello.extend(h2c::settings());
    hello.extend(h2c::get_headers(1, &server.addr.to_string(), "/healthz"));
    raw.write_all(&hello).unwrap();
    raw.set_read_timeout(Some(idle + header_read + MARGIN + Duration::from_secs(1)))
        .unwrap();
    let sent = Instant::now();
    let mut goaway = None;
    let mut head = [0u8; 9];
    let end = loop {
        if let Err(e) = raw.read_exact(&mut head) {
            break e;
        }
        let len = (usize::from(head[0]) << 16) | (usize::from(head[1]) << 8) | usize::from(head[2]);
        if head[3] == 0x7 && goaway.is_none() {
            goaway = Some(sent.elapsed());
        }
        let mut payload = vec![0u8; len];
        raw.read_exact(&mut payload).unwrap();
    };
    let eof = sent.elapsed();
    assert!(
        matches!(
            end.kind(),
            ErrorKind::UnexpectedEof | ErrorKind::ConnectionReset
        ),
        "the silent h2 connection was not closed: {end}"
    );
    let goaway = goaway.expect("no GOAWAY");

    eprintln!(
        "idle: HTTP/1.1 closed after {h1_closed:?}; h2 after {h2_closed:?}; \
         silent h2 got GOAWAY after {goaway:?}, closed after {eof:?}"
    );
    for t in [h1_closed, h2_closed, goaway] {
        assert!(
            t >= idle - Duration::from_millis(200) && t <= idle + MARGIN,
            "{t:?}"
        );
    }
    assert!(
        eof >= idle + header_read - Duration::from_millis(300),
        "{eof:?}"
    );
    assert!(eof <= idle + header_read + MARGIN, "{eof:?}");
}

#[test]
fn the_connection_cap_holds_and_frees() {
    let (_dir, server, token) = start(
        "cap",
        &["--max-connections", "8", "--header-read-timeout", "30s"],
    );
    let baseline = open_fds(&server);
    // 8 silent connections fill the cap; 40 more wait in the listen backlog
    // and cost the server no descriptor.
    let mut silent: Vec<TcpStream> = (0..48)
        .map(|_| TcpStream::connect(server.addr).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let fds = open_fds(&server);
    assert!(
        fds <= baseline + 8 + 2,
        "{fds} descriptors (baseline {baseline})"
    );
    assert!(
        server.log_text().contains("connection limit reached"),
        "{}",
        server.log_text()
    );

    // A request now waits: not answered within a second.
    let mut waiting = TcpStream::connect(server.addr).unwrap();
    waiting
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    waiting
        .set_read_timeout(Some(Duration::from_secs(1)))
        .unwrap();
    let mut buf = [0u8; 1];
    let e = waiting.read(&mut buf).unwrap_err();
    assert!(
        matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut),
        "{e}"
    );

    // The silent clients leave: every slot frees, the waiting request is
    // answered, and new ones over both protocols too.
    silent.clear();
    waiting
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let r = read_response(&mut waiting);
    assert_eq!(r.status, 200);
    for proto in [Proto::H1, Proto::H2] {
        let mut c = Client::new(proto, server.addr);
        assert_eq!(c.authorize(&token, "DEVBOXES", "READ").status, 204);
    }
    assert_fds_released(&server, baseline);
}
