//! fpw_pushdown: a thin pgrx layer that switches full_page_writes live, guarded by the redo
//! helper's replication slot, and reports what the switch does to WAL.
//!
//! No WAL logic lives here: the record of a switch is found with PostgreSQL's own WAL reader
//! (`fpw_change`), slot health comes from `pg_replication_slots` (`guard`), and the state the
//! extension keeps is a small cluster-wide file (`state`).

use pgrx::prelude::*;
use std::sync::atomic::{AtomicBool, Ordering};

mod autopilot;
mod error;
mod fpw_change;
mod guard;
mod gucs;
mod helper_client;
mod helper_state;
mod helper_tls;
mod sql_api;
mod sql_types;
mod state;
mod switch;

::pgrx::pg_module_magic!(name, version);

/// True in processes that inherited the library from shared_preload_libraries: set once in
/// _PG_init in the postmaster, before any fork, and inherited by its children. Processes are
/// single-threaded, so Relaxed ordering is enough; the atomic only makes the static safe.
static PRELOADED: AtomicBool = AtomicBool::new(false);

pub(crate) fn preloaded() -> bool {
    PRELOADED.load(Ordering::Relaxed)
}

#[pg_guard]
pub extern "C-unwind" fn _PG_init() {
    gucs::register();
    // After the definitions: placeholders left under the prefix (a mistyped name in
    // postgresql.conf or a SET before the library was loaded) are removed with a WARNING,
    // and from now on SET of an undefined fpw_pushdown.* name is an ERROR.
    // SAFETY: MarkGUCPrefixReserved reads the NUL-terminated prefix (a 'static C string) and
    // pstrdup's it into TopMemoryContext; like the DefineCustom*Variable calls in register(),
    // it runs during library load on the process's only thread, outside any GUC processing.
    unsafe { pg_sys::MarkGUCPrefixReserved(gucs::PREFIX.as_ptr()) };
    // SAFETY: `process_shared_preload_libraries_in_progress` is a plain bool global that
    // PostgreSQL writes only around the load loop in process_shared_preload_libraries, on
    // the same (only) thread that is running this _PG_init, so a by-value read cannot race.
    if unsafe { pg_sys::process_shared_preload_libraries_in_progress } {
        PRELOADED.store(true, Ordering::Relaxed);
        autopilot::register_worker();
    }
}

// Grants: every function is revoked from PUBLIC; superusers (and roles granted EXECUTE)
// may call them. The functions that change state are SECURITY DEFINER so that a granted
// role does not also need ALTER SYSTEM privileges.
pgrx::extension_sql_file!("../../sql/privileges.sql", name = "privileges", finalize);

#[cfg(any(test, feature = "pg_test"))]
#[pg_schema]
mod tests {
    use pgrx::prelude::*;

    #[pg_test]
    fn status_returns_one_row() {
        let n = Spi::get_one::<i64>("SELECT count(*) FROM fpw_pushdown.status()").unwrap();
        assert_eq!(n, Some(1));
    }

    #[pg_test(
        error = "cannot turn full_page_writes off: replication slot \"fpw_pushdown\" does not exist"
    )]
    fn guard_refuses_without_slot() {
        Spi::run("SELECT fpw_pushdown.disable_full_page_writes()").unwrap();
    }

    /// helper_slots() has a row for each configured slot, a missing one included.
    #[pg_test]
    fn helper_slots_lists_the_default_slot() {
        let row = Spi::get_three::<String, bool, String>(
            "SELECT slot_name, slot_exists, problem FROM fpw_pushdown.helper_slots()",
        )
        .unwrap();
        assert_eq!(
            row,
            (
                Some("fpw_pushdown".into()),
                Some(false),
                Some("replication slot \"fpw_pushdown\" does not exist".into())
            )
        );
    }

    /// Without shared_preload_libraries the extension still works; status says so.
    #[pg_test]
    fn autopilot_reports_not_loaded() {
        let a = Spi::get_one::<String>("SELECT autopilot FROM fpw_pushdown.status()").unwrap();
        assert!(a.unwrap_or_default().starts_with("not loaded"));
    }

    #[pg_test]
    fn enable_when_on_is_a_no_op() {
        let lsn =
            Spi::get_one::<String>("SELECT fpw_pushdown.enable_full_page_writes()::text").unwrap();
        assert_eq!(lsn, None);
    }

    #[pg_test]
    fn wal_stats_counts_wal() {
        let bytes = Spi::get_one::<i64>("SELECT wal_bytes FROM fpw_pushdown.wal_stats()").unwrap();
        assert!(bytes.unwrap_or(-1) >= 0);
    }

    #[pg_test(error = "timeout must be a positive interval")]
    fn zero_timeout_is_refused() {
        Spi::run("SELECT fpw_pushdown.enable_full_page_writes(timeout => '0s')").unwrap();
    }

    /// The library is loaded in this backend (the test function lives in it), not preloaded:
    /// _PG_init reserved the prefix, so a mistyped setting is an error, not a placeholder.
    #[pg_test(error = "invalid configuration parameter name \"fpw_pushdown.max_helper_lagg\"")]
    fn mistyped_setting_is_refused() {
        Spi::run("SET fpw_pushdown.max_helper_lagg = '1MB'").unwrap();
    }

    /// postgresql.conf of the test cluster has a mistyped `fpw_pushdown.autopilot_gracee`
    /// (see `pg_test::postgresql_conf_options`): every backend starts with it as a placeholder,
    /// and loading the library removes it (with a WARNING).
    #[pg_test]
    fn mistyped_setting_from_config_is_removed() {
        let typo =
            Spi::get_one::<String>("SELECT current_setting('fpw_pushdown.autopilot_gracee', true)")
                .unwrap();
        assert_eq!(typo, None);
        // The real setting is there.
        let grace =
            Spi::get_one::<String>("SELECT current_setting('fpw_pushdown.autopilot_grace')")
                .unwrap();
        assert_eq!(grace.as_deref(), Some("10s"));
    }
}

/// Required by `cargo pgrx test`.
#[cfg(test)]
pub mod pg_test {
    pub fn setup(_options: Vec<&str>) {}

    #[must_use]
    pub fn postgresql_conf_options() -> Vec<&'static str> {
        // The typo is on purpose: mistyped_setting_from_config_is_removed checks that loading
        // the library removes it (the fpw_pushdown prefix is reserved).
        vec![
            "wal_level = replica",
            "fpw_pushdown.autopilot_gracee = '5s'",
        ]
    }
}
