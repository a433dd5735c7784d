-- A backend killed with SIGKILL while its switch off waits (the checkpointer stopped again):
-- nothing can intercept that. PostgreSQL restarts all processes (crash recovery) with
-- full_page_writes = off from postgresql.auto.conf, and the slot holder is gone with the
-- restart. switch_crash_autopilot checks that the autopilot turns full_page_writes back on.
SELECT fpw_pushdown.enable_full_page_writes() IS NULL AS was_on;
\! mkdir -p "$FPW_TEST_TMP/recv_crash" && "$PGBIN/pg_receivewal" -d "application_name=$FPW_TEST_TAG" -h "$PGHOST" -p "$PGPORT" -U postgres -D "$FPW_TEST_TMP/recv_crash" --slot fpw_pushdown --no-loop >"$FPW_TEST_TMP/recv.log" 2>&1 & echo $! >"$FPW_TEST_TMP/recv.pid"
SELECT regress.wait_for($$SELECT helper_healthy FROM fpw_pushdown.status()$$, '30s') AS helper_healthy;
SELECT full_page_writes, last_switch_direction FROM fpw_pushdown.status();
CREATE TABLE regress.crash_mark AS SELECT pg_current_wal_flush_lsn() AS lsn;
SELECT pid AS ckpt_pid FROM pg_stat_activity WHERE backend_type = 'checkpointer' \gset
\setenv CKPT_PID :ckpt_pid
\! kill -STOP "$CKPT_PID"
\! "$PGBIN/psql" -X -d "dbname=fpw_regress application_name=${FPW_TEST_TAG}_switcher" -c "SELECT fpw_pushdown.disable_full_page_writes(timeout => '5min')" >"$FPW_TEST_TMP/switcher_kill.out" 2>&1 &
SELECT regress.wait_for($$SELECT count(*) = 1 FROM pg_stat_activity WHERE application_name LIKE '%\_switcher' AND wait_event_type = 'Extension'$$, '30s') AS switcher_waits;
SELECT last_switch_direction, last_switch_lsn IS NULL AS unconfirmed, last_switch_by FROM fpw_pushdown.status();
SELECT pid AS switcher_pid FROM pg_stat_activity WHERE application_name LIKE '%\_switcher' \gset
\setenv SWITCHER_PID :switcher_pid
-- The postmaster ends every session (this one too) and restarts; this file ends once the
-- server accepts connections again.
\! ready() { grep -c "database system is ready to accept connections" "$FPW_TEST_CLUSTER/server.log"; }; n=$(ready); kill -9 "$SWITCHER_PID"; kill -CONT "$CKPT_PID"; for i in $(seq 1 600); do [ "$(ready)" -gt "$n" ] && "$PGBIN/pg_isready" -q && break; sleep 0.1; done; [ "$(ready)" -gt "$n" ] && echo "server restarted"
