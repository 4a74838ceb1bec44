import KeelQEMU

/// Request and response bodies of the API; `docs/api/openapi.json` documents each one.
enum APIModels {
    struct DefineRequest: Codable, Sendable {
        var xml: String
    }

    struct StartRequest: Codable, Sendable {
        var paused: Bool?
    }

    struct SaveRequest: Codable, Sendable {
        var file: String
        var running: Bool?
        var compress: String?
    }

    struct RestoreRequest: Codable, Sendable {
        var file: String
        var running: Bool?
        var xml: String?
        var dryRun: Bool?
    }

    struct DomainSummary: Codable, Sendable {
        var name: String
        var uuid: String?
        var state: String
        var persistent: Bool
        var pid: Int32?
        /// Whether a managed-save image waits for the next start.
        var managedSave: Bool
    }

    struct DomainList: Codable, Sendable {
        var domains: [DomainSummary]
    }

    struct DomainInfo: Codable, Sendable {
        var name: String
        var uuid: String?
        var state: String
        var reason: String?
        var persistent: Bool
        var pid: Int32?
        var accelerator: String?
        var qemuVersion: String?
        /// The guest CPU: the updated (live) one while running, else the defined one.
        var cpu: String?
        /// The CPU the user asked for, kept when QEMU changed it.
        var originalCPU: String?
        /// Whether the domain is marked for autostart.
        var autostart: Bool
        /// Whether a managed-save image waits for the next start.
        var managedSave: Bool

        /// The JSON `JSONBody.response` makes of this, written directly (dominfo is the API's
        /// hottest query; a test holds the two equal).
        var json: [UInt8] {
            var writer = JSONObjectWriter()
            writer.field("accelerator", accelerator)
            writer.field("autostart", autostart)
            writer.field("cpu", cpu)
            writer.field("managedSave", managedSave)
            writer.field("name", name)
            writer.field("originalCPU", originalCPU)
            writer.field("persistent", persistent)
            writer.field("pid", pid)
            writer.field("qemuVersion", qemuVersion)
            writer.field("reason", reason)
            writer.field("state", state)
            writer.field("uuid", uuid)
            return writer.finish()
        }
    }

    struct XMLDocument: Codable, Sendable {
        var xml: String
    }

    /// libvirt's capabilities XML and the same facts as data.
    struct CapabilitiesDocument: Codable, Sendable {
        var xml: String
        var report: HostCapabilities.Report
    }

    /// libvirt's domain capabilities XML and the same facts as data.
    struct DomainCapabilitiesDocument: Codable, Sendable {
        var xml: String
        var report: QEMUCapabilities.DomainReport
    }

    /// The answer of a modifying job on a domain.
    struct JobResult: Codable, Sendable {
        var name: String
        var job: String
        var state: String
    }

    struct SaveResult: Codable, Sendable {
        var name: String
        var job: String
        var state: String
        var file: String
        var bytes: Int64
    }

    struct RestoreResult: Codable, Sendable {
        var name: String
        var job: String
        var state: String
        var pid: Int32
    }

    struct RestorePlan: Codable, Sendable {
        var domain: String
        var restorable: Bool
        var missing: [FeatureBody]
        var extra: [FeatureBody]
        var reasons: [String]
        var cpu: String?
    }
}
