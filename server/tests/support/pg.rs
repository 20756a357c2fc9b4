//! A throwaway PostgreSQL 15 cluster for tests: `initdb` into a temporary
//! directory (as the `postgres` user when run as root: initdb refuses
//! root), `pg_ctl start` on a free 127.0.0.1 port with its socket in the
//! same directory, one database `keygate`, trust authentication. Dropping
//! it stops the cluster (`-m immediate`) and removes the directory.
//! [`TestPg::start_tls`] also serves TLS with a certificate signed by a CA
//! made for the test (rcgen), whose certificate is [`TestPg::ca_file`].
//!
//! The binaries are looked up in `KEYGATE_PG_BIN`, else
//! `/usr/lib/postgresql/15/bin` (else the newest `/usr/lib/postgresql/N`); when they are missing the test fails
//! (`scripts/test.sh` installs them), it never skips.
#![allow(dead_code, missing_docs)]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// A running throwaway cluster.
pub struct TestPg {
    /// The temporary directory: `data/`, `log`, the socket.
    pub dir: PathBuf,
    /// The TCP port on 127.0.0.1.
    pub port: u16,
    bin: PathBuf,
    as_postgres: bool,
}

fn bin_dir() -> PathBuf {
    let bin = std::env::var_os("KEYGATE_PG_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            // Debian's layout: 15 where present, else the newest installed.
            let preferred = PathBuf::from("/usr/lib/postgresql/15/bin");
            if preferred.exists() {
                return preferred;
            }
            let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
                .into_iter()
                .flatten()
                .flatten()
                .filter_map(|e| {
                    let v = e.file_name().to_str()?.parse::<u32>().ok()?;
                    Some((v, e.path().join("bin")))
                })
                .collect();
            found.sort();
            found.pop().map(|(_, p)| p).unwrap_or(preferred)
        });
    assert!(
        bin.join("initdb").exists() && bin.join("pg_ctl").exists(),
        "PostgreSQL binaries not found in `{}`: install postgresql (scripts/test.sh does) \
         or set KEYGATE_PG_BIN",
        bin.display()
    );
    bin
}

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

fn is_root() -> bool {
    let out = Command::new("id").arg("-u").output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim() == "0"
}

/// How [`TestPg::start_with`] sets up the cluster.
#[derive(Default)]
pub struct PgOptions {
    /// Serve TLS (`ssl=on`) with a certificate for these names (DNS names
    /// or IP addresses), signed by the test's CA.
    pub tls: Option<Vec<String>>,
    /// Leave out the `keygate` database (the docs' setup creates it).
    pub no_keygate_db: bool,
}

/// A fresh CA: its certificate in PEM and the issuer that signs with it.
fn make_ca(name: &str) -> (String, rcgen::Issuer<'static, rcgen::KeyPair>) {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    let pem = params.self_signed(&key).unwrap().pem();
    (pem, rcgen::Issuer::new(params, key))
}

/// Writes the certificate of a CA unrelated to any cluster to `path`.
pub fn write_unrelated_ca(path: &Path) {
    std::fs::write(path, make_ca("unrelated test CA").0).unwrap();
}

impl TestPg {
    /// Starts a fresh cluster with a `keygate` database.
    pub fn start() -> TestPg {
        TestPg::start_with(PgOptions::default())
    }

    /// Starts a fresh cluster that serves TLS with a certificate for
    /// `names`, signed by the CA in [`TestPg::ca_file`].
    pub fn start_tls(names: &[&str]) -> TestPg {
        TestPg::start_with(PgOptions {
            tls: Some(names.iter().map(|n| (*n).to_owned()).collect()),
            ..PgOptions::default()
        })
    }

    /// The test CA's certificate (PEM), for `sslrootcert`.
    pub fn ca_file(&self) -> PathBuf {
        self.dir.join("ca.crt")
    }

    /// Starts a fresh cluster as `options` say.
    pub fn start_with(options: PgOptions) -> TestPg {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = PathBuf::from(format!("/tmp/keygate-pg-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let as_postgres = is_root();
        let pg = TestPg {
            dir,
            port: free_port(),
            bin: bin_dir(),
            as_postgres,
        };
        if as_postgres {
            let status = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(&pg.dir)
                .status()
                .unwrap();
            assert!(status.success(), "chown of {} failed", pg.dir.display());
        }
        let data = pg.data();
        let out = pg.run(
            "initdb",
            &[
                "-D",
                data.to_str().unwrap(),
                "-A",
                "trust",
                "-U",
                "postgres",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ],
        );
        assert!(out.status.success(), "initdb failed: {}", text(&out));
        if let Some(names) = &options.tls {
            pg.install_certificate(names);
        }
        pg.pg_ctl_start();
        if options.no_keygate_db {
            return pg;
        }
        let out = pg.run(
            "createdb",
            &[
                "-h",
                "127.0.0.1",
                "-p",
                &pg.port.to_string(),
                "-U",
                "postgres",
                "keygate",
            ],
        );
        assert!(out.status.success(), "createdb failed: {}", text(&out));
        pg
    }

    fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// A CA (`ca.crt` in `dir`) and a server certificate for `names` signed
    /// by it in the data directory (0600, the server's own), and `ssl=on`.
    fn install_certificate(&self, names: &[String]) {
        let (ca_pem, issuer) = make_ca("keygate test CA");
        std::fs::write(self.ca_file(), ca_pem).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(names.to_vec()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, names[0].as_str());
        let cert = params.signed_by(&key, &issuer).unwrap();
        let data = self.data();
        for (name, body) in [
            ("server.crt", cert.pem()),
            ("server.key", key.serialize_pem()),
        ] {
            let path = data.join(name);
            std::fs::write(&path, body).unwrap();
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
            if self.as_postgres {
                let status = Command::new("chown")
                    .arg("postgres:postgres")
                    .arg(&path)
                    .status()
                    .unwrap();
                assert!(status.success());
            }
        }
        let conf = data.join("postgresql.conf");
        let mut text = std::fs::read_to_string(&conf).unwrap();
        text.push_str("\nssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n");
        std::fs::write(&conf, text).unwrap();
    }

    /// Puts `line` first in `pg_hba.conf` and reloads the configuration.
    pub fn hba_first(&self, line: &str) {
        let hba = self.data().join("pg_hba.conf");
        let old = std::fs::read_to_string(&hba).unwrap();
        std::fs::write(&hba, format!("{line}\n{old}")).unwrap();
        let data = self.data();
        let out = self.run("pg_ctl", &["-D", data.to_str().unwrap(), "reload"]);
        assert!(out.status.success(), "pg_ctl reload failed: {}", text(&out));
        // The postmaster rereads pg_hba.conf on SIGHUP, asynchronously.
        std::thread::sleep(Duration::from_millis(300));
    }

    /// Runs a PostgreSQL binary (as `postgres` when we are root).
    fn run(&self, tool: &str, args: &[&str]) -> Output {
        let exe = self.bin.join(tool);
        let mut cmd = if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(exe);
            c
        } else {
            Command::new(exe)
        };
        cmd.args(args).current_dir(&self.dir).output().unwrap()
    }

    /// `postgres://postgres@127.0.0.1:PORT/keygate`.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/keygate", self.port)
    }

    /// `pg_ctl start`, waiting until it accepts connections.
    pub fn pg_ctl_start(&self) {
        let opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=300 \
             -c shared_buffers=64MB",
            self.port,
            self.dir.display()
        );
        let data = self.data();
        let log = self.dir.join("log");
        let out = self.run(
            "pg_ctl",
            &[
                "-D",
                data.to_str().unwrap(),
                "-l",
                log.to_str().unwrap(),
                "-w",
                "-t",
                "60",
                "-o",
                &opts,
                "start",
            ],
        );
        assert!(
            out.status.success(),
            "pg_ctl start failed: {}\n{}",
            text(&out),
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    }

    /// `pg_ctl stop -m immediate`: every backend dies at once, as in a
    /// crash; the next start recovers from the WAL.
    pub fn stop_immediate(&self) {
        let data = self.data();
        let out = self.run(
            "pg_ctl",
            &[
                "-D",
                data.to_str().unwrap(),
                "-m",
                "immediate",
                "-w",
                "stop",
            ],
        );
        assert!(out.status.success(), "pg_ctl stop failed: {}", text(&out));
    }

    /// Runs SQL through `psql` and returns its unaligned, tuples-only output.
    pub fn psql(&self, sql: &str) -> String {
        self.psql_args("keygate", &["-c", sql])
    }

    /// A script through `psql -f` as the superuser in database `db`: several
    /// statements, and psql's meta-commands (`\connect`).
    pub fn psql_in(&self, db: &str, sql: &str) -> String {
        let file = self.dir.join("script.sql");
        std::fs::write(&file, sql).unwrap();
        self.psql_args(db, &["-f", file.to_str().unwrap()])
    }

    fn psql_args(&self, db: &str, what: &[&str]) -> String {
        let port = self.port.to_string();
        let mut args = vec![
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-U",
            "postgres",
            "-d",
            db,
            "-v",
            "ON_ERROR_STOP=1",
            "-At",
        ];
        args.extend_from_slice(what);
        let out = self.run("psql", &args);
        assert!(out.status.success(), "psql failed: {}", text(&out));
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    }

    /// Waits until `psql` can connect (after a restart).
    pub fn wait_ready(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let out = self.run(
                "pg_isready",
                &["-h", "127.0.0.1", "-p", &self.port.to_string()],
            );
            if out.status.success() {
                return;
            }
            assert!(Instant::now() < deadline, "postgres did not come back");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The server log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("log")).unwrap_or_default()
    }
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

impl Drop for TestPg {
    fn drop(&mut self) {
        let data = self.data();
        if Path::new(&data).exists() {
            let _ = self.run(
                "pg_ctl",
                &[
                    "-D",
                    data.to_str().unwrap(),
                    "-m",
                    "immediate",
                    "-w",
                    "stop",
                ],
            );
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
