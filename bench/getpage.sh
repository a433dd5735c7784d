#!/usr/bin/env bash
# GetPage@LSN latency by where the read starts (generated image, cached page, base backup,
# WAL image), cold and warm, and historical reads (max deltas per read with images, and what
# the images cost), for one or more helper builds fed the same WAL.
#
# One cluster, pgbench (TPC-B-like) for BENCH_SECONDS: the first half with full_page_writes
# on (pages touched then start from a WAL image), the second half off. Every build in
# BENCH_BINS runs as its own helper (own slot, own data directory) during the whole load, so
# they index the same WAL. Then, per round, each helper (alternating which goes first) reads
# the same BENCH_READS pages (every 10th pgbench_branches block 0, the others random
# pgbench_accounts pages) at the LSN where the load stopped, one request at a time over one
# kept-alive connection:
#   cold: after the helper's files were dropped from the page cache (`dd iflag=nocache`):
#         what this VM's DAMON reclaim does to files untouched for a minute; served reads
#   warm: the same pages again at once, the page cache of the helper bypassed (`cache=none`)
# Latency is x-read-us (the rebuild inside the helper) with its phases (x-read-phases);
# min / median / max over the rounds of each kind's p50 and p99.
# Then each helper is stopped and `redo-helper check --samples` compares random historical
# reads with the full chain and reports the max deltas per read; image bytes per GB of WAL.
# Where the helpers' files are (BENCH_STORAGE): "disk" (default), the VM's virtual disk, so a
# cold read of a base-backup page is a device read; "tmpfs", a tmpfs of the benchmark's own,
# a stand-in for a storage host whose device is fast (or whose files are in memory): what is
# left is the helper's own work (the "cold" pass is then warm for the files: a tmpfs has no
# page cache to drop). For the reads the helpers are pinned to CPU 1 and the reader (curl) to
# CPU 0 (BENCH_PIN=1, the default on 2 or more CPUs): storage's CPU is not the client's, and
# neither waits for the other's time slice.
# Knobs: BENCH_BINS (target/release/redo-helper; several: space-separated), BENCH_SCALE (20),
# BENCH_SECONDS (30), BENCH_CLIENTS (4), BENCH_READS (1000), BENCH_ROUNDS (5),
# BENCH_SAMPLES (1000), BENCH_STORAGE (disk), BENCH_PIN (1).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=../scripts/pg_cluster.sh
source "$here/../scripts/pg_cluster.sh"
read -r -a bins <<<"${BENCH_BINS:-$here/../target/release/redo-helper}"
scale=${BENCH_SCALE:-20}
seconds=${BENCH_SECONDS:-30}
clients=${BENCH_CLIENTS:-4}
reads=${BENCH_READS:-1000}
rounds=${BENCH_ROUNDS:-5}
samples=${BENCH_SAMPLES:-1000}
storage=${BENCH_STORAGE:-disk}
case $storage in disk | tmpfs) ;; *) echo "BENCH_STORAGE must be disk or tmpfs, not '$storage'" >&2; exit 1 ;; esac
pin=${BENCH_PIN:-$([ "$(nproc)" -ge 2 ] && echo 1 || echo 0)}
for b in "${bins[@]}"; do [ -x "$b" ] || { echo "no helper binary at $b (cargo build --release -p redo-helper)" >&2; exit 1; }; done

work=$(mktemp -d /tmp/getpage_bench.XXXXXX)
chmod 755 "$work"
cdir="$work/cluster"
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
    cluster_remove "$cdir"
    mountpoint -q "$work/storage" && umount "$work/storage"
    rm -rf "$work"
}
trap cleanup EXIT
log() { printf '[bench-getpage %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

# The helpers' data directories.
hdir() { echo "$work/storage/helper$1"; }
mkdir -p "$work/storage"
[ "$storage" = tmpfs ] && mount -t tmpfs -o size=8g,mode=755 fpw_getpage_storage "$work/storage"
port=$(free_port)
sql() { "$PGBIN/psql" -X -q -At -h 127.0.0.1 -p "$port" -U postgres -d postgres -v ON_ERROR_STOP=1 "$@"; }
cluster_init "$cdir" "$port"
cluster_conf "$cdir" "wal_level = replica" "max_wal_senders = 8" "max_replication_slots = 8" \
    "checkpoint_timeout = 30min" "max_wal_size = 8GB" "autovacuum = off"
cluster_start "$cdir"
log "loading pgbench scale $scale"
"$PGBIN/pgbench" -h 127.0.0.1 -p "$port" -U postgres -i -s "$scale" -q postgres >"$work/init.log" 2>&1
lsn0=$(sql -c "SELECT pg_current_wal_lsn()")

hports=()
for i in "${!bins[@]}"; do
    hports[i]=$(free_port)
    log "helper $i: ${bins[i]}"
    helper_start "${bins[i]}" "$(hdir "$i")" "$port" "${hports[i]}" "$work/helper$i.log" \
        --image-threshold 16 --slot "bench_getpage_$i"
    pids[i]=$HELPER_PID
done
hstatus() { curl -s -H "Authorization: Bearer $(cat "$(hdir "$1")/api.token")" "http://127.0.0.1:${hports[$1]}/status"; }

pgbench_run() {
    "$PGBIN/pgbench" -h 127.0.0.1 -p "$port" -U postgres -n -c "$clients" -j "$clients" -T "$1" postgres >>"$work/pgbench.log" 2>&1
}
sql -c "CHECKPOINT" >/dev/null
log "load: ${seconds}s pgbench, the first half with full_page_writes on"
pgbench_run $((seconds / 2))
sql -c "ALTER SYSTEM SET full_page_writes = off" -c "SELECT pg_reload_conf()" >/dev/null
pgbench_run $((seconds - seconds / 2))
at=$(sql -c "SELECT pg_current_wal_flush_lsn()")
for i in "${!bins[@]}"; do
    for _ in $(seq 1 3000); do
        f=$(hstatus "$i" | json_field flush_lsn)
        if [ -n "$f" ] && [ "$(sql -c "SELECT '$f'::pg_lsn >= '$at'::pg_lsn")" = t ] &&
            [ "$(hstatus "$i" | json_field imagegen_queue_depth)" = 0 ]; then
            break
        fi
        sleep 0.2
    done
done
log "helpers caught up at $at"

db=$(sql -c "SELECT oid FROM pg_database WHERE datname = 'postgres'")
acc=$(sql -c "SELECT pg_relation_filenode('pgbench_accounts')")
blocks=$(sql -c "SELECT pg_relation_size('pgbench_accounts') / 8192")
br=$(sql -c "SELECT pg_relation_filenode('pgbench_branches')")

# read_pages HELPER QUERY OUT: one line per read:
# "http_code client_us deltas read_us lookup_us start_us replay_us start_kind".
read_pages() {
    local i=$1 q=$2 out=$3 p
    while read -r p; do
        printf 'url = "http://127.0.0.1:%s/page/%s?lsn=%s&wait_ms=5000%s"\noutput = /dev/null\n' "${hports[i]}" "$p" "$at" "$q"
    done <"$work/pages" >"$work/curl.cfg"
    printf 'header = "Authorization: Bearer %s"\n' "$(cat "$(hdir "$i")/api.token")" >>"$work/curl.cfg"
    $reader curl -s -K "$work/curl.cfg" -D "$work/h" -w '%{http_code} %{time_starttransfer}\n' >"$work/w" || true
    tr -d '\r' <"$work/h" | awk '
        function flush() { if (code != "") print d, u, pl, ps, pr, s; code = "" }
        /^HTTP\// { flush(); code = $2; d = -1; u = -1; pl = -1; ps = -1; pr = -1; s = "-"; next }
        /^x-deltas-replayed:/ { d = $2 }
        /^x-read-us:/ { u = $2 }
        /^x-read-phases:/ { for (k = 2; k <= NF; k++) { split($k, kv, "="); if (kv[1] == "lookup") pl = kv[2]; if (kv[1] == "start") ps = kv[2]; if (kv[1] == "replay") pr = kv[2] } }
        /^x-start:/ { s = $0; sub(/^x-start: /, "", s); sub(/ at [0-9A-F]+\/[0-9A-F]+$/, "", s); gsub(/ /, "_", s) }
        END { flush() }' >"$work/h.fields"
    paste -d' ' <(awk '{printf "%s %.0f\n", $1, $2 * 1e6}' "$work/w") "$work/h.fields" >"$out"
}
# Drops a helper's files from the page cache (as DAMON reclaim does after a minute idle).
evict() { find "$(hdir "$1")" -type f \( -path '*/base/*' -o -path '*/images/*' -o -path '*/wal/*' \) -exec dd if={} iflag=nocache count=0 status=none \; ; }
# q FILE P: nearest-rank quantile of a sorted file of numbers.
q() {
    local n
    n=$(wc -l <"$1")
    [ "$n" -gt 0 ] || { echo -; return; }
    sed -n "$(awk -v n="$n" -v p="$2" 'BEGIN{i=int(n*p+0.5); if(i<1)i=1; if(i>n)i=n; print i}')p" "$1"
}
# summarise HELPER PASS ROUND FILE: per start kind (and all), appends
# "helper pass kind round n p50 p99 lookup99 start99 replay99 client50 client99" to results.
summarise() {
    local i=$1 pass=$2 r=$3 f=$4 k
    for k in all $(awk '$1 == 200 {print $8}' "$f" | sort -u); do
        awk -v k="$k" '$1 == 200 && (k == "all" || $8 == k)' "$f" >"$f.k"
        local cols=()
        for c in 4 5 6 7 2; do
            awk -v c="$c" '{print $c}' "$f.k" | sort -n >"$f.c"
            cols+=("$(q "$f.c" 0.5)" "$(q "$f.c" 0.99)")
        done
        echo "$i $pass $k $r $(wc -l <"$f.k") ${cols[0]} ${cols[1]} ${cols[3]} ${cols[5]} ${cols[7]} ${cols[8]} ${cols[9]}" >>"$work/results"
    done
    awk '$1 != 200' "$f" | wc -l >>"$work/errors.$i"
}

: >"$work/results"
reader=""
if [ "$pin" = 1 ]; then
    for i in "${!bins[@]}"; do taskset -a -pc 1 "${pids[i]}" >/dev/null; done
    reader="taskset -c 0"
    log "reads: helpers pinned to CPU 1, the reader to CPU 0"
fi
for r in $(seq 1 "$rounds"); do
    for n in $(seq 1 "$reads"); do
        if [ $((n % 10)) = 0 ]; then echo "1663/$db/$br/main/0"; else echo "1663/$db/$acc/main/$(( (RANDOM * 32768 + RANDOM) % blocks ))"; fi
    done >"$work/pages"
    order=("${!bins[@]}")
    [ $((r % 2)) = 0 ] && order=($(printf '%s\n' "${order[@]}" | tac))
    for i in "${order[@]}"; do
        log "round $r, helper $i: cold then warm"
        evict "$i"
        read_pages "$i" "" "$work/r.$i.cold.$r"
        read_pages "$i" "&cache=none" "$work/r.$i.warm.$r"
        summarise "$i" cold "$r" "$work/r.$i.cold.$r"
        summarise "$i" warm "$r" "$work/r.$i.warm.$r"
    done
    # The peer: one 8 KB pread of a random page of the same base file, cold, without the
    # helper (the device's own latency on this VM), timed in-process by python3.
    if command -v python3 >/dev/null; then
        evict 0
        $reader python3 - "$(hdir 0)/base/1663/$db/$acc" "$reads" >>"$work/peer" <<'PY'
import os, random, sys, time
fd = os.open(sys.argv[1], os.O_RDONLY)
blocks = os.fstat(fd).st_size // 8192
lat = []
for _ in range(int(sys.argv[2])):
    b = random.randrange(blocks)
    t = time.perf_counter()
    os.pread(fd, 8192, b * 8192)
    lat.append((time.perf_counter() - t) * 1e6)
lat.sort()
print("%.0f %.0f" % (lat[len(lat) // 2], lat[min(len(lat) - 1, int(len(lat) * 0.99 + 0.5) - 1)]))
PY
    fi
done

# Per helper, pass and start kind: reads over all rounds, and min / median / max over the
# rounds of p50 and p99 (microseconds inside the helper), the median of the phases' p99s and
# of the client's p50 / p99 (curl's time to first byte: adds the loopback HTTP round trip).
mmm() { sort -n | awk '{v[NR] = $1} END {if (NR == 0) print "-"; else printf "%s/%s/%s", v[1], v[int((NR + 1) / 2)], v[NR]}'; }
med() { sort -n | awk '{v[NR] = $1} END {if (NR == 0) print "-"; else print v[int((NR + 1) / 2)]}'; }
echo
echo "storage: $([ "$storage" = tmpfs ] && echo "tmpfs (no device reads)" || echo "the VM's disk"); $([ "$pin" = 1 ] && echo "helpers on CPU 1, reader on CPU 0" || echo "not pinned")"
echo "GetPage@LSN at $at, pgbench scale $scale, ${seconds}s load (half FPW on, half off), $rounds rounds x $reads reads"
echo "(x-read-us inside the helper, microseconds; min/median/max over rounds; phases: median over rounds of each phase's p99)"
for i in "${!bins[@]}"; do
    echo
    echo "helper $i: ${bins[i]} (errors: $(awk '{s += $1} END {print s + 0}' "$work/errors.$i"))"
    printf '%-5s %-26s %7s %18s %20s %22s %16s\n' pass start reads "p50 min/med/max" "p99 min/med/max" "p99 lookup/start/replay" "client p50/p99"
    for pass in cold warm; do
        for k in $(awk -v i="$i" -v p="$pass" '$1 == i && $2 == p {print $3}' "$work/results" | sort -u); do
            sel() { awk -v i="$i" -v p="$pass" -v k="$k" -v c="$1" '$1 == i && $2 == p && $3 == k {print $c}' "$work/results"; }
            printf '%-5s %-26s %7s %18s %20s %22s %16s\n' "$pass" "$k" "$(sel 5 | awk '{s += $1} END {print s + 0}')" \
                "$(sel 6 | mmm)" "$(sel 7 | mmm)" "$(sel 8 | med)/$(sel 9 | med)/$(sel 10 | med)" "$(sel 11 | med)/$(sel 12 | med)"
        done
    done
done

if [ -s "$work/peer" ]; then
    echo
    echo "peer: a cold 8 KB pread of a random page of pgbench_accounts' base file (no helper), p50 $(cut -d' ' -f1 "$work/peer" | mmm) / p99 $(cut -d' ' -f2 "$work/peer" | mmm) us (min/median/max over rounds)"
fi

# Historical reads and what the images cost.
wal_bytes=$(sql -c "SELECT '$at'::pg_lsn - '$lsn0'::pg_lsn")
echo
echo "WAL since the helpers started: $wal_bytes bytes"
printf '%-8s %12s %12s %14s %10s  %s\n' helper images "image bytes" "image B/GB WAL" "reads max" "check (historical reads vs the full chain)"
for i in "${!bins[@]}"; do
    st=$(hstatus "$i")
    dmax=$(echo "$st" | json_field max deltas_per_read)
    nimg=$(echo "$st" | json_field images_stored)
    kill "${pids[i]}" 2>/dev/null || true
    wait "${pids[i]}" 2>/dev/null || true
    ibytes=$(find "$(hdir "$i")/images" -name 'images-*.dat' -printf '%s\n' | awk '{s += $1} END {print s + 0}')
    line=$("${bins[i]}" check --data-dir "$(hdir "$i")" --samples "$samples" 2>/dev/null | tail -1 || true)
    hist=$(echo "$line" | sed -n 's/.*history: \(.*\)/\1/p')
    printf '%-8s %12s %12s %14s %10s  %s\n' "$i" "$nimg" "$ibytes" \
        "$(awk -v a="$ibytes" -v w="$wal_bytes" 'BEGIN{printf "%.0f", a / w * 2^30}')" "$dmax" "$hist"
done
