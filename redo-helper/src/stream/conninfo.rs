//! libpq-style connection strings (`host=... port=... sslmode=...`) and `postgresql://` URIs,
//! with libpq's PG* environment fallbacks and defaults, for the replication connection.
//!
//! The keywords and their meaning follow libpq ("Parameter Key Words" in the PostgreSQL
//! documentation); what this client does not implement is refused by name, never ignored,
//! so that a setting an operator relies on (say `sslmode=verify-full`) cannot silently do
//! nothing. Only one host is supported.
//!
//! Secrets: the password (and any text that may hold part of it) never appears in an error
//! or in `Debug`/`Display`. A syntax error reports the byte position instead of the text,
//! and an unknown keyword is named only when it is one of libpq's keywords — a word that is
//! not a keyword may be the second half of a password with an unquoted space in it.

use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// libpq's default socket directory on Debian (`DEFAULT_PGSOCKET_DIR`, pg_config_manual.h as
/// patched by Debian); `.pgpass` entries for `localhost` also match it.
pub(crate) const DEFAULT_SOCKET_DIR: &str = "/var/run/postgresql";
/// libpq's default port (`DEF_PGPORT`).
pub(crate) const DEFAULT_PORT: u16 = 5432;
/// Connection establishment time limit when `connect_timeout` is not given. libpq waits
/// forever; a service that reconnects by itself is better served by giving up and retrying.
pub(crate) const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The keywords this client implements.
const SUPPORTED: &[&str] = &[
    "host",
    "hostaddr",
    "port",
    "user",
    "password",
    "passfile",
    "dbname",
    "application_name",
    "sslmode",
    "sslrootcert",
    "sslcert",
    "sslkey",
    "sslcrl",
    "channel_binding",
    "require_auth",
    "connect_timeout",
];

/// libpq keywords this client does not implement: named in the error when used.
const LIBPQ_OTHER: &[&str] = &[
    "options",
    "fallback_application_name",
    "keepalives",
    "keepalives_idle",
    "keepalives_interval",
    "keepalives_count",
    "tcp_user_timeout",
    "sslcompression",
    "sslpassword",
    "sslcertmode",
    "sslcrldir",
    "sslsni",
    "sslnegotiation",
    "requirepeer",
    "ssl_min_protocol_version",
    "ssl_max_protocol_version",
    "gssencmode",
    "krbsrvname",
    "gsslib",
    "gssdelegation",
    "service",
    "target_session_attrs",
    "load_balance_hosts",
    "replication",
    "client_encoding",
];

/// Where the server is.
#[derive(Clone, PartialEq, Eq, Debug)]
pub(crate) enum Host {
    /// A host name or IP address (TCP).
    Tcp(String),
    /// A Unix-domain socket directory: the socket is `<dir>/.s.PGSQL.<port>` (libpq treats
    /// a host starting with `/` this way).
    Socket(PathBuf),
}

/// `sslmode`, libpq's meanings ("SSL Mode Descriptions").
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum SslMode {
    /// Never TLS.
    Disable,
    /// Plaintext first; TLS only if the server refuses the plaintext connection.
    Allow,
    /// TLS if the server agrees, plaintext otherwise (libpq's default).
    Prefer,
    /// TLS or nothing; the certificate is checked only if a root certificate file exists.
    Require,
    /// TLS, the certificate chain checked against the root certificates.
    VerifyCa,
    /// TLS, the chain checked and the host name matched against the certificate.
    VerifyFull,
}

impl SslMode {
    fn parse(s: &str) -> Option<SslMode> {
        Some(match s {
            "disable" => SslMode::Disable,
            "allow" => SslMode::Allow,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            _ => return None,
        })
    }

    /// Modes that must check the certificate chain (an error when no root certificate).
    pub(crate) fn verifies(self) -> bool {
        matches!(self, SslMode::VerifyCa | SslMode::VerifyFull)
    }

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Allow => "allow",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }
}

/// `channel_binding` (libpq's meanings).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum ChannelBindingMode {
    Disable,
    /// Use SCRAM-SHA-256-PLUS when TLS is in use and the server offers it.
    Prefer,
    /// Fail unless the server is authenticated with channel binding.
    Require,
}

/// The root certificates that check the server's certificate (`sslrootcert`).
#[derive(Clone, PartialEq, Eq, Debug)]
pub(crate) enum RootCert {
    /// A PEM file; as in libpq, a file that does not exist means "no root certificate".
    File(PathBuf),
    /// `sslrootcert=system`: the system's trusted roots (PostgreSQL 16's libpq).
    System,
}

/// Authentication methods `require_auth` names (libpq 16: `AUTH_REQ_*` requests).
#[derive(Clone, Copy, PartialEq, Eq, Debug, PartialOrd, Ord)]
pub(crate) enum AuthMethod {
    /// The server authenticates without asking the client anything (trust, peer, cert).
    None,
    Password,
    Md5,
    ScramSha256,
    Gss,
    Sspi,
}

impl AuthMethod {
    fn parse(s: &str) -> Option<AuthMethod> {
        Some(match s {
            "none" => AuthMethod::None,
            "password" => AuthMethod::Password,
            "md5" => AuthMethod::Md5,
            "scram-sha-256" => AuthMethod::ScramSha256,
            "gss" => AuthMethod::Gss,
            "sspi" => AuthMethod::Sspi,
            _ => return None,
        })
    }

    /// How libpq's error messages name the server's request.
    pub(crate) fn request(self) -> &'static str {
        match self {
            AuthMethod::None => "no authentication",
            AuthMethod::Password => "a cleartext password",
            AuthMethod::Md5 => "a hashed password",
            AuthMethod::ScramSha256 => "SASL authentication",
            AuthMethod::Gss => "GSSAPI authentication",
            AuthMethod::Sspi => "SSPI authentication",
        }
    }
}

/// `require_auth`: the authentication methods the server may use (libpq 16 semantics: a
/// list of methods, or a list of `!method`s to forbid; not both).
#[derive(Clone, PartialEq, Eq, Debug)]
pub(crate) struct RequireAuth {
    /// The text as given, for error messages (method names only: no secret).
    pub text: String,
    allowed: Vec<AuthMethod>,
}

impl RequireAuth {
    fn parse(s: &str) -> Result<RequireAuth, ConnInfoError> {
        let bad = |expected: &'static str| ConnInfoError::Value {
            keyword: "require_auth",
            value: shown_value(s),
            expected,
        };
        let all = [
            AuthMethod::None,
            AuthMethod::Password,
            AuthMethod::Md5,
            AuthMethod::ScramSha256,
            AuthMethod::Gss,
            AuthMethod::Sspi,
        ];
        let mut negated = None;
        let mut named = Vec::new();
        for item in s.split(',') {
            let item = item.trim();
            let (neg, name) = match item.strip_prefix('!') {
                Some(n) => (true, n),
                None => (false, item),
            };
            if *negated.get_or_insert(neg) != neg {
                return Err(bad("negated (!method) and plain methods cannot be mixed"));
            }
            let m = AuthMethod::parse(name).ok_or_else(|| {
                bad("a list of password, md5, scram-sha-256, gss, sspi, none (each optionally prefixed with !)")
            })?;
            if named.contains(&m) {
                return Err(bad("a method is listed twice"));
            }
            named.push(m);
        }
        let allowed = if negated == Some(true) {
            all.into_iter().filter(|m| !named.contains(m)).collect()
        } else {
            named
        };
        Ok(RequireAuth {
            text: s.to_string(),
            allowed,
        })
    }

    pub(crate) fn allows(&self, m: AuthMethod) -> bool {
        self.allowed.contains(&m)
    }
}

/// A secret string: neither `Debug` nor `Display` shows it.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Secret(String);

impl Secret {
    pub(crate) fn new(s: String) -> Secret {
        Secret(s)
    }
    pub(crate) fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<secret>")
    }
}

/// Where the password came from (the command line is visible to every local user in `ps`).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum PasswordSource {
    ConnString,
    Environment,
}

/// Where and as whom to connect, and how securely.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct ConnInfo {
    pub host: Host,
    /// `hostaddr`: the address to connect to, while `host` names the server for certificate
    /// checks and `.pgpass` (libpq's split).
    pub hostaddr: Option<IpAddr>,
    pub port: u16,
    pub user: String,
    pub password: Option<Secret>,
    pub password_source: Option<PasswordSource>,
    /// The password file (`passfile`, PGPASSFILE, `~/.pgpass`); None without a home directory.
    pub passfile: Option<PathBuf>,
    pub dbname: Option<String>,
    pub application_name: String,
    pub sslmode: SslMode,
    /// None: no root certificate (no home directory and none given).
    pub sslrootcert: Option<RootCert>,
    pub sslcert: Option<PathBuf>,
    pub sslkey: Option<PathBuf>,
    pub sslcrl: Option<PathBuf>,
    pub channel_binding: ChannelBindingMode,
    /// None: the helper's default (any method, but no cleartext password over unencrypted TCP).
    pub require_auth: Option<RequireAuth>,
    /// None: no limit (`connect_timeout=0`).
    pub connect_timeout: Option<Duration>,
}

impl fmt::Debug for ConnInfo {
    // Never the password: where, as whom, and the security settings.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} user={}", self.target(), self.user)?;
        if !matches!(self.host, Host::Socket(_)) {
            write!(f, " sslmode={}", self.sslmode.as_str())?;
        }
        Ok(())
    }
}

impl fmt::Display for ConnInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum ConnInfoError {
    #[error(
        "invalid connection string at byte {at}: {what} (the text is not shown: it may hold a password)"
    )]
    Syntax { at: usize, what: &'static str },
    #[error("invalid connection URI: {0} (the text is not shown: it may hold a password)")]
    Uri(&'static str),
    #[error("invalid {keyword} value {value}: expected {expected}")]
    Value {
        keyword: &'static str,
        value: String,
        expected: &'static str,
    },
    #[error(
        "unsupported connection option {0:?} (supported: host, hostaddr, port, user, password, passfile, dbname, application_name, sslmode, sslrootcert, sslcert, sslkey, sslcrl, channel_binding, require_auth, connect_timeout)"
    )]
    Unsupported(String),
    #[error(
        "unknown connection option at byte {0} (not shown: a word that is no keyword may be part of a password; quote values with spaces: password='a b')"
    )]
    Unknown(usize),
    #[error("{0}")]
    Conflict(&'static str),
}

/// A bad value as an error shows it: only when it cannot be (part of) another pair. An empty
/// value followed by white space takes the next word as its value (`sslmode= password=x`
/// gives sslmode the value `password=x`, in libpq too).
fn shown_value(v: &str) -> String {
    let plain = v.len() <= 40
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-/:!,+".contains(c));
    if plain {
        v.to_string()
    } else {
        "(not shown)".to_string()
    }
}

/// One `keyword=value` of the input, with where its keyword starts.
struct Pair {
    key: String,
    value: String,
    at: usize,
}

/// Splits `key=value key2='quoted value'` into pairs (libpq's `conninfo_parse`: values are
/// unquoted up to white space or single-quoted; a backslash escapes the next character).
fn parse_pairs(s: &str) -> Result<Vec<Pair>, ConnInfoError> {
    let mut out = Vec::new();
    let mut chars = s.char_indices().peekable();
    let skip_ws = |chars: &mut std::iter::Peekable<std::str::CharIndices<'_>>| {
        while chars.peek().is_some_and(|(_, c)| c.is_whitespace()) {
            chars.next();
        }
    };
    loop {
        skip_ws(&mut chars);
        let Some(&(at, _)) = chars.peek() else {
            return Ok(out);
        };
        let mut key = String::new();
        while let Some(&(_, c)) = chars.peek() {
            if c == '=' || c.is_whitespace() {
                break;
            }
            key.push(c);
            chars.next();
        }
        skip_ws(&mut chars);
        if chars.next().map(|(_, c)| c) != Some('=') {
            return Err(ConnInfoError::Syntax {
                at,
                what: "a word without \"=\" after it (quote values with spaces: key='a b')",
            });
        }
        let value_at = chars.peek().map(|&(i, _)| i);
        skip_ws(&mut chars);
        let spaced = value_at != chars.peek().map(|&(i, _)| i);
        let mut value = String::new();
        // `host= password=x`: libpq gives host the value `password=x`. Here the word after
        // the space is another pair and host is empty: the intent, and no secret in `host`.
        let next_word_is_pair = spaced
            && chars
                .clone()
                .map(|(_, c)| c)
                .take_while(|c| !c.is_whitespace())
                .any(|c| c == '=');
        if next_word_is_pair {
            out.push(Pair { key, value, at });
            continue;
        }
        if chars.peek().map(|&(_, c)| c) == Some('\'') {
            let (quote_at, _) = chars.next().unwrap_or((at, '\''));
            loop {
                match chars.next().map(|(_, c)| c) {
                    None => {
                        return Err(ConnInfoError::Syntax {
                            at: quote_at,
                            what: "unterminated quoted value",
                        });
                    }
                    Some('\\') => match chars.next() {
                        Some((_, c)) => value.push(c),
                        None => {
                            return Err(ConnInfoError::Syntax {
                                at: quote_at,
                                what: "unterminated quoted value",
                            });
                        }
                    },
                    Some('\'') => break,
                    Some(c) => value.push(c),
                }
            }
        } else {
            while let Some(&(_, c)) = chars.peek() {
                if c.is_whitespace() {
                    break;
                }
                chars.next();
                if c == '\\' {
                    // libpq drops a trailing backslash.
                    if let Some((_, n)) = chars.next() {
                        value.push(n);
                    }
                    continue;
                }
                value.push(c);
            }
        }
        out.push(Pair { key, value, at });
    }
}

/// Percent-decoding of one URI part (libpq's `conninfo_uri_decode`: `%00` is refused).
fn percent_decode(s: &str, part: &'static str) -> Result<String, ConnInfoError> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let v = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .filter(|&v| v != 0)
                .ok_or(ConnInfoError::Uri(part))?;
            out.push(v);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| ConnInfoError::Uri(part))
}

/// `postgresql://[user[:password]@][host][:port][/dbname][?key=value&...]` (libpq's
/// `conninfo_uri_parse_options`; one host only).
fn parse_uri(rest: &str) -> Result<Vec<Pair>, ConnInfoError> {
    let mut out = Vec::new();
    let mut push = |key: &str, value: String, at: usize| {
        out.push(Pair {
            key: key.to_string(),
            value,
            at,
        })
    };
    // Credentials end at the first '@' seen before any '/' (libpq looks no further).
    let mut rest = rest;
    let cred_end = rest.find(['@', '/']);
    if let Some(i) = cred_end.filter(|&i| rest.as_bytes()[i] == b'@') {
        let userinfo = &rest[..i];
        let (user, password) = match userinfo.split_once(':') {
            Some((u, p)) => (u, Some(p)),
            None => (userinfo, None),
        };
        if !user.is_empty() {
            push(
                "user",
                percent_decode(user, "bad percent-escape in the user name")?,
                0,
            );
        }
        if let Some(p) = password {
            push(
                "password",
                percent_decode(p, "bad percent-escape in the password")?,
                0,
            );
        }
        rest = &rest[i + 1..];
    }
    let (host, after_host) = if let Some(r) = rest.strip_prefix('[') {
        let end = r
            .find(']')
            .ok_or(ConnInfoError::Uri("missing \"]\" after an IPv6 host"))?;
        (&r[..end], &r[end + 1..])
    } else {
        let end = rest.find([':', '/', '?', ',']).unwrap_or(rest.len());
        (&rest[..end], &rest[end..])
    };
    if !host.is_empty() {
        push(
            "host",
            percent_decode(host, "bad percent-escape in the host")?,
            0,
        );
    }
    let mut rest = after_host;
    if let Some(r) = rest.strip_prefix(':') {
        let end = r.find(['/', '?', ',']).unwrap_or(r.len());
        if !r[..end].is_empty() {
            push(
                "port",
                percent_decode(&r[..end], "bad percent-escape in the port")?,
                0,
            );
        }
        rest = &r[end..];
    }
    if rest.starts_with(',') {
        return Err(ConnInfoError::Conflict(
            "several hosts in one connection string are not supported",
        ));
    }
    if let Some(r) = rest.strip_prefix('/') {
        let end = r.find('?').unwrap_or(r.len());
        if !r[..end].is_empty() {
            push(
                "dbname",
                percent_decode(&r[..end], "bad percent-escape in the database name")?,
                0,
            );
        }
        rest = &r[end..];
    }
    if let Some(q) = rest.strip_prefix('?') {
        for kv in q.split('&').filter(|kv| !kv.is_empty()) {
            let (k, v) = kv.split_once('=').ok_or(ConnInfoError::Uri(
                "a query parameter without \"=\" (expected key=value)",
            ))?;
            if v.contains('=') {
                return Err(ConnInfoError::Uri(
                    "a query parameter with a second \"=\" (percent-encode it as %3D)",
                ));
            }
            let k = percent_decode(k, "bad percent-escape in a query parameter name")?;
            let v = percent_decode(v, "bad percent-escape in a query parameter value")?;
            push(&k, v, 0);
        }
    } else if !rest.is_empty() {
        return Err(ConnInfoError::Uri("unexpected text after the host"));
    }
    Ok(out)
}

/// The user's home directory: `$HOME`, else the password database (libpq's
/// `pqGetHomeDirectory`).
pub(crate) fn home_dir(env: &impl Fn(&str) -> Option<String>) -> Option<PathBuf> {
    if let Some(h) = env("HOME").filter(|h| !h.is_empty()) {
        return Some(PathBuf::from(h));
    }
    // SAFETY: getpwuid returns NULL or a pointer to a static record valid until the next
    // getpw* call; pw_dir is a NUL-terminated string in it, copied out at once.
    unsafe {
        let pw = libc::getpwuid(libc::geteuid());
        if pw.is_null() || (*pw).pw_dir.is_null() {
            return None;
        }
        let dir = std::ffi::CStr::from_ptr((*pw).pw_dir);
        Some(PathBuf::from(dir.to_string_lossy().into_owned()))
    }
}

impl ConnInfo {
    /// Parses a conninfo string or URI; what it leaves out comes from the PG* environment
    /// variables, then libpq's defaults (except the host: `localhost`, and the user:
    /// `postgres`).
    pub(crate) fn parse(s: &str) -> Result<ConnInfo, ConnInfoError> {
        Self::parse_with_env(s, |k| std::env::var(k).ok())
    }

    pub(crate) fn parse_with_env(
        s: &str,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<ConnInfo, ConnInfoError> {
        let s = s.trim();
        let pairs = if let Some(rest) = s
            .strip_prefix("postgresql://")
            .or_else(|| s.strip_prefix("postgres://"))
        {
            parse_uri(rest)?
        } else {
            parse_pairs(s)?
        };
        let mut kv: std::collections::BTreeMap<&'static str, String> = Default::default();
        for p in pairs {
            match SUPPORTED.iter().find(|k| **k == p.key) {
                Some(k) => {
                    kv.insert(k, p.value);
                }
                None if LIBPQ_OTHER.contains(&p.key.as_str()) => {
                    return Err(ConnInfoError::Unsupported(p.key));
                }
                None => return Err(ConnInfoError::Unknown(p.at)),
            }
        }
        let password_source = if kv.contains_key("password") {
            Some(PasswordSource::ConnString)
        } else {
            Some(PasswordSource::Environment)
        };
        // A keyword given (even empty) wins over the environment, as in libpq; an empty value
        // then means "the default".
        let mut get = |k: &'static str, var: &str| -> Option<String> {
            match kv.remove(k) {
                Some(v) => Some(v),
                None => env(var),
            }
            .filter(|v| !v.is_empty())
        };
        let host_text = get("host", "PGHOST").unwrap_or_else(|| "localhost".into());
        if host_text.contains(',') {
            return Err(ConnInfoError::Conflict(
                "several hosts in one connection string are not supported",
            ));
        }
        let host = if host_text.starts_with('/') {
            Host::Socket(PathBuf::from(host_text))
        } else {
            Host::Tcp(host_text)
        };
        let hostaddr = get("hostaddr", "PGHOSTADDR")
            .map(|a| {
                a.parse::<IpAddr>().map_err(|_| ConnInfoError::Value {
                    keyword: "hostaddr",
                    value: shown_value(&a),
                    expected: "a numeric IPv4 or IPv6 address",
                })
            })
            .transpose()?;
        let port = match get("port", "PGPORT") {
            None => DEFAULT_PORT,
            Some(p) => {
                p.trim()
                    .parse::<u16>()
                    .ok()
                    .filter(|&n| n > 0)
                    .ok_or(ConnInfoError::Value {
                        keyword: "port",
                        value: shown_value(&p),
                        expected: "a port number from 1 to 65535",
                    })?
            }
        };
        let user = get("user", "PGUSER").unwrap_or_else(|| "postgres".into());
        let password = get("password", "PGPASSWORD").map(Secret::new);
        let password_source = password.as_ref().and(password_source);
        let home = home_dir(&env);
        let in_home = |f: &str| home.as_ref().map(|h| h.join(f));
        let passfile = get("passfile", "PGPASSFILE")
            .map(PathBuf::from)
            .or_else(|| in_home(".pgpass"));
        let sslmode = match get("sslmode", "PGSSLMODE") {
            None => SslMode::Prefer,
            Some(m) => SslMode::parse(&m).ok_or(ConnInfoError::Value {
                keyword: "sslmode",
                value: shown_value(&m),
                expected: "disable, allow, prefer, require, verify-ca or verify-full",
            })?,
        };
        let sslrootcert = match get("sslrootcert", "PGSSLROOTCERT") {
            Some(s) if s == "system" => Some(RootCert::System),
            Some(s) => Some(RootCert::File(PathBuf::from(s))),
            None => in_home(".postgresql/root.crt").map(RootCert::File),
        };
        if sslrootcert == Some(RootCert::System) && sslmode != SslMode::VerifyFull {
            // PostgreSQL 16's libpq: anyone can get a certificate from a public CA for their
            // own name, so the system's roots mean nothing without the host name check.
            return Err(ConnInfoError::Conflict(
                "sslrootcert=system needs sslmode=verify-full (a public CA signs anyone's certificate: only the host name check makes it safe)",
            ));
        }
        let sslcert = get("sslcert", "PGSSLCERT")
            .map(PathBuf::from)
            .or_else(|| in_home(".postgresql/postgresql.crt"));
        let sslkey = get("sslkey", "PGSSLKEY")
            .map(PathBuf::from)
            .or_else(|| in_home(".postgresql/postgresql.key"));
        let sslcrl = get("sslcrl", "PGSSLCRL")
            .map(PathBuf::from)
            .or_else(|| in_home(".postgresql/root.crl"));
        let channel_binding = match get("channel_binding", "PGCHANNELBINDING").as_deref() {
            None | Some("prefer") => ChannelBindingMode::Prefer,
            Some("disable") => ChannelBindingMode::Disable,
            Some("require") => ChannelBindingMode::Require,
            Some(other) => {
                return Err(ConnInfoError::Value {
                    keyword: "channel_binding",
                    value: shown_value(other),
                    expected: "disable, prefer or require",
                });
            }
        };
        let require_auth = get("require_auth", "PGREQUIREAUTH")
            .map(|s| RequireAuth::parse(&s))
            .transpose()?;
        let connect_timeout = match get("connect_timeout", "PGCONNECT_TIMEOUT") {
            None => Some(DEFAULT_CONNECT_TIMEOUT),
            Some(t) => {
                let secs = t.trim().parse::<i64>().map_err(|_| ConnInfoError::Value {
                    keyword: "connect_timeout",
                    value: shown_value(&t),
                    expected: "a whole number of seconds (0: no limit)",
                })?;
                // libpq: zero or negative waits forever; 1 is raised to 2 seconds.
                (secs > 0).then(|| Duration::from_secs(secs.max(2) as u64))
            }
        };
        let dbname = get("dbname", "PGDATABASE");
        let application_name = get("application_name", "PGAPPNAME")
            .unwrap_or_else(|| "fpw_pushdown redo-helper".into());
        Ok(ConnInfo {
            host,
            hostaddr,
            port,
            user,
            password,
            password_source,
            passfile,
            dbname,
            application_name,
            sslmode,
            sslrootcert,
            sslcert,
            sslkey,
            sslcrl,
            channel_binding,
            require_auth,
            connect_timeout,
        })
    }

    /// What the connection goes to, for messages: `host:port` or the socket path.
    pub(crate) fn target(&self) -> String {
        match &self.host {
            Host::Socket(dir) => self.socket_path(dir).display().to_string(),
            Host::Tcp(h) => match self.hostaddr {
                Some(a) => format!("{h} ({a}):{}", self.port),
                None => format!("{h}:{}", self.port),
            },
        }
    }

    /// `<dir>/.s.PGSQL.<port>` (libpq's `UNIXSOCK_PATH`).
    pub(crate) fn socket_path(&self, dir: &Path) -> PathBuf {
        dir.join(format!(".s.PGSQL.{}", self.port))
    }

    /// The host name as `.pgpass` matches it: libpq uses `localhost` for the default socket
    /// directory, the host text otherwise.
    pub(crate) fn pgpass_host(&self) -> String {
        match &self.host {
            Host::Socket(dir) if dir == Path::new(DEFAULT_SOCKET_DIR) => "localhost".into(),
            Host::Socket(dir) => dir.display().to_string(),
            Host::Tcp(h) => h.clone(),
        }
    }

    /// The database `.pgpass` matches: the `dbname` given, else `replication` (what
    /// pg_basebackup and pg_receivewal connect with for a physical replication connection).
    pub(crate) fn pgpass_database(&self) -> &str {
        self.dbname.as_deref().unwrap_or("replication")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    fn parse(s: &str) -> Result<ConnInfo, ConnInfoError> {
        ConnInfo::parse_with_env(s, no_env)
    }

    #[test]
    fn key_value_with_quotes() {
        let c = parse("host=127.0.0.1 port=5433 user=rep password='a b\\'c'").unwrap();
        assert_eq!(
            (&c.host, c.port, c.user.as_str()),
            (&Host::Tcp("127.0.0.1".into()), 5433, "rep")
        );
        assert_eq!(c.password.as_ref().map(Secret::expose), Some("a b'c"));
        assert_eq!(c.password_source, Some(PasswordSource::ConnString));
        assert_eq!(c.sslmode, SslMode::Prefer);
        assert_eq!(c.channel_binding, ChannelBindingMode::Prefer);
    }

    #[test]
    fn uri_form() {
        let c = parse(
            "postgresql://rep:p%40ss@db.local:6000/postgres?application_name=x&sslmode=verify-full",
        )
        .unwrap();
        assert_eq!(
            (&c.host, c.port, c.user.as_str()),
            (&Host::Tcp("db.local".into()), 6000, "rep")
        );
        assert_eq!(c.password.as_ref().map(Secret::expose), Some("p@ss"));
        assert_eq!(c.application_name, "x");
        assert_eq!(c.sslmode, SslMode::VerifyFull);
        let c = parse("postgresql://%2Fvar%2Frun%2Fpostgresql:5433").unwrap();
        assert_eq!(c.host, Host::Socket("/var/run/postgresql".into()));
        assert_eq!(c.pgpass_host(), "localhost");
        assert_eq!(c.target(), "/var/run/postgresql/.s.PGSQL.5433".to_string());
        let c = parse("postgresql://[::1]:7000").unwrap();
        assert_eq!((&c.host, c.port), (&Host::Tcp("::1".into()), 7000));
    }

    #[test]
    fn env_fallbacks_and_defaults() {
        let env = |k: &str| match k {
            "PGPORT" => Some("7000".to_string()),
            "PGSSLMODE" => Some("verify-ca".to_string()),
            "PGPASSWORD" => Some("pw".to_string()),
            "HOME" => Some("/home/x".to_string()),
            _ => None,
        };
        let c = ConnInfo::parse_with_env("", env).unwrap();
        assert_eq!(c.port, 7000);
        assert_eq!(c.sslmode, SslMode::VerifyCa);
        assert_eq!(c.password_source, Some(PasswordSource::Environment));
        assert_eq!(
            c.sslrootcert,
            Some(RootCert::File("/home/x/.postgresql/root.crt".into()))
        );
        assert_eq!(c.passfile, Some(PathBuf::from("/home/x/.pgpass")));
        // A keyword wins over the environment.
        let c = ConnInfo::parse_with_env("sslmode=disable port=1", env).unwrap();
        assert_eq!((c.sslmode, c.port), (SslMode::Disable, 1));
        assert_eq!(c.connect_timeout, Some(DEFAULT_CONNECT_TIMEOUT));
        assert_eq!(parse("connect_timeout=0").unwrap().connect_timeout, None);
        assert_eq!(
            parse("connect_timeout=1").unwrap().connect_timeout,
            Some(Duration::from_secs(2))
        );
    }

    #[test]
    fn errors_name_the_problem_but_no_secret() {
        assert!(matches!(
            parse("port=x"),
            Err(ConnInfoError::Value {
                keyword: "port",
                ..
            })
        ));
        assert!(matches!(parse("host"), Err(ConnInfoError::Syntax { .. })));
        assert!(matches!(
            parse("sslmode=bogus"),
            Err(ConnInfoError::Value {
                keyword: "sslmode",
                ..
            })
        ));
        assert_eq!(
            parse("gssencmode=require"),
            Err(ConnInfoError::Unsupported("gssencmode".into()))
        );
        // An unquoted space in a password: the second half is neither echoed as a keyword
        // nor in a syntax error.
        for s in [
            "password=hunter2 secretpart=x",
            "password=hunter2 secretpart",
            "postgresql://u:sec%zzret@h",
            "postgresql://u:secret@h?secretparam",
            "password='secret",
            // A bad value is not shown when it could hold another pair.
            "port= 'pass=secret'",
        ] {
            let e = parse(s).unwrap_err().to_string();
            assert!(!e.contains("secret") && !e.contains("hunter"), "{s}: {e}");
        }
        // `host= password=x`: an empty host and a password, not a host named `password=x`.
        let c = parse("host= password=secret").unwrap();
        assert_eq!(c.host, Host::Tcp("localhost".into()));
        assert_eq!(c.password.as_ref().map(Secret::expose), Some("secret"));
        let c = parse("port= password=secret channel_binding= ").unwrap();
        assert_eq!(c.port, DEFAULT_PORT);
        assert_eq!(c.password.as_ref().map(Secret::expose), Some("secret"));
        let c = parse("host = db").unwrap();
        assert_eq!(c.host, Host::Tcp("db".into()));
        let c = parse("password=secret").unwrap();
        assert!(!format!("{c:?} {c}").contains("secret"));
        assert!(
            parse("sslrootcert=system sslmode=require")
                .unwrap_err()
                .to_string()
                .contains("verify-full")
        );
        assert!(matches!(parse("host=a,b"), Err(ConnInfoError::Conflict(_))));
    }

    #[test]
    fn require_auth_lists() {
        let r = RequireAuth::parse("scram-sha-256,none").unwrap();
        assert!(r.allows(AuthMethod::ScramSha256) && r.allows(AuthMethod::None));
        assert!(!r.allows(AuthMethod::Password));
        let r = RequireAuth::parse("!password,!md5").unwrap();
        assert!(r.allows(AuthMethod::ScramSha256) && r.allows(AuthMethod::None));
        assert!(!r.allows(AuthMethod::Password) && !r.allows(AuthMethod::Md5));
        assert!(RequireAuth::parse("!password,md5").is_err());
        assert!(RequireAuth::parse("md5,md5").is_err());
        assert!(RequireAuth::parse("kerberos").is_err());
    }

    mod fuzz {
        //! Property tests (proptest) of the parser on arbitrary and on connection-string-like
        //! input: it never panics, and an error never shows the password.
        use super::*;
        use proptest::prelude::*;

        /// Cases per property: `PROPTEST_CASES` overrides the default.
        fn cases(default: u32) -> u32 {
            std::env::var("PROPTEST_CASES")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(default)
        }

        fn keyword() -> impl Strategy<Value = String> {
            prop_oneof![
                proptest::sample::select(SUPPORTED).prop_map(str::to_string),
                proptest::sample::select(LIBPQ_OTHER).prop_map(str::to_string),
                "[a-z_]{1,12}",
            ]
        }

        fn value() -> impl Strategy<Value = String> {
            prop_oneof![
                "[a-z0-9./:@%=-]{0,12}",
                "'[^']{0,12}'",
                "[\\' =%a-z]{0,8}",
                proptest::sample::select(vec![
                    "verify-full",
                    "require",
                    "disable",
                    "system",
                    "!password,md5",
                    "scram-sha-256,none",
                    "0",
                    "-5",
                    "99999",
                    "/var/run/postgresql",
                    "::1",
                ])
                .prop_map(str::to_string),
            ]
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(cases(3_000)))]

            #[test]
            fn arbitrary_text_never_panics(s in any::<String>()) {
                let _ = ConnInfo::parse_with_env(&s, no_env);
                let _ = ConnInfo::parse_with_env(&format!("postgresql://{s}"), no_env);
            }

            #[test]
            fn errors_never_show_the_password(
                pairs in proptest::collection::vec((keyword(), value()), 0..6),
                first in "[A-Z]{5,8}",
                second in "[A-Z]{5,8}",
                split in any::<bool>(),
                at in 0usize..7,
                uri in any::<bool>(),
            ) {
                // The password, possibly with an unquoted space (its second half then
                // looks like a stray word), somewhere among other pairs.
                let password = if split { format!("{first} {second}") } else { format!("{first}{second}") };
                let text = if uri {
                    let query: Vec<String> = pairs.iter().map(|(k, v)| format!("{k}={v}")).collect();
                    format!("postgresql://u:{password}@h:5432/db?{}", query.join("&"))
                } else {
                    let mut items: Vec<String> = pairs.iter().map(|(k, v)| format!("{k}={v}")).collect();
                    items.insert(at.min(items.len()), format!("password={password}"));
                    items.join(" ")
                };
                match ConnInfo::parse_with_env(&text, no_env) {
                    // Only when the text parsed as a password: junk with quotes can make it
                    // part of another value (`host='\' password=X host='` is a host name).
                    Ok(c) if c.password.as_ref().map(Secret::expose) == Some(password.as_str()) => {
                        let shown = format!("{c:?} {c} {}", c.target());
                        prop_assert!(!shown.contains(&first) && !shown.contains(&second), "{shown}");
                    }
                    Ok(_) => {}
                    Err(e) => {
                        let shown = format!("{e} {e:?}");
                        prop_assert!(!shown.contains(&first) && !shown.contains(&second), "{text} -> {shown}");
                    }
                }
            }
        }
    }
}
