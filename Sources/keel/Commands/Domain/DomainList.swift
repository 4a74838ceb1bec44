import ArgumentParser
import KeelQEMU

/// `keel list`: lists domains, as `virsh list` does.
struct DomainList: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "list", abstract: "List running (or, with --all, all) domains.")

    @OptionGroup var options: DriverOptions
    @Flag(help: "Include inactive domains.") var all = false
    @Flag(name: .customLong("managed-save"), help: "Show inactive domains with a managed-save image as 'saved'.") var managedSave = false
    @Flag(help: "Print the result as JSON.") var json = false

    func run() async throws {
        let backend = try options.backend()
        let domains = try await driverCall { try await backend.list() }.filter { all || $0.state != .shutoff }
        if json {
            Output.print(JSON.array(domains.map { domain in
                .object([
                    ("name", .string(domain.name)), ("uuid", domain.uuid.map(JSON.string) ?? .null), ("state", .string(domain.state.rawValue)),
                    ("persistent", .bool(domain.persistent)), ("pid", domain.pid.map { .int(Int($0)) } ?? .null),
                    ("managedSave", .bool(domain.managedSave)),
                ])
            }).text + "\n")
            return
        }
        var text = " Id   Name                 State\n" + String(repeating: "-", count: 42) + "\n"
        for domain in domains {
            let id = domain.pid.map { String($0) } ?? "-"
            text += " " + id.padding(4) + " " + domain.name.padding(20) + " " + state(of: domain) + "\n"
        }
        Output.print(text + "\n")
    }

    /// virsh's state column: "saved" for a stopped domain with a managed-save image under --managed-save.
    func state(of domain: ListedDomain) -> String {
        guard domain.state == .shutoff else { return domain.state.rawValue }
        return managedSave && domain.managedSave ? "saved" : "shut off"
    }
}

extension String {
    func padding(_ width: Int) -> String {
        count >= width ? self : self + String(repeating: " ", count: width - count)
    }
}
