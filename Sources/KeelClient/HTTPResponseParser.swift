/// An HTTP/1.1 response parser: a pure state machine fed the bytes a socket delivered, giving
/// back the head once it is complete, then the body as it arrives (framed by `Content-Length`,
/// chunked transfer coding, or the end of the connection), then the end.
///
/// It never touches a socket, so every framing and every malformed answer is tested without
/// one. Sizes are capped before anything is buffered: the head at `maximumHeadSize`, a chunk-size
/// line at 1 KiB.
public struct HTTPResponseParser: Sendable {
    /// A response's status line and headers.
    public struct Head: Sendable, Equatable {
        public var status: Int
        public var reason: String
        /// Header names in lower case, in the order received.
        public var headers: [(name: String, value: String)]

        /// The first value of a header, by case-insensitive name.
        public subscript(header name: String) -> String? {
            let lowered = name.lowercased()
            return headers.first { $0.name == lowered }?.value
        }

        public static func == (lhs: Head, rhs: Head) -> Bool {
            lhs.status == rhs.status && lhs.reason == rhs.reason
                && lhs.headers.map(\.name) == rhs.headers.map(\.name) && lhs.headers.map(\.value) == rhs.headers.map(\.value)
        }
    }

    /// What a `feed` or `finish` produced.
    public enum Event: Sendable, Equatable {
        case head(Head)
        case body([UInt8])
        case end
    }

    /// Why bytes are not an HTTP/1.1 response.
    public struct Failure: Error, Sendable, Equatable, CustomStringConvertible {
        public var description: String
    }

    public static let maximumHeadSize = 64 << 10
    static let maximumChunkLineSize = 1024

    private enum Framing {
        case length(remaining: Int)
        case chunkSize
        case chunkData(remaining: Int)
        case chunkDataEnd
        case trailer
        case untilClose
    }

    private enum State {
        case head
        case body(Framing)
        case done
    }

    private var state: State = .head
    private var buffer: [UInt8] = []
    /// Whether the request was HEAD (its response has no body whatever the headers say).
    private let requestHadNoBody: Bool

    public init(requestMethod: String = "GET") {
        requestHadNoBody = requestMethod == "HEAD"
    }

    /// Whether the whole response has been parsed.
    public var isComplete: Bool {
        if case .done = state { return true }
        return false
    }

    /// Whether the head has been parsed (so the connection answered in HTTP).
    public var hasHead: Bool {
        if case .head = state { return false }
        return true
    }

    /// Consumes bytes received from the connection.
    ///
    /// - Returns: the events these bytes complete, in order.
    /// - Throws: `Failure` naming what is wrong with the bytes; the parser is then unusable.
    public mutating func feed(_ bytes: some Collection<UInt8>) throws(Failure) -> [Event] {
        guard !isComplete else { return [] }
        buffer.append(contentsOf: bytes)
        var events: [Event] = []
        while true {
            switch state {
            case .done:
                return events
            case .head:
                guard let end = Self.find([13, 10, 13, 10], in: buffer) else {
                    if buffer.count > Self.maximumHeadSize {
                        throw Failure(description: "the response head exceeds \(Self.maximumHeadSize) bytes")
                    }
                    if !buffer.isEmpty, !Self.couldStartStatusLine(buffer) {
                        throw Failure(description: "not an HTTP response: \(Self.excerpt(buffer))")
                    }
                    return events
                }
                let head = try Self.parseHead(Array(buffer[0..<end]))
                buffer.removeFirst(end + 4)
                if (100..<200).contains(head.status) {
                    // An interim answer (100 Continue): the real one follows.
                    continue
                }
                events.append(.head(head))
                state = .body(try framing(for: head))
            case .body(let framing):
                switch framing {
                case .length(let remaining):
                    if remaining == 0 {
                        state = .done
                        events.append(.end)
                        continue
                    }
                    guard !buffer.isEmpty else { return events }
                    let take = min(remaining, buffer.count)
                    events.append(.body(Array(buffer[0..<take])))
                    buffer.removeFirst(take)
                    state = .body(.length(remaining: remaining - take))
                case .untilClose:
                    if !buffer.isEmpty {
                        events.append(.body(buffer))
                        buffer.removeAll()
                    }
                    return events
                case .chunkSize:
                    guard let lineEnd = Self.find([13, 10], in: buffer) else {
                        if buffer.count > Self.maximumChunkLineSize { throw Failure(description: "a chunk-size line exceeds 1 KiB") }
                        return events
                    }
                    let line = String(decoding: buffer[0..<lineEnd], as: UTF8.self)
                    buffer.removeFirst(lineEnd + 2)
                    let sizeText = line.split(separator: ";", maxSplits: 1, omittingEmptySubsequences: false).first.map(String.init) ?? ""
                    let trimmed = sizeText.trimmingSpaces()
                    guard !trimmed.isEmpty, trimmed.count <= 15, let size = Int(trimmed, radix: 16), size >= 0 else {
                        throw Failure(description: "bad chunk size '\(Self.excerpt(Array(line.utf8)))'")
                    }
                    state = .body(size == 0 ? .trailer : .chunkData(remaining: size))
                case .chunkData(let remaining):
                    guard !buffer.isEmpty else { return events }
                    let take = min(remaining, buffer.count)
                    events.append(.body(Array(buffer[0..<take])))
                    buffer.removeFirst(take)
                    state = .body(take == remaining ? .chunkDataEnd : .chunkData(remaining: remaining - take))
                case .chunkDataEnd:
                    guard buffer.count >= 2 else { return events }
                    guard buffer[0] == 13, buffer[1] == 10 else { throw Failure(description: "a chunk does not end with CRLF") }
                    buffer.removeFirst(2)
                    state = .body(.chunkSize)
                case .trailer:
                    // Trailer fields (rare) end with an empty line.
                    guard let lineEnd = Self.find([13, 10], in: buffer) else {
                        if buffer.count > Self.maximumHeadSize { throw Failure(description: "the trailer exceeds \(Self.maximumHeadSize) bytes") }
                        return events
                    }
                    buffer.removeFirst(lineEnd + 2)
                    if lineEnd == 0 {
                        state = .done
                        events.append(.end)
                    }
                }
            }
        }
    }

    /// The connection ended: completes a body framed by the end of the connection.
    ///
    /// - Throws: `Failure` when the response was cut short.
    public mutating func finish() throws(Failure) -> [Event] {
        switch state {
        case .done:
            return []
        case .body(.untilClose):
            state = .done
            let rest = buffer
            buffer.removeAll()
            return (rest.isEmpty ? [] : [.body(rest)]) + [.end]
        case .head:
            if buffer.isEmpty { throw Failure(description: "the connection closed without an answer") }
            throw Failure(description: "the connection closed in the middle of the response head: \(Self.excerpt(buffer))")
        case .body:
            throw Failure(description: "the connection closed in the middle of the response body")
        }
    }

    private func framing(for head: Head) throws(Failure) -> Framing {
        if requestHadNoBody || head.status == 204 || head.status == 304 {
            return .length(remaining: 0)
        }
        if let coding = head[header: "transfer-encoding"] {
            let codings = coding.lowercased().split(separator: ",").map { String($0).trimmingSpaces() }
            guard codings.last == "chunked" else { throw Failure(description: "unsupported transfer coding '\(coding)'") }
            return .chunkSize
        }
        if let lengthText = head[header: "content-length"] {
            guard let length = Int(lengthText), length >= 0 else { throw Failure(description: "bad Content-Length '\(lengthText)'") }
            return .length(remaining: length)
        }
        return .untilClose
    }

    static func parseHead(_ bytes: [UInt8]) throws(Failure) -> Head {
        let text = String(decoding: bytes, as: UTF8.self)
        var lines = text.split(separator: "\r\n", omittingEmptySubsequences: false).map(String.init)
        let statusLine = lines.removeFirst()
        let parts = statusLine.split(separator: " ", maxSplits: 2, omittingEmptySubsequences: false)
        guard parts.count >= 2, parts[0].hasPrefix("HTTP/1."), parts[1].count == 3, let status = Int(parts[1]), (100...599).contains(status) else {
            throw Failure(description: "not an HTTP response: bad status line '\(excerpt(Array(statusLine.utf8)))'")
        }
        var headers: [(name: String, value: String)] = []
        for line in lines {
            guard let colon = line.firstIndex(of: ":"), colon != line.startIndex else {
                throw Failure(description: "malformed header line '\(excerpt(Array(line.utf8)))'")
            }
            headers.append((String(line[..<colon]).lowercased(), String(line[line.index(after: colon)...]).trimmingSpaces()))
        }
        return Head(status: status, reason: parts.count > 2 ? String(parts[2]) : "", headers: headers)
    }

    /// Whether `bytes` could still become "HTTP/1.x …" once more arrive.
    static func couldStartStatusLine(_ bytes: [UInt8]) -> Bool {
        let prefix = Array("HTTP/1.".utf8)
        let count = min(bytes.count, prefix.count)
        return Array(bytes[0..<count]) == Array(prefix[0..<count])
    }

    static func find(_ needle: [UInt8], in haystack: [UInt8]) -> Int? {
        guard haystack.count >= needle.count else { return nil }
        var index = 0
        let last = haystack.count - needle.count
        while index <= last {
            if haystack[index] == needle[0] {
                var matched = true
                for offset in 1..<needle.count where haystack[index + offset] != needle[offset] {
                    matched = false
                    break
                }
                if matched { return index }
            }
            index += 1
        }
        return nil
    }

    /// The first bytes of an answer, printable, for messages.
    static func excerpt(_ bytes: [UInt8]) -> String {
        let shown = bytes.prefix(40).map { byte -> Character in
            (32..<127).contains(byte) ? Character(Unicode.Scalar(byte)) : "."
        }
        return String(shown) + (bytes.count > 40 ? "…" : "")
    }
}

extension String {
    func trimmingSpaces() -> String {
        var scalars = Substring(self)
        while let first = scalars.first, first == " " || first == "\t" { scalars = scalars.dropFirst() }
        while let last = scalars.last, last == " " || last == "\t" { scalars = scalars.dropLast() }
        return String(scalars)
    }
}
