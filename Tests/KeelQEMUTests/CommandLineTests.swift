import KeelCPU
import KeelDomain
import KeelQEMU
import Testing

@Suite("QEMU arguments")
struct CommandLineTests {
    static func map() throws -> CPUMap { try CPUMap.builtin.get() }

    @Test("-cpu is built as libvirt builds it: model, vendor_id, explicit features on/off, optional left out", arguments: [
        ("<cpu><model>pentium3</model><feature name='apic'/><feature name='x2apic'/><feature name='hypervisor'/></cpu>", "pentium3,apic=on,x2apic=on,hypervisor=on"),
        ("<cpu><model vendor_id='KeelKeelKeel'>qemu64</model><feature policy='disable' name='svm'/><feature policy='forbid' name='vmx'/><feature policy='optional' name='pcid'/><feature policy='force' name='tsc_adjust'/></cpu>", "qemu64,vendor=KeelKeelKeel,svm=off,vmx=off,tsc-adjust=on"),
        ("<cpu mode='host-passthrough' migratable='on'/>", "host,migratable=on"),
        ("<cpu mode='maximum'/>", "max"),
    ])
    func cpuArgument(xml: String, expected: String) throws {
        let cpu = try CPUDefinition(xmlString: xml, as: .guest)
        #expect(GuestCPU.commandLine(for: cpu, map: try Self.map()) == expected)
    }

    @Test("the pinned -cpu names every CPUID feature of the map exactly once, on iff the CPU has it")
    func pinned() throws {
        let map = try Self.map()
        let cpu = try CPUDefinition(xmlString: "<cpu><model>qemu64</model><feature name='x2apic'/><feature policy='disable' name='cx16'/></cpu>", as: .guest)
        let argument = try GuestCPU.pinnedCommandLine(for: cpu, map: map)
        let parts = argument.split(separator: ",").map(String.init)
        #expect(parts.first == "qemu64")
        var settings: [String: String] = [:]
        for part in parts.dropFirst() {
            let pair = part.split(separator: "=").map(String.init)
            #expect(pair.count == 2)
            #expect(settings[pair[0]] == nil, "\(pair[0]) appears twice")
            settings[pair[0]] = pair[1]
        }
        #expect(settings["x2apic"] == "on")
        #expect(settings["cx16"] == "off")
        #expect(settings["sse2"] == "on")
        #expect(settings["avx512f"] == "off")
        let bits = try map.bits(of: cpu)
        for feature in map.features where feature.locations.allSatisfy({ if case .cpuid = $0 { true } else { false } }) {
            let name = map.qemuFeatureName(for: feature.name)
            #expect(settings[name] == (feature.bits.isSubset(of: bits) ? "on" : "off"), "\(feature.name)")
        }
    }

    @Test("the machine, memory, disks and serial ports come from the definition")
    func machine() throws {
        let definition = try DomainDefinition(xmlString: """
            <domain type='kvm'><name>vm</name><uuid>5e1f1c52-8f0e-4a5b-9a0c-33c6a2f9b7d4</uuid><memory unit='MiB'>64</memory><vcpu>2</vcpu>
            <os><type arch='x86_64' machine='pc-i440fx-7.2'>hvm</type><kernel>/k,1</kernel><cmdline>fill=8</cmdline></os>
            <cpu><topology sockets='1' cores='2' threads='1'/></cpu>
            <devices><disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='/d.qcow2'/><target dev='vda' bus='virtio'/></disk>
            <serial type='file'><source path='/s.log'/></serial></devices></domain>
            """)
        let arguments = try QEMUCommandLine.arguments(for: definition, options: .init(cpu: "qemu64", machine: "pc-i440fx-7.2", accelerator: .kvm, qmpSocket: "/run/q.qmp", incoming: true))
        let text = arguments.joined(separator: " ")
        #expect(text.contains("-machine pc-i440fx-7.2,accel=kvm"))
        #expect(text.contains("-m size=65536k"))
        #expect(text.contains("-smp 2,sockets=1,dies=1,cores=2,threads=1"))
        #expect(text.contains("-kernel /k,1"))
        #expect(text.contains("-drive file=/d.qcow2,format=qcow2,if=none,id=drive-vda -device virtio-blk-pci,drive=drive-vda,id=virtio-disk0"))
        #expect(text.contains("-chardev file,id=charserial0,path=/s.log,append=on -device isa-serial,chardev=charserial0,id=serial0"))
        #expect(text.hasSuffix("-incoming defer"))
        #expect(text.contains("-qmp unix:/run/q.qmp,server=on,wait=off"))
        #expect(arguments.filter { $0 == "-qmp" }.count == 1, "no event monitor unless asked for")
    }

    @Test("an event socket is a second QMP monitor beside the driver's")
    func eventMonitor() throws {
        let definition = try DomainDefinition(xmlString: "<domain type='qemu'><name>vm</name><memory unit='MiB'>16</memory><os><type machine='pc-i440fx-7.2'>hvm</type></os></domain>")
        let arguments = try QEMUCommandLine.arguments(for: definition, options: .init(
            cpu: nil, machine: "pc-i440fx-7.2", accelerator: .tcg, qmpSocket: "/run/vm.qmp", eventSocket: "/run/a,b.events"
        ))
        let monitors = arguments.indices.filter { arguments[$0] == "-qmp" }.map { arguments[$0 + 1] }
        #expect(monitors == ["unix:/run/vm.qmp,server=on,wait=off", "unix:/run/a,,b.events,server=on,wait=off"])
    }
}
