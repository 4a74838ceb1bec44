import Foundation
import Glibc

/// Captures the first bytes of every TCP segment with a payload seen by this machine's network
/// stack (an `AF_PACKET` socket: root only), so that a test can show what a stream really
/// carries on the wire — QEMU's migration magic `QEVM` in plaintext, or a TLS record.
///
/// Reading runs on its own thread with a 200 ms receive timeout until `stop()`; at most
/// `limit` segments are kept.
final class PacketCapture: @unchecked Sendable {
    struct Segment: Sendable {
        var sourcePort: UInt16
        var destinationPort: UInt16
        /// The first bytes of the payload (up to 16).
        var head: [UInt8]
    }

    /// QEMU's migration stream begins with this (`QEMU_VM_FILE_MAGIC`).
    static let qemuMagic: [UInt8] = Array("QEVM".utf8)

    private let fd: Int32
    private let limit: Int
    private let lock = NSLock()
    private var kept: [Segment] = []
    private var stopping = false
    private let finished = DispatchSemaphore(value: 0)

    /// - Throws: when the socket cannot be opened (not root, no `AF_PACKET`).
    init(limit: Int = 200_000) throws {
        // ETH_P_ALL (3) in network byte order: every protocol.
        fd = socket(AF_PACKET, Int32(SOCK_RAW.rawValue), Int32(UInt16(3).bigEndian))
        guard fd >= 0 else { throw UnixHTTP.Failure(description: "cannot open a packet socket: \(String(cString: strerror(errno)))") }
        self.limit = limit
        var timeout = timeval(tv_sec: 0, tv_usec: 200_000)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        var size: Int32 = 8 << 20
        setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &size, socklen_t(MemoryLayout<Int32>.size))
        let thread = Thread { [self] in
            read()
            finished.signal()
        }
        thread.start()
    }

    deinit {
        close(fd)
    }

    /// Stops reading (within the receive timeout) and returns what was captured.
    func stop() -> [Segment] {
        lock.withLock { stopping = true }
        _ = finished.wait(timeout: .now() + 5)
        return lock.withLock { kept }
    }

    /// The first payload bytes sent to `port` on each connection, in order of arrival: the client's
    /// opening bytes (a segment seen twice on loopback appears twice).
    static func openings(_ segments: [Segment], toPort port: UInt16) -> [[UInt8]] {
        var seen = Set<UInt16>()
        var openings: [[UInt8]] = []
        for segment in segments where segment.destinationPort == port && seen.insert(segment.sourcePort).inserted {
            openings.append(segment.head)
        }
        return openings
    }

    private func read() {
        var buffer = [UInt8](repeating: 0, count: 70_000)
        while !lock.withLock({ stopping }) {
            let count = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            guard count > 0 else { continue }
            if let segment = Self.parse(buffer, count: count) {
                lock.withLock { if kept.count < limit { kept.append(segment) } }
            }
        }
    }

    /// An Ethernet frame (loopback has a zeroed Ethernet header) carrying IPv4 and TCP with a payload.
    private static func parse(_ frame: [UInt8], count: Int) -> Segment? {
        let ip = 14
        guard count > ip + 20, frame[12] == 0x08, frame[13] == 0x00, frame[ip] >> 4 == 4, frame[ip + 9] == 6 else { return nil }
        let ipHeader = Int(frame[ip] & 0x0f) * 4
        let total = Int(frame[ip + 2]) << 8 | Int(frame[ip + 3])
        let tcp = ip + ipHeader
        guard count >= tcp + 20 else { return nil }
        let tcpHeader = Int(frame[tcp + 12] >> 4) * 4
        let payload = tcp + tcpHeader
        let end = min(count, ip + total)
        guard end > payload else { return nil }
        return Segment(
            sourcePort: UInt16(frame[tcp]) << 8 | UInt16(frame[tcp + 1]),
            destinationPort: UInt16(frame[tcp + 2]) << 8 | UInt16(frame[tcp + 3]),
            head: Array(frame[payload..<min(end, payload + 16)])
        )
    }
}
