import Foundation
import KeelQMP
import Testing

@Suite("QMP.Client against real QEMU")
struct RealQEMUTests {
    @Test("TCG QEMU: connect, query-status, getfd and add-fd of a pipe, quit")
    func session() async throws {
        guard TestQEMU.binary != nil else {
            print("skipped: qemu-system-x86_64 is not installed")
            return
        }
        let qemu = try TestQEMU(["-S", "-machine", "pc,accel=tcg", "-cpu", "qemu64", "-m", "32"])
        var ends: [Int32] = [0, 0]
        try #require(pipe(&ends) == 0)
        defer { ends.forEach { _ = close($0) } }

        let events = try await QMP.Client.withConnection(to: qemu.qmpPath, deadline: .seconds(20)) { client in
            #expect(client.greeting.version >= .init(major: 7, minor: 2, micro: 0))
            let status = try await client.execute("query-status")
            #expect(status["status"]?.stringValue == "prelaunch")

            try await client.sendFileDescriptor(ends[1], name: "keel-pipe")
            // QEMU holds the descriptor: closing it by name succeeds once, then it is gone.
            try await client.closeFileDescriptor(name: "keel-pipe")
            await #expect(throws: QMP.Error.self) { try await client.closeFileDescriptor(name: "keel-pipe") }

            let added = try await client.addFileDescriptor(ends[0], opaque: "keel-test")
            let fdsets = try await client.execute("query-fdsets")
            let set = try #require(fdsets.arrayValue?.first { $0["fdset-id"]?.intValue == added.fdset })
            #expect(set["fds"]?[0]?["fd"]?.intValue == added.fd)
            #expect(set["fds"]?[0]?["opaque"]?.stringValue == "keel-test")
            try await client.removeFileDescriptor(fdset: added.fdset)

            await #expect(throws: QMP.Error.commandFailed(class: "CommandNotFound", desc: "The command keel-no-such-command has not been found")) {
                try await client.execute("keel-no-such-command")
            }
            try await client.execute("quit")
            var names: [String] = []
            for await event in client.events { names.append(event.name) }
            return names
        }
        #expect(events == ["SHUTDOWN"])
        #expect(await qemu.stop(waitingUpTo: .seconds(10)))
    }
}
