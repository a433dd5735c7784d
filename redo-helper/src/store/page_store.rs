//! Per page, its images and its deltas, and GetPage@LSN: start from the newest image at or
//! before the LSN (a generated image, an applicable full page image or WILL_INIT record in
//! the WAL, a recently served page from the cache, the template's page as of a
//! `CREATE DATABASE ... STRATEGY FILE_COPY` that copied the page's database, or the base
//! backup's page) and replay the deltas after it with the Rust redo.
//!
//! A database copy has no record per page: `dbase_redo` copies the template's directory as
//! it is after every record before the copy (commands/dbcommands.c). So a page of the copy
//! whose history starts there is the template's page rebuilt, by this same store, as of the
//! copy's LSN (recursively, for a copy of a copy); a page the template did not have does
//! not exist in the copy; a template page the store cannot prove leaves the copied page
//! unprovable too, by name ([`GetPageError::TemplateUnprovable`]).

use super::archive::{RECENT_WAL_BYTES, RecentWal, RecordReadError, RecordReader, WalArchive};
use super::base::BaseFiles;
use super::images::{ImageStore, ImageStoreError};
use super::index::{ChangeKind, PageChange, PageIndex, StartKind};
use crate::redo::page::Page;
use crate::redo::smgr::DatabaseDir;
use crate::redo::{RedoEngine, RedoError, apply_to_page};
use crate::sync::{lock, read, write};
use crate::wal::block::PageKey;
use crate::wal::page::{BLCKSZ, Lsn};
use crate::wal::record::DecodedRecord;
use crate::wal::rmgr::record_type_name;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

/// Why GetPage@LSN cannot serve a page; each says by name what is missing.
#[derive(Debug, thiserror::Error)]
pub(crate) enum GetPageError {
    #[error("page {key} is unknown to the helper (no base image and no WAL for it)")]
    Unknown { key: PageKey },
    #[error(
        "page {key} is unreadable at {lsn}: {rmgr} record {record} at {at} is not replayed by the helper's redo"
    )]
    Unreadable {
        key: PageKey,
        lsn: Lsn,
        rmgr: String,
        record: String,
        at: Lsn,
    },
    #[error(transparent)]
    Redo(#[from] RedoError),
    #[error("page {key} does not exist at {lsn}: its relation was truncated or dropped at {at}")]
    Removed { key: PageKey, lsn: Lsn, at: Lsn },
    #[error("page {key} at {lsn}: WAL not received yet (decoded up to {decoded})")]
    NotYetReceived {
        key: PageKey,
        lsn: Lsn,
        decoded: Lsn,
    },
    #[error("page {key} belongs to shard {owner}; this helper is shard {shard}")]
    NotOwned {
        key: PageKey,
        owner: u32,
        shard: u32,
    },
    #[error("page {key} at {lsn}: before the start of the helper's history ({start})")]
    BeforeRetention { key: PageKey, lsn: Lsn, start: Lsn },
    /// The base backup copied its files while the page changed: its copy may hold the change
    /// at `change` already, so it proves the page neither before that change nor (without the
    /// change's own WAL image) after it. PostgreSQL forces full-page writes during a backup,
    /// so from the page's first change in the backup window on it starts from that image.
    #[error(
        "page {key} at {lsn}: not provable: the base backup may hold the page's change at {change} already (it copied the files until {consistent}); read it at or after {change}"
    )]
    BeforeConsistent {
        key: PageKey,
        lsn: Lsn,
        change: Lsn,
        consistent: Lsn,
    },
    #[error("page {key}: {source}")]
    Record {
        key: PageKey,
        source: RecordReadError,
    },
    #[error(transparent)]
    Images(#[from] ImageStoreError),
    #[error("page {key}: reading the base image: {source}")]
    Base {
        key: PageKey,
        source: std::io::Error,
    },
    #[error(
        "page {key} cannot be proven at {lsn}: CREATE DATABASE STRATEGY FILE_COPY at {at} copied its database {copy} from {template}, and the template's page {template_key} cannot be proven there: {source}"
    )]
    TemplateUnprovable {
        key: PageKey,
        lsn: Lsn,
        /// The copy record (`XLOG_DBASE_CREATE_FILE_COPY`).
        at: Lsn,
        copy: DatabaseDir,
        template: DatabaseDir,
        template_key: PageKey,
        source: Box<GetPageError>,
    },
}

impl GetPageError {
    /// A page that a change the redo does not replay makes unreadable (409): the page's own
    /// history, or its template's at the database copy its history starts from.
    pub(crate) fn is_unreadable(&self) -> bool {
        match self {
            GetPageError::Unreadable { .. } => true,
            GetPageError::TemplateUnprovable { source, .. } => source.is_unreadable(),
            _ => false,
        }
    }
}

/// A page rebuilt as of an LSN.
#[derive(Debug, Clone)]
pub(crate) struct Reconstructed {
    pub page: Vec<u8>,
    /// Deltas replayed on top of the starting image (for a page of a copied database that
    /// starts from the template's page, the template's deltas too).
    pub deltas_replayed: u32,
    /// Where the replay started (LSN of the image; the backup start for base pages).
    pub start_lsn: Lsn,
    pub start: StartSource,
    /// Where the time went (reported in `x-read-phases`).
    pub phases: ReadPhases,
}

/// Microseconds spent in each part of a reconstruction.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct ReadPhases {
    /// Finding the starting point and the chain (image store, cache, index).
    pub lookup_us: u32,
    /// Reading the starting page (image file, base backup, WAL image).
    pub start_us: u32,
    /// Reading and applying the deltas.
    pub replay_us: u32,
}

impl std::fmt::Display for ReadPhases {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "lookup={} start={} replay={}",
            self.lookup_us, self.start_us, self.replay_us
        )
    }
}

fn micros_since(t: std::time::Instant) -> u32 {
    u32::try_from(t.elapsed().as_micros()).unwrap_or(u32::MAX)
}

/// What a reconstruction started from (reported in `x-start` and by `check`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StartSource {
    GeneratedImage,
    /// The image retention kept where the history before its horizon was removed.
    RetainedImage,
    CachedPage,
    /// An applicable full page image or a WILL_INIT record in the WAL.
    WalImage,
    /// Nothing: the page's relation was truncated below it or dropped, then re-created.
    AfterRemoval,
    BaseBackup,
    /// Nothing: the page did not exist at the backup; its first record creates it.
    EmptyPage,
    /// The template's page as of a database copy (`CREATE DATABASE ... STRATEGY FILE_COPY`).
    TemplateCopy,
}

impl StartSource {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            StartSource::GeneratedImage => "generated image",
            StartSource::RetainedImage => "retained image",
            StartSource::CachedPage => "cached page",
            StartSource::WalImage => "WAL image",
            StartSource::AfterRemoval => "empty page (after truncation or drop)",
            StartSource::BaseBackup => "base backup",
            StartSource::EmptyPage => "empty page",
            StartSource::TemplateCopy => "template page (CREATE DATABASE FILE_COPY)",
        }
    }
}

impl std::fmt::Display for StartSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where a reconstruction starts; each means "the page after every change at or before
/// its LSN".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Start {
    /// The base backup's page (or nothing, if the backup did not have it).
    Base,
    /// A record in the WAL that sets the whole page (applicable image, WILL_INIT).
    Wal(Lsn),
    /// An image the helper generated.
    Generated(Lsn),
    /// A page served recently, from the cache.
    Cached(Lsn),
    /// The helper's image of the page as of the retention horizon (its history before the
    /// horizon is gone: this is where every chain now starts).
    Retained(Lsn),
    /// The page's relation was truncated below it or dropped.
    Removed(Lsn),
    /// The page's database directory was copied from the template's at this LSN
    /// (`XLOG_DBASE_CREATE_FILE_COPY`): the template's page as of then.
    Copied(Lsn, DatabaseDir),
}

impl Start {
    fn lsn(self) -> Option<Lsn> {
        match self {
            Start::Base => None,
            Start::Wal(l)
            | Start::Generated(l)
            | Start::Cached(l)
            | Start::Retained(l)
            | Start::Removed(l)
            | Start::Copied(l, _) => Some(l),
        }
    }

    /// Starts that read something else first: a WAL record, or the template's page.
    fn needs_read(self) -> bool {
        matches!(self, Start::Wal(_) | Start::Copied(..))
    }

    /// The newest of two starts; on a tie the one that needs no read (an image retention
    /// kept at a copy's LSN is that copy's page).
    fn newest(self, other: Start) -> Start {
        match (self.lsn(), other.lsn()) {
            (_, None) => self,
            (None, _) => other,
            (Some(a), Some(b)) if b > a => other,
            (Some(a), Some(b)) if a == b && self.needs_read() && !other.needs_read() => other,
            _ => self,
        }
    }
}

/// Recently served pages, each as of the LSN it was read at: a later read of the same page
/// replays only the deltas after that LSN. Bounded by a page count; oldest insertion goes
/// first.
#[derive(Debug, Default)]
struct PageCache {
    capacity: usize,
    pages: HashMap<PageKey, (Lsn, Arc<Vec<u8>>)>,
    order: VecDeque<PageKey>,
}

impl PageCache {
    /// The cached page of `key` as of an LSN in [horizon, lsn] (a page cached before the
    /// retention horizon would need deltas that are gone).
    fn get(&self, key: &PageKey, lsn: Lsn, horizon: Lsn) -> Option<(Lsn, Arc<Vec<u8>>)> {
        self.pages
            .get(key)
            .filter(|(at, _)| *at <= lsn && *at >= horizon)
            .map(|(at, p)| (*at, Arc::clone(p)))
    }

    fn forget_before(&mut self, horizon: Lsn) {
        self.pages.retain(|_, (at, _)| *at >= horizon);
        let pages = &self.pages;
        self.order.retain(|k| pages.contains_key(k));
    }

    fn put(&mut self, key: PageKey, lsn: Lsn, page: &[u8]) {
        if self.capacity == 0 {
            return;
        }
        match self.pages.get_mut(&key) {
            Some(entry) if entry.0 >= lsn => {}
            Some(entry) => *entry = (lsn, Arc::new(page.to_vec())),
            None => {
                while self.pages.len() >= self.capacity {
                    match self.order.pop_front() {
                        Some(old) => {
                            self.pages.remove(&old);
                        }
                        None => break,
                    }
                }
                self.pages.insert(key, (lsn, Arc::new(page.to_vec())));
                self.order.push_back(key);
            }
        }
    }
}

/// Default bound of the page cache: 4096 pages (32 MB).
pub(crate) const DEFAULT_CACHE_PAGES: usize = 4096;

pub(crate) struct PageStore {
    pub base: BaseFiles,
    pub images: RwLock<ImageStore>,
    pub index: RwLock<PageIndex>,
    redo: RedoEngine,
    cache: Mutex<PageCache>,
    /// Template for per-call record readers (each has its own buffer).
    archive: RecordReader,
    /// The newest durable WAL in memory (fed by the ingest), read before the archive files.
    pub recent_wal: Arc<RecentWal>,
    /// Readers kept between reconstructions, each with its open segment and buffers (opening
    /// the segment and allocating per read was a large part of a short chain's cost).
    readers: Mutex<Vec<RecordReader>>,
    backup_start: Lsn,
    /// Where the base backup ended: its files were copied while WAL in
    /// [backup_start, backup_end) was written, so a base page is not proven at an LSN before
    /// a change of it in that window (see [`GetPageError::BeforeConsistent`]).
    backup_end: Lsn,
    /// Retention horizon: WAL before it is gone; reads before it are refused. Never below
    /// `backup_start` (see `horizon()`).
    horizon: AtomicU64,
    /// Every read holds this shared for its whole duration; retention takes it exclusively
    /// after moving the horizon, before deleting anything, so no read that may need what is
    /// deleted is still running.
    gate: RwLock<()>,
    /// Which pages this helper owns (unsharded: all of them). Its index holds only these
    /// pages' histories; a read of another page is refused with [`GetPageError::NotOwned`].
    shard_map: crate::store::shard::ShardMap,
}

impl PageStore {
    /// Sets which pages this store owns (before it is shared, before anything is indexed).
    pub(crate) fn with_shard_map(mut self, map: crate::store::shard::ShardMap) -> PageStore {
        self.shard_map = map;
        crate::sync::recover(self.index.get_mut()).shard_map = map;
        self
    }

    /// The compute's settings the redo follows (`helper.json`).
    pub(crate) fn redo_context(&self) -> crate::redo::RedoContext {
        self.redo.ctx
    }

    /// Which pages this store owns.
    pub(crate) fn shard_map(&self) -> crate::store::shard::ShardMap {
        self.shard_map
    }

    pub(crate) fn new(
        base: BaseFiles,
        images: ImageStore,
        archive: &WalArchive,
        system_identifier: u64,
        version: crate::wal::PgVersion,
        (backup_start, backup_end): (Lsn, Lsn),
        redo: RedoEngine,
    ) -> PageStore {
        let recent_wal = Arc::new(RecentWal::new(RECENT_WAL_BYTES));
        PageStore {
            base,
            images: RwLock::new(images),
            index: RwLock::new(PageIndex::new()),
            redo,
            cache: Mutex::new(PageCache {
                capacity: DEFAULT_CACHE_PAGES,
                ..PageCache::default()
            }),
            archive: RecordReader::new(archive, system_identifier, version)
                .with_recent(Arc::clone(&recent_wal)),
            recent_wal,
            readers: Mutex::new(Vec::new()),
            backup_start,
            backup_end,
            horizon: AtomicU64::new(backup_start.0),
            gate: RwLock::new(()),
            shard_map: crate::store::shard::ShardMap::UNSHARDED,
        }
    }

    /// The oldest LSN a page can be read at: the retention horizon, or the backup start.
    pub(crate) fn horizon(&self) -> Lsn {
        Lsn(self.horizon.load(Ordering::SeqCst)).max(self.backup_start)
    }

    /// Moves the retention horizon (never back) and waits until every read that started
    /// before is done: after this returns, no running read uses anything before `horizon`.
    pub(crate) fn set_horizon(&self, horizon: Lsn) {
        self.horizon.fetch_max(horizon.0, Ordering::SeqCst);
        drop(write(&self.gate));
        // Pooled readers may hold segments that retention is about to remove open.
        lock(&self.readers).clear();
        lock(&self.cache).forget_before(self.horizon());
    }

    /// Bounds the page cache (0 disables it).
    pub(crate) fn set_cache_pages(&self, pages: usize) {
        let mut c = lock(&self.cache);
        c.capacity = pages;
        c.pages.clear();
        c.order.clear();
    }

    /// The hole (offset, length) of the full page image the page's contents as of `lsn`
    /// descend from: the newest applicable image in its WAL history (through the template's
    /// history when that is where the page starts, after a database copy), when that image
    /// left a hole. None when the page descends from no such image, or when that cannot be
    /// told (the image went behind the retention horizon): callers then treat the page as
    /// fully logged. `check` uses it to tell visibility-map bits that no WAL carries
    /// (`redo::vm::bits_only_missing_in_hole`).
    pub(crate) fn image_hole(&self, key: &PageKey, lsn: Lsn) -> Option<(u16, u16)> {
        let _gate = read(&self.gate);
        let horizon = self.horizon();
        let (mut key, mut lsn) = (*key, lsn);
        loop {
            let (image_at, copy) = {
                let idx = read(&self.index);
                let removed = idx.relation_events.removed_at(&key, lsn);
                let copy = idx.relation_events.copied_at(&key, lsn);
                let newest_event = removed.max(copy.map(|(l, _)| l));
                let image_at = idx
                    .page(&key)
                    .and_then(|h| h.wal_start_point(lsn))
                    .map(|(l, _)| l)
                    .filter(|l| newest_event.is_none_or(|e| *l > e))
                    .and_then(|l| idx.page(&key)?.change_at(l))
                    .filter(|c| c.kind == ChangeKind::Image)
                    .map(|c| c.lsn);
                (
                    image_at,
                    copy.filter(|(l, _)| removed.is_none_or(|r| *l > r)),
                )
            };
            if let Some(at) = image_at {
                let mut reader = lock(&self.readers)
                    .pop()
                    .unwrap_or_else(|| self.archive.clone_empty());
                let mut rec = DecodedRecord::default();
                let hole = reader.read_into(at, &mut rec).ok().and_then(|()| {
                    rec.blocks()
                        .iter()
                        .find(|b| b.page_key() == key)
                        .and_then(|b| b.image)
                        .filter(|i| i.apply() && i.has_hole())
                        .map(|i| (i.hole_offset, i.hole_length))
                });
                let mut pool = lock(&self.readers);
                if pool.len() < POOLED_READERS {
                    pool.push(reader);
                }
                return hole;
            }
            let (at, template) = copy?;
            if at < horizon {
                return None;
            }
            key = template.page(&key);
            lsn = at;
        }
    }

    /// The page as of `lsn` (None: as of everything decoded), from the starts `opts` allows.
    pub(crate) fn reconstruct_with(
        &self,
        key: &PageKey,
        lsn: Option<Lsn>,
        opts: ReadOptions,
    ) -> Result<Reconstructed, GetPageError> {
        self.with_reader(|store, reader| store.reconstruct_using(reader, key, lsn, opts, None))
    }

    /// Image generation's read: the page as of `lsn` from its newest image (generated,
    /// retained, or in the WAL) without the cache, so the replay covers the whole chain
    /// since that image, plus the page as of every `every`-th change of that chain before
    /// `lsn` (oldest first). Stored as images, they bound a read at any LSN of the chain to
    /// fewer than `every` deltas, not only a read at its newest change.
    pub(crate) fn reconstruct_for_images(
        &self,
        key: &PageKey,
        lsn: Lsn,
        every: u32,
    ) -> Result<(Reconstructed, Vec<PageAt>), GetPageError> {
        let mut stops = ImageStops {
            every: every.max(1),
            pages: Vec::new(),
        };
        let opts = ReadOptions {
            generated_images: true,
            cache: false,
        };
        let r = self.with_reader(|store, reader| {
            store.reconstruct_using(reader, key, Some(lsn), opts, Some(&mut stops))
        })?;
        Ok((r, stops.pages))
    }

    /// Runs `f` with a pooled record reader (its open segment and buffers kept for the next
    /// read).
    fn with_reader<T>(&self, f: impl FnOnce(&PageStore, &mut RecordReader) -> T) -> T {
        let pooled = lock(&self.readers).pop();
        let mut reader = pooled.unwrap_or_else(|| self.archive.clone_empty());
        let result = f(self, &mut reader);
        let mut pool = lock(&self.readers);
        if pool.len() < POOLED_READERS {
            pool.push(reader);
        }
        result
    }

    /// GetPage@LSN in its three phases, under the retention gate (retention waits for
    /// running reads before it removes anything they may use): [`Self::lookup`] chooses where
    /// the replay starts and which deltas follow, [`Self::load_start`] loads that page, and
    /// [`Self::replay`] applies the deltas.
    fn reconstruct_using(
        &self,
        reader: &mut RecordReader,
        key: &PageKey,
        lsn: Option<Lsn>,
        opts: ReadOptions,
        stops: Option<&mut ImageStops>,
    ) -> Result<Reconstructed, GetPageError> {
        let _gate = read(&self.gate);
        // Everything at or after this horizon stays until the gate is released, even if
        // retention moves the horizon meanwhile; the template reads of a copied page use it too.
        let horizon = self.horizon();
        self.reconstruct_gated(reader, key, lsn, opts, horizon, stops)
    }

    /// The three phases, with the read gate held by the caller since before it read
    /// `horizon` (a page of a copied database reads its template's page through here, under
    /// the same hold of the gate).
    fn reconstruct_gated(
        &self,
        reader: &mut RecordReader,
        key: &PageKey,
        lsn: Option<Lsn>,
        opts: ReadOptions,
        horizon: Lsn,
        stops: Option<&mut ImageStops>,
    ) -> Result<Reconstructed, GetPageError> {
        // Another shard indexed this page's history (a page of a copied database whose
        // template page is another shard's ends here too: the copy is then unprovable here).
        if !self.shard_map.owns(key) {
            return Err(GetPageError::NotOwned {
                key: *key,
                owner: self.shard_map.owner(key),
                shard: self.shard_map.shard,
            });
        }
        let t0 = std::time::Instant::now();
        let mut phases = ReadPhases::default();
        let plan = self.lookup(key, lsn, opts, horizon)?;
        phases.lookup_us = micros_since(t0);
        let t1 = std::time::Instant::now();
        self.prefetch(&plan, reader);
        let mut page: Box<Page> = Box::new([0u8; BLCKSZ]);
        let mut rec = DecodedRecord::default();
        let mut template_deltas = 0;
        let (start_lsn, start) = self.load_start(
            &plan,
            reader,
            &mut page,
            &mut rec,
            opts,
            &mut template_deltas,
        )?;
        phases.start_us = micros_since(t1);
        let t2 = std::time::Instant::now();
        self.replay(&plan, reader, &mut page, &mut rec, stops)?;
        phases.replay_us = micros_since(t2);
        if opts.cache {
            lock(&self.cache).put(*key, plan.target, &page[..]);
        }
        Ok(Reconstructed {
            page: page.to_vec(),
            deltas_replayed: (plan.changes.len() as u32).saturating_add(template_deltas),
            start_lsn,
            start,
            phases,
        })
    }

    /// Phase 1: where the page as of `lsn` starts (the newest of: a generated or retained
    /// image, a cached page, a WAL image or initialisation, a removal, the base backup) and
    /// the changes after it, copied out of the index so the replay runs without its lock.
    fn lookup(
        &self,
        key: &PageKey,
        lsn: Option<Lsn>,
        opts: ReadOptions,
        horizon: Lsn,
    ) -> Result<ReadPlan, GetPageError> {
        let decoded = read(&self.index).last_record_end;
        let target = lsn.unwrap_or(decoded);
        if target > decoded {
            return Err(GetPageError::NotYetReceived {
                key: *key,
                lsn: target,
                decoded,
            });
        }
        if target < horizon {
            return Err(GetPageError::BeforeRetention {
                key: *key,
                lsn: target,
                start: horizon,
            });
        }
        // The helper's own images and the cache: looked up before the index lock (image
        // generation takes the image store's lock and then the index's).
        let mut start = Start::Base;
        {
            let images = read(&self.images);
            if opts.generated_images {
                if let Some(l) = images.newest_at_or_before(key, target) {
                    start = start.newest(Start::Generated(l));
                }
            } else if horizon > self.backup_start {
                // The whole chain now starts at the image retention kept at the horizon.
                if let Some(l) = images.newest_at_or_before(key, Lsn(horizon.0 - 1)) {
                    start = start.newest(Start::Retained(l));
                }
            }
        }
        let cached = if opts.cache {
            lock(&self.cache).get(key, target, horizon)
        } else {
            None
        };
        if let Some((l, _)) = &cached {
            start = start.newest(Start::Cached(*l));
        }
        let idx = read(&self.index);
        if let Some(l) = idx.relation_events.removed_at(key, target) {
            start = start.newest(Start::Removed(l));
        }
        if let Some((l, template)) = idx.relation_events.copied_at(key, target) {
            start = start.newest(Start::Copied(l, template));
        }
        let Some(h) = idx.page(key) else {
            return Ok(ReadPlan {
                key: *key,
                target,
                horizon,
                start,
                cached,
                start_change: None,
                changes: Vec::new(),
            });
        };
        if let Some((l, StartKind::Wal)) = h.wal_start_point(target) {
            start = start.newest(Start::Wal(l));
        }
        if start == Start::Base
            && target < self.backup_end
            && let Some(c) = h.changes_between(Some(target), self.backup_end).first()
        {
            return Err(GetPageError::BeforeConsistent {
                key: *key,
                lsn: target,
                change: c.lsn,
                consistent: self.backup_end,
            });
        }
        let start_change = match start {
            // At a copy: the unreadable marker retention keeps there for a page whose
            // template it could not prove (see `load_start`).
            Start::Wal(l) | Start::Copied(l, _) => h.change_at(l),
            _ => None,
        };
        Ok(ReadPlan {
            key: *key,
            target,
            horizon,
            start,
            cached,
            start_change,
            changes: h.changes_between(start.lsn(), target).to_vec(),
        })
    }

    /// Before phase 2: when more than one piece of the read may have to come from disk (the
    /// start page and deltas older than the WAL kept in memory), asks the OS for all of them
    /// at once, so a cold read waits for about one device read instead of one per piece.
    fn prefetch(&self, plan: &ReadPlan, reader: &mut RecordReader) {
        let from_disk = |l: &Lsn| !self.recent_wal.holds(*l);
        let old_deltas = plan.changes.iter().filter(|c| from_disk(&c.lsn)).count();
        let start_from_disk = match plan.start {
            Start::Base => true,
            Start::Wal(l) => from_disk(&l),
            _ => false,
        };
        if old_deltas + usize::from(start_from_disk) < 2 {
            return;
        }
        if plan.start == Start::Base {
            self.base.prefetch_page(&plan.key);
        }
        let start = match plan.start {
            Start::Wal(l) => Some(l),
            _ => None,
        };
        reader.prefetch(start.into_iter().chain(plan.changes.iter().map(|c| c.lsn)));
    }

    /// The image of `key` at exactly `lsn` into `page`; false when there is none. Under
    /// `--cache-size` its file may be evicted and the read a GET from the bucket: that read
    /// is made after the image store's lock is released, or every image writer (and, behind
    /// a queued writer, every other reader and `/status`) would wait for the bucket.
    fn read_image(
        &self,
        key: &PageKey,
        lsn: Lsn,
        page: &mut [u8],
    ) -> Result<bool, ImageStoreError> {
        if !super::cache::is_active() {
            return read(&self.images).read_into(key, lsn, page);
        }
        let mut tried: Option<super::images::LocatedImage> = None;
        loop {
            // (A statement of its own: the guard ends with it.)
            let at = read(&self.images).locate(key, lsn);
            let Some(at) = at else { return Ok(false) };
            match at.read_into(page) {
                Ok(()) => return Ok(true),
                // Compaction may have moved the entry and removed its file since `locate`:
                // once more from where the store now says it is.
                Err(_) if tried.as_ref() != Some(&at) => tried = Some(at),
                Err(e) => return Err(e),
            }
        }
    }

    /// Phase 2: loads the plan's starting page into `page`; returns its LSN and source, and
    /// sets `template_deltas` to the deltas replayed to rebuild a template's page.
    fn load_start(
        &self,
        plan: &ReadPlan,
        reader: &mut RecordReader,
        page: &mut Page,
        rec: &mut DecodedRecord,
        opts: ReadOptions,
        template_deltas: &mut u32,
    ) -> Result<(Lsn, StartSource), GetPageError> {
        let key = &plan.key;
        Ok(match plan.start {
            Start::Generated(l) => {
                if !self.read_image(key, l, &mut page[..])? {
                    return Err(GetPageError::Unknown { key: *key });
                }
                (l, StartSource::GeneratedImage)
            }
            Start::Retained(l) => {
                if !self.read_image(key, l, &mut page[..])? {
                    return Err(GetPageError::Unknown { key: *key });
                }
                (l, StartSource::RetainedImage)
            }
            Start::Cached(l) => {
                if let Some((_, p)) = &plan.cached {
                    copy_page(page, p, key)?;
                }
                (l, StartSource::CachedPage)
            }
            Start::Wal(l) => {
                if let Some(c) = &plan.start_change {
                    plan.check_supported(c)?;
                }
                plan.read_record(reader, l, rec)?;
                apply_to_page(page, rec, key, &self.redo.ctx)?;
                (l, StartSource::WalImage)
            }
            Start::Removed(l) => {
                if plan.changes.is_empty() {
                    return Err(GetPageError::Removed {
                        key: *key,
                        lsn: plan.target,
                        at: l,
                    });
                }
                (l, StartSource::AfterRemoval)
            }
            Start::Copied(at, template) => {
                let (l, source, deltas) =
                    self.load_template_page(plan, at, template, reader, page, opts)?;
                *template_deltas = deltas;
                (l, source)
            }
            Start::Base => match self
                .base
                .read_page_into(key, &mut page[..])
                .map_err(|source| GetPageError::Base { key: *key, source })?
            {
                true => (self.backup_start, StartSource::BaseBackup),
                // A page that did not exist at the backup: its first record must create it.
                false if !plan.changes.is_empty() => {
                    page.fill(0);
                    (self.backup_start, StartSource::EmptyPage)
                }
                false => return Err(GetPageError::Unknown { key: *key }),
            },
        })
    }

    /// The start of a page of a copied database: the template's page as of the copy, read
    /// through this store (generated images as the read allows, no cache).
    /// Returns the start's LSN and source and the deltas replayed to rebuild the template's
    /// page.
    fn load_template_page(
        &self,
        plan: &ReadPlan,
        at: Lsn,
        template: DatabaseDir,
        reader: &mut RecordReader,
        page: &mut Page,
        opts: ReadOptions,
    ) -> Result<(Lsn, StartSource, u32), GetPageError> {
        let key = &plan.key;
        if let Some(c) = &plan.start_change {
            // Retention could not prove the template's page when the horizon passed the
            // copy, and kept the copy as the page's unreadable marker.
            plan.check_supported(c)?;
        }
        // Nothing of the page at the copy, or only records after it create the page.
        let absent = || {
            if plan.changes.is_empty() {
                Err(GetPageError::Unknown { key: *key })
            } else {
                Ok((at, StartSource::EmptyPage, 0))
            }
        };
        if at < plan.horizon {
            // The template's history at the copy is gone. Retention, before it moved the
            // horizon past the copy, stored every page of the copy as an image at the copy's
            // LSN (or kept a marker for one it could not prove), and that image is the newer
            // start on a tie: no image means the template had no such page.
            return absent();
        }
        let template_key = template.page(key);
        let template_opts = ReadOptions {
            cache: false,
            ..opts
        };
        match self.reconstruct_gated(
            reader,
            &template_key,
            Some(at),
            template_opts,
            plan.horizon,
            None,
        ) {
            Ok(r) => {
                copy_page(page, &r.page, key)?;
                Ok((at, StartSource::TemplateCopy, r.deltas_replayed))
            }
            // `copydir` copies the files the template has: a page it did not have (never
            // created, truncated or dropped before the copy) is not in the copy either.
            Err(GetPageError::Unknown { .. } | GetPageError::Removed { .. }) => absent(),
            Err(source) => Err(GetPageError::TemplateUnprovable {
                key: *key,
                lsn: plan.target,
                at,
                copy: DatabaseDir::of(&key.rel),
                template,
                template_key,
                source: Box::new(source),
            }),
        }
    }

    /// Phase 3: applies the plan's changes to `page` with the Rust redo; with `stops`, keeps
    /// a copy of the page after every `stops.every`-th change but the last.
    fn replay(
        &self,
        plan: &ReadPlan,
        reader: &mut RecordReader,
        page: &mut Page,
        rec: &mut DecodedRecord,
        mut stops: Option<&mut ImageStops>,
    ) -> Result<(), GetPageError> {
        let last = plan.changes.len();
        for (i, c) in plan.changes.iter().enumerate() {
            plan.check_supported(c)?;
            plan.read_record(reader, c.lsn, rec)?;
            apply_to_page(page, rec, &plan.key, &self.redo.ctx)?;
            if let Some(s) = stops.as_deref_mut() {
                let applied = i + 1;
                // The page after every change at or before `c.lsn`: what a read at that LSN
                // returns, so a valid start for any later read.
                if applied < last && applied.is_multiple_of(s.every as usize) {
                    s.pages.push((c.lsn, page.to_vec()));
                }
            }
        }
        Ok(())
    }
}

/// What [`PageStore::lookup`] found: where a read starts and the changes after it.
struct ReadPlan {
    key: PageKey,
    /// The LSN the page is read as of.
    target: Lsn,
    /// The retention horizon the read goes by (see `reconstruct_using`).
    horizon: Lsn,
    start: Start,
    /// The cached page, when the read starts from it.
    cached: Option<(Lsn, Arc<Vec<u8>>)>,
    /// The change that is the start, when the start is a WAL image or initialisation.
    start_change: Option<PageChange>,
    /// The changes after the start up to `target`, in LSN order.
    changes: Vec<PageChange>,
}

impl ReadPlan {
    fn read_record(
        &self,
        reader: &mut RecordReader,
        at: Lsn,
        rec: &mut DecodedRecord,
    ) -> Result<(), GetPageError> {
        reader
            .read_into(at, rec)
            .map_err(|source| GetPageError::Record {
                key: self.key,
                source,
            })
    }

    /// A change by a record the redo does not replay makes the page unreadable, by name.
    fn check_supported(&self, c: &PageChange) -> Result<(), GetPageError> {
        if c.kind == ChangeKind::Unsupported {
            return Err(GetPageError::Unreadable {
                key: self.key,
                lsn: self.target,
                rmgr: crate::wal::rmgr::RmgrId(c.rmid).name().into_owned(),
                record: record_type_name(c.rmid, c.info).into_owned(),
                at: c.lsn,
            });
        }
        Ok(())
    }
}

/// A page as of an LSN.
pub(crate) type PageAt = (Lsn, Vec<u8>);

/// Pages kept along a replay for image generation (see [`PageStore::reconstruct_for_images`]).
struct ImageStops {
    every: u32,
    pages: Vec<PageAt>,
}

/// At most this many idle readers are kept (one per concurrent reconstruction is enough).
const POOLED_READERS: usize = 8;

/// What a reconstruction may start from besides WAL images and the base backup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ReadOptions {
    /// The helper's generated images.
    pub generated_images: bool,
    /// The cache of recently served pages (read and filled).
    pub cache: bool,
}

impl Default for ReadOptions {
    fn default() -> ReadOptions {
        ReadOptions {
            generated_images: true,
            cache: true,
        }
    }
}

impl ReadOptions {
    /// The whole chain from the WAL or the base backup: no generated image, no cache.
    pub(crate) fn full_chain() -> ReadOptions {
        ReadOptions {
            generated_images: false,
            cache: false,
        }
    }
}

fn copy_page(page: &mut Page, src: &[u8], key: &PageKey) -> Result<(), GetPageError> {
    if src.len() != BLCKSZ {
        return Err(GetPageError::Base {
            key: *key,
            source: std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("stored page is {} bytes, not {BLCKSZ}", src.len()),
            ),
        });
    }
    page.copy_from_slice(src);
    Ok(())
}
