#!/usr/bin/env bash
# pg_regress suite for the fpw_pushdown extension, runnable as root.
#
# For each suite it creates a throwaway cluster owned by `postgres` on a free loopback port,
# runs Debian's pg_regress against it and removes the cluster. Suites:
#   main     wal_level=replica, fpw_pushdown preloaded (autopilot on): pg_tests/schedule
#   minimal  wal_level=minimal: the switch must be refused       : pg_tests/schedule_minimal
#   standby  a streaming standby of a primary: refused in recovery: pg_tests/schedule_standby
#   versions wal_level=replica, preloaded, no slot holder: switch forced, checked with
#            pg_walinspect; allow_alter_system (17+)             : pg_tests/schedule_versions
# Usage: pg_tests/run.sh [suite...]   (default: all). Needs the extension installed
# (make install). Exit status is non-zero if any suite fails.
#
# FPW_PG_MAJOR=17 or 18 runs the suites on that PostgreSQL (the npm servers, through the
# prefix scripts/pg-dev.sh makes; the extension installed with make install-pg17/18). There
# the default suites are "versions minimal": main and standby need pg_receivewal,
# pg_basebackup and pg_waldump, which exist here only in version 15.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
FPW_PG_MAJOR=${FPW_PG_MAJOR:-15}
if [ "$FPW_PG_MAJOR" != 15 ]; then
    PGBIN=${PGBIN:-${FPW_PG_DEV_DIR:-/opt/fpw_pushdown/pgdev}/$FPW_PG_MAJOR/bin}
    [ -x "$PGBIN/pg_config" ] || { echo "pg_tests: no PostgreSQL $FPW_PG_MAJOR prefix in $PGBIN (make setup)" >&2; exit 1; }
fi
# shellcheck source=../scripts/pg_cluster.sh
source "$here/../scripts/pg_cluster.sh"
PG_REGRESS=${PG_REGRESS:-/usr/lib/postgresql/15/lib/pgxs/src/test/regress/pg_regress}
export FPW_HELPER_BIN=${FPW_HELPER_BIN:-$here/../target/release/redo-helper}
[ -x "$FPW_HELPER_BIN" ] || { echo "pg_tests: build the helper first (cargo build --release -p redo-helper)" >&2; exit 1; }

suites=("$@")
if [ ${#suites[@]} -eq 0 ]; then
    if [ "$FPW_PG_MAJOR" = 15 ]; then suites=(main minimal standby); else suites=(versions minimal); fi
fi

work=$(mktemp -d /tmp/fpw_pg_tests.XXXXXX)
chmod 755 "$work"
clusters=()
cleanup() {
    for c in "${clusters[@]}"; do cluster_remove "$c"; done
    # Background clients a test may have left (pg_receivewal, pgbench).
    pkill -f "fpw_pg_tests_client_$$" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

outdir="$here/results"
[ "$FPW_PG_MAJOR" = 15 ] || outdir="$here/results/pg$FPW_PG_MAJOR"
rm -rf "$outdir"
mkdir -p "$outdir"

base_conf=(
    "shared_preload_libraries = 'fpw_pushdown'"
    "fpw_pushdown.autopilot_database = 'postgres'"
    "autovacuum = off"
    "max_wal_senders = 10"
    "max_replication_slots = 10"
    "wal_keep_size = 0"
)

# run_suite NAME PORT SCHEDULE DATADIR [extra pg_regress args...]
run_suite() {
    local name=$1 port=$2 schedule=$3 cdir=$4
    shift 4
    echo "== pg_tests suite '$name' on PostgreSQL $FPW_PG_MAJOR (port $port)"
    mkdir -p "$outdir/$name" "$work/$name-tmp"
    # Environment for the tests' \! shell commands.
    export PGHOST=127.0.0.1 PGPORT=$port PGUSER=postgres PGBIN
    export FPW_TEST_TMP="$work/$name-tmp" FPW_TEST_CLUSTER="$cdir" FPW_TEST_TAG="fpw_pg_tests_client_$$"
    FPW_HELPER_PORT=$(free_port)
    FPW_HELPER_TLS_PORT=$(p2=$(free_port); while [ "$p2" = "$FPW_HELPER_PORT" ]; do p2=$(free_port); done; echo "$p2")
    export FPW_HELPER_PORT FPW_HELPER_TLS_PORT
    if "$PG_REGRESS" --host=127.0.0.1 --port="$port" --user=postgres \
        --bindir="$PGBIN" --inputdir="$here" --outputdir="$outdir/$name" \
        --schedule="$here/$schedule" "$@"; then
        echo "== suite '$name' passed"
        return 0
    fi
    echo "== suite '$name' FAILED; diffs:" >&2
    cat "$outdir/$name/regression.diffs" >&2 || true
    echo "== server log tail:" >&2
    tail -n 40 "$cdir/server.log" >&2 || true
    return 1
}

# single_cluster_suite NAME SCHEDULE 'setting = value'...: one fresh cluster for one suite.
single_cluster_suite() {
    local name=$1 schedule=$2 c="$work/$1" p rc=0
    shift 2
    p=$(free_port)
    cluster_init "$c" "$p"
    cluster_conf "$c" "${base_conf[@]}" "$@"
    clusters+=("$c")
    cluster_start "$c"
    run_suite "$name" "$p" "$schedule" "$c" --dbname=fpw_regress || rc=1
    cluster_remove "$c"
    return $rc
}

failed=0
for suite in "${suites[@]}"; do
    case $suite in
    main)
        single_cluster_suite main schedule "wal_level = replica" "fpw_pushdown.autopilot_grace = '2s'" || failed=1
        ;;
    versions)
        single_cluster_suite versions schedule_versions "wal_level = replica" "fpw_pushdown.autopilot_grace = '2s'" || failed=1
        ;;
    minimal)
        single_cluster_suite minimal schedule_minimal "wal_level = minimal" "max_wal_senders = 0" || failed=1
        ;;
    standby)
        prim="$work/primary"
        sb="$work/standby"
        pp=$(free_port)
        cluster_init "$prim" "$pp"
        cluster_conf "$prim" "${base_conf[@]}" "wal_level = replica"
        clusters+=("$prim" "$sb")
        cluster_start "$prim"
        "$PGBIN/psql" -X -q -h 127.0.0.1 -p "$pp" -U postgres -d postgres -c "CREATE EXTENSION fpw_pushdown"
        sp=$(p2=$(free_port); while [ "$p2" = "$pp" ]; do p2=$(free_port); done; echo "$p2")
        mkdir -p "$sb" && chown postgres:postgres "$sb" && chmod 700 "$sb"
        as_postgres "$PGBIN/pg_basebackup" -h 127.0.0.1 -p "$pp" -U postgres -D "$sb/data" -R -X stream -c fast
        sed -i -e "s/^port = .*/port = $sp/" -e "s|^unix_socket_directories = .*|unix_socket_directories = '$sb'|" "$sb/data/postgresql.conf"
        cluster_start "$sb"
        # The standby already has the extension (replicated); the database must not be recreated.
        run_suite standby "$sp" schedule_standby "$sb" --use-existing --dbname=postgres || failed=1
        cluster_remove "$sb"
        cluster_remove "$prim"
        ;;
    *)
        echo "unknown suite: $suite" >&2
        failed=1
        ;;
    esac
done

if [ $failed -ne 0 ]; then
    echo "pg_tests: FAILED" >&2
    exit 1
fi
echo "pg_tests: all suites passed"
