//! The pepper file: 32 random bytes, mode 0600, never in the database and
//! never logged.

use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use keygate::Pepper;
use zeroize::Zeroize;

/// The default pepper path: the database path with `.pepper` appended.
pub fn default_path(db: &Path) -> PathBuf {
    let mut s = db.as_os_str().to_owned();
    s.push(".pepper");
    PathBuf::from(s)
}

/// Reads the pepper at `path`. If the file is missing and `may_create`,
/// creates it (mode 0600) with 32 bytes from the OS CSPRNG. Returns the
/// pepper and whether it was created.
pub fn load_or_create(path: &Path, may_create: bool) -> Result<(Pepper, bool), String> {
    match std::fs::File::open(path) {
        Ok(mut file) => {
            let mut bytes = [0u8; 32];
            let mut extra = [0u8; 1];
            file.read_exact(&mut bytes).map_err(|_| {
                format!("pepper file `{}` is shorter than 32 bytes", path.display())
            })?;
            if file.read(&mut extra).map_err(|e| read_error(path, &e))? != 0 {
                return Err(format!(
                    "pepper file `{}` is longer than 32 bytes",
                    path.display()
                ));
            }
            let pepper = Pepper::from_bytes(&bytes);
            bytes.zeroize();
            Ok((pepper, false))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && may_create => {
            let mut bytes = Pepper::generate_bytes(&mut keygate::os_entropy());
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
                .map_err(|e| format!("cannot create pepper file `{}`: {e}", path.display()))?;
            file.write_all(&bytes)
                .and_then(|()| file.sync_all())
                .map_err(|e| format!("cannot write pepper file `{}`: {e}", path.display()))?;
            let pepper = Pepper::from_bytes(&bytes);
            bytes.zeroize();
            Ok((pepper, true))
        }
        Err(e) => Err(read_error(path, &e)),
    }
}

fn read_error(path: &Path, e: &std::io::Error) -> String {
    format!("cannot read pepper file `{}`: {e}", path.display())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn creates_0600_then_reads_same() {
        let dir = std::env::temp_dir().join(format!("keygate-pepper-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let db = dir.join("k.db");
        let path = default_path(&db);
        assert!(path.to_string_lossy().ends_with("k.db.pepper"));
        let _ = std::fs::remove_file(&path);
        assert!(load_or_create(&path, false).is_err());
        let (a, created) = load_or_create(&path, true).unwrap();
        assert!(created);
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        assert_eq!(meta.len(), 32);
        let (b, created) = load_or_create(&path, true).unwrap();
        assert!(!created);
        let d = |p: &Pepper| {
            let t = keygate::token::example_token();
            p.digest(&keygate::Token::parse(&t).unwrap())
        };
        assert_eq!(d(&a), d(&b));
        std::fs::write(&path, [1u8; 31]).unwrap();
        assert!(load_or_create(&path, true).unwrap_err().contains("shorter"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
