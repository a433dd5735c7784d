//! A client of a running helper's HTTP API, as remote `repair` uses it: `GET /status`,
//! `GET /repair/changed` and `GET /page`, with the bearer token the TCP listener asks for
//! (`serve::access`) and, for `https://` helpers, TLS verified against a CA file or the
//! system's roots. Every answer is checked before it is used: a helper is on another host
//! and its answers are network input.

use crate::wal::block::{ForkNumber, PageKey, RelFileLocator};
use crate::wal::page::{BLCKSZ, Lsn};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Longest a single request may take (a list of millions of pages included).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(300);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest answer read from a helper: a page is 8 KB and `/repair/changed` lists a few
/// dozen bytes per changed page, so 256 MiB is millions of pages; a helper (or something
/// posing as one) that streams more is refused rather than held in memory.
const MAX_ANSWER_BYTES: usize = 256 << 20;
/// Shortest token a helper accepts (`serve::access`): a shorter file is a mistake.
const MIN_TOKEN_CHARS: usize = 32;

#[derive(Debug, thiserror::Error)]
pub(crate) enum ClientError {
    #[error("helper token file {path}: {reason}")]
    Token { path: PathBuf, reason: String },
    #[error("helper CA file {path}: {reason}")]
    Ca { path: PathBuf, reason: String },
    #[error("helper URL {url:?}: {reason}")]
    Url { url: String, reason: String },
    #[error("HTTP client: {0}")]
    Build(String),
    #[error("helper {url}: {what}: {reason}")]
    Request {
        url: String,
        what: String,
        reason: String,
    },
    #[error(
        "helper {url}: {what}: the helper refused the token (HTTP {status}: {body}); pass its API token with --helper-token-file"
    )]
    Unauthorized {
        url: String,
        what: String,
        status: u16,
        body: String,
    },
    #[error("helper {url}: {what}: HTTP {status}: {body}")]
    Status {
        url: String,
        what: String,
        status: u16,
        body: String,
    },
    #[error("helper {url}: {what}: unexpected answer: {reason}")]
    Answer {
        url: String,
        what: String,
        reason: String,
    },
}

/// The bearer token. Never printed: `Debug` hides it.
#[derive(Clone)]
pub(crate) struct Token(String);

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(..)")
    }
}

impl Token {
    /// The token in `path` (a helper's `--api-token-file`, copied to this host).
    pub(crate) fn read(path: &Path) -> Result<Token, ClientError> {
        let err = |reason: String| ClientError::Token {
            path: path.to_path_buf(),
            reason,
        };
        // Like the helper's own token file: private to its owner, or refused.
        use std::os::unix::fs::MetadataExt as _;
        let mode = std::fs::metadata(path)
            .map_err(|e| err(e.to_string()))?
            .mode();
        if mode & 0o077 != 0 {
            return Err(err(format!(
                "it is accessible by group or others (mode {:04o}); fix with: chmod 0600 {}",
                mode & 0o7777,
                path.display()
            )));
        }
        let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
        let t = text.trim();
        if t.len() < MIN_TOKEN_CHARS || !t.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(err(format!(
                "not a token (at least {MIN_TOKEN_CHARS} printable ASCII characters)"
            )));
        }
        Ok(Token(t.to_string()))
    }
}

/// What `/status` says that repair checks.
#[derive(Debug, Clone)]
pub(crate) struct HelperIdentity {
    pub system_identifier: u64,
    pub timeline: u32,
}

/// A helper's answer to `GET /repair/changed`.
#[derive(Debug, Clone)]
pub(crate) struct ChangedPages {
    pub end: Lsn,
    pub shards: u32,
    pub shard: u32,
    pub stripe_blocks: u32,
    pub data_checksums: bool,
    pub wal_log_hints: bool,
    pub pages: Vec<PageKey>,
}

/// A page read as of an LSN.
#[derive(Debug)]
pub(crate) enum PageAnswer {
    Page(Box<[u8; BLCKSZ]>),
    /// 404: unknown to the helper, or dropped or truncated at that LSN.
    Absent,
    /// 409: the helper cannot rebuild it (its message).
    Unreadable(String),
}

/// One helper's API.
pub(crate) struct HelperClient {
    pub url: String,
    http: reqwest::Client,
    token: Option<Token>,
}

impl HelperClient {
    /// A client of the helper at `url` (`http://host:port` or `https://host:port`).
    pub(crate) fn new(
        url: &str,
        token: Option<Token>,
        ca_file: Option<&Path>,
    ) -> Result<HelperClient, ClientError> {
        let url = url.trim_end_matches('/').to_string();
        let parsed = reqwest::Url::parse(&url).map_err(|e| ClientError::Url {
            url: url.clone(),
            reason: e.to_string(),
        })?;
        if !parsed.username().is_empty() || parsed.password().is_some() {
            // Never echo the credentials in the errors that name this URL.
            return Err(ClientError::Url {
                url: format!(
                    "{}://{}",
                    parsed.scheme(),
                    parsed.host_str().unwrap_or("?")
                ),
                reason: "user information in the URL is not accepted: the helper authenticates with --helper-token-file".into(),
            });
        }
        if !matches!(parsed.scheme(), "http" | "https") || parsed.host().is_none() {
            return Err(ClientError::Url {
                url,
                reason: "expected http://HOST:PORT or https://HOST:PORT".into(),
            });
        }
        let mut builder = reqwest::Client::builder()
            .http1_only()
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(REQUEST_TIMEOUT)
            .no_proxy();
        if let Some(path) = ca_file {
            let ca_err = |reason: String| ClientError::Ca {
                path: path.to_path_buf(),
                reason,
            };
            let pem = std::fs::read(path).map_err(|e| ca_err(e.to_string()))?;
            let certs =
                reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| ca_err(e.to_string()))?;
            if certs.is_empty() {
                return Err(ca_err("no PEM certificate in it".into()));
            }
            builder = builder.tls_certs_only(certs);
        }
        let http = builder
            .build()
            .map_err(|e| ClientError::Build(e.to_string()))?;
        Ok(HelperClient { url, http, token })
    }

    async fn get(&self, path: &str, what: &str) -> Result<reqwest::Response, ClientError> {
        let mut req = self.http.get(format!("{}{path}", self.url));
        if let Some(t) = &self.token {
            req = req.bearer_auth(&t.0);
        }
        req.send().await.map_err(|e| ClientError::Request {
            url: self.url.clone(),
            what: what.to_string(),
            reason: error_chain(&e),
        })
    }

    fn answer_err(&self, what: &str, reason: impl Into<String>) -> ClientError {
        ClientError::Answer {
            url: self.url.clone(),
            what: what.to_string(),
            reason: reason.into(),
        }
    }

    /// The status and the whole body of an answer.
    async fn status_and_body(
        &self,
        resp: reqwest::Response,
        what: &str,
    ) -> Result<(u16, bytes::Bytes), ClientError> {
        let status = resp.status().as_u16();
        if resp
            .content_length()
            .is_some_and(|n| n > MAX_ANSWER_BYTES as u64)
        {
            return Err(
                self.answer_err(what, format!("answer larger than {MAX_ANSWER_BYTES} bytes"))
            );
        }
        let mut resp = resp;
        let mut body = bytes::BytesMut::new();
        while let Some(chunk) = resp.chunk().await.map_err(|e| ClientError::Request {
            url: self.url.clone(),
            what: what.to_string(),
            reason: error_chain(&e),
        })? {
            if body.len() + chunk.len() > MAX_ANSWER_BYTES {
                return Err(
                    self.answer_err(what, format!("answer larger than {MAX_ANSWER_BYTES} bytes"))
                );
            }
            body.extend_from_slice(&chunk);
        }
        Ok((status, body.freeze()))
    }

    /// The body of a 200 answer; a typed error for any other status.
    async fn ok_body(
        &self,
        resp: reqwest::Response,
        what: &str,
    ) -> Result<bytes::Bytes, ClientError> {
        let (status, body) = self.status_and_body(resp, what).await?;
        if status == 200 {
            return Ok(body);
        }
        Err(self.status_err(status, &body, what))
    }

    fn status_err(&self, status: u16, body: &[u8], what: &str) -> ClientError {
        let body: String = String::from_utf8_lossy(body)
            .trim()
            .chars()
            .take(300)
            .collect();
        if status == 401 || status == 403 {
            ClientError::Unauthorized {
                url: self.url.clone(),
                what: what.to_string(),
                status,
                body,
            }
        } else {
            ClientError::Status {
                url: self.url.clone(),
                what: what.to_string(),
                status,
                body,
            }
        }
    }

    /// `GET /status`: which cluster and timeline the helper follows.
    pub(crate) async fn identity(&self) -> Result<HelperIdentity, ClientError> {
        let what = "GET /status";
        let resp = self.get("/status", what).await?;
        let body = self.ok_body(resp, what).await?;
        let v: serde_json::Value =
            serde_json::from_slice(&body).map_err(|e| self.answer_err(what, e.to_string()))?;
        let system_identifier = v["system_identifier"]
            .as_str()
            .and_then(|s| s.parse::<u64>().ok())
            .ok_or_else(|| self.answer_err(what, "no system_identifier (still bootstrapping?)"))?;
        let timeline = v["timeline"]
            .as_u64()
            .and_then(|t| u32::try_from(t).ok())
            .ok_or_else(|| self.answer_err(what, "no timeline"))?;
        Ok(HelperIdentity {
            system_identifier,
            timeline,
        })
    }

    /// `GET /repair/changed?since=LSN` (see `serve::repair_changed` for the format).
    pub(crate) async fn changed(&self, since: Lsn) -> Result<ChangedPages, ClientError> {
        let what = "GET /repair/changed";
        let resp = self
            .get(&format!("/repair/changed?since={since}"), what)
            .await?;
        let body = self.ok_body(resp, what).await?;
        let text = std::str::from_utf8(&body).map_err(|e| self.answer_err(what, e.to_string()))?;
        parse_changed(text).map_err(|reason| self.answer_err(what, reason))
    }

    /// `GET /page/...?lsn=LSN`: the page as of `lsn` (every record starting at or before it).
    pub(crate) async fn page(&self, key: &PageKey, lsn: Lsn) -> Result<PageAnswer, ClientError> {
        let what = format!("GET /page {key} at {lsn}");
        let path = format!(
            "/page/{}/{}/{}/{}/{}?lsn={lsn}&wait_ms=0",
            key.rel.spc_oid, key.rel.db_oid, key.rel.rel_number, key.fork.0, key.block
        );
        let resp = self.get(&path, &what).await?;
        let (status, body) = self.status_and_body(resp, &what).await?;
        match status {
            200 => {
                let page = <Box<[u8; BLCKSZ]>>::try_from(body.to_vec().into_boxed_slice())
                    .map_err(|b| {
                        self.answer_err(&what, format!("{} bytes, not {BLCKSZ}", b.len()))
                    })?;
                Ok(PageAnswer::Page(page))
            }
            404 => Ok(PageAnswer::Absent),
            409 => Ok(PageAnswer::Unreadable(
                String::from_utf8_lossy(&body).trim().to_string(),
            )),
            s => Err(self.status_err(s, &body, &what)),
        }
    }
}

/// The error and its causes on one line (reqwest's own message is often only "error
/// sending request").
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// Parses a `GET /repair/changed` answer; an answer without its closing `pages N` line
/// (cut off) or with a count that does not match is refused.
pub(crate) fn parse_changed(text: &str) -> Result<ChangedPages, String> {
    let mut lines = text.lines();
    if lines.next() != Some(crate::store::repair::REPAIR_CHANGED_MAGIC) {
        return Err("not a repair-changed answer (an older helper?)".into());
    }
    let mut out = ChangedPages {
        end: Lsn(0),
        shards: 0,
        shard: 0,
        stripe_blocks: 0,
        data_checksums: false,
        wal_log_hints: false,
        pages: Vec::new(),
    };
    let num = |w: Option<&str>, what: &str| -> Result<u32, String> {
        w.and_then(|w| w.parse::<u32>().ok())
            .ok_or_else(|| format!("bad {what}"))
    };
    let mut count = None;
    for line in lines {
        let mut w = line.split_ascii_whitespace();
        match w.next() {
            Some("end") => {
                out.end = w
                    .next()
                    .and_then(|v| v.parse::<Lsn>().ok())
                    .ok_or("bad end LSN")?;
            }
            Some("shard") => {
                out.shards = num(w.next(), "shard count")?;
                out.shard = num(w.next(), "shard")?;
                out.stripe_blocks = num(w.next(), "stripe")?;
            }
            Some("redo") => {
                out.data_checksums = num(w.next(), "checksums flag")? != 0;
                out.wal_log_hints = num(w.next(), "wal_log_hints flag")? != 0;
            }
            Some("page") => {
                let spc_oid = num(w.next(), "tablespace")?;
                let db_oid = num(w.next(), "database")?;
                let rel_number = num(w.next(), "relfilenode")?;
                let fork = num(w.next(), "fork")?;
                let block = num(w.next(), "block")?;
                let fork = u8::try_from(fork)
                    .ok()
                    .and_then(|f| ForkNumber::parse(&f.to_string()))
                    .ok_or("bad fork")?;
                out.pages.push(PageKey {
                    rel: RelFileLocator {
                        spc_oid,
                        db_oid,
                        rel_number,
                    },
                    fork,
                    block,
                });
            }
            Some("pages") => count = Some(num(w.next(), "page count")? as usize),
            // Lines of later versions of the format are skipped.
            _ => {}
        }
    }
    match count {
        None => Err("cut off (no closing page count)".into()),
        Some(n) if n != out.pages.len() => Err(format!(
            "{} pages listed, the count says {n}",
            out.pages.len()
        )),
        Some(_) if out.shards == 0 || out.shard >= out.shards || out.stripe_blocks == 0 => {
            Err("missing or invalid shard line".into())
        }
        Some(_) if out.end.0 == 0 => Err("missing end LSN".into()),
        Some(_) => Ok(out),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A "helper" that answers every request with a body over the cap (announced, or
    /// streamed without a length) is refused with an error, not held in memory.
    #[test]
    fn oversized_answers_are_refused() {
        use std::io::{Read, Write};
        for announced in [true, false] {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let port = listener.local_addr().unwrap().port();
            let server = std::thread::spawn(move || {
                let (mut conn, _) = listener.accept().unwrap();
                let mut req = [0u8; 4096];
                let _ = conn.read(&mut req);
                if announced {
                    let _ = conn.write_all(
                        format!(
                            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n",
                            MAX_ANSWER_BYTES + 1
                        )
                        .as_bytes(),
                    );
                } else {
                    let _ = conn.write_all(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n");
                    let chunk = vec![b'x'; 1 << 20];
                    for _ in 0..(MAX_ANSWER_BYTES >> 20) + 2 {
                        if conn.write_all(&chunk).is_err() {
                            break;
                        }
                    }
                }
            });
            let client =
                HelperClient::new(&format!("http://127.0.0.1:{port}"), None, None).unwrap();
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            let err = rt.block_on(client.identity()).unwrap_err().to_string();
            assert!(err.contains("answer larger than"), "{err}");
            drop(client);
            server.join().unwrap();
        }
    }

    #[test]
    fn changed_answers_parse_and_cut_offs_are_refused() {
        let ok = format!(
            "{}\nend 0/3000028\nshard 2 1 128\nredo 1 0\npage 1663 5 16384 0 7\npage 1663 5 16384 2 0\npages 2\n",
            crate::store::repair::REPAIR_CHANGED_MAGIC
        );
        let c = parse_changed(&ok).unwrap();
        assert_eq!(
            (c.end, c.shards, c.shard, c.pages.len()),
            (Lsn(0x3000028), 2, 1, 2)
        );
        assert!(c.data_checksums && !c.wal_log_hints);
        assert_eq!(c.pages[1].fork, ForkNumber::VM);
        let cut = ok.replace("pages 2\n", "");
        assert!(parse_changed(&cut).unwrap_err().contains("cut off"));
        assert!(parse_changed(&ok.replace("pages 2", "pages 3")).is_err());
        assert!(parse_changed(&ok.replace("0 7\n", "9 7\n")).is_err());
        assert!(parse_changed(&ok.replace("shard 2 1", "shard 2 2")).is_err());
        assert!(parse_changed("{}").is_err());
    }

    proptest::proptest! {
        /// Any answer: a typed error or a list, never a panic.
        #[test]
        fn fuzz_changed_answers(body in "(fpw_pushdown repair-changed 1\n)?([a-z]{0,6}( [0-9A-F/]{0,12}){0,6}\n){0,8}") {
            let _ = parse_changed(&body);
        }
    }
}
