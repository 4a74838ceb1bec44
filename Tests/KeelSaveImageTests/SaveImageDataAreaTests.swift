import Testing

@testable import KeelSaveImage

@Suite("Save image data area and hostile input")
struct SaveImageDataAreaTests {
    @Test("a new data area is XML, NUL, cookie, NUL and 64 KiB of zeros; cookieOffset is the XML length with NUL")
    func layout() throws {
        let area = SaveImageDataArea(xml: "<domain/>", cookie: "<cookie/>")
        let (bytes, cookieOffset) = try area.encoded()
        #expect(cookieOffset == 10)
        #expect(bytes.count == 10 + 10 + 65536)
        #expect(Array(bytes[0..<10]) == Array("<domain/>\0".utf8))
        #expect(Array(bytes[10..<20]) == Array("<cookie/>\0".utf8))
        #expect(bytes[20...].allSatisfy { $0 == 0 })
    }

    @Test("without a cookie the offset is 0 and the XML fills the area")
    func noCookie() throws {
        let (bytes, cookieOffset) = try SaveImageDataArea(xml: "<domain/>").encoded()
        #expect(cookieOffset == 0)
        #expect(bytes.count == 10 + 65536)
        var header = SaveImageHeader(wasRunning: false)
        header.dataLength = UInt32(bytes.count)
        #expect(try SaveImageDataArea(decoding: bytes, header: header) == SaveImageDataArea(xml: "<domain/>"))
    }

    @Test("a rewrite keeps the data length and refuses content that does not fit")
    func rewriteFits() throws {
        let area = SaveImageDataArea(xml: String(repeating: "x", count: 100), cookie: "<cookie/>")
        #expect(try area.encoded(dataLength: 111).bytes.count == 111)
        let error = try #require(throws: SaveImageError.self) { try area.encoded(dataLength: 110) }
        #expect(error.code == .tooLarge)
        #expect(error.message == "new xml too large to fit in file: 111 bytes > data length 110")
    }

    @Test("writing refuses an empty XML and embedded NULs")
    func invalidContent() throws {
        for area in [
            SaveImageDataArea(xml: ""), SaveImageDataArea(xml: "a\0b"), SaveImageDataArea(xml: "a", cookie: "\0"),
        ] {
            let error = try #require(throws: SaveImageError.self) { try area.encoded() }
            #expect(error.code == .invalidArgument)
        }
    }

    @Test("data area round-trips for seeded random XML and cookie strings")
    func roundTrip() throws {
        var rng = SplitMix64(seed: 7)
        let alphabet = Array("<>/='abcdefghé€😀 \n\t")
        for _ in 0..<200 {
            let xml = String((0..<Int.random(in: 1...300, using: &rng)).map { _ in alphabet.randomElement(using: &rng) ?? "a" })
            let cookie: String? =
                Bool.random(using: &rng)
                ? String((0..<Int.random(in: 0...200, using: &rng)).map { _ in alphabet.randomElement(using: &rng) ?? "a" })
                : nil
            let area = SaveImageDataArea(xml: xml, cookie: cookie)
            let (bytes, offset) = try area.encoded()
            var header = SaveImageHeader(wasRunning: true)
            header.dataLength = UInt32(bytes.count)
            header.cookieOffset = offset
            #expect(try SaveImageDataArea(decoding: bytes, header: header) == area)
        }
    }

    struct BadImage: Sendable, CustomTestStringConvertible {
        var name: String
        var bytes: [UInt8]
        var code: SaveImageError.Code
        var message: String
        var fileSize: UInt64? = nil
        var testDescription: String { name }
    }

    static let xml = Array("<domain/>\0".utf8)
    static let badImages: [BadImage] = [
        BadImage(
            name: "data length over the cap", bytes: handMadeImage(words: [2, 16 << 20 + 1], dataArea: xml),
            code: .tooLarge, message: "header data length is too large: 16777217 > 16777216"),
        BadImage(
            name: "data length 0x7fffffff", bytes: handMadeImage(words: [2, 0x7fff_ffff], dataArea: xml),
            code: .tooLarge, message: "header data length is too large: 2147483647 > 16777216"),
        BadImage(
            name: "cookie offset equal to data length", bytes: handMadeImage(words: [2, 10, 0, 0, 10], dataArea: xml),
            code: .corrupt, message: "header cookie offset is outside the data area: 10 >= data length 10"),
        BadImage(
            name: "cookie offset beyond data length",
            bytes: handMadeImage(words: [2, 10, 0, 0, 0xffff_ffff], dataArea: xml),
            code: .corrupt, message: "header cookie offset is outside the data area: 4294967295 >= data length 10"),
        BadImage(
            name: "stream offset beyond the file", bytes: handMadeImage(words: [2, 1000], dataArea: xml, stream: []),
            code: .corrupt, message: "stream offset 1092 is beyond the end of the file (102 bytes)"),
        BadImage(
            name: "unknown compression", bytes: handMadeImage(words: [2, 10, 0, 9], dataArea: xml),
            code: .unsupported, message: "image compression is not supported: 9"),
        BadImage(
            name: "XML without NUL", bytes: handMadeImage(words: [2, 9], dataArea: Array("<domain/>".utf8)),
            code: .corrupt, message: "domain XML is not NUL-terminated within its 9-byte region"),
        BadImage(
            name: "XML whose NUL lies in the cookie region",
            bytes: handMadeImage(words: [2, 14, 0, 0, 5], dataArea: Array("<domain/>c\0\0\0\0".utf8)),
            code: .corrupt, message: "domain XML is not NUL-terminated within its 5-byte region"),
        BadImage(
            name: "cookie without NUL", bytes: handMadeImage(words: [2, 14, 0, 0, 10], dataArea: xml + Array("<c/>".utf8)),
            code: .corrupt, message: "cookie is not NUL-terminated within its 4-byte region"),
        BadImage(
            name: "empty XML", bytes: handMadeImage(words: [2, 10], dataArea: Array(repeating: 0, count: 10)),
            code: .corrupt, message: "domain XML is empty"),
        BadImage(
            name: "XML not UTF-8", bytes: handMadeImage(words: [2, 4], dataArea: [0x3c, 0xff, 0x3e, 0]),
            code: .corrupt, message: "domain XML is not valid UTF-8"),
        BadImage(
            name: "cookie not UTF-8", bytes: handMadeImage(words: [2, 13, 0, 0, 10], dataArea: xml + [0xc3, 0x28, 0]),
            code: .corrupt, message: "cookie is not valid UTF-8"),
    ]

    @Test("each hostile image is refused with its own code and a message naming field and value", arguments: badImages)
    func hostile(_ bad: BadImage) throws {
        let error = try #require(throws: SaveImageError.self) {
            try SaveImageInfo(parsing: bad.bytes, fileSize: bad.fileSize)
        }
        #expect(error.code == bad.code)
        #expect(error.message == bad.message)
    }

    @Test("an unknown compression is accepted for metadata reads, as libvirt's save-image-dumpxml does")
    func lenientCompression() throws {
        let bytes = handMadeImage(words: [2, 10, 1, 9], dataArea: Self.xml)
        let info = try SaveImageInfo(parsing: bytes, options: .metadata)
        #expect(info.header.compression == nil)
        #expect(info.header.compressionValue == 9)
        #expect(info.dataArea.xml == "<domain/>")
    }

    @Test("a version-1 image ignores the cookie offset and compression words")
    func versionOne() throws {
        let bytes = handMadeImage(words: [1, 10, 1, 9, 0xffff], dataArea: Self.xml)
        let info = try SaveImageInfo(parsing: bytes)
        #expect(info.dataArea == SaveImageDataArea(xml: "<domain/>"))
        #expect(info.header.streamCompression == .raw)
    }

    @Test("an empty cookie string is kept as an empty cookie, and the stream starts right after the data area")
    func emptyCookie() throws {
        let bytes = handMadeImage(words: [2, 12, 0, 0, 10], dataArea: Self.xml + [0, 0])
        let info = try SaveImageInfo(parsing: bytes)
        #expect(info.dataArea.cookie == "")
        #expect(info.streamOffset == 104)
        #expect(info.streamLength == UInt64(Samples.streamPrefix.count))
    }
}
