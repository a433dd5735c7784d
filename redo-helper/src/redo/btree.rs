//! Btree redo (`btree_redo` in `access/nbtree/nbtxlog.c`, PostgreSQL 15), all 15 record
//! types, one block reference at a time, with the posting-list helpers of
//! `access/nbtree/nbtdedup.c` (`_bt_swap_posting`, `_bt_update_posting`, the dedup state
//! machine) that redo reuses.
//!
//! Layout facts (`access/nbtree.h`, `access/itup.h`): the special space is
//! `BTPageOpaqueData` {btpo_prev, btpo_next, btpo_level, btpo_flags, btpo_cycleid} (16
//! bytes); an index tuple is `IndexTupleData` {t_tid (6), t_info (2)} + key; posting list
//! tuples set INDEX_ALT_TID_MASK and keep (offset of the TID array, count | BT_IS_POSTING)
//! in t_tid.

use super::page::{
    ITEM_ID_SIZE, Page, PageLayout, SIZE_OF_PAGE_HEADER, get_u16, get_u32, maxalign, put_u16,
    put_u32,
};
use super::tuple::{INDEX_AM_RESERVED_BIT, INDEX_SIZE_MASK, SIZEOF_INDEX_TUPLE, index_tuple_size};
use super::{LsnRule, RedoErrorKind, malformed};
use crate::wal::block::BlockRef;
use crate::wal::page::BLCKSZ;
use crate::wal::record::DecodedRecord;
use crate::wal::rmgr::btree::*;

pub(crate) const BTP_LEAF: u16 = 1 << 0;
pub(crate) const BTP_ROOT: u16 = 1 << 1;
pub(crate) const BTP_DELETED: u16 = 1 << 2;
pub(crate) const BTP_META: u16 = 1 << 3;
pub(crate) const BTP_HALF_DEAD: u16 = 1 << 4;
pub(crate) const BTP_SPLIT_END: u16 = 1 << 5;
pub(crate) const BTP_HAS_GARBAGE: u16 = 1 << 6;
pub(crate) const BTP_INCOMPLETE_SPLIT: u16 = 1 << 7;
pub(crate) const BTP_HAS_FULLXID: u16 = 1 << 8;
/// `sizeof(BTPageOpaqueData)`.
pub(crate) const BT_OPAQUE_SIZE: usize = 16;
/// `P_NONE`, `P_HIKEY`, `P_FIRSTKEY`.
pub(crate) const P_NONE: u32 = 0;
pub(crate) const P_HIKEY: u16 = 1;
pub(crate) const P_FIRSTKEY: u16 = 2;
/// `BTREE_MAGIC`.
pub(crate) const BTREE_MAGIC: u32 = 0x053162;
/// `INDEX_ALT_TID_MASK` (nbtree's use of the AM-reserved t_info bit).
const INDEX_ALT_TID_MASK: u16 = INDEX_AM_RESERVED_BIT;
const BT_OFFSET_MASK: u16 = 0x0FFF;
const BT_IS_POSTING: u16 = 0x2000;
/// `sizeof(ItemPointerData)`.
const TID_SIZE: usize = 6;
/// `BTMaxItemSize` (PostgreSQL 15): (BLCKSZ - MAXALIGN(header + 3 line pointers + 3 TIDs)
/// - MAXALIGN(opaque)) / 3, rounded down to MAXALIGN.
const BT_MAX_ITEM_SIZE: usize =
    ((BLCKSZ - maxalign(SIZE_OF_PAGE_HEADER + 3 * ITEM_ID_SIZE + 3 * TID_SIZE) - BT_OPAQUE_SIZE)
        / 3)
        & !7;

/// The btree special space of a page.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct BtOpaque {
    pub prev: u32,
    pub next: u32,
    pub level: u32,
    pub flags: u16,
    pub cycleid: u16,
}

fn opaque_pos(page: &Page) -> Result<usize, RedoErrorKind> {
    let s = page.special() as usize;
    if s + BT_OPAQUE_SIZE > BLCKSZ || s < SIZE_OF_PAGE_HEADER {
        return Err(malformed(format!(
            "page has no btree special space (pd_special {s})"
        )));
    }
    Ok(s)
}

pub(crate) fn read_opaque(page: &Page) -> Result<BtOpaque, RedoErrorKind> {
    let s = opaque_pos(page)?;
    Ok(BtOpaque {
        prev: get_u32(page, s),
        next: get_u32(page, s + 4),
        level: get_u32(page, s + 8),
        flags: get_u16(page, s + 12),
        cycleid: get_u16(page, s + 14),
    })
}

pub(crate) fn write_opaque(page: &mut Page, o: &BtOpaque) -> Result<(), RedoErrorKind> {
    let s = opaque_pos(page)?;
    put_u32(page, s, o.prev);
    put_u32(page, s + 4, o.next);
    put_u32(page, s + 8, o.level);
    put_u16(page, s + 12, o.flags);
    put_u16(page, s + 14, o.cycleid);
    Ok(())
}

fn update_opaque(page: &mut Page, f: impl FnOnce(&mut BtOpaque)) -> Result<(), RedoErrorKind> {
    let mut o = read_opaque(page)?;
    f(&mut o);
    write_opaque(page, &o)
}

/// `_bt_pageinit`.
fn bt_pageinit(page: &mut Page) {
    page.init(BT_OPAQUE_SIZE);
}

/// `P_FIRSTDATAKEY`: the high key occupies offset 1 except on the rightmost page.
fn first_data_key(o: &BtOpaque) -> u16 {
    if o.next == P_NONE {
        P_HIKEY
    } else {
        P_FIRSTKEY
    }
}

/// `PageGetTempPageCopySpecial`: an initialised page with the same special space.
fn temp_page_copy_special(page: &Page) -> Box<Page> {
    let mut t = Box::new([0u8; BLCKSZ]);
    let special = page.special() as usize;
    t.init(BLCKSZ.saturating_sub(special));
    if special <= BLCKSZ {
        let s = t.special() as usize;
        if s == special {
            t[s..].copy_from_slice(&page[special..]);
        }
    }
    t
}

/// `btree_redo`: one block reference of a btree record, by the function of `nbtxlog.c`
/// that replays its record type.
pub(super) fn redo_block(
    rec: &DecodedRecord,
    block: &BlockRef,
    page: &mut Page,
) -> Result<LsnRule, RedoErrorKind> {
    let parsed = parse(rec).map_err(|e| malformed(e.to_string()))?;
    match parsed {
        BtreeRecord::Insert { kind, offnum } => {
            insert(rec, block, page, offnum, kind == XLOG_BTREE_INSERT_POST)
        }
        BtreeRecord::Split(x) => split(rec, block, page, &x),
        BtreeRecord::Dedup { nintervals } => dedup(rec, block, page, nintervals),
        // btree_xlog_vacuum and btree_xlog_delete apply the same page change.
        BtreeRecord::Vacuum { ndeleted, nupdated }
        | BtreeRecord::Delete {
            ndeleted, nupdated, ..
        } => vacuum_or_delete(rec, block, page, ndeleted, nupdated),
        BtreeRecord::MarkPageHalfDead {
            poffset,
            leftblk,
            rightblk,
            topparent,
            ..
        } => mark_page_halfdead(block, page, poffset, leftblk, rightblk, topparent),
        BtreeRecord::UnlinkPage(x) => unlink_page(rec, block, page, &x),
        BtreeRecord::NewRoot { level, .. } => newroot(rec, block, page, level),
        // btree_xlog_reuse_page: only a recovery conflict for hot standby; no page.
        BtreeRecord::ReusePage { .. } => Ok(LsnRule::Keep),
        // btree_redo's XLOG_BTREE_META_CLEANUP: the metapage only.
        BtreeRecord::MetaCleanup { .. } => match block.id {
            0 => restore_meta(rec, block, page),
            id => unexpected(id),
        },
    }
}

/// `btree_xlog_insert`: the new tuple on its page (block 0), the child's incomplete-split
/// flag cleared (block 1), the metapage (block 2).
fn insert(
    rec: &DecodedRecord,
    block: &BlockRef,
    page: &mut Page,
    offnum: u16,
    posting: bool,
) -> Result<LsnRule, RedoErrorKind> {
    match block.id {
        0 => insert_on_page(rec, block, page, offnum, posting),
        1 => clear_incomplete_split(page),
        2 => restore_meta(rec, block, page),
        id => unexpected(id),
    }
}

/// `btree_xlog_split`: the left page rebuilt (block 0), the new right page from its logged
/// contents (block 1), the old right sibling's left link (block 2), the child's
/// incomplete-split flag (block 3).
fn split(
    rec: &DecodedRecord,
    block: &BlockRef,
    page: &mut Page,
    f: &XlBtreeSplit,
) -> Result<LsnRule, RedoErrorKind> {
    let right_blk = rec
        .block(1)
        .map(|b| b.block)
        .ok_or_else(|| malformed("split without right page"))?;
    match block.id {
        0 => split_left(
            rec,
            block,
            page,
            f.new_item_on_left,
            f.level,
            f.firstrightoff,
            f.newitemoff,
            f.postingoff,
            right_blk,
        ),
        1 => {
            let orig = rec
                .block(0)
                .map(|b| b.block)
                .ok_or_else(|| malformed("split without left page"))?;
            let snext = rec.block(2).map_or(P_NONE, |b| b.block);
            bt_pageinit(page);
            write_opaque(
                page,
                &BtOpaque {
                    prev: orig,
                    next: snext,
                    level: f.level,
                    flags: if f.level == 0 { BTP_LEAF } else { 0 },
                    cycleid: 0,
                },
            )?;
            restore_page(page, rec.block_data(block))?;
            Ok(LsnRule::Stamp)
        }
        2 => {
            update_opaque(page, |o| o.prev = right_blk)?;
            Ok(LsnRule::Stamp)
        }
        3 => clear_incomplete_split(page),
        id => unexpected(id),
    }
}

/// `btree_xlog_dedup`: the leaf's tuples merged into posting lists by the logged intervals.
fn dedup(
    rec: &DecodedRecord,
    block: &BlockRef,
    page: &mut Page,
    nintervals: u16,
) -> Result<LsnRule, RedoErrorKind> {
    match block.id {
        0 => dedup_intervals(rec.block_data(block), page, nintervals),
        id => unexpected(id),
    }
}

/// `btree_xlog_vacuum` / `btree_xlog_delete`: posting lists updated, items deleted.
fn vacuum_or_delete(
    rec: &DecodedRecord,
    block: &BlockRef,
    page: &mut Page,
    ndeleted: u16,
    nupdated: u16,
) -> Result<LsnRule, RedoErrorKind> {
    match block.id {
        0 => delete_items(rec.block_data(block), page, ndeleted, nupdated),
        id => unexpected(id),
    }
}

/// `btree_xlog_mark_page_halfdead`: the leaf marked half-dead (block 0); in the parent
/// (block 1), the pivot at `poffset` takes over the right sibling's downlink and the pivot
/// after it goes.
fn mark_page_halfdead(
    block: &BlockRef,
    page: &mut Page,
    poffset: u16,
    leftblk: u32,
    rightblk: u32,
    topparent: u32,
) -> Result<LsnRule, RedoErrorKind> {
    match block.id {
        0 => {
            half_dead_leaf(page, leftblk, rightblk, topparent)?;
            Ok(LsnRule::Stamp)
        }
        1 => {
            let next = poffset
                .checked_add(1)
                .ok_or_else(|| malformed("poffset overflow"))?;
            let rightsib = {
                let it = page.item(next)?;
                downlink(it)?
            };
            set_downlink(page.item_mut(poffset)?, rightsib)?;
            page.index_tuple_delete(next)?;
            Ok(LsnRule::Stamp)
        }
        id => unexpected(id),
    }
}

/// `btree_xlog_unlink_page`: the target page deleted (block 0), its siblings' links
/// (blocks 1 and 2), the half-dead leaf of an internal page's deletion (block 3), the
/// metapage (block 4, XLOG_BTREE_UNLINK_PAGE_META only).
fn unlink_page(
    rec: &DecodedRecord,
    block: &BlockRef,
    page: &mut Page,
    f: &XlBtreeUnlinkPage,
) -> Result<LsnRule, RedoErrorKind> {
    match block.id {
        0 => {
            bt_pageinit(page);
            write_opaque(
                page,
                &BtOpaque {
                    prev: f.leftsib,
                    next: f.rightsib,
                    level: f.level,
                    // BTPageSetDeleted, then BTP_LEAF for a leaf.
                    flags: BTP_DELETED | BTP_HAS_FULLXID | if f.level == 0 { BTP_LEAF } else { 0 },
                    cycleid: 0,
                },
            )?;
            // BTDeletedPageData {safexid} in the tuple area; pd_lower just past it.
            page[SIZE_OF_PAGE_HEADER..SIZE_OF_PAGE_HEADER + 8]
                .copy_from_slice(&f.safexid.to_le_bytes());
            page.set_lower((maxalign(SIZE_OF_PAGE_HEADER) + 8) as u16);
            let special = page.special();
            page.set_upper(special);
            Ok(LsnRule::Stamp)
        }
        1 => {
            update_opaque(page, |o| o.next = f.rightsib)?;
            Ok(LsnRule::Stamp)
        }
        2 => {
            update_opaque(page, |o| o.prev = f.leftsib)?;
            Ok(LsnRule::Stamp)
        }
        3 => {
            half_dead_leaf(page, f.leafleftsib, f.leafrightsib, f.leaftopparent)?;
            Ok(LsnRule::Stamp)
        }
        4 if f.with_meta => restore_meta(rec, block, page),
        id => unexpected(id),
    }
}

/// `btree_xlog_newroot`: the new root (block 0; an internal root from its logged
/// contents), the child's incomplete-split flag (block 1), the metapage (block 2).
fn newroot(
    rec: &DecodedRecord,
    block: &BlockRef,
    page: &mut Page,
    level: u32,
) -> Result<LsnRule, RedoErrorKind> {
    match block.id {
        0 => {
            bt_pageinit(page);
            write_opaque(
                page,
                &BtOpaque {
                    prev: P_NONE,
                    next: P_NONE,
                    level,
                    flags: BTP_ROOT | if level == 0 { BTP_LEAF } else { 0 },
                    cycleid: 0,
                },
            )?;
            if level > 0 {
                restore_page(page, rec.block_data(block))?;
            }
            Ok(LsnRule::Stamp)
        }
        1 => clear_incomplete_split(page),
        2 => restore_meta(rec, block, page),
        id => unexpected(id),
    }
}

fn unexpected(id: u8) -> Result<LsnRule, RedoErrorKind> {
    Err(malformed(format!("unexpected block id {id}")))
}

/// `_bt_clear_incomplete_split`.
fn clear_incomplete_split(page: &mut Page) -> Result<LsnRule, RedoErrorKind> {
    update_opaque(page, |o| o.flags &= !BTP_INCOMPLETE_SPLIT)?;
    Ok(LsnRule::Stamp)
}

/// `_bt_restore_meta`: the metapage is rebuilt from `xl_btree_metadata`.
fn restore_meta(
    rec: &DecodedRecord,
    block: &BlockRef,
    page: &mut Page,
) -> Result<LsnRule, RedoErrorKind> {
    let md = BtreeMetadata::parse(rec.block_data(block), rec.lsn)
        .map_err(|e| malformed(e.to_string()))?;
    bt_pageinit(page);
    // BTMetaPageData at PageGetContents: magic, version, root, level, fastroot, fastlevel,
    // last_cleanup_num_delpages, (pad), last_cleanup_num_heap_tuples (float8), allequalimage.
    let m = maxalign(SIZE_OF_PAGE_HEADER);
    put_u32(page, m, BTREE_MAGIC);
    put_u32(page, m + 4, md.version);
    put_u32(page, m + 8, md.root);
    put_u32(page, m + 12, md.level);
    put_u32(page, m + 16, md.fastroot);
    put_u32(page, m + 20, md.fastlevel);
    put_u32(page, m + 24, md.last_cleanup_num_delpages);
    page[m + 32..m + 40].copy_from_slice(&(-1.0f64).to_le_bytes());
    page[m + 40] = md.allequalimage as u8;
    update_opaque(page, |o| o.flags = BTP_META)?;
    // pd_lower just past the metadata (sizeof(BTMetaPageData) = 48).
    page.set_lower((m + 48) as u16);
    Ok(LsnRule::Stamp)
}

/// `_bt_restore_page`: `data` is the tuple area of a page whose tuples were added in item
/// number order, so the highest item comes first; add them back in reverse.
fn restore_page(page: &mut Page, data: &[u8]) -> Result<(), RedoErrorKind> {
    let mut items: Vec<(usize, usize)> = Vec::new();
    let mut pos = 0;
    while pos < data.len() {
        let size = index_tuple_size(&data[pos..])
            .ok_or_else(|| malformed("truncated index tuple in page image"))?;
        let size = maxalign(size);
        if size == 0 || pos + size > data.len() {
            return Err(malformed(format!(
                "index tuple of {size} bytes at {pos} overruns {} bytes",
                data.len()
            )));
        }
        items.push((pos, size));
        pos += size;
    }
    let n = items.len();
    for (i, (pos, size)) in items.iter().enumerate().rev() {
        page.add_item(&data[*pos..pos + size], (n - i) as u16, 0)?;
    }
    Ok(())
}

/// An index tuple at the start of `data`, with its MAXALIGNed size.
fn take_tuple(data: &[u8]) -> Result<(&[u8], usize), RedoErrorKind> {
    let size = index_tuple_size(data).ok_or_else(|| malformed("index tuple truncated"))?;
    let aligned = maxalign(size);
    if size < SIZEOF_INDEX_TUPLE || aligned > data.len() {
        return Err(malformed(format!(
            "index tuple of {size} bytes in {} bytes of data",
            data.len()
        )));
    }
    Ok((&data[..size], aligned))
}

/// The block-0 part of btree_xlog_insert: the tuple (or, with a posting split, the
/// rewritten posting list and the new item) added to the page.
fn insert_on_page(
    rec: &DecodedRecord,
    block: &BlockRef,
    page: &mut Page,
    offnum: u16,
    posting: bool,
) -> Result<LsnRule, RedoErrorKind> {
    let data = rec.block_data(block);
    if !posting {
        page.add_item(data, offnum, 0)?;
        return Ok(LsnRule::Stamp);
    }
    // Posting list split: postingoff, then the original new item. Repeat
    // _bt_swap_posting: the posting list before offnum takes the new item's TID, and the
    // new item gets the posting list's old maximum TID.
    if data.len() < 2 {
        return Err(malformed("INSERT_POST without postingoff"));
    }
    let postingoff = get_u16(data, 0) as usize;
    let mut newitem = data[2..].to_vec();
    let prev = offnum
        .checked_sub(1)
        .filter(|o| *o >= 1)
        .ok_or_else(|| malformed(format!("posting split at offset {offnum}")))?;
    let oposting = page.item(prev)?.to_vec();
    let nposting = swap_posting(&mut newitem, &oposting, postingoff)?;
    let target = page.item_mut(prev)?;
    if target.len() < nposting.len() {
        return Err(malformed("posting list grew during swap"));
    }
    target[..nposting.len()].copy_from_slice(&nposting);
    page.add_item(&newitem, offnum, 0)?;
    Ok(LsnRule::Stamp)
}

/// `BTreeTupleIsPosting`.
fn is_posting(t: &[u8]) -> bool {
    t.len() >= SIZEOF_INDEX_TUPLE
        && get_u16(t, 6) & INDEX_ALT_TID_MASK != 0
        && get_u16(t, 4) & BT_IS_POSTING != 0
}

/// `BTreeTupleGetNPosting`.
fn n_posting(t: &[u8]) -> usize {
    (get_u16(t, 4) & BT_OFFSET_MASK) as usize
}

/// `BTreeTupleGetPostingOffset`: the TID array's offset, kept in t_tid's block number.
fn posting_offset(t: &[u8]) -> usize {
    (((get_u16(t, 0) as u32) << 16) | get_u16(t, 2) as u32) as usize
}

/// The posting list's TIDs.
fn posting_tids(t: &[u8]) -> Result<&[u8], RedoErrorKind> {
    let off = posting_offset(t);
    let n = n_posting(t);
    t.get(off..off + n * TID_SIZE)
        .ok_or_else(|| malformed("posting list overruns its tuple"))
}

fn set_size(t: &mut [u8], size: usize) {
    let info = (get_u16(t, 6) & !INDEX_SIZE_MASK) | size as u16;
    put_u16(t, 6, info);
}

/// `BTreeTupleSetPosting`.
fn set_posting(t: &mut [u8], nhtids: usize, keysize: usize) {
    let info = get_u16(t, 6) | INDEX_ALT_TID_MASK;
    put_u16(t, 6, info);
    put_u16(t, 4, nhtids as u16 | BT_IS_POSTING);
    put_u16(t, 0, (keysize >> 16) as u16);
    put_u16(t, 2, keysize as u16);
}

/// `_bt_swap_posting`.
fn swap_posting(
    newitem: &mut [u8],
    oposting: &[u8],
    postingoff: usize,
) -> Result<Vec<u8>, RedoErrorKind> {
    if !is_posting(oposting) || newitem.len() < SIZEOF_INDEX_TUPLE {
        return Err(malformed(
            "posting list split on a tuple that is not a posting list",
        ));
    }
    let nhtids = n_posting(oposting);
    if !(postingoff > 0 && postingoff < nhtids) {
        return Err(malformed(format!(
            "posting list tuple with {nhtids} items cannot be split at offset {postingoff}"
        )));
    }
    let mut nposting = oposting.to_vec();
    let base = posting_offset(oposting);
    if base + nhtids * TID_SIZE > nposting.len() {
        return Err(malformed("posting list overruns its tuple"));
    }
    let from = base + postingoff * TID_SIZE;
    let to = base + (nhtids - 1) * TID_SIZE;
    nposting.copy_within(from..to, from + TID_SIZE);
    nposting[from..from + TID_SIZE].copy_from_slice(&newitem[..TID_SIZE]);
    // The new item takes the old maximum TID.
    newitem[..TID_SIZE].copy_from_slice(&oposting[to..to + TID_SIZE]);
    Ok(nposting)
}

/// `_bt_form_posting`: `base`'s key with the given TIDs (a plain tuple for one TID).
fn form_posting(base: &[u8], htids: &[u8]) -> Result<Vec<u8>, RedoErrorKind> {
    let keysize = if is_posting(base) {
        posting_offset(base)
    } else {
        index_tuple_size(base).ok_or_else(|| malformed("short base tuple"))?
    };
    let nhtids = htids.len() / TID_SIZE;
    if keysize > base.len() || nhtids == 0 {
        return Err(malformed("bad dedup base tuple"));
    }
    let newsize = if nhtids > 1 {
        maxalign(keysize + htids.len())
    } else {
        keysize
    };
    let mut t = vec![0u8; newsize];
    t[..keysize].copy_from_slice(&base[..keysize]);
    set_size(&mut t, newsize);
    if nhtids > 1 {
        set_posting(&mut t, nhtids, keysize);
        t[keysize..keysize + htids.len()].copy_from_slice(htids);
    } else {
        let info = get_u16(&t, 6) & !INDEX_ALT_TID_MASK;
        put_u16(&mut t, 6, info);
        t[..TID_SIZE].copy_from_slice(&htids[..TID_SIZE]);
    }
    Ok(t)
}

/// `_bt_update_posting`: the posting list without the TIDs at `deletetids` (indexes).
fn update_posting(orig: &[u8], deletetids: &[u16]) -> Result<Vec<u8>, RedoErrorKind> {
    if !is_posting(orig) {
        return Err(malformed("posting list update on a plain tuple"));
    }
    let n = n_posting(orig);
    let tids = posting_tids(orig)?;
    let mut kept = Vec::with_capacity(tids.len());
    let mut d = 0;
    for i in 0..n {
        if d < deletetids.len() && deletetids[d] as usize == i {
            d += 1;
            continue;
        }
        kept.extend_from_slice(&tids[i * TID_SIZE..(i + 1) * TID_SIZE]);
    }
    if d != deletetids.len() || kept.is_empty() {
        return Err(malformed(
            "posting list update deletes TIDs it does not have",
        ));
    }
    form_posting(orig, &kept)
}

/// btree_xlog_vacuum / btree_xlog_delete: update posting lists, then delete items, then
/// clear BTP_HAS_GARBAGE.
fn delete_items(
    data: &[u8],
    page: &mut Page,
    ndeleted: u16,
    nupdated: u16,
) -> Result<LsnRule, RedoErrorKind> {
    let (nd, nu) = (ndeleted as usize, nupdated as usize);
    if data.len() < (nd + nu) * 2 {
        return Err(malformed("offset arrays truncated"));
    }
    let deleted: Vec<u16> = (0..nd).map(|i| get_u16(data, i * 2)).collect();
    let updated: Vec<u16> = (0..nu).map(|i| get_u16(data, (nd + i) * 2)).collect();
    let mut pos = (nd + nu) * 2;
    for off in updated {
        let n = data
            .get(pos..pos + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]) as usize)
            .ok_or_else(|| malformed("xl_btree_update truncated"))?;
        pos += 2;
        let dels: Vec<u16> = data
            .get(pos..pos + n * 2)
            .ok_or_else(|| malformed("xl_btree_update TIDs truncated"))?
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .collect();
        pos += n * 2;
        let newtup = update_posting(page.item(off)?, &dels)?;
        page.index_tuple_overwrite(off, &newtup)?;
    }
    if !deleted.is_empty() {
        page.index_multi_delete(&deleted)?;
    }
    update_opaque(page, |o| o.flags &= !BTP_HAS_GARBAGE)?;
    Ok(LsnRule::Stamp)
}

/// Pending posting list of the dedup state machine (`BTDedupStateData`).
struct DedupState {
    base: Vec<u8>,
    baseoff: u16,
    basetupsize: usize,
    htids: Vec<u8>,
    nitems: usize,
    nintervals: usize,
}

impl DedupState {
    /// `_bt_dedup_start_pending`.
    fn start(&mut self, base: &[u8], baseoff: u16) -> Result<(), RedoErrorKind> {
        self.htids.clear();
        if !is_posting(base) {
            self.htids.extend_from_slice(&base[..TID_SIZE]);
            self.basetupsize = index_tuple_size(base).unwrap_or(base.len());
        } else {
            self.htids.extend_from_slice(posting_tids(base)?);
            self.basetupsize = posting_offset(base);
        }
        self.nitems = 1;
        self.base = base.to_vec();
        self.baseoff = baseoff;
        Ok(())
    }

    /// `_bt_dedup_save_htid`; false when the merged tuple would exceed the size limit.
    fn save(&mut self, itup: &[u8]) -> Result<bool, RedoErrorKind> {
        let tids: &[u8] = if !is_posting(itup) {
            &itup[..TID_SIZE]
        } else {
            posting_tids(itup)?
        };
        let merged = maxalign(self.basetupsize + self.htids.len() + tids.len());
        if merged > BT_MAX_ITEM_SIZE {
            return Ok(false);
        }
        self.nitems += 1;
        self.htids.extend_from_slice(tids);
        Ok(true)
    }

    /// `_bt_dedup_finish_pending`: appends the base tuple unchanged or the new posting
    /// list to `newpage`.
    fn finish(&mut self, newpage: &mut Page) -> Result<(), RedoErrorKind> {
        let off = newpage.max_offset() + 1;
        if self.nitems == 1 {
            let size = index_tuple_size(&self.base).unwrap_or(self.base.len());
            newpage.add_item(&self.base[..size.min(self.base.len())], off, 0)?;
        } else {
            let t = form_posting(&self.base, &self.htids)?;
            newpage.add_item(&t, off, 0)?;
            self.nintervals += 1;
        }
        self.htids.clear();
        self.nitems = 0;
        Ok(())
    }
}

/// The page change of btree_xlog_dedup: rebuild the page on a temporary copy, merging the items of each
/// logged interval into one posting list.
fn dedup_intervals(
    data: &[u8],
    page: &mut Page,
    nintervals: u16,
) -> Result<LsnRule, RedoErrorKind> {
    let n = nintervals as usize;
    if data.len() < n * 4 {
        return Err(malformed("dedup intervals truncated"));
    }
    let intervals: Vec<(u16, u16)> = (0..n)
        .map(|i| (get_u16(data, i * 4), get_u16(data, i * 4 + 2)))
        .collect();
    let opaque = read_opaque(page)?;
    let minoff = first_data_key(&opaque);
    let maxoff = page.max_offset();
    let mut newpage = temp_page_copy_special(page);
    if opaque.next != P_NONE {
        let hikey = page.item(P_HIKEY)?;
        newpage.add_item(hikey, P_HIKEY, 0)?;
    }
    let mut st = DedupState {
        base: Vec::new(),
        baseoff: 0,
        basetupsize: 0,
        htids: Vec::new(),
        nitems: 0,
        nintervals: 0,
    };
    for off in minoff..=maxoff {
        let itup = page.item(off)?;
        if off == minoff {
            st.start(itup, off)?;
        } else if st.nintervals < n
            && st.baseoff == intervals[st.nintervals].0
            && st.nitems < intervals[st.nintervals].1 as usize
        {
            if !st.save(itup)? {
                return Err(malformed(
                    "deduplication failed to add heap tid to pending posting list",
                ));
            }
        } else {
            st.finish(&mut newpage)?;
            st.start(itup, off)?;
        }
    }
    if maxoff >= minoff {
        st.finish(&mut newpage)?;
    }
    if st.nintervals != n {
        return Err(malformed(format!(
            "dedup built {} posting lists, the record has {n}",
            st.nintervals
        )));
    }
    if opaque.flags & BTP_HAS_GARBAGE != 0 {
        update_opaque(&mut newpage, |o| o.flags &= !BTP_HAS_GARBAGE)?;
    }
    page.copy_from_slice(&newpage[..]);
    Ok(LsnRule::Stamp)
}

/// The left (original) page of a split, rebuilt on a temporary page in item order.
#[allow(clippy::too_many_arguments)]
fn split_left(
    rec: &DecodedRecord,
    block: &BlockRef,
    page: &mut Page,
    newitemonleft: bool,
    level: u32,
    firstrightoff: u16,
    newitemoff: u16,
    postingoff: u16,
    right_blk: u32,
) -> Result<LsnRule, RedoErrorKind> {
    let isleaf = level == 0;
    let mut data = rec.block_data(block);
    let mut newitem: Option<Vec<u8>> = None;
    let mut nposting: Option<Vec<u8>> = None;
    let mut replacepostingoff = 0u16;
    if newitemonleft || postingoff != 0 {
        let (t, aligned) = take_tuple(data)?;
        let mut item = data[..aligned].to_vec();
        let _ = t;
        data = &data[aligned..];
        if postingoff != 0 {
            replacepostingoff = newitemoff
                .checked_sub(1)
                .ok_or_else(|| malformed("posting split at offset 0"))?;
            let oposting = page.item(replacepostingoff)?.to_vec();
            nposting = Some(swap_posting(&mut item, &oposting, postingoff as usize)?);
        }
        newitem = Some(item);
    }
    let (_, hikey_size) = take_tuple(data)?;
    let left_hikey = &data[..hikey_size];
    if data.len() != hikey_size {
        return Err(malformed(format!(
            "{} bytes left after the left high key",
            data.len() - hikey_size
        )));
    }
    let oopaque = read_opaque(page)?;
    let mut left = temp_page_copy_special(page);
    left.add_item(left_hikey, P_HIKEY, 0)?;
    let mut leftoff = P_HIKEY + 1;
    let mut off = first_data_key(&oopaque);
    while off < firstrightoff {
        if off == replacepostingoff && replacepostingoff != 0 {
            let np = nposting.as_deref().unwrap_or(&[]);
            left.add_item(
                &np[..maxalign(index_tuple_size(np).unwrap_or(0)).min(np.len())],
                leftoff,
                0,
            )?;
            leftoff += 1;
            off += 1;
            continue;
        } else if newitemonleft
            && off == newitemoff
            && let Some(ni) = &newitem
        {
            left.add_item(ni, leftoff, 0)?;
            leftoff += 1;
        }
        let item = page.item(off)?;
        left.add_item(item, leftoff, 0)?;
        leftoff += 1;
        off += 1;
    }
    if newitemonleft
        && off == newitemoff
        && let Some(ni) = &newitem
    {
        left.add_item(ni, leftoff, 0)?;
    }
    page.copy_from_slice(&left[..]);
    update_opaque(page, |o| {
        o.flags = BTP_INCOMPLETE_SPLIT | if isleaf { BTP_LEAF } else { 0 };
        o.next = right_blk;
        o.cycleid = 0;
    })?;
    Ok(LsnRule::Stamp)
}

/// A half-dead leaf (btree_xlog_mark_page_halfdead and the leaf of btree_xlog_unlink_page):
/// an empty leaf whose high key is a dummy pivot pointing to the top parent.
fn half_dead_leaf(
    page: &mut Page,
    prev: u32,
    next: u32,
    topparent: u32,
) -> Result<(), RedoErrorKind> {
    bt_pageinit(page);
    write_opaque(
        page,
        &BtOpaque {
            prev,
            next,
            level: 0,
            flags: BTP_HALF_DEAD | BTP_LEAF,
            cycleid: 0,
        },
    )?;
    // IndexTupleData with t_info = sizeof(IndexTupleData) and BTreeTupleSetTopParent:
    // t_tid's block = topparent, offset = 0 key attributes, INDEX_ALT_TID_MASK set.
    let mut t = [0u8; SIZEOF_INDEX_TUPLE];
    put_u16(&mut t, 0, (topparent >> 16) as u16);
    put_u16(&mut t, 2, topparent as u16);
    put_u16(&mut t, 4, 0);
    put_u16(&mut t, 6, SIZEOF_INDEX_TUPLE as u16 | INDEX_ALT_TID_MASK);
    page.add_item(&t, P_HIKEY, 0)?;
    Ok(())
}

/// `BTreeTupleGetDownLink`: a pivot's child block, in t_tid's block number.
fn downlink(t: &[u8]) -> Result<u32, RedoErrorKind> {
    if t.len() < SIZEOF_INDEX_TUPLE {
        return Err(malformed("pivot tuple too short"));
    }
    Ok(((get_u16(t, 0) as u32) << 16) | get_u16(t, 2) as u32)
}

/// `BTreeTupleSetDownLink`.
fn set_downlink(t: &mut [u8], blk: u32) -> Result<(), RedoErrorKind> {
    if t.len() < SIZEOF_INDEX_TUPLE {
        return Err(malformed("pivot tuple too short"));
    }
    put_u16(t, 0, (blk >> 16) as u16);
    put_u16(t, 2, blk as u16);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tuple(key: u8, tid: (u32, u16)) -> Vec<u8> {
        // 8-byte header + 8-byte key: a MAXALIGNed 16-byte index tuple.
        let mut t = vec![0u8; 16];
        put_u16(&mut t, 0, (tid.0 >> 16) as u16);
        put_u16(&mut t, 2, tid.0 as u16);
        put_u16(&mut t, 4, tid.1);
        put_u16(&mut t, 6, 16);
        t[8] = key;
        t
    }

    #[test]
    fn max_item_size() {
        assert_eq!(BT_MAX_ITEM_SIZE, 2704);
    }

    #[test]
    fn posting_lists_form_swap_and_update() {
        let base = tuple(7, (1, 1));
        let mut tids = Vec::new();
        for i in 1..=3u16 {
            tids.extend_from_slice(&tuple(7, (1, i))[..6]);
        }
        let p = form_posting(&base, &tids).unwrap();
        assert!(is_posting(&p));
        assert_eq!(n_posting(&p), 3);
        assert_eq!(posting_offset(&p), 16);
        assert_eq!(p.len(), maxalign(16 + 18));
        // Swap: a new TID (1,2)... goes in at index 1, the new item takes the old max.
        let mut newitem = tuple(7, (1, 9));
        let np = swap_posting(&mut newitem, &p, 1).unwrap();
        let t = posting_tids(&np).unwrap();
        assert_eq!(get_u16(t, 4), 1);
        assert_eq!(get_u16(t, 10), 9);
        assert_eq!(get_u16(t, 16), 2);
        assert_eq!(get_u16(&newitem, 4), 3);
        // Update: dropping two of three TIDs gives a plain tuple.
        let u = update_posting(&p, &[0, 2]).unwrap();
        assert!(!is_posting(&u));
        assert_eq!(u.len(), 16);
        assert_eq!(get_u16(&u, 4), 2);
        assert!(swap_posting(&mut tuple(7, (1, 1)), &p, 3).is_err());
    }

    #[test]
    fn restore_page_keeps_item_order() {
        let mut p = Box::new([0u8; BLCKSZ]);
        bt_pageinit(&mut p);
        // Tuple area of a page with items 1..=3: highest item first (lowest address).
        let mut data = Vec::new();
        for k in [3u8, 2, 1] {
            data.extend_from_slice(&tuple(k, (0, k as u16)));
        }
        restore_page(&mut p, &data).unwrap();
        assert_eq!(p.max_offset(), 3);
        for k in 1..=3u16 {
            assert_eq!(p.item(k).unwrap()[8], k as u8);
        }
        assert_eq!(p.item_id(1).unwrap().off(), 8176 - 16);
    }
}
