-- Nothing is callable by PUBLIC; a role granted EXECUTE can call exactly what it was granted.
CREATE ROLE fpw_operator LOGIN;
SET ROLE fpw_operator;
SELECT regress.try('SELECT count(*) FROM fpw_pushdown.status()');
SELECT regress.try('SELECT fpw_pushdown.disable_full_page_writes()');
SELECT regress.try('SELECT fpw_pushdown.enable_full_page_writes()');
RESET ROLE;

GRANT USAGE ON SCHEMA fpw_pushdown TO fpw_operator;
GRANT EXECUTE ON FUNCTION fpw_pushdown.status() TO fpw_operator;
SET ROLE fpw_operator;
SELECT regress.try('SELECT count(*) FROM fpw_pushdown.status()');
SELECT regress.try('SELECT fpw_pushdown.disable_full_page_writes()');
SELECT regress.try('SELECT count(*) FROM fpw_pushdown.wal_stats()');
RESET ROLE;

-- A role granted EXECUTE on the switch may call it (force.sql shows it really switching).
GRANT EXECUTE ON FUNCTION fpw_pushdown.enable_full_page_writes(interval) TO fpw_operator;
SET ROLE fpw_operator;
SELECT fpw_pushdown.enable_full_page_writes();
RESET ROLE;

REVOKE ALL ON ALL FUNCTIONS IN SCHEMA fpw_pushdown FROM fpw_operator;
REVOKE ALL ON SCHEMA fpw_pushdown FROM fpw_operator;
DROP ROLE fpw_operator;
