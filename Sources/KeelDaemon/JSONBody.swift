#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
import NIOCore
import NIOHTTP1

/// JSON in and out of request and response bodies, with the daemon's size cap.
enum JSONBody {
    /// The largest request body the daemon reads (domain XML fits many times over).
    static let maximumRequestSize = 1 << 20

    /// The refusal of an oversized body. The connection closes after it: the rest of the body
    /// is never read, and a client still sending it must not wait for that.
    static func tooLarge(_ message: String) -> APIError {
        APIError(status: .payloadTooLarge, code: "payload-too-large", message: message, headers: ["connection": "close"])
    }

    /// Decodes a JSON request body; an empty body decodes as `{}`.
    ///
    /// - Throws: `APIError` 400 naming what is wrong with the JSON.
    static func decode<T: Decodable>(_ type: T.Type, from request: APIRequest) throws -> T {
        let buffer = request.body
        let bytes = buffer.readableBytes == 0 ? Array("{}".utf8) : Array(buffer.readableBytesView)
        do {
            return try JSONDecoder().decode(T.self, from: Data(bytes))
        } catch let error as DecodingError {
            throw APIError.badRequest("malformed JSON body: \(describe(error))")
        } catch {
            throw APIError.badRequest("malformed JSON body: \(error)")
        }
    }

    /// A 200 (or `status`) response with `value` encoded as JSON.
    static func response<T: Encodable>(_ value: T, status: HTTPResponseStatus = .ok) throws -> APIResponse {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        var data = try encoder.encode(value)
        data.append(UInt8(ascii: "\n"))
        return Self.response(json: data, status: status)
    }

    /// A response with JSON already encoded.
    static func response<Bytes: Sequence<UInt8>>(json bytes: Bytes, status: HTTPResponseStatus = .ok) -> APIResponse {
        APIResponse(status: status, headers: ["content-type": "application/json"], body: .bytes(ByteBuffer(bytes: bytes)))
    }

    /// A response with a text body.
    static func text(_ text: String, contentType: String, status: HTTPResponseStatus = .ok) -> APIResponse {
        APIResponse(status: status, headers: ["content-type": contentType], body: .bytes(ByteBuffer(string: text)))
    }

    private static func describe(_ error: DecodingError) -> String {
        func path(_ context: DecodingError.Context) -> String {
            let keys = context.codingPath.map { $0.intValue.map { "[\($0)]" } ?? $0.stringValue }
            return keys.isEmpty ? "" : " at \(keys.joined(separator: "."))"
        }
        switch error {
        case .keyNotFound(let key, let context): return "missing field '\(key.stringValue)'\(path(context))"
        case .typeMismatch(let type, let context): return "expected \(type)\(path(context))"
        case .valueNotFound(let type, let context): return "expected \(type)\(path(context)), found null"
        case .dataCorrupted(let context): return "not valid JSON\(path(context))"
        @unknown default: return "\(error)"
        }
    }
}

/// A JSON object written field by field, byte for byte as `JSONBody.response` encodes the same
/// fields (keys in sorted order — the caller's order —, slashes not escaped, nil fields left
/// out), without JSONEncoder's boxing: for the hottest query, dominfo.
struct JSONObjectWriter {
    private var bytes: [UInt8] = [UInt8(ascii: "{")]

    init(capacity: Int = 512) {
        bytes.reserveCapacity(capacity)
    }

    mutating func field(_ key: StaticString, _ value: String?) {
        guard let value else { return }
        self.key(key)
        Self.appendString(value, to: &bytes)
    }

    mutating func field(_ key: StaticString, _ value: Bool) {
        self.key(key)
        bytes.append(contentsOf: value ? Array("true".utf8) : Array("false".utf8))
    }

    mutating func field(_ key: StaticString, _ value: Int32?) {
        guard let value else { return }
        self.key(key)
        bytes.append(contentsOf: String(value).utf8)
    }

    /// The object, closed and followed by a newline as `JSONBody.response` ends its bodies.
    mutating func finish() -> [UInt8] {
        bytes.append(UInt8(ascii: "}"))
        bytes.append(UInt8(ascii: "\n"))
        return bytes
    }

    private mutating func key(_ key: StaticString) {
        if bytes.count > 1 { bytes.append(UInt8(ascii: ",")) }
        bytes.append(UInt8(ascii: "\""))
        key.withUTF8Buffer { bytes.append(contentsOf: $0) }
        bytes.append(UInt8(ascii: "\""))
        bytes.append(UInt8(ascii: ":"))
    }

    /// A JSON string: `"` and `\` escaped, control characters as JSONEncoder writes them.
    static func appendString(_ value: String, to bytes: inout [UInt8]) {
        bytes.append(UInt8(ascii: "\""))
        for byte in value.utf8 {
            switch byte {
            case UInt8(ascii: "\""): bytes.append(contentsOf: [UInt8(ascii: "\\"), UInt8(ascii: "\"")])
            case UInt8(ascii: "\\"): bytes.append(contentsOf: [UInt8(ascii: "\\"), UInt8(ascii: "\\")])
            case 0x08: bytes.append(contentsOf: [UInt8(ascii: "\\"), UInt8(ascii: "b")])
            case 0x0C: bytes.append(contentsOf: [UInt8(ascii: "\\"), UInt8(ascii: "f")])
            case 0x0A: bytes.append(contentsOf: [UInt8(ascii: "\\"), UInt8(ascii: "n")])
            case 0x0D: bytes.append(contentsOf: [UInt8(ascii: "\\"), UInt8(ascii: "r")])
            case 0x09: bytes.append(contentsOf: [UInt8(ascii: "\\"), UInt8(ascii: "t")])
            case 0..<0x20:
                let hex = Array("0123456789abcdef".utf8)
                bytes.append(contentsOf: [UInt8(ascii: "\\"), UInt8(ascii: "u"), UInt8(ascii: "0"), UInt8(ascii: "0"), hex[Int(byte >> 4)], hex[Int(byte & 0xF)]])
            default: bytes.append(byte)
            }
        }
        bytes.append(UInt8(ascii: "\""))
    }
}
