#!/bin/sh
# The main job on built-in defaults: Keel reasons about guest CPUs with its built-in CPU map.
set -eu
keel="$1"
cd "$(dirname "$0")/.."
step() { printf '\n\033[1m$ keel %s\033[0m\n' "$*"; "$keel" "$@" || printf '[exit %s]\n' "$?"; }

echo "Keel: a guest must never see its CPU change underneath it."
echo "The CPU commands below use Keel's built-in x86 CPU map (generated from QEMU), no libvirt needed."

step cpu-compare examples/cpu/guest-skylake.xml --host examples/cpu/host-skylake.xml
step cpu-compare examples/cpu/guest-skylake.xml --host examples/cpu/host-haswell.xml
echo "# --error names every missing feature (exit 2):"
step cpu-compare examples/cpu/guest-skylake.xml --host examples/cpu/host-haswell.xml --error
step cpu-compare examples/cpu/guest-nehalem.xml --host examples/cpu/host-haswell.xml --json
echo "# The CPU a guest may use to run on every host of a fleet:"
step cpu-baseline examples/cpu/fleet.xml
step cpu-baseline examples/cpu/fleet.xml --migratable --json
