#!/usr/bin/env bash
# `make bench`: every benchmark of the project, one after the other; each prints its own
# table with the ratio against the peer it measures in the same run. Reports are also kept
# in bench/out/ (not committed).
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$here/out"
status=0
for b in decode ingest redo fpw; do
    script="$here/$b.sh"
    [ -f "$script" ] || continue
    echo "=== bench/$b.sh"
    if ! bash "$script" 2>&1 | tee "$here/out/$b.txt"; then
        echo "=== bench/$b.sh failed" >&2
        status=1
    fi
done
exit $status
