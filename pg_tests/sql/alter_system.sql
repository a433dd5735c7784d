-- PostgreSQL 17 added allow_alter_system. The switch writes postgresql.auto.conf as ALTER
-- SYSTEM does, so with allow_alter_system = off it is refused up front, in both directions,
-- and nothing changes. (The setting cannot itself be set with ALTER SYSTEM: it is appended to
-- postgresql.conf, where the last line wins.)
\! echo "allow_alter_system = off" >>"$FPW_TEST_CLUSTER/data/postgresql.conf"
SELECT pg_reload_conf();
SELECT pg_sleep(0.5);  -- the reload reaches this backend between statements
SHOW allow_alter_system;
\set VERBOSITY default
SELECT fpw_pushdown.disable_full_page_writes(force => true);
SELECT fpw_pushdown.enable_full_page_writes();
SHOW full_page_writes;
SELECT last_switch_direction FROM fpw_pushdown.status();
\! echo "allow_alter_system = on" >>"$FPW_TEST_CLUSTER/data/postgresql.conf"
SELECT pg_reload_conf();
SELECT pg_sleep(0.5);
SHOW allow_alter_system;
SELECT fpw_pushdown.enable_full_page_writes() IS NULL AS no_switch;
