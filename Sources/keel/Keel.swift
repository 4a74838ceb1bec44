import ArgumentParser
import Glibc

/// `keel`: the command-line front of Keel, with virsh-like verbs.
struct Keel: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "keel",
        abstract: "A QEMU/KVM virtual machine manager that never lets a guest's CPU change underneath it.",
        subcommands: [
            CPUCompare.self, CPUBaseline.self, SaveImageCommand.self,
            DomainDefine.self, DomainStart.self, DomainList.self, DomainInfo.self, DomainDumpXML.self,
            DomainDestroy.self, DomainUndefine.self, DomainSuspend.self, DomainResume.self,
            DomainSave.self, DomainRestore.self,
            DomainShutdown.self, DomainReboot.self, DomainManagedSave.self, DomainManagedSaveRemove.self,
            DomainManagedSaveDumpXML.self, DomainManagedSaveDefine.self, DomainAutostart.self,
            DomainJobInfo.self, DomainJobAbort.self, HypervisorCPUCompare.self, HypervisorCPUBaseline.self,
            Capabilities.self, DomainCapabilities.self, DomainEvents.self, DomainMigrate.self,
        ]
    )
}

extension Keel {
    /// The options that say where a verb runs, accepted before the verb as well
    /// (`keel --connect unix:PATH list`).
    static let globalOptions: Set<String> = ["--connect", "--state", "--cpu-map"]

    /// The arguments with leading global options moved after the verb, where its own option
    /// group reads them.
    static func hoistingGlobalOptions(_ arguments: [String]) -> [String] {
        var leading: [String] = []
        var index = 0
        while index < arguments.count {
            let argument = arguments[index]
            let name = String(argument.split(separator: "=", maxSplits: 1).first ?? "")
            guard globalOptions.contains(name) else { break }
            leading.append(argument)
            if !argument.contains("="), index + 1 < arguments.count {
                leading.append(arguments[index + 1])
                index += 1
            }
            index += 1
        }
        guard !leading.isEmpty else { return arguments }
        var rest = Array(arguments[index...])
        // Options stay before a "--" that ends them.
        let end = rest.firstIndex(of: "--") ?? rest.count
        rest.insert(contentsOf: leading, at: end)
        return rest
    }
}

@main
enum KeelMain {
    static func main() async {
        do {
            var command = try Keel.parseAsRoot(Keel.hoistingGlobalOptions(Array(CommandLine.arguments.dropFirst())))
            if var asyncCommand = command as? any AsyncParsableCommand {
                try await asyncCommand.run()
            } else {
                try command.run()
            }
        } catch let error as CommandFailure {
            Output.error(error.message)
            exit(error.exitCode)
        } catch let code as ExitCode {
            exit(code.rawValue)
        } catch let error as CleanExit {
            Keel.exit(withError: error)
        } catch {
            let code = Keel.exitCode(for: error)
            if code == .success {
                Keel.exit(withError: error)
            }
            Output.error(Keel.message(for: error).split(separator: "\n").first.map(String.init) ?? "invalid arguments")
            exit(1)
        }
    }
}
