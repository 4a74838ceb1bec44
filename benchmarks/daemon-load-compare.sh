#!/usr/bin/env bash
# Two keeld builds side by side under benchmarks/daemon-load.sh, rounds alternating (A, B, A, B…)
# so that both see the same machine; prints every round's numbers and the medians.
#
# Usage: benchmarks/daemon-load-compare.sh A_BIN_DIR B_BIN_DIR [ROUNDS] [TOTAL] [CONCURRENCY]
#   each BIN_DIR holds keeld, keel and keel-load (release builds); ROUNDS defaults to 3.
set -euo pipefail

[ $# -ge 2 ] || { echo "usage: $0 A_BIN_DIR B_BIN_DIR [ROUNDS] [TOTAL] [CONCURRENCY]" >&2; exit 2; }
a=$(cd "$1" && pwd)
b=$(cd "$2" && pwd)
rounds=${3:-3}
total=${4:-20000}
concurrency=${5:-200}
here=$(cd "$(dirname "$0")" && pwd)
results=$(mktemp -d "${TMPDIR:-/tmp}/keel-compare.XXXXXX")
trap 'rm -rf "$results"' EXIT

# One line per run: side, idle RSS MiB, dominfo req/s, p50, p99, mixed req/s, mixed dominfo p50,
# p99, suspend p50, p99, list p99.
summarize() { # SIDE LOG
    awk -v side="$1" '
        /keeld memory, idle/ { for (i = 1; i <= NF; i++) if ($i == "VmRSS:") rss = $(i + 1) / 1024 }
        /^requests / { run++; rate[run] = $(NF - 1) }
        $1 == "dominfo" && NF == 7 { p50[run] = $4; p99[run] = $6 }
        $1 == "suspend" { s50 = $4; s99 = $6 }
        $1 == "list" { l99 = $6 }
        END { printf "%s %.1f %s %s %s %s %s %s %s %s %s\n", side, rss, rate[1], p50[1], p99[1], rate[2], p50[2], p99[2], s50, s99, l99 }
    ' "$2"
}

for round in $(seq 1 "$rounds"); do
    for side in A B; do
        dir=$a; [ "$side" = B ] && dir=$b
        log="$results/$side-$round.log"
        "$here/daemon-load.sh" "$dir" "$total" "$concurrency" > "$log" 2>&1 || { echo "round $round $side failed:"; tail -20 "$log"; exit 1; }
        summarize "$side" "$log" | tee -a "$results/summary"
    done
done

echo
echo "A = $a"
echo "B = $b"
printf "%-4s %8s | %9s %8s %8s | %9s %8s %8s %9s %9s %8s\n" side "RSS MiB" "dominfo/s" "p50 ms" "p99 ms" "mixed/s" "p50 ms" "p99 ms" "susp p50" "susp p99" "list p99"
median() { sort -n | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
for side in A B; do
    line="$side"
    for column in $(seq 2 11); do
        line="$line $(awk -v s="$side" -v c="$column" '$1 == s { print $c }' "$results/summary" | median)"
    done
    echo "$line" | awk '{ printf "%-4s %8s | %9s %8s %8s | %9s %8s %8s %9s %9s %8s\n", $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11 }'
done
echo "(medians of $rounds rounds; $total requests, $concurrency in flight, per run)"
