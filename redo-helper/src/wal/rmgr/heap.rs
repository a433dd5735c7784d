//! Heap and Heap2 records (`access/heapam_xlog.h`). Offsets of C struct members are noted
//! where padding matters. Per-block payloads (tuple data, offset arrays) stay in the block
//! data and are interpreted by redo, except 17's prune/freeze sub-records, decoded here by
//! [`parse_prune_freeze_block`].
//!
//! Heap2's pruning, vacuuming and freezing records differ per version:
//! - 15: `XLOG_HEAP2_PRUNE` (`xl_heap_prune`: latestRemovedXid, nredirected, ndead),
//!   `XLOG_HEAP2_VACUUM` (`xl_heap_vacuum`: nunused), `XLOG_HEAP2_FREEZE_PAGE`
//!   (`xl_heap_freeze_page`: cutoff_xid, ntuples; one 12-byte `xl_heap_freeze_tuple` per
//!   tuple in block 0).
//! - 16: the same three opcodes; prune gains `isCatalogRel` after ndead, and freezing is
//!   deduplicated: `xl_heap_freeze_page` is snapshotConflictHorizon, nplans, isCatalogRel,
//!   with block 0 holding `nplans` 12-byte `xl_heap_freeze_plan`s then each plan's offsets.
//! - 17 and 18: the three are one record, `xl_heap_prune` (reason, flags, the conflict
//!   horizon unaligned after them when `XLHP_HAS_CONFLICT_HORIZON`), with opcodes 0x10/0x20/
//!   0x30 naming only why it was written (PRUNE_ON_ACCESS, PRUNE_VACUUM_SCAN,
//!   PRUNE_VACUUM_CLEANUP); block 0 holds the sub-records the flags announce.

use super::MainDataReader;
use crate::wal::block::RelFileLocator;
use crate::wal::error::MainDataError;
use crate::wal::record::DecodedRecord;

pub const XLOG_HEAP_INSERT: u8 = 0x00;
pub const XLOG_HEAP_DELETE: u8 = 0x10;
pub const XLOG_HEAP_UPDATE: u8 = 0x20;
pub const XLOG_HEAP_TRUNCATE: u8 = 0x30;
pub const XLOG_HEAP_HOT_UPDATE: u8 = 0x40;
pub const XLOG_HEAP_CONFIRM: u8 = 0x50;
pub const XLOG_HEAP_LOCK: u8 = 0x60;
pub const XLOG_HEAP_INPLACE: u8 = 0x70;
pub const XLOG_HEAP_OPMASK: u8 = 0x70;
/// `XLOG_HEAP_INIT_PAGE`: the page is (re)initialised, only the new tuple(s) remain.
pub const XLOG_HEAP_INIT_PAGE: u8 = 0x80;

pub const XLOG_HEAP2_REWRITE: u8 = 0x00;
pub const XLOG_HEAP2_PRUNE: u8 = 0x10;
pub const XLOG_HEAP2_VACUUM: u8 = 0x20;
pub const XLOG_HEAP2_FREEZE_PAGE: u8 = 0x30;
pub const XLOG_HEAP2_VISIBLE: u8 = 0x40;
pub const XLOG_HEAP2_MULTI_INSERT: u8 = 0x50;
pub const XLOG_HEAP2_LOCK_UPDATED: u8 = 0x60;
pub const XLOG_HEAP2_NEW_CID: u8 = 0x70;

// xl_heap_insert.flags
pub const XLH_INSERT_ALL_VISIBLE_CLEARED: u8 = 1 << 0;
pub const XLH_INSERT_LAST_IN_MULTI: u8 = 1 << 1;
pub const XLH_INSERT_IS_SPECULATIVE: u8 = 1 << 2;
pub const XLH_INSERT_CONTAINS_NEW_TUPLE: u8 = 1 << 3;
pub const XLH_INSERT_ON_TOAST_RELATION: u8 = 1 << 4;
pub const XLH_INSERT_ALL_FROZEN_SET: u8 = 1 << 5;
// xl_heap_update.flags
pub const XLH_UPDATE_OLD_ALL_VISIBLE_CLEARED: u8 = 1 << 0;
pub const XLH_UPDATE_NEW_ALL_VISIBLE_CLEARED: u8 = 1 << 1;
pub const XLH_UPDATE_CONTAINS_OLD_TUPLE: u8 = 1 << 2;
pub const XLH_UPDATE_CONTAINS_OLD_KEY: u8 = 1 << 3;
pub const XLH_UPDATE_CONTAINS_NEW_TUPLE: u8 = 1 << 4;
pub const XLH_UPDATE_PREFIX_FROM_OLD: u8 = 1 << 5;
pub const XLH_UPDATE_SUFFIX_FROM_OLD: u8 = 1 << 6;
// xl_heap_delete.flags
pub const XLH_DELETE_ALL_VISIBLE_CLEARED: u8 = 1 << 0;
pub const XLH_DELETE_CONTAINS_OLD_TUPLE: u8 = 1 << 1;
pub const XLH_DELETE_CONTAINS_OLD_KEY: u8 = 1 << 2;
pub const XLH_DELETE_IS_SUPER: u8 = 1 << 3;
pub const XLH_DELETE_IS_PARTITION_MOVE: u8 = 1 << 4;
// xl_heap_truncate.flags
pub const XLH_TRUNCATE_CASCADE: u8 = 1 << 0;
pub const XLH_TRUNCATE_RESTART_SEQS: u8 = 1 << 1;
// infobits (xl_heap_delete.infobits_set etc.)
pub const XLHL_XMAX_IS_MULTI: u8 = 0x01;
pub const XLHL_XMAX_LOCK_ONLY: u8 = 0x02;
pub const XLHL_XMAX_EXCL_LOCK: u8 = 0x04;
pub const XLHL_XMAX_KEYSHR_LOCK: u8 = 0x08;
pub const XLHL_KEYS_UPDATED: u8 = 0x10;
// xl_heap_lock.flags
pub const XLH_LOCK_ALL_FROZEN_CLEARED: u8 = 0x01;
// xl_heap_visible.flags (visibilitymap.h)
pub const VISIBILITYMAP_ALL_VISIBLE: u8 = 0x01;
pub const VISIBILITYMAP_ALL_FROZEN: u8 = 0x02;
/// `VISIBILITYMAP_XLOG_CATALOG_REL` (16+): in xl_heap_visible.flags only, never in the map.
pub const VISIBILITYMAP_XLOG_CATALOG_REL: u8 = 0x04;

// xl_heap_prune.flags (17+)
pub const XLHP_IS_CATALOG_REL: u8 = 1 << 1;
/// Replay needs a cleanup lock: the record prunes (moves tuple data), so the page is
/// defragmented; without it only LP_DEAD items become unused and the array is truncated.
pub const XLHP_CLEANUP_LOCK: u8 = 1 << 2;
pub const XLHP_HAS_CONFLICT_HORIZON: u8 = 1 << 3;
pub const XLHP_HAS_FREEZE_PLANS: u8 = 1 << 4;
pub const XLHP_HAS_REDIRECTIONS: u8 = 1 << 5;
pub const XLHP_HAS_DEAD_ITEMS: u8 = 1 << 6;
pub const XLHP_HAS_NOW_UNUSED_ITEMS: u8 = 1 << 7;
/// `sizeof(xl_heap_freeze_plan)` (16) / `sizeof(xlhp_freeze_plan)` (17+): xmax at 0,
/// infomask2 at 4, infomask at 6, frzflags at 8, ntuples at 10.
pub const SIZE_OF_FREEZE_PLAN: usize = 12;

/// `heap_identify`.
pub fn heap_identify(info: u8) -> Option<&'static str> {
    Some(match info & 0xF0 {
        0x00 => "INSERT",
        0x80 => "INSERT+INIT",
        0x10 => "DELETE",
        0x20 => "UPDATE",
        0xA0 => "UPDATE+INIT",
        0x40 => "HOT_UPDATE",
        0xC0 => "HOT_UPDATE+INIT",
        0x30 => "TRUNCATE",
        0x50 => "HEAP_CONFIRM",
        0x60 => "LOCK",
        0x70 => "INPLACE",
        _ => return None,
    })
}

/// `heap2_identify` of 15 and 16.
pub fn heap2_identify(info: u8) -> Option<&'static str> {
    heap2_identify_of(crate::wal::PgVersion::V15, info)
}

/// `heap2_identify` of `version`: 17 renamed 0x10..0x30 after the merged prune record.
pub fn heap2_identify_of(version: crate::wal::PgVersion, info: u8) -> Option<&'static str> {
    let merged = version.has_merged_prune_freeze();
    Some(match info & 0xF0 {
        0x10 if merged => "PRUNE_ON_ACCESS",
        0x20 if merged => "PRUNE_VACUUM_SCAN",
        0x30 if merged => "PRUNE_VACUUM_CLEANUP",
        0x10 => "PRUNE",
        0x20 => "VACUUM",
        0x30 => "FREEZE_PAGE",
        0x40 => "VISIBLE",
        0x50 => "MULTI_INSERT",
        0xD0 => "MULTI_INSERT+INIT",
        0x60 => "LOCK_UPDATED",
        0x70 => "NEW_CID",
        0x00 => "REWRITE",
        _ => return None,
    })
}

/// `xl_heap_insert` (3 bytes): tuple header and data are in block 0's data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeapInsert {
    pub offnum: u16,
    pub flags: u8,
    pub init_page: bool,
}

/// `xl_heap_delete` (8 bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeapDelete {
    pub xmax: u32,
    pub offnum: u16,
    pub infobits_set: u8,
    pub flags: u8,
}

/// `xl_heap_update` (14 bytes), for UPDATE and HOT_UPDATE. Block 0 is the new page,
/// block 1 the old page when it differs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeapUpdate {
    pub hot: bool,
    pub init_page: bool,
    pub old_xmax: u32,
    pub old_offnum: u16,
    pub old_infobits_set: u8,
    pub flags: u8,
    pub new_xmax: u32,
    pub new_offnum: u16,
}

/// `xl_heap_truncate`: relations truncated by TRUNCATE (logical decoding only; the
/// physical truncation is an smgr record).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeapTruncate {
    pub db_id: u32,
    pub flags: u8,
    pub relids: Vec<u32>,
}

/// `xl_heap_lock` (8 bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeapLock {
    pub locking_xid: u32,
    pub offnum: u16,
    pub infobits_set: u8,
    pub flags: u8,
}

/// Typed main data of a Heap record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeapRecord {
    Insert(HeapInsert),
    Delete(HeapDelete),
    Update(HeapUpdate),
    Truncate(HeapTruncate),
    Confirm { offnum: u16 },
    Lock(HeapLock),
    Inplace(HeapInplace),
}

/// `xl_heap_inplace`: the tuple overwritten in place, and from 18 the invalidations the
/// update sends (its `dbId`, `tsId` and `relcacheInitFileInval` at 4, 8 and 12, `nmsgs` at
/// 16, the messages from 20); on 15-17 only `offnum`, and `msgs` is empty.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeapInplace {
    pub offnum: u16,
    pub db_id: u32,
    pub ts_id: u32,
    pub relcache_init_file_inval: bool,
    pub msgs: Vec<super::standby::InvalidationMessage>,
}

/// Parses the main data of a Heap record.
pub fn parse_heap(rec: &DecodedRecord) -> Result<HeapRecord, MainDataError> {
    let info = rec.rmgr_info();
    let name = heap_identify(info).unwrap_or("UNKNOWN");
    let mut r = MainDataReader::new(rec.main_data(), rec.lsn, "Heap", name);
    let init_page = info & XLOG_HEAP_INIT_PAGE != 0;
    Ok(match info & XLOG_HEAP_OPMASK {
        XLOG_HEAP_INSERT => HeapRecord::Insert(HeapInsert {
            offnum: r.u16()?,
            flags: r.u8()?,
            init_page,
        }),
        XLOG_HEAP_DELETE => HeapRecord::Delete(HeapDelete {
            xmax: r.u32()?,
            offnum: r.u16()?,
            infobits_set: r.u8()?,
            flags: r.u8()?,
        }),
        op @ (XLOG_HEAP_UPDATE | XLOG_HEAP_HOT_UPDATE) => HeapRecord::Update(HeapUpdate {
            hot: op == XLOG_HEAP_HOT_UPDATE,
            init_page,
            old_xmax: r.u32()?,
            old_offnum: r.u16()?,
            old_infobits_set: r.u8()?,
            flags: r.u8()?,
            new_xmax: r.u32()?,
            new_offnum: r.u16()?,
        }),
        XLOG_HEAP_TRUNCATE => {
            let db_id = r.u32()?;
            let nrelids = r.u32()?;
            let flags = r.u8()?;
            r.seek(12)?; // relids[] is Oid-aligned after the flags byte
            HeapTruncate {
                db_id,
                flags,
                relids: r.u32_array(nrelids as usize)?,
            }
            .into()
        }
        XLOG_HEAP_CONFIRM => HeapRecord::Confirm { offnum: r.u16()? },
        XLOG_HEAP_LOCK => HeapRecord::Lock(HeapLock {
            locking_xid: r.u32()?,
            offnum: r.u16()?,
            infobits_set: r.u8()?,
            flags: r.u8()?,
        }),
        _ => {
            let mut inplace = HeapInplace {
                offnum: r.u16()?,
                db_id: 0,
                ts_id: 0,
                relcache_init_file_inval: false,
                msgs: Vec::new(),
            };
            if rec.version.has_inplace_invalidations() {
                r.seek(4)?;
                inplace.db_id = r.u32()?;
                inplace.ts_id = r.u32()?;
                inplace.relcache_init_file_inval = r.bool()?;
                r.seek(16)?;
                let n = r.i32()?;
                let n = usize::try_from(n).map_err(|_| r.error(format!("negative nmsgs {n}")))?;
                inplace.msgs = super::standby::InvalidationMessage::parse_array(&mut r, n)?;
            }
            HeapRecord::Inplace(inplace)
        }
    })
}

impl From<HeapTruncate> for HeapRecord {
    fn from(t: HeapTruncate) -> Self {
        HeapRecord::Truncate(t)
    }
}

/// `xl_heap_new_cid`: combo/command ids for logical decoding of catalog changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeapNewCid {
    pub top_xid: u32,
    pub cmin: u32,
    pub cmax: u32,
    pub combocid: u32,
    pub target_node: RelFileLocator,
    pub target_block: u32,
    pub target_offset: u16,
}

/// `xl_heap_rewrite_mapping` (logical rewrite mapping files of VACUUM FULL/CLUSTER).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeapRewriteMapping {
    pub mapped_xid: u32,
    pub mapped_db: u32,
    pub mapped_rel: u32,
    pub offset: i64,
    pub num_mappings: u32,
    pub start_lsn: crate::wal::page::Lsn,
}

/// One freeze plan (`xl_heap_freeze_plan` in 16, `xlhp_freeze_plan` in 17+): what
/// `heap_execute_freeze_tuple` writes into each of `ntuples` tuples.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FreezePlan {
    pub xmax: u32,
    pub infomask2: u16,
    pub infomask: u16,
    pub frzflags: u8,
    pub ntuples: u16,
}

impl FreezePlan {
    fn parse(b: &[u8]) -> FreezePlan {
        let u16_at = |o: usize| u16::from_le_bytes([b[o], b[o + 1]]);
        FreezePlan {
            xmax: u32::from_le_bytes([b[0], b[1], b[2], b[3]]),
            infomask2: u16_at(4),
            infomask: u16_at(6),
            frzflags: b[8],
            ntuples: u16_at(10),
        }
    }
}

/// Block 0's sub-records of a 17+ prune/freeze record
/// (`heap_xlog_deserialize_prune_and_freeze`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PruneFreezeBlock {
    pub plans: Vec<FreezePlan>,
    /// (from, to) pairs.
    pub redirected: Vec<(u16, u16)>,
    pub dead: Vec<u16>,
    pub unused: Vec<u16>,
    /// The tuples to freeze, plan after plan.
    pub frozen: Vec<u16>,
}

/// Decodes block 0's data of a 17+ prune/freeze record with main-data `flags`: the freeze
/// plans (`uint16 nplans`, 2 bytes of padding, the plans), then for each of redirections,
/// dead and unused items present a `uint16` count and its offsets (two per redirection),
/// then the offsets of the tuples to freeze. Every byte must be used.
pub fn parse_prune_freeze_block(data: &[u8], flags: u8) -> Result<PruneFreezeBlock, String> {
    let mut at = 0usize;
    let u16_at = |at: usize| -> Result<u16, String> {
        data.get(at..at + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
            .ok_or_else(|| format!("prune/freeze block data ends at {} bytes", data.len()))
    };
    let mut out = PruneFreezeBlock::default();
    if flags & XLHP_HAS_FREEZE_PLANS != 0 {
        let nplans = u16_at(at)? as usize;
        // offsetof(xlhp_freeze_plans, plans): the plans are TransactionId-aligned.
        at += 4;
        let end = at + nplans * SIZE_OF_FREEZE_PLAN;
        let plans = data
            .get(at..end)
            .ok_or_else(|| format!("{nplans} freeze plans announced, {} bytes", data.len()))?;
        out.plans = plans
            .chunks_exact(SIZE_OF_FREEZE_PLAN)
            .map(FreezePlan::parse)
            .collect();
        at = end;
    }
    let items = |flag: u8, per: usize, at: &mut usize| -> Result<Vec<u16>, String> {
        if flags & flag == 0 {
            return Ok(Vec::new());
        }
        let n = u16_at(*at)? as usize * per;
        *at += 2;
        let v = (0..n)
            .map(|i| u16_at(*at + 2 * i))
            .collect::<Result<Vec<u16>, String>>()?;
        *at += 2 * n;
        Ok(v)
    };
    let red = items(XLHP_HAS_REDIRECTIONS, 2, &mut at)?;
    out.redirected = red.chunks_exact(2).map(|p| (p[0], p[1])).collect();
    out.dead = items(XLHP_HAS_DEAD_ITEMS, 1, &mut at)?;
    out.unused = items(XLHP_HAS_NOW_UNUSED_ITEMS, 1, &mut at)?;
    let nfrozen: usize = out.plans.iter().map(|p| p.ntuples as usize).sum();
    out.frozen = (0..nfrozen)
        .map(|i| u16_at(at + 2 * i))
        .collect::<Result<Vec<u16>, String>>()?;
    at += 2 * nfrozen;
    if at != data.len() {
        return Err(format!(
            "prune/freeze block data: {at} of {} bytes used",
            data.len()
        ));
    }
    Ok(out)
}

/// Decodes block 0's data of a 16 `XLOG_HEAP2_FREEZE_PAGE`: `nplans` plans, then each
/// plan's offsets in plan order. Returns the plans and the offsets.
pub fn parse_freeze_plans_block(
    data: &[u8],
    nplans: u16,
) -> Result<(Vec<FreezePlan>, Vec<u16>), String> {
    let end = nplans as usize * SIZE_OF_FREEZE_PLAN;
    let plans: Vec<FreezePlan> = data
        .get(..end)
        .ok_or_else(|| format!("{nplans} freeze plans announced, {} bytes", data.len()))?
        .chunks_exact(SIZE_OF_FREEZE_PLAN)
        .map(FreezePlan::parse)
        .collect();
    let n: usize = plans.iter().map(|p| p.ntuples as usize).sum();
    let rest = &data[end..];
    if rest.len() != 2 * n {
        return Err(format!(
            "freeze plans name {n} tuples, {} bytes of offsets present",
            rest.len()
        ));
    }
    let offsets = rest
        .chunks_exact(2)
        .map(|b| u16::from_le_bytes([b[0], b[1]]))
        .collect();
    Ok((plans, offsets))
}

/// Typed main data of a Heap2 record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Heap2Record {
    /// `xl_heap_prune` of 15 and 16; redirected/dead/unused offset arrays are in block 0's
    /// data.
    Prune {
        latest_removed_xid: u32,
        nredirected: u16,
        ndead: u16,
    },
    /// `xl_heap_prune` of 17+ (any of its three opcodes); the sub-records are in block 0's
    /// data ([`parse_prune_freeze_block`]).
    PruneFreeze {
        flags: u8,
        conflict_horizon: Option<u32>,
    },
    /// `xl_heap_freeze_page` of 16: plans and offsets in block 0's data
    /// ([`parse_freeze_plans_block`]).
    FreezePlans {
        conflict_horizon: u32,
        nplans: u16,
    },
    /// `xl_heap_vacuum`; unused offsets in block 0's data.
    Vacuum {
        nunused: u16,
    },
    /// `xl_heap_freeze_page`; `xl_heap_freeze_tuple` array in block 0's data.
    FreezePage {
        cutoff_xid: u32,
        ntuples: u16,
    },
    /// `xl_heap_visible`; block 0 is the VM page, block 1 the heap page.
    Visible {
        cutoff_xid: u32,
        flags: u8,
    },
    /// `xl_heap_multi_insert`; offsets are omitted when the page is initialised.
    MultiInsert {
        flags: u8,
        ntuples: u16,
        init_page: bool,
        offsets: Vec<u16>,
    },
    /// `xl_heap_lock_updated`.
    LockUpdated {
        xmax: u32,
        offnum: u16,
        infobits_set: u8,
        flags: u8,
    },
    NewCid(HeapNewCid),
    Rewrite(HeapRewriteMapping),
}

/// Parses the main data of a Heap2 record.
pub fn parse_heap2(rec: &DecodedRecord) -> Result<Heap2Record, MainDataError> {
    let info = rec.rmgr_info();
    let version = rec.version;
    let name = heap2_identify_of(version, info).unwrap_or("UNKNOWN");
    let mut r = MainDataReader::new(rec.main_data(), rec.lsn, "Heap2", name);
    Ok(match info & XLOG_HEAP_OPMASK {
        XLOG_HEAP2_PRUNE | XLOG_HEAP2_VACUUM | XLOG_HEAP2_FREEZE_PAGE
            if version.has_merged_prune_freeze() =>
        {
            let _reason = r.u8()?;
            let flags = r.u8()?;
            Heap2Record::PruneFreeze {
                flags,
                conflict_horizon: if flags & XLHP_HAS_CONFLICT_HORIZON != 0 {
                    Some(r.u32()?)
                } else {
                    None
                },
            }
        }
        XLOG_HEAP2_FREEZE_PAGE if version == crate::wal::PgVersion::V16 => {
            Heap2Record::FreezePlans {
                conflict_horizon: r.u32()?,
                nplans: r.u16()?,
            }
        }
        XLOG_HEAP2_PRUNE => Heap2Record::Prune {
            latest_removed_xid: r.u32()?,
            nredirected: r.u16()?,
            ndead: r.u16()?,
        },
        XLOG_HEAP2_VACUUM => Heap2Record::Vacuum { nunused: r.u16()? },
        XLOG_HEAP2_FREEZE_PAGE => Heap2Record::FreezePage {
            cutoff_xid: r.u32()?,
            ntuples: r.u16()?,
        },
        XLOG_HEAP2_VISIBLE => Heap2Record::Visible {
            cutoff_xid: r.u32()?,
            flags: r.u8()?,
        },
        XLOG_HEAP2_MULTI_INSERT => {
            let flags = r.u8()?;
            r.seek(2)?;
            let ntuples = r.u16()?;
            let init_page = info & XLOG_HEAP_INIT_PAGE != 0;
            let offsets = if init_page {
                Vec::new()
            } else {
                r.u16_array(ntuples as usize)?
            };
            Heap2Record::MultiInsert {
                flags,
                ntuples,
                init_page,
                offsets,
            }
        }
        XLOG_HEAP2_LOCK_UPDATED => Heap2Record::LockUpdated {
            xmax: r.u32()?,
            offnum: r.u16()?,
            infobits_set: r.u8()?,
            flags: r.u8()?,
        },
        XLOG_HEAP2_NEW_CID => {
            let top_xid = r.u32()?;
            let cmin = r.u32()?;
            let cmax = r.u32()?;
            let combocid = r.u32()?;
            let target_node = r.rel()?;
            let hi = r.u16()? as u32;
            let lo = r.u16()? as u32;
            Heap2Record::NewCid(HeapNewCid {
                top_xid,
                cmin,
                cmax,
                combocid,
                target_node,
                target_block: (hi << 16) | lo,
                target_offset: r.u16()?,
            })
        }
        _ => {
            let mapped_xid = r.u32()?;
            let mapped_db = r.u32()?;
            let mapped_rel = r.u32()?;
            r.seek(16)?;
            let offset = r.i64()?;
            let num_mappings = r.u32()?;
            r.seek(32)?;
            Heap2Record::Rewrite(HeapRewriteMapping {
                mapped_xid,
                mapped_db,
                mapped_rel,
                offset,
                num_mappings,
                start_lsn: r.lsn()?,
            })
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(xmax: u32, ntuples: u16) -> Vec<u8> {
        let mut b = xmax.to_le_bytes().to_vec();
        b.extend_from_slice(&0x0800u16.to_le_bytes());
        b.extend_from_slice(&0x0B00u16.to_le_bytes());
        b.extend_from_slice(&[0, 0]);
        b.extend_from_slice(&ntuples.to_le_bytes());
        b
    }

    #[test]
    fn prune_freeze_sub_records_in_flag_order() {
        // Two plans (2 + 1 tuples), one redirection, one dead, two unused, three frozen.
        let mut d = 2u16.to_le_bytes().to_vec();
        d.extend_from_slice(&[0, 0]);
        d.extend(plan(0, 2));
        d.extend(plan(7, 1));
        for v in [1u16, 4, 9, 1, 5, 2, 6, 7, 10, 11, 12] {
            d.extend_from_slice(&v.to_le_bytes());
        }
        let flags = XLHP_HAS_FREEZE_PLANS
            | XLHP_HAS_REDIRECTIONS
            | XLHP_HAS_DEAD_ITEMS
            | XLHP_HAS_NOW_UNUSED_ITEMS;
        let b = parse_prune_freeze_block(&d, flags).expect("valid");
        assert_eq!(b.plans.len(), 2);
        assert_eq!(b.plans[1].xmax, 7);
        assert_eq!(b.redirected, [(4, 9)]);
        assert_eq!(b.dead, [5]);
        assert_eq!(b.unused, [6, 7]);
        assert_eq!(b.frozen, [10, 11, 12]);
        // Without the dead-items flag the same bytes do not add up.
        assert!(parse_prune_freeze_block(&d, flags & !XLHP_HAS_DEAD_ITEMS).is_err());
        // Truncated anywhere: an error, never a panic.
        for n in 0..d.len() {
            assert!(parse_prune_freeze_block(&d[..n], flags).is_err(), "{n}");
        }
    }

    #[test]
    fn freeze_plans_of_16() {
        let mut d = plan(3, 2);
        d.extend(plan(4, 1));
        for v in [2u16, 3, 8] {
            d.extend_from_slice(&v.to_le_bytes());
        }
        let (plans, offsets) = parse_freeze_plans_block(&d, 2).expect("valid");
        assert_eq!(plans.len(), 2);
        assert_eq!(offsets, [2, 3, 8]);
        assert!(parse_freeze_plans_block(&d[..d.len() - 2], 2).is_err());
        assert!(parse_freeze_plans_block(&d, 3).is_err());
    }
}
