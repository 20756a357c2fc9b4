//! `keygate`: the keygate server and its CLI.
//!
//! * `keygate serve`: the spec's endpoints over HTTP, a gateway decision
//!   endpoint, SQLite storage.
//! * `keygate mint`, `list`, `revoke`, `roll`, `events`: act on the
//!   database directly (see `cli`).

mod app;
mod cli;
mod pepper;
mod store;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use keygate::tower::system_now_ms;
use keygate::{Change, Keyring, MintPolicy, MintRequest};

use crate::store::sqlite::Store;

/// API-key authorization server.
#[derive(Parser, Debug)]
#[command(name = "keygate", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Where the keys and the pepper live.
#[derive(clap::Args, Debug)]
struct StoreArgs {
    /// SQLite database file (created if missing).
    #[arg(long, value_name = "PATH", default_value = "keygate.db")]
    db: PathBuf,
    /// Pepper file: 32 random bytes, created with mode 0600 if missing.
    /// Default: the database path with `.pepper` appended.
    #[arg(long, value_name = "PATH")]
    pepper_file: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Serve the HTTP API until SIGINT or SIGTERM.
    Serve {
        /// Address to listen on; port 0 picks a free port. The bound address
        /// is printed to stderr as `listening on ADDR`.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
        #[command(flatten)]
        store: StoreArgs,
        /// Use the attenuating minting policy: a restricted caller may only
        /// mint restricted keys within its own scopes.
        #[arg(long)]
        attenuate: bool,
    },
    /// Mint a key into the database and print its created view as JSON.
    Mint {
        #[command(flatten)]
        store: StoreArgs,
        /// The key's name.
        #[arg(long)]
        name: Option<String>,
        /// Expiry in Unix milliseconds.
        #[arg(long, value_name = "MS", allow_negative_numbers = true)]
        expires_at_ms: Option<i64>,
        /// A scope such as `devboxes:write` (repeatable, or comma-separated).
        /// With any, the key is restricted; without, it is standard.
        #[arg(long = "scope", value_name = "RESOURCE:ACCESS")]
        scopes: Vec<String>,
    },
    /// List the keys that are not revoked, by id.
    List {
        #[command(flatten)]
        store: StoreArgs,
        /// Print a JSON array of key views instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Revoke a key.
    Revoke {
        #[command(flatten)]
        store: StoreArgs,
        /// The key's id.
        id: String,
        /// Also revoke every key minted from it, transitively.
        #[arg(long)]
        cascade: bool,
    },
    /// Roll a key: a new key (printed as its created view, as JSON) with the
    /// same kind, name, scopes and expiry; the old key ends after the overlap.
    Roll {
        #[command(flatten)]
        store: StoreArgs,
        /// The key's id.
        id: String,
        /// How long the old key keeps working: `90s`, `15m`, `24h`, `7d`
        /// (at most), or `0` (it ends now).
        #[arg(long, value_name = "DURATION", default_value = "0")]
        overlap: String,
    },
    /// Print the audit log (the change log) in sequence order.
    Events {
        #[command(flatten)]
        store: StoreArgs,
        /// Only events with sequence numbers after this one.
        #[arg(long, value_name = "SEQ", default_value_t = 0)]
        after: u64,
        /// Print a JSON array of events instead of a table.
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve {
            listen,
            store,
            attenuate,
        } => serve(listen, &store, attenuate),
        Command::Mint {
            store,
            name,
            expires_at_ms,
            scopes,
        } => cli::block_on(cli::mint(&store, name.as_deref(), expires_at_ms, &scopes)),
        Command::List { store, json } => cli::block_on(cli::list(&store, json)),
        Command::Revoke { store, id, cascade } => cli::block_on(cli::revoke(&store, &id, cascade)),
        Command::Roll { store, id, overlap } => cli::block_on(cli::roll(&store, &id, &overlap)),
        Command::Events { store, after, json } => cli::block_on(cli::events(&store, after, json)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}

fn serve(listen: SocketAddr, args: &StoreArgs, attenuate: bool) -> Result<(), String> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("KEYGATE_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    let (store, pepper) = runtime.block_on(cli::open_store(args))?;
    let (snapshot, count) = runtime
        .block_on(async {
            Ok::<_, store::StoreError>((store.snapshot().await?, store.count().await?))
        })
        .map_err(|e| e.to_string())?;
    drop(store);
    // Transitional (until app.rs moves to the `Store` trait): the handlers'
    // synchronous writer and reader.
    let writer = Store::open(&args.db).map_err(|e| e.to_string())?;
    let reader = Store::open(&args.db).map_err(|e| e.to_string())?;
    let mut keyring = Keyring::with_capacity(pepper, snapshot.records.len());
    for record in snapshot.records {
        keyring
            .apply(Change::upsert(snapshot.seq, record))
            .map_err(|e| e.to_string())?;
    }
    if count == 0 {
        bootstrap(&writer, &mut keyring)?;
    }
    tracing::info!(keys = keyring.len(), db = %args.db.display(), "loaded keys");
    let policy = if attenuate {
        MintPolicy::Attenuating
    } else {
        MintPolicy::Spec
    };
    let state = Arc::new(app::AppState::new(keyring, writer, reader, policy));
    runtime.block_on(run(listen, state))
}

/// Mints the `bootstrap` standard key and prints its secret once, to stderr.
fn bootstrap(store: &Store, keyring: &mut Keyring) -> Result<(), String> {
    let now_ms = system_now_ms();
    let request =
        MintRequest::standard(Some("bootstrap"), None, now_ms).map_err(|e| e.to_string())?;
    let (record, token) = keygate::mint(
        keyring.pepper(),
        &request,
        &mut keygate::os_entropy(),
        now_ms,
    )
    .into_parts();
    store.insert(&record).map_err(|e| e.to_string())?;
    eprintln!(
        "bootstrap key `{}` created; its secret is shown once:\n{}",
        record.id(),
        token.expose_secret()
    );
    keyring.insert(record).map_err(|e| e.to_string())?;
    Ok(())
}

async fn run(listen: SocketAddr, state: Arc<app::AppState>) -> Result<(), String> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| format!("cannot listen on `{listen}`: {e}"))?;
    let local = listener
        .local_addr()
        .map_err(|e| format!("cannot read the bound address: {e}"))?;
    eprintln!("listening on {local}");
    tracing::info!(%local, "listening");
    axum::serve(listener, app::router(state))
        .with_graceful_shutdown(shutdown_signal())
        .await
        .map_err(|e| format!("server error: {e}"))?;
    tracing::info!("drained; exiting");
    Ok(())
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
