#!/usr/bin/env bash
# WAL per transaction and TPS, same cluster, same run: full_page_writes on, on +
# wal_compression = lz4 and = zstd (what a DBA tries first), off alone (forced, no helper),
# and off with the redo helper attached (guarded switch), for pgbench's TPC-B-like default
# and a TPC-C-like workload with poorly compressible strings (bench/tpcc/). Also reports the
# helper's CPU, images/s and image queue depth at peak load during its run, and GetPage@LSN
# latency and deltas per read with threshold 16 (with and without the page cache) against no
# image generation (the whole chain replayed).
# Knobs: BENCH_SECONDS (20), BENCH_SCALE (pgbench scale, 50), BENCH_WAREHOUSES (4),
# BENCH_CLIENTS (4), BENCH_READS (2000), BENCH_ROUNDS (3: extra alternations of off alone and
# off + helper for the TPS comparison).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=../scripts/pg_cluster.sh
source "$here/../scripts/pg_cluster.sh"
helper_bin=${REDO_HELPER_BIN:-$here/../target/release/redo-helper}
seconds=${BENCH_SECONDS:-20}
scale=${BENCH_SCALE:-50}
warehouses=${BENCH_WAREHOUSES:-4}
clients=${BENCH_CLIENTS:-4}
reads=${BENCH_READS:-2000}
rounds=${BENCH_ROUNDS:-3}

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
# Autovacuum off: a vacuum starting in one run and not another would decide the comparison.
cluster_conf "$cdir" "wal_level = replica" "shared_preload_libraries = 'fpw_pushdown'" "max_wal_senders = 4" \
    "checkpoint_timeout = 30min" "max_wal_size = 8GB" "fpw_pushdown.autopilot = off" "autovacuum = off"
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

declare -A B T CPU QMAX IMGS P
hz=$(getconf CLK_TCK)
ticks() { awk '{print $14 + $15}' "/proc/$HELPER_PID/stat"; }
# Samples the image queue while pgbench runs (peak load): prints the largest depth seen.
watch_queue() {
    local max=0 d
    while [ -f "$work/watching" ]; do
        d=$(status | json_field imagegen_queue_depth 2>/dev/null || echo 0)
        [ "${d:-0}" -gt "$max" ] 2>/dev/null && max=$d
        sleep 0.5
    done
    echo "$max"
}
# Starts the helper (the first time it bootstraps; later it resumes from its slot) and waits
# until the extension's guard sees it healthy (slot active, lag within bounds).
helper_attach() {
    helper_start "$helper_bin" "$work/helper" "$port" "$hport" "$work/helper.log" --image-threshold 16
    helper_token_for_postgres "$cdir/helper.token"
    sql -c "ALTER SYSTEM SET fpw_pushdown.helper_address = '127.0.0.1:$hport'" \
        -c "ALTER SYSTEM SET fpw_pushdown.helper_token_file = '$cdir/helper.token'" -c "SELECT pg_reload_conf()" >/dev/null
    for _ in $(seq 1 600); do
        [ "$(sql -c "SELECT helper_healthy FROM fpw_pushdown.status()")" = t ] && return 0
        sleep 0.2
    done
    echo "the redo helper did not become healthy; see $work/helper.log" >&2
    return 1
}
helper_detach() {
    helper_stop
    sql -c "ALTER SYSTEM RESET fpw_pushdown.helper_address" -c "SELECT pg_reload_conf()" >/dev/null
}
# Waits until the helper has made durable and indexed all WAL written so far and its image
# queue is empty (a re-attached helper first catches up on what it missed).
helper_caught_up() {
    local target f
    target=$(sql -c "SELECT pg_current_wal_flush_lsn()")
    for _ in $(seq 1 1200); do
        f=$(status | json_field flush_lsn)
        if [ -n "$f" ] && [ "$(sql -c "SELECT '$f'::pg_lsn >= '$target'::pg_lsn")" = t ] &&
            [ "$(status | json_field imagegen_queue_depth)" = 0 ]; then
            return 0
        fi
        sleep 0.2
    done
    log "the helper has not caught up after 4 minutes; measuring anyway"
}

# Per workload, the runs that are compared directly are adjacent: FPW on, lz4, zstd, then
# FPW off alone (forced, no helper), FPW off with pg_receivewal streaming durably (the cost
# of any durable physical replication client, the helper's peer), then FPW off with the
# helper attached (guarded switch).
# The helper is not running during the other runs.
for w in tpcb tpcc; do
    # Warm-up (not recorded): the first run after loading also sets hint bits and fills caches.
    run $w "warm-up" >/dev/null
    read -r "B[$w,on]" "T[$w,on]" < <(run $w "full_page_writes=on")
    set_compression lz4
    read -r "B[$w,lz4]" "T[$w,lz4]" < <(run $w "full_page_writes=on, wal_compression=lz4")
    set_compression zstd
    read -r "B[$w,zstd]" "T[$w,zstd]" < <(run $w "full_page_writes=on, wal_compression=zstd")
    set_compression off
    sql -c "SELECT fpw_pushdown.disable_full_page_writes(force => true)" >/dev/null 2>&1
    read -r "B[$w,off]" "T[$w,off]" < <(run $w "full_page_writes=off (no helper)")
    # The cost of streaming WAL durably to anyone: PostgreSQL's own pg_receivewal, fsyncing
    # what it receives (--synchronous, as the helper does), on its own slot.
    # A fresh slot and directory per run, so it streams from now on instead of catching up.
    rm -rf "$work/receivewal" && mkdir -p "$work/receivewal"
    sql -c "SELECT pg_create_physical_replication_slot('bench_receivewal', true)" >/dev/null
    "$PGBIN/pg_receivewal" -h 127.0.0.1 -p "$port" -U postgres -S bench_receivewal -D "$work/receivewal" \
        --synchronous >"$work/receivewal.log" 2>&1 &
    receivewal=$!
    sleep 1
    read -r "B[$w,rw]" "T[$w,rw]" < <(run $w "full_page_writes=off + pg_receivewal --synchronous")
    kill "$receivewal" 2>/dev/null || true
    wait "$receivewal" 2>/dev/null || true
    sql -c "SELECT pg_drop_replication_slot('bench_receivewal')" >/dev/null
    rm -rf "$work/receivewal"
    sql -c "SELECT fpw_pushdown.enable_full_page_writes()" >/dev/null
    log "attaching the redo helper"
    helper_attach
    sql -c "SELECT fpw_pushdown.disable_full_page_writes()" >/dev/null
    t0=$(ticks)
    s0=$(date +%s.%N)
    i0=$(status | json_field images_generated)
    touch "$work/watching"
    watch_queue >"$work/qmax.$w" &
    watcher=$!
    read -r "B[$w,helper]" "T[$w,helper]" < <(run $w "full_page_writes=off + redo helper")
    rm -f "$work/watching"
    wait "$watcher"
    s1=$(date +%s.%N)
    e=$(awk -v a="$s0" -v b="$s1" 'BEGIN{print b-a}')
    CPU[$w]=$(awk -v a="$t0" -v b="$(ticks)" -v hz="$hz" -v e="$e" 'BEGIN{printf "%.2f", (b-a)/hz/e}')
    QMAX[$w]=$(cat "$work/qmax.$w")
    IMGS[$w]=$(awk -v a="$i0" -v b="$(status | json_field images_generated)" -v e="$e" 'BEGIN{printf "%.0f", (b-a)/e}')
    # TPS differences of a few percent are below this VM's run-to-run noise (+-10%), so the
    # comparison with off alone is also made in alternating pairs: helper detached (stopped,
    # no walsender), then re-attached, caught up and measured. FPW stays off throughout
    # (the extension's autopilot is off in this cluster). Ratio: median over the pairs.
    P[$w]="${T[$w,off]}:${T[$w,helper]}"
    for i in $(seq 1 "$rounds"); do
        helper_detach
        read -r _ toff < <(run $w "full_page_writes=off (no helper), pair $i")
        log "re-attaching the redo helper"
        helper_attach
        helper_caught_up
        read -r _ thelper < <(run $w "full_page_writes=off + redo helper, pair $i")
        P[$w]="${P[$w]} $toff:$thelper"
    done
    sql -c "SELECT fpw_pushdown.enable_full_page_writes()" >/dev/null
    # The last workload's helper stays attached for the GetPage reads below.
    [ "$w" = tpcc ] || helper_detach
done

# GetPage@LSN: the same pages (every 10th the hottest pgbench page, the others random
# pgbench_accounts pages) read three ways, each at the LSN where the load stopped:
#   served      - what a caller gets: cached page or generated image + deltas
#   no cache    - generated images (threshold 16) + deltas, the page cache bypassed
#   no images   - the whole chain from the WAL or the base backup: no image generation
# Latency is the client's time to first byte after connecting (curl), so it includes the
# HTTP round trip on loopback; deltas per read come from the x-deltas-replayed header.
db=$(sql -c "SELECT oid FROM pg_database WHERE datname = 'postgres'")
acc=$(sql -c "SELECT pg_relation_filenode('pgbench_accounts')")
blocks=$(sql -c "SELECT pg_relation_size('pgbench_accounts') / 8192")
br=$(sql -c "SELECT pg_relation_filenode('pgbench_branches')")
at=$(sql -c "SELECT pg_current_wal_flush_lsn()")
: >"$work/pages"
for i in $(seq 1 "$reads"); do
    if [ $((i % 10)) = 0 ]; then echo "1663/$db/$br/main/0"; else echo "1663/$db/$acc/main/$(( (RANDOM * 32768 + RANDOM) % blocks ))"; fi
done >"$work/pages"
# read_pages QUERY OUT: one line per read: "http_code client_us deltas helper_us start".
# One curl process reads every page over one kept-alive connection, one request at a time,
# as a compute's page client would (a new process and connection per read measures curl's
# start-up and a cold CPU, not the helper).
read_pages() {
    local q=$1 out=$2 p
    while read -r p; do
        printf 'url = "http://127.0.0.1:%s/page/%s?lsn=%s&wait_ms=5000%s"\noutput = /dev/null\n' "$hport" "$p" "$at" "$q"
    done <"$work/pages" >"$work/curl.cfg"
    # The API token (kept out of the command line, where ps would show it).
    printf 'header = "Authorization: Bearer %s"\n' "$(cat "$work/helper/api.token")" >>"$work/curl.cfg"
    curl -s -K "$work/curl.cfg" -D "$work/h" -w '%{http_code} %{time_starttransfer}\n' >"$work/w" || true
    # The headers of each response, in order: its status line, then x-deltas-replayed,
    # x-read-us (time to rebuild the page inside the helper) and x-start.
    tr -d '\r' <"$work/h" | awk '
        function flush() { if (code != "") print d, u, s; code = "" }
        /^HTTP\// { flush(); code = $2; d = -1; u = -1; s = "-"; next }
        /^x-deltas-replayed:/ { d = $2 }
        /^x-read-us:/ { u = $2 }
        /^x-start:/ { s = $2 "_" $3 }
        END { flush() }' >"$work/h.fields"
    paste -d' ' <(awk '{printf "%s %.0f\n", $1, $2 * 1e6}' "$work/w") "$work/h.fields" >"$out"
}
# quantile SORTED_FILE P → the value at fraction P (nearest rank)
quantile() {
    local n
    n=$(wc -l <"$1")
    [ "$n" -gt 0 ] || { echo -; return; }
    sed -n "$(awk -v n="$n" -v p="$2" 'BEGIN{i=int(n*p+0.5); if(i<1)i=1; if(i>n)i=n; print i}')p" "$1"
}
# summary FILE [FILTER] → "errors p50_us p99_us helper_p50_us helper_p99_us deltas_p50 deltas_p99
# deltas_max count" over the successful reads FILTER (an awk condition) selects.
summary() {
    local f=$1 cond=${2:-1}
    awk "\$1 == 200 && ($cond) {print \$2}" "$f" | sort -n >"$f.lat"
    awk "\$1 == 200 && ($cond) {print \$3}" "$f" | sort -n >"$f.del"
    awk "\$1 == 200 && ($cond) {print \$4}" "$f" | sort -n >"$f.srv"
    echo "$(awk '$1 != 200' "$f" | wc -l) $(quantile "$f.lat" 0.5) $(quantile "$f.lat" 0.99)" \
        "$(quantile "$f.srv" 0.5) $(quantile "$f.srv" 0.99)" \
        "$(quantile "$f.del" 0.5) $(quantile "$f.del" 0.99) $(quantile "$f.del" 1) $(wc -l <"$f.lat")"
}
# Reads after the load, once the helper has caught up and image generation has drained its
# queue (its peak depth and rate under load are reported above).
helper_caught_up
log "GetPage: $reads reads x 3 ways at $at"
read_pages "" "$work/r.served"
read_pages "&cache=none" "$work/r.nocache"
read_pages "&images=none" "$work/r.noimages"
st=$(status)

pct() { awk -v a="$1" -v b="$2" 'BEGIN{printf "%.1f%%", (1 - a/b) * 100}'; }
# median_ratio "a:b a:b ..." → the median of b/a, in percent
median_ratio() {
    tr ' ' '\n' <<<"$1" | awk -F: 'NF == 2 && $1 > 0 {print $2 / $1 * 100}' | sort -n |
        awk '{v[NR] = $1} END {if (NR == 0) print "-"; else if (NR % 2) printf "%.1f%%", v[(NR + 1) / 2]; else printf "%.1f%%", (v[NR / 2] + v[NR / 2 + 1]) / 2}'
}
for w in tpcb tpcc; do
    echo
    echo "workload: $w ($clients clients, ${seconds}s per run; pgbench scale $scale / $warehouses warehouses)"
    printf '%-40s %12s %10s\n' mode "WAL B/txn" TPS
    for m in on lz4 zstd off rw helper; do
        case $m in
        on) label="full_page_writes=on" ;;
        lz4) label="on + wal_compression=lz4" ;;
        zstd) label="on + wal_compression=zstd" ;;
        off) label="off alone (forced)" ;;
        rw) label="off + pg_receivewal --synchronous" ;;
        helper) label="off + redo helper" ;;
        esac
        printf '%-40s %12s %10s\n' "$label" "${B[$w,$m]}" "${T[$w,$m]}"
    done
    printf '%-60s %s\n' "WAL/txn reduction, helper vs FPW on (target >= 91%)" "$(pct "${B[$w,helper]}" "${B[$w,on]}")" \
        "WAL/txn below FPW on + zstd (target >= 40%)" "$(pct "${B[$w,helper]}" "${B[$w,zstd]}")" \
        "TPS with helper / TPS off alone, adjacent runs above" "$(awk -v a="${T[$w,helper]}" -v b="${T[$w,off]}" 'BEGIN{printf "%.1f%%", a/b*100}')" \
        "TPS pairs (off alone:off + helper), first the runs above" "${P[$w]}" \
        "TPS with helper / TPS off alone, median of pairs (target >= 97%)" "$(median_ratio "${P[$w]}")" \
        "TPS with pg_receivewal --synchronous / TPS off alone (peer)" "$(awk -v a="${T[$w,rw]}" -v b="${T[$w,off]}" 'BEGIN{printf "%.1f%%", a/b*100}')" \
        "helper CPU during its run (cores)" "${CPU[$w]}" \
        "images generated per second during its run" "${IMGS[$w]}" \
        "image queue depth, max sampled at peak load" "${QMAX[$w]}"
done
echo
echo "GetPage@LSN at $at: $reads reads (10% the hottest page, 90% random pgbench_accounts pages),"
echo "one request at a time over one kept-alive connection"
echo "(latency: 'helper' = time to rebuild the page inside the helper, x-read-us; 'client' = curl's"
echo " time to first byte, so it adds the HTTP round trip and curl itself)"
printf '%-48s %6s %6s %16s %16s %17s\n' "read" reads errors "helper p50/p99" "client p50/p99" "deltas p50/p99/max"
row() {
    local label=$1 e l50 l99 s50 s99 d50 d99 dmax n
    read -r e l50 l99 s50 s99 d50 d99 dmax n < <(summary "$2" "${3:-1}")
    printf '%-48s %6s %6s %16s %16s %17s\n' "$label" "$n" "$e" "$s50/$s99 us" "$l50/$l99 us" "$d50/$d99/$dmax"
}
for r in served:"served (cache + images, threshold 16)" nocache:"images, threshold 16, no cache" noimages:"no image generation (full chain)"; do
    row "${r#*:}" "$work/r.${r%%:*}"
done
# The reads the target is about: the replay starts from an image the helper holds (a page it
# served recently, or one it generated) and has at most 16 deltas on top. The other reads
# start from the base backup's data files, which this VM's DAMON pageout evicts from the page
# cache after a minute without access: those are disk reads.
image_start='($5 == "cached_page" || $5 == "generated_image") && $3 <= 16'
row "  of served: cached/generated image + <= 16" "$work/r.served" "$image_start"
row "  of served: base backup page (data files)" "$work/r.served" '$5 == "base_backup"'
row "  of no cache: generated image + <= 16" "$work/r.nocache" "$image_start"
printf '%-60s %s\n' \
    "GetPage p99 target (cached image + <= 16 deltas, in the helper)" "<= 200 us" \
    "images generated / failed / queue depth now" "$(echo "$st" | json_field images_generated) / $(echo "$st" | json_field image_failures) / $(echo "$st" | json_field imagegen_queue_depth)"
