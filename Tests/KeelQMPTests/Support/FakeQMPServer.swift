import Foundation
import KeelQMP
#if canImport(Glibc)
import Glibc
#endif

/// A QMP server on a temporary Unix socket that plays a script on its own thread: either a
/// transcript recorded from real QEMU, or hand-written steps through a ``Peer``.
final class FakeQMPServer: Sendable {
    struct Failure: Error, CustomStringConvertible {
        var description: String
    }

    /// The server's end of one accepted connection, for scripts. Every call blocks with a
    /// deadline so a broken test fails instead of hanging.
    final class Peer {
        fileprivate let fd: Int32
        private var buffer: [UInt8] = []
        /// Descriptors received with SCM_RIGHTS and not yet handed out.
        private var receivedFileDescriptors: [Int32] = []
        let timeout: Duration

        fileprivate init(fd: Int32, timeout: Duration) {
            self.fd = fd
            self.timeout = timeout
        }

        deinit {
            receivedFileDescriptors.forEach { _ = close($0) }
        }

        func send(_ value: QMP.Value) throws {
            try sendLine(value.jsonString())
        }

        func sendLine(_ text: String) throws {
            let bytes = Array((text + "\r\n").utf8)
            var offset = 0
            while offset < bytes.count {
                let count = bytes[offset...].withUnsafeBytes { Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
                guard count > 0 else { throw Failure(description: "send failed: errno \(errno)") }
                offset += count
            }
        }

        /// The greeting of QEMU 7.2.22 as recorded.
        func greet() throws {
            try sendLine(#"{"QMP":{"version":{"qemu":{"micro":22,"minor":2,"major":7},"package":"Debian 1:7.2+dfsg-7+deb12u18+b3"},"capabilities":["oob"]}}"#)
        }

        /// Greets and answers `qmp_capabilities`.
        func handshake() throws {
            try greet()
            let request = try readRequest()
            guard request.message["execute"]?.stringValue == "qmp_capabilities" else {
                throw Failure(description: "expected qmp_capabilities, got \(request.message)")
            }
            try reply(to: request.message, .object([:]))
        }

        /// Sends `{"return": value, "id": <the request's id>}`.
        func reply(to request: QMP.Value, _ value: QMP.Value) throws {
            try send(["return": value, "id": request["id"] ?? .null])
        }

        func sendError(to request: QMP.Value, class errorClass: String, desc: String) throws {
            try send(["error": ["class": .string(errorClass), "desc": .string(desc)], "id": request["id"] ?? .null])
        }

        func sendEvent(_ name: String, data: [String: QMP.Value]? = nil) throws {
            var event: [String: QMP.Value] = ["event": .string(name), "timestamp": ["seconds": 1_795_720_207, "microseconds": 242_459]]
            if let data { event["data"] = .object(data) }
            try send(.object(event))
        }

        /// Reads the next request, with the descriptors that arrived alongside it.
        func readRequest() throws -> (message: QMP.Value, fileDescriptors: [Int32]) {
            let limit = ContinuousClock.now + timeout
            while true {
                if let newline = buffer.firstIndex(of: 0x0A) {
                    let line = Array(buffer[..<newline])
                    buffer.removeFirst(newline + 1)
                    if line.allSatisfy({ $0 == 0x0D || $0 == 0x20 }) { continue }
                    let fds = receivedFileDescriptors
                    receivedFileDescriptors = []
                    return (try QMP.Value(parsing: line), fds)
                }
                guard try receive(until: limit) else { throw Failure(description: "client closed the connection") }
            }
        }

        /// Waits until the client closes its end; true if it did before the deadline.
        func waitForClose() throws -> Bool {
            let limit = ContinuousClock.now + timeout
            while try receive(until: limit) {}
            return true
        }

        /// One recvmsg, collecting SCM_RIGHTS descriptors. False at end of stream.
        private func receive(until limit: ContinuousClock.Instant) throws -> Bool {
            let remaining = ContinuousClock.now.duration(to: limit)
            guard remaining > .zero else { throw Failure(description: "timed out waiting for the client") }
            var pollDescriptor = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            let milliseconds = Int32(clamping: remaining.components.seconds * 1000 + 1)
            guard poll(&pollDescriptor, 1, milliseconds) > 0 else { throw Failure(description: "timed out waiting for the client") }

            var data = [UInt8](repeating: 0, count: 65536)
            let headerLength = MemoryLayout<cmsghdr>.size  // 16: already a multiple of 8
            let controlLength = headerLength + 16 * MemoryLayout<Int32>.size
            var control = [UInt8](repeating: 0, count: controlLength)
            let count = data.withUnsafeMutableBytes { dataBytes in
                control.withUnsafeMutableBytes { controlBytes in
                    var iov = iovec(iov_base: dataBytes.baseAddress, iov_len: dataBytes.count)
                    return withUnsafeMutablePointer(to: &iov) { iovPointer in
                        var message = msghdr()
                        message.msg_iov = iovPointer
                        message.msg_iovlen = 1
                        message.msg_control = controlBytes.baseAddress
                        message.msg_controllen = controlBytes.count
                        let count = recvmsg(fd, &message, Int32(MSG_CMSG_CLOEXEC))
                        if count >= 0, message.msg_controllen >= headerLength {
                            let header = controlBytes.load(as: cmsghdr.self)
                            if header.cmsg_level == SOL_SOCKET, header.cmsg_type == Int32(SCM_RIGHTS) {
                                let fdCount = (Int(header.cmsg_len) - headerLength) / MemoryLayout<Int32>.size
                                for index in 0..<fdCount {
                                    receivedFileDescriptors.append(controlBytes.load(fromByteOffset: headerLength + index * 4, as: Int32.self))
                                }
                            }
                        }
                        return count
                    }
                }
            }
            if count < 0 {
                if errno == ECONNRESET { return false }
                throw Failure(description: "recvmsg failed: errno \(errno)")
            }
            if count == 0 { return false }
            buffer.append(contentsOf: data[0..<count])
            return true
        }

        /// Closes the connection now, as QEMU dying would.
        func hangUp() {
            _ = shutdown(fd, Int32(SHUT_RDWR))
        }
    }

    let path: String
    private let directory: TemporaryDirectory
    private let listener: Int32
    private let outcome = Outcome()

    /// Listens on a new socket and serves one connection with `script` on a thread.
    init(timeout: Duration = .seconds(10), script: @escaping @Sendable (Peer) throws -> Void) throws {
        directory = try TemporaryDirectory()
        path = directory.file("qmp.sock")
        let listener = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        self.listener = listener
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        let pathBytes = Array(path.utf8)
        withUnsafeMutableBytes(of: &address.sun_path) { $0.copyBytes(from: pathBytes) }
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(listener, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        guard bound == 0, listen(listener, 4) == 0 else {
            throw Failure(description: "cannot listen on \(path): errno \(errno)")
        }
        let outcome = outcome
        let thread = Thread {
            do {
                var pollDescriptor = pollfd(fd: listener, events: Int16(POLLIN), revents: 0)
                guard poll(&pollDescriptor, 1, Int32(timeout.components.seconds * 1000)) > 0 else {
                    throw Failure(description: "no client connected")
                }
                let fd = accept(listener, nil, nil)
                guard fd >= 0 else { throw Failure(description: "accept failed: errno \(errno)") }
                defer { _ = close(fd) }
                try script(Peer(fd: fd, timeout: timeout))
                outcome.set(.success(()))
            } catch {
                outcome.set(.failure(error))
            }
        }
        thread.start()
    }

    deinit {
        _ = close(listener)
        directory.cleanup()
    }

    /// Waits for the script to end and rethrows its failure.
    func finished() async throws {
        try await outcome.value()
    }

    /// Replays `transcript`: every `to-qemu` record is read from the client and compared with
    /// the recording; every `from-qemu` record is sent as recorded. The connection closes at
    /// the end, as QEMU does after `quit`.
    static func replaying(_ transcript: Transcript) throws -> FakeQMPServer {
        try FakeQMPServer { peer in
            for record in transcript.records {
                switch record.direction {
                case .fromQEMU:
                    try peer.sendLine(record.line)
                case .toQEMU:
                    let request = try peer.readRequest().message
                    guard request == record.message else {
                        throw Failure(description: "expected \(record.message), the client sent \(request)")
                    }
                }
            }
        }
    }
}

/// A result delivered once from a thread and awaited once from a task.
private final class Outcome: @unchecked Sendable {
    private struct State {
        var result: Result<Void, any Error>?
        var waiter: CheckedContinuation<Void, any Error>?
    }

    private let lock = NSLock()
    private var storage = State()
    private var state: Outcome { self }

    private func withLock<R>(_ body: (inout State) -> R) -> R {
        lock.lock()
        defer { lock.unlock() }
        return body(&storage)
    }

    func set(_ result: Result<Void, any Error>) {
        let waiter: CheckedContinuation<Void, any Error>? = state.withLock { state in
            state.result = result
            defer { state.waiter = nil }
            return state.waiter
        }
        waiter?.resume(with: result)
    }

    func value() async throws {
        try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Void, any Error>) in
            let result: Result<Void, any Error>? = state.withLock { state in
                if let result = state.result { return result }
                state.waiter = continuation
                return nil
            }
            if let result { continuation.resume(with: result) }
        }
    }
}
