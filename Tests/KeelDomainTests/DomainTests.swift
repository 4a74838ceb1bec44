import Foundation
import KeelCPU
import KeelDomain
import KeelXML
import Testing

@Suite("domain definitions, save cookies and ABI records")
struct DomainTests {
    static let domain = """
        <domain type='kvm'>
          <name>web-1</name>
          <uuid>5e1f1c52-8f0e-4a5b-9a0c-33c6a2f9b7d4</uuid>
          <description>kept as written</description>
          <memory unit='MiB'>64</memory>
          <vcpu placement='static'>1</vcpu>
          <os>
            <type arch='x86_64' machine='pc-i440fx-7.2'>hvm</type>
            <kernel>/var/lib/keel/guest.elf</kernel>
            <cmdline>fill=0</cmdline>
          </os>
          <cpu mode='custom' match='exact' check='partial'>
            <model fallback='forbid'>pentium3</model>
          </cpu>
          <on_crash>destroy</on_crash>
          <devices>
            <emulator>/usr/bin/qemu-system-x86_64</emulator>
            <disk type='file' device='disk'>
              <driver name='qemu' type='qcow2'/>
              <source file='/var/lib/keel/web-1.qcow2'/>
              <target dev='vda' bus='virtio'/>
            </disk>
            <serial type='file'>
              <source path='/var/log/keel/web-1.serial'/>
            </serial>
          </devices>
        </domain>

        """

    @Test("the typed view reads what Keel interprets and the tree keeps the rest byte for byte")
    func parse() throws {
        let domain = try DomainDefinition(xmlString: Self.domain)
        #expect(domain.virtType == "kvm")
        #expect(domain.name == "web-1")
        #expect(domain.memoryKiB == 65536)
        #expect(domain.vcpus == 1)
        #expect(domain.os.machine == "pc-i440fx-7.2")
        #expect(domain.os.kernel == "/var/lib/keel/guest.elf")
        #expect(domain.cpu?.model == "pentium3")
        #expect(domain.disks.first?.format == "qcow2")
        #expect(domain.formatted() == Self.domain)
    }

    @Test("swapping the CPU rewrites only the <cpu> element")
    func swapCPU() throws {
        let domain = try DomainDefinition(xmlString: Self.domain)
        let updated = try CPUDefinition(xmlString: "<cpu mode='custom' match='exact' check='full'><model fallback='forbid'>pentium3</model><feature policy='require' name='apic'/></cpu>")
        let text = domain.with(cpu: updated).formatted()
        #expect(text == Self.domain.replacingOccurrences(of: "check='partial'>\n    <model fallback='forbid'>pentium3</model>\n", with: "check='full'>\n    <model fallback='forbid'>pentium3</model>\n    <feature policy='require' name='apic'/>\n"))
    }

    @Test("host-side changes pass the ABI check; guest-visible ones fail naming the field", arguments: [
        ("<description>kept as written</description>", "<description>changed</description>", nil),
        ("/var/lib/keel/web-1.qcow2", "/srv/elsewhere.qcow2", nil),
        ("<vcpu placement='static'>1</vcpu>", "<vcpu placement='static'>2</vcpu>", "Target domain vCPU max 2 does not match source 1"),
        ("check='partial'", "check='full'", "Target CPU check full does not match source partial"),
        (">pentium3<", ">pentium2<", "Target CPU model pentium2 does not match source pentium3"),
        ("machine='pc-i440fx-7.2'", "machine='pc-q35-7.2'", "Target domain machine type pc-q35-7.2 does not match source pc-i440fx-7.2"),
        ("<memory unit='MiB'>64</memory>", "<memory unit='MiB'>128</memory>", "Target domain max memory 131072 does not match source 65536"),
        ("<target dev='vda' bus='virtio'/>", "<target dev='sda' bus='sata'/>", "Target disk bus sata does not match source virtio"),
        ("<domain type='kvm'>", "<domain type='qemu'>", "Target domain virt type qemu does not match source kvm"),
    ] as [(String, String, String?)])
    func abi(original: String, replacement: String, message: String?) throws {
        let source = try DomainDefinition(xmlString: Self.domain)
        let target = try DomainDefinition(xmlString: Self.domain.replacingOccurrences(of: original, with: replacement))
        if let message {
            #expect(throws: DomainError(.abiMismatch, message)) { try source.checkABIStability(against: target) }
        } else {
            try source.checkABIStability(against: target)
        }
    }

    @Test("invalid domains are refused with a message naming the problem", arguments: [
        ("<vm/>", "expecting root element of 'domain', not 'vm'"),
        ("<domain><name>x</name></domain>", "missing domain type attribute"),
        ("<domain type='kvm'><memory>1</memory></domain>", "missing domain name information"),
        ("<domain type='kvm'><name>x</name><uuid>nope</uuid><memory>1</memory></domain>", "malformed uuid element: 'nope'"),
        ("<domain type='kvm'><name>x</name><memory unit='parsecs'>1</memory></domain>", "unknown unit 'parsecs' for element 'memory'"),
        ("<domain type='kvm'><name>x</name><memory>1</memory><os><type>hvm</type></os><cpu><model>x</model><feature policy='bad' name='y'/></cpu></domain>", "Invalid CPU feature policy"),
    ])
    func invalid(xml: String, message: String) {
        #expect(throws: DomainError(.invalidXML, message)) { try DomainDefinition(xmlString: xml) }
    }

    static let libvirtCookie = """
        <cookie>
          <cpu mode='custom' match='exact' check='full'>
            <model fallback='forbid'>pentium3</model>
            <feature policy='require' name='apic'/>
            <feature policy='require' name='x2apic'/>
            <feature policy='require' name='hypervisor'/>
          </cpu>
          <slirpHelper/>
        </cookie>

        """

    @Test("libvirt's cookie is read and written back byte for byte")
    func libvirtCookie() throws {
        let cookie = try SaveCookie(xmlString: Self.libvirtCookie)
        #expect(cookie.cpu?.check == .full)
        #expect(cookie.cpu?.features.map(\.name) == ["apic", "x2apic", "hypervisor"])
        #expect(cookie.slirpHelper)
        #expect(cookie.abiRecord == nil)
        #expect(cookie.formatted() == Self.libvirtCookie)
        let empty = try SaveCookie(xmlString: "<cookie/>")
        #expect(empty.cpu == nil && !empty.slirpHelper)
    }

    @Test("Keel's ABI record round-trips inside the cookie, and libvirt's view of the cookie is unchanged by it")
    func abiRecordRoundTrip() throws {
        var cookie = try SaveCookie(xmlString: Self.libvirtCookie)
        cookie.abiRecord = ABIRecord(
            requestedCPU: try CPUDefinition(xmlString: "<cpu mode='custom' match='exact' check='partial'><model fallback='forbid'>pentium3</model></cpu>"),
            effectiveCPU: cookie.cpu,
            cpuidWords: [CPUIDWord(leaf: 1, register: .edx, value: 0x0383_fbff), CPUIDWord(leaf: 7, register: .ebx, value: 0)],
            qemuVersion: "7.2.22", accelerator: "kvm", machine: "pc-i440fx-7.2", managerVersion: "0.1.0",
            host: .init(signature: "6/94/3", microcode: "0xf0", kernel: "6.1.0-26-amd64")
        )
        let text = cookie.formatted()
        let reparsed = try SaveCookie(xmlString: text)
        #expect(reparsed == cookie)
        #expect(text.contains("<keel:abi xmlns:keel='https://keel.dev/xmlns/abi/1' version='1'>"))
        // What libvirt reads: ./cpu[1] and slirpHelper, the same as without the record.
        let root = try XMLParser.parse(text)
        #expect(root.child("cpu") == (try XMLParser.parse(Self.libvirtCookie)).child("cpu"))
        #expect(root.elements.filter { $0.name == "cpu" }.count == 1)
    }

    @Test("a broken cookie is an error naming the problem")
    func brokenCookie() {
        #expect(throws: DomainError.self) { try SaveCookie(xmlString: "<cookie><cpu>") }
        #expect(throws: DomainError(.invalidXML, "invalid save cookie: root element is 'biscuit', expected 'cookie'")) { try SaveCookie(xmlString: "<biscuit/>") }
        #expect(throws: DomainError(.invalidXML, "invalid CPU in save cookie: Invalid CPU feature policy")) {
            try SaveCookie(xmlString: "<cookie><cpu><model>x</model><feature policy='maybe' name='y'/></cpu></cookie>")
        }
        #expect(throws: DomainError(.unsupported, "unsupported ABI record version 9")) {
            try SaveCookie(xmlString: "<cookie><k:abi xmlns:k='https://keel.dev/xmlns/abi/1' version='9'/></cookie>")
        }
    }
}
