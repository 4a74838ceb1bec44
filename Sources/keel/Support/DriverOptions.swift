import ArgumentParser
import Glibc
import KeelCPU
import KeelQEMU

/// Options every driver command shares: where the state lives.
struct DriverOptions: ParsableArguments {
    @Option(name: .customLong("state"), help: "The state directory (default: $KEEL_STATE, else /var/lib/keel).")
    var state: String?

    @Option(name: .customLong("cpu-map"), help: "A libvirt-format cpu_map directory (default: the built-in map).")
    var cpuMap: String?

    var stateDirectory: String {
        if let state, !state.isEmpty { return state }
        if let env = getenv("KEEL_STATE"), let value = String(validatingCString: env), !value.isEmpty { return value }
        return "/var/lib/keel"
    }

    /// Opens the driver, turning setup failures into one-line errors.
    func driver() throws -> Driver {
        do {
            // --cpu-map, else $KEEL_CPU_MAP, else the built-in map.
            let map = try CPUMap.resolve(directory: cpuMap)
            return try Driver(stateDirectory: stateDirectory, map: map)
        } catch let error as QEMUError {
            throw CommandFailure(message: error.message)
        } catch let error as CPUError {
            throw CommandFailure(message: error.message)
        }
    }
}

/// Runs a driver call, turning its errors into one-line failures that keep CPU details.
func driverCall<T>(_ body: () async throws -> T) async throws -> T {
    do {
        return try await body()
    } catch let error as QEMUError {
        throw CommandFailure(message: error.message)
    }
}

extension Driver.Summary {
    var json: JSON {
        .object([
            ("name", .string(name)), ("uuid", uuid.map(JSON.string) ?? .null), ("state", .string(state.rawValue)),
            ("persistent", .bool(persistent)), ("pid", pid.map { .int(Int($0)) } ?? .null),
        ])
    }
}

extension QEMUError {
    var featuresJSON: JSON {
        .array(features.map { problem in
            .object([
                ("name", .string(problem.name)), ("kind", .string(problem.kind.rawValue)),
                ("bits", .array(problem.locations.map { .string($0.description) })),
            ])
        })
    }
}
