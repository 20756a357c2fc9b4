//! The CLI subcommands that act on the database directly (`mint`, `list`,
//! `get`, `revoke`, `roll`, `limit`, `credits`, `events`, and `usage` in its
//! own file), the store opener they share with `serve`, and the bootstrap
//! key file.
//!
//! Every write here is made with a null actor: the operator at the
//! database, not a key.

pub mod migrate;
pub mod populate;
pub mod routes;
pub mod usage;

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use keygate::{Credits, KeyId, KeyKind, MintRequest, Pepper, RateLimit, Refill, Scopes};
use serde::Serialize;

use crate::clock::now_ms as system_now_ms;
use crate::http::problem::quote;
use crate::http::view::{CreditsView, KeyView};
use crate::store::pepper;
use crate::store::postgres;
use crate::store::sqlite::SqliteStore;
use crate::store::{Event, LimitsChange, Scope, SetOrAdd, Store, StoreError, StoredKey};

/// Where the keys and the pepper live.
#[derive(clap::Args, Debug)]
pub struct StoreArgs {
    /// SQLite database file (created if missing), or a PostgreSQL URL
    /// `postgres://USER@HOST:PORT/DB` (shared by many instances).
    // The value is never shown in `--help`: a URL may hold a password.
    #[arg(
        long,
        value_name = "PATH|URL",
        default_value = "keygate.db",
        env = "KEYGATE_DATABASE_URL",
        hide_env_values = true
    )]
    pub db: PathBuf,
    /// Pepper file: 32 random bytes, created with mode 0600 if missing.
    /// Default: the database path with `.pepper` appended; required with
    /// PostgreSQL (every instance reads the same file).
    #[arg(long, value_name = "PATH", env = "KEYGATE_PEPPER_FILE")]
    pub pepper_file: Option<PathBuf>,
}

/// When a minted key expires: at most one of the three; none, never.
#[derive(clap::Args, Debug, Default)]
#[group(multiple = false)]
pub struct Expiry {
    /// Expiry as a time from now: `90d`, `12h`, `30m`, `1y 6months`.
    #[arg(long, value_name = "DURATION")]
    pub expires_in: Option<String>,
    /// Expiry as an RFC 3339 UTC time, e.g. `2027-01-01T00:00:00Z`.
    #[arg(long, value_name = "TIME")]
    pub expires_at: Option<String>,
    /// Expiry in Unix milliseconds.
    #[arg(long, value_name = "MS", allow_negative_numbers = true)]
    pub expires_at_ms: Option<i64>,
}

impl Expiry {
    /// The expiry in Unix milliseconds, if any, with `now_ms` for
    /// `--expires-in`.
    pub fn at_ms(&self, now_ms: i64) -> Result<Option<i64>, String> {
        if let Some(text) = &self.expires_in {
            let d = humantime::parse_duration(text).map_err(|e| {
                format!(
                    "invalid `--expires-in` `{}`: {e}; expected a number and a unit, like `90d`, `12h` or `30m`",
                    quote(text)
                )
            })?;
            let ms = i64::try_from(d.as_millis())
                .ok()
                .and_then(|ms| now_ms.checked_add(ms))
                .ok_or_else(|| format!("`--expires-in` `{}` is too far away", quote(text)))?;
            return Ok(Some(ms));
        }
        if let Some(text) = &self.expires_at {
            let at = humantime::parse_rfc3339(text).map_err(|e| {
                format!(
                    "invalid `--expires-at` `{}`: {e}; expected an RFC 3339 UTC time, like `2027-01-01T00:00:00Z`",
                    quote(text)
                )
            })?;
            let ms = at
                .duration_since(UNIX_EPOCH)
                .ok()
                .and_then(|d| i64::try_from(d.as_millis()).ok())
                .ok_or_else(|| format!("`--expires-at` `{}` is out of range", quote(text)))?;
            return Ok(Some(ms));
        }
        Ok(self.expires_at_ms)
    }
}

/// The order of `keygate list`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SortBy {
    /// By key id.
    #[default]
    Id,
    /// By creation time, oldest first (then by id).
    Created,
}

/// The longest roll overlap: 7 days (as over HTTP).
pub const MAX_OVERLAP: Duration = Duration::from_secs(7 * 24 * 3600);

/// How many rows the CLI asks the store for at a time.
const PAGE: usize = 100;

pub(crate) fn store_err(e: StoreError) -> String {
    e.to_string()
}

/// Opens the store named by `args`, loads its pepper (creating the pepper
/// file only while the store holds no keys: with keys, a new pepper would
/// lock them all out), and checks the pepper against the fingerprint the
/// store keeps (storing it on first use).
///
/// A `postgres://` or `postgresql://` URL in `--db` selects PostgreSQL
/// ([`postgres::open`]: `--pepper-file` required); anything else is a SQLite
/// file.
pub async fn open_store(args: &StoreArgs) -> Result<(Arc<dyn Store>, Pepper), String> {
    if let Some(url) = args.db.to_str().filter(|db| postgres::is_postgres_url(db)) {
        return postgres::open(url, args.pepper_file.as_deref()).await;
    }
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&args.db).map_err(store_err)?);
    let count = store.count().await.map_err(store_err)?;
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
    store
        .check_pepper(pepper.fingerprint())
        .await
        .map_err(|e| match e {
            StoreError::Fatal(m) => format!("{m} (pepper file `{}`)", path.display()),
            other => other.to_string(),
        })?;
    Ok((store, pepper))
}

/// Runs `f` on a current-thread runtime (the CLI's one-shot commands).
pub fn block_on<F: std::future::Future<Output = Result<(), String>>>(f: F) -> Result<(), String> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?
        .block_on(f)
}

/// `keygate mint`: mints a key into the store and prints its created view.
pub async fn mint(
    args: &StoreArgs,
    name: Option<&str>,
    expiry: &Expiry,
    scopes: &[String],
) -> Result<(), String> {
    let now_ms = system_now_ms();
    let expires_at = expiry.at_ms(now_ms)?.map(keygate::UnixMillis::from_millis);
    let request = if scopes.is_empty() {
        MintRequest::standard(name, expires_at, keygate::UnixMillis::from_millis(now_ms))
    } else {
        let scopes: Scopes = scopes.join(",").parse().map_err(|e| format!("{e}"))?;
        MintRequest::restricted(
            name,
            scopes,
            expires_at,
            keygate::UnixMillis::from_millis(now_ms),
        )
    }
    .map_err(|e| e.to_string())?;
    crate::http::create::check_name(request.name())?;
    let (store, pepper) = open_store(args).await?;
    let minted = keygate::mint(
        &pepper,
        &request,
        &mut keygate::os_entropy(),
        keygate::UnixMillis::from_millis(now_ms),
    );
    store
        .create(minted.record(), None, now_ms)
        .await
        .map_err(store_err)?;
    print_json(&keygate::wire::CreatedKeyView::from(minted))
}

pub(crate) fn print_json<T: Serialize>(value: &T) -> Result<(), String> {
    let json = serde_json::to_string(value).map_err(|e| e.to_string())?;
    println!("{json}");
    Ok(())
}

/// A Unix-ms time as RFC 3339 UTC to the second (raw ms outside years
/// 1970–9999).
pub(crate) fn time(ms: i64) -> String {
    const MAX_MS: i64 = 253_402_300_799_000; // 9999-12-31T23:59:59Z
    match u64::try_from(ms) {
        Ok(u) if ms <= MAX_MS => {
            humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_millis(u)).to_string()
        }
        _ => format!("{ms}ms"),
    }
}

fn opt_time(ms: Option<i64>, none: &str) -> String {
    ms.map_or_else(|| none.to_owned(), time)
}

/// Lays `rows` out under `headers` in left-aligned columns.
pub(crate) fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut out = String::new();
        for (cell, w) in cells.zip(&widths) {
            out.push_str(&format!("{cell:<w$}  "));
        }
        out.trim_end().to_owned() + "\n"
    };
    let mut out = line(&mut headers.iter().copied());
    for row in rows {
        out.push_str(&line(&mut row.iter().map(String::as_str)));
    }
    out
}

/// The columns of a key in `list` and `get`.
const KEY_HEADERS: [&str; 8] = [
    "ID",
    "KIND",
    "NAME",
    "SCOPES",
    "CREATED",
    "EXPIRES",
    "LAST USED",
    "CREATOR",
];

/// A key's row under [`KEY_HEADERS`].
fn key_row(k: &StoredKey) -> Vec<String> {
    let r = &k.record;
    vec![
        r.id().to_string(),
        r.kind().as_str().to_owned(),
        r.name().to_owned(),
        match r.kind() {
            KeyKind::Standard => "all".to_owned(),
            KeyKind::Restricted if r.scopes().is_empty() => "-".to_owned(),
            KeyKind::Restricted => r.scopes().to_string(),
        },
        time(r.created_at().as_millis()),
        opt_time(r.expires_at().map(keygate::UnixMillis::as_millis), "never"),
        opt_time(k.last_used_at_ms, "never"),
        r.creator_id()
            .map_or_else(|| "-".to_owned(), |c| c.to_string()),
    ]
}

/// `keygate list`: every key that is not revoked (with `name`, those whose
/// name contains it), by id or by creation; a table, or a JSON array of key
/// views with `--json`.
pub async fn list(
    args: &StoreArgs,
    name: Option<&str>,
    sort: SortBy,
    json: bool,
) -> Result<(), String> {
    let (store, _pepper) = open_store(args).await?;
    let mut keys = Vec::new();
    let mut after = None;
    loop {
        let page = store
            .list(Scope::All, after, PAGE)
            .await
            .map_err(store_err)?;
        after = page.keys.last().map(|k| k.record.id());
        keys.extend(page.keys);
        if !page.has_more || after.is_none() {
            break;
        }
    }
    if let Some(name) = name {
        keys.retain(|k| k.record.name().contains(name));
    }
    if sort == SortBy::Created {
        // A stable sort: keys created in the same millisecond stay by id.
        keys.sort_by_key(|k| k.record.created_at());
    }
    if json {
        let now = system_now_ms();
        let mut views = Vec::with_capacity(keys.len());
        for k in &keys {
            let credits = CreditsView::live(&*store, &k.record, now)
                .await
                .map_err(store_err)?;
            views.push(KeyView::of(k, None, credits));
        }
        return print_json(&views);
    }
    let rows: Vec<Vec<String>> = keys.iter().map(key_row).collect();
    print!("{}", table(&KEY_HEADERS, &rows));
    Ok(())
}

/// `keygate get ID|TOKEN [--json]`: one key that is not revoked; a table,
/// or its key view as JSON.
pub async fn get(args: &StoreArgs, id: &str, json: bool) -> Result<(), String> {
    let id = parse_id(id)?;
    let (store, _pepper) = open_store(args).await?;
    let key = match store.get(id, Scope::All).await.map_err(store_err)? {
        Some(key) => key,
        None => return Err(format!("no key `{id}`")),
    };
    if let Some(at) = key.revoked_at_ms {
        return Err(format!(
            "key `{id}` was revoked at {} (its history: `keygate events --key {id}`)",
            time(at)
        ));
    }
    if json {
        let credits = CreditsView::live(&*store, &key.record, system_now_ms())
            .await
            .map_err(store_err)?;
        return print_json(&KeyView::of(&key, None, credits));
    }
    print!("{}", table(&KEY_HEADERS, &[key_row(&key)]));
    Ok(())
}

/// A key id, or a whole token (whose id is taken: an operator may paste
/// the token where the id belongs). Neither the token nor its secret is
/// ever echoed: the error quotes the input redacted.
pub(crate) fn parse_id(text: &str) -> Result<KeyId, String> {
    if let Ok(token) = keygate::Token::parse(text) {
        return Ok(token.key_id());
    }
    KeyId::parse(text).map_err(|e| format!("invalid key id `{}`: {e}", quote(text)))
}

/// `keygate revoke ID [--cascade]`: revokes a key (and, with `cascade`,
/// every key minted from it) and prints one line per revoked key.
pub async fn revoke(args: &StoreArgs, id: &str, cascade: bool) -> Result<(), String> {
    let id = parse_id(id)?;
    let (store, _pepper) = open_store(args).await?;
    let revoked = store
        .revoke(id, Scope::All, cascade, None, system_now_ms())
        .await
        .map_err(|e| match e {
            StoreError::NotFound => format!("no live key `{id}` (unknown or already revoked)"),
            other => other.to_string(),
        })?;
    for (seq, key) in revoked {
        println!("revoked {key} (event {seq})");
    }
    Ok(())
}

/// Parses a roll overlap: a number and a unit (`90s`, `15m`, `24h`, `7d`),
/// or `0`; at most [`MAX_OVERLAP`].
pub fn parse_overlap(text: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(text).map_err(|e| {
        format!(
            "invalid duration `{}`: {e}; expected a number and a unit, like `90s`, `15m`, `24h`, `7d` or `0`",
            quote(text)
        )
    })?;
    if d > MAX_OVERLAP {
        return Err(format!(
            "overlap `{}` is longer than the maximum of 7 days",
            quote(text)
        ));
    }
    Ok(d)
}

/// `keygate roll ID [--overlap DURATION]`: rolls a key and prints the new
/// key's created view; the old key's new expiry goes to stderr (stdout
/// stays one JSON document).
pub async fn roll(args: &StoreArgs, id: &str, overlap: &str) -> Result<(), String> {
    let id = parse_id(id)?;
    let overlap = parse_overlap(overlap)?;
    let overlap_ms = u64::try_from(overlap.as_millis()).unwrap_or(u64::MAX);
    let (store, pepper) = open_store(args).await?;
    let not_found = || format!("no live key `{id}` (unknown or revoked)");
    let key = match store.get(id, Scope::All).await.map_err(store_err)? {
        Some(key) if key.revoked_at_ms.is_none() => key,
        _ => return Err(not_found()),
    };
    let now_ms = system_now_ms();
    let rolled = keygate::roll(
        &pepper,
        &key.record,
        core::time::Duration::from_millis(overlap_ms),
        &mut keygate::os_entropy(),
        keygate::UnixMillis::from_millis(now_ms),
    )
    .map_err(|e| e.to_string())?;
    let (new_key, old) = rolled.into_parts();
    store
        .roll(&old, new_key.record(), Scope::All, None, now_ms)
        .await
        .map_err(|e| match e {
            StoreError::NotFound => not_found(),
            other => other.to_string(),
        })?;
    print_json(&keygate::wire::CreatedKeyView::from(new_key))?;
    match old.expires_at().map(keygate::UnixMillis::as_millis) {
        Some(ms) => eprintln!(
            "old key {id} now expires at {} (expires_at_ms {ms})",
            time(ms)
        ),
        None => eprintln!("old key {id} never expires"),
    }
    Ok(())
}

/// `keygate limit`'s change: a new rate limit, or none.
#[derive(clap::Args, Debug)]
#[group(required = true, multiple = false)]
pub struct RateChange {
    /// The rate limit: N requests per DURATION, with a burst of N, such as
    /// `100/1s`, `5/250ms` or `1000/1m` (N 1 to 1000000; DURATION 1ms to
    /// 31d).
    #[arg(long, value_name = "N/DURATION")]
    pub rate: Option<String>,
    /// Remove the rate limit.
    #[arg(long)]
    pub no_rate: bool,
}

/// `keygate credits`' change: set the balance, add to it, or remove the
/// credits.
#[derive(clap::Args, Debug)]
#[group(required = true, multiple = false)]
pub struct CreditsChange {
    /// Set the balance to N (a key without credits gets credits with a
    /// grant of N).
    #[arg(long, value_name = "N")]
    pub set: Option<u64>,
    /// Add N to the balance (negative takes away; the result is clamped at
    /// 0). The key must have credits.
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    pub add: Option<i64>,
    /// Remove the key's credits.
    #[arg(long)]
    pub no_credits: bool,
}

/// Splits `N/DURATION` (the duration as `--overlap` and `--expires-in`
/// read it).
fn parse_per(text: &str, flag: &str) -> Result<(u64, Duration), String> {
    let invalid = |why: String| format!("invalid `{flag}` `{}`: {why}", quote(text));
    let (n, d) = text
        .split_once('/')
        .ok_or_else(|| invalid(String::from("expected N/DURATION, like `100/1s`")))?;
    let n: u64 = n
        .trim()
        .parse()
        .map_err(|_| invalid(String::from("N must be a whole number")))?;
    let d = humantime::parse_duration(d.trim()).map_err(|e| {
        invalid(format!(
            "{e}; expected a number and a unit after the `/`, like `1s`, `250ms`, `1m` or `30d`"
        ))
    })?;
    Ok((n, d))
}

/// Parses `--rate N/DURATION`.
pub fn parse_rate(text: &str) -> Result<RateLimit, String> {
    let (n, period) = parse_per(text, "--rate")?;
    let n = u32::try_from(n).unwrap_or(u32::MAX);
    RateLimit::new(n, period).map_err(|e| format!("invalid `--rate` `{}`: {e}", quote(text)))
}

/// Parses `--refill N/DURATION`.
pub fn parse_refill(text: &str) -> Result<Refill, String> {
    let (n, interval) = parse_per(text, "--refill")?;
    Refill::new(n, interval).map_err(|e| format!("invalid `--refill` `{}`: {e}", quote(text)))
}

/// What `limit` and `credits` print: the key's limits and its meter's
/// balance.
#[derive(Serialize)]
struct LimitsView {
    id: KeyId,
    rate_limit: Option<RateLimit>,
    credits: Option<CreditsView>,
    /// The meter's balance now (null without credits).
    balance: Option<u64>,
}

/// The live key `id`, or the CLI's message for one that is not.
async fn live_key(store: &dyn Store, id: KeyId) -> Result<StoredKey, String> {
    match store.get(id, Scope::All).await.map_err(store_err)? {
        Some(key) if key.revoked_at_ms.is_none() => Ok(key),
        _ => Err(format!("no live key `{id}` (unknown or revoked)")),
    }
}

/// Changes the limits of `key`'s meter; reports on stderr how many keys
/// share them. Returns the key's new record.
async fn change_limits(
    store: &dyn Store,
    key: &StoredKey,
    change: LimitsChange,
) -> Result<keygate::KeyRecord, String> {
    let id = key.record.id();
    let changed = store
        .set_limits(id, change, Scope::All, None, system_now_ms())
        .await
        .map_err(|e| match e {
            StoreError::NotFound => format!("no live key `{id}` (unknown or revoked)"),
            other => other.to_string(),
        })?;
    if changed.len() > 1 {
        eprintln!(
            "changed the limits of {} keys that share a meter with {id} (its roll family and the keys it minted while limited)",
            changed.len()
        );
    }
    Ok(changed
        .into_iter()
        .find(|(_, r)| r.id() == id)
        .map_or_else(|| key.record.clone(), |(_, r)| r))
}

/// Prints a key's limits and its meter's balance.
async fn print_limits(store: &dyn Store, record: &keygate::KeyRecord) -> Result<(), String> {
    let now = keygate::UnixMillis::from_millis(system_now_ms());
    let balance = store
        .credit_balance(record.meter(), now)
        .await
        .map_err(store_err)?;
    print_json(&LimitsView {
        id: record.id(),
        rate_limit: record.limits().rate,
        credits: CreditsView::configured(record),
        balance,
    })
}

/// `keygate limit ID --rate N/DURATION | --no-rate`: sets or removes the
/// rate limit of the key's meter (every key that shares it) and prints the
/// key's limits.
pub async fn limit(args: &StoreArgs, id: &str, change: &RateChange) -> Result<(), String> {
    let id = parse_id(id)?;
    let rate = change.rate.as_deref().map(parse_rate).transpose()?;
    let (store, _pepper) = open_store(args).await?;
    let key = live_key(&*store, id).await?;
    let record = change_limits(
        &*store,
        &key,
        LimitsChange {
            rate: Some(rate),
            credits: None,
        },
    )
    .await?;
    print_limits(&*store, &record).await
}

/// `keygate credits ID --set N | --add N | --no-credits [--refill
/// N/DURATION]`: changes the credits of the key's meter and prints its
/// limits and balance.
///
/// A key without credits gets them with `--set N` (a grant of N). With
/// `--refill`, the credits' refill changes first, which starts the balance
/// afresh at the grant (as any change of the credits does); then the
/// balance is set or added to.
pub async fn credits(
    args: &StoreArgs,
    id: &str,
    change: &CreditsChange,
    refill: Option<&str>,
) -> Result<(), String> {
    let id = parse_id(id)?;
    let refill = refill.map(parse_refill).transpose()?;
    let (store, _pepper) = open_store(args).await?;
    let key = live_key(&*store, id).await?;
    if store.is_rolled(id).await.map_err(store_err)? {
        return Err(crate::store::rolled_target(id).to_string());
    }
    if change.no_credits {
        let record = change_limits(
            &*store,
            &key,
            LimitsChange {
                rate: None,
                credits: Some(None),
            },
        )
        .await?;
        return print_limits(&*store, &record).await;
    }
    let configured = key.record.limits().credits;
    let op = match (change.set, change.add) {
        (Some(n), _) => SetOrAdd::Set(n),
        (None, Some(n)) => SetOrAdd::Add(n),
        (None, None) => return Err(String::from("give `--set`, `--add` or `--no-credits`")),
    };
    let record = match (configured, op) {
        // No credits yet: `--set N` configures a grant of N (the balance
        // starts at it).
        (None, SetOrAdd::Set(n)) => {
            let credits = Credits::new(n, refill).map_err(|e| e.to_string())?;
            let record = change_limits(
                &*store,
                &key,
                LimitsChange {
                    rate: None,
                    credits: Some(Some(credits)),
                },
            )
            .await?;
            return print_limits(&*store, &record).await;
        }
        (None, SetOrAdd::Add(_)) => {
            return Err(format!(
                "key `{id}` has no credits; give it some with `--set N` first"
            ))
        }
        (Some(credits), _) if refill.is_some() && credits.refill() != refill => {
            let credits = Credits::new(credits.remaining(), refill).map_err(|e| e.to_string())?;
            change_limits(
                &*store,
                &key,
                LimitsChange {
                    rate: None,
                    credits: Some(Some(credits)),
                },
            )
            .await?
        }
        (Some(_), _) => key.record.clone(),
    };
    let now = keygate::UnixMillis::from_millis(system_now_ms());
    store
        .change_credits(record.meter(), op, now)
        .await
        .map_err(store_err)?;
    print_limits(&*store, &record).await
}

/// `keygate events [--after SEQ] [--key ID] [--json]`: the audit log after
/// `after`, in order (with `key`, only the events that name it); a table,
/// or a JSON array of events with `--json`.
pub async fn events(
    args: &StoreArgs,
    after: u64,
    key: Option<&str>,
    json: bool,
) -> Result<(), String> {
    let key = key.map(parse_id).transpose()?;
    let (store, _pepper) = open_store(args).await?;
    let mut events: Vec<Event> = Vec::new();
    let mut cursor = after;
    loop {
        let (page, more) = store
            .events(cursor, PAGE, Scope::All)
            .await
            .map_err(store_err)?;
        cursor = page.last().map_or(cursor, |e| e.seq);
        let empty = page.is_empty();
        events.extend(page.into_iter().filter(|e| {
            key.is_none_or(|k| e.key_id == k || e.actor_id == Some(k) || e.new_key_id == Some(k))
        }));
        if !more || empty {
            break;
        }
    }
    if json {
        return print_json(&events);
    }
    let id_or_dash = |id: Option<KeyId>| id.map_or_else(|| "-".to_owned(), |i| i.to_string());
    let rows: Vec<Vec<String>> = events
        .iter()
        .map(|e| {
            vec![
                e.seq.to_string(),
                time(e.at_ms),
                e.action.as_str().to_owned(),
                e.key_id.to_string(),
                id_or_dash(e.actor_id),
                id_or_dash(e.new_key_id),
            ]
        })
        .collect();
    print!(
        "{}",
        table(&["SEQ", "AT", "ACTION", "KEY", "ACTOR", "NEW KEY"], &rows)
    );
    Ok(())
}

/// The bootstrap key file's path: the database path with `.bootstrap-key`
/// appended.
pub fn bootstrap_path(db: &Path) -> PathBuf {
    let mut s = db.as_os_str().to_owned();
    s.push(".bootstrap-key");
    PathBuf::from(s)
}

/// Writes the bootstrap token to `<db>.bootstrap-key`, mode 0600, created
/// new (an existing file is an error, never overwritten), with the file and
/// its directory fsynced; returns the path. The token is never printed.
pub fn write_bootstrap_file(db_path: &Path, token: &str) -> Result<PathBuf, String> {
    let path = bootstrap_path(db_path);
    let shown = path.display().to_string();
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .map_err(|e| format!("cannot create bootstrap key file `{shown}`: {e}"))?;
    file.write_all(token.as_bytes())
        .and_then(|()| file.write_all(b"\n"))
        .and_then(|()| file.sync_all())
        .map_err(|e| format!("cannot write bootstrap key file `{shown}`: {e}"))?;
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::File::open(&dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| format!("cannot sync directory `{}`: {e}", dir.display()))?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn bootstrap_file_is_0600_new_and_holds_the_token() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("k.db");
        let path = write_bootstrap_file(&db, "ak_token").unwrap();
        assert_eq!(path, dir.path().join("k.db.bootstrap-key"));
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "ak_token\n");
        // Never overwritten.
        let err = write_bootstrap_file(&db, "ak_other").unwrap_err();
        assert!(err.contains("cannot create bootstrap key file"), "{err}");
        assert!(!err.contains("ak_other"));
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "ak_token\n");
        // A bare file name works (directory `.`) in spirit: the parent of a
        // relative path with no directory is the current directory.
        assert_eq!(
            bootstrap_path(Path::new("keygate.db")),
            PathBuf::from("keygate.db.bootstrap-key")
        );
    }

    #[test]
    fn overlaps() {
        assert_eq!(parse_overlap("90s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_overlap("15m").unwrap(), Duration::from_secs(900));
        assert_eq!(parse_overlap("24h").unwrap(), Duration::from_secs(86_400));
        assert_eq!(parse_overlap("7d").unwrap(), MAX_OVERLAP);
        assert_eq!(parse_overlap("0").unwrap(), Duration::ZERO);
        assert!(parse_overlap("8d")
            .unwrap_err()
            .contains("maximum of 7 days"));
        assert!(parse_overlap("7d1s").unwrap_err().contains("maximum"));
        assert_eq!(parse_overlap("1.5h").unwrap(), Duration::from_secs(5_400));
        for bad in ["", "5", "-5s", "abc", "5x", "7 days ago"] {
            let e = parse_overlap(bad).unwrap_err();
            assert!(e.starts_with("invalid duration `"), "{bad}: {e}");
        }
    }

    #[test]
    fn times_and_tables() {
        assert_eq!(time(0), "1970-01-01T00:00:00Z");
        assert_eq!(time(4_102_444_800_000), "2100-01-01T00:00:00Z");
        assert_eq!(time(i64::MAX), format!("{}ms", i64::MAX));
        assert_eq!(time(-1), "-1ms");
        let t = table(&["A", "BB"], &[vec!["xyz".into(), "1".into()]]);
        assert_eq!(t, "A    BB\nxyz  1\n");
    }
}
