#!/usr/bin/env bash
# Starts and stops a one-process SeaweedFS (master, volume server, filer and S3 gateway:
# `weed server -s3`) on loopback or another address of this host, for the helper's
# object-storage tests and the demo.
#
#   scripts/seaweedfs.sh start DIR PORT [BUCKET]   S3 on 127.0.0.1:PORT; data, log and pid in DIR
#   scripts/seaweedfs.sh stop DIR                  SIGTERM, then SIGKILL after 30 s
#   scripts/seaweedfs.sh kill DIR                  SIGKILL (an outage; tests' clean-up)
#
# Ports: S3 on PORT, master PORT+1, volume PORT+2, filer PORT+3, and their gRPC ports
# PORT+4..PORT+7 (given explicitly: weed's default gRPC port is the HTTP port + 10000, which
# could collide with anything). The Iceberg and Lance side services are switched off.
#
# Credentials: with AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY set, the gateway accepts only
# that identity (an `-s3.config` identities file in DIR, mode 0600); without them it allows
# anonymous access (SeaweedFS's default), which only a throwaway local setup should use.
# BUCKET, when given, is created (a signed PUT with curl --aws-sigv4).
#
# SEAWEEDFS_IP: the address every server binds and advertises (default 127.0.0.1; the
# multi-host tests give a network namespace's address). SEAWEEDFS_TLS_CERT and
# SEAWEEDFS_TLS_KEY: the S3 gateway serves HTTPS with them (the helper refuses plain HTTP off
# loopback); this script then trusts the CA file AWS_CA_BUNDLE names, as the helper does.
#
# The binary: $WEED, else `weed` from the venv scripts/setup.sh installs
# (/opt/fpw_pushdown/seaweedfs), else `weed` on PATH.
set -euo pipefail

usage() {
    echo "usage: $0 start DIR PORT [BUCKET] | stop DIR | kill DIR" >&2
    exit 2
}

weed_binary() {
    if [ -n "${WEED:-}" ]; then
        echo "$WEED"
    elif [ -x /opt/fpw_pushdown/seaweedfs/bin/weed ]; then
        echo /opt/fpw_pushdown/seaweedfs/bin/weed
    elif command -v weed >/dev/null; then
        command -v weed
    else
        echo "seaweedfs.sh: no weed binary (run scripts/setup.sh)" >&2
        exit 1
    fi
}

start() {
    local dir=$1 port=$2 bucket=${3:-}
    local weed
    weed=$(weed_binary)
    mkdir -p "$dir/data"
    dir=$(cd "$dir" && pwd)
    if [ -f "$dir/weed.pid" ] && kill -0 "$(cat "$dir/weed.pid")" 2>/dev/null; then
        echo "seaweedfs.sh: already running in $dir (pid $(cat "$dir/weed.pid"))" >&2
        exit 1
    fi
    local ip=${SEAWEEDFS_IP:-127.0.0.1} scheme=http
    local tls=() trust=()
    if [ -n "${SEAWEEDFS_TLS_CERT:-}" ] || [ -n "${SEAWEEDFS_TLS_KEY:-}" ]; then
        if [ -z "${SEAWEEDFS_TLS_CERT:-}" ] || [ -z "${SEAWEEDFS_TLS_KEY:-}" ]; then
            echo "seaweedfs.sh: SEAWEEDFS_TLS_CERT and SEAWEEDFS_TLS_KEY go together" >&2
            exit 2
        fi
        scheme=https
        tls=(-s3.cert.file="$SEAWEEDFS_TLS_CERT" -s3.key.file="$SEAWEEDFS_TLS_KEY")
        if [ -n "${AWS_CA_BUNDLE:-}" ]; then
            trust=(--cacert "$AWS_CA_BUNDLE")
        fi
    fi
    local config=()
    if [ -n "${AWS_ACCESS_KEY_ID:-}" ] && [ -n "${AWS_SECRET_ACCESS_KEY:-}" ]; then
        (
            umask 077
            printf '{"identities":[{"name":"fpw_pushdown","credentials":[{"accessKey":"%s","secretKey":"%s"}],"actions":["Admin","Read","Write","List","Tagging"]}]}\n' \
                "$AWS_ACCESS_KEY_ID" "$AWS_SECRET_ACCESS_KEY" >"$dir/s3.json"
        )
        config=(-s3.config="$dir/s3.json")
    fi
    # setsid: its own process group, so that a test's Ctrl-C does not reach it half-way.
    setsid "$weed" server -s3 \
        -dir="$dir/data" -ip="$ip" -ip.bind="$ip" \
        -master.port=$((port + 1)) -master.port.grpc=$((port + 4)) \
        -volume.port=$((port + 2)) -volume.port.grpc=$((port + 5)) \
        -filer.port=$((port + 3)) -filer.port.grpc=$((port + 6)) \
        -s3.port="$port" -s3.port.grpc=$((port + 7)) \
        -s3.port.iceberg=0 -s3.port.lance=0 \
        -filer.localSocket="$dir/filer.sock" -s3.localSocket="$dir/s3.sock" \
        -master.volumeSizeLimitMB=256 -volume.max=0 -master.telemetry=false \
        "${config[@]}" "${tls[@]}" >"$dir/weed.log" 2>&1 </dev/null &
    echo $! >"$dir/weed.pid"
    echo "$port" >"$dir/weed.port"
    # Serving S3 takes ~10 s (the master elects itself, the volume server registers).
    local deadline=$((SECONDS + 60))
    local url="$scheme://$ip:$port"
    until curl -s -o /dev/null "${trust[@]}" "$url/"; do
        if ! kill -0 "$(cat "$dir/weed.pid")" 2>/dev/null; then
            echo "seaweedfs.sh: weed exited; see $dir/weed.log" >&2
            tail -20 "$dir/weed.log" >&2
            exit 1
        fi
        if [ $SECONDS -ge $deadline ]; then
            echo "seaweedfs.sh: S3 not serving on port $port after 60 s; see $dir/weed.log" >&2
            stop "$dir" now
            exit 1
        fi
        sleep 0.5
    done
    if [ -n "$bucket" ]; then
        local auth=()
        if [ ${#config[@]} -gt 0 ]; then
            auth=(--aws-sigv4 "aws:amz:${AWS_REGION:-us-east-1}:s3" --user "$AWS_ACCESS_KEY_ID:$AWS_SECRET_ACCESS_KEY")
        fi
        # The filer may need a moment more before a bucket can be created: no answer or a 5xx
        # is retried until the deadline. Any other refusal (400: an invalid bucket name, 403:
        # wrong credentials) is permanent and ends the script at once, with S3's answer.
        local code body="$dir/create-bucket.xml"
        until code=$(curl -s -o "$body" -w '%{http_code}' -X PUT "${trust[@]}" "${auth[@]}" "$url/$bucket") &&
            { [ "$code" = 200 ] || [ "$code" = 409 ]; }; do
            case $code in
            000 | 5??) ;;
            *)
                echo "seaweedfs.sh: cannot create bucket $bucket (HTTP $code): $(cat "$body" 2>/dev/null)" >&2
                stop "$dir" now
                exit 1
                ;;
            esac
            if [ $SECONDS -ge $deadline ]; then
                echo "seaweedfs.sh: cannot create bucket $bucket (HTTP $code)" >&2
                stop "$dir" now
                exit 1
            fi
            sleep 0.5
        done
        rm -f "$body"
    fi
    echo "seaweedfs.sh: S3 on $url (pid $(cat "$dir/weed.pid"), log $dir/weed.log)"
}

stop() {
    local dir=$1 now=${2:-}
    [ -f "$dir/weed.pid" ] || return 0
    local pid
    pid=$(cat "$dir/weed.pid")
    if [ -n "$now" ]; then
        kill -KILL "$pid" 2>/dev/null || true
        local until=$((SECONDS + 10))
        while kill -0 "$pid" 2>/dev/null && [ $SECONDS -lt $until ]; do sleep 0.1; done
    elif kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid" 2>/dev/null || true
        # weed can take more than 10 s to exit on SIGTERM.
        local deadline=$((SECONDS + 30))
        while kill -0 "$pid" 2>/dev/null && [ $SECONDS -lt $deadline ]; do sleep 0.2; done
        kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$dir/weed.pid"
    # weed puts its gRPC sockets in /tmp, named by port, whatever its flags say.
    if [ -f "$dir/weed.port" ]; then
        local port i
        port=$(cat "$dir/weed.port")
        for i in 4 5 6 7; do
            rm -f /tmp/seaweedfs-*-grpc-$((port + i)).sock
        done
        rm -f "$dir/weed.port"
    fi
}

case "${1:-}" in
start)
    [ $# -ge 3 ] || usage
    start "$2" "$3" "${4:-}"
    ;;
stop)
    [ $# -ge 2 ] || usage
    stop "$2"
    ;;
kill)
    [ $# -ge 2 ] || usage
    stop "$2" now
    ;;
*) usage ;;
esac
