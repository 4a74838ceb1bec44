import Foundation
import KeelCPU
import KeelQEMU
import KeelXML
import Testing

/// A temporary directory removed by `cleanup()`.
struct ProbeScratchDirectory {
    let path: String

    init() throws {
        path = FileManager.default.temporaryDirectory.appendingPathComponent("keel-caps-\(UUID().uuidString.prefix(8))").path
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    }

    func file(_ name: String) -> String { path + "/" + name }
    func cleanup() { try? FileManager.default.removeItem(atPath: path) }
}

@Suite("capabilities cache")
struct CapabilitiesCacheTests {
    /// A stand-in for QEMU that records each start and fails, so a test sees whether the
    /// cache was used (no start) or a probe was attempted (a start and `.processExited`).
    struct FakeQEMU {
        let directory: ProbeScratchDirectory
        var binary: String { directory.file("fake-qemu") }
        var marker: String { directory.file("started") }
        var cacheDirectory: String { directory.file("cache") }

        init() throws {
            directory = try ProbeScratchDirectory()
            try write(comment: "")
        }

        func write(comment: String) throws {
            try "#!/bin/sh\necho started >> '\(marker)'\necho 'fake QEMU refuses' >&2\nexit 1\n# \(comment)\n"
                .write(toFile: binary, atomically: false, encoding: .utf8)
            chmod(binary, 0o755)
        }

        var starts: Int {
            ((try? String(contentsOfFile: marker, encoding: .utf8)) ?? "").split(separator: "\n").count
        }

        func cachedCapabilities(identity: String? = nil, probeKey: String? = nil) throws -> QEMUCapabilities {
            let map = try CPUMap.builtin.get()
            return QEMUCapabilities(
                binary: binary, binaryIdentity: try identity ?? CapabilitiesProbe.binaryIdentity(binary), version: "7.2.22",
                accelerator: .tcg, machines: [.init(name: "pc-i440fx-7.2", isDefault: true, maxCPUs: 255), .init(name: "pc", canonical: "pc-i440fx-7.2", isDefault: true, maxCPUs: 255)],
                cpuModels: [.init(name: "qemu64"), .init(name: "Skylake-Client", unavailableFeatures: ["x2apic"])],
                availableFeatures: ["fpu", "sse2"], probeKey: probeKey ?? CapabilitiesProbe.probeKey(map: map)
            )
        }

        var cachePath: String { CapabilitiesProbe.cachePath(binary: binary, accelerator: .tcg, cacheDirectory: cacheDirectory) }

        func store(_ capabilities: QEMUCapabilities) throws {
            try FileManager.default.createDirectory(atPath: cacheDirectory, withIntermediateDirectories: true)
            try capabilities.xmlElement.formatted().write(toFile: cachePath, atomically: true, encoding: .utf8)
        }

        /// Asks for the capabilities; nil when a probe was attempted (and failed as it must).
        func capabilities() async throws -> QEMUCapabilities? {
            do {
                return try await CapabilitiesProbe.capabilities(binary: binary, accelerator: .tcg, cacheDirectory: cacheDirectory, map: CPUMap.builtin.get())
            } catch let error as QEMUError where error.code == .processExited {
                #expect(error.message.contains("fake QEMU refuses"))
                return nil
            }
        }
    }

    @Test("the cache file is named after the binary path and the accelerator")
    func cacheFileName() {
        #expect(CapabilitiesProbe.cachePath(binary: "/usr/bin/qemu-system-x86_64", accelerator: .kvm, cacheDirectory: "/var/lib/keel/cache/capabilities/")
            == "/var/lib/keel/cache/capabilities/usr_bin_qemu-system-x86_64-kvm.xml")
        #expect(CapabilitiesProbe.cachePath(binary: "/opt/q e/../qemu", accelerator: .tcg, cacheDirectory: "/c")
            == "/c/opt_q_e_.._qemu-tcg.xml")
    }

    @Test("a cache whose binary identity matches is used without starting QEMU")
    func identityMatch() async throws {
        let fake = try FakeQEMU()
        defer { fake.directory.cleanup() }
        let cached = try fake.cachedCapabilities()
        try fake.store(cached)
        let capabilities = try await fake.capabilities()
        #expect(capabilities == cached)
        #expect(fake.starts == 0)
        #expect(capabilities?.resolveMachine("pc") == "pc-i440fx-7.2")
    }

    @Test("a changed binary, a stale probe key or another identity makes the probe run again", arguments: ["binary", "key", "identity"])
    func identityMismatch(change: String) async throws {
        let fake = try FakeQEMU()
        defer { fake.directory.cleanup() }
        switch change {
        case "binary":
            try fake.store(fake.cachedCapabilities())
            try fake.write(comment: "upgraded: a different size")
        case "key":
            try fake.store(fake.cachedCapabilities(probeKey: "0:stale"))
        default:
            try fake.store(fake.cachedCapabilities(identity: "1:2.3:4"))
        }
        #expect(try await fake.capabilities() == nil)
        #expect(fake.starts == 1)
    }

    @Test("a corrupted, truncated or foreign cache file makes the probe run again", arguments: ["garbage", "truncated", "foreign", "empty"])
    func corrupted(kind: String) async throws {
        let fake = try FakeQEMU()
        defer { fake.directory.cleanup() }
        try fake.store(fake.cachedCapabilities())
        let text = try String(contentsOfFile: fake.cachePath, encoding: .utf8)
        let replacement = switch kind {
        case "garbage": "\u{1}\u{2}not xml at all <<<"
        case "truncated": String(text.prefix(text.count / 2))
        case "foreign": "<capabilities><host/></capabilities>"
        default: ""
        }
        try replacement.write(toFile: fake.cachePath, atomically: true, encoding: .utf8)
        #expect(try await fake.capabilities() == nil)
        #expect(fake.starts == 1)
        // The failed probe leaves the bad file for the next attempt and no probe directory.
        let leftovers = try FileManager.default.contentsOfDirectory(atPath: fake.cacheDirectory).filter { $0.hasPrefix("probe.") }
        #expect(leftovers.isEmpty)
    }

    @Test("a missing binary is reported as not found")
    func missingBinary() async throws {
        let directory = try ProbeScratchDirectory()
        defer { directory.cleanup() }
        await #expect(throws: QEMUError.self) {
            try await CapabilitiesProbe.capabilities(binary: directory.file("nope"), accelerator: .tcg, cacheDirectory: directory.path, map: CPUMap.builtin.get())
        }
    }

    @Test("the cache form round-trips every field, the host model's signature included")
    func cacheFormRoundTrip() throws {
        let map = try CPUMap.builtin.get()
        var capabilities = try FakeQEMU.cachedCapabilitiesForRoundTrip(map: map)
        capabilities.forcedFeatures = ["x2apic"]
        capabilities.unmigratableFeatures = ["invtsc"]
        let parsed = try QEMUCapabilities(xml: XMLParser.parse(capabilities.xmlElement.formatted()))
        #expect(parsed == capabilities)
    }
}

extension CapabilitiesCacheTests.FakeQEMU {
    static func cachedCapabilitiesForRoundTrip(map: CPUMap) throws -> QEMUCapabilities {
        var host = try map.decode(.init(bits: map.bits(ofFeatures: ["fpu", "sse2", "pni", "x2apic"]), vendor: "Intel", signature: 0x000c_06f2), as: .guest)
        host.fallback = .forbid
        return QEMUCapabilities(
            binary: "/usr/bin/qemu-system-x86_64", binaryIdentity: "1:2.3:4", version: "7.2.22", accelerator: .kvm,
            machines: [.init(name: "pc-i440fx-2.0", maxCPUs: 255, isDeprecated: true)],
            cpuModels: [.init(name: "Icelake-Client", aliasOf: "Icelake-Client-v1", unavailableFeatures: ["pni", "x-unknown"], isDeprecated: true)],
            hostModel: host, availableFeatures: ["fpu"], probeKey: "1:abc"
        )
    }
}
