import Foundation
import KeelCPU
import KeelDomain
import KeelMigration

enum Fixtures {
    static let directory: URL = {
        if let url = Bundle.module.url(forResource: "Fixtures", withExtension: nil) { return url }
        return URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("Fixtures")
    }()

    static func cookie(_ name: String) throws -> String {
        try String(contentsOf: directory.appendingPathComponent("cookies/\(name).xml"), encoding: .utf8)
    }

    static func cookieNames() throws -> [String] {
        try FileManager.default.contentsOfDirectory(atPath: directory.appendingPathComponent("cookies").path)
            .filter { $0.hasSuffix(".xml") }.map { String($0.dropLast(4)) }.sorted()
    }

    /// The repository's root, for the documentation.
    static let repository = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
}

/// The test guest as both sides see it: the original CPU in the XML, the CPU QEMU gave it
/// (apic, x2apic and hypervisor added) in the cookie and the ABI record.
enum Guest {
    static let uuid = "5e1f1c52-8f0e-4a5b-9a0c-33c6a2f9b7d4"
    static let hostA = MigrationMessage.HostIdentity(name: "host-a", uuid: "0b9d6f1e-2c3a-4b5d-8e7f-901a2b3c4d5e")
    static let hostB = MigrationMessage.HostIdentity(name: "host-b", uuid: "77c1f0e2-5a4b-4c3d-9e8f-0a1b2c3d4e5f")

    static let xml = """
        <domain type='kvm'>
          <name>web-1</name>
          <uuid>5e1f1c52-8f0e-4a5b-9a0c-33c6a2f9b7d4</uuid>
          <memory unit='KiB'>32768</memory>
          <vcpu placement='static'>1</vcpu>
          <os>
            <type arch='x86_64' machine='pc-i440fx-7.2'>hvm</type>
            <kernel>/var/lib/keel/guest.elf</kernel>
          </os>
          <cpu mode='custom' match='exact' check='partial'>
            <model fallback='forbid'>pentium3</model>
          </cpu>
          <devices>
            <emulator>/usr/bin/qemu-system-x86_64</emulator>
            <controller type='usb' index='0' model='none'/>
            <memballoon model='none'/>
          </devices>
        </domain>

        """

    static var definition: DomainDefinition {
        get throws { try DomainDefinition(xmlString: xml) }
    }

    static var updatedCPU: CPUDefinition {
        get throws {
            try CPUDefinition(xmlString: """
                <cpu mode='custom' match='exact' check='full'>
                  <model fallback='forbid'>pentium3</model>
                  <feature policy='require' name='apic'/>
                  <feature policy='require' name='x2apic'/>
                  <feature policy='require' name='hypervisor'/>
                </cpu>
                """, as: .guest)
        }
    }

    static var abiRecord: ABIRecord {
        get throws {
            ABIRecord(
                requestedCPU: try definition.cpu, effectiveCPU: try updatedCPU,
                cpuidWords: [
                    CPUIDWord(leaf: 1, subleaf: 0, register: .ecx, value: 0x8020_0000),
                    CPUIDWord(leaf: 1, subleaf: 0, register: .edx, value: 0x0383_FBFF),
                ],
                qemuVersion: "7.2.22", accelerator: "kvm", machine: "pc-i440fx-7.2", managerVersion: "0.1.0",
                host: ABIRecord.Host(signature: "6/94/3", microcode: "0xf0", kernel: "6.1.0-28-amd64")
            )
        }
    }

    static func domain(running: Bool = true) throws -> MigrationSource.Domain {
        MigrationSource.Domain(migratable: try definition, updatedCPU: try updatedCPU, abiRecord: try abiRecord, running: running)
    }

    /// A verdict refusing avx2 (beyond the ceiling) and vmx (QEMU cannot turn it off).
    static let refusal = CPUVerdict(
        missing: [CPUVerdict.Problem(
            feature: CPUFeatureProblem(name: "avx2", kind: .missing, locations: [.cpuid(leaf: 7, subleaf: 0, register: .ebx, mask: 1 << 5)]),
            reason: "beyond this host's CPU ceiling"
        )],
        extra: [CPUVerdict.Problem(
            feature: CPUFeatureProblem(name: "vmx", kind: .extra, locations: [.cpuid(leaf: 1, subleaf: 0, register: .ecx, mask: 1 << 5)]),
            reason: "QEMU 7.2.22 turns it on under kvm and cannot turn it off"
        )]
    )
}
