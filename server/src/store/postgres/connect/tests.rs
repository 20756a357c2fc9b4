use std::collections::HashMap;

use tokio_postgres::config::{Host, SslMode as DriverMode};

use super::*;

fn resolve(url: &str, env: &[(&str, &str)]) -> Result<Target, StoreError> {
    let env: HashMap<String, String> = env
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    Target::resolve_with(url, &|name| env.get(name).cloned())
}

fn fatal(r: Result<Target, StoreError>) -> String {
    match r {
        Err(StoreError::Fatal(m)) => m,
        Err(other) => panic!("not fatal: {other}"),
        Ok(_) => panic!("resolved"),
    }
}

#[test]
fn sslmode_and_sslrootcert_are_taken_out_of_a_url() {
    let t = resolve(
        "postgres://u:p@db.example:6543/keygate?sslmode=verify-full&application_name=x&sslrootcert=%2Fnone%2Fca.pem",
        &[],
    );
    // The root file does not exist: the message names it, decoded.
    let m = fatal(t);
    assert!(m.contains("`/none/ca.pem`"), "{m}");
    let t = resolve(
        "postgresql://u:p@db.example:6543/keygate?sslmode=require&application_name=x",
        &[],
    )
    .unwrap();
    assert_eq!(t.sslmode, SslMode::Require);
    assert_eq!(t.config.get_ssl_mode(), DriverMode::Require);
    assert_eq!(t.config.get_application_name(), Some("x"));
    assert_eq!(t.config.get_password(), Some(&b"p"[..]));
    assert_eq!(t.display, "`db.example:6543`");
}

#[test]
fn sslmode_in_a_key_value_string() {
    let t = resolve(
        "host=db.example port=6543 user='a b' password='it\\'s' sslmode = verify-ca dbname=keygate",
        &[],
    )
    .unwrap();
    assert_eq!(t.sslmode, SslMode::VerifyCa);
    assert_eq!(t.config.get_ssl_mode(), DriverMode::Require);
    assert_eq!(t.config.get_user(), Some("a b"));
    assert_eq!(t.config.get_password(), Some(&b"it's"[..]));
    assert_eq!(t.config.get_dbname(), Some("keygate"));
    assert!(fatal(resolve("host=x sslmode='", &[])).contains("malformed"));
}

#[test]
fn the_modes() {
    let mode = |m: &str| resolve(&format!("postgres://h/db?sslmode={m}"), &[]);
    assert_eq!(
        mode("disable").unwrap().config.get_ssl_mode(),
        DriverMode::Disable
    );
    assert_eq!(
        mode("prefer").unwrap().config.get_ssl_mode(),
        DriverMode::Prefer
    );
    assert_eq!(
        resolve("postgres://h/db", &[]).unwrap().sslmode,
        SslMode::Prefer
    );
    assert!(fatal(mode("allow")).contains("`allow` is not supported"));
    assert!(fatal(mode("bogus")).contains("invalid sslmode `bogus`"));
    // A socket has no TLS: libpq ignores sslmode there.
    assert_eq!(
        mode("require")
            .map(|_| ())
            .and_then(|()| resolve("postgres:///db?host=/run/x&sslmode=require", &[]))
            .unwrap()
            .config
            .get_ssl_mode(),
        DriverMode::Disable
    );
}

#[test]
fn the_environment_fills_what_the_url_leaves_out() {
    let env = [
        ("PGHOST", "db.internal"),
        ("PGPORT", "6000"),
        ("PGUSER", "kg"),
        ("PGPASSWORD", "from-env"),
        ("PGDATABASE", "envdb"),
        ("PGSSLMODE", "require"),
    ];
    let t = resolve("postgres:///keygate", &env).unwrap();
    assert_eq!(t.config.get_hosts(), &[Host::Tcp("db.internal".into())]);
    assert_eq!(t.config.get_ports(), &[6000]);
    assert_eq!(t.config.get_user(), Some("kg"));
    assert_eq!(t.config.get_password(), Some(&b"from-env"[..]));
    assert_eq!(t.config.get_dbname(), Some("keygate"));
    assert_eq!(t.sslmode, SslMode::Require);
    // The URL wins.
    let t = resolve("postgres://u:p@h:1/d?sslmode=disable", &env).unwrap();
    assert_eq!(t.config.get_hosts(), &[Host::Tcp("h".into())]);
    assert_eq!(t.config.get_ports(), &[1]);
    assert_eq!(t.config.get_user(), Some("u"));
    assert_eq!(t.config.get_password(), Some(&b"p"[..]));
    assert_eq!(t.sslmode, SslMode::Disable);
    let t = resolve("postgres:///keygate", &[("PGHOST", "/tmp/sock")]).unwrap();
    assert_eq!(t.config.get_hosts(), &[Host::Unix("/tmp/sock".into())]);
    assert_eq!(t.display, "`/tmp/sock/.s.PGSQL.5432`");
    assert!(fatal(resolve("postgres:///k", &[("PGPORT", "x")])).contains("invalid PGPORT `x`"));
}

#[test]
fn the_password_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("pgpass");
    std::fs::write(
        &file,
        "# comment\n\
         other:5432:*:kg:wrong\n\
         db.internal:6000:keygate:kg:s3cr\\:et:x\n\
         *:*:*:*:fallback\n",
    )
    .unwrap();
    let set_mode = |mode: u32| {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(mode)).unwrap();
    };
    set_mode(0o600);
    let path = file.to_str().unwrap();
    let t = resolve(
        "postgres://kg@db.internal:6000/keygate",
        &[("PGPASSFILE", path)],
    )
    .unwrap();
    assert_eq!(t.config.get_password(), Some(&b"s3cr:et:x"[..]));
    let t = resolve("postgres://kg@elsewhere/keygate", &[("PGPASSFILE", path)]).unwrap();
    assert_eq!(t.config.get_password(), Some(&b"fallback"[..]));
    // The URL's password wins; `~/.pgpass` by default.
    let t = resolve(
        "postgres://kg:url@db.internal:6000/keygate",
        &[("PGPASSFILE", path)],
    )
    .unwrap();
    assert_eq!(t.config.get_password(), Some(&b"url"[..]));
    std::fs::copy(&file, dir.path().join(".pgpass")).unwrap();
    let home = dir.path().to_str().unwrap();
    let t = resolve("postgres://kg@elsewhere/keygate", &[("HOME", home)]).unwrap();
    assert_eq!(t.config.get_password(), Some(&b"fallback"[..]));
    // Readable by others: ignored (with a warning), as libpq does.
    set_mode(0o640);
    let t = resolve("postgres://kg@elsewhere/keygate", &[("PGPASSFILE", path)]).unwrap();
    assert_eq!(t.config.get_password(), None);
}

#[test]
fn passfile_fields_unescape() {
    assert_eq!(
        passfile_fields(r"h\:x:5432:d:u:p\\w:d"),
        ["h:x", "5432", "d", "u", r"p\w:d"]
    );
    assert_eq!(passfile_fields("a:b"), ["a", "b"]);
}

#[test]
fn percent_decoding() {
    assert_eq!(percent_decode("a%2Fb%zz%4"), "a/b%zz%4");
}

/// Against a real cluster: the store's Debug and a connection error name
/// the host and port, never the URL's password.
#[test]
fn no_password_in_debug_or_errors() {
    let pg = crate::store::postgres::pg::TestPg::start();
    let secret = "debug-secret-7f";
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let url = format!("postgres://postgres:{secret}@127.0.0.1:{}/keygate", pg.port);
    let store = rt.block_on(super::super::PgStore::connect(&url)).unwrap();
    let debug = format!("{store:?}");
    assert!(
        debug.contains("127.0.0.1") && !debug.contains(secret),
        "{debug}"
    );
    let err = rt
        .block_on(super::super::PgStore::connect(&format!(
            "postgres://postgres:{secret}@127.0.0.1:1/keygate"
        )))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("`127.0.0.1:1`") && !err.contains(secret),
        "{err}"
    );
}

/// F2: tokio-postgres dials `hostaddr` over TCP even when the host is a
/// socket directory, so that pair is no socket: refused, never plain text.
#[test]
fn a_socket_host_with_hostaddr_is_refused() {
    let m = fatal(resolve(
        "postgres://kq:pw@%2Fnonexistent:55432/kq?hostaddr=127.0.0.1&sslmode=require",
        &[],
    ));
    assert!(
        m.contains("hostaddr") && m.contains("`127.0.0.1:55432`"),
        "{m}"
    );
    assert!(!m.contains("pw"), "{m}");
}

/// F2: with `hostaddr`, messages name the address dialled, not the host.
#[test]
fn the_display_names_the_hostaddr_dialled() {
    let t = resolve(
        "postgres://u@db.example:6543/k?hostaddr=127.0.0.1&sslmode=require",
        &[],
    )
    .unwrap();
    assert_eq!(t.config.get_ssl_mode(), DriverMode::Require);
    assert!(t.display.contains("`127.0.0.1:6543`"), "{}", t.display);
}

/// F3: a `?` in the password is not where the query starts.
#[test]
fn a_question_mark_in_the_password_keeps_the_sslmode() {
    let t = resolve("postgres://kq:ab?cd@127.0.0.1:5432/kq?sslmode=require", &[]).unwrap();
    assert_eq!(t.sslmode, SslMode::Require);
    assert_eq!(t.config.get_ssl_mode(), DriverMode::Require);
    assert_eq!(t.config.get_password(), Some(&b"ab?cd"[..]));
    let t = resolve("postgres://kq:ab?cd@127.0.0.1:5432/kq", &[]).unwrap();
    assert_eq!(t.sslmode, SslMode::Prefer);
    assert_eq!(t.config.get_password(), Some(&b"ab?cd"[..]));
}

/// F3, belt and braces: an sslmode the driver parsed but the split did
/// not see is refused, not replaced by the default.
#[test]
fn an_sslmode_the_split_missed_is_refused() {
    let split = Split {
        rest: "postgres://u@h/db?sslmode=require".into(),
        sslmode: None,
        sslrootcert: None,
    };
    let m = match parse_split(split) {
        Err(StoreError::Fatal(m)) => m,
        Err(e) => panic!("not fatal: {e}"),
        Ok(_) => panic!("parsed"),
    };
    assert!(m.contains("sslmode"), "{m}");
}

/// F4: an unescaped `@` in the password is refused without echoing any
/// of it; a host with `@` (key-value form) too.
#[test]
fn an_unescaped_at_in_the_password_is_refused_unechoed() {
    for url in [
        "postgres://ka:Pa@ssTail99@127.0.0.1:55432/ka",
        "postgresql://ka:Pa@ssTail99@127.0.0.1:55432/ka?sslmode=disable",
        "postgres://ka:x@y?ssTail99=1@h/ka",
    ] {
        let m = fatal(resolve(url, &[]));
        assert!(m.contains("percent-encode"), "{m}");
        assert!(!m.contains("ssTail99") && !m.contains(":Pa"), "{m}");
    }
    let m = fatal(resolve("host=ssTail99@h dbname=ka", &[]));
    assert!(m.contains("`@`") && !m.contains("ssTail99"), "{m}");
}

/// The password file is read per host: a multi-host list whose hosts'
/// entries differ is refused, since one password goes to every host.
#[test]
fn the_password_file_with_several_hosts() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("pgpass");
    std::fs::write(
        &file,
        "h1:5432:keygate:kg:pw-one-x1\nh2:5432:keygate:kg:pw-two-x2\n",
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let path = file.to_str().unwrap();
    let m = fatal(resolve(
        "postgres://kg@h1,h2/keygate",
        &[("PGPASSFILE", path)],
    ));
    assert!(m.contains("password file"), "{m}");
    assert!(!m.contains("pw-one") && !m.contains("pw-two"), "{m}");
    std::fs::write(&file, "*:5432:keygate:kg:same\n").unwrap();
    let t = resolve("postgres://kg@h1,h2/keygate", &[("PGPASSFILE", path)]).unwrap();
    assert_eq!(t.config.get_password(), Some(&b"same"[..]));
}
