//! Block references of a WAL record (`XLogRecordBlockHeader` and friends in
//! `access/xlogrecord.h`): which page a record touches, whether it carries a full page image
//! and/or per-block data, and the image header.

use std::fmt;

use super::error::CompressionMethod;

/// `XLR_MAX_BLOCK_ID`: block ids 0..=32 reference pages.
pub const XLR_MAX_BLOCK_ID: u8 = 32;
/// `XLR_BLOCK_ID_DATA_SHORT`: main data follows, length in one byte.
pub const XLR_BLOCK_ID_DATA_SHORT: u8 = 255;
/// `XLR_BLOCK_ID_DATA_LONG`: main data follows, length in four bytes.
pub const XLR_BLOCK_ID_DATA_LONG: u8 = 254;
/// `XLR_BLOCK_ID_ORIGIN`: a replication origin id (uint16) follows.
pub const XLR_BLOCK_ID_ORIGIN: u8 = 253;
/// `XLR_BLOCK_ID_TOPLEVEL_XID`: the top-level transaction id (uint32) follows.
pub const XLR_BLOCK_ID_TOPLEVEL_XID: u8 = 252;

/// `BKPBLOCK_FORK_MASK`: the fork number lives in the low four bits of `fork_flags`.
pub const BKPBLOCK_FORK_MASK: u8 = 0x0F;
/// `BKPBLOCK_HAS_IMAGE`: an `XLogRecordBlockImageHeader` follows.
pub const BKPBLOCK_HAS_IMAGE: u8 = 0x10;
/// `BKPBLOCK_HAS_DATA`: per-block data is included.
pub const BKPBLOCK_HAS_DATA: u8 = 0x20;
/// `BKPBLOCK_WILL_INIT`: redo re-initialises the page (no prior contents needed).
pub const BKPBLOCK_WILL_INIT: u8 = 0x40;
/// `BKPBLOCK_SAME_REL`: the RelFileNode is omitted, same as the previous block's.
pub const BKPBLOCK_SAME_REL: u8 = 0x80;

/// `BKPIMAGE_HAS_HOLE`: the image omits a run of zero bytes (between pd_lower and pd_upper).
pub const BKPIMAGE_HAS_HOLE: u8 = 0x01;
/// `BKPIMAGE_APPLY`: redo restores the image. Without it, the image exists only for
/// `wal_consistency_checking` (PostgreSQL 15 renumbered these flags).
pub const BKPIMAGE_APPLY: u8 = 0x02;
pub const BKPIMAGE_COMPRESS_PGLZ: u8 = 0x04;
pub const BKPIMAGE_COMPRESS_LZ4: u8 = 0x08;
pub const BKPIMAGE_COMPRESS_ZSTD: u8 = 0x10;

/// Physical identity of a relation file (`RelFileNode` in PostgreSQL 15, renamed
/// `RelFileLocator` in 16): tablespace, database and relfilenode OIDs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct RelFileLocator {
    pub spc_oid: u32,
    pub db_oid: u32,
    pub rel_number: u32,
}

impl fmt::Display for RelFileLocator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}/{}", self.spc_oid, self.db_oid, self.rel_number)
    }
}

impl RelFileLocator {
    /// Reads the 12-byte on-disk layout (three little-endian uint32).
    #[inline]
    pub(crate) fn from_le(b: &[u8]) -> RelFileLocator {
        RelFileLocator {
            spc_oid: super::page::le_u32(b, 0),
            db_oid: super::page::le_u32(b, 4),
            rel_number: super::page::le_u32(b, 8),
        }
    }
}

/// A relation fork (`ForkNumber`, `common/relpath.h`): main, fsm, vm, init.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct ForkNumber(pub u8);

impl ForkNumber {
    pub const MAIN: ForkNumber = ForkNumber(0);
    pub const FSM: ForkNumber = ForkNumber(1);
    pub const VM: ForkNumber = ForkNumber(2);
    pub const INIT: ForkNumber = ForkNumber(3);
    /// `MAX_FORKNUM`.
    pub const MAX: u8 = 3;

    /// `forkNames[]`.
    pub fn name(self) -> &'static str {
        match self.0 {
            0 => "main",
            1 => "fsm",
            2 => "vm",
            3 => "init",
            _ => "invalid",
        }
    }

    /// Parses a fork by name or number.
    pub fn parse(s: &str) -> Option<ForkNumber> {
        match s {
            "main" | "0" => Some(Self::MAIN),
            "fsm" | "1" => Some(Self::FSM),
            "vm" | "2" => Some(Self::VM),
            "init" | "3" => Some(Self::INIT),
            _ => None,
        }
    }
}

impl fmt::Display for ForkNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Identity of one page: what the store indexes histories by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PageKey {
    pub rel: RelFileLocator,
    pub fork: ForkNumber,
    pub block: u32,
}

impl fmt::Display for PageKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}/{}", self.rel, self.fork, self.block)
    }
}

/// `XLogRecordBlockImageHeader` (+ `XLogRecordBlockCompressHeader`), with the hole length
/// computed as `DecodeXLogRecord` does for uncompressed images.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockImageHeader {
    /// Bytes of image data stored in the record (`bimg_len`).
    pub length: u16,
    pub hole_offset: u16,
    pub hole_length: u16,
    /// `bimg_info`.
    pub info: u8,
}

impl BlockImageHeader {
    /// `BKPIMAGE_APPLY`: redo restores this image. False for images that only serve
    /// `wal_consistency_checking`.
    pub fn apply(&self) -> bool {
        self.info & BKPIMAGE_APPLY != 0
    }

    pub fn has_hole(&self) -> bool {
        self.info & BKPIMAGE_HAS_HOLE != 0
    }

    /// Compression method, if any. When several bits are set (never written by
    /// PostgreSQL), the first in PostgreSQL's test order wins, as in `RestoreBlockImage`.
    pub fn compression(&self) -> Option<CompressionMethod> {
        if self.info & BKPIMAGE_COMPRESS_PGLZ != 0 {
            Some(CompressionMethod::Pglz)
        } else if self.info & BKPIMAGE_COMPRESS_LZ4 != 0 {
            Some(CompressionMethod::Lz4)
        } else if self.info & BKPIMAGE_COMPRESS_ZSTD != 0 {
            Some(CompressionMethod::Zstd)
        } else {
            None
        }
    }

    pub fn is_compressed(&self) -> bool {
        self.info & (BKPIMAGE_COMPRESS_PGLZ | BKPIMAGE_COMPRESS_LZ4 | BKPIMAGE_COMPRESS_ZSTD) != 0
    }
}

/// One block reference of a decoded record. Offsets point into the record's raw bytes;
/// use [`super::record::DecodedRecord::block_data`] / `block_image` to get the bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockRef {
    /// Block id (0..=32) as written by the record; redo routines refer to blocks by it.
    pub id: u8,
    pub rel: RelFileLocator,
    pub fork: ForkNumber,
    pub block: u32,
    /// `fork_flags` byte (fork in the low bits, `BKPBLOCK_*` flags in the high bits).
    pub flags: u8,
    pub image: Option<BlockImageHeader>,
    pub(crate) image_offset: u32,
    pub(crate) data_offset: u32,
    pub(crate) data_len: u16,
}

impl BlockRef {
    pub fn page_key(&self) -> PageKey {
        PageKey {
            rel: self.rel,
            fork: self.fork,
            block: self.block,
        }
    }
    pub fn has_image(&self) -> bool {
        self.image.is_some()
    }
    /// An image redo applies (`BKPIMAGE_APPLY`).
    pub fn has_applicable_image(&self) -> bool {
        self.image.is_some_and(|i| i.apply())
    }
    pub fn has_data(&self) -> bool {
        self.flags & BKPBLOCK_HAS_DATA != 0
    }
    pub fn will_init(&self) -> bool {
        self.flags & BKPBLOCK_WILL_INIT != 0
    }
    pub fn same_rel(&self) -> bool {
        self.flags & BKPBLOCK_SAME_REL != 0
    }
    pub fn data_len(&self) -> usize {
        self.data_len as usize
    }
}
