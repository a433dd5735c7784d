//! Taking the crate's locks, with one poisoning policy.
//!
//! A lock is poisoned when a thread panicked while holding it. A panic in this crate is a
//! bug, never a response to input (input errors are typed errors), and the data behind the
//! locks is either reporting (status, counters, histograms) or in-memory structures that
//! are rebuilt from the durable archive at every start (page index, image directory, queue).
//! So the policy is: take the guard and go on, and say once, as an error in the log, that
//! state may be what a panicking thread left. Stopping would leave the primary without its
//! acknowledgements, and the helper's durable files never depend on a poisoned structure
//! (WAL is written before it is indexed; images are checksummed).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{
    LockResult, Mutex, MutexGuard, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard,
};

static POISON_REPORTED: AtomicBool = AtomicBool::new(false);

/// The guard of a lock result (a `Condvar` wait gives one too), poisoned or not.
pub(crate) fn recover<G>(r: LockResult<G>) -> G {
    r.unwrap_or_else(|e: PoisonError<G>| {
        if !POISON_REPORTED.swap(true, Ordering::Relaxed) {
            log::error!(
                "a thread panicked while holding a lock; continuing with the state it left (restart the helper to rebuild it from the archive)"
            );
        }
        e.into_inner()
    })
}

/// Locks `m` (see the module documentation for poisoning).
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    recover(m.lock())
}

/// Read-locks `l` (see the module documentation for poisoning).
pub(crate) fn read<T>(l: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    recover(l.read())
}

/// Write-locks `l` (see the module documentation for poisoning).
pub(crate) fn write<T>(l: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    recover(l.write())
}
