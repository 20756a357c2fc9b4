//! Who holds a SQLite store: every `keygate serve` on it holds a shared lock
//! on `<db>.lock`, and `keygate migrate` an exclusive one, so a migration
//! never copies a store that a server is still writing (what the server
//! wrote after the copy's snapshot would stay behind: a revocation among
//! it would come back to life on the new store), and no server starts on a
//! store being copied. The OS drops the lock when its holder exits, however
//! it exits.

use std::fs::{File, OpenOptions, TryLockError};
use std::path::{Path, PathBuf};

/// A held lock on a store; released on drop.
#[derive(Debug)]
pub struct StoreLock {
    _file: File,
}

/// The lock file of the SQLite store `db`.
pub fn path(db: &Path) -> PathBuf {
    let mut name = db.as_os_str().to_owned();
    name.push(".lock");
    PathBuf::from(name)
}

fn open(db: &Path) -> Result<File, String> {
    let path = path(db);
    OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| format!("cannot open the lock file `{}`: {e}", path.display()))
}

/// The lock a `keygate serve` holds on `db` while it runs (several may).
pub fn serving(db: &Path) -> Result<StoreLock, String> {
    let file = open(db)?;
    match file.try_lock_shared() {
        Ok(()) => Ok(StoreLock { _file: file }),
        Err(TryLockError::WouldBlock) => Err(format!(
            "`keygate migrate` is copying `{}`: start the server when it is done",
            db.display()
        )),
        Err(TryLockError::Error(e)) => Err(format!("cannot lock `{}`: {e}", path(db).display())),
    }
}

/// The lock `keygate migrate` holds on a SQLite source or destination:
/// refused while a server runs on it.
pub fn migrating(db: &Path, role: &str) -> Result<StoreLock, String> {
    let file = open(db)?;
    match file.try_lock() {
        Ok(()) => Ok(StoreLock { _file: file }),
        Err(TryLockError::WouldBlock) => Err(format!(
            "a `keygate serve` runs on the {role} `{}`: stop it first (its writes after the copy \
             would stay behind)",
            db.display()
        )),
        Err(TryLockError::Error(e)) => Err(format!("cannot lock `{}`: {e}", path(db).display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn servers_share_the_store_and_a_migration_excludes_them() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("keys.db");
        let a = serving(&db).unwrap();
        let b = serving(&db).unwrap();
        let refused = migrating(&db, "source").unwrap_err();
        assert!(
            refused.contains("a `keygate serve` runs on the source"),
            "{refused}"
        );
        drop((a, b));
        let held = migrating(&db, "source").unwrap();
        let refused = serving(&db).unwrap_err();
        assert!(
            refused.contains("`keygate migrate` is copying"),
            "{refused}"
        );
        drop(held);
        serving(&db).unwrap();
        assert_eq!(path(&db), dir.path().join("keys.db.lock"));
    }
}
