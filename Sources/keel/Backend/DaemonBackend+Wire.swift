import KeelClient
import KeelQEMU

/// The request and reply bodies of keeld's API that the CLI uses, as `docs/api/openapi.json`
/// describes them (the daemon's own types live in `KeelDaemon`, which the CLI does not link).
/// Replies decode leniently: fields the CLI does not show are left out.
enum Wire {
    struct DefineRequest: Encodable, Sendable {
        var xml: String
    }

    struct StartRequest: Encodable, Sendable {
        var paused: Bool
    }

    struct SaveRequest: Encodable, Sendable {
        var file: String
        var running: Bool?
        var compress: String?
    }

    struct RestoreRequest: Encodable, Sendable {
        var file: String
        var running: Bool?
        var xml: String?
        var dryRun: Bool?
    }

    struct TimeoutRequest: Encodable, Sendable {
        /// Seconds.
        var timeout: Double
    }

    struct ManagedSaveRequest: Encodable, Sendable {
        var running: Bool?
    }

    struct ManagedSaveDefineRequest: Encodable, Sendable {
        var xml: String
        var running: Bool?
    }

    struct AutostartRequest: Encodable, Sendable {
        var enabled: Bool
    }

    struct CompareRequest: Encodable, Sendable {
        var cpu: String
        var virtType: String?
        var failIncompatible: Bool
    }

    struct BaselineRequest: Encodable, Sendable {
        var cpus: [String]
        var virtType: String?
        var features: Bool
        var migratable: Bool
    }

    struct DomainSummary: Decodable, Sendable {
        var name: String
        var uuid: String?
        var state: String
        var persistent: Bool
        var pid: Int32?
        var managedSave: Bool?
    }

    struct DomainList: Decodable, Sendable {
        var domains: [DomainSummary]
    }

    struct DomainInfo: Decodable, Sendable {
        var name: String
        var uuid: String?
        var state: String
        var reason: String?
        var pid: Int32?
        var cpu: String?
        var originalCPU: String?
        var autostart: Bool
        var managedSave: Bool
    }

    struct XMLDocument: Decodable, Sendable {
        var xml: String
    }

    struct Document<Report: Decodable & Sendable>: Decodable, Sendable {
        var xml: String
        var report: Report
    }

    struct JobResult: Decodable, Sendable {
        var name: String
        var state: String
    }

    struct SaveResult: Decodable, Sendable {
        var name: String
        var file: String
    }

    struct RestoreResult: Decodable, Sendable {
        var name: String
        var state: String
    }

    struct RestorePlan: Decodable, Sendable {
        var domain: String
        var restorable: Bool
        var missing: [WireFeature]
        var extra: [WireFeature]
        var reasons: [String]
        var cpu: String?
    }

    struct ManagedSaveRemoved: Decodable, Sendable {
        var removed: Bool
    }

    struct ManagedSaveDefined: Decodable, Sendable {
        var changed: Bool
    }

    struct Job: Decodable, Sendable {
        var operation: String
        var pid: Int32
        var status: String
        var elapsedMilliseconds: Int64
        var dataTotal: UInt64?
        var dataProcessed: UInt64?
        var dataRemaining: UInt64?
        var memoryBandwidth: UInt64?
    }

    struct JobInfo: Decodable, Sendable {
        var job: Job?
    }

    struct Comparison: Decodable, Sendable {
        var result: String
        var message: String?
        var features: [WireFeature]
    }

    struct Baseline: Decodable, Sendable {
        var cpu: String
    }
}
