//! Heap2 redo (`heap2_redo` in `access/heap/heapam.c` and `heap_page_prune_execute` in
//! `pruneheap.c`): prune, vacuum, freeze_page, visible, multi_insert, lock_updated. new_cid
//! and rewrite touch no page.
//!
//! Per version: 15 and 16 prune, vacuum and freeze with three records (16 freezes by
//! deduplicated plans); 17 and 18 do all three with one (`heap_xlog_prune_freeze`):
//! line pointers first (defragmenting when the record was written under a cleanup lock,
//! else only truncating the line pointer array), then the freeze plans.

use super::page::{
    LP_DEAD, LP_REDIRECT, PAI_IS_HEAP, PAI_OVERWRITE, PD_ALL_VISIBLE, Page, PageLayout, get_u16,
    get_u32, shortalign,
};
use super::tuple::*;
use super::{LsnRule, RedoContext, RedoErrorKind, malformed, vm};
use crate::wal::block::BlockRef;
use crate::wal::record::DecodedRecord;
use crate::wal::rmgr::heap::*;

/// `SizeOfMultiInsertTuple`: datalen, infomask2, infomask, hoff.
const SIZE_OF_MULTI_INSERT_TUPLE: usize = 7;
/// `sizeof(xl_heap_freeze_tuple)`: xmax, offset, infomask2, infomask, frzflags (+pad).
const SIZE_OF_FREEZE_TUPLE: usize = 12;
const XLH_FREEZE_XVAC: u8 = 0x02;
const XLH_INVALID_XVAC: u8 = 0x04;

pub(super) fn redo_block(
    rec: &DecodedRecord,
    block: &BlockRef,
    page: &mut Page,
    ctx: &RedoContext,
) -> Result<LsnRule, RedoErrorKind> {
    let parsed = parse_heap2(rec).map_err(|e| malformed(e.to_string()))?;
    match parsed {
        Heap2Record::Prune {
            nredirected, ndead, ..
        } => prune(rec.block_data(block), page, nredirected, ndead),
        Heap2Record::Vacuum { nunused } => vacuum(rec.block_data(block), page, nunused),
        Heap2Record::FreezePage { ntuples, .. } => {
            freeze_page(rec.block_data(block), page, ntuples)
        }
        Heap2Record::FreezePlans { nplans, .. } => {
            let (plans, offsets) =
                parse_freeze_plans_block(rec.block_data(block), nplans).map_err(malformed)?;
            freeze_by_plans(page, &plans, &offsets)
        }
        Heap2Record::PruneFreeze { flags, .. } => prune_freeze(rec.block_data(block), page, flags),
        Heap2Record::Visible { flags, .. } => {
            if block.id == 0 {
                // The VM page; block 1 is the heap block whose bits are set.
                let heap_blk = rec
                    .block(1)
                    .map(|b| b.block)
                    .ok_or_else(|| malformed("VISIBLE without heap block reference"))?;
                if page.is_new() {
                    page.init(0);
                }
                Ok(
                    if vm::set(page, heap_blk, flags & vm::VISIBILITYMAP_VALID_BITS) {
                        LsnRule::Stamp
                    } else {
                        LsnRule::Keep
                    },
                )
            } else {
                // heap_xlog_visible: the heap page's LSN only moves when hint bits are
                // WAL-logged (checksums or wal_log_hints); its contents are not inspected.
                page.set_flag(PD_ALL_VISIBLE, true);
                Ok(if ctx.hint_bits_logged() {
                    LsnRule::Stamp
                } else {
                    LsnRule::Keep
                })
            }
        }
        Heap2Record::MultiInsert {
            flags,
            ntuples,
            init_page,
            offsets,
        } => multi_insert(rec, block, page, flags, ntuples, init_page, &offsets),
        Heap2Record::LockUpdated {
            xmax,
            offnum,
            infobits_set,
            ..
        } => super::heap::lock(page, block.block, offnum, infobits_set, xmax, false),
        Heap2Record::NewCid(_) | Heap2Record::Rewrite(_) => Ok(LsnRule::Keep),
    }
}

fn offsets(data: &[u8], n: usize, what: &str) -> Result<Vec<u16>, RedoErrorKind> {
    if data.len() < n * 2 {
        return Err(malformed(format!(
            "{what}: {n} offsets announced, {} bytes present",
            data.len()
        )));
    }
    Ok((0..n).map(|i| get_u16(data, i * 2)).collect())
}

/// heap_xlog_prune + heap_page_prune_execute: redirect, mark dead, mark unused, then
/// PageRepairFragmentation.
fn prune(
    data: &[u8],
    page: &mut Page,
    nredirected: u16,
    ndead: u16,
) -> Result<LsnRule, RedoErrorKind> {
    // The offsets follow the header: redirect pairs, then dead, then unused (the rest).
    let n = data.len() / 2;
    let nred = nredirected as usize * 2;
    let nd = ndead as usize;
    if n < nred + nd {
        return Err(malformed(format!(
            "prune: {nredirected} redirects and {ndead} dead announced, {n} offsets present"
        )));
    }
    let at = |i: usize| get_u16(data, i * 2);
    for pair in 0..nredirected as usize {
        let (from, to) = (at(2 * pair), at(2 * pair + 1));
        page.item_id(from)?;
        page.set_item_id(from, super::page::ItemId::new(to, LP_REDIRECT, 0))?;
    }
    for i in nred..nred + nd {
        let off = at(i);
        page.item_id(off)?;
        page.set_item_id(off, super::page::ItemId::new(0, LP_DEAD, 0))?;
    }
    for i in nred + nd..n {
        let off = at(i);
        page.item_id(off)?;
        page.set_item_id(off, super::page::ItemId(0))?;
    }
    page.repair_fragmentation()?;
    Ok(LsnRule::Stamp)
}

/// heap_xlog_prune_freeze (17+) with heap_page_prune_execute: redirect, mark dead, mark
/// unused; then PageRepairFragmentation under a cleanup lock, else (LP_DEAD items becoming
/// unused in VACUUM's second pass) PageTruncateLinePointerArray; then freeze.
fn prune_freeze(data: &[u8], page: &mut Page, flags: u8) -> Result<LsnRule, RedoErrorKind> {
    let b = parse_prune_freeze_block(data, flags).map_err(malformed)?;
    if !b.redirected.is_empty() || !b.dead.is_empty() || !b.unused.is_empty() {
        for &(from, to) in &b.redirected {
            page.item_id(from)?;
            page.set_item_id(from, super::page::ItemId::new(to, LP_REDIRECT, 0))?;
        }
        for &off in &b.dead {
            page.item_id(off)?;
            page.set_item_id(off, super::page::ItemId::new(0, LP_DEAD, 0))?;
        }
        for &off in &b.unused {
            page.item_id(off)?;
            page.set_item_id(off, super::page::ItemId(0))?;
        }
        if flags & XLHP_CLEANUP_LOCK != 0 {
            page.repair_fragmentation()?;
        } else {
            page.truncate_line_pointer_array()?;
        }
    }
    freeze_by_plans(page, &b.plans, &b.frozen)?;
    Ok(LsnRule::Stamp)
}

/// Freezes `offsets` plan after plan (each plan covers its `ntuples` offsets in order) with
/// heap_execute_freeze_tuple (16+).
fn freeze_by_plans(
    page: &mut Page,
    plans: &[FreezePlan],
    offsets: &[u16],
) -> Result<LsnRule, RedoErrorKind> {
    let mut next = offsets.iter();
    for plan in plans {
        for _ in 0..plan.ntuples {
            let &offset = next
                .next()
                .ok_or_else(|| malformed("freeze plans name more tuples than offsets"))?;
            freeze_tuple(
                page,
                offset,
                plan.xmax,
                plan.infomask2,
                plan.infomask,
                plan.frzflags,
            )?;
        }
    }
    Ok(LsnRule::Stamp)
}

/// heap_execute_freeze_tuple.
fn freeze_tuple(
    page: &mut Page,
    offset: u16,
    xmax: u32,
    infomask2: u16,
    infomask: u16,
    frzflags: u8,
) -> Result<(), RedoErrorKind> {
    let item = page.item_mut(offset)?;
    let mut h = HeapTupleHeader::new(item)
        .ok_or_else(|| malformed(format!("freeze target {offset} too short")))?;
    h.set_xmax(xmax);
    if frzflags & XLH_FREEZE_XVAC != 0 {
        h.set_field3(FROZEN_TRANSACTION_ID);
    }
    if frzflags & XLH_INVALID_XVAC != 0 {
        h.set_field3(0);
    }
    h.set_infomask(infomask);
    h.set_infomask2(infomask2);
    Ok(())
}

/// heap_xlog_vacuum: LP_DEAD items become LP_UNUSED, then the line pointer array is
/// truncated (PageTruncateLinePointerArray).
fn vacuum(data: &[u8], page: &mut Page, nunused: u16) -> Result<LsnRule, RedoErrorKind> {
    for off in offsets(data, nunused as usize, "vacuum")? {
        let id = page.item_id(off)?;
        if !id.is_dead() || id.has_storage() {
            return Err(super::page::PageShapeError::UnexpectedLinePointer {
                offnum: off,
                itemid: id,
                expected: "LP_DEAD without storage",
            }
            .into());
        }
        page.set_item_id(off, super::page::ItemId(0))?;
    }
    page.truncate_line_pointer_array()?;
    Ok(LsnRule::Stamp)
}

/// heap_xlog_freeze_page + heap_execute_freeze_tuple.
fn freeze_page(data: &[u8], page: &mut Page, ntuples: u16) -> Result<LsnRule, RedoErrorKind> {
    if data.len() < ntuples as usize * SIZE_OF_FREEZE_TUPLE {
        return Err(malformed(format!(
            "freeze: {ntuples} tuples announced, {} bytes present",
            data.len()
        )));
    }
    for i in 0..ntuples as usize {
        let f = &data[i * SIZE_OF_FREEZE_TUPLE..(i + 1) * SIZE_OF_FREEZE_TUPLE];
        let xmax = get_u32(f, 0);
        let offset = get_u16(f, 4);
        let infomask2 = get_u16(f, 6);
        let infomask = get_u16(f, 8);
        freeze_tuple(page, offset, xmax, infomask2, infomask, f[10])?;
    }
    Ok(LsnRule::Stamp)
}

/// heap_xlog_multi_insert: tuples follow each other in block 0's data, each an
/// `xl_multi_insert_tuple` at a SHORTALIGNed position; on an initialised page they go to
/// offsets 1..n, otherwise to the record's offsets.
fn multi_insert(
    rec: &DecodedRecord,
    block: &BlockRef,
    page: &mut Page,
    flags: u8,
    ntuples: u16,
    init_page: bool,
    offs: &[u16],
) -> Result<LsnRule, RedoErrorKind> {
    if init_page {
        page.init(0);
    }
    let data = rec.block_data(block);
    let mut pos = 0usize;
    for i in 0..ntuples as usize {
        let offnum = if init_page {
            1 + i as u16
        } else {
            *offs
                .get(i)
                .ok_or_else(|| malformed("multi_insert offsets missing"))?
        };
        if page.max_offset() + 1 < offnum {
            return Err(malformed(format!(
                "invalid max offset number: tuple {i} at {offnum} on a page with {}",
                page.max_offset()
            )));
        }
        pos = shortalign(pos);
        let hdr = data
            .get(pos..pos + SIZE_OF_MULTI_INSERT_TUPLE)
            .ok_or_else(|| malformed(format!("multi_insert tuple {i} header truncated")))?;
        let datalen = get_u16(hdr, 0) as usize;
        pos += SIZE_OF_MULTI_INSERT_TUPLE;
        let body = data
            .get(pos..pos + datalen)
            .ok_or_else(|| malformed(format!("multi_insert tuple {i} data truncated")))?;
        pos += datalen;
        let mut t = vec![0u8; super::page::SIZEOF_HEAP_TUPLE_HEADER + datalen];
        t[super::page::SIZEOF_HEAP_TUPLE_HEADER..].copy_from_slice(body);
        let mut h = HeapTupleHeader { b: &mut t };
        h.set_infomask2(get_u16(hdr, 2));
        h.set_infomask(get_u16(hdr, 4));
        h.b[T_HOFF] = hdr[6];
        h.set_xmin(rec.xid());
        h.set_ctid(block.block, offnum);
        page.add_item(&t, offnum, PAI_OVERWRITE | PAI_IS_HEAP)?;
    }
    if pos != data.len() {
        return Err(malformed(format!(
            "total tuple length mismatch: {pos} of {} bytes used",
            data.len()
        )));
    }
    if flags & XLH_INSERT_ALL_VISIBLE_CLEARED != 0 {
        page.set_flag(PD_ALL_VISIBLE, false);
    }
    if flags & XLH_INSERT_ALL_FROZEN_SET != 0 {
        page.set_flag(PD_ALL_VISIBLE, true);
    }
    Ok(LsnRule::Stamp)
}
