#!/bin/sh
# `make demo`: the main job on built-in defaults. A tiny guest that prints the CPUID words it
# sees is started, saved, inspected and restored — and sees exactly the same CPU afterwards.
# Then a host whose CPU ceiling lacks a feature the guest uses refuses the restore, naming the
# feature and its CPUID bit, before any QEMU starts.
set -eu
bin="$1"
repo="$(cd "$(dirname "$0")/.." && pwd)"
work="$(mktemp -d /tmp/keel-demo.XXXXXX)"
state="$work/host-a"
older="$work/host-b"
cleanup() {
    "$bin" destroy demo --state "$state" >/dev/null 2>&1 || true
    "$bin" destroy demo --state "$older" >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT INT TERM

bold() { printf '\n\033[1m%s\033[0m\n' "$*"; }
run() { printf '\033[36m$ keel %s\033[0m\n' "$*"; "$bin" "$@" --state "$state"; }
# The guest's CPUID block printed after byte offset $1 of its serial log.
cpuid_after() {
    i=0
    while [ $i -lt 900 ]; do
        block="$(tail -c +"$(( $1 + 1 ))" "$work/serial.log" 2>/dev/null | grep '^CPUID' | head -5)"
        if [ "$(printf '%s\n' "$block" | grep -c '^CPUID')" -eq 5 ]; then printf '%s\n' "$block"; return 0; fi
        sleep 0.2; i=$((i + 1))
    done
    echo "the guest printed no CPUID block" >&2; return 1
}

make -s -C "$repo/guest"
if [ -r /dev/kvm ] && [ -w /dev/kvm ] && [ -z "${KEEL_DEMO_TCG:-}" ]; then type=kvm; else type=qemu; fi
if [ "$type" = kvm ]; then accel="KVM"; elif [ -n "${KEEL_DEMO_TCG:-}" ]; then accel="TCG (KEEL_DEMO_TCG is set)"; else accel="TCG (no usable /dev/kvm)"; fi

bold "Keel: a guest must never see its CPU change underneath it. Accelerator: $accel"
cat > "$work/demo.xml" <<XML
<domain type='$type'>
  <name>demo</name>
  <memory unit='MiB'>16</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <kernel>$repo/guest/keel-guest.elf</kernel>
  </os>
  <cpu mode='custom' match='exact' check='none'>
    <model fallback='forbid'>qemu64</model>
    <feature policy='require' name='x2apic'/>
  </cpu>
  <devices>
    <serial type='file'>
      <source path='$work/serial.log'/>
    </serial>
  </devices>
</domain>
XML
echo "The guest asks for qemu64 + x2apic (check='none'): QEMU may add or drop features when it starts."
run define "$work/demo.xml"
run start demo
bold "What the guest sees (its own CPUID instruction, printed on its serial port):"
before="$(cpuid_after 0)"
printf '%s\n' "$before"
bold "The CPU the user asked for (the original) and the one QEMU really gave the guest (the updated, check='full'):"
run dumpxml demo --migratable | sed -n '/<cpu/,/<\/cpu>/p'
run dumpxml demo | sed -n '/<cpu/,/<\/cpu>/p'

bold "Save: libvirt's image format — original CPU in the XML, updated CPU + Keel's ABI record in the cookie"
run save demo "$work/demo.img"
if "$bin" save-image --help >/dev/null 2>&1; then
    printf '\033[36m$ keel save-image info demo.img\033[0m\n'
    "$bin" save-image info "$work/demo.img"
fi

bold "Restore: the saved CPU is checked against this host first, then pinned feature by feature"
offset="$(wc -c < "$work/serial.log")"
run restore "$work/demo.img" --dry-run
run restore "$work/demo.img"
after="$(cpuid_after "$offset")"
printf '%s\n' "$after"
if [ "$before" = "$after" ]; then
    bold "✔ The guest sees exactly the same CPUID words after the restore."
else
    bold "✘ The guest's CPUID changed across save/restore:"; printf 'before:\n%s\nafter:\n%s\n' "$before" "$after"; exit 1
fi
run destroy demo

bold "Another host, whose administrator caps guests at qemu64 without cx16 (a fleet's CPU ceiling):"
mkdir -p "$older"
cat > "$older/config.xml" <<XML
<keel>
  <cpu-ceiling>
    <cpu>
      <model>qemu64</model>
      <feature policy='require' name='x2apic'/>
      <feature policy='require' name='hypervisor'/>
      <feature policy='disable' name='cx16'/>
    </cpu>
  </cpu-ceiling>
</keel>
XML
cat "$older/config.xml"
printf '\033[36m$ keel --state host-b restore demo.img --dry-run --json\033[0m\n'
"$bin" restore "$work/demo.img" --dry-run --json --state "$older" || true
printf '\033[36m$ keel --state host-b restore demo.img\033[0m\n'
if "$bin" restore "$work/demo.img" --state "$older"; then
    echo "unexpected: the restore was not refused" >&2; exit 1
fi
bold "✔ Refused before any QEMU started, naming the feature and its CPUID bit; the image is untouched."

bold "The CPU algorithms work on files too (built-in map, no libvirt needed):"
cd "$repo"
printf '\033[36m$ keel cpu-compare examples/cpu/guest-skylake.xml --host examples/cpu/host-haswell.xml --error\033[0m\n'
"$bin" cpu-compare examples/cpu/guest-skylake.xml --host examples/cpu/host-haswell.xml --error || true
printf '\033[36m$ keel cpu-baseline examples/cpu/fleet.xml\033[0m\n'
"$bin" cpu-baseline examples/cpu/fleet.xml
