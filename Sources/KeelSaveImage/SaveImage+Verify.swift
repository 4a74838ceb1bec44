/// The result of ``SaveImage/verify(path:)``.
public struct SaveImageVerifyReport: Sendable, Equatable {
    /// Header, XML, cookie and sizes.
    public var info: SaveImageInfo
    /// The QEMU stream format version after the `QEVM` magic (3 for every QEMU since 0.13).
    public var streamVersion: UInt32
    /// The length of the QEMU stream after decompression (equal to the stored length when raw).
    public var streamBytes: UInt64
}

extension SaveImage {
    /// QEMU's migration stream magic, `QEVM` (`QEMU_VM_FILE_MAGIC`).
    public static let qemuStreamMagic: UInt32 = 0x5145_564d
    /// The QEMU stream version Keel accepts (`QEMU_VM_FILE_VERSION`).
    public static let qemuStreamVersion: UInt32 = 3

    /// Checks an image end to end: structure, then one full read of the QEMU stream (through
    /// the decompressor when compressed), which must start with `QEVM` and version 3.
    ///
    /// Reads with large buffers and a sequential-access hint, so it runs at close to the speed of
    /// the disk.
    /// - Parameters:
    ///   - path: The image.
    /// - Returns: What was found.
    /// - Throws: ``SaveImageError``: everything ``SaveImageReader`` throws, `.badStream` for a
    ///   missing or wrong QEMU magic or version, `.processExited` when the decompressor fails.
    public static func verify(path: String) throws -> SaveImageVerifyReport {
        let reader = try SaveImageReader(path: path, options: .strict)
        let stream = try reader.openStream()
        var prefix = [UInt8]()
        let total = try stream.forEachChunk { chunk in
            if prefix.count < 8 {
                prefix.append(contentsOf: chunk.prefix(8 - prefix.count))
            }
        }
        try stream.finish()
        guard prefix.count == 8 else {
            throw SaveImageError(.badStream, "QEMU stream is too short: \(prefix.count) bytes")
        }
        let magic = SaveImageHeader.word(prefix, at: 0, .bigEndian)
        guard magic == qemuStreamMagic else {
            throw SaveImageError(
                .badStream,
                "QEMU stream magic is incorrect: \(SaveImageHeader.describeMagic(Array(prefix[0..<4])))"
            )
        }
        let version = SaveImageHeader.word(prefix, at: 4, .bigEndian)
        guard version == qemuStreamVersion else {
            throw SaveImageError(
                .badStream,
                "QEMU stream version is not supported: \(version) (expected \(qemuStreamVersion))"
            )
        }
        return SaveImageVerifyReport(info: reader.info, streamVersion: version, streamBytes: total)
    }
}
