-- wal_stats(): WAL, FPIs and bytes per transaction since reset_wal_stats().
SELECT fpw_pushdown.reset_wal_stats() IS NOT NULL AS reset;
SELECT transactions >= 0 AND wal_records >= 0 AS sane FROM fpw_pushdown.wal_stats();
CREATE TABLE stats_probe (id int);
INSERT INTO stats_probe SELECT generate_series(1, 100);
INSERT INTO stats_probe SELECT generate_series(1, 100);
SELECT pg_stat_force_next_flush();
SELECT transactions >= 3 AS counted_transactions, wal_bytes > 0 AS counted_bytes,
       bytes_per_transaction > 0 AS per_txn, since IS NOT NULL AS has_since, full_page_writes
  FROM fpw_pushdown.wal_stats();
DROP TABLE stats_probe;
