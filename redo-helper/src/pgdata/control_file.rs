//! `global/pg_control` of a PostgreSQL 15 to 18 data directory: the fields `repair` needs.
//!
//! Layout of `ControlFileData` (catalog/pg_control.h, x86-64 / any 64-bit platform with
//! 8-byte alignment of int64): system_identifier at 0, pg_control_version at 8, state at 16,
//! checkPoint at 32, checkPointCopy at 40 (its first fields: redo at 40, ThisTimeLineID at
//! 48), blcksz at 216, xlog_seg_size at 228, data_checksum_version at 252, then the CRC-32C
//! of everything before it. The file itself is 8 KB (PG_CONTROL_FILE_SIZE).
//!
//! Per version (`PG_CONTROL_VERSION`):
//! - 1300 (15 and 16): the CRC at 288, after the 32-byte mock authentication nonce at 256.
//! - 1700 (17): `CheckPoint` gained `int wal_level` after `bool fullPageWrites`, in what was
//!   padding before the 8-byte aligned `nextXid`: no offset moves, the CRC stays at 288.
//! - 1800 (18): `bool default_char_signedness` after `data_checksum_version` (at 256) pushes
//!   the nonce to 257..289 and the CRC to 292.

use crate::wal::PgVersion;
use crate::wal::page::Lsn;
use std::path::{Path, PathBuf};

const OFF_SYSID: usize = 0;
const OFF_VERSION: usize = 8;
const OFF_STATE: usize = 16;
const OFF_CHECKPOINT: usize = 32;
const OFF_REDO: usize = 40;
const OFF_TIMELINE: usize = 48;
const OFF_BLCKSZ: usize = 216;
const OFF_SEG_SIZE: usize = 228;
const OFF_CHECKSUM_VERSION: usize = 252;

/// Offset of the CRC: it covers every byte before it.
fn crc_offset(version: PgVersion) -> usize {
    match version {
        PgVersion::V15 | PgVersion::V16 | PgVersion::V17 => 288,
        PgVersion::V18 => 292,
    }
}

/// `DBState`: what the cluster was doing when pg_control was last written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DbState {
    Startup,
    ShutDown,
    ShutDownInRecovery,
    ShuttingDown,
    InCrashRecovery,
    InArchiveRecovery,
    InProduction,
    Unknown(u32),
}

impl DbState {
    fn from_u32(v: u32) -> DbState {
        match v {
            0 => DbState::Startup,
            1 => DbState::ShutDown,
            2 => DbState::ShutDownInRecovery,
            3 => DbState::ShuttingDown,
            4 => DbState::InCrashRecovery,
            5 => DbState::InArchiveRecovery,
            6 => DbState::InProduction,
            v => DbState::Unknown(v),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ControlFile {
    pub system_identifier: u64,
    pub state: DbState,
    /// Location of the latest checkpoint record.
    pub checkpoint: Lsn,
    /// Its REDO location: crash recovery starts replaying here.
    pub redo: Lsn,
    pub timeline: u32,
    pub segment_size: u32,
    /// 0 when the cluster has no data checksums.
    pub data_checksum_version: u32,
    /// The layout's version: [`PgVersion::V15`] stands for 15 and 16 (both write 1300).
    pub version: PgVersion,
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum ControlFileError {
    #[error("reading {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a PostgreSQL 15..18 control file: {reason}")]
    Invalid { path: PathBuf, reason: String },
}

impl ControlFile {
    pub(crate) fn path(pgdata: &Path) -> PathBuf {
        pgdata.join("global").join("pg_control")
    }

    /// Reads and checks (version, CRC, block size) `PGDATA/global/pg_control`.
    pub(crate) fn read(pgdata: &Path) -> Result<ControlFile, ControlFileError> {
        let path = Self::path(pgdata);
        let bytes = std::fs::read(&path).map_err(|source| ControlFileError::Io {
            path: path.clone(),
            source,
        })?;
        Self::parse(&bytes).map_err(|reason| ControlFileError::Invalid { path, reason })
    }

    pub(crate) fn parse(b: &[u8]) -> Result<ControlFile, String> {
        if b.len() < OFF_VERSION + 4 {
            return Err(format!("{} bytes, too short", b.len()));
        }
        let u32_at = |o: usize| u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
        let u64_at = |o: usize| u64::from(u32_at(o)) | (u64::from(u32_at(o + 4)) << 32);
        let version =
            PgVersion::from_control_version(u32_at(OFF_VERSION)).map_err(|e| e.to_string())?;
        let off_crc = crc_offset(version);
        if b.len() < off_crc + 4 {
            return Err(format!("{} bytes, too short", b.len()));
        }
        let crc = crc32c::crc32c(&b[..off_crc]);
        if crc != u32_at(off_crc) {
            return Err(format!(
                "CRC mismatch: computed {crc:08X}, stored {:08X}",
                u32_at(off_crc)
            ));
        }
        let blcksz = u32_at(OFF_BLCKSZ);
        if blcksz as usize != crate::wal::page::BLCKSZ {
            return Err(format!("block size {blcksz}, expected 8192"));
        }
        Ok(ControlFile {
            system_identifier: u64_at(OFF_SYSID),
            state: DbState::from_u32(u32_at(OFF_STATE)),
            checkpoint: Lsn(u64_at(OFF_CHECKPOINT)),
            redo: Lsn(u64_at(OFF_REDO)),
            timeline: u32_at(OFF_TIMELINE),
            segment_size: u32_at(OFF_SEG_SIZE),
            data_checksum_version: u32_at(OFF_CHECKSUM_VERSION),
            version,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<u8> {
        sample_of(PgVersion::V15)
    }

    fn sample_of(version: PgVersion) -> Vec<u8> {
        let mut b = vec![0u8; 8192];
        b[OFF_SYSID..OFF_SYSID + 8].copy_from_slice(&0x1234_5678_9abc_def0u64.to_le_bytes());
        b[OFF_VERSION..OFF_VERSION + 4].copy_from_slice(&version.control_version().to_le_bytes());
        b[OFF_STATE..OFF_STATE + 4].copy_from_slice(&6u32.to_le_bytes());
        b[OFF_CHECKPOINT..OFF_CHECKPOINT + 8].copy_from_slice(&0x0300_0060u64.to_le_bytes());
        b[OFF_REDO..OFF_REDO + 8].copy_from_slice(&0x0300_0028u64.to_le_bytes());
        b[OFF_TIMELINE..OFF_TIMELINE + 4].copy_from_slice(&1u32.to_le_bytes());
        b[OFF_BLCKSZ..OFF_BLCKSZ + 4].copy_from_slice(&8192u32.to_le_bytes());
        b[OFF_SEG_SIZE..OFF_SEG_SIZE + 4].copy_from_slice(&(16u32 << 20).to_le_bytes());
        b[OFF_CHECKSUM_VERSION..OFF_CHECKSUM_VERSION + 4].copy_from_slice(&1u32.to_le_bytes());
        let off_crc = crc_offset(version);
        let crc = crc32c::crc32c(&b[..off_crc]);
        b[off_crc..off_crc + 4].copy_from_slice(&crc.to_le_bytes());
        b
    }

    #[test]
    fn each_version_has_its_crc_place() {
        for v in [PgVersion::V15, PgVersion::V17, PgVersion::V18] {
            let c = ControlFile::parse(&sample_of(v)).expect("valid");
            assert_eq!(c.version, v);
            assert_eq!(c.redo, Lsn(0x0300_0028));
        }
        // An 18 file read with 17's layout would fail its CRC, and the reverse.
        let mut b = sample_of(PgVersion::V18);
        b[OFF_VERSION..OFF_VERSION + 4].copy_from_slice(&1700u32.to_le_bytes());
        assert!(ControlFile::parse(&b).unwrap_err().contains("CRC"));
    }

    #[test]
    fn parses_fields_and_rejects_damage() {
        let c = ControlFile::parse(&sample()).expect("valid");
        assert_eq!(c.system_identifier, 0x1234_5678_9abc_def0);
        assert_eq!(c.state, DbState::InProduction);
        assert_eq!(c.redo, Lsn(0x0300_0028));
        assert_eq!(c.checkpoint, Lsn(0x0300_0060));
        assert_eq!(c.timeline, 1);
        assert_eq!(c.segment_size, 16 << 20);
        assert_eq!(c.data_checksum_version, 1);

        let mut bad = sample();
        bad[OFF_REDO] ^= 1;
        assert!(ControlFile::parse(&bad).unwrap_err().contains("CRC"));
        let mut old = sample();
        old[OFF_VERSION..OFF_VERSION + 4].copy_from_slice(&1201u32.to_le_bytes());
        assert!(ControlFile::parse(&old).unwrap_err().contains("1201"));
        assert!(ControlFile::parse(&sample()[..100]).is_err());
    }
}
