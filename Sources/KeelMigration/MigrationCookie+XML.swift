import KeelCPU
import KeelDomain
import KeelXML

extension MigrationCookie {
    /// The largest cookie Keel reads: far above a cookie with a persistent definition.
    public static let maximumSize = 4 << 20

    /// The cookie in libvirt's layout (`qemuMigrationCookieXMLFormat`), ending in a newline.
    public func formatted() -> String {
        var out = "<qemu-migration>\n"
        func line(_ text: String) {
            out += "  "
            out += text
            out += "\n"
        }
        func escaped(_ text: String) -> String {
            var result = ""
            XMLElement.appendEscaped(text, to: &result)
            return result
        }
        line("<name>\(escaped(name))</name>")
        line("<uuid>\(escaped(uuid))</uuid>")
        line("<hostname>\(escaped(hostname))</hostname>")
        line("<hostuuid>\(escaped(hostUUID))</hostuuid>")
        for feature in mandatory.names {
            line("<feature name='\(feature)'/>")
        }
        for slot in MigrationCookie.libvirtSlots {
            switch slot {
            case "domain":
                persistent?.xml.format(into: &out, indent: 2)
            case "statistics":
                statistics?.xmlElement.format(into: &out, indent: 2)
            case "cpu":
                cpu?.xmlElement.format(into: &out, indent: 2)
            case "capabilities":
                // libvirt writes the element open and closed on two lines even when empty.
                if let capabilities {
                    line("<capabilities>")
                    for capability in capabilities {
                        line("  <cap name='\(escaped(capability.name))' auto='\(capability.automatic ? "yes" : "no")'/>")
                    }
                    line("</capabilities>")
                }
            default:
                for element in uninterpreted where element.name == slot {
                    element.format(into: &out, indent: 2)
                }
            }
        }
        for element in unknownElements {
            element.format(into: &out, indent: 2)
        }
        abiRecord?.xmlElement.format(into: &out, indent: 2)
        out += "</qemu-migration>\n"
        return out
    }

    /// The cookie as it travels in libvirt's protocol: the text and its terminating NUL.
    public var wireBytes: [UInt8] {
        Array(formatted().utf8) + [0]
    }

    /// Reads a cookie as libvirt passes it: a NUL-terminated string.
    ///
    /// - Throws: `MigrationError` `.invalidCookie` when the last byte is not NUL, or as
    ///   `init(xmlString:)`.
    public init(wireBytes bytes: [UInt8]) throws {
        guard bytes.last == 0 else {
            throw MigrationError(.invalidCookie, "Migration cookie was not NULL terminated")
        }
        try self.init(xmlString: String(decoding: bytes.dropLast(), as: UTF8.self))
    }

    /// Parses cookie text.
    ///
    /// - Throws: `MigrationError` `.invalidCookie` for text that is not XML or a cookie that
    ///   breaks libvirt's rules, `.unsupported` naming an unknown mandatory feature.
    public init(xmlString: String) throws {
        let root: XMLElement
        do {
            root = try XMLParser.parse(xmlString, maximumSize: MigrationCookie.maximumSize)
        } catch let error as XMLError {
            throw MigrationError(.invalidCookie, "invalid migration cookie: \(error.description)")
        }
        try self.init(xml: root)
    }

    /// Reads a `<qemu-migration>` element with libvirt's checks: name, uuid, hostname and
    /// hostuuid present, every `<feature>` named and known, at most one `<domain>`. Which
    /// mandatory features a phase can honour, and whether the identity matches, is checked by
    /// `check(phase:name:uuid:localHostUUID:)`.
    ///
    /// - Throws: `MigrationError` with libvirt's message for the first problem.
    public init(xml root: XMLElement) throws {
        guard root.name == "qemu-migration" else {
            throw MigrationError(.invalidCookie, "invalid migration cookie: root element is '\(root.name)', expected 'qemu-migration'")
        }
        func required(_ element: String) throws -> String {
            guard let text = root.child(element)?.text, !text.isEmpty else {
                throw MigrationError(.invalidCookie, "missing \(element) element in migration data")
            }
            return text
        }
        self.init(name: try required("name"), uuid: try required("uuid"), hostname: try required("hostname"), hostUUID: try required("hostuuid"))
        guard MigrationCookie.normalizedUUID(hostUUID) != nil else {
            throw MigrationError(.invalidCookie, "malformed hostuuid element in migration data")
        }
        for feature in root.children(named: "feature") {
            guard let name = feature.attribute("name") else {
                throw MigrationError(.invalidCookie, "missing feature name")
            }
            guard let flag = Features(name: name) else {
                throw MigrationError(.unsupported, "Unknown migration cookie feature \(name)", cookieFeature: name)
            }
            mandatory.insert(flag)
        }
        let domains = root.children(named: "domain")
        if domains.count > 1 {
            throw MigrationError(.invalidCookie, "Too many domain elements in migration cookie")
        }
        var seen: Set<String> = []
        for element in root.elements {
            let first = seen.insert(element.name).inserted
            switch element.name {
            case "name", "uuid", "hostname", "hostuuid", "feature":
                if !first && element.name != "feature" { unknownElements.append(element) }
            case "domain":
                do {
                    persistent = try DomainDefinition(xml: element)
                } catch let error as DomainError {
                    throw MigrationError(.invalidCookie, "invalid persistent definition in migration cookie: \(error.message)")
                }
            case "statistics" where first:
                statistics = MigrationStatistics(xml: element)
            case "cpu" where first:
                do {
                    cpu = try CPUDefinition(xml: element, as: .guest)
                } catch let error as CPUError {
                    throw MigrationError(.invalidCookie, "invalid CPU in migration cookie: \(error.message)")
                }
            case "capabilities" where first:
                capabilities = try element.children(named: "cap").map { cap in
                    guard let name = cap.attribute("name") else {
                        throw MigrationError(.invalidCookie, "missing migration capability name")
                    }
                    return Capability(name: name, automatic: cap.attribute("auto") == "yes")
                }
            case let name where first && MigrationCookie.libvirtSlots.contains(name):
                uninterpreted.append(element)
            default:
                if ABIRecord.isRecord(element) && abiRecord == nil {
                    do {
                        abiRecord = try ABIRecord(xml: element)
                    } catch let error as DomainError {
                        throw MigrationError(.invalidCookie, "invalid ABI record in migration cookie: \(error.message)")
                    }
                } else {
                    unknownElements.append(element)
                }
            }
        }
    }

    /// Checks a received cookie for the phase that wrote it, as libvirt does: the domain is the
    /// one being migrated, the writer is another host, and every mandatory feature is one this
    /// reader can honour in this phase.
    ///
    /// - Parameters:
    ///   - phase: the phase that wrote the cookie.
    ///   - name: the domain's name as the reader knows it.
    ///   - uuid: the domain's UUID as the reader knows it.
    ///   - localHostUUID: the reader's host UUID.
    /// - Throws: `MigrationError` (`.unsupported` naming the feature, `.invalidCookie` for an
    ///   identity mismatch).
    public func check(phase: Phase, name expectedName: String, uuid expectedUUID: String, localHostUUID: String) throws {
        if name != expectedName {
            throw MigrationError(.invalidCookie, "Incoming cookie data had unexpected name \(name) vs \(expectedName)")
        }
        if MigrationCookie.normalizedUUID(uuid) != MigrationCookie.normalizedUUID(expectedUUID) {
            throw MigrationError(.invalidCookie, "Incoming cookie data had unexpected UUID \(uuid) vs \(expectedUUID)")
        }
        if MigrationCookie.normalizedUUID(hostUUID) == MigrationCookie.normalizedUUID(localHostUUID) {
            throw MigrationError(.invalidCookie, "Attempt to migrate guest to the same host \(hostUUID)")
        }
        for feature in mandatory.subtracting(phase.readable).names {
            throw MigrationError(.unsupported, "Unsupported migration cookie feature \(feature)", cookieFeature: feature)
        }
    }

    /// A UUID's 32 hex digits in lower case, or nil when `text` is not a UUID (libvirt accepts
    /// dashes anywhere between byte pairs).
    static func normalizedUUID(_ text: String) -> String? {
        let hex = text.filter { $0 != "-" && $0 != " " }.lowercased()
        guard hex.count == 32, hex.allSatisfy(\.isHexDigit) else { return nil }
        return hex
    }
}
