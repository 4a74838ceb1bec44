#!/bin/bash
# Runs the built test suites serially under a watchdog (make test calls this).
#
# The end-to-end suites drive real QEMU, real libvirt and real keeld processes; a hang in one
# of them must fail the run within KEEL_TEST_TIMEOUT seconds (default 2400) and say where it
# hung — the tests still running, the processes still alive — instead of eating CI's budget.
# The full log is kept in .build/test.log.
set -u
cd "$(dirname "$0")/.."

limit=${KEEL_TEST_TIMEOUT:-2400}
swift=${SWIFT:-swift}
log=.build/test.log
mkdir -p .build
: >"$log"

# Line-buffered, so that the log is complete up to the moment a hang is detected.
setsid stdbuf -oL -eL "$swift" test --skip-build --no-parallel "$@" >"$log" 2>&1 &
runner=$!
tail -n +1 -f "$log" --pid=$runner &
follower=$!

started=$SECONDS
while kill -0 "$runner" 2>/dev/null; do
    if (( SECONDS - started >= limit )); then
        sleep 1
        echo
        echo "TIMEOUT: the tests did not finish within ${limit}s (KEEL_TEST_TIMEOUT)."
        echo "Tests started and not finished:"
        python3 - "$log" <<'EOF'
import re, sys
running = {}
for line in open(sys.argv[1], encoding="utf-8", errors="replace"):
    m = re.search(r'(?:Test|Suite) (".*?"|\S+) started', line)
    if m:
        running[m.group(1)] = line.strip()
        continue
    m = re.search(r'(?:Test|Suite) (".*?"|\S+) (?:passed|failed|skipped|with \d+ test cases? (?:passed|failed))', line)
    if m:
        running.pop(m.group(1), None)
    m = re.search(r"Test Case '([^']*)' (passed|failed|skipped)", line)
    if m:
        running.pop(m.group(1), None)
    m = re.search(r"Test Case '([^']*)' started", line)
    if m:
        running[m.group(1)] = line.strip()
for line in running.values():
    print("  " + line)
EOF
        echo "Processes of the run:"
        ps -eo pid,ppid,etimes,args --forest | grep -v -E '\[(k|rcu|cpuhp|migration|idle)' | awk -v root="$runner" '
            { pid[NR]=$1; ppid[NR]=$2; text[NR]=$0; parent[$1]=$2 }
            END { for (i = 1; i <= NR; i++) { p = pid[i]; while (p != "" && p != root && p > 1) p = parent[p]; if (p == root) print "  " text[i] } }'
        echo "Other QEMU, keeld and libvirt processes:"
        pgrep -a -f 'qemu-system|keeld|libvirtd|virtlogd' | sed 's/^/  /' || true
        kill -TERM -- "-$runner" 2>/dev/null
        sleep 5
        kill -KILL -- "-$runner" 2>/dev/null
        wait "$runner" 2>/dev/null
        kill "$follower" 2>/dev/null
        exit 124
    fi
    sleep 2
done
wait "$runner"
status=$?
sleep 0.5
kill "$follower" 2>/dev/null
wait "$follower" 2>/dev/null
exit "$status"
