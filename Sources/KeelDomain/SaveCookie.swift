import KeelCPU
import KeelXML

/// The save cookie: libvirt's `<cookie>` (the updated guest CPU and `<slirpHelper/>`) plus
/// Keel's ABI record in its own namespace.
///
/// libvirt reads `./cpu[1]` as a guest CPU and `boolean(./slirpHelper)` and ignores everything
/// else, so images written by Keel restore on libvirt with the updated CPU, and Keel reads
/// libvirt's cookies (and images without a cookie) unchanged.
public struct SaveCookie: Sendable, Hashable {
    /// The updated CPU the guest really got; present only when it differs from the original.
    public var cpu: CPUDefinition?
    /// libvirt's `<slirpHelper/>`: no built-in user-mode networking without a helper is in use.
    public var slirpHelper: Bool
    public var abiRecord: ABIRecord?
    /// Children Keel does not know, kept so that rewriting an image preserves them.
    public var unknownElements: [XMLElement]

    public init(cpu: CPUDefinition? = nil, slirpHelper: Bool = true, abiRecord: ABIRecord? = nil) {
        self.cpu = cpu
        self.slirpHelper = slirpHelper
        self.abiRecord = abiRecord
        self.unknownElements = []
    }

    /// The `<cookie>` element in libvirt's order: cpu, slirpHelper, then Keel's record.
    public var xmlElement: XMLElement {
        var root = XMLElement("cookie")
        if let cpu { root.append(cpu.xmlElement) }
        if slirpHelper { root.append(XMLElement("slirpHelper")) }
        for element in unknownElements { root.append(element) }
        if let abiRecord { root.append(abiRecord.xmlElement) }
        return root
    }

    /// The cookie text as stored in a save image (libvirt's layout, ending in a newline).
    public func formatted() -> String {
        xmlElement.formatted()
    }

    /// Parses a cookie as libvirt does: the first `<cpu>` child as a guest CPU, `slirpHelper`
    /// by presence; Keel's ABI record when present; other children are kept.
    ///
    /// - Throws: `DomainError` when the text is not XML, the root is not `<cookie>`, or the
    ///   CPU or ABI record is invalid.
    public init(xmlString: String) throws {
        let root: XMLElement
        do {
            root = try XMLParser.parse(xmlString, maximumSize: 16 << 20)
        } catch let error as XMLError {
            throw DomainError(.invalidXML, "invalid save cookie: \(error.description)")
        }
        try self.init(xml: root)
    }

    public init(xml root: XMLElement) throws {
        guard root.name == "cookie" else {
            throw DomainError(.invalidXML, "invalid save cookie: root element is '\(root.name)', expected 'cookie'")
        }
        self.init(slirpHelper: root.child("slirpHelper") != nil)
        if let cpuElement = root.child("cpu") {
            do {
                cpu = try CPUDefinition(xml: cpuElement, as: .guest)
            } catch let error as CPUError {
                throw DomainError(.invalidXML, "invalid CPU in save cookie: \(error.message)")
            }
        }
        var sawCPU = false
        for element in root.elements {
            if element.name == "cpu" && !sawCPU {
                sawCPU = true
            } else if element.name == "slirpHelper" {
                continue
            } else if ABIRecord.isRecord(element) {
                abiRecord = try ABIRecord(xml: element)
            } else if element.name != "cpu" {
                unknownElements.append(element)
            }
        }
    }
}
