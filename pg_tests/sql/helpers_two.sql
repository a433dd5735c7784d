-- Two redo helpers, each holding its own slot, as the shards of a sharded deployment do:
-- fpw_pushdown.slot_name lists both slots and fpw_pushdown.helper_address both helpers. The
-- guard needs every slot healthy and names each one that is not, the autopilot acts when
-- any one goes, and page_at() takes the first helper that answers. (Each helper here is an
-- ordinary unsharded one; a shard would route the pages it does not own to their owner.)
\getenv test_tmp FPW_TEST_TMP
SELECT 'unix:' || :'test_tmp' || '/two_a/api.sock, unix:' || :'test_tmp' || '/two_b/api.sock' AS both_helpers,
       'unix:' || :'test_tmp' || '/two_none/api.sock, unix:' || :'test_tmp' || '/two_b/api.sock' AS none_then_b \gset

-- A bad element makes the whole list invalid; the setting keeps its value.
ALTER SYSTEM SET fpw_pushdown.slot_name = 'fpw_two_a, Fpw-Two-B';
ALTER SYSTEM SET fpw_pushdown.slot_name = 'fpw_two_a,,fpw_two_b';
ALTER SYSTEM SET fpw_pushdown.helper_address = 'unix:/run/a.sock, unix:relative.sock';

ALTER SYSTEM SET fpw_pushdown.slot_name = ' fpw_two_a , fpw_two_b ';
ALTER SYSTEM SET fpw_pushdown.helper_address = :'both_helpers';
SELECT pg_reload_conf();
SELECT pg_sleep(0.3);
-- Neither slot exists yet: the guard names both.
SELECT regress.try('SELECT fpw_pushdown.disable_full_page_writes()');
SELECT * FROM fpw_pushdown.helper_slots();
SELECT slot_name, slot_active, slot_lag_bytes, helper_healthy FROM fpw_pushdown.status();

-- Each helper creates its slot and takes its own base backup.
\! for h in a b; do mkdir -m 700 "$FPW_TEST_TMP/two_$h" && chown postgres:postgres "$FPW_TEST_TMP/two_$h" && { setpriv --reuid=postgres --regid=postgres --init-groups -- "$FPW_HELPER_BIN" run --connect "host=$PGHOST port=$PGPORT user=postgres application_name=$FPW_TEST_TAG" --data-dir "$FPW_TEST_TMP/two_$h" --slot "fpw_two_$h" >"$FPW_TEST_TMP/two_$h.log" 2>&1 & echo $! >"$FPW_TEST_TMP/two_$h.pid"; }; done
SELECT regress.wait_for($$SELECT bool_and(healthy) FROM fpw_pushdown.helper_slots()$$, '60s') AS both_slots_held;
SELECT regress.wait_for($$SELECT bool_and(ready) FROM fpw_pushdown.helper_report()$$, '60s') AS both_helpers_ready;
SELECT slot_name, slot_exists, slot_active, healthy FROM fpw_pushdown.helper_slots();
SELECT slot_name, slot_active, helper_healthy, helper_state, helper_problem FROM fpw_pushdown.stat;
SELECT regexp_replace(address, '^.*/(two_[ab])/api.sock$', '\1') AS helper, state, ready FROM fpw_pushdown.helper_report();

-- page_at() skips a helper that cannot be reached and reads from the next.
CREATE EXTENSION pageinspect;
CREATE TABLE two_probe (id int, v text) WITH (autovacuum_enabled = off);
INSERT INTO two_probe SELECT g, 'row ' || g FROM generate_series(1, 50) g;
CHECKPOINT;
UPDATE two_probe SET v = v || '!' WHERE id = 7;
SELECT pg_current_wal_flush_lsn() AS probe_lsn \gset
ALTER SYSTEM SET fpw_pushdown.helper_address = :'none_then_b';
SELECT pg_reload_conf();
SELECT pg_sleep(0.3);
SELECT (SELECT array_agg(t_data ORDER BY lp) FROM heap_page_items(fpw_pushdown.page_at('two_probe', 0, lsn => :'probe_lsn')))
     = (SELECT array_agg(t_data ORDER BY lp) FROM heap_page_items(get_raw_page('two_probe', 0))) AS page_from_second_helper;
SELECT (fpw_pushdown.helper_status()->>'slot') AS status_from;
-- The guard asks every listed helper: one it cannot reach refuses the switch.
SELECT regress.try('SELECT fpw_pushdown.disable_full_page_writes()') ~ 'cannot turn full_page_writes off: cannot reach the redo helper at unix:.*/two_none/api.sock' AS unreachable_helper_refused;
ALTER SYSTEM SET fpw_pushdown.helper_address = :'both_helpers';
SELECT pg_reload_conf();
SELECT pg_sleep(0.3);

-- Both up: full_page_writes may be off.
SELECT fpw_pushdown.disable_full_page_writes() IS NOT NULL AS switched_off;
-- Helper b dies: the autopilot turns FPW back on, naming its slot (and only it).
\! kill -9 "$(cat "$FPW_TEST_TMP/two_b.pid")"
SELECT regress.wait_for($$SELECT full_page_writes AND last_switch_by = 'autopilot' AND position(' at ' || last_switch_lsn || ':' IN coalesce(autopilot_last_action, '')) > 0 FROM fpw_pushdown.status()$$, '30s') AS fpw_back_on;
SELECT autopilot_last_action ~ 'replication slot "fpw_two_b" is not active' AS names_b,
       autopilot_last_action !~ 'fpw_two_a' AS not_a
  FROM fpw_pushdown.status();
-- And the guard refuses to turn it off again, naming the missing helper's slot.
SELECT regress.try('SELECT fpw_pushdown.disable_full_page_writes()');
SELECT slot_name, slot_exists, slot_active, healthy, problem FROM fpw_pushdown.helper_slots();
SELECT slot_active, helper_healthy, helper_state,
       helper_problem ~ '"fpw_two_b" is not active' AND helper_problem ~ 'cannot reach the redo helper at unix:.*/two_b/api.sock' AS problem_names_b
  FROM fpw_pushdown.stat;

\! kill -9 "$(cat "$FPW_TEST_TMP/two_a.pid")"
SELECT regress.wait_for($$SELECT NOT bool_or(slot_active) FROM fpw_pushdown.helper_slots()$$, '30s') AS both_released;
SELECT pg_drop_replication_slot(s) FROM unnest(ARRAY['fpw_two_a', 'fpw_two_b']) s;
ALTER SYSTEM RESET fpw_pushdown.slot_name;
ALTER SYSTEM RESET fpw_pushdown.helper_address;
SELECT pg_reload_conf();
DROP TABLE two_probe;
DROP EXTENSION pageinspect;
\! rm -rf "$FPW_TEST_TMP"/two_a "$FPW_TEST_TMP"/two_b
