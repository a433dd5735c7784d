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
//!   disk-reserve         --disk-reserve held as an allocated file, released by retention on
//!                        a full disk (ballast.rs)
//! ```
//!
//! The page index is in memory and rebuilt from the archive at start-up (from the retention
//! horizon's segment, after loading `retention.json`), so it never holds a record the archive
//! does not durably have.

pub(crate) mod archive;
pub(crate) mod ballast;
pub(crate) mod base;
pub(crate) mod cache;
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
pub(crate) mod shard;
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
        "data directory {dir} is accessible by group or others (mode {mode:04o}), but it holds a copy of every table and the WAL; fix with: chmod 0700 {dir}"
    )]
    DataDirAccess { dir: PathBuf, mode: u32 },
    #[error(
        "data directory {dir} is owned by uid {owner}, not by the user running the helper (uid {euid}); run the helper as its owner"
    )]
    DataDirOwner { dir: PathBuf, owner: u32, euid: u32 },
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
/// What retention has learnt it may need for one step (see [`set_learnt_disk_headroom`]).
static DISK_HEADROOM_LEARNT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

pub(crate) fn set_disk_headroom(bytes: u64) {
    DISK_HEADROOM.store(bytes, std::sync::atomic::Ordering::Relaxed);
    DISK_HEADROOM_LEARNT.store(0, std::sync::atomic::Ordering::Relaxed);
}

/// Sets the headroom retention measured it needs to move its horizon by one WAL segment
/// (`retention.rs`; it follows the largest step of the last day or two, so it may go down
/// again): in force where above `--disk-reserve`, as a reserve smaller than a step could not
/// get a pass out of a full disk. No effect when the reserve is 0 (turned off).
pub(crate) fn set_learnt_disk_headroom(bytes: u64) {
    if DISK_HEADROOM.load(std::sync::atomic::Ordering::Relaxed) > 0 {
        DISK_HEADROOM_LEARNT.store(bytes, std::sync::atomic::Ordering::Relaxed);
    }
}

/// The headroom in force: `--disk-reserve`, or more once retention has learnt that a step
/// needs more (for /status, /metrics and the reserve file).
pub(crate) fn disk_headroom() -> u64 {
    let set = DISK_HEADROOM.load(std::sync::atomic::Ordering::Relaxed);
    if set == 0 {
        return 0;
    }
    set.max(DISK_HEADROOM_LEARNT.load(std::sync::atomic::Ordering::Relaxed))
}

/// `--disk-reserve` as given.
pub(crate) fn configured_disk_headroom() -> u64 {
    DISK_HEADROOM.load(std::sync::atomic::Ordering::Relaxed)
}

/// `statvfs` of the filesystem of `dir`.
fn statvfs(dir: &Path) -> Option<libc::statvfs> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    // SAFETY: statvfs only writes into the zeroed struct we own; the path is a C string.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return None;
    }
    Some(st)
}

/// Bytes available to this process on the filesystem of `dir` (`statvfs`).
pub(crate) fn free_bytes(dir: &Path) -> Option<u64> {
    let st = statvfs(dir)?;
    Some(st.f_bavail.saturating_mul(st.f_frsize))
}

/// The size of the filesystem of `dir` (`statvfs`).
pub(crate) fn filesystem_bytes(dir: &Path) -> Option<u64> {
    let st = statvfs(dir)?;
    Some(st.f_blocks.saturating_mul(st.f_frsize))
}

/// ENOSPC when writing `len` more bytes under `dir` would leave less than the headroom:
/// the archive and image generation stop there, so that retention can always write the
/// images and state it needs before it deletes WAL.
pub(crate) fn check_headroom(dir: &Path, len: u64) -> io::Result<()> {
    let headroom = disk_headroom();
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

/// Asks the OS to start reading `len` bytes of `file` at `offset` into its page cache
/// (`POSIX_FADV_WILLNEED`) and returns at once: a read that needs several pieces from a cold
/// disk issues them all first, so the device serves them together instead of one after the
/// other. Only a hint: failures are ignored (the reads that follow report real errors).
pub(crate) fn prefetch(file: &std::fs::File, offset: u64, len: u64) {
    use std::os::fd::AsRawFd;
    let (Ok(offset), Ok(len)) = (libc::off_t::try_from(offset), libc::off_t::try_from(len)) else {
        return;
    };
    // SAFETY: the descriptor is open for the duration of the call (borrowed from `file`);
    // posix_fadvise reads no memory of ours.
    let _ =
        unsafe { libc::posix_fadvise(file.as_raw_fd(), offset, len, libc::POSIX_FADV_WILLNEED) };
}

/// fsync a directory, so a created or renamed entry in it is durable.
pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Mode of every directory the helper creates in its data directory: owner only, as
/// PostgreSQL's `pg_dir_create_mode` (0700) for PGDATA. The files hold copies of every
/// table (pg_authid's password hashes too) and the WAL.
pub(crate) const PRIVATE_DIR_MODE: u32 = 0o700;
/// Mode of every file the helper creates: PostgreSQL's `pg_file_create_mode` (0600).
pub(crate) const PRIVATE_FILE_MODE: u32 = 0o600;

/// `mkdir -p` with [`PRIVATE_DIR_MODE`] for every directory it creates (the process umask,
/// 0077 in `redo-helper`, can only take bits away). Existing directories are left as they are.
pub(crate) fn create_private_dir_all(dir: &Path) -> io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(PRIVATE_DIR_MODE)
        .create(dir)
}

/// Creates the data directory (0700) if missing and checks that only its owner, the user
/// running the helper, can reach it, as PostgreSQL's `checkDataDir` does for PGDATA. An
/// existing but empty directory is tightened to 0700 as `initdb` does ("fixing permissions
/// on existing directory"); one with contents and group/other bits is refused, because
/// what is already in it may have been readable.
pub(crate) fn prepare_private_data_dir(dir: &Path) -> Result<(), StoreError> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let dd = |source| StoreError::DataDir {
        dir: dir.to_path_buf(),
        source,
    };
    create_private_dir_all(dir).map_err(dd)?;
    let meta = std::fs::metadata(dir).map_err(dd)?;
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    if meta.uid() != euid {
        return Err(StoreError::DataDirOwner {
            dir: dir.to_path_buf(),
            owner: meta.uid(),
            euid,
        });
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o077 != 0 {
        let empty = std::fs::read_dir(dir).map_err(dd)?.next().is_none();
        if !empty {
            return Err(StoreError::DataDirAccess {
                dir: dir.to_path_buf(),
                mode,
            });
        }
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(PRIVATE_DIR_MODE))
            .map_err(dd)?;
        log::info!(
            "data directory {}: fixed permissions of the empty directory ({mode:04o} -> 0700)",
            dir.display()
        );
    }
    Ok(())
}

/// `OpenOptions` that create a missing file with [`PRIVATE_FILE_MODE`].
pub(crate) fn private_file_options() -> std::fs::OpenOptions {
    use std::os::unix::fs::OpenOptionsExt;
    let mut o = std::fs::OpenOptions::new();
    o.mode(PRIVATE_FILE_MODE);
    o
}

/// Writes `bytes` to `path` atomically and durably (temp file, fsync, rename, fsync dir).
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    {
        let mut f = private_file_options()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    sync_dir(path.parent().unwrap_or_else(|| Path::new(".")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn private_dirs_and_files_whatever_the_umask() {
        // The test process runs under the usual umask (022): the explicit modes must hold.
        let root = std::env::temp_dir().join(format!("rh_private_{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let dir = root.join("a/b");
        create_private_dir_all(&dir).unwrap();
        assert_eq!(mode(&root.join("a")), 0o700);
        assert_eq!(mode(&dir), 0o700);
        write_atomic(&dir.join("f.json"), b"{}").unwrap();
        assert_eq!(mode(&dir.join("f.json")), 0o600);
        let f = dir.join("seg");
        private_file_options()
            .write(true)
            .create(true)
            .truncate(false)
            .open(&f)
            .unwrap();
        assert_eq!(mode(&f), 0o600);
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn data_dir_open_to_others_is_refused_unless_empty() {
        let dir = std::env::temp_dir().join(format!("rh_datadir_{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        // Empty: tightened, as initdb does.
        prepare_private_data_dir(&dir).unwrap();
        assert_eq!(mode(&dir), 0o700);
        // With contents: refused, with the fix in the message.
        std::fs::write(dir.join("helper.json"), "{}").unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o750)).unwrap();
        let e = prepare_private_data_dir(&dir).unwrap_err().to_string();
        assert!(e.contains("mode 0750"), "{e}");
        assert!(e.contains(&format!("chmod 0700 {}", dir.display())), "{e}");
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        prepare_private_data_dir(&dir).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
