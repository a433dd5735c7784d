//! Hash index records (`access/hash_xlog.h`, PostgreSQL 15): all thirteen record types,
//! their main data and the layouts of the block data their redo reads.
//!
//! Block references (the `XLogRegisterBuffer` calls of `access/hash/hashpage.c`,
//! `hashovfl.c`, `hashinsert.c` and `hash.c`):
//! - INIT_META_PAGE: 0 = the metapage (`REGBUF_WILL_INIT`).
//! - INIT_BITMAP_PAGE: 0 = the first bitmap page (`REGBUF_WILL_INIT`), 1 = the metapage.
//! - INSERT: 0 = the bucket or overflow page (its data: the index tuple), 1 = the metapage.
//! - ADD_OVFL_PAGE: 0 = the new overflow page (`REGBUF_WILL_INIT`; its data: the bucket
//!   number), 1 = the page before it in the bucket chain, 2 = the bitmap page whose bit
//!   marks a recycled page in use (its data: the bit), 3 = a new bitmap page
//!   (`REGBUF_WILL_INIT`), 4 = the metapage (its data: `hashm_firstfree`).
//! - SPLIT_ALLOCATE_PAGE: 0 = the old bucket's primary page, 1 = the new bucket's primary
//!   page (`REGBUF_WILL_INIT`), 2 = the metapage (its data: the new masks and/or the new
//!   splitpoint, by the flags).
//! - SPLIT_PAGE: 0 = a page of the new bucket, always a forced full page image.
//! - SPLIT_COMPLETE: 0 = the old bucket's primary page, 1 = the new bucket's.
//! - MOVE_PAGE_CONTENTS: 0 = the primary bucket page, registered only for its cleanup lock
//!   (absent when it is the write page), 1 = the write page (its data: offsets, then the
//!   tuples), 2 = the read page (its data: the offsets deleted).
//! - SQUEEZE_PAGE: 0 = the primary bucket page, lock only as above, 1 = the write page,
//!   2 = the freed overflow page, 3 = its predecessor (absent when that is the write
//!   page), 4 = its successor (if any), 5 = the bitmap page (its data: the bit to clear),
//!   6 = the metapage (if `hashm_firstfree` moves; its data: the new value).
//! - DELETE: 0 = the primary bucket page, lock only (absent when it is the page itself),
//!   1 = the page (its data: the offsets deleted).
//! - SPLIT_CLEANUP: 0 = the old bucket's primary page.
//! - UPDATE_META_PAGE: 0 = the metapage.
//! - VACUUM_ONE_PAGE: 0 = the page (the offsets deleted are in the main data), 1 = the
//!   metapage.

use super::MainDataReader;
use crate::wal::error::MainDataError;
use crate::wal::record::DecodedRecord;

pub const XLOG_HASH_INIT_META_PAGE: u8 = 0x00;
pub const XLOG_HASH_INIT_BITMAP_PAGE: u8 = 0x10;
pub const XLOG_HASH_INSERT: u8 = 0x20;
pub const XLOG_HASH_ADD_OVFL_PAGE: u8 = 0x30;
pub const XLOG_HASH_SPLIT_ALLOCATE_PAGE: u8 = 0x40;
pub const XLOG_HASH_SPLIT_PAGE: u8 = 0x50;
pub const XLOG_HASH_SPLIT_COMPLETE: u8 = 0x60;
pub const XLOG_HASH_MOVE_PAGE_CONTENTS: u8 = 0x70;
pub const XLOG_HASH_SQUEEZE_PAGE: u8 = 0x80;
pub const XLOG_HASH_DELETE: u8 = 0x90;
pub const XLOG_HASH_SPLIT_CLEANUP: u8 = 0xA0;
pub const XLOG_HASH_UPDATE_META_PAGE: u8 = 0xB0;
pub const XLOG_HASH_VACUUM_ONE_PAGE: u8 = 0xC0;

/// `xl_hash_split_allocate_page.flags`: the metapage's masks changed (a new doubling).
pub const XLH_SPLIT_META_UPDATE_MASKS: u8 = 1 << 0;
/// `xl_hash_split_allocate_page.flags`: the metapage's splitpoint moved.
pub const XLH_SPLIT_META_UPDATE_SPLITPOINT: u8 = 1 << 1;

/// `SizeOfHashVacuumOnePage`: latestRemovedXid and ntuples (15: `int`; 16+: `uint16` and
/// `bool isCatalogRel`, padded); the target offsets follow.
pub const SIZE_OF_HASH_VACUUM_ONE_PAGE: usize = 8;

pub fn identify(info: u8) -> Option<&'static str> {
    Some(match info {
        XLOG_HASH_INIT_META_PAGE => "INIT_META_PAGE",
        XLOG_HASH_INIT_BITMAP_PAGE => "INIT_BITMAP_PAGE",
        XLOG_HASH_INSERT => "INSERT",
        XLOG_HASH_ADD_OVFL_PAGE => "ADD_OVFL_PAGE",
        XLOG_HASH_SPLIT_ALLOCATE_PAGE => "SPLIT_ALLOCATE_PAGE",
        XLOG_HASH_SPLIT_PAGE => "SPLIT_PAGE",
        XLOG_HASH_SPLIT_COMPLETE => "SPLIT_COMPLETE",
        XLOG_HASH_MOVE_PAGE_CONTENTS => "MOVE_PAGE_CONTENTS",
        XLOG_HASH_SQUEEZE_PAGE => "SQUEEZE_PAGE",
        XLOG_HASH_DELETE => "DELETE",
        XLOG_HASH_SPLIT_CLEANUP => "SPLIT_CLEANUP",
        XLOG_HASH_UPDATE_META_PAGE => "UPDATE_META_PAGE",
        XLOG_HASH_VACUUM_ONE_PAGE => "VACUUM_ONE_PAGE",
        _ => return None,
    })
}

/// Typed main data of a hash record.
#[derive(Debug, Clone, PartialEq)]
pub enum HashRecord {
    /// `xl_hash_init_meta_page`.
    InitMetaPage {
        num_tuples: f64,
        procid: u32,
        ffactor: u16,
    },
    /// `xl_hash_init_bitmap_page`.
    InitBitmapPage { bmsize: u16 },
    /// `xl_hash_insert`.
    Insert { offnum: u16 },
    /// `xl_hash_add_ovfl_page`.
    AddOvflPage { bmsize: u16, bmpage_found: bool },
    /// `xl_hash_split_allocate_page`.
    SplitAllocatePage {
        new_bucket: u32,
        old_bucket_flag: u16,
        new_bucket_flag: u16,
        flags: u8,
    },
    /// No main data: the page comes as an image.
    SplitPage,
    /// `xl_hash_split_complete`.
    SplitComplete {
        old_bucket_flag: u16,
        new_bucket_flag: u16,
    },
    /// `xl_hash_move_page_contents`.
    MovePageContents {
        ntups: u16,
        is_prim_bucket_same_wrt: bool,
    },
    /// `xl_hash_squeeze_page`.
    SqueezePage {
        prevblkno: u32,
        nextblkno: u32,
        ntups: u16,
        is_prim_bucket_same_wrt: bool,
        is_prev_bucket_same_wrt: bool,
    },
    /// `xl_hash_delete`.
    Delete {
        clear_dead_marking: bool,
        is_primary_bucket_page: bool,
    },
    /// No main data.
    SplitCleanup,
    /// `xl_hash_update_meta_page`.
    UpdateMetaPage { ntuples: f64 },
    /// `xl_hash_vacuum_one_page` (PostgreSQL 15 layout: no `isCatalogRel`) and the target
    /// offsets after it. `offsets` is empty when the main data ends at the struct, in which
    /// case redo deletes nothing (`hash_xlog_vacuum_one_page` checks the data length).
    VacuumOnePage {
        latest_removed_xid: u32,
        ntuples: i32,
        /// 16+ (`isCatalogRel`); false on 15.
        is_catalog_rel: bool,
        offsets: Vec<u16>,
    },
}

/// A C `double` (8 bytes, little endian).
fn f64_le(r: &mut MainDataReader<'_>) -> Result<f64, MainDataError> {
    Ok(f64::from_bits(r.u64()?))
}

pub fn parse(rec: &DecodedRecord) -> Result<HashRecord, MainDataError> {
    let info = rec.rmgr_info();
    let name = identify(info).unwrap_or("UNKNOWN");
    let mut r = MainDataReader::new(rec.main_data(), rec.lsn, "Hash", name);
    Ok(match info {
        XLOG_HASH_INIT_META_PAGE => HashRecord::InitMetaPage {
            num_tuples: f64_le(&mut r)?,
            procid: r.u32()?,
            ffactor: r.u16()?,
        },
        XLOG_HASH_INIT_BITMAP_PAGE => HashRecord::InitBitmapPage { bmsize: r.u16()? },
        XLOG_HASH_INSERT => HashRecord::Insert { offnum: r.u16()? },
        XLOG_HASH_ADD_OVFL_PAGE => HashRecord::AddOvflPage {
            bmsize: r.u16()?,
            bmpage_found: r.bool()?,
        },
        XLOG_HASH_SPLIT_ALLOCATE_PAGE => HashRecord::SplitAllocatePage {
            new_bucket: r.u32()?,
            old_bucket_flag: r.u16()?,
            new_bucket_flag: r.u16()?,
            flags: r.u8()?,
        },
        XLOG_HASH_SPLIT_PAGE => HashRecord::SplitPage,
        XLOG_HASH_SPLIT_COMPLETE => HashRecord::SplitComplete {
            old_bucket_flag: r.u16()?,
            new_bucket_flag: r.u16()?,
        },
        XLOG_HASH_MOVE_PAGE_CONTENTS => HashRecord::MovePageContents {
            ntups: r.u16()?,
            is_prim_bucket_same_wrt: r.bool()?,
        },
        XLOG_HASH_SQUEEZE_PAGE => HashRecord::SqueezePage {
            prevblkno: r.u32()?,
            nextblkno: r.u32()?,
            ntups: r.u16()?,
            is_prim_bucket_same_wrt: r.bool()?,
            is_prev_bucket_same_wrt: r.bool()?,
        },
        XLOG_HASH_DELETE => HashRecord::Delete {
            clear_dead_marking: r.bool()?,
            is_primary_bucket_page: r.bool()?,
        },
        XLOG_HASH_SPLIT_CLEANUP => HashRecord::SplitCleanup,
        XLOG_HASH_UPDATE_META_PAGE => HashRecord::UpdateMetaPage {
            ntuples: f64_le(&mut r)?,
        },
        XLOG_HASH_VACUUM_ONE_PAGE => {
            let latest_removed_xid = r.u32()?;
            if rec.version.has_catalog_rel_flags() {
                // 16+: `uint16 ntuples` at 4, `bool isCatalogRel` at 6, `offsets[]` at 8.
                let ntuples = r.u16()?;
                let is_catalog_rel = r.bool()?;
                r.seek(SIZE_OF_HASH_VACUUM_ONE_PAGE)?;
                return Ok(HashRecord::VacuumOnePage {
                    latest_removed_xid,
                    ntuples: ntuples.into(),
                    is_catalog_rel,
                    offsets: r.u16_array(ntuples.into())?,
                });
            }
            let ntuples = r.i32()?;
            let offsets = if r.remaining() > 0 {
                let n =
                    usize::try_from(ntuples).map_err(|_| r.error(format!("ntuples {ntuples}")))?;
                r.u16_array(n)?
            } else {
                Vec::new()
            };
            HashRecord::VacuumOnePage {
                latest_removed_xid,
                ntuples,
                is_catalog_rel: false,
                offsets,
            }
        }
        other => return Err(r.error(format!("unknown hash record type {other:#x}"))),
    })
}

/// A little-endian uint32 that is the whole of a block's data (the bucket number of
/// ADD_OVFL_PAGE's block 0, the bitmap bits and `hashm_firstfree` values).
pub fn block_u32(rec: &DecodedRecord, data: &[u8]) -> Result<u32, MainDataError> {
    let name = identify(rec.rmgr_info()).unwrap_or("UNKNOWN");
    let mut r = MainDataReader::new(data, rec.lsn, "Hash", name);
    let v = r.u32()?;
    if r.remaining() != 0 {
        return Err(r.error(format!("{} bytes of block data, expected 4", data.len())));
    }
    Ok(v)
}

/// What SPLIT_ALLOCATE_PAGE logs for the metapage (block 2's data, by the flags).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SplitMetaUpdate {
    /// `(hashm_lowmask, hashm_highmask)` with `XLH_SPLIT_META_UPDATE_MASKS`.
    pub masks: Option<(u32, u32)>,
    /// `(hashm_ovflpoint, hashm_spares[ovflpoint])` with
    /// `XLH_SPLIT_META_UPDATE_SPLITPOINT`.
    pub splitpoint: Option<(u32, u32)>,
}

pub fn parse_split_meta_update(
    rec: &DecodedRecord,
    data: &[u8],
    flags: u8,
) -> Result<SplitMetaUpdate, MainDataError> {
    let mut r = MainDataReader::new(data, rec.lsn, "Hash", "SPLIT_ALLOCATE_PAGE");
    let masks = if flags & XLH_SPLIT_META_UPDATE_MASKS != 0 {
        Some((r.u32()?, r.u32()?))
    } else {
        None
    };
    let splitpoint = if flags & XLH_SPLIT_META_UPDATE_SPLITPOINT != 0 {
        Some((r.u32()?, r.u32()?))
    } else {
        None
    };
    Ok(SplitMetaUpdate { masks, splitpoint })
}

/// The write page's data of MOVE_PAGE_CONTENTS and SQUEEZE_PAGE: `ntups` offsets, then the
/// tuples, each taking `MAXALIGN(IndexTupleSize)` bytes, until the data ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MovedTuples<'a> {
    pub offsets: Vec<u16>,
    /// Each tuple with its MAXALIGNed length, the size `PageAddItem` is given.
    pub tuples: Vec<&'a [u8]>,
}

pub fn parse_moved_tuples<'a>(
    rec: &DecodedRecord,
    data: &'a [u8],
    ntups: u16,
) -> Result<MovedTuples<'a>, MainDataError> {
    let name = identify(rec.rmgr_info()).unwrap_or("UNKNOWN");
    let mut r = MainDataReader::new(data, rec.lsn, "Hash", name);
    let offsets = r.u16_array(ntups as usize)?;
    let mut tuples = Vec::with_capacity(offsets.len());
    while r.remaining() > 0 {
        let start = r.position();
        // IndexTupleData: t_tid (6 bytes), then t_info, whose low 13 bits are the size.
        r.seek(start + 6)?;
        let size = (r.u16()? & 0x1FFF) as usize;
        if size < 8 {
            return Err(r.error(format!("index tuple of {size} bytes at {start}")));
        }
        r.seek(start)?;
        tuples.push(r.bytes(size.next_multiple_of(8))?);
    }
    if tuples.len() != offsets.len() {
        return Err(r.error(format!(
            "{} tuples logged for {} offsets",
            tuples.len(),
            offsets.len()
        )));
    }
    Ok(MovedTuples { offsets, tuples })
}

/// A block's data that is an array of offset numbers (DELETE's and MOVE_PAGE_CONTENTS'
/// deleted items): as many as fit, as `hash_xlog_delete` counts them.
pub fn parse_offsets(rec: &DecodedRecord, data: &[u8]) -> Result<Vec<u16>, MainDataError> {
    let name = identify(rec.rmgr_info()).unwrap_or("UNKNOWN");
    let mut r = MainDataReader::new(data, rec.lsn, "Hash", name);
    if !data.len().is_multiple_of(2) {
        return Err(r.error(format!("{} bytes of offset numbers", data.len())));
    }
    r.u16_array(data.len() / 2)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identify_matches_pg_waldump() {
        assert_eq!(identify(0x00), Some("INIT_META_PAGE"));
        assert_eq!(identify(0x50), Some("SPLIT_PAGE"));
        assert_eq!(identify(0xC0), Some("VACUUM_ONE_PAGE"));
        assert_eq!(identify(0xD0), None);
    }
}
