//! Image generation: when a page has accumulated more than `threshold` deltas since its last
//! image, a worker rebuilds it with the Rust redo and stores the image at the LSN of the
//! last delta applied, so later reads replay at most about `threshold` deltas. The decision
//! is per page, driven by its own change rate, not by checkpoints. Longest chains go first.
//!
//! The worker replays the whole chain since the page's previous image anyway, so it also
//! stores the page at every (threshold + 1)-th change along it: when the queue is behind, a
//! hot page's chain grows to hundreds of deltas before its turn, and with an image at its
//! newest change only a read at an older LSN (a replica or `page_at` behind, `check`'s
//! history) would replay them all. With them every read replays at most `threshold` deltas
//! plus those that arrived since the page's last generation.

use crate::store::page_store::{GetPageError, PageAt, PageStore, StartSource};
use crate::sync::{lock, read, recover, write};
use crate::wal::block::{PageKey, RelFileLocator};
use hdrhistogram::Histogram;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::time::Duration;

pub(crate) const DEFAULT_IMAGE_THRESHOLD: u32 = 16;

/// How often image generation syncs the image files.
const IMAGE_SYNC_INTERVAL: Duration = Duration::from_secs(1);

/// Threshold policy: a default and per-relation overrides.
#[derive(Debug, Default)]
pub(crate) struct ThresholdPolicy {
    default: AtomicU32,
    overrides: RwLock<HashMap<RelFileLocator, u32>>,
}

impl ThresholdPolicy {
    pub(crate) fn new(default: u32) -> ThresholdPolicy {
        ThresholdPolicy {
            default: AtomicU32::new(default),
            overrides: RwLock::new(HashMap::new()),
        }
    }

    pub(crate) fn threshold(&self, rel: &RelFileLocator) -> u32 {
        read(&self.overrides)
            .get(rel)
            .copied()
            .unwrap_or_else(|| self.default.load(Ordering::Relaxed))
    }

    /// Sets (Some) or removes (None) a relation's own threshold.
    pub(crate) fn set_override(&self, rel: RelFileLocator, threshold: Option<u32>) {
        let mut o = write(&self.overrides);
        match threshold {
            Some(t) => o.insert(rel, t),
            None => o.remove(&rel),
        };
    }
}

#[derive(Default)]
struct Queue {
    heap: BinaryHeap<(u32, PageKey)>,
    queued: HashSet<PageKey>,
}

/// Counters and histograms for /metrics.
pub(crate) struct ImageGenStats {
    pub images_generated: AtomicU64,
    pub failures: AtomicU64,
    /// Chain length (deltas replayed) when an image was made: quantiles over the process's
    /// life for /status, and the same observations as Prometheus buckets for /metrics.
    pub chain_at_image: Mutex<Histogram<u64>>,
    pub chain_at_image_histogram: prometheus_client::metrics::histogram::Histogram,
}

pub(crate) struct ImageGenerator {
    store: Arc<PageStore>,
    pub policy: ThresholdPolicy,
    queue: Mutex<Queue>,
    wake: Condvar,
    paused: AtomicBool,
    stop: AtomicBool,
    /// Queue depth above which the helper holds back flush acknowledgements.
    pub backpressure_depth: usize,
    pub stats: ImageGenStats,
}

/// 1..=1e6 deltas with 2 significant digits.
pub(crate) fn histogram() -> Histogram<u64> {
    match Histogram::new_with_bounds(1, 1_000_000, 2) {
        Ok(h) => h,
        Err(e) => unreachable!("constant histogram bounds are valid: {e}"),
    }
}

/// Prometheus buckets of a chain length (deltas replayed): 1 to 4096, doubling. The default
/// image threshold is 16, so most chains fall in 1..64; longer ones are the exception.
pub(crate) fn chain_length_histogram() -> prometheus_client::metrics::histogram::Histogram {
    prometheus_client::metrics::histogram::Histogram::new(
        prometheus_client::metrics::histogram::exponential_buckets(1.0, 2.0, 13),
    )
}

impl ImageGenerator {
    pub(crate) fn new(
        store: Arc<PageStore>,
        threshold: u32,
        backpressure_depth: usize,
    ) -> Arc<ImageGenerator> {
        Arc::new(ImageGenerator {
            store,
            policy: ThresholdPolicy::new(threshold),
            queue: Mutex::new(Queue::default()),
            wake: Condvar::new(),
            paused: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            backpressure_depth,
            stats: ImageGenStats {
                images_generated: AtomicU64::new(0),
                failures: AtomicU64::new(0),
                chain_at_image: Mutex::new(histogram()),
                chain_at_image_histogram: chain_length_histogram(),
            },
        })
    }

    /// Called after indexing: queues the page if its chain is over its threshold.
    pub(crate) fn consider(&self, key: &PageKey, deltas_since_image: u32, unreadable: bool) {
        if unreadable || deltas_since_image <= self.policy.threshold(&key.rel) {
            return;
        }
        let mut q = lock(&self.queue);
        if q.queued.insert(*key) {
            q.heap.push((deltas_since_image, *key));
            self.wake.notify_one();
        }
    }

    pub(crate) fn queue_depth(&self) -> usize {
        lock(&self.queue).queued.len()
    }

    pub(crate) fn backpressure(&self) -> bool {
        self.queue_depth() > self.backpressure_depth
    }

    /// Changes the default threshold (SIGHUP); per-relation overrides stay.
    pub(crate) fn set_default_threshold(&self, threshold: u32) {
        self.policy.default.store(threshold, Ordering::Relaxed);
    }

    /// Workers return once done with the page they are on (a clean stop).
    pub(crate) fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
        self.wake.notify_all();
    }

    /// Pausing stops workers from taking new pages (for tests and maintenance).
    pub(crate) fn set_paused(&self, paused: bool) {
        self.paused.store(paused, Ordering::SeqCst);
        self.wake.notify_all();
    }

    pub(crate) fn is_paused(&self) -> bool {
        self.paused.load(Ordering::SeqCst)
    }

    fn next_job(&self) -> Option<PageKey> {
        let mut q = lock(&self.queue);
        loop {
            if self.stop.load(Ordering::SeqCst) {
                return None;
            }
            if !self.paused.load(Ordering::SeqCst)
                && let Some((_, key)) = q.heap.pop()
            {
                q.queued.remove(&key);
                return Some(key);
            }
            q = recover(self.wake.wait_timeout(q, Duration::from_millis(200))).0;
        }
    }

    /// Rebuilds one page at its newest change and stores the image there, and at every
    /// (threshold + 1)-th change of the chain since its previous image (a page whose chain
    /// grew long while it waited in the queue would otherwise have one image at its newest
    /// change only, and a read at an older LSN would replay up to the whole chain). Chains
    /// since the page's newest generated image that a WAL image or re-initialisation closed
    /// get their images along them too.
    fn generate(&self, key: &PageKey) {
        let threshold = self.policy.threshold(&key.rel);
        let (newest, closed) = {
            let idx = read(&self.store.index);
            match idx.page(key) {
                Some(h) if h.unreadable_from.is_none() => (
                    h.changes.last().map(|c| c.lsn),
                    h.closed_chains_longer_than(threshold),
                ),
                _ => (None, Vec::new()),
            }
        };
        let Some(lsn) = newest else { return };
        // Below the headroom kept for retention an image is not written: pages stay
        // readable from the WAL, and the space is retention's (`--disk-reserve`).
        let dir = read(&self.store.images).dir().to_path_buf();
        if crate::store::check_headroom(&dir, crate::store::images::ENTRY_SIZE as u64).is_err() {
            self.stats.failures.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let every = threshold.saturating_add(1);
        // A closed chain's last change is followed by the image or re-initialisation that
        // closed it, so reads after it start there; a read at the last change itself
        // replays the deltas since the last image along the chain, `every` of them when the
        // chain's length is a multiple of `every`: the page is stored at the last change
        // too (unless it already is, a page queued again after a restart).
        for end in closed {
            match self.store.reconstruct_for_images(key, end, every) {
                Ok((r, mut along)) => {
                    if !(r.start == StartSource::GeneratedImage && r.start_lsn == end) {
                        along.push((end, r.page));
                    }
                    if self.store_images(key, &along).is_ok() {
                        self.stats
                            .images_generated
                            .fetch_add(along.len() as u64, Ordering::Relaxed);
                    }
                }
                Err(GetPageError::BeforeRetention { .. }) => {}
                Err(e) => {
                    self.stats.failures.fetch_add(1, Ordering::Relaxed);
                    log::warn!("image generation (a closed chain ending at {end}): {e}");
                }
            }
        }
        match self.store.reconstruct_for_images(key, lsn, every) {
            // Already imaged there (a page queued again after a restart): nothing to add.
            Ok((r, _)) if r.start == StartSource::GeneratedImage && r.start_lsn == lsn => {
                if let Some(h) = write(&self.store.index).page_mut(key) {
                    h.note_generated_image(lsn);
                }
            }
            Ok((r, mut images)) => {
                images.push((lsn, r.page));
                if self.store_images(key, &images).is_ok() {
                    if let Some(h) = write(&self.store.index).page_mut(key) {
                        h.note_generated_image(lsn);
                    }
                    self.stats
                        .images_generated
                        .fetch_add(images.len() as u64, Ordering::Relaxed);
                    let chain = r.deltas_replayed.max(1);
                    let _ = lock(&self.stats.chain_at_image).record(u64::from(chain));
                    self.stats
                        .chain_at_image_histogram
                        .observe(f64::from(chain));
                }
            }
            // The page's newest change went behind the retention horizon while it waited:
            // retention rebased it, nothing to do.
            Err(GetPageError::BeforeRetention { .. }) => {}
            Err(e) => {
                self.stats.failures.fetch_add(1, Ordering::Relaxed);
                log::warn!("image generation: {e}");
            }
        }
    }

    /// Appends images of `key` (LSN, page), oldest first.
    fn store_images(&self, key: &PageKey, images: &[PageAt]) -> Result<(), ()> {
        let mut store = write(&self.store.images);
        images
            .iter()
            .try_for_each(|(at, page)| store.put(key, *at, page))
            .map_err(|e| {
                self.stats.failures.fetch_add(1, Ordering::Relaxed);
                log::error!("storing images of {key}: {e}");
            })
    }

    /// Starts `n` worker threads.
    pub(crate) fn spawn_workers(self: &Arc<Self>, n: usize) -> Vec<std::thread::JoinHandle<()>> {
        (0..n.max(1))
            .map(|i| {
                let me = Arc::clone(self);
                crate::sync::supervise::spawn(format!("imagegen-{i}"), "imagegen", move || {
                    // Images can always be rebuilt from the WAL and a torn entry fails its
                    // CRC at start-up, so they are synced for restart time's sake only: at
                    // most once per interval (the OS writes back the rest).
                    let mut last_sync = std::time::Instant::now();
                    while let Some(key) = me.next_job() {
                        crate::sync::supervise::test_hook("imagegen");
                        me.generate(&key);
                        if last_sync.elapsed() >= IMAGE_SYNC_INTERVAL {
                            let _ = read(&me.store.images).sync();
                            last_sync = std::time::Instant::now();
                        }
                    }
                })
                .unwrap_or_else(|e| panic!("cannot start an image generation thread: {e}"))
            })
            .collect()
    }

    /// Image lag: over pages waiting for an image, the largest distance between their newest
    /// delta and their newest image (or chain start).
    pub(crate) fn image_lag_bytes(&self) -> u64 {
        let keys: Vec<PageKey> = lock(&self.queue).queued.iter().copied().collect();
        let idx = read(&self.store.index);
        keys.iter()
            .filter_map(|k| {
                let h = idx.page(k)?;
                let newest = h.changes.last()?.lsn;
                let start = h
                    .start_point(newest)
                    .map(|(l, _)| l)
                    .or_else(|| h.changes.first().map(|c| c.lsn))?;
                Some(newest.0.saturating_sub(start.0))
            })
            .max()
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_relation_threshold_overrides_the_default() {
        let p = ThresholdPolicy::new(16);
        let a = RelFileLocator {
            spc_oid: 1663,
            db_oid: 5,
            rel_number: 100,
        };
        let b = RelFileLocator {
            rel_number: 101,
            ..a
        };
        p.set_override(a, Some(4));
        assert_eq!((p.threshold(&a), p.threshold(&b)), (4, 16));
        p.set_override(a, None);
        assert_eq!(p.threshold(&a), 16);
    }

    #[test]
    fn longest_chain_first() {
        let mut q = Queue::default();
        let key = |b| PageKey {
            rel: RelFileLocator::default(),
            fork: crate::wal::block::ForkNumber(0),
            block: b,
        };
        for (chain, b) in [(17, 1), (40, 2), (20, 3)] {
            q.queued.insert(key(b));
            q.heap.push((chain, key(b)));
        }
        let order: Vec<u32> = std::iter::from_fn(|| q.heap.pop().map(|(_, k)| k.block)).collect();
        assert_eq!(order, vec![2, 3, 1]);
    }
}
