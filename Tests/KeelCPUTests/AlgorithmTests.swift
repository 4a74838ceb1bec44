import Foundation
import KeelCPU
import Testing

/// Golden tests of compare, update, live update, decode and the ABI check, derived from
/// libvirt 9.0's documented semantics, on libvirt's own cpu_map.
@Suite("CPU algorithms follow libvirt 9.0")
struct AlgorithmTests {
    static let haswellHost = """
        <cpu><arch>x86_64</arch><model>Haswell-noTSX-IBRS</model><vendor>Intel</vendor>
        <feature name='vmx'/><feature name='invtsc'/></cpu>
        """

    // MARK: compare

    @Test("a CPU compared with itself is identical")
    func compareIdentity() throws {
        guard let map = TestEnvironment.libvirtMap else { return }
        let host = try parseCPU(Self.haswellHost)
        #expect(try map.compare(host, to: host).result == .identical)
    }

    @Test("a host with more features is a superset, naming the extra features")
    func compareSuperset() throws {
        guard let map = TestEnvironment.libvirtMap else { return }
        let host = try parseCPU(Self.haswellHost)
        let guest = try parseCPU("<cpu><model>Haswell-noTSX-IBRS</model><vendor>Intel</vendor></cpu>")
        let comparison = try map.compare(guest, to: host)
        #expect(comparison.result == .superset)
        #expect(comparison.features.map(\.name) == ["vmx", "invtsc"])
        #expect(comparison.features.allSatisfy { $0.kind == .extra })
    }

    @Test("missing features make the CPU incompatible, listed in map order with their CPUID bits")
    func compareMissing() throws {
        guard let map = TestEnvironment.libvirtMap else { return }
        let host = try parseCPU(Self.haswellHost)
        let guest = try parseCPU("<cpu><model>Haswell</model><feature name='pcid'/></cpu>")
        let comparison = try map.compare(guest, to: host)
        #expect(comparison.result == .incompatible)
        #expect(comparison.message == "Host CPU does not provide required features: hle, rtm")
        let hle = try #require(comparison.features.first)
        #expect(hle.kind == .missing)
        #expect(hle.locations == [.cpuid(leaf: 7, subleaf: 0, register: .ebx, mask: 1 << 4)])
        #expect(hle.locations[0].description == "CPUID[eax=0x7,ecx=0x0].EBX bit 4")
        do {
            _ = try map.compare(guest, to: host, failIncompatible: true)
            Issue.record("no error with failIncompatible")
        } catch let error as CPUError {
            #expect(error.code == .incompatibleCPU)
            #expect(error.features.map(\.name) == ["hle", "rtm"])
        }
    }

    @Test("features disabled or made optional by the guest no longer count as required")
    func compareOverrides() throws {
        guard let map = TestEnvironment.libvirtMap else { return }
        let host = try parseCPU(Self.haswellHost)
        let guest = try parseCPU("<cpu><model>Haswell</model><feature policy='disable' name='hle'/><feature policy='optional' name='rtm'/></cpu>")
        #expect(try map.compare(guest, to: host).result == .superset)
    }

    @Test("a forbidden feature the host has is incompatible")
    func compareForbidden() throws {
        guard let map = TestEnvironment.libvirtMap else { return }
        let host = try parseCPU(Self.haswellHost)
        let guest = try parseCPU("<cpu><model>Nehalem</model><feature policy='forbid' name='vmx'/></cpu>")
        let comparison = try map.compare(guest, to: host)
        #expect(comparison.result == .incompatible)
        #expect(comparison.message == "Host CPU provides forbidden features: vmx")
        #expect(comparison.features.map(\.kind) == [.forbidden])
    }

    @Test("match='strict' refuses a superset, listing the extra features")
    func compareStrict() throws {
        guard let map = TestEnvironment.libvirtMap else { return }
        let host = try parseCPU(Self.haswellHost)
        let guest = try parseCPU("<cpu match='strict'><model>Haswell-noTSX-IBRS</model><feature name='vmx'/></cpu>")
        let comparison = try map.compare(guest, to: host)
        #expect(comparison.result == .incompatible)
        #expect(comparison.message == "Host CPU does not strictly match guest CPU: Extra features: invtsc")
    }

    @Test("vendor and arch mismatches and a host without model are incompatible")
    func compareVendorArch() throws {
        guard let map = TestEnvironment.libvirtMap else { return }
        let host = try parseCPU(Self.haswellHost)
        let amd = try parseCPU("<cpu><model>EPYC</model><vendor>AMD</vendor></cpu>")
        #expect(try map.compare(amd, to: host).message == "host CPU vendor does not match required CPU vendor AMD")
        let arm = try parseCPU("<cpu><arch>aarch64</arch><model>Nehalem</model></cpu>")
        #expect(try map.compare(arm, to: host).message == "CPU arch aarch64 does not match host arch")
        #expect(try map.compare(amd, to: nil).message == "unknown host CPU")
        #expect(throws: CPUError(.incompatibleCPU, "unknown host CPU")) { try map.compare(amd, to: nil, failIncompatible: true) }
    }

    @Test("unknown models and features are errors naming them")
    func compareUnknown() throws {
        guard let map = TestEnvironment.libvirtMap else { return }
        let host = try parseCPU(Self.haswellHost)
        #expect(throws: CPUError(.notFound, "Unknown CPU model Pentium-9000")) {
            try map.compare(try parseCPU("<cpu><model>Pentium-9000</model></cpu>"), to: host)
        }
        #expect(throws: CPUError(.notFound, "Unknown CPU feature warp-drive")) {
            try map.compare(try parseCPU("<cpu><model>Nehalem</model><feature name='warp-drive'/></cpu>"), to: host)
        }
    }

    @Test("seeded random CPUs: compare(x, x) is identical and a baseline is compatible with every input")
    func compareProperties() throws {
        guard let map = TestEnvironment.libvirtMap else { return }
        var checked = 0
        for seed in UInt64(1000)...1150 {
            var rng = SeededGenerator(seed: seed)
            let cpus = RandomCPUs.hostSet(map: map, using: &rng)
            for cpu in cpus {
                #expect(try map.compare(cpu, to: cpu).result == .identical, "seed \(seed)")
            }
            guard let baseline = try? map.baseline(cpus) else { continue }
            for cpu in cpus {
                let result = try map.compare(baseline, to: cpu).result
                #expect(result != .incompatible, "seed \(seed): baseline \(baseline.formatted()) vs \(cpu.formatted())")
            }
            checked += 1
        }
        #expect(checked > 100)
    }

    // MARK: update

    @Test("host-model becomes the host's model and features as custom/exact, keeping the guest's explicit features")
    func updateHostModel() throws {
        guard let map = TestEnvironment.libvirtMap else { return }
        let host = try parseCPU("<cpu mode='custom' match='exact'><model fallback='forbid'>Haswell-noTSX-IBRS</model><vendor>Intel</vendor><feature policy='require' name='vmx'/><feature policy='require' name='invtsc'/></cpu>")
        let guest = try parseCPU("<cpu mode='host-model' check='partial'><feature policy='disable' name='vmx'/></cpu>")
        let updated = try map.update(guest, with: host)
        #expect(updated.mode == .custom)
        #expect(updated.match == .exact)
        #expect(updated.model == "Haswell-noTSX-IBRS")
        #expect(updated.vendor == "Intel")
        #expect(updated.features == [.init("vmx", .disable), .init("invtsc", .require)])
    }

    @Test("optional features become require or disable by what the host has; removed model features are listed as disabled")
    func updateOptional() throws {
        guard let map = TestEnvironment.libvirtMap else { return }
        let host = try parseCPU(Self.haswellHost)
        let guest = try parseCPU("<cpu><model>EPYC</model><feature policy='optional' name='vmx'/><feature policy='optional' name='svm'/></cpu>")
        let updated = try map.update(guest, with: host)
        #expect(updated.features == [.init("vmx", .require), .init("svm", .disable), .init("monitor", .disable)])
        let plain = try parseCPU("<cpu><model>Nehalem</model></cpu>")
        #expect(try map.update(plain, with: nil) == plain)
        #expect(throws: CPUError(.unsupported, "unknown host CPU model")) { try map.update(guest, with: nil) }
    }

    // MARK: live update

    /// The data QEMU reports for a started vCPU: the named model's features plus extras, minus some.
    func liveData(_ map: CPUMap, model: String, plus: [String] = [], minus: [String] = [], filtered: [String] = []) throws -> LiveCPUData {
        var enabled = try map.bits(of: try parseCPU("<cpu><model>\(model)</model></cpu>"))
        enabled.formUnion(map.bits(ofFeatures: plus))
        enabled.subtract(map.bits(ofFeatures: minus))
        return LiveCPUData(enabled: enabled, disabled: map.bits(ofFeatures: filtered))
    }

    @Test("check='partial': features QEMU adds become require, missing ones disable (libvirt's pentium3 experiment)")
    func liveUpdatePartial() throws {
        guard let map = TestEnvironment.libvirtMap else { return }
        let guest = try parseCPU("<cpu mode='custom' match='exact' check='partial'><model fallback='forbid'>pentium3</model></cpu>")
        let data = try liveData(map, model: "pentium3", plus: ["apic", "x2apic", "hypervisor"])
        let update = try map.updateLive(guest, with: data)
        #expect(update.added == ["apic", "x2apic", "hypervisor"])
        #expect(update.cpu.features == [.init("apic", .require), .init("x2apic", .require), .init("hypervisor", .require)])
        let missing = try parseCPU("<cpu check='none'><model>pentium3</model><feature name='pni'/></cpu>")
        let filtered = try map.updateLive(missing, with: try liveData(map, model: "pentium3", filtered: ["pni"]))
        #expect(filtered.cpu.features == [.init("pni", .disable)])
        #expect(filtered.removed == ["pni"])
    }

    @Test("check='full': any difference fails with libvirt's message and the features' bits")
    func liveUpdateFull() throws {
        guard let map = TestEnvironment.libvirtMap else { return }
        let guest = try parseCPU("<cpu check='full'><model>pentium3</model></cpu>")
        let extra = try liveData(map, model: "pentium3", plus: ["apic", "x2apic", "hypervisor"])
        do {
            _ = try map.updateLive(guest, with: extra)
            Issue.record("no error")
        } catch let error as CPUError {
            #expect(error.message == "guest CPU doesn't match specification: extra features: apic,x2apic,hypervisor")
            #expect(error.features.map(\.name) == ["apic", "x2apic", "hypervisor"])
        }
        let withPNI = try parseCPU("<cpu check='full'><model>pentium3</model><feature name='pni'/></cpu>")
        do {
            _ = try map.updateLive(withPNI, with: try liveData(map, model: "pentium3", plus: ["x2apic"], filtered: ["pni"]))
            Issue.record("no error")
        } catch let error as CPUError {
            #expect(error.message == "guest CPU doesn't match specification: extra features: x2apic, missing features: pni")
            #expect(error.features.map(\.kind) == [.extra, .missing])
            #expect(error.features[1].locations == [.cpuid(leaf: 1, subleaf: 0, register: .ecx, mask: 1)])
        }
        let exact = try map.updateLive(guest, with: try liveData(map, model: "pentium3"))
        #expect(exact.cpu == guest)
    }

    @Test("host-passthrough without check='full' is left alone")
    func liveUpdatePassthrough() throws {
        guard let map = TestEnvironment.libvirtMap else { return }
        let cpu = try parseCPU("<cpu mode='host-passthrough'/>")
        let update = try map.updateLive(cpu, with: LiveCPUData(enabled: map.bits(ofFeatures: ["vmx"]), disabled: map.emptyBits()))
        #expect(update.cpu == cpu)
    }

    // MARK: decode

    @Test("decoding each host-decodable model's own CPUID data yields a CPU with exactly that data")
    func decodeModels() throws {
        guard let map = TestEnvironment.libvirtMap else { return }
        var exactModel = 0
        for model in map.models where model.decodeHost {
            let signature = model.signatures.first.map { sig -> UInt32 in
                let stepping = UInt32(sig.steppings.map { $0.trailingZeroBitCount } ?? 0)
                return Self.signature(family: sig.family, model: sig.model, stepping: stepping)
            } ?? 0
            let input = CPUMap.DecodeInput(bits: model.bits, vendor: model.vendor, signature: signature)
            let host = try map.decode(input, as: .host)
            var asGuest = host
            asGuest.type = .guest
            asGuest.mode = .custom
            asGuest.features = host.features.map { .init($0.name, .require) }
            var expected = model.bits
            if Self.hasBrokenTSX(model) {
                // libvirt drops hle and rtm from the data of these Haswell steppings.
                expected.subtract(map.bits(ofFeatures: ["hle", "rtm"]))
            }
            #expect(try map.bits(of: asGuest) == expected, "model \(model.name) decoded as \(host.model ?? "-")")
            if host.model == model.name { exactModel += 1 }
        }
        #expect(exactModel > 30)
    }

    @Test("decoding raw CPUID words: vendor from leaf 0, signature from leaf 1, TSX dropped on broken Haswells")
    func decodeRawCPUID() throws {
        guard let map = TestEnvironment.libvirtMap else { return }
        let model = try #require(map.model(named: "Haswell"))
        var words = map.cpuidWords(of: model.bits)
        // "GenuineIntel" in EBX, EDX, ECX.
        words.append(CPUIDWord(leaf: 0, register: .ebx, value: 0x756e_6547))
        words.append(CPUIDWord(leaf: 0, register: .edx, value: 0x4965_6e69))
        words.append(CPUIDWord(leaf: 0, register: .ecx, value: 0x6c65_746e))
        words.append(CPUIDWord(leaf: 1, register: .eax, value: Self.signature(family: 6, model: 60, stepping: 3)))
        #expect(map.vendor(ofCPUID: words)?.name == "Intel")
        let (bits, unmapped) = map.bits(ofCPUID: words)
        #expect(!unmapped)
        let cpu = try map.decode(.init(bits: bits, vendor: "Intel", signature: map.signature(ofCPUID: words)), as: .host)
        #expect(cpu.model == "Haswell-noTSX")
        #expect(cpu.vendor == "Intel")
        #expect(cpu.signature == .init(family: 6, model: 60, stepping: 3))
    }

    @Test("decoding random data as a guest CPU always reproduces the data exactly")
    func decodeGuestProperty() throws {
        guard let map = TestEnvironment.libvirtMap else { return }
        for seed in UInt64(1)...100 {
            var rng = SeededGenerator(seed: seed)
            var bits = map.emptyBits()
            for feature in map.features where Int.random(in: 0..<3, using: &rng) == 0 {
                bits.formUnion(map.bits(ofFeatures: [feature.name]))
            }
            let cpu = try map.decode(.init(bits: bits), as: .guest)
            #expect(try map.bits(of: cpu) == bits, "seed \(seed): \(cpu.formatted())")
        }
    }

    static func hasBrokenTSX(_ model: CPUMap.Model) -> Bool {
        guard model.vendor == "Intel", let sig = model.signatures.first, sig.family == 6 else { return false }
        let stepping = sig.steppings.map { $0.trailingZeroBitCount } ?? 0
        return [60, 69, 70].contains(sig.model) || (sig.model == 63 && stepping < 4)
    }

    static func signature(family: UInt32, model: UInt32, stepping: UInt32) -> UInt32 {
        var family = family
        var value: UInt32 = 0
        if family > 0xf {
            value |= (family - 0xf) << 20
            family = 0xf
        }
        return value | ((model >> 4) << 16) | (family << 8) | ((model & 0xf) << 4) | (stepping & 0xf)
    }

    // MARK: ABI stability

    @Test("the ABI check names the first mismatching field in libvirt's words", arguments: [
        ("<cpu check='full'><model>pentium3</model></cpu>", "Target CPU check full does not match source partial"),
        ("<cpu check='partial'><model>pentium2</model></cpu>", "Target CPU model pentium2 does not match source pentium3"),
        ("<cpu check='partial'><model>pentium3</model><vendor>Intel</vendor></cpu>", "Target CPU vendor Intel does not match source <null>"),
        ("<cpu check='partial'><model>pentium3</model><topology sockets='2' cores='1' threads='1'/></cpu>", "Target CPU sockets 2 does not match source 0"),
        ("<cpu check='partial'><model>pentium3</model><feature name='apic'/><feature name='x2apic'/><feature name='pni'/></cpu>", "Target CPU feature count 3 does not match source 2"),
        ("<cpu check='partial'><model>pentium3</model><feature name='x2apic'/><feature name='apic'/></cpu>", "Target CPU feature x2apic does not match source apic"),
        ("<cpu check='partial'><model>pentium3</model><feature name='apic'/><feature policy='disable' name='x2apic'/></cpu>", "Target CPU feature policy disable does not match source require"),
        ("<cpu mode='host-model' check='partial'/>", "Target CPU mode host-model does not match source custom"),
    ])
    func abi(target: String, message: String) throws {
        let source = try parseCPU("<cpu check='partial'><model fallback='forbid'>pentium3</model><feature name='apic'/><feature name='x2apic'/></cpu>")
        #expect(throws: CPUError(.unsupported, message)) { try source.checkABIStability(against: try parseCPU(target)) }
    }

    @Test("match and fallback are not part of the ABI")
    func abiIgnores() throws {
        let source = try parseCPU("<cpu match='exact'><model fallback='forbid'>pentium3</model></cpu>")
        let target = try parseCPU("<cpu match='minimum'><model fallback='allow'>pentium3</model></cpu>")
        try source.checkABIStability(against: target)
        #expect(throws: CPUError(.unsupported, "Target CPU does not match source")) { try source.checkABIStability(against: nil) }
    }
}
