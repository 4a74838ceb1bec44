#!/usr/bin/env bash
# keeld under load: a keeld on a temporary state directory with 50 defined and 20 running tiny
# TCG guests (the idle test guest, 16 MiB), then
#   1. keeld's resident memory idle (VmRSS and VmHWM from /proc/PID/status);
#   2. TOTAL `GET /v1/domains/{name}` (dominfo) requests, CONCURRENCY always in flight, over
#      all 50 domains in turn: p50/p90/p99/max latency (keel-load);
#   3. a mixed run (list, dominfo, dumpxml, suspend/resume of the running guests) with the same
#      concurrency: no error allowed;
#   4. every state file still parses (`keel list --all`, `keel dominfo` of each domain) and the
#      20 guests still run; keeld's memory again.
# keeld's log, the request files and the results stay in WORK when KEEL_LOAD_KEEP=1.
#
# Usage: benchmarks/daemon-load.sh BIN_DIR [TOTAL] [CONCURRENCY]
#   BIN_DIR holds release builds of keeld, keel and keel-load
#   (swift build -c release --product keeld --product keel --product keel-load).
# Environment: KEEL_LOAD_DEFINED (50), KEEL_LOAD_RUNNING (20), KEEL_LOAD_DIR (/var/tmp),
# KEEL_LOAD_PERF=FILE records a perf profile of keeld during the dominfo run, and one of the whole
# machine during the mixed run in FILE.mixed.
set -euo pipefail

[ $# -ge 1 ] || { echo "usage: $0 BIN_DIR [TOTAL] [CONCURRENCY]" >&2; exit 2; }
bin=$(cd "$1" && pwd)
total=${2:-20000}
concurrency=${3:-200}
defined=${KEEL_LOAD_DEFINED:-50}
running=${KEEL_LOAD_RUNNING:-20}
repository=$(cd "$(dirname "$0")/.." && pwd)
for program in keeld keel keel-load; do
    [ -x "$bin/$program" ] || { echo "no $program in $bin" >&2; exit 1; }
done
make -s -C "$repository/guest"

work=$(mktemp -d "${KEEL_LOAD_DIR:-/var/tmp}/keel-load.XXXXXX")
state="$work/state"
socket="$work/keeld.sock"
keeld_pid=""
keel() { "$bin/keel" --connect "unix:$socket" "$@"; }

cleanup() {
    status=$?
    # The guests first (through keeld while it runs, else by their pidfiles), then keeld.
    if [ -n "$keeld_pid" ] && kill -0 "$keeld_pid" 2>/dev/null; then
        for i in $(seq -w 1 "$defined"); do keel destroy "load-$i" >/dev/null 2>&1 || true; done
        kill -TERM "$keeld_pid" 2>/dev/null || true
        for _ in $(seq 100); do kill -0 "$keeld_pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$keeld_pid" 2>/dev/null || true
    fi
    for pidfile in "$state"/run/*.pid; do
        [ -f "$pidfile" ] && kill -KILL "$(cat "$pidfile")" 2>/dev/null || true
    done
    if [ "${KEEL_LOAD_KEEP:-0}" = 1 ]; then echo "kept $work"; else rm -rf "$work"; fi
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

rss() { # PID → "VmRSS x kB, VmHWM y kB"
    awk '/^VmRSS|^VmHWM/ { printf "%s %s %s  ", $1, $2, $3 }' "/proc/$1/status"
}
mib() { awk '/^VmRSS/ { printf "%.1f", $2 / 1024 }' "/proc/$1/status"; }

"$bin/keeld" --state "$state" --socket "$socket" --log-level warning 2> "$work/keeld.log" &
keeld_pid=$!
for _ in $(seq 300); do [ -S "$socket" ] && break; sleep 0.1; done
[ -S "$socket" ] || { echo "keeld did not start:" >&2; cat "$work/keeld.log" >&2; exit 1; }
echo "keeld pid $keeld_pid, state $state"
echo "keeld memory, fresh:                 $(rss "$keeld_pid")"

for i in $(seq -w 1 "$defined"); do
    cat > "$work/load-$i.xml" <<XML
<domain type='qemu'>
  <name>load-$i</name>
  <memory unit='MiB'>16</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <kernel>$repository/guest/keel-guest.elf</kernel>
  </os>
  <cpu mode='custom' match='exact' check='none'><model fallback='forbid'>qemu64</model></cpu>
  <devices><serial type='file'><source path='$work/load-$i.serial'/></serial></devices>
</domain>
XML
    keel define "$work/load-$i.xml" >/dev/null
done
started=$(date +%s.%N)
for i in $(seq -w 1 "$running"); do keel start "load-$i" >/dev/null; done
echo "defined $defined, started $running in $(awk -v a="$started" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }') s"
sleep 5
echo "keeld memory, idle, $running guests:   $(rss "$keeld_pid")"
idle_mib=$(mib "$keeld_pid")

# dominfo over every domain, in turn.
: > "$work/dominfo.requests"
for i in $(seq -w 1 "$defined"); do echo "dominfo GET /v1/domains/load-$i" >> "$work/dominfo.requests"; done
# The mixed run: per running domain a suspend and a resume, among list, dominfo and dumpxml.
: > "$work/mixed.requests"
for i in $(seq -w 1 "$defined"); do
    echo "dominfo GET /v1/domains/load-$i" >> "$work/mixed.requests"
    echo "dumpxml GET /v1/domains/load-$i/xml" >> "$work/mixed.requests"
    [ $((10#$i % 5)) -eq 0 ] && echo "list GET /v1/domains" >> "$work/mixed.requests"
    if [ $((10#$i)) -le "$running" ]; then
        echo "suspend POST /v1/domains/load-$i/suspend {}" >> "$work/mixed.requests"
        echo "resume POST /v1/domains/load-$i/resume {}" >> "$work/mixed.requests"
    fi
done

echo
echo "\$ keel-load $socket $concurrency $total dominfo.requests"
perf_pid=""
if [ -n "${KEEL_LOAD_PERF:-}" ]; then
    # A profile of keeld during the dominfo run: perf report -i "$KEEL_LOAD_PERF".
    perf record -F 999 -g -p "$keeld_pid" -o "$KEEL_LOAD_PERF" 2>/dev/null &
    perf_pid=$!
    sleep 1
fi
"$bin/keel-load" "$socket" "$concurrency" "$total" "$work/dominfo.requests" | tee "$work/dominfo.result"
if [ -n "$perf_pid" ]; then kill -INT "$perf_pid"; wait "$perf_pid" || true; fi
echo "keeld memory, after the dominfo run: $(rss "$keeld_pid")"
echo
echo "\$ keel-load $socket $concurrency $total mixed.requests"
mixed_status=0
if [ -n "${KEEL_LOAD_PERF:-}" ]; then
    # The whole machine during the mixed run (keeld, the QEMUs and keel-load share two CPUs).
    perf record -F 999 -g -a -o "$KEEL_LOAD_PERF.mixed" 2>/dev/null &
    perf_pid=$!
    sleep 1
fi
"$bin/keel-load" "$socket" "$concurrency" "$total" "$work/mixed.requests" | tee "$work/mixed.result" || mixed_status=$?
if [ -n "$perf_pid" ]; then kill -INT "$perf_pid"; wait "$perf_pid" || true; fi
echo "keeld memory, after the mixed run:   $(rss "$keeld_pid")"

# Every state file still parses and the guests still run.
for i in $(seq -w 1 "$defined"); do keel dominfo "load-$i" --json > /dev/null; done
listed=$(keel list --all | grep -c 'load-')
live=$(keel list | grep -c 'load-')
# Resumed last? A resume may have entered the gate before its suspend: resume them all.
for i in $(seq -w 1 "$running"); do keel resume "load-$i" >/dev/null; done
live_running=$(keel list | grep -c ' running')
echo
echo "state after the runs: $listed domains listed, $live live, $live_running running after a final resume"
grep -ci 'error\|critical' "$work/keeld.log" | sed 's/^/keeld log lines with error or critical: /' || true

p99=$(awk '$1 == "dominfo" { print $6 }' "$work/dominfo.result")
echo
echo "dominfo p99 $p99 ms (goal < 20 ms); keeld RSS idle with $running guests $idle_mib MiB (goal < 30 MiB)"
fail=0
[ "$listed" -eq "$defined" ] || { echo "FAIL: $listed of $defined domains listed"; fail=1; }
[ "$live" -eq "$running" ] || { echo "FAIL: $live of $running guests live"; fail=1; }
[ "$mixed_status" -eq 0 ] || { echo "FAIL: the mixed run had errors"; fail=1; }
exit $fail
