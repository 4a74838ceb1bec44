extension CPUDefinition {
    /// Checks that `other` (the target) presents the same guest ABI as `self` (the source), in
    /// the order and wording of libvirt's virCPUDefIsEqual.
    ///
    /// Not compared: match, fallback, migratable, host-only fields and NUMA.
    ///
    /// - Throws: `CPUError` `.unsupported` naming the first mismatching field.
    public func checkABIStability(against other: CPUDefinition?) throws {
        guard let dst = other else {
            throw CPUError(.unsupported, "Target CPU does not match source")
        }
        let src = self
        func mismatch(_ message: String) -> CPUError { CPUError(.unsupported, message) }
        if src.type != dst.type {
            throw mismatch("Target CPU type \(dst.type.rawValue) does not match source \(src.type.rawValue)")
        }
        if src.mode != dst.mode {
            throw mismatch("Target CPU mode \(dst.mode?.rawValue ?? "(null)") does not match source \(src.mode?.rawValue ?? "(null)")")
        }
        if src.check != dst.check {
            throw mismatch("Target CPU check \(dst.check.rawValue) does not match source \(src.check.rawValue)")
        }
        if src.arch != dst.arch {
            throw mismatch("Target CPU arch \(dst.arch ?? "none") does not match source \(src.arch ?? "none")")
        }
        if src.model != dst.model {
            throw mismatch("Target CPU model \(dst.model ?? "<null>") does not match source \(src.model ?? "<null>")")
        }
        if src.vendor != dst.vendor {
            throw mismatch("Target CPU vendor \(dst.vendor ?? "<null>") does not match source \(src.vendor ?? "<null>")")
        }
        if src.vendorID != dst.vendorID {
            throw mismatch("Target CPU vendor id \(dst.vendorID ?? "<null>") does not match source \(src.vendorID ?? "<null>")")
        }
        let srcTopology = src.topology
        let dstTopology = dst.topology
        let fields: [(String, KeyPath<Topology, UInt32>)] = [("sockets", \.sockets), ("dies", \.dies), ("cores", \.cores), ("threads", \.threads)]
        for (name, path) in fields {
            let s = srcTopology?[keyPath: path] ?? 0
            let d = dstTopology?[keyPath: path] ?? 0
            if s != d {
                throw mismatch("Target CPU \(name) \(d) does not match source \(s)")
            }
        }
        if src.maxPhysAddr != dst.maxPhysAddr {
            throw mismatch("Target CPU maxphysaddr does not match source")
        }
        if src.features.count != dst.features.count {
            throw mismatch("Target CPU feature count \(dst.features.count) does not match source \(src.features.count)")
        }
        for (s, d) in zip(src.features, dst.features) {
            if s.name != d.name {
                throw mismatch("Target CPU feature \(d.name) does not match source \(s.name)")
            }
            if s.policy != d.policy {
                throw mismatch("Target CPU feature policy \(d.policy?.rawValue ?? "(null)") does not match source \(s.policy?.rawValue ?? "(null)")")
            }
        }
        if src.cache != dst.cache {
            throw mismatch("Target CPU cache does not match source")
        }
    }

    /// Whether `other` presents the same guest ABI (no error reporting).
    public func isABIEqual(to other: CPUDefinition?) -> Bool {
        (try? checkABIStability(against: other)) != nil
    }
}
