//! Errors of the WAL decoder. Every variant names the WAL position where the problem was
//! found and what was wrong, so a caller can log it or turn it into a clear exit message.
//!
//! `EndOfWal` is not corruption: it is what PostgreSQL's own reader also stops on (a zeroed
//! record header, a never-written page, a recycled segment, no more input). Use
//! [`WalError::is_end_of_wal`] to tell the two apart.

use std::sync::Arc;

use super::page::Lsn;

/// Why the valid WAL ends at a given position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EndOfWalReason {
    /// `xl_tot_len` is zero where a record should start (the rest of the page was never
    /// written). pg_waldump: "invalid record length at X: wanted 24, got 0".
    ZeroRecordLength,
    /// The page header is all zeros (pre-allocated segment, or never written).
    ZeroedPage,
    /// The page header is valid but carries an older address: a recycled segment whose
    /// new contents end before this page (pg_waldump: "unexpected pageaddr").
    RecycledPage { page_addr: Lsn },
    /// The input ends in the middle of a record or page header and no more will come.
    IncompleteInput,
    /// The next segment file does not exist.
    MissingSegment { file: String },
}

impl std::fmt::Display for EndOfWalReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EndOfWalReason::ZeroRecordLength => {
                write!(f, "invalid record length: wanted 24, got 0")
            }
            EndOfWalReason::ZeroedPage => write!(f, "page is zeroed (invalid magic number 0000)"),
            EndOfWalReason::RecycledPage { page_addr } => {
                write!(f, "unexpected pageaddr {page_addr} (recycled segment)")
            }
            EndOfWalReason::IncompleteInput => write!(f, "input ends in the middle of a record"),
            EndOfWalReason::MissingSegment { file } => write!(f, "could not find file \"{file}\""),
        }
    }
}

/// Compression method of a full page image (`BKPIMAGE_COMPRESS_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompressionMethod {
    Pglz,
    Lz4,
    Zstd,
}

impl std::fmt::Display for CompressionMethod {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            CompressionMethod::Pglz => "pglz",
            CompressionMethod::Lz4 => "lz4",
            CompressionMethod::Zstd => "zstd",
        })
    }
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum WalError {
    #[error("end of WAL at {lsn}: {reason}")]
    EndOfWal { lsn: Lsn, reason: EndOfWalReason },

    #[error("invalid magic number {magic:04X} in WAL page at {lsn}")]
    InvalidPageMagic { lsn: Lsn, magic: u16 },

    #[error("WAL page at {lsn} is {found} WAL, expected {expected}")]
    VersionMismatch {
        lsn: Lsn,
        expected: super::version::PgVersion,
        found: super::version::PgVersion,
    },

    #[error("invalid info bits {info:04X} in WAL page at {lsn}")]
    InvalidPageInfo { lsn: Lsn, info: u16 },

    #[error("first page of segment at {lsn} has no long header (info bits {info:04X})")]
    MissingLongHeader { lsn: Lsn, info: u16 },

    #[error(
        "WAL page at {lsn} is from a different database system: system identifier is {found}, expected {expected}"
    )]
    SystemIdMismatch { lsn: Lsn, expected: u64, found: u64 },

    #[error("WAL page at {lsn} has segment size {found} in its header, expected {expected}")]
    SegmentSizeMismatch { lsn: Lsn, expected: u32, found: u32 },

    #[error(
        "WAL page at {lsn} has invalid segment size {found} (must be a power of two between 1 MB and 1 GB)"
    )]
    InvalidSegmentSize { lsn: Lsn, found: u32 },

    #[error("WAL page at {lsn} has XLOG_BLCKSZ {found} in its header, expected 8192")]
    BlockSizeMismatch { lsn: Lsn, found: u32 },

    #[error("unexpected pageaddr {found} in WAL page at {lsn}")]
    UnexpectedPageAddr { lsn: Lsn, found: Lsn },

    #[error("WAL page at {lsn} has timeline {found}, beyond the expected timeline {expected}")]
    TimelineMismatch { lsn: Lsn, expected: u32, found: u32 },

    #[error("out-of-sequence timeline ID {found} (after {previous}) in WAL page at {lsn}")]
    TimelineOutOfSequence { lsn: Lsn, previous: u32, found: u32 },

    #[error(
        "contrecord is requested by {lsn}: the page starts with the continuation of a record we did not read"
    )]
    UnexpectedContrecord { lsn: Lsn },

    #[error("there is no contrecord flag at {lsn} (record at {record_lsn} continues there)")]
    MissingContrecord { lsn: Lsn, record_lsn: Lsn },

    #[error(
        "invalid contrecord length {found} (expected {expected}) at {lsn} for record at {record_lsn}"
    )]
    ContrecordLengthMismatch {
        lsn: Lsn,
        record_lsn: Lsn,
        expected: u64,
        found: u32,
    },

    #[error("invalid record length at {lsn}: wanted 24, got {length}")]
    InvalidRecordLength { lsn: Lsn, length: u32 },

    #[error("record length {length} at {lsn} too long (maximum {max})")]
    RecordTooLong { lsn: Lsn, length: u32, max: u32 },

    #[error("invalid resource manager ID {rmid} at {lsn}")]
    InvalidRmgr { lsn: Lsn, rmid: u8 },

    #[error("record with incorrect prev-link {found} at {lsn} (expected {expected})")]
    IncorrectPrevLink { lsn: Lsn, expected: Lsn, found: Lsn },

    #[error(
        "incorrect resource manager data checksum in record at {lsn}: stored {stored:08X}, computed {computed:08X}"
    )]
    CrcMismatch {
        lsn: Lsn,
        stored: u32,
        computed: u32,
    },

    #[error("malformed record at {lsn}: {what}")]
    MalformedRecord { lsn: Lsn, what: String },

    #[error("could not restore image of block {block_id} in record at {lsn}: {what}")]
    BadImage {
        lsn: Lsn,
        block_id: u8,
        what: String,
    },

    #[error("could not decompress image of block {block_id} ({method}) in record at {lsn}: {what}")]
    Decompression {
        lsn: Lsn,
        block_id: u8,
        method: CompressionMethod,
        what: String,
    },

    #[error("WAL segment {file} is truncated at {lsn}: {size} bytes, expected {expected}")]
    TruncatedSegment {
        lsn: Lsn,
        file: String,
        size: u64,
        expected: u64,
    },

    #[error("invalid decoder start {lsn}: {what}")]
    InvalidStart { lsn: Lsn, what: String },

    #[error("I/O error on {path} (WAL position {lsn}): {source}")]
    Io {
        lsn: Lsn,
        path: String,
        #[source]
        source: Arc<std::io::Error>,
    },
}

impl WalError {
    /// True for a clean end of the valid WAL (not corruption).
    pub fn is_end_of_wal(&self) -> bool {
        matches!(self, WalError::EndOfWal { .. })
    }

    /// The WAL position the error refers to.
    pub fn lsn(&self) -> Lsn {
        match self {
            WalError::EndOfWal { lsn, .. }
            | WalError::InvalidPageMagic { lsn, .. }
            | WalError::VersionMismatch { lsn, .. }
            | WalError::InvalidPageInfo { lsn, .. }
            | WalError::MissingLongHeader { lsn, .. }
            | WalError::SystemIdMismatch { lsn, .. }
            | WalError::SegmentSizeMismatch { lsn, .. }
            | WalError::InvalidSegmentSize { lsn, .. }
            | WalError::BlockSizeMismatch { lsn, .. }
            | WalError::UnexpectedPageAddr { lsn, .. }
            | WalError::TimelineMismatch { lsn, .. }
            | WalError::TimelineOutOfSequence { lsn, .. }
            | WalError::UnexpectedContrecord { lsn }
            | WalError::MissingContrecord { lsn, .. }
            | WalError::ContrecordLengthMismatch { lsn, .. }
            | WalError::InvalidRecordLength { lsn, .. }
            | WalError::RecordTooLong { lsn, .. }
            | WalError::InvalidRmgr { lsn, .. }
            | WalError::IncorrectPrevLink { lsn, .. }
            | WalError::CrcMismatch { lsn, .. }
            | WalError::MalformedRecord { lsn, .. }
            | WalError::BadImage { lsn, .. }
            | WalError::Decompression { lsn, .. }
            | WalError::TruncatedSegment { lsn, .. }
            | WalError::InvalidStart { lsn, .. }
            | WalError::Io { lsn, .. } => *lsn,
        }
    }
}

/// Errors of typed main-data views (`rmgr::*`): the record is well formed at the WAL
/// level, but its main data is shorter than the structure it must hold.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{rmgr}/{record} main data too short at {lsn}: {what}")]
pub struct MainDataError {
    pub lsn: Lsn,
    pub rmgr: &'static str,
    pub record: &'static str,
    pub what: String,
}
