//! Where a PostgreSQL connection goes and how, read as libpq reads it: the
//! URL or key-value string, then the standard environment (`PGHOST`,
//! `PGPORT`, `PGUSER`, `PGPASSWORD`, `PGDATABASE`, `PGSSLMODE`,
//! `PGSSLROOTCERT`) for what it leaves out, then the password file; and TLS
//! with rustls (ring), with libpq's five `sslmode`s.
//!
//! `tokio_postgres::Config` knows only `disable`, `prefer` and `require` and
//! no `sslrootcert`, so both are taken out of the string here before the
//! rest is handed to it; `verify-ca` and `verify-full` become `require` with
//! a certificate verifier that checks what they promise.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use std::error::Error as _;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use tokio_postgres::config::Host;
use tokio_postgres_rustls::MakeRustlsConnect;

use super::StoreError;

/// libpq's `sslmode`s, but `allow` (plain text first), which tokio-postgres
/// cannot do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SslMode {
    /// Plain text only.
    Disable,
    /// TLS when the server offers it, plain text when it refuses; the
    /// certificate is not checked.
    Prefer,
    /// TLS or nothing; the certificate is checked only against an
    /// `sslrootcert` (or `~/.postgresql/root.crt`) when there is one.
    Require,
    /// TLS, a chain to a trusted root; any host name.
    VerifyCa,
    /// TLS, a chain to a trusted root, for the host connected to.
    VerifyFull,
}

impl SslMode {
    fn parse(s: &str) -> Result<SslMode, StoreError> {
        match s {
            "disable" => Ok(SslMode::Disable),
            "prefer" => Ok(SslMode::Prefer),
            "require" => Ok(SslMode::Require),
            "verify-ca" => Ok(SslMode::VerifyCa),
            "verify-full" => Ok(SslMode::VerifyFull),
            "allow" => Err(StoreError::Fatal(
                "sslmode `allow` is not supported: use `prefer` or `disable`".into(),
            )),
            other => Err(StoreError::Fatal(format!(
                "invalid sslmode `{other}`: expected disable, prefer, require, verify-ca or verify-full"
            ))),
        }
    }

    fn name(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }
}

/// A resolved connection target: the driver's config, the TLS connector
/// every connection (the pools' and the listener's) uses, and how to name
/// it in messages (host and port, never the password).
#[derive(Clone)]
pub(crate) struct Target {
    pub(crate) config: tokio_postgres::Config,
    pub(crate) tls: MakeRustlsConnect,
    pub(crate) sslmode: SslMode,
    /// `` `host:port` ``, comma-separated when there are several.
    pub(crate) display: String,
}

impl Target {
    /// Resolves `url` with the process environment.
    pub(crate) fn resolve(url: &str) -> Result<Target, StoreError> {
        Target::resolve_with(url, &|name| std::env::var(name).ok())
    }

    /// Resolves `url` with `env` standing for the environment.
    pub(crate) fn resolve_with(
        url: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Target, StoreError> {
        let (split, mut config) = parse(url)?;
        fill_from_env(&mut config, env)?;
        let sslmode = match split.sslmode.or_else(|| env("PGSSLMODE")) {
            Some(mode) => SslMode::parse(&mode)?,
            None => SslMode::Prefer,
        };
        let home = env("HOME").map(PathBuf::from);
        let explicit_root = split
            .sslrootcert
            .or_else(|| env("PGSSLROOTCERT"))
            .filter(|s| !s.is_empty());
        // libpq's default root file, used when it exists.
        let default_root = home
            .as_ref()
            .map(|h| h.join(".postgresql/root.crt"))
            .filter(|p| p.is_file());
        let roots = match (explicit_root, default_root) {
            (Some(system), _) if system == "system" => Some(Roots::System),
            (Some(path), _) => Some(Roots::File(PathBuf::from(path))),
            (None, Some(path)) => Some(Roots::File(path)),
            (None, None) => None,
        };
        #[cfg(unix)]
        if !config.get_hostaddrs().is_empty() {
            // The driver dials `hostaddr` over TCP and has no name to check there.
            if let Some(Host::Unix(dir)) = config
                .get_hosts()
                .iter()
                .find(|h| matches!(h, Host::Unix(_)))
            {
                return Err(StoreError::Fatal(format!(
                    "a socket directory as the host (`{}`) with `hostaddr` is not supported: \
                     {} would be dialled over TCP; give the address as the host, or leave out \
                     hostaddr",
                    dir.display(),
                    display(&config)
                )));
            }
        }
        if config.get_password().is_none() {
            if let Some(password) = passfile_password(&config, env, home.as_deref())? {
                config.password(password);
            }
        }
        // PostgreSQL has no TLS on Unix sockets; libpq ignores sslmode there.
        let only_sockets = config.get_hostaddrs().is_empty()
            && !config.get_hosts().is_empty()
            && config
                .get_hosts()
                .iter()
                .all(|h| !matches!(h, Host::Tcp(_)));
        config.ssl_mode(match sslmode {
            SslMode::Disable => tokio_postgres::config::SslMode::Disable,
            _ if only_sockets => tokio_postgres::config::SslMode::Disable,
            SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
            _ => tokio_postgres::config::SslMode::Require,
        });
        let tls = MakeRustlsConnect::new(client_config(sslmode, roots.as_ref())?);
        let display = display(&config);
        Ok(Target {
            config,
            tls,
            sslmode,
            display,
        })
    }

    /// [`Target::connect_error`] of a pool's failure to open a connection.
    pub(crate) fn pool_error(&self, e: deadpool_postgres::PoolError) -> StoreError {
        match e {
            deadpool_postgres::PoolError::Backend(e) => self.connect_error(&e),
            other => match super::pool_error(other) {
                StoreError::Unavailable(m) => StoreError::Unavailable(format!(
                    "cannot connect to PostgreSQL at {}: {m}",
                    self.display
                )),
                e => e,
            },
        }
    }

    /// A failed connection as a message naming where it went, never the
    /// password; TLS failures say which of them it was.
    pub(crate) fn connect_error(&self, e: &tokio_postgres::Error) -> StoreError {
        let at = &self.display;
        let mode = self.sslmode.name();
        let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(e);
        while let Some(err) = cause {
            if err.to_string() == "server does not support TLS" {
                return StoreError::Fatal(format!(
                    "cannot connect to PostgreSQL at {at}: the server does not support TLS, \
                     and sslmode `{mode}` never connects without it"
                ));
            }
            let tls = err.downcast_ref::<rustls::Error>().or_else(|| {
                err.downcast_ref::<std::io::Error>()
                    .and_then(|io| io.get_ref())
                    .and_then(|inner| inner.downcast_ref::<rustls::Error>())
            });
            if let Some(tls) = tls {
                return StoreError::Fatal(match tls {
                    rustls::Error::InvalidCertificate(
                        CertificateError::NotValidForName
                        | CertificateError::NotValidForNameContext { .. },
                    ) => format!(
                        "cannot connect to PostgreSQL at {at}: the host name did not match the \
                         server's certificate (sslmode `{mode}`): {tls}"
                    ),
                    rustls::Error::InvalidCertificate(_) => format!(
                        "cannot connect to PostgreSQL at {at}: the server's certificate was not \
                         accepted (sslmode `{mode}`): {tls}"
                    ),
                    _ => format!(
                        "cannot connect to PostgreSQL at {at}: TLS handshake failed \
                         (sslmode `{mode}`): {tls}"
                    ),
                });
            }
            cause = err.source();
        }
        let mut detail = with_causes(e);
        if detail.contains("password missing") {
            detail.push_str(
                " (give it in the URL, PGPASSWORD or the password file: PGPASSFILE, else ~/.pgpass)",
            );
        }
        match (super::db_error_ref(e), e.as_db_error()) {
            (StoreError::Unavailable(m), Some(_)) => {
                StoreError::Unavailable(format!("cannot connect to PostgreSQL at {at}: {m}"))
            }
            (StoreError::Fatal(m), Some(_)) => {
                StoreError::Fatal(format!("cannot connect to PostgreSQL at {at}: {m}"))
            }
            (StoreError::Unavailable(_), None) => {
                StoreError::Unavailable(format!("cannot connect to PostgreSQL at {at}: {detail}"))
            }
            (_, None) => {
                StoreError::Fatal(format!("cannot connect to PostgreSQL at {at}: {detail}"))
            }
            (other, _) => other,
        }
    }
}

/// The error and its causes, which the driver's Display leaves out.
pub(crate) fn with_causes(e: &tokio_postgres::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(err) = cause {
        text.push_str(&format!(": {err}"));
        cause = err.source();
    }
    text
}

/// Where the trusted roots come from.
enum Roots {
    /// A PEM file (`sslrootcert=PATH`, or `~/.postgresql/root.crt`).
    File(PathBuf),
    /// The platform's store (`sslrootcert=system`, or verify-* without a file).
    System,
}

/// The string with `sslmode` and `sslrootcert` taken out.
pub(crate) struct Split {
    /// What the driver parses.
    pub(crate) rest: String,
    sslmode: Option<String>,
    sslrootcert: Option<String>,
}

/// The message for a URL with an unescaped `@` in its password; it never
/// quotes the URL, whose host part then holds the password's tail.
const UNESCAPED_AT: &str = "invalid database url: more than one `@` (an unescaped `@` in the \
     password?): percent-encode `@` in the password as `%40`";

/// `url` with the settings the driver does not know taken out, parsed by
/// the driver; refused where the driver would read it otherwise than
/// libpq (an unescaped `@` in the password) or than the split did.
pub(crate) fn parse(url: &str) -> Result<(Split, tokio_postgres::Config), StoreError> {
    parse_split(split_ssl_params(url)?)
}

fn split_ssl_params(url: &str) -> Result<Split, StoreError> {
    let mut split = Split {
        rest: String::new(),
        sslmode: None,
        sslrootcert: None,
    };
    let scheme = ["postgres://", "postgresql://"]
        .into_iter()
        .find(|s| url.starts_with(s));
    if let Some(scheme) = scheme {
        // A second `@` would put the password's tail in the host.
        if url.matches('@').count() > 1 {
            return Err(StoreError::Fatal(UNESCAPED_AT.into()));
        }
        // As the driver reads it: the userinfo ends at the `@`, then the
        // query starts at the first `?` (one in the password is no query).
        let after_userinfo = url
            .get(scheme.len()..)
            .and_then(|s| s.find('@'))
            .map_or(scheme.len(), |at| scheme.len() + at + 1);
        let (base, query) = match url.get(after_userinfo..).and_then(|s| s.find('?')) {
            Some(q) => (
                url.get(..after_userinfo + q).unwrap_or(url),
                url.get(after_userinfo + q + 1..).unwrap_or(""),
            ),
            None => (url, ""),
        };
        let mut kept = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            match percent_decode(key).as_str() {
                "sslmode" => split.sslmode = Some(percent_decode(value)),
                "sslrootcert" => split.sslrootcert = Some(percent_decode(value)),
                _ => kept.push(pair),
            }
        }
        split.rest = if kept.is_empty() {
            base.to_owned()
        } else {
            format!("{base}?{}", kept.join("&"))
        };
    } else {
        let mut kept = Vec::new();
        for (key, value) in key_values(url)? {
            match key.as_str() {
                "sslmode" => split.sslmode = Some(value),
                "sslrootcert" => split.sslrootcert = Some(value),
                _ => kept.push(format!(
                    "{key}='{}'",
                    value.replace('\\', "\\\\").replace('\'', "\\'")
                )),
            }
        }
        split.rest = kept.join(" ");
    }
    Ok(split)
}

/// The driver's config of the string the split left.
fn parse_split(split: Split) -> Result<(Split, tokio_postgres::Config), StoreError> {
    let config: tokio_postgres::Config = split
        .rest
        .parse()
        .map_err(|e| StoreError::Fatal(format!("invalid database url: {e}")))?;
    // keygate sets the mode itself, so one the split missed would be lost.
    if split.sslmode.is_none() && config.get_ssl_mode() != tokio_postgres::config::SslMode::Prefer {
        return Err(StoreError::Fatal(
            "invalid database url: it holds an `sslmode` where keygate did not find it: \
             percent-encode `?`, `&` and `@` in the password"
                .into(),
        ));
    }
    if config
        .get_hosts()
        .iter()
        .any(|h| matches!(h, Host::Tcp(h) if h.contains('@')))
    {
        return Err(StoreError::Fatal(
            "invalid database url: a host holds an `@`: percent-encode `@` in the password \
             as `%40`"
                .into(),
        ));
    }
    Ok((split, config))
}

/// `%XX` decoded; anything malformed is kept as it is.
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (b, hex) {
            (b'%', Some(v)) => {
                out.push(v);
                i += 3;
            }
            _ => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// libpq's `key = value` pairs: values bare or in single quotes, `\`
/// escaping the next character in both.
fn key_values(s: &str) -> Result<Vec<(String, String)>, StoreError> {
    let malformed = || StoreError::Fatal("invalid database url: malformed key-value string".into());
    let mut pairs = Vec::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.peek().is_none() {
            return Ok(pairs);
        }
        let mut key = String::new();
        while let Some(c) = chars.next_if(|c| *c != '=' && !c.is_whitespace()) {
            key.push(c);
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.next() != Some('=') || key.is_empty() {
            return Err(malformed());
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let mut value = String::new();
        if chars.next_if_eq(&'\'').is_some() {
            loop {
                match chars.next() {
                    Some('\'') => break,
                    Some('\\') => value.push(chars.next().ok_or_else(malformed)?),
                    Some(c) => value.push(c),
                    None => return Err(malformed()),
                }
            }
        } else {
            while let Some(c) = chars.next_if(|c| !c.is_whitespace()) {
                if c == '\\' {
                    value.push(chars.next().ok_or_else(malformed)?);
                } else {
                    value.push(c);
                }
            }
        }
        pairs.push((key, value));
    }
}

/// What the string leaves out, from `PGHOST`, `PGPORT`, `PGUSER`,
/// `PGPASSWORD` and `PGDATABASE`, as libpq does; with no host at all,
/// libpq's default socket directory where it exists, else `localhost`.
fn fill_from_env(
    config: &mut tokio_postgres::Config,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<(), StoreError> {
    let set = |name: &str| env(name).filter(|v| !v.is_empty());
    if config.get_hosts().is_empty() && config.get_hostaddrs().is_empty() {
        match set("PGHOST") {
            Some(hosts) => {
                for host in hosts.split(',') {
                    config.host(host.trim());
                }
            }
            None if Path::new(DEFAULT_SOCKET_DIR).is_dir() => {
                config.host(DEFAULT_SOCKET_DIR);
            }
            None => {
                config.host("localhost");
            }
        }
    }
    if config.get_ports().is_empty() {
        if let Some(ports) = set("PGPORT") {
            for port in ports.split(',') {
                let port = port.trim().parse::<u16>().map_err(|_| {
                    StoreError::Fatal(format!("invalid PGPORT `{ports}`: expected a port number"))
                })?;
                config.port(port);
            }
        }
    }
    if config.get_user().is_none() {
        if let Some(user) = set("PGUSER") {
            config.user(user);
        }
    }
    if config.get_password().is_none() {
        if let Some(password) = set("PGPASSWORD") {
            config.password(password);
        }
    }
    if config.get_dbname().is_none() {
        if let Some(db) = set("PGDATABASE") {
            config.dbname(db);
        }
    }
    Ok(())
}

/// libpq's default Unix socket directory on Debian and most Linux builds.
const DEFAULT_SOCKET_DIR: &str = "/var/run/postgresql";

/// The password from the password file (`PGPASSFILE`, else `~/.pgpass`):
/// `host:port:db:user:password` lines, `*` matching anything, `\` escaping
/// `:` and `\`. A file others may read is ignored with a warning, as libpq
/// does. libpq looks it up per host, but the driver sends one password to
/// every host: a list whose hosts' entries differ is refused.
fn passfile_password(
    config: &tokio_postgres::Config,
    env: &dyn Fn(&str) -> Option<String>,
    home: Option<&Path>,
) -> Result<Option<String>, StoreError> {
    let Some(text) = read_passfile(env, home) else {
        return Ok(None);
    };
    let user = config
        .get_user()
        .map(str::to_owned)
        .or_else(|| env("USER"))
        .or_else(|| env("LOGNAME"))
        .unwrap_or_default();
    let db = config
        .get_dbname()
        .map_or_else(|| user.clone(), str::to_owned);
    let found: Vec<Option<String>> = endpoints(config)
        .into_iter()
        .map(|(host, port)| passfile_lookup(&text, [&host, &port.to_string(), &db, &user]))
        .collect();
    match found.split_first() {
        None => Ok(None),
        Some((first, rest)) if rest.iter().all(|p| p == first) => Ok(first.clone()),
        Some(_) => Err(StoreError::Fatal(format!(
            "the password file gives the hosts {} different passwords (or some none), and one \
             password goes to every host: give it in the URL or PGPASSWORD",
            display(config)
        ))),
    }
}

/// The password file's text, unless it is missing or others may read it.
fn read_passfile(env: &dyn Fn(&str) -> Option<String>, home: Option<&Path>) -> Option<String> {
    let path = env("PGPASSFILE")
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .or_else(|| home.map(|h| h.join(".pgpass")))?;
    let meta = std::fs::metadata(&path).ok()?;
    if !meta.is_file() {
        return None;
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if meta.permissions().mode() & 0o077 != 0 {
            tracing::warn!(
                "password file `{}` has group or world access; permissions should be u=rw (0600) \
                 or less: ignored",
                path.display()
            );
            return None;
        }
    }
    std::fs::read_to_string(&path).ok()
}

/// Each host as the password file names it (libpq's default socket
/// directory as `localhost`, an address when only `hostaddr` is given),
/// with its port.
fn endpoints(config: &tokio_postgres::Config) -> Vec<(String, u16)> {
    let (hosts, addrs) = (config.get_hosts(), config.get_hostaddrs());
    let ports = config.get_ports();
    (0..hosts.len().max(addrs.len()).max(1))
        .map(|i| {
            let host = match (hosts.get(i), addrs.get(i)) {
                (Some(Host::Tcp(h)), _) => h.clone(),
                #[cfg(unix)]
                (Some(Host::Unix(p)), _) if p == Path::new(DEFAULT_SOCKET_DIR) => {
                    "localhost".to_owned()
                }
                #[cfg(unix)]
                (Some(Host::Unix(p)), _) => p.display().to_string(),
                (None, Some(a)) => a.to_string(),
                (None, None) => "localhost".to_owned(),
            };
            let port = ports.get(i).or(ports.last()).copied().unwrap_or(5432);
            (host, port)
        })
        .collect()
}

/// The first line of the password file matching `wanted` (host, port,
/// database, user).
fn passfile_lookup(text: &str, wanted: [&str; 4]) -> Option<String> {
    text.lines()
        .filter(|line| !line.trim_start().starts_with('#'))
        .find_map(|line| {
            let fields = passfile_fields(line);
            let (keys, password) = fields.split_at_checked(4)?;
            let matches = keys
                .iter()
                .zip(wanted)
                .all(|(field, want)| field == "*" || field == want);
            (matches && password.len() == 1).then(|| password.concat())
        })
}

/// A password file line split on unescaped `:`, escapes removed; the
/// fifth field takes the rest of the line.
fn passfile_fields(line: &str) -> Vec<String> {
    let mut fields = Vec::new();
    let mut current = String::new();
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => current.extend(chars.next()),
            ':' if fields.len() < 4 => fields.push(std::mem::take(&mut current)),
            c => current.push(c),
        }
    }
    fields.push(current);
    fields
}

/// `` `host:port` `` for each host (the ports repeat the last given, or
/// 5432, as the driver does); where a `hostaddr` is given, the address the
/// driver dials, then the host name.
fn display(config: &tokio_postgres::Config) -> String {
    let (hosts, addrs) = (config.get_hosts(), config.get_hostaddrs());
    let ports = config.get_ports();
    let port_of = |i: usize| ports.get(i).or(ports.last()).copied().unwrap_or(5432);
    let shown: Vec<String> = (0..hosts.len().max(addrs.len()))
        .map(|i| {
            let host = hosts.get(i).map(|h| match h {
                Host::Tcp(h) => format!("`{h}:{}`", port_of(i)),
                #[cfg(unix)]
                Host::Unix(p) => format!("`{}/.s.PGSQL.{}`", p.display(), port_of(i)),
            });
            match (addrs.get(i), host) {
                (Some(a), Some(host)) => format!(
                    "`{}` (host {host})",
                    std::net::SocketAddr::new(*a, port_of(i))
                ),
                (Some(a), None) => format!("`{}`", std::net::SocketAddr::new(*a, port_of(i))),
                (None, Some(host)) => host,
                (None, None) => String::new(),
            }
        })
        .collect();
    shown.join(", ")
}

/// The rustls configuration for `mode`: which certificates pass.
fn client_config(mode: SslMode, roots: Option<&Roots>) -> Result<ClientConfig, StoreError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| StoreError::Fatal(format!("cannot set up TLS: {e}")))?;
    // verify-* without a root file: the platform's roots (libpq would refuse).
    let roots = match (mode, roots) {
        (SslMode::Disable | SslMode::Prefer, _) | (SslMode::Require, None) => None,
        (_, Some(roots)) => Some(roots),
        (SslMode::VerifyCa | SslMode::VerifyFull, None) => Some(&Roots::System),
    };
    let verifier: Arc<dyn ServerCertVerifier> = match roots {
        None => Arc::new(AnyCertificate(provider)),
        Some(roots) => {
            let store = Arc::new(root_store(roots)?);
            let webpki = WebPkiServerVerifier::builder_with_provider(store, provider)
                .build()
                .map_err(|e| StoreError::Fatal(format!("cannot set up TLS: {e}")))?;
            if mode == SslMode::VerifyFull {
                webpki
            } else {
                Arc::new(ChainOnly(webpki))
            }
        }
    };
    Ok(builder
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth())
}

fn root_store(roots: &Roots) -> Result<RootCertStore, StoreError> {
    let mut store = RootCertStore::empty();
    match roots {
        Roots::File(path) => {
            let certs = CertificateDer::pem_file_iter(path)
                .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                .map_err(|e| {
                    StoreError::Fatal(format!("cannot read sslrootcert `{}`: {e}", path.display()))
                })?;
            let (added, _) = store.add_parsable_certificates(certs);
            if added == 0 {
                return Err(StoreError::Fatal(format!(
                    "sslrootcert `{}` holds no usable certificate",
                    path.display()
                )));
            }
        }
        Roots::System => {
            let found = rustls_native_certs::load_native_certs();
            let (added, _) = store.add_parsable_certificates(found.certs);
            if added == 0 {
                return Err(StoreError::Fatal(
                    "no trusted root certificates found on this system: set sslrootcert".into(),
                ));
            }
        }
    }
    Ok(store)
}

/// `prefer` and `require` without roots: any certificate (libpq does not
/// check one either), but the handshake's signatures still are.
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// `verify-ca`: the chain must lead to a trusted root; the host name may
/// be any (webpki checks the name last, after the chain passed).
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests;
