import Foundation
import KeelTestSupport
import KeelQMP
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// The test guest in guest/: built with nasm into a temporary directory, booted under TCG.
@Suite("keel-guest (multiboot test guest)")
struct GuestTests {
    static let source = repositoryRoot.appendingPathComponent("guest/keel-guest.asm").path

    /// Assembles the guest; nil (with the reason printed) when nasm is missing.
    static func build(into directory: TemporaryDirectory) throws -> String? {
        guard let nasm = findExecutable("nasm") else {
            print("skipped: nasm is not installed")
            return nil
        }
        let output = directory.file("keel-guest.elf")
        let result = try Subprocess.run(nasm, ["-f", "bin", "-o", output, source], timeout: 120)
        try #require(result.status == 0, "nasm failed: \(result.output)")
        return output
    }

    /// The CPUID lines of the first complete block in `lines`, by leaf.
    static func cpuidBlock(_ lines: [Substring]) -> [String: [String: UInt32]] {
        var block: [String: [String: UInt32]] = [:]
        for line in lines where line.hasPrefix("CPUID ") {
            let words = line.split(separator: " ")
            guard words.count == 7 else { continue }
            var registers: [String: UInt32] = [:]
            for word in words[3...] {
                let parts = word.split(separator: "=")
                if parts.count == 2, parts[1].count == 8, let value = UInt32(parts[1], radix: 16) {
                    registers[String(parts[0])] = value
                }
            }
            if block[String(words[1])] == nil { block[String(words[1])] = registers }
        }
        return block
    }

    @Test("the image is an ELF32 i386 executable with a valid multiboot header in its first 8 KiB")
    func image() throws {
        let directory = try TemporaryDirectory()
        defer { directory.cleanup() }
        guard let path = try Self.build(into: directory) else { return }
        let bytes = try [UInt8](Data(contentsOf: URL(fileURLWithPath: path)))
        try #require(bytes.count > 64)
        #expect(Array(bytes[0..<4]) == [0x7F, 0x45, 0x4C, 0x46])
        #expect(bytes[4] == 1)  // ELFCLASS32
        #expect(bytes[18] == 3)  // EM_386
        func word(_ offset: Int) -> UInt32 {
            UInt32(bytes[offset]) | UInt32(bytes[offset + 1]) << 8 | UInt32(bytes[offset + 2]) << 16 | UInt32(bytes[offset + 3]) << 24
        }
        let header = stride(from: 0, to: min(bytes.count - 12, 8192), by: 4).first { word($0) == 0x1BAD_B002 }
        let offset = try #require(header)
        #expect(word(offset) &+ word(offset + 4) &+ word(offset + 8) == 0)
    }

    @Test("under TCG the guest prints its banner, the five CPUID lines, FILLED and TICKs")
    func bootTCG() async throws {
        guard TestQEMU.binary != nil else {
            print("skipped: qemu-system-x86_64 is not installed")
            return
        }
        let directory = try TemporaryDirectory()
        defer { directory.cleanup() }
        guard let kernel = try Self.build(into: directory) else { return }
        let serial = directory.file("serial.txt")
        let qemu = try TestQEMU([
            "-machine", "pc,accel=tcg", "-cpu", "qemu64", "-m", "32",
            "-kernel", kernel, "-append", "fill=4", "-serial", "file:\(serial)",
        ])
        let ticked = await eventually(timeout: .seconds(30)) {
            ((try? String(contentsOfFile: serial, encoding: .utf8)) ?? "").contains("TICK 2\n")
        }
        await qemu.stop()
        let text = (try? String(contentsOfFile: serial, encoding: .utf8)) ?? ""
        try #require(ticked, "no TICK 2 within 30 s; serial output: \(text)")
        let lines = text.split(separator: "\n")
        #expect(lines.first == "KEEL-GUEST 1")
        #expect(Array(lines[1...5].map { $0.prefix(23) }) == [
            "CPUID 00000000 00000000", "CPUID 00000001 00000000", "CPUID 00000006 00000000",
            "CPUID 00000007 00000000", "CPUID 80000001 00000000",
        ])
        #expect(lines.contains("FILLED 4"))
        #expect(lines.contains("TICK 1"))
        let block = Self.cpuidBlock(lines)
        let leaf1 = try #require(block["00000001"])
        #expect(leaf1["edx"].map { $0 & 1 } == 1, "leaf 1 EDX bit 0 (fpu)")
        #expect(leaf1["edx"].map { $0 >> 25 & 1 } == 1, "leaf 1 EDX bit 25 (sse)")
        // qemu64 reports AMD's vendor string: "Auth" "enti" "cAMD" in EBX, EDX, ECX.
        #expect(block["00000000"]?["ebx"] == 0x6874_7541)
    }

    @Test("a byte on the serial port makes the guest print its CPUID block again")
    func reprintOnInput() async throws {
        guard TestQEMU.binary != nil else {
            print("skipped: qemu-system-x86_64 is not installed")
            return
        }
        let directory = try TemporaryDirectory()
        defer { directory.cleanup() }
        guard let kernel = try Self.build(into: directory) else { return }
        let serialPath = directory.file("serial.sock")
        let qemu = try TestQEMU([
            "-machine", "pc,accel=tcg", "-cpu", "qemu64", "-m", "32", "-kernel", kernel,
            "-serial", "unix:\(serialPath),server=on,wait=off",
        ])
        do {
            try await checkReprint(serialPath: serialPath)
        } catch {
            await qemu.stop()
            throw error
        }
        await qemu.stop()
    }

    private func checkReprint(serialPath: String) async throws {
        let serial = try await SerialConsole(path: serialPath, deadline: .seconds(10))
        defer { serial.close() }
        let booted = try serial.read(until: { $0.contains("TICK 1\n") }, timeout: .seconds(30))
        try #require(booted, "no TICK 1 within 30 s: \(serial.output)")
        #expect(serial.output.components(separatedBy: "CPUID 00000001").count == 2)
        try serial.write("x")
        let reprinted = try serial.read(until: { text in
            let blocks = text.components(separatedBy: "CPUID 80000001")
            return blocks.count == 3 && (blocks.last ?? "").contains("\n")
        }, timeout: .seconds(5))
        let output = serial.output
        #expect(reprinted, "no second CPUID block after input: \(output)")
        #expect(!output.contains("TICK 10\n"), "the block came from input, not from the 10-tick timer")
        let lines = output.components(separatedBy: "\n").filter { $0.hasPrefix("CPUID ") }
        #expect(lines.count == 10)
        if lines.count == 10 {
            #expect(Array(lines[0..<5]) == Array(lines[5..<10]), "the block is identical each time")
        }
    }
}

/// The guest's serial port on a Unix socket (`-serial unix:PATH,server=on,wait=off`).
final class SerialConsole {
    private let fd: Int32
    private(set) var output = ""

    init(path: String, deadline: Duration) async throws {
        let limit = ContinuousClock.now + deadline
        while true {
            let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
            var address = sockaddr_un()
            address.sun_family = sa_family_t(AF_UNIX)
            let bytes = Array(path.utf8)
            withUnsafeMutableBytes(of: &address.sun_path) { $0.copyBytes(from: bytes) }
            let connected = withUnsafePointer(to: &address) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
            }
            if connected == 0 {
                self.fd = fd
                return
            }
            Glibc.close(fd)
            guard ContinuousClock.now < limit else { throw FakeQMPServer.Failure(description: "cannot connect to \(path)") }
            try await Task.sleep(for: .milliseconds(20))
        }
    }

    /// Reads until `done(output)` holds; false if `timeout` passes first.
    func read(until done: (String) -> Bool, timeout: Duration) throws -> Bool {
        let limit = ContinuousClock.now + timeout
        var buffer = [UInt8](repeating: 0, count: 4096)
        while !done(output) {
            let remaining = ContinuousClock.now.duration(to: limit)
            guard remaining > .zero else { return false }
            var pollDescriptor = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            guard poll(&pollDescriptor, 1, Int32(clamping: remaining.components.seconds * 1000 + 1)) > 0 else { continue }
            let count = Glibc.read(fd, &buffer, buffer.count)
            guard count > 0 else { return done(output) }
            output += String(decoding: buffer[0..<count], as: UTF8.self)
        }
        return true
    }

    func write(_ text: String) throws {
        let bytes = Array(text.utf8)
        guard Glibc.write(fd, bytes, bytes.count) == bytes.count else {
            throw FakeQMPServer.Failure(description: "serial write failed: errno \(errno)")
        }
    }

    func close() {
        Glibc.close(fd)
    }
}
