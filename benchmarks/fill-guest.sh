# Shared by the benchmarks (source it): the test guest that fills its memory with data and
# prints FILLED, as a TCG domain, and waiting for it. Needs $repository.

# fill_guest_xml NAME MEMORY_MIB FILL SERIAL [acpi]: the domain XML on standard output.
fill_guest_xml() {
    local features=""
    [ "${5:-}" = acpi ] && features="
  <features>
    <acpi/>
  </features>"
    cat <<EOF2
<domain type='qemu'>
  <name>$1</name>
  <memory unit='MiB'>$2</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <kernel>$repository/guest/keel-guest.elf</kernel>
    <cmdline>fill=$3</cmdline>
  </os>$features
  <cpu mode='custom' match='exact' check='partial'>
    <model fallback='forbid'>qemu64</model>
  </cpu>
  <devices>
    <controller type='usb' model='none'/>
    <serial type='file'>
      <source path='$4' append='on'/>
    </serial>
    <memballoon model='none'/>
  </devices>
</domain>
EOF2
}

wait_filled() { # SERIAL
    for _ in $(seq 1200); do
        grep -q '^FILLED' "$1" 2>/dev/null && return 0
        sleep 0.1
    done
    echo "the guest did not print FILLED into $1" >&2
    return 1
}
