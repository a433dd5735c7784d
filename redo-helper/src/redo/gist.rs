//! GiST redo (`gist_redo` in `access/gist/gistxlog.c`, PostgreSQL 15): all six record types,
//! one block reference at a time.
//!
//! Page layout facts (`access/gist.h`, `access/gist_private.h`, `access/gist/gistutil.c`):
//! - Every GiST page has a 16-byte special space, `GISTPageOpaqueData` {nsn, rightlink,
//!   flags, gist_page_id}. The NSN is a `PageXLogRecPtr` (xlogid, then xrecoff, like
//!   pd_lsn); `gist_page_id` is `GIST_PAGE_ID` (0xFF81), the last two bytes of the page.
//!   `gistinitpage` is `PageInit(page, BLCKSZ, 16)`, then the flags, an invalid right link
//!   and the page id; the NSN stays 0.
//! - The root is block 0 (`GIST_ROOT_BLKNO`); there is no metapage. Leaf and internal
//!   pages hold ordinary index tuples (a downlink keeps its child's block in `t_tid`).
//! - A page split sets the NSN of every resulting page to the NSN the split logged; the
//!   left child of a split gets the LSN of the record that inserts the downlinks for its
//!   new right siblings as NSN, and loses F_FOLLOW_RIGHT (`gistRedoClearFollowRight`).
//!   That change happens after `XLogInsert` on the primary, so a full page image of the
//!   child does not contain it: the redo applies it on top of a restored image too
//!   ([`redo_after_image`]).
//! - A deleted page (`GistPageSetDeleted`) keeps no line pointers: F_DELETED, and the
//!   deleteXid (a FullTransactionId) right after the page header, pd_lower = 32.
//! - F_TUPLES_DELETED ("old-style VACUUM FULL flag (deprecated)") is not set: PostgreSQL
//!   15.20's `gist.h` no longer has `GistMarkTuplesDeleted`, and its VACUUM leaves the flag
//!   clear on the pages it empties; 17.10 and 18.4 still set it. `mask::gist_mask` hides
//!   the flag, as the WAL does not say which behaviour wrote a page.
//!
//! PAGE_REUSE and ASSIGN_LSN change no page: they reference no block, so a block of theirs
//! that arrives here is malformed.

use super::page::{Page, PageLayout, SIZE_OF_PAGE_HEADER, get_u16, put_u16, put_u32};
use super::{LsnRule, RedoErrorKind, malformed, require_init, shape, unexpected_block};
use crate::wal::block::BlockRef;
use crate::wal::page::{BLCKSZ, Lsn};
use crate::wal::record::DecodedRecord;
use crate::wal::rmgr::gist::{
    GistRecord, PageUpdateData, parse, parse_page_update, parse_split_page,
};

/// `sizeof(GISTPageOpaqueData)`.
pub(crate) const GIST_SPECIAL_SIZE: usize = 16;
/// `GIST_PAGE_ID`.
pub(crate) const GIST_PAGE_ID: u16 = 0xFF81;
/// `GISTPageOpaqueData.flags` bits (`access/gist.h`).
pub(crate) const F_LEAF: u16 = 1 << 0;
pub(crate) const F_DELETED: u16 = 1 << 1;
/// Not set by this redo: see `mask::gist_mask`.
pub(crate) const F_TUPLES_DELETED: u16 = 1 << 2;
pub(crate) const F_FOLLOW_RIGHT: u16 = 1 << 3;
pub(crate) const F_HAS_GARBAGE: u16 = 1 << 4;
/// `GIST_ROOT_BLKNO`.
const GIST_ROOT_BLKNO: u32 = 0;
/// `InvalidBlockNumber`.
const INVALID_BLOCK: u32 = u32::MAX;
/// Where the special space starts on every GiST page.
const GIST_SPECIAL_START: usize = BLCKSZ - GIST_SPECIAL_SIZE;
/// `sizeof(GISTDeletedPageContents)`: the deleteXid.
const GIST_DELETED_CONTENTS_SIZE: usize = 8;

// GISTPageOpaqueData fields, relative to the start of the special space.
pub(crate) const OPAQUE_NSN: usize = 0;
const OPAQUE_RIGHTLINK: usize = 8;
pub(crate) const OPAQUE_FLAGS: usize = 12;
const OPAQUE_PAGE_ID: usize = 14;

/// The flags of a GiST page (`GistPageGetOpaque(page)->flags`).
pub(crate) fn page_flags(page: &Page) -> u16 {
    get_u16(page, GIST_SPECIAL_START + OPAQUE_FLAGS)
}

fn set_page_flags(page: &mut Page, flags: u16) {
    put_u16(page, GIST_SPECIAL_START + OPAQUE_FLAGS, flags);
}

fn set_rightlink(page: &mut Page, blk: u32) {
    put_u32(page, GIST_SPECIAL_START + OPAQUE_RIGHTLINK, blk);
}

/// `GistPageSetNSN`: stored like pd_lsn, the high half first.
fn set_nsn(page: &mut Page, nsn: Lsn) {
    let at = GIST_SPECIAL_START + OPAQUE_NSN;
    put_u32(page, at, (nsn.0 >> 32) as u32);
    put_u32(page, at + 4, nsn.0 as u32);
}

/// `gistinitpage` (what `GISTInitBuffer` does to the page).
fn gist_init_page(page: &mut Page, flags: u16) {
    page.init(GIST_SPECIAL_SIZE);
    set_rightlink(page, INVALID_BLOCK);
    set_page_flags(page, flags);
    put_u16(page, GIST_SPECIAL_START + OPAQUE_PAGE_ID, GIST_PAGE_ID);
}

/// A GiST page that redo changes in place must have GiST's special space (PostgreSQL
/// reads `GistPageGetOpaque` at pd_special unchecked; the engine refuses instead of
/// writing into a page of another shape).
fn require_gist_page(page: &Page) -> Result<u16, RedoErrorKind> {
    if page.special() as usize != GIST_SPECIAL_START {
        return Err(shape(format!(
            "not a GiST page: special space at {} (expected {GIST_SPECIAL_START})",
            page.special()
        )));
    }
    Ok(page_flags(page))
}

fn parsed(rec: &DecodedRecord) -> Result<GistRecord, RedoErrorKind> {
    parse(rec).map_err(|e| malformed(e.to_string()))
}

/// `gist_redo`: one block reference of a GiST record, by the function of `gistxlog.c` that
/// replays its record type.
pub(super) fn redo_block(
    rec: &DecodedRecord,
    block: &BlockRef,
    page: &mut Page,
) -> Result<LsnRule, RedoErrorKind> {
    match parsed(rec)? {
        GistRecord::PageUpdate {
            ntodelete,
            ntoinsert,
        } => match block.id {
            0 => {
                require_init(block, false)?;
                let data = parse_page_update(rec, rec.block_data(block), ntodelete, ntoinsert)
                    .map_err(|e| malformed(e.to_string()))?;
                page_update(page, &data)?;
                Ok(LsnRule::Stamp)
            }
            1 => clear_follow_right(rec, block, page),
            id => unexpected_block(id),
        },
        GistRecord::Delete { offsets, .. } => match block.id {
            0 => {
                require_init(block, false)?;
                delete(page, &offsets)?;
                Ok(LsnRule::Stamp)
            }
            id => unexpected_block(id),
        },
        GistRecord::PageSplit {
            orig_rightlink,
            orig_nsn,
            orig_leaf,
            npage,
            mark_follow_right,
        } => match block.id {
            0 => clear_follow_right(rec, block, page),
            id if u16::from(id) <= npage => {
                require_init(block, true)?;
                let tuples = parse_split_page(rec, rec.block_data(block))
                    .map_err(|e| malformed(e.to_string()))?;
                let split = SplitPage {
                    index: id - 1,
                    blkno: block.block,
                    is_root_split: is_root_split(rec)?,
                    next_blkno: next_split_block(rec, id, npage)?,
                    orig_rightlink,
                    orig_nsn,
                    orig_leaf,
                    npage,
                    mark_follow_right,
                };
                split_page(page, &split, &tuples)?;
                Ok(LsnRule::Stamp)
            }
            id => unexpected_block(id),
        },
        GistRecord::PageDelete {
            delete_xid,
            downlink_offset,
        } => {
            require_init(block, false)?;
            match block.id {
                0 => set_deleted(page, delete_xid)?,
                1 => {
                    require_gist_page(page)?;
                    page.index_tuple_delete(downlink_offset)?;
                }
                id => return unexpected_block(id),
            }
            Ok(LsnRule::Stamp)
        }
        // gistRedoPageReuse only resolves hot-standby conflicts: "PAGE_REUSE records exist
        // to provide a conflict point when we reuse pages in the index via the FSM.
        // That's all they do though." The record references no page.
        GistRecord::PageReuse { .. } => unexpected_block(block.id),
        // "nop. See gistGetFakeLSN()": no page either.
        GistRecord::AssignLsn => unexpected_block(block.id),
    }
}

/// `gistRedoClearFollowRight` for a block restored from a full page image: the NSN and the
/// cleared F_FOLLOW_RIGHT are not in the image ("we still update the page even if it was
/// restored from a full page image, because the updated NSN is not included in the
/// image"). The engine has already stamped the page LSN. Other restored blocks need nothing.
pub(super) fn redo_after_image(
    rec: &DecodedRecord,
    block: &BlockRef,
    page: &mut Page,
) -> Result<(), RedoErrorKind> {
    let left_child = match parsed(rec)? {
        GistRecord::PageUpdate { .. } => block.id == 1,
        GistRecord::PageSplit { .. } => block.id == 0,
        _ => false,
    };
    if left_child {
        mark_split_finished(page, rec.end_lsn)?;
    }
    Ok(())
}

/// `gistRedoClearFollowRight` for a block without image.
fn clear_follow_right(
    rec: &DecodedRecord,
    block: &BlockRef,
    page: &mut Page,
) -> Result<LsnRule, RedoErrorKind> {
    require_init(block, false)?;
    mark_split_finished(page, rec.end_lsn)?;
    Ok(LsnRule::Stamp)
}

/// The left child of a finished split: NSN = the record's end LSN, F_FOLLOW_RIGHT cleared.
fn mark_split_finished(page: &mut Page, lsn: Lsn) -> Result<(), RedoErrorKind> {
    let flags = require_gist_page(page)?;
    set_nsn(page, lsn);
    set_page_flags(page, flags & !F_FOLLOW_RIGHT);
    Ok(())
}

/// `gistRedoPageUpdateRecord` on block 0.
fn page_update(page: &mut Page, data: &PageUpdateData<'_>) -> Result<(), RedoErrorKind> {
    require_gist_page(page)?;
    match data {
        // "When replacing one tuple with one other tuple, we must use
        // PageIndexTupleOverwrite for consistency with gistplacetopage."
        PageUpdateData::Overwrite { offset, tuple } => page
            .index_tuple_overwrite(*offset, tuple)
            .map_err(|e| add_failed(tuple.len(), e)),
        PageUpdateData::DeleteAndAdd { todelete, tuples } => {
            if !todelete.is_empty() {
                page.index_multi_delete(todelete)?;
            }
            // New tuples go after the last item, from FirstOffsetNumber on an empty page.
            let first = if page.is_empty_page() {
                1
            } else {
                page.max_offset() + 1
            };
            for (tuple, off) in tuples.iter().zip(first..) {
                // PageAddItem(page, itup, sz, off, overwrite = false, is_heap = false).
                page.add_item(tuple, off, 0)
                    .map_err(|e| add_failed(tuple.len(), e))?;
            }
            Ok(())
        }
    }
}

/// `elog(ERROR, "failed to add item to GiST index page, size %d bytes")`, with why.
fn add_failed(size: usize, e: super::page::PageShapeError) -> RedoErrorKind {
    shape(format!(
        "failed to add item to GiST index page, size {size} bytes: {e}"
    ))
}

/// `gistRedoDeleteRecord`: the LP_DEAD tuples `gistprunepage` removed go, and the garbage
/// hint is cleared.
fn delete(page: &mut Page, offsets: &[u16]) -> Result<(), RedoErrorKind> {
    let flags = require_gist_page(page)?;
    if !offsets.is_empty() {
        page.index_multi_delete(offsets)?;
    }
    set_page_flags(page, flags & !F_HAS_GARBAGE);
    Ok(())
}

/// What `gistRedoPageSplitRecord` knows about one page of a split.
#[derive(Debug, Clone, Copy)]
struct SplitPage {
    /// Position in the split (block id - 1); 0 is the original page.
    index: u8,
    blkno: u32,
    /// The first page of the split is the root (`GIST_ROOT_BLKNO`): its tuples are the
    /// downlinks to the other pages, which are new.
    is_root_split: bool,
    /// The block of the next page of the split, for all but the last.
    next_blkno: Option<u32>,
    orig_rightlink: u32,
    orig_nsn: Lsn,
    orig_leaf: bool,
    npage: u16,
    mark_follow_right: bool,
}

/// A split whose first page is block 0 is a root split.
fn is_root_split(rec: &DecodedRecord) -> Result<bool, RedoErrorKind> {
    rec.block(1)
        .map(|b| b.block == GIST_ROOT_BLKNO)
        .ok_or_else(|| malformed("GiST page split without block 1"))
}

/// The block number of the page after block `id` in a split of `npage` pages
/// (`XLogRecGetBlockTag(record, i + 2, ...)`).
fn next_split_block(rec: &DecodedRecord, id: u8, npage: u16) -> Result<Option<u32>, RedoErrorKind> {
    if u16::from(id) >= npage {
        return Ok(None);
    }
    rec.block(id + 1).map(|b| Some(b.block)).ok_or_else(|| {
        malformed(format!(
            "GiST page split of {npage} pages without block {}",
            id + 1
        ))
    })
}

/// One page of `gistRedoPageSplitRecord`: re-initialised (a leaf if the split page was
/// one, except the root, which becomes internal), filled with its tuples from
/// FirstOffsetNumber (`gistfillbuffer`), then linked: the root has no right link; every
/// other page points to the next page of the split, the last one to the original page's
/// right link. All get the split's NSN; F_FOLLOW_RIGHT is set on all but the last when
/// the record says so and it is not a root split.
fn split_page(page: &mut Page, split: &SplitPage, tuples: &[&[u8]]) -> Result<(), RedoErrorKind> {
    let is_root = split.blkno == GIST_ROOT_BLKNO;
    if is_root && split.index != 0 {
        return Err(malformed(format!(
            "GiST page split lists the root as page {} of {}",
            split.index + 1,
            split.npage
        )));
    }
    let flags = if split.orig_leaf && !is_root {
        F_LEAF
    } else {
        0
    };
    gist_init_page(page, flags);
    for (i, tuple) in tuples.iter().enumerate() {
        page.add_item(tuple, i as u16 + 1, 0).map_err(|e| {
            shape(format!(
                "failed to add item to GiST index page, item {i} out of {}, size {} bytes: {e}",
                tuples.len(),
                tuple.len()
            ))
        })?;
    }
    set_nsn(page, split.orig_nsn);
    let follow_right = if is_root {
        set_rightlink(page, INVALID_BLOCK);
        false
    } else {
        set_rightlink(page, split.next_blkno.unwrap_or(split.orig_rightlink));
        split.next_blkno.is_some() && !split.is_root_split && split.mark_follow_right
    };
    let flags = page_flags(page);
    set_page_flags(
        page,
        if follow_right {
            flags | F_FOLLOW_RIGHT
        } else {
            flags & !F_FOLLOW_RIGHT
        },
    );
    Ok(())
}

/// `GistPageSetDeleted` on the emptied leaf of PAGE_DELETE: F_DELETED, the deleteXid
/// right after the header, pd_lower past it. PostgreSQL asserts the page is empty.
fn set_deleted(page: &mut Page, delete_xid: u64) -> Result<(), RedoErrorKind> {
    let flags = require_gist_page(page)?;
    if !page.is_empty_page() {
        return Err(shape(format!(
            "GiST page to delete still has {} items",
            page.max_offset()
        )));
    }
    set_page_flags(page, flags | F_DELETED);
    let at = SIZE_OF_PAGE_HEADER;
    page[at..at + GIST_DELETED_CONTENTS_SIZE].copy_from_slice(&delete_xid.to_le_bytes());
    page.set_lower((at + GIST_DELETED_CONTENTS_SIZE) as u16);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::redo::page::get_u32;
    use crate::redo::{BlockOutcome, RedoContext, apply_block};
    use crate::wal::rmgr::RM_GIST_ID;
    use crate::wal::rmgr::gist::*;

    /// An index tuple of `len` bytes (a multiple of 8, at least 16) with `fill` as key.
    fn itup(len: usize, fill: u8) -> Vec<u8> {
        let mut t = vec![fill; len];
        t[..6].fill(0);
        put_u16(&mut t, 6, len as u16);
        t
    }

    fn leaf(tuples: &[Vec<u8>]) -> Box<Page> {
        let mut p = Box::new([0u8; BLCKSZ]);
        gist_init_page(&mut p, F_LEAF);
        for (i, t) in tuples.iter().enumerate() {
            p.add_item(t, i as u16 + 1, 0).unwrap();
        }
        p
    }

    fn rightlink(page: &Page) -> u32 {
        get_u32(page, GIST_SPECIAL_START + OPAQUE_RIGHTLINK)
    }

    /// `GistPageGetNSN`.
    fn nsn(page: &Page) -> Lsn {
        let at = GIST_SPECIAL_START + OPAQUE_NSN;
        Lsn((get_u32(page, at) as u64) << 32 | get_u32(page, at + 4) as u64)
    }

    fn keys(page: &Page) -> Vec<u8> {
        (1..=page.max_offset())
            .map(|o| page.item(o).unwrap()[8])
            .collect()
    }

    /// One block reference of [`record`]: id, block number, flags (WILL_INIT), data, and
    /// an uncompressed applicable image without hole.
    struct Blk<'a> {
        id: u8,
        blkno: u32,
        will_init: bool,
        data: &'a [u8],
        image: Option<&'a Page>,
    }

    fn blk(id: u8, blkno: u32, data: &[u8]) -> Blk<'_> {
        Blk {
            id,
            blkno,
            will_init: false,
            data,
            image: None,
        }
    }

    /// A GiST record of type `info` at LSN 0x2000000 on rel 1663/5/16384.
    fn record(info: u8, blocks: &[Blk<'_>], main: &[u8]) -> DecodedRecord {
        let mut body = Vec::new();
        let mut payload = Vec::new();
        for (n, b) in blocks.iter().enumerate() {
            let mut flags = 0u8;
            if !b.data.is_empty() {
                flags |= 0x20;
            }
            if b.will_init {
                flags |= 0x40;
            }
            if b.image.is_some() {
                flags |= 0x10;
            }
            if n > 0 {
                flags |= 0x80;
            }
            body.push(b.id);
            body.push(flags);
            body.extend_from_slice(&(b.data.len() as u16).to_le_bytes());
            if let Some(img) = b.image {
                // XLogRecordBlockImageHeader: length, hole_offset, BKPIMAGE_APPLY.
                body.extend_from_slice(&(BLCKSZ as u16).to_le_bytes());
                body.extend_from_slice(&0u16.to_le_bytes());
                body.push(0x02);
                payload.extend_from_slice(&img[..]);
            }
            if n == 0 {
                for v in [1663u32, 5, 16384] {
                    body.extend_from_slice(&v.to_le_bytes());
                }
            }
            body.extend_from_slice(&b.blkno.to_le_bytes());
            payload.extend_from_slice(b.data);
        }
        body.extend_from_slice(&[255, main.len() as u8]);
        body.extend_from_slice(&payload);
        body.extend_from_slice(main);
        let raw =
            crate::wal::record::tests::build_record(RM_GIST_ID, info, 0, Lsn(0x1000000), &body);
        DecodedRecord::from_raw(Lsn(0x2000000), raw).expect("record decodes")
    }

    fn apply(page: &mut Page, rec: &DecodedRecord, id: u8) -> Result<BlockOutcome, RedoErrorKind> {
        let block = rec.block(id).expect("block in record");
        apply_block(page, rec, block, &RedoContext::default()).map_err(|e| e.kind)
    }

    fn update_main(ntodelete: u16, ntoinsert: u16) -> Vec<u8> {
        [ntodelete.to_le_bytes(), ntoinsert.to_le_bytes()].concat()
    }

    #[test]
    fn page_update_overwrites_one_tuple_in_place() {
        let mut p = leaf(&[itup(16, 1), itup(16, 2), itup(16, 3)]);
        let mut data = 2u16.to_le_bytes().to_vec();
        data.extend(itup(24, 9));
        let rec = record(
            XLOG_GIST_PAGE_UPDATE,
            &[blk(0, 5, &data)],
            &update_main(1, 1),
        );
        assert_eq!(apply(&mut p, &rec, 0).unwrap(), BlockOutcome::Applied);
        assert_eq!(keys(&p), [1, 9, 3]);
        assert_eq!(p.item(2).unwrap().len(), 24);
        assert_eq!(p.lsn(), rec.end_lsn);
        // Replayed again: the page LSN says it is done.
        let before = p.clone();
        assert_eq!(
            apply(&mut p, &rec, 0).unwrap(),
            BlockOutcome::AlreadyApplied
        );
        assert_eq!(p, before);
    }

    #[test]
    fn page_update_deletes_then_appends() {
        let mut p = leaf(&[itup(16, 1), itup(16, 2), itup(16, 3), itup(16, 4)]);
        let mut data = Vec::new();
        for o in [1u16, 3, 4] {
            data.extend(o.to_le_bytes());
        }
        data.extend(itup(16, 7));
        data.extend(itup(32, 8));
        let rec = record(
            XLOG_GIST_PAGE_UPDATE,
            &[blk(0, 5, &data)],
            &update_main(3, 2),
        );
        apply(&mut p, &rec, 0).unwrap();
        assert_eq!(keys(&p), [2, 7, 8]);
        // Flags untouched: no F_TUPLES_DELETED in PostgreSQL 15.20.
        assert_eq!(page_flags(&p), F_LEAF);
        // Onto an emptied page, tuples start at FirstOffsetNumber.
        let mut p = leaf(&[itup(16, 1)]);
        let mut data = 1u16.to_le_bytes().to_vec();
        data.extend(itup(16, 5));
        data.extend(itup(16, 6));
        let rec = record(
            XLOG_GIST_PAGE_UPDATE,
            &[blk(0, 5, &data)],
            &update_main(1, 2),
        );
        apply(&mut p, &rec, 0).unwrap();
        assert_eq!(keys(&p), [5, 6]);
    }

    #[test]
    fn page_update_refuses_a_count_mismatch_and_a_full_page() {
        let mut p = leaf(&[itup(16, 1)]);
        let before = p.clone();
        let data = itup(16, 7);
        let rec = record(
            XLOG_GIST_PAGE_UPDATE,
            &[blk(0, 5, &data)],
            &update_main(0, 2),
        );
        assert!(matches!(
            apply(&mut p, &rec, 0),
            Err(RedoErrorKind::Malformed(_))
        ));
        assert_eq!(p, before);
        // A tuple that does not fit: PostgreSQL's wording.
        let mut full = leaf(&[]);
        let mut i = 1;
        while full.add_item(&itup(1000, 1), i, 0).is_ok() {
            i += 1;
        }
        let data = itup(1000, 2);
        let rec = record(
            XLOG_GIST_PAGE_UPDATE,
            &[blk(0, 5, &data)],
            &update_main(0, 1),
        );
        match apply(&mut full, &rec, 0) {
            Err(RedoErrorKind::Page(e)) => assert!(
                e.to_string()
                    .contains("failed to add item to GiST index page, size 1000 bytes"),
                "{e}"
            ),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn finishing_a_split_clears_follow_right_and_sets_the_nsn() {
        let mut child = leaf(&[itup(16, 1)]);
        set_page_flags(&mut child, F_LEAF | F_FOLLOW_RIGHT);
        set_nsn(&mut child, Lsn(0x10));
        let mut parent = leaf(&[itup(16, 1)]);
        set_page_flags(&mut parent, 0);
        let mut data = 1u16.to_le_bytes().to_vec();
        data.extend(itup(16, 2));
        data.extend(itup(16, 3));
        let rec = record(
            XLOG_GIST_PAGE_UPDATE,
            &[blk(0, 1, &data), blk(1, 7, &[])],
            &update_main(1, 2),
        );
        apply(&mut parent, &rec, 0).unwrap();
        assert_eq!(keys(&parent), [2, 3]);
        let mut c = child.clone();
        apply(&mut c, &rec, 1).unwrap();
        assert_eq!(page_flags(&c), F_LEAF);
        assert_eq!(nsn(&c), rec.end_lsn);
        assert_eq!(c.lsn(), rec.end_lsn);
        // With a full page image of the child (taken before the flag was cleared), the
        // change is applied on top of the image.
        let rec = record(
            XLOG_GIST_PAGE_UPDATE,
            &[
                blk(0, 1, &data),
                Blk {
                    image: Some(&child),
                    ..blk(1, 7, &[])
                },
            ],
            &update_main(1, 2),
        );
        let mut c = Box::new([0u8; BLCKSZ]);
        assert_eq!(apply(&mut c, &rec, 1).unwrap(), BlockOutcome::Restored);
        assert_eq!(page_flags(&c), F_LEAF);
        assert_eq!(nsn(&c), rec.end_lsn);
        assert_eq!(c.lsn(), rec.end_lsn);
        assert_eq!(keys(&c), [1]);
    }

    fn split_main(rightlink: u32, nsn: u64, leaf: bool, npage: u16, follow: bool) -> Vec<u8> {
        let mut m = vec![0u8; 24];
        put_u32(&mut m, 0, rightlink);
        m[8..16].copy_from_slice(&nsn.to_le_bytes());
        m[16] = leaf as u8;
        put_u16(&mut m, 18, npage);
        m[20] = follow as u8;
        m
    }

    fn split_data(tuples: &[Vec<u8>]) -> Vec<u8> {
        let mut d = (tuples.len() as i32).to_le_bytes().to_vec();
        for t in tuples {
            d.extend(t);
        }
        d
    }

    #[test]
    fn split_of_three_pages_links_them_and_marks_follow_right() {
        let d1 = split_data(&[itup(16, 1), itup(16, 2)]);
        let d2 = split_data(&[itup(24, 3)]);
        let d3 = split_data(&[itup(16, 4), itup(16, 5), itup(16, 6)]);
        let init = |id, blkno, data| Blk {
            will_init: true,
            ..blk(id, blkno, data)
        };
        let rec = record(
            XLOG_GIST_PAGE_SPLIT,
            &[init(1, 4, &d1), init(2, 9, &d2), init(3, 12, &d3)],
            &split_main(20, 0x0000_0001_0000_0040, true, 3, true),
        );
        let want = [
            (1u8, 9u32, F_LEAF | F_FOLLOW_RIGHT, vec![1u8, 2]),
            (2, 12, F_LEAF | F_FOLLOW_RIGHT, vec![3]),
            (3, 20, F_LEAF, vec![4, 5, 6]),
        ];
        for (id, right, flags, k) in want {
            // Whatever the page held before, WILL_INIT starts from zeros.
            let mut p = leaf(&[itup(16, 99)]);
            apply(&mut p, &rec, id).unwrap();
            assert_eq!(keys(&p), k, "page {id}");
            assert_eq!(rightlink(&p), right, "page {id}");
            assert_eq!(page_flags(&p), flags, "page {id}");
            assert_eq!(nsn(&p), Lsn(0x0000_0001_0000_0040), "page {id}");
            assert_eq!(get_u16(&p[..], BLCKSZ - 2), GIST_PAGE_ID);
            assert_eq!(p.lsn(), rec.end_lsn);
        }
        // Block 4 is not part of a three-page split.
        let rec4 = record(
            XLOG_GIST_PAGE_SPLIT,
            &[init(1, 4, &d1), init(2, 9, &d2), init(4, 12, &d3)],
            &split_main(20, 1, true, 3, true),
        );
        let mut p = leaf(&[]);
        assert!(matches!(
            apply(&mut p, &rec4, 4),
            Err(RedoErrorKind::Malformed(_))
        ));
        assert!(matches!(
            apply(&mut p, &rec4, 2),
            Err(RedoErrorKind::Malformed(_))
        ));
    }

    #[test]
    fn root_split_keeps_the_root_internal_and_unlinked() {
        let d1 = split_data(&[itup(16, 1), itup(16, 2)]);
        let d2 = split_data(&[itup(16, 3)]);
        let d3 = split_data(&[itup(16, 4)]);
        let init = |id, blkno, data| Blk {
            will_init: true,
            ..blk(id, blkno, data)
        };
        let rec = record(
            XLOG_GIST_PAGE_SPLIT,
            &[init(1, 0, &d1), init(2, 5, &d2), init(3, 6, &d3)],
            &split_main(INVALID_BLOCK, 0, true, 3, true),
        );
        let mut root = leaf(&[]);
        apply(&mut root, &rec, 1).unwrap();
        assert_eq!(page_flags(&root), 0);
        assert_eq!(rightlink(&root), INVALID_BLOCK);
        // The new pages are leaves; no F_FOLLOW_RIGHT in a root split.
        let mut p = leaf(&[]);
        apply(&mut p, &rec, 2).unwrap();
        assert_eq!((page_flags(&p), rightlink(&p)), (F_LEAF, 6));
        apply(&mut p, &rec, 3).unwrap();
        assert_eq!((page_flags(&p), rightlink(&p)), (F_LEAF, INVALID_BLOCK));
        // A split page without WILL_INIT, and leftover bytes, are malformed.
        let mut p = leaf(&[]);
        let rec = record(
            XLOG_GIST_PAGE_SPLIT,
            &[
                blk(1, 3, &d1),
                init(2, 5, &[d2.clone(), vec![0, 0]].concat()),
            ],
            &split_main(INVALID_BLOCK, 0, true, 2, true),
        );
        assert!(matches!(
            apply(&mut p, &rec, 1),
            Err(RedoErrorKind::Malformed(_))
        ));
        assert!(matches!(
            apply(&mut p, &rec, 2),
            Err(RedoErrorKind::Malformed(_))
        ));
    }

    #[test]
    fn delete_removes_dead_tuples_and_the_garbage_hint() {
        let mut p = leaf(&[itup(16, 1), itup(16, 2), itup(16, 3), itup(16, 4)]);
        set_page_flags(&mut p, F_LEAF | F_HAS_GARBAGE);
        let mut main = 700u32.to_le_bytes().to_vec();
        main.extend(3u16.to_le_bytes());
        for o in [1u16, 2, 4] {
            main.extend(o.to_le_bytes());
        }
        let rec = record(XLOG_GIST_DELETE, &[blk(0, 8, &[])], &main);
        apply(&mut p, &rec, 0).unwrap();
        assert_eq!(keys(&p), [3]);
        assert_eq!(page_flags(&p), F_LEAF);
        // Offsets past the page are refused.
        p.set_lsn(Lsn(0x100));
        let mut main = 700u32.to_le_bytes().to_vec();
        main.extend(1u16.to_le_bytes());
        main.extend(5u16.to_le_bytes());
        let rec = record(XLOG_GIST_DELETE, &[blk(0, 8, &[])], &main);
        assert!(matches!(
            apply(&mut p, &rec, 0),
            Err(RedoErrorKind::Page(_))
        ));
    }

    #[test]
    fn page_delete_marks_the_leaf_and_drops_the_downlink() {
        let mut main = (0x0000_0002_0000_0300u64).to_le_bytes().to_vec();
        main.extend(2u16.to_le_bytes());
        let rec = record(
            XLOG_GIST_PAGE_DELETE,
            &[blk(0, 6, &[]), blk(1, 0, &[])],
            &main,
        );
        let mut l = leaf(&[]);
        apply(&mut l, &rec, 0).unwrap();
        assert_eq!(page_flags(&l), F_LEAF | F_DELETED);
        assert_eq!(l.lower(), 32);
        assert_eq!(&l[24..32], &0x0000_0002_0000_0300u64.to_le_bytes());
        let mut parent = leaf(&[itup(16, 1), itup(16, 2), itup(16, 3)]);
        set_page_flags(&mut parent, 0);
        apply(&mut parent, &rec, 1).unwrap();
        assert_eq!(keys(&parent), [1, 3]);
        // A leaf that still has tuples is not what PostgreSQL deletes.
        let mut l = leaf(&[itup(16, 1)]);
        assert!(matches!(
            apply(&mut l, &rec, 0),
            Err(RedoErrorKind::Page(_))
        ));
    }

    #[test]
    fn reuse_and_assign_lsn_change_no_page() {
        let mut main = Vec::new();
        // RelFileNode and block, then the FullTransactionId at offset 16 (no padding).
        for v in [1663u32, 5, 16384, 6] {
            main.extend(v.to_le_bytes());
        }
        main.extend(0x0000_0001_0000_0200u64.to_le_bytes());
        let rec = record(XLOG_GIST_PAGE_REUSE, &[], &main);
        assert_eq!(
            parse(&rec).unwrap(),
            GistRecord::PageReuse {
                node: crate::wal::block::RelFileLocator {
                    spc_oid: 1663,
                    db_oid: 5,
                    rel_number: 16384
                },
                block: 6,
                latest_removed_full_xid: 0x0000_0001_0000_0200,
                is_catalog_rel: false,
            }
        );
        let rec = record(XLOG_GIST_ASSIGN_LSN, &[blk(0, 1, &[])], &[0; 4]);
        let mut p = leaf(&[]);
        assert!(matches!(
            apply(&mut p, &rec, 0),
            Err(RedoErrorKind::Malformed(_))
        ));
    }

    #[test]
    fn a_page_of_another_shape_is_refused() {
        let mut p = Box::new([0u8; BLCKSZ]);
        p.init(8);
        let data = itup(16, 1);
        let rec = record(
            XLOG_GIST_PAGE_UPDATE,
            &[blk(0, 5, &data)],
            &update_main(0, 1),
        );
        match apply(&mut p, &rec, 0) {
            Err(RedoErrorKind::Page(e)) => assert!(e.to_string().contains("not a GiST page")),
            other => panic!("{other:?}"),
        }
    }
}
