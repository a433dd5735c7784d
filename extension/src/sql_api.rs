//! The SQL functions of schema `fpw_pushdown`.

use crate::error::{raise, warn};
use crate::guard::{self, SlotHealth};
use crate::sql_types::{PgLsn, RegClass};
use crate::state::{self, FpwDirection, WalBaseline};
use crate::switch::{self, SwitchOutcome};
use crate::{autopilot, gucs, helper_client};
use pgrx::datum::{Interval, TimestampWithTimeZone};
use pgrx::prelude::*;
use std::time::Duration;

/// Seconds between the Unix epoch and PostgreSQL's (2000-01-01).
const PG_EPOCH_OFFSET_SECS: i64 = 946_684_800;

fn timestamptz_from_unix(secs: u64) -> Option<TimestampWithTimeZone> {
    let micros = (secs as i64 - PG_EPOCH_OFFSET_SECS).checked_mul(1_000_000)?;
    TimestampWithTimeZone::try_from(micros).ok()
}

fn timeout_from(arg: Option<Interval>) -> Duration {
    let Some(interval) = arg else {
        raise(
            PgSqlErrorCode::ERRCODE_NULL_VALUE_NOT_ALLOWED,
            "timeout must not be NULL",
            None,
            None,
        );
    };
    let micros = interval.as_micros();
    if micros <= 0 {
        raise(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            "timeout must be a positive interval",
            Some(&format!("Got {micros} microseconds.")),
            None,
        );
    }
    Duration::from_micros(u64::try_from(micros).unwrap_or(u64::MAX))
}

fn outcome_to_lsn(outcome: SwitchOutcome, direction: FpwDirection) -> Option<PgLsn> {
    match outcome {
        SwitchOutcome::AlreadyThere => {
            pgrx::notice!("full_page_writes is already {}", direction.as_str());
            None
        }
        SwitchOutcome::Switched(change) => Some(PgLsn(change.lsn)),
    }
}

/// Turns full_page_writes off, live, and returns the LSN of the XLOG_FPW_CHANGE record.
/// Refuses unless a redo helper holds every slot of fpw_pushdown.slot_name within
/// max_helper_lag, and every helper of fpw_pushdown.helper_address is ready (or `force`).
#[pg_extern(security_definer, volatile, parallel_unsafe)]
#[search_path(pg_catalog, pg_temp)]
fn disable_full_page_writes(
    force: default!(Option<bool>, false),
    timeout: default!(Option<Interval>, "'30s'"),
) -> Option<PgLsn> {
    let Some(force) = force else {
        raise(
            PgSqlErrorCode::ERRCODE_NULL_VALUE_NOT_ALLOWED,
            "force must not be NULL",
            None,
            None,
        );
    };
    let timeout = timeout_from(timeout);
    switch::check_switch_possible();
    if !switch::full_page_writes_now() {
        return outcome_to_lsn(SwitchOutcome::AlreadyThere, FpwDirection::Off);
    }
    let problem = guard::check_all_slots()
        .and_then(|()| guard::check_helper_status())
        .err();
    if let Some(why) = &problem {
        if force {
            warn(
                &format!(
                    "full_page_writes is being turned off without a healthy redo helper: {why}"
                ),
                Some(
                    "Torn pages after a crash cannot be repaired from the helper, and the WAL it misses is not protected by full page images. The autopilot does not undo a forced switch; turn full_page_writes back on with fpw_pushdown.enable_full_page_writes().",
                ),
            );
        } else {
            raise(
                PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
                &format!("cannot turn full_page_writes off: {why}"),
                Some(
                    "full_page_writes may only be off while redo helpers hold every slot of fpw_pushdown.slot_name within fpw_pushdown.max_helper_lag.",
                ),
                Some(
                    "Start the redo helper, wait for it to catch up, or pass force => true to accept the risk.",
                ),
            );
        }
    }
    let forced = force && problem.is_some();
    let by = switch::calling_role_name();
    outcome_to_lsn(
        switch::switch_full_page_writes(FpwDirection::Off, timeout, &by, forced),
        FpwDirection::Off,
    )
}

/// Turns full_page_writes on, live, and returns the LSN of the XLOG_FPW_CHANGE record.
/// Never refused for guard reasons.
#[pg_extern(security_definer, volatile, parallel_unsafe)]
#[search_path(pg_catalog, pg_temp)]
fn enable_full_page_writes(timeout: default!(Option<Interval>, "'30s'")) -> Option<PgLsn> {
    let timeout = timeout_from(timeout);
    let by = switch::calling_role_name();
    outcome_to_lsn(
        switch::switch_full_page_writes(FpwDirection::On, timeout, &by, false),
        FpwDirection::On,
    )
}

/// One row: the switch, the slots, the autopilot. With several slots, `slot_name` is the
/// list, `slot_active` whether all are active, `slot_lag_bytes` the largest lag, and the
/// problem names every unhealthy slot; `helper_slots()` has one row per slot.
#[pg_extern(security_definer, volatile, parallel_unsafe)]
#[search_path(pg_catalog, pg_temp)]
#[allow(clippy::type_complexity)]
fn status() -> TableIterator<
    'static,
    (
        name!(full_page_writes, bool),
        name!(last_switch_lsn, Option<PgLsn>),
        name!(last_switch_direction, Option<String>),
        name!(last_switch_by, Option<String>),
        name!(last_switch_at, Option<TimestampWithTimeZone>),
        name!(slot_name, String),
        name!(slot_active, bool),
        name!(slot_lag_bytes, Option<i64>),
        name!(helper_healthy, bool),
        name!(helper_problem, Option<String>),
        name!(autopilot, String),
        name!(autopilot_last_action, Option<String>),
    ),
> {
    let st = state::load().unwrap_or_else(|e| {
        pgrx::warning!("fpw_pushdown: cannot read the state file: {e}");
        state::ExtensionState::default()
    });
    let slots = SlotHealth::read_all();
    let problem = guard::check_slots(&slots, gucs::max_helper_lag_bytes())
        .err()
        .map(|p| p.to_string());
    let names: Vec<&str> = slots.iter().map(|s| s.slot_name.as_str()).collect();
    let all_active = !slots.is_empty() && slots.iter().all(|s| s.active);
    let largest_lag = slots.iter().filter_map(|s| s.lag_bytes).max();
    TableIterator::once((
        switch::full_page_writes_now(),
        st.last_switch_lsn.map(PgLsn),
        st.last_switch_direction.map(|d| d.as_str().to_string()),
        st.last_switch_by.clone(),
        st.last_switch_at_unix.and_then(timestamptz_from_unix),
        names.join(","),
        all_active,
        largest_lag,
        problem.is_none(),
        problem,
        autopilot::describe_state(),
        st.autopilot_last_action.clone(),
    ))
}

/// One row per slot of `fpw_pushdown.slot_name`, in the listed order: whether it exists and
/// is held by a walsender, its lag (`pg_current_wal_lsn() - restart_lsn`), and the guard's
/// judgement of it.
#[pg_extern(security_definer, volatile, parallel_unsafe)]
#[search_path(pg_catalog, pg_temp)]
#[allow(clippy::type_complexity)]
fn helper_slots() -> TableIterator<
    'static,
    (
        name!(slot_name, String),
        name!(slot_exists, bool),
        name!(slot_active, bool),
        name!(slot_lag_bytes, Option<i64>),
        name!(healthy, bool),
        name!(problem, Option<String>),
    ),
> {
    let max_lag = gucs::max_helper_lag_bytes();
    let rows: Vec<_> = SlotHealth::read_all()
        .into_iter()
        .map(|slot| {
            let problem = slot.check(max_lag).err().map(|p| p.to_string());
            (
                slot.slot_name,
                slot.exists,
                slot.active,
                slot.lag_bytes,
                problem.is_none(),
                problem,
            )
        })
        .collect();
    TableIterator::new(rows)
}

/// Current WAL counters of the cluster (pg_stat_wal) and transactions (pg_stat_database).
fn read_wal_counters() -> (WalBaseline, Option<TimestampWithTimeZone>) {
    let row = Spi::connect(|client| {
        let t = client.select(
            "SELECT w.wal_records, w.wal_fpi, w.wal_bytes::int8, w.stats_reset,
                    (SELECT coalesce(sum(xact_commit + xact_rollback), 0)::int8 FROM pg_catalog.pg_stat_database)
               FROM pg_catalog.pg_stat_wal w",
            Some(1),
            &[],
        )?;
        let r = t.first();
        Ok::<_, pgrx::spi::Error>((
            r.get::<i64>(1)?.unwrap_or(0),
            r.get::<i64>(2)?.unwrap_or(0),
            r.get::<i64>(3)?.unwrap_or(0),
            r.get::<TimestampWithTimeZone>(4)?,
            r.get::<i64>(5)?.unwrap_or(0),
        ))
    });
    match row {
        Ok((records, fpi, bytes, reset, transactions)) => (
            WalBaseline {
                records,
                fpi,
                bytes,
                transactions,
                at_unix: state::now_unix(),
            },
            reset,
        ),
        Err(e) => pgrx::error!("fpw_pushdown: could not read pg_stat_wal: {e}"),
    }
}

/// WAL written since `reset_wal_stats()` (or since pg_stat_wal was last reset), and what it
/// costs per transaction: the number a DBA watches when switching full_page_writes.
#[pg_extern(security_definer, volatile, parallel_unsafe)]
#[search_path(pg_catalog, pg_temp)]
#[allow(clippy::type_complexity)]
fn wal_stats() -> TableIterator<
    'static,
    (
        name!(wal_records, i64),
        name!(wal_fpi, i64),
        name!(wal_bytes, i64),
        name!(transactions, i64),
        name!(bytes_per_transaction, Option<f64>),
        name!(fpi_per_transaction, Option<f64>),
        name!(fpi_share_of_records, Option<f64>),
        name!(since, Option<TimestampWithTimeZone>),
        name!(full_page_writes, bool),
    ),
> {
    let (now, stats_reset) = read_wal_counters();
    let baseline = state::load().ok().and_then(|s| s.wal_baseline);
    // A baseline older than a pg_stat_wal reset would give negative deltas: ignore it then.
    let (delta, since) = match baseline {
        Some(b)
            if now.records >= b.records
                && now.fpi >= b.fpi
                && now.bytes >= b.bytes
                && now.transactions >= b.transactions =>
        {
            (
                WalBaseline {
                    records: now.records - b.records,
                    fpi: now.fpi - b.fpi,
                    bytes: now.bytes - b.bytes,
                    transactions: now.transactions - b.transactions,
                    at_unix: b.at_unix,
                },
                timestamptz_from_unix(b.at_unix),
            )
        }
        _ => (now, stats_reset),
    };
    let per_txn = |x: i64| (delta.transactions > 0).then(|| x as f64 / delta.transactions as f64);
    TableIterator::once((
        delta.records,
        delta.fpi,
        delta.bytes,
        delta.transactions,
        per_txn(delta.bytes),
        per_txn(delta.fpi),
        (delta.records > 0).then(|| delta.fpi as f64 / delta.records as f64),
        since,
        switch::full_page_writes_now(),
    ))
}

/// Starts a new measurement window for wal_stats() without resetting pg_stat_wal itself
/// (other monitoring may rely on it). Returns the time of the new baseline.
#[pg_extern(security_definer, volatile, parallel_unsafe)]
#[search_path(pg_catalog, pg_temp)]
fn reset_wal_stats() -> Option<TimestampWithTimeZone> {
    let (now, _) = read_wal_counters();
    match state::update(|s| s.wal_baseline = Some(now)) {
        Ok(_) => timestamptz_from_unix(now.at_unix),
        Err(e) => pgrx::error!("fpw_pushdown: could not write the state file: {e}"),
    }
}

/// The redo helper's /status (JSON), from the first address of `fpw_pushdown.helper_address`
/// that answers (`helper_report()` has every helper's state).
#[pg_extern(security_definer, volatile, parallel_unsafe)]
#[search_path(pg_catalog, pg_temp)]
fn helper_status() -> pgrx::Json {
    let (addr, resp) = helper_client::request_any("GET", "/status", Duration::from_secs(5))
        .unwrap_or_else(|e| {
            raise(
                PgSqlErrorCode::ERRCODE_CONNECTION_FAILURE,
                &e,
                None,
                Some("Check fpw_pushdown.helper_address and that redo-helper run is up."),
            )
        });
    match serde_json::from_slice(&resp.body) {
        Ok(v) if resp.status == 200 => pgrx::Json(v),
        _ => raise(
            PgSqlErrorCode::ERRCODE_CONNECTION_FAILURE,
            &format!(
                "redo helper at {addr}: /status answered HTTP {}: {}",
                resp.status,
                resp.body_text()
            ),
            None,
            None,
        ),
    }
}

/// Every helper as it reports itself, one row per address of `fpw_pushdown.helper_address`
/// (for `fpw_pushdown.stat`): its state and whether it is ready (streaming with consistent
/// pages), or why its /status could not be read (`problem`). One row of NULLs when no
/// address is set. Never raises: monitoring must see a down helper as a row, not an error.
#[pg_extern(security_definer, volatile, parallel_unsafe)]
#[search_path(pg_catalog, pg_temp)]
#[allow(clippy::type_complexity)]
fn helper_report() -> TableIterator<
    'static,
    (
        name!(state, Option<String>),
        name!(ready, Option<bool>),
        name!(problem, Option<String>),
        name!(address, Option<String>),
    ),
> {
    // Short: a monitoring query should not hang on a stuck helper.
    let reports = guard::read_helper_statuses(Duration::from_secs(2));
    if reports.is_empty() {
        return TableIterator::once((None, None, None, None));
    }
    let rows: Vec<_> = reports
        .into_iter()
        .map(|(addr, status)| match status {
            Ok(status) => {
                let ready = status.ready();
                let problem = (!ready).then(|| guard::not_ready(&addr, &status).to_string());
                (
                    Some(status.state.as_str().to_string()),
                    Some(ready),
                    problem,
                    Some(addr),
                )
            }
            Err(why) => (None, Some(false), Some(why.to_string()), Some(addr)),
        })
        .collect();
    TableIterator::new(rows)
}

// `fpw_pushdown.stat`: one row for monitoring, like pg_stat_replication: the switch, the
// helpers' health (slots and /status, as the guard judges them), their lag, and WAL written
// since reset_wal_stats(). With several helpers, helper_report()'s rows are folded into one
// (states in address order, ready only when all are, every problem). Readable by pg_monitor.
// A view's functions are called with the privileges of the role querying it (PostgreSQL's
// CREATE VIEW notes), so pg_monitor also gets EXECUTE on the read-only functions it calls
// (and on helper_slots(), the per-slot detail); PUBLIC gets nothing (privileges.sql).
extension_sql!(
    r#"
CREATE VIEW fpw_pushdown.stat AS
SELECT s.full_page_writes,
       s.last_switch_lsn,
       s.last_switch_direction,
       s.last_switch_by,
       s.last_switch_at,
       s.autopilot,
       s.autopilot_last_action,
       s.slot_name,
       s.slot_active,
       s.slot_lag_bytes,
       pg_catalog.pg_size_bytes(pg_catalog.current_setting('fpw_pushdown.max_helper_lag', true))
         AS max_helper_lag_bytes,
       s.helper_healthy AND h.problem IS NULL AS helper_healthy,
       CASE WHEN s.helper_problem IS NOT NULL AND h.problem IS NOT NULL
            THEN s.helper_problem || '; ' || h.problem
            ELSE coalesce(s.helper_problem, h.problem) END AS helper_problem,
       h.state AS helper_state,
       w.wal_records,
       w.wal_fpi,
       w.wal_bytes,
       w.transactions,
       w.bytes_per_transaction,
       w.fpi_per_transaction,
       w.fpi_share_of_records,
       w.since AS wal_stats_since
  FROM fpw_pushdown.status() s,
       (SELECT pg_catalog.string_agg(r.state, ', ' ORDER BY r.i) AS state,
               pg_catalog.string_agg(r.problem, '; ' ORDER BY r.i) AS problem
          FROM fpw_pushdown.helper_report() WITH ORDINALITY
               AS r(state, ready, problem, address, i)) h,
       fpw_pushdown.wal_stats() w;
COMMENT ON VIEW fpw_pushdown.stat IS
  'fpw_pushdown: switch state, redo helper health and lag, WAL written since reset_wal_stats() (one row)';
GRANT USAGE ON SCHEMA fpw_pushdown TO pg_monitor;
GRANT SELECT ON fpw_pushdown.stat TO pg_monitor;
GRANT EXECUTE ON FUNCTION fpw_pushdown.status(), fpw_pushdown.helper_report(),
  fpw_pushdown.wal_stats(), fpw_pushdown.helper_slots() TO pg_monitor;
"#,
    name = "stat_view",
    requires = [status, helper_report, wal_stats, helper_slots]
);

/// Tablespace, database and relfilenode of a relation, as the WAL names it.
fn relation_locator(rel: RegClass) -> (i64, i64, i64) {
    let rel = rel.0;
    let row = Spi::connect(|client| {
        let t = client.select(
            "SELECT pg_catalog.pg_relation_filenode(c.oid)::int8,
                    (CASE WHEN c.relisshared THEN 1664
                          WHEN c.reltablespace = 0 THEN d.dattablespace
                          ELSE c.reltablespace END)::int8,
                    (CASE WHEN c.relisshared THEN 0 ELSE d.oid END)::int8
               FROM pg_catalog.pg_class c, pg_catalog.pg_database d
              WHERE c.oid = $1 AND d.datname = pg_catalog.current_database()",
            Some(1),
            &[rel.into()],
        )?;
        if t.is_empty() {
            return Ok::<_, pgrx::spi::Error>(None);
        }
        let r = t.first();
        Ok(Some((r.get::<i64>(1)?, r.get::<i64>(2)?, r.get::<i64>(3)?)))
    });
    match row {
        Ok(Some((Some(node), Some(spc), Some(db)))) => (spc, db, node),
        Ok(Some(_)) => raise(
            PgSqlErrorCode::ERRCODE_WRONG_OBJECT_TYPE,
            &format!("relation {} has no storage", rel.to_u32()),
            None,
            None,
        ),
        Ok(None) => raise(
            PgSqlErrorCode::ERRCODE_UNDEFINED_TABLE,
            &format!("relation {} does not exist", rel.to_u32()),
            None,
            None,
        ),
        Err(e) => pgrx::error!(
            "fpw_pushdown: could not look up relation {}: {e}",
            rel.to_u32()
        ),
    }
}

/// PostgreSQL's FirstNormalObjectId (access/transam.h): OIDs below it belong to objects
/// initdb created, the system catalogs among them.
const FIRST_NORMAL_OBJECT_ID: i64 = 16384;

/// page_at() is SECURITY DEFINER (it reads helper settings a caller may not), so it checks
/// the caller itself: the role that called it (GetOuterUserId: the session's role after SET
/// ROLE, not the function's owner) must be allowed to SELECT the relation, and a system
/// catalog (or anything initdb created) needs a superuser, as pageinspect's get_raw_page
/// does for every relation: their raw pages hold what SELECT privileges hide (pg_authid's
/// password hashes, dead row versions, other roles' data). An index or TOAST relation is
/// judged by the table it belongs to, since those have no privileges of their own.
fn check_page_read_allowed(rel: RegClass) {
    // SAFETY: GetOuterUserId only reads a backend global.
    let caller = unsafe { pg_sys::GetOuterUserId() };
    let row = Spi::connect(|client| {
        let t = client.select(
            "WITH base AS (
                 SELECT COALESCE(i.indrelid, c.oid) AS oid
                   FROM pg_catalog.pg_class c
                   LEFT JOIN pg_catalog.pg_index i ON i.indexrelid = c.oid
                  WHERE c.oid = $1),
             owner AS (
                 SELECT COALESCE((SELECT t.oid FROM pg_catalog.pg_class t
                                   WHERE t.reltoastrelid = base.oid), base.oid) AS oid
                   FROM base)
             SELECT (c.relnamespace = 'pg_catalog'::pg_catalog.regnamespace
                     OR c.oid::pg_catalog.int8 < $3)::bool,
                    pg_catalog.has_table_privilege($2, c.oid, 'SELECT'),
                    (SELECT r.rolsuper FROM pg_catalog.pg_roles r WHERE r.oid = $2),
                    c.relname::text
               FROM owner JOIN pg_catalog.pg_class c ON c.oid = owner.oid",
            Some(1),
            &[rel.0.into(), caller.into(), FIRST_NORMAL_OBJECT_ID.into()],
        )?;
        if t.is_empty() {
            return Ok::<_, pgrx::spi::Error>(None);
        }
        let r = t.first();
        Ok(Some((
            r.get::<bool>(1)?,
            r.get::<bool>(2)?,
            r.get::<bool>(3)?,
            r.get::<String>(4)?,
        )))
    });
    let (catalog, may_select, superuser, name) = match row {
        Ok(Some((Some(c), Some(s), su, Some(n)))) => (c, s, su.unwrap_or(false), n),
        Ok(_) => raise(
            PgSqlErrorCode::ERRCODE_UNDEFINED_TABLE,
            &format!("relation {} does not exist", rel.0.to_u32()),
            None,
            None,
        ),
        Err(e) => pgrx::error!("fpw_pushdown: could not check privileges: {e}"),
    };
    if catalog && !superuser {
        raise(
            PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
            &format!("must be superuser to read raw pages of system relation \"{name}\""),
            None,
            None,
        );
    }
    if !may_select && !superuser {
        raise(
            PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
            &format!("permission denied for table {name}"),
            Some(
                "page_at() needs SELECT on the table (for an index or TOAST relation: on its table).",
            ),
            None,
        );
    }
}

/// The page `blk` of a relation fork as of `lsn` (default: the WAL flushed now), rebuilt by
/// the redo helper: time-travel page inspection, e.g. with pageinspect's page_header().
/// The caller needs SELECT on the relation, and superuser for a system catalog.
#[pg_extern(security_definer, volatile, parallel_unsafe)]
#[search_path(pg_catalog, pg_temp)]
fn page_at(
    rel: RegClass,
    blk: i64,
    fork: default!(String, "'main'"),
    lsn: default!(Option<PgLsn>, "NULL"),
) -> Vec<u8> {
    if !(0..=i64::from(u32::MAX - 1)).contains(&blk) {
        raise(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            &format!("block number {blk} is out of range"),
            None,
            None,
        );
    }
    if !matches!(fork.as_str(), "main" | "fsm" | "vm" | "init") {
        raise(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            &format!("invalid fork name {fork:?}"),
            None,
            Some("Valid fork names are main, fsm, vm and init."),
        );
    }
    // SAFETY: GetFlushRecPtr reads XLogCtl's flush position under its spinlock and writes
    // the timeline only through its argument when that is non-NULL (we pass NULL). It is
    // memory-safe in any backend; PostgreSQL means it for primaries (it asserts
    // !RecoveryInProgress in assert-enabled builds; on a standby use an explicit `lsn`).
    let lsn = lsn.unwrap_or_else(|| PgLsn(unsafe { pg_sys::GetFlushRecPtr(std::ptr::null_mut()) }));
    check_page_read_allowed(rel);
    let (spc, db, node) = relation_locator(rel);
    let path = format!("/page/{spc}/{db}/{node}/{fork}/{blk}?lsn={lsn}&wait_ms=10000");
    // Any listed helper routes the page to the shard that owns it: the first that answers.
    let (addr, resp) = helper_client::request_any("GET", &path, Duration::from_secs(15))
        .unwrap_or_else(|e| raise(PgSqlErrorCode::ERRCODE_CONNECTION_FAILURE, &e, None, None));
    let fail = |code, msg: String| -> ! { raise(code, &msg, None, None) };
    match resp.status {
        200 if resp.body.len() == 8192 => {
            pgrx::debug1!(
                "page_at: {} deltas replayed from {} by the helper at {addr} (shard {})",
                resp.header("x-deltas-replayed").unwrap_or("?"),
                resp.header("x-start").unwrap_or("?"),
                resp.header("x-fpw-shard").unwrap_or("-")
            );
            resp.body
        }
        200 => fail(
            PgSqlErrorCode::ERRCODE_DATA_CORRUPTED,
            format!("redo helper returned {} bytes, not a page", resp.body.len()),
        ),
        404 => fail(PgSqlErrorCode::ERRCODE_UNDEFINED_OBJECT, resp.body_text()),
        409 => fail(PgSqlErrorCode::ERRCODE_DATA_CORRUPTED, resp.body_text()),
        410 | 425 => fail(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            resp.body_text(),
        ),
        code => fail(
            PgSqlErrorCode::ERRCODE_INTERNAL_ERROR,
            format!(
                "redo helper at {addr} answered HTTP {code}: {}",
                resp.body_text()
            ),
        ),
    }
}

/// Sets a relation's image threshold in the redo helper(s) (NULL: back to the helpers'
/// default). Every listed helper is told: each shard generates the images of its own pages.
#[pg_extern(security_definer, volatile, parallel_unsafe)]
#[search_path(pg_catalog, pg_temp)]
fn set_image_threshold(rel: RegClass, threshold: Option<i32>) -> String {
    if threshold.is_some_and(|t| t <= 0) {
        raise(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            "threshold must be positive",
            None,
            None,
        );
    }
    let (spc, db, node) = relation_locator(rel);
    let value = threshold.map(|t| format!("?value={t}")).unwrap_or_default();
    let path = format!("/threshold/{spc}/{db}/{node}{value}");
    let addrs = helper_client::helper_addresses();
    if addrs.is_empty() {
        raise(
            PgSqlErrorCode::ERRCODE_CONNECTION_FAILURE,
            "fpw_pushdown.helper_address is not set",
            None,
            None,
        );
    }
    let mut answers = Vec::with_capacity(addrs.len());
    for addr in &addrs {
        let resp = helper_client::request_to(addr, "POST", &path, Duration::from_secs(5))
            .unwrap_or_else(|e| raise(PgSqlErrorCode::ERRCODE_CONNECTION_FAILURE, &e, None, None));
        if resp.status != 200 {
            raise(
                PgSqlErrorCode::ERRCODE_INTERNAL_ERROR,
                &format!(
                    "redo helper at {addr} answered HTTP {}: {}",
                    resp.status,
                    resp.body_text()
                ),
                None,
                None,
            );
        }
        answers.push(resp.body_text());
    }
    // One helper: its answer as is; several: each prefixed with its address.
    if let [only] = answers.as_slice() {
        return only.clone();
    }
    addrs
        .iter()
        .zip(&answers)
        .map(|(addr, answer)| format!("{addr}: {answer}"))
        .collect::<Vec<_>>()
        .join("; ")
}
