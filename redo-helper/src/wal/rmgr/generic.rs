//! Generic WAL records (resource manager 20, `access/generic_xlog.h`), written through
//! `GenericXLogStart`/`GenericXLogFinish` (`access/transam/generic_xlog.c`) by access
//! methods that have no resource manager of their own: contrib `bloom`, `rum`, pgvector.
//!
//! A record has no main data and up to [`MAX_GENERIC_XLOG_PAGES`] block references (block
//! ids 0..=3). Each block carries either a full page image (`GENERIC_XLOG_FULL_IMAGE`, used
//! for new pages, so it is registered with `REGBUF_FORCE_IMAGE`) or, as block data, a
//! *delta*: a sequence of fragments, each an `OffsetNumber` (u16) page offset, an
//! `OffsetNumber` (u16) length and that many bytes to copy to the page at the offset
//! (`writeFragment`/`applyPageRedo`). Fragments are applied in order. An unchanged page
//! gives an empty delta, which `XLogRecordAssemble` stores as a block without
//! `BKPBLOCK_HAS_DATA`: that is a valid empty delta, not a missing one.
//!
//! PostgreSQL's `applyPageRedo` trusts the delta (plain `memcpy` without bounds); here a
//! truncated fragment or one that would write past the page is a [`DeltaError`].

use crate::wal::page::{BLCKSZ, Lsn};

/// A malformed delta: which record and block, and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("Generic record at {lsn}, block {block_id}: {what}")]
pub struct DeltaError {
    pub lsn: Lsn,
    pub block_id: u8,
    pub what: String,
}

/// `xl_info` of every generic record: `GenericXLogFinish` calls `XLogInsert(RM_GENERIC_ID,
/// 0)`. `generic_identify` ignores the info bits and always answers "Generic".
pub const XLOG_GENERIC: u8 = 0x00;

/// `MAX_GENERIC_XLOG_PAGES` (= `XLR_NORMAL_MAX_BLOCK_ID`, 4): block ids of a generic record
/// are below this (`generic_redo` asserts `max_block_id < MAX_GENERIC_XLOG_PAGES`).
pub const MAX_GENERIC_XLOG_PAGES: usize = 4;

/// `FRAGMENT_HEADER_SIZE`: offset and length, two `OffsetNumber`s.
pub const FRAGMENT_HEADER_SIZE: usize = 4;

/// `GENERIC_XLOG_FULL_IMAGE`: the flag `GenericXLogRegisterBuffer` callers pass for new
/// pages; the record then carries an applicable image instead of a delta.
pub const GENERIC_XLOG_FULL_IMAGE: u32 = 0x0001;

pub fn identify(_info: u8) -> Option<&'static str> {
    Some("Generic")
}

/// One fragment of a delta: `data` goes to the page at `offset`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fragment<'a> {
    pub offset: u16,
    pub data: &'a [u8],
}

impl Fragment<'_> {
    /// One past the last page byte the fragment writes.
    pub fn end(&self) -> usize {
        self.offset as usize + self.data.len()
    }
}

/// Iterates over the fragments of a delta. Each item is checked: a truncated header, a
/// length beyond the remaining bytes, or a fragment reaching past the `BLCKSZ`-byte page is
/// an error, after which the iteration stops.
#[derive(Debug, Clone)]
pub struct Fragments<'a> {
    data: &'a [u8],
    pos: usize,
    lsn: Lsn,
    block_id: u8,
    failed: bool,
}

/// The fragments of the delta `data` (a block's data) of block `block_id` of the generic
/// record at `lsn` (both only for error messages).
pub fn fragments(data: &[u8], lsn: Lsn, block_id: u8) -> Fragments<'_> {
    Fragments {
        data,
        pos: 0,
        lsn,
        block_id,
        failed: false,
    }
}

/// Parses the whole delta first, so a malformed one is refused before any byte of the page
/// changes.
pub fn parse_delta(data: &[u8], lsn: Lsn, block_id: u8) -> Result<Vec<Fragment<'_>>, DeltaError> {
    fragments(data, lsn, block_id).collect()
}

impl<'a> Fragments<'a> {
    fn error(&mut self, what: String) -> Option<Result<Fragment<'a>, DeltaError>> {
        self.failed = true;
        Some(Err(DeltaError {
            lsn: self.lsn,
            block_id: self.block_id,
            what,
        }))
    }
}

impl<'a> Iterator for Fragments<'a> {
    type Item = Result<Fragment<'a>, DeltaError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.pos >= self.data.len() {
            return None;
        }
        let at = self.pos;
        let rest = &self.data[at..];
        let Some((header, body)) = rest.split_first_chunk::<FRAGMENT_HEADER_SIZE>() else {
            return self.error(format!(
                "fragment header at byte {at} truncated: {} of {FRAGMENT_HEADER_SIZE} bytes",
                rest.len()
            ));
        };
        let offset = u16::from_le_bytes([header[0], header[1]]);
        let len = u16::from_le_bytes([header[2], header[3]]) as usize;
        let Some(bytes) = body.get(..len) else {
            return self.error(format!(
                "fragment at byte {at} (page offset {offset}) has length {len}, only {} bytes follow",
                body.len()
            ));
        };
        let frag = Fragment {
            offset,
            data: bytes,
        };
        if frag.end() > BLCKSZ {
            return self.error(format!(
                "fragment at byte {at} writes page bytes {offset}..{}, past the {BLCKSZ}-byte page",
                frag.end()
            ));
        }
        self.pos = at + FRAGMENT_HEADER_SIZE + len;
        Some(Ok(frag))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frag(off: u16, data: &[u8]) -> Vec<u8> {
        let mut v = off.to_le_bytes().to_vec();
        v.extend_from_slice(&(data.len() as u16).to_le_bytes());
        v.extend_from_slice(data);
        v
    }

    #[test]
    fn empty_delta_has_no_fragments() {
        assert_eq!(parse_delta(&[], Lsn(1), 0).unwrap(), vec![]);
    }

    #[test]
    fn fragments_in_order_including_one_ending_at_the_page_end() {
        let mut d = frag(0, &[1, 2, 3]);
        d.extend(frag((BLCKSZ - 2) as u16, &[9, 9]));
        d.extend(frag(24, &[]));
        let f = parse_delta(&d, Lsn(1), 1).unwrap();
        assert_eq!(
            f,
            vec![
                Fragment {
                    offset: 0,
                    data: &[1, 2, 3]
                },
                Fragment {
                    offset: (BLCKSZ - 2) as u16,
                    data: &[9, 9]
                },
                Fragment {
                    offset: 24,
                    data: &[]
                },
            ]
        );
        assert_eq!(f[1].end(), BLCKSZ);
    }

    #[test]
    fn fragment_past_the_page_end_is_an_error() {
        let d = frag((BLCKSZ - 2) as u16, &[1, 2, 3]);
        let e = parse_delta(&d, Lsn(7), 2).unwrap_err();
        assert!(e.what.contains("past the 8192-byte page"), "{e}");
        assert_eq!(e.block_id, 2);
        assert!(e.to_string().contains("block 2"), "{e}");
        // An offset beyond the page with an empty body is past it too.
        let e = parse_delta(&frag(BLCKSZ as u16 + 1, &[]), Lsn(7), 0).unwrap_err();
        assert!(e.what.contains("past the"), "{e}");
    }

    #[test]
    fn truncated_fragments_are_errors_and_stop_the_iteration() {
        // Header cut short.
        let mut d = frag(10, &[1]);
        d.extend_from_slice(&[5, 0, 1]);
        let items: Vec<_> = fragments(&d, Lsn(1), 0).collect();
        assert_eq!(items.len(), 2);
        assert!(items[0].is_ok());
        let e = items[1].as_ref().unwrap_err();
        assert!(e.what.contains("header at byte 5 truncated: 3 of 4"), "{e}");
        // Length longer than what follows.
        let mut d = frag(10, &[1, 2, 3, 4]);
        d.truncate(6);
        let e = parse_delta(&d, Lsn(1), 0).unwrap_err();
        assert!(e.what.contains("length 4, only 2 bytes follow"), "{e}");
    }
}
