//! `redo-helper run`: bootstrap from BASE_BACKUP once, then stream WAL from the slot into the
//! archive, fsync before acknowledging, decode what is durable into the page index, and
//! reconnect with back-off when the connection drops.

use crate::imagegen::{ImageGenerator, histogram};
use crate::store::archive::{ArchiveError, WalArchive};
use crate::store::base::BaseFiles;
use crate::store::images::{ImageStore, ImageStoreError};
use crate::store::lock::{DataDirLock, LockError};
use crate::store::meta::{HelperMeta, MetaError};
use crate::store::page_store::PageStore;
use crate::store::retention::{Retain, Retention, RetentionError, RetentionState, RetentionStatus};
use crate::stream::base_backup::{BaseBackupError, run_base_backup};
use crate::stream::connection::{ConnectionError, PgConnection};
use crate::stream::conninfo::ConnInfo;
use crate::stream::replication::{ServerStreamMessage, StreamEvent, standby_status_update};
use crate::wal::WalError;
use crate::wal::page::Lsn;
use crate::wal::reader::{DecoderConfig, WalStreamDecoder};
use crate::wal::record::DecodedRecord;
use hdrhistogram::Histogram;
use serde::Serialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct RunOptions {
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
}

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error(transparent)]
    Lock(#[from] LockError),
    #[error(transparent)]
    Meta(#[from] MetaError),
    #[error(transparent)]
    Connection(#[from] ConnectionError),
    #[error("bootstrap failed: {0}")]
    BaseBackup(#[from] BaseBackupError),
    #[error(transparent)]
    Archive(#[from] ArchiveError),
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
    #[error("WAL decoding failed at {lsn}: {source}")]
    Decode { lsn: Lsn, source: WalError },
    #[error("cannot use data directory {dir}: {source}")]
    DataDir {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Images(#[from] ImageStoreError),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Retention(#[from] RetentionError),
}

impl ServiceError {
    /// Failures a retry can fix: the network, a server restart, a full disk, a busy slot.
    pub fn is_transient(&self) -> bool {
        match self {
            ServiceError::Connection(e) => !e.is_permanent(),
            ServiceError::Archive(e) => e.is_disk_full(),
            ServiceError::BaseBackup(BaseBackupError::Connection(e)) => !e.is_permanent(),
            _ => false,
        }
    }
}

/// A full page image counts as one of these kinds in /status.
#[derive(Debug, Clone, Default, Serialize)]
pub struct FpwRange {
    pub from_lsn: String,
    pub full_page_writes: bool,
    pub source: &'static str,
}

/// What /status and /metrics report.
#[derive(Debug, Clone, Default, Serialize)]
pub struct HelperStatus {
    /// starting, bootstrapping, streaming, reconnecting, disk_full, stopped
    pub state: String,
    pub server: String,
    pub slot: String,
    pub system_identifier: Option<u64>,
    pub timeline: Option<u32>,
    pub backup_start_lsn: Option<String>,
    pub backup_end_lsn: Option<String>,
    /// Base pages are consistent once WAL up to backup_end_lsn is decoded.
    pub consistent: bool,
    pub write_lsn: Option<String>,
    pub flush_lsn: Option<String>,
    pub decoded_lsn: Option<String>,
    pub server_wal_end_lsn: Option<String>,
    /// Server's end of WAL minus what the helper has fsynced.
    pub lag_bytes: u64,
    pub wal_bytes_received: u64,
    pub records_decoded: u64,
    pub block_refs_indexed: u64,
    pub pages_indexed: u64,
    pub fpi_applicable: u64,
    pub fpi_consistency_only: u64,
    pub fpw_modes: Vec<FpwRange>,
    pub reconnects: u64,
    pub last_error: Option<String>,
    pub image_threshold: u32,
    pub imagegen_paused: bool,
    pub imagegen_queue_depth: usize,
    pub images_generated: u64,
    pub image_failures: u64,
    pub images_stored: u64,
    pub image_bytes: u64,
    pub image_lag_bytes: u64,
    pub unreadable_pages: u64,
    /// Flush acknowledgements are held back because image generation is behind.
    pub backpressure: bool,
    pub deltas_per_read: Quantiles,
    pub getpage_latency_us: Quantiles,
    pub chain_at_image: Quantiles,
    /// History retention (`--retain`): horizon, disk use, last pass.
    pub retention: RetentionStatus,
    #[serde(skip)]
    pub flush_lsn_raw: u64,
    #[serde(skip)]
    pub decoded_lsn_raw: u64,
}

/// Summary of a histogram for /status and /metrics.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Quantiles {
    pub count: u64,
    pub p50: u64,
    pub p99: u64,
    pub max: u64,
}

impl Quantiles {
    pub fn of(h: &Histogram<u64>) -> Quantiles {
        Quantiles {
            count: h.len(),
            p50: h.value_at_quantile(0.5),
            p99: h.value_at_quantile(0.99),
            max: h.max(),
        }
    }
}

impl HelperStatus {
    pub fn prometheus(&self) -> String {
        let r = &self.retention;
        let last = r.last_pass.clone().unwrap_or_default();
        let gauges: [(&str, &str, &str, u64); 28] = [
            (
                "redo_helper_up",
                "gauge",
                "1 while streaming",
                u64::from(self.state == "streaming"),
            ),
            (
                "redo_helper_wal_received_bytes_total",
                "counter",
                "WAL bytes received from the server",
                self.wal_bytes_received,
            ),
            (
                "redo_helper_flush_lsn",
                "gauge",
                "LSN fsynced and acknowledged",
                self.flush_lsn_raw,
            ),
            (
                "redo_helper_decoded_lsn",
                "gauge",
                "LSN up to which records are decoded and indexed",
                self.decoded_lsn_raw,
            ),
            (
                "redo_helper_lag_bytes",
                "gauge",
                "server end of WAL minus fsynced position",
                self.lag_bytes,
            ),
            (
                "redo_helper_records_total",
                "counter",
                "WAL records decoded",
                self.records_decoded,
            ),
            (
                "redo_helper_fpi_applicable_total",
                "counter",
                "full page images with BKPIMAGE_APPLY seen",
                self.fpi_applicable,
            ),
            (
                "redo_helper_fpi_consistency_total",
                "counter",
                "wal_consistency_checking images seen",
                self.fpi_consistency_only,
            ),
            (
                "redo_helper_index_pages",
                "gauge",
                "pages with a history in the index",
                self.pages_indexed,
            ),
            (
                "redo_helper_index_entries",
                "gauge",
                "(page, record) entries in the index",
                self.block_refs_indexed,
            ),
            (
                "redo_helper_reconnects_total",
                "counter",
                "reconnections to the server",
                self.reconnects,
            ),
            (
                "redo_helper_consistent",
                "gauge",
                "1 once WAL up to the base backup end is decoded",
                u64::from(self.consistent),
            ),
            (
                "redo_helper_images_generated_total",
                "counter",
                "page images generated",
                self.images_generated,
            ),
            (
                "redo_helper_image_failures_total",
                "counter",
                "image generations that failed",
                self.image_failures,
            ),
            (
                "redo_helper_imagegen_queue_depth",
                "gauge",
                "pages waiting for an image",
                self.imagegen_queue_depth as u64,
            ),
            (
                "redo_helper_image_lag_bytes",
                "gauge",
                "largest newest-delta minus newest-image distance over queued pages",
                self.image_lag_bytes,
            ),
            (
                "redo_helper_image_bytes",
                "gauge",
                "bytes of stored images",
                self.image_bytes,
            ),
            (
                "redo_helper_unreadable_pages",
                "gauge",
                "pages changed by records the redo does not replay",
                self.unreadable_pages,
            ),
            (
                "redo_helper_backpressure",
                "gauge",
                "1 while flush acknowledgements are held back",
                u64::from(self.backpressure),
            ),
            (
                "redo_helper_retention_horizon_lsn",
                "gauge",
                "oldest LSN pages can be read at (older WAL and images are removed)",
                r.horizon_raw,
            ),
            (
                "redo_helper_archive_bytes",
                "gauge",
                "bytes of WAL segment files in the archive",
                r.archive_bytes,
            ),
            (
                "redo_helper_archive_segments",
                "gauge",
                "WAL segment files in the archive",
                r.archive_segments,
            ),
            (
                "redo_helper_image_file_bytes",
                "gauge",
                "bytes of image files on disk (live and not yet compacted)",
                r.image_file_bytes,
            ),
            (
                "redo_helper_retention_passes_total",
                "counter",
                "retention passes that moved the horizon or removed files",
                r.passes,
            ),
            (
                "redo_helper_retention_segments_removed_total",
                "counter",
                "WAL segment files removed by retention",
                r.segments_removed_total,
            ),
            (
                "redo_helper_retention_image_entries_removed_total",
                "counter",
                "page images removed by retention",
                r.image_entries_removed_total,
            ),
            (
                "redo_helper_retention_last_pages_rebased",
                "gauge",
                "pages rebuilt as images at the horizon by the last pass",
                last.pages_rebased,
            ),
            (
                "redo_helper_retention_last_duration_ms",
                "gauge",
                "duration of the last retention pass in milliseconds",
                last.duration_ms,
            ),
        ];
        let mut out = String::new();
        for (name, kind, help, value) in gauges {
            out.push_str(&format!(
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}\n"
            ));
        }
        for (name, help, q) in [
            (
                "redo_helper_deltas_per_read",
                "deltas replayed per page read",
                &self.deltas_per_read,
            ),
            (
                "redo_helper_getpage_latency_us",
                "microseconds to rebuild a page for GetPage",
                &self.getpage_latency_us,
            ),
            (
                "redo_helper_chain_at_image",
                "chain length when an image was generated",
                &self.chain_at_image,
            ),
        ] {
            out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} summary\n"));
            for (quantile, v) in [("0.5", q.p50), ("0.99", q.p99), ("1", q.max)] {
                out.push_str(&format!("{name}{{quantile=\"{quantile}\"}} {v}\n"));
            }
            out.push_str(&format!("{name}_count {}\n", q.count));
        }
        out
    }
}

#[derive(Clone, Default)]
pub struct SharedStatus(Arc<Mutex<HelperStatus>>);

impl SharedStatus {
    pub fn snapshot(&self) -> HelperStatus {
        self.0.lock().map(|s| s.clone()).unwrap_or_default()
    }

    pub fn update(&self, f: impl FnOnce(&mut HelperStatus)) {
        if let Ok(mut s) = self.0.lock() {
            f(&mut s);
        }
    }
}

/// The page store and its image generator, once bootstrapped.
pub struct Pages {
    pub store: Arc<PageStore>,
    pub imagegen: Arc<ImageGenerator>,
    /// None with `--retain all`.
    pub retention: Option<Arc<Retention>>,
}

/// Shared by the HTTP server, the ingest loop and the image workers.
#[derive(Default)]
pub struct HelperState {
    pub status: SharedStatus,
    pub pages: OnceLock<Pages>,
    /// Deltas replayed per GetPage read.
    pub deltas_per_read: Mutex<Option<Histogram<u64>>>,
    /// Time to rebuild a page for GetPage, in microseconds (measured in the helper).
    pub getpage_latency_us: Mutex<Option<Histogram<u64>>>,
}

impl HelperState {
    pub fn record_read(&self, deltas: u32, elapsed: Duration) {
        if let Ok(mut h) = self.deltas_per_read.lock() {
            let _ = h
                .get_or_insert_with(histogram)
                .record(u64::from(deltas.max(1)));
        }
        if let Ok(mut h) = self.getpage_latency_us.lock() {
            let _ = h
                .get_or_insert_with(histogram)
                .record((elapsed.as_micros() as u64).clamp(1, 1_000_000));
        }
    }

    /// The status with the image generator's live numbers filled in.
    pub fn snapshot(&self) -> HelperStatus {
        let mut s = self.status.snapshot();
        if let Some(p) = self.pages.get() {
            let g = &p.imagegen;
            s.imagegen_paused = g.is_paused();
            s.imagegen_queue_depth = g.queue_depth();
            s.backpressure = s.imagegen_queue_depth > g.backpressure_depth;
            s.images_generated = g
                .stats
                .images_generated
                .load(std::sync::atomic::Ordering::Relaxed);
            s.image_failures = g.stats.failures.load(std::sync::atomic::Ordering::Relaxed);
            s.image_lag_bytes = g.image_lag_bytes();
            if let Ok(h) = g.stats.chain_at_image.lock() {
                s.chain_at_image = Quantiles::of(&h);
            }
            if let Ok(img) = p.store.images.read() {
                s.images_stored = img.images;
                s.image_bytes = img.bytes;
            }
            if let Ok(idx) = p.store.index.read() {
                s.unreadable_pages = idx.unreadable_pages;
            }
            match &p.retention {
                Some(r) => s.retention = r.status(),
                None => {
                    s.retention.retain = Retain::All.to_string();
                    s.retention.horizon_lsn = p.store.horizon().to_string();
                    s.retention.horizon_raw = p.store.horizon().0;
                }
            }
        }
        if let Ok(Some(h)) = self.deltas_per_read.lock().as_deref() {
            s.deltas_per_read = Quantiles::of(h);
        }
        if let Ok(Some(h)) = self.getpage_latency_us.lock().as_deref() {
            s.getpage_latency_us = Quantiles::of(h);
        }
        s
    }
}

/// The decoder feeding the page index, only with durable (fsynced) WAL.
struct Ingest {
    decoder: WalStreamDecoder,
    store: Arc<PageStore>,
    /// None when the store is opened for offline checks.
    imagegen: Option<Arc<ImageGenerator>>,
    /// Records before this are not indexed: before the backup start they are in the base
    /// pages, before the retention horizon in the retained images and state.
    index_from: Lsn,
    backup_end: Lsn,
    record: DecodedRecord,
    touched: Vec<crate::wal::block::PageKey>,
}

impl Ingest {
    /// A decoder from the segment of `store`'s horizon (the backup start, or the retention
    /// horizon once one is set).
    fn new(
        meta: &HelperMeta,
        store: Arc<PageStore>,
        imagegen: Option<Arc<ImageGenerator>>,
    ) -> Result<Ingest, ServiceError> {
        let index_from = store.horizon();
        let start = index_from.segment_start(meta.segment_size);
        let cfg = DecoderConfig {
            segment_size: meta.segment_size,
            system_identifier: Some(meta.system_identifier),
            timeline: Some(meta.timeline),
        };
        let decoder = WalStreamDecoder::new(start, cfg)
            .map_err(|source| ServiceError::Decode { lsn: start, source })?;
        Ok(Ingest {
            decoder,
            store,
            imagegen,
            index_from,
            backup_end: meta.end_lsn(),
            record: DecodedRecord::default(),
            touched: Vec::new(),
        })
    }

    fn decoded_end(&self) -> Lsn {
        self.store
            .index
            .read()
            .map(|i| i.last_record_end)
            .unwrap_or_default()
    }

    /// Decodes every complete record in the bytes pushed so far, indexes it, and queues the
    /// pages whose chains went over the threshold.
    fn push_and_index(&mut self, durable: &[u8]) -> Result<(), ServiceError> {
        self.store
            .recent_wal
            .push(self.decoder.input_lsn(), durable);
        self.decoder.push(durable);
        self.touched.clear();
        let result = {
            loop {
                match self.decoder.next_record_into(&mut self.record) {
                    Ok(true) => {
                        // Records before the backup's start are already in the base pages,
                        // those before the retention horizon in the retained images. The
                        // index is locked per record (decoding happens outside), so page
                        // reads never wait for a whole flushed chunk to be indexed.
                        if self.record.lsn >= self.index_from {
                            self.store
                                .index
                                .write()
                                .unwrap_or_else(|e| e.into_inner())
                                .add_record_touching(&self.record, &mut self.touched);
                        }
                    }
                    Ok(false) => break Ok(()),
                    Err(source) => {
                        break Err(ServiceError::Decode {
                            lsn: self.decoder.next_record_lsn(),
                            source,
                        });
                    }
                }
            }
        };
        let Some(imagegen) = &self.imagegen else {
            return result;
        };
        self.touched.sort_unstable();
        self.touched.dedup();
        let idx = self.store.index.read().unwrap_or_else(|e| e.into_inner());
        for key in &self.touched {
            if let Some(h) = idx.page(key) {
                imagegen.consider(key, h.deltas_since_image, h.unreadable_from.is_some());
            }
        }
        result
    }

    fn publish(&self, status: &SharedStatus) {
        let idx = self.store.index.read().unwrap_or_else(|e| e.into_inner());
        let idx = &*idx;
        status.update(|s| {
            s.records_decoded = idx.records;
            s.block_refs_indexed = idx.block_refs;
            s.pages_indexed = idx.pages() as u64;
            s.fpi_applicable = idx.applicable_images;
            s.fpi_consistency_only = idx.consistency_images;
            s.decoded_lsn = Some(idx.last_record_end.to_string());
            s.decoded_lsn_raw = idx.last_record_end.0;
            s.consistent = idx.last_record_end >= self.backup_end;
            s.fpw_modes = idx
                .fpw_modes
                .iter()
                .map(|m| FpwRange {
                    from_lsn: m.lsn.to_string(),
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
}

/// Runs blocking file work (fsync, reads) without stalling the runtime's other tasks.
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

async fn bootstrap(opts: &RunOptions, status: &SharedStatus) -> Result<HelperMeta, ServiceError> {
    status.update(|s| s.state = "bootstrapping".into());
    let mut conn = PgConnection::connect_replication(&opts.conninfo).await?;
    let sys = conn.identify_system().await?;
    let segment_size = conn.wal_segment_size().await?;
    // Hint-bit logging changes what some redo does to page LSNs (XLogHintBitIsNeeded).
    let data_checksums = conn.show_bool("data_checksums").await?;
    let wal_log_hints = conn.show_bool("wal_log_hints").await?;
    // Reserve WAL before the backup starts, so every byte from its start LSN is retained.
    if conn.create_physical_slot_if_missing(&opts.slot).await? {
        log::info!("created physical replication slot \"{}\"", opts.slot);
    }
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
    let dd = |source| ServiceError::DataDir {
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

/// Rebuilds the index from the archive (start of the backup's or the retention horizon's
/// segment up to the flush point).
fn rebuild(archive: &WalArchive, ingest: &mut Ingest, from: Lsn) -> Result<(), ServiceError> {
    const CHUNK: u64 = 4 << 20;
    let end = archive.flush_position();
    let started = Instant::now();
    let mut pos = from;
    let mut buf = Vec::with_capacity(CHUNK as usize);
    while pos < end {
        let to = Lsn(end.0.min(pos.0 + CHUNK));
        buf.clear();
        archive.read(pos, to, &mut buf)?;
        ingest.push_and_index(&buf)?;
        pos = to;
    }
    if end > from {
        log::info!(
            "rebuilt page index from the archive ({from}..{end}): {} records, {} pages in {:.1}s",
            ingest.store.index.read().map(|i| i.records).unwrap_or(0),
            ingest.store.index.read().map(|i| i.pages()).unwrap_or(0),
            started.elapsed().as_secs_f64()
        );
    }
    Ok(())
}

/// One replication session: connect, check identity, stream until the connection ends.
async fn stream_once(
    opts: &RunOptions,
    meta: &HelperMeta,
    archive: &mut WalArchive,
    ingest: &mut Ingest,
    status: &SharedStatus,
) -> Result<(), ServiceError> {
    let mut conn = PgConnection::connect_replication(&opts.conninfo).await?;
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
    let consistent = ingest.decoded_end() >= ingest.backup_end;
    status.update(|s| {
        s.state = if consistent {
            "streaming".into()
        } else {
            "bootstrapping".into()
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
            let behind = ingest
                .imagegen
                .as_ref()
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
                    ingest.decoded_end(),
                    false,
                );
                conn.send_copy_data(&msg).await?;
                last_status = Instant::now();
            }
            let flush = archive.flush_position();
            status.update(|s| {
                s.state = if s.consistent {
                    "streaming".into()
                } else {
                    "bootstrapping".into()
                };
                s.write_lsn = Some(archive.write_position().to_string());
                s.flush_lsn = Some(flush.to_string());
                s.flush_lsn_raw = flush.0;
                s.server_wal_end_lsn = Some(server_end.to_string());
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
    ingest: &mut Ingest,
    pending: &mut Vec<u8>,
    status: &SharedStatus,
) -> Result<(), ServiceError> {
    if pending.is_empty() && archive.write_position() == archive.flush_position() {
        return Ok(());
    }
    blocking(|| -> Result<(), ServiceError> {
        archive.write(archive.write_position(), pending)?;
        archive.flush()?;
        ingest.push_and_index(pending)?;
        Ok(())
    })?;
    pending.clear();
    ingest.publish(status);
    Ok(())
}

/// The service: never returns Ok; returns an error that retrying cannot fix.
pub async fn run(opts: RunOptions) -> Result<(), ServiceError> {
    run_with_state(opts, Arc::new(HelperState::default())).await
}

/// A bootstrapped data directory opened without streaming: the page store with its index
/// rebuilt from the archive (for offline checks such as `redo-helper check`). Holds the
/// directory's lock, so it cannot run beside `redo-helper run`.
pub struct OfflineStore {
    pub meta: HelperMeta,
    pub store: Arc<PageStore>,
    archive: WalArchive,
    ingest: Ingest,
    _lock: DataDirLock,
}

/// What [`OfflineStore::catch_up_from_pg_wal`] took from the cluster's `pg_wal`.
#[derive(Debug, Clone, Default)]
pub struct WalCatchUp {
    /// The archive's flush position before.
    pub from: Lsn,
    /// End of the last valid record in `pg_wal` (where crash recovery will stop too).
    pub end: Lsn,
    /// Records decoded past the archive's flush position.
    pub records: u64,
    /// Why reading stopped: the first invalid or missing record after the last valid one.
    pub stopped: String,
}

impl OfflineStore {
    pub fn open(data_dir: &Path) -> Result<OfflineStore, ServiceError> {
        let lock = DataDirLock::acquire(data_dir)?;
        let meta = HelperMeta::load(data_dir)?.ok_or_else(|| ServiceError::DataDir {
            dir: data_dir.to_path_buf(),
            source: std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "not a bootstrapped helper data directory (no helper.json)",
            ),
        })?;
        let archive = open_archive(data_dir, &meta)?;
        let store = open_store(data_dir, &meta, &archive, 0)?;
        let from = load_retention(data_dir, &meta, &store)?;
        let mut ingest = Ingest::new(&meta, Arc::clone(&store), None)?;
        rebuild(&archive, &mut ingest, from)?;
        note_generated_images(&store);
        Ok(OfflineStore {
            meta,
            store,
            archive,
            ingest,
            _lock: lock,
        })
    }

    /// Takes into the archive and the index the WAL a stopped (or crashed) cluster has in
    /// `pg_wal` beyond what the helper had acknowledged: streaming lags the server's flush by
    /// up to a flush interval, and a helper that was down lags by more (the slot kept that
    /// WAL). Reads records from the last complete one the helper has, as crash recovery
    /// would, until the first invalid or missing one; appends exactly the bytes up to the end
    /// of the last valid record, so a helper started afterwards streams on from there.
    pub fn catch_up_from_pg_wal(&mut self, pg_wal: &Path) -> Result<WalCatchUp, ServiceError> {
        use crate::wal::reader::{FileReaderOptions, WalFileReader};
        let flushed = self.archive.flush_position();
        let mut out = WalCatchUp {
            from: flushed,
            end: flushed,
            ..Default::default()
        };
        // A record boundary at or before the flush position: the start of the record the
        // decoder is assembling, else the end of the last one, MAXALIGNed (where PostgreSQL
        // puts the next record, its header split across pages if need be).
        let start = Lsn((self.ingest.decoder.next_record_lsn().0 + 7) & !7);
        let opts = FileReaderOptions {
            timeline: Some(self.meta.timeline),
            system_identifier: Some(self.meta.system_identifier),
            ..Default::default()
        };
        let mut reader = match WalFileReader::open(pg_wal, start, opts) {
            Ok(r) => r,
            // No segment for the next record (WAL ended at a segment boundary): nothing new.
            Err(e) if e.is_end_of_wal() => {
                out.stopped = e.to_string();
                return Ok(out);
            }
            Err(source) => return Err(ServiceError::Decode { lsn: start, source }),
        };
        if reader.segment_size() != self.meta.segment_size {
            return Err(ServiceError::DataDir {
                dir: pg_wal.to_path_buf(),
                source: std::io::Error::other(format!(
                    "WAL segment size {} differs from the helper's {}",
                    reader.segment_size(),
                    self.meta.segment_size
                )),
            });
        }
        let mut rec = crate::wal::DecodedRecord::default();
        let mut end = Lsn(0);
        loop {
            match reader.next_record_into(&mut rec) {
                Ok(true) => {
                    end = rec.lsn.add(rec.total_len() as u64);
                    if end > flushed {
                        out.records += 1;
                    }
                }
                Ok(false) => {
                    out.stopped = "end of the segment files".into();
                    break;
                }
                Err(e) => {
                    out.stopped = e.to_string();
                    break;
                }
            }
        }
        if end < flushed && end.0 != 0 {
            // The helper has durably received WAL this pg_wal does not have: a different
            // history (restored from a backup, or another cluster's directory).
            return Err(ServiceError::DataDir {
                dir: pg_wal.to_path_buf(),
                source: std::io::Error::other(format!(
                    "its WAL ends at {end}, before the {flushed} the helper already has \
                     ({}); it is not the WAL of the cluster the helper follows",
                    out.stopped
                )),
            });
        }
        if end <= flushed {
            return Ok(out);
        }
        // In pieces: a helper that was down for long may be gigabytes behind.
        const PIECE: u64 = 16 << 20;
        let mut bytes = Vec::new();
        let mut pos = flushed;
        while pos < end {
            let to = Lsn(end.0.min(pos.0 + PIECE));
            bytes.clear();
            crate::store::archive::read_segment_files(
                pg_wal,
                self.meta.timeline,
                self.meta.segment_size,
                pos,
                to,
                &mut bytes,
            )?;
            self.archive.write(pos, &bytes)?;
            self.archive.flush()?;
            self.ingest.push_and_index(&bytes)?;
            pos = to;
        }
        out.end = end;
        Ok(out)
    }
}

fn archive_start(meta: &HelperMeta) -> Lsn {
    meta.start_lsn().segment_start(meta.segment_size)
}

fn open_archive(data_dir: &Path, meta: &HelperMeta) -> Result<WalArchive, ServiceError> {
    Ok(WalArchive::open(
        &archive_dir(data_dir),
        meta.segment_size,
        meta.timeline,
        archive_start(meta),
    )?)
}

/// Loads `retention.json` into a freshly opened store (horizon, relation events, unreadable
/// markers); returns where the index rebuild starts: the horizon's segment, or the backup
/// start's.
fn load_retention(
    data_dir: &Path,
    meta: &HelperMeta,
    store: &PageStore,
) -> Result<Lsn, ServiceError> {
    if let Some(state) = RetentionState::load(data_dir)? {
        let horizon = state.apply(store);
        log::info!(
            "retention horizon {horizon}: history before it was removed ({} relation events, {} unreadable pages kept)",
            state.relation_events.truncations.len()
                + state.relation_events.drops.len()
                + state.relation_events.database_drops.len(),
            state.unreadable.len()
        );
    }
    Ok(store
        .horizon()
        .segment_start(meta.segment_size)
        .max(archive_start(meta)))
}

/// `entries_per_file` 0: the default.
fn open_store(
    data_dir: &Path,
    meta: &HelperMeta,
    archive: &WalArchive,
    entries_per_file: u64,
) -> Result<Arc<PageStore>, ServiceError> {
    let entries_per_file = match entries_per_file {
        0 => crate::store::images::DEFAULT_ENTRIES_PER_FILE,
        n => n,
    };
    let images = ImageStore::open_with(&data_dir.join("images"), entries_per_file)?;
    Ok(Arc::new(PageStore::new(
        BaseFiles::new(data_dir.join("base")),
        images,
        archive,
        meta.system_identifier,
        meta.start_lsn(),
        crate::redo::RedoEngine {
            ctx: meta.redo_context(),
        },
    )))
}

/// Images generated before a restart count again (the index was rebuilt without them).
fn note_generated_images(store: &PageStore) {
    let img = store.images.read().unwrap_or_else(|e| e.into_inner());
    let mut idx = store.index.write().unwrap_or_else(|e| e.into_inner());
    let keys: Vec<_> = idx.keys().copied().collect();
    for key in keys {
        if let (Some(lsn), Some(h)) = (
            img.newest_at_or_before(&key, Lsn(u64::MAX)),
            idx.page_mut(&key),
        ) {
            h.note_generated_image(lsn);
        }
    }
}

pub async fn run_with_state(opts: RunOptions, state: Arc<HelperState>) -> Result<(), ServiceError> {
    let dd = |source| ServiceError::DataDir {
        dir: opts.data_dir.clone(),
        source,
    };
    std::fs::create_dir_all(&opts.data_dir).map_err(dd)?;
    let _lock = DataDirLock::acquire(&opts.data_dir)?;
    let status = state.status.clone();
    status.update(|s| {
        s.image_threshold = opts.image_threshold;
        s.state = "starting".into();
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
            None => match bootstrap(&opts, &status).await {
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
        s.backup_start_lsn = Some(meta.backup_start_lsn.clone());
        s.backup_end_lsn = Some(meta.backup_end_lsn.clone());
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
    let mut ingest = Ingest::new(&meta, Arc::clone(&store), Some(Arc::clone(&imagegen)))?;
    blocking(|| rebuild(&archive, &mut ingest, rebuild_from))?;
    note_generated_images(&store);
    let _workers = imagegen.spawn_workers(opts.imagegen_workers);
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
    ingest.publish(&status);
    let flush = archive.flush_position();
    status.update(|s| {
        s.flush_lsn = Some(flush.to_string());
        s.flush_lsn_raw = flush.0;
        s.write_lsn = Some(flush.to_string());
    });

    backoff = Duration::from_secs(1);
    loop {
        let connected_at = Instant::now();
        let err = stream_once(&opts, &meta, &mut archive, &mut ingest, &status)
            .await
            .err();
        let disk_full = matches!(&err, Some(ServiceError::Archive(a)) if a.is_disk_full());
        let message = err.as_ref().map(|e| e.to_string());
        if let Some(e) = err {
            if !e.is_transient() {
                status.update(|s| {
                    s.state = "stopped".into();
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
                "disk_full".into()
            } else {
                "reconnecting".into()
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

/// Where the WAL archive of a data directory lives.
pub fn archive_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("wal")
}
