import Foundation

/// A stand-in for keeld on a temporary Unix socket, for what a real daemon never does: answer
/// garbage, stay silent, stream a scripted event sequence. Each connection is handled on its own
/// thread by `handler`, given the request line and a way to write raw bytes.
final class FakeKeeld: @unchecked Sendable {
    /// One accepted connection.
    final class Connection: @unchecked Sendable {
        let fd: Int32
        /// "GET /v1/events?domain=web".
        private(set) var requestLine = ""
        private(set) var body = Data()

        init(fd: Int32) {
            self.fd = fd
        }

        /// Reads the request head (and a Content-Length body).
        func readRequest() {
            var data = Data()
            var buffer = [UInt8](repeating: 0, count: 4096)
            while data.range(of: Data("\r\n\r\n".utf8)) == nil {
                let count = recv(fd, &buffer, buffer.count, 0)
                if count <= 0 { return }
                data.append(contentsOf: buffer[0..<count])
            }
            guard let end = data.range(of: Data("\r\n\r\n".utf8)) else { return }
            let head = String(decoding: data[..<end.lowerBound], as: UTF8.self)
            let lines = head.components(separatedBy: "\r\n")
            requestLine = lines.first.map { $0.replacingOccurrences(of: " HTTP/1.1", with: "") } ?? ""
            let length = lines.compactMap { line -> Int? in
                let parts = line.split(separator: ":", maxSplits: 1)
                guard parts.count == 2, parts[0].lowercased() == "content-length" else { return nil }
                return Int(parts[1].trimmingCharacters(in: .whitespaces))
            }.first ?? 0
            body = Data(data[end.upperBound...])
            while body.count < length {
                let count = recv(fd, &buffer, buffer.count, 0)
                if count <= 0 { return }
                body.append(contentsOf: buffer[0..<count])
            }
        }

        func write(_ text: String) {
            write(Data(text.utf8))
        }

        func write(_ data: Data) {
            data.withUnsafeBytes { raw in
                var offset = 0
                while offset < raw.count {
                    let sent = send(fd, raw.baseAddress! + offset, raw.count - offset, Int32(MSG_NOSIGNAL))
                    if sent <= 0 { return }
                    offset += sent
                }
            }
        }

        /// A complete JSON answer.
        func reply(status: Int = 200, reason: String = "OK", json: String) {
            write("HTTP/1.1 \(status) \(reason)\r\nContent-Type: application/json\r\nContent-Length: \(json.utf8.count)\r\nConnection: close\r\n\r\n\(json)")
        }

        /// Blocks until the client closes the connection (or the server stops).
        func waitForClose() {
            var byte: UInt8 = 0
            while recv(fd, &byte, 1, 0) > 0 {}
        }

        /// One chunk of a chunked body.
        func chunk(_ text: String) {
            write(String(text.utf8.count, radix: 16) + "\r\n" + text + "\r\n")
        }
    }

    let path: String
    private let listener: Int32
    private let handler: @Sendable (Connection) -> Void
    private let lock = NSLock()
    private var stopped = false
    private var connections: [Int32] = []

    /// Listens on `path` (a fresh socket) and serves until `stop()`.
    ///
    /// - Parameter listen: false binds without listening, so connecting is refused.
    init(path: String, listen shouldListen: Bool = true, handler: @escaping @Sendable (Connection) -> Void = { _ in }) throws {
        self.path = path
        self.handler = handler
        unlink(path)
        listener = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8)
        withUnsafeMutableBytes(of: &address.sun_path) { buffer in
            for (index, byte) in bytes.prefix(buffer.count - 1).enumerated() { buffer[index] = byte }
        }
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(listener, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        guard bound == 0 else { throw TestFailure("bind \(path): \(String(cString: strerror(errno)))") }
        guard shouldListen else { return }
        guard Glibc.listen(listener, 16) == 0 else { throw TestFailure("listen: \(String(cString: strerror(errno)))") }
        let thread = Thread { [self] in acceptLoop() }
        thread.start()
    }

    private func acceptLoop() {
        while true {
            let fd = accept(listener, nil, nil)
            if fd < 0 {
                if errno == EINTR { continue }
                return
            }
            let isStopped = lock.withLock { () -> Bool in
                if !stopped { connections.append(fd) }
                return stopped
            }
            if isStopped {
                close(fd)
                return
            }
            let connection = Connection(fd: fd)
            let handler = self.handler
            let thread = Thread { [self] in
                handler(connection)
                lock.withLock {
                    connections.removeAll { $0 == fd }
                    close(fd)
                }
            }
            thread.start()
        }
    }

    /// Stops accepting and closes every connection.
    func stop() {
        let open = lock.withLock { () -> [Int32] in
            stopped = true
            return connections
        }
        for fd in open { shutdown(fd, Int32(SHUT_RDWR)) }
        shutdown(listener, Int32(SHUT_RDWR))
        close(listener)
        unlink(path)
    }
}
