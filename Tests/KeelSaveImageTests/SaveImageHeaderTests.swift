import Testing

@testable import KeelSaveImage

@Suite("Save image header")
struct SaveImageHeaderTests {
    @Test("the header is 92 bytes and the ABI constants match libvirt's")
    func constants() {
        #expect(SaveImageHeader.size == 92)
        #expect(SaveImageHeader.magic == Array("LibvirtQemudSave".utf8))
        #expect(SaveImageHeader.partialMagic == Array("LibvirtQemudPart".utf8))
        #expect(SaveImageHeader.currentVersion == 2)
        #expect(SaveImageHeader(wasRunning: true).encoded().count == 92)
    }

    @Test("a header encodes each field at its documented offset in host (little-endian) order")
    func layout() throws {
        var header = SaveImageHeader(wasRunning: true, compression: .xz, byteOrder: .littleEndian)
        header.isComplete = true
        header.dataLength = 66998
        header.cookieOffset = 1181
        let bytes = header.encoded()
        #expect(Array(bytes[0..<16]) == Array("LibvirtQemudSave".utf8))
        #expect(Array(bytes[16..<20]) == [2, 0, 0, 0])
        #expect(Array(bytes[20..<24]) == [0xb6, 0x05, 0x01, 0x00])
        #expect(Array(bytes[24..<28]) == [1, 0, 0, 0])
        #expect(Array(bytes[28..<32]) == [3, 0, 0, 0])
        #expect(Array(bytes[32..<36]) == [0x9d, 0x04, 0, 0])
        #expect(bytes[36...].allSatisfy { $0 == 0 })
        #expect(try SaveImageHeader(decoding: bytes) == header)
    }

    @Test("decode(encode(h)) == h for seeded random headers in both byte orders")
    func roundTrip() throws {
        var rng = SplitMix64(seed: 42)
        for _ in 0..<2000 {
            var header = SaveImageHeader(
                wasRunning: Bool.random(using: &rng),
                byteOrder: Bool.random(using: &rng) ? .littleEndian : .bigEndian
            )
            header.isComplete = Bool.random(using: &rng)
            header.version = UInt32.random(in: 1...2, using: &rng)
            header.dataLength = UInt32.random(in: 1...UInt32.max, using: &rng)
            header.wasRunningValue = UInt32.random(in: 0...3, using: &rng)
            header.compressionValue = UInt32.random(in: 0...9, using: &rng)
            header.cookieOffset = UInt32.random(in: 0...UInt32.max, using: &rng)
            let decoded = try SaveImageHeader(decoding: header.encoded(), allowIncomplete: true)
            #expect(decoded == header)
        }
    }

    @Test("an image written on a big-endian host has all five integer fields swapped and decodes")
    func bigEndian() throws {
        let bytes = handMadeImage(words: [2, 70000, 1, 1, 1200], bigEndian: true, dataArea: [])
        let header = try SaveImageHeader(decoding: bytes)
        #expect(header.byteOrder == .bigEndian)
        #expect(header.version == 2)
        #expect(header.dataLength == 70000)
        #expect(header.wasRunning)
        #expect(header.compression == .gzip)
        #expect(header.cookieOffset == 1200)
        #expect(header.encoded() == Array(bytes[0..<92]))
    }

    @Test("a version-1 header has no cookie and its stream is always raw")
    func versionOne() throws {
        let bytes = handMadeImage(words: [1, 5000, 0, 3, 100], dataArea: [])
        let header = try SaveImageHeader(decoding: bytes)
        #expect(header.version == 1)
        #expect(header.compression == .xz)
        #expect(header.streamCompression == .raw)
        #expect(header.effectiveCookieOffset == 0)
        #expect(!header.wasRunning)
    }

    @Test("the partial magic reads as incomplete unless explicitly allowed")
    func partial() throws {
        let bytes = handMadeImage(magic: "LibvirtQemudPart", words: [2, 100], dataArea: [])
        let error = try #require(throws: SaveImageError.self) { try SaveImageHeader(decoding: bytes) }
        #expect(error.code == .incomplete)
        #expect(error.message == "save image is incomplete (magic LibvirtQemudPart)")
        let header = try SaveImageHeader(decoding: bytes, allowIncomplete: true)
        #expect(!header.isComplete)
    }

    struct BadHeader: Sendable, CustomTestStringConvertible {
        var name: String
        var bytes: [UInt8]
        var code: SaveImageError.Code
        var message: String
        var testDescription: String { name }
    }

    static let badHeaders: [BadHeader] = [
        BadHeader(
            name: "short", bytes: Array(handMadeImage(words: [2, 100], dataArea: []).prefix(40)),
            code: .incomplete, message: "save image is incomplete (header is 40 of 92 bytes)"),
        BadHeader(
            name: "empty file", bytes: [],
            code: .incomplete, message: "save image is incomplete (header is 0 of 92 bytes)"),
        BadHeader(
            name: "wrong magic", bytes: handMadeImage(magic: "LibvirtQemudSavX", words: [2, 100], dataArea: []),
            code: .corrupt, message: "image magic is incorrect ('LibvirtQemudSavX')"),
        BadHeader(
            name: "binary magic", bytes: [0, 1, 2, 0xff] + Array(repeating: 0, count: 88),
            code: .corrupt, message: "image magic is incorrect (0x000102ff000000000000000000000000)"),
        BadHeader(
            name: "version 3", bytes: handMadeImage(words: [3, 100], dataArea: []),
            code: .unsupported, message: "image version is not supported (3 > 2)"),
        BadHeader(
            name: "version 0", bytes: handMadeImage(words: [0, 100], dataArea: []),
            code: .unsupported, message: "image version is not supported (0)"),
        BadHeader(
            name: "data length 0", bytes: handMadeImage(words: [2, 0], dataArea: []),
            code: .corrupt, message: "invalid header data length: 0"),
        BadHeader(
            name: "data length 0 big-endian", bytes: handMadeImage(words: [2, 0], bigEndian: true, dataArea: []),
            code: .corrupt, message: "invalid header data length: 0"),
    ]

    @Test("each malformed header is refused with its own code and a message naming the value", arguments: badHeaders)
    func malformed(_ bad: BadHeader) throws {
        let error = try #require(throws: SaveImageError.self) { try SaveImageHeader(decoding: bad.bytes) }
        #expect(error.code == bad.code)
        #expect(error.message == bad.message)
    }

    @Test("compression values are libvirt's on-disk numbers with libvirt's program flags")
    func compressionTable() {
        #expect(SaveImageCompression.allCases.map(\.rawValue) == [0, 1, 2, 3, 4, 5])
        #expect(SaveImageCompression.allCases.map(\.name) == ["raw", "gzip", "bzip2", "xz", "lzop", "zstd"])
        #expect(SaveImageCompression.raw.program == nil)
        #expect(SaveImageCompression.gzip.compressArguments == ["-c"])
        #expect(SaveImageCompression.xz.compressArguments == ["-c", "-3"])
        #expect(SaveImageCompression.bzip2.decompressArguments == ["-dc"])
        #expect(SaveImageCompression.lzop.decompressArguments == ["-dc", "--ignore-warn"])
        #expect(SaveImageCompression(name: "zstd") == .zstd)
        #expect(SaveImageCompression(name: "lzma") == nil)
    }
}
