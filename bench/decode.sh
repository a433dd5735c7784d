#!/usr/bin/env bash
# Decode throughput: `redo-helper waldump --stats` against `pg_waldump --stats` on the same
# segments in the same run (MB/s, records/s, ratio; target >= 1.5x), and peak RSS of each
# (memory must not grow with WAL size: compare BENCH_WAL_MB=256 and =1024).
# Knobs: BENCH_WAL_MB (256), BENCH_REPEAT (5, best of).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=../scripts/pg_cluster.sh
source "$here/../scripts/pg_cluster.sh"
helper_bin=${REDO_HELPER_BIN:-$here/../target/release/redo-helper}
wal_mb=${BENCH_WAL_MB:-256}
repeat=${BENCH_REPEAT:-5}

[ -x "$helper_bin" ] || { echo "build the helper first: cargo build --release -p redo-helper" >&2; exit 1; }
[ -x /usr/bin/time ] || { echo "needs /usr/bin/time (Debian package time; make setup installs it)" >&2; exit 1; }
work=$(mktemp -d /tmp/fpw_bench_decode.XXXXXX)
chmod 755 "$work"
cdir="$work/cluster"
trap 'cluster_remove "$cdir"; rm -rf "$work"' EXIT
log() { printf '[bench-decode %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

port=$(free_port)
sql() { "$PGBIN/psql" -X -q -At -h 127.0.0.1 -p "$port" -U postgres -d postgres -v ON_ERROR_STOP=1 -c "$1"; }
cluster_init "$cdir" "$port"
cluster_conf "$cdir" "wal_level = replica" "max_wal_size = 8GB" "min_wal_size = 8GB" "wal_keep_size = 8GB" \
    "checkpoint_timeout = 30min" "wal_compression = lz4"
cluster_start "$cdir"
start=$(sql "SELECT pg_current_wal_lsn()")
log "generating ~${wal_mb} MB of WAL (pgbench, FPW on, lz4-compressed images)"
"$PGBIN/pgbench" -h 127.0.0.1 -p "$port" -U postgres -i -s 10 -q postgres >/dev/null 2>&1
while [ "$(sql "SELECT (pg_current_wal_lsn() - '$start'::pg_lsn) < $wal_mb::numeric * 1048576")" = t ]; do
    sql "CHECKPOINT" >/dev/null
    "$PGBIN/pgbench" -h 127.0.0.1 -p "$port" -U postgres -n -c 2 -T 5 postgres >/dev/null 2>&1
done
sql "SELECT pg_switch_wal()" >/dev/null
end=$(sql "SELECT pg_current_wal_lsn()")
bytes=$(sql "SELECT '$end'::pg_lsn - '$start'::pg_lsn")
cp -r "$cdir/data/pg_wal" "$work/wal"
rm -rf "$work/wal/archive_status"

# measure NAME CMD...: best wall time of $repeat runs; prints "seconds peak_rss_kb records"
measure() {
    local best="" rss=0 secs kb
    for _ in $(seq 1 "$repeat"); do
        local t0 t1
        t0=$(date +%s.%N)
        /usr/bin/time -f '%M' -o "$work/time.txt" "$@" >"$work/out.txt" 2>/dev/null || true
        t1=$(date +%s.%N)
        secs=$(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.3f", b-a}')
        read -r kb <"$work/time.txt"
        if [ -z "$best" ] || awk -v a="$secs" -v b="$best" 'BEGIN{exit !(a<b)}'; then best=$secs; fi
        [ "$kb" -gt "$rss" ] && rss=$kb
    done
    echo "$best $rss"
}
log "timing pg_waldump --stats and redo-helper waldump --stats ($repeat runs each)"
read -r pg_s pg_kb < <(measure "$PGBIN/pg_waldump" -p "$work/wal" -s "$start" -e "$end" --stats)
pg_records=$(sed -n 's/^Total *\([0-9]*\).*/\1/p' "$work/out.txt" | head -1)
read -r rh_s rh_kb < <(measure "$helper_bin" waldump -p "$work/wal" -s "$start" -e "$end" --stats)
rh_records=$(sed -n 's/^Total *\([0-9]*\).*/\1/p' "$work/out.txt" | head -1)

mb=$(awk -v b="$bytes" 'BEGIN{printf "%.0f", b/1048576}')
echo
echo "decode benchmark: $mb MB of WAL ($start .. $end), best of $repeat"
printf '%-22s %10s %10s %12s %14s %12s\n' tool seconds "MB/s" records "records/s" "peak RSS MB"
for t in pg rh; do
    if [ $t = pg ]; then name=pg_waldump; s=$pg_s; kb=$pg_kb; r=$pg_records; else name="redo-helper waldump"; s=$rh_s; kb=$rh_kb; r=$rh_records; fi
    printf '%-22s %10s %10s %12s %14s %12s\n' "$name" "$s" "$(awk -v b="$bytes" -v s="$s" 'BEGIN{printf "%.0f", b/1048576/s}')" \
        "${r:-?}" "$(awk -v r="${r:-0}" -v s="$s" 'BEGIN{printf "%.0f", r/s}')" "$(awk -v k="$kb" 'BEGIN{printf "%.1f", k/1024}')"
done
echo "speed ratio redo-helper / pg_waldump: $(awk -v a="$pg_s" -v b="$rh_s" 'BEGIN{printf "%.2fx", a/b}') (target >= 1.5x)"
[ "${pg_records:-x}" = "${rh_records:-y}" ] || echo "WARNING: record counts differ: $pg_records vs $rh_records"
