import Foundation
import KeelCPU
import KeelDomain
import KeelQEMU
import KeelSaveImage
import Testing

/// Faults and bad input: a clear error before QEMU loads anything, nothing left running or
/// locked, images untouched.
@Suite("QEMU driver under faults", .serialized)
struct FaultTests {
    static let cpu = "<cpu mode='custom' match='exact'><model fallback='forbid'>qemu64</model></cpu>"

    /// Saves a fresh guest and returns the image path.
    func savedImage(_ fixture: DriverFixture, name: String) async throws -> String {
        try await fixture.driver.define(xml: fixture.domainXML(name: name, cpu: Self.cpu))
        try await fixture.driver.start(name: name)
        _ = try await fixture.cpuidBlock(name)
        let image = fixture.directory.appendingPathComponent("\(name).img").path
        try await fixture.driver.save(name: name, to: image)
        return image
    }

    /// Rewrites the data area of a copy of `image` through `edit`.
    func variant(of image: String, _ fixture: DriverFixture, _ label: String, edit: (inout String, inout String?) -> Void) throws -> String {
        let reader = try SaveImageReader(path: image)
        defer { reader.close() }
        var xml = reader.info.dataArea.xml
        var cookie = reader.info.dataArea.cookie
        edit(&xml, &cookie)
        let path = fixture.directory.appendingPathComponent("\(label).img").path
        let writer = try SaveImageWriter(path: path, dataArea: SaveImageDataArea(xml: xml, cookie: cookie), wasRunning: true)
        let stream = try reader.openStream()
        _ = try writer.copyStream(from: stream.fileDescriptor)
        try stream.finish()
        try writer.finish()
        return path
    }

    func expectRefusal(_ fixture: DriverFixture, _ path: String, containing text: String) async throws {
        let before = try Data(contentsOf: URL(fileURLWithPath: path))
        do {
            try await fixture.driver.restore(path: path)
            Issue.record("restore of \(path) succeeded")
        } catch let error as QEMUError {
            #expect(error.message.contains(text), "\(error.message)")
        }
        #expect(try fixture.driver.list().allSatisfy { $0.state == .shutoff }, "no guest is left running")
        #expect(try Data(contentsOf: URL(fileURLWithPath: path)) == before, "the image is untouched")
    }

    @Test("truncated, partial, corrupt-cookie, other-accelerator and unknown-machine images are refused with clear errors")
    func badImages() async throws {
        if let reason = DriverFixture.unavailableReason { print("SKIP: \(reason)"); return }
        try await DriverFixture.with { fixture in
            let image = try await savedImage(fixture, name: "bad")
            let data = try Data(contentsOf: URL(fileURLWithPath: image))
            let info = try SaveImage.read(path: image)

            let truncated = fixture.directory.appendingPathComponent("truncated.img").path
            try data.prefix(Int(info.streamOffset) - 10).write(to: URL(fileURLWithPath: truncated))
            try await expectRefusal(fixture, truncated, containing: "cannot restore from")

            let partial = fixture.directory.appendingPathComponent("partial.img").path
            var bytes = data
            bytes.replaceSubrange(0..<16, with: Array("LibvirtQemudPart".utf8))
            try bytes.write(to: URL(fileURLWithPath: partial))
            try await expectRefusal(fixture, partial, containing: "incomplete")

            let corrupt = try variant(of: image, fixture, "corrupt-cookie") { _, cookie in cookie = "<cookie><cpu><model>qemu64</model><feature policy='bogus' name='x'/></cpu></cookie>" }
            try await expectRefusal(fixture, corrupt, containing: "corrupt cookie")

            let otherAccelerator = try variant(of: image, fixture, "other-accel") { _, cookie in
                cookie = cookie?.replacingOccurrences(of: "accelerator='tcg'", with: "accelerator='kvm'")
            }
            try await expectRefusal(fixture, otherAccelerator, containing: "saved under kvm")

            let machine = try variant(of: image, fixture, "machine") { xml, _ in
                xml = xml.replacingOccurrences(of: "machine='pc-i440fx-7.2'", with: "machine='pc-i440fx-99.0'")
            }
            try await expectRefusal(fixture, machine, containing: "machine type 'pc-i440fx-99.0' is not supported")
        }
    }

    @Test("QEMU killed during a save: no complete-looking image, the domain is marked crashed, nothing hangs")
    func qemuKilledDuringSave() async throws {
        if let reason = DriverFixture.unavailableReason { print("SKIP: \(reason)"); return }
        try await DriverFixture.with { fixture in
            let name = "killsave"
            // 256 MiB of filled RAM makes the save long enough to interrupt.
            try await fixture.driver.define(xml: fixture.domainXML(name: name, memoryMiB: 320, cpu: Self.cpu, cmdline: "fill=256"))
            let status = try await fixture.driver.start(name: name)
            try await waitForSerial(fixture, name, "FILLED")
            let image = fixture.directory.appendingPathComponent("killed.img").path
            let killer = Task {
                // Kill as soon as QEMU has started writing the stream.
                for _ in 0..<2000 {
                    if let size = try? FileManager.default.attributesOfItem(atPath: image)[.size] as? Int, size > 1 << 20 { break }
                    try await Task.sleep(for: .milliseconds(2))
                }
                kill(status.pid, SIGKILL)
            }
            do {
                try await fixture.driver.save(name: name, to: image)
                Issue.record("save succeeded although QEMU was killed")
            } catch let error as QEMUError {
                #expect(error.code == .processExited || error.code == .io, "\(error)")
            }
            _ = try await killer.value
            if FileManager.default.fileExists(atPath: image) {
                #expect(throws: SaveImageError.self) { try SaveImage.read(path: image) }
            }
            #expect(try fixture.driver.state(of: name).0 == .crashed)
            // The crashed domain can be started again; no stale socket or lock blocks it.
            try await fixture.driver.start(name: name)
            #expect(try fixture.driver.state(of: name).0 == .running)
        }
    }

    @Test("a second modifying command on the same domain waits, then is refused naming the job in progress")
    func concurrentJobs() async throws {
        if let reason = DriverFixture.unavailableReason { print("SKIP: \(reason)"); return }
        try await DriverFixture.with { fixture in
            let name = "busy"
            try await fixture.driver.define(xml: fixture.domainXML(name: name, cpu: Self.cpu))
            do {
                let lock = try DomainLock.acquire(store: fixture.driver.store, name: name, job: "save")
                defer { withExtendedLifetime(lock) {} }
                do {
                    try await fixture.driver.start(name: name)
                    Issue.record("start ran while a save held the domain")
                } catch let error as QEMUError {
                    #expect(error.code == .busy)
                    #expect(error.message.contains("domain \(name) is busy: save (pid \(getpid())) in progress"), "\(error.message)")
                }
            }
            try await fixture.driver.start(name: name)
            #expect(try fixture.driver.state(of: name).0 == .running)
        }
    }

    @Test("QEMU that fails while starting leaves no runtime files and a clear error")
    func failedStart() async throws {
        if let reason = DriverFixture.unavailableReason { print("SKIP: \(reason)"); return }
        try await DriverFixture.with { fixture in
            let name = "nokernel"
            let xml = fixture.domainXML(name: name, cpu: Self.cpu).replacingOccurrences(of: DriverFixture.guestPath ?? "", with: "/nonexistent/kernel.elf")
            try await fixture.driver.define(xml: xml)
            do {
                try await fixture.driver.start(name: name)
                Issue.record("started without a kernel")
            } catch let error as QEMUError {
                #expect(error.code == .processExited)
                #expect(error.message.contains("QEMU failed to start"), "\(error.message)")
            }
            #expect(try fixture.driver.state(of: name).0 == .shutoff)
            #expect(!FileManager.default.fileExists(atPath: fixture.driver.store.qmpPath(name)))
        }
    }

    func waitForSerial(_ fixture: DriverFixture, _ name: String, _ text: String, timeout: TimeInterval = 60) async throws {
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline {
            if let data = FileManager.default.contents(atPath: fixture.serialPath(name)), String(decoding: data, as: UTF8.self).contains(text) { return }
            try await Task.sleep(for: .milliseconds(100))
        }
        Issue.record("\(name) never printed \(text)")
    }
}
