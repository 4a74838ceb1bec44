#if canImport(Glibc)
import Glibc
#endif

/// Writes a save image with libvirt's protocol, so an interrupted write never looks complete.
///
/// 1. `init` creates the file and writes the header with the `LibvirtQemudPart` magic, then the
///    data area (XML, cookie, 64 KiB of zeros).
/// 2. The caller streams the QEMU migration data in: hand ``streamFileDescriptor()`` to QEMU
///    (`getfd` + `migrate fd:`), or push bytes with ``write(_:)`` / ``copyStream(from:bufferSize:)``.
///    For a compressed image that descriptor is the stdin of `<program> -c`, whose stdout is the file.
/// 3. ``finish()`` waits for the compressor, `fsync`s, rewrites the header with the
///    `LibvirtQemudSave` magic and `fsync`s again.
///
/// Until step 3 completes the file reads as incomplete. Call ``finish()`` only once the producer
/// (QEMU) reported success: the end of a pipe alone does not prove the stream is whole.
/// ``discard()`` removes the file after a failure.
public final class SaveImageWriter {
    /// The steps of the protocol, in order; the test hook can stop the writer after each.
    enum Step: Int, CaseIterable, Sendable {
        case created, partialHeader, dataArea, stream, streamSynced, completeHeader, completeSynced
    }

    /// Thrown by the test hook to simulate the writer dying: no clean-up happens.
    struct SimulatedCrash: Error {}

    /// The image's path.
    public let path: String
    /// The header as it will be (or was) finally written.
    public private(set) var header: SaveImageHeader
    /// The file offset where the QEMU stream starts.
    public var streamOffset: UInt64 { header.streamOffset }
    /// The number of stream bytes passed through ``write(_:)`` and ``copyStream(from:bufferSize:)``.
    public private(set) var streamBytesWritten: UInt64 = 0

    private var fd: Int32
    private var compressorInput: Int32 = -1
    private var compressor: CompressionProcess?
    private var finished = false
    private let hook: ((Step) throws -> Void)?

    /// Creates the image file and writes the partial header and the data area.
    /// - Parameters:
    ///   - path: The file to create; an existing file is truncated.
    ///   - dataArea: The domain XML and optional cookie.
    ///   - wasRunning: Whether restore should resume the guest's CPUs.
    ///   - compression: The compression for the QEMU stream; the program must be in `PATH`.
    ///   - permissions: The new file's mode.
    /// - Throws: ``SaveImageError`` `.invalidArgument` / `.tooLarge` for a bad data area, `.io`.
    ///   On failure the file is removed.
    public convenience init(
        path: String,
        dataArea: SaveImageDataArea,
        wasRunning: Bool,
        compression: SaveImageCompression = .raw,
        permissions: mode_t = 0o600
    ) throws {
        try self.init(
            path: path, dataArea: dataArea, wasRunning: wasRunning, compression: compression,
            permissions: permissions, hook: nil
        )
    }

    init(
        path: String,
        dataArea: SaveImageDataArea,
        wasRunning: Bool,
        compression: SaveImageCompression,
        permissions: mode_t,
        hook: ((Step) throws -> Void)?
    ) throws {
        var header = SaveImageHeader(wasRunning: wasRunning, compression: compression)
        let area = try dataArea.encoded()
        header.dataLength = UInt32(area.bytes.count)
        header.cookieOffset = area.cookieOffset
        self.path = path
        self.header = header
        self.hook = hook
        self.fd = try POSIX.open(path, flags: O_WRONLY | O_CREAT | O_TRUNC, mode: permissions, what: "save image")
        do {
            try hook?(.created)
            try header.encoded().withUnsafeBytes {
                try POSIX.writeAll(fd, $0, what: "header to save image '\(path)'")
            }
            try hook?(.partialHeader)
            try area.bytes.withUnsafeBytes {
                try POSIX.writeAll(fd, $0, what: "data area to save image '\(path)'")
            }
            try hook?(.dataArea)
        } catch let crash as SimulatedCrash {
            POSIX.close(fd)
            throw crash
        } catch {
            POSIX.close(fd)
            unlink(path)
            throw error
        }
    }

    deinit {
        compressor?.terminate()
        closeCompressorInput()
        if fd >= 0 {
            POSIX.close(fd)
        }
    }

    /// The descriptor the QEMU stream must be written to.
    ///
    /// Raw: the image file, positioned at ``streamOffset``. Compressed: the write end of a pipe
    /// into the compressor (started on first call). Hand it to QEMU with `getfd` and
    /// `migrate fd:<name>`; this writer keeps its own copy until ``finish()``.
    /// - Throws: ``SaveImageError`` `.processExited` when the compressor cannot start, or
    ///   `.invalidArgument` after ``finish()``.
    public func streamFileDescriptor() throws -> Int32 {
        guard !finished, fd >= 0 else {
            throw SaveImageError(.invalidArgument, "save image '\(path)' is already finished")
        }
        guard let program = header.compression?.program else {
            return fd
        }
        if compressorInput >= 0 {
            return compressorInput
        }
        let pipe = try POSIX.pipe()
        do {
            compressor = try CompressionProcess(
                program: program, arguments: header.compression?.compressArguments ?? [],
                stdin: pipe.read, stdout: fd
            )
        } catch {
            POSIX.close(pipe.read)
            POSIX.close(pipe.write)
            throw error
        }
        POSIX.close(pipe.read)
        compressorInput = pipe.write
        return compressorInput
    }

    /// Appends QEMU stream bytes (compressed on the way when the image is compressed).
    /// - Parameters:
    ///   - bytes: The next stream bytes.
    /// - Throws: ``SaveImageError`` `.io` (a dead compressor shows as `EPIPE`).
    public func write(_ bytes: UnsafeRawBufferPointer) throws {
        let target = try streamFileDescriptor()
        if target == fd {
            try POSIX.writeAll(target, bytes, what: "stream to save image '\(path)'")
        } else {
            try POSIX.writeAllToPipe(target, bytes, what: "stream to the compressor for '\(path)'")
        }
        streamBytesWritten += UInt64(bytes.count)
        try hook?(.stream)
    }

    /// Appends QEMU stream bytes.
    /// - Parameters:
    ///   - bytes: The next stream bytes.
    /// - Throws: ``SaveImageError``.
    public func write(_ bytes: [UInt8]) throws {
        try bytes.withUnsafeBytes { try write($0) }
    }

    /// Copies `source` until its end into the stream through one reused buffer.
    /// - Parameters:
    ///   - source: A descriptor to read from (a pipe from QEMU, a file).
    ///   - bufferSize: The copy buffer size.
    /// - Returns: The number of bytes copied.
    /// - Throws: ``SaveImageError``.
    @discardableResult
    public func copyStream(from source: Int32, bufferSize: Int = SaveImageStream.defaultBufferSize) throws -> UInt64 {
        guard bufferSize > 0 else {
            throw SaveImageError(.invalidArgument, "buffer size must be positive: \(bufferSize)")
        }
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: bufferSize, alignment: 4096)
        defer { buffer.deallocate() }
        var total: UInt64 = 0
        while true {
            let n = try POSIX.readFull(source, into: buffer, what: "stream source")
            if n == 0 {
                return total
            }
            try write(UnsafeRawBufferPointer(rebasing: buffer[0..<n]))
            total += UInt64(n)
        }
    }

    /// Completes the image: waits for the compressor, syncs, marks the header complete, syncs.
    /// - Throws: ``SaveImageError`` `.processExited` when the compressor failed, `.io`. The image
    ///   then stays incomplete; call ``discard()`` to remove it.
    public func finish() throws {
        guard !finished, fd >= 0 else {
            throw SaveImageError(.invalidArgument, "save image '\(path)' is already finished")
        }
        closeCompressorInput()
        if let compressor {
            self.compressor = nil
            try compressor.waitForSuccess()
        }
        do {
            try POSIX.fsync(fd, what: "save image '\(path)'")
            try hook?(.streamSynced)
            var complete = header
            complete.isComplete = true
            try SaveImage.writeHeader(complete, fd: fd, path: path)
            try hook?(.completeHeader)
            try POSIX.fsync(fd, what: "save image '\(path)'")
            header = complete
            try hook?(.completeSynced)
            let closing = fd
            fd = -1
            guard Glibc.close(closing) == 0 else {
                throw SaveImageError.system("cannot close save image '\(path)'", call: "close")
            }
            // The image is complete from here on; discard() must no longer remove it.
            finished = true
            try POSIX.fsyncDirectory(of: path)
        } catch let crash as SimulatedCrash {
            if fd >= 0 {
                POSIX.close(fd)
                fd = -1
            }
            throw crash
        }
    }

    /// Abandons the image after a failure: kills the compressor, closes and removes the file.
    public func discard() {
        compressor?.terminate()
        compressor = nil
        closeCompressorInput()
        if fd >= 0 {
            POSIX.close(fd)
            fd = -1
        }
        if !finished {
            unlink(path)
        }
        finished = true
    }

    /// The compressor's process id while it runs (for tests that kill it).
    var compressorPID: pid_t? { compressor?.pid }

    private func closeCompressorInput() {
        if compressorInput >= 0 {
            POSIX.close(compressorInput)
            compressorInput = -1
        }
    }
}
