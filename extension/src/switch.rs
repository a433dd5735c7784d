//! The live full_page_writes switch.
//!
//! `ALTER SYSTEM` cannot run inside a function, so the new value is written with
//! `AlterSystemSetConfigFile` (which checks privileges itself), the postmaster is sent SIGHUP,
//! and we wait for the checkpointer to log `XLOG_FPW_CHANGE` (`UpdateFullPageWrites`, only
//! with wal_level >= replica and outside recovery). That record is not flushed by the
//! checkpointer, so we flush WAL ourselves before reading it back: the LSN we return is the
//! record's own start, and it is durable when we return it.
//!
//! A switch off must never leave full_page_writes off without a record of it: the autopilot
//! watches every full_page_writes = off except one recorded as forced, and a guarded switch
//! must not be mistaken for a forced one (or the reverse). So a switch off
//!
//! - records its intent (off, guarded or forced, who, when; no LSN yet) in the state file
//!   before it changes anything: a state file that cannot be written is an ERROR, and
//!   full_page_writes stays on;
//! - holds interrupts from writing the setting until the switch is confirmed and recorded.
//!   Its own wait loop notices a termination (`pg_terminate_backend`, a fast shutdown) or a
//!   cancel (including `statement_timeout`) and gives up with an ERROR; the backend then
//!   terminates (FATAL) or the statement ends as usual. Without this, the FATAL would end
//!   the process inside the wait, past any error handler, with the setting already off;
//! - puts the setting back to on, and the previous record back, on any error before the
//!   confirmed switch is recorded: a timeout, an interruption, a state file that has become
//!   unwritable.
//!
//! A death nothing can intercept (SIGKILL, an OOM kill and the crash restart that follows)
//! leaves the setting off with the unconfirmed intent recorded: the autopilot treats that,
//! like any full_page_writes = off not recorded as forced, as a guarded switch.

use crate::error::raise;
use crate::fpw_change::{self, FpwChange, FpwChangeScanner};
use crate::sql_types::PgLsn;
use crate::state::{self, FpwDirection, SwitchRecord};
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

/// wal_level is replica or logical, so PostgreSQL logs a change of full_page_writes.
pub fn wal_level_logs_switch() -> bool {
    // SAFETY: `wal_level` is this process's copy of a PGC_POSTMASTER GUC: an int written
    // only by GUC processing on this same (only) thread, so a by-value read cannot race.
    unsafe { pg_sys::wal_level >= WAL_LEVEL_REPLICA }
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
    if !wal_level_logs_switch() {
        raise(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            "wal_level is minimal: PostgreSQL would not log the full_page_writes change",
            Some(
                "XLOG_FPW_CHANGE is only written with wal_level = replica or logical, and the redo helper needs a replication stream anyway.",
            ),
            Some("Set wal_level = replica and restart PostgreSQL."),
        );
    }
    if !alter_system_allowed() {
        raise(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            "ALTER SYSTEM is disabled (allow_alter_system = off)",
            Some(
                "fpw_pushdown switches full_page_writes by writing postgresql.auto.conf, as ALTER SYSTEM does. full_page_writes was not changed.",
            ),
            Some(
                "Set allow_alter_system = on, or change full_page_writes in postgresql.conf and reload.",
            ),
        );
    }
}

/// Whether `AlterSystemSetConfigFile` may write postgresql.auto.conf. PostgreSQL 17 added
/// `allow_alter_system` (guc.c refuses with "ALTER SYSTEM is not allowed in this
/// environment" when it is off); checking first keeps a switch off from recording an intent
/// and then failing half-way, and gives the reason in our terms.
#[cfg(any(feature = "pg17", feature = "pg18"))]
pub fn alter_system_allowed() -> bool {
    // SAFETY: `AllowAlterSystem` is this process's bool GUC variable (PGC_SIGHUP), written
    // only by GUC processing on this same thread; it is the variable AlterSystemSetConfigFile
    // itself checks. A by-value read.
    unsafe { pg_sys::AllowAlterSystem }
}

/// PostgreSQL 15 has no `allow_alter_system`: ALTER SYSTEM is always available to the roles
/// AlterSystemSetConfigFile accepts.
#[cfg(not(any(feature = "pg17", feature = "pg18")))]
pub fn alter_system_allowed() -> bool {
    true
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

/// A termination or cancel request noticed while interrupts are held.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Interrupt {
    Terminate,
    Cancel,
}

/// `InterruptHoldoffCount`, the counter behind HOLD_INTERRUPTS()/RESUME_INTERRUPTS() (macros,
/// so not in the bindings). While it is non-zero, CHECK_FOR_INTERRUPTS() does nothing.
fn interrupt_holdoff() -> u32 {
    // SAFETY: a plain process-global counter, read and written only by this process's only
    // thread (no signal handler touches it); a by-value read.
    unsafe { pg_sys::InterruptHoldoffCount }
}

fn set_interrupt_holdoff(n: u32) {
    // SAFETY: as above; setting it is what HOLD_INTERRUPTS()/RESUME_INTERRUPTS() do. We
    // restore the caller's value on every path out of the held section (errfinish resets it
    // to 0 itself when a PostgreSQL ERROR is thrown).
    unsafe { pg_sys::InterruptHoldoffCount = n }
}

fn pending_interrupt() -> Option<Interrupt> {
    // SAFETY: sig_atomic_t flags that this process's signal handlers only set and its main
    // thread reads and clears; by-value reads cannot tear.
    unsafe {
        if pg_sys::ProcDiePending != 0 {
            Some(Interrupt::Terminate)
        } else if pg_sys::QueryCancelPending != 0 {
            Some(Interrupt::Cancel)
        } else {
            None
        }
    }
}

/// Sleeps on the process latch. While interrupts are held (a switch off under way), a
/// pending termination or cancel is returned to the caller instead of acted upon; otherwise
/// interrupts are handled as usual.
fn pause(d: Duration) -> Option<Interrupt> {
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
    if interrupt_holdoff() > 0 {
        return pending_interrupt();
    }
    pgrx::check_for_interrupts!();
    None
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
    let change = match target {
        FpwDirection::On => switch_on(timeout, by),
        FpwDirection::Off => switch_off(timeout, by, forced),
    };
    SwitchOutcome::Switched(change)
}

/// Turning full_page_writes on is never refused and never undone: an error after the setting
/// is written leaves it on in postgresql.auto.conf (the checkpointer applies it when it
/// processes the reload), and a state file that cannot be written is only a WARNING.
fn switch_on(timeout: Duration, by: &str) -> FpwChange {
    // Records after this position are candidates; the checkpointer's record comes later.
    let mut scanner = FpwChangeScanner::new(fpw_change::insert_lsn());
    persist_setting(true);
    signal_reload();
    let change = wait_for_switch(&mut scanner, FpwDirection::On, timeout);
    let record = SwitchRecord {
        lsn: Some(change.lsn),
        direction: Some(FpwDirection::On),
        by: Some(by.to_string()),
        at_unix: Some(state::now_unix()),
        forced: false,
    };
    if let Err(e) = state::update(|s| s.set_switch_record(record)) {
        pgrx::warning!(
            "fpw_pushdown: full_page_writes switched on at {} but the state file could not be written: {e}",
            PgLsn(change.lsn)
        );
    }
    change
}

/// Turns full_page_writes off with its intent recorded first and interrupts held until the
/// switch is confirmed and recorded (see the module documentation).
fn switch_off(timeout: Duration, by: &str, forced: bool) -> FpwChange {
    let intent = SwitchRecord {
        lsn: None,
        direction: Some(FpwDirection::Off),
        by: Some(by.to_string()),
        at_unix: Some(state::now_unix()),
        forced,
    };
    let mut previous = SwitchRecord::default();
    if let Err(e) = state::update(|s| {
        previous = s.switch_record();
        s.set_switch_record(intent.clone());
    }) {
        raise(
            PgSqlErrorCode::ERRCODE_IO_ERROR,
            &format!("cannot turn full_page_writes off: the state file could not be written: {e}"),
            Some(
                "fpw_pushdown records a switch off (guarded or forced) in fpw_pushdown.state in the data directory before it makes it. full_page_writes was not changed.",
            ),
            Some(
                "Check fpw_pushdown.state, fpw_pushdown.state.tmp and fpw_pushdown.state.lock in the data directory (type, ownership, permissions) and free space.",
            ),
        );
    }

    let holdoff = interrupt_holdoff();
    set_interrupt_holdoff(holdoff.saturating_add(1));
    let (intent, previous) = (&intent, &previous);
    let change = PgTryBuilder::new(move || {
        // Records after this position are candidates; the checkpointer's record comes later.
        let mut scanner = FpwChangeScanner::new(fpw_change::insert_lsn());
        persist_setting(false);
        signal_reload();
        let change = wait_for_switch(&mut scanner, FpwDirection::Off, timeout);
        let confirmed = SwitchRecord {
            lsn: Some(change.lsn),
            ..intent.clone()
        };
        if let Err(e) = state::update(|s| s.set_switch_record(confirmed)) {
            raise(
                PgSqlErrorCode::ERRCODE_IO_ERROR,
                &format!(
                    "full_page_writes was switched off at {} but the state file could not be written: {e}",
                    PgLsn(change.lsn)
                ),
                None,
                Some(
                    "full_page_writes was put back to on: fpw_pushdown does not leave it off without a record of the switch.",
                ),
            );
        }
        change
    })
    .catch_others(move |e| {
        // A PostgreSQL ERROR has reset the holdoff count: hold again while undoing, so that a
        // pending termination cannot end the process half-way.
        set_interrupt_holdoff(holdoff.saturating_add(1));
        undo_switch_off(intent, previous);
        set_interrupt_holdoff(holdoff);
        e.rethrow()
    })
    .execute();
    set_interrupt_holdoff(holdoff);
    // A termination or cancel that arrived after the switch was confirmed acts now; the
    // switch stands, and it is recorded.
    pgrx::check_for_interrupts!();
    change
}

/// Puts full_page_writes back to on after a failed switch off, and the switch record back to
/// what it was if it is still ours. Failures here are WARNINGs: the caller re-raises the
/// error that made us undo, which says more.
fn undo_switch_off(intent: &SwitchRecord, previous: &SwitchRecord) {
    PgTryBuilder::new(|| {
        persist_setting(true);
        signal_reload();
    })
    .catch_others(|e| {
        let why = match &e {
            pgrx::pg_sys::panic::CaughtError::PostgresError(r)
            | pgrx::pg_sys::panic::CaughtError::ErrorReport(r)
            | pgrx::pg_sys::panic::CaughtError::RustPanic { ereport: r, .. } => {
                r.message().to_string()
            }
        };
        pgrx::warning!(
            "fpw_pushdown: could not put full_page_writes back to on: {why}; the autopilot turns it back on if the redo helper is not healthy"
        );
    })
    .execute();
    if let Err(e) = state::update(|s| {
        if s.switch_record().same_switch(intent) {
            s.set_switch_record(previous.clone());
        }
    }) {
        pgrx::warning!(
            "fpw_pushdown: could not restore the state file after the failed switch: {e}"
        );
    }
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
        if let Some(why) = pause(POLL) {
            raise_interrupted(target, why);
        }
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
            if pause(Duration::from_millis(1)).is_some() {
                break;
            }
        }
    }

    // Let this backend see the new value too, so a second call in the same statement
    // (a loop of switches) judges idempotency correctly.
    let settle = Instant::now() + Duration::from_secs(2);
    while full_page_writes_now() != want_on && Instant::now() < settle {
        if pause(POLL).is_some() {
            break;
        }
    }
    change
}

/// A termination or cancel arrived while a switch was waiting with interrupts held: give up
/// with an ERROR (the caller's error handler undoes a switch off). The termination itself
/// follows at the next CHECK_FOR_INTERRUPTS(); a cancel has been answered by this error.
fn raise_interrupted(target: FpwDirection, why: Interrupt) -> ! {
    let (code, reason) = match why {
        Interrupt::Terminate => (
            PgSqlErrorCode::ERRCODE_ADMIN_SHUTDOWN,
            "this backend is being terminated",
        ),
        Interrupt::Cancel => (
            PgSqlErrorCode::ERRCODE_QUERY_CANCELED,
            "the statement was canceled",
        ),
    };
    raise(
        code,
        &format!(
            "switching full_page_writes {} was abandoned: {reason}",
            target.as_str()
        ),
        None,
        (target == FpwDirection::Off).then_some("The setting was put back to on."),
    )
}
