#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// The few POSIX socket operations the QMP client needs, on a raw descriptor.
enum UnixSocket {
    #if os(Linux)
    static let streamType = Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue)
    static let sendFlags = Int32(MSG_NOSIGNAL) | Int32(MSG_DONTWAIT)
    #else
    static let streamType = SOCK_STREAM
    static let sendFlags = Int32(MSG_DONTWAIT)
    #endif

    /// Connects a new stream socket to `path`.
    ///
    /// - Returns: the descriptor, or the errno of the failed call.
    static func connected(to path: String) throws(QMP.Error) -> Int32 {
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        let capacity = MemoryLayout.size(ofValue: address.sun_path)
        let pathBytes = Array(path.utf8)
        guard !pathBytes.isEmpty, pathBytes.count < capacity, !pathBytes.contains(0) else {
            throw .invalidArgument("socket path must be 1...\(capacity - 1) bytes without NUL: \(path)")
        }
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            raw.copyBytes(from: pathBytes)
        }
        let fd = socket(AF_UNIX, streamType, 0)
        guard fd >= 0 else { throw .systemCallFailed(call: "socket", errno: errno) }
        #if !os(Linux)
        var one: Int32 = 1
        _ = setsockopt(fd, SOL_SOCKET, SO_NOSIGPIPE, &one, socklen_t(MemoryLayout<Int32>.size))
        _ = fcntl(fd, F_SETFD, FD_CLOEXEC)
        #endif
        let result = withUnsafePointer(to: &address) { pointer in
            pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { socketAddress in
                connect(fd, socketAddress, socklen_t(MemoryLayout<sockaddr_un>.size))
            }
        }
        if result != 0 {
            let code = errno
            _ = close(fd)
            throw .systemCallFailed(call: "connect", errno: code)
        }
        return fd
    }

    /// Writes all of `bytes`, the descriptors `fds` riding as SCM_RIGHTS on the first
    /// `sendmsg`, waiting in `poll` while the socket buffer is full until `deadline`.
    static func send(_ bytes: [UInt8], fileDescriptors fds: [Int32], on fd: Int32, deadline: ContinuousClock.Instant) throws(QMP.Error) {
        var offset = 0
        var fdsPending = fds
        while offset < bytes.count {
            let written = bytes.withUnsafeBytes { raw in
                sendOnce(UnsafeRawBufferPointer(rebasing: raw[offset...]), fileDescriptors: fdsPending, on: fd)
            }
            if written >= 0 {
                offset += written
                // The kernel attaches the rights to the first byte written; never resend them.
                if written > 0 { fdsPending = [] }
                continue
            }
            let code = errno
            switch code {
            case EINTR:
                continue
            case EAGAIN, EWOULDBLOCK:
                try waitWritable(fd, deadline: deadline)
            case EPIPE, ECONNRESET, ENOTCONN:
                throw .disconnected
            default:
                throw .systemCallFailed(call: "sendmsg", errno: code)
            }
        }
    }

    private static func sendOnce(_ bytes: UnsafeRawBufferPointer, fileDescriptors fds: [Int32], on fd: Int32) -> Int {
        var iov = iovec(iov_base: UnsafeMutableRawPointer(mutating: bytes.baseAddress), iov_len: bytes.count)
        guard !fds.isEmpty else {
            var message = msghdr()
            return withUnsafeMutablePointer(to: &iov) { iovPointer in
                message.msg_iov = iovPointer
                message.msg_iovlen = 1
                return sendmsg(fd, &message, sendFlags)
            }
        }
        let payload = fds.count * MemoryLayout<Int32>.size
        let controlLength = controlSpace(payload)
        let control = UnsafeMutableRawPointer.allocate(byteCount: controlLength, alignment: MemoryLayout<cmsghdr>.alignment)
        defer { control.deallocate() }
        control.initializeMemory(as: UInt8.self, repeating: 0, count: controlLength)
        let header = control.bindMemory(to: cmsghdr.self, capacity: 1)
        header.pointee.cmsg_level = SOL_SOCKET
        header.pointee.cmsg_type = Int32(SCM_RIGHTS)
        header.pointee.cmsg_len = .init(controlHeaderLength + payload)
        fds.withUnsafeBytes { raw in
            (control + controlHeaderLength).copyMemory(from: raw.baseAddress ?? UnsafeRawPointer(control), byteCount: payload)
        }
        var message = msghdr()
        return withUnsafeMutablePointer(to: &iov) { iovPointer in
            message.msg_iov = iovPointer
            message.msg_iovlen = 1
            message.msg_control = control
            message.msg_controllen = .init(controlLength)
            return sendmsg(fd, &message, sendFlags)
        }
    }

    /// CMSG_ALIGN(sizeof(struct cmsghdr)): the C macros are not imported into Swift.
    static let controlHeaderLength = align(MemoryLayout<cmsghdr>.size)

    /// CMSG_SPACE(payload).
    static func controlSpace(_ payload: Int) -> Int {
        controlHeaderLength + align(payload)
    }

    private static func align(_ length: Int) -> Int {
        let unit = MemoryLayout<Int>.size
        return (length + unit - 1) & ~(unit - 1)
    }

    private static func waitWritable(_ fd: Int32, deadline: ContinuousClock.Instant) throws(QMP.Error) {
        let remaining = ContinuousClock.now.duration(to: deadline)
        guard remaining > .zero else { throw .timeout }
        let milliseconds = remaining.components.seconds * 1000 + remaining.components.attoseconds / 1_000_000_000_000_000 + 1
        var pollDescriptor = pollfd(fd: fd, events: Int16(POLLOUT), revents: 0)
        let result = poll(&pollDescriptor, 1, Int32(clamping: milliseconds))
        if result < 0, errno != EINTR {
            throw .systemCallFailed(call: "poll", errno: errno)
        }
        if result > 0, pollDescriptor.revents & Int16(POLLHUP | POLLERR) != 0 {
            throw .disconnected
        }
    }

    /// Reads what is available, blocking until at least one byte arrives or the peer closes.
    ///
    /// - Returns: the byte count, 0 at end of stream, or -1 with `errno` set.
    static func receive(_ buffer: UnsafeMutableRawBufferPointer, on fd: Int32) -> Int {
        while true {
            let count = recv(fd, buffer.baseAddress, buffer.count, 0)
            if count < 0, errno == EINTR { continue }
            return count
        }
    }

    /// Wakes a blocked `recv` on `fd` (it returns 0) without releasing the descriptor number.
    static func wake(_ fd: Int32) {
        #if os(Linux)
        _ = shutdown(fd, Int32(SHUT_RDWR))
        #else
        _ = shutdown(fd, SHUT_RDWR)
        #endif
    }

    /// Releases the descriptor.
    static func release(_ fd: Int32) {
        _ = close(fd)
    }
}
