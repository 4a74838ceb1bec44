import Foundation
import KeelCPU
import KeelDomain
import KeelQEMU
import KeelSaveImage
import Testing

/// End to end on real QEMU with the test guest: what the guest itself sees must not change.
@Suite("QEMU driver: start, save and restore keep the guest CPU", .serialized)
struct DriverTests {
    @Test("under TCG the guest's CPUID lines are identical before save and after restore")
    func saveRestoreTCG() async throws {
        if let reason = DriverFixture.unavailableReason { print("SKIP: \(reason)"); return }
        try await roundTrip(type: "qemu", cpu: "<cpu mode='custom' match='exact'><model fallback='forbid'>qemu64</model><feature policy='require' name='x2apic'/></cpu>")
    }

    @Test("under KVM the guest's CPUID lines are identical before save and after restore")
    func saveRestoreKVM() async throws {
        if let reason = DriverFixture.unavailableReason { print("SKIP: \(reason)"); return }
        if let reason = DriverFixture.kvmUnavailableReason { print("SKIP (KVM): \(reason)"); return }
        try await roundTrip(type: "kvm", cpu: "<cpu mode='custom' match='exact' check='none'><model fallback='forbid'>qemu64</model></cpu>")
    }

    func roundTrip(type: String, cpu: String) async throws {
        try await DriverFixture.with { fixture in
            let name = "rt-\(type)"
            try await fixture.driver.define(xml: fixture.domainXML(name: name, type: type, cpu: cpu))
            let started = try await fixture.driver.start(name: name)
            #expect(started.live.cpu?.check == .full)
            let before = try await fixture.cpuidBlock(name)
            let image = fixture.directory.appendingPathComponent("\(name).save").path
            try await fixture.driver.save(name: name, to: image)
            #expect(try fixture.driver.state(of: name).0 == .shutoff)
            let info = try SaveImage.read(path: image)
            #expect(info.isComplete)
            let cookie = try SaveCookie(xmlString: try #require(info.dataArea.cookie))
            #expect(cookie.abiRecord?.accelerator == (type == "kvm" ? "kvm" : "tcg"))
            #expect(cookie.abiRecord?.effectiveCPU == started.live.cpu)
            let offset = fixture.serialSize(name)
            let restored = try await fixture.driver.restore(path: image)
            #expect(restored.state == .running)
            #expect(restored.live.cpu == started.live.cpu)
            let after = try await fixture.cpuidBlock(name, after: offset)
            #expect(after == before)
            try await fixture.driver.destroy(name: name)
        }
    }

    @Test("a restore where QEMU would add a feature back still gives the guest exactly its old CPU (pinning)")
    func pinningKeepsRemovedFeature() async throws {
        if let reason = DriverFixture.unavailableReason { print("SKIP: \(reason)"); return }
        try await DriverFixture.with { fixture in
            let name = "pin"
            // The saving side ran qemu64 without cx16, as a QEMU that lacked it would have.
            try await fixture.driver.define(xml: fixture.domainXML(name: name, cpu: "<cpu mode='custom' match='exact' check='none'><model fallback='forbid'>qemu64</model><feature policy='disable' name='cx16'/></cpu>"))
            let started = try await fixture.driver.start(name: name)
            let before = try await fixture.cpuidBlock(name)
            #expect(before[1].contains("ecx=80000001"), "cx16 (leaf 1 ECX bit 13) is off: \(before[1])")
            let saved = fixture.directory.appendingPathComponent("saved.img").path
            try await fixture.driver.save(name: name, to: saved)
            // Rewrite the image as libvirt writes one whose QEMU dropped cx16: the domain XML has the
            // original CPU (plain qemu64), the cookie the updated one (cx16 disabled, check='full').
            var original = try #require(started.live.cpu)
            original.features = []
            original.check = .partial
            var updated = try #require(started.live.cpu)
            updated.check = .full
            let domain = try DomainDefinition(xmlString: try SaveImage.read(path: saved).dataArea.xml)
            let withCookie = fixture.directory.appendingPathComponent("with-cookie.img").path
            let withoutCookie = fixture.directory.appendingPathComponent("without-cookie.img").path
            try copyImage(saved, to: withCookie, xml: domain.with(cpu: original).formatted(), cookie: SaveCookie(cpu: updated).formatted())
            try copyImage(saved, to: withoutCookie, xml: domain.with(cpu: original).formatted(), cookie: nil)

            var offset = fixture.serialSize(name)
            let restored = try await fixture.driver.restore(path: withCookie)
            #expect(restored.live.cpu?.features.contains(.init("cx16", .disable)) == true)
            #expect(restored.originalCPU?.features.isEmpty == true)
            let after = try await fixture.cpuidBlock(name, after: offset)
            #expect(after == before, "pinned restore: the guest sees its old CPU")
            try await fixture.driver.destroy(name: name)

            // Control: without the cookie the XML CPU is started and QEMU turns cx16 back on.
            offset = fixture.serialSize(name)
            _ = try await fixture.driver.restore(path: withoutCookie)
            let unpinned = try await fixture.cpuidBlock(name, after: offset)
            #expect(unpinned[1] != before[1], "without pinning the guest's CPU changes: \(unpinned[1])")
            try await fixture.driver.destroy(name: name)
        }
    }

    @Test("a restore needing a feature beyond this host's ceiling is refused before QEMU starts, naming the feature and its bits")
    func ceilingRefusal() async throws {
        if let reason = DriverFixture.unavailableReason { print("SKIP: \(reason)"); return }
        try await DriverFixture.with { fixture in
            let name = "ceil"
            try await fixture.driver.define(xml: fixture.domainXML(name: name, cpu: "<cpu mode='custom' match='exact'><model fallback='forbid'>qemu64</model></cpu>"))
            try await fixture.driver.start(name: name)
            _ = try await fixture.cpuidBlock(name)
            let image = fixture.directory.appendingPathComponent("ceil.img").path
            try await fixture.driver.save(name: name, to: image)
            let ceiling = try CPUDefinition(xmlString: "<cpu><model>qemu64</model><feature policy='require' name='hypervisor'/><feature policy='disable' name='cx16'/></cpu>", as: .guest)
            let older = try Driver(stateDirectory: fixture.directory.appendingPathComponent("older").path, configuration: HostConfiguration(cpuCeiling: ceiling))
            let plan = try await older.planRestore(path: image)
            #expect(!plan.verdict.restorable)
            #expect(plan.verdict.missing.map(\.feature.name) == ["cx16"])
            #expect(plan.verdict.missing.first?.feature.locations == [.cpuid(leaf: 1, subleaf: 0, register: .ecx, mask: 1 << 13)])
            let before = try Data(contentsOf: URL(fileURLWithPath: image))
            await #expect(throws: QEMUError.self) { try await older.restore(path: image) }
            #expect(try older.list().isEmpty, "no QEMU was started")
            #expect(try Data(contentsOf: URL(fileURLWithPath: image)) == before, "the image is untouched")
        }
    }

    /// Writes a copy of `source` with a new data area and the same QEMU stream.
    func copyImage(_ source: String, to path: String, xml: String, cookie: String?) throws {
        let reader = try SaveImageReader(path: source)
        defer { reader.close() }
        let writer = try SaveImageWriter(path: path, dataArea: SaveImageDataArea(xml: xml, cookie: cookie), wasRunning: reader.info.header.wasRunning)
        let stream = try reader.openStream()
        _ = try writer.copyStream(from: stream.fileDescriptor)
        try stream.finish()
        try writer.finish()
    }
}
