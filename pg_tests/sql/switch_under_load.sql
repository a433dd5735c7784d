-- 20 alternating switches in a row while pgbench writes concurrently: each returns the LSN
-- of its own XLOG_FPW_CHANGE record, in order, with the right value, and the WAL between the
-- first and the last holds exactly those 20 switch records.
\! "$PGBIN/pgbench" -h "$PGHOST" -p "$PGPORT" -U postgres -i -s 2 -q fpw_regress >"$FPW_TEST_TMP/pgbench_init.log" 2>&1 && echo "pgbench initialised"
\! "$PGBIN/pgbench" -h "$PGHOST" -p "$PGPORT" -U postgres -n -c 2 -j 2 -T 300 "dbname=fpw_regress application_name=$FPW_TEST_TAG" >"$FPW_TEST_TMP/pgbench.log" 2>&1 & echo $! >"$FPW_TEST_TMP/pgbench.pid"
SELECT regress.wait_for($$SELECT count(*) >= 2 FROM pg_stat_activity WHERE application_name LIKE 'fpw\_pg\_tests\_client\_%' AND backend_type = 'client backend'$$, '30s') AS pgbench_running;

CREATE TEMP TABLE switches AS
SELECT i,
       CASE WHEN i % 2 = 1 THEN fpw_pushdown.disable_full_page_writes()
            ELSE fpw_pushdown.enable_full_page_writes() END AS lsn
  FROM generate_series(1, 20) i;

\! kill "$(cat "$FPW_TEST_TMP/pgbench.pid")"

SELECT count(*) AS switches, count(DISTINCT lsn) AS distinct_lsns FROM switches;
SELECT s.i, r.at_lsn, r.record_type, r.description,
       r.description = CASE WHEN s.i % 2 = 1 THEN 'false' ELSE 'true' END AS right_direction
  FROM switches s, LATERAL regress.record_at(s.lsn) r ORDER BY s.i;
SELECT bool_and(lsn > prev) AS increasing
  FROM (SELECT lsn, lag(lsn) OVER (ORDER BY i) AS prev FROM switches) x WHERE prev IS NOT NULL;
-- Exactly these 20 FPW_CHANGE records in the range, and other transactions' records between them.
SELECT count(*) FILTER (WHERE record_type = 'FPW_CHANGE') AS fpw_change_records,
       count(*) FILTER (WHERE resource_manager = 'Heap') > 20 AS concurrent_heap_records
  FROM pg_get_wal_records_info((SELECT min(lsn) FROM switches), pg_current_wal_flush_lsn())
 WHERE start_lsn <= (SELECT max(lsn) FROM switches);
SHOW full_page_writes;
