//! Routing between helper shards: any helper answers any `GET /page` (issue 19).
//!
//! With `--shards N` each helper holds only the pages the [`ShardMap`] gives it, and the store
//! answers a read of another shard's page with a typed "not owned" error (421 over HTTP).
//! With `--peers URL0,...,URLN-1` (the API base URL of every shard, index = shard number) a
//! helper instead forwards such a read to the page's owner, so `page_at()` and any other
//! client can be pointed at one helper:
//!
//! - **proxy** (the default): the same path and query (`lsn`, `wait_ms`, `images`, `cache`)
//!   are sent to the owner with the peer bearer token (`--peer-token-file`, by default this
//!   helper's own API token file: one token shared by the deployment) and the header
//!   `x-fpw-routed: proxied`; the owner's status, body and page headers come back unchanged,
//!   plus `x-fpw-routed: proxied`. The owner's `x-fpw-shard` says who produced the page.
//! - **redirect** (`?route=redirect`): 307 to the owner's URL, for a client that would rather
//!   make the second hop itself (it must send its token to the owner; curl and most clients
//!   drop `Authorization` on a redirect to another host, which is their protection, not ours).
//!
//! Why it cannot loop: the routing decision is the shard map's `owner()`, the same pure
//! function on every helper, and a request that already carries `x-fpw-routed` is never
//! forwarded again, whatever the receiving helper's map says; a misconfigured `--peers` list
//! (two entries pointing at one helper, or shards with different maps) thus ends in the
//! store's 421 after one hop instead of a ring of proxies.
//!
//! Failures never turn into a guess of the page: an owner that cannot be reached or refuses
//! the peer token gives 502, one that does not answer in time 504, each with a JSON body
//! naming the shard and its address.
//! Every peer request is bounded: [`CONNECT_TIMEOUT`] to connect, and the read's own
//! `wait_ms` (at most 30 s) plus [`READ_MARGIN`] for the answer.
//!
//! Secure defaults, as for the API's own listener (`listen.rs`) and the object store
//! (`store/remote.rs`): peer URLs with `https` are verified against `--peer-ca-file` (or the
//! system roots); a plain `http` peer is accepted only on loopback unless the operator says
//! `--peer-allow-plain-http` (the token and every table's pages would cross the network in
//! clear). URLs with user information, a query or a fragment are refused.

use super::access::{ApiToken, TokenError};
use crate::store::shard::ShardMap;
use crate::wal::block::PageKey;
use bytes::Bytes;
use hyper::StatusCode;
use reqwest::Url;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Header marking a request already forwarded once, and a response that was proxied.
pub(crate) const ROUTED_HEADER: &str = "x-fpw-routed";
/// Longest wait for a TCP (and TLS) connection to a peer.
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Time allowed beyond the read's own `wait_ms` for the owner to rebuild and send the page.
pub(crate) const READ_MARGIN: Duration = Duration::from_secs(10);
/// Largest answer accepted from a peer (a page is 8 KB; error texts are short).
const MAX_PEER_BODY: usize = 1 << 20;
/// Response headers of a page read passed back from the owner.
const PASSED_HEADERS: [&str; 8] = [
    "content-type",
    "x-deltas-replayed",
    "x-read-us",
    "x-start",
    "x-read-phases",
    "x-lsn",
    "x-fpw-shard",
    "retry-after",
];

/// `run`'s routing flags.
#[derive(Debug, Clone)]
pub(crate) struct PeerConfig {
    /// `--peers`: the API base URL of every shard, index = shard number.
    pub urls: Vec<Url>,
    /// `--peer-token-file` (default: the helper's own `--api-token-file`).
    pub token_file: PathBuf,
    /// `--peer-ca-file`: the CA of the peers' TLS certificates (None: the system roots).
    pub ca_file: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum PeerError {
    #[error(
        "--peers lists {given} URLs but --shards is {shards}: give one API URL per shard, in shard order"
    )]
    Count { given: usize, shards: u32 },
    #[error("--peers entry {index} {url:?}: {reason}")]
    Url {
        index: usize,
        url: String,
        reason: String,
    },
    #[error(
        "--peers entry {index} ({url}) is plain HTTP and not on loopback: the peer token and pages would cross the network in clear; use https (the peer needs --tls-cert/--tls-key), or give --peer-allow-plain-http for a network you trust"
    )]
    PlainHttp { index: usize, url: Url },
    #[error("peer token: {0}")]
    Token(#[from] TokenError),
    #[error("--peer-ca-file {path}: {reason}")]
    Ca { path: PathBuf, reason: String },
    #[error("cannot build the peer HTTP client: {0}")]
    Client(String),
}

/// Parses `--peers`: comma-separated API base URLs (`https://host:port` or with a path prefix
/// when a proxy puts the API under one), one per shard.
pub(crate) fn parse_peers(
    list: &str,
    shards: u32,
    allow_plain_http: bool,
) -> Result<Vec<Url>, PeerError> {
    let entries: Vec<&str> = list.split(',').map(str::trim).collect();
    if entries.len() != shards as usize {
        return Err(PeerError::Count {
            given: entries.len(),
            shards,
        });
    }
    entries
        .iter()
        .enumerate()
        .map(|(index, raw)| {
            let bad = |reason: &str| PeerError::Url {
                index,
                url: without_user_info(raw),
                reason: reason.to_string(),
            };
            let url = Url::parse(raw).map_err(|e| bad(&e.to_string()))?;
            if !matches!(url.scheme(), "http" | "https") {
                return Err(bad("the scheme must be https (or http on loopback)"));
            }
            if url.host().is_none() {
                return Err(bad("no host"));
            }
            if !url.username().is_empty() || url.password().is_some() {
                return Err(bad(
                    "user information in the URL is not accepted (the token comes from --peer-token-file)",
                ));
            }
            if url.query().is_some() || url.fragment().is_some() {
                return Err(bad("a base URL takes no query or fragment"));
            }
            if url.scheme() == "http" && !allow_plain_http && !is_loopback(&url) {
                return Err(PeerError::PlainHttp { index, url });
            }
            Ok(url)
        })
        .collect()
}

/// A `--peers` entry as it may be printed: user information (which may hold a password) cut
/// out.
pub(crate) fn without_user_info(raw: &str) -> String {
    match raw.split_once("://") {
        Some((scheme, rest)) => {
            let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
            match rest[..authority_end].rfind('@') {
                Some(at) => format!("{scheme}://***@{}", &rest[at + 1..]),
                None => raw.to_string(),
            }
        }
        None => raw.to_string(),
    }
}

/// True when the URL's host is this machine (127.0.0.0/8, ::1, `localhost`).
fn is_loopback(url: &Url) -> bool {
    let host = url.host_str().unwrap_or("");
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// How a request asks to be routed (`?route=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RouteMode {
    /// `proxy` (the default).
    Proxy,
    /// `redirect`: 307 to the owner.
    Redirect,
    /// `none`: answer from this helper's store (421 for another shard's page).
    Local,
}

impl RouteMode {
    pub(crate) fn parse(value: Option<&str>) -> Result<RouteMode, String> {
        match value {
            None | Some("proxy") => Ok(RouteMode::Proxy),
            Some("redirect") => Ok(RouteMode::Redirect),
            Some("none") => Ok(RouteMode::Local),
            Some(v) => Err(format!("invalid route {v:?} (proxy, redirect or none)")),
        }
    }
}

/// What to do with one page read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Decision {
    /// Answer from this helper's store (its own page, or routing is not asked for or not
    /// allowed: the store then answers 421 for another shard's page).
    Local,
    Proxy {
        owner: u32,
    },
    Redirect {
        owner: u32,
    },
}

/// The routing decision: a pure function of the map, the page and the request.
pub(crate) fn decide(
    map: &ShardMap,
    key: &PageKey,
    already_routed: bool,
    mode: RouteMode,
) -> Decision {
    let owner = map.owner(key);
    if owner == map.shard || already_routed {
        return Decision::Local;
    }
    match mode {
        RouteMode::Proxy => Decision::Proxy { owner },
        RouteMode::Redirect => Decision::Redirect { owner },
        RouteMode::Local => Decision::Local,
    }
}

/// The query without `route=` (the owner must not see it: it answers locally anyway, and a
/// redirect target should be the plain read).
pub(crate) fn forwarded_query(query: Option<&str>) -> Option<String> {
    let kept: Vec<&str> = query?
        .split('&')
        .filter(|kv| !kv.is_empty() && kv.split('=').next() != Some("route"))
        .collect();
    (!kept.is_empty()).then(|| kept.join("&"))
}

/// `base` + `/page/{rest}` + `?query`, keeping a path prefix of the base URL.
pub(crate) fn page_url(base: &Url, page_path: &str, query: Option<&str>) -> String {
    let b = base.as_str().trim_end_matches('/');
    match query {
        Some(q) => format!("{b}/page/{page_path}?{q}"),
        None => format!("{b}/page/{page_path}"),
    }
}

/// Counters of routed reads, for `/metrics`.
pub(crate) struct RouteMetrics {
    pub proxied: AtomicU64,
    pub redirected: AtomicU64,
    /// Owner unreachable or refused the peer token (502), or timed out (504).
    pub failed: AtomicU64,
    /// Seconds of a proxied read, as the client sees it minus the local parsing.
    pub seconds: prometheus_client::metrics::histogram::Histogram,
}

impl Default for RouteMetrics {
    fn default() -> Self {
        RouteMetrics {
            proxied: AtomicU64::new(0),
            redirected: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            seconds: super::metrics::page_read_seconds_histogram(),
        }
    }
}

/// The answer to a routed read, before it becomes an HTTP response.
#[derive(Debug)]
pub(crate) struct Routed {
    pub status: StatusCode,
    pub headers: Vec<(&'static str, String)>,
    pub body: Bytes,
}

/// Forwards reads of other shards' pages to their owners.
pub(crate) struct Router {
    map: ShardMap,
    peers: Vec<Url>,
    token: ApiToken,
    client: reqwest::Client,
    /// What a peer gets beyond the read's own wait: [`READ_MARGIN`] (shorter in tests).
    read_margin: Duration,
    /// Shared with the router a reload replaces, so the counters run on.
    pub metrics: Arc<RouteMetrics>,
}

impl std::fmt::Debug for Router {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Router")
            .field("map", &self.map)
            .field("peers", &self.peers)
            .finish_non_exhaustive()
    }
}

impl Router {
    /// Reads the token and the CA and builds the client (once, at start: a bad file stops
    /// the helper with a clear message instead of failing every routed read).
    pub(crate) fn new(map: ShardMap, cfg: &PeerConfig) -> Result<Router, PeerError> {
        if cfg.urls.len() != map.shards as usize {
            return Err(PeerError::Count {
                given: cfg.urls.len(),
                shards: map.shards,
            });
        }
        let token = ApiToken::load(&cfg.token_file)?;
        let mut builder = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            // Peers are internal: no system proxy, no redirects followed (an owner never
            // redirects; following one would send the token elsewhere).
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            // An owner closes a kept-alive connection idle for HEADER_TIMEOUT; dropping
            // ours well before keeps a request from racing that close (a spurious 502).
            .pool_idle_timeout(super::listen::HEADER_TIMEOUT / 2)
            .user_agent(concat!(
                "redo-helper/",
                env!("CARGO_PKG_VERSION"),
                " (routing)"
            ));
        if let Some(ca) = &cfg.ca_file {
            builder = builder.tls_certs_only(load_ca(ca)?);
        }
        let client = builder
            .build()
            .map_err(|e| PeerError::Client(error_chain(&e)))?;
        Ok(Router {
            map,
            peers: cfg.urls.clone(),
            token,
            client,
            read_margin: READ_MARGIN,
            metrics: Arc::default(),
        })
    }

    /// This router counting into `metrics` (those of the router it replaces).
    pub(crate) fn with_metrics(mut self, metrics: Arc<RouteMetrics>) -> Router {
        self.metrics = metrics;
        self
    }

    /// The other shards and their URLs, for the log: "shard 1 at https://...".
    pub(crate) fn describe_peers(&self) -> String {
        self.peers
            .iter()
            .enumerate()
            .filter(|(i, _)| *i as u32 != self.map.shard)
            .map(|(i, u)| format!("shard {i} at {u}"))
            .collect::<Vec<_>>()
            .join(", ")
    }

    pub(crate) fn map(&self) -> &ShardMap {
        &self.map
    }

    /// The owner's URL of a page read (for a redirect).
    pub(crate) fn redirect(&self, owner: u32, page_path: &str, query: Option<&str>) -> Routed {
        self.metrics.redirected.fetch_add(1, Ordering::Relaxed);
        let location = page_url(&self.peers[owner as usize], page_path, query);
        Routed {
            status: StatusCode::TEMPORARY_REDIRECT,
            headers: vec![
                ("location", location.clone()),
                (ROUTED_HEADER, "redirected".into()),
                ("content-type", "text/plain; charset=utf-8".into()),
            ],
            body: Bytes::from(format!("page owned by shard {owner}: {location}\n")),
        }
    }

    /// Proxies a page read to its owner. `wait` is the read's `wait_ms`: the owner may hold
    /// the request that long for WAL it has not received yet.
    pub(crate) async fn proxy(
        &self,
        owner: u32,
        page_path: &str,
        query: Option<&str>,
        wait: Duration,
    ) -> Routed {
        let started = Instant::now();
        let base = &self.peers[owner as usize];
        let url = page_url(base, page_path, query);
        let answer = self.fetch(&url, wait).await;
        match answer {
            Ok((status, headers, body))
                if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN =>
            {
                // Passing the owner's 401 back would tell the client its own token is wrong.
                let _ = (headers, body);
                self.failed(
                    owner,
                    format!(
                        "shard {owner} at {base} refused the peer token ({status}): --peer-token-file must hold the owner's API token"
                    ),
                )
            }
            Ok((status, headers, body))
                if status == StatusCode::OK && !is_owners_page(owner, &headers, &body) =>
            {
                // Only what the owner proves is served: a 200 that is not one page made by
                // the owner (a --peers entry pointing at another helper, a proxy in between)
                // is refused, never passed on as a page.
                self.failed(
                    owner,
                    format!(
                        "shard {owner} at {base} answered 200 with {} bytes and x-fpw-shard {:?}, not a page of shard {owner}: is --peers in shard order?",
                        body.len(),
                        header_value(&headers, "x-fpw-shard").unwrap_or("(none)")
                    ),
                )
            }
            Ok((status, mut headers, body)) => {
                if status == StatusCode::MISDIRECTED_REQUEST {
                    log::warn!(
                        "routing: shard {owner} at {base} answered 421 for a page the shard map gives it: is --peers in shard order, and do all shards use the same --shards and --stripe-blocks?"
                    );
                }
                self.metrics.proxied.fetch_add(1, Ordering::Relaxed);
                self.metrics
                    .seconds
                    .observe(started.elapsed().as_secs_f64());
                headers.push((ROUTED_HEADER, "proxied".into()));
                Routed {
                    status,
                    headers,
                    body,
                }
            }
            Err(FetchError { message, timed_out }) if timed_out => self.failed_with(
                StatusCode::GATEWAY_TIMEOUT,
                owner,
                format!("shard {owner} at {base} did not answer in time: {message}"),
            ),
            Err(FetchError { message, .. }) => self.failed(
                owner,
                format!("shard {owner} at {base} unreachable: {message}"),
            ),
        }
    }

    fn failed(&self, owner: u32, message: String) -> Routed {
        self.failed_with(StatusCode::BAD_GATEWAY, owner, message)
    }

    /// A routed read that got no page from its owner: 502, or 504 when the owner did not
    /// answer within the read's wait (RFC 9110 15.6.5: a gateway that timed out).
    fn failed_with(&self, status: StatusCode, owner: u32, message: String) -> Routed {
        self.metrics.failed.fetch_add(1, Ordering::Relaxed);
        log::warn!("routing: {message}");
        let body = serde_json::json!({
            "error": message,
            "owner": owner,
            "peer": self.peers[owner as usize].as_str(),
        });
        Routed {
            status,
            headers: vec![
                ("content-type", "application/json".into()),
                (ROUTED_HEADER, "failed".into()),
            ],
            body: Bytes::from(format!("{body}\n")),
        }
    }

    async fn fetch(
        &self,
        url: &str,
        wait: Duration,
    ) -> Result<(StatusCode, Vec<(&'static str, String)>, Bytes), FetchError> {
        let mut response = self
            .client
            .get(url)
            .bearer_auth(self.token.secret())
            .header(ROUTED_HEADER, "proxied")
            .timeout(wait + self.read_margin)
            .send()
            .await
            .map_err(FetchError::from_reqwest)?;
        let status = StatusCode::from_u16(response.status().as_u16())
            .map_err(|e| FetchError::other(format!("invalid status: {e}")))?;
        let headers = PASSED_HEADERS
            .iter()
            .filter_map(|name| {
                let v = response.headers().get(*name)?.to_str().ok()?;
                Some((*name, v.to_string()))
            })
            .collect();
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(FetchError::from_reqwest)? {
            if body.len() + chunk.len() > MAX_PEER_BODY {
                return Err(FetchError::other(format!(
                    "answer larger than {MAX_PEER_BODY} bytes"
                )));
            }
            body.extend_from_slice(&chunk);
        }
        Ok((status, headers, Bytes::from(body)))
    }
}

/// Why a proxied read got no answer from its owner.
#[derive(Debug)]
struct FetchError {
    message: String,
    /// The owner did not answer within the read's wait plus the margin.
    timed_out: bool,
}

impl FetchError {
    fn from_reqwest(e: reqwest::Error) -> FetchError {
        FetchError {
            timed_out: e.is_timeout(),
            message: error_chain(&e),
        }
    }

    fn other(message: String) -> FetchError {
        FetchError {
            message,
            timed_out: false,
        }
    }
}

/// The CA certificates of `--peer-ca-file`.
fn load_ca(path: &Path) -> Result<Vec<reqwest::Certificate>, PeerError> {
    let ca_err = |reason: String| PeerError::Ca {
        path: path.to_path_buf(),
        reason,
    };
    let pem = std::fs::read(path).map_err(|e| ca_err(e.to_string()))?;
    let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| ca_err(error_chain(&e)))?;
    if certs.is_empty() {
        return Err(ca_err("no PEM certificate in the file".into()));
    }
    Ok(certs)
}

/// An error and its sources, which reqwest keeps apart ("error sending request" alone says
/// nothing about a refused connection or a bad certificate).
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let c = cause.to_string();
        if !s.contains(&c) {
            s += ": ";
            s += &c;
        }
        source = cause.source();
    }
    s
}

/// The value of header `name` in a peer's answer.
fn header_value<'a>(headers: &'a [(&'static str, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// Whether a peer's 200 is one page (BLCKSZ bytes) that shard `owner` says it produced.
fn is_owners_page(owner: u32, headers: &[(&'static str, String)], body: &[u8]) -> bool {
    body.len() == crate::wal::page::BLCKSZ
        && header_value(headers, "x-fpw-shard").and_then(|v| v.trim().parse::<u32>().ok())
            == Some(owner)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wal::block::{ForkNumber, RelFileLocator};

    fn key(rel: u32, block: u32) -> PageKey {
        PageKey {
            rel: RelFileLocator {
                spc_oid: 1663,
                db_oid: 5,
                rel_number: rel,
            },
            fork: ForkNumber(0),
            block,
        }
    }

    #[test]
    fn peers_are_validated() {
        let ok = parse_peers(
            "https://a.example:7432, http://127.0.0.1:7433/api/",
            2,
            false,
        )
        .unwrap();
        assert_eq!(ok[0].as_str(), "https://a.example:7432/");
        assert_eq!(
            page_url(&ok[1], "1663/5/1/main/0", Some("lsn=0/1")),
            "http://127.0.0.1:7433/api/page/1663/5/1/main/0?lsn=0/1"
        );
        assert_eq!(
            page_url(&ok[0], "1663/5/1/main/0", None),
            "https://a.example:7432/page/1663/5/1/main/0"
        );
        assert!(matches!(
            parse_peers("https://a:1", 2, false),
            Err(PeerError::Count {
                given: 1,
                shards: 2
            })
        ));
        assert!(matches!(
            parse_peers("https://a:1,http://10.0.0.2:7432", 2, false),
            Err(PeerError::PlainHttp { index: 1, .. })
        ));
        assert!(parse_peers("https://a:1,http://10.0.0.2:7432", 2, true).is_ok());
        assert!(parse_peers("http://localhost:1,http://[::1]:2", 2, false).is_ok());
        for bad in [
            "ftp://a:1",
            "https://user:pw@a:1",
            "https://a:1/?x=1",
            "https://a:1/#f",
            "a:1",
            "",
        ] {
            assert!(
                matches!(parse_peers(bad, 1, false), Err(PeerError::Url { .. })),
                "{bad}"
            );
        }
        // The entry is named in the error, without a password it may hold.
        let err = parse_peers("https://u:secret@a:1/x", 1, false)
            .unwrap_err()
            .to_string();
        assert!(err.contains("user information"), "{err}");
        assert!(err.contains("https://***@a:1/x"), "{err}");
        assert!(!err.contains("secret"), "{err}");
        assert_eq!(without_user_info("a:1"), "a:1");
    }

    #[test]
    fn route_decisions() {
        let map = ShardMap::new(2, 0, 4).unwrap();
        let mine = (0..64)
            .map(|b| key(16384, b))
            .find(|k| map.owns(k))
            .unwrap();
        let theirs = (0..64)
            .map(|b| key(16384, b))
            .find(|k| !map.owns(k))
            .unwrap();
        assert_eq!(
            decide(&map, &mine, false, RouteMode::Proxy),
            Decision::Local
        );
        assert_eq!(
            decide(&map, &theirs, false, RouteMode::Proxy),
            Decision::Proxy { owner: 1 }
        );
        assert_eq!(
            decide(&map, &theirs, false, RouteMode::Redirect),
            Decision::Redirect { owner: 1 }
        );
        assert_eq!(
            decide(&map, &theirs, false, RouteMode::Local),
            Decision::Local
        );
        // Never a second hop, whatever the mode.
        for mode in [RouteMode::Proxy, RouteMode::Redirect, RouteMode::Local] {
            assert_eq!(decide(&map, &theirs, true, mode), Decision::Local);
        }
        // Unsharded: everything is local.
        assert_eq!(
            decide(&ShardMap::UNSHARDED, &theirs, false, RouteMode::Proxy),
            Decision::Local
        );
        assert_eq!(RouteMode::parse(None), Ok(RouteMode::Proxy));
        assert_eq!(RouteMode::parse(Some("redirect")), Ok(RouteMode::Redirect));
        assert_eq!(RouteMode::parse(Some("none")), Ok(RouteMode::Local));
        assert!(RouteMode::parse(Some("elsewhere")).is_err());
    }

    #[test]
    fn forwarded_queries_drop_route() {
        assert_eq!(forwarded_query(None), None);
        assert_eq!(forwarded_query(Some("route=redirect")), None);
        assert_eq!(
            forwarded_query(Some("lsn=0/1&route=proxy&wait_ms=5&images=none")).as_deref(),
            Some("lsn=0/1&wait_ms=5&images=none")
        );
        assert_eq!(
            forwarded_query(Some("cache=none&")).as_deref(),
            Some("cache=none")
        );
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(5_000))]

        /// `--peers` as an operator may mistype it: a typed error or URLs, no panic, never a
        /// password in the message.
        #[test]
        fn fuzz_peer_lists(list in "((https?|ftp)://)?([a-z]{0,3}(:[a-z]{0,6})?@)?[a-z0-9.:\\[\\]]{0,12}(/[a-z%]{0,4})?([?#][a-z=]{0,4})?(,[a-z:/.0-9@]{0,16}){0,2}") {
            match parse_peers(&list, 2, false) {
                Ok(urls) => proptest::prop_assert_eq!(urls.len(), 2),
                Err(e) => {
                    let msg = e.to_string();
                    if let Some((_, rest)) = list.split_once("://")
                        && let Some((user, _)) = rest.split_once('@')
                        && let Some((_, pw)) = user.split_once(':')
                        && pw.len() >= 3
                        && !user.contains(['/', ',', '?', '#'])
                    {
                        proptest::prop_assert!(!msg.contains(&format!(":{pw}@")), "{msg}");
                    }
                }
            }
        }
    }

    /// A router of shard 0 of 2 whose peer shard 1 is at 127.0.0.1:`port`, with a token in
    /// a directory of its own (returned, for removal).
    fn router_with_shard_1_at(port: u16, test: &str) -> (Router, std::path::PathBuf) {
        let dir = std::env::temp_dir().join(format!("route-test-{test}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let token_file = dir.join("token");
        ApiToken::load_or_create(&token_file).unwrap();
        let cfg = PeerConfig {
            urls: parse_peers(
                &format!("http://127.0.0.1:1,http://127.0.0.1:{port}"),
                2,
                false,
            )
            .unwrap(),
            token_file,
            ca_file: None,
        };
        let router = Router::new(ShardMap::new(2, 0, 4).unwrap(), &cfg).unwrap();
        (router, dir)
    }

    #[test]
    fn unreachable_owner_is_a_502_naming_it() {
        // A port nothing listens on: bind one, learn its number, close it.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .unwrap();
        let (router, dir) = router_with_shard_1_at(port, "502");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let r = rt.block_on(router.proxy(1, "1663/5/1/main/0", None, Duration::from_millis(10)));
        assert_eq!(r.status, StatusCode::BAD_GATEWAY);
        let body = String::from_utf8_lossy(&r.body);
        assert!(body.contains("shard 1 at http://127.0.0.1:"), "{body}");
        assert!(body.contains("\"owner\":1"), "{body}");
        assert_eq!(router.metrics.failed.load(Ordering::Relaxed), 1);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn silent_owner_is_a_504_naming_it() {
        // An owner that accepts the connection and never answers.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let (mut router, dir) = router_with_shard_1_at(port, "504");
        router.read_margin = Duration::from_millis(200);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let r = rt.block_on(router.proxy(1, "1663/5/1/main/0", None, Duration::from_millis(10)));
        drop(listener);
        assert_eq!(r.status, StatusCode::GATEWAY_TIMEOUT);
        let body = String::from_utf8_lossy(&r.body);
        assert!(body.contains("did not answer in time"), "{body}");
        assert!(body.contains("\"owner\":1"), "{body}");
        assert_eq!(router.metrics.failed.load(Ordering::Relaxed), 1);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
