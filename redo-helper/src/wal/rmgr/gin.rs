//! GIN records (`access/ginxlog.h`, PostgreSQL 15): all nine record types, their main data
//! and the layouts of the block data their redo reads.
//!
//! Block references (the `XLogRegisterBuffer` calls of `access/gin/ginbtree.c`,
//! `gindatapage.c`, `ginfast.c` and `ginvacuum.c`):
//! - CREATE_PTREE: 0 = the posting tree's root (`REGBUF_WILL_INIT`); the compressed
//!   posting list is in the main data.
//! - INSERT: 0 = the target page (its data: an entry tuple, a leaf recompression or an
//!   internal posting item, by the flags), 1 = the left child whose incomplete split this
//!   insertion finishes (non-leaf inserts only).
//! - SPLIT: 0 = new left page, 1 = new right page, 2 = the root (root splits), all logged
//!   with forced full page images; 3 = the left child whose split this one finishes.
//! - VACUUM_PAGE: 0 = an entry leaf page, always a full page image.
//! - VACUUM_DATA_LEAF_PAGE: 0 = a posting tree leaf (its data: a leaf recompression).
//! - DELETE_PAGE: 0 = the deleted page, 1 = its parent, 2 = its left sibling.
//! - UPDATE_META_PAGE: 0 = the metapage (`REGBUF_WILL_INIT`), 1 = the pending list's tail
//!   getting tuples (its data) or the old tail getting a right link to a new sublist.
//! - INSERT_LISTPAGE: 0 = a new pending-list page (`REGBUF_WILL_INIT`; its data: tuples).
//! - DELETE_LISTPAGE: 0 = the metapage, 1..=ndeleted = the pending-list pages removed from
//!   the head (all `REGBUF_WILL_INIT`).

use super::MainDataReader;
use crate::wal::error::MainDataError;
use crate::wal::record::DecodedRecord;

pub const XLOG_GIN_CREATE_PTREE: u8 = 0x10;
pub const XLOG_GIN_INSERT: u8 = 0x20;
pub const XLOG_GIN_SPLIT: u8 = 0x30;
pub const XLOG_GIN_VACUUM_PAGE: u8 = 0x40;
pub const XLOG_GIN_DELETE_PAGE: u8 = 0x50;
pub const XLOG_GIN_UPDATE_META_PAGE: u8 = 0x60;
pub const XLOG_GIN_INSERT_LISTPAGE: u8 = 0x70;
pub const XLOG_GIN_DELETE_LISTPAGE: u8 = 0x80;
pub const XLOG_GIN_VACUUM_DATA_LEAF_PAGE: u8 = 0x90;

/// Flags of `ginxlogInsert` and `ginxlogSplit`.
pub const GIN_INSERT_ISDATA: u16 = 0x01;
pub const GIN_INSERT_ISLEAF: u16 = 0x02;
pub const GIN_SPLIT_ROOT: u16 = 0x04;

/// Leaf recompression actions (`ginxlogSegmentAction.type`).
pub const GIN_SEGMENT_DELETE: u8 = 1;
pub const GIN_SEGMENT_INSERT: u8 = 2;
pub const GIN_SEGMENT_REPLACE: u8 = 3;
pub const GIN_SEGMENT_ADDITEMS: u8 = 4;

/// `sizeof(GinMetaPageData)`: head, tail, tailFreeSize, nPendingPages (4 bytes each),
/// nPendingHeapTuples (int64), nTotalPages, nEntryPages, nDataPages, 4 bytes of padding,
/// nEntries (int64), ginVersion, 4 bytes of padding.
pub const GIN_META_DATA_SIZE: usize = 56;
/// `offsetof(GinPostingList, bytes)`: the first item pointer and the uint16 length.
pub const GIN_POSTING_LIST_HEADER: usize = 8;
/// `sizeof(ItemPointerData)`.
pub const ITEM_POINTER_SIZE: usize = 6;
/// `sizeof(PostingItem)`: the child's BlockIdData and the key's ItemPointerData.
pub const POSTING_ITEM_SIZE: usize = 10;

pub fn identify(info: u8) -> Option<&'static str> {
    Some(match info {
        XLOG_GIN_CREATE_PTREE => "CREATE_PTREE",
        XLOG_GIN_INSERT => "INSERT",
        XLOG_GIN_SPLIT => "SPLIT",
        XLOG_GIN_VACUUM_PAGE => "VACUUM_PAGE",
        XLOG_GIN_DELETE_PAGE => "DELETE_PAGE",
        XLOG_GIN_UPDATE_META_PAGE => "UPDATE_META_PAGE",
        XLOG_GIN_INSERT_LISTPAGE => "INSERT_LISTPAGE",
        XLOG_GIN_DELETE_LISTPAGE => "DELETE_LISTPAGE",
        XLOG_GIN_VACUUM_DATA_LEAF_PAGE => "VACUUM_DATA_LEAF_PAGE",
        _ => return None,
    })
}

/// Typed main data of a GIN record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GinRecord<'a> {
    /// `ginxlogCreatePostingTree`: the root leaf's compressed posting list.
    CreatePostingTree {
        posting_list: &'a [u8],
    },
    /// `ginxlogInsert`, and for non-leaf inserts the two children whose split it finishes
    /// (`BlockIdData[2]`).
    Insert {
        flags: u16,
        children: Option<(u32, u32)>,
    },
    /// `ginxlogSplit` (its `node`, `rrlink` and child block numbers are not needed by redo:
    /// the pages come as images).
    Split {
        flags: u16,
    },
    VacuumPage,
    VacuumDataLeafPage,
    /// `ginxlogDeletePage`.
    DeletePage {
        parent_offset: u16,
        right_link: u32,
        delete_xid: u32,
    },
    /// `ginxlogUpdateMeta`: the new metapage contents (raw `GinMetaPageData`), and what
    /// happens to block 1.
    UpdateMetaPage {
        metadata: &'a [u8],
        prev_tail: u32,
        new_rightlink: u32,
        ntuples: i32,
    },
    /// `ginxlogInsertListPage`.
    InsertListPage {
        rightlink: u32,
        ntuples: i32,
    },
    /// `ginxlogDeleteListPages`.
    DeleteListPages {
        metadata: &'a [u8],
        ndeleted: i32,
    },
}

impl GinRecord<'_> {
    pub fn is_leaf(flags: u16) -> bool {
        flags & GIN_INSERT_ISLEAF != 0
    }
    pub fn is_data(flags: u16) -> bool {
        flags & GIN_INSERT_ISDATA != 0
    }
}

/// `BlockIdData`: the block number as two uint16 halves, high first.
fn block_id(r: &mut MainDataReader<'_>) -> Result<u32, MainDataError> {
    let hi = r.u16()? as u32;
    let lo = r.u16()? as u32;
    Ok(hi << 16 | lo)
}

pub fn parse(rec: &DecodedRecord) -> Result<GinRecord<'_>, MainDataError> {
    let info = rec.rmgr_info();
    let name = identify(info).unwrap_or("UNKNOWN");
    let mut r = MainDataReader::new(rec.main_data(), rec.lsn, "Gin", name);
    Ok(match info {
        XLOG_GIN_CREATE_PTREE => {
            let size = r.u32()? as usize;
            GinRecord::CreatePostingTree {
                posting_list: r.bytes(size)?,
            }
        }
        XLOG_GIN_INSERT => {
            let flags = r.u16()?;
            let children = if GinRecord::is_leaf(flags) {
                None
            } else {
                Some((block_id(&mut r)?, block_id(&mut r)?))
            };
            GinRecord::Insert { flags, children }
        }
        XLOG_GIN_SPLIT => {
            // RelFileNode (12), rrlink, leftChildBlkno, rightChildBlkno, then flags.
            r.seek(24)?;
            GinRecord::Split { flags: r.u16()? }
        }
        XLOG_GIN_VACUUM_PAGE => GinRecord::VacuumPage,
        XLOG_GIN_VACUUM_DATA_LEAF_PAGE => GinRecord::VacuumDataLeafPage,
        XLOG_GIN_DELETE_PAGE => {
            let parent_offset = r.u16()?;
            r.seek(4)?;
            GinRecord::DeletePage {
                parent_offset,
                right_link: r.u32()?,
                delete_xid: r.u32()?,
            }
        }
        XLOG_GIN_UPDATE_META_PAGE => {
            // RelFileNode (12), then GinMetaPageData, 8-byte aligned for its int64 members.
            r.seek(16)?;
            let metadata = r.bytes(GIN_META_DATA_SIZE)?;
            GinRecord::UpdateMetaPage {
                metadata,
                prev_tail: r.u32()?,
                new_rightlink: r.u32()?,
                ntuples: r.i32()?,
            }
        }
        XLOG_GIN_INSERT_LISTPAGE => GinRecord::InsertListPage {
            rightlink: r.u32()?,
            ntuples: r.i32()?,
        },
        XLOG_GIN_DELETE_LISTPAGE => GinRecord::DeleteListPages {
            metadata: r.bytes(GIN_META_DATA_SIZE)?,
            ndeleted: r.i32()?,
        },
        other => return Err(r.error(format!("unknown GIN record type {other:#x}"))),
    })
}

/// `ginxlogInsertEntry`, block 0's data of an entry-tree INSERT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InsertEntry<'a> {
    pub offset: u16,
    pub is_delete: bool,
    /// The index tuple (`IndexTupleSize` bytes of it are added).
    pub tuple: &'a [u8],
}

/// Parses block 0's data of an entry-tree INSERT: offset, isDelete, and the tuple at
/// offset 4 (`IndexTupleData` is 2-byte aligned).
pub fn parse_insert_entry<'a>(
    rec: &DecodedRecord,
    data: &'a [u8],
) -> Result<InsertEntry<'a>, MainDataError> {
    let mut r = MainDataReader::new(data, rec.lsn, "Gin", "INSERT");
    let offset = r.u16()?;
    let is_delete = r.bool()?;
    r.seek(4)?;
    Ok(InsertEntry {
        offset,
        is_delete,
        tuple: r.rest(),
    })
}

/// `ginxlogInsertDataInternal`, block 0's data of an internal posting-tree INSERT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InsertDataInternal<'a> {
    pub offset: u16,
    /// The new `PostingItem` (10 bytes).
    pub new_item: &'a [u8],
}

pub fn parse_insert_data_internal<'a>(
    rec: &DecodedRecord,
    data: &'a [u8],
) -> Result<InsertDataInternal<'a>, MainDataError> {
    let mut r = MainDataReader::new(data, rec.lsn, "Gin", "INSERT");
    Ok(InsertDataInternal {
        offset: r.u16()?,
        new_item: r.bytes(POSTING_ITEM_SIZE)?,
    })
}

/// One action of a leaf recompression (`ginxlogSegmentAction` and what follows it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SegmentAction<'a> {
    /// `GIN_SEGMENT_DELETE`: the segment goes.
    Delete,
    /// `GIN_SEGMENT_INSERT`: a new segment (a whole `GinPostingList`) before `segno`.
    Insert(&'a [u8]),
    /// `GIN_SEGMENT_REPLACE`: the segment becomes this `GinPostingList`.
    Replace(&'a [u8]),
    /// `GIN_SEGMENT_ADDITEMS`: item pointers (6 bytes each) merged into the segment.
    AddItems(&'a [u8]),
}

/// Parses a `ginxlogRecompressDataLeaf` (uint16 nactions, then the actions, each
/// 2-byte aligned): `(segno, action)` pairs in the order logged.
pub fn parse_recompress<'a>(
    rec: &DecodedRecord,
    data: &'a [u8],
) -> Result<Vec<(u8, SegmentAction<'a>)>, MainDataError> {
    recompress_actions(rec, data)?.collect()
}

/// The actions of a `ginxlogRecompressDataLeaf`, parsed one at a time as they are read
/// (redo applies them without collecting them first).
pub fn recompress_actions<'a>(
    rec: &DecodedRecord,
    data: &'a [u8],
) -> Result<RecompressActions<'a>, MainDataError> {
    let name = identify(rec.rmgr_info()).unwrap_or("UNKNOWN");
    let mut r = MainDataReader::new(data, rec.lsn, "Gin", name);
    let left = r.u16()?;
    Ok(RecompressActions { r, left })
}

/// See [`recompress_actions`].
pub struct RecompressActions<'a> {
    r: MainDataReader<'a>,
    left: u16,
}

impl<'a> RecompressActions<'a> {
    fn action(&mut self) -> Result<(u8, SegmentAction<'a>), MainDataError> {
        let r = &mut self.r;
        let segno = r.u8()?;
        let kind = r.u8()?;
        let action = match kind {
            GIN_SEGMENT_DELETE => SegmentAction::Delete,
            GIN_SEGMENT_INSERT | GIN_SEGMENT_REPLACE => {
                let seg = posting_list(r)?;
                if kind == GIN_SEGMENT_INSERT {
                    SegmentAction::Insert(seg)
                } else {
                    SegmentAction::Replace(seg)
                }
            }
            GIN_SEGMENT_ADDITEMS => {
                let n = r.u16()? as usize;
                SegmentAction::AddItems(r.bytes(n * ITEM_POINTER_SIZE)?)
            }
            other => {
                return Err(r.error(format!(
                    "unexpected GIN leaf action {other} for segment {segno}"
                )));
            }
        };
        Ok((segno, action))
    }
}

impl<'a> Iterator for RecompressActions<'a> {
    type Item = Result<(u8, SegmentAction<'a>), MainDataError>;
    fn next(&mut self) -> Option<Self::Item> {
        if self.left == 0 {
            return None;
        }
        let a = self.action();
        // After an error there is nothing more to read.
        self.left = if a.is_ok() { self.left - 1 } else { 0 };
        Some(a)
    }
}

/// A whole `GinPostingList` at the reader: `SizeOfGinPostingList` bytes (the header and
/// the varbyte data padded to an even length).
fn posting_list<'a>(r: &mut MainDataReader<'a>) -> Result<&'a [u8], MainDataError> {
    let start = r.position();
    r.seek(start + ITEM_POINTER_SIZE)?;
    let nbytes = r.u16()? as usize;
    r.seek(start)?;
    r.bytes(size_of_posting_list(nbytes))
}

/// `SizeOfGinPostingList` for a list of `nbytes` varbyte bytes.
pub fn size_of_posting_list(nbytes: usize) -> usize {
    GIN_POSTING_LIST_HEADER + nbytes.next_multiple_of(2)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identify_matches_pg_waldump() {
        assert_eq!(identify(0x10), Some("CREATE_PTREE"));
        assert_eq!(identify(0x90), Some("VACUUM_DATA_LEAF_PAGE"));
        assert_eq!(identify(0x00), None);
        assert_eq!(identify(0xA0), None);
    }

    #[test]
    fn posting_list_sizes_are_short_aligned() {
        assert_eq!(size_of_posting_list(0), 8);
        assert_eq!(size_of_posting_list(3), 12);
        assert_eq!(size_of_posting_list(4), 12);
    }
}
