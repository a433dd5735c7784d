#!/usr/bin/env bash
# `make deb`: two Debian packages from what `make build` built, under target/debian/.
# - postgresql-15-fpw-pushdown: the extension (the files `cargo pgrx package` staged),
#   for the compute; depends on postgresql-15.
# - redo-helper: the helper binary, the systemd unit redo-helper@.service, the default
#   configuration /etc/redo-helper/main.toml (a conffile), the documentation; its
#   maintainer scripts create the redo-helper system user and /var/lib/redo-helper (0700).
# Two packages because the two halves run on different hosts (compute, storage side).
# Staged trees are built with dpkg-deb --root-owner-group: no fakeroot, no network.
set -euo pipefail
cd "$(dirname "$0")/.."
version=$(awk -F'"' '/^version *=/ {print $2; exit}' Cargo.toml)
revision=${DEB_REVISION:-1}
arch=$(dpkg --print-architecture)
out=target/debian
stage=$out/stage
pgrx_dir=target/release/fpw_pushdown-pg15
helper=target/release/redo-helper
for f in "$helper" "$pgrx_dir"; do
    [ -e "$f" ] || { echo "build-deb: $f missing: run make build" >&2; exit 1; }
done
rm -rf "$stage"
mkdir -p "$stage" "$out"

# What the helper binary links dynamically, as package dependencies.
shlibdeps() {
    local tmp
    tmp=$(mktemp -d)
    mkdir -p "$tmp/debian"
    : >"$tmp/debian/control"
    (cd "$tmp" && dpkg-shlibdeps -O "$@" 2>/dev/null | sed -n 's/^shlibs:Depends=//p')
    rm -rf "$tmp"
}

# --- postgresql-15-fpw-pushdown ---
ext=$stage/postgresql-15-fpw-pushdown
mkdir -p "$ext/DEBIAN" "$ext/usr/share/doc/postgresql-15-fpw-pushdown"
cp -a "$pgrx_dir/." "$ext/"
find "$ext/usr" -type f -exec chmod 0644 {} +
cp README.md docs/operations.md docs/reference.md "$ext/usr/share/doc/postgresql-15-fpw-pushdown/"
cp packaging/debian/copyright "$ext/usr/share/doc/postgresql-15-fpw-pushdown/"
so=$(find "$ext" -name '*.so' | head -n1)
ext_deps=$(shlibdeps "$(realpath "$so")")
cat >"$ext/DEBIAN/control" <<CONTROL
Package: postgresql-15-fpw-pushdown
Version: $version-$revision
Architecture: $arch
Maintainer: fpw_pushdown developers <fpw_pushdown@localhost>
Section: database
Priority: optional
Depends: postgresql-15${ext_deps:+, $ext_deps}
Suggests: redo-helper
Installed-Size: $(du -sk "$ext/usr" | cut -f1)
Description: PostgreSQL 15 extension: full_page_writes off, guarded by a redo helper
 fpw_pushdown switches full_page_writes live, guarded by a storage-side redo helper
 (package redo-helper) that rebuilds every page from the WAL.
 Add fpw_pushdown to shared_preload_libraries, then CREATE EXTENSION fpw_pushdown.
CONTROL

# --- redo-helper ---
rh=$stage/redo-helper
mkdir -p "$rh/DEBIAN" "$rh/usr/bin" "$rh/lib/systemd/system" "$rh/etc/redo-helper" \
    "$rh/usr/share/doc/redo-helper/examples"
install -m 0755 "$helper" "$rh/usr/bin/redo-helper"
strip --strip-debug "$rh/usr/bin/redo-helper"
install -m 0644 packaging/redo-helper@.service "$rh/lib/systemd/system/"
install -m 0640 packaging/main.toml "$rh/etc/redo-helper/main.toml"
install -m 0644 README.md docs/operations.md docs/reference.md docs/design.md \
    packaging/debian/copyright "$rh/usr/share/doc/redo-helper/"
install -m 0644 packaging/main.toml packaging/postgresql-prestart.conf \
    deploy/grafana/redo-helper.json deploy/prometheus/redo-helper.rules.yml \
    "$rh/usr/share/doc/redo-helper/examples/"
for s in postinst prerm postrm; do
    install -m 0755 "packaging/debian/redo-helper.$s" "$rh/DEBIAN/$s"
done
echo /etc/redo-helper/main.toml >"$rh/DEBIAN/conffiles"
rh_deps=$(shlibdeps "$(realpath "$rh/usr/bin/redo-helper")")
cat >"$rh/DEBIAN/control" <<CONTROL
Package: redo-helper
Version: $version-$revision
Architecture: $arch
Maintainer: fpw_pushdown developers <fpw_pushdown@localhost>
Section: database
Priority: optional
Depends: ${rh_deps:-libc6}, passwd
Suggests: postgresql-15-fpw-pushdown
Installed-Size: $(du -sk "$rh" | cut -f1)
Description: storage-side WAL redo helper for fpw_pushdown (PostgreSQL 15)
 Streams WAL from a PostgreSQL 15 cluster over physical replication, archives and
 replays it, and serves any page at any LSN, so that the cluster can run with
 full_page_writes off. Runs as the systemd service redo-helper@NAME with settings
 in /etc/redo-helper/NAME.toml.
CONTROL

for p in postgresql-15-fpw-pushdown redo-helper; do
    dpkg-deb --root-owner-group -Zxz --build "$stage/$p" "$out/${p}_${version}-${revision}_${arch}.deb" >/dev/null
    echo "build-deb: $out/${p}_${version}-${revision}_${arch}.deb"
done
