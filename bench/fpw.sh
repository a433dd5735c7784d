#!/usr/bin/env bash
# What the compute achieves with each way of running full_page_writes, per workload, in the
# same run: TPS, WAL per transaction and (TPC-C-like) new orders per minute for
#   on       full_page_writes = on
#   lz4      on + wal_compression = lz4
#   zstd     on + wal_compression = zstd          (what a DBA tries first: the peer)
#   off      off alone (forced; no streaming client at all)
#   rw       off + a bare durable streaming client (pg_receivewal --synchronous)
#   helper   off + the redo helper (guarded switch), generating images at threshold 16
# Every mode but "off" has a streaming client attached, as production has: the FPW-on modes
# and "rw" a pg_receivewal --synchronous on a slot of its own, "helper" the helper.
#
# Two placements (BENCH_PLACEMENTS, default both; the separated one is the headline):
#   separated  the deployment: PostgreSQL and the load generator on CPU 0, the streaming
#              client or the helper alone on CPU 1 (storage's CPU is not the compute's)
#   shared     everything on both CPUs (the helper takes the database's CPU)
# Placement is by cgroup (cpuset: the postmaster and every process it forks stay on their
# CPU; cpuacct: each side's CPU is measured), falling back to taskset without the CPU
# figures where the cgroup v1 hierarchies are not mounted.
# Storage is placed too: in "separated" the streaming client's or the helper's directory is
# on a tmpfs of its own (BENCH_STORAGE_TMPFS, its size, 12g), not on the disk PostgreSQL
# writes its WAL to and fsyncs: in the deployment the helper writes to storage hosts' disks,
# and on this VM the helper's WAL copy and page images (several times PostgreSQL's own WAL
# under TPC-C) would otherwise queue ahead of the compute's commits on the one virtual disk.
# In "shared" they are on the same disk as PostgreSQL (the helper beside the database). Each
# placement has its own helper, bootstrapped by BASE_BACKUP at its start.
# The compute's device (BENCH_COMPUTE, default "disk"): where PostgreSQL's data directory and
# pg_wal are.
#   disk    the VM's one virtual disk, whose fsync latency moves between runs (and with it
#           every mode's TPS, the FPW-on modes' most: they write 4-6x the WAL)
#   volume  a cloud block volume's limits, emulated so that they repeat: ext4 on a loop
#           device whose file is in memory, PostgreSQL's reads and writes to it throttled by
#           a cgroup v1 blkio group to BENCH_DEVICE_IOPS (3000) and BENCH_DEVICE_MBPS (125 MiB/s)
#           each way, the baseline of a general-purpose cloud SSD volume (AWS gp3). WAL
#           flushes are paid by the process that calls fdatasync, so commits wait for the
#           volume as they would; only the kernel's own background writeback (data pages
#           left dirty over 30 s) escapes the limits. In "separated" the volume's kernel
#           threads (its ext4 journal thread, the unbound workqueues of the loop driver and
#           the throttle) are kept on the compute's CPU, as a compute host's would be.
#   tmpfs   a tmpfs: a device with no limits; the compute is bound by its CPU alone, and
#           FPW on is charged only the CPU its page images cost (copying, CRC, compression)
#   The emulated ones take BENCH_COMPUTE_TMPFS (8g) of memory.
## Method (issue 20), chosen for a result that repeats on a 2-core VM:
# - Rounds alternate the modes (each round starts with a different mode, so no mode always
#   runs first or last), BENCH_ROUNDS >= 5; each run starts right after a CHECKPOINT. Reported:
#   min / median / max per mode, the spread (the farthest round from the median, +-% of the
#   median: the issue's "under +-5%"), and the per-round ratio of
#   the helper to its peers (the same round's runs: drift over the rounds, such as table
#   growth, cancels out). Each round's steal time (/proc/stat: the hypervisor running
#   something else while a CPU had work) is printed per CPU, so that a round the host
#   slowed can be told from one the product slowed.
# - The load generator costs little and is accounted: pgbench with prepared statements and
#   one thread, on the compute's CPU (the same share of it in every mode), in a CPU-accounting
#   group of its own. Not on the storage CPU: there the helper's image generation would slow
#   the load generator, not the database, and the comparison would measure pgbench. In
#   production the clients run elsewhere, so the TPS here is a lower bound for every mode
#   alike. Each side's CPU use is printed per mode (PostgreSQL, pgbench, storage).
# - The helper is detached during the other modes and catches up (WAL received, indexed and
#   its image queue drained) before the CHECKPOINT that starts its own run, so it never
#   spends its run on WAL of another mode.
# - Default checkpoint settings (max_wal_size = 1GB, checkpoint_timeout = 5min, as in
#   production: size-triggered checkpoints count) and autovacuum off (a vacuum starting in one
#   run and not another would decide the comparison).
# - Workloads in BENCH_VACUUM (default "index") are vacuumed before each run's CHECKPOINT,
#   and the streaming client has received that WAL before the run starts: with autovacuum
#   off the index workload's dead rows, bloat and GIN pending lists otherwise grow through
#   the rounds, so each round would start from a different state. TPC-B and TPC-C-like
#   update in place and stay as they were measured before (no VACUUM).
# - After each run without the helper, the helper is attached until it has caught up, then
#   detached (BENCH_HELPER_CATCH_UP=0: not): otherwise its slot holds that WAL, the next
#   CHECKPOINT recycles no segment, and the next run without the helper zero-fills new WAL
#   segments on the compute's device (IO:WALInitWrite, then LWLock:WALWrite waits: -10-15%
#   TPS on the index workload on the emulated volume, in the second and later runs after a
#   helper run). Production has the helper attached all along; its slot never holds a run.
#
# Workloads (BENCH_WORKLOADS, default "tpcb tpcc index"):
#   tpcb   pgbench's TPC-B-like, scale BENCH_SCALE (50)
#   tpcc   bench/tpcc/: TPC-C-like new-order (45%) and payment (43%) with poorly compressible
#          strings, BENCH_WAREHOUSES (100: about 0.8 GB, six times shared_buffers)
#   index  bench/redo-index/: a documents table with GIN, BRIN, GiST, SP-GiST, hash and
#          contrib bloom indexes, BENCH_INDEX_ROWS (200000) initial rows. BENCH_INDEX_TXN:
#          "steady" (default, txn-steady.sql: new documents replace old ones, so every run
#          starts from the same table) or "growing" (txn.sql, as bench/redo.sh and the runs
#          before 2026-12-04: the table gains three documents a transaction, six times its
#          size over a 16-run benchmark)
# Each workload gets a fresh cluster (shared_buffers = 128MB) and a fresh helper.
#
# Knobs: BENCH_SECONDS (30 per run), BENCH_ROUNDS (5), BENCH_CLIENTS (8), BENCH_MODES
# (default all six), BENCH_PLACEMENTS, BENCH_WORKLOADS, BENCH_SCALE, BENCH_WAREHOUSES,
# BENCH_INDEX_ROWS, BENCH_VACUUM (index), BENCH_HELPER_CATCH_UP (1), BENCH_STORAGE_TMPFS (12g),
# BENCH_COMPUTE (disk), BENCH_COMPUTE_TMPFS (8g),
# BENCH_DEVICE_IOPS (3000), BENCH_DEVICE_MBPS (125), BENCH_HELPER_RETAIN (2GB: the helper's
# --retain), REDO_HELPER_BIN, REDO_HELPER_BIN_B (for the mode helper_b: off + another build of
# the helper, on the same helper directory, to compare two builds in one run; its rounds are
# reported beside "helper" as a per-round ratio; REDO_HELPER_BIN_B=REDO_HELPER_BIN gives the
# helper's own A/A spread), BENCH_PROFILE (0; 1 logs per run where the compute's time goes:
# sampled wait events of the server processes, WAL flushes per transaction and their mean
# time with track_wal_io_timing on, the emulated volume's reads and writes per transaction,
# the storage side's page faults). GetPage@LSN latency: bench/getpage.sh.
# Time: workloads x placements x rounds x modes x (BENCH_SECONDS + ~10 s), plus loading:
# about 1h30 at the defaults.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=../scripts/pg_cluster.sh
source "$here/../scripts/pg_cluster.sh"
helper_bin=${REDO_HELPER_BIN:-$here/../target/release/redo-helper}
helper_bin_b=${REDO_HELPER_BIN_B:-}
# The helper's history (--retain). Its images take more room than the WAL they bound: on the
# index workload 7.7 GB of images for the default 4 GB of WAL, which with a pg_receivewal
# directory beside it filled the 12 GB storage tmpfs in the fourth round (the helper then
# waits for room it cannot make within its retention, and is not healthy). 2 GB keeps every
# workload's store within BENCH_STORAGE_TMPFS.
helper_retain=${BENCH_HELPER_RETAIN:-2GB}
seconds=${BENCH_SECONDS:-30}
rounds=${BENCH_ROUNDS:-5}
clients=${BENCH_CLIENTS:-8}
scale=${BENCH_SCALE:-50}
warehouses=${BENCH_WAREHOUSES:-100}
index_rows=${BENCH_INDEX_ROWS:-200000}
index_txn=${BENCH_INDEX_TXN:-steady}
case $index_txn in steady | growing) ;; *) echo "BENCH_INDEX_TXN must be steady or growing, not '$index_txn'" >&2; exit 1 ;; esac
read -r -a modes <<<"${BENCH_MODES:-on lz4 zstd off rw helper}"
read -r -a placements <<<"${BENCH_PLACEMENTS:-separated shared}"
read -r -a workloads <<<"${BENCH_WORKLOADS:-tpcb tpcc index}"
compute=${BENCH_COMPUTE:-disk}
case $compute in disk | volume | tmpfs) ;; *) echo "BENCH_COMPUTE must be disk, volume or tmpfs, not '$compute'" >&2; exit 1 ;; esac
device_iops=${BENCH_DEVICE_IOPS:-3000}
device_mbps=${BENCH_DEVICE_MBPS:-125}
profile=${BENCH_PROFILE:-0}
vacuum_workloads=" ${BENCH_VACUUM-index} "
catch_up_between=${BENCH_HELPER_CATCH_UP:-1}

[ -x "$helper_bin" ] || { echo "build the helper first: cargo build --release -p redo-helper" >&2; exit 1; }
for m in "${modes[@]}"; do
    case $m in
    on | lz4 | zstd | off | rw | helper) ;;
    helper_b) [ -x "$helper_bin_b" ] || { echo "the mode helper_b needs REDO_HELPER_BIN_B (an executable)" >&2; exit 1; } ;;
    *) echo "unknown mode '$m' in BENCH_MODES (on lz4 zstd off rw helper helper_b)" >&2; exit 1 ;;
    esac
done
[ "$(nproc)" -ge 2 ] || { echo "the separated placement needs 2 CPUs" >&2; exit 1; }
work=$(mktemp -d /tmp/fpw_bench.XXXXXX)
chmod 755 "$work"
log() { printf '[bench-fpw %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

# --- placement (bench/placement.sh) -------------------------------------------------------
# shellcheck source=placement.sh
source "$here/placement.sh"
# proc_ticks PID: user + system CPU ticks of a process, or - once it is gone.
proc_ticks() { awk '{print $14 + $15}' "/proc/$1/stat" 2>/dev/null || echo -; }
# Ticks the hypervisor gave CPU 0 and CPU 1 to others while they had work ("steal", the
# 8th value of /proc/stat's cpuN lines): "cpu0 cpu1". A round the host slowed shows here.
steal_ticks() { awk '$1 == "cpu0" {a = $9} $1 == "cpu1" {b = $9} END {print a + 0, b + 0}' /proc/stat; }
# The postmaster and every process it has forked (new backends inherit its group).
pg_pids() { local pm; pm=$(head -1 "$cdir/data/postmaster.pid"); echo "$pm" $(ps -o pid= --ppid "$pm"); }

# storage_dir PLACEMENT: where the streaming client's or the helper's files go (see the
# header): a tmpfs of the benchmark's own for "separated", the work directory's disk for
# "shared".
storage_tmpfs="$work/storage-tmpfs"
storage_dir() { if [ "$1" = separated ]; then echo "$storage_tmpfs"; else echo "$work/storage-disk"; fi; }
# The compute's clusters: on the work directory's disk, on a tmpfs of their own, or on the
# emulated volume (a file in that tmpfs, a loop device, ext4, a blkio group).
compute_tmpfs="$work/compute-tmpfs"
compute_volume="$work/compute-volume"
volume_loop=""
cg_blkio=/sys/fs/cgroup/blkio/fpw_bench_$$_volume
compute_root() {
    case $compute in
    disk) echo "$work" ;;
    tmpfs) echo "$compute_tmpfs" ;;
    volume) echo "$compute_volume" ;;
    esac
}
# volume_place PID...: PostgreSQL's processes (and what they fork) pay the volume's limits.
volume_place() {
    [ "$compute" = volume ] || return 0
    local pid
    for pid in "$@"; do echo "$pid" >"$cg_blkio/cgroup.procs" 2>/dev/null || true; done
}

# volume_kthreads_place PLACEMENT: the volume's kernel-side work runs where the compute
# runs. An fsync on the volume's ext4 waits for its journal thread (jbd2), and the loop
# driver and the throttle hand bios to unbound workqueues: kernel threads outside the
# compute's cgroup. Left free, they ran on CPU 1 too, where in "separated" they queued
# behind the helper's image generation; in the deployment they are the compute host's.
# "separated": CPU 0 for the journal thread and every unbound workqueue; "shared": all CPUs.
wq_cpumask=/sys/devices/virtual/workqueue/cpumask
wq_cpumask_saved=$(cat "$wq_cpumask" 2>/dev/null || true)
volume_kthreads_place() {
    [ "$compute" = volume ] || return 0
    local cpus mask jbd
    if [ "$1" = separated ]; then cpus=0 mask=1; else cpus="0-$(($(nproc) - 1))" mask=$wq_cpumask_saved; fi
    jbd=$(pgrep -x "jbd2/$(basename "$volume_loop")-8" || true)
    [ -n "$jbd" ] && taskset -pc "$cpus" "$jbd" >/dev/null 2>&1
    [ -n "$mask" ] && echo "$mask" >"$wq_cpumask" 2>/dev/null
    return 0
}

cdir=""
RW_PID=""
cleanup() {
    rw_stop
    helper_stop
    [ -n "$cdir" ] && cluster_remove "$cdir"
    placement_remove
    [ -n "$wq_cpumask_saved" ] && echo "$wq_cpumask_saved" >"$wq_cpumask" 2>/dev/null
    mountpoint -q "$storage_tmpfs" && umount "$storage_tmpfs"
    mountpoint -q "$compute_volume" && umount "$compute_volume"
    [ -n "$volume_loop" ] && losetup -d "$volume_loop"
    if [ -d "$cg_blkio" ]; then
        while read -r pid; do echo "$pid" >/sys/fs/cgroup/blkio/cgroup.procs 2>/dev/null || true; done <"$cg_blkio/cgroup.procs"
        rmdir "$cg_blkio" 2>/dev/null || true
    fi
    mountpoint -q "$compute_tmpfs" && umount "$compute_tmpfs"
    rm -rf "$work"
}
trap cleanup EXIT
placement_setup
mkdir -p "$storage_tmpfs" "$work/storage-disk"
if [[ " ${placements[*]} " == *" separated "* ]]; then
    mount -t tmpfs -o "size=${BENCH_STORAGE_TMPFS:-12g},mode=755" fpw_bench_storage "$storage_tmpfs"
fi
if [ "$compute" != disk ]; then
    mkdir -p "$compute_tmpfs"
    mount -t tmpfs -o "size=${BENCH_COMPUTE_TMPFS:-8g},mode=755" fpw_bench_compute "$compute_tmpfs"
fi
if [ "$compute" = volume ]; then
    [ -f /sys/fs/cgroup/blkio/blkio.throttle.write_bps_device ] ||
        { echo "BENCH_COMPUTE=volume needs the cgroup v1 blkio hierarchy at /sys/fs/cgroup/blkio" >&2; exit 1; }
    truncate -s "${BENCH_COMPUTE_TMPFS:-8g}" "$compute_tmpfs/volume.img"
    volume_loop=$(losetup --find --show "$compute_tmpfs/volume.img")
    # Initialised now, not lazily by a kernel thread during the runs.
    mkfs.ext4 -q -F -E lazy_itable_init=0,lazy_journal_init=0 "$volume_loop"
    mkdir -p "$compute_volume"
    mount "$volume_loop" "$compute_volume"
    chmod 755 "$compute_volume"
    mkdir -p "$cg_blkio"
    majmin=$(lsblk -dno MAJ:MIN "$volume_loop" | tr -d ' ')
    for f in read_iops write_iops; do echo "$majmin $device_iops" >"$cg_blkio/blkio.throttle.${f}_device"; done
    for f in read_bps write_bps; do echo "$majmin $((device_mbps * 1024 * 1024))" >"$cg_blkio/blkio.throttle.${f}_device"; done
    log "compute volume: $volume_loop ($majmin), $device_iops IOPS and $device_mbps MiB/s each way"
fi

# --- the cluster, the streaming clients ------------------------------------------------------
port=""
hport=""
sql() { "$PGBIN/psql" -X -q -At -h 127.0.0.1 -p "$port" -U postgres -d postgres -v ON_ERROR_STOP=1 "$@"; }
status() { helper_status "$hport"; }

rw_start() {
    rm -rf "$(storage_dir "$1")/receivewal" && mkdir -p "$(storage_dir "$1")/receivewal"
    sql -c "SELECT pg_create_physical_replication_slot('bench_receivewal', true)" >/dev/null
    # Started directly (not through in_role, whose background subshell would be the pid) and
    # moved to the storage side at once.
    "$PGBIN/pg_receivewal" -h 127.0.0.1 -p "$port" -U postgres -S bench_receivewal \
        -D "$(storage_dir "$1")/receivewal" --synchronous >"$work/receivewal.log" 2>&1 &
    RW_PID=$!
    RW_DIR=$(storage_dir "$1")/receivewal
    place "$1" load "$RW_PID"
    for _ in $(seq 1 100); do
        [ "$(sql -c "SELECT active FROM pg_replication_slots WHERE slot_name = 'bench_receivewal'")" = t ] && return 0
        sleep 0.1
    done
    echo "pg_receivewal did not start streaming; its log:" >&2
    tail -5 "$work/receivewal.log" >&2
    return 1
}
rw_stop() {
    [ -n "${RW_PID:-}" ] || return 0
    # SIGKILL: on SIGTERM pg_receivewal stops only at its next message, up to 10 s when idle.
    kill -KILL "$RW_PID" 2>/dev/null || true
    wait "$RW_PID" 2>/dev/null || true
    RW_PID=""
    # The walsender may outlive pg_receivewal for a moment: the slot is dropped once inactive.
    for _ in $(seq 1 100); do
        sql -c "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots
                WHERE slot_name = 'bench_receivewal' AND NOT active" >/dev/null 2>&1 || true
        [ -z "$(sql -c "SELECT 1 FROM pg_replication_slots WHERE slot_name = 'bench_receivewal'")" ] && break
        sleep 0.1
    done
    rm -rf "${RW_DIR:-$work/receivewal}"
}
# helper_attach PLACEMENT [BINARY]: starts the helper (BINARY, default the build under test)
# on the load side (the first time it bootstraps, later it resumes from its slot) and waits
# until the extension's guard sees it healthy.
helper_attach() {
    local p=$1 bin=${2:-$helper_bin}
    helper_start "$bin" "$(storage_dir "$p")/helper" "$port" "$hport" "$work/helper.log" --image-threshold 16 \
        --retain "$helper_retain"
    place "$p" load "$HELPER_PID"
    helper_token_for_postgres "$cdir/helper.token"
    sql -c "ALTER SYSTEM SET fpw_pushdown.helper_address = '127.0.0.1:$hport'" \
        -c "ALTER SYSTEM SET fpw_pushdown.helper_token_file = '$cdir/helper.token'" -c "SELECT pg_reload_conf()" >/dev/null
    # Healthy needs the slot's lag under fpw_pushdown.max_helper_lag. After the other modes'
    # runs the helper resumes behind by their WAL, and it holds its acknowledgements back
    # while its image queue is deep (--backpressure-queue): on the index workload, catching
    # up on one CPU took up to 76 s. Up to 10 minutes, as helper_caught_up allows.
    local i
    for i in $(seq 1 3000); do
        [ "$(sql -c "SELECT helper_healthy FROM fpw_pushdown.status()")" = t ] && return 0
        if [ $((i % 150)) = 0 ]; then
            log "$p: waiting for the helper to become healthy ($((i / 5)) s): $(sql -c "SELECT coalesce(helper_problem, '') FROM fpw_pushdown.status()")"
        fi
        sleep 0.2
    done
    # The work directory goes with the cleanup: keep the helper's log where it can be read.
    mkdir -p "$here/out"
    local kept
    kept="$here/out/fpw-helper-$(date -u +%Y%m%dT%H%M%SZ).log"
    cp "$work/helper.log" "$kept" 2>/dev/null || kept="(no log)"
    log "the redo helper did not become healthy in 10 minutes; its log: $kept"
    return 1
}
helper_detach() { helper_stop; }
# Waits until the helper has made durable and indexed all WAL written so far and its image
# queue is empty.
helper_caught_up() {
    local target f
    target=$(sql -c "SELECT pg_current_wal_flush_lsn()")
    for _ in $(seq 1 3000); do
        f=$(status | json_field flush_lsn)
        if [ -n "$f" ] && [ "$(sql -c "SELECT '$f'::pg_lsn >= '$target'::pg_lsn")" = t ] &&
            [ "$(status | json_field imagegen_queue_depth)" = 0 ]; then
            return 0
        fi
        sleep 0.2
    done
    log "the helper has not caught up after 10 minutes; measuring anyway"
}

# The streaming client (the helper, or pg_receivewal) has flushed the WAL written so far.
client_caught_up() {
    if [ -n "${HELPER_PID:-}" ]; then
        helper_caught_up
        return
    fi
    local target
    target=$(sql -c "SELECT pg_current_wal_flush_lsn()")
    for _ in $(seq 1 600); do
        [ "$(sql -c "SELECT coalesce(bool_and(flush_lsn >= '$target'), true) FROM pg_stat_replication")" = t ] && return 0
        sleep 0.1
    done
    log "the streaming client has not caught up after a minute; measuring anyway"
}

set_mode() {
    local m=$1
    case $m in
    on | lz4 | zstd)
        sql -c "SELECT fpw_pushdown.enable_full_page_writes()" >/dev/null
        sql -c "ALTER SYSTEM SET wal_compression = '$([ "$m" = on ] && echo off || echo "$m")'" -c "SELECT pg_reload_conf()" >/dev/null
        ;;
    off | rw)
        sql -c "ALTER SYSTEM SET wal_compression = off" -c "SELECT pg_reload_conf()" >/dev/null
        sql -c "SELECT fpw_pushdown.disable_full_page_writes(force => true)" >/dev/null 2>&1
        ;;
    helper | helper_b)
        sql -c "ALTER SYSTEM SET wal_compression = off" -c "SELECT pg_reload_conf()" >/dev/null
        sql -c "SELECT fpw_pushdown.disable_full_page_writes()" >/dev/null
        ;;
    esac
    sleep 0.3
}

workload_args() {
    case $1 in
    tpcb) echo "-b tpcb-like" ;;
    tpcc) echo "-D warehouses=$warehouses -f $here/tpcc/new_order.sql@45 -f $here/tpcc/payment.sql@43" ;;
    index)
        case $index_txn in
        steady) echo "-D rows=$index_rows -f $here/redo-index/txn-steady.sql" ;;
        growing) echo "-f $here/redo-index/txn.sql" ;;
        esac ;;
    esac
}

# --- BENCH_PROFILE=1: where the compute's time goes, per run (a log line each) -------------
# Wait events: one psql session samples pg_stat_activity every 50 ms (the same cost in every
# mode), each server process counted by its type and wait event ("CPU" when it waits on
# nothing). The WAL flushes: pg_stat_wal's wal_sync and wal_sync_time (track_wal_io_timing is
# on with BENCH_PROFILE). The emulated volume: its loop device's completed reads and writes.
profile_start() {
    [ "$profile" = 1 ] || return 0
    PROFILE_OUT=$work/profile.samples
    # It stops by itself after the run's length (nothing to kill, and no job left behind).
    (for _ in $(seq 1 $((seconds * 20))); do
        echo "SELECT replace(backend_type, ' ', '_') || '/' || coalesce(wait_event_type || ':' || wait_event, 'CPU')
              FROM pg_stat_activity WHERE pid <> pg_backend_pid()
              AND (state = 'active' OR backend_type NOT IN ('client backend', 'autovacuum launcher', 'logical replication launcher'));"
        sleep 0.05
    done) | in_role "$PROFILE_PLACEMENT" load "$PGBIN/psql" -X -q -At -h 127.0.0.1 -p "$port" -U postgres -d postgres >"$PROFILE_OUT" 2>/dev/null &
    PROFILE_PID=$!
    PROFILE_SYNC0=$(sql -c "SELECT wal_sync || ' ' || wal_sync_time || ' ' || wal_write FROM pg_stat_wal")
    PROFILE_DEV0=$(profile_device)
    PROFILE_FLT0=$(profile_faults)
}
# Minor page faults of the storage side (the helper or pg_receivewal) so far: on this VM
# (nested, shadow paging) a fault is a trip to the hypervisor, whose page-table bookkeeping
# both CPUs share.
profile_faults() {
    local pid=${HELPER_PID:-$RW_PID}
    { [ -n "$pid" ] && awk '{print $10}' "/proc/$pid/stat" 2>/dev/null; } || echo 0
}
# "reads writes" completed on the emulated volume's loop device (- - on another device).
profile_device() {
    if [ -n "$volume_loop" ]; then awk '{print $1, $5}' "/sys/block/$(basename "$volume_loop")/stat"; else echo "- -"; fi
}
# profile_stop LABEL TXNS: ends the sampler and logs the run's profile.
profile_stop() {
    [ "$profile" = 1 ] || return 0
    local label=$1 txns=$2 sync1 dev1
    wait "$PROFILE_PID" 2>/dev/null
    sync1=$(sql -c "SELECT wal_sync || ' ' || wal_sync_time || ' ' || wal_write FROM pg_stat_wal")
    dev1=$(profile_device)
    local flt1 waits
    flt1=$(profile_faults)
    waits=$(sort "$PROFILE_OUT" | uniq -c | sort -rn | head -12 | awk '{printf "%s%s %d", (NR > 1 ? ", " : ""), $2, $1}')
    log "profile $label: $(awk -v a="$PROFILE_SYNC0" -v b="$sync1" -v d0="$PROFILE_DEV0" -v d1="$dev1" -v t="$txns" 'BEGIN{
        split(a, x, " "); split(b, y, " "); split(d0, p, " "); split(d1, q, " ");
        n = y[1] - x[1]; printf "WAL flushes %d (%.3f/txn), mean flush %.3f ms, WAL writes %.3f/txn", n, n / t, n ? (y[2] - x[2]) / n : 0, (y[3] - x[3]) / t;
        if (p[1] != "-") printf ", volume reads %.3f/txn, writes %.3f/txn", (q[1] - p[1]) / t, (q[2] - p[2]) / t }'); minor faults of the storage side $(((flt1 - PROFILE_FLT0) / seconds))/s"
    log "profile $label: samples of server processes (type/wait: count over $(grep -c "^" "$PROFILE_OUT" 2>/dev/null) rows): $waits"
}

# measure WORKLOAD PLACEMENT MODE ROUND →
#   "tps wal_bytes_per_txn new_order_tpm pg_cpu bench_cpu load_cpu fpi_share latency_ms
#    walsender_cpu wal_fsyncs_per_txn"
# (CPU in CPUs: 1.00 is one CPU busy for the whole run; fpi_share from pg_waldump --stats,
# first round only; walsender_cpu: the streaming client's walsender, part of pg_cpu; the
# fsyncs are pg_stat_wal's wal_sync, commits' and the WAL writer's.)
measure() {
    local w=$1 p=$2 m=$3 round=$4 lsn0 lsn1 out t0 t1 c0 c1 b0 b1 l0 l1 ws ws0=- ws1=- sync0 sync1 st0 st1
    if [[ $vacuum_workloads == *" $w "* ]]; then
        sql -c "VACUUM" >/dev/null
        sql -c "CHECKPOINT" >/dev/null
        client_caught_up
    else
        sql -c "CHECKPOINT" >/dev/null
    fi
    ws=$(sql -c "SELECT pid FROM pg_stat_replication LIMIT 1")
    [ -n "$ws" ] && ws0=$(proc_ticks "$ws")
    sleep 1.1 # pg_stat_wal: backends report at most once a second
    sync0=$(sql -c "SELECT wal_sync FROM pg_stat_wal")
    lsn0=$(sql -c "SELECT pg_current_wal_lsn()")
    c0=$(cpu_ns "$p" pg)
    b0=$(cpu_ns "$p" bench)
    l0=$(cpu_ns "$p" load)
    PROFILE_PLACEMENT=$p profile_start
    st0=$(steal_ticks)
    t0=$(date +%s%N)
    # shellcheck disable=SC2046
    out=$(in_role "$p" bench "$PGBIN/pgbench" -h 127.0.0.1 -p "$port" -U postgres -n -M prepared -c "$clients" -j 1 \
        -T "$seconds" $(workload_args "$w") postgres 2>&1) || { echo "$out" >&2; return 1; }
    t1=$(date +%s%N)
    st1=$(steal_ticks)
    c1=$(cpu_ns "$p" pg)
    b1=$(cpu_ns "$p" bench)
    l1=$(cpu_ns "$p" load)
    lsn1=$(sql -c "SELECT pg_current_wal_lsn()")
    [ -n "$ws" ] && ws1=$(proc_ticks "$ws")
    sleep 1.1
    sync1=$(sql -c "SELECT wal_sync FROM pg_stat_wal")
    local txns tps bytes nopm fpi=- pgcpu=- benchcpu=- loadcpu=- lat wscpu=-
    lat=$(echo "$out" | sed -n 's/^latency average = \([0-9.]*\) ms/\1/p')
    if [ "$ws0" != - ] && [ "$ws1" != - ]; then
        wscpu=$(awk -v a="$ws0" -v b="$ws1" -v hz="$(getconf CLK_TCK)" -v t="$((t1 - t0))" 'BEGIN{printf "%.2f", (b - a) / hz / (t / 1e9)}')
    fi
    txns=$(echo "$out" | sed -n 's/^number of transactions actually processed: \([0-9]*\).*/\1/p')
    profile_stop "$w, $p, $m, round $round" "${txns:-1}"
    tps=$(echo "$out" | sed -n 's/^tps = \([0-9]*\.[0-9]\).* (without initial connection time)/\1/p')
    # pgbench's per-script summary: the first script is new_order.sql.
    nopm=$(echo "$out" | awk '/^SQL script 1:/ {s = 1} s && /transactions \(/ {sub(/.*tps = /, ""); sub(/\).*/, ""); printf "%.0f", $0 * 60; exit}')
    bytes=$(sql -c "SELECT '$lsn1'::pg_lsn - '$lsn0'::pg_lsn")
    if [ "$c0" != - ]; then
        pgcpu=$(awk -v a="$c0" -v b="$c1" -v t="$((t1 - t0))" 'BEGIN{printf "%.2f", (b - a) / t}')
        benchcpu=$(awk -v a="$b0" -v b="$b1" -v t="$((t1 - t0))" 'BEGIN{printf "%.2f", (b - a) / t}')
        loadcpu=$(awk -v a="$l0" -v b="$l1" -v t="$((t1 - t0))" 'BEGIN{printf "%.2f", (b - a) / t}')
    fi
    if [ "$round" = 1 ]; then
        # Right after the run its segments are still in pg_wal (the next CHECKPOINT may
        # recycle them). The Total line: "Total N R [r%] F [f%] T [100%]".
        fpi=$(as_postgres "$PGBIN/pg_waldump" -p "$cdir/data/pg_wal" -s "$lsn0" -e "$lsn1" --stats 2>/dev/null |
            awk '/^Total/ {for (i = 1; i <= NF; i++) if ($i ~ /^\[/) {n++; if (n == 2) {gsub(/[\[\]%]/, "", $i); print $i; exit}}}')
        fpi=${fpi:--}
    fi
    awk -v b="$bytes" -v t="$txns" -v tps="$tps" -v n="${nopm:--}" -v c="$pgcpu" -v g="$benchcpu" -v l="$loadcpu" \
        -v f="$fpi" -v lat="${lat:--}" -v ws="$wscpu" -v s="$((sync1 - sync0))" \
        -v st0="$st0" -v st1="$st1" -v hz="$(getconf CLK_TCK)" -v el="$((t1 - t0))" \
        'BEGIN{split(st0, x, " "); split(st1, y, " "); d = el / 1e9 * hz / 100
               printf "%s %.0f %s %s %s %s %s %s %s %.2f %.1f %.1f\n", tps, b / t, n, c, g, l, f, lat, ws, s / t,
                   (y[1] - x[1]) / d, (y[2] - x[2]) / d}'
}

# --- one workload ----------------------------------------------------------------------------
# Results: R[w,p,m,round] = measure's line
declare -A R
load_workload() {
    local w=$1
    case $w in
    tpcb)
        log "tpcb: pgbench -i -s $scale"
        "$PGBIN/pgbench" -h 127.0.0.1 -p "$port" -U postgres -i -s "$scale" -q postgres >"$work/init.log" 2>&1
        ;;
    tpcc)
        log "tpcc: loading $warehouses warehouses"
        sql -v warehouses="$warehouses" -f "$here/tpcc/schema.sql" >/dev/null
        ;;
    index)
        log "index: loading $index_rows documents"
        sql -v rows="$index_rows" -v gin=1 -f "$here/redo-index/schema.sql" >/dev/null
        ;;
    esac
    sql -c "VACUUM ANALYZE" >/dev/null
}

run_workload() {
    local w=$1 p m round i n=${#modes[@]}
    cdir="$(compute_root)/cluster-$w"
    port=$(free_port)
    hport=$(free_port)
    cluster_init "$cdir" "$port"
    cluster_conf "$cdir" "wal_level = replica" "shared_preload_libraries = 'fpw_pushdown'" "max_wal_senders = 6" \
        "max_replication_slots = 6" "fpw_pushdown.autopilot = off" "autovacuum = off" \
        "track_wal_io_timing = $([ "$profile" = 1 ] && echo on || echo off)"
    cluster_start "$cdir"
    # shellcheck disable=SC2046
    volume_place $(pg_pids)
    sql -c "CREATE EXTENSION fpw_pushdown" >/dev/null
    load_workload "$w"
    for p in "${placements[@]}"; do
        # A helper of this placement's own, on its storage: bootstrapped afresh (the slot of
        # the placement before is dropped first).
        sql -c "SELECT pg_drop_replication_slot('fpw_pushdown')" >/dev/null 2>&1 || true
        rm -rf "$(storage_dir "$p")/helper"
        log "$w, $p: the helper bootstraps into $(storage_dir "$p")"
        helper_attach "$p"
        helper_caught_up
        sql -c "SELECT fpw_pushdown.enable_full_page_writes()" >/dev/null
        helper_detach
        # shellcheck disable=SC2046
        place "$p" pg $(pg_pids)
        volume_kthreads_place "$p"
        log "$w, $p: warm-up (not recorded)"
        set_mode on
        measure "$w" "$p" on 0 >/dev/null
        if [ "$catch_up_between" = 1 ]; then
            helper_attach "$p" && helper_caught_up
            helper_detach
        fi
        for round in $(seq 1 "$rounds"); do
            for i in $(seq 0 $((n - 1))); do
                m=${modes[$(((i + round - 1) % n))]}
                case $m in
                helper | helper_b)
                    log "$w, $p, round $round: attaching the helper ($m), catching up"
                    # As for a streaming client that fails to start: this round goes without
                    # a helper run (the report leaves it out), not the whole benchmark.
                    if ! helper_attach "$p" "$([ "$m" = helper_b ] && echo "$helper_bin_b" || echo "$helper_bin")"; then
                        log "$w, $p, round $round: helper skipped (not healthy)"
                        helper_detach
                        continue
                    fi
                    helper_caught_up
                    ;;
                on | lz4 | zstd | rw)
                    # One failed start costs this run, not the whole benchmark: the report
                    # leaves the round out for this mode (and its ratios).
                    if ! rw_start "$p" && ! { rw_stop && rw_start "$p"; }; then
                        log "$w, $p, round $round: $m skipped (pg_receivewal did not stream twice)"
                        rw_stop
                        continue
                    fi
                    ;;
                esac
                set_mode "$m"
                log "$w, $p, round $round: $m (${seconds}s)"
                R[$w,$p,$m,$round]=$(measure "$w" "$p" "$m" "$round")
                rw_stop
                if [ "$m" = helper ] || [ "$m" = helper_b ]; then
                    sql -c "SELECT fpw_pushdown.enable_full_page_writes()" >/dev/null
                    helper_detach
                elif [ "$catch_up_between" = 1 ]; then
                    # The detached helper's slot holds this run's WAL: left so, the next
                    # run's CHECKPOINT recycles no segment and PostgreSQL zero-fills new
                    # ones on the compute's device, a cost of the benchmark that only the
                    # modes without the helper would pay. Not measured.
                    log "$w, $p, round $round: the helper catches up on the $m run's WAL (not measured)"
                    helper_attach "$p" && helper_caught_up
                    helper_detach
                fi
            done
        done
        # What the helper stores for the WAL it keeps (--retain): its images beside its WAL.
        local hd images_b wal_b
        hd="$(storage_dir "$p")/helper"
        images_b=$(du -sb "$hd/images" 2>/dev/null | cut -f1)
        wal_b=$(du -sb "$hd/wal" 2>/dev/null | cut -f1)
        log "$w, $p: the helper's store after the rounds: images ${images_b:-0} bytes, WAL ${wal_b:-0} bytes ($(awk -v i="${images_b:-0}" -v w="${wal_b:-0}" 'BEGIN {printf "%.2f", (w > 0 ? i / w : 0)}') bytes of images per byte of WAL)"
        # shellcheck disable=SC2046
        place shared pg $(pg_pids)
    done
    report "$w"
    sql -c "SELECT pg_drop_replication_slot('fpw_pushdown')" >/dev/null 2>&1 || true
    cluster_remove "$cdir"
    rm -rf "$(storage_dir separated)/helper" "$(storage_dir shared)/helper"
    cdir=""
}

# --- the report ------------------------------------------------------------------------------
# stats "v v v ..." [FORMAT] → "min median max ±spread%" (spread: the farthest value from the
# median, in % of the median), the
# values printed with FORMAT (default %.1f)
stats() {
    tr ' ' '\n' <<<"$1" | awk 'NF' | sort -g | awk -v f="${2:-%.1f}" '{v[NR] = $1}
        END {if (NR == 0) {print "- - - -"; exit}
             med = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2
             d = (v[NR] - med > med - v[1]) ? v[NR] - med : med - v[1]
             printf f " " f " " f " ±%.1f%%\n", v[1], med, v[NR], (med > 0 ? d / med * 100 : 0)}'
}
field() { awk -v k="$2" '{print $k}' <<<"$1"; }
label_of() {
    case $1 in
    on) echo "full_page_writes=on + pg_receivewal" ;;
    lz4) echo "on + lz4 + pg_receivewal" ;;
    zstd) echo "on + zstd + pg_receivewal" ;;
    off) echo "off alone (no streaming client)" ;;
    rw) echo "off + pg_receivewal --synchronous" ;;
    helper) echo "off + redo helper" ;;
    helper_b) echo "off + redo helper, build B" ;;
    esac
}
report() {
    local w=$1 p m round vals k
    for p in "${placements[@]}"; do
        echo
        case $w in
        tpcb) echo "workload tpcb: pgbench TPC-B-like, scale $scale" ;;
        tpcc) echo "workload tpcc: TPC-C-like, $warehouses warehouses" ;;
        index) echo "workload index: bench/redo-index, $index_rows rows, transactions $index_txn" ;;
        esac
        case $p in
        separated) echo "placement separated: PostgreSQL and pgbench on CPU 0; the streaming client or the helper on CPU 1" ;;
        shared) echo "placement shared: everything on both CPUs" ;;
        esac
        case $compute in
        disk) echo "compute device: the VM's disk" ;;
        volume) echo "compute device: an emulated volume, $device_iops IOPS and $device_mbps MiB/s each way (blkio-throttled loop device in memory)" ;;
        tmpfs) echo "compute device: tmpfs (no device limits: CPU-bound)" ;;
        esac
        echo "$clients clients, ${seconds}s per run, $rounds rounds (modes alternating), each run after a CHECKPOINT; pgbench -M prepared -j 1"
        echo "medians over the rounds except TPS; CPU in CPUs (pg includes the walsender); latency: pgbench's average"
        printf '%-38s %26s %7s %9s %9s %9s %7s %8s %8s %8s %9s %10s\n' mode "TPS min/median/max" spread "WAL B/txn" "NOPM" "FPI share" \
            "pg CPU" "pgbench" "storage" walsender "lat ms" "fsyncs/txn"
        for m in "${modes[@]}"; do
            local tps="" bytes="" nopm="" pgc="" bnc="" ldc="" lat="" wsc="" fsy="" fpi
            for round in $(seq 1 "$rounds"); do
                vals=${R[$w,$p,$m,$round]:-}
                [ -n "$vals" ] || continue
                tps="$tps $(field "$vals" 1)"
                bytes="$bytes $(field "$vals" 2)"
                [ "$(field "$vals" 3)" != - ] && nopm="$nopm $(field "$vals" 3)"
                [ "$(field "$vals" 4)" != - ] && pgc="$pgc $(field "$vals" 4)"
                [ "$(field "$vals" 5)" != - ] && bnc="$bnc $(field "$vals" 5)"
                [ "$(field "$vals" 6)" != - ] && ldc="$ldc $(field "$vals" 6)"
                [ "$(field "$vals" 8)" != - ] && lat="$lat $(field "$vals" 8)"
                [ "$(field "$vals" 9)" != - ] && wsc="$wsc $(field "$vals" 9)"
                fsy="$fsy $(field "$vals" 10)"
            done
            fpi=$(field "${R[$w,$p,$m,1]:-- - - - - - - - - -}" 7)
            read -r t_min t_med t_max t_spread < <(stats "$tps")
            printf '%-38s %26s %7s %9s %9s %9s %7s %8s %8s %8s %9s %10s\n' "$(label_of "$m")" "$t_min/$t_med/$t_max" "$t_spread" \
                "$(stats "$bytes" %.0f | awk '{print $2}')" "$(stats "$nopm" %.0f | awk '{print $2}')" "${fpi}%" \
                "$(stats "$pgc" %.2f | awk '{print $2}')" "$(stats "$bnc" %.2f | awk '{print $2}')" "$(stats "$ldc" %.2f | awk '{print $2}')" \
                "$(stats "$wsc" %.2f | awk '{print $2}')" "$(stats "$lat" %.2f | awk '{print $2}')" "$(stats "$fsy" %.2f | awk '{print $2}')"
        done
        # TPS per round (round 1 first): drift over the rounds (tables growing) shows here,
        # and cancels in the per-round ratios below.
        for m in "${modes[@]}"; do
            local per=""
            for round in $(seq 1 "$rounds"); do per="$per $(field "${R[$w,$p,$m,$round]:--}" 1)"; done
            printf '  %-20s %-38s%s\n' "TPS per round," "$(label_of "$m"):" "$per"
        done
        # The host's steal per round (% of each CPU's time in the run, CPU 0 / CPU 1): a
        # round the hypervisor slowed shows here, not in the product's figures.
        for m in "${modes[@]}"; do
            local st=""
            for round in $(seq 1 "$rounds"); do
                vals=${R[$w,$p,$m,$round]:-}
                st="$st $([ -n "$vals" ] && echo "$(field "$vals" 11)/$(field "$vals" 12)" || echo -)"
            done
            printf '  %-20s %-38s%s\n' "steal % CPU 0/1," "$(label_of "$m"):" "$st"
        done
        # Per-round ratios of the helper to its peers, same round.
        for k in rw:"off + helper / off + pg_receivewal (target >= 0.97)" zstd:"off + helper / on + zstd" off:"off + helper / off alone" on:"off + helper / FPW on" \
            helper_b:"off + helper / off + helper build B"; do
            local peer=${k%%:*} ratios=""
            for round in $(seq 1 "$rounds"); do
                local a=${R[$w,$p,helper,$round]:-} b=${R[$w,$p,$peer,$round]:-}
                [ -n "$a" ] && [ -n "$b" ] || continue
                ratios="$ratios $(awk -v a="$(field "$a" 1)" -v b="$(field "$b" 1)" 'BEGIN{if (b > 0) printf "%.3f", a / b}')"
            done
            [ -n "$ratios" ] || continue
            read -r r_min r_med r_max r_spread < <(stats "$ratios" %.3f)
            printf '  %-56s min %s  median %s  max %s  spread %s  (per round:%s)\n' "${k#*:}" "$r_min" "$r_med" "$r_max" "$r_spread" "$ratios"
        done
        # The extension and the helper must add no WAL: WAL/txn of off + helper vs off alone.
        local wh="" wo=""
        for round in $(seq 1 "$rounds"); do
            [ -n "${R[$w,$p,helper,$round]:-}" ] && wh="$wh $(field "${R[$w,$p,helper,$round]}" 2)"
            [ -n "${R[$w,$p,off,$round]:-}" ] && wo="$wo $(field "${R[$w,$p,off,$round]}" 2)"
        done
        if [ -n "$wh" ] && [ -n "$wo" ]; then
            printf '  %-56s %s\n' "WAL/txn, off + helper / off alone (medians; target 1.00)" \
                "$(awk -v a="$(stats "$wh" | awk '{print $2}')" -v b="$(stats "$wo" | awk '{print $2}')" 'BEGIN{if (b > 0) printf "%.3f", a / b}')"
        fi
    done
}

log "placement by $([ "$use_cgroups" = 1 ] && echo "cgroup v1 cpuset + cpuacct" || echo "taskset (no CPU accounting)")"
for w in "${workloads[@]}"; do
    run_workload "$w"
done
