//! Generic WAL redo (`generic_redo` in `access/transam/generic_xlog.c`, PostgreSQL 15): the
//! redo of every extension index AM without a resource manager of its own (contrib `bloom`,
//! `rum`, pgvector).
//!
//! Per block, `generic_redo` calls `XLogReadBufferForRedo`, so the dispatcher's rules apply
//! unchanged: a full page image (`GENERIC_XLOG_FULL_IMAGE`, which `GenericXLogFinish`
//! registers with `REGBUF_FORCE_IMAGE`; bloom's new pages come this way, rum logs the new
//! page of a split as a delta over the zeroed page instead) is restored, a page
//! whose LSN is not older than the record is left alone (`BLK_DONE`), and only a page that
//! needs redo gets the delta. The delta was computed against the page as it was right
//! before the record, so applying it twice or to an older page would be wrong; the LSN
//! rule is what prevents the first.
//!
//! On `BLK_NEEDS_REDO` the fragments are copied onto the page in order (`applyPageRedo`),
//! then the hole between `pd_lower` and `pd_upper` is zeroed: the delta holds nothing about
//! the hole, and `GenericXLogFinish` zeroed it on the primary too, so zeroing makes the
//! replayed page byte-identical. The page LSN is then set to the record's end.

use super::page::Page;
use super::{LsnRule, RedoErrorKind, malformed};
use crate::wal::block::BlockRef;
use crate::wal::page::{BLCKSZ, Lsn};
use crate::wal::record::DecodedRecord;
use crate::wal::rmgr::generic::{MAX_GENERIC_XLOG_PAGES, parse_delta};

pub(super) fn redo_block(
    rec: &DecodedRecord,
    block: &BlockRef,
    page: &mut Page,
) -> Result<LsnRule, RedoErrorKind> {
    // generic_redo only knows buffers[MAX_GENERIC_XLOG_PAGES]; GenericXLogFinish never
    // registers more, so a higher block id is not a record PostgreSQL wrote.
    if block.id as usize >= MAX_GENERIC_XLOG_PAGES {
        return Err(malformed(format!(
            "generic record references block id {}, at most {} pages are allowed",
            block.id,
            MAX_GENERIC_XLOG_PAGES - 1
        )));
    }
    // xl_info is not looked at: generic_redo has a single record type.
    apply_delta(page, rec.block_data(block), rec.lsn, block.id)?;
    Ok(LsnRule::Stamp)
}

/// Applies a delta (the block data of a generic record) to `page` and zeroes the hole,
/// as `generic_redo` does on `BLK_NEEDS_REDO`; the caller stamps the LSN. On error the page
/// is unchanged.
pub(crate) fn apply_delta(
    page: &mut Page,
    delta: &[u8],
    lsn: Lsn,
    block_id: u8,
) -> Result<(), RedoErrorKind> {
    // Parse everything first: a malformed delta must not leave a half-applied page.
    let fragments = parse_delta(delta, lsn, block_id).map_err(|e| malformed(e.to_string()))?;
    // pd_lower and pd_upper (bytes 12..16) as the delta leaves them, checked before the page
    // is touched (no copy of the page needed to keep it unchanged on error).
    let mut bounds = [page[12], page[13], page[14], page[15]];
    for f in &fragments {
        for (i, b) in bounds.iter_mut().enumerate() {
            let at = 12 + i;
            if (f.offset as usize..f.end()).contains(&at) {
                *b = f.data[at - f.offset as usize];
            }
        }
    }
    let lower = u16::from_le_bytes([bounds[0], bounds[1]]) as usize;
    let upper = u16::from_le_bytes([bounds[2], bounds[3]]) as usize;
    // PostgreSQL memsets pd_upper - pd_lower bytes without checking; with pd_lower above
    // pd_upper or pd_upper past the page that would overrun the buffer.
    if lower > upper || upper > BLCKSZ {
        return Err(malformed(format!(
            "generic record block {block_id}: after the delta pd_lower {lower} and pd_upper \
             {upper} do not delimit a hole within the {BLCKSZ}-byte page"
        )));
    }
    for f in &fragments {
        // parse_delta checked f.end() <= BLCKSZ.
        page[f.offset as usize..f.end()].copy_from_slice(f.data);
    }
    page[lower..upper].fill(0);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::redo::page::{PAI_OVERWRITE, PageLayout};
    use crate::redo::{BlockOutcome, RedoContext, RedoErrorKind, apply_block};
    use crate::wal::rmgr::RM_GENERIC_ID;

    fn frag(off: u16, data: &[u8]) -> Vec<u8> {
        let mut v = off.to_le_bytes().to_vec();
        v.extend_from_slice(&(data.len() as u16).to_le_bytes());
        v.extend_from_slice(data);
        v
    }

    /// A generic record at LSN 0x2000000 whose block `id` (rel 1663/5/16384 blk 3) carries
    /// `delta`; no HAS_DATA flag when the delta is empty, as XLogRecordAssemble writes it.
    fn record(id: u8, delta: &[u8]) -> DecodedRecord {
        let has_data = if delta.is_empty() { 0 } else { 0x20 };
        let mut body = vec![id, has_data];
        body.extend_from_slice(&(delta.len() as u16).to_le_bytes());
        for v in [1663u32, 5, 16384, 3] {
            body.extend_from_slice(&v.to_le_bytes());
        }
        body.extend_from_slice(delta);
        let raw =
            crate::wal::record::tests::build_record(RM_GENERIC_ID, 0, 0, Lsn(0x1000000), &body);
        DecodedRecord::from_raw(Lsn(0x2000000), raw).expect("record decodes")
    }

    fn index_page() -> Box<Page> {
        let mut p = Box::new([0u8; BLCKSZ]);
        p.init(16);
        p.add_item(&[7u8; 40], 1, PAI_OVERWRITE).unwrap();
        p.set_lsn(Lsn(0x100));
        p
    }

    fn try_apply(page: &mut Page, rec: &DecodedRecord) -> Result<BlockOutcome, RedoErrorKind> {
        apply_block(page, rec, &rec.blocks()[0], &RedoContext::default()).map_err(|e| e.kind)
    }

    fn apply(page: &mut Page, rec: &DecodedRecord) -> BlockOutcome {
        try_apply(page, rec).unwrap_or_else(|e| panic!("redo failed: {e}"))
    }

    #[test]
    fn empty_delta_only_zeroes_the_hole_and_stamps() {
        let mut p = index_page();
        let (lower, upper) = (p.lower() as usize, p.upper() as usize);
        p[lower + 5] = 0xEE; // garbage in the hole
        let rec = record(0, &[]);
        assert!(!rec.blocks()[0].has_data());
        let before = p.clone();
        assert_eq!(apply(&mut p, &rec), BlockOutcome::Applied);
        assert_eq!(p.lsn(), rec.end_lsn);
        assert!(p[lower..upper].iter().all(|&b| b == 0));
        assert_eq!(p[24..lower], before[24..lower]);
        assert_eq!(p[upper..], before[upper..]);
    }

    #[test]
    fn fragments_apply_in_order_up_to_the_page_end() {
        let mut p = index_page();
        let mut d = frag((BLCKSZ - 4) as u16, &[1, 2, 3, 4]);
        // A later fragment overwrites an earlier one where they overlap.
        d.extend(frag((BLCKSZ - 8) as u16, &[5, 5, 5, 5, 6, 6]));
        let rec = record(3, &d);
        assert_eq!(apply(&mut p, &rec), BlockOutcome::Applied);
        assert_eq!(p[BLCKSZ - 8..], [5, 5, 5, 5, 6, 6, 3, 4]);
        assert_eq!(p.lsn(), rec.end_lsn);
    }

    #[test]
    fn a_delta_moving_pd_lower_and_pd_upper_zeroes_the_new_hole() {
        let mut p = index_page();
        let upper = p.upper() as usize;
        // Shrink the hole to [40, upper - 8) and fill the bytes around it.
        let mut d = frag(12, &40u16.to_le_bytes());
        d.extend(frag(14, &((upper - 8) as u16).to_le_bytes()));
        d.extend(frag((upper - 8) as u16, &[9; 8]));
        // Bytes the delta puts into what is now the hole are zeroed after it.
        d.extend(frag(50, &[8; 4]));
        let rec = record(1, &d);
        assert_eq!(apply(&mut p, &rec), BlockOutcome::Applied);
        assert_eq!((p.lower(), p.upper() as usize), (40, upper - 8));
        assert!(p[40..upper - 8].iter().all(|&b| b == 0));
        assert_eq!(p[upper - 8..upper], [9; 8]);
    }

    #[test]
    fn already_applied_deltas_are_skipped() {
        let mut p = index_page();
        let rec = record(0, &frag(100, &[1, 2, 3]));
        p.set_lsn(rec.end_lsn);
        let before = p.clone();
        assert_eq!(apply(&mut p, &rec), BlockOutcome::AlreadyApplied);
        assert_eq!(p, before);
    }

    #[test]
    fn malformed_deltas_are_refused_and_leave_the_page_alone() {
        let cases: [(u8, Vec<u8>, &str); 4] = [
            (
                0,
                frag((BLCKSZ - 2) as u16, &[1, 2, 3]),
                "past the 8192-byte page",
            ),
            (0, vec![0, 1, 2], "fragment header at byte 0 truncated"),
            // pd_lower 9000 > pd_upper: the hole cannot be zeroed.
            (0, frag(12, &9000u16.to_le_bytes()), "do not delimit a hole"),
            (4, frag(100, &[1]), "block id 4"),
        ];
        for (id, delta, want) in cases {
            let mut p = index_page();
            let before = p.clone();
            let rec = record(id, &delta);
            match try_apply(&mut p, &rec) {
                Err(RedoErrorKind::Malformed(m)) => assert!(m.contains(want), "{m}"),
                other => panic!("{want}: {other:?}"),
            }
            assert_eq!(p, before, "{want}");
        }
    }

    #[test]
    fn a_delta_onto_a_zeroed_page_builds_what_it_describes() {
        // GenericXLogFinish computes the delta against the current page; against an
        // all-zero page (pd_lower = pd_upper = 0) it describes every byte that differs from
        // zero, so replay onto zeros gives the page.
        let mut want = index_page();
        want.set_lsn(Lsn(0));
        let (lower, upper) = (want.lower() as usize, want.upper() as usize);
        let mut d = frag(0, &want[..lower]);
        d.extend(frag(upper as u16, &want[upper..]));
        let rec = record(0, &d);
        let mut p = Box::new([0u8; BLCKSZ]);
        assert_eq!(apply(&mut p, &rec), BlockOutcome::Applied);
        want.set_lsn(rec.end_lsn);
        assert_eq!(p, want);
    }
}
