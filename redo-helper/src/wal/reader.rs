//! Readers: [`WalStreamDecoder`] turns a byte stream (any chunking) into records, and
//! [`WalFileReader`] feeds it from a directory of segment files.
//!
//! The decoder follows `XLogDecodeNextRecord` / `XLogReaderValidatePageHeader`
//! (`access/transam/xlogreader.c`): every page header is validated (magic, flags, long header
//! fields, page address, timeline); a record is assembled across page and segment boundaries
//! with the continuation flag and `xlp_rem_len` checked on every page; the header is checked
//! (length, rmgr, prev-link) as soon as its 24 bytes are in, and the CRC-32C once the record
//! is complete. Record bytes are copied as they arrive, so memory grows only with bytes
//! actually received (records are capped at [`XLOG_RECORD_MAX_SIZE`]).

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::error::{EndOfWalReason, WalError};
use super::mapped::{MappedFile, SharedBytes};
use super::page::*;
use super::record::*;
use super::rmgr::{RM_XLOG_ID, RmgrId, XLOG_SWITCH};
use super::version::PgVersion;

/// How far ahead of a record the decoder asks for the input to be cached: a few records of
/// the typical 50-100 bytes.
const PREFETCH_AHEAD: usize = 512;

/// What the decoder must know about the WAL it reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecoderConfig {
    /// `wal_segment_size`; long page headers must agree.
    pub segment_size: u32,
    /// Expected system identifier. `None`: learnt from the first long page header seen.
    pub system_identifier: Option<u64>,
    /// Highest timeline pages may carry (the timeline being read). `None`: not checked
    /// beyond PostgreSQL's "timeline never goes backwards" rule.
    pub timeline: Option<u32>,
    /// Expected PostgreSQL major version (its `XLOG_PAGE_MAGIC`). `None`: learnt from the
    /// first page header seen; every later page must carry the same magic.
    pub version: Option<PgVersion>,
}

impl Default for DecoderConfig {
    fn default() -> Self {
        DecoderConfig {
            segment_size: DEFAULT_SEGMENT_SIZE,
            system_identifier: None,
            timeline: None,
            version: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Discard input up to `until` without looking at it: padding between records, and the
    /// unused rest of a segment after `XLOG_SWITCH` (zeroed, not even page headers).
    SkipRaw { until: Lsn },
    /// Started on a page boundary inside a record: skip its continuation (as
    /// `XLogFindNextRecord` does) before the first record.
    SkipContinuation { remaining: u32 },
    /// A record starts at `pos`.
    RecordStart,
    /// Assembling the record that starts at `start`; `total` is known once 4 bytes are in.
    InRecord {
        start: Lsn,
        total: u32,
        header_ok: bool,
    },
}

/// Streaming WAL decoder: [`push`](Self::push) bytes in any chunking, then call
/// [`next_record`](Self::next_record) until it returns `Ok(None)` (needs more bytes).
///
/// The first byte pushed is at the start LSN given to [`new`](Self::new). If that LSN is
/// page-aligned, the page header is read and validated and decoding starts with the first
/// record beginning on or after it; otherwise it must be the exact start of a record.
///
/// Errors are sticky: once `next_record` has returned an error (including
/// [`WalError::EndOfWal`]), it returns the same error again.
#[derive(Debug)]
pub struct WalStreamDecoder {
    cfg: DecoderConfig,
    /// Input bytes, when the decoder holds them itself.
    buf: Vec<u8>,
    /// Input bytes read in place (a mapped segment file), instead of `buf` (then empty).
    shared: Option<SharedBytes>,
    /// Position in the input (`shared` if any, else `buf`).
    buf_pos: usize,
    /// LSN of the input byte at `buf_pos`.
    pos: Lsn,
    phase: Phase,
    /// Next page header to read is the first one (the start page).
    first_page: bool,
    /// Position of the last record returned (expected `xl_prev` of the next record).
    prev_lsn: Option<Lsn>,
    latest_page: Lsn,
    latest_page_tli: u32,
    rec: Vec<u8>,
    failed: Option<WalError>,
    defer_verification: bool,
}

impl WalStreamDecoder {
    /// Return records before checking their CRC and decoding their body: the caller must
    /// call [`DecodedRecord::verify`] on each, in order, and stop at the first error. Lets a
    /// pipeline verify on another thread; page and header checks still happen here.
    pub fn set_defer_verification(&mut self, defer: bool) {
        self.defer_verification = defer;
    }

    /// Creates a decoder whose input starts at `start`.
    pub fn new(start: Lsn, cfg: DecoderConfig) -> Result<WalStreamDecoder, WalError> {
        if !is_valid_segment_size(cfg.segment_size) {
            return Err(WalError::InvalidSegmentSize {
                lsn: start,
                found: cfg.segment_size,
            });
        }
        let page_aligned = start.page_offset() == 0;
        if !page_aligned
            && (!start.0.is_multiple_of(8) || start.page_offset() < SIZE_OF_SHORT_PAGE_HEADER)
        {
            return Err(WalError::InvalidStart {
                lsn: start,
                what: "a start that is not page-aligned must be a record start (MAXALIGNed, after the page header)".into(),
            });
        }
        Ok(WalStreamDecoder {
            cfg,
            buf: Vec::new(),
            shared: None,
            buf_pos: 0,
            pos: start,
            phase: Phase::RecordStart,
            first_page: page_aligned,
            prev_lsn: None,
            latest_page: Lsn(0),
            latest_page_tli: 0,
            rec: Vec::new(),
            failed: None,
            defer_verification: false,
        })
    }

    /// Starts over at `start` as [`new`](Self::new) does, keeping the buffers' allocations
    /// (a reader of single records restarts once per record).
    pub fn restart(&mut self, start: Lsn) -> Result<(), WalError> {
        let mut fresh = WalStreamDecoder::new(start, self.cfg)?;
        fresh.defer_verification = self.defer_verification;
        fresh.buf = std::mem::take(&mut self.buf);
        fresh.buf.clear();
        fresh.rec = std::mem::take(&mut self.rec);
        fresh.rec.clear();
        *self = fresh;
        Ok(())
    }

    /// Like [`new`](Self::new), for a start in the middle of the stream where the previous
    /// record's position is known: the first record's `xl_prev` is then checked exactly.
    pub fn new_after(
        start: Lsn,
        prev: Lsn,
        cfg: DecoderConfig,
    ) -> Result<WalStreamDecoder, WalError> {
        let mut d = Self::new(start, cfg)?;
        d.prev_lsn = Some(prev);
        Ok(d)
    }

    pub fn config(&self) -> &DecoderConfig {
        &self.cfg
    }

    /// System identifier (configured or learnt from a long page header).
    pub fn system_identifier(&self) -> Option<u64> {
        self.cfg.system_identifier
    }

    /// LSN of the next byte the decoder expects to receive.
    pub fn input_lsn(&self) -> Lsn {
        self.pos.add(self.buffered() as u64)
    }

    /// LSN up to which input has been consumed.
    pub fn consumed_lsn(&self) -> Lsn {
        self.pos
    }

    /// Position where the next record is expected (or the one being assembled starts).
    pub fn next_record_lsn(&self) -> Lsn {
        match self.phase {
            Phase::InRecord { start, .. } => start,
            Phase::SkipRaw { until } => until,
            _ => self.pos,
        }
    }

    /// True when the decoder is inside a record or page header (more bytes needed to finish).
    pub fn is_mid_record(&self) -> bool {
        matches!(
            self.phase,
            Phase::InRecord { .. } | Phase::SkipContinuation { .. }
        ) || (self.pos.page_offset() == 0 && self.buffered() > 0)
    }

    /// Bytes held in the input buffer, not yet consumed.
    pub fn buffered(&self) -> usize {
        input_of(&self.buf, &self.shared).len() - self.buf_pos
    }

    /// Appends input bytes.
    pub fn push(&mut self, bytes: &[u8]) {
        self.compact();
        self.buf.extend_from_slice(bytes);
    }

    /// Appends an owned chunk, avoiding a copy when everything before it was consumed.
    /// Returns a buffer the caller may reuse for the next chunk.
    pub fn push_owned(&mut self, chunk: Vec<u8>) -> Vec<u8> {
        if self.buffered() == 0 {
            self.buf_pos = 0;
            self.shared = None;
            std::mem::replace(&mut self.buf, chunk)
        } else {
            self.push(&chunk);
            chunk
        }
    }

    /// Appends bytes the decoder reads in place (no copy when everything before them was
    /// consumed, as it is at a segment boundary; otherwise they are copied).
    /// Returns the shared bytes it was done with, if any (to be dropped where convenient).
    pub fn push_shared(&mut self, chunk: SharedBytes) -> Option<SharedBytes> {
        if self.buffered() == 0 {
            self.buf.clear();
            self.buf_pos = 0;
            self.shared.replace(chunk)
        } else {
            self.push(chunk.as_slice());
            None
        }
    }

    /// Reads up to `max` bytes from `r` straight into the input buffer.
    pub fn fill_from<R: Read>(&mut self, r: &mut R, max: usize) -> io::Result<usize> {
        self.compact();
        let old = self.buf.len();
        self.buf.resize(old + max, 0);
        let res = loop {
            match r.read(&mut self.buf[old..]) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                other => break other,
            }
        };
        let n = *res.as_ref().unwrap_or(&0);
        self.buf.truncate(old + n);
        res
    }

    fn compact(&mut self) {
        if let Some(shared) = self.shared.take() {
            // Back to an owned buffer, with the bytes not consumed yet.
            self.buf.clear();
            self.buf
                .extend_from_slice(&shared.as_slice()[self.buf_pos..]);
            self.buf_pos = 0;
            return;
        }
        if self.buf_pos == 0 {
            return;
        }
        if self.buf_pos == self.buf.len() {
            self.buf.clear();
        } else {
            self.buf.drain(..self.buf_pos);
        }
        self.buf_pos = 0;
    }

    #[inline]
    fn avail(&self) -> &[u8] {
        &input_of(&self.buf, &self.shared)[self.buf_pos..]
    }

    #[inline]
    fn consume(&mut self, n: usize) {
        self.buf_pos += n;
        self.pos = self.pos.add(n as u64);
    }

    fn fail(&mut self, e: WalError) -> WalError {
        self.failed = Some(e.clone());
        e
    }

    /// Declares that no more input will come: if a record or page header is incomplete,
    /// this becomes an end of WAL (sticky, returned by `next_record` too).
    pub fn finish(&mut self) -> WalError {
        if let Some(e) = &self.failed {
            return e.clone();
        }
        let lsn = self.next_record_lsn();
        self.fail(WalError::EndOfWal {
            lsn,
            reason: EndOfWalReason::IncompleteInput,
        })
    }

    /// Returns the next complete record, `Ok(None)` when more input is needed.
    pub fn next_record(&mut self) -> Result<Option<DecodedRecord>, WalError> {
        let mut rec = DecodedRecord::default();
        Ok(self.next_record_into(&mut rec)?.then_some(rec))
    }

    /// Like [`next_record`](Self::next_record) but decodes into `out`, reusing its buffers
    /// (no allocation per record in steady state). Returns `Ok(false)` when more input is
    /// needed; `out` is then unspecified.
    pub fn next_record_into(&mut self, out: &mut DecodedRecord) -> Result<bool, WalError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        match self.step(out) {
            Ok(done) => Ok(done),
            Err(e) => Err(self.fail(e)),
        }
    }

    fn step(&mut self, out: &mut DecodedRecord) -> Result<bool, WalError> {
        loop {
            if let Phase::SkipRaw { until } = self.phase {
                let want = until.0.saturating_sub(self.pos.0);
                let n = (self.avail().len() as u64).min(want) as usize;
                self.consume(n);
                if self.pos < until {
                    return Ok(false);
                }
                self.phase = Phase::RecordStart;
                continue;
            }

            if self.pos.page_offset() == 0 {
                if !self.read_page_header()? {
                    return Ok(false);
                }
                continue;
            }

            let page_left = XLOG_BLCKSZ - self.pos.page_offset();
            match self.phase {
                Phase::SkipRaw { .. } => {}
                Phase::SkipContinuation { remaining } => {
                    let n = self.avail().len().min(page_left).min(remaining as usize);
                    if n == 0 && remaining > 0 {
                        return Ok(false);
                    }
                    self.consume(n);
                    let remaining = remaining - n as u32;
                    if remaining == 0 {
                        self.phase = Phase::SkipRaw {
                            until: Lsn(maxalign(self.pos.0)),
                        };
                    } else {
                        self.phase = Phase::SkipContinuation { remaining };
                    }
                }
                Phase::RecordStart => {
                    // Fast paths: the whole record is buffered and on this page (most
                    // records), or read in place across pages; same checks as the
                    // incremental path below, in one step.
                    let avail = self.avail();
                    if avail.len() >= SIZE_OF_XLOG_RECORD {
                        let total = le_u32(avail, 0);
                        let len = total as usize;
                        let start = self.pos;
                        if len >= SIZE_OF_XLOG_RECORD && len <= page_left && len <= avail.len() {
                            // The records after this one, while this one is checked and
                            // decoded (the hardware's prefetcher stops at 4 KB boundaries).
                            #[cfg(target_arch = "x86_64")]
                            if let Some(ahead) = avail.get(PREFETCH_AHEAD) {
                                // SAFETY: a prefetch of an address inside the input; it
                                // reads nothing and cannot fault.
                                unsafe {
                                    std::arch::x86_64::_mm_prefetch::<
                                        { std::arch::x86_64::_MM_HINT_T0 },
                                    >(
                                        std::ptr::from_ref(ahead).cast::<i8>()
                                    )
                                };
                            }
                            self.check_total_len(start, total)?;
                            self.check_header(start, &avail[..SIZE_OF_XLOG_RECORD])?;
                            if self.shared.is_some() {
                                self.complete_in_place(start, len, len, out)?;
                                return Ok(true);
                            }
                            self.rec.clear();
                            let s = self.buf_pos;
                            self.rec.extend_from_slice(&self.buf[s..s + len]);
                            self.consume(len);
                            self.complete_record(start, out)?;
                            return Ok(true);
                        }
                        if len > page_left
                            && page_left >= SIZE_OF_XLOG_RECORD
                            && self.shared.is_some()
                        {
                            self.check_total_len(start, total)?;
                            self.check_header(start, &avail[..SIZE_OF_XLOG_RECORD])?;
                            if let Some(span) = self.span_in_place(len, page_left) {
                                // The pages it continues on are checked: the last is the
                                // latest page read (same timeline, see `span_in_place`).
                                self.latest_page = self.pos.add(span as u64 - 1).page_start();
                                self.complete_in_place(start, len, span, out)?;
                                return Ok(true);
                            }
                        }
                    }
                    self.rec.clear();
                    self.phase = Phase::InRecord {
                        start: self.pos,
                        total: 0,
                        header_ok: false,
                    };
                }
                Phase::InRecord {
                    start,
                    mut total,
                    mut header_ok,
                } => {
                    let got = self.rec.len();
                    let want = if got < SIZE_OF_XLOG_RECORD {
                        SIZE_OF_XLOG_RECORD - got
                    } else {
                        total as usize - got
                    };
                    let n = self.avail().len().min(page_left).min(want);
                    if n == 0 {
                        return Ok(false);
                    }
                    let s = self.buf_pos;
                    let input = input_of(&self.buf, &self.shared);
                    self.rec.extend_from_slice(&input[s..s + n]);
                    self.consume(n);
                    if got < 4 && self.rec.len() >= 4 {
                        total = le_u32(&self.rec, 0);
                        self.check_total_len(start, total)?;
                    }
                    if !header_ok && self.rec.len() >= SIZE_OF_XLOG_RECORD {
                        self.check_header(start, &self.rec)?;
                        header_ok = true;
                    }
                    if header_ok && self.rec.len() == total as usize {
                        self.complete_record(start, out)?;
                        return Ok(true);
                    }
                    self.phase = Phase::InRecord {
                        start,
                        total,
                        header_ok,
                    };
                }
            }
        }
    }

    #[inline]
    fn check_total_len(&self, start: Lsn, total: u32) -> Result<(), WalError> {
        if total == 0 {
            return Err(WalError::EndOfWal {
                lsn: start,
                reason: EndOfWalReason::ZeroRecordLength,
            });
        }
        if (total as usize) < SIZE_OF_XLOG_RECORD {
            return Err(WalError::InvalidRecordLength {
                lsn: start,
                length: total,
            });
        }
        if total > XLOG_RECORD_MAX_SIZE {
            return Err(WalError::RecordTooLong {
                lsn: start,
                length: total,
                max: XLOG_RECORD_MAX_SIZE,
            });
        }
        Ok(())
    }

    /// `ValidXLogRecordHeader`: rmgr id and prev-link, of the record header `header` (at
    /// least `SIZE_OF_XLOG_RECORD` bytes).
    fn check_header(&self, start: Lsn, header: &[u8]) -> Result<(), WalError> {
        let rmid = header[17];
        if !RmgrId(rmid).is_valid() {
            return Err(WalError::InvalidRmgr { lsn: start, rmid });
        }
        let prev = Lsn(le_u64(header, 8));
        match self.prev_lsn {
            Some(expected) if prev != expected => Err(WalError::IncorrectPrevLink {
                lsn: start,
                expected,
                found: prev,
            }),
            // First record after a random-access start: PostgreSQL can only check that
            // the prev-link points backwards.
            None if prev >= start => Err(WalError::IncorrectPrevLink {
                lsn: start,
                expected: start,
                found: prev,
            }),
            _ => Ok(()),
        }
    }

    /// For a record of `len` bytes at the input position that goes on past its page (with
    /// `page_left` bytes on it): how many input bytes it spans, page headers included, when
    /// all of it is in the mapped input and every page it continues on carries the header
    /// the incremental path would accept without further ado: this version's magic, only
    /// `XLP_FIRST_IS_CONTRECORD` (and the informational `XLP_BKP_REMOVABLE`), its own
    /// address, the timeline of the page before and `xlp_rem_len` equal to the bytes still
    /// missing (`XLogReaderValidatePageHeader` and the continuation checks of
    /// `XLogDecodeNextRecord`). `None` otherwise: the incremental path then reads the record
    /// and reports whatever is wrong, at the same place as always. Pure: nothing changes
    /// until the caller uses the answer.
    fn span_in_place(&self, len: usize, page_left: usize) -> Option<usize> {
        let avail = self.avail();
        let magic = self.cfg.version?.page_magic();
        let seg = self.cfg.segment_size as u64;
        let mut remaining = len - page_left;
        let mut off = page_left;
        loop {
            let h = avail.get(off..off + SIZE_OF_SHORT_PAGE_HEADER)?;
            let page = self.pos.0 + off as u64;
            if le_u16(h, 0) != magic
                || le_u16(h, 2) & !XLP_BKP_REMOVABLE != XLP_FIRST_IS_CONTRECORD
                || le_u32(h, 4) != self.latest_page_tli
                || le_u64(h, 8) != page
                || page.is_multiple_of(seg)
                || le_u32(h, 16) as usize != remaining
            {
                return None;
            }
            let n = remaining.min(XLOG_BLCKSZ - SIZE_OF_SHORT_PAGE_HEADER);
            off += SIZE_OF_SHORT_PAGE_HEADER + n;
            if avail.len() < off {
                return None;
            }
            remaining -= n;
            if remaining == 0 {
                return Some(off);
            }
        }
    }

    /// Completes the record of `len` bytes that takes the next `span` bytes of the mapped
    /// input, in place (no copy: see [`RecordView`]).
    fn complete_in_place(
        &mut self,
        start: Lsn,
        len: usize,
        span: usize,
        out: &mut DecodedRecord,
    ) -> Result<(), WalError> {
        let Some(shared) = &self.shared else {
            return Err(WalError::MalformedRecord {
                lsn: start,
                what: "record read in place without mapped input".into(),
            });
        };
        let view_start = shared.start() + self.buf_pos;
        match &mut out.view {
            // The same segment as the record before: no reference count to touch.
            Some(v) if Arc::ptr_eq(&v.map, shared.map()) => {
                v.start = view_start;
                v.len = len;
                v.assembled.take();
            }
            view => {
                *view = Some(RecordView {
                    map: shared.map().clone(),
                    start: view_start,
                    len,
                    assembled: std::sync::OnceLock::new(),
                })
            }
        }
        self.consume(span);
        let header =
            XLogRecord::parse(out.raw_header()).ok_or_else(|| WalError::MalformedRecord {
                lsn: start,
                what: "record shorter than its header".into(),
            })?;
        if !self.defer_verification {
            let computed = out.view.as_ref().map_or(0, |v| v.crc());
            if computed != header.crc {
                return Err(WalError::CrcMismatch {
                    lsn: start,
                    stored: header.crc,
                    computed,
                });
            }
        }
        self.finish_record(start, header, out)
    }

    fn complete_record(&mut self, start: Lsn, out: &mut DecodedRecord) -> Result<(), WalError> {
        let header = XLogRecord::parse(&self.rec).ok_or_else(|| WalError::MalformedRecord {
            lsn: start,
            what: "record shorter than its header".into(),
        })?;
        if !self.defer_verification {
            let computed = record_crc(&self.rec);
            if computed != header.crc {
                return Err(WalError::CrcMismatch {
                    lsn: start,
                    stored: header.crc,
                    computed,
                });
            }
        }
        std::mem::swap(&mut out.raw, &mut self.rec);
        out.view = None;
        self.finish_record(start, header, out)
    }

    /// The end of a checked record: where the next one starts, the record's fields and body.
    fn finish_record(
        &mut self,
        start: Lsn,
        header: XLogRecord,
        out: &mut DecodedRecord,
    ) -> Result<(), WalError> {
        let seg = self.cfg.segment_size;
        let end = if header.rmid == RM_XLOG_ID && header.info & XLR_RMGR_INFO_MASK == XLOG_SWITCH {
            // The switch record "extends" to the end of its segment; the rest is zeroed,
            // without page headers (CopyXLogRecordToWAL), and reading resumes at the next
            // segment.
            let off = self.pos.segment_offset(seg);
            if off == 0 {
                self.pos
            } else {
                self.pos.add(seg as u64 - off)
            }
        } else {
            Lsn(maxalign(self.pos.0))
        };
        self.phase = Phase::SkipRaw { until: end };
        self.prev_lsn = Some(start);
        out.lsn = start;
        out.end_lsn = end;
        out.header = header;
        // Records of a stream decoded from its start carry the version of the pages read;
        // one started mid-record (no page header yet) is read as the configured one.
        out.version = self.cfg.version.unwrap_or_default();
        if self.defer_verification {
            out.blocks.clear();
            out.main_data_len = 0;
            out.verified = false;
            return Ok(());
        }
        out.verified = true;
        decode_body(out)
    }

    /// Reads and validates the page header at `pos` (page-aligned). Returns `Ok(false)` if
    /// more bytes are needed.
    fn read_page_header(&mut self) -> Result<bool, WalError> {
        let page_lsn = self.pos;
        let avail = self.avail();
        if avail.len() < WalPageHeader::needed_len(avail) {
            return Ok(false);
        }
        let Some(hdr) = WalPageHeader::parse(avail) else {
            return Ok(false);
        };
        self.validate_page_header(&hdr, page_lsn)?;
        self.consume(hdr.size());
        let first = std::mem::replace(&mut self.first_page, false);
        let contrecord = hdr.info & XLP_FIRST_IS_CONTRECORD != 0;
        let overwrite = hdr.info & XLP_FIRST_IS_OVERWRITE_CONTRECORD != 0;
        match self.phase {
            Phase::RecordStart if first => {
                if contrecord && !overwrite && hdr.rem_len > 0 {
                    self.phase = Phase::SkipContinuation {
                        remaining: hdr.rem_len,
                    };
                }
            }
            Phase::RecordStart => {
                if contrecord {
                    return Err(WalError::UnexpectedContrecord { lsn: self.pos });
                }
            }
            Phase::SkipContinuation { .. } => {
                if !contrecord {
                    return Err(WalError::MissingContrecord {
                        lsn: page_lsn,
                        record_lsn: page_lsn,
                    });
                }
                self.phase = Phase::SkipContinuation {
                    remaining: hdr.rem_len,
                };
                if hdr.rem_len == 0 {
                    self.phase = Phase::RecordStart;
                }
            }
            Phase::InRecord { start, total, .. } => {
                if overwrite {
                    // The record we were assembling was abandoned after a crash; an
                    // XLOG_OVERWRITE_CONTRECORD record starts on this page instead.
                    log::debug!("record at {start} abandoned: overwrite contrecord at {page_lsn}");
                    self.rec.clear();
                    self.phase = Phase::RecordStart;
                    return Ok(true);
                }
                if !contrecord {
                    return Err(WalError::MissingContrecord {
                        lsn: page_lsn,
                        record_lsn: start,
                    });
                }
                let expected = total as u64 - self.rec.len() as u64;
                if hdr.rem_len == 0 || hdr.rem_len as u64 != expected {
                    return Err(WalError::ContrecordLengthMismatch {
                        lsn: page_lsn,
                        record_lsn: start,
                        expected,
                        found: hdr.rem_len,
                    });
                }
            }
            Phase::SkipRaw { .. } => {}
        }
        Ok(true)
    }

    /// `XLogReaderValidatePageHeader`, plus the end-of-WAL classification.
    fn validate_page_header(&mut self, hdr: &WalPageHeader, page_lsn: Lsn) -> Result<(), WalError> {
        if hdr.is_zeroed() {
            return Err(WalError::EndOfWal {
                lsn: page_lsn,
                reason: EndOfWalReason::ZeroedPage,
            });
        }
        match (PgVersion::from_page_magic(hdr.magic), self.cfg.version) {
            (Some(found), Some(expected)) if found != expected => {
                return Err(WalError::VersionMismatch {
                    lsn: page_lsn,
                    expected,
                    found,
                });
            }
            (Some(found), None) => self.cfg.version = Some(found),
            (Some(_), Some(_)) => {}
            (None, _) => {
                return Err(WalError::InvalidPageMagic {
                    lsn: page_lsn,
                    magic: hdr.magic,
                });
            }
        }
        if hdr.info & !XLP_ALL_FLAGS != 0 {
            return Err(WalError::InvalidPageInfo {
                lsn: page_lsn,
                info: hdr.info,
            });
        }
        if let Some(long) = hdr.long {
            match self.cfg.system_identifier {
                Some(expected) if expected != long.system_identifier => {
                    return Err(WalError::SystemIdMismatch {
                        lsn: page_lsn,
                        expected,
                        found: long.system_identifier,
                    });
                }
                _ => {}
            }
            if long.segment_size != self.cfg.segment_size {
                return Err(WalError::SegmentSizeMismatch {
                    lsn: page_lsn,
                    expected: self.cfg.segment_size,
                    found: long.segment_size,
                });
            }
            if long.xlog_blcksz as usize != XLOG_BLCKSZ {
                return Err(WalError::BlockSizeMismatch {
                    lsn: page_lsn,
                    found: long.xlog_blcksz,
                });
            }
        } else if page_lsn.segment_offset(self.cfg.segment_size) == 0 {
            return Err(WalError::MissingLongHeader {
                lsn: page_lsn,
                info: hdr.info,
            });
        }
        if hdr.page_addr != page_lsn {
            // A recycled segment still holds pages of an older incarnation at the same
            // offset: the valid WAL ends here. Anything else is corruption.
            let seg = self.cfg.segment_size;
            if hdr.page_addr < page_lsn
                && hdr.page_addr.segment_offset(seg) == page_lsn.segment_offset(seg)
            {
                return Err(WalError::EndOfWal {
                    lsn: page_lsn,
                    reason: EndOfWalReason::RecycledPage {
                        page_addr: hdr.page_addr,
                    },
                });
            }
            return Err(WalError::UnexpectedPageAddr {
                lsn: page_lsn,
                found: hdr.page_addr,
            });
        }
        if let Some(tli) = self.cfg.timeline
            && hdr.timeline > tli
        {
            return Err(WalError::TimelineMismatch {
                lsn: page_lsn,
                expected: tli,
                found: hdr.timeline,
            });
        }
        if page_lsn > self.latest_page && hdr.timeline < self.latest_page_tli {
            return Err(WalError::TimelineOutOfSequence {
                lsn: page_lsn,
                previous: self.latest_page_tli,
                found: hdr.timeline,
            });
        }
        if let Some(long) = hdr.long {
            self.cfg
                .system_identifier
                .get_or_insert(long.system_identifier);
        }
        self.latest_page = page_lsn;
        self.latest_page_tli = hdr.timeline;
        Ok(())
    }
}

/// The decoder's input: the shared bytes when it reads in place, else its own buffer (a
/// function of the two fields, so that it borrows them and not the whole decoder).
#[inline]
fn input_of<'a>(buf: &'a [u8], shared: &'a Option<SharedBytes>) -> &'a [u8] {
    match shared {
        Some(s) => s.as_slice(),
        None => buf,
    }
}

/// Options of [`WalFileReader`].
#[derive(Debug, Clone, Default)]
pub struct FileReaderOptions {
    /// Timeline of the segment files to read; default: the highest timeline that has the
    /// start segment in the directory.
    pub timeline: Option<u32>,
    /// Stop before bytes at or beyond this LSN (records ending after it are not returned),
    /// like `pg_waldump --end`.
    pub end: Option<Lsn>,
    /// Expected system identifier; default: the one in the first segment read.
    pub system_identifier: Option<u64>,
    /// Read chunk size (default 1 MB).
    pub chunk_size: Option<usize>,
    /// See [`WalStreamDecoder::set_defer_verification`].
    pub defer_verification: bool,
    /// Read files on a separate thread, ahead of decoding.
    pub read_ahead: bool,
    /// Map segment files and decode them in place instead of reading them into buffers
    /// (see [`super::mapped`]: only for files nobody shrinks while they are read; the
    /// chunk size is then a whole segment).
    pub map_files: bool,
    /// Expected PostgreSQL version; default: the one of the first page read.
    pub version: Option<PgVersion>,
}

/// Reads records from the segment files of a directory (e.g. `pg_wal`), starting with the
/// first record at or after a given LSN.
#[derive(Debug)]
pub struct WalFileReader {
    timeline: u32,
    seg_size: u32,
    start: Lsn,
    decoder: WalStreamDecoder,
    input: Input,
    /// A spare buffer handed back by the decoder, reused for the next chunk.
    spare: Vec<u8>,
    done: bool,
}

/// Where chunks come from: read on demand, or from a read-ahead thread.
#[derive(Debug)]
enum Input {
    Direct(SegmentSource),
    ReadAhead {
        chunks: std::sync::mpsc::Receiver<Chunk>,
        recycle: std::sync::mpsc::Sender<Vec<u8>>,
        /// Mapped chunks the decoder is done with, unmapped by the read-ahead thread
        /// (`munmap` was ~7% of the decoding thread's time).
        retire: std::sync::mpsc::Sender<SharedBytes>,
    },
}

/// One step of reading segment files in order.
#[derive(Debug)]
enum Chunk {
    Data(Vec<u8>),
    /// Part of a mapped segment file.
    Mapped(SharedBytes),
    /// The `end` bound is reached.
    EndBound,
    Failed(WalError),
}

/// Sequential reader of consecutive segment files, in chunks.
#[derive(Debug)]
struct SegmentSource {
    dir: PathBuf,
    timeline: u32,
    seg_size: u32,
    end: Option<Lsn>,
    chunk: usize,
    /// Map segment files instead of reading them.
    map_files: bool,
    /// Segment number of the next file to open.
    segno: u64,
    file: Option<OpenSegment>,
    /// Position of the next byte to read.
    read_lsn: Lsn,
}

#[derive(Debug)]
struct OpenSegment {
    file: File,
    path: PathBuf,
    /// Bytes of the file consumed (from offset 0).
    offset: u64,
}

impl SegmentSource {
    /// Reads the next chunk into `buf` (reusing its allocation).
    fn next_chunk(&mut self, mut buf: Vec<u8>) -> Chunk {
        // Bytes left before the end bound; a mapped segment is one chunk up to it.
        let mut bound = u64::MAX;
        if let Some(end) = self.end {
            if self.read_lsn >= end {
                return Chunk::EndBound;
            }
            bound = end.0 - self.read_lsn.0;
        }
        let max = bound.min(self.chunk as u64);
        if self.file.is_none() {
            let path = self
                .dir
                .join(segment_file_name(self.timeline, self.segno, self.seg_size));
            let mut file = match File::open(&path) {
                Ok(f) => f,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    return Chunk::Failed(WalError::EndOfWal {
                        lsn: self.read_lsn,
                        reason: EndOfWalReason::MissingSegment {
                            file: path.display().to_string(),
                        },
                    });
                }
                Err(e) => return Chunk::Failed(io_err(self.read_lsn, &path, e)),
            };
            if self.map_files
                && let Some(chunk) = self.map_segment(&file, &path, bound)
            {
                return chunk;
            }
            let offset = self.read_lsn.segment_offset(self.seg_size);
            if offset > 0
                && let Err(e) = file.seek(SeekFrom::Start(offset))
            {
                return Chunk::Failed(io_err(self.read_lsn, &path, e));
            }
            self.file = Some(OpenSegment { file, path, offset });
        }
        let seg_size = self.seg_size as u64;
        let Some(seg) = self.file.as_mut() else {
            return Chunk::EndBound;
        };
        let want = max.min(seg_size - seg.offset) as usize;
        // A recycled buffer already has this length: no zeroing in steady state.
        buf.resize(want, 0);
        let mut got = 0;
        while got < want {
            match seg.file.read(&mut buf[got..]) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Chunk::Failed(io_err(self.read_lsn, &seg.path, e)),
            }
        }
        seg.offset += got as u64;
        self.read_lsn = self.read_lsn.add(got as u64);
        if got < want {
            // A segment file is always exactly wal_segment_size long.
            return Chunk::Failed(WalError::TruncatedSegment {
                lsn: self.read_lsn,
                file: seg.path.display().to_string(),
                size: seg.offset,
                expected: seg_size,
            });
        }
        if seg.offset == seg_size {
            self.file = None;
            self.segno += 1;
        }
        buf.truncate(got);
        Chunk::Data(buf)
    }
}

impl SegmentSource {
    /// The rest of the segment file `file` (at most `max` bytes), mapped: one chunk. `None`
    /// for a file shorter than a segment: reading a mapping past the end of its file raises
    /// SIGBUS, so such a file is read as before (and reported truncated where it ends).
    fn map_segment(&mut self, file: &File, path: &Path, max: u64) -> Option<Chunk> {
        let seg_size = self.seg_size as u64;
        let size = match file.metadata() {
            Ok(m) => m.len(),
            Err(e) => return Some(Chunk::Failed(io_err(self.read_lsn, path, e))),
        };
        if size < seg_size {
            return None;
        }
        let offset = self.read_lsn.segment_offset(self.seg_size);
        let want = max.min(seg_size - offset);
        let populate = offset as usize..(offset + want) as usize;
        let map = match MappedFile::map_populating(file, seg_size as usize, populate) {
            Ok(m) => std::sync::Arc::new(m),
            Err(e) => return Some(Chunk::Failed(io_err(self.read_lsn, path, e))),
        };
        self.read_lsn = self.read_lsn.add(want);
        if offset + want == seg_size {
            self.segno += 1;
        }
        Some(Chunk::Mapped(SharedBytes::new(
            map,
            offset as usize,
            (offset + want) as usize,
        )))
    }
}

fn io_err(lsn: Lsn, path: &Path, e: io::Error) -> WalError {
    WalError::Io {
        lsn,
        path: path.display().to_string(),
        source: Arc::new(e),
    }
}

impl WalFileReader {
    /// Opens `dir` for reading from `start`. The segment size and system identifier are
    /// taken from the long header of the start segment.
    pub fn open(
        dir: impl AsRef<Path>,
        start: Lsn,
        opts: FileReaderOptions,
    ) -> Result<WalFileReader, WalError> {
        let dir = dir.as_ref().to_path_buf();
        let (timeline, seg_size, sysid) = Self::probe(&dir, start, opts.timeline)?;
        let cfg = DecoderConfig {
            segment_size: seg_size,
            system_identifier: opts.system_identifier.or(Some(sysid)),
            timeline: Some(timeline),
            version: opts.version,
        };
        let page = start.page_start();
        let mut decoder = WalStreamDecoder::new(page, cfg)?;
        decoder.set_defer_verification(opts.defer_verification);
        let mut source = SegmentSource {
            dir,
            timeline,
            seg_size,
            end: opts.end,
            chunk: opts.chunk_size.unwrap_or(1 << 20).max(XLOG_BLCKSZ),
            map_files: opts.map_files,
            segno: page.segment_no(seg_size),
            file: None,
            read_lsn: page,
        };
        let input = if opts.read_ahead {
            // A thread reads the files ahead (at most 4 chunks), so file I/O overlaps
            // decoding; it stops when the reader is dropped or reading ends.
            let (tx, chunks) = std::sync::mpsc::sync_channel::<Chunk>(4);
            let (recycle, recycled) = std::sync::mpsc::channel::<Vec<u8>>();
            let (retire, retired) = std::sync::mpsc::channel::<SharedBytes>();
            std::thread::Builder::new()
                .name("wal-read-ahead".into())
                .spawn(move || {
                    loop {
                        while let Ok(done) = retired.try_recv() {
                            drop(done);
                        }
                        let buf = recycled.try_recv().unwrap_or_default();
                        let chunk = source.next_chunk(buf);
                        let last = !matches!(chunk, Chunk::Data(_) | Chunk::Mapped(_));
                        if tx.send(chunk).is_err() || last {
                            return;
                        }
                    }
                })
                .map_err(|e| WalError::Io {
                    lsn: start,
                    path: "read-ahead thread".into(),
                    source: Arc::new(e),
                })?;
            Input::ReadAhead {
                chunks,
                recycle,
                retire,
            }
        } else {
            Input::Direct(source)
        };
        Ok(WalFileReader {
            timeline,
            seg_size,
            start,
            decoder,
            input,
            spare: Vec::new(),
            done: false,
        })
    }

    /// Finds the start segment's file and reads its long header.
    fn probe(dir: &Path, start: Lsn, timeline: Option<u32>) -> Result<(u32, u32, u64), WalError> {
        let entries = std::fs::read_dir(dir).map_err(|e| io_err(start, dir, e))?;
        // The segment size is unknown until a header is read: a file is the start segment
        // if its name designates the start for the segment size in its own long header.
        let mut best: Option<(u32, u32, u64)> = None;
        let mut first_error = None;
        for entry in entries {
            let entry = entry.map_err(|e| io_err(start, dir, e))?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if name.len() != 24 || !name.bytes().all(|b| b.is_ascii_hexdigit()) {
                continue;
            }
            let Ok(tli) = u32::from_str_radix(&name[0..8], 16) else {
                continue;
            };
            if timeline.is_some_and(|t| t != tli) || best.is_some_and(|(t, _, _)| t >= tli) {
                continue;
            }
            if !Self::may_hold(name, start) {
                continue;
            }
            match Self::read_long_header(&entry.path(), start) {
                Ok((seg_size, sysid)) => {
                    if parse_segment_file_name(name, seg_size)
                        == Some((tli, start.segment_no(seg_size)))
                    {
                        best = Some((tli, seg_size, sysid));
                    }
                }
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        match (best, first_error) {
            (Some(b), _) => Ok(b),
            (None, Some(e)) => Err(e),
            (None, None) => Err(WalError::EndOfWal {
                lsn: start,
                reason: EndOfWalReason::MissingSegment {
                    file: dir
                        .join(segment_file_name(
                            timeline.unwrap_or(1),
                            start.segment_no(DEFAULT_SEGMENT_SIZE),
                            DEFAULT_SEGMENT_SIZE,
                        ))
                        .display()
                        .to_string(),
                },
            }),
        }
    }

    /// Whether `name` designates the segment of `start` for some valid segment size.
    fn may_hold(name: &str, start: Lsn) -> bool {
        let mut size = MIN_SEGMENT_SIZE;
        while size <= MAX_SEGMENT_SIZE {
            if parse_segment_file_name(name, size).map(|(_, s)| s) == Some(start.segment_no(size)) {
                return true;
            }
            size *= 2;
        }
        false
    }

    /// Segment size and system identifier from a segment's long page header.
    fn read_long_header(path: &Path, start: Lsn) -> Result<(u32, u64), WalError> {
        let mut f = File::open(path).map_err(|e| io_err(start, path, e))?;
        let mut hdr = [0u8; SIZE_OF_LONG_PAGE_HEADER];
        f.read_exact(&mut hdr).map_err(|e| io_err(start, path, e))?;
        let h = WalPageHeader::parse(&hdr).ok_or_else(|| WalError::InvalidStart {
            lsn: start,
            what: format!("cannot parse the first page header of {}", path.display()),
        })?;
        if PgVersion::from_page_magic(h.magic).is_none() {
            return Err(WalError::InvalidPageMagic {
                lsn: h.page_addr,
                magic: h.magic,
            });
        }
        let Some(long) = h.long else {
            return Err(WalError::MissingLongHeader {
                lsn: h.page_addr,
                info: h.info,
            });
        };
        if !is_valid_segment_size(long.segment_size) {
            return Err(WalError::InvalidSegmentSize {
                lsn: h.page_addr,
                found: long.segment_size,
            });
        }
        Ok((long.segment_size, long.system_identifier))
    }

    pub fn segment_size(&self) -> u32 {
        self.seg_size
    }
    pub fn timeline(&self) -> u32 {
        self.timeline
    }
    pub fn system_identifier(&self) -> Option<u64> {
        self.decoder.system_identifier()
    }
    pub fn decoder(&self) -> &WalStreamDecoder {
        &self.decoder
    }

    /// Next record at or after the start LSN; `Ok(None)` at the `end` bound.
    /// A missing next segment ends the WAL with `WalError::EndOfWal`.
    pub fn next_record(&mut self) -> Result<Option<DecodedRecord>, WalError> {
        let mut rec = DecodedRecord::default();
        Ok(self.next_record_into(&mut rec)?.then_some(rec))
    }

    /// Allocation-free variant of [`next_record`](Self::next_record).
    pub fn next_record_into(&mut self, out: &mut DecodedRecord) -> Result<bool, WalError> {
        loop {
            if self.decoder.next_record_into(out)? {
                if out.lsn < self.start {
                    continue;
                }
                return Ok(true);
            }
            if self.done {
                return Ok(false);
            }
            // The record `out` held is done with: if it was read in place, its segment's
            // mapping goes with the chunk being retired, to be unmapped on the read-ahead
            // thread (`munmap` costs the decoding thread several percent).
            if let (Some(view), Input::ReadAhead { retire, .. }) = (out.view.take(), &self.input) {
                let len = view.map.as_slice().len();
                let _ = retire.send(SharedBytes::new(view.map, 0, len));
            }
            self.read_more()?;
        }
    }

    fn read_more(&mut self) -> Result<(), WalError> {
        let spare = std::mem::take(&mut self.spare);
        let chunk = match &mut self.input {
            Input::Direct(src) => src.next_chunk(spare),
            Input::ReadAhead {
                chunks, recycle, ..
            } => {
                let _ = recycle.send(spare);
                chunks.recv().unwrap_or(Chunk::EndBound)
            }
        };
        match chunk {
            Chunk::Data(v) => {
                self.spare = self.decoder.push_owned(v);
                Ok(())
            }
            Chunk::Mapped(bytes) => {
                let done = self.decoder.push_shared(bytes);
                if let (Some(done), Input::ReadAhead { retire, .. }) = (done, &self.input) {
                    // A stopped read-ahead thread hands it back: then it is unmapped here.
                    let _ = retire.send(done);
                }
                Ok(())
            }
            Chunk::EndBound => {
                self.done = true;
                Ok(())
            }
            Chunk::Failed(e) => {
                let e = match e {
                    // Report a missing segment where the next record was expected.
                    WalError::EndOfWal { reason, .. } => WalError::EndOfWal {
                        lsn: self.decoder.next_record_lsn(),
                        reason,
                    },
                    other => other,
                };
                Err(self.decoder.fail(e))
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    pub(crate) use crate::wal::record::tests::build_record;
    use crate::wal::rmgr::xlog::{self, XlogRecord};

    pub(crate) const SEG_START: u64 = 0x100_0000;

    /// Writes synthetic WAL: page headers at page boundaries, records MAXALIGNed.
    pub(crate) struct WalBuilder {
        pub(crate) out: Vec<u8>,
    }

    impl WalBuilder {
        fn pos(&self) -> u64 {
            SEG_START + self.out.len() as u64
        }

        fn header(&mut self, info: u16, rem_len: u32) {
            let addr = self.pos();
            let long = addr.is_multiple_of(DEFAULT_SEGMENT_SIZE as u64);
            let info = info | if long { XLP_LONG_HEADER } else { 0 };
            self.out.extend_from_slice(&XLOG_PAGE_MAGIC.to_le_bytes());
            self.out.extend_from_slice(&info.to_le_bytes());
            self.out.extend_from_slice(&1u32.to_le_bytes());
            self.out.extend_from_slice(&addr.to_le_bytes());
            self.out.extend_from_slice(&rem_len.to_le_bytes());
            self.out.extend_from_slice(&[0; 4]);
            if long {
                self.out.extend_from_slice(&7u64.to_le_bytes());
                self.out
                    .extend_from_slice(&DEFAULT_SEGMENT_SIZE.to_le_bytes());
                self.out
                    .extend_from_slice(&(XLOG_BLCKSZ as u32).to_le_bytes());
            }
        }

        /// Writes `rec` (or only its first `limit` bytes), returning its LSN.
        pub(crate) fn record(&mut self, rec: &[u8], limit: Option<usize>) -> Lsn {
            if self.pos().is_multiple_of(XLOG_BLCKSZ as u64) {
                self.header(0, 0);
            }
            let lsn = Lsn(self.pos());
            let n = limit.unwrap_or(rec.len());
            for (i, &b) in rec[..n].iter().enumerate() {
                if self.pos().is_multiple_of(XLOG_BLCKSZ as u64) {
                    self.header(XLP_FIRST_IS_CONTRECORD, (rec.len() - i) as u32);
                }
                self.out.push(b);
            }
            while limit.is_none() && !self.out.len().is_multiple_of(8) {
                self.out.push(0);
            }
            lsn
        }

        pub(crate) fn pad_to_page(&mut self) {
            while !self.pos().is_multiple_of(XLOG_BLCKSZ as u64) {
                self.out.push(0);
            }
        }
    }

    fn main_data(bytes: &[u8]) -> Vec<u8> {
        let mut v = vec![255u8, bytes.len() as u8];
        v.extend_from_slice(bytes);
        v
    }

    pub(crate) fn main_data_long(len: usize) -> Vec<u8> {
        let mut v = vec![254u8];
        v.extend_from_slice(&(len as u32).to_le_bytes());
        v.extend((0..len).map(|i| i as u8));
        v
    }

    fn decode_all(bytes: &[u8], chunk: usize) -> (Vec<DecodedRecord>, WalError) {
        let mut d = WalStreamDecoder::new(Lsn(SEG_START), DecoderConfig::default()).unwrap();
        let mut recs = Vec::new();
        for c in bytes.chunks(chunk) {
            d.push(c);
            loop {
                match d.next_record() {
                    Ok(Some(r)) => recs.push(r),
                    Ok(None) => break,
                    Err(e) => return (recs, e),
                }
            }
        }
        (recs, d.finish())
    }

    #[test]
    fn overwrite_contrecord_skips_the_abandoned_record() {
        let mut w = WalBuilder { out: Vec::new() };
        let a = w.record(
            &build_record(0, 0x30, 0, Lsn(0), &main_data(&[1, 0, 0, 0])),
            None,
        );
        // Fill the first page so that the abandoned record crosses into the second one.
        let filler = build_record(15, 0x00, 5, a, &main_data(&[0u8; 200]));
        let mut prev = a;
        while w.pos() + 2 * filler.len() as u64 <= SEG_START + XLOG_BLCKSZ as u64 - 100 {
            let f = build_record(15, 0x00, 5, prev, &main_data(&[0u8; 200]));
            prev = w.record(&f, None);
        }
        let big = build_record(10, 0x00, 9, prev, &main_data_long(8000));
        let abandoned_len = (SEG_START + XLOG_BLCKSZ as u64 - w.pos()) as usize;
        let abandoned = w.record(&big, Some(abandoned_len));
        assert_eq!(w.pos() % XLOG_BLCKSZ as u64, 0);
        // After the crash: the next page says the partial record was overwritten.
        w.header(XLP_FIRST_IS_OVERWRITE_CONTRECORD, 0);
        let mut body = abandoned.0.to_le_bytes().to_vec();
        body.extend_from_slice(&123i64.to_le_bytes());
        let c = w.record(&build_record(0, 0xD0, 0, prev, &main_data(&body)), None);
        let d = w.record(
            &build_record(0, 0x30, 0, c, &main_data(&[2, 0, 0, 0])),
            None,
        );
        w.pad_to_page();
        for chunk in [1, 13, 4096, 1 << 20] {
            let (recs, end) = decode_all(&w.out, chunk);
            assert!(
                matches!(
                    end,
                    WalError::EndOfWal {
                        reason: EndOfWalReason::ZeroRecordLength,
                        ..
                    }
                ),
                "{end}"
            );
            let lsns: Vec<Lsn> = recs.iter().map(|r| r.lsn).collect();
            assert!(!lsns.contains(&abandoned));
            assert_eq!(&lsns[lsns.len() - 2..], &[c, d]);
            let over = &recs[recs.len() - 2];
            assert_eq!(
                xlog::parse(over).unwrap(),
                XlogRecord::OverwriteContrecord {
                    overwritten_lsn: abandoned,
                    overwrite_time: 123
                }
            );
        }
    }

    #[test]
    fn page_aligned_start_skips_a_continued_record() {
        let mut w = WalBuilder { out: Vec::new() };
        let a = w.record(
            &build_record(0, 0x30, 0, Lsn(0), &main_data(&[1, 0, 0, 0])),
            None,
        );
        let big = build_record(10, 0x00, 9, a, &main_data_long(10000));
        let b = w.record(&big, None);
        let c = w.record(
            &build_record(0, 0x30, 0, b, &main_data(&[3, 0, 0, 0])),
            None,
        );
        w.pad_to_page();
        let (recs, _) = decode_all(&w.out, 777);
        assert_eq!(
            recs.iter().map(|r| r.lsn).collect::<Vec<_>>(),
            vec![a, b, c]
        );
        assert!(recs[1].end_lsn > Lsn(SEG_START + XLOG_BLCKSZ as u64));
        // Start on the page where `big` continues: the first record seen is `c`.
        let page = (c.0 - SEG_START) as usize / XLOG_BLCKSZ * XLOG_BLCKSZ;
        let mut d =
            WalStreamDecoder::new(Lsn(SEG_START + page as u64), DecoderConfig::default()).unwrap();
        d.push(&w.out[page..]);
        assert_eq!(d.next_record().unwrap().map(|r| r.lsn), Some(c));
    }

    #[test]
    fn the_version_is_learnt_from_the_page_magic_and_held_to() {
        let mut w = WalBuilder { out: Vec::new() };
        let a = w.record(
            &build_record(0, 0x30, 0, Lsn(0), &main_data(&[1, 0, 0, 0])),
            None,
        );
        w.record(&build_record(0, 0x30, 0, a, &main_data_long(9000)), None);
        w.pad_to_page();
        // Learnt: the builder writes 15's magic.
        let (recs, _) = decode_all(&w.out, 4096);
        assert_eq!(recs.len(), 2);
        assert!(recs.iter().all(|r| r.version == PgVersion::V15));
        // Expected another version: the first page is refused.
        let cfg = DecoderConfig {
            version: Some(PgVersion::V17),
            ..Default::default()
        };
        let mut d = WalStreamDecoder::new(Lsn(SEG_START), cfg).unwrap();
        d.push(&w.out);
        assert!(matches!(
            d.next_record(),
            Err(WalError::VersionMismatch {
                expected: PgVersion::V17,
                found: PgVersion::V15,
                ..
            })
        ));
        // A later page of another version (17's magic on the second page) is refused too.
        let mut mixed = w.out.clone();
        mixed[XLOG_BLCKSZ..XLOG_BLCKSZ + 2]
            .copy_from_slice(&PgVersion::V17.page_magic().to_le_bytes());
        let mut d = WalStreamDecoder::new(Lsn(SEG_START), DecoderConfig::default()).unwrap();
        d.push(&mixed);
        assert!(d.next_record().unwrap().is_some());
        assert!(matches!(
            d.next_record(),
            Err(WalError::VersionMismatch {
                found: PgVersion::V17,
                ..
            })
        ));
    }

    #[test]
    fn unaligned_start_must_be_a_record_start() {
        assert!(WalStreamDecoder::new(Lsn(SEG_START + 3), DecoderConfig::default()).is_err());
        assert!(WalStreamDecoder::new(Lsn(SEG_START + 8), DecoderConfig::default()).is_err());
        assert!(WalStreamDecoder::new(Lsn(SEG_START + 40), DecoderConfig::default()).is_ok());
        let bad = DecoderConfig {
            segment_size: 3 << 20,
            ..Default::default()
        };
        assert!(matches!(
            WalStreamDecoder::new(Lsn(SEG_START), bad),
            Err(WalError::InvalidSegmentSize { .. })
        ));
    }
}
