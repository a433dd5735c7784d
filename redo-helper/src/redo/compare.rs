//! Masked page comparison with a field-level description of the differences: how verify,
//! check and repair decide whether two pages are the same page as PostgreSQL's masking
//! (`rm_mask`) sees them.

use super::mask::{PageKind, mask_page};
use super::page::{
    ITEM_ID_SIZE, ItemId, Page, PageLayout, SIZE_OF_PAGE_HEADER, get_u16, get_u32, lp_pos,
};
use super::tuple::*;
use crate::wal::page::BLCKSZ;
use std::fmt::Write as _;

/// Masks copies of both pages and compares them; a field-level diff when they differ.
pub(crate) fn compare_masked(
    replayed: &Page,
    expected: &Page,
    kind: PageKind,
    blkno: u32,
) -> Option<String> {
    let mut a = Box::new(*replayed);
    let mut b = Box::new(*expected);
    mask_page(&mut a, kind, blkno);
    mask_page(&mut b, kind, blkno);
    if a[..] == b[..] {
        return None;
    }
    Some(diff_pages(&a, &b, kind))
}

/// A field-level description of how two (masked) pages differ: header fields, line
/// pointers, heap tuple headers or btree special space, then the first differing bytes.
pub(crate) fn diff_pages(replayed: &Page, expected: &Page, kind: PageKind) -> String {
    let mut out = String::new();
    let fields: [(&str, u64, u64); 8] = [
        ("pd_lsn", replayed.lsn().0, expected.lsn().0),
        (
            "pd_checksum",
            replayed.checksum() as u64,
            expected.checksum() as u64,
        ),
        ("pd_flags", replayed.flags() as u64, expected.flags() as u64),
        ("pd_lower", replayed.lower() as u64, expected.lower() as u64),
        ("pd_upper", replayed.upper() as u64, expected.upper() as u64),
        (
            "pd_special",
            replayed.special() as u64,
            expected.special() as u64,
        ),
        (
            "pd_pagesize_version",
            replayed.pagesize_version() as u64,
            expected.pagesize_version() as u64,
        ),
        (
            "pd_prune_xid",
            replayed.prune_xid() as u64,
            expected.prune_xid() as u64,
        ),
    ];
    for (name, r, e) in fields {
        if r != e {
            let _ = writeln!(out, "  {name}: replayed {r:#x}, expected {e:#x}");
        }
    }
    let nmax = replayed.max_offset().max(expected.max_offset());
    let mut shown = 0;
    for off in 1..=nmax {
        let pos = lp_pos(off);
        if pos + ITEM_ID_SIZE > BLCKSZ {
            break;
        }
        let (ra, ea) = (
            ItemId(get_u32(replayed, pos)),
            ItemId(get_u32(expected, pos)),
        );
        let ritem = item_bytes(replayed, ra);
        let eitem = item_bytes(expected, ea);
        if ra == ea && ritem == eitem {
            continue;
        }
        if shown >= 8 {
            let _ = writeln!(out, "  ... more line pointers differ");
            break;
        }
        shown += 1;
        let _ = writeln!(out, "  lp {off}: replayed {ra}, expected {ea}");
        if let (Some(r), Some(e)) = (ritem, eitem) {
            if kind == PageKind::Heap && r.len() >= 23 && e.len() >= 23 {
                for (name, at, width) in [
                    ("t_xmin", T_XMIN, 4),
                    ("t_xmax", T_XMAX, 4),
                    ("t_cid/xvac", T_FIELD3, 4),
                    ("t_ctid.bi_hi", T_CTID, 2),
                    ("t_ctid.bi_lo", T_CTID + 2, 2),
                    ("t_ctid.posid", T_CTID + 4, 2),
                    ("t_infomask2", T_INFOMASK2, 2),
                    ("t_infomask", T_INFOMASK, 2),
                    ("t_hoff", T_HOFF, 1),
                ] {
                    let (rv, ev) = if width == 4 {
                        (get_u32(r, at), get_u32(e, at))
                    } else if width == 2 {
                        (get_u16(r, at) as u32, get_u16(e, at) as u32)
                    } else {
                        (r[at] as u32, e[at] as u32)
                    };
                    if rv != ev {
                        let _ = writeln!(out, "    {name}: replayed {rv:#x}, expected {ev:#x}");
                    }
                }
            }
            if let Some(i) = r.iter().zip(e.iter()).position(|(x, y)| x != y) {
                let _ = writeln!(
                    out,
                    "    item bytes differ from byte {i} (replayed {:02x?}, expected {:02x?})",
                    &r[i..(i + 16).min(r.len())],
                    &e[i..(i + 16).min(e.len())]
                );
            } else if r.len() != e.len() {
                let _ = writeln!(out, "    item lengths {} vs {}", r.len(), e.len());
            }
        }
    }
    let (rs, es) = (replayed.special() as usize, expected.special() as usize);
    if rs == es && rs < BLCKSZ && replayed[rs..] != expected[rs..] {
        if kind == PageKind::Btree && rs + 16 <= BLCKSZ {
            for (name, at, width) in [
                ("btpo_prev", 0, 4),
                ("btpo_next", 4, 4),
                ("btpo_level", 8, 4),
                ("btpo_flags", 12, 2),
                ("btpo_cycleid", 14, 2),
            ] {
                let (rv, ev) = if width == 4 {
                    (get_u32(replayed, rs + at), get_u32(expected, rs + at))
                } else {
                    (
                        get_u16(replayed, rs + at) as u32,
                        get_u16(expected, rs + at) as u32,
                    )
                };
                if rv != ev {
                    let _ = writeln!(out, "  special {name}: replayed {rv:#x}, expected {ev:#x}");
                }
            }
        } else {
            let _ = writeln!(out, "  special space differs");
        }
    }
    let diffs: Vec<usize> = (0..BLCKSZ)
        .filter(|&i| replayed[i] != expected[i])
        .collect();
    if let (Some(first), Some(last)) = (diffs.first(), diffs.last()) {
        let _ = writeln!(
            out,
            "  {} bytes differ, first at {first} (replayed {:02x?}, expected {:02x?}), last at {last}",
            diffs.len(),
            &replayed[*first..(*first + 16).min(BLCKSZ)],
            &expected[*first..(*first + 16).min(BLCKSZ)]
        );
        if *first < SIZE_OF_PAGE_HEADER {
            let _ = writeln!(out, "  (difference starts in the page header)");
        }
    }
    out
}

fn item_bytes(page: &Page, id: ItemId) -> Option<&[u8]> {
    let off = id.off() as usize;
    let len = id.len() as usize;
    (id.has_storage() && off >= SIZE_OF_PAGE_HEADER && off + len <= BLCKSZ)
        .then(|| &page[off..off + len])
}

/// Blanks the data of a sequence page's tuple (last_value, log_cnt, is_called).
pub(crate) fn mask_sequence_values(page: &mut Page) {
    let Ok(id) = page.item_id(1) else { return };
    let (off, len) = (id.off() as usize, id.len() as usize);
    if !id.has_storage() || off + len > BLCKSZ || len <= T_HOFF {
        return;
    }
    let hoff = page[off + T_HOFF] as usize;
    if hoff < len {
        page[off + hoff..off + len].fill(0);
    }
}
