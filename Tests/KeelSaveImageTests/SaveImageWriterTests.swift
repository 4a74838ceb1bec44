import Foundation
import Testing

@testable import KeelSaveImage

@Suite("Save image writer and reader")
struct SaveImageWriterTests {
    @Test("a written raw image has libvirt's exact byte layout and reads back")
    func rawLayout() throws {
        let dir = try TemporaryDirectory()
        let path = dir.file("raw.save")
        let stream = Samples.stream(count: 50_000)
        try writeImage(path, xml: "<domain/>", cookie: "<cookie/>", wasRunning: true, stream: stream)
        let area = Array("<domain/>\0<cookie/>\0".utf8) + Array(repeating: 0, count: 65536)
        let expected = handMadeImage(words: [2, UInt32(area.count), 1, 0, 10], dataArea: area, stream: stream)
        #expect(try readFile(path) == expected)

        let info = try SaveImage.read(path: path)
        #expect(info.isComplete)
        #expect(info.dataArea == SaveImageDataArea(xml: "<domain/>", cookie: "<cookie/>"))
        #expect(info.streamOffset == UInt64(92 + area.count))
        #expect(info.streamLength == 50_000)
        #expect(info.header.wasRunning)
        #expect(try readStream(path) == stream)
    }

    static let compressions = SaveImageCompression.allCases.filter { $0 != .raw }

    @Test("a compressed image compresses only the stream and decompresses to the same bytes", arguments: compressions)
    func compressed(_ compression: SaveImageCompression) throws {
        guard let program = compression.program, programExists(program) else {
            print("skipping \(compression): '\(compression.name)' is not installed")
            return
        }
        let dir = try TemporaryDirectory()
        let path = dir.file("c.save")
        let stream = Samples.stream(count: 300_000)
        try writeImage(path, compression: compression, stream: stream)
        let info = try SaveImage.read(path: path)
        #expect(info.header.compression == compression)
        #expect(info.dataArea == SaveImageDataArea(xml: Samples.xml, cookie: Samples.cookie))
        #expect(info.streamLength < 300_000)
        let file = try readFile(path)
        #expect(Array(file[Int(info.streamOffset)...].prefix(4)) != Array(Samples.streamPrefix.prefix(4)))
        #expect(try readStream(path) == stream)
        let report = try SaveImage.verify(path: path)
        #expect(report.streamBytes == 300_000)
        #expect(report.streamVersion == 3)
    }

    @Test("QEMU can write straight into the stream descriptor, raw or through the compressor")
    func streamDescriptor() throws {
        let dir = try TemporaryDirectory()
        for compression in [SaveImageCompression.raw, .gzip] where compression.program.map(programExists) ?? true {
            let path = dir.file("fd-\(compression).save")
            let writer = try SaveImageWriter(
                path: path, dataArea: SaveImageDataArea(xml: Samples.xml), wasRunning: false, compression: compression)
            let fd = try writer.streamFileDescriptor()
            #expect(try writer.streamFileDescriptor() == fd)
            let stream = Samples.stream(count: 200_000)
            // What QEMU does with `migrate fd:` — plain write(2)s on its copy of the descriptor.
            let copy = dup(fd)
            #expect(copy >= 0)
            try stream.withUnsafeBytes { try POSIX.writeAll(copy, $0, what: "test") }
            close(copy)
            try writer.finish()
            #expect(try readStream(path) == stream)
            #expect(try !SaveImage.read(path: path).header.wasRunning)
        }
    }

    @Test("the stream can be copied from a pipe fed by another process")
    func copyFromPipe() throws {
        let dir = try TemporaryDirectory()
        let source = dir.file("source")
        let stream = Samples.stream(count: 3_000_000)
        try writeFile(source, stream)
        let feeder = try Feeder(script: "cat '\(source)'")
        let path = dir.file("piped.save")
        let writer = try SaveImageWriter(path: path, dataArea: SaveImageDataArea(xml: Samples.xml), wasRunning: true)
        #expect(try writer.copyStream(from: feeder.output, bufferSize: 65536) == 3_000_000)
        #expect(feeder.wait() == 0)
        try writer.finish()
        #expect(try readStream(path) == stream)

        let out = dir.file("out")
        let outFD = open(out, O_WRONLY | O_CREAT | O_TRUNC, 0o600)
        #expect(try SaveImageReader(path: path).copyStream(to: outFD) == 3_000_000)
        close(outFD)
        #expect(try readFile(out) == stream)
    }

    @Test("copying the stream into a pipe whose reader is gone fails with EPIPE instead of killing the process")
    func brokenPipe() throws {
        let dir = try TemporaryDirectory()
        let path = dir.file("p.save")
        try writeImage(path, stream: Samples.stream(count: 1_000_000))
        let pipe = try POSIX.pipe()
        close(pipe.read)
        defer { close(pipe.write) }
        let error = try #require(throws: SaveImageError.self) { try SaveImageReader(path: path).copyStream(to: pipe.write) }
        #expect(error.code == .io)
        #expect((error.cause as? SaveImageError.SystemError)?.errno == EPIPE)
    }

    @Test("a writer stopped after any step before the final header leaves an image that reads as incomplete",
          arguments: SaveImageWriter.Step.allCases)
    func crashAtEachStep(_ step: SaveImageWriter.Step) throws {
        let dir = try TemporaryDirectory()
        let path = dir.file("crash.save")
        func run() throws {
            let writer = try SaveImageWriter(
                path: path, dataArea: SaveImageDataArea(xml: Samples.xml, cookie: Samples.cookie),
                wasRunning: true, compression: .raw, permissions: 0o600,
                hook: { if $0 == step { throw SaveImageWriter.SimulatedCrash() } })
            try writer.write(Samples.stream(count: 10_000))
            try writer.finish()
        }
        #expect(throws: SaveImageWriter.SimulatedCrash.self) { try run() }
        #expect(FileManager.default.fileExists(atPath: path))
        if step.rawValue < SaveImageWriter.Step.completeHeader.rawValue {
            let error = try #require(throws: SaveImageError.self) { try SaveImage.read(path: path) }
            #expect(error.code == .incomplete)
        } else {
            // The complete magic goes to disk only after the stream was synced.
            #expect(try SaveImage.verify(path: path).streamBytes == 10_000)
        }
    }

    @Test("an image whose stream feeder is killed with SIGKILL stays incomplete")
    func feederKilled() throws {
        let dir = try TemporaryDirectory()
        let path = dir.file("killed.save")
        let writer = try SaveImageWriter(path: path, dataArea: SaveImageDataArea(xml: Samples.xml), wasRunning: true)
        let feeder = try Feeder(script: "printf 'QEVM\\000\\000\\000\\003'; head -c 300000 /dev/zero; kill -9 $$")
        let copied = try writer.copyStream(from: feeder.output)
        #expect(copied == 300_008)
        // The feeder died: its status, not the end of the pipe, says the stream is not whole.
        #expect(feeder.wait() == 128 + SIGKILL)
        writer.discard()
        #expect(!FileManager.default.fileExists(atPath: path))

        // Abandoned without discard (the writer process itself died): still incomplete.
        let path2 = dir.file("killed2.save")
        let feeder2 = try Feeder(script: "printf 'QEVM\\000\\000\\000\\003'; head -c 300000 /dev/zero; kill -9 $$")
        do {
            let writer2 = try SaveImageWriter(path: path2, dataArea: SaveImageDataArea(xml: Samples.xml), wasRunning: true)
            try writer2.copyStream(from: feeder2.output)
        }
        #expect(feeder2.wait() == 128 + SIGKILL)
        let error = try #require(throws: SaveImageError.self) { try SaveImage.read(path: path2) }
        #expect(error.code == .incomplete)
        #expect(try SaveImage.read(path: path2, options: .init(allowsIncomplete: true)).streamLength == 300_008)
    }

    @Test("a compressor killed with SIGKILL mid-stream makes finish fail and the image stays incomplete")
    func compressorKilled() throws {
        guard programExists("gzip") else {
            print("skipping: gzip is not installed")
            return
        }
        let dir = try TemporaryDirectory()
        let path = dir.file("gz.save")
        let writer = try SaveImageWriter(
            path: path, dataArea: SaveImageDataArea(xml: Samples.xml), wasRunning: true, compression: .gzip)
        try writer.write(Samples.stream(count: 100_000))
        let pid = try #require(writer.compressorPID)
        kill(pid, SIGKILL)
        var error: SaveImageError?
        do {
            // Either a write hits EPIPE or finish sees the signal.
            for _ in 0..<20 { try writer.write(Samples.stream(count: 100_000)) }
            try writer.finish()
        } catch let e as SaveImageError {
            error = e
        }
        let caught = try #require(error)
        #expect(caught.code == .processExited || caught.code == .io)
        let readError = try #require(throws: SaveImageError.self) { try SaveImage.read(path: path) }
        #expect(readError.code == .incomplete)
    }

    @Test("a missing compression program is reported and leaves no file behind")
    func missingProgram() throws {
        let dir = try TemporaryDirectory()
        let path = dir.file("x.save")
        let writer = try SaveImageWriter(path: path, dataArea: SaveImageDataArea(xml: Samples.xml), wasRunning: true)
        // Not reachable through the public API with a known compression; exercise the spawn error directly.
        let error = try #require(throws: SaveImageError.self) {
            _ = try CompressionProcess(program: "keel-no-such-compressor", arguments: [], stdin: 0, stdout: 1)
        }
        #expect(error.code == .processExited)
        #expect(error.message == "cannot run compression program 'keel-no-such-compressor'")
        writer.discard()
        #expect(!FileManager.default.fileExists(atPath: path))
    }

    @Test("rewriting the XML keeps the cookie, the data length and the stream; libvirt's no-op and too-large rules hold")
    func rewrite() throws {
        let dir = try TemporaryDirectory()
        let path = dir.file("r.save")
        let stream = Samples.stream(count: 20_000)
        let original = try writeImage(path, wasRunning: true, stream: stream)

        #expect(try SaveImage.rewriteDataArea(path: path, xml: Samples.xml) == false)
        #expect(try SaveImage.rewriteDataArea(path: path, xml: Samples.xml, wasRunning: true) == false)

        let bigger = Samples.xml.replacingOccurrences(of: "</domain>", with: "  <description>\(String(repeating: "d", count: 100))</description>\n</domain>")
        #expect(try SaveImage.rewriteDataArea(path: path, xml: bigger, wasRunning: false) == true)
        let info = try SaveImage.read(path: path)
        #expect(info.isComplete)
        #expect(info.dataArea == SaveImageDataArea(xml: bigger, cookie: Samples.cookie))
        #expect(info.header.dataLength == original.dataLength)
        #expect(info.header.cookieOffset == UInt32(bigger.utf8.count + 1))
        #expect(!info.header.wasRunning)
        #expect(try readStream(path) == stream)

        let before = try readFile(path)
        let huge = String(repeating: "x", count: 70_000)
        let error = try #require(throws: SaveImageError.self) { try SaveImage.rewriteDataArea(path: path, xml: huge) }
        #expect(error.code == .tooLarge)
        #expect(error.message.hasPrefix("new xml too large to fit in file"))
        #expect(try readFile(path) == before)
    }

    @Test("an incomplete image cannot be rewritten")
    func rewritePartial() throws {
        let dir = try TemporaryDirectory()
        let path = dir.file("p.save")
        _ = try SaveImageWriter(path: path, dataArea: SaveImageDataArea(xml: Samples.xml), wasRunning: true)
        let error = try #require(throws: SaveImageError.self) { try SaveImage.rewriteDataArea(path: path, xml: "<domain/>") }
        #expect(error.code == .incomplete)
    }

    @Test("verify checks the QEMU stream magic and version")
    func verifyStream() throws {
        let dir = try TemporaryDirectory()
        let good = dir.file("good.save")
        try writeImage(good, stream: Samples.stream(count: 1000))
        let report = try SaveImage.verify(path: good)
        #expect(report.streamVersion == 3)
        #expect(report.streamBytes == 1000)

        let cases: [(String, [UInt8], String)] = [
            ("empty", [], "QEMU stream is too short: 0 bytes"),
            ("short", [0x51, 0x45], "QEMU stream is too short: 2 bytes"),
            ("magic", Array("QEMU\0\0\0\u{3}".utf8), "QEMU stream magic is incorrect: 'QEMU'"),
            ("version", [0x51, 0x45, 0x56, 0x4d, 0, 0, 0, 2], "QEMU stream version is not supported: 2 (expected 3)"),
        ]
        for (name, stream, message) in cases {
            let path = dir.file("\(name).save")
            try writeImage(path, stream: stream)
            let error = try #require(throws: SaveImageError.self) { try SaveImage.verify(path: path) }
            #expect(error.code == .badStream)
            #expect(error.message == message)
        }
    }

    @Test("verify runs a full decompression pass and reports a corrupt compressed stream")
    func verifyCorruptCompressed() throws {
        guard programExists("gzip") else {
            print("skipping: gzip is not installed")
            return
        }
        let dir = try TemporaryDirectory()
        let path = dir.file("gz.save")
        try writeImage(path, compression: .gzip, stream: Samples.stream(count: 500_000))
        var bytes = try readFile(path)
        let info = try SaveImage.read(path: path)
        // Damage the middle of the deflate data; the CRC check at the end must catch it.
        let middle = Int(info.streamOffset) + Int(info.streamLength) / 2
        for i in middle..<(middle + 64) { bytes[i] ^= 0x5a }
        try writeFile(path, bytes)
        let error = try #require(throws: SaveImageError.self) { try SaveImage.verify(path: path) }
        #expect(error.code == .processExited)
        #expect(error.message.contains("gzip"))
    }

    static let memoryChildKey = "KEEL_SAVEIMAGE_CHILD_MEMORY"

    @Test("reading and verifying a 4 GiB sparse image keeps memory flat")
    func memoryStaysFlat() throws {
        if let report = ProcessInfo.processInfo.environment[Self.memoryChildKey] {
            // The child: measure alone in its own process and report "before after" in KiB.
            let (before, after) = try readSparseImage()
            try "\(before) \(after)".write(toFile: report, atomically: true, encoding: .utf8)
            return
        }
        // The peak RSS is process-wide, so measure in a child copy of this binary where no other
        // test allocates; fall back to measuring here if the binary cannot be re-run.
        let dir = try TemporaryDirectory()
        let report = dir.file("report")
        let status = try runTestInChild(filter: "memoryStaysFlat", environment: [Self.memoryChildKey: report])
        let before: Int, after: Int
        if status == 0, let text = try? String(contentsOfFile: report, encoding: .utf8) {
            let numbers = text.split(separator: " ").compactMap { Int($0) }
            try #require(numbers.count == 2)
            (before, after) = (numbers[0], numbers[1])
        } else {
            print("measuring in-process: the test binary could not be re-run (status \(status))")
            (before, after) = try readSparseImage()
        }
        print("VmHWM before \(before >> 10) MiB, after \(after >> 10) MiB for a 4 GiB stream")
        #expect(after - before < 32 << 10, "peak RSS grew by \(after - before) KiB")
    }

    /// Writes a 4 GiB sparse image, reads and verifies it; returns VmHWM before and after in KiB.
    private func readSparseImage() throws -> (Int, Int) {
        let dir = try TemporaryDirectory()
        let path = dir.file("big.save")
        let streamLength: UInt64 = 4 << 30
        let writer = try SaveImageWriter(path: path, dataArea: SaveImageDataArea(xml: Samples.xml), wasRunning: true)
        try writer.write(Samples.streamPrefix)
        let fd = try writer.streamFileDescriptor()
        #expect(ftruncate(fd, off_t(writer.streamOffset + streamLength)) == 0)
        try writer.finish()

        let before = try residentHighWaterMark()
        let reader = try SaveImageReader(path: path)
        var chunks = 0
        let total = try reader.forEachChunk(bufferSize: 1 << 20) { _ in chunks += 1 }
        let report = try SaveImage.verify(path: path)
        let after = try residentHighWaterMark()
        #expect(total == streamLength)
        #expect(chunks == 4096)
        #expect(report.streamBytes == streamLength)
        return (before, after)
    }
}

/// The process's peak resident set size in KiB (`VmHWM`).
func residentHighWaterMark() throws -> Int {
    let status = try String(contentsOfFile: "/proc/self/status", encoding: .utf8)
    let line = try #require(status.split(separator: "\n").first { $0.hasPrefix("VmHWM:") })
    return try #require(Int(line.split(separator: " ", omittingEmptySubsequences: true)[1]))
}

/// A `/bin/sh -c` child whose stdout is a pipe the test reads.
final class Feeder {
    let pid: pid_t
    let output: Int32

    init(script: String) throws {
        let pipe = try POSIX.pipe()
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_adddup2(&actions, pipe.write, 1)
        let argv: [UnsafeMutablePointer<CChar>?] = ["/bin/sh", "-c", script].map { arg in arg.withCString { strdup($0) } } + [nil]
        defer { argv.forEach { free($0) } }
        var child: pid_t = 0
        let rc = posix_spawn(&child, "/bin/sh", &actions, nil, argv, environ)
        close(pipe.write)
        guard rc == 0 else {
            close(pipe.read)
            throw SaveImageError(.processExited, "cannot spawn /bin/sh")
        }
        pid = child
        output = pipe.read
    }

    /// Waits for the child: its exit status, or 128 + the signal that killed it.
    func wait() -> Int32 {
        var status: Int32 = 0
        while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
        return status & 0x7f == 0 ? (status >> 8) & 0xff : 128 + (status & 0x7f)
    }

    deinit {
        close(output)
    }
}
