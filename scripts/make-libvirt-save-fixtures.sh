#!/bin/sh
# Creates save images with real libvirt (virsh save) for KeelSaveImageTests.
#
#   scripts/make-libvirt-save-fixtures.sh
#
# Needs libvirt 9.0 (libvirtd, virtlogd, virsh), QEMU and python3, and root: it edits
# /etc/libvirt/qemu.conf (user/group root, dynamic_ownership 0, save_image_format) and starts or
# restarts libvirtd itself (no systemd). The guest is a transient TCG domain with 32 MiB and no
# disks (it spins in SeaBIOS), saved once raw and once with gzip.
#
# Each fixture keeps only header + data area + the first 64 KiB of the QEMU stream; the
# original size and checksum go into <name>.meta beside it, with the header fields, and the XML
# and cookie text as python's independent parse of the layout found them (<name>.xml,
# <name>.cookie). Regenerating changes UUIDs and stream bytes; review the diff.
set -eu

root=$(cd "$(dirname "$0")/.." && pwd)
out="$root/Tests/KeelSaveImageTests/Fixtures"
work=$(mktemp -d /tmp/keel-libvirt-fixtures.XXXXXX)
conf=/etc/libvirt/qemu.conf
name=keel-fixture
keep=65536

for tool in virsh libvirtd virtlogd python3 qemu-system-x86_64; do
    command -v "$tool" >/dev/null || { echo "missing: $tool" >&2; exit 1; }
done
mkdir -p "$out"

set_conf() {  # key value
    sed -i "/^$1 *=/d" "$conf"
    echo "$1 = $2" >> "$conf"
}

restart_libvirtd() {
    if [ -f /run/libvirtd.pid ] && kill -0 "$(cat /run/libvirtd.pid)" 2>/dev/null; then
        pid=$(cat /run/libvirtd.pid)
        kill "$pid"
        while kill -0 "$pid" 2>/dev/null; do sleep 0.2; done
    fi
    libvirtd -d
    for _ in $(seq 50); do virsh -c qemu:///system version >/dev/null 2>&1 && return; sleep 0.2; done
    echo "libvirtd did not come up" >&2; exit 1
}

set_conf user '"root"'
set_conf group '"root"'
set_conf dynamic_ownership 0
pgrep -x virtlogd >/dev/null || virtlogd -d

cat > "$work/guest.xml" <<XML
<domain type='qemu'>
  <name>$name</name>
  <memory unit='MiB'>32</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type></os>
  <cpu mode='custom' match='exact' check='partial'>
    <model fallback='forbid'>qemu64</model>
  </cpu>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <memballoon model='none'/>
  </devices>
</domain>
XML

save() {  # fixture-name format
    set_conf save_image_format "\"$2\""
    restart_libvirtd
    virsh -c qemu:///system destroy "$name" >/dev/null 2>&1 || true
    virsh -c qemu:///system create "$work/guest.xml" >/dev/null
    sleep 1
    virsh -c qemu:///system save "$name" "$work/$1.save" >/dev/null
    python3 - "$work/$1.save" "$out/$1" "$keep" "$2" <<'PY'
import hashlib, struct, subprocess, sys
src, dst, keep, fmt = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
data = open(src, "rb").read()
magic = data[:16].decode()
version, data_len, was_running, compressed, cookie_off = struct.unpack("<5I", data[16:36])
area = data[92:92 + data_len]
xml_end = cookie_off if cookie_off else data_len
xml = area[:xml_end].split(b"\0", 1)[0]
cookie = area[cookie_off:].split(b"\0", 1)[0] if cookie_off else None
kept = 92 + data_len + keep
open(dst + ".save", "wb").write(data[:kept])
open(dst + ".xml", "wb").write(xml)
if cookie is not None:
    open(dst + ".cookie", "wb").write(cookie)
versions = subprocess.run(["virsh", "-c", "qemu:///system", "version"], capture_output=True, text=True).stdout
with open(dst + ".meta", "w") as f:
    f.write(f"source=virsh save (save_image_format={fmt})\n")
    for line in versions.splitlines():
        if ":" in line:
            key, value = line.split(":", 1)
            f.write(f"{key.strip().lower().replace(' ', '-')}={value.strip()}\n")
    f.write(f"original-size={len(data)}\n")
    f.write(f"original-sha256={hashlib.sha256(data).hexdigest()}\n")
    f.write(f"truncated-to={min(kept, len(data))}\n")
    f.write(f"magic={magic}\nversion={version}\ndata-length={data_len}\nwas-running={was_running}\n")
    f.write(f"compressed={compressed}\ncookie-offset={cookie_off}\n")
    f.write(f"stream-offset={92 + data_len}\nstream-head={data[92 + data_len:92 + data_len + 8].hex()}\n")
PY
}

save libvirt-9.0-raw raw
save libvirt-9.0-gzip gzip

# Leave qemu.conf saving raw again.
set_conf save_image_format '"raw"'
restart_libvirtd
rm -rf "$work"
ls -l "$out"
