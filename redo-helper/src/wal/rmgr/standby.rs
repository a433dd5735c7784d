//! Standby records (`storage/standbydefs.h`): AccessExclusive locks, running transactions
//! snapshots and invalidations (hot standby bookkeeping; no page changes).

use super::MainDataReader;
use crate::wal::error::MainDataError;
use crate::wal::record::DecodedRecord;

pub const XLOG_STANDBY_LOCK: u8 = 0x00;
pub const XLOG_RUNNING_XACTS: u8 = 0x10;
pub const XLOG_INVALIDATIONS: u8 = 0x20;

pub fn identify(info: u8) -> Option<&'static str> {
    match info & 0xF0 {
        XLOG_STANDBY_LOCK => Some("LOCK"),
        XLOG_RUNNING_XACTS => Some("RUNNING_XACTS"),
        XLOG_INVALIDATIONS => Some("INVALIDATIONS"),
        _ => None,
    }
}

/// `xl_standby_lock`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StandbyLock {
    pub xid: u32,
    pub db_oid: u32,
    pub rel_oid: u32,
}

/// One `SharedInvalidationMessage` (16 bytes): the id byte says which kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InvalidationMessage {
    pub id: i8,
    pub raw: [u8; 16],
}

impl InvalidationMessage {
    pub(crate) fn parse_array(
        r: &mut MainDataReader<'_>,
        n: usize,
    ) -> Result<Vec<InvalidationMessage>, MainDataError> {
        let b = r.bytes(
            n.checked_mul(16)
                .ok_or_else(|| r.error("array length overflow"))?,
        )?;
        Ok(b.chunks_exact(16)
            .map(|c| {
                let mut raw = [0u8; 16];
                raw.copy_from_slice(c);
                InvalidationMessage {
                    id: raw[0] as i8,
                    raw,
                }
            })
            .collect())
    }

    fn u32_at(&self, off: usize) -> u32 {
        u32::from_le_bytes([
            self.raw[off],
            self.raw[off + 1],
            self.raw[off + 2],
            self.raw[off + 3],
        ])
    }
    /// Database OID field (`dbId`) of catcache/relcache/snapshot messages.
    pub fn db_id(&self) -> u32 {
        self.u32_at(4)
    }
    /// Second OID field (`relId` / `catId` / ...).
    pub fn oid(&self) -> u32 {
        self.u32_at(8)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StandbyRecord {
    /// `xl_standby_locks`.
    Lock(Vec<StandbyLock>),
    /// `xl_running_xacts`.
    RunningXacts {
        xcnt: i32,
        subxcnt: i32,
        subxid_overflow: bool,
        next_xid: u32,
        oldest_running_xid: u32,
        latest_completed_xid: u32,
        xids: Vec<u32>,
    },
    /// `xl_invalidations`.
    Invalidations {
        db_id: u32,
        ts_id: u32,
        relcache_init_file_inval: bool,
        msgs: Vec<InvalidationMessage>,
    },
}

fn count(r: &MainDataReader<'_>, n: i32, what: &str) -> Result<usize, MainDataError> {
    usize::try_from(n).map_err(|_| r.error(format!("negative {what} {n}")))
}

pub fn parse(rec: &DecodedRecord) -> Result<StandbyRecord, MainDataError> {
    let info = rec.rmgr_info();
    let mut r = MainDataReader::new(
        rec.main_data(),
        rec.lsn,
        "Standby",
        identify(info).unwrap_or("UNKNOWN"),
    );
    match info {
        XLOG_STANDBY_LOCK => {
            let n = r.i32()?;
            let n = count(&r, n, "nlocks")?;
            let mut locks = Vec::with_capacity(n.min(r.remaining() / 12));
            for _ in 0..n {
                locks.push(StandbyLock {
                    xid: r.u32()?,
                    db_oid: r.u32()?,
                    rel_oid: r.u32()?,
                });
            }
            Ok(StandbyRecord::Lock(locks))
        }
        XLOG_RUNNING_XACTS => {
            let xcnt = r.i32()?;
            let subxcnt = r.i32()?;
            let subxid_overflow = r.bool()?;
            r.seek(12)?;
            let next_xid = r.u32()?;
            let oldest_running_xid = r.u32()?;
            let latest_completed_xid = r.u32()?;
            let n = count(&r, xcnt, "xcnt")? + count(&r, subxcnt, "subxcnt")?;
            Ok(StandbyRecord::RunningXacts {
                xcnt,
                subxcnt,
                subxid_overflow,
                next_xid,
                oldest_running_xid,
                latest_completed_xid,
                xids: r.u32_array(n)?,
            })
        }
        XLOG_INVALIDATIONS => {
            let db_id = r.u32()?;
            let ts_id = r.u32()?;
            let relcache_init_file_inval = r.bool()?;
            r.seek(12)?;
            let n = r.i32()?;
            let n = count(&r, n, "nmsgs")?;
            Ok(StandbyRecord::Invalidations {
                db_id,
                ts_id,
                relcache_init_file_inval,
                msgs: InvalidationMessage::parse_array(&mut r, n)?,
            })
        }
        other => Err(r.error(format!("unknown standby record type {other:#x}"))),
    }
}
