//! SP-GiST redo (`spg_redo` in `access/spgist/spgxlog.c`, PostgreSQL 15): all eight record
//! types, one block reference at a time.
//!
//! Page layout facts (`access/spgist_private.h`, `access/spgist/spgutils.c`):
//! - Every SP-GiST page has an 8-byte special space, `SpGistPageOpaqueData` {flags,
//!   nRedirection, nPlaceholder, spgist_page_id}, four uint16; the page id is
//!   `SPGIST_PAGE_ID` (0xFF82), the last two bytes of the page. `SpGistInitPage` is
//!   `PageInit(page, BLCKSZ, 8)`, then the flags and the page id; the counters start at 0.
//! - Block 0 is the metapage (`SPGIST_META`; `SpGistMetaPageData` {magic, lastUsedPages}
//!   at offset 24, pd_lower 92), block 1 the root, block 2 the root of the nulls tree
//!   (`SPGIST_NULLS`). The metapage is written by the build only (a full page image); its
//!   `lastUsedPages` cache is then updated without WAL (`SpGistUpdateMetaPage`), so only a
//!   comparison with the data files has to leave it out ([`mask_last_used_pages`]).
//! - Leaf pages (`SPGIST_LEAF`) hold leaf tuples: a word {tupstate:2, size:30}, `t_info`
//!   (nextOffset in the low 14 bits, the chain link to the next leaf tuple of the same
//!   parent node, 0 at the end; the root does not chain), the heap TID, then the datum.
//!   Inner pages hold inner tuples: a word {tupstate:2, allTheSame:1, nNodes:13,
//!   prefixSize:16}, the uint16 size, the prefix at offset 8, then nNodes node tuples
//!   (`IndexTupleData`: the downlink TID, `t_info` with the node's size in the low 13 bits,
//!   the label). Bit-fields are allocated from the low bits (x86-64).
//! - A tuple that goes away is replaced by a 16-byte dead tuple (`spgFormDeadTuple`:
//!   {tupstate, size 16}, t_info 0, a TID, an xid) so the offsets of the others stay put:
//!   REDIRECT (the TID says where the tuple went, the xid who moved it; counted in
//!   nRedirection), DEAD (a leaf chain's head that lost its tuples; not counted) or
//!   PLACEHOLDER (invalid TID and xid; counted in nPlaceholder). A placeholder's slot is
//!   reused by the next tuple placed at its offset (`SpGistPageAddNewItem`; redo follows
//!   the logged offsets with `addOrReplaceTuple`).
//!
//! Records that change a parent downlink on a page that is also another block of the
//! record say so (ADD_NODE's parentBlk, PICKSPLIT's innerIsParent, SPLIT_TUPLE's
//! postfixBlkSame): the downlink is then updated as part of that block, as `spgxlog.c`
//! does, since a second application to the same page would find its LSN already current.

use super::page::{Page, PageLayout, SIZE_OF_PAGE_HEADER, get_u16, get_u32, put_u16, put_u32};
use super::{LsnRule, RedoErrorKind, malformed, require_init, shape, unexpected_block};
use crate::wal::block::BlockRef;
use crate::wal::page::BLCKSZ;
use crate::wal::record::DecodedRecord;
use crate::wal::rmgr::spgist::{SGITHDRSZ, SpgRecord, SpgxlogState, parse};

/// `sizeof(SpGistPageOpaqueData)`.
pub(crate) const SPGIST_SPECIAL_SIZE: usize = 8;
/// `SPGIST_PAGE_ID`.
pub(crate) const SPGIST_PAGE_ID: u16 = 0xFF82;
/// `SpGistPageOpaqueData.flags` bits.
pub(crate) const SPGIST_META: u16 = 1 << 0;
pub(crate) const SPGIST_LEAF: u16 = 1 << 2;
pub(crate) const SPGIST_NULLS: u16 = 1 << 3;
/// Tuple states (`tupstate`).
pub(crate) const SPGIST_LIVE: u8 = 0;
pub(crate) const SPGIST_REDIRECT: u8 = 1;
pub(crate) const SPGIST_DEAD: u8 = 2;
pub(crate) const SPGIST_PLACEHOLDER: u8 = 3;
/// `SGDTSIZE`: `MAXALIGN(sizeof(SpGistDeadTupleData))`.
const SGDTSIZE: usize = 16;
/// `InvalidBlockNumber`, `InvalidOffsetNumber`, `InvalidTransactionId`.
const INVALID_BLOCK: u32 = u32::MAX;
const INVALID_OFFSET: u16 = 0;
const INVALID_XID: u32 = 0;
/// Where the special space starts on every SP-GiST page.
const SPGIST_SPECIAL_START: usize = BLCKSZ - SPGIST_SPECIAL_SIZE;

// SpGistPageOpaqueData fields.
const OPAQUE_FLAGS: usize = SPGIST_SPECIAL_START;
const OPAQUE_N_REDIRECTION: usize = SPGIST_SPECIAL_START + 2;
const OPAQUE_N_PLACEHOLDER: usize = SPGIST_SPECIAL_START + 4;
const OPAQUE_PAGE_ID: usize = SPGIST_SPECIAL_START + 6;

// Tuple fields: the leaf tuple's t_info (nextOffset) and TID, the dead tuple's TID and
// xid, the inner tuple's size; a node tuple's TID and t_info.
const LEAF_T_INFO: usize = 4;
const DEAD_POINTER: usize = 6;
const DEAD_XID: usize = 12;
const NODE_T_INFO: usize = 6;
/// `sizeof(IndexTupleData)`: a node tuple's header.
const NODE_HEADER_SIZE: usize = 8;
/// `INDEX_SIZE_MASK`.
const INDEX_SIZE_MASK: u16 = 0x1FFF;
/// `SGLT_GET_NEXTOFFSET`: the low 14 bits of t_info; the top two are flags.
const NEXT_OFFSET_MASK: u16 = 0x3FFF;

/// `SpGistMetaPageData.lastUsedPages`: after the magic number at offset 24, eight
/// `SpGistLastUsedPage` {blkno, freeSpace} of 8 bytes.
const META_LAST_USED_PAGES: std::ops::Range<usize> =
    SIZE_OF_PAGE_HEADER + 4..SIZE_OF_PAGE_HEADER + 4 + 8 * 8;

pub(crate) fn page_flags(page: &Page) -> u16 {
    get_u16(page, OPAQUE_FLAGS)
}

fn n_redirection(page: &Page) -> u16 {
    get_u16(page, OPAQUE_N_REDIRECTION)
}

fn n_placeholder(page: &Page) -> u16 {
    get_u16(page, OPAQUE_N_PLACEHOLDER)
}

fn set_n_redirection(page: &mut Page, n: u16) {
    put_u16(page, OPAQUE_N_REDIRECTION, n);
}

fn set_n_placeholder(page: &mut Page, n: u16) {
    put_u16(page, OPAQUE_N_PLACEHOLDER, n);
}

/// `SpGistInitPage` (what `SpGistInitBuffer` does to the page).
fn spgist_init_page(page: &mut Page, flags: u16) {
    page.init(SPGIST_SPECIAL_SIZE);
    put_u16(page, OPAQUE_FLAGS, flags);
    put_u16(page, OPAQUE_PAGE_ID, SPGIST_PAGE_ID);
}

/// The flags of a leaf page in the normal or the nulls tree.
fn leaf_flags(stores_nulls: bool) -> u16 {
    SPGIST_LEAF | if stores_nulls { SPGIST_NULLS } else { 0 }
}

/// A page that redo changes in place must have SP-GiST's special space (PostgreSQL reads
/// `SpGistPageGetOpaque` at pd_special unchecked; the engine refuses instead of writing
/// into a page of another shape).
fn require_spgist_page(page: &Page) -> Result<(), RedoErrorKind> {
    if page.special() as usize != SPGIST_SPECIAL_START {
        return Err(shape(format!(
            "not an SP-GiST page: special space at {} (expected {SPGIST_SPECIAL_START})",
            page.special()
        )));
    }
    Ok(())
}

fn parsed(rec: &DecodedRecord) -> Result<SpgRecord<'_>, RedoErrorKind> {
    parse(rec).map_err(|e| malformed(e.to_string()))
}

/// `XLogRecGetBlockTag(record, id, ...)`: the block number of another block reference of
/// the record, which this block's change points to.
fn block_number(rec: &DecodedRecord, id: u8) -> Result<u32, RedoErrorKind> {
    rec.block(id).map(|b| b.block).ok_or_else(|| {
        malformed(format!(
            "SP-GiST {} record without block {id}",
            crate::wal::rmgr::spgist::identify(rec.rmgr_info()).unwrap_or("UNKNOWN")
        ))
    })
}

/// The last of the logged insert offsets (`toInsert[nInsert - 1]`), where a moved chain's
/// new head is.
fn last_offset(offsets: &[u16]) -> Result<u16, RedoErrorKind> {
    offsets
        .last()
        .copied()
        .ok_or_else(|| malformed("no tuple offsets to insert at"))
}

/// `spg_redo`: one block reference of an SP-GiST record, by the function of `spgxlog.c`
/// that replays its record type.
pub(super) fn redo_block(
    rec: &DecodedRecord,
    block: &BlockRef,
    page: &mut Page,
) -> Result<LsnRule, RedoErrorKind> {
    match parsed(rec)? {
        SpgRecord::AddLeaf {
            new_page,
            stores_nulls,
            offnum_leaf,
            offnum_head_leaf,
            offnum_parent,
            node_i,
            leaf_tuple,
        } => match block.id {
            0 => {
                require_init(block, new_page)?;
                if new_page {
                    spgist_init_page(page, leaf_flags(stores_nulls));
                }
                add_leaf(page, leaf_tuple, offnum_leaf, offnum_head_leaf)?;
                Ok(LsnRule::Stamp)
            }
            // "update parent downlink if necessary": block 1 only exists then.
            1 if offnum_parent != INVALID_OFFSET => {
                require_init(block, false)?;
                let leaf_blkno = block_number(rec, 0)?;
                update_node_link(page, offnum_parent, node_i, leaf_blkno, offnum_leaf)?;
                Ok(LsnRule::Stamp)
            }
            id => unexpected_block(id),
        },
        SpgRecord::MoveLeafs {
            new_page,
            stores_nulls,
            offnum_parent,
            node_i,
            state,
            to_delete,
            to_insert,
            leaf_tuples,
            ..
        } => {
            let dest_blkno = block_number(rec, 1)?;
            let new_head = last_offset(&to_insert)?;
            match block.id {
                // "Insert tuples on the dest page (do first, so redirect is valid)".
                1 => {
                    require_init(block, new_page)?;
                    if new_page {
                        spgist_init_page(page, leaf_flags(stores_nulls));
                    }
                    require_spgist_page(page)?;
                    for (tuple, &offset) in leaf_tuples.iter().zip(&to_insert) {
                        add_or_replace_tuple(page, tuple, offset)?;
                    }
                }
                // "Delete tuples from the source page, inserting a redirection pointer".
                0 => {
                    require_init(block, false)?;
                    let first = if state.is_build {
                        SPGIST_PLACEHOLDER
                    } else {
                        SPGIST_REDIRECT
                    };
                    spg_page_index_multi_delete(
                        page,
                        &to_delete,
                        first,
                        SPGIST_PLACEHOLDER,
                        (dest_blkno, new_head),
                        state,
                    )?;
                }
                // "And update the parent downlink".
                2 => {
                    require_init(block, false)?;
                    update_node_link(page, offnum_parent, node_i, dest_blkno, new_head)?;
                }
                id => return unexpected_block(id),
            }
            Ok(LsnRule::Stamp)
        }
        SpgRecord::AddNode {
            offnum,
            offnum_new,
            new_page,
            parent_blk,
            offnum_parent,
            node_i,
            state,
            inner_tuple,
        } => {
            // "if (!XLogRecHasBlockRef(record, 1))": the enlarged tuple replaced the old
            // one in place.
            let Some(new_block) = rec.block(1) else {
                return match block.id {
                    0 => {
                        require_init(block, false)?;
                        require_spgist_page(page)?;
                        replace_tuple(page, inner_tuple, offnum)?;
                        Ok(LsnRule::Stamp)
                    }
                    id => unexpected_block(id),
                };
            };
            let new_blkno = new_block.block;
            match block.id {
                // "Install new tuple first so redirect is valid"; "AddNode is not used for
                // nulls pages".
                1 => {
                    require_init(block, new_page)?;
                    if new_page {
                        spgist_init_page(page, 0);
                    }
                    require_spgist_page(page)?;
                    add_or_replace_tuple(page, inner_tuple, offnum_new)?;
                    if parent_blk == 1 {
                        update_node_link(page, offnum_parent, node_i, new_blkno, offnum_new)?;
                    }
                }
                // "Delete old tuple, replacing it with redirect or placeholder tuple".
                0 => {
                    require_init(block, false)?;
                    require_spgist_page(page)?;
                    let dead = if state.is_build {
                        dead_tuple(SPGIST_PLACEHOLDER, None, state)
                    } else {
                        dead_tuple(SPGIST_REDIRECT, Some((new_blkno, offnum_new)), state)
                    };
                    replace_tuple(page, &dead, offnum)?;
                    if state.is_build {
                        set_n_placeholder(page, n_placeholder(page).wrapping_add(1));
                    } else {
                        set_n_redirection(page, n_redirection(page).wrapping_add(1));
                    }
                    if parent_blk == 0 {
                        update_node_link(page, offnum_parent, node_i, new_blkno, offnum_new)?;
                    }
                }
                // The parent, when it is neither page.
                2 if parent_blk == 2 => {
                    require_init(block, false)?;
                    update_node_link(page, offnum_parent, node_i, new_blkno, offnum_new)?;
                }
                id => return unexpected_block(id),
            }
            Ok(LsnRule::Stamp)
        }
        SpgRecord::SplitTuple {
            offnum_prefix,
            offnum_postfix,
            new_page,
            postfix_blk_same,
            prefix_tuple,
            postfix_tuple,
        } => {
            match block.id {
                // "insert postfix tuple first to avoid dangling link"; "SplitTuple is not
                // used for nulls pages".
                1 if !postfix_blk_same => {
                    require_init(block, new_page)?;
                    if new_page {
                        spgist_init_page(page, 0);
                    }
                    require_spgist_page(page)?;
                    add_or_replace_tuple(page, postfix_tuple, offnum_postfix)?;
                }
                // "now handle the original page".
                0 => {
                    require_init(block, false)?;
                    require_spgist_page(page)?;
                    replace_tuple(page, prefix_tuple, offnum_prefix)?;
                    if postfix_blk_same {
                        add_or_replace_tuple(page, postfix_tuple, offnum_postfix)?;
                    }
                }
                id => return unexpected_block(id),
            }
            Ok(LsnRule::Stamp)
        }
        SpgRecord::PickSplit {
            is_root_split,
            init_src,
            init_dest,
            offnum_inner,
            init_inner,
            stores_nulls,
            inner_is_parent,
            offnum_parent,
            node_i,
            state,
            to_delete,
            to_insert,
            leaf_page_select,
            inner_tuple,
            leaf_tuples,
            ..
        } => {
            let inner_blkno = block_number(rec, 2)?;
            let split = PickSplitLeaves {
                to_insert: &to_insert,
                leaf_page_select,
                leaf_tuples: &leaf_tuples,
            };
            match block.id {
                // "when splitting root, we touch it only in the guise of new inner": the
                // source page is not registered then.
                0 if !is_root_split => {
                    require_init(block, init_src)?;
                    if init_src {
                        spgist_init_page(page, leaf_flags(stores_nulls));
                    } else {
                        // "we know the inner tuple's location already, so we can inject
                        // the correct redirection tuple now".
                        let (first, target) = if state.is_build {
                            (SPGIST_PLACEHOLDER, (INVALID_BLOCK, INVALID_OFFSET))
                        } else {
                            (SPGIST_REDIRECT, (inner_blkno, offnum_inner))
                        };
                        spg_page_index_multi_delete(
                            page,
                            &to_delete,
                            first,
                            SPGIST_PLACEHOLDER,
                            target,
                            state,
                        )?;
                    }
                    split.restore_leaf_tuples(page, false)?;
                }
                1 => {
                    require_init(block, init_dest)?;
                    if init_dest {
                        spgist_init_page(page, leaf_flags(stores_nulls));
                    }
                    split.restore_leaf_tuples(page, true)?;
                }
                // "restore new inner tuple".
                2 => {
                    require_init(block, init_inner)?;
                    if init_inner {
                        spgist_init_page(page, if stores_nulls { SPGIST_NULLS } else { 0 });
                    }
                    require_spgist_page(page)?;
                    add_or_replace_tuple(page, inner_tuple, offnum_inner)?;
                    // "if inner is also parent, update link while we're here".
                    if inner_is_parent {
                        update_node_link(page, offnum_parent, node_i, inner_blkno, offnum_inner)?;
                    }
                }
                // "update parent downlink, unless we did it above".
                3 => {
                    require_init(block, false)?;
                    update_node_link(page, offnum_parent, node_i, inner_blkno, offnum_inner)?;
                }
                id => return unexpected_block(id),
            }
            Ok(LsnRule::Stamp)
        }
        SpgRecord::VacuumLeaf {
            state,
            to_dead,
            to_placeholder,
            move_src,
            move_dest,
            chain_src,
            chain_dest,
        } => match block.id {
            0 => {
                require_init(block, false)?;
                let plan = VacuumLeafPlan {
                    to_dead: &to_dead,
                    to_placeholder: &to_placeholder,
                    move_src: &move_src,
                    move_dest: &move_dest,
                    chain_src: &chain_src,
                    chain_dest: &chain_dest,
                };
                vacuum_leaf(page, &plan, state)?;
                Ok(LsnRule::Stamp)
            }
            id => unexpected_block(id),
        },
        SpgRecord::VacuumRoot { to_delete, .. } => match block.id {
            0 => {
                require_init(block, false)?;
                require_spgist_page(page)?;
                // "The tuple numbers are in order".
                page.index_multi_delete(&to_delete)?;
                Ok(LsnRule::Stamp)
            }
            id => unexpected_block(id),
        },
        SpgRecord::VacuumRedirect {
            first_placeholder,
            to_placeholder,
            ..
        } => match block.id {
            0 => {
                require_init(block, false)?;
                vacuum_redirect(page, &to_placeholder, first_placeholder)?;
                Ok(LsnRule::Stamp)
            }
            id => unexpected_block(id),
        },
    }
}

/// `elog(ERROR, "failed to add item of size %u to SPGiST index page")`, with why.
fn add_failed(size: usize, e: impl std::fmt::Display) -> RedoErrorKind {
    shape(format!(
        "failed to add item of size {size} to SPGiST index page: {e}"
    ))
}

/// `PageAddItem(page, tuple, size, offset, false, false)`, which must place the tuple at
/// `offset` (shifting the line pointers from there up one).
fn add_item_at(page: &mut Page, tuple: &[u8], offset: u16) -> Result<(), RedoErrorKind> {
    match page.add_item(tuple, offset, 0) {
        Ok(at) if at == offset => Ok(()),
        Ok(at) => Err(add_failed(
            tuple.len(),
            format!("placed at {at}, not {offset}"),
        )),
        Err(e) => Err(add_failed(tuple.len(), e)),
    }
}

/// `PageIndexTupleDelete` then `PageAddItem` at the same offset: a tuple replaced by
/// another of any size, the other offsets unchanged.
fn replace_tuple(page: &mut Page, tuple: &[u8], offset: u16) -> Result<(), RedoErrorKind> {
    page.index_tuple_delete(offset)?;
    add_item_at(page, tuple, offset)
}

/// The state bits of the tuple at `offset` (`tupstate`, the low two bits).
fn tuple_state(page: &Page, offset: u16) -> Result<u8, RedoErrorKind> {
    let item = page.item(offset)?;
    if item.len() < 4 {
        return Err(shape(format!(
            "SPGiST tuple at offset {offset} is {} bytes",
            item.len()
        )));
    }
    Ok(item[0] & 0x03)
}

/// `addOrReplaceTuple`: a tuple `SpGistPageAddNewItem` placed at `offset`, either past the
/// last line pointer or over a placeholder it reused ("If the offset points at an
/// existing tuple, it had better be a placeholder tuple").
fn add_or_replace_tuple(page: &mut Page, tuple: &[u8], offset: u16) -> Result<(), RedoErrorKind> {
    if offset <= page.max_offset() {
        if tuple_state(page, offset)? != SPGIST_PLACEHOLDER {
            return Err(shape(
                "SPGiST tuple to be replaced is not a placeholder".to_string(),
            ));
        }
        // PostgreSQL asserts nPlaceholder > 0: the counter covers every placeholder.
        let placeholders = n_placeholder(page);
        if placeholders == 0 {
            return Err(shape(format!(
                "SPGiST placeholder at offset {offset} on a page whose nPlaceholder is 0"
            )));
        }
        set_n_placeholder(page, placeholders - 1);
        page.index_tuple_delete(offset)?;
    }
    add_item_at(page, tuple, offset)
}

/// `spgRedoAddLeaf` on the leaf page: the new tuple at its offset, and the chain head's
/// link to it; equal offsets mean the tuple replaced the DEAD head of its chain.
fn add_leaf(
    page: &mut Page,
    leaf_tuple: &[u8],
    offnum_leaf: u16,
    offnum_head_leaf: u16,
) -> Result<(), RedoErrorKind> {
    require_spgist_page(page)?;
    if offnum_leaf != offnum_head_leaf {
        // "normal cases, tuple was added by SpGistPageAddNewItem".
        add_or_replace_tuple(page, leaf_tuple, offnum_leaf)?;
        // "update head tuple's chain link if needed": the new tuple goes second.
        if offnum_head_leaf != INVALID_OFFSET {
            set_next_offset(page, offnum_head_leaf, offnum_leaf)?;
        }
        Ok(())
    } else {
        // "replacing a DEAD tuple".
        replace_tuple(page, leaf_tuple, offnum_leaf)
    }
}

/// `SGLT_SET_NEXTOFFSET` on the leaf tuple at `offset`: the link in the low 14 bits of
/// t_info, its two flag bits kept.
fn set_next_offset(page: &mut Page, offset: u16, next: u16) -> Result<(), RedoErrorKind> {
    let item = page.item_mut(offset)?;
    if item.len() < LEAF_T_INFO + 2 {
        return Err(shape(format!(
            "SPGiST leaf tuple at offset {offset} is {} bytes",
            item.len()
        )));
    }
    let t_info = get_u16(item, LEAF_T_INFO);
    put_u16(
        item,
        LEAF_T_INFO,
        (t_info & !NEXT_OFFSET_MASK) | (next & NEXT_OFFSET_MASK),
    );
    Ok(())
}

/// `ItemPointerSet`: bi_hi, bi_lo, posid.
fn item_pointer_set(tid: &mut [u8], blkno: u32, offnum: u16) {
    put_u16(tid, 0, (blkno >> 16) as u16);
    put_u16(tid, 2, blkno as u16);
    put_u16(tid, 4, offnum);
}

/// `spgFormDeadTuple`: 16 bytes; a REDIRECT points to `target` and carries the xid of the
/// record's state; the others have an invalid pointer and xid. t_info is 0 (the redo's
/// `deadTupleStorage` is zeroed and `SGLT_SET_NEXTOFFSET` keeps its flag bits).
fn dead_tuple(tupstate: u8, target: Option<(u32, u16)>, state: SpgxlogState) -> [u8; SGDTSIZE] {
    let mut t = [0u8; SGDTSIZE];
    put_u32(&mut t, 0, (SGDTSIZE as u32) << 2 | u32::from(tupstate));
    match target {
        Some((blkno, offnum)) if tupstate == SPGIST_REDIRECT => {
            item_pointer_set(&mut t[DEAD_POINTER..DEAD_XID], blkno, offnum);
            put_u32(&mut t, DEAD_XID, state.my_xid);
        }
        _ => {
            item_pointer_set(
                &mut t[DEAD_POINTER..DEAD_XID],
                INVALID_BLOCK,
                INVALID_OFFSET,
            );
            put_u32(&mut t, DEAD_XID, INVALID_XID);
        }
    }
    t
}

/// `spgPageIndexMultiDelete`: the tuples at `itemnos` are deleted (in sorted order, with
/// `PageIndexMultiDelete`) and each offset gets a dead tuple back, the first listed one
/// (`itemnos[0]`) of state `first_state`, the others of `rest_state`; a REDIRECT points to
/// `target`. nRedirection and nPlaceholder count the new dead tuples.
fn spg_page_index_multi_delete(
    page: &mut Page,
    itemnos: &[u16],
    first_state: u8,
    rest_state: u8,
    target: (u32, u16),
    state: SpgxlogState,
) -> Result<(), RedoErrorKind> {
    let Some(&first_item) = itemnos.first() else {
        // "nothing to do".
        return Ok(());
    };
    require_spgist_page(page)?;
    let mut sorted = itemnos.to_vec();
    sorted.sort_unstable();
    page.index_multi_delete(&sorted)?;
    for itemno in sorted {
        let tupstate = if itemno == first_item {
            first_state
        } else {
            rest_state
        };
        let dead = dead_tuple(tupstate, Some(target), state);
        add_item_at(page, &dead, itemno)?;
        match tupstate {
            SPGIST_REDIRECT => set_n_redirection(page, n_redirection(page).wrapping_add(1)),
            SPGIST_PLACEHOLDER => set_n_placeholder(page, n_placeholder(page).wrapping_add(1)),
            _ => {}
        }
    }
    Ok(())
}

/// `spgUpdateNodeLink` on the inner tuple at `offnum_parent`: node `node_i`'s downlink
/// TID becomes (`blkno`, `offnum`). Nodes follow the header and the prefix, each
/// `IndexTupleSize` long.
fn update_node_link(
    page: &mut Page,
    offnum_parent: u16,
    node_i: u16,
    blkno: u32,
    offnum: u16,
) -> Result<(), RedoErrorKind> {
    require_spgist_page(page)?;
    let tuple = page.item_mut(offnum_parent)?;
    if tuple.len() < SGITHDRSZ {
        return Err(shape(format!(
            "SPGiST inner tuple at offset {offnum_parent} is {} bytes",
            tuple.len()
        )));
    }
    let word = get_u32(tuple, 0);
    let n_nodes = (word >> 3) & 0x1FFF;
    let prefix_size = (word >> 16) as usize;
    let mut at = SGITHDRSZ + prefix_size;
    for i in 0..n_nodes {
        if at + NODE_HEADER_SIZE > tuple.len() {
            break;
        }
        if i == u32::from(node_i) {
            item_pointer_set(&mut tuple[at..at + 6], blkno, offnum);
            return Ok(());
        }
        at += usize::from(get_u16(tuple, at + NODE_T_INFO) & INDEX_SIZE_MASK);
    }
    Err(shape(format!(
        "failed to find requested node {node_i} in SPGiST inner tuple"
    )))
}

/// PICKSPLIT's leaf tuples with where each goes.
struct PickSplitLeaves<'r, 'a> {
    to_insert: &'r [u16],
    leaf_page_select: &'a [u8],
    leaf_tuples: &'r [&'a [u8]],
}

impl PickSplitLeaves<'_, '_> {
    /// "restore leaf tuples to src and/or dest page": the tuples whose selector says this
    /// page (0: the source, block 0; else the destination, block 1).
    fn restore_leaf_tuples(&self, page: &mut Page, dest: bool) -> Result<(), RedoErrorKind> {
        require_spgist_page(page)?;
        for ((tuple, &offset), &select) in self
            .leaf_tuples
            .iter()
            .zip(self.to_insert)
            .zip(self.leaf_page_select)
        {
            if (select != 0) == dest {
                add_or_replace_tuple(page, tuple, offset)?;
            }
        }
        Ok(())
    }
}

/// VACUUM_LEAF's offset arrays.
struct VacuumLeafPlan<'r> {
    to_dead: &'r [u16],
    to_placeholder: &'r [u16],
    move_src: &'r [u16],
    move_dest: &'r [u16],
    chain_src: &'r [u16],
    chain_dest: &'r [u16],
}

/// `spgRedoVacuumLeaf`: dead chain heads become DEAD, removed tuples PLACEHOLDER; a live
/// tuple that `vacuumLeafPage` moved to the head of its chain swaps line pointers with the
/// slot it moves to, and its old slot becomes a PLACEHOLDER; then the chain links are set.
fn vacuum_leaf(
    page: &mut Page,
    plan: &VacuumLeafPlan<'_>,
    state: SpgxlogState,
) -> Result<(), RedoErrorKind> {
    require_spgist_page(page)?;
    let nowhere = (INVALID_BLOCK, INVALID_OFFSET);
    spg_page_index_multi_delete(page, plan.to_dead, SPGIST_DEAD, SPGIST_DEAD, nowhere, state)?;
    spg_page_index_multi_delete(
        page,
        plan.to_placeholder,
        SPGIST_PLACEHOLDER,
        SPGIST_PLACEHOLDER,
        nowhere,
        state,
    )?;
    // "see comments in vacuumLeafPage()".
    for (&src, &dest) in plan.move_src.iter().zip(plan.move_dest) {
        let src_id = page.item_id(src)?;
        let dest_id = page.item_id(dest)?;
        page.set_item_id(src, dest_id)?;
        page.set_item_id(dest, src_id)?;
    }
    spg_page_index_multi_delete(
        page,
        plan.move_src,
        SPGIST_PLACEHOLDER,
        SPGIST_PLACEHOLDER,
        nowhere,
        state,
    )?;
    for (&src, &next) in plan.chain_src.iter().zip(plan.chain_dest) {
        // PostgreSQL asserts the re-chained tuple is live.
        let tupstate = tuple_state(page, src)?;
        if tupstate != SPGIST_LIVE {
            return Err(shape(format!(
                "SPGiST leaf tuple to re-chain at offset {src} has state {tupstate}"
            )));
        }
        set_next_offset(page, src, next)?;
    }
    Ok(())
}

/// `spgRedoVacuumRedirect`: redirects older than every snapshot become placeholders
/// (state and pointer; the xid stays), the counters move, and the placeholders from
/// `first_placeholder` to the end of the page are removed.
fn vacuum_redirect(
    page: &mut Page,
    to_placeholder: &[u16],
    first_placeholder: u16,
) -> Result<(), RedoErrorKind> {
    require_spgist_page(page)?;
    // "Convert redirect pointers to plain placeholders".
    for &offset in to_placeholder {
        let tuple = page.item_mut(offset)?;
        if tuple.len() < SGDTSIZE || tuple[0] & 0x03 != SPGIST_REDIRECT {
            return Err(shape(format!(
                "SPGiST tuple at offset {offset} to make a placeholder is not a redirect"
            )));
        }
        tuple[0] = (tuple[0] & !0x03) | SPGIST_PLACEHOLDER;
        item_pointer_set(
            &mut tuple[DEAD_POINTER..DEAD_XID],
            INVALID_BLOCK,
            INVALID_OFFSET,
        );
    }
    let n = u16::try_from(to_placeholder.len())
        .map_err(|_| malformed(format!("{} redirects", to_placeholder.len())))?;
    let redirections = n_redirection(page);
    if redirections < n {
        return Err(shape(format!(
            "SPGiST page has {redirections} redirects, {n} to make placeholders"
        )));
    }
    set_n_redirection(page, redirections - n);
    set_n_placeholder(page, n_placeholder(page).wrapping_add(n));
    // "Remove placeholder tuples at end of page".
    if first_placeholder != INVALID_OFFSET {
        let max = page.max_offset();
        if first_placeholder > max.saturating_add(1) {
            return Err(shape(format!(
                "first placeholder to remove {first_placeholder} is past the page's {max} items"
            )));
        }
        let to_delete: Vec<u16> = (first_placeholder..=max).collect();
        let count = to_delete.len() as u16;
        let placeholders = n_placeholder(page);
        if placeholders < count {
            return Err(shape(format!(
                "SPGiST page has {placeholders} placeholders, {count} to remove at its end"
            )));
        }
        set_n_placeholder(page, placeholders - count);
        page.index_multi_delete(&to_delete)?;
    }
    Ok(())
}

/// Hides the metapage's `lastUsedPages` cache for a comparison with the data files:
/// `SpGistUpdateMetaPage` writes it without WAL, so no replay has it. Other pages are left
/// alone. Not part of `spg_mask`: PostgreSQL never compares the metapage after the build.
pub(crate) fn mask_last_used_pages(page: &mut Page) {
    if page.special() as usize == SPGIST_SPECIAL_START
        && get_u16(page, OPAQUE_PAGE_ID) == SPGIST_PAGE_ID
        && page_flags(page) & SPGIST_META != 0
    {
        page[META_LAST_USED_PAGES].fill(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::redo::{BlockOutcome, RedoContext, apply_block};
    use crate::wal::page::Lsn;
    use crate::wal::rmgr::RM_SPGIST_ID;
    use crate::wal::rmgr::spgist::*;

    const XID: u32 = 731;

    /// A leaf tuple of `len` bytes (a multiple of 8, at least 16): LIVE, chained to `next`,
    /// heap TID (0, `key`), `key` repeated as datum.
    fn leaf_tuple(len: usize, key: u8, next: u16) -> Vec<u8> {
        let mut t = vec![key; len];
        put_u32(&mut t, 0, (len as u32) << 2);
        put_u16(&mut t, LEAF_T_INFO, next);
        item_pointer_set(&mut t[6..12], 0, u16::from(key));
        t
    }

    /// An inner tuple with `nodes` node tuples (8 bytes each, downlinks invalid) and an
    /// 8-byte prefix.
    fn inner_tuple(nodes: u16) -> Vec<u8> {
        let size = SGITHDRSZ + 8 + 8 * usize::from(nodes);
        let mut t = vec![0u8; size];
        put_u32(&mut t, 0, (8u32 << 16) | (u32::from(nodes) << 3));
        put_u16(&mut t, 4, size as u16);
        t[8..16].fill(0xAB);
        for n in 0..usize::from(nodes) {
            let at = 16 + 8 * n;
            item_pointer_set(&mut t[at..at + 6], INVALID_BLOCK, 0);
            put_u16(&mut t, at + 6, 8);
        }
        t
    }

    fn spg_page(flags: u16, tuples: &[Vec<u8>]) -> Box<Page> {
        let mut p = Box::new([0u8; BLCKSZ]);
        spgist_init_page(&mut p, flags);
        for (i, t) in tuples.iter().enumerate() {
            p.add_item(t, i as u16 + 1, 0).unwrap();
        }
        p.set_lsn(Lsn(0x100));
        p
    }

    fn state_of(page: &Page, offset: u16) -> u8 {
        page.item(offset).unwrap()[0] & 3
    }

    fn next_of(page: &Page, offset: u16) -> u16 {
        get_u16(page.item(offset).unwrap(), LEAF_T_INFO) & NEXT_OFFSET_MASK
    }

    /// (block, offset) a dead tuple or node TID points to.
    fn tid(b: &[u8]) -> (u32, u16) {
        (
            (u32::from(get_u16(b, 0)) << 16) | u32::from(get_u16(b, 2)),
            get_u16(b, 4),
        )
    }

    fn node_link(page: &Page, offset: u16, node: usize) -> (u32, u16) {
        let t = page.item(offset).unwrap();
        tid(&t[16 + 8 * node..])
    }

    fn counters(page: &Page) -> (u16, u16) {
        (n_redirection(page), n_placeholder(page))
    }

    struct Blk {
        id: u8,
        blkno: u32,
        will_init: bool,
    }

    fn blk(id: u8, blkno: u32) -> Blk {
        Blk {
            id,
            blkno,
            will_init: false,
        }
    }

    fn init(id: u8, blkno: u32) -> Blk {
        Blk {
            id,
            blkno,
            will_init: true,
        }
    }

    /// An SP-GiST record of type `info` at LSN 0x2000000 on rel 1663/5/16384: block
    /// references without data (SP-GiST logs everything in the main data) and `main`.
    fn record(info: u8, blocks: &[Blk], main: &[u8]) -> DecodedRecord {
        let mut body = Vec::new();
        for (n, b) in blocks.iter().enumerate() {
            let mut flags = 0u8;
            if b.will_init {
                flags |= 0x40;
            }
            if n > 0 {
                flags |= 0x80;
            }
            body.extend_from_slice(&[b.id, flags, 0, 0]);
            if n == 0 {
                for v in [1663u32, 5, 16384] {
                    body.extend_from_slice(&v.to_le_bytes());
                }
            }
            body.extend_from_slice(&b.blkno.to_le_bytes());
        }
        if main.len() < 256 {
            body.extend_from_slice(&[255, main.len() as u8]);
        } else {
            body.push(254);
            body.extend_from_slice(&(main.len() as u32).to_le_bytes());
        }
        body.extend_from_slice(main);
        let raw =
            crate::wal::record::tests::build_record(RM_SPGIST_ID, info, 0, Lsn(0x1000000), &body);
        DecodedRecord::from_raw(Lsn(0x2000000), raw).expect("record decodes")
    }

    fn apply(page: &mut Page, rec: &DecodedRecord, id: u8) -> Result<BlockOutcome, RedoErrorKind> {
        let block = rec.block(id).expect("block in record");
        apply_block(page, rec, block, &RedoContext::default()).map_err(|e| e.kind)
    }

    /// `spgxlogState` bytes: myXid, isBuild, padding.
    fn state_bytes(is_build: bool) -> [u8; 8] {
        let mut s = [0u8; 8];
        put_u32(&mut s, 0, XID);
        s[4] = is_build as u8;
        s
    }

    fn u16s(v: &[u16]) -> Vec<u8> {
        v.iter().flat_map(|o| o.to_le_bytes()).collect()
    }

    fn add_leaf_main(
        new_page: bool,
        leaf: u16,
        head: u16,
        parent: u16,
        node: u16,
        tuple: &[u8],
    ) -> Vec<u8> {
        let mut m = vec![new_page as u8, 0];
        m.extend(u16s(&[leaf, head, parent, node]));
        m.extend_from_slice(tuple);
        m
    }

    #[test]
    fn add_leaf_chains_second_reuses_placeholders_and_links_the_parent() {
        // Head at 1 (chain 1 -> 2), a placeholder at 3.
        let mut p = spg_page(
            SPGIST_LEAF,
            &[
                leaf_tuple(16, 1, 2),
                leaf_tuple(16, 2, 0),
                dead_tuple(
                    SPGIST_PLACEHOLDER,
                    None,
                    SpgxlogState {
                        my_xid: 0,
                        is_build: false,
                    },
                )
                .to_vec(),
            ],
        );
        set_n_placeholder(&mut p, 1);
        // The new tuple goes to the placeholder's slot, second in the chain.
        let new = leaf_tuple(24, 9, 2);
        let rec = record(
            XLOG_SPGIST_ADD_LEAF,
            &[blk(0, 7)],
            &add_leaf_main(false, 3, 1, 0, 0, &new),
        );
        assert_eq!(apply(&mut p, &rec, 0).unwrap(), BlockOutcome::Applied);
        assert_eq!(p.max_offset(), 3);
        assert_eq!(p.item(3).unwrap(), &new[..]);
        assert_eq!((next_of(&p, 1), next_of(&p, 3)), (3, 2));
        assert_eq!(counters(&p), (0, 0));
        assert_eq!(p.lsn(), rec.end_lsn);
        // Again: the page LSN says it is done.
        let before = p.clone();
        assert_eq!(
            apply(&mut p, &rec, 0).unwrap(),
            BlockOutcome::AlreadyApplied
        );
        assert_eq!(p, before);

        // A new chain on a new page, and the parent's node 1 pointed to it.
        let first = leaf_tuple(16, 4, 0);
        let rec = record(
            XLOG_SPGIST_ADD_LEAF,
            &[init(0, 12), blk(1, 5)],
            &add_leaf_main(true, 1, 0, 2, 1, &first),
        );
        let mut leaf = spg_page(SPGIST_LEAF, &[leaf_tuple(16, 77, 0)]);
        apply(&mut leaf, &rec, 0).unwrap();
        assert_eq!(leaf.max_offset(), 1);
        assert_eq!(leaf.item(1).unwrap(), &first[..]);
        assert_eq!(page_flags(&leaf), SPGIST_LEAF);
        let mut parent = spg_page(0, &[inner_tuple(2), inner_tuple(3)]);
        apply(&mut parent, &rec, 1).unwrap();
        assert_eq!(node_link(&parent, 2, 1), (12, 1));
        assert_eq!(node_link(&parent, 2, 0), (INVALID_BLOCK, 0));
        assert_eq!(node_link(&parent, 1, 1), (INVALID_BLOCK, 0));
        // A missing node: PostgreSQL's wording.
        let rec = record(
            XLOG_SPGIST_ADD_LEAF,
            &[blk(0, 12), blk(1, 5)],
            &add_leaf_main(false, 2, 0, 2, 3, &first),
        );
        let mut parent = spg_page(0, &[inner_tuple(2), inner_tuple(3)]);
        match apply(&mut parent, &rec, 1) {
            Err(RedoErrorKind::Page(e)) => assert!(
                e.to_string()
                    .contains("failed to find requested node 3 in SPGiST inner tuple"),
                "{e}"
            ),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn add_leaf_replaces_a_dead_head_and_refuses_a_live_slot() {
        let dead = dead_tuple(
            SPGIST_DEAD,
            None,
            SpgxlogState {
                my_xid: 0,
                is_build: false,
            },
        );
        let mut p = spg_page(SPGIST_LEAF, &[leaf_tuple(16, 1, 0), dead.to_vec()]);
        let new = leaf_tuple(32, 5, 0);
        let rec = record(
            XLOG_SPGIST_ADD_LEAF,
            &[blk(0, 7)],
            &add_leaf_main(false, 2, 2, 0, 0, &new),
        );
        apply(&mut p, &rec, 0).unwrap();
        assert_eq!(p.item(2).unwrap(), &new[..]);
        assert_eq!(p.item(1).unwrap(), &leaf_tuple(16, 1, 0)[..]);
        // A slot that holds a live tuple is not a placeholder to reuse.
        let mut p = spg_page(SPGIST_LEAF, &[leaf_tuple(16, 1, 0), leaf_tuple(16, 2, 0)]);
        let before = p.clone();
        let rec = record(
            XLOG_SPGIST_ADD_LEAF,
            &[blk(0, 7)],
            &add_leaf_main(false, 2, 1, 0, 0, &new),
        );
        match apply(&mut p, &rec, 0) {
            Err(RedoErrorKind::Page(e)) => assert!(
                e.to_string()
                    .contains("SPGiST tuple to be replaced is not a placeholder"),
                "{e}"
            ),
            other => panic!("{other:?}"),
        }
        assert_eq!(p, before);
        // Block 1 without a parent offset, and a new page without WILL_INIT, are malformed.
        let rec = record(
            XLOG_SPGIST_ADD_LEAF,
            &[blk(0, 7), blk(1, 3)],
            &add_leaf_main(true, 1, 0, 0, 0, &new),
        );
        assert!(matches!(
            apply(&mut p, &rec, 1),
            Err(RedoErrorKind::Malformed(_))
        ));
        assert!(matches!(
            apply(&mut p, &rec, 0),
            Err(RedoErrorKind::Malformed(_))
        ));
    }

    fn move_leafs_main(
        to_delete: &[u16],
        to_insert: &[u16],
        tuples: &[Vec<u8>],
        new_page: bool,
        replace_dead: bool,
    ) -> Vec<u8> {
        let mut m = vec![0u8; 20];
        put_u16(&mut m, 0, to_delete.len() as u16);
        m[2] = new_page as u8;
        m[3] = replace_dead as u8;
        put_u16(&mut m, 6, 1); // offnumParent
        put_u16(&mut m, 8, 0); // nodeI
        m[12..20].copy_from_slice(&state_bytes(false));
        m.extend(u16s(to_delete));
        m.extend(u16s(to_insert));
        for t in tuples {
            m.extend_from_slice(t);
        }
        m
    }

    #[test]
    fn move_leafs_moves_a_chain_leaving_a_redirect_and_placeholders() {
        // Source: a chain 2 -> 4 -> 0 among other tuples.
        let mut src = spg_page(
            SPGIST_LEAF,
            &[
                leaf_tuple(16, 1, 0),
                leaf_tuple(16, 2, 4),
                leaf_tuple(16, 3, 0),
                leaf_tuple(16, 4, 0),
            ],
        );
        // Moved with their links rewritten (reversed chain), then the new tuple.
        let tuples = [
            leaf_tuple(16, 2, 0),
            leaf_tuple(16, 4, 1),
            leaf_tuple(16, 8, 2),
        ];
        let main = move_leafs_main(&[2, 4], &[1, 2, 3], &tuples, true, false);
        let rec = record(
            XLOG_SPGIST_MOVE_LEAFS,
            &[blk(0, 3), init(1, 9), blk(2, 1)],
            &main,
        );
        let mut dest = Box::new([0u8; BLCKSZ]);
        apply(&mut dest, &rec, 1).unwrap();
        assert_eq!(dest.max_offset(), 3);
        assert_eq!(dest.item(3).unwrap(), &tuples[2][..]);
        apply(&mut src, &rec, 0).unwrap();
        assert_eq!(src.max_offset(), 4);
        assert_eq!(
            [1, 2, 3, 4].map(|o| state_of(&src, o)),
            [
                SPGIST_LIVE,
                SPGIST_REDIRECT,
                SPGIST_LIVE,
                SPGIST_PLACEHOLDER
            ]
        );
        // The redirect points to the chain's new head, with the mover's xid.
        let redirect = src.item(2).unwrap();
        assert_eq!(redirect.len(), SGDTSIZE);
        assert_eq!(tid(&redirect[DEAD_POINTER..]), (9, 3));
        assert_eq!(get_u32(redirect, DEAD_XID), XID);
        assert_eq!(
            tid(&src.item(4).unwrap()[DEAD_POINTER..]),
            (INVALID_BLOCK, 0)
        );
        assert_eq!(counters(&src), (1, 1));
        assert_eq!(src.item(3).unwrap(), &leaf_tuple(16, 3, 0)[..]);
        let mut parent = spg_page(0, &[inner_tuple(2)]);
        apply(&mut parent, &rec, 2).unwrap();
        assert_eq!(node_link(&parent, 1, 0), (9, 3));
    }

    #[test]
    fn move_leafs_with_replace_dead_puts_one_tuple() {
        let mut dest = spg_page(SPGIST_LEAF, &[leaf_tuple(16, 1, 0)]);
        let mut src = spg_page(
            SPGIST_LEAF,
            &[
                leaf_tuple(16, 3, 0),
                dead_tuple(
                    SPGIST_DEAD,
                    None,
                    SpgxlogState {
                        my_xid: 0,
                        is_build: false,
                    },
                )
                .to_vec(),
            ],
        );
        let new = leaf_tuple(16, 6, 0);
        let main = move_leafs_main(&[2], &[2], std::slice::from_ref(&new), false, true);
        let rec = record(
            XLOG_SPGIST_MOVE_LEAFS,
            &[blk(0, 3), blk(1, 9), blk(2, 1)],
            &main,
        );
        apply(&mut dest, &rec, 1).unwrap();
        assert_eq!(dest.item(2).unwrap(), &new[..]);
        apply(&mut src, &rec, 0).unwrap();
        assert_eq!(state_of(&src, 2), SPGIST_REDIRECT);
        assert_eq!(tid(&src.item(2).unwrap()[DEAD_POINTER..]), (9, 2));
        // An insert offset past the end of the page: PageAddItem refuses.
        let main = move_leafs_main(&[2], &[5], std::slice::from_ref(&new), false, true);
        let rec = record(
            XLOG_SPGIST_MOVE_LEAFS,
            &[blk(0, 3), blk(1, 9), blk(2, 1)],
            &main,
        );
        let mut dest = spg_page(SPGIST_LEAF, &[leaf_tuple(16, 1, 0)]);
        match apply(&mut dest, &rec, 1) {
            Err(RedoErrorKind::Page(e)) => assert!(
                e.to_string()
                    .contains("failed to add item of size 16 to SPGiST index page"),
                "{e}"
            ),
            other => panic!("{other:?}"),
        }
    }

    fn add_node_main(
        offnum: u16,
        offnum_new: u16,
        new_page: bool,
        parent_blk: i8,
        tuple: &[u8],
    ) -> Vec<u8> {
        let mut m = vec![0u8; 20];
        put_u16(&mut m, 0, offnum);
        put_u16(&mut m, 2, offnum_new);
        m[4] = new_page as u8;
        m[5] = parent_blk as u8;
        put_u16(&mut m, 6, 1); // offnumParent
        put_u16(&mut m, 8, 1); // nodeI
        m[12..20].copy_from_slice(&state_bytes(false));
        m.extend_from_slice(tuple);
        m
    }

    #[test]
    fn add_node_in_place_and_moved_with_the_parent_on_each_page() {
        // In place: the enlarged tuple replaces the old one at its offset.
        let mut p = spg_page(0, &[inner_tuple(2), inner_tuple(2), inner_tuple(1)]);
        let bigger = inner_tuple(3);
        let rec = record(
            XLOG_SPGIST_ADD_NODE,
            &[blk(0, 4)],
            &add_node_main(2, 0, false, -1, &bigger),
        );
        apply(&mut p, &rec, 0).unwrap();
        assert_eq!(p.item(2).unwrap(), &bigger[..]);
        assert_eq!(p.item(3).unwrap(), &inner_tuple(1)[..]);

        // Moved to a new page (block 1), the parent on the old page (parentBlk 0).
        let rec = record(
            XLOG_SPGIST_ADD_NODE,
            &[blk(0, 4), init(1, 10)],
            &add_node_main(2, 1, true, 0, &bigger),
        );
        let mut old = spg_page(0, &[inner_tuple(2), inner_tuple(2)]);
        apply(&mut old, &rec, 0).unwrap();
        assert_eq!(state_of(&old, 2), SPGIST_REDIRECT);
        assert_eq!(tid(&old.item(2).unwrap()[DEAD_POINTER..]), (10, 1));
        assert_eq!(counters(&old), (1, 0));
        assert_eq!(node_link(&old, 1, 1), (10, 1));
        let mut new = Box::new([0u8; BLCKSZ]);
        apply(&mut new, &rec, 1).unwrap();
        assert_eq!(new.item(1).unwrap(), &bigger[..]);
        assert_eq!(page_flags(&new), 0);
        // The parent on the new page (parentBlk 1).
        let rec = record(
            XLOG_SPGIST_ADD_NODE,
            &[blk(0, 4), blk(1, 10)],
            &add_node_main(2, 2, false, 1, &bigger),
        );
        let mut new = spg_page(0, &[inner_tuple(2)]);
        apply(&mut new, &rec, 1).unwrap();
        assert_eq!(node_link(&new, 1, 1), (10, 2));
        let mut old = spg_page(0, &[inner_tuple(2), inner_tuple(2)]);
        apply(&mut old, &rec, 0).unwrap();
        assert_eq!(node_link(&old, 1, 1), (INVALID_BLOCK, 0));
        // Elsewhere (parentBlk 2, block 2); block 2 with another parentBlk is malformed.
        let rec = record(
            XLOG_SPGIST_ADD_NODE,
            &[blk(0, 4), blk(1, 10), blk(2, 6)],
            &add_node_main(2, 2, false, 2, &bigger),
        );
        let mut parent = spg_page(0, &[inner_tuple(2)]);
        apply(&mut parent, &rec, 2).unwrap();
        assert_eq!(node_link(&parent, 1, 1), (10, 2));
        let rec = record(
            XLOG_SPGIST_ADD_NODE,
            &[blk(0, 4), blk(1, 10), blk(2, 6)],
            &add_node_main(2, 2, false, 1, &bigger),
        );
        parent.set_lsn(Lsn(0x100));
        assert!(matches!(
            apply(&mut parent, &rec, 2),
            Err(RedoErrorKind::Malformed(_))
        ));
    }

    #[test]
    fn split_tuple_on_one_page_and_on_two() {
        let prefix = inner_tuple(1);
        let postfix = inner_tuple(2);
        let main = |postfix_off: u16, new_page: bool, same: bool| {
            let mut m = u16s(&[1, postfix_off]);
            m.extend([new_page as u8, same as u8]);
            m.extend_from_slice(&prefix);
            m.extend_from_slice(&postfix);
            m
        };
        let rec = record(XLOG_SPGIST_SPLIT_TUPLE, &[blk(0, 4)], &main(2, false, true));
        let mut p = spg_page(0, &[inner_tuple(3)]);
        apply(&mut p, &rec, 0).unwrap();
        assert_eq!(p.max_offset(), 2);
        assert_eq!(p.item(1).unwrap(), &prefix[..]);
        assert_eq!(p.item(2).unwrap(), &postfix[..]);
        let rec = record(
            XLOG_SPGIST_SPLIT_TUPLE,
            &[blk(0, 4), init(1, 11)],
            &main(1, true, false),
        );
        let mut p = spg_page(0, &[inner_tuple(3)]);
        apply(&mut p, &rec, 0).unwrap();
        assert_eq!(p.max_offset(), 1);
        assert_eq!(p.item(1).unwrap(), &prefix[..]);
        let mut other = Box::new([0u8; BLCKSZ]);
        apply(&mut other, &rec, 1).unwrap();
        assert_eq!(other.item(1).unwrap(), &postfix[..]);
    }

    #[allow(clippy::too_many_arguments)]
    fn pick_split_main(
        root: bool,
        init_src: bool,
        init_dest: bool,
        init_inner: bool,
        inner_is_parent: bool,
        to_delete: &[u16],
        to_insert: &[u16],
        select: &[u8],
        inner: &[u8],
        leaves: &[Vec<u8>],
    ) -> Vec<u8> {
        let mut m = vec![0u8; 28];
        m[0] = root as u8;
        put_u16(&mut m, 2, to_delete.len() as u16);
        put_u16(&mut m, 4, to_insert.len() as u16);
        m[6] = init_src as u8;
        m[7] = init_dest as u8;
        put_u16(&mut m, 8, 2); // offnumInner
        m[10] = init_inner as u8;
        m[12] = inner_is_parent as u8;
        put_u16(&mut m, 14, 1); // offnumParent
        put_u16(&mut m, 16, 0); // nodeI
        m[20..28].copy_from_slice(&state_bytes(false));
        m.extend(u16s(to_delete));
        m.extend(u16s(to_insert));
        m.extend_from_slice(select);
        m.extend_from_slice(inner);
        for l in leaves {
            m.extend_from_slice(l);
        }
        m
    }

    #[test]
    fn pick_split_redirects_the_source_and_spreads_the_leaves() {
        let inner = inner_tuple(2);
        let leaves = [
            leaf_tuple(16, 1, 0),
            leaf_tuple(16, 2, 0),
            leaf_tuple(16, 3, 0),
        ];
        // Source 2 and 3 replaced; new leaves: one back onto the source (over the
        // placeholder at 3), two on a new destination page.
        let main = pick_split_main(
            false,
            false,
            true,
            false,
            false,
            &[2, 3],
            &[3, 1, 2],
            &[0, 1, 1],
            &inner,
            &leaves,
        );
        let rec = record(
            XLOG_SPGIST_PICKSPLIT,
            &[blk(0, 5), init(1, 8), blk(2, 6), blk(3, 2)],
            &main,
        );
        let mut src = spg_page(
            SPGIST_LEAF,
            &[
                leaf_tuple(16, 9, 0),
                leaf_tuple(24, 8, 3),
                leaf_tuple(24, 7, 0),
            ],
        );
        apply(&mut src, &rec, 0).unwrap();
        assert_eq!(state_of(&src, 2), SPGIST_REDIRECT);
        assert_eq!(tid(&src.item(2).unwrap()[DEAD_POINTER..]), (6, 2));
        assert_eq!(src.item(3).unwrap(), &leaves[0][..]);
        // The placeholder made for 3 was taken again.
        assert_eq!(counters(&src), (1, 0));
        let mut dest = Box::new([0u8; BLCKSZ]);
        apply(&mut dest, &rec, 1).unwrap();
        assert_eq!(dest.max_offset(), 2);
        assert_eq!(dest.item(1).unwrap(), &leaves[1][..]);
        assert_eq!(page_flags(&dest), SPGIST_LEAF);
        let mut inner_page = spg_page(0, &[inner_tuple(1)]);
        apply(&mut inner_page, &rec, 2).unwrap();
        assert_eq!(inner_page.item(2).unwrap(), &inner[..]);
        let mut parent = spg_page(0, &[inner_tuple(1)]);
        apply(&mut parent, &rec, 3).unwrap();
        assert_eq!(node_link(&parent, 1, 0), (6, 2));

        // The inner tuple on the parent's page: the link is set with block 2.
        let main = pick_split_main(
            false,
            false,
            false,
            false,
            true,
            &[1],
            &[1],
            &[0],
            &inner,
            &leaves[..1],
        );
        let rec = record(XLOG_SPGIST_PICKSPLIT, &[blk(0, 5), blk(2, 6)], &main);
        let mut inner_page = spg_page(0, &[inner_tuple(1)]);
        apply(&mut inner_page, &rec, 2).unwrap();
        assert_eq!(node_link(&inner_page, 1, 0), (6, 2));
    }

    #[test]
    fn pick_split_of_the_root_reinitialises_it_as_inner() {
        let inner = inner_tuple(2);
        let leaves = [leaf_tuple(16, 1, 0), leaf_tuple(16, 2, 1)];
        let mut main = pick_split_main(
            true,
            false,
            true,
            true,
            false,
            &[],
            &[1, 2],
            &[1, 1],
            &inner,
            &leaves,
        );
        put_u16(&mut main, 8, 1); // offnumInner: the root's only tuple
        let rec = record(XLOG_SPGIST_PICKSPLIT, &[init(1, 3), init(2, 1)], &main);
        let mut root = spg_page(SPGIST_LEAF, &[leaf_tuple(16, 1, 0), leaf_tuple(16, 2, 0)]);
        apply(&mut root, &rec, 2).unwrap();
        assert_eq!(page_flags(&root), 0);
        assert_eq!(root.max_offset(), 1);
        assert_eq!(root.item(1).unwrap(), &inner[..]);
        let mut leaf = Box::new([0u8; BLCKSZ]);
        apply(&mut leaf, &rec, 1).unwrap();
        assert_eq!(leaf.max_offset(), 2);
        assert_eq!(next_of(&leaf, 2), 1);
        // A source block in a root split is not part of the record.
        let rec = record(
            XLOG_SPGIST_PICKSPLIT,
            &[blk(0, 1), init(1, 3), init(2, 1)],
            &main,
        );
        let mut p = spg_page(SPGIST_LEAF, &[]);
        assert!(matches!(
            apply(&mut p, &rec, 0),
            Err(RedoErrorKind::Malformed(_))
        ));
    }

    #[test]
    fn vacuum_leaf_marks_moves_and_rechains() {
        // 1: head of a chain whose tuples died but one (3); 2: a dead head; 4: a removed
        // tuple; 3 moves to 1's slot (the chain's head must stay put).
        let mut p = spg_page(
            SPGIST_LEAF,
            &[
                leaf_tuple(16, 1, 3),
                leaf_tuple(16, 2, 0),
                leaf_tuple(16, 3, 5),
                leaf_tuple(16, 4, 0),
                leaf_tuple(16, 5, 0),
            ],
        );
        let mut main = u16s(&[1, 1, 1, 1]); // nDead, nPlaceholder, nMove, nChain
        main.extend(state_bytes(false));
        main.extend(u16s(&[2])); // to DEAD
        main.extend(u16s(&[4])); // to PLACEHOLDER
        main.extend(u16s(&[3])); // move from
        main.extend(u16s(&[1])); // move to
        main.extend(u16s(&[1])); // re-chain
        main.extend(u16s(&[5])); // to
        let rec = record(XLOG_SPGIST_VACUUM_LEAF, &[blk(0, 9)], &main);
        apply(&mut p, &rec, 0).unwrap();
        assert_eq!(
            [1, 2, 3, 4, 5].map(|o| state_of(&p, o)),
            [
                SPGIST_LIVE,
                SPGIST_DEAD,
                SPGIST_PLACEHOLDER,
                SPGIST_PLACEHOLDER,
                SPGIST_LIVE
            ]
        );
        // The tuple of slot 3 is now at 1, linked on to 5.
        assert_eq!(p.item(1).unwrap()[12], 3);
        assert_eq!(next_of(&p, 1), 5);
        assert_eq!(counters(&p), (0, 2));
        // A dead tuple's pointer and xid are invalid.
        let dead = p.item(2).unwrap();
        assert_eq!(tid(&dead[DEAD_POINTER..]), (INVALID_BLOCK, 0));
        assert_eq!(get_u32(dead, DEAD_XID), INVALID_XID);
        // Re-chaining a tuple that is not live is refused.
        let mut main = u16s(&[0, 0, 0, 1]);
        main.extend(state_bytes(false));
        main.extend(u16s(&[2, 5]));
        let rec = record(XLOG_SPGIST_VACUUM_LEAF, &[blk(0, 9)], &main);
        p.set_lsn(Lsn(0x100));
        assert!(matches!(
            apply(&mut p, &rec, 0),
            Err(RedoErrorKind::Page(_))
        ));
    }

    #[test]
    fn vacuum_root_deletes_tuples() {
        let mut p = spg_page(
            SPGIST_LEAF,
            &[
                leaf_tuple(16, 1, 0),
                leaf_tuple(16, 2, 0),
                leaf_tuple(24, 3, 0),
                leaf_tuple(16, 4, 0),
            ],
        );
        let mut main = u16s(&[3, 0]);
        main.extend(state_bytes(false));
        main.extend(u16s(&[1, 2, 4]));
        let rec = record(XLOG_SPGIST_VACUUM_ROOT, &[blk(0, 1)], &main);
        apply(&mut p, &rec, 0).unwrap();
        assert_eq!(p.max_offset(), 1);
        assert_eq!(p.item(1).unwrap(), &leaf_tuple(24, 3, 0)[..]);
    }

    #[test]
    fn vacuum_redirect_makes_placeholders_and_trims_the_end() {
        let st = SpgxlogState {
            my_xid: XID,
            is_build: false,
        };
        let redirect = dead_tuple(SPGIST_REDIRECT, Some((7, 3)), st).to_vec();
        let placeholder = dead_tuple(SPGIST_PLACEHOLDER, None, st).to_vec();
        let mut p = spg_page(
            0,
            &[
                inner_tuple(2),
                redirect.clone(),
                inner_tuple(1),
                redirect.clone(),
                placeholder.clone(),
            ],
        );
        set_n_redirection(&mut p, 2);
        set_n_placeholder(&mut p, 1);
        let mut main = u16s(&[2, 4]); // nToPlaceholder, firstPlaceholder
        main.extend(500u32.to_le_bytes());
        main.extend(u16s(&[2, 4]));
        let rec = record(XLOG_SPGIST_VACUUM_REDIRECT, &[blk(0, 5)], &main);
        apply(&mut p, &rec, 0).unwrap();
        // 4 and 5 were removed; 2 became a placeholder that keeps the mover's xid.
        assert_eq!(p.max_offset(), 3);
        assert_eq!(state_of(&p, 2), SPGIST_PLACEHOLDER);
        let t = p.item(2).unwrap();
        assert_eq!(tid(&t[DEAD_POINTER..]), (INVALID_BLOCK, 0));
        assert_eq!(get_u32(t, DEAD_XID), XID);
        assert_eq!(counters(&p), (0, 1));
        // More redirects to convert than the page counts is refused.
        let mut p = spg_page(0, &[inner_tuple(1), redirect]);
        let mut main = u16s(&[1, 0]);
        main.extend(500u32.to_le_bytes());
        main.extend(u16s(&[2]));
        let rec = record(XLOG_SPGIST_VACUUM_REDIRECT, &[blk(0, 5)], &main);
        assert!(matches!(
            apply(&mut p, &rec, 0),
            Err(RedoErrorKind::Page(_))
        ));
        // A live tuple is not a redirect.
        set_n_redirection(&mut p, 1);
        let mut main = u16s(&[1, 0]);
        main.extend(500u32.to_le_bytes());
        main.extend(u16s(&[1]));
        let rec = record(XLOG_SPGIST_VACUUM_REDIRECT, &[blk(0, 5)], &main);
        assert!(matches!(
            apply(&mut p, &rec, 0),
            Err(RedoErrorKind::Page(_))
        ));
    }

    #[test]
    fn a_page_of_another_shape_and_a_short_record_are_refused() {
        let mut p = Box::new([0u8; BLCKSZ]);
        p.init(16);
        let mut main = u16s(&[1, 0]);
        main.extend(state_bytes(false));
        main.extend(u16s(&[1]));
        let rec = record(XLOG_SPGIST_VACUUM_ROOT, &[blk(0, 1)], &main);
        match apply(&mut p, &rec, 0) {
            Err(RedoErrorKind::Page(e)) => assert!(e.to_string().contains("not an SP-GiST page")),
            other => panic!("{other:?}"),
        }
        // A leaf tuple whose size runs past the record.
        let mut t = leaf_tuple(16, 1, 0);
        put_u32(&mut t, 0, 64 << 2);
        let rec = record(
            XLOG_SPGIST_ADD_LEAF,
            &[blk(0, 7)],
            &add_leaf_main(false, 1, 0, 0, 0, &t),
        );
        let mut p = spg_page(SPGIST_LEAF, &[]);
        assert!(matches!(
            apply(&mut p, &rec, 0),
            Err(RedoErrorKind::Malformed(_))
        ));
    }

    #[test]
    fn last_used_pages_are_masked_on_the_metapage_only() {
        let mut meta = spg_page(SPGIST_META, &[]);
        put_u32(&mut meta[..], 24, 0xBA0B_ABEE);
        meta.set_lower(92);
        let mut other = meta.clone();
        put_u32(&mut other[..], 32, 17);
        mask_last_used_pages(&mut meta);
        mask_last_used_pages(&mut other);
        assert_eq!(meta[..], other[..]);
        assert_eq!(get_u32(&meta[..], 24), 0xBA0B_ABEE);
        let mut leaf = spg_page(SPGIST_LEAF, &[leaf_tuple(16, 1, 0)]);
        leaf[40] = 1;
        let before = leaf.clone();
        mask_last_used_pages(&mut leaf);
        assert_eq!(leaf, before);
    }
}
