-- fpw_pushdown privileges: nothing is callable by PUBLIC. Superusers can call everything;
-- grant EXECUTE on individual functions to an operator role, for example:
--   GRANT USAGE ON SCHEMA fpw_pushdown TO ops;
--   GRANT EXECUTE ON FUNCTION fpw_pushdown.status() TO ops;
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA fpw_pushdown FROM PUBLIC;
REVOKE ALL ON SCHEMA fpw_pushdown FROM PUBLIC;
