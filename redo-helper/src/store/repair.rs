//! `redo-helper repair`: torn pages of a crashed cluster that ran with full_page_writes off.
//!
//! With FPW off, a page write interrupted by a crash can leave a page that is part new, part
//! old ("torn"). PostgreSQL's crash recovery replays deltas on top of whatever is on disk and
//! would build on the torn page: silent corruption (FPW exists to prevent exactly this). The
//! helper has every page, so before PostgreSQL is started again:
//!
//! 1. the WAL in `PGDATA/pg_wal` that the helper had not acknowledged yet is taken into its
//!    archive, up to the end of the last valid record (where crash recovery stops too);
//! 2. every page changed at or after the REDO location of the last checkpoint (from
//!    `pg_control`) is written into the data files as of the end of WAL. Its `pd_lsn` is then
//!    the LSN of its last change, so crash recovery skips every record already in it
//!    (XLogReadBufferForRedo returns BLK_DONE when the page LSN is not older than the record);
//! 3. every other page the helper knows is checked and rewritten if it fails: its data
//!    checksum when the cluster has them (hint-bit-only writes are not WAL-logged with FPW
//!    off and can tear too), and a masked comparison with the helper's page in any case.
//!
//! The pages of a database created with `STRATEGY FILE_COPY` are known from its template's
//! (no record names them) and rebuilt from the template's page as of the copy; a copy at or
//! after the REDO location counts as a change of every page of the copy.
//! Pages of relations dropped or truncated in the WAL are not written (not resurrected). The
//! free space map is not WAL-logged and is left alone: PostgreSQL reads FSM pages with
//! RBM_ZERO_ON_ERROR and rebuilds them. A page changed since the checkpoint that the helper
//! cannot rebuild (an access method it does not replay: a custom resource manager; BRIN,
//! GIN, GiST, hash, SP-GiST and
//! the generic WAL of bloom, rum or pgvector indexes are replayed) is reported, and the
//! command fails, so the operator knows it was not covered.
//!
//! As PostgreSQL's pre-start step (`ExecStartPre=`, `--if-needed` of the command), it must
//! work whether or not `redo-helper run` is up:
//! - a clean shutdown (pg_control `DB_SHUTDOWNED`, or `DB_SHUTDOWNED_IN_RECOVERY` for a
//!   standby: its shutdown restartpoint, or the one before it, covers what was written) is
//!   recognised from pg_control alone: nothing is done and the helper's directory is not
//!   opened, so its lock is not needed;
//! - after a crash, the repair needs the directory to itself: it appends the WAL from
//!   `pg_wal` to the helper's archive, which the running helper also writes. Reading pages
//!   through the helper's API instead would miss that WAL (the helper cannot stream it:
//!   PostgreSQL is down until the repair is done). So the running helper is asked to hand
//!   the directory over (`store::lock`: a request file and SIGUSR1): it stops cleanly,
//!   re-executes itself and waits; the repair takes the lock, repairs, releases it, and the
//!   helper starts again from the archive the repair extended, then streams on from its
//!   end once PostgreSQL is up.

use super::StoreError;
use super::check::{known_pages, masked_difference, page_kind_hint};
use super::index::PageIndex;
use super::meta::HelperMeta;
use super::offline::{OfflineStore, WalCatchUp};
use super::page_store::{GetPageError, PageStore, ReadOptions};
use crate::pgdata::control_file::{ControlFile, ControlFileError, DbState};
use crate::pgdata::read_pg_page;
use crate::pgdata::relpath::{RELSEG_SIZE, pg_relation_path};
use crate::redo::page::{Page, PageLayout, checksum_page};
use crate::sync::read;
use crate::wal::block::{ForkNumber, PageKey};
use crate::wal::page::{BLCKSZ, Lsn};
use std::collections::{BTreeSet, HashMap};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub(crate) enum RepairError {
    #[error(transparent)]
    Locked(#[from] crate::pgdata::lock::PostmasterLockError),
    #[error(transparent)]
    ControlFile(#[from] ControlFileError),
    #[error(
        "{pgdata} is a different cluster: system identifier {cluster}, the helper follows {helper}"
    )]
    WrongCluster {
        pgdata: PathBuf,
        cluster: u64,
        helper: u64,
    },
    #[error(
        "{pgdata} is on timeline {cluster}, the helper follows timeline {helper}: it cannot repair a cluster after a promotion"
    )]
    Timeline {
        pgdata: PathBuf,
        cluster: u32,
        helper: u32,
    },
    #[error(
        "{pgdata} is a cluster with pg_control_version {cluster}, but the helper follows {helper} (pg_control_version {expected})"
    )]
    WrongVersion {
        pgdata: PathBuf,
        cluster: u32,
        helper: crate::wal::PgVersion,
        expected: u32,
    },
    #[error(
        "the last checkpoint's REDO location {redo} is before the helper's history ({start}): pages changed since then are not all known"
    )]
    RedoBeforeHistory { redo: Lsn, start: Lsn },
    #[error(
        "the WAL ends at {end} ({stopped}), before the last checkpoint record at {checkpoint} that pg_control names: WAL the server wrote is missing from pg_wal and the helper, so pages changed after {end} are not known and crash recovery could not start; restore the missing pg_wal segments"
    )]
    WalBeforeCheckpoint {
        end: Lsn,
        checkpoint: Lsn,
        stopped: String,
    },
    #[error(
        "{dir} is the data directory of shard {map}: it holds only that shard's pages, so a repair from it alone would leave the other shards' torn pages in place; repair from every shard over their API (`repair --helper URL0,URL1,...`)"
    )]
    Sharded { dir: PathBuf, map: String },
    #[error("helper data directory: {0}")]
    Helper(Box<StoreError>),
    #[error("writing page {key} into {path}: {source}")]
    Write {
        key: PageKey,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("syncing {path}: {source}")]
    Sync {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Crash recovery starts by reading the checkpoint record pg_control names: the WAL known to
/// the repair (the helper's and pg_wal's) must reach past it, or pages changed in the missing
/// WAL would be neither listed nor replayed, and the repair would report success on pages it
/// never saw.
pub(crate) fn wal_reaches_checkpoint(
    end: Lsn,
    checkpoint: Lsn,
    stopped: &str,
) -> Result<(), RepairError> {
    if end <= checkpoint {
        return Err(RepairError::WalBeforeCheckpoint {
            end,
            checkpoint,
            stopped: stopped.to_string(),
        });
    }
    Ok(())
}

impl From<StoreError> for RepairError {
    fn from(e: StoreError) -> RepairError {
        RepairError::Helper(Box::new(e))
    }
}

#[derive(Debug, Clone)]
pub(crate) struct RepairOptions {
    pub data_dir: PathBuf,
    pub pgdata: PathBuf,
    /// [`RepairProgress::Pages`] at most this often.
    pub progress_every: Duration,
    /// Check and repair even after a clean shutdown (which cannot leave torn pages).
    pub even_if_clean: bool,
    /// Only write the pages changed since the checkpoint; do not read and check the others
    /// (faster on a large cluster; a torn hint-bit-only write is then left to PostgreSQL's
    /// checksum verification to report).
    pub changed_only: bool,
    /// When a running helper holds the directory: ask it to hand it over and wait this long
    /// (None: fail, the directory is in use).
    pub hand_over: Option<Duration>,
}

/// What [`repair`] reports while it works (the command prints it).
#[derive(Debug)]
pub(crate) enum RepairProgress<'a> {
    /// Nothing to do: the cluster was shut down cleanly, with this checkpoint.
    CleanShutdown { checkpoint: Lsn },
    /// The WAL taken from `pg_wal` into the helper's archive.
    WalTaken(&'a WalCatchUp),
    /// Remote repair: the helpers answered; `pages` to write (changed since the
    /// checkpoint, or in the WAL they did not receive); `end` their common end of WAL.
    HelpersAsked {
        helpers: usize,
        pages: usize,
        end: Lsn,
    },
    /// Pages gone through so far, of `total`.
    Pages {
        done: usize,
        total: usize,
        written: u64,
        rewritten: u64,
        elapsed: Duration,
    },
    /// Every page gone through; `synced` data files fsynced.
    Done {
        total: usize,
        synced: usize,
        elapsed: Duration,
    },
}

#[derive(Debug, Clone, Default)]
pub(crate) struct RepairSummary {
    /// The cluster was shut down cleanly: nothing was done.
    pub clean_shutdown: bool,
    pub redo: Lsn,
    pub data_checksums: bool,
    pub wal: WalCatchUp,
    /// Pages changed at or after the REDO location, written as of the end of WAL.
    pub changed_written: u64,
    /// Of those, how many differed from the data file (masked): torn, or not yet written
    /// when the cluster stopped.
    pub changed_differed: u64,
    /// Other pages checked against the data files.
    pub checked: u64,
    /// Other pages rewritten: checksum failure, masked difference.
    pub rewritten_checksum: u64,
    pub rewritten_mismatch: u64,
    pub removed_skipped: u64,
    pub fsm_skipped: u64,
    /// Pages of databases whose directory does not exist yet (created after the checkpoint).
    pub no_directory: u64,
    /// Unchanged since the checkpoint but not rebuildable by the helper: left alone.
    pub unreadable_unchanged: u64,
    /// Changed since the checkpoint and not rebuildable: not repaired (the command fails).
    pub unrepairable: u64,
    pub errors: u64,
    pub problems: Vec<String>,
}

const MAX_PROBLEMS: usize = 10;

impl RepairSummary {
    pub(crate) fn ok(&self) -> bool {
        self.unrepairable == 0 && self.errors == 0
    }

    pub(crate) fn line(&self) -> String {
        if self.clean_shutdown {
            return format!(
                "repair: clean shutdown (checkpoint REDO {}): no page can be torn, nothing done",
                self.redo
            );
        }
        format!(
            "repair: WAL {}..{} ({} records taken from pg_wal), checkpoint REDO {}; {} pages \
             changed since written ({} differed from the data files), {} other pages checked, \
             {} rewritten (checksum {}, mismatch {}); {} removed skipped, {} FSM skipped, {} \
             without a database directory, {} unreadable unchanged, {} unrepairable, {} errors",
            self.wal.from,
            self.wal.end,
            self.wal.records,
            self.redo,
            self.changed_written,
            self.changed_differed,
            self.checked,
            self.rewritten_checksum + self.rewritten_mismatch,
            self.rewritten_checksum,
            self.rewritten_mismatch,
            self.removed_skipped,
            self.fsm_skipped,
            self.no_directory,
            self.unreadable_unchanged,
            self.unrepairable,
            self.errors,
        )
    }

    pub(crate) fn problem(&mut self, what: impl FnOnce() -> String) {
        if self.problems.len() < MAX_PROBLEMS {
            self.problems.push(what());
        }
    }
}

/// Data files opened for writing, synced (with their directories) at the end.
#[derive(Default)]
pub(crate) struct OpenFiles {
    files: HashMap<PathBuf, std::fs::File>,
}

impl OpenFiles {
    /// Writes `page` in place; false when its database directory does not exist (a
    /// database created after the checkpoint: nothing of it was written, crash recovery
    /// creates it from the WAL).
    fn write(&mut self, pgdata: &Path, key: &PageKey, page: &Page) -> Result<bool, RepairError> {
        let seg = key.block / RELSEG_SIZE;
        let path = pg_relation_path(pgdata, &key.rel, key.fork, seg);
        let err = |path: &Path, source| RepairError::Write {
            key: *key,
            path: path.to_path_buf(),
            source,
        };
        let f = match self.files.entry(path.clone()) {
            std::collections::hash_map::Entry::Occupied(o) => o.into_mut(),
            std::collections::hash_map::Entry::Vacant(v) => {
                // A relation created after the checkpoint may not have its file yet (crash
                // recovery creates it too, and tolerates finding it).
                let Some(dir) = path.parent().and_then(|d| std::fs::metadata(d).ok()) else {
                    return Ok(false);
                };
                let existed = path.exists();
                let f = std::fs::OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(false)
                    .open(&path)
                    .map_err(|e| err(&path, e))?;
                if !existed {
                    // Run as root, a new file must still belong to the cluster's owner.
                    use std::os::unix::fs::MetadataExt;
                    std::os::unix::fs::fchown(&f, Some(dir.uid()), Some(dir.gid()))
                        .map_err(|e| err(&path, e))?;
                    // The process umask (0077) made it 0600, PostgreSQL's mode; a cluster
                    // initialized with group access (initdb -g: 0750 directories) has 0640.
                    if dir.mode() & 0o050 == 0o050 {
                        use std::os::unix::fs::PermissionsExt;
                        f.set_permissions(std::fs::Permissions::from_mode(0o640))
                            .map_err(|e| err(&path, e))?;
                    }
                }
                v.insert(f)
            }
        };
        let off = u64::from(key.block % RELSEG_SIZE) * BLCKSZ as u64;
        f.write_all_at(page, off).map_err(|e| err(&path, e))?;
        Ok(true)
    }

    /// Gives `page` its data checksum (when the cluster has them) and writes it in place;
    /// false as [`Self::write`].
    pub(crate) fn write_page(
        &mut self,
        pgdata: &Path,
        key: &PageKey,
        page: &mut Page,
        data_checksums: bool,
    ) -> Result<bool, RepairError> {
        if data_checksums && !page.is_new() {
            let c = checksum_page(page, key.block);
            page.set_checksum(c);
        }
        self.write(pgdata, key, page)
    }

    pub(crate) fn sync(self) -> Result<usize, RepairError> {
        let mut dirs = BTreeSet::new();
        let n = self.files.len();
        for (path, f) in self.files {
            f.sync_all().map_err(|source| RepairError::Sync {
                path: path.clone(),
                source,
            })?;
            if let Some(d) = path.parent() {
                dirs.insert(d.to_path_buf());
            }
        }
        for d in dirs {
            super::sync_dir(&d).map_err(|source| RepairError::Sync { path: d, source })?;
        }
        Ok(n)
    }
}

/// Whether a data file page passes PostgreSQL's checksum verification (`PageIsVerified`:
/// an all-zero page is valid; a new page with a non-zero byte is not checked here).
pub(crate) fn checksum_ok(page: &Page, blkno: u32) -> bool {
    if page.iter().all(|&b| b == 0) {
        return true;
    }
    page.checksum() == checksum_page(page, blkno)
}

/// What [`preflight`] found.
pub(crate) enum Preflight {
    /// A clean shutdown (and no `even_if_clean`): nothing to do; the summary to return.
    Clean(RepairSummary),
    /// A crash: repair under the postmaster lock, held until it is dropped.
    Crashed {
        control: ControlFile,
        lock: crate::pgdata::lock::PostmasterLock,
    },
}

/// The checks of PostgreSQL's data directory every repair (local or remote) makes first:
/// `pg_control` readable and valid, no postmaster or single-user backend running (its lock
/// is taken and held, so none can start meanwhile), and a clean shutdown recognised.
pub(crate) fn preflight(
    pgdata: &Path,
    even_if_clean: bool,
    progress: &mut dyn FnMut(RepairProgress),
) -> Result<Preflight, RepairError> {
    // pg_control first, read-only: it names a directory that is no cluster at all.
    ControlFile::read(pgdata)?;
    let lock = crate::pgdata::lock::PostmasterLock::acquire(pgdata)?;
    let control = ControlFile::read(pgdata)?;
    let clean = matches!(
        control.state,
        DbState::ShutDown | DbState::ShutDownInRecovery
    );
    if clean && !even_if_clean {
        // A clean shutdown ends with a checkpoint that wrote and fsynced every page: nothing
        // can be torn, and a start-up hook costs no more than reading pg_control.
        progress(RepairProgress::CleanShutdown {
            checkpoint: control.checkpoint,
        });
        return Ok(Preflight::Clean(RepairSummary {
            redo: control.redo,
            data_checksums: control.data_checksum_version != 0,
            clean_shutdown: true,
            ..Default::default()
        }));
    }
    Ok(Preflight::Crashed { control, lock })
}

/// Refuses a helper that follows another cluster or another timeline than `control`'s.
pub(crate) fn check_identity(
    pgdata: &Path,
    control: &ControlFile,
    system_identifier: u64,
    timeline: u32,
) -> Result<(), RepairError> {
    if control.system_identifier != system_identifier {
        return Err(RepairError::WrongCluster {
            pgdata: pgdata.to_path_buf(),
            cluster: control.system_identifier,
            helper: system_identifier,
        });
    }
    if control.timeline != timeline {
        return Err(RepairError::Timeline {
            pgdata: pgdata.to_path_buf(),
            cluster: control.timeline,
            helper: timeline,
        });
    }
    Ok(())
}

/// Whether `key` changed at or after `redo` in what the index holds up to `end`: a change
/// of its own, or a database copy (crash recovery would replay the copy from the
/// template's files as they are then, so every page of the copy counts as changed).
pub(crate) fn changed_since(idx: &PageIndex, key: &PageKey, end: Lsn, redo: Lsn) -> bool {
    idx.page(key)
        .and_then(|h| h.changes.last())
        .is_some_and(|c| c.lsn >= redo)
        || idx
            .relation_events
            .copied_at(key, end)
            .is_some_and(|(at, _)| at >= redo)
}

/// First line of a helper's `GET /repair/changed` answer (`serve`), which remote repair
/// parses: the format and its version.
pub(crate) const REPAIR_CHANGED_MAGIC: &str = "fpw_pushdown repair-changed 1";

/// The pages remote repair must write, as a helper answers `GET /repair/changed`: those
/// this helper owns (its shard's) that changed at or after `since` (see
/// [`changed_since`]), free space map excluded (PostgreSQL rebuilds it), in key order, and
/// the LSN its decoded WAL reaches. Pages dropped or truncated later are listed too: a
/// read of them as of the end says so (404), and the repair skips them.
pub(crate) fn changed_pages(store: &PageStore, since: Lsn) -> Result<(Lsn, Vec<PageKey>), Lsn> {
    let horizon = store.horizon();
    if since < horizon {
        return Err(horizon);
    }
    let (end, keys) = known_pages(store);
    let map = store.shard_map();
    let idx = read(&store.index);
    let keys = keys
        .into_iter()
        .filter(|k| k.fork != ForkNumber::FSM && map.owns(k) && changed_since(&idx, k, end, since))
        .collect();
    Ok((end, keys))
}

/// Runs the repair (see the module documentation).
pub(crate) fn repair(
    opts: &RepairOptions,
    progress: &mut dyn FnMut(RepairProgress),
) -> Result<RepairSummary, RepairError> {
    let pgdata = &opts.pgdata;
    let (control, _lock) = match preflight(pgdata, opts.even_if_clean, progress)? {
        Preflight::Clean(sum) => return Ok(sum),
        Preflight::Crashed { control, lock } => (control, lock),
    };
    // Identity first, from helper.json alone: opening the store rebuilds its page index.
    if let Some(meta) = HelperMeta::load(&opts.data_dir).map_err(StoreError::from)? {
        check_identity(pgdata, &control, meta.system_identifier, meta.timeline)?;
        if control.version.control_version() != meta.pg_version.control_version() {
            return Err(RepairError::WrongVersion {
                pgdata: pgdata.clone(),
                cluster: control.version.control_version(),
                helper: meta.pg_version,
                expected: meta.pg_version.control_version(),
            });
        }
        if control.redo < meta.start_lsn() {
            return Err(RepairError::RedoBeforeHistory {
                redo: control.redo,
                start: meta.start_lsn(),
            });
        }
    }
    // A shard knows only its own pages' changes: "unchanged" would be wrong for the others.
    let map =
        crate::store::shard::ShardMap::load(&opts.data_dir).map_err(|e| StoreError::DataDir {
            dir: opts.data_dir.clone(),
            source: std::io::Error::other(e.to_string()),
        })?;
    if map.is_sharded() {
        return Err(RepairError::Sharded {
            dir: opts.data_dir.clone(),
            map: map.to_string(),
        });
    }
    let (lock, _request) =
        crate::store::lock::DataDirLock::take_over(&opts.data_dir, opts.hand_over)
            .map_err(StoreError::from)?;
    // Dropped before `_request` (declared later): the helper waits for the request to go.
    let mut offline = OfflineStore::open_locked(&opts.data_dir, lock)?;
    // Retention may have moved the history's start past the backup: the index then no
    // longer knows which pages changed between the REDO location and the horizon, and
    // `changed` below would call such a page unchanged.
    let horizon = offline.store.horizon();
    if control.redo < horizon {
        return Err(RepairError::RedoBeforeHistory {
            redo: control.redo,
            start: horizon,
        });
    }
    let mut sum = RepairSummary {
        redo: control.redo,
        data_checksums: control.data_checksum_version != 0,
        ..Default::default()
    };
    sum.wal = offline.catch_up_from_pg_wal(&pgdata.join("pg_wal"))?;
    wal_reaches_checkpoint(
        sum.wal.end.max(sum.wal.from),
        control.checkpoint,
        &sum.wal.stopped,
    )?;
    progress(RepairProgress::WalTaken(&sum.wal));
    let store = &offline.store;
    let (end, keys) = known_pages(store);
    let read_opts = ReadOptions {
        generated_images: true,
        cache: false,
    };
    let mut files = OpenFiles::default();
    let started = Instant::now();
    let mut last_progress = Instant::now();
    let total = keys.len();
    for (i, key) in keys.into_iter().enumerate() {
        if last_progress.elapsed() >= opts.progress_every {
            progress(RepairProgress::Pages {
                done: i,
                total,
                written: sum.changed_written,
                rewritten: sum.rewritten_checksum + sum.rewritten_mismatch,
                elapsed: started.elapsed(),
            });
            last_progress = Instant::now();
        }
        if key.fork == ForkNumber::FSM {
            sum.fsm_skipped += 1;
            continue;
        }
        // A database copy since the checkpoint changed every page of the copy (crash
        // recovery would replay the copy from the template's files as they are then).
        let changed = changed_since(&read(&store.index), &key, end, control.redo);
        if !changed && opts.changed_only {
            continue;
        }
        let mut page: Box<Page> = match store.reconstruct_with(&key, Some(end), read_opts) {
            Ok(r) => match <Box<Page>>::try_from(r.page.into_boxed_slice()) {
                Ok(p) => p,
                Err(_) => {
                    sum.errors += 1;
                    sum.problem(|| format!("page {key}: rebuilt page is not {BLCKSZ} bytes"));
                    continue;
                }
            },
            Err(GetPageError::Removed { .. }) => {
                sum.removed_skipped += 1;
                continue;
            }
            Err(GetPageError::Unknown { .. }) => continue,
            Err(e) if e.is_unreadable() => {
                if changed {
                    sum.unrepairable += 1;
                    sum.problem(|| format!("not repaired: {e}"));
                } else {
                    sum.unreadable_unchanged += 1;
                }
                continue;
            }
            Err(e) => {
                sum.errors += 1;
                sum.problem(|| e.to_string());
                continue;
            }
        };
        let theirs = match read_pg_page(pgdata, &key) {
            Ok(p) => p,
            Err(e) => {
                sum.errors += 1;
                sum.problem(|| format!("page {key}: reading the data file: {e}"));
                continue;
            }
        };
        let differs = match &theirs {
            Some(t) => masked_difference(&key, &page, t, page_kind_hint(store, &key)).is_some(),
            None => page.iter().any(|&b| b != 0),
        };
        let write = if changed {
            sum.changed_written += 1;
            sum.changed_differed += u64::from(differs);
            true
        } else {
            sum.checked += 1;
            let bad_checksum =
                sum.data_checksums && theirs.as_ref().is_some_and(|t| !checksum_ok(t, key.block));
            if bad_checksum {
                sum.rewritten_checksum += 1;
            } else if differs {
                sum.rewritten_mismatch += 1;
            }
            bad_checksum || differs
        };
        if !write {
            continue;
        }
        if !files.write_page(pgdata, &key, &mut page, sum.data_checksums)? {
            sum.no_directory += 1;
        }
    }
    let synced = files.sync()?;
    progress(RepairProgress::Done {
        total,
        synced,
        elapsed: started.elapsed(),
    });
    Ok(sum)
}
