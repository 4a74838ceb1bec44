import Foundation
import KeelQMP
import KeelTestSupport

/// A QEMU started for one test; killed by `stop()` if still running.
final class TestQEMU: Sendable {
    static var binary: String? { findExecutable("qemu-system-x86_64") }

    let process: Subprocess.Child
    let directory: TemporaryDirectory
    var qmpPath: String { directory.file("qmp.sock") }

    /// Starts QEMU with `arguments` and a QMP socket in a fresh temporary directory.
    init(_ arguments: [String]) throws {
        guard let binary = TestQEMU.binary else { throw FakeQMPServer.Failure(description: "no qemu-system-x86_64") }
        directory = try TemporaryDirectory()
        process = try Subprocess.spawn(binary, ["-nodefaults", "-display", "none", "-qmp", "unix:\(directory.file("qmp.sock")),server=on,wait=off"] + arguments,
                                       captureOutput: false)
    }

    /// Waits up to `timeout` for QEMU to exit by itself; kills it otherwise. Returns whether
    /// it exited by itself.
    @discardableResult
    func stop(waitingUpTo timeout: Duration = .zero) async -> Bool {
        let exited = await eventually(timeout: timeout) { !process.isRunning }
        if process.isRunning {
            process.signal(SIGKILL)
            _ = process.wait(timeout: 30)
        }
        directory.cleanup()
        return exited
    }
}
