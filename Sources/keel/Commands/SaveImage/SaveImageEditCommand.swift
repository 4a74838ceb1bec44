import ArgumentParser

/// `keel save-image edit FILE`: edits the stored domain XML in `$VISUAL` / `$EDITOR`
/// (`virsh save-image-edit`).
struct SaveImageEditCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "edit",
        abstract: "Edit the domain XML stored in a save image.",
        discussion: """
            Writes the XML to a temporary file, runs $VISUAL or $EDITOR (default vi) on it \
            through /bin/sh -c, then defines the result as `keel save-image define` does. As \
            with virsh, an unchanged XML is not defined, so --running/--paused are then not \
            applied.
            """
    )

    @Argument(help: "The save image.")
    var file: String

    @Flag(help: "Restore resumes the guest.")
    var running = false

    @Flag(help: "Restore leaves the guest paused.")
    var paused = false

    func validate() throws {
        if running && paused { throw ValidationError("--running and --paused are mutually exclusive") }
        if file.isEmpty { throw ValidationError("FILE must not be empty") }
    }

    func run() throws {
        let wasRunning: Bool? = running ? true : (paused ? false : nil)
        switch try SaveImageInspector.edit(path: file, wasRunning: wasRunning, editor: SaveImageInspector.editorCommand()) {
        case .unchanged:
            Output.print("Saved image \(file) XML configuration not changed.\n")
        case .updated:
            Output.print("State file \(file) edited.\n")
        }
    }
}
