#!/bin/sh
# `make demo`: the main job on built-in defaults, through keeld. A keeld is started on a
# temporary state directory and socket; a tiny guest that prints the CPUID words it sees is
# defined, started, saved, inspected and restored with `keel --connect unix:…` — and sees
# exactly the same CPU afterwards. Then a second keeld, a host whose CPU ceiling lacks a
# feature the guest uses, refuses the restore, naming the feature and its CPUID bit, before any
# QEMU starts. Guests are destroyed and both keelds stopped with SIGTERM, also on failure.
#
# Usage: scripts/demo.sh BIN_DIR   (release builds of keel and keeld)
set -eu
bin="$1"
[ -f "$bin" ] && bin="$(dirname "$bin")"   # a path to keel, as before
keel="$bin/keel"
keeld="$bin/keeld"
for program in "$keel" "$keeld"; do
    [ -x "$program" ] || { echo "demo: $program is missing (make demo builds it)" >&2; exit 1; }
done
repo="$(cd "$(dirname "$0")/.." && pwd)"
work="$(mktemp -d /tmp/keel-demo.XXXXXX)"
state="$work/host-a"
older="$work/host-b"
socket_a="$work/host-a.sock"
socket_b="$work/host-b.sock"
pid_a=""
pid_b=""
events_pid=""

# Stops a keeld this script started: SIGTERM (it finishes its requests and leaves), SIGKILL
# only after 20 s.
stop_keeld() {
    [ -n "$1" ] || return 0
    kill -TERM "$1" 2>/dev/null || return 0
    i=0
    while kill -0 "$1" 2>/dev/null && [ $i -lt 200 ]; do sleep 0.1; i=$((i + 1)); done
    if kill -0 "$1" 2>/dev/null; then
        echo "keeld $1 did not stop within 20 s: killed" >&2
        kill -KILL "$1" 2>/dev/null || true
    fi
    wait "$1" 2>/dev/null || true
}
cleanup() {
    status=$?
    [ -n "$events_pid" ] && kill -TERM "$events_pid" 2>/dev/null || true
    # The guests first (a demo leaves nothing running), through the state directory, which
    # works whether or not keeld still answers; then the daemons.
    "$keel" --connect "embed:$state" destroy demo >/dev/null 2>&1 || true
    "$keel" --connect "embed:$older" destroy demo >/dev/null 2>&1 || true
    stop_keeld "$pid_a"
    stop_keeld "$pid_b"
    if [ "$status" -ne 0 ]; then
        for log in "$work"/*.keeld.log; do
            [ -s "$log" ] && { echo "--- $(basename "$log")" >&2; tail -20 "$log" >&2; }
        done
    fi
    rm -rf "$work"
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

bold() { printf '\n\033[1m%s\033[0m\n' "$*"; }
say() { printf '\033[36m$ %s\033[0m\n' "$*"; }
# keel through host A's keeld, echoing the command as a user would type it.
run() { say "keel $*"; "$keel" --connect "unix:$socket_a" "$@"; }
# Starts keeld on STATE and SOCKET in the background; waits (30 s at most) for its socket.
start_keeld() { # NAME STATE SOCKET
    "$keeld" --state "$2" --socket "$3" 2> "$work/$1.keeld.log" &
    started_pid=$!
    i=0
    while [ ! -S "$3" ] && [ $i -lt 300 ]; do
        kill -0 "$started_pid" 2>/dev/null || { echo "keeld exited:" >&2; cat "$work/$1.keeld.log" >&2; return 1; }
        sleep 0.1; i=$((i + 1))
    done
    [ -S "$3" ] || { echo "keeld did not create $3 within 30 s" >&2; return 1; }
}
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
say "keeld --state $state --socket $socket_a &"
start_keeld host-a "$state" "$socket_a"
pid_a=$started_pid
echo "keeld (pid $pid_a) serves the API on its socket, private to its owner:"
ls -l "$socket_a" | awk '{ print "  " $1, $3, $4, $NF }'

# The event stream, when this keeld has one: printed at the end.
if "$keel" --connect "unix:$socket_a" events --timeout 0.5 >/dev/null 2>&1; then
    "$keel" --connect "unix:$socket_a" events --domain demo > "$work/events.log" 2>&1 &
    events_pid=$!
fi

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
bold "The guest asks for qemu64 + x2apic (check='none'): QEMU may add or drop features when it starts."
run define "$work/demo.xml"
run start demo
run dominfo demo
bold "What the guest sees (its own CPUID instruction, printed on its serial port):"
before="$(cpuid_after 0)"
printf '%s\n' "$before"
bold "The CPU the user asked for (the original) and the one QEMU really gave the guest (the updated, check='full'):"
run dumpxml demo --migratable | sed -n '/<cpu/,/<\/cpu>/p'
run dumpxml demo | sed -n '/<cpu/,/<\/cpu>/p'

bold "Save: libvirt's image format — original CPU in the XML, updated CPU + Keel's ABI record in the cookie"
say "keel save demo $work/demo.img &   # and meanwhile: keel domjobinfo demo"
"$keel" --connect "unix:$socket_a" save demo "$work/demo.img" > "$work/save.out" 2>&1 &
save_pid=$!
jobinfo=""
while kill -0 "$save_pid" 2>/dev/null; do
    sample="$("$keel" --connect "unix:$socket_a" domjobinfo demo 2>/dev/null || true)"
    case "$sample" in *Operation:*) jobinfo="$sample"; break ;; esac
    sleep 0.05
done
save_status=0
wait "$save_pid" || save_status=$?
cat "$work/save.out"
[ "$save_status" -eq 0 ] || { echo "the save failed" >&2; exit 1; }
if [ -n "$jobinfo" ]; then
    echo "domjobinfo while the save ran:"; printf '%s\n' "$jobinfo"
else
    echo "(the save finished before domjobinfo caught it running)"
fi
say "keel save-image info $work/demo.img"
"$keel" save-image info "$work/demo.img"

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
say "keeld --state $older --socket $socket_b &"
start_keeld host-b "$older" "$socket_b"
pid_b=$started_pid
say "keel --connect unix:$socket_b restore $work/demo.img --dry-run --json"
"$keel" --connect "unix:$socket_b" restore "$work/demo.img" --dry-run --json || true
say "keel --connect unix:$socket_b restore $work/demo.img"
if "$keel" --connect "unix:$socket_b" restore "$work/demo.img"; then
    echo "unexpected: the restore was not refused" >&2; exit 1
fi
bold "✔ Refused before any QEMU started, naming the feature and its CPUID bit; the image is untouched."

if [ -n "$events_pid" ]; then
    bold "What keeld reported meanwhile (keel events --domain demo):"
    sleep 0.3
    kill -TERM "$events_pid" 2>/dev/null || true
    wait "$events_pid" 2>/dev/null || true
    events_pid=""
    cat "$work/events.log"
fi

bold "Stopping both keelds (SIGTERM): they finish what they serve and leave; guests would keep running."
stop_keeld "$pid_a"; pid_a=""
stop_keeld "$pid_b"; pid_b=""
grep -h 'keeld stopped' "$work"/*.keeld.log | sed 's/^/  /' || true

bold "The CPU algorithms work on files too (built-in map, no libvirt, no daemon needed):"
cd "$repo"
say "keel cpu-compare examples/cpu/guest-skylake.xml --host examples/cpu/host-haswell.xml --error"
"$keel" cpu-compare examples/cpu/guest-skylake.xml --host examples/cpu/host-haswell.xml --error || true
say "keel cpu-baseline examples/cpu/fleet.xml"
"$keel" cpu-baseline examples/cpu/fleet.xml
