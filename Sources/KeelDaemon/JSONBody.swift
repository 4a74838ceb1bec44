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
        return APIResponse(status: status, headers: ["content-type": "application/json"], body: .bytes(ByteBuffer(bytes: data)))
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
