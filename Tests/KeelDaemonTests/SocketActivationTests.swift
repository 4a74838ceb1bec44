import Foundation
import KeelTestSupport
import Testing

/// keeld under systemd's socket activation (`contrib/systemd/keeld.socket`), with a stand-in for
/// systemd: a script that binds the socket, passes it as fd 3 with `LISTEN_PID`/`LISTEN_FDS`,
/// and replaces itself with keeld (so the pid is keeld's, as systemd makes it).
@Suite("keeld: socket activation", .serialized)
struct SocketActivationTests {
    static let script = """
        import os, socket, sys
        path, count = sys.argv[1], int(sys.argv[2])
        os.makedirs(os.path.dirname(path), exist_ok=True)
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.bind(path)
        os.chmod(path, 0o600)
        s.listen(16)
        print("bound inode %d" % os.stat(path).st_ino, flush=True)
        for i in range(count):
            if s.fileno() != 3 + i:
                os.dup2(s.fileno(), 3 + i)
            os.set_inheritable(3 + i, True)
        os.environ["LISTEN_FDS"] = str(count)
        os.environ["LISTEN_PID"] = str(os.getpid())
        os.execv(sys.argv[3], sys.argv[3:])
        """

    @Test("keeld serves the socket it is passed, leaves its file to systemd, and stops cleanly")
    func servesThePassedSocket() throws {
        guard let python = NobodyClient.python else { print("SKIP: python3 is not installed; nothing can stand in for systemd"); return }
        let keeld = try Keeld()
        defer { keeld.tearDown() }
        keeld.launcher = [python, "-c", Self.script, keeld.socket, "1"]
        try keeld.start()
        let log = keeld.log()
        #expect(log.contains("activated=true"), "\(log)")
        // The file is the one the stand-in bound: keeld neither removed nor re-bound it.
        let bound = log.split(separator: "\n").first { $0.hasPrefix("bound inode ") }.flatMap { UInt64($0.dropFirst("bound inode ".count)) }
        var info = stat()
        #expect(lstat(keeld.socket, &info) == 0)
        #expect(bound == UInt64(info.st_ino), "\(log)")
        #expect(try keeld.get("/v1/domains").status == 200)
        #expect(try keeld.get("/v1/domains/nosuch").errorCode == "not-found")

        #expect(keeld.stop(SIGTERM) == 0, "SIGTERM ends keeld cleanly: \(keeld.log())")
        #expect(lstat(keeld.socket, &info) == 0, "the socket file belongs to the socket unit and stays")
    }

    @Test("two passed sockets are refused with a message that says why")
    func refusesTwoSockets() throws {
        guard let python = NobodyClient.python else { print("SKIP: python3 is not installed; nothing can stand in for systemd"); return }
        let keeld = try Keeld()
        defer { keeld.tearDown() }
        keeld.launcher = [python, "-c", Self.script, keeld.socket, "2"]
        #expect(throws: (any Error).self) { try keeld.start() }
        #expect(keeld.log().contains("socket activation passed 2 sockets"), "\(keeld.log())")
    }
}
