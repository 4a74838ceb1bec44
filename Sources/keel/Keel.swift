import ArgumentParser
import Glibc

/// `keel`: the command-line front of Keel, with virsh-like verbs.
struct Keel: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "keel",
        abstract: "A QEMU/KVM virtual machine manager that never lets a guest's CPU change underneath it.",
        subcommands: [CPUCompare.self, CPUBaseline.self]
    )
}

@main
enum KeelMain {
    static func main() {
        do {
            var command = try Keel.parseAsRoot()
            try command.run()
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
