import Glibc
import KeelQMP

/// QEMU's own TLS for the migration stream (`--tls-stream`): a `tls-creds-x509` object on each
/// QEMU, made from the host's peer identity (`keeld --tls-dir`: `ca.pem`, `cert.pem`, `key.pem`).
///
/// QEMU reads fixed file names from the object's directory — `ca-cert.pem`, `server-cert.pem`,
/// `server-key.pem` for the destination (`endpoint=server`, `verify-peer=true`: the source must
/// present a certificate of the same CA) and `ca-cert.pem`, `client-cert.pem`, `client-key.pem`
/// for the source (`endpoint=client`, which always verifies the destination's certificate
/// against `tls-hostname`) — so each migration gets a private directory (0700) of symlinks to
/// the host's files, removed with the object afterwards.
public struct MigrationStreamTLS: Sendable, Hashable {
    public enum Endpoint: String, Sendable, Hashable {
        /// The destination: it listens.
        case server
        /// The source: it connects.
        case client
    }

    /// The QOM id of the credentials object on either QEMU.
    public static let objectID = "keel-migration-tls"

    /// The host's peer identity: `ca.pem`, `cert.pem`, `key.pem`.
    public var identity: String
    public var endpoint: Endpoint
    /// The source: the name (or address) the destination's certificate must carry.
    public var hostname: String?

    public init(identity: String, endpoint: Endpoint, hostname: String? = nil) {
        self.identity = identity
        self.endpoint = endpoint
        self.hostname = hostname
    }
}

extension Driver {
    /// The private directory of the stream's credentials for `name`.
    func migrationTLSDirectory(_ name: String) -> String { store.root + "/run/\(name).migration-tls" }

    /// Makes the credentials directory QEMU reads for `tls` and adds the `tls-creds-x509` object
    /// on QEMU, selected with `migrate-set-parameters tls-creds` (and `tls-hostname` on the
    /// source). Called before `migrate-incoming` and before `migrate`.
    ///
    /// - Throws: `QEMUError` `.invalidArgument` when the identity's files are missing, the QMP
    ///   error when QEMU refuses the credentials (its sanity check of the certificates).
    func enableMigrationTLS(_ tls: MigrationStreamTLS, name: String, client: QMP.Client) async throws {
        let directory = try makeMigrationTLSDirectory(tls, name: name)
        // A keeld that died during a migration may have left the object behind.
        _ = try? await client.execute("object-del", arguments: ["id": .string(MigrationStreamTLS.objectID)])
        do {
            try await client.execute("object-add", arguments: [
                "qom-type": "tls-creds-x509", "id": .string(MigrationStreamTLS.objectID), "dir": .string(directory),
                "endpoint": .string(tls.endpoint.rawValue), "verify-peer": .bool(true),
            ])
        } catch let error as QMP.Error {
            throw QEMUError(.invalidArgument, "QEMU refuses the TLS credentials for the migration stream of '\(name)': \(error)", cause: error)
        }
        var parameters: [String: QMP.Value] = ["tls-creds": .string(MigrationStreamTLS.objectID)]
        if tls.endpoint == .client {
            parameters["tls-hostname"] = .string(tls.hostname ?? "")
        }
        try await client.execute("migrate-set-parameters", arguments: parameters)
    }

    /// Removes the stream's credentials: the parameters and the object on QEMU when it still
    /// runs, and the private directory. Idempotent; tolerates a dead QEMU.
    public func disableMigrationTLS(name: String) async {
        if let status = try? store.status(name), QEMUProcess(pid: status.pid, qmpSocket: status.qmpSocket).isAlive {
            _ = try? await QMP.Client.withConnection(to: status.qmpSocket, deadline: .seconds(5), commandDeadline: .seconds(10)) { client in
                _ = try? await client.execute("migrate-set-parameters", arguments: ["tls-creds": "", "tls-hostname": ""])
                _ = try? await client.execute("object-del", arguments: ["id": .string(MigrationStreamTLS.objectID)])
            }
        }
        removeMigrationTLSDirectory(name)
    }

    /// The directory of symlinks QEMU expects, private to this process's user.
    private func makeMigrationTLSDirectory(_ tls: MigrationStreamTLS, name: String) throws -> String {
        guard let resolved = realpath(tls.identity, nil) else {
            throw QEMUError(.invalidArgument, "cannot use the TLS directory \(tls.identity) for the migration stream: \(String(cString: strerror(errno)))")
        }
        let identity = String(cString: resolved)
        free(resolved)
        let role = tls.endpoint.rawValue
        let links = [("ca-cert.pem", "ca.pem"), ("\(role)-cert.pem", "cert.pem"), ("\(role)-key.pem", "key.pem")]
        for (_, file) in links where access(identity + "/" + file, R_OK) != 0 {
            throw QEMUError(.invalidArgument, "cannot use \(identity)/\(file) for the migration stream: \(String(cString: strerror(errno)))")
        }
        let directory = migrationTLSDirectory(name)
        removeMigrationTLSDirectory(name)
        guard mkdir(directory, 0o700) == 0 else {
            throw QEMUError(.io, "cannot create \(directory): \(String(cString: strerror(errno)))")
        }
        for (link, file) in links where symlink(identity + "/" + file, directory + "/" + link) != 0 {
            let reason = String(cString: strerror(errno))
            removeMigrationTLSDirectory(name)
            throw QEMUError(.io, "cannot link \(directory)/\(link): \(reason)")
        }
        return directory
    }

    func removeMigrationTLSDirectory(_ name: String) {
        let directory = migrationTLSDirectory(name)
        for link in ["ca-cert.pem", "server-cert.pem", "server-key.pem", "client-cert.pem", "client-key.pem"] {
            unlink(directory + "/" + link)
        }
        rmdir(directory)
    }
}
