//! One running helper per data directory, and its hand-over to `redo-helper repair`.
//!
//! `helper.lock` is held (flock) for the life of the process that uses the directory and
//! holds its pid. A repair needed while the helper runs (PostgreSQL's pre-start step after a
//! crash) cannot wait for the helper to exit: it runs forever. So the repair asks for the
//! directory ([`RepairRequest`]): it writes its pid into `repair.request`, signals the helper
//! (SIGUSR1), which stops cleanly and re-executes itself; the new image finds the request
//! with a live pid and waits ([`DataDirLock::acquire_after_repair`]) until the file is gone,
//! while the repair takes the lock as soon as it is free. The repair releases the lock before
//! removing the request, so the helper sees the request gone only once the lock is free. A
//! request whose process died (a killed repair) is stale and ignored: the pid is checked in
//! /proc. The helper re-executes rather than reopening its store in place: everything it
//! holds (the archive's positions, the index, image workers, retention) is rebuilt from the
//! directory the repair extended, exactly as after a restart.

use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub(crate) enum LockError {
    #[error("data directory {dir} is in use by another redo-helper (pid {pid}); stop it first")]
    InUse { dir: PathBuf, pid: String },
    #[error("cannot lock data directory {dir}: {source}")]
    Io { dir: PathBuf, source: io::Error },
}

/// Held for the life of the process; the OS releases it when the process dies (kill -9 too).
pub(crate) struct DataDirLock {
    _file: File,
}

const REQUEST_FILE: &str = "repair.request";

/// The pid of a live process that asked for the directory (a repair), if any.
pub(crate) fn pending_repair(dir: &Path) -> Option<u32> {
    let text = std::fs::read_to_string(dir.join(REQUEST_FILE)).ok()?;
    let pid: u32 = text.trim().parse().ok()?;
    (pid != std::process::id() && Path::new(&format!("/proc/{pid}")).exists()).then_some(pid)
}

/// A repair's claim on a data directory a running helper holds; removed on drop.
pub(crate) struct RepairRequest {
    path: PathBuf,
}

impl RepairRequest {
    pub(crate) fn create(dir: &Path) -> Result<RepairRequest, LockError> {
        let path = dir.join(REQUEST_FILE);
        std::fs::write(&path, format!("{}\n", std::process::id())).map_err(|source| {
            LockError::Io {
                dir: dir.to_path_buf(),
                source,
            }
        })?;
        Ok(RepairRequest { path })
    }
}

impl Drop for RepairRequest {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// The pid a lock holder wrote into `helper.lock`.
pub(crate) fn holder_pid(dir: &Path) -> Option<u32> {
    std::fs::read_to_string(dir.join("helper.lock"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

impl DataDirLock {
    /// Like [`acquire`](Self::acquire), first waiting while a live repair has asked for the
    /// directory (`waiting` is told its pid once), then for up to 10 s for the lock itself.
    pub(crate) fn acquire_after_repair(
        dir: &Path,
        mut waiting: impl FnMut(u32),
    ) -> Result<DataDirLock, LockError> {
        let mut told = false;
        while let Some(pid) = pending_repair(dir) {
            if !told {
                waiting(pid);
                told = true;
            }
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
        if !told {
            return Self::acquire(dir);
        }
        Self::acquire_within(dir, std::time::Duration::from_secs(10))
    }

    /// The lock for a repair: taken at once when free; otherwise, with `wait`, asked of the
    /// running helper (a [`RepairRequest`] and SIGUSR1) and waited for up to `wait`. The
    /// request is returned to be dropped after the lock.
    pub(crate) fn take_over(
        dir: &Path,
        wait: Option<std::time::Duration>,
    ) -> Result<(DataDirLock, Option<RepairRequest>), LockError> {
        let busy = match Self::acquire(dir) {
            Ok(lock) => return Ok((lock, None)),
            Err(e @ LockError::InUse { .. }) => e,
            Err(e) => return Err(e),
        };
        let (Some(wait), Some(pid)) = (wait, holder_pid(dir)) else {
            return Err(busy);
        };
        let request = RepairRequest::create(dir)?;
        let Ok(target) = libc::pid_t::try_from(pid) else {
            return Err(busy);
        };
        // SAFETY: kill has no memory-safety preconditions.
        if unsafe { libc::kill(target, libc::SIGUSR1) } != 0 {
            return Err(LockError::Io {
                dir: dir.to_path_buf(),
                source: io::Error::other(format!(
                    "cannot signal the running redo-helper (pid {pid}): {}",
                    io::Error::last_os_error()
                )),
            });
        }
        let lock = Self::acquire_within(dir, wait)?;
        Ok((lock, Some(request)))
    }

    /// Retries [`acquire`](Self::acquire) until `timeout` while the directory is in use.
    pub(crate) fn acquire_within(
        dir: &Path,
        timeout: std::time::Duration,
    ) -> Result<DataDirLock, LockError> {
        let until = std::time::Instant::now() + timeout;
        loop {
            match Self::acquire(dir) {
                Err(LockError::InUse { .. }) if std::time::Instant::now() < until => {
                    std::thread::sleep(std::time::Duration::from_millis(100));
                }
                other => return other,
            }
        }
    }

    pub(crate) fn acquire(dir: &Path) -> Result<DataDirLock, LockError> {
        let path = dir.join("helper.lock");
        let io_err = |source| LockError::Io {
            dir: dir.to_path_buf(),
            source,
        };
        let mut file = super::private_file_options()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&path)
            .map_err(io_err)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let pid = std::fs::read_to_string(&path)
                    .unwrap_or_default()
                    .trim()
                    .to_string();
                return Err(LockError::InUse {
                    dir: dir.to_path_buf(),
                    pid,
                });
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(io_err(e)),
        }
        file.set_len(0).map_err(io_err)?;
        writeln!(file, "{}", std::process::id()).map_err(io_err)?;
        Ok(DataDirLock { _file: file })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_lock_is_refused() {
        let dir = std::env::temp_dir().join(format!("rh_lock_{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let first = DataDirLock::acquire(&dir).unwrap();
        let err = DataDirLock::acquire(&dir).err().unwrap();
        assert!(
            err.to_string().contains("in use by another redo-helper"),
            "{err}"
        );
        drop(first);
        assert!(DataDirLock::acquire(&dir).is_ok());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
