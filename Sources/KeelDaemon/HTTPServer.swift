import Glibc
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOHTTP1
import NIOPosix
import ServiceLifecycle

/// The API's HTTP/1.1 server on the control socket, on SwiftNIO's HTTP codec directly.
///
/// Queries are answered on the event loop that read them; jobs run as tasks and their answers
/// are written back on that loop. Keep-alive and pipelined requests are answered in order.
/// A connection's peer is checked (`SO_PEERCRED`) when it connects; a refused peer's first
/// request is answered 403 and the connection closed. On graceful shutdown the socket stops
/// accepting, requests in progress finish (and the jobs behind them), idle connections and event
/// streams close.
struct APIServer: Service {
    let api: API
    let socket: ControlSocket
    /// The listening socket: bound by `ControlSocket.bind()`, or passed by systemd.
    let listener: Int32
    let logger: Logger
    /// Runs once the server accepts connections.
    let onRunning: @Sendable () -> Void

    /// The nice value of the event-loop threads (see `raisePriority`).
    static let loopNice: Int32 = -5
    /// A connection that sends nothing for this long, while idle or in the middle of a request,
    /// is closed (one answering a job or streaming events is not).
    static let readTimeout: TimeAmount = .minutes(5)

    func run() async throws {
        let connections = ConnectionRegistry()
        let core = APIServerCore(api: api, socket: socket, logger: logger, connections: connections)
        let group = MultiThreadedEventLoopGroup(numberOfThreads: System.coreCount)
        do {
            for loop in group.makeIterator() {
                if let error = try await loop.submit({ Self.raisePriority(nice: Self.loopNice) }).get() {
                    logger.debug("the API's threads keep their priority", metadata: ["error": "\(error)"])
                }
            }
            let server = try await ServerBootstrap(group: group)
                .childChannelInitializer { channel in
                    channel.eventLoop.makeCompletedFuture {
                        try channel.pipeline.syncOperations.addHandler(IdleStateHandler(readTimeout: Self.readTimeout))
                        try channel.pipeline.syncOperations.configureHTTPServerPipeline(withErrorHandling: true)
                        try channel.pipeline.syncOperations.addHandler(APIConnectionHandler(core: core))
                        connections.add(channel)
                    }
                }
                .withBoundSocket(listener)
                .get()
            onRunning()
            // Stops accepting on SIGTERM, and also when the service group is cancelled.
            try await withTaskCancellationOrGracefulShutdownHandler {
                try await server.closeFuture.get()
            } onCancelOrGracefulShutdown: {
                server.close(promise: nil)
            }
            await connections.drain()
        } catch {
            try? await group.shutdownGracefully()
            throw error
        }
        try? await group.shutdownGracefully()
    }
}

extension APIServer {
    /// Gives the calling thread (an event loop of the API) a higher priority, so that queries
    /// are answered while jobs, QEMU and its guests keep the CPUs busy: measured with 20 guests
    /// and 200 requests in flight of which a quarter are suspend/resume jobs, dominfo's p99 is
    /// several times lower (BENCHMARKS.md, "Daemon under load", third round). Queries are
    /// short; under CFS nice -5 weighs three times nice 0, a share, not a monopoly, so guests are
    /// not starved by a flood of queries. (Nice weighs threads within one cgroup: against guests
    /// in a cgroup of their own, the cgroups' weights decide.)
    ///
    /// `SCHED_RESET_ON_FORK` keeps the raise to this thread: a thread or process created from it
    /// starts at nice 0, so no QEMU and no worker thread inherits it.
    ///
    /// - Returns: why not, when not allowed (keeld not run by root): the thread keeps its priority.
    static func raisePriority(nice: Int32) -> String? {
        var parameters = sched_param(sched_priority: 0)
        // SCHED_RESET_ON_FORK (0x40000000) is not imported from Glibc.
        guard sched_setscheduler(0, SCHED_OTHER | 0x4000_0000, &parameters) == 0,
              setpriority(__priority_which_t(PRIO_PROCESS.rawValue), 0, nice) == 0
        else { return String(cString: strerror(errno)) }
        return nil
    }
}

/// What every connection handler shares.
struct APIServerCore: Sendable {
    let api: API
    let socket: ControlSocket
    let logger: Logger
    let connections: ConnectionRegistry
    let routes = API.routes

    /// The API's JSON answer for any error a handler threw.
    func errorResponse(_ error: any Error, method: HTTPMethod, path: String) -> APIResponse {
        let apiError = APIError(error)
        logger.debug("request failed", metadata: [
            "method": "\(method.rawValue)", "path": "\(path)", "status": "\(apiError.status.code)", "code": "\(apiError.code)",
        ])
        var response = (try? JSONBody.response(apiError.body, status: apiError.status))
            ?? JSONBody.text("{\"error\":{\"code\":\"internal\",\"message\":\"cannot encode an error\"}}\n", contentType: "application/json", status: .internalServerError)
        response.headers.add(contentsOf: apiError.headers)
        return response
    }

    /// Why a peer may not use the API, or nil when it may.
    func refusal(of credentials: Result<(pid: pid_t, uid: uid_t, gid: gid_t), any Error>) -> APIError? {
        switch credentials {
        case .failure(let error):
            return APIError(status: .forbidden, code: "forbidden", message: "cannot read the peer's credentials: \(error)")
        case .success(let peer):
            guard socket.allows(uid: peer.uid, gid: peer.gid, pid: peer.pid) else {
                logger.warning("refused a peer", metadata: ["uid": "\(peer.uid)", "gid": "\(peer.gid)", "pid": "\(peer.pid)"])
                return APIError(status: .forbidden, code: "forbidden", message: "uid \(peer.uid) may not use keeld (root\(socket.group.map { " or group \($0.name)" } ?? "") only)")
            }
            return nil
        }
    }
}

/// The server's open connections and the tasks answering them, so that a graceful shutdown
/// can close the connections once idle and wait for the tasks before the event loops stop.
final class ConnectionRegistry: Sendable {
    private struct State {
        var channels: [ObjectIdentifier: any Channel] = [:]
        var draining = false
        var tasks = 0
        var idle: [CheckedContinuation<Void, Never>] = []
    }

    private let state = NIOLockedValueBox(State())

    func add(_ channel: any Channel) {
        let id = ObjectIdentifier(channel)
        let draining = state.withLockedValue { state in
            state.channels[id] = channel
            return state.draining
        }
        channel.closeFuture.whenComplete { [state] _ in
            _ = state.withLockedValue { $0.channels.removeValue(forKey: id) }
        }
        if draining { channel.close(promise: nil) }
    }

    /// A task answering a request starts; `taskEnded` when it has handed its answer to the loop.
    func taskStarted() {
        state.withLockedValue { $0.tasks += 1 }
    }

    func taskEnded() {
        let waiters = state.withLockedValue { state -> [CheckedContinuation<Void, Never>] in
            state.tasks -= 1
            guard state.tasks == 0 else { return [] }
            defer { state.idle = [] }
            return state.idle
        }
        for waiter in waiters { waiter.resume() }
    }

    /// Asks every connection to close once its request in progress is answered (connections
    /// accepted while this runs close at once), waits for them, then for every task.
    func drain() async {
        var asked = Set<ObjectIdentifier>()
        while true {
            let open = state.withLockedValue { state -> [(ObjectIdentifier, any Channel)] in
                state.draining = true
                return state.channels.filter { !asked.contains($0.key) }.map { ($0.key, $0.value) }
            }
            if open.isEmpty { break }
            for (id, channel) in open {
                asked.insert(id)
                channel.pipeline.fireUserInboundEventTriggered(APIConnectionHandler.Drain())
            }
            for (_, channel) in open {
                try? await channel.closeFuture.get()
            }
        }
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let done = state.withLockedValue { state -> Bool in
                if state.tasks == 0 { return true }
                state.idle.append(continuation)
                return false
            }
            if done { continuation.resume() }
        }
    }
}
