//! `keygate migrate --from SRC --to DST`: copies every key, tombstone,
//! event, credit pool and usage count of one store into another, empty one
//! (SQLite to PostgreSQL, or back), in one transaction on the destination.
//! The table map is in `store::copy`.

use std::path::{Path, PathBuf};

use tokio::sync::mpsc;

use crate::clock::now_ms;
use crate::store::copy::{source_gone, Copied};
use crate::store::pepper;
use crate::store::postgres::{connect, is_postgres_url, wait_from_env, PgStore};
use crate::store::sqlite::lock::{self, StoreLock};
use crate::store::sqlite::SqliteStore;
use crate::store::{Store, StoreError};

/// `keygate migrate`'s flags.
#[derive(clap::Args, Debug)]
pub struct MigrateArgs {
    /// The store to copy from: a SQLite file (it must exist; an older
    /// schema is brought up to date first, as `serve` does), or a
    /// PostgreSQL URL `postgres://USER@HOST:PORT/DB`. Stop every instance
    /// that serves it first.
    // The value is never shown in `--help`: a URL may hold a password.
    #[arg(
        long,
        value_name = "PATH|URL",
        env = "KEYGATE_MIGRATE_FROM",
        hide_env_values = true
    )]
    pub from: PathBuf,
    /// The store to copy into, which must be empty: a SQLite file (created
    /// if missing) or a PostgreSQL URL.
    #[arg(
        long,
        value_name = "PATH|URL",
        env = "KEYGATE_MIGRATE_TO",
        hide_env_values = true
    )]
    pub to: PathBuf,
    /// The source's pepper file (read, never created); the destination
    /// must be served with the same file. Default: a SQLite source's path
    /// with `.pepper` appended; required with a PostgreSQL source.
    #[arg(long, value_name = "PATH", env = "KEYGATE_PEPPER_FILE")]
    pub pepper_file: Option<PathBuf>,
}

/// An open store of either kind: the copy is not part of the `Store`
/// trait, which the serving code uses.
pub(crate) enum Opened {
    Sqlite(SqliteStore),
    Pg(Box<PgStore>),
}

impl Opened {
    fn store(&self) -> &dyn Store {
        match self {
            Opened::Sqlite(s) => s,
            Opened::Pg(s) => s.as_ref(),
        }
    }

    async fn stored_fingerprint(&self) -> Result<Option<String>, StoreError> {
        match self {
            Opened::Sqlite(s) => s.stored_fingerprint().await,
            Opened::Pg(s) => s.stored_fingerprint().await,
        }
    }

    async fn export(&self, out: mpsc::Sender<crate::store::copy::Batch>) -> Result<(), StoreError> {
        match self {
            Opened::Sqlite(s) => s.export(out, now_ms()).await,
            Opened::Pg(s) => s.export(out, now_ms()).await,
        }
    }

    pub(crate) async fn import(
        &self,
        input: mpsc::Receiver<crate::store::copy::Batch>,
        fingerprint: String,
    ) -> Result<Copied, StoreError> {
        match self {
            Opened::Sqlite(s) => s.import(input, fingerprint).await,
            Opened::Pg(s) => s.import(input, fingerprint).await,
        }
    }
}

/// How a store is named in messages: a SQLite path as given (any token in
/// it redacted); a PostgreSQL URL as `postgres://USER@HOST:PORT/DB`,
/// rebuilt from its parts as `serve` reads them (the TLS settings taken
/// out first), so that a password (in the URL or its options) is never
/// shown.
pub fn shown(db: &Path) -> String {
    let Some(url) = db.to_str().filter(|d| is_postgres_url(d)) else {
        // A token pasted as a path is never echoed, on stdout either.
        return crate::redact::secrets(&db.display().to_string());
    };
    let Some(config) = pg_config(url) else {
        return String::from("postgres://(an unreadable URL)");
    };
    let host = match (config.get_hosts().first(), config.get_hostaddrs().first()) {
        (Some(tokio_postgres::config::Host::Tcp(h)), _) => h.clone(),
        (Some(tokio_postgres::config::Host::Unix(p)), _) => p.display().to_string(),
        (None, Some(a)) => a.to_string(),
        (None, None) => String::from("localhost"),
    };
    let user = config
        .get_user()
        .map_or_else(String::new, |u| format!("{u}@"));
    let port = config
        .get_ports()
        .first()
        .map_or_else(String::new, |p| format!(":{p}"));
    let name = config.get_dbname().unwrap_or_default();
    format!("postgres://{user}{host}{port}/{name}")
}

/// The driver's reading of a PostgreSQL URL, as `serve` parses it: none
/// for one it refuses (an unescaped `@` in the password among them).
fn pg_config(url: &str) -> Option<tokio_postgres::Config> {
    connect::parse(url).ok().map(|(_, config)| config)
}

/// Where a URL's store is: each host (or address) with its port (5432 by
/// default), and the database (the user's name by default, as libpq has
/// it).
fn place(config: &tokio_postgres::Config) -> (Vec<(String, u16)>, String) {
    let (hosts, addrs) = (config.get_hosts(), config.get_hostaddrs());
    let ports = config.get_ports();
    let at = (0..hosts.len().max(addrs.len()).max(1))
        .map(|i| {
            let host = match (hosts.get(i), addrs.get(i)) {
                (Some(tokio_postgres::config::Host::Tcp(h)), _) => h.to_ascii_lowercase(),
                (Some(tokio_postgres::config::Host::Unix(p)), _) => p.display().to_string(),
                (None, Some(a)) => a.to_string(),
                (None, None) => String::from("localhost"),
            };
            (host, ports.get(i).or(ports.last()).copied().unwrap_or(5432))
        })
        .collect();
    let name = config
        .get_dbname()
        .or(config.get_user())
        .unwrap_or_default()
        .to_owned();
    (at, name)
}

/// Opens the store at `db`: PostgreSQL (waiting for it as the other
/// commands do), or a SQLite file, which must exist unless `create`, locked
/// against `keygate serve` for as long as the lock is held.
pub(crate) async fn open(
    db: &Path,
    role: &str,
    create: bool,
) -> Result<(Opened, Option<StoreLock>), String> {
    let name = shown(db);
    if let Some(url) = db.to_str().filter(|d| is_postgres_url(d)) {
        return PgStore::connect_waiting(url, wait_from_env())
            .await
            .map(|s| (Opened::Pg(Box::new(s)), None))
            .map_err(|e| format!("cannot open the {role} `{name}`: {e}"));
    }
    if !create && !db.exists() {
        return Err(format!("the {role} `{name}` does not exist"));
    }
    let held = lock::migrating(db, role)?;
    SqliteStore::open(db)
        .map(|s| (Opened::Sqlite(s), Some(held)))
        .map_err(|e| format!("cannot open the {role} `{name}`: {e}"))
}

/// Whether `from` and `to` name the same store.
fn same_store(from: &Path, to: &Path) -> bool {
    let pg = |p: &Path| p.to_str().is_some_and(is_postgres_url);
    match (pg(from), pg(to)) {
        (true, true) => {
            let place_of = |p: &Path| p.to_str().and_then(pg_config).map(|c| place(&c));
            match (place_of(from), place_of(to)) {
                // The same database on any host both lists name.
                (Some((a, db_a)), Some((b, db_b))) => {
                    db_a == db_b && a.iter().any(|h| b.contains(h))
                }
                // Neither can be opened; the open says why.
                _ => false,
            }
        }
        (false, false) => match (from.canonicalize(), to.canonicalize()) {
            (Ok(a), Ok(b)) => a == b,
            _ => from == to,
        },
        _ => false,
    }
}

/// `keygate migrate`: checks the pepper against both stores, copies the
/// source into the empty destination in one transaction, and prints what
/// it copied. On any failure the destination is left as it was (a SQLite
/// file this run created is removed).
pub async fn run(args: &MigrateArgs) -> Result<(), String> {
    let (from, to) = (shown(&args.from), shown(&args.to));
    if same_store(&args.from, &args.to) {
        return Err(format!(
            "`--from` and `--to` name the same store `{from}`; give an empty destination"
        ));
    }
    let source_is_pg = args.from.to_str().is_some_and(is_postgres_url);
    let pepper_path =
        match (&args.pepper_file, source_is_pg) {
            (Some(p), _) => p.clone(),
            (None, false) => pepper::default_path(&args.from),
            (None, true) => return Err(String::from(
                "a PostgreSQL source needs `--pepper-file PATH`: the pepper file its instances use",
            )),
        };
    if !source_is_pg && !args.from.exists() {
        return Err(format!("the source `{from}` does not exist"));
    }
    let (pepper, _) = pepper::load_or_create(&pepper_path, false)?;
    let fingerprint = hex::encode(pepper.fingerprint());
    drop(pepper);
    let (source, _source_lock) = open(&args.from, "source", false).await?;
    let shown_pepper = keygate::redact_tokens(&pepper_path.display().to_string()).into_owned();
    match source
        .stored_fingerprint()
        .await
        .map_err(|e| format!("source `{from}`: {e}"))?
    {
        Some(stored) if !stored.eq_ignore_ascii_case(&fingerprint) => {
            return Err(format!(
                "pepper file `{shown_pepper}` does not belong to the source `{from}` (its \
                 fingerprint differs from the one the source stores); give the pepper file \
                 the source was served with"
            ))
        }
        Some(_) => {}
        None => eprintln!(
            "note: the source `{from}` stores no pepper fingerprint yet (it was never served \
             by this version): pepper file `{shown_pepper}` cannot be checked against it"
        ),
    }
    let to_is_new_file = !args.to.to_str().is_some_and(is_postgres_url) && !args.to.exists();
    let result = copy(&source, &from, &args.to, &to, &fingerprint, &shown_pepper).await;
    drop(source);
    if result.is_err() && to_is_new_file {
        // Nothing was committed: leave no empty database behind either.
        for suffix in ["", "-wal", "-shm"] {
            let mut path = args.to.as_os_str().to_owned();
            path.push(suffix);
            let _ = std::fs::remove_file(PathBuf::from(path));
        }
    }
    let copied = result?;
    let rows = |i: usize| copied.rows.get(i).copied().unwrap_or_default();
    println!(
        "copied {} keys, {} events (last seq {}), {} credit pools, {} usage minutes and {} usage \
         days from `{from}` to `{to}`",
        rows(0),
        rows(1),
        copied.end.last_seq,
        rows(2),
        rows(3),
        rows(4)
    );
    if copied.end.expired_leases > 0 {
        eprintln!(
            "note: {} expired credit lease(s) holding {} credits were left behind: their \
             instances stopped without returning them, so they are forfeited, as a running \
             server would forfeit them",
            copied.end.expired_leases, copied.end.expired_credits
        );
    }
    Ok(())
}

/// Opens the destination, checks its fingerprint, and streams the source
/// into it.
async fn copy(
    source: &Opened,
    from: &str,
    to_path: &Path,
    to: &str,
    fingerprint: &str,
    pepper_path: &str,
) -> Result<Copied, String> {
    let (dest, _dest_lock) = open(to_path, "destination", true).await?;
    let stored = dest
        .stored_fingerprint()
        .await
        .map_err(|e| format!("destination `{to}`: {e}"))?;
    if stored.is_some_and(|s| !s.eq_ignore_ascii_case(fingerprint)) {
        return Err(format!(
            "the destination `{to}` was made with another pepper than pepper file \
             `{pepper_path}` (its stored fingerprint differs); nothing was copied"
        ));
    }
    let keys = dest
        .store()
        .count()
        .await
        .map_err(|e| format!("destination `{to}`: {e}"))?;
    if keys > 0 {
        return Err(format!(
            "the destination `{to}` is not empty (it holds {keys} keys): `keygate migrate` \
             copies into an empty store only, and changed nothing (has it run before?)"
        ));
    }
    let (tx, rx) = mpsc::channel(4);
    let (exported, imported) =
        tokio::join!(source.export(tx), dest.import(rx, fingerprint.to_owned()));
    match (exported, imported) {
        (Ok(()), Ok(copied)) => Ok(copied),
        // The side that failed first says why; the other only saw it stop.
        (Err(e), Err(i)) if i == source_gone() => {
            Err(format!("source `{from}`: {e}; nothing was copied"))
        }
        (_, Err(e)) => Err(format!(
            "destination `{to}`: {e}; nothing was copied (the copy is one transaction)"
        )),
        (Err(e), Ok(_)) => Err(format!("source `{from}`: {e}")),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_postgres_url_is_shown_without_its_password() {
        for url in [
            "postgres://kg:s3cret@db.example:5433/keys",
            "postgresql://kg:s3cret@db.example:5433/keys?sslmode=disable",
            "postgres://kg@db.example:5433/keys?password=s3cret",
        ] {
            let s = shown(Path::new(url));
            assert_eq!(s, "postgres://kg@db.example:5433/keys", "{url}");
            assert!(!s.contains("s3cret"));
        }
        assert_eq!(shown(Path::new("keys.db")), "keys.db");
        assert!(!shown(Path::new("postgres://kg:s3cret@[bad")).contains("s3cret"));
    }

    /// F9: the TLS settings the driver does not know leave the name readable.
    #[test]
    fn a_url_with_verify_full_is_shown() {
        let url =
            "postgres://kq:s3cret@db.example:5433/kq2?sslmode=verify-full&sslrootcert=%2Fca.pem";
        assert_eq!(shown(Path::new(url)), "postgres://kq@db.example:5433/kq2");
    }

    /// F9: stores compare by host, port and database, whatever the user or
    /// the TLS settings.
    #[test]
    fn same_store_compares_host_port_and_database() {
        let same = |a: &str, b: &str| same_store(Path::new(a), Path::new(b));
        assert!(!same(
            "postgres://kq@127.0.0.1:1/kq2?sslmode=verify-full",
            "postgres://kq@127.0.0.1:1/kq3?sslmode=verify-full"
        ));
        assert!(same(
            "postgres://a@db.example/keygate",
            "postgres://b:pw@db.example:5432/keygate?sslmode=require"
        ));
        assert!(!same(
            "postgres://a@db.example:5432/keygate",
            "postgres://a@db.example:5433/keygate"
        ));
        assert!(!same(
            "postgres://a@db.example/keygate",
            "postgres://a@other.example/keygate"
        ));
    }

    /// F4: an unescaped `@` in the password never reaches a message.
    #[test]
    fn an_unescaped_at_in_the_password_is_never_shown() {
        let s = shown(Path::new("postgres://ka:Pa@ssTail99@127.0.0.1:55432/ka"));
        assert!(!s.contains("ssTail99") && !s.contains("Pa@"), "{s}");
    }
}
