//! `redo-helper check`: exactness of the pages the helper serves.
//!
//! - Against the cluster: every page the store knows (indexed by the WAL, held by the base
//!   backup, or copied with a database by `CREATE DATABASE ... STRATEGY FILE_COPY`), rebuilt
//!   as of everything decoded, the way GetPage serves it (generated images included), is
//!   compared with the cluster's data file page after a `CHECKPOINT`, masked like
//!   PostgreSQL's `rm_mask` functions (hint bits, unused space, LSN/checksum). The FSM is
//!   not WAL-logged and is skipped (counted). A page the store says was truncated or dropped
//!   must be absent from the data files. A page it cannot prove (unreadable, or its
//!   template's page at a database copy) is counted, never compared as if it were known.
//!   Visibility-map pages that differ only by bits no WAL carries (`CREATE DATABASE` with
//!   the WAL_LOG strategy, see `redo::vm::bits_only_missing_in_hole`) are counted apart.
//! - Against itself: a random sample of (page, historical LSN) reads served with generated
//!   images must equal, byte for byte, the replay of the page's whole chain from the WAL or
//!   the base backup (`images=none`).

use super::page_store::{GetPageError, PageStore, ReadOptions, StartSource};
use crate::pgdata::read_pg_page;
use crate::redo::compare::{compare_masked, mask_sequence_values};
use crate::redo::mask::PageKind;
use crate::redo::page::{Page, PageLayout};
use crate::redo::vm::bits_only_missing_in_hole;
use crate::sync::read;
use crate::wal::block::{ForkNumber, PageKey};
use crate::wal::page::{BLCKSZ, Lsn};
use std::collections::HashSet;
use std::path::Path;

#[derive(Debug, Clone, Default)]
pub(crate) struct CheckSummary {
    /// The LSN pages were rebuilt at (everything decoded).
    pub lsn: Lsn,
    pub pages_compared: u64,
    pub mismatches: u64,
    /// Visibility-map pages that differ from the data file only by bits the WAL does not
    /// carry (`redo::vm::bits_only_missing_in_hole`; `CREATE DATABASE` with the WAL_LOG
    /// strategy): not mismatches.
    pub vm_bits_not_in_wal: u64,
    /// Pages the store holds that the data files do not have (non-zero).
    pub missing_in_pgdata: u64,
    pub removed_pages: u64,
    pub fsm_skipped: u64,
    pub unreadable: u64,
    pub errors: u64,
    pub first_problem: Option<String>,
    /// Pages whose served version started from a helper-generated image.
    pub served_from_generated: u64,
    pub history_samples: u64,
    pub history_mismatches: u64,
    pub history_max_deltas_with_images: u32,
    pub history_max_deltas_full_chain: u32,
    pub history_from_generated: u64,
}

impl CheckSummary {
    pub(crate) fn ok(&self) -> bool {
        self.mismatches == 0
            && self.missing_in_pgdata == 0
            && self.errors == 0
            && self.history_mismatches == 0
    }

    pub(crate) fn line(&self) -> String {
        format!(
            "check at {}: {} pages compared with the data files, {} mismatches, {} \
             vm_bits_not_in_wal, {} missing, {} removed, {} FSM skipped, {} unreadable, {} \
             errors ({} served from generated images); history: {} samples, {} mismatches, max \
             deltas per read {} with images vs {} full chain ({} started from generated \
             images)",
            self.lsn,
            self.pages_compared,
            self.mismatches,
            self.vm_bits_not_in_wal,
            self.missing_in_pgdata,
            self.removed_pages,
            self.fsm_skipped,
            self.unreadable,
            self.errors,
            self.served_from_generated,
            self.history_samples,
            self.history_mismatches,
            self.history_max_deltas_with_images,
            self.history_max_deltas_full_chain,
            self.history_from_generated,
        )
    }

    fn problem(&mut self, what: impl FnOnce() -> String) {
        if self.first_problem.is_none() {
            self.first_problem = Some(what());
        }
    }
}

/// Serve-path options: generated images, no cache (each page is read once).
const SERVED: ReadOptions = ReadOptions {
    generated_images: true,
    cache: false,
};

/// Compares every page the store serves at its decoded end with `pgdata`'s data files.
pub(crate) fn check_against_pgdata(store: &PageStore, pgdata: &Path, sum: &mut CheckSummary) {
    let (lsn, keys) = known_pages(store);
    sum.lsn = lsn;
    for key in keys {
        if key.fork == ForkNumber::FSM {
            sum.fsm_skipped += 1;
            continue;
        }
        let theirs = match read_pg_page(pgdata, &key) {
            Ok(p) => p,
            Err(e) => {
                sum.errors += 1;
                sum.problem(|| format!("page {key}: reading the data file: {e}"));
                continue;
            }
        };
        match store.reconstruct_with(&key, Some(lsn), SERVED) {
            Ok(r) => {
                if r.start == StartSource::GeneratedImage {
                    sum.served_from_generated += 1;
                }
                let kind = page_kind_hint(store, &key);
                let vm_hole = || store.image_hole(&key, lsn);
                compare_one(&key, &r.page, theirs.as_deref(), kind, vm_hole, sum);
            }
            Err(GetPageError::Removed { at, .. }) => {
                sum.removed_pages += 1;
                if theirs.as_ref().is_some_and(|p| p.iter().any(|&b| b != 0)) {
                    sum.mismatches += 1;
                    sum.problem(|| {
                        format!(
                            "page {key}: removed at {at} for the helper, present in the data files"
                        )
                    });
                }
            }
            Err(e) if e.is_unreadable() => sum.unreadable += 1,
            Err(GetPageError::Unknown { .. }) => {}
            Err(e) => {
                sum.errors += 1;
                sum.problem(|| e.to_string());
            }
        }
    }
}

/// Every page the store knows (indexed by the WAL, imaged, held by the base backup, or
/// copied from one of those by a database copy), in key order, and the LSN everything
/// decoded reaches. A superset: a read says which of them exist.
pub(crate) fn known_pages(store: &PageStore) -> (Lsn, Vec<PageKey>) {
    let (lsn, mut keys, copies) = {
        let idx = read(&store.index);
        (
            idx.last_record_end,
            idx.keys().copied().collect::<Vec<_>>(),
            idx.relation_events.database_copies(),
        )
    };
    let mut known: HashSet<PageKey> = keys.iter().copied().collect();
    // Pages whose whole history went behind the retention horizon live on in their image.
    let imaged: Vec<PageKey> = read(&store.images).keys().copied().collect();
    for k in imaged.into_iter().chain(store.base.page_keys()) {
        if known.insert(k) {
            keys.push(k);
        }
    }
    // A copied database has every page its template had (no record names them): in LSN
    // order, so a copy of a copy has the first template's too.
    for copy in copies {
        let copied: Vec<PageKey> = keys
            .iter()
            .filter(|k| copy.src.holds(&k.rel))
            .map(|k| copy.dst.page(k))
            .collect();
        for k in copied {
            if known.insert(k) {
                keys.push(k);
            }
        }
    }
    // A shard considers only the pages it owns (the others are other shards' to prove).
    let map = store.shard_map();
    keys.retain(|k| map.owns(k));
    keys.sort();
    (lsn, keys)
}

/// The mask a page needs, by the resource manager of the newest change the index knows
/// for it (None: the page only comes from images or the base backup, so it is guessed from
/// its bytes). Extension AMs without a page id (rum) would otherwise be guessed as btree. A
/// page of a database copied with FILE_COPY and unchanged since is its template's page: the
/// template's newest change before the copy says.
pub(crate) fn page_kind_hint(store: &PageStore, key: &PageKey) -> Option<PageKind> {
    let idx = read(&store.index);
    let (mut key, mut upto) = (*key, Lsn(u64::MAX));
    loop {
        let last = idx.page(&key).and_then(|h| {
            let n = h.changes.partition_point(|c| c.lsn <= upto);
            n.checked_sub(1).map(|i| h.changes[i])
        });
        let copy = idx.relation_events.copied_at(&key, upto);
        match (last, copy) {
            (Some(c), copy) if copy.is_none_or(|(at, _)| c.lsn > at) => {
                return PageKind::of_rmgr(c.rmid, key.fork);
            }
            (_, Some((at, template))) => {
                key = template.page(&key);
                upto = at;
            }
            _ => return None,
        }
    }
}

fn compare_one(
    key: &PageKey,
    ours: &[u8],
    theirs: Option<&Page>,
    kind: Option<PageKind>,
    vm_hole: impl FnOnce() -> Option<(u16, u16)>,
    sum: &mut CheckSummary,
) {
    let Ok(ours) = <&Page>::try_from(ours) else {
        sum.errors += 1;
        sum.problem(|| format!("page {key}: served page is not {BLCKSZ} bytes"));
        return;
    };
    let Some(theirs) = theirs else {
        // An all-zero page PostgreSQL never wrote is fine; anything else is a difference.
        if ours.iter().any(|&b| b != 0) {
            sum.missing_in_pgdata += 1;
            sum.problem(|| format!("page {key} is served by the helper but not in the data files"));
        }
        return;
    };
    sum.pages_compared += 1;
    if let Some(diff) = masked_difference(key, ours, theirs, kind) {
        if key.fork == ForkNumber::VM
            && vm_hole().is_some_and(|hole| bits_only_missing_in_hole(ours, theirs, hole))
        {
            sum.vm_bits_not_in_wal += 1;
            return;
        }
        sum.mismatches += 1;
        sum.problem(|| format!("page {key}: helper vs data file:\n{diff}"));
    }
}

/// How the helper's page differs from the data file's once both are masked like
/// PostgreSQL's `rm_mask` (hint bits, unused space, LSN, checksum); None when they agree.
pub(crate) fn masked_difference(
    key: &PageKey,
    ours: &Page,
    theirs: &Page,
    kind: Option<PageKind>,
) -> Option<String> {
    let kind = kind.unwrap_or_else(|| {
        if ours.is_new() {
            PageKind::guess(theirs, key.fork)
        } else {
            PageKind::guess(ours, key.fork)
        }
    });
    let mut a = Box::new(*ours);
    let mut b = Box::new(*theirs);
    if kind == PageKind::Sequence {
        // nextval() changes the tuple without WAL within the range the last XLOG_SEQ_LOG
        // logged ahead (SEQ_LOG_VALS), so the values legitimately differ.
        mask_sequence_values(&mut a);
        mask_sequence_values(&mut b);
    }
    if kind == PageKind::SpGist {
        // The metapage's lastUsedPages cache is written without WAL (SpGistUpdateMetaPage).
        crate::redo::spgist::mask_last_used_pages(&mut a);
        crate::redo::spgist::mask_last_used_pages(&mut b);
    }
    compare_masked(&a, &b, kind, key.block).map(|diff| format!("(mask {kind:?})\n{diff}"))
}

/// splitmix64: a small deterministic generator for sampling (not for anything secret).
struct Sampler(u64);

impl Sampler {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// Reads `samples` random (page, LSN) pairs both ways and compares them byte for byte. The
/// LSN is a random point in the page's history: one of its changes, or just before one.
pub(crate) fn check_history(store: &PageStore, samples: usize, seed: u64, sum: &mut CheckSummary) {
    // Changes retention kept as unreadable markers are before the horizon: not sampled.
    let horizon = store.horizon();
    let candidates: Vec<(PageKey, Vec<Lsn>)> = {
        let idx = read(&store.index);
        let mut v: Vec<(PageKey, Vec<Lsn>)> = idx
            .keys()
            .filter(|k| k.fork != ForkNumber::FSM)
            .filter_map(|k| {
                let h = idx.page(k)?;
                let lsns: Vec<Lsn> = h
                    .changes
                    .iter()
                    .map(|c| c.lsn)
                    .filter(|l| *l >= horizon)
                    .collect();
                (!lsns.is_empty()).then_some((*k, lsns))
            })
            .collect();
        v.sort_by_key(|(k, _)| *k);
        v
    };
    if candidates.is_empty() {
        return;
    }
    // Pages with long histories are where generated images matter: pick half the samples
    // among the 10% longest.
    let mut by_length: Vec<usize> = (0..candidates.len()).collect();
    by_length.sort_by_key(|&i| std::cmp::Reverse(candidates[i].1.len()));
    let hot = &by_length[..by_length.len().div_ceil(10)];
    let mut rng = Sampler(seed);
    for n in 0..samples {
        let i = if n % 2 == 0 {
            hot[rng.below(hot.len())]
        } else {
            rng.below(candidates.len())
        };
        let (key, lsns) = &candidates[i];
        let pick = lsns[rng.below(lsns.len())];
        let lsn = if rng.next().is_multiple_of(4) {
            Lsn(pick.0.saturating_sub(1)).max(horizon)
        } else {
            pick
        };
        sum.history_samples += 1;
        let served = store.reconstruct_with(key, Some(lsn), SERVED);
        let full = store.reconstruct_with(key, Some(lsn), ReadOptions::full_chain());
        match (served, full) {
            (Ok(a), Ok(b)) => {
                sum.history_max_deltas_with_images =
                    sum.history_max_deltas_with_images.max(a.deltas_replayed);
                sum.history_max_deltas_full_chain =
                    sum.history_max_deltas_full_chain.max(b.deltas_replayed);
                if a.start == StartSource::GeneratedImage {
                    sum.history_from_generated += 1;
                }
                if a.page != b.page {
                    sum.history_mismatches += 1;
                    let at = a.page.iter().zip(&b.page).position(|(x, y)| x != y);
                    sum.problem(|| {
                        format!(
                            "page {key} at {lsn}: served (from {} at {}) differs from the full chain (from {} at {}) at byte {at:?}",
                            a.start, a.start_lsn, b.start, b.start_lsn
                        )
                    });
                }
            }
            (Err(a), Err(b)) if std::mem::discriminant(&a) == std::mem::discriminant(&b) => {}
            (a, b) => {
                sum.history_mismatches += 1;
                let show = |r: &Result<super::page_store::Reconstructed, GetPageError>| match r {
                    Ok(p) => format!("a page from {} at {}", p.start, p.start_lsn),
                    Err(e) => e.to_string(),
                };
                let (a, b) = (show(&a), show(&b));
                sum.problem(|| format!("page {key} at {lsn}: served {a}, full chain {b}"));
            }
        }
    }
}
