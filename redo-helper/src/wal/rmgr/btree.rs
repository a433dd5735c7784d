//! Btree records (`access/nbtxlog.h`): all 15 record types.

use super::MainDataReader;
use crate::wal::block::RelFileLocator;
use crate::wal::error::MainDataError;
use crate::wal::record::DecodedRecord;

pub const XLOG_BTREE_INSERT_LEAF: u8 = 0x00;
pub const XLOG_BTREE_INSERT_UPPER: u8 = 0x10;
pub const XLOG_BTREE_INSERT_META: u8 = 0x20;
pub const XLOG_BTREE_SPLIT_L: u8 = 0x30;
pub const XLOG_BTREE_SPLIT_R: u8 = 0x40;
pub const XLOG_BTREE_INSERT_POST: u8 = 0x50;
pub const XLOG_BTREE_DEDUP: u8 = 0x60;
pub const XLOG_BTREE_DELETE: u8 = 0x70;
pub const XLOG_BTREE_UNLINK_PAGE: u8 = 0x80;
pub const XLOG_BTREE_UNLINK_PAGE_META: u8 = 0x90;
pub const XLOG_BTREE_NEWROOT: u8 = 0xA0;
pub const XLOG_BTREE_MARK_PAGE_HALFDEAD: u8 = 0xB0;
pub const XLOG_BTREE_VACUUM: u8 = 0xC0;
pub const XLOG_BTREE_REUSE_PAGE: u8 = 0xD0;
pub const XLOG_BTREE_META_CLEANUP: u8 = 0xE0;

/// `btree_identify`.
pub fn identify(info: u8) -> Option<&'static str> {
    Some(match info & 0xF0 {
        XLOG_BTREE_INSERT_LEAF => "INSERT_LEAF",
        XLOG_BTREE_INSERT_UPPER => "INSERT_UPPER",
        XLOG_BTREE_INSERT_META => "INSERT_META",
        XLOG_BTREE_SPLIT_L => "SPLIT_L",
        XLOG_BTREE_SPLIT_R => "SPLIT_R",
        XLOG_BTREE_INSERT_POST => "INSERT_POST",
        XLOG_BTREE_DEDUP => "DEDUP",
        XLOG_BTREE_DELETE => "DELETE",
        XLOG_BTREE_UNLINK_PAGE => "UNLINK_PAGE",
        XLOG_BTREE_UNLINK_PAGE_META => "UNLINK_PAGE_META",
        XLOG_BTREE_NEWROOT => "NEWROOT",
        XLOG_BTREE_MARK_PAGE_HALFDEAD => "MARK_PAGE_HALFDEAD",
        XLOG_BTREE_VACUUM => "VACUUM",
        XLOG_BTREE_REUSE_PAGE => "REUSE_PAGE",
        XLOG_BTREE_META_CLEANUP => "META_CLEANUP",
        _ => return None,
    })
}

/// `xl_btree_metadata` (28 bytes), carried in the metapage block's data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BtreeMetadata {
    pub version: u32,
    pub root: u32,
    pub level: u32,
    pub fastroot: u32,
    pub fastlevel: u32,
    pub last_cleanup_num_delpages: u32,
    pub allequalimage: bool,
}

impl BtreeMetadata {
    pub fn parse(data: &[u8], lsn: crate::wal::page::Lsn) -> Result<BtreeMetadata, MainDataError> {
        let mut r = MainDataReader::new(data, lsn, "Btree", "metadata");
        Ok(BtreeMetadata {
            version: r.u32()?,
            root: r.u32()?,
            level: r.u32()?,
            fastroot: r.u32()?,
            fastlevel: r.u32()?,
            last_cleanup_num_delpages: r.u32()?,
            allequalimage: r.bool()?,
        })
    }
}

/// Typed main data of a Btree record. Page contents (tuples, offsets, posting-list
/// updates) are in block data and interpreted by redo.
/// `xl_btree_split`, with the record type's side (SPLIT_L: the new item is on the left).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct XlBtreeSplit {
    pub new_item_on_left: bool,
    pub level: u32,
    pub firstrightoff: u16,
    pub newitemoff: u16,
    pub postingoff: u16,
}

/// `xl_btree_unlink_page`, with the record type's metapage flag (UNLINK_PAGE_META).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct XlBtreeUnlinkPage {
    pub with_meta: bool,
    pub leftsib: u32,
    pub rightsib: u32,
    pub level: u32,
    pub safexid: u64,
    pub leafleftsib: u32,
    pub leafrightsib: u32,
    pub leaftopparent: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BtreeRecord {
    /// INSERT_LEAF / INSERT_UPPER / INSERT_META / INSERT_POST (`xl_btree_insert`).
    Insert { kind: u8, offnum: u16 },
    /// SPLIT_L / SPLIT_R (`xl_btree_split`).
    Split(XlBtreeSplit),
    /// `xl_btree_dedup`.
    Dedup { nintervals: u16 },
    /// `xl_btree_delete`.
    Delete {
        latest_removed_xid: u32,
        ndeleted: u16,
        nupdated: u16,
        /// 16+ (`isCatalogRel`); false on 15.
        is_catalog_rel: bool,
    },
    /// UNLINK_PAGE / UNLINK_PAGE_META (`xl_btree_unlink_page`).
    UnlinkPage(XlBtreeUnlinkPage),
    /// `xl_btree_newroot`.
    NewRoot { rootblk: u32, level: u32 },
    /// `xl_btree_mark_page_halfdead`.
    MarkPageHalfDead {
        poffset: u16,
        leafblk: u32,
        leftblk: u32,
        rightblk: u32,
        topparent: u32,
    },
    /// `xl_btree_vacuum`.
    Vacuum { ndeleted: u16, nupdated: u16 },
    /// `xl_btree_reuse_page`.
    ReusePage {
        node: RelFileLocator,
        block: u32,
        latest_removed_full_xid: u64,
        /// 16+ (`isCatalogRel`); false on 15.
        is_catalog_rel: bool,
    },
    /// META_CLEANUP: no main data; the metadata is block 0's data.
    MetaCleanup { metadata: Option<BtreeMetadata> },
}

pub fn parse(rec: &DecodedRecord) -> Result<BtreeRecord, MainDataError> {
    let info = rec.rmgr_info();
    let name = identify(info).unwrap_or("UNKNOWN");
    let mut r = MainDataReader::new(rec.main_data(), rec.lsn, "Btree", name);
    Ok(match info {
        XLOG_BTREE_INSERT_LEAF
        | XLOG_BTREE_INSERT_UPPER
        | XLOG_BTREE_INSERT_META
        | XLOG_BTREE_INSERT_POST => BtreeRecord::Insert {
            kind: info,
            offnum: r.u16()?,
        },
        XLOG_BTREE_SPLIT_L | XLOG_BTREE_SPLIT_R => BtreeRecord::Split(XlBtreeSplit {
            new_item_on_left: info == XLOG_BTREE_SPLIT_L,
            level: r.u32()?,
            firstrightoff: r.u16()?,
            newitemoff: r.u16()?,
            postingoff: r.u16()?,
        }),
        XLOG_BTREE_DEDUP => BtreeRecord::Dedup {
            nintervals: r.u16()?,
        },
        XLOG_BTREE_DELETE => BtreeRecord::Delete {
            latest_removed_xid: r.u32()?,
            ndeleted: r.u16()?,
            nupdated: r.u16()?,
            is_catalog_rel: rec.version.has_catalog_rel_flags() && r.bool()?,
        },
        XLOG_BTREE_UNLINK_PAGE | XLOG_BTREE_UNLINK_PAGE_META => {
            let leftsib = r.u32()?;
            let rightsib = r.u32()?;
            let level = r.u32()?;
            r.seek(16)?; // FullTransactionId is 8-byte aligned
            BtreeRecord::UnlinkPage(XlBtreeUnlinkPage {
                with_meta: info == XLOG_BTREE_UNLINK_PAGE_META,
                leftsib,
                rightsib,
                level,
                safexid: r.u64()?,
                leafleftsib: r.u32()?,
                leafrightsib: r.u32()?,
                leaftopparent: r.u32()?,
            })
        }
        XLOG_BTREE_NEWROOT => BtreeRecord::NewRoot {
            rootblk: r.u32()?,
            level: r.u32()?,
        },
        XLOG_BTREE_MARK_PAGE_HALFDEAD => {
            let poffset = r.u16()?;
            r.seek(4)?;
            BtreeRecord::MarkPageHalfDead {
                poffset,
                leafblk: r.u32()?,
                leftblk: r.u32()?,
                rightblk: r.u32()?,
                topparent: r.u32()?,
            }
        }
        XLOG_BTREE_VACUUM => BtreeRecord::Vacuum {
            ndeleted: r.u16()?,
            nupdated: r.u16()?,
        },
        XLOG_BTREE_REUSE_PAGE => {
            let node = r.rel()?;
            let block = r.u32()?;
            let latest_removed_full_xid = r.u64()?;
            BtreeRecord::ReusePage {
                node,
                block,
                latest_removed_full_xid,
                is_catalog_rel: rec.version.has_catalog_rel_flags() && r.bool()?,
            }
        }
        XLOG_BTREE_META_CLEANUP => BtreeRecord::MetaCleanup {
            metadata: match rec.block(0) {
                Some(b) => Some(BtreeMetadata::parse(rec.block_data(b), rec.lsn)?),
                None => None,
            },
        },
        other => return Err(r.error(format!("unknown btree record type {other:#x}"))),
    })
}
