-- The live switch where no redo helper can hold the slot (suite "versions": PostgreSQL 17 and
-- 18, whose replication protocol Debian's pg_receivewal 15 refuses to speak): the guard
-- refuses, force => true switches, and pg_walinspect finds the XLOG_FPW_CHANGE record that
-- starts exactly at each returned LSN, with the right value.
SELECT regress.try('SELECT fpw_pushdown.disable_full_page_writes()');
SELECT slot_name FROM pg_create_physical_replication_slot('fpw_pushdown', true);
SELECT regress.try('SELECT fpw_pushdown.disable_full_page_writes()');
SELECT slot_active, helper_healthy, helper_problem FROM fpw_pushdown.status();

CREATE TABLE fpi_probe (id int PRIMARY KEY, v int) WITH (autovacuum_enabled = off);
INSERT INTO fpi_probe SELECT g, 0 FROM generate_series(1, 2000) g;
CHECKPOINT;

-- Right after a segment switch the insert position sits past a page header that does not
-- exist yet; the switch must still flush and find its record.
SELECT pg_switch_wal() IS NOT NULL AS segment_switched;
SELECT fpw_pushdown.disable_full_page_writes(force => true) AS off_lsn \gset
SHOW full_page_writes;
SELECT * FROM regress.record_at(:'off_lsn');
SELECT last_switch_lsn = :'off_lsn' AS status_has_lsn, last_switch_direction, full_page_writes
  FROM fpw_pushdown.status();
-- Idempotent: already off.
SELECT fpw_pushdown.disable_full_page_writes(force => true) IS NULL AS no_switch;

-- FPW off: touching every page of the table after the checkpoint logs no image.
SELECT pg_stat_force_next_flush();
SELECT wal_fpi AS fpi_before, pg_current_wal_insert_lsn() AS lsn_before FROM pg_stat_wal \gset
UPDATE fpi_probe SET v = v + 1;
SELECT pg_stat_force_next_flush();
SELECT wal_fpi - :fpi_before AS new_fpi_pg_stat_wal FROM pg_stat_wal;
SELECT sum(fpi_size) AS new_fpi_bytes_in_wal, sum(count) > 2000 AS records_written
  FROM pg_get_wal_stats(:'lsn_before', pg_current_wal_flush_lsn());

-- Longer than the grace period: the autopilot (preloaded) does not undo a forced switch.
SELECT pg_sleep(3);
SHOW full_page_writes;

SELECT fpw_pushdown.enable_full_page_writes() AS on_lsn \gset
SHOW full_page_writes;
SELECT * FROM regress.record_at(:'on_lsn');
SELECT :'on_lsn'::pg_lsn > :'off_lsn'::pg_lsn AS later;
SELECT last_switch_lsn = :'on_lsn' AS status_has_lsn, last_switch_direction FROM fpw_pushdown.status();
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
