#!/bin/sh
# Builds and runs the libFuzzer target for the save image header and data area parsers.
#
#   scripts/fuzz-save-image.sh [libFuzzer options…]      e.g. -max_total_time=600
#
# The target is compiled with swiftc directly (not through SwiftPM, so `swift build` is not
# affected) from Sources/KeelSaveImage/*.swift plus Fuzz/SaveImageFuzz/SaveImageFuzz.swift, with
# libFuzzer and AddressSanitizer. New inputs go to a scratch corpus directory; the committed seed
# corpus in Fuzz/SaveImageFuzz/corpus is only read. Crashes are written to $OUT/crash-*.
set -eu

root=$(cd "$(dirname "$0")/.." && pwd)
out=${OUT:-"$root/.build-fuzz/save-image"}
mkdir -p "$out/corpus"

swiftc -sanitize=fuzzer,address -parse-as-library -O -g \
    -module-name KeelSaveImage \
    "$root"/Sources/KeelSaveImage/*.swift \
    "$root/Fuzz/SaveImageFuzz/SaveImageFuzz.swift" \
    -o "$out/save-image-fuzz" 2>&1 | grep -v "Cannot export local symbol" || true

test -x "$out/save-image-fuzz"
cd "$out"
exec ./save-image-fuzz -artifact_prefix="$out/" -max_len=200000 "$@" \
    "$out/corpus" "$root/Fuzz/SaveImageFuzz/corpus"
