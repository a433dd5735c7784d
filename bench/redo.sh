#!/usr/bin/env bash
# Redo throughput: the helper's Rust redo (`redo-helper verify --bench`) against
# PostgreSQL 15's own replay (crash recovery) of the same WAL range, in the same run.
#
#   bench/redo.sh                  # pgbench scale 10, 30 s of TPC-B-like load (~3 minutes)
#   SCALE=20 SECS=60 bench/redo.sh
#   KEEP=1 bench/redo.sh           # keep the work directory (path printed)
#   WORKERS=1 bench/redo.sh        # helper replay threads (default 2)
#
# Steps: a throwaway cluster with full_page_writes = off (the mode the helper serves) and
# checkpoints pushed out of the way; pgbench -i; `redo-helper run` bootstraps (BASE_BACKUP:
# its checkpoint is the last one before the crash, so crash recovery starts at the backup
# start, where the helper's replay starts too); pgbench for SECS seconds; the helper catches
# up and stops; the server is killed (immediate stop). Then:
#   - PostgreSQL: crash recovery from a copy of the crashed data directory, RUNS times;
#     the time is the "redo done ... elapsed" of the startup process (the redo loop only).
#     Its runs alternate with the helper's.
#   - helper: `redo-helper verify --bench` over [redo start, end of WAL] (replay only: base
#     pages + WAL from the store, no comparisons), RUNS times, each from a fresh copy of the
#     helper's data directory as PostgreSQL's runs are; the time is the replay loop
#     (opening and reading the WAL included).
# Reports records/s and MB of WAL/s for both, the ratio, and the helper's top 5 record
# types by cost. Needs root (or the postgres user) and PostgreSQL 15 server binaries.
set -euo pipefail

SCALE=${SCALE:-10}
SECS=${SECS:-30}
RUNS=${RUNS:-5}
WORKERS=${WORKERS:-2}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target-helper}
HELPER=$CARGO_TARGET_DIR/release/redo-helper
# shellcheck source=../scripts/pg_cluster.sh
. "$ROOT/scripts/pg_cluster.sh"

echo "building redo-helper (release)..." >&2
(cd "$ROOT" && cargo build -q -p redo-helper --release)

WORK=$(mktemp -d /tmp/redo-bench.XXXXXX)
chown postgres:postgres "$WORK" 2>/dev/null || true
PORT=$(free_port)
HPORT=$(free_port)
HELPER_PID=""
cleanup() {
    helper_stop
    cluster_stop "$WORK/pg" 2>/dev/null || true
    if [ "${KEEP:-0}" = 1 ]; then echo "kept $WORK" >&2; else rm -rf "$WORK"; fi
}
trap cleanup EXIT

cluster_init "$WORK/pg" "$PORT"
cluster_conf "$WORK/pg" \
    "wal_level = replica" "max_wal_senders = 4" "full_page_writes = off" \
    "checkpoint_timeout = 1h" "max_wal_size = 64GB" "wal_keep_size = 16GB" \
    "autovacuum = off" "synchronous_commit = off" "log_min_messages = log" \
    "log_startup_progress_interval = 0"
cluster_start "$WORK/pg"
PSQL=("$PGBIN/psql" -X -q -A -t -h 127.0.0.1 -p "$PORT" -U postgres -d postgres)
sql() { "${PSQL[@]}" -c "$1"; }
lsn_num() { sql "SELECT pg_wal_lsn_diff('$1', '0/0')::bigint"; }

echo "pgbench -i -s $SCALE..." >&2
"$PGBIN/pgbench" -q -i -s "$SCALE" -h 127.0.0.1 -p "$PORT" -U postgres postgres >/dev/null 2>&1
echo "bootstrapping the helper..." >&2
helper_start "$HELPER" "$WORK/helper" "$PORT" "$HPORT" "$WORK/helper.log"
echo "pgbench -T $SECS -c 2 (full_page_writes = off)..." >&2
"$PGBIN/pgbench" -n -T "$SECS" -c 2 -j 2 -h 127.0.0.1 -p "$PORT" -U postgres postgres \
    >"$WORK/pgbench.log" 2>&1
TARGET=$(sql "SELECT pg_current_wal_flush_lsn()")
TARGET_N=$(lsn_num "$TARGET")
for _ in $(seq 1 600); do
    F=$(helper_status "$HPORT" | json_field flush_lsn)
    D=$(helper_status "$HPORT" | json_field decoded_lsn)
    if [ -n "$F" ] && [ -n "$D" ] && [ "$(lsn_num "$F")" -ge "$TARGET_N" ] &&
        [ "$(lsn_num "$D")" -ge "$TARGET_N" ]; then
        break
    fi
    sleep 0.2
done
helper_stop
as_postgres "$PGBIN/pg_ctl" -D "$WORK/pg/data" -m immediate -w stop >/dev/null
as_postgres cp -a "$WORK/pg/data" "$WORK/pg/crashed"

# Runs alternate between the two sides, so that a slower moment of the machine (other
# load, a virtual machine's host) does not fall on one side only.
# PostgreSQL: crash recovery from a fresh copy of the crashed data directory.
PG_BEST=""
PG_ALL=""
pg_run() {
    local r=$1
    rm -rf "$WORK/pg/data"
    as_postgres cp -a "$WORK/pg/crashed" "$WORK/pg/data"
    sync
    : >"$WORK/pg/server.log"
    chown postgres:postgres "$WORK/pg/server.log" 2>/dev/null || true
    cluster_start "$WORK/pg"
    cluster_stop "$WORK/pg"
    LINE=$(grep -m1 "redo done at" "$WORK/pg/server.log" || true)
    START_LINE=$(grep -m1 "redo starts at" "$WORK/pg/server.log" || true)
    [ -n "$LINE" ] || { echo "no 'redo done' in the server log:" >&2; cat "$WORK/pg/server.log" >&2; exit 1; }
    EL=$(echo "$LINE" | sed -n 's/.*elapsed: \([0-9.]*\) s.*/\1/p')
    REDO_START=$(echo "$START_LINE" | sed -n 's/.*redo starts at \([0-9A-F]*\/[0-9A-F]*\).*/\1/p')
    REDO_END=$(echo "$LINE" | sed -n 's/.*redo done at \([0-9A-F]*\/[0-9A-F]*\).*/\1/p')
    echo "  PostgreSQL crash recovery run $r: redo $REDO_START..$REDO_END in $EL s" >&2
    PG_ALL="$PG_ALL $EL"
    if [ -z "$PG_BEST" ] || awk "BEGIN{exit !($EL < $PG_BEST)}"; then PG_BEST=$EL; fi
}

# The helper: replay only, over the same range (to the end of its archive), from a fresh
# copy of its data directory like PostgreSQL (the originals were written minutes ago; the
# page cache may have dropped them since).
H_BEST=""
H_ALL=""
H_OUT=""
helper_run() {
    local r=$1
    rm -rf "$WORK/helper-run"
    cp -a "$WORK/helper" "$WORK/helper-run"
    sync
    OUT=$("$HELPER" verify --bench --workers "$WORKERS" --data-dir "$WORK/helper-run" --start "$REDO_START")
    SECS_H=$(echo "$OUT" | sed -n 's/^replay: .* in \([0-9.]*\)s:.*/\1/p')
    echo "  helper replay run $r: $SECS_H s" >&2
    H_ALL="$H_ALL $SECS_H"
    if [ -z "$H_BEST" ] || awk "BEGIN{exit !($SECS_H < $H_BEST)}"; then
        H_BEST=$SECS_H
        H_OUT=$OUT
    fi
}

for r in $(seq 1 "$RUNS"); do
    pg_run "$r"
    helper_run "$r"
done
RECORDS=$(echo "$H_OUT" | sed -n 's/^replay: \([0-9]*\) records.*/\1/p')
MB=$(echo "$H_OUT" | sed -n 's/^replay: [0-9]* records, \([0-9.]*\) MB.*/\1/p')

echo
echo "Redo throughput, pgbench scale $SCALE, ${SECS}s of load, full_page_writes = off"
echo "WAL range $REDO_START .. $REDO_END: $RECORDS records, $MB MB (best of $RUNS runs each)"
printf "%-34s %10s %14s %10s\n" "" "seconds" "records/s" "MB/s"
awk -v w="$WORKERS" -v r="$RECORDS" -v mb="$MB" -v pg="$PG_BEST" -v h="$H_BEST" 'BEGIN {
    printf "%-34s %10.3f %14.0f %10.1f\n", "PostgreSQL 15 crash recovery", pg, r/pg, mb/pg;
    printf "%-34s %10.3f %14.0f %10.1f\n", "redo-helper (Rust redo, " w " workers)", h, r/h, mb/h;
    printf "ratio (PostgreSQL time / helper time): %.2fx\n", pg/h }'
# This VM's timings vary by +-25% from run to run (both sides): the medians say it too.
median() { tr ' ' '\n' | grep . | sort -n | awk '{v[NR]=$1} END {print (NR%2) ? v[(NR+1)/2] : (v[NR/2]+v[NR/2+1])/2}'; }
PG_MED=$(echo "$PG_ALL" | median)
H_MED=$(echo "$H_ALL" | median)
awk -v pg="$PG_MED" -v h="$H_MED" -v pa="$PG_ALL" -v ha="$H_ALL" 'BEGIN {
    printf "runs: PostgreSQL%s s; helper%s s\n", pa, ha;
    printf "ratio of the medians (%.3f s / %.3f s): %.2fx\n", pg, h, pg/h }'
echo "helper cost per record type (top 5; apply time summed over workers, sampled):"
echo "$H_OUT" | sed -n '/^replay: /,/^verify: /p' | grep '^  '
echo "$H_OUT" | grep '^parallel replay: ' || true
echo "$H_OUT" | tail -1
