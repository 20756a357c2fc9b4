//! `keygate`: the keygate server and its CLI.
//!
//! * `keygate serve`: the spec's endpoints over HTTP, a gateway decision
//!   endpoint, SQLite storage.
//! * `keygate mint`: mints a key straight into the database.
//! * `keygate routes check|explain`: validates a route table, explains a decision.

mod app;
mod pepper;
mod routes;
mod store;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use keygate::tower::system_now_ms;
use keygate::{Keyring, MintPolicy, MintRequest, Pepper, Scopes};

use crate::store::Store;

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
        /// A route table (see `keygate routes check`): enables forward-auth
        /// on `/v1/authorize`. A table that does not parse stops start-up.
        #[arg(long, value_name = "FILE")]
        routes: Option<PathBuf>,
    },
    /// Route tables: validate one, or explain its decision for a request.
    Routes {
        #[command(subcommand)]
        command: routes::RoutesCommand,
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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve {
            listen,
            store,
            attenuate,
            routes,
        } => serve(listen, &store, attenuate, routes.as_deref()),
        Command::Routes { command } => routes::run(&command),
        Command::Mint {
            store,
            name,
            expires_at_ms,
            scopes,
        } => mint(&store, name.as_deref(), expires_at_ms, &scopes),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}

/// Opens the store and the pepper. A missing pepper is created only while
/// the database holds no keys: with keys, it would silently lock them out.
fn open(args: &StoreArgs) -> Result<(Store, Pepper), String> {
    let store = Store::open(&args.db).map_err(|e| e.to_string())?;
    let count = store.count().map_err(|e| e.to_string())?;
    let path = args
        .pepper_file
        .clone()
        .unwrap_or_else(|| pepper::default_path(&args.db));
    let (pepper, _created) = pepper::load_or_create(&path, count == 0).map_err(|e| {
        if count > 0 && !path.exists() {
            format!(
                "pepper file `{}` is missing but database `{}` holds {count} keys; restore the pepper file",
                path.display(),
                args.db.display()
            )
        } else {
            e
        }
    })?;
    Ok((store, pepper))
}

fn mint(
    args: &StoreArgs,
    name: Option<&str>,
    expires_at_ms: Option<i64>,
    scopes: &[String],
) -> Result<(), String> {
    let (store, pepper) = open(args)?;
    let now_ms = system_now_ms();
    let request = if scopes.is_empty() {
        MintRequest::standard(name, expires_at_ms, now_ms)
    } else {
        let scopes: Scopes = scopes.join(",").parse().map_err(|e| format!("{e}"))?;
        MintRequest::restricted(name, scopes, expires_at_ms, now_ms)
    }
    .map_err(|e| e.to_string())?;
    let minted = keygate::mint(&pepper, &request, &mut keygate::os_entropy(), now_ms);
    store.insert(minted.record()).map_err(|e| e.to_string())?;
    let json = serde_json::to_string(&minted.into_view()).map_err(|e| e.to_string())?;
    println!("{json}");
    Ok(())
}

fn serve(
    listen: SocketAddr,
    args: &StoreArgs,
    attenuate: bool,
    routes: Option<&std::path::Path>,
) -> Result<(), String> {
    // A bad table stops start-up before anything else happens.
    let table = routes.map(routes::load).transpose()?;
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("KEYGATE_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
    let (writer, pepper) = open(args)?;
    let reader = Store::open(&args.db).map_err(|e| e.to_string())?;
    let records = writer.load_all().map_err(|e| e.to_string())?;
    let mut keyring = Keyring::with_capacity(pepper, records.len());
    keyring.extend(records);
    if keyring.is_empty() {
        bootstrap(&writer, &mut keyring)?;
    }
    tracing::info!(keys = keyring.len(), db = %args.db.display(), "loaded keys");
    let policy = if attenuate {
        MintPolicy::Attenuating
    } else {
        MintPolicy::Spec
    };
    let state = Arc::new(app::AppState::new(keyring, writer, reader, policy));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    if let Some(t) = &table {
        tracing::info!(rules = t.len(), "loaded route table");
    }
    runtime.block_on(run(listen, state, table))
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
    keyring.insert(record);
    Ok(())
}

async fn run(
    listen: SocketAddr,
    state: Arc<app::AppState>,
    table: Option<keygate::RouteTable>,
) -> Result<(), String> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| format!("cannot listen on `{listen}`: {e}"))?;
    let local = listener
        .local_addr()
        .map_err(|e| format!("cannot read the bound address: {e}"))?;
    eprintln!("listening on {local}");
    tracing::info!(%local, "listening");
    axum::serve(listener, routes::with_routes(app::router(state), table))
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
