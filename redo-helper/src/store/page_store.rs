//! Per page, its images and its deltas, and GetPage@LSN: start from the newest image at or
//! before the LSN (a generated image, an applicable full page image or WILL_INIT record in
//! the WAL, or the base backup's page) and replay the deltas after it with the Rust redo.

use super::archive::{RecordReadError, RecordReader, WalArchive};
use super::base::BaseFiles;
use super::images::{ImageStore, ImageStoreError};
use super::index::{ChangeKind, PageChange, PageIndex, StartKind};
use crate::wal::block::PageKey;
use crate::wal::page::{BLCKSZ, Lsn};
use crate::wal::record::DecodedRecord;
use crate::wal::rmgr::record_type_name;
use std::sync::{Arc, Mutex, RwLock};

/// The redo engine as page reconstruction needs it: apply one record's change to one page it
/// affects (a block reference, or a page the record changes implicitly such as a VM page),
/// following PostgreSQL's redo rules (image restore, WILL_INIT, page-LSN check).
pub trait PageRedo: Send + Sync {
    fn apply(&self, key: &PageKey, page: &mut [u8], rec: &DecodedRecord) -> Result<(), String>;
}

/// Redo that can only restore applicable full page images from the WAL; any other change
/// is reported as not replayable. Stands in where the Rust redo engine is not linked.
pub struct ImageOnlyRedo;

impl PageRedo for ImageOnlyRedo {
    fn apply(&self, key: &PageKey, page: &mut [u8], rec: &DecodedRecord) -> Result<(), String> {
        let block = rec
            .blocks()
            .iter()
            .find(|b| b.page_key() == *key && b.has_applicable_image());
        let Some(block) = block else {
            return Err(format!(
                "no redo engine for {} records",
                crate::wal::rmgr::RmgrId(rec.rmid()).name()
            ));
        };
        let page: &mut [u8; BLCKSZ] = page
            .try_into()
            .map_err(|_| "page buffer is not 8 KB".to_string())?;
        rec.restore_block_image(block, page)
            .map_err(|e| e.to_string())?;
        // PostgreSQL stamps a restored page with the record's end (XLogReadBufferForRedoExtended).
        page[0..4].copy_from_slice(&((rec.end_lsn.0 >> 32) as u32).to_le_bytes());
        page[4..8].copy_from_slice(&(rec.end_lsn.0 as u32).to_le_bytes());
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PageError {
    #[error("page {key} is unknown to the helper (no base image and no WAL for it)")]
    Unknown { key: PageKey },
    #[error(
        "page {key} is unreadable at {lsn}: {rmgr} record {record} at {at} is not replayed by the helper's redo"
    )]
    Unreadable {
        key: PageKey,
        lsn: Lsn,
        rmgr: String,
        record: String,
        at: Lsn,
    },
    #[error("page {key}: redo of the record at {at} failed: {reason}")]
    Redo {
        key: PageKey,
        at: Lsn,
        reason: String,
    },
    #[error("page {key} at {lsn}: WAL not received yet (decoded up to {decoded})")]
    NotYetReceived {
        key: PageKey,
        lsn: Lsn,
        decoded: Lsn,
    },
    #[error("page {key} at {lsn}: before the start of the helper's history ({start})")]
    BeforeRetention { key: PageKey, lsn: Lsn, start: Lsn },
    #[error("page {key}: {source}")]
    Record {
        key: PageKey,
        source: RecordReadError,
    },
    #[error(transparent)]
    Images(#[from] ImageStoreError),
    #[error("page {key}: reading the base image: {source}")]
    Base {
        key: PageKey,
        source: std::io::Error,
    },
}

/// A page rebuilt as of an LSN.
#[derive(Debug, Clone)]
pub struct Reconstructed {
    pub page: Vec<u8>,
    /// Deltas replayed on top of the starting image.
    pub deltas_replayed: u32,
    /// Where the replay started (LSN of the image; the backup start for base pages).
    pub start_lsn: Lsn,
    pub start: &'static str,
}

pub struct PageStore {
    pub base: BaseFiles,
    pub images: Mutex<ImageStore>,
    pub index: RwLock<PageIndex>,
    redo: Arc<dyn PageRedo>,
    /// Template for per-call record readers (each has its own buffer).
    archive: RecordReader,
    backup_start: Lsn,
}

impl PageStore {
    pub fn new(
        base: BaseFiles,
        images: ImageStore,
        archive: &WalArchive,
        system_identifier: u64,
        backup_start: Lsn,
        redo: Arc<dyn PageRedo>,
    ) -> PageStore {
        PageStore {
            base,
            images: Mutex::new(images),
            index: RwLock::new(PageIndex::new()),
            redo,
            archive: RecordReader::new(archive, system_identifier),
            backup_start,
        }
    }

    /// The page as of `lsn` (None: as of everything decoded).
    pub fn reconstruct(&self, key: &PageKey, lsn: Option<Lsn>) -> Result<Reconstructed, PageError> {
        self.reconstruct_with(key, lsn, true)
    }

    /// Like `reconstruct`; with `use_generated_images = false` the replay ignores the helper's
    /// own images and runs the whole chain from the WAL or the base backup (for verification).
    pub fn reconstruct_with(
        &self,
        key: &PageKey,
        lsn: Option<Lsn>,
        use_generated_images: bool,
    ) -> Result<Reconstructed, PageError> {
        // Copy what is needed under the read lock; replay without it.
        let (target, start, changes, start_change) = {
            let idx = self.index.read().unwrap_or_else(|e| e.into_inner());
            let decoded = idx.last_record_end;
            let target = lsn.unwrap_or(decoded);
            if target > decoded {
                return Err(PageError::NotYetReceived {
                    key: *key,
                    lsn: target,
                    decoded,
                });
            }
            if target < self.backup_start {
                return Err(PageError::BeforeRetention {
                    key: *key,
                    lsn: target,
                    start: self.backup_start,
                });
            }
            match idx.page(key) {
                Some(h) => {
                    let start = if use_generated_images {
                        h.start_point(target)
                    } else {
                        h.wal_start_point(target)
                    };
                    let after = start.map(|(l, _)| l);
                    let start_change = match start {
                        Some((l, StartKind::Wal)) => h.changes.iter().find(|c| c.lsn == l).copied(),
                        _ => None,
                    };
                    (
                        target,
                        start,
                        h.changes_between(after, target).to_vec(),
                        start_change,
                    )
                }
                None => (target, None, Vec::new(), None),
            }
        };
        let mut reader = self.archive.clone_empty();
        let mut rec = DecodedRecord::default();
        let mut read = |at: Lsn, rec: &mut DecodedRecord| -> Result<(), PageError> {
            reader
                .read_into(at, rec)
                .map_err(|source| PageError::Record { key: *key, source })
        };
        let check_supported = |c: &PageChange| -> Result<(), PageError> {
            if c.kind == ChangeKind::Unsupported {
                return Err(PageError::Unreadable {
                    key: *key,
                    lsn: target,
                    rmgr: crate::wal::rmgr::RmgrId(c.rmid).name().into_owned(),
                    record: record_type_name(c.rmid, c.info).into_owned(),
                    at: c.lsn,
                });
            }
            Ok(())
        };
        let (mut page, start_lsn, start_name) = match start {
            Some((l, StartKind::Generated)) => {
                let img = self
                    .images
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .read(key, l)?;
                (
                    img.ok_or(PageError::Unknown { key: *key })?,
                    l,
                    "generated image",
                )
            }
            Some((l, StartKind::Wal)) => {
                let mut page = vec![0u8; BLCKSZ];
                if let Some(c) = start_change {
                    check_supported(&c)?;
                }
                read(l, &mut rec)?;
                self.redo
                    .apply(key, &mut page, &rec)
                    .map_err(|reason| PageError::Redo {
                        key: *key,
                        at: l,
                        reason,
                    })?;
                (page, l, "WAL image")
            }
            None => match self
                .base
                .read_page(key)
                .map_err(|source| PageError::Base { key: *key, source })?
            {
                Some(p) => (p, self.backup_start, "base backup"),
                // A page that did not exist at the backup: its first record must create it.
                None if !changes.is_empty() => (vec![0u8; BLCKSZ], self.backup_start, "empty page"),
                None => return Err(PageError::Unknown { key: *key }),
            },
        };
        for c in &changes {
            check_supported(c)?;
            read(c.lsn, &mut rec)?;
            self.redo
                .apply(key, &mut page, &rec)
                .map_err(|reason| PageError::Redo {
                    key: *key,
                    at: c.lsn,
                    reason,
                })?;
        }
        Ok(Reconstructed {
            page,
            deltas_replayed: changes.len() as u32,
            start_lsn,
            start: start_name,
        })
    }
}
