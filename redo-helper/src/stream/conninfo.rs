//! libpq-style connection strings (`host=... port=... user=... password=... dbname=...`)
//! and `postgresql://` URIs, with the usual PG* environment fallbacks.

use std::collections::BTreeMap;
use std::fmt;

/// Where and as whom to connect.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct ConnInfo {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: Option<String>,
    pub dbname: Option<String>,
    pub application_name: String,
}

impl fmt::Debug for ConnInfo {
    // Never print the password.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "host={} port={} user={}",
            self.host, self.port, self.user
        )
    }
}

impl fmt::Display for ConnInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum ConnInfoError {
    #[error("invalid connection string: {0}")]
    Syntax(String),
    #[error("invalid port {0:?} in connection string")]
    Port(String),
    #[error(
        "unsupported connection option {0:?} (supported: host, port, user, password, dbname, application_name)"
    )]
    Unsupported(String),
}

/// Splits `key=value key2='quoted value'` into pairs (libpq's conninfo syntax).
fn parse_pairs(s: &str) -> Result<BTreeMap<String, String>, ConnInfoError> {
    let mut out = BTreeMap::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        if chars.peek().is_none() {
            return Ok(out);
        }
        let mut key = String::new();
        while let Some(&c) = chars.peek() {
            if c == '=' || c.is_whitespace() {
                break;
            }
            key.push(c);
            chars.next();
        }
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        if chars.next() != Some('=') {
            return Err(ConnInfoError::Syntax(format!(
                "missing \"=\" after {key:?}"
            )));
        }
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        let mut value = String::new();
        if chars.peek() == Some(&'\'') {
            chars.next();
            loop {
                match chars.next() {
                    None => {
                        return Err(ConnInfoError::Syntax(format!(
                            "unterminated quoted value for {key:?}"
                        )));
                    }
                    Some('\\') => match chars.next() {
                        Some(c) => value.push(c),
                        None => return Err(ConnInfoError::Syntax("trailing backslash".into())),
                    },
                    Some('\'') => break,
                    Some(c) => value.push(c),
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c.is_whitespace() {
                    break;
                }
                if c == '\\' {
                    chars.next();
                    if let Some(n) = chars.next() {
                        value.push(n);
                    }
                    continue;
                }
                value.push(c);
                chars.next();
            }
        }
        out.insert(key, value);
    }
}

/// Minimal percent-decoding for URI parts.
fn percent_decode(s: &str) -> Result<String, ConnInfoError> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s
                .get(i + 1..i + 3)
                .ok_or_else(|| ConnInfoError::Syntax(format!("bad escape in {s:?}")))?;
            let v = u8::from_str_radix(hex, 16)
                .map_err(|_| ConnInfoError::Syntax(format!("bad escape in {s:?}")))?;
            out.push(v);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| ConnInfoError::Syntax(format!("invalid UTF-8 in {s:?}")))
}

/// `postgresql://user:password@host:port/dbname?key=value`
fn parse_uri(s: &str) -> Result<BTreeMap<String, String>, ConnInfoError> {
    let rest = s
        .strip_prefix("postgresql://")
        .or_else(|| s.strip_prefix("postgres://"))
        .ok_or_else(|| ConnInfoError::Syntax("not a postgresql:// URI".into()))?;
    let mut out = BTreeMap::new();
    let (main, query) = rest.split_once('?').unwrap_or((rest, ""));
    let (authority, path) = main.split_once('/').unwrap_or((main, ""));
    let hostport = if let Some((userinfo, hostport)) = authority.rsplit_once('@') {
        let (user, password) = userinfo.split_once(':').unwrap_or((userinfo, ""));
        if !user.is_empty() {
            out.insert("user".into(), percent_decode(user)?);
        }
        if userinfo.contains(':') {
            out.insert("password".into(), percent_decode(password)?);
        }
        hostport
    } else {
        authority
    };
    let (host, port) = match hostport.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || hostport.starts_with('[') => (h, Some(p)),
        _ => (hostport, None),
    };
    if !host.is_empty() {
        out.insert(
            "host".into(),
            percent_decode(host.trim_start_matches('[').trim_end_matches(']'))?,
        );
    }
    if let Some(p) = port {
        out.insert("port".into(), p.to_string());
    }
    if !path.is_empty() {
        out.insert("dbname".into(), percent_decode(path)?);
    }
    for kv in query.split('&').filter(|kv| !kv.is_empty()) {
        let (k, v) = kv
            .split_once('=')
            .ok_or_else(|| ConnInfoError::Syntax(format!("bad URI parameter {kv:?}")))?;
        out.insert(percent_decode(k)?, percent_decode(v)?);
    }
    Ok(out)
}

impl ConnInfo {
    /// Parses a conninfo string or URI; missing values come from PGHOST, PGPORT, PGUSER,
    /// PGPASSWORD, then defaults (localhost, 5432, user "postgres").
    pub(crate) fn parse(s: &str) -> Result<ConnInfo, ConnInfoError> {
        Self::parse_with_env(s, |k| std::env::var(k).ok())
    }

    pub(crate) fn parse_with_env(
        s: &str,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<ConnInfo, ConnInfoError> {
        let s = s.trim();
        let mut kv = if s.starts_with("postgresql://") || s.starts_with("postgres://") {
            parse_uri(s)?
        } else {
            parse_pairs(s)?
        };
        for k in kv.keys() {
            if !matches!(
                k.as_str(),
                "host"
                    | "hostaddr"
                    | "port"
                    | "user"
                    | "password"
                    | "dbname"
                    | "application_name"
                    | "sslmode"
                    | "connect_timeout"
            ) {
                return Err(ConnInfoError::Unsupported(k.clone()));
            }
        }
        if kv
            .get("sslmode")
            .is_some_and(|m| m != "disable" && m != "prefer" && m != "allow")
        {
            return Err(ConnInfoError::Unsupported(format!(
                "sslmode={}",
                kv["sslmode"]
            )));
        }
        let host = kv
            .remove("hostaddr")
            .or_else(|| kv.remove("host"))
            .or_else(|| env("PGHOST"))
            .unwrap_or_else(|| "localhost".into());
        let port_s = kv
            .remove("port")
            .or_else(|| env("PGPORT"))
            .unwrap_or_else(|| "5432".into());
        let port = port_s
            .parse::<u16>()
            .map_err(|_| ConnInfoError::Port(port_s.clone()))?;
        let user = kv
            .remove("user")
            .or_else(|| env("PGUSER"))
            .unwrap_or_else(|| "postgres".into());
        let password = kv.remove("password").or_else(|| env("PGPASSWORD"));
        Ok(ConnInfo {
            host,
            port,
            user,
            password,
            dbname: kv.remove("dbname"),
            application_name: kv
                .remove("application_name")
                .unwrap_or_else(|| "fpw_pushdown redo-helper".into()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn key_value_with_quotes() {
        let c = ConnInfo::parse_with_env(
            "host=127.0.0.1 port=5433 user=rep password='a b\\'c'",
            no_env,
        )
        .unwrap();
        assert_eq!(
            (c.host.as_str(), c.port, c.user.as_str()),
            ("127.0.0.1", 5433, "rep")
        );
        assert_eq!(c.password.as_deref(), Some("a b'c"));
    }

    #[test]
    fn uri_form() {
        let c = ConnInfo::parse_with_env(
            "postgresql://rep:p%40ss@db.local:6000/postgres?application_name=x",
            no_env,
        )
        .unwrap();
        assert_eq!(
            (c.host.as_str(), c.port, c.user.as_str()),
            ("db.local", 6000, "rep")
        );
        assert_eq!(c.password.as_deref(), Some("p@ss"));
        assert_eq!(c.application_name, "x");
    }

    #[test]
    fn env_fallbacks_and_errors() {
        let env = |k: &str| (k == "PGPORT").then(|| "7000".to_string());
        assert_eq!(ConnInfo::parse_with_env("", env).unwrap().port, 7000);
        assert_eq!(
            ConnInfo::parse_with_env("port=x", no_env),
            Err(ConnInfoError::Port("x".into()))
        );
        assert!(matches!(
            ConnInfo::parse_with_env("host", no_env),
            Err(ConnInfoError::Syntax(_))
        ));
        assert!(matches!(
            ConnInfo::parse_with_env("foo=1", no_env),
            Err(ConnInfoError::Unsupported(_))
        ));
        assert!(
            !format!(
                "{:?}",
                ConnInfo::parse_with_env("password=secret", no_env).unwrap()
            )
            .contains("secret")
        );
    }
}
