#!/usr/bin/env bash
# `make demo-shards`: the redo helper as two shards over SeaweedFS (issue 19), on loopback.
# A throwaway PostgreSQL 15 cluster (full_page_writes off, as the helpers serve it), a
# SeaweedFS S3 gateway with credentials (scripts/seaweedfs.sh), and two helpers with
# `--shards 2 --shard I`, each with its own slot, sharing one bucket prefix and routing each
# other's pages (`--peers`). Shard 0 takes the only BASE_BACKUP and writes the WAL to the
# bucket; shard 1 resumes from the bucket. Then pgbench, and it prints:
#   - the split: pages each shard owns and checked against the data files after CHECKPOINT
#     (`redo-helper check` per shard), images each generated, WAL records each decoded;
#   - the routed reads: GetPage through shard 0 of pgbench pages, served locally or proxied
#     to shard 1 (x-fpw-shard, x-fpw-routed), with curl's time per read (p50 / p99);
#   - the BASE_BACKUPs the server ran (its log) and the S3 requests and bytes of shard 0.
# It stops everything it started. Knobs: DEMO_SECONDS (pgbench, default 20), DEMO_SCALE (10),
# DEMO_CLIENTS (2), DEMO_READS (GetPage reads, 300).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=../scripts/pg_cluster.sh
source "$here/../scripts/pg_cluster.sh"
helper_bin=${REDO_HELPER_BIN:-$here/../target/release/redo-helper}
seconds=${DEMO_SECONDS:-20}
scale=${DEMO_SCALE:-10}
clients=${DEMO_CLIENTS:-2}
reads=${DEMO_READS:-300}

[ -x "$helper_bin" ] || { echo "build the helper first: cargo build --release -p redo-helper" >&2; exit 1; }
work=$(mktemp -d /tmp/fpw_demo_shards.XXXXXX)
chmod 755 "$work"
cdir="$work/cluster"
pids=()
cleanup() {
    local p
    for p in "${pids[@]}"; do
        kill "$p" 2>/dev/null || true
        wait "$p" 2>/dev/null || true
    done
    bash "$here/../scripts/seaweedfs.sh" kill "$work/s3" 2>/dev/null || true
    cluster_remove "$cdir"
    rm -rf "$work"
}
trap cleanup EXIT

log() { printf '[demo-shards %s] %s\n' "$(date +%H:%M:%S)" "$*"; }
port=$(free_port)
hport=("$(free_port)" "$(free_port)")
sql() { "$PGBIN/psql" -X -q -At -h 127.0.0.1 -p "$port" -U postgres -d postgres -v ON_ERROR_STOP=1 -c "$1"; }
token_file="$work/api.token"
api() { curl -s -H "Authorization: Bearer $(cat "$token_file")" "$@"; }
status() { api "http://127.0.0.1:${hport[$1]}/status"; }

# A port P with P..P+7 free (S3, master, volume, filer and their gRPC ports).
s3_port() {
    local p i ok
    for _ in $(seq 1 50); do
        p=$(free_port)
        [ "$p" -lt 65000 ] || continue
        ok=1
        for i in 1 2 3 4 5 6 7; do
            if (exec 3<>"/dev/tcp/127.0.0.1/$((p + i))") 2>/dev/null; then ok=0; break; fi
        done
        [ $ok = 1 ] && { echo "$p"; return; }
    done
    echo "no free port range for SeaweedFS" >&2
    exit 1
}

log "creating a throwaway cluster on port $port (full_page_writes off, 2 replication slots to come)"
cluster_init "$cdir" "$port"
cluster_conf "$cdir" "wal_level = replica" "max_wal_senders = 8" "max_replication_slots = 8" \
    "full_page_writes = off" "checkpoint_timeout = 30min" "max_wal_size = 4GB" \
    "log_replication_commands = on"
cluster_start "$cdir"
log "pgbench -i -s $scale"
"$PGBIN/pgbench" -h 127.0.0.1 -p "$port" -U postgres -i -s "$scale" -q postgres >"$work/init.log" 2>&1

# Throwaway credentials for this SeaweedFS only; the helpers read them the AWS way.
export AWS_ACCESS_KEY_ID="demo-$(head -c 6 /dev/urandom | od -An -tx1 | tr -d ' \n')"
AWS_SECRET_ACCESS_KEY="$(head -c 18 /dev/urandom | od -An -tx1 | tr -d ' \n')"
export AWS_SECRET_ACCESS_KEY AWS_REGION=us-east-1
s3port=$(s3_port)
export AWS_ENDPOINT_URL="http://127.0.0.1:$s3port"
log "starting SeaweedFS (S3 on 127.0.0.1:$s3port, bucket fpw, with credentials)"
bash "$here/../scripts/seaweedfs.sh" start "$work/s3" "$s3port" fpw >/dev/null

# One API token for both shards: they send it to each other when routing.
(umask 077 && head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$token_file" && echo >>"$token_file")
peers="http://127.0.0.1:${hport[0]},http://127.0.0.1:${hport[1]}"
for i in 0 1; do
    "$helper_bin" run --connect "host=127.0.0.1 port=$port user=postgres" --data-dir "$work/shard$i" \
        --listen "127.0.0.1:${hport[$i]}" --api-token-file "$token_file" \
        --object-store s3://fpw/demo --object-store-interval-ms 500 \
        --shards 2 --shard "$i" --slot "fpw_pushdown_$i" --peers "$peers" \
        --image-threshold 16 >"$work/shard$i.log" 2>&1 &
    pids+=($!)
done
log "shard 0 (port ${hport[0]}) bootstraps from BASE_BACKUP; shard 1 (port ${hport[1]}) waits for the bucket and resumes from it"
for i in 0 1; do
    for _ in $(seq 1 1800); do
        [ "$(status "$i" | json_field state)" = streaming ] && break
        kill -0 "${pids[$i]}" 2>/dev/null || { cat "$work/shard$i.log" >&2; exit 1; }
        sleep 0.1
    done
    [ "$(status "$i" | json_field state)" = streaming ] || { echo "shard $i did not reach streaming" >&2; tail "$work/shard$i.log" >&2; exit 1; }
done
log "both shards streaming; slots: $(sql "SELECT string_agg(slot_name, ', ' ORDER BY slot_name) FROM pg_replication_slots")"
log "shard 1: $(grep -o 'resumed from object store.*' "$work/shard1.log" | head -1)"

log "pgbench ${seconds}s, $clients clients"
"$PGBIN/pgbench" -h 127.0.0.1 -p "$port" -U postgres -n -c "$clients" -j "$clients" -T "$seconds" postgres >"$work/run.log" 2>&1
tps=$(sed -n 's/^tps = \([0-9]*\.[0-9]\).* (without initial connection time)/\1/p' "$work/run.log")
target=$(sql "SELECT pg_current_wal_flush_lsn()")
for i in 0 1; do
    for _ in $(seq 1 600); do
        [ "$(status "$i" | json_field lag_bytes)" = 0 ] && break
        sleep 0.1
    done
done

log "GetPage@LSN through shard 0: $reads reads of pgbench_accounts pages at $target"
db=$(sql "SELECT oid FROM pg_database WHERE datname = 'postgres'")
read -r acc_rel acc_blocks < <(sql "SELECT pg_relation_filenode('pgbench_accounts'), pg_relation_size('pgbench_accounts') / 8192" | tr '|' ' ')
: >"$work/reads"
for _ in $(seq 1 "$reads"); do
    blk=$(( (RANDOM * 32768 + RANDOM) % acc_blocks ))
    # One line per read: HTTP status, time, producing shard, routed.
    api -o /dev/null -D "$work/head" -w '%{http_code} %{time_total}' \
        "http://127.0.0.1:${hport[0]}/page/1663/$db/$acc_rel/main/$blk?lsn=$target" >"$work/line" || true
    shard=$(tr -d '\r' <"$work/head" | sed -n 's/^x-fpw-shard: //Ip' | head -1)
    routed=$(tr -d '\r' <"$work/head" | sed -n 's/^x-fpw-routed: //Ip' | head -1)
    echo "$(cat "$work/line") ${shard:--} ${routed:-local}" >>"$work/reads"
done
# p50 / p99 of the times (seconds -> ms) of the reads matching an awk condition.
pct() {
    awk "$1"' {print $2 * 1000}' "$work/reads" | sort -n |
        awk '{v[NR] = $1} END {if (NR == 0) {print "-"; exit} printf "%.2f / %.2f ms", v[int((NR - 1) * 0.5) + 1], v[int((NR - 1) * 0.99) + 1]}'
}
local_n=$(awk '$1 == 200 && $4 == "local"' "$work/reads" | wc -l)
proxied_n=$(awk '$1 == 200 && $4 == "proxied"' "$work/reads" | wc -l)
failed_n=$(awk '$1 != 200' "$work/reads" | wc -l)

st0=$(status 0)
st1=$(status 1)
metrics0=$(api "http://127.0.0.1:${hport[0]}/metrics")
s3_requests=$(echo "$metrics0" | awk '/^redo_helper_object_store_requests_total/ {n += $NF} END {print n + 0}')
s3_mb=$(echo "$metrics0" | awk '/^redo_helper_object_store_bytes_total/ && /direction="upload"/ {n += $NF} END {printf "%.1f", n / 1048576}')

# The split, proven page by page: after a CHECKPOINT each shard's pages equal the data files.
sql "CHECKPOINT"
target=$(sql "SELECT pg_current_wal_flush_lsn()")
sleep 1
for i in 0 1; do
    for _ in $(seq 1 600); do
        st=$(status "$i")
        [ "$(echo "$st" | json_field lag_bytes)" = 0 ] && [ "$(echo "$st" | json_field imagegen_queue_depth)" = 0 ] && break
        sleep 0.1
    done
done
for p in "${pids[@]}"; do
    kill "$p" 2>/dev/null || true
    wait "$p" 2>/dev/null || true
done
pids=()
for i in 0 1; do
    "$helper_bin" check --data-dir "$work/shard$i" --pgdata "$cdir/data" --samples 200 >"$work/check$i" 2>/dev/null || true
done
pages() { tail -1 "$work/check$1" | sed -n 's/.*: \([0-9]*\) pages compared.*/\1/p'; }
check_result() { tail -1 "$work/check$1" | sed -n 's/.* pages compared with the data files, \([0-9]*\) mismatches.*/\1 mismatches/p'; }

echo
printf 'pgbench %ss, scale %s, %s clients: %s TPS with full_page_writes off, 2 helper shards\n\n' "$seconds" "$scale" "$clients" "${tps:-?}"
printf '%-44s %16s %16s\n' "the split" "shard 0" "shard 1"
printf '%-44s %16s %16s\n' \
    "pages owned, checked vs data files" "$(pages 0)" "$(pages 1)" \
    "check after CHECKPOINT" "$(check_result 0)" "$(check_result 1)" \
    "page images generated" "$(echo "$st0" | json_field images_generated)" "$(echo "$st1" | json_field images_generated)" \
    "WAL records decoded (every shard decodes all)" "$(echo "$st0" | json_field records_decoded)" "$(echo "$st1" | json_field records_decoded)"
echo
printf '%-44s %s\n' \
    "routed reads through shard 0 ($reads)" "$local_n served by shard 0, $proxied_n proxied to shard 1, $failed_n failed" \
    "  local read time p50 / p99 (curl)" "$(pct '$1 == 200 && $4 == "local"')" \
    "  proxied read time p50 / p99 (curl)" "$(pct '$1 == 200 && $4 == "proxied"')" \
    "BASE_BACKUPs the server ran (its log)" "$(grep -c 'received replication command: BASE_BACKUP' "$cdir/server.log" || true)" \
    "S3 requests by shard 0 (the WAL writer)" "$s3_requests, $s3_mb MB uploaded"
echo
log "stopping everything the demo started"
