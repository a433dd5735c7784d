#!/usr/bin/env bash
# Decode throughput: `redo-helper waldump --stats` vs `pg_waldump --stats` (PostgreSQL 15)
# over the same WAL range in the same run, at several sizes.
#
#   bench/decode.sh                       # 64 and 256 MB of WAL (default, a few minutes)
#   WAL_MB="64 256 1024" bench/decode.sh  # up to 1 GB (the size the issue asks RSS for)
#   RUNS=5 bench/decode.sh                # rounds per size (default 3)
#   KEEP=1 bench/decode.sh                # keep the generated cluster (path printed)
#   WAL_DIR=/path/pg_wal bench/decode.sh  # measure existing WAL from 0/1000000 (no cluster)
#
# Generates WAL once, for the largest size, on a throwaway cluster (pgbench: initial load,
# then TPC-B-like transactions; full_page_writes on, no compression), stops it, then for
# each size reads the range [0/1000000, 0/1000000 + size) with both tools (`--end`), after
# checking that they print the same statistics. Rounds alternate the tools (pg_waldump,
# then redo-helper, size by size), RUNS rounds, warm page cache; per size it reports the
# best run of each (MB/s, records/s, peak RSS), the ratio of the bests, and
# min/median/max of the per-round ratios (pg_waldump time / redo-helper time of the same
# round). Times in microseconds (python3 around fork and wait4). Needs root or the postgres
# user, PostgreSQL 15 server binaries and python3.
set -euo pipefail

WAL_MB=${WAL_MB:-"64 256"}
RUNS=${RUNS:-3}
PGBIN=${PGBIN:-/usr/lib/postgresql/15/bin}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target-helper}
HELPER=$CARGO_TARGET_DIR/release/redo-helper
OUT_DIR=$ROOT/bench/out
mkdir -p "$OUT_DIR"
REPORT=$OUT_DIR/decode-$(date -u +%Y%m%dT%H%M%SZ).txt


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

for mb in $WAL_MB; do
    case "$mb" in '' | *[!0-9]*) echo "WAL_MB must list sizes in MB, not '$mb'" >&2; exit 2 ;; esac
done
MAX_MB=$(printf '%s\n' $WAL_MB | sort -n | tail -1)
if [ -n "${WAL_DIR:-}" ]; then
    WAL=$WAL_DIR
else
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

    echo "generating ~${MAX_MB} MB of WAL..." >&2
    SCALE=$(( MAX_MB / 32 > 1 ? MAX_MB / 32 : 1 ))
    as_pg "$PGBIN/pgbench" -q -i -s "$SCALE" -h "$WORK" -p "$PORT" postgres >/dev/null 2>&1
    # A little more than the largest size: its range must end inside written WAL.
    while [ "$(wal_bytes)" -lt $(((MAX_MB + 16) * 1024 * 1024)) ]; do
        as_pg "$PGBIN/pgbench" -n -c 2 -j 2 -T 10 -h "$WORK" -p "$PORT" postgres >/dev/null 2>&1
    done
    as_pg "$PGBIN/pg_ctl" -D "$WORK/data" -m fast -w stop >/dev/null
    WAL=$WORK/data/pg_wal
fi

# time_run OUT TOOL... -> prints "wall_seconds max_rss_kb cpu_seconds" (cpu: user + system,
# all threads); the tool's output goes to OUT. Measured by python3 around fork/exec and
# wait4: microsecond wall time and the child's rusage (GNU time prints 10 ms steps, too
# coarse at 64 MB, where a run takes ~0.03 s).
time_run() {
    local out=$1
    shift
    python3 - "$out" "$@" <<'PY'
import os, sys, time
out = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
t0 = time.perf_counter()
pid = os.fork()
if pid == 0:
    os.dup2(out, 1)
    try:
        os.execv(sys.argv[2], sys.argv[2:])
    finally:
        os._exit(127)
_, _, ru = os.wait4(pid, 0)
wall = time.perf_counter() - t0
print("%.4f %d %.4f" % (wall, ru.ru_maxrss, ru.ru_utime + ru.ru_stime))
PY
}

lsn_hex() { printf '%X/%X' $(($1 >> 32)) $(($1 & 0xFFFFFFFF)); }
START_N=$((16#1000000))
end_of() { lsn_hex $((START_N + $1 * 1024 * 1024)); }

# Parity first: both tools print the same statistics over each range.
for mb in $WAL_MB; do
    END=$(end_of "$mb")
    "$PGBIN/pg_waldump" -p "$WAL" -s 0/1000000 -e "$END" --stats >"$WORK/pg.$mb.stats"
    "$HELPER" waldump --path "$WAL" --start 0/1000000 --end "$END" --stats >"$WORK/ours.$mb.stats"
    if ! diff -q "$WORK/pg.$mb.stats" "$WORK/ours.$mb.stats" >/dev/null; then
        echo "decode.sh: statistics differ between pg_waldump and redo-helper ($mb MB):" >&2
        diff "$WORK/pg.$mb.stats" "$WORK/ours.$mb.stats" >&2 || true
        exit 1
    fi
done

# Rounds: per size, pg_waldump then redo-helper, so that a slower moment of the (shared)
# machine falls on both. Per size, a line per round: "pg_wall pg_rss pg_cpu ours_wall
# ours_rss ours_cpu".
declare -A ROUNDS
for r in $(seq "$RUNS"); do
    for mb in $WAL_MB; do
        END=$(end_of "$mb")
        PG=$(time_run "$WORK/stats.out" "$PGBIN/pg_waldump" -p "$WAL" -s 0/1000000 -e "$END" --stats)
        OURS=$(time_run "$WORK/stats.out" "$HELPER" waldump --path "$WAL" --start 0/1000000 --end "$END" --stats)
        echo "  round $r, $mb MB: pg_waldump $(echo "$PG" | awk '{print $1 " s (CPU " $3 " s)"}')," \
            "redo-helper $(echo "$OURS" | awk '{print $1 " s (CPU " $3 " s)"}')" >&2
        ROUNDS[$mb]="${ROUNDS[$mb]:-}$PG $OURS"$'\n'
    done
done

lsn() { local hi=${1%/*} lo=${1#*/}; echo $(((16#$hi << 32) + 16#$lo)); }
{
    echo "decode benchmark $(date -u +%FT%TZ), $(nproc) cores, $(uname -r), load average $(cut -d' ' -f1-3 /proc/loadavg)"
    echo "commands ($RUNS alternating rounds per size, warm cache):"
    echo "  pg_waldump -p WAL -s 0/1000000 -e END --stats"
    echo "  redo-helper waldump --path WAL --start 0/1000000 --end END --stats"
    echo "wall: elapsed time; CPU: user + system time of all threads (the measure that holds"
    echo "on a busy machine, where wall time is mostly waiting for a core)."
    printf "%-7s %-12s %9s %8s %8s %9s %11s %7s\n" "size" "tool" "records" "wall s" "CPU s" "MB/CPU s" "rec/CPU s" "RSS MB"
    for mb in $WAL_MB; do
        RANGE=$(head -1 "$WORK/ours.$mb.stats")
        RECORDS=$(awk '/^Total/ {print $2}' "$WORK/ours.$mb.stats")
        S=$(echo "$RANGE" | awk '{print $4}')
        E=$(echo "$RANGE" | awk '{print $6}' | tr -d ':')
        BYTES=$(($(lsn "$E") - $(lsn "$S")))
        printf '%s' "${ROUNDS[$mb]}" | awk -v mb="$mb" -v b="$BYTES" -v n="$RECORDS" '
            function sort(a, k,    i, j, t) { for (i = 1; i <= k; i++) for (j = i + 1; j <= k; j++) if (a[j] < a[i]) { t = a[i]; a[i] = a[j]; a[j] = t } }
            function med(a, k) { return (k % 2) ? a[(k + 1) / 2] : (a[k / 2] + a[k / 2 + 1]) / 2 }
            NF == 6 {
                k++; wr[k] = $1 / $4; cr[k] = ($6 > 0) ? $3 / $6 : 0;
                if (!pw || $1 < pw) pw = $1; if (!ow || $4 < ow) ow = $4;
                if (!pc || $3 < pc) pc = $3; if (!oc || $6 < oc) oc = $6;
                if ($2 > prss) prss = $2; if ($5 > orss) orss = $5;
            }
            END {
                sort(wr, k); sort(cr, k);
                printf "%-7s %-12s %9d %8.3f %8.3f %9.1f %11.0f %7.1f\n", mb " MB", "pg_waldump", n, pw, pc, b / 1048576 / pc, n / pc, prss / 1024;
                printf "%-7s %-12s %9d %8.3f %8.3f %9.1f %11.0f %7.1f\n", mb " MB", "redo-helper", n, ow, oc, b / 1048576 / oc, n / oc, orss / 1024;
                printf "%-7s ratio pg_waldump / redo-helper, per round min/median/max: CPU %.2f / %.2f / %.2f, wall %.2f / %.2f / %.2f\n", mb " MB", cr[1], med(cr, k), cr[k], wr[1], med(wr, k), wr[k];
            }'
    done
} | tee "$REPORT"
echo "report: $REPORT" >&2
