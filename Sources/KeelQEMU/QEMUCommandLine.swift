import KeelCPU
import KeelDomain
import KeelXML

/// Builds QEMU's arguments for a domain. Everything that shapes the guest's ABI comes from the
/// definition alone, so that a restore or incoming migration builds the same machine as the
/// start that produced the state.
public enum QEMUCommandLine {
    public struct Options: Sendable {
        /// The `-cpu` argument, or nil for QEMU's default CPU.
        public var cpu: String?
        /// The versioned machine type.
        public var machine: String
        public var accelerator: QEMUCapabilities.Accelerator
        public var qmpSocket: String
        /// A second QMP monitor that only ever carries QEMU's events to a watcher (keeld),
        /// so that following a guest never occupies the monitor the driver's commands use.
        public var eventSocket: String?
        /// Start with `-incoming defer` to receive state.
        public var incoming: Bool

        public init(cpu: String?, machine: String, accelerator: QEMUCapabilities.Accelerator, qmpSocket: String,
                    eventSocket: String? = nil, incoming: Bool = false) {
            self.cpu = cpu
            self.machine = machine
            self.accelerator = accelerator
            self.qmpSocket = qmpSocket
            self.eventSocket = eventSocket
            self.incoming = incoming
        }
    }

    /// The arguments (without the binary) for `definition`.
    ///
    /// - Throws: `QEMUError` `.unsupported` for a device Keel does not drive.
    public static func arguments(for definition: DomainDefinition, options: Options) throws -> [String] {
        var arguments = [
            "-name", "guest=\(definition.name)",
            "-S", "-nodefaults", "-no-user-config", "-display", "none",
            "-machine", "\(options.machine),accel=\(options.accelerator.rawValue)\(hasACPI(definition) ? "" : ",acpi=off")",
        ]
        if let cpu = options.cpu {
            arguments += ["-cpu", cpu]
        }
        arguments += ["-m", "size=\(definition.memoryKiB)k"]
        var smp = "\(definition.vcpus)"
        if let topology = definition.cpu?.topology {
            smp += ",sockets=\(topology.sockets),dies=\(topology.dies),cores=\(topology.cores),threads=\(topology.threads)"
        }
        arguments += ["-smp", smp]
        if let uuid = definition.uuid {
            arguments += ["-uuid", uuid]
        }
        if let kernel = definition.os.kernel {
            arguments += ["-kernel", kernel]
            if let initrd = definition.os.initrd { arguments += ["-initrd", initrd] }
            if let cmdline = definition.os.cmdline { arguments += ["-append", cmdline] }
        }
        arguments += ["-qmp", "unix:\(escape(options.qmpSocket)),server=on,wait=off"]
        if let eventSocket = options.eventSocket {
            arguments += ["-qmp", "unix:\(escape(eventSocket)),server=on,wait=off"]
        }
        let devices = definition.tree.child("devices")
        for (index, serial) in (devices?.children(named: "serial") ?? []).enumerated() {
            let id = "charserial\(index)"
            switch serial.attribute("type") ?? "pty" {
            case "file":
                guard let path = serial.child("source")?.attribute("path") else {
                    throw QEMUError(.invalidArgument, "serial port \(index) of type file has no <source path>")
                }
                arguments += ["-chardev", "file,id=\(id),path=\(escape(path)),append=on"]
            case "pty":
                arguments += ["-chardev", "pty,id=\(id)"]
            case "null":
                arguments += ["-chardev", "null,id=\(id)"]
            case let other:
                throw QEMUError(.unsupported, "serial port type '\(other)' is not supported")
            }
            arguments += ["-device", "isa-serial,chardev=\(id),id=serial\(index)"]
        }
        for (index, disk) in definition.disks.enumerated() {
            guard let source = disk.source else {
                throw QEMUError(.invalidArgument, "disk \(disk.target) has no source")
            }
            let format = disk.format ?? "raw"
            guard format == "raw" || format == "qcow2" else {
                throw QEMUError(.unsupported, "disk format '\(format)' is not supported (raw, qcow2)")
            }
            let bus = disk.bus ?? "virtio"
            let id = "drive-\(disk.target)"
            var drive = "file=\(escape(source)),format=\(format),if=none,id=\(id)"
            if disk.readonly { drive += ",readonly=on" }
            arguments += ["-drive", drive]
            switch bus {
            case "virtio":
                let element = definition.tree.child("devices")?.children(named: "disk").first { $0.child("target")?.attribute("dev") == disk.target }
                arguments += ["-device", "virtio-blk-pci,drive=\(id),id=virtio-disk\(index)" + (try pciAddress(element))]
            case "ide", "sata":
                arguments += ["-device", "ide-hd,drive=\(id),id=ide-disk\(index)"]
            default:
                throw QEMUError(.unsupported, "disk bus '\(bus)' is not supported (virtio, ide)")
            }
        }
        arguments += try implicitDevices(definition)
        if options.incoming {
            arguments += ["-incoming", "defer"]
        }
        return arguments
    }

    /// `<features><acpi/>` turns ACPI on, as in libvirt; without it the machine has none.
    static func hasACPI(_ definition: DomainDefinition) -> Bool {
        definition.tree.child("features")?.child("acpi") != nil
    }

    /// The USB controller and memory balloon libvirt gives a PC machine, built from the domain's
    /// explicit elements (libvirt writes them, with their PCI addresses, into every saved or
    /// migrated XML). Keel's own definitions say `model='none'` for both (see
    /// `Driver.define`), so nothing implicit ever differs between Keel and libvirt.
    static func implicitDevices(_ definition: DomainDefinition) throws -> [String] {
        var arguments: [String] = []
        let devices = definition.tree.child("devices")
        for controller in devices?.children(named: "controller") ?? [] where controller.attribute("type") == "usb" {
            switch controller.attribute("model") {
            case "none":
                continue
            case nil, "piix3-uhci":
                arguments += ["-device", "piix3-usb-uhci,id=usb" + (try pciAddress(controller, default: "0x1.0x2"))]
            case let model?:
                throw QEMUError(.unsupported, "USB controller model '\(model)' is not supported (piix3-uhci, none)")
            }
        }
        if let balloon = devices?.child("memballoon") {
            switch balloon.attribute("model") {
            case "none":
                break
            case "virtio":
                guard balloon.child("address") != nil else {
                    throw QEMUError(.unsupported, "a virtio memballoon needs its PCI <address> (or use model='none')")
                }
                arguments += ["-device", "virtio-balloon-pci,id=balloon0" + (try pciAddress(balloon))]
            case let model:
                throw QEMUError(.unsupported, "memballoon model '\(model ?? "")' is not supported (virtio, none)")
            }
        }
        return arguments
    }

    /// `,bus=pci.0,addr=SLOT[.FUNCTION]` from an element's `<address type='pci'>`, or the default.
    static func pciAddress(_ element: XMLElement?, default fallback: String? = nil) throws -> String {
        guard let address = element?.child("address"), address.attribute("type") == "pci" else {
            return fallback.map { ",bus=pci.0,addr=\($0)" } ?? ""
        }
        guard address.attribute("bus").map({ parseMapHex($0) == 0 }) ?? true,
              let slot = address.attribute("slot").flatMap(parseMapHex) else {
            throw QEMUError(.unsupported, "PCI address \(address.formatted().trimmingCharacters()) is not supported (bus 0 only)")
        }
        let function = address.attribute("function").flatMap(parseMapHex) ?? 0
        return ",bus=pci.0,addr=0x\(String(slot, radix: 16))" + (function == 0 ? "" : ".0x\(String(function, radix: 16))")
    }

    static func parseMapHex(_ text: String) -> UInt32? {
        text.hasPrefix("0x") ? UInt32(text.dropFirst(2), radix: 16) : UInt32(text)
    }

    /// QEMU's option syntax doubles commas inside values.
    static func escape(_ value: String) -> String {
        value.split(separator: ",", omittingEmptySubsequences: false).joined(separator: ",,")
    }
}
