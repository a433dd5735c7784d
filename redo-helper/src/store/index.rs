//! The page index: for every page a record references, the LSNs of those records, in order,
//! with what each did to the page (delta, applicable full image, or re-initialisation). A
//! record touching three pages is stored once (in the archive) and indexed three times.

use crate::wal::block::{BlockRef, PageKey};
use crate::wal::page::Lsn;
use crate::wal::record::DecodedRecord;
use crate::wal::rmgr::RM_XLOG_ID;
use std::collections::HashMap;

/// `XLOG_CHECKPOINT_SHUTDOWN`, `XLOG_CHECKPOINT_ONLINE`, `XLOG_FPW_CHANGE` (catalog/pg_control.h).
const XLOG_CHECKPOINT_SHUTDOWN: u8 = 0x00;
const XLOG_CHECKPOINT_ONLINE: u8 = 0x10;
const XLOG_FPW_CHANGE: u8 = 0x80;
/// `CheckPoint.fullPageWrites` offset: redo (8) + ThisTimeLineID (4) + PrevTimeLineID (4).
const CHECKPOINT_FPW_OFFSET: usize = 16;

/// What a record did to a page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeKind {
    /// Applied on top of the previous page state.
    Delta,
    /// Carried a full page image with BKPIMAGE_APPLY: the page is known from here.
    Image,
    /// WILL_INIT: the record rebuilds the page from nothing.
    Init,
}

impl ChangeKind {
    pub fn of(block: &BlockRef) -> ChangeKind {
        if block.has_applicable_image() {
            ChangeKind::Image
        } else if block.will_init() {
            ChangeKind::Init
        } else {
            ChangeKind::Delta
        }
    }

    /// Images and re-initialisations start a fresh chain.
    pub fn resets_chain(self) -> bool {
        !matches!(self, ChangeKind::Delta)
    }
}

/// A page's history.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PageHistory {
    pub changes: Vec<(Lsn, ChangeKind)>,
    /// Deltas since the last image or re-initialisation (or since the base backup).
    pub deltas_since_image: u32,
}

/// full_page_writes as seen in the stream: from this LSN on, FPW was on/off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FpwModeChange {
    pub lsn: Lsn,
    pub full_page_writes: bool,
    /// Learnt from an XLOG_FPW_CHANGE record (true) or a checkpoint record (false).
    pub explicit: bool,
}

#[derive(Debug, Default)]
pub struct PageIndex {
    pages: HashMap<PageKey, PageHistory>,
    pub records: u64,
    pub block_refs: u64,
    pub applicable_images: u64,
    pub consistency_images: u64,
    pub wal_bytes: u64,
    pub last_record_end: Lsn,
    pub fpw_modes: Vec<FpwModeChange>,
}

impl PageIndex {
    pub fn new() -> PageIndex {
        PageIndex::default()
    }

    pub fn page(&self, key: &PageKey) -> Option<&PageHistory> {
        self.pages.get(key)
    }

    pub fn pages(&self) -> usize {
        self.pages.len()
    }

    /// Number of (page, record) entries held.
    pub fn entries(&self) -> u64 {
        self.block_refs
    }

    /// Indexes one decoded record. Records must arrive in LSN order, each exactly once.
    pub fn add_record(&mut self, rec: &DecodedRecord) {
        self.records += 1;
        self.wal_bytes += u64::from(rec.total_len());
        self.last_record_end = rec.end_lsn;
        for block in rec.blocks() {
            let kind = ChangeKind::of(block);
            let h = self.pages.entry(block.page_key()).or_default();
            debug_assert!(
                h.changes.last().is_none_or(|(l, _)| *l < rec.lsn),
                "record indexed twice or out of order"
            );
            h.changes.push((rec.lsn, kind));
            if kind.resets_chain() {
                h.deltas_since_image = 0;
            } else {
                h.deltas_since_image = h.deltas_since_image.saturating_add(1);
            }
            self.block_refs += 1;
            match (block.has_image(), kind) {
                (true, ChangeKind::Image) => self.applicable_images += 1,
                (true, _) => self.consistency_images += 1,
                _ => {}
            }
        }
        if rec.rmid() == RM_XLOG_ID {
            self.observe_fpw_mode(rec);
        }
    }

    fn observe_fpw_mode(&mut self, rec: &DecodedRecord) {
        let data = rec.main_data();
        let (value, explicit) = match rec.rmgr_info() {
            XLOG_FPW_CHANGE => match data.first() {
                Some(v) => (*v != 0, true),
                None => return,
            },
            XLOG_CHECKPOINT_SHUTDOWN | XLOG_CHECKPOINT_ONLINE => {
                match data.get(CHECKPOINT_FPW_OFFSET) {
                    Some(v) => (*v != 0, false),
                    None => return,
                }
            }
            _ => return,
        };
        let current = self.fpw_modes.last().map(|m| m.full_page_writes);
        if current != Some(value) {
            self.fpw_modes.push(FpwModeChange {
                lsn: rec.lsn,
                full_page_writes: value,
                explicit,
            });
        }
    }

    /// full_page_writes in force at `lsn`, if known.
    pub fn fpw_at(&self, lsn: Lsn) -> Option<bool> {
        self.fpw_modes
            .iter()
            .rev()
            .find(|m| m.lsn <= lsn)
            .map(|m| m.full_page_writes)
    }
}
