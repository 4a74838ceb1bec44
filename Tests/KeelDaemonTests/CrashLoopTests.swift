import Foundation
import KeelSaveImage
import Testing

/// `kill -9` of keeld at random points while it saves, restores and starts guests, with QEMUs
/// killed at random too; after each restart on the same state directory and socket, every guest
/// is where its last finished step left it and nothing is half done.
@Suite("keeld: kill -9 in a loop", .serialized)
struct CrashLoopTests {
    /// SplitMix64: the loop's choices follow from the printed seed.
    struct SeededGenerator: RandomNumberGenerator {
        var state: UInt64

        mutating func next() -> UInt64 {
            state &+= 0x9E37_79B9_7F4A_7C15
            var z = state
            z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
            z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
            return z ^ (z >> 31)
        }
    }

    static let steady = ["steady-1", "steady-2"]
    static let saver = "saver"
    static let restorer = "restorer"
    static let starter = "starter"
    static let names = steady + [saver, restorer, starter]

    /// What one iteration does before the kill.
    struct Plan: CustomStringConvertible {
        var save: Bool
        var restore: Bool
        var start: Bool
        var saverPaused: Bool
        var delayMilliseconds: Int
        /// QEMUs to kill while keeld is down.
        var kills: [String]

        init(_ random: inout SeededGenerator) {
            repeat {
                save = Bool.random(using: &random)
                restore = Bool.random(using: &random)
                start = Bool.random(using: &random)
            } while !(save || restore || start)
            saverPaused = Int.random(in: 0..<4, using: &random) == 0
            // Jobs take tens to hundreds of milliseconds: kill early more often.
            delayMilliseconds = Bool.random(using: &random) ? Int.random(in: 0...150, using: &random) : Int.random(in: 0...700, using: &random)
            kills = (CrashLoopTests.steady + [CrashLoopTests.saver]).filter { _ in Int.random(in: 0..<4, using: &random) == 0 }
        }

        var description: String {
            let jobs = [save ? "save" : nil, restore ? "restore" : nil, start ? "start" : nil].compactMap { $0 }
            return "jobs \(jobs.joined(separator: "+"))\(saverPaused ? " (saver paused)" : ""), kill keeld after \(delayMilliseconds) ms"
                + (kills.isEmpty ? "" : ", then QEMU of \(kills.joined(separator: ", "))")
        }
    }

    @Test("keeld killed mid-save, mid-restore or mid-start, QEMUs killed at random: every restart finds each guest whole")
    func killLoop() async throws {
        if let reason = Keeld.guestUnavailableReason { print("SKIP: \(reason)"); return }
        let environment = ProcessInfo.processInfo.environment
        let seed = environment["KEEL_CRASH_SEED"].flatMap { UInt64($0) } ?? UInt64.random(in: 1...UInt64(UInt32.max))
        let iterations = environment["KEEL_CRASH_ITERATIONS"].flatMap { Int($0) } ?? 10
        print("CrashLoopTests: seed \(seed), \(iterations) iterations (KEEL_CRASH_SEED=\(seed) repeats them)")
        var random = SeededGenerator(state: seed)
        let began = Date()
        try await Keeld.with { keeld in
            let image = keeld.directory.appendingPathComponent("restorer.img").path
            let saved = keeld.directory.appendingPathComponent("saver.img").path
            for name in Self.steady + [Self.starter] {
                #expect(try keeld.post("/v1/domains", ["xml": keeld.domainXML(name: name)]).status == 201)
            }
            // Filled RAM stretches the save and the restore over a few hundred milliseconds.
            #expect(try keeld.post("/v1/domains", ["xml": keeld.domainXML(name: Self.saver, memoryMiB: 128, cmdline: "fill=96")]).status == 201)
            #expect(try keeld.post("/v1/domains", ["xml": keeld.domainXML(name: Self.restorer, memoryMiB: 48, cmdline: "fill=32")]).status == 201)
            #expect(try keeld.post("/v1/domains/\(Self.restorer)/start").status == 200)
            try keeld.waitForSerial(Self.restorer, "FILLED")
            let made = try keeld.post("/v1/domains/\(Self.restorer)/save", ["file": image])
            try #require(made.status == 200, "\(made.text)")
            let imageSize = try FileManager.default.attributesOfItem(atPath: image)[.size] as? Int

            for iteration in 1...iterations {
                let plan = Plan(&random)
                let context = "iteration \(iteration) (seed \(seed)): \(plan)"
                print("CrashLoopTests: \(context)")
                try prepare(keeld, saverPaused: plan.saverPaused, saved: saved)
                var before: [String: Int] = [:]
                for name in Self.steady + [Self.saver] {
                    before[name] = try keeld.get("/v1/domains/\(name)").json["pid"] as? Int
                }

                let socket = keeld.socket
                var requests: [(job: String, path: String, body: [String: Any])] = []
                if plan.save { requests.append(("save", "/v1/domains/\(Self.saver)/save", ["file": saved])) }
                if plan.restore { requests.append(("restore", "/v1/restore", ["file": image])) }
                if plan.start { requests.append(("start", "/v1/domains/\(Self.starter)/start", [:])) }
                let outcomes = await withTaskGroup(of: (String, Int?).self) { group in
                    for request in requests {
                        let body = SendableBody(request.body)
                        let (job, path) = (request.job, request.path)
                        group.addTask {
                            // Answered only when the job finished before the kill.
                            (job, (try? await onThread { try UnixHTTP.json(socket: socket, "POST", path, body.value.isEmpty ? nil : body.value) })?.status)
                        }
                    }
                    let issued = Date()
                    try? await Task.sleep(for: .milliseconds(plan.delayMilliseconds))
                    keeld.stop(SIGKILL)
                    print("CrashLoopTests:   killed after \(Int(Date().timeIntervalSince(issued) * 1000)) ms")
                    var outcomes: [String: Int] = [:]
                    for await (job, status) in group {
                        if let status { outcomes[job] = status }
                    }
                    return outcomes
                }
                var killed: Set<String> = []
                var victims: [Int32] = []
                for name in plan.kills {
                    for pid in qemu(keeld, name) {
                        kill(pid, SIGKILL)
                        killed.insert(name)
                        victims.append(pid)
                    }
                }
                _ = try await eventually { victims.allSatisfy { !isAlive($0) } ? true : nil }

                let logOffset = keeld.log().utf8.count
                try keeld.start()
                for line in keeld.log().utf8.dropFirst(logOffset).split(separator: UInt8(ascii: "\n")) {
                    let text = String(decoding: line, as: UTF8.self)
                    if text.contains("recovered") { print("CrashLoopTests:   " + (text.split(separator: " ", maxSplits: 3).last.map(String.init) ?? text)) }
                }
                let detail = "\(context); answered before the kill: \(outcomes); killed: \(killed.sorted())"
                try check(keeld, detail: detail, plan: plan, before: before, killed: killed, outcomes: outcomes, saved: saved)
                #expect(try SaveImage.read(path: image).isComplete, "the restored image is intact: \(detail)")
                #expect(try FileManager.default.attributesOfItem(atPath: image)[.size] as? Int == imageSize, "\(detail)")
            }

            // The last keeld found its guests rather than started them, and still follows them
            // on their event monitors: a killed QEMU is crashed, a QEMU told to quit is stopped.
            try prepare(keeld, saverPaused: false, saved: saved)
            keeld.stop(SIGKILL)
            try keeld.start()
            _ = try await eventually { try keeld.get("/metrics").text.contains("keel_watched_processes 3\n") ? true : nil }
            // Followed; give the watcher a moment to be connected to each event monitor.
            try await Task.sleep(for: .milliseconds(500))
            let events = try EventStream(socket: keeld.socket)
            for (name, signal, expected) in [("steady-1", SIGKILL, "crashed QEMU exited without shutting down"), ("steady-2", SIGTERM, "stopped host-signal")] {
                let pid = try #require(qemu(keeld, name).first)
                kill(pid, signal)
                let seen = events.collect { $0["domain"] as? String == name }.last
                #expect(seen?.eventDetail == expected, "\(name): \(seen ?? [:])")
            }
        }
        print("CrashLoopTests: \(iterations) iterations in \(Int(Date().timeIntervalSince(began))) s")
    }

    /// Brings the guests to the iteration's start: steady guests and the saver running (the saver
    /// paused when asked), the restorer and the starter shut off, no image of the saver.
    func prepare(_ keeld: Keeld, saverPaused: Bool, saved: String) throws {
        try? FileManager.default.removeItem(atPath: saved)
        for name in Self.steady + [Self.saver] {
            switch try keeld.get("/v1/domains/\(name)").json["state"] as? String {
            case "running": break
            case "paused": try expectOK(keeld.post("/v1/domains/\(name)/resume"), "resume \(name)")
            default:
                let offset = serialSize(keeld, name)
                try expectOK(keeld.post("/v1/domains/\(name)/start"), "start \(name)")
                if name == Self.saver {
                    // Saved only once its RAM is full of data.
                    try waitForSerial(keeld, name, "FILLED", after: offset)
                }
            }
        }
        if saverPaused {
            try expectOK(keeld.post("/v1/domains/\(Self.saver)/suspend"), "suspend the saver")
        }
        for name in [Self.restorer, Self.starter] where try keeld.get("/v1/domains/\(name)").json["state"] as? String != "shutoff" {
            try expectOK(keeld.post("/v1/domains/\(name)/destroy"), "destroy \(name)")
        }
    }

    func serialSize(_ keeld: Keeld, _ name: String) -> Int {
        (try? FileManager.default.attributesOfItem(atPath: keeld.serialPath(name))[.size] as? Int) ?? 0
    }

    func waitForSerial(_ keeld: Keeld, _ name: String, _ text: String, after offset: Int) throws {
        let deadline = Date().addingTimeInterval(60)
        while Date() < deadline {
            if let data = FileManager.default.contents(atPath: keeld.serialPath(name)), data.count > offset,
               String(decoding: data[offset...], as: UTF8.self).contains(text) { return }
            usleep(50_000)
        }
        throw UnixHTTP.Failure(description: "no '\(text)' from \(name)")
    }

    func expectOK(_ response: UnixHTTP.Response, _ what: String) throws {
        try #require(response.status == 200, "\(what): \(response.text)")
    }

    /// The invariants after a restart.
    func check(_ keeld: Keeld, detail: String, plan: Plan, before: [String: Int], killed: Set<String>, outcomes: [String: Int], saved: String) throws {
        var states: [String: String] = [:]
        // Listed running or paused exactly when its QEMU lives; QEMU's own run state agrees;
        // jobs work on it.
        for name in Self.names {
            let info = try keeld.get("/v1/domains/\(name)")
            let state = info.json["state"] as? String ?? "?"
            states[name] = state
            let pids = qemu(keeld, name)
            #expect(pids.count <= 1, "one QEMU for \(name): \(pids); \(detail)")
            let live = state == "running" || state == "paused"
            #expect(live == !pids.isEmpty, "\(name) is \(state) with QEMU \(pids); \(detail)")
            guard live, let pid = pids.first else { continue }
            #expect(info.json["pid"] as? Int == Int(pid), "\(name) lists the live QEMU; \(detail)")
            let reply = try qmp(keeld.state + "/run/\(name).qmp", "query-status")
            let running = ((try? JSONSerialization.jsonObject(with: Data(reply.utf8))) as? [String: Any])
                .flatMap { $0["return"] as? [String: Any] }?["running"] as? Bool
            #expect(running == (state == "running"), "\(name) is listed \(state), QEMU says \(reply); \(detail)")
            let (first, second) = state == "running" ? ("suspend", "resume") : ("resume", "suspend")
            let one = try keeld.post("/v1/domains/\(name)/\(first)")
            let two = try keeld.post("/v1/domains/\(name)/\(second)")
            #expect(one.status == 200 && two.status == 200, "\(name) answers \(first) and \(second): \(one.text) \(two.text); \(detail)")
        }
        let strays = Set(keeld.qemuProcesses()).subtracting(Self.names.flatMap { qemu(keeld, $0) })
        #expect(strays.isEmpty, "no QEMU of another guest: \(strays); \(detail)")

        // The steady guests run on, or are crashed when their QEMU was killed.
        for name in Self.steady {
            if killed.contains(name) {
                #expect(states[name] == "crashed", "\(name), killed, is \(states[name] ?? "?"); \(detail)")
            } else {
                #expect(states[name] == "running", "\(name) is \(states[name] ?? "?"); \(detail)")
                #expect(qemu(keeld, name) == before[name].map { [Int32($0)] }, "\(name) keeps its QEMU; \(detail)")
            }
        }

        // The saver: saved (shut off, the image complete), or as it was with no complete image.
        var complete = false
        var imageState = "absent"
        if FileManager.default.fileExists(atPath: saved) {
            do {
                complete = try SaveImage.read(path: saved).isComplete
                imageState = complete ? "complete" : "incomplete"
            } catch let error as SaveImageError where error.code == .incomplete {
                imageState = "incomplete"
            } catch {
                imageState = "unreadable: \(error)"
            }
        }
        let saver = states[Self.saver] ?? "?"
        let saverDetail = "saver \(saver), image \(imageState); \(detail)"
        #expect(imageState == "absent" || imageState == "complete" || imageState == "incomplete", "a partial image is refused as incomplete; \(saverDetail)")
        if complete {
            #expect(saver == "shutoff", "a finished save stopped the guest; \(saverDetail)")
        } else if killed.contains(Self.saver) {
            #expect(saver == "crashed", "\(saverDetail)")
        } else {
            #expect(saver == (plan.saverPaused ? "paused" : "running"), "an interrupted save leaves the guest as it was; \(saverDetail)")
            #expect(qemu(keeld, Self.saver) == before[Self.saver].map { [Int32($0)] }, "the same QEMU; \(saverDetail)")
        }
        if outcomes["save"] == 200 {
            #expect(complete, "\(saverDetail)")
        }

        // The restorer: restored and running, or shut off; the starter: running or shut off.
        let restorer = states[Self.restorer] ?? "?"
        #expect(["running", "shutoff"].contains(restorer), "no half-restored guest: restorer \(restorer); \(detail)")
        if outcomes["restore"] == 200 { #expect(restorer == "running", "\(detail)") }
        if !plan.restore { #expect(restorer == "shutoff", "\(detail)") }
        let starter = states[Self.starter] ?? "?"
        #expect(["running", "paused", "shutoff"].contains(starter), "starter \(starter); \(detail)")
        if outcomes["start"] == 200 { #expect(starter == "running", "\(detail)") }
        if !plan.start { #expect(starter == "shutoff", "\(detail)") }

        let jobs = ((try? FileManager.default.contentsOfDirectory(atPath: keeld.state + "/run")) ?? []).filter { $0.hasSuffix(".job") }
        #expect(jobs.isEmpty, "recovery leaves no job record: \(jobs); \(detail)")
        print("CrashLoopTests:   answered \(outcomes.sorted { $0.key < $1.key }.map { "\($0.key) \($0.value)" }), after restart "
            + Self.names.map { "\($0) \(states[$0] ?? "?")" }.joined(separator: ", ") + ", saver image \(imageState)")
    }
}

/// Runs blocking work on a thread of its own: blocked Dispatch workers would delay the
/// timers of `Task.sleep`, and so the kill.
func onThread<T: Sendable>(_ body: @escaping @Sendable () throws -> T) async throws -> T {
    try await withCheckedThrowingContinuation { continuation in
        Thread { continuation.resume(with: Result { try body() }) }.start()
    }
}

/// A request body handed to another task.
struct SendableBody: @unchecked Sendable {
    let value: [String: Any]
    init(_ value: [String: Any]) { self.value = value }
}

/// The live QEMU processes of domain `name` in this daemon's state directory.
func qemu(_ keeld: Keeld, _ name: String) -> [Int32] {
    keeld.qemuProcesses().filter { pid in
        guard let cmdline = FileManager.default.contents(atPath: "/proc/\(pid)/cmdline") else { return false }
        return cmdline.split(separator: 0).contains { String(decoding: $0, as: UTF8.self) == "guest=\(name)" }
    }
}
