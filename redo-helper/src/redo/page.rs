//! The standard PostgreSQL 15 page layout and the primitives redo uses on it
//! (`storage/bufpage.h`, `storage/itemid.h`, `storage/page/bufpage.c`,
//! `storage/checksum_impl.h`).
//!
//! A page is a plain `[u8; BLCKSZ]` ([`Page`]); [`PageLayout`] adds the header accessors and
//! the item operations (PageAddItemExtended, PageRepairFragmentation, PageIndexTupleDelete,
//! PageIndexMultiDelete, PageIndexTupleOverwrite, PageTruncateLinePointerArray). Every
//! operation checks the page pointers and line pointers it relies on and returns a
//! [`PageShapeError`] instead of panicking: the page may come from a corrupt base file or a bug,
//! and the caller turns the error into one that names the record and page.

use crate::wal::page::{BLCKSZ, Lsn};

/// One relation page.
pub type Page = [u8; BLCKSZ];

/// `SizeOfPageHeaderData`: `offsetof(PageHeaderData, pd_linp)`.
pub(crate) const SIZE_OF_PAGE_HEADER: usize = 24;
/// `sizeof(ItemIdData)`.
pub(crate) const ITEM_ID_SIZE: usize = 4;
/// `MAXIMUM_ALIGNOF` on the 64-bit platforms PostgreSQL 15 runs on here.
pub(crate) const MAXIMUM_ALIGNOF: usize = 8;
/// `PG_PAGE_LAYOUT_VERSION`.
pub(crate) const PG_PAGE_LAYOUT_VERSION: u16 = 4;

/// `pd_flags` bits.
pub(crate) const PD_HAS_FREE_LINES: u16 = 0x0001;
pub(crate) const PD_PAGE_FULL: u16 = 0x0002;
pub(crate) const PD_ALL_VISIBLE: u16 = 0x0004;

/// `lp_flags` values.
pub(crate) const LP_UNUSED: u8 = 0;
pub(crate) const LP_NORMAL: u8 = 1;
pub(crate) const LP_REDIRECT: u8 = 2;
pub(crate) const LP_DEAD: u8 = 3;

/// `SizeofHeapTupleHeader`.
pub(crate) const SIZEOF_HEAP_TUPLE_HEADER: usize = 23;
/// `MaxHeapTuplesPerPage`: (BLCKSZ - header) / (MAXALIGN(SizeofHeapTupleHeader) + ItemId).
pub(crate) const MAX_HEAP_TUPLES_PER_PAGE: usize =
    (BLCKSZ - SIZE_OF_PAGE_HEADER) / (maxalign(SIZEOF_HEAP_TUPLE_HEADER) + ITEM_ID_SIZE);
/// `MaxIndexTuplesPerPage`: (BLCKSZ - header) / (MAXALIGN(sizeof(IndexTupleData) + 1) + ItemId).
pub(crate) const MAX_INDEX_TUPLES_PER_PAGE: usize =
    (BLCKSZ - SIZE_OF_PAGE_HEADER) / (maxalign(8 + 1) + ITEM_ID_SIZE);

/// `PageAddItemExtended` flags.
pub(crate) const PAI_OVERWRITE: u8 = 1 << 0;
pub(crate) const PAI_IS_HEAP: u8 = 1 << 1;

/// `MAXALIGN`.
#[inline]
pub(crate) const fn maxalign(n: usize) -> usize {
    (n + MAXIMUM_ALIGNOF - 1) & !(MAXIMUM_ALIGNOF - 1)
}

/// `SHORTALIGN`.
#[inline]
pub(crate) const fn shortalign(n: usize) -> usize {
    (n + 1) & !1
}

#[inline]
pub(crate) fn get_u16(b: &[u8], off: usize) -> u16 {
    u16::from_le_bytes([b[off], b[off + 1]])
}
#[inline]
pub(crate) fn get_u32(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes([b[off], b[off + 1], b[off + 2], b[off + 3]])
}
#[inline]
pub(crate) fn put_u16(b: &mut [u8], off: usize, v: u16) {
    b[off..off + 2].copy_from_slice(&v.to_le_bytes());
}
#[inline]
pub(crate) fn put_u32(b: &mut [u8], off: usize, v: u32) {
    b[off..off + 4].copy_from_slice(&v.to_le_bytes());
}

/// A line pointer (`ItemIdData`): `lp_off:15, lp_flags:2, lp_len:15` packed into 32 bits,
/// least significant bits first (GCC's bitfield layout on little-endian machines).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ItemId(pub u32);

impl ItemId {
    pub fn new(off: u16, flags: u8, len: u16) -> ItemId {
        ItemId((off as u32 & 0x7FFF) | ((flags as u32 & 3) << 15) | ((len as u32 & 0x7FFF) << 17))
    }
    /// `ItemIdGetOffset`.
    pub fn off(self) -> u16 {
        (self.0 & 0x7FFF) as u16
    }
    /// `ItemIdGetFlags`.
    pub fn flags(self) -> u8 {
        ((self.0 >> 15) & 3) as u8
    }
    /// `ItemIdGetLength`.
    pub fn len(self) -> u16 {
        (self.0 >> 17) as u16
    }
    pub fn is_empty(self) -> bool {
        self.len() == 0
    }
    /// `ItemIdIsUsed`.
    pub fn is_used(self) -> bool {
        self.flags() != LP_UNUSED
    }
    /// `ItemIdIsNormal`.
    pub fn is_normal(self) -> bool {
        self.flags() == LP_NORMAL
    }
    /// `ItemIdIsRedirected`.
    pub fn is_redirected(self) -> bool {
        self.flags() == LP_REDIRECT
    }
    /// `ItemIdIsDead`.
    pub fn is_dead(self) -> bool {
        self.flags() == LP_DEAD
    }
    /// `ItemIdHasStorage`: `lp_len != 0`.
    pub fn has_storage(self) -> bool {
        !self.is_empty()
    }
    /// `ItemIdGetRedirect`: a redirect keeps its target offset in `lp_off`.
    pub fn redirect_target(self) -> u16 {
        self.off()
    }
    pub fn with_flags(self, flags: u8) -> ItemId {
        ItemId::new(self.off(), flags, self.len())
    }
    pub fn with_off(self, off: u16) -> ItemId {
        ItemId::new(off, self.flags(), self.len())
    }
}

impl std::fmt::Display for ItemId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let flags = match self.flags() {
            LP_UNUSED => "UNUSED",
            LP_NORMAL => "NORMAL",
            LP_REDIRECT => "REDIRECT",
            _ => "DEAD",
        };
        write!(f, "({},{flags},{})", self.off(), self.len())
    }
}

/// A page that does not have the shape an operation needs. Messages follow bufpage.c's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PageShapeError {
    #[error("corrupted page pointers: lower = {lower}, upper = {upper}, special = {special}")]
    CorruptPointers {
        lower: u16,
        upper: u16,
        special: u16,
    },
    #[error("corrupted line pointer {offnum}: offset = {off}, size = {len}")]
    CorruptLinePointer { offnum: u16, off: u16, len: u16 },
    #[error("invalid offset number {offnum} (page has {max} line pointers)")]
    InvalidOffset { offnum: u16, max: u16 },
    #[error("line pointer {offnum} is {itemid}, expected {expected}")]
    UnexpectedLinePointer {
        offnum: u16,
        itemid: ItemId,
        expected: &'static str,
    },
    #[error("will not overwrite used line pointer {offnum}")]
    ItemInUse { offnum: u16 },
    #[error("cannot put more than MaxHeapTuplesPerPage items in a heap page (offset {offnum})")]
    TooManyHeapItems { offnum: u16 },
    #[error("item of {size} bytes does not fit at offset {offnum} (lower {lower}, upper {upper})")]
    NoSpace {
        offnum: u16,
        size: usize,
        lower: u16,
        upper: u16,
    },
    #[error("corrupted item lengths: total {total}, available space {available}")]
    CorruptItemLengths { total: usize, available: usize },
    #[error("incorrect index offsets supplied")]
    BadOffsetList,
    #[error("{0}")]
    Other(String),
}

/// Header accessors and item operations on a [`Page`].
pub trait PageLayout {
    fn bytes(&self) -> &[u8; BLCKSZ];
    fn bytes_mut(&mut self) -> &mut [u8; BLCKSZ];

    /// `PageGetLSN`: `pd_lsn` is `{xlogid, xrecoff}`, two uint32.
    fn lsn(&self) -> Lsn {
        let b = self.bytes();
        Lsn(((get_u32(b, 0) as u64) << 32) | get_u32(b, 4) as u64)
    }
    /// `PageSetLSN`.
    fn set_lsn(&mut self, lsn: Lsn) {
        let b = self.bytes_mut();
        put_u32(b, 0, (lsn.0 >> 32) as u32);
        put_u32(b, 4, lsn.0 as u32);
    }
    fn checksum(&self) -> u16 {
        get_u16(self.bytes(), 8)
    }
    fn set_checksum(&mut self, v: u16) {
        put_u16(self.bytes_mut(), 8, v)
    }
    fn flags(&self) -> u16 {
        get_u16(self.bytes(), 10)
    }
    fn set_flags(&mut self, v: u16) {
        put_u16(self.bytes_mut(), 10, v)
    }
    fn lower(&self) -> u16 {
        get_u16(self.bytes(), 12)
    }
    fn set_lower(&mut self, v: u16) {
        put_u16(self.bytes_mut(), 12, v)
    }
    fn upper(&self) -> u16 {
        get_u16(self.bytes(), 14)
    }
    fn set_upper(&mut self, v: u16) {
        put_u16(self.bytes_mut(), 14, v)
    }
    fn special(&self) -> u16 {
        get_u16(self.bytes(), 16)
    }
    fn set_special(&mut self, v: u16) {
        put_u16(self.bytes_mut(), 16, v)
    }
    fn pagesize_version(&self) -> u16 {
        get_u16(self.bytes(), 18)
    }
    fn prune_xid(&self) -> u32 {
        get_u32(self.bytes(), 20)
    }
    fn set_prune_xid(&mut self, v: u32) {
        put_u32(self.bytes_mut(), 20, v)
    }

    /// `PageIsNew`: a page that was never initialised has `pd_upper == 0`.
    fn is_new(&self) -> bool {
        self.upper() == 0
    }
    /// `PageIsEmpty`: no line pointers.
    fn is_empty_page(&self) -> bool {
        (self.lower() as usize) <= SIZE_OF_PAGE_HEADER
    }
    /// `PageGetMaxOffsetNumber`.
    fn max_offset(&self) -> u16 {
        let lower = self.lower() as usize;
        if lower <= SIZE_OF_PAGE_HEADER {
            0
        } else {
            ((lower - SIZE_OF_PAGE_HEADER) / ITEM_ID_SIZE) as u16
        }
    }
    /// `PageGetSpecialSize`.
    fn special_size(&self) -> usize {
        BLCKSZ.saturating_sub(self.special() as usize)
    }
    /// The special space, when `pd_special` is sane.
    fn special_space(&self) -> Option<&[u8]> {
        let s = self.special() as usize;
        (s <= BLCKSZ).then(|| &self.bytes()[s..])
    }
    fn special_space_mut(&mut self) -> Option<&mut [u8]> {
        let s = self.special() as usize;
        (s <= BLCKSZ).then(|| &mut self.bytes_mut()[s..])
    }

    fn has_free_line_pointers(&self) -> bool {
        self.flags() & PD_HAS_FREE_LINES != 0
    }
    fn set_flag(&mut self, flag: u16, on: bool) {
        let f = self.flags();
        self.set_flags(if on { f | flag } else { f & !flag });
    }
    fn is_all_visible(&self) -> bool {
        self.flags() & PD_ALL_VISIBLE != 0
    }

    /// `PageGetItemId` for 1-based `offnum`; line pointers past `pd_lower` are an error.
    fn item_id(&self, offnum: u16) -> Result<ItemId, PageShapeError> {
        let max = self.max_offset();
        if offnum == 0 || offnum > max {
            return Err(PageShapeError::InvalidOffset { offnum, max });
        }
        Ok(ItemId(get_u32(self.bytes(), lp_pos(offnum))))
    }
    /// Writes line pointer `offnum` (which must lie inside the page).
    fn set_item_id(&mut self, offnum: u16, id: ItemId) -> Result<(), PageShapeError> {
        let pos = lp_pos(offnum);
        if offnum == 0 || pos + ITEM_ID_SIZE > BLCKSZ {
            return Err(PageShapeError::InvalidOffset {
                offnum,
                max: self.max_offset(),
            });
        }
        put_u32(self.bytes_mut(), pos, id.0);
        Ok(())
    }
    /// A line pointer that must be LP_NORMAL with storage inside the page.
    fn normal_item_id(&self, offnum: u16) -> Result<ItemId, PageShapeError> {
        let id = self.item_id(offnum)?;
        if !id.is_normal() {
            return Err(PageShapeError::UnexpectedLinePointer {
                offnum,
                itemid: id,
                expected: "LP_NORMAL",
            });
        }
        check_storage(offnum, id)?;
        Ok(id)
    }
    /// `PageGetItem` for a line pointer with storage.
    fn item(&self, offnum: u16) -> Result<&[u8], PageShapeError> {
        let id = self.item_id(offnum)?;
        check_storage(offnum, id)?;
        Ok(&self.bytes()[id.off() as usize..id.off() as usize + id.len() as usize])
    }
    fn item_mut(&mut self, offnum: u16) -> Result<&mut [u8], PageShapeError> {
        let id = self.item_id(offnum)?;
        check_storage(offnum, id)?;
        Ok(&mut self.bytes_mut()[id.off() as usize..id.off() as usize + id.len() as usize])
    }

    /// `PageInit`: zero the page, set the pointers and the size/version word.
    fn init(&mut self, special_size: usize) {
        self.bytes_mut().fill(0);
        self.init_zeroed(special_size);
    }

    /// `PageInit` on a page that is all zeros already: only the pointers and the
    /// size/version word are set. The redo engine zeroes the page of a WILL_INIT block
    /// before the rmgr's redo runs (`apply_block`), so a redo function initialising it
    /// need not zero its 8 KB a second time.
    fn init_zeroed(&mut self, special_size: usize) {
        debug_assert!(
            self.bytes().iter().all(|&b| b == 0),
            "init_zeroed on a page that is not all zeros"
        );
        let special = BLCKSZ - maxalign(special_size);
        let b = self.bytes_mut();
        put_u16(b, 12, SIZE_OF_PAGE_HEADER as u16);
        put_u16(b, 14, special as u16);
        put_u16(b, 16, special as u16);
        // PageSetPageSizeAndVersion: the size is a multiple of 256, the version in the low byte.
        put_u16(b, 18, BLCKSZ as u16 | PG_PAGE_LAYOUT_VERSION);
    }

    /// The checks bufpage.c makes before reshuffling a page ("corrupted page pointers").
    fn check_pointers(&self) -> Result<(), PageShapeError> {
        let (lower, upper, special) = (self.lower(), self.upper(), self.special());
        if (lower as usize) < SIZE_OF_PAGE_HEADER
            || lower > upper
            || upper > special
            || special as usize > BLCKSZ
            || special as usize != maxalign(special as usize)
        {
            return Err(PageShapeError::CorruptPointers {
                lower,
                upper,
                special,
            });
        }
        Ok(())
    }

    /// `PageAddItemExtended`. `offnum` 0 (InvalidOffsetNumber) finds a free slot. Returns
    /// the offset the item went to; a refusal is an error (PostgreSQL's redo PANICs then).
    fn add_item(&mut self, item: &[u8], offnum: u16, flags: u8) -> Result<u16, PageShapeError> {
        let (lower0, upper0, special) = (self.lower(), self.upper(), self.special());
        if (lower0 as usize) < SIZE_OF_PAGE_HEADER
            || lower0 > upper0
            || upper0 > special
            || special as usize > BLCKSZ
        {
            return Err(PageShapeError::CorruptPointers {
                lower: lower0,
                upper: upper0,
                special,
            });
        }
        let limit = self.max_offset() + 1;
        let mut needshuffle = false;
        let mut offnum = offnum;
        if offnum != 0 {
            if flags & PAI_OVERWRITE != 0 {
                if offnum < limit {
                    let id = self.item_id(offnum)?;
                    if id.is_used() || id.has_storage() {
                        return Err(PageShapeError::ItemInUse { offnum });
                    }
                }
            } else if offnum < limit {
                needshuffle = true;
            }
        } else if self.has_free_line_pointers() {
            // Look for a recyclable (unused, no storage) line pointer; if the hint is
            // wrong, clear it and use the slot after the last one.
            offnum = 1;
            while offnum < limit {
                let id = self.item_id(offnum)?;
                if !id.is_used() && !id.has_storage() {
                    break;
                }
                offnum += 1;
            }
            if offnum >= limit {
                self.set_flag(PD_HAS_FREE_LINES, false);
            }
        } else {
            offnum = limit;
        }
        if offnum > limit {
            return Err(PageShapeError::InvalidOffset {
                offnum,
                max: limit - 1,
            });
        }
        if flags & PAI_IS_HEAP != 0 && offnum as usize > MAX_HEAP_TUPLES_PER_PAGE {
            return Err(PageShapeError::TooManyHeapItems { offnum });
        }
        let lower = if offnum == limit || needshuffle {
            lower0 as i32 + ITEM_ID_SIZE as i32
        } else {
            lower0 as i32
        };
        let aligned = maxalign(item.len());
        let upper = upper0 as i32 - aligned as i32;
        if lower > upper || item.len() > 0x7FFF {
            return Err(PageShapeError::NoSpace {
                offnum,
                size: item.len(),
                lower: lower0,
                upper: upper0,
            });
        }
        let upper = upper as usize;
        let b = self.bytes_mut();
        let pos = lp_pos(offnum);
        if needshuffle {
            let end = lp_pos(limit);
            b.copy_within(pos..end, pos + ITEM_ID_SIZE);
        }
        put_u32(
            b,
            pos,
            ItemId::new(upper as u16, LP_NORMAL, item.len() as u16).0,
        );
        b[upper..upper + item.len()].copy_from_slice(item);
        put_u16(b, 12, lower as u16);
        put_u16(b, 14, upper as u16);
        Ok(offnum)
    }

    /// `PageRepairFragmentation` (heap pages): compacts the tuples of used line pointers
    /// with storage toward the end of the page in reverse line pointer order, marks unused
    /// line pointers properly unused, removes trailing unused line pointers (PostgreSQL 15
    /// truncates the array here) and maintains PD_HAS_FREE_LINES.
    fn repair_fragmentation(&mut self) -> Result<(), PageShapeError> {
        self.check_pointers()?;
        let (lower, upper, special) = (
            self.lower() as usize,
            self.upper() as usize,
            self.special() as usize,
        );
        let nline = self.max_offset();
        let mut items = CompactList::new();
        let mut nunused = 0usize;
        let mut totallen = 0usize;
        let mut finalused = 0u16;
        let mut presorted = true;
        let mut last_off = special;
        // One pass over the line pointer array as a slice (check_pointers bounds it by
        // pd_lower <= BLCKSZ): this loop runs over every line pointer of every pruned page.
        let lp_end = SIZE_OF_PAGE_HEADER + nline as usize * ITEM_ID_SIZE;
        let lps = &mut self.bytes_mut()[SIZE_OF_PAGE_HEADER..lp_end];
        for (i, lp) in (1u16..).zip(lps.chunks_exact_mut(ITEM_ID_SIZE)) {
            let id = ItemId(u32::from_le_bytes([lp[0], lp[1], lp[2], lp[3]]));
            if id.is_used() {
                if id.has_storage() {
                    let off = id.off() as usize;
                    if off < upper || off >= special {
                        return Err(PageShapeError::CorruptLinePointer {
                            offnum: i,
                            off: id.off(),
                            len: id.len(),
                        });
                    }
                    if last_off > off {
                        last_off = off;
                    } else {
                        presorted = false;
                    }
                    let alignedlen = maxalign(id.len() as usize);
                    totallen += alignedlen;
                    items.push(CompactItem {
                        index: i,
                        itemoff: off as u16,
                        alignedlen: alignedlen as u16,
                    })?;
                }
                finalused = i;
            } else {
                // Unused entries should have lp_len = 0; make sure.
                lp.fill(0);
                nunused += 1;
            }
        }
        if items.is_empty() {
            self.set_upper(special as u16);
        } else {
            if totallen > special - lower {
                return Err(PageShapeError::CorruptItemLengths {
                    total: totallen,
                    available: special - lower,
                });
            }
            compactify_tuples(self.bytes_mut(), items.as_slice(), presorted)?;
        }
        if finalused != nline {
            let trailing = (nline - finalused) as usize;
            nunused -= trailing;
            self.set_lower((lower - trailing * ITEM_ID_SIZE) as u16);
        }
        self.set_flag(PD_HAS_FREE_LINES, nunused > 0);
        Ok(())
    }

    /// `PageTruncateLinePointerArray` (heap pages, VACUUM's second pass): drop trailing
    /// unused line pointers, but never the first one; maintain PD_HAS_FREE_LINES.
    fn truncate_line_pointer_array(&mut self) -> Result<(), PageShapeError> {
        let mut countdone = false;
        let mut sethint = false;
        let mut nunusedend = 0usize;
        let max = self.max_offset();
        let mut i = max;
        while i >= 1 {
            let id = self.item_id(i)?;
            if !countdone && i > 1 {
                if !id.is_used() {
                    nunusedend += 1;
                } else {
                    countdone = true;
                }
            } else if !id.is_used() {
                sethint = true;
                break;
            }
            i -= 1;
        }
        if nunusedend > 0 {
            let lower = self.lower() as usize - ITEM_ID_SIZE * nunusedend;
            self.set_lower(lower as u16);
        }
        self.set_flag(PD_HAS_FREE_LINES, sethint);
        Ok(())
    }

    /// `PageGetFreeSpace`: pd_upper - pd_lower minus one line pointer, at least 0.
    fn free_space(&self) -> usize {
        let space = self.upper() as i32 - self.lower() as i32;
        if space < ITEM_ID_SIZE as i32 {
            0
        } else {
            space as usize - ITEM_ID_SIZE
        }
    }

    /// `PageGetExactFreeSpace`.
    fn exact_free_space(&self) -> usize {
        (self.upper() as i32 - self.lower() as i32).max(0) as usize
    }

    /// `PageGetHeapFreeSpace`: like `free_space`, but 0 when the page already has
    /// MaxHeapTuplesPerPage line pointers and none is free.
    fn heap_free_space(&self) -> usize {
        let space = self.free_space();
        if space > 0 {
            let nline = self.max_offset();
            if nline as usize >= MAX_HEAP_TUPLES_PER_PAGE {
                if self.has_free_line_pointers() {
                    let any_free = (1..=nline)
                        .any(|i| self.item_id(i).map(|id| !id.is_used()).unwrap_or(false));
                    if !any_free {
                        return 0;
                    }
                } else {
                    return 0;
                }
            }
        }
        space
    }

    /// The checks `PageIndexTupleDelete` and `PageIndexTupleDeleteNoCompact` make before
    /// removing item `offnum` (its line pointer in range, its data within the tuple area
    /// and aligned): (line pointers, the item's offset, its MAXALIGNed size).
    fn deletable_item(&self, offnum: u16) -> Result<(u16, usize, usize), PageShapeError> {
        self.check_pointers()?;
        let nline = self.max_offset();
        if offnum == 0 || offnum > nline {
            return Err(PageShapeError::InvalidOffset { offnum, max: nline });
        }
        let id = self.item_id(offnum)?;
        let (offset, size) = (id.off() as usize, id.len() as usize);
        let upper = self.upper() as usize;
        if offset < upper || offset + size > self.special() as usize || offset != maxalign(offset) {
            return Err(PageShapeError::CorruptLinePointer {
                offnum,
                off: id.off(),
                len: id.len(),
            });
        }
        Ok((nline, offset, maxalign(size)))
    }

    /// `PageIndexTupleDelete`: removes the item and its line pointer, closing both gaps.
    fn index_tuple_delete(&mut self, offnum: u16) -> Result<(), PageShapeError> {
        let (nline, offset, size) = self.deletable_item(offnum)?;
        let upper = self.upper() as usize;
        let lower = self.lower() as usize;
        let b = self.bytes_mut();
        // Shift the following line pointers down one slot.
        let from = lp_pos(offnum + 1);
        if lower > from {
            b.copy_within(from..lower, from - ITEM_ID_SIZE);
        }
        // Move the tuple data that lay before the deleted tuple up by its size.
        if offset > upper {
            b.copy_within(upper..offset, upper + size);
        }
        let new_upper = upper + size;
        let new_lower = lower - ITEM_ID_SIZE;
        put_u16(b, 14, new_upper as u16);
        put_u16(b, 12, new_lower as u16);
        // The remaining nline - 1 line pointers whose data moved follow it. One pass over
        // the array as a slice: GIN and btree leaf pages hold hundreds of items, and this
        // runs for every entry replaced on them.
        debug_assert_eq!(new_lower, lp_pos(nline));
        // Branch-free, so that it is vectorised: lp_off is the low 15 bits, and an offset
        // plus the size stays below BLCKSZ, so the addition never reaches lp_flags.
        if new_lower > SIZE_OF_PAGE_HEADER {
            let (offset, size) = (offset as u32, size as u32);
            let (lps, _) = b[SIZE_OF_PAGE_HEADER..new_lower].as_chunks_mut::<ITEM_ID_SIZE>();
            for lp in lps {
                let v = u32::from_le_bytes(*lp);
                let moves = u32::from(v & 0x7FFF <= offset);
                *lp = (v + moves * size).to_le_bytes();
            }
        }
        Ok(())
    }

    /// `PageIndexTupleDeleteNoCompact` (`storage/page/bufpage.c`): removes the item's data
    /// like `PageIndexTupleDelete` but keeps the other items' offsets stable (BRIN's revmap
    /// holds TIDs into its regular pages): the line pointer becomes LP_UNUSED, or is dropped
    /// when it is the last one. Earlier unused pointers are not trimmed, and
    /// PD_HAS_FREE_LINES is not touched, as upstream.
    fn index_tuple_delete_no_compact(&mut self, offnum: u16) -> Result<(), PageShapeError> {
        let (mut nline, offset, size) = self.deletable_item(offnum)?;
        let upper = self.upper() as usize;
        let lower = self.lower() as usize;
        let b = self.bytes_mut();
        if offnum < nline {
            // ItemIdSetUnused: flags, offset and length all zero.
            put_u32(b, lp_pos(offnum), 0);
        } else {
            put_u16(b, 12, (lower - ITEM_ID_SIZE) as u16);
            nline -= 1;
        }
        // Close the gap: the tuple data stored before the deleted one moves up by its size.
        if offset > upper {
            b.copy_within(upper..offset, upper + size);
        }
        put_u16(b, 14, (upper + size) as u16);
        // PageIsEmpty is pd_lower <= SizeOfPageHeaderData: then no pointer is left to fix.
        if get_u16(b, 12) as usize > SIZE_OF_PAGE_HEADER {
            for i in 1..=nline {
                let ii = ItemId(get_u32(b, lp_pos(i)));
                if ii.has_storage() && ii.off() as usize <= offset {
                    put_u32(b, lp_pos(i), ii.with_off(ii.off() + size as u16).0);
                }
            }
        }
        Ok(())
    }

    /// `PageIndexMultiDelete`: deletes the items at `offnums` (ascending), compacting the
    /// line pointer array and the tuple space.
    fn index_multi_delete(&mut self, offnums: &[u16]) -> Result<(), PageShapeError> {
        if offnums.len() <= 2 {
            // Retail deletion, in reverse so earlier offsets stay valid.
            for &o in offnums.iter().rev() {
                self.index_tuple_delete(o)?;
            }
            return Ok(());
        }
        self.check_pointers()?;
        let (lower, upper, special) = (
            self.lower() as usize,
            self.upper() as usize,
            self.special() as usize,
        );
        let nline = self.max_offset();
        let mut items = CompactList::new();
        let mut kept: Vec<ItemId> = Vec::with_capacity(nline as usize);
        let mut nkept = 0usize;
        let mut totallen = 0usize;
        let mut next = 0usize;
        let mut presorted = true;
        let mut last_off = special;
        for offnum in 1..=nline {
            let id = self.item_id(offnum)?;
            let (offset, size) = (id.off() as usize, id.len() as usize);
            if offset < upper || offset + size > special || offset != maxalign(offset) {
                return Err(PageShapeError::CorruptLinePointer {
                    offnum,
                    off: id.off(),
                    len: id.len(),
                });
            }
            if next < offnums.len() && offnum == offnums[next] {
                next += 1;
            } else {
                if last_off > offset {
                    last_off = offset;
                } else {
                    presorted = false;
                }
                let alignedlen = maxalign(size);
                totallen += alignedlen;
                kept.push(id);
                nkept += 1;
                items.push(CompactItem {
                    index: nkept as u16,
                    itemoff: offset as u16,
                    alignedlen: alignedlen as u16,
                })?;
            }
        }
        if next != offnums.len() {
            return Err(PageShapeError::BadOffsetList);
        }
        if totallen > special - lower {
            return Err(PageShapeError::CorruptItemLengths {
                total: totallen,
                available: special - lower,
            });
        }
        {
            let b = self.bytes_mut();
            for (i, id) in kept[..nkept].iter().enumerate() {
                put_u32(b, SIZE_OF_PAGE_HEADER + i * ITEM_ID_SIZE, id.0);
            }
        }
        self.set_lower((SIZE_OF_PAGE_HEADER + nkept * ITEM_ID_SIZE) as u16);
        if nkept == 0 {
            self.set_upper(special as u16);
        } else {
            compactify_tuples(self.bytes_mut(), items.as_slice(), presorted)?;
        }
        Ok(())
    }

    /// `PageIndexTupleOverwrite`: replaces the item at `offnum` in place, shifting the
    /// tuple data before it when the aligned size changes; keeps `lp_flags`.
    fn index_tuple_overwrite(&mut self, offnum: u16, newtup: &[u8]) -> Result<(), PageShapeError> {
        self.check_pointers()?;
        let itemcount = self.max_offset();
        if offnum == 0 || offnum > itemcount {
            return Err(PageShapeError::InvalidOffset {
                offnum,
                max: itemcount,
            });
        }
        let id = self.item_id(offnum)?;
        let (offset, oldsize) = (id.off() as usize, id.len() as usize);
        let (lower, upper) = (self.lower() as usize, self.upper() as usize);
        if offset < upper
            || offset + oldsize > self.special() as usize
            || offset != maxalign(offset)
        {
            return Err(PageShapeError::CorruptLinePointer {
                offnum,
                off: id.off(),
                len: id.len(),
            });
        }
        let oldsize = maxalign(oldsize);
        let newsize = maxalign(newtup.len());
        if newsize > oldsize + (upper - lower) || newtup.len() > 0x7FFF {
            return Err(PageShapeError::NoSpace {
                offnum,
                size: newtup.len(),
                lower: lower as u16,
                upper: upper as u16,
            });
        }
        let size_diff = oldsize as i32 - newsize as i32;
        let b = self.bytes_mut();
        if size_diff != 0 {
            let dest = (upper as i32 + size_diff) as usize;
            b.copy_within(upper..offset, dest);
            put_u16(b, 14, (upper as i32 + size_diff) as u16);
            for i in 1..=itemcount {
                let ii = ItemId(get_u32(b, lp_pos(i)));
                if ii.has_storage() && ii.off() as usize <= offset {
                    put_u32(
                        b,
                        lp_pos(i),
                        ii.with_off((ii.off() as i32 + size_diff) as u16).0,
                    );
                }
            }
        }
        let new_off = (offset as i32 + size_diff) as usize;
        put_u32(
            b,
            lp_pos(offnum),
            ItemId::new(new_off as u16, id.flags(), newtup.len() as u16).0,
        );
        b[new_off..new_off + newtup.len()].copy_from_slice(newtup);
        Ok(())
    }
}

impl PageLayout for Page {
    fn bytes(&self) -> &[u8; BLCKSZ] {
        self
    }
    fn bytes_mut(&mut self) -> &mut [u8; BLCKSZ] {
        self
    }
}

/// Byte position of line pointer `offnum` (1-based).
#[inline]
pub(crate) fn lp_pos(offnum: u16) -> usize {
    SIZE_OF_PAGE_HEADER + (offnum as usize).saturating_sub(1) * ITEM_ID_SIZE
}

fn check_storage(offnum: u16, id: ItemId) -> Result<(), PageShapeError> {
    let off = id.off() as usize;
    if off < SIZE_OF_PAGE_HEADER || off + id.len() as usize > BLCKSZ || id.is_empty() {
        return Err(PageShapeError::CorruptLinePointer {
            offnum,
            off: id.off(),
            len: id.len(),
        });
    }
    Ok(())
}

/// `itemIdCompactData`: a line pointer whose tuple `compactify_tuples` moves.
#[derive(Debug, Clone, Copy, Default)]
struct CompactItem {
    /// 1-based line pointer number (after any line pointer compaction).
    index: u16,
    itemoff: u16,
    alignedlen: u16,
}

/// The items `compactify_tuples` moves, in line pointer order: a small fixed array on the
/// stack, left uninitialised past `len` (zeroing all of it cost more than the compaction of
/// a typical heap page: ~2.4 KB for every PRUNE record). A page has at most
/// MaxIndexTuplesPerPage line pointers with storage (index pages; heap pages at most
/// MaxHeapTuplesPerPage, fewer), so a page with more is damaged and refused.
struct CompactList {
    items: [std::mem::MaybeUninit<CompactItem>; COMPACT_MAX],
    len: usize,
}

const COMPACT_MAX: usize = if MAX_INDEX_TUPLES_PER_PAGE > MAX_HEAP_TUPLES_PER_PAGE {
    MAX_INDEX_TUPLES_PER_PAGE
} else {
    MAX_HEAP_TUPLES_PER_PAGE
};

impl CompactList {
    fn new() -> CompactList {
        CompactList {
            items: [const { std::mem::MaybeUninit::uninit() }; COMPACT_MAX],
            len: 0,
        }
    }
    fn push(&mut self, it: CompactItem) -> Result<(), PageShapeError> {
        let slot = self
            .items
            .get_mut(self.len)
            .ok_or(PageShapeError::CorruptItemLengths {
                total: self.len,
                available: COMPACT_MAX,
            })?;
        slot.write(it);
        self.len += 1;
        Ok(())
    }
    fn as_slice(&self) -> &[CompactItem] {
        // SAFETY: the first `len` items were written by `push`; MaybeUninit<T> has T's
        // layout.
        unsafe { std::slice::from_raw_parts(self.items.as_ptr().cast::<CompactItem>(), self.len) }
    }
    fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// `compactify_tuples` (PostgreSQL 14+): places the tuples back to back from `pd_special`
/// downward in `items` order (line pointer order), so that the first line pointer gets the
/// highest offset. When the items are presorted (descending offsets), tuples only move up
/// and are moved in place; otherwise the tuple area is copied to a scratch buffer first.
/// Both paths of bufpage.c produce this same layout.
fn compactify_tuples(
    b: &mut [u8; BLCKSZ],
    items: &[CompactItem],
    presorted: bool,
) -> Result<(), PageShapeError> {
    let special = get_u16(b, 16) as usize;
    let pd_upper = get_u16(b, 14) as usize;
    if !presorted && (pd_upper > special || special > BLCKSZ) {
        return Err(PageShapeError::CorruptPointers {
            lower: get_u16(b, 12),
            upper: pd_upper as u16,
            special: special as u16,
        });
    }
    let check = |off: usize, len: usize, upper: usize| {
        if len > upper || off + len > BLCKSZ {
            Err(PageShapeError::CorruptItemLengths {
                total: len,
                available: upper,
            })
        } else {
            Ok(())
        }
    };
    let mut upper = special;
    if presorted {
        // Tuples already at the end of the page stay; after the first gap, runs of
        // adjacent tuples move up in one memmove each (bufpage.c's copy_head/copy_tail).
        let mut i = 0;
        while i < items.len() {
            let (off, len) = (items[i].itemoff as usize, items[i].alignedlen as usize);
            check(off, len, upper)?;
            if upper != off + len {
                break;
            }
            upper -= len;
            i += 1;
        }
        if i < items.len() {
            let first = items[i];
            let mut copy_tail = first.itemoff as usize + first.alignedlen as usize;
            let mut copy_head = copy_tail;
            for it in &items[i..] {
                let (off, len) = (it.itemoff as usize, it.alignedlen as usize);
                check(off, len, upper)?;
                if copy_head != off + len {
                    b.copy_within(copy_head..copy_tail, upper);
                    copy_tail = off + len;
                }
                upper -= len;
                copy_head = off;
                let pos = lp_pos(it.index);
                let id = ItemId(get_u32(b, pos));
                put_u32(b, pos, id.with_off(upper as u16).0);
            }
            b.copy_within(copy_head..copy_tail, upper);
        }
    } else {
        // Only this path needs a copy of the tuple area (bufpage.c's scratch buffer).
        let mut buf = [0u8; BLCKSZ];
        let scratch = &mut buf[..special - pd_upper];
        scratch.copy_from_slice(&b[pd_upper..special]);
        for it in items {
            let (off, len) = (it.itemoff as usize, it.alignedlen as usize);
            check(off, len, upper)?;
            upper -= len;
            let src = off
                .checked_sub(pd_upper)
                .and_then(|o| scratch.get(o..o + len))
                .ok_or(PageShapeError::CorruptItemLengths {
                    total: len,
                    available: upper,
                })?;
            b[upper..upper + len].copy_from_slice(src);
            let pos = lp_pos(it.index);
            let id = ItemId(get_u32(b, pos));
            put_u32(b, pos, id.with_off(upper as u16).0);
        }
    }
    put_u16(b, 14, upper as u16);
    Ok(())
}

/// `checksumBaseOffsets` (`storage/checksum_impl.h`): start states of the 32 parallel
/// FNV-1a-like sums.
const CHECKSUM_BASE_OFFSETS: [u32; 32] = [
    0x5B1F36E9, 0xB8525960, 0x02AB50AA, 0x1DE66D2A, 0x79FF467A, 0x9BB9F8A3, 0x217E7CD2, 0x83E13D2C,
    0xF8D4474F, 0xE39EB970, 0x42C6AE16, 0x993216FA, 0x7B093B5D, 0x98DAFF3C, 0xF718902A, 0x0B1C9CDB,
    0xE58F764B, 0x187636BC, 0x5D7B3BB1, 0xE73DE7DE, 0x92BEC979, 0xCCA6C0B2, 0x304A0979, 0x85AA43D4,
    0x783125BB, 0x6CA8EAA2, 0xE407EAC6, 0x4B5CFC3E, 0x9FBF8C76, 0x15CA20BE, 0xF2CA9FD3, 0x959BD756,
];
const FNV_PRIME: u32 = 16_777_619;

#[inline]
fn checksum_comp(sum: u32, value: u32) -> u32 {
    let tmp = sum ^ value;
    tmp.wrapping_mul(FNV_PRIME) ^ (tmp >> 17)
}

/// `pg_checksum_page`: the data checksum of `page` as block `blkno`, computed with
/// `pd_checksum` taken as zero. The page is read as 32 interleaved columns of uint32; two
/// extra rounds of zeros mix the last values; the block number is xored in to detect
/// transposed pages; the result is folded to 16 bits and never 0.
pub fn checksum_page(page: &Page, blkno: u32) -> u16 {
    let mut sums = CHECKSUM_BASE_OFFSETS;
    let rows = BLCKSZ / (4 * 32);
    for i in 0..rows {
        for (j, sum) in sums.iter_mut().enumerate() {
            let pos = (i * 32 + j) * 4;
            // pd_checksum (bytes 8..10) is the low half of the third word of row 0.
            let mut v = get_u32(page, pos);
            if pos == 8 {
                v &= 0xFFFF_0000;
            }
            *sum = checksum_comp(*sum, v);
        }
    }
    for _ in 0..2 {
        for sum in sums.iter_mut() {
            *sum = checksum_comp(*sum, 0);
        }
    }
    let mut result = sums.iter().fold(0u32, |acc, s| acc ^ s);
    result ^= blkno;
    ((result % 65535) + 1) as u16
}

#[cfg(test)]
mod tests {
    use super::*;

    fn new_page(special: usize) -> Box<Page> {
        let mut p = Box::new([0u8; BLCKSZ]);
        p.init(special);
        p
    }

    fn tuple(len: usize, fill: u8) -> Vec<u8> {
        vec![fill; len]
    }

    #[test]
    fn item_id_bitfields() {
        let id = ItemId::new(8152, LP_NORMAL, 37);
        assert_eq!(id.off(), 8152);
        assert_eq!(id.flags(), LP_NORMAL);
        assert_eq!(id.len(), 37);
        // lp_off in bits 0..15, lp_flags 15..17, lp_len 17..32.
        assert_eq!(id.0, 8152 | (1 << 15) | (37 << 17));
        let r = ItemId::new(5, LP_REDIRECT, 0);
        assert!(r.is_redirected() && !r.has_storage() && r.redirect_target() == 5);
    }

    #[test]
    fn init_sets_header() {
        let p = new_page(16);
        assert_eq!(p.lower(), 24);
        assert_eq!(p.upper(), 8176);
        assert_eq!(p.special(), 8176);
        assert_eq!(p.pagesize_version(), 8196);
        assert_eq!(p.max_offset(), 0);
        assert!(!p.is_new());
        assert_eq!(p.special_size(), 16);
        // Special sizes are MAXALIGNed.
        assert_eq!(new_page(4).special(), 8184);
    }

    #[test]
    fn add_item_appends_and_shuffles() {
        let mut p = new_page(0);
        assert_eq!(p.add_item(&tuple(30, 1), 0, 0).unwrap(), 1);
        assert_eq!(p.add_item(&tuple(8, 2), 0, 0).unwrap(), 2);
        assert_eq!(p.item_id(1).unwrap(), ItemId::new(8160, LP_NORMAL, 30));
        assert_eq!(p.item_id(2).unwrap(), ItemId::new(8152, LP_NORMAL, 8));
        // Insert at 1 without overwrite: existing line pointers move up.
        assert_eq!(p.add_item(&tuple(16, 3), 1, 0).unwrap(), 1);
        assert_eq!(p.max_offset(), 3);
        assert_eq!(p.item(1).unwrap(), &tuple(16, 3)[..]);
        assert_eq!(p.item(2).unwrap(), &tuple(30, 1)[..]);
        assert_eq!(p.item(3).unwrap(), &tuple(8, 2)[..]);
        assert_eq!(p.lower(), 24 + 12);
        assert_eq!(p.upper(), 8192 - 32 - 8 - 16);
        // Beyond limit is refused.
        assert!(p.add_item(&tuple(8, 4), 9, 0).is_err());
    }

    #[test]
    fn add_item_overwrite_and_heap_limit() {
        let mut p = new_page(0);
        p.add_item(&tuple(24, 1), 1, PAI_OVERWRITE | PAI_IS_HEAP)
            .unwrap();
        p.add_item(&tuple(24, 2), 2, PAI_OVERWRITE | PAI_IS_HEAP)
            .unwrap();
        // Overwriting a used slot is refused.
        assert_eq!(
            p.add_item(&tuple(24, 3), 1, PAI_OVERWRITE),
            Err(PageShapeError::ItemInUse { offnum: 1 })
        );
        // An unused slot is reused without growing the array.
        p.set_item_id(1, ItemId(0)).unwrap();
        let lower = p.lower();
        assert_eq!(p.add_item(&tuple(24, 3), 1, PAI_OVERWRITE).unwrap(), 1);
        assert_eq!(p.lower(), lower);
        // Free-slot search uses PD_HAS_FREE_LINES.
        p.set_item_id(2, ItemId(0)).unwrap();
        p.set_flag(PD_HAS_FREE_LINES, true);
        assert_eq!(p.add_item(&tuple(8, 4), 0, 0).unwrap(), 2);
        let mut full = new_page(0);
        full.set_lower((24 + MAX_HEAP_TUPLES_PER_PAGE * 4) as u16);
        assert!(matches!(
            full.add_item(
                &tuple(1, 0),
                (MAX_HEAP_TUPLES_PER_PAGE + 1) as u16,
                PAI_IS_HEAP
            ),
            Err(PageShapeError::TooManyHeapItems { .. })
        ));
        // No space.
        let mut small = new_page(0);
        assert!(matches!(
            small.add_item(&tuple(8200, 0), 0, 0),
            Err(PageShapeError::NoSpace { .. })
        ));
    }

    #[test]
    fn repair_fragmentation_compacts_in_line_pointer_order() {
        let mut p = new_page(0);
        for i in 1..=5u8 {
            p.add_item(&tuple(10 * i as usize, i), i as u16, PAI_OVERWRITE)
                .unwrap();
        }
        // Kill 2 (unused) and 4 (dead without storage), redirect 5 -> 3.
        p.set_item_id(2, ItemId::new(0, LP_UNUSED, 0)).unwrap();
        p.set_item_id(4, ItemId::new(0, LP_DEAD, 0)).unwrap();
        p.set_item_id(5, ItemId::new(3, LP_REDIRECT, 0)).unwrap();
        p.repair_fragmentation().unwrap();
        assert_eq!(p.item_id(1).unwrap(), ItemId::new(8176, LP_NORMAL, 10));
        assert_eq!(p.item_id(3).unwrap(), ItemId::new(8144, LP_NORMAL, 30));
        assert_eq!(p.item(3).unwrap(), &tuple(30, 3)[..]);
        assert_eq!(p.upper(), 8144);
        assert!(p.has_free_line_pointers());
        assert_eq!(p.max_offset(), 5);
        // Trailing unused line pointers are truncated.
        p.set_item_id(5, ItemId(0)).unwrap();
        p.set_item_id(4, ItemId(0)).unwrap();
        p.repair_fragmentation().unwrap();
        assert_eq!(p.max_offset(), 3);
        assert!(p.has_free_line_pointers()); // 2 is still unused
    }

    #[test]
    fn repair_fragmentation_reorders_unsorted_tuples() {
        let mut p = new_page(0);
        p.add_item(&tuple(8, 1), 1, 0).unwrap(); // at 8184
        p.add_item(&tuple(8, 2), 2, 0).unwrap(); // at 8176
        // Swap the two line pointers: not presorted any more.
        let (a, b) = (p.item_id(1).unwrap(), p.item_id(2).unwrap());
        p.set_item_id(1, b).unwrap();
        p.set_item_id(2, a).unwrap();
        p.repair_fragmentation().unwrap();
        assert_eq!(p.item_id(1).unwrap().off(), 8184);
        assert_eq!(p.item(1).unwrap(), &tuple(8, 2)[..]);
        assert_eq!(p.item(2).unwrap(), &tuple(8, 1)[..]);
        assert!(!p.has_free_line_pointers());
    }

    #[test]
    fn truncate_line_pointer_array_keeps_first() {
        let mut p = new_page(0);
        for i in 1..=4u16 {
            p.add_item(&tuple(8, i as u8), i, 0).unwrap();
        }
        for i in 1..=4u16 {
            p.set_item_id(i, ItemId(0)).unwrap();
        }
        p.truncate_line_pointer_array().unwrap();
        assert_eq!(p.max_offset(), 1);
        assert!(p.has_free_line_pointers());
        let mut q = new_page(0);
        for i in 1..=3u16 {
            q.add_item(&tuple(8, i as u8), i, 0).unwrap();
        }
        q.set_item_id(3, ItemId(0)).unwrap();
        q.truncate_line_pointer_array().unwrap();
        assert_eq!(q.max_offset(), 2);
        assert!(!q.has_free_line_pointers());
    }

    #[test]
    fn index_tuple_delete_and_multi_delete() {
        let mut p = new_page(16);
        for i in 1..=6u16 {
            p.add_item(&tuple(16, i as u8), i, 0).unwrap();
        }
        p.index_tuple_delete(2).unwrap();
        assert_eq!(p.max_offset(), 5);
        let expect = [1u8, 3, 4, 5, 6];
        for (i, v) in expect.iter().enumerate() {
            assert_eq!(p.item(i as u16 + 1).unwrap()[0], *v);
        }
        assert_eq!(p.upper(), 8176 - 5 * 16);
        p.index_multi_delete(&[1, 3, 5]).unwrap();
        assert_eq!(p.max_offset(), 2);
        assert_eq!(p.item(1).unwrap()[0], 3);
        assert_eq!(p.item(2).unwrap()[0], 5);
        assert_eq!(p.item_id(1).unwrap().off(), 8160);
        assert_eq!(p.upper(), 8144);
        assert_eq!(
            p.index_multi_delete(&[2, 1, 9]),
            Err(PageShapeError::BadOffsetList)
        );
    }

    #[test]
    fn index_tuple_delete_no_compact_keeps_offsets() {
        let mut p = new_page(8);
        for i in 1..=4u16 {
            p.add_item(&tuple(12, i as u8), i, 0).unwrap();
        }
        // A middle item: its pointer stays as LP_UNUSED, later items keep their offsets.
        p.index_tuple_delete_no_compact(2).unwrap();
        assert_eq!(p.max_offset(), 4);
        assert_eq!(p.item_id(2).unwrap().0, 0);
        assert_eq!(p.item(3).unwrap(), &tuple(12, 3)[..]);
        assert_eq!(p.item(4).unwrap(), &tuple(12, 4)[..]);
        assert_eq!(p.item(1).unwrap(), &tuple(12, 1)[..]);
        assert_eq!(p.upper(), 8184 - 3 * 16);
        // The last item: its pointer goes; the unused one before it stays.
        p.index_tuple_delete_no_compact(4).unwrap();
        assert_eq!(p.max_offset(), 3);
        assert_eq!(p.item(3).unwrap(), &tuple(12, 3)[..]);
        assert_eq!(p.item_id(2).unwrap().0, 0);
        assert!(p.index_tuple_delete_no_compact(2).is_err());
        assert!(p.index_tuple_delete_no_compact(9).is_err());
        // An unused slot is reused at its offset by PageAddItem with overwrite.
        assert_eq!(p.add_item(&tuple(20, 7), 2, PAI_OVERWRITE).unwrap(), 2);
        assert_eq!(p.item(2).unwrap(), &tuple(20, 7)[..]);
        assert_eq!(p.max_offset(), 3);
    }

    #[test]
    fn index_tuple_overwrite_shifts_data() {
        let mut p = new_page(16);
        for i in 1..=3u16 {
            p.add_item(&tuple(16, i as u8), i, 0).unwrap();
        }
        // Grow item 2 by 8 bytes: items stored before it (item 3) move down.
        p.index_tuple_overwrite(2, &tuple(24, 9)).unwrap();
        assert_eq!(p.item(2).unwrap(), &tuple(24, 9)[..]);
        assert_eq!(p.item(3).unwrap(), &tuple(16, 3)[..]);
        assert_eq!(p.item(1).unwrap(), &tuple(16, 1)[..]);
        assert_eq!(p.upper(), 8176 - 56);
        // Shrink it back.
        p.index_tuple_overwrite(2, &tuple(10, 7)).unwrap();
        assert_eq!(p.item(2).unwrap(), &tuple(10, 7)[..]);
        assert_eq!(p.item(3).unwrap(), &tuple(16, 3)[..]);
        assert_eq!(p.upper(), 8176 - 48);
    }

    #[test]
    fn free_space() {
        let mut p = new_page(0);
        assert_eq!(p.free_space(), 8192 - 24 - 4);
        p.add_item(&tuple(100, 1), 0, 0).unwrap();
        assert_eq!(p.heap_free_space(), 8192 - 24 - 4 - 104 - 4);
        assert_eq!(p.exact_free_space(), 8192 - 24 - 4 - 104);
    }

    #[test]
    fn corrupt_pointers_are_errors() {
        let mut p = new_page(0);
        p.set_lower(9000);
        assert!(matches!(
            p.repair_fragmentation(),
            Err(PageShapeError::CorruptPointers { .. })
        ));
        assert!(p.add_item(&tuple(8, 1), 0, 0).is_err());
        let q = new_page(0);
        assert!(q.item_id(1).is_err());
    }

    #[test]
    fn checksum_properties() {
        let mut p = new_page(0);
        p.add_item(&tuple(40, 0xAB), 0, 0).unwrap();
        let c0 = checksum_page(&p, 0);
        assert_ne!(c0, 0);
        // pd_checksum itself does not take part.
        p.set_checksum(c0);
        assert_eq!(checksum_page(&p, 0), c0);
        // The block number is mixed in.
        assert_ne!(checksum_page(&p, 1), c0);
        // Every byte counts.
        p[4000] ^= 1;
        assert_ne!(checksum_page(&p, 0), c0);
    }
}
