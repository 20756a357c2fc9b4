//! `keygate bench-populate` (hidden from `--help`): fills an empty store
//! with many valid keys at once, for the scale benchmarks
//! (`benches/cold_start.sh`, `benches/follower_load.sh`).
//!
//! Every key is minted with the library's [`keygate::mint`] under the
//! store's pepper (created as `serve` would create it), so its token
//! authenticates against a server on that store. The rows go in through
//! `keygate migrate`'s destination side ([`SqliteStore::import`],
//! `PgStore::import`): one transaction, multi-row inserts on PostgreSQL,
//! into a store that must hold nothing (it refuses otherwise, so it never
//! touches a store in use). Each key gets its `created` event, as a key
//! minted through the API has.
//!
//! Besides the plain keys (restricted, `devboxes:read`, named `bench-N`),
//! `--families F --children C` adds F standard keys each with C restricted
//! children (`creator_id` the parent): `keygate revoke --cascade PARENT`
//! then writes C + 1 revocations in one transaction, the burst
//! `benches/follower_load.sh` feeds a running server's follower.
//!
//! [`SqliteStore::import`]: crate::store::sqlite::SqliteStore::import

use std::io::Write;
use std::path::PathBuf;

use keygate::{KeyId, KeyRecord, KeyRecordParts, MintRequest, Pepper, Scopes, UnixMillis};
use tokio::sync::mpsc;

use crate::cli::migrate;
use crate::store::copy::{Batch, SourceEnd, Value, BATCH};
use crate::store::{pepper, LimitColumns};

/// `keygate bench-populate`'s flags.
#[derive(clap::Args, Debug)]
pub struct PopulateArgs {
    #[command(flatten)]
    pub store: super::StoreArgs,
    /// How many plain keys (restricted, `devboxes:read`).
    #[arg(long, value_name = "N")]
    pub keys: usize,
    /// Write the plain keys' tokens to this file, one per line (mode 0600).
    #[arg(long, value_name = "FILE")]
    pub tokens: Option<PathBuf>,
    /// How many standard parent keys, each with `--children` children.
    #[arg(long, value_name = "F", default_value_t = 0)]
    pub families: usize,
    /// How many restricted children each family's parent has.
    #[arg(long, value_name = "C", default_value_t = 0)]
    pub children: usize,
}

/// The `keys` row of `record` (live, never used), in `store::copy`'s
/// column order.
fn key_row(record: &KeyRecord) -> Vec<Value> {
    let int = |v: Option<i64>| v.map_or(Value::Null, Value::Int);
    let text = |v: Option<String>| v.map_or(Value::Null, Value::Text);
    let limits = LimitColumns::of(record);
    vec![
        Value::Text(record.id().as_str().to_owned()),
        Value::Text(record.kind().as_str().to_owned()),
        Value::Text(record.name().to_owned()),
        Value::Blob(record.secret_hash().as_bytes().to_vec()),
        Value::Int(i64::from(record.scopes().bits())),
        Value::Int(record.created_at().as_millis()),
        int(record.expires_at().map(UnixMillis::as_millis)),
        text(record.creator_id().map(|c| c.as_str().to_owned())),
        Value::Null,
        Value::Null,
        Value::Null,
        int(limits.rate_limit),
        int(limits.rate_period_ms),
        int(limits.credits_remaining),
        int(limits.credits_refill_amount),
        int(limits.credits_refill_interval_ms),
        text(limits.meter_id),
        int(limits.meter_since_ms),
    ]
}

/// The `created` event of the key `id`, numbered `seq`.
fn created_row(seq: i64, at_ms: i64, id: KeyId) -> Vec<Value> {
    vec![
        Value::Int(seq),
        Value::Int(at_ms),
        Value::Text(String::from("created")),
        Value::Text(id.as_str().to_owned()),
        Value::Null,
        Value::Null,
    ]
}

/// `record` with `creator` as the key that minted it.
fn child_of(record: &KeyRecord, creator: KeyId) -> Result<KeyRecord, String> {
    KeyRecord::from_parts(KeyRecordParts {
        id: record.id(),
        kind: record.kind(),
        name: record.name().to_owned(),
        secret_hash: record.secret_hash(),
        scopes: record.scopes(),
        expires_at: record.expires_at(),
        created_at: record.created_at(),
        creator_id: Some(creator),
        limits: record.limits(),
        meter: None,
    })
    .map_err(|e| e.to_string())
}

/// What [`mint_all`] minted.
struct Minted {
    /// Every record, in the order they are written.
    records: Vec<KeyRecord>,
    /// The plain keys' tokens (none unless `--tokens`).
    tokens: Vec<String>,
    /// The families' parents.
    parents: Vec<KeyId>,
}

/// Mints every key, in the order they are written: the plain keys, then
/// each family's parent followed by its children.
fn mint_all(pepper: &Pepper, args: &PopulateArgs, now: UnixMillis) -> Result<Minted, String> {
    let scopes: Scopes = "devboxes:read".parse().map_err(|e| format!("{e}"))?;
    let total = args.keys + args.families * (1 + args.children);
    let mut records = Vec::with_capacity(total);
    let mut tokens = Vec::with_capacity(if args.tokens.is_some() { args.keys } else { 0 });
    let mut rng = keygate::os_entropy();
    let restricted = |name: &str| {
        MintRequest::restricted(Some(name), scopes, None, now).map_err(|e| e.to_string())
    };
    for i in 0..args.keys {
        let minted = keygate::mint(pepper, &restricted(&format!("bench-{i}"))?, &mut rng, now);
        let (record, token) = minted.into_parts();
        if args.tokens.is_some() {
            tokens.push(token.expose_secret().to_owned());
        }
        records.push(record);
    }
    let mut parents = Vec::with_capacity(args.families);
    for f in 0..args.families {
        let request = MintRequest::standard(Some(&format!("bench-parent-{f}")), None, now)
            .map_err(|e| e.to_string())?;
        let (parent, _) = keygate::mint(pepper, &request, &mut rng, now).into_parts();
        let parent_id = parent.id();
        parents.push(parent_id);
        records.push(parent);
        for c in 0..args.children {
            let request = restricted(&format!("bench-child-{f}-{c}"))?;
            let minted = keygate::mint(pepper, &request, &mut rng, now);
            records.push(child_of(minted.record(), parent_id)?);
        }
    }
    Ok(Minted {
        records,
        tokens,
        parents,
    })
}

/// Writes `tokens` to a new file at `path` (mode 0600), one per line.
fn write_tokens(path: &std::path::Path, tokens: &[String]) -> Result<(), String> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| format!("cannot create the tokens file `{}`: {e}", path.display()))?;
    let mut out = std::io::BufWriter::new(file);
    for token in tokens {
        writeln!(out, "{token}").map_err(|e| format!("cannot write the tokens: {e}"))?;
    }
    out.flush()
        .map_err(|e| format!("cannot write the tokens: {e}"))
}

/// `keygate bench-populate`: mints the keys, writes them and their events
/// into the empty store in one transaction, writes the plain keys' tokens,
/// and prints the parents' ids on stdout, one per line (`parent ID`).
pub async fn run(args: &PopulateArgs) -> Result<(), String> {
    let db = &args.store.db;
    let is_pg = db
        .to_str()
        .is_some_and(crate::store::postgres::is_postgres_url);
    let pepper_path = match (&args.store.pepper_file, is_pg) {
        (Some(p), _) => p.clone(),
        (None, false) => pepper::default_path(db),
        (None, true) => return Err(String::from("PostgreSQL needs `--pepper-file PATH`")),
    };
    let (pepper, _) = pepper::load_or_create(&pepper_path, true)?;
    let fingerprint = hex::encode(pepper.fingerprint());
    let now_ms = crate::clock::now_ms();
    let started = std::time::Instant::now();
    let Minted {
        records,
        tokens,
        parents,
    } = mint_all(&pepper, args, UnixMillis::from_millis(now_ms))?;
    drop(pepper);
    let minted_in = started.elapsed();
    let (dest, _lock) = migrate::open(db, "destination", true).await?;
    let (tx, rx) = mpsc::channel(4);
    let send = async move {
        let mut seq = 0i64;
        for chunk in records.chunks(BATCH) {
            let rows = chunk.iter().map(key_row).collect();
            tx.send(Batch::Rows { table: 0, rows })
                .await
                .map_err(|_| ())?;
        }
        for chunk in records.chunks(BATCH) {
            let mut rows = Vec::with_capacity(chunk.len());
            for record in chunk {
                seq += 1;
                rows.push(created_row(seq, now_ms, record.id()));
            }
            tx.send(Batch::Rows { table: 1, rows })
                .await
                .map_err(|_| ())?;
        }
        let end = SourceEnd {
            last_seq: seq,
            ..SourceEnd::default()
        };
        tx.send(Batch::End(end)).await.map_err(|_| ())
    };
    let (_, imported) = tokio::join!(send, dest.import(rx, fingerprint));
    let copied = imported.map_err(|e| format!("`{}`: {e}", migrate::shown(db)))?;
    if let Some(path) = &args.tokens {
        write_tokens(path, &tokens)?;
    }
    for parent in &parents {
        println!("parent {parent}");
    }
    let [keys, events, ..] = copied.rows;
    eprintln!(
        "wrote {keys} keys and {events} events (last seq {}) in {:.1} s (minted in {:.1} s)",
        copied.end.last_seq,
        started.elapsed().as_secs_f64(),
        minted_in.as_secs_f64()
    );
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;
    use crate::cli::StoreArgs;
    use crate::sync::cache::KeyCache;

    /// Every plain key's token authenticates against a keyring loaded from
    /// the store (so the pepper is the store's), every child names its
    /// parent, each key has its `created` event, and a second run into the
    /// same store refuses.
    #[tokio::test]
    async fn the_tokens_authenticate_and_the_children_name_their_parent() {
        let dir = tempfile::tempdir().unwrap();
        let args = PopulateArgs {
            store: StoreArgs {
                db: dir.path().join("k.db"),
                pepper_file: None,
            },
            keys: 5,
            tokens: Some(dir.path().join("tokens")),
            families: 2,
            children: 3,
        };
        run(&args).await.unwrap();

        let (store, pepper) = crate::cli::open_store(&args.store).await.unwrap();
        let snapshot = store.snapshot().await.unwrap();
        assert_eq!(snapshot.records.len(), 5 + 2 * (1 + 3));
        assert_eq!(snapshot.seq, 13);
        let parents: Vec<KeyId> = snapshot
            .records
            .iter()
            .filter(|r| r.kind() == keygate::KeyKind::Standard)
            .map(KeyRecord::id)
            .collect();
        assert_eq!(parents.len(), 2);
        for parent in &parents {
            let children = snapshot
                .records
                .iter()
                .filter(|r| r.creator_id() == Some(*parent))
                .count();
            assert_eq!(children, 3);
        }
        let cache = KeyCache::new(pepper, snapshot.records.len());
        cache.apply(
            snapshot
                .records
                .into_iter()
                .map(|r| keygate::Change::upsert(13, r)),
        );
        let tokens = std::fs::read_to_string(dir.path().join("tokens")).unwrap();
        assert_eq!(tokens.lines().count(), 5);
        for token in tokens.lines() {
            let principal = cache
                .authenticate(token.as_bytes(), crate::clock::now_ms())
                .unwrap();
            assert_eq!(principal.kind(), keygate::KeyKind::Restricted);
        }

        let again = run(&args).await.unwrap_err();
        assert!(again.contains("not empty"), "{again}");
    }
}
