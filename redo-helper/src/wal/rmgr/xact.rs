//! Transaction records (`access/xact.h`, parsed like `ParseCommitRecord` /
//! `ParseAbortRecord` in `access/rmgrdesc/xactdesc.c`). Commit and abort records carry the
//! list of relation files to drop, which the store must honour.

use super::MainDataReader;
use super::standby::InvalidationMessage;
use crate::wal::block::RelFileLocator;
use crate::wal::error::MainDataError;
use crate::wal::page::Lsn;
use crate::wal::record::DecodedRecord;

pub const XLOG_XACT_COMMIT: u8 = 0x00;
pub const XLOG_XACT_PREPARE: u8 = 0x10;
pub const XLOG_XACT_ABORT: u8 = 0x20;
pub const XLOG_XACT_COMMIT_PREPARED: u8 = 0x30;
pub const XLOG_XACT_ABORT_PREPARED: u8 = 0x40;
pub const XLOG_XACT_ASSIGNMENT: u8 = 0x50;
pub const XLOG_XACT_INVALIDATIONS: u8 = 0x60;
pub const XLOG_XACT_OPMASK: u8 = 0x70;
/// `XLOG_XACT_HAS_INFO`: an `xl_xact_xinfo` follows the fixed part.
pub const XLOG_XACT_HAS_INFO: u8 = 0x80;

pub const XACT_XINFO_HAS_DBINFO: u32 = 1 << 0;
pub const XACT_XINFO_HAS_SUBXACTS: u32 = 1 << 1;
pub const XACT_XINFO_HAS_RELFILENODES: u32 = 1 << 2;
pub const XACT_XINFO_HAS_INVALS: u32 = 1 << 3;
pub const XACT_XINFO_HAS_TWOPHASE: u32 = 1 << 4;
pub const XACT_XINFO_HAS_ORIGIN: u32 = 1 << 5;
pub const XACT_XINFO_HAS_AE_LOCKS: u32 = 1 << 6;
pub const XACT_XINFO_HAS_GID: u32 = 1 << 7;
pub const XACT_XINFO_HAS_DROPPED_STATS: u32 = 1 << 8;
pub const XACT_COMPLETION_APPLY_FEEDBACK: u32 = 1 << 29;
pub const XACT_COMPLETION_UPDATE_RELCACHE_FILE: u32 = 1 << 30;
pub const XACT_COMPLETION_FORCE_SYNC_COMMIT: u32 = 1 << 31;

/// `xact_identify` (the opcode is `info & XLOG_XACT_OPMASK`; bit 0x80 is a flag).
pub fn identify(info: u8) -> Option<&'static str> {
    Some(match info & XLOG_XACT_OPMASK {
        XLOG_XACT_COMMIT => "COMMIT",
        XLOG_XACT_PREPARE => "PREPARE",
        XLOG_XACT_ABORT => "ABORT",
        XLOG_XACT_COMMIT_PREPARED => "COMMIT_PREPARED",
        XLOG_XACT_ABORT_PREPARED => "ABORT_PREPARED",
        XLOG_XACT_ASSIGNMENT => "ASSIGNMENT",
        XLOG_XACT_INVALIDATIONS => "INVALIDATION",
        _ => return None,
    })
}

/// `xl_xact_stats_item`: kind, dboid, then the object id: an `Oid objoid` up to 17, a
/// 64-bit id stored as `uint32 objid_lo, objid_hi` from 18 on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DroppedStat {
    pub kind: i32,
    pub db_oid: u32,
    pub obj_oid: u64,
}

/// A parsed `xl_xact_prepare` (`ParsePrepareRecord`): what the prepared transaction will
/// do at COMMIT PREPARED or ROLLBACK PREPARED.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct XactPrepare {
    pub xid: u32,
    pub database: u32,
    pub prepared_at: i64,
    pub gid: String,
    pub subxacts: Vec<u32>,
    pub commit_rels: Vec<RelFileLocator>,
    pub abort_rels: Vec<RelFileLocator>,
    pub commit_stats: Vec<DroppedStat>,
    pub abort_stats: Vec<DroppedStat>,
    pub invals: Vec<InvalidationMessage>,
    pub init_file_inval: bool,
    pub origin_lsn: Lsn,
    pub origin_timestamp: i64,
}

/// A parsed commit or abort record (`xl_xact_parsed_commit` / `_abort`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct XactFinish {
    pub is_commit: bool,
    pub is_prepared: bool,
    /// `xact_time` (microseconds since 2000-01-01 UTC).
    pub xact_time: i64,
    pub xinfo: u32,
    pub db_id: u32,
    pub ts_id: u32,
    pub subxacts: Vec<u32>,
    /// Relation files dropped by this transaction (main fork given; all forks go).
    pub rels: Vec<RelFileLocator>,
    pub dropped_stats: Vec<DroppedStat>,
    pub invals: Vec<InvalidationMessage>,
    pub twophase_xid: u32,
    pub twophase_gid: Option<String>,
    pub origin_lsn: Option<Lsn>,
    pub origin_timestamp: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum XactRecord {
    Commit(XactFinish),
    Abort(XactFinish),
    /// `xl_xact_prepare`: the two-phase state file's image, read as `ParsePrepareRecord`
    /// reads it.
    Prepare(XactPrepare),
    /// `xl_xact_assignment`.
    Assignment {
        xtop: u32,
        xsub: Vec<u32>,
    },
    /// `xl_xact_invals`.
    Invalidations(Vec<InvalidationMessage>),
}

fn count(r: &MainDataReader<'_>, n: i32, what: &str) -> Result<usize, MainDataError> {
    usize::try_from(n).map_err(|_| r.error(format!("negative {what} {n}")))
}

fn parse_finish(
    r: &mut MainDataReader<'_>,
    info: u8,
    is_commit: bool,
    version: crate::wal::PgVersion,
) -> Result<XactFinish, MainDataError> {
    let op = info & XLOG_XACT_OPMASK;
    let mut p = XactFinish {
        is_commit,
        is_prepared: op == XLOG_XACT_COMMIT_PREPARED || op == XLOG_XACT_ABORT_PREPARED,
        xact_time: r.i64()?,
        ..Default::default()
    };
    if info & XLOG_XACT_HAS_INFO != 0 {
        p.xinfo = r.u32()?;
    }
    if p.xinfo & XACT_XINFO_HAS_DBINFO != 0 {
        p.db_id = r.u32()?;
        p.ts_id = r.u32()?;
    }
    if p.xinfo & XACT_XINFO_HAS_SUBXACTS != 0 {
        let n = r.i32()?;
        let n = count(r, n, "nsubxacts")?;
        p.subxacts = r.u32_array(n)?;
    }
    if p.xinfo & XACT_XINFO_HAS_RELFILENODES != 0 {
        let n = r.i32()?;
        let n = count(r, n, "nrels")?;
        p.rels = r.rel_array(n)?;
    }
    if p.xinfo & XACT_XINFO_HAS_DROPPED_STATS != 0 {
        let n = r.i32()?;
        let n = count(r, n, "nitems")?;
        p.dropped_stats = dropped_stats(r, n, version)?;
    }
    if is_commit && p.xinfo & XACT_XINFO_HAS_INVALS != 0 {
        let n = r.i32()?;
        let n = count(r, n, "nmsgs")?;
        p.invals = InvalidationMessage::parse_array(r, n)?;
    }
    if p.xinfo & XACT_XINFO_HAS_TWOPHASE != 0 {
        p.twophase_xid = r.u32()?;
        if p.xinfo & XACT_XINFO_HAS_GID != 0 {
            p.twophase_gid = Some(r.cstring()?);
        }
    }
    if p.xinfo & XACT_XINFO_HAS_ORIGIN != 0 {
        // Not aligned from here on; the reader copies bytes anyway.
        p.origin_lsn = Some(r.lsn()?);
        p.origin_timestamp = Some(r.i64()?);
    }
    Ok(p)
}

pub fn parse(rec: &DecodedRecord) -> Result<XactRecord, MainDataError> {
    let info = rec.info() & 0xF0;
    let mut r = MainDataReader::new(
        rec.main_data(),
        rec.lsn,
        "Transaction",
        identify(info).unwrap_or("UNKNOWN"),
    );
    match info & XLOG_XACT_OPMASK {
        XLOG_XACT_COMMIT | XLOG_XACT_COMMIT_PREPARED => Ok(XactRecord::Commit(parse_finish(
            &mut r,
            info,
            true,
            rec.version,
        )?)),
        XLOG_XACT_ABORT | XLOG_XACT_ABORT_PREPARED => Ok(XactRecord::Abort(parse_finish(
            &mut r,
            info,
            false,
            rec.version,
        )?)),
        XLOG_XACT_PREPARE => {
            // xl_xact_prepare: magic, total_len, xid, database, prepared_at (8-aligned at 16),
            // owner, nsubxacts (28), ncommitrels, nabortrels, ncommitstats, nabortstats,
            // ninvalmsgs, initfileinval (52), gidlen (54), origin_lsn (56),
            // origin_timestamp (64); MAXALIGN(sizeof) = 72. Then the GID, the subxacts,
            // the commit and abort relations, the commit and abort stats and the
            // invalidations, each MAXALIGNed (`ParsePrepareRecord`).
            r.seek(8)?;
            let xid = r.u32()?;
            let database = r.u32()?;
            let prepared_at = r.i64()?;
            r.seek(28)?;
            let mut counts = [0usize; 6];
            for (c, what) in counts.iter_mut().zip([
                "nsubxacts",
                "ncommitrels",
                "nabortrels",
                "ncommitstats",
                "nabortstats",
                "ninvalmsgs",
            ]) {
                let n = r.i32()?;
                *c = count(&r, n, what)?;
            }
            let [
                nsub,
                ncommitrels,
                nabortrels,
                ncommitstats,
                nabortstats,
                nmsgs,
            ] = counts;
            let init_file_inval = r.bool()?;
            r.seek(54)?;
            let gidlen = r.u16()? as usize;
            let origin_lsn = r.lsn()?;
            let origin_timestamp = r.i64()?;
            r.seek(72)?;
            let gid_bytes = r.bytes(gidlen)?;
            let end = gid_bytes
                .iter()
                .position(|&b| b == 0)
                .unwrap_or(gid_bytes.len());
            let gid = String::from_utf8_lossy(&gid_bytes[..end]).into_owned();
            r.align(8)?;
            let subxacts = r.u32_array(nsub)?;
            r.align(8)?;
            let commit_rels = r.rel_array(ncommitrels)?;
            r.align(8)?;
            let abort_rels = r.rel_array(nabortrels)?;
            r.align(8)?;
            let commit_stats = dropped_stats(&mut r, ncommitstats, rec.version)?;
            r.align(8)?;
            let abort_stats = dropped_stats(&mut r, nabortstats, rec.version)?;
            r.align(8)?;
            let invals = InvalidationMessage::parse_array(&mut r, nmsgs)?;
            Ok(XactRecord::Prepare(XactPrepare {
                xid,
                database,
                prepared_at,
                gid,
                subxacts,
                commit_rels,
                abort_rels,
                commit_stats,
                abort_stats,
                invals,
                init_file_inval,
                origin_lsn,
                origin_timestamp,
            }))
        }
        XLOG_XACT_ASSIGNMENT => {
            let xtop = r.u32()?;
            let n = r.i32()?;
            let n = count(&r, n, "nsubxacts")?;
            Ok(XactRecord::Assignment {
                xtop,
                xsub: r.u32_array(n)?,
            })
        }
        XLOG_XACT_INVALIDATIONS => {
            let n = r.i32()?;
            let n = count(&r, n, "nmsgs")?;
            Ok(XactRecord::Invalidations(InvalidationMessage::parse_array(
                &mut r, n,
            )?))
        }
        other => Err(r.error(format!("unknown transaction record type {other:#x}"))),
    }
}

/// `n` `xl_xact_stats_item`s: kind, database and object id (64-bit from 18 on, as two
/// 32-bit halves).
fn dropped_stats(
    r: &mut MainDataReader<'_>,
    n: usize,
    version: crate::wal::PgVersion,
) -> Result<Vec<DroppedStat>, MainDataError> {
    let wide = version >= crate::wal::PgVersion::V18;
    let mut v = Vec::with_capacity(n.min(r.remaining() / 12));
    for _ in 0..n {
        let kind = r.i32()?;
        let db_oid = r.u32()?;
        let obj_oid = if wide {
            let lo = r.u32()?;
            u64::from(lo) | (u64::from(r.u32()?) << 32)
        } else {
            r.u32()?.into()
        };
        v.push(DroppedStat {
            kind,
            db_oid,
            obj_oid,
        });
    }
    Ok(v)
}
