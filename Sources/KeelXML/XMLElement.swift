/// One attribute of an element, kept in document order.
public struct XMLAttribute: Sendable, Hashable {
    public var name: String
    public var value: String

    public init(_ name: String, _ value: String) {
        self.name = name
        self.value = value
    }
}

/// A node below an element: a child element or a run of text.
///
/// Comments and whitespace-only text between elements are not kept: libvirt drops them too, and
/// the formatter re-creates the indentation.
public enum XMLNode: Sendable, Hashable {
    case element(XMLElement)
    case text(String)
}

/// An XML element with its attributes and children, in document order.
///
/// Names are qualified as written (`keel:abi`); namespace declarations are ordinary `xmlns`
/// attributes, so elements in foreign namespaces survive a parse → format round trip untouched.
public struct XMLElement: Sendable, Hashable {
    public var name: String
    public var attributes: [XMLAttribute]
    public var children: [XMLNode]

    public init(_ name: String, attributes: [XMLAttribute] = [], children: [XMLNode] = []) {
        self.name = name
        self.attributes = attributes
        self.children = children
    }

    /// An element whose only content is `text`.
    public init(_ name: String, attributes: [XMLAttribute] = [], text: String) {
        self.init(name, attributes: attributes, children: [.text(text)])
    }

    /// The value of the attribute `name`, or nil when it is absent.
    public func attribute(_ name: String) -> String? {
        for attribute in attributes where attribute.name == name {
            return attribute.value
        }
        return nil
    }

    /// Sets, replaces (in place) or, with a nil value, removes the attribute `name`.
    public mutating func setAttribute(_ name: String, _ value: String?) {
        if let index = attributes.firstIndex(where: { $0.name == name }) {
            if let value {
                attributes[index].value = value
            } else {
                attributes.remove(at: index)
            }
        } else if let value {
            attributes.append(XMLAttribute(name, value))
        }
    }

    /// The child elements, in order.
    public var elements: [XMLElement] {
        children.compactMap {
            if case .element(let element) = $0 { return element }
            return nil
        }
    }

    /// The first child element called `name`.
    public func child(_ name: String) -> XMLElement? {
        for case .element(let element) in children where element.name == name {
            return element
        }
        return nil
    }

    /// All child elements called `name`, in order.
    public func children(named name: String) -> [XMLElement] {
        var result: [XMLElement] = []
        for case .element(let element) in children where element.name == name {
            result.append(element)
        }
        return result
    }

    /// The concatenated text directly inside this element.
    public var text: String {
        var result = ""
        for case .text(let text) in children {
            result += text
        }
        return result
    }

    /// Appends a child element.
    public mutating func append(_ element: XMLElement) {
        children.append(.element(element))
    }

    /// Removes every child element called `name`.
    public mutating func removeChildren(named name: String) {
        children.removeAll {
            if case .element(let element) = $0 { return element.name == name }
            return false
        }
    }
}
