//! XLOG records (`catalog/pg_control.h`, `access/xlog_internal.h`): checkpoints, FPI
//! records, the full_page_writes switch and friends.

use super::MainDataReader;
use crate::wal::error::MainDataError;
use crate::wal::page::Lsn;
use crate::wal::record::DecodedRecord;
use crate::wal::version::PgVersion;

pub const XLOG_CHECKPOINT_SHUTDOWN: u8 = 0x00;
pub const XLOG_CHECKPOINT_ONLINE: u8 = 0x10;
pub const XLOG_NOOP: u8 = 0x20;
pub const XLOG_NEXTOID: u8 = 0x30;
pub const XLOG_SWITCH: u8 = 0x40;
pub const XLOG_BACKUP_END: u8 = 0x50;
pub const XLOG_PARAMETER_CHANGE: u8 = 0x60;
pub const XLOG_RESTORE_POINT: u8 = 0x70;
pub const XLOG_FPW_CHANGE: u8 = 0x80;
pub const XLOG_END_OF_RECOVERY: u8 = 0x90;
pub const XLOG_FPI_FOR_HINT: u8 = 0xA0;
pub const XLOG_FPI: u8 = 0xB0;
pub const XLOG_OVERWRITE_CONTRECORD: u8 = 0xD0;
/// `XLOG_CHECKPOINT_REDO` (17+): marks the REDO point of an online checkpoint; its main
/// data is the `int wal_level`.
pub const XLOG_CHECKPOINT_REDO: u8 = 0xE0;

/// `xlog_identify`.
pub fn identify(info: u8) -> Option<&'static str> {
    Some(match info & 0xF0 {
        XLOG_CHECKPOINT_SHUTDOWN => "CHECKPOINT_SHUTDOWN",
        XLOG_CHECKPOINT_ONLINE => "CHECKPOINT_ONLINE",
        XLOG_NOOP => "NOOP",
        XLOG_NEXTOID => "NEXTOID",
        XLOG_SWITCH => "SWITCH",
        XLOG_BACKUP_END => "BACKUP_END",
        XLOG_PARAMETER_CHANGE => "PARAMETER_CHANGE",
        XLOG_RESTORE_POINT => "RESTORE_POINT",
        XLOG_FPW_CHANGE => "FPW_CHANGE",
        XLOG_END_OF_RECOVERY => "END_OF_RECOVERY",
        XLOG_OVERWRITE_CONTRECORD => "OVERWRITE_CONTRECORD",
        XLOG_FPI => "FPI",
        XLOG_FPI_FOR_HINT => "FPI_FOR_HINT",
        XLOG_CHECKPOINT_REDO => "CHECKPOINT_REDO",
        _ => return None,
    })
}

/// `CheckPoint` (88 bytes in 15..18: 17's `wal_level` took padding before `nextXid`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CheckPoint {
    pub redo: Lsn,
    pub this_timeline: u32,
    pub prev_timeline: u32,
    pub full_page_writes: bool,
    /// `wal_level` (17+).
    pub wal_level: Option<i32>,
    pub next_xid: u64,
    pub next_oid: u32,
    pub next_multi: u32,
    pub next_multi_offset: u32,
    pub oldest_xid: u32,
    pub oldest_xid_db: u32,
    pub oldest_multi: u32,
    pub oldest_multi_db: u32,
    pub time: i64,
    pub oldest_commit_ts_xid: u32,
    pub newest_commit_ts_xid: u32,
    pub oldest_active_xid: u32,
}

/// `xl_parameter_change`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParameterChange {
    pub max_connections: i32,
    pub max_worker_processes: i32,
    pub max_wal_senders: i32,
    pub max_prepared_xacts: i32,
    pub max_locks_per_xact: i32,
    pub wal_level: i32,
    pub wal_log_hints: bool,
    pub track_commit_timestamp: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum XlogRecord {
    Checkpoint {
        shutdown: bool,
        checkpoint: CheckPoint,
    },
    Noop,
    NextOid(u32),
    Switch,
    /// `XLOG_BACKUP_END`: start LSN of the finished backup.
    BackupEnd(Lsn),
    ParameterChange(ParameterChange),
    /// `xl_restore_point`.
    RestorePoint {
        time: i64,
        name: String,
    },
    /// `XLOG_FPW_CHANGE`: the new full_page_writes value.
    FpwChange(bool),
    /// `xl_end_of_recovery`.
    EndOfRecovery {
        end_time: i64,
        this_timeline: u32,
        prev_timeline: u32,
        /// `wal_level` (17+).
        wal_level: Option<i32>,
    },
    /// `XLOG_CHECKPOINT_REDO` (17+).
    CheckpointRedo {
        wal_level: i32,
    },
    /// `XLOG_FPI` / `XLOG_FPI_FOR_HINT`: the images are the block references.
    Fpi {
        for_hint: bool,
    },
    /// `xl_overwrite_contrecord`.
    OverwriteContrecord {
        overwritten_lsn: Lsn,
        overwrite_time: i64,
    },
}

pub fn parse_checkpoint(
    r: &mut MainDataReader<'_>,
    version: PgVersion,
) -> Result<CheckPoint, MainDataError> {
    let redo = r.lsn()?;
    let this_timeline = r.u32()?;
    let prev_timeline = r.u32()?;
    let full_page_writes = r.bool()?;
    let wal_level = if version >= PgVersion::V17 {
        r.seek(20)?;
        Some(r.i32()?)
    } else {
        None
    };
    r.seek(24)?;
    let next_xid = r.u64()?;
    let next_oid = r.u32()?;
    let next_multi = r.u32()?;
    let next_multi_offset = r.u32()?;
    let oldest_xid = r.u32()?;
    let oldest_xid_db = r.u32()?;
    let oldest_multi = r.u32()?;
    let oldest_multi_db = r.u32()?;
    r.seek(64)?;
    Ok(CheckPoint {
        redo,
        this_timeline,
        prev_timeline,
        full_page_writes,
        wal_level,
        next_xid,
        next_oid,
        next_multi,
        next_multi_offset,
        oldest_xid,
        oldest_xid_db,
        oldest_multi,
        oldest_multi_db,
        time: r.i64()?,
        oldest_commit_ts_xid: r.u32()?,
        newest_commit_ts_xid: r.u32()?,
        oldest_active_xid: r.u32()?,
    })
}

pub fn parse(rec: &DecodedRecord) -> Result<XlogRecord, MainDataError> {
    let info = rec.rmgr_info();
    let mut r = MainDataReader::new(
        rec.main_data(),
        rec.lsn,
        "XLOG",
        identify(info).unwrap_or("UNKNOWN"),
    );
    Ok(match info {
        XLOG_CHECKPOINT_SHUTDOWN | XLOG_CHECKPOINT_ONLINE => XlogRecord::Checkpoint {
            shutdown: info == XLOG_CHECKPOINT_SHUTDOWN,
            checkpoint: parse_checkpoint(&mut r, rec.version)?,
        },
        XLOG_NOOP => XlogRecord::Noop,
        XLOG_NEXTOID => XlogRecord::NextOid(r.u32()?),
        XLOG_SWITCH => XlogRecord::Switch,
        XLOG_BACKUP_END => XlogRecord::BackupEnd(r.lsn()?),
        XLOG_PARAMETER_CHANGE => XlogRecord::ParameterChange(ParameterChange {
            max_connections: r.i32()?,
            max_worker_processes: r.i32()?,
            max_wal_senders: r.i32()?,
            max_prepared_xacts: r.i32()?,
            max_locks_per_xact: r.i32()?,
            wal_level: r.i32()?,
            wal_log_hints: r.bool()?,
            track_commit_timestamp: r.bool()?,
        }),
        XLOG_RESTORE_POINT => {
            let time = r.i64()?;
            let name = r.cstring()?;
            XlogRecord::RestorePoint { time, name }
        }
        XLOG_FPW_CHANGE => XlogRecord::FpwChange(r.bool()?),
        XLOG_END_OF_RECOVERY => XlogRecord::EndOfRecovery {
            end_time: r.i64()?,
            this_timeline: r.u32()?,
            prev_timeline: r.u32()?,
            wal_level: if rec.version >= PgVersion::V17 {
                Some(r.i32()?)
            } else {
                None
            },
        },
        XLOG_CHECKPOINT_REDO if rec.version >= PgVersion::V17 => XlogRecord::CheckpointRedo {
            wal_level: r.i32()?,
        },
        XLOG_FPI | XLOG_FPI_FOR_HINT => XlogRecord::Fpi {
            for_hint: info == XLOG_FPI_FOR_HINT,
        },
        XLOG_OVERWRITE_CONTRECORD => XlogRecord::OverwriteContrecord {
            overwritten_lsn: r.lsn()?,
            overwrite_time: r.i64()?,
        },
        other => return Err(r.error(format!("unknown XLOG record type {other:#x}"))),
    })
}
