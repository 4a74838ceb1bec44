import Glibc
import KeelCPU
import KeelXML

extension CapabilitiesProbe {
    /// The cache file of `binary` under `accelerator`: the binary's path with `/` turned into
    /// `_` (other characters outside `[A-Za-z0-9._+-]` too), then `-<accel>.xml`.
    public static func cachePath(binary: String, accelerator: QEMUCapabilities.Accelerator, cacheDirectory: String) -> String {
        var name = ""
        for scalar in binary.unicodeScalars.drop(while: { $0 == "/" }) {
            let keep = scalar.isASCII && (scalar.properties.isAlphabetic || ("0"..."9").contains(scalar) || "._+-".unicodeScalars.contains(scalar))
            name.unicodeScalars.append(keep ? scalar : "_")
        }
        let directory = cacheDirectory.hasSuffix("/") ? String(cacheDirectory.dropLast()) : cacheDirectory
        return "\(directory)/\(name)-\(accelerator.rawValue).xml"
    }

    /// `size:mtime:inode` of the file `binary` names (symlinks followed), so that an upgraded
    /// or replaced QEMU is probed again.
    ///
    /// - Throws: `QEMUError` `.notFound` when there is no such file, `.invalidArgument` when
    ///   it is not an executable regular file.
    public static func binaryIdentity(_ binary: String) throws -> String {
        var info = stat()
        guard stat(binary, &info) == 0 else {
            if errno == ENOENT || errno == ENOTDIR {
                throw QEMUError(.notFound, "QEMU binary \(binary) not found")
            }
            throw QEMUError(.io, "cannot stat \(binary): \(errnoText())")
        }
        guard (info.st_mode & S_IFMT) == S_IFREG, access(binary, X_OK) == 0 else {
            throw QEMUError(.invalidArgument, "\(binary) is not an executable file")
        }
        return "\(info.st_size):\(info.st_mtim.tv_sec).\(info.st_mtim.tv_nsec):\(info.st_ino)"
    }

    /// The probe's version and a fingerprint of `map`: the translated names, the bits and the
    /// host model all depend on the map.
    public static func probeKey(map: CPUMap) -> String {
        var hash = FNV1a()
        for feature in map.features {
            hash.add(feature.name)
            for alias in feature.qemuAliases { hash.add("=" + alias) }
            for location in feature.locations { hash.add(location.description) }
            hash.add(feature.migratable ? "m" : "-")
        }
        for model in map.models {
            hash.add("model " + model.name + " " + (model.vendor ?? "") + " " + (model.aliasOf ?? ""))
            hash.add(model.decodeHost ? "h" : "-")
            hash.add(model.decodeGuest ? "g" : "-")
            for signature in model.signatures {
                hash.add("\(signature.family)/\(signature.model)/\(signature.steppings.map(String.init) ?? "*")")
            }
            for name in map.featureNames(in: model.bits) { hash.add(name) }
            for name in model.removedFeatures { hash.add("-" + name) }
        }
        return "\(version):" + String(hash.value, radix: 16)
    }

    /// The cached capabilities at `path`, or nil when the file is missing, unreadable,
    /// corrupted or stale.
    static func cachedCapabilities(
        at path: String, binary: String, identity: String, accelerator: QEMUCapabilities.Accelerator, probeKey: String
    ) -> QEMUCapabilities? {
        guard let bytes = try? POSIXFile.read(path, limit: 4 << 20),
              let root = try? XMLParser.parse(bytes),
              let cached = try? QEMUCapabilities(xml: root)
        else { return nil }
        guard cached.binary == binary, cached.binaryIdentity == identity, cached.accelerator == accelerator,
              cached.probeKey == probeKey, !cached.version.isEmpty
        else { return nil }
        return cached
    }

    /// A fresh private directory inside `parent`.
    static func makeTemporaryDirectory(in parent: String) throws -> String {
        var template = Array((parent + "/probe.XXXXXX").utf8CString)
        let made = template.withUnsafeMutableBufferPointer { buffer in
            buffer.baseAddress.flatMap { mkdtemp($0) }.map { String(cString: $0) }
        }
        guard let made else {
            throw QEMUError(.io, "cannot create a probe directory in \(parent): \(errnoText())")
        }
        return made
    }

    /// Removes the probe's directory and the files QEMU left in it.
    static func removeTemporaryDirectory(_ directory: String) {
        for name in POSIXFile.list(directory) {
            POSIXFile.remove(directory + "/" + name)
        }
        rmdir(directory)
    }
}

/// 64-bit FNV-1a, for fingerprints that must be stable across runs (unlike `Hasher`).
struct FNV1a {
    private(set) var value: UInt64 = 0xcbf2_9ce4_8422_2325

    mutating func add(_ text: String) {
        for byte in text.utf8 {
            value ^= UInt64(byte)
            value = value &* 0x0000_0100_0000_01b3
        }
        // A separator, so that "ab"+"c" and "a"+"bc" differ.
        value ^= 0xff
        value = value &* 0x0000_0100_0000_01b3
    }
}
