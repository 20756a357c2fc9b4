//! Request bodies cannot hold connections hostage: a body that does not
//! arrive within `--body-read-timeout` gets 408 and (HTTP/1.1) a closed
//! connection, over HTTP/1.1 and h2c, with the connection cap reached by
//! stalled bodies alone; the slots come back and `/healthz` answers. And the
//! unauthenticated `POST /v1/keys/revoke` reads at most 1 KiB.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;
#[path = "common/h2c.rs"]
mod h2c;

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;

/// Slack for a loaded shared CI machine, on top of each timeout.
const MARGIN: Duration = Duration::from_millis(2_500);
/// The body read timeout the servers here run with.
const BODY_TIMEOUT: Duration = Duration::from_secs(1);

fn start(dir: &TempDir, max_connections: &str) -> Server {
    Server::start(
        &dir.db(),
        &[
            "--max-connections",
            max_connections,
            "--body-read-timeout",
            "1s",
            "--header-read-timeout",
            "1s",
            "--idle-timeout",
            "1s",
        ],
    )
}

/// Opens a connection and sends `head` (and `body`, the start of the
/// announced body) without `Connection: close`, then nothing more.
fn stall(addr: SocketAddr, head: &str, body: &[u8]) -> TcpStream {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.write_all(head.as_bytes()).unwrap();
    stream.write_all(body).unwrap();
    stream
        .set_read_timeout(Some(BODY_TIMEOUT + MARGIN))
        .unwrap();
    stream
}

#[test]
fn stalled_http1_bodies_get_408_and_give_their_slots_back() {
    let dir = TempDir::new("body-h1");
    let server = start(&dir, "4");
    let admin = server.token().to_owned();
    let id = &admin[3..19];
    let addr = server.addr;
    let t0 = Instant::now();
    // Four connections, the cap, each with a body that never completes:
    // the unauthenticated self-revoke (nothing sent, and a few bytes sent),
    // and two authenticated routes that read a body.
    let mut stalled = vec![
        (
            "revoke, no body byte",
            stall(
                addr,
                &format!(
                    "POST /v1/keys/revoke HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 100\r\n\r\n"
                ),
                b"",
            ),
        ),
        (
            "apikeys",
            stall(
                addr,
                &format!(
                    "POST /v1/apikeys HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {admin}\r\nContent-Length: 100\r\n\r\n"
                ),
                b"{\"name\"",
            ),
        ),
        (
            "roll",
            stall(
                addr,
                &format!(
                    "POST /v1/keys/{id}/roll HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {admin}\r\nContent-Length: 100\r\n\r\n"
                ),
                b"",
            ),
        ),
    ];
    // The fourth trickles a byte every 100 ms: the deadline covers the
    // whole body, not the gap between two reads.
    let trickler = stall(
        addr,
        &format!("POST /v1/keys/revoke HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 100\r\n\r\n"),
        b"{",
    );
    let mut trickle = trickler.try_clone().unwrap();
    let trickling = std::thread::spawn(move || {
        for _ in 0..60 {
            std::thread::sleep(Duration::from_millis(100));
            if trickle.write_all(b" ").is_err() {
                break;
            }
        }
    });
    stalled.push(("revoke, trickled", trickler));
    // At the cap: a fifth connection waits in the backlog, unanswered.
    let mut waiting = stall(
        addr,
        &format!("GET /healthz HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"),
        b"",
    );
    waiting
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let mut byte = [0u8; 1];
    let early = std::io::Read::read(&mut waiting, &mut byte);
    assert!(
        early.is_err(),
        "the cap was not reached: {early:?} after {:?}",
        t0.elapsed()
    );

    for (what, mut stream) in stalled {
        // read_to_end: the answer, then the server closes the connection.
        let r = read_response(&mut stream);
        let detail = r.problem(408);
        assert_eq!(
            detail, "the request body did not arrive within the body read timeout",
            "{what}"
        );
        assert_eq!(r.header("connection"), Some("close"), "{what}");
        let elapsed = t0.elapsed();
        assert!(
            elapsed >= BODY_TIMEOUT - Duration::from_millis(100) && elapsed < BODY_TIMEOUT + MARGIN,
            "{what}: {elapsed:?}"
        );
    }
    trickling.join().unwrap();
    // The slots came back: the waiting connection is served, and new ones.
    waiting.set_read_timeout(Some(MARGIN)).unwrap();
    assert_eq!(read_response(&mut waiting).status, 200);
    assert_eq!(server.req("GET", "/healthz", &[], None).status, 200);
    // Nothing was revoked, created or rolled by a partial body.
    assert_eq!(server.authorize(&admin, "ACCOUNT", "WRITE").status, 204);
    let keys = server.authed("GET", "/v1/keys", &admin, None).json();
    assert_eq!(keys["keys"].as_array().unwrap().len(), 1, "{keys}");
    let log = server.log_text();
    assert_eq!(log.matches("status=408").count(), 4, "{log}");
}

#[test]
fn stalled_h2c_bodies_are_answered_and_give_their_slots_back() {
    let dir = TempDir::new("body-h2");
    let server = start(&dir, "2");
    let admin = server.token().to_owned();
    let addr = server.addr;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let t0 = Instant::now();
        // Two connections, the cap; on each, streams whose bodies never
        // come (content-length 100, no DATA frame, the stream left open).
        let mut open_streams = Vec::new();
        let mut responses = Vec::new();
        for _ in 0..2 {
            let client = h2c::connect(addr).await;
            for (path, auth) in [
                ("/v1/keys/revoke", None),
                ("/v1/apikeys", Some(format!("Bearer {admin}"))),
            ] {
                let mut request = http::Request::builder()
                    .method("POST")
                    .uri(format!("http://{addr}{path}"))
                    .header("content-length", "100");
                if let Some(auth) = &auth {
                    request = request.header("authorization", auth.as_str());
                }
                let mut ready = client.clone().ready().await.unwrap();
                let (response, mut stream) = ready
                    .send_request(request.body(()).unwrap(), false)
                    .unwrap();
                stream.send_data(Bytes::from_static(b"{"), false).unwrap();
                open_streams.push(stream);
                responses.push((path, response));
            }
        }
        // At the cap: a third connection's request is not answered until a
        // slot frees.
        let waiting = tokio::spawn(async move {
            let mut client = h2c::connect(addr).await;
            let r = h2c::send(&mut client, addr, "GET", "/healthz", &[], None, false).await;
            (r.status, Instant::now())
        });
        for (path, response) in responses {
            let answered = tokio::time::timeout(BODY_TIMEOUT + MARGIN, response)
                .await
                .unwrap_or_else(|_| panic!("{path}: no answer and no reset"));
            let elapsed = t0.elapsed();
            assert!(
                elapsed >= BODY_TIMEOUT - Duration::from_millis(100),
                "{path}: {elapsed:?}"
            );
            match answered {
                Ok(response) => {
                    assert_eq!(response.status(), 408, "{path}");
                    assert_eq!(
                        response.headers()["content-type"],
                        "application/problem+json"
                    );
                }
                // A reset also frees the stream.
                Err(e) => assert!(e.is_reset(), "{path}: {e}"),
            }
        }
        let (status, at) = tokio::time::timeout(Duration::from_secs(10), waiting)
            .await
            .expect("the waiting connection was never served")
            .unwrap();
        assert_eq!(status, 200);
        assert!(
            at.duration_since(t0) >= BODY_TIMEOUT - Duration::from_millis(100),
            "served before a slot freed: the cap was not reached"
        );
        drop(open_streams);
    });
    assert_eq!(server.req("GET", "/healthz", &[], None).status, 200);
    let log = server.log_text();
    assert_eq!(log.matches("status=408").count(), 4, "{log}");
}

#[test]
fn self_revoke_reads_at_most_1_kib() {
    let dir = TempDir::new("body-revoke");
    let server = start(&dir, "16");
    let addr = server.addr;
    let victim = mint_token(&dir.db(), &[]);
    server.wait_accepted(&victim);
    // Over the limit by `Content-Length`: 413 at once, no byte of the body
    // sent (the old limit, 64 KiB, waited for the body).
    let mut s = stall(
        addr,
        &format!("POST /v1/keys/revoke HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 1025\r\n\r\n"),
        b"",
    );
    // (The connection then stays open a moment for the body, which would be
    // read and dropped: http/drain.rs.)
    let t0 = Instant::now();
    let r = read_one_response(&mut s);
    assert_eq!(r.problem(413), "request body is larger than 1024 bytes");
    assert!(t0.elapsed() < BODY_TIMEOUT, "{:?}", t0.elapsed());
    // Over the limit, chunked (no length known in advance).
    let raw = format!(
        "POST /v1/keys/revoke HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n7d0\r\n{}\r\n0\r\n\r\n",
        " ".repeat(2000)
    );
    let r = raw_request(addr, raw.as_bytes());
    assert_eq!(r.problem(413), "request body is larger than 1024 bytes");
    // Over the limit on h2c, streamed without a content-length.
    let mut h2 = h2c::Client::new(h2c::Proto::H2, addr);
    let r = h2.req_streamed(
        "POST",
        "/v1/keys/revoke",
        &[],
        vec![Bytes::from(vec![b' '; 600]), Bytes::from(vec![b' '; 600])],
    );
    assert_eq!(r.problem(413), "request body is larger than 1024 bytes");
    // The victim still works: none of those revoked it.
    assert_eq!(server.authorize(&victim, "OBJECTS", "NONE").status, 204);
    // Exactly 1024 bytes are read: a padded body revokes the key.
    let json = format!("{{\"token\":\"{victim}\"}}");
    let body = format!("{json:<1024}");
    assert_eq!(body.len(), 1024);
    let r = server.req("POST", "/v1/keys/revoke", &[], Some(body.as_bytes()));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(server.authorize(&victim, "OBJECTS", "NONE").status, 401);
    // Authenticated routes keep the 64 KiB limit.
    let admin = server.token().to_owned();
    let big = format!("{{\"name\":\"big\"}}{}", " ".repeat(2000));
    let r = server.authed("POST", "/v1/apikeys", &admin, Some(&big));
    assert_eq!(r.status, 200, "{}", r.text());
}
