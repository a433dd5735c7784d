-- The autopilot turns FPW back on within grace + a few seconds after the slot holder dies,
-- logs a WARNING with the reason and the LSN, and records its action.
SELECT current_setting('fpw_pushdown.autopilot') AS autopilot,
       current_setting('fpw_pushdown.autopilot_grace') AS grace;
SELECT autopilot FROM fpw_pushdown.status();
SELECT fpw_pushdown.disable_full_page_writes() IS NOT NULL AS switched_off;
SHOW full_page_writes;

-- It leaves a healthy helper alone.
SELECT pg_sleep(3);
SELECT full_page_writes FROM fpw_pushdown.status();

-- The slot holder dies.
\! kill "$(cat "$FPW_TEST_TMP/recv.pid")"
SELECT clock_timestamp() AS killed_at \gset
SELECT regress.wait_for($$SELECT NOT active FROM pg_replication_slots WHERE slot_name = 'fpw_pushdown'$$, '30s') AS slot_released;
-- The autopilot records its switch right after the record is flushed, and then its action
-- (naming the switch's LSN) in a second write; wait for both.
SELECT regress.wait_for($$SELECT full_page_writes AND last_switch_by = 'autopilot' AND position(' at ' || last_switch_lsn || ':' IN coalesce(autopilot_last_action, '')) > 0 FROM fpw_pushdown.status()$$, '30s') AS fpw_back_on;
SELECT clock_timestamp() - :'killed_at'::timestamptz < interval '8 seconds' AS within_grace_plus_few_seconds;
SHOW full_page_writes;
SELECT last_switch_direction, last_switch_by, regress.norm(autopilot_last_action) AS autopilot_last_action
  FROM fpw_pushdown.status();
-- The autopilot's record is a real FPW_CHANGE record.
SELECT r.* FROM fpw_pushdown.status() s, LATERAL regress.record_at(s.last_switch_lsn) r;
\! grep -c "WARNING:  fpw_pushdown autopilot: turned full_page_writes back on at [0-9A-F]*/[0-9A-F]*: replication slot \"fpw_pushdown\" is not active" "$FPW_TEST_CLUSTER/server.log"
