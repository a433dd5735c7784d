//! `/metrics`: the helper's status in the Prometheus text exposition format (0.0.4),
//! encoded by the `prometheus-client` crate.
//!
//! Why it is built this way: almost every number is a value the helper already keeps for
//! `/status` (positions, counters, sizes), so each scrape takes one [`HelperStatus`]
//! snapshot and registers its values as constant gauges and counters in a fresh registry.
//! The distributions (page read time, deltas per read, chain length at an image) are real
//! histograms that live as long as the process and are observed where the work happens;
//! the scrape registers handles to them. Cumulative buckets with `_sum` and `_count` let
//! Prometheus compute quantiles over any window (`histogram_quantile(0.99,
//! rate(..._bucket[5m]))`), which a process-lifetime quantile cannot give.
//!
//! Conventions (<https://prometheus.io/docs/practices/naming/>): base units in the name
//! (`_seconds`, `_bytes`), counters end in `_total`, `redo_helper_build_info` carries the
//! version as labels with the value 1, and the run state is one gauge per state label, 1
//! for the current state and 0 for the others, so `redo_helper_state{state="streaming"} ==
//! 0` is an alert expression. Names are stable API: renamed ones are listed in
//! docs/operations.md.

use super::status::{HelperStatus, RunState, SharedState};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, prometheus_text};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;

/// `Content-Type` of the exposition.
pub(crate) const CONTENT_TYPE: &str = prometheus_text::CONTENT_TYPE;

/// Every value of [`RunState`], with its label in `redo_helper_state` (the same spelling as
/// `state` in /status).
const STATES: [(RunState, &str); 6] = [
    (RunState::Starting, "starting"),
    (RunState::Bootstrapping, "bootstrapping"),
    (RunState::Streaming, "streaming"),
    (RunState::Reconnecting, "reconnecting"),
    (RunState::DiskFull, "disk_full"),
    (RunState::Stopped, "stopped"),
];

/// Workers whose panics are counted (always listed, so alerts work from the first scrape).
const SUPERVISED_WORKERS: [&str; 5] = [
    "imagegen",
    "retention",
    "wal-upload",
    "image-upload",
    "cache-evict",
];

/// Buckets of a time to rebuild a page, in seconds: 10 µs to about 2.6 s, doubling. A cached
/// page takes microseconds; a long chain replayed from the archive, milliseconds to seconds.
pub(crate) fn page_read_seconds_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.000_01, 2.0, 19))
}

/// One metric with a single label and a value per label value, in a fixed order (the
/// crate's `Family` lists its members in hash order, which changes between scrapes).
#[derive(Debug)]
struct Labelled {
    /// The exposed name (a counter's ends in `_total`).
    name: &'static str,
    help: &'static str,
    counter: bool,
    label: &'static str,
    values: Vec<(&'static str, u64)>,
}

impl Collector for Labelled {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        if self.counter {
            // The encoder appends `_total` to a counter's name.
            let base = self.name.strip_suffix("_total").unwrap_or(self.name);
            let mut family = encoder.encode_descriptor(
                base,
                self.help,
                None,
                ConstCounter::new(0u64).metric_type(),
            )?;
            for (value, n) in &self.values {
                ConstCounter::new(*n).encode(family.encode_family(&[(self.label, *value)])?)?;
            }
        } else {
            let mut family = encoder.encode_descriptor(
                self.name,
                self.help,
                None,
                ConstGauge::new(0u64).metric_type(),
            )?;
            for (value, n) in &self.values {
                ConstGauge::new(*n).encode(family.encode_family(&[(self.label, *value)])?)?;
            }
        }
        Ok(())
    }
}

/// Object storage (`run --object-store`): requests by operation and object kind, bytes by
/// direction and kind (two labels, which [`Labelled`] does not do).
#[derive(Debug)]
struct ObjectStoreCounters(crate::store::remote::RemoteCounters);

impl Collector for ObjectStoreCounters {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        use crate::store::remote::{KINDS, OPS};
        let c = &self.0;
        let mut family = encoder.encode_descriptor(
            "redo_helper_object_store_requests",
            "object store requests by operation and object kind",
            None,
            ConstCounter::new(0u64).metric_type(),
        )?;
        for (o, op) in OPS.iter().enumerate() {
            for (k, kind) in KINDS.iter().enumerate() {
                ConstCounter::new(c.requests[o][k])
                    .encode(family.encode_family(&[("op", *op), ("kind", *kind)])?)?;
            }
        }
        let mut family = encoder.encode_descriptor(
            "redo_helper_object_store_bytes",
            "bytes sent to and received from the object store",
            None,
            ConstCounter::new(0u64).metric_type(),
        )?;
        for (k, kind) in KINDS.iter().enumerate() {
            for (direction, n) in [
                ("upload", c.bytes_uploaded[k]),
                ("download", c.bytes_downloaded[k]),
            ] {
                ConstCounter::new(n)
                    .encode(family.encode_family(&[("direction", direction), ("kind", *kind)])?)?;
            }
        }
        Ok(())
    }
}

/// The registry of one scrape.
struct Exposition(Registry);

impl Exposition {
    fn gauge(&mut self, name: &str, help: &str, value: u64) {
        self.0.register(name, help, ConstGauge::new(value));
    }

    fn gauge_f64(&mut self, name: &str, help: &str, value: f64) {
        self.0.register(name, help, ConstGauge::new(value));
    }

    /// `name` is the exposed name; the encoder appends `_total` itself.
    fn counter(&mut self, name: &str, help: &str, value: u64) {
        let base = name.strip_suffix("_total").unwrap_or(name);
        self.0.register(base, help, ConstCounter::new(value));
    }

    fn counter_f64(&mut self, name: &str, help: &str, value: f64) {
        let base = name.strip_suffix("_total").unwrap_or(name);
        self.0.register(base, help, ConstCounter::new(value));
    }

    fn histogram(&mut self, name: &str, help: &str, h: &Histogram) {
        self.0.register(name, help, h.clone());
    }
}

/// The `/metrics` body: the status and the histograms, in the Prometheus text format.
pub(crate) fn encode(state: &SharedState) -> Result<String, std::fmt::Error> {
    let s = state.snapshot();
    let mut m = Exposition(Registry::default());
    register_status(&mut m, &s);
    m.histogram(
        "redo_helper_getpage_duration_seconds",
        "time to rebuild a page for a GetPage read",
        &state.read_histograms.seconds,
    );
    m.histogram(
        "redo_helper_deltas_per_read",
        "deltas replayed per page read",
        &state.read_histograms.deltas,
    );
    if let Some(p) = state.pages.get() {
        m.histogram(
            "redo_helper_chain_at_image",
            "chain length (deltas replayed) when an image was generated",
            &p.imagegen.stats.chain_at_image_histogram,
        );
    } else {
        // Before the bootstrap there is no image generator yet; an empty histogram keeps the
        // series present from the first scrape.
        m.histogram(
            "redo_helper_chain_at_image",
            "chain length (deltas replayed) when an image was generated",
            &crate::imagegen::chain_length_histogram(),
        );
    }
    if let Some(r) = state.router() {
        use std::sync::atomic::Ordering::Relaxed;
        let c = &r.metrics;
        m.0.register_collector(Box::new(Labelled {
            name: "redo_helper_routed_reads_total",
            help: "page reads of another shard's pages: proxied to the owner, redirected to it, or failed (owner unreachable or refusing the peer token: 502; not answering in time: 504)",
            counter: true,
            label: "outcome",
            values: vec![
                ("proxied", c.proxied.load(Relaxed)),
                ("redirected", c.redirected.load(Relaxed)),
                ("failed", c.failed.load(Relaxed)),
            ],
        }));
        m.histogram(
            "redo_helper_routed_read_duration_seconds",
            "time of a page read proxied to its owner shard, round trip included",
            &c.seconds,
        );
    }
    let mut out = String::new();
    prometheus_text::encode(&mut out, &m.0)?;
    Ok(out)
}

fn register_status(m: &mut Exposition, s: &HelperStatus) {
    m.0.register(
        "redo_helper_build",
        "the helper's version (value 1)",
        Info::new(vec![
            ("version", env!("CARGO_PKG_VERSION")),
            ("postgresql", "15"),
        ]),
    );
    m.0.register_collector(Box::new(Labelled {
        name: "redo_helper_state",
        help: "1 for the state `redo-helper run` is in, 0 for the others",
        counter: false,
        label: "state",
        values: STATES
            .iter()
            .map(|(state, label)| (*label, u64::from(s.state == *state)))
            .collect(),
    }));
    m.gauge(
        "redo_helper_consistent",
        "1 once WAL up to the base backup end is decoded",
        u64::from(s.consistent),
    );
    m.counter(
        "redo_helper_wal_received_bytes_total",
        "WAL bytes received from the server",
        s.wal_bytes_received,
    );
    m.gauge(
        "redo_helper_flush_lsn",
        "LSN fsynced and acknowledged, as a byte position",
        s.flush_lsn.unwrap_or_default().0,
    );
    m.gauge(
        "redo_helper_decoded_lsn",
        "LSN up to which records are decoded and indexed, as a byte position",
        s.decoded_lsn.unwrap_or_default().0,
    );
    m.gauge(
        "redo_helper_lag_bytes",
        "server end of WAL minus the fsynced position",
        s.lag_bytes,
    );
    m.counter(
        "redo_helper_records_total",
        "WAL records decoded",
        s.records_decoded,
    );
    m.counter(
        "redo_helper_fpi_applicable_total",
        "full page images with BKPIMAGE_APPLY seen",
        s.fpi_applicable,
    );
    m.counter(
        "redo_helper_fpi_consistency_total",
        "wal_consistency_checking images seen",
        s.fpi_consistency_only,
    );
    m.gauge(
        "redo_helper_index_pages",
        "pages with a history in the index",
        s.pages_indexed,
    );
    m.gauge(
        "redo_helper_index_entries",
        "(page, record) entries in the index",
        s.block_refs_indexed,
    );
    m.counter(
        "redo_helper_reconnects_total",
        "reconnections to the server",
        s.reconnects,
    );
    m.counter(
        "redo_helper_images_generated_total",
        "page images generated",
        s.images_generated,
    );
    m.counter(
        "redo_helper_image_failures_total",
        "image generations that failed",
        s.image_failures,
    );
    m.gauge(
        "redo_helper_imagegen_queue_depth",
        "pages waiting for an image",
        s.imagegen_queue_depth as u64,
    );
    m.gauge(
        "redo_helper_backpressure_queue_depth",
        "queue depth above which flush acknowledgements are held back (--backpressure-queue)",
        s.backpressure_queue as u64,
    );
    m.gauge(
        "redo_helper_image_lag_bytes",
        "largest newest-delta minus newest-image distance over queued pages",
        s.image_lag_bytes,
    );
    m.gauge(
        "redo_helper_image_bytes",
        "bytes of stored images",
        s.image_bytes,
    );
    m.gauge(
        "redo_helper_unreadable_pages",
        "pages changed by records the redo does not replay",
        s.unreadable_pages,
    );
    m.gauge(
        "redo_helper_backpressure",
        "1 while flush acknowledgements are held back",
        u64::from(s.backpressure),
    );
    // Absent, not 0, while unknown (before `run` opened the directory, or statvfs failed):
    // a 0 would fire the disk alert.
    if let Some(free) = s.data_dir_free_bytes {
        m.gauge(
            "redo_helper_data_dir_free_bytes",
            "bytes available to the helper on the data directory's filesystem",
            free,
        );
    }
    m.gauge(
        "redo_helper_disk_reserve_bytes",
        "space kept free on the data directory's filesystem for retention (--disk-reserve, or more once retention measured that one step needs more)",
        s.disk_reserve_bytes,
    );
    let r = &s.retention;
    let last = r.last_pass.clone().unwrap_or_default();
    m.gauge(
        "redo_helper_disk_reserve_held",
        "1 while the disk reserve is held in DATA_DIR/disk-reserve (0: released for retention on a full disk, or no retention)",
        u64::from(r.disk_reserve_held),
    );
    m.gauge(
        "redo_helper_retention_short_of_space",
        "1 after a retention pass ran out of space, until three reserves are free (passes then move the horizon one WAL segment at a time)",
        u64::from(r.short_of_space),
    );
    m.gauge(
        "redo_helper_retention_rebase_bytes_per_segment",
        "most image bytes a retention step of one WAL segment writes, as passes measured it (twice this, up to an eighth of the filesystem, is the disk reserve when above --disk-reserve)",
        r.rebase_bytes_per_segment,
    );
    m.gauge(
        "redo_helper_retention_horizon_lsn",
        "oldest LSN pages can be read at (older WAL and images are removed), as a byte position",
        r.horizon_lsn.0,
    );
    m.gauge(
        "redo_helper_archive_bytes",
        "bytes of WAL segment files in the archive",
        r.archive_bytes,
    );
    m.gauge(
        "redo_helper_archive_segments",
        "WAL segment files in the archive",
        r.archive_segments,
    );
    m.gauge(
        "redo_helper_image_file_bytes",
        "bytes of image files on disk (live and not yet compacted)",
        r.image_file_bytes,
    );
    m.counter(
        "redo_helper_retention_passes_total",
        "retention passes that moved the horizon or removed files",
        r.passes,
    );
    m.counter(
        "redo_helper_retention_segments_removed_total",
        "WAL segment files removed by retention",
        r.segments_removed_total,
    );
    m.counter(
        "redo_helper_retention_image_entries_removed_total",
        "page images removed by retention",
        r.image_entries_removed_total,
    );
    m.gauge(
        "redo_helper_retention_last_pages_rebased",
        "pages rebuilt as images at the horizon by the last pass",
        last.pages_rebased,
    );
    m.gauge_f64(
        "redo_helper_retention_last_duration_seconds",
        "duration of the last retention pass",
        last.duration_ms as f64 / 1000.0,
    );
    let os = crate::store::remote::counters();
    m.0.register_collector(Box::new(ObjectStoreCounters(os)));
    m.gauge(
        "redo_helper_object_store_wal_lsn",
        "end of the contiguous WAL in the object store (flush acknowledgements never pass it)",
        os.wal_lsn,
    );
    m.gauge(
        "redo_helper_object_store_failing",
        "1 while WAL uploads to the object store fail",
        u64::from(os.failing),
    );
    let cache = crate::store::cache::counters();
    if cache.limit > 0 {
        m.gauge(
            "redo_helper_cache_limit_bytes",
            "--cache-size: bound of the local copies of files the bucket holds",
            cache.limit,
        );
        m.gauge(
            "redo_helper_cache_bytes",
            "local bytes of the files the bucket holds (evictable), at the last eviction pass",
            cache.bytes,
        );
        m.counter(
            "redo_helper_cache_evictions_total",
            "files evicted from the data directory (the bucket holds them)",
            cache.evictions,
        );
        m.counter(
            "redo_helper_cache_evicted_bytes_total",
            "bytes of the files evicted",
            cache.evicted_bytes,
        );
        m.counter(
            "redo_helper_cache_fetches_total",
            "ranged GETs reading evicted files back from the bucket",
            cache.fetches,
        );
        m.counter(
            "redo_helper_cache_fetch_bytes_total",
            "bytes read back from the bucket",
            cache.fetch_bytes,
        );
        m.counter_f64(
            "redo_helper_cache_fetch_seconds_total",
            "time spent in those GETs (divided by the fetches: the mean latency)",
            cache.fetch_micros as f64 / 1e6,
        );
        m.gauge_f64(
            "redo_helper_cache_fetch_max_seconds",
            "slowest fetch since start-up",
            cache.fetch_max_micros as f64 / 1e6,
        );
        m.counter(
            "redo_helper_cache_fetch_failures_total",
            "reads of evicted files the bucket could not serve (each an error, never a page)",
            cache.fetch_failures,
        );
    }
    let panics = crate::sync::supervise::panics();
    m.0.register_collector(Box::new(Labelled {
        name: "redo_helper_worker_panics_total",
        help: "panics caught in worker threads (each restarted)",
        counter: true,
        label: "worker",
        values: SUPERVISED_WORKERS
            .iter()
            .map(|w| (*w, panics.get(w).copied().unwrap_or(0)))
            .collect(),
    }));
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The state labels are /status's spelling of each state.
    #[test]
    fn state_labels_match_status() {
        for (state, label) in STATES {
            assert_eq!(serde_json::to_value(state).unwrap(), label);
        }
    }

    /// The names the docs, dashboard and alert rules rely on, in the exposed spelling.
    #[test]
    fn exposition_follows_the_conventions() {
        let state = SharedState::default();
        state.status.update(|s| {
            s.state = RunState::Streaming;
            s.wal_bytes_received = 42;
        });
        state.record_read(3, std::time::Duration::from_micros(250));
        let text = encode(&state).unwrap();
        for line in [
            "redo_helper_state{state=\"streaming\"} 1",
            "redo_helper_state{state=\"stopped\"} 0",
            "# TYPE redo_helper_wal_received_bytes_total counter",
            "redo_helper_wal_received_bytes_total 42",
            "# TYPE redo_helper_getpage_duration_seconds histogram",
            "redo_helper_getpage_duration_seconds_count 1",
            "redo_helper_deltas_per_read_bucket{le=\"4\"} 1",
            "redo_helper_deltas_per_read_sum 3.0",
            "redo_helper_worker_panics_total{worker=\"imagegen\"} 0",
            "# TYPE redo_helper_retention_last_duration_seconds gauge",
        ] {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
        assert!(
            text.contains(&format!(
                "redo_helper_build_info{{version=\"{}\",postgresql=\"15\"}} 1",
                env!("CARGO_PKG_VERSION")
            )),
            "{text}"
        );
        assert!(!text.contains("_us") && !text.contains("_ms"), "{text}");
        assert!(!text.contains("redo_helper_up"), "{text}");
    }
}
