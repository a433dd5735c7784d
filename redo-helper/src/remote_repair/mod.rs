//! Remote repair: `redo-helper repair --helper URL[,URL...] --pgdata PGDATA` repairs the
//! torn pages of a crashed cluster that ran with full_page_writes off from helpers running
//! on other hosts, over their authenticated API, without the helpers' data directories.
//!
//! The helpers keep running; their replication connection is gone with PostgreSQL. Local
//! repair (`store::repair`) appends the WAL in `pg_wal` to the helper's archive and rebuilds
//! pages there; a remote repair cannot write into a helper's archive, so it splits the work:
//!
//! 1. The same refusals as local repair ([`preflight`], [`check_identity`]): a running
//!    postmaster, a missing or damaged `pg_control`, a helper of another cluster or
//!    timeline (from its `/status`); after a clean shutdown nothing is done.
//! 2. Each helper lists the pages it owns that changed at or after the last checkpoint's
//!    REDO location, and the end of the WAL it decoded (`GET /repair/changed`); with
//!    several shards the lists together must cover every shard (else refused: pages would
//!    be missed silently). The helpers' common end `E` is the smallest of their ends.
//! 3. `PGDATA/pg_wal` is read from `E` to the end of valid WAL, as crash recovery will
//!    (the first invalid or missing record ends it): the tail the helpers never received.
//!    Its records are kept in memory with the pages each changes and its relation-level
//!    events (drops, truncations).
//! 4. Every page changed since REDO (from the lists and from the tail) is read from its
//!    owner as of `E` (`GET /page?lsn=E-1`: every record that starts before `E`, which is
//!    where the tail starts), the tail's records are applied by the redo engine here, and
//!    the page is written with its checksum; files and directories are fsynced. Its page
//!    LSN is then its last change, so crash recovery skips every record already in it
//!    (`XLogReadBufferForRedo` returns `BLK_DONE` when the page LSN is not older than the
//!    record). A page dropped or truncated after its last change is not written (not
//!    resurrected); a page that cannot be rebuilt (the helper answers 409, or the tail
//!    has a record the redo engine does not replay) is named and the command exits 1.
//!
//! Local repair's step 4, the check of every other page, compares each with the helper's
//! page; remote, that would fetch the whole cluster over the network. Instead, with data
//! checksums, every page of the data files is read here and only a page whose checksum
//! fails (a torn write of a page not changed since the checkpoint: hint bits, which are
//! not WAL-logged with FPW off) is fetched from its owner and rewritten. Without data
//! checksums a torn page that did not change since the checkpoint cannot be told from a
//! good one without the helper's copy: it is left alone, and the summary says so (local
//! repair, or `redo-helper check`, can compare every page). `--changed-only` skips the
//! scan.

pub(crate) mod client;

use crate::pgdata::control_file::ControlFile;
use crate::redo::page::Page;
use crate::redo::{RedoContext, RelationChange, apply_to_page, implicit_changes, relation_changes};
use crate::store::offline::WalCatchUp;
use crate::store::repair::{
    OpenFiles, Preflight, RepairError, RepairProgress, RepairSummary, check_identity, checksum_ok,
    preflight,
};
use crate::store::shard::ShardMap;
use crate::wal::DecodedRecord;
use crate::wal::block::{ForkNumber, PageKey};
use crate::wal::error::WalError;
use crate::wal::page::{BLCKSZ, Lsn};
use crate::wal::reader::{FileReaderOptions, WalFileReader};
use client::{ChangedPages, ClientError, HelperClient, PageAnswer, Token};
use futures_util::StreamExt;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Page reads in flight at once (over all helpers).
const CONCURRENT_READS: usize = 32;

#[derive(Debug, Clone)]
pub(crate) struct RemoteRepairOptions {
    /// The helpers' API base URLs (one per shard, in any order; duplicates of a shard are
    /// allowed, the first answers).
    pub helpers: Vec<String>,
    pub token_file: Option<PathBuf>,
    pub ca_file: Option<PathBuf>,
    pub pgdata: PathBuf,
    pub progress_every: Duration,
    pub even_if_clean: bool,
    /// Skip the checksum scan of the pages not changed since the checkpoint.
    pub changed_only: bool,
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum RemoteRepairError {
    #[error(transparent)]
    Repair(#[from] RepairError),
    #[error(transparent)]
    Client(#[from] ClientError),
    /// With several helpers, which one follows another cluster matters.
    #[error("helper {url}: {source}")]
    Identity { url: String, source: RepairError },
    #[error("no --helper given")]
    NoHelper,
    #[error("the helpers do not agree on the shard map: {0}")]
    ShardMaps(String),
    #[error(
        "no helper of shard {missing} of {shards} was given: its pages cannot be repaired (pass every shard's URL with --helper)"
    )]
    MissingShard { missing: u32, shards: u32 },
    #[error("reading {pg_wal} from {from}: {source}")]
    Wal {
        pg_wal: PathBuf,
        from: Lsn,
        source: WalError,
    },
    #[error(
        "{pg_wal}: its valid WAL ends at {end} ({stopped}), before the {helper_end} helper {url} decoded: it is not the WAL of the cluster the helpers follow"
    )]
    WalBehind {
        pg_wal: PathBuf,
        end: Lsn,
        stopped: String,
        helper_end: Lsn,
        url: String,
    },
    #[error("reading the data files of {pgdata}: {source}")]
    Scan {
        pgdata: PathBuf,
        source: std::io::Error,
    },
    #[error("starting the HTTP client's runtime: {0}")]
    Runtime(std::io::Error),
}

/// The WAL in `pg_wal` past the helpers' common end: records, the pages each changes, and
/// the relation-level events.
#[derive(Default)]
struct Tail {
    records: Vec<DecodedRecord>,
    /// Record indexes (in LSN order) per page.
    by_page: HashMap<PageKey, Vec<u32>>,
    events: Vec<(Lsn, RelationChange)>,
    wal: WalCatchUp,
}

impl Tail {
    /// Whether a drop or truncation after `after` removes `key` (it must not be written:
    /// crash recovery removes it again, and writing would create a file it never has).
    fn gone_after(&self, key: &PageKey, after: Lsn) -> bool {
        self.events.iter().any(|(lsn, ev)| {
            *lsn > after
                && match *ev {
                    RelationChange::Drop { rel } => rel == key.rel,
                    RelationChange::DropDatabase { db_oid, spc_oids } => {
                        key.rel.db_oid == db_oid && spc_oids.contains(&key.rel.spc_oid)
                    }
                    RelationChange::Truncate {
                        rel, fork, nblocks, ..
                    } => rel == key.rel && fork == key.fork && key.block >= nblocks,
                    RelationChange::Create { .. } | RelationChange::CopyDatabase { .. } => false,
                }
        })
    }
}

/// Reads `pg_wal` from `from` to the end of valid WAL (see the module documentation).
fn read_tail(pg_wal: &Path, from: Lsn, control: &ControlFile) -> Result<Tail, RemoteRepairError> {
    let mut tail = Tail {
        wal: WalCatchUp {
            from,
            end: from,
            ..Default::default()
        },
        ..Default::default()
    };
    // Where the next record starts: MAXALIGNed after the last one (the reader skips a
    // page header in between).
    let start = Lsn((from.0 + 7) & !7);
    let opts = FileReaderOptions {
        timeline: Some(control.timeline),
        system_identifier: Some(control.system_identifier),
        version: Some(control.version),
        ..Default::default()
    };
    let wal_err = |source| RemoteRepairError::Wal {
        pg_wal: pg_wal.to_path_buf(),
        from,
        source,
    };
    let mut reader = match WalFileReader::open(pg_wal, start, opts) {
        Ok(r) => r,
        // No segment for the next record (WAL ended at a segment boundary): no tail.
        Err(e) if e.is_end_of_wal() => {
            tail.wal.stopped = e.to_string();
            return Ok(tail);
        }
        Err(e) => return Err(wal_err(e)),
    };
    loop {
        let mut rec = DecodedRecord::default();
        match reader.next_record_into(&mut rec) {
            Ok(true) => {}
            Ok(false) => {
                tail.wal.stopped = "end of the segment files".into();
                break;
            }
            Err(e) => {
                tail.wal.stopped = e.to_string();
                break;
            }
        }
        let i = tail.records.len() as u32;
        let mut touched: Vec<PageKey> = rec.blocks().iter().map(|b| b.page_key()).collect();
        // Heap records clear VM bits and smgr truncations trim the last VM page without
        // a block reference (as the store's index counts them).
        if matches!(
            rec.rmid(),
            crate::wal::rmgr::RM_HEAP_ID
                | crate::wal::rmgr::RM_HEAP2_ID
                | crate::wal::rmgr::RM_SMGR_ID
        ) {
            for (k, _) in implicit_changes(&rec) {
                if !touched.contains(&k) {
                    touched.push(k);
                }
            }
        }
        for k in touched {
            if k.fork != ForkNumber::FSM {
                tail.by_page.entry(k).or_default().push(i);
            }
        }
        for ev in relation_changes(&rec) {
            tail.events.push((rec.lsn, ev));
        }
        tail.wal.end = rec.end_lsn;
        tail.wal.records += 1;
        tail.records.push(rec);
    }
    Ok(tail)
}

/// What one page became.
enum Rebuilt {
    Page(Box<Page>),
    /// Dropped or truncated as of the end of WAL.
    Removed,
    Unrepairable(String),
}

/// The page `key` as of the end of WAL: the helper's page as of the common end, with the
/// tail's records applied.
fn rebuild(key: &PageKey, answer: PageAnswer, tail: &Tail, ctx: &RedoContext) -> Rebuilt {
    let recs: &[u32] = tail.by_page.get(key).map_or(&[], |v| v.as_slice());
    // The first tail record rebuilds the page from nothing (an image or an initialisation):
    // what the helper had does not matter.
    let starts_fresh = recs.first().is_some_and(|&i| {
        tail.records[i as usize]
            .blocks()
            .iter()
            .find(|b| b.page_key() == *key)
            .is_some_and(|b| b.has_applicable_image() || b.will_init())
    });
    let mut page: Box<Page> = match answer {
        PageAnswer::Page(p) => p,
        PageAnswer::Absent if recs.is_empty() => return Rebuilt::Removed,
        PageAnswer::Absent if starts_fresh || key.fork == ForkNumber::VM => {
            // Created in the tail; or a VM page, which redo reads with RBM_ZERO_ON_ERROR
            // (a missing one starts zeroed: heapam's visibilitymap_clear in redo).
            Box::new([0u8; BLCKSZ])
        }
        PageAnswer::Absent => {
            // PostgreSQL's redo would find no such page (BLK_NOTFOUND) and skip the change:
            // deltas on a zeroed page would be a guess, never written.
            return Rebuilt::Unrepairable(format!(
                "page {key}: the helpers do not have it at their end, and the first record of the tail that changes it ({}) neither initialises it nor carries its image",
                recs.first()
                    .map(|&i| tail.records[i as usize].lsn)
                    .unwrap_or_default()
            ));
        }
        PageAnswer::Unreadable(_) if starts_fresh => Box::new([0u8; BLCKSZ]),
        PageAnswer::Unreadable(why) => return Rebuilt::Unrepairable(format!("page {key}: {why}")),
    };
    let mut last = Lsn(0);
    for &i in recs {
        let rec = &tail.records[i as usize];
        if let Err(e) = apply_to_page(&mut page, rec, key, ctx) {
            return Rebuilt::Unrepairable(format!("page {key}: {e}"));
        }
        last = rec.lsn;
    }
    if tail.gone_after(key, last) {
        return Rebuilt::Removed;
    }
    Rebuilt::Page(page)
}

/// The helpers, one per shard, and what they listed.
struct Helpers {
    clients: Vec<HelperClient>,
    /// Client index per shard number.
    owners: Vec<usize>,
    map: ShardMap,
    lists: Vec<ChangedPages>,
    /// Their common end.
    end: Lsn,
}

impl Helpers {
    fn owner(&self, key: &PageKey) -> &HelperClient {
        let shard = self.map.owner(key) as usize;
        &self.clients[self.owners[shard.min(self.owners.len() - 1)]]
    }
}

/// Connects to every helper, checks who they follow and that they cover every shard, and
/// asks each for its changed pages.
async fn ask_helpers(
    opts: &RemoteRepairOptions,
    control: &ControlFile,
) -> Result<Helpers, RemoteRepairError> {
    if opts.helpers.is_empty() {
        return Err(RemoteRepairError::NoHelper);
    }
    let token = opts.token_file.as_deref().map(Token::read).transpose()?;
    let mut clients = Vec::new();
    for url in &opts.helpers {
        clients.push(HelperClient::new(
            url,
            token.clone(),
            opts.ca_file.as_deref(),
        )?);
    }
    for c in &clients {
        let id = c.identity().await?;
        check_identity(&opts.pgdata, control, id.system_identifier, id.timeline).map_err(
            |source| RemoteRepairError::Identity {
                url: c.url.clone(),
                source,
            },
        )?;
    }
    let mut lists = Vec::new();
    for c in &clients {
        lists.push(c.changed(control.redo).await?);
    }
    let first = &lists[0];
    let (shards, stripe) = (first.shards, first.stripe_blocks);
    for (c, l) in clients.iter().zip(&lists) {
        if (l.shards, l.stripe_blocks) != (shards, stripe) {
            return Err(RemoteRepairError::ShardMaps(format!(
                "{} has {} shards of stripes of {} blocks, {} has {shards} of {stripe}",
                c.url, l.shards, l.stripe_blocks, clients[0].url
            )));
        }
    }
    let mut owners = vec![usize::MAX; shards as usize];
    for (i, l) in lists.iter().enumerate() {
        if let Some(o) = owners.get_mut(l.shard as usize)
            && *o == usize::MAX
        {
            *o = i;
        }
    }
    if let Some(missing) = owners.iter().position(|o| *o == usize::MAX) {
        return Err(RemoteRepairError::MissingShard {
            missing: missing as u32,
            shards,
        });
    }
    // A second helper of the same shard (a replacement, a replica) adds nothing.
    let used: HashSet<usize> = owners.iter().copied().collect();
    let end = lists
        .iter()
        .enumerate()
        .filter(|(i, _)| used.contains(i))
        .map(|(_, l)| l.end)
        .min()
        .unwrap_or(Lsn(0));
    Ok(Helpers {
        clients,
        owners,
        map: ShardMap {
            shards,
            shard: 0,
            stripe_blocks: stripe,
        },
        lists,
        end,
    })
}

/// Runs the remote repair (see the module documentation).
pub(crate) fn repair_from_helpers(
    opts: &RemoteRepairOptions,
    progress: &mut dyn FnMut(RepairProgress),
) -> Result<RepairSummary, RemoteRepairError> {
    let pgdata = &opts.pgdata;
    let (control, _lock) = match preflight(pgdata, opts.even_if_clean, progress)? {
        Preflight::Clean(sum) => return Ok(sum),
        Preflight::Crashed { control, lock } => (control, lock),
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(RemoteRepairError::Runtime)?;
    rt.block_on(repair_async(opts, &control, progress))
}

async fn repair_async(
    opts: &RemoteRepairOptions,
    control: &ControlFile,
    progress: &mut dyn FnMut(RepairProgress),
) -> Result<RepairSummary, RemoteRepairError> {
    let pgdata = &opts.pgdata;
    let helpers = ask_helpers(opts, control).await?;
    let mut sum = RepairSummary {
        redo: control.redo,
        data_checksums: control.data_checksum_version != 0,
        ..Default::default()
    };
    let pg_wal = pgdata.join("pg_wal");
    let tail = read_tail(&pg_wal, helpers.end, control)?;
    // Every helper's decoded WAL must be in pg_wal: a helper ahead of it follows another
    // history (pg_wal restored from elsewhere).
    for (i, l) in helpers.lists.iter().enumerate() {
        if l.end > tail.wal.end {
            return Err(RemoteRepairError::WalBehind {
                pg_wal,
                end: tail.wal.end,
                stopped: tail.wal.stopped.clone(),
                helper_end: l.end,
                url: helpers.clients[i].url.clone(),
            });
        }
    }
    crate::store::repair::wal_reaches_checkpoint(
        tail.wal.end.max(helpers.end),
        control.checkpoint,
        &tail.wal.stopped,
    )?;
    sum.wal = tail.wal.clone();
    progress(RepairProgress::WalTaken(&sum.wal));
    for (lsn, ev) in &tail.events {
        if let RelationChange::CopyDatabase { dst, src } = ev {
            // Crash recovery copies the template's files as they are then; its pages are
            // written here as of the end of WAL, so the copy would not be what the primary
            // had. Local repair handles it from the helper's index; remotely it is refused.
            sum.unrepairable += 1;
            sum.problem(|| {
                format!(
                    "database copy {src} -> {dst} at {lsn} in the WAL the helpers did not receive: not repaired (run local repair on the helper's host)"
                )
            });
        }
    }
    let ctx = RedoContext {
        data_checksums: sum.data_checksums,
        wal_log_hints: helpers.lists[0].wal_log_hints,
    };
    let mut keys: BTreeSet<PageKey> = BTreeSet::new();
    for (i, l) in helpers.lists.iter().enumerate() {
        // Only the owner's list: a second helper of a shard would repeat it.
        keys.extend(
            l.pages
                .iter()
                .filter(|k| helpers.owners[helpers.map.owner(k) as usize] == i),
        );
    }
    keys.extend(tail.by_page.keys().copied());
    progress(RepairProgress::HelpersAsked {
        helpers: helpers.clients.len(),
        pages: keys.len(),
        end: helpers.end,
    });
    let at = Lsn(helpers.end.0.saturating_sub(1));
    let mut files = OpenFiles::default();
    let started = Instant::now();
    let mut last_progress = Instant::now();
    let total = keys.len();
    let written: HashSet<PageKey> = keys.iter().copied().collect();
    let mut reads = futures_util::stream::iter(keys.into_iter().map(|key| {
        let h = helpers.owner(&key);
        async move { (key, h.page(&key, at).await) }
    }))
    .buffered(CONCURRENT_READS);
    let mut done = 0usize;
    while let Some((key, answer)) = reads.next().await {
        done += 1;
        if last_progress.elapsed() >= opts.progress_every {
            progress(RepairProgress::Pages {
                done,
                total,
                written: sum.changed_written,
                rewritten: 0,
                elapsed: started.elapsed(),
            });
            last_progress = Instant::now();
        }
        let answer = answer?;
        match rebuild(&key, answer, &tail, &ctx) {
            Rebuilt::Removed => sum.removed_skipped += 1,
            Rebuilt::Unrepairable(why) => {
                sum.unrepairable += 1;
                sum.problem(|| format!("not repaired: {why}"));
            }
            Rebuilt::Page(mut page) => {
                let before = crate::pgdata::read_pg_page(pgdata, &key).ok().flatten();
                if !files.write_page(pgdata, &key, &mut page, sum.data_checksums)? {
                    sum.no_directory += 1;
                    continue;
                }
                sum.changed_written += 1;
                // Masked, as local repair counts it (hint bits, LSN and checksum aside).
                sum.changed_differed += u64::from(before.is_none_or(|b| {
                    crate::store::check::masked_difference(&key, &page, &b, None).is_some()
                }));
            }
        }
    }
    drop(reads);
    if !opts.changed_only && sum.data_checksums {
        check_unchanged(opts, &helpers, at, &written, &mut files, &mut sum).await?;
    }
    let synced = files.sync()?;
    progress(RepairProgress::Done {
        total,
        synced,
        elapsed: started.elapsed(),
    });
    Ok(sum)
}

/// The replacement of local repair's check of unchanged pages (see the module
/// documentation): every data-file page not written above is checksum-verified here; one
/// that fails is fetched from its owner and rewritten.
async fn check_unchanged(
    opts: &RemoteRepairOptions,
    helpers: &Helpers,
    at: Lsn,
    written: &HashSet<PageKey>,
    files: &mut OpenFiles,
    sum: &mut RepairSummary,
) -> Result<(), RemoteRepairError> {
    use std::os::unix::fs::FileExt;
    let pgdata = &opts.pgdata;
    let scan_err = |source| RemoteRepairError::Scan {
        pgdata: pgdata.clone(),
        source,
    };
    let mut failing = Vec::new();
    let mut buf = vec![0u8; BLCKSZ * 128];
    for f in crate::pgdata::relation_files(pgdata).map_err(scan_err)? {
        if f.name.fork == ForkNumber::FSM {
            continue;
        }
        let file = std::fs::File::open(&f.path).map_err(scan_err)?;
        let mut off = 0u64;
        loop {
            let n = file.read_at(&mut buf, off).map_err(scan_err)?;
            let whole = n / BLCKSZ * BLCKSZ;
            for (j, chunk) in buf[..whole].chunks_exact(BLCKSZ).enumerate() {
                // A stray file name with a huge segment number would overflow: not a page.
                let Some(block) = f
                    .name
                    .segment
                    .checked_mul(crate::pgdata::relpath::RELSEG_SIZE)
                    .and_then(|b| {
                        b.checked_add(u32::try_from(off / BLCKSZ as u64 + j as u64).ok()?)
                    })
                else {
                    continue;
                };
                let key = PageKey {
                    rel: f.rel,
                    fork: f.name.fork,
                    block,
                };
                if written.contains(&key) {
                    continue;
                }
                sum.checked += 1;
                let Ok(page) = <&Page>::try_from(chunk) else {
                    continue;
                };
                if !checksum_ok(page, block) {
                    failing.push(key);
                }
            }
            if n < buf.len() {
                break;
            }
            off += n as u64;
        }
    }
    let empty = Tail::default();
    let ctx = RedoContext::default();
    for key in failing {
        match rebuild(
            &key,
            helpers.owner(&key).page(&key, at).await?,
            &empty,
            &ctx,
        ) {
            Rebuilt::Page(mut page) => {
                files.write_page(pgdata, &key, &mut page, true)?;
                sum.rewritten_checksum += 1;
            }
            // A page the helpers do not have (an orphan file, a page beyond a truncation
            // not yet replayed): left to PostgreSQL, as local repair does.
            Rebuilt::Removed => sum.removed_skipped += 1,
            Rebuilt::Unrepairable(why) => {
                sum.errors += 1;
                sum.problem(|| format!("failed checksum, not repaired: {why}"));
            }
        }
    }
    Ok(())
}
