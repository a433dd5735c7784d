//! Full page images: decompression (pglz, lz4, zstd) and hole restoration back to an 8 KB
//! page, as `RestoreBlockImage` does in `access/transam/xlogreader.c`.
//!
//! Output is always bounded by `BLCKSZ`: decompressors write into a fixed 8 KB buffer and
//! must produce exactly `BLCKSZ - hole_length` bytes, so a decompression bomb (a small
//! input that expands to far more) is refused rather than allocated.

use std::cell::RefCell;

use super::block::BlockImageHeader;
use super::error::{CompressionMethod, WalError};
use super::page::{BLCKSZ, Lsn};

thread_local! {
    // A zstd decompression context is relatively costly to create; keep one per thread.
    static ZSTD: RefCell<Option<zstd::bulk::Decompressor<'static>>> = const { RefCell::new(None) };
}

fn bad(lsn: Lsn, block_id: u8, what: String) -> WalError {
    WalError::BadImage {
        lsn,
        block_id,
        what,
    }
}

/// Decompresses `src` into exactly `dst.len()` bytes with `method`.
pub fn decompress_exact(
    lsn: Lsn,
    block_id: u8,
    method: CompressionMethod,
    src: &[u8],
    dst: &mut [u8],
) -> Result<(), WalError> {
    let fail = |what: String| WalError::Decompression {
        lsn,
        block_id,
        method,
        what,
    };
    let want = dst.len();
    let got = match method {
        // check_complete = true: both input and output must be fully consumed, as
        // PostgreSQL's pglz_decompress(..., true).
        CompressionMethod::Pglz => pglz::decompress_into(src, dst, true).ok_or_else(|| {
            fail(format!(
                "invalid pglz data or output size differs from {want}"
            ))
        })?,
        CompressionMethod::Lz4 => {
            lz4_flex::block::decompress_into(src, dst).map_err(|e| fail(format!("lz4: {e}")))?
        }
        CompressionMethod::Zstd => ZSTD.with(|cell| {
            let mut slot = cell.borrow_mut();
            if slot.is_none() {
                *slot = Some(
                    zstd::bulk::Decompressor::new()
                        .map_err(|e| fail(format!("zstd context: {e}")))?,
                );
            }
            match slot.as_mut() {
                Some(d) => d
                    .decompress_to_buffer(src, dst)
                    .map_err(|e| fail(format!("zstd: {e}"))),
                None => Err(fail("zstd context unavailable".into())),
            }
        })?,
    };
    if got != want {
        return Err(fail(format!(
            "decompressed to {got} bytes, expected {want}"
        )));
    }
    Ok(())
}

/// Restores a full page from its stored image bytes `raw` (exactly `hdr.length` bytes).
pub fn restore_image(
    lsn: Lsn,
    block_id: u8,
    hdr: &BlockImageHeader,
    raw: &[u8],
    page: &mut [u8; BLCKSZ],
) -> Result<(), WalError> {
    if raw.len() != hdr.length as usize {
        return Err(bad(
            lsn,
            block_id,
            format!("image has {} bytes, header says {}", raw.len(), hdr.length),
        ));
    }
    let hole_offset = hdr.hole_offset as usize;
    let hole_length = hdr.hole_length as usize;
    if hole_offset + hole_length > BLCKSZ {
        return Err(bad(
            lsn,
            block_id,
            format!("hole offset {hole_offset} + length {hole_length} exceeds the page"),
        ));
    }
    let stored_len = BLCKSZ - hole_length;
    let mut tmp = [0u8; BLCKSZ];
    let data: &[u8] = match hdr.compression() {
        Some(method) => {
            decompress_exact(lsn, block_id, method, raw, &mut tmp[..stored_len])?;
            &tmp[..stored_len]
        }
        None => {
            if raw.len() != stored_len {
                return Err(bad(
                    lsn,
                    block_id,
                    format!(
                        "uncompressed image of {} bytes with hole of {hole_length}",
                        raw.len()
                    ),
                ));
            }
            raw
        }
    };
    if hole_offset > data.len() {
        return Err(bad(
            lsn,
            block_id,
            format!(
                "hole offset {hole_offset} beyond image of {} bytes",
                data.len()
            ),
        ));
    }
    page[..hole_offset].copy_from_slice(&data[..hole_offset]);
    page[hole_offset..hole_offset + hole_length].fill(0);
    page[hole_offset + hole_length..].copy_from_slice(&data[hole_offset..]);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wal::block::*;

    fn sample_page() -> [u8; BLCKSZ] {
        let mut p = [0u8; BLCKSZ];
        for (i, b) in p.iter_mut().enumerate() {
            if !(100..4000).contains(&i) {
                *b = (i % 251) as u8;
            }
        }
        p
    }

    fn without_hole(p: &[u8; BLCKSZ]) -> Vec<u8> {
        let mut v = p[..100].to_vec();
        v.extend_from_slice(&p[4000..]);
        v
    }

    #[test]
    fn uncompressed_with_hole() {
        let p = sample_page();
        let stored = without_hole(&p);
        let hdr = BlockImageHeader {
            length: stored.len() as u16,
            hole_offset: 100,
            hole_length: 3900,
            info: BKPIMAGE_HAS_HOLE | BKPIMAGE_APPLY,
        };
        let mut out = [0xFFu8; BLCKSZ];
        restore_image(Lsn(1), 0, &hdr, &stored, &mut out).unwrap();
        assert_eq!(out, p);
    }

    #[test]
    fn all_methods_round_trip() {
        let p = sample_page();
        let stored = without_hole(&p);
        let cases: Vec<(u8, Vec<u8>)> = vec![
            (
                BKPIMAGE_COMPRESS_PGLZ,
                pglz::compress(&stored, &pglz::Strategy::ALWAYS).unwrap(),
            ),
            (BKPIMAGE_COMPRESS_LZ4, lz4_flex::block::compress(&stored)),
            (
                BKPIMAGE_COMPRESS_ZSTD,
                zstd::bulk::compress(&stored, 1).unwrap(),
            ),
        ];
        for (flag, comp) in cases {
            let hdr = BlockImageHeader {
                length: comp.len() as u16,
                hole_offset: 100,
                hole_length: 3900,
                info: BKPIMAGE_HAS_HOLE | flag,
            };
            let mut out = [0u8; BLCKSZ];
            restore_image(Lsn(1), 0, &hdr, &comp, &mut out).unwrap();
            assert_eq!(out, p, "method {flag:#x}");
        }
    }

    #[test]
    fn decompression_bomb_is_refused() {
        // 256 KB of zeros compresses to a few hundred bytes; the output must stay bounded.
        let big = vec![0u8; 256 << 10];
        let cases: Vec<(u8, CompressionMethod, Vec<u8>)> = vec![
            (
                BKPIMAGE_COMPRESS_LZ4,
                CompressionMethod::Lz4,
                lz4_flex::block::compress(&big),
            ),
            (
                BKPIMAGE_COMPRESS_ZSTD,
                CompressionMethod::Zstd,
                zstd::bulk::compress(&big, 1).unwrap(),
            ),
            (
                BKPIMAGE_COMPRESS_PGLZ,
                CompressionMethod::Pglz,
                pglz::compress(&big, &pglz::Strategy::ALWAYS).unwrap(),
            ),
        ];
        for (flag, method, comp) in cases {
            assert!(comp.len() < BLCKSZ);
            let hdr = BlockImageHeader {
                length: comp.len() as u16,
                hole_offset: 0,
                hole_length: 0,
                info: flag | BKPIMAGE_APPLY,
            };
            let mut out = [0u8; BLCKSZ];
            let err = restore_image(Lsn(7), 3, &hdr, &comp, &mut out).unwrap_err();
            match err {
                WalError::Decompression {
                    lsn,
                    block_id,
                    method: m,
                    ..
                } => {
                    assert_eq!((lsn, block_id, m), (Lsn(7), 3, method));
                }
                other => panic!("unexpected {other:?}"),
            }
        }
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for flag in [
            BKPIMAGE_COMPRESS_PGLZ,
            BKPIMAGE_COMPRESS_LZ4,
            BKPIMAGE_COMPRESS_ZSTD,
        ] {
            let junk: Vec<u8> = (0..300u32).map(|i| (i * 37 % 256) as u8).collect();
            let hdr = BlockImageHeader {
                length: 300,
                hole_offset: 0,
                hole_length: 0,
                info: flag,
            };
            let mut out = [0u8; BLCKSZ];
            assert!(restore_image(Lsn(1), 0, &hdr, &junk, &mut out).is_err());
        }
        let hdr = BlockImageHeader {
            length: 10,
            hole_offset: 9000,
            hole_length: 8182,
            info: BKPIMAGE_HAS_HOLE,
        };
        let mut out = [0u8; BLCKSZ];
        assert!(matches!(
            restore_image(Lsn(1), 0, &hdr, &[0; 10], &mut out),
            Err(WalError::BadImage { .. })
        ));
    }
}
