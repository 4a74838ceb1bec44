extension QMP {
    /// Where `add-fd` put a descriptor: QEMU's fd set and QEMU's own descriptor number.
    public struct AddedFileDescriptor: Sendable, Hashable {
        /// The fd set id, for `/dev/fdset/ID` paths and `remove-fd`.
        public var fdset: Int
        /// The descriptor number inside QEMU.
        public var fd: Int

        public init(fdset: Int, fd: Int) {
            self.fdset = fdset
            self.fd = fd
        }
    }
}

extension QMP.Client {
    /// Passes `fd` to QEMU under `name` (`getfd`), for commands that take an fd name such as
    /// `migrate` with `fd:NAME`.
    ///
    /// - Parameters:
    ///   - fd: a descriptor the caller keeps owning; QEMU gets a duplicate.
    ///   - name: the name later commands use; an existing name is replaced.
    /// - Throws: as ``execute(_:arguments:deadline:)``.
    public func sendFileDescriptor(_ fd: Int32, name: String, deadline: Duration? = nil) async throws {
        try await execute("getfd", arguments: ["fdname": .string(name)], fileDescriptors: [fd], deadline: deadline)
    }

    /// Closes QEMU's descriptor named `name` (`closefd`).
    public func closeFileDescriptor(name: String, deadline: Duration? = nil) async throws {
        try await execute("closefd", arguments: ["fdname": .string(name)], deadline: deadline)
    }

    /// Adds `fd` to an fd set (`add-fd`), for `/dev/fdset/N` paths.
    ///
    /// - Parameters:
    ///   - fd: a descriptor the caller keeps owning; QEMU gets a duplicate.
    ///   - fdset: the set to add to; QEMU allocates a new one when nil.
    ///   - opaque: free text QEMU stores with the descriptor (`query-fdsets` shows it).
    /// - Returns: the set and QEMU's descriptor number.
    /// - Throws: as ``execute(_:arguments:deadline:)``, and `.protocolViolation` when the reply
    ///   lacks `fdset-id` or `fd`.
    @discardableResult
    public func addFileDescriptor(_ fd: Int32, fdset: Int? = nil, opaque: String? = nil, deadline: Duration? = nil) async throws -> QMP.AddedFileDescriptor {
        var arguments: [String: QMP.Value] = [:]
        if let fdset { arguments["fdset-id"] = .int(Int64(fdset)) }
        if let opaque { arguments["opaque"] = .string(opaque) }
        let reply = try await execute("add-fd", arguments: arguments, fileDescriptors: [fd], deadline: deadline)
        guard let set = reply["fdset-id"]?.intValue, let number = reply["fd"]?.intValue else {
            throw QMP.Error.protocolViolation("add-fd returned \(reply.jsonString())")
        }
        return QMP.AddedFileDescriptor(fdset: set, fd: number)
    }

    /// Removes descriptor `fd` from set `fdset`, or the whole set when `fd` is nil (`remove-fd`).
    public func removeFileDescriptor(fdset: Int, fd: Int? = nil, deadline: Duration? = nil) async throws {
        var arguments: [String: QMP.Value] = ["fdset-id": .int(Int64(fdset))]
        if let fd { arguments["fd"] = .int(Int64(fd)) }
        try await execute("remove-fd", arguments: arguments, deadline: deadline)
    }
}
