//! Connecting to PostgreSQL as libpq does, against real throwaway clusters
//! (`support/pg.rs`), through the `keygate` binary: the `sslmode`s against a
//! server with TLS (a CA made by the test) and without; the `PG*`
//! environment and the password file (set on the child process, so no test
//! races another over the process's environment); no password in any
//! message; and the role set-up of docs/operations.md, run as written.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;
#[path = "support/pg.rs"]
mod pg;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use pg::TestPg;

const OPERATIONS_MD: &str = include_str!("../../docs/operations.md");

/// What a developer's shell may have set, kept away from the children.
const PG_ENV: &[&str] = &[
    "PGHOST",
    "PGHOSTADDR",
    "PGPORT",
    "PGUSER",
    "PGPASSWORD",
    "PGDATABASE",
    "PGSSLMODE",
    "PGSSLROOTCERT",
    "PGPASSFILE",
];

fn pepper(dir: &TempDir) -> PathBuf {
    dir.0.join("pepper")
}

/// `keygate serve` on `url`, with `env`, started and listening.
fn serve(dir: &TempDir, url: &str, env: &[(&str, &str)]) -> Server {
    let pepper = pepper(dir);
    let mut all: Vec<(&str, &str)> = vec![("KEYGATE_LOG", "info")];
    all.extend_from_slice(env);
    Server::start_with_env(
        Path::new(url),
        &["--pepper-file", pepper.to_str().unwrap()],
        &all,
    )
}

/// `keygate serve` on `url` must fail at start-up; returns its stderr.
fn refused(dir: &TempDir, url: &str, env: &[(&str, &str)]) -> String {
    refused_with(dir, url, env, &[])
}

/// [`refused`] with more arguments for `serve`.
fn refused_with(dir: &TempDir, url: &str, env: &[(&str, &str)], args: &[&str]) -> String {
    let log = dir.0.join("refused.log");
    let pepper = pepper(dir);
    let mut cmd = Command::new(BIN);
    cmd.args(["serve", "--listen", "127.0.0.1:0", "--db", url])
        .args(args)
        .arg("--pepper-file")
        .arg(&pepper)
        .env("KEYGATE_DB_WAIT", "0")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap());
    for name in PG_ENV {
        cmd.env_remove(name);
    }
    let mut child = cmd.envs(env.iter().copied()).spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!(
                "`{url}` was not refused: {}",
                std::fs::read_to_string(&log).unwrap()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let err = std::fs::read_to_string(&log).unwrap();
    eprintln!("`{url}` refused:\n{err}");
    assert!(!status.success(), "{err}");
    assert!(!err.contains("listening on"), "{err}");
    err
}

/// keygate's connections to `pg`: (over TLS, in plain text).
fn keygate_connections(pg: &TestPg) -> (u32, u32) {
    let row = pg.psql(
        "SELECT count(*) FILTER (WHERE ssl), count(*) FILTER (WHERE NOT ssl) \
         FROM pg_stat_activity JOIN pg_stat_ssl USING (pid) WHERE application_name = 'keygate'",
    );
    let (tls, plain) = row.split_once('|').unwrap();
    (tls.parse().unwrap(), plain.parse().unwrap())
}

fn url(host: &str, port: u16, query: &str) -> String {
    format!("postgres://postgres@{host}:{port}/keygate?{query}")
}

/// `verify-full` to `localhost` and to `127.0.0.1`, both in the certificate:
/// every connection is encrypted.
#[test]
fn verify_full_connects_to_a_name_in_the_certificate() {
    let pg = TestPg::start_tls(&["localhost", "127.0.0.1"]);
    let dir = TempDir::new("pg-tls-full");
    let ca = pg.ca_file();
    for host in ["localhost", "127.0.0.1"] {
        let query = format!("sslmode=verify-full&sslrootcert={}", ca.display());
        let server = serve(&dir, &url(host, pg.port, &query), &[]);
        let (tls, plain) = keygate_connections(&pg);
        assert!(tls > 0 && plain == 0, "{tls} over TLS, {plain} plain");
        drop(server);
    }
}

/// A certificate for `db.example`, reached as `localhost`: `verify-full`
/// refuses, saying the host name did not match; `verify-ca` accepts it.
#[test]
fn verify_full_refuses_another_host_name_and_verify_ca_does_not_check_it() {
    let pg = TestPg::start_tls(&["db.example"]);
    let dir = TempDir::new("pg-tls-name");
    let ca = pg.ca_file().display().to_string();
    let full = url(
        "localhost",
        pg.port,
        &format!("sslmode=verify-full&sslrootcert={ca}"),
    );
    let err = refused(&dir, &full, &[]);
    assert!(
        err.contains("the host name did not match the server's certificate"),
        "{err}"
    );
    assert!(err.contains(&format!("`localhost:{}`", pg.port)), "{err}");
    let ca_only = url(
        "localhost",
        pg.port,
        &format!("sslmode=verify-ca&sslrootcert={ca}"),
    );
    drop(serve(&dir, &ca_only, &[]));
}

/// Another CA's root: `verify-ca`, `verify-full`, and `require` with that
/// `sslrootcert` (which verifies the CA, as libpq's does) all refuse;
/// `require` without one takes any certificate.
#[test]
fn a_certificate_from_another_ca_is_refused() {
    let pg = TestPg::start_tls(&["localhost"]);
    let dir = TempDir::new("pg-tls-ca");
    let other = dir.0.join("other-ca.crt");
    pg::write_unrelated_ca(&other);
    for mode in ["verify-ca", "verify-full", "require"] {
        let query = format!("sslmode={mode}&sslrootcert={}", other.display());
        let err = refused(&dir, &url("localhost", pg.port, &query), &[]);
        assert!(
            err.contains("the server's certificate was not accepted"),
            "{mode}: {err}"
        );
        assert!(err.contains("UnknownIssuer"), "{mode}: {err}");
    }
    let server = serve(&dir, &url("localhost", pg.port, "sslmode=require"), &[]);
    assert_eq!(keygate_connections(&pg).1, 0);
    drop(server);
}

/// A server without TLS: `require` and `verify-*` never fall back to plain
/// text, and say so (not as a handshake failure); `prefer` does fall back.
#[test]
fn require_never_falls_back_to_plain_text_and_prefer_does() {
    let pg = TestPg::start();
    let dir = TempDir::new("pg-tls-none");
    let ca = dir.0.join("ca.crt");
    pg::write_unrelated_ca(&ca);
    for mode in ["require", "verify-ca", "verify-full"] {
        let query = format!("sslmode={mode}&sslrootcert={}", ca.display());
        let err = refused(&dir, &url("127.0.0.1", pg.port, &query), &[]);
        assert!(
            err.contains("the server does not support TLS"),
            "{mode}: {err}"
        );
        assert!(!err.contains("handshake"), "{mode}: {err}");
    }
    let server = serve(&dir, &url("127.0.0.1", pg.port, "sslmode=prefer"), &[]);
    let (tls, plain) = keygate_connections(&pg);
    assert!(tls == 0 && plain > 0, "{tls} over TLS, {plain} plain");
    drop(server);
}

/// F2: a socket directory as the host with `hostaddr`: tokio-postgres
/// dials the address over TCP, so TLS and `verify-full` still apply;
/// refused (another CA's root would otherwise never be checked), naming
/// the address dialled.
#[test]
fn a_socket_host_with_hostaddr_never_skips_tls() {
    let pg = TestPg::start_tls(&["localhost"]);
    let dir = TempDir::new("pg-tls-hostaddr");
    let other = dir.0.join("other-ca.crt");
    pg::write_unrelated_ca(&other);
    let url = format!(
        "postgres://postgres@%2Fnonexistent:{}/keygate?hostaddr=127.0.0.1&sslmode=verify-full&sslrootcert={}",
        pg.port,
        other.display()
    );
    let err = refused(&dir, &url, &[]);
    assert!(err.contains(&format!("`127.0.0.1:{}`", pg.port)), "{err}");
    assert_eq!(keygate_connections(&pg), (0, 0));
}

/// F3: an unescaped `?` in the password: `sslmode=require` still holds
/// against a server without TLS (as with `%3F`).
#[test]
fn a_question_mark_in_the_password_keeps_sslmode_require() {
    let pg = TestPg::start();
    let dir = TempDir::new("pg-tls-qmark");
    for password in ["ab?cd", "ab%3Fcd"] {
        let url = format!(
            "postgres://postgres:{password}@127.0.0.1:{}/keygate?sslmode=require",
            pg.port
        );
        let err = refused(&dir, &url, &[]);
        assert!(err.contains("the server does not support TLS"), "{err}");
        assert!(!err.contains("ab?cd") && !err.contains("ab%3Fcd"), "{err}");
    }
    assert_eq!(keygate_connections(&pg), (0, 0));
}

/// F4: an unescaped `@` in the password: refused, saying to percent-encode
/// it, with no part of the password in the log (text or json), as the
/// address of a real server.
#[test]
fn an_unescaped_at_in_the_password_is_refused_unechoed() {
    let pg = TestPg::start();
    let dir = TempDir::new("pg-tls-at");
    let url = format!(
        "postgres://postgres:Pa@ssTail99@127.0.0.1:{}/keygate",
        pg.port
    );
    for format in ["text", "json"] {
        let err = refused_with(&dir, &url, &[], &["--log-format", format]);
        assert!(err.contains("percent-encode"), "{format}: {err}");
        assert!(
            !err.contains("ssTail99") && !err.contains("Pa@"),
            "{format}: {err}"
        );
    }
}

/// `postgres:///keygate`: host, port, user and the TLS settings from
/// `PGHOST`, `PGPORT`, `PGUSER`, `PGSSLMODE` and `PGSSLROOTCERT`; then a
/// Unix socket directory as `PGHOST` (no TLS there, as with libpq).
#[test]
fn the_environment_fills_in_what_the_url_leaves_out() {
    let pg = TestPg::start_tls(&["localhost"]);
    let dir = TempDir::new("pg-tls-env");
    let port = pg.port.to_string();
    let ca = pg.ca_file().display().to_string();
    let server = serve(
        &dir,
        "postgres:///keygate",
        &[
            ("PGHOST", "localhost"),
            ("PGPORT", &port),
            ("PGUSER", "postgres"),
            ("PGSSLMODE", "verify-full"),
            ("PGSSLROOTCERT", &ca),
        ],
    );
    let (tls, plain) = keygate_connections(&pg);
    assert!(tls > 0 && plain == 0, "{tls} over TLS, {plain} plain");
    drop(server);

    let socket_dir = pg.dir.display().to_string();
    let server = serve(
        &dir,
        "postgres:///keygate",
        &[
            ("PGHOST", &socket_dir),
            ("PGPORT", &port),
            ("PGUSER", "postgres"),
        ],
    );
    let on_socket = pg.psql(
        "SELECT count(*) FROM pg_stat_activity \
         WHERE application_name = 'keygate' AND client_addr IS NULL",
    );
    assert_ne!(on_socket, "0");
    drop(server);
}

/// Password authentication with the password in a password file
/// (`PGPASSFILE`), which is ignored, with a warning, while others may read
/// it; a URL's password never appears in an error.
#[test]
fn the_password_file_and_no_password_in_any_message() {
    let pg = TestPg::start();
    let dir = TempDir::new("pg-passfile");
    pg.psql("CREATE ROLE kg_pass LOGIN PASSWORD 'pass-from-file'");
    pg.psql("GRANT CREATE ON SCHEMA public TO kg_pass");
    pg.hba_first("host all kg_pass 127.0.0.1/32 scram-sha-256");
    let passfile = dir.0.join("pgpass");
    std::fs::write(
        &passfile,
        format!(
            "# host:port:database:user:password\n127.0.0.1:{}:keygate:kg_pass:pass-from-file\n",
            pg.port
        ),
    )
    .unwrap();
    let chmod = |mode: u32| {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&passfile, std::fs::Permissions::from_mode(mode)).unwrap();
    };
    let url = format!("postgres://kg_pass@127.0.0.1:{}/keygate", pg.port);
    let file = passfile.to_str().unwrap();

    chmod(0o640);
    let err = refused(&dir, &url, &[("PGPASSFILE", file)]);
    assert!(err.contains("has group or world access"), "{err}");
    assert!(err.contains("password missing"), "{err}");
    assert!(err.contains(&format!("`127.0.0.1:{}`", pg.port)), "{err}");

    chmod(0o600);
    let server = serve(&dir, &url, &[("PGPASSFILE", file)]);
    drop(server);

    // A wrong port: the error names where it went, never the password.
    let secret = "hunter2-in-the-url";
    let err = refused(
        &dir,
        &format!("postgres://kg_pass:{secret}@127.0.0.1:1/keygate?sslmode=disable"),
        &[],
    );
    assert!(err.contains("`127.0.0.1:1`"), "{err}");
    assert!(!err.contains(secret), "{err}");
    // A wrong password: PostgreSQL refuses, the password stays out.
    let err = refused(
        &dir,
        &format!("postgres://kg_pass:{secret}@127.0.0.1:{}/keygate", pg.port),
        &[],
    );
    assert!(err.contains("28P01"), "{err}");
    assert!(!err.contains(secret), "{err}");
}

/// The ```` ```sql ```` block of docs/operations.md's "Connecting to
/// PostgreSQL" section, run as written by a superuser on an empty cluster;
/// then keygate starts as the role it made (password authentication), and
/// that role is no superuser.
#[test]
fn the_operators_guide_role_setup_is_enough_for_keygate() {
    let start = OPERATIONS_MD
        .find("\n## Connecting to PostgreSQL\n")
        .expect("a `## Connecting to PostgreSQL` section");
    let section = &OPERATIONS_MD[start + 1..];
    let section = &section[..section[3..].find("\n## ").map_or(section.len(), |i| i + 3)];
    let sql = section
        .split("\n```sql\n")
        .nth(1)
        .and_then(|rest| rest.split("\n```\n").next())
        .expect("a ```sql block in the section");
    let password = sql
        .split("PASSWORD '")
        .nth(1)
        .and_then(|rest| rest.split('\'').next())
        .expect("CREATE ROLE ... PASSWORD '...'");

    let pg = TestPg::start_with(pg::PgOptions {
        no_keygate_db: true,
        ..pg::PgOptions::default()
    });
    pg.psql_in("postgres", sql);
    pg.hba_first("host all keygate 127.0.0.1/32 scram-sha-256");
    let dir = TempDir::new("pg-docs-role");
    let url = format!(
        "postgres://keygate:{password}@127.0.0.1:{}/keygate",
        pg.port
    );
    let server = serve(&dir, &url, &[]);
    assert_eq!(
        pg.psql_in(
            "keygate",
            "SELECT rolsuper, rolcreatedb, rolcreaterole FROM pg_roles WHERE rolname = 'keygate'"
        ),
        "f|f|f"
    );
    assert_eq!(
        pg.psql_in(
            "keygate",
            "SELECT tableowner FROM pg_tables WHERE tablename = 'keys'"
        ),
        "keygate"
    );
    drop(server);
}
