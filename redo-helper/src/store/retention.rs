//! Retention of the helper's history (`redo-helper run --retain`): WAL segments and page
//! images older than a horizon are removed, and reads before the horizon are refused (410).
//!
//! The horizon H is a WAL segment start: the decoded end minus the `--retain` distance (or the
//! decoded end as of `--retain` ago), rounded down, never moving back. A pass that moves it:
//!
//! 1. rebases every page changed before H: unless the image store already has an image of it
//!    at or after its last change before H (and before H), the page is rebuilt as of H − 1
//!    and stored as an image at that last change. A page that is unreadable there (a change
//!    the Rust redo does not replay, no image since) keeps that change as a marker, so it
//!    stays unreadable until a later image; a page truncated away or dropped needs nothing
//!    (its removal is kept). A database copied before H (`CREATE DATABASE ... STRATEGY
//!    FILE_COPY`) starts from its template's pages as of the copy, whose history goes now:
//!    every page of the copy is rebased too (at the copy's LSN when it has no change of its
//!    own after it), and one whose template page is unprovable keeps the copy as its
//!    unreadable marker; from then on, a page of the copy without an image did not exist at
//!    the copy. The image store is synced.
//! 2. saves `DATA_DIR/retention.json` atomically: H, the relation events (truncations,
//!    drops, database drops and copies) before H, the unreadable markers and the
//!    full_page_writes modes before H — what the WAL before H said and the index can no
//!    longer learn from it — and the most image bytes a one-segment step wrote (below);
//! 3. moves the page store's horizon and waits for every read that started before (the
//!    store's read gate), so no running read needs what follows;
//! 4. prunes the index (changes before H), deletes the archive segments that end at or
//!    before H, forgets images before H that no read can start from any more, and compacts
//!    the image files.
//!
//! On a full disk a pass could never free anything if it found no room: steps 1 and 2 need
//! new space before step 4 may delete. So the archive and image generation stop writing
//! when less than the headroom (`--disk-reserve`, [`super::set_disk_headroom`]) is free on
//! the data directory's filesystem, and a pass alone may use it; the same amount is held in
//! `DATA_DIR/disk-reserve`, which a pass deletes when other writers took the headroom
//! (`ballast.rs`). A pass's writes grow with the distance the horizon moves (an image per
//! page changed in it that no image covers yet), and a pass that may not fit in the free
//! space (an image per such page) fails before it writes anything. After a pass ran out of
//! space, passes move the horizon one segment at a time, each writing only the images of
//! one segment's pages before it deletes that segment, one after the other until three
//! reserves are free again. One segment of small-record WAL changes tens of thousands of
//! pages, more than a default reserve holds; so each pass measures the image bytes the
//! largest one-segment step within its distance writes
//! ([`Retention::largest_one_segment_step`]: not its average per segment, as a page changed
//! in every segment is rebuilt at every step), keeps the most of the last 36 to 72 hours of
//! passes in the state file ([`REBASE_WINDOW_SECS`]),
//! and the reserve in force becomes twice that when it is more than `--disk-reserve` (at
//! most an eighth of the filesystem): the archive and image generation stop early enough,
//! and the reserve file holds enough, for one step.
//!
//! At start-up the saved state is loaded before the index is rebuilt from H's segment.
//! Time horizons use samples of (time, decoded end) taken while running: after a restart
//! nothing is removed until the helper has run for the retention time again.

use super::images::ImageStoreError;
use super::index::{ChangeKind, FpwModeChange, PageChange, SavedRelationEvents};
use super::page_store::{GetPageError, PageStore, ReadOptions};
use super::write_atomic;
use crate::redo::smgr::DatabaseDir;
use crate::sync::{lock, read, write};
use crate::wal::block::{ForkNumber, PageKey, RelFileLocator};
use crate::wal::page::{Lsn, parse_segment_file_name};
use crate::wal::rmgr::RM_DBASE_ID;
use crate::wal::rmgr::dbase::XLOG_DBASE_CREATE_FILE_COPY;
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Default `--retain`: 4 GB of WAL.
pub(crate) const DEFAULT_RETAIN: &str = "4GB";

/// How much history the helper keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Retain {
    /// Everything, forever.
    All,
    /// This many bytes of WAL before the decoded end.
    Bytes(u64),
    /// The WAL of this long (wall clock).
    Time(Duration),
}

impl FromStr for Retain {
    type Err = String;

    /// `all`; a WAL distance `N[B|kB|MB|GB|TB]` (1024-based, as PostgreSQL's memory units;
    /// no unit: bytes); or a time `N(s|min|h|d)`.
    fn from_str(s: &str) -> Result<Retain, String> {
        let t = s.trim();
        if t.eq_ignore_ascii_case("all") {
            return Ok(Retain::All);
        }
        let digits = t.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(format!(
                "invalid retention {s:?}: expected `all`, a WAL size such as 512MB, 4GB, 1TB, or a time such as 30min, 2h, 7d"
            ));
        }
        let n: u64 = t[..digits]
            .parse()
            .map_err(|_| format!("invalid retention {s:?}: number too large"))?;
        let unit = t[digits..].trim();
        let bytes = |mult: u64| {
            n.checked_mul(mult)
                .map(Retain::Bytes)
                .ok_or_else(|| format!("invalid retention {s:?}: too large"))
        };
        let secs = |mult: u64| {
            n.checked_mul(mult)
                .map(|v| Retain::Time(Duration::from_secs(v)))
                .ok_or_else(|| format!("invalid retention {s:?}: too large"))
        };
        match unit.to_ascii_lowercase().as_str() {
            "" | "b" => bytes(1),
            "kb" => bytes(1 << 10),
            "mb" => bytes(1 << 20),
            "gb" => bytes(1 << 30),
            "tb" => bytes(1 << 40),
            "s" | "sec" => secs(1),
            "min" => secs(60),
            "h" => secs(3600),
            "d" => secs(86_400),
            _ => Err(format!(
                "invalid retention unit {unit:?} in {s:?}: use B, kB, MB, GB, TB for WAL sizes, s, min, h, d for times, or `all`"
            )),
        }
    }
}

impl fmt::Display for Retain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Retain::All => write!(f, "all"),
            Retain::Bytes(b) => {
                for (unit, mult) in [("TB", 1u64 << 40), ("GB", 1 << 30), ("MB", 1 << 20)] {
                    if b >= mult && b % mult == 0 {
                        return write!(f, "{}{unit}", b / mult);
                    }
                }
                if b >= 1024 && b % 1024 == 0 {
                    return write!(f, "{}kB", b / 1024);
                }
                write!(f, "{b}B")
            }
            Retain::Time(d) => {
                let s = d.as_secs();
                for (unit, mult) in [("d", 86_400u64), ("h", 3600), ("min", 60)] {
                    if s >= mult && s % mult == 0 {
                        return write!(f, "{}{unit}", s / mult);
                    }
                }
                write!(f, "{s}s")
            }
        }
    }
}

/// For clap's `value_parser`.
pub(crate) fn parse_retain(s: &str) -> Result<Retain, String> {
    s.parse()
}

/// (time, decoded end) samples for time horizons.
#[derive(Debug, Default)]
pub(crate) struct EndSamples {
    samples: VecDeque<(Instant, Lsn)>,
}

impl EndSamples {
    pub(crate) fn push(&mut self, at: Instant, end: Lsn) {
        if self.samples.back().is_none_or(|(_, l)| *l != end) {
            self.samples.push_back((at, end));
        }
    }

    /// The decoded end as of `at` (the newest sample at or before it); drops older samples.
    fn end_as_of(&mut self, at: Instant) -> Option<Lsn> {
        let n = self.samples.partition_point(|(t, _)| *t <= at);
        let i = n.checked_sub(1)?;
        self.samples.drain(..i);
        self.samples.front().map(|(_, l)| *l)
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.samples.len()
    }
}

impl Retain {
    /// The oldest LSN that must stay readable given the decoded end `end` (None: nothing may
    /// be removed yet).
    pub(crate) fn keep_from(
        &self,
        end: Lsn,
        samples: &mut EndSamples,
        now: Instant,
    ) -> Option<Lsn> {
        match *self {
            Retain::All => None,
            Retain::Bytes(b) => Some(Lsn(end.0.saturating_sub(b))),
            Retain::Time(d) => samples.end_as_of(now.checked_sub(d)?),
        }
    }
}

/// The horizon for `keep_from`: rounded down to a segment start, never below `current` (the
/// store's horizon, itself never below the backup start).
pub(crate) fn horizon_for(keep_from: Lsn, current: Lsn, segment_size: u32) -> Lsn {
    keep_from.segment_start(segment_size).max(current)
}

/// A page left unreadable at the horizon, as saved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct SavedMarker {
    pub spc: u32,
    pub db: u32,
    pub rel: u32,
    pub fork: u8,
    pub block: u32,
    /// The change the redo could not replay (or that failed).
    pub lsn: u64,
    pub rmid: u8,
    pub info: u8,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct SavedFpwMode {
    pub lsn: u64,
    pub full_page_writes: bool,
    pub explicit: bool,
}

/// `DATA_DIR/retention.json`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct RetentionState {
    /// The horizon, `X/Y`: the archive starts at this segment; reads before it are refused.
    pub horizon: String,
    #[serde(default)]
    pub relation_events: SavedRelationEvents,
    #[serde(default)]
    pub unreadable: Vec<SavedMarker>,
    #[serde(default)]
    pub fpw_modes: Vec<SavedFpwMode>,
    #[serde(default)]
    pub saved_unix: u64,
    /// The most image bytes a step of one WAL segment writes (its pages to rebuild), as
    /// passes measured them over the segments they moved the horizon, in the window that
    /// started at `rebase_window_started_unix`: what a step needs on a full disk. 0 in files
    /// written before it was kept (whose figure was the peak since the start, taken as this
    /// window's, started at `saved_unix`). Earlier builds kept a pass's average per segment
    /// here, smaller when pages change in every segment: the next pass measures it again.
    #[serde(default)]
    pub rebase_bytes_per_segment: u64,
    /// The same for the window before.
    #[serde(default)]
    pub rebase_bytes_per_segment_previous: u64,
    #[serde(default)]
    pub rebase_window_started_unix: u64,
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum RetentionError {
    #[error("retention state {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("retention state {path} is damaged: {reason}")]
    Damaged { path: PathBuf, reason: String },
    #[error(transparent)]
    Images(#[from] ImageStoreError),
    #[error(transparent)]
    Remote(#[from] super::remote::RemoteError),
    #[error(
        "moving the horizon to {horizon} writes up to {need} bytes of page images and {free} bytes are free"
    )]
    NoRoom { horizon: Lsn, need: u64, free: u64 },
    #[error("rebasing {key}: {source}")]
    Page {
        key: PageKey,
        source: Box<GetPageError>,
    },
}

impl RetentionState {
    pub(crate) fn path(data_dir: &Path) -> PathBuf {
        data_dir.join("retention.json")
    }

    pub(crate) fn load(data_dir: &Path) -> Result<Option<RetentionState>, RetentionError> {
        let path = Self::path(data_dir);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(RetentionError::Io { path, source }),
        };
        let damaged = |reason: String| RetentionError::Damaged {
            path: path.clone(),
            reason,
        };
        let state: RetentionState =
            serde_json::from_str(&text).map_err(|e| damaged(e.to_string()))?;
        state
            .horizon
            .parse::<Lsn>()
            .map_err(|e| damaged(e.to_string()))?;
        Ok(Some(state))
    }

    /// Only the measured steps of the saved state (none without one): the store opener has
    /// loaded and applied the rest ([`RetentionState::apply`]), so the other fields are
    /// skipped, not built again.
    fn saved_step_peaks(data_dir: &Path) -> StepPeaks {
        #[derive(Deserialize)]
        struct StepsOnly {
            #[serde(default)]
            saved_unix: u64,
            #[serde(default)]
            rebase_bytes_per_segment: u64,
            #[serde(default)]
            rebase_bytes_per_segment_previous: u64,
            #[serde(default)]
            rebase_window_started_unix: u64,
        }
        std::fs::read(Self::path(data_dir))
            .ok()
            .and_then(|text| serde_json::from_slice::<StepsOnly>(&text).ok())
            .map_or(StepPeaks::default(), |s| StepPeaks {
                current: s.rebase_bytes_per_segment,
                previous: s.rebase_bytes_per_segment_previous,
                // A file from before the windows: its peak counts from when it was saved.
                started_unix: match s.rebase_window_started_unix {
                    0 => s.saved_unix,
                    t => t,
                },
            })
    }

    pub(crate) fn store(&self, data_dir: &Path) -> Result<(), RetentionError> {
        let path = Self::path(data_dir);
        let text = serde_json::to_string(self).map_err(|e| RetentionError::Damaged {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        write_atomic(&path, text.as_bytes()).map_err(|source| RetentionError::Io { path, source })
    }

    pub(crate) fn horizon_lsn(&self) -> Lsn {
        self.horizon.parse().unwrap_or_default()
    }

    /// Puts the saved state into a store whose index is still empty (before the rebuild from
    /// the archive): the horizon, relation events, full_page_writes modes and unreadable
    /// markers. Returns the horizon.
    pub(crate) fn apply(&self, store: &PageStore) -> Lsn {
        let horizon = self.horizon_lsn();
        store.set_horizon(horizon);
        let mut idx = write(&store.index);
        idx.relation_events.load(&self.relation_events);
        idx.fpw_modes = self
            .fpw_modes
            .iter()
            .map(|m| FpwModeChange {
                lsn: Lsn(m.lsn),
                full_page_writes: m.full_page_writes,
                explicit: m.explicit,
            })
            .collect();
        for m in &self.unreadable {
            idx.add_unreadable_marker(
                marker_key(m),
                PageChange {
                    lsn: Lsn(m.lsn),
                    kind: ChangeKind::Unsupported,
                    rmid: m.rmid,
                    info: m.info,
                },
            );
        }
        horizon
    }
}

fn marker_key(m: &SavedMarker) -> PageKey {
    PageKey {
        rel: RelFileLocator {
            spc_oid: m.spc,
            db_oid: m.db,
            rel_number: m.rel,
        },
        fork: ForkNumber(m.fork),
        block: m.block,
    }
}

/// A failure of the store itself (reading its images, or a read behind the horizon; also
/// under a template read): the pass fails and is tried again, rather than leaving the page
/// unreadable for good.
fn store_failure(e: &GetPageError) -> bool {
    match e {
        GetPageError::Images(_) | GetPageError::BeforeRetention { .. } => true,
        GetPageError::TemplateUnprovable { source, .. } => store_failure(source),
        _ => false,
    }
}

/// The unreadable marker of a page of a copied database whose template page could not be
/// proven at the copy (`XLOG_DBASE_CREATE_FILE_COPY` at `at`).
fn copy_marker(at: Lsn) -> PageChange {
    PageChange {
        lsn: at,
        kind: ChangeKind::Unsupported,
        rmid: RM_DBASE_ID,
        info: XLOG_DBASE_CREATE_FILE_COPY,
    }
}

/// What a pass does for a page changed before the new horizon.
#[derive(Debug, Clone, Copy)]
enum Rebase {
    /// Keeps its unreadable marker, older than the current horizon.
    KeepMarker(PageChange),
    /// Nothing new: the image at this LSN, at or after its newest start, is its base.
    Covered(Lsn),
    /// Rebuilds it as of H − 1 and stores the image at `since`, its newest start.
    Rebuild {
        since: Lsn,
        last: Option<PageChange>,
    },
}

/// Candidates whose changes are gathered under one lock of the index, then checked under
/// one of the images (the two are never held together): bounds the memory of a long pass.
const STEP_MEASURE_CHUNK: usize = 4096;

/// What one pass did (in /status).
#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct PassStats {
    pub horizon_lsn: Lsn,
    /// Pages rebuilt and stored as images at the horizon.
    pub pages_rebased: u64,
    /// Pages that already had an image there.
    pub pages_covered: u64,
    /// Pages left unreadable at the horizon (marker kept).
    pub pages_unreadable: u64,
    /// Pages truncated away or dropped before the horizon.
    pub pages_removed: u64,
    pub index_changes_removed: u64,
    pub index_pages_removed: u64,
    pub segments_removed: u64,
    pub image_entries_removed: u64,
    pub image_entries_moved: u64,
    pub image_files_removed: u64,
    pub duration_ms: u64,
    /// When the pass ended, seconds since the epoch.
    pub finished_unix: u64,
}

/// Retention in /status and /metrics.
#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct RetentionStatus {
    pub retain: String,
    pub horizon_lsn: Lsn,
    pub archive_segments: u64,
    pub archive_bytes: u64,
    pub image_file_bytes: u64,
    pub passes: u64,
    pub segments_removed_total: u64,
    pub image_entries_removed_total: u64,
    pub last_pass: Option<PassStats>,
    pub last_error: Option<String>,
    /// `DATA_DIR/disk-reserve` is allocated (false: released for a pass on a full disk, or
    /// not yet allocated).
    pub disk_reserve_held: bool,
    /// A pass ran out of space and three reserves are not free yet: passes move the horizon
    /// a segment at a time.
    pub short_of_space: bool,
    /// The most image bytes a step of one WAL segment writes, as measured by passes in the
    /// last 36 to 72 hours of passes ([`REBASE_WINDOW_SECS`]); twice this (at most an eighth
    /// of the filesystem) is the disk reserve when above `--disk-reserve`.
    pub rebase_bytes_per_segment: u64,
}

/// The retention pass and its state; one per running helper.
pub(crate) struct Retention {
    store: Arc<PageStore>,
    data_dir: PathBuf,
    wal_dir: PathBuf,
    timeline: u32,
    segment_size: u32,
    policy: Retain,
    /// The backup's end: base pages are consistent once WAL up to it is decoded; the horizon
    /// does not move before.
    backup_end: Lsn,
    samples: Mutex<EndSamples>,
    /// Segments or images before the horizon may still be on disk (after a restart, or a
    /// pass that failed after saving its state).
    cleanup_pending: AtomicBool,
    status: Mutex<RetentionStatus>,
    /// In object-storage mode: the bucket gets the images and state before its WAL goes,
    /// and the horizon never passes the WAL the bucket holds.
    uploader: std::sync::OnceLock<Arc<super::remote::WalUploader>>,
    /// The disk reserve as a file, released when a pass finds the disk full.
    ballast: super::ballast::Ballast,
    /// Set when a pass failed for want of space, cleared by a pass that succeeds with three
    /// reserves free.
    short_of_space: AtomicBool,
    /// The most image bytes a pass wrote per segment the horizon moved, this window and the
    /// one before (saved in the state).
    step_peaks: Mutex<StepPeaks>,
}

/// Live-entry share below which an image file is compacted.
const MIN_LIVE_RATIO: f64 = 0.5;

/// The reserve retention asks for: this many times the most image bytes a pass has written
/// per segment, as the next segment may change more pages than any before, and its state
/// file and image compaction need room too.
const REBASE_RESERVE_FACTOR: u64 = 2;
/// Free space, in reserves, at which passes stop moving the horizon one segment at a time
/// after running out of space (as much as the reserve file needs to be allocated again).
const ROOM_REGAINED_FACTOR: u64 = 3;
/// Passes one tick runs back to back while short of space (each moves the horizon one
/// segment): the thread sees a stop request between ticks.
const MAX_PASSES_PER_TICK: usize = 16;
/// The most of the filesystem the learnt reserve takes (1/N): the archive stops at the
/// reserve, so a larger one on a small disk would stop the helper long before its disk is
/// full, for a step that a disk that small could hardly hold anyway.
const REBASE_RESERVE_MAX_SHARE: u64 = 8;

/// How long a measured step counts towards the reserve: the reserve follows the largest
/// step of the current window and the one before, so a step counts for 36 to 72 hours. A
/// one-off burst (a bulk update that touched every page of a segment) stops holding disk
/// space after that, while a daily batch job stays covered even when it runs late or long.
/// A rarer burst is what `--disk-reserve` is for.
const REBASE_WINDOW_SECS: u64 = 36 * 3600;

/// The largest step (image bytes a one-segment step writes, as passes measured it) of the
/// current window and of the one before it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct StepPeaks {
    current: u64,
    previous: u64,
    /// When the current window started (unix seconds; 0: not yet).
    started_unix: u64,
}

impl StepPeaks {
    /// Moves to the window `now_unix` falls in: windows are [`REBASE_WINDOW_SECS`] long,
    /// back to back from the first one's start, so the result does not depend on when
    /// this is called. The window before keeps its peak; older ones are forgotten. A clock
    /// set back restarts the current window (both peaks kept).
    ///
    /// Called by a pass that succeeded, before it adds its step, never while retention is
    /// short of space: the windows age with passes that measured something, so neither a
    /// helper stuck on a full disk (its passes fail) nor one restarted after days stopped
    /// forgets the step it is about to need.
    fn roll(&mut self, now_unix: u64) {
        if self.started_unix == 0 || now_unix < self.started_unix {
            self.started_unix = now_unix;
            return;
        }
        let windows = (now_unix - self.started_unix) / REBASE_WINDOW_SECS;
        if windows == 0 {
            return;
        }
        self.previous = if windows == 1 { self.current } else { 0 };
        self.current = 0;
        self.started_unix += windows * REBASE_WINDOW_SECS;
    }

    /// The step the reserve is sized for.
    fn in_force(&self) -> u64 {
        self.current.max(self.previous)
    }

    /// The state file's fields for the peaks (the others default).
    fn saved(&self) -> RetentionState {
        RetentionState {
            rebase_bytes_per_segment: self.current,
            rebase_bytes_per_segment_previous: self.previous,
            rebase_window_started_unix: self.started_unix,
            ..RetentionState::default()
        }
    }
}

/// The headroom retention needs to move its horizon by one segment, given the most image
/// bytes a pass wrote per segment and the size of the filesystem (None: unknown, no cap).
fn learnt_reserve(rebase_bytes_per_segment: u64, filesystem: Option<u64>) -> u64 {
    let want = rebase_bytes_per_segment.saturating_mul(REBASE_RESERVE_FACTOR);
    match filesystem {
        Some(fs) => want.min(fs / REBASE_RESERVE_MAX_SHARE),
        None => want,
    }
}

/// Whether a pass failed because the filesystem is full (ENOSPC, or EDQUOT for a quota,
/// anywhere in its causes), or would not fit in its free space.
fn out_of_space(e: &RetentionError) -> bool {
    if matches!(e, RetentionError::NoRoom { .. }) {
        return true;
    }
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(c) = cause {
        if c.downcast_ref::<std::io::Error>()
            .and_then(std::io::Error::raw_os_error)
            .is_some_and(|n| n == libc::ENOSPC || n == libc::EDQUOT)
        {
            return true;
        }
        cause = c.source();
    }
    false
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Retention {
    pub(crate) fn new(
        store: Arc<PageStore>,
        data_dir: &Path,
        wal_dir: &Path,
        timeline: u32,
        segment_size: u32,
        policy: Retain,
        backup_end: Lsn,
    ) -> Arc<Retention> {
        // What earlier runs learnt a step needs (a restart on a full disk needs it most), in
        // force before the reserve file is sized.
        let peaks = RetentionState::saved_step_peaks(data_dir);
        super::set_learnt_disk_headroom(learnt_reserve(
            peaks.in_force(),
            super::filesystem_bytes(data_dir),
        ));
        let r = Arc::new(Retention {
            store,
            data_dir: data_dir.to_path_buf(),
            wal_dir: wal_dir.to_path_buf(),
            timeline,
            segment_size,
            policy,
            backup_end,
            samples: Mutex::new(EndSamples::default()),
            cleanup_pending: AtomicBool::new(true),
            status: Mutex::new(RetentionStatus {
                retain: policy.to_string(),
                ..RetentionStatus::default()
            }),
            uploader: std::sync::OnceLock::new(),
            ballast: super::ballast::Ballast::open(data_dir, super::disk_headroom()),
            short_of_space: AtomicBool::new(false),
            step_peaks: Mutex::new(peaks),
        });
        r.refresh_disk_usage();
        r
    }

    /// Takes `measured` (image bytes of the largest one-segment step a pass found) into
    /// the peaks, and sets the headroom and reserve file after them: the archive and image
    /// generation then stop while a step's images still fit
    /// (`store::set_learnt_disk_headroom`).
    fn update_step_reserve(&self, measured: u64) {
        let peak = {
            let mut peaks = lock(&self.step_peaks);
            if !self.short_of_space.load(Ordering::SeqCst) {
                peaks.roll(unix_now());
            }
            peaks.current = peaks.current.max(measured);
            peaks.in_force()
        };
        let before = super::disk_headroom();
        super::set_learnt_disk_headroom(learnt_reserve(
            peak,
            super::filesystem_bytes(&self.data_dir),
        ));
        let now = super::disk_headroom();
        if now > before {
            log::info!(
                "retention: a step of one WAL segment wrote up to {peak} bytes of images; the \
                 disk reserve is now {now} bytes (--disk-reserve {})",
                super::configured_disk_headroom()
            );
        } else if now < before {
            log::info!(
                "retention: the largest step of the last {} hours or more wrote {peak} bytes of \
                 images per WAL segment; the disk reserve is now {now} bytes (--disk-reserve {})",
                REBASE_WINDOW_SECS / 3600,
                super::configured_disk_headroom()
            );
        }
        self.ballast.resize(now);
    }

    /// Object-storage mode (set once, before the first pass).
    pub(crate) fn set_uploader(&self, uploader: Arc<super::remote::WalUploader>) {
        let _ = self.uploader.set(uploader);
    }

    pub(crate) fn status(&self) -> RetentionStatus {
        lock(&self.status).clone()
    }

    fn decoded_end(&self) -> Lsn {
        read(&self.store.index).last_record_end
    }

    /// Archive segments (segno, bytes on disk); one the local cache evicted counts with 0
    /// bytes (its stub).
    fn segments(&self) -> Vec<(u64, u64)> {
        let Ok(dir) = std::fs::read_dir(&self.wal_dir) else {
            return Vec::new();
        };
        dir.filter_map(|e| e.ok())
            .filter_map(|e| {
                let name = e.file_name();
                let name = name.to_str()?;
                let (seg_name, bytes) = match name.strip_suffix(super::cache::EVICTED_SUFFIX) {
                    Some(n) => (n, 0),
                    None => (name, e.metadata().map(|m| m.len()).unwrap_or(0)),
                };
                let (tli, segno) = parse_segment_file_name(seg_name, self.segment_size)?;
                (tli == self.timeline).then_some((segno, bytes))
            })
            .collect()
    }

    fn refresh_disk_usage(&self) {
        let segs = self.segments();
        let image_bytes = read(&self.store.images).bytes;
        let horizon = self.store.horizon();
        {
            let mut s = lock(&self.status);
            s.archive_segments = segs.len() as u64;
            s.archive_bytes = segs.iter().map(|(_, b)| b).sum();
            s.image_file_bytes = image_bytes;
            s.horizon_lsn = horizon;
            s.disk_reserve_held = self.ballast.held();
            s.short_of_space = self.short_of_space.load(Ordering::SeqCst);
            s.rebase_bytes_per_segment = lock(&self.step_peaks).in_force();
        }
    }

    /// One tick: samples the decoded end, runs a pass if the horizon can move by a segment
    /// or more (and the clean-up a restart left pending). Errors are logged and kept in the
    /// status; the next tick tries again.
    ///
    /// Short of space, passes move the horizon one segment at a time, one after the other
    /// within the tick while they succeed (up to [`MAX_PASSES_PER_TICK`]), until the horizon
    /// is where the policy puts it or three reserves are free again. A pass over the whole distance at once would fail
    /// again, after filling the room the previous step made with images of later pages.
    pub(crate) fn tick(&self, now: Instant) {
        // Other writers may have taken the headroom: the pass writes in the reserve's room.
        self.ballast.release_if_short();
        for _ in 0..MAX_PASSES_PER_TICK {
            let was_short = self.short_of_space.load(Ordering::SeqCst);
            let result = self.run_pass(now);
            let stepped = matches!(result, Ok(Some(_)));
            let no_room = result.as_ref().is_err_and(out_of_space);
            match &result {
                Err(e) if out_of_space(e) => {
                    let was_short = self.short_of_space.swap(true, Ordering::SeqCst);
                    if !was_short {
                        log::warn!(
                            "retention: out of space on the data directory's filesystem; moving \
                             the horizon one WAL segment at a time until {} bytes are free",
                            super::disk_headroom().saturating_mul(ROOM_REGAINED_FACTOR)
                        );
                    }
                }
                Ok(Some(_)) => self.end_short_of_space_if_room(),
                _ => {}
            }
            self.record_pass(result);
            // Again at once: the next step while short, or the first one-segment step after
            // a longer pass found no room.
            let short = self.short_of_space.load(Ordering::SeqCst);
            if !(stepped && short || no_room && !was_short) {
                break;
            }
        }
        self.ballast.refill();
        self.refresh_disk_usage();
    }

    /// After a pass that succeeded: passes span the whole distance again once three reserves
    /// are free on the data directory's filesystem (or its free space is unknown, as before a
    /// pass ran out of space).
    fn end_short_of_space_if_room(&self) {
        let room = super::free_bytes(&self.data_dir)
            .is_none_or(|free| free >= super::disk_headroom().saturating_mul(ROOM_REGAINED_FACTOR));
        if room && self.short_of_space.swap(false, Ordering::SeqCst) {
            log::info!("retention: room regained on the data directory's filesystem");
        }
    }

    /// A pass's outcome in the log and the status.
    fn record_pass(&self, result: Result<Option<PassStats>, RetentionError>) {
        match &result {
            Ok(Some(p)) => {
                log::info!(
                    "retention: horizon {} ({}): {} pages rebased ({} already imaged, {} unreadable kept, {} removed), {} index changes and {} pages dropped, {} segments removed, {} image entries removed ({} moved, {} files removed) in {} ms",
                    p.horizon_lsn,
                    self.policy,
                    p.pages_rebased,
                    p.pages_covered,
                    p.pages_unreadable,
                    p.pages_removed,
                    p.index_changes_removed,
                    p.index_pages_removed,
                    p.segments_removed,
                    p.image_entries_removed,
                    p.image_entries_moved,
                    p.image_files_removed,
                    p.duration_ms
                );
            }
            Ok(None) => {}
            Err(e) => log::warn!("retention pass failed (retrying later): {e}"),
        }
        let mut s = lock(&self.status);
        match result {
            Ok(Some(p)) => {
                s.passes += 1;
                s.segments_removed_total += p.segments_removed;
                s.image_entries_removed_total += p.image_entries_removed;
                s.last_pass = Some(p);
                s.last_error = None;
            }
            Ok(None) => {}
            Err(e) => s.last_error = Some(e.to_string()),
        }
    }

    /// Moves the horizon if it can advance by a segment or more; Some(stats) when a pass
    /// (or a pending clean-up) did something.
    pub(crate) fn run_pass(&self, now: Instant) -> Result<Option<PassStats>, RetentionError> {
        let started = Instant::now();
        let end = self.decoded_end();
        let current = self.store.horizon();
        let keep_from = {
            let mut samples = lock(&self.samples);
            samples.push(now, end);
            self.policy.keep_from(end, &mut samples, now)
        };
        let target = keep_from
            .filter(|_| end >= self.backup_end)
            .map(|k| horizon_for(k, current, self.segment_size))
            // WAL not yet in the bucket stays: the bucket's copy is what a resume reads.
            .map(|h| match self.uploader.get() {
                Some(u) => h.min(u.uploaded().segment_start(self.segment_size)),
                None => h,
            })
            // Out of space: a step of one segment writes the fewest images before it frees.
            .map(|h| {
                if self.short_of_space.load(Ordering::SeqCst) {
                    h.min(
                        current
                            .add(u64::from(self.segment_size))
                            .segment_start(self.segment_size),
                    )
                } else {
                    h
                }
            });
        let mut stats = PassStats::default();
        let moved = match target {
            Some(h) if h > current => {
                self.move_horizon(current, h, &mut stats)?;
                true
            }
            _ => false,
        };
        if !moved && !self.cleanup_pending.load(Ordering::SeqCst) {
            return Ok(None);
        }
        let horizon = self.store.horizon();
        self.cleanup_pending.store(true, Ordering::SeqCst);
        self.clean_up(horizon, &mut stats)?;
        self.cleanup_pending.store(false, Ordering::SeqCst);
        stats.horizon_lsn = horizon;
        stats.duration_ms = started.elapsed().as_millis() as u64;
        stats.finished_unix = unix_now();
        if !moved
            && stats.segments_removed == 0
            && stats.image_entries_removed == 0
            && stats.image_files_removed == 0
        {
            return Ok(None);
        }
        Ok(Some(stats))
    }

    /// Steps 1–3 and the index pruning of step 4 (see the module comment).
    fn move_horizon(
        &self,
        current: Lsn,
        horizon: Lsn,
        stats: &mut PassStats,
    ) -> Result<(), RetentionError> {
        let store = &*self.store;
        let below = Lsn(horizon.0 - 1);
        // Each page changed before the horizon, with its last change before it.
        let mut candidates: Vec<(PageKey, Option<PageChange>)> = {
            let idx = read(&store.index);
            let mut v: Vec<(PageKey, Option<PageChange>)> = idx
                .keys()
                .filter_map(|k| {
                    let h = idx.page(k)?;
                    let n = h.changes.partition_point(|c| c.lsn < horizon);
                    n.checked_sub(1).map(|i| (*k, Some(h.changes[i])))
                })
                .collect();
            v.sort_unstable_by_key(|(k, _)| *k);
            v
        };
        // And every page of a database copied between the current horizon and the new one
        // (no record names them; earlier copies were rebased by earlier passes).
        let copied_dirs: HashSet<_> = read(&store.index)
            .relation_events
            .database_copies()
            .into_iter()
            .filter(|c| c.lsn >= current && c.lsn < horizon)
            .map(|c| c.dst)
            .collect();
        if !copied_dirs.is_empty() {
            let changed: HashSet<PageKey> = candidates.iter().map(|(k, _)| *k).collect();
            let (_, known) = super::check::known_pages(store);
            candidates.extend(
                known
                    .into_iter()
                    .filter(|k| {
                        copied_dirs.contains(&DatabaseDir::of(&k.rel)) && !changed.contains(k)
                    })
                    .map(|k| (k, None)),
            );
        }
        // What each candidate needs: its kept unreadable marker, nothing new (an image covers
        // its newest start before the horizon), or an image rebuilt as of H − 1.
        let plan: Vec<(PageKey, Rebase)> = candidates
            .into_iter()
            .filter_map(|(key, last)| {
                if let Some(last) = last
                    && last.lsn < current
                {
                    // Only a kept unreadable marker is older than the current horizon.
                    debug_assert_eq!(last.kind, ChangeKind::Unsupported);
                    return Some((key, Rebase::KeepMarker(last)));
                }
                // The page's newest start before the horizon: its last change, or the copy
                // of its database if that is newer (the page is then the template's, plus
                // its own changes since).
                let copy = read(&store.index).relation_events.copied_at(&key, below);
                let since = last.map(|c| c.lsn).max(copy.map(|(l, _)| l))?;
                let covered = read(&store.images)
                    .newest_at_or_before(&key, below)
                    .filter(|l| *l >= since);
                Some(match covered {
                    Some(at) => (key, Rebase::Covered(at)),
                    None => (key, Rebase::Rebuild { since, last }),
                })
            })
            .collect();
        // At most an image per page to rebuild, counted at its unpacked size (packing stores
        // less, by how much depends on the page): a pass that may not fit fails before it
        // writes one, rather than fill the disk with images and leave no room for a shorter
        // step. Pages an image already covers cost nothing (under a busy workload many of a
        // segment's pages are, and counting them refused steps that fit).
        let to_rebuild = plan
            .iter()
            .filter(|(_, r)| matches!(r, Rebase::Rebuild { .. }))
            .count() as u64;
        let need = to_rebuild.saturating_mul(super::images::ENTRY_SIZE as u64);
        if let Some(free) = super::free_bytes(&self.data_dir)
            && need > free
        {
            return Err(RetentionError::NoRoom {
                horizon,
                need,
                free,
            });
        }
        // What the largest one-segment step of this distance needs (a pass short of space
        // takes one such step at a time), measured before the rebuilt images cover pages.
        let segments = ((horizon.0 - current.0) / u64::from(self.segment_size)).max(1);
        let step_pages = if segments == 1 {
            to_rebuild
        } else {
            self.largest_one_segment_step(current, horizon, &plan)
        };
        let mut markers: HashMap<PageKey, PageChange> = HashMap::new();
        let mut rebased: HashMap<PageKey, Lsn> = HashMap::new();
        let opts = ReadOptions {
            generated_images: true,
            cache: false,
        };
        for (key, todo) in plan {
            let (since, last) = match todo {
                Rebase::KeepMarker(last) => {
                    markers.insert(key, last);
                    stats.pages_unreadable += 1;
                    continue;
                }
                Rebase::Covered(at) => {
                    rebased.insert(key, at);
                    stats.pages_covered += 1;
                    continue;
                }
                Rebase::Rebuild { since, last } => (since, last),
            };
            match store.reconstruct_with(&key, Some(below), opts) {
                Ok(r) => {
                    write(&store.images).put(&key, since, &r.page)?;
                    rebased.insert(key, since);
                    stats.pages_rebased += 1;
                }
                // Unknown: a page of a copy whose template did not have it.
                Err(GetPageError::Removed { .. } | GetPageError::Unknown { .. }) => {
                    stats.pages_removed += 1
                }
                Err(e) if store_failure(&e) => {
                    return Err(RetentionError::Page {
                        key,
                        source: Box::new(e),
                    });
                }
                Err(GetPageError::Unreadable { at, .. }) => {
                    let marker = read(&store.index)
                        .page(&key)
                        .and_then(|h| h.change_at(at))
                        .or(last)
                        .unwrap_or_else(|| copy_marker(since));
                    markers.insert(
                        key,
                        PageChange {
                            kind: ChangeKind::Unsupported,
                            ..marker
                        },
                    );
                    stats.pages_unreadable += 1;
                }
                Err(GetPageError::TemplateUnprovable { at, .. }) => {
                    // The copy itself becomes the page's marker: a read from here on finds
                    // it where the copy starts the page and refuses the page.
                    markers.insert(key, copy_marker(at));
                    stats.pages_unreadable += 1;
                }
                Err(e) => {
                    // The page cannot be rebuilt here (a redo or archive error): it must not
                    // become readable from older state, so it stays unreadable from its last
                    // change before the horizon.
                    log::warn!(
                        "retention: {key} cannot be rebuilt at {below} ({e}); it stays unreadable until its next image"
                    );
                    let marker = last
                        .filter(|c| c.lsn == since)
                        .unwrap_or_else(|| copy_marker(since));
                    markers.insert(
                        key,
                        PageChange {
                            kind: ChangeKind::Unsupported,
                            ..marker
                        },
                    );
                    stats.pages_unreadable += 1;
                }
            }
        }
        // Every image a skipped page relies on, and every rebased one, is durable first
        // (and in the bucket, which a resume reads).
        read(&store.images).sync()?;
        if let Some(u) = self.uploader.get() {
            u.upload_images(store)?;
        }
        self.update_step_reserve(step_pages.saturating_mul(super::images::ENTRY_SIZE as u64));

        let state = {
            let idx = read(&store.index);
            let mut unreadable: Vec<SavedMarker> = markers
                .iter()
                .map(|(k, c)| SavedMarker {
                    spc: k.rel.spc_oid,
                    db: k.rel.db_oid,
                    rel: k.rel.rel_number,
                    fork: k.fork.0,
                    block: k.block,
                    lsn: c.lsn.0,
                    rmid: c.rmid,
                    info: c.info,
                })
                .collect();
            unreadable.sort_by_key(|m| (m.spc, m.db, m.rel, m.fork, m.block));
            RetentionState {
                horizon: horizon.to_string(),
                relation_events: idx.relation_events.saved_before(horizon),
                unreadable,
                fpw_modes: idx
                    .fpw_modes
                    .iter()
                    .filter(|m| m.lsn < horizon)
                    .map(|m| SavedFpwMode {
                        lsn: m.lsn.0,
                        full_page_writes: m.full_page_writes,
                        explicit: m.explicit,
                    })
                    .collect(),
                saved_unix: unix_now(),
                ..lock(&self.step_peaks).saved()
            }
        };
        state.store(&self.data_dir)?;
        if let Some(u) = self.uploader.get() {
            u.remote().put_retention_state(&self.data_dir)?;
        }
        // From here on the files below the horizon may go (even after a crash).
        self.cleanup_pending.store(true, Ordering::SeqCst);
        store.set_horizon(horizon);
        let mut idx = write(&store.index);
        let pruned = idx.prune_before(horizon, &markers, &rebased);
        stats.index_changes_removed = pruned.changes_removed;
        stats.index_pages_removed = pruned.pages_removed;
        // Pages of a copy with no change before the horizon, which pruning did not visit:
        // their marker and their image at the copy (a no-op for the pages it did visit).
        for (key, marker) in &markers {
            idx.add_unreadable_marker(*key, *marker);
        }
        for (key, at) in &rebased {
            if let Some(h) = idx.page_mut(key) {
                h.note_generated_image(*at);
            }
        }
        Ok(())
    }

    /// The most pages a one-segment step within [current, horizon) would rebuild: for each
    /// segment, the pages changed in it whose last change there no image at or after it
    /// (and before the segment's end) covers. A pass over several segments rebuilds each
    /// page once, for its last change; a pass short of space steps one segment at a time and
    /// rebuilds a page changed in every segment at every step, so the reserve is sized from
    /// this, not from the average.
    fn largest_one_segment_step(
        &self,
        current: Lsn,
        horizon: Lsn,
        plan: &[(PageKey, Rebase)],
    ) -> u64 {
        let seg = u64::from(self.segment_size);
        let segments = ((horizon.0 - current.0) / seg) as usize;
        let mut per_segment = vec![0u64; segments];
        let mut last_in_segment: Vec<(PageKey, usize, Lsn)> = Vec::new();
        for chunk in plan.chunks(STEP_MEASURE_CHUNK) {
            last_in_segment.clear();
            {
                let idx = read(&self.store.index);
                for (key, todo) in chunk {
                    // A page of a database copied in the distance with no change of its own
                    // before the horizon: its image is at the copy, in the copy's segment.
                    if let Rebase::Rebuild { since, last: None } = todo {
                        let s = since.0.checked_sub(current.0).map(|d| (d / seg) as usize);
                        if let Some(n) = s.and_then(|s| per_segment.get_mut(s)) {
                            *n += 1;
                        }
                        continue;
                    }
                    let Some(h) = idx.page(key) else { continue };
                    let from = h.changes.partition_point(|c| c.lsn < current);
                    let to = h.changes.partition_point(|c| c.lsn < horizon);
                    for (i, c) in h.changes[from..to].iter().enumerate() {
                        let s = ((c.lsn.0 - current.0) / seg) as usize;
                        // The last change of its segment: the next one is in a later segment.
                        let next_s = h.changes[from..to]
                            .get(i + 1)
                            .map(|n| ((n.lsn.0 - current.0) / seg) as usize);
                        if next_s != Some(s) && s < segments {
                            last_in_segment.push((*key, s, c.lsn));
                        }
                    }
                }
            }
            let images = read(&self.store.images);
            for (key, s, last) in &last_in_segment {
                let segment_below = Lsn(current.0 + (*s as u64 + 1) * seg - 1);
                if images
                    .newest_at_or_before(key, segment_below)
                    .is_none_or(|l| l < *last)
                {
                    per_segment[*s] += 1;
                }
            }
        }
        per_segment.into_iter().max().unwrap_or(0)
    }

    /// Deletes archive segments ending at or before the horizon, forgets images no read can
    /// start from, and compacts the image files.
    fn clean_up(&self, horizon: Lsn, stats: &mut PassStats) -> Result<(), RetentionError> {
        let seg = u64::from(self.segment_size);
        let horizon_segno = horizon.0 / seg;
        let mut removed_any = false;
        for (segno, _) in self.segments() {
            if segno < horizon_segno {
                let path = self.wal_dir.join(crate::wal::page::segment_file_name(
                    self.timeline,
                    segno,
                    self.segment_size,
                ));
                // The segment, or its stub when the local cache evicted it.
                match super::cache::remove_file_or_stub(&path) {
                    Ok(true) => {
                        stats.segments_removed += 1;
                        removed_any = true;
                    }
                    Ok(false) => {}
                    Err(source) => return Err(RetentionError::Io { path, source }),
                }
            }
        }
        if removed_any {
            super::sync_dir(&self.wal_dir).map_err(|source| RetentionError::Io {
                path: self.wal_dir.clone(),
                source,
            })?;
        }
        if let Some(u) = self.uploader.get() {
            u.remote()
                .delete_wal_before(horizon_segno, self.segment_size)?;
        }
        {
            // Lock order: image store, then index (as reads take them).
            let mut images = write(&self.store.images);
            let idx = read(&self.store.index);
            let below = Lsn(horizon.0.saturating_sub(1));
            stats.image_entries_removed = images.forget_before(horizon, |key, lsn| {
                idx.relation_events
                    .replaced_at(key, below)
                    .is_some_and(|at| at > lsn)
            });
        }
        // One file at a time, its live entries read outside the lock (from the bucket when
        // the local cache evicted the file): reads and image generation go on meanwhile.
        loop {
            // (A statement of its own: the read guard ends here, not with the loop body.)
            let plan = read(&self.store.images).plan_compaction(MIN_LIVE_RATIO);
            let Some(plan) = plan else { break };
            let live = plan.read_live()?;
            let c = write(&self.store.images).finish_compaction(plan, live)?;
            stats.image_files_removed += c.files_removed;
            stats.image_entries_moved += c.entries_moved;
        }
        // Entries compaction moved are in the bucket before the old files' objects go.
        if let Some(u) = self.uploader.get() {
            u.upload_images(&self.store)?;
        }
        Ok(())
    }

    /// Runs `tick` every `interval` on its own thread until the process ends.
    pub(crate) fn spawn(self: &Arc<Self>, interval: Duration) -> std::thread::JoinHandle<()> {
        let me = Arc::clone(self);
        // Supervised: every pass's steps are ordered so that stopping anywhere (a crash, or
        // a panic caught here) leaves the durable state consistent for the next pass.
        crate::sync::supervise::spawn("retention".into(), "retention", move || {
            loop {
                crate::sync::supervise::test_hook("retention");
                me.tick(Instant::now());
                std::thread::sleep(interval);
            }
        })
        .unwrap_or_else(|e| panic!("cannot start the retention thread: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn out_of_space_is_found_among_the_causes() {
        let io = |n| std::io::Error::from_raw_os_error(n);
        let image_write = RetentionError::Images(ImageStoreError::Io {
            path: PathBuf::from("images-000001.dat"),
            source: io(libc::ENOSPC),
        });
        assert!(out_of_space(&image_write));
        let quota = RetentionError::Io {
            path: PathBuf::from("retention.json"),
            source: io(libc::EDQUOT),
        };
        assert!(out_of_space(&quota));
        let other = RetentionError::Io {
            path: PathBuf::from("retention.json"),
            source: io(libc::EIO),
        };
        assert!(!out_of_space(&other));
        assert!(out_of_space(&RetentionError::NoRoom {
            horizon: Lsn(0x300_0000),
            need: 8 << 20,
            free: 1 << 20,
        }));
    }

    #[test]
    fn the_learnt_reserve_is_twice_a_step_within_an_eighth_of_the_disk() {
        assert_eq!(learnt_reserve(300 << 20, Some(12 << 30)), 600 << 20);
        assert_eq!(learnt_reserve(300 << 20, Some(1 << 30)), 128 << 20);
        assert_eq!(learnt_reserve(300 << 20, None), 600 << 20);
        assert_eq!(learnt_reserve(0, Some(1 << 30)), 0);
        assert_eq!(learnt_reserve(u64::MAX, None), u64::MAX);
    }

    #[test]
    fn the_steps_survive_in_the_state_file() {
        let old: RetentionState =
            serde_json::from_str(r#"{"horizon":"0/3000000"}"#).expect("an older state file");
        assert_eq!(old.rebase_bytes_per_segment, 0);
        let peaks = StepPeaks {
            current: 123 << 20,
            previous: 45 << 20,
            started_unix: 1_700_000_000,
        };
        let new = RetentionState {
            horizon: "0/3000000".into(),
            saved_unix: 1_700_000_100,
            ..peaks.saved()
        };
        let back: RetentionState =
            serde_json::from_str(&serde_json::to_string(&new).expect("json")).expect("parse");
        assert_eq!(back, new);
        let dir = std::env::temp_dir().join(format!("retention-step-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        assert_eq!(RetentionState::saved_step_peaks(&dir), StepPeaks::default());
        new.store(&dir).expect("store");
        assert_eq!(RetentionState::saved_step_peaks(&dir), peaks);
        // A file from before the windows: its peak is the current window's, from its save.
        std::fs::write(
            RetentionState::path(&dir),
            r#"{"horizon":"0/3000000","saved_unix":1700000100,"rebase_bytes_per_segment":7}"#,
        )
        .expect("write");
        assert_eq!(
            RetentionState::saved_step_peaks(&dir),
            StepPeaks {
                current: 7,
                previous: 0,
                started_unix: 1_700_000_100
            }
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_step_counts_for_one_to_two_windows() {
        let w = REBASE_WINDOW_SECS;
        let t0 = 1_700_000_000;
        let mut p = StepPeaks::default();
        p.roll(t0);
        assert_eq!(p.started_unix, t0);
        // A burst at the very end of the first window.
        p.roll(t0 + w - 1);
        p.current = 300;
        assert_eq!(p.in_force(), 300);
        // The next window: the burst is the previous one's, still in force to its end,
        // whenever the pass that rolls comes (the windows stay where they were).
        p.roll(t0 + w + 5);
        assert_eq!((p.current, p.previous, p.started_unix), (0, 300, t0 + w));
        p.current = 20;
        p.roll(t0 + 2 * w - 1);
        assert_eq!(p.in_force(), 300);
        // The window after: only the last one's step counts.
        p.roll(t0 + 2 * w);
        assert_eq!((p.current, p.previous, p.in_force()), (0, 20, 20));
        assert_eq!(p.started_unix, t0 + 2 * w);
        // Two windows or more without a pass that rolled: nothing counts.
        p.current = 7;
        p.roll(t0 + 4 * w + 10);
        assert_eq!(p.in_force(), 0);
        assert_eq!(p.started_unix, t0 + 4 * w);
        // A clock set back restarts the window and keeps the steps.
        p.current = 9;
        p.roll(t0);
        assert_eq!((p.current, p.started_unix), (9, t0));
    }

    #[test]
    fn retain_values_parse_and_print() {
        assert_eq!("all".parse::<Retain>(), Ok(Retain::All));
        assert_eq!("ALL".parse::<Retain>(), Ok(Retain::All));
        assert_eq!("512MB".parse::<Retain>(), Ok(Retain::Bytes(512 << 20)));
        assert_eq!("4GB".parse::<Retain>(), Ok(Retain::Bytes(4 << 30)));
        assert_eq!("4gb".parse::<Retain>(), Ok(Retain::Bytes(4 << 30)));
        assert_eq!("1TB".parse::<Retain>(), Ok(Retain::Bytes(1 << 40)));
        assert_eq!("64kB".parse::<Retain>(), Ok(Retain::Bytes(64 << 10)));
        assert_eq!("1000".parse::<Retain>(), Ok(Retain::Bytes(1000)));
        assert_eq!("1000B".parse::<Retain>(), Ok(Retain::Bytes(1000)));
        assert_eq!(
            "30min".parse::<Retain>(),
            Ok(Retain::Time(Duration::from_secs(1800)))
        );
        assert_eq!(
            "2h".parse::<Retain>(),
            Ok(Retain::Time(Duration::from_secs(7200)))
        );
        assert_eq!(
            "7d".parse::<Retain>(),
            Ok(Retain::Time(Duration::from_secs(7 * 86_400)))
        );
        assert_eq!(
            "45s".parse::<Retain>(),
            Ok(Retain::Time(Duration::from_secs(45)))
        );
        for bad in [
            "",
            "MB",
            "-1GB",
            "4 parsecs",
            "1.5GB",
            "4XB",
            "2m",
            "99999999999999999999GB",
            "20000000TB",
        ] {
            let e = bad.parse::<Retain>().unwrap_err();
            assert!(e.contains("retention"), "{bad:?}: {e}");
        }
        for v in [
            "all", "512MB", "4GB", "1TB", "64kB", "1000B", "30min", "2h", "7d", "45s",
        ] {
            assert_eq!(v.parse::<Retain>().unwrap().to_string(), v);
        }
    }

    const SEG: u32 = 16 << 20;

    #[test]
    fn horizon_is_a_segment_start_that_never_moves_back() {
        let seg = u64::from(SEG);
        let backup_start = Lsn(3 * seg + 0x28);
        let mut samples = EndSamples::default();
        let now = Instant::now();
        let keep = |end: u64, samples: &mut EndSamples| {
            Retain::Bytes(32 << 20).keep_from(Lsn(end), samples, now)
        };
        // Not enough WAL yet: the horizon stays at the backup start.
        let k = keep(4 * seg + 100, &mut samples).unwrap();
        assert_eq!(horizon_for(k, backup_start, SEG), backup_start);
        let k = keep(5 * seg + 100, &mut samples).unwrap();
        assert_eq!(horizon_for(k, backup_start, SEG), backup_start);
        // 32 MB behind 6 segments + 100 bytes is inside segment 4: its start.
        let k = keep(6 * seg + 100, &mut samples).unwrap();
        assert_eq!(k, Lsn(4 * seg + 100));
        assert_eq!(horizon_for(k, backup_start, SEG), Lsn(4 * seg));
        // Never below the current horizon.
        assert_eq!(horizon_for(k, Lsn(5 * seg), SEG), Lsn(5 * seg));
        // Less WAL than the distance.
        let k = keep(100, &mut samples).unwrap();
        assert_eq!(k, Lsn(0));
        assert_eq!(horizon_for(k, backup_start, SEG), backup_start);
        assert_eq!(
            Retain::All.keep_from(Lsn(u64::MAX), &mut samples, now),
            None
        );
    }

    #[test]
    fn time_horizon_uses_the_end_as_of_then() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let r = Retain::Time(Duration::from_secs(60));
        let mut samples = EndSamples::default();
        samples.push(at(0), Lsn(1000));
        samples.push(at(10), Lsn(2000));
        samples.push(at(20), Lsn(2000)); // unchanged: not a new sample
        samples.push(at(30), Lsn(3000));
        assert_eq!(samples.len(), 3);
        // Less than a minute of samples: nothing may go.
        assert_eq!(r.keep_from(Lsn(3000), &mut samples, at(59)), None);
        assert_eq!(
            r.keep_from(Lsn(3000), &mut samples, at(60)),
            Some(Lsn(1000))
        );
        assert_eq!(
            r.keep_from(Lsn(3000), &mut samples, at(75)),
            Some(Lsn(2000))
        );
        assert_eq!(samples.len(), 2, "older samples are dropped");
        samples.push(at(200), Lsn(9000));
        assert_eq!(
            r.keep_from(Lsn(9000), &mut samples, at(200)),
            Some(Lsn(3000))
        );
        assert_eq!(
            r.keep_from(Lsn(9000), &mut samples, at(260)),
            Some(Lsn(9000))
        );
    }
}
