import Glibc
import KeelCPU
import KeelXML

/// Reading CPU definitions from the files users hand to the CPU commands.
enum CPUInput {
    /// virsh's cap on XML files it reads (VSH_MAX_XML_FILE).
    static let maximumFileSize = 10 << 20

    /// Reads a whole file, refusing directories, unreadable files and files over `limit` bytes.
    static func readFile(_ path: String, limit: Int = maximumFileSize) throws -> [UInt8] {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else {
            throw CommandFailure(message: "cannot read \(path): \(String(cString: strerror(errno)))")
        }
        defer { close(fd) }
        var info = stat()
        guard fstat(fd, &info) == 0 else {
            throw CommandFailure(message: "cannot read \(path): \(String(cString: strerror(errno)))")
        }
        if (info.st_mode & S_IFMT) == S_IFDIR {
            throw CommandFailure(message: "cannot read \(path): it is a directory")
        }
        if info.st_size > limit {
            throw CommandFailure(message: "file \(path) is too large: \(info.st_size) bytes, the limit is \(limit)")
        }
        var bytes: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 65536)
        while true {
            let count = read(fd, &buffer, buffer.count)
            if count < 0 {
                if errno == EINTR { continue }
                throw CommandFailure(message: "cannot read \(path): \(String(cString: strerror(errno)))")
            }
            if count == 0 { break }
            bytes.append(contentsOf: buffer[0..<count])
            if bytes.count > limit {
                throw CommandFailure(message: "file \(path) is too large: the limit is \(limit) bytes")
            }
        }
        return bytes
    }

    /// The `<cpu>` elements of a file, found as virsh finds them: bare `<cpu>` elements (one or
    /// several), a domain's `<cpu>`, a capabilities host `<cpu>`, or a domain-capabilities
    /// host-model `<mode>` (read as a `<cpu>`).
    static func cpuElements(inFile path: String) throws -> [XMLElement] {
        var bytes = try readFile(path)
        // Strip an XML declaration, then wrap so that several top-level <cpu> elements parse.
        if bytes.starts(with: Array("<?xml".utf8)), let end = find(Array("?>".utf8), in: bytes) {
            bytes.removeSubrange(0..<(end + 2))
        }
        if bytes.contains(0) {
            throw CommandFailure(message: "\(path) is not an XML file: it contains binary data")
        }
        // Wrapping would hide a DOCTYPE from the parser's own check; refuse it here by name.
        if find(Array("<!DOCTYPE".utf8), in: bytes) != nil || find(Array("<!ENTITY".utf8), in: bytes) != nil {
            throw CommandFailure(message: "\(path): XML document type declarations (DOCTYPE, ENTITY) are not allowed")
        }
        let wrapped = Array("<container>".utf8) + bytes + Array("</container>".utf8)
        let container: XMLElement
        do {
            container = try XMLParser.parse(wrapped, maximumSize: maximumFileSize + 64)
        } catch let error as XMLError {
            throw CommandFailure(message: "\(path): \(error.description)")
        }
        var cpus: [XMLElement] = []
        for element in container.elements {
            switch element.name {
            case "cpu":
                cpus.append(element)
            case "domain":
                cpus.append(contentsOf: element.children(named: "cpu"))
            case "capabilities":
                for host in element.children(named: "host") {
                    cpus.append(contentsOf: host.children(named: "cpu"))
                }
            case "domainCapabilities":
                for cpu in element.children(named: "cpu") {
                    for mode in cpu.children(named: "mode")
                    where mode.attribute("name") == "host-model" && mode.attribute("supported") == "yes" {
                        var renamed = mode
                        renamed.name = "cpu"
                        renamed.attributes = []
                        cpus.append(renamed)
                    }
                }
            default:
                break
            }
        }
        if cpus.isEmpty {
            throw CommandFailure(message: "File '\(path)' does not contain any <cpu> element or valid domain XML, host capabilities XML, or domain capabilities XML")
        }
        return cpus
    }

    /// Parses CPU definitions, turning libvirt-style errors into one-line failures.
    static func definitions(_ elements: [XMLElement], as kind: CPUDefinition.ParseKind, file: String) throws -> [CPUDefinition] {
        do {
            return try elements.map { try CPUDefinition(xml: $0, as: kind) }
        } catch let error as CPUError {
            throw CommandFailure(message: "\(file): \(error.message)")
        }
    }

    /// The CPU map selected by `--cpu-map`, `KEEL_CPU_MAP` or the built-in default.
    static func map(_ directory: String?) throws -> CPUMap {
        do {
            return try CPUMap.resolve(directory: directory)
        } catch let error as CPUError {
            throw CommandFailure(message: error.message)
        }
    }

    private static func find(_ needle: [UInt8], in haystack: [UInt8]) -> Int? {
        guard haystack.count >= needle.count else { return nil }
        for start in 0...(haystack.count - needle.count) where haystack[start] == needle[0] {
            if Array(haystack[start..<(start + needle.count)]) == needle { return start }
        }
        return nil
    }
}
