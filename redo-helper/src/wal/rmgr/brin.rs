//! BRIN records (`access/brin_xlog.h`, PostgreSQL 15): all six record types.
//!
//! The info byte keeps the operation in `XLOG_BRIN_OPMASK` (0x70); `XLOG_BRIN_INIT_PAGE`
//! (0x80) on INSERT and UPDATE says the page receiving the tuple was just added to the
//! index and is rebuilt from nothing (`brin_doinsert`/`brin_doupdate` in
//! `access/brin/brin_pageops.c` register it with `REGBUF_WILL_INIT` then).
//!
//! Block references (the `XLogRegisterBuffer` calls of `brin_pageops.c`, `brin_revmap.c`
//! and `brin.c`):
//! - CREATE_INDEX: 0 = metapage.
//! - INSERT: 0 = regular page getting the tuple (the tuple is its block data), 1 = revmap
//!   page.
//! - UPDATE: 0 and 1 as INSERT, 2 = the old regular page losing the old tuple.
//! - SAMEPAGE_UPDATE: 0 = the regular page (the new tuple is its block data).
//! - REVMAP_EXTEND: 0 = metapage, 1 = the new revmap page (`REGBUF_WILL_INIT`).
//! - DESUMMARIZE: 0 = revmap page, 1 = regular page.

use super::MainDataReader;
use crate::wal::error::MainDataError;
use crate::wal::record::DecodedRecord;

pub const XLOG_BRIN_CREATE_INDEX: u8 = 0x00;
pub const XLOG_BRIN_INSERT: u8 = 0x10;
pub const XLOG_BRIN_UPDATE: u8 = 0x20;
pub const XLOG_BRIN_SAMEPAGE_UPDATE: u8 = 0x30;
pub const XLOG_BRIN_REVMAP_EXTEND: u8 = 0x40;
pub const XLOG_BRIN_DESUMMARIZE: u8 = 0x50;
pub const XLOG_BRIN_OPMASK: u8 = 0x70;
pub const XLOG_BRIN_INIT_PAGE: u8 = 0x80;

/// `xl_brin_insert` (`SizeOfBrinInsert` = 10 bytes), also the tail of `xl_brin_update`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BrinInsert {
    /// First heap block of the summarised range.
    pub heap_blk: u32,
    /// The index's pages per range, needed to find the revmap slot.
    pub pages_per_range: u32,
    /// Where the tuple goes on the regular page.
    pub offnum: u16,
}

/// Typed main data of a BRIN record. The tuples are block 0's data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BrinRecord {
    /// `xl_brin_createidx`.
    CreateIndex { pages_per_range: u32, version: u16 },
    /// `xl_brin_insert`; `init_page` is `XLOG_BRIN_INIT_PAGE`.
    Insert { insert: BrinInsert, init_page: bool },
    /// `xl_brin_update`: the old tuple's offset, then an `xl_brin_insert`.
    Update {
        old_offnum: u16,
        insert: BrinInsert,
        init_page: bool,
    },
    /// `xl_brin_samepage_update`.
    SamepageUpdate { offnum: u16 },
    /// `xl_brin_revmap_extend` (the target is also block 1's block number).
    RevmapExtend { target_blk: u32 },
    /// `xl_brin_desummarize`.
    Desummarize {
        pages_per_range: u32,
        heap_blk: u32,
        reg_offset: u16,
    },
}

/// `brin_identify`, with the `+INIT` suffix for `XLOG_BRIN_INIT_PAGE`.
pub fn identify(info: u8) -> Option<&'static str> {
    let init = info & XLOG_BRIN_INIT_PAGE != 0;
    Some(match (info & XLOG_BRIN_OPMASK, init) {
        (XLOG_BRIN_CREATE_INDEX, false) => "CREATE_INDEX",
        (XLOG_BRIN_INSERT, false) => "INSERT",
        (XLOG_BRIN_INSERT, true) => "INSERT+INIT",
        (XLOG_BRIN_UPDATE, false) => "UPDATE",
        (XLOG_BRIN_UPDATE, true) => "UPDATE+INIT",
        (XLOG_BRIN_SAMEPAGE_UPDATE, false) => "SAMEPAGE_UPDATE",
        (XLOG_BRIN_REVMAP_EXTEND, false) => "REVMAP_EXTEND",
        (XLOG_BRIN_DESUMMARIZE, false) => "DESUMMARIZE",
        _ => return None,
    })
}

fn insert(r: &mut MainDataReader<'_>) -> Result<BrinInsert, MainDataError> {
    Ok(BrinInsert {
        heap_blk: r.u32()?,
        pages_per_range: r.u32()?,
        offnum: r.u16()?,
    })
}

pub fn parse(rec: &DecodedRecord) -> Result<BrinRecord, MainDataError> {
    let info = rec.rmgr_info();
    let name = identify(info).unwrap_or("UNKNOWN");
    let mut r = MainDataReader::new(rec.main_data(), rec.lsn, "BRIN", name);
    let init_page = info & XLOG_BRIN_INIT_PAGE != 0;
    // brin_redo dispatches on the operation bits only; INIT_PAGE is meaningful for INSERT
    // and UPDATE, and PostgreSQL never sets it on the others.
    if init_page && !matches!(info & XLOG_BRIN_OPMASK, XLOG_BRIN_INSERT | XLOG_BRIN_UPDATE) {
        return Err(r.error(format!("XLOG_BRIN_INIT_PAGE on record type {info:#x}")));
    }
    Ok(match info & XLOG_BRIN_OPMASK {
        XLOG_BRIN_CREATE_INDEX => BrinRecord::CreateIndex {
            pages_per_range: r.u32()?,
            version: r.u16()?,
        },
        XLOG_BRIN_INSERT => BrinRecord::Insert {
            insert: insert(&mut r)?,
            init_page,
        },
        XLOG_BRIN_UPDATE => {
            let old_offnum = r.u16()?;
            // xl_brin_insert holds uint32 members: it starts 4-byte aligned, at offset 4.
            r.seek(4)?;
            BrinRecord::Update {
                old_offnum,
                insert: insert(&mut r)?,
                init_page,
            }
        }
        XLOG_BRIN_SAMEPAGE_UPDATE => BrinRecord::SamepageUpdate { offnum: r.u16()? },
        XLOG_BRIN_REVMAP_EXTEND => BrinRecord::RevmapExtend {
            target_blk: r.u32()?,
        },
        XLOG_BRIN_DESUMMARIZE => BrinRecord::Desummarize {
            pages_per_range: r.u32()?,
            heap_blk: r.u32()?,
            reg_offset: r.u16()?,
        },
        other => return Err(r.error(format!("unknown BRIN record type {other:#x}"))),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identify_matches_pg_waldump() {
        assert_eq!(identify(0x00), Some("CREATE_INDEX"));
        assert_eq!(identify(0x90), Some("INSERT+INIT"));
        assert_eq!(identify(0xA0), Some("UPDATE+INIT"));
        assert_eq!(identify(0x50), Some("DESUMMARIZE"));
        assert_eq!(identify(0x60), None);
        assert_eq!(identify(0xC0), None);
    }
}
