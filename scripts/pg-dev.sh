#!/usr/bin/env bash
# Build prefixes for the fpw_pushdown extension on PostgreSQL 17 and 18: server headers, a
# pg_config of ours and a bin directory, so that pgrx can build, install and test against the
# npm servers that scripts/pg-versions.sh unpacks under /opt/fpw_pushdown/pg/<major>.
#
# Headers: Debian's postgresql-server-dev-17 (trixie) and postgresql-server-dev-18 (sid, or
# trixie-backports once it is there), fetched with `apt-get download` through a private apt
# state under $DEST/apt (its own sources list, package lists and cache: the machine's apt
# configuration and dpkg database are not touched) and unpacked with `dpkg-deb -x`. They are
# not installed: the packages' binaries want a newer C library than Debian 12's, and we need
# only the headers. Debian's minor version may be ahead of the npm server's (e.g. headers
# 17.12, server 17.10): PostgreSQL keeps the server ABI stable within a major version, and
# PG_MODULE_MAGIC checks what must match (major version, FUNC_MAX_ARGS, INDEX_MAX_KEYS,
# NAMEDATALEN, FLOAT8PASSBYVAL); the build refuses a header major that differs from the
# server's.
#
# Layout: $DEST/<major>/include/server (headers), $DEST/<major>/bin/pg_config (ours), and in
# $DEST/<major>/bin links to the npm server's postgres, initdb and pg_ctl and to Debian's
# PostgreSQL 15 clients (psql, createdb, dropdb, ...: pgrx's test runner and pg_regress
# want them next to pg_ctl; the 15 clients talk to 17 and 18 servers).
#
# Idempotent: headers already unpacked are kept; pg_config and the links are rewritten only
# when their content changes. Never starts or stops a cluster.
set -euo pipefail

DEST=${FPW_PG_DEV_DIR:-/opt/fpw_pushdown/pgdev}
SERVERS=${FPW_PG_VERSIONS_DIR:-/opt/fpw_pushdown/pg}
MAJORS=${FPW_PG_DEV_MAJORS:-"17 18"}
CLIENTS_15=/usr/lib/postgresql/15/bin
KEYRING=/usr/share/keyrings/debian-archive-keyring.gpg

apt_dir="$DEST/apt"
apt_opts=(
    -o "Dir::Etc::sourcelist=$apt_dir/sources.list" -o "Dir::Etc::sourceparts=-"
    -o "Dir::State::Lists=$apt_dir/lists" -o "Dir::Cache=$apt_dir/cache"
    -o "Dir::State::status=/dev/null"
)
apt_ready=false
private_apt_update() {
    $apt_ready && return 0
    mkdir -p "$apt_dir/lists/partial" "$apt_dir/cache/archives/partial"
    cat >"$apt_dir/sources.list" <<EOF
deb [signed-by=$KEYRING] http://deb.debian.org/debian trixie main
deb [signed-by=$KEYRING] http://deb.debian.org/debian trixie-backports main
deb [signed-by=$KEYRING] http://deb.debian.org/debian sid main
EOF
    echo "pg-dev: reading Debian package lists (trixie, trixie-backports, sid) into $apt_dir"
    apt-get "${apt_opts[@]}" update -qq
    apt_ready=true
}

# fetch_headers MAJOR: unpacks postgresql-server-dev-MAJOR's server headers into
# $DEST/MAJOR/include/server.
fetch_headers() {
    local major=$1 work deb version
    private_apt_update
    work=$(mktemp -d)
    # apt-get download runs the download as _apt when it can; a directory it may write to.
    chmod 777 "$work"
    (cd "$work" && apt-get "${apt_opts[@]}" download -qq "postgresql-server-dev-$major")
    deb=$(ls "$work"/postgresql-server-dev-"$major"_*.deb)
    version=$(dpkg-deb -f "$deb" Version)
    dpkg-deb -x "$deb" "$work/x"
    local server="$work/x/usr/include/postgresql/$major/server"
    [ -f "$server/pg_config.h" ] || { echo "pg-dev: $deb has no server headers" >&2; exit 1; }
    mkdir -p "$DEST/$major/include"
    rm -rf "$DEST/$major/include/server"
    mv "$server" "$DEST/$major/include/server"
    echo "$version" >"$DEST/$major/include/.debian-version"
    rm -rf "$work"
    echo "pg-dev: PostgreSQL $major headers from postgresql-server-dev-$major $version"
}

# write_if_changed FILE: stdin to FILE, only if the content differs (keeps mtimes stable,
# so cargo's build scripts are not re-run for nothing).
write_if_changed() {
    local tmp
    tmp=$(mktemp)
    cat >"$tmp"
    if [ -f "$1" ] && cmp -s "$tmp" "$1"; then
        rm -f "$tmp"
    else
        mv "$tmp" "$1"
    fi
}

link_if_changed() {
    [ "$(readlink "$2" 2>/dev/null)" = "$1" ] || ln -sfn "$1" "$2"
}

for major in $MAJORS; do
    server="$SERVERS/$major"
    if [ ! -x "$server/bin/postgres" ]; then
        echo "pg-dev: no PostgreSQL $major server in $server (run scripts/pg-versions.sh)" >&2
        exit 1
    fi
    prefix="$DEST/$major"
    [ -f "$prefix/include/server/pg_config.h" ] || fetch_headers "$major"

    # The header and server major versions must agree: an extension built against other
    # headers is refused at load time (PG_MODULE_MAGIC), or worse if only the minor differs
    # in a way we do not check.
    header_num=$(sed -n 's/^#define PG_VERSION_NUM \([0-9]*\)$/\1/p' "$prefix/include/server/pg_config.h")
    server_version=$(LD_LIBRARY_PATH="$server/lib" "$server/bin/postgres" --version | awk '{print $NF}')
    if [ "$((header_num / 10000))" != "$major" ] || [ "${server_version%%.*}" != "$major" ]; then
        echo "pg-dev: headers ($header_num) and server ($server_version) are not both PostgreSQL $major" >&2
        exit 1
    fi

    mkdir -p "$prefix/bin"
    for b in postgres initdb pg_ctl; do link_if_changed "$server/bin/$b" "$prefix/bin/$b"; done
    for b in psql createdb dropdb pg_isready pgbench; do
        link_if_changed "$CLIENTS_15/$b" "$prefix/bin/$b"
    done

    write_if_changed "$prefix/bin/pg_config" <<EOF
#!/bin/sh
# pg_config for PostgreSQL $major as fpw_pushdown builds it (written by scripts/pg-dev.sh):
# headers from Debian's postgresql-server-dev-$major ($(cat "$prefix/include/.debian-version")),
# server, libraries and extension directories from the npm build in $server.
for opt in "\$@"; do
    case \$opt in
    --version) echo "PostgreSQL $server_version" ;;
    --bindir) echo "$prefix/bin" ;;
    --libdir) echo "$server/lib" ;;
    --pkglibdir) echo "$server/lib/postgresql" ;;
    --sharedir) echo "$server/share/postgresql" ;;
    --includedir | --pkgincludedir) echo "$prefix/include" ;;
    --includedir-server) echo "$prefix/include/server" ;;
    --cppflags) echo "-D_GNU_SOURCE" ;;
    --cflags) echo "-O2 -fno-strict-aliasing -fwrapv" ;;
    --cflags_sl) echo "-fPIC" ;;
    --ldflags | --ldflags_sl | --libs) echo "" ;;
    --configure) echo "'--prefix=$server'" ;;
    *) echo "pg_config (fpw_pushdown, PostgreSQL $major): unsupported option \$opt" >&2; exit 1 ;;
    esac
done
EOF
    chmod 755 "$prefix/bin/pg_config"
done
