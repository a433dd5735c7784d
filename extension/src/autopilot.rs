//! The autopilot: a background worker that turns full_page_writes back on when a redo
//! helper that justified turning it off (any of the slots of `fpw_pushdown.slot_name`) is
//! gone or lagging for longer than a grace period.
//! It never turns full_page_writes off by itself.
//!
//! It watches every full_page_writes = off except one the state file records as forced
//! (`disable_full_page_writes(force => true)`): a guarded switch, but also a switch whose
//! backend died before it was confirmed (the intent is recorded first, see `switch`), a
//! state file that cannot be read, and full_page_writes turned off behind the extension's
//! back (postgresql.conf, ALTER SYSTEM). All of these are treated as guarded: off is fine
//! while the helper is healthy, and turned back on after the grace period when it is not.

use crate::guard::{self, SlotHealth};
use crate::state::{self, ExtensionState, FpwDirection};
use crate::switch::{self, SwitchOutcome};
use crate::{error, gucs};
use pgrx::bgworkers::{
    BackgroundWorker, BackgroundWorkerBuilder, BgWorkerStartTime, SignalWakeFlags,
};
use pgrx::prelude::*;
use std::time::{Duration, Instant};

pub const WORKER_TYPE: &str = "fpw_pushdown autopilot";
const TICK: Duration = Duration::from_millis(500);
const ENABLE_TIMEOUT: Duration = Duration::from_secs(30);

pub fn register_worker() {
    BackgroundWorkerBuilder::new(WORKER_TYPE)
        .set_type(WORKER_TYPE)
        .set_library("fpw_pushdown")
        .set_function("fpw_pushdown_autopilot_main")
        .enable_spi_access()
        .set_start_time(BgWorkerStartTime::RecoveryFinished)
        .set_restart_time(Some(Duration::from_secs(5)))
        .load();
}

/// For status(): is the autopilot watching?
pub fn describe_state() -> String {
    if !crate::preloaded() {
        return "not loaded (fpw_pushdown is not in shared_preload_libraries)".into();
    }
    if !gucs::AUTOPILOT.get() {
        return "off".into();
    }
    // Read-only SPI (select, not update): status() must also work on a standby.
    let running = Spi::connect(|client| {
        client
            .select(
                "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_stat_activity WHERE backend_type = $1)",
                Some(1),
                &[WORKER_TYPE.into()],
            )?
            .first()
            .get_one::<bool>()
    });
    match running {
        Ok(Some(true)) => "on".into(),
        _ => "on (worker not running)".into(),
    }
}

#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn fpw_pushdown_autopilot_main(_arg: pg_sys::Datum) {
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP | SignalWakeFlags::SIGTERM);
    let db = gucs::AUTOPILOT_DATABASE
        .get()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "postgres".into());
    BackgroundWorker::connect_worker_to_spi(Some(&db), None);
    log!("{WORKER_TYPE} started (database \"{db}\")");

    // When the helper first looked unhealthy, and why.
    let mut unhealthy_since: Option<Instant> = None;
    // What was already logged about the current period of full_page_writes = off.
    let mut said = Said::default();
    while BackgroundWorker::wait_latch(Some(TICK)) {
        if BackgroundWorker::sighup_received() {
            // SAFETY: ProcessConfigFile(PGC_SIGHUP) may be called by any process under the
            // postmaster from its main loop, on its only thread, outside a critical section
            // and not from a signal handler: that is where we are (between latch waits, no
            // transaction open). Problems in the file are reported at DEBUG level in a child
            // process, so it does not longjmp out of this loop for a bad setting.
            unsafe { pg_sys::ProcessConfigFile(pg_sys::GucContext::PGC_SIGHUP) };
        }
        if !gucs::AUTOPILOT.get() || switch::full_page_writes_now() {
            unhealthy_since = None;
            said = Said::default();
            continue;
        }
        let loaded = state::load();
        let st = match &loaded {
            Ok(st) => st.clone(),
            Err(e) => {
                let e = e.to_string();
                if said.state_error.as_deref() != Some(e.as_str()) {
                    error::warn(
                        &format!("{WORKER_TYPE}: cannot read the state file: {e}"),
                        Some(
                            "full_page_writes is off and no forced switch can be seen: the autopilot treats it as a guarded switch.",
                        ),
                    );
                    said.state_error = Some(e);
                }
                ExtensionState::default()
            }
        };
        if st.forced_off() {
            unhealthy_since = None;
            continue;
        }
        let unrecorded = match &loaded {
            Err(e) => Some(format!("and the state file cannot be read ({e})")),
            Ok(st) if st.last_switch_direction != Some(FpwDirection::Off) => {
                Some("without a switch off recorded by fpw_pushdown".to_string())
            }
            Ok(_) => None,
        };
        if let Some(why) = &unrecorded
            && !said.unrecorded
        {
            log!("{WORKER_TYPE}: full_page_writes is off {why}; it is watched as a guarded switch");
            said.unrecorded = true;
        }
        if !switch::wal_level_logs_switch() {
            if !said.wal_level {
                error::warn(
                    &format!(
                        "{WORKER_TYPE}: full_page_writes is off, but wal_level is minimal: the autopilot cannot turn it back on"
                    ),
                    Some(
                        "fpw_pushdown only switches full_page_writes where PostgreSQL logs the change (wal_level = replica or logical).",
                    ),
                );
                said.wal_level = true;
            }
            unhealthy_since = None;
            continue;
        }
        if !switch::alter_system_allowed() {
            if !said.alter_system {
                error::warn(
                    &format!(
                        "{WORKER_TYPE}: full_page_writes is off, but allow_alter_system is off: the autopilot cannot turn it back on"
                    ),
                    Some(
                        "fpw_pushdown switches full_page_writes by writing postgresql.auto.conf, as ALTER SYSTEM does.",
                    ),
                );
                said.alter_system = true;
            }
            unhealthy_since = None;
            continue;
        }
        let max_lag = gucs::max_helper_lag_bytes();
        // Every listed slot (one per helper shard): any one gone or lagging is a problem,
        // and the message names each such slot.
        let problem = BackgroundWorker::transaction(|| {
            guard::check_slots(&SlotHealth::read_all(), max_lag).err()
        });
        let Some(problem) = problem else {
            unhealthy_since = None;
            continue;
        };
        let since = *unhealthy_since.get_or_insert_with(Instant::now);
        let grace =
            Duration::from_millis(u64::try_from(gucs::AUTOPILOT_GRACE_MS.get()).unwrap_or(0));
        if since.elapsed() < grace {
            continue;
        }
        let outcome = BackgroundWorker::transaction(|| {
            switch::switch_full_page_writes(FpwDirection::On, ENABLE_TIMEOUT, "autopilot", false)
        });
        let action = match outcome {
            SwitchOutcome::Switched(change) => {
                let mut msg = format!(
                    "{WORKER_TYPE}: turned full_page_writes back on at {}: {problem} for {:.1} s (grace {} ms)",
                    crate::sql_types::PgLsn(change.lsn),
                    since.elapsed().as_secs_f64(),
                    grace.as_millis()
                );
                if let Some(why) = &unrecorded {
                    msg.push_str(&format!("; it was off {why}"));
                } else if st.last_switch_lsn.is_none() {
                    msg.push_str(&format!(
                        "; the switch off by {} was never confirmed",
                        st.last_switch_by.as_deref().unwrap_or("?")
                    ));
                }
                error::warn(&msg, None);
                msg
            }
            SwitchOutcome::AlreadyThere => {
                format!("{WORKER_TYPE}: full_page_writes was already on ({problem})")
            }
        };
        if let Err(e) = state::update(|s| s.autopilot_last_action = Some(action)) {
            pgrx::warning!("{WORKER_TYPE}: could not write the state file: {e}");
        }
        unhealthy_since = None;
    }
    log!("{WORKER_TYPE} exiting");
}

/// What the worker has already logged about the current period of full_page_writes = off, so
/// that it says each thing once instead of every tick.
#[derive(Default)]
struct Said {
    /// full_page_writes is off without a switch off recorded.
    unrecorded: bool,
    /// The last error reading the state file.
    state_error: Option<String>,
    /// wal_level is minimal, so the autopilot cannot switch.
    wal_level: bool,
    /// allow_alter_system is off (PostgreSQL 17+), so the autopilot cannot switch.
    alter_system: bool,
}
