//! Bulk replay of the store's WAL over its base pages, with the Rust redo, page by page:
//! what `redo-helper verify` runs (and `verify --bench` measures).
//!
//! Records are decoded once, on the calling thread, a batch at a time; with several
//! workers the pages are partitioned among the threads ([`partition`]), so each page's
//! records are applied by one thread in WAL order and the result equals a serial replay.
//! Pages come from the base backup's files ([`pages`]) on first use.
//!
//! With `check_consistency`, every page a record carries a `wal_consistency_checking` image
//! for (an image of the page after the record, without BKPIMAGE_APPLY) is compared, masked
//! with the rmgr's mask, with the replayed page: PostgreSQL's own
//! `verifyBackupPageConsistency` (`access/transam/xlogrecovery.c`).
//!
//! Pages changed by rmgrs the engine does not replay are marked unreadable from that record
//! on (until an applicable image) and skipped, with the first error kept for the report.
//!
//! A database copy (`XLOG_DBASE_CREATE_FILE_COPY`) copies the template's pages as replayed up
//! to the copy into the new directory ([`PageSet::copy_database`]); with several workers the
//! copy's pages are owned by the threads that own the template's ([`DatabaseAliases`]).
//!
//! A visibility-map page restored from an image whose hole covered its bitmap (`CREATE
//! DATABASE` with the WAL_LOG strategy) lacks bits PostgreSQL's WAL does not carry: such a
//! difference is counted as `vm_bits_not_in_wal`, not as a mismatch
//! (`redo::vm::bits_only_missing_in_hole`).

pub(crate) mod pages;
mod partition;

pub(crate) use pages::PageSet;
use partition::{DatabaseAliases, HOT_SAMPLE, Partition, hot_pages};

use crate::redo::compare::compare_masked;
use crate::redo::mask::PageKind;
use crate::redo::page::Page;
use crate::redo::pagetable::{PageCopy, key_hash, prefetch};
use crate::redo::smgr::RelationChange;
use crate::redo::vm::bits_only_missing_in_hole;
use crate::redo::{
    BlockOutcome, RedoContext, RedoError, RedoErrorKind, apply_block, apply_implicit,
    implicit_changes, relation_changes,
};
use crate::store::base::BaseFiles;
use crate::wal::block::{ForkNumber, PageKey};
use crate::wal::page::{BLCKSZ, Lsn};
use crate::wal::reader::WalFileReader;
use crate::wal::record::DecodedRecord;
use crate::wal::rmgr::RmgrId;
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// How to replay.
#[derive(Debug, Clone, Default)]
pub(crate) struct ReplayOptions {
    pub ctx: RedoContext,
    /// Compare every page with the records' consistency images (off for benchmarks).
    pub check_consistency: bool,
    /// Collect time per record type.
    pub timing: bool,
    /// Replay threads (pages are partitioned among them; records are decoded once on the
    /// calling thread). 0 or 1: replay on the calling thread.
    pub workers: usize,
    /// Hand pages over from the decoding thread every this many batches, whatever the
    /// threads' busy times (tests exercise the hand-over with it). With this or
    /// `take_back_every` set, the forced moves are the only ones.
    pub hand_over_every: Option<usize>,
    /// Take pages back to the decoding thread every this many batches, whatever the
    /// threads' busy times (tests exercise the take-back with it).
    pub take_back_every: Option<usize>,
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum ReplayError {
    #[error("reading WAL: {0}")]
    Wal(#[from] crate::wal::WalError),
    #[error("reading {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Per record type cost (for `--timing`).
#[derive(Debug, Clone, Default)]
pub(crate) struct TypeCost {
    pub records: u64,
    pub bytes: u64,
    pub time: Duration,
}

/// What a replay did and found.
#[derive(Debug, Clone, Default)]
pub(crate) struct ReplaySummary {
    pub start: Lsn,
    pub end: Lsn,
    pub records: u64,
    pub wal_bytes: u64,
    /// Page changes applied (block references and implicit pages).
    pub page_changes: u64,
    /// Pages compared with a consistency image.
    pub pages_verified: u64,
    pub mismatches: u64,
    /// Visibility-map pages that differed from their consistency image only by bits the
    /// WAL never carried (see `redo::vm::bits_only_missing_in_hole`): not mismatches.
    pub vm_bits_not_in_wal: u64,
    pub first_vm_bits_not_in_wal: Option<String>,
    /// Pages copied by database copies (`XLOG_DBASE_CREATE_FILE_COPY`).
    pub pages_copied: u64,
    /// Pages unreadable at the end of the replay.
    pub unreadable_pages: u64,
    /// Records refused on a page (unsupported rmgr), counted per page change.
    pub unsupported_changes: u64,
    /// Redo errors on pages (malformed record, page not as expected).
    pub redo_errors: u64,
    pub first_mismatch: Option<String>,
    pub first_unreadable: Option<String>,
    pub first_redo_error: Option<String>,
    pub replay_time: Duration,
    /// Per record type (`Heap/INSERT`): records, bytes and (with `timing`) time, without
    /// the base pages' loads.
    pub per_type: BTreeMap<String, TypeCost>,
    /// Pages loaded from the base backup, and (with `timing`) the time spent loading them.
    pub base_pages_loaded: u64,
    pub base_load_time: Duration,
    /// Parallel replay: hand-overs of page shares from the decoding thread, and the shares
    /// (of 256) it kept.
    pub hand_overs: u64,
    /// Times the decoding thread took shares back from a busier thread.
    pub take_backs: u64,
    pub decoder_shares: Option<usize>,
}

/// Replays `reader`'s records (from `start` to `end`, which the reader was opened for) over
/// the base pages in `base`; returns the summary and the replayed pages.
pub(crate) fn replay(
    reader: &mut WalFileReader,
    base: BaseFiles,
    start: Lsn,
    end: Lsn,
    opts: &ReplayOptions,
) -> Result<(ReplaySummary, PageSet), ReplayError> {
    let mut set = PageSet::new(base);
    let mut sum = ReplaySummary {
        start,
        end,
        ..Default::default()
    };
    let mut per_type = TypeCosts::default();
    let t0 = Instant::now();
    if opts.workers > 1 {
        set = replay_parallel(reader, set, &mut sum, &mut per_type, opts)?;
    } else {
        // Another thread faults in the page buffers' memory ahead of use: measured on a
        // pgbench WAL (119,000 records loading 14,000 base pages), faulting that memory in
        // took ~30% of the serial replay's time (see `PageArena::supply_ahead`).
        set.pages.supply_ahead();
        // Records are decoded a batch at a time (buffers reused) so the replay can prefetch
        // the pages of the records ahead.
        let mut r = Replayer::new(set, opts, 0, Partition::serial());
        let mut batch: Vec<DecodedRecord> = Vec::new();
        loop {
            let more = fill_batch(reader, &mut batch, SERIAL_BATCH)?;
            for rec in &batch {
                sum.records += 1;
                sum.wal_bytes += rec.total_len() as u64;
                let c = per_type.at(rec.rmid(), rec.info());
                c.records += 1;
                c.bytes += rec.total_len() as u64;
            }
            r.replay_batch(&batch, None)?;
            if !more {
                break;
            }
        }
        set = r.finish(&mut sum, &mut per_type);
    }
    sum.replay_time = t0.elapsed();
    // Record type names are the version's (17 renamed Heap2's prune records); the decoder
    // learnt it from the pages read.
    let version = reader.decoder().config().version.unwrap_or_default();
    for ((rmid, info), c) in per_type.into_used() {
        let name = format!(
            "{}/{}",
            RmgrId(rmid).name(),
            crate::wal::rmgr::record_type_name_of(version, rmid, info)
        );
        let e = sum.per_type.entry(name).or_default();
        e.records += c.records;
        e.bytes += c.bytes;
        e.time += c.time;
    }
    sum.unreadable_pages = set.unreadable_pages();
    Ok((sum, set))
}

/// A fast hasher for page keys: page keys are small and trusted (we build them), so the
/// DoS-resistant default hasher only costs time on every block reference. The fields are
/// combined FxHash-style and the result goes through MurmurHash3's 64-bit finaliser: the
/// hash table takes its bucket index from the low bits and its tag from the top seven,
/// and both must change with the block number (keys of one relation differ only there).
#[derive(Default, Clone, Copy)]
pub(crate) struct PageKeyHasher(u64);

impl std::hash::Hasher for PageKeyHasher {
    #[inline]
    fn finish(&self) -> u64 {
        let mut h = self.0;
        h ^= h >> 33;
        h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
        h ^= h >> 33;
        h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        h ^ (h >> 33)
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.write_u32(*b as u32);
        }
    }
    #[inline]
    fn write_u32(&mut self, v: u32) {
        self.0 = (self.0.rotate_left(5) ^ v as u64).wrapping_mul(0x517c_c1b7_2722_0a95);
    }
    #[inline]
    fn write_u8(&mut self, v: u8) {
        self.write_u32(v as u32)
    }
}

type FastMap<K, V> = HashMap<K, V, std::hash::BuildHasherDefault<PageKeyHasher>>;

/// Costs by (rmgr, info & 0xF0), counted for every record on the decoding thread: a flat
/// table of 256 resource managers by 16 record kinds (128 KB), indexed without hashing.
struct TypeCosts(Vec<TypeCost>);

impl Default for TypeCosts {
    fn default() -> Self {
        TypeCosts(vec![TypeCost::default(); 256 * 16])
    }
}

impl TypeCosts {
    #[inline]
    fn at(&mut self, rmid: u8, info: u8) -> &mut TypeCost {
        &mut self.0[(rmid as usize) << 4 | (info >> 4) as usize]
    }

    /// The record types seen or timed, as ((rmgr, info & 0xF0), cost).
    fn into_used(self) -> impl Iterator<Item = ((u8, u8), TypeCost)> {
        self.0
            .into_iter()
            .enumerate()
            .filter(|(_, c)| c.records > 0 || !c.time.is_zero())
            .map(|(i, c)| (((i >> 4) as u8, ((i & 0xF) << 4) as u8), c))
    }
}
/// The next record; false at the end of the range or of the archive.
fn next_record(reader: &mut WalFileReader, rec: &mut DecodedRecord) -> Result<bool, ReplayError> {
    match reader.next_record_into(rec) {
        Ok(more) => Ok(more),
        // The archive ends where the helper stopped receiving: stop there.
        Err(crate::wal::WalError::EndOfWal { .. }) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Decodes up to `n` records into `batch`, reusing the records already there (their
/// buffers) and truncating the rest; false when the WAL range ended.
fn fill_batch(
    reader: &mut WalFileReader,
    batch: &mut Vec<DecodedRecord>,
    n: usize,
) -> Result<bool, ReplayError> {
    let mut i = 0;
    while i < n {
        if i == batch.len() {
            batch.push(DecodedRecord::default());
        }
        if !next_record(reader, &mut batch[i])? {
            batch.truncate(i);
            return Ok(false);
        }
        i += 1;
    }
    batch.truncate(i);
    Ok(true)
}

/// One record in 8 is timed for the per-type costs. The choice follows the top bits of a
/// multiplicative hash of the record number: a fixed stride would alias with workloads
/// whose transactions write a fixed sequence of records (pgbench writes ~8 per transaction).
fn sampled(i: u64) -> bool {
    i.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 61 == 0
}

/// Records per message to the replay workers.
const BATCH: usize = 512;
/// Records per batch of the serial replay.
const SERIAL_BATCH: usize = 64;
/// Prefetch distances, in page references ahead of the one being applied: the hash bucket
/// first, then (once the bucket is in cache) the page itself.
const PREFETCH_BUCKET: usize = 12;
const PREFETCH_PAGE: usize = 6;
/// How many records ahead the decoded records themselves are prefetched.
const RECORD_AHEAD: usize = 4;
/// One replay thread: its pages (those `owner` gives it) and its counters.
struct Replayer<'o> {
    set: PageSet,
    sum: ReplaySummary,
    per_type: TypeCosts,
    image: Box<Page>,
    opts: &'o ReplayOptions,
    worker: usize,
    part: Partition,
    /// Records replayed (for timing samples).
    seen: u64,
    /// Page references of the batch being replayed (key, hash), and where each record's
    /// start: the prefetch schedule.
    refs: Vec<(PageKey, u64)>,
    starts: Vec<u32>,
    /// Copied databases' pages are owned as their template's.
    aliases: DatabaseAliases,
}

impl<'o> Replayer<'o> {
    fn new(mut set: PageSet, opts: &'o ReplayOptions, worker: usize, part: Partition) -> Self {
        set.loads.timed = opts.timing;
        Replayer {
            set,
            sum: ReplaySummary::default(),
            per_type: TypeCosts::default(),
            image: Box::new([0u8; BLCKSZ]),
            opts,
            worker,
            part,
            seen: 0,
            refs: Vec::new(),
            starts: Vec::new(),
            aliases: DatabaseAliases::default(),
        }
    }

    /// Replays `batch` (only the records at `which`, if given), prefetching the hash
    /// buckets and pages of the records ahead.
    fn replay_batch(
        &mut self,
        batch: &[DecodedRecord],
        which: Option<&[u32]>,
    ) -> Result<(), ReplayError> {
        let count = which.map_or(batch.len(), |w| w.len());
        let rec_at = |i: usize| match which {
            Some(w) => &batch[w[i] as usize],
            None => &batch[i],
        };
        self.refs.clear();
        self.starts.clear();
        for i in 0..count {
            // The records were decoded on another core: fetch the block references and the
            // payload of the records ahead while this one is scanned.
            if i + RECORD_AHEAD < count {
                let ahead = rec_at(i + RECORD_AHEAD);
                prefetch(ahead.blocks().as_ptr() as *const u8);
                let raw = ahead.raw();
                prefetch(raw.as_ptr());
                prefetch(raw.as_ptr().wrapping_add(64));
                prefetch(ahead.main_data().as_ptr());
            }
            self.starts.push(self.refs.len() as u32);
            for b in rec_at(i).blocks() {
                let key = b.page_key();
                let h = key_hash(&key);
                if self.aliases.owner(&self.part, &key, h) == self.worker {
                    self.refs.push((key, h));
                }
            }
        }
        let (mut next_bucket, mut next_page) = (0usize, 0usize);
        for i in 0..count {
            let rec = rec_at(i);
            let at = self.starts[i] as usize;
            let end = (at + PREFETCH_BUCKET).min(self.refs.len());
            while next_bucket < end {
                self.set.pages.prefetch_entry(self.refs[next_bucket].1);
                next_bucket += 1;
            }
            let end = (at + PREFETCH_PAGE).min(self.refs.len());
            while next_page < end {
                let (key, h) = &self.refs[next_page];
                self.set.pages.prefetch_page(key, *h);
                next_page += 1;
            }
            self.seen += 1;
            // Per-type cost is sampled (one record in 8) to keep the clock off the hot path.
            let tr = (self.opts.timing && sampled(self.seen))
                .then(|| (Instant::now(), self.set.loads.time));
            replay_record(
                rec,
                &mut self.set,
                &mut self.sum,
                self.opts,
                &mut self.image,
                Owner {
                    worker: self.worker,
                    part: &self.part,
                    aliases: &mut self.aliases,
                },
            )?;
            if let Some((tr, loading_before)) = tr {
                let loading = self.set.loads.time.saturating_sub(loading_before);
                self.per_type.at(rec.rmid(), rec.info()).time +=
                    tr.elapsed().saturating_sub(loading) * 8;
            }
        }
        Ok(())
    }

    /// Takes the pages a worker gave back, then applies this thread's part of the batches
    /// routed while they were on their way, in order.
    fn apply_given_back(
        &mut self,
        copies: Vec<PageCopy>,
        own_later: &mut std::collections::VecDeque<(std::sync::Arc<Vec<DecodedRecord>>, Vec<u32>)>,
    ) -> Result<(), ReplayError> {
        for c in copies {
            self.set.pages.insert_copy(c);
        }
        while let Some((b, own)) = own_later.pop_front() {
            self.replay_batch(&b, Some(&own))?;
        }
        Ok(())
    }

    /// Adds this thread's counters to `sum` and `per_type`; returns its pages.
    fn finish(self, sum: &mut ReplaySummary, per_type: &mut TypeCosts) -> PageSet {
        let w = self.sum;
        sum.page_changes += w.page_changes;
        sum.pages_verified += w.pages_verified;
        sum.mismatches += w.mismatches;
        sum.vm_bits_not_in_wal += w.vm_bits_not_in_wal;
        sum.pages_copied += w.pages_copied;
        sum.first_vm_bits_not_in_wal = sum
            .first_vm_bits_not_in_wal
            .take()
            .or(w.first_vm_bits_not_in_wal);
        sum.unsupported_changes += w.unsupported_changes;
        sum.redo_errors += w.redo_errors;
        sum.first_mismatch = sum.first_mismatch.take().or(w.first_mismatch);
        sum.first_unreadable = sum.first_unreadable.take().or(w.first_unreadable);
        sum.first_redo_error = sum.first_redo_error.take().or(w.first_redo_error);
        for ((rmid, info), c) in self.per_type.into_used() {
            per_type.at(rmid, info).time += c.time;
        }
        sum.base_pages_loaded += self.set.loads.pages;
        sum.base_load_time += self.set.loads.time;
        self.set
    }
}

/// The workers that need `rec`: the owners of its block references and implicit pages;
/// all of them when it changes which pages exist (drops, truncations, database copies,
/// which also change `aliases`, the decoding thread's routing copy).
fn route(rec: &DecodedRecord, part: &Partition, aliases: &mut DatabaseAliases) -> u64 {
    let mut mask = 0u64;
    for b in rec.blocks() {
        let key = b.page_key();
        mask |= 1 << aliases.owner(part, &key, key_hash(&key));
    }
    if matches!(
        rec.rmid(),
        crate::wal::rmgr::RM_HEAP_ID | crate::wal::rmgr::RM_HEAP2_ID | crate::wal::rmgr::RM_SMGR_ID
    ) {
        for (key, _) in implicit_changes(rec) {
            mask |= 1 << aliases.owner(part, &key, key_hash(&key));
        }
    }
    let changes = relation_changes(rec);
    if !changes.is_empty() {
        mask = u64::MAX;
    }
    for ch in changes {
        if let RelationChange::CopyDatabase { dst, src } = ch {
            aliases.note_copy(dst, src);
        }
    }
    mask
}

/// The balance between the decoding thread and the others. Every thread should be busy
/// for the same time: the decoding thread decodes and routes every record besides applying
/// its share of the pages, and what a share costs changes along the WAL (at the start of a
/// range most records load their page from the base backup or carry a full-page image,
/// whose checksum is the decoding thread's work; later GIN inserts cost ~1 us a record,
/// pgbench's ~0.3 us). So every [`BALANCE_WINDOW`] batches the decoding thread compares
/// the time it was busy (not blocked on a full queue, not waiting for pages) with the time
/// each worker spent applying records, and when one side was busier by more than
/// [`BALANCE_SLACK`] it moves shares: hands some of its own over (with their pages, at a
/// batch boundary: no thread waits for another), or, with twice the slack (the pages are
/// copied back), takes some back from the busiest worker, which applies what it was sent,
/// then returns those pages as copies while this thread decodes on. How many: half the
/// difference, at the worker's cost per share ([`shares_to_move`]), at most
/// [`BALANCE_MAX_STEP`].
///
/// Why busy times and not queue depths: a worker's queue is empty or full most of the
/// time whichever side is slower by a little, and bursts (a run of page loads, a thread
/// preempted) fill it for tens of batches; on pgbench WAL, a rule on queue depth moved
/// shares tens of times a run, or pinned the decoding thread at half of them while the
/// worker idled 40% of the time. Windows of 16 batches (5 ms) and steps of 32 shares
/// moved shares back and forth tens of times too: a window's times are noisy.
const BALANCE_WINDOW: usize = 64;
/// Imbalance (of the busier side's time) tolerated before shares move.
const BALANCE_SLACK: f64 = 0.10;
/// Shares moved at a time, at most.
const BALANCE_MAX_STEP: usize = 8;
/// Shares the decoding thread keeps, at least.
const MIN_DECODER_SHARES: usize = 8;

/// Shares to move from the busier side to the other so that both are busy for the same
/// time: half the difference, at `per_share` (a worker's busy time per share it owns),
/// between 1 and [`BALANCE_MAX_STEP`].
fn shares_to_move(busier: Duration, other: Duration, per_share: Duration) -> usize {
    let half = (busier.saturating_sub(other)).as_secs_f64() / 2.0;
    let per = per_share.as_secs_f64();
    if per <= 0.0 {
        return BALANCE_MAX_STEP;
    }
    ((half / per).round() as usize).clamp(1, BALANCE_MAX_STEP)
}

/// One message to a replay worker: a batch and the positions of the records it needs,
/// and, when the balance changed, the new partition and the pages handed over to it.
struct Work {
    batch: std::sync::Arc<Vec<DecodedRecord>>,
    which: Vec<u32>,
    part: Option<Partition>,
    pages: Vec<crate::redo::pagetable::Slot>,
    /// Give the pages the new partition takes away back, as copies, on the worker's reply
    /// channel (before anything else of this message; `batch` is empty).
    give_back: bool,
}

/// Parallel replay over `opts.workers` threads, this one included: this thread decodes
/// batches of records, sends each other thread the batch with the positions of the records
/// it needs, and replays its own share of the pages (as much as keeps every thread equally
/// busy: see [`BALANCE_WINDOW`]); each thread applies the records' changes to the pages it
/// owns (relation drops and truncations to its own pages too). Batches come back for reuse
/// once every thread is done with them. Returns the merged page set.
fn replay_parallel(
    reader: &mut WalFileReader,
    base_set: PageSet,
    sum: &mut ReplaySummary,
    per_type: &mut TypeCosts,
    opts: &ReplayOptions,
) -> Result<PageSet, ReplayError> {
    use std::collections::VecDeque;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::mpsc::{TryRecvError, sync_channel};
    let n = opts.workers.clamp(1, 64);
    // The first batches are decoded before the workers start: the hot pages among them
    // are dealt one by one.
    let mut pending = VecDeque::new();
    let mut more = true;
    let mut decoded = 0;
    while more && decoded < HOT_SAMPLE {
        let mut b = Vec::with_capacity(BATCH);
        more = fill_batch(reader, &mut b, BATCH)?;
        decoded += b.len();
        pending.push_back(b);
    }
    let hot = hot_pages(pending.iter().flatten());
    let mut part = Partition::new(n, 256 / n, &hot);
    let base = base_set.base.clone();
    // Declared outside the scope: the workers adopt pages whose buffers live in this
    // thread's arena, and the scope joins them (even on a panic) before it is dropped.
    let mut mine = Replayer::new(base_set, opts, 0, part);
    // Page owners as the records routed so far left them (`mine.aliases` follows the records
    // this thread has applied).
    let mut route_aliases = DatabaseAliases::default();
    // Nanoseconds each worker spent applying what it was sent (index 0: unused).
    let busy: Vec<AtomicU64> = (0..n).map(|_| AtomicU64::new(0)).collect();
    let workers = std::thread::scope(|scope| -> Result<Vec<Replayer>, ReplayError> {
        let (back_tx, back_rx) = sync_channel::<Vec<DecodedRecord>>(16);
        let mut senders = Vec::with_capacity(n);
        let mut given_back = Vec::with_capacity(n);
        let mut handles = Vec::with_capacity(n);
        for w in 1..n {
            let (tx, rx) = sync_channel::<Work>(8);
            senders.push(tx);
            let (give_tx, give_rx) = sync_channel::<Vec<PageCopy>>(1);
            given_back.push(give_rx);
            let base = base.clone();
            let back = back_tx.clone();
            let busy = &busy[w];
            handles.push(
                std::thread::Builder::new()
                    .name(format!("redo-{w}"))
                    .spawn_scoped(scope, move || -> Result<Replayer, ReplayError> {
                        let mut r = Replayer::new(PageSet::new(base), opts, w, part);
                        while let Ok(work) = rx.recv() {
                            let t0 = Instant::now();
                            if let Some(p) = work.part {
                                r.part = p;
                            }
                            if work.give_back {
                                let part = r.part;
                                let aliases = &r.aliases;
                                let gone = r
                                    .set
                                    .pages
                                    .take_where(|k| aliases.owner(&part, k, key_hash(k)) != w);
                                // Their buffers stay in their arenas, unused, to the end.
                                let copies = gone.iter().map(|s| s.to_copy()).collect();
                                if give_tx.send(copies).is_err() {
                                    break;
                                }
                            }
                            if !work.pages.is_empty() {
                                // SAFETY: the pages' buffers are in the decoding thread's
                                // arena, which outlives this thread (see `mine`) and absorbs
                                // this table at the end.
                                unsafe { r.set.pages.adopt(work.pages) };
                            }
                            r.replay_batch(&work.batch, Some(&work.which))?;
                            busy.fetch_add(t0.elapsed().as_nanos() as u64, Ordering::Relaxed);
                            if let Some(b) = Arc::into_inner(work.batch) {
                                let _ = back.try_send(b);
                            }
                        }
                        Ok(r)
                    })
                    .map_err(|source| ReplayError::Io {
                        path: PathBuf::from("replay worker"),
                        source,
                    })?,
            );
        }
        drop(back_tx);
        let mut spare: Option<Vec<DecodedRecord>> = None;
        let mut failed = false;
        let mut result = Ok(());
        let (mut batches, mut handovers, mut take_backs) = (0usize, 0u64, 0u64);
        // The balance window: when it started, the time this thread waited in it (on a full
        // queue, for given-back pages), and the workers' busy counters at its start.
        let mut window_start = Instant::now();
        let mut waited = Duration::ZERO;
        let mut busy_at_start = vec![0u64; n];
        // A take-back under way: the worker asked, whose copies have not arrived yet.
        // Meanwhile this thread decodes and routes on, and keeps its own part of each batch
        // to apply, in WAL order, once the pages are here (`own_later`).
        let mut awaiting: Option<usize> = None;
        let mut own_later: VecDeque<(Arc<Vec<DecodedRecord>>, Vec<u32>)> = VecDeque::new();
        loop {
            let batch = match pending.pop_front() {
                Some(b) => b,
                None if !more => break,
                None => {
                    let mut b = spare
                        .take()
                        .or_else(|| back_rx.try_recv().ok())
                        .unwrap_or_else(|| Vec::with_capacity(BATCH));
                    match fill_batch(reader, &mut b, BATCH) {
                        Ok(m) => more = m,
                        Err(e) => {
                            result = Err(e);
                            break;
                        }
                    }
                    b
                }
            };
            if batch.is_empty() {
                continue;
            }
            // Rebalance at this batch boundary: this thread has applied everything before
            // it (no take-back is under way), the workers have not started on it.
            let mut pages: Vec<Vec<crate::redo::pagetable::Slot>> =
                (1..n).map(|_| Vec::new()).collect();
            let mut new_part = None;
            batches += 1;
            let (hand_over, take_back) = if awaiting.is_some() {
                (None, None)
            } else if opts.hand_over_every.is_some() || opts.take_back_every.is_some() {
                // Forced moves (tests): hand over every so many batches, take back from
                // the worker with the most shares every so many.
                let every = |e: Option<usize>| e.is_some_and(|k| batches % k.max(1) == 0);
                if every(opts.take_back_every) {
                    let from = (1..n).max_by_key(|&w| part.shares_of(w));
                    (None, from.map(|w| (w, BALANCE_MAX_STEP)))
                } else if every(opts.hand_over_every) {
                    (Some(BALANCE_MAX_STEP), None)
                } else {
                    (None, None)
                }
            } else if batches % BALANCE_WINDOW == 0 {
                let mine_busy = window_start.elapsed().saturating_sub(waited);
                let worker_busy: Vec<Duration> = (1..n)
                    .map(|w| {
                        let now = busy[w].load(Ordering::Relaxed);
                        let d = now.saturating_sub(busy_at_start[w]);
                        busy_at_start[w] = now;
                        Duration::from_nanos(d)
                    })
                    .collect();
                window_start = Instant::now();
                waited = Duration::ZERO;
                let (busiest, most) = worker_busy
                    .iter()
                    .enumerate()
                    .max_by_key(|(_, d)| **d)
                    .map(|(i, d)| (i + 1, *d))
                    .unwrap_or((1, Duration::ZERO));
                let mean = worker_busy.iter().sum::<Duration>() / (n as u32 - 1).max(1);
                let per_share = most / part.shares_of(busiest).max(1) as u32;
                if mine_busy.as_secs_f64() * (1.0 - BALANCE_SLACK) > mean.as_secs_f64() {
                    (Some(shares_to_move(mine_busy, mean, per_share)), None)
                } else if most.as_secs_f64() * (1.0 - 2.0 * BALANCE_SLACK) > mine_busy.as_secs_f64()
                {
                    (
                        None,
                        Some((busiest, shares_to_move(most, mine_busy, per_share))),
                    )
                } else {
                    (None, None)
                }
            } else {
                (None, None)
            };
            if let Some((w, step)) = take_back
                && let Some(p) = part.take_back(w, step, 256 / n)
            {
                // The worker applies everything it was sent first, then sends the pages
                // back as copies; this batch is the first routed by `p`.
                let work = Work {
                    batch: Arc::new(Vec::new()),
                    which: Vec::new(),
                    part: Some(p),
                    pages: Vec::new(),
                    give_back: true,
                };
                if senders[w - 1].send(work).is_err() {
                    failed = true;
                }
                awaiting = Some(w);
                part = p;
                mine.part = p;
                // Every worker is told the new partition, as at a hand-over, so that all
                // threads agree on every page's owner (the others' shares did not move).
                new_part = Some(p);
                take_backs += 1;
            } else if let Some(step) = hand_over
                && let Some(p) = part.hand_over(n, step, MIN_DECODER_SHARES)
            {
                let aliases = &mine.aliases;
                for slot in mine
                    .set
                    .pages
                    .take_where(|k| aliases.owner(&p, k, key_hash(k)) != 0)
                {
                    let w = aliases.owner(&p, &slot.key, key_hash(&slot.key));
                    pages[w - 1].push(slot);
                }
                part = p;
                mine.part = p;
                new_part = Some(p);
                handovers += 1;
            }
            let mut which: Vec<Vec<u32>> = (0..n).map(|_| Vec::with_capacity(BATCH)).collect();
            for (i, rec) in batch.iter().enumerate() {
                sum.records += 1;
                sum.wal_bytes += rec.total_len() as u64;
                let c = per_type.at(rec.rmid(), rec.info());
                c.records += 1;
                c.bytes += rec.total_len() as u64;
                let mask = route(rec, &part, &mut route_aliases);
                for (w, list) in which.iter_mut().enumerate() {
                    if mask & (1 << w) != 0 {
                        list.push(i as u32);
                    }
                }
            }
            let b = Arc::new(batch);
            let mut lists = which.into_iter();
            let own = lists.next().unwrap_or_default();
            for ((tx, list), pages) in senders.iter().zip(lists).zip(pages) {
                let work = Work {
                    batch: b.clone(),
                    which: list,
                    part: new_part,
                    pages,
                    give_back: false,
                };
                let t = Instant::now();
                // A worker that stopped: its error, reported at join, comes first
                // (else `worker_stopped`).
                if tx.send(work).is_err() {
                    failed = true;
                }
                waited += t.elapsed();
            }
            if failed {
                break;
            }
            if let Some(w) = awaiting {
                own_later.push_back((b, own));
                let copies = match given_back[w - 1].try_recv() {
                    Ok(c) => c,
                    Err(TryRecvError::Empty) => continue,
                    Err(TryRecvError::Disconnected) => {
                        result = Err(worker_stopped());
                        break;
                    }
                };
                awaiting = None;
                if let Err(e) = mine.apply_given_back(copies, &mut own_later) {
                    result = Err(e);
                    break;
                }
                // The next window measures the new balance, not the catching up.
                window_start = Instant::now();
                waited = Duration::ZERO;
                for (w, at) in busy_at_start.iter_mut().enumerate().skip(1) {
                    *at = busy[w].load(Ordering::Relaxed);
                }
                continue;
            }
            if let Err(e) = mine.replay_batch(&b, Some(&own)) {
                result = Err(e);
                break;
            }
            spare = Arc::into_inner(b);
        }
        // A take-back still under way: its pages, then this thread's part of the batches
        // routed since.
        if let Some(w) = awaiting
            && result.is_ok()
            && !failed
        {
            match given_back[w - 1].recv() {
                Ok(copies) => {
                    if let Err(e) = mine.apply_given_back(copies, &mut own_later) {
                        result = Err(e);
                    }
                }
                // The worker stopped: its error, reported at join, comes first; this one
                // keeps the replay from ending as if it were complete.
                Err(_) => result = Err(worker_stopped()),
            }
        }
        sum.hand_overs = handovers;
        sum.take_backs = take_backs;
        sum.decoder_shares = Some(part.decoder_shares());
        drop(senders);
        // Every worker is joined before an error is returned (the scope would join them
        // anyway); the first error wins, a worker's before this thread's.
        let mut workers = Vec::with_capacity(n);
        let mut first_err = None;
        for h in handles {
            match h.join() {
                Ok(Ok(r)) => workers.push(r),
                Ok(Err(e)) => {
                    first_err.get_or_insert(e);
                }
                Err(_) => {
                    first_err.get_or_insert(ReplayError::Io {
                        path: PathBuf::from("replay worker"),
                        source: std::io::Error::other("replay worker panicked"),
                    });
                }
            }
        }
        if let Some(e) = first_err {
            return Err(e);
        }
        result?;
        // A send found a worker gone: whatever it applied, this replay is not complete.
        if failed {
            return Err(worker_stopped());
        }
        Ok(workers)
    })?;
    let mut merged = mine.finish(sum, per_type);
    for r in workers {
        merged.pages.absorb(r.finish(sum, per_type).pages);
    }
    Ok(merged)
}

fn worker_stopped() -> ReplayError {
    ReplayError::Io {
        path: PathBuf::from("replay worker"),
        source: std::io::Error::other("replay worker stopped"),
    }
}

fn describe(rec: &DecodedRecord) -> String {
    format!(
        "{} {} at {}",
        RmgrId(rec.rmid()).name(),
        crate::wal::rmgr::record_type_name_of(rec.version, rec.rmid(), rec.info()),
        rec.lsn
    )
}

/// Which pages a replay thread applies records to.
struct Owner<'a> {
    worker: usize,
    part: &'a Partition,
    aliases: &'a mut DatabaseAliases,
}

impl Owner<'_> {
    #[inline]
    fn owns(&self, key: &PageKey, hash: u64) -> bool {
        self.aliases.owner(self.part, key, hash) == self.worker
    }
}

fn replay_record(
    rec: &DecodedRecord,
    set: &mut PageSet,
    sum: &mut ReplaySummary,
    opts: &ReplayOptions,
    image: &mut Box<Page>,
    owner: Owner<'_>,
) -> Result<(), ReplayError> {
    for block in rec.blocks() {
        let key = block.page_key();
        let hash = key_hash(&key);
        if !owner.owns(&key, hash) {
            continue;
        }
        // Pages that do not exist are created by WILL_INIT/images, VM pages by the VISIBLE
        // record (PostgreSQL reads them with RBM_ZERO_ON_ERROR), and pages a generic WAL
        // delta comes for: `GenericXLogFinish` diffs against the buffer as it was, and a
        // page just added to the relation was all zeros (rum logs the new page of a split
        // so). PostgreSQL's redo would skip such a block as missing (BLK_NOTFOUND); GetPage
        // starts it from zeros, and so does verify, to check it against the images.
        let replaced = block.will_init() || block.has_applicable_image();
        let create = key.fork == ForkNumber::VM || rec.rmid() == crate::wal::rmgr::RM_GENERIC_ID;
        let slot = if replaced {
            set.get_or_zero(&key, hash)
        } else {
            let Some(slot) = set.get_or_load(&key, hash, create)? else {
                continue;
            };
            slot
        };
        let state = set.pages.slot_mut(slot);
        if state.unreadable.is_some() && !block.has_applicable_image() && !block.will_init() {
            continue;
        }
        let mut outcome = apply_block(state.page_mut(), rec, block, &opts.ctx);
        if outcome.as_ref().is_err_and(|e| e.is_unsupported()) && block.will_init() {
            // A re-initialisation by an rmgr we do not replay leaves the page unknown.
            outcome = Err(RedoError::new(rec, key, RedoErrorKind::Unsupported));
        }
        match outcome {
            Ok(o) => {
                sum.page_changes += 1;
                if o == BlockOutcome::Restored || block.will_init() {
                    state.unreadable = None;
                    state.image_hole = block
                        .image
                        .filter(|i| o == BlockOutcome::Restored && i.has_hole())
                        .map(|i| (i.hole_offset, i.hole_length));
                }
                if let Some(k) = PageKind::of_rmgr(rec.rmid(), key.fork) {
                    state.kind = Some(k);
                }
            }
            Err(e) if e.is_unsupported() => {
                sum.unsupported_changes += 1;
                if state.unreadable.is_none() {
                    if sum.first_unreadable.is_none() {
                        sum.first_unreadable = Some(e.to_string());
                    }
                    state.unreadable = Some(e.to_string());
                }
                state.kind = PageKind::of_rmgr(rec.rmid(), key.fork).or(state.kind);
                continue;
            }
            Err(e) => {
                sum.redo_errors += 1;
                if sum.first_redo_error.is_none() {
                    sum.first_redo_error = Some(e.to_string());
                }
                state.unreadable = Some(e.to_string());
                continue;
            }
        }
        // Consistency image: the page as PostgreSQL had it right after this record.
        if !opts.check_consistency
            || !block.has_image()
            || block.has_applicable_image()
            || state.unreadable.is_some()
        {
            continue;
        }
        match rec.restore_block_image(block, image) {
            Ok(true) => {}
            Ok(false) => continue,
            Err(e) => {
                sum.redo_errors += 1;
                if sum.first_redo_error.is_none() {
                    sum.first_redo_error = Some(format!("{}: {e}", describe(rec)));
                }
                continue;
            }
        }
        let kind = PageKind::of_rmgr(rec.rmid(), key.fork)
            .unwrap_or_else(|| PageKind::guess(image, key.fork));
        sum.pages_verified += 1;
        if let Some(diff) = compare_masked(state.page(), image, kind, key.block) {
            if kind == PageKind::VisibilityMap
                && state
                    .image_hole
                    .is_some_and(|hole| bits_only_missing_in_hole(state.page(), image, hole))
            {
                sum.vm_bits_not_in_wal += 1;
                if sum.first_vm_bits_not_in_wal.is_none() {
                    sum.first_vm_bits_not_in_wal = Some(format!(
                        "page {key} after {}: replayed vs consistency image:\n{diff}",
                        describe(rec)
                    ));
                }
                continue;
            }
            sum.mismatches += 1;
            if sum.first_mismatch.is_none() {
                sum.first_mismatch = Some(format!(
                    "page {key} after {} (mask {kind:?}): replayed vs consistency image:\n{diff}",
                    describe(rec)
                ));
            }
        }
    }
    for (key, change) in implicit_changes(rec) {
        let hash = key_hash(&key);
        if !owner.owns(&key, hash) {
            continue;
        }
        if let Some(slot) = set.get_or_load(&key, hash, true)? {
            let state = set.pages.slot_mut(slot);
            if state.unreadable.is_none() {
                apply_implicit(state.page_mut(), change);
                sum.page_changes += 1;
                state.kind = Some(PageKind::VisibilityMap);
            }
        }
    }
    for ch in relation_changes(rec) {
        match ch {
            RelationChange::CopyDatabase { dst, src } => {
                sum.pages_copied +=
                    set.copy_database(rec.lsn, dst, src, |k, h| owner.owns(k, h))?;
                owner.aliases.note_copy(dst, src);
            }
            _ => set.apply_relation_change(&ch),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_to_move_halves_the_difference_within_bounds() {
        let ms = Duration::from_millis;
        let us = Duration::from_micros;
        // 10 ms against 6 ms: 2 ms to move, at 500 us a share.
        assert_eq!(shares_to_move(ms(10), ms(6), us(500)), 4);
        // Never more than a step, never nothing once the slack is exceeded.
        assert_eq!(shares_to_move(ms(100), ms(0), us(500)), BALANCE_MAX_STEP);
        assert_eq!(shares_to_move(ms(10), ms(9), ms(50)), 1);
        // A worker that owns nothing measurable: a whole step.
        assert_eq!(
            shares_to_move(ms(10), ms(0), Duration::ZERO),
            BALANCE_MAX_STEP
        );
        // The other side busier than the busier one (a stale window): still one share.
        assert_eq!(shares_to_move(ms(1), ms(5), us(500)), 1);
    }
}
