import Foundation
import KeelTestSupport
import Testing

@testable import KeelSaveImage

/// Kills a real writer process with SIGKILL at each step of the write protocol.
///
/// The writer runs in a child copy of this test binary (`/proc/self/exe`), selected with
/// `--filter` and told what to do through `KEEL_SAVEIMAGE_CHILD_WRITER`; it parks itself at the
/// requested step and the parent kills it there.
@Suite("Writer killed mid-write")
struct WriterKillTests {
    static let environmentKey = "KEEL_SAVEIMAGE_CHILD_WRITER"

    @Test("child writer: does nothing unless started by the kill test")
    func childWriter() throws {
        guard let spec = ProcessInfo.processInfo.environment[Self.environmentKey] else {
            return
        }
        let parts = spec.split(separator: "|").map(String.init)
        let path = parts[0], marker = parts[1]
        let step = try #require(Int(parts[2]).flatMap(SaveImageWriter.Step.init(rawValue:)))
        let writer = try SaveImageWriter(
            path: path, dataArea: SaveImageDataArea(xml: Samples.xml, cookie: Samples.cookie),
            wasRunning: true, compression: .raw, permissions: 0o600,
            hook: { reached in
                guard reached == step else { return }
                _ = FileManager.default.createFile(atPath: marker, contents: nil)
                while true { sleep(60) }  // wait for SIGKILL
            })
        for _ in 0..<4 { try writer.write(Samples.stream(count: 10_000)) }
        try writer.finish()
    }

    @Test("a writer process killed at any step before the final header leaves an image that reads as incomplete",
          arguments: SaveImageWriter.Step.allCases)
    func killAtStep(_ step: SaveImageWriter.Step) throws {
        guard ProcessInfo.processInfo.environment[Self.environmentKey] == nil else { return }
        let dir = try TemporaryDirectory()
        let path = dir.file("killed.save"), marker = dir.file("marker")
        var environment = ProcessInfo.processInfo.environment
        environment[Self.environmentKey] = "\(path)|\(marker)|\(step.rawValue)"
        let binary = URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath().path
        let child = try Subprocess.spawn(binary, ["--testing-library", "swift-testing", "--filter", "childWriter"],
                                         environment: environment, captureOutput: false)
        let deadline = Date().addingTimeInterval(60)
        while !FileManager.default.fileExists(atPath: marker) && child.isRunning && Date() < deadline {
            usleep(20_000)
        }
        guard FileManager.default.fileExists(atPath: marker) else {
            child.signal(SIGKILL)
            let status = child.wait(timeout: 30)
            print("SKIP: the test binary could not be re-run as a writer child (status \(status.map(String.init) ?? "none"))")
            return
        }
        child.signal(SIGKILL)
        #expect(child.wait(timeout: 30) == 128 + SIGKILL)

        if step.rawValue < SaveImageWriter.Step.completeHeader.rawValue {
            let error = try #require(throws: SaveImageError.self) { try SaveImage.read(path: path) }
            #expect(error.code == .incomplete)
            let verifyError = try #require(throws: SaveImageError.self) { try SaveImage.verify(path: path) }
            #expect(verifyError.code == .incomplete)
        } else {
            // The complete magic is written only after the whole stream was synced.
            #expect(try SaveImage.verify(path: path).streamBytes == 40_000)
        }
    }
}
