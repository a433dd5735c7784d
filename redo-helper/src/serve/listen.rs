//! The API's listeners: the Unix socket (always) and TCP (`--listen`, with a token and, off
//! loopback, TLS), and what keeps them from hurting the rest of the helper.
//!
//! Every connection holds a file descriptor, and the helper needs descriptors for its own
//! work (the archive's next segment, image files, base files): when `accept` once took the
//! last one, opening the next WAL segment failed and the helper stopped. So:
//! - the soft `RLIMIT_NOFILE` is raised to the hard limit at start;
//! - each listener serves at most `--max-connections` connections at a time, and never more
//!   than a quarter of the descriptor limit, so half of it stays for the store whatever
//!   clients do; a connection over the cap is closed at once;
//! - a connection that sends no complete request head within [`HEADER_TIMEOUT`] (idle
//!   keep-alive included: hyper restarts the timer for every request) is closed, as is a TLS
//!   handshake that takes longer than [`HANDSHAKE_TIMEOUT`];
//! - `accept` failing (EMFILE/ENFILE included) is logged at most every few seconds and
//!   retried after a growing pause: it never ends the listener.

use super::access::{ApiToken, TcpAccess, TokenError};
use super::status::SharedState;
use super::{Gate, handle};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::net::SocketAddr;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;

/// Longest wait for a request's head, also between requests of a kept-alive connection.
pub(crate) const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Default of `--max-connections`.
pub(crate) const DEFAULT_MAX_CONNECTIONS: usize = 256;
/// Least often a repeated accept problem is logged.
const LOG_EVERY: Duration = Duration::from_secs(10);

/// How the API is offered (from `run`'s flags).
#[derive(Debug, Clone)]
pub(crate) struct ApiConfig {
    /// `--api-socket` (default `<data-dir>/api.sock`).
    pub socket: PathBuf,
    pub tcp: Option<TcpConfig>,
    /// `--max-connections`, per listener.
    pub max_connections: usize,
}

#[derive(Debug, Clone)]
pub(crate) struct TcpConfig {
    pub addr: SocketAddr,
    /// `--api-token-file` (default `<data-dir>/api.token`).
    pub token_file: PathBuf,
    /// `--metrics-without-token`.
    pub open_status_and_metrics: bool,
    /// `--api-host-name`.
    pub host_names: Vec<String>,
    /// `--tls-cert` and `--tls-key`.
    pub tls: Option<TlsFiles>,
}

#[derive(Debug, Clone)]
pub(crate) struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum ApiError {
    #[error(
        "refusing to listen on {addr} without TLS: the API serves every table's pages; give --tls-cert and --tls-key, or listen on a loopback address"
    )]
    NeedsTls { addr: SocketAddr },
    #[error(transparent)]
    Token(#[from] TokenError),
    #[error("TLS: {path}: {reason}")]
    Tls { path: PathBuf, reason: String },
    #[error(
        "TLS key file {path} is readable by group or others (mode {mode:04o}); fix with: chmod 0600 {path}"
    )]
    KeyExposed { path: PathBuf, mode: u32 },
    #[error("cannot listen on {what}: {source}")]
    Bind {
        what: String,
        source: std::io::Error,
    },
    #[error("{path} exists and is not a socket; remove it or choose another --api-socket")]
    NotASocket { path: PathBuf },
}

/// The bound listeners, ready to serve.
pub(crate) struct BoundApi {
    unix: UnixListener,
    socket: PathBuf,
    tcp: Option<BoundTcp>,
    max_connections: usize,
}

struct BoundTcp {
    listener: TcpListener,
    addr: SocketAddr,
    access: Arc<TcpAccess>,
    tls: Option<TlsAcceptor>,
}

impl BoundApi {
    /// Where it listens, for the log.
    pub(crate) fn describe(&self) -> String {
        let mut s = format!("API on unix:{}", self.socket.display());
        if let Some(t) = &self.tcp {
            let scheme = if t.tls.is_some() { "https" } else { "http" };
            s += &format!(" and {scheme}://{} (bearer token)", t.addr);
            if t.access.open_status_and_metrics {
                s += ", /status and /metrics without token";
            }
        }
        s += &format!(
            "; at most {} connections per listener",
            self.max_connections
        );
        s
    }
}

/// Checks the configuration (TLS off loopback, the token file, the key's mode) and binds.
/// Called before the bootstrap, so a bad configuration stops the helper at once.
pub(crate) async fn bind(cfg: &ApiConfig) -> Result<BoundApi, ApiError> {
    let tcp = match &cfg.tcp {
        None => None,
        Some(t) => {
            if !t.addr.ip().is_loopback() && t.tls.is_none() {
                return Err(ApiError::NeedsTls { addr: t.addr });
            }
            let token = ApiToken::load_or_create(&t.token_file)?;
            let tls = t.tls.as_ref().map(load_tls).transpose()?;
            let listener = TcpListener::bind(t.addr)
                .await
                .map_err(|source| ApiError::Bind {
                    what: t.addr.to_string(),
                    source,
                })?;
            let addr = listener.local_addr().unwrap_or(t.addr);
            Some(BoundTcp {
                listener,
                addr,
                access: Arc::new(TcpAccess::new(
                    token,
                    t.open_status_and_metrics,
                    &t.host_names,
                )),
                tls,
            })
        }
    };
    let unix = bind_socket(&cfg.socket)?;
    let nofile = raise_nofile_limit();
    let max_connections = cap_connections(cfg.max_connections, nofile);
    if max_connections < cfg.max_connections {
        log::warn!(
            "--max-connections {} lowered to {max_connections}: a quarter of the open-file limit ({nofile}) per listener, so the store keeps descriptors",
            cfg.max_connections
        );
    }
    Ok(BoundApi {
        unix,
        socket: cfg.socket.clone(),
        tcp,
        max_connections,
    })
}

/// Binds the Unix socket, 0600 (the data directory around it is 0700). A socket left by a
/// helper that died is removed: the data directory's lock, taken before, says that no
/// helper uses it now.
fn bind_socket(path: &Path) -> Result<UnixListener, ApiError> {
    let bind_err = |source| ApiError::Bind {
        what: format!("unix:{}", path.display()),
        source,
    };
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => std::fs::remove_file(path).map_err(bind_err)?,
        Ok(_) => {
            return Err(ApiError::NotASocket {
                path: path.to_path_buf(),
            });
        }
        Err(_) => {}
    }
    let listener = UnixListener::bind(path).map_err(bind_err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(bind_err)?;
    Ok(listener)
}

/// rustls server configuration from PEM files (ring provider, TLS 1.2 and 1.3).
fn load_tls(files: &TlsFiles) -> Result<TlsAcceptor, ApiError> {
    let tls_err = |path: &Path, reason: String| ApiError::Tls {
        path: path.to_path_buf(),
        reason,
    };
    // As PostgreSQL for ssl_key_file: owner-only, or 0640 when root owns it (a group
    // such as ssl-cert reading a system key).
    let meta = std::fs::metadata(&files.key).map_err(|e| tls_err(&files.key, e.to_string()))?;
    let mode = meta.mode() & 0o7777;
    if (meta.uid() == 0 && mode & 0o037 != 0) || (meta.uid() != 0 && mode & 0o077 != 0) {
        return Err(ApiError::KeyExposed {
            path: files.key.clone(),
            mode,
        });
    }
    let certs = CertificateDer::pem_file_iter(&files.cert)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| tls_err(&files.cert, e.to_string()))?;
    if certs.is_empty() {
        return Err(tls_err(&files.cert, "no certificate in the file".into()));
    }
    // The key's own parse errors never include its bytes.
    let key = PrivateKeyDer::from_pem_file(&files.key)
        .map_err(|e| tls_err(&files.key, format!("no usable private key ({e})")))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| tls_err(&files.cert, e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| tls_err(&files.cert, e.to_string()))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Raises the soft open-file limit to the hard one; returns the soft limit in force.
fn raise_nofile_limit() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return 1024;
    }
    if lim.rlim_cur < lim.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: lim.rlim_max,
            rlim_max: lim.rlim_max,
        };
        // SAFETY: setrlimit reads the struct we own; raising the soft limit up to the hard
        // one needs no privilege.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            lim.rlim_cur = lim.rlim_max;
        }
    }
    lim.rlim_cur
}

/// Connections per listener: at most a quarter of the descriptor limit (two listeners take
/// at most half), at least one.
fn cap_connections(wanted: usize, nofile: u64) -> usize {
    let quarter = usize::try_from(nofile / 4).unwrap_or(usize::MAX);
    wanted.min(quarter).max(1)
}

/// Serves both listeners until the process ends.
pub(crate) fn spawn(api: BoundApi, state: Arc<SharedState>) {
    let max = api.max_connections;
    let unix_state = Arc::clone(&state);
    let unix = Arc::new(api.unix);
    let accept_unix = move || {
        let l = Arc::clone(&unix);
        async move { l.accept().await.map(|(s, _)| s) }
    };
    tokio::spawn(accept_loop(
        "unix socket",
        max,
        accept_unix,
        move |stream| serve_connection(stream, Arc::clone(&unix_state), Gate::Socket),
    ));
    let Some(BoundTcp {
        listener,
        access,
        tls,
        ..
    }) = api.tcp
    else {
        return;
    };
    let listener = Arc::new(listener);
    let accept_tcp = move || {
        let l = Arc::clone(&listener);
        async move { l.accept().await.map(|(s, _)| s) }
    };
    tokio::spawn(accept_loop("tcp", max, accept_tcp, move |stream| {
        let state = Arc::clone(&state);
        let gate = Gate::Tcp(Arc::clone(&access));
        let tls = tls.clone();
        async move {
            let Some(acceptor) = tls else {
                return serve_connection(stream, state, gate).await;
            };
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                Ok(Ok(tls_stream)) => serve_connection(tls_stream, state, gate).await,
                Ok(Err(e)) => log::debug!("API TLS handshake: {e}"),
                Err(_) => log::debug!("API TLS handshake timed out"),
            }
        }
    }));
}

/// Accepts connections forever, each served by its own task while it holds one of `max`
/// permits; over the cap a connection is closed at once.
async fn accept_loop<S, AF, A, C, CF>(what: &'static str, max: usize, mut accept: AF, mut conn: C)
where
    AF: FnMut() -> A,
    A: std::future::Future<Output = std::io::Result<S>>,
    C: FnMut(S) -> CF,
    CF: std::future::Future<Output = ()> + Send + 'static,
{
    let permits = Arc::new(Semaphore::new(max));
    let mut over_cap = RateLimitedLog::default();
    let mut failing = RateLimitedLog::default();
    let mut pause = Duration::from_millis(10);
    loop {
        match accept().await {
            Ok(stream) => {
                pause = Duration::from_millis(10);
                let Ok(permit) = Arc::clone(&permits).try_acquire_owned() else {
                    drop(stream);
                    over_cap.note(|n| {
                        log::warn!(
                            "API {what}: {n} connection(s) closed at once: {max} already open (--max-connections)"
                        )
                    });
                    continue;
                };
                let serve = conn(stream);
                tokio::spawn(async move {
                    serve.await;
                    drop(permit);
                });
            }
            Err(e) => {
                // EMFILE/ENFILE (out of descriptors), ENOBUFS, ECONNABORTED...: none is a
                // reason to stop serving; wait a little for descriptors to come back.
                failing.note(|n| {
                    log::warn!("API {what}: accept failed {n} time(s), last: {e}; retrying")
                });
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(1));
            }
        }
    }
}

async fn serve_connection<I>(io: I, state: Arc<SharedState>, gate: Gate)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let svc = service_fn(move |req| handle(req, Arc::clone(&state), gate.clone()));
    if let Err(e) = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .serve_connection(TokioIo::new(io), svc)
        .await
    {
        log::debug!("API connection: {e}");
    }
}

/// Logs a repeated event at most every [`LOG_EVERY`], with how often it happened.
#[derive(Default)]
struct RateLimitedLog {
    last: Option<Instant>,
    count: u64,
}

impl RateLimitedLog {
    fn note(&mut self, log: impl FnOnce(u64)) {
        self.count += 1;
        if self.last.is_none_or(|t| t.elapsed() >= LOG_EVERY) {
            log(self.count);
            self.count = 0;
            self.last = Some(Instant::now());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_cap_keeps_descriptors_for_the_store() {
        assert_eq!(cap_connections(256, 1_048_576), 256);
        assert_eq!(cap_connections(256, 1024), 256);
        assert_eq!(cap_connections(256, 512), 128);
        assert_eq!(cap_connections(0, 512), 1);
    }
}
