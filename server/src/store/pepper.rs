//! The pepper file: 32 random bytes, mode 0600, never in the database and
//! never logged.

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use keygate::Pepper;
use zeroize::Zeroizing;

/// The default pepper path: the database path with `.pepper` appended.
pub fn default_path(db: &Path) -> PathBuf {
    let mut s = db.as_os_str().to_owned();
    s.push(".pepper");
    PathBuf::from(s)
}

/// Reads the pepper at `path`. If the file is missing and `may_create`,
/// creates it (mode 0600) with 32 bytes from the OS CSPRNG ([`create`]).
/// Returns the pepper and whether it was created.
///
/// Every buffer that holds pepper bytes is a `Zeroizing` one, so it is
/// wiped on every path: success, a read error, a file of the wrong length,
/// a write or fsync error.
pub fn load_or_create(path: &Path, may_create: bool) -> Result<(Pepper, bool), String> {
    match std::fs::File::open(path) {
        Ok(file) => Ok((read(path, file)?, false)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && may_create => create(path),
        Err(e) => Err(read_error(path, &e)),
    }
}

/// Creates the pepper file atomically: the bytes go to a new temporary file
/// (mode 0600, a random name beside `path`), which is fsynced and only then
/// given its name, never over an existing file (`persist_noclobber`); then
/// the directory is fsynced, so that the name survives a power loss. A crash
/// leaves at most a stray temporary file, never a short pepper file. When
/// another process created the file first, its pepper is read and returned
/// (not created): concurrent creators agree on one pepper.
fn create(path: &Path) -> Result<(Pepper, bool), String> {
    let bytes = Pepper::generate_bytes(&mut keygate::os_entropy());
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut file = tempfile::Builder::new()
        .prefix(&format!(".{name}."))
        .suffix(".tmp")
        .permissions(std::fs::Permissions::from_mode(0o600))
        .tempfile_in(parent(path))
        .map_err(|e| format!("cannot create pepper file `{}`: {e}", path.display()))?;
    write(file.as_file_mut(), &bytes)
        .and_then(|()| file.as_file().sync_all())
        .map_err(|e| format!("cannot write pepper file `{}`: {e}", path.display()))?;
    match file.persist_noclobber(path) {
        Ok(_) => {}
        Err(e) if e.error.kind() == std::io::ErrorKind::AlreadyExists => {
            // Another creator won; its file was complete before it had a name.
            let file = std::fs::File::open(path).map_err(|e| read_error(path, &e))?;
            return Ok((read(path, file)?, false));
        }
        Err(e) => {
            return Err(format!(
                "cannot create pepper file `{}`: {}",
                path.display(),
                e.error
            ))
        }
    }
    sync_parent(path).map_err(|e| format!("cannot write pepper file `{}`: {e}", path.display()))?;
    Ok((Pepper::from_bytes(&bytes), true))
}

/// The directory that holds `path` (`.` for a bare file name).
fn parent(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Reads exactly 32 bytes and checks that nothing follows.
fn read(path: &Path, mut file: impl Read) -> Result<Pepper, String> {
    let mut bytes = Zeroizing::new([0u8; 32]);
    // The byte after the pepper, if any, is as secret as the rest.
    let mut extra = Zeroizing::new([0u8; 1]);
    file.read_exact(bytes.as_mut_slice()).map_err(|e| {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            format!("pepper file `{}` is shorter than 32 bytes", path.display())
        } else {
            read_error(path, &e)
        }
    })?;
    if file
        .read(extra.as_mut_slice())
        .map_err(|e| read_error(path, &e))?
        != 0
    {
        return Err(format!(
            "pepper file `{}` is longer than 32 bytes",
            path.display()
        ));
    }
    Ok(Pepper::from_bytes(&bytes))
}

/// Writes the pepper. A separate function so that tests can make it fail.
fn write(file: &mut impl Write, bytes: &Zeroizing<[u8; 32]>) -> std::io::Result<()> {
    file.write_all(bytes.as_slice())
}

/// Fsyncs the directory that holds `path`, so that a newly created entry is
/// durable (fsyncing a file does not persist its name on every filesystem).
fn sync_parent(path: &Path) -> std::io::Result<()> {
    std::fs::File::open(parent(path))?.sync_all()
}

fn read_error(path: &Path, e: &std::io::Error) -> String {
    format!("cannot read pepper file `{}`: {e}", path.display())
}

#[cfg(test)]
mod tests {
    use super::*;

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
            let t = keygate::testing::example_token();
            p.digest(&keygate::Token::parse(&t).unwrap())
        };
        assert_eq!(d(&a), d(&b));
        std::fs::write(&path, [1u8; 31]).unwrap();
        assert!(load_or_create(&path, true).unwrap_err().contains("shorter"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn temp_dir(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("keygate-pepper-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn wrong_lengths_and_read_errors_are_errors_that_hold_no_secret() {
        let dir = temp_dir("errors");
        let path = dir.join("p");
        let secret = [0x41u8; 33];
        std::fs::write(&path, secret).unwrap();
        let err = load_or_create(&path, true).unwrap_err();
        assert_eq!(
            err,
            format!("pepper file `{}` is longer than 32 bytes", path.display())
        );
        std::fs::write(&path, []).unwrap();
        let err = load_or_create(&path, false).unwrap_err();
        assert!(err.ends_with("is shorter than 32 bytes"), "{err}");
        // A directory opens but cannot be read: the read error, not "shorter".
        let err = load_or_create(&dir, true).unwrap_err();
        assert!(err.starts_with("cannot read pepper file"), "{err}");
        assert!(err.contains("directory"), "{err}");
        // Exactly 32 bytes read.
        std::fs::write(&path, &secret[..32]).unwrap();
        let (from_file, created) = load_or_create(&path, false).unwrap();
        assert!(!created);
        let t = keygate::testing::example_token();
        let t = keygate::Token::parse(&t).unwrap();
        assert_eq!(
            from_file.digest(&t),
            Pepper::from_bytes(&[0x41; 32]).digest(&t)
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A reader that fails after handing out some bytes.
    struct Failing(usize);

    impl Read for Failing {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            if self.0 == 0 {
                return Err(std::io::Error::other("disk on fire"));
            }
            let n = self.0.min(buf.len());
            buf[..n].fill(0x41);
            self.0 -= n;
            Ok(n)
        }
    }

    impl Write for Failing {
        fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
            Err(std::io::Error::other("disk on fire"))
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn io_errors_mid_read_and_on_write_are_reported() {
        let path = Path::new("/x/p");
        let err = read(path, Failing(10)).unwrap_err();
        assert_eq!(err, "cannot read pepper file `/x/p`: disk on fire");
        // Fails on the read after the 32 bytes.
        let err = read(path, Failing(32)).unwrap_err();
        assert_eq!(err, "cannot read pepper file `/x/p`: disk on fire");
        let bytes = Zeroizing::new([0x41u8; 32]);
        let err = write(&mut Failing(0), &bytes).unwrap_err();
        assert_eq!(err.to_string(), "disk on fire");
    }

    #[test]
    fn creating_fails_cleanly_where_no_file_can_be_made() {
        let dir = temp_dir("create");
        let path = dir.join("missing-subdir").join("p");
        let err = load_or_create(&path, true).unwrap_err();
        assert!(err.starts_with("cannot create pepper file"), "{err}");
        // A relative path's directory is `.`, which sync_parent opens.
        sync_parent(Path::new("relative-file")).unwrap();
        sync_parent(&dir.join("p")).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn digest(p: &Pepper) -> impl PartialEq + std::fmt::Debug + Send + 'static {
        let t = keygate::testing::example_token();
        p.digest(&keygate::Token::parse(&t).unwrap())
    }

    #[test]
    fn stray_temporary_files_of_a_crashed_creator_do_not_stop_a_start() {
        let dir = temp_dir("stray");
        let path = dir.join("k.db.pepper");
        // What a creator that crashed before `persist` leaves: empty and
        // short temporary files under the name pattern, never the pepper's.
        std::fs::write(dir.join(".k.db.pepper.AbCdEf.tmp"), b"").unwrap();
        std::fs::write(dir.join(".k.db.pepper.XyZ123.tmp"), [9u8; 7]).unwrap();
        let (a, created) = load_or_create(&path, true).unwrap();
        assert!(created);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 32);
        let (b, created) = load_or_create(&path, true).unwrap();
        assert!(!created);
        assert_eq!(digest(&a), digest(&b));
        // The creator leaves no temporary file of its own behind.
        let strays = std::fs::read_dir(&dir)
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .ends_with(".tmp")
            })
            .count();
        assert_eq!(strays, 2);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn concurrent_creators_agree_on_one_pepper() {
        for round in 0..20 {
            let dir = temp_dir(&format!("race-{round}"));
            let path = dir.join("p");
            let barrier = std::sync::Arc::new(std::sync::Barrier::new(8));
            let results: Vec<_> = (0..8)
                .map(|_| {
                    let (path, barrier) = (path.clone(), std::sync::Arc::clone(&barrier));
                    std::thread::spawn(move || {
                        barrier.wait();
                        let (pepper, created) = load_or_create(&path, true).unwrap();
                        (digest(&pepper), created)
                    })
                })
                .collect::<Vec<_>>()
                .into_iter()
                .map(|h| h.join().unwrap())
                .collect();
            assert_eq!(results.iter().filter(|(_, created)| *created).count(), 1);
            assert!(results.iter().all(|(d, _)| *d == results[0].0));
            let (on_disk, _) = load_or_create(&path, false).unwrap();
            assert_eq!(digest(&on_disk), results[0].0);
            std::fs::remove_dir_all(&dir).unwrap();
        }
    }
}
