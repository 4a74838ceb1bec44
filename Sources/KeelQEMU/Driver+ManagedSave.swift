import KeelDomain
import KeelSaveImage

extension DomainStore {
    /// Where a domain's managed-save image lives (`STATE/save/NAME.save`, as libvirt's
    /// `<saveDir>/<name>.save`).
    public func managedSavePath(_ name: String) -> String { root + "/save/\(name).save" }
}

extension Driver {
    /// Saves a running persistent domain to its managed-save image and stops it; the next
    /// `start` restores it.
    ///
    /// - Parameter running: what the restore does: resume (`true`), stay paused (`false`), or
    ///   as the guest was (nil).
    /// - Throws: `QEMUError` `.notFound`, `.invalidState` for a transient or stopped domain,
    ///   and as `save(name:to:running:compression:)`.
    public func managedSave(name: String, running: Bool? = nil) async throws {
        try DomainStore.validate(name: name)
        let (state, _) = try self.state(of: name)
        guard try store.definition(name) != nil else {
            if state == .shutoff {
                throw QEMUError(.notFound, "domain '\(name)' not found")
            }
            throw QEMUError(.invalidState, "cannot do managed save for transient domain '\(name)'")
        }
        guard state == .running || state == .paused else {
            throw QEMUError(.invalidState, "domain '\(name)' is not running")
        }
        try POSIXFile.makeDirectory(store.root + "/save")
        try await save(name: name, to: store.managedSavePath(name), running: running)
    }

    /// Whether a domain has a managed-save image (complete or not).
    public func hasManagedSave(name: String) -> Bool {
        POSIXFile.exists(store.managedSavePath(name))
    }

    /// Removes a domain's managed-save image; the next `start` boots it fresh.
    ///
    /// - Returns: whether there was an image to remove.
    /// - Throws: `QEMUError` `.notFound` for an unknown domain, `.busy` while a job runs.
    @discardableResult
    public func removeManagedSave(name: String) throws -> Bool {
        try requireDefined(name)
        let lock = try DomainLock.acquire(store: store, name: name, job: "managedsave-remove")
        defer { withExtendedLifetime(lock) {} }
        guard hasManagedSave(name: name) else { return false }
        POSIXFile.remove(store.managedSavePath(name))
        POSIXFile.syncDirectory(of: store.managedSavePath(name))
        return true
    }

    /// The domain XML stored in the managed-save image (the original CPU; the updated one is
    /// in the cookie).
    ///
    /// - Throws: `QEMUError` `.notFound` without an image ("domain does not have managed save
    ///   image"), `.invalidArgument` for an incomplete or corrupt one.
    public func managedSaveXML(name: String) throws -> String {
        try requireDefined(name)
        let path = try managedSaveImage(name)
        do {
            return try SaveImage.read(path: path, options: .metadata).dataArea.xml
        } catch let error as SaveImageError {
            throw QEMUError(.invalidArgument, "managed save image of '\(name)': \(error.message)", cause: error)
        }
    }

    /// Replaces the domain XML in the managed-save image, as libvirt's `managedsave-define`:
    /// the new XML must keep the guest ABI of the stored one; the cookie and stream stay.
    ///
    /// - Parameter running: also change whether the restore resumes the guest.
    /// - Returns: whether the image changed (an identical XML and state change nothing).
    /// - Throws: `QEMUError` `.notFound` without an image, `.invalidArgument` for an ABI change
    ///   ("unsupported configuration: …") or an XML that does not fit.
    @discardableResult
    public func managedSaveDefine(name: String, xml: String, running: Bool? = nil) throws -> Bool {
        try requireDefined(name)
        let lock = try DomainLock.acquire(store: store, name: name, job: "managedsave-define")
        defer { withExtendedLifetime(lock) {} }
        let path = try managedSaveImage(name)
        do {
            let info = try SaveImage.read(path: path, options: .metadata)
            if xml == info.dataArea.xml && (running == nil || running == info.header.wasRunning) {
                return false
            }
            let stored = try DomainDefinition(xmlString: info.dataArea.xml)
            let replacement = try DomainDefinition(xmlString: xml)
            guard replacement.name == name else {
                throw QEMUError(.invalidArgument, "the new XML names domain '\(replacement.name)', not '\(name)'")
            }
            do {
                try stored.checkABIStability(against: replacement)
            } catch let error as DomainError {
                throw QEMUError(.invalidArgument, "unsupported configuration: \(error.message)")
            }
            let text = xml == info.dataArea.xml ? xml : replacement.formatted()
            return try SaveImage.rewriteDataArea(path: path, xml: text, wasRunning: running)
        } catch let error as SaveImageError {
            throw QEMUError(.invalidArgument, "managed save image of '\(name)': \(error.message)", cause: error)
        } catch let error as DomainError {
            throw QEMUError(.invalidArgument, "managed save image of '\(name)': \(error.message)")
        }
    }

    /// For `start`: restores the managed-save image when there is one and returns the
    /// restored status, removing the image after a successful restore. An incomplete image
    /// (its writer died) is removed and nil returned, so the guest boots fresh, as libvirt
    /// does. A failed restore keeps the image and throws.
    func startFromManagedSave(name: String, paused: Bool) async throws -> DomainStatus? {
        let path = store.managedSavePath(name)
        guard hasManagedSave(name: name), try store.definition(name) != nil else { return nil }
        do {
            _ = try SaveImage.read(path: path, options: .metadata)
        } catch let error as SaveImageError where error.code == .incomplete {
            let lock = try DomainLock.acquire(store: store, name: name, job: "start")
            defer { withExtendedLifetime(lock) {} }
            POSIXFile.remove(path)
            POSIXFile.syncDirectory(of: path)
            return nil
        } catch let error as SaveImageError {
            throw QEMUError(.invalidArgument, "cannot restore the managed save image of '\(name)': \(error.message)", cause: error)
        }
        let status: DomainStatus
        do {
            status = try await restore(path: path, running: paused ? false : nil)
        } catch let error as QEMUError {
            guard error.code != .invalidState && error.code != .busy else { throw error }
            throw QEMUError(error.code, "cannot restore the managed save image of '\(name)' (kept in \(path)): \(error.message)",
                            features: error.features, cause: error)
        }
        POSIXFile.remove(path)
        POSIXFile.syncDirectory(of: path)
        return status
    }

    private func managedSaveImage(_ name: String) throws -> String {
        let path = store.managedSavePath(name)
        guard hasManagedSave(name: name) else {
            throw QEMUError(.notFound, "domain '\(name)' does not have managed save image")
        }
        return path
    }

    func requireDefined(_ name: String) throws {
        // The name becomes part of file paths below.
        try DomainStore.validate(name: name)
        guard try store.definition(name) != nil else {
            throw QEMUError(.notFound, "domain '\(name)' not found")
        }
    }
}
