# shellcheck shell=bash
# Throwaway PostgreSQL 15 clusters for tests, the demo and benchmarks.
# Source this file. PostgreSQL refuses to run as root, so every server binary runs as the
# `postgres` OS user in a directory that user owns; clients (psql, pgbench) may run as root.

PGBIN=${PGBIN:-/usr/lib/postgresql/15/bin}

as_postgres() {
    if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

# A TCP port on 127.0.0.1 that nothing listens on.
free_port() {
    local port
    for _ in $(seq 1 200); do
        port=$((20000 + RANDOM % 20000))
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            echo "$port"
            return 0
        fi
    done
    echo "no free port found" >&2
    return 1
}

# cluster_init DIR PORT [initdb args...]: a new cluster listening on loopback only.
cluster_init() {
    local dir=$1 port=$2
    shift 2
    mkdir -p "$dir"
    chown postgres:postgres "$dir"
    chmod 700 "$dir"
    as_postgres "$PGBIN/initdb" -D "$dir/data" -U postgres -A trust --no-sync "$@" >"$dir/initdb.log" 2>&1 || {
        cat "$dir/initdb.log" >&2
        return 1
    }
    cat >>"$dir/data/postgresql.conf" <<CONF
# --- fpw_pushdown test cluster ---
port = $port
listen_addresses = '127.0.0.1'
unix_socket_directories = '$dir'
logging_collector = off
log_line_prefix = '%m [%p] %b '
fsync = on
shared_buffers = 128MB
max_wal_size = 1GB
CONF
    # Replication connections over loopback (trust: throwaway clusters only).
    echo "host replication all 127.0.0.1/32 trust" >>"$dir/data/pg_hba.conf"
}

# cluster_conf DIR 'setting = value' ...
cluster_conf() {
    local dir=$1
    shift
    for line in "$@"; do echo "$line" >>"$dir/data/postgresql.conf"; done
}

cluster_start() {
    as_postgres "$PGBIN/pg_ctl" -D "$1/data" -l "$1/server.log" -w -t 60 start >/dev/null || {
        tail -n 30 "$1/server.log" >&2
        return 1
    }
}

cluster_stop() {
    [ -f "$1/data/postmaster.pid" ] || return 0
    as_postgres "$PGBIN/pg_ctl" -D "$1/data" -w -t 60 -m fast stop >/dev/null 2>&1 ||
        as_postgres "$PGBIN/pg_ctl" -D "$1/data" -m immediate stop >/dev/null 2>&1 || true
}

cluster_remove() {
    cluster_stop "$1"
    rm -rf "$1"
}

# --- the redo helper, for the demo and benchmarks ---

# helper_start BIN DATA_DIR PG_PORT LISTEN_PORT LOG [extra run args...]: starts
# `redo-helper run` in the background (HELPER_PID) and waits until it streams. Its API is on
# DATA_DIR/api.sock and, with the token in DATA_DIR/api.token, on 127.0.0.1:LISTEN_PORT
# (HELPER_DATA remembers the directory for helper_curl).
helper_start() {
    local bin=$1 data=$2 pgport=$3 hport=$4 logf=$5
    shift 5
    HELPER_DATA=$data
    "$bin" run --connect "host=127.0.0.1 port=$pgport user=postgres" --data-dir "$data" \
        --listen "127.0.0.1:$hport" "$@" >"$logf" 2>&1 &
    HELPER_PID=$!
    for _ in $(seq 1 1200); do
        [ "$(helper_status "$hport" | json_field state)" = streaming ] && return 0
        kill -0 "$HELPER_PID" 2>/dev/null || break
        sleep 0.1
    done
    echo "redo-helper did not reach streaming; its log:" >&2
    cat "$logf" >&2
    return 1
}

helper_stop() {
    if [ -n "${HELPER_PID:-}" ]; then
        kill "$HELPER_PID" 2>/dev/null
        wait "$HELPER_PID" 2>/dev/null || true
        HELPER_PID=""
    fi
}

# helper_curl ARGS...: curl with the started helper's API token (TCP listener).
helper_curl() { curl -H "Authorization: Bearer $(cat "$HELPER_DATA/api.token" 2>/dev/null)" "$@"; }

helper_status() { helper_curl -s "http://127.0.0.1:$1/status"; }

# helper_token_for_postgres DEST: a copy of the helper's token that the postgres OS user can
# read (0600, owned by postgres), for fpw_pushdown.helper_token_file when the helper runs as
# another user (here: root).
helper_token_for_postgres() {
    install -o postgres -g postgres -m 600 "$HELPER_DATA/api.token" "$1"
}

# json_field NAME: the first scalar "NAME": value in pretty-printed JSON on stdin;
# json_field NAME SECTION: the same inside the object "SECTION": { ... }.
json_field() {
    if [ $# -gt 1 ]; then sed -n "/\"$2\"/,/}/p"; else cat; fi |
        sed -n "s/^ *\"$1\": \"\{0,1\}\([^\",]*\)\"\{0,1\},\{0,1\}$/\1/p" | head -1
}
