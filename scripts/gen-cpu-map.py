#!/usr/bin/env python3
"""Generate Keel's built-in x86 CPU map from what QEMU reports.

Usage:
    scripts/gen-cpu-map.py            regenerate Sources/KeelCPU/CPUMap/ and
                                      Sources/KeelCPU/BuiltinCPUMap.generated.swift
    scripts/gen-cpu-map.py --check    regenerate into a temporary directory and exit 1
                                      (with a diff summary) if the committed files differ
    --qemu PATH                       QEMU binary (default: qemu-system-x86_64 on PATH)

The output is libvirt's cpu_map directory format (as loaded by libvirt 9.0, see
docs/formats/cpu-map.md) plus two Keel extensions: every QEMU spelling of a feature
that differs from libvirt's is recorded as <alias name='...' source='qemu'/> inside the
<feature>, and every unversioned QEMU model carries <alias-of name='Model-vN'/>.
Only the Python 3 standard library is used.  QEMU always runs with `-accel tcg`, never
KVM, so the output does not depend on the host CPU.

Where each piece of data comes from
-----------------------------------
Models (query-cpu-definitions, `-machine none -accel tcg`)
    Every model except base/host/max.  Unversioned names are QEMU's aliases
    (`alias-of`, e.g. Cascadelake-Server -> Cascadelake-Server-v1 and
    Cascadelake-Server-noTSX -> Cascadelake-Server-v3); they get decode on/on and an
    <alias-of>.  Versioned `-vN` models get decode off/off so decoding picks the
    plain names.  The *-noTSX models libvirt 9.0 marks host-only keep libvirt's
    decode host='on' guest='off' (see LIBVIRT_DECODE).

Model contents (query-cpu-model-expansion type=static)
    Static expansion returns every feature under QEMU's canonical name (the
    feat_names of target/i386/cpu.c) plus family, model, stepping and vendor.  A model
    lists every feature of the map that expansion reports enabled.  That includes MSR
    features where QEMU's model has them (arch-capabilities bits in Cooperlake,
    split-lock-detect in Snowridge), exactly as libvirt 9.0's models do; no model gets
    vmx-* bits because QEMU drops them when the model lacks the vmx CPUID bit.
    Three adjustments, each checked against QEMU at run time or documented here:
      * `hypervisor` is dropped: x86_cpu_load_model() sets it on every built-in model
        regardless of the definition, and libvirt's models never list it.  The script
        fails if some model does not report it.
      * `vme` is restored: under TCG, QEMU's accelerator instance-init applies
        tcg_default_props = {vme=off} (target/i386/tcg/tcg-cpu.c) to every built-in
        model, so no model reports vme under TCG although the definitions set it.
        KVM is not allowed here and this QEMU build has no accelerator that shows the
        raw definition (no qtest), so this is the one model bit taken from a table:
        every model in QEMU 7.2's builtin_x86_defs sets CPUID_VME except qemu32 and
        qemu64 (MODELS_WITHOUT_VME).  The script fails if any model reports vme under
        TCG (the TCG default changed) and warns when QEMU is not 7.2.
      * The generic models libvirt 9.0 keeps vendor-neutral (VENDOR_NEUTRAL_MODELS:
        486, pentium*, qemu32/64, kvm32/64 and their versions) get no <vendor> and no
        <signature>, so they keep matching CPUs of every vendor as in libvirt.
    Every other model gets <signature family model> from QEMU (no stepping; the
    comment is QEMU's CPUID[1].EAX) and the <vendor> that matches QEMU's vendor
    string (Intel/GenuineIntel, AMD/AuthenticAMD, Hygon/HygonGenuine).

Features: CPUID bits (probed)
    A `-machine pc -accel tcg -cpu base -S` QEMU is started with free CPU slots; for
    every boolean property of the base CPU type (qom-list-properties) a CPU is
    hot-added with `device_add base-x86_64-cpu,<prop>=on,check=on` and the union of
    its `feature-words` and `filtered-features` is diffed against the plain base CPU.
    (A property whose hot-add kills QEMU -- apic, because the APIC-less boot CPU has
    no APIC bus -- is probed in a QEMU of its own started with `-cpu base,<prop>=on`.)
    The diff gives the CPUID leaf (cpuid-input-eax), subleaf (cpuid-input-ecx when
    QEMU reports one), register and bit(s).  Properties with the same diff are one
    feature under several names (QEMU's aliases, e.g. sse3/pni, lahf_lm/lahf-lm).
    The xsave-component words (leaf 0xd subleaf 0 eax/edx, subleaf 1 ecx/edx) are
    computed by QEMU, not features, and are ignored.

Features: KVM paravirt leaf 0x40000001 eax (table)
    x86_cpu_expand_features() zeroes this feature word whenever the accelerator is not
    KVM, so under TCG its bits show up nowhere (not in feature-words, not in
    filtered-features, no warning).  Their bits come from KVM_LEAF_EAX_BITS, a copy
    of QEMU 7.2's feature_word_info[FEAT_KVM] in target/i386/cpu.c.  The script checks
    that the table names exactly the static-expansion features whose probe moved no
    bit, so a QEMU that adds or drops such a feature makes it fail, not guess.
    (kvm-hint-dedicated, leaf 0x40000001 edx, is not zeroed and is probed.)

Features: MSR bits (from QEMU's own diagnostics)
    `feature-words` does not cover MSR feature words.  Instead the generator reads
    the warning QEMU prints for an enabled feature it must drop ("TCG doesn't support
    requested feature: MSR(48FH).vmx-exit-nosave-debugctl [bit 2]", or "This feature
    depends on other features that were not requested: MSR(10AH).rdctl-no [bit 0]").
    Under TCG every MSR feature word is unsupported, so each MSR feature probed
    produces such a line; it names the MSR index QEMU's feature_word_info uses and the
    bit in QEMU's 64-bit feature word.  Bit n is written as eax bit n when n < 32 and
    as edx bit n-32 otherwise (vmx-ins-outs, bit 54 of IA32_VMX_BASIC 0x480, is
    edx 0x00400000).  This is QEMU's numbering: for the VMX control MSRs (0x48b and
    the TRUE_*_CTLS 0x48d-0x490) QEMU's word holds the allowed-1 control bits, which
    the hardware MSR reports in its high half; treat those bits as identifiers.  QEMU
    7.2 names bits 25 and 41 of IA32_VMX_EPT_VPID_CAP both "vmx-invept-single-context"
    (41 is really INVVPID single-context), so that feature has two bits.  No MSR bit
    position is hard-coded.

Names
    Features libvirt 9.0 knows carry libvirt's name (LIBVIRT_FEATURES, matched by
    leaf/subleaf/register/bit, and LIBVIRT_QEMU_TRANSLATION for the KVM leaf names
    kvm_pv_eoi/kvm_pv_unhalt libvirt knows only through qemu_capabilities.c); every
    QEMU property name of the feature that differs is an <alias source='qemu'>.
    Features only QEMU knows use QEMU's canonical name (a key of the static
    expansion).  libvirt's `source='linux'` aliases are kept.  Features libvirt 9.0
    knows but QEMU 7.2 does not (cmt, cvt16, mbm_local, mbm_total, ospke, osxsave,
    pconfig) are not in the map; the generator prints them.

Order
    Features follow libvirt's x86_features.xml: libvirt's register groups in libvirt's
    order, bits ascending inside a group, and each group libvirt lacks placed after
    the last libvirt group (in libvirt's order) whose (leaf, subleaf, register) or
    MSR key is lower.  Models follow libvirt 9.0's index.xml (LIBVIRT_MODEL_GROUPS),
    each alias followed by the version it resolves to and then the versions no alias
    points to; models libvirt lacks go next to their closest relative
    (EXTRA_MODEL_PLACEMENT).

Migratability
    `migratable='no'` marks (a) any feature that query-cpu-model-expansion(full) of
    `max` reports enabled with migratable=off but not with migratable=on under TCG
    (none in QEMU 7.2: TCG supports no unmigratable feature), (b) invtsc, the only
    bit in QEMU 7.2's unmigratable_flags (feature_word_info[FEAT_8000_0007_EDX] in
    target/i386/cpu.c; not observable under TCG), and (c) xsaves, which libvirt 9.0
    marks, so Keel's migratable filtering matches libvirt's.  See MIGRATION_BLOCKERS.

Differences from libvirt 9.0's same-named model files (QEMU is the source of truth
here, and libvirt never changes a model once shipped):
    * QEMU's definitions have bits libvirt's older copies lack: vme (Conroe..Broadwell,
      Opteron_G*, kvm32/64, phenom), arat/xsaveopt/abm/f16c/rdrand (SandyBridge..
      Broadwell), pku (Skylake-Server, Cascadelake), monitor/npt/nrip-save/topoext
      (EPYC*, Dhyana, Opteron_G3..G5), acpi/ss/lahf_lm/cx16 (coreduo, core2duo, n270),
      and the arch-capabilities bits of the later -noTSX versions.
    * QEMU 7.2 dropped mpx from the Skylake/Cascadelake/Icelake models; libvirt keeps
      it.  libvirt's removed='yes' entries (monitor, intel-pt) are not produced.
    * Signatures: one per model, QEMU's family/model, no stepping ranges; libvirt lists
      several per model for host decoding.  QEMU 7.2 gives Icelake-Server model 134
      (libvirt: 106), the same as Snowridge.
    * QEMU 7.2 has no pentiumpro, cpu64-rhel5/6 or Icelake-Client*; libvirt 9.0 has no
      Denverton or KnightsMill.
"""

import argparse
import difflib
import json
import os
import re
import select
import shutil
import subprocess
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MAP_DIR = os.path.join("Sources", "KeelCPU", "CPUMap")
SWIFT_FILE = os.path.join("Sources", "KeelCPU", "BuiltinCPUMap.generated.swift")

REGISTERS = ["eax", "ebx", "ecx", "edx"]

# Words QEMU computes from other features (xsave components); never features.
IGNORED_WORDS = {(0xD, 0, "eax"), (0xD, 0, "edx"), (0xD, 1, "ecx"), (0xD, 1, "edx")}

# Boolean CPU properties that are device state, not CPU configuration; never probed.
NOT_PROBED = {"realized", "hotplugged", "hotpluggable", "start-powered-off", "enforce", "check"}

VENDORS = [("Intel", "GenuineIntel"), ("AMD", "AuthenticAMD"), ("Hygon", "HygonGenuine")]

# QEMU adds this to every built-in model (x86_cpu_load_model); libvirt models omit it.
ADDED_TO_EVERY_MODEL = "hypervisor"

# See the module docstring: TCG forces vme off on every model; these QEMU 7.2
# definitions (target/i386/cpu.c builtin_x86_defs) are the only ones without CPUID_VME.
MODELS_WITHOUT_VME = {"qemu32", "qemu64"}
VME_TABLE_QEMU = (7, 2)

# Leaf 0x40000001 (KVM paravirt features), eax bit(s) per QEMU name, from QEMU 7.2's
# feature_word_info[FEAT_KVM] in target/i386/cpu.c.  x86_cpu_expand_features() zeroes
# this word whenever KVM is not the accelerator, so under TCG these bits can be seen
# neither in feature-words nor in filtered-features nor in a warning.  The script
# checks that these are exactly the static-expansion features whose probe moved no
# bit (apart from NOT_FEATURES).
KVM_LEAF = 0x40000001
KVM_LEAF_EAX_BITS = {
    "kvmclock": (0, 3), "kvm-nopiodelay": (1,), "kvm-mmu": (2,), "kvm-asyncpf": (4,),
    "kvm-steal-time": (5,), "kvm-pv-eoi": (6,), "kvm-pv-unhalt": (7,),
    "kvm-pv-tlb-flush": (9,), "kvm-pv-ipi": (11,), "kvm-poll-control": (12,),
    "kvm-pv-sched-yield": (13,), "kvm-asyncpf-int": (14,), "kvm-msi-ext-dest-id": (15,),
    "kvmclock-stable-bit": (24,),
}

# Boolean keys of the static expansion that are CPU settings, not CPUID/MSR features.
NOT_FEATURES = {"lmce"}

# QEMU's generic models that libvirt 9.0 defines without <vendor> (and, like all of
# libvirt's generic models, without <signature>): they are meant to run on hosts of any
# vendor, and a vendor in the map would stop them matching CPUs of the other vendor
# (qemu64 and kvm64 are "AuthenticAMD"/"GenuineIntel" in QEMU).  These get neither.
VENDOR_NEUTRAL_MODELS = {"486", "pentium", "pentium2", "pentium3", "qemu32", "kvm32", "qemu64", "kvm64"}

# feature -> why it is marked migratable='no' (in addition to what QEMU reports).
MIGRATION_BLOCKERS = {
    "invtsc": "QEMU unmigratable_flags of FEAT_8000_0007_EDX (target/i386/cpu.c)",
    "xsaves": "marked migratable='no' by libvirt 9.0's x86_features.xml",
}

# libvirt 9.0 src/qemu/qemu_capabilities.c virQEMUCapsCPUFeaturesX86: libvirt name ->
# QEMU name, for names libvirt spells differently (two of them are not in the map).
LIBVIRT_QEMU_TRANSLATION = {
    "cmp_legacy": "cmp-legacy", "ds_cpl": "ds-cpl", "fxsr_opt": "fxsr-opt",
    "kvm_pv_eoi": "kvm-pv-eoi", "kvm_pv_unhalt": "kvm-pv-unhalt", "lahf_lm": "lahf-lm",
    "nodeid_msr": "nodeid-msr", "pclmuldq": "pclmulqdq", "perfctr_core": "perfctr-core",
    "perfctr_nb": "perfctr-nb", "tsc_adjust": "tsc-adjust",
}

# libvirt 9.0 src/cpu_map/x86_features.xml, in file order: name, location, register,
# bit, extras (alias@linux, nomig).  Used for naming, ordering and as a cross-check.
LIBVIRT_FEATURES = """
fpu                    cpuid 0x01         edx  0
vme                    cpuid 0x01         edx  1
de                     cpuid 0x01         edx  2
pse                    cpuid 0x01         edx  3
tsc                    cpuid 0x01         edx  4
msr                    cpuid 0x01         edx  5
pae                    cpuid 0x01         edx  6
mce                    cpuid 0x01         edx  7
cx8                    cpuid 0x01         edx  8
apic                   cpuid 0x01         edx  9
sep                    cpuid 0x01         edx 11
mtrr                   cpuid 0x01         edx 12
pge                    cpuid 0x01         edx 13
mca                    cpuid 0x01         edx 14
cmov                   cpuid 0x01         edx 15
pat                    cpuid 0x01         edx 16
pse36                  cpuid 0x01         edx 17
pn                     cpuid 0x01         edx 18
clflush                cpuid 0x01         edx 19
ds                     cpuid 0x01         edx 21
acpi                   cpuid 0x01         edx 22
mmx                    cpuid 0x01         edx 23
fxsr                   cpuid 0x01         edx 24
sse                    cpuid 0x01         edx 25
sse2                   cpuid 0x01         edx 26
ss                     cpuid 0x01         edx 27
ht                     cpuid 0x01         edx 28
tm                     cpuid 0x01         edx 29
ia64                   cpuid 0x01         edx 30
pbe                    cpuid 0x01         edx 31
pni                    cpuid 0x01         ecx  0
pclmuldq               cpuid 0x01         ecx  1
dtes64                 cpuid 0x01         ecx  2
monitor                cpuid 0x01         ecx  3
ds_cpl                 cpuid 0x01         ecx  4
vmx                    cpuid 0x01         ecx  5
smx                    cpuid 0x01         ecx  6
est                    cpuid 0x01         ecx  7
tm2                    cpuid 0x01         ecx  8
ssse3                  cpuid 0x01         ecx  9
cid                    cpuid 0x01         ecx 10
fma                    cpuid 0x01         ecx 12
cx16                   cpuid 0x01         ecx 13
xtpr                   cpuid 0x01         ecx 14
pdcm                   cpuid 0x01         ecx 15
pcid                   cpuid 0x01         ecx 17
dca                    cpuid 0x01         ecx 18
sse4.1                 cpuid 0x01         ecx 19
sse4.2                 cpuid 0x01         ecx 20
x2apic                 cpuid 0x01         ecx 21
movbe                  cpuid 0x01         ecx 22
popcnt                 cpuid 0x01         ecx 23
tsc-deadline           cpuid 0x01         ecx 24
aes                    cpuid 0x01         ecx 25
xsave                  cpuid 0x01         ecx 26
osxsave                cpuid 0x01         ecx 27
avx                    cpuid 0x01         ecx 28
f16c                   cpuid 0x01         ecx 29
rdrand                 cpuid 0x01         ecx 30
hypervisor             cpuid 0x01         ecx 31
arat                   cpuid 0x06         eax  2
fsgsbase               cpuid 0x07:0x00    ebx  0
tsc_adjust             cpuid 0x07:0x00    ebx  1
sgx                    cpuid 0x07:0x00    ebx  2
bmi1                   cpuid 0x07:0x00    ebx  3
hle                    cpuid 0x07:0x00    ebx  4
avx2                   cpuid 0x07:0x00    ebx  5
smep                   cpuid 0x07:0x00    ebx  7
bmi2                   cpuid 0x07:0x00    ebx  8
erms                   cpuid 0x07:0x00    ebx  9
invpcid                cpuid 0x07:0x00    ebx 10
rtm                    cpuid 0x07:0x00    ebx 11
cmt                    cpuid 0x07:0x00    ebx 12  cqm@linux
mpx                    cpuid 0x07:0x00    ebx 14
avx512f                cpuid 0x07:0x00    ebx 16
avx512dq               cpuid 0x07:0x00    ebx 17
rdseed                 cpuid 0x07:0x00    ebx 18
adx                    cpuid 0x07:0x00    ebx 19
smap                   cpuid 0x07:0x00    ebx 20
avx512ifma             cpuid 0x07:0x00    ebx 21
pcommit                cpuid 0x07:0x00    ebx 22
clflushopt             cpuid 0x07:0x00    ebx 23
clwb                   cpuid 0x07:0x00    ebx 24
intel-pt               cpuid 0x07:0x00    ebx 25
avx512pf               cpuid 0x07:0x00    ebx 26
avx512er               cpuid 0x07:0x00    ebx 27
avx512cd               cpuid 0x07:0x00    ebx 28
sha-ni                 cpuid 0x07:0x00    ebx 29
avx512bw               cpuid 0x07:0x00    ebx 30
avx512vl               cpuid 0x07:0x00    ebx 31
avx512vbmi             cpuid 0x07:0x00    ecx  1
umip                   cpuid 0x07:0x00    ecx  2
pku                    cpuid 0x07:0x00    ecx  3
ospke                  cpuid 0x07:0x00    ecx  4
waitpkg                cpuid 0x07:0x00    ecx  5
avx512vbmi2            cpuid 0x07:0x00    ecx  6
gfni                   cpuid 0x07:0x00    ecx  8
vaes                   cpuid 0x07:0x00    ecx  9
vpclmulqdq             cpuid 0x07:0x00    ecx 10
avx512vnni             cpuid 0x07:0x00    ecx 11
avx512bitalg           cpuid 0x07:0x00    ecx 12
avx512-vpopcntdq       cpuid 0x07:0x00    ecx 14
la57                   cpuid 0x07:0x00    ecx 16
rdpid                  cpuid 0x07:0x00    ecx 22
bus-lock-detect        cpuid 0x07:0x00    ecx 24
cldemote               cpuid 0x07:0x00    ecx 25
movdiri                cpuid 0x07:0x00    ecx 27
movdir64b              cpuid 0x07:0x00    ecx 28
sgxlc                  cpuid 0x07:0x00    ecx 30
pks                    cpuid 0x07:0x00    ecx 31
avx512-4vnniw          cpuid 0x07:0x00    edx  2
avx512-4fmaps          cpuid 0x07:0x00    edx  3
fsrm                   cpuid 0x07:0x00    edx  4
avx512-vp2intersect    cpuid 0x07:0x00    edx  8
md-clear               cpuid 0x07:0x00    edx 10  md_clear@linux
serialize              cpuid 0x07:0x00    edx 14
tsx-ldtrk              cpuid 0x07:0x00    edx 16
pconfig                cpuid 0x07:0x00    edx 18
arch-lbr               cpuid 0x07:0x00    edx 19
amx-bf16               cpuid 0x07:0x00    edx 22
avx512-fp16            cpuid 0x07:0x00    edx 23
amx-tile               cpuid 0x07:0x00    edx 24
amx-int8               cpuid 0x07:0x00    edx 25
spec-ctrl              cpuid 0x07:0x00    edx 26
stibp                  cpuid 0x07:0x00    edx 27
arch-capabilities      cpuid 0x07:0x00    edx 29  arch_capabilities@linux
core-capability        cpuid 0x07:0x00    edx 30
ssbd                   cpuid 0x07:0x00    edx 31
avx-vnni               cpuid 0x07:0x01    eax  4
avx512-bf16            cpuid 0x07:0x01    eax  5
xsaveopt               cpuid 0x0d:0x01    eax  0
xsavec                 cpuid 0x0d:0x01    eax  1
xgetbv1                cpuid 0x0d:0x01    eax  2
xsaves                 cpuid 0x0d:0x01    eax  3  nomig
xfd                    cpuid 0x0d:0x01    eax  4
mbm_total              cpuid 0x0f:0x01    edx  1
mbm_local              cpuid 0x0f:0x01    edx  2
sgx1                   cpuid 0x12:0x00    eax  0
sgx2                   cpuid 0x12:0x00    eax  1
sgx-exinfo             cpuid 0x12:0x00    ebx  0
sgx-debug              cpuid 0x12:0x01    eax  1
sgx-mode64             cpuid 0x12:0x01    eax  2
sgx-provisionkey       cpuid 0x12:0x01    eax  4
sgx-tokenkey           cpuid 0x12:0x01    eax  5
sgx-kss                cpuid 0x12:0x01    eax  7
intel-pt-lip           cpuid 0x14:0x00    ecx 31
syscall                cpuid 0x80000001   edx 11
nx                     cpuid 0x80000001   edx 20
mmxext                 cpuid 0x80000001   edx 22
fxsr_opt               cpuid 0x80000001   edx 25
pdpe1gb                cpuid 0x80000001   edx 26
rdtscp                 cpuid 0x80000001   edx 27
lm                     cpuid 0x80000001   edx 29
3dnowext               cpuid 0x80000001   edx 30
3dnow                  cpuid 0x80000001   edx 31
lahf_lm                cpuid 0x80000001   ecx  0
cmp_legacy             cpuid 0x80000001   ecx  1
svm                    cpuid 0x80000001   ecx  2
extapic                cpuid 0x80000001   ecx  3
cr8legacy              cpuid 0x80000001   ecx  4
abm                    cpuid 0x80000001   ecx  5
sse4a                  cpuid 0x80000001   ecx  6
misalignsse            cpuid 0x80000001   ecx  7
3dnowprefetch          cpuid 0x80000001   ecx  8
osvw                   cpuid 0x80000001   ecx  9
ibs                    cpuid 0x80000001   ecx 10
xop                    cpuid 0x80000001   ecx 11
skinit                 cpuid 0x80000001   ecx 12
wdt                    cpuid 0x80000001   ecx 13
lwp                    cpuid 0x80000001   ecx 15
fma4                   cpuid 0x80000001   ecx 16
tce                    cpuid 0x80000001   ecx 17
cvt16                  cpuid 0x80000001   ecx 18
nodeid_msr             cpuid 0x80000001   ecx 19
tbm                    cpuid 0x80000001   ecx 21
topoext                cpuid 0x80000001   ecx 22
perfctr_core           cpuid 0x80000001   ecx 23
perfctr_nb             cpuid 0x80000001   ecx 24
invtsc                 cpuid 0x80000007   edx  8  nomig
clzero                 cpuid 0x80000008   ebx  0
xsaveerptr             cpuid 0x80000008   ebx  2
wbnoinvd               cpuid 0x80000008   ebx  9
ibpb                   cpuid 0x80000008   ebx 12
ibrs                   cpuid 0x80000008   ebx 14
amd-stibp              cpuid 0x80000008   ebx 15
amd-ssbd               cpuid 0x80000008   ebx 24
virt-ssbd              cpuid 0x80000008   ebx 25
amd-no-ssb             cpuid 0x80000008   ebx 26
npt                    cpuid 0x8000000a   edx  0
lbrv                   cpuid 0x8000000a   edx  1
svm-lock               cpuid 0x8000000a   edx  2
nrip-save              cpuid 0x8000000a   edx  3
tsc-scale              cpuid 0x8000000a   edx  4
vmcb-clean             cpuid 0x8000000a   edx  5
flushbyasid            cpuid 0x8000000a   edx  6
decodeassists          cpuid 0x8000000a   edx  7
pause-filter           cpuid 0x8000000a   edx 10
pfthreshold            cpuid 0x8000000a   edx 12
avic                   cpuid 0x8000000a   edx 13
v-vmsave-vmload        cpuid 0x8000000a   edx 15
vgif                   cpuid 0x8000000a   edx 16
svme-addr-chk          cpuid 0x8000000a   edx 28
rdctl-no               msr 0x10a          eax  0
ibrs-all               msr 0x10a          eax  1
rsba                   msr 0x10a          eax  2
skip-l1dfl-vmentry     msr 0x10a          eax  3
ssb-no                 msr 0x10a          eax  4
mds-no                 msr 0x10a          eax  5
pschange-mc-no         msr 0x10a          eax  6
tsx-ctrl               msr 0x10a          eax  7
taa-no                 msr 0x10a          eax  8
split-lock-detect      msr 0xcf           eax  5
"""

# libvirt 9.0 src/cpu_map/index.xml, x86 models in order, with its group comments.
LIBVIRT_MODEL_GROUPS = [
    ("models", ["486"]),
    ("Intel-based QEMU generic CPU models",
     ["pentium", "pentium2", "pentium3", "pentiumpro", "coreduo", "n270", "core2duo"]),
    ("Generic QEMU CPU models",
     ["qemu32", "kvm32", "cpu64-rhel5", "cpu64-rhel6", "qemu64", "kvm64"]),
    ("Intel CPU models",
     ["Conroe", "Penryn", "Nehalem", "Nehalem-IBRS", "Westmere", "Westmere-IBRS",
      "SandyBridge", "SandyBridge-IBRS", "IvyBridge", "IvyBridge-IBRS",
      "Haswell-noTSX", "Haswell-noTSX-IBRS", "Haswell", "Haswell-IBRS",
      "Broadwell-noTSX", "Broadwell-noTSX-IBRS", "Broadwell", "Broadwell-IBRS",
      "Skylake-Client", "Skylake-Client-IBRS", "Skylake-Client-noTSX-IBRS",
      "Skylake-Server", "Skylake-Server-IBRS", "Skylake-Server-noTSX-IBRS",
      "Cascadelake-Server", "Cascadelake-Server-noTSX",
      "Icelake-Client", "Icelake-Client-noTSX", "Icelake-Server", "Icelake-Server-noTSX",
      "Cooperlake", "Snowridge"]),
    ("AMD CPUs",
     ["athlon", "phenom", "Opteron_G1", "Opteron_G2", "Opteron_G3", "Opteron_G4",
      "Opteron_G5", "EPYC", "EPYC-IBPB", "EPYC-Rome", "EPYC-Milan"]),
    ("Hygon CPU models", ["Dhyana"]),
]
VENDOR_GROUP = {"Intel": "Intel CPU models", "AMD": "AMD CPUs", "Hygon": "Hygon CPU models"}

# QEMU models libvirt 9.0 lacks: (model, "before"|"after", libvirt model).  Knights
# Mill is a Xeon Phi of the Skylake-Server generation; Denverton is the Atom server
# that Snowridge succeeds.
EXTRA_MODEL_PLACEMENT = [
    ("KnightsMill", "after", "Skylake-Server-noTSX-IBRS"),
    ("Denverton", "before", "Snowridge"),
]

# libvirt 9.0 decode flags that are not on/on for unversioned models.
LIBVIRT_DECODE = {
    "Cascadelake-Server-noTSX": ("on", "off"),
    "Icelake-Client-noTSX": ("on", "off"),
    "Icelake-Server-noTSX": ("on", "off"),
    "Skylake-Client-noTSX-IBRS": ("on", "off"),
    "Skylake-Server-noTSX-IBRS": ("on", "off"),
    "cpu64-rhel5": ("off", "off"),
    "cpu64-rhel6": ("off", "off"),
}

WARNING_RE = re.compile(
    r"(?:TCG doesn't support requested feature|"
    r"This feature depends on other features that were not requested): "
    r"(?:CPUID\.([0-9A-F]+)H:(E[ABCD]X)|MSR\(([0-9A-F]+)H\))\.(\S+) \[bit (\d+)\]")


class GenError(Exception):
    pass


def log(msg):
    print(msg, file=sys.stderr)


# --------------------------------------------------------------------------- QMP


class QEMU:
    """One QEMU process driven over QMP on stdio; stderr goes to a file we can read."""

    def __init__(self, binary, args, timeout=60):
        self.timeout = timeout
        self.errfile = tempfile.TemporaryFile(mode="w+b")
        argv = [binary, "-nodefaults", "-display", "none", "-S", "-qmp", "stdio"] + args
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C"}
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self.errfile, env=env)
        self.buf = b""
        self.err_pos = 0
        greeting = self._read()
        if "QMP" not in greeting:
            raise GenError("no QMP greeting from %s" % " ".join(argv))
        self.cmd("qmp_capabilities")

    def _read(self):
        while b"\n" not in self.buf:
            ready, _, _ = select.select([self.proc.stdout], [], [], self.timeout)
            if not ready:
                raise GenError("timed out waiting for QEMU")
            chunk = os.read(self.proc.stdout.fileno(), 65536)
            if not chunk:
                raise GenError("QEMU exited: %s" % self.stderr_all().strip())
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return json.loads(line)

    def call(self, command, **arguments):
        """Run a command; return ("return", value) or ("error", desc)."""
        msg = {"execute": command}
        if arguments:
            msg["arguments"] = arguments
        self.proc.stdin.write(json.dumps(msg).encode() + b"\n")
        self.proc.stdin.flush()
        while True:
            reply = self._read()
            if "event" in reply:
                continue
            if "error" in reply:
                return "error", reply["error"].get("desc", "")
            return "return", reply.get("return")

    def cmd(self, command, **arguments):
        kind, value = self.call(command, **arguments)
        if kind == "error":
            raise GenError("%s failed: %s" % (command, value))
        return value

    def stderr_all(self):
        self.errfile.seek(0)
        return self.errfile.read().decode(errors="replace")

    def stderr_new(self):
        self.errfile.seek(self.err_pos)
        data = self.errfile.read()
        self.err_pos += len(data)
        return data.decode(errors="replace")

    def close(self):
        try:
            self.call("quit")
        except (GenError, OSError, ValueError):
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.errfile.close()


# ------------------------------------------------------------------------ probing


def word_bits(words):
    """feature-words / filtered-features reply -> {(leaf, subleaf|None, reg, bit)}."""
    bits = set()
    for w in words:
        leaf = w["cpuid-input-eax"]
        sub = w.get("cpuid-input-ecx")
        reg = w["cpuid-register"].lower()
        if (leaf, sub, reg) in IGNORED_WORDS:
            continue
        value = w["features"]
        for bit in range(32):
            if value >> bit & 1:
                bits.add(("cpuid", leaf, sub, reg, bit))
    return bits


def parse_warnings(text):
    """QEMU feature warnings -> {canonical name: {bit key}}."""
    found = {}
    for m in WARNING_RE.finditer(text):
        name, bit = m.group(4), int(m.group(5))
        if m.group(3) is not None:
            index = int(m.group(3), 16)
            key = ("msr", index, None, "eax" if bit < 32 else "edx", bit % 32)
        else:
            key = ("cpuid", int(m.group(1), 16), None, m.group(2).lower(), bit)
        found.setdefault(name, set()).add(key)
    return found


def cpu_bits(q, path):
    return word_bits(q.cmd("qom-get", path=path, property="feature-words")) | \
        word_bits(q.cmd("qom-get", path=path, property="filtered-features"))


def probe_cold(binary, prop, base):
    """Probe one property by starting QEMU with `-cpu base,PROP=on` (see probe_bits)."""
    q = QEMU(binary, ["-machine", "pc", "-accel", "tcg", "-cpu", "base,%s=on,check=on" % prop])
    try:
        bits = cpu_bits(q, q.cmd("query-cpus-fast")[0]["qom-path"])
        warnings = q.stderr_all()
    finally:
        q.close()
    msr = {k for keys in parse_warnings(warnings).values() for k in keys if k[0] == "msr"}
    return (frozenset(bits - base), frozenset(msr))


def probe_bits(binary, props):
    """Hot-add one base CPU per property; return {prop: (cpuid bits, msr bits) or None}.

    Hot-adding is much faster than one QEMU per property.  A property whose hot-add
    takes QEMU down (apic: an APIC-less boot CPU has no APIC bus) is probed again in a
    QEMU of its own.  None means QEMU refused the property.
    """
    slots = 250
    results = {}
    pending = list(props)
    while pending:
        q = QEMU(binary, ["-machine", "pc", "-accel", "tcg", "-cpu", "base",
                          "-smp", "1,maxcpus=%d,sockets=%d,cores=1,threads=1" % (slots + 1, slots + 1)])
        try:
            base = cpu_bits(q, q.cmd("query-cpus-fast")[0]["qom-path"])
            q.stderr_new()
            for slot in range(1, slots + 1):
                if not pending:
                    break
                prop = pending.pop(0)
                dev = "probe%d" % slot
                try:
                    kind, _ = q.call("device_add", driver="base-x86_64-cpu", id=dev,
                                     **{"socket-id": slot, "core-id": 0, "thread-id": 0,
                                        prop: True, "check": True})
                except GenError:
                    results[prop] = probe_cold(binary, prop, base)
                    break
                warnings = q.stderr_new()
                if kind == "error":
                    results[prop] = None
                    continue
                bits = cpu_bits(q, "/machine/peripheral/" + dev)
                msr = {k for keys in parse_warnings(warnings).values() for k in keys if k[0] == "msr"}
                results[prop] = (frozenset(bits - base), frozenset(msr))
        finally:
            q.close()
    return results


def expand(q, name, **props):
    model = {"name": name}
    if props:
        model["props"] = props
    return q.cmd("query-cpu-model-expansion", type="static", model=model)["model"]["props"]


def collect(binary):
    """Everything the map needs, as plain data."""
    q = QEMU(binary, ["-machine", "none", "-accel", "tcg"])
    try:
        v = q.cmd("query-version")["qemu"]
        version = "%d.%d.%d" % (v["major"], v["minor"], v["micro"])
        definitions = q.cmd("query-cpu-definitions")
        base_type = "base-x86_64-cpu"
        properties = q.cmd("qom-list-properties", typename=base_type)
        static_base = expand(q, "base")
        models = {}
        for d in definitions:
            if d["name"] in ("base", "host", "max"):
                continue
            models[d["name"]] = {"alias-of": d.get("alias-of"), "props": expand(q, d["name"])}
        full = q.cmd("query-cpu-model-expansion", type="full", model={"name": "max"})["model"]["props"]
        full_nm = q.cmd("query-cpu-model-expansion", type="full",
                        model={"name": "max", "props": {"migratable": False}})["model"]["props"]
    finally:
        q.close()
    canonical = sorted(k for k, val in static_base.items() if isinstance(val, bool))
    bool_props = sorted({p["name"] for p in properties if p["type"] == "bool"} - NOT_PROBED)
    probes = probe_bits(binary, sorted(set(bool_props) | set(canonical)))
    return {"version": version, "models": models, "canonical": canonical,
            "probes": probes, "max": full, "max-nonmigratable": full_nm}


# ---------------------------------------------------------------------- the map


def parse_libvirt_features():
    features = []
    for line in LIBVIRT_FEATURES.strip().splitlines():
        parts = line.split()
        name, kind, loc, reg, bit = parts[:5]
        extras = parts[5:]
        if kind == "msr":
            key = ("msr", int(loc, 16), None, reg, int(bit))
        else:
            leaf, _, sub = loc.partition(":")
            key = ("cpuid", int(leaf, 16), int(sub, 16) if sub else None, reg, int(bit))
        features.append({
            "name": name, "key": key,
            "linux": [e.split("@")[0] for e in extras if e.endswith("@linux")],
            "nomig": "nomig" in extras,
        })
    return features


def group_of(key):
    return key[:4]


def group_sort_key(group):
    kind, index, sub, reg = group
    return (0 if kind == "cpuid" else 1, index, sub or 0, REGISTERS.index(reg))


def build_features(data):
    """-> ordered list of {name, keys, aliases, migratable}."""
    libvirt = parse_libvirt_features()
    lv_by_key = {f["key"]: f for f in libvirt}
    translation = {qemu: lv for lv, qemu in LIBVIRT_QEMU_TRANSLATION.items()}

    # Alias groups: every probed property with a non-empty, identical diff.
    by_bits = {}
    for prop, res in data["probes"].items():
        if res is None:
            continue
        cpuid_bits, msr_bits = res
        if cpuid_bits:
            by_bits.setdefault(cpuid_bits, set()).add(prop)
    msr_by_name = {}
    for prop, res in data["probes"].items():
        if res is not None and not res[0] and res[1]:
            msr_by_name.setdefault(res[1], set()).add(prop)

    canonical = set(data["canonical"])
    silent = {p for p, res in data["probes"].items() if res is not None and not res[0] and not res[1]}
    unseen = (canonical & silent) - NOT_FEATURES
    if unseen != set(KVM_LEAF_EAX_BITS):
        raise GenError("features QEMU shows no bit for under TCG: %s; KVM_LEAF_EAX_BITS has %s"
                       % (sorted(unseen), sorted(KVM_LEAF_EAX_BITS)))
    for qemu_name, bits in KVM_LEAF_EAX_BITS.items():
        key = frozenset(("cpuid", KVM_LEAF, None, "eax", b) for b in bits)
        # QEMU registers the old underscore spellings as aliases (x86_cpu_initfn).
        names = {qemu_name} | ({qemu_name.replace("-", "_")} & silent)
        by_bits.setdefault(key, set()).update(names)
    features = []
    seen_names = set()
    for bits, names in list(by_bits.items()) + list(msr_by_name.items()):
        canon = sorted(names & canonical)
        if len(canon) != 1:
            raise GenError("bits %s are claimed by %s (canonical: %s)"
                           % (sorted(bits), sorted(names), canon))
        qemu_name = canon[0]
        keys = sorted(bits, key=lambda k: (group_sort_key(group_of(k)), k[4]))
        lv = lv_by_key.get(keys[0]) if len(keys) == 1 else None
        name = lv["name"] if lv else translation.get(qemu_name, qemu_name)
        if lv is None and name in {f["name"] for f in libvirt}:
            raise GenError("QEMU %s has bits %s, libvirt's %s differs" % (qemu_name, keys, name))
        if name in seen_names:
            raise GenError("feature %s defined twice" % name)
        seen_names.add(name)
        features.append({
            "name": name, "qemu": qemu_name, "keys": keys,
            "aliases": sorted(n for n in names if n != name),
            "linux": lv["linux"] if lv else [],
            "migratable": True,
        })
    data["not-features"] = sorted(canonical - {f["qemu"] for f in features})
    if set(data["not-features"]) != NOT_FEATURES:
        raise GenError("unplaced static-expansion keys: %s" % data["not-features"])

    # Migratability.
    for f in features:
        nm = data["max-nonmigratable"].get(f["qemu"]) is True
        mig = data["max"].get(f["qemu"]) is True
        if (nm and not mig) or f["name"] in MIGRATION_BLOCKERS:
            f["migratable"] = False

    # Order: libvirt's groups in libvirt's order, new groups after the nearest lower one.
    lv_groups = []
    for f in libvirt:
        g = group_of(f["key"])
        if g not in lv_groups:
            lv_groups.append(g)
    rank = {g: i for i, g in enumerate(lv_groups)}

    def feature_order(f):
        g = group_of(f["keys"][0])
        if g in rank:
            return (rank[g], 0, group_sort_key(g), f["keys"][0][4])
        lower = [rank[lg] for lg in lv_groups if group_sort_key(lg) <= group_sort_key(g)]
        return (max(lower) if lower else -1, 1, group_sort_key(g), f["keys"][0][4])

    features.sort(key=feature_order)
    data["libvirt-only"] = sorted(f["name"] for f in libvirt if f["name"] not in seen_names)
    return features


def version_of(name):
    m = re.match(r"^(.*)-v(\d+)$", name)
    return (m.group(1), int(m.group(2))) if m else (None, None)


def build_models(data, features):
    by_qemu = {f["qemu"]: f for f in features}
    vendor_names = dict((s, n) for n, s in VENDORS)
    major_minor = tuple(int(x) for x in data["version"].split(".")[:2])
    if major_minor != VME_TABLE_QEMU:
        log("warning: MODELS_WITHOUT_VME was taken from QEMU %d.%d; check it for QEMU %s"
            % (VME_TABLE_QEMU + (data["version"],)))
    models = {}
    for name, info in data["models"].items():
        props = info["props"]
        enabled = {k for k, v in props.items() if v is True}
        if ADDED_TO_EVERY_MODEL not in enabled:
            raise GenError("%s does not report %s; revisit ADDED_TO_EVERY_MODEL" % (name, ADDED_TO_EVERY_MODEL))
        if "vme" in enabled:
            raise GenError("%s reports vme under TCG; revisit MODELS_WITHOUT_VME" % name)
        family_name = version_of(name)[0] or name
        alias_target = info["alias-of"]
        root = version_of(alias_target)[0] if alias_target else family_name
        if root not in MODELS_WITHOUT_VME:
            enabled.add("vme")
        enabled.discard(ADDED_TO_EVERY_MODEL)
        names = sorted(by_qemu[q]["name"] for q in enabled if q in by_qemu)
        if not names:
            continue
        vendor = props.get("vendor")
        if vendor not in vendor_names:
            raise GenError("model %s has unknown vendor %r" % (name, vendor))
        models[name] = {
            "name": name, "alias-of": alias_target,
            "family": props["family"], "model": props["model"], "stepping": props["stepping"],
            "vendor": None if root in VENDOR_NEUTRAL_MODELS else vendor_names[vendor],
            "features": names,
        }
    # Aliases must agree with what they resolve to.
    for m in models.values():
        target = m["alias-of"]
        if target and (target not in models or models[target]["features"] != m["features"]):
            raise GenError("%s and %s expand differently" % (m["name"], target))
    return models


def order_models(models):
    """-> [(comment, [model names])] in index order."""
    aliases = {n: m["alias-of"] for n, m in models.items() if m["alias-of"]}
    versions = {}
    for n in models:
        root, v = version_of(n)
        if root is not None:
            versions.setdefault(root, []).append(v)
    aliased_versions = set(aliases.values())

    def block(alias):
        target = aliases[alias]
        root, v = version_of(target)
        out = [alias, target]
        for nv in sorted(x for x in versions.get(root, []) if x > v):
            nxt = "%s-v%d" % (root, nv)
            if nxt in aliased_versions:
                break
            out.append(nxt)
        return out

    groups = [(c, [n for n in names if n in aliases]) for c, names in LIBVIRT_MODEL_GROUPS]
    placed = {n for _, names in groups for n in names}
    for extra, where, anchor in EXTRA_MODEL_PLACEMENT:
        if extra not in aliases or extra in placed:
            continue
        for _, names in groups:
            if anchor in names:
                names.insert(names.index(anchor) + (1 if where == "after" else 0), extra)
                placed.add(extra)
                break
    for alias in sorted(set(aliases) - placed):
        comment = VENDOR_GROUP.get(models[alias]["vendor"], "Generic QEMU CPU models")
        for c, names in groups:
            if c == comment:
                names.append(alias)
    result = []
    used = set()
    for comment, names in groups:
        entries = []
        for alias in names:
            for n in block(alias):
                if n not in used:
                    entries.append(n)
                    used.add(n)
        result.append((comment, entries))
    leftovers = sorted(set(models) - used)
    if leftovers:
        raise GenError("models without an alias to place them: %s" % leftovers)
    return result


# --------------------------------------------------------------------- rendering


def hexval(v, width):
    return "0x%0*x" % (width, v)


def render_feature_data(keys):
    """Merge a feature's bits into one element per (leaf, subleaf) or MSR."""
    items = {}
    for kind, index, sub, reg, bit in keys:
        item = items.setdefault((kind, index, sub), {})
        item[reg] = item.get(reg, 0) | (1 << bit)
    lines = []
    for (kind, index, sub), regs in items.items():
        if kind == "msr":
            lines.append("<msr index='%s' edx='%s' eax='%s'/>"
                         % ("0x%x" % index, hexval(regs.get("edx", 0), 8), hexval(regs.get("eax", 0), 8)))
        else:
            attrs = "eax_in='%s'" % hexval(index, 2)
            if sub is not None:
                attrs += " ecx_in='%s'" % hexval(sub, 2)
            for reg in REGISTERS:
                if reg in regs:
                    attrs += " %s='%s'" % (reg, hexval(regs[reg], 8))
            lines.append("<cpuid %s/>" % attrs)
    return lines


def group_comment(group):
    kind, index, sub, reg = group
    if kind == "msr":
        return "MSR 0x%x features" % index
    if sub is None:
        return "cpuid level 0x%08x (%s)" % (index, reg)
    return "cpuid level 0x%08x ecx 0x%x (%s)" % (index, sub, reg)


def header(version):
    return "<!-- Generated by scripts/gen-cpu-map.py from QEMU %s. Do not edit. -->\n" % version


def render_features(version, features):
    out = [header(version), "<cpus>\n"]
    last = None
    for f in features:
        g = group_of(f["keys"][0])
        if g[0] == "msr":
            g = ("msr", g[1], None, "eax")  # one comment per MSR, whatever the half
        if g != last:
            if last is not None:
                out.append("\n")
            out.append("  <!-- %s -->\n" % group_comment(g))
            last = g
        mig = "" if f["migratable"] else " migratable='no'"
        out.append("  <feature name='%s'%s>\n" % (f["name"], mig))
        for a in f["aliases"]:
            out.append("    <alias name='%s' source='qemu'/>\n" % a)
        for a in f["linux"]:
            out.append("    <alias name='%s' source='linux'/>\n" % a)
        for line in render_feature_data(f["keys"]):
            out.append("    %s\n" % line)
        out.append("  </feature>\n")
    out.append("</cpus>\n")
    return "".join(out)


def render_vendors(version, used):
    out = [header(version), "<cpus>\n"]
    for name, string in VENDORS:
        if name in used:
            out.append("  <vendor name='%s' string='%s'/>\n" % (name, string))
    out.append("</cpus>\n")
    return "".join(out)


def cpuid_signature(family, model, stepping):
    fam = family if family <= 15 else 15
    ext_fam = family - 15 if family > 15 else 0
    return (ext_fam << 20) | ((model >> 4) << 16) | (fam << 8) | ((model & 0xF) << 4) | (stepping & 0xF)


def render_model(m):
    versioned = version_of(m["name"])[0] is not None
    if versioned:
        decode = ("off", "off")
    else:
        decode = LIBVIRT_DECODE.get(m["name"], ("on", "on"))
    out = ["<cpus>\n", "  <model name='%s'>\n" % m["name"],
           "    <decode host='%s' guest='%s'/>\n" % decode]
    if m["alias-of"]:
        out.append("    <alias-of name='%s'/>\n" % m["alias-of"])
    if m["vendor"] is not None:
        out.append("    <signature family='%d' model='%d'/> <!-- %06x -->\n"
                   % (m["family"], m["model"], cpuid_signature(m["family"], m["model"], m["stepping"])))
        out.append("    <vendor name='%s'/>\n" % m["vendor"])
    for f in m["features"]:
        out.append("    <feature name='%s'/>\n" % f)
    out.append("  </model>\n</cpus>\n")
    return "".join(out)


def render_index(version, groups):
    out = [header(version), "<cpus>\n", "  <arch name='x86'>\n",
           "    <include filename='x86_vendors.xml'/>\n",
           "    <include filename='x86_features.xml'/>\n"]
    for comment, names in groups:
        if not names:
            continue
        out.append("\n    <!-- %s -->\n" % comment)
        for n in names:
            out.append("    <include filename='x86_%s.xml'/>\n" % n)
    out.append("  </arch>\n</cpus>\n")
    return "".join(out)


def render_swift(version, files):
    out = ["// Generated by scripts/gen-cpu-map.py from QEMU %s. Do not edit.\n" % version,
           "enum BuiltinCPUMap {\n",
           "    static let qemuVersion = \"%s\"\n" % version,
           "    /// File name → contents, in the same layout as libvirt's cpu_map directory.\n",
           "    static let files: [String: String] = [\n"]
    for name in sorted(files):
        text = files[name]
        if '"""#' in text:
            raise GenError("%s cannot be embedded in a #\"\"\" literal" % name)
        # A multi-line literal drops the line break before its closing delimiter, so
        # the blank line keeps the file's final newline.
        out.append("        \"%s\": #\"\"\"\n%s\n\"\"\"#,\n" % (name, text))
    out.append("    ]\n}\n")
    return "".join(out)


def generate(binary):
    data = collect(binary)
    features = build_features(data)
    models = build_models(data, features)
    groups = order_models(models)
    version = data["version"]
    files = {
        "index.xml": render_index(version, groups),
        "x86_vendors.xml": render_vendors(version, {m["vendor"] for m in models.values()} - {None}),
        "x86_features.xml": render_features(version, features),
    }
    for m in models.values():
        files["x86_%s.xml" % m["name"]] = render_model(m)
    summary = {
        "version": version, "features": len(features),
        "msr-features": sum(1 for f in features if f["keys"][0][0] == "msr"),
        "models": len(models),
        "unversioned": sum(1 for m in models.values() if m["alias-of"]),
        "non-migratable": [f["name"] for f in features if not f["migratable"]],
        "libvirt-only": data["libvirt-only"],
        "not-features": data["not-features"],
    }
    return files, render_swift(version, files), summary


def write_tree(root, files, swift):
    map_dir = os.path.join(root, MAP_DIR)
    os.makedirs(map_dir, exist_ok=True)
    for name in os.listdir(map_dir):
        if name.endswith(".xml") and name not in files:
            os.remove(os.path.join(map_dir, name))
    for name, text in files.items():
        with open(os.path.join(map_dir, name), "w", encoding="utf-8") as fh:
            fh.write(text)
    with open(os.path.join(root, SWIFT_FILE), "w", encoding="utf-8") as fh:
        fh.write(swift)


def read_tree(root):
    out = {}
    map_dir = os.path.join(root, MAP_DIR)
    if os.path.isdir(map_dir):
        for name in os.listdir(map_dir):
            if name.endswith(".xml"):
                with open(os.path.join(map_dir, name), encoding="utf-8") as fh:
                    out[os.path.join(MAP_DIR, name)] = fh.read()
    path = os.path.join(root, SWIFT_FILE)
    if os.path.exists(path):
        with open(path, encoding="utf-8") as fh:
            out[SWIFT_FILE] = fh.read()
    return out


def check(files, swift):
    tmp = tempfile.mkdtemp(prefix="keel-cpu-map.")
    try:
        write_tree(tmp, files, swift)
        fresh, committed = read_tree(tmp), read_tree(REPO)
    finally:
        shutil.rmtree(tmp)
    missing = sorted(set(fresh) - set(committed))
    extra = sorted(set(committed) - set(fresh))
    changed = sorted(p for p in set(fresh) & set(committed) if fresh[p] != committed[p])
    if not (missing or extra or changed):
        print("CPU map is up to date (%d files)" % len(fresh))
        return 0
    for p in missing:
        print("missing: %s" % p)
    for p in extra:
        print("stale:   %s" % p)
    for p in changed:
        print("differs: %s" % p)
        if p != SWIFT_FILE:
            diff = difflib.unified_diff(committed[p].splitlines(), fresh[p].splitlines(),
                                        "committed/" + p, "generated/" + p, lineterm="", n=1)
            for line in list(diff)[:40]:
                print("    " + line)
    print("run scripts/gen-cpu-map.py to regenerate")
    return 1


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--check", action="store_true",
                    help="compare a fresh generation with the committed files")
    ap.add_argument("--qemu", default="qemu-system-x86_64", help="QEMU binary")
    args = ap.parse_args()
    binary = shutil.which(args.qemu)
    if binary is None:
        log("error: %s not found" % args.qemu)
        return 2
    try:
        files, swift, summary = generate(binary)
    except GenError as e:
        log("error: %s" % e)
        return 2
    if args.check:
        return check(files, swift)
    write_tree(REPO, files, swift)
    log("QEMU %(version)s: %(features)d features (%(msr-features)d MSR), %(models)d models "
        "(%(unversioned)d unversioned)" % summary)
    log("  migratable='no': %s" % ", ".join(summary["non-migratable"]))
    log("  libvirt 9.0 features QEMU lacks (not in map): %s" % ", ".join(summary["libvirt-only"]))
    log("  boolean static-expansion keys that are not CPUID/MSR features: %s"
        % ", ".join(summary["not-features"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
