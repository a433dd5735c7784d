//! The Rust redo engine: PostgreSQL 15's redo, one page at a time.
//!
//! Entry points:
//! - [`apply_block`]: apply one block reference of a record to its page, with
//!   PostgreSQL's rules (`XLogReadBufferForRedoExtended` in `access/transam/xlogutils.c`):
//!   an applicable full page image replaces the page; `WILL_INIT` starts from a zeroed
//!   page; otherwise the change is applied only if the page's LSN is older than the
//!   record's end (`BLK_NEEDS_REDO`), and the page is stamped with the record's end LSN.
//! - [`apply_to_page`]: the same for any page a record changes, including the VM pages heap
//!   records clear without referencing them ([`vm::implicit_vm_clears`]) and the last VM
//!   page an smgr truncation trims. The store's page reconstruction uses it.
//! - [`relation_changes`]: creations, truncations and drops (smgr, commit/abort, database
//!   drop) that change which pages exist.
//!
//! Resource managers replayed: XLOG (FPI), Heap, Heap2, Btree, Sequence, BRIN, GIN, GiST,
//! Hash, SP-GiST, Generic (the generic WAL of extension index AMs such as bloom, rum,
//! pgvector); Storage and Transaction records change relations, not pages. Any other record
//! touching a page (custom resource managers) is refused with
//! [`RedoErrorKind::Unsupported`]: its page is unreadable until an image arrives.

pub(crate) mod brin;
pub(crate) mod btree;
pub(crate) mod compare;
pub(crate) mod generic;
pub(crate) mod gin;
pub(crate) mod gist;
pub(crate) mod hash;
pub(crate) mod heap;
pub(crate) mod heap2;
pub(crate) mod mask;
pub(crate) mod page;
pub(crate) mod pagetable;
pub(crate) mod seq;
pub(crate) mod smgr;
pub(crate) mod spgist;
pub(crate) mod tuple;
pub(crate) mod vm;
pub(crate) mod xlog;

use crate::wal::block::{BlockRef, ForkNumber, PageKey};
use crate::wal::error::WalError;
use crate::wal::page::Lsn;
use crate::wal::record::DecodedRecord;
use crate::wal::rmgr::{self, RmgrId};
use page::{Page, PageLayout, PageShapeError};

pub(crate) use smgr::{RelationChange, relation_changes};

/// Settings of the compute that change what redo does.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct RedoContext {
    /// The cluster has data checksums (`initdb -k`).
    pub data_checksums: bool,
    /// `wal_log_hints` is on.
    pub wal_log_hints: bool,
}

impl RedoContext {
    /// `XLogHintBitIsNeeded()`.
    pub(crate) fn hint_bits_logged(&self) -> bool {
        self.data_checksums || self.wal_log_hints
    }
}

/// Whether a rmgr's redo touches the page's LSN after changing it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LsnRule {
    /// `PageSetLSN(page, EndRecPtr)`.
    Stamp,
    /// The page keeps its LSN (nothing changed, or PostgreSQL deliberately does not bump
    /// it, e.g. the heap page of XLOG_HEAP2_VISIBLE without checksums).
    Keep,
}

/// What happened to a page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BlockOutcome {
    /// An applicable full page image was restored (`BLK_RESTORED`).
    Restored,
    /// The record's change was applied (`BLK_NEEDS_REDO`).
    Applied,
    /// The page already contains the change: its LSN is not older (`BLK_DONE`).
    AlreadyApplied,
}

/// Why a record could not be applied to a page.
#[derive(Debug, Clone, thiserror::Error)]
pub(crate) enum RedoErrorKind {
    #[error("malformed record: {0}")]
    Malformed(String),
    #[error("page does not match the record: {0}")]
    Page(#[from] PageShapeError),
    #[error("not replayed by the helper's redo; the page is unreadable until a full page image")]
    Unsupported,
    #[error("restoring the full page image: {0}")]
    Image(#[from] WalError),
    #[error("the record does not change this page")]
    NotTouched,
}

pub(crate) fn malformed(what: impl Into<String>) -> RedoErrorKind {
    RedoErrorKind::Malformed(what.into())
}

/// A page that does not have the shape the record needs (an access method's own checks,
/// where PostgreSQL asserts or raises an error).
pub(crate) fn shape(what: String) -> RedoErrorKind {
    RedoErrorKind::Page(PageShapeError::Other(what))
}

/// The record's WILL_INIT flag must agree with whether redo re-initialises the page
/// (`XLogReadBufferForRedoExtended`: "block to be initialized in redo routine must be
/// marked with WILL_INIT flag in the WAL record" and the converse, both PANIC).
pub(crate) fn require_init(block: &BlockRef, init: bool) -> Result<(), RedoErrorKind> {
    match (block.will_init(), init) {
        (true, false) => Err(malformed(format!(
            "block {} has WILL_INIT but redo does not initialise it",
            block.id
        ))),
        (false, true) => Err(malformed(format!(
            "block {} is initialised by redo but lacks WILL_INIT",
            block.id
        ))),
        _ => Ok(()),
    }
}

/// A block id the record type never registers.
pub(crate) fn unexpected_block(id: u8) -> Result<LsnRule, RedoErrorKind> {
    Err(malformed(format!("unexpected block id {id}")))
}

/// A redo failure, naming the record (rmgr, type, LSN) and the page.
#[derive(Debug, Clone, thiserror::Error)]
#[error("redo of {rmgr} {record} at {lsn} on page {page}: {kind}")]
pub(crate) struct RedoError {
    pub lsn: Lsn,
    pub rmgr: String,
    pub record: String,
    pub page: PageKey,
    pub kind: RedoErrorKind,
}

impl RedoError {
    pub(crate) fn new(rec: &DecodedRecord, page: PageKey, kind: RedoErrorKind) -> RedoError {
        RedoError {
            lsn: rec.lsn,
            rmgr: RmgrId(rec.rmid()).name().into_owned(),
            record: rmgr::record_type_name_of(rec.version, rec.rmid(), rec.info()).into_owned(),
            page,
            kind,
        }
    }
    pub(crate) fn is_unsupported(&self) -> bool {
        matches!(self.kind, RedoErrorKind::Unsupported)
    }
}

/// Resource managers whose page changes the engine replays.
pub(crate) fn rmgr_replayed(rmid: u8) -> bool {
    matches!(
        rmid,
        rmgr::RM_XLOG_ID
            | rmgr::RM_HEAP_ID
            | rmgr::RM_HEAP2_ID
            | rmgr::RM_BTREE_ID
            | rmgr::RM_SEQ_ID
            | rmgr::RM_GENERIC_ID
            | rmgr::RM_BRIN_ID
            | rmgr::RM_GIN_ID
            | rmgr::RM_GIST_ID
            | rmgr::RM_HASH_ID
            | rmgr::RM_SPGIST_ID
    )
}

/// Applies the change of `rec` described by block reference `block` to `page` (the page
/// as of before the record; all zeros if it does not exist yet).
pub(crate) fn apply_block(
    page: &mut Page,
    rec: &DecodedRecord,
    block: &BlockRef,
    ctx: &RedoContext,
) -> Result<BlockOutcome, RedoError> {
    apply_block_kind(page, rec, block, ctx).map_err(|k| RedoError::new(rec, block.page_key(), k))
}

fn apply_block_kind(
    page: &mut Page,
    rec: &DecodedRecord,
    block: &BlockRef,
    ctx: &RedoContext,
) -> Result<BlockOutcome, RedoErrorKind> {
    if block.has_applicable_image() {
        rec.restore_block_image(block, page)?;
        // A restored all-zero page stays new: PostgreSQL only stamps initialised pages.
        if !page.is_new() {
            page.set_lsn(rec.end_lsn);
        }
        // gistRedoClearFollowRight changes the left child even when it was restored.
        if rec.rmid() == rmgr::RM_GIST_ID {
            gist::redo_after_image(rec, block, page)?;
        }
        return Ok(BlockOutcome::Restored);
    }
    if !rmgr_replayed(rec.rmid()) {
        return Err(RedoErrorKind::Unsupported);
    }
    if block.will_init() {
        // GIN re-initialises its metapage for every pending-list insertion: when the page
        // already has the layout that leaves, its redo rewrites what changes in place.
        if !(rec.rmid() == rmgr::RM_GIN_ID && gin::reinit_in_place(rec, block, page)) {
            page.fill(0);
        }
    } else if page.lsn() >= rec.end_lsn {
        return Ok(BlockOutcome::AlreadyApplied);
    }
    if block.fork == ForkNumber::VM
        && matches!(rec.rmid(), rmgr::RM_HEAP_ID | rmgr::RM_HEAP2_ID)
        && let clears = vm::implicit_vm_clears(rec)
            .into_iter()
            .filter(|c| c.vm_page == block.page_key())
            .collect::<Vec<_>>()
        && !clears.is_empty()
    {
        // Newer minor releases (upstream's "Fix VM clear WAL logging by registering VM
        // blocks": 17.12, 18.5 and later) register the VM page a heap record clears as a
        // block reference (HEAP_INSERT_BLKREF_VM, HEAP_UPDATE_BLKREF_VM_NEW/_OLD, ...);
        // heap_xlog_vm_clear then clears the bits the record's flags name on it, like the
        // implicit clear of older releases, but only when the page LSN says it is not done
        // yet, and stamps it.
        for c in clears {
            vm::clear(page, c.heap_blk, c.flags);
        }
        page.set_lsn(rec.end_lsn);
        return Ok(BlockOutcome::Applied);
    }
    let rule = match rec.rmid() {
        rmgr::RM_XLOG_ID => xlog::redo_block(rec, block, page)?,
        rmgr::RM_HEAP_ID => heap::redo_block(rec, block, page)?,
        rmgr::RM_HEAP2_ID => heap2::redo_block(rec, block, page, ctx)?,
        rmgr::RM_BTREE_ID => btree::redo_block(rec, block, page)?,
        rmgr::RM_SEQ_ID => seq::redo_block(rec, block, page)?,
        rmgr::RM_GENERIC_ID => generic::redo_block(rec, block, page)?,
        rmgr::RM_BRIN_ID => brin::redo_block(rec, block, page)?,
        rmgr::RM_GIN_ID => gin::redo_block(rec, block, page)?,
        rmgr::RM_GIST_ID => gist::redo_block(rec, block, page)?,
        rmgr::RM_HASH_ID => hash::redo_block(rec, block, page)?,
        rmgr::RM_SPGIST_ID => spgist::redo_block(rec, block, page)?,
        _ => return Err(RedoErrorKind::Unsupported),
    };
    if rule == LsnRule::Stamp {
        page.set_lsn(rec.end_lsn);
    }
    Ok(BlockOutcome::Applied)
}

/// A page a record changes without referencing it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ImplicitChange {
    /// A heap record clears visibility-map bits (`visibilitymap_clear` in heap redo).
    VmClear { heap_blk: u32, flags: u8 },
    /// An smgr truncation clears the tail bits of the last remaining VM page
    /// (`visibilitymap_prepare_truncate`).
    VmTruncateTail { nheapblocks: u32 },
}

/// The pages `rec` changes without a block reference. A VM page the record references
/// (newer minor releases register it) is changed through its block reference instead.
///
/// Most records change none, and that answer is given inline, as
/// [`smgr::relation_changes`] does (and for the same reason: an empty vector returned
/// from a call is reloaded in a way that defeats store forwarding, once per record).
#[inline]
pub(crate) fn implicit_changes(rec: &DecodedRecord) -> Vec<(PageKey, ImplicitChange)> {
    if !(rec.rmid() == rmgr::RM_SMGR_ID || vm::may_clear_vm(rec)) {
        return Vec::new();
    }
    implicit_changes_of(rec)
}

fn implicit_changes_of(rec: &DecodedRecord) -> Vec<(PageKey, ImplicitChange)> {
    let mut out: Vec<(PageKey, ImplicitChange)> = vm::implicit_vm_clears(rec)
        .into_iter()
        .filter(|c| !rec.blocks().iter().any(|b| b.page_key() == c.vm_page))
        .map(|c| {
            (
                c.vm_page,
                ImplicitChange::VmClear {
                    heap_blk: c.heap_blk,
                    flags: c.flags,
                },
            )
        })
        .collect();
    if rec.rmid() == rmgr::RM_SMGR_ID {
        for ch in relation_changes(rec) {
            if let RelationChange::Truncate {
                rel,
                fork,
                nblocks,
                vm_tail_of,
            } = ch
                && fork == ForkNumber::VM
                && let Some(nheapblocks) = vm_tail_of
            {
                out.push((
                    PageKey {
                        rel,
                        fork,
                        block: nblocks.saturating_sub(1),
                    },
                    ImplicitChange::VmTruncateTail { nheapblocks },
                ));
            }
        }
    }
    out
}

/// Applies an implicit change. These ignore the page LSN and do not stamp it, as
/// PostgreSQL's redo does for them.
pub(crate) fn apply_implicit(page: &mut Page, change: ImplicitChange) {
    match change {
        ImplicitChange::VmClear { heap_blk, flags } => vm::clear(page, heap_blk, flags),
        ImplicitChange::VmTruncateTail { nheapblocks } => {
            if !page.is_new() {
                vm::truncate_tail(page, nheapblocks)
            }
        }
    }
}

/// Applies whatever `rec` does to the page `key`: its block reference if it has one (block
/// references come first, as in PostgreSQL where the VM clear of a record that also
/// references the VM page cannot happen), else an implicit change.
pub(crate) fn apply_to_page(
    page: &mut Page,
    rec: &DecodedRecord,
    key: &PageKey,
    ctx: &RedoContext,
) -> Result<BlockOutcome, RedoError> {
    if let Some(block) = rec.blocks().iter().find(|b| b.page_key() == *key) {
        return apply_block(page, rec, block, ctx);
    }
    let mut touched = false;
    for (k, change) in implicit_changes(rec) {
        if k == *key {
            apply_implicit(page, change);
            touched = true;
        }
    }
    if touched {
        Ok(BlockOutcome::Applied)
    } else {
        Err(RedoError::new(rec, *key, RedoErrorKind::NotTouched))
    }
}

/// The redo engine as the store's page reconstruction uses it: the compute's settings.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct RedoEngine {
    pub ctx: RedoContext,
}

/// Robustness of every resource manager's redo against records PostgreSQL would not write:
/// random main data and block data (up to four block references, with and without
/// WILL_INIT), applied to pages of every access method's shape, must give a typed error or
/// a page, never a panic.
#[cfg(test)]
mod fuzz {
    use super::*;
    use crate::wal::block::{BKPBLOCK_HAS_DATA, BKPBLOCK_WILL_INIT, XLR_BLOCK_ID_DATA_LONG};
    use crate::wal::page::BLCKSZ;
    use crate::wal::record::tests::build_record;
    use proptest::prelude::*;

    /// The replayed rmgrs (XLOG: FPI records without images are refused or no-ops).
    const RMGRS: [u8; 11] = [
        rmgr::RM_HEAP_ID,
        rmgr::RM_HEAP2_ID,
        rmgr::RM_BTREE_ID,
        rmgr::RM_HASH_ID,
        rmgr::RM_GIN_ID,
        rmgr::RM_GIST_ID,
        rmgr::RM_SEQ_ID,
        rmgr::RM_SPGIST_ID,
        rmgr::RM_BRIN_ID,
        rmgr::RM_GENERIC_ID,
        rmgr::RM_XLOG_ID,
    ];

    /// A record of `rmid` with `info`, the given block data (one block reference each, to
    /// block `blk` of one relation) and main data; None when it does not decode.
    fn record(
        rmid: u8,
        info: u8,
        blocks: &[(Vec<u8>, bool)],
        main: &[u8],
        blk: u32,
    ) -> Option<DecodedRecord> {
        let mut body = Vec::new();
        for (id, (data, init)) in blocks.iter().enumerate() {
            let mut flags = if data.is_empty() {
                0
            } else {
                BKPBLOCK_HAS_DATA
            };
            if *init {
                flags |= BKPBLOCK_WILL_INIT;
            }
            body.extend_from_slice(&[id as u8, flags]);
            body.extend_from_slice(&(data.len() as u16).to_le_bytes());
            for v in [1663u32, 5, 16384, blk + id as u32] {
                body.extend_from_slice(&v.to_le_bytes());
            }
        }
        if !main.is_empty() {
            body.push(XLR_BLOCK_ID_DATA_LONG);
            body.extend_from_slice(&(main.len() as u32).to_le_bytes());
        }
        for (data, _) in blocks {
            body.extend_from_slice(data);
        }
        body.extend_from_slice(main);
        let raw = build_record(rmid, info, 7, Lsn(0x100_0000), &body);
        DecodedRecord::from_raw(Lsn(0x200_0000), raw).ok()
    }

    /// A page of each shape redo meets: new, heap, and index pages with the special space
    /// and page id of btree, hash, GiST, SP-GiST, GIN, BRIN and bloom, with a few items.
    fn pages(seed: &[u8]) -> Vec<Box<Page>> {
        let mut out = vec![Box::new([0u8; BLCKSZ])];
        for (special, id) in [
            (0usize, None),
            (16, Some(0u16)),
            (16, Some(0xFF80)),
            (16, Some(0xFF81)),
            (8, Some(0xFF82)),
            (8, Some(0x0003)),
            (8, Some(0xF093)),
            (16, Some(0xFF83)),
        ] {
            let mut p = Box::new([0u8; BLCKSZ]);
            p.init(special);
            if let Some(id) = id {
                page::put_u16(&mut p[..], BLCKSZ - 2, id);
            }
            for chunk in seed.chunks(24).take(4) {
                let mut item = chunk.to_vec();
                item.resize(24, 0);
                let _ = p.add_item(&item, 0, 0);
            }
            // Some bytes of the special space from the input as well.
            for (i, b) in seed.iter().take(special.min(6)).enumerate() {
                p[BLCKSZ - special + i] = *b;
            }
            out.push(p);
        }
        out
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(3000))]
        #[test]
        fn malformed_records_are_errors_not_panics(
            rmgr in 0..RMGRS.len(),
            info in any::<u8>(),
            main in proptest::collection::vec(any::<u8>(), 0..96),
            blocks in proptest::collection::vec(
                (proptest::collection::vec(any::<u8>(), 0..160), any::<bool>()), 1..5),
            seed in proptest::collection::vec(any::<u8>(), 0..96),
            blk in 0u32..4,
            version in 0..crate::wal::PgVersion::ALL.len(),
        ) {
            let Some(mut rec) = record(RMGRS[rmgr], info & 0xF0, &blocks, &main, blk) else {
                return Ok(());
            };
            // Every version's layouts (16's freeze plans, 17's prune sub-records, ...).
            rec.version = crate::wal::PgVersion::ALL[version];
            let ctx = RedoContext { data_checksums: true, wal_log_hints: false };
            for start in pages(&seed) {
                for block in rec.blocks() {
                    let mut page = start.clone();
                    let _ = apply_block(&mut page, &rec, block, &ctx);
                }
            }
        }
    }
}

#[cfg(test)]
mod registered_vm_block {
    use super::*;
    use crate::wal::block::{BKPBLOCK_HAS_DATA, BKPBLOCK_SAME_REL, XLR_BLOCK_ID_DATA_SHORT};
    use crate::wal::page::BLCKSZ;
    use crate::wal::record::tests::build_record;

    /// A heap INSERT clearing the all-visible bits of heap block 3, with (newer minor
    /// releases) or without (older ones) the VM page as block reference 1.
    fn insert(register_vm: bool) -> DecodedRecord {
        let tuple = [0u8, 0, 0, 0, 24, 1, 2, 3]; // xl_heap_header (5 bytes), then data
        let mut body = vec![0u8, BKPBLOCK_HAS_DATA, tuple.len() as u8, 0];
        for v in [1663u32, 5, 16384, 3] {
            body.extend_from_slice(&v.to_le_bytes());
        }
        if register_vm {
            body.extend_from_slice(&[1, BKPBLOCK_SAME_REL | ForkNumber::VM.0, 0, 0]);
            body.extend_from_slice(&0u32.to_le_bytes());
        }
        body.extend_from_slice(&[XLR_BLOCK_ID_DATA_SHORT, 3]);
        body.extend_from_slice(&tuple);
        // xl_heap_insert: offnum 1, XLH_INSERT_ALL_VISIBLE_CLEARED.
        body.extend_from_slice(&[1, 0, 1]);
        let raw = build_record(rmgr::RM_HEAP_ID, 0, 7, Lsn(0x100_0000), &body);
        DecodedRecord::from_raw(Lsn(0x200_0000), raw).expect("record decodes")
    }

    fn vm_page_with_bits() -> Box<Page> {
        let mut p = Box::new([0u8; BLCKSZ]);
        p.init(0);
        for b in 0..8 {
            vm::set(&mut p, b, vm::VISIBILITYMAP_VALID_BITS);
        }
        p
    }

    #[test]
    fn a_registered_vm_page_is_cleared_through_its_block_and_stamped() {
        let rec = insert(true);
        let vm_block = rec.block(1).copied().expect("block 1");
        assert_eq!(vm_block.fork, ForkNumber::VM);
        // The implicit clear gives way to the block reference.
        assert!(implicit_changes(&rec).is_empty());
        let mut page = vm_page_with_bits();
        let before = page.clone();
        let ctx = RedoContext::default();
        let out = apply_block(&mut page, &rec, &vm_block, &ctx).expect("applies");
        assert_eq!(out, BlockOutcome::Applied);
        assert_eq!(page.lsn(), rec.end_lsn);
        let mut expected = before.clone();
        vm::clear(&mut expected, 3, vm::VISIBILITYMAP_VALID_BITS);
        assert_eq!(page[24..], expected[24..]);
        // Replayed again: its LSN says done.
        assert_eq!(
            apply_block(&mut page, &rec, &vm_block, &ctx).expect("applies"),
            BlockOutcome::AlreadyApplied
        );
    }

    #[test]
    fn without_the_block_the_clear_is_implicit_and_unstamped() {
        let rec = insert(false);
        let changes = implicit_changes(&rec);
        assert_eq!(changes.len(), 1);
        let mut page = vm_page_with_bits();
        apply_implicit(&mut page, changes[0].1);
        assert_eq!(page.lsn(), Lsn(0));
    }
}
