//! SP-GiST records (`access/spgxlog.h`, PostgreSQL 15): all eight record types, their main
//! data (the struct, then the offset arrays and the tuples, which SP-GiST logs in the main
//! data, not in block data) and the tuple layouts the redo reads.
//!
//! Struct layouts (x86-64, checked with `offsetof` against the PostgreSQL 15 headers):
//! - `spgxlogState` {myXid (4), isBuild (1)}, 8 bytes, 4-aligned. PostgreSQL 16 renamed
//!   myXid to redirectXid; the layout is the same.
//! - ADD_LEAF `spgxlogAddLeaf` (10 bytes): newPage 0, storesNulls 1, offnumLeaf 2,
//!   offnumHeadLeaf 4, offnumParent 6, nodeI 8; the leaf tuple follows (unaligned).
//! - MOVE_LEAFS (`SizeOfSpgxlogMoveLeafs` 20): nMoves 0, newPage 2, replaceDead 3,
//!   storesNulls 4, offnumParent 6, nodeI 8, stateSrc 12; then nMoves offsets to delete,
//!   nInsert (1 if replaceDead, else nMoves + 1) offsets to insert at, nInsert leaf tuples.
//! - ADD_NODE `spgxlogAddNode` (20): offnum 0, offnumNew 2, newPage 4, parentBlk 5 (an
//!   int8: 0, 1, 2 or -1), offnumParent 6, nodeI 8, stateSrc 12; the new inner tuple.
//! - SPLIT_TUPLE `spgxlogSplitTuple` (6): offnumPrefix 0, offnumPostfix 2, newPage 4,
//!   postfixBlkSame 5; the prefix inner tuple, then the postfix inner tuple.
//! - PICKSPLIT (`SizeOfSpgxlogPickSplit` 28): isRootSplit 0, nDelete 2, nInsert 4,
//!   initSrc 6, initDest 7, offnumInner 8, initInner 10, storesNulls 11, innerIsParent 12,
//!   offnumParent 14, nodeI 16, stateSrc 20; then nDelete offsets, nInsert offsets, nInsert
//!   page selector bytes, the new inner tuple, nInsert leaf tuples.
//! - VACUUM_LEAF (`SizeOfSpgxlogVacuumLeaf` 16): nDead 0, nPlaceholder 2, nMove 4, nChain 6,
//!   stateSrc 8; then the offsets to make DEAD, to make PLACEHOLDER, to move from, to move
//!   to, to re-chain, and the new chain links.
//! - VACUUM_ROOT (`SizeOfSpgxlogVacuumRoot` 12): nDelete 0, stateSrc 4; the offsets.
//! - VACUUM_REDIRECT (`SizeOfSpgxlogVacuumRedirect` 8): nToPlaceholder 0,
//!   firstPlaceholder 2, newestRedirectXid 4 (PostgreSQL 16 renamed it
//!   snapshotConflictHorizon and added isCatalogRel; 15 has neither); the offsets.
//!
//! Block references (the `XLogRegisterBuffer` calls of `spgdoinsert.c` and `spgvacuum.c`):
//! - ADD_LEAF: 0 = the leaf page (WILL_INIT when newPage), 1 = the parent, only when
//!   offnumParent is valid.
//! - MOVE_LEAFS: 0 = the source leaf, 1 = the destination leaf (WILL_INIT when newPage),
//!   2 = the parent.
//! - ADD_NODE: 0 = the page of the inner tuple; when the enlarged tuple moves, 1 = its new
//!   page (WILL_INIT when newPage) and 2 = the parent, only when parentBlk is 2 (0 and 1
//!   say the parent is block 0's or block 1's page).
//! - SPLIT_TUPLE: 0 = the prefix tuple's page, 1 = the postfix tuple's page unless
//!   postfixBlkSame (WILL_INIT when newPage).
//! - PICKSPLIT: 0 = the old leaf unless isRootSplit (WILL_INIT when initSrc), 1 = the new
//!   leaf if any (WILL_INIT when initDest), 2 = the page of the new inner tuple (WILL_INIT
//!   when initInner), 3 = the parent when it exists and is not block 2's page.
//! - VACUUM_LEAF, VACUUM_ROOT, VACUUM_REDIRECT: 0 = the vacuumed page.

use super::MainDataReader;
use crate::wal::error::MainDataError;
use crate::wal::record::DecodedRecord;

pub const XLOG_SPGIST_ADD_LEAF: u8 = 0x10;
pub const XLOG_SPGIST_MOVE_LEAFS: u8 = 0x20;
pub const XLOG_SPGIST_ADD_NODE: u8 = 0x30;
pub const XLOG_SPGIST_SPLIT_TUPLE: u8 = 0x40;
pub const XLOG_SPGIST_PICKSPLIT: u8 = 0x50;
pub const XLOG_SPGIST_VACUUM_LEAF: u8 = 0x60;
pub const XLOG_SPGIST_VACUUM_ROOT: u8 = 0x70;
pub const XLOG_SPGIST_VACUUM_REDIRECT: u8 = 0x80;

/// `sizeof(spgxlogAddLeaf)`.
const SIZE_OF_ADD_LEAF: usize = 10;
/// `SizeOfSpgxlogMoveLeafs`.
const SIZE_OF_MOVE_LEAFS: usize = 20;
/// `sizeof(spgxlogAddNode)`.
const SIZE_OF_ADD_NODE: usize = 20;
/// `sizeof(spgxlogSplitTuple)`.
const SIZE_OF_SPLIT_TUPLE: usize = 6;
/// `SizeOfSpgxlogPickSplit`.
const SIZE_OF_PICK_SPLIT: usize = 28;
/// `SizeOfSpgxlogVacuumLeaf`.
const SIZE_OF_VACUUM_LEAF: usize = 16;
/// `SizeOfSpgxlogVacuumRoot`.
const SIZE_OF_VACUUM_ROOT: usize = 12;
/// `SizeOfSpgxlogVacuumRedirect` (15).
const SIZE_OF_VACUUM_REDIRECT: usize = 8;
/// `SizeOfSpgxlogVacuumRedirect` (16+: `isCatalogRel` at 8, the offsets 2-aligned after it).
const SIZE_OF_VACUUM_REDIRECT_16: usize = 10;

/// `sizeof(SpGistLeafTupleData)` (MAXALIGNed: `SGLTHDRSZ(false)`), the least a leaf tuple
/// is; leaf tuples are also at least `SGDTSIZE` (16) so they can become dead tuples.
pub const SGLTHDRSZ: usize = 16;
/// `SGITHDRSZ`: the MAXALIGNed inner tuple header, the least an inner tuple is.
pub const SGITHDRSZ: usize = 8;

pub fn identify(info: u8) -> Option<&'static str> {
    Some(match info {
        XLOG_SPGIST_ADD_LEAF => "ADD_LEAF",
        XLOG_SPGIST_MOVE_LEAFS => "MOVE_LEAFS",
        XLOG_SPGIST_ADD_NODE => "ADD_NODE",
        XLOG_SPGIST_SPLIT_TUPLE => "SPLIT_TUPLE",
        XLOG_SPGIST_PICKSPLIT => "PICKSPLIT",
        XLOG_SPGIST_VACUUM_LEAF => "VACUUM_LEAF",
        XLOG_SPGIST_VACUUM_ROOT => "VACUUM_ROOT",
        XLOG_SPGIST_VACUUM_REDIRECT => "VACUUM_REDIRECT",
        _ => return None,
    })
}

/// `spgxlogState`: what `fillFakeState` gives the redo for `spgFormDeadTuple`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpgxlogState {
    /// The xid a REDIRECT tuple records (`myXid`).
    pub my_xid: u32,
    /// An index build: moved tuples leave placeholders, not redirects.
    pub is_build: bool,
}

/// Typed main data of an SP-GiST record; tuples and arrays borrow the record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SpgRecord<'a> {
    /// `spgxlogAddLeaf` and the leaf tuple.
    AddLeaf {
        new_page: bool,
        stores_nulls: bool,
        offnum_leaf: u16,
        offnum_head_leaf: u16,
        offnum_parent: u16,
        node_i: u16,
        leaf_tuple: &'a [u8],
    },
    /// `spgxlogMoveLeafs` and its arrays; `to_insert` and `leaf_tuples` have one entry
    /// (replaceDead) or nMoves + 1.
    MoveLeafs {
        n_moves: u16,
        new_page: bool,
        replace_dead: bool,
        stores_nulls: bool,
        offnum_parent: u16,
        node_i: u16,
        state: SpgxlogState,
        to_delete: Vec<u16>,
        to_insert: Vec<u16>,
        leaf_tuples: Vec<&'a [u8]>,
    },
    /// `spgxlogAddNode` and the enlarged inner tuple.
    AddNode {
        offnum: u16,
        offnum_new: u16,
        new_page: bool,
        parent_blk: i8,
        offnum_parent: u16,
        node_i: u16,
        state: SpgxlogState,
        inner_tuple: &'a [u8],
    },
    /// `spgxlogSplitTuple` and the prefix and postfix inner tuples.
    SplitTuple {
        offnum_prefix: u16,
        offnum_postfix: u16,
        new_page: bool,
        postfix_blk_same: bool,
        prefix_tuple: &'a [u8],
        postfix_tuple: &'a [u8],
    },
    /// `spgxlogPickSplit` and its arrays, the inner tuple and nInsert leaf tuples.
    PickSplit {
        is_root_split: bool,
        n_delete: u16,
        n_insert: u16,
        init_src: bool,
        init_dest: bool,
        offnum_inner: u16,
        init_inner: bool,
        stores_nulls: bool,
        inner_is_parent: bool,
        offnum_parent: u16,
        node_i: u16,
        state: SpgxlogState,
        to_delete: Vec<u16>,
        to_insert: Vec<u16>,
        /// Per leaf tuple: 0 = the source page (block 0), else the destination (block 1).
        leaf_page_select: &'a [u8],
        inner_tuple: &'a [u8],
        leaf_tuples: Vec<&'a [u8]>,
    },
    /// `spgxlogVacuumLeaf` and its six offset arrays.
    VacuumLeaf {
        state: SpgxlogState,
        to_dead: Vec<u16>,
        to_placeholder: Vec<u16>,
        move_src: Vec<u16>,
        move_dest: Vec<u16>,
        chain_src: Vec<u16>,
        chain_dest: Vec<u16>,
    },
    /// `spgxlogVacuumRoot` and the offsets to delete.
    VacuumRoot {
        state: SpgxlogState,
        to_delete: Vec<u16>,
    },
    /// `spgxlogVacuumRedirect` and the redirects to turn into placeholders.
    VacuumRedirect {
        first_placeholder: u16,
        newest_redirect_xid: u32,
        /// 16+ (`isCatalogRel`); false on 15.
        is_catalog_rel: bool,
        to_placeholder: Vec<u16>,
    },
}

pub fn parse(rec: &DecodedRecord) -> Result<SpgRecord<'_>, MainDataError> {
    let info = rec.rmgr_info();
    let name = identify(info).unwrap_or("UNKNOWN");
    let mut r = MainDataReader::new(rec.main_data(), rec.lsn, "SPGist", name);
    Ok(match info {
        XLOG_SPGIST_ADD_LEAF => {
            let new_page = r.bool()?;
            let stores_nulls = r.bool()?;
            let offnum_leaf = r.u16()?;
            let offnum_head_leaf = r.u16()?;
            let offnum_parent = r.u16()?;
            let node_i = r.u16()?;
            r.seek(SIZE_OF_ADD_LEAF)?;
            let leaf_tuple = leaf_tuple(&mut r)?;
            SpgRecord::AddLeaf {
                new_page,
                stores_nulls,
                offnum_leaf,
                offnum_head_leaf,
                offnum_parent,
                node_i,
                leaf_tuple,
            }
        }
        XLOG_SPGIST_MOVE_LEAFS => {
            let n_moves = r.u16()?;
            let new_page = r.bool()?;
            let replace_dead = r.bool()?;
            let stores_nulls = r.bool()?;
            r.seek(6)?;
            let offnum_parent = r.u16()?;
            let node_i = r.u16()?;
            r.seek(12)?;
            let state = state(&mut r)?;
            r.seek(SIZE_OF_MOVE_LEAFS)?;
            // "nInsert = xldata->replaceDead ? 1 : xldata->nMoves + 1".
            let n_insert = if replace_dead {
                1
            } else {
                usize::from(n_moves) + 1
            };
            let to_delete = r.u16_array(n_moves.into())?;
            let to_insert = r.u16_array(n_insert)?;
            let leaf_tuples = leaf_tuples(&mut r, n_insert)?;
            SpgRecord::MoveLeafs {
                n_moves,
                new_page,
                replace_dead,
                stores_nulls,
                offnum_parent,
                node_i,
                state,
                to_delete,
                to_insert,
                leaf_tuples,
            }
        }
        XLOG_SPGIST_ADD_NODE => {
            let offnum = r.u16()?;
            let offnum_new = r.u16()?;
            let new_page = r.bool()?;
            let parent_blk = r.u8()? as i8;
            let offnum_parent = r.u16()?;
            let node_i = r.u16()?;
            r.seek(12)?;
            let state = state(&mut r)?;
            r.seek(SIZE_OF_ADD_NODE)?;
            let inner_tuple = inner_tuple(&mut r)?;
            SpgRecord::AddNode {
                offnum,
                offnum_new,
                new_page,
                parent_blk,
                offnum_parent,
                node_i,
                state,
                inner_tuple,
            }
        }
        XLOG_SPGIST_SPLIT_TUPLE => {
            let offnum_prefix = r.u16()?;
            let offnum_postfix = r.u16()?;
            let new_page = r.bool()?;
            let postfix_blk_same = r.bool()?;
            r.seek(SIZE_OF_SPLIT_TUPLE)?;
            let prefix_tuple = inner_tuple(&mut r)?;
            let postfix_tuple = inner_tuple(&mut r)?;
            SpgRecord::SplitTuple {
                offnum_prefix,
                offnum_postfix,
                new_page,
                postfix_blk_same,
                prefix_tuple,
                postfix_tuple,
            }
        }
        XLOG_SPGIST_PICKSPLIT => {
            let is_root_split = r.bool()?;
            r.seek(2)?;
            let n_delete = r.u16()?;
            let n_insert = r.u16()?;
            let init_src = r.bool()?;
            let init_dest = r.bool()?;
            let offnum_inner = r.u16()?;
            let init_inner = r.bool()?;
            let stores_nulls = r.bool()?;
            let inner_is_parent = r.bool()?;
            r.seek(14)?;
            let offnum_parent = r.u16()?;
            let node_i = r.u16()?;
            r.seek(20)?;
            let state = state(&mut r)?;
            r.seek(SIZE_OF_PICK_SPLIT)?;
            let to_delete = r.u16_array(n_delete.into())?;
            let to_insert = r.u16_array(n_insert.into())?;
            let leaf_page_select = r.bytes(n_insert.into())?;
            let inner_tuple = inner_tuple(&mut r)?;
            let leaf_tuples = leaf_tuples(&mut r, n_insert.into())?;
            SpgRecord::PickSplit {
                is_root_split,
                n_delete,
                n_insert,
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
            }
        }
        XLOG_SPGIST_VACUUM_LEAF => {
            let n_dead = r.u16()?;
            let n_placeholder = r.u16()?;
            let n_move = r.u16()?;
            let n_chain = r.u16()?;
            let state = state(&mut r)?;
            r.seek(SIZE_OF_VACUUM_LEAF)?;
            SpgRecord::VacuumLeaf {
                state,
                to_dead: r.u16_array(n_dead.into())?,
                to_placeholder: r.u16_array(n_placeholder.into())?,
                move_src: r.u16_array(n_move.into())?,
                move_dest: r.u16_array(n_move.into())?,
                chain_src: r.u16_array(n_chain.into())?,
                chain_dest: r.u16_array(n_chain.into())?,
            }
        }
        XLOG_SPGIST_VACUUM_ROOT => {
            let n_delete = r.u16()?;
            r.seek(4)?;
            let state = state(&mut r)?;
            r.seek(SIZE_OF_VACUUM_ROOT)?;
            SpgRecord::VacuumRoot {
                state,
                to_delete: r.u16_array(n_delete.into())?,
            }
        }
        XLOG_SPGIST_VACUUM_REDIRECT => {
            let n_to_placeholder = r.u16()?;
            let first_placeholder = r.u16()?;
            let newest_redirect_xid = r.u32()?;
            // 16 added `bool isCatalogRel` at 8: the offsets start at 10, not 8.
            let is_catalog_rel = if rec.version.has_catalog_rel_flags() {
                let flag = r.bool()?;
                r.seek(SIZE_OF_VACUUM_REDIRECT_16)?;
                flag
            } else {
                r.seek(SIZE_OF_VACUUM_REDIRECT)?;
                false
            };
            SpgRecord::VacuumRedirect {
                first_placeholder,
                newest_redirect_xid,
                is_catalog_rel,
                to_placeholder: r.u16_array(n_to_placeholder.into())?,
            }
        }
        other => return Err(r.error(format!("spg_redo: unknown op code {other}"))),
    })
}

/// `spgxlogState` at the reader: myXid, then isBuild (padding after it).
fn state(r: &mut MainDataReader<'_>) -> Result<SpgxlogState, MainDataError> {
    Ok(SpgxlogState {
        my_xid: r.u32()?,
        is_build: r.bool()?,
    })
}

/// `n` leaf tuples one after another (`ptr += leafTupleHdr.size`).
fn leaf_tuples<'a>(r: &mut MainDataReader<'a>, n: usize) -> Result<Vec<&'a [u8]>, MainDataError> {
    let mut tuples = Vec::with_capacity(n.min(r.remaining() / SGLTHDRSZ + 1));
    for _ in 0..n {
        tuples.push(leaf_tuple(r)?);
    }
    Ok(tuples)
}

/// The leaf tuple at the reader: its `size` is the upper 30 bits of the first word
/// (`unsigned int tupstate:2, size:30`, low bits first on little-endian x86-64).
fn leaf_tuple<'a>(r: &mut MainDataReader<'a>) -> Result<&'a [u8], MainDataError> {
    let start = r.position();
    let size = (r.u32()? >> 2) as usize;
    if size < SGLTHDRSZ {
        return Err(r.error(format!("leaf tuple of {size} bytes at offset {start}")));
    }
    r.seek(start)?;
    r.bytes(size)
}

/// The inner tuple at the reader: its `size` is the uint16 after the bit-field word.
fn inner_tuple<'a>(r: &mut MainDataReader<'a>) -> Result<&'a [u8], MainDataError> {
    let start = r.position();
    r.seek(start + 4)?;
    let size = r.u16()? as usize;
    if size < SGITHDRSZ {
        return Err(r.error(format!("inner tuple of {size} bytes at offset {start}")));
    }
    r.seek(start)?;
    r.bytes(size)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identify_matches_pg_waldump() {
        assert_eq!(identify(0x10), Some("ADD_LEAF"));
        assert_eq!(identify(0x50), Some("PICKSPLIT"));
        assert_eq!(identify(0x80), Some("VACUUM_REDIRECT"));
        // XLOG_SPGIST_CREATE_INDEX (0x00) is "not used anymore".
        assert_eq!(identify(0x00), None);
        assert_eq!(identify(0x90), None);
    }
}
