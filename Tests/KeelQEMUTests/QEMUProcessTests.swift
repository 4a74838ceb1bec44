import Glibc
@testable import KeelQEMU
import KeelTestSupport
import Testing

/// Whether a pid from a status file is still its QEMU (keeld asks this for every query).
@Suite("a status file's pid is checked as a live QEMU")
struct QEMUProcessTests {
    @Test("the command name is read from /proc/PID/stat even when it holds ') ', and a zombie is seen")
    func statParsing() {
        let running = QEMUProcess.parse(stat: Array("1234 (qemu-system-x86) S 1 1234 1234 0 -1".utf8))
        #expect(String(decoding: running.command, as: UTF8.self) == "qemu-system-x86")
        #expect(!running.zombie)
        let tricky = QEMUProcess.parse(stat: Array("77 (a) Z (b) R 1 77".utf8))
        #expect(String(decoding: tricky.command, as: UTF8.self) == "a) Z (b", "the last ')' ends the name")
        #expect(!tricky.zombie)
        #expect(QEMUProcess.parse(stat: Array("9 (qemu) Z 1 9 9".utf8)).zombie)
        #expect(QEMUProcess.parse(stat: []).command.isEmpty)
        #expect(QEMUProcess.contains(Array("/usr/bin/qemu-system-x86_64\0-name\0x".utf8), "qemu"))
        #expect(!QEMUProcess.contains(Array("qem".utf8), "qemu"))
        #expect(!QEMUProcess.contains(Array("/bin/sleep\030".utf8), "qemu"))
    }

    @Test("a live process is a QEMU by its command name or its arguments; any other process, or one that exited, is not")
    func liveProcesses() throws {
        let plain = try Subprocess.spawn("/bin/sleep", ["30"])
        defer { plain.signal(SIGKILL); _ = plain.wait(timeout: 5) }
        // argv[0] says qemu, the command name (sleep) does not: the arguments decide.
        let named = try Subprocess.spawn("/bin/bash", ["-c", "exec -a qemu-stand-in /bin/sleep 30"])
        defer { named.signal(SIGKILL); _ = named.wait(timeout: 5) }
        usleep(200_000)
        #expect(!QEMUProcess(pid: plain.pid, qmpSocket: "").isAlive, "sleep is not a QEMU")
        #expect(QEMUProcess(pid: named.pid, qmpSocket: "").isAlive, "a process started as qemu-… is")
        named.signal(SIGKILL)
        _ = named.wait(timeout: 5)
        #expect(!QEMUProcess(pid: named.pid, qmpSocket: "").isAlive, "an exited process is not")
    }
}
