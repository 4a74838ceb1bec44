#!/usr/bin/env bash
# Save and restore of a 512 MiB TCG guest whose RAM the test guest filled with incompressible
# data (fill=480), measured side by side in one run, rounds alternating:
#   keel save     vs raw QEMU (benchmarks/raw_qemu.py: stop, getfd, max-bandwidth, migrate fd:,
#                    poll query-migrate, fsync, quit) with Keel's own QEMU command line;
#   keel restore  vs raw QEMU -incoming defer (getfd, migrate-incoming fd:, poll, cont) with the
#                    command line Keel uses for the restore;
#   keel save     vs virsh save of the same guest run by libvirt.
# Every timed operation starts after `sync` and dropping the page cache; all images are on one
# filesystem, at the same stream offset. Prints every sample, then medians and ratios (Markdown).
#
# Usage: benchmarks/save-restore.sh BIN_DIR [ROUNDS]   (BIN_DIR holds `keel`; root; default 5)
# Environment: KEEL_BENCH_FILL (MiB, default 480), KEEL_BENCH_DIR (default /var/tmp).
set -euo pipefail

[ $# -ge 1 ] || { echo "usage: $0 BIN_DIR [ROUNDS]" >&2; exit 2; }
bin=$(cd "$1" && pwd)
rounds=${2:-5}
fill=${KEEL_BENCH_FILL:-480}
repository=$(cd "$(dirname "$0")/.." && pwd)
keel_binary="$bin/keel"
raw_tool="$repository/benchmarks/raw_qemu.py"
virsh_uri=qemu:///system
[ -x "$keel_binary" ] || { echo "no keel in $bin" >&2; exit 1; }

pgrep -x virtlogd >/dev/null || virtlogd -d
pgrep -x libvirtd >/dev/null || libvirtd -d
for _ in $(seq 100); do virsh -q -c "$virsh_uri" uri >/dev/null 2>&1 && break; sleep 0.1; done
make -s -C "$repository/guest"

work=$(mktemp -d "${KEEL_BENCH_DIR:-/var/tmp}/keel-bench.XXXXXX")
chmod 755 "$work"
name="keel-bench-$$"
lv_name="libvirt-bench-$$"
state="$work/keel-state"
raw_state="$work/raw-state"
mkdir -p "$raw_state/run"
raw_qmp="$raw_state/run/$name.qmp"
raw_pid="$raw_state/run/$name.pid"

virsh() { command virsh -q -c "$virsh_uri" "$@"; }
keel() { local command=$1; shift; "$keel_binary" "$command" --state "$state" "$@"; }
raw() { python3 "$raw_tool" "$@" --qmp "$raw_qmp" --pidfile "$raw_pid"; }

cleanup() {
    keel destroy "$name" >/dev/null 2>&1 || true
    raw quit >/dev/null 2>&1 || true
    virsh destroy "$lv_name" >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

. "$repository/benchmarks/fill-guest.sh"

drop_caches_ok=1
settle() {
    sync
    if [ "$drop_caches_ok" = 1 ] && ! echo 3 >/proc/sys/vm/drop_caches 2>/dev/null; then
        drop_caches_ok=0
        echo "note: cannot drop the page cache here; both sides run with whatever is cached" >&2
    fi
    # Only the images stay cold: the tools themselves (keel, python, virsh, QEMU, firmware and
    # the guest kernel) are read back in, so no side pays for loading its program from disk.
    "$keel_binary" --help >/dev/null
    python3 "$raw_tool" --help >/dev/null
    command virsh --version >/dev/null
    /usr/bin/qemu-system-x86_64 --version >/dev/null
    cat /usr/bin/qemu-system-x86_64 /usr/share/seabios/* /usr/share/qemu/*.bin "$repository/guest/keel-guest.elf" >/dev/null 2>&1 || true
}

declare -A samples
timed() { # METRIC COMMAND… : settles, runs COMMAND, appends its wall time in ms to METRIC
    local metric=$1; shift
    settle
    local start end
    start=$(date +%s%N)
    "$@" >/dev/null 2>"$work/stderr"
    end=$(date +%s%N)
    samples[$metric]+="$(((end - start) / 1000000)) "
    # raw_qemu.py also reports its own time, without the Python interpreter's start-up.
    local inside
    inside=$(sed -n 's/^raw .* total=\([0-9]*\)ms$/\1/p' "$work/stderr")
    if [ -n "$inside" ]; then samples[${metric}_inside]+="$inside "; fi
}

# Rewrites a keel QEMU command line (NUL-separated) for the raw side: its own QMP socket,
# pidfile and serial file; -daemonize/-pidfile dropped (raw_qemu.py adds them).
raw_argv() { # IN OUT
    python3 - "$1" "$2" "$state" "$raw_state" "$work/keel.serial" "$work/raw.serial" <<'EOF'
import sys
src, dst, keel_state, raw_state, keel_serial, raw_serial = sys.argv[1:]
args = [a.decode() for a in open(src, "rb").read().split(b"\0") if a]
out, skip = [], False
for a in args:
    if skip:
        skip = False
        continue
    if a == "-daemonize":
        continue
    if a == "-pidfile":
        skip = True
        continue
    out.append(a.replace(keel_state, raw_state).replace(keel_serial, raw_serial))
open(dst, "wb").write(b"\0".join(x.encode() for x in out))
EOF
}

keel_pid() { keel dominfo --json "$name" | python3 -c 'import json, sys; print(json.load(sys.stdin)["pid"])'; }

echo "# setup: $rounds rounds, 512 MiB TCG guests with fill=$fill, images in $work"
fill_guest_xml "$name" 512 "$fill" "$work/keel.serial" acpi >"$work/keel.xml"
fill_guest_xml "$lv_name" 512 "$fill" "$work/libvirt.serial" acpi >"$work/libvirt.xml"

# Warm-up, untimed: boot and fill each guest once, record Keel's command lines, write the images.
keel define "$work/keel.xml" >/dev/null
keel start "$name" >/dev/null
wait_filled "$work/keel.serial"
cp "/proc/$(keel_pid)/cmdline" "$work/keel-start.argv"
keel save "$name" "$work/keel.img" >/dev/null
offset=$(python3 -c 'import struct, sys; h = open(sys.argv[1], "rb").read(24); print(92 + struct.unpack("<I", h[20:24])[0])' "$work/keel.img")
keel restore "$work/keel.img" >/dev/null
cp "/proc/$(keel_pid)/cmdline" "$work/keel-restore.argv"
keel save "$name" "$work/keel.img" >/dev/null
raw_argv "$work/keel-start.argv" "$work/raw-start.argv"
raw_argv "$work/keel-restore.argv" "$work/raw-restore.argv"
raw start --argv "$work/raw-start.argv" --cont 2>/dev/null
wait_filled "$work/raw.serial"
raw save --file "$work/raw.img" --offset "$offset" 2>/dev/null
virsh create "$work/libvirt.xml" >/dev/null
wait_filled "$work/libvirt.serial"
virsh save "$lv_name" "$work/libvirt.img" >/dev/null
echo "# stream offset $offset; image sizes: keel $(stat -c %s "$work/keel.img"), raw $(stat -c %s "$work/raw.img"), virsh $(stat -c %s "$work/libvirt.img") bytes"
echo "# keel QEMU (start):   $(tr '\0' ' ' <"$work/keel-start.argv")"
echo "# keel QEMU (restore): $(tr '\0' ' ' <"$work/keel-restore.argv" | cut -c1-300)…"

keel_round() {
    timed keel_restore keel restore "$work/keel.img"
    timed keel_save keel save "$name" "$work/keel.img"
}
raw_round() {
    timed raw_restore raw restore --argv "$work/raw-restore.argv" --file "$work/raw.img" --offset "$offset" --cont
    timed raw_save raw save --file "$work/raw.img" --offset "$offset"
}
libvirt_round() {
    timed virsh_restore virsh restore "$work/libvirt.img"
    timed virsh_save virsh save "$lv_name" "$work/libvirt.img"
}
for round in $(seq "$rounds"); do
    if [ $((round % 2)) = 1 ]; then
        keel_round; raw_round; libvirt_round
    else
        libvirt_round; raw_round; keel_round
    fi
    echo "# round $round done"
done

python3 - <<EOF
import statistics
samples = {$(for metric in "${!samples[@]}"; do printf '"%s": [%s], ' "$metric" "$(echo "${samples[$metric]}" | xargs | tr ' ' ',')"; done)}
med = {k: statistics.median(v) for k, v in samples.items()}
print()
print("| operation | median (ms) | samples (ms) |")
print("|---|---:|---|")
labels = {
    "keel_save": "keel save", "raw_save": "raw QEMU save (python3 raw_qemu.py, wall)",
    "raw_save_inside": "raw QEMU save (inside raw_qemu.py, no interpreter start-up)", "virsh_save": "virsh save",
    "keel_restore": "keel restore", "raw_restore": "raw QEMU restore (python3 raw_qemu.py, wall)",
    "raw_restore_inside": "raw QEMU restore (inside raw_qemu.py, no interpreter start-up)", "virsh_restore": "virsh restore",
}
for k, label in labels.items():
    print(f"| {label} | {med[k]:.0f} | {', '.join(str(x) for x in samples[k])} |")
print()
print("| comparison | ratio | goal |")
print("|---|---:|---|")
print(f"| keel save / raw QEMU save (inside) | {med['keel_save'] / med['raw_save_inside']:.3f}× | ≤ 1.10× |")
print(f"| keel save / raw QEMU save (wall) | {med['keel_save'] / med['raw_save']:.3f}× | (information) |")
print(f"| keel restore / raw QEMU restore (inside) | {med['keel_restore'] / med['raw_restore_inside']:.3f}× | ≤ 1.10× |")
print(f"| keel restore / raw QEMU restore (wall) | {med['keel_restore'] / med['raw_restore']:.3f}× | (information) |")
print(f"| virsh save / keel save (Keel faster by) | {med['virsh_save'] / med['keel_save']:.2f}× | ≥ 2.5× |")
print(f"| virsh restore / keel restore | {med['virsh_restore'] / med['keel_restore']:.2f}× | (information) |")
EOF
