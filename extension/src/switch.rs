//! The live full_page_writes switch.
//!
//! `ALTER SYSTEM` cannot run inside a function, so the new value is written with
//! `AlterSystemSetConfigFile` (which checks privileges itself), the postmaster is sent SIGHUP,
//! and we wait for the checkpointer to log `XLOG_FPW_CHANGE` (`UpdateFullPageWrites`, only
//! with wal_level >= replica and outside recovery). That record is not flushed by the
//! checkpointer, so we flush WAL ourselves before reading it back: the LSN we return is the
//! record's own start, and it is durable when we return it.

use crate::error::raise;
use crate::fpw_change::{self, FpwChange, FpwChangeScanner};
use crate::state::{self, FpwDirection};
use pgrx::PgTryBuilder;
use pgrx::pg_sys;
use pgrx::prelude::*;
use std::ffi::{CStr, CString};
use std::time::{Duration, Instant};

/// `WAL_LEVEL_REPLICA` in access/xlog.h.
const WAL_LEVEL_REPLICA: i32 = 1;
const POLL: Duration = Duration::from_millis(5);

#[derive(Debug, PartialEq, Eq)]
pub enum SwitchOutcome {
    /// full_page_writes already had the requested value; nothing was written.
    AlreadyThere,
    Switched(FpwChange),
}

/// Refuses to switch where PostgreSQL would not log the change.
pub fn check_switch_possible() {
    // SAFETY: RecoveryInProgress reads XLogCtl's shared recovery state under its spinlock
    // (or this backend's cached copy); it only needs shared memory attached, as in any
    // backend or worker running SQL.
    if unsafe { pg_sys::RecoveryInProgress() } {
        raise(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            "recovery is in progress",
            None,
            Some("full_page_writes can only be switched by fpw_pushdown on a primary."),
        );
    }
    // SAFETY: `wal_level` is this process's copy of a PGC_POSTMASTER GUC: an int written
    // only by GUC processing on this same (only) thread, so a by-value read cannot race.
    if unsafe { pg_sys::wal_level } < WAL_LEVEL_REPLICA {
        raise(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            "wal_level is minimal: PostgreSQL would not log the full_page_writes change",
            Some(
                "XLOG_FPW_CHANGE is only written with wal_level = replica or logical, and the redo helper needs a replication stream anyway.",
            ),
            Some("Set wal_level = replica and restart PostgreSQL."),
        );
    }
}

/// Applies a pending configuration reload in this backend, so `fullPageWrites` reflects
/// what the checkpointer will act on (matters when a statement switches several times).
pub fn absorb_config_reload() {
    // SAFETY: ConfigReloadPending is a sig_atomic_t that this process's SIGHUP handler only
    // ever sets to 1; reading and clearing it on the main thread and then calling
    // ProcessConfigFile(PGC_SIGHUP) is the sequence PostgreSQL's own main loops use. We are
    // in a SQL function or the worker's loop, not in a critical section, a signal handler
    // or GUC processing itself; file problems are reported at DEBUG level in a child process.
    unsafe {
        if pg_sys::ConfigReloadPending != 0 {
            pg_sys::ConfigReloadPending = 0;
            pg_sys::ProcessConfigFile(pg_sys::GucContext::PGC_SIGHUP);
        }
    }
}

/// full_page_writes as this backend currently sees it.
pub fn full_page_writes_now() -> bool {
    absorb_config_reload();
    // SAFETY: `fullPageWrites` is this process's bool GUC variable, written only by GUC
    // processing on this same thread (e.g. the reload just above); a by-value read.
    unsafe { pg_sys::fullPageWrites }
}

/// Writes `full_page_writes = on|off` into postgresql.auto.conf, exactly as ALTER SYSTEM does.
fn persist_setting(on: bool) {
    let sql = CString::new(format!(
        "ALTER SYSTEM SET full_page_writes = {}",
        if on { "on" } else { "off" }
    ))
    .unwrap_or_default();
    // SAFETY: `sql` is a NUL-terminated string that outlives raw_parser, which returns a
    // palloc'd List of RawStmt in the current memory context (valid for this call; a syntax
    // error would raise an ERROR, not return garbage). We take element 0 only if present and
    // check its node tag before treating it as an AlterSystemStmt, the type
    // AlterSystemSetConfigFile expects; that function checks privileges and the value itself.
    unsafe {
        let list = pg_sys::raw_parser(sql.as_ptr(), pg_sys::RawParseMode::RAW_PARSE_DEFAULT);
        let stmts = pgrx::PgList::<pg_sys::RawStmt>::from_pg(list);
        let Some(raw) = stmts.get_ptr(0) else {
            pgrx::error!("fpw_pushdown: could not parse {:?}", sql);
        };
        let node = (*raw).stmt;
        if node.is_null() || (*node).type_ != pg_sys::NodeTag::T_AlterSystemStmt {
            pgrx::error!("fpw_pushdown: unexpected parse tree for {:?}", sql);
        }
        pg_sys::AlterSystemSetConfigFile(node.cast());
    }
}

fn signal_reload() {
    // SAFETY: `PostmasterPid` is set before the postmaster forks its children and never
    // changes, so reading it cannot race; kill(2) has no memory-safety preconditions. This
    // is exactly what pg_reload_conf() does.
    if unsafe { libc::kill(pg_sys::PostmasterPid, libc::SIGHUP) } != 0 {
        pgrx::error!(
            "fpw_pushdown: could not send SIGHUP to the postmaster: {}",
            std::io::Error::last_os_error()
        );
    }
}

fn sleep_interruptibly(d: Duration) {
    // SAFETY: `MyLatch` points to this process's own latch, set up at process start and
    // valid for its lifetime; only the owning process may wait on and reset it, which we are.
    // WL_EXIT_ON_PM_DEATH is allowed because every process running this code is a postmaster
    // child. Interrupts that arrive during the wait are handled right after.
    unsafe {
        pg_sys::WaitLatch(
            pg_sys::MyLatch,
            (pg_sys::WL_LATCH_SET | pg_sys::WL_TIMEOUT | pg_sys::WL_EXIT_ON_PM_DEATH) as i32,
            d.as_millis() as std::ffi::c_long,
            pg_sys::PG_WAIT_EXTENSION,
        );
        pg_sys::ResetLatch(pg_sys::MyLatch);
    }
    pgrx::check_for_interrupts!();
}

/// Role that called us (current_user outside SECURITY DEFINER), for the record of who switched.
pub fn calling_role_name() -> String {
    // SAFETY: GetOuterUserId only reads a backend global. With noerr = true,
    // GetUserNameFromId returns NULL (checked) instead of raising when the role has been
    // dropped, else a palloc'd NUL-terminated name that we copy before its memory context
    // is reset.
    unsafe {
        let name = pg_sys::GetUserNameFromId(pg_sys::GetOuterUserId(), true);
        if name.is_null() {
            String::from("?")
        } else {
            CStr::from_ptr(name).to_string_lossy().into_owned()
        }
    }
}

/// Switches full_page_writes to `target` and returns the XLOG_FPW_CHANGE record that did it.
/// The caller has already decided that the switch is allowed (guard).
pub fn switch_full_page_writes(
    target: FpwDirection,
    timeout: Duration,
    by: &str,
    forced: bool,
) -> SwitchOutcome {
    check_switch_possible();
    let want_on = target == FpwDirection::On;
    if full_page_writes_now() == want_on {
        return SwitchOutcome::AlreadyThere;
    }

    // Records after this position are candidates; the checkpointer's record comes later.
    let mut scanner = FpwChangeScanner::new(fpw_change::insert_lsn());
    persist_setting(want_on);
    signal_reload();

    // From here on the new value is on disk: if anything fails before the switch is
    // confirmed, a disable is undone, so FPW is never left off without being recorded.
    let undo_on_error = !want_on;
    let confirmed = PgTryBuilder::new(move || wait_for_switch(&mut scanner, target, timeout))
        .catch_others(move |e| {
            if undo_on_error {
                persist_setting(true);
                signal_reload();
            }
            e.rethrow()
        })
        .execute();
    record_switch(confirmed, target, by, forced);
    SwitchOutcome::Switched(confirmed)
}

/// Polls flushed WAL for the checkpointer's XLOG_FPW_CHANGE record with the wanted value.
/// On timeout the caller's error handler undoes a disable.
fn wait_for_switch(
    scanner: &mut FpwChangeScanner,
    target: FpwDirection,
    timeout: Duration,
) -> FpwChange {
    let want_on = target == FpwDirection::On;
    let deadline = Instant::now() + timeout;
    let change = loop {
        fpw_change::flush_inserted_wal();
        if let Some(change) = scanner.scan_for(want_on) {
            break change;
        }
        if Instant::now() >= deadline {
            let detail = scanner
                .last_error
                .as_deref()
                .map(|e| format!("Last WAL read error: {e}"))
                .unwrap_or_else(|| "No XLOG_FPW_CHANGE record was flushed in time.".to_string());
            raise(
                PgSqlErrorCode::ERRCODE_QUERY_CANCELED,
                &format!(
                    "full_page_writes = {} was not logged by the checkpointer within {} ms",
                    target.as_str(),
                    timeout.as_millis()
                ),
                Some(&detail),
                Some(if want_on {
                    "postgresql.auto.conf says full_page_writes = on; the checkpointer will apply it when it processes the reload."
                } else {
                    "The setting was put back to on. Check that the checkpointer is running and retry with a longer timeout."
                }),
            );
        }
        sleep_interruptibly(POLL);
    };

    if !want_on {
        // The record is written before the shared flag is cleared: wait until inserts
        // really stop taking images, so work after we return logs none.
        let settle = Instant::now() + Duration::from_secs(1);
        while fpw_change::inserts_take_page_images() {
            if Instant::now() >= settle {
                pgrx::notice!(
                    "full_page_writes is off, but PostgreSQL still logs full page images: a base backup is in progress"
                );
                break;
            }
            sleep_interruptibly(Duration::from_millis(1));
        }
    }

    // Let this backend see the new value too, so a second call in the same statement
    // (a loop of switches) judges idempotency correctly.
    let settle = Instant::now() + Duration::from_secs(2);
    while full_page_writes_now() != want_on && Instant::now() < settle {
        sleep_interruptibly(POLL);
    }
    change
}

/// Remembers a confirmed switch in the cluster-wide state file.
fn record_switch(change: FpwChange, target: FpwDirection, by: &str, forced: bool) {
    if let Err(e) = state::update(|s| {
        s.last_switch_lsn = Some(change.lsn);
        s.last_switch_direction = Some(target);
        s.last_switch_by = Some(by.to_string());
        s.last_switch_at_unix = Some(state::now_unix());
        s.last_switch_forced = forced;
    }) {
        pgrx::warning!(
            "fpw_pushdown: full_page_writes switched but the state file could not be written: {e}"
        );
    }
}
