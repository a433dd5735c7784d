//! The disk reserve held as a file, `DATA_DIR/disk-reserve` (`run --disk-reserve`).
//!
//! Retention frees space only by deleting, and before it may delete WAL a pass must write:
//! images of the pages changed before the new horizon, and its state file (`retention.rs`).
//! The helper's own writers leave it room: the WAL archive and image generation stop when
//! less than the reserve is free ([`super::check_headroom`]). Writers that are not the
//! helper's (a log, another service on the same disk, an operator's copy) know nothing of
//! that headroom; once they take it, a pass can write nothing, so it deletes nothing, and the
//! helper stays out of space for good. So retention also holds the reserve as an allocated
//! file: a pass that finds less than the reserve free deletes the file first and writes in
//! the room it leaves, whoever filled the disk. The file is allocated again only when three
//! times the reserve is free, so that holding it leaves the helper's writers a reserve's
//! worth of room above the point where they stop.
//!
//! The reserve follows what retention measures a step needs (`retention.rs`): a pass on a
//! full disk moves the horizon by one segment, and writes an image of every page changed in
//! it first, which on small-record workloads is hundreds of MB. [`Ballast::resize`] follows
//! the headroom in force, growing the file when there is room to spare and shrinking it
//! once the largest step has aged out.
//!
//! The file's blocks are allocated (`posix_fallocate`), not a sparse length: deleting a sparse
//! file frees nothing. Only retention releases it, so without retention (`--retain all`) no
//! file is held.

use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// The file's name in the data directory.
pub(crate) const FILE_NAME: &str = "disk-reserve";

/// Free space, in reserves, above which a released file is allocated again.
const REFILL_FACTOR: u64 = 3;

/// Without retention nothing would ever release the file: one an earlier run left goes.
pub(crate) fn remove(data_dir: &Path) {
    Ballast::open(data_dir, 0);
}

/// `DATA_DIR/disk-reserve` and whether it is held now.
#[derive(Debug)]
pub(crate) struct Ballast {
    dir: PathBuf,
    path: PathBuf,
    /// The reserve: the size the file is allocated with.
    bytes: AtomicU64,
    /// The file's allocated size while it is held (below `bytes` when growing it found too
    /// little room); 0 while released.
    held_bytes: AtomicU64,
}

impl Ballast {
    /// At start-up: keeps (and resizes to `bytes`) the file an earlier run left, or allocates
    /// it when three times `bytes` is free. `bytes` 0 removes a file left by an earlier run.
    pub(crate) fn open(data_dir: &Path, bytes: u64) -> Ballast {
        let b = Ballast {
            dir: data_dir.to_path_buf(),
            path: data_dir.join(FILE_NAME),
            bytes: AtomicU64::new(bytes),
            held_bytes: AtomicU64::new(0),
        };
        if bytes == 0 {
            b.remove_left_over();
        } else if b.path.exists() {
            match b.allocate(bytes) {
                Ok(()) => b.held_bytes.store(bytes, Ordering::SeqCst),
                Err(e) => {
                    log::warn!(
                        "disk reserve: cannot resize {} to {bytes} bytes ({e}); it is released",
                        b.path.display()
                    );
                    b.remove_left_over();
                }
            }
        } else {
            b.refill();
            if !b.held() {
                log::warn!(
                    "disk reserve: less than three times the reserve ({bytes} bytes) is free on \
                     the data directory's filesystem; {} is allocated once there is",
                    b.path.display()
                );
            }
        }
        b
    }

    fn remove_left_over(&self) {
        if let Err(e) = self.delete() {
            log::warn!("disk reserve: cannot remove {}: {e}", self.path.display());
        }
    }

    /// Deletes the file (absent is fine) and makes that durable.
    fn delete(&self) -> io::Result<()> {
        match std::fs::remove_file(&self.path) {
            Ok(()) => super::sync_dir(&self.dir),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
        }
    }

    pub(crate) fn held(&self) -> bool {
        self.held_bytes.load(Ordering::SeqCst) > 0
    }

    /// The allocated size of the file (0: released).
    pub(crate) fn held_bytes(&self) -> u64 {
        self.held_bytes.load(Ordering::SeqCst)
    }

    /// A new reserve (the headroom in force grew or shrank). A held file shrinks at once; it
    /// grows only when twice the new reserve stays free after the growth (as after a refill
    /// at three times), so that growing it never takes the room the helper's writers stop
    /// at.
    pub(crate) fn resize(&self, bytes: u64) {
        let old = self.bytes.swap(bytes, Ordering::SeqCst);
        let held = self.held_bytes();
        if held == 0 || bytes == 0 || (held == bytes && old == bytes) {
            return;
        }
        if bytes > held {
            let Some(free) = super::free_bytes(&self.dir) else {
                return;
            };
            if free < (bytes - held).saturating_add(bytes.saturating_mul(REFILL_FACTOR - 1)) {
                return;
            }
        }
        match self.allocate(bytes) {
            Ok(()) => {
                self.held_bytes.store(bytes, Ordering::SeqCst);
                log::info!(
                    "disk reserve: {} now holds {bytes} bytes (was {held})",
                    self.path.display()
                );
            }
            // Still allocated at its old size: fallocate allocates, set_len only cuts.
            Err(e) => log::warn!(
                "disk reserve: cannot resize {} to {bytes} bytes ({e}); it holds {held}",
                self.path.display()
            ),
        }
    }

    /// Deletes the file when less than the reserve is free on the filesystem.
    pub(crate) fn release_if_short(&self) {
        if !self.held() {
            return;
        }
        let Some(free) = super::free_bytes(&self.dir) else {
            return;
        };
        let bytes = self.bytes.load(Ordering::SeqCst);
        if free >= bytes {
            return;
        }
        if let Err(e) = self.delete() {
            log::warn!("disk reserve: cannot release {}: {e}", self.path.display());
            return;
        }
        let held = self.held_bytes.swap(0, Ordering::SeqCst);
        log::warn!(
            "disk reserve: {free} bytes free on the data directory's filesystem, less than the \
             reserve ({bytes} bytes): released {} ({held} bytes) for retention",
            self.path.display(),
        );
    }

    /// Allocates the released (or never allocated) file once three times the reserve is
    /// free.
    pub(crate) fn refill(&self) {
        let bytes = self.bytes.load(Ordering::SeqCst);
        if self.held() || bytes == 0 {
            return;
        }
        let Some(free) = super::free_bytes(&self.dir) else {
            return;
        };
        if free < bytes.saturating_mul(REFILL_FACTOR) {
            return;
        }
        match self.allocate(bytes) {
            Ok(()) => {
                self.held_bytes.store(bytes, Ordering::SeqCst);
                log::info!(
                    "disk reserve: holding {bytes} bytes for retention in {}",
                    self.path.display()
                );
            }
            Err(e) => {
                log::warn!(
                    "disk reserve: cannot allocate {} ({e}); retrying later",
                    self.path.display()
                );
                self.remove_left_over();
            }
        }
    }

    /// The file with exactly `bytes` allocated, durable.
    fn allocate(&self, bytes: u64) -> io::Result<()> {
        let f = super::private_file_options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&self.path)?;
        let len =
            libc::off_t::try_from(bytes).map_err(|_| io::Error::from_raw_os_error(libc::EFBIG))?;
        // SAFETY: the descriptor is open for the duration of the call (borrowed from `f`);
        // posix_fallocate reads no memory of ours. It returns the error number itself.
        let rc = unsafe { libc::posix_fallocate(f.as_raw_fd(), 0, len) };
        if rc != 0 {
            return Err(io::Error::from_raw_os_error(rc));
        }
        // A file from an earlier run with a larger reserve is cut back.
        f.set_len(bytes)?;
        f.sync_all()?;
        super::sync_dir(&self.dir)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("ballast-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).expect("temp dir");
        d
    }

    #[test]
    fn is_allocated_resized_and_removed() {
        let d = temp_dir("sizes");
        let b = Ballast::open(&d, 1 << 20);
        assert!(b.held());
        let path = d.join(FILE_NAME);
        let meta = std::fs::metadata(&path).expect("ballast file");
        assert_eq!(meta.len(), 1 << 20);
        // Allocated, not sparse: its blocks are what deleting it frees.
        assert!(std::os::unix::fs::MetadataExt::blocks(&meta) * 512 >= 1 << 20);
        // Enough room: nothing to release.
        b.release_if_short();
        assert!(b.held() && path.exists());
        drop(b);
        // A smaller reserve at the next start cuts the file back; 0 removes it.
        let b = Ballast::open(&d, 4096);
        assert!(b.held());
        assert_eq!(std::fs::metadata(&path).expect("file").len(), 4096);
        // Resized while held: grows (room to spare here) and shrinks.
        b.resize(1 << 20);
        assert_eq!(b.held_bytes(), 1 << 20);
        assert_eq!(std::fs::metadata(&path).expect("file").len(), 1 << 20);
        b.resize(8192);
        assert_eq!(std::fs::metadata(&path).expect("file").len(), 8192);
        drop(b);
        let b = Ballast::open(&d, 0);
        assert!(!b.held());
        assert!(!path.exists());
        let _ = std::fs::remove_dir_all(&d);
    }
}
