import ArgumentParser

/// `keel save-image`: inspect, check and edit libvirt-compatible QEMU save images.
struct SaveImageCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "save-image",
        abstract: "Inspect, verify and edit QEMU save images (libvirt's format).",
        discussion: """
            The images are those of `virsh save`, `virsh managedsave` and `keel save`: a header, \
            the domain XML with the original CPU, a cookie with the updated CPU (and Keel's ABI \
            record), and the QEMU migration stream. See docs/formats/save-image.md.
            """,
        subcommands: [
            SaveImageInfoCommand.self, SaveImageDumpXMLCommand.self, SaveImageDefineCommand.self,
            SaveImageEditCommand.self, SaveImageVerifyCommand.self,
        ]
    )
}
