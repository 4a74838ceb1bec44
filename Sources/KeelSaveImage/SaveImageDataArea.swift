/// The data area between the header and the QEMU stream: domain XML and optional save cookie.
///
/// | Offset in data area | Size              | Content |
/// |--------------------:|-------------------|---------|
/// | 0                   | `xml.utf8 + 1`    | domain XML, NUL-terminated |
/// | `cookieOffset`      | `cookie.utf8 + 1` | cookie XML, NUL-terminated (only when `cookieOffset != 0`) |
/// | …                   | rest              | zeros; 65536 bytes on first write, the slack a later rewrite may use |
///
/// `cookieOffset` in the header equals the XML length including its NUL. A reader that predates
/// the cookie reads the whole area as one C string, stops at the XML's NUL and never sees it.
public struct SaveImageDataArea: Sendable, Equatable {
    /// Zero bytes appended on first write so the XML can later grow in place (libvirt's 64 KiB).
    public static let padding: UInt32 = 65536
    /// Keel's cap on `dataLength` when reading. libvirt has none; real images hold a few KiB of
    /// XML and the 64 KiB padding, so 16 MiB is far above anything legitimate.
    public static let maximumLength: UInt32 = 16 << 20

    /// The domain XML (without its NUL).
    public var xml: String
    /// The save cookie XML (without its NUL), or `nil` when the image has none.
    public var cookie: String?

    /// Creates a data area.
    /// - Parameters:
    ///   - xml: The domain XML.
    ///   - cookie: The save cookie XML, or `nil` for none.
    public init(xml: String, cookie: String? = nil) {
        self.xml = xml
        self.cookie = cookie
    }

    /// The bytes the XML and cookie occupy, each with its NUL, without padding.
    public var contentLength: Int {
        xml.utf8.count + 1 + (cookie.map { $0.utf8.count + 1 } ?? 0)
    }
}

extension SaveImageDataArea {
    /// Splits a data area read from an image into its XML and cookie.
    ///
    /// The XML occupies `[0, cookieOffset)` (the whole area when there is no cookie) and the cookie
    /// `[cookieOffset, dataLength)`. Each must end with a NUL inside its own region and be valid
    /// UTF-8; the XML must not be empty.
    /// - Parameters:
    ///   - bytes: Exactly `header.dataLength` bytes.
    ///   - header: A header that passed ``SaveImageHeader/validate(fileSize:options:)``.
    /// - Throws: ``SaveImageError`` with code `.corrupt` naming the region at fault.
    public init(decoding bytes: [UInt8], header: SaveImageHeader) throws {
        guard bytes.count == Int(header.dataLength) else {
            throw SaveImageError(
                .corrupt,
                "data area is \(bytes.count) bytes, header data length is \(header.dataLength)"
            )
        }
        let cookieOffset = Int(header.effectiveCookieOffset)
        guard cookieOffset < bytes.count else {
            throw SaveImageError(
                .corrupt,
                "header cookie offset is outside the data area: \(cookieOffset) >= data length \(bytes.count)"
            )
        }
        let xmlEnd = cookieOffset == 0 ? bytes.count : cookieOffset
        let xml = try Self.string(in: bytes[0..<xmlEnd], name: "domain XML")
        guard !xml.isEmpty else {
            throw SaveImageError(.corrupt, "domain XML is empty")
        }
        self.xml = xml
        if cookieOffset == 0 {
            self.cookie = nil
        } else {
            self.cookie = try Self.string(in: bytes[cookieOffset...], name: "cookie")
        }
    }

    /// Encodes the data area: XML, NUL, cookie, NUL, zeros up to `dataLength`.
    /// - Parameters:
    ///   - dataLength: The area's length: `nil` for a new image (content + 64 KiB padding), or the
    ///     existing image's length on a rewrite, which must not change.
    /// - Returns: The bytes and the header's `cookieOffset` (0 without a cookie).
    /// - Throws: ``SaveImageError`` `.invalidArgument` when the XML is empty or a string holds a
    ///   NUL; `.tooLarge` when the content does not fit `dataLength` or exceeds the cap.
    public func encoded(dataLength: UInt32? = nil) throws -> (bytes: [UInt8], cookieOffset: UInt32) {
        guard !xml.isEmpty else {
            throw SaveImageError(.invalidArgument, "domain XML is empty")
        }
        guard !xml.utf8.contains(0) else {
            throw SaveImageError(.invalidArgument, "domain XML contains a NUL byte")
        }
        if let cookie, cookie.utf8.contains(0) {
            throw SaveImageError(.invalidArgument, "cookie contains a NUL byte")
        }
        let content = contentLength
        let total: Int
        if let dataLength {
            guard content <= Int(dataLength) else {
                throw SaveImageError(
                    .tooLarge,
                    "new xml too large to fit in file: \(content) bytes > data length \(dataLength)"
                )
            }
            total = Int(dataLength)
        } else {
            total = content + Int(Self.padding)
        }
        guard total <= Int(Self.maximumLength) else {
            throw SaveImageError(
                .tooLarge,
                "data area is too large: \(total) bytes > \(Self.maximumLength)"
            )
        }
        // Zero-filled first: the NULs and the padding come for free.
        var bytes = [UInt8](repeating: 0, count: total)
        let xmlBytes = Array(xml.utf8)
        bytes.replaceSubrange(0..<xmlBytes.count, with: xmlBytes)
        var cookieOffset: UInt32 = 0
        if let cookie {
            let start = xmlBytes.count + 1
            let cookieBytes = Array(cookie.utf8)
            cookieOffset = UInt32(start)
            bytes.replaceSubrange(start..<(start + cookieBytes.count), with: cookieBytes)
        }
        return (bytes, cookieOffset)
    }

    /// The NUL-terminated UTF-8 string at the start of `region`.
    private static func string(in region: ArraySlice<UInt8>, name: String) throws -> String {
        guard let end = region.firstIndex(of: 0) else {
            throw SaveImageError(
                .corrupt,
                "\(name) is not NUL-terminated within its \(region.count)-byte region"
            )
        }
        guard let text = String(validating: region[region.startIndex..<end], as: UTF8.self) else {
            throw SaveImageError(.corrupt, "\(name) is not valid UTF-8")
        }
        return text
    }
}
