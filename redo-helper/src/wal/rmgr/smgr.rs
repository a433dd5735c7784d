//! Storage manager records (`catalog/storage_xlog.h`): relation file creation and
//! truncation. Relation drops are in transaction commit/abort records instead.

use super::MainDataReader;
use crate::wal::block::{ForkNumber, RelFileLocator};
use crate::wal::error::MainDataError;
use crate::wal::record::DecodedRecord;

pub const XLOG_SMGR_CREATE: u8 = 0x10;
pub const XLOG_SMGR_TRUNCATE: u8 = 0x20;
pub const SMGR_TRUNCATE_HEAP: u32 = 0x0001;
pub const SMGR_TRUNCATE_VM: u32 = 0x0002;
pub const SMGR_TRUNCATE_FSM: u32 = 0x0004;
pub const SMGR_TRUNCATE_ALL: u32 = 0x0007;

pub fn identify(info: u8) -> Option<&'static str> {
    match info & 0xF0 {
        XLOG_SMGR_CREATE => Some("CREATE"),
        XLOG_SMGR_TRUNCATE => Some("TRUNCATE"),
        _ => None,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SmgrRecord {
    /// `xl_smgr_create`.
    Create {
        rnode: RelFileLocator,
        fork: ForkNumber,
    },
    /// `xl_smgr_truncate`: truncate to `blkno` blocks the forks selected by `flags`.
    Truncate {
        blkno: u32,
        rnode: RelFileLocator,
        flags: u32,
    },
}

pub fn parse(rec: &DecodedRecord) -> Result<SmgrRecord, MainDataError> {
    let info = rec.rmgr_info();
    let mut r = MainDataReader::new(
        rec.main_data(),
        rec.lsn,
        "Storage",
        identify(info).unwrap_or("UNKNOWN"),
    );
    match info {
        XLOG_SMGR_CREATE => {
            let rnode = r.rel()?;
            let fork = r.i32()?;
            if !(0..=ForkNumber::MAX as i32).contains(&fork) {
                return Err(r.error(format!("invalid fork number {fork}")));
            }
            Ok(SmgrRecord::Create {
                rnode,
                fork: ForkNumber(fork as u8),
            })
        }
        XLOG_SMGR_TRUNCATE => Ok(SmgrRecord::Truncate {
            blkno: r.u32()?,
            rnode: r.rel()?,
            flags: r.u32()?,
        }),
        other => Err(r.error(format!("unknown storage record type {other:#x}"))),
    }
}
