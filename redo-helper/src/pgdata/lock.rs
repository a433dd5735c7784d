//! Holding a data directory the way PostgreSQL holds it: `postmaster.pid`.
//!
//! PostgreSQL's `CreateLockFile` (`utils/init/miscinit.c`) creates `postmaster.pid` with
//! `O_CREAT | O_EXCL`. When the file exists it reads the PID on its first line (negative for a
//! single-user `postgres --single` backend) and refuses to start while that process lives
//! ("lock file "postmaster.pid" already exists"); a file naming a dead process is stale and
//! replaced. So a repair that writes its own PID there, the same way, keeps any postmaster
//! or single-user backend from starting on the directory until the repair is done, and is
//! itself refused while one runs.
//!
//! The file is created with mode 0600, as PostgreSQL creates it. That matters when repair
//! runs as root: PostgreSQL treats a PID it may not signal (EPERM) as no competitor, but it
//! cannot open a root-owned 0600 file at all and stops with "could not open lock file". Run
//! as the cluster's owner, PostgreSQL sees a live PID ("lock file already exists"). The file
//! is removed when the [`PostmasterLock`] is dropped. If repair is killed, the file names a dead
//! process: PostgreSQL replaces it as stale when it can read it (repair ran as the owner);
//! a root-owned one must be removed by hand, or by running repair again.

use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Why the data directory could not be locked.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PostmasterLockError {
    #[error(
        "PostgreSQL is running on {pgdata} (postmaster.pid names live process {pid}{}): stop it first; repair writes into its data files",
        if *single_user { ", a single-user backend" } else { "" }
    )]
    Running {
        pgdata: PathBuf,
        pid: i32,
        single_user: bool,
    },
    #[error(
        "{path} holds no PID ({content:?}); if no PostgreSQL runs on this directory, remove the file"
    )]
    Bogus { path: PathBuf, content: String },
    #[error("locking {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
}

/// `postmaster.pid`, created by this process; removed on drop.
#[derive(Debug)]
pub(crate) struct PostmasterLock {
    path: PathBuf,
    pid: u32,
}

/// True when process `pid` exists (`kill(pid, 0)`; EPERM means it exists as another user's).
fn process_alive(pid: i32) -> bool {
    if pid <= 0 {
        return false;
    }
    // SAFETY: kill with signal 0 sends nothing; it only checks that the process exists.
    let rc = unsafe { libc::kill(pid, 0) };
    rc == 0 || io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

impl PostmasterLock {
    /// Creates `pgdata/postmaster.pid` naming this process, replacing a stale one.
    pub(crate) fn acquire(pgdata: &Path) -> Result<PostmasterLock, PostmasterLockError> {
        let path = pgdata.join("postmaster.pid");
        let io_err = |source| PostmasterLockError::Io {
            path: path.clone(),
            source,
        };
        let pid = std::process::id();
        // Like CreateLockFile: a few rounds, in case a stale file is replaced under us.
        for _ in 0..100 {
            match std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
            {
                Ok(mut f) => {
                    // The lines PostgreSQL reads: PID, then the data directory.
                    let text = format!("{pid}\n{}\n", pgdata.display());
                    let lock = PostmasterLock {
                        path: path.clone(),
                        pid,
                    };
                    f.write_all(text.as_bytes()).map_err(io_err)?;
                    f.sync_all().map_err(io_err)?;
                    return Ok(lock);
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(io_err(e)),
            }
            let content = match std::fs::read_to_string(&path) {
                Ok(c) => c,
                // Removed between our create and our read: try again.
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io_err(e)),
            };
            let first = content.lines().next().unwrap_or("").trim();
            let Ok(other) = first.parse::<i32>() else {
                return Err(PostmasterLockError::Bogus {
                    path,
                    content: first.chars().take(40).collect(),
                });
            };
            // A standalone backend writes its PID negated.
            let other_pid = other.checked_abs().unwrap_or(0);
            if process_alive(other_pid) {
                return Err(PostmasterLockError::Running {
                    pgdata: pgdata.to_path_buf(),
                    pid: other_pid,
                    single_user: other < 0,
                });
            }
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err(e)),
            }
        }
        Err(io_err(io::Error::other(
            "the lock file kept reappearing; is something else starting on this directory?",
        )))
    }
}

impl Drop for PostmasterLock {
    fn drop(&mut self) {
        // Only our own file: never remove a postmaster's.
        let ours = std::fs::read_to_string(&self.path)
            .ok()
            .and_then(|c| c.lines().next().map(|l| l.trim() == self.pid.to_string()))
            .unwrap_or(false);
        if ours && let Err(e) = std::fs::remove_file(&self.path) {
            log::warn!("removing {}: {e}", self.path.display());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("rh_pglock_{tag}_{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn lock_excludes_live_processes_and_replaces_stale_files() {
        let d = dir("a");
        let pidfile = d.join("postmaster.pid");
        {
            let _lock = PostmasterLock::acquire(&d).unwrap();
            let text = std::fs::read_to_string(&pidfile).unwrap();
            assert_eq!(
                text.lines().next(),
                Some(std::process::id().to_string().as_str())
            );
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&pidfile).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "as PostgreSQL creates it");
            // A second taker (another repair, or PostgreSQL's own check) sees a live PID.
            assert!(matches!(
                PostmasterLock::acquire(&d),
                Err(PostmasterLockError::Running { .. })
            ));
        }
        assert!(!pidfile.exists(), "dropped lock removes its file");

        // Our parent lives: as a postmaster's PID, and negated as a single-user backend's.
        let parent = std::os::unix::process::parent_id() as i32;
        for (content, single) in [(parent, false), (-parent, true)] {
            std::fs::write(&pidfile, format!("{content}\n/x\n")).unwrap();
            match PostmasterLock::acquire(&d) {
                Err(PostmasterLockError::Running {
                    pid, single_user, ..
                }) => assert_eq!((pid, single_user), (parent, single)),
                other => panic!("{content}: {other:?}"),
            }
            assert!(pidfile.exists(), "a live postmaster's file is left alone");
        }

        // A dead process's file is stale: replaced, and removed with the lock.
        std::fs::write(&pidfile, "-2147483647\n/x\n").unwrap();
        drop(PostmasterLock::acquire(&d).unwrap());
        assert!(!pidfile.exists());
        std::fs::write(&pidfile, "garbage\n").unwrap();
        assert!(matches!(
            PostmasterLock::acquire(&d),
            Err(PostmasterLockError::Bogus { .. })
        ));
        std::fs::remove_dir_all(&d).unwrap();
    }
}
