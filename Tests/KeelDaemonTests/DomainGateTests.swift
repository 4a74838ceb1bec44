import Foundation
@testable import KeelDaemon
import KeelQEMU
import Testing

/// The in-process job gate and the API's pieces that need no daemon.
@Suite("keeld: job gates, routes and metrics")
struct DomainGateTests {
    @Test("a second job waits for the first and then runs")
    func secondJobWaits() async throws {
        let gate = DomainGate(name: "g")
        async let first: Int = gate.run("save", timeout: .seconds(5)) {
            try await Task.sleep(for: .milliseconds(200))
            return 1
        }
        try await Task.sleep(for: .milliseconds(50))
        let started = ContinuousClock.now
        let second = try await gate.run("start", timeout: .seconds(5)) { 2 }
        #expect(ContinuousClock.now - started >= .milliseconds(100), "the second job waited")
        #expect(try await first == 1)
        #expect(second == 2)
        #expect(await gate.current == nil)
    }

    @Test("a job that cannot get the gate in time fails as busy, naming the job in progress")
    func busyNamesTheJob() async throws {
        let gate = DomainGate(name: "g")
        async let first: Void = gate.run("save", timeout: .seconds(5)) { try await Task.sleep(for: .milliseconds(300)) }
        try await Task.sleep(for: .milliseconds(50))
        do {
            try await gate.run("suspend", timeout: .milliseconds(50)) {}
            Issue.record("the second job ran alongside the first")
        } catch let error as QEMUError {
            #expect(error.code == .busy)
            #expect(error.message.hasPrefix("domain g is busy: save in progress"), "\(error.message)")
        }
        try await first
        try await gate.run("suspend", timeout: .milliseconds(50)) {}
    }

    @Test("waiting jobs enter in their order of arrival; one that gives up leaves the queue")
    func arrivalOrder() async throws {
        let gate = DomainGate(name: "g", pollInterval: .milliseconds(1))
        let order = OrderLog()
        // The holder leaves once all eight have arrived and the four impatient ones gave up (not
        // after a fixed time, which a loaded machine could outlast while the eight arrive).
        let holder = Task {
            try await gate.run("save", timeout: .seconds(5)) {
                let deadline = ContinuousClock.now + .seconds(30)
                while ContinuousClock.now < deadline {
                    if await gate.arrivals >= 9, await gate.waiting <= 4 { break }
                    try await Task.sleep(for: .milliseconds(5))
                }
            }
        }
        try await Task.sleep(for: .milliseconds(30))
        var waiters: [Task<Void, any Error>] = []
        for index in 0..<8 {
            // Every other waiter gives up long before the holder leaves.
            let timeout: Duration = index % 2 == 1 ? .milliseconds(60) : .seconds(10)
            waiters.append(Task { try await gate.run("job\(index)", timeout: timeout) { await order.append(index) } })
            // Arrivals spaced apart, so that their order is known.
            while await gate.arrivals < UInt64(index + 2) { try await Task.sleep(for: .milliseconds(1)) }
        }
        try await holder.value
        var refused = 0
        for waiter in waiters {
            do { try await waiter.value } catch let error as QEMUError where error.code == .busy { refused += 1 }
        }
        #expect(refused == 4, "the four impatient jobs gave up")
        #expect(await order.entries == [0, 2, 4, 6], "the patient ones ran in their order of arrival")
        #expect(await gate.waiting == 0)
    }

    @Test("a failing job releases the gate")
    func failureReleases() async throws {
        let gate = DomainGate(name: "g")
        await #expect(throws: QEMUError.self) {
            try await gate.run("start", timeout: .seconds(1)) { throw QEMUError(.invalidState, "no") }
        }
        #expect(await gate.current == nil)
    }

    @Test("the route table tells a wrong method from an unknown path")
    func routeTable() {
        #expect(API.routes.methods(forPath: "/v1/domains") == ["GET", "POST"])
        #expect(API.routes.methods(forPath: "/v1/domains/web/start") == ["POST"])
        #expect(API.routes.methods(forPath: "/v1/domains/web") == ["GET", "DELETE"])
        #expect(API.routes.methods(forPath: "/v1/nothing").isEmpty)
    }

    @Test("driver error codes map to HTTP statuses")
    func statuses() {
        #expect(APIError(QEMUError(.notFound, "")).status.code == 404)
        #expect(APIError(QEMUError(.busy, "")).status.code == 409)
        #expect(APIError(QEMUError(.invalidState, "")).status.code == 409)
        #expect(APIError(QEMUError(.incompatibleCPU, "")).status.code == 422)
        #expect(APIError(QEMUError(.invalidArgument, "")).status.code == 400)
        #expect(APIError(QEMUError(.processExited, "")).status.code == 500)
    }

    @Test("metrics render counters and gauges in Prometheus' text format")
    func metricsText() {
        let metrics = DaemonMetrics()
        metrics.recordJob("save", outcome: "ok", seconds: 0.5)
        metrics.recordJob("save", outcome: "ok", seconds: 0.25)
        metrics.recordJob("start", outcome: "busy", seconds: 0.1)
        metrics.recordSave(bytes: 4096, seconds: 0.75)
        let text = metrics.render(domains: ["running": 2])
        #expect(text.contains("# TYPE keel_jobs_total counter\n"))
        #expect(text.contains(#"keel_jobs_total{job="save",outcome="ok"} 2"# + "\n"))
        #expect(text.contains(#"keel_jobs_total{job="start",outcome="busy"} 1"# + "\n"))
        #expect(text.contains(#"keel_job_seconds_total{job="save"} 0.75"# + "\n"))
        #expect(text.contains("keel_save_bytes_total 4096\n"))
        #expect(text.contains(#"keel_domains{state="running"} 2"# + "\n"))
        #expect(text.contains(#"keel_domains{state="crashed"} 0"# + "\n"))
    }
}

/// The order in which jobs ran.
actor OrderLog {
    private(set) var entries: [Int] = []

    func append(_ entry: Int) {
        entries.append(entry)
    }
}
