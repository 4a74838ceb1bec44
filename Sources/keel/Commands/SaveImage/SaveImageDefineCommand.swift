import ArgumentParser

/// `keel save-image define FILE XMLFILE`: replaces the domain XML stored in an image
/// (`virsh save-image-define`).
struct SaveImageDefineCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "define",
        abstract: "Replace the domain XML stored in a save image.",
        discussion: """
            libvirt's save-image-define: the new XML must keep the guest ABI of the stored one \
            (same CPU as the domain XML's original CPU, vCPUs, memory, machine, devices); only \
            host-side details may change. The cookie (updated CPU, ABI record) and the QEMU \
            stream stay untouched; the XML must fit in the image's data area. --running or \
            --paused also changes whether restore resumes the guest.
            """
    )

    @Argument(help: "The save image.")
    var file: String

    @Argument(help: "The new domain XML.")
    var xmlFile: String

    @Flag(help: "Restore resumes the guest.")
    var running = false

    @Flag(help: "Restore leaves the guest paused.")
    var paused = false

    func validate() throws {
        if running && paused { throw ValidationError("--running and --paused are mutually exclusive") }
        if file.isEmpty || xmlFile.isEmpty { throw ValidationError("FILE and XMLFILE must not be empty") }
    }

    func run() throws {
        let xml = try SaveImageInspector.readXMLFile(xmlFile)
        let wasRunning: Bool? = running ? true : (paused ? false : nil)
        switch try SaveImageInspector.define(path: file, xml: xml, wasRunning: wasRunning) {
        case .unchanged:
            Output.print("State file \(file) not changed: the XML and the running state are the same.\n")
        case .updated:
            Output.print("State file \(file) updated.\n")
        }
    }
}
