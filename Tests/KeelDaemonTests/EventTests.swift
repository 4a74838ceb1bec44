import Foundation
@testable import KeelDaemon
import KeelQEMU
import Testing

/// The event bus and the event lines, without a daemon.
@Suite("keeld: the event bus")
struct EventBusTests {
    @Test("a subscriber that falls behind loses its oldest events and learns how many were lost, and where")
    func overflow() async throws {
        let bus = EventBus(bufferLimit: 4)
        let subscription = try #require(bus.subscribe(domain: nil))
        for index in 0..<10 { bus.publish(DomainEvent(.defined, domain: "d\(index)")) }
        var reader = subscription.makeReader()
        let first = await reader.next()
        #expect(first?.dropped == 6)
        #expect(first?.event.domain == "d6")
        for index in 7..<10 {
            let next = await reader.next()
            #expect(next?.dropped == 0)
            #expect(next?.event.domain == "d\(index)")
        }
        bus.publish(DomainEvent(.undefined, domain: "d9"))
        #expect(await reader.next()?.dropped == 0, "a reader that caught up loses nothing")
        #expect(bus.counts.published == 11)
        #expect(bus.counts.dropped == 6)
        bus.unsubscribe(subscription)
        #expect(await reader.next() == nil, "unsubscribing ends the stream")
        #expect(bus.subscriberCount == 0)
    }

    @Test("a domain filter delivers that domain's events only; closing the bus ends every stream and refuses new ones")
    func filterAndClose() async throws {
        let bus = EventBus()
        let web = try #require(bus.subscribe(domain: "web"))
        let all = try #require(bus.subscribe(domain: nil))
        bus.publish(DomainEvent(.started, domain: "db"))
        bus.publish(DomainEvent(.started, domain: "web"))
        #expect(bus.subscriberCount == 2)
        bus.close()
        var webReader = web.makeReader()
        var allReader = all.makeReader()
        #expect(await webReader.next()?.event.domain == "web")
        #expect(await webReader.next() == nil)
        #expect(await allReader.next()?.event.domain == "db")
        #expect(await allReader.next()?.event.domain == "web")
        #expect(await allReader.next() == nil)
        #expect(bus.subscribe(domain: nil) == nil)
    }

    @Test("an event is one JSON line: sorted keys, RFC 3339 UTC time, a job only with job-progress")
    func lines() {
        let saved = DomainEvent(.saved, domain: "web", detail: "/srv/web.img", time: "2026-11-28T10:00:00.007Z")
        #expect(String(decoding: saved.line, as: UTF8.self)
            == #"{"detail":"/srv/web.img","domain":"web","event":"saved","time":"2026-11-28T10:00:00.007Z"}"# + "\n")
        #expect(DomainEvent.rfc3339(seconds: 1_795_860_000, milliseconds: 7) == "2026-11-28T10:00:00.007Z")
        #expect(DomainEvent.rfc3339(seconds: 0, milliseconds: 999) == "1970-01-01T00:00:00.999Z")
        let job = DomainJob(operation: .save, pid: 1, startedMilliseconds: 1000, updatedMilliseconds: 1500, status: "active",
                            dataTotal: 100, dataProcessed: 40, dataRemaining: 60, memoryBandwidth: 80)
        var progress = DomainEvent.progress("web", job)
        progress.time = "2026-11-28T10:00:00.000Z"
        progress.job?.elapsedMs = 500
        #expect(String(decoding: progress.line, as: UTF8.self) == #"{"detail":"active","domain":"web","event":"job-progress","#
            + #""job":{"bytesProcessed":40,"bytesRemaining":60,"bytesTotal":100,"elapsedMs":500,"operation":"save","throughput":80},"#
            + #""time":"2026-11-28T10:00:00.000Z"}"# + "\n")
        var overflow = DomainEvent.overflow(dropped: 3)
        overflow.time = "2026-11-28T10:00:00.000Z"
        #expect(String(decoding: overflow.line, as: UTF8.self) == #"{"detail":"3 events dropped","event":"overflow","time":"2026-11-28T10:00:00.000Z"}"# + "\n")
    }
}

/// `GET /v1/events` end to end: the real keeld, real TCG guests.
@Suite("keeld: lifecycle events", .serialized)
struct EventTests {
    @Test("define, start, suspend, resume, save, restore, destroy, undefine: the exact events, filtered by ?domain=, until keeld stops")
    func sequence() async throws {
        if let reason = Keeld.guestUnavailableReason { print("SKIP: \(reason)"); return }
        try await Keeld.with { keeld in
            var all: EventStream? = try EventStream(socket: keeld.socket)
            var web: EventStream? = try EventStream(socket: keeld.socket, domain: "web")
            var other: EventStream? = try EventStream(socket: keeld.socket, domain: "other")
            #expect(all?.status == 200)
            #expect(all?.headers["content-type"] == "application/x-ndjson")
            #expect(all?.headers["transfer-encoding"] == "chunked")
            #expect(try keeld.get("/metrics").text.contains("keel_event_subscribers 3\n"))
            #expect(try keeld.get("/v1/events?domain=..").errorCode == "invalid-argument", "a domain filter is a domain name")

            let image = keeld.directory.appendingPathComponent("web.img").path
            #expect(try keeld.post("/v1/domains", ["xml": keeld.domainXML(name: "web")]).status == 201)
            #expect(try keeld.post("/v1/domains/web/start").status == 200)
            #expect(try keeld.post("/v1/domains/web/suspend").status == 200)
            #expect(try keeld.post("/v1/domains/web/resume").status == 200)
            #expect(try keeld.post("/v1/domains/web/save", ["file": image]).status == 200)
            #expect(try keeld.post("/v1/restore", ["file": image]).status == 200)
            #expect(try keeld.post("/v1/domains/web/destroy").status == 200)
            #expect(try keeld.delete("/v1/domains/web").status == 200)
            #expect(try keeld.post("/v1/domains", ["xml": keeld.domainXML(name: "other")]).status == 201)
            #expect(try keeld.post("/v1/domains/other/start", ["paused": true]).status == 200)

            let expected = [
                "defined added", "started booted", "paused user", "resumed user", "saved \(image)", "restored \(image)",
                "stopped destroyed", "undefined",
            ]
            let webEvents = try #require(web).collect { $0["event"] as? String == "undefined" }.filter { $0["event"] as? String != "job-progress" }
            #expect(webEvents.map(\.eventDetail) == expected)
            #expect(webEvents.allSatisfy { $0["domain"] as? String == "web" })
            #expect(web?.next(timeout: 1) == nil, "nothing of other domains")

            let allEvents = try #require(all).collect { $0["event"] as? String == "paused" && $0["domain"] as? String == "other" }
                .filter { $0["event"] as? String != "job-progress" }
            #expect(allEvents.map { "\($0["domain"] as? String ?? "?") \($0.eventDetail)" }
                == expected.map { "web \($0)" } + ["other defined added", "other started booted", "other paused start"])
            for event in allEvents {
                let time = event["time"] as? String ?? ""
                #expect(time.wholeMatch(of: #/\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z/#) != nil, "time \(time)")
                #expect(event["job"] == nil)
            }
            let otherEvents = try #require(other).collect { $0["event"] as? String == "paused" }
            #expect(otherEvents.map(\.eventDetail) == ["defined added", "started booted", "paused start"])

            // Closed streams leave the bus.
            web = nil
            other = nil
            _ = try await eventually { try keeld.get("/metrics").text.contains("keel_event_subscribers 1\n") ? true : nil }
            // SIGTERM ends the open stream and keeld exits cleanly.
            #expect(keeld.stop(SIGTERM) == 0, "\(keeld.log())")
            #expect(all?.waitForEnd() == true, "the stream ends with keeld")
            all = nil
        }
    }

    @Test("QEMU killed from outside is crashed, SIGTERM to QEMU or its quit is stopped, the guest powering off is shutdown")
    func exits() async throws {
        if let reason = Keeld.guestUnavailableReason { print("SKIP: \(reason)"); return }
        try await Keeld.with { keeld in
            for name in ["victim", "quitter", "polite", "acpi"] {
                #expect(try keeld.post("/v1/domains", ["xml": keeld.domainXML(name: name, acpi: name == "polite" || name == "acpi")]).status == 201)
                #expect(try keeld.post("/v1/domains/\(name)/start").status == 200)
            }
            let stream = try EventStream(socket: keeld.socket)
            func pid(_ name: String) throws -> Int32 { Int32(try #require(try keeld.get("/v1/domains/\(name)").json["pid"] as? Int)) }
            func next(_ name: String) -> [String: Any]? {
                stream.collect(timeout: 30) { $0["domain"] as? String == name }.last.flatMap { $0["domain"] as? String == name ? $0 : nil }
            }

            kill(try pid("victim"), SIGKILL)
            #expect(next("victim")?.eventDetail == "crashed QEMU exited without shutting down")
            #expect(try keeld.get("/v1/domains/victim").json["state"] as? String == "crashed")

            let quitter = try pid("quitter")
            kill(quitter, SIGTERM)
            #expect(next("quitter")?.eventDetail == "stopped host-signal")
            #expect(try keeld.get("/v1/domains/quitter").json["state"] as? String == "shutoff", "a clean exit is no crash")
            #expect(!isAlive(quitter))

            // The guest acts on the ACPI power button: through the API, and pressed by someone else.
            try keeld.waitForSerial("polite", "TICK 1")
            try keeld.waitForSerial("acpi", "TICK 1")
            let shutdown = try keeld.post("/v1/domains/polite/shutdown", ["timeout": 30])
            #expect(shutdown.status == 200, "\(shutdown.text)")
            #expect(shutdown.json["state"] as? String == "shutoff")
            #expect(next("polite")?.eventDetail == "shutdown guest")
            let reply = try qmp(keeld.state + "/run/acpi.qmp", "system_powerdown")
            #expect(reply.contains("\"return\""), "\(reply)")
            #expect(next("acpi")?.eventDetail == "shutdown guest")
            #expect(try keeld.get("/v1/domains/acpi").json["state"] as? String == "shutoff")
            #expect(stream.next(timeout: 2) == nil, "one event per exit")
            #expect(keeld.qemuProcesses().isEmpty)
            #expect(try keeld.get("/metrics").text.contains("keel_watched_processes 0\n"))
        }
    }

    @Test("a save and a restore of a 128 MiB guest filled with data report their progress until completed")
    func progress() async throws {
        if let reason = Keeld.guestUnavailableReason { print("SKIP: \(reason)"); return }
        try await Keeld.with { keeld in
            #expect(try keeld.post("/v1/domains", ["xml": keeld.domainXML(name: "big", memoryMiB: 128, cmdline: "fill=112")]).status == 201)
            #expect(try keeld.post("/v1/domains/big/start").status == 200)
            try keeld.waitForSerial("big", "FILLED")
            let stream = try EventStream(socket: keeld.socket, domain: "big")
            let image = keeld.directory.appendingPathComponent("big.img").path
            #expect(try keeld.post("/v1/domains/big/save", ["file": image]).status == 200)
            let saving = stream.collect { $0["event"] as? String == "saved" }
            #expect(saving.last?["event"] as? String == "saved")
            try Self.checkProgress(saving.dropLast(), operation: "save", atLeast: 112 << 20)

            #expect(try keeld.post("/v1/restore", ["file": image]).status == 200)
            let restoring = stream.collect { $0["event"] as? String == "restored" }
            #expect(restoring.last?["event"] as? String == "restored")
            try Self.checkProgress(restoring.dropLast(), operation: "restore", atLeast: 112 << 20)
            #expect(try keeld.post("/v1/domains/big/destroy").status == 200)
        }
    }

    /// Progress events only, of `operation`, moving forward, the last one completed with every byte.
    static func checkProgress(_ events: ArraySlice<[String: Any]>, operation: String, atLeast bytes: Int) throws {
        #expect(!events.isEmpty, "progress was reported")
        #expect(events.allSatisfy { $0["event"] as? String == "job-progress" }, "\(events.map(\.eventDetail))")
        let jobs = events.compactMap { $0["job"] as? [String: Any] }
        #expect(jobs.count == events.count)
        #expect(jobs.allSatisfy { $0["operation"] as? String == operation })
        let processed = jobs.map { $0["bytesProcessed"] as? Int ?? -1 }
        let elapsed = jobs.map { $0["elapsedMs"] as? Int ?? -1 }
        #expect(processed == processed.sorted() && elapsed == elapsed.sorted(), "progress moves forward: \(processed) \(elapsed)")
        let last = try #require(jobs.last)
        #expect(events.last?["detail"] as? String == "completed")
        #expect(last["bytesRemaining"] as? Int == 0)
        #expect((last["bytesTotal"] as? Int ?? 0) >= bytes, "\(last)")
        #expect((last["bytesProcessed"] as? Int ?? 0) >= bytes, "\(last)")
        #expect((last["throughput"] as? Int ?? 0) > 0)
        for key in ["bytesTotal", "bytesProcessed", "bytesRemaining", "throughput", "elapsedMs"] {
            #expect(jobs.allSatisfy { $0[key] is Int }, "every job carries \(key)")
        }
    }

    @Test("a subscriber that stops reading loses its oldest events, marked by an overflow line; requests and other subscribers go on")
    func slowSubscriber() async throws {
        if let reason = Keeld.guestUnavailableReason { print("SKIP: \(reason)"); return }
        try await Keeld.with(arguments: ["--event-buffer", "32"]) { keeld in
            // A long name makes long lines, which fill the socket's buffers sooner (it still fits
            // a socket path).
            let name = "slow-" + String(repeating: "x", count: 50)
            #expect(try keeld.post("/v1/domains", ["xml": keeld.domainXML(name: name)]).status == 201)
            #expect(try keeld.post("/v1/domains/\(name)/start").status == 200)
            #expect(try keeld.post("/v1/domains", ["xml": keeld.domainXML(name: "marker")]).status == 201)
            let stuck = try EventStream(socket: keeld.socket)
            let live = try EventStream(socket: keeld.socket)
            // The live subscriber reads as events come, on a thread of its own, up to the marker.
            let seen: Task<[String], Never> = Task.detached {
                live.collect(timeout: 120) { $0["domain"] as? String == "marker" }.map(\.eventDetail)
            }
            // Events until the stuck subscriber has lost some (its buffer and the socket's are full).
            var published = 0
            var slowest = 0.0
            var dropping = false
            while published < 4000 {
                for job in ["suspend", "resume"] {
                    let started = Date()
                    let response = try keeld.post("/v1/domains/\(name)/\(job)")
                    slowest = max(slowest, Date().timeIntervalSince(started))
                    try #require(response.status == 200, "\(response.text)")
                    published += 1
                }
                if published % 50 == 0 {
                    if dropping { break }
                    dropping = !(try keeld.get("/metrics").text.contains("keel_events_dropped_total 0\n"))
                }
            }
            #expect(dropping, "the stuck subscriber lost events after \(published)")
            #expect(try keeld.delete("/v1/domains/marker").status == 200)
            published += 1
            #expect(slowest < 2, "no request waited for the stuck subscriber (slowest \(slowest) s of \(published))")
            let events = await seen.value
            #expect(events.count == published, "the live subscriber saw every event")
            #expect(!events.contains { $0.hasPrefix("overflow") })
            #expect(try keeld.get("/metrics").text.contains("keel_event_subscribers 2\n"))

            // Reading at last: what fit in the socket, an overflow line, then the newest events.
            let delivered = stuck.collect(timeout: 30) { $0["domain"] as? String == "marker" }
            let gaps = delivered.filter { $0["event"] as? String == "overflow" }
            #expect(gaps.count == 1, "one gap: \(gaps)")
            let dropped = Int((gaps.first?["detail"] as? String ?? "").split(separator: " ").first ?? "") ?? 0
            #expect(dropped > 0)
            #expect(gaps.first?["domain"] == nil)
            #expect(delivered.count - gaps.count + dropped == published, "every event is delivered or counted as dropped")
            let after = delivered.count - 1 - (delivered.firstIndex { $0["event"] as? String == "overflow" } ?? 0)
            #expect(after >= 32, "a buffer's worth of the newest events follows the gap")
            #expect(delivered.last?["event"] as? String == "undefined")
            print("slow subscriber: \(published) events, \(delivered.count - 1) delivered, \(dropped) dropped")
        }
    }
}

/// Sends one command on a QMP socket (as another client of QEMU would) and returns its reply line.
func qmp(_ socket: String, _ command: String) throws -> String {
    let fd = try UnixHTTP.connect(socket, timeout: 10)
    defer { close(fd) }
    var pending = Data()
    func line() throws -> String {
        while true {
            if let newline = pending.firstIndex(of: UInt8(ascii: "\n")) {
                let text = String(decoding: pending[pending.startIndex..<newline], as: UTF8.self)
                pending = Data(pending[pending.index(after: newline)...])
                return text
            }
            var chunk = [UInt8](repeating: 0, count: 4096)
            let count = recv(fd, &chunk, chunk.count, 0)
            guard count > 0 else { throw UnixHTTP.Failure(description: "QMP socket \(socket) closed") }
            pending.append(contentsOf: chunk[0..<count])
        }
    }
    func send(_ text: String) {
        let bytes = Array((text + "\n").utf8)
        _ = Glibc.send(fd, bytes, bytes.count, Int32(MSG_NOSIGNAL))
    }
    _ = try line()
    send(#"{"execute":"qmp_capabilities"}"#)
    _ = try line()
    send(#"{"execute":"\#(command)"}"#)
    while true {
        let reply = try line()
        if !reply.contains("\"event\"") { return reply }
    }
}
