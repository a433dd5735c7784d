//! Resource managers (`access/rmgrlist.h`): ids, names, record type names as pg_waldump
//! prints them (`*_identify` in `access/rmgrdesc/*.c`), and typed views of the main data
//! of the records the redo engine replays.

pub mod brin;
pub mod btree;
pub mod dbase;
pub mod generic;
pub mod gin;
pub mod gist;
pub mod hash;
pub mod heap;
pub mod seq;
pub mod smgr;
pub mod spgist;
pub mod standby;
pub mod xact;
pub mod xlog;

mod util;
pub use util::MainDataReader;

use std::fmt;

pub const RM_XLOG_ID: u8 = 0;
pub const RM_XACT_ID: u8 = 1;
pub const RM_SMGR_ID: u8 = 2;
pub const RM_CLOG_ID: u8 = 3;
pub const RM_DBASE_ID: u8 = 4;
pub const RM_TBLSPC_ID: u8 = 5;
pub const RM_MULTIXACT_ID: u8 = 6;
pub const RM_RELMAP_ID: u8 = 7;
pub const RM_STANDBY_ID: u8 = 8;
pub const RM_HEAP2_ID: u8 = 9;
pub const RM_HEAP_ID: u8 = 10;
pub const RM_BTREE_ID: u8 = 11;
pub const RM_HASH_ID: u8 = 12;
pub const RM_GIN_ID: u8 = 13;
pub const RM_GIST_ID: u8 = 14;
pub const RM_SEQ_ID: u8 = 15;
pub const RM_SPGIST_ID: u8 = 16;
pub const RM_BRIN_ID: u8 = 17;
pub const RM_COMMIT_TS_ID: u8 = 18;
pub const RM_REPLORIGIN_ID: u8 = 19;
pub const RM_GENERIC_ID: u8 = 20;
pub const RM_LOGICALMSG_ID: u8 = 21;
/// `RM_MAX_BUILTIN_ID`.
pub const RM_MAX_BUILTIN_ID: u8 = 21;
/// `RM_MIN_CUSTOM_ID`: ids 128..=255 belong to extensions (PostgreSQL 15 custom rmgrs).
pub const RM_MIN_CUSTOM_ID: u8 = 128;

/// `XLOG_SWITCH` (`catalog/pg_control.h`), needed by the reader itself.
pub const XLOG_SWITCH: u8 = 0x40;

/// Names in `rmgrlist.h` order.
const RMGR_NAMES: [&str; 22] = [
    "XLOG",
    "Transaction",
    "Storage",
    "CLOG",
    "Database",
    "Tablespace",
    "MultiXact",
    "RelMap",
    "Standby",
    "Heap2",
    "Heap",
    "Btree",
    "Hash",
    "Gin",
    "Gist",
    "Sequence",
    "SPGist",
    "BRIN",
    "CommitTs",
    "ReplicationOrigin",
    "Generic",
    "LogicalMessage",
];

/// A resource manager id (`xl_rmid`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RmgrId(pub u8);

impl RmgrId {
    /// `RmgrIdIsValid`: built-in ids and the custom range.
    pub fn is_valid(self) -> bool {
        self.0 <= RM_MAX_BUILTIN_ID || self.0 >= RM_MIN_CUSTOM_ID
    }

    pub fn is_builtin(self) -> bool {
        self.0 <= RM_MAX_BUILTIN_ID
    }

    /// Name as pg_waldump prints it; custom rmgrs (unknown here) are `custom###`.
    pub fn name(self) -> std::borrow::Cow<'static, str> {
        match RMGR_NAMES.get(self.0 as usize) {
            Some(n) => std::borrow::Cow::Borrowed(n),
            None => std::borrow::Cow::Owned(format!("custom{:03}", self.0)),
        }
    }

    /// All built-in rmgrs, in id order (for statistics).
    pub fn builtin() -> impl Iterator<Item = RmgrId> {
        (0..=RM_MAX_BUILTIN_ID).map(RmgrId)
    }
}

impl fmt::Display for RmgrId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name())
    }
}

/// Record type name (`rm_identify`) for `xl_info` of rmgr `rmid`, or `None` when the rmgr
/// does not know it (pg_waldump then prints `UNKNOWN (%x)`). PostgreSQL 15's names; see
/// [`identify_of`] for another version's.
pub fn identify(rmid: u8, info: u8) -> Option<&'static str> {
    identify_of(crate::wal::PgVersion::V15, rmid, info)
}

/// [`identify`] as `version` names record types (17 renamed Heap2's prune records).
pub fn identify_of(version: crate::wal::PgVersion, rmid: u8, info: u8) -> Option<&'static str> {
    let i = info & 0xF0;
    Some(match rmid {
        RM_XLOG_ID => xlog::identify(i)?,
        RM_XACT_ID => xact::identify(info)?,
        RM_SMGR_ID => smgr::identify(i)?,
        RM_CLOG_ID => match i {
            0x00 => "ZEROPAGE",
            0x10 => "TRUNCATE",
            _ => return None,
        },
        RM_DBASE_ID => dbase::identify(i)?,
        RM_TBLSPC_ID => match i {
            0x00 => "CREATE",
            0x10 => "DROP",
            _ => return None,
        },
        RM_MULTIXACT_ID => match i {
            0x00 => "ZERO_OFF_PAGE",
            0x10 => "ZERO_MEM_PAGE",
            0x20 => "CREATE_ID",
            0x30 => "TRUNCATE_ID",
            _ => return None,
        },
        RM_RELMAP_ID => match i {
            0x00 => "UPDATE",
            _ => return None,
        },
        RM_STANDBY_ID => standby::identify(i)?,
        RM_HEAP2_ID => heap::heap2_identify_of(version, i)?,
        RM_HEAP_ID => heap::heap_identify(i)?,
        RM_BTREE_ID => btree::identify(i)?,
        RM_HASH_ID => hash::identify(i)?,
        RM_GIN_ID => gin::identify(i)?,
        RM_GIST_ID => gist::identify(i)?,
        RM_SEQ_ID => seq::identify(i)?,
        RM_SPGIST_ID => spgist::identify(i)?,
        RM_BRIN_ID => brin::identify(i)?,
        RM_COMMIT_TS_ID => match i {
            0x00 => "ZEROPAGE",
            0x10 => "TRUNCATE",
            _ => return None,
        },
        RM_REPLORIGIN_ID => match i {
            0x00 => "SET",
            0x10 => "DROP",
            _ => return None,
        },
        RM_GENERIC_ID => generic::identify(info)?,
        RM_LOGICALMSG_ID => match i {
            0x00 => "MESSAGE",
            _ => return None,
        },
        _ => return None,
    })
}

/// Record type name for display: `identify` or pg_waldump's `UNKNOWN (%x)`.
pub fn record_type_name(rmid: u8, info: u8) -> std::borrow::Cow<'static, str> {
    record_type_name_of(crate::wal::PgVersion::V15, rmid, info)
}

/// [`record_type_name`] as `version` names record types.
pub fn record_type_name_of(
    version: crate::wal::PgVersion,
    rmid: u8,
    info: u8,
) -> std::borrow::Cow<'static, str> {
    match identify_of(version, rmid, info) {
        Some(s) => std::borrow::Cow::Borrowed(s),
        None => std::borrow::Cow::Owned(format!("UNKNOWN ({:x})", info & 0xF0)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_validity() {
        assert_eq!(RmgrId(10).name(), "Heap");
        assert_eq!(RmgrId(21).name(), "LogicalMessage");
        assert!(RmgrId(21).is_valid());
        assert!(!RmgrId(22).is_valid());
        assert!(!RmgrId(127).is_valid());
        assert!(RmgrId(128).is_valid());
        assert_eq!(RmgrId(200).name(), "custom200");
        assert_eq!(identify(RM_HEAP_ID, 0x80), Some("INSERT+INIT"));
        assert_eq!(identify(RM_XACT_ID, 0x80), Some("COMMIT"));
        assert_eq!(record_type_name(RM_SEQ_ID, 0x10), "UNKNOWN (10)");
        // generic_identify ignores the info bits.
        assert_eq!(identify(RM_GENERIC_ID, 0x00), Some("Generic"));
        assert_eq!(identify(RM_GENERIC_ID, 0x30), Some("Generic"));
    }
}
