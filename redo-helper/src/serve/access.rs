//! Who may use the API, checked on every request before it is routed.
//!
//! The helper serves every relation's pages (pg_authid's password hashes included) and
//! controls that hold back WAL acknowledgement (`POST /imagegen/pause`), so nothing is open
//! by default:
//!
//! - **Unix socket** (the default, `<data-dir>/api.sock`): the socket is 0600 in the 0700
//!   data directory, so only the helper's OS user (and root) can connect. The kernel checks
//!   that on `connect()`; no token is asked for, POST included: a browser cannot reach a Unix
//!   socket, so there is no cross-site request to guard against there.
//! - **TCP** (`--listen`): anyone who can reach the port can connect, so every request must
//!   carry `Authorization: Bearer <token>` (the token file is 0600 beside the data). Only
//!   `GET /status` and `GET /metrics`, which carry no table data, may be opened without it
//!   (`--metrics-without-token`). Browsers are the other danger on TCP: a page on any site
//!   can make the browser send a request to a loopback port (CSRF), or resolve its own host
//!   name to 127.0.0.1 and read the answer (DNS rebinding). Rebinding needs the attacker's
//!   host name in the `Host` header, so only IP literals, `localhost` and the names given
//!   with `--api-host-name` are accepted (421 otherwise); and a request with an `Origin`
//!   header comes from a browser's script or form, never from the extension or curl, so it
//!   is refused (403).
//!
//! [`check_tcp`] is a pure function of the request head, fuzzed with proptest below.

use hyper::header::{AUTHORIZATION, HOST, HeaderMap, ORIGIN};
use hyper::{Method, StatusCode, Uri};
use std::io::{Read, Write};
use std::net::IpAddr;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use subtle::ConstantTimeEq;

/// Random bytes of a generated token: 256 bits.
const TOKEN_BYTES: usize = 32;
/// Shortest token accepted from a file the operator wrote (128 bits as hex).
const MIN_TOKEN_CHARS: usize = 32;

/// The bearer token of the TCP listener. Never printed: `Debug` hides it.
#[derive(Clone)]
pub(crate) struct ApiToken(String);

impl std::fmt::Debug for ApiToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ApiToken(..)")
    }
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum TokenError {
    #[error("API token file {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "API token file {path} is readable by group or others (mode {mode:04o}); fix with: chmod 0600 {path}"
    )]
    Exposed { path: PathBuf, mode: u32 },
    #[error(
        "API token file {path} holds a token shorter than {MIN_TOKEN_CHARS} characters or with characters other than printable ASCII; remove it to have a new one generated"
    )]
    Weak { path: PathBuf },
    #[error("cannot get random bytes for the API token: {0}")]
    Random(String),
}

impl ApiToken {
    /// Reads the token from `path`, or creates the file (0600) with a new random token
    /// (256 bits from the kernel's CSPRNG, as hex) when it does not exist. A file readable
    /// by others is refused, as libpq refuses such a `.pgpass`.
    pub(crate) fn load_or_create(path: &Path) -> Result<ApiToken, TokenError> {
        let io = |source| TokenError::Io {
            path: path.to_path_buf(),
            source,
        };
        match std::fs::File::open(path) {
            Ok(f) => Self::read_private(f, path),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut bytes = [0u8; TOKEN_BYTES];
                getrandom::fill(&mut bytes).map_err(|e| TokenError::Random(e.to_string()))?;
                let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
                // create_new: never follow a symlink or take over a file someone else made
                // between our open and this one.
                let mut f = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(path)
                    .map_err(io)?;
                f.write_all(format!("{token}\n").as_bytes()).map_err(io)?;
                f.sync_all().map_err(io)?;
                log::info!("created API token file {}", path.display());
                Ok(ApiToken(token))
            }
            Err(e) => Err(io(e)),
        }
    }

    /// Reads an existing token file (the peer token of routing: never created, since a new
    /// random token could not match the peers').
    pub(crate) fn load(path: &Path) -> Result<ApiToken, TokenError> {
        let f = std::fs::File::open(path).map_err(|source| TokenError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::read_private(f, path)
    }

    /// Reads a token file, refusing one readable by group or others.
    fn read_private(f: std::fs::File, path: &Path) -> Result<ApiToken, TokenError> {
        let io = |source| TokenError::Io {
            path: path.to_path_buf(),
            source,
        };
        let mode = f.metadata().map_err(io)?.mode() & 0o7777;
        if mode & 0o077 != 0 {
            return Err(TokenError::Exposed {
                path: path.to_path_buf(),
                mode,
            });
        }
        let mut text = String::new();
        f.take(4096).read_to_string(&mut text).map_err(io)?;
        Self::parse(text.trim()).ok_or_else(|| TokenError::Weak {
            path: path.to_path_buf(),
        })
    }

    /// The token, to send to a peer. Never log it.
    pub(crate) fn secret(&self) -> &str {
        &self.0
    }

    fn parse(text: &str) -> Option<ApiToken> {
        (text.len() >= MIN_TOKEN_CHARS && text.bytes().all(|b| b.is_ascii_graphic()))
            .then(|| ApiToken(text.to_string()))
    }

    /// Compares in constant time (for equal lengths; the length is not secret).
    fn matches(&self, presented: &[u8]) -> bool {
        self.0.as_bytes().ct_eq(presented).into()
    }
}

/// What a TCP request must show.
#[derive(Debug, Clone)]
pub(crate) struct TcpAccess {
    pub token: ApiToken,
    /// `--metrics-without-token`: `GET /status` and `GET /metrics` need no token.
    pub open_status_and_metrics: bool,
    /// `--api-host-name`: host names accepted in `Host` besides IP literals and `localhost`
    /// (lower case, without a trailing dot).
    pub host_names: Vec<String>,
}

/// Why a request was refused: the status and a message for the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Refusal {
    pub status: StatusCode,
    pub message: &'static str,
}

impl TcpAccess {
    pub(crate) fn new(token: ApiToken, open_status_and_metrics: bool, names: &[String]) -> Self {
        TcpAccess {
            token,
            open_status_and_metrics,
            host_names: names
                .iter()
                .map(|n| n.trim_end_matches('.').to_ascii_lowercase())
                .collect(),
        }
    }
}

/// Checks a request that came over TCP: its `Host`, that it is not from a browser's
/// script, and its token.
pub(crate) fn check_tcp(
    access: &TcpAccess,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
) -> Result<(), Refusal> {
    let path = uri.path();
    let host = headers.get(HOST).and_then(|h| h.to_str().ok());
    // A request in absolute form (`GET http://name/status`) names its host there too.
    let authority_ok = uri
        .authority()
        .is_none_or(|a| host_part(a.as_str()).is_some_and(|h| host_allowed(access, h)));
    match host.map(host_part) {
        Some(Some(h)) if authority_ok && host_allowed(access, h) => {}
        _ => {
            return Err(Refusal {
                status: StatusCode::MISDIRECTED_REQUEST,
                message: "Host must be an IP address, localhost or a name given with --api-host-name",
            });
        }
    }
    if headers.contains_key(ORIGIN) {
        return Err(Refusal {
            status: StatusCode::FORBIDDEN,
            message: "requests from browsers (with an Origin header) are not accepted",
        });
    }
    if access.open_status_and_metrics
        && *method == Method::GET
        && matches!(path, "/status" | "/metrics")
    {
        return Ok(());
    }
    let presented = headers
        .get(AUTHORIZATION)
        .and_then(|v| bearer_token(v.as_bytes()));
    match presented {
        Some(t) if access.token.matches(t) => Ok(()),
        Some(_) => Err(Refusal {
            status: StatusCode::UNAUTHORIZED,
            message: "wrong API token",
        }),
        None => Err(Refusal {
            status: StatusCode::UNAUTHORIZED,
            message: "this listener needs Authorization: Bearer <token> (the token is in the helper's --api-token-file)",
        }),
    }
}

/// The token of `Bearer <token>` (the scheme is case-insensitive, RFC 9110 11.1).
fn bearer_token(value: &[u8]) -> Option<&[u8]> {
    let scheme = value.get(..7)?;
    if !scheme.eq_ignore_ascii_case(b"bearer ") {
        return None;
    }
    let token = value[7..].trim_ascii();
    (!token.is_empty()).then_some(token)
}

/// The host of a `Host` value (`name`, `name:port`, `1.2.3.4:port`, `[::1]:port`), or None
/// when it is not of that shape.
fn host_part(value: &str) -> Option<&str> {
    let (host, port) = if let Some(rest) = value.strip_prefix('[') {
        let (inside, after) = rest.split_once(']')?;
        (inside, after.strip_prefix(':'))
    } else {
        match value.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (value, None),
        }
    };
    if let Some(p) = port
        && p.parse::<u16>().is_err()
    {
        return None;
    }
    (!host.is_empty()).then_some(host)
}

fn host_allowed(access: &TcpAccess, host: &str) -> bool {
    // An IP literal cannot be rebound: a page can only name it directly, which makes it
    // its own origin (the browser then sends no cookies or data of another site).
    if host.parse::<IpAddr>().is_ok() {
        return true;
    }
    let host = host.trim_end_matches('.');
    host.eq_ignore_ascii_case("localhost")
        || access
            .host_names
            .iter()
            .any(|n| n.eq_ignore_ascii_case(host))
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::header::HeaderValue;
    use proptest::prelude::*;

    const TOKEN: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn access(open: bool) -> TcpAccess {
        TcpAccess::new(
            ApiToken::parse(TOKEN).unwrap(),
            open,
            &["Helper.Example.".to_string()],
        )
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    fn status(open: bool, method: Method, path: &str, pairs: &[(&'static str, &str)]) -> u16 {
        let uri: Uri = path.parse().unwrap();
        match check_tcp(&access(open), &method, &uri, &headers(pairs)) {
            Ok(()) => 200,
            Err(r) => r.status.as_u16(),
        }
    }

    #[test]
    fn token_host_and_origin() {
        let bearer = format!("Bearer {TOKEN}");
        let ok = [
            ("host", "127.0.0.1:7432"),
            ("authorization", bearer.as_str()),
        ];
        assert_eq!(status(false, Method::GET, "/page/1/2/3/main/0", &ok), 200);
        assert_eq!(status(false, Method::POST, "/imagegen/pause", &ok), 200);
        for host in [
            "localhost",
            "LOCALHOST:1",
            "[::1]:7432",
            "10.1.2.3",
            "helper.example",
        ] {
            let h = [("host", host), ("authorization", bearer.as_str())];
            assert_eq!(status(false, Method::GET, "/status", &h), 200, "{host}");
        }
        // No token, a wrong one, another scheme.
        assert_eq!(
            status(false, Method::GET, "/status", &[("host", "localhost")]),
            401
        );
        let wrong = format!("Bearer {}", TOKEN.replace('0', "1"));
        for auth in [
            wrong.as_str(),
            "Bearer",
            "Basic dXNlcjpwYXNz",
            "bearer short",
        ] {
            let h = [("host", "localhost"), ("authorization", auth)];
            assert_eq!(status(false, Method::GET, "/status", &h), 401, "{auth}");
        }
        assert_eq!(
            status(
                false,
                Method::GET,
                "/status",
                &[
                    ("host", "localhost"),
                    ("authorization", &format!("bearer  {TOKEN} "))
                ]
            ),
            200,
            "scheme case and spaces"
        );
        // DNS rebinding: an attacker's name, no Host, a malformed one.
        for host in [
            "evil.example",
            "localhost.evil.example",
            "localhost:x",
            "[::1",
            "",
        ] {
            let h = [("host", host), ("authorization", bearer.as_str())];
            assert_eq!(status(false, Method::GET, "/status", &h), 421, "{host:?}");
        }
        assert_eq!(
            status(false, Method::GET, "/status", &[("authorization", &bearer)]),
            421
        );
        let h = [("host", "localhost"), ("authorization", bearer.as_str())];
        assert_eq!(
            status(false, Method::GET, "http://evil.example/status", &h),
            421
        );
        assert_eq!(
            status(false, Method::GET, "http://127.0.0.1:9/status", &h),
            200
        );
        // A browser's cross-site request, even with the token.
        let h = [
            ("host", "localhost"),
            ("authorization", bearer.as_str()),
            ("origin", "http://evil.example"),
        ];
        assert_eq!(status(false, Method::POST, "/imagegen/pause", &h), 403);
        // --metrics-without-token opens GET /status and /metrics only.
        let h = [("host", "localhost")];
        assert_eq!(status(true, Method::GET, "/status", &h), 200);
        assert_eq!(status(true, Method::GET, "/metrics", &h), 200);
        assert_eq!(status(true, Method::POST, "/status", &h), 401);
        assert_eq!(
            status(true, Method::GET, "/page/1663/5/1260/main/0", &h),
            401
        );
        assert_eq!(status(true, Method::POST, "/imagegen/pause", &h), 401);
    }

    #[test]
    fn token_file_created_private_and_exposed_file_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("rh_token_{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("api.token");
        let t = ApiToken::load_or_create(&path).unwrap();
        assert_eq!(t.0.len(), 64);
        assert!(t.0.bytes().all(|b| b.is_ascii_hexdigit()));
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        // Read back: the same token; a second helper's file gets another.
        assert!(
            ApiToken::load_or_create(&path)
                .unwrap()
                .matches(t.0.as_bytes())
        );
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = ApiToken::load_or_create(&path).unwrap_err().to_string();
        assert!(e.contains(&format!("chmod 0600 {}", path.display())), "{e}");
        assert!(!e.contains(&t.0), "the token never appears in an error");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::write(&path, "short\n").unwrap();
        assert!(matches!(
            ApiToken::load_or_create(&path),
            Err(TokenError::Weak { .. })
        ));
        assert_eq!(format!("{t:?}"), "ApiToken(..)");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(10_000))]

        /// Any Host, Origin and Authorization bytes hyper would accept: no panic, and no
        /// access without the exact token (except the opened status paths).
        #[test]
        fn fuzz_check_tcp(
            host in proptest::option::of(proptest::collection::vec(0x20u8..0x7f, 0..40)),
            auth in proptest::option::of(proptest::collection::vec(0x20u8..0x7f, 0..80)),
            origin in any::<bool>(),
            open in any::<bool>(),
            path in "(http://[a-z0-9.:]{1,12})?(/[a-z0-9%]{0,8}){0,4}",
            post in any::<bool>(),
        ) {
            let mut h = HeaderMap::new();
            if let Some(v) = host.as_ref().and_then(|b| HeaderValue::from_bytes(b).ok()) {
                h.insert(HOST, v);
            }
            if let Some(v) = auth.as_ref().and_then(|b| HeaderValue::from_bytes(b).ok()) {
                h.insert(AUTHORIZATION, v);
            }
            if origin {
                h.insert(ORIGIN, HeaderValue::from_static("null"));
            }
            let method = if post { Method::POST } else { Method::GET };
            let Ok(uri) = path.parse::<Uri>() else {
                return Ok(());
            };
            let r = check_tcp(&access(open), &method, &uri, &h);
            if r.is_ok() {
                let opened = open && !post && (path == "/status" || path == "/metrics");
                let exact = h.get(AUTHORIZATION).and_then(|v| bearer_token(v.as_bytes())) == Some(TOKEN.as_bytes());
                prop_assert!(opened || exact);
                prop_assert!(!origin);
            }
        }
    }
}
