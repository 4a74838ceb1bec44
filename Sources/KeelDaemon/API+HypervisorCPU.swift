import KeelCPU
import KeelQEMU

/// The hypervisor CPU queries (virsh's `hypervisor-cpu-compare` and `hypervisor-cpu-baseline`):
/// CPUs judged against what this host's QEMU provides. Queries: never gated.
extension API {
    static let hypervisorCPUEndpoints: [Endpoint] = [
        .task(.POST, "/v1/hypervisor-cpu/compare") { api, request in try await api.compareHypervisorCPU(request) },
        .task(.POST, "/v1/hypervisor-cpu/baseline") { api, request in try await api.baselineHypervisorCPU(request) },
    ]

    /// The most CPUs one baseline request may carry.
    static let maximumBaselineCPUs = 1024

    func compareHypervisorCPU(_ request: APIRequest) async throws -> APIResponse {
        let body = try JSONBody.decode(APIModels.HypervisorCPUCompareRequest.self, from: request)
        let cpu = try Self.cpu(body.cpu, field: "cpu")
        let comparison = try await driver.compareHypervisorCPU(cpu, virtType: body.virtType, failIncompatible: body.failIncompatible ?? false)
        return try JSONBody.response(APIModels.CPUComparisonResult(
            result: comparison.result.rawValue, message: comparison.message, features: comparison.features.map(FeatureBody.init)
        ))
    }

    func baselineHypervisorCPU(_ request: APIRequest) async throws -> APIResponse {
        let body = try JSONBody.decode(APIModels.HypervisorCPUBaselineRequest.self, from: request)
        guard !body.cpus.isEmpty else { throw APIError.badRequest("'cpus' must hold at least one <cpu>") }
        guard body.cpus.count <= Self.maximumBaselineCPUs else {
            throw APIError.badRequest("'cpus' holds \(body.cpus.count) CPUs; the limit is \(Self.maximumBaselineCPUs)")
        }
        let cpus = try body.cpus.enumerated().map { try Self.cpu($1, field: "cpus[\($0)]") }
        let baseline = try await driver.baselineHypervisorCPU(
            cpus, virtType: body.virtType, expandFeatures: body.features ?? false, migratable: body.migratable ?? false
        )
        return try JSONBody.response(APIModels.CPUBaselineResult(cpu: baseline.formatted()))
    }

    /// A `<cpu>` of a request body, read as virsh reads the CPUs of a file (guest or host).
    static func cpu(_ xml: String, field: String) throws -> CPUDefinition {
        do {
            return try CPUDefinition(xmlString: xml, as: .auto)
        } catch let error as CPUError {
            throw QEMUError(.invalidArgument, "\(field): \(error.message)", features: error.features)
        } catch {
            throw QEMUError(.invalidArgument, "\(field): \(error)")
        }
    }
}

extension APIModels {
    struct HypervisorCPUCompareRequest: Codable, Sendable {
        /// A `<cpu>` element.
        var cpu: String
        /// `kvm` or `qemu`; absent for the host's best.
        var virtType: String?
        /// Answer an incompatible CPU with 422 `incompatible-cpu` naming the features (virsh `--error`).
        var failIncompatible: Bool?
    }

    struct HypervisorCPUBaselineRequest: Codable, Sendable {
        /// `<cpu>` elements.
        var cpus: [String]
        var virtType: String?
        /// List every feature of the baseline model explicitly.
        var features: Bool?
        /// Leave out features that block migration.
        var migratable: Bool?
    }

    struct CPUComparisonResult: Codable, Sendable {
        /// `identical`, `superset` or `incompatible`.
        var result: String
        var message: String?
        /// The deciding features with their bits.
        var features: [FeatureBody]
    }

    struct CPUBaselineResult: Codable, Sendable {
        var cpu: String
    }
}
