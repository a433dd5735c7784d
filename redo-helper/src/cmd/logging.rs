//! The process's logger, rebuilt with a new filter on SIGHUP.
//!
//! env_logger fixes its filter when built, and `log::set_max_level` can only lower what it
//! lets through, never raise it. So the installed logger forwards to an env_logger `Logger`
//! that [`reload`] replaces, built by the same function main.rs gave [`init`] (the format,
//! the target), with the new filter.

use std::sync::{OnceLock, RwLock};

/// Builds the logger for a filter (env_logger's syntax: `info`, `warn,redo_helper=debug`).
pub type MakeLogger = Box<dyn Fn(&str) -> env_logger::Logger + Send + Sync>;

struct Reloadable {
    make: MakeLogger,
    inner: RwLock<env_logger::Logger>,
}

static LOGGER: OnceLock<Reloadable> = OnceLock::new();

impl log::Log for Reloadable {
    fn enabled(&self, metadata: &log::Metadata) -> bool {
        self.inner
            .read()
            .map(|l| l.enabled(metadata))
            .unwrap_or(false)
    }

    fn log(&self, record: &log::Record) {
        if let Ok(l) = self.inner.read() {
            l.log(record);
        }
    }

    fn flush(&self) {
        if let Ok(l) = self.inner.read() {
            l.flush();
        }
    }
}

/// Installs the logger with `filter`; the first call wins.
pub fn init(filter: &str, make: MakeLogger) {
    let logger = make(filter);
    let level = logger.filter();
    let reloadable = LOGGER.get_or_init(|| Reloadable {
        make,
        inner: RwLock::new(logger),
    });
    if log::set_logger(reloadable).is_ok() {
        log::set_max_level(level);
    }
}

/// Replaces the logger's filter (SIGHUP).
pub fn reload(filter: &str) {
    let Some(r) = LOGGER.get() else {
        return;
    };
    let logger = (r.make)(filter);
    let level = logger.filter();
    if let Ok(mut inner) = r.inner.write() {
        *inner = logger;
    }
    log::set_max_level(level);
}
