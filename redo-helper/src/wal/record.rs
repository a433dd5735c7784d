//! The WAL record: `XLogRecord` header, CRC-32C check and decoding of the record body into
//! block references, origin, top-level xid and main data (`DecodeXLogRecord` in
//! `access/transam/xlogreader.c`). Assembly of a record from pages is done by
//! [`super::reader::WalStreamDecoder`].

use std::sync::{Arc, OnceLock};

use super::block::*;
use super::error::WalError;
use super::image;
use super::mapped::MappedFile;
use super::page::{BLCKSZ, Lsn, SIZE_OF_SHORT_PAGE_HEADER, XLOG_BLCKSZ, le_u16, le_u32, le_u64};
use super::rmgr::RmgrId;

/// `SizeOfXLogRecord`: the fixed record header.
pub const SIZE_OF_XLOG_RECORD: usize = 24;
/// Offset of `xl_crc` in the header; the CRC covers the header up to here.
pub const XL_CRC_OFFSET: usize = 20;
/// Largest record we accept: `XLogRecordMaxSize` (1020 MB, `access/xlogrecord.h` in
/// PostgreSQL 16, the bound PostgreSQL 15's insertion side effectively respects). Anything
/// larger is corrupt, and refusing it keeps allocation bounded.
pub const XLOG_RECORD_MAX_SIZE: u32 = 1020 * 1024 * 1024;

/// `XLR_INFO_MASK`: low bits of `xl_info` used by the WAL layer itself.
pub const XLR_INFO_MASK: u8 = 0x0F;
/// `XLR_RMGR_INFO_MASK`: high bits, the rmgr's record type.
pub const XLR_RMGR_INFO_MASK: u8 = 0xF0;
/// `XLR_SPECIAL_REL_UPDATE`.
pub const XLR_SPECIAL_REL_UPDATE: u8 = 0x01;
/// `XLR_CHECK_CONSISTENCY`: record carries images for `wal_consistency_checking`.
pub const XLR_CHECK_CONSISTENCY: u8 = 0x02;

/// The fixed 24-byte record header (`XLogRecord`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct XLogRecord {
    /// `xl_tot_len`: total length of the record including this header.
    pub tot_len: u32,
    /// `xl_xid`.
    pub xid: u32,
    /// `xl_prev`: position of the previous record.
    pub prev: Lsn,
    /// `xl_info`: rmgr record type in the high four bits, WAL-layer flags in the low ones.
    pub info: u8,
    /// `xl_rmid`.
    pub rmid: u8,
    /// `xl_crc`.
    pub crc: u32,
}

impl XLogRecord {
    /// Parses the header from at least 24 bytes.
    #[inline]
    pub fn parse(b: &[u8]) -> Option<XLogRecord> {
        if b.len() < SIZE_OF_XLOG_RECORD {
            return None;
        }
        Some(XLogRecord {
            tot_len: le_u32(b, 0),
            xid: le_u32(b, 4),
            prev: Lsn(le_u64(b, 8)),
            info: b[16],
            rmid: b[17],
            crc: le_u32(b, 20),
        })
    }
}

/// CRC-32C of a complete record as PostgreSQL computes it (`ValidXLogRecord`): first the
/// payload after the header, then the header up to `xl_crc`.
pub fn record_crc(raw: &[u8]) -> u32 {
    if raw.len() < SIZE_OF_XLOG_RECORD {
        return 0;
    }
    let (header, payload) = raw.split_at(SIZE_OF_XLOG_RECORD);
    let header = &header[..XL_CRC_OFFSET];
    #[cfg(target_arch = "x86_64")]
    if payload.len() < SHORT_CRC && std::arch::is_x86_feature_detected!("sse4.2") {
        // SAFETY: the CPU has SSE 4.2 (checked just above).
        // One call for both parts: the feature check and the call are paid once per record,
        // which for a record of ~70 bytes is a fifth of the checksum's time.
        return unsafe { record_crc_short_sse42(payload, header) };
    }
    crc32c_append(crc32c_append(0, payload), header)
}

/// [`record_crc`] of a short record: both parts inlined in one function with the feature.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "sse4.2")]
unsafe fn record_crc_short_sse42(payload: &[u8], header: &[u8]) -> u32 {
    // SAFETY: this function's own target feature is the one the callee needs.
    unsafe { crc32c_short_sse42(crc32c_short_sse42(0, payload), header) }
}

/// Records shorter than this are checksummed by a plain loop of the SSE 4.2 `crc32`
/// instruction; longer ones by the crc-fast crate (carry-less multiplication, AVX-512 where
/// the CPU has it). Most WAL records are short (pgbench: ~70 bytes on average), where a
/// crate's set-up costs more than the checksum itself (measured with the crc32c crate: ~300
/// instructions per record against ~30). For full-page images (8 KB), crc-fast measured
/// 22 GB/s against the crc32c crate's 17 on this VM's EPYC, and twice its speed on 64 KB.
const SHORT_CRC: usize = 256;

/// CRC-32C of `data` appended to `crc` (same contract as `crc32c::crc32c_append`).
#[inline]
pub fn crc32c_append(crc: u32, data: &[u8]) -> u32 {
    #[cfg(target_arch = "x86_64")]
    if data.len() < SHORT_CRC && std::arch::is_x86_feature_detected!("sse4.2") {
        // SAFETY: the CPU has SSE 4.2 (checked just above).
        return unsafe { crc32c_short_sse42(crc, data) };
    }
    // The digest's state is the CRC register before the final inversion.
    let mut d =
        crc_fast::Digest::new_with_init_state(crc_fast::CrcAlgorithm::Crc32Iscsi, u64::from(!crc));
    d.update(data);
    d.finalize() as u32
}

/// The `crc32` instruction over 8 bytes at a time, then the last 0-7 bytes in at most three
/// steps (4, 2, 1): each step is one link of a dependent chain (3 cycles), so a tail taken a
/// byte at a time cost up to 21 cycles, as much as 56 bytes of the body.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "sse4.2")]
#[inline]
unsafe fn crc32c_short_sse42(crc: u32, data: &[u8]) -> u32 {
    use std::arch::x86_64::{_mm_crc32_u8, _mm_crc32_u16, _mm_crc32_u32, _mm_crc32_u64};
    let mut c = !crc as u64;
    let mut words = data.chunks_exact(8);
    for w in &mut words {
        let v = u64::from_le_bytes([w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7]]);
        c = _mm_crc32_u64(c, v);
    }
    let mut c = c as u32;
    let mut tail = words.remainder();
    if let Some((w, rest)) = tail.split_first_chunk::<4>() {
        c = _mm_crc32_u32(c, u32::from_le_bytes(*w));
        tail = rest;
    }
    if let Some((w, rest)) = tail.split_first_chunk::<2>() {
        c = _mm_crc32_u16(c, u16::from_le_bytes(*w));
        tail = rest;
    }
    if let Some(b) = tail.first() {
        c = _mm_crc32_u8(c, *b);
    }
    !c
}

/// A record decoded in place: its bytes stay in the mapped segment file they were read from
/// (see [`super::mapped`]) instead of being copied into the record's own buffer.
///
/// Why: copying every record was the largest cost of decoding a mapped segment (a quarter
/// of `waldump --stats`), and most readers never need the record as one contiguous slice
/// (statistics only look at the header and the block headers). A record inside one WAL page
/// is one slice of the mapping. A record that crosses pages (within one segment) is
/// interrupted by the short page headers of the pages it continues on (`SizeOfXLogShortPHD`
/// bytes at the start of each, `access/xlog_internal.h`), so its bytes are the pieces between
/// them; it is assembled into one buffer only when asked for its bytes (once, then kept).
#[derive(Debug, Clone)]
pub(crate) struct RecordView {
    /// The mapping holding the record (kept alive by the record).
    pub(crate) map: Arc<MappedFile>,
    /// Offset of the record's first byte in the mapping. The mapping starts at a segment's
    /// start, so page boundaries are multiples of `XLOG_BLCKSZ` in it.
    pub(crate) start: usize,
    /// `xl_tot_len`.
    pub(crate) len: usize,
    /// The contiguous bytes of a record that crosses pages, once asked for.
    pub(crate) assembled: OnceLock<Vec<u8>>,
}

impl RecordView {
    /// Whether the record lies inside the page it starts on.
    #[inline]
    fn in_one_page(&self) -> bool {
        XLOG_BLCKSZ - self.start % XLOG_BLCKSZ >= self.len
    }

    /// The record's bytes in order, as pieces of the mapping (one for a record inside a
    /// page). The decoder made the view only after checking that every continuation page
    /// is in the mapping with a valid header.
    pub(crate) fn pieces(&self) -> impl Iterator<Item = &[u8]> {
        let map = self.map.as_slice();
        let mut pos = self.start;
        let mut left = self.len;
        std::iter::from_fn(move || {
            if left == 0 {
                return None;
            }
            let page_left = XLOG_BLCKSZ - pos % XLOG_BLCKSZ;
            let n = left.min(page_left);
            let piece = map.get(pos..pos + n)?;
            left -= n;
            pos += n + SIZE_OF_SHORT_PAGE_HEADER;
            Some(piece)
        })
    }

    /// The bytes on the record's first page (all of them for a record inside one page).
    #[inline]
    fn first_piece(&self) -> &[u8] {
        let n = self.len.min(XLOG_BLCKSZ - self.start % XLOG_BLCKSZ);
        self.map
            .as_slice()
            .get(self.start..self.start + n)
            .unwrap_or(&[])
    }

    /// The record's contiguous bytes (assembled on first use if it crosses pages).
    #[inline]
    fn bytes(&self) -> &[u8] {
        if self.in_one_page() {
            return self.first_piece();
        }
        self.assembled.get_or_init(|| {
            let mut v = Vec::with_capacity(self.len);
            for p in self.pieces() {
                v.extend_from_slice(p);
            }
            v
        })
    }

    /// CRC-32C as [`record_crc`] computes it, over the pieces (no assembly).
    pub(crate) fn crc(&self) -> u32 {
        if self.in_one_page() {
            return record_crc(self.first_piece());
        }
        let mut crc = 0;
        let mut header: &[u8] = &[];
        for (i, p) in self.pieces().enumerate() {
            if i == 0 {
                // The decoder makes views only of records whose header is on their first page.
                let h = p.len().min(SIZE_OF_XLOG_RECORD);
                header = &p[..h];
                crc = crc32c_append(crc, &p[h..]);
            } else {
                crc = crc32c_append(crc, p);
            }
        }
        crc32c_append(crc, header.get(..XL_CRC_OFFSET).unwrap_or(header))
    }
}

/// A fully decoded WAL record. The raw bytes are kept (in the record's buffer, or in place in
/// a mapped segment file: [`RecordView`]); block data, images and main data are slices of
/// them.
#[derive(Debug, Clone, Default)]
pub struct DecodedRecord {
    /// Position of the record (`ReadRecPtr`).
    pub lsn: Lsn,
    /// Position right after the record, MAXALIGNed (`EndRecPtr`, where the next record
    /// starts). For `XLOG_SWITCH` it is the start of the next segment.
    pub end_lsn: Lsn,
    pub header: XLogRecord,
    /// `XLR_BLOCK_ID_ORIGIN`, when present.
    pub origin: Option<u16>,
    /// `XLR_BLOCK_ID_TOPLEVEL_XID`, when present.
    pub toplevel_xid: Option<u32>,
    /// The record's bytes when it is not read in place (`view` is `None`); otherwise a spare
    /// allocation.
    pub(crate) raw: Vec<u8>,
    /// The record's bytes in place in a mapped segment file.
    pub(crate) view: Option<RecordView>,
    pub(crate) blocks: Vec<BlockRef>,
    pub(crate) main_data_offset: u32,
    pub(crate) main_data_len: u32,
    /// CRC checked and body decoded (false only with deferred verification).
    pub(crate) verified: bool,
    /// PostgreSQL major version that wrote the record (from its pages' `XLOG_PAGE_MAGIC`):
    /// selects the main-data layouts in [`super::rmgr`].
    pub version: super::version::PgVersion,
}

impl DecodedRecord {
    /// Decodes a complete record from its raw bytes (e.g. read back from an archive): checks
    /// the length and CRC-32C, then decodes the body. `end_lsn` is not known here and is set
    /// to `lsn + MAXALIGN(len)` (correct when the record does not cross a page boundary).
    pub fn from_raw(lsn: Lsn, raw: Vec<u8>) -> Result<DecodedRecord, WalError> {
        let header = XLogRecord::parse(&raw).ok_or(WalError::InvalidRecordLength {
            lsn,
            length: raw.len() as u32,
        })?;
        if header.tot_len as usize != raw.len() {
            return Err(malformed(
                lsn,
                format!(
                    "xl_tot_len {} but {} bytes given",
                    header.tot_len,
                    raw.len()
                ),
            ));
        }
        let computed = record_crc(&raw);
        if computed != header.crc {
            return Err(WalError::CrcMismatch {
                lsn,
                stored: header.crc,
                computed,
            });
        }
        let mut rec = DecodedRecord {
            lsn,
            end_lsn: lsn.add(super::page::maxalign(raw.len() as u64)),
            header,
            raw,
            verified: true,
            ..Default::default()
        };
        decode_body(&mut rec)?;
        Ok(rec)
    }

    /// Checks the CRC and decodes the body of a record returned with deferred verification
    /// (no-op for records already verified).
    pub fn verify(&mut self) -> Result<(), WalError> {
        if self.verified {
            return Ok(());
        }
        let computed = match &self.view {
            Some(v) => v.crc(),
            None => record_crc(&self.raw),
        };
        if computed != self.header.crc {
            return Err(WalError::CrcMismatch {
                lsn: self.lsn,
                stored: self.header.crc,
                computed,
            });
        }
        decode_body(self)?;
        self.verified = true;
        Ok(())
    }

    /// Whether the CRC has been checked and the body decoded.
    pub fn is_verified(&self) -> bool {
        self.verified
    }

    pub fn prev(&self) -> Lsn {
        self.header.prev
    }
    pub fn xid(&self) -> u32 {
        self.header.xid
    }
    pub fn rmid(&self) -> u8 {
        self.header.rmid
    }
    pub fn rmgr(&self) -> RmgrId {
        RmgrId(self.header.rmid)
    }
    /// Full `xl_info`.
    pub fn info(&self) -> u8 {
        self.header.info
    }
    /// `xl_info & XLR_RMGR_INFO_MASK`: the rmgr's record type bits.
    pub fn rmgr_info(&self) -> u8 {
        self.header.info & XLR_RMGR_INFO_MASK
    }
    pub fn total_len(&self) -> u32 {
        self.header.tot_len
    }
    /// The bytes of the record's first page (the header and, mostly, the block headers).
    #[inline]
    pub(crate) fn raw_header(&self) -> &[u8] {
        match &self.view {
            Some(v) => v.first_piece(),
            None => &self.raw,
        }
    }
    /// Raw bytes of the whole record, header included.
    #[inline]
    pub fn raw(&self) -> &[u8] {
        match &self.view {
            Some(v) => v.bytes(),
            None => &self.raw,
        }
    }
    pub fn main_data(&self) -> &[u8] {
        let s = self.main_data_offset as usize;
        self.raw()
            .get(s..s + self.main_data_len as usize)
            .unwrap_or(&[])
    }
    pub fn blocks(&self) -> &[BlockRef] {
        &self.blocks
    }
    /// The block reference with the given block id.
    pub fn block(&self, id: u8) -> Option<&BlockRef> {
        self.blocks.iter().find(|b| b.id == id)
    }
    /// `XLogRecMaxBlockId`, or -1 when the record references no block.
    pub fn max_block_id(&self) -> i32 {
        self.blocks.last().map_or(-1, |b| b.id as i32)
    }
    /// Per-block data of `block` (empty without `BKPBLOCK_HAS_DATA`).
    pub fn block_data(&self, block: &BlockRef) -> &[u8] {
        let s = block.data_offset as usize;
        self.raw()
            .get(s..s + block.data_len as usize)
            .unwrap_or(&[])
    }
    /// Stored image bytes of `block` (compressed and/or without the hole).
    pub fn block_image_raw(&self, block: &BlockRef) -> Option<&[u8]> {
        let img = block.image?;
        let s = block.image_offset as usize;
        self.raw().get(s..s + img.length as usize)
    }
    /// Restores the full 8 KB page image of `block` into `page` (decompressing and putting
    /// the hole back). Returns `Ok(false)` when the block has no image.
    pub fn restore_block_image(
        &self,
        block: &BlockRef,
        page: &mut [u8; BLCKSZ],
    ) -> Result<bool, WalError> {
        let (Some(hdr), Some(raw)) = (block.image, self.block_image_raw(block)) else {
            return Ok(false);
        };
        image::restore_image(self.lsn, block.id, &hdr, raw, page)?;
        Ok(true)
    }
    /// Sum of stored image bytes (pg_waldump's "fpi_len").
    pub fn fpi_len(&self) -> u32 {
        self.blocks
            .iter()
            .filter_map(|b| b.image.map(|i| i.length as u32))
            .sum()
    }
    /// Record length without images (pg_waldump's "rec" length).
    pub fn rec_len(&self) -> u32 {
        self.header.tot_len.saturating_sub(self.fpi_len())
    }
}

fn malformed(lsn: Lsn, what: impl Into<String>) -> WalError {
    WalError::MalformedRecord {
        lsn,
        what: what.into(),
    }
}

/// Decodes the body of `rec.raw` (a complete, CRC-checked record) into block references,
/// origin, top-level xid and main data. Mirrors `DecodeXLogRecord`, including its
/// cross-checks; any inconsistency is a `MalformedRecord` naming the record's LSN.
pub(crate) fn decode_body(rec: &mut DecodedRecord) -> Result<(), WalError> {
    let DecodedRecord {
        lsn,
        raw,
        view,
        blocks,
        origin,
        toplevel_xid,
        main_data_offset,
        main_data_len,
        ..
    } = rec;
    *origin = None;
    *toplevel_xid = None;
    *main_data_offset = 0;
    *main_data_len = 0;
    let mut out = BodyLayout {
        origin,
        toplevel_xid,
        main_data_offset,
        main_data_len,
    };
    let decoded = match view {
        // In place: the headers are read from the record's first page, and only when they
        // go on past it (rare: a record starting near a page's end) is the record assembled.
        Some(v) => {
            decode_layout(*lsn, v.first_piece(), v.len, blocks, &mut out)?
                || decode_layout(*lsn, v.bytes(), v.len, blocks, &mut out)?
        }
        None => decode_layout(*lsn, raw, raw.len(), blocks, &mut out)?,
    };
    if !decoded {
        return Err(malformed(*lsn, "record bytes missing"));
    }
    Ok(())
}

/// Where [`decode_layout`] writes what it finds besides the block references: the record's
/// own fields. Written in place rather than returned: a returned struct went through memory
/// and its reload stalled on store forwarding (perf: 20% of `decode_body`'s time on that one
/// load, the `Option<u16>` stored in two halves and loaded whole).
struct BodyLayout<'a> {
    origin: &'a mut Option<u16>,
    toplevel_xid: &'a mut Option<u32>,
    main_data_offset: &'a mut u32,
    main_data_len: &'a mut u32,
}

/// Most bytes one header of the record body takes: a block header (`fork_flags`, data
/// length), its image header with the compression header, a RelFileNode and the block number
/// (1 + 3 + 5 + 2 + 12 + 4); main data, origin and top-level xid headers are shorter.
const MAX_BODY_HEADER: usize = 27;

/// The body of a record of `total` bytes whose first `raw.len()` bytes are `raw` (all of
/// them, or the part on its first page), into `blocks` and `out`. `Ok(false)` when the
/// headers go on past `raw` (`out` untouched then).
#[inline(always)]
fn decode_layout(
    lsn: Lsn,
    raw: &[u8],
    total: usize,
    blocks: &mut Vec<BlockRef>,
    out: &mut BodyLayout<'_>,
) -> Result<bool, WalError> {
    blocks.clear();
    let mut origin = None;
    let mut toplevel_xid = None;
    let mut pos = SIZE_OF_XLOG_RECORD;
    // Bytes of payload (images, block data, main data) announced by the headers so far.
    let mut datatotal: u64 = 0;
    let mut last_rel: Option<RelFileLocator> = None;
    let mut max_block_id: i32 = -1;
    let mut main_data_len: u32 = 0;

    let short = |what: &str| malformed(lsn, format!("record with invalid length ({what})"));

    while ((total - pos) as u64) > datatotal {
        if raw.len() < total && raw.len() - pos < MAX_BODY_HEADER {
            return Ok(false);
        }
        let block_id = raw[pos];
        pos += 1;
        match block_id {
            XLR_BLOCK_ID_DATA_SHORT => {
                let b = *raw.get(pos).ok_or_else(|| short("main data header"))?;
                pos += 1;
                main_data_len = b as u32;
                datatotal += main_data_len as u64;
                // By convention the main data header is the last one.
                break;
            }
            XLR_BLOCK_ID_DATA_LONG => {
                if total - pos < 4 {
                    return Err(short("main data header"));
                }
                main_data_len = le_u32(raw, pos);
                pos += 4;
                datatotal += main_data_len as u64;
                break;
            }
            XLR_BLOCK_ID_ORIGIN => {
                if total - pos < 2 {
                    return Err(short("origin"));
                }
                origin = Some(le_u16(raw, pos));
                pos += 2;
            }
            XLR_BLOCK_ID_TOPLEVEL_XID => {
                if total - pos < 4 {
                    return Err(short("toplevel xid"));
                }
                toplevel_xid = Some(le_u32(raw, pos));
                pos += 4;
            }
            id if id <= XLR_MAX_BLOCK_ID => {
                if (id as i32) <= max_block_id {
                    return Err(malformed(lsn, format!("out-of-order block_id {id}")));
                }
                max_block_id = id as i32;
                if total - pos < 3 {
                    return Err(short("block header"));
                }
                let fork_flags = raw[pos];
                let data_len = le_u16(raw, pos + 1);
                pos += 3;
                let has_data = fork_flags & BKPBLOCK_HAS_DATA != 0;
                if has_data && data_len == 0 {
                    return Err(malformed(
                        lsn,
                        "BKPBLOCK_HAS_DATA set, but no data included",
                    ));
                }
                if !has_data && data_len != 0 {
                    return Err(malformed(
                        lsn,
                        format!("BKPBLOCK_HAS_DATA not set, but data length is {data_len}"),
                    ));
                }
                let fork = fork_flags & BKPBLOCK_FORK_MASK;
                if fork > ForkNumber::MAX {
                    return Err(malformed(
                        lsn,
                        format!("invalid fork number {fork} in block {id}"),
                    ));
                }
                datatotal += data_len as u64;
                let mut image = None;
                if fork_flags & BKPBLOCK_HAS_IMAGE != 0 {
                    if total - pos < 5 {
                        return Err(short("block image header"));
                    }
                    let length = le_u16(raw, pos);
                    let hole_offset = le_u16(raw, pos + 2);
                    let info = raw[pos + 4];
                    pos += 5;
                    let mut hdr = BlockImageHeader {
                        length,
                        hole_offset,
                        hole_length: 0,
                        info,
                    };
                    if hdr.is_compressed() {
                        if hdr.has_hole() {
                            if total - pos < 2 {
                                return Err(short("block compress header"));
                            }
                            hdr.hole_length = le_u16(raw, pos);
                            pos += 2;
                        }
                    } else {
                        // An uncompressed image is the page minus its hole.
                        hdr.hole_length = (BLCKSZ as u32).wrapping_sub(length as u32) as u16;
                    }
                    datatotal += length as u64;
                    if hdr.has_hole()
                        && (hdr.hole_offset == 0
                            || hdr.hole_length == 0
                            || length as usize == BLCKSZ)
                    {
                        return Err(malformed(
                            lsn,
                            format!(
                                "BKPIMAGE_HAS_HOLE set, but hole offset {} length {} block image length {} (block {id})",
                                hdr.hole_offset, hdr.hole_length, length
                            ),
                        ));
                    }
                    if !hdr.has_hole() && (hdr.hole_offset != 0 || hdr.hole_length != 0) {
                        return Err(malformed(
                            lsn,
                            format!(
                                "BKPIMAGE_HAS_HOLE not set, but hole offset {} length {} (block {id})",
                                hdr.hole_offset, hdr.hole_length
                            ),
                        ));
                    }
                    if hdr.is_compressed() && length as usize == BLCKSZ {
                        return Err(malformed(
                            lsn,
                            format!(
                                "BKPIMAGE_COMPRESSED set, but block image length {length} (block {id})"
                            ),
                        ));
                    }
                    if !hdr.has_hole() && !hdr.is_compressed() && length as usize != BLCKSZ {
                        return Err(malformed(
                            lsn,
                            format!(
                                "neither BKPIMAGE_HAS_HOLE nor BKPIMAGE_COMPRESSED set, but block image length is {length} (block {id})"
                            ),
                        ));
                    }
                    image = Some(hdr);
                }
                let rel = if fork_flags & BKPBLOCK_SAME_REL == 0 {
                    if total - pos < 12 {
                        return Err(short("relfilenode"));
                    }
                    let r = RelFileLocator::from_le(&raw[pos..pos + 12]);
                    pos += 12;
                    last_rel = Some(r);
                    r
                } else {
                    last_rel.ok_or_else(|| {
                        malformed(lsn, "BKPBLOCK_SAME_REL set but no previous rel")
                    })?
                };
                if total - pos < 4 {
                    return Err(short("block number"));
                }
                let block = le_u32(raw, pos);
                pos += 4;
                blocks.push(BlockRef {
                    id,
                    rel,
                    fork: ForkNumber(fork),
                    block,
                    flags: fork_flags,
                    image,
                    image_offset: 0,
                    data_offset: 0,
                    data_len,
                });
            }
            other => return Err(malformed(lsn, format!("invalid block_id {other}"))),
        }
    }

    if (total - pos) as u64 != datatotal {
        return Err(malformed(
            lsn,
            format!(
                "record with invalid length: headers announce {datatotal} payload bytes, {} present",
                total - pos
            ),
        ));
    }

    // Payload order: for each block its image then its data; main data last.
    for b in blocks.iter_mut() {
        if let Some(img) = b.image {
            b.image_offset = pos as u32;
            pos += img.length as usize;
        }
        b.data_offset = pos as u32;
        pos += b.data_len as usize;
    }
    *out.origin = origin;
    *out.toplevel_xid = toplevel_xid;
    *out.main_data_offset = pos as u32;
    *out.main_data_len = main_data_len;
    Ok(true)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    proptest::proptest! {
        /// The short-record loop and crc-fast agree with the crc32c crate (the reference),
        /// at every length around the switch, up to past a full-page image, and from any
        /// starting CRC.
        #[test]
        fn crc32c_append_matches_the_crate(
            data in proptest::collection::vec(proptest::num::u8::ANY, 0..20_000),
            start in proptest::num::u32::ANY,
        ) {
            proptest::prop_assert_eq!(
                crc32c_append(start, &data),
                crc32c::crc32c_append(start, &data)
            );
        }

        /// Short inputs, where the tail steps (4, 2, 1 bytes) take every combination, and a
        /// whole record's CRC (payload, then the header up to `xl_crc`).
        #[test]
        fn short_crcs_match_the_crate(
            data in proptest::collection::vec(proptest::num::u8::ANY, 0..300),
            start in proptest::num::u32::ANY,
        ) {
            proptest::prop_assert_eq!(
                crc32c_append(start, &data),
                crc32c::crc32c_append(start, &data)
            );
            let expected = if data.len() < SIZE_OF_XLOG_RECORD {
                0
            } else {
                let payload = crc32c::crc32c(&data[SIZE_OF_XLOG_RECORD..]);
                crc32c::crc32c_append(payload, &data[..XL_CRC_OFFSET])
            };
            proptest::prop_assert_eq!(record_crc(&data), expected);
        }
    }

    /// Builds a raw record from a header and body (CRC filled in).
    pub(crate) fn build_record(rmid: u8, info: u8, xid: u32, prev: Lsn, body: &[u8]) -> Vec<u8> {
        let tot = (SIZE_OF_XLOG_RECORD + body.len()) as u32;
        let mut r = Vec::with_capacity(tot as usize);
        r.extend_from_slice(&tot.to_le_bytes());
        r.extend_from_slice(&xid.to_le_bytes());
        r.extend_from_slice(&prev.0.to_le_bytes());
        r.push(info);
        r.push(rmid);
        r.extend_from_slice(&[0, 0]);
        r.extend_from_slice(&[0, 0, 0, 0]);
        r.extend_from_slice(body);
        let crc = record_crc(&r);
        r[20..24].copy_from_slice(&crc.to_le_bytes());
        r
    }

    fn decode(raw: Vec<u8>) -> Result<DecodedRecord, WalError> {
        let mut rec = DecodedRecord {
            lsn: Lsn(0x1000028),
            header: XLogRecord::parse(&raw).unwrap(),
            raw,
            ..Default::default()
        };
        decode_body(&mut rec)?;
        Ok(rec)
    }

    #[test]
    fn decodes_blocks_and_main_data() {
        let mut body = vec![0u8, BKPBLOCK_HAS_DATA, 3, 0];
        body.extend_from_slice(&1663u32.to_le_bytes());
        body.extend_from_slice(&5u32.to_le_bytes());
        body.extend_from_slice(&16384u32.to_le_bytes());
        body.extend_from_slice(&7u32.to_le_bytes());
        body.extend_from_slice(&[1, BKPBLOCK_SAME_REL | 2, 0, 0]);
        body.extend_from_slice(&0u32.to_le_bytes());
        body.extend_from_slice(&[XLR_BLOCK_ID_TOPLEVEL_XID, 9, 0, 0, 0]);
        body.extend_from_slice(&[XLR_BLOCK_ID_DATA_SHORT, 2]);
        body.extend_from_slice(&[0xAA, 0xBB, 0xCC]); // block 0 data
        body.extend_from_slice(&[0x11, 0x22]); // main data
        let raw = build_record(10, 0, 735, Lsn(0x1000000), &body);
        assert_eq!(record_crc(&raw), le_u32(&raw, 20));
        let rec = decode(raw).unwrap();
        assert_eq!(rec.blocks().len(), 2);
        let b0 = rec.blocks()[0];
        assert_eq!(b0.rel.to_string(), "1663/5/16384");
        assert_eq!(b0.block, 7);
        assert_eq!(rec.block_data(&b0), &[0xAA, 0xBB, 0xCC]);
        let b1 = rec.blocks()[1];
        assert_eq!(b1.rel, b0.rel);
        assert_eq!(b1.fork, ForkNumber::VM);
        assert_eq!(rec.main_data(), &[0x11, 0x22]);
        assert_eq!(rec.toplevel_xid, Some(9));
    }

    #[test]
    fn rejects_inconsistent_headers() {
        // Out-of-order block ids.
        let mut body = vec![1u8, 0, 0, 0];
        body.extend_from_slice(&[0; 16]);
        body.extend_from_slice(&[0u8, BKPBLOCK_SAME_REL, 0, 0, 0, 0, 0, 0]);
        assert!(matches!(
            decode(build_record(10, 0, 1, Lsn(0), &body)),
            Err(WalError::MalformedRecord { .. })
        ));
        // SAME_REL without a previous rel.
        let body = vec![0u8, BKPBLOCK_SAME_REL, 0, 0, 0, 0, 0, 0];
        assert!(matches!(
            decode(build_record(10, 0, 1, Lsn(0), &body)),
            Err(WalError::MalformedRecord { .. })
        ));
        // Main data longer than the record.
        let body = vec![XLR_BLOCK_ID_DATA_SHORT, 10, 1];
        assert!(matches!(
            decode(build_record(10, 0, 1, Lsn(0), &body)),
            Err(WalError::MalformedRecord { .. })
        ));
        // Invalid block id.
        let body = vec![100u8, 0, 0, 0];
        assert!(matches!(
            decode(build_record(10, 0, 1, Lsn(0), &body)),
            Err(WalError::MalformedRecord { .. })
        ));
        // HAS_DATA with zero length.
        let body = vec![0u8, BKPBLOCK_HAS_DATA, 0, 0];
        assert!(matches!(
            decode(build_record(10, 0, 1, Lsn(0), &body)),
            Err(WalError::MalformedRecord { .. })
        ));
    }
}
