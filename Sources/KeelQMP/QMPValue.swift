extension QMP {
    /// A JSON value as QMP carries it.
    ///
    /// Integers stay integers (`int`), so a feature mask or a byte count never goes through a
    /// `Double`. A JSON integer above `Int64.max` (QEMU's `uint64` properties can produce one)
    /// is kept exactly as `uint`; every other integer is `int`. Object member order is not kept.
    public enum Value: Sendable, Hashable {
        case null
        case bool(Bool)
        case int(Int64)
        /// An integer in `Int64.max + 1 ... UInt64.max`; smaller integers are always `int`.
        case uint(UInt64)
        case double(Double)
        case string(String)
        case array([Value])
        case object([String: Value])
    }
}

extension QMP.Value {
    /// The member `key` of an object; nil for a missing member or a non-object.
    public subscript(key: String) -> QMP.Value? {
        if case .object(let members) = self { return members[key] }
        return nil
    }

    /// The element at `index` of an array; nil when out of range or not an array.
    public subscript(index: Int) -> QMP.Value? {
        if case .array(let elements) = self, elements.indices.contains(index) { return elements[index] }
        return nil
    }

    public var isNull: Bool {
        if case .null = self { return true }
        return false
    }

    public var boolValue: Bool? {
        if case .bool(let value) = self { return value }
        return nil
    }

    /// The value as `Int64` when it is an integer that fits.
    public var int64Value: Int64? {
        switch self {
        case .int(let value): value
        case .uint(let value): Int64(exactly: value)
        default: nil
        }
    }

    /// The value as `Int` when it is an integer that fits.
    public var intValue: Int? {
        int64Value.flatMap { Int(exactly: $0) }
    }

    /// The value as `UInt64` when it is a non-negative integer.
    public var uint64Value: UInt64? {
        switch self {
        case .int(let value): UInt64(exactly: value)
        case .uint(let value): value
        default: nil
        }
    }

    /// The value as `Double` for any JSON number.
    public var doubleValue: Double? {
        switch self {
        case .int(let value): Double(value)
        case .uint(let value): Double(value)
        case .double(let value): value
        default: nil
        }
    }

    public var stringValue: String? {
        if case .string(let value) = self { return value }
        return nil
    }

    public var arrayValue: [QMP.Value]? {
        if case .array(let value) = self { return value }
        return nil
    }

    public var objectValue: [String: QMP.Value]? {
        if case .object(let value) = self { return value }
        return nil
    }
}

extension QMP.Value: ExpressibleByNilLiteral {
    public init(nilLiteral: ()) { self = .null }
}

extension QMP.Value: ExpressibleByBooleanLiteral {
    public init(booleanLiteral value: Bool) { self = .bool(value) }
}

extension QMP.Value: ExpressibleByIntegerLiteral {
    public init(integerLiteral value: Int64) { self = .int(value) }
}

extension QMP.Value: ExpressibleByFloatLiteral {
    public init(floatLiteral value: Double) { self = .double(value) }
}

extension QMP.Value: ExpressibleByStringLiteral {
    public init(stringLiteral value: String) { self = .string(value) }
}

extension QMP.Value: ExpressibleByArrayLiteral {
    public init(arrayLiteral elements: QMP.Value...) { self = .array(elements) }
}

extension QMP.Value: ExpressibleByDictionaryLiteral {
    /// A later duplicate key replaces an earlier one.
    public init(dictionaryLiteral elements: (String, QMP.Value)...) {
        self = .object(Dictionary(elements, uniquingKeysWith: { _, last in last }))
    }
}

extension QMP.Value: CustomStringConvertible {
    /// The compact JSON text, members sorted by key.
    public var description: String { jsonString() }
}
