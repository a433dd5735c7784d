#!/usr/bin/env bash
# WAL per transaction and TPS, same cluster, same run: full_page_writes on, on +
# wal_compression = lz4 and = zstd (what a DBA tries first), off alone (forced, no helper),
# and off with the redo helper attached (guarded switch), for pgbench's TPC-B-like default
# and a TPC-C-like workload with poorly compressible strings (bench/tpcc/). Also reports the
# helper's CPU and lag during its run, and GetPage latency and deltas per read measured by the
# helper itself.
# Knobs: BENCH_SECONDS (20), BENCH_SCALE (pgbench scale, 20), BENCH_WAREHOUSES (4),
# BENCH_CLIENTS (4), BENCH_READS (2000).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=../scripts/pg_cluster.sh
source "$here/../scripts/pg_cluster.sh"
helper_bin=${REDO_HELPER_BIN:-$here/../target/release/redo-helper}
seconds=${BENCH_SECONDS:-20}
scale=${BENCH_SCALE:-20}
warehouses=${BENCH_WAREHOUSES:-4}
clients=${BENCH_CLIENTS:-4}
reads=${BENCH_READS:-2000}

[ -x "$helper_bin" ] || { echo "build the helper first: cargo build --release -p redo-helper" >&2; exit 1; }
work=$(mktemp -d /tmp/fpw_bench.XXXXXX)
chmod 755 "$work"
cdir="$work/cluster"
cleanup() {
    helper_stop
    cluster_remove "$cdir"
    rm -rf "$work"
}
trap cleanup EXIT
log() { printf '[bench-fpw %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

port=$(free_port)
hport=$(free_port)
sql() { "$PGBIN/psql" -X -q -At -h 127.0.0.1 -p "$port" -U postgres -d postgres -v ON_ERROR_STOP=1 "$@"; }
status() { helper_status "$hport"; }

cluster_init "$cdir" "$port"
cluster_conf "$cdir" "wal_level = replica" "shared_preload_libraries = 'fpw_pushdown'" "max_wal_senders = 4" \
    "checkpoint_timeout = 30min" "max_wal_size = 8GB" "fpw_pushdown.autopilot = off"
cluster_start "$cdir"
sql -c "CREATE EXTENSION fpw_pushdown"
log "loading pgbench scale $scale and TPC-C-like with $warehouses warehouses"
"$PGBIN/pgbench" -h 127.0.0.1 -p "$port" -U postgres -i -s "$scale" -q postgres >"$work/init.log" 2>&1
sql -v warehouses="$warehouses" -f "$here/tpcc/schema.sql" >/dev/null

# workload NAME → pgbench arguments
workload_args() {
    case $1 in
    tpcb) echo "-b tpcb-like" ;;
    tpcc) echo "-D warehouses=$warehouses -f $here/tpcc/new_order.sql@45 -f $here/tpcc/payment.sql@43" ;;
    esac
}

# run WORKLOAD MODE → prints "bytes_per_txn tps"
run() {
    local w=$1 mode=$2 lsn0 lsn1 out
    sql -c "CHECKPOINT" >/dev/null
    lsn0=$(sql -c "SELECT pg_current_wal_lsn()")
    log "$w: $mode (${seconds}s)"
    # shellcheck disable=SC2046
    out=$("$PGBIN/pgbench" -h 127.0.0.1 -p "$port" -U postgres -n -c "$clients" -j "$clients" -T "$seconds" $(workload_args "$w") postgres 2>&1)
    lsn1=$(sql -c "SELECT pg_current_wal_lsn()")
    local txns tps bytes
    txns=$(echo "$out" | sed -n 's/^number of transactions actually processed: \([0-9]*\).*/\1/p')
    tps=$(echo "$out" | sed -n 's/^tps = \([0-9]*\.[0-9]\).* (without initial connection time)/\1/p')
    bytes=$(sql -c "SELECT '$lsn1'::pg_lsn - '$lsn0'::pg_lsn")
    awk -v b="$bytes" -v t="$txns" -v tps="$tps" 'BEGIN{printf "%.0f %s\n", b/t, tps}'
}

set_compression() { sql -c "ALTER SYSTEM SET wal_compression = '$1'" -c "SELECT pg_reload_conf()" >/dev/null; sleep 0.3; }

declare -A B T CPU
for w in tpcb tpcc; do
    # Warm-up (not recorded): the first run after loading also sets hint bits and fills caches.
    run $w "warm-up" >/dev/null
    # FPW off alone: no helper yet, so the switch must be forced.
    sql -c "SELECT fpw_pushdown.disable_full_page_writes(force => true)" >/dev/null 2>&1
    read -r "B[$w,off]" "T[$w,off]" < <(run $w "full_page_writes=off (no helper)")
    sql -c "SELECT fpw_pushdown.enable_full_page_writes()" >/dev/null
    read -r "B[$w,on]" "T[$w,on]" < <(run $w "full_page_writes=on")
    set_compression lz4
    read -r "B[$w,lz4]" "T[$w,lz4]" < <(run $w "full_page_writes=on, wal_compression=lz4")
    set_compression zstd
    read -r "B[$w,zstd]" "T[$w,zstd]" < <(run $w "full_page_writes=on, wal_compression=zstd")
    set_compression off
done

log "starting the redo helper"
helper_start "$helper_bin" "$work/helper" "$port" "$hport" "$work/helper.log" --image-threshold 16
sql -c "ALTER SYSTEM SET fpw_pushdown.helper_address = '127.0.0.1:$hport'" -c "SELECT pg_reload_conf()" >/dev/null
sleep 0.3
sql -c "SELECT fpw_pushdown.disable_full_page_writes()" >/dev/null
hz=$(getconf CLK_TCK)
ticks() { awk '{print $14 + $15}' "/proc/$HELPER_PID/stat"; }
for w in tpcb tpcc; do
    t0=$(ticks)
    s0=$(date +%s.%N)
    read -r "B[$w,helper]" "T[$w,helper]" < <(run $w "full_page_writes=off + redo helper")
    s1=$(date +%s.%N)
    CPU[$w]=$(awk -v a="$t0" -v b="$(ticks)" -v hz="$hz" -v e="$(awk -v a="$s0" -v b="$s1" 'BEGIN{print b-a}')" 'BEGIN{printf "%.2f", (b-a)/hz/e}')
done
sql -c "SELECT fpw_pushdown.enable_full_page_writes()" >/dev/null

# GetPage: hot and random pgbench pages, read at the current LSN; latency measured in the helper.
db=$(sql -c "SELECT oid FROM pg_database WHERE datname = 'postgres'")
acc=$(sql -c "SELECT pg_relation_filenode('pgbench_accounts')")
blocks=$(sql -c "SELECT pg_relation_size('pgbench_accounts') / 8192")
br=$(sql -c "SELECT pg_relation_filenode('pgbench_branches')")
errors=0
for i in $(seq 1 "$reads"); do
    if [ $((i % 10)) = 0 ]; then p="1663/$db/$br/main/0"; else p="1663/$db/$acc/main/$(( (RANDOM * 32768 + RANDOM) % blocks ))"; fi
    [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$hport/page/$p")" = 200 ] || errors=$((errors + 1))
done
st=$(status)

pct() { awk -v a="$1" -v b="$2" 'BEGIN{printf "%.1f%%", (1 - a/b) * 100}'; }
for w in tpcb tpcc; do
    echo
    echo "workload: $w ($clients clients, ${seconds}s per run; pgbench scale $scale / $warehouses warehouses)"
    printf '%-40s %12s %10s\n' mode "WAL B/txn" TPS
    for m in on lz4 zstd off helper; do
        case $m in
        on) label="full_page_writes=on" ;;
        lz4) label="on + wal_compression=lz4" ;;
        zstd) label="on + wal_compression=zstd" ;;
        off) label="off alone (forced)" ;;
        helper) label="off + redo helper" ;;
        esac
        printf '%-40s %12s %10s\n' "$label" "${B[$w,$m]}" "${T[$w,$m]}"
    done
    printf '%-56s %s\n' "WAL/txn reduction, helper vs FPW on (target >= 91%)" "$(pct "${B[$w,helper]}" "${B[$w,on]}")" \
        "WAL/txn below FPW on + zstd (target >= 40%)" "$(pct "${B[$w,helper]}" "${B[$w,zstd]}")" \
        "TPS with helper / TPS off alone (target >= 97%)" "$(awk -v a="${T[$w,helper]}" -v b="${T[$w,off]}" 'BEGIN{printf "%.1f%%", a/b*100}')" \
        "helper CPU during its run (cores)" "${CPU[$w]}"
done
echo
printf '%-56s %s\n' \
    "GetPage reads (errors)" "$reads ($errors)" \
    "GetPage latency in the helper p50 / p99 (us)" "$(echo "$st" | json_field p50 getpage_latency_us) / $(echo "$st" | json_field p99 getpage_latency_us)" \
    "deltas replayed per read p50 / p99 / max (threshold 16)" "$(echo "$st" | json_field p50 deltas_per_read) / $(echo "$st" | json_field p99 deltas_per_read) / $(echo "$st" | json_field max deltas_per_read)" \
    "images generated / queue depth" "$(echo "$st" | json_field images_generated) / $(echo "$st" | json_field imagegen_queue_depth)"
