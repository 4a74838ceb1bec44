#!/bin/sh
# CPU benchmarks: in-process compare/baseline, and whole `keel cpu-baseline` processes against
# `virsh -c test:///default cpu-baseline` on the same two-CPU file, measured side by side.
# Usage: scripts/bench-cpu.sh BIN_DIR   (BIN_DIR from `swift build -c release --show-bin-path`)
set -eu
bin="$1"
cd "$(dirname "$0")/.."
libvirt_map=/usr/share/libvirt/cpu_map

echo "## In process, built-in map"
"$bin/keel-bench"
if [ -f "$libvirt_map/index.xml" ]; then
    echo "## In process, libvirt 9.0's map"
    "$bin/keel-bench" "$libvirt_map"
fi

if command -v virsh >/dev/null 2>&1 && command -v hyperfine >/dev/null 2>&1; then
    echo "## Whole processes: keel cpu-baseline vs virsh cpu-baseline (benchmarks/two-hosts.xml)"
    hyperfine -N --warmup 5 --runs 100 \
        "$bin/keel cpu-baseline benchmarks/two-hosts.xml" \
        "$bin/keel cpu-baseline benchmarks/two-hosts.xml --cpu-map $libvirt_map" \
        "virsh -c test:///default cpu-baseline benchmarks/two-hosts.xml"
else
    echo "virsh or hyperfine missing: the process comparison is skipped (apt-get install libvirt-clients hyperfine)"
fi
