#!/usr/bin/env bash
# keeld's resident memory, broken down: fresh, with N tiny TCG guests started through it, and
# 2 s later (after HeapTrimmer's trim). Per mapping (from /proc/PID/smaps, those over 300 kB),
# RssAnon/RssFile/Threads (from /proc/PID/status), and the anonymous mappings by size.
#
# Usage: benchmarks/keeld-memory.sh BIN_DIR [N]   (BIN_DIR holds release keeld and keel; N=20)
# Environment: KEEL_MEMORY_PREFIX, a command keeld runs under (e.g. "env MALLOC_ARENA_MAX=1").
set -euo pipefail
[ $# -ge 1 ] || { echo "usage: $0 BIN_DIR [N]" >&2; exit 2; }
bin=$(cd "$1" && pwd)
n=${2:-20}
repository=$(cd "$(dirname "$0")/.." && pwd)
command -v gawk >/dev/null || { echo "gawk is needed (apt-get install gawk)" >&2; exit 1; }
make -s -C "$repository/guest"
work=$(mktemp -d /var/tmp/keeld-memory.XXXXXX)
sock=$work/keeld.sock
kp=""
cleanup() {
    if [ -n "$kp" ]; then
        for i in $(seq -w 1 "$n"); do "$bin/keel" --connect "unix:$sock" destroy "m$i" >/dev/null 2>&1 || true; done
        kill "$kp" 2>/dev/null || true; wait "$kp" 2>/dev/null || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT
# shellcheck disable=SC2086
${KEEL_MEMORY_PREFIX:-} "$bin/keeld" --state "$work/state" --socket "$sock" --log-level warning 2> "$work/keeld.log" &
kp=$!
for _ in $(seq 100); do [ -S "$sock" ] && break; sleep 0.1; done
[ -S "$sock" ] || { echo "keeld did not start:" >&2; cat "$work/keeld.log" >&2; exit 1; }
report() {
    echo "== $1"
    grep -E "VmRSS|RssAnon|RssFile|Threads" "/proc/$kp/status" | tr -s ' \t\n' ' '; echo
    gawk '/^[0-9a-f]+-[0-9a-f]+ /{ split($1, a, "-"); size = (strtonum("0x" a[2]) - strtonum("0x" a[1])) / 1024; name = $6 }
          /^Rss:/{ key = (name == "" ? sprintf("[anon %d kB]", size) : name); rss[key] += $2; count[key]++ }
          END { for (k in rss) if (rss[k] > 300) printf "  %7d kB  %s%s\n", rss[k], k, (count[k] > 1 ? " x" count[k] : "") }' \
        "/proc/$kp/smaps" | sort -rn
}
report "fresh"
for i in $(seq -w 1 "$n"); do
    cat > "$work/m$i.xml" <<XML
<domain type='qemu'><name>m$i</name><memory unit='MiB'>16</memory><vcpu>1</vcpu>
<os><type arch='x86_64' machine='pc'>hvm</type><kernel>$repository/guest/keel-guest.elf</kernel></os>
<cpu mode='custom' match='exact' check='none'><model fallback='forbid'>qemu64</model></cpu>
<devices><serial type='file'><source path='$work/m$i.serial'/></serial></devices></domain>
XML
    "$bin/keel" --connect "unix:$sock" define "$work/m$i.xml" >/dev/null
    "$bin/keel" --connect "unix:$sock" start "m$i" >/dev/null
done
report "with $n guests, just started"
sleep 2
report "2 s later (the heap trimmed)"
