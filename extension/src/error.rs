//! Raising PostgreSQL errors with detail and hint from Rust.

use pgrx::pg_sys::panic::ErrorReport;
use pgrx::prelude::*;

/// ereport(ERROR) with an SQLSTATE, message, optional detail and hint; never returns.
#[track_caller]
pub fn raise(code: PgSqlErrorCode, message: &str, detail: Option<&str>, hint: Option<&str>) -> ! {
    let mut report = ErrorReport::new(code, message.to_string(), "fpw_pushdown");
    if let Some(d) = detail {
        report = report.set_detail(d);
    }
    if let Some(h) = hint {
        report = report.set_hint(h);
    }
    report.report(PgLogLevel::ERROR);
    unreachable!("ereport(ERROR) returned");
}

/// ereport(WARNING) with detail.
#[track_caller]
pub fn warn(message: &str, detail: Option<&str>) {
    let mut report = ErrorReport::new(
        PgSqlErrorCode::ERRCODE_WARNING,
        message.to_string(),
        "fpw_pushdown",
    );
    if let Some(d) = detail {
        report = report.set_detail(d);
    }
    report.report(PgLogLevel::WARNING);
}
