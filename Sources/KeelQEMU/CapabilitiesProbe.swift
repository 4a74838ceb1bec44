import Glibc
import KeelCPU
import KeelQMP

/// Finds out what one QEMU binary offers under one accelerator, by asking QEMU itself over
/// QMP (as libvirt's virQEMUCapsInitQMP does), and keeps the answer in a cache keyed by the
/// binary's identity.
///
/// Two short-lived QEMUs are started, both paused and without devices:
/// 1. `-machine none` for the version, the machine types, the CPU models with their blockers
///    and the `host` (KVM) or `max` (TCG) CPU expanded with and without `migratable`;
/// 2. the default machine with `-cpu base` and every CPUID feature QEMU knows switched off,
///    whose vCPU's `feature-words` are what QEMU enables although it was asked not to.
public enum CapabilitiesProbe {
    /// Bumped whenever the probe records something differently, so that older caches are
    /// probed again.
    static let version = 1

    /// The capabilities of `binary` under `accelerator`: from the cache when it is still
    /// valid, else probed and cached.
    ///
    /// The cache file is `cacheDirectory/<binary path>-<accel>.xml`. It is valid when it
    /// parses and its binary identity (size, mtime, inode), accelerator and probe key (probe
    /// version and CPU map) match; anything else, a corrupted file included, is probed again
    /// and replaced atomically.
    ///
    /// - Parameters:
    ///   - binary: the QEMU executable.
    ///   - accelerator: `.kvm` or `.tcg`.
    ///   - cacheDirectory: where cache files live; created when missing. The probe's
    ///     temporary files (QMP socket, pidfile, log) go in a subdirectory that is removed.
    ///   - map: the CPU map that QEMU's feature names are translated with.
    /// - Throws: `QEMUError` `.unsupported` when KVM is asked for but `/dev/kvm` cannot be
    ///   opened read-write, `.notFound` for a missing binary, `.processExited`,
    ///   `.protocolViolation` or `.timeout` when probing fails, `.io` for cache trouble.
    public static func capabilities(
        binary: String = "/usr/bin/qemu-system-x86_64",
        accelerator: QEMUCapabilities.Accelerator,
        cacheDirectory: String,
        map: CPUMap
    ) async throws -> QEMUCapabilities {
        if accelerator == .kvm { try checkKVM() }
        let identity = try binaryIdentity(binary)
        let key = probeKey(map: map)
        let path = cachePath(binary: binary, accelerator: accelerator, cacheDirectory: cacheDirectory)
        if let cached = cachedCapabilities(at: path, binary: binary, identity: identity, accelerator: accelerator, probeKey: key) {
            return cached
        }
        try POSIXFile.makeDirectory(cacheDirectory)
        var capabilities = try await probe(binary: binary, accelerator: accelerator, workDirectory: cacheDirectory, map: map)
        // The identity from before the probe: a binary replaced meanwhile is probed again.
        capabilities.binaryIdentity = identity
        try POSIXFile.writeAtomically(path, capabilities.xmlElement.formatted())
        return capabilities
    }

    /// Probes `binary` under `accelerator` without looking at or writing any cache.
    ///
    /// - Parameters:
    ///   - workDirectory: an existing directory for the probe's temporary subdirectory.
    /// - Throws: as ``capabilities(binary:accelerator:cacheDirectory:map:)``.
    public static func probe(
        binary: String = "/usr/bin/qemu-system-x86_64",
        accelerator: QEMUCapabilities.Accelerator,
        workDirectory: String,
        map: CPUMap
    ) async throws -> QEMUCapabilities {
        if accelerator == .kvm { try checkKVM() }
        let identity = try binaryIdentity(binary)
        let directory = try makeTemporaryDirectory(in: workDirectory)
        defer { removeTemporaryDirectory(directory) }

        let accel = accelerator.rawValue
        let facts = try await withQEMU(binary: binary, machine: "none,accel=\(accel)", cpu: nil, directory: directory) { client in
            try await Facts.query(client, accelerator: accelerator)
        }
        var capabilities = QEMUCapabilities(
            binary: binary, binaryIdentity: identity, version: facts.version, accelerator: accelerator,
            machines: facts.machines, probeKey: probeKey(map: map)
        )
        capabilities.cpuModels = facts.cpuModels.map { model in
            var translated = model
            translated.unavailableFeatures = model.unavailableFeatures.map { map.libvirtFeatureName(forQEMU: $0) ?? $0 }
            return translated
        }
        let migratable = libvirtNames(trueIn: facts.migratableProps, map: map)
        let all = libvirtNames(trueIn: facts.allProps, map: map)
        capabilities.availableFeatures = inMapOrder(all.union(migratable), map: map)
        capabilities.unmigratableFeatures = inMapOrder(all.subtracting(migratable), map: map)
        capabilities.hostModel = hostModel(facts: facts, available: capabilities.availableFeatures, cpuModels: capabilities.cpuModels, map: map)

        guard capabilities.cpuModel(named: "base") != nil else {
            throw QEMUError(.unsupported, "QEMU \(capabilities.version) at \(binary) has no 'base' CPU model; Keel needs a newer QEMU")
        }
        let known = Set(facts.allProps.keys).union(facts.migratableProps.keys)
        let machine = capabilities.resolveMachine(nil) ?? "pc"
        let words = try await withQEMU(
            binary: binary, machine: "\(machine),accel=\(accel)", cpu: allOffCPU(map: map, knownProperties: known), directory: directory
        ) { client in
            try await Facts.featureWords(client)
        }
        capabilities.forcedFeatures = map.featureNames(in: map.bits(ofCPUID: words).bits)
        return capabilities
    }

    /// Throws unless `/dev/kvm` can be opened read-write.
    static func checkKVM() throws {
        let fd = open("/dev/kvm", O_RDWR | O_CLOEXEC)
        guard fd >= 0 else {
            throw QEMUError(.unsupported, "KVM is not available: cannot open /dev/kvm: \(errnoText())")
        }
        close(fd)
    }

    /// `-cpu base` with every CPUID feature of the map that this QEMU knows switched off.
    static func allOffCPU(map: CPUMap, knownProperties: Set<String>) -> String {
        var argument = "base"
        for feature in map.features where GuestCPU.isCPUID(feature) {
            let name = map.qemuFeatureName(for: feature.name)
            // QEMU refuses to start on a property it does not have.
            guard knownProperties.contains(name) else { continue }
            argument += ",\(name)=off"
        }
        return argument
    }

    /// The libvirt names of the boolean properties that are true, for features the map knows.
    static func libvirtNames(trueIn props: [String: QMP.Value], map: CPUMap) -> Set<String> {
        var names: Set<String> = []
        for (name, value) in props where value.boolValue == true {
            if let libvirtName = map.libvirtFeatureName(forQEMU: name) { names.insert(libvirtName) }
        }
        return names
    }

    static func inMapOrder(_ names: Set<String>, map: CPUMap) -> [String] {
        map.features.compactMap { names.contains($0.name) ? $0.name : nil }
    }

    /// The host-model CPU: the expansion decoded on the map as libvirt's
    /// virQEMUCapsInitCPUModelX86 does (every model QEMU has, with its blockers), then made
    /// custom/exact with fallback forbid ("QEMU supplied it"). nil when nothing fits.
    static func hostModel(facts: Facts, available: [String], cpuModels: [QEMUCapabilities.CPUModel], map: CPUMap) -> CPUDefinition? {
        let vendor = facts.vendor.flatMap { string in map.vendors.first { $0.string == string }?.name }
        let signature = makeSignature(family: facts.family, model: facts.model, stepping: facts.stepping)
        var models: [String: [String]] = [:]
        for model in cpuModels where models[model.name] == nil {
            models[model.name] = model.unavailableFeatures
        }
        let input = CPUMap.DecodeInput(bits: map.bits(ofFeatures: available), vendor: vendor, signature: signature)
        guard var cpu = try? map.decode(input, as: .guest, hypervisorModels: models) else { return nil }
        cpu.mode = .custom
        cpu.match = .exact
        cpu.fallback = .forbid
        return cpu
    }

    /// A CPUID leaf 1 EAX value from family, model and stepping (libvirt's x86MakeSignature).
    static func makeSignature(family: UInt32, model: UInt32, stepping: UInt32) -> UInt32 {
        var family = family
        var signature: UInt32 = 0
        if family > 0xf {
            signature |= min(family - 0xf, 0xff) << 20
            family = 0xf
        }
        signature |= ((model >> 4) & 0xf) << 16
        signature |= family << 8
        signature |= (model & 0xf) << 4
        signature |= stepping & 0xf
        return signature
    }
}

extension CapabilitiesProbe {
    /// What the first QEMU reports.
    struct Facts: Sendable {
        var version = ""
        var machines: [QEMUCapabilities.Machine] = []
        /// Blockers still in QEMU's spelling.
        var cpuModels: [QEMUCapabilities.CPUModel] = []
        /// The expansion as a guest would get it (`migratable` on: the default for `host`).
        var migratableProps: [String: QMP.Value] = [:]
        /// The expansion with `migratable=false`: every feature the accelerator can provide.
        var allProps: [String: QMP.Value] = [:]
        var vendor: String?
        var family: UInt32 = 0
        var model: UInt32 = 0
        var stepping: UInt32 = 0

        static func query(_ client: QMP.Client, accelerator: QEMUCapabilities.Accelerator) async throws -> Facts {
            var facts = Facts()
            let version = try await execute(client, "query-version")
            guard let major = version["qemu"]?["major"]?.intValue, let minor = version["qemu"]?["minor"]?.intValue,
                  let micro = version["qemu"]?["micro"]?.intValue
            else {
                throw QEMUError(.protocolViolation, "query-version returned no version: \(version)")
            }
            facts.version = "\(major).\(minor).\(micro)"
            facts.machines = try await parseMachines(execute(client, "query-machines"))
            facts.cpuModels = try await parseCPUDefinitions(execute(client, "query-cpu-definitions"))
            let model: QMP.Value = accelerator == .kvm ? "host" : "max"
            facts.migratableProps = try await props(execute(client, "query-cpu-model-expansion", ["type": "full", "model": ["name": model]]))
            facts.allProps = try await props(execute(client, "query-cpu-model-expansion", [
                "type": "full", "model": ["name": model, "props": ["migratable": false]],
            ]))
            facts.vendor = facts.migratableProps["vendor"]?.stringValue
            func number(_ name: String) -> UInt32 {
                facts.migratableProps[name]?.uint64Value.flatMap { UInt32(exactly: $0) } ?? 0
            }
            facts.family = number("family")
            facts.model = number("model")
            facts.stepping = number("stepping")
            return facts
        }

        /// vCPU 0's `feature-words`.
        static func featureWords(_ client: QMP.Client) async throws -> [CPUIDWord] {
            let cpus = try await execute(client, "query-cpus-fast")
            let path = cpus[0]?["qom-path"]?.stringValue ?? "/machine/unattached/device[0]"
            let words = try await execute(client, "qom-get", ["path": .string(path), "property": "feature-words"])
            return try CPUIDWord.parseFeatureWords(words)
        }

        /// Machine types, the default first (libvirt's order), each alias as its own entry
        /// after the machine it names.
        static func parseMachines(_ value: QMP.Value) throws -> [QEMUCapabilities.Machine] {
            guard let entries = value.arrayValue else {
                throw QEMUError(.protocolViolation, "query-machines returned no list: \(value)")
            }
            var machines: [QEMUCapabilities.Machine] = []
            for entry in entries {
                guard let name = entry["name"]?.stringValue else {
                    throw QEMUError(.protocolViolation, "query-machines entry without a name: \(entry)")
                }
                if name == "none" { continue }
                let isDefault = entry["is-default"]?.boolValue ?? false
                let maxCPUs = entry["cpu-max"]?.intValue
                let deprecated = entry["deprecated"]?.boolValue ?? false
                var group = [QEMUCapabilities.Machine(name: name, isDefault: isDefault, maxCPUs: maxCPUs, isDeprecated: deprecated)]
                if let alias = entry["alias"]?.stringValue {
                    group.append(QEMUCapabilities.Machine(name: alias, canonical: name, isDefault: isDefault, maxCPUs: maxCPUs, isDeprecated: deprecated))
                }
                if isDefault {
                    machines.insert(contentsOf: group, at: 0)
                } else {
                    machines.append(contentsOf: group)
                }
            }
            return machines
        }

        static func parseCPUDefinitions(_ value: QMP.Value) throws -> [QEMUCapabilities.CPUModel] {
            guard let entries = value.arrayValue else {
                throw QEMUError(.protocolViolation, "query-cpu-definitions returned no list: \(value)")
            }
            return try entries.map { entry in
                guard let name = entry["name"]?.stringValue else {
                    throw QEMUError(.protocolViolation, "query-cpu-definitions entry without a name: \(entry)")
                }
                let blockers = entry["unavailable-features"]?.arrayValue?.compactMap(\.stringValue) ?? []
                return QEMUCapabilities.CPUModel(
                    name: name, aliasOf: entry["alias-of"]?.stringValue, unavailableFeatures: blockers,
                    isDeprecated: entry["deprecated"]?.boolValue ?? false
                )
            }
        }

        static func props(_ value: QMP.Value) throws -> [String: QMP.Value] {
            guard let props = value["model"]?["props"]?.objectValue else {
                throw QEMUError(.protocolViolation, "query-cpu-model-expansion returned no properties")
            }
            return props
        }
    }

    /// Runs one command, turning QMP failures into `QEMUError`s that name the command.
    static func execute(_ client: QMP.Client, _ command: String, _ arguments: [String: QMP.Value]? = nil) async throws -> QMP.Value {
        do {
            return try await client.execute(command, arguments: arguments)
        } catch let error as QMP.Error {
            throw QEMUError(code(for: error), "\(command) failed: \(error)", cause: error)
        }
    }

    static func code(for error: QMP.Error) -> QEMUError.Code {
        switch error {
        case .timeout: .timeout
        case .disconnected: .processExited
        case .commandFailed: .unsupported
        default: .protocolViolation
        }
    }

    /// Starts a paused QEMU without devices, runs `body` on its QMP connection and stops the
    /// QEMU again, also when `body` fails.
    static func withQEMU<Result: Sendable>(
        binary: String, machine: String, cpu: String?, directory: String,
        _ body: (QMP.Client) async throws -> Result
    ) async throws -> Result {
        let socket = directory + "/qmp.sock"
        // QEMU's option syntax escapes a comma by doubling it.
        let escapedSocket = socket.split(separator: ",", omittingEmptySubsequences: false).joined(separator: ",,")
        var arguments = [
            "-machine", machine, "-m", "16", "-nodefaults", "-no-user-config", "-display", "none", "-S",
            "-qmp", "unix:\(escapedSocket),server=on,wait=off",
        ]
        if let cpu { arguments += ["-cpu", cpu] }
        let process = try QEMUProcess.spawn(
            binary: binary, arguments: arguments, pidfile: directory + "/qemu.pid", qmpSocket: socket, log: directory + "/qemu.log"
        )
        do {
            let result = try await QMP.Client.withConnection(to: socket, deadline: .seconds(10), commandDeadline: .seconds(20)) { client in
                try await body(client)
            }
            process.terminate(grace: .seconds(2))
            return result
        } catch let error as QMP.Error {
            process.terminate(grace: .seconds(2))
            throw QEMUError(code(for: error), "cannot talk to QEMU at \(socket): \(error)", cause: error)
        } catch {
            process.terminate(grace: .seconds(2))
            throw error
        }
    }
}
