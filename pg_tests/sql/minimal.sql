-- With wal_level = minimal PostgreSQL writes no XLOG_FPW_CHANGE: the switch is refused.
CREATE EXTENSION fpw_pushdown;
SHOW wal_level;
SELECT fpw_pushdown.disable_full_page_writes(force => true);
SELECT fpw_pushdown.enable_full_page_writes();
SHOW full_page_writes;
SELECT full_page_writes, autopilot FROM fpw_pushdown.status();
DROP EXTENSION fpw_pushdown;
