#!/usr/bin/env bash
# `make test-deb` (after `make deb`): the packages install, work and remove.
# - redo-helper: dpkg -i on this machine; user, 0700 data directory, conffile, unit
#   (systemd-analyze verify), `redo-helper --version` and `config`; dpkg -r leaves the data
#   and the conffile, dpkg -P the data. What the test created (user, directory) is removed
#   at the end; it refuses to run if redo-helper is already installed.
# - postgresql-15-fpw-pushdown: unpacked (dpkg -x) into a fresh directory tree beside a copy
#   of PostgreSQL 15 (PostgreSQL finds its share and lib directories relative to its binary),
#   a cluster started from there, CREATE EXTENSION fpw_pushdown. The machine's own
#   PostgreSQL directories are not touched (other test runs may use them).
set -euo pipefail
cd "$(dirname "$0")/.."
version=$(awk -F'"' '/^version *=/ {print $2; exit}' Cargo.toml)
arch=$(dpkg --print-architecture)
ext_deb=target/debian/postgresql-15-fpw-pushdown_${version}-1_${arch}.deb
rh_deb=target/debian/redo-helper_${version}-1_${arch}.deb
fail() { echo "test-deb: FAIL: $*" >&2; exit 1; }
step() { echo "test-deb: $*"; }
[ -f "$ext_deb" ] && [ -f "$rh_deb" ] || fail "packages missing: run make deb"

tmp=$(mktemp -d /tmp/fpw-test-deb.XXXXXX)
chmod 0755 "$tmp"
user_before=$(getent passwd redo-helper || true)
dir_before=$([ -e /var/lib/redo-helper ] && echo yes || true)
pgctl=""
cleanup() {
    if [ -n "$pgctl" ]; then
        runuser -u postgres -- "$pgctl" -D "$tmp/data" -m immediate -w stop >/dev/null 2>&1 || true
    fi
    if dpkg-query -W -f='${Status}' redo-helper 2>/dev/null | grep -q installed; then
        dpkg -P redo-helper >/dev/null 2>&1 || true
    fi
    if [ -z "$user_before" ] && getent passwd redo-helper >/dev/null; then
        userdel redo-helper || true
        getent group redo-helper >/dev/null && groupdel redo-helper || true
    fi
    [ -z "$dir_before" ] && rm -rf /var/lib/redo-helper
    rm -rf "$tmp"
}
trap cleanup EXIT

step "contents"
# Listings captured first: `grep -q` closing a pipe early would fail it under pipefail.
rh_list=$(dpkg-deb -c "$rh_deb")
ext_list=$(dpkg-deb -c "$ext_deb")
has() { grep -q -- "$2" <<<"$1"; }
has "$rh_list" ' ./usr/bin/redo-helper$' || fail "no /usr/bin/redo-helper"
has "$rh_list" ' ./lib/systemd/system/redo-helper@.service$' || fail "no unit"
has "$rh_list" ' ./usr/share/doc/redo-helper/operations.md$' || fail "no docs"
has "$ext_list" '/usr/lib/postgresql/15/lib/fpw_pushdown.so$' || fail "no .so"
has "$ext_list" '/usr/share/postgresql/15/extension/fpw_pushdown.control$' \
    || fail "no control file"
has "$(dpkg-deb -f "$ext_deb" Depends)" 'postgresql-15' \
    || fail "extension does not depend on postgresql-15"
has "$(dpkg-deb -I "$rh_deb" conffiles)" '^/etc/redo-helper/main.toml$' \
    || fail "main.toml is no conffile"

step "redo-helper: dpkg -i"
if dpkg-query -W -f='${Status}' redo-helper 2>/dev/null | grep -q installed; then
    fail "redo-helper is already installed on this machine; not touching it"
fi
dpkg -i "$rh_deb" >/dev/null
[ "$(/usr/bin/redo-helper --version)" = "redo-helper $version" ] || fail "--version"
getent passwd redo-helper >/dev/null || fail "no redo-helper user"
[ "$(stat -c '%a %U' /var/lib/redo-helper)" = "700 redo-helper" ] \
    || fail "/var/lib/redo-helper is $(stat -c '%a %U' /var/lib/redo-helper)"
[ "$(stat -c '%a %U:%G' /etc/redo-helper/main.toml)" = "640 root:redo-helper" ] \
    || fail "main.toml is $(stat -c '%a %U:%G' /etc/redo-helper/main.toml)"
/usr/bin/redo-helper config --config /etc/redo-helper/main.toml >"$tmp/config.out" \
    || fail "the default configuration does not parse"
grep -q '^data-dir = "/var/lib/redo-helper/main"  # file' "$tmp/config.out" || fail "config output"
cp /lib/systemd/system/redo-helper@.service "$tmp/redo-helper@main.service"
systemd-analyze verify --man=no "$tmp/redo-helper@main.service" 2>"$tmp/verify.err" \
    || fail "systemd-analyze verify: $(cat "$tmp/verify.err")"
[ -s "$tmp/verify.err" ] && fail "systemd-analyze verify warns: $(cat "$tmp/verify.err")"
touch /var/lib/redo-helper/data-kept

step "redo-helper: dpkg -r, dpkg -P"
dpkg -r redo-helper >/dev/null
[ ! -e /usr/bin/redo-helper ] || fail "binary left after remove"
[ -e /var/lib/redo-helper/data-kept ] || fail "remove deleted the data"
[ -e /etc/redo-helper/main.toml ] || fail "remove deleted the conffile"
dpkg -P redo-helper >/dev/null
[ ! -e /etc/redo-helper/main.toml ] || fail "purge left the conffile"
[ -e /var/lib/redo-helper/data-kept ] || fail "purge deleted the data"

step "postgresql-15-fpw-pushdown: dpkg -x beside a copy of PostgreSQL 15, CREATE EXTENSION"
root=$tmp/root
mkdir -p "$root/usr/lib/postgresql" "$root/usr/share/postgresql"
cp -a /usr/lib/postgresql/15 "$root/usr/lib/postgresql/"
cp -a /usr/share/postgresql/15 "$root/usr/share/postgresql/"
# The copy must hold only the package's extension files (make install may have put some).
rm -f "$root/usr/lib/postgresql/15/lib/fpw_pushdown.so" \
    "$root"/usr/share/postgresql/15/extension/fpw_pushdown*
dpkg -x "$ext_deb" "$root"
[ -f "$root/usr/lib/postgresql/15/lib/fpw_pushdown.so" ] || fail "dpkg -x: no .so"
bin=$root/usr/lib/postgresql/15/bin
pgctl=$bin/pg_ctl
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
chown postgres: "$tmp"
runuser -u postgres -- "$bin/initdb" -A trust -U postgres --no-sync -D "$tmp/data" >/dev/null
cat >>"$tmp/data/postgresql.conf" <<CONF
listen_addresses = ''
unix_socket_directories = '$tmp'
port = $port
shared_preload_libraries = 'fpw_pushdown'
wal_level = replica
CONF
runuser -u postgres -- "$pgctl" -D "$tmp/data" -l "$tmp/log" -w start >/dev/null \
    || fail "cluster start: $(tail -5 "$tmp/log")"
psql() { runuser -u postgres -- "$bin/psql" -h "$tmp" -p "$port" -U postgres -XAtq -v ON_ERROR_STOP=1 "$@"; }
libdir=$(psql -c "SELECT setting FROM pg_config WHERE name = 'PKGLIBDIR'")
[ "$libdir" = "$root/usr/lib/postgresql/15/lib" ] || fail "the cluster's libdir is $libdir, not the tree's"
psql -c "CREATE EXTENSION fpw_pushdown" || fail "CREATE EXTENSION"
got=$(psql -c "SELECT extversion FROM pg_extension WHERE extname = 'fpw_pushdown'")
[ "$got" = "$version" ] || fail "extension version $got"
psql -c "SELECT count(*) FROM fpw_pushdown.status()" >/dev/null || fail "fpw_pushdown.status()"
psql -c "DROP EXTENSION fpw_pushdown" || fail "DROP EXTENSION"
runuser -u postgres -- "$pgctl" -D "$tmp/data" -w stop >/dev/null
pgctl=""
echo "test-deb: passed"
