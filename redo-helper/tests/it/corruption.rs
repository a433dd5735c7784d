//! Bad input: every corruption case is a typed error naming the LSN (or a clean end of
//! WAL), never a panic. Real WAL from a throwaway cluster is damaged in one place at a time.

use crate::common::{SEG, TempDir, wal_fixture};
use redo_helper::wal::page::{SIZE_OF_LONG_PAGE_HEADER, XLOG_BLCKSZ, XLP_FIRST_IS_CONTRECORD};
use redo_helper::wal::record::SIZE_OF_XLOG_RECORD;
use redo_helper::wal::{
    CompressionMethod, DecodedRecord, DecoderConfig, EndOfWalReason, FileReaderOptions, Lsn,
    WalError, WalFileReader, WalStreamDecoder,
};

const START: u64 = 0x100_0000;

/// Decodes `bytes` (starting at 0/1000000) in chunks of `chunk`; returns the records and
/// the error that stopped decoding (end of input becomes `EndOfWal(IncompleteInput)`).
fn decode(bytes: &[u8], chunk: usize, cfg: DecoderConfig) -> (Vec<DecodedRecord>, WalError) {
    let mut d = WalStreamDecoder::new(Lsn(START), cfg).unwrap();
    let mut recs = Vec::new();
    for piece in bytes.chunks(chunk.max(1)) {
        d.push(piece);
        loop {
            match d.next_record() {
                Ok(Some(r)) => recs.push(r),
                Ok(None) => break,
                Err(e) => return (recs, e),
            }
        }
    }
    let e = d.finish();
    (recs, e)
}

fn two_segments() -> Vec<u8> {
    let f = wal_fixture();
    let mut v = f.seg1.clone();
    v.extend_from_slice(&f.seg2);
    v
}

/// Baseline records of the undamaged WAL.
fn baseline() -> Vec<DecodedRecord> {
    let (recs, e) = decode(&two_segments(), 1 << 20, DecoderConfig::default());
    assert!(
        matches!(
            e,
            WalError::EndOfWal {
                reason: EndOfWalReason::ZeroRecordLength,
                ..
            }
        ),
        "undamaged WAL must end cleanly, got {e}"
    );
    assert!(recs.len() > 1000);
    recs
}

/// A record that lies within one page, somewhere in the first segment.
fn single_page_record(recs: &[DecodedRecord]) -> DecodedRecord {
    recs.iter()
        .skip(200)
        .find(|r| {
            r.lsn.page_offset() + r.total_len() as usize <= XLOG_BLCKSZ
                && r.total_len() > 60
                && r.lsn.0 < START + SEG as u64
        })
        .cloned()
        .expect("a record within one page")
}

fn off(lsn: Lsn) -> usize {
    (lsn.0 - START) as usize
}

#[test]
fn undamaged_wal_decodes_identically_in_any_chunking() {
    let base = baseline();
    for chunk in [1usize, 7, 8192, 100_003] {
        // 1-byte chunks over 32 MB would be slow in debug builds: use a prefix for those.
        let bytes = two_segments();
        let bytes = if chunk < 100 {
            &bytes[..2 << 20]
        } else {
            &bytes[..]
        };
        let (recs, _) = decode(bytes, chunk, DecoderConfig::default());
        assert!(!recs.is_empty());
        for (a, b) in recs.iter().zip(&base) {
            assert_eq!((a.lsn, a.end_lsn, a.raw()), (b.lsn, b.end_lsn, b.raw()));
        }
    }
}

#[test]
fn truncated_segment() {
    let f = wal_fixture();
    let dir = TempDir::new("trunc");
    std::fs::write(
        dir.path().join("000000010000000000000001"),
        &f.seg1[..5 << 20],
    )
    .unwrap();
    let mut r = WalFileReader::open(dir.path(), Lsn(START), FileReaderOptions::default()).unwrap();
    let e = loop {
        match r.next_record() {
            Ok(Some(_)) => {}
            Ok(None) => panic!("truncation not detected"),
            Err(e) => break e,
        }
    };
    match e {
        WalError::TruncatedSegment {
            size,
            expected,
            lsn,
            ..
        } => {
            assert_eq!((size, expected), (5 << 20, SEG as u64));
            assert_eq!(lsn, Lsn(START + (5 << 20)));
        }
        other => panic!("expected TruncatedSegment, got {other}"),
    }
}

/// Every record the file reader returns, and the error that stopped it.
fn read_all(dir: &std::path::Path, opts: FileReaderOptions) -> (Vec<(Lsn, Lsn, Vec<u8>)>, String) {
    let mut r = WalFileReader::open(dir, Lsn(START), opts).unwrap();
    let mut recs = Vec::new();
    loop {
        match r.next_record() {
            Ok(Some(rec)) => recs.push((rec.lsn, rec.end_lsn, rec.raw().to_vec())),
            Ok(None) => return (recs, "end bound".into()),
            Err(e) => return (recs, e.to_string()),
        }
    }
}

/// Segment files mapped and decoded in place (`map_files`) give exactly what reading them
/// into buffers gives: whole segments, an end bound inside a segment, a truncated segment
/// (read, not mapped: a mapping would fault past its end).
#[test]
fn mapped_segments_decode_as_read_ones() {
    let f = wal_fixture();
    let dir = TempDir::new("mapped");
    std::fs::write(dir.path().join("000000010000000000000001"), &f.seg1).unwrap();
    std::fs::write(dir.path().join("000000010000000000000002"), &f.seg2).unwrap();
    let bound = Lsn(START + SEG as u64 + (3 << 20) + 1234);
    for end in [None, Some(bound)] {
        let read = read_all(
            dir.path(),
            FileReaderOptions {
                end,
                ..Default::default()
            },
        );
        assert!(read.0.len() > 1000);
        for read_ahead in [false, true] {
            let mapped = read_all(
                dir.path(),
                FileReaderOptions {
                    end,
                    read_ahead,
                    map_files: true,
                    ..Default::default()
                },
            );
            assert_eq!(
                mapped.0.len(),
                read.0.len(),
                "end {end:?}, read-ahead {read_ahead}"
            );
            assert!(mapped.0 == read.0, "records differ (end {end:?})");
            assert_eq!(mapped.1, read.1);
        }
    }
    let short = TempDir::new("mapped-short");
    std::fs::write(
        short.path().join("000000010000000000000001"),
        &f.seg1[..5 << 20],
    )
    .unwrap();
    let read = read_all(short.path(), FileReaderOptions::default());
    let mapped = read_all(
        short.path(),
        FileReaderOptions {
            map_files: true,
            ..Default::default()
        },
    );
    assert!(read.1.contains("5242880"), "{}", read.1);
    assert_eq!((mapped.0.len(), mapped.1), (read.0.len(), read.1));
}

#[test]
fn missing_next_segment_is_end_of_wal() {
    let f = wal_fixture();
    let dir = TempDir::new("missing");
    std::fs::write(dir.path().join("000000010000000000000001"), &f.seg1).unwrap();
    let mut r = WalFileReader::open(dir.path(), Lsn(START), FileReaderOptions::default()).unwrap();
    let e = loop {
        match r.next_record() {
            Ok(Some(_)) => {}
            Ok(None) => panic!("expected end of WAL"),
            Err(e) => break e,
        }
    };
    assert!(
        matches!(
            e,
            WalError::EndOfWal {
                reason: EndOfWalReason::MissingSegment { .. },
                ..
            }
        ),
        "{e}"
    );
}

#[test]
fn flipped_byte_in_payload_is_crc_mismatch() {
    let recs = baseline();
    let rec = single_page_record(&recs);
    let mut bytes = two_segments();
    bytes[off(rec.lsn) + rec.total_len() as usize - 1] ^= 0x40;
    let (_, e) = decode(&bytes, 65536, DecoderConfig::default());
    match e {
        WalError::CrcMismatch { lsn, .. } => assert_eq!(lsn, rec.lsn),
        other => panic!("expected CrcMismatch, got {other}"),
    }
}

#[test]
fn flipped_bytes_in_record_header() {
    let recs = baseline();
    let rec = single_page_record(&recs);
    let o = off(rec.lsn);
    // xl_xid: covered by the CRC.
    let mut bytes = two_segments();
    bytes[o + 4] ^= 0x01;
    assert!(
        matches!(decode(&bytes, 65536, DecoderConfig::default()).1, WalError::CrcMismatch { lsn, .. } if lsn == rec.lsn)
    );
    // xl_prev: checked against the previous record before the CRC.
    let mut bytes = two_segments();
    bytes[o + 8] ^= 0x08;
    match decode(&bytes, 65536, DecoderConfig::default()).1 {
        WalError::IncorrectPrevLink { lsn, expected, .. } => {
            assert_eq!((lsn, expected), (rec.lsn, rec.prev()))
        }
        other => panic!("expected IncorrectPrevLink, got {other}"),
    }
    // xl_rmid out of range.
    let mut bytes = two_segments();
    bytes[o + 17] = 100;
    assert!(
        matches!(decode(&bytes, 65536, DecoderConfig::default()).1, WalError::InvalidRmgr { lsn, rmid: 100 } if lsn == rec.lsn)
    );
}

#[test]
fn absurd_record_lengths() {
    let recs = baseline();
    let rec = single_page_record(&recs);
    let o = off(rec.lsn);
    let mut bytes = two_segments();
    bytes[o..o + 4].copy_from_slice(&0xFFFF_FFF0u32.to_le_bytes());
    match decode(&bytes, 65536, DecoderConfig::default()).1 {
        WalError::RecordTooLong { lsn, length, .. } => {
            assert_eq!((lsn, length), (rec.lsn, 0xFFFF_FFF0))
        }
        other => panic!("expected RecordTooLong, got {other}"),
    }
    let mut bytes = two_segments();
    bytes[o..o + 4].copy_from_slice(&5u32.to_le_bytes());
    assert!(
        matches!(decode(&bytes, 65536, DecoderConfig::default()).1, WalError::InvalidRecordLength { lsn, length: 5 } if lsn == rec.lsn)
    );
    // Large but under the cap: memory grows only with bytes received, and the next page's
    // continuation header exposes the lie.
    let mut bytes = two_segments();
    bytes[o..o + 4].copy_from_slice(&(900u32 << 20).to_le_bytes());
    match decode(&bytes, 65536, DecoderConfig::default()).1 {
        WalError::ContrecordLengthMismatch { record_lsn, .. }
        | WalError::MissingContrecord { record_lsn, .. } => {
            assert_eq!(record_lsn, rec.lsn)
        }
        other => panic!("expected a contrecord error, got {other}"),
    }
}

#[test]
fn wrong_page_magic() {
    let mut bytes = two_segments();
    let page = 3 * XLOG_BLCKSZ;
    bytes[page..page + 2].copy_from_slice(&0xD111u16.to_le_bytes());
    match decode(&bytes, 65536, DecoderConfig::default()).1 {
        WalError::InvalidPageMagic { lsn, magic } => {
            assert_eq!((lsn, magic), (Lsn(START + page as u64), 0xD111))
        }
        other => panic!("expected InvalidPageMagic, got {other}"),
    }
}

#[test]
fn flipped_byte_in_page_header() {
    // xlp_pageaddr (offset 8): the page claims another address.
    let mut bytes = two_segments();
    let page = 5 * XLOG_BLCKSZ;
    bytes[page + 9] ^= 0x10;
    assert!(matches!(decode(&bytes, 65536, DecoderConfig::default()).1,
        WalError::UnexpectedPageAddr { lsn, .. } if lsn == Lsn(START + page as u64)));
    // xlp_info: an undefined flag bit.
    let mut bytes = two_segments();
    bytes[page + 2] |= 0x20;
    assert!(matches!(decode(&bytes, 65536, DecoderConfig::default()).1,
        WalError::InvalidPageInfo { lsn, .. } if lsn == Lsn(START + page as u64)));
    // xlp_rem_len of a continuation page.
    let recs = baseline();
    let spanning = recs
        .iter()
        .find(|r| {
            r.lsn.page_offset() + r.total_len() as usize > XLOG_BLCKSZ
                && r.lsn.0 < START + (SEG as u64) / 2
        })
        .expect("a record crossing a page");
    let next_page = off(spanning.lsn.page_start()) + XLOG_BLCKSZ;
    let mut bytes = two_segments();
    bytes[next_page + 16] ^= 0x01;
    assert!(matches!(decode(&bytes, 65536, DecoderConfig::default()).1,
        WalError::ContrecordLengthMismatch { record_lsn, .. } if record_lsn == spanning.lsn));
    // Continuation flag cleared.
    let mut bytes = two_segments();
    bytes[next_page + 2] &= !(XLP_FIRST_IS_CONTRECORD as u8);
    assert!(matches!(decode(&bytes, 65536, DecoderConfig::default()).1,
        WalError::MissingContrecord { record_lsn, .. } if record_lsn == spanning.lsn));
}

#[test]
fn wrong_segment_size() {
    let mut bytes = two_segments();
    bytes[SEG + 32..SEG + 36].copy_from_slice(&(32u32 << 20).to_le_bytes());
    match decode(&bytes, 65536, DecoderConfig::default()).1 {
        WalError::SegmentSizeMismatch {
            lsn,
            expected,
            found,
        } => {
            assert_eq!((lsn, expected, found), (Lsn(2 * START), 16 << 20, 32 << 20))
        }
        other => panic!("expected SegmentSizeMismatch, got {other}"),
    }
    // A first segment announcing an impossible size is refused when opening the directory.
    let f = wal_fixture();
    let dir = TempDir::new("segsize");
    let mut seg = f.seg1.clone();
    seg[32..36].copy_from_slice(&(3u32 << 20).to_le_bytes());
    std::fs::write(dir.path().join("000000010000000000000001"), &seg).unwrap();
    let e = WalFileReader::open(dir.path(), Lsn(START), FileReaderOptions::default()).unwrap_err();
    assert!(
        matches!(e, WalError::InvalidSegmentSize { found, .. } if found == 3 << 20),
        "{e}"
    );
}

#[test]
fn wrong_timeline() {
    let page = 10 * XLOG_BLCKSZ;
    let mut bytes = two_segments();
    bytes[page + 4..page + 8].copy_from_slice(&2u32.to_le_bytes());
    // Reading timeline 1: a page from timeline 2 does not belong here.
    let cfg = DecoderConfig {
        timeline: Some(1),
        ..Default::default()
    };
    match decode(&bytes, 65536, cfg).1 {
        WalError::TimelineMismatch {
            lsn,
            expected,
            found,
        } => {
            assert_eq!((lsn, expected, found), (Lsn(START + page as u64), 1, 2))
        }
        other => panic!("expected TimelineMismatch, got {other}"),
    }
    // Without an expected timeline, the next page going back to 1 is out of sequence.
    match decode(&bytes, 65536, DecoderConfig::default()).1 {
        WalError::TimelineOutOfSequence {
            lsn,
            previous,
            found,
        } => {
            assert_eq!(
                (lsn, previous, found),
                (Lsn(START + (page + XLOG_BLCKSZ) as u64), 2, 1)
            )
        }
        other => panic!("expected TimelineOutOfSequence, got {other}"),
    }
}

#[test]
fn segment_from_another_cluster() {
    let f = wal_fixture();
    let mut bytes = f.seg1.clone();
    bytes.extend_from_slice(&f.other_seg2);
    match decode(&bytes, 65536, DecoderConfig::default()).1 {
        WalError::SystemIdMismatch {
            lsn,
            expected,
            found,
        } => {
            assert_eq!(lsn, Lsn(2 * START));
            assert_ne!(expected, found);
        }
        other => panic!("expected SystemIdMismatch, got {other}"),
    }
    // Same through the file reader.
    let dir = TempDir::new("sysid");
    std::fs::write(dir.path().join("000000010000000000000001"), &f.seg1).unwrap();
    std::fs::write(dir.path().join("000000010000000000000002"), &f.other_seg2).unwrap();
    let mut r = WalFileReader::open(dir.path(), Lsn(START), FileReaderOptions::default()).unwrap();
    let e = loop {
        match r.next_record() {
            Ok(Some(_)) => {}
            Ok(None) => panic!("mismatch not detected"),
            Err(e) => break e,
        }
    };
    assert!(matches!(e, WalError::SystemIdMismatch { .. }), "{e}");
}

#[test]
fn recycled_page_is_end_of_wal() {
    // Page 7 of segment 2 replaced by page 7 of segment 1: an older incarnation at the same
    // offset, as in a recycled segment.
    let f = wal_fixture();
    let mut bytes = two_segments();
    let p = 7 * XLOG_BLCKSZ;
    bytes[SEG + p..SEG + p + XLOG_BLCKSZ].copy_from_slice(&f.seg1[p..p + XLOG_BLCKSZ]);
    match decode(&bytes, 65536, DecoderConfig::default()).1 {
        WalError::EndOfWal {
            lsn,
            reason: EndOfWalReason::RecycledPage { page_addr },
        } => {
            assert_eq!(
                (lsn, page_addr),
                (Lsn(2 * START + p as u64), Lsn(START + p as u64))
            );
        }
        other => panic!("expected end of WAL at a recycled page, got {other}"),
    }
}

#[test]
fn zeroed_page_is_end_of_wal() {
    let mut bytes = two_segments();
    let p = 9 * XLOG_BLCKSZ;
    bytes[p..p + XLOG_BLCKSZ].fill(0);
    assert!(matches!(decode(&bytes, 65536, DecoderConfig::default()).1,
        WalError::EndOfWal { lsn, reason: EndOfWalReason::ZeroedPage } if lsn == Lsn(START + p as u64)));
}

/// Builds a raw record with one block carrying a compressed image (CRC filled in).
fn record_with_image(bimg_info: u8, image: &[u8], hole: Option<(u16, u16)>) -> Vec<u8> {
    let mut body = vec![0u8, 0x10, 0, 0]; // block 0, HAS_IMAGE, no data
    body.extend_from_slice(&(image.len() as u16).to_le_bytes());
    body.extend_from_slice(&hole.map_or(0, |h| h.0).to_le_bytes());
    body.push(bimg_info | if hole.is_some() { 0x01 } else { 0 });
    if let Some((_, len)) = hole {
        body.extend_from_slice(&len.to_le_bytes());
    }
    for v in [1663u32, 5, 16384, 0] {
        body.extend_from_slice(&v.to_le_bytes());
    }
    body.extend_from_slice(image);
    let tot = (SIZE_OF_XLOG_RECORD + body.len()) as u32;
    let mut r = Vec::new();
    r.extend_from_slice(&tot.to_le_bytes());
    r.extend_from_slice(&0u32.to_le_bytes());
    r.extend_from_slice(&0u64.to_le_bytes());
    r.extend_from_slice(&[0xB0, 0, 0, 0]); // XLOG_FPI
    r.extend_from_slice(&[0; 4]);
    r.extend_from_slice(&body);
    let crc = redo_helper::wal::record::record_crc(&r);
    r[20..24].copy_from_slice(&crc.to_le_bytes());
    r
}

#[test]
fn decompression_bomb_is_refused() {
    // 200 KB of zeros compresses to well under a page; restoring must stop at BLCKSZ.
    let bomb = lz4_flex::block::compress(&vec![0u8; 200 << 10]);
    let raw = record_with_image(0x02 | 0x08, &bomb, None);
    let rec = DecodedRecord::from_raw(Lsn(0x5000028), raw).unwrap();
    let mut page = [0u8; 8192];
    match rec.restore_block_image(&rec.blocks()[0], &mut page) {
        Err(WalError::Decompression {
            lsn,
            block_id,
            method,
            ..
        }) => {
            assert_eq!(
                (lsn, block_id, method),
                (Lsn(0x5000028), 0, CompressionMethod::Lz4)
            )
        }
        other => panic!("expected Decompression error, got {other:?}"),
    }
    let bomb = zstd::bulk::compress(&vec![0u8; 200 << 10], 3).unwrap();
    let raw = record_with_image(0x02 | 0x10, &bomb, Some((100, 50)));
    let rec = DecodedRecord::from_raw(Lsn(0x5000028), raw).unwrap();
    assert!(matches!(
        rec.restore_block_image(&rec.blocks()[0], &mut page),
        Err(WalError::Decompression {
            method: CompressionMethod::Zstd,
            ..
        })
    ));
    // Real images of the fixture restore fine.
    let mut restored = 0;
    for r in baseline() {
        for b in r.blocks() {
            if b.has_image() {
                assert!(r.restore_block_image(b, &mut page).unwrap());
                restored += 1;
            }
        }
    }
    assert!(restored > 100);
}

#[test]
fn long_header_size_matches() {
    assert_eq!(SIZE_OF_LONG_PAGE_HEADER, 40);
}
