/// The fixed 92-byte header at the start of a libvirt QEMU save image (`virQEMUSaveHeader`).
///
/// | Offset | Size | Field (libvirt name)       | Meaning |
/// |-------:|-----:|----------------------------|---------|
/// | 0      | 16   | `magic`                    | `LibvirtQemudSave` (complete) or `LibvirtQemudPart` (being written); no NUL |
/// | 16     | 4    | `version`                  | 2 on write; 1 for early images (no compression, no cookie) |
/// | 20     | 4    | `data_len` (was `xml_len`) | length of the data area: XML + NUL + cookie + NUL + padding |
/// | 24     | 4    | `was_running`              | non-zero: resume the guest's CPUs after restore |
/// | 28     | 4    | `compressed`               | ``SaveImageCompression`` raw value of the QEMU stream (version 2 only) |
/// | 32     | 4    | `cookieOffset`             | offset of the cookie in the data area (= XML length incl. NUL); 0 = no cookie |
/// | 36     | 56   | `unused[14]`               | zero |
///
/// All integers are `uint32_t` in the byte order of the host that wrote the image; libvirt writes
/// the struct's memory as is. A reader that sees `version > 2` swaps all five integer fields and
/// tries again, which is how images from a host of the other byte order are recognised.
public struct SaveImageHeader: Sendable, Equatable {
    /// The size of the header on disk.
    public static let size = 92

    /// Magic of a complete image (`QEMU_SAVE_MAGIC`). ABI: never change.
    public static let magic: [UInt8] = Array("LibvirtQemudSave".utf8)
    /// Magic of an image still being written (`QEMU_SAVE_PARTIAL`). ABI: never change.
    public static let partialMagic: [UInt8] = Array("LibvirtQemudPart".utf8)
    /// The version written (`QEMU_SAVE_VERSION`). ABI: never change.
    public static let currentVersion: UInt32 = 2
    /// The number of reserved words after `cookieOffset`.
    public static let unusedWordCount = 14

    /// The byte order of the header's integer fields.
    public enum ByteOrder: Sendable, Hashable {
        case littleEndian
        case bigEndian

        /// The byte order of the host running this code.
        public static var host: ByteOrder {
            UInt32(1).littleEndian == 1 ? .littleEndian : .bigEndian
        }
    }

    /// `true` for `LibvirtQemudSave`, `false` for `LibvirtQemudPart`.
    public var isComplete: Bool
    /// Format version: 1 or 2.
    public var version: UInt32
    /// Length of the data area that follows the header (`data_len`).
    public var dataLength: UInt32
    /// The raw `was_running` word; libvirt treats any non-zero value as "running".
    public var wasRunningValue: UInt32
    /// The raw `compressed` word, kept as stored so unknown values survive a rewrite.
    public var compressionValue: UInt32
    /// Offset of the cookie within the data area; 0 means no cookie.
    public var cookieOffset: UInt32
    /// The 14 reserved words, kept as stored so a rewrite does not disturb them.
    public private(set) var unusedWords: [UInt32]
    /// The byte order the integer fields are stored in.
    public var byteOrder: ByteOrder

    /// Creates a header for a new image: partial magic, version 2, zero data length.
    /// - Parameters:
    ///   - wasRunning: Whether the guest's CPUs should be resumed after restore.
    ///   - compression: The compression of the QEMU stream.
    ///   - byteOrder: The byte order to write; libvirt always uses the host's.
    public init(wasRunning: Bool, compression: SaveImageCompression = .raw, byteOrder: ByteOrder = .host) {
        self.isComplete = false
        self.version = Self.currentVersion
        self.dataLength = 0
        self.wasRunningValue = wasRunning ? 1 : 0
        self.compressionValue = compression.rawValue
        self.cookieOffset = 0
        self.unusedWords = Array(repeating: 0, count: Self.unusedWordCount)
        self.byteOrder = byteOrder
    }

    /// Whether the guest's CPUs should be resumed after restore.
    public var wasRunning: Bool {
        get { wasRunningValue != 0 }
        set { wasRunningValue = newValue ? 1 : 0 }
    }

    /// The stored compression, or `nil` when the value is not one Keel knows.
    public var compression: SaveImageCompression? {
        get { SaveImageCompression(rawValue: compressionValue) }
        set { compressionValue = (newValue ?? .raw).rawValue }
    }

    /// The compression that actually applies to the QEMU stream.
    ///
    /// libvirt decompresses only when `version == 2`; a version-1 stream is always raw, whatever
    /// the (then unused) word at offset 28 holds. `nil` when the stored value is unknown.
    public var streamCompression: SaveImageCompression? {
        version == 2 ? compression : .raw
    }

    /// The cookie offset that applies: version-1 images have no cookie, so their word at offset 32
    /// is ignored.
    public var effectiveCookieOffset: UInt32 {
        version >= 2 ? cookieOffset : 0
    }

    /// The file offset of the QEMU stream: header plus data area.
    public var streamOffset: UInt64 {
        UInt64(Self.size) + UInt64(dataLength)
    }
}

extension SaveImageHeader {
    /// Decodes and checks a header from its 92 bytes, following libvirt's `qemuSaveImageOpen`.
    ///
    /// Rules, in order: the magic must be `Save` (a `Part` magic is ``SaveImageError/Code/incomplete``);
    /// the fields are read in host order and, if `version > 2`, swapped and read again; the version
    /// must then be 1 or 2; `dataLength` must be non-zero. Checks that need the file size or the
    /// data area are in ``validate(fileSize:options:)``.
    /// - Parameters:
    ///   - bytes: At least 92 bytes; only the first 92 are used.
    ///   - allowIncomplete: Accept the `LibvirtQemudPart` magic and set `isComplete` to `false`.
    /// - Throws: ``SaveImageError`` with code `.incomplete`, `.corrupt` or `.unsupported`.
    public init(decoding bytes: some Collection<UInt8>, allowIncomplete: Bool = false) throws {
        let raw = Array(bytes.prefix(Self.size))
        guard raw.count == Self.size else {
            throw SaveImageError(
                .incomplete,
                "save image is incomplete (header is \(raw.count) of \(Self.size) bytes)"
            )
        }
        let magic = Array(raw[0..<16])
        if magic == Self.magic {
            isComplete = true
        } else if magic == Self.partialMagic {
            guard allowIncomplete else {
                throw SaveImageError(.incomplete, "save image is incomplete (magic LibvirtQemudPart)")
            }
            isComplete = false
        } else {
            throw SaveImageError(.corrupt, "image magic is incorrect (\(Self.describeMagic(magic)))")
        }

        var order = ByteOrder.host
        var version = Self.word(raw, at: 16, order)
        if version > Self.currentVersion {
            // libvirt's rule for images from a host of the other byte order.
            let swapped = order == .littleEndian ? ByteOrder.bigEndian : .littleEndian
            let swappedVersion = Self.word(raw, at: 16, swapped)
            guard swappedVersion <= Self.currentVersion else {
                throw SaveImageError(
                    .unsupported,
                    "image version is not supported (\(version) > \(Self.currentVersion))"
                )
            }
            order = swapped
            version = swappedVersion
        }
        guard version >= 1 else {
            // libvirt 9.0 lets 0 through; no libvirt ever wrote it, so Keel refuses.
            throw SaveImageError(.unsupported, "image version is not supported (0)")
        }
        self.version = version
        self.byteOrder = order
        self.dataLength = Self.word(raw, at: 20, order)
        self.wasRunningValue = Self.word(raw, at: 24, order)
        self.compressionValue = Self.word(raw, at: 28, order)
        self.cookieOffset = Self.word(raw, at: 32, order)
        // libvirt never swaps the unused words; keep them exactly as stored.
        self.unusedWords = (0..<Self.unusedWordCount).map { Self.word(raw, at: 36 + 4 * $0, .host) }

        guard dataLength > 0 else {
            throw SaveImageError(.corrupt, "invalid header data length: 0")
        }
    }

    /// Encodes the header to its 92 on-disk bytes in ``byteOrder``.
    public func encoded() -> [UInt8] {
        var out = isComplete ? Self.magic : Self.partialMagic
        out.reserveCapacity(Self.size)
        for value in [version, dataLength, wasRunningValue, compressionValue, cookieOffset] {
            Self.append(value, to: &out, byteOrder)
        }
        for value in unusedWords {
            Self.append(value, to: &out, .host)
        }
        return out
    }

    /// Checks the header against the file it came from and Keel's hostile-input limits.
    ///
    /// - Parameters:
    ///   - fileSize: The size of the image file in bytes.
    ///   - options: Whether an unknown compression value is acceptable.
    /// - Throws: ``SaveImageError``: `.tooLarge` when `dataLength` exceeds
    ///   ``SaveImageDataArea/maximumLength``, `.corrupt` when the cookie offset lies outside the
    ///   data area or the stream offset beyond the end of the file, `.unsupported` for an unknown
    ///   compression under ``SaveImageReadOptions/strict``.
    public func validate(fileSize: UInt64, options: SaveImageReadOptions = .strict) throws {
        guard dataLength <= SaveImageDataArea.maximumLength else {
            throw SaveImageError(
                .tooLarge,
                "header data length is too large: \(dataLength) > \(SaveImageDataArea.maximumLength)"
            )
        }
        let cookie = effectiveCookieOffset
        guard cookie < dataLength else {
            throw SaveImageError(
                .corrupt,
                "header cookie offset is outside the data area: \(cookie) >= data length \(dataLength)"
            )
        }
        if streamCompression == nil && !options.allowsUnknownCompression {
            throw SaveImageError(.unsupported, "image compression is not supported: \(compressionValue)")
        }
        guard streamOffset <= fileSize else {
            throw SaveImageError(
                .corrupt,
                "stream offset \(streamOffset) is beyond the end of the file (\(fileSize) bytes)"
            )
        }
    }

    static func word(_ bytes: [UInt8], at offset: Int, _ order: ByteOrder) -> UInt32 {
        let b0 = UInt32(bytes[offset]), b1 = UInt32(bytes[offset + 1])
        let b2 = UInt32(bytes[offset + 2]), b3 = UInt32(bytes[offset + 3])
        switch order {
        case .littleEndian: return b0 | b1 << 8 | b2 << 16 | b3 << 24
        case .bigEndian: return b3 | b2 << 8 | b1 << 16 | b0 << 24
        }
    }

    static func append(_ value: UInt32, to out: inout [UInt8], _ order: ByteOrder) {
        let le: [UInt8] = [UInt8(value & 0xff), UInt8(value >> 8 & 0xff), UInt8(value >> 16 & 0xff), UInt8(value >> 24)]
        out.append(contentsOf: order == .littleEndian ? le : le.reversed())
    }

    /// Renders a magic for an error message: printable ASCII as text, anything else in hex.
    static func describeMagic(_ magic: [UInt8]) -> String {
        if magic.allSatisfy({ $0 >= 0x20 && $0 < 0x7f }) {
            return "'" + String(decoding: magic, as: UTF8.self) + "'"
        }
        return "0x" + magic.map { ($0 < 16 ? "0" : "") + String($0, radix: 16) }.joined()
    }
}
