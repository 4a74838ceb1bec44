import KeelQEMU

/// Shutdown, reboot, managed save, autostart and the job in progress.
extension API {
    static let lifecycleEndpoints: [Endpoint] = [
        .task(.POST, "/v1/domains/{name}/shutdown") { api, request in try await api.shutdown(try API.name(request), request) },
        .task(.POST, "/v1/domains/{name}/reboot") { api, request in
            try await api.simpleJob("reboot", try API.name(request)) { driver, name in try await driver.reboot(name: name) }
        },
        // Reads the image's header and XML: a task, as the file may be on slow storage.
        .task(.GET, "/v1/domains/{name}/managedsave") { api, request in
            let name = try API.name(request)
            return try JSONBody.response(APIModels.XMLDocument(xml: try api.driver.managedSaveXML(name: name)))
        },
        .task(.POST, "/v1/domains/{name}/managedsave") { api, request in try await api.managedSave(try API.name(request), request) },
        .task(.DELETE, "/v1/domains/{name}/managedsave") { api, request in
            let name = try API.name(request)
            let removed = try await api.gated("managedsave-remove", name) { driver in try driver.removeManagedSave(name: name) }
            return try JSONBody.response(APIModels.ManagedSaveRemoved(name: name, job: "managedsave-remove", removed: removed))
        },
        .task(.PUT, "/v1/domains/{name}/managedsave") { api, request in
            let name = try API.name(request)
            let body = try JSONBody.decode(APIModels.ManagedSaveDefineRequest.self, from: request)
            let changed = try await api.gated("managedsave-define", name) { driver in
                try driver.managedSaveDefine(name: name, xml: body.xml, running: body.running)
            }
            return try JSONBody.response(APIModels.ManagedSaveDefined(name: name, job: "managedsave-define", changed: changed))
        },
        .task(.PUT, "/v1/domains/{name}/autostart") { api, request in
            let name = try API.name(request)
            let body = try JSONBody.decode(APIModels.AutostartRequest.self, from: request)
            try await api.gated("autostart", name) { driver in try driver.setAutostart(name: name, body.enabled) }
            return try JSONBody.response(try api.info(name, driver: api.driver))
        },
        .inline(.GET, "/v1/domains/{name}/job") { api, request in
            let name = try API.name(request)
            return try JSONBody.response(APIModels.JobInfo(name: name, job: try api.driver.jobInfo(name: name).map(APIModels.Job.init)))
        },
        .task(.POST, "/v1/domains/{name}/job/abort") { api, request in try await api.abortJob(try API.name(request), request) },
    ]

    /// Asks the guest to power off and waits for QEMU to exit. Not gated for the wait: as in the
    /// driver, the domain is held only while the request is sent, so `destroy` works meanwhile.
    func shutdown(_ name: String, _ request: APIRequest) async throws -> APIResponse {
        let body = try JSONBody.decode(APIModels.ShutdownRequest.self, from: request)
        let timeout = try Self.seconds(body.timeout, default: 60, field: "timeout")
        try await ungated("shutdown", name) { driver in try await driver.shutdown(name: name, timeout: timeout) }
        return try JSONBody.response(APIModels.JobResult(name: name, job: "shutdown", state: try driver.state(of: name).0.rawValue))
    }

    func managedSave(_ name: String, _ request: APIRequest) async throws -> APIResponse {
        let body = try JSONBody.decode(APIModels.ManagedSaveRequest.self, from: request)
        let started = ContinuousClock.now
        let path = driver.store.managedSavePath(name)
        try await gated("managedsave", name, started: started, publishing: { _ in [DomainEvent(.saved, domain: name, detail: path)] }) { driver in
            try await driver.managedSave(name: name, running: body.running)
        }
        let bytes = Self.fileSize(driver.store.managedSavePath(name))
        metrics.recordSave(bytes: bytes, seconds: (ContinuousClock.now - started).secondsValue)
        return try JSONBody.response(APIModels.SaveResult(
            name: name, job: "managedsave", state: try driver.state(of: name).0.rawValue, file: driver.store.managedSavePath(name), bytes: bytes
        ))
    }

    /// Stops the save or restore in progress. Never gated: the job to abort holds the gate.
    func abortJob(_ name: String, _ request: APIRequest) async throws -> APIResponse {
        let body = try JSONBody.decode(APIModels.ShutdownRequest.self, from: request)
        let timeout = try Self.seconds(body.timeout, default: 30, field: "timeout")
        let job = try await ungated("abort", name) { driver in try await driver.abortJob(name: name, timeout: timeout) }
        return try JSONBody.response(APIModels.JobInfo(name: name, job: APIModels.Job(job)))
    }

    /// Runs a job that must not wait for the domain's gate, logging and counting it.
    func ungated<T: Sendable>(_ job: String, _ name: String, _ body: @escaping @Sendable (Driver) async throws -> T) async throws -> T {
        let started = ContinuousClock.now
        do {
            let result = try await body(driver)
            finish(job, name, outcome: "ok", started: started)
            return result
        } catch {
            finish(job, name, outcome: APIError(error).code, started: started, error: error)
            throw error
        }
    }

    static func seconds(_ value: Double?, default fallback: Int64, field: String) throws -> Duration {
        guard let value else { return .seconds(fallback) }
        guard value.isFinite, value >= 0, value <= 3600 else {
            throw APIError.badRequest("'\(field)' must be between 0 and 3600 seconds")
        }
        return .milliseconds(Int64((value * 1000).rounded()))
    }
}

extension APIModels {
    struct ShutdownRequest: Codable, Sendable {
        /// Seconds to wait.
        var timeout: Double?
    }

    struct ManagedSaveRequest: Codable, Sendable {
        var running: Bool?
    }

    /// A replacement for the domain XML in the managed-save image.
    struct ManagedSaveDefineRequest: Codable, Sendable {
        var xml: String
        /// Whether the restore resumes the guest; absent keeps the image's choice.
        var running: Bool?
    }

    struct ManagedSaveDefined: Codable, Sendable {
        var name: String
        var job: String
        /// False when the new XML equals the stored one.
        var changed: Bool
    }

    struct ManagedSaveRemoved: Codable, Sendable {
        var name: String
        var job: String
        var removed: Bool
    }

    struct AutostartRequest: Codable, Sendable {
        var enabled: Bool
    }

    /// A save, restore or migration in progress, as `domjobinfo` shows it.
    struct Job: Codable, Sendable {
        var operation: String
        var pid: Int32
        var status: String
        var elapsedMilliseconds: Int64
        var dataTotal: UInt64?
        var dataProcessed: UInt64?
        var dataRemaining: UInt64?
        var memoryBandwidth: UInt64?

        init(_ job: DomainJob) {
            operation = job.operation.rawValue
            pid = job.pid
            status = job.status
            elapsedMilliseconds = job.elapsedMilliseconds()
            dataTotal = job.dataTotal
            dataProcessed = job.dataProcessed
            dataRemaining = job.dataRemaining
            memoryBandwidth = job.memoryBandwidth
        }
    }

    struct JobInfo: Codable, Sendable {
        var name: String
        /// nil when no job is active.
        var job: Job?
    }
}
