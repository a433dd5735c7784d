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

/// Worker threads under supervision: a panic in one is caught, logged as an error and
/// counted (by worker kind, for `/metrics`), and the worker is started again after a second.
/// More than [`MAX_RESTARTS`] panics of one thread within [`RESTART_WINDOW`] end the process
/// with exit status [`EXIT_WORKER_PANICS`]: a helper never goes on without its image
/// generation or retention in silence, and a service manager restarts it from its durable
/// state.
pub(crate) mod supervise {
    use std::collections::{BTreeMap, VecDeque};
    use std::panic::{AssertUnwindSafe, catch_unwind};
    use std::sync::{Mutex, OnceLock};
    use std::time::{Duration, Instant};

    pub(crate) const MAX_RESTARTS: usize = 5;
    pub(crate) const RESTART_WINDOW: Duration = Duration::from_secs(600);
    /// `EX_SOFTWARE` of sysexits.h.
    pub(crate) const EXIT_WORKER_PANICS: i32 = 70;

    static PANICS: Mutex<BTreeMap<&'static str, u64>> = Mutex::new(BTreeMap::new());

    /// Panics caught so far, by worker kind.
    pub(crate) fn panics() -> BTreeMap<&'static str, u64> {
        super::lock(&PANICS).clone()
    }

    fn message(payload: &(dyn std::any::Any + Send)) -> String {
        payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a panic without a message".into())
    }

    /// Starts thread `name` running `body` under supervision (`kind` names it in metrics).
    /// `body` returning ends the thread.
    pub(crate) fn spawn<F>(
        name: String,
        kind: &'static str,
        body: F,
    ) -> std::io::Result<std::thread::JoinHandle<()>>
    where
        F: Fn() + Send + 'static,
    {
        std::thread::Builder::new()
            .name(name.clone())
            .spawn(move || {
                let mut recent: VecDeque<Instant> = VecDeque::new();
                loop {
                    let Err(payload) = catch_unwind(AssertUnwindSafe(&body)) else {
                        return;
                    };
                    *super::lock(&PANICS).entry(kind).or_insert(0) += 1;
                    let now = Instant::now();
                    recent.push_back(now);
                    while recent
                        .front()
                        .is_some_and(|t| now.duration_since(*t) > RESTART_WINDOW)
                    {
                        recent.pop_front();
                    }
                    let msg = message(payload.as_ref());
                    if recent.len() > MAX_RESTARTS {
                        log::error!(
                            "{name} panicked {} times within {} s (last: {msg}); exiting",
                            recent.len(),
                            RESTART_WINDOW.as_secs()
                        );
                        std::process::exit(EXIT_WORKER_PANICS);
                    }
                    log::error!("{name} panicked ({msg}); starting it again in 1 s");
                    std::thread::sleep(Duration::from_secs(1));
                }
            })
    }

    /// Fault injection for the supervision tests: `REDO_HELPER_TEST_PANIC=<kind>[:<n>]`
    /// makes the first `n` (default 1) calls for `kind` panic. Unset in production.
    pub(crate) fn test_hook(kind: &str) {
        static SPEC: OnceLock<Option<(String, Mutex<u64>)>> = OnceLock::new();
        let spec = SPEC.get_or_init(|| {
            let v = std::env::var("REDO_HELPER_TEST_PANIC").ok()?;
            let (k, n) = v.split_once(':').unwrap_or((v.as_str(), "1"));
            Some((k.to_string(), Mutex::new(n.parse().unwrap_or(1))))
        });
        if let Some((k, left)) = spec
            && k == kind
        {
            let mut left = super::lock(left);
            if *left > 0 {
                *left -= 1;
                drop(left);
                panic!("REDO_HELPER_TEST_PANIC: injected panic in {kind}");
            }
        }
    }
}
