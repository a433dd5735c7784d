//! A minimal HTTP/1.1 client for the redo helper's loopback API (`/status`, `/page`,
//! `/threshold`). Blocking with timeouts, on the backend's main thread; no WAL logic here.

use crate::gucs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::Duration;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Largest response accepted (a page is 8 KB; /status a few KB).
const MAX_RESPONSE: usize = 1 << 20;

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

/// The configured helper address, or None when `fpw_pushdown.helper_address` is empty.
pub fn helper_address() -> Option<String> {
    gucs::HELPER_ADDRESS
        .get()
        .map(|s| s.to_string_lossy().trim().to_string())
        .filter(|s| !s.is_empty())
}

fn resolve(addr: &str) -> Result<SocketAddr, String> {
    addr.to_socket_addrs()
        .map_err(|e| format!("invalid fpw_pushdown.helper_address {addr:?}: {e}"))?
        .next()
        .ok_or_else(|| format!("fpw_pushdown.helper_address {addr:?} resolves to nothing"))
}

/// Sends one request and reads the whole response (the helper closes after `Connection: close`).
pub fn request(method: &str, path: &str, timeout: Duration) -> Result<HelperResponse, String> {
    let addr = helper_address().ok_or("fpw_pushdown.helper_address is not set")?;
    let sock = resolve(&addr)?;
    let mut s = TcpStream::connect_timeout(&sock, CONNECT_TIMEOUT)
        .map_err(|e| format!("cannot reach the redo helper at {addr}: {e}"))?;
    s.set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    s.set_write_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
    )
    .map_err(|e| format!("redo helper at {addr}: {e}"))?;
    let mut raw = Vec::new();
    s.take(MAX_RESPONSE as u64 + 1)
        .read_to_end(&mut raw)
        .map_err(|e| format!("redo helper at {addr}: {e}"))?;
    if raw.len() > MAX_RESPONSE {
        return Err(format!(
            "redo helper at {addr}: response larger than {MAX_RESPONSE} bytes"
        ));
    }
    parse_response(&raw).map_err(|e| format!("redo helper at {addr}: {e}"))
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
    use super::parse_response;

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
