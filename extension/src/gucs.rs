//! `fpw_pushdown.*` settings. All are SIGHUP (postgresql.conf / ALTER SYSTEM + reload) so that
//! the guard's bounds are set by the DBA for the whole cluster, not loosened per session.

use pgrx::guc::{GucContext, GucFlags, GucRegistry, GucSetting};
use std::ffi::{CStr, CString};

/// The prefix of every setting of this extension; reserved in _PG_init, so that once the
/// library is loaded, `fpw_pushdown.<anything not defined here>` is an error, not a placeholder.
pub const PREFIX: &CStr = c"fpw_pushdown";

/// Physical replication slot held by the redo helper.
pub static SLOT_NAME: GucSetting<Option<CString>> =
    GucSetting::<Option<CString>>::new(Some(c"fpw_pushdown"));
/// Largest flush lag (kB) of the slot at which full_page_writes may be off.
pub static MAX_HELPER_LAG_KB: GucSetting<i32> = GucSetting::<i32>::new(64 * 1024);
/// Whether the autopilot worker may turn full_page_writes back on.
pub static AUTOPILOT: GucSetting<bool> = GucSetting::<bool>::new(true);
/// How long (ms) the slot may be unhealthy before the autopilot re-enables full_page_writes.
pub static AUTOPILOT_GRACE_MS: GucSetting<i32> = GucSetting::<i32>::new(10_000);
/// Database the autopilot connects to (it only reads cluster-wide views).
pub static AUTOPILOT_DATABASE: GucSetting<Option<CString>> =
    GucSetting::<Option<CString>>::new(Some(c"postgres"));
/// Where the redo helper listens (host:port, loopback); empty: the guard checks the slot only.
pub static HELPER_ADDRESS: GucSetting<Option<CString>> =
    GucSetting::<Option<CString>>::new(Some(c""));

/// A setting holding a file path (empty: unset).
pub type PathSetting = GucSetting<Option<CString>>;
/// File with the bearer token of the helper's TCP listener (superuser only).
pub static HELPER_TOKEN_FILE: PathSetting = GucSetting::<Option<CString>>::new(Some(c""));
/// PEM CA certificate(s) for TLS to the helper (superuser only); set: TLS is used.
pub static HELPER_CA_FILE: PathSetting = GucSetting::<Option<CString>>::new(Some(c""));

pub fn register() {
    GucRegistry::define_string_guc(
        c"fpw_pushdown.slot_name",
        c"Physical replication slot held by the redo helper.",
        c"disable_full_page_writes() requires this slot to exist, be active and be within max_helper_lag.",
        &SLOT_NAME,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"fpw_pushdown.max_helper_lag",
        c"Largest slot lag at which full_page_writes may be off.",
        c"Lag is pg_current_wal_lsn() minus the slot's restart_lsn (what the helper has flushed).",
        &MAX_HELPER_LAG_KB,
        0,
        i32::MAX,
        GucContext::Sighup,
        GucFlags::UNIT_KB,
    );
    GucRegistry::define_bool_guc(
        c"fpw_pushdown.autopilot",
        c"Turn full_page_writes back on when the redo helper is gone or lagging.",
        c"Acts on any full_page_writes = off except a switch made with force => true (recorded in fpw_pushdown.state); never turns it off.",
        &AUTOPILOT,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"fpw_pushdown.autopilot_grace",
        c"How long the helper may be gone or lagging before the autopilot re-enables full_page_writes.",
        c"",
        &AUTOPILOT_GRACE_MS,
        0,
        i32::MAX,
        GucContext::Sighup,
        GucFlags::UNIT_MS,
    );
    GucRegistry::define_string_guc(
        c"fpw_pushdown.autopilot_database",
        c"Database the autopilot worker connects to.",
        c"It only reads cluster-wide views (pg_replication_slots); read when the worker starts.",
        &AUTOPILOT_DATABASE,
        // Not PGC_POSTMASTER: defining such a variable outside shared_preload_libraries is
        // FATAL for the session that loads the library.
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_string_guc(
        c"fpw_pushdown.helper_address",
        c"The redo helper's API: unix:/path/to/api.sock (or an absolute socket path), or host:port of its TCP listener.",
        c"When set, disable_full_page_writes() also requires the helper's /status to say it is streaming and consistent; page_at() and helper_status() use it.",
        &HELPER_ADDRESS,
        GucContext::Sighup,
        GucFlags::default(),
    );
    // Superuser only: the token opens every table's pages, and the CA decides whom the
    // backend trusts to hand it pages.
    GucRegistry::define_string_guc(
        c"fpw_pushdown.helper_token_file",
        c"File with the bearer token of the redo helper's TCP listener (the helper's api.token).",
        c"Read for every request to a host:port helper_address; refused when group or others can read it.",
        &HELPER_TOKEN_FILE,
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_string_guc(
        c"fpw_pushdown.helper_ca_file",
        c"PEM CA certificate(s) the redo helper's TLS certificate must chain to; set: requests to a host:port helper_address use TLS.",
        c"Required for a helper that is not on loopback. The certificate must name the host of helper_address.",
        &HELPER_CA_FILE,
        GucContext::Suset,
        GucFlags::default(),
    );
}

/// The configured slot name ("" when unset).
pub fn slot_name() -> String {
    SLOT_NAME
        .get()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default()
}

pub fn max_helper_lag_bytes() -> i64 {
    i64::from(MAX_HELPER_LAG_KB.get()) * 1024
}
