//! GiST records (`access/gistxlog.h`, PostgreSQL 15): all six record types, their main
//! data and the layouts of the block data their redo reads.
//!
//! Block references (the `XLogRegisterBuffer` calls of `access/gist/gistxlog.c`, made by
//! `gist.c`, `gistvacuum.c` and `gistutil.c`):
//! - PAGE_UPDATE: 0 = the changed page (its data: `ntodelete` offset numbers, then the new
//!   index tuples one after another), 1 = the left child whose split this downlink
//!   insertion finishes (F_FOLLOW_RIGHT cleared, NSN set; no data).
//! - DELETE: 0 = a leaf page losing its LP_DEAD tuples (`gistprunepage`); the offsets are
//!   in the main data after the header (PostgreSQL 13 to 15), not in the block data.
//! - PAGE_REUSE: no block; a deleted page is about to be reused from the FSM (a recovery
//!   conflict point for hot standby only).
//! - PAGE_SPLIT: 0 = the left child whose split this one finishes, 1..=npage = the pages
//!   of the split in order, the original page first (all `REGBUF_WILL_INIT`; each one's
//!   data: an `int` tuple count, then the tuples).
//! - PAGE_DELETE: 0 = the emptied leaf being deleted, 1 = its parent losing the downlink.
//! - ASSIGN_LSN: no block; a 4-byte dummy main data (`gistXLogAssignLSN`).

use super::MainDataReader;
use crate::wal::block::RelFileLocator;
use crate::wal::error::MainDataError;
use crate::wal::page::Lsn;
use crate::wal::record::DecodedRecord;

pub const XLOG_GIST_PAGE_UPDATE: u8 = 0x00;
pub const XLOG_GIST_DELETE: u8 = 0x10;
pub const XLOG_GIST_PAGE_REUSE: u8 = 0x20;
pub const XLOG_GIST_PAGE_SPLIT: u8 = 0x30;
pub const XLOG_GIST_PAGE_DELETE: u8 = 0x60;
pub const XLOG_GIST_ASSIGN_LSN: u8 = 0x70;

/// `SizeOfGistxlogDelete`: latestRemovedXid and ntodelete, unpadded.
pub const SIZE_OF_GISTXLOG_DELETE: usize = 6;
/// `SizeOfGistxlogDelete` of 16+: `offsetof(gistxlogDelete, offsets)`.
pub const SIZE_OF_GISTXLOG_DELETE_16: usize = 8;
/// `sizeof(IndexTupleData)`: the heap TID (6 bytes) and `t_info`.
const SIZE_OF_INDEX_TUPLE_DATA: usize = 8;
/// `INDEX_SIZE_MASK`: the low 13 bits of `t_info` are the tuple's size.
const INDEX_SIZE_MASK: u16 = 0x1FFF;

pub fn identify(info: u8) -> Option<&'static str> {
    Some(match info {
        XLOG_GIST_PAGE_UPDATE => "PAGE_UPDATE",
        XLOG_GIST_DELETE => "DELETE",
        XLOG_GIST_PAGE_REUSE => "PAGE_REUSE",
        XLOG_GIST_PAGE_SPLIT => "PAGE_SPLIT",
        XLOG_GIST_PAGE_DELETE => "PAGE_DELETE",
        XLOG_GIST_ASSIGN_LSN => "ASSIGN_LSN",
        _ => return None,
    })
}

/// Typed main data of a GiST record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GistRecord {
    /// `gistxlogPageUpdate`: how many offsets and tuples block 0's data holds.
    PageUpdate {
        ntodelete: u16,
        ntoinsert: u16,
    },
    /// `gistxlogDelete` and the offsets after it. `offsets` is empty when the main data
    /// ends after the header (`gistRedoDeleteRecord` then deletes nothing).
    Delete {
        latest_removed_xid: u32,
        ntodelete: u16,
        /// 16+ (`isCatalogRel`); false on 15.
        is_catalog_rel: bool,
        offsets: Vec<u16>,
    },
    /// `gistxlogPageReuse`: RelFileNode, block, a FullTransactionId at offset 16, and
    /// from 16 `isCatalogRel` at 24 (false on 15).
    PageReuse {
        node: RelFileLocator,
        block: u32,
        latest_removed_full_xid: u64,
        is_catalog_rel: bool,
    },
    /// `gistxlogPageSplit`: origrlink (0), orignsn (8, an XLogRecPtr), origleaf (16), npage
    /// (18), markfollowright (20).
    PageSplit {
        orig_rightlink: u32,
        orig_nsn: Lsn,
        orig_leaf: bool,
        npage: u16,
        mark_follow_right: bool,
    },
    /// `gistxlogPageDelete`: deleteXid (a FullTransactionId) and downlinkOffset.
    PageDelete {
        delete_xid: u64,
        downlink_offset: u16,
    },
    AssignLsn,
}

pub fn parse(rec: &DecodedRecord) -> Result<GistRecord, MainDataError> {
    let info = rec.rmgr_info();
    let name = identify(info).unwrap_or("UNKNOWN");
    let mut r = MainDataReader::new(rec.main_data(), rec.lsn, "Gist", name);
    Ok(match info {
        XLOG_GIST_PAGE_UPDATE => GistRecord::PageUpdate {
            ntodelete: r.u16()?,
            ntoinsert: r.u16()?,
        },
        XLOG_GIST_DELETE => {
            let latest_removed_xid = r.u32()?;
            let ntodelete = r.u16()?;
            let mut is_catalog_rel = false;
            let offsets = if rec.version.has_catalog_rel_flags() {
                // 16+: `bool isCatalogRel` at 6, then `offsets[]` at offsetof 8, always
                // read (gistRedoDeleteRecord no longer checks the length).
                is_catalog_rel = r.bool()?;
                r.seek(SIZE_OF_GISTXLOG_DELETE_16)?;
                r.u16_array(ntodelete as usize)?
            } else if r.remaining() > 0 {
                // 15: "if (XLogRecGetDataLen(record) > SizeOfGistxlogDelete)": the offsets
                // follow the unpadded header.
                r.u16_array(ntodelete as usize)?
            } else {
                Vec::new()
            };
            GistRecord::Delete {
                latest_removed_xid,
                ntodelete,
                is_catalog_rel,
                offsets,
            }
        }
        XLOG_GIST_PAGE_REUSE => {
            let node = r.rel()?;
            let block = r.u32()?;
            let latest_removed_full_xid = r.u64()?;
            GistRecord::PageReuse {
                node,
                block,
                latest_removed_full_xid,
                is_catalog_rel: rec.version.has_catalog_rel_flags() && r.bool()?,
            }
        }
        XLOG_GIST_PAGE_SPLIT => {
            let orig_rightlink = r.u32()?;
            r.seek(8)?;
            let orig_nsn = r.lsn()?;
            let orig_leaf = r.bool()?;
            r.seek(18)?;
            let npage = r.u16()?;
            GistRecord::PageSplit {
                orig_rightlink,
                orig_nsn,
                orig_leaf,
                npage,
                mark_follow_right: r.bool()?,
            }
        }
        XLOG_GIST_PAGE_DELETE => GistRecord::PageDelete {
            delete_xid: r.u64()?,
            downlink_offset: r.u16()?,
        },
        XLOG_GIST_ASSIGN_LSN => GistRecord::AssignLsn,
        other => return Err(r.error(format!("gist_redo: unknown op code {other}"))),
    })
}

/// Block 0's data of a PAGE_UPDATE, as `gistRedoPageUpdateRecord` reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PageUpdateData<'a> {
    /// One tuple replaces another (`ntodelete == 1 && ntoinsert == 1`): the offset, then
    /// the tuple, and nothing after it.
    Overwrite { offset: u16, tuple: &'a [u8] },
    /// Offsets to delete, then tuples to append after the page's last item.
    DeleteAndAdd {
        todelete: Vec<u16>,
        tuples: Vec<&'a [u8]>,
    },
}

/// Parses block 0's data of a PAGE_UPDATE with the counts of its main data.
pub fn parse_page_update<'a>(
    rec: &DecodedRecord,
    data: &'a [u8],
    ntodelete: u16,
    ntoinsert: u16,
) -> Result<PageUpdateData<'a>, MainDataError> {
    let mut r = MainDataReader::new(data, rec.lsn, "Gist", "PAGE_UPDATE");
    if ntodelete == 1 && ntoinsert == 1 {
        let offset = r.u16()?;
        let tuple = index_tuple(&mut r)?;
        if r.remaining() != 0 {
            return Err(r.error(format!(
                "{} bytes left after the replacing tuple",
                r.remaining()
            )));
        }
        return Ok(PageUpdateData::Overwrite { offset, tuple });
    }
    let todelete = r.u16_array(ntodelete as usize)?;
    // The redo adds tuples while data is left; PostgreSQL asserts the count matches.
    let mut tuples = Vec::with_capacity(ntoinsert as usize);
    while r.remaining() > 0 {
        tuples.push(index_tuple(&mut r)?);
    }
    if tuples.len() != ntoinsert as usize {
        return Err(r.error(format!(
            "{} tuples logged, ntoinsert is {ntoinsert}",
            tuples.len()
        )));
    }
    Ok(PageUpdateData::DeleteAndAdd { todelete, tuples })
}

/// Parses one page's data of a PAGE_SPLIT (`decodePageSplitRecord`): an `int` count, then
/// that many tuples filling the data exactly.
pub fn parse_split_page<'a>(
    rec: &DecodedRecord,
    data: &'a [u8],
) -> Result<Vec<&'a [u8]>, MainDataError> {
    let mut r = MainDataReader::new(data, rec.lsn, "Gist", "PAGE_SPLIT");
    let num = r.i32()?;
    let num = usize::try_from(num).map_err(|_| r.error(format!("tuple count {num}")))?;
    let mut tuples = Vec::with_capacity(num.min(data.len() / SIZE_OF_INDEX_TUPLE_DATA));
    for _ in 0..num {
        tuples.push(index_tuple(&mut r)?);
    }
    if r.remaining() != 0 {
        return Err(r.error(format!(
            "{} bytes left after {num} split page tuples",
            r.remaining()
        )));
    }
    Ok(tuples)
}

/// The `IndexTupleSize` bytes of the index tuple at the reader (`t_info & INDEX_SIZE_MASK`
/// at offset 6).
fn index_tuple<'a>(r: &mut MainDataReader<'a>) -> Result<&'a [u8], MainDataError> {
    let start = r.position();
    r.seek(start + 6)?;
    let size = (r.u16()? & INDEX_SIZE_MASK) as usize;
    if size < SIZE_OF_INDEX_TUPLE_DATA {
        return Err(r.error(format!("index tuple of {size} bytes at offset {start}")));
    }
    r.seek(start)?;
    r.bytes(size)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identify_matches_pg_waldump() {
        assert_eq!(identify(0x00), Some("PAGE_UPDATE"));
        assert_eq!(identify(0x30), Some("PAGE_SPLIT"));
        assert_eq!(identify(0x70), Some("ASSIGN_LSN"));
        // XLOG_GIST_INSERT_COMPLETE (0x40) and XLOG_GIST_CREATE_INDEX (0x50) are gone.
        assert_eq!(identify(0x40), None);
        assert_eq!(identify(0x50), None);
    }
}
