//! A minimal HTTP/1.1 client for the redo helper's API (`/status`, `/page`, `/threshold`).
//! Blocking with timeouts, on the backend's main thread; no WAL logic here.
//!
//! `fpw_pushdown.helper_address` names the helper(s), a comma-separated list of:
//! `unix:/path/api.sock` (or an absolute path) for a Unix socket, where the socket's file
//! permissions are the access control, or `host:port` (or `https://host:port`) for a TCP
//! listener, where every request carries the bearer token read from
//! `fpw_pushdown.helper_token_file` and, when `fpw_pushdown.helper_ca_file` is set (always
//! for `https://`), goes over TLS verified against that CA (required for a helper that is
//! not on loopback: the answers are table pages).
//!
//! Several addresses are several helpers of one deployment (shards, each holding one of the
//! listed slots). Any of them answers any page: a helper routes a page it does not own to
//! its owner. So a read goes to the first address that answers (`request_any`), while the
//! guard asks every one of them (`request_to`).

use crate::gucs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Largest response accepted (a page is 8 KB; /status a few KB).
const MAX_RESPONSE: usize = 1 << 20;
/// Largest token file read.
const MAX_TOKEN_FILE: u64 = 4096;

/// A response from the helper.
pub struct HelperResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HelperResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).trim().to_string()
    }
}

/// The configured helper addresses, in order (empty when `fpw_pushdown.helper_address` is).
pub fn helper_addresses() -> Vec<String> {
    gucs::helper_addresses()
}

/// Where a helper listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// Its Unix socket.
    Socket(PathBuf),
    /// Its TCP listener: `host:port` (also sent as `Host`), and whether TLS is used.
    Tcp { hostport: String, tls: TlsUse },
}

/// Whether a TCP address is spoken to over TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsUse {
    /// `host:port`: TLS exactly when `fpw_pushdown.helper_ca_file` is set.
    WhenCaSet,
    /// `https://host:port`: always (helper_ca_file is required).
    Always,
    /// `http://host:port`: never (loopback only, as any plain-text address).
    Never,
}

/// Parses one helper address: `unix:PATH`, an absolute path, `host:port`, or a
/// `http(s)://host:port` URL (as the helpers' `--peers` name each other; a trailing `/`
/// allowed, no other path).
pub fn parse_target(addr: &str) -> Result<Target, String> {
    if let Some(path) = addr.strip_prefix("unix:") {
        if !path.starts_with('/') {
            return Err(format!(
                "fpw_pushdown.helper_address {addr:?}: the socket path must be absolute"
            ));
        }
        return Ok(Target::Socket(PathBuf::from(path)));
    }
    if addr.starts_with('/') {
        return Ok(Target::Socket(PathBuf::from(addr)));
    }
    let (hostport, tls) = if let Some(rest) = addr.strip_prefix("https://") {
        (rest, TlsUse::Always)
    } else if let Some(rest) = addr.strip_prefix("http://") {
        (rest, TlsUse::Never)
    } else {
        (addr, TlsUse::WhenCaSet)
    };
    let hostport = if tls == TlsUse::WhenCaSet {
        hostport
    } else {
        hostport.strip_suffix('/').unwrap_or(hostport)
    };
    let port_ok = hostport.rsplit_once(':').is_some_and(|(h, p)| {
        !h.is_empty() && !h.contains(['/', '@', '?', '#']) && p.parse::<u16>().is_ok()
    });
    if !port_ok {
        return Err(format!(
            "invalid fpw_pushdown.helper_address {addr:?}: expected host:port, https://host:port, unix:/path/to/api.sock or an absolute socket path"
        ));
    }
    Ok(Target::Tcp {
        hostport: hostport.to_string(),
        tls,
    })
}

fn resolve(addr: &str) -> Result<SocketAddr, String> {
    addr.to_socket_addrs()
        .map_err(|e| format!("invalid fpw_pushdown.helper_address {addr:?}: {e}"))?
        .next()
        .ok_or_else(|| format!("fpw_pushdown.helper_address {addr:?} resolves to nothing"))
}

/// The value of a superuser-only path setting (None when empty).
fn path_setting(setting: &gucs::PathSetting) -> Option<PathBuf> {
    setting
        .get()
        .map(|s| s.to_string_lossy().trim().to_string())
        .filter(|s| !s.is_empty())
        .map(PathBuf::from)
}

/// Reads the bearer token; refuses a file others may read, as libpq refuses such a
/// `.pgpass`. The token itself never appears in an error.
pub fn read_token(path: &Path) -> Result<String, String> {
    let what = || format!("fpw_pushdown.helper_token_file {}", path.display());
    let f = std::fs::File::open(path).map_err(|e| format!("{}: {e}", what()))?;
    let meta = f.metadata().map_err(|e| format!("{}: {e}", what()))?;
    if meta.mode() & 0o077 != 0 {
        return Err(format!(
            "{} is readable by group or others (mode {:04o}); fix with: chmod 0600 {}",
            what(),
            meta.mode() & 0o7777,
            path.display()
        ));
    }
    let mut text = String::new();
    f.take(MAX_TOKEN_FILE)
        .read_to_string(&mut text)
        .map_err(|e| format!("{}: {e}", what()))?;
    let token = text.trim();
    if token.is_empty() || !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(format!("{} holds no usable token", what()));
    }
    Ok(token.to_string())
}

/// The HTTP request bytes (`Connection: close`, empty body).
fn request_bytes(method: &str, path: &str, host: &str, token: Option<&str>) -> Vec<u8> {
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\n{auth}Connection: close\r\nContent-Length: 0\r\n\r\n"
    )
    .into_bytes()
}

/// Writes the request and reads the whole response (the helper closes after it).
fn exchange(
    mut s: impl Read + Write,
    request: &[u8],
    addr: &str,
) -> Result<HelperResponse, String> {
    s.write_all(request)
        .and_then(|()| s.flush())
        .map_err(|e| format!("redo helper at {addr}: {e}"))?;
    let mut raw = Vec::new();
    let read = s.take(MAX_RESPONSE as u64 + 1).read_to_end(&mut raw);
    // A TLS peer closing without close_notify after a complete response is harmless here:
    // the length is checked against Content-Length below.
    if let Err(e) = read
        && raw.is_empty()
    {
        return Err(format!("redo helper at {addr}: {e}"));
    }
    if raw.len() > MAX_RESPONSE {
        return Err(format!(
            "redo helper at {addr}: response larger than {MAX_RESPONSE} bytes"
        ));
    }
    parse_response(&raw).map_err(|e| format!("redo helper at {addr}: {e}"))
}

/// Sends one request to the first listed helper that answers it: on a failure to get any
/// HTTP answer (unreachable, refused, TLS or I/O error, timeout) the next address is tried;
/// an HTTP answer, whatever its status, is returned with the address that gave it. Any
/// helper serves any page (the helpers route a page to its owner), so the order is only a
/// preference. Err lists why each address failed.
pub fn request_any(
    method: &str,
    path: &str,
    timeout: Duration,
) -> Result<(String, HelperResponse), String> {
    let addrs = helper_addresses();
    if addrs.is_empty() {
        return Err("fpw_pushdown.helper_address is not set".into());
    }
    let mut failures = Vec::new();
    for addr in addrs {
        match request_to(&addr, method, path, timeout) {
            Ok(resp) => return Ok((addr, resp)),
            Err(e) => failures.push(e),
        }
    }
    Err(failures.join("; "))
}

/// Sends one request to the helper at `addr` and reads the whole response.
pub fn request_to(
    addr: &str,
    method: &str,
    path: &str,
    timeout: Duration,
) -> Result<HelperResponse, String> {
    match parse_target(addr)? {
        Target::Socket(sock) => {
            let s = UnixStream::connect(&sock)
                .map_err(|e| format!("cannot reach the redo helper at {addr}: {e}"))?;
            s.set_read_timeout(Some(timeout))
                .and_then(|()| s.set_write_timeout(Some(timeout)))
                .map_err(|e| e.to_string())?;
            // The socket's permissions are the access control: no token.
            exchange(s, &request_bytes(method, path, "localhost", None), addr)
        }
        Target::Tcp { hostport, tls } => {
            let sock = resolve(&hostport)?;
            let token = path_setting(&gucs::HELPER_TOKEN_FILE)
                .map(|p| read_token(&p))
                .transpose()?;
            let ca = match tls {
                TlsUse::Never => None,
                TlsUse::WhenCaSet => path_setting(&gucs::HELPER_CA_FILE),
                TlsUse::Always => Some(path_setting(&gucs::HELPER_CA_FILE).ok_or_else(|| {
                    format!(
                        "the redo helper at {addr} is an https address: set fpw_pushdown.helper_ca_file to the CA that signs its certificate"
                    )
                })?),
            };
            if ca.is_none() && !sock.ip().is_loopback() {
                return Err(format!(
                    "the redo helper at {addr} is not on loopback: set fpw_pushdown.helper_ca_file to use TLS (the helper needs --tls-cert/--tls-key)"
                ));
            }
            let s = TcpStream::connect_timeout(&sock, CONNECT_TIMEOUT)
                .map_err(|e| format!("cannot reach the redo helper at {addr}: {e}"))?;
            s.set_read_timeout(Some(timeout))
                .and_then(|()| s.set_write_timeout(Some(timeout)))
                .map_err(|e| e.to_string())?;
            let req = request_bytes(method, path, &hostport, token.as_deref());
            match ca {
                None => exchange(s, &req, addr),
                Some(ca) => {
                    let host = host_of(&hostport);
                    let tls = crate::helper_tls::connect(s, &ca, host)
                        .map_err(|e| format!("redo helper at {addr}: TLS: {e}"))?;
                    exchange(tls, &req, addr)
                }
            }
        }
    }
}

/// The host of `host:port` (`[v6]:port` without the brackets).
fn host_of(hostport: &str) -> &str {
    let host = hostport.rsplit_once(':').map_or(hostport, |(h, _)| h);
    host.strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host)
}

fn parse_response(raw: &[u8]) -> Result<HelperResponse, String> {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("incomplete HTTP response")?;
    let head = std::str::from_utf8(&raw[..split]).map_err(|_| "non-UTF-8 HTTP header")?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse::<u16>().ok())
        .ok_or_else(|| format!("bad status line {status_line:?}"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let mut body = raw[split + 4..].to_vec();
    if let Some(len) = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.parse::<usize>().ok())
    {
        if body.len() < len {
            return Err(format!("truncated body: {} of {len} bytes", body.len()));
        }
        body.truncate(len);
    }
    Ok(HelperResponse {
        status,
        headers,
        body,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        assert_eq!(
            parse_target("unix:/run/h/api.sock").unwrap(),
            Target::Socket("/run/h/api.sock".into())
        );
        assert_eq!(
            parse_target("/run/h/api.sock").unwrap(),
            Target::Socket("/run/h/api.sock".into())
        );
        let tcp = |hostport: &str, tls| Target::Tcp {
            hostport: hostport.into(),
            tls,
        };
        assert_eq!(
            parse_target("127.0.0.1:7432").unwrap(),
            tcp("127.0.0.1:7432", TlsUse::WhenCaSet)
        );
        assert_eq!(
            parse_target("https://helper1.example:7433/").unwrap(),
            tcp("helper1.example:7433", TlsUse::Always)
        );
        assert_eq!(
            parse_target("http://[::1]:7432").unwrap(),
            tcp("[::1]:7432", TlsUse::Never)
        );
        assert!(parse_target("https://h:7433/page").is_err());
        assert!(parse_target("https://user@h:7433").is_err());
        assert!(parse_target("ftp://h:1").is_err());
        assert!(parse_target("unix:relative").is_err());
        assert!(parse_target("127.0.0.1").is_err());
        assert!(parse_target(":7432").is_err());
        assert_eq!(host_of("[::1]:7432"), "::1");
        assert_eq!(host_of("helper.example:7432"), "helper.example");
        let req = String::from_utf8(request_bytes("GET", "/status", "h:1", Some("t0k"))).unwrap();
        assert!(req.contains("\r\nAuthorization: Bearer t0k\r\n"), "{req}");
    }

    #[test]
    fn token_file_permissions() {
        use std::os::unix::fs::PermissionsExt;
        let p = std::env::temp_dir().join(format!("fpw_token_{}", std::process::id()));
        std::fs::write(&p, "secret-token-value\n").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(read_token(&p).unwrap(), "secret-token-value");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = read_token(&p).unwrap_err();
        assert!(
            e.contains("chmod 0600") && !e.contains("secret-token-value"),
            "{e}"
        );
        std::fs::remove_file(&p).unwrap();
    }

    #[test]
    fn parses_status_headers_and_body() {
        let r = parse_response(
            b"HTTP/1.1 409 Conflict\r\ncontent-length: 5\r\nx-deltas-replayed: 3\r\n\r\nhello!!",
        )
        .unwrap();
        assert_eq!(r.status, 409);
        assert_eq!(r.header("X-Deltas-Replayed"), Some("3"));
        assert_eq!(r.body, b"hello");
        assert!(parse_response(b"HTTP/1.1 200 OK\r\ncontent-length: 9\r\n\r\nshort").is_err());
        assert!(parse_response(b"garbage").is_err());
    }
}
