//! Property tests over real WAL: random mutations (bit flips, inserted and deleted bytes,
//! truncation) fed in random chunkings must never panic, and the outcome (records and the
//! final error) must not depend on the chunking. A second property mutates record bodies
//! with a valid CRC to reach the block-header parser, image restoration and main-data views.
//!
//! More cases: `PROPTEST_CASES=5000 cargo test -p redo-helper --release --test it fuzz_wal`.

use crate::common::wal_fixture;
use proptest::prelude::*;
use redo_helper::wal::desc::format_record;
use redo_helper::wal::record::{SIZE_OF_XLOG_RECORD, record_crc};
use redo_helper::wal::{DecodedRecord, DecoderConfig, Lsn, WalStreamDecoder};

const START: u64 = 0x100_0000;
/// Prefix of the first segment used as the fuzz corpus (page crossings, FPIs, many rmgrs).
const PREFIX: usize = 192 * 1024;

#[derive(Debug, Clone)]
enum Mutation {
    Flip { pos: usize, bit: u8 },
    Insert { pos: usize, byte: u8 },
    Delete { pos: usize, len: usize },
    Truncate { len: usize },
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        4 => (0..PREFIX, 0u8..8).prop_map(|(pos, bit)| Mutation::Flip { pos, bit }),
        1 => (0..PREFIX, any::<u8>()).prop_map(|(pos, byte)| Mutation::Insert { pos, byte }),
        1 => (0..PREFIX, 1usize..64).prop_map(|(pos, len)| Mutation::Delete { pos, len }),
        1 => (0..PREFIX).prop_map(|len| Mutation::Truncate { len }),
    ]
}

fn apply(mut v: Vec<u8>, muts: &[Mutation]) -> Vec<u8> {
    for m in muts {
        match *m {
            Mutation::Flip { pos, bit } if pos < v.len() => v[pos] ^= 1 << bit,
            Mutation::Insert { pos, byte } if pos <= v.len() => v.insert(pos, byte),
            Mutation::Delete { pos, len } if pos < v.len() => {
                let end = (pos + len).min(v.len());
                v.drain(pos..end);
            }
            Mutation::Truncate { len } => v.truncate(len),
            _ => {}
        }
    }
    v
}

/// Decodes with the given chunk sizes (cycled); returns (lsn, end, raw) per record and the
/// final error text. Also exercises images and descriptions of every record.
fn run(bytes: &[u8], chunks: &[usize]) -> (Vec<(u64, u64, Vec<u8>)>, String) {
    let mut d = WalStreamDecoder::new(Lsn(START), DecoderConfig::default()).unwrap();
    let mut out = Vec::new();
    let mut page = [0u8; 8192];
    let mut line = String::new();
    let mut pos = 0;
    let mut i = 0;
    let mut end = None;
    'outer: while pos < bytes.len() {
        let n = chunks[i % chunks.len()].max(1).min(bytes.len() - pos);
        i += 1;
        d.push(&bytes[pos..pos + n]);
        pos += n;
        loop {
            match d.next_record() {
                Ok(Some(r)) => {
                    for b in r.blocks() {
                        let _ = r.restore_block_image(b, &mut page);
                    }
                    line.clear();
                    format_record(&r, &mut line);
                    out.push((r.lsn.0, r.end_lsn.0, r.raw().to_vec()));
                }
                Ok(None) => break,
                Err(e) => {
                    end = Some(e.to_string());
                    break 'outer;
                }
            }
        }
    }
    let end = end.unwrap_or_else(|| d.finish().to_string());
    (out, end)
}

fn corpus() -> Vec<u8> {
    wal_fixture().seg1[..PREFIX].to_vec()
}

proptest! {
    // 96 cases by default (quick in debug builds); PROPTEST_CASES raises it for fuzzing.
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(96),
        ..ProptestConfig::default()
    })]

    #[test]
    fn mutated_wal_never_panics_and_ignores_chunking(
        muts in proptest::collection::vec(mutation(), 0..4),
        chunks in proptest::collection::vec(1usize..20_000, 1..8),
    ) {
        let bytes = apply(corpus(), &muts);
        let whole = run(&bytes, &[bytes.len().max(1)]);
        let chunked = run(&bytes, &chunks);
        prop_assert_eq!(whole.0.len(), chunked.0.len());
        prop_assert!(whole.0 == chunked.0);
        prop_assert_eq!(whole.1, chunked.1);
    }

    #[test]
    fn mutated_record_bodies_with_valid_crc_never_panic(
        pick in 0usize..2000,
        flips in proptest::collection::vec((0usize..10_000, 0u8..8), 1..6),
    ) {
        let (records, _) = run(&corpus(), &[1 << 20]);
        prop_assume!(!records.is_empty());
        let (lsn, _, raw) = &records[pick % records.len()];
        let mut raw = raw.clone();
        for (p, bit) in flips {
            let body = raw.len() - SIZE_OF_XLOG_RECORD;
            if body > 0 {
                raw[SIZE_OF_XLOG_RECORD + p % body] ^= 1 << bit;
            }
        }
        let crc = record_crc(&raw);
        raw[20..24].copy_from_slice(&crc.to_le_bytes());
        if let Ok(rec) = DecodedRecord::from_raw(Lsn(*lsn), raw) {
            let mut page = [0u8; 8192];
            for b in rec.blocks() {
                let _ = rec.restore_block_image(b, &mut page);
                let _ = rec.block_data(b);
            }
            let mut line = String::new();
            format_record(&rec, &mut line);
        }
    }
}
