//! The visibility map (`access/heap/visibilitymap.c`): two bits per heap block
//! (all-visible, all-frozen) in the `vm` fork, after a standard page header.
//!
//! Heap records that clear the bits (insert, update, delete, lock, multi_insert) do not
//! reference the VM page; redo pins and clears it itself, whatever the heap page's LSN, and
//! without touching the VM page's LSN. The engine derives that page from the record
//! ([`implicit_vm_clears`]) so the store can index and replay it like a block reference.
//! Newer minor releases (17.12, 18.5 and later) do reference it: the same clears then go
//! through that block reference (`redo::apply_block`), LSN-checked and stamped.

use super::page::{Page, PageLayout, SIZE_OF_PAGE_HEADER, maxalign};
use crate::wal::block::{ForkNumber, PageKey};
use crate::wal::record::DecodedRecord;
use crate::wal::rmgr::heap::*;
use crate::wal::rmgr::{RM_HEAP_ID, RM_HEAP2_ID};

pub(crate) const VISIBILITYMAP_ALL_FROZEN: u8 = 0x02;
pub(crate) const VISIBILITYMAP_VALID_BITS: u8 = 0x03;

/// `MAPSIZE`: bytes of bitmap per VM page.
pub(crate) const MAPSIZE: usize = crate::wal::page::BLCKSZ - maxalign(SIZE_OF_PAGE_HEADER);
/// `HEAPBLOCKS_PER_PAGE`: 4 heap blocks per byte.
pub(crate) const HEAPBLOCKS_PER_PAGE: u32 = (MAPSIZE * 4) as u32;
const MAP_START: usize = maxalign(SIZE_OF_PAGE_HEADER);

/// VM block holding the bits of heap block `heap_blk` (`HEAPBLK_TO_MAPBLOCK`).
pub(crate) fn map_block(heap_blk: u32) -> u32 {
    heap_blk / HEAPBLOCKS_PER_PAGE
}

fn byte_and_shift(heap_blk: u32) -> (usize, u32) {
    let in_page = heap_blk % HEAPBLOCKS_PER_PAGE;
    (MAP_START + (in_page / 4) as usize, (in_page % 4) * 2)
}

/// `visibilitymap_set` in redo: ORs `flags` in; true when the bits changed (only then does
/// PostgreSQL stamp the VM page's LSN).
pub(crate) fn set(page: &mut Page, heap_blk: u32, flags: u8) -> bool {
    let (byte, shift) = byte_and_shift(heap_blk);
    if flags != (page[byte] >> shift) & VISIBILITYMAP_VALID_BITS {
        page[byte] |= flags << shift;
        true
    } else {
        false
    }
}

/// `visibilitymap_clear`: clears `flags` for `heap_blk`. A VM page that does not exist yet
/// is created initialised, as `vm_readbuf(.., extend = true)` does during redo.
pub(crate) fn clear(page: &mut Page, heap_blk: u32, flags: u8) {
    if page.is_new() {
        page.init(0);
    }
    let (byte, shift) = byte_and_shift(heap_blk);
    page[byte] &= !(flags << shift);
}

/// `visibilitymap_prepare_truncate`: with the heap cut to `nheapblocks`, clears the bits
/// of the truncated heap blocks on the last remaining VM page. Returns that page's block
/// number and the new number of VM blocks.
pub(crate) fn truncate_tail(page: &mut Page, nheapblocks: u32) {
    let (byte, shift) = byte_and_shift(nheapblocks);
    if byte + 1 < page.len() {
        page[byte + 1..].fill(0);
    }
    page[byte] &= ((1u16 << shift) - 1) as u8;
}

/// New number of VM blocks after truncating the heap to `nheapblocks`, and the partial
/// last page whose tail bits are cleared (if the cut is not on a page boundary).
pub(crate) fn truncated_size(nheapblocks: u32) -> (u32, Option<u32>) {
    let blk = map_block(nheapblocks);
    if !nheapblocks.is_multiple_of(HEAPBLOCKS_PER_PAGE) {
        (blk + 1, Some(blk))
    } else {
        (blk, None)
    }
}

/// Whether a replayed VM page differs from PostgreSQL's (a data file page, or a
/// consistency image) only by bits PostgreSQL's WAL never carried. `CREATE DATABASE` with the
/// WAL_LOG strategy logs every copied page, VM pages included, with
/// `log_newpage_buffer(buf, page_std = true)` (`RelationCopyStorageUsingBuffer`,
/// storage/buffer/bufmgr.c); a VM page is initialised with no special space
/// (`PageInit(page, BLCKSZ, 0)` in `vm_readbuf`), so pd_lower = 24 and pd_upper = 8192 and
/// `XLogRecordAssemble` leaves out everything between them as the hole: the image restores
/// an all-zero bitmap, on this replay as on any standby, while the primary kept its bits.
///
/// True when, with `hole` the (offset, length) of the image the replayed page was restored
/// from: the headers agree except pd_lsn and pd_checksum (what the VM mask ignores), every
/// bit set in `replayed` is set in `theirs` too, and every byte that differs lies in the hole.
/// A bit set in the replay and clear on the primary, or any other difference, is a real
/// mismatch.
pub(crate) fn bits_only_missing_in_hole(replayed: &Page, theirs: &Page, hole: (u16, u16)) -> bool {
    // pd_lsn (8 bytes) and pd_checksum (2) are masked; pd_flags to pd_prune_xid must agree.
    if replayed[10..SIZE_OF_PAGE_HEADER] != theirs[10..SIZE_OF_PAGE_HEADER] {
        return false;
    }
    let (from, len) = (usize::from(hole.0), usize::from(hole.1));
    let in_hole = from..from + len;
    let mut differs = false;
    for (i, (r, t)) in replayed
        .iter()
        .zip(theirs.iter())
        .enumerate()
        .skip(SIZE_OF_PAGE_HEADER)
    {
        if r == t {
            continue;
        }
        if r & !t != 0 || !in_hole.contains(&i) {
            return false;
        }
        differs = true;
    }
    differs
}

/// One VM clear a heap record performs without referencing the VM page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct VmClear {
    pub vm_page: PageKey,
    pub heap_blk: u32,
    pub flags: u8,
}

/// The VM clears `rec` performs (heap_xlog_insert/delete/update/lock, heap_xlog_lock_updated
/// and heap_xlog_multi_insert). Records that do not parse yield none (their redo reports
/// the error).
pub(crate) fn implicit_vm_clears(rec: &DecodedRecord) -> Vec<VmClear> {
    let mut out = Vec::new();
    if !may_clear_vm(rec) {
        return out;
    }
    let Some(b0) = rec.block(0) else {
        return out;
    };
    let mut push = |heap_blk: u32, flags: u8| {
        out.push(VmClear {
            vm_page: PageKey {
                rel: b0.rel,
                fork: ForkNumber::VM,
                block: map_block(heap_blk),
            },
            heap_blk,
            flags,
        })
    };
    match rec.rmid() {
        RM_HEAP_ID => match parse_heap(rec) {
            Ok(HeapRecord::Insert(x)) if x.flags & XLH_INSERT_ALL_VISIBLE_CLEARED != 0 => {
                push(b0.block, VISIBILITYMAP_VALID_BITS)
            }
            Ok(HeapRecord::Delete(x)) if x.flags & XLH_DELETE_ALL_VISIBLE_CLEARED != 0 => {
                push(b0.block, VISIBILITYMAP_VALID_BITS)
            }
            Ok(HeapRecord::Update(x)) => {
                let oldblk = rec.block(1).map_or(b0.block, |b| b.block);
                if x.flags & XLH_UPDATE_OLD_ALL_VISIBLE_CLEARED != 0 {
                    push(oldblk, VISIBILITYMAP_VALID_BITS);
                }
                if x.flags & XLH_UPDATE_NEW_ALL_VISIBLE_CLEARED != 0 {
                    push(b0.block, VISIBILITYMAP_VALID_BITS);
                }
            }
            Ok(HeapRecord::Lock(x)) if x.flags & XLH_LOCK_ALL_FROZEN_CLEARED != 0 => {
                push(b0.block, VISIBILITYMAP_ALL_FROZEN)
            }
            _ => {}
        },
        RM_HEAP2_ID => match parse_heap2(rec) {
            Ok(Heap2Record::MultiInsert { flags, .. })
                if flags & XLH_INSERT_ALL_VISIBLE_CLEARED != 0 =>
            {
                push(b0.block, VISIBILITYMAP_VALID_BITS)
            }
            Ok(Heap2Record::LockUpdated { flags, .. })
                if flags & XLH_LOCK_ALL_FROZEN_CLEARED != 0 =>
            {
                push(b0.block, VISIBILITYMAP_ALL_FROZEN)
            }
            _ => {}
        },
        _ => {}
    }
    out
}

/// Whether the record's flags byte has a visibility-map-clearing bit: a look at one byte
/// of the main data, where the record's struct has its flags (xl_heap_insert: offset 2;
/// xl_heap_delete, xl_heap_update, xl_heap_lock, xl_heap_lock_updated: 7; the multi-insert:
/// 0). Most heap records clear nothing, and this runs for every one of them (the full
/// parse, only when a bit is set, decides).
#[inline]
pub(crate) fn may_clear_vm(rec: &DecodedRecord) -> bool {
    let op = rec.rmgr_info() & XLOG_HEAP_OPMASK;
    let (at, bits) = match rec.rmid() {
        RM_HEAP_ID => match op {
            XLOG_HEAP_INSERT => (2, XLH_INSERT_ALL_VISIBLE_CLEARED),
            XLOG_HEAP_DELETE => (7, XLH_DELETE_ALL_VISIBLE_CLEARED),
            XLOG_HEAP_UPDATE | XLOG_HEAP_HOT_UPDATE => (
                7,
                XLH_UPDATE_OLD_ALL_VISIBLE_CLEARED | XLH_UPDATE_NEW_ALL_VISIBLE_CLEARED,
            ),
            XLOG_HEAP_LOCK => (7, XLH_LOCK_ALL_FROZEN_CLEARED),
            _ => return false,
        },
        RM_HEAP2_ID => match op {
            XLOG_HEAP2_MULTI_INSERT => (0, XLH_INSERT_ALL_VISIBLE_CLEARED),
            XLOG_HEAP2_LOCK_UPDATED => (7, XLH_LOCK_ALL_FROZEN_CLEARED),
            _ => return false,
        },
        _ => return false,
    };
    // A record too short for its struct: let the full parse decide (it reports nothing).
    rec.main_data().get(at).is_none_or(|f| f & bits != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_bits_missing_in_the_image_hole_are_not_a_mismatch() {
        let mut primary = [0u8; crate::wal::page::BLCKSZ];
        primary.init(0);
        for b in 0..400 {
            set(&mut primary, b, VISIBILITYMAP_VALID_BITS);
        }
        // The replay: the image restored the header only; VACUUM then set heap block 7's
        // bits again (also on the primary).
        let mut replayed = [0u8; crate::wal::page::BLCKSZ];
        replayed.init(0);
        replayed.set_lsn(crate::wal::page::Lsn(0x1234));
        set(&mut replayed, 7, VISIBILITYMAP_VALID_BITS);
        let hole = (24, 8168);
        assert!(bits_only_missing_in_hole(&replayed, &primary, hole));
        // Not from a hole covering the bits.
        assert!(!bits_only_missing_in_hole(&replayed, &primary, (24, 16)));
        // Equal pages are not in the category.
        assert!(!bits_only_missing_in_hole(&primary, &primary, hole));
        // A bit set in the replay and clear on the primary is a mismatch.
        let mut cleared = primary;
        clear(&mut cleared, 7, VISIBILITYMAP_VALID_BITS);
        assert!(!bits_only_missing_in_hole(&replayed, &cleared, hole));
        // So is a header difference.
        let mut other_header = primary;
        other_header[12] ^= 0x08;
        assert!(!bits_only_missing_in_hole(&replayed, &other_header, hole));
    }

    /// The bits of `heap_blk` on its VM page.
    fn get(page: &Page, heap_blk: u32) -> u8 {
        let (byte, shift) = byte_and_shift(heap_blk);
        (page[byte] >> shift) & VISIBILITYMAP_VALID_BITS
    }

    #[test]
    fn geometry() {
        assert_eq!(HEAPBLOCKS_PER_PAGE, 32672);
        assert_eq!(map_block(32671), 0);
        assert_eq!(map_block(32672), 1);
        assert_eq!(byte_and_shift(5), (24 + 1, 2));
    }

    #[test]
    fn set_clear_truncate() {
        let mut p = Box::new([0u8; crate::wal::page::BLCKSZ]);
        p.init(0);
        assert!(set(&mut p, 6, VISIBILITYMAP_VALID_BITS));
        assert!(!set(&mut p, 6, VISIBILITYMAP_VALID_BITS));
        assert_eq!(get(&p, 6), 3);
        clear(&mut p, 6, VISIBILITYMAP_ALL_FROZEN);
        assert_eq!(get(&p, 6), 1);
        set(&mut p, 4, 3);
        set(&mut p, 100, 3);
        truncate_tail(&mut p, 5);
        assert_eq!(get(&p, 4), 3);
        assert_eq!(get(&p, 6), 0);
        assert_eq!(get(&p, 100), 0);
        assert_eq!(truncated_size(5), (1, Some(0)));
        assert_eq!(truncated_size(32672), (1, None));
        // A VM page that does not exist yet is initialised by a clear.
        let mut z = Box::new([0u8; crate::wal::page::BLCKSZ]);
        clear(&mut z, 1, 3);
        assert_eq!(z.lower(), 24);
    }
}
