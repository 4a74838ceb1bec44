import KeelCPU

/// The capabilities documents as structured data: what `keel capabilities --json` and
/// `keel domcapabilities --json` print, and what keeld serves beside the XML, so that both
/// read the same values whichever process probed QEMU.
extension HostCapabilities {
    public struct Report: Codable, Sendable, Hashable {
        public struct Signature: Codable, Sendable, Hashable {
            public var family: UInt32
            public var model: UInt32
            public var stepping: UInt32
        }

        /// The host CPU decoded on the CPU map (absent when KVM is not usable).
        public struct HostCPU: Codable, Sendable, Hashable {
            public var model: String?
            public var vendor: String?
            public var signature: Signature?
            public var features: [String]
        }

        public struct Machine: Codable, Sendable, Hashable {
            public var name: String
            public var canonical: String?
            public var maxCPUs: Int?
            public var isDefault: Bool
        }

        public var hostUUID: String?
        public var hostCPU: HostCPU?
        /// The QEMU binary (absent when no accelerator was probed).
        public var emulator: String?
        public var machines: [Machine]
        /// The domain types this host runs (`qemu`, and `kvm` when usable).
        public var domainTypes: [String]
    }

    public var report: Report {
        Report(
            hostUUID: hostUUID,
            hostCPU: hostCPU.map { cpu in
                Report.HostCPU(
                    model: cpu.model, vendor: cpu.vendor,
                    signature: cpu.signature.map { Report.Signature(family: $0.family, model: $0.model, stepping: $0.stepping) },
                    features: cpu.features.map(\.name)
                )
            },
            emulator: guests.first?.binary,
            machines: machines.map { Report.Machine(name: $0.name, canonical: $0.canonical, maxCPUs: $0.maxCPUs, isDefault: $0.isDefault) },
            domainTypes: guests.map(\.accelerator.domainType)
        )
    }
}

extension QEMUCapabilities {
    /// What a domain of one type may ask for on this QEMU (`<domainCapabilities>` as data,
    /// with the features QEMU forces on and those that block migration).
    public struct DomainReport: Codable, Sendable, Hashable {
        public struct Feature: Codable, Sendable, Hashable {
            public var name: String
            public var policy: String
        }

        public struct HostModel: Codable, Sendable, Hashable {
            public var model: String?
            public var fallback: String
            public var vendor: String?
            public var features: [Feature]
        }

        public struct CustomModel: Codable, Sendable, Hashable {
            public var name: String
            public var usable: Bool
            public var deprecated: Bool
            public var vendor: String
            /// The features QEMU cannot provide for the model here.
            public var blockers: [String]
        }

        /// The QEMU binary.
        public var path: String
        /// `kvm` or `qemu`.
        public var domain: String
        /// The machine type, resolved (never an alias).
        public var machine: String
        public var version: String
        public var vcpuMax: Int?
        public var hostPassthrough: Bool
        public var maximum: Bool
        /// QEMU's host-model CPU; absent when it reports none.
        public var hostModel: HostModel?
        public var custom: [CustomModel]
        public var forcedFeatures: [String]
        public var unmigratableFeatures: [String]
    }

    /// The domain capabilities for `machine` (nil: QEMU's default machine).
    ///
    /// - Throws: `QEMUError` `.unsupported` for a machine type this QEMU lacks.
    public func domainReport(machine: String?, map: CPUMap) throws -> DomainReport {
        guard let resolved = resolveMachine(machine) else {
            throw QEMUError(.unsupported, "the machine '\(machine ?? "")' is not supported by emulator '\(binary)'")
        }
        return DomainReport(
            path: binary, domain: accelerator.domainType, machine: resolved, version: version,
            vcpuMax: machines.first { $0.name == resolved }?.maxCPUs,
            hostPassthrough: supports(.hostPassthrough, map: map), maximum: supports(.maximum, map: map),
            hostModel: hostModel.map { cpu in
                DomainReport.HostModel(
                    model: cpu.model, fallback: cpu.fallback.rawValue, vendor: cpu.vendor,
                    features: cpu.features.map { DomainReport.Feature(name: $0.name, policy: $0.effectivePolicy.rawValue) }
                )
            },
            custom: customModels(map: map).map { model in
                DomainReport.CustomModel(
                    name: model.name, usable: model.isUsable, deprecated: model.isDeprecated,
                    vendor: map.model(named: model.name)?.vendor ?? "unknown", blockers: model.unavailableFeatures
                )
            },
            forcedFeatures: forcedFeatures, unmigratableFeatures: unmigratableFeatures
        )
    }
}
