-- The guard refuses to turn full_page_writes off unless a helper holds the slot within the
-- lag bound: no slot, an inactive slot, a lagging slot; then succeeds with a slot holder.
\set VERBOSITY default
SELECT fpw_pushdown.disable_full_page_writes();

-- A slot nobody holds.
SELECT slot_name FROM pg_create_physical_replication_slot('fpw_pushdown', true);
SELECT fpw_pushdown.disable_full_page_writes();
SELECT slot_active, helper_healthy, helper_problem FROM fpw_pushdown.status();

-- pg_receivewal holds the slot (stands in for the redo helper until it exists).
\! mkdir -p "$FPW_TEST_TMP/recv" && "$PGBIN/pg_receivewal" -d "application_name=$FPW_TEST_TAG" -h "$PGHOST" -p "$PGPORT" -U postgres -D "$FPW_TEST_TMP/recv" --slot fpw_pushdown --no-loop >"$FPW_TEST_TMP/recv.log" 2>&1 & echo $! >"$FPW_TEST_TMP/recv.pid"
SELECT regress.wait_for($$SELECT active FROM pg_replication_slots WHERE slot_name = 'fpw_pushdown'$$, '30s') AS slot_held;

-- Lagging: with a bound of 0 bytes, any WAL the holder has not flushed is too much.
ALTER SYSTEM SET fpw_pushdown.max_helper_lag = 0;
SELECT pg_reload_conf();
SELECT pg_sleep(0.5);  -- the reload reaches this backend between statements
SHOW fpw_pushdown.max_helper_lag;
CREATE TABLE guard_wal AS SELECT g AS id, repeat('x', 100) AS pad FROM generate_series(1, 3000) g;
SELECT regress.try('SELECT fpw_pushdown.disable_full_page_writes()');
SELECT slot_active, helper_healthy, regress.norm(helper_problem) AS problem FROM fpw_pushdown.status();
DROP TABLE guard_wal;

ALTER SYSTEM RESET fpw_pushdown.max_helper_lag;
SELECT pg_reload_conf();
SELECT pg_sleep(0.5);
SHOW fpw_pushdown.max_helper_lag;
SELECT slot_active, helper_healthy, helper_problem FROM fpw_pushdown.status();
SHOW full_page_writes;
