import Glibc

/// Small file helpers with the durability the driver's state needs.
public enum POSIXFile {
    /// Reads a whole file (up to `limit` bytes) or returns nil when it does not exist.
    static func read(_ path: String, limit: Int = 64 << 20) throws -> [UInt8]? {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        if fd < 0 {
            if errno == ENOENT { return nil }
            throw QEMUError(.io, "cannot open \(path): \(errnoText())")
        }
        defer { close(fd) }
        return try readAll(fd, path: path, limit: limit)
    }

    /// Reads an open file to its end (up to `limit` bytes).
    static func readAll(_ fd: Int32, path: String, limit: Int = 64 << 20) throws -> [UInt8] {
        var bytes: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 65536)
        while true {
            let count = Glibc.read(fd, &buffer, buffer.count)
            if count < 0 {
                if errno == EINTR { continue }
                throw QEMUError(.io, "cannot read \(path): \(errnoText())")
            }
            if count == 0 { break }
            bytes.append(contentsOf: buffer[0..<count])
            if bytes.count > limit { throw QEMUError(.io, "\(path) is larger than \(limit) bytes") }
        }
        return bytes
    }

    static func readString(_ path: String) throws -> String? {
        try read(path).map { String(decoding: $0, as: UTF8.self) }
    }

    /// Replaces `path` atomically and durably: temp file, fsync, rename, directory fsync.
    /// Without `durable`, atomically only (no fsync): a reader after a crash of the writing
    /// process sees the old or the new file whole; a power loss may keep the old one.
    public static func writeAtomically(_ path: String, _ text: String, mode: mode_t = 0o600, durable: Bool = true) throws {
        let temporary = path + ".tmp.\(getpid())"
        let fd = open(temporary, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode)
        guard fd >= 0 else { throw QEMUError(.io, "cannot create \(temporary): \(errnoText())") }
        var ok = false
        defer {
            if !ok { unlink(temporary) }
        }
        do {
            try writeAll(fd, Array(text.utf8), path: temporary)
            guard !durable || fsync(fd) == 0 else { throw QEMUError(.io, "cannot sync \(temporary): \(errnoText())") }
        } catch {
            close(fd)
            throw error
        }
        close(fd)
        guard rename(temporary, path) == 0 else { throw QEMUError(.io, "cannot rename \(temporary) to \(path): \(errnoText())") }
        ok = true
        if durable {
            syncDirectory(of: path)
        }
    }

    static func writeAll(_ fd: Int32, _ bytes: [UInt8], path: String) throws {
        var offset = 0
        while offset < bytes.count {
            let written = bytes[offset...].withUnsafeBytes { Glibc.write(fd, $0.baseAddress, $0.count) }
            if written < 0 {
                if errno == EINTR { continue }
                throw QEMUError(.io, "cannot write \(path): \(errnoText())")
            }
            offset += written
        }
    }

    static func syncDirectory(of path: String) {
        let directory = path.split(separator: "/", omittingEmptySubsequences: false).dropLast().joined(separator: "/")
        let fd = open(directory.isEmpty ? "." : directory, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        if fd >= 0 {
            fsync(fd)
            close(fd)
        }
    }

    static func makeDirectory(_ path: String, mode: mode_t = 0o700) throws {
        var current = path.hasPrefix("/") ? "" : "."
        for component in path.split(separator: "/") {
            current += "/" + component
            if mkdir(current, mode) != 0 && errno != EEXIST {
                throw QEMUError(.io, "cannot create directory \(current): \(errnoText())")
            }
        }
    }

    static func exists(_ path: String) -> Bool {
        access(path, F_OK) == 0
    }

    static func remove(_ path: String) {
        unlink(path)
    }

    static func list(_ directory: String) -> [String] {
        guard let dir = opendir(directory) else { return [] }
        defer { closedir(dir) }
        var names: [String] = []
        while let entry = readdir(dir) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { raw in
                String(decoding: raw.prefix { $0 != 0 }, as: UTF8.self)
            }
            if name != "." && name != ".." { names.append(name) }
        }
        return names.sorted()
    }
}

func errnoText(_ code: Int32 = errno) -> String {
    String(cString: strerror(code))
}
