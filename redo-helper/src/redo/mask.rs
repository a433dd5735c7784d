//! Page masks for verification, equivalent to PostgreSQL 15's `rm_mask` functions:
//! `heap_mask` (`access/heap/heapam.c`), `btree_mask` (`access/nbtree/nbtxlog.c`),
//! `seq_mask` (`commands/sequence.c`), `generic_mask` (`access/transam/generic_xlog.c`),
//! `brin_mask` (`access/brin/brin_xlog.c`), `gin_mask` (`access/gin/ginxlog.c`),
//! `gist_mask` (`access/gist/gistxlog.c`), `hash_mask` (`access/hash/hash_xlog.c`),
//! `spg_mask` (`access/spgist/spgxlog.c`) and the
//! helpers of `access/common/bufmask.c`.
//! They blank out what may legitimately differ between a replayed page and the primary's
//! (LSN, checksum, hint bits, unused space, ...). `MASK_MARKER` is 0.

use super::page::{
    ITEM_ID_SIZE, LP_UNUSED, PD_ALL_VISIBLE, PD_HAS_FREE_LINES, PD_PAGE_FULL, Page, PageLayout,
    SIZE_OF_PAGE_HEADER, SIZEOF_HEAP_TUPLE_HEADER, get_u16, lp_pos, maxalign, put_u16, put_u32,
};
use super::tuple::*;
use crate::wal::block::ForkNumber;
use crate::wal::page::BLCKSZ;
use crate::wal::rmgr;

const MASK_MARKER: u8 = 0;

/// `mask_page_lsn_and_checksum`.
pub(crate) fn mask_page_lsn_and_checksum(page: &mut Page) {
    page[0..10].fill(MASK_MARKER);
}

/// `mask_page_hint_bits`: pd_prune_xid, PD_PAGE_FULL, PD_HAS_FREE_LINES and PD_ALL_VISIBLE
/// (redo does not set PD_ALL_VISIBLE when the page LSN is past the VISIBLE record).
pub(crate) fn mask_page_hint_bits(page: &mut Page) {
    page.set_prune_xid(MASK_MARKER as u32);
    let f = page.flags() & !(PD_PAGE_FULL | PD_HAS_FREE_LINES | PD_ALL_VISIBLE);
    page.set_flags(f);
}

/// `mask_unused_space`: the hole between pd_lower and pd_upper. A page whose pointers are
/// not sane is left alone (PostgreSQL raises an error; the comparison will then differ).
pub(crate) fn mask_unused_space(page: &mut Page) {
    let (lower, upper, special) = (
        page.lower() as usize,
        page.upper() as usize,
        page.special() as usize,
    );
    if lower > upper || special < upper || lower < SIZE_OF_PAGE_HEADER || special > BLCKSZ {
        return;
    }
    page[lower..upper].fill(MASK_MARKER);
}

/// `mask_lp_flags`: used line pointers become LP_UNUSED (keeping offset and length).
pub(crate) fn mask_lp_flags(page: &mut Page) {
    for off in 1..=page.max_offset() {
        if let Ok(id) = page.item_id(off)
            && id.is_used()
        {
            let _ = page.set_item_id(off, id.with_flags(LP_UNUSED));
        }
    }
}

/// `mask_page_content`: everything after the header, and pd_lower/pd_upper (`gin_mask`
/// uses it for deleted pages, `hash_mask` for unused ones).
pub(crate) fn mask_page_content(page: &mut Page) {
    page[SIZE_OF_PAGE_HEADER..].fill(MASK_MARKER);
    put_u16(page, 12, 0);
    put_u16(page, 14, 0);
}

/// `heap_mask`.
pub(crate) fn heap_mask(page: &mut Page, blkno: u32) {
    mask_page_lsn_and_checksum(page);
    mask_page_hint_bits(page);
    mask_unused_space(page);
    for off in 1..=page.max_offset() {
        let pos = lp_pos(off);
        if pos + ITEM_ID_SIZE > BLCKSZ {
            break;
        }
        let Ok(id) = page.item_id(off) else { break };
        let start = id.off() as usize;
        if id.is_normal()
            && start + SIZEOF_HEAP_TUPLE_HEADER <= BLCKSZ
            && start >= SIZE_OF_PAGE_HEADER
        {
            let t = &mut page[start..start + SIZEOF_HEAP_TUPLE_HEADER];
            let mut im = get_u16(t, T_INFOMASK);
            // Hint bits can be set without WAL; once xmin is frozen, only xmax's matter.
            if !xmin_frozen(im) {
                im &= !HEAP_XACT_MASK;
            } else {
                im &= !(HEAP_XMAX_INVALID | HEAP_XMAX_COMMITTED);
            }
            put_u16(t, T_INFOMASK, im);
            // Redo sets the command id to FirstCommandId.
            put_u32(t, T_FIELD3, MASK_MARKER as u32);
            // A speculative insertion's ctid holds a token that is never WAL-logged.
            if get_u16(t, T_CTID + 4) == SPEC_TOKEN_OFFSET_NUMBER {
                put_u16(t, T_CTID, (blkno >> 16) as u16);
                put_u16(t, T_CTID + 2, blkno as u16);
                put_u16(t, T_CTID + 4, off);
            }
        }
        // Padding after a tuple whose length is not MAXALIGNed.
        if id.has_storage() {
            let len = id.len() as usize;
            let end = (start + maxalign(len)).min(BLCKSZ);
            if start + len <= end {
                page[start + len..end].fill(MASK_MARKER);
            }
        }
    }
}

// btpo_flags bits masked by `btree_mask`.
use super::btree::{BTP_HAS_GARBAGE, BTP_LEAF, BTP_SPLIT_END};

/// `btree_mask`.
pub(crate) fn btree_mask(page: &mut Page) {
    mask_page_lsn_and_checksum(page);
    mask_page_hint_bits(page);
    mask_unused_space(page);
    let special = page.special() as usize;
    if special + 16 > BLCKSZ {
        return;
    }
    let flags = get_u16(page, special + 12);
    // LP_DEAD can be set on leaf items without WAL (_bt_killitems, _bt_check_unique).
    if flags & BTP_LEAF != 0 {
        mask_lp_flags(page);
    }
    // BTP_HAS_GARBAGE is an unlogged hint; replay of a split leaves BTP_SPLIT_END and the
    // cycle id unset.
    put_u16(
        page,
        special + 12,
        flags & !(BTP_HAS_GARBAGE | BTP_SPLIT_END),
    );
    put_u16(page, special + 14, 0);
}

/// `seq_mask`.
pub(crate) fn seq_mask(page: &mut Page) {
    mask_page_lsn_and_checksum(page);
    mask_unused_space(page);
}

/// `generic_mask`: LSN, checksum and the hole only. PostgreSQL 15 does not call
/// `mask_page_hint_bits` here: generic WAL is a byte delta of the whole page outside the
/// hole, so pd_prune_xid and pd_flags are replayed exactly like any other byte.
pub(crate) fn generic_mask(page: &mut Page) {
    mask_page_lsn_and_checksum(page);
    mask_unused_space(page);
}

/// `BLOOM_PAGE_ID` (`contrib/bloom/bloom.h`), the last field of the bloom special space.
const BLOOM_PAGE_ID: u16 = 0xFF83;

/// `brin_mask`: hint bits and LSN as everywhere; the hole between pd_lower and pd_upper
/// only on regular pages, and on the metapage once pd_lower is past the header (pre-v11
/// metapages left it at 24). Revmap pages keep their TID array in that "hole" (pd_lower
/// stays 24), so it is compared.
///
/// Last, the `BRIN_EVACUATE_PAGE` flag, on any BRIN page: `brin_start_evacuating_page`
/// (`brin_pageops.c`) sets it with `MarkBufferDirtyHint`, without WAL, on the regular page
/// the revmap is about to take over, and the UPDATE records that then move its tuples away
/// carry consistency images with it that no redo reproduces.
pub(crate) fn brin_mask(page: &mut Page) {
    use super::brin::{
        BRIN_EVACUATE_PAGE, BRIN_PAGETYPE_META, BRIN_PAGETYPE_REGULAR, page_flags_pos, page_type,
    };
    mask_page_lsn_and_checksum(page);
    mask_page_hint_bits(page);
    let t = page_type(page);
    if t == BRIN_PAGETYPE_REGULAR
        || (t == BRIN_PAGETYPE_META && page.lower() as usize > SIZE_OF_PAGE_HEADER)
    {
        mask_unused_space(page);
    }
    let at = page_flags_pos();
    let flags = get_u16(page, at);
    put_u16(page, at, flags & !BRIN_EVACUATE_PAGE);
}

/// `gin_mask`: LSN, checksum and hint bits; a deleted page (re-initialised empty by the
/// redo of DELETE_LISTPAGE, only flagged by DELETE_PAGE) is compared by its header only,
/// other pages have their hole masked once pd_lower is past the header.
pub(crate) fn gin_mask(page: &mut Page) {
    use super::gin::{GIN_DELETED, GIN_SPECIAL_SIZE};
    mask_page_lsn_and_checksum(page);
    mask_page_hint_bits(page);
    // GinPageGetOpaque reads at pd_special; a page without room for it is not masked
    // further (the comparison then shows the difference).
    let special = page.special() as usize;
    if special + GIN_SPECIAL_SIZE > BLCKSZ {
        return;
    }
    if get_u16(page, special + 6) & GIN_DELETED != 0 {
        mask_page_content(page);
    } else if page.lower() as usize > SIZE_OF_PAGE_HEADER {
        mask_unused_space(page);
    }
}

/// `gist_mask`: LSN, checksum, hint bits and the hole; then the NSN ("nothing but a special
/// purpose LSN"), F_FOLLOW_RIGHT (set on every page: the left child loses it after the WAL
/// record is written, see `gistplacetopage`), the line pointer flags of leaves (LP_DEAD is
/// set without WAL by `gistkillitems`) and F_HAS_GARBAGE (redo never sets it).
///
/// Unlike PostgreSQL's, it also masks F_TUPLES_DELETED: minor releases of one major version
/// disagree about it (17.10 and 18.4 set it when VACUUM or its redo deletes leaf tuples;
/// 15.20 and 17.12 removed `GistMarkTuplesDeleted`), the WAL does not say which behaviour
/// wrote it, and no reader looks at it (it is the deprecated "old-style VACUUM FULL" flag).
/// The redo does not set it.
pub(crate) fn gist_mask(page: &mut Page) {
    use super::gist::{
        F_FOLLOW_RIGHT, F_HAS_GARBAGE, F_LEAF, F_TUPLES_DELETED, GIST_SPECIAL_SIZE, OPAQUE_FLAGS,
        OPAQUE_NSN,
    };
    mask_page_lsn_and_checksum(page);
    mask_page_hint_bits(page);
    mask_unused_space(page);
    // GistPageGetOpaque reads at pd_special; a page without room for it is not masked
    // further (the comparison then shows the difference).
    let special = page.special() as usize;
    if special + GIST_SPECIAL_SIZE > BLCKSZ {
        return;
    }
    page[special + OPAQUE_NSN..special + OPAQUE_NSN + 8].fill(MASK_MARKER);
    let flags = get_u16(page, special + OPAQUE_FLAGS) | F_FOLLOW_RIGHT;
    if flags & F_LEAF != 0 {
        mask_lp_flags(page);
    }
    put_u16(
        page,
        special + OPAQUE_FLAGS,
        flags & !(F_HAS_GARBAGE | F_TUPLES_DELETED),
    );
}

/// `hash_mask`: LSN, checksum, hint bits and the hole on every hash page; an unused page
/// (a freed overflow page, or one `_hash_alloc_buckets` wrote ahead) entirely; on bucket
/// and overflow pages the line pointer flags (`_hash_kill_items` sets LP_DEAD without WAL);
/// and on every page the `LH_PAGE_HAS_DEAD_TUPLES` hint it sets with them.
pub(crate) fn hash_mask(page: &mut Page) {
    use super::hash::{
        HASH_SPECIAL_SIZE, LH_BUCKET_PAGE, LH_OVERFLOW_PAGE, LH_PAGE_HAS_DEAD_TUPLES, LH_PAGE_TYPE,
        LH_UNUSED_PAGE, page_flag_at,
    };
    mask_page_lsn_and_checksum(page);
    mask_page_hint_bits(page);
    mask_unused_space(page);
    // HashPageGetOpaque reads at pd_special; a page without room for it is not masked
    // further (the comparison then shows the difference).
    let special = page.special() as usize;
    if special + HASH_SPECIAL_SIZE > BLCKSZ {
        return;
    }
    let page_type = page_flag_at(page, special) & LH_PAGE_TYPE;
    if page_type == LH_UNUSED_PAGE {
        mask_page_content(page);
    } else if page_type == LH_BUCKET_PAGE || page_type == LH_OVERFLOW_PAGE {
        mask_lp_flags(page);
    }
    // hasho_flag, after hasho_prevblkno, hasho_nextblkno and hasho_bucket.
    let at = special + 12;
    let flag = page_flag_at(page, special);
    put_u16(page, at, flag & !LH_PAGE_HAS_DEAD_TUPLES);
}

/// `spg_mask`: LSN, checksum and hint bits, then the hole between pd_lower and pd_upper
/// when pd_lower is at least the header size: PostgreSQL 15.20's test is
/// `pd_lower >= SizeOfPageHeaderData` (the installed server's `spg_mask` compares pd_lower
/// with 23, `cmpw $0x17; ja`), so an emptied page has its hole masked too, where `gin_mask`
/// and `brin_mask` want pd_lower past the header. Nothing AM-specific: SP-GiST changes no
/// page byte without WAL but the metapage's cache, which no record compares
/// (`spgist::mask_last_used_pages` covers the data-file comparisons).
pub(crate) fn spg_mask(page: &mut Page) {
    mask_page_lsn_and_checksum(page);
    mask_page_hint_bits(page);
    if page.lower() as usize >= SIZE_OF_PAGE_HEADER {
        mask_unused_space(page);
    }
}

/// Which mask applies to a page.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum PageKind {
    Heap,
    Btree,
    Sequence,
    /// Pages of access methods that write generic WAL (bloom, rum, pgvector).
    Generic,
    Brin,
    Gin,
    Gist,
    Hash,
    SpGist,
    VisibilityMap,
    FreeSpaceMap,
    /// Pages of rmgrs the engine does not replay, or unknown: generic masks.
    Other,
}

impl PageKind {
    /// The kind of page a record of `rmid` changes in `fork`.
    pub(crate) fn of_rmgr(rmid: u8, fork: ForkNumber) -> Option<PageKind> {
        if fork == ForkNumber::VM {
            return Some(PageKind::VisibilityMap);
        }
        if fork == ForkNumber::FSM {
            return Some(PageKind::FreeSpaceMap);
        }
        match rmid {
            rmgr::RM_HEAP_ID | rmgr::RM_HEAP2_ID => Some(PageKind::Heap),
            rmgr::RM_BTREE_ID => Some(PageKind::Btree),
            rmgr::RM_SEQ_ID => Some(PageKind::Sequence),
            rmgr::RM_GENERIC_ID => Some(PageKind::Generic),
            rmgr::RM_BRIN_ID => Some(PageKind::Brin),
            rmgr::RM_GIN_ID => Some(PageKind::Gin),
            rmgr::RM_GIST_ID => Some(PageKind::Gist),
            rmgr::RM_HASH_ID => Some(PageKind::Hash),
            rmgr::RM_SPGIST_ID => Some(PageKind::SpGist),
            rmgr::RM_XLOG_ID => None,
            _ => Some(PageKind::Other),
        }
    }

    /// A guess from the page itself (for pages only ever written by FPIs or the base
    /// backup): the special space size and its magic numbers tell the access method, as
    /// pageinspect does.
    pub(crate) fn guess(page: &Page, fork: ForkNumber) -> PageKind {
        if fork == ForkNumber::VM {
            return PageKind::VisibilityMap;
        }
        if fork == ForkNumber::FSM {
            return PageKind::FreeSpaceMap;
        }
        let special = page.special() as usize;
        match BLCKSZ.saturating_sub(special) {
            0 => PageKind::Heap,
            8 if super::page::get_u32(page, special) == super::seq::SEQ_MAGIC => PageKind::Sequence,
            // BRIN page types (0xF091..=0xF093) end the page; GIN's 8-byte special space
            // ends with its flags, which stay below 0x100.
            8 if (super::brin::BRIN_PAGETYPE_META..=super::brin::BRIN_PAGETYPE_REGULAR)
                .contains(&super::brin::page_type(page)) =>
            {
                PageKind::Brin
            }
            // SP-GiST's 8-byte special space ends with SPGIST_PAGE_ID (0xFF82).
            8 if get_u16(page, BLCKSZ - 2) == super::spgist::SPGIST_PAGE_ID => PageKind::SpGist,
            8 if get_u16(page, BLCKSZ - 2) < 0x100 => PageKind::Gin,
            16 => {
                // Hash and GiST keep a page id in the last two bytes; btree keeps its cycle
                // id there, which never reaches 0xFF80. contrib bloom keeps BLOOM_PAGE_ID
                // (0xFF83, bloom.h) there and writes generic WAL. rum has no page id and is
                // guessed as btree: check and repair take the mask from the page's last
                // record instead when the WAL changed it (`check::page_kind_hint`).
                let id = get_u16(page, BLCKSZ - 2);
                if id == BLOOM_PAGE_ID {
                    PageKind::Generic
                } else if id == super::gist::GIST_PAGE_ID {
                    PageKind::Gist
                } else if id == super::hash::HASHO_PAGE_ID {
                    PageKind::Hash
                } else if id >= 0xFF80 {
                    PageKind::Other
                } else {
                    PageKind::Btree
                }
            }
            _ => PageKind::Other,
        }
    }
}

/// Applies the mask for `kind` (block number needed by heap_mask).
pub(crate) fn mask_page(page: &mut Page, kind: PageKind, blkno: u32) {
    match kind {
        PageKind::Heap => heap_mask(page, blkno),
        PageKind::Btree => btree_mask(page),
        PageKind::Sequence => seq_mask(page),
        PageKind::Generic => generic_mask(page),
        PageKind::Brin => brin_mask(page),
        PageKind::Gin => gin_mask(page),
        PageKind::Gist => gist_mask(page),
        PageKind::Hash => hash_mask(page),
        PageKind::SpGist => spg_mask(page),
        // VM bits are always WAL-logged; only LSN and checksum may differ.
        PageKind::VisibilityMap => mask_page_lsn_and_checksum(page),
        PageKind::FreeSpaceMap | PageKind::Other => {
            mask_page_lsn_and_checksum(page);
            mask_page_hint_bits(page);
            mask_unused_space(page);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::redo::page::{PAI_OVERWRITE, PageLayout};

    #[test]
    fn heap_mask_hides_hint_bits_and_cid() {
        let mut a = Box::new([0u8; BLCKSZ]);
        a.init(0);
        let mut t = vec![0u8; 27];
        t[T_HOFF] = 24;
        a.add_item(&t, 1, PAI_OVERWRITE).unwrap();
        let mut b = a.clone();
        // Hint bits, cid, prune xid, LSN, flags differ.
        let off = b.item_id(1).unwrap().off() as usize;
        put_u16(&mut b[..], off + T_INFOMASK, HEAP_XMIN_COMMITTED);
        put_u32(&mut b[..], off + T_FIELD3, 7);
        b.set_prune_xid(1234);
        b.set_lsn(crate::wal::Lsn(99));
        b.set_flags(PD_ALL_VISIBLE);
        // Padding after the 27-byte tuple.
        b[off + 30] = 5;
        heap_mask(&mut a, 0);
        heap_mask(&mut b, 0);
        assert_eq!(a[..], b[..]);
    }

    #[test]
    fn btree_mask_hides_lp_dead_on_leaf() {
        let mut a = Box::new([0u8; BLCKSZ]);
        a.init(16);
        put_u16(&mut a[..], BLCKSZ - 4, BTP_LEAF);
        a.add_item(&[0u8; 16], 1, 0).unwrap();
        let mut b = a.clone();
        let id = b.item_id(1).unwrap();
        b.set_item_id(1, id.with_flags(crate::redo::page::LP_DEAD))
            .unwrap();
        put_u16(&mut b[..], BLCKSZ - 4, BTP_LEAF | BTP_HAS_GARBAGE);
        put_u16(&mut b[..], BLCKSZ - 2, 77);
        btree_mask(&mut a);
        btree_mask(&mut b);
        assert_eq!(a[..], b[..]);
    }

    #[test]
    fn generic_mask_keeps_hint_bits_but_hides_hole_and_lsn() {
        let mut a = Box::new([0u8; BLCKSZ]);
        a.init(16);
        a.add_item(&[3u8; 20], 1, 0).unwrap();
        let mut b = a.clone();
        b.set_lsn(crate::wal::Lsn(42));
        b.set_checksum(9);
        let hole = a.lower() as usize + 10;
        b[hole] = 1;
        generic_mask(&mut a);
        generic_mask(&mut b);
        assert_eq!(a[..], b[..]);
        // pd_prune_xid and pd_flags are part of the delta: a difference there is real.
        b.set_flags(PD_PAGE_FULL);
        generic_mask(&mut b);
        assert_ne!(a[..], b[..]);
    }

    #[test]
    fn brin_mask_keeps_revmap_contents() {
        use crate::redo::brin::{BRIN_PAGETYPE_REGULAR, BRIN_PAGETYPE_REVMAP};
        let mut a = Box::new([0u8; BLCKSZ]);
        a.init(8);
        put_u16(&mut a[..], BLCKSZ - 2, BRIN_PAGETYPE_REVMAP);
        assert_eq!(PageKind::guess(&a, ForkNumber::MAIN), PageKind::Brin);
        let mut b = a.clone();
        // A revmap TID differs: the mask must not hide it.
        put_u16(&mut b[..], SIZE_OF_PAGE_HEADER + 4, 3);
        let (mut ma, mut mb) = (a.clone(), b.clone());
        brin_mask(&mut ma);
        brin_mask(&mut mb);
        assert_ne!(ma[..], mb[..]);
        // On a regular page the same bytes are free space and masked, and so is the
        // unlogged BRIN_EVACUATE_PAGE flag.
        put_u16(&mut a[..], BLCKSZ - 2, BRIN_PAGETYPE_REGULAR);
        put_u16(&mut b[..], BLCKSZ - 2, BRIN_PAGETYPE_REGULAR);
        put_u16(&mut b[..], BLCKSZ - 4, 1);
        brin_mask(&mut a);
        brin_mask(&mut b);
        assert_eq!(a[..], b[..]);
    }

    #[test]
    fn guesses_kind() {
        let mut p = Box::new([0u8; BLCKSZ]);
        p.init(0);
        assert_eq!(PageKind::guess(&p, ForkNumber::MAIN), PageKind::Heap);
        p.init(16);
        assert_eq!(PageKind::guess(&p, ForkNumber::MAIN), PageKind::Btree);
        put_u16(&mut p[..], BLCKSZ - 2, crate::redo::hash::HASHO_PAGE_ID);
        assert_eq!(PageKind::guess(&p, ForkNumber::MAIN), PageKind::Hash);
        put_u16(&mut p[..], BLCKSZ - 2, BLOOM_PAGE_ID);
        assert_eq!(PageKind::guess(&p, ForkNumber::MAIN), PageKind::Generic);
        p.init(4);
        put_u32(&mut p[..], BLCKSZ - 8, 0x1717);
        assert_eq!(PageKind::guess(&p, ForkNumber::MAIN), PageKind::Sequence);
        // GIN: an 8-byte special space ending in flags; SP-GiST's page id is not GIN.
        p.init(8);
        put_u16(&mut p[..], BLCKSZ - 2, crate::redo::gin::GIN_DATA);
        assert_eq!(PageKind::guess(&p, ForkNumber::MAIN), PageKind::Gin);
        put_u16(&mut p[..], BLCKSZ - 2, 0xFF82);
        assert_eq!(PageKind::guess(&p, ForkNumber::MAIN), PageKind::SpGist);
        put_u16(&mut p[..], BLCKSZ - 2, 0xFF81);
        assert_eq!(PageKind::guess(&p, ForkNumber::MAIN), PageKind::Other);
    }

    #[test]
    fn gin_mask_hides_deleted_page_contents_only() {
        use crate::redo::gin::GIN_DELETED;
        let mut a = Box::new([0u8; BLCKSZ]);
        a.init(8);
        a.add_item(&[3u8; 16], 1, 0).unwrap();
        let mut b = a.clone();
        let at = b.upper() as usize;
        b[at] = 9;
        let (mut ma, mut mb) = (a.clone(), b.clone());
        gin_mask(&mut ma);
        gin_mask(&mut mb);
        assert_ne!(ma[..], mb[..], "a live page's tuples are compared");
        put_u16(&mut a[..], BLCKSZ - 2, GIN_DELETED);
        put_u16(&mut b[..], BLCKSZ - 2, GIN_DELETED);
        gin_mask(&mut a);
        gin_mask(&mut b);
        assert_eq!(a[..], b[..]);
    }

    #[test]
    fn gist_mask_hides_nsn_follow_right_garbage_and_leaf_lp_flags() {
        use crate::redo::gist::{F_FOLLOW_RIGHT, F_HAS_GARBAGE, F_LEAF, GIST_PAGE_ID};
        let mut a = Box::new([0u8; BLCKSZ]);
        a.init(16);
        put_u16(&mut a[..], BLCKSZ - 2, GIST_PAGE_ID);
        put_u16(&mut a[..], BLCKSZ - 4, F_LEAF);
        a.add_item(&[3u8; 16], 1, 0).unwrap();
        assert_eq!(PageKind::guess(&a, ForkNumber::MAIN), PageKind::Gist);
        let mut b = a.clone();
        put_u32(&mut b[..], BLCKSZ - 16, 1);
        put_u32(&mut b[..], BLCKSZ - 12, 0x4000);
        put_u16(
            &mut b[..],
            BLCKSZ - 4,
            F_LEAF | F_FOLLOW_RIGHT | F_HAS_GARBAGE,
        );
        let id = b.item_id(1).unwrap();
        b.set_item_id(1, id.with_flags(crate::redo::page::LP_DEAD))
            .unwrap();
        let (mut ma, mut mb) = (a.clone(), b.clone());
        gist_mask(&mut ma);
        gist_mask(&mut mb);
        assert_eq!(ma[..], mb[..]);
        // The right link, the other flags and the tuples are compared.
        for change in [BLCKSZ - 8, BLCKSZ - 4, BLCKSZ - 1] {
            let mut c = a.clone();
            c[change] ^= 2;
            let mut mc = c.clone();
            gist_mask(&mut mc);
            assert_ne!(ma[..], mc[..], "byte {change}");
        }
        let mut c = a.clone();
        let at = c.upper() as usize;
        c[at + 9] = 7;
        gist_mask(&mut c);
        assert_ne!(ma[..], c[..]);
        // On an internal page the line pointer flags are compared.
        put_u16(&mut a[..], BLCKSZ - 4, 0);
        put_u16(&mut b[..], BLCKSZ - 4, 0);
        gist_mask(&mut a);
        gist_mask(&mut b);
        assert_ne!(a[..], b[..]);
    }

    #[test]
    fn hash_mask_hides_unlogged_dead_marks_and_unused_pages() {
        use crate::redo::hash::{
            LH_BITMAP_PAGE, LH_BUCKET_PAGE, LH_PAGE_HAS_DEAD_TUPLES, LH_UNUSED_PAGE,
        };
        let flag_at = BLCKSZ - 4;
        let mut a = Box::new([0u8; BLCKSZ]);
        a.init(16);
        put_u16(&mut a[..], flag_at, LH_BUCKET_PAGE);
        a.add_item(&[3u8; 16], 1, 0).unwrap();
        let mut b = a.clone();
        // _hash_kill_items: LP_DEAD and the page hint, without WAL.
        let id = b.item_id(1).unwrap();
        b.set_item_id(1, id.with_flags(crate::redo::page::LP_DEAD))
            .unwrap();
        put_u16(
            &mut b[..],
            flag_at,
            LH_BUCKET_PAGE | LH_PAGE_HAS_DEAD_TUPLES,
        );
        let (mut ma, mut mb) = (a.clone(), b.clone());
        hash_mask(&mut ma);
        hash_mask(&mut mb);
        assert_eq!(ma[..], mb[..]);
        // A tuple's bytes are compared.
        let at = b.upper() as usize;
        b[at + 9] = 1;
        hash_mask(&mut b);
        assert_ne!(ma[..], b[..]);
        // A bitmap page's bits are compared; an unused page is not compared at all.
        for (page_type, equal) in [(LH_BITMAP_PAGE, false), (LH_UNUSED_PAGE, true)] {
            let mut c = Box::new([0u8; BLCKSZ]);
            c.init(16);
            put_u16(&mut c[..], flag_at, page_type);
            c.set_lower(24 + 64);
            let mut d = c.clone();
            d[30] = 0xFF;
            hash_mask(&mut c);
            hash_mask(&mut d);
            assert_eq!(c[..] == d[..], equal, "page type {page_type}");
        }
    }

    #[test]
    fn spg_mask_hides_the_hole_even_of_an_empty_page() {
        use crate::redo::spgist::SPGIST_PAGE_ID;
        let mut a = Box::new([0u8; BLCKSZ]);
        a.init(8);
        put_u16(&mut a[..], BLCKSZ - 2, SPGIST_PAGE_ID);
        assert_eq!(PageKind::guess(&a, ForkNumber::MAIN), PageKind::SpGist);
        assert_eq!(
            PageKind::of_rmgr(rmgr::RM_SPGIST_ID, ForkNumber::MAIN),
            Some(PageKind::SpGist)
        );
        // pd_lower == SizeOfPageHeaderData: the hole is still masked (>=, not >).
        let mut b = a.clone();
        b[100] = 7;
        b.set_lsn(crate::wal::Lsn(9));
        b.set_prune_xid(3);
        let (mut ma, mut mb) = (a.clone(), b.clone());
        spg_mask(&mut ma);
        spg_mask(&mut mb);
        assert_eq!(ma[..], mb[..]);
        // Tuples, line pointers (their flags too) and the special space are compared.
        a.add_item(&[3u8; 16], 1, 0).unwrap();
        for change in [a.upper() as usize + 3, SIZE_OF_PAGE_HEADER + 3, BLCKSZ - 4] {
            let mut c = a.clone();
            c[change] ^= 1;
            let (mut ma, mut mc) = (a.clone(), c);
            spg_mask(&mut ma);
            spg_mask(&mut mc);
            assert_ne!(ma[..], mc[..], "byte {change}");
        }
    }
}
