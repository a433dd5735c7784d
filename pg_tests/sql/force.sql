-- force => true turns FPW off without a healthy helper, with a WARNING naming what is
-- unprotected; the autopilot stands down for a forced switch. A role granted EXECUTE does
-- this without any ALTER SYSTEM privilege of its own (the functions are SECURITY DEFINER).
SELECT slot_active FROM fpw_pushdown.status();
SELECT regress.try('SELECT fpw_pushdown.disable_full_page_writes()');

CREATE ROLE fpw_switcher LOGIN;
GRANT USAGE ON SCHEMA fpw_pushdown TO fpw_switcher;
GRANT EXECUTE ON FUNCTION fpw_pushdown.disable_full_page_writes(boolean, interval),
                          fpw_pushdown.enable_full_page_writes(interval) TO fpw_switcher;
SET ROLE fpw_switcher;
SELECT fpw_pushdown.disable_full_page_writes(force => true) AS forced_lsn \gset
RESET ROLE;
SHOW full_page_writes;
SELECT * FROM regress.record_at(:'forced_lsn');
SELECT last_switch_by, last_switch_direction FROM fpw_pushdown.status();

-- Longer than the grace period: the autopilot does not undo a forced switch.
SELECT pg_sleep(4);
SHOW full_page_writes;

SET ROLE fpw_switcher;
SELECT fpw_pushdown.enable_full_page_writes() IS NOT NULL AS switched_on;
RESET ROLE;
SHOW full_page_writes;
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA fpw_pushdown FROM fpw_switcher;
REVOKE ALL ON SCHEMA fpw_pushdown FROM fpw_switcher;
DROP ROLE fpw_switcher;
