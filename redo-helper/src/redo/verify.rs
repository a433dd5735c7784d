//! `redo-helper verify`: replays the store's WAL with the Rust redo, page by page, and checks
//! the result against PostgreSQL itself.
//!
//! 1. Consistency images: with `wal_consistency_checking = all` on the compute, every
//!    record carries, for every page it touches, an image of the page after the record
//!    (without BKPIMAGE_APPLY). After applying each record, every such page is compared with
//!    its image, both masked with the rmgr's mask — PostgreSQL's own
//!    `verifyBackupPageConsistency` (`access/transam/xlogrecovery.c`).
//! 2. Data files (`--pgdata`): after replaying to the end, every page the store holds (base
//!    backup pages and pages built from WAL) is compared, masked, with the same page in the
//!    cluster's data files (taken after a CHECKPOINT, so they are on disk). Free space map
//!    pages are not WAL-logged and are only counted.
//!
//! Pages changed by rmgrs the engine does not replay are marked unreadable from that record
//! on (until an applicable image) and skipped, with the first error kept for the report.

use super::mask::{PageKind, mask_page};
use super::page::{
    ITEM_ID_SIZE, ItemId, Page, PageLayout, SIZE_OF_PAGE_HEADER, get_u16, get_u32, lp_pos,
};
use super::pagetable::{PageTable, key_hash, prefetch};
use super::smgr::RelationChange;
use super::tuple::*;
use super::{BlockOutcome, RedoContext, RedoError, apply_block, apply_implicit, implicit_changes};
use crate::store::base::{BaseFiles, RelationFileName};
use crate::store::meta::HelperMeta;
use crate::wal::block::{ForkNumber, PageKey, RelFileLocator};
use crate::wal::page::{BLCKSZ, Lsn};
use crate::wal::reader::{FileReaderOptions, WalFileReader};
use crate::wal::record::DecodedRecord;
use crate::wal::rmgr::{RmgrId, record_type_name};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::ptr::NonNull;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Default)]
pub struct VerifyOptions {
    /// The helper's data directory (helper.json, base/, wal/).
    pub data_dir: PathBuf,
    /// A cluster's data directory to compare against after the replay.
    pub pgdata: Option<PathBuf>,
    /// First record (default: the backup start in helper.json).
    pub start: Option<Lsn>,
    /// Stop before this LSN (default: the archive's flush position).
    pub end: Option<Lsn>,
    pub ctx: RedoContext,
    /// Skip the per-record consistency comparisons (replay only, for benchmarks).
    pub skip_consistency: bool,
    /// Collect time per record type.
    pub timing: bool,
    /// Replay threads (pages are partitioned among them; records are decoded once on the
    /// calling thread). 0 or 1: replay on the calling thread.
    pub workers: usize,
    /// Hand pages over from the decoding thread every this many batches, whether or not
    /// the others wait (tests exercise the hand-over with it).
    pub hand_over_every: Option<usize>,
}

#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("{0}")]
    Meta(#[from] crate::store::meta::MetaError),
    #[error("{dir} is not a bootstrapped helper data directory (no helper.json)")]
    NotBootstrapped { dir: PathBuf },
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
pub struct TypeCost {
    pub records: u64,
    pub bytes: u64,
    pub time: Duration,
}

/// Result of a verification run.
#[derive(Debug, Clone, Default)]
pub struct VerifySummary {
    pub start: Lsn,
    pub end: Lsn,
    pub records: u64,
    pub wal_bytes: u64,
    /// Page changes applied (block references and implicit pages).
    pub page_changes: u64,
    /// Pages compared with a consistency image.
    pub pages_verified: u64,
    pub mismatches: u64,
    /// Pages unreadable at the end of the replay.
    pub unreadable_pages: u64,
    /// Records refused on a page (unsupported rmgr), counted per page change.
    pub unsupported_changes: u64,
    /// Redo errors on pages (malformed record, page not as expected).
    pub redo_errors: u64,
    pub first_mismatch: Option<String>,
    pub first_unreadable: Option<String>,
    pub first_redo_error: Option<String>,
    /// Data-file comparison (`--pgdata`).
    pub pgdata_pages_compared: u64,
    pub pgdata_mismatches: u64,
    pub pgdata_fsm_pages_skipped: u64,
    pub pgdata_unreadable_skipped: u64,
    pub pgdata_missing: u64,
    pub pgdata_first_mismatch: Option<String>,
    /// Pages compared, per kind.
    pub pgdata_by_kind: BTreeMap<String, u64>,
    pub replay_time: Duration,
    pub per_type: BTreeMap<String, TypeCost>,
    /// Parallel replay: hand-overs of page shares from the decoding thread, and the shares
    /// (of 256) it kept.
    pub hand_overs: u64,
    pub decoder_shares: Option<usize>,
}

impl VerifySummary {
    pub fn total_mismatches(&self) -> u64 {
        self.mismatches + self.pgdata_mismatches + self.redo_errors
    }

    /// The one-line summary `redo-helper verify` ends with.
    pub fn line(&self) -> String {
        let mut s = format!(
            "verify: records replayed {}, pages verified {}, mismatches {}, unreadable pages {}",
            self.records,
            self.pages_verified + self.pgdata_pages_compared,
            self.total_mismatches(),
            self.unreadable_pages
        );
        let _ = write!(
            s,
            " (consistency images {} / {} mismatches; redo errors {}; data files {} pages / {} mismatches, {} missing, {} fsm skipped, {} unreadable skipped; WAL {}..{}, {:.1} MB in {:.2}s)",
            self.pages_verified,
            self.mismatches,
            self.redo_errors,
            self.pgdata_pages_compared,
            self.pgdata_mismatches,
            self.pgdata_missing,
            self.pgdata_fsm_pages_skipped,
            self.pgdata_unreadable_skipped,
            self.start,
            self.end,
            self.wal_bytes as f64 / 1e6,
            self.replay_time.as_secs_f64()
        );
        s
    }
}

/// A fast hasher for page keys: page keys are small and trusted (we build them), so the
/// DoS-resistant default hasher only costs time on every block reference. The fields are
/// combined FxHash-style and the result goes through MurmurHash3's 64-bit finaliser: the
/// hash table takes its bucket index from the low bits and its tag from the top seven,
/// and both must change with the block number (keys of one relation differ only there).
#[derive(Default, Clone, Copy)]
pub struct PageKeyHasher(u64);

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

/// Costs by (rmgr, info & 0xF0): counted for every record, so not with SipHash.
type TypeCosts = FastMap<(u8, u8), TypeCost>;

/// The replayed pages plus what is known about which pages exist.
struct PageSet {
    base: BaseFiles,
    /// Open base files (None: the file does not exist), so loading a page is one pread.
    files: BaseFileCache,
    pages: PageTable,
    /// Relations dropped in the WAL: their base files are gone.
    dropped: HashSet<RelFileLocator>,
    /// Forks truncated in the WAL: base pages at or past the limit are gone.
    truncated: HashMap<(RelFileLocator, ForkNumber), u32>,
    dropped_dbs: HashSet<(u32, u32)>,
}

/// Base files by (relation, fork, segment), mapped copy-on-write on first use.
///
/// A page loaded from the base backup is used where it lies in the mapping, copied by the
/// kernel straight from the page cache when it is loaded. A `pread` into fresh memory costs
/// more: the kernel zeroes the memory (a page fault per 4 KB), then copies into it, plus
/// the system call. The base files never change after the bootstrap, which a private
/// mapping relies on (a file truncated under it would fault on access).
#[derive(Default)]
struct BaseFileCache {
    open: FastMap<(RelFileLocator, ForkNumber, u32), BaseSegment>,
}

enum BaseSegment {
    Missing,
    /// The segment's mapping (owned by the page table's arena) and its length.
    Mapped(NonNull<u8>, usize),
    /// Could not be mapped (an empty file, a file system without mmap): read with pread.
    Unmapped(std::fs::File),
}

// The mapping belongs to the page table of the thread that made it; the cache moves
// between threads only together with that table (a worker's page set returned at join).
unsafe impl Send for BaseSegment {}

impl BaseFileCache {
    /// The base image of `key`: a pointer into the segment's mapping, or (for a segment
    /// that could not be mapped) a buffer of `pages` read with pread. None when the backup
    /// does not have the page.
    fn load(
        &mut self,
        base: &BaseFiles,
        key: &PageKey,
        pages: &mut PageTable,
    ) -> Result<Option<NonNull<Page>>, VerifyError> {
        use std::os::unix::fs::FileExt;
        use std::os::unix::io::AsRawFd;
        let seg = key.block / crate::store::base::RELSEG_SIZE;
        let segment = match self.open.entry((key.rel, key.fork, seg)) {
            std::collections::hash_map::Entry::Occupied(o) => o.into_mut(),
            std::collections::hash_map::Entry::Vacant(v) => {
                let (path, _) = base.page_location(key);
                let file = match std::fs::File::open(&path) {
                    Ok(f) => f,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                        v.insert(BaseSegment::Missing);
                        return Ok(None);
                    }
                    Err(source) => return Err(VerifyError::Io { path, source }),
                };
                let len = file
                    .metadata()
                    .map_err(|source| VerifyError::Io {
                        path: path.clone(),
                        source,
                    })?
                    .len() as usize;
                // SAFETY: a private mapping of a file opened here; the result is checked.
                let p = if len == 0 {
                    libc::MAP_FAILED
                } else {
                    unsafe {
                        libc::mmap(
                            std::ptr::null_mut(),
                            len,
                            libc::PROT_READ | libc::PROT_WRITE,
                            libc::MAP_PRIVATE,
                            file.as_raw_fd(),
                            0,
                        )
                    }
                };
                match NonNull::new(p as *mut u8) {
                    Some(p) if p.as_ptr() as *mut libc::c_void != libc::MAP_FAILED => {
                        pages.own_mapping(p, len);
                        v.insert(BaseSegment::Mapped(p, len))
                    }
                    _ => v.insert(BaseSegment::Unmapped(file)),
                }
            }
        };
        let offset = (key.block % crate::store::base::RELSEG_SIZE) as usize * BLCKSZ;
        match segment {
            BaseSegment::Missing => Ok(None),
            BaseSegment::Mapped(p, len) => {
                if offset + BLCKSZ > *len {
                    return Ok(None);
                }
                // SAFETY: within the mapping (checked above).
                let page = unsafe { p.as_ptr().add(offset) };
                // Take the private copy now, with a write fault on a page not mapped yet:
                // if the first access were a read, the page cache's page would be mapped
                // read-only and the first write would replace that mapping, which needs a
                // TLB flush on every CPU running another replay thread (an IPI; costly in
                // a virtual machine: replay measured ~25% slower). An error (a kernel
                // before 5.14) only leaves the copy to the first write.
                // SAFETY: the range lies in a private mapping of ours.
                unsafe {
                    libc::madvise(page as *mut libc::c_void, BLCKSZ, libc::MADV_POPULATE_WRITE)
                };
                // SAFETY: within the mapping, not null.
                Ok(Some(unsafe { NonNull::new_unchecked(page) }.cast()))
            }
            BaseSegment::Unmapped(f) => {
                let (mut buf, _) = pages.new_page();
                // SAFETY: a buffer of the table not given to any slot yet.
                let page = unsafe { buf.as_mut() };
                match f.read_exact_at(&mut page[..], offset as u64) {
                    Ok(()) => Ok(Some(buf)),
                    Err(e) => {
                        pages.release(buf);
                        if e.kind() == std::io::ErrorKind::UnexpectedEof {
                            Ok(None)
                        } else {
                            Err(VerifyError::Io {
                                path: base.page_location(key).0,
                                source: e,
                            })
                        }
                    }
                }
            }
        }
    }
}

impl PageSet {
    fn new(base: BaseFiles) -> PageSet {
        PageSet {
            base,
            files: BaseFileCache::default(),
            pages: PageTable::new(),
            dropped: HashSet::new(),
            truncated: HashMap::new(),
            dropped_dbs: HashSet::new(),
        }
    }

    fn base_gone(&self, key: &PageKey) -> bool {
        base_gone(&self.dropped, &self.dropped_dbs, &self.truncated, key)
    }

    /// The page's slot, loading the page from the base backup on first use. None when
    /// the page does not exist (PostgreSQL's redo then skips the block: BLK_NOTFOUND).
    fn get_or_load(
        &mut self,
        key: &PageKey,
        hash: u64,
        create: bool,
    ) -> Result<Option<u32>, VerifyError> {
        if let Some(slot) = self.pages.find(key, hash) {
            return Ok(Some(slot));
        }
        if !self.base_gone(key)
            && let Some(page) = self.files.load(&self.base, key, &mut self.pages)?
        {
            return Ok(Some(self.pages.insert(*key, hash, page)));
        }
        if !create {
            return Ok(None);
        }
        let (mut buf, zeroed) = self.pages.new_page();
        if !zeroed {
            // SAFETY: a buffer of the table not given to any slot yet.
            unsafe { buf.as_mut() }.fill(0);
        }
        Ok(Some(self.pages.insert(*key, hash, buf)))
    }

    fn apply_relation_change(&mut self, ch: &RelationChange) {
        match *ch {
            RelationChange::Create { rel, .. } => {
                self.dropped.remove(&rel);
            }
            RelationChange::Truncate {
                rel, fork, nblocks, ..
            } => {
                self.pages
                    .retain(|k| !(k.rel == rel && k.fork == fork && k.block >= nblocks));
                let e = self.truncated.entry((rel, fork)).or_insert(nblocks);
                *e = (*e).min(nblocks);
            }
            RelationChange::Drop { rel } => {
                self.pages.retain(|k| k.rel != rel);
                self.dropped.insert(rel);
            }
            RelationChange::DropDatabase { db_oid, spc_oids } => {
                for spc in spc_oids {
                    self.pages
                        .retain(|k| !(k.rel.db_oid == db_oid && k.rel.spc_oid == spc));
                    self.dropped_dbs.insert((spc, db_oid));
                }
            }
        }
    }
}

fn base_gone(
    dropped: &HashSet<RelFileLocator>,
    dropped_dbs: &HashSet<(u32, u32)>,
    truncated: &HashMap<(RelFileLocator, ForkNumber), u32>,
    key: &PageKey,
) -> bool {
    (!dropped.is_empty() && dropped.contains(&key.rel))
        || (!dropped_dbs.is_empty() && dropped_dbs.contains(&(key.rel.spc_oid, key.rel.db_oid)))
        || (!truncated.is_empty()
            && truncated
                .get(&(key.rel, key.fork))
                .is_some_and(|n| key.block >= *n))
}

/// Runs the verification.
pub fn verify(opts: &VerifyOptions) -> Result<VerifySummary, VerifyError> {
    let meta = HelperMeta::load(&opts.data_dir)?.ok_or_else(|| VerifyError::NotBootstrapped {
        dir: opts.data_dir.clone(),
    })?;
    let wal_dir = opts.data_dir.join("wal");
    let start = opts.start.unwrap_or_else(|| meta.start_lsn());
    let end = match opts.end {
        Some(e) => e,
        None => read_flushed(&wal_dir)?,
    };
    let mut set = PageSet::new(BaseFiles::new(opts.data_dir.join("base")));
    let mut sum = VerifySummary {
        start,
        end,
        ..Default::default()
    };
    let ropts = FileReaderOptions {
        timeline: Some(meta.timeline),
        end: Some(end),
        system_identifier: Some(meta.system_identifier),
        read_ahead: true,
        ..Default::default()
    };
    let mut per_type = TypeCosts::default();
    let t0 = Instant::now();
    let mut reader = WalFileReader::open(&wal_dir, start, ropts)?;
    if opts.workers > 1 {
        set = replay_parallel(&mut reader, set, &mut sum, &mut per_type, opts)?;
    } else {
        // Records are decoded a batch at a time (buffers reused) so the replay can prefetch
        // the pages of the records ahead.
        let mut r = Replayer::new(set, opts, 0, Partition::serial());
        let mut batch: Vec<DecodedRecord> = Vec::new();
        loop {
            let more = fill_batch(&mut reader, &mut batch, SERIAL_BATCH)?;
            for rec in &batch {
                sum.records += 1;
                sum.wal_bytes += rec.total_len() as u64;
                let c = per_type.entry((rec.rmid(), rec.info() & 0xF0)).or_default();
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
    for ((rmid, info), c) in per_type {
        let name = format!("{}/{}", RmgrId(rmid).name(), record_type_name(rmid, info));
        let e = sum.per_type.entry(name).or_default();
        e.records += c.records;
        e.bytes += c.bytes;
        e.time += c.time;
    }
    sum.unreadable_pages = set
        .pages
        .slots()
        .iter()
        .filter(|p| p.unreadable.is_some())
        .count() as u64;
    if let Some(pgdata) = &opts.pgdata {
        compare_pgdata(&mut set, pgdata, &mut sum)?;
    }
    Ok(sum)
}

/// The next record; false at the end of the range or of the archive.
fn next_record(reader: &mut WalFileReader, rec: &mut DecodedRecord) -> Result<bool, VerifyError> {
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
) -> Result<bool, VerifyError> {
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

/// Which replay thread owns which pages. A page's key hash picks one of 256 shares and
/// the shares are dealt to the threads, so each page's records are applied by one thread,
/// in WAL order — the result equals a serial replay. Thread 0 is the one that also decodes
/// the WAL, so it gets a smaller part of the pages. Pages that take a large part of the
/// references (found by sampling the start of the range: pgbench's branches and tellers
/// pages take a third of the records) are dealt one by one, so that they do not end up on
/// the same thread by chance.
#[derive(Clone, Copy)]
struct Partition {
    of: [u8; 256],
    /// Shares that hold a hot page.
    has_hot: [bool; 256],
    hot: [(PageKey, u8); MAX_HOT],
    nhot: usize,
}

/// Hot pages dealt individually, at most.
const MAX_HOT: usize = 8;

#[inline]
fn share(hash: u64) -> usize {
    (hash >> 56) as usize
}

impl Partition {
    fn serial() -> Partition {
        Partition {
            of: [0; 256],
            has_hot: [false; 256],
            hot: [(NO_PAGE, 0); MAX_HOT],
            nhot: 0,
        }
    }

    /// `threads` threads (at most 64), thread 0 getting `first` shares of 256 and the
    /// others the rest in equal parts; the `hot` pages are dealt in turn, starting with
    /// thread 1.
    fn new(threads: usize, first: usize, hot: &[PageKey]) -> Partition {
        let mut p = Partition::serial();
        if threads > 1 {
            let first = first.min(256);
            let rest = (256 - first).max(1);
            for (i, o) in p.of.iter_mut().enumerate().skip(first) {
                *o = (1 + (i - first) * (threads - 1) / rest) as u8;
            }
            for (i, key) in hot.iter().take(MAX_HOT).enumerate() {
                p.hot[i] = (*key, ((i + 1) % threads) as u8);
                p.has_hot[share(key_hash(key))] = true;
                p.nhot = i + 1;
            }
        }
        p
    }

    #[inline]
    fn owner(&self, key: &PageKey, hash: u64) -> usize {
        let s = share(hash);
        if self.has_hot[s]
            && let Some((_, t)) = self.hot[..self.nhot].iter().find(|(k, _)| k == key)
        {
            return *t as usize;
        }
        self.of[s] as usize
    }
}

const NO_PAGE: PageKey = PageKey {
    rel: RelFileLocator {
        spc_oid: 0,
        db_oid: 0,
        rel_number: 0,
    },
    fork: ForkNumber::MAIN,
    block: 0,
};

/// Records sampled at the start of the range to find hot pages.
const HOT_SAMPLE: usize = 8_192;

/// The pages that take at least 2% of the block references of `records` (the first
/// records of the range), hottest first.
fn hot_pages<'r>(records: impl Iterator<Item = &'r DecodedRecord>) -> Vec<PageKey> {
    let mut counts: FastMap<PageKey, u32> = FastMap::default();
    let mut total = 0u64;
    for rec in records {
        for b in rec.blocks() {
            *counts.entry(b.page_key()).or_default() += 1;
            total += 1;
        }
    }
    let mut hot: Vec<(u32, PageKey)> = counts
        .into_iter()
        .filter(|(_, c)| *c as u64 * 50 >= total)
        .map(|(k, c)| (c, k))
        .collect();
    hot.sort_by(|a, b| b.cmp(a));
    hot.into_iter().take(MAX_HOT).map(|(_, k)| k).collect()
}

/// One replay thread: its pages (those `owner` gives it) and its counters.
struct Replayer<'o> {
    set: PageSet,
    sum: VerifySummary,
    per_type: TypeCosts,
    image: Box<Page>,
    opts: &'o VerifyOptions,
    worker: usize,
    part: Partition,
    /// Records replayed (for timing samples).
    seen: u64,
    /// Page references of the batch being replayed (key, hash), and where each record's
    /// start: the prefetch schedule.
    refs: Vec<(PageKey, u64)>,
    starts: Vec<u32>,
}

impl<'o> Replayer<'o> {
    fn new(set: PageSet, opts: &'o VerifyOptions, worker: usize, part: Partition) -> Self {
        Replayer {
            set,
            sum: VerifySummary::default(),
            per_type: TypeCosts::default(),
            image: Box::new([0u8; BLCKSZ]),
            opts,
            worker,
            part,
            seen: 0,
            refs: Vec::new(),
            starts: Vec::new(),
        }
    }

    /// Replays `batch` (only the records at `which`, if given), prefetching the hash
    /// buckets and pages of the records ahead.
    fn replay_batch(
        &mut self,
        batch: &[DecodedRecord],
        which: Option<&[u32]>,
    ) -> Result<(), VerifyError> {
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
                if self.part.owner(&key, h) == self.worker {
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
            let tr = (self.opts.timing && sampled(self.seen)).then(Instant::now);
            replay_record(
                rec,
                &mut self.set,
                &mut self.sum,
                self.opts,
                &mut self.image,
                self.worker,
                &self.part,
            )?;
            if let Some(tr) = tr {
                self.per_type
                    .entry((rec.rmid(), rec.info() & 0xF0))
                    .or_default()
                    .time += tr.elapsed() * 8;
            }
        }
        Ok(())
    }

    /// Adds this thread's counters to `sum` and `per_type`; returns its pages.
    fn finish(self, sum: &mut VerifySummary, per_type: &mut TypeCosts) -> PageSet {
        let w = self.sum;
        sum.page_changes += w.page_changes;
        sum.pages_verified += w.pages_verified;
        sum.mismatches += w.mismatches;
        sum.unsupported_changes += w.unsupported_changes;
        sum.redo_errors += w.redo_errors;
        sum.first_mismatch = sum.first_mismatch.take().or(w.first_mismatch);
        sum.first_unreadable = sum.first_unreadable.take().or(w.first_unreadable);
        sum.first_redo_error = sum.first_redo_error.take().or(w.first_redo_error);
        for (k, c) in self.per_type {
            per_type.entry(k).or_default().time += c.time;
        }
        self.set
    }
}

/// The workers that need `rec`: the owners of its block references and implicit pages;
/// all of them when it changes which pages exist (drops, truncations).
fn route(rec: &DecodedRecord, part: &Partition) -> u64 {
    let mut mask = 0u64;
    for b in rec.blocks() {
        let key = b.page_key();
        mask |= 1 << part.owner(&key, key_hash(&key));
    }
    if matches!(
        rec.rmid(),
        crate::wal::rmgr::RM_HEAP_ID | crate::wal::rmgr::RM_HEAP2_ID | crate::wal::rmgr::RM_SMGR_ID
    ) {
        for (key, _) in implicit_changes(rec) {
            mask |= 1 << part.owner(&key, key_hash(&key));
        }
    }
    if !super::relation_changes(rec).is_empty() {
        mask = u64::MAX;
    }
    mask
}

/// The balance between the decoding thread and the others. The decoding thread starts
/// with an equal share of the pages, which is right while applying records is costly (at
/// the start of a range most records load their page from the base backup) and too much
/// later, when decoding is most of the cost of a record. So whenever the other threads
/// were found waiting for work in a window of batches, the decoding thread hands some of
/// its shares over (with their pages, at a batch boundary: no thread waits for another).
/// Shares only move away from the decoding thread: taking them back would make it wait
/// for the others to catch up.
const BALANCE_WINDOW: usize = 8;
/// Sends, in a window, that found a worker with nothing to do: the signal to hand over.
const BALANCE_IDLE: usize = 2;
/// Shares handed over at a time.
const BALANCE_STEP: usize = 8;
/// Shares the decoding thread keeps, at least.
const MIN_DECODER_SHARES: usize = 8;

/// One message to a replay worker: a batch and the positions of the records it needs,
/// and, when the balance changed, the new partition and the pages handed over to it.
struct Work {
    batch: std::sync::Arc<Vec<DecodedRecord>>,
    which: Vec<u32>,
    part: Option<Partition>,
    pages: Vec<super::pagetable::Slot>,
}

impl Partition {
    /// A partition where thread 0 gave up to `step` of its shares (keeping at least
    /// `keep`) to the other `threads - 1` threads in turn; None when it has no more to give.
    fn hand_over(&self, threads: usize, step: usize, keep: usize) -> Option<Partition> {
        let own = self.decoder_shares();
        if threads < 2 || own <= keep {
            return None;
        }
        let mut p = *self;
        let mut given = 0;
        for (i, o) in p.of.iter_mut().enumerate().rev() {
            if given == step.min(own - keep) {
                break;
            }
            if *o == 0 {
                *o = (1 + i % (threads - 1)) as u8;
                given += 1;
            }
        }
        Some(p)
    }

    fn decoder_shares(&self) -> usize {
        self.of.iter().filter(|o| **o == 0).count()
    }
}

/// Parallel replay over `opts.workers` threads, this one included: this thread decodes
/// batches of records, sends each other thread the batch with the positions of the records
/// it needs, and replays its own share of the pages (smaller and smaller: see
/// [`BALANCE_WINDOW`]); each thread applies the records' changes to the pages it owns
/// (relation drops and truncations to its own pages too). Batches come back for reuse once
/// every thread is done with them. Returns the merged page set.
fn replay_parallel(
    reader: &mut WalFileReader,
    base_set: PageSet,
    sum: &mut VerifySummary,
    per_type: &mut TypeCosts,
    opts: &VerifyOptions,
) -> Result<PageSet, VerifyError> {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::mpsc::sync_channel;
    let n = opts.workers.clamp(1, 64);
    // The first batches are decoded before the workers start: the hot pages among them
    // are dealt one by one.
    let mut pending = std::collections::VecDeque::new();
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
    // Batches each worker was sent and has not finished.
    let inflight: Vec<AtomicUsize> = (0..n).map(|_| AtomicUsize::new(0)).collect();
    let workers = std::thread::scope(|scope| -> Result<Vec<Replayer>, VerifyError> {
        let (back_tx, back_rx) = sync_channel::<Vec<DecodedRecord>>(16);
        let mut senders = Vec::with_capacity(n);
        let mut handles = Vec::with_capacity(n);
        for w in 1..n {
            let (tx, rx) = sync_channel::<Work>(8);
            senders.push(tx);
            let base = base.clone();
            let back = back_tx.clone();
            let inflight = &inflight[w];
            handles.push(
                std::thread::Builder::new()
                    .name(format!("redo-{w}"))
                    .spawn_scoped(scope, move || -> Result<Replayer, VerifyError> {
                        let mut r = Replayer::new(PageSet::new(base), opts, w, part);
                        while let Ok(work) = rx.recv() {
                            if let Some(p) = work.part {
                                r.part = p;
                            }
                            if !work.pages.is_empty() {
                                // SAFETY: the pages' buffers are in the decoding thread's
                                // arena, which outlives this thread (see `mine`) and absorbs
                                // this table at the end.
                                unsafe { r.set.pages.adopt(work.pages) };
                            }
                            let res = r.replay_batch(&work.batch, Some(&work.which));
                            inflight.fetch_sub(1, Ordering::Relaxed);
                            res?;
                            if let Some(b) = Arc::into_inner(work.batch) {
                                let _ = back.try_send(b);
                            }
                        }
                        Ok(r)
                    })
                    .map_err(|source| VerifyError::Io {
                        path: PathBuf::from("replay worker"),
                        source,
                    })?,
            );
        }
        drop(back_tx);
        let mut spare: Option<Vec<DecodedRecord>> = None;
        let mut failed = false;
        let mut result = Ok(());
        let (mut window, mut idle, mut handovers) = (0usize, 0usize, 0u64);
        let (every, needed) = match opts.hand_over_every {
            Some(e) => (e.max(1), 0),
            None => (BALANCE_WINDOW, BALANCE_IDLE),
        };
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
            // it, the workers have not started on it.
            let mut pages: Vec<Vec<super::pagetable::Slot>> = (1..n).map(|_| Vec::new()).collect();
            let mut new_part = None;
            window += 1;
            idle += usize::from((1..n).any(|w| inflight[w].load(Ordering::Relaxed) == 0));
            if window >= every {
                if idle >= needed
                    && let Some(p) = part.hand_over(n, BALANCE_STEP, MIN_DECODER_SHARES)
                {
                    for slot in mine.set.pages.take_where(|k| p.owner(k, key_hash(k)) != 0) {
                        let w = p.owner(&slot.key, key_hash(&slot.key));
                        pages[w - 1].push(slot);
                    }
                    part = p;
                    mine.part = p;
                    new_part = Some(p);
                    handovers += 1;
                }
                window = 0;
                idle = 0;
            }
            let mut which: Vec<Vec<u32>> = (0..n).map(|_| Vec::with_capacity(BATCH)).collect();
            for (i, rec) in batch.iter().enumerate() {
                sum.records += 1;
                sum.wal_bytes += rec.total_len() as u64;
                let c = per_type.entry((rec.rmid(), rec.info() & 0xF0)).or_default();
                c.records += 1;
                c.bytes += rec.total_len() as u64;
                let mask = route(rec, &part);
                for (w, list) in which.iter_mut().enumerate() {
                    if mask & (1 << w) != 0 {
                        list.push(i as u32);
                    }
                }
            }
            let b = Arc::new(batch);
            let mut lists = which.into_iter();
            let own = lists.next().unwrap_or_default();
            for (w, ((tx, list), pages)) in senders.iter().zip(lists).zip(pages).enumerate() {
                inflight[w + 1].fetch_add(1, Ordering::Relaxed);
                let work = Work {
                    batch: b.clone(),
                    which: list,
                    part: new_part,
                    pages,
                };
                // A worker that stopped has an error to report at join.
                if tx.send(work).is_err() {
                    failed = true;
                }
            }
            if let Err(e) = mine.replay_batch(&b, Some(&own)) {
                result = Err(e);
                break;
            }
            spare = Arc::into_inner(b);
            if failed {
                break;
            }
        }
        sum.hand_overs = handovers;
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
                    first_err.get_or_insert(VerifyError::Io {
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
        Ok(workers)
    })?;
    let mut merged = mine.finish(sum, per_type);
    for r in workers {
        merged.pages.absorb(r.finish(sum, per_type).pages);
    }
    Ok(merged)
}

fn read_flushed(wal_dir: &Path) -> Result<Lsn, VerifyError> {
    let path = wal_dir.join("flushed");
    let text = std::fs::read_to_string(&path).map_err(|source| VerifyError::Io {
        path: path.clone(),
        source,
    })?;
    text.trim().parse::<Lsn>().map_err(|e| VerifyError::Io {
        path,
        source: std::io::Error::other(e.to_string()),
    })
}

fn describe(rec: &DecodedRecord) -> String {
    format!(
        "{} {} at {}",
        RmgrId(rec.rmid()).name(),
        record_type_name(rec.rmid(), rec.info()),
        rec.lsn
    )
}

fn replay_record(
    rec: &DecodedRecord,
    set: &mut PageSet,
    sum: &mut VerifySummary,
    opts: &VerifyOptions,
    image: &mut Box<Page>,
    worker: usize,
    part: &Partition,
) -> Result<(), VerifyError> {
    for block in rec.blocks() {
        let key = block.page_key();
        let hash = key_hash(&key);
        if part.owner(&key, hash) != worker {
            continue;
        }
        // Pages that do not exist are created by WILL_INIT/images, and VM pages by the
        // VISIBLE record (PostgreSQL reads them with RBM_ZERO_ON_ERROR).
        let create =
            block.will_init() || block.has_applicable_image() || key.fork == ForkNumber::VM;
        let Some(slot) = set.get_or_load(&key, hash, create)? else {
            continue;
        };
        let state = set.pages.slot_mut(slot);
        if state.unreadable.is_some() && !block.has_applicable_image() && !block.will_init() {
            continue;
        }
        let mut outcome = apply_block(state.page_mut(), rec, block, &opts.ctx);
        if outcome.as_ref().is_err_and(|e| e.is_unsupported()) && block.will_init() {
            // A re-initialisation by an rmgr we do not replay leaves the page unknown.
            outcome = Err(RedoError::new(rec, key, super::RedoErrorKind::Unsupported));
        }
        match outcome {
            Ok(o) => {
                sum.page_changes += 1;
                if o == BlockOutcome::Restored || block.will_init() {
                    state.unreadable = None;
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
        if opts.skip_consistency
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
        if part.owner(&key, hash) != worker {
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
    for ch in super::relation_changes(rec) {
        set.apply_relation_change(&ch);
    }
    Ok(())
}

/// Masks copies of both pages and compares them; a field-level diff when they differ.
pub fn compare_masked(
    replayed: &Page,
    expected: &Page,
    kind: PageKind,
    blkno: u32,
) -> Option<String> {
    let mut a = Box::new(*replayed);
    let mut b = Box::new(*expected);
    mask_page(&mut a, kind, blkno);
    mask_page(&mut b, kind, blkno);
    if a[..] == b[..] {
        return None;
    }
    Some(diff_pages(&a, &b, kind))
}

/// A field-level description of how two (masked) pages differ: header fields, line
/// pointers, heap tuple headers or btree special space, then the first differing bytes.
pub fn diff_pages(replayed: &Page, expected: &Page, kind: PageKind) -> String {
    let mut out = String::new();
    let fields: [(&str, u64, u64); 8] = [
        ("pd_lsn", replayed.lsn().0, expected.lsn().0),
        (
            "pd_checksum",
            replayed.checksum() as u64,
            expected.checksum() as u64,
        ),
        ("pd_flags", replayed.flags() as u64, expected.flags() as u64),
        ("pd_lower", replayed.lower() as u64, expected.lower() as u64),
        ("pd_upper", replayed.upper() as u64, expected.upper() as u64),
        (
            "pd_special",
            replayed.special() as u64,
            expected.special() as u64,
        ),
        (
            "pd_pagesize_version",
            replayed.pagesize_version() as u64,
            expected.pagesize_version() as u64,
        ),
        (
            "pd_prune_xid",
            replayed.prune_xid() as u64,
            expected.prune_xid() as u64,
        ),
    ];
    for (name, r, e) in fields {
        if r != e {
            let _ = writeln!(out, "  {name}: replayed {r:#x}, expected {e:#x}");
        }
    }
    let nmax = replayed.max_offset().max(expected.max_offset());
    let mut shown = 0;
    for off in 1..=nmax {
        let pos = lp_pos(off);
        if pos + ITEM_ID_SIZE > BLCKSZ {
            break;
        }
        let (ra, ea) = (
            ItemId(get_u32(replayed, pos)),
            ItemId(get_u32(expected, pos)),
        );
        let ritem = item_bytes(replayed, ra);
        let eitem = item_bytes(expected, ea);
        if ra == ea && ritem == eitem {
            continue;
        }
        if shown >= 8 {
            let _ = writeln!(out, "  ... more line pointers differ");
            break;
        }
        shown += 1;
        let _ = writeln!(out, "  lp {off}: replayed {ra}, expected {ea}");
        if let (Some(r), Some(e)) = (ritem, eitem) {
            if kind == PageKind::Heap && r.len() >= 23 && e.len() >= 23 {
                for (name, at, width) in [
                    ("t_xmin", T_XMIN, 4),
                    ("t_xmax", T_XMAX, 4),
                    ("t_cid/xvac", T_FIELD3, 4),
                    ("t_ctid.bi_hi", T_CTID, 2),
                    ("t_ctid.bi_lo", T_CTID + 2, 2),
                    ("t_ctid.posid", T_CTID + 4, 2),
                    ("t_infomask2", T_INFOMASK2, 2),
                    ("t_infomask", T_INFOMASK, 2),
                    ("t_hoff", T_HOFF, 1),
                ] {
                    let (rv, ev) = if width == 4 {
                        (get_u32(r, at), get_u32(e, at))
                    } else if width == 2 {
                        (get_u16(r, at) as u32, get_u16(e, at) as u32)
                    } else {
                        (r[at] as u32, e[at] as u32)
                    };
                    if rv != ev {
                        let _ = writeln!(out, "    {name}: replayed {rv:#x}, expected {ev:#x}");
                    }
                }
            }
            if let Some(i) = r.iter().zip(e.iter()).position(|(x, y)| x != y) {
                let _ = writeln!(
                    out,
                    "    item bytes differ from byte {i} (replayed {:02x?}, expected {:02x?})",
                    &r[i..(i + 16).min(r.len())],
                    &e[i..(i + 16).min(e.len())]
                );
            } else if r.len() != e.len() {
                let _ = writeln!(out, "    item lengths {} vs {}", r.len(), e.len());
            }
        }
    }
    let (rs, es) = (replayed.special() as usize, expected.special() as usize);
    if rs == es && rs < BLCKSZ && replayed[rs..] != expected[rs..] {
        if kind == PageKind::Btree && rs + 16 <= BLCKSZ {
            for (name, at, width) in [
                ("btpo_prev", 0, 4),
                ("btpo_next", 4, 4),
                ("btpo_level", 8, 4),
                ("btpo_flags", 12, 2),
                ("btpo_cycleid", 14, 2),
            ] {
                let (rv, ev) = if width == 4 {
                    (get_u32(replayed, rs + at), get_u32(expected, rs + at))
                } else {
                    (
                        get_u16(replayed, rs + at) as u32,
                        get_u16(expected, rs + at) as u32,
                    )
                };
                if rv != ev {
                    let _ = writeln!(out, "  special {name}: replayed {rv:#x}, expected {ev:#x}");
                }
            }
        } else {
            let _ = writeln!(out, "  special space differs");
        }
    }
    let diffs: Vec<usize> = (0..BLCKSZ)
        .filter(|&i| replayed[i] != expected[i])
        .collect();
    if let (Some(first), Some(last)) = (diffs.first(), diffs.last()) {
        let _ = writeln!(
            out,
            "  {} bytes differ, first at {first} (replayed {:02x?}, expected {:02x?}), last at {last}",
            diffs.len(),
            &replayed[*first..(*first + 16).min(BLCKSZ)],
            &expected[*first..(*first + 16).min(BLCKSZ)]
        );
        if *first < SIZE_OF_PAGE_HEADER {
            let _ = writeln!(out, "  (difference starts in the page header)");
        }
    }
    out
}

fn item_bytes(page: &Page, id: ItemId) -> Option<&[u8]> {
    let off = id.off() as usize;
    let len = id.len() as usize;
    (id.has_storage() && off >= SIZE_OF_PAGE_HEADER && off + len <= BLCKSZ)
        .then(|| &page[off..off + len])
}

/// Path of a relation file in a PostgreSQL data directory (`relpath`): global/ for the
/// global tablespace (1664), base/DB/ for the default one (1663), pg_tblspc/SPC/... else.
pub(crate) fn pg_relation_path(
    pgdata: &Path,
    rel: &RelFileLocator,
    fork: ForkNumber,
    segment: u32,
) -> PathBuf {
    let file = RelationFileName {
        rel_number: rel.rel_number,
        fork,
        segment,
    }
    .file_name();
    match rel.spc_oid {
        1664 => pgdata.join("global").join(file),
        1663 => pgdata.join("base").join(rel.db_oid.to_string()).join(file),
        spc => {
            let dir = pgdata.join("pg_tblspc").join(spc.to_string());
            let version_dir = std::fs::read_dir(&dir)
                .ok()
                .and_then(|mut it| {
                    it.find_map(|e| {
                        e.ok()
                            .filter(|e| e.file_name().to_string_lossy().starts_with("PG_15"))
                    })
                })
                .map(|e| e.path())
                .unwrap_or_else(|| dir.join("PG_15"));
            version_dir.join(rel.db_oid.to_string()).join(file)
        }
    }
}

pub(crate) fn read_pg_page(pgdata: &Path, key: &PageKey) -> std::io::Result<Option<Box<Page>>> {
    use std::os::unix::fs::FileExt;
    let seg = key.block / crate::store::base::RELSEG_SIZE;
    let path = pg_relation_path(pgdata, &key.rel, key.fork, seg);
    let f = match std::fs::File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut p = Box::new([0u8; BLCKSZ]);
    let off = (key.block % crate::store::base::RELSEG_SIZE) as u64 * BLCKSZ as u64;
    match f.read_exact_at(&mut p[..], off) {
        Ok(()) => Ok(Some(p)),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(None),
        Err(e) => Err(e),
    }
}

/// Every page of every base file that still exists, as keys.
fn base_page_keys(set: &PageSet) -> Vec<PageKey> {
    let mut keys = Vec::new();
    let root = set.base.root().to_path_buf();
    let Ok(spcs) = std::fs::read_dir(&root) else {
        return keys;
    };
    for spc in spcs.flatten() {
        let Ok(spc_oid) = spc.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(dbs) = std::fs::read_dir(spc.path()) else {
            continue;
        };
        for db in dbs.flatten() {
            let Ok(db_oid) = db.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            let Ok(files) = std::fs::read_dir(db.path()) else {
                continue;
            };
            for f in files.flatten() {
                let Some(name) = RelationFileName::parse(&f.file_name().to_string_lossy()) else {
                    continue;
                };
                let Ok(md) = f.metadata() else { continue };
                let nblocks = (md.len() / BLCKSZ as u64) as u32;
                let rel = RelFileLocator {
                    spc_oid,
                    db_oid,
                    rel_number: name.rel_number,
                };
                for b in 0..nblocks {
                    keys.push(PageKey {
                        rel,
                        fork: name.fork,
                        block: name.segment * crate::store::base::RELSEG_SIZE + b,
                    });
                }
            }
        }
    }
    keys
}

fn compare_pgdata(
    set: &mut PageSet,
    pgdata: &Path,
    sum: &mut VerifySummary,
) -> Result<(), VerifyError> {
    let mut keys: Vec<PageKey> = set.pages.slots().iter().map(|s| s.key).collect();
    let held: HashSet<PageKey> = keys.iter().copied().collect();
    for k in base_page_keys(set) {
        if !held.contains(&k) && !set.base_gone(&k) {
            keys.push(k);
        }
    }
    keys.sort();
    for key in keys {
        if key.fork == ForkNumber::FSM {
            sum.pgdata_fsm_pages_skipped += 1;
            continue;
        }
        let (page, kind) = match set
            .pages
            .find(&key, key_hash(&key))
            .map(|i| set.pages.slot(i))
        {
            Some(s) if s.unreadable.is_some() => {
                sum.pgdata_unreadable_skipped += 1;
                continue;
            }
            Some(s) => (Box::new(*s.page()), s.kind),
            None => match set.base.read_page(&key) {
                Ok(Some(v)) => {
                    let mut p = Box::new([0u8; BLCKSZ]);
                    p.copy_from_slice(&v);
                    (p, None)
                }
                _ => continue,
            },
        };
        let theirs = read_pg_page(pgdata, &key).map_err(|source| VerifyError::Io {
            path: pg_relation_path(pgdata, &key.rel, key.fork, 0),
            source,
        })?;
        let Some(theirs) = theirs else {
            // A page that exists only in our store: an all-zero page PostgreSQL never wrote,
            // or a real difference.
            if page.iter().any(|&b| b != 0) {
                sum.pgdata_missing += 1;
                if sum.pgdata_first_mismatch.is_none() {
                    sum.pgdata_first_mismatch = Some(format!(
                        "page {key} is held by the store but not in {}",
                        pgdata.display()
                    ));
                }
            }
            continue;
        };
        let kind = kind.unwrap_or_else(|| {
            if page.is_new() {
                PageKind::guess(&theirs, key.fork)
            } else {
                PageKind::guess(&page, key.fork)
            }
        });
        sum.pgdata_pages_compared += 1;
        *sum.pgdata_by_kind.entry(format!("{kind:?}")).or_default() += 1;
        let (mut page, mut theirs) = (page, theirs);
        if kind == PageKind::Sequence {
            // nextval() changes the tuple in place without WAL while inside the range the
            // last XLOG_SEQ_LOG logged ahead (SEQ_LOG_VALS, commands/sequence.c), so a
            // replayed sequence is ahead of the data file by design: compare all but the
            // values.
            mask_sequence_values(&mut page);
            mask_sequence_values(&mut theirs);
        }
        if let Some(diff) = compare_masked(&page, &theirs, kind, key.block) {
            sum.pgdata_mismatches += 1;
            if sum.pgdata_first_mismatch.is_none() {
                sum.pgdata_first_mismatch = Some(format!(
                    "page {key} (mask {kind:?}): store vs data file after CHECKPOINT:\n{diff}"
                ));
            }
        }
    }
    Ok(())
}

/// `redo-helper verify`: runs [`verify`], prints the first problems, per-type costs (with
/// timing) and ends with the summary line; non-zero exit status on any mismatch or error.
pub fn run_cli(opts: &VerifyOptions) -> std::process::ExitCode {
    let sum = match verify(opts) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("redo-helper verify: error: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    if let Some(m) = &sum.first_mismatch {
        println!("first mismatch: {m}");
    }
    if let Some(m) = &sum.pgdata_first_mismatch {
        println!("first data-file mismatch: {m}");
    }
    if let Some(m) = &sum.first_redo_error {
        println!("first redo error: {m}");
    }
    if let Some(m) = &sum.first_unreadable {
        println!("first unreadable page: {m}");
    }
    if !sum.pgdata_by_kind.is_empty() {
        let kinds: Vec<String> = sum
            .pgdata_by_kind
            .iter()
            .map(|(k, n)| format!("{k} {n}"))
            .collect();
        println!("data-file pages compared by kind: {}", kinds.join(", "));
    }
    let types: Vec<String> = sum
        .per_type
        .iter()
        .map(|(k, c)| format!("{k} {}", c.records))
        .collect();
    println!("record types: {}", types.join(", "));
    if let Some(shares) = sum.decoder_shares {
        println!(
            "parallel replay: {} threads, {} hand-overs of pages, the decoding thread kept {shares} of 256 page shares",
            opts.workers, sum.hand_overs
        );
    }
    if opts.timing {
        let secs = sum.replay_time.as_secs_f64().max(1e-9);
        println!(
            "replay: {} records, {:.1} MB of WAL in {:.3}s: {:.0} records/s, {:.1} MB/s",
            sum.records,
            sum.wal_bytes as f64 / 1e6,
            secs,
            sum.records as f64 / secs,
            sum.wal_bytes as f64 / 1e6 / secs
        );
        let mut types: Vec<(&String, &TypeCost)> = sum.per_type.iter().collect();
        types.sort_by_key(|t| std::cmp::Reverse(t.1.time));
        // Shares of the apply time summed over all types (and threads), so they add to 100%.
        let apply_secs = types
            .iter()
            .map(|t| t.1.time.as_secs_f64())
            .sum::<f64>()
            .max(1e-9);
        for (name, c) in types.iter().take(5) {
            println!(
                "  {name}: {} records, {:.1}% of apply time, {:.2} us/record",
                c.records,
                100.0 * c.time.as_secs_f64() / apply_secs,
                c.time.as_secs_f64() * 1e6 / c.records.max(1) as f64
            );
        }
    }
    println!("{}", sum.line());
    if sum.total_mismatches() > 0 {
        std::process::ExitCode::FAILURE
    } else {
        std::process::ExitCode::SUCCESS
    }
}

/// Blanks the data of a sequence page's tuple (last_value, log_cnt, is_called).
pub(crate) fn mask_sequence_values(page: &mut Page) {
    let Ok(id) = page.item_id(1) else { return };
    let (off, len) = (id.off() as usize, id.len() as usize);
    if !id.has_storage() || off + len > BLCKSZ || len <= T_HOFF {
        return;
    }
    let hoff = page[off + T_HOFF] as usize;
    if hoff < len {
        page[off + hoff..off + len].fill(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(block: u32) -> PageKey {
        PageKey {
            rel: RelFileLocator {
                spc_oid: 1663,
                db_oid: 5,
                rel_number: 16384,
            },
            fork: ForkNumber::MAIN,
            block,
        }
    }

    #[test]
    fn hand_over_moves_only_decoder_shares_and_keeps_the_minimum() {
        let hot = [key(0)];
        let start = Partition::new(3, 128, &hot);
        assert_eq!(start.decoder_shares(), 128);
        let mut p = start;
        let mut steps = 0;
        while let Some(next) = p.hand_over(3, 8, 8) {
            for i in 0..256 {
                // A share that was another thread's stays where it was.
                if p.of[i] != 0 {
                    assert_eq!(next.of[i], p.of[i]);
                }
            }
            assert_eq!(next.decoder_shares(), p.decoder_shares() - 8);
            p = next;
            steps += 1;
        }
        assert_eq!(p.decoder_shares(), 8);
        assert_eq!(steps, 15);
        // Both other threads received shares, and hot pages keep their owner.
        assert!(p.of.iter().any(|o| *o == 1) && p.of.iter().any(|o| *o == 2));
        let h = key_hash(&hot[0]);
        assert_eq!(p.owner(&hot[0], h), start.owner(&hot[0], h));
        // A serial partition has nobody to hand over to.
        assert!(Partition::serial().hand_over(1, 8, 8).is_none());
    }
}
