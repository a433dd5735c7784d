//! Bad input for the WAL decoder, on real WAL: one complete segment produced by a throwaway
//! PostgreSQL 15 cluster, then damaged in specific ways. Each case must end in its own typed
//! error naming the LSN (or a clean end of WAL), never a panic; and a property test mutates
//! the segment at random and feeds it in random chunkings: same records, same error, no panic.

mod common;

use common::PgCluster;
use proptest::prelude::*;
use redo_helper::wal::{DecoderConfig, EndOfWalReason, Lsn, WalError, WalStreamDecoder};
use std::sync::OnceLock;

const SEG: usize = 16 << 20;

struct Segment {
    bytes: Vec<u8>,
    start: Lsn,
    system_identifier: u64,
    /// (lsn, total length) of every record that starts and ends inside the segment.
    records: Vec<(Lsn, u32)>,
}

/// One full segment of real WAL (inserts, an index, a checkpoint), generated once.
fn segment() -> &'static Segment {
    static SEGMENT: OnceLock<Segment> = OnceLock::new();
    SEGMENT.get_or_init(|| {
        let c = PgCluster::start(&[], &["wal_level = replica", "autovacuum = off"]);
        c.sql("CREATE TABLE t (id int PRIMARY KEY, v text)");
        c.sql("INSERT INTO t SELECT g, repeat(md5(g::text), 3) FROM generate_series(1, 60000) g");
        c.sql("CHECKPOINT");
        c.sql("UPDATE t SET v = v || 'x' WHERE id % 7 = 0");
        let lsn = c.sql("SELECT pg_current_wal_lsn()");
        let name = c.sql(&format!("SELECT pg_walfile_name('{lsn}')"));
        c.sql("SELECT pg_switch_wal()");
        let bytes = std::fs::read(c.wal_dir().join(&name)).expect("segment");
        assert_eq!(bytes.len(), SEG);
        let segno = u64::from_str_radix(&name[8..16], 16).unwrap() * 256
            + u64::from_str_radix(&name[16..24], 16).unwrap();
        let start = Lsn(segno * SEG as u64);
        let system_identifier = u64::from_le_bytes(bytes[24..32].try_into().unwrap());
        let (records, _) = decode(
            &bytes,
            start,
            cfg(Some(system_identifier), Some(1)),
            &[bytes.len()],
        );
        assert!(
            records.len() > 1000,
            "the segment should hold many records, got {}",
            records.len()
        );
        Segment {
            bytes,
            start,
            system_identifier,
            records,
        }
    })
}

fn cfg(sysid: Option<u64>, timeline: Option<u32>) -> DecoderConfig {
    DecoderConfig {
        segment_size: SEG as u32,
        system_identifier: sysid,
        timeline,
    }
}

/// Decodes `bytes` (starting at `start`) fed in chunks of the given sizes (cycled); returns
/// the records and the error that ended decoding.
fn decode(
    bytes: &[u8],
    start: Lsn,
    cfg: DecoderConfig,
    chunks: &[usize],
) -> (Vec<(Lsn, u32)>, WalError) {
    let mut d = WalStreamDecoder::new(start, cfg).expect("decoder");
    let mut out = Vec::new();
    let mut pos = 0;
    let mut i = 0;
    loop {
        loop {
            match d.next_record() {
                Ok(Some(r)) => out.push((r.lsn, r.total_len())),
                Ok(None) => break,
                Err(e) => return (out, e),
            }
        }
        if pos >= bytes.len() {
            return (out, d.finish());
        }
        let n = chunks[i % chunks.len()].max(1).min(bytes.len() - pos);
        d.push(&bytes[pos..pos + n]);
        pos += n;
        i += 1;
    }
}

fn damaged(f: impl FnOnce(&mut Vec<u8>)) -> (Vec<(Lsn, u32)>, WalError) {
    let s = segment();
    let mut b = s.bytes.clone();
    f(&mut b);
    decode(
        &b,
        s.start,
        cfg(Some(s.system_identifier), Some(1)),
        &[65536],
    )
}

/// A record in the middle of the segment that does not cross a page boundary.
fn middle_record() -> (usize, u32) {
    let s = segment();
    let (lsn, len) = s.records[s.records.len() / 2..]
        .iter()
        .copied()
        .find(|(l, n)| l.0 % 8192 + u64::from(*n) < 8192 && *n > 60)
        .expect("a record inside one page");
    ((lsn.0 - s.start.0) as usize, len)
}

#[test]
fn intact_segment_decodes_to_a_clean_end() {
    let s = segment();
    let (records, end) = decode(
        &s.bytes,
        s.start,
        cfg(Some(s.system_identifier), Some(1)),
        &[SEG],
    );
    assert_eq!(records, s.records);
    assert!(end.is_end_of_wal(), "{end}");
}

#[test]
fn wrong_magic() {
    let (_, e) = damaged(|b| b[5 * 8192] ^= 0xFF);
    assert!(
        matches!(e, WalError::InvalidPageMagic { lsn, .. } if lsn.0 % SEG as u64 == 5 * 8192),
        "{e}"
    );
}

#[test]
fn wrong_segment_size_in_long_header() {
    let (_, e) = damaged(|b| b[32..36].copy_from_slice(&(64u32 << 20).to_le_bytes()));
    assert!(
        matches!(e, WalError::SegmentSizeMismatch { found, .. } if found == 64 << 20),
        "{e}"
    );
}

#[test]
fn wrong_timeline() {
    let (_, e) = damaged(|b| b[3 * 8192 + 4..3 * 8192 + 8].copy_from_slice(&7u32.to_le_bytes()));
    assert!(
        matches!(
            e,
            WalError::TimelineMismatch {
                found: 7,
                expected: 1,
                ..
            }
        ),
        "{e}"
    );
}

#[test]
fn segment_from_another_cluster() {
    let s = segment();
    let (_, e) = decode(
        &s.bytes,
        s.start,
        cfg(Some(s.system_identifier ^ 1), None),
        &[SEG],
    );
    assert!(matches!(e, WalError::SystemIdMismatch { .. }), "{e}");
}

#[test]
fn flipped_payload_byte_is_a_crc_mismatch() {
    let (off, len) = middle_record();
    let (records, e) = damaged(|b| b[off + len as usize - 1] ^= 0x01);
    assert!(
        matches!(e, WalError::CrcMismatch { lsn, .. } if lsn.0 % SEG as u64 == off as u64),
        "{e}"
    );
    assert!(
        records.iter().all(|(l, _)| l.0 % SEG as u64 != off as u64),
        "the damaged record is not returned"
    );
}

#[test]
fn flipped_header_byte_names_the_rmgr() {
    let (off, _) = middle_record();
    // xl_rmid (after xl_info at 16); 22..=127 are neither built-in nor custom rmgr ids.
    let (_, e) = damaged(|b| b[off + 17] = 100);
    assert!(matches!(e, WalError::InvalidRmgr { rmid: 100, .. }), "{e}");
}

#[test]
fn absurd_record_length() {
    let (off, _) = middle_record();
    let (_, e) = damaged(|b| b[off..off + 4].copy_from_slice(&0xFFFF_FFF0u32.to_le_bytes()));
    assert!(
        matches!(
            e,
            WalError::RecordTooLong { .. } | WalError::InvalidRecordLength { .. }
        ),
        "{e}"
    );
}

#[test]
fn broken_prev_link() {
    let (off, _) = middle_record();
    let (_, e) = damaged(|b| b[off + 8] ^= 0x08); // xl_prev
    assert!(
        matches!(
            e,
            WalError::IncorrectPrevLink { .. } | WalError::CrcMismatch { .. }
        ),
        "{e}"
    );
}

#[test]
fn truncated_segment_ends_cleanly_as_incomplete() {
    let s = segment();
    let (off, _) = middle_record();
    let (records, e) = decode(
        &s.bytes[..off + 10],
        s.start,
        cfg(Some(s.system_identifier), Some(1)),
        &[4096],
    );
    assert!(
        matches!(
            e,
            WalError::EndOfWal {
                reason: EndOfWalReason::IncompleteInput,
                ..
            }
        ),
        "{e}"
    );
    assert_eq!(records, s.records[..records.len()]);
}

#[test]
fn zeroed_tail_is_end_of_wal_not_corruption() {
    let (off, _) = middle_record();
    let (records, e) = damaged(|b| b[off..].fill(0));
    assert!(e.is_end_of_wal(), "{e}");
    assert!(!records.is_empty());
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Random damage (byte flips, a truncation) and random chunking: never a panic, and the
    /// result does not depend on how the bytes were chunked.
    #[test]
    fn mutations_and_chunking_never_panic_and_agree(
        flips in proptest::collection::vec((0usize..SEG, any::<u8>()), 0..8),
        cut in proptest::option::of(0usize..SEG),
        chunks in proptest::collection::vec(1usize..20000, 1..6),
    ) {
        let s = segment();
        let mut b = s.bytes.clone();
        for (at, x) in &flips {
            b[*at] ^= x | 1;
        }
        if let Some(c) = cut {
            b.truncate(c);
        }
        let c = cfg(Some(s.system_identifier), Some(1));
        let (whole, e1) = decode(&b, s.start, c, &[b.len().max(1)]);
        let (chunked, e2) = decode(&b, s.start, c, &chunks);
        prop_assert_eq!(whole, chunked);
        prop_assert_eq!(e1.to_string(), e2.to_string());
    }
}
