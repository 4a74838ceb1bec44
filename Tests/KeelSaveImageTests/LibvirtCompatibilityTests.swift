import Foundation
import KeelTestSupport
import Testing

@testable import KeelSaveImage

/// Images made by real libvirt 9.0 (`scripts/make-libvirt-save-fixtures.sh`), and real `virsh`
/// reading images Keel made.
@Suite("libvirt compatibility")
struct LibvirtCompatibilityTests {
    static let fixtures = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("Fixtures")

    /// The `key=value` lines of a fixture's `.meta` file.
    static func meta(_ name: String) throws -> [String: String] {
        let text = try String(contentsOf: fixtures.appendingPathComponent("\(name).meta"), encoding: .utf8)
        var result: [String: String] = [:]
        for line in text.split(separator: "\n") {
            guard let eq = line.firstIndex(of: "=") else { continue }
            result[String(line[..<eq])] = String(line[line.index(after: eq)...])
        }
        return result
    }

    static let names = ["libvirt-9.0-raw", "libvirt-9.0-gzip"]

    @Test("images saved by libvirt 9.0 read with the header fields, XML and cookie libvirt wrote", arguments: names)
    func libvirtImage(_ name: String) throws {
        let meta = try Self.meta(name)
        let path = Self.fixtures.appendingPathComponent("\(name).save").path
        let expectedXML = try String(contentsOf: Self.fixtures.appendingPathComponent("\(name).xml"), encoding: .utf8)
        let expectedCookie = try String(contentsOf: Self.fixtures.appendingPathComponent("\(name).cookie"), encoding: .utf8)

        let info = try SaveImage.read(path: path)
        #expect(info.isComplete)
        #expect(meta["magic"] == "LibvirtQemudSave")
        #expect(info.header.version == 2)
        #expect("\(info.header.version)" == meta["version"])
        #expect("\(info.header.dataLength)" == meta["data-length"])
        #expect("\(info.header.wasRunningValue)" == meta["was-running"])
        #expect("\(info.header.compressionValue)" == meta["compressed"])
        #expect("\(info.header.cookieOffset)" == meta["cookie-offset"])
        #expect("\(info.streamOffset)" == meta["stream-offset"])
        #expect(info.header.byteOrder == .littleEndian)
        #expect(info.header.unusedWords == Array(repeating: 0, count: 14))
        #expect(info.dataArea.xml == expectedXML)
        #expect(info.dataArea.cookie == expectedCookie)
        // libvirt: data_len = XML + NUL + cookie + NUL + 64 KiB.
        #expect(Int(info.header.dataLength) == expectedXML.utf8.count + 1 + expectedCookie.utf8.count + 1 + 65536)
        #expect(Int(info.header.cookieOffset) == expectedXML.utf8.count + 1)
        // The fixture is truncated after 64 KiB of stream; the original size is recorded.
        #expect(info.streamLength == 65536)
        #expect(try #require(UInt64(meta["original-size"] ?? "")) > info.fileSize)

        // The header re-encodes byte for byte, and the data area too (libvirt zero-fills it).
        let bytes = try readFile(path)
        #expect(info.header.encoded() == Array(bytes[0..<92]))
        let area = try info.dataArea.encoded(dataLength: info.header.dataLength)
        #expect(area.bytes == Array(bytes[92..<Int(info.streamOffset)]))
        #expect(area.cookieOffset == info.header.cookieOffset)

        let head = Array(bytes[Int(info.streamOffset)..<Int(info.streamOffset) + 8])
        #expect(head.map { String(format: "%02x", $0) }.joined() == meta["stream-head"])
    }

    @Test("the raw libvirt stream starts with QEMU's QEVM magic and version 3")
    func libvirtRawStream() throws {
        let path = Self.fixtures.appendingPathComponent("libvirt-9.0-raw.save").path
        let report = try SaveImage.verify(path: path)
        #expect(report.streamVersion == 3)
        #expect(report.streamBytes == 65536)
    }

    @Test("the gzip libvirt stream decompresses to a QEVM stream (the fixture is truncated, so gzip reports it)")
    func libvirtGzipStream() throws {
        guard programExists("gzip") else {
            print("skipping: gzip is not installed")
            return
        }
        let path = Self.fixtures.appendingPathComponent("libvirt-9.0-gzip.save").path
        let reader = try SaveImageReader(path: path)
        let stream = try reader.openStream()
        var head = [UInt8](repeating: 0, count: 8)
        let n = try head.withUnsafeMutableBytes { try stream.read(into: $0) }
        stream.cancel()
        #expect(n == 8)
        #expect(head == Array(Samples.streamPrefix.prefix(8)))
        // Truncated: a full pass must fail, and say so through gzip's status.
        let error = try #require(throws: SaveImageError.self) { try SaveImage.verify(path: path) }
        #expect(error.code == .processExited)
    }

    @Test("libvirt's rewrite rules hold on a libvirt image: a larger XML fits in the padding, the cookie stays")
    func rewriteLibvirtImage() throws {
        let dir = try TemporaryDirectory()
        let path = dir.file("copy.save")
        let source = Self.fixtures.appendingPathComponent("libvirt-9.0-raw.save").path
        try writeFile(path, try readFile(source))
        let before = try SaveImage.read(path: path)
        let xml = before.dataArea.xml.replacingOccurrences(
            of: "</domain>", with: "  <description>\(String(repeating: "x", count: 100))</description>\n</domain>")
        try SaveImage.rewriteDataArea(path: path, xml: xml)
        let after = try SaveImage.read(path: path)
        #expect(after.header.dataLength == before.header.dataLength)
        #expect(after.header.cookieOffset == before.header.cookieOffset + 130)
        #expect(after.dataArea.cookie == before.dataArea.cookie)
        #expect(after.dataArea.xml == xml)
        let original = try readFile(source)
        #expect(Array(try readFile(path)[Int(after.streamOffset)...]) == Array(original[Int(before.streamOffset)...]))
    }

    @Test("virsh save-image-dumpxml accepts an image written by SaveImageWriter")
    func virshReadsKeelImage() throws {
        guard let virsh = ["/usr/bin/virsh", "/usr/local/bin/virsh"].first(where: FileManager.default.isExecutableFile) else {
            print("skipping: virsh is not installed, so libvirt cannot be asked to read a Keel image")
            return
        }
        let dir = try TemporaryDirectory()
        let xml = """
            <domain type='qemu'>
              <name>keel-written</name>
              <uuid>6b0d6c52-6b1c-4c8f-9a57-3c1f4c0e2d11</uuid>
              <memory unit='KiB'>32768</memory>
              <currentMemory unit='KiB'>32768</currentMemory>
              <vcpu placement='static'>1</vcpu>
              <os>
                <type arch='x86_64' machine='pc'>hvm</type>
              </os>
              <devices>
                <emulator>/usr/bin/qemu-system-x86_64</emulator>
              </devices>
            </domain>

            """
        for compression in [SaveImageCompression.raw, .gzip] {
            let path = dir.file("keel-\(compression).save")
            try writeImage(path, xml: xml, cookie: "<cookie>\n  <slirpHelper/>\n</cookie>\n", compression: compression,
                           stream: Samples.stream(count: 4096))
            let result = try run(virsh, ["-c", "qemu:///embed?root=\(dir.path)/embed", "save-image-dumpxml", path])
            guard result.status == 0 || !result.stderr.contains("embed") else {
                print("skipping: this virsh cannot open qemu:///embed (\(result.stderr))")
                return
            }
            #expect(result.status == 0, "virsh failed: \(result.stderr)")
            #expect(result.stdout.contains("<name>keel-written</name>"))
            #expect(result.stdout.contains("<uuid>6b0d6c52-6b1c-4c8f-9a57-3c1f4c0e2d11</uuid>"))
        }

        // And libvirt refuses the same image while it is still partial.
        let partial = dir.file("partial.save")
        let writer = try SaveImageWriter(path: partial, dataArea: SaveImageDataArea(xml: xml), wasRunning: true)
        try writer.write(Samples.stream(count: 4096))
        let result = try run(virsh, ["-c", "qemu:///embed?root=\(dir.path)/embed", "save-image-dumpxml", partial])
        #expect(result.status != 0)
        #expect(result.stderr.contains("save image is incomplete"))
        writer.discard()
    }

    private func run(_ program: String, _ arguments: [String]) throws -> (status: Int32, stdout: String, stderr: String) {
        let result = try Subprocess.run(program, arguments, timeout: 120)
        if result.timedOut { throw Subprocess.Failure(description: "\(program) \(arguments) did not finish within 120 s") }
        return (result.status, result.stdout, result.stderr)
    }
}
