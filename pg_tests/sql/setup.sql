-- Extension install, objects, default privileges, and helpers the other tests use.
CREATE EXTENSION fpw_pushdown;
CREATE EXTENSION pg_walinspect;

SELECT extname, extversion IS NOT NULL AS has_version, extnamespace::regnamespace AS schema
  FROM pg_extension WHERE extname = 'fpw_pushdown';

-- Every function lives in schema fpw_pushdown, is revoked from PUBLIC.
SELECT p.proname, pg_get_function_arguments(p.oid) AS args,
       left(pg_get_function_result(p.oid), 40) AS result, p.prosecdef AS security_definer,
       has_function_privilege('public', p.oid, 'EXECUTE') AS public_can_execute
  FROM pg_proc p WHERE p.pronamespace = 'fpw_pushdown'::regnamespace ORDER BY 1;

SELECT name, setting, unit, context FROM pg_settings WHERE name LIKE 'fpw\_pushdown.%' ORDER BY 1;

-- Helpers for the tests.
CREATE SCHEMA regress;
GRANT USAGE ON SCHEMA regress TO PUBLIC;
-- Replaces what varies between runs (LSNs, numbers) so expected output is stable.
CREATE FUNCTION regress.norm(t text) RETURNS text LANGUAGE sql IMMUTABLE AS $$
  SELECT regexp_replace(regexp_replace(t, '[0-9A-F]+/[0-9A-F]+', 'X/X', 'g'), '[0-9]+', 'N', 'g')
$$;
-- Runs a statement returning one value; reports 'ok: value' or 'error: message', normalised.
CREATE FUNCTION regress.try(cmd text) RETURNS text LANGUAGE plpgsql AS $$
DECLARE r text;
BEGIN
  EXECUTE cmd INTO r;
  RETURN 'ok: ' || coalesce(regress.norm(r), 'NULL');
EXCEPTION WHEN OTHERS THEN
  RETURN 'error: ' || regress.norm(SQLERRM);
END $$;
-- Polls a boolean query until true or timeout; returns whether it became true.
CREATE FUNCTION regress.wait_for(cond text, timeout interval) RETURNS boolean LANGUAGE plpgsql AS $$
DECLARE ok boolean; deadline timestamptz := clock_timestamp() + timeout;
BEGIN
  LOOP
    PERFORM pg_stat_clear_snapshot();  -- statistics views are cached per transaction
    EXECUTE cond INTO ok;
    IF ok THEN RETURN true; END IF;
    IF clock_timestamp() > deadline THEN RETURN false; END IF;
    PERFORM pg_sleep(0.1);
  END LOOP;
END $$;
-- An LSN the way pg_waldump prints it (%X/%08X).
CREATE FUNCTION regress.waldump_lsn(lsn pg_lsn) RETURNS text LANGUAGE sql IMMUTABLE AS $$
  SELECT split_part(lsn::text, '/', 1) || '/' || lpad(split_part(lsn::text, '/', 2), 8, '0')
$$;
-- The XLOG_FPW_CHANGE record at an LSN, as pg_walinspect decodes it.
CREATE FUNCTION regress.record_at(lsn pg_lsn) RETURNS TABLE(at_lsn boolean, rmgr text, record_type text, description text)
LANGUAGE sql AS $$
  SELECT start_lsn = lsn, resource_manager, record_type, description FROM pg_get_wal_record_info(lsn)
$$;

SELECT full_page_writes, slot_name, slot_active, helper_healthy, helper_problem, autopilot
  FROM fpw_pushdown.status();
