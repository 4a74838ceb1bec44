extension XMLElement {
    /// The element in libvirt's layout: two-space indentation, single-quoted attributes, empty
    /// elements self-closed, text-only elements on one line, and a trailing newline.
    ///
    /// - Parameter indent: the number of spaces before the opening tag.
    public func formatted(indent: Int = 0) -> String {
        var out = ""
        out.reserveCapacity(256)
        format(into: &out, indent: indent)
        return out
    }

    /// Appends the libvirt-style text of this element to `out`.
    public func format(into out: inout String, indent: Int) {
        appendIndent(&out, indent)
        out += "<"
        out += name
        for attribute in attributes {
            out += " "
            out += attribute.name
            out += "='"
            XMLElement.appendEscaped(attribute.value, to: &out)
            out += "'"
        }
        if children.isEmpty {
            out += "/>\n"
            return
        }
        let hasElements = children.contains { if case .element = $0 { return true } else { return false } }
        if !hasElements {
            out += ">"
            XMLElement.appendEscaped(text, to: &out)
            out += "</\(name)>\n"
            return
        }
        out += ">\n"
        for child in children {
            switch child {
            case .element(let element):
                element.format(into: &out, indent: indent + 2)
            case .text(let text):
                appendIndent(&out, indent + 2)
                XMLElement.appendEscaped(text, to: &out)
                out += "\n"
            }
        }
        appendIndent(&out, indent)
        out += "</\(name)>\n"
    }

    private func appendIndent(_ out: inout String, _ count: Int) {
        if count > 0 {
            out += String(repeating: " ", count: count)
        }
    }

    /// Escapes as libvirt's virBufferEscapeString: the five XML specials become entities and
    /// other control characters (not tab, newline, carriage return) are dropped.
    public static func appendEscaped(_ value: String, to out: inout String) {
        var needsWork = false
        for byte in value.utf8 where byte < 0x20 || byte == 0x22 || byte == 0x26 || byte == 0x27 || byte == 0x3C || byte == 0x3E {
            needsWork = true
            break
        }
        if !needsWork {
            out += value
            return
        }
        for scalar in value.unicodeScalars {
            switch scalar {
            case "<": out += "&lt;"
            case ">": out += "&gt;"
            case "&": out += "&amp;"
            case "'": out += "&apos;"
            case "\"": out += "&quot;"
            case "\t", "\n", "\r": out.unicodeScalars.append(scalar)
            default:
                if scalar.value >= 0x20 {
                    out.unicodeScalars.append(scalar)
                }
            }
        }
    }
}
