//! The listener: HTTP/1.1 and HTTP/2 cleartext (h2c, prior knowledge) on one
//! port, with connection limits, and a graceful drain on shutdown.
//!
//! Each accepted connection goes to hyper-util's auto connection builder,
//! which reads the first bytes: the HTTP/2 preface (`PRI * HTTP/2.0...`)
//! selects HTTP/2, anything else HTTP/1.1. Both serve the same router, so
//! every route answers alike under both protocols.
//!
//! Limits, for both protocols:
//!
//! * **Header read timeout**: a new connection must deliver a complete
//!   request head within it, or it is closed (this covers a client that
//!   sends nothing, a slow HTTP/1.1 header sender, and an h2c client that
//!   sends the preface but never a frame). On HTTP/1.1 the timer restarts
//!   after each response: the next request head on a kept-alive connection
//!   must arrive within it too.
//! * **Idle timeout**: a connection with no request in flight for this long
//!   is closed: HTTP/1.1 at once, HTTP/2 gracefully (`GOAWAY`), dropped one
//!   header read timeout later if the peer has not closed it.
//!
//! * **Body read timeout**: a request's body must be complete within it,
//!   counted from its head; a handler still waiting for it then gets an
//!   error and the client a 408 (HTTP/1.1: and the connection is closed).
//!   Without it a client could send a head with `Content-Length: 100` and
//!   nothing more, and hold the connection as long as it liked: the
//!   watchdog below sees a request in flight. The router applies it (see
//!   `http::router`), on the routes that read a body only: tower-http's
//!   `RequestBodyDeadlineLayer`, one deadline for the whole body, not one
//!   per frame, so a trickle does not extend it.
//!
//! One watchdog per connection enforces the header read and idle timeouts. It sleeps until the
//! next deadline and looks at what the connection's requests did; it arms
//! no timer per request (hyper's own HTTP/1.1 header timer, which resets a
//! timer for every request, is not used).
//! * **Connection cap**: at most this many connections are served at once.
//!   At the cap the server stops accepting; new connections wait in the
//!   kernel's listen backlog until a slot frees.
//! * **HTTP/2**: a cap on concurrent streams per connection, a cap on the
//!   header list size, and hyper's rapid-reset defences (a cap on streams
//!   reset before the server accepted them, and on streams the server had
//!   to reset for protocol errors; past either, `GOAWAY`).
//!
//! On shutdown the listener closes, every connection is asked to finish
//! (HTTP/1.1: close once the response in flight is sent; HTTP/2: `GOAWAY`,
//! in-flight streams complete), and connections still open
//! [`DRAIN_GRACE`] later are dropped.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{watch, Notify, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use crate::metrics::Closed;

/// The listen backlog: connections the kernel holds while the server is at
/// its connection cap or busy (capped by `net.core.somaxconn`). The usual
/// 128 drops SYNs under a burst of connections, and a dropped SYN costs the
/// client a 1 s retransmit.
pub const LISTEN_BACKLOG: u32 = 4096;

/// How long connections may take to finish once shutdown began.
pub const DRAIN_GRACE: Duration = Duration::from_secs(30);

/// HTTP/2 streams a peer may open and reset before the server accepted
/// them, at once; past it the connection gets `GOAWAY` (the "rapid reset"
/// defence, CVE-2023-44487). hyper's default, stated.
pub const H2_MAX_PENDING_ACCEPT_RESET_STREAMS: usize = 20;

/// HTTP/2 streams the server may reset for a peer's protocol errors before
/// it answers `GOAWAY`. hyper's default, stated.
pub const H2_MAX_LOCAL_ERROR_RESET_STREAMS: usize = 1024;

/// Connection limits, as `keygate serve` flags.
#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// Time a client has to send a complete request head: the first one on
    /// a new connection (HTTP/1.1 and h2c alike), and on HTTP/1.1 each next
    /// one after a response. Slower connections are closed.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = positive_duration,
          env = "KEYGATE_HEADER_READ_TIMEOUT")]
    pub header_read_timeout: Duration,
    /// A connection with no request in flight for this long is closed
    /// (HTTP/2: `GOAWAY`). On HTTP/1.1 the header read timeout, which also
    /// runs between requests, closes an idle connection first when shorter.
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = positive_duration,
          env = "KEYGATE_IDLE_TIMEOUT")]
    pub idle_timeout: Duration,
    /// Time a client has to send a complete request body, counted from the
    /// end of its head; a route still waiting for it answers 408, and an
    /// HTTP/1.1 connection is then closed.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = positive_duration,
          env = "KEYGATE_BODY_READ_TIMEOUT")]
    pub body_read_timeout: Duration,
    /// The most connections served at once; more wait in the listen
    /// backlog. Keep it under the process's file descriptor limit.
    #[arg(long, value_name = "N", default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..),
          env = "KEYGATE_MAX_CONNECTIONS")]
    pub max_connections: u32,
    /// HTTP/2: the most concurrent streams per connection (SETTINGS_MAX_CONCURRENT_STREAMS).
    #[arg(long, value_name = "N", default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..),
          env = "KEYGATE_H2_MAX_CONCURRENT_STREAMS")]
    pub h2_max_concurrent_streams: u32,
    /// HTTP/2: the largest request header list, in bytes
    /// (SETTINGS_MAX_HEADER_LIST_SIZE); larger requests get 431.
    #[arg(long, value_name = "BYTES", default_value_t = 128 * 1024, value_parser = clap::value_parser!(u32).range(1024..),
          env = "KEYGATE_H2_MAX_HEADER_LIST_SIZE")]
    pub h2_max_header_list_size: u32,
}

impl Default for Args {
    fn default() -> Args {
        Args {
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            body_read_timeout: Duration::from_secs(10),
            max_connections: 10_000,
            h2_max_concurrent_streams: 100,
            h2_max_header_list_size: 128 * 1024,
        }
    }
}

/// Parses a duration such as `10s` or `500ms`; zero is refused.
fn positive_duration(input: &str) -> Result<Duration, String> {
    let duration =
        humantime::parse_duration(input).map_err(|e| format!("invalid duration `{input}`: {e}"))?;
    if duration.is_zero() {
        return Err(format!("duration `{input}` must be more than zero"));
    }
    Ok(duration)
}

/// Binds `addr` (with `SO_REUSEADDR`, as the standard library does) and
/// listens with a backlog of [`LISTEN_BACKLOG`].
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Serves `router` on `listener` over HTTP/1.1 and h2c until `shutdown`
/// resolves, then drains: stops accepting, lets in-flight requests finish,
/// and returns once every connection has closed (or after [`DRAIN_GRACE`]).
/// `metered`: count its connections in the metrics (the API's listener, not
/// the metrics listener's own).
pub async fn serve<F>(
    listener: TcpListener,
    router: Router,
    limits: &Args,
    metered: bool,
    shutdown: F,
) where
    F: Future<Output = ()>,
{
    let builder = Arc::new(builder(limits));
    let slots = Arc::new(Semaphore::new(limits.max_connections as usize));
    let (stop, stopped) = watch::channel(false);
    let timeouts = Timeouts {
        header_read: limits.header_read_timeout,
        idle: limits.idle_timeout,
        metered,
    };
    let mut at_cap = false;
    tokio::pin!(shutdown);
    loop {
        if slots.available_permits() == 0 && !at_cap {
            if metered {
                crate::metrics::connections_at_cap();
            }
            tracing::warn!(
                max_connections = limits.max_connections,
                "connection limit reached; new connections wait in the listen backlog"
            );
        }
        at_cap = slots.available_permits() == 0;
        let permit = tokio::select! {
            permit = Arc::clone(&slots).acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
            () = &mut shutdown => break,
        };
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => stream,
                Err(e) => {
                    accept_error(e).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        // Small answers: send them now, not after Nagle's delay.
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!("cannot set TCP_NODELAY: {e}");
        }
        tokio::spawn(connection(
            Arc::clone(&builder),
            stream,
            router.clone(),
            timeouts,
            stopped.clone(),
            permit,
        ));
    }
    drop(listener);
    stop.send_replace(true);
    // Every connection holds a slot until it ends; the connections end by
    // DRAIN_GRACE at the latest.
    let open = limits.max_connections as usize - slots.available_permits();
    if open > 0 {
        tracing::info!(connections = open, "draining connections");
    }
    let _all = slots.acquire_many(limits.max_connections).await;
}

/// The auto (HTTP/1.1 + h2c) connection builder with the limits set.
fn builder(limits: &Args) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // No hyper header read timer: the connection watchdog enforces the
    // header read timeout on both protocols, without a timer reset per
    // request (about 1 500 instructions of a 22 000-instruction request).
    builder.http1().keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.h2_max_concurrent_streams)
        .max_header_list_size(limits.h2_max_header_list_size)
        .max_pending_accept_reset_streams(H2_MAX_PENDING_ACCEPT_RESET_STREAMS)
        .max_local_error_reset_streams(H2_MAX_LOCAL_ERROR_RESET_STREAMS);
    builder
}

/// After a failed `accept`: peers that gave up are not worth a word; other
/// errors (out of file descriptors) get a log line and a pause, so the loop
/// does not spin.
async fn accept_error(e: std::io::Error) {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    if matches!(
        e.kind(),
        ConnectionAborted | ConnectionRefused | ConnectionReset
    ) {
        return;
    }
    tracing::error!("accept failed: {e}; retrying in 1 s");
    tokio::time::sleep(Duration::from_secs(1)).await;
}

#[derive(Clone, Copy, Debug)]
struct Timeouts {
    header_read: Duration,
    idle: Duration,
    /// Whether the connection counts in the metrics.
    metered: bool,
}

/// Serves one connection, closing it when it sends no request in time, when
/// it idles, or when the server shuts down.
async fn connection(
    builder: Arc<auto::Builder<TokioExecutor>>,
    stream: TcpStream,
    router: Router,
    timeouts: Timeouts,
    mut stopped: watch::Receiver<bool>,
    _slot: OwnedSemaphorePermit,
) {
    let started = Instant::now();
    if timeouts.metered {
        crate::metrics::connection_opened();
    }
    let activity = Arc::new(Activity::new(started));
    let service = Tracked {
        inner: TowerToHyperService::new(router),
        activity: Arc::clone(&activity),
    };
    let conn = builder.serve_connection(TokioIo::new(stream), service);
    let why = drive(conn, &activity, started, timeouts, &mut stopped).await;
    if timeouts.metered {
        crate::metrics::connection_closed(why);
    }
    let state = activity.state();
    tracing::debug!(
        protocol = ?state.version,
        requests = state.requests,
        reason = why.label(),
        "connection closed"
    );
}

/// Drives a connection to its end; says why it ended.
async fn drive<C, E>(
    conn: C,
    activity: &Activity,
    started: Instant,
    timeouts: Timeouts,
    stopped: &mut watch::Receiver<bool>,
) -> Closed
where
    C: Future<Output = Result<(), E>> + GracefulShutdown,
    E: std::fmt::Display,
{
    tokio::pin!(conn);
    // Once closing: when the connection is dropped if still open, and why
    // it is closing (a drain, or an idle HTTP/2 connection's `GOAWAY`).
    let mut closing: Option<(Instant, Closed)> = None;
    loop {
        let deadline = match closing {
            Some((at, _)) => at,
            None => activity.deadline(started, timeouts),
        };
        tokio::select! {
            ended = conn.as_mut() => {
                return match ended {
                    Ok(()) => match closing {
                        Some((_, Closed::IdleTimeout)) => Closed::IdleTimeout,
                        _ => Closed::Ended,
                    },
                    Err(e) => {
                        tracing::debug!("connection error: {e}");
                        Closed::Error
                    }
                };
            }
            () = activity.first_done.notified(), if closing.is_none() => {
                // The first request ended: the deadline moves from the
                // header read timeout to the idle timeout, perhaps earlier.
            }
            _ = stopped.changed(), if closing.is_none() => {
                conn.as_mut().shut_down();
                // A connection still owing its request head gets no more
                // time for the drain than it had.
                let grace = Instant::now() + DRAIN_GRACE;
                closing = Some((grace.min(activity.deadline(started, timeouts)), Closed::DrainTimeout));
            }
            () = tokio::time::sleep_until(deadline) => {
                if let Some((_, why)) = closing {
                    return why;
                }
                match activity.verdict(started, timeouts, Instant::now()) {
                    Verdict::Open => {}
                    Verdict::NoRequest => return Closed::HeaderReadTimeout,
                    Verdict::NoNextRequest => return Closed::IdleTimeout,
                    Verdict::Idle => {
                        conn.as_mut().shut_down();
                        closing = Some((Instant::now() + timeouts.header_read, Closed::IdleTimeout));
                    }
                }
            }
        }
    }
}

/// A connection that can be asked to finish.
trait GracefulShutdown {
    /// Starts a graceful shutdown: no new requests, in-flight ones finish.
    fn shut_down(self: Pin<&mut Self>);
}

impl<I, S, B> GracefulShutdown for auto::Connection<'_, I, S, TokioExecutor>
where
    S: hyper::service::Service<
        hyper::Request<hyper::body::Incoming>,
        Response = hyper::Response<B>,
    >,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    fn shut_down(self: Pin<&mut Self>) {
        self.graceful_shutdown();
    }
}

/// What a connection's requests have done so far.
struct Activity {
    state: Mutex<ActivityState>,
    /// Notified when the first request ends. Only then can the watchdog's
    /// deadline move earlier; later changes only move it later, and the
    /// watchdog looks again when its (earlier) deadline passes.
    first_done: Notify,
}

struct ActivityState {
    /// Requests whose response is not yet produced.
    in_flight: usize,
    /// Whether any request has arrived.
    any: bool,
    /// Requests so far.
    requests: u64,
    /// The protocol of the first request.
    version: Option<hyper::Version>,
    /// When the last request finished (or the connection opened).
    idle_since: Instant,
    /// Whether a request has ended.
    any_done: bool,
}

impl ActivityState {
    /// How long the connection may sit with no request in flight: on
    /// HTTP/2 the idle timeout; on HTTP/1.1 the next request head must
    /// also arrive within the header read timeout.
    fn idle_limit(&self, timeouts: Timeouts) -> Duration {
        if self.version == Some(hyper::Version::HTTP_2) {
            timeouts.idle
        } else {
            timeouts.idle.min(timeouts.header_read)
        }
    }
}

/// What the watchdog decides for a connection.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    /// Leave it be.
    Open,
    /// No request within the header read timeout of the connection's start:
    /// drop it.
    NoRequest,
    /// HTTP/1.1 with no request in flight for the idle timeout, or with the
    /// next request head not complete within the header read timeout: drop
    /// it (what hyper's own header timer would do, minus a timer reset per
    /// request).
    NoNextRequest,
    /// HTTP/2, idle: shut it down gracefully (`GOAWAY`).
    Idle,
}

impl Activity {
    fn new(now: Instant) -> Activity {
        Activity {
            state: Mutex::new(ActivityState {
                in_flight: 0,
                any: false,
                requests: 0,
                version: None,
                idle_since: now,
                any_done: false,
            }),
            first_done: Notify::new(),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, ActivityState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// When to look at the connection next.
    fn deadline(&self, started: Instant, timeouts: Timeouts) -> Instant {
        let state = self.state();
        if !state.any {
            started + timeouts.header_read
        } else if state.in_flight > 0 {
            Instant::now() + timeouts.idle
        } else {
            state.idle_since + state.idle_limit(timeouts)
        }
    }

    fn verdict(&self, started: Instant, timeouts: Timeouts, now: Instant) -> Verdict {
        let state = self.state();
        if !state.any {
            if now >= started + timeouts.header_read {
                return Verdict::NoRequest;
            }
        } else if state.in_flight == 0 && now >= state.idle_since + state.idle_limit(timeouts) {
            return if state.version == Some(hyper::Version::HTTP_2) {
                Verdict::Idle
            } else {
                Verdict::NoNextRequest
            };
        }
        Verdict::Open
    }

    fn begin(self: &Arc<Self>, version: hyper::Version) -> InFlight {
        let mut state = self.state();
        state.in_flight += 1;
        state.any = true;
        state.requests += 1;
        state.version.get_or_insert(version);
        InFlight {
            activity: Arc::clone(self),
            h2: version == hyper::Version::HTTP_2,
            answered: false,
        }
    }
}

/// A request in flight; dropped when its response is produced (or the
/// request is abandoned).
struct InFlight {
    activity: Arc<Activity>,
    h2: bool,
    /// Whether the response was produced (dropped without: abandoned).
    answered: bool,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if !self.answered {
            crate::metrics::request_abandoned(self.h2);
        }
        let first = {
            let mut state = self.activity.state();
            state.in_flight = state.in_flight.saturating_sub(1);
            state.idle_since = Instant::now();
            !std::mem::replace(&mut state.any_done, true)
        };
        if first {
            self.activity.first_done.notify_one();
        }
    }
}

/// A hyper service that records its requests in the connection's [`Activity`].
#[derive(Clone)]
struct Tracked<S> {
    inner: S,
    activity: Arc<Activity>,
}

impl<S, B> hyper::service::Service<hyper::Request<B>> for Tracked<S>
where
    S: hyper::service::Service<hyper::Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = TrackedFuture<S::Future>;

    fn call(&self, request: hyper::Request<B>) -> Self::Future {
        let in_flight = self.activity.begin(request.version());
        TrackedFuture {
            inner: self.inner.call(request),
            in_flight,
        }
    }
}

pin_project_lite::pin_project! {
    /// A response future that holds its request's [`InFlight`].
    struct TrackedFuture<F> {
        #[pin]
        inner: F,
        in_flight: InFlight,
    }
}

impl<F: Future> Future for TrackedFuture<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        let polled = this.inner.poll(cx);
        if polled.is_ready() {
            this.in_flight.answered = true;
        }
        polled
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        limits: Args,
    }

    #[test]
    fn defaults_and_flags() {
        let d = Cli::try_parse_from(["keygate"]).unwrap().limits;
        let expected = Args::default();
        assert_eq!(d.header_read_timeout, expected.header_read_timeout);
        assert_eq!(d.idle_timeout, expected.idle_timeout);
        assert_eq!(d.body_read_timeout, expected.body_read_timeout);
        assert_eq!(d.body_read_timeout, Duration::from_secs(10));
        assert_eq!(d.max_connections, expected.max_connections);
        assert_eq!(
            d.h2_max_concurrent_streams,
            expected.h2_max_concurrent_streams
        );
        assert_eq!(d.h2_max_header_list_size, expected.h2_max_header_list_size);
        let l = Cli::try_parse_from([
            "keygate",
            "--header-read-timeout",
            "1500ms",
            "--idle-timeout",
            "2m",
            "--max-connections",
            "8",
            "--body-read-timeout",
            "750ms",
        ])
        .unwrap()
        .limits;
        assert_eq!(l.header_read_timeout, Duration::from_millis(1500));
        assert_eq!(l.idle_timeout, Duration::from_secs(120));
        assert_eq!(l.max_connections, 8);
        assert_eq!(l.body_read_timeout, Duration::from_millis(750));
        for bad in [
            &["--header-read-timeout", "0s"][..],
            &["--idle-timeout", "soon"],
            &["--body-read-timeout", "0s"],
            &["--max-connections", "0"],
            &["--h2-max-concurrent-streams", "0"],
            &["--h2-max-header-list-size", "10"],
        ] {
            let args = std::iter::once("keygate").chain(bad.iter().copied());
            assert!(Cli::try_parse_from(args).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn watchdog_verdicts() {
        let t0 = Instant::now();
        let timeouts = Timeouts {
            header_read: Duration::from_secs(2),
            idle: Duration::from_secs(5),
            metered: false,
        };
        let activity = Arc::new(Activity::new(t0));
        let s = Duration::from_secs;
        assert_eq!(activity.deadline(t0, timeouts), t0 + s(2));
        assert_eq!(activity.verdict(t0, timeouts, t0 + s(1)), Verdict::Open);
        assert_eq!(
            activity.verdict(t0, timeouts, t0 + s(2)),
            Verdict::NoRequest
        );
        // A request in flight keeps the connection open however long.
        let request = activity.begin(hyper::Version::HTTP_11);
        assert_eq!(activity.verdict(t0, timeouts, t0 + s(60)), Verdict::Open);
        drop(request);
        let idle_since = activity.state().idle_since;
        // HTTP/1.1: the next head must come within the header read timeout.
        assert_eq!(activity.deadline(t0, timeouts), idle_since + s(2));
        assert_eq!(
            activity.verdict(t0, timeouts, idle_since + s(2)),
            Verdict::NoNextRequest
        );
        // HTTP/2: the idle timeout, then a graceful shutdown.
        let h2 = Arc::new(Activity::new(t0));
        drop(h2.begin(hyper::Version::HTTP_2));
        let idle_since = h2.state().idle_since;
        assert_eq!(h2.deadline(t0, timeouts), idle_since + s(5));
        assert_eq!(h2.verdict(t0, timeouts, idle_since + s(4)), Verdict::Open);
        assert_eq!(h2.verdict(t0, timeouts, idle_since + s(5)), Verdict::Idle);
    }
}
