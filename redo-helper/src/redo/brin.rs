//! BRIN redo (`brin_redo` in `access/brin/brin_xlog.c`, PostgreSQL 15): all six record
//! types, one block reference at a time.
//!
//! Page layout facts (`access/brin_page.h`, `access/brin/brin_pageops.c`,
//! `access/brin/brin_revmap.c`):
//! - Every BRIN page has an 8-byte special space (`BrinSpecialSpace`, MAXALIGN(1) bytes of
//!   uint16): the page type in its last uint16, the flags (`BRIN_EVACUATE_PAGE`) in the one
//!   before. `brin_page_init` is `PageInit(page, BLCKSZ, 8)` plus the type.
//! - The metapage (block 0) keeps `BrinMetaPageData` {brinMagic, brinVersion,
//!   pagesPerRange, lastRevmapPage} at `PageGetContents` (offset 24), with pd_lower just
//!   past it (40).
//! - A revmap page is an array of `ItemPointerData` (6 bytes: block hi, block lo, offset)
//!   at offset 24, `REVMAP_PAGE_MAXITEMS` = (8192 - 24 - 8) / 6 = 1360 entries, stored
//!   between pd_lower (24) and pd_upper: "unused space" that must not be masked.
//! - Regular pages hold BRIN tuples as ordinary items; their offsets are what the revmap
//!   points to, so deletions leave unused line pointers (PageIndexTupleDeleteNoCompact).
//!
//! Every change stamps the page with the record's end LSN (`PageSetLSN(page, lsn)` in each
//! redo function). Pages that redo re-initialises (`XLogInitBufferForRedo`) must carry
//! `WILL_INIT` in the record, and pages carrying it must be re-initialised: PostgreSQL's
//! `XLogReadBufferForRedoExtended` PANICs otherwise, and so the engine calls either case
//! malformed.

use super::page::{Page, PageLayout, SIZE_OF_PAGE_HEADER, put_u16, put_u32};
use super::{LsnRule, RedoErrorKind, malformed, require_init, unexpected_block as unexpected};
use crate::wal::block::BlockRef;
use crate::wal::page::BLCKSZ;
use crate::wal::record::DecodedRecord;
use crate::wal::rmgr::brin::{BrinInsert, BrinRecord, parse};

/// `sizeof(BrinSpecialSpace)`.
pub(crate) const BRIN_SPECIAL_SIZE: usize = 8;
/// Page types (`BrinPageType`).
pub(crate) const BRIN_PAGETYPE_META: u16 = 0xF091;
pub(crate) const BRIN_PAGETYPE_REVMAP: u16 = 0xF092;
pub(crate) const BRIN_PAGETYPE_REGULAR: u16 = 0xF093;
/// `BRIN_META_MAGIC`.
pub(crate) const BRIN_META_MAGIC: u32 = 0xA810_9CFA;
/// `sizeof(BrinMetaPageData)`: four uint32.
const BRIN_META_DATA_SIZE: usize = 16;
/// `sizeof(ItemPointerData)`.
const TID_SIZE: usize = 6;
/// `REVMAP_PAGE_MAXITEMS`: the revmap content runs from MAXALIGN(SizeOfPageHeaderData) to
/// the special space.
pub(crate) const REVMAP_PAGE_MAXITEMS: u32 =
    ((BLCKSZ - SIZE_OF_PAGE_HEADER - BRIN_SPECIAL_SIZE) / TID_SIZE) as u32;
/// `InvalidBlockNumber`.
const INVALID_BLOCK: u32 = u32::MAX;

/// `BRIN_EVACUATE_PAGE` in `BrinPageFlags`.
pub(crate) const BRIN_EVACUATE_PAGE: u16 = 1 << 0;

/// `BrinPageType`: the last uint16 of the page (the special space always ends the page).
pub(crate) fn page_type(page: &Page) -> u16 {
    super::page::get_u16(page, BLCKSZ - 2)
}

/// Where `BrinPageFlags` is: the uint16 before the page type.
pub(crate) const fn page_flags_pos() -> usize {
    BLCKSZ - 4
}

/// `brin_page_init`.
fn brin_page_init(page: &mut Page, page_type: u16) {
    page.init(BRIN_SPECIAL_SIZE);
    put_u16(page, BLCKSZ - 2, page_type);
}

/// `brin_metapage_init`: the metapage of a new index. `lastRevmapPage` starts at 0 (the
/// metapage itself), so the first revmap extension creates block 1.
fn brin_metapage_init(page: &mut Page, pages_per_range: u32, version: u16) {
    brin_page_init(page, BRIN_PAGETYPE_META);
    put_u32(page, SIZE_OF_PAGE_HEADER, BRIN_META_MAGIC);
    put_u32(page, SIZE_OF_PAGE_HEADER + 4, version as u32);
    put_u32(page, SIZE_OF_PAGE_HEADER + 8, pages_per_range);
    put_u32(page, SIZE_OF_PAGE_HEADER + 12, 0);
    page.set_lower((SIZE_OF_PAGE_HEADER + BRIN_META_DATA_SIZE) as u16);
}

/// `brinSetHeapBlockItemptr`: the revmap slot of the range starting at `heap_blk` gets
/// `tid` (None: `ItemPointerSetInvalid`, block InvalidBlockNumber and offset 0).
fn set_heap_block_itemptr(
    page: &mut Page,
    pages_per_range: u32,
    heap_blk: u32,
    tid: Option<(u32, u16)>,
) -> Result<(), RedoErrorKind> {
    if pages_per_range == 0 {
        // HEAPBLK_TO_REVMAP_INDEX divides by it; PostgreSQL never logs 0.
        return Err(malformed("pagesPerRange is 0"));
    }
    let index = (heap_blk / pages_per_range) % REVMAP_PAGE_MAXITEMS;
    let pos = SIZE_OF_PAGE_HEADER + index as usize * TID_SIZE;
    let (blk, off) = tid.unwrap_or((INVALID_BLOCK, 0));
    put_u16(page, pos, (blk >> 16) as u16);
    put_u16(page, pos + 2, blk as u16);
    put_u16(page, pos + 4, off);
    Ok(())
}

/// `brin_redo`: one block reference of a BRIN record, by the function of `brin_xlog.c` that
/// replays its record type.
pub(super) fn redo_block(
    rec: &DecodedRecord,
    block: &BlockRef,
    page: &mut Page,
) -> Result<LsnRule, RedoErrorKind> {
    let parsed = parse(rec).map_err(|e| malformed(e.to_string()))?;
    match parsed {
        BrinRecord::CreateIndex {
            pages_per_range,
            version,
        } => match block.id {
            0 => {
                require_init(block, true)?;
                brin_metapage_init(page, pages_per_range, version);
                Ok(LsnRule::Stamp)
            }
            id => unexpected(id),
        },
        BrinRecord::Insert { insert, init_page } => {
            insert_update(rec, block, page, &insert, init_page)
        }
        BrinRecord::Update {
            old_offnum,
            insert,
            init_page,
        } => match block.id {
            // brin_xlog_update: the old tuple leaves its page, then as an insert.
            2 => {
                require_init(block, false)?;
                page.index_tuple_delete_no_compact(old_offnum)?;
                Ok(LsnRule::Stamp)
            }
            _ => insert_update(rec, block, page, &insert, init_page),
        },
        BrinRecord::SamepageUpdate { offnum } => match block.id {
            0 => samepage_update(rec, block, page, offnum),
            id => unexpected(id),
        },
        BrinRecord::RevmapExtend { target_blk } => revmap_extend(rec, block, page, target_blk),
        BrinRecord::Desummarize {
            pages_per_range,
            heap_blk,
            reg_offset,
        } => match block.id {
            // brin_xlog_desummarize_page: the revmap slot cleared, then the leftover tuple
            // removed from the regular page.
            0 => {
                require_init(block, false)?;
                set_heap_block_itemptr(page, pages_per_range, heap_blk, None)?;
                Ok(LsnRule::Stamp)
            }
            1 => {
                require_init(block, false)?;
                page.index_tuple_delete_no_compact(reg_offset)?;
                Ok(LsnRule::Stamp)
            }
            id => unexpected(id),
        },
    }
}

/// `brin_xlog_insert_update`: the tuple (block 0's data) goes onto the regular page at the
/// logged offset (block 0, re-initialised first with XLOG_BRIN_INIT_PAGE), and the revmap
/// slot of its range (block 1) points at (block 0's block number, logged offset).
fn insert_update(
    rec: &DecodedRecord,
    block: &BlockRef,
    page: &mut Page,
    ins: &BrinInsert,
    init_page: bool,
) -> Result<LsnRule, RedoErrorKind> {
    match block.id {
        0 => {
            require_init(block, init_page)?;
            if init_page {
                brin_page_init(page, BRIN_PAGETYPE_REGULAR);
            }
            let tuple = rec.block_data(block);
            if tuple.is_empty() {
                return Err(malformed("BRIN insert without a tuple in block 0's data"));
            }
            let max = page.max_offset();
            if ins.offnum == 0 || ins.offnum as u32 > max as u32 + 1 {
                // brin_xlog_insert_update: "invalid max offset number" (PANIC).
                return Err(malformed(format!(
                    "BRIN insert at offset {} on a page with {max} line pointers",
                    ins.offnum
                )));
            }
            // PageAddItem(page, tuple, len, offnum, overwrite = true, is_heap = false):
            // the slot must be free or one past the end.
            page.add_item(tuple, ins.offnum, super::page::PAI_OVERWRITE)?;
            Ok(LsnRule::Stamp)
        }
        1 => {
            require_init(block, false)?;
            let regpgno = rec
                .block(0)
                .map(|b| b.block)
                .ok_or_else(|| malformed("BRIN insert/update without block 0 (regular page)"))?;
            set_heap_block_itemptr(
                page,
                ins.pages_per_range,
                ins.heap_blk,
                Some((regpgno, ins.offnum)),
            )?;
            Ok(LsnRule::Stamp)
        }
        id => unexpected(id),
    }
}

/// `brin_xlog_samepage_update`: the tuple at `offnum` replaced in place
/// (PageIndexTupleOverwrite; a refusal is a PANIC upstream).
fn samepage_update(
    rec: &DecodedRecord,
    block: &BlockRef,
    page: &mut Page,
    offnum: u16,
) -> Result<LsnRule, RedoErrorKind> {
    require_init(block, false)?;
    let tuple = rec.block_data(block);
    if tuple.is_empty() {
        return Err(malformed("BRIN samepage update without a tuple"));
    }
    page.index_tuple_overwrite(offnum, tuple)?;
    Ok(LsnRule::Stamp)
}

/// `brin_xlog_revmap_extend`: the metapage's lastRevmapPage becomes the target and its
/// pd_lower is set past the metadata (block 0); the target is re-initialised as an empty
/// revmap page, all slots invalid (block 1, always WILL_INIT, never an image).
fn revmap_extend(
    rec: &DecodedRecord,
    block: &BlockRef,
    page: &mut Page,
    target_blk: u32,
) -> Result<LsnRule, RedoErrorKind> {
    // The main data repeats block 1's block number (PostgreSQL asserts they agree).
    match rec.block(1) {
        Some(b) if b.block == target_blk => {}
        Some(b) => {
            return Err(malformed(format!(
                "REVMAP_EXTEND targets block {target_blk} but block 1 is block {}",
                b.block
            )));
        }
        None => return Err(malformed("REVMAP_EXTEND without block 1 (new revmap page)")),
    }
    match block.id {
        0 => {
            require_init(block, false)?;
            put_u32(page, SIZE_OF_PAGE_HEADER + 12, target_blk);
            // Set even when pre-v11 metapages had a wrong pd_lower (upgraded indexes).
            page.set_lower((SIZE_OF_PAGE_HEADER + BRIN_META_DATA_SIZE) as u16);
            Ok(LsnRule::Stamp)
        }
        1 => {
            require_init(block, true)?;
            brin_page_init(page, BRIN_PAGETYPE_REVMAP);
            Ok(LsnRule::Stamp)
        }
        id => unexpected(id),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revmap_slots_hold_item_pointers() {
        // REVMAP_PAGE_MAXITEMS for 8 KB pages (pageinspect's brin_revmap_data shows 1360).
        assert_eq!(REVMAP_PAGE_MAXITEMS, 1360);
        let mut p = Box::new([0u8; BLCKSZ]);
        brin_page_init(&mut p, BRIN_PAGETYPE_REVMAP);
        assert_eq!((p.lower(), p.upper(), p.special()), (24, 8184, 8184));
        assert_eq!(page_type(&p), BRIN_PAGETYPE_REVMAP);
        // Range 1361 of 4 pages each is slot 1 of the second revmap page: bytes 30..36,
        // block as two uint16 halves (high first), then the offset.
        set_heap_block_itemptr(&mut p, 4, 4 * 1361 + 3, Some((0x0001_2345, 7))).unwrap();
        assert_eq!(&p[30..36], &[0x01, 0x00, 0x45, 0x23, 0x07, 0x00]);
        set_heap_block_itemptr(&mut p, 4, 4 * 1361, None).unwrap();
        assert_eq!(&p[30..36], &[0xFF, 0xFF, 0xFF, 0xFF, 0x00, 0x00]);
        assert!(set_heap_block_itemptr(&mut p, 0, 1, None).is_err());
    }

    #[test]
    fn metapage_layout() {
        let mut p = Box::new([0u8; BLCKSZ]);
        brin_metapage_init(&mut p, 16, 1);
        assert_eq!(page_type(&p), BRIN_PAGETYPE_META);
        assert_eq!(p.lower(), 40);
        assert_eq!(super::super::page::get_u32(&p[..], 24), BRIN_META_MAGIC);
        assert_eq!(super::super::page::get_u32(&p[..], 32), 16);
        assert_eq!(super::super::page::get_u32(&p[..], 36), 0);
    }
}
