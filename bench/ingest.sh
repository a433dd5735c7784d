#!/usr/bin/env bash
# Ingestion benchmark: pgbench at peak load with full_page_writes off (switched live by the
# extension, guarded by the redo helper itself). Reports the helper's ingest rate against
# the compute's WAL rate, the helper's lag (max and p99 of 0.25 s samples) and its CPU use.
# Targets (issue 5): lag below 16 MB, less than one core.
# Knobs: BENCH_SECONDS (30), BENCH_SCALE (20), BENCH_CLIENTS (4).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=../scripts/pg_cluster.sh
source "$here/../scripts/pg_cluster.sh"
helper_bin=${REDO_HELPER_BIN:-$here/../target/release/redo-helper}
seconds=${BENCH_SECONDS:-30}
scale=${BENCH_SCALE:-20}
clients=${BENCH_CLIENTS:-4}

[ -x "$helper_bin" ] || { echo "build the helper first: cargo build --release -p redo-helper" >&2; exit 1; }
work=$(mktemp -d /tmp/fpw_bench_ingest.XXXXXX)
chmod 755 "$work"
cdir="$work/cluster"
cleanup() {
    helper_stop
    cluster_remove "$cdir"
    rm -rf "$work"
}
trap cleanup EXIT
log() { printf '[bench-ingest %s] %s\n' "$(date +%H:%M:%S)" "$*"; }

port=$(free_port)
hport=$(free_port)
sql() { "$PGBIN/psql" -X -q -At -h 127.0.0.1 -p "$port" -U postgres -d postgres -v ON_ERROR_STOP=1 -c "$1"; }
status() { helper_status "$hport"; }

cluster_init "$cdir" "$port"
cluster_conf "$cdir" "wal_level = replica" "shared_preload_libraries = 'fpw_pushdown'" "max_wal_senders = 4" \
    "checkpoint_timeout = 30min" "max_wal_size = 4GB"
cluster_start "$cdir"
sql "CREATE EXTENSION fpw_pushdown"
log "pgbench -i -s $scale"
"$PGBIN/pgbench" -h 127.0.0.1 -p "$port" -U postgres -i -s "$scale" -q postgres >"$work/init.log" 2>&1

log "starting the redo helper (bootstrap by BASE_BACKUP)"
helper_start "$helper_bin" "$work/helper" "$port" "$hport" "$work/helper.log"
off_lsn=$(sql "SELECT fpw_pushdown.disable_full_page_writes()")
log "full_page_writes off at $off_lsn (guard satisfied by the helper's slot)"
sql "CHECKPOINT" >/dev/null

cpu_ticks() { awk '{print $14 + $15}' "/proc/$HELPER_PID/stat"; }
hz=$(getconf CLK_TCK)
lsn0=$(sql "SELECT pg_current_wal_lsn()")
recv0=$(status | json_field wal_bytes_received)
ticks0=$(cpu_ticks)
t0=$(date +%s.%N)
log "pgbench -c $clients -T $seconds (FPW off, helper attached)"
"$PGBIN/pgbench" -h 127.0.0.1 -p "$port" -U postgres -n -c "$clients" -j "$clients" -T "$seconds" postgres >"$work/run.log" 2>&1 &
bench_pid=$!
: >"$work/lag.txt"
: >"$work/slot_lag.txt"
while kill -0 "$bench_pid" 2>/dev/null; do
    status | json_field lag_bytes >>"$work/lag.txt"
    # The compute's view: WAL written minus what the helper confirmed flushed.
    sql "SELECT (pg_current_wal_lsn() - restart_lsn)::bigint FROM pg_replication_slots WHERE slot_name = 'fpw_pushdown'" >>"$work/slot_lag.txt"
    sleep 0.25
done
wait "$bench_pid"
t1=$(date +%s.%N)
lsn1=$(sql "SELECT pg_current_wal_lsn()")
ticks1=$(cpu_ticks)
# Let the helper catch up, then read its counters.
for _ in $(seq 1 200); do
    [ "$(status | json_field lag_bytes)" = 0 ] && break
    sleep 0.1
done
recv1=$(status | json_field wal_bytes_received)
sql "SELECT fpw_pushdown.enable_full_page_writes()" >/dev/null

elapsed=$(awk -v a="$t0" -v b="$t1" 'BEGIN{print b-a}')
wal_bytes=$(sql "SELECT '$lsn1'::pg_lsn - '$lsn0'::pg_lsn")
tps=$(sed -n 's/^tps = \([0-9.]*\) (without initial connection time)/\1/p' "$work/run.log")
# max and p99 of a column of numbers
max_p99() { sort -n "$1" | awk '{v[NR]=$1} END{i=int(NR*0.99+0.999); if(i<1)i=1; print v[NR], v[i]}'; }
read -r max_lag p99_lag < <(max_p99 "$work/slot_lag.txt")
read -r max_helper_lag _ < <(max_p99 "$work/lag.txt")
n=$(wc -l <"$work/slot_lag.txt")
cores=$(awk -v a="$ticks0" -v b="$ticks1" -v hz="$hz" -v e="$elapsed" 'BEGIN{printf "%.2f", (b-a)/hz/e}')
compute_rate=$(awk -v b="$wal_bytes" -v e="$elapsed" 'BEGIN{printf "%.1f", b/e/1048576}')
helper_rate=$(awk -v a="$recv0" -v b="$recv1" -v e="$elapsed" 'BEGIN{printf "%.1f", (b-a)/e/1048576}')
ratio=$(awk -v a="$recv0" -v b="$recv1" -v w="$wal_bytes" 'BEGIN{printf "%.3f", (b-a)/w}')

echo
echo "ingest benchmark: pgbench scale $scale, $clients clients, ${seconds}s, full_page_writes=off, helper attached"
printf '%-44s %s\n' "pgbench TPS" "$tps" \
    "compute WAL rate (MB/s)" "$compute_rate" \
    "helper ingest rate (MB/s)" "$helper_rate" \
    "helper bytes / compute bytes" "$ratio" \
    "slot lag max (bytes; target < 16 MB)" "$max_lag" \
    "slot lag p99 (bytes)" "$p99_lag" \
    "helper-reported lag max (bytes)" "$max_helper_lag" \
    "helper CPU (cores; target < 1)" "$cores" \
    "lag samples" "$n"
awk -v m="$max_lag" -v c="$cores" 'BEGIN{ if (m >= 16*1048576 || c >= 1) { print "TARGET MISSED"; exit 1 } else print "targets met" }'
