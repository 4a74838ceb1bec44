import Foundation
import KeelCPU
import KeelQEMU
import KeelXML
import Testing

/// Probes of the installed QEMU; one at a time, each well under a second per QEMU start.
@Suite("capabilities probe on real QEMU", .serialized)
struct RealProbeTests {
    static let binary = "/usr/bin/qemu-system-x86_64"

    static let unavailableReason: String? = {
        guard FileManager.default.isExecutableFile(atPath: binary) else { return "\(binary) is not installed" }
        if case .failure(let error) = CPUMap.builtin { return "the built-in CPU map does not load: \(error)" }
        return nil
    }()

    static let kvmUnavailableReason: String? = {
        let fd = open("/dev/kvm", O_RDWR | O_CLOEXEC)
        if fd < 0 { return "/dev/kvm cannot be opened read-write: \(String(cString: strerror(errno)))" }
        close(fd)
        return nil
    }()

    static func skip(_ why: String?, _ test: String) -> Bool {
        guard let why else { return false }
        print("skipped \(test): \(why)")
        return true
    }

    static func summary(_ capabilities: QEMUCapabilities) -> String {
        let usable = capabilities.cpuModels.filter(\.isUsable).map(\.name)
        let host = capabilities.hostModel.map { "\($0.model ?? "?") vendor=\($0.vendor ?? "?") +\($0.features.filter { $0.policy == .require }.count) -\($0.features.filter { $0.policy == .disable }.count)" } ?? "none"
        return """
            \(capabilities.accelerator.rawValue): QEMU \(capabilities.version), default machine \(capabilities.resolveMachine(nil) ?? "none"), \
            \(capabilities.cpuModels.count) models, \(usable.count) usable [\(usable.joined(separator: " "))], \
            host-model \(host), \(capabilities.availableFeatures.count) available, \
            forced [\(capabilities.forcedFeatures.joined(separator: " "))], unmigratable [\(capabilities.unmigratableFeatures.joined(separator: " "))]
            """
    }

    /// Checks every accelerator shares: version, machines, model list and a host model.
    func checkCommon(_ capabilities: QEMUCapabilities, map: CPUMap) throws {
        let parts = capabilities.version.split(separator: ".").compactMap { Int($0) }
        #expect(parts.count == 3)
        if parts.count == 3 {
            #expect(capabilities.resolveMachine("pc") == "pc-i440fx-\(parts[0]).\(parts[1])")
            #expect(capabilities.resolveMachine(nil) == "pc-i440fx-\(parts[0]).\(parts[1])")
            #expect(capabilities.resolveMachine("q35") == "pc-q35-\(parts[0]).\(parts[1])")
        }
        #expect(capabilities.resolveMachine("no-such-machine") == nil)
        #expect(capabilities.machines.first?.isDefault == true)
        #expect(capabilities.cpuModel(named: "qemu64") != nil)
        #expect(capabilities.cpuModel(named: "qemu64")?.aliasOf == "qemu64-v1")
        #expect(capabilities.cpuModel(named: "pentium3")?.isUsable == true)
        let host = try #require(capabilities.hostModel)
        #expect(host.mode == .custom && host.match == .exact && host.fallback == .forbid)
        #expect(host.vendor != nil && host.signature != nil)
        // Every name is a libvirt name of the map, in map order.
        let order = Dictionary(uniqueKeysWithValues: map.features.map { ($0.name, $0.index) })
        for list in [capabilities.availableFeatures, capabilities.forcedFeatures, capabilities.unmigratableFeatures] {
            let indices = list.compactMap { order[$0] }
            #expect(indices.count == list.count)
            #expect(indices == indices.sorted())
        }
        #expect(capabilities.availableFeatures.contains("sse2") && capabilities.availableFeatures.contains("lm"))
        // The cache form holds everything.
        #expect(try QEMUCapabilities(xml: XMLParser.parse(capabilities.xmlElement.formatted())) == capabilities)
    }

    @Test("TCG: QEMU's version, pc resolving to i440fx, qemu64, no x2apic, nothing forced")
    func tcg() async throws {
        if Self.skip(Self.unavailableReason, "the TCG probe") { return }
        let map = try CPUMap.builtin.get()
        let directory = try ProbeScratchDirectory()
        defer { directory.cleanup() }
        let started = ContinuousClock.now
        let capabilities = try await CapabilitiesProbe.probe(binary: Self.binary, accelerator: .tcg, workDirectory: directory.path, map: map)
        print("TCG probe took \(ContinuousClock.now - started)")
        print(Self.summary(capabilities))
        try checkCommon(capabilities, map: map)
        // QEMU 7.2's TCG has no x2apic: the max CPU lacks it and models needing it are blocked.
        #expect(!capabilities.availableFeatures.contains("x2apic"))
        #expect(capabilities.cpuModel(named: "Skylake-Client")?.unavailableFeatures.contains("x2apic") == true)
        #expect(capabilities.cpuModel(named: "qemu64")?.isUsable == true)
        // Every CPUID feature of the map can be switched off under TCG.
        #expect(capabilities.forcedFeatures == [])
        #expect(capabilities.unmigratableFeatures == [])
        #expect(capabilities.hostModel?.vendor == "AMD")
        #expect(!capabilities.supports(.hostPassthrough, map: map))
        #expect(capabilities.supports(.maximum, map: map))
        #expect(FileManager.default.fileExists(atPath: directory.path))
        #expect(try FileManager.default.contentsOfDirectory(atPath: directory.path).isEmpty)
    }

    @Test("KVM: the host CPU expansion, its unmigratable features and the forced ones")
    func kvm() async throws {
        if Self.skip(Self.unavailableReason ?? Self.kvmUnavailableReason, "the KVM probe") { return }
        let map = try CPUMap.builtin.get()
        let directory = try ProbeScratchDirectory()
        defer { directory.cleanup() }
        let started = ContinuousClock.now
        let capabilities = try await CapabilitiesProbe.probe(binary: Self.binary, accelerator: .kvm, workDirectory: directory.path, map: map)
        print("KVM probe took \(ContinuousClock.now - started)")
        print(Self.summary(capabilities))
        try checkCommon(capabilities, map: map)
        #expect(capabilities.cpuModel(named: "host")?.isUsable == true)
        #expect(capabilities.supports(.hostPassthrough, map: map))
        // KVM provides x2apic even where the host CPU lacks it.
        #expect(capabilities.availableFeatures.contains("x2apic"))
        #expect(Set(capabilities.unmigratableFeatures).isSubset(of: capabilities.availableFeatures))
        let hostCPU = try #require(capabilities.hostCPU(map: map))
        #expect(hostCPU.type == .host && hostCPU.arch == "x86_64")
    }

    @Test("the cache round trip is stable: probe, cached, corrupted cache, probe again")
    func cacheRoundTrip() async throws {
        if Self.skip(Self.unavailableReason, "the cache round trip") { return }
        let map = try CPUMap.builtin.get()
        let directory = try ProbeScratchDirectory()
        defer { directory.cleanup() }
        let cache = directory.file("cache/capabilities")
        var started = ContinuousClock.now
        let probed = try await CapabilitiesProbe.capabilities(binary: Self.binary, accelerator: .tcg, cacheDirectory: cache, map: map)
        let probeTime = ContinuousClock.now - started
        started = ContinuousClock.now
        let cached = try await CapabilitiesProbe.capabilities(binary: Self.binary, accelerator: .tcg, cacheDirectory: cache, map: map)
        let cacheTime = ContinuousClock.now - started
        print("TCG probe + cache write \(probeTime), cached \(cacheTime)")
        #expect(cached == probed)
        #expect(cacheTime < probeTime)
        let path = CapabilitiesProbe.cachePath(binary: Self.binary, accelerator: .tcg, cacheDirectory: cache)
        let text = try String(contentsOfFile: path, encoding: .utf8)
        try "<keel-qemu-capabilities format='1'".write(toFile: path, atomically: true, encoding: .utf8)
        let reprobed = try await CapabilitiesProbe.capabilities(binary: Self.binary, accelerator: .tcg, cacheDirectory: cache, map: map)
        #expect(reprobed == probed)
        #expect(try String(contentsOfFile: path, encoding: .utf8) == text)
        #expect(try FileManager.default.contentsOfDirectory(atPath: cache) == [(path as NSString).lastPathComponent])
    }

    @Test("domain capabilities under TCG list the modes and the custom models as libvirt 9.0 does")
    func domainCapabilities() async throws {
        if Self.skip(Self.unavailableReason, "the domain capabilities") { return }
        let map = try CPUMap.builtin.get()
        let directory = try ProbeScratchDirectory()
        defer { directory.cleanup() }
        let capabilities = try await CapabilitiesProbe.capabilities(binary: Self.binary, accelerator: .tcg, cacheDirectory: directory.path, map: map)
        let xml = try capabilities.domainCapabilitiesXML(machine: "pc", map: map).formatted()
        #expect(xml.hasPrefix("<domainCapabilities>\n  <path>/usr/bin/qemu-system-x86_64</path>\n  <domain>qemu</domain>\n  <machine>pc-i440fx-"))
        #expect(xml.contains("<mode name='host-passthrough' supported='no'/>"))
        #expect(xml.contains("<mode name='maximum' supported='yes'>\n      <enum name='maximumMigratable'>\n        <value>on</value>\n        <value>off</value>\n      </enum>\n    </mode>"))
        #expect(xml.contains("<mode name='host-model' supported='yes'>\n      <model fallback='forbid'>"))
        #expect(xml.contains("<model usable='yes' vendor='unknown'>qemu64</model>"))
        #expect(xml.contains("<model usable='no' vendor='Intel'>Skylake-Client</model>"))
        #expect(!xml.contains(">host</model>") && !xml.contains(">max</model>") && !xml.contains(">base</model>"))
        #expect(throws: QEMUError.self) { try capabilities.domainCapabilitiesXML(machine: "no-such", map: map) }
    }
}
