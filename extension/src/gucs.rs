//! `fpw_pushdown.*` settings. All are SIGHUP (postgresql.conf / ALTER SYSTEM + reload) so that
//! the guard's bounds are set by the DBA for the whole cluster, not loosened per session.

use pgrx::guc::{GucContext, GucFlags, GucRegistry, GucSetting};
use pgrx::prelude::*;
use std::ffi::{CStr, CString, c_char, c_void};

/// The prefix of every setting of this extension; reserved in _PG_init, so that once the
/// library is loaded, `fpw_pushdown.<anything not defined here>` is an error, not a placeholder.
pub const PREFIX: &CStr = c"fpw_pushdown";

/// Physical replication slot(s) held by the redo helper(s): a comma-separated list.
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
/// Where the redo helper(s) listen: a comma-separated list of addresses (see helper_client);
/// empty: the guard checks the slots only.
pub static HELPER_ADDRESS: GucSetting<Option<CString>> =
    GucSetting::<Option<CString>>::new(Some(c""));

/// A setting holding a file path (empty: unset).
pub type PathSetting = GucSetting<Option<CString>>;
/// File with the bearer token of the helper's TCP listener (superuser only).
pub static HELPER_TOKEN_FILE: PathSetting = GucSetting::<Option<CString>>::new(Some(c""));
/// PEM CA certificate(s) for TLS to the helper (superuser only); set: TLS is used.
pub static HELPER_CA_FILE: PathSetting = GucSetting::<Option<CString>>::new(Some(c""));

pub fn register() {
    // SAFETY: the check hooks are #[pg_guard] functions of the GucStringCheckHook type that
    // only read *newval and set GUC_check_errdetail_string (see check_list); the definition
    // runs during library load on the process's only thread, like the other definitions.
    unsafe {
        GucRegistry::define_string_guc_with_hooks(
            c"fpw_pushdown.slot_name",
            c"Physical replication slot(s) held by the redo helper(s): one name or a comma-separated list.",
            c"disable_full_page_writes() requires every listed slot to exist, be active and be within max_helper_lag; the autopilot acts when any of them is not.",
            &SLOT_NAME,
            GucContext::Sighup,
            GucFlags::default(),
            Some(check_slot_name),
            None,
            None,
        );
    }
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
    // SAFETY: as for slot_name above.
    unsafe {
        GucRegistry::define_string_guc_with_hooks(
            c"fpw_pushdown.helper_address",
            c"The redo helpers' API, a comma-separated list of: unix:/path/to/api.sock (or an absolute socket path), host:port of a TCP listener, or an http(s)://host:port URL.",
            c"When set, disable_full_page_writes() also requires every listed helper's /status to say it is streaming and consistent; page_at() and helper_status() use the first that answers.",
            &HELPER_ADDRESS,
            GucContext::Sighup,
            GucFlags::default(),
            Some(check_helper_address),
            None,
            None,
        );
    }
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

/// PostgreSQL's NAMEDATALEN (pg_config_manual.h): a slot name has at most 63 bytes.
const NAMEDATALEN: usize = 64;

/// Splits a comma-separated setting into its trimmed elements; an empty or all-blank value
/// is the empty list. An empty element (`a,,b`, a trailing comma) is an error.
fn split_list(value: &str) -> Result<Vec<&str>, String> {
    if value.trim().is_empty() {
        return Ok(Vec::new());
    }
    let items: Vec<&str> = value.split(',').map(str::trim).collect();
    if items.iter().any(|i| i.is_empty()) {
        return Err(
            "the list has an empty element (two commas in a row, or a comma at an end)".into(),
        );
    }
    Ok(items)
}

/// Parses `fpw_pushdown.slot_name`: one or more slot names separated by commas, each valid
/// as PostgreSQL validates a replication slot name (ReplicationSlotValidateName in
/// replication/slot.c: 1 to NAMEDATALEN-1 bytes of lower case letters, digits and
/// underscores), none twice. Empty: no slot configured (the guard refuses then).
pub fn parse_slot_list(value: &str) -> Result<Vec<String>, String> {
    let names = split_list(value)?;
    for (i, name) in names.iter().enumerate() {
        if name.len() >= NAMEDATALEN {
            return Err(format!(
                "replication slot name \"{name}\" is too long (at most {} bytes)",
                NAMEDATALEN - 1
            ));
        }
        if !name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        {
            return Err(format!(
                "replication slot name \"{name}\" contains invalid character: replication slot names may only contain lower case letters, numbers, and the underscore character"
            ));
        }
        if names[..i].contains(name) {
            return Err(format!("replication slot \"{name}\" is listed twice"));
        }
    }
    Ok(names.into_iter().map(str::to_string).collect())
}

/// Parses `fpw_pushdown.helper_address`: one or more addresses separated by commas, each as
/// `helper_client::parse_target` reads it, none twice. Empty: no helper address.
pub fn parse_address_list(value: &str) -> Result<Vec<String>, String> {
    let addrs = split_list(value)?;
    for (i, addr) in addrs.iter().enumerate() {
        crate::helper_client::parse_target(addr)?;
        if addrs[..i].contains(addr) {
            return Err(format!("helper address {addr:?} is listed twice"));
        }
    }
    Ok(addrs.into_iter().map(str::to_string).collect())
}

/// A GUC check hook's body for a list setting: true when `parse` accepts the new value;
/// otherwise false with the reason as the error's detail (PostgreSQL then reports
/// `invalid value for parameter "...": "..."` with it, at the level the caller chose:
/// ERROR for SET/ALTER SYSTEM, a LOG line for a reload that keeps the old value).
///
/// # Safety
/// `newval` is the check hook's argument: NULL or a pointer to a NUL-terminated string (or
/// NULL) that PostgreSQL owns for the duration of the call.
unsafe fn check_list<T>(newval: *mut *mut c_char, parse: fn(&str) -> Result<T, String>) -> bool {
    // SAFETY: per this function's contract, both pointers are NULL or valid for reading.
    let value = unsafe {
        if newval.is_null() || (*newval).is_null() {
            return true;
        }
        CStr::from_ptr(*newval)
    };
    let Err(why) = parse(&value.to_string_lossy()) else {
        return true;
    };
    if let Ok(detail) = CString::new(why) {
        // SAFETY: GUC_check_errdetail_string is a backend global PostgreSQL resets before it
        // calls a check hook and reads (errdetail_internal("%s", ...)) right after the hook
        // returns false; pstrdup copies our string into the current memory context, which
        // outlives that report, as the GUC_check_errdetail macro's palloc'd string does.
        unsafe { pg_sys::GUC_check_errdetail_string = pg_sys::pstrdup(detail.as_ptr()) };
    }
    false
}

#[pg_guard]
unsafe extern "C-unwind" fn check_slot_name(
    newval: *mut *mut c_char,
    _extra: *mut *mut c_void,
    _source: pg_sys::GucSource::Type,
) -> bool {
    // SAFETY: PostgreSQL calls a string check hook with its candidate value (check_list).
    unsafe { check_list(newval, parse_slot_list) }
}

#[pg_guard]
unsafe extern "C-unwind" fn check_helper_address(
    newval: *mut *mut c_char,
    _extra: *mut *mut c_void,
    _source: pg_sys::GucSource::Type,
) -> bool {
    // SAFETY: as check_slot_name.
    unsafe { check_list(newval, parse_address_list) }
}

/// The configured slot names, in order (empty when unset). The check hook refused anything
/// else, so a parse error cannot happen here; it would read as no slot (the guard refuses).
pub fn slot_names() -> Vec<String> {
    let value = SLOT_NAME
        .get()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    parse_slot_list(&value).unwrap_or_default()
}

/// The configured helper addresses, in order (empty when unset); as slot_names().
pub fn helper_addresses() -> Vec<String> {
    let value = HELPER_ADDRESS
        .get()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    parse_address_list(&value).unwrap_or_default()
}

pub fn max_helper_lag_bytes() -> i64 {
    i64::from(MAX_HELPER_LAG_KB.get()) * 1024
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_lists() {
        assert_eq!(parse_slot_list("fpw_pushdown").unwrap(), ["fpw_pushdown"]);
        assert_eq!(
            parse_slot_list(" fpw_pushdown_0 ,fpw_pushdown_1\t").unwrap(),
            ["fpw_pushdown_0", "fpw_pushdown_1"]
        );
        assert!(parse_slot_list("").unwrap().is_empty());
        assert!(parse_slot_list("  ").unwrap().is_empty());
        let e = parse_slot_list("ok, Bad-Name").unwrap_err();
        assert!(
            e.contains("\"Bad-Name\"") && e.contains("invalid character"),
            "{e}"
        );
        assert!(
            parse_slot_list("a,,b")
                .unwrap_err()
                .contains("empty element")
        );
        assert!(parse_slot_list("a,").unwrap_err().contains("empty element"));
        assert!(
            parse_slot_list("a, a")
                .unwrap_err()
                .contains("listed twice")
        );
        assert!(parse_slot_list(&"s".repeat(63)).is_ok());
        assert!(
            parse_slot_list(&"s".repeat(64))
                .unwrap_err()
                .contains("too long")
        );
    }

    #[test]
    fn address_lists() {
        assert_eq!(
            parse_address_list("unix:/run/a/api.sock, 127.0.0.1:7432 ,https://h1.example:7433")
                .unwrap(),
            [
                "unix:/run/a/api.sock",
                "127.0.0.1:7432",
                "https://h1.example:7433"
            ]
        );
        assert!(parse_address_list("").unwrap().is_empty());
        assert!(parse_address_list("127.0.0.1:1,unix:relative").is_err());
        assert!(parse_address_list("127.0.0.1:1,,127.0.0.1:2").is_err());
        assert!(
            parse_address_list("127.0.0.1:1, 127.0.0.1:1")
                .unwrap_err()
                .contains("listed twice")
        );
    }
}
