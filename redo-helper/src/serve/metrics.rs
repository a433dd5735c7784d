//! `/metrics`: the helper's status in the Prometheus text exposition format.

use super::status::{HelperStatus, RunState};

impl HelperStatus {
    /// The status in the Prometheus text exposition format (`/metrics`).
    pub(crate) fn prometheus(&self) -> String {
        let r = &self.retention;
        let last = r.last_pass.clone().unwrap_or_default();
        let gauges: [(&str, &str, &str, u64); 28] = [
            (
                "redo_helper_up",
                "gauge",
                "1 while streaming",
                u64::from(self.state == RunState::Streaming),
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
                self.flush_lsn.unwrap_or_default().0,
            ),
            (
                "redo_helper_decoded_lsn",
                "gauge",
                "LSN up to which records are decoded and indexed",
                self.decoded_lsn.unwrap_or_default().0,
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
                r.horizon_lsn.0,
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
        // Caught panics of supervised worker threads (always listed, so alerts can use them
        // from the first scrape).
        let panics = crate::sync::supervise::panics();
        out.push_str(
            "# HELP redo_helper_worker_panics_total panics caught in worker threads (each restarted)\n\
             # TYPE redo_helper_worker_panics_total counter\n",
        );
        for worker in ["imagegen", "retention", "wal-upload", "image-upload"] {
            out.push_str(&format!(
                "redo_helper_worker_panics_total{{worker=\"{worker}\"}} {}\n",
                panics.get(worker).copied().unwrap_or(0)
            ));
        }
        // Object storage (`run --object-store`): requests by operation (each part of a
        // multipart upload counts), bytes each way, and how far the bucket's WAL reaches.
        let os = crate::store::remote::counters();
        use crate::store::remote::{KINDS, OPS};
        out.push_str(
            "# HELP redo_helper_object_store_requests_total object store requests by operation and object kind\n\
             # TYPE redo_helper_object_store_requests_total counter\n",
        );
        for (o, op) in OPS.iter().enumerate() {
            for (k, kind) in KINDS.iter().enumerate() {
                out.push_str(&format!(
                    "redo_helper_object_store_requests_total{{op=\"{op}\",kind=\"{kind}\"}} {}\n",
                    os.requests[o][k]
                ));
            }
        }
        out.push_str(
            "# HELP redo_helper_object_store_bytes_total bytes sent to and received from the object store\n\
             # TYPE redo_helper_object_store_bytes_total counter\n",
        );
        for (k, kind) in KINDS.iter().enumerate() {
            for (direction, n) in [
                ("upload", os.bytes_uploaded[k]),
                ("download", os.bytes_downloaded[k]),
            ] {
                out.push_str(&format!(
                    "redo_helper_object_store_bytes_total{{direction=\"{direction}\",kind=\"{kind}\"}} {n}\n"
                ));
            }
        }
        out.push_str(&format!(
            "# HELP redo_helper_object_store_wal_lsn end of the contiguous WAL in the bucket (flush acknowledgements never pass it)\n\
             # TYPE redo_helper_object_store_wal_lsn gauge\n\
             redo_helper_object_store_wal_lsn {}\n\
             # HELP redo_helper_object_store_failing 1 while WAL uploads fail\n\
             # TYPE redo_helper_object_store_failing gauge\n\
             redo_helper_object_store_failing {}\n",
            os.wal_lsn,
            u64::from(os.failing)
        ));
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
