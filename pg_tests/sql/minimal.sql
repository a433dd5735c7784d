-- With wal_level = minimal PostgreSQL writes no XLOG_FPW_CHANGE: the switch is refused.
CREATE EXTENSION fpw_pushdown;
SHOW wal_level;
SELECT fpw_pushdown.disable_full_page_writes(force => true);
SELECT fpw_pushdown.enable_full_page_writes();
SHOW full_page_writes;
SELECT full_page_writes, autopilot FROM fpw_pushdown.status();
-- The autopilot watches any full_page_writes = off not recorded as forced, but with
-- wal_level = minimal it cannot switch: it says so once and keeps running.
ALTER SYSTEM SET fpw_pushdown.autopilot_grace = 0;
ALTER SYSTEM SET full_page_writes = off;
SELECT pg_reload_conf();
SELECT pg_sleep(2);
SHOW full_page_writes;
SELECT full_page_writes, autopilot FROM fpw_pushdown.status();
\! grep -c "WARNING:  fpw_pushdown autopilot: full_page_writes is off, but wal_level is minimal: the autopilot cannot turn it back on" "$FPW_TEST_CLUSTER/server.log"
ALTER SYSTEM RESET full_page_writes;
ALTER SYSTEM RESET fpw_pushdown.autopilot_grace;
SELECT pg_reload_conf();
DROP EXTENSION fpw_pushdown;
