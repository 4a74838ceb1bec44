import Glibc
import KeelQMP

/// How a domain's QEMU process ended, as far as QEMU said before it went.
public struct DomainExit: Sendable, Hashable {
    public enum Cause: Sendable, Hashable {
        /// The guest powered itself off (also in answer to an ACPI power button press).
        case guestShutdown
        /// QEMU was told to quit by the host: `quit` on a monitor, SIGTERM/SIGINT/SIGHUP, its UI.
        /// `reason` is QEMU's (`host-qmp-quit`, `host-signal`, `host-ui`).
        case hostShutdown(reason: String)
        /// QEMU died without shutting down (killed, crashed), or shut down because the guest
        /// panicked or the host failed (`guest-panic`, `host-error`).
        case crashed(reason: String)
    }

    /// The process that ended.
    public var pid: Int32
    public var cause: Cause
}

extension Driver {
    /// Waits until the QEMU process of `status` has exited and tells why.
    ///
    /// QEMU's event monitor (`STATE/run/NAME.events`, a second QMP monitor nothing else
    /// uses, so the driver's commands never wait for a watcher) carries its `SHUTDOWN` event,
    /// which tells a clean exit from a death: a process that closes its monitors without one was
    /// killed or crashed. Processes without an event monitor (started by an older Keel) are
    /// polled, and their exit counts as a crash, the only safe reading.
    ///
    /// - Parameter pollInterval: how often to look at a process that has no event monitor, or
    ///   whose monitor closed before the process was gone.
    /// - Returns: the exit, or nil when the waiting task is cancelled first.
    public func waitForExit(of status: DomainStatus, pollInterval: Duration = .milliseconds(250)) async -> DomainExit? {
        let process = QEMUProcess(pid: status.pid, qmpSocket: status.qmpSocket)
        var shutdown: (guest: Bool, reason: String)?
        let eventSocket = store.eventsPath(status.live.name)
        // A connection that fails while QEMU lives (a previous watcher's connection not yet
        // released by QEMU, say) is tried again.
        var attempts = 0
        while attempts < 5, POSIXFile.exists(eventSocket), process.isAlive, !Task.isCancelled {
            attempts += 1
            do {
                shutdown = try await QMP.Client.withConnection(to: eventSocket, deadline: .seconds(5)) { client in
                    var last: (guest: Bool, reason: String)?
                    // Ends when QEMU closes the monitor (it exits) or this task is cancelled.
                    for await event in client.events where event.name == "SHUTDOWN" {
                        last = (event.data["guest"]?.boolValue ?? false, event.data["reason"]?.stringValue ?? "")
                    }
                    return last
                }
                break
            } catch {
                try? await Task.sleep(for: .milliseconds(200))
            }
        }
        // The monitor closes while QEMU exits; report the exit once the process is gone.
        while process.isAlive {
            if Task.isCancelled { return nil }
            try? await Task.sleep(for: pollInterval)
        }
        if Task.isCancelled { return nil }
        return DomainExit(pid: status.pid, cause: Self.exitCause(shutdown))
    }

    /// The exit cause from QEMU's last `SHUTDOWN` event (`guest`, `reason`), nil when none came.
    static func exitCause(_ shutdown: (guest: Bool, reason: String)?) -> DomainExit.Cause {
        guard let shutdown else { return .crashed(reason: "QEMU exited without shutting down") }
        switch shutdown.reason {
        case "guest-shutdown":
            return .guestShutdown
        case "guest-panic":
            return .crashed(reason: "the guest panicked")
        case "host-error":
            return .crashed(reason: "QEMU stopped on a host error")
        default:
            return shutdown.guest ? .guestShutdown : .hostShutdown(reason: shutdown.reason)
        }
    }

    /// After `waitForExit` reported a clean exit: removes the runtime files of the process
    /// that ended, unless another job already did (and perhaps started the domain again).
    ///
    /// - Returns: whether the files were still this process's and were removed.
    @discardableResult
    public func clearExitedRuntime(name: String, pid: Int32) -> Bool {
        guard let lock = try? DomainLock.acquire(store: store, name: name, job: "cleanup", timeout: .seconds(5)) else { return false }
        defer { withExtendedLifetime(lock) {} }
        guard let current = try? store.status(name), current.pid == pid,
              !QEMUProcess(pid: pid, qmpSocket: current.qmpSocket).isAlive
        else { return false }
        store.clearRuntime(name)
        return true
    }
}
