@testable import KeelClient
import Testing

/// The response parser on bytes alone: every framing, split at every byte, and the answers that
/// are not HTTP.
@Suite("KeelClient: the HTTP/1.1 response parser")
struct HTTPResponseParserTests {
    /// Feeds `text` in pieces of `step` bytes, then the end of the connection; returns the
    /// head and the body.
    static func parse(_ text: String, step: Int = .max, method: String = "GET") throws -> (HTTPResponseParser.Head?, [UInt8], Bool) {
        var parser = HTTPResponseParser(requestMethod: method)
        let bytes = Array(text.utf8)
        var head: HTTPResponseParser.Head?
        var body: [UInt8] = []
        var ended = false
        func take(_ events: [HTTPResponseParser.Event]) {
            for event in events {
                switch event {
                case .head(let value): head = value
                case .body(let piece): body += piece
                case .end: ended = true
                }
            }
        }
        var offset = 0
        while offset < bytes.count {
            let end = min(bytes.count, offset + max(1, min(step, bytes.count)))
            take(try parser.feed(bytes[offset..<end]))
            offset = end
        }
        if !ended { take(try parser.finish()) }
        return (head, body, ended)
    }

    static let framings: [(String, String)] = [
        ("content-length", "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 13\r\n\r\n{\"a\": [1, 2]}"),
        ("chunked", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n{\"a\":\r\n8;ext=1\r\n [1, 2]}\r\n0\r\n\r\n"),
        ("chunked with a trailer", "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nd\r\n{\"a\": [1, 2]}\r\n0\r\nX-Checksum: 1\r\n\r\n"),
        ("until close", "HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n{\"a\": [1, 2]}"),
        ("after 100 Continue", "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 13\r\n\r\n{\"a\": [1, 2]}"),
    ]

    @Test("each framing gives the same body, however the bytes are split", arguments: framings)
    func framing(name: String, text: String) throws {
        for step in [1, 2, 3, 7, 64, .max] {
            let (head, body, ended) = try Self.parse(text, step: step)
            #expect(head?.status == 200, "\(name) step \(step)")
            #expect(String(decoding: body, as: UTF8.self) == "{\"a\": [1, 2]}", "\(name) step \(step)")
            #expect(ended, "\(name) step \(step)")
        }
    }

    @Test("headers are case-insensitive; 204 and HEAD answers have no body")
    func headersAndEmptyBodies() throws {
        let (head, _, _) = try Self.parse("HTTP/1.1 404 Not Found\r\nContent-TYPE:  application/json \r\nContent-Length: 0\r\n\r\n")
        #expect(head?.status == 404)
        #expect(head?.reason == "Not Found")
        #expect(head?[header: "content-type"] == "application/json")
        let (noContent, body, ended) = try Self.parse("HTTP/1.1 204 No Content\r\nContent-Length: 10\r\n\r\n")
        #expect(noContent?.status == 204 && body.isEmpty && ended)
        let (_, headBody, headEnded) = try Self.parse("HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n", method: "HEAD")
        #expect(headBody.isEmpty && headEnded)
    }

    @Test("bytes after a complete Content-Length body are ignored")
    func extraBytes() throws {
        let (_, body, ended) = try Self.parse("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokEXTRA")
        #expect(body == Array("ok".utf8))
        #expect(ended)
    }

    static let garbage: [(String, String)] = [
        ("SSH-2.0-OpenSSH_9.2\r\n", "not an HTTP response"),
        ("HTTP/1.1 abc OK\r\n\r\n", "bad status line"),
        ("HTTP/2 200\r\n\r\n", "bad status line"),
        ("HTTP/1.1 200 OK\r\nno colon here\r\n\r\n", "malformed header line"),
        ("HTTP/1.1 200 OK\r\nContent-Length: -4\r\n\r\n", "bad Content-Length"),
        ("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n", "unsupported transfer coding"),
        ("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", "bad chunk size"),
        ("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nokXX", "does not end with CRLF"),
    ]

    @Test("answers that are not HTTP/1.1 fail with a message naming the problem", arguments: garbage)
    func malformed(text: String, expected: String) {
        do {
            _ = try Self.parse(text)
            Issue.record("parsed: \(text)")
        } catch {
            #expect("\(error)".contains(expected), "\(error)")
        }
    }

    @Test("a connection that ends early is a truncated response, not a short body")
    func truncated() {
        for text in ["", "HTTP/1.1 200 OK\r\nContent-Le", "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc",
                     "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab"] {
            #expect(throws: HTTPResponseParser.Failure.self, "\(text)") { _ = try Self.parse(text) }
        }
    }

    @Test("an endless head is refused at the cap, before it is all buffered")
    func headCap() throws {
        var parser = HTTPResponseParser()
        _ = try parser.feed(Array("HTTP/1.1 200 OK\r\n".utf8))
        let line = Array("X-Filler: ".utf8) + [UInt8](repeating: 65, count: 1000) + Array("\r\n".utf8)
        var failed = false
        for _ in 0..<100 {
            do {
                _ = try parser.feed(line)
            } catch {
                failed = true
                #expect(error.description.contains("exceeds"))
                break
            }
        }
        #expect(failed)
    }

    @Test("percent-encoding leaves unreserved characters and encodes everything else")
    func percentEncoding() {
        #expect(KeeldClient.encode("web-1.a_b~") == "web-1.a_b~")
        #expect(KeeldClient.encode("a+b c/é") == "a%2Bb%20c%2F%C3%A9")
    }
}
