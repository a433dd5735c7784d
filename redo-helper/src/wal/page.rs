//! WAL positions, segment naming and page headers.
//!
//! Layouts follow `access/xlog_internal.h` (PostgreSQL 15): every 8 KB WAL page starts with
//! `XLogPageHeaderData` (24 bytes after MAXALIGN); the first page of a segment carries
//! `XLogLongPageHeaderData` (40 bytes) with the system identifier, segment size and block
//! size so that a segment can be identified on its own.

use std::fmt;
use std::str::FromStr;

/// WAL page size (`XLOG_BLCKSZ`). The Debian build uses the default; the long page header
/// repeats it and we refuse anything else.
pub const XLOG_BLCKSZ: usize = 8192;
/// Relation page size (`BLCKSZ`); full page images restore to exactly this many bytes.
pub const BLCKSZ: usize = 8192;
/// `XLOG_PAGE_MAGIC` of PostgreSQL 15 WAL (each version's is [`super::PgVersion::page_magic`]).
pub const XLOG_PAGE_MAGIC: u16 = 0xD110;
/// `SizeOfXLogShortPHD`: MAXALIGN(sizeof(XLogPageHeaderData)).
pub const SIZE_OF_SHORT_PAGE_HEADER: usize = 24;
/// `SizeOfXLogLongPHD`: MAXALIGN(sizeof(XLogLongPageHeaderData)).
pub const SIZE_OF_LONG_PAGE_HEADER: usize = 40;
/// Default `wal_segment_size` (16 MB).
pub const DEFAULT_SEGMENT_SIZE: u32 = 16 * 1024 * 1024;
/// `WalSegMinSize` / `WalSegMaxSize` (`access/xlog_internal.h`).
pub const MIN_SEGMENT_SIZE: u32 = 1024 * 1024;
pub const MAX_SEGMENT_SIZE: u32 = 1024 * 1024 * 1024;

/// `XLP_FIRST_IS_CONTRECORD`: the page starts with the rest of a record from the page before.
pub const XLP_FIRST_IS_CONTRECORD: u16 = 0x0001;
/// `XLP_LONG_HEADER`: the page carries `XLogLongPageHeaderData`.
pub const XLP_LONG_HEADER: u16 = 0x0002;
/// `XLP_BKP_REMOVABLE`: informational only (archivers may strip backup blocks).
pub const XLP_BKP_REMOVABLE: u16 = 0x0004;
/// `XLP_FIRST_IS_OVERWRITE_CONTRECORD`: the partial record that used to continue onto this
/// page was abandoned after a crash; an `XLOG_OVERWRITE_CONTRECORD` record starts here.
pub const XLP_FIRST_IS_OVERWRITE_CONTRECORD: u16 = 0x0008;
/// `XLP_ALL_FLAGS`: any other bit in `xlp_info` means the header is not trustworthy.
pub const XLP_ALL_FLAGS: u16 = 0x000F;

/// `IsValidWalSegSize`: a power of two between 1 MB and 1 GB.
pub fn is_valid_segment_size(size: u32) -> bool {
    size.is_power_of_two() && (MIN_SEGMENT_SIZE..=MAX_SEGMENT_SIZE).contains(&size)
}

/// `MAXALIGN` for the 64-bit platforms PostgreSQL 15 runs on here (8 bytes).
#[inline]
pub const fn maxalign(v: u64) -> u64 {
    (v + 7) & !7
}

/// A WAL position (`XLogRecPtr`). Printed as PostgreSQL does: `%X/%08X`.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Lsn(pub u64);

impl Lsn {
    pub const INVALID: Lsn = Lsn(0);

    /// Offset of this position inside its 8 KB WAL page.
    #[inline]
    pub fn page_offset(self) -> usize {
        (self.0 % XLOG_BLCKSZ as u64) as usize
    }

    /// Start of the WAL page containing this position.
    #[inline]
    pub fn page_start(self) -> Lsn {
        Lsn(self.0 - self.0 % XLOG_BLCKSZ as u64)
    }

    /// Offset inside its segment (`XLogSegmentOffset`).
    #[inline]
    pub fn segment_offset(self, seg_size: u32) -> u64 {
        self.0 % seg_size as u64
    }

    /// Segment number (`XLByteToSeg`).
    #[inline]
    pub fn segment_no(self, seg_size: u32) -> u64 {
        self.0 / seg_size as u64
    }

    /// Start of the segment containing this position.
    #[inline]
    pub fn segment_start(self, seg_size: u32) -> Lsn {
        Lsn(self.0 - self.segment_offset(seg_size))
    }

    /// Adds `n` bytes; saturates instead of wrapping (WAL never gets near 2^64, but bytes we
    /// read must not be able to make arithmetic panic).
    #[inline]
    #[allow(clippy::should_implement_trait)]
    pub fn add(self, n: u64) -> Lsn {
        Lsn(self.0.saturating_add(n))
    }
}

/// `%X/%X` form (no zero padding), used by descriptions and statistics.
pub struct ShortLsn(pub Lsn);

impl fmt::Display for ShortLsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0.0 >> 32, self.0.0 & 0xFFFF_FFFF)
    }
}

impl Lsn {
    /// Formats as `%X/%X` (pg_waldump prints LSNs inside descriptions this way).
    pub fn short(self) -> ShortLsn {
        ShortLsn(self)
    }
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:08X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

impl fmt::Debug for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// In JSON (/status, helper.json) an LSN is written as PostgreSQL prints a `pg_lsn`
/// (`%X/%X`, `0/16B3748`):
/// a u64 can exceed what JSON numbers carry exactly, and this is the form a DBA compares
/// with `pg_current_wal_lsn()`.
impl serde::Serialize for Lsn {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&self.short())
    }
}

impl<'de> serde::Deserialize<'de> for Lsn {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

impl From<u64> for Lsn {
    fn from(v: u64) -> Self {
        Lsn(v)
    }
}

/// Error returned when parsing an LSN written as `X/X` fails.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid LSN {0:?}: expected the form XXXXXXXX/XXXXXXXX (hexadecimal)")]
pub struct ParseLsnError(pub String);

impl FromStr for Lsn {
    type Err = ParseLsnError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ParseLsnError(s.to_string());
        let (hi, lo) = s.split_once('/').ok_or_else(err)?;
        if hi.is_empty() || lo.is_empty() || hi.len() > 8 || lo.len() > 8 {
            return Err(err());
        }
        let hi = u32::from_str_radix(hi, 16).map_err(|_| err())?;
        let lo = u32::from_str_radix(lo, 16).map_err(|_| err())?;
        Ok(Lsn(((hi as u64) << 32) | lo as u64))
    }
}

/// `XLogSegmentsPerXLogId`: how many segments share one "xlogid" in a file name.
#[inline]
pub fn segments_per_xlog_id(seg_size: u32) -> u64 {
    0x1_0000_0000u64 / seg_size as u64
}

/// `XLogFileName`: `TTTTTTTTXXXXXXXXYYYYYYYY`.
pub fn segment_file_name(timeline: u32, segno: u64, seg_size: u32) -> String {
    let per_id = segments_per_xlog_id(seg_size);
    format!(
        "{:08X}{:08X}{:08X}",
        timeline,
        segno / per_id,
        segno % per_id
    )
}

/// `XLogFromFileName`: timeline and segment number of a segment file name, or `None` when
/// the name is not a WAL segment name (24 upper-case hex digits).
pub fn parse_segment_file_name(name: &str, seg_size: u32) -> Option<(u32, u64)> {
    if name.len() != 24 || !name.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let tli = u32::from_str_radix(&name[0..8], 16).ok()?;
    let log = u64::from_str_radix(&name[8..16], 16).ok()?;
    let seg = u64::from_str_radix(&name[16..24], 16).ok()?;
    let per_id = segments_per_xlog_id(seg_size);
    if seg >= per_id {
        return None;
    }
    Some((tli, log.checked_mul(per_id)?.checked_add(seg)?))
}

/// A decoded WAL page header (`XLogPageHeaderData`, plus the long-header fields when
/// `XLP_LONG_HEADER` is set).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WalPageHeader {
    pub magic: u16,
    pub info: u16,
    pub timeline: u32,
    pub page_addr: Lsn,
    /// Bytes of a record continued from the previous page (`xlp_rem_len`).
    pub rem_len: u32,
    /// Present when `XLP_LONG_HEADER` is set.
    pub long: Option<WalLongPageHeader>,
}

/// Fields only present in the long header (first page of a segment).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WalLongPageHeader {
    pub system_identifier: u64,
    pub segment_size: u32,
    pub xlog_blcksz: u32,
}

#[inline]
pub(crate) fn le_u16(b: &[u8], off: usize) -> u16 {
    // One bounds check for the range, none for the bytes (hot in record decoding).
    let s = &b[off..off + 2];
    u16::from_le_bytes([s[0], s[1]])
}

#[inline]
pub(crate) fn le_u32(b: &[u8], off: usize) -> u32 {
    let s = &b[off..off + 4];
    u32::from_le_bytes([s[0], s[1], s[2], s[3]])
}

#[inline]
pub(crate) fn le_u64(b: &[u8], off: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[off..off + 8]);
    u64::from_le_bytes(a)
}

impl WalPageHeader {
    /// Size of the header on the page: 40 bytes with `XLP_LONG_HEADER`, 24 otherwise
    /// (`XLogPageHeaderSize`).
    #[inline]
    pub fn size(&self) -> usize {
        if self.info & XLP_LONG_HEADER != 0 {
            SIZE_OF_LONG_PAGE_HEADER
        } else {
            SIZE_OF_SHORT_PAGE_HEADER
        }
    }

    /// How many bytes must be available to parse the header starting at `bytes[0]`:
    /// the short header tells whether the long one follows.
    pub fn needed_len(bytes: &[u8]) -> usize {
        if bytes.len() < 4 {
            return SIZE_OF_SHORT_PAGE_HEADER;
        }
        if le_u16(bytes, 2) & XLP_LONG_HEADER != 0 {
            SIZE_OF_LONG_PAGE_HEADER
        } else {
            SIZE_OF_SHORT_PAGE_HEADER
        }
    }

    /// Parses a header. Returns `None` if fewer than [`WalPageHeader::needed_len`] bytes
    /// are given. No validation beyond layout; see the reader for the checks.
    pub fn parse(bytes: &[u8]) -> Option<WalPageHeader> {
        if bytes.len() < Self::needed_len(bytes) {
            return None;
        }
        let info = le_u16(bytes, 2);
        let long = if info & XLP_LONG_HEADER != 0 {
            Some(WalLongPageHeader {
                system_identifier: le_u64(bytes, 24),
                segment_size: le_u32(bytes, 32),
                xlog_blcksz: le_u32(bytes, 36),
            })
        } else {
            None
        };
        Some(WalPageHeader {
            magic: le_u16(bytes, 0),
            info,
            timeline: le_u32(bytes, 4),
            page_addr: Lsn(le_u64(bytes, 8)),
            rem_len: le_u32(bytes, 16),
            long,
        })
    }

    /// True when every field is zero: a page that was allocated but never written
    /// (pre-zeroed segment, or the pages an `XLOG_SWITCH` leaves behind).
    pub fn is_zeroed(&self) -> bool {
        self.magic == 0
            && self.info == 0
            && self.timeline == 0
            && self.page_addr.0 == 0
            && self.rem_len == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lsn_parse_and_display_round_trip() {
        let l: Lsn = "0/1510AE0".parse().unwrap();
        assert_eq!(l, Lsn(0x1510AE0));
        assert_eq!(l.to_string(), "0/01510AE0");
        assert_eq!("1A/FF".parse::<Lsn>().unwrap(), Lsn(0x1A_0000_00FF));
        assert!("xyz".parse::<Lsn>().is_err());
        assert!("1/".parse::<Lsn>().is_err());
        assert!("123456789/0".parse::<Lsn>().is_err());
    }

    #[test]
    fn segment_names() {
        let seg = DEFAULT_SEGMENT_SIZE;
        assert_eq!(segment_file_name(1, 1, seg), "000000010000000000000001");
        assert_eq!(segment_file_name(2, 256, seg), "000000020000000100000000");
        assert_eq!(
            parse_segment_file_name("000000020000000100000000", seg),
            Some((2, 256))
        );
        assert_eq!(
            parse_segment_file_name("000000020000000100000100", seg),
            None
        );
        assert_eq!(
            parse_segment_file_name("00000002000000010000000", seg),
            None
        );
        assert_eq!(Lsn(0x1510AE0).segment_no(seg), 1);
        assert_eq!(Lsn(0x1510AE0).segment_start(seg), Lsn(0x1000000));
    }

    #[test]
    fn valid_segment_sizes() {
        assert!(is_valid_segment_size(16 << 20));
        assert!(is_valid_segment_size(1 << 20));
        assert!(is_valid_segment_size(1 << 30));
        assert!(!is_valid_segment_size(3 << 20));
        assert!(!is_valid_segment_size(512 << 10));
        assert!(!is_valid_segment_size(0));
    }

    #[test]
    fn parse_long_header() {
        let mut b = [0u8; 40];
        b[0..2].copy_from_slice(&XLOG_PAGE_MAGIC.to_le_bytes());
        b[2..4].copy_from_slice(&(XLP_LONG_HEADER).to_le_bytes());
        b[4..8].copy_from_slice(&1u32.to_le_bytes());
        b[8..16].copy_from_slice(&0x100_0000u64.to_le_bytes());
        b[24..32].copy_from_slice(&42u64.to_le_bytes());
        b[32..36].copy_from_slice(&DEFAULT_SEGMENT_SIZE.to_le_bytes());
        b[36..40].copy_from_slice(&8192u32.to_le_bytes());
        assert_eq!(WalPageHeader::parse(&b[..30]), None);
        let h = WalPageHeader::parse(&b).unwrap();
        assert_eq!(h.size(), 40);
        assert_eq!(h.page_addr, Lsn(0x100_0000));
        assert_eq!(h.long.unwrap().system_identifier, 42);
    }
}
