#!/usr/bin/env bash
# `make demo`: a throwaway PostgreSQL 15 cluster with fpw_pushdown preloaded; pgbench with
# full_page_writes on, on + wal_compression=zstd (what a DBA tries first), and off — switched
# live by the extension while a pg_receivewal slot holder stands in for the redo helper.
# Prints WAL bytes per transaction, TPS, FPIs and the switch LSNs as a table, then stops
# everything it started.
# Knobs: DEMO_SECONDS (per run, default 20), DEMO_SCALE (pgbench scale, default 10), DEMO_CLIENTS (2).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=../scripts/pg_cluster.sh
source "$here/../scripts/pg_cluster.sh"
seconds=${DEMO_SECONDS:-20}
scale=${DEMO_SCALE:-10}
clients=${DEMO_CLIENTS:-2}

work=$(mktemp -d /tmp/fpw_demo.XXXXXX)
chmod 755 "$work"
cdir="$work/cluster"
recv_pid=""
cleanup() {
    [ -n "$recv_pid" ] && kill "$recv_pid" 2>/dev/null || true
    cluster_remove "$cdir"
    rm -rf "$work"
}
trap cleanup EXIT

port=$(free_port)
log() { printf '[demo %s] %s\n' "$(date +%H:%M:%S)" "$*"; }
sql() { "$PGBIN/psql" -X -q -At -h 127.0.0.1 -p "$port" -U postgres -d postgres -v ON_ERROR_STOP=1 -c "$1"; }

log "creating a throwaway cluster on port $port (wal_level=replica, fpw_pushdown preloaded)"
cluster_init "$cdir" "$port"
cluster_conf "$cdir" "wal_level = replica" "shared_preload_libraries = 'fpw_pushdown'" \
    "max_wal_senders = 4" "max_replication_slots = 4" "checkpoint_timeout = 30min" "synchronous_commit = on"
cluster_start "$cdir"
sql "CREATE EXTENSION fpw_pushdown"
log "pgbench -i -s $scale"
"$PGBIN/pgbench" -h 127.0.0.1 -p "$port" -U postgres -i -s "$scale" -q postgres >"$work/init.log" 2>&1

# run_pgbench LABEL: a checkpoint first (FPW logs an image on the first change of a page
# after each checkpoint), then pgbench; appends one result row.
rows=()
run_pgbench() {
    local label=$1 switch_lsn=${2:--}
    sql "CHECKPOINT" >/dev/null
    local lsn0 fpi0
    lsn0=$(sql "SELECT pg_current_wal_lsn()")
    sql "SELECT pg_stat_reset_shared('wal')" >/dev/null
    log "pgbench ${seconds}s: $label"
    "$PGBIN/pgbench" -h 127.0.0.1 -p "$port" -U postgres -n -c "$clients" -j "$clients" -T "$seconds" postgres >"$work/run.log" 2>&1
    sql "SELECT pg_stat_force_next_flush()" >/dev/null
    local bytes txns tps fpi
    bytes=$(sql "SELECT pg_current_wal_lsn() - '$lsn0'::pg_lsn")
    txns=$(sed -n 's/^number of transactions actually processed: \([0-9]*\).*/\1/p' "$work/run.log")
    tps=$(sed -n "s/^tps = \([0-9]*\.[0-9]\).* (without initial connection time)/\1/p" "$work/run.log")
    sleep 1 # pg_stat_wal is flushed by each backend at most once a second
    fpi=$(sql "SELECT wal_fpi FROM pg_stat_wal")
    rows+=("$(printf '%-42s %12s %10s %10s %12s %12s  %s' "$label" "$txns" "$tps" \
        "$(awk -v b="$bytes" -v t="$txns" 'BEGIN{printf "%.0f", b/t}')" "$fpi" \
        "$(awk -v b="$bytes" 'BEGIN{printf "%.1f", b/1048576}')" "$switch_lsn")")
}

run_pgbench "full_page_writes=on"

sql "ALTER SYSTEM SET wal_compression = 'zstd'" && sql "SELECT pg_reload_conf()" >/dev/null
run_pgbench "full_page_writes=on, wal_compression=zstd"
sql "ALTER SYSTEM RESET wal_compression" && sql "SELECT pg_reload_conf()" >/dev/null

log "pg_receivewal holds slot 'fpw_pushdown' (stand-in for the redo helper)"
sql "SELECT pg_create_physical_replication_slot('fpw_pushdown', true)" >/dev/null
mkdir -p "$work/recv"
"$PGBIN/pg_receivewal" -h 127.0.0.1 -p "$port" -U postgres -D "$work/recv" --slot fpw_pushdown --no-loop >"$work/recv.log" 2>&1 &
recv_pid=$!
for _ in $(seq 1 100); do
    [ "$(sql "SELECT active FROM pg_replication_slots WHERE slot_name = 'fpw_pushdown'")" = t ] && break
    sleep 0.1
done
off_lsn=$(sql "SELECT fpw_pushdown.disable_full_page_writes()")
log "full_page_writes off, live: XLOG_FPW_CHANGE at $off_lsn"
run_pgbench "full_page_writes=off (guarded)" "$off_lsn"
on_lsn=$(sql "SELECT fpw_pushdown.enable_full_page_writes()")
log "full_page_writes back on: XLOG_FPW_CHANGE at $on_lsn"
rows+=("$(printf '%-42s %12s %10s %10s %12s %12s  %s' "(enable_full_page_writes)" - - - - - "$on_lsn")")

echo
printf '%-42s %12s %10s %10s %12s %12s  %s\n' "run (${seconds}s, scale $scale, $clients clients)" transactions TPS "WAL B/txn" FPIs "WAL MB" "switch LSN"
printf '%s\n' "${rows[@]}"
echo
sql "SELECT 'status: full_page_writes=' || full_page_writes || ', slot ' || slot_name || ' active=' || slot_active || ', autopilot=' || autopilot FROM fpw_pushdown.status()"
log "stopping everything the demo started"
