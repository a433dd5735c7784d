#!/usr/bin/env bash
# `make demo`: a throwaway PostgreSQL 15 cluster with fpw_pushdown preloaded and the redo
# helper bootstrapped by BASE_BACKUP; pgbench with full_page_writes on, on + wal_compression
# = zstd (what a DBA tries first), and off — switched live by the extension while the helper
# holds the slot and generates page images — in two placements (bench/placement.sh):
# separated (the deployment: PostgreSQL and pgbench on CPU 0, the helper on CPU 1) first,
# then shared (everything on both CPUs). The helper streams in every run, as a standby or
# archiver would with FPW on. Then page reads from the helper (GetPage@LSN),
# a table of the numbers, a hot page decoded with pageinspect from page_at(), `redo-helper
# check` against the data files, and a crash with FPW off: a simulated torn page, `redo-helper
# repair`, crash recovery, amcheck. It stops everything it started.
# Knobs: DEMO_SECONDS (per run, default 20), DEMO_SCALE (pgbench scale, 10), DEMO_CLIENTS (2),
# DEMO_READS (GetPage reads, 500).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=../scripts/pg_cluster.sh
source "$here/../scripts/pg_cluster.sh"
# shellcheck source=placement.sh
source "$here/placement.sh"
helper_bin=${REDO_HELPER_BIN:-$here/../target/release/redo-helper}
seconds=${DEMO_SECONDS:-20}
scale=${DEMO_SCALE:-10}
clients=${DEMO_CLIENTS:-2}
reads=${DEMO_READS:-500}

[ -x "$helper_bin" ] || { echo "build the helper first: cargo build --release -p redo-helper" >&2; exit 1; }
work=$(mktemp -d /tmp/fpw_demo.XXXXXX)
chmod 755 "$work"
cdir="$work/cluster"
cleanup() {
    helper_stop
    cluster_remove "$cdir"
    placement_remove
    rm -rf "$work"
}
trap cleanup EXIT
placement_setup

port=$(free_port)
hport=$(free_port)
log() { printf '[demo %s] %s\n' "$(date +%H:%M:%S)" "$*"; }
sql() { "$PGBIN/psql" -X -q -At -h 127.0.0.1 -p "$port" -U postgres -d postgres -v ON_ERROR_STOP=1 -c "$1"; }
status() { helper_status "$hport"; }

log "creating a throwaway cluster on port $port (wal_level=replica, fpw_pushdown preloaded)"
cluster_init "$cdir" "$port"
cluster_conf "$cdir" "wal_level = replica" "shared_preload_libraries = 'fpw_pushdown'" \
    "max_wal_senders = 4" "max_replication_slots = 4" "checkpoint_timeout = 30min" "max_wal_size = 4GB"
cluster_start "$cdir"
sql "CREATE EXTENSION fpw_pushdown" && sql "CREATE EXTENSION pageinspect"
log "pgbench -i -s $scale"
"$PGBIN/pgbench" -h 127.0.0.1 -p "$port" -U postgres -i -s "$scale" -q postgres >"$work/init.log" 2>&1

log "starting redo-helper (BASE_BACKUP bootstrap, then streaming from slot fpw_pushdown)"
helper_start "$helper_bin" "$work/helper" "$port" "$hport" "$work/helper.log" --image-threshold 16
helper_token_for_postgres "$cdir/helper.token"
sql "ALTER SYSTEM SET fpw_pushdown.helper_address = '127.0.0.1:$hport'" &&
    sql "ALTER SYSTEM SET fpw_pushdown.helper_token_file = '$cdir/helper.token'" && sql "SELECT pg_reload_conf()" >/dev/null

# run_pgbench PLACEMENT LABEL [SWITCH_LSN]: a checkpoint first (FPW logs an image on the first
# change of a page after each checkpoint), then pgbench (prepared statements, one thread, in
# the placement's load-generator group); appends one result row and records its TPS in TPS[].
rows=()
max_lag=0
declare -A TPS
run_pgbench() {
    local placement=$1 label=$2 switch_lsn=${3:--}
    sql "CHECKPOINT" >/dev/null
    local lsn0 fpi0 bytes txns tps fpi
    lsn0=$(sql "SELECT pg_current_wal_lsn()")
    sql "SELECT pg_stat_force_next_flush()" >/dev/null
    sleep 1 # pg_stat_wal is flushed by each backend at most once a second
    fpi0=$(sql "SELECT wal_fpi FROM pg_stat_wal")
    log "pgbench ${seconds}s, $placement: $label"
    in_role "$placement" bench "$PGBIN/pgbench" -h 127.0.0.1 -p "$port" -U postgres -n -M prepared -c "$clients" -j 1 \
        -T "$seconds" postgres >"$work/run.log" 2>&1 &
    local bench=$!
    while kill -0 "$bench" 2>/dev/null; do
        local lag
        lag=$(sql "SELECT coalesce((pg_current_wal_lsn() - restart_lsn)::bigint, 0) FROM pg_replication_slots WHERE slot_name = 'fpw_pushdown'")
        [ "${lag:-0}" -gt "$max_lag" ] && max_lag=$lag
        sleep 0.5
    done
    wait "$bench"
    bytes=$(sql "SELECT pg_current_wal_lsn() - '$lsn0'::pg_lsn")
    txns=$(sed -n 's/^number of transactions actually processed: \([0-9]*\).*/\1/p' "$work/run.log")
    tps=$(sed -n 's/^tps = \([0-9]*\.[0-9]\).* (without initial connection time)/\1/p' "$work/run.log")
    sleep 1
    fpi=$(( $(sql "SELECT wal_fpi FROM pg_stat_wal") - fpi0 ))
    TPS[$placement,$label]=$tps
    rows+=("$(printf '%-10s %-34s %12s %10s %10s %10s %10s  %s' "$placement" "$label" "$txns" "$tps" \
        "$(awk -v b="$bytes" -v t="$txns" 'BEGIN{printf "%.0f", b/t}')" "$fpi" \
        "$(awk -v b="$bytes" 'BEGIN{printf "%.1f", b/1048576}')" "$switch_lsn")")
}

# The postmaster and every process it has forked (new backends inherit its group).
pg_pids() { local pm; pm=$(head -1 "$cdir/data/postmaster.pid"); echo "$pm" $(ps -o pid= --ppid "$pm"); }
for placement in separated shared; do
    # shellcheck disable=SC2046
    place "$placement" pg $(pg_pids)
    place "$placement" load "$HELPER_PID"
    run_pgbench "$placement" "full_page_writes=on"
    sql "ALTER SYSTEM SET wal_compression = 'zstd'" && sql "SELECT pg_reload_conf()" >/dev/null
    run_pgbench "$placement" "on + wal_compression=zstd"
    sql "ALTER SYSTEM RESET wal_compression" && sql "SELECT pg_reload_conf()" >/dev/null
    off_lsn=$(sql "SELECT fpw_pushdown.disable_full_page_writes()")
    log "full_page_writes off, live: XLOG_FPW_CHANGE at $off_lsn (guard: helper slot + /status)"
    max_lag=0
    run_pgbench "$placement" "off + redo helper" "$off_lsn"
    helper_lag=$max_lag
    [ "$placement" = shared ] || sql "SELECT fpw_pushdown.enable_full_page_writes()" >/dev/null
done

# Let the helper catch up, then read pages from it as of now: the hottest pages of pgbench.
target=$(sql "SELECT pg_current_wal_flush_lsn()")
for _ in $(seq 1 300); do
    [ "$(status | json_field lag_bytes)" = 0 ] && break
    sleep 0.1
done
log "GetPage@LSN: $reads reads of pgbench pages at $target"
db=$(sql "SELECT oid FROM pg_database WHERE datname = 'postgres'")
read -r acc_rel acc_blocks < <(sql "SELECT pg_relation_filenode('pgbench_accounts'), pg_relation_size('pgbench_accounts') / 8192" | tr '|' ' ')
br_rel=$(sql "SELECT pg_relation_filenode('pgbench_branches')")
tl_rel=$(sql "SELECT pg_relation_filenode('pgbench_tellers')")
errors=0
for i in $(seq 1 "$reads"); do
    case $((i % 4)) in
    0) path="1663/$db/$br_rel/main/0" ;;
    1) path="1663/$db/$tl_rel/main/0" ;;
    *) path="1663/$db/$acc_rel/main/$(( (RANDOM * 32768 + RANDOM) % acc_blocks ))" ;;
    esac
    code=$(helper_curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$hport/page/$path?lsn=$target")
    [ "$code" = 200 ] || errors=$((errors + 1))
done
on_lsn=$(sql "SELECT fpw_pushdown.enable_full_page_writes()")
log "full_page_writes back on: XLOG_FPW_CHANGE at $on_lsn"
st=$(status)

echo
echo "pgbench ${seconds}s per run, scale $scale, $clients clients, one run each (single runs vary by +-10%: bench/fpw.sh alternates rounds)"
echo "separated: PostgreSQL and pgbench on CPU 0, the helper on CPU 1 (the deployment: storage's CPU is not the compute's)"
echo "shared:    everything on both CPUs (the helper takes the database's CPU)"
printf '%-10s %-34s %12s %10s %10s %10s %10s  %s\n' placement run transactions TPS "WAL B/txn" FPIs "WAL MB" "switch LSN"
printf '%s\n' "${rows[@]}"
printf '%-10s %-34s %12s %10s %10s %10s %10s  %s\n' "" "(enable_full_page_writes)" - - - - - "$on_lsn"
echo
for placement in separated shared; do
    printf '%-44s %s\n' "off + helper / on + zstd, $placement" \
        "$(awk -v a="${TPS[$placement,off + redo helper]:-0}" -v b="${TPS[$placement,on + wal_compression=zstd]:-0}" 'BEGIN{if (b > 0) printf "%.2f", a / b; else print "-"}')"
done
echo
printf '%-44s %s\n' \
    "helper: max slot lag during FPW-off run" "$helper_lag bytes" \
    "helper: records decoded" "$(echo "$st" | json_field records_decoded)" \
    "helper: page images generated (failed)" "$(echo "$st" | json_field images_generated) ($(echo "$st" | json_field image_failures))" \
    "helper: image generation queue depth" "$(echo "$st" | json_field imagegen_queue_depth)" \
    "GetPage reads (errors)" "$reads ($errors)" \
    "deltas replayed per read: p50 / p99 / max" "$(echo "$st" | json_field p50 deltas_per_read) / $(echo "$st" | json_field p99 deltas_per_read) / $(echo "$st" | json_field max deltas_per_read) (threshold 16)"
echo
echo "The hottest page, pgbench_branches block 0, as the helper rebuilds it (page_at + pageinspect):"
"$PGBIN/psql" -X -h 127.0.0.1 -p "$port" -U postgres -d postgres -c \
    "SELECT lsn, lower, upper, special, prune_xid FROM page_header(fpw_pushdown.page_at('pgbench_branches', 0))" \
    -c "SELECT lp, lp_off, t_xmin, t_xmax, t_ctid FROM heap_page_items(fpw_pushdown.page_at('pgbench_branches', 0)) WHERE t_xmax = '0' ORDER BY lp LIMIT 5" ||
    echo "(the helper could not rebuild this page; see the error above)"

# Exactness: with nothing writing, a CHECKPOINT puts every page in the data files; the helper,
# once it has everything, must serve exactly those pages (masked like PostgreSQL's own
# consistency checks; the FSM is not WAL-logged and is skipped), and historical reads from its
# images must equal the replay of the whole chain.
sql "ALTER SYSTEM SET autovacuum = off" && sql "SELECT pg_reload_conf()" >/dev/null
sql "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE backend_type = 'autovacuum worker'" >/dev/null
sleep 0.5
sql "CHECKPOINT"
target=$(sql "SELECT pg_current_wal_flush_lsn()")
sleep 1 # the helper's lag is measured at its next flush
for _ in $(seq 1 600); do
    st=$(status)
    [ "$(echo "$st" | json_field lag_bytes)" = 0 ] && [ "$(echo "$st" | json_field imagegen_queue_depth)" = 0 ] && break
    sleep 0.1
done
helper_stop
log "redo-helper check: every page the helper serves at $target vs the data files after CHECKPOINT, and 1000 historical reads"
"$helper_bin" check --data-dir "$work/helper" --pgdata "$cdir/data" --samples 1000 2>/dev/null | sed 's/^/    /' ||
    echo "    (the check found differences; see above)"

# After a crash: with FPW off, a page whose write the crash interrupted is torn, and crash
# recovery would replay onto it. The operating procedure: PostgreSQL and the helper stopped,
# `redo-helper repair`, then start. Shown here with a simulated torn write.
log "crash with FPW off: 5 s of pgbench with the helper, then an immediate stop of PostgreSQL"
helper_start "$helper_bin" "$work/helper" "$port" "$hport" "$work/helper.log" --image-threshold 16
sql "CHECKPOINT"
"$PGBIN/pgbench" -h 127.0.0.1 -p "$port" -U postgres -n -c "$clients" -T 5 postgres >/dev/null 2>&1
before=$(sql "SELECT (SELECT sum(abalance) FROM pgbench_accounts) || ' / ' || (SELECT sum(bbalance) FROM pgbench_branches)")
accounts="$cdir/data/$(sql "SELECT pg_relation_filepath('pgbench_accounts')")"
blk=$(sql "SELECT (a.ctid::text::point)[0]::int FROM pgbench_history h JOIN pgbench_accounts a USING (aid) ORDER BY h.mtime DESC LIMIT 1")
as_postgres "$PGBIN/pg_ctl" -D "$cdir/data" -m immediate -w stop >/dev/null
helper_stop
# The second 4 KB of a recently changed page replaced by another page's: a torn write.
other=$((blk > 0 ? blk - 1 : blk + 1))
dd if="$accounts" of="$work/half" bs=4096 skip=$((other * 2 + 1)) count=1 status=none
dd if="$work/half" of="$accounts" bs=4096 seek=$((blk * 2 + 1)) count=1 conv=notrunc status=none
log "tore block $blk of pgbench_accounts; redo-helper repair --data-dir ... --pgdata ..."
"$helper_bin" repair --data-dir "$work/helper" --pgdata "$cdir/data" 2>/dev/null | sed 's/^/    /' ||
    echo "    (repair reported problems; see above)"
cluster_start "$cdir"
sql "CREATE EXTENSION IF NOT EXISTS amcheck"
after=$(sql "SELECT (SELECT sum(abalance) FROM pgbench_accounts) || ' / ' || (SELECT sum(bbalance) FROM pgbench_branches)")
problems=$(sql "SELECT count(*) FROM verify_heapam('pgbench_accounts')")
sql "SELECT bt_index_check('pgbench_accounts_pkey', true)" >/dev/null && btree=ok || btree=failed
printf '    after crash recovery: balances accounts / branches %s (before the crash: %s); verify_heapam problems %s; bt_index_check %s\n' \
    "$after" "$before" "$problems" "$btree"

log "stopping everything the demo started"
