/// The compression of a save image's QEMU stream (libvirt's `virQEMUSaveFormat`).
///
/// Only the QEMU migration stream is compressed; the header and data area stay plain. The stream
/// is piped through the external program of the same name, exactly as libvirt does.
///
/// | Value | Case    | Compress        | Decompress                  |
/// |------:|---------|-----------------|-----------------------------|
/// | 0     | `raw`   | —               | —                           |
/// | 1     | `gzip`  | `gzip -c`       | `gzip -dc`                  |
/// | 2     | `bzip2` | `bzip2 -c`      | `bzip2 -dc`                 |
/// | 3     | `xz`    | `xz -c -3`      | `xz -dc`                    |
/// | 4     | `lzop`  | `lzop -c`       | `lzop -dc --ignore-warn`    |
/// | 5     | `zstd`  | `zstd -c`       | `zstd -dc`                  |
///
/// The values are on-disk ABI: add cases only at the end and never renumber or reuse one
/// (value 3 was briefly "lzma" during libvirt development and never released). libvirt 9.0
/// knows 0–4; zstd (5) came later upstream.
public enum SaveImageCompression: UInt32, Sendable, CaseIterable, CustomStringConvertible {
    case raw = 0  // ABI: never change
    case gzip = 1  // ABI: never change
    case bzip2 = 2  // ABI: never change
    case xz = 3  // ABI: never change
    case lzop = 4  // ABI: never change
    case zstd = 5  // ABI: never change

    /// The name used in `qemu.conf` (`save_image_format`), which is also the program's name.
    public var name: String {
        switch self {
        case .raw: return "raw"
        case .gzip: return "gzip"
        case .bzip2: return "bzip2"
        case .xz: return "xz"
        case .lzop: return "lzop"
        case .zstd: return "zstd"
        }
    }

    /// Looks a compression up by its `qemu.conf` name.
    /// - Parameters:
    ///   - name: `raw`, `gzip`, `bzip2`, `xz`, `lzop` or `zstd`.
    public init?(name: String) {
        guard let match = Self.allCases.first(where: { $0.name == name }) else {
            return nil
        }
        self = match
    }

    /// The program to run, looked up in `PATH`; `nil` for `raw`.
    public var program: String? {
        self == .raw ? nil : name
    }

    /// Arguments for compressing stdin to stdout.
    public var compressArguments: [String] {
        self == .xz ? ["-c", "-3"] : ["-c"]
    }

    /// Arguments for decompressing stdin to stdout.
    public var decompressArguments: [String] {
        // lzop warns (and fails) on trailing garbage without this; libvirt passes it too.
        self == .lzop ? ["-dc", "--ignore-warn"] : ["-dc"]
    }

    public var description: String { name }
}
