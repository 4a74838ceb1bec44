import ArgumentParser
import KeelQEMU

/// `keel list`: lists domains, as `virsh list` does.
struct DomainList: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "list", abstract: "List running (or, with --all, all) domains.")

    @OptionGroup var options: DriverOptions
    @Flag(help: "Include inactive domains.") var all = false
    @Flag(help: "Print the result as JSON.") var json = false

    func run() async throws {
        let driver = try options.driver()
        let domains = try await driverCall { try driver.list() }.filter { all || $0.state != .shutoff }
        if json {
            Output.print(JSON.array(domains.map(\.json)).text + "\n")
            return
        }
        var text = " Id   Name                 State\n" + String(repeating: "-", count: 42) + "\n"
        for domain in domains {
            let id = domain.pid.map { String($0) } ?? "-"
            text += " " + id.padding(4) + " " + domain.name.padding(20) + " " + (domain.state == .shutoff ? "shut off" : domain.state.rawValue) + "\n"
        }
        Output.print(text + "\n")
    }
}

extension String {
    func padding(_ width: Int) -> String {
        count >= width ? self : self + String(repeating: " ", count: width - count)
    }
}
