//! The helper's durable state in its data directory:
//!
//! ```text
//! DATA_DIR/
//!   helper.lock          one running helper per data directory (advisory lock)
//!   helper.json          cluster identity + bootstrap positions (HelperMeta)
//!   base/SPC/DB/REL...   relation files from BASE_BACKUP (base page images)
//!   wal/                 WAL archive: segment files as in pg_wal, plus `flushed`
//!   images/              generated page images (images-NNNNNN.dat)
//!   retention.json       retention horizon and what the WAL before it said (retention.rs)
//! ```
//!
//! The page index is in memory and rebuilt from the archive at start-up (from the retention
//! horizon's segment, after loading `retention.json`), so it never holds a record the archive
//! does not durably have.

pub mod archive;
pub mod base;
pub mod check;
pub mod images;
pub mod index;
pub mod ingest;
pub mod lock;
pub mod meta;
pub mod offline;
pub mod page_store;
pub mod repair;
pub mod replay;
pub mod retention;
pub mod verify;

use crate::wal::WalError;
use crate::wal::page::Lsn;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

/// Opening, ingesting into or catching up a store failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Lock(#[from] lock::LockError),
    #[error(transparent)]
    Meta(#[from] meta::MetaError),
    #[error(transparent)]
    Archive(#[from] archive::ArchiveError),
    #[error(transparent)]
    Images(#[from] images::ImageStoreError),
    #[error(transparent)]
    Retention(#[from] retention::RetentionError),
    #[error("WAL decoding failed at {lsn}: {source}")]
    Decode { lsn: Lsn, source: WalError },
    #[error("cannot use data directory {dir}: {source}")]
    DataDir { dir: PathBuf, source: io::Error },
}

/// fsync a directory, so a created or renamed entry in it is durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Writes `bytes` to `path` atomically and durably (temp file, fsync, rename, fsync dir).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    {
        let mut f = File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    sync_dir(path.parent().unwrap_or_else(|| Path::new(".")))
}
