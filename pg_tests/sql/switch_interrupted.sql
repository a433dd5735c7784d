-- A switch off interrupted while it waits for the checkpointer's record (the checkpointer is
-- stopped with SIGSTOP, so the wait is certain): first a cancel, then pg_terminate_backend().
-- Each time the call gives up with an ERROR, the setting goes back to on and the previous
-- switch record is restored before the backend acts on the interrupt: full_page_writes never
-- goes off (the checkpointer, running again, logs no FPW_CHANGE record).
\! mkdir -p "$FPW_TEST_TMP/recv_faults" && "$PGBIN/pg_receivewal" -d "application_name=$FPW_TEST_TAG" -h "$PGHOST" -p "$PGPORT" -U postgres -D "$FPW_TEST_TMP/recv_faults" --slot fpw_pushdown --no-loop >"$FPW_TEST_TMP/recv.log" 2>&1 & echo $! >"$FPW_TEST_TMP/recv.pid"
SELECT regress.wait_for($$SELECT helper_healthy FROM fpw_pushdown.status()$$, '30s') AS helper_healthy;
SELECT full_page_writes, last_switch_direction, last_switch_by FROM fpw_pushdown.status();
SELECT pg_current_wal_flush_lsn() AS start_lsn \gset
SELECT pid AS ckpt_pid FROM pg_stat_activity WHERE backend_type = 'checkpointer' \gset
\setenv CKPT_PID :ckpt_pid
\! kill -STOP "$CKPT_PID"

-- A second session asks for the switch and waits for the record; its intent is recorded
-- before anything changed: off, guarded, no LSN yet.
\! "$PGBIN/psql" -X -d "dbname=fpw_regress application_name=${FPW_TEST_TAG}_switcher" -c "SELECT fpw_pushdown.disable_full_page_writes(timeout => '5min')" >"$FPW_TEST_TMP/switcher_cancel.out" 2>&1 &
SELECT regress.wait_for($$SELECT count(*) = 1 FROM pg_stat_activity WHERE application_name LIKE '%\_switcher' AND wait_event_type = 'Extension'$$, '30s') AS switcher_waits;
SELECT last_switch_direction, last_switch_lsn IS NULL AS unconfirmed, last_switch_by FROM fpw_pushdown.status();
SELECT pg_cancel_backend(pid) AS canceled FROM pg_stat_activity WHERE application_name LIKE '%\_switcher';
SELECT regress.wait_for($$SELECT count(*) = 0 FROM pg_stat_activity WHERE application_name LIKE '%\_switcher'$$, '30s') AS switcher_gone;
\! cat "$FPW_TEST_TMP/switcher_cancel.out"
SELECT full_page_writes, last_switch_direction, last_switch_by FROM fpw_pushdown.status();

-- The same, terminated: the ERROR comes first (the undo done), then the FATAL.
\! "$PGBIN/psql" -X -d "dbname=fpw_regress application_name=${FPW_TEST_TAG}_switcher" -c "SELECT fpw_pushdown.disable_full_page_writes(timeout => '5min')" >"$FPW_TEST_TMP/switcher_terminate.out" 2>&1 &
SELECT regress.wait_for($$SELECT count(*) = 1 FROM pg_stat_activity WHERE application_name LIKE '%\_switcher' AND wait_event_type = 'Extension'$$, '30s') AS switcher_waits;
SELECT last_switch_direction, last_switch_lsn IS NULL AS unconfirmed, last_switch_by FROM fpw_pushdown.status();
SELECT pg_terminate_backend(pid) AS terminated FROM pg_stat_activity WHERE application_name LIKE '%\_switcher';
SELECT regress.wait_for($$SELECT count(*) = 0 FROM pg_stat_activity WHERE application_name LIKE '%\_switcher'$$, '30s') AS switcher_gone;
\! grep -E "^(ERROR|HINT):" "$FPW_TEST_TMP/switcher_terminate.out"
\! grep -c "FATAL:  terminating connection due to administrator command" "$FPW_TEST_CLUSTER/server.log"

\! kill -CONT "$CKPT_PID"
-- A checkpoint: the checkpointer has processed the pending reloads when it returns.
CHECKPOINT;
SELECT full_page_writes, last_switch_direction, last_switch_by FROM fpw_pushdown.status();
SHOW full_page_writes;
SELECT count(*) AS fpw_change_records
  FROM pg_get_wal_records_info(:'start_lsn', pg_current_wal_flush_lsn()) WHERE record_type = 'FPW_CHANGE';
-- The slot holder goes; the next tests start their own.
\! kill "$(cat "$FPW_TEST_TMP/recv.pid")"
SELECT regress.wait_for($$SELECT NOT active FROM pg_replication_slots WHERE slot_name = 'fpw_pushdown'$$, '30s') AS slot_released;
