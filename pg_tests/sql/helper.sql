-- The redo helper itself holds the slot: the guard and status see it as the slot holder,
-- its /status is checked when fpw_pushdown.helper_address is set, page_at() reads pages from
-- it, and the autopilot reacts when it dies.
-- The helper runs as the database's OS user (postgres), as in production, so that the
-- backends can use its Unix socket (0600 in its 0700 data directory) and read its token.
\getenv helper_port FPW_HELPER_PORT
\getenv test_tmp FPW_TEST_TMP
SELECT '127.0.0.1:' || :'helper_port' AS helper_tcp,
       'unix:' || :'test_tmp' || '/helper/api.sock' AS helper_addr,
       :'test_tmp' || '/helper/api.token' AS helper_token \gset
-- A helper address nobody listens on: the guard refuses (slot also missing or inactive).
ALTER SYSTEM SET fpw_pushdown.helper_address = :'helper_addr';
SELECT pg_reload_conf();
SELECT pg_sleep(0.3);
SELECT regress.try('SELECT fpw_pushdown.disable_full_page_writes()') ~ 'cannot turn full_page_writes off' AS refused;

\! mkdir -m 700 "$FPW_TEST_TMP/helper" && chown postgres:postgres "$FPW_TEST_TMP/helper"
\! setpriv --reuid=postgres --regid=postgres --init-groups -- "$FPW_HELPER_BIN" run --connect "host=$PGHOST port=$PGPORT user=postgres application_name=$FPW_TEST_TAG" --data-dir "$FPW_TEST_TMP/helper" --listen "127.0.0.1:$FPW_HELPER_PORT" >"$FPW_TEST_TMP/helper.log" 2>&1 & echo $! >"$FPW_TEST_TMP/helper.pid"
SELECT regress.wait_for($$SELECT active FROM pg_replication_slots WHERE slot_name = 'fpw_pushdown'$$, '60s') AS helper_holds_slot;
SELECT regress.wait_for($$SELECT count(*) = 1 FROM pg_stat_replication WHERE application_name LIKE 'fpw\_pg\_tests\_client\_%'$$, '30s') AS helper_is_walsender_client;
SELECT regress.wait_for($$SELECT helper_healthy FROM fpw_pushdown.status()$$, '30s') AS helper_healthy;
-- status() judges the slot only; the helper's own /status says when its pages are consistent
-- (its first flush after the backup's end, up to --flush-interval-ms later).
SELECT regress.wait_for($$SELECT s->>'state' = 'streaming' AND s->>'consistent' = 'true' FROM fpw_pushdown.helper_status() s$$, '30s') AS helper_streaming;
SELECT s->>'state' AS state, s->>'consistent' AS consistent, s->>'slot' AS slot
  FROM fpw_pushdown.helper_status() s;
-- fpw_pushdown.stat shows the helper's own state beside the slot's health.
SELECT helper_state, helper_healthy, helper_problem FROM fpw_pushdown.stat;

-- page_at(): a page whose newest change carries a full page image (FPW still on).
CREATE EXTENSION pageinspect;
CREATE TABLE page_probe (id int PRIMARY KEY, v text) WITH (autovacuum_enabled = off);
INSERT INTO page_probe SELECT g, 'row ' || g FROM generate_series(1, 50) g;
CHECKPOINT;
UPDATE page_probe SET v = v || '!' WHERE id = 7;
SELECT pg_current_wal_flush_lsn() AS probe_lsn \gset
SELECT (SELECT array_agg(t_ctid ORDER BY lp) FROM heap_page_items(fpw_pushdown.page_at('page_probe', 0, lsn => :'probe_lsn')))
     = (SELECT array_agg(t_ctid ORDER BY lp) FROM heap_page_items(get_raw_page('page_probe', 0))) AS same_line_pointers,
       (SELECT array_agg(t_data ORDER BY lp) FROM heap_page_items(fpw_pushdown.page_at('page_probe', 0, lsn => :'probe_lsn')))
     = (SELECT array_agg(t_data ORDER BY lp) FROM heap_page_items(get_raw_page('page_probe', 0))) AS same_tuples,
       (page_header(fpw_pushdown.page_at('page_probe', 0, lsn => :'probe_lsn'))).lsn
     = (page_header(get_raw_page('page_probe', 0))).lsn AS same_page_lsn;
SELECT regress.try($$SELECT length(fpw_pushdown.page_at('page_probe', 0, 'nofork'))$$);
SELECT regress.try($$SELECT length(fpw_pushdown.page_at('page_probe', -1))$$);
SELECT regress.try($$SELECT length(fpw_pushdown.page_at('page_probe', 0, lsn => '0/10'))$$) ~ 'before the start of the helper' AS before_history;
SELECT regress.norm(fpw_pushdown.set_image_threshold('page_probe', 4));
SELECT regress.norm(fpw_pushdown.set_image_threshold('page_probe', NULL));

-- Over TCP every request needs the helper's token (fpw_pushdown.helper_token_file,
-- superuser only); the socket needed none.
ALTER SYSTEM SET fpw_pushdown.helper_address = :'helper_tcp';
SELECT pg_reload_conf();
SELECT pg_sleep(0.3);
SELECT current_setting('fpw_pushdown.helper_address') LIKE '127.0.0.1:%' AS on_tcp;
SELECT regress.try('SELECT fpw_pushdown.helper_status()::text') ~ 'needs Authorization: Bearer' AS refused_without_token;
ALTER SYSTEM SET fpw_pushdown.helper_token_file = :'helper_token';
SELECT pg_reload_conf();
SELECT pg_sleep(0.3);
SELECT fpw_pushdown.helper_status()->>'state' AS served_with_token;
SELECT length(fpw_pushdown.page_at('page_probe', 0, lsn => :'probe_lsn')) AS page_over_tcp;

-- page_at() checks the caller's own privileges (it is SECURITY DEFINER): EXECUTE alone
-- reads nothing; SELECT on the table opens that table (and its indexes); system catalogs
-- need a superuser, as pageinspect's get_raw_page.
CREATE ROLE fpw_pager LOGIN;
GRANT USAGE ON SCHEMA fpw_pushdown TO fpw_pager;
GRANT EXECUTE ON FUNCTION fpw_pushdown.page_at(regclass, bigint, text, pg_lsn) TO fpw_pager;
SET ROLE fpw_pager;
SELECT regress.try($$SELECT length(fpw_pushdown.page_at('pg_authid', 0))$$);
SELECT regress.try($$SELECT length(fpw_pushdown.page_at('pg_class', 0))$$);
SELECT regress.try($$SELECT length(fpw_pushdown.page_at('page_probe', 0))$$);
SELECT regress.try($$SELECT length(fpw_pushdown.page_at('page_probe_pkey', 1))$$);
RESET ROLE;
GRANT SELECT ON page_probe TO fpw_pager;
SET ROLE fpw_pager;
SELECT length(fpw_pushdown.page_at('page_probe', 0)) AS granted_table,
       length(fpw_pushdown.page_at('page_probe_pkey', 1)) AS granted_index;
SELECT regress.try($$SELECT length(fpw_pushdown.page_at('pg_authid', 0))$$);
-- Settings that steer the helper connection are not the caller's to change.
SET fpw_pushdown.helper_token_file = '/tmp/x';
RESET ROLE;
REVOKE ALL ON page_probe FROM fpw_pager;
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA fpw_pushdown FROM fpw_pager;
REVOKE ALL ON SCHEMA fpw_pushdown FROM fpw_pager;
DROP ROLE fpw_pager;

SELECT fpw_pushdown.disable_full_page_writes() IS NOT NULL AS switched_off;
-- The helper acknowledges what it has fsynced: after a write burst, the slot catches up.
CREATE TABLE helper_load AS SELECT g AS id, md5(g::text) AS v FROM generate_series(1, 20000) g;
SELECT regress.wait_for($$SELECT slot_lag_bytes < 65536 FROM fpw_pushdown.status()$$, '30s') AS slot_caught_up;
SELECT full_page_writes, slot_active, helper_healthy FROM fpw_pushdown.status();
DROP TABLE helper_load;
-- With FPW off, no page images reach the WAL: the helper rebuilds pages from the deltas with
-- its own redo, and still serves the older versions (time travel).
UPDATE page_probe SET v = v || '?' WHERE id % 3 = 0;
DELETE FROM page_probe WHERE id = 11;
INSERT INTO page_probe VALUES (51, 'row 51');
SELECT pg_current_wal_flush_lsn() AS off_lsn \gset
SELECT (SELECT array_agg((lp, lp_flags, t_ctid, t_data) ORDER BY lp) FROM heap_page_items(fpw_pushdown.page_at('page_probe', 0, lsn => :'off_lsn')))
     = (SELECT array_agg((lp, lp_flags, t_ctid, t_data) ORDER BY lp) FROM heap_page_items(get_raw_page('page_probe', 0))) AS heap_page_from_deltas,
       (SELECT array_agg(ctid ORDER BY itemoffset) FROM bt_page_items(fpw_pushdown.page_at('page_probe_pkey', 1, lsn => :'off_lsn')))
     = (SELECT array_agg(ctid ORDER BY itemoffset) FROM bt_page_items(get_raw_page('page_probe_pkey', 1))) AS index_page_from_deltas,
       (SELECT count(*) FROM heap_page_items(fpw_pushdown.page_at('page_probe', 0, lsn => :'probe_lsn')))
     < (SELECT count(*) FROM heap_page_items(fpw_pushdown.page_at('page_probe', 0, lsn => :'off_lsn'))) AS older_version_served;
-- The helper dies: the autopilot turns FPW back on.
\! kill -9 "$(cat "$FPW_TEST_TMP/helper.pid")"
-- The autopilot records its switch right after the record is flushed; wait for both.
SELECT regress.wait_for($$SELECT full_page_writes AND last_switch_by = 'autopilot' FROM fpw_pushdown.status()$$, '30s') AS fpw_back_on;
SELECT last_switch_by, last_switch_direction FROM fpw_pushdown.status();
SELECT helper_state, helper_healthy, helper_problem IS NOT NULL AS has_problem FROM fpw_pushdown.stat;
SELECT regress.try('SELECT fpw_pushdown.helper_status()::text') ~ 'cannot reach the redo helper' AS helper_unreachable;
ALTER SYSTEM RESET fpw_pushdown.helper_address;
ALTER SYSTEM RESET fpw_pushdown.helper_token_file;
SELECT pg_reload_conf();
DROP TABLE page_probe;
DROP EXTENSION pageinspect;
