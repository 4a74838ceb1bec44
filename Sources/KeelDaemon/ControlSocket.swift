import Glibc
import KeelQEMU

/// The Unix socket the API listens on: its directory, a stale socket left by a killed daemon,
/// its owner and mode, and who may talk through it.
///
/// The socket is root-owned with mode 0600, or 0660 with the group of `--group`; the process
/// umask keeps it private from bind until its mode is set. Each request's peer credentials
/// (`SO_PEERCRED`) are checked as well, so loosening the file's mode by hand does not open the
/// API to other users.
struct ControlSocket: Sendable {
    let path: String
    /// The group allowed besides root, with its id.
    let group: (name: String, id: gid_t)?

    /// Resolves `group`.
    ///
    /// - Throws: `QEMUError` `.invalidArgument` for an unknown group.
    init(path: String, group: String?) throws {
        self.path = path
        if let group {
            guard let entry = getgrnam(group) else {
                throw QEMUError(.invalidArgument, "unknown group '\(group)'")
            }
            self.group = (group, entry.pointee.gr_gid)
        } else {
            self.group = nil
        }
    }

    var mode: mode_t { group == nil ? 0o600 : 0o660 }

    /// Creates the socket's directory and removes a stale socket; refuses to start when another
    /// daemon answers on it.
    ///
    /// - Returns: whether a stale socket was removed.
    /// - Throws: `QEMUError` `.busy` when the socket is live, `.io` when the path is unusable.
    func prepare() throws -> Bool {
        let directory = path.split(separator: "/", omittingEmptySubsequences: false).dropLast().joined(separator: "/")
        if !directory.isEmpty {
            try Self.makeDirectories(directory)
        }
        var info = stat()
        guard lstat(path, &info) == 0 else { return false }
        guard info.st_mode & S_IFMT == S_IFSOCK else {
            throw QEMUError(.io, "\(path) exists and is not a socket")
        }
        if Self.isLive(path) {
            throw QEMUError(.busy, "another daemon is listening on \(path)")
        }
        guard unlink(path) == 0 else {
            throw QEMUError(.io, "cannot remove the stale socket \(path): \(String(cString: strerror(errno)))")
        }
        return true
    }

    /// Creates the listening socket at `path` and gives it its owner and mode. Others can never
    /// reach it, without touching the process umask: on Linux the file takes the socket's own
    /// mode (less the umask) at bind, and that is set to 0600 first.
    ///
    /// - Returns: the listening socket.
    /// - Throws: `QEMUError` `.io` naming the step that failed.
    func bind(backlog: Int32 = 256) throws -> Int32 {
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw QEMUError(.io, "cannot create a socket: \(String(cString: strerror(errno)))") }
        var bound = false
        do {
            guard fchmod(fd, 0o600) == 0 else { throw QEMUError(.io, "cannot set the mode of a new socket: \(String(cString: strerror(errno)))") }
            guard var address = Self.address(path) else {
                throw QEMUError(.invalidArgument, "socket path \(path) is longer than \(MemoryLayout.size(ofValue: sockaddr_un().sun_path) - 1) bytes")
            }
            let result = withUnsafePointer(to: &address) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
            }
            guard result == 0 else { throw QEMUError(.io, "cannot bind \(path): \(String(cString: strerror(errno)))") }
            bound = true
            try secure()
            guard listen(fd, backlog) == 0 else { throw QEMUError(.io, "cannot listen on \(path): \(String(cString: strerror(errno)))") }
            return fd
        } catch {
            close(fd)
            if bound { unlink(path) }
            throw error
        }
    }

    /// Gives the bound socket its owner and mode.
    func secure() throws {
        if let group, chown(path, 0, group.id) != 0 && geteuid() == 0 {
            throw QEMUError(.io, "cannot give \(path) to group \(group.name): \(String(cString: strerror(errno)))")
        }
        guard chmod(path, mode) == 0 else {
            throw QEMUError(.io, "cannot set the mode of \(path): \(String(cString: strerror(errno)))")
        }
    }

    /// Removes the socket if it is still the one this daemon bound (same inode).
    func remove(inode: ino_t?) {
        var info = stat()
        guard let inode, lstat(path, &info) == 0, info.st_ino == inode else { return }
        unlink(path)
    }

    var inode: ino_t? {
        var info = stat()
        return lstat(path, &info) == 0 ? info.st_ino : nil
    }

    /// Whether a peer with these credentials may use the API: root, the daemon's own user, or a
    /// member of the socket's group.
    func allows(uid: uid_t, gid: gid_t, pid: pid_t) -> Bool {
        if uid == 0 || uid == geteuid() { return true }
        guard let group else { return false }
        if gid == group.id { return true }
        return Self.supplementaryGroups(of: pid).contains(group.id)
    }

    static func isLive(_ path: String) -> Bool {
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { return false }
        defer { close(fd) }
        guard var address = address(path) else { return false }
        let result = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        return result == 0
    }

    /// The address of a Unix socket at `path`, or nil when the path does not fit.
    private static func address(_ path: String) -> sockaddr_un? {
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8)
        guard bytes.count < MemoryLayout.size(ofValue: address.sun_path) else { return nil }
        withUnsafeMutableBytes(of: &address.sun_path) { buffer in
            for (index, byte) in bytes.enumerated() { buffer[index] = byte }
        }
        return address
    }

    private static func makeDirectories(_ path: String) throws {
        var prefix = ""
        for part in path.split(separator: "/") {
            prefix += "/" + part
            if mkdir(prefix, 0o755) != 0 && errno != EEXIST {
                throw QEMUError(.io, "cannot create \(prefix): \(String(cString: strerror(errno)))")
            }
        }
    }

    /// The supplementary groups of a process, from `/proc/PID/status`.
    private static func supplementaryGroups(of pid: pid_t) -> [gid_t] {
        guard let file = fopen("/proc/\(pid)/status", "r") else { return [] }
        defer { fclose(file) }
        var line: UnsafeMutablePointer<CChar>?
        var capacity = 0
        defer { free(line) }
        while getline(&line, &capacity, file) > 0 {
            guard let line else { break }
            let text = String(cString: line)
            if text.hasPrefix("Groups:") {
                return text.dropFirst("Groups:".count).split(whereSeparator: { $0 == " " || $0 == "\t" || $0 == "\n" }).compactMap { gid_t($0) }
            }
        }
        return []
    }
}

/// systemd socket activation (`sd_listen_fds(3)`): the API's socket inherited as fd 3 when
/// `LISTEN_PID` names this process.
public enum SocketActivation {
    /// The first file descriptor passed (`SD_LISTEN_FDS_START`).
    static let firstDescriptor: Int32 = 3

    /// The inherited listening socket, or nil when keeld was not socket-activated. Removes the
    /// `LISTEN_*` variables, so that nothing keeld starts takes them for its own.
    ///
    /// - Throws: `QEMUError` `.invalidArgument` when the passed descriptors are not exactly one
    ///   listening Unix stream socket (keeld never serves its API on a network socket).
    ///
    /// Call it first in `main`, before other threads may read the environment.
    public static func inheritedSocket() throws -> Int32? {
        defer {
            for name in ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"] { unsetenv(name) }
        }
        guard let pid = getenv("LISTEN_PID").flatMap({ pid_t(String(cString: $0)) }), pid == getpid(),
              let count = getenv("LISTEN_FDS").flatMap({ Int(String(cString: $0)) })
        else { return nil }
        if count == 0 { return nil }  // nothing passed: keeld binds its socket itself
        guard count == 1 else {
            throw QEMUError(.invalidArgument, "socket activation passed \(count) sockets; keeld serves exactly one (ListenStream= once in keeld.socket)")
        }
        let fd = firstDescriptor
        guard option(fd, SO_DOMAIN) == AF_UNIX, option(fd, SO_TYPE) == Int32(SOCK_STREAM.rawValue) else {
            throw QEMUError(.invalidArgument, "socket activation passed fd \(fd), which is not a Unix stream socket: keeld's API listens on a Unix socket only")
        }
        guard option(fd, SO_ACCEPTCONN) == 1 else {
            throw QEMUError(.invalidArgument, "socket activation passed fd \(fd), which is not listening")
        }
        _ = fcntl(fd, F_SETFD, FD_CLOEXEC)
        return fd
    }

    /// The path a Unix socket is bound to, when it has one.
    static func path(of fd: Int32) -> String? {
        var address = sockaddr_un()
        var length = socklen_t(MemoryLayout<sockaddr_un>.size)
        let result = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) }
        }
        guard result == 0 else { return nil }
        let path = withUnsafeBytes(of: &address.sun_path) { buffer in
            String(decoding: buffer.prefix(while: { $0 != 0 }), as: UTF8.self)
        }
        return path.isEmpty ? nil : path
    }

    private static func option(_ fd: Int32, _ name: Int32) -> Int32? {
        var value: Int32 = 0
        var length = socklen_t(MemoryLayout<Int32>.size)
        guard getsockopt(fd, SOL_SOCKET, name, &value, &length) == 0 else { return nil }
        return value
    }
}
