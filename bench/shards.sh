#!/usr/bin/env bash
# The same WAL with 1 and with 2 helper shards: one cluster under pgbench followed at the same
# time by an unsharded helper (bucket prefix `one/`) and by two shards (prefix `two/`, shard 0
# the WAL writer), all with object storage on one SeaweedFS. Reports, over the pgbench run
# (the bootstrap's base upload and restore are left out): WAL written, and per helper the
# images generated, the CPU seconds of its image generation threads (`imagegen-N`, from
# /proc), and its S3 requests and bytes (redo_helper_object_store_*), per GB of WAL.
# Knobs: BENCH_SECONDS (30), BENCH_SCALE (pgbench scale, 10), BENCH_CLIENTS (4),
# REDO_HELPER_BIN (target/release/redo-helper).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=../scripts/pg_cluster.sh
source "$here/../scripts/pg_cluster.sh"
helper_bin=${REDO_HELPER_BIN:-$here/../target/release/redo-helper}
seconds=${BENCH_SECONDS:-30}
scale=${BENCH_SCALE:-10}
clients=${BENCH_CLIENTS:-4}

[ -x "$helper_bin" ] || { echo "build the helper first: cargo build --release -p redo-helper" >&2; exit 1; }
work=$(mktemp -d /tmp/fpw_shards.XXXXXX)
chmod 755 "$work"
cdir="$work/cluster"
pids=()
export AWS_ACCESS_KEY_ID=fpw-bench-key AWS_SECRET_ACCESS_KEY=fpw-bench-secret AWS_REGION=us-east-1
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
    bash "$here/../scripts/seaweedfs.sh" kill "$work/s3" 2>/dev/null || true
    cluster_remove "$cdir"
    rm -rf "$work"
}
trap cleanup EXIT
log() { printf '[bench-shards %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

port=$(free_port)
s3port=$(free_port)
export AWS_ENDPOINT_URL="http://127.0.0.1:$s3port"
sql() { "$PGBIN/psql" -X -q -At -h 127.0.0.1 -p "$port" -U postgres -d postgres -v ON_ERROR_STOP=1 "$@"; }

cluster_init "$cdir" "$port"
cluster_conf "$cdir" "wal_level = replica" "max_wal_senders = 10" "autovacuum = off" \
    "checkpoint_timeout = 30min" "max_wal_size = 8GB"
cluster_start "$cdir"
log "loading pgbench scale $scale"
"$PGBIN/pgbench" -h 127.0.0.1 -p "$port" -U postgres -i -s "$scale" -q postgres >"$work/init.log" 2>&1
bash "$here/../scripts/seaweedfs.sh" start "$work/s3" "$s3port" fpw >/dev/null

# start NAME PREFIX SLOT [extra args]: a helper in $work/NAME, API on its socket.
start() {
    local name=$1 prefix=$2 slot=$3
    shift 3
    "$helper_bin" run --connect "host=127.0.0.1 port=$port user=postgres" --data-dir "$work/$name" \
        --slot "$slot" --object-store "s3://fpw/$prefix" "$@" >"$work/$name.log" 2>&1 &
    pids+=("$!")
    eval "pid_$name=$!"
}
api() { curl -s --unix-socket "$work/$1/api.sock" "http://helper$2"; }
field() { api "$1" /status | json_field "$2"; }
wait_streaming() {
    for _ in $(seq 1 1800); do
        [ "$(field "$1" state)" = streaming ] && return 0
        sleep 0.1
    done
    echo "$1 did not reach streaming; its log:" >&2
    cat "$work/$1.log" >&2
    return 1
}
# counter NAME METRIC-PREFIX: the sum of the helper's /metrics lines starting so.
counter() { api "$1" /metrics | awk -v p="$2" 'index($0, p) == 1 { s += $NF } END { printf "%d\n", s }'; }
# imagegen_cpu NAME: CPU seconds of its imagegen threads.
imagegen_cpu() {
    local pid ticks=0 t
    pid=$(eval echo "\$pid_$1")
    for t in /proc/"$pid"/task/*; do
        case $(cat "$t/comm" 2>/dev/null) in
        imagegen*) ticks=$((ticks + $(sed 's/.*) //' "$t/stat" | awk '{ print $12 + $13 }'))) ;;
        esac
    done
    echo "scale=2; $ticks / $(getconf CLK_TCK)" | bc
}

start one one fpw_one
start two1 two fpw_two_1 --shards 2 --shard 1
start two0 two fpw_two_0 --shards 2 --shard 0
for h in one two0 two1; do wait_streaming "$h"; done
log "three helpers streaming (1 unsharded, 2 shards); pgbench $seconds s, $clients clients"

names=(one two0 two1)
declare -A before
snapshot() {
    local h
    for h in "${names[@]}"; do
        before[$h.images]=$(counter "$h" redo_helper_images_generated_total)
        before[$h.req]=$(counter "$h" redo_helper_object_store_requests_total)
        before[$h.bytes]=$(counter "$h" redo_helper_object_store_bytes_total)
        before[$h.cpu]=$(imagegen_cpu "$h")
    done
}
snapshot
wal_start=$(sql -c "SELECT pg_current_wal_lsn()")
"$PGBIN/pgbench" -h 127.0.0.1 -p "$port" -U postgres -n -T "$seconds" -c "$clients" -j "$clients" postgres >"$work/run.log" 2>&1
wal_end=$(sql -c "SELECT pg_current_wal_lsn()")
wal_bytes=$(sql -c "SELECT pg_wal_lsn_diff('$wal_end', '$wal_start')::bigint")
log "waiting for the helpers to decode and generate images for $((wal_bytes >> 20)) MB of WAL"
for h in "${names[@]}"; do
    for _ in $(seq 1 3000); do
        s=$(api "$h" /status)
        dec=$(echo "$s" | json_field decoded_lsn)
        depth=$(echo "$s" | json_field imagegen_queue_depth)
        if [ -n "$dec" ] && [ "$(sql -c "SELECT '$dec'::pg_lsn >= '$wal_end'::pg_lsn")" = t ] && [ "$depth" = 0 ]; then
            break
        fi
        sleep 0.2
    done
done
# A last upload round for every helper.
sleep 2

gb=$(echo "scale=6; $wal_bytes / 1073741824" | bc)
printf '%-22s %10s %12s %14s %14s %14s\n' helper images imagegen_cpu_s s3_requests s3_MB req_per_GB_WAL
for h in "${names[@]}"; do
    images=$(($(counter "$h" redo_helper_images_generated_total) - before[$h.images]))
    req=$(($(counter "$h" redo_helper_object_store_requests_total) - before[$h.req]))
    bytes=$(($(counter "$h" redo_helper_object_store_bytes_total) - before[$h.bytes]))
    cpu=$(echo "$(imagegen_cpu "$h") - ${before[$h.cpu]}" | bc)
    label=$h
    case $h in one) label="1 shard" ;; two0) label="2 shards: shard 0" ;; two1) label="2 shards: shard 1" ;; esac
    printf '%-22s %10d %12s %14d %14d %14.0f\n' "$label" "$images" "$cpu" "$req" $((bytes >> 20)) \
        "$(echo "$req / $gb" | bc -l)"
done
printf 'WAL: %d MB (%s GB); S3 bytes include WAL uploads (shard 0 and the unsharded helper only)\n' \
    $((wal_bytes >> 20)) "$gb"
