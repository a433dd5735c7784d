-- A disable/enable round trip. The returned LSNs are checked independently: pg_walinspect
-- and pg_waldump must find an XLOG_FPW_CHANGE record starting exactly there, with the
-- right value. Then: with FPW off, updates of pages touched before the switch log no full
-- page images; after enable and a CHECKPOINT they do again.
CREATE TABLE fpi_probe (id int PRIMARY KEY, v int) WITH (autovacuum_enabled = off);
INSERT INTO fpi_probe SELECT g, 0 FROM generate_series(1, 2000) g;
CHECKPOINT;

-- Right after a segment switch the insert position sits past a page header that does not
-- exist yet; the switch must still flush and find its record.
SELECT pg_switch_wal() IS NOT NULL AS segment_switched;
SELECT fpw_pushdown.disable_full_page_writes() AS off_lsn \gset
SHOW full_page_writes;
SELECT * FROM regress.record_at(:'off_lsn');
SELECT last_switch_lsn = :'off_lsn' AS status_has_lsn, last_switch_direction, full_page_writes
  FROM fpw_pushdown.status();
-- pg_waldump reads the same record from pg_wal.
-- (pg_waldump prints the low half of an LSN zero-padded to 8 digits.)
SELECT regress.waldump_lsn(:'off_lsn') AS off_lsn_wd \gset
\setenv LSN :off_lsn_wd
\! "$PGBIN/pg_waldump" -p "$FPW_TEST_CLUSTER/data/pg_wal" -s "$LSN" -n 1 2>&1 | grep -o "rmgr: XLOG .*lsn: $LSN, .*desc: FPW_CHANGE [a-z]*" | sed -e 's/len.*desc:/... desc:/' -e 's/lsn: [0-9A-F/]*/lsn: <returned>/'

-- Idempotent: already off.
SELECT fpw_pushdown.disable_full_page_writes() IS NULL AS no_switch;

-- FPW off: touching every page of the table after the checkpoint logs no image.
SELECT pg_stat_force_next_flush();
SELECT wal_fpi AS fpi_before, pg_current_wal_insert_lsn() AS lsn_before FROM pg_stat_wal \gset
UPDATE fpi_probe SET v = v + 1;
SELECT pg_stat_force_next_flush();
SELECT wal_fpi - :fpi_before AS new_fpi_pg_stat_wal FROM pg_stat_wal;
SELECT sum(fpi_size) AS new_fpi_bytes_in_wal, sum(count) > 2000 AS records_written
  FROM pg_get_wal_stats(:'lsn_before', pg_current_wal_flush_lsn());

SELECT fpw_pushdown.enable_full_page_writes() AS on_lsn \gset
SHOW full_page_writes;
SELECT * FROM regress.record_at(:'on_lsn');
SELECT :'on_lsn'::pg_lsn > :'off_lsn'::pg_lsn AS later;
SELECT regress.waldump_lsn(:'on_lsn') AS on_lsn_wd \gset
\setenv LSN :on_lsn_wd
\! "$PGBIN/pg_waldump" -p "$FPW_TEST_CLUSTER/data/pg_wal" -s "$LSN" -n 1 2>&1 | grep -o "rmgr: XLOG .*lsn: $LSN, .*desc: FPW_CHANGE [a-z]*" | sed -e 's/len.*desc:/... desc:/' -e 's/lsn: [0-9A-F/]*/lsn: <returned>/'
SELECT fpw_pushdown.enable_full_page_writes() IS NULL AS no_switch;

-- FPW on again: after a checkpoint the same updates log images.
CHECKPOINT;
SELECT pg_stat_force_next_flush();
SELECT wal_fpi AS fpi_before, pg_current_wal_insert_lsn() AS lsn_before FROM pg_stat_wal \gset
UPDATE fpi_probe SET v = v + 1;
SELECT pg_stat_force_next_flush();
SELECT wal_fpi - :fpi_before > 10 AS fpi_grow_pg_stat_wal FROM pg_stat_wal;
SELECT sum(fpi_size) > 8192 AS fpi_in_wal FROM pg_get_wal_stats(:'lsn_before', pg_current_wal_flush_lsn());
DROP TABLE fpi_probe;
