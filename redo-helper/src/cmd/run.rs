//! `redo-helper run`: bootstrap from BASE_BACKUP once, then stream WAL from the slot into the
//! archive, fsync before acknowledging, decode what is durable into the page index, queue
//! pages for image generation, and reconnect with back-off when the connection drops.
//! Serves the HTTP API beside it.

use crate::imagegen::ImageGenerator;
use crate::serve::status::{FpwRange, Pages, RunState, SharedState, SharedStatus};
use crate::store::StoreError;
use crate::store::archive::{ArchiveError, WalArchive};
use crate::store::base::BaseFiles;
use crate::store::ingest::{Ingest, rebuild};
use crate::store::lock::DataDirLock;
use crate::store::meta::HelperMeta;
use crate::store::offline::{
    archive_dir, load_retention, note_generated_images, open_archive, open_store,
};
use crate::store::page_store::PageStore;
use crate::store::retention::{Retain, Retention};
use crate::stream::base_backup::{BaseBackupError, run_base_backup};
use crate::stream::connection::{ConnectionError, PgConnection};
use crate::stream::conninfo::{ConnInfo, PasswordSource};
use crate::stream::replication::{ServerStreamMessage, StreamEvent, standby_status_update};
use crate::stream::server_version::ServerVersionError;
use crate::sync::read;
use crate::wal::block::PageKey;
use crate::wal::page::Lsn;
use std::net::SocketAddr;
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
    /// Loopback address for /status and /metrics (e.g. 127.0.0.1:7432).
    #[arg(long, value_name = "ADDR:PORT")]
    listen: Option<std::net::SocketAddr>,
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
    #[arg(long, value_name = "SIZE", default_value = "64MB", value_parser = parse_disk_reserve)]
    disk_reserve: u64,
    /// How often retention checks whether the horizon can move, in milliseconds.
    #[arg(long, default_value_t = 10_000, hide = true)]
    retention_interval_ms: u64,
    /// Entries per image file (0: the default; tests use small files).
    #[arg(long, default_value_t = 0, hide = true)]
    image_file_entries: u64,
}

/// `--disk-reserve`: a size, in `--retain`'s units.
fn parse_disk_reserve(s: &str) -> Result<u64, String> {
    match s.parse::<crate::store::retention::Retain>() {
        Ok(crate::store::retention::Retain::Bytes(n)) => Ok(n),
        _ => Err(format!("expected a size such as 64MB or 0, not {s:?}")),
    }
}

/// Runs the helper until an error a retry cannot fix.
pub fn main(args: RunArgs) -> ExitCode {
    set_nice(args.nice);
    let conninfo = match ConnInfo::parse(&args.connect) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("redo-helper: {e}");
            return ExitCode::from(2);
        }
    };
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
    run_service(RunOptions {
        conninfo,
        data_dir: args.data_dir,
        slot: args.slot,
        listen: args.listen,
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
    match runtime.block_on(run(opts)) {
        Ok(()) => ExitCode::SUCCESS,
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
    pub listen: Option<SocketAddr>,
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
    /// Bytes of the reserve file retention releases on a full disk.
    pub disk_reserve: u64,
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
    #[error(transparent)]
    ServerVersion(#[from] ServerVersionError),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
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
            ServiceError::ServerVersion(ServerVersionError::Connection(e)) => !e.is_permanent(),
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
    // Before anything is created on the server or copied from it.
    conn.check_server_version().await?;
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
) -> Result<(), ServiceError> {
    let mut conn = PgConnection::connect_replication(&opts.conninfo).await?;
    conn.check_server_version().await?;
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
            if moved || held_ack.is_some() || last_status.elapsed() >= Duration::from_secs(1) {
                let msg = standby_status_update(
                    archive.write_position(),
                    ack,
                    ingest.ingest.decoded_end(),
                    false,
                );
                conn.send_copy_data(&msg).await?;
                last_status = Instant::now();
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

/// The service: never returns Ok; returns an error that retrying cannot fix.
pub(crate) async fn run(opts: RunOptions) -> Result<(), Stopped> {
    run_with_state(opts, Arc::new(SharedState::default())).await
}

pub(crate) async fn run_with_state(
    opts: RunOptions,
    state: Arc<SharedState>,
) -> Result<(), Stopped> {
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
) -> Result<(), ServiceError> {
    let dd = |source| StoreError::DataDir {
        dir: opts.data_dir.clone(),
        source,
    };
    std::fs::create_dir_all(&opts.data_dir).map_err(dd)?;
    let _lock = DataDirLock::acquire(&opts.data_dir)?;
    let status = state.status.clone();
    status.update(|s| {
        s.image_threshold = opts.image_threshold;
        s.state = RunState::Starting;
        s.server = opts.conninfo.to_string();
        s.slot = opts.slot.clone();
    });
    if let Some(addr) = opts.listen {
        let listener = crate::serve::bind(addr)
            .await
            .map_err(|source| ServiceError::Listen { addr, source })?;
        log::info!("status on http://{addr}/status, metrics on http://{addr}/metrics");
        tokio::spawn(crate::serve::serve(listener, Arc::clone(&state)));
    }

    let mut backoff = Duration::from_secs(1);
    let meta = loop {
        match HelperMeta::load(&opts.data_dir)? {
            Some(m) => break m,
            None => match bootstrap(&opts, &status, slot_exists).await {
                Ok(m) => break m,
                Err(e) if e.is_transient() => {
                    log::warn!("bootstrap: {e}; retrying in {}s", backoff.as_secs());
                    status.update(|s| s.last_error = Some(e.to_string()));
                    tokio::time::sleep(backoff).await;
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
    let mut archive = open_archive(&opts.data_dir, &meta)?;
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
    let _workers = imagegen.spawn_workers(opts.imagegen_workers);
    let mut ingest = Indexer {
        ingest,
        imagegen: Arc::clone(&imagegen),
    };
    let retention = match opts.retain {
        Retain::All => None,
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
            r.spawn(opts.retention_interval);
            log::info!(
                "retention: keeping {policy} of history (horizon now {})",
                store.horizon()
            );
            Some(r)
        }
    };
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
        let err = stream_once(&opts, &meta, &mut archive, &mut ingest, &status)
            .await
            .err();
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
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(opts.max_backoff);
    }
}

/// Puts the index's numbers into the status.
fn publish(ingest: &Ingest, status: &SharedStatus) {
    let idx = read(&ingest.store.index);
    let idx = &*idx;
    status.update(|s| {
        s.records_decoded = idx.records;
        s.block_refs_indexed = idx.block_refs;
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
            imagegen.consider(key, h.deltas_since_image, h.unreadable_from.is_some());
        }
    }
}
