//! `keygate`: the keygate server and its CLI.
//!
//! * `keygate serve`: the spec's endpoints over HTTP, a gateway decision
//!   endpoint, SQLite storage.
//! * `keygate mint`, `list`, `get`, `revoke`, `roll`, `limit`, `credits`,
//!   `usage`, `events`: act on the database directly (see `cli`).
//! * `keygate migrate`: copies one store into another, empty one.
//! * `keygate routes check|explain`: validates a route table, explains a decision.

mod cli;
mod clock;
mod http;
mod metrics;
mod redact;
mod store;
mod sync;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use keygate::{Change, MintPolicy, MintRequest};

use crate::cli::StoreArgs;
use crate::http::forward::ForwardedHeaders;
use crate::http::state::AppState;
use crate::http::{listen, router};
use crate::store::Store;
use crate::sync::cache::KeyCache;
use crate::sync::{follow, Keys};

/// API-key authorization server.
#[derive(Parser, Debug)]
#[command(name = "keygate", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Serve the HTTP API until SIGINT or SIGTERM.
    Serve {
        /// Address to listen on; port 0 picks a free port. The bound address
        /// is printed to stderr as `listening on ADDR`.
        #[arg(long, default_value = "127.0.0.1:8080", env = "KEYGATE_LISTEN")]
        listen: SocketAddr,
        #[command(flatten)]
        store: StoreArgs,
        /// Use the attenuating minting policy: a restricted caller may only
        /// mint restricted keys within its own scopes, expiring no later
        /// than itself, and acts only on the keys it minted.
        #[arg(long, env = "KEYGATE_ATTENUATE")]
        attenuate: bool,
        /// How often to read the change log, in milliseconds (changes made
        /// by the CLI or another instance apply within about this long).
        #[arg(long, value_name = "MS", default_value_t = 100,
              value_parser = clap::value_parser!(u64).range(10..=1_000), env = "KEYGATE_POLL_MS")]
        poll_ms: u64,
        /// How often to write last-used times and usage counts to the store
        /// (and run a bounded retention pass over the counts), in
        /// milliseconds. Counts not yet written show in this instance's
        /// `GET /v1/keys/{id}/usage` at once, in other instances' and in
        /// `keygate usage` after the write.
        #[arg(long, value_name = "MS", default_value_t = 10_000,
              value_parser = clap::value_parser!(u64).range(100..=10_000),
              env = "KEYGATE_LAST_USED_FLUSH_MS")]
        last_used_flush_ms: u64,
        #[command(flatten)]
        limits: listen::Args,
        /// A route table (see `keygate routes check`): enables forward-auth
        /// on `/v1/authorize`. A table that does not parse stops start-up.
        /// `SIGHUP` reads it again and swaps it in while serving (requests
        /// in flight finish on the old one); one that does not parse then
        /// is logged with its line, and the old one stays.
        #[arg(long, value_name = "FILE", env = "KEYGATE_ROUTES")]
        routes: Option<PathBuf>,
        /// With `--routes`: the one header family that carries the original
        /// request's method and URI. `x-original`: `X-Original-Method` and
        /// `X-Original-URI` (nginx `auth_request`); `x-forwarded`:
        /// `X-Forwarded-Method` and `X-Forwarded-Uri` (Caddy, Traefik). A
        /// request carrying the other family is refused (400).
        #[arg(long, value_name = "FAMILY", value_enum, default_value_t = ForwardedHeaders::XOriginal,
              env = "KEYGATE_FORWARDED_HEADERS")]
        forwarded_headers: ForwardedHeaders,
        /// The log's format on stderr: `text`, one line per event, or
        /// `json`, one object per line (`timestamp`, `level`, `message`,
        /// `target` and the event's fields). `KEYGATE_LOG` sets the level
        /// (`info` by default, e.g. `debug` or `keygate=debug,tower=warn`).
        #[arg(long, value_name = "FORMAT", value_enum, default_value_t = LogFormat::Text,
              env = "KEYGATE_LOG_FORMAT")]
        log_format: LogFormat,
        #[command(flatten)]
        metrics: MetricsArgs,
        /// Serve the web console at `/console` (off by default: a deployment
        /// behind a gateway grows no new surface unasked).
        #[arg(long, env = "KEYGATE_CONSOLE")]
        console: bool,
    },
    /// Route tables: validate one, or explain its decision for a request.
    Routes {
        #[command(subcommand)]
        command: cli::routes::RoutesCommand,
    },
    /// Mint a key into the database and print its created view as JSON.
    Mint {
        #[command(flatten)]
        store: StoreArgs,
        /// The key's name.
        #[arg(long)]
        name: Option<String>,
        #[command(flatten)]
        expiry: cli::Expiry,
        /// A scope such as `devboxes:write` (repeatable, or comma-separated).
        /// With any, the key is restricted; without, it is standard.
        #[arg(long = "scope", value_name = "RESOURCE:ACCESS")]
        scopes: Vec<String>,
    },
    /// List the keys that are not revoked.
    List {
        #[command(flatten)]
        store: StoreArgs,
        /// Only the keys whose name contains this text.
        #[arg(long, value_name = "SUBSTRING")]
        name: Option<String>,
        /// The order: by id, or by creation time (oldest first; a rolled
        /// key and its successor then sit side by side).
        #[arg(long, value_enum, default_value_t = cli::SortBy::Id)]
        sort: cli::SortBy,
        /// Print a JSON array of key views instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show one key that is not revoked: its view as a table, or as JSON.
    Get {
        #[command(flatten)]
        store: StoreArgs,
        /// The key's id, or its whole token (its id is taken from it).
        id: String,
        /// Print the key view as JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Revoke a key.
    Revoke {
        #[command(flatten)]
        store: StoreArgs,
        /// The key's id, or its whole token (its id is taken from it).
        id: String,
        /// Also revoke every key minted from it, transitively.
        #[arg(long)]
        cascade: bool,
    },
    /// Roll a key: a new key with the same kind, name, scopes and expiry; the
    /// old key ends after the overlap.
    ///
    /// Prints the new key's created view as JSON on stdout, and the old
    /// key's new expiry on stderr.
    Roll {
        #[command(flatten)]
        store: StoreArgs,
        /// The key's id, or its whole token (its id is taken from it).
        id: String,
        /// How long the old key keeps working: `90s`, `15m`, `24h`, `7d`
        /// (at most), or `0` (it ends now).
        #[arg(long, value_name = "DURATION", default_value = "0")]
        overlap: String,
    },
    /// Set or remove a key's rate limit.
    ///
    /// The limit is its meter's: it changes for every key that shares it
    /// (the key's roll family, and the keys a limited key minted). Prints
    /// the key's limits and balance as JSON.
    Limit {
        #[command(flatten)]
        store: StoreArgs,
        /// The key's id, or its whole token (its id is taken from it).
        id: String,
        #[command(flatten)]
        change: cli::RateChange,
    },
    /// Give a key credits, change its balance, or remove its credits.
    ///
    /// Credits are its meter's, shared by every key charged to it. Prints
    /// the key's limits and balance as JSON.
    Credits {
        #[command(flatten)]
        store: StoreArgs,
        /// The key's id, or its whole token (its id is taken from it).
        id: String,
        #[command(flatten)]
        change: cli::CreditsChange,
        /// Refill the balance to N every DURATION, counted from the key's
        /// creation, such as `5000/30d` (DURATION 1s or more). Changing the
        /// refill starts the balance afresh at the grant, before `--set`
        /// or `--add` apply.
        #[arg(long, value_name = "N/DURATION", conflicts_with = "no_credits")]
        refill: Option<String>,
    },
    /// Print a key's request counts (allowed, forbidden, rate limited,
    /// credits exhausted) by minute, hour or day.
    ///
    /// A table of the buckets with counts and, on a terminal, a sparkline of
    /// the allowed requests over the whole range; or the JSON of `GET
    /// /v1/keys/{id}/usage`. It reads the database: counts a running server
    /// has not written yet (within `--last-used-flush-ms`) are not in it.
    /// Minute and hour buckets cover the last 30 days; day buckets two years.
    Usage {
        #[command(flatten)]
        store: StoreArgs,
        /// The key's id, or its whole token (its id is taken from it).
        id: String,
        /// The start of the range: Unix milliseconds, an RFC 3339 UTC time
        /// (`2027-01-01T00:00:00Z`), or a duration before now (`7d`, `90m`).
        /// Default: 24 hours before `--to`.
        #[arg(long, value_name = "TIME")]
        from: Option<String>,
        /// The end of the range, in the same forms. Default: now.
        #[arg(long, value_name = "TIME")]
        to: Option<String>,
        /// The width of a bucket; a bucket the range touches counts whole.
        #[arg(long, value_enum, default_value_t = crate::store::Bucket::Hour)]
        bucket: crate::store::Bucket,
        /// Print the JSON of `GET /v1/keys/{id}/usage` instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Copy every key (revoked ones included), event, credit pool and usage
    /// count of one store into another, empty one: SQLite to PostgreSQL,
    /// or back.
    ///
    /// Stop every instance on the source first. The copy is one
    /// transaction on the destination: a failure leaves it empty, and a
    /// second run refuses (the destination is not empty). Event sequence
    /// numbers are kept, and new ones continue after them. Both stores must
    /// belong to the pepper file (by fingerprint); serve the destination
    /// with the same file.
    Migrate {
        #[command(flatten)]
        args: cli::migrate::MigrateArgs,
    },
    /// Fill an empty store with many valid keys, for the scale benchmarks
    /// (`benches/cold_start.sh`, `benches/follower_load.sh`). Not for
    /// production stores: it writes into an empty one only.
    #[command(hide = true)]
    BenchPopulate {
        #[command(flatten)]
        args: cli::populate::PopulateArgs,
    },
    /// Print the audit log (the change log) in sequence order.
    Events {
        #[command(flatten)]
        store: StoreArgs,
        /// Only events with sequence numbers after this one.
        #[arg(long, value_name = "SEQ", default_value_t = 0)]
        after: u64,
        /// Only the events that name this key (its id, or its whole token):
        /// as the key acted on, the actor, or the new key of a roll.
        #[arg(long, value_name = "ID")]
        key: Option<String>,
        /// Print a JSON array of events instead of a table.
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        // clap quotes the arguments it refuses: redacted, should a token or
        // a database URL have been pasted as one. Help and version go out as they are.
        Err(e) if e.use_stderr() => {
            eprint!("{}", redact::secrets(&e.render().to_string()));
            return ExitCode::from(u8::try_from(e.exit_code()).unwrap_or(2));
        }
        Err(e) => e.exit(),
    };
    let result = match cli.command {
        Command::Serve {
            listen,
            store,
            attenuate,
            poll_ms,
            last_used_flush_ms,
            limits,
            routes,
            forwarded_headers,
            log_format,
            metrics,
            console,
        } => serve(
            listen,
            &store,
            attenuate,
            log_format,
            &metrics,
            &limits,
            console,
            routes.as_deref().map(|file| (file, forwarded_headers)),
            follow::Intervals {
                poll: std::time::Duration::from_millis(poll_ms),
                flush: std::time::Duration::from_millis(last_used_flush_ms),
                ..follow::Intervals::default()
            },
        ),
        Command::Routes { command } => cli::routes::run(&command),
        Command::Mint {
            store,
            name,
            expiry,
            scopes,
        } => cli::block_on(cli::mint(&store, name.as_deref(), &expiry, &scopes)),
        Command::List {
            store,
            name,
            sort,
            json,
        } => cli::block_on(cli::list(&store, name.as_deref(), sort, json)),
        Command::Get { store, id, json } => cli::block_on(cli::get(&store, &id, json)),
        Command::Revoke { store, id, cascade } => cli::block_on(cli::revoke(&store, &id, cascade)),
        Command::Roll { store, id, overlap } => cli::block_on(cli::roll(&store, &id, &overlap)),
        Command::Limit { store, id, change } => cli::block_on(cli::limit(&store, &id, &change)),
        Command::Credits {
            store,
            id,
            change,
            refill,
        } => cli::block_on(cli::credits(&store, &id, &change, refill.as_deref())),
        Command::Migrate { args } => cli::block_on(cli::migrate::run(&args)),
        Command::BenchPopulate { args } => cli::block_on(cli::populate::run(&args)),
        Command::Events {
            store,
            after,
            key,
            json,
        } => cli::block_on(cli::events(&store, after, key.as_deref(), json)),
        Command::Usage {
            store,
            id,
            from,
            to,
            bucket,
            json,
        } => cli::block_on(cli::usage::run(
            &store,
            &id,
            from.as_deref(),
            to.as_deref(),
            bucket,
            json,
        )),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            // Errors quote their input (paths, ids, values): never a secret.
            eprintln!("error: {}", redact::secrets(&message));
            ExitCode::FAILURE
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn serve(
    listen: SocketAddr,
    args: &StoreArgs,
    attenuate: bool,
    log_format: LogFormat,
    metrics: &MetricsArgs,
    limits: &listen::Args,
    console: bool,
    routes: Option<(&std::path::Path, ForwardedHeaders)>,
    intervals: follow::Intervals,
) -> Result<(), String> {
    // A bad table stops start-up before anything else happens.
    let table = routes
        .map(|(file, trusted)| {
            cli::routes::load(file).map(|table| (table, trusted, file.to_path_buf()))
        })
        .transpose()?;
    let filter = tracing_subscriber::EnvFilter::try_from_env("KEYGATE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let log = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false);
    match log_format {
        LogFormat::Text => log.init(),
        // One object per line; the event's fields beside `timestamp`,
        // `level`, `message` and `target`, not nested.
        LogFormat::Json => log
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .init(),
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    runtime.block_on(async {
        // SIGHUP's default ends the process: caught before anything else,
        // and from then on it only ever reloads the route table.
        let hangups = hangups()?;
        // The port first: a start that cannot listen leaves nothing behind
        // (no database, no pepper, no bootstrap key).
        let listener =
            listen::bind(listen).map_err(|e| format!("cannot listen on `{listen}`: {e}"))?;
        let metrics_listener = metrics
            .metrics_listen
            .map(|addr| {
                listen::bind(addr)
                    .map_err(|e| format!("cannot listen for metrics on `{addr}`: {e}"))
            })
            .transpose()?;
        // Held while serving: no migration copies a SQLite store in use.
        let _serving = match args.db.to_str() {
            Some(db) if store::postgres::is_postgres_url(db) => None,
            _ => Some(store::sqlite::lock::serving(&args.db)?),
        };
        let (store, pepper) = cli::open_store(args).await?;
        let reading = std::time::Instant::now();
        let snapshot = store.snapshot().await.map_err(|e| e.to_string())?;
        let read_ms = reading.elapsed().as_millis();
        let loading = std::time::Instant::now();
        let cache = KeyCache::new(pepper, snapshot.records.len());
        let seq = snapshot.seq;
        // Every metered key family gets a credit lease before its first request.
        let metered: Vec<_> = snapshot
            .records
            .iter()
            .filter_map(|r| Some((r.meter(), r.limits().credits?.refill())))
            .collect();
        cache.apply(
            snapshot
                .records
                .into_iter()
                .map(|record| Change::upsert(seq, record)),
        );
        let load_ms = loading.elapsed().as_millis();
        if store.count().await.map_err(|e| e.to_string())? == 0 {
            bootstrap(&*store, &cache, args).await?;
        }
        // How long the store's read and the keyring's fill took: the parts
        // of a cold start that grow with the keys (benches/cold_start.sh).
        tracing::info!(keys = cache.len(), seq, read_ms, load_ms, "loaded keys");
        let policy = if attenuate {
            MintPolicy::Attenuating
        } else {
            MintPolicy::Spec
        };
        let metrics_on = metrics_listener.map(|listener| {
            let build = crate::metrics::Build {
                store: if store.shared() { "postgres" } else { "sqlite" },
                attenuate,
            };
            (
                listener,
                crate::metrics::install(build, metrics.metrics_per_key),
            )
        });
        let keys = Arc::new(Keys::new(cache, store));
        for (meter, refill) in metered {
            keys.credits().ensure(meter, refill);
        }
        let state = Arc::new(AppState::new(Arc::clone(&keys), policy));
        if let Some((t, trusted, _)) = &table {
            tracing::info!(rules = t.len(), forwarded_headers = ?trusted, "loaded route table");
        }
        run(
            listener, hangups, metrics_on, state, keys, table, limits, seq, intervals, log_format,
            console,
        )
        .await
    })
}

/// Mints the `bootstrap` standard key into an empty store and writes its
/// token to a new 0600 file beside the database; only the file's path is
/// logged, never the secret.
///
/// Several instances may start at once on one empty PostgreSQL database:
/// the store creates the key only if it holds none ([`Store::create_first`]),
/// so exactly one instance bootstraps it, and the others remove the file
/// they wrote (or, sharing its path, find it taken and wait up to
/// [`BOOTSTRAP_WAIT`] for the key) and carry on.
async fn bootstrap(store: &dyn Store, cache: &KeyCache, args: &StoreArgs) -> Result<(), String> {
    let now_ms = clock::now_ms();
    let request = MintRequest::standard(
        Some("bootstrap"),
        None,
        keygate::UnixMillis::from_millis(now_ms),
    )
    .map_err(|e| e.to_string())?;
    let (record, token) = keygate::mint(
        &cache.pepper(),
        &request,
        &mut keygate::os_entropy(),
        keygate::UnixMillis::from_millis(now_ms),
    )
    .into_parts();
    let base = store::postgres::bootstrap_base(&args.db, args.pepper_file.as_deref());
    // The file first: a key is never created whose token nobody holds.
    let path = match cli::write_bootstrap_file(&base, token.expose_secret()) {
        Ok(path) => path,
        // The file exists: another instance on this file system may be
        // bootstrapping right now (it writes the file, then the key). Give
        // it time to store the key; a file that stays without one is stale.
        Err(e) if cli::bootstrap_path(&base).exists() => {
            if wait_for_a_key(store, BOOTSTRAP_WAIT).await? {
                tracing::info!("another instance bootstrapped the store");
                return Ok(());
            }
            return Err(e);
        }
        Err(e) => return Err(e),
    };
    let created = store.create_first(&record, now_ms).await;
    match created {
        Ok(Some(seq)) => {
            cache.apply([Change::upsert(seq, record.clone())]);
            tracing::info!(
                key_id = %record.id(),
                path = %path.display(),
                "bootstrap key created; its token is in the file (mode 0600): read it, then delete the file"
            );
            tracing::info!(
                key_id = %record.id(),
                "the bootstrap key never expires: mint an admin key (`keygate mint --name admin`), \
                 then revoke the bootstrap key (`keygate revoke {}`)",
                record.id()
            );
            Ok(())
        }
        Ok(None) => {
            remove_quietly(&path);
            tracing::info!("another instance bootstrapped the store");
            Ok(())
        }
        Err(e) => {
            remove_quietly(&path);
            Err(format!("cannot store the bootstrap key: {e}"))
        }
    }
}

/// How long an instance that finds the bootstrap file taken waits for the
/// instance that took it to store the key.
const BOOTSTRAP_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// Whether the store holds a key within `limit` (polled every 100 ms).
async fn wait_for_a_key(store: &dyn Store, limit: std::time::Duration) -> Result<bool, String> {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if store.count().await.map_err(|e| e.to_string())? > 0 {
            return Ok(true);
        }
        if tokio::time::Instant::now() >= deadline {
            return Ok(false);
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// Removes a bootstrap key file whose key was not stored.
fn remove_quietly(path: &std::path::Path) {
    if let Err(e) = std::fs::remove_file(path) {
        tracing::warn!(path = %path.display(), "cannot remove the unused bootstrap key file: {e}");
    }
}

#[allow(clippy::too_many_arguments)]
async fn run(
    listener: tokio::net::TcpListener,
    hangups: tokio::signal::unix::Signal,
    metrics: Option<(tokio::net::TcpListener, &'static crate::metrics::Metrics)>,
    state: Arc<AppState>,
    keys: Arc<Keys>,
    table: Option<(keygate::RouteTable, ForwardedHeaders, PathBuf)>,
    limits: &listen::Args,
    seq: u64,
    intervals: follow::Intervals,
    log_format: LogFormat,
    console: bool,
) -> Result<(), String> {
    let local = listener
        .local_addr()
        .map_err(|e| format!("cannot read the bound address: {e}"))?;
    let (stop, stopped) = tokio::sync::watch::channel(false);
    // One shutdown signal for both listeners: they drain side by side.
    let (quit, quitting) = tokio::sync::watch::channel(false);
    let metrics_task = metrics.map(|(listener, metrics)| {
        if let Ok(addr) = listener.local_addr() {
            if log_format == LogFormat::Text {
                eprintln!("metrics listening on {addr}");
            }
            tracing::info!(%addr, "metrics listening");
        }
        let mut quitting = quitting.clone();
        let keys = Arc::clone(&keys);
        let limits = limits.clone();
        tokio::spawn(async move {
            crate::http::metrics::serve(listener, metrics, keys, &limits, async move {
                let _ = quitting.wait_for(|quit| *quit).await;
            })
            .await;
        })
    });
    let (follower, first_read) = follow::spawn(keys, seq, intervals, stopped)
        .map_err(|e| format!("cannot start the follower: {e}"))?;
    let _ = first_read.await;
    let table = match table {
        Some((table, trusted, file)) => {
            let handle = crate::http::forward::RouteTableHandle::new(table);
            tokio::spawn(reload_routes_on_sighup(hangups, handle.clone(), file));
            Some((handle, trusted))
        }
        None => {
            tokio::spawn(ignore_hangups(hangups));
            None
        }
    };
    // Scripts wait for this line; in JSON, the event below says it.
    if log_format == LogFormat::Text {
        eprintln!("listening on {local}");
    }
    tracing::info!(%local, "listening");
    let router = crate::http::forward::with_routes(
        crate::http::console::with_console(
            router::router(Arc::clone(&state), limits.body_read_timeout),
            console,
            state.policy() == MintPolicy::Attenuating,
        ),
        table,
    );
    listen::serve(listener, router, limits, true, async move {
        shutdown_signal().await;
        let _ = quit.send(true);
    })
    .await;
    // Stop the follower; it writes the last uses once more and hands every
    // credit lease back (nothing is served any more).
    let _ = stop.send(true);
    if let Some(task) = metrics_task {
        let _ = task.await;
    }
    match tokio::task::spawn_blocking(move || follower.join()).await {
        Ok(Ok(())) => {}
        _ => tracing::error!("follower thread failed"),
    }
    tracing::info!("drained; exiting");
    Ok(())
}

/// Listens for `SIGHUP` (from now on it no longer ends the process).
fn hangups() -> Result<tokio::signal::unix::Signal, String> {
    use tokio::signal::unix::{signal, SignalKind};
    signal(SignalKind::hangup())
        .map_err(|e| format!("cannot listen for SIGHUP, which reloads the route table: {e}"))
}

/// Without `--routes`, a `SIGHUP` has nothing to reload: logged, ignored.
async fn ignore_hangups(mut hangups: tokio::signal::unix::Signal) {
    while hangups.recv().await.is_some() {
        tracing::info!("SIGHUP ignored: no route table (--routes) to reload");
    }
}

/// Reads the route table `file` again at each `SIGHUP` and swaps it in; a
/// table that does not parse (or cannot be read) is logged, and the one
/// being served stays.
async fn reload_routes_on_sighup(
    mut hangups: tokio::signal::unix::Signal,
    table: crate::http::forward::RouteTableHandle,
    file: PathBuf,
) {
    while hangups.recv().await.is_some() {
        // A read and a parse of a file an operator wrote: off the workers.
        let path = file.clone();
        match tokio::task::spawn_blocking(move || cli::routes::load(&path)).await {
            Ok(Ok(new)) => {
                crate::metrics::route_reload(true);
                let rules = new.len();
                table.replace(new);
                tracing::info!(rules, file = %file.display(), "reloaded route table");
            }
            Ok(Err(e)) => {
                crate::metrics::route_reload(false);
                tracing::error!("route table not reloaded, still serving the previous one: {e}");
            }
            Err(e) => {
                crate::metrics::route_reload(false);
                tracing::error!("route table reload failed: {e}");
            }
        }
    }
}

/// `serve`'s metrics flags.
#[derive(clap::Args, Debug, Clone)]
struct MetricsArgs {
    /// Serve `GET /metrics` (the Prometheus text format) on this address,
    /// a listener of its own; off by default, so the API's port never
    /// exposes it. Port 0 picks a free port, printed to stderr as
    /// `metrics listening on ADDR`.
    #[arg(long, value_name = "ADDR", env = "KEYGATE_METRICS_LISTEN")]
    metrics_listen: Option<SocketAddr>,
    /// With `--metrics-listen`: also count `/v1/authorize` decisions per
    /// key id (a series per key and outcome: mind the cardinality).
    #[arg(long, requires = "metrics_listen", env = "KEYGATE_METRICS_PER_KEY")]
    metrics_per_key: bool,
}

/// The format of the server's log (`serve --log-format`).
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum LogFormat {
    /// One line of text per event.
    Text,
    /// One JSON object per line.
    Json,
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let terminate = async {
        match signal(SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!("cannot listen for SIGTERM: {e}");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        () = terminate => {},
    }
    tracing::info!("shutdown signal received; draining");
}
