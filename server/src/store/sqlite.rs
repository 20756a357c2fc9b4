//! The SQLite store: one table of key records, keyed by id.
//!
//! Durability: WAL journal with `synchronous=FULL`, so a commit is on disk
//! (fsync of the WAL) before `insert` returns, and the server answers 200
//! only after that. This survives a kill of the process and a power loss.

use std::path::Path;

use keygate::{KeyId, KeyRecord};
use rusqlite::{params, Connection, OptionalExtension};

/// A store error, with a lowercase message.
#[derive(Debug)]
pub struct StoreError(pub String);

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for StoreError {}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> StoreError {
        StoreError(format!("database error: {e}"))
    }
}

impl From<serde_json::Error> for StoreError {
    fn from(e: serde_json::Error) -> StoreError {
        StoreError(format!("corrupt key record in database: {e}"))
    }
}

/// One connection to the key database.
pub struct Store {
    conn: Connection,
}

impl Store {
    /// Opens (creating if needed) the database at `path`, in WAL mode with
    /// `synchronous=FULL`, and makes sure the table exists.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        let conn = Connection::open(path)
            .map_err(|e| StoreError(format!("cannot open database `{}`: {e}", path.display())))?;
        conn.busy_timeout(std::time::Duration::from_secs(10))?;
        let mode: String = conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(StoreError(format!(
                "database `{}` refused WAL mode (got `{mode}`)",
                path.display()
            )));
        }
        conn.execute_batch(
            "PRAGMA synchronous=FULL;
             CREATE TABLE IF NOT EXISTS keys (
                 id TEXT PRIMARY KEY NOT NULL,
                 record TEXT NOT NULL
             ) WITHOUT ROWID;",
        )?;
        Ok(Store { conn })
    }

    /// Inserts a record and commits. Fails if the id exists (ids are 95
    /// random bits, so that is a bug or a corrupt database, never a retry).
    pub fn insert(&self, record: &KeyRecord) -> Result<(), StoreError> {
        let json = serde_json::to_string(record)?;
        self.conn.execute(
            "INSERT INTO keys (id, record) VALUES (?1, ?2)",
            params![record.id().as_str(), json],
        )?;
        Ok(())
    }

    /// The record of `id`, if stored.
    pub fn get(&self, id: &KeyId) -> Result<Option<KeyRecord>, StoreError> {
        let json: Option<String> = self
            .conn
            .query_row(
                "SELECT record FROM keys WHERE id = ?1",
                params![id.as_str()],
                |r| r.get(0),
            )
            .optional()?;
        match json {
            Some(j) => Ok(Some(serde_json::from_str(&j)?)),
            None => Ok(None),
        }
    }

    /// Every record.
    pub fn load_all(&self) -> Result<Vec<KeyRecord>, StoreError> {
        let mut stmt = self.conn.prepare("SELECT record FROM keys")?;
        let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
        let mut out = Vec::new();
        for row in rows {
            out.push(serde_json::from_str(&row?)?);
        }
        Ok(out)
    }

    /// The number of stored keys.
    pub fn count(&self) -> Result<i64, StoreError> {
        Ok(self
            .conn
            .query_row("SELECT COUNT(*) FROM keys", [], |r| r.get(0))?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keygate::{MintRequest, Pepper};

    #[test]
    fn round_trip() {
        let dir = std::env::temp_dir().join(format!("keygate-store-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("t.db");
        let _ = std::fs::remove_file(&path);
        let store = Store::open(&path).unwrap();
        let pepper = Pepper::from_bytes(&[3; 32]);
        let req =
            MintRequest::restricted(Some("x"), "agents:read".parse().unwrap(), None, 0).unwrap();
        let record = keygate::mint(&pepper, &req, &mut keygate::os_entropy(), 1)
            .into_parts()
            .0;
        store.insert(&record).unwrap();
        assert!(store.insert(&record).is_err());
        assert_eq!(store.get(&record.id()).unwrap(), Some(record.clone()));
        assert_eq!(store.count().unwrap(), 1);
        drop(store);
        let again = Store::open(&path).unwrap();
        assert_eq!(again.load_all().unwrap(), vec![record]);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
