#!/usr/bin/env bash
# Redo throughput: the helper's Rust redo (`redo-helper verify --bench`) against
# PostgreSQL 15's own replay (crash recovery) of the same WAL range, in the same run.
#
#   bench/redo.sh                  # pgbench scale 10, 30 s of TPC-B-like load (~3 minutes)
#   SCALE=20 SECS=60 bench/redo.sh
#   WORKLOAD=index bench/redo.sh   # index-heavy: bench/redo-index/ (~5 minutes)
#   WORKLOAD=index GIN=0 bench/redo.sh   # the same without the GIN indexes
#   KEEP=1 bench/redo.sh           # keep the work directory (path printed)
#   WORKERS=1 bench/redo.sh        # helper replay threads (default 2)
#
# Workloads (WORKLOAD):
#   pgbench (default): pgbench -i -s SCALE, then SECS seconds of TPC-B-like transactions
#     from 2 clients.
#   index: bench/redo-index/schema.sql (a table with GIN indexes on jsonb, tsvector, int[]
#     and pg_trgm, BRIN minmax, minmax-multi, bloom and inclusion indexes, GiST, SP-GiST and
#     hash indexes, a contrib bloom index; ROWS initial rows), then bench/redo-index/txn.sql (inserts, updates of indexed
#     columns, deletes) from 2 clients for SECS seconds in two halves, each followed by a
#     VACUUM (GIN pending-list cleanup and vacuum records, BRIN summaries of new ranges).
#     GIN=0 leaves the GIN indexes out. The helper calls pages it cannot replay unreadable
#     and skips their records: then its time is not comparable, and the script says so.
#
# Steps: a throwaway cluster with full_page_writes = off (the mode the helper serves) and
# checkpoints pushed out of the way; the workload's initial load; `redo-helper run`
# bootstraps (BASE_BACKUP: its checkpoint is the last one before the crash, so crash
# recovery starts at the backup start, where the helper's replay starts too); the workload
# for SECS seconds; the helper catches up and stops; the server is killed (immediate stop).
# Then:
#   - PostgreSQL: crash recovery from a copy of the crashed data directory, RUNS times;
#     the time is the "redo done ... elapsed" of the startup process (the redo loop only).
#     Its runs alternate with the helper's.
#   - helper: `redo-helper verify --bench` over [redo start, end of WAL] (replay only: base
#     pages + WAL from the store, no comparisons), RUNS times, each from a fresh copy of the
#     helper's data directory as PostgreSQL's runs are; the time is the replay loop
#     (opening and reading the WAL included).
# Reports records/s and MB of WAL/s for both, the ratio, records per resource manager and
# the helper's top 5 record types by cost. Needs root (or the postgres user) and
# PostgreSQL 15 server binaries (and contrib for WORKLOAD=index).
set -euo pipefail

WORKLOAD=${WORKLOAD:-pgbench}
SCALE=${SCALE:-10}
ROWS=${ROWS:-50000}
GIN=${GIN:-1}
case "$WORKLOAD" in
    pgbench) SECS=${SECS:-30} ;;
    index) SECS=${SECS:-60} ;;
    *)
        echo "WORKLOAD must be pgbench or index, not '$WORKLOAD'" >&2
        exit 2
        ;;
esac
case "$GIN" in 0 | 1) ;; *)
    echo "GIN must be 0 or 1, not '$GIN'" >&2
    exit 2
    ;;
esac
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

PGBENCH=("$PGBIN/pgbench" -h 127.0.0.1 -p "$PORT" -U postgres)

# The workload's initial load, before the helper's base backup.
load_initial() {
    case "$WORKLOAD" in
    pgbench)
        echo "pgbench -i -s $SCALE..." >&2
        "${PGBENCH[@]}" -q -i -s "$SCALE" postgres >/dev/null 2>&1
        ;;
    index)
        echo "bench/redo-index/schema.sql: $ROWS rows, GIN indexes $([ "$GIN" = 1 ] && echo on || echo off)..." >&2
        "${PSQL[@]}" -v ON_ERROR_STOP=1 -v rows="$ROWS" -v gin="$GIN" \
            -f "$ROOT/bench/redo-index/schema.sql" >/dev/null
        sql "SELECT 'table and indexes: ' || pg_size_pretty(pg_total_relation_size('docs'))" >&2
        ;;
    esac
}

# The load whose WAL both sides replay.
load_run() {
    case "$WORKLOAD" in
    pgbench)
        echo "pgbench -T $SECS -c 2 (full_page_writes = off)..." >&2
        "${PGBENCH[@]}" -n -T "$SECS" -c 2 -j 2 postgres >"$WORK/pgbench.log" 2>&1
        ;;
    index)
        local half=$(((SECS + 1) / 2)) part
        for part in 1 2; do
            echo "index workload part $part/2: bench/redo-index/txn.sql, -T $half -c 2 (full_page_writes = off)..." >&2
            "${PGBENCH[@]}" -n -T "$half" -c 2 -j 2 -f "$ROOT/bench/redo-index/txn.sql" postgres \
                >>"$WORK/pgbench.log" 2>&1 || { tail -n 20 "$WORK/pgbench.log" >&2; return 1; }
            grep '^tps' "$WORK/pgbench.log" | tail -1 | sed 's/^/  /' >&2
            echo "  VACUUM docs..." >&2
            sql "VACUUM docs"
        done
        sql "SELECT '  WAL since the base backup: ' || pg_size_pretty(pg_wal_lsn_diff(pg_current_wal_lsn(), '$BACKUP_LSN'))" >&2
        ;;
    esac
}

load_initial
echo "bootstrapping the helper..." >&2
BACKUP_LSN=$(sql "SELECT pg_current_wal_lsn()")
helper_start "$HELPER" "$WORK/helper" "$PORT" "$HPORT" "$WORK/helper.log"
load_run
TARGET=$(sql "SELECT pg_current_wal_flush_lsn()")
TARGET_N=$(lsn_num "$TARGET")
echo "waiting for the helper to archive and decode up to $TARGET..." >&2
CAUGHT_UP=0
# Up to 10 minutes: hundreds of MB of WAL (WORKLOAD=index) take the helper a while to index.
for _ in $(seq 1 3000); do
    F=$(helper_status "$HPORT" | json_field flush_lsn)
    D=$(helper_status "$HPORT" | json_field decoded_lsn)
    if [ -n "$F" ] && [ -n "$D" ] && [ "$(lsn_num "$F")" -ge "$TARGET_N" ] &&
        [ "$(lsn_num "$D")" -ge "$TARGET_N" ]; then
        CAUGHT_UP=1
        break
    fi
    sleep 0.2
done
if [ "$CAUGHT_UP" != 1 ]; then
    # Replaying less WAL than PostgreSQL would flatter the helper.
    echo "the helper did not catch up with $TARGET (flushed ${F:-?}, decoded ${D:-?}); its log:" >&2
    tail -n 20 "$WORK/helper.log" >&2
    exit 1
fi
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
case "$WORKLOAD" in
pgbench) echo "Redo throughput, pgbench scale $SCALE, ${SECS}s of load, full_page_writes = off" ;;
index) echo "Redo throughput, index workload (bench/redo-index/, $ROWS initial rows, GIN indexes $([ "$GIN" = 1 ] && echo on || echo off)), ${SECS}s of load, full_page_writes = off" ;;
esac
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
# Records per resource manager, from the helper's "record types:" line ("Heap/INSERT 12, ...").
echo "$H_OUT" | sed -n 's/^record types: //p' | tr ',' '\n' | awk '
    { split($1, t, "/"); n[t[1]] += $2; all += $2 }
    END { for (r in n) printf "%s %d %.1f\n", r, n[r], 100 * n[r] / all }' |
    sort -k2,2nr | awk '{ s = s sep $1 " " $2 " (" $3 "%)"; sep = ", " } END { print "records by resource manager: " s }'
echo "helper cost per record type (top 5; apply time summed over workers, sampled) and of base page loads:"
echo "$H_OUT" | sed -n '/^replay: /,/^verify: /p' | grep '^  '
echo "$H_OUT" | grep '^parallel replay: ' || true
echo "$H_OUT" | tail -1
# Pages of access methods the Rust redo does not replay (GIN until it lands) are unreadable:
# the helper skips their records, so its time covers less work than PostgreSQL's.
UNREADABLE=$(echo "$H_OUT" | tail -1 | sed -n 's/.*unreadable pages \([0-9]*\).*/\1/p')
if [ "${UNREADABLE:-0}" != 0 ]; then
    echo "$H_OUT" | grep '^first unreadable page: ' || true
    echo "WARNING: $UNREADABLE pages unreadable to the helper (records it does not replay):" \
        "the ratio above is not a like-for-like comparison."
fi
