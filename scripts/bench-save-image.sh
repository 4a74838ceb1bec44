#!/bin/sh
# Benchmarks `keel save-image info` and `keel save-image verify` with hyperfine.
#
#   scripts/bench-save-image.sh BIN_DIR
#
# BIN_DIR holds a release `keel` (swift build -c release --scratch-path .build-saveimage, then
# .build-saveimage/release). Images go to $KEEL_BENCH_DIR (default /tmp/keel-bench-save-image):
#   info-4g.save    4 GiB raw image: valid header, data area, QEVM stream start, the rest sparse;
#                   its cookie holds an updated CPU, so info loads the CPU map for the difference
#   info-4g-nocpu.save  the same with a cookie without <cpu> (QEMU changed nothing): no map load
#   verify-1g.save  raw image with 1 GiB of real stream data from /dev/urandom, made once, cached
# Targets: info < 20 ms on the 4 GiB image; verify >= 80% of `cat FILE > /dev/null` throughput
# on the page-cached 1 GiB image (both read the same bytes).
set -eu

if [ $# -ne 1 ] || [ ! -x "$1/keel" ]; then
    echo "usage: $0 BIN_DIR   (BIN_DIR/keel must exist)" >&2
    exit 2
fi
KEEL=$(cd "$1" && pwd)/keel
DIR=${KEEL_BENCH_DIR:-/tmp/keel-bench-save-image}
mkdir -p "$DIR"
command -v hyperfine >/dev/null || { echo "hyperfine is not installed" >&2; exit 2; }
command -v python3 >/dev/null || { echo "python3 is needed to write the image headers" >&2; exit 2; }

# Header (92 bytes, libvirt's virQEMUSaveHeader, little-endian) + data area (XML, NUL, cookie,
# NUL, 64 KiB of zeros) + the first 8 bytes of a QEMU stream. $2 = "nocpu": no <cpu> in the cookie.
write_head() {
    python3 - "$1" "${2:-cpu}" <<'EOF'
import struct, sys
xml = b"""<domain type='kvm'>
  <name>bench</name>
  <uuid>0d9e6a2c-8f62-4b8e-9a7f-2a1f3b4c5d6e</uuid>
  <memory unit='KiB'>4194304</memory>
  <vcpu placement='static'>2</vcpu>
  <os>
    <type arch='x86_64' machine='pc-i440fx-7.2'>hvm</type>
  </os>
  <cpu mode='custom' match='exact' check='partial'>
    <model fallback='forbid'>qemu64</model>
  </cpu>
</domain>
"""
cookie = b"""<cookie>
  <cpu mode='custom' match='exact' check='full'>
    <model fallback='forbid'>qemu64</model>
    <feature policy='require' name='hypervisor'/>
    <feature policy='require' name='lahf_lm'/>
  </cpu>
  <slirpHelper/>
</cookie>
"""
if sys.argv[2] == "nocpu":
    cookie = b"<cookie>\n  <slirpHelper/>\n</cookie>\n"
data = xml + b"\0" + cookie + b"\0" + b"\0" * 65536
header = b"LibvirtQemudSave" + struct.pack("<5I", 2, len(data), 1, 0, len(xml) + 1) + b"\0" * 56
with open(sys.argv[1], "wb") as f:
    f.write(header + data + bytes.fromhex("5145564d00000003"))
EOF
}

INFO_IMAGE=$DIR/info-4g.save
write_head "$INFO_IMAGE"
truncate -s 4G "$INFO_IMAGE"
NOCPU_IMAGE=$DIR/info-4g-nocpu.save
write_head "$NOCPU_IMAGE" nocpu
truncate -s 4G "$NOCPU_IMAGE"

VERIFY_IMAGE=$DIR/verify-1g.save
if [ ! -f "$VERIFY_IMAGE" ] || [ "$(stat -c %s "$VERIFY_IMAGE")" -lt 1073741824 ]; then
    write_head "$VERIFY_IMAGE.tmp"
    dd if=/dev/urandom bs=4M count=256 status=none >> "$VERIFY_IMAGE.tmp"
    mv "$VERIFY_IMAGE.tmp" "$VERIFY_IMAGE"
fi
"$KEEL" save-image verify "$VERIFY_IMAGE" >/dev/null

echo "== keel save-image info on a 4 GiB image (keel --help: the process start-up floor)"
hyperfine -N --warmup 5 --runs 50 --export-json "$DIR/info.json" \
    "$KEEL save-image info $INFO_IMAGE" \
    "$KEEL save-image info $NOCPU_IMAGE" \
    "$KEEL --help"

echo "== keel save-image verify vs cat on a 1 GiB raw image (page cache warm)"
hyperfine -N --warmup 2 --runs 10 --export-json "$DIR/verify.json" \
    "$KEEL save-image verify $VERIFY_IMAGE" \
    "sh -c 'cat $VERIFY_IMAGE > /dev/null'"

python3 - "$DIR/info.json" "$DIR/verify.json" "$VERIFY_IMAGE" <<'EOF'
import json, os, sys
info, nocpu, floor = json.load(open(sys.argv[1]))["results"]
verify, cat = json.load(open(sys.argv[2]))["results"]
size = os.path.getsize(sys.argv[3])
mib = size / (1 << 20)
print()
for name, r in [("info (CPU difference)", info), ("info (no cookie CPU)", nocpu), ("keel --help", floor)]:
    print(f"{name:22s} mean {r['mean'] * 1000:6.2f} ms, median {r['median'] * 1000:6.2f} ms, "
          f"min {r['min'] * 1000:6.2f} ms, user+sys {(r['user'] + r['system']) * 1000:6.2f} ms")
print("target: info < 20 ms")
print(f"verify: mean {verify['mean'] * 1000:.1f} ms = {mib / verify['mean']:.0f} MiB/s")
print(f"cat:    mean {cat['mean'] * 1000:.1f} ms = {mib / cat['mean']:.0f} MiB/s")
print(f"verify/cat throughput ratio: {cat['mean'] / verify['mean']:.2f} (target >= 0.80)")
EOF
