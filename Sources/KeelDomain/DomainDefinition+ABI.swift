import KeelCPU

extension DomainDefinition {
    /// Checks that `other` (the target) presents the same guest ABI as `self` (the source), as
    /// libvirt's virDomainDefCheckABIStability does for the parts Keel interprets; host-side
    /// details (disk sources, descriptions, serial log paths …) may differ.
    ///
    /// - Throws: `DomainError` `.abiMismatch` with libvirt's message for the first mismatch.
    public func checkABIStability(against other: DomainDefinition) throws {
        func mismatch(_ message: String) -> DomainError { DomainError(.abiMismatch, message) }
        if virtType != other.virtType {
            throw mismatch("Target domain virt type \(other.virtType) does not match source \(virtType)")
        }
        if uuid != other.uuid {
            throw mismatch("Target domain uuid \(other.uuid ?? "") does not match source \(uuid ?? "")")
        }
        if name != other.name {
            throw mismatch("Target domain name '\(other.name)' does not match source '\(name)'")
        }
        if memoryKiB != other.memoryKiB {
            throw mismatch("Target domain max memory \(other.memoryKiB) does not match source \(memoryKiB)")
        }
        if vcpus != other.vcpus {
            throw mismatch("Target domain vCPU max \(other.vcpus) does not match source \(vcpus)")
        }
        if os.type != other.os.type {
            throw mismatch("Target domain OS type \(other.os.type) does not match source \(os.type)")
        }
        if os.arch != other.os.arch {
            throw mismatch("Target domain architecture \(other.os.arch ?? "none") does not match source \(os.arch ?? "none")")
        }
        if os.machine != other.os.machine {
            throw mismatch("Target domain machine type \(other.os.machine ?? "") does not match source \(os.machine ?? "")")
        }
        if let cpu {
            do {
                try cpu.checkABIStability(against: other.cpu)
            } catch let error as CPUError {
                throw mismatch(error.message)
            }
        } else if other.cpu != nil {
            throw mismatch("Target CPU does not match source")
        }
        if disks.count != other.disks.count {
            throw mismatch("Target domain disk count \(other.disks.count) does not match source \(disks.count)")
        }
        for (source, target) in zip(disks, other.disks) {
            if source.device != target.device {
                throw mismatch("Target disk device \(target.device) does not match source \(source.device)")
            }
            if source.bus != target.bus {
                throw mismatch("Target disk bus \(target.bus ?? "") does not match source \(source.bus ?? "")")
            }
            if source.target != target.target {
                throw mismatch("Target disk \(target.target) does not match source \(source.target)")
            }
            if source.serial != target.serial {
                throw mismatch("Target disk serial \(target.serial ?? "") does not match source \(source.serial ?? "")")
            }
            if source.readonly != target.readonly {
                throw mismatch("Target disk access mode does not match source")
            }
        }
        let devices = tree.child("devices")
        let otherDevices = other.tree.child("devices")
        for (kind, label) in [("serial", "serial port"), ("console", "console"), ("interface", "net card"), ("channel", "channel")] {
            let count = devices?.children(named: kind).count ?? 0
            let otherCount = otherDevices?.children(named: kind).count ?? 0
            if count != otherCount {
                throw mismatch("Target domain \(label) count \(otherCount) does not match source \(count)")
            }
        }
    }
}
