import ArgumentParser

/// `keel save-image dumpxml FILE`: the domain XML stored in an image (`virsh save-image-dumpxml`).
struct SaveImageDumpXMLCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "dumpxml",
        abstract: "Print the domain XML stored in a save image.",
        discussion: """
            As virsh save-image-dumpxml: the XML holds the original CPU; the updated CPU is in \
            the cookie (see `keel save-image info`). Without --security-info the passwd \
            attributes of <graphics> are left out, as libvirt does; Keel itself does not yet \
            configure graphics, so for its own images the XML is printed as stored. Any \
            compression value is accepted; an incomplete image is an error.
            """
    )

    @Argument(help: "The save image.")
    var file: String

    @Flag(name: .customLong("security-info"), help: "Include security-sensitive information (graphics passwords).")
    var securityInfo = false

    func validate() throws {
        if file.isEmpty { throw ValidationError("FILE must not be empty") }
    }

    func run() throws {
        Output.print(try SaveImageInspector.domainXML(path: file, secure: securityInfo))
    }
}
