//! Which PostgreSQL servers the helper follows. The WAL format, the redo routines and the
//! replication protocol details it relies on are PostgreSQL 15's; another major version
//! is refused before anything is created on the server (the slot) or copied from it (the
//! base backup). [`supported_server_version`] is the one place that decides.

use super::connection::{ConnectionError, PgConnection};

/// A server this helper cannot follow.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "the server runs PostgreSQL {version} (server_version_num {num}); this helper follows PostgreSQL 15 only: connect it to a PostgreSQL 15 server"
)]
pub(crate) struct UnsupportedServerVersion {
    pub num: u32,
    pub version: String,
}

/// Accepts the server versions the helper can follow (`server_version_num`, e.g. 150008);
/// returns the major version.
pub(crate) fn supported_server_version(num: u32) -> Result<u32, UnsupportedServerVersion> {
    let major = num / 10000;
    match major {
        15 => Ok(major),
        _ => Err(UnsupportedServerVersion {
            num,
            version: format!("{major}.{}", num % 10000),
        }),
    }
}

/// `server_version_num` from the `server_version` text PostgreSQL reports at startup
/// ("15.8", "15.8 (Debian 15.8-1.pgdg120+1)", "16beta2"): major * 10000 + minor, as
/// PostgreSQL computes it for versions from 10 on.
pub(crate) fn parse_server_version(text: &str) -> Option<u32> {
    let digits_end = |s: &str| s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let major_len = digits_end(text);
    let major: u32 = text[..major_len].parse().ok()?;
    if major < 10 {
        return None;
    }
    let rest = &text[major_len..];
    let minor = match rest.strip_prefix('.') {
        Some(r) => r[..digits_end(r)].parse().ok()?,
        // "16beta2", "17devel", "18rc1": pre-releases count as minor 0.
        None => 0,
    };
    major.checked_mul(10000)?.checked_add(minor)
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum ServerVersionError {
    #[error(transparent)]
    Connection(#[from] ConnectionError),
    #[error(transparent)]
    Unsupported(#[from] UnsupportedServerVersion),
}

impl PgConnection {
    /// The server's `server_version_num`: from the startup report, else by `SHOW` (allowed
    /// on replication connections).
    pub(crate) async fn server_version_num(&mut self) -> Result<u32, ConnectionError> {
        if let Some(n) = self.server_version().and_then(parse_server_version) {
            return Ok(n);
        }
        let sets = self.simple_query("SHOW server_version_num").await?;
        let text = sets
            .first()
            .and_then(|s| s.value(0, 0))
            .unwrap_or_default()
            .to_string();
        text.trim()
            .parse()
            .map_err(|_| self.protocol(format!("unexpected server_version_num {text:?}")))
    }

    /// Refuses a server this helper cannot follow.
    pub(crate) async fn check_server_version(&mut self) -> Result<u32, ServerVersionError> {
        let num = self.server_version_num().await?;
        Ok(supported_server_version(num)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions() {
        assert_eq!(parse_server_version("15.8"), Some(150008));
        assert_eq!(
            parse_server_version("15.14 (Debian 15.14-1.pgdg13+1)"),
            Some(150014)
        );
        assert_eq!(parse_server_version("16beta2"), Some(160000));
        assert_eq!(parse_server_version("9.6.1"), None);
        assert_eq!(parse_server_version("x"), None);
        assert_eq!(supported_server_version(150008), Ok(15));
        let e = supported_server_version(160004).unwrap_err();
        assert!(e.to_string().contains("PostgreSQL 16.4"), "{e}");
        assert!(supported_server_version(140000).is_err());
    }
}
