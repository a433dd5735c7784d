//! What the helper reports about itself: the state of `run`, positions, counters and
//! latency summaries, shared between the streaming loop (which updates it), the image
//! workers and the HTTP server (which reads it for /status and /metrics).

use crate::imagegen::{ImageGenerator, chain_length_histogram, histogram};
use crate::store::page_store::PageStore;
use crate::store::retention::{Retain, Retention, RetentionStatus};
use crate::sync::{lock, read};
use crate::wal::page::Lsn;
use hdrhistogram::Histogram;
use serde::Serialize;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

/// What `redo-helper run` is doing; `state` in /status (snake_case), which the extension's
/// guard reads.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum RunState {
    /// Opening the data directory and the API.
    #[default]
    Starting,
    /// Taking the base backup, or decoding WAL up to its end (pages not yet consistent).
    Bootstrapping,
    /// Streaming with consistent pages.
    Streaming,
    /// The connection ended; retrying with back-off.
    Reconnecting,
    /// The archive's disk is full; retrying with back-off.
    DiskFull,
    /// Stopped for good on an error a retry cannot fix (see `last_error`).
    Stopped,
}

fn as_decimal_string<S: serde::Serializer>(v: &Option<u64>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(v) => s.collect_str(v),
        None => s.serialize_none(),
    }
}

/// A full page image counts as one of these kinds in /status.
#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct FpwRange {
    pub from_lsn: Lsn,
    pub full_page_writes: bool,
    pub source: &'static str,
}

/// What /status and /metrics report.
#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct HelperStatus {
    pub state: RunState,
    pub server: String,
    /// The helper's data directory (`--data-dir`).
    pub data_dir: String,
    pub slot: String,
    /// Which pages this helper owns (`--shards`, `--shard`, `--stripe-blocks`).
    pub shard: crate::store::shard::ShardMap,
    /// As a string: a u64 exceeds what JSON numbers carry exactly.
    #[serde(serialize_with = "as_decimal_string")]
    pub system_identifier: Option<u64>,
    pub timeline: Option<u32>,
    pub backup_start_lsn: Option<Lsn>,
    pub backup_end_lsn: Option<Lsn>,
    /// Base pages are consistent once WAL up to backup_end_lsn is decoded.
    pub consistent: bool,
    pub write_lsn: Option<Lsn>,
    pub flush_lsn: Option<Lsn>,
    pub decoded_lsn: Option<Lsn>,
    pub server_wal_end_lsn: Option<Lsn>,
    /// Server's end of WAL minus what the helper has fsynced.
    pub lag_bytes: u64,
    pub wal_bytes_received: u64,
    pub records_decoded: u64,
    pub block_refs_indexed: u64,
    /// Block references decoded but left to the other shards (0 unsharded).
    pub block_refs_other_shards: u64,
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
    /// Queue depth above which they are (`--backpressure-queue`).
    pub backpressure_queue: usize,
    /// Bytes available on the data directory's filesystem (statvfs; None if it failed).
    pub data_dir_free_bytes: Option<u64>,
    /// Space the archive and image generation leave free for retention (`--disk-reserve`).
    pub disk_reserve_bytes: u64,
    pub deltas_per_read: Quantiles,
    pub getpage_latency_us: Quantiles,
    pub chain_at_image: Quantiles,
    /// History retention (`--retain`): horizon, disk use, last pass.
    pub retention: RetentionStatus,
}

/// Summary of a histogram over the process's life, for /status (/metrics has buckets).
#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct Quantiles {
    pub count: u64,
    pub p50: u64,
    pub p99: u64,
    pub max: u64,
}

impl Quantiles {
    pub(crate) fn of(h: &Histogram<u64>) -> Quantiles {
        Quantiles {
            count: h.len(),
            p50: h.value_at_quantile(0.5),
            p99: h.value_at_quantile(0.99),
            max: h.max(),
        }
    }
}

#[derive(Clone, Default)]
pub(crate) struct SharedStatus(Arc<Mutex<HelperStatus>>);

impl SharedStatus {
    pub(crate) fn snapshot(&self) -> HelperStatus {
        lock(&self.0).clone()
    }

    pub(crate) fn update(&self, f: impl FnOnce(&mut HelperStatus)) {
        f(&mut lock(&self.0));
    }
}

/// The page store and its image generator, once bootstrapped.
pub(crate) struct Pages {
    pub store: Arc<PageStore>,
    pub imagegen: Arc<ImageGenerator>,
    /// None with `--retain all`.
    pub retention: Option<Arc<Retention>>,
}

/// Prometheus histograms of GetPage reads (see `serve::metrics`).
pub(crate) struct ReadHistograms {
    /// Seconds to rebuild a page.
    pub seconds: prometheus_client::metrics::histogram::Histogram,
    /// Deltas replayed per read.
    pub deltas: prometheus_client::metrics::histogram::Histogram,
}

impl Default for ReadHistograms {
    fn default() -> Self {
        ReadHistograms {
            seconds: super::metrics::page_read_seconds_histogram(),
            deltas: chain_length_histogram(),
        }
    }
}

/// Shared by the HTTP server, the ingest loop and the image workers.
#[derive(Default)]
pub(crate) struct SharedState {
    pub status: SharedStatus,
    pub pages: OnceLock<Pages>,
    /// The data directory, for its filesystem's free space (`data_dir` in the status is
    /// its display form, lossy for a path that is not UTF-8).
    pub data_dir: OnceLock<std::path::PathBuf>,
    pub read_histograms: ReadHistograms,
    /// Routing to the other shards (`--peers`), set once the API is up and replaced when
    /// SIGHUP reads another peer list (see [`SharedState::router`]).
    pub router: std::sync::RwLock<Option<Arc<super::route::Router>>>,
    /// Deltas replayed per GetPage read.
    pub deltas_per_read: Mutex<Option<Histogram<u64>>>,
    /// Time to rebuild a page for GetPage, in microseconds (measured in the helper).
    pub getpage_latency_us: Mutex<Option<Histogram<u64>>>,
}

impl SharedState {
    /// The router in force: a read keeps the one it started with when SIGHUP swaps it.
    pub(crate) fn router(&self) -> Option<Arc<super::route::Router>> {
        crate::sync::read(&self.router).clone()
    }

    pub(crate) fn record_read(&self, deltas: u32, elapsed: Duration) {
        self.read_histograms.seconds.observe(elapsed.as_secs_f64());
        self.read_histograms
            .deltas
            .observe(f64::from(deltas.max(1)));
        let _ = lock(&self.deltas_per_read)
            .get_or_insert_with(histogram)
            .record(u64::from(deltas.max(1)));
        let _ = lock(&self.getpage_latency_us)
            .get_or_insert_with(histogram)
            .record((elapsed.as_micros() as u64).clamp(1, 1_000_000));
    }

    /// The status with the image generator's live numbers filled in.
    pub(crate) fn snapshot(&self) -> HelperStatus {
        let mut s = self.status.snapshot();
        s.disk_reserve_bytes = crate::store::disk_headroom();
        s.data_dir_free_bytes = self
            .data_dir
            .get()
            .and_then(|d| crate::store::free_bytes(d));
        if let Some(p) = self.pages.get() {
            let g = &p.imagegen;
            s.imagegen_paused = g.is_paused();
            s.imagegen_queue_depth = g.queue_depth();
            s.backpressure = s.imagegen_queue_depth > g.backpressure_depth;
            s.backpressure_queue = g.backpressure_depth;
            s.images_generated = g
                .stats
                .images_generated
                .load(std::sync::atomic::Ordering::Relaxed);
            s.image_failures = g.stats.failures.load(std::sync::atomic::Ordering::Relaxed);
            s.image_lag_bytes = g.image_lag_bytes();
            s.chain_at_image = Quantiles::of(&lock(&g.stats.chain_at_image));
            {
                let img = read(&p.store.images);
                s.images_stored = img.images;
                s.image_bytes = img.bytes;
            }
            s.unreadable_pages = read(&p.store.index).unreadable_pages;
            match &p.retention {
                Some(r) => s.retention = r.status(),
                None => {
                    s.retention.retain = Retain::All.to_string();
                    s.retention.horizon_lsn = p.store.horizon();
                }
            }
        }
        if let Some(h) = lock(&self.deltas_per_read).as_ref() {
            s.deltas_per_read = Quantiles::of(h);
        }
        if let Some(h) = lock(&self.getpage_latency_us).as_ref() {
            s.getpage_latency_us = Quantiles::of(h);
        }
        s
    }
}
