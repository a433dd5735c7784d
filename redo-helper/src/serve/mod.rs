//! The helper's HTTP API, on a Unix socket in the data directory and, with `--listen`, on TCP
//! with a bearer token (and TLS off loopback); who may use it is checked in [`access`], the
//! listeners and their limits are in [`listen`]:
//! - `GET /status` (JSON) and `GET /metrics` (Prometheus text);
//! - `GET /page/{spc}/{db}/{rel}/{fork}/{blk}[?lsn=X/Y][&wait_ms=N][&images=none][&cache=none]`:
//!   GetPage@LSN, the 8 KB page as `application/octet-stream`, with `x-deltas-replayed`,
//!   `x-read-us` (time to rebuild the page), `x-start`, `x-lsn` and `x-fpw-shard` (the shard
//!   that produced the page) headers; 421 with `{"error", "owner"}` for a page another shard
//!   owns; 404 unknown page (or truncated/dropped at that LSN), 409
//!   unreadable page, 410 LSN before the retained history, 425 LSN not received within the
//!   wait, 503 while bootstrapping. `images=none` replays the whole chain from the WAL or the
//!   base backup (verification), `cache=none` bypasses the cache of recent pages; with
//!   `--peers`, a page another shard owns is proxied to it (`route=redirect`: 307 to it;
//!   `route=none`: not routed), see [`route`];
//! - `GET /repair/changed?since=X/Y`: for a remote `repair`, the pages this helper owns
//!   that changed at or after `since` (the crashed cluster's last REDO location) and the
//!   end of its decoded WAL, as lines of text ([`repair_changed`]); 410 when `since` is
//!   before the retained history;
//! - `POST /imagegen/pause`, `POST /imagegen/resume`;
//! - `POST /threshold/{spc}/{db}/{rel}?value=N` (no value: back to the default).

pub(crate) mod access;
pub(crate) mod listen;
mod metrics;
pub(crate) mod route;
pub(crate) mod status;

use crate::store::page_store::{GetPageError, ReadOptions};
use crate::wal::block::{ForkNumber, PageKey, RelFileLocator};
use crate::wal::page::Lsn;
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use status::SharedState;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Longest a page read waits for WAL that has not arrived yet.
const MAX_WAIT: Duration = Duration::from_secs(30);
const DEFAULT_WAIT: Duration = Duration::from_secs(5);

type HttpResponse = Response<Full<Bytes>>;

fn response(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> HttpResponse {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    if let Ok(v) = content_type.parse() {
        r.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    r
}

fn text(status: StatusCode, msg: impl std::fmt::Display) -> HttpResponse {
    response(status, "text/plain; charset=utf-8", format!("{msg}\n"))
}

/// A page another shard owns: 421 Misdirected Request with `{"error": ..., "owner": I}`,
/// so that a client (or a routing helper) knows where to ask. The one place this answer is
/// made.
pub(crate) fn not_owned(e: &GetPageError, owner: u32) -> HttpResponse {
    let body = serde_json::json!({ "error": e.to_string(), "owner": owner });
    response(
        StatusCode::MISDIRECTED_REQUEST,
        "application/json",
        body.to_string() + "\n",
    )
}

fn query_param<'a>(query: Option<&'a str>, name: &str) -> Option<&'a str> {
    query?
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// Parses `/page/spc/db/rel/fork/blk`.
fn parse_page_path(rest: &str) -> Result<PageKey, String> {
    let parts: Vec<&str> = rest.split('/').collect();
    let [spc, db, rel, fork, blk] = parts.as_slice() else {
        return Err("expected /page/{spc}/{db}/{rel}/{fork}/{blk}".into());
    };
    let num = |s: &str, what: &str| {
        s.parse::<u32>()
            .map_err(|_| format!("invalid {what} {s:?}"))
    };
    Ok(PageKey {
        rel: RelFileLocator {
            spc_oid: num(spc, "tablespace")?,
            db_oid: num(db, "database")?,
            rel_number: num(rel, "relfilenode")?,
        },
        fork: ForkNumber::parse(fork)
            .ok_or_else(|| format!("invalid fork {fork:?} (0/main, 1/fsm, 2/vm, 3/init)"))?,
        block: num(blk, "block")?,
    })
}

/// A page read's query: `lsn`, `wait_ms`, `images`, `cache`.
fn parse_read_query(query: Option<&str>) -> Result<(Option<Lsn>, Duration, ReadOptions), String> {
    let lsn = match query_param(query, "lsn")
        .map(|v| v.replace("%2F", "/").replace("%2f", "/").parse::<Lsn>())
    {
        None => None,
        Some(Ok(l)) => Some(l),
        Some(Err(e)) => return Err(e.to_string()),
    };
    let wait = query_param(query, "wait_ms")
        .and_then(|v| v.parse::<u64>().ok())
        .map(|ms| Duration::from_millis(ms).min(MAX_WAIT))
        .unwrap_or(DEFAULT_WAIT);
    // images=none: replay the whole chain from the WAL or the base backup, ignoring
    // generated images and the cache (verification); cache=none: bypass the cache only.
    let opts = if query_param(query, "images") == Some("none") {
        ReadOptions::full_chain()
    } else {
        ReadOptions {
            generated_images: true,
            cache: query_param(query, "cache") != Some("none"),
        }
    };
    Ok((lsn, wait, opts))
}

/// Runs `f` on the blocking pool. A status snapshot takes the page store's locks, which a
/// writer may hold while it reads from the bucket or syncs a file (and std's RwLock holds
/// new readers back while a writer waits): on the service's few runtime threads, which also
/// stream the WAL and send its acknowledgements, a few scrapes would stop replication.
async fn off_runtime<T: Send + 'static>(
    state: &Arc<SharedState>,
    f: impl FnOnce(&SharedState) -> T + Send + 'static,
) -> Result<T, String> {
    let st = Arc::clone(state);
    tokio::task::spawn_blocking(move || f(&st))
        .await
        .map_err(|e| format!("status snapshot failed: {e}"))
}

async fn get_page(state: Arc<SharedState>, key: PageKey, query: Option<&str>) -> HttpResponse {
    let (lsn, wait, opts) = match parse_read_query(query) {
        Ok(q) => q,
        Err(e) => return text(StatusCode::BAD_REQUEST, e),
    };
    let deadline = Instant::now() + wait;
    loop {
        let st = Arc::clone(&state);
        let result = tokio::task::spawn_blocking(move || {
            let pages = st.pages.get().ok_or(())?;
            let started = Instant::now();
            let page = pages.store.reconstruct_with(&key, lsn, opts);
            Ok::<_, ()>((page, started.elapsed()))
        })
        .await;
        let outcome = match result {
            Ok(Ok(r)) => r,
            Ok(Err(())) => {
                return text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the helper is bootstrapping",
                );
            }
            Err(e) => {
                return text(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("page read failed: {e}"),
                );
            }
        };
        let (outcome, elapsed) = outcome;
        match outcome {
            Ok(page) => {
                state.record_read(page.deltas_replayed, elapsed);
                let mut r = response(StatusCode::OK, "application/octet-stream", page.page);
                let shard = state.pages.get().map_or(0, |p| p.store.shard_map().shard);
                for (name, value) in [
                    ("x-fpw-shard", shard.to_string()),
                    ("x-deltas-replayed", page.deltas_replayed.to_string()),
                    ("x-read-us", elapsed.as_micros().to_string()),
                    ("x-start", format!("{} at {}", page.start, page.start_lsn)),
                    ("x-read-phases", page.phases.to_string()),
                    (
                        "x-lsn",
                        lsn.map(|l| l.to_string())
                            .unwrap_or_else(|| "latest".into()),
                    ),
                ] {
                    if let Ok(v) = value.parse() {
                        r.headers_mut().insert(name, v);
                    }
                }
                return r;
            }
            Err(GetPageError::NotYetReceived { .. }) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => {
                let code = match &e {
                    GetPageError::Unknown { .. } | GetPageError::Removed { .. } => {
                        StatusCode::NOT_FOUND
                    }
                    e if e.is_unreadable() => StatusCode::CONFLICT,
                    GetPageError::BeforeRetention { .. }
                    | GetPageError::BeforeConsistent { .. } => StatusCode::GONE,
                    GetPageError::NotYetReceived { .. } => StatusCode::TOO_EARLY,
                    GetPageError::NotOwned { owner, .. } => return not_owned(&e, *owner),
                    _ => StatusCode::INTERNAL_SERVER_ERROR,
                };
                return text(code, e);
            }
        }
    }
}

/// The answer for a page another shard owns, when this helper routes it (`--peers`); None
/// when the local store answers (its own page, no peers, `route=none`, or a request that was
/// already routed once: see [`route`]).
async fn route_page(
    state: &SharedState,
    key: &PageKey,
    page_path: &str,
    query: Option<&str>,
    headers: &hyper::HeaderMap,
) -> Option<HttpResponse> {
    let mode = match route::RouteMode::parse(query_param(query, "route")) {
        Ok(m) => m,
        Err(e) => return Some(text(StatusCode::BAD_REQUEST, e)),
    };
    let router = state.router()?;
    let already_routed = headers.contains_key(route::ROUTED_HEADER);
    let forwarded = route::forwarded_query(query);
    let routed = match route::decide(router.map(), key, already_routed, mode) {
        route::Decision::Local => return None,
        route::Decision::Redirect { owner } => {
            router.redirect(owner, page_path, forwarded.as_deref())
        }
        route::Decision::Proxy { owner } => {
            let wait = match parse_read_query(query) {
                Ok((_, wait, _)) => wait,
                Err(e) => return Some(text(StatusCode::BAD_REQUEST, e)),
            };
            router
                .proxy(owner, page_path, forwarded.as_deref(), wait)
                .await
        }
    };
    let mut r = Response::new(Full::new(routed.body));
    *r.status_mut() = routed.status;
    for (name, value) in routed.headers {
        if let Ok(v) = hyper::header::HeaderValue::from_str(&value) {
            r.headers_mut().insert(name, v);
        }
    }
    Some(r)
}

/// `GET /repair/changed?since=X/Y`: lines of text, one fact each, so that a list of millions
/// of pages streams compactly and parses without a JSON document in memory:
/// ```text
/// fpw_pushdown repair-changed 1
/// end X/Y                      the end of the WAL this helper decoded
/// shard SHARDS SHARD STRIPE    its shard map (1 0 K: unsharded)
/// redo CHECKSUMS WAL_LOG_HINTS the compute's settings its redo follows (0/1)
/// page SPC DB REL FORK BLOCK   one per page, in key order
/// pages N                      the count, last: a cut-off answer is told by its absence
/// ```
async fn repair_changed(state: Arc<SharedState>, query: Option<&str>) -> HttpResponse {
    let since = match query_param(query, "since")
        .map(|v| v.replace("%2F", "/").replace("%2f", "/").parse::<Lsn>())
    {
        Some(Ok(l)) => l,
        Some(Err(e)) => return text(StatusCode::BAD_REQUEST, e),
        None => return text(StatusCode::BAD_REQUEST, "missing ?since=X/Y"),
    };
    let result = tokio::task::spawn_blocking(move || {
        let pages = state.pages.get().ok_or(None)?;
        let store = &pages.store;
        let (end, keys) = crate::store::repair::changed_pages(store, since).map_err(Some)?;
        let map = store.shard_map();
        let ctx = store.redo_context();
        let mut out = String::with_capacity(128 + keys.len() * 32);
        use std::fmt::Write as _;
        let _ = writeln!(out, "{}", crate::store::repair::REPAIR_CHANGED_MAGIC);
        let _ = writeln!(out, "end {end}");
        let _ = writeln!(
            out,
            "shard {} {} {}",
            map.shards, map.shard, map.stripe_blocks
        );
        let _ = writeln!(
            out,
            "redo {} {}",
            u8::from(ctx.data_checksums),
            u8::from(ctx.wal_log_hints)
        );
        for k in &keys {
            let _ = writeln!(
                out,
                "page {} {} {} {} {}",
                k.rel.spc_oid, k.rel.db_oid, k.rel.rel_number, k.fork.0, k.block
            );
        }
        let _ = writeln!(out, "pages {}", keys.len());
        Ok::<_, Option<Lsn>>(out)
    })
    .await;
    match result {
        Ok(Ok(body)) => response(StatusCode::OK, "text/plain; charset=utf-8", body),
        Ok(Err(None)) => text(
            StatusCode::SERVICE_UNAVAILABLE,
            "the helper is bootstrapping",
        ),
        Ok(Err(Some(horizon))) => text(
            StatusCode::GONE,
            format!(
                "{since} is before the start of the helper's history ({horizon}): the pages \
                 changed since then are not all known"
            ),
        ),
        Err(e) => text(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("listing failed: {e}"),
        ),
    }
}

/// `/threshold/{spc}/{db}/{rel}?value=N`: the relation and the new threshold (None: the
/// default).
fn parse_threshold(
    rest: &str,
    query: Option<&str>,
) -> Result<(RelFileLocator, Option<u32>), &'static str> {
    let parts: Vec<u32> = rest.split('/').filter_map(|p| p.parse().ok()).collect();
    let [spc, db, rel] = parts.as_slice() else {
        return Err("expected /threshold/{spc}/{db}/{rel}?value=N");
    };
    let rel = RelFileLocator {
        spc_oid: *spc,
        db_oid: *db,
        rel_number: *rel,
    };
    let value = match query_param(query, "value").map(str::parse::<u32>) {
        None => None,
        Some(Ok(v)) if v > 0 => Some(v),
        Some(_) => return Err("value must be a positive integer"),
    };
    Ok((rel, value))
}

fn set_threshold(state: &SharedState, rest: &str, query: Option<&str>) -> HttpResponse {
    let Some(pages) = state.pages.get() else {
        return text(
            StatusCode::SERVICE_UNAVAILABLE,
            "the helper is bootstrapping",
        );
    };
    let (rel, value) = match parse_threshold(rest, query) {
        Ok(t) => t,
        Err(e) => return text(StatusCode::BAD_REQUEST, e),
    };
    pages.imagegen.policy.set_override(rel, value);
    text(
        StatusCode::OK,
        format!(
            "threshold of {rel}: {}",
            value
                .map(|v| v.to_string())
                .unwrap_or_else(|| "default".into())
        ),
    )
}

/// How a connection came in, hence what its requests must show ([`access`]).
#[derive(Clone)]
pub(crate) enum Gate {
    /// The Unix socket: its file permissions let only the helper's OS user connect.
    Socket,
    /// TCP: token, Host and Origin checked on every request.
    Tcp(Arc<access::TcpAccess>),
}

async fn handle(
    req: Request<Incoming>,
    state: Arc<SharedState>,
    gate: Gate,
) -> Result<HttpResponse, Infallible> {
    if let Gate::Tcp(a) = &gate
        && let Err(refusal) = access::check_tcp(a, req.method(), req.uri(), req.headers())
    {
        log::debug!(
            "API: refused {} {}: {}",
            req.method(),
            req.uri().path(),
            refusal.message
        );
        let mut r = text(refusal.status, refusal.message);
        if refusal.status == StatusCode::UNAUTHORIZED {
            r.headers_mut().insert(
                hyper::header::WWW_AUTHENTICATE,
                hyper::header::HeaderValue::from_static("Bearer"),
            );
        }
        return Ok(r);
    }
    let path = req.uri().path().to_string();
    let query = req.uri().query().map(str::to_string);
    let query = query.as_deref();
    Ok(match (req.method(), path.as_str()) {
        (&Method::GET, "/status") => {
            match off_runtime(&state, |s| serde_json::to_string_pretty(&s.snapshot())).await {
                Ok(Ok(json)) => response(StatusCode::OK, "application/json", json + "\n"),
                Ok(Err(e)) => text(StatusCode::INTERNAL_SERVER_ERROR, e),
                Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, e),
            }
        }
        (&Method::GET, "/metrics") => match off_runtime(&state, metrics::encode).await {
            Ok(Ok(body)) => response(StatusCode::OK, metrics::CONTENT_TYPE, body),
            Ok(Err(e)) => text(StatusCode::INTERNAL_SERVER_ERROR, e),
            Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, e),
        },
        (&Method::GET, p) if p.starts_with("/page/") => {
            let page_path = &p["/page/".len()..];
            match parse_page_path(page_path) {
                Ok(key) => match route_page(&state, &key, page_path, query, req.headers()).await {
                    Some(routed) => routed,
                    None => get_page(state, key, query).await,
                },
                Err(e) => text(StatusCode::BAD_REQUEST, e),
            }
        }
        (&Method::GET, "/repair/changed") => repair_changed(state, query).await,
        (&Method::POST, "/imagegen/pause" | "/imagegen/resume") => match state.pages.get() {
            Some(p) => {
                let pause = path.ends_with("pause");
                p.imagegen.set_paused(pause);
                text(
                    StatusCode::OK,
                    if pause {
                        "image generation paused"
                    } else {
                        "image generation resumed"
                    },
                )
            }
            None => text(
                StatusCode::SERVICE_UNAVAILABLE,
                "the helper is bootstrapping",
            ),
        },
        (&Method::POST, p) if p.starts_with("/threshold/") => {
            set_threshold(&state, &p["/threshold/".len()..], query)
        }
        (_, "/status" | "/metrics") => text(StatusCode::METHOD_NOT_ALLOWED, "use GET"),
        _ => text(
            StatusCode::NOT_FOUND,
            "unknown path; see /status, /metrics, /page/{spc}/{db}/{rel}/{fork}/{blk}",
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_paths() {
        let k = parse_page_path("1663/5/16384/vm/7").unwrap();
        assert_eq!(
            (
                k.rel.spc_oid,
                k.rel.db_oid,
                k.rel.rel_number,
                k.fork.0,
                k.block
            ),
            (1663, 5, 16384, 2, 7)
        );
        assert_eq!(parse_page_path("1663/5/16384/0/7").unwrap().fork.0, 0);
        assert!(parse_page_path("1663/5/16384/bogus/7").is_err());
        assert!(parse_page_path("1663/5/16384/main").is_err());
        assert!(parse_page_path("x/5/16384/main/1").is_err());
        assert_eq!(query_param(Some("lsn=0/1&wait_ms=5"), "wait_ms"), Some("5"));
        let (lsn, wait, _) = parse_read_query(Some("lsn=1%2F20&wait_ms=99999999")).unwrap();
        assert_eq!((lsn, wait), (Some(Lsn(0x1_0000_0020)), MAX_WAIT));
        assert!(parse_read_query(Some("lsn=zz")).is_err());
        assert_eq!(
            parse_threshold("1663/5/16384", Some("value=7")).unwrap().1,
            Some(7)
        );
        assert!(parse_threshold("1663/5", None).is_err());
        assert!(parse_threshold("1663/5/1", Some("value=0")).is_err());
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(10_000))]

        /// Paths and queries as a client may send them: typed errors, no panic.
        #[test]
        fn fuzz_path_and_query_parsing(
            path in "[0-9a-z/%.-]{0,40}|([0-9]{1,12}/){0,6}(main|fsm|vm|init|[0-9]{1,3})?",
            query in proptest::option::of("[a-z_]{0,7}(=[0-9a-zA-Z/%.-]{0,20})?(&[a-z_]{0,7}=[0-9A-F/%]{0,20}){0,4}"),
        ) {
            let _ = parse_page_path(&path);
            let _ = parse_threshold(&path, query.as_deref());
            let _ = parse_read_query(query.as_deref());
            let _ = route::forwarded_query(query.as_deref());
            let _ = route::RouteMode::parse(query_param(query.as_deref(), "route"));
        }
    }
}
