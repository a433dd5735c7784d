//! Database records (`commands/dbcommands_xlog.h`).

use super::MainDataReader;
use crate::wal::error::MainDataError;
use crate::wal::record::DecodedRecord;

pub const XLOG_DBASE_CREATE_FILE_COPY: u8 = 0x00;
pub const XLOG_DBASE_CREATE_WAL_LOG: u8 = 0x10;
pub const XLOG_DBASE_DROP: u8 = 0x20;

pub fn identify(info: u8) -> Option<&'static str> {
    match info & 0xF0 {
        XLOG_DBASE_CREATE_FILE_COPY => Some("CREATE_FILE_COPY"),
        XLOG_DBASE_CREATE_WAL_LOG => Some("CREATE_WAL_LOG"),
        XLOG_DBASE_DROP => Some("DROP"),
        _ => None,
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DbaseRecord {
    /// `xl_dbase_create_file_copy_rec`: copy a whole database directory.
    CreateFileCopy {
        db_id: u32,
        tablespace_id: u32,
        src_db_id: u32,
        src_tablespace_id: u32,
    },
    /// `xl_dbase_create_wal_log_rec`: create the directory; contents follow as FPIs.
    CreateWalLog { db_id: u32, tablespace_id: u32 },
    /// `xl_dbase_drop_rec`.
    Drop {
        db_id: u32,
        tablespace_ids: Vec<u32>,
    },
}

pub fn parse(rec: &DecodedRecord) -> Result<DbaseRecord, MainDataError> {
    let info = rec.rmgr_info();
    let mut r = MainDataReader::new(
        rec.main_data(),
        rec.lsn,
        "Database",
        identify(info).unwrap_or("UNKNOWN"),
    );
    match info {
        XLOG_DBASE_CREATE_FILE_COPY => Ok(DbaseRecord::CreateFileCopy {
            db_id: r.u32()?,
            tablespace_id: r.u32()?,
            src_db_id: r.u32()?,
            src_tablespace_id: r.u32()?,
        }),
        XLOG_DBASE_CREATE_WAL_LOG => Ok(DbaseRecord::CreateWalLog {
            db_id: r.u32()?,
            tablespace_id: r.u32()?,
        }),
        XLOG_DBASE_DROP => {
            let db_id = r.u32()?;
            let n = r.i32()?;
            let n =
                usize::try_from(n).map_err(|_| r.error(format!("negative ntablespaces {n}")))?;
            Ok(DbaseRecord::Drop {
                db_id,
                tablespace_ids: r.u32_array(n)?,
            })
        }
        other => Err(r.error(format!("unknown database record type {other:#x}"))),
    }
}
