#!/usr/bin/env bash
# `make install` beside a running cluster: the cluster stays up (same postmaster), and the
# target installs no package and runs no setup, only builds and copies (into a DESTDIR here,
# so the machine's own directories are not changed by the test).
set -euo pipefail
cd "$(dirname "$0")/.."
fail() { echo "test-install: FAIL: $*" >&2; exit 1; }
tmp=$(mktemp -d /tmp/fpw-test-install.XXXXXX)
chmod 0755 "$tmp"
bin=/usr/lib/postgresql/15/bin
cleanup() {
    runuser -u postgres -- "$bin/pg_ctl" -D "$tmp/data" -m immediate -w stop >/dev/null 2>&1 || true
    rm -rf "$tmp"
}
trap cleanup EXIT

make -n install | grep -E 'setup\.sh|apt-get|pg_ctl|pg_ctlcluster|systemctl' \
    && fail "make install would run the above"

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
chown postgres: "$tmp"
runuser -u postgres -- "$bin/initdb" -A trust -U postgres --no-sync -D "$tmp/data" >/dev/null
printf "listen_addresses = ''\nunix_socket_directories = '%s'\nport = %s\n" "$tmp" "$port" \
    >>"$tmp/data/postgresql.conf"
runuser -u postgres -- "$bin/pg_ctl" -D "$tmp/data" -l "$tmp/log" -w start >/dev/null
pid_before=$(head -1 "$tmp/data/postmaster.pid")
clusters_before=$(pg_lsclusters -h 2>/dev/null || true)

make install DESTDIR="$tmp/dest" >"$tmp/make.log" 2>&1 || fail "make install: $(tail -20 "$tmp/make.log")"

[ -x "$tmp/dest/usr/local/bin/redo-helper" ] || fail "no \$DESTDIR/usr/local/bin/redo-helper"
[ -f "$tmp/dest/usr/lib/postgresql/15/lib/fpw_pushdown.so" ] || fail "no fpw_pushdown.so"
[ -f "$tmp/dest/usr/share/postgresql/15/extension/fpw_pushdown.control" ] || fail "no control file"
runuser -u postgres -- "$bin/pg_ctl" -D "$tmp/data" status >/dev/null || fail "the cluster stopped"
[ "$(head -1 "$tmp/data/postmaster.pid")" = "$pid_before" ] || fail "the postmaster changed"
runuser -u postgres -- "$bin/psql" -h "$tmp" -p "$port" -U postgres -XAtqc 'SELECT 1' >/dev/null \
    || fail "the cluster does not answer"
[ "$(pg_lsclusters -h 2>/dev/null || true)" = "$clusters_before" ] || fail "pg_lsclusters changed"
echo "test-install: passed"
