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
pub(crate) mod remote;
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
    #[error(transparent)]
    Remote(#[from] remote::RemoteError),
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

/// Space the archive and image generation leave free on the data directory's filesystem,
/// for retention's images and state (`run --disk-reserve`); 0: none. Set once at start-up.
static DISK_HEADROOM: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

pub(crate) fn set_disk_headroom(bytes: u64) {
    DISK_HEADROOM.store(bytes, std::sync::atomic::Ordering::Relaxed);
}

/// The headroom set by [`set_disk_headroom`] (for /status and /metrics).
pub(crate) fn disk_headroom() -> u64 {
    DISK_HEADROOM.load(std::sync::atomic::Ordering::Relaxed)
}

/// Bytes available to this process on the filesystem of `dir` (`statvfs`).
pub(crate) fn free_bytes(dir: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    // SAFETY: statvfs only writes into the zeroed struct we own; the path is a C string.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return None;
    }
    Some((st.f_bavail as u64).saturating_mul(st.f_frsize as u64))
}

/// ENOSPC when writing `len` more bytes under `dir` would leave less than the headroom:
/// the archive and image generation stop there, so that retention can always write the
/// images and state it needs before it deletes WAL.
pub(crate) fn check_headroom(dir: &Path, len: u64) -> io::Result<()> {
    let headroom = DISK_HEADROOM.load(std::sync::atomic::Ordering::Relaxed);
    if headroom == 0 {
        return Ok(());
    }
    match free_bytes(dir) {
        Some(free) if free < headroom.saturating_add(len) => {
            Err(io::Error::from_raw_os_error(libc::ENOSPC))
        }
        _ => Ok(()),
    }
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
