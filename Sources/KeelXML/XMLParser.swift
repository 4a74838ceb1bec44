import CLibXML2

/// Parses XML through libxml2 with the hardening a VM manager needs for files users hand it:
/// no network access, no DTD loading, no entity expansion (any DOCTYPE is refused outright, which
/// also stops entity bombs), no huge-document mode, and a size cap checked before parsing.
public enum XMLParser {
    /// The default cap on input size: far above any domain or CPU XML, far below a memory risk.
    public static let defaultMaximumSize = 16 << 20

    /// Parses `bytes` and returns the root element.
    ///
    /// - Parameters:
    ///   - bytes: the document, UTF-8 (or with an XML declaration naming its encoding).
    ///   - maximumSize: documents larger than this are refused before parsing.
    /// - Throws: `XMLError` naming the problem and, for syntax errors, the line.
    public static func parse(_ bytes: [UInt8], maximumSize: Int = defaultMaximumSize) throws -> XMLElement {
        try bytes.withUnsafeBufferPointer { buffer in
            try parse(UnsafeRawBufferPointer(buffer), maximumSize: maximumSize)
        }
    }

    /// Parses the UTF-8 text `string` and returns the root element.
    public static func parse(_ string: String, maximumSize: Int = defaultMaximumSize) throws -> XMLElement {
        var string = string
        return try string.withUTF8 { buffer in
            try parse(UnsafeRawBufferPointer(buffer), maximumSize: maximumSize)
        }
    }

    /// Parses raw bytes and returns the root element.
    public static func parse(_ buffer: UnsafeRawBufferPointer, maximumSize: Int = defaultMaximumSize) throws -> XMLElement {
        if buffer.count > maximumSize {
            throw XMLError(.tooLarge, "XML document is too large: \(buffer.count) bytes, the limit is \(maximumSize)")
        }
        if buffer.allSatisfy({ $0 == 0x20 || $0 == 0x0A || $0 == 0x0D || $0 == 0x09 }) {
            throw XMLError(.empty, "XML document is empty")
        }
        if buffer.contains(0) {
            throw XMLError(.malformed, "XML document contains a NUL byte")
        }
        guard let context = xmlNewParserCtxt() else {
            throw XMLError(.malformed, "cannot create an XML parser")
        }
        defer { xmlFreeParserCtxt(context) }
        // A DOCTYPE stops the parse at once: nothing libvirt writes has one, and refusing it
        // removes external entities, entity expansion and DTD loading in one place.
        context.pointee.sax.pointee.internalSubset = { userData, _, _, _ in
            guard let userData else { return }
            let context = userData.assumingMemoryBound(to: xmlParserCtxt.self)
            context.pointee._private = UnsafeMutableRawPointer(bitPattern: 1)
            xmlStopParser(context)
        }
        context.pointee.sax.pointee.entityDecl = { userData, _, _, _, _, _ in
            guard let userData else { return }
            let context = userData.assumingMemoryBound(to: xmlParserCtxt.self)
            context.pointee._private = UnsafeMutableRawPointer(bitPattern: 1)
            xmlStopParser(context)
        }
        let options = Int32(XML_PARSE_NONET.rawValue | XML_PARSE_NOERROR.rawValue | XML_PARSE_NOWARNING.rawValue
            | XML_PARSE_NOCDATA.rawValue)
        let document = xmlCtxtReadMemory(
            context,
            buffer.baseAddress?.assumingMemoryBound(to: CChar.self),
            Int32(buffer.count),
            nil,
            nil,
            options
        )
        defer { if let document { xmlFreeDoc(document) } }
        if context.pointee._private != nil {
            throw XMLError(.forbiddenConstruct, "XML document type declarations (DOCTYPE, ENTITY) are not allowed")
        }
        guard let document, context.pointee.wellFormed != 0 else {
            if let error = xmlCtxtGetLastError(context) {
                let message = error.pointee.message.map { String(cString: $0) } ?? "not well-formed"
                throw XMLError(.malformed, message.trimmingTrailingWhitespace(), line: Int(error.pointee.line))
            }
            throw XMLError(.malformed, "XML document is not well-formed")
        }
        if document.pointee.intSubset != nil {
            throw XMLError(.forbiddenConstruct, "XML document type declarations (DOCTYPE, ENTITY) are not allowed")
        }
        guard let root = xmlDocGetRootElement(document) else {
            throw XMLError(.empty, "XML document has no root element")
        }
        return convert(root)
    }

    private static func convert(_ node: xmlNodePtr) -> XMLElement {
        var element = XMLElement(qualifiedName(node.pointee.name, node.pointee.ns))
        var attribute = node.pointee.properties
        while let attr = attribute {
            let name = qualifiedName(attr.pointee.name, attr.pointee.ns)
            var value = ""
            var text = attr.pointee.children
            while let node = text {
                if let content = node.pointee.content {
                    value += string(content)
                }
                text = node.pointee.next
            }
            element.attributes.append(XMLAttribute(name, value))
            attribute = attr.pointee.next
        }
        // libxml2 keeps namespace declarations apart from attributes; libvirt writes them after
        // the element's own attributes (<domain type='kvm' xmlns:qemu='…'>), and so does Keel.
        var namespace = node.pointee.nsDef
        while let ns = namespace {
            let name = ns.pointee.prefix.map { "xmlns:" + string($0) } ?? "xmlns"
            element.attributes.append(XMLAttribute(name, ns.pointee.href.map(string) ?? ""))
            namespace = ns.pointee.next
        }
        var child = node.pointee.children
        var pendingText = ""
        var pendingHasContent = false
        func flushText() {
            if pendingHasContent {
                element.children.append(.text(pendingText))
            }
            pendingText = ""
            pendingHasContent = false
        }
        while let current = child {
            switch current.pointee.type {
            case XML_ELEMENT_NODE:
                flushText()
                element.children.append(.element(convert(current)))
            case XML_TEXT_NODE, XML_CDATA_SECTION_NODE:
                // Indentation between elements is by far the most common text; it is recognised
                // on the raw bytes so that no String is made for it.
                if let content = current.pointee.content {
                    if pendingHasContent || !isBlank(content) {
                        pendingText += string(content)
                        pendingHasContent = true
                    } else {
                        pendingText += string(content)
                    }
                }
            default:
                break
            }
            child = current.pointee.next
        }
        flushText()
        return element
    }

    /// Whether a NUL-terminated libxml2 string holds only XML whitespace.
    private static func isBlank(_ pointer: UnsafePointer<xmlChar>) -> Bool {
        var cursor = pointer
        while cursor.pointee != 0 {
            switch cursor.pointee {
            case 0x20, 0x09, 0x0A, 0x0D: cursor += 1
            default: return false
            }
        }
        return true
    }

    private static func qualifiedName(_ name: UnsafePointer<xmlChar>?, _ ns: xmlNsPtr?) -> String {
        let local = name.map(string) ?? ""
        if let prefix = ns?.pointee.prefix {
            return string(prefix) + ":" + local
        }
        return local
    }

    private static func string(_ pointer: UnsafePointer<xmlChar>) -> String {
        String(cString: pointer)
    }

    private static func string(_ pointer: UnsafeMutablePointer<xmlChar>) -> String {
        String(cString: pointer)
    }
}

extension String {
    func trimmingTrailingWhitespace() -> String {
        var result = self
        while let last = result.last, last.isWhitespace {
            result.removeLast()
        }
        return result
    }
}
