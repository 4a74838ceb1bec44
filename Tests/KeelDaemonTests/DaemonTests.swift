import Foundation
import KeelQEMU
import Testing

/// keeld end to end: the real binary on a temporary state directory, real QEMU (TCG) guests,
/// HTTP over its Unix socket.
@Suite("keeld: domains through the API", .serialized)
struct DaemonTests {
    static let ceilingConfiguration = """
        <keel>
          <cpu-ceiling>
            <cpu><model>qemu64</model><feature policy='require' name='hypervisor'/><feature policy='disable' name='cx16'/></cpu>
          </cpu-ceiling>
        </keel>
        """

    @Test("define, start, info, suspend, resume, save, a ceiling's 422 with the CPU bits, restore, destroy and undefine")
    func lifecycle() async throws {
        if let reason = Keeld.guestUnavailableReason { print("SKIP: \(reason)"); return }
        try await Keeld.with { keeld in
            let defined = try keeld.post("/v1/domains", ["xml": keeld.domainXML(name: "web")])
            #expect(defined.status == 201, "\(defined.text)")
            #expect(defined.json["state"] as? String == "shutoff")
            let list = try keeld.get("/v1/domains")
            #expect((list.json["domains"] as? [[String: Any]])?.compactMap { $0["name"] as? String } == ["web"])

            let started = try keeld.post("/v1/domains/web/start")
            #expect(started.status == 200, "\(started.text)")
            #expect(started.json["state"] as? String == "running")
            try keeld.waitForSerial("web", "CPUID 00000000")

            let info = try keeld.get("/v1/domains/web")
            #expect(info.status == 200)
            #expect(info.json["state"] as? String == "running")
            #expect(info.json["reason"] as? String == "booted")
            #expect((info.json["pid"] as? Int).map { isAlive(Int32($0)) } == true)
            #expect(info.json["uuid"] as? String != nil)
            let cpu = try #require(info.json["cpu"] as? String)
            #expect(cpu.contains("check='full'"), "the live CPU is the updated one")
            #expect((info.json["originalCPU"] as? String)?.contains("qemu64") == true)
            let migratable = try keeld.get("/v1/domains/web/xml?migratable=true")
            #expect(migratable.status == 200)
            #expect((migratable.json["xml"] as? String)?.contains("<name>web</name>") == true)

            #expect(try keeld.post("/v1/domains/web/suspend").json["state"] as? String == "paused")
            #expect(try keeld.get("/v1/domains/web").json["state"] as? String == "paused")
            #expect(try keeld.post("/v1/domains/web/resume").json["state"] as? String == "running")

            let image = keeld.directory.appendingPathComponent("web.img").path
            let saved = try keeld.post("/v1/domains/web/save", ["file": image])
            #expect(saved.status == 200, "\(saved.text)")
            #expect(saved.json["state"] as? String == "shutoff")
            #expect((saved.json["bytes"] as? Int ?? 0) > 0)

            // A host whose ceiling lacks cx16 refuses the image before QEMU starts, with the bits.
            try Self.ceilingConfiguration.write(toFile: keeld.state + "/config.xml", atomically: true, encoding: .utf8)
            keeld.signal(SIGHUP)
            let plan = try await eventually { () -> UnixHTTP.Response? in
                let plan = try keeld.post("/v1/restore", ["file": image, "dryRun": true])
                return plan.json["restorable"] as? Bool == false ? plan : nil
            }
            #expect((plan.json["missing"] as? [[String: Any]])?.compactMap { $0["name"] as? String } == ["cx16"])
            let refused = try keeld.post("/v1/restore", ["file": image])
            #expect(refused.status == 422, "\(refused.text)")
            #expect(refused.errorCode == "incompatible-cpu")
            let features = try #require((refused.json["error"] as? [String: Any])?["features"] as? [[String: Any]])
            #expect(features.count == 1)
            #expect(features.first?["name"] as? String == "cx16")
            #expect(features.first?["kind"] as? String == "missing")
            let bits = try #require(features.first?["bits"] as? [[String: Any]])
            #expect(bits.count == 1)
            #expect(bits.first?["type"] as? String == "cpuid")
            #expect(bits.first?["leaf"] as? Int == 1)
            #expect(bits.first?["subleaf"] as? Int == 0)
            #expect(bits.first?["register"] as? String == "ecx")
            #expect(bits.first?["bit"] as? Int == 13)
            #expect(try keeld.get("/v1/domains/web").json["state"] as? String == "shutoff", "no QEMU was started")

            try FileManager.default.removeItem(atPath: keeld.state + "/config.xml")
            keeld.signal(SIGHUP)
            _ = try await eventually { () -> Bool? in
                try keeld.post("/v1/restore", ["file": image, "dryRun": true]).json["restorable"] as? Bool == true ? true : nil
            }
            let restored = try keeld.post("/v1/restore", ["file": image])
            #expect(restored.status == 200, "\(restored.text)")
            #expect(restored.json["state"] as? String == "running")
            #expect(try keeld.get("/v1/domains/web").json["reason"] as? String == "restored")

            let destroyed = try keeld.post("/v1/domains/web/destroy")
            #expect(destroyed.status == 200)
            #expect(destroyed.json["state"] as? String == "shutoff")
            #expect(try keeld.delete("/v1/domains/web").status == 200)
            #expect(try keeld.get("/v1/domains/web").status == 404)

            let metrics = try keeld.get("/metrics")
            #expect(metrics.status == 200)
            #expect(metrics.headers["content-type"]?.hasPrefix("text/plain") == true)
            for line in [
                #"keel_jobs_total{job="start",outcome="ok"} 1"#, #"keel_jobs_total{job="save",outcome="ok"} 1"#,
                #"keel_jobs_total{job="restore",outcome="incompatible-cpu"} 1"#, #"keel_jobs_total{job="restore",outcome="ok"} 1"#,
                #"keel_domains{state="running"} 0"#,
            ] {
                #expect(metrics.text.contains(line + "\n"), "metrics lack \(line)")
            }
            #expect(metrics.text.contains("keel_save_bytes_total \(saved.json["bytes"] as? Int ?? -1)\n"))
            #expect(keeld.log().contains("domain=web") && keeld.log().contains("job=save outcome=ok"), "one log line per job")
        }
    }

    @Test("two modifying jobs on one domain: the second is refused naming the job in progress, queries answer meanwhile")
    func concurrentJobs() async throws {
        if let reason = Keeld.guestUnavailableReason { print("SKIP: \(reason)"); return }
        // No waiting: the second job is refused as soon as it arrives.
        try await Keeld.with(arguments: ["--job-timeout", "0"]) { keeld in
            // 256 MiB of filled RAM makes the save long enough to overlap.
            #expect(try keeld.post("/v1/domains", ["xml": keeld.domainXML(name: "busy", memoryMiB: 320, cmdline: "fill=256")]).status == 201)
            #expect(try keeld.post("/v1/domains/busy/start").status == 200)
            try keeld.waitForSerial("busy", "FILLED")
            let image = keeld.directory.appendingPathComponent("busy.img").path
            let socket = keeld.socket
            async let save = Keeld.background(socket: socket, "POST", "/v1/domains/busy/save", ["file": image])
            // Wait until the save job is recorded: it holds the gate from before then until the
            // image is complete.
            _ = try await eventually(timeout: 30, interval: .milliseconds(5)) { () -> Bool? in
                try keeld.get("/v1/domains/busy/job").json["job"] != nil ? true : nil
            }
            let refused = try await Keeld.background(socket: socket, "POST", "/v1/domains/busy/suspend")
            let query = try keeld.get("/v1/domains/busy")
            let saved = try await save
            #expect(saved.status == 200, "\(saved.text)")
            #expect(refused.status == 409, "\(refused.text)")
            #expect(refused.errorCode == "busy")
            #expect(refused.errorMessage.contains("save in progress"), "\(refused.errorMessage)")
            #expect(query.status == 200, "a query runs alongside the job")
            #expect(try keeld.get("/metrics").text.contains(#"keel_jobs_total{job="suspend",outcome="busy"} 1"#))
        }
    }

    @Test("SIGTERM stops keeld and guests keep running; a new keeld finds them and marks a dead one crashed")
    func gracefulRestart() async throws {
        if let reason = Keeld.guestUnavailableReason { print("SKIP: \(reason)"); return }
        try await Keeld.with { keeld in
            for name in ["survivor", "victim"] {
                #expect(try keeld.post("/v1/domains", ["xml": keeld.domainXML(name: name)]).status == 201)
                #expect(try keeld.post("/v1/domains/\(name)/start").status == 200)
            }
            let pid = try #require(try keeld.get("/v1/domains/survivor").json["pid"] as? Int)
            let victim = try #require(try keeld.get("/v1/domains/victim").json["pid"] as? Int)
            #expect(keeld.stop(SIGTERM) == 0, "keeld exits cleanly: \(keeld.log())")
            #expect(!FileManager.default.fileExists(atPath: keeld.socket), "the socket is removed")
            #expect(isAlive(Int32(pid)), "the guest outlives keeld")
            kill(Int32(victim), SIGKILL)

            try keeld.start()
            let info = try keeld.get("/v1/domains/survivor")
            #expect(info.json["state"] as? String == "running")
            #expect(info.json["pid"] as? Int == pid)
            _ = try await eventually { () -> Bool? in
                try keeld.get("/v1/domains/victim").json["state"] as? String == "crashed" ? true : nil
            }
            #expect(try keeld.post("/v1/domains/survivor/destroy").status == 200)
            _ = try await eventually { isAlive(Int32(pid)) ? nil : true }
            #expect(keeld.stop(SIGTERM) == 0)
        }
    }

    @Test("kill -9 of keeld: the restarted daemon replaces the stale socket and finds the running guest")
    func killedAndRestarted() async throws {
        if let reason = Keeld.guestUnavailableReason { print("SKIP: \(reason)"); return }
        try await Keeld.with { keeld in
            #expect(try keeld.post("/v1/domains", ["xml": keeld.domainXML(name: "phoenix")]).status == 201)
            #expect(try keeld.post("/v1/domains/phoenix/start").status == 200)
            let pid = try #require(try keeld.get("/v1/domains/phoenix").json["pid"] as? Int)
            keeld.stop(SIGKILL)
            #expect(FileManager.default.fileExists(atPath: keeld.socket), "a killed keeld leaves its socket")
            #expect(isAlive(Int32(pid)))

            try keeld.start()
            #expect(keeld.log().contains("removed a stale socket"))
            let info = try keeld.get("/v1/domains/phoenix")
            #expect(info.json["state"] as? String == "running")
            #expect(info.json["pid"] as? Int == pid)
            #expect(try keeld.post("/v1/domains/phoenix/suspend").status == 200, "jobs work on the found guest")
            #expect(try keeld.post("/v1/domains/phoenix/destroy").status == 200)
        }
    }
}

/// Polls `body` until it returns a value.
func eventually<T>(timeout: TimeInterval = 10, interval: Duration = .milliseconds(50), _ body: () throws -> T?) async throws -> T {
    let deadline = Date().addingTimeInterval(timeout)
    while Date() < deadline {
        if let value = try body() { return value }
        try await Task.sleep(for: interval)
    }
    throw UnixHTTP.Failure(description: "condition not met within \(timeout) s")
}

/// The lifecycle verbs through the API.
@Suite("keeld: lifecycle jobs", .serialized)
struct LifecycleAPITests {
    @Test("autostart, reboot, a save aborted through the job endpoint, managed save and its restore, a shutdown the guest ignores")
    func lifecycle() async throws {
        if let reason = Keeld.guestUnavailableReason { print("SKIP: \(reason)"); return }
        try await Keeld.with { keeld in
            #expect(try keeld.post("/v1/domains", ["xml": keeld.domainXML(name: "life", memoryMiB: 320, cmdline: "fill=256")]).status == 201)
            #expect(try keeld.post("/v1/domains/life/start").status == 200)
            try keeld.waitForSerial("life", "FILLED")
            let autostart = try UnixHTTP.json(socket: keeld.socket, "PUT", "/v1/domains/life/autostart", ["enabled": true])
            #expect(autostart.status == 200, "\(autostart.text)")
            #expect(autostart.json["autostart"] as? Bool == true)
            #expect(try keeld.post("/v1/domains/life/reboot").json["state"] as? String == "running")

            #expect(try keeld.get("/v1/domains/life/job").json["job"] == nil, "no job")
            #expect(try keeld.post("/v1/domains/life/job/abort").errorCode == "invalid-state")
            let socket = keeld.socket
            let image = keeld.directory.appendingPathComponent("aborted.img").path
            async let save = Keeld.background(socket: socket, "POST", "/v1/domains/life/save", ["file": image])
            let job = try await eventually(timeout: 20, interval: .milliseconds(5)) { () -> [String: Any]? in
                try keeld.get("/v1/domains/life/job").json["job"] as? [String: Any]
            }
            #expect(job["operation"] as? String == "save")
            let aborted = try await Keeld.background(socket: socket, "POST", "/v1/domains/life/job/abort")
            #expect(aborted.status == 200, "the abort runs while the save holds the domain: \(aborted.text)")
            let refused = try await save
            #expect(refused.status == 409, "\(refused.text)")
            #expect(refused.errorCode == "aborted")
            #expect(!FileManager.default.fileExists(atPath: image), "the image is discarded")
            #expect(try keeld.get("/v1/domains/life").json["state"] as? String == "running")

            let managed = try keeld.post("/v1/domains/life/managedsave")
            #expect(managed.status == 200, "\(managed.text)")
            #expect(managed.json["state"] as? String == "shutoff")
            #expect(try keeld.get("/v1/domains/life").json["managedSave"] as? Bool == true)
            #expect((try keeld.get("/v1/domains/life/managedsave").json["xml"] as? String)?.contains("<name>life</name>") == true)
            #expect(try keeld.post("/v1/domains/life/start").json["state"] as? String == "running")
            #expect(try keeld.get("/v1/domains/life").json["reason"] as? String == "restored", "start restored the managed save")

            // The test guest ignores ACPI: shutdown times out and leaves it running.
            let shutdown = try keeld.post("/v1/domains/life/shutdown", ["timeout": 0.5])
            #expect(shutdown.errorCode == "timeout", "\(shutdown.text)")
            #expect(try keeld.get("/v1/domains/life").json["state"] as? String == "running")
            #expect(try keeld.post("/v1/domains/life/destroy").status == 200)
            #expect(try keeld.delete("/v1/domains/life/managedsave").json["name"] as? String == "life")
            #expect(try keeld.get("/metrics").text.contains(#"keel_jobs_total{job="save",outcome="aborted"} 1"#))
        }
    }

    @Test("domains marked for autostart start when keeld starts, once per boot: a restart does not start them again")
    func autostartAtStartup() async throws {
        if let reason = Keeld.guestUnavailableReason { print("SKIP: \(reason)"); return }
        let keeld = try Keeld()
        defer { keeld.tearDown() }
        let driver = try Driver(stateDirectory: keeld.state)
        let guest = Keeld.guestPath ?? ""
        try await driver.define(xml: """
            <domain type='qemu'><name>auto</name><memory unit='MiB'>16</memory><vcpu>1</vcpu>
            <os><type arch='x86_64' machine='pc'>hvm</type><kernel>\(guest)</kernel></os>
            <cpu mode='custom' match='exact'><model fallback='forbid'>qemu64</model></cpu></domain>
            """)
        try driver.setAutostart(name: "auto", true)
        try keeld.start()
        let info = try UnixHTTP.json(socket: keeld.socket, "GET", "/v1/domains/auto")
        #expect(info.json["state"] as? String == "running", "\(info.text)")
        let destroyed = try UnixHTTP.json(socket: keeld.socket, "POST", "/v1/domains/auto/destroy")
        #expect(destroyed.status == 200, "\(destroyed.text)")
        _ = keeld.stop(SIGTERM)
        try keeld.start()
        let after = try UnixHTTP.json(socket: keeld.socket, "GET", "/v1/domains/auto")
        #expect(after.json["state"] as? String == "shutoff", "an administrator's stop is respected across daemon restarts: \(after.text)")
    }
}
