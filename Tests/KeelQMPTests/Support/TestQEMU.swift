import Foundation
import KeelQMP

/// A QEMU started for one test; killed by `stop()` if still running.
final class TestQEMU: Sendable {
    static var binary: String? { findExecutable("qemu-system-x86_64") }

    let process: Process
    let directory: TemporaryDirectory
    var qmpPath: String { directory.file("qmp.sock") }

    /// Starts QEMU with `arguments` and a QMP socket in a fresh temporary directory.
    init(_ arguments: [String]) throws {
        guard let binary = TestQEMU.binary else { throw FakeQMPServer.Failure(description: "no qemu-system-x86_64") }
        directory = try TemporaryDirectory()
        process = Process()
        process.executableURL = URL(fileURLWithPath: binary)
        process.arguments = ["-nodefaults", "-display", "none", "-qmp", "unix:\(directory.file("qmp.sock")),server=on,wait=off"] + arguments
        process.standardInput = FileHandle.nullDevice
        process.standardOutput = FileHandle.nullDevice
        process.standardError = FileHandle(forWritingAtPath: "/dev/null")
        try process.run()
    }

    /// Waits up to `timeout` for QEMU to exit by itself; kills it otherwise. Returns whether
    /// it exited by itself.
    @discardableResult
    func stop(waitingUpTo timeout: Duration = .zero) async -> Bool {
        let exited = await eventually(timeout: timeout) { !process.isRunning }
        if process.isRunning {
            kill(process.processIdentifier, SIGKILL)
            process.waitUntilExit()
        }
        directory.cleanup()
        return exited
    }
}
