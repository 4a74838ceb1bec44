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
            Capabilities.self, DomainCapabilities.self,
        ]
    )
}

@main
enum KeelMain {
    static func main() async {
        do {
            var command = try Keel.parseAsRoot()
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
