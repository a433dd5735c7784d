#!/usr/bin/env bash
# Soak tests of issue 18 (not part of `make test`; results in bench/README.md).
#
#   SOAK=kill ROUNDS=50 bash bench/soak.sh    # helper kill -9 under pgbench load
#   SOAK=crash ROUNDS=20 bash bench/soak.sh   # PostgreSQL crash + sector-granular tears
#   KEEP=1 ...                                # keep the work directory (path printed)
#   NO_REPAIR=1 SOAK=crash ...                # the control: skip repair (a round must fail)
#
# kill: a cluster with data checksums and full_page_writes = off runs pgbench (2 clients)
#   for the whole soak while the helper is killed with SIGKILL after a random 1-5 s and
#   started again, ROUNDS times; each round the restarted helper must catch up with the
#   server's flush position. At the end the load stops, a CHECKPOINT, and
#   `redo-helper check` compares every page the helper serves with the data files: 0
#   mismatches, 0 unreadable, 0 errors.
# crash: each round a CHECKPOINT, a copy of the relation files as of it (the "old" pages),
#   3 s of pgbench, an immediate stop (a crash). A copy of the crashed directory recovers
#   untorn (the reference). In the crashed directory up to 8 pages written since the
#   checkpoint are torn sector by sector: each 512-byte sector from the old or the new page
#   at random (both kinds present, so in both directions). The helper is stopped, `repair`
#   runs, PostgreSQL recovers, and the pgbench tables must equal the reference's, with
#   amcheck (verify_heapam, bt_index_check heapallindexed) clean. The helper then streams on.
set -euo pipefail

SOAK=${SOAK:-kill}
case "$SOAK" in kill) ROUNDS=${ROUNDS:-50} ;; crash) ROUNDS=${ROUNDS:-20} ;; *)
    echo "SOAK must be kill or crash, not '$SOAK'" >&2
    exit 2
    ;;
esac
ROOT=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=../scripts/pg_cluster.sh
. "$ROOT/scripts/pg_cluster.sh"
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target-helper}
HELPER=$CARGO_TARGET_DIR/release/redo-helper
echo "building redo-helper (release)..." >&2
(cd "$ROOT" && cargo build -q -p redo-helper --release)

WORK=$(mktemp -d /tmp/fpw-soak.XXXXXX)
chmod 755 "$WORK"
PGPORT=$(free_port)
HPORT=$(free_port)
LOAD_PID=""
cleanup() {
    [ -n "$LOAD_PID" ] && kill "$LOAD_PID" 2>/dev/null || true
    helper_stop
    cluster_stop "$WORK/pg"
    cluster_stop "$WORK/ref"
    if [ "${KEEP:-0}" = 1 ]; then echo "kept $WORK" >&2; else rm -rf "$WORK"; fi
}
trap cleanup EXIT

PSQL=("$PGBIN/psql" -X -q -A -t -v ON_ERROR_STOP=1 -h 127.0.0.1 -U postgres)
sql() { "${PSQL[@]}" -p "$PGPORT" -d postgres -c "$1"; }
lsn_num() { sql "SELECT pg_wal_lsn_diff('$1', '0/0')::bigint"; }
DIGEST="SELECT md5(string_agg(x, '|')) FROM (
    (SELECT string_agg(aid || ':' || abalance, ',' ORDER BY aid) FROM pgbench_accounts)
    UNION ALL (SELECT string_agg(bid || ':' || bbalance, ',' ORDER BY bid) FROM pgbench_branches)
    UNION ALL (SELECT string_agg(tid || ':' || tbalance, ',' ORDER BY tid) FROM pgbench_tellers)
    UNION ALL (SELECT count(*)::text || ':' || coalesce(sum(delta), 0) FROM pgbench_history)) t(x)"
AMCHECK="SELECT (SELECT count(*) FROM verify_heapam('pgbench_accounts'))
    + (SELECT count(*) FROM verify_heapam('pgbench_branches'))
    + (SELECT count(*) FROM verify_heapam('pgbench_tellers'))
    + (SELECT count(*) FROM verify_heapam('pgbench_history')),
    bt_index_check('pgbench_accounts_pkey', true), bt_index_check('pgbench_branches_pkey', true),
    bt_index_check('pgbench_tellers_pkey', true)"

# Waits until the helper has decoded everything the server has flushed now.
catch_up() {
    local target now
    target=$(lsn_num "$(sql 'SELECT pg_current_wal_flush_lsn()')")
    for _ in $(seq 1 1200); do
        now=$(helper_status "$HPORT" | json_field decoded_lsn)
        if [ -n "$now" ] && [ "$(lsn_num "$now")" -ge "$target" ]; then return 0; fi
        kill -0 "$HELPER_PID" 2>/dev/null || break
        sleep 0.1
    done
    echo "the helper did not catch up; its log:" >&2
    tail -n 30 "$WORK/helper.log" >&2
    return 1
}

cluster_init "$WORK/pg" "$PGPORT" -k
# Small shared buffers and an eager background writer: pages changed since the checkpoint
# reach the disk before the crash (evictions), so there are written pages to tear.
cluster_conf "$WORK/pg" "full_page_writes = off" "wal_level = replica" "max_wal_senders = 10" \
    "autovacuum = off" "checkpoint_timeout = 1h" "shared_buffers = 4MB" \
    "bgwriter_delay = 10ms" "bgwriter_lru_maxpages = 1000"
cluster_start "$WORK/pg"
sql "CREATE EXTENSION amcheck"
"$PGBIN/pgbench" -q -i -s 5 -h 127.0.0.1 -p "$PGPORT" -U postgres postgres >/dev/null 2>&1
helper_start "$HELPER" "$WORK/helper" "$PGPORT" "$HPORT" "$WORK/helper.log"
started=$(date +%s)

if [ "$SOAK" = kill ]; then
    "$PGBIN/pgbench" -n -c 2 -T 100000 -h 127.0.0.1 -p "$PGPORT" -U postgres postgres \
        >"$WORK/pgbench.log" 2>&1 &
    LOAD_PID=$!
    for round in $(seq 1 "$ROUNDS"); do
        sleep "$((1 + RANDOM % 5))"
        kill -9 "$HELPER_PID"
        wait "$HELPER_PID" 2>/dev/null || true
        helper_start "$HELPER" "$WORK/helper" "$PGPORT" "$HPORT" "$WORK/helper.log.$round"
        cp "$WORK/helper.log.$round" "$WORK/helper.log"
        catch_up
        echo "round $round/$ROUNDS: killed, restarted, caught up ($(($(date +%s) - started)) s)" >&2
    done
    kill "$LOAD_PID"
    wait "$LOAD_PID" 2>/dev/null || true
    LOAD_PID=""
    sql "CHECKPOINT"
    catch_up
    helper_stop
    line=$("$HELPER" check --data-dir "$WORK/helper" --pgdata "$WORK/pg/data" --samples 500 | tail -n 1)
    echo "$line"
    echo "$line" | grep -q " 0 mismatches, .* 0 unreadable, 0 errors" || {
        echo "soak kill: check found differences" >&2
        exit 1
    }
    echo "soak kill: $ROUNDS rounds in $(($(date +%s) - started)) s, check clean"
    exit 0
fi

# --- crash ---
# Pages (relative file path, block) whose LSN is at or after $1 in the pgbench relations'
# main forks of the stopped cluster.
changed_pages() {
    local redo=$1 f rel
    for rel in pgbench_accounts pgbench_branches pgbench_tellers pgbench_history \
        pgbench_accounts_pkey pgbench_branches_pkey pgbench_tellers_pkey; do
        f=${REL_FILE[$rel]}
        python3 - "$WORK/pg/data/$f" "$redo" "$f" <<'PY'
import struct, sys
path, redo, name = sys.argv[1], int(sys.argv[2]), sys.argv[3]
with open(path, 'rb') as fh:
    blk = 0
    while True:
        page = fh.read(8192)
        if len(page) < 8192:
            break
        hi, lo = struct.unpack_from('<II', page, 0)
        if ((hi << 32) | lo) >= redo:
            print(name, blk)
        blk += 1
PY
    done
}

# tear FILE BLOCK: each 512-byte sector of the page from the old copy or the crashed file.
tear() {
    python3 - "$WORK/pg/data/$1" "$WORK/old/$1" "$2" <<'PY'
import random, sys
new_path, old_path, blk = sys.argv[1], sys.argv[2], int(sys.argv[3])
try:
    with open(old_path, 'rb') as fh:
        fh.seek(blk * 8192)
        old = fh.read(8192)
except FileNotFoundError:
    old = b''
if len(old) < 8192:
    old = bytes(8192)          # the page did not exist at the checkpoint: an unwritten one
with open(new_path, 'r+b') as fh:
    fh.seek(blk * 8192)
    new = fh.read(8192)
    while True:
        pick = [random.random() < 0.5 for _ in range(16)]
        if any(pick) and not all(pick):
            break
    torn = b''.join((old if p else new)[i * 512:(i + 1) * 512] for i, p in enumerate(pick))
    fh.seek(blk * 8192)
    fh.write(torn)
print(''.join('o' if p else 'n' for p in pick))
PY
}

declare -A REL_FILE
for rel in pgbench_accounts pgbench_branches pgbench_tellers pgbench_history \
    pgbench_accounts_pkey pgbench_branches_pkey pgbench_tellers_pkey; do
    REL_FILE[$rel]=$(sql "SELECT pg_relation_filepath('$rel')")
done
for round in $(seq 1 "$ROUNDS"); do
    sql "CHECKPOINT"
    redo=$(lsn_num "$(sql 'SELECT redo_lsn FROM pg_control_checkpoint()')")
    rm -rf "$WORK/old"
    mkdir -p "$WORK/old/base"
    cp -a "$WORK/pg/data/base/." "$WORK/old/base/"
    "$PGBIN/pgbench" -n -c 2 -T 3 -h 127.0.0.1 -p "$PGPORT" -U postgres postgres \
        >"$WORK/pgbench.log" 2>&1
    catch_up
    as_postgres "$PGBIN/pg_ctl" -D "$WORK/pg/data" -m immediate stop >/dev/null
    helper_stop
    # The reference: the same crash, recovered untorn.
    rm -rf "$WORK/ref"
    mkdir -p "$WORK/ref"
    cp -a "$WORK/pg/data" "$WORK/ref/data"
    chown -R postgres:postgres "$WORK/ref"
    REFPORT=$(free_port)
    sed -i "s/^port = .*/port = $REFPORT/; s|^unix_socket_directories = .*|unix_socket_directories = '$WORK/ref'|" \
        "$WORK/ref/data/postgresql.conf"
    cluster_start "$WORK/ref"
    want=$("${PSQL[@]}" -p "$REFPORT" -d postgres -c "$DIGEST")
    cluster_stop "$WORK/ref"
    # Tear up to 8 pages written since the checkpoint.
    mapfile -t pages < <(changed_pages "$redo" | shuf -n 8)
    shapes=()
    for p in "${pages[@]}"; do
        # shellcheck disable=SC2086
        shapes+=("$(tear $p)")
    done
    out="not run (NO_REPAIR=1)"
    if [ "${NO_REPAIR:-0}" != 1 ]; then
        out=$("$HELPER" repair --data-dir "$WORK/helper" --pgdata "$WORK/pg/data" 2>&1 | tail -n 1)
    fi
    if ! cluster_start "$WORK/pg" 2>"$WORK/start.err"; then
        echo "round $round: PostgreSQL did not recover; repair: $out" >&2
        tail -n 5 "$WORK/start.err" >&2
        exit 1
    fi
    got=$(sql "$DIGEST" 2>&1 || true)
    amcheck=$(sql "$AMCHECK" 2>&1 || true)
    if [ "$got" != "$want" ] || [ "${amcheck%%|*}" != 0 ]; then
        echo "round $round: tables $got, untorn recovery $want, amcheck $amcheck; repair: $out" >&2
        exit 1
    fi
    helper_start "$HELPER" "$WORK/helper" "$PGPORT" "$HPORT" "$WORK/helper.log"
    echo "round $round/$ROUNDS: ${#pages[@]} pages torn (${shapes[*]}), repaired, equal to the untorn recovery, amcheck clean ($(($(date +%s) - started)) s)" >&2
done
echo "soak crash: $ROUNDS rounds in $(($(date +%s) - started)) s, every round equal to the untorn recovery"
