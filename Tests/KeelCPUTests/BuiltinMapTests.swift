import Foundation
import KeelCPU
import Testing

@Suite("the built-in CPU map generated from QEMU")
struct BuiltinMapTests {
    static func map() throws -> CPUMap { try CPUMap.builtin.get() }

    @Test("it loads, and QEMU's versioned models are first-class with the version each alias resolves to")
    func versionedModels() throws {
        let map = try Self.map()
        #expect(map.features.count > 200)
        let alias = try #require(map.model(named: "Cascadelake-Server"))
        #expect(alias.aliasOf == "Cascadelake-Server-v1")
        #expect(alias.decodeHost && alias.decodeGuest)
        for version in 1...5 {
            let model = try #require(map.model(named: "Cascadelake-Server-v\(version)"), "Cascadelake-Server-v\(version)")
            #expect(!model.decodeHost && !model.decodeGuest, "versions are not picked when decoding")
        }
        #expect(map.model(named: "Cascadelake-Server-v1")?.bits == alias.bits)
        #expect(map.model(named: "Cascadelake-Server-v4")?.bits != alias.bits)
    }

    @Test("feature names translate between libvirt's and QEMU's spelling both ways", arguments: [
        ("pni", "sse3"), ("tsc_adjust", "tsc-adjust"), ("lahf_lm", "lahf-lm"), ("pclmuldq", "pclmulqdq"),
        ("ds_cpl", "ds-cpl"), ("kvm_pv_eoi", "kvm-pv-eoi"), ("vmx", "vmx"),
    ])
    func names(libvirt: String, qemu: String) throws {
        let map = try Self.map()
        #expect(map.libvirtFeatureName(forQEMU: qemu) == libvirt)
        #expect(map.libvirtFeatureName(forQEMU: libvirt) == libvirt)
        if libvirt != "pni" {
            #expect(map.qemuFeatureName(for: libvirt) == qemu)
        }
    }

    @Test("features carry their CPUID bits as QEMU reports them")
    func bits() throws {
        let map = try Self.map()
        #expect(map.feature(named: "x2apic")?.locations == [.cpuid(leaf: 1, subleaf: 0, register: .ecx, mask: 1 << 21)])
        #expect(map.feature(named: "avx512f")?.locations == [.cpuid(leaf: 7, subleaf: 0, register: .ebx, mask: 1 << 16)])
        #expect(map.feature(named: "invtsc")?.migratable == false)
    }

    @Test("the committed compact form of the built-in map equals its XML files (KEEL_RECORD=1 rewrites it)")
    func compactAgreesWithXML() throws {
        let xml = try CPUMap.loadBuiltinXML()
        let text = xml.compactText()
        if ProcessInfo.processInfo.environment["KEEL_RECORD"] == "1" {
            let file = TestEnvironment.fixtures.deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
                .appendingPathComponent("Sources/KeelCPU/BuiltinCPUMapCompact.generated.swift")
            let source = "// Generated from the built-in CPU map by KeelCPUTests (KEEL_RECORD=1). Do not edit.\n"
                + "enum BuiltinCPUMapCompact {\n    static let text = #\"\"\"\n" + text + "\n\"\"\"#\n}\n"
            try source.write(to: file, atomically: true, encoding: .utf8)
            print("recorded \(file.path)")
        }
        #expect(CPUMap.builtinCompactText == text, "the compact form is stale: run the tests with KEEL_RECORD=1")
        let compact = try CPUMap.load(compactText: CPUMap.builtinCompactText)
        #expect(compact.isEquivalent(to: xml))
    }

    @Test("the committed compact form of libvirt 9.0's map equals the installed libvirt's (KEEL_RECORD=1 rewrites it)")
    func libvirtCompactAgrees() throws {
        guard let installed = TestEnvironment.libvirtMap else { return }
        let text = installed.compactText()
        if ProcessInfo.processInfo.environment["KEEL_RECORD"] == "1" {
            let file = TestEnvironment.fixtures.deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
                .appendingPathComponent("Sources/KeelCPU/LibvirtCPUMapCompact.generated.swift")
            let source = "// Generated from libvirt 9.0's cpu_map by KeelCPUTests (KEEL_RECORD=1). Do not edit.\n"
                + "enum LibvirtCPUMapCompact {\n    static let text = #\"\"\"\n" + text + "\n\"\"\"#\n}\n"
            try source.write(to: file, atomically: true, encoding: .utf8)
            print("recorded \(file.path)")
        }
        #expect(CPUMap.libvirtCompactText == text, "the committed libvirt map differs from the installed one: run the tests with KEEL_RECORD=1")
        #expect(try CPUMap.libvirt.get().isEquivalent(to: installed))
    }

    @Test("a CPU written for libvirt keeps its CPUID bits under libvirt's model definitions", arguments: [
        "<cpu><model>qemu64</model><feature name='hypervisor'/></cpu>",
        "<cpu><model>pentium3</model><feature name='apic'/><feature name='x2apic'/><feature name='hypervisor'/><feature name='kvmclock'/></cpu>",
        "<cpu><model>Skylake-Client-IBRS</model><feature policy='disable' name='hle'/><feature name='vmx'/></cpu>",
        "<cpu><model>Cascadelake-Server-v4</model></cpu>",
        "<cpu><model>EPYC</model><feature policy='disable' name='svm'/></cpu>",
    ])
    func libvirtVocabulary(xml: String) throws {
        let map = try Self.map()
        let libvirt = try CPUMap.libvirt.get()
        let cpu = try CPUDefinition(xmlString: xml, as: .guest)
        let translated = try map.libvirtCPU(for: cpu)
        #expect(translated.features.allSatisfy { CPUMap.libvirtFeatureNames.contains($0.name) })
        let expected = Set(map.featureNames(in: try map.bits(of: cpu))).intersection(CPUMap.libvirtFeatureNames)
        let got = Set(libvirt.featureNames(in: try libvirt.bits(of: translated)))
        #expect(got == expected, "\(translated.formatted())")
    }

    @Test("any map survives the compact form unchanged")
    func compactRoundTrip() throws {
        guard let libvirt = TestEnvironment.libvirtMap else { return }
        let reloaded = try CPUMap.load(compactText: libvirt.compactText())
        #expect(reloaded.isEquivalent(to: libvirt))
        #expect(reloaded.compactText() == libvirt.compactText())
        #expect(throws: CPUError.self) { try CPUMap.load(compactText: "keel-cpu-map 1\nfeature x 1 - c:zz\n") }
    }

    @Test("the committed map equals what scripts/gen-cpu-map.py generates from the installed QEMU")
    func generatorAgrees() throws {
        let qemu = "/usr/bin/qemu-system-x86_64"
        guard FileManager.default.isExecutableFile(atPath: qemu) else {
            print("SKIP: qemu-system-x86_64 is not installed; the generated map is not re-checked")
            return
        }
        let version = try run(qemu, ["--version"]).stdout
        guard let installed = version.split(separator: " ").dropFirst(3).first.map(String.init), installed == CPUMap.builtinQEMUVersion else {
            print("SKIP: the built-in map comes from QEMU \(CPUMap.builtinQEMUVersion), the installed one differs: \(version.prefix(60))")
            return
        }
        let script = TestEnvironment.fixtures.deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent("scripts/gen-cpu-map.py").path
        let result = try run("/usr/bin/python3", [script, "--check"])
        #expect(result.status == 0, "gen-cpu-map.py --check: \(result.stdout) \(result.stderr)")
    }
}
