//! Hash index redo (`hash_redo` in `access/hash/hash_xlog.c`, PostgreSQL 15): all thirteen
//! record types, one block reference at a time.
//!
//! Page layout facts (`access/hash.h`, `access/hash/hashpage.c`, `hashovfl.c`):
//! - Every hash page has a 16-byte special space, `HashPageOpaqueData` {hasho_prevblkno,
//!   hasho_nextblkno, hasho_bucket, hasho_flag, hasho_page_id = `HASHO_PAGE_ID` 0xFF80};
//!   `_hash_pageinit` is `PageInit(page, BLCKSZ, 16)`. The low four flag bits are the page
//!   type (overflow, bucket, bitmap, meta; none for an unused page), the others transient
//!   state (bucket being populated / split, needs split cleanup, has dead tuples).
//! - On a primary bucket page `hasho_prevblkno` is `hashm_maxbucket` as of the bucket's
//!   last split; on an overflow page it is the previous page of the chain.
//! - The metapage (block 0) keeps `HashMetaPageData` (4544 bytes) at `PageGetContents`
//!   (offset 24), pd_lower just past it.
//! - A bitmap page keeps `hashm_bmsize` bytes of free-overflow-page bits at offset 24
//!   (bit N of uint32 word N / 32; set = in use), pd_lower just past them.
//! - Bucket and overflow pages hold index tuples (a hash key after the header) in hash key
//!   order; the offsets every record names are the ones the primary used.
//!
//! Some blocks are registered only so that redo takes a cleanup lock on the primary bucket
//! page (block 0 of MOVE_PAGE_CONTENTS, SQUEEZE_PAGE and DELETE): redo neither changes nor
//! stamps them ([`LsnRule::Keep`]). SPLIT_PAGE's block always carries a forced full page
//! image (`hash_xlog_split_page` raises an error without one); the engine restores it
//! before this module is reached. SPLIT_ALLOCATE_PAGE and SPLIT_COMPLETE apply their flag
//! changes even after restoring an image of the page; the image was taken after the
//! primary made the same changes (`XLogInsert` copies the page as it is then), so applying
//! them again changes nothing, and the engine's restore-and-stamp gives the same page.
//! Every other change stamps the page with the record's end LSN.

use super::page::{Page, PageLayout, SIZE_OF_PAGE_HEADER, get_u16, get_u32, put_u16, put_u32};
use super::{LsnRule, RedoErrorKind, malformed, require_init, shape, unexpected_block};
use crate::wal::block::BlockRef;
use crate::wal::page::BLCKSZ;
use crate::wal::record::DecodedRecord;
use crate::wal::rmgr::hash::{
    HashRecord, block_u32, parse, parse_moved_tuples, parse_offsets, parse_split_meta_update,
};

/// `MAXALIGN(sizeof(HashPageOpaqueData))`.
pub(crate) const HASH_SPECIAL_SIZE: usize = 16;
/// `HASHO_PAGE_ID`, the last two bytes of every hash page.
pub(crate) const HASHO_PAGE_ID: u16 = 0xFF80;
/// `hasho_flag` bits.
pub(crate) const LH_UNUSED_PAGE: u16 = 0;
pub(crate) const LH_OVERFLOW_PAGE: u16 = 1 << 0;
pub(crate) const LH_BUCKET_PAGE: u16 = 1 << 1;
pub(crate) const LH_BITMAP_PAGE: u16 = 1 << 2;
pub(crate) const LH_META_PAGE: u16 = 1 << 3;
// LH_BUCKET_BEING_POPULATED (1 << 4) and LH_BUCKET_BEING_SPLIT (1 << 5) come and go with
// the flags SPLIT_ALLOCATE_PAGE and SPLIT_COMPLETE log whole.
pub(crate) const LH_BUCKET_NEEDS_SPLIT_CLEANUP: u16 = 1 << 6;
pub(crate) const LH_PAGE_HAS_DEAD_TUPLES: u16 = 1 << 7;
/// `LH_PAGE_TYPE`.
pub(crate) const LH_PAGE_TYPE: u16 =
    LH_OVERFLOW_PAGE | LH_BUCKET_PAGE | LH_BITMAP_PAGE | LH_META_PAGE;

/// `HASH_MAGIC`, `HASH_VERSION`.
const HASH_MAGIC: u32 = 0x0644_0640;
const HASH_VERSION: u32 = 4;
/// `InvalidBlockNumber`, `InvalidBucket`.
const INVALID_BLOCK: u32 = u32::MAX;
const INVALID_BUCKET: u32 = u32::MAX;
/// `HASH_MAX_SPLITPOINTS`: (32 - 10) groups of four phases plus ten single-phase groups.
const HASH_MAX_SPLITPOINTS: usize = 98;
/// `HASH_MAX_BITMAPS`: Min(BLCKSZ / 8, 1024).
const HASH_MAX_BITMAPS: usize = 1024;
/// `HASH_SPLITPOINT_GROUPS_WITH_ONE_PHASE`, `HASH_SPLITPOINT_PHASE_BITS`,
/// `HASH_SPLITPOINT_PHASE_MASK`.
const SPLITPOINT_GROUPS_WITH_ONE_PHASE: u32 = 10;
const SPLITPOINT_PHASE_BITS: u32 = 2;
const SPLITPOINT_PHASE_MASK: u32 = (1 << SPLITPOINT_PHASE_BITS) - 1;
/// `BYTE_TO_BIT`.
const BYTE_TO_BIT: u16 = 3;
/// Where the special space starts on every hash page.
const HASH_SPECIAL_START: usize = BLCKSZ - HASH_SPECIAL_SIZE;
/// `HashGetMaxBitmapSize`: the page less MAXALIGNed header and special space.
const HASH_MAX_BITMAP_SIZE: usize = BLCKSZ - SIZE_OF_PAGE_HEADER - HASH_SPECIAL_SIZE;

// HashPageOpaqueData fields, from the start of the special space.
const OPAQUE_PREVBLKNO: usize = 0;
const OPAQUE_NEXTBLKNO: usize = 4;
const OPAQUE_BUCKET: usize = 8;
const OPAQUE_FLAG: usize = 12;
const OPAQUE_PAGE_ID: usize = 14;

// HashMetaPageData fields, from PageGetContents (offset 24). hashm_ntuples is a double at
// offset 8, so the struct is 8-byte aligned and its size rounds 4540 up to 4544.
const META_MAGIC: usize = 0;
const META_VERSION: usize = 4;
const META_NTUPLES: usize = 8;
const META_FFACTOR: usize = 16;
const META_BSIZE: usize = 18;
const META_BMSIZE: usize = 20;
const META_BMSHIFT: usize = 22;
const META_MAXBUCKET: usize = 24;
const META_HIGHMASK: usize = 28;
const META_LOWMASK: usize = 32;
const META_OVFLPOINT: usize = 36;
const META_FIRSTFREE: usize = 40;
const META_NMAPS: usize = 44;
const META_PROCID: usize = 48;
const META_SPARES: usize = 52;
const META_MAPP: usize = META_SPARES + 4 * HASH_MAX_SPLITPOINTS;
/// `sizeof(HashMetaPageData)`.
pub(crate) const HASH_META_DATA_SIZE: usize =
    (META_MAPP + 4 * HASH_MAX_BITMAPS).next_multiple_of(8);

/// The special space's `hasho_flag` (`HashPageGetOpaque(page)->hasho_flag`), read at
/// pd_special.
pub(crate) fn page_flag_at(page: &Page, special: usize) -> u16 {
    get_u16(page, special + OPAQUE_FLAG)
}

fn set_opaque(page: &mut Page, field: usize, v: u32) {
    put_u32(page, HASH_SPECIAL_START + field, v);
}

fn flag(page: &Page) -> u16 {
    get_u16(page, HASH_SPECIAL_START + OPAQUE_FLAG)
}

fn set_flag(page: &mut Page, v: u16) {
    put_u16(page, HASH_SPECIAL_START + OPAQUE_FLAG, v);
}

/// A hash page that redo changes in place must have hash's special space and one of the
/// page types `types` (`_hash_checkpage`: "index contains corrupted page"; PostgreSQL's
/// redo trusts the WAL, the engine refuses instead of writing into a page of another
/// shape).
fn require_hash_page(page: &Page, types: u16) -> Result<u16, RedoErrorKind> {
    if page.is_new() {
        return Err(shape("unexpected zero page in hash index".into()));
    }
    if page.special() as usize != HASH_SPECIAL_START {
        return Err(shape(format!(
            "not a hash page: special space at {} (expected {HASH_SPECIAL_START})",
            page.special()
        )));
    }
    let f = flag(page);
    if f & types == 0 {
        return Err(shape(format!(
            "hash page flag {f:#x} is not a page of type {types:#x}"
        )));
    }
    Ok(f)
}

/// `_hash_pageinit` and the special space `_hash_initbuf` sets: the page is empty, linked to
/// nothing after it.
fn hash_initbuf(page: &mut Page, prevblkno: u32, bucket: u32, flag: u16) {
    page.init(HASH_SPECIAL_SIZE);
    set_opaque(page, OPAQUE_PREVBLKNO, prevblkno);
    set_opaque(page, OPAQUE_NEXTBLKNO, INVALID_BLOCK);
    set_opaque(page, OPAQUE_BUCKET, bucket);
    set_flag(page, flag);
    put_u16(page, HASH_SPECIAL_START + OPAQUE_PAGE_ID, HASHO_PAGE_ID);
}

/// `_hash_initbitmapbuffer` with `initpage`: every bit set ("in use"), pd_lower just past
/// the `bmsize` bytes of bits.
fn hash_init_bitmap_page(page: &mut Page, bmsize: u16) -> Result<(), RedoErrorKind> {
    let n = bmsize as usize;
    if n > HASH_MAX_BITMAP_SIZE {
        return Err(malformed(format!(
            "hash bitmap of {n} bytes exceeds HashGetMaxBitmapSize ({HASH_MAX_BITMAP_SIZE})"
        )));
    }
    hash_initbuf(page, INVALID_BLOCK, INVALID_BUCKET, LH_BITMAP_PAGE);
    page[SIZE_OF_PAGE_HEADER..SIZE_OF_PAGE_HEADER + n].fill(0xFF);
    page.set_lower((SIZE_OF_PAGE_HEADER + n) as u16);
    Ok(())
}

/// `pg_ceil_log2_32`.
fn ceil_log2(n: u32) -> u32 {
    if n < 2 {
        0
    } else {
        32 - (n - 1).leading_zeros()
    }
}

/// `pg_leftmost_one_pos32` (n > 0).
fn leftmost_one_pos(n: u32) -> u32 {
    31 - n.leading_zeros()
}

/// `_hash_spareindex`: the splitpoint phase that holds bucket `num_bucket - 1`.
fn spare_index(num_bucket: u32) -> u32 {
    let group = ceil_log2(num_bucket);
    if group < SPLITPOINT_GROUPS_WITH_ONE_PHASE {
        return group;
    }
    SPLITPOINT_GROUPS_WITH_ONE_PHASE
        + ((group - SPLITPOINT_GROUPS_WITH_ONE_PHASE) << SPLITPOINT_PHASE_BITS)
        + (((num_bucket - 1) >> (group - (SPLITPOINT_PHASE_BITS + 1))) & SPLITPOINT_PHASE_MASK)
}

/// `_hash_get_totalbuckets`: buckets allocated up to and including splitpoint `phase`.
fn total_buckets(phase: u32) -> u32 {
    if phase < SPLITPOINT_GROUPS_WITH_ONE_PHASE {
        return 1 << phase;
    }
    let group = SPLITPOINT_GROUPS_WITH_ONE_PHASE
        + ((phase - SPLITPOINT_GROUPS_WITH_ONE_PHASE) >> SPLITPOINT_PHASE_BITS);
    let before = 1u32 << (group - 1);
    let phases_in_group = ((phase - SPLITPOINT_GROUPS_WITH_ONE_PHASE) & SPLITPOINT_PHASE_MASK) + 1;
    before + (before >> SPLITPOINT_PHASE_BITS) * phases_in_group
}

/// The metapage's fields, at `PageGetContents`.
struct Meta<'a>(&'a mut Page);

impl Meta<'_> {
    fn at(field: usize) -> usize {
        SIZE_OF_PAGE_HEADER + field
    }
    fn u32(&self, field: usize) -> u32 {
        get_u32(self.0, Self::at(field))
    }
    fn set_u32(&mut self, field: usize, v: u32) {
        put_u32(self.0, Self::at(field), v);
    }
    fn set_u16(&mut self, field: usize, v: u16) {
        put_u16(self.0, Self::at(field), v);
    }
    fn ntuples(&self) -> f64 {
        let at = Self::at(META_NTUPLES);
        let mut b = [0u8; 8];
        b.copy_from_slice(&self.0[at..at + 8]);
        f64::from_le_bytes(b)
    }
    fn set_ntuples(&mut self, v: f64) {
        let at = Self::at(META_NTUPLES);
        self.0[at..at + 8].copy_from_slice(&v.to_le_bytes());
    }
    /// `hashm_spares[i]`.
    fn spare_pos(i: u32) -> Result<usize, RedoErrorKind> {
        let i = i as usize;
        if i >= HASH_MAX_SPLITPOINTS {
            return Err(shape(format!(
                "hash splitpoint {i} out of range (HASH_MAX_SPLITPOINTS {HASH_MAX_SPLITPOINTS})"
            )));
        }
        Ok(META_SPARES + 4 * i)
    }
    fn spare(&self, i: u32) -> Result<u32, RedoErrorKind> {
        Ok(self.u32(Self::spare_pos(i)?))
    }
    fn set_spare(&mut self, i: u32, v: u32) -> Result<(), RedoErrorKind> {
        let pos = Self::spare_pos(i)?;
        self.set_u32(pos, v);
        Ok(())
    }
    /// `hashm_spares[hashm_ovflpoint]++`.
    fn bump_current_spare(&mut self) -> Result<(), RedoErrorKind> {
        let point = self.u32(META_OVFLPOINT);
        let v = self.spare(point)?;
        self.set_spare(point, v.wrapping_add(1))
    }
    /// `hashm_mapp[hashm_nmaps++] = blkno` ("out of overflow pages in hash index" past
    /// HASH_MAX_BITMAPS).
    fn push_bitmap(&mut self, blkno: u32) -> Result<(), RedoErrorKind> {
        let nmaps = self.u32(META_NMAPS);
        if nmaps as usize >= HASH_MAX_BITMAPS {
            return Err(shape(format!(
                "out of overflow pages in hash index: {nmaps} bitmap pages"
            )));
        }
        self.set_u32(META_MAPP + 4 * nmaps as usize, blkno);
        self.set_u32(META_NMAPS, nmaps + 1);
        Ok(())
    }
}

/// The metapage of a record that updates it (`HashPageGetMeta`), checked to be one.
fn meta_page(page: &mut Page) -> Result<Meta<'_>, RedoErrorKind> {
    require_hash_page(page, LH_META_PAGE)?;
    let magic = get_u32(page, SIZE_OF_PAGE_HEADER + META_MAGIC);
    if magic != HASH_MAGIC {
        return Err(shape(format!(
            "index is not a hash index (magic {magic:#x})"
        )));
    }
    Ok(Meta(page))
}

/// `_hash_init_metabuffer` with `initpage`: the number of buckets from the estimated tuple
/// count and fill factor (at least 2, rounded up to a whole splitpoint phase), masks to
/// cover them, one spare page after the initial splitpoints; pd_lower past the metadata.
fn hash_init_metabuffer(
    page: &mut Page,
    num_tuples: f64,
    procid: u32,
    ffactor: u16,
) -> Result<(), RedoErrorKind> {
    if ffactor == 0 {
        return Err(malformed("hash metapage with fill factor 0"));
    }
    let dnumbuckets = num_tuples / ffactor as f64;
    let num_buckets = if dnumbuckets <= 2.0 {
        2
    } else if dnumbuckets >= 0x4000_0000 as f64 {
        0x4000_0000
    } else {
        // The C conversion to uint32 truncates.
        total_buckets(spare_index(dnumbuckets as u32))
    };
    let spare_ndx = spare_index(num_buckets);
    hash_initbuf(page, INVALID_BLOCK, INVALID_BUCKET, LH_META_PAGE);
    let bsize = HASH_MAX_BITMAP_SIZE as u32;
    let lshift = leftmost_one_pos(bsize);
    let highmask = (num_buckets + 1).next_power_of_two() - 1;
    let mut meta = Meta(page);
    meta.set_u32(META_MAGIC, HASH_MAGIC);
    meta.set_u32(META_VERSION, HASH_VERSION);
    meta.set_ntuples(0.0);
    meta.set_u32(META_NMAPS, 0);
    meta.set_u16(META_FFACTOR, ffactor);
    meta.set_u16(META_BSIZE, bsize as u16);
    meta.set_u16(META_BMSIZE, 1 << lshift);
    meta.set_u16(META_BMSHIFT, lshift as u16 + BYTE_TO_BIT);
    meta.set_u32(META_PROCID, procid);
    meta.set_u32(META_MAXBUCKET, num_buckets - 1);
    meta.set_u32(META_HIGHMASK, highmask);
    meta.set_u32(META_LOWMASK, highmask >> 1);
    // hashm_spares and hashm_mapp are zero (the page was just initialised).
    meta.set_spare(spare_ndx, 1)?;
    meta.set_u32(META_OVFLPOINT, spare_ndx);
    meta.set_u32(META_FIRSTFREE, 0);
    page.set_lower((SIZE_OF_PAGE_HEADER + HASH_META_DATA_SIZE) as u16);
    Ok(())
}

/// `SETBIT` / `CLRBIT` on bit `bit` of a bitmap page's uint32 words.
fn set_bitmap_bit(page: &mut Page, bit: u32, set: bool) -> Result<(), RedoErrorKind> {
    require_hash_page(page, LH_BITMAP_PAGE)?;
    let word = SIZE_OF_PAGE_HEADER + 4 * (bit / 32) as usize;
    if word + 4 > HASH_SPECIAL_START {
        return Err(shape(format!(
            "hash bitmap bit {bit} is past the bitmap page"
        )));
    }
    let mask = 1u32 << (bit % 32);
    let v = get_u32(page, word);
    put_u32(page, word, if set { v | mask } else { v & !mask });
    Ok(())
}

/// The block number of another block reference of the record (`XLogRecGetBlockTag`).
fn block_number_of(rec: &DecodedRecord, id: u8) -> Result<u32, RedoErrorKind> {
    rec.block(id)
        .map(|b| b.block)
        .ok_or_else(|| malformed(format!("hash record lacks block {id}")))
}

fn u32_data(rec: &DecodedRecord, block: &BlockRef) -> Result<u32, RedoErrorKind> {
    block_u32(rec, rec.block_data(block)).map_err(|e| malformed(e.to_string()))
}

/// `hash_redo`: one block reference of a hash record, by the function of `hash_xlog.c`
/// that replays its record type.
pub(super) fn redo_block(
    rec: &DecodedRecord,
    block: &BlockRef,
    page: &mut Page,
) -> Result<LsnRule, RedoErrorKind> {
    let parsed = parse(rec).map_err(|e| malformed(e.to_string()))?;
    let init = matches!(
        (&parsed, block.id),
        (HashRecord::InitMetaPage { .. }, 0)
            | (HashRecord::InitBitmapPage { .. }, 0)
            | (HashRecord::AddOvflPage { .. }, 0 | 3)
            | (HashRecord::SplitAllocatePage { .. }, 1)
    );
    require_init(block, init)?;
    match parsed {
        // hash_xlog_init_meta_page.
        HashRecord::InitMetaPage {
            num_tuples,
            procid,
            ffactor,
        } => match block.id {
            0 => hash_init_metabuffer(page, num_tuples, procid, ffactor)?,
            id => return unexpected_block(id),
        },
        // hash_xlog_init_bitmap_page: the bitmap page, then its entry in the metapage
        // (it is block hashm_maxbucket + 2: the buckets are blocks 1 to maxbucket + 1).
        HashRecord::InitBitmapPage { bmsize } => match block.id {
            0 => hash_init_bitmap_page(page, bmsize)?,
            1 => {
                let mut meta = meta_page(page)?;
                let num_buckets = meta.u32(META_MAXBUCKET).wrapping_add(1);
                meta.push_bitmap(num_buckets.wrapping_add(1))?;
            }
            id => return unexpected_block(id),
        },
        // hash_xlog_insert.
        HashRecord::Insert { offnum } => match block.id {
            0 => {
                require_hash_page(page, LH_BUCKET_PAGE | LH_OVERFLOW_PAGE)?;
                page.add_item(rec.block_data(block), offnum, 0)
                    .map_err(|e| shape(format!("hash_xlog_insert: failed to add item: {e}")))?;
            }
            1 => {
                let mut meta = meta_page(page)?;
                let n = meta.ntuples();
                meta.set_ntuples(n + 1.0);
            }
            id => return unexpected_block(id),
        },
        HashRecord::AddOvflPage {
            bmsize,
            bmpage_found,
        } => return add_ovfl_page(rec, block, page, bmsize, bmpage_found),
        // hash_xlog_split_allocate_page.
        HashRecord::SplitAllocatePage {
            new_bucket,
            old_bucket_flag,
            new_bucket_flag,
            flags,
        } => match block.id {
            // The old bucket is being split; its prevblkno records maxbucket as of now.
            0 => {
                require_hash_page(page, LH_BUCKET_PAGE)?;
                set_flag(page, old_bucket_flag);
                set_opaque(page, OPAQUE_PREVBLKNO, new_bucket);
            }
            1 => hash_initbuf(page, new_bucket, new_bucket, new_bucket_flag),
            2 => {
                let update = parse_split_meta_update(rec, rec.block_data(block), flags)
                    .map_err(|e| malformed(e.to_string()))?;
                let mut meta = meta_page(page)?;
                meta.set_u32(META_MAXBUCKET, new_bucket);
                if let Some((lowmask, highmask)) = update.masks {
                    meta.set_u32(META_LOWMASK, lowmask);
                    meta.set_u32(META_HIGHMASK, highmask);
                }
                if let Some((ovflpoint, ovflpages)) = update.splitpoint {
                    meta.set_spare(ovflpoint, ovflpages)?;
                    meta.set_u32(META_OVFLPOINT, ovflpoint);
                }
            }
            id => return unexpected_block(id),
        },
        HashRecord::SplitPage => match block.id {
            0 => {
                return Err(malformed(
                    "Hash split record did not contain a full-page image",
                ));
            }
            id => return unexpected_block(id),
        },
        // hash_xlog_split_complete: the flags as the primary left them.
        HashRecord::SplitComplete {
            old_bucket_flag,
            new_bucket_flag,
        } => match block.id {
            0 => {
                require_hash_page(page, LH_BUCKET_PAGE)?;
                set_flag(page, old_bucket_flag);
            }
            1 => {
                require_hash_page(page, LH_BUCKET_PAGE)?;
                set_flag(page, new_bucket_flag);
            }
            id => return unexpected_block(id),
        },
        // hash_xlog_move_page_contents.
        HashRecord::MovePageContents {
            ntups,
            is_prim_bucket_same_wrt,
        } => match block.id {
            // Read only for the cleanup lock on the primary bucket page.
            0 if !is_prim_bucket_same_wrt => return Ok(LsnRule::Keep),
            1 => add_moved_tuples(rec, block, page, ntups, "hash_xlog_move_page_contents")?,
            2 => delete_offsets(rec, block, page)?,
            id => return unexpected_block(id),
        },
        HashRecord::SqueezePage {
            prevblkno,
            nextblkno,
            ntups,
            is_prim_bucket_same_wrt,
            is_prev_bucket_same_wrt,
        } => match block.id {
            // Read only for the cleanup lock on the primary bucket page.
            0 if !is_prim_bucket_same_wrt => return Ok(LsnRule::Keep),
            // The write page gets the tuples of the freed page and, when it is the freed
            // page's predecessor, its next link; PostgreSQL 15 stamps it either way.
            1 => {
                if ntups > 0 {
                    add_moved_tuples(rec, block, page, ntups, "hash_xlog_squeeze_page")?;
                } else {
                    require_hash_page(page, LH_BUCKET_PAGE | LH_OVERFLOW_PAGE)?;
                }
                if is_prev_bucket_same_wrt {
                    set_opaque(page, OPAQUE_NEXTBLKNO, nextblkno);
                }
            }
            // The freed overflow page becomes an unused page (_hash_pageinit and an
            // unused special space, as _hash_freeovflpage leaves it).
            2 => {
                require_hash_page(page, LH_OVERFLOW_PAGE)?;
                hash_initbuf(page, INVALID_BLOCK, INVALID_BUCKET, LH_UNUSED_PAGE);
            }
            3 if !is_prev_bucket_same_wrt => {
                require_hash_page(page, LH_BUCKET_PAGE | LH_OVERFLOW_PAGE)?;
                set_opaque(page, OPAQUE_NEXTBLKNO, nextblkno);
            }
            4 => {
                require_hash_page(page, LH_OVERFLOW_PAGE)?;
                set_opaque(page, OPAQUE_PREVBLKNO, prevblkno);
            }
            // The freed page's bit: free again.
            5 => set_bitmap_bit(page, u32_data(rec, block)?, false)?,
            6 => {
                let firstfree = u32_data(rec, block)?;
                meta_page(page)?.set_u32(META_FIRSTFREE, firstfree);
            }
            id => return unexpected_block(id),
        },
        // hash_xlog_delete.
        HashRecord::Delete {
            clear_dead_marking,
            is_primary_bucket_page,
        } => match block.id {
            // Read only for the cleanup lock on the primary bucket page.
            0 if !is_primary_bucket_page => return Ok(LsnRule::Keep),
            1 => {
                delete_offsets(rec, block, page)?;
                if clear_dead_marking {
                    let f = flag(page);
                    set_flag(page, f & !LH_PAGE_HAS_DEAD_TUPLES);
                }
            }
            id => return unexpected_block(id),
        },
        // hash_xlog_split_cleanup.
        HashRecord::SplitCleanup => match block.id {
            0 => {
                let f = require_hash_page(page, LH_BUCKET_PAGE)?;
                set_flag(page, f & !LH_BUCKET_NEEDS_SPLIT_CLEANUP);
            }
            id => return unexpected_block(id),
        },
        // hash_xlog_update_meta_page.
        HashRecord::UpdateMetaPage { ntuples } => match block.id {
            0 => meta_page(page)?.set_ntuples(ntuples),
            id => return unexpected_block(id),
        },
        // hash_xlog_vacuum_one_page: the LP_DEAD items the insert found go, the page
        // loses its has-dead-tuples hint, the metapage's count goes down by as many.
        HashRecord::VacuumOnePage {
            ntuples, offsets, ..
        } => match block.id {
            0 => {
                let f = require_hash_page(page, LH_BUCKET_PAGE | LH_OVERFLOW_PAGE)?;
                if !offsets.is_empty() {
                    page.index_multi_delete(&offsets)?;
                }
                set_flag(page, f & !LH_PAGE_HAS_DEAD_TUPLES);
            }
            1 => {
                let mut meta = meta_page(page)?;
                let n = meta.ntuples();
                meta.set_ntuples(n - ntuples as f64);
            }
            id => return unexpected_block(id),
        },
    }
    Ok(LsnRule::Stamp)
}

/// `hash_xlog_add_ovfl_page`, block by block: the new overflow page (block 0) is linked
/// back to the chain's last page (block 1), which links forward to it; a recycled page's
/// bit is set again in its bitmap page (block 2), or a new page is counted in the current
/// splitpoint's spares, with a new bitmap page (block 3) when the last one is full; the
/// metapage (block 4) takes the new `hashm_firstfree`.
fn add_ovfl_page(
    rec: &DecodedRecord,
    block: &BlockRef,
    page: &mut Page,
    bmsize: u16,
    bmpage_found: bool,
) -> Result<LsnRule, RedoErrorKind> {
    match block.id {
        0 => {
            let bucket = u32_data(rec, block)?;
            let leftblk = block_number_of(rec, 1)?;
            hash_initbuf(page, leftblk, bucket, LH_OVERFLOW_PAGE);
        }
        1 => {
            let rightblk = block_number_of(rec, 0)?;
            require_hash_page(page, LH_BUCKET_PAGE | LH_OVERFLOW_PAGE)?;
            set_opaque(page, OPAQUE_NEXTBLKNO, rightblk);
        }
        2 => set_bitmap_bit(page, u32_data(rec, block)?, true)?,
        3 => hash_init_bitmap_page(page, bmsize)?,
        4 => {
            let firstfree = u32_data(rec, block)?;
            let new_bitmap = rec.block(3).map(|b| b.block);
            let mut meta = meta_page(page)?;
            meta.set_u32(META_FIRSTFREE, firstfree);
            if !bmpage_found {
                meta.bump_current_spare()?;
                if let Some(blkno) = new_bitmap {
                    meta.push_bitmap(blkno)?;
                    meta.bump_current_spare()?;
                }
            }
        }
        id => return unexpected_block(id),
    }
    Ok(LsnRule::Stamp)
}

/// The write page of MOVE_PAGE_CONTENTS and SQUEEZE_PAGE: each moved tuple goes in at the
/// offset the primary's `_hash_pgaddmultitup` chose, with its MAXALIGNed size.
fn add_moved_tuples(
    rec: &DecodedRecord,
    block: &BlockRef,
    page: &mut Page,
    ntups: u16,
    func: &str,
) -> Result<(), RedoErrorKind> {
    require_hash_page(page, LH_BUCKET_PAGE | LH_OVERFLOW_PAGE)?;
    let moved = parse_moved_tuples(rec, rec.block_data(block), ntups)
        .map_err(|e| malformed(e.to_string()))?;
    for (tuple, &offnum) in moved.tuples.iter().zip(&moved.offsets) {
        page.add_item(tuple, offnum, 0).map_err(|e| {
            shape(format!(
                "{func}: failed to add item to hash index page, size {} bytes: {e}",
                tuple.len()
            ))
        })?;
    }
    Ok(())
}

/// `PageIndexMultiDelete` of the offsets in the block's data (none: nothing to delete).
fn delete_offsets(
    rec: &DecodedRecord,
    block: &BlockRef,
    page: &mut Page,
) -> Result<(), RedoErrorKind> {
    require_hash_page(page, LH_BUCKET_PAGE | LH_OVERFLOW_PAGE)?;
    let offsets =
        parse_offsets(rec, rec.block_data(block)).map_err(|e| malformed(e.to_string()))?;
    if !offsets.is_empty() {
        page.index_multi_delete(&offsets)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::redo::{BlockOutcome, RedoContext, apply_block};
    use crate::wal::page::Lsn;
    use crate::wal::rmgr::RM_HASH_ID;
    use crate::wal::rmgr::hash::*;

    const LH_BUCKET_BEING_POPULATED: u16 = 1 << 4;
    const LH_BUCKET_BEING_SPLIT: u16 = 1 << 5;
    const BKPBLOCK_HAS_DATA: u8 = 0x20;

    fn opaque(page: &Page, field: usize) -> u32 {
        get_u32(page, HASH_SPECIAL_START + field)
    }
    const BKPBLOCK_WILL_INIT: u8 = 0x40;
    const BKPBLOCK_SAME_REL: u8 = 0x80;

    /// One block reference of a test record.
    struct Blk {
        id: u8,
        blkno: u32,
        will_init: bool,
        data: Vec<u8>,
    }

    fn blk(id: u8, blkno: u32, data: &[u8]) -> Blk {
        Blk {
            id,
            blkno,
            will_init: false,
            data: data.to_vec(),
        }
    }

    fn init_blk(id: u8, blkno: u32, data: &[u8]) -> Blk {
        Blk {
            will_init: true,
            ..blk(id, blkno, data)
        }
    }

    /// A hash record at LSN 0x2000000 with these block references (rel 1663/5/16384) and
    /// main data, laid out as `XLogRecordAssemble` writes it.
    fn record(info: u8, blocks: &[Blk], main: &[u8]) -> DecodedRecord {
        let mut body = Vec::new();
        for (i, b) in blocks.iter().enumerate() {
            let mut flags = 0u8;
            if !b.data.is_empty() {
                flags |= BKPBLOCK_HAS_DATA;
            }
            if b.will_init {
                flags |= BKPBLOCK_WILL_INIT;
            }
            if i > 0 {
                flags |= BKPBLOCK_SAME_REL;
            }
            body.push(b.id);
            body.push(flags);
            body.extend_from_slice(&(b.data.len() as u16).to_le_bytes());
            if i == 0 {
                for v in [1663u32, 5, 16384] {
                    body.extend_from_slice(&v.to_le_bytes());
                }
            }
            body.extend_from_slice(&b.blkno.to_le_bytes());
        }
        if !main.is_empty() {
            body.push(255);
            body.push(main.len() as u8);
        }
        for b in blocks {
            body.extend_from_slice(&b.data);
        }
        body.extend_from_slice(main);
        let raw =
            crate::wal::record::tests::build_record(RM_HASH_ID, info, 0, Lsn(0x1000000), &body);
        DecodedRecord::from_raw(Lsn(0x2000000), raw).expect("record decodes")
    }

    fn apply(page: &mut Page, rec: &DecodedRecord, id: u8) -> Result<BlockOutcome, RedoErrorKind> {
        let block = rec.block(id).expect("block");
        apply_block(page, rec, block, &RedoContext::default()).map_err(|e| e.kind)
    }

    fn new_page() -> Box<Page> {
        Box::new([0u8; BLCKSZ])
    }

    /// A bucket page of bucket `bucket` with index tuples for hash keys `keys` (12-byte
    /// tuples: t_tid, t_info = 16 (MAXALIGNed size), key), LSN 0x100.
    fn bucket_page(bucket: u32, keys: &[u32]) -> Box<Page> {
        let mut p = new_page();
        hash_initbuf(&mut p, 3, bucket, LH_BUCKET_PAGE);
        for (i, &k) in keys.iter().enumerate() {
            p.add_item(&tuple(i as u16 + 1, k), i as u16 + 1, 0)
                .unwrap();
        }
        p.set_lsn(Lsn(0x100));
        p
    }

    /// An index tuple pointing at heap (0, off) for hash key `key`: 16 bytes.
    fn tuple(off: u16, key: u32) -> Vec<u8> {
        let mut t = vec![0u8; 16];
        put_u16(&mut t, 4, off);
        put_u16(&mut t, 6, 16);
        put_u32(&mut t, 8, key);
        t
    }

    fn key_at(p: &Page, off: u16) -> u32 {
        get_u32(p.item(off).unwrap(), 8)
    }

    fn init_meta(num_tuples: f64, ffactor: u16) -> Box<Page> {
        let mut main = num_tuples.to_le_bytes().to_vec();
        main.extend_from_slice(&449u32.to_le_bytes());
        main.extend_from_slice(&ffactor.to_le_bytes());
        let rec = record(XLOG_HASH_INIT_META_PAGE, &[init_blk(0, 0, &[])], &main);
        let mut p = new_page();
        assert_eq!(apply(&mut p, &rec, 0).unwrap(), BlockOutcome::Applied);
        p
    }

    #[test]
    fn splitpoint_arithmetic() {
        // _hash_spareindex / _hash_get_totalbuckets: one phase per doubling up to 512
        // buckets, then four phases per doubling.
        assert_eq!(spare_index(2), 1);
        assert_eq!(spare_index(3), 2);
        assert_eq!(spare_index(512), 9);
        assert_eq!(spare_index(513), 10);
        assert_eq!(spare_index(1024), 13);
        assert_eq!(total_buckets(1), 2);
        assert_eq!(total_buckets(9), 512);
        assert_eq!(total_buckets(10), 640);
        assert_eq!(total_buckets(13), 1024);
        for n in [2u32, 5, 100, 600, 5000, 100_000] {
            assert!(total_buckets(spare_index(n)) >= n, "{n}");
        }
    }

    #[test]
    fn metapage_layout() {
        assert_eq!(HASH_META_DATA_SIZE, 4544);
        // 2 buckets for a small estimate; fill factor 307 (75% of a page of 16-byte items).
        let p = init_meta(0.0, 307);
        assert_eq!(p.lower() as usize, 24 + 4544);
        assert_eq!((p.upper(), p.special()), (8176, 8176));
        assert_eq!(flag(&p), LH_META_PAGE);
        assert_eq!(get_u16(&p[..], BLCKSZ - 2), HASHO_PAGE_ID);
        let m = |f: usize| get_u32(&p[..], 24 + f);
        assert_eq!(m(META_MAGIC), HASH_MAGIC);
        assert_eq!(m(META_MAXBUCKET), 1);
        assert_eq!((m(META_HIGHMASK), m(META_LOWMASK)), (3, 1));
        assert_eq!(get_u16(&p[..], 24 + META_BMSIZE), 4096);
        assert_eq!(get_u16(&p[..], 24 + META_BMSHIFT), 15);
        assert_eq!(get_u16(&p[..], 24 + META_BSIZE), 8152);
        assert_eq!(m(META_OVFLPOINT), 1);
        assert_eq!(m(META_SPARES + 4), 1);
        assert_eq!(m(META_PROCID), 449);
        // 10,000 tuples at 307 a bucket: 32.6, truncated to 32, a whole splitpoint; the
        // high mask covers bucket 32 as well.
        let p = init_meta(10_000.0, 307);
        assert_eq!(get_u32(&p[..], 24 + META_MAXBUCKET), 31);
        assert_eq!(get_u32(&p[..], 24 + META_HIGHMASK), 63);
        // 40,000 tuples: 130 buckets, rounded up to the next phase, 256.
        let p = init_meta(40_000.0, 307);
        assert_eq!(get_u32(&p[..], 24 + META_MAXBUCKET), 255);
    }

    #[test]
    fn insert_adds_the_tuple_and_counts_it() {
        let mut meta = init_meta(0.0, 307);
        meta.set_lsn(Lsn(0x100));
        let mut b = bucket_page(1, &[10, 30]);
        let rec = record(
            XLOG_HASH_INSERT,
            &[blk(0, 2, &tuple(9, 20)), blk(1, 0, &[])],
            &2u16.to_le_bytes(),
        );
        apply(&mut b, &rec, 0).unwrap();
        apply(&mut meta, &rec, 1).unwrap();
        assert_eq!((key_at(&b, 1), key_at(&b, 2), key_at(&b, 3)), (10, 20, 30));
        assert_eq!(b.lsn(), rec.end_lsn);
        assert_eq!(Meta(&mut meta).ntuples(), 1.0);
        // Already applied: nothing happens twice.
        assert_eq!(
            apply(&mut b, &rec, 0).unwrap(),
            BlockOutcome::AlreadyApplied
        );
        assert_eq!(b.max_offset(), 3);
    }

    #[test]
    fn add_ovfl_page_links_the_chain_and_counts_a_new_bitmap_page() {
        let mut meta = init_meta(0.0, 307);
        meta.set_lsn(Lsn(0x100));
        let mut left = bucket_page(1, &[5]);
        let mut ovfl = new_page();
        let mut newmap = new_page();
        let mut main = 4096u16.to_le_bytes().to_vec();
        main.push(0); // bmpage_found = false
        let rec = record(
            XLOG_HASH_ADD_OVFL_PAGE,
            &[
                init_blk(0, 5, &1u32.to_le_bytes()),
                blk(1, 2, &[]),
                init_blk(3, 4, &[]),
                blk(4, 0, &7u32.to_le_bytes()),
            ],
            &main,
        );
        for (p, id) in [
            (&mut ovfl, 0),
            (&mut left, 1),
            (&mut newmap, 3),
            (&mut meta, 4),
        ] {
            apply(p, &rec, id).unwrap();
        }
        assert_eq!(flag(&ovfl), LH_OVERFLOW_PAGE);
        assert_eq!(opaque(&ovfl, OPAQUE_PREVBLKNO), 2);
        assert_eq!(opaque(&ovfl, OPAQUE_BUCKET), 1);
        assert_eq!(opaque(&left, OPAQUE_NEXTBLKNO), 5);
        assert_eq!(flag(&newmap), LH_BITMAP_PAGE);
        assert_eq!(newmap.lower(), 24 + 4096);
        assert!(newmap[24..24 + 4096].iter().all(|&b| b == 0xFF));
        let mut m = Meta(&mut meta);
        assert_eq!(m.u32(META_FIRSTFREE), 7);
        assert_eq!(m.u32(META_NMAPS), 1);
        assert_eq!(m.u32(META_MAPP), 4);
        // One for the overflow page, one for the bitmap page, after the initial one.
        assert_eq!(m.spare(1).unwrap(), 3);
        m.set_u32(META_NMAPS, HASH_MAX_BITMAPS as u32);
        assert!(m.push_bitmap(9).is_err());
        // A recycled page: only its bitmap bit is set again.
        let mut map = new_page();
        hash_init_bitmap_page(&mut map, 4096).unwrap();
        map[24..24 + 8].fill(0);
        map.set_lsn(Lsn(0x100));
        let mut main = 4096u16.to_le_bytes().to_vec();
        main.push(1);
        let rec = record(
            XLOG_HASH_ADD_OVFL_PAGE,
            &[
                init_blk(0, 5, &1u32.to_le_bytes()),
                blk(1, 2, &[]),
                blk(2, 3, &33u32.to_le_bytes()),
                blk(4, 0, &34u32.to_le_bytes()),
            ],
            &main,
        );
        apply(&mut map, &rec, 2).unwrap();
        assert_eq!(get_u32(&map[..], 28), 0b10);
        assert_eq!(get_u32(&map[..], 24), 0);
    }

    #[test]
    fn split_allocate_marks_both_buckets_and_moves_the_splitpoint() {
        let mut meta = init_meta(0.0, 307);
        meta.set_lsn(Lsn(0x100));
        let mut old = bucket_page(0, &[4, 8]);
        let mut new = new_page();
        let mut main = 2u32.to_le_bytes().to_vec();
        main.extend_from_slice(&(LH_BUCKET_PAGE | LH_BUCKET_BEING_SPLIT).to_le_bytes());
        main.extend_from_slice(&(LH_BUCKET_PAGE | LH_BUCKET_BEING_POPULATED).to_le_bytes());
        main.push(XLH_SPLIT_META_UPDATE_MASKS | XLH_SPLIT_META_UPDATE_SPLITPOINT);
        let mut meta_data = Vec::new();
        for v in [3u32, 7, 2, 1] {
            meta_data.extend_from_slice(&v.to_le_bytes());
        }
        let rec = record(
            XLOG_HASH_SPLIT_ALLOCATE_PAGE,
            &[blk(0, 1, &[]), init_blk(1, 3, &[]), blk(2, 0, &meta_data)],
            &main,
        );
        apply(&mut old, &rec, 0).unwrap();
        apply(&mut new, &rec, 1).unwrap();
        apply(&mut meta, &rec, 2).unwrap();
        assert_eq!(flag(&old), LH_BUCKET_PAGE | LH_BUCKET_BEING_SPLIT);
        assert_eq!(opaque(&old, OPAQUE_PREVBLKNO), 2);
        assert_eq!(old.max_offset(), 2);
        assert_eq!(flag(&new), LH_BUCKET_PAGE | LH_BUCKET_BEING_POPULATED);
        assert_eq!(
            (opaque(&new, OPAQUE_PREVBLKNO), opaque(&new, OPAQUE_BUCKET)),
            (2, 2)
        );
        assert_eq!(opaque(&new, OPAQUE_NEXTBLKNO), INVALID_BLOCK);
        let m = Meta(&mut meta);
        assert_eq!(m.u32(META_MAXBUCKET), 2);
        assert_eq!((m.u32(META_LOWMASK), m.u32(META_HIGHMASK)), (3, 7));
        assert_eq!((m.u32(META_OVFLPOINT), m.spare(2).unwrap()), (2, 1));
        // The new bucket must be re-initialised by the record.
        let rec = record(
            XLOG_HASH_SPLIT_ALLOCATE_PAGE,
            &[blk(0, 1, &[]), blk(1, 3, &[]), blk(2, 0, &meta_data)],
            &main,
        );
        assert!(matches!(
            apply(&mut new_page(), &rec, 1),
            Err(RedoErrorKind::Malformed(_))
        ));
    }

    #[test]
    fn squeeze_moves_tuples_frees_the_page_and_relinks_the_chain() {
        // Chain: bucket 2 -> ovfl 5 -> ovfl 6 (freed) -> ovfl 7; tuples of 6 go to 5.
        let mut bucket = bucket_page(0, &[1]);
        let mut write = bucket_page(0, &[10, 30]);
        set_flag(&mut write, LH_OVERFLOW_PAGE);
        let mut freed = bucket_page(0, &[20]);
        set_flag(&mut freed, LH_OVERFLOW_PAGE);
        let mut next = bucket_page(0, &[40]);
        set_flag(&mut next, LH_OVERFLOW_PAGE);
        let mut map = new_page();
        hash_init_bitmap_page(&mut map, 4096).unwrap();
        map.set_lsn(Lsn(0x100));
        let mut main = 5u32.to_le_bytes().to_vec();
        main.extend_from_slice(&7u32.to_le_bytes());
        main.extend_from_slice(&1u16.to_le_bytes());
        main.extend_from_slice(&[0, 1]); // not the primary bucket; the predecessor
        let mut wdata = 2u16.to_le_bytes().to_vec();
        wdata.extend_from_slice(&tuple(3, 20));
        let rec = record(
            XLOG_HASH_SQUEEZE_PAGE,
            &[
                blk(0, 2, &[]),
                blk(1, 5, &wdata),
                blk(2, 6, &[]),
                blk(4, 7, &[]),
                blk(5, 9, &3u32.to_le_bytes()),
            ],
            &main,
        );
        let bucket_before = bucket.clone();
        apply(&mut bucket, &rec, 0).unwrap();
        assert_eq!(
            bucket[..],
            bucket_before[..],
            "the lock-only block is not stamped"
        );
        apply(&mut write, &rec, 1).unwrap();
        assert_eq!(
            (key_at(&write, 1), key_at(&write, 2), key_at(&write, 3)),
            (10, 20, 30)
        );
        assert_eq!(opaque(&write, OPAQUE_NEXTBLKNO), 7);
        assert_eq!(write.lsn(), rec.end_lsn);
        apply(&mut freed, &rec, 2).unwrap();
        assert_eq!(flag(&freed), LH_UNUSED_PAGE);
        assert!(freed.is_empty_page());
        assert_eq!(opaque(&freed, OPAQUE_BUCKET), INVALID_BUCKET);
        apply(&mut next, &rec, 4).unwrap();
        assert_eq!(opaque(&next, OPAQUE_PREVBLKNO), 5);
        apply(&mut map, &rec, 5).unwrap();
        assert_eq!(get_u32(&map[..], 24), !0b1000);
        // Block 3 is not registered when the write page is the predecessor.
        let rec = record(
            XLOG_HASH_SQUEEZE_PAGE,
            &[blk(1, 5, &wdata), blk(3, 4, &[])],
            &main,
        );
        assert!(apply(&mut bucket_page(0, &[1]), &rec, 3).is_err());
    }

    #[test]
    fn moved_tuples_must_match_their_offsets() {
        let mut data = 2u16.to_le_bytes().to_vec();
        data.extend_from_slice(&3u16.to_le_bytes());
        data.extend_from_slice(&tuple(3, 20));
        let rec = record(
            XLOG_HASH_MOVE_PAGE_CONTENTS,
            &[blk(1, 5, &data), blk(2, 6, &1u16.to_le_bytes())],
            &[2, 0, 1],
        );
        let mut w = bucket_page(0, &[10]);
        assert!(matches!(
            apply(&mut w, &rec, 1),
            Err(RedoErrorKind::Malformed(_))
        ));
        assert_eq!(
            w.max_offset(),
            1,
            "a malformed record leaves the page alone"
        );
    }

    #[test]
    fn delete_and_vacuum_one_page_remove_items_and_the_dead_hint() {
        let mut p = bucket_page(0, &[1, 2, 3, 4, 5]);
        set_flag(&mut p, LH_BUCKET_PAGE | LH_PAGE_HAS_DEAD_TUPLES);
        let mut offs = Vec::new();
        for o in [1u16, 3, 5] {
            offs.extend_from_slice(&o.to_le_bytes());
        }
        // clear_dead_marking = false, is_primary_bucket_page = true.
        let rec = record(XLOG_HASH_DELETE, &[blk(1, 1, &offs)], &[0, 1]);
        apply(&mut p, &rec, 1).unwrap();
        assert_eq!((p.max_offset(), key_at(&p, 1), key_at(&p, 2)), (2, 2, 4));
        assert_ne!(flag(&p) & LH_PAGE_HAS_DEAD_TUPLES, 0);
        // VACUUM_ONE_PAGE: offsets in the main data after latestRemovedXid and ntuples.
        p.set_lsn(Lsn(0x100));
        let mut meta = init_meta(0.0, 307);
        Meta(&mut meta).set_ntuples(10.0);
        meta.set_lsn(Lsn(0x100));
        let mut main = 700u32.to_le_bytes().to_vec();
        main.extend_from_slice(&1i32.to_le_bytes());
        main.extend_from_slice(&2u16.to_le_bytes());
        let rec = record(
            XLOG_HASH_VACUUM_ONE_PAGE,
            &[blk(0, 1, &[]), blk(1, 0, &[])],
            &main,
        );
        apply(&mut p, &rec, 0).unwrap();
        assert_eq!((p.max_offset(), key_at(&p, 1)), (1, 2));
        assert_eq!(flag(&p), LH_BUCKET_PAGE);
        apply(&mut meta, &rec, 1).unwrap();
        assert_eq!(Meta(&mut meta).ntuples(), 9.0);
    }

    #[test]
    fn split_page_needs_its_image_and_metapage_updates_need_a_metapage() {
        let rec = record(XLOG_HASH_SPLIT_PAGE, &[blk(0, 3, &[])], &[]);
        let mut p = bucket_page(1, &[1]);
        assert!(matches!(
            apply(&mut p, &rec, 0),
            Err(RedoErrorKind::Malformed(m)) if m.contains("full-page image")
        ));
        let rec = record(
            XLOG_HASH_UPDATE_META_PAGE,
            &[blk(0, 0, &[])],
            &5.0f64.to_le_bytes(),
        );
        assert!(matches!(
            apply(&mut p, &rec, 0),
            Err(RedoErrorKind::Page(_))
        ));
        let mut meta = init_meta(0.0, 307);
        meta.set_lsn(Lsn(0x100));
        apply(&mut meta, &rec, 0).unwrap();
        assert_eq!(Meta(&mut meta).ntuples(), 5.0);
    }
}
