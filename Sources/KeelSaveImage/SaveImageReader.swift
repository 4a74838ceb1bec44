#if canImport(Glibc)
import Glibc
#endif

/// Opens a save image, reads and checks its header and data area, and streams the QEMU data.
///
/// Memory use is bounded by the data area cap and the chunk size, never by the image size.
/// The reader owns its file descriptor; it is closed by ``close()`` or when the reader goes away.
public final class SaveImageReader {
    /// The image's path.
    public let path: String
    /// Header, XML, cookie and sizes.
    public let info: SaveImageInfo
    private var fd: Int32

    /// Opens `path` read-only and reads its header and data area.
    /// - Parameters:
    ///   - path: The image file.
    ///   - options: Strictness; ``SaveImageReadOptions/strict`` by default.
    /// - Throws: ``SaveImageError``: `.incomplete` for a partial image, `.corrupt`,
    ///   `.unsupported` or `.tooLarge` for a bad header or data area, `.io` when the file cannot
    ///   be read.
    public init(path: String, options: SaveImageReadOptions = .strict) throws {
        self.path = path
        let fd = try POSIX.open(path, flags: O_RDONLY, what: "save image")
        do {
            self.info = try SaveImage.readInfo(fd: fd, path: path, options: options)
        } catch {
            POSIX.close(fd)
            throw error
        }
        self.fd = fd
    }

    deinit {
        close()
    }

    /// The read-only descriptor of the image file (`-1` after ``close()``).
    public var fileDescriptor: Int32 { fd }

    /// Closes the image file.
    public func close() {
        if fd >= 0 {
            POSIX.close(fd)
            fd = -1
        }
    }

    /// Opens the QEMU stream for reading, starting the decompressor when the image is compressed.
    ///
    /// For a raw image the stream's descriptor is the image file positioned at ``SaveImageInfo/streamOffset``;
    /// for a compressed one it is the read end of a pipe from `<program> -dc`, whose stdin is the
    /// image file. Either can be handed to QEMU (`migrate-incoming fd:`). A raw stream borrows the
    /// reader's descriptor, so keep the reader open while the stream is in use.
    /// - Throws: ``SaveImageError`` `.unsupported` for an unknown compression, `.processExited`
    ///   when the decompressor cannot be started, `.io`.
    public func openStream() throws -> SaveImageStream {
        guard fd >= 0 else {
            throw SaveImageError(.invalidArgument, "save image '\(path)' is closed")
        }
        guard let compression = info.header.streamCompression else {
            throw SaveImageError(.unsupported, "image compression is not supported: \(info.header.compressionValue)")
        }
        try POSIX.seek(fd, to: info.streamOffset, what: "save image '\(path)'")
        POSIX.adviseSequential(fd, from: info.streamOffset)
        guard let program = compression.program else {
            return SaveImageStream(compression: .raw, fd: fd, ownsDescriptor: false, process: nil)
        }
        let pipe = try POSIX.pipe()
        let process: CompressionProcess
        do {
            process = try CompressionProcess(
                program: program, arguments: compression.decompressArguments, stdin: fd, stdout: pipe.write
            )
        } catch {
            POSIX.close(pipe.read)
            POSIX.close(pipe.write)
            throw error
        }
        POSIX.close(pipe.write)
        return SaveImageStream(compression: compression, fd: pipe.read, ownsDescriptor: true, process: process)
    }

    /// Reads the whole (decompressed) QEMU stream in chunks of `bufferSize` bytes.
    /// - Parameters:
    ///   - bufferSize: The chunk size; one buffer of this size is reused throughout.
    ///   - body: Called with each chunk; the buffer is valid only during the call.
    /// - Returns: The number of stream bytes read.
    /// - Throws: ``SaveImageError``, or what `body` throws.
    @discardableResult
    public func forEachChunk(
        bufferSize: Int = SaveImageStream.defaultBufferSize,
        _ body: (UnsafeRawBufferPointer) throws -> Void
    ) throws -> UInt64 {
        let stream = try openStream()
        let count = try stream.forEachChunk(bufferSize: bufferSize, body)
        try stream.finish()
        return count
    }

    /// Copies the whole (decompressed) QEMU stream into `destination`.
    /// - Parameters:
    ///   - destination: A descriptor to write to (a file, a pipe, a socket).
    /// - Returns: The number of bytes copied.
    /// - Throws: ``SaveImageError``.
    @discardableResult
    public func copyStream(to destination: Int32) throws -> UInt64 {
        let stream = try openStream()
        let count = try stream.copy(to: destination)
        try stream.finish()
        return count
    }
}

/// The QEMU migration stream of an image, decompressed when needed.
public final class SaveImageStream {
    /// The default chunk size: large enough that the system call cost is negligible.
    public static let defaultBufferSize = 4 << 20

    /// The compression being undone (`.raw`: the bytes come straight from the file).
    public let compression: SaveImageCompression
    private var fd: Int32
    private let ownsDescriptor: Bool
    private var process: CompressionProcess?

    init(compression: SaveImageCompression, fd: Int32, ownsDescriptor: Bool, process: CompressionProcess?) {
        self.compression = compression
        self.fd = fd
        self.ownsDescriptor = ownsDescriptor
        self.process = process
    }

    deinit {
        cancel()
    }

    /// The descriptor the stream is read from; pass it to QEMU, or use the methods below.
    public var fileDescriptor: Int32 { fd }

    /// Reads up to `buffer.count` stream bytes; returns 0 at the end of the stream.
    /// - Parameters:
    ///   - buffer: Where to put the bytes.
    /// - Throws: ``SaveImageError`` `.io`.
    public func read(into buffer: UnsafeMutableRawBufferPointer) throws -> Int {
        guard fd >= 0 else {
            throw SaveImageError(.invalidArgument, "save image stream is closed")
        }
        return try POSIX.readFull(fd, into: buffer, what: "save image stream")
    }

    /// Reads the rest of the stream in chunks through one reused buffer.
    /// - Parameters:
    ///   - bufferSize: The chunk size.
    ///   - body: Called with each chunk.
    /// - Returns: The number of bytes read.
    /// - Throws: ``SaveImageError``, or what `body` throws.
    @discardableResult
    public func forEachChunk(
        bufferSize: Int = SaveImageStream.defaultBufferSize,
        _ body: (UnsafeRawBufferPointer) throws -> Void
    ) throws -> UInt64 {
        guard bufferSize > 0 else {
            throw SaveImageError(.invalidArgument, "buffer size must be positive: \(bufferSize)")
        }
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: bufferSize, alignment: 4096)
        defer { buffer.deallocate() }
        var total: UInt64 = 0
        while true {
            let n = try read(into: buffer)
            if n == 0 {
                return total
            }
            total += UInt64(n)
            try body(UnsafeRawBufferPointer(rebasing: buffer[0..<n]))
        }
    }

    /// Copies the rest of the stream into `destination`.
    /// - Parameters:
    ///   - destination: A descriptor to write to.
    /// - Returns: The number of bytes copied.
    /// - Throws: ``SaveImageError``.
    @discardableResult
    public func copy(to destination: Int32) throws -> UInt64 {
        try forEachChunk { chunk in
            try POSIX.writeAllToPipe(destination, chunk, what: "save image stream")
        }
    }

    /// Ends reading: waits for the decompressor and checks that it succeeded.
    /// - Throws: ``SaveImageError`` `.processExited` when the decompressor failed (corrupt data).
    public func finish() throws {
        closeDescriptor()
        if let process {
            self.process = nil
            try process.waitForSuccess()
        }
    }

    /// Abandons the stream: closes it and kills the decompressor.
    public func cancel() {
        closeDescriptor()
        process?.terminate()
        process = nil
    }

    private func closeDescriptor() {
        if ownsDescriptor && fd >= 0 {
            POSIX.close(fd)
        }
        fd = -1
    }
}
