#!/usr/bin/env bash
# Decode throughput: `redo-helper waldump --stats` vs `pg_waldump --stats` (PostgreSQL 15)
# over the same WAL segments in the same run.
#
#   bench/decode.sh                 # ~256 MB of WAL (default, a few minutes on 2 cores)
#   WAL_MB=1024 bench/decode.sh     # ~1 GB of WAL, the size the issue asks RSS for
#   KEEP=1 bench/decode.sh          # keep the generated cluster (path printed)
#
# Generates WAL on a throwaway cluster (pgbench: initial load, then TPC-B-like
# transactions until WAL_MB is reached; full_page_writes on, no compression), stops it,
# then times each tool RUNS times (warm page cache) and reports the best run: MB/s,
# records/s, the speed ratio and peak RSS (/usr/bin/time -v). Needs root or the postgres
# user, PostgreSQL 15 server binaries and GNU time (apt package `time`).
set -euo pipefail

WAL_MB=${WAL_MB:-256}
RUNS=${RUNS:-3}
PGBIN=${PGBIN:-/usr/lib/postgresql/15/bin}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target-helper}
HELPER=$CARGO_TARGET_DIR/release/redo-helper
OUT_DIR=$ROOT/bench/out
mkdir -p "$OUT_DIR"
REPORT=$OUT_DIR/decode-$(date -u +%Y%m%dT%H%M%SZ).txt

[ -x /usr/bin/time ] || { echo "decode.sh: /usr/bin/time missing (apt-get install time)" >&2; exit 1; }

as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }

echo "building redo-helper (release)..." >&2
(cd "$ROOT" && cargo build -q -p redo-helper --release)

WORK=$(mktemp -d /tmp/redo-helper-bench.XXXXXX)
[ "$(id -u)" = 0 ] && chown postgres:postgres "$WORK"
PORT=$((20000 + RANDOM % 20000))
cleanup() {
    as_pg "$PGBIN/pg_ctl" -D "$WORK/data" -m immediate -w stop >/dev/null 2>&1 || true
    if [ "${KEEP:-0}" = 1 ]; then echo "kept $WORK" >&2; else rm -rf "$WORK"; fi
}
trap cleanup EXIT

as_pg "$PGBIN/initdb" -A trust -U postgres --no-sync -D "$WORK/data" >/dev/null
cat >> "$WORK/data/postgresql.conf" <<CONF
listen_addresses = ''
unix_socket_directories = '$WORK'
port = $PORT
fsync = off
synchronous_commit = off
max_wal_size = 64GB
wal_keep_size = 64GB
checkpoint_timeout = 30s
CONF
as_pg "$PGBIN/pg_ctl" -D "$WORK/data" -l "$WORK/log" -w start >/dev/null
PSQL=("$PGBIN/psql" -X -q -A -t -h "$WORK" -p "$PORT" -d postgres)
wal_bytes() { as_pg "${PSQL[@]}" -c "SELECT pg_wal_lsn_diff(pg_current_wal_insert_lsn(), '0/1000000')::bigint"; }

echo "generating ~${WAL_MB} MB of WAL..." >&2
SCALE=$(( WAL_MB / 32 > 1 ? WAL_MB / 32 : 1 ))
as_pg "$PGBIN/pgbench" -q -i -s "$SCALE" -h "$WORK" -p "$PORT" postgres >/dev/null 2>&1
while [ "$(wal_bytes)" -lt $((WAL_MB * 1024 * 1024)) ]; do
    as_pg "$PGBIN/pgbench" -n -c 2 -j 2 -T 10 -h "$WORK" -p "$PORT" postgres >/dev/null 2>&1
done
as_pg "$PGBIN/pg_ctl" -D "$WORK/data" -m fast -w stop >/dev/null
WAL=$WORK/data/pg_wal

# time_run TOOL... -> prints "seconds max_rss_kb"; stats output goes to $WORK/stats.out
time_run() {
    /usr/bin/time -v "$@" > "$WORK/stats.out" 2> "$WORK/time.err" || true
    local wall rss
    wall=$(awk -F': ' '/Elapsed \(wall clock\)/ {print $2}' "$WORK/time.err")
    rss=$(awk -F': ' '/Maximum resident set size/ {print $2}' "$WORK/time.err")
    # wall is [h:]m:ss.ss
    echo "$wall" | awk -F: -v rss="$rss" '{ s = 0; for (i = 1; i <= NF; i++) s = s * 60 + $i; printf "%.3f %s\n", s, rss }'
}

best() { # best TOOL... -> "seconds rss" of the fastest of RUNS runs
    local b="" r
    for _ in $(seq "$RUNS"); do
        r=$(time_run "$@")
        if [ -z "$b" ] || awk -v a="${r%% *}" -v c="${b%% *}" 'BEGIN { exit !(a < c) }'; then b=$r; fi
    done
    echo "$b"
}

PG=$(best "$PGBIN/pg_waldump" -p "$WAL" -s 0/1000000 --stats)
cp "$WORK/stats.out" "$WORK/pg.stats"
OURS=$(best "$HELPER" waldump --path "$WAL" --start 0/1000000 --stats)
cp "$WORK/stats.out" "$WORK/ours.stats"

if ! diff -q "$WORK/pg.stats" "$WORK/ours.stats" >/dev/null; then
    echo "decode.sh: statistics differ between pg_waldump and redo-helper:" >&2
    diff "$WORK/pg.stats" "$WORK/ours.stats" >&2 || true
    exit 1
fi

RANGE=$(head -1 "$WORK/ours.stats")
RECORDS=$(awk '/^Total/ {print $2}' "$WORK/ours.stats")
lsn() { local hi=${1%/*} lo=${1#*/}; echo $(( (16#$hi << 32) + 16#$lo )); }
START=$(echo "$RANGE" | awk '{print $4}')
END=$(echo "$RANGE" | awk '{print $6}' | tr -d ':')
BYTES=$(( $(lsn "$END") - $(lsn "$START") ))

{
    echo "decode benchmark $(date -u +%FT%TZ), $(nproc) cores, $(uname -r)"
    echo "WAL: $WAL_MB MB requested; $RANGE ($BYTES bytes, $RECORDS records)"
    echo "commands (best of $RUNS, warm cache):"
    echo "  pg_waldump -p WAL -s 0/1000000 --stats"
    echo "  redo-helper waldump --path WAL --start 0/1000000 --stats"
    awk -v b="$BYTES" -v n="$RECORDS" -v pg="$PG" -v us="$OURS" 'BEGIN {
        split(pg, p, " "); split(us, o, " ");
        printf "%-12s %10s %12s %14s %14s\n", "tool", "seconds", "MB/s", "records/s", "peak RSS MB";
        printf "%-12s %10.3f %12.1f %14.0f %14.1f\n", "pg_waldump", p[1], b / 1048576 / p[1], n / p[1], p[2] / 1024;
        printf "%-12s %10.3f %12.1f %14.0f %14.1f\n", "redo-helper", o[1], b / 1048576 / o[1], n / o[1], o[2] / 1024;
        printf "speed ratio redo-helper / pg_waldump: %.2fx\n", p[1] / o[1];
    }'
} | tee "$REPORT"
echo "report: $REPORT" >&2
