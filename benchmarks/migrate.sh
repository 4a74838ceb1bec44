#!/usr/bin/env bash
# Live migration of a 256 MiB TCG guest whose RAM the test guest filled with incompressible data
# (fill=240), measured side by side in one run, rounds alternating (keel, raw, raw, keel, …):
#   keel migrate  two keelds on loopback (mutual TLS peer channel, their own state directories,
#                 sockets and host UUIDs), `keel --connect unix:SRC migrate NAME --to
#                 tls://127.0.0.1:PORT --persistent --undefinesource --json`, wall time of the
#                 command (Begin, Prepare with the destination's QEMU start and CPU check,
#                 Perform, Finish, Confirm, the source QEMU stopped);
#   raw QEMU      benchmarks/raw_qemu.py migrate with the same QEMU command lines Keel used
#                 (source: Keel's start; destination: Keel's incoming QEMU, -incoming defer):
#                 spawn the destination, migrate-incoming tcp:127.0.0.1:0, migrate with the
#                 parameters Keel sets (max-bandwidth 1 TiB/s, QEMU's default downtime-limit),
#                 poll query-migrate, cont on the destination, quit the source.
# The guest goes back and forth: each round migrates it from where it is to the other side.
# Prints every sample, then medians and the differences (Markdown).
#
# Usage: benchmarks/migrate.sh BIN_DIR [ROUNDS]   (BIN_DIR holds release `keeld` and `keel`; root;
#        default 5 rounds). Environment: KEEL_BENCH_FILL (MiB, default 240), KEEL_BENCH_MEMORY
#        (MiB, default 256), KEEL_BENCH_DIR (default /var/tmp), KEEL_BENCH_LOGS (a directory
#        that receives both keelds' logs at the end), KEEL_BENCH_LOG_LEVEL (keeld's, default
#        info; debug logs a line per migration phase with its time).
set -euo pipefail

[ $# -ge 1 ] || { echo "usage: $0 BIN_DIR [ROUNDS]" >&2; exit 2; }
bin=$(cd "$1" && pwd)
rounds=${2:-5}
fill=${KEEL_BENCH_FILL:-240}
memory=${KEEL_BENCH_MEMORY:-256}
log_level=${KEEL_BENCH_LOG_LEVEL:-info}
repository=$(cd "$(dirname "$0")/.." && pwd)
raw_tool="$repository/benchmarks/raw_qemu.py"
guest="$repository/guest/keel-guest.elf"
for tool in keeld keel; do
    [ -x "$bin/$tool" ] || { echo "no $tool in $bin (swift build -c release --product $tool)" >&2; exit 1; }
done
[ -f "$guest" ] || { echo "no $guest (make -C guest)" >&2; exit 1; }

work=$(mktemp -d "${KEEL_BENCH_DIR:-/var/tmp}/keel-migrate-bench.XXXXXX")
chmod 755 "$work"
name="keel-mig-$$"
keeld_pids=()

keel() { local side=$1; shift; "$bin/keel" --connect "unix:$work/$side/keeld.sock" "$@"; }
raw_qmp() { echo "$work/raw/$1/run/$name.qmp"; }
raw_pid() { echo "$work/raw/$1/run/$name.pid"; }

cleanup() {
    for side in a b; do
        python3 "$raw_tool" quit --qmp "$(raw_qmp $side)" --pidfile "$(raw_pid $side)" >/dev/null 2>&1 || true
    done
    for pid in "${keeld_pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${keeld_pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    # QEMUs the keelds left (keeld does not stop its guests when it stops).
    for pidfile in "$work"/a/state/run/*.pid "$work"/b/state/run/*.pid; do
        [ -f "$pidfile" ] && kill -9 "$(cat "$pidfile")" 2>/dev/null || true
    done
    if [ -n "${KEEL_BENCH_LOGS:-}" ]; then
        mkdir -p "$KEEL_BENCH_LOGS"
        cp "$work"/a/keeld.log "$KEEL_BENCH_LOGS/keeld-a.log" 2>/dev/null || true
        cp "$work"/b/keeld.log "$KEEL_BENCH_LOGS/keeld-b.log" 2>/dev/null || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# Two hosts: certificates from one CA, their own state, socket, host UUID and peer port.
sh "$repository/scripts/keel-pki.sh" init "$work/pki" >/dev/null
declare -A port
for side in a b; do
    sh "$repository/scripts/keel-pki.sh" host "$work/pki" "$side" 127.0.0.1 localhost >/dev/null
    mkdir -p "$work/$side/state" "$work/raw/$side/run"
    python3 -c 'import uuid; print(uuid.uuid4())' >"$work/$side/state/host-uuid"
    port[$side]=$(free_port)
    "$bin/keeld" --state "$work/$side/state" --socket "$work/$side/keeld.sock" --log-level "$log_level" \
        --tls-dir "$work/pki/$side" --listen "tls://127.0.0.1:${port[$side]}" >"$work/$side/keeld.log" 2>&1 &
    keeld_pids+=($!)
done
for side in a b; do
    for _ in $(seq 200); do keel "$side" list >/dev/null 2>&1 && break; sleep 0.05; done
    keel "$side" list >/dev/null || { echo "keeld $side does not answer:" >&2; cat "$work/$side/keeld.log" >&2; exit 1; }
done

. "$repository/benchmarks/fill-guest.sh"
fill_guest_xml "$name" "$memory" "$fill" "$work/keel.serial" >"$work/domain.xml"

# Rewrites a keel QEMU command line (NUL-separated) for raw slot SIDE: Keel's state directory
# becomes the slot's, the serial file raw.serial; -daemonize/-pidfile dropped (raw_qemu.py
# adds them).
raw_argv() { # IN KEEL_STATE SIDE OUT
    python3 - "$1" "$2" "$work/raw/$3" "$work/keel.serial" "$work/raw.serial" "$4" <<'EOF'
import sys
src, keel_state, raw_state, keel_serial, raw_serial, dst = sys.argv[1:]
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

qemu_argv() { cp "/proc/$(cat "$work/$1/state/run/$name.pid")/cmdline" "$2"; }
other() { [ "$1" = a ] && echo b || echo a; }

echo "# setup: $rounds rounds, ${memory} MiB TCG guests with fill=$fill, keelds on tls://127.0.0.1:${port[a]} (a) and :${port[b]} (b)"

# Warm-up, untimed: boot and fill the guest, record Keel's command lines (the source's start,
# the destination's incoming QEMU), migrate there and back once.
keel a define "$work/domain.xml" >/dev/null
keel a start "$name" >/dev/null
wait_filled "$work/keel.serial"
qemu_argv a "$work/keel-start.argv"
keel a migrate "$name" --to "tls://127.0.0.1:${port[b]}" --persistent --undefinesource >/dev/null
qemu_argv b "$work/keel-incoming.argv"
keel b migrate "$name" --to "tls://127.0.0.1:${port[a]}" --persistent --undefinesource >/dev/null
raw_argv "$work/keel-start.argv" "$work/a/state" a "$work/raw-start.argv"
for side in a b; do raw_argv "$work/keel-incoming.argv" "$work/b/state" "$side" "$work/raw-incoming-$side.argv"; done
python3 "$raw_tool" start --argv "$work/raw-start.argv" --qmp "$(raw_qmp a)" --pidfile "$(raw_pid a)" --cont 2>/dev/null
wait_filled "$work/raw.serial"
raw_migrate() { # FROM TO
    python3 "$raw_tool" migrate --qmp "$(raw_qmp "$1")" --pidfile "$(raw_pid "$1")" \
        --argv "$work/raw-incoming-$2.argv" --to-qmp "$(raw_qmp "$2")" --to-pidfile "$(raw_pid "$2")"
}
raw_migrate a b >/dev/null 2>&1
raw_migrate b a >/dev/null 2>&1
echo "# keel QEMU (source):      $(tr '\0' ' ' <"$work/keel-start.argv")"
echo "# keel QEMU (destination): $(tr '\0' ' ' <"$work/keel-incoming.argv")"
echo "# load average before: $(cut -d' ' -f1-3 /proc/loadavg)"

keel_at=a raw_at=a
declare -A samples
add() { samples[$1]+="$2 "; }
field() { python3 -c 'import json, sys; v = json.load(open(sys.argv[1])).get(sys.argv[2]); print("" if v is None else v)' "$1" "$2"; }

keel_round() {
    local to start end
    to=$(other "$keel_at")
    start=$(date +%s%N)
    keel "$keel_at" migrate "$name" --to "tls://127.0.0.1:${port[$to]}" --persistent --undefinesource --json >"$work/keel.json" 2>"$work/keel.stderr"
    end=$(date +%s%N)
    add keel_wall "$(((end - start) / 1000000))"
    add keel_total_time "$(field "$work/keel.json" totalTime)"
    add keel_downtime "$(field "$work/keel.json" downtime)"
    add keel_setup_time "$(field "$work/keel.json" setupTime)"
    add keel_measured_downtime "$(field "$work/keel.json" measuredDowntime)"
    [ "$(field "$work/keel.json" runningOnDestination)" = True ] || { echo "keel: the guest does not run on $to" >&2; cat "$work/keel.json" >&2; exit 1; }
    keel_at=$to
}
raw_round() {
    local to start end
    to=$(other "$raw_at")
    start=$(date +%s%N)
    raw_migrate "$raw_at" "$to" >"$work/raw.json" 2>"$work/raw.stderr"
    end=$(date +%s%N)
    add raw_wall "$(((end - start) / 1000000))"
    add raw_migrate_to_running "$(field "$work/raw.json" migrate_to_running_ms)"
    add raw_spawn_to_running "$(field "$work/raw.json" spawn_to_running_ms)"
    add raw_inside "$(field "$work/raw.json" total_ms)"
    add raw_total_time "$(field "$work/raw.json" total_time)"
    add raw_downtime "$(field "$work/raw.json" downtime)"
    add raw_setup_time "$(field "$work/raw.json" setup_time)"
    add raw_stop_to_cont "$(field "$work/raw.json" stop_to_cont_ms)"
    add raw_stop_to_resume "$(field "$work/raw.json" stop_to_resume_ms)"
    raw_at=$to
}
for round in $(seq "$rounds"); do
    if [ $((round % 2)) = 1 ]; then keel_round; raw_round; else raw_round; keel_round; fi
    echo "# round $round done (load $(cut -d' ' -f1 /proc/loadavg))"
done
echo "# load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
# Both guests still run after all these rounds: a new TICK (about one a second) within 3 s.
guest_runs() { # SERIAL
    local before
    before=$(grep -c '^TICK' "$1")
    for _ in $(seq 30); do
        sleep 0.1
        [ "$(grep -c '^TICK' "$1")" -gt "$before" ] && return 0
    done
    echo "the guest writing $1 does not run any more" >&2
    return 1
}
guest_runs "$work/keel.serial"
guest_runs "$work/raw.serial"

python3 - <<EOF
import statistics
samples = {$(for metric in "${!samples[@]}"; do printf '"%s": [%s], ' "$metric" "$(echo "${samples[$metric]}" | xargs | tr ' ' ',')"; done)}
# Beyond QEMU's own stream (total-time), per round: what each side adds around it. The stream's
# speed varies most on a shared machine; these do not.
def beyond(wall, stream):
    if len(samples.get(wall, [])) == len(samples.get(stream, [])) > 0:
        samples[wall + "_beyond"] = [w - t for w, t in zip(samples[wall], samples[stream])]
beyond("keel_wall", "keel_total_time")
beyond("raw_migrate_to_running", "raw_total_time")
beyond("raw_spawn_to_running", "raw_total_time")
med = {k: statistics.median(v) for k, v in samples.items() if v}
def fmt(x): return f"{x:.0f}" if isinstance(x, float) and abs(x) >= 10 else f"{x:g}"
print()
print("| measurement | median (ms) | samples (ms) |")
print("|---|---:|---|")
labels = [
    ("keel_wall", "keel migrate, wall (CLI start to exit: the whole protocol, source QEMU stopped)"),
    ("raw_migrate_to_running", "raw QEMU: migrate command → destination running (cont)"),
    ("raw_spawn_to_running", "raw QEMU: destination spawn → destination running"),
    ("raw_inside", "raw QEMU: whole raw_qemu.py migrate (spawn … source QEMU gone)"),
    ("raw_wall", "raw QEMU: python3 raw_qemu.py migrate, wall"),
    ("keel_total_time", "QEMU total-time, keel"), ("raw_total_time", "QEMU total-time, raw"),
    ("keel_downtime", "QEMU downtime, keel"), ("raw_downtime", "QEMU downtime, raw"),
    ("keel_measured_downtime", "measured downtime, keel (source paused → destination's finish-reply: running)"),
    ("raw_stop_to_cont", "measured downtime, raw (source STOP event → destination cont returned)"),
    ("raw_stop_to_resume", "measured downtime, raw (source STOP → destination RESUME, QMP timestamps)"),
    ("keel_setup_time", "QEMU setup-time, keel"), ("raw_setup_time", "QEMU setup-time, raw"),
]
for k, label in labels:
    if k in med:
        print(f"| {label} | {fmt(med[k])} | {', '.join(fmt(x) for x in samples[k])} |")
print()
print("| beyond QEMU's stream (wall − that round's total-time) | median (ms) | samples (ms) |")
print("|---|---:|---|")
for k, label in [("keel_wall_beyond", "keel migrate"), ("raw_migrate_to_running_beyond", "raw QEMU, migrate → running"),
                 ("raw_spawn_to_running_beyond", "raw QEMU, destination spawn → running")]:
    if k in med:
        print(f"| {label} | {fmt(med[k])} | {', '.join(fmt(x) for x in samples[k])} |")
print()
print("| comparison | difference (ms) | goal |")
print("|---|---:|---|")
d = med["keel_wall"] - med["raw_migrate_to_running"]
print(f"| keel migrate − raw QEMU (migrate → running) | {d:+.0f} | ≤ +100 ms: {'met' if d <= 100 else 'NOT met'} |")
print(f"| keel migrate − raw QEMU (destination spawn → running) | {med['keel_wall'] - med['raw_spawn_to_running']:+.0f} | (information) |")
print(f"| keel migrate − raw QEMU (whole, source gone) | {med['keel_wall'] - med['raw_inside']:+.0f} | (information) |")
if "keel_wall_beyond" in med:
    d = med["keel_wall_beyond"] - med["raw_migrate_to_running_beyond"]
    print(f"| beyond the stream: keel − raw (migrate → running) | {d:+.0f} | ≤ +100 ms: {'met' if d <= 100 else 'NOT met'} |")
    d = med["keel_wall_beyond"] - med["raw_spawn_to_running_beyond"]
    print(f"| beyond the stream: keel − raw (destination spawn → running) | {d:+.0f} | ≤ +100 ms: {'met' if d <= 100 else 'NOT met'} |")
if "keel_downtime" in med and "raw_downtime" in med:
    print(f"| QEMU downtime keel − raw | {med['keel_downtime'] - med['raw_downtime']:+.0f} | (information) |")
if "keel_measured_downtime" in med and "raw_stop_to_cont" in med:
    print(f"| measured downtime keel − raw | {med['keel_measured_downtime'] - med['raw_stop_to_cont']:+.0f} | (information) |")
EOF
