import ArgumentParser

/// `keel save-image verify FILE`: checks an image end to end, decompressing the whole stream.
struct SaveImageVerifyCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "verify",
        abstract: "Check a save image's structure and read its whole QEMU stream.",
        discussion: """
            Checks the header and data area strictly (complete image, known compression), then \
            reads the whole stream (through the decompressor when compressed), which must start \
            with QEMU's QEVM magic and version 3 and, when compressed, decompress without error. \
            Exit status 0 when the image is sound, 1 with the problem named otherwise.
            """
    )

    @Argument(help: "The save image.")
    var file: String

    @Flag(help: "Print the result as JSON.")
    var json = false

    func validate() throws {
        if file.isEmpty { throw ValidationError("FILE must not be empty") }
    }

    func run() throws {
        let result = try SaveImageInspector.verify(path: file)
        Output.print(json ? result.json.text + "\n" : result.text)
    }
}
