import Foundation
import KeelTestSupport
import Testing

@testable import KeelSaveImage

/// A temporary directory removed when the value goes away.
final class TemporaryDirectory {
    let path: String

    init() throws {
        var template = Array((NSTemporaryDirectory() + "/keel-saveimage-XXXXXX").utf8CString)
        let created = template.withUnsafeMutableBufferPointer { buffer in buffer.baseAddress.flatMap { mkdtemp($0) } }
        self.path = try #require(created.map { String(cString: $0) })
    }

    func file(_ name: String) -> String {
        path + "/" + name
    }

    deinit {
        try? FileManager.default.removeItem(atPath: path)
    }
}

enum Samples {
    static let xml = """
        <domain type='qemu'>
          <name>keel-test</name>
          <uuid>4dea22b3-1d52-d8f3-2516-782e98ab3fa0</uuid>
          <memory unit='KiB'>32768</memory>
          <vcpu placement='static'>1</vcpu>
          <os>
            <type arch='x86_64' machine='pc'>hvm</type>
          </os>
        </domain>

        """
    static let cookie = """
        <cookie>
          <cpu mode='custom' match='exact' check='full'>
            <model fallback='forbid'>qemu64</model>
          </cpu>
          <slirpHelper/>
        </cookie>

        """
    /// The start of a QEMU 7.2 migration stream: `QEVM`, version 3, then a configuration section.
    static let streamPrefix: [UInt8] = [0x51, 0x45, 0x56, 0x4d, 0, 0, 0, 3, 0x07, 0, 0, 0, 0x0b]

    /// A deterministic pseudo-random stream of `count` bytes starting with `streamPrefix`.
    static func stream(count: Int, seed: UInt64 = 0x5eed) -> [UInt8] {
        var rng = SplitMix64(seed: seed)
        var out = streamPrefix
        out.reserveCapacity(count)
        while out.count < count {
            // Runs of repeated bytes so compressors have something to do.
            let byte = UInt8(truncatingIfNeeded: rng.next())
            let run = Int(rng.next() % 64) + 1
            out.append(contentsOf: repeatElement(byte, count: min(run, count - out.count)))
        }
        return Array(out.prefix(count))
    }
}

/// A small seeded generator so property tests are reproducible.
struct SplitMix64: RandomNumberGenerator {
    var state: UInt64

    init(seed: UInt64) {
        state = seed
    }

    mutating func next() -> UInt64 {
        state &+= 0x9e37_79b9_7f4a_7c15
        var z = state
        z = (z ^ (z >> 30)) &* 0xbf58_476d_1ce4_e5b9
        z = (z ^ (z >> 27)) &* 0x94d0_49bb_1331_11eb
        return z ^ (z >> 31)
    }
}

func readFile(_ path: String) throws -> [UInt8] {
    [UInt8](try Data(contentsOf: URL(fileURLWithPath: path)))
}

func writeFile(_ path: String, _ bytes: [UInt8]) throws {
    try Data(bytes).write(to: URL(fileURLWithPath: path))
}

/// Whether `program` can be found in `PATH`.
func programExists(_ program: String) -> Bool {
    let path = ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin"
    return path.split(separator: ":").contains { FileManager.default.isExecutableFile(atPath: "\($0)/\(program)") }
}

/// Writes a complete image with `stream` as its (uncompressed) QEMU stream.
@discardableResult
func writeImage(
    _ path: String,
    xml: String = Samples.xml,
    cookie: String? = Samples.cookie,
    wasRunning: Bool = true,
    compression: SaveImageCompression = .raw,
    stream: [UInt8] = Samples.stream(count: 100_000)
) throws -> SaveImageHeader {
    let writer = try SaveImageWriter(
        path: path, dataArea: SaveImageDataArea(xml: xml, cookie: cookie),
        wasRunning: wasRunning, compression: compression
    )
    try writer.write(stream)
    try writer.finish()
    return writer.header
}

/// Reads the whole decompressed stream of an image into memory (small test images only).
func readStream(_ path: String) throws -> [UInt8] {
    let reader = try SaveImageReader(path: path)
    var out = [UInt8]()
    try reader.forEachChunk(bufferSize: 65536) { out.append(contentsOf: $0) }
    return out
}

/// The bytes of a minimal valid image, built by hand from the documented layout.
func handMadeImage(
    magic: String = "LibvirtQemudSave",
    words: [UInt32],
    bigEndian: Bool = false,
    dataArea: [UInt8],
    stream: [UInt8] = Samples.streamPrefix
) -> [UInt8] {
    var out = Array(magic.utf8)
    for (index, word) in (words + Array(repeating: 0, count: 19 - words.count)).enumerated() {
        let value = index < 5 && bigEndian ? word.bigEndian : word.littleEndian
        withUnsafeBytes(of: value) { out.append(contentsOf: $0) }
    }
    return out + dataArea + stream
}

/// Runs one test of this binary in a child process (`/proc/self/exe --filter <filter>`) with
/// extra environment variables; returns its exit status, or -1 if it could not be started.
func runTestInChild(filter: String, environment extra: [String: String]) throws -> Int32 {
    let binary = URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath().path
    guard let result = try? Subprocess.run(binary, ["--testing-library", "swift-testing", "--filter", filter],
                                           environment: ProcessInfo.processInfo.environment.merging(extra) { $1 },
                                           timeout: 300, discardOutput: true),
          !result.timedOut, result.status < 128 else { return -1 }
    return result.status
}
