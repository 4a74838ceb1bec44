import Glibc
import KeelCPU
import KeelDomain
import KeelSaveImage
import KeelXML

/// The logic behind `keel save-image`: it combines the image format (`KeelSaveImage`) with the
/// domain and CPU models (`KeelDomain`, `KeelCPU`), which the format library must not know.
/// Every failure is a one-line `CommandFailure`.
enum SaveImageInspector {
    /// Reads header and data area (never the stream) and interprets the XML and the cookie.
    ///
    /// An incomplete image and an unknown compression are shown, not refused. A domain XML or
    /// cookie that does not parse, or CPUs the map does not know, become warnings.
    /// - Parameters:
    ///   - path: The image.
    ///   - cpuMap: A cpu_map directory, or `nil` for `$KEEL_CPU_MAP` / the built-in map.
    /// - Throws: `CommandFailure` when the image's structure is unreadable or the map cannot load.
    static func inspect(path: String, cpuMap: String?) throws -> SaveImageInspection {
        let image = try read(path, options: SaveImageReadOptions(allowsUnknownCompression: true, allowsIncomplete: true))
        var warnings: [String] = []
        var domain: DomainDefinition?
        do {
            domain = try DomainDefinition(xmlString: image.dataArea.xml)
        } catch let error as DomainError {
            warnings.append("the domain XML cannot be interpreted: \(error.message)")
        }
        var cookie: SaveCookie?
        if let text = image.dataArea.cookie {
            do {
                cookie = try SaveCookie(xmlString: text)
            } catch let error as DomainError {
                warnings.append("the save cookie cannot be interpreted: \(error.message)")
            }
        }
        var difference: CPUDifference?
        // An explicit map is loaded even when there is nothing to compare, so a bad one is noticed.
        let needsMap = domain?.cpu != nil && cookie?.cpu != nil
        if needsMap || cpuMap != nil {
            let map = try CPUInput.map(cpuMap)
            if let original = domain?.cpu, let updated = cookie?.cpu {
                do {
                    difference = try CPUDifference(original: original, updated: updated, map: map)
                } catch let error as CPUError {
                    warnings.append("the CPU difference cannot be computed: \(error.message)")
                }
            }
        }
        return SaveImageInspection(
            path: path, image: image, domain: domain, cookie: cookie, difference: difference, warnings: warnings
        )
    }

    /// The stored domain XML, as `virsh save-image-dumpxml` prints it.
    ///
    /// Without `secure`, `passwd` attributes of `<graphics>` are left out (libvirt formats
    /// without VIR_DOMAIN_XML_SECURE that way); an XML without them is returned byte for byte.
    /// - Throws: `CommandFailure` for an incomplete or unreadable image or an XML that is not XML.
    static func domainXML(path: String, secure: Bool) throws -> String {
        let image = try read(path, options: .metadata)
        let xml = image.dataArea.xml
        if secure {
            return xml
        }
        let root: XMLElement
        do {
            root = try XMLParser.parse(xml)
        } catch let error as XMLError {
            throw CommandFailure(message: "\(path): the stored domain XML is not valid: \(error.description)")
        }
        guard let filtered = withoutGraphicsPasswords(root) else {
            return xml
        }
        return filtered.formatted()
    }

    /// `root` with the `passwd` attribute removed from each `<devices><graphics>`, or `nil` when
    /// there is none to remove.
    static func withoutGraphicsPasswords(_ root: XMLElement) -> XMLElement? {
        var root = root
        var changed = false
        for index in root.children.indices {
            guard case .element(var devices) = root.children[index], devices.name == "devices" else { continue }
            for deviceIndex in devices.children.indices {
                guard case .element(var graphics) = devices.children[deviceIndex], graphics.name == "graphics",
                      graphics.attribute("passwd") != nil
                else { continue }
                graphics.setAttribute("passwd", nil)
                devices.children[deviceIndex] = .element(graphics)
                changed = true
            }
            root.children[index] = .element(devices)
        }
        return changed ? root : nil
    }

    /// What a define did.
    enum DefineOutcome {
        /// Same XML and running state: nothing was written.
        case unchanged
        /// The XML and/or `was_running` were rewritten.
        case updated
    }

    /// Replaces an image's domain XML with libvirt's `save-image-define` algorithm.
    ///
    /// 1. A byte-identical XML with no flag, or a flag equal to `was_running`, changes nothing.
    /// 2. Otherwise the new XML must present the stored XML's guest ABI
    ///    (`DomainDefinition.checkABIStability`), reported with libvirt's message.
    /// 3. The accepted definition is stored in libvirt's layout, the cookie unchanged, within the
    ///    existing data area (`SaveImage.rewriteDataArea`).
    /// - Parameters:
    ///   - path: A complete image.
    ///   - xml: The new domain XML.
    ///   - wasRunning: A new `was_running`, or `nil` to keep it.
    /// - Throws: `CommandFailure`: "unsupported configuration: …" for an ABI change, "new xml too
    ///   large to fit in file" when it does not fit, and every read error.
    static func define(path: String, xml: String, wasRunning: Bool?) throws -> DefineOutcome {
        let image = try read(path, options: .metadata)
        if xml == image.dataArea.xml && (wasRunning == nil || wasRunning == image.header.wasRunning) {
            return .unchanged
        }
        let stored = try parseDomain(image.dataArea.xml, what: "the domain XML stored in \(path)")
        let new = try parseDomain(xml, what: "the new domain XML")
        do {
            try stored.checkABIStability(against: new)
        } catch let error as DomainError {
            // virsh shows VIR_ERR_CONFIG_UNSUPPORTED with this prefix.
            throw CommandFailure(message: "unsupported configuration: \(error.message)")
        }
        // libvirt stores the re-formatted definition; an identical text (only the running state
        // changes) is kept byte for byte.
        let text = xml == image.dataArea.xml ? xml : new.formatted()
        let changed: Bool
        do {
            changed = try SaveImage.rewriteDataArea(path: path, xml: text, wasRunning: wasRunning)
        } catch let error as SaveImageError {
            throw failure(error, path: path)
        }
        return changed ? .updated : .unchanged
    }

    /// Lets the user edit the stored XML, then defines the result, as `virsh save-image-edit`.
    /// - Parameters:
    ///   - path: A complete image.
    ///   - wasRunning: A new `was_running`, applied only when the XML changed (virsh's behaviour).
    ///   - editor: The editor command, run through `/bin/sh -c` with the file appended.
    /// - Returns: `.unchanged` when the editor left the XML as it was.
    /// - Throws: `CommandFailure` when the editor fails, or as ``define(path:xml:wasRunning:)``.
    static func edit(path: String, wasRunning: Bool?, editor: String) throws -> DefineOutcome {
        // virsh fetches the XML with VIR_DOMAIN_XML_SECURE: the user edits everything.
        let original = try domainXML(path: path, secure: true)
        let file = try TemporaryXMLFile(contents: original)
        defer { file.remove() }
        try runEditor(editor, on: file.path)
        let edited = try readXMLFile(file.path)
        if edited == original {
            return .unchanged
        }
        return try define(path: path, xml: edited, wasRunning: wasRunning)
    }

    /// `$VISUAL`, else `$EDITOR`, else `vi`, as virsh chooses.
    static func editorCommand() -> String {
        for name in ["VISUAL", "EDITOR"] {
            if let value = getenv(name).flatMap({ String(validatingCString: $0) }), !value.isEmpty {
                return value
            }
        }
        return "vi"
    }

    /// The result of `verify`, with how long the stream pass took.
    struct Verification {
        var path: String
        var report: SaveImageVerifyReport
        var seconds: Double

        var bytesPerSecond: Double { seconds > 0 ? Double(report.streamBytes) / seconds : 0 }

        var text: String {
            let compression = SaveImageInspection.compressionName(report.info.header)
            var sizes = "\(report.streamBytes) bytes (\(Self.binary(Double(report.streamBytes)))B)"
            if report.info.header.streamCompression != .raw {
                sizes += " decompressed from \(report.info.streamLength) bytes"
            }
            let tenthsOfMilliseconds = Int((seconds * 10_000).rounded())
            let time = "\(tenthsOfMilliseconds / 10).\(tenthsOfMilliseconds % 10) ms"
            return "\(path): OK: \(compression) QEMU stream version \(report.streamVersion), \(sizes), read in \(time) (\(Self.binary(bytesPerSecond))B/s)\n"
        }

        var json: JSON {
            .object([
                ("path", .string(path)),
                ("ok", .bool(true)),
                ("compression", .string(SaveImageInspection.compressionName(report.info.header))),
                ("streamVersion", .int(Int(report.streamVersion))),
                ("storedStreamBytes", .int(Int(report.info.streamLength))),
                ("streamBytes", .int(Int(report.streamBytes))),
                ("seconds", .double(seconds)),
                ("bytesPerSecond", .double(bytesPerSecond.rounded())),
            ])
        }

        /// `1.5 Gi`, `640.0 Ki`, `12 ` …
        static func binary(_ value: Double) -> String {
            let units = ["", "Ki", "Mi", "Gi", "Ti"]
            var value = value
            var unit = 0
            while value >= 1024 && unit < units.count - 1 {
                value /= 1024
                unit += 1
            }
            if unit == 0 { return String(Int(value)) + " " }
            let tenths = Int((value * 10).rounded())
            return "\(tenths / 10).\(tenths % 10) \(units[unit])"
        }
    }

    /// Checks an image end to end (`SaveImage.verify`) and times the stream pass.
    /// - Throws: `CommandFailure` naming the problem.
    static func verify(path: String) throws -> Verification {
        try refuseDirectory(path)
        let start = monotonicSeconds()
        do {
            let report = try SaveImage.verify(path: path)
            return Verification(path: path, report: report, seconds: monotonicSeconds() - start)
        } catch let error as SaveImageError {
            throw failure(error, path: path)
        }
    }

    /// Reads an XML file a user hands in (virsh's 10 MiB cap), which must be UTF-8.
    static func readXMLFile(_ path: String) throws -> String {
        let bytes = try CPUInput.readFile(path)
        guard let text = String(validating: bytes, as: UTF8.self) else {
            throw CommandFailure(message: "\(path) is not an XML file: it is not valid UTF-8")
        }
        return text
    }

    // MARK: - Helpers

    private static func read(_ path: String, options: SaveImageReadOptions) throws -> KeelSaveImage.SaveImageInfo {
        try refuseDirectory(path)
        do {
            return try SaveImage.read(path: path, options: options)
        } catch let error as SaveImageError {
            throw failure(error, path: path)
        }
    }

    /// A directory opens read-only and only fails at the first read; say what it is instead.
    private static func refuseDirectory(_ path: String) throws {
        var info = stat()
        if stat(path, &info) == 0 && (info.st_mode & S_IFMT) == S_IFDIR {
            throw CommandFailure(message: "cannot read save image \(path): it is a directory")
        }
    }

    /// The one-line failure for a format error, naming the file unless the message already does.
    static func failure(_ error: SaveImageError, path: String) -> CommandFailure {
        let text = error.description
        return CommandFailure(message: text.utf8.firstRange(of: path.utf8) != nil ? text : "\(path): \(text)")
    }

    private static func parseDomain(_ xml: String, what: String) throws -> DomainDefinition {
        do {
            return try DomainDefinition(xmlString: xml)
        } catch let error as DomainError {
            throw CommandFailure(message: "\(what) is not valid: \(error.message)")
        }
    }

    private static func runEditor(_ editor: String, on file: String) throws {
        let script = editor + " " + shellQuoted(file)
        var pid: pid_t = 0
        let arguments = ["/bin/sh", "-c", script]
        var argv: [UnsafeMutablePointer<CChar>?] = arguments.map { strdup($0) }
        argv.append(nil)
        defer { argv.forEach { free($0) } }
        // The editor inherits stdin, stdout and stderr: it talks to the user's terminal.
        let spawned = posix_spawn(&pid, "/bin/sh", nil, nil, argv, environ)
        guard spawned == 0 else {
            throw CommandFailure(message: "cannot run the editor '\(editor)': \(String(cString: strerror(spawned)))")
        }
        var status: Int32 = 0
        while waitpid(pid, &status, 0) < 0 {
            if errno != EINTR {
                throw CommandFailure(message: "cannot wait for the editor '\(editor)': \(String(cString: strerror(errno)))")
            }
        }
        let signal = status & 0x7f
        if signal != 0 {
            throw CommandFailure(message: "the editor '\(editor)' was killed by signal \(signal)")
        }
        let code = (status >> 8) & 0xff
        if code != 0 {
            throw CommandFailure(message: "the editor '\(editor)' exited with status \(code)")
        }
    }

    private static func shellQuoted(_ text: String) -> String {
        "'" + text.split(separator: "'", omittingEmptySubsequences: false).joined(separator: "'\\''") + "'"
    }

    private static func monotonicSeconds() -> Double {
        var now = timespec()
        clock_gettime(CLOCK_MONOTONIC, &now)
        return Double(now.tv_sec) + Double(now.tv_nsec) / 1e9
    }
}

/// A private (0600) temporary `.xml` file in `$TMPDIR` or `/tmp`.
struct TemporaryXMLFile {
    let path: String

    /// Creates the file and writes `contents`.
    /// - Throws: `CommandFailure` when the file cannot be created or written.
    init(contents: String) throws {
        let directory = getenv("TMPDIR").flatMap { String(validatingCString: $0) }.flatMap { $0.isEmpty ? nil : $0 } ?? "/tmp"
        var template = Array((directory + "/keel-save-image-XXXXXX.xml").utf8CString)
        let fd = template.withUnsafeMutableBufferPointer { buffer in
            buffer.baseAddress.map { mkstemps($0, 4) } ?? -1
        }
        guard fd >= 0 else {
            throw CommandFailure(message: "cannot create a temporary file in \(directory): \(String(cString: strerror(errno)))")
        }
        defer { close(fd) }
        path = template.withUnsafeBufferPointer { buffer in
            buffer.baseAddress.map { String(cString: $0) } ?? ""
        }
        var remaining = Array(contents.utf8)[...]
        while !remaining.isEmpty {
            let written = remaining.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
            if written < 0 {
                if errno == EINTR { continue }
                let message = String(cString: strerror(errno))
                unlink(path)
                throw CommandFailure(message: "cannot write the temporary file \(path): \(message)")
            }
            remaining = remaining.dropFirst(written)
        }
    }

    /// Deletes the file.
    func remove() {
        unlink(path)
    }
}
