//! `redo-helper run`: bootstrap from BASE_BACKUP once, then stream WAL from the slot into the
//! archive, fsync before acknowledging, decode what is durable into the page index, queue
//! pages for image generation, and reconnect with back-off when the connection drops.
//! Serves the HTTP API beside it.
//!
//! As a service (see docs/operations.md): settings come from flags, `REDO_HELPER_*`
//! variables and `--config FILE` (`cmd::config`); under systemd (`Type=notify`) it sends
//! READY=1 once streaming with consistent pages, STATUS= with its state and lag each second,
//! and WATCHDOG=1 when the unit sets `WatchdogSec=` (`cmd::systemd`). Signals:
//! - SIGTERM, SIGINT: stop cleanly. The stream loop writes and fsyncs what it received,
//!   sends a last standby status update acknowledging exactly what is durable (or the held
//!   position under back-pressure), then CopyDone and Terminate; image workers finish their
//!   page; exit status 0. A second signal exits at once (status 1).
//! - SIGHUP: re-reads the configuration (file, environment, the original flags) and applies
//!   what can change live: `--image-threshold`, `--log-level`, and `--peers` with its token
//!   and CA files (a list that does not parse keeps the old router). Other changes are
//!   logged as needing a restart.
//! - SIGUSR1: hand the data directory over to `redo-helper repair --if-needed` (see
//!   `cmd::repair`): stop cleanly as for SIGTERM, then re-execute itself (same pid, same
//!   arguments), and wait at start-up until the repair is done.

use crate::imagegen::ImageGenerator;
use crate::serve::listen::{ApiConfig, ApiError, TcpConfig, TlsFiles};
use crate::serve::status::{FpwRange, Pages, RunState, SharedState, SharedStatus};
use crate::store::StoreError;
use crate::store::archive::{ArchiveError, WalArchive};
use crate::store::base::BaseFiles;
use crate::store::cache::LocalCache;
use crate::store::ingest::{Ingest, rebuild};
use crate::store::lock::DataDirLock;
use crate::store::meta::HelperMeta;
use crate::store::offline::{
    archive_dir, load_retention, note_generated_images, open_archive, open_store,
};
use crate::store::page_store::PageStore;
use crate::store::remote::{Remote, RemoteError, WalUploader};
use crate::store::retention::{Retain, Retention};
use crate::stream::base_backup::{BaseBackupError, run_base_backup};
use crate::stream::connection::{ConnectionError, PgConnection};
use crate::stream::conninfo::{ConnInfo, PasswordSource};
use crate::stream::replication::{ServerStreamMessage, StreamEvent, standby_status_update};
use crate::sync::read;
use crate::wal::block::PageKey;
use crate::wal::page::Lsn;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(clap::Args)]
pub struct RunArgs {
    /// libpq connection string or URI of the compute (a role with REPLICATION).
    #[arg(long = "connect", value_name = "CONNINFO")]
    connect: String,
    /// The helper's own data directory (created if missing; one helper per directory).
    #[arg(long = "data-dir", value_name = "DIR")]
    data_dir: PathBuf,
    /// Physical replication slot to create (if missing) and stream from.
    #[arg(long, default_value = "fpw_pushdown")]
    slot: String,
    /// The API's Unix socket (default: DATA_DIR/api.sock, 0600 in the 0700 data directory:
    /// only the helper's OS user can connect; no token needed there).
    #[arg(long, value_name = "PATH")]
    api_socket: Option<PathBuf>,
    /// Also serve the API on TCP (e.g. 127.0.0.1:7432). Every request needs
    /// `Authorization: Bearer <token>` (see --api-token-file); an address other than
    /// loopback needs --tls-cert and --tls-key.
    #[arg(long, value_name = "ADDR:PORT")]
    listen: Option<std::net::SocketAddr>,
    /// The TCP listener's bearer token (default: DATA_DIR/api.token; created 0600 with a
    /// random 256-bit token when missing; refused when readable by group or others).
    #[arg(long, value_name = "PATH")]
    api_token_file: Option<PathBuf>,
    /// Let `GET /status` and `GET /metrics` on TCP through without the token (they carry
    /// no table data; for a monitoring system).
    #[arg(long)]
    metrics_without_token: bool,
    /// Host name (besides IP addresses and localhost) clients may put in the `Host` header
    /// of a TCP request (repeatable). Other names are refused against DNS rebinding.
    #[arg(long = "api-host-name", value_name = "NAME")]
    api_host_names: Vec<String>,
    /// PEM certificate chain for TLS on the TCP listener.
    #[arg(long, value_name = "PEM", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key for TLS on the TCP listener (0600, or 0640 owned by root).
    #[arg(long, value_name = "PEM", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Connections served at once per listener (socket, TCP); more are closed at once.
    /// At most a quarter of the open-file limit.
    #[arg(long, default_value_t = crate::serve::listen::DEFAULT_MAX_CONNECTIONS)]
    max_connections: usize,
    /// How often received WAL is fsynced and acknowledged, in milliseconds.
    #[arg(long, default_value_t = 100)]
    flush_interval_ms: u64,
    /// Longest pause between reconnection attempts, in seconds.
    #[arg(long, default_value_t = 30)]
    max_backoff_secs: u64,
    /// Generate a page image when a page has more than this many deltas since its last image.
    #[arg(long, default_value_t = crate::imagegen::DEFAULT_IMAGE_THRESHOLD)]
    image_threshold: u32,
    /// Image generation threads (default: cores - 1, at least 1).
    #[arg(long)]
    imagegen_workers: Option<usize>,
    /// Pages waiting for an image above which flush acknowledgements are held back.
    #[arg(long, default_value_t = 100_000)]
    backpressure_queue: usize,
    /// Recently served pages kept in memory (8 KB each; 0 disables the cache).
    #[arg(long, default_value_t = crate::store::page_store::DEFAULT_CACHE_PAGES)]
    page_cache_pages: usize,
    /// History to keep: WAL segments and page images older than this are removed and
    /// pages can no longer be read before it. A WAL distance (512MB, 4GB, 1TB; no unit:
    /// bytes), a time (30min, 2h, 7d; counted while the helper runs), or `all`.
    #[arg(long, value_name = "SIZE|TIME|all",
          default_value = crate::store::retention::DEFAULT_RETAIN,
          value_parser = crate::store::retention::parse_retain)]
    retain: crate::store::retention::Retain,
    /// CPU priority (nice value, -20..19) of the helper's threads, for a helper that shares
    /// cores with the database: at a positive value it yields to the backends and falls
    /// behind only when the cores have no idle time (then image generation queues and
    /// back-pressure holds acknowledgements). 0 keeps the priority it was started with.
    #[arg(long, default_value_t = DEFAULT_NICE, allow_negative_numbers = true,
          value_parser = clap::value_parser!(i32).range(-20..=19))]
    nice: i32,
    /// Space kept free on the data directory's filesystem for retention: the WAL archive and
    /// image generation stop writing below it (a full disk), so that retention can still
    /// write the images and state that must precede deleting WAL (64MB, 1GB, ...; 0: none).
    /// Retention also holds as much in DATA_DIR/disk-reserve and deletes it when other
    /// writers fill the disk. A minimum: it grows to twice the images retention measures one
    /// WAL segment's step writes (at most an eighth of the filesystem).
    #[arg(long, value_name = "SIZE", default_value = "64MB", value_parser = parse_disk_reserve)]
    disk_reserve: u64,
    /// How often retention checks whether the horizon can move, in milliseconds.
    #[arg(long, default_value_t = 10_000, hide = true)]
    retention_interval_ms: u64,
    /// Entries per image file (0: the default; tests use small files).
    #[arg(long, default_value_t = 0, hide = true)]
    image_file_entries: u64,
    /// Keep the helper's durable state in S3-compatible object storage (s3://BUCKET/PREFIX):
    /// WAL, base pages, images and metadata are uploaded, flush acknowledgements never pass
    /// what the bucket holds, and a helper started on an empty data directory resumes from
    /// the bucket. Credentials and endpoint from the AWS environment (AWS_ACCESS_KEY_ID,
    /// AWS_SECRET_ACCESS_KEY, AWS_REGION, AWS_ENDPOINT_URL; or AWS_PROFILE); a plain-HTTP
    /// endpoint only on loopback.
    #[arg(long, value_name = "s3://BUCKET/PREFIX")]
    object_store: Option<crate::store::remote::ObjectStoreUrl>,
    /// How often new WAL is uploaded to the object store, in milliseconds (sooner when 8 MB
    /// are waiting); acknowledgements to the server lag by about this much.
    #[arg(long, default_value_t = 1000)]
    object_store_interval_ms: u64,
    /// With --object-store: bound the local bytes of the files the bucket already holds
    /// (base files, uploaded image files, uploaded WAL segments) to SIZE (512MB, 4GB, ...):
    /// the least recently read are evicted and read back from the bucket when needed.
    /// Without it the data directory keeps everything.
    #[arg(long, value_name = "SIZE", value_parser = parse_disk_reserve)]
    cache_size: Option<u64>,
    /// Number of helper shards the cluster's pages are split over (needs --object-store:
    /// the WAL is kept once in the bucket). 1: this helper holds every page.
    #[arg(long, default_value_t = 1)]
    shards: u32,
    /// This helper's shard, from 0 to --shards - 1.
    #[arg(long, default_value_t = 0)]
    shard: u32,
    /// Consecutive blocks of a relation kept on one shard.
    #[arg(long, default_value_t = crate::store::shard::DEFAULT_STRIPE_BLOCKS)]
    stripe_blocks: u32,
    /// API base URL of every shard, comma-separated, in shard order (one per --shards; this
    /// helper's own entry is not contacted): a read of a page another shard owns is proxied
    /// to its owner (or redirected with `?route=redirect`) instead of answered 421. https
    /// is verified against --peer-ca-file or the system roots; plain http only on loopback
    /// unless --peer-allow-plain-http.
    #[arg(long, value_name = "URL,URL,...")]
    peers: Option<String>,
    /// Bearer token sent to the peers (default: this helper's --api-token-file, i.e. one
    /// token shared by the deployment's helpers). Must exist; 0600.
    #[arg(long, value_name = "PATH", requires = "peers")]
    peer_token_file: Option<PathBuf>,
    /// PEM CA certificate(s) that sign the peers' TLS certificates (default: the system
    /// roots).
    #[arg(long, value_name = "PEM", requires = "peers")]
    peer_ca_file: Option<PathBuf>,
    /// Accept plain-http peers that are not on loopback (the token and pages then cross
    /// the network unencrypted: only for a network you trust).
    #[arg(long, requires = "peers")]
    peer_allow_plain_http: bool,
    /// TOML file of settings keyed by these long flag names (`data-dir = "/var/lib/..."`).
    /// Precedence: flag > REDO_HELPER_* environment variable > file > default.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// The helper's log level (off, error, warn, info, debug, trace; default info); SIGHUP
    /// applies a changed value. A set RUST_LOG filters as well.
    #[arg(long, value_name = "LEVEL")]
    log_level: Option<log::LevelFilter>,
    /// Log line format on stderr: `text` (env_logger's) or `json` (one object per line with
    /// ts, level, target and message, for log shippers).
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

/// `run --log-format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// `[2026-01-01T00:00:00Z INFO  redo_helper::cmd::run] message`
    Text,
    /// `{"ts":"2026-01-01T00:00:00.000000Z","level":"INFO","target":"redo_helper::cmd::run","message":"..."}`
    Json,
}

impl RunArgs {
    /// The log level asked for (`--log-level`), if any.
    pub fn log_level(&self) -> Option<log::LevelFilter> {
        self.log_level
    }

    /// The log format chosen on the command line (`main` sets up logging before `run`).
    pub fn log_format(&self) -> LogFormat {
        self.log_format
    }
}

/// How SIGHUP gets the current settings: main.rs parses the original command line again with
/// the environment and the (re-read) configuration file.
pub type Reload = Box<dyn Fn() -> Result<RunArgs, String> + Send + Sync>;
static RELOAD: std::sync::OnceLock<Reload> = std::sync::OnceLock::new();

/// Registers how SIGHUP re-reads the settings (once, before [`main`]).
pub fn set_reload(reload: Reload) {
    let _ = RELOAD.set(reload);
}

/// `--peers` and the files that go with it, checked against the shard count (None: no
/// routing).
fn peer_config(
    args: &RunArgs,
    shard_map: crate::store::shard::ShardMap,
) -> Result<Option<crate::serve::route::PeerConfig>, crate::serve::route::PeerError> {
    let Some(list) = &args.peers else {
        return Ok(None);
    };
    let urls =
        crate::serve::route::parse_peers(list, shard_map.shards, args.peer_allow_plain_http)?;
    Ok(Some(crate::serve::route::PeerConfig {
        urls,
        token_file: args
            .peer_token_file
            .clone()
            .or_else(|| args.api_token_file.clone())
            .unwrap_or_else(|| args.data_dir.join("api.token")),
        ca_file: args.peer_ca_file.clone(),
    }))
}

/// `--disk-reserve`: a size, in `--retain`'s units.
fn parse_disk_reserve(s: &str) -> Result<u64, String> {
    match s.parse::<crate::store::retention::Retain>() {
        Ok(crate::store::retention::Retain::Bytes(n)) => Ok(n),
        _ => Err(format!("expected a size such as 64MB or 0, not {s:?}")),
    }
}

/// Runs the helper until an error a retry cannot fix, or a stop signal.
pub fn main(args: RunArgs) -> ExitCode {
    set_nice(args.nice);
    let conninfo = match ConnInfo::parse(&args.connect) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("redo-helper: {e}");
            return ExitCode::from(2);
        }
    };
    let shard_map =
        match crate::store::shard::ShardMap::new(args.shards, args.shard, args.stripe_blocks) {
            Ok(m) => m,
            Err(e) => {
                eprintln!("redo-helper: {e}");
                return ExitCode::from(2);
            }
        };
    let peers = match peer_config(&args, shard_map) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("redo-helper: {e}");
            return ExitCode::from(2);
        }
    };
    let remote = match args
        .object_store
        .map(crate::store::remote::Remote::from_env)
    {
        None => None,
        Some(Ok(r)) => Some(Arc::new(r.with_shard_map(shard_map))),
        Some(Err(e)) => {
            eprintln!("redo-helper: {e}");
            return ExitCode::from(2);
        }
    };
    if args.cache_size.is_some() && remote.is_none() {
        eprintln!(
            "redo-helper: --cache-size needs --object-store: only files the bucket holds can be evicted"
        );
        return ExitCode::from(2);
    }
    if conninfo.password_source == Some(PasswordSource::ConnString) {
        log::warn!(
            "the --connect connection string holds a password: every local user can read it in \
             `ps`; put it in ~/.pgpass (mode 0600) or a file named by PGPASSFILE instead"
        );
    }
    let workers = args.imagegen_workers.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get().saturating_sub(1))
            .unwrap_or(1)
            .max(1)
    });
    let api = ApiConfig {
        socket: args
            .api_socket
            .unwrap_or_else(|| args.data_dir.join("api.sock")),
        tcp: args.listen.map(|addr| TcpConfig {
            addr,
            token_file: args
                .api_token_file
                .clone()
                .unwrap_or_else(|| args.data_dir.join("api.token")),
            open_status_and_metrics: args.metrics_without_token,
            host_names: args.api_host_names.clone(),
            tls: args
                .tls_cert
                .clone()
                .zip(args.tls_key.clone())
                .map(|(cert, key)| TlsFiles { cert, key }),
        }),
        max_connections: args.max_connections,
    };
    run_service(RunOptions {
        conninfo,
        data_dir: args.data_dir,
        slot: args.slot,
        api,
        flush_interval: std::time::Duration::from_millis(args.flush_interval_ms.max(1)),
        flush_bytes: 4 << 20,
        max_backoff: std::time::Duration::from_secs(args.max_backoff_secs.max(1)),
        image_threshold: args.image_threshold.max(1),
        imagegen_workers: workers,
        backpressure_depth: args.backpressure_queue,
        cache_pages: args.page_cache_pages,
        retain: args.retain,
        retention_interval: std::time::Duration::from_millis(args.retention_interval_ms.max(100)),
        image_file_entries: args.image_file_entries,
        disk_reserve: args.disk_reserve,
        remote,
        upload_interval: Duration::from_millis(args.object_store_interval_ms.max(10)),
        cache_size: args.cache_size,
        shard_map,
        peers,
        stop: tokio::sync::watch::channel(Stop::Running).1,
    })
}

/// Default `--nice`: the priority the helper was started with. Measured beside PostgreSQL on
/// 2 cores (pgbench TPC-B, 3 alternating pairs each), 10 and 19 did not beat 0 by more than
/// the runs' noise.
const DEFAULT_NICE: i32 = 0;

/// Sets the calling thread's nice value before any other thread starts (on Linux a nice
/// value belongs to a thread; threads created later inherit it). A failure (raising the
/// priority needs privileges) is reported and the helper goes on at its current priority.
fn set_nice(nice: i32) {
    if nice == 0 {
        return;
    }
    // SAFETY: setpriority has no memory-safety preconditions; `who` 0 is the caller.
    let rc = unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, nice) };
    if rc != 0 {
        eprintln!(
            "redo-helper: cannot set nice {nice}: {}; running at the current priority",
            std::io::Error::last_os_error()
        );
    }
}

/// `redo-helper run`: exits non-zero with the error when something a retry cannot fix
/// happens.
fn run_service(opts: RunOptions) -> ExitCode {
    if opts.shard_map.shards > 1 && opts.remote.is_none() {
        eprintln!(
            "redo-helper: --shards needs --object-store: the shards share the WAL and the base \
             backup through the bucket"
        );
        return ExitCode::from(2);
    }
    crate::store::set_disk_headroom(opts.disk_reserve);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("redo-helper: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let state = Arc::new(SharedState::default());
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(Stop::Running);
    let opts = RunOptions {
        stop: stop_rx,
        ..opts
    };
    let outcome = runtime.block_on(async {
        tokio::spawn(handle_signals(stop_tx, Arc::clone(&state)));
        tokio::spawn(notify_service_manager(Arc::clone(&state)));
        run_with_state(opts, state).await
    });
    // Threads still blocked in the runtime (the API server) are not waited for.
    runtime.shutdown_timeout(Duration::from_secs(1));
    match outcome {
        Ok(Stop::HandOver) => reexec(),
        Ok(_) => {
            log::info!("stopped");
            ExitCode::SUCCESS
        }
        Err(Stopped { error, slot }) => {
            log::error!("{error}");
            eprintln!("redo-helper: {error}");
            if let Some(slot) = slot {
                // The slot keeps WAL on the primary for as long as it exists: a helper
                // that is not coming back must not leave it behind unnoticed.
                eprintln!(
                    "redo-helper: the physical replication slot \"{slot}\" makes the primary keep \
                     its WAL until the helper streams again; if this helper will not be restarted, \
                     drop it on the primary with:\n    {}",
                    drop_slot_sql(&slot)
                );
            }
            ExitCode::FAILURE
        }
    }
}

/// The SQL that drops the helper's slot, the name quoted as a string literal.
pub(crate) fn drop_slot_sql(slot: &str) -> String {
    format!(
        "SELECT pg_drop_replication_slot('{}');",
        slot.replace('\'', "''")
    )
}

/// Why the service stopped for good, and the slot it leaves on the server (it was created,
/// or found, by this helper).
#[derive(Debug)]
pub(crate) struct Stopped {
    pub error: ServiceError,
    pub slot: Option<String>,
}

#[derive(Debug, Clone)]
pub(crate) struct RunOptions {
    pub conninfo: ConnInfo,
    pub data_dir: PathBuf,
    pub slot: String,
    /// The API's listeners.
    pub api: ApiConfig,
    /// How often buffered WAL is fsynced and acknowledged.
    pub flush_interval: Duration,
    /// Flush as soon as this many bytes are waiting.
    pub flush_bytes: u64,
    /// Longest wait between reconnection attempts.
    pub max_backoff: Duration,
    /// Deltas since a page's last image above which an image is generated.
    pub image_threshold: u32,
    pub imagegen_workers: usize,
    /// Image queue depth above which flush acknowledgements are held back.
    pub backpressure_depth: usize,
    /// Bound of the cache of recently served pages, in pages (0: no cache).
    pub cache_pages: usize,
    /// How much history (WAL segments, images) is kept.
    pub retain: Retain,
    /// How often the retention pass checks whether the horizon can move.
    pub retention_interval: Duration,
    /// Entries per image file (tests use small files to exercise compaction).
    pub image_file_entries: u64,
    /// Free space (bytes) the archive and image generation leave on the data directory's
    /// filesystem for retention's own writes (`--disk-reserve`; a headroom, not a file).
    pub disk_reserve: u64,
    /// The object store holding the durable state (`--object-store`), if any.
    pub remote: Option<Arc<Remote>>,
    /// How often new WAL is uploaded to it.
    pub upload_interval: Duration,
    /// Bound of the local copies of what the bucket holds (`--cache-size`), if any.
    pub cache_size: Option<u64>,
    /// Which pages this helper owns (`--shards`, `--shard`, `--stripe-blocks`).
    pub shard_map: crate::store::shard::ShardMap,
    /// Routing of other shards' pages to their owners (`--peers`), if asked for.
    pub peers: Option<crate::serve::route::PeerConfig>,
    /// Set by the signal handlers: the service stops (or hands over) when it changes.
    pub stop: tokio::sync::watch::Receiver<Stop>,
}

/// What the signal handlers ask of the service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stop {
    Running,
    /// SIGTERM, SIGINT: stop cleanly and exit 0.
    Terminate,
    /// SIGUSR1: stop cleanly, then re-execute and wait for the repair to finish.
    HandOver,
}

/// True once a stop was asked for; waits for it otherwise (for `select!`).
async fn stop_requested(stop: &mut tokio::sync::watch::Receiver<Stop>) -> Stop {
    loop {
        let now = *stop.borrow_and_update();
        if now != Stop::Running {
            return now;
        }
        if stop.changed().await.is_err() {
            // The sender is gone (tests without signal handlers): never stop.
            std::future::pending::<()>().await;
        }
    }
}

/// SIGTERM/SIGINT stop, SIGHUP reloads, SIGUSR1 hands the data directory over.
async fn handle_signals(stop: tokio::sync::watch::Sender<Stop>, state: Arc<SharedState>) {
    use tokio::signal::unix::{SignalKind, signal};
    let (mut term, mut int, mut hup, mut usr1) = match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::hangup()),
        signal(SignalKind::user_defined1()),
    ) {
        (Ok(a), Ok(b), Ok(c), Ok(d)) => (a, b, c, d),
        _ => {
            log::error!("cannot install signal handlers: SIGTERM will not stop cleanly");
            return;
        }
    };
    loop {
        let asked = tokio::select! {
            _ = term.recv() => Stop::Terminate,
            _ = int.recv() => Stop::Terminate,
            _ = usr1.recv() => Stop::HandOver,
            _ = hup.recv() => {
                reload(&state);
                continue;
            }
        };
        if *stop.borrow() != Stop::Running {
            log::warn!("second stop signal: exiting now");
            std::process::exit(1);
        }
        let notifier = crate::cmd::systemd::Notifier::from_env();
        match asked {
            Stop::HandOver => {
                log::info!("SIGUSR1: handing the data directory over to a repair");
                // Not STOPPING=1: systemd would then wait for the process to exit and kill
                // it after TimeoutStopSec, while it re-executes itself and goes on.
                if let Some(n) = &notifier {
                    n.notify(&["STATUS=handing the data directory over to a repair"]);
                }
            }
            _ => {
                log::info!("stop signal: flushing, acknowledging and stopping");
                if let Some(n) = &notifier {
                    n.notify(&["STOPPING=1", "STATUS=stopping"]);
                }
            }
        }
        stop.send_replace(asked);
    }
}

/// SIGHUP: applies the settings that can change while running.
fn reload(state: &SharedState) {
    let Some(get) = RELOAD.get() else {
        log::warn!("SIGHUP: no configuration to reload");
        return;
    };
    let args = match get() {
        Ok(a) => a,
        Err(e) => {
            log::error!("SIGHUP: configuration not reloaded: {e}");
            return;
        }
    };
    // main.rs's logging leaves the helper's own level to log::max_level (see init_logging).
    if let Some(level) = args.log_level {
        log::set_max_level(level);
    }
    let threshold = args.image_threshold.max(1);
    if let Some(p) = state.pages.get() {
        p.imagegen.set_default_threshold(threshold);
    }
    state.status.update(|s| s.image_threshold = threshold);
    reload_peers(state, &args);
    log::info!(
        "SIGHUP: configuration reloaded (image threshold {threshold}, log level {}, peers); other settings take effect at restart",
        args.log_level
            .map_or_else(|| "unchanged".to_owned(), |l| l.to_string())
    );
}

/// SIGHUP: `--peers` (and its token and CA files) read anew, for this helper's shard map
/// (`--shards` and `--shard` take effect at restart only: every shard must agree on them).
/// A list that does not parse, or whose token or CA file cannot be read, keeps the router
/// in force: routing goes on to the old peers rather than stop. Reads already routed
/// finish with the router they started with.
fn reload_peers(state: &SharedState, args: &RunArgs) {
    let map = state.status.snapshot().shard;
    let new = peer_config(args, map).and_then(|cfg| {
        cfg.map(|c| crate::serve::route::Router::new(map, &c))
            .transpose()
    });
    let new = match new {
        Ok(r) => r,
        Err(e) => {
            log::error!("SIGHUP: --peers not reloaded, routing as before: {e}");
            return;
        }
    };
    let mut slot = crate::sync::write(&state.router);
    match new {
        Some(mut r) => {
            if let Some(old) = slot.as_ref() {
                r = r.with_metrics(Arc::clone(&old.metrics));
            }
            log::info!(
                "SIGHUP: routing reads of other shards' pages to {}",
                r.describe_peers()
            );
            *slot = Some(Arc::new(r));
        }
        None => {
            if slot.take().is_some() {
                log::info!("SIGHUP: no --peers any more: routing to other shards is off");
            }
        }
    }
}

/// READY=1 once streaming with consistent pages, STATUS= each second, WATCHDOG=1 at half
/// the watchdog timeout: for `Type=notify` units (nothing without `$NOTIFY_SOCKET`).
async fn notify_service_manager(state: Arc<SharedState>) {
    let Some(notifier) = crate::cmd::systemd::Notifier::from_env() else {
        return;
    };
    let watchdog = crate::cmd::systemd::watchdog_interval();
    let period = watchdog.map_or(Duration::from_secs(1), |w| w.min(Duration::from_secs(1)));
    let mut ticker = tokio::time::interval(period);
    let mut ready = false;
    loop {
        ticker.tick().await;
        let s = state.status.snapshot();
        let state_name = serde_json::to_value(s.state)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_else(|| format!("{:?}", s.state));
        let line = crate::cmd::systemd::status_line(
            &state_name,
            s.lag_bytes,
            s.flush_lsn.map(|l| l.to_string()),
        );
        let mut msg = vec![line.as_str()];
        if !ready && s.state == RunState::Streaming && s.consistent {
            ready = true;
            log::info!("ready: streaming with consistent pages");
            msg.push("READY=1");
        }
        if watchdog.is_some() {
            msg.push("WATCHDOG=1");
        }
        notifier.notify(&msg);
    }
}

/// After a hand-over: the same program with the same arguments and environment, in this
/// process (systemd keeps tracking the same pid). Our descriptors are close-on-exec, so the
/// data directory's lock is released; the new image waits for the repair (see
/// `store::lock`).
fn reexec() -> ExitCode {
    use std::os::unix::process::CommandExt;
    let exe = std::path::Path::new("/proc/self/exe");
    let args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    let err = std::process::Command::new(exe).args(args).exec();
    eprintln!("redo-helper: cannot re-execute after the hand-over: {err}");
    ExitCode::FAILURE
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum ServiceError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Connection(#[from] ConnectionError),
    #[error("bootstrap failed: {0}")]
    BaseBackup(#[from] BaseBackupError),
    #[error(
        "the server is a different cluster: system identifier {server}, but {dir} follows {ours}"
    )]
    WrongCluster {
        server: u64,
        ours: u64,
        dir: PathBuf,
    },
    #[error(
        "timeline switch: the server is on timeline {server}, the archive follows timeline {ours}; following a promotion is not supported (re-bootstrap into a new data directory)"
    )]
    Timeline { server: u32, ours: u32 },
    #[error("{0}")]
    Version(#[from] crate::wal::VersionError),
    #[error(
        "the server runs {server}, but {dir} follows {ours} (re-bootstrap into a new data directory after a major upgrade)"
    )]
    WrongVersion {
        server: crate::wal::PgVersion,
        ours: crate::wal::PgVersion,
        dir: PathBuf,
    },
    #[error(transparent)]
    Api(#[from] ApiError),
    #[error(transparent)]
    Peers(#[from] crate::serve::route::PeerError),
}

/// The store's own errors, raised directly by `run`'s steps.
impl From<ArchiveError> for ServiceError {
    fn from(e: ArchiveError) -> Self {
        ServiceError::Store(e.into())
    }
}

impl From<crate::store::meta::MetaError> for ServiceError {
    fn from(e: crate::store::meta::MetaError) -> Self {
        ServiceError::Store(e.into())
    }
}

impl From<RemoteError> for ServiceError {
    fn from(e: RemoteError) -> Self {
        ServiceError::Store(e.into())
    }
}

impl From<crate::store::lock::LockError> for ServiceError {
    fn from(e: crate::store::lock::LockError) -> Self {
        ServiceError::Store(e.into())
    }
}

impl ServiceError {
    /// Failures a retry can fix: the network, a server restart, a full disk, a busy slot.
    pub(crate) fn is_transient(&self) -> bool {
        match self {
            ServiceError::Connection(e) => !e.is_permanent(),
            ServiceError::Store(StoreError::Archive(e)) => e.is_disk_full(),
            ServiceError::BaseBackup(BaseBackupError::Connection(e)) => !e.is_permanent(),
            // The object store is down or unreachable: its own client retried already.
            ServiceError::Store(StoreError::Remote(
                RemoteError::Request { .. } | RemoteError::Runtime,
            )) => true,
            _ => false,
        }
    }
}

/// Runs blocking file work (fsync, reads) without stalling the runtime's other tasks.
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

async fn bootstrap(
    opts: &RunOptions,
    status: &SharedStatus,
    slot_exists: &mut bool,
) -> Result<HelperMeta, ServiceError> {
    status.update(|s| s.state = RunState::Bootstrapping);
    let mut conn = PgConnection::connect_replication(&opts.conninfo).await?;
    // A version whose WAL the helper cannot read is refused before the slot exists, so
    // nothing is left holding WAL on the server.
    let pg_version = conn.server_version()?;
    let sys = conn.identify_system().await?;
    let segment_size = conn.wal_segment_size().await?;
    // Hint-bit logging changes what some redo does to page LSNs (XLogHintBitIsNeeded).
    let data_checksums = conn.show_bool("data_checksums").await?;
    let wal_log_hints = conn.show_bool("wal_log_hints").await?;
    // Reserve WAL before the backup starts, so every byte from its start LSN is retained.
    if conn.create_physical_slot_if_missing(&opts.slot).await? {
        log::info!("created physical replication slot \"{}\"", opts.slot);
    }
    *slot_exists = true;
    let base_dir = opts.data_dir.join("base");
    let tmp_dir = opts.data_dir.join("base.tmp");
    let _ = std::fs::remove_dir_all(&tmp_dir);
    let base = BaseFiles::new(tmp_dir.clone());
    log::info!(
        "bootstrapping from BASE_BACKUP of {} (system {}, timeline {})",
        opts.conninfo,
        sys.system_identifier,
        sys.timeline
    );
    let started = Instant::now();
    let result = run_base_backup(&mut conn, &base, "fpw_pushdown redo-helper").await?;
    log::info!(
        "base backup done in {:.1}s: {} relation files, {} MB, WAL {}..{}",
        started.elapsed().as_secs_f64(),
        result.relation_files,
        result.bytes >> 20,
        result.start_lsn,
        result.end_lsn
    );
    conn.terminate().await;
    let dd = |source| StoreError::DataDir {
        dir: opts.data_dir.clone(),
        source,
    };
    let _ = std::fs::remove_dir_all(&base_dir);
    std::fs::rename(&tmp_dir, &base_dir).map_err(dd)?;
    crate::store::sync_dir(&opts.data_dir).map_err(dd)?;
    // helper.json is written last: its presence means the bootstrap is complete.
    let meta = HelperMeta {
        system_identifier: sys.system_identifier,
        timeline: result.timeline,
        segment_size,
        slot: opts.slot.clone(),
        backup_start_lsn: result.start_lsn.to_string(),
        backup_end_lsn: result.end_lsn.to_string(),
        created_unix: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
        data_checksums,
        wal_log_hints,
        pg_version,
    };
    meta.store(&opts.data_dir)?;
    Ok(meta)
}

/// One replication session: connect, check identity, stream until the connection ends.
async fn stream_once(
    opts: &RunOptions,
    meta: &HelperMeta,
    archive: &mut WalArchive,
    ingest: &mut Indexer,
    status: &SharedStatus,
    uploader: Option<&WalUploader>,
) -> Result<(), ServiceError> {
    let mut stop = opts.stop.clone();
    let mut conn = tokio::select! {
        c = PgConnection::connect_replication(&opts.conninfo) => c?,
        _ = stop_requested(&mut stop) => return Ok(()),
    };
    let server_version = conn.server_version()?;
    if server_version != meta.pg_version {
        return Err(ServiceError::WrongVersion {
            server: server_version,
            ours: meta.pg_version,
            dir: opts.data_dir.clone(),
        });
    }
    let sys = conn.identify_system().await?;
    if sys.system_identifier != meta.system_identifier {
        return Err(ServiceError::WrongCluster {
            server: sys.system_identifier,
            ours: meta.system_identifier,
            dir: opts.data_dir.clone(),
        });
    }
    if sys.timeline != meta.timeline {
        return Err(ServiceError::Timeline {
            server: sys.timeline,
            ours: meta.timeline,
        });
    }
    conn.create_physical_slot_if_missing(&opts.slot).await?;
    let start = archive.flush_position();
    conn.start_replication(&opts.slot, start, meta.timeline)
        .await?;
    log::info!("streaming from {start} (slot \"{}\")", opts.slot);
    let consistent = ingest.ingest.decoded_end() >= ingest.ingest.backup_end;
    status.update(|s| {
        s.state = if consistent {
            RunState::Streaming
        } else {
            RunState::Bootstrapping
        }
    });
    // While image generation is behind, the flush position reported to the server stays here.
    let mut held_ack: Option<Lsn> = None;
    let mut last_ack: Option<Lsn> = None;

    let mut rx = Received {
        pending: Vec::new(),
        server_end: start,
        bytes: 0,
        ended: false,
    };
    let mut last_status = Instant::now() - Duration::from_secs(60);
    let mut ticker = tokio::time::interval(opts.flush_interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The runtime is woken for the stream only once this much has queued in the socket (or
    // at the next flush tick, which reads whatever is there): not once per WAL flush of
    // the server. Half of a flush's worth, at most 1 MB.
    conn.set_receive_low_water((opts.flush_bytes / 2).clamp(1, 1 << 20) as usize);

    loop {
        let mut reply_now = false;
        tokio::select! {
            ev = conn.next_stream_event() => {
                reply_now |= rx.take(ev?, archive.write_position(), opts.flush_bytes)?;
            }
            _ = stop_requested(&mut stop) => {
                flush_and_decode(archive, ingest, &mut rx.pending, status)?;
                let ack = held_ack.unwrap_or(archive.flush_position());
                // As every acknowledgement: never past what the bucket holds.
                let ack = uploader.map_or(ack, |u| ack.min(u.uploaded()));
                say_goodbye(conn, archive.write_position(), ack, ingest.ingest.decoded_end()).await;
                log::info!(
                    "replication stopped: {} durable, acknowledged {ack}",
                    archive.flush_position()
                );
                return Ok(());
            }
            _ = ticker.tick() => {
                reply_now = true;
                // What arrived below the low-water mark since the last wake-up.
                while let Some(ev) = conn.next_stream_event_now()? {
                    rx.take(ev, archive.write_position(), opts.flush_bytes)?;
                    if rx.ended || rx.pending.len() as u64 >= opts.flush_bytes {
                        break;
                    }
                }
            }
        }
        if rx.bytes > 0 {
            let n = std::mem::take(&mut rx.bytes);
            status.update(|s| s.wal_bytes_received += n);
        }
        let pending = &mut rx.pending;
        let server_end = rx.server_end;
        if rx.ended {
            flush_and_decode(archive, ingest, pending, status)?;
            log::info!(
                "server ended the replication stream at {}",
                archive.flush_position()
            );
            return Ok(());
        }
        if reply_now {
            let flushed_before = archive.flush_position();
            flush_and_decode(archive, ingest, pending, status)?;
            let moved = archive.flush_position() != flushed_before;
            let behind = Some(&ingest.imagegen)
                .filter(|g| g.backpressure())
                .map(|g| g.queue_depth());
            let ack = if let Some(depth) = behind {
                if held_ack.is_none() {
                    log::warn!(
                        "image generation is behind ({} pages queued): holding flush acknowledgements at {}",
                        depth,
                        archive.flush_position()
                    );
                }
                *held_ack.get_or_insert(archive.flush_position())
            } else {
                if held_ack.take().is_some() {
                    log::info!(
                        "image generation caught up: acknowledging {} again",
                        archive.flush_position()
                    );
                }
                archive.flush_position()
            };
            // In object-storage mode the server may recycle only WAL the bucket holds: the
            // slot's restart_lsn is the flush position acknowledged here.
            let ack = match uploader {
                Some(u) => {
                    u.note_flushed(archive.flush_position());
                    ack.min(u.uploaded())
                }
                None => ack,
            };
            if moved
                || held_ack.is_some()
                || last_ack != Some(ack)
                || last_status.elapsed() >= Duration::from_secs(1)
            {
                let msg = standby_status_update(
                    archive.write_position(),
                    ack,
                    ingest.ingest.decoded_end(),
                    false,
                );
                conn.send_copy_data(&msg).await?;
                last_status = Instant::now();
                last_ack = Some(ack);
            }
            let flush = archive.flush_position();
            status.update(|s| {
                s.state = if s.consistent {
                    RunState::Streaming
                } else {
                    RunState::Bootstrapping
                };
                s.write_lsn = Some(archive.write_position());
                s.flush_lsn = Some(flush);
                s.server_wal_end_lsn = Some(server_end);
                s.lag_bytes = server_end.0.saturating_sub(flush.0);
                s.last_error = None;
            });
        }
    }
}

/// Ends a replication session on a stop: the last standby status update (what is durable,
/// or the position held back), CopyDone, the server's end of the copy (its WAL after our
/// acknowledgement is dropped: the next session asks for it again), then Terminate. Errors
/// are only logged: the server also copes with a connection that just closes.
async fn say_goodbye(mut conn: PgConnection, write: Lsn, flush: Lsn, apply: Lsn) {
    // The server's last messages may be fewer bytes than the receive low-water mark.
    conn.set_receive_low_water(1);
    let goodbye = async {
        conn.send_copy_data(&standby_status_update(write, flush, apply, false))
            .await?;
        conn.send_copy_done().await?;
        // The walsender answers CopyDone with its own once it has stopped sending.
        loop {
            if let StreamEvent::Ended = conn.next_stream_event().await? {
                break;
            }
        }
        Ok::<(), ConnectionError>(())
    };
    match tokio::time::timeout(Duration::from_secs(5), goodbye).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => log::warn!("ending the replication session: {e}"),
        Err(_) => log::warn!("ending the replication session: no answer from the server in 5 s"),
    }
    conn.terminate().await;
}

/// What the stream delivered since the last flush.
struct Received {
    /// WAL bytes past the archive's write position, in order. They wait in memory until the
    /// next flush writes, fsyncs and decodes them in one go: a write per message (thousands
    /// a second) cost a system call and a hand-off of the runtime thread each.
    pending: Vec<u8>,
    server_end: Lsn,
    /// Bytes received (for the status), not yet counted.
    bytes: u64,
    ended: bool,
}

impl Received {
    /// Takes one stream event; true when it asks for a flush and reply now (a full batch,
    /// or a keepalive requesting a reply).
    fn take(
        &mut self,
        ev: StreamEvent,
        written: Lsn,
        flush_bytes: u64,
    ) -> Result<bool, ServiceError> {
        match ev {
            StreamEvent::Message(ServerStreamMessage::XLogData {
                start,
                server_end,
                data,
            }) => {
                // Bytes the archive or `pending` already has (a resend after reconnecting)
                // are skipped; a gap is an error.
                let have = written.add(self.pending.len() as u64);
                if start > have {
                    return Err(ArchiveError::Gap {
                        expected: have,
                        got: start,
                    }
                    .into());
                }
                let new_from = (have.0.saturating_sub(start.0) as usize).min(data.len());
                self.pending.extend_from_slice(&data[new_from..]);
                self.server_end = self.server_end.max(server_end);
                self.bytes += data.len() as u64;
                Ok(self.pending.len() as u64 >= flush_bytes)
            }
            StreamEvent::Message(ServerStreamMessage::Keepalive {
                server_end,
                reply_requested,
            }) => {
                self.server_end = self.server_end.max(server_end);
                Ok(reply_requested)
            }
            StreamEvent::Ended => {
                self.ended = true;
                Ok(true)
            }
        }
    }
}

/// fsync the archive, then decode and index the bytes that just became durable.
fn flush_and_decode(
    archive: &mut WalArchive,
    ingest: &mut Indexer,
    pending: &mut Vec<u8>,
    status: &SharedStatus,
) -> Result<(), ServiceError> {
    if pending.is_empty() && archive.write_position() == archive.flush_position() {
        return Ok(());
    }
    blocking(|| -> Result<(), ServiceError> {
        archive.write(archive.write_position(), pending)?;
        archive.flush()?;
        ingest.push(pending)?;
        Ok(())
    })?;
    pending.clear();
    publish(&ingest.ingest, status);
    Ok(())
}

/// The service: returns Ok with the stop asked for by a signal, or an error that retrying
/// cannot fix (with the slot's name once the slot is known to exist on the server).
pub(crate) async fn run_with_state(
    opts: RunOptions,
    state: Arc<SharedState>,
) -> Result<Stop, Stopped> {
    let mut slot_exists = false;
    let slot = opts.slot.clone();
    run_service_loop(opts, state, &mut slot_exists)
        .await
        .map_err(|error| Stopped {
            error,
            slot: slot_exists.then_some(slot),
        })
}

/// `run_with_state`'s work; `slot_exists` is set once the slot is known to be on the server.
async fn run_service_loop(
    opts: RunOptions,
    state: Arc<SharedState>,
    slot_exists: &mut bool,
) -> Result<Stop, ServiceError> {
    let mut stop = opts.stop.clone();
    crate::store::prepare_private_data_dir(&opts.data_dir)?;
    // A repair that was handed the directory (SIGUSR1) is waited for (store::lock).
    let _lock = blocking(|| {
        DataDirLock::acquire_after_repair(&opts.data_dir, |pid| {
            log::info!("waiting for redo-helper repair (pid {pid}) to hand the data directory back")
        })
    })?;
    let status = state.status.clone();
    let _ = state.data_dir.set(opts.data_dir.clone());
    status.update(|s| {
        s.image_threshold = opts.image_threshold;
        s.state = RunState::Starting;
        s.server = opts.conninfo.to_string();
        s.data_dir = opts.data_dir.display().to_string();
        s.slot = opts.slot.clone();
        s.shard = opts.shard_map;
    });
    let api = crate::serve::listen::bind(&opts.api).await?;
    log::info!("{}", api.describe());
    // After bind: the default peer token is the API's own token file, which bind creates.
    if let Some(peers) = &opts.peers
        && state.router().is_none()
    {
        let router = crate::serve::route::Router::new(opts.shard_map, peers)?;
        log::info!(
            "routing reads of other shards' pages to {}",
            router.describe_peers()
        );
        *crate::sync::write(&state.router) = Some(Arc::new(router));
    }
    crate::serve::listen::spawn(api, Arc::clone(&state));

    let mut backoff = Duration::from_secs(1);
    let meta = loop {
        match HelperMeta::load(&opts.data_dir)? {
            Some(m) => break m,
            None => match tokio::select! {
                r = restore_or_bootstrap(&opts, &status, slot_exists) => r,
                // base.tmp is removed by the next bootstrap.
                s = stop_requested(&mut stop) => return Ok(s),
            } {
                Ok(m) => break m,
                Err(e) if e.is_transient() => {
                    log::warn!("bootstrap: {e}; retrying in {}s", backoff.as_secs());
                    status.update(|s| s.last_error = Some(e.to_string()));
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        s = stop_requested(&mut stop) => return Ok(s),
                    }
                    backoff = (backoff * 2).min(opts.max_backoff);
                }
                Err(e) => return Err(e),
            },
        }
    };
    // Bootstrapped (now or before): the slot was created then, and stream_once re-creates
    // it if it went missing.
    *slot_exists = true;
    if meta.slot != opts.slot {
        log::warn!(
            "data directory was bootstrapped with slot \"{}\", now using \"{}\"",
            meta.slot,
            opts.slot
        );
    }
    if let Some(remote) = &opts.remote {
        retry_transient(&opts, &status, "object store", || {
            Ok(remote.ensure_bootstrap(&opts.data_dir, &meta)?)
        })
        .await?;
    }
    status.update(|s| {
        s.system_identifier = Some(meta.system_identifier);
        s.timeline = Some(meta.timeline);
        s.backup_start_lsn = Some(meta.start_lsn());
        s.backup_end_lsn = Some(meta.end_lsn());
    });

    if meta.data_checksums || meta.wal_log_hints {
        log::info!(
            "cluster has data_checksums={} wal_log_hints={}: hint bits are WAL-logged",
            meta.data_checksums,
            meta.wal_log_hints
        );
    }
    // The store opens with the map recorded here (so do `check` and `repair`, offline).
    opts.shard_map
        .store(&opts.data_dir)
        .map_err(|e| StoreError::DataDir {
            dir: opts.data_dir.clone(),
            source: std::io::Error::other(e.to_string()),
        })?;
    let mut archive = open_archive(&opts.data_dir, &meta)?;
    let uploader = match &opts.remote {
        Some(remote) => Some(
            retry_transient(&opts, &status, "object store", || {
                Ok(WalUploader::start(
                    Arc::clone(remote),
                    &archive_dir(&opts.data_dir),
                    &meta,
                    archive.flush_position(),
                    opts.upload_interval,
                )?)
            })
            .await?,
        ),
        None => None,
    };
    // Readers go through the local cache from the store's opening on (evicted files are
    // read back from the bucket).
    let cache = uploader.as_ref().zip(opts.cache_size).map(|(u, limit)| {
        LocalCache::new(
            Arc::clone(u),
            &opts.data_dir,
            limit,
            meta.timeline,
            meta.segment_size,
        )
    });
    crate::store::cache::install(cache.clone());
    let store = open_store(&opts.data_dir, &meta, &archive, opts.image_file_entries)?;
    store.set_cache_pages(opts.cache_pages);
    let rebuild_from = load_retention(&opts.data_dir, &meta, &store)?;
    let imagegen = ImageGenerator::new(
        Arc::clone(&store),
        opts.image_threshold,
        opts.backpressure_depth,
    );
    let mut ingest = Ingest::new(&meta, Arc::clone(&store))?;
    blocking(|| {
        rebuild(&archive, &mut ingest, rebuild_from, |store, touched| {
            queue_images(&imagegen, store, touched)
        })
    })?;
    note_generated_images(&store);
    let workers = imagegen.spawn_workers(opts.imagegen_workers);
    let mut ingest = Indexer {
        ingest,
        imagegen: Arc::clone(&imagegen),
    };
    let retention = match opts.retain {
        Retain::All => {
            // Only retention releases the reserve file: without it none is held.
            crate::store::ballast::remove(&opts.data_dir);
            None
        }
        policy => {
            let r = Retention::new(
                Arc::clone(&store),
                &opts.data_dir,
                &archive_dir(&opts.data_dir),
                meta.timeline,
                meta.segment_size,
                policy,
                meta.end_lsn(),
            );
            if let Some(u) = &uploader {
                r.set_uploader(Arc::clone(u));
            }
            r.spawn(opts.retention_interval);
            log::info!(
                "retention: keeping {policy} of history (horizon now {})",
                store.horizon()
            );
            Some(r)
        }
    };
    if let Some(u) = &uploader {
        // Images the bucket lacks (a crash before their upload, or a data directory that ran
        // without an object store) go up before anything is acknowledged.
        retry_transient(&opts, &status, "object store", || {
            Ok(u.upload_images(&store)?)
        })
        .await?;
        u.spawn_image_uploads(Arc::clone(&store), IMAGE_UPLOAD_INTERVAL);
    }
    if let Some(c) = &cache {
        c.spawn(Arc::clone(&store));
        log::info!(
            "local cache: the files the bucket holds are kept within {} MB",
            opts.cache_size.unwrap_or(0) >> 20
        );
    }
    let _ = state.pages.set(Pages {
        store: Arc::clone(&store),
        imagegen: Arc::clone(&imagegen),
        retention,
    });
    publish(&ingest.ingest, &status);
    let flush = archive.flush_position();
    status.update(|s| {
        s.flush_lsn = Some(flush);
        s.write_lsn = Some(flush);
    });

    backoff = Duration::from_secs(1);
    loop {
        let connected_at = Instant::now();
        let err = stream_once(
            &opts,
            &meta,
            &mut archive,
            &mut ingest,
            &status,
            uploader.as_deref(),
        )
        .await
        .err();
        let asked = *stop.borrow();
        if err.is_none() && asked != Stop::Running {
            return Ok(stop_workers(&imagegen, workers, &store, &status, asked));
        }
        let disk_full =
            matches!(&err, Some(ServiceError::Store(StoreError::Archive(a))) if a.is_disk_full());
        let message = err.as_ref().map(|e| e.to_string());
        if let Some(e) = err {
            if !e.is_transient() {
                status.update(|s| {
                    s.state = RunState::Stopped;
                    s.last_error = Some(e.to_string());
                });
                return Err(e);
            }
            log::warn!("{e}; reconnecting in {}s", backoff.as_secs());
        }
        // Forget unflushed bytes: the next session restarts at the flush position.
        archive = open_archive(&opts.data_dir, &meta)?;
        status.update(|s| {
            s.state = if disk_full {
                RunState::DiskFull
            } else {
                RunState::Reconnecting
            };
            s.reconnects += 1;
            s.last_error = message;
        });
        if connected_at.elapsed() > Duration::from_secs(30) {
            backoff = Duration::from_secs(1);
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            s = stop_requested(&mut stop) => {
                return Ok(stop_workers(&imagegen, workers, &store, &status, s));
            }
        }
        backoff = (backoff * 2).min(opts.max_backoff);
    }
}

/// How often images are uploaded to the object store besides retention's uploads.
const IMAGE_UPLOAD_INTERVAL: Duration = Duration::from_secs(30);

/// In object-storage mode, fills an empty data directory from the bucket when the bucket
/// has a bootstrapped helper; otherwise (or without an object store) bootstraps from
/// BASE_BACKUP.
async fn restore_or_bootstrap(
    opts: &RunOptions,
    status: &SharedStatus,
    slot_exists: &mut bool,
) -> Result<HelperMeta, ServiceError> {
    if let Some(remote) = &opts.remote {
        status.update(|s| s.state = RunState::Bootstrapping);
        if !remote.is_wal_writer() {
            return follow_writer_bootstrap(opts, remote, slot_exists).await;
        }
        if let Some(r) = blocking(|| remote.restore(&opts.data_dir, opts.cache_size.is_some()))? {
            log::info!(
                "restored from object store {} in {:.1}s: {} base files ({} MB), {} image files ({} MB), {} WAL segments ({} MB) up to {}",
                remote.url(),
                r.duration_ms as f64 / 1000.0,
                r.base_files,
                r.base_bytes >> 20,
                r.image_files,
                r.image_bytes >> 20,
                r.wal_segments,
                r.wal_bytes >> 20,
                r.wal_end
            );
            if let Some(meta) = HelperMeta::load(&opts.data_dir)? {
                return Ok(meta);
            }
        }
    }
    bootstrap(opts, status, slot_exists).await
}

/// A shard other than shard 0 never takes a BASE_BACKUP: it creates its own slot first (so
/// that the server keeps the WAL from then on for it too), waits for shard 0 to put a
/// bootstrapped helper into the bucket, and resumes from the bucket as a replacement helper
/// does. The WAL from the bucket's end on is still on the server: this shard's slot was
/// created before the restore, or last acknowledged by an earlier run of this shard, which
/// never acknowledged past the bucket's end of then (design.md, "Shards").
async fn follow_writer_bootstrap(
    opts: &RunOptions,
    remote: &Arc<Remote>,
    slot_exists: &mut bool,
) -> Result<HelperMeta, ServiceError> {
    let mut conn = PgConnection::connect_replication(&opts.conninfo).await?;
    // Refused before the slot exists, as in `bootstrap`.
    conn.server_version()?;
    if conn.create_physical_slot_if_missing(&opts.slot).await? {
        log::info!("created physical replication slot \"{}\"", opts.slot);
    }
    *slot_exists = true;
    conn.terminate().await;
    let started = Instant::now();
    let mut last_log: Option<Instant> = None;
    loop {
        if let Some(r) = blocking(|| remote.restore(&opts.data_dir, opts.cache_size.is_some()))? {
            log::info!(
                "shard {}: resumed from object store {} in {:.1}s: {} base files ({} MB), {} image files, {} WAL segments up to {}",
                opts.shard_map,
                remote.url(),
                r.duration_ms as f64 / 1000.0,
                r.base_files,
                r.base_bytes >> 20,
                r.image_files,
                r.wal_segments,
                r.wal_end
            );
            if let Some(meta) = HelperMeta::load(&opts.data_dir)? {
                return Ok(meta);
            }
        }
        if last_log.is_none_or(|t| t.elapsed() >= Duration::from_secs(10)) {
            log::info!(
                "shard {}: waiting for shard 0 to bootstrap object store {} (no helper.json yet, {}s)",
                opts.shard_map,
                remote.url(),
                started.elapsed().as_secs()
            );
            last_log = Some(Instant::now());
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Runs blocking `step` until it succeeds or fails with an error retrying cannot fix.
async fn retry_transient<T>(
    opts: &RunOptions,
    status: &SharedStatus,
    what: &str,
    mut step: impl FnMut() -> Result<T, ServiceError>,
) -> Result<T, ServiceError> {
    let mut backoff = Duration::from_secs(1);
    loop {
        match blocking(&mut step) {
            Ok(v) => return Ok(v),
            Err(e) if e.is_transient() => {
                log::warn!("{what}: {e}; retrying in {}s", backoff.as_secs());
                status.update(|s| s.last_error = Some(e.to_string()));
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(opts.max_backoff);
            }
            Err(e) => return Err(e),
        }
    }
}

/// The end of a clean stop: image workers finish the page they are on, images are synced.
/// Retention needs no stop: every pass is ordered to survive being cut anywhere.
fn stop_workers(
    imagegen: &ImageGenerator,
    workers: Vec<std::thread::JoinHandle<()>>,
    store: &PageStore,
    status: &SharedStatus,
    asked: Stop,
) -> Stop {
    imagegen.stop();
    blocking(|| {
        for w in workers {
            let _ = w.join();
        }
        if let Err(e) = read(&store.images).sync() {
            log::warn!("syncing page images: {e}");
        }
    });
    status.update(|s| s.state = RunState::Stopped);
    asked
}

/// Puts the index's numbers into the status.
fn publish(ingest: &Ingest, status: &SharedStatus) {
    let idx = read(&ingest.store.index);
    let idx = &*idx;
    status.update(|s| {
        s.records_decoded = idx.records;
        s.block_refs_indexed = idx.block_refs;
        s.block_refs_other_shards = idx.block_refs_other_shards;
        s.pages_indexed = idx.pages() as u64;
        s.fpi_applicable = idx.applicable_images;
        s.fpi_consistency_only = idx.consistency_images;
        s.decoded_lsn = Some(idx.last_record_end);
        s.consistent = idx.last_record_end >= ingest.backup_end;
        s.fpw_modes = idx
            .fpw_modes
            .iter()
            .map(|m| FpwRange {
                from_lsn: m.lsn,
                full_page_writes: m.full_page_writes,
                source: if m.explicit {
                    "FPW_CHANGE"
                } else {
                    "checkpoint"
                },
            })
            .collect();
    });
}

/// Durable WAL on its way into the page index, and the image generator it feeds.
struct Indexer {
    ingest: Ingest,
    imagegen: Arc<ImageGenerator>,
}

impl Indexer {
    /// Decodes and indexes `durable` (fsynced) bytes and queues the pages whose chains went
    /// over the threshold.
    fn push(&mut self, durable: &[u8]) -> Result<(), StoreError> {
        let store = Arc::clone(&self.ingest.store);
        let touched = self.ingest.push_and_index(durable)?;
        queue_images(&self.imagegen, &store, touched);
        Ok(())
    }
}

/// Queues for image generation the pages among `touched` whose chains went over the
/// threshold.
fn queue_images(imagegen: &ImageGenerator, store: &PageStore, touched: &[PageKey]) {
    let idx = read(&store.index);
    for key in touched {
        if let Some(h) = idx.page(key) {
            imagegen.consider(key, h.longest_chain(), h.unreadable_from.is_some());
        }
    }
}
