-- fpw_pushdown.stat: one row for monitoring (switch, helper health, lag, WAL since reset),
-- readable by members of pg_monitor and by nobody else without a grant.
CREATE ROLE fpw_monitor LOGIN IN ROLE pg_monitor;
CREATE ROLE fpw_plain LOGIN;

SET ROLE fpw_monitor;
SELECT count(*) AS rows FROM fpw_pushdown.stat;
SELECT full_page_writes, slot_name, slot_lag_bytes IS NOT NULL AS has_slot_lag,
       max_helper_lag_bytes, helper_healthy, helper_state, helper_problem IS NOT NULL AS has_problem,
       wal_records >= 0 AND wal_fpi >= 0 AND wal_bytes >= 0 AND transactions >= 0 AS wal_sane,
       wal_stats_since IS NOT NULL AS has_since, last_switch_direction IS NOT NULL AS has_switched,
       autopilot IS NOT NULL AS has_autopilot
  FROM fpw_pushdown.stat;
-- The view does not open anything else: the switch stays out of reach.
SELECT regress.try('SELECT fpw_pushdown.disable_full_page_writes()');
RESET ROLE;

SET ROLE fpw_plain;
SELECT regress.try('SELECT count(*) FROM fpw_pushdown.stat');
SELECT regress.try('SELECT count(*) FROM fpw_pushdown.status()');
RESET ROLE;

-- WAL written after reset_wal_stats() shows in the view.
SELECT fpw_pushdown.reset_wal_stats() IS NOT NULL AS reset;
CREATE TABLE stat_probe AS SELECT g FROM generate_series(1, 1000) g;
SELECT pg_stat_force_next_flush();
SELECT wal_bytes > 0 AS counted_bytes, transactions >= 1 AS counted_transactions
  FROM fpw_pushdown.stat;
DROP TABLE stat_probe;

DROP ROLE fpw_monitor;
DROP ROLE fpw_plain;
