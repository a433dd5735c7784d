-- The redo helper itself holds the slot: the guard and status see it as the slot holder,
-- FPW can be turned off with it attached, and the autopilot reacts when it dies.
\! "$FPW_HELPER_BIN" run --connect "host=$PGHOST port=$PGPORT user=postgres application_name=$FPW_TEST_TAG" --data-dir "$FPW_TEST_TMP/helper" >"$FPW_TEST_TMP/helper.log" 2>&1 & echo $! >"$FPW_TEST_TMP/helper.pid"
SELECT regress.wait_for($$SELECT active FROM pg_replication_slots WHERE slot_name = 'fpw_pushdown'$$, '60s') AS helper_holds_slot;
SELECT regress.wait_for($$SELECT count(*) = 1 FROM pg_stat_replication WHERE application_name LIKE 'fpw\_pg\_tests\_client\_%'$$, '30s') AS helper_is_walsender_client;
SELECT regress.wait_for($$SELECT helper_healthy FROM fpw_pushdown.status()$$, '30s') AS helper_healthy;
SELECT fpw_pushdown.disable_full_page_writes() IS NOT NULL AS switched_off;
-- The helper acknowledges what it has fsynced: after a write burst, the slot catches up.
CREATE TABLE helper_load AS SELECT g AS id, md5(g::text) AS v FROM generate_series(1, 20000) g;
SELECT regress.wait_for($$SELECT slot_lag_bytes < 65536 FROM fpw_pushdown.status()$$, '30s') AS slot_caught_up;
SELECT full_page_writes, slot_active, helper_healthy FROM fpw_pushdown.status();
DROP TABLE helper_load;
-- The helper dies: the autopilot turns FPW back on.
\! kill -9 "$(cat "$FPW_TEST_TMP/helper.pid")"
SELECT regress.wait_for($$SELECT full_page_writes FROM fpw_pushdown.status()$$, '30s') AS fpw_back_on;
SELECT last_switch_by, last_switch_direction FROM fpw_pushdown.status();
