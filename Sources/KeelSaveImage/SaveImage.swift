#if canImport(Glibc)
import Glibc
#endif

/// Entry points for libvirt-compatible QEMU save images.
///
/// An image is a 92-byte ``SaveImageHeader``, a data area (``SaveImageDataArea``: domain XML,
/// optional save cookie, zero padding) and the QEMU migration stream, optionally compressed
/// (``SaveImageCompression``). ``SaveImageWriter`` and ``SaveImageReader`` stream the parts;
/// the functions here are the one-shot operations built on them.
public enum SaveImage {}

/// How strict a reader is about images libvirt itself would still open.
public struct SaveImageReadOptions: Sendable, Hashable {
    /// Accept a compression value Keel does not know. libvirt's `save-image-dumpxml` does (it only
    /// looks at the compression when restoring); restore and verify must not.
    public var allowsUnknownCompression: Bool
    /// Accept the `LibvirtQemudPart` magic, for inspecting an image whose writer died.
    public var allowsIncomplete: Bool

    /// Creates read options.
    /// - Parameters:
    ///   - allowsUnknownCompression: Accept an unknown compression value.
    ///   - allowsIncomplete: Accept an incomplete image.
    public init(allowsUnknownCompression: Bool = false, allowsIncomplete: Bool = false) {
        self.allowsUnknownCompression = allowsUnknownCompression
        self.allowsIncomplete = allowsIncomplete
    }

    /// For restore and verify: complete images with a known compression only.
    public static let strict = SaveImageReadOptions()
    /// As libvirt's `save-image-dumpxml` / `save-image-define`: any compression value.
    public static let metadata = SaveImageReadOptions(allowsUnknownCompression: true)
}

/// What a reader learned from an image's header and data area.
public struct SaveImageInfo: Sendable, Equatable {
    /// The decoded header.
    public var header: SaveImageHeader
    /// The domain XML and cookie.
    public var dataArea: SaveImageDataArea
    /// The size of the file in bytes.
    public var fileSize: UInt64

    /// Creates an info value.
    /// - Parameters:
    ///   - header: The header.
    ///   - dataArea: The data area.
    ///   - fileSize: The file's size.
    public init(header: SaveImageHeader, dataArea: SaveImageDataArea, fileSize: UInt64) {
        self.header = header
        self.dataArea = dataArea
        self.fileSize = fileSize
    }

    /// Whether the writer completed the image (`LibvirtQemudSave` magic).
    public var isComplete: Bool { header.isComplete }
    /// The file offset of the QEMU stream.
    public var streamOffset: UInt64 { header.streamOffset }
    /// The stored (possibly compressed) length of the QEMU stream.
    public var streamLength: UInt64 { fileSize - min(fileSize, streamOffset) }
}

extension SaveImageInfo {
    /// Parses header and data area from the start of an image held in memory.
    ///
    /// The same checks as ``SaveImageReader`` apply; this is the entry point the fuzzer uses.
    /// - Parameters:
    ///   - bytes: The image's first bytes; at least header and data area.
    ///   - fileSize: The size of the whole file (`nil`: `bytes.count`).
    ///   - options: Strictness.
    /// - Throws: ``SaveImageError`` for each structural violation.
    public init(parsing bytes: [UInt8], fileSize: UInt64? = nil, options: SaveImageReadOptions = .strict) throws {
        let size = fileSize ?? UInt64(bytes.count)
        let header = try SaveImageHeader(decoding: bytes, allowIncomplete: options.allowsIncomplete)
        try header.validate(fileSize: size, options: options)
        let end = Int(header.streamOffset)
        guard end <= bytes.count else {
            throw SaveImageError(
                .corrupt,
                "failed to read data area: \(bytes.count - SaveImageHeader.size) of \(header.dataLength) bytes"
            )
        }
        let area = try SaveImageDataArea(decoding: Array(bytes[SaveImageHeader.size..<end]), header: header)
        self.init(header: header, dataArea: area, fileSize: size)
    }
}

extension SaveImage {
    /// Reads and checks an image's header and data area.
    /// - Parameters:
    ///   - path: The image file.
    ///   - options: Strictness; ``SaveImageReadOptions/strict`` by default.
    /// - Returns: The header, XML, cookie and sizes.
    /// - Throws: ``SaveImageError``.
    public static func read(path: String, options: SaveImageReadOptions = .strict) throws -> SaveImageInfo {
        let reader = try SaveImageReader(path: path, options: options)
        return reader.info
    }

    /// Replaces the domain XML in place, keeping the cookie, `dataLength` and the stream, as
    /// libvirt's `save-image-define` does. Nothing is written when the XML and `wasRunning` are
    /// unchanged.
    ///
    /// The new XML and the existing cookie must fit in the existing data area (the 64 KiB slack).
    /// The header is marked incomplete while the data area is rewritten and complete again after
    /// an `fsync`, so an interrupted rewrite leaves an image that reads as incomplete rather than
    /// one with a torn XML. No ABI check is made here; that is the caller's business.
    /// - Parameters:
    ///   - path: A complete image.
    ///   - xml: The new domain XML.
    ///   - wasRunning: A new `was_running` value, or `nil` to keep it.
    /// - Returns: Whether the file was changed.
    /// - Throws: ``SaveImageError``; `.tooLarge` ("new xml too large to fit in file") leaves the
    ///   file untouched.
    @discardableResult
    public static func rewriteDataArea(path: String, xml: String, wasRunning: Bool? = nil) throws -> Bool {
        let fd = try POSIX.open(path, flags: O_RDWR, what: "save image")
        defer { POSIX.close(fd) }
        let info = try readInfo(fd: fd, path: path, options: .metadata)
        if info.dataArea.xml == xml && (wasRunning == nil || wasRunning == info.header.wasRunning) {
            return false
        }
        var header = info.header
        if let wasRunning {
            header.wasRunning = wasRunning
        }
        let area = SaveImageDataArea(xml: xml, cookie: info.dataArea.cookie)
        let encoded = try area.encoded(dataLength: header.dataLength)
        header.cookieOffset = encoded.cookieOffset

        header.isComplete = false
        try writeHeader(header, fd: fd, path: path)
        try POSIX.fsync(fd, what: "save image '\(path)'")
        try encoded.bytes.withUnsafeBytes {
            try POSIX.pwriteAll(fd, $0, at: UInt64(SaveImageHeader.size), what: "data area to '\(path)'")
        }
        try POSIX.fsync(fd, what: "save image '\(path)'")
        header.isComplete = true
        try writeHeader(header, fd: fd, path: path)
        try POSIX.fsync(fd, what: "save image '\(path)'")
        return true
    }

    /// Writes the 92-byte header at offset 0.
    static func writeHeader(_ header: SaveImageHeader, fd: Int32, path: String) throws {
        try header.encoded().withUnsafeBytes {
            try POSIX.pwriteAll(fd, $0, at: 0, what: "header to save image '\(path)'")
        }
    }

    /// Reads header and data area through `fd` with positional reads, checking every length
    /// before allocating.
    static func readInfo(fd: Int32, path: String, options: SaveImageReadOptions) throws -> SaveImageInfo {
        let fileSize = try POSIX.fileSize(fd, path: path)
        var headerBytes = [UInt8](repeating: 0, count: SaveImageHeader.size)
        let got = try headerBytes.withUnsafeMutableBytes {
            try POSIX.preadFull(fd, into: $0, at: 0, what: "save image header of '\(path)'")
        }
        let header = try SaveImageHeader(decoding: headerBytes[0..<got], allowIncomplete: options.allowsIncomplete)
        try header.validate(fileSize: fileSize, options: options)
        // Bounded by validate(): at most SaveImageDataArea.maximumLength and within the file.
        var area = [UInt8](repeating: 0, count: Int(header.dataLength))
        let areaRead = try area.withUnsafeMutableBytes {
            try POSIX.preadFull(fd, into: $0, at: UInt64(SaveImageHeader.size), what: "data area of '\(path)'")
        }
        guard areaRead == area.count else {
            throw SaveImageError(
                .corrupt,
                "failed to read data area: \(areaRead) of \(header.dataLength) bytes"
            )
        }
        let dataArea = try SaveImageDataArea(decoding: area, header: header)
        return SaveImageInfo(header: header, dataArea: dataArea, fileSize: fileSize)
    }
}
