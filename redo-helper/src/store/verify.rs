//! Verification of a bulk replay (`redo-helper verify`): the replay's own per-record
//! comparisons with the consistency images (see [`super::replay`]), then, with `pgdata`,
//! every page the replay holds (base backup pages and pages built from WAL) compared, masked,
//! with the same page in the cluster's data files (taken after a CHECKPOINT, so they are on
//! disk). Free space map pages are not WAL-logged and are only counted.
//!
//! Visibility-map pages PostgreSQL itself cannot reproduce from its WAL are a category of
//! their own, `vm_bits_not_in_wal`, not mismatches: `CREATE DATABASE` with the WAL_LOG
//! strategy logs the copied VM pages as standard-layout images whose hole holds the whole
//! bitmap, so every replay (a standby's too) has bits cleared that the primary's files keep
//! set. The rule is exact: a VM page restored from an image with a hole, whose header agrees
//! and whose differing bytes all lie in that hole, with no bit set in the replay that the
//! data file has clear (`redo::vm::bits_only_missing_in_hole`). Anything else stays a
//! mismatch.

use super::base::BaseFiles;
use super::meta::HelperMeta;
use super::replay::pages::base_page_keys;
use super::replay::{PageSet, ReplayError, ReplayOptions, ReplaySummary, replay};
use crate::pgdata::read_pg_page;
use crate::pgdata::relpath::pg_relation_path;
use crate::redo::compare::{compare_masked, mask_sequence_values};
use crate::redo::mask::PageKind;
use crate::redo::page::PageLayout;
use crate::redo::pagetable::key_hash;
use crate::redo::vm::bits_only_missing_in_hole;
use crate::wal::block::{ForkNumber, PageKey};
use crate::wal::page::{BLCKSZ, Lsn};
use crate::wal::reader::{FileReaderOptions, WalFileReader};
use std::collections::{BTreeMap, HashSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Default)]
pub(crate) struct VerifyOptions {
    /// The helper's data directory (helper.json, base/, wal/).
    pub data_dir: PathBuf,
    /// A cluster's data directory to compare against after the replay.
    pub pgdata: Option<PathBuf>,
    /// First record (default: the backup start in helper.json).
    pub start: Option<Lsn>,
    /// Stop before this LSN (default: the archive's flush position).
    pub end: Option<Lsn>,
    pub replay: ReplayOptions,
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum VerifyError {
    #[error("{0}")]
    Meta(#[from] crate::store::meta::MetaError),
    #[error("{dir} is not a bootstrapped helper data directory (no helper.json)")]
    NotBootstrapped { dir: PathBuf },
    /// Reading the WAL or a file (the replay's own errors, and the same of verification).
    #[error(transparent)]
    Replay(#[from] ReplayError),
}

impl From<crate::wal::WalError> for VerifyError {
    fn from(e: crate::wal::WalError) -> Self {
        VerifyError::Replay(e.into())
    }
}

fn io_error(path: PathBuf, source: std::io::Error) -> VerifyError {
    VerifyError::Replay(ReplayError::Io { path, source })
}

/// Result of a verification run.
#[derive(Debug, Clone, Default)]
pub(crate) struct VerifySummary {
    pub replay: ReplaySummary,
    /// Data-file comparison (`pgdata`).
    pub pgdata_pages_compared: u64,
    pub pgdata_mismatches: u64,
    pub pgdata_fsm_pages_skipped: u64,
    pub pgdata_unreadable_skipped: u64,
    pub pgdata_missing: u64,
    /// Visibility-map pages that differ from the data file only by bits the WAL does not
    /// carry (see the module documentation): not mismatches.
    pub pgdata_vm_bits_not_in_wal: u64,
    pub pgdata_first_vm_bits_not_in_wal: Option<String>,
    pub pgdata_first_mismatch: Option<String>,
    /// Pages compared, per kind.
    pub pgdata_by_kind: BTreeMap<String, u64>,
}

impl VerifySummary {
    pub(crate) fn total_mismatches(&self) -> u64 {
        self.replay.mismatches + self.pgdata_mismatches + self.replay.redo_errors
    }

    /// Visibility-map pages (data files and consistency images) with bits the WAL does not
    /// carry.
    pub(crate) fn total_vm_bits_not_in_wal(&self) -> u64 {
        self.replay.vm_bits_not_in_wal + self.pgdata_vm_bits_not_in_wal
    }

    /// The one-line summary `redo-helper verify` ends with.
    pub(crate) fn line(&self) -> String {
        let mut s = format!(
            "verify: records replayed {}, pages verified {}, mismatches {}, unreadable pages {}, vm_bits_not_in_wal {}",
            self.replay.records,
            self.replay.pages_verified + self.pgdata_pages_compared,
            self.total_mismatches(),
            self.replay.unreadable_pages,
            self.total_vm_bits_not_in_wal()
        );
        let _ = write!(
            s,
            " (consistency images {} / {} mismatches / {} vm_bits_not_in_wal; redo errors {}; pages copied by FILE_COPY {}; data files {} pages / {} mismatches / {} vm_bits_not_in_wal, {} missing, {} fsm skipped, {} unreadable skipped; WAL {}..{}, {:.1} MB in {:.2}s)",
            self.replay.pages_verified,
            self.replay.mismatches,
            self.replay.vm_bits_not_in_wal,
            self.replay.redo_errors,
            self.replay.pages_copied,
            self.pgdata_pages_compared,
            self.pgdata_mismatches,
            self.pgdata_vm_bits_not_in_wal,
            self.pgdata_missing,
            self.pgdata_fsm_pages_skipped,
            self.pgdata_unreadable_skipped,
            self.replay.start,
            self.replay.end,
            self.replay.wal_bytes as f64 / 1e6,
            self.replay.replay_time.as_secs_f64()
        );
        s
    }
}

/// Runs the verification.
pub(crate) fn verify(opts: &VerifyOptions) -> Result<VerifySummary, VerifyError> {
    let meta = HelperMeta::load(&opts.data_dir)?.ok_or_else(|| VerifyError::NotBootstrapped {
        dir: opts.data_dir.clone(),
    })?;
    let wal_dir = opts.data_dir.join("wal");
    let start = opts.start.unwrap_or_else(|| meta.start_lsn());
    let end = match opts.end {
        Some(e) => e,
        None => read_flushed(&wal_dir)?,
    };
    let ropts = FileReaderOptions {
        timeline: Some(meta.timeline),
        end: Some(end),
        system_identifier: Some(meta.system_identifier),
        version: Some(meta.pg_version),
        read_ahead: true,
        // The archive's segments only ever grow to their full size: read them in place.
        map_files: true,
        ..Default::default()
    };
    let mut reader = WalFileReader::open(&wal_dir, start, ropts)?;
    let base = BaseFiles::new(opts.data_dir.join("base"));
    let (replayed, mut set) = replay(&mut reader, base, start, end, &opts.replay)?;
    let mut sum = VerifySummary {
        replay: replayed,
        ..Default::default()
    };
    if let Some(pgdata) = &opts.pgdata {
        compare_pgdata(&mut set, pgdata, &mut sum)?;
    }
    Ok(sum)
}

fn read_flushed(wal_dir: &Path) -> Result<Lsn, VerifyError> {
    let path = wal_dir.join("flushed");
    let text = std::fs::read_to_string(&path).map_err(|source| io_error(path.clone(), source))?;
    text.trim()
        .parse::<Lsn>()
        .map_err(|e| io_error(path, std::io::Error::other(e.to_string())))
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
        let (page, kind, image_hole) = match set
            .pages
            .find(&key, key_hash(&key))
            .map(|i| set.pages.slot(i))
        {
            Some(s) if s.unreadable.is_some() => {
                sum.pgdata_unreadable_skipped += 1;
                continue;
            }
            Some(s) => (Box::new(*s.page()), s.kind, s.image_hole),
            None => match set.base.read_page(&key) {
                Ok(Some(v)) => {
                    let mut p = Box::new([0u8; BLCKSZ]);
                    p.copy_from_slice(&v);
                    (p, None, None)
                }
                _ => continue,
            },
        };
        let theirs = read_pg_page(pgdata, &key)
            .map_err(|source| io_error(pg_relation_path(pgdata, &key.rel, key.fork, 0), source))?;
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
        if kind == PageKind::SpGist {
            // The metapage's lastUsedPages cache is written without WAL
            // (SpGistUpdateMetaPage): no replay has it.
            crate::redo::spgist::mask_last_used_pages(&mut page);
            crate::redo::spgist::mask_last_used_pages(&mut theirs);
        }
        if let Some(diff) = compare_masked(&page, &theirs, kind, key.block) {
            if kind == PageKind::VisibilityMap
                && image_hole.is_some_and(|hole| bits_only_missing_in_hole(&page, &theirs, hole))
            {
                sum.pgdata_vm_bits_not_in_wal += 1;
                if sum.pgdata_first_vm_bits_not_in_wal.is_none() {
                    sum.pgdata_first_vm_bits_not_in_wal = Some(format!(
                        "page {key}: store vs data file after CHECKPOINT:\n{diff}"
                    ));
                }
                continue;
            }
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
