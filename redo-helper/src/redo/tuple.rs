//! Heap tuple headers (`access/htup_details.h`) and index tuples (`access/itup.h`) as
//! byte views, with the flag constants redo and the masks need.
//!
//! The header's fields and flag bits are listed in full, as in the headers, so that a redo
//! function finds the one it needs here; some are not read by today's redo.
#![allow(dead_code)]

use super::page::{get_u16, get_u32, put_u16, put_u32};

/// `HeapTupleHeaderData` field offsets.
pub(crate) const T_XMIN: usize = 0;
pub(crate) const T_XMAX: usize = 4;
/// `t_cid` / `t_xvac` (a union).
pub(crate) const T_FIELD3: usize = 8;
pub(crate) const T_CTID: usize = 12;
pub(crate) const T_INFOMASK2: usize = 18;
pub(crate) const T_INFOMASK: usize = 20;
pub(crate) const T_HOFF: usize = 22;

// t_infomask
pub(crate) const HEAP_HASNULL: u16 = 0x0001;
pub(crate) const HEAP_HASVARWIDTH: u16 = 0x0002;
pub(crate) const HEAP_HASEXTERNAL: u16 = 0x0004;
pub(crate) const HEAP_XMAX_KEYSHR_LOCK: u16 = 0x0010;
pub(crate) const HEAP_COMBOCID: u16 = 0x0020;
pub(crate) const HEAP_XMAX_EXCL_LOCK: u16 = 0x0040;
pub(crate) const HEAP_XMAX_LOCK_ONLY: u16 = 0x0080;
pub(crate) const HEAP_XMIN_COMMITTED: u16 = 0x0100;
pub(crate) const HEAP_XMIN_INVALID: u16 = 0x0200;
pub(crate) const HEAP_XMIN_FROZEN: u16 = HEAP_XMIN_COMMITTED | HEAP_XMIN_INVALID;
pub(crate) const HEAP_XMAX_COMMITTED: u16 = 0x0400;
pub(crate) const HEAP_XMAX_INVALID: u16 = 0x0800;
pub(crate) const HEAP_XMAX_IS_MULTI: u16 = 0x1000;
pub(crate) const HEAP_UPDATED: u16 = 0x2000;
pub(crate) const HEAP_MOVED_OFF: u16 = 0x4000;
pub(crate) const HEAP_MOVED_IN: u16 = 0x8000;
pub(crate) const HEAP_MOVED: u16 = HEAP_MOVED_OFF | HEAP_MOVED_IN;
/// `HEAP_LOCK_MASK`: SHR (= EXCL | KEYSHR) | EXCL | KEYSHR.
pub(crate) const HEAP_LOCK_MASK: u16 = HEAP_XMAX_EXCL_LOCK | HEAP_XMAX_KEYSHR_LOCK;
/// `HEAP_XMAX_BITS`.
pub(crate) const HEAP_XMAX_BITS: u16 = HEAP_XMAX_COMMITTED
    | HEAP_XMAX_INVALID
    | HEAP_XMAX_IS_MULTI
    | HEAP_LOCK_MASK
    | HEAP_XMAX_LOCK_ONLY;
/// `HEAP_XACT_MASK`: visibility-related bits (hint bits included).
pub(crate) const HEAP_XACT_MASK: u16 = 0xFFF0;

// t_infomask2
pub(crate) const HEAP_NATTS_MASK: u16 = 0x07FF;
pub(crate) const HEAP_KEYS_UPDATED: u16 = 0x2000;
pub(crate) const HEAP_HOT_UPDATED: u16 = 0x4000;
pub(crate) const HEAP_ONLY_TUPLE: u16 = 0x8000;

/// `SpecTokenOffsetNumber`: a speculative insertion's ctid offset.
pub(crate) const SPEC_TOKEN_OFFSET_NUMBER: u16 = 0xFFFE;
/// `MovedPartitionsOffsetNumber` / `MovedPartitionsBlockNumber`.
pub(crate) const MOVED_PARTITIONS_OFFSET_NUMBER: u16 = 0xFFFD;
pub(crate) const MOVED_PARTITIONS_BLOCK_NUMBER: u32 = 0xFFFF_FFFF;

/// `FrozenTransactionId`.
pub(crate) const FROZEN_TRANSACTION_ID: u32 = 2;

/// A mutable view of a heap tuple header at the start of `b` (at least 23 bytes).
pub(crate) struct HeapTupleHeader<'a> {
    pub b: &'a mut [u8],
}

impl<'a> HeapTupleHeader<'a> {
    pub(crate) fn new(b: &'a mut [u8]) -> Option<HeapTupleHeader<'a>> {
        (b.len() >= super::page::SIZEOF_HEAP_TUPLE_HEADER).then_some(HeapTupleHeader { b })
    }
    pub(crate) fn xmin(&self) -> u32 {
        get_u32(self.b, T_XMIN)
    }
    pub(crate) fn set_xmin(&mut self, v: u32) {
        put_u32(self.b, T_XMIN, v)
    }
    pub(crate) fn xmax(&self) -> u32 {
        get_u32(self.b, T_XMAX)
    }
    pub(crate) fn set_xmax(&mut self, v: u32) {
        put_u32(self.b, T_XMAX, v)
    }
    pub(crate) fn set_field3(&mut self, v: u32) {
        put_u32(self.b, T_FIELD3, v)
    }
    pub(crate) fn infomask(&self) -> u16 {
        get_u16(self.b, T_INFOMASK)
    }
    pub(crate) fn set_infomask(&mut self, v: u16) {
        put_u16(self.b, T_INFOMASK, v)
    }
    pub(crate) fn infomask2(&self) -> u16 {
        get_u16(self.b, T_INFOMASK2)
    }
    pub(crate) fn set_infomask2(&mut self, v: u16) {
        put_u16(self.b, T_INFOMASK2, v)
    }
    pub(crate) fn hoff(&self) -> u8 {
        self.b[T_HOFF]
    }
    /// `ItemPointerSet(&t_ctid, blk, off)`: block id as two uint16 halves (hi, lo).
    pub(crate) fn set_ctid(&mut self, blk: u32, off: u16) {
        put_u16(self.b, T_CTID, (blk >> 16) as u16);
        put_u16(self.b, T_CTID + 2, blk as u16);
        put_u16(self.b, T_CTID + 4, off);
    }
    pub(crate) fn ctid(&self) -> (u32, u16) {
        (
            ((get_u16(self.b, T_CTID) as u32) << 16) | get_u16(self.b, T_CTID + 2) as u32,
            get_u16(self.b, T_CTID + 4),
        )
    }
    /// `HeapTupleHeaderSetCmax(tup, FirstCommandId, false)` / `SetCmin(tup, FirstCommandId)`:
    /// t_cid = 0 and no combo CID.
    pub(crate) fn set_first_command_id(&mut self) {
        self.set_field3(0);
        let m = self.infomask() & !HEAP_COMBOCID;
        self.set_infomask(m);
    }
}

/// `HeapTupleHeaderXminFrozen`.
pub(crate) fn xmin_frozen(infomask: u16) -> bool {
    infomask & HEAP_XMIN_FROZEN == HEAP_XMIN_FROZEN
}

/// `HEAP_XMAX_IS_LOCKED_ONLY`.
pub(crate) fn xmax_is_locked_only(infomask: u16) -> bool {
    infomask & HEAP_XMAX_LOCK_ONLY != 0
        || infomask & (HEAP_XMAX_IS_MULTI | HEAP_LOCK_MASK) == HEAP_XMAX_EXCL_LOCK
}

// IndexTupleData: t_tid (6 bytes), t_info (uint16).
pub(crate) const INDEX_SIZE_MASK: u16 = 0x1FFF;
pub(crate) const INDEX_AM_RESERVED_BIT: u16 = 0x2000;
pub(crate) const INDEX_VAR_MASK: u16 = 0x4000;
pub(crate) const INDEX_NULL_MASK: u16 = 0x8000;
/// `sizeof(IndexTupleData)`.
pub(crate) const SIZEOF_INDEX_TUPLE: usize = 8;

/// `IndexTupleSize` of the tuple at the start of `b`.
pub(crate) fn index_tuple_size(b: &[u8]) -> Option<usize> {
    (b.len() >= SIZEOF_INDEX_TUPLE).then(|| (get_u16(b, 6) & INDEX_SIZE_MASK) as usize)
}
