import Dispatch
import Glibc
import KeelClient
import KeelCPU
import KeelDomain
import KeelQEMU
import KeelSaveImage

/// The driver in `keeld`, over its socket: each verb is one API request (a few are two: the
/// API answers a job with its outcome, and the CLI shows details that a query then fetches).
struct DaemonBackend: Backend {
    let client: KeeldClient
    /// Overrides every request's deadline (`KEEL_TIMEOUT`).
    let fixedTimeout: Duration?

    /// How long a job that moves a guest's memory may take before keel stops waiting.
    static let longJobTimeout: Duration = .seconds(3600)

    init(socketPath: String, timeout: Duration? = nil) {
        fixedTimeout = timeout
        client = KeeldClient(socketPath: socketPath, timeout: timeout ?? .seconds(120))
    }

    var location: String { "keeld at \(client.socketPath)" }

    // MARK: domains

    func define(xml: String) async throws -> DomainDefinition {
        let info: Wire.DomainInfo = try await call("POST", "/v1/domains", body: Wire.DefineRequest(xml: xml))
        return try await definition(name: info.name, inactive: true)
    }

    func start(name: String, paused: Bool) async throws -> StartedDomain {
        let result: Wire.JobResult = try await call("POST", try path(name, "start"), body: Wire.StartRequest(paused: paused), timeout: Self.longJobTimeout)
        // The outcome names the state; the pid and both CPUs come from the domain's record.
        let info: Wire.DomainInfo = try await call("GET", try path(name))
        return StartedDomain(state: result.state, pid: info.pid ?? 0, cpu: info.cpu, originalCPU: info.originalCPU)
    }

    func list() async throws -> [ListedDomain] {
        let list: Wire.DomainList = try await call("GET", "/v1/domains")
        var domains: [ListedDomain] = []
        for domain in list.domains {
            guard let state = Driver.State(rawValue: domain.state) else {
                throw protocolViolation("keeld reports domain '\(domain.name)' in an unknown state '\(domain.state)'")
            }
            var managedSave = domain.managedSave
            if managedSave == nil {
                // A daemon that does not list it: ask per domain.
                managedSave = (try await call("GET", try path(domain.name), as: Wire.DomainInfo.self)).managedSave
            }
            domains.append(ListedDomain(name: domain.name, uuid: domain.uuid, state: state, persistent: domain.persistent, pid: domain.pid,
                                        managedSave: managedSave ?? false))
        }
        return domains
    }

    func info(name: String) async throws -> DomainDetails {
        let info: Wire.DomainInfo = try await call("GET", try path(name))
        guard let state = Driver.State(rawValue: info.state) else {
            throw protocolViolation("keeld reports domain '\(name)' in an unknown state '\(info.state)'")
        }
        return DomainDetails(
            state: state, reason: info.reason, pid: info.pid, definition: try await definition(name: name, inactive: false),
            originalCPU: info.originalCPU, autostart: info.autostart, managedSave: info.managedSave
        )
    }

    func xml(name: String, inactive: Bool, migratable: Bool) async throws -> String {
        var query: [String] = []
        if inactive { query.append("inactive=true") }
        if migratable { query.append("migratable=true") }
        let document: Wire.XMLDocument = try await call("GET", try path(name, "xml") + (query.isEmpty ? "" : "?" + query.joined(separator: "&")))
        return document.xml
    }

    func destroy(name: String) async throws { try await job(name, "destroy") }
    func undefine(name: String) async throws { let _: Wire.JobResult = try await call("DELETE", try path(name)) }
    func setPaused(name: String, _ paused: Bool) async throws { try await job(name, paused ? "suspend" : "resume") }
    func reboot(name: String) async throws { try await job(name, "reboot") }

    func shutdown(name: String, timeout: Duration) async throws {
        let _: Wire.JobResult = try await call(
            "POST", try path(name, "shutdown"), body: Wire.TimeoutRequest(timeout: Self.seconds(timeout)), timeout: timeout + .seconds(60)
        )
    }

    // MARK: images

    func save(name: String, file: String, running: Bool?, compression: SaveImageCompression) async throws {
        let body = Wire.SaveRequest(file: try Self.absolute(file), running: running, compress: compression == .raw ? nil : compression.name)
        let _: Wire.SaveResult = try await call("POST", try path(name, "save"), body: body, timeout: Self.longJobTimeout)
    }

    func restore(file: String, running: Bool?, xml: String?) async throws -> RestoredDomain {
        let body = Wire.RestoreRequest(file: try Self.absolute(file), running: running, xml: xml, dryRun: nil)
        let result: Wire.RestoreResult = try await call("POST", "/v1/restore", body: body, timeout: Self.longJobTimeout)
        return RestoredDomain(name: result.name, state: result.state)
    }

    func planRestore(file: String, xml: String?) async throws -> RestoreVerdict {
        let body = Wire.RestoreRequest(file: try Self.absolute(file), running: nil, xml: xml, dryRun: true)
        let plan: Wire.RestorePlan = try await call("POST", "/v1/restore", body: body)
        func problems(_ features: [WireFeature]) -> [CPUVerdict.Problem] {
            features.map { CPUVerdict.Problem(feature: Self.problem($0), reason: $0.reason ?? "") }
        }
        let verdict = CPUVerdict(missing: problems(plan.missing), extra: problems(plan.extra), reasons: plan.reasons)
        return RestoreVerdict(domain: plan.domain, verdict: verdict, cpu: plan.cpu)
    }

    func managedSave(name: String, running: Bool?) async throws -> String {
        let result: Wire.SaveResult = try await call(
            "POST", try path(name, "managedsave"), body: Wire.ManagedSaveRequest(running: running), timeout: Self.longJobTimeout
        )
        return result.file
    }

    func removeManagedSave(name: String) async throws -> Bool {
        let result: Wire.ManagedSaveRemoved = try await call("DELETE", try path(name, "managedsave"))
        return result.removed
    }

    func managedSaveXML(name: String) async throws -> String {
        let document: Wire.XMLDocument = try await call("GET", try path(name, "managedsave"))
        return document.xml
    }

    func managedSaveDefine(name: String, xml: String, running: Bool?) async throws -> Bool {
        let result: Wire.ManagedSaveDefined = try await call("PUT", try path(name, "managedsave"), body: Wire.ManagedSaveDefineRequest(xml: xml, running: running))
        return result.changed
    }

    func setAutostart(name: String, _ enabled: Bool) async throws {
        let _: Wire.DomainInfo = try await call("PUT", try path(name, "autostart"), body: Wire.AutostartRequest(enabled: enabled))
    }

    // MARK: jobs

    func jobInfo(name: String) async throws -> DomainJob? {
        let info: Wire.JobInfo = try await call("GET", try path(name, "job"))
        return try info.job.map(Self.job)
    }

    func abortJob(name: String) async throws -> DomainJob {
        let info: Wire.JobInfo = try await call("POST", try path(name, "job", "abort"), timeout: .seconds(90))
        guard let job = info.job else { throw protocolViolation("keeld answered an abort without the job it stopped") }
        return try Self.job(job)
    }

    // MARK: host

    func hostCapabilities() async throws -> CapabilitiesAnswer<HostCapabilities.Report> {
        let document: Wire.Document<HostCapabilities.Report> = try await call("GET", "/v1/capabilities")
        return CapabilitiesAnswer(xml: document.xml, report: document.report)
    }

    func domainCapabilities(virtType: String?, machine: String?, emulator: String?) async throws -> CapabilitiesAnswer<QEMUCapabilities.DomainReport> {
        if emulator != nil {
            // keeld probes the emulator of its own configuration and runs nothing a client names.
            throw CommandFailure(message: "--emulator is not available through keeld, which probes the emulator of its configuration; use --connect embed:DIR")
        }
        var query: [String] = []
        if let virtType { query.append("virttype=" + KeeldClient.encode(virtType)) }
        if let machine { query.append("machine=" + KeeldClient.encode(machine)) }
        let target = "/v1/domcapabilities" + (query.isEmpty ? "" : "?" + query.joined(separator: "&"))
        let document: Wire.Document<QEMUCapabilities.DomainReport> = try await call("GET", target)
        return CapabilitiesAnswer(xml: document.xml, report: document.report)
    }

    func compareHypervisorCPU(_ cpu: CPUDefinition, virtType: String?, failIncompatible: Bool) async throws -> CPUComparison {
        let body = Wire.CompareRequest(cpu: cpu.formatted(), virtType: virtType, failIncompatible: failIncompatible)
        let answer: Wire.Comparison = try await call("POST", "/v1/hypervisor-cpu/compare", body: body)
        guard let result = CPUComparison.Result(rawValue: answer.result) else {
            throw protocolViolation("keeld answered an unknown comparison result '\(answer.result)'")
        }
        return CPUComparison(result: result, message: answer.message, features: answer.features.map(Self.problem))
    }

    func baselineHypervisorCPU(_ cpus: [CPUDefinition], virtType: String?, expandFeatures: Bool, migratable: Bool) async throws -> CPUDefinition {
        let body = Wire.BaselineRequest(cpus: cpus.map { $0.formatted() }, virtType: virtType, features: expandFeatures, migratable: migratable)
        let answer: Wire.Baseline = try await call("POST", "/v1/hypervisor-cpu/baseline", body: body)
        do {
            return try CPUDefinition(xmlString: answer.cpu, as: .guest)
        } catch {
            throw protocolViolation("keeld answered a baseline that is not a <cpu>: \(error)")
        }
    }

    // MARK: the wire

    /// One request, off the cooperative threads (the client blocks), with the daemon's errors
    /// turned back into the driver's and transport failures into one-line command failures.
    func call<Reply: Decodable & Sendable>(
        _ method: String, _ target: String, body: (any Encodable & Sendable)? = nil, timeout: Duration? = nil, as type: Reply.Type = Reply.self
    ) async throws -> Reply {
        let client = self.client
        let deadline = fixedTimeout ?? timeout
        do {
            return try await Self.offload { try client.call(method, target, body: body, timeout: deadline, as: Reply.self) }
        } catch let error as KeeldError {
            throw QEMUError(QEMUError.Code(rawValue: error.code), error.message, features: error.features.map(Self.problem))
        } catch let error as ClientError {
            throw CommandFailure(message: error.message)
        }
    }

    /// A job whose answer is only its outcome.
    func job(_ name: String, _ verb: String) async throws {
        let _: Wire.JobResult = try await call("POST", try path(name, verb))
    }

    func definition(name: String, inactive: Bool) async throws -> DomainDefinition {
        let xml = try await xml(name: name, inactive: inactive, migratable: false)
        do {
            return try DomainDefinition(xmlString: xml)
        } catch {
            throw protocolViolation("keeld answered domain XML that does not parse: \(error)")
        }
    }

    /// `/v1/domains/NAME/…`, the name checked as the driver checks it (so a bad name fails
    /// with the driver's message, not as an unknown endpoint).
    func path(_ name: String, _ rest: String...) throws -> String {
        try DomainStore.validate(name: name)
        return (["/v1/domains", KeeldClient.encode(name)] + rest).joined(separator: "/")
    }

    func protocolViolation(_ message: String) -> CommandFailure {
        CommandFailure(message: message)
    }

    /// keeld does not share this process's working directory.
    static func absolute(_ path: String) throws -> String {
        if path.hasPrefix("/") { return path }
        var buffer = [CChar](repeating: 0, count: Int(PATH_MAX) + 1)
        guard getcwd(&buffer, buffer.count) != nil else {
            throw CommandFailure(message: "cannot resolve \(path): the working directory is unknown")
        }
        let directory = String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
        return (directory.hasSuffix("/") ? directory : directory + "/") + path
    }

    static func seconds(_ duration: Duration) -> Double {
        let (whole, fraction) = duration.components
        return Double(whole) + Double(fraction) / 1e18
    }

    /// A CPU feature rebuilt from the API: each location from its bits (one per set bit, the
    /// location's text repeated), in order.
    static func problem(_ feature: WireFeature) -> CPUFeatureProblem {
        var locations: [CPUFeatureLocation] = []
        var lastDescription: String?
        for bit in feature.bits {
            guard (0..<32).contains(bit.bit), let register = CPUFeatureLocation.Register(rawValue: bit.register) else { continue }
            let mask = UInt32(1) << UInt32(bit.bit)
            if bit.description == lastDescription, let last = locations.popLast() {
                switch last {
                case .cpuid(let leaf, let subleaf, let register, let old): locations.append(.cpuid(leaf: leaf, subleaf: subleaf, register: register, mask: old | mask))
                case .msr(let index, let register, let old): locations.append(.msr(index: index, register: register, mask: old | mask))
                }
                continue
            }
            lastDescription = bit.description
            if bit.type == "msr" {
                locations.append(.msr(index: bit.index ?? 0, register: register, mask: mask))
            } else {
                locations.append(.cpuid(leaf: bit.leaf ?? 0, subleaf: bit.subleaf ?? 0, register: register, mask: mask))
            }
        }
        return CPUFeatureProblem(name: feature.name, kind: CPUFeatureProblem.Kind(rawValue: feature.kind) ?? .missing, locations: locations)
    }

    static func job(_ wire: Wire.Job) throws -> DomainJob {
        guard let operation = DomainJob.Operation(rawValue: wire.operation) else {
            throw CommandFailure(message: "keeld reports a job of unknown kind '\(wire.operation)'")
        }
        // The daemon reports elapsed time; the start is placed on this clock from it.
        let now = DomainJob.wallClockMilliseconds()
        return DomainJob(
            operation: operation, pid: wire.pid, startedMilliseconds: now - wire.elapsedMilliseconds, updatedMilliseconds: now, status: wire.status,
            dataTotal: wire.dataTotal, dataProcessed: wire.dataProcessed, dataRemaining: wire.dataRemaining, memoryBandwidth: wire.memoryBandwidth
        )
    }

    /// Runs blocking work on a Dispatch thread.
    static func offload<T: Sendable>(_ body: @escaping @Sendable () throws -> T) async throws -> T {
        try await withCheckedThrowingContinuation { continuation in
            DispatchQueue.global().async {
                continuation.resume(with: Result { try body() })
            }
        }
    }
}
