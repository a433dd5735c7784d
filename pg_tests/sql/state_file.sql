-- The state file cannot be written (a directory where its temporary file goes): a switch off,
-- guarded or forced, is an ERROR before anything changes, and full_page_writes stays on.
SELECT fpw_pushdown.enable_full_page_writes() IS NULL AS was_on;
\! mkdir -p "$FPW_TEST_TMP/recv_state" && "$PGBIN/pg_receivewal" -d "application_name=$FPW_TEST_TAG" -h "$PGHOST" -p "$PGPORT" -U postgres -D "$FPW_TEST_TMP/recv_state" --slot fpw_pushdown --no-loop >"$FPW_TEST_TMP/recv.log" 2>&1 & echo $! >"$FPW_TEST_TMP/recv.pid"
SELECT regress.wait_for($$SELECT helper_healthy FROM fpw_pushdown.status()$$, '30s') AS helper_healthy;
SELECT pg_current_wal_flush_lsn() AS start_lsn \gset
\! mkdir "$FPW_TEST_CLUSTER/data/fpw_pushdown.state.tmp"
\set VERBOSITY default
SELECT fpw_pushdown.disable_full_page_writes();
SELECT fpw_pushdown.disable_full_page_writes(force => true);
\set VERBOSITY terse
SELECT full_page_writes, last_switch_direction, last_switch_by FROM fpw_pushdown.status();
SHOW full_page_writes;
CHECKPOINT;
SELECT count(*) AS fpw_change_records
  FROM pg_get_wal_records_info(:'start_lsn', pg_current_wal_flush_lsn()) WHERE record_type = 'FPW_CHANGE';
\! rmdir "$FPW_TEST_CLUSTER/data/fpw_pushdown.state.tmp"

-- full_page_writes = off with no switch on record: the state file unreadable (a directory in
-- its place) and the setting changed behind the extension's back. The autopilot treats it as
-- a guarded switch: left alone while the helper is healthy, turned back on when it goes away.
\! mv "$FPW_TEST_CLUSTER/data/fpw_pushdown.state" "$FPW_TEST_TMP/state.saved" && mkdir "$FPW_TEST_CLUSTER/data/fpw_pushdown.state"
ALTER SYSTEM SET full_page_writes = off;
SELECT pg_reload_conf();
SELECT pg_sleep(0.5);
SELECT full_page_writes, last_switch_direction, helper_healthy FROM fpw_pushdown.status();
-- Longer than the grace period, with a healthy helper: left alone.
SELECT pg_sleep(3);
SHOW full_page_writes;
-- The slot holder dies. (status() warns about the state file on every call: quiet here.)
\! kill "$(cat "$FPW_TEST_TMP/recv.pid")"
SET client_min_messages = error;
SELECT regress.wait_for($$SELECT full_page_writes FROM fpw_pushdown.status()$$, '30s') AS fpw_back_on;
RESET client_min_messages;
SHOW full_page_writes;
\! grep -c "LOG:  fpw_pushdown autopilot: full_page_writes is off and the state file cannot be read (Is a directory (os error 21)); it is watched as a guarded switch" "$FPW_TEST_CLUSTER/server.log"
\! grep -c "WARNING:  fpw_pushdown autopilot: cannot read the state file: Is a directory (os error 21)" "$FPW_TEST_CLUSTER/server.log"
\! grep -c "WARNING:  fpw_pushdown autopilot: turned full_page_writes back on at [0-9A-F]*/[0-9A-F]*: replication slot \"fpw_pushdown\" is not active: no redo helper is attached for [0-9.]* s (grace 2000 ms); it was off and the state file cannot be read (Is a directory (os error 21))" "$FPW_TEST_CLUSTER/server.log"
\! rmdir "$FPW_TEST_CLUSTER/data/fpw_pushdown.state" && mv "$FPW_TEST_TMP/state.saved" "$FPW_TEST_CLUSTER/data/fpw_pushdown.state"

-- The same with a readable state file whose last switch is on: off behind the extension's back,
-- no helper, turned back on after the grace period.
SELECT last_switch_direction, last_switch_by FROM fpw_pushdown.status();
-- The restored record is an earlier autopilot switch whose action names its LSN: wait for a
-- newer one (this backend sees the setting on before the autopilot has recorded its switch).
SELECT last_switch_lsn AS restored_lsn FROM fpw_pushdown.status() \gset
ALTER SYSTEM SET full_page_writes = off;
SELECT pg_reload_conf();
SELECT pg_sleep(0.5);
SHOW full_page_writes;
SELECT regress.wait_for($$SELECT full_page_writes AND last_switch_by = 'autopilot' AND last_switch_lsn > '$$ || :'restored_lsn' || $$' AND position(' at ' || last_switch_lsn || ':' IN coalesce(autopilot_last_action, '')) > 0 FROM fpw_pushdown.status()$$, '30s') AS fpw_back_on;
SELECT last_switch_direction, last_switch_by, regress.norm(autopilot_last_action) AS autopilot_last_action
  FROM fpw_pushdown.status();
SHOW full_page_writes;
