//! GIN redo (`gin_redo` in `access/gin/ginxlog.c`, PostgreSQL 15): all nine record types,
//! one block reference at a time.
//!
//! Page layout facts (`access/ginblock.h`, `access/gin/ginutil.c`):
//! - Every GIN page has an 8-byte special space, `GinPageOpaqueData` {rightlink, maxoff,
//!   flags}; `GinInitPage` is `PageInit(page, BLCKSZ, 8)` with the flags and an invalid
//!   right link. There is no page id: the flags (below 0x100) end the page.
//! - The metapage (block 0) keeps `GinMetaPageData` (56 bytes) at `PageGetContents`
//!   (offset 24), pd_lower just past it (80).
//! - Entry-tree pages and pending-list pages hold ordinary index tuples.
//! - Posting-tree (data) pages keep, at offset 24, the right bound (an item pointer,
//!   MAXALIGNed to 8 bytes), then from offset 32 either `PostingItem`s (internal pages,
//!   10 bytes each, `maxoff` of them) or, on leaves, a sequence of compressed
//!   `GinPostingList` segments; pd_lower marks the end of either (`GinDataPageSetDataSize`).
//! - A compressed segment is the first item pointer, a uint16 byte count, and the
//!   following items as varbyte-encoded deltas of `block << 11 | offset`
//!   (`access/gin/ginpostinglist.c`), padded to an even length.
//!
//! Page splits, root splits and entry-leaf vacuuming log full page images of every page
//! they change (`ginRedoSplit` and `ginRedoVacuumPage` raise an error without them); the
//! engine restores those before this module is reached, so a block of those records that
//! arrives here is malformed. Every other change stamps the page with the record's end LSN.

use super::page::{Page, PageLayout, SIZE_OF_PAGE_HEADER, get_u16, get_u32, put_u16, put_u32};
use super::{LsnRule, RedoErrorKind, malformed, require_init, shape, unexpected_block};
use crate::wal::block::BlockRef;
use crate::wal::page::BLCKSZ;
use crate::wal::record::DecodedRecord;
use crate::wal::rmgr::gin::{
    GIN_META_DATA_SIZE, GIN_POSTING_LIST_HEADER, GinRecord, ITEM_POINTER_SIZE, POSTING_ITEM_SIZE,
    SegmentAction, XLOG_GIN_DELETE_LISTPAGE, XLOG_GIN_UPDATE_META_PAGE, parse,
    parse_insert_data_internal, parse_insert_entry, recompress_actions, size_of_posting_list,
};

/// `sizeof(GinPageOpaqueData)`.
pub(crate) const GIN_SPECIAL_SIZE: usize = 8;
/// `GinPageOpaqueData.flags` bits.
pub(crate) const GIN_DATA: u16 = 1 << 0;
pub(crate) const GIN_LEAF: u16 = 1 << 1;
pub(crate) const GIN_DELETED: u16 = 1 << 2;
pub(crate) const GIN_META: u16 = 1 << 3;
pub(crate) const GIN_LIST: u16 = 1 << 4;
pub(crate) const GIN_LIST_FULLROW: u16 = 1 << 5;
pub(crate) const GIN_INCOMPLETE_SPLIT: u16 = 1 << 6;
pub(crate) const GIN_COMPRESSED: u16 = 1 << 7;
/// `GIN_CURRENT_VERSION`.
const GIN_CURRENT_VERSION: u32 = 2;
/// `InvalidBlockNumber`.
const INVALID_BLOCK: u32 = u32::MAX;
/// Where a data page's items or segments start: `PageGetContents` plus the MAXALIGNed
/// right bound.
const GIN_DATA_START: usize = SIZE_OF_PAGE_HEADER + 8;
/// Where the special space starts on every GIN page.
const GIN_SPECIAL_START: usize = BLCKSZ - GIN_SPECIAL_SIZE;
/// `GinDataPageMaxDataSize`.
const GIN_DATA_PAGE_MAX_DATA_SIZE: usize = GIN_SPECIAL_START - GIN_DATA_START;
/// `MaxHeapTuplesPerPageBits`: item pointers are packed as `block << 11 | offset`.
const MAX_HEAP_TUPLES_PER_PAGE_BITS: u32 = 11;

// GinPageOpaqueData fields, at the start of the special space.
const OPAQUE_RIGHTLINK: usize = GIN_SPECIAL_START;
const OPAQUE_MAXOFF: usize = GIN_SPECIAL_START + 4;
const OPAQUE_FLAGS: usize = GIN_SPECIAL_START + 6;

/// The flags of a GIN page (`GinPageGetOpaque(page)->flags`).
pub(crate) fn page_flags(page: &Page) -> u16 {
    get_u16(page, OPAQUE_FLAGS)
}

fn set_page_flags(page: &mut Page, flags: u16) {
    put_u16(page, OPAQUE_FLAGS, flags);
}

fn maxoff(page: &Page) -> u16 {
    get_u16(page, OPAQUE_MAXOFF)
}

fn set_maxoff(page: &mut Page, v: u16) {
    put_u16(page, OPAQUE_MAXOFF, v);
}

fn set_rightlink(page: &mut Page, blk: u32) {
    put_u32(page, OPAQUE_RIGHTLINK, blk);
}

/// `GinInitPage`, on the page of a WILL_INIT block: redo calls it only after
/// `require_init(block, true)`, on the page the engine has just zeroed (`PageInit` zeroes
/// it in PostgreSQL; doing it again here cost a second 8 KB write per pending-list record).
fn gin_init_page(page: &mut Page, flags: u16) {
    page.init_zeroed(GIN_SPECIAL_SIZE);
    set_page_flags(page, flags);
    set_rightlink(page, INVALID_BLOCK);
}

/// `GinInitMetabuffer`, then the logged metadata over the defaults it sets (the redo of
/// UPDATE_META_PAGE and DELETE_LISTPAGE copies the whole `GinMetaPageData`). pd_lower goes
/// just past the metadata so that page images keep it.
///
/// The page is either all zeros (the engine zeroed it for WILL_INIT) or, when
/// [`reinit_in_place`] said so, a metapage already laid out as this leaves it: then only
/// the metadata and pd_checksum (`PageInit` zeroes it) are written.
fn gin_init_metapage(page: &mut Page, metadata: &[u8]) -> Result<(), RedoErrorKind> {
    if metadata.len() != GIN_META_DATA_SIZE {
        return Err(malformed(format!(
            "GIN metadata of {} bytes, expected {GIN_META_DATA_SIZE}",
            metadata.len()
        )));
    }
    let at = SIZE_OF_PAGE_HEADER;
    // The engine leaves a page unzeroed only when `reinit_in_place` found the unused space
    // zero too: the layout is enough to tell the two apart here (a zeroed page has none).
    if has_metapage_layout(page) {
        page.set_checksum(0);
        page[at..at + GIN_META_DATA_SIZE].copy_from_slice(metadata);
        return Ok(());
    }
    gin_init_page(page, GIN_META);
    // The defaults: head and tail invalid, ginVersion current (the copy below replaces
    // them, as in PostgreSQL).
    put_u32(page, at, INVALID_BLOCK);
    put_u32(page, at + 4, INVALID_BLOCK);
    put_u32(page, at + 48, GIN_CURRENT_VERSION);
    page[at..at + GIN_META_DATA_SIZE].copy_from_slice(metadata);
    page.set_lower((at + GIN_META_DATA_SIZE) as u16);
    Ok(())
}

/// pd_lower of a metapage: just past `GinMetaPageData`.
const GIN_META_LOWER: u16 = (SIZE_OF_PAGE_HEADER + GIN_META_DATA_SIZE) as u16;

/// Whether every byte of `page` outside pd_lsn, pd_checksum and the metadata is what
/// `GinInitMetabuffer` leaves: the header's pointers, flags, version and prune xid, the
/// special space, and zeros between pd_lower and pd_upper (checked, not assumed: comparing
/// 8 KB costs a fraction of the two zeroings it saves, and the page stays byte-exact even
/// if that space held something).
fn is_initialised_metapage(page: &Page) -> bool {
    has_metapage_layout(page) && all_zero(&page[GIN_META_LOWER as usize..GIN_SPECIAL_START])
}

/// The header and special space `GinInitMetabuffer` leaves (without the unused space).
fn has_metapage_layout(page: &Page) -> bool {
    page.lower() == GIN_META_LOWER
        && page.upper() as usize == GIN_SPECIAL_START
        && page.special() as usize == GIN_SPECIAL_START
        && page.pagesize_version() == BLCKSZ as u16 | super::page::PG_PAGE_LAYOUT_VERSION
        && page.flags() == 0
        && page.prune_xid() == 0
        && get_u32(page, OPAQUE_RIGHTLINK) == INVALID_BLOCK
        && maxoff(page) == 0
        && page_flags(page) == GIN_META
}

/// Whether every byte of `b` is zero: an OR over 64-byte blocks with no early exit, which
/// the compiler vectorises (it reads the bytes once; `memcmp` against a zero page read
/// twice as much, and a byte loop with an early exit, not vectorised, cost ~5 us a record).
fn all_zero(b: &[u8]) -> bool {
    let (blocks, rest) = b.as_chunks::<64>();
    let mut acc = [0u8; 64];
    for blk in blocks {
        for (a, x) in acc.iter_mut().zip(blk) {
            *a |= x;
        }
    }
    acc.iter().chain(rest).fold(0, |a, x| a | x) == 0
}

/// Whether the engine may leave the page of WILL_INIT block `block` of GIN record `rec`
/// unzeroed: block 0 of UPDATE_META_PAGE and DELETE_LISTPAGE, whose redo re-initialises
/// the metapage (`GinInitMetabuffer`) and copies the logged metadata over it, once per
/// pending-list insertion, when the page is already a metapage as that leaves it
/// ([`is_initialised_metapage`], which also finds the unused space between pd_lower and
/// pd_upper zero, as PostgreSQL's re-initialisation leaves it): the result is byte-exact.
pub(super) fn reinit_in_place(rec: &DecodedRecord, block: &BlockRef, page: &Page) -> bool {
    block.id == 0
        && matches!(
            rec.rmgr_info(),
            XLOG_GIN_UPDATE_META_PAGE | XLOG_GIN_DELETE_LISTPAGE
        )
        && is_initialised_metapage(page)
}

/// A GIN page that redo changes in place must have GIN's special space and the given
/// flags (PostgreSQL asserts `GinPageIsData`/`GinPageIsLeaf`; the engine refuses instead
/// of writing into a page of another shape).
fn require_gin_page(page: &Page, must: u16, must_not: u16) -> Result<u16, RedoErrorKind> {
    if page.special() as usize != GIN_SPECIAL_START {
        return Err(shape(format!(
            "not a GIN page: special space at {} (expected {GIN_SPECIAL_START})",
            page.special()
        )));
    }
    let flags = page_flags(page);
    if flags & must != must || flags & must_not != 0 {
        return Err(shape(format!(
            "GIN page flags {flags:#x} do not fit the record (need {must:#x}, not {must_not:#x})"
        )));
    }
    Ok(flags)
}

/// `gin_redo`: one block reference of a GIN record, by the function of `ginxlog.c` that
/// replays its record type.
pub(super) fn redo_block(
    rec: &DecodedRecord,
    block: &BlockRef,
    page: &mut Page,
) -> Result<LsnRule, RedoErrorKind> {
    let parsed = parse(rec).map_err(|e| malformed(e.to_string()))?;
    match parsed {
        GinRecord::CreatePostingTree { posting_list } => match block.id {
            0 => create_posting_tree(block, page, posting_list),
            id => unexpected_block(id),
        },
        GinRecord::Insert { flags, children } => match block.id {
            0 => insert(rec, block, page, flags, children),
            1 if children.is_some() => clear_incomplete_split(block, page),
            id => unexpected_block(id),
        },
        GinRecord::Split { flags } => match block.id {
            3 if !GinRecord::is_leaf(flags) => clear_incomplete_split(block, page),
            0 => Err(malformed(
                "GIN split record did not contain a full-page image of left page",
            )),
            1 => Err(malformed(
                "GIN split record did not contain a full-page image of right page",
            )),
            2 => Err(malformed(
                "GIN split record did not contain a full-page image of root page",
            )),
            id => unexpected_block(id),
        },
        GinRecord::VacuumPage => Err(malformed(
            "replay of gin entry tree page vacuum did not restore the page",
        )),
        GinRecord::VacuumDataLeafPage => match block.id {
            0 => {
                require_init(block, false)?;
                require_gin_page(page, GIN_DATA | GIN_LEAF, 0)?;
                redo_recompress(page, leaf_actions(rec, rec.block_data(block))?)?;
                Ok(LsnRule::Stamp)
            }
            id => unexpected_block(id),
        },
        GinRecord::DeletePage {
            parent_offset,
            right_link,
            delete_xid,
        } => delete_page(block, page, parent_offset, right_link, delete_xid),
        GinRecord::UpdateMetaPage {
            metadata,
            prev_tail,
            new_rightlink,
            ntuples,
        } => match block.id {
            // Restored unconditionally, like an image: the record carries all of it.
            0 => {
                require_init(block, true)?;
                gin_init_metapage(page, metadata)?;
                Ok(LsnRule::Stamp)
            }
            1 if ntuples > 0 => {
                require_init(block, false)?;
                append_to_tail(rec, block, page, ntuples)
            }
            1 if prev_tail != INVALID_BLOCK => {
                // A new sublist was linked after the old tail.
                require_init(block, false)?;
                require_gin_page(page, GIN_LIST, 0)?;
                set_rightlink(page, new_rightlink);
                Ok(LsnRule::Stamp)
            }
            id => unexpected_block(id),
        },
        GinRecord::InsertListPage { rightlink, ntuples } => match block.id {
            0 => insert_list_page(rec, block, page, rightlink, ntuples),
            id => unexpected_block(id),
        },
        GinRecord::DeleteListPages { metadata, ndeleted } => match block.id {
            0 => {
                require_init(block, true)?;
                gin_init_metapage(page, metadata)?;
                Ok(LsnRule::Stamp)
            }
            // The removed head pages become empty deleted pages; their right links are
            // not kept (no reader can reach them any more).
            id if (id as i32) <= ndeleted => {
                require_init(block, true)?;
                gin_init_page(page, GIN_DELETED);
                Ok(LsnRule::Stamp)
            }
            id => unexpected_block(id),
        },
    }
}

/// `ginRedoCreatePTree`: a new posting tree's root, a compressed leaf holding the logged
/// posting list.
fn create_posting_tree(
    block: &BlockRef,
    page: &mut Page,
    posting_list: &[u8],
) -> Result<LsnRule, RedoErrorKind> {
    require_init(block, true)?;
    if posting_list.len() > GIN_DATA_PAGE_MAX_DATA_SIZE {
        return Err(malformed(format!(
            "posting tree root of {} bytes exceeds GinDataPageMaxDataSize",
            posting_list.len()
        )));
    }
    gin_init_page(page, GIN_DATA | GIN_LEAF | GIN_COMPRESSED);
    page[GIN_DATA_START..GIN_DATA_START + posting_list.len()].copy_from_slice(posting_list);
    set_data_size(page, posting_list.len());
    Ok(LsnRule::Stamp)
}

/// `GinDataPageSetDataSize`: pd_lower marks the end of a data page's items.
fn set_data_size(page: &mut Page, size: usize) {
    page.set_lower((GIN_DATA_START + size) as u16);
}

/// `ginRedoClearIncompleteSplit`: the child whose split an insertion into its parent
/// finishes loses `GIN_INCOMPLETE_SPLIT`.
fn clear_incomplete_split(block: &BlockRef, page: &mut Page) -> Result<LsnRule, RedoErrorKind> {
    require_init(block, false)?;
    let flags = require_gin_page(page, 0, 0)?;
    set_page_flags(page, flags & !GIN_INCOMPLETE_SPLIT);
    Ok(LsnRule::Stamp)
}

/// `ginRedoInsert` on block 0: the payload's form depends on the tree (entry or posting
/// tree) and the level (leaf or internal).
fn insert(
    rec: &DecodedRecord,
    block: &BlockRef,
    page: &mut Page,
    flags: u16,
    children: Option<(u32, u32)>,
) -> Result<LsnRule, RedoErrorKind> {
    require_init(block, false)?;
    let data = rec.block_data(block);
    let is_leaf = GinRecord::is_leaf(flags);
    // A non-leaf insertion finishes a child's split: the right child's block number
    // replaces the downlink at the insert offset, and the new item points to the left.
    let right_child = children.map(|(_, right)| right);
    if GinRecord::is_data(flags) {
        if is_leaf {
            require_gin_page(page, GIN_DATA | GIN_LEAF, 0)?;
            redo_recompress(page, leaf_actions(rec, data)?)?;
        } else {
            require_gin_page(page, GIN_DATA, GIN_LEAF)?;
            let ins =
                parse_insert_data_internal(rec, data).map_err(|e| malformed(e.to_string()))?;
            let right = right_child.unwrap_or(INVALID_BLOCK);
            set_posting_item_block(page, ins.offset, right)?;
            add_posting_item(page, ins.new_item, ins.offset)?;
        }
    } else {
        require_gin_page(page, 0, GIN_DATA)?;
        let ins = parse_insert_entry(rec, data).map_err(|e| malformed(e.to_string()))?;
        insert_entry(page, is_leaf, right_child, &ins)?;
    }
    Ok(LsnRule::Stamp)
}

/// `ginRedoInsertEntry`.
fn insert_entry(
    page: &mut Page,
    is_leaf: bool,
    right_child: Option<u32>,
    ins: &crate::wal::rmgr::gin::InsertEntry<'_>,
) -> Result<(), RedoErrorKind> {
    if let Some(right) = right_child {
        if is_leaf {
            return Err(malformed("GIN leaf insert finishing a split"));
        }
        // GinSetDownlink: the tuple's t_tid becomes (right child, InvalidOffsetNumber).
        let t = page.item_mut(ins.offset)?;
        if t.len() < ITEM_POINTER_SIZE {
            return Err(shape(format!("entry tuple at {} too short", ins.offset)));
        }
        put_u16(t, 0, (right >> 16) as u16);
        put_u16(t, 2, right as u16);
        put_u16(t, 4, 0);
    }
    if ins.is_delete {
        if !is_leaf {
            return Err(malformed("GIN isDelete on an internal entry page"));
        }
        page.index_tuple_delete(ins.offset)?;
    }
    let tuple = index_tuple(ins.tuple)?;
    // PageAddItem(page, itup, IndexTupleSize(itup), offset, overwrite = false,
    // is_heap = false).
    page.add_item(tuple, ins.offset, 0)?;
    Ok(())
}

/// The `IndexTupleSize` bytes of the tuple at the start of `data` (`t_info & 0x1FFF`,
/// `INDEX_SIZE_MASK`).
fn index_tuple(data: &[u8]) -> Result<&[u8], RedoErrorKind> {
    if data.len() < 8 {
        return Err(malformed(format!("index tuple of {} bytes", data.len())));
    }
    let size = (get_u16(data, 6) & 0x1FFF) as usize;
    if size < 8 || size > data.len() {
        return Err(malformed(format!(
            "index tuple size {size} with {} bytes logged",
            data.len()
        )));
    }
    Ok(&data[..size])
}

/// Where `PostingItem` number `offset` (1-based) is on an internal data page.
fn posting_item_pos(offset: u16) -> usize {
    GIN_DATA_START + (offset as usize).saturating_sub(1) * POSTING_ITEM_SIZE
}

fn check_posting_offset(page: &Page, offset: u16, limit: u16) -> Result<(), RedoErrorKind> {
    if offset == 0 || offset > limit {
        return Err(RedoErrorKind::Page(
            super::page::PageShapeError::InvalidOffset {
                offnum: offset,
                max: maxoff(page),
            },
        ));
    }
    Ok(())
}

/// `PostingItemSetBlockNumber` on item `offset`.
fn set_posting_item_block(page: &mut Page, offset: u16, blk: u32) -> Result<(), RedoErrorKind> {
    check_posting_offset(page, offset, maxoff(page))?;
    let pos = posting_item_pos(offset);
    put_u16(page, pos, (blk >> 16) as u16);
    put_u16(page, pos + 2, blk as u16);
    Ok(())
}

/// `GinDataPageAddPostingItem`: the item goes in at `offset`, later ones move up; pd_lower
/// follows the items so that page images can leave out the rest.
fn add_posting_item(page: &mut Page, item: &[u8], offset: u16) -> Result<(), RedoErrorKind> {
    let n = maxoff(page);
    check_posting_offset(page, offset, n.saturating_add(1))?;
    let new_size = (n as usize + 1) * POSTING_ITEM_SIZE;
    if new_size > GIN_DATA_PAGE_MAX_DATA_SIZE {
        return Err(shape(format!("no room for posting item {}", n + 1)));
    }
    let pos = posting_item_pos(offset);
    let end = posting_item_pos(n + 1);
    page.copy_within(pos..end, pos + POSTING_ITEM_SIZE);
    page[pos..pos + POSTING_ITEM_SIZE].copy_from_slice(item);
    set_maxoff(page, n + 1);
    set_data_size(page, new_size);
    Ok(())
}

/// `GinPageDeletePostingItem`.
fn delete_posting_item(page: &mut Page, offset: u16) -> Result<(), RedoErrorKind> {
    let n = maxoff(page);
    check_posting_offset(page, offset, n)?;
    let pos = posting_item_pos(offset);
    page.copy_within(pos + POSTING_ITEM_SIZE..posting_item_pos(n + 1), pos);
    set_maxoff(page, n - 1);
    set_data_size(page, (n as usize - 1) * POSTING_ITEM_SIZE);
    Ok(())
}

/// `ginRedoDeletePage`: the left sibling's right link skips the page (block 2), the page
/// is marked deleted with the last XID that could see it in pd_prune_xid (block 0), and
/// its downlink leaves the parent (block 1).
fn delete_page(
    block: &BlockRef,
    page: &mut Page,
    parent_offset: u16,
    right_link: u32,
    delete_xid: u32,
) -> Result<LsnRule, RedoErrorKind> {
    require_init(block, false)?;
    match block.id {
        0 => {
            let flags = require_gin_page(page, GIN_DATA, 0)?;
            set_page_flags(page, flags | GIN_DELETED);
            page.set_prune_xid(delete_xid);
        }
        1 => {
            require_gin_page(page, GIN_DATA, GIN_LEAF)?;
            delete_posting_item(page, parent_offset)?;
        }
        2 => {
            require_gin_page(page, GIN_DATA, 0)?;
            set_rightlink(page, right_link);
        }
        id => return unexpected_block(id),
    }
    Ok(LsnRule::Stamp)
}

/// The `ntuples` index tuples packed one after another in `data`, which they must fill.
/// The whole payload is checked first (so a malformed one changes no page), then the
/// tuples are handed out one at a time, without collecting them.
fn packed_tuples(data: &[u8], ntuples: i32) -> Result<PackedTuples<'_>, RedoErrorKind> {
    let n = usize::try_from(ntuples).map_err(|_| malformed(format!("ntuples {ntuples}")))?;
    let mut rest = data;
    for _ in 0..n {
        let t = index_tuple(rest)?;
        rest = &rest[t.len()..];
    }
    if !rest.is_empty() {
        return Err(malformed(format!(
            "{} bytes left after {n} pending-list tuples",
            rest.len()
        )));
    }
    Ok(PackedTuples { rest: data })
}

/// The tuples of a payload [`packed_tuples`] checked.
struct PackedTuples<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for PackedTuples<'a> {
    type Item = &'a [u8];
    fn next(&mut self) -> Option<&'a [u8]> {
        // (At the end, without building index_tuple's error.)
        if self.rest.len() < 8 {
            return None;
        }
        let t = index_tuple(self.rest).ok()?;
        self.rest = &self.rest[t.len()..];
        Some(t)
    }
}

/// `ginRedoUpdateMetapage`, block 1 with tuples: the pending list's tail gets them
/// appended, and its heap-tuple counter (`maxoff` on list pages) goes up by one.
fn append_to_tail(
    rec: &DecodedRecord,
    block: &BlockRef,
    page: &mut Page,
    ntuples: i32,
) -> Result<LsnRule, RedoErrorKind> {
    require_gin_page(page, GIN_LIST, 0)?;
    let tuples = packed_tuples(rec.block_data(block), ntuples)?;
    let first = if page.is_empty_page() {
        1
    } else {
        page.max_offset() + 1
    };
    for (off, t) in (first..).zip(tuples) {
        page.add_item(t, off, 0)?;
    }
    set_maxoff(page, maxoff(page).wrapping_add(1));
    Ok(LsnRule::Stamp)
}

/// `ginRedoInsertListPage`: a pending-list page built from nothing. The last page of a
/// sublist (no right link) holds whole rows (`GIN_LIST_FULLROW`) and counts one heap tuple.
fn insert_list_page(
    rec: &DecodedRecord,
    block: &BlockRef,
    page: &mut Page,
    rightlink: u32,
    ntuples: i32,
) -> Result<LsnRule, RedoErrorKind> {
    require_init(block, true)?;
    let tuples = packed_tuples(rec.block_data(block), ntuples)?;
    gin_init_page(page, GIN_LIST);
    set_rightlink(page, rightlink);
    if rightlink == INVALID_BLOCK {
        set_page_flags(page, GIN_LIST | GIN_LIST_FULLROW);
        set_maxoff(page, 1);
    }
    for (i, t) in tuples.enumerate() {
        page.add_item(t, i as u16 + 1, 0)?;
    }
    Ok(LsnRule::Stamp)
}

// ---- compressed posting lists (access/gin/ginpostinglist.c) ----

/// An item pointer as GIN orders and encodes it: `block << 11 | offset`.
type PackedItem = u64;

fn pack(blk: u32, off: u16) -> PackedItem {
    (blk as u64) << MAX_HEAP_TUPLES_PER_PAGE_BITS | off as u64
}

fn read_item_pointer(b: &[u8]) -> PackedItem {
    let blk = (get_u16(b, 0) as u32) << 16 | get_u16(b, 2) as u32;
    pack(blk, get_u16(b, 4))
}

fn write_item_pointer(out: &mut Vec<u8>, item: PackedItem) {
    let blk = (item >> MAX_HEAP_TUPLES_PER_PAGE_BITS) as u32;
    let off = (item & ((1 << MAX_HEAP_TUPLES_PER_PAGE_BITS) - 1)) as u16;
    out.extend_from_slice(&((blk >> 16) as u16).to_le_bytes());
    out.extend_from_slice(&(blk as u16).to_le_bytes());
    out.extend_from_slice(&off.to_le_bytes());
}

/// The length of the segment at the start of `b` (`SizeOfGinPostingList`), if it fits.
fn segment_len(b: &[u8]) -> Option<usize> {
    if b.len() < GIN_POSTING_LIST_HEADER {
        return None;
    }
    let len = size_of_posting_list(get_u16(b, ITEM_POINTER_SIZE) as usize);
    (len <= b.len()).then_some(len)
}

/// `ginPostingListDecode` of one segment: the first item, then varbyte deltas (seven bits
/// a byte, high bit set on all but the last; a seventh byte is taken whole). The redo
/// decodes as it merges ([`SegmentItems`]); this is the tests' reference.
#[cfg(test)]
fn decode_segment(seg: &[u8]) -> Result<Vec<PackedItem>, RedoErrorKind> {
    let bad = |what: &str| shape(format!("corrupt GIN posting list: {what}"));
    let len = segment_len(seg).ok_or_else(|| bad("truncated header"))?;
    let nbytes = get_u16(seg, ITEM_POINTER_SIZE) as usize;
    let _ = len;
    let bytes = &seg[GIN_POSTING_LIST_HEADER..GIN_POSTING_LIST_HEADER + nbytes];
    let mut items = vec![read_item_pointer(seg)];
    let mut prev = items[0];
    let mut i = 0;
    while i < bytes.len() {
        let mut delta: u64 = 0;
        let mut k = 0;
        loop {
            let c = *bytes
                .get(i)
                .ok_or_else(|| bad("varbyte runs past the segment"))? as u64;
            i += 1;
            if k == 6 {
                delta |= c << 42;
                break;
            }
            delta |= (c & 0x7F) << (7 * k);
            if c & 0x80 == 0 {
                break;
            }
            k += 1;
        }
        prev = prev
            .checked_add(delta)
            .filter(|v| v >> MAX_HEAP_TUPLES_PER_PAGE_BITS <= u32::MAX as u64)
            .ok_or_else(|| bad("item pointer out of range"))?;
        items.push(prev);
    }
    Ok(items)
}

/// Appends one delta of a posting list in `ginpostinglist.c`'s varbyte encoding: 7 bits
/// per byte, low bits first, the high bit set on every byte but the last.
#[inline]
fn push_varbyte(out: &mut Vec<u8>, mut delta: PackedItem) {
    while delta > 0x7F {
        out.push(0x80 | (delta & 0x7F) as u8);
        delta >>= 7;
    }
    out.push(delta as u8);
}

/// `ginCompressPostingList` with room for everything (redo passes BLCKSZ): one segment.
fn encode_segment(items: &[PackedItem]) -> Result<Vec<u8>, RedoErrorKind> {
    let (&first, rest) = items
        .split_first()
        .ok_or_else(|| malformed("empty GIN posting list"))?;
    let mut out = Vec::with_capacity(GIN_POSTING_LIST_HEADER + rest.len() * 2);
    write_item_pointer(&mut out, first);
    out.extend_from_slice(&[0, 0]);
    let mut prev = first;
    for &item in rest {
        if item <= prev {
            return Err(malformed("GIN posting list items out of order"));
        }
        push_varbyte(&mut out, item - prev);
        prev = item;
    }
    let nbytes = out.len() - GIN_POSTING_LIST_HEADER;
    if nbytes > u16::MAX as usize || out.len() > BLCKSZ {
        return Err(malformed("GIN posting list does not fit a page"));
    }
    put_u16(&mut out, ITEM_POINTER_SIZE, nbytes as u16);
    // An odd length is padded with a zero byte.
    if nbytes % 2 == 1 {
        out.push(0);
    }
    Ok(out)
}

/// `ginMergeItemPointers`: the sorted union of two sorted lists (the tests' reference; the
/// redo merges as it decodes, in [`merge_into_segment`]).
#[cfg(test)]
fn merge_items(a: &[PackedItem], b: &[PackedItem]) -> Vec<PackedItem> {
    let mut out = Vec::with_capacity(a.len() + b.len());
    let (mut i, mut j) = (0, 0);
    while i < a.len() && j < b.len() {
        match a[i].cmp(&b[j]) {
            std::cmp::Ordering::Less => {
                out.push(a[i]);
                i += 1;
            }
            std::cmp::Ordering::Greater => {
                out.push(b[j]);
                j += 1;
            }
            std::cmp::Ordering::Equal => {
                out.push(b[j]);
                i += 1;
                j += 1;
            }
        }
    }
    out.extend_from_slice(&a[i..]);
    out.extend_from_slice(&b[j..]);
    out
}

thread_local! {
    /// Where a leaf's rewritten segments are assembled before they replace the old ones:
    /// one buffer per thread, reused, so that replaying posting-tree inserts and vacuums
    /// does not allocate.
    static LEAF_TAIL: std::cell::RefCell<Vec<u8>> =
        std::cell::RefCell::new(Vec::with_capacity(BLCKSZ));
}

/// The end of a data leaf's segment area (pd_lower), the leaf converted to the compressed
/// format first if it is a pre-9.4 uncompressed one (as `ginRedoRecompress` does).
fn compressed_leaf_end(page: &mut Page) -> Result<usize, RedoErrorKind> {
    if page_flags(page) & GIN_COMPRESSED == 0 {
        convert_uncompressed_leaf(page)?;
    }
    let end = page.lower() as usize;
    if !(GIN_DATA_START..=GIN_SPECIAL_START).contains(&end) {
        return Err(shape(format!("GIN data leaf with pd_lower {end}")));
    }
    Ok(end)
}

/// `ginRedoRecompress`: a posting-tree leaf's segments after the logged actions. The
/// actions name segments by their number in the old page, in increasing order; segments
/// no action names are kept as they are.
///
/// Like PostgreSQL, only the part of the segment area from the first segment an action
/// names is rewritten: the segments before it stay in place, the rest is rebuilt (in a
/// per-thread buffer, read from the old page) and copied back once, and pd_lower is set
/// past the last segment; bytes after it are unused space, as in PostgreSQL. The page is
/// left untouched when the record does not fit it.
fn redo_recompress<'a>(
    page: &mut Page,
    actions: impl IntoIterator<Item = Result<(u8, SegmentAction<'a>), RedoErrorKind>>,
) -> Result<(), RedoErrorKind> {
    let end = compressed_leaf_end(page)?;
    let mut actions = actions.into_iter();
    let Some(first) = actions.next().transpose()? else {
        return Ok(());
    };
    // The new segments from the first one an action names to the end, built from the old
    // page in the thread's buffer (taken out of it meanwhile), then copied over.
    let mut out = LEAF_TAIL.with(|b| std::mem::take(&mut *b.borrow_mut()));
    out.clear();
    let built = rebuild_segments(&page[GIN_DATA_START..end], first, actions, &mut out);
    let res = built.map(|start| {
        let size = start + out.len();
        page[GIN_DATA_START + start..GIN_DATA_START + size].copy_from_slice(&out);
        set_data_size(page, size);
    });
    LEAF_TAIL.with(|b| *b.borrow_mut() = out);
    res
}

/// The work of [`redo_recompress`] on the old segment area `area`: skips the segments
/// before the first action's, then appends to `out` what replaces them from there on (the
/// actions' results and the segments between and after them). Returns where in the area
/// `out` goes. A malformed action is met before the page is written: it stays as it was.
fn rebuild_segments<'a>(
    area: &[u8],
    first: (u8, SegmentAction<'a>),
    actions: impl Iterator<Item = Result<(u8, SegmentAction<'a>), RedoErrorKind>>,
    out: &mut Vec<u8>,
) -> Result<usize, RedoErrorKind> {
    let mut read = 0usize;
    let mut segno = 0usize;
    while segno < first.0 as usize {
        let len = segment_at(area, read)?.ok_or_else(|| {
            malformed(format!("GIN leaf action on segment {} of {segno}", first.0))
        })?;
        read += len;
        segno += 1;
    }
    let start = read;
    for a in std::iter::once(Ok(first)).chain(actions) {
        let (a_segno, action) = a?;
        let a_segno = a_segno as usize;
        if a_segno < segno {
            return Err(malformed(format!(
                "GIN leaf action on segment {a_segno} after segment {segno}"
            )));
        }
        // Segments between the actions are copied as they are.
        while segno < a_segno {
            let len = segment_at(area, read)?.ok_or_else(|| {
                malformed(format!("GIN leaf action on segment {a_segno} of {segno}"))
            })?;
            out.extend_from_slice(&area[read..read + len]);
            read += len;
            segno += 1;
        }
        let existing = segment_at(area, read)?;
        match (action, existing) {
            (SegmentAction::Insert(seg), _) => out.extend_from_slice(seg),
            (SegmentAction::Delete, Some(len)) => {
                read += len;
                segno += 1;
            }
            (SegmentAction::Replace(seg), Some(len)) => {
                out.extend_from_slice(seg);
                read += len;
                segno += 1;
            }
            (SegmentAction::AddItems(raw), Some(len)) => {
                merge_into_segment(out, &area[read..read + len], raw, segno)?;
                read += len;
                segno += 1;
            }
            (_, None) => {
                return Err(malformed(format!(
                    "GIN leaf action on segment {segno} past the last of {segno}"
                )));
            }
        }
        if start + out.len() > GIN_DATA_PAGE_MAX_DATA_SIZE {
            return Err(too_big(start + out.len()));
        }
    }
    // The segments after the last action follow unchanged.
    let rest = &area[read..];
    let size = start + out.len() + rest.len();
    if size > GIN_DATA_PAGE_MAX_DATA_SIZE {
        return Err(too_big(size));
    }
    out.extend_from_slice(rest);
    Ok(start)
}

/// The actions of a leaf recompression (block data of a leaf INSERT or of
/// VACUUM_DATA_LEAF_PAGE), parsed as redo applies them.
fn leaf_actions<'a>(
    rec: &DecodedRecord,
    data: &'a [u8],
) -> Result<
    impl Iterator<Item = Result<(u8, SegmentAction<'a>), RedoErrorKind>> + use<'a>,
    RedoErrorKind,
> {
    Ok(recompress_actions(rec, data)
        .map_err(|e| malformed(e.to_string()))?
        .map(|a| a.map_err(|e| malformed(e.to_string()))))
}

fn too_big(size: usize) -> RedoErrorKind {
    shape(format!(
        "GIN leaf segments of {size} bytes exceed GinDataPageMaxDataSize"
    ))
}

/// The length of the segment at `at` in a leaf's segment area, None at its end.
fn segment_at(area: &[u8], at: usize) -> Result<Option<usize>, RedoErrorKind> {
    if at >= area.len() {
        return Ok(None);
    }
    segment_len(&area[at..])
        .map(Some)
        .ok_or_else(|| shape("corrupt GIN posting list: segment past pd_lower".into()))
}

/// The next varbyte-encoded delta of a segment's data at `*i` (seven bits a byte, high
/// bit set on all but the last; a seventh byte is taken whole), as `ginPostingListDecode`
/// reads them.
#[inline]
fn next_delta(bytes: &[u8], i: &mut usize) -> Option<u64> {
    let mut delta: u64 = 0;
    let mut k = 0;
    loop {
        let c = *bytes.get(*i)? as u64;
        *i += 1;
        if k == 6 {
            return Some(delta | c << 42);
        }
        delta |= (c & 0x7F) << (7 * k);
        if c & 0x80 == 0 {
            return Some(delta);
        }
        k += 1;
    }
}

fn corrupt_segment(what: &str) -> RedoErrorKind {
    shape(format!("corrupt GIN posting list: {what}"))
}

/// The varbyte delta at the start of `b` and its length in bytes, if `ginCompressPostingList`
/// would have written that delta so: not zero, in the fewest bytes (a last byte of zero
/// means a shorter encoding existed; a seventh byte carries the top bits whole, at most 0x7F
/// for a delta PostgreSQL can write).
#[inline]
fn canonical_delta(b: &[u8]) -> Option<(u64, usize)> {
    let mut delta: u64 = 0;
    for (k, &c) in b.iter().enumerate().take(7) {
        if k == 6 {
            return (c != 0 && c < 0x80).then_some((delta | (c as u64) << 42, 7));
        }
        delta |= ((c & 0x7F) as u64) << (7 * k);
        if c & 0x80 == 0 {
            return (c != 0).then_some((delta, k + 1));
        }
    }
    None
}

/// The items of one compressed segment, decoded as they are read.
struct SegmentItems<'a> {
    bytes: &'a [u8],
    /// Where the delta after `next` starts.
    i: usize,
    /// The next item to take (decoded one ahead), and where its delta starts (0 for the
    /// first item, which the header holds).
    next: Option<PackedItem>,
    next_at: usize,
}

impl<'a> SegmentItems<'a> {
    fn new(seg: &'a [u8]) -> Result<Self, RedoErrorKind> {
        segment_len(seg).ok_or_else(|| corrupt_segment("truncated header"))?;
        let nbytes = get_u16(seg, ITEM_POINTER_SIZE) as usize;
        Ok(SegmentItems {
            bytes: &seg[GIN_POSTING_LIST_HEADER..GIN_POSTING_LIST_HEADER + nbytes],
            i: 0,
            next: Some(read_item_pointer(seg)),
            next_at: 0,
        })
    }

    /// Before any item is taken: steps over the items below `bound` and returns the first,
    /// the varbyte deltas of the others (bytes of the segment, which merging items after
    /// them leaves unchanged) and the last; the next item taken is the first at or above
    /// `bound`. None, having stepped over nothing, when the first item is not below `bound`
    /// or a delta on the way is not as `ginCompressPostingList` writes it (zero, or not in
    /// the fewest bytes: re-encoding would change it) or cannot be read: the caller then
    /// merges item by item, which also reports what is wrong.
    fn canonical_prefix_below(
        &mut self,
        bound: PackedItem,
    ) -> Option<(PackedItem, &'a [u8], PackedItem)> {
        let first = self.next.filter(|f| self.i == 0 && *f < bound)?;
        let bytes = self.bytes;
        let (mut at, mut item) = (0usize, first);
        while at < bytes.len() {
            let (delta, len) = canonical_delta(&bytes[at..])?;
            let next = item + delta;
            if next >= bound {
                if next >> MAX_HEAP_TUPLES_PER_PAGE_BITS > u32::MAX as u64 {
                    return None;
                }
                self.next = Some(next);
                self.next_at = at;
                self.i = at + len;
                return Some((first, &bytes[..at], item));
            }
            item = next;
            at += len;
        }
        self.next = None;
        self.i = bytes.len();
        Some((first, bytes, item))
    }

    /// After an item was taken: the varbyte deltas of every item not taken yet (bytes of the
    /// segment, unchanged when they follow the item taken) and the last item, then nothing
    /// is left to take; None, taking nothing, when one of them is not as
    /// `ginCompressPostingList` writes it or cannot be read (see
    /// [`SegmentItems::canonical_prefix_below`]).
    fn canonical_rest(&mut self) -> Option<(&'a [u8], Option<PackedItem>)> {
        let Some(mut item) = self.next else {
            return Some((&[], None));
        };
        if self.i == 0 {
            return None; // nothing taken yet: the first item is in the header
        }
        let rest = &self.bytes[self.next_at..];
        let mut at = self.i - self.next_at;
        while at < rest.len() {
            let (delta, len) = canonical_delta(&rest[at..])?;
            item += delta;
            at += len;
        }
        // The one delta already decoded (`next`'s) is checked like the others.
        canonical_delta(rest)?;
        if item >> MAX_HEAP_TUPLES_PER_PAGE_BITS > u32::MAX as u64 {
            return None;
        }
        self.next = None;
        self.i = self.bytes.len();
        Some((rest, Some(item)))
    }

    /// The current item, and a step to the one after it.
    #[inline]
    fn take(&mut self) -> Result<Option<PackedItem>, RedoErrorKind> {
        let Some(cur) = self.next else {
            return Ok(None);
        };
        self.next_at = self.i;
        self.next = if self.i < self.bytes.len() {
            let delta = next_delta(self.bytes, &mut self.i)
                .ok_or_else(|| corrupt_segment("varbyte runs past the segment"))?;
            Some(
                cur.checked_add(delta)
                    .filter(|v| v >> MAX_HEAP_TUPLES_PER_PAGE_BITS <= u32::MAX as u64)
                    .ok_or_else(|| corrupt_segment("item pointer out of range"))?,
            )
        } else {
            None
        };
        Ok(Some(cur))
    }
}

/// Appends a compressed segment (`ginCompressPostingList` with room for everything, as
/// redo calls it) to `out`, item by item: the first item, a placeholder for the byte
/// count, then the deltas.
struct SegmentWriter {
    start: usize,
    prev: Option<PackedItem>,
}

impl SegmentWriter {
    fn new(out: &[u8]) -> SegmentWriter {
        SegmentWriter {
            start: out.len(),
            prev: None,
        }
    }

    #[inline]
    fn push(&mut self, out: &mut Vec<u8>, item: PackedItem) -> Result<(), RedoErrorKind> {
        match self.prev {
            None => {
                write_item_pointer(out, item);
                out.extend_from_slice(&[0, 0]);
            }
            Some(prev) => {
                if item <= prev {
                    return Err(malformed("GIN posting list items out of order"));
                }
                push_varbyte(out, item - prev);
            }
        }
        self.prev = Some(item);
        Ok(())
    }

    /// Fills in the byte count and pads an odd one with a zero byte.
    fn finish(self, out: &mut Vec<u8>) -> Result<(), RedoErrorKind> {
        if self.prev.is_none() {
            return Err(malformed("empty GIN posting list"));
        }
        let nbytes = out.len() - self.start - GIN_POSTING_LIST_HEADER;
        if nbytes > u16::MAX as usize || out.len() - self.start > BLCKSZ {
            return Err(malformed("GIN posting list does not fit a page"));
        }
        put_u16(out, self.start + ITEM_POINTER_SIZE, nbytes as u16);
        if nbytes % 2 == 1 {
            out.push(0);
        }
        Ok(())
    }
}

/// GIN_SEGMENT_ADDITEMS: the old segment's items and the logged ones (`raw`, item pointers
/// of 6 bytes), merged (`ginMergeItemPointers`) and compressed again as one segment,
/// appended to `out`. PostgreSQL asserts that none of the added items is in the segment
/// already; here that is an error.
fn merge_into_segment(
    out: &mut Vec<u8>,
    old: &[u8],
    raw: &[u8],
    segno: usize,
) -> Result<(), RedoErrorKind> {
    let mut olditems = SegmentItems::new(old)?;
    let mut added = raw.chunks_exact(ITEM_POINTER_SIZE).map(read_item_pointer);
    let mut w = SegmentWriter::new(out);
    let mut a = added.next();
    // The old items below the first added one keep their deltas, hence their bytes: they
    // are copied as they are rather than decoded and encoded again (new heap TIDs are
    // mostly the largest, so this is usually the whole old segment).
    if let Some(bound) = a
        && let Some((first, deltas, last)) = olditems.canonical_prefix_below(bound)
    {
        w.push(out, first)?;
        out.extend_from_slice(deltas);
        w.prev = Some(last);
    }
    let mut o = olditems.take()?;
    let mut copy_rest = true;
    loop {
        if copy_rest
            && a.is_none()
            && let Some(y) = o
        {
            // Every added item is placed: the old items after `y` keep their deltas, and
            // their bytes are copied as they are (tried once: what failed stays ahead).
            copy_rest = false;
            w.push(out, y)?;
            if let Some((rest, last)) = olditems.canonical_rest() {
                out.extend_from_slice(rest);
                if last.is_some() {
                    w.prev = last;
                }
                break;
            }
            o = olditems.take()?;
            continue;
        }
        let item = match (a, o) {
            (Some(x), Some(y)) if x < y => {
                a = added.next();
                x
            }
            (Some(x), Some(y)) if x == y => {
                return Err(malformed(format!(
                    "GIN ADDITEMS of {} items to segment {segno} repeats items",
                    raw.len() / ITEM_POINTER_SIZE
                )));
            }
            (_, Some(y)) => {
                o = olditems.take()?;
                y
            }
            (Some(x), None) => {
                a = added.next();
                x
            }
            (None, None) => break,
        };
        w.push(out, item)?;
    }
    w.finish(out)
}

/// A pre-9.4 (pg_upgrade'd) leaf keeps `maxoff` plain item pointers; `ginRedoRecompress`
/// first turns them into one compressed segment.
fn convert_uncompressed_leaf(page: &mut Page) -> Result<(), RedoErrorKind> {
    let n = maxoff(page) as usize;
    let end = GIN_DATA_START + n * ITEM_POINTER_SIZE;
    if end > GIN_SPECIAL_START {
        return Err(shape(format!("uncompressed GIN leaf with {n} items")));
    }
    let size = if n > 0 {
        let items: Vec<PackedItem> = page[GIN_DATA_START..end]
            .chunks_exact(ITEM_POINTER_SIZE)
            .map(read_item_pointer)
            .collect();
        let seg = encode_segment(&items)?;
        if seg.len() > GIN_DATA_PAGE_MAX_DATA_SIZE {
            return Err(shape("converted GIN leaf does not fit".into()));
        }
        page[GIN_DATA_START..GIN_DATA_START + seg.len()].copy_from_slice(&seg);
        seg.len()
    } else {
        0
    };
    set_data_size(page, size);
    set_page_flags(page, page_flags(page) | GIN_COMPRESSED);
    set_maxoff(page, 0);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn items(v: &[(u32, u16)]) -> Vec<PackedItem> {
        v.iter().map(|&(b, o)| pack(b, o)).collect()
    }

    /// The recompression as it was first written (decode, merge and re-encode into a new
    /// segment area, copied over the old one): the reference the in-place version must
    /// agree with.
    fn reference_recompress(
        page: &mut Page,
        actions: &[(u8, SegmentAction<'_>)],
    ) -> Result<(), RedoErrorKind> {
        let end = compressed_leaf_end(page)?;
        let old_area = page[GIN_DATA_START..end].to_vec();
        let mut old: Vec<&[u8]> = Vec::new();
        let mut rest = &old_area[..];
        while !rest.is_empty() {
            let len = segment_len(rest)
                .ok_or_else(|| shape("corrupt GIN posting list: segment past pd_lower".into()))?;
            old.push(&rest[..len]);
            rest = &rest[len..];
        }

        let mut out: Vec<u8> = Vec::with_capacity(old_area.len() + 64);
        let mut segno = 0usize;
        for (a_segno, action) in actions {
            let a_segno = *a_segno as usize;
            if a_segno < segno {
                return Err(malformed(format!(
                    "GIN leaf action on segment {a_segno} after segment {segno}"
                )));
            }
            while segno < a_segno {
                let seg = old.get(segno).ok_or_else(|| {
                    malformed(format!(
                        "GIN leaf action on segment {a_segno} of {}",
                        old.len()
                    ))
                })?;
                out.extend_from_slice(seg);
                segno += 1;
            }
            let existing = old.get(segno);
            match (action, existing) {
                (SegmentAction::Insert(seg), _) => out.extend_from_slice(seg),
                (SegmentAction::Delete, Some(_)) => segno += 1,
                (SegmentAction::Replace(seg), Some(_)) => {
                    out.extend_from_slice(seg);
                    segno += 1;
                }
                (SegmentAction::AddItems(raw), Some(seg)) => {
                    let added: Vec<PackedItem> = raw
                        .chunks_exact(ITEM_POINTER_SIZE)
                        .map(read_item_pointer)
                        .collect();
                    let olditems = decode_segment(seg)?;
                    let merged = merge_items(&added, &olditems);
                    // PostgreSQL asserts this: the added items are new to the segment.
                    if merged.len() != olditems.len() + added.len() {
                        return Err(malformed(format!(
                            "GIN ADDITEMS of {} items to segment {segno} repeats items",
                            added.len()
                        )));
                    }
                    out.extend_from_slice(&encode_segment(&merged)?);
                    segno += 1;
                }
                (_, None) => {
                    return Err(malformed(format!(
                        "GIN leaf action on segment {segno} past the last of {}",
                        old.len()
                    )));
                }
            }
        }
        for seg in old.iter().skip(segno) {
            out.extend_from_slice(seg);
        }
        if out.len() > GIN_DATA_PAGE_MAX_DATA_SIZE {
            return Err(shape(format!(
                "GIN leaf segments of {} bytes exceed GinDataPageMaxDataSize",
                out.len()
            )));
        }
        page[GIN_DATA_START..GIN_DATA_START + out.len()].copy_from_slice(&out);
        set_data_size(page, out.len());
        Ok(())
    }

    /// A leaf holding `segs` (each a sorted item list) as compressed segments.
    fn leaf_with(segs: &[Vec<PackedItem>]) -> Box<Page> {
        let mut p = Box::new([0u8; BLCKSZ]);
        gin_init_page(&mut p, GIN_DATA | GIN_LEAF | GIN_COMPRESSED);
        let all: Vec<u8> = segs
            .iter()
            .flat_map(|s| encode_segment(s).unwrap())
            .collect();
        p[GIN_DATA_START..GIN_DATA_START + all.len()].copy_from_slice(&all);
        set_data_size(&mut p, all.len());
        p
    }

    fn sorted_items(v: Vec<u64>) -> Vec<PackedItem> {
        let mut v: Vec<PackedItem> = v
            .into_iter()
            .map(|x| pack((x >> 11) as u32, (x & 2047) as u16))
            .collect();
        v.sort_unstable();
        v.dedup();
        v
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2000))]
        /// The in-place recompression gives the reference's page, or fails where it fails.
        #[test]
        fn recompress_agrees_with_the_reference(
            segs in proptest::collection::vec(
                proptest::collection::vec(0u64..400_000, 1..40), 0..6),
            acts in proptest::collection::vec(
                (0u8..8, 0u8..4, proptest::collection::vec(0u64..400_000, 1..12)), 0..5),
        ) {
            let segs: Vec<Vec<PackedItem>> = segs.into_iter().map(sorted_items).collect();
            let mut acts = acts;
            acts.sort_by_key(|a| a.0);
            let mut payloads: Vec<Vec<u8>> = Vec::new();
            for (_, kind, items) in &acts {
                let items = sorted_items(items.clone());
                payloads.push(if *kind == 3 {
                    let mut raw = Vec::new();
                    for &i in &items {
                        write_item_pointer(&mut raw, i);
                    }
                    raw
                } else {
                    encode_segment(&items).unwrap()
                });
            }
            let actions: Vec<(u8, SegmentAction<'_>)> = acts
                .iter()
                .zip(&payloads)
                .map(|((segno, kind, _), p)| {
                    (*segno, match kind {
                        0 => SegmentAction::Delete,
                        1 => SegmentAction::Insert(p),
                        2 => SegmentAction::Replace(p),
                        _ => SegmentAction::AddItems(p),
                    })
                })
                .collect();
            let mut want = leaf_with(&segs);
            let mut got = want.clone();
            let w = reference_recompress(&mut want, &actions);
            let g = redo_recompress(&mut got, actions.iter().copied().map(Ok));
            proptest::prop_assert_eq!(w.is_ok(), g.is_ok(), "reference {:?}, in place {:?}", w, g);
            if w.is_ok() {
                proptest::prop_assert_eq!(&want[..], &got[..]);
            }
        }
    }

    #[test]
    fn posting_list_round_trip() {
        // Deltas of one to seven varbyte bytes, the largest block number included.
        let list = items(&[
            (0, 1),
            (0, 2),
            (3, 7),
            (1000, 1),
            (70_000, 5),
            (u32::MAX, 2047),
        ]);
        let seg = encode_segment(&list).unwrap();
        assert_eq!(seg.len() % 2, 0);
        assert_eq!(segment_len(&seg), Some(seg.len()));
        assert_eq!(decode_segment(&seg).unwrap(), list);
        // (0,1) -> (0,2): delta 1, one byte.
        assert_eq!(seg[GIN_POSTING_LIST_HEADER], 1);
        assert!(encode_segment(&items(&[(1, 1), (1, 1)])).is_err());
        assert!(encode_segment(&[]).is_err());
    }

    #[test]
    fn truncated_varbyte_is_an_error() {
        let mut seg = encode_segment(&items(&[(0, 1), (5000, 3)])).unwrap();
        // Claim one byte fewer: the last delta's continuation bit then runs out.
        let nbytes = get_u16(&seg, ITEM_POINTER_SIZE) - 1;
        put_u16(&mut seg, ITEM_POINTER_SIZE, nbytes);
        assert!(decode_segment(&seg).is_err());
    }

    #[test]
    fn merge_is_a_sorted_union() {
        assert_eq!(merge_items(&[1, 4, 9], &[2, 4, 10]), vec![1, 2, 4, 9, 10]);
        assert_eq!(merge_items(&[], &[3]), vec![3]);
    }

    #[test]
    fn only_a_metapage_as_postgres_leaves_it_is_reinitialised_in_place() {
        let mut p = Box::new([0u8; BLCKSZ]);
        gin_init_metapage(&mut p, &[7u8; GIN_META_DATA_SIZE]).unwrap();
        assert!(is_initialised_metapage(&p));
        // A byte in the unused space: PostgreSQL's re-initialisation would zero it.
        for at in [GIN_META_LOWER as usize, 4000, GIN_SPECIAL_START - 1] {
            p[at] = 1;
            assert!(!is_initialised_metapage(&p), "byte {at}");
            p[at] = 0;
        }
        assert!(is_initialised_metapage(&p));
        // Another page's shape (page inits expect the engine's zeroed page).
        p.fill(0);
        gin_init_page(&mut p, GIN_LEAF);
        assert!(!is_initialised_metapage(&p));
    }

    /// Items added to a segment whose deltas are not all as PostgreSQL writes them (one in
    /// two bytes where one would do): merged item by item and encoded again, like
    /// PostgreSQL's redo does, not copied.
    #[test]
    fn a_non_canonical_segment_is_encoded_again_when_items_are_added() {
        let mut seg = encode_segment(&items(&[(1, 1), (1, 2), (1, 3)])).unwrap();
        // The second delta (1) as 0x81 0x00; the byte count grows by one (now odd: pad).
        seg.truncate(GIN_POSTING_LIST_HEADER + 1);
        seg.push(0x81);
        seg.push(0x00);
        put_u16(&mut seg, ITEM_POINTER_SIZE, 3);
        seg.push(0);
        let mut p = leaf_with(&[]);
        p[GIN_DATA_START..GIN_DATA_START + seg.len()].copy_from_slice(&seg);
        set_data_size(&mut p, seg.len());
        let noncanonical = p.clone();
        // Added after every old item (the old ones before it are copied when they can be),
        // and before every old item (those after it likewise).
        for (new_item, all) in [
            ((2, 1), [(1, 1), (1, 2), (1, 3), (2, 1)]),
            ((0, 9), [(0, 9), (1, 1), (1, 2), (1, 3)]),
        ] {
            let mut p = noncanonical.clone();
            let mut added = Vec::new();
            write_item_pointer(&mut added, pack(new_item.0, new_item.1));
            let actions = [(0u8, SegmentAction::AddItems(&added))];
            let mut want = p.clone();
            reference_recompress(&mut want, &actions).unwrap();
            redo_recompress(&mut p, actions.iter().copied().map(Ok)).unwrap();
            assert_eq!(&p[..], &want[..], "{new_item:?}");
            let canonical = encode_segment(&items(&all)).unwrap();
            assert_eq!(
                &p[GIN_DATA_START..GIN_DATA_START + canonical.len()],
                &canonical[..]
            );
            // The same added to the canonical segment: the same bytes.
            let mut q = leaf_with(&[items(&[(1, 1), (1, 2), (1, 3)])]);
            redo_recompress(&mut q, actions.iter().copied().map(Ok)).unwrap();
            assert_eq!(&q[..], &p[..], "{new_item:?}");
        }
    }

    #[test]
    fn recompress_applies_actions_by_segment_number() {
        let mut p = Box::new([0u8; BLCKSZ]);
        gin_init_page(&mut p, GIN_DATA | GIN_LEAF | GIN_COMPRESSED);
        let s0 = encode_segment(&items(&[(1, 1), (1, 2)])).unwrap();
        let s1 = encode_segment(&items(&[(2, 1)])).unwrap();
        let s2 = encode_segment(&items(&[(3, 1), (3, 9)])).unwrap();
        let all = [s0.clone(), s1.clone(), s2.clone()].concat();
        p[GIN_DATA_START..GIN_DATA_START + all.len()].copy_from_slice(&all);
        set_data_size(&mut p, all.len());
        let mut added = Vec::new();
        write_item_pointer(&mut added, pack(3, 4));
        let new = encode_segment(&items(&[(4, 1)])).unwrap();
        // Segment 0 deleted, items added to segment 2, a new one after it.
        let actions = [
            (0u8, SegmentAction::Delete),
            (2, SegmentAction::AddItems(&added)),
            (3, SegmentAction::Insert(&new)),
        ];
        redo_recompress(&mut p, actions.iter().copied().map(Ok)).unwrap();
        let merged = encode_segment(&items(&[(3, 1), (3, 4), (3, 9)])).unwrap();
        let want = [s1, merged, new].concat();
        assert_eq!(p.lower() as usize, GIN_DATA_START + want.len());
        assert_eq!(&p[GIN_DATA_START..GIN_DATA_START + want.len()], &want[..]);
        // An action past the last segment is refused.
        let bad = [(9u8, SegmentAction::Delete)];
        assert!(redo_recompress(&mut p, bad.iter().copied().map(Ok)).is_err());
    }

    #[test]
    fn posting_items_insert_and_delete() {
        let mut p = Box::new([0u8; BLCKSZ]);
        gin_init_page(&mut p, GIN_DATA);
        add_posting_item(&mut p, &[1; 10], 1).unwrap();
        add_posting_item(&mut p, &[3; 10], 2).unwrap();
        add_posting_item(&mut p, &[2; 10], 2).unwrap();
        assert_eq!(maxoff(&p), 3);
        assert_eq!(p.lower() as usize, GIN_DATA_START + 30);
        assert_eq!(p[posting_item_pos(2)], 2);
        assert_eq!(p[posting_item_pos(3)], 3);
        assert!(add_posting_item(&mut p, &[9; 10], 5).is_err());
        delete_posting_item(&mut p, 1).unwrap();
        assert_eq!(maxoff(&p), 2);
        assert_eq!(p[posting_item_pos(1)], 2);
        assert!(delete_posting_item(&mut p, 3).is_err());
        set_posting_item_block(&mut p, 2, 0x0001_0002).unwrap();
        assert_eq!(
            &p[posting_item_pos(2)..posting_item_pos(2) + 4],
            &[1, 0, 2, 0]
        );
    }

    #[test]
    fn metapage_layout() {
        let mut p = Box::new([0u8; BLCKSZ]);
        let meta = [7u8; GIN_META_DATA_SIZE];
        gin_init_metapage(&mut p, &meta).unwrap();
        assert_eq!(p.lower(), 80);
        assert_eq!(page_flags(&p), GIN_META);
        assert_eq!((p.upper(), p.special()), (8184, 8184));
        assert!(gin_init_metapage(&mut p, &meta[..10]).is_err());
    }
}
