-- After the crash restart of switch_crash: full_page_writes is off and no helper holds the
-- slot. The switch off was recorded as an unconfirmed guarded switch, and the autopilot
-- watches any full_page_writes = off not recorded as forced: it turns it back on.
SELECT regress.wait_for($$SELECT full_page_writes AND last_switch_by = 'autopilot' AND position(' at ' || last_switch_lsn || ':' IN coalesce(autopilot_last_action, '')) > 0 AND last_switch_lsn > (SELECT lsn FROM regress.crash_mark) FROM fpw_pushdown.status()$$, '30s') AS fpw_back_on;
SELECT full_page_writes, slot_active, last_switch_direction, last_switch_by,
       regress.norm(autopilot_last_action) AS autopilot_last_action
  FROM fpw_pushdown.status();
SHOW full_page_writes;
-- full_page_writes was off after the restart (the end of crash recovery logs no FPW_CHANGE for
-- it): the autopilot's record is the only one since the crash.
SELECT description, start_lsn = (SELECT last_switch_lsn FROM fpw_pushdown.status()) AS autopilot_record
  FROM pg_get_wal_records_info((SELECT lsn FROM regress.crash_mark), pg_current_wal_flush_lsn())
 WHERE record_type = 'FPW_CHANGE' ORDER BY start_lsn;
DROP TABLE regress.crash_mark;
