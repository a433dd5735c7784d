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

pub(crate) mod archive;
pub(crate) mod base;
pub(crate) mod check;
pub(crate) mod images;
pub(crate) mod index;
pub(crate) mod ingest;
pub(crate) mod lock;
pub(crate) mod meta;
pub(crate) mod offline;
pub(crate) mod page_store;
pub(crate) mod repair;
pub(crate) mod replay;
pub(crate) mod retention;
pub(crate) mod verify;

use crate::wal::WalError;
use crate::wal::page::Lsn;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

/// Opening, ingesting into or catching up a store failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum StoreError {
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
    #[error(
        "{count} page image(s) damaged (first: {first}); retention removed the history before {horizon}, so images may be the only record of it and pages cannot be proven: bootstrap the helper again into an empty data directory"
    )]
    ImagesDamaged {
        count: usize,
        first: String,
        horizon: Lsn,
    },
}

/// fsync a directory, so a created or renamed entry in it is durable.
pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Writes `bytes` to `path` atomically and durably (temp file, fsync, rename, fsync dir).
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
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
