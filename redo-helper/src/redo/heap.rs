//! Heap redo (`heap_redo` in `access/heap/heapam.c`, PostgreSQL 15): insert, delete, update,
//! hot_update, truncate, confirm, lock, inplace. Each function handles one block reference
//! of the record on a page the dispatcher has already prepared (zeroed for WILL_INIT, or
//! found older than the record).

use super::page::{
    PAI_IS_HEAP, PAI_OVERWRITE, Page, PageLayout, SIZEOF_HEAP_TUPLE_HEADER, get_u16,
};
use super::tuple::*;
use super::{LsnRule, RedoErrorKind, malformed};
use crate::wal::block::BlockRef;
use crate::wal::record::DecodedRecord;
use crate::wal::rmgr::heap::*;

/// `SizeOfHeapHeader`: `xl_heap_header` without padding (infomask2, infomask, hoff).
const SIZE_OF_HEAP_HEADER: usize = 5;

pub(super) fn redo_block(
    rec: &DecodedRecord,
    block: &BlockRef,
    page: &mut Page,
) -> Result<LsnRule, RedoErrorKind> {
    let parsed = parse_heap(rec).map_err(|e| malformed(e.to_string()))?;
    match parsed {
        HeapRecord::Insert(x) => insert(rec, block, page, &x),
        HeapRecord::Delete(x) => delete(rec, block, page, &x),
        HeapRecord::Update(x) => update(rec, block, page, &x),
        // Truncation is logged for logical decoding only; the files shrink through smgr
        // records and new relfilenodes.
        HeapRecord::Truncate(_) => Ok(LsnRule::Keep),
        HeapRecord::Confirm { offnum } => {
            // heap_xlog_confirm: the speculative token in t_ctid becomes the tuple's own TID.
            let mut htup = tuple_at(page, offnum)?;
            htup.set_ctid(block.block, offnum);
            Ok(LsnRule::Stamp)
        }
        HeapRecord::Lock(x) => lock(
            page,
            block.block,
            x.offnum,
            x.infobits_set,
            x.locking_xid,
            true,
        ),
        HeapRecord::Inplace(HeapInplace { offnum, .. }) => inplace(rec, block, page, offnum),
    }
}

/// The heap tuple header of the LP_NORMAL item at `offnum` (the "invalid lp" PANIC of
/// heap redo becomes an error).
pub(super) fn tuple_at(page: &mut Page, offnum: u16) -> Result<HeapTupleHeader<'_>, RedoErrorKind> {
    page.normal_item_id(offnum)?;
    let item = page.item_mut(offnum)?;
    HeapTupleHeader::new(item).ok_or_else(|| {
        RedoErrorKind::Page(super::page::PageShapeError::Other(format!(
            "item {offnum} is shorter than a heap tuple header"
        )))
    })
}

/// `fix_infomask_from_infobits`.
pub(super) fn fix_infomask_from_infobits(infobits: u8, infomask: &mut u16, infomask2: &mut u16) {
    *infomask &=
        !(HEAP_XMAX_IS_MULTI | HEAP_XMAX_LOCK_ONLY | HEAP_XMAX_KEYSHR_LOCK | HEAP_XMAX_EXCL_LOCK);
    *infomask2 &= !HEAP_KEYS_UPDATED;
    if infobits & XLHL_XMAX_IS_MULTI != 0 {
        *infomask |= HEAP_XMAX_IS_MULTI;
    }
    if infobits & XLHL_XMAX_LOCK_ONLY != 0 {
        *infomask |= HEAP_XMAX_LOCK_ONLY;
    }
    if infobits & XLHL_XMAX_EXCL_LOCK != 0 {
        *infomask |= HEAP_XMAX_EXCL_LOCK;
    }
    // HEAP_XMAX_SHR_LOCK is not considered here (it is EXCL | KEYSHR).
    if infobits & XLHL_XMAX_KEYSHR_LOCK != 0 {
        *infomask |= HEAP_XMAX_KEYSHR_LOCK;
    }
    if infobits & XLHL_KEYS_UPDATED != 0 {
        *infomask2 |= HEAP_KEYS_UPDATED;
    }
}

/// `PageSetPrunable`: remember the oldest xid that may make something prunable
/// (TransactionIdPrecedes: modulo-2^32 comparison for normal xids).
pub(super) fn page_set_prunable(page: &mut Page, xid: u32) {
    let cur = page.prune_xid();
    if cur == 0 || transaction_id_precedes(xid, cur) {
        page.set_prune_xid(xid);
    }
}

/// `TransactionIdPrecedes`.
pub(crate) fn transaction_id_precedes(a: u32, b: u32) -> bool {
    if a < 3 || b < 3 {
        return a < b;
    }
    (a.wrapping_sub(b) as i32) < 0
}

thread_local! {
    /// Where a tuple is assembled before PageAddItem copies it into the page: one buffer
    /// per thread, reused, so replaying inserts and updates does not allocate.
    static TUPLE_BUF: std::cell::RefCell<Vec<u8>> =
        std::cell::RefCell::new(Vec::with_capacity(crate::wal::page::BLCKSZ));
}

/// Builds a heap tuple from an `xl_heap_header` and the bitmap/data bytes that follow the
/// fixed header (given in pieces), as heap_xlog_insert does: header zeroed, infomask/hoff
/// from the record, xmin = the record's xid, cmin = FirstCommandId, t_ctid = (blk, off);
/// then hands it to `f`.
fn with_tuple<R>(
    xlhdr: &[u8],
    data: &[&[u8]],
    xid: u32,
    blk: u32,
    off: u16,
    f: impl FnOnce(&mut [u8]) -> Result<R, RedoErrorKind>,
) -> Result<R, RedoErrorKind> {
    if xlhdr.len() < SIZE_OF_HEAP_HEADER {
        return Err(malformed("heap tuple header truncated"));
    }
    TUPLE_BUF.with(|buf| {
        let mut t = buf.borrow_mut();
        fill_tuple(&mut t, xlhdr, data, xid, blk, off);
        f(&mut t)
    })
}

/// The assembly of `with_tuple` into `t` (`xlhdr` checked by the caller).
fn fill_tuple(t: &mut Vec<u8>, xlhdr: &[u8], data: &[&[u8]], xid: u32, blk: u32, off: u16) {
    t.clear();
    t.resize(SIZEOF_HEAP_TUPLE_HEADER, 0);
    for piece in data {
        t.extend_from_slice(piece);
    }
    let mut h = HeapTupleHeader { b: t };
    h.set_infomask2(get_u16(xlhdr, 0));
    h.set_infomask(get_u16(xlhdr, 2));
    h.b[T_HOFF] = xlhdr[4];
    h.set_xmin(xid);
    h.set_ctid(blk, off);
}

fn insert(
    rec: &DecodedRecord,
    block: &BlockRef,
    page: &mut Page,
    x: &HeapInsert,
) -> Result<LsnRule, RedoErrorKind> {
    if x.init_page {
        page.init(0);
    }
    if page.max_offset() + 1 < x.offnum {
        return Err(malformed(format!(
            "invalid max offset number: insert at {} on a page with {}",
            x.offnum,
            page.max_offset()
        )));
    }
    let data = rec.block_data(block);
    if data.len() <= SIZE_OF_HEAP_HEADER {
        return Err(malformed("insert without tuple data"));
    }
    with_tuple(
        &data[..SIZE_OF_HEAP_HEADER],
        &[&data[SIZE_OF_HEAP_HEADER..]],
        rec.xid(),
        block.block,
        x.offnum,
        |tup| Ok(page.add_item(tup, x.offnum, PAI_OVERWRITE | PAI_IS_HEAP)?),
    )?;
    if x.flags & XLH_INSERT_ALL_VISIBLE_CLEARED != 0 {
        page.set_flag(super::page::PD_ALL_VISIBLE, false);
    }
    // XLH_INSERT_ALL_FROZEN_SET implies that all tuples are visible.
    if x.flags & XLH_INSERT_ALL_FROZEN_SET != 0 {
        page.set_flag(super::page::PD_ALL_VISIBLE, true);
    }
    Ok(LsnRule::Stamp)
}

fn delete(
    rec: &DecodedRecord,
    block: &BlockRef,
    page: &mut Page,
    x: &HeapDelete,
) -> Result<LsnRule, RedoErrorKind> {
    {
        let mut h = tuple_at(page, x.offnum)?;
        let mut im = h.infomask() & !(HEAP_XMAX_BITS | HEAP_MOVED);
        let mut im2 = h.infomask2() & !HEAP_KEYS_UPDATED & !HEAP_HOT_UPDATED;
        fix_infomask_from_infobits(x.infobits_set, &mut im, &mut im2);
        h.set_infomask(im);
        h.set_infomask2(im2);
        if x.flags & XLH_DELETE_IS_SUPER == 0 {
            h.set_xmax(x.xmax);
        } else {
            h.set_xmin(0);
        }
        h.set_first_command_id();
        if x.flags & XLH_DELETE_IS_PARTITION_MOVE != 0 {
            h.set_ctid(
                MOVED_PARTITIONS_BLOCK_NUMBER,
                MOVED_PARTITIONS_OFFSET_NUMBER,
            );
        } else {
            h.set_ctid(block.block, x.offnum);
        }
    }
    page_set_prunable(page, rec.xid());
    if x.flags & XLH_DELETE_ALL_VISIBLE_CLEARED != 0 {
        page.set_flag(super::page::PD_ALL_VISIBLE, false);
    }
    Ok(LsnRule::Stamp)
}

/// heap_xlog_update, split by block: block 1 (when present) is the old page, block 0 the
/// new page; without block 1 both tuples are on block 0's page, old one first.
fn update(
    rec: &DecodedRecord,
    block: &BlockRef,
    page: &mut Page,
    x: &HeapUpdate,
) -> Result<LsnRule, RedoErrorKind> {
    let old_block = rec.block(1);
    let same_page = old_block.is_none();
    if block.id == 1 {
        let newblk = rec.block(0).map(|b| b.block).unwrap_or(block.block);
        update_old(rec, page, x, newblk)?;
        return Ok(LsnRule::Stamp);
    }
    if block.id != 0 {
        return Err(malformed(format!("unexpected block id {}", block.id)));
    }
    // The old tuple (for prefix/suffix compression) lives on this page when same_page.
    if same_page {
        update_old(rec, page, x, block.block)?;
    } else if x.init_page {
        page.init(0);
    }
    update_new(rec, block, page, x, same_page)?;
    Ok(LsnRule::Stamp)
}

fn update_old(
    rec: &DecodedRecord,
    page: &mut Page,
    x: &HeapUpdate,
    newblk: u32,
) -> Result<(), RedoErrorKind> {
    {
        let mut h = tuple_at(page, x.old_offnum)?;
        let mut im = h.infomask() & !(HEAP_XMAX_BITS | HEAP_MOVED);
        let mut im2 = h.infomask2() & !HEAP_KEYS_UPDATED;
        if x.hot {
            im2 |= HEAP_HOT_UPDATED;
        } else {
            im2 &= !HEAP_HOT_UPDATED;
        }
        fix_infomask_from_infobits(x.old_infobits_set, &mut im, &mut im2);
        h.set_infomask(im);
        h.set_infomask2(im2);
        h.set_xmax(x.old_xmax);
        h.set_first_command_id();
        // Forward link to the new version.
        h.set_ctid(newblk, x.new_offnum);
    }
    page_set_prunable(page, rec.xid());
    if x.flags & XLH_UPDATE_OLD_ALL_VISIBLE_CLEARED != 0 {
        page.set_flag(super::page::PD_ALL_VISIBLE, false);
    }
    Ok(())
}

fn update_new(
    rec: &DecodedRecord,
    block: &BlockRef,
    page: &mut Page,
    x: &HeapUpdate,
    old_on_page: bool,
) -> Result<(), RedoErrorKind> {
    if page.max_offset() + 1 < x.new_offnum {
        return Err(malformed(format!(
            "invalid max offset number: update puts the new tuple at {} on a page with {}",
            x.new_offnum,
            page.max_offset()
        )));
    }
    let data = rec.block_data(block);
    let mut pos = 0usize;
    let take_u16 = |pos: &mut usize| -> Result<usize, RedoErrorKind> {
        let v = data
            .get(*pos..*pos + 2)
            .ok_or_else(|| malformed("update data truncated"))?;
        *pos += 2;
        Ok(u16::from_le_bytes([v[0], v[1]]) as usize)
    };
    let prefixlen = if x.flags & XLH_UPDATE_PREFIX_FROM_OLD != 0 {
        take_u16(&mut pos)?
    } else {
        0
    };
    let suffixlen = if x.flags & XLH_UPDATE_SUFFIX_FROM_OLD != 0 {
        take_u16(&mut pos)?
    } else {
        0
    };
    let xlhdr = data
        .get(pos..pos + SIZE_OF_HEAP_HEADER)
        .ok_or_else(|| malformed("update tuple header truncated"))?;
    pos += SIZE_OF_HEAP_HEADER;
    let rest = &data[pos..];
    let hoff = xlhdr[4] as usize;
    TUPLE_BUF.with(|buf| {
        let mut t = buf.borrow_mut();
        {
            // The new tuple's data: [bitmap + padding + oid from the record] [prefix of the
            // old tuple's data] [rest from the record] [suffix of the old tuple].
            let mut pieces: [&[u8]; 4] = [&[]; 4];
            if prefixlen > 0 || suffixlen > 0 {
                if !old_on_page {
                    return Err(malformed(
                        "prefix/suffix compression but the old tuple is on another page",
                    ));
                }
                let old = page.item(x.old_offnum)?;
                let old_hoff = *old
                    .get(T_HOFF)
                    .ok_or_else(|| malformed("old tuple too short"))?
                    as usize;
                if prefixlen > 0 {
                    let bitmap_len = hoff
                        .checked_sub(SIZEOF_HEAP_TUPLE_HEADER)
                        .filter(|l| *l <= rest.len())
                        .ok_or_else(|| malformed(format!("bad t_hoff {hoff}")))?;
                    pieces[0] = &rest[..bitmap_len];
                    pieces[1] = old.get(old_hoff..old_hoff + prefixlen).ok_or_else(|| {
                        malformed(format!("prefix {prefixlen} longer than old tuple"))
                    })?;
                    pieces[2] = &rest[bitmap_len..];
                } else {
                    pieces[2] = rest;
                }
                if suffixlen > 0 {
                    let start = old.len().checked_sub(suffixlen).ok_or_else(|| {
                        malformed(format!("suffix {suffixlen} longer than old tuple"))
                    })?;
                    pieces[3] = &old[start..];
                }
            } else {
                pieces[2] = rest;
            }
            fill_tuple(&mut t, xlhdr, &pieces, rec.xid(), block.block, x.new_offnum);
        }
        HeapTupleHeader { b: &mut t }.set_xmax(x.new_xmax);
        page.add_item(&t, x.new_offnum, PAI_OVERWRITE | PAI_IS_HEAP)?;
        Ok(())
    })?;
    if x.flags & XLH_UPDATE_NEW_ALL_VISIBLE_CLEARED != 0 {
        page.set_flag(super::page::PD_ALL_VISIBLE, false);
    }
    Ok(())
}

/// heap_xlog_lock (`full_lock`) and heap_xlog_lock_updated (`!full_lock`).
pub(super) fn lock(
    page: &mut Page,
    blk: u32,
    offnum: u16,
    infobits: u8,
    xmax: u32,
    full_lock: bool,
) -> Result<LsnRule, RedoErrorKind> {
    let mut h = tuple_at(page, offnum)?;
    let mut im = h.infomask() & !(HEAP_XMAX_BITS | HEAP_MOVED);
    let mut im2 = h.infomask2() & !HEAP_KEYS_UPDATED;
    fix_infomask_from_infobits(infobits, &mut im, &mut im2);
    if full_lock && xmax_is_locked_only(im) {
        // Only a lock, no update: no HOT chain and no forward link.
        im2 &= !HEAP_HOT_UPDATED;
        h.set_ctid(blk, offnum);
    }
    h.set_infomask(im);
    h.set_infomask2(im2);
    h.set_xmax(xmax);
    if full_lock {
        h.set_first_command_id();
    }
    Ok(LsnRule::Stamp)
}

fn inplace(
    rec: &DecodedRecord,
    block: &BlockRef,
    page: &mut Page,
    offnum: u16,
) -> Result<LsnRule, RedoErrorKind> {
    let newdata = rec.block_data(block);
    let item = {
        page.normal_item_id(offnum)?;
        page.item_mut(offnum)?
    };
    let hoff = *item
        .get(T_HOFF)
        .ok_or_else(|| malformed("inplace target too short"))? as usize;
    let oldlen = item.len().saturating_sub(hoff);
    if oldlen != newdata.len() || hoff > item.len() {
        return Err(malformed(format!(
            "wrong tuple length: page has {oldlen} data bytes, record {}",
            newdata.len()
        )));
    }
    item[hoff..].copy_from_slice(newdata);
    Ok(LsnRule::Stamp)
}
