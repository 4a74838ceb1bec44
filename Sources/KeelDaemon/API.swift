import Glibc
import KeelCPU
import KeelDomain
import KeelQEMU
import KeelSaveImage
import Logging

/// The HTTP/JSON API: every endpoint of `docs/api/openapi.json`, on top of the driver.
///
/// Modifying jobs on a domain pass through its `DomainGate` (one at a time in this process; the
/// driver's `DomainLock` still guards against other processes); queries read the state
/// directory directly and run alongside. Every job logs one line and counts in the metrics,
/// and a successful one publishes its lifecycle events (see `API+Events.swift`).
struct API: Sendable {
    let holder: DriverHolder
    let gates: DomainGateRegistry
    let metrics: DaemonMetrics
    let jobTimeout: Duration
    let logger: Logger
    let bus: EventBus
    let watcher: DomainWatcher
    /// Live migration; nil in tests that build an API without it.
    var migration: MigrationService? = nil
    /// Returns the heap's free pages to the kernel after jobs.
    var trimmer = HeapTrimmer()

    var driver: Driver { holder.driver }

    /// Every route, for dispatch and for telling 405 from 404.
    static let routes = RouteTable(allEndpoints)

    /// Every endpoint the daemon serves, as `docs/api/openapi.json` must describe them.
    static var allEndpoints: [Endpoint] {
        endpoints + lifecycleEndpoints + hypervisorCPUEndpoints + migrationEndpoints
    }

    static let endpoints: [Endpoint] = [
        .inline(.GET, "/openapi.json") { _, _ in JSONBody.text(OpenAPIDocument.text, contentType: "application/json") },
        .task(.GET, "/metrics") { api, _ in try api.metricsText() },
        .task(.GET, "/v1/capabilities") { api, _ in try await api.capabilities() },
        .task(.GET, "/v1/domcapabilities") { api, request in try await api.domainCapabilities(request) },
        // A list reads every domain's files: a task, so that it never holds up the loop's
        // other connections for as long as that takes.
        .task(.GET, "/v1/domains") { api, _ in try api.list() },
        .task(.POST, "/v1/domains") { api, request in try await api.define(request) },
        .inline(.GET, "/v1/domains/{name}") { api, request in try api.info(try API.name(request)) },
        .task(.DELETE, "/v1/domains/{name}") { api, request in try await api.undefine(try API.name(request)) },
        .inline(.GET, "/v1/domains/{name}/xml") { api, request in try api.xml(try API.name(request), request) },
        .task(.POST, "/v1/domains/{name}/start") { api, request in try await api.start(try API.name(request), request) },
        .task(.POST, "/v1/domains/{name}/destroy") { api, request in
            try await api.simpleJob("destroy", try API.name(request), event: (.stopped, "destroyed")) { driver, name in
                try await driver.destroy(name: name)
            }
        },
        .task(.POST, "/v1/domains/{name}/suspend") { api, request in
            try await api.simpleJob("suspend", try API.name(request), event: (.paused, "user")) { driver, name in
                try await driver.setPaused(name: name, true)
            }
        },
        .task(.POST, "/v1/domains/{name}/resume") { api, request in
            try await api.simpleJob("resume", try API.name(request), event: (.resumed, "user")) { driver, name in
                try await driver.setPaused(name: name, false)
            }
        },
        .task(.POST, "/v1/domains/{name}/save") { api, request in try await api.save(try API.name(request), request) },
        .task(.POST, "/v1/restore") { api, request in try await api.restore(request) },
        .inline(.GET, "/v1/events") { api, request in try api.events(request) },
    ]

    // MARK: jobs

    /// Runs a modifying job on `name` through its gate, logging and counting it.
    ///
    /// - Parameters:
    ///   - publishing: the events of the job's success, published while the gate is still
    ///     held, so that they precede whatever the watcher reports next about the domain.
    ///   - body: the job. Its save, restore or migration reports progress as `job-progress`.
    func gated<T: Sendable>(
        _ job: String, _ name: String, started: ContinuousClock.Instant = .now,
        publishing events: @escaping @Sendable (T) -> [DomainEvent] = { _ in [] },
        _ body: @escaping @Sendable (Driver) async throws -> T
    ) async throws -> T {
        let holder = self.holder
        let bus = self.bus
        let observer = DomainJob.Observer { domain, job in bus.publish(.progress(domain, job)) }
        do {
            // The driver is taken once the gate is held, so a job that waited sees a reload.
            // The job runs on JobExecutor's threads: its blocking I/O never holds up a query.
            let gate = await gates.gate(for: name)
            let timeout = jobTimeout
            let result = try await withTaskExecutorPreference(JobExecutor.shared) {
                try await gate.run(job, timeout: timeout) {
                    let result = try await DomainJob.$observer.withValue(observer) { try await body(holder.driver) }
                    for event in events(result) { bus.publish(event) }
                    return result
                }
            }
            finish(job, name, outcome: "ok", started: started)
            return result
        } catch {
            finish(job, name, outcome: APIError(error).code, started: started, error: error)
            throw error
        }
    }

    func finish(_ job: String, _ domain: String, outcome: String, started: ContinuousClock.Instant, error: (any Error)? = nil) {
        let seconds = (ContinuousClock.now - started).secondsValue
        metrics.recordJob(job, outcome: outcome, seconds: seconds)
        var metadata: Logger.Metadata = [
            "domain": "\(domain)", "job": "\(job)", "outcome": "\(outcome)", "duration": "\(String(format3(seconds))) s",
        ]
        if let error { metadata["error"] = "\(APIError(error).message)" }
        logger.log(level: error == nil ? .info : .warning, "job", metadata: metadata)
        trimmer.jobEnded()
    }

    func simpleJob(
        _ job: String, _ name: String, event: (kind: DomainEvent.Kind, detail: String)? = nil,
        _ body: @escaping @Sendable (Driver, String) async throws -> Void
    ) async throws -> APIResponse {
        try await gated(job, name, publishing: { _ in event.map { [DomainEvent($0.kind, domain: name, detail: $0.detail)] } ?? [] }) { driver in
            try await body(driver, name)
        }
        return try JSONBody.response(APIModels.JobResult(name: name, job: job, state: try driver.state(of: name).0.rawValue))
    }

    func define(_ request: APIRequest) async throws -> APIResponse {
        let body = try JSONBody.decode(APIModels.DefineRequest.self, from: request)
        let name: String
        do {
            name = try DomainDefinition(xmlString: body.xml).name
        } catch let error as DomainError {
            // Worded as the driver words it for the CLI.
            throw QEMUError(.invalidArgument, error.message)
        }
        try DomainStore.validate(name: name)
        _ = try await gated("define", name, publishing: { existed in [DomainEvent(.defined, domain: name, detail: existed ? "updated" : "added")] }) { driver in
            let existed = try driver.store.definition(name) != nil
            try await driver.define(xml: body.xml)
            return existed
        }
        return try JSONBody.response(try info(name, driver: driver), status: .created)
    }

    func undefine(_ name: String) async throws -> APIResponse {
        try await gated("undefine", name, publishing: { _ in [DomainEvent(.undefined, domain: name)] }) { driver in
            try driver.undefine(name: name)
        }
        return try JSONBody.response(APIModels.JobResult(name: name, job: "undefine", state: try driver.state(of: name).0.rawValue))
    }

    func start(_ name: String, _ request: APIRequest) async throws -> APIResponse {
        let body = try JSONBody.decode(APIModels.StartRequest.self, from: request)
        let managedSave = driver.store.managedSavePath(name)
        let status = try await gated("start", name, publishing: { status in
            // A start that restored the managed-save image reports it as the restore it was.
            status.reason == "restored" ? self.startedEvents(status, .restored, detail: managedSave, pausedDetail: "restore")
                : self.startedEvents(status, .started, detail: "booted", pausedDetail: "start")
        }) { driver in
            try await driver.start(name: name, paused: body.paused ?? false)
        }
        return try JSONBody.response(APIModels.JobResult(name: name, job: "start", state: status.state.rawValue))
    }

    func save(_ name: String, _ request: APIRequest) async throws -> APIResponse {
        let body = try JSONBody.decode(APIModels.SaveRequest.self, from: request)
        try Self.requireAbsolute(body.file)
        let compression = try body.compress.map { text in
            guard let compression = SaveImageCompression(name: text) else {
                throw APIError.badRequest("unknown compression '\(text)': use raw, gzip, bzip2, xz, lzop or zstd")
            }
            return compression
        } ?? .raw
        let started = ContinuousClock.now
        try await gated("save", name, started: started, publishing: { _ in [DomainEvent(.saved, domain: name, detail: body.file)] }) { driver in
            try await driver.save(name: name, to: body.file, running: body.running, compression: compression)
        }
        let bytes = Self.fileSize(body.file)
        metrics.recordSave(bytes: bytes, seconds: (ContinuousClock.now - started).secondsValue)
        return try JSONBody.response(APIModels.SaveResult(
            name: name, job: "save", state: try driver.state(of: name).0.rawValue, file: body.file, bytes: bytes
        ))
    }

    func restore(_ request: APIRequest) async throws -> APIResponse {
        let body = try JSONBody.decode(APIModels.RestoreRequest.self, from: request)
        try Self.requireAbsolute(body.file)
        let started = ContinuousClock.now
        let driver = self.driver
        if body.dryRun == true {
            let plan = try await driver.planRestore(path: body.file, xml: body.xml)
            return try JSONBody.response(APIModels.RestorePlan(
                domain: plan.definition.name, restorable: plan.verdict.restorable,
                missing: plan.verdict.missing.map { FeatureBody($0.feature, reason: $0.reason) },
                extra: plan.verdict.extra.map { FeatureBody($0.feature, reason: $0.reason) },
                reasons: plan.verdict.reasons, cpu: plan.targetCPU?.formatted()
            ))
        }
        // The domain's name (and so its gate) is known only from the image.
        let name: String
        do {
            name = try await driver.planRestore(path: body.file, xml: body.xml).definition.name
        } catch {
            finish("restore", body.file, outcome: APIError(error).code, started: started, error: error)
            throw error
        }
        let status = try await gated("restore", name, started: started, publishing: { status in
            self.startedEvents(status, .restored, detail: body.file, pausedDetail: "restore")
        }) { driver in
            try await driver.restore(path: body.file, running: body.running, xml: body.xml)
        }
        metrics.recordRestore(bytes: Self.fileSize(body.file), seconds: (ContinuousClock.now - started).secondsValue)
        return try JSONBody.response(APIModels.RestoreResult(name: name, job: "restore", state: status.state.rawValue, pid: status.pid))
    }

    // MARK: queries

    func list() throws -> APIResponse {
        let driver = self.driver
        let domains = try driver.list().map {
            APIModels.DomainSummary(
                name: $0.name, uuid: $0.uuid, state: $0.state.rawValue, persistent: $0.persistent, pid: $0.pid,
                managedSave: driver.hasManagedSave(name: $0.name)
            )
        }
        return try JSONBody.response(APIModels.DomainList(domains: domains))
    }

    func info(_ name: String) throws -> APIResponse {
        JSONBody.response(json: try info(name, driver: driver).json)
    }

    func info(_ name: String, driver: Driver) throws -> APIModels.DomainInfo {
        let (state, status) = try driver.state(of: name)
        let definition = try driver.store.definition(name)
        guard status != nil || definition != nil else {
            throw QEMUError(.notFound, "domain '\(name)' not found")
        }
        let live = state == .shutoff ? nil : status
        return APIModels.DomainInfo(
            name: name, uuid: live?.live.uuid ?? definition?.uuid, state: state.rawValue, reason: live?.reason,
            persistent: definition != nil, pid: live?.pid, accelerator: live?.accelerator.rawValue, qemuVersion: live?.qemuVersion,
            cpu: (live?.live.cpu ?? definition?.cpu)?.formatted(), originalCPU: live?.originalCPU?.formatted(),
            autostart: driver.isAutostart(name: name), managedSave: driver.hasManagedSave(name: name)
        )
    }

    func xml(_ name: String, _ request: APIRequest) throws -> APIResponse {
        let inactive = try Self.flag(request, "inactive")
        let migratable = try Self.flag(request, "migratable")
        let definition = try driver.xml(name: name, inactive: inactive, migratable: migratable)
        return try JSONBody.response(APIModels.XMLDocument(xml: definition.formatted()))
    }

    func capabilities() async throws -> APIResponse {
        let driver = self.driver
        let tcg = try await driver.capabilities(.tcg)
        let kvm = try await kvmIfAvailable(driver)
        let host = HostCapabilities(
            hostUUID: HostCapabilities.hostUUID(stateDirectory: driver.store.root),
            hostCPU: kvm?.hostCPU(map: driver.map),
            guests: [tcg] + (kvm.map { [$0] } ?? [])
        )
        return try JSONBody.response(APIModels.CapabilitiesDocument(xml: host.xmlElement.formatted(), report: host.report))
    }

    func domainCapabilities(_ request: APIRequest) async throws -> APIResponse {
        let driver = self.driver
        let machine = request.query("machine")
        if let arch = request.query("arch"), arch != "x86_64" {
            throw APIError.badRequest("architecture '\(arch)' is not supported: only x86_64")
        }
        let capabilities: QEMUCapabilities
        if let virtType = request.query("virttype") {
            guard let accelerator = QEMUCapabilities.Accelerator(domainType: virtType) else {
                throw APIError.badRequest("unknown virttype '\(virtType)': use kvm or qemu")
            }
            capabilities = try await driver.capabilities(accelerator)
        } else if let kvm = try await kvmIfAvailable(driver) {
            capabilities = kvm
        } else {
            capabilities = try await driver.capabilities(.tcg)
        }
        let element = try capabilities.domainCapabilitiesXML(machine: machine, map: driver.map)
        let report = try capabilities.domainReport(machine: machine, map: driver.map)
        return try JSONBody.response(APIModels.DomainCapabilitiesDocument(xml: element.formatted(), report: report))
    }

    func metricsText() throws -> APIResponse {
        var domains: [String: Int] = [:]
        for domain in try driver.list() { domains[domain.state.rawValue, default: 0] += 1 }
        let counts = bus.counts
        let events = DaemonMetrics.Events(subscribers: bus.subscriberCount, published: counts.published, dropped: counts.dropped, watched: watcher.count)
        return JSONBody.text(metrics.render(domains: domains, events: events), contentType: "text/plain; version=0.0.4; charset=utf-8")
    }

    // MARK: helpers

    func kvmIfAvailable(_ driver: Driver) async throws -> QEMUCapabilities? {
        do {
            return try await driver.capabilities(.kvm)
        } catch let error as QEMUError where error.code == .unsupported {
            return nil
        }
    }

    static func name(_ request: APIRequest) throws -> String {
        guard let name = request.parameters["name"] else { throw APIError.badRequest("missing domain name") }
        try DomainStore.validate(name: name)
        return name
    }

    static func flag(_ request: APIRequest, _ key: String) throws -> Bool {
        guard let value = request.query(key) else { return false }
        switch value {
        case "true", "1", "yes", "": return true
        case "false", "0", "no": return false
        default: throw APIError.badRequest("query parameter '\(key)' must be true or false, not '\(value)'")
        }
    }

    static func requireAbsolute(_ path: String) throws {
        guard path.hasPrefix("/") else {
            throw APIError.badRequest("file '\(path)' must be an absolute path (keeld does not share the client's working directory)")
        }
    }

    static func fileSize(_ path: String) -> Int64 {
        var info = stat()
        return stat(path, &info) == 0 ? Int64(info.st_size) : 0
    }
}

/// Three decimals, without Foundation's formatter.
func format3(_ value: Double) -> String {
    let milliseconds = Int((value * 1000).rounded())
    let fraction = String(milliseconds % 1000)
    return "\(milliseconds / 1000).\(String(repeating: "0", count: 3 - fraction.count))\(fraction)"
}
