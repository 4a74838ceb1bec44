#!/usr/bin/env bash
# Interoperability with libvirt, both ways, judged by what the guest itself sees.
#
#   keel → libvirt: `keel define/start` the test guest, `keel save`, `virsh restore`; the guest's
#                   re-printed CPUID block must be identical, and libvirt's live CPU must be the
#                   updated CPU from Keel's cookie (check='full'), its migratable CPU the original.
#   libvirt → keel: `virsh create`, `virsh save`, `keel restore`; the same comparisons, with
#                   `keel dumpxml` showing the cookie CPU and `keel dominfo --json` the original.
#
# Variants: TCG with a CPU QEMU extends (qemu64, check='partial': QEMU adds hypervisor and
# lahf_lm), TCG with a CPU QEMU filters (qemu64 + require x2apic, check='none': TCG cannot
# provide x2apic), and KVM (pentium3, check='partial') when /dev/kvm works.
#
# Usage: scripts/interop.sh KEEL_BINARY [--cpu-map DIR]
#   --cpu-map DIR   passed to every keel command (default: Keel's built-in map).
# Environment: KEEL_INTEROP_KVM=0 skips the KVM variant.
# Needs root (it starts libvirtd/virtlogd when absent and configures /etc/libvirt/qemu.conf).
# Prints PASS/FAIL per step; exits 0 only when every comparison holds.
set -uo pipefail

usage() { echo "usage: $0 KEEL_BINARY [--cpu-map DIR]" >&2; exit 2; }
[ $# -ge 1 ] || usage
keel_binary=$1; shift
keel_options=()
while [ $# -gt 0 ]; do
    case $1 in
        --cpu-map) [ $# -ge 2 ] || usage; keel_options+=(--cpu-map "$2"); shift 2 ;;
        *) usage ;;
    esac
done
[ -x "$keel_binary" ] || { echo "FAIL setup: $keel_binary is not an executable" >&2; exit 1; }
[ "$(id -u)" = 0 ] || { echo "FAIL setup: run as root (libvirtd runs guests as root here)" >&2; exit 1; }

repository=$(cd "$(dirname "$0")/.." && pwd)
virsh_uri=qemu:///system
qemu_conf=/etc/libvirt/qemu.conf

# ---------------------------------------------------------------------------------------------
# Setup: packages, qemu.conf, daemons, the guest.

"$repository/scripts/apt-ensure.sh" libvirt-daemon-system libvirt-clients qemu-system-x86 nasm make python3 \
    || { echo "FAIL setup: cannot install the packages"; exit 1; }

# libvirt runs QEMU as root without relabelling, so it may use the temporary files below.
conf_changed=0
ensure_conf() {
    local key=$1 value=$2
    grep -Eq "^[[:space:]]*$key[[:space:]]*=[[:space:]]*$value[[:space:]]*$" "$qemu_conf" 2>/dev/null && return 0
    [ -f "$qemu_conf" ] && sed -i -E "/^[[:space:]]*$key[[:space:]]*=/d" "$qemu_conf"
    printf '%s = %s\n' "$key" "$value" >>"$qemu_conf"
    conf_changed=1
}
ensure_conf user '"root"'
ensure_conf group '"root"'
ensure_conf dynamic_ownership 0

if [ "$conf_changed" = 1 ] && pid=$(pgrep -x libvirtd); then
    # libvirtd reads qemu.conf only at startup.
    echo "qemu.conf changed: restarting libvirtd ($pid)"
    kill "$pid"
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
fi
# Detached from this script's output: a daemon holding it open would keep a caller that reads
# the output to its end (InteropTests) waiting forever.
pgrep -x virtlogd >/dev/null || virtlogd -d </dev/null >/dev/null 2>&1
pgrep -x libvirtd >/dev/null || libvirtd -d </dev/null >/dev/null 2>&1
for _ in $(seq 100); do
    virsh -q -c "$virsh_uri" uri >/dev/null 2>&1 && break
    sleep 0.1
done
virsh -q -c "$virsh_uri" uri >/dev/null 2>&1 || { echo "FAIL setup: libvirtd does not answer on $virsh_uri"; exit 1; }

make -s -C "$repository/guest" || { echo "FAIL setup: cannot build the test guest (nasm?)"; exit 1; }
guest="$repository/guest/keel-guest.elf"

work=$(mktemp -d /tmp/keel-interop.XXXXXX)
chmod 755 "$work"
prefix="keel-interop-$$"

cleanup() {
    local name state pidfile
    for name in $(virsh -q -c "$virsh_uri" list --all --name 2>/dev/null | grep "^$prefix-"); do
        virsh -q -c "$virsh_uri" destroy "$name" >/dev/null 2>&1
        virsh -q -c "$virsh_uri" undefine "$name" >/dev/null 2>&1
    done
    for state in "$work"/state-*; do
        [ -d "$state/run" ] || continue
        for pidfile in "$state"/run/*.pid; do
            [ -f "$pidfile" ] || continue
            name=$(basename "$pidfile" .pid)
            "$keel_binary" destroy --state "$state" "${keel_options[@]}" "$name" >/dev/null 2>&1
        done
    done
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

virsh() { command virsh -q -c "$virsh_uri" "$@"; }
keel() { local state=$1 command=$2; shift 2; "$keel_binary" "$command" --state "$state" "${keel_options[@]}" "$@"; }

# A libvirt domain running the test guest. ACPI is on, no USB controller and no balloon, so both
# sides build the same machine from the same XML.
domain_xml() {
    local name=$1 type=$2 cpu=$3 serial=$4
    cat <<EOF
<domain type='$type'>
  <name>$name</name>
  <memory unit='MiB'>32</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <kernel>$guest</kernel>
  </os>
  <features>
    <acpi/>
  </features>
  $cpu
  <devices>
    <controller type='usb' model='none'/>
    <serial type='file'>
      <source path='$serial' append='on'/>
    </serial>
    <memballoon model='none'/>
  </devices>
</domain>
EOF
}

# The guest's first complete CPUID block (5 lines) after byte OFFSET of FILE, within TIMEOUT s.
cpuid_block() {
    local file=$1 offset=$2 timeout=$3 deadline=$((SECONDS + $3)) block size
    while [ "$SECONDS" -le "$deadline" ]; do
        if [ -f "$file" ]; then
            size=$(stat -c %s "$file")
            [ "$size" -lt "$offset" ] && offset=0
            # Only complete lines (75 characters) count; the guest may be mid-line.
            block=$(tail -c +$((offset + 1)) "$file" | awk '
                /^CPUID 00000000 / && length($0) == 75 { buf = ""; n = 0 }
                /^CPUID / && length($0) == 75 && (n > 0 || $2 == "00000000") { buf = buf $0 "\n"; n++; if (n == 5) { printf "%s", buf; exit } ; next }
                { n = 0; buf = "" }')
            if [ "$(printf '%s' "$block" | grep -c '^CPUID')" = 5 ]; then
                printf '%s\n' "$block"
                return 0
            fi
        fi
        sleep 0.2
    done
    echo "no complete CPUID block in $file after byte $offset within ${timeout}s" >&2
    return 1
}

# The <cpu> of a domain XML (or a bare <cpu>) on stdin, canonical: sorted attributes, no
# insignificant whitespace, one element per line.
cpu_of() {
    python3 -c '
import sys, xml.etree.ElementTree as ET
text = sys.stdin.read().strip()
if not text:
    sys.exit("no XML")
root = ET.fromstring(text)
cpu = root if root.tag == "cpu" else root.find("cpu")
if cpu is None:
    sys.exit("no <cpu>")
def out(e, depth):
    attrs = "".join(" %s=\x27%s\x27" % kv for kv in sorted(e.attrib.items()))
    body = (e.text or "").strip()
    if len(e):
        print("  " * depth + "<%s%s>" % (e.tag, attrs))
        for child in e:
            out(child, depth + 1)
        print("  " * depth + "</%s>" % e.tag)
    elif body:
        print("  " * depth + "<%s%s>%s</%s>" % (e.tag, attrs, body, e.tag))
    else:
        print("  " * depth + "<%s%s/>" % (e.tag, attrs))
out(cpu, 0)
'
}

# A JSON field of stdin.
json_field() { python3 -c 'import json, sys; v = json.load(sys.stdin).get(sys.argv[1]); print("" if v is None else v)' "$1"; }

failures=0
check() { # DESCRIPTION COMMAND… : records a failed comparison without stopping the step
    local description=$1; shift
    if "$@"; then echo "  ok: $description"; else echo "  MISMATCH: $description"; step_failed=1; fi
}
same_file() { cmp -s "$1" "$2" || { diff -u "$1" "$2" | sed 's/^/      /'; return 1; }; }
contains() { grep -q -- "$2" "$1" || { echo "      $1 lacks $2:"; sed 's/^/      /' "$1"; return 1; }; }
differs() { ! cmp -s "$1" "$2" || { echo "      the live CPU equals the original: QEMU changed nothing"; return 1; }; }

# keel → libvirt. Arguments: TAG TYPE CPU-XML EXPECTED-LIVE-FEATURE BOOT-TIMEOUT
keel_to_libvirt() {
    local tag=$1 type=$2 cpu=$3 expected=$4 boot=$5
    local name="$prefix-$tag-k2v" state="$work/state-$tag-k2v" dir="$work/$tag-k2v"
    mkdir -p "$dir"
    local serial="$dir/serial.txt" image="$dir/keel.img"
    domain_xml "$name" "$type" "$cpu" "$serial" >"$dir/domain.xml"
    keel "$state" define "$dir/domain.xml" || return 1
    keel "$state" start "$name" || return 1
    cpuid_block "$serial" 0 "$boot" >"$dir/before.txt" || return 1
    keel "$state" dumpxml "$name" | cpu_of >"$dir/keel-live.cpu" || return 1
    keel "$state" dumpxml --migratable "$name" | cpu_of >"$dir/keel-original.cpu" || return 1
    keel "$state" save "$name" "$image" || return 1
    local offset; offset=$(stat -c %s "$serial")
    virsh restore "$image" || return 1
    cpuid_block "$serial" "$offset" 30 >"$dir/after.txt" || return 1
    virsh dumpxml "$name" | cpu_of >"$dir/libvirt-live.cpu" || return 1
    virsh dumpxml --migratable "$name" | cpu_of >"$dir/libvirt-original.cpu" || return 1
    step_failed=0
    check "the guest's CPUID block after virsh restore equals the one before keel save" same_file "$dir/before.txt" "$dir/after.txt"
    # The cookie's <cpu> is Keel's updated CPU written in libvirt's vocabulary (libvirt's model
    # definitions differ from QEMU's): the same CPUID bits, which the CPUID check above proves.
    "$keel_binary" save-image info "$image" --json "${keel_options[@]}" \
        | python3 -c 'import json, sys; print(json.load(sys.stdin)["cpu"]["updated"] or "")' | cpu_of >"$dir/cookie.cpu" || return 1
    check "libvirt's live CPU is the cookie CPU Keel wrote for it" same_file "$dir/cookie.cpu" "$dir/libvirt-live.cpu"
    check "libvirt's live CPU has check='full'" contains "$dir/libvirt-live.cpu" "check='full'"
    check "Keel's updated CPU had $expected" contains "$dir/keel-live.cpu" "$expected"
    check "libvirt's migratable CPU is the original one" same_file "$dir/keel-original.cpu" "$dir/libvirt-original.cpu"
    check "the original and the updated CPU differ" differs "$dir/libvirt-original.cpu" "$dir/libvirt-live.cpu"
    sed 's/^/    /' "$dir/after.txt"
    virsh destroy "$name" >/dev/null
    return "$step_failed"
}

# libvirt → keel. Arguments as keel_to_libvirt.
libvirt_to_keel() {
    local tag=$1 type=$2 cpu=$3 expected=$4 boot=$5
    local name="$prefix-$tag-v2k" state="$work/state-$tag-v2k" dir="$work/$tag-v2k"
    mkdir -p "$dir"
    local serial="$dir/serial.txt" image="$dir/libvirt.img"
    domain_xml "$name" "$type" "$cpu" "$serial" >"$dir/domain.xml"
    virsh create "$dir/domain.xml" >/dev/null || return 1
    cpuid_block "$serial" 0 "$boot" >"$dir/before.txt" || return 1
    virsh dumpxml "$name" | cpu_of >"$dir/libvirt-live.cpu" || return 1
    virsh dumpxml --migratable "$name" | cpu_of >"$dir/libvirt-original.cpu" || return 1
    virsh save "$name" "$image" >/dev/null || return 1
    local offset; offset=$(stat -c %s "$serial")
    keel "$state" restore "$image" || return 1
    cpuid_block "$serial" "$offset" 30 >"$dir/after.txt" || return 1
    keel "$state" dumpxml "$name" | cpu_of >"$dir/keel-live.cpu" || return 1
    keel "$state" dominfo --json "$name" | json_field originalCPU | cpu_of >"$dir/keel-original.cpu" || return 1
    step_failed=0
    check "the guest's CPUID block after keel restore equals the one before virsh save" same_file "$dir/before.txt" "$dir/after.txt"
    check "keel dumpxml shows libvirt's updated CPU from the cookie" same_file "$dir/libvirt-live.cpu" "$dir/keel-live.cpu"
    check "Keel's live CPU has check='full'" contains "$dir/keel-live.cpu" "check='full'"
    check "Keel's live CPU has $expected" contains "$dir/keel-live.cpu" "$expected"
    check "keel dominfo --json originalCPU is libvirt's original CPU" same_file "$dir/libvirt-original.cpu" "$dir/keel-original.cpu"
    check "the original and the updated CPU differ" differs "$dir/keel-original.cpu" "$dir/keel-live.cpu"
    sed 's/^/    /' "$dir/after.txt"
    keel "$state" destroy "$name" >/dev/null
    return "$step_failed"
}

run_step() { # LABEL FUNCTION ARGS…
    local label=$1; shift
    local started=$SECONDS
    if "$@" >"$work/$label.log" 2>&1; then
        echo "PASS $label ($((SECONDS - started)) s)"
    else
        echo "FAIL $label ($((SECONDS - started)) s)"
        failures=$((failures + 1))
    fi
    sed 's/^/  /' "$work/$label.log"
}

tcg_extended="<cpu mode='custom' match='exact' check='partial'><model fallback='forbid'>qemu64</model></cpu>"
tcg_filtered="<cpu mode='custom' match='exact' check='none'><model fallback='forbid'>qemu64</model><feature policy='require' name='x2apic'/></cpu>"
kvm_extended="<cpu mode='custom' match='exact' check='partial'><model fallback='forbid'>pentium3</model></cpu>"

echo "keel: $keel_binary ${keel_options[*]}; libvirt: $(command virsh -c "$virsh_uri" version 2>/dev/null | grep -i 'running hypervisor' | sed 's/.*: *//'); work: $work"
run_step "keel→libvirt TCG qemu64 check=partial" keel_to_libvirt tcg-partial qemu "$tcg_extended" "name='hypervisor' policy='require'" 30
run_step "libvirt→keel TCG qemu64 check=partial" libvirt_to_keel tcg-partial qemu "$tcg_extended" "name='hypervisor' policy='require'" 30
run_step "keel→libvirt TCG qemu64+x2apic (filtered)" keel_to_libvirt tcg-x2apic qemu "$tcg_filtered" "name='x2apic' policy='disable'" 30
run_step "libvirt→keel TCG qemu64+x2apic (filtered)" libvirt_to_keel tcg-x2apic qemu "$tcg_filtered" "name='x2apic' policy='disable'" 30

kvm_reason=""
if [ "${KEEL_INTEROP_KVM:-1}" = 0 ]; then
    kvm_reason="KEEL_INTEROP_KVM=0"
elif ! (exec 3<>/dev/kvm) 2>/dev/null; then
    kvm_reason="/dev/kvm cannot be opened"
elif ! virsh domcapabilities --virttype kvm >/dev/null 2>&1; then
    kvm_reason="libvirt reports no KVM support"
fi
if [ -z "$kvm_reason" ]; then
    run_step "keel→libvirt KVM pentium3 check=partial" keel_to_libvirt kvm-partial kvm "$kvm_extended" "name='x2apic' policy='require'" 60
    run_step "libvirt→keel KVM pentium3 check=partial" libvirt_to_keel kvm-partial kvm "$kvm_extended" "name='x2apic' policy='require'" 60
else
    echo "SKIP KVM variant: $kvm_reason"
fi

if [ "$failures" = 0 ]; then
    echo "PASS interop: every comparison holds"
    exit 0
fi
echo "FAIL interop: $failures step(s) failed"
exit 1
