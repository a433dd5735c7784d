-- Leaves the cluster as it found it.
\! pkill -f "$FPW_TEST_TAG" 2>/dev/null; true
SELECT regress.wait_for($$SELECT NOT active FROM pg_replication_slots WHERE slot_name = 'fpw_pushdown'$$, '30s') AS released;
SELECT pg_drop_replication_slot('fpw_pushdown');
SHOW full_page_writes;
DROP SCHEMA regress CASCADE;
DROP EXTENSION pg_walinspect;
DROP EXTENSION fpw_pushdown;
