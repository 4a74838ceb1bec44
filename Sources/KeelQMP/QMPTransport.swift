import Dispatch
#if canImport(Glibc)
import Glibc
#endif

extension QMP {
    /// The QMP state machine on a connected socket: a dedicated reader thread feeds
    /// ``QMP/Connection``; callers wait on continuations that are always resumed exactly once
    /// (reply, QEMU error, deadline, cancellation, or disconnect, whichever comes first).
    final class Transport: Sendable {
        /// A caller waiting for the reply to one command.
        private struct Waiter {
            let continuation: CheckedContinuation<Value, any Swift.Error>
            let timer: DispatchWorkItem
        }

        private struct State {
            var connection = Connection()
            var framer = LineFramer()
            var waiters: [UInt64: Waiter] = [:]
            /// Commands whose task was cancelled before its waiter was registered.
            var cancelledEarly: Set<UInt64> = []
            var negotiationWaiter: CheckedContinuation<Greeting, any Swift.Error>?
            var negotiationTimer: DispatchWorkItem?
            var negotiationCancelled = false
            var greeting: Greeting?
            /// Why the connection ended; nil while it is usable.
            var failure: QMP.Error?
            var readerDone = false
            var readerDoneWaiter: CheckedContinuation<Void, Never>?
            var shutDown = false
        }

        /// Work to do once the lock is released.
        private enum Effect {
            case resume(CheckedContinuation<Value, any Swift.Error>, Result<Value, any Swift.Error>)
            case resumeNegotiation(CheckedContinuation<Greeting, any Swift.Error>, Result<Greeting, any Swift.Error>)
            case event(Event)
            case finishEvents
            case send([UInt8])
        }

        private let fd: Int32
        private let state = LockedState(State())
        /// Serializes writers so two commands never interleave on the socket.
        private let sendLock = LockedState(())
        let events: AsyncStream<Event>
        private let eventSink: AsyncStream<Event>.Continuation

        /// Takes ownership of the connected descriptor `fd`.
        init(fd: Int32, eventBufferLimit: Int = 4096) {
            self.fd = fd
            (events, eventSink) = AsyncStream.makeStream(of: Event.self, bufferingPolicy: .bufferingNewest(eventBufferLimit))
        }

        /// Starts the reader thread. Call once; ``shutdown()`` waits for the thread to end.
        func start() {
            // A thread of its own that blocks in recv(); shutdown() wakes it. Not a Dispatch
            // queue: blocked readers would use up Dispatch's small worker pool (one per core)
            // and starve the deadline timers of every other connection.
            ReaderThread.start { [self] in readLoop() }
        }

        var isConnected: Bool {
            state.withLock { $0.failure == nil }
        }

        // MARK: negotiation

        /// Waits until QEMU's greeting arrived and `qmp_capabilities` succeeded.
        func negotiate(deadline: ContinuousClock.Instant) async throws -> Greeting {
            try await withTaskCancellationHandler {
                try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Greeting, any Swift.Error>) in
                    let early: Result<Greeting, any Swift.Error>? = state.withLock { state in
                        if let failure = state.failure { return .failure(failure) }
                        if state.negotiationCancelled { return .failure(CancellationError()) }
                        if state.connection.state == .ready, let greeting = state.greeting { return .success(greeting) }
                        let timer = DispatchWorkItem { [weak self] in self?.expireNegotiation() }
                        state.negotiationWaiter = continuation
                        state.negotiationTimer = timer
                        let remaining = ContinuousClock.now.duration(to: deadline)
                        DispatchQueue.global().asyncAfter(deadline: .now() + remaining.dispatchInterval, execute: timer)
                        return nil
                    }
                    if let early { continuation.resume(with: early) }
                }
            } onCancel: {
                let waiter: CheckedContinuation<Greeting, any Swift.Error>? = state.withLock { state in
                    state.negotiationCancelled = true
                    state.negotiationTimer?.cancel()
                    defer { state.negotiationWaiter = nil }
                    return state.negotiationWaiter
                }
                waiter?.resume(throwing: CancellationError())
            }
        }

        private func expireNegotiation() {
            let waiter: CheckedContinuation<Greeting, any Swift.Error>? = state.withLock { state in
                defer { state.negotiationWaiter = nil }
                return state.negotiationWaiter
            }
            waiter?.resume(throwing: QMP.Error.timeout)
        }

        // MARK: commands

        /// Sends a command (with `fds` as SCM_RIGHTS on the same `sendmsg`) and waits for its reply.
        func execute(_ command: String, arguments: [String: Value]?, fileDescriptors fds: [Int32], deadline: Duration) async throws -> Value {
            let (id, bytes) = try state.withLock { state throws(QMP.Error) in
                if let failure = state.failure { throw failure }
                return try state.connection.execute(command, arguments: arguments)
            }
            let limit = ContinuousClock.now + deadline
            return try await withTaskCancellationHandler {
                try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Value, any Swift.Error>) in
                    let early: (any Swift.Error)? = state.withLock { state in
                        if state.cancelledEarly.remove(id) != nil {
                            state.connection.abandon(id)
                            return CancellationError()
                        }
                        guard state.connection.isPending(id) else {
                            return state.failure ?? QMP.Error.disconnected
                        }
                        let timer = DispatchWorkItem { [weak self] in self?.finish(id, with: QMP.Error.timeout) }
                        state.waiters[id] = Waiter(continuation: continuation, timer: timer)
                        DispatchQueue.global().asyncAfter(deadline: .now() + deadline.dispatchInterval, execute: timer)
                        return nil
                    }
                    if let early {
                        continuation.resume(throwing: early)
                        return
                    }
                    do {
                        try send(bytes, fileDescriptors: fds, deadline: limit)
                    } catch {
                        finish(id, with: error)
                    }
                }
            } onCancel: {
                let waiting = state.withLock { state in
                    if state.waiters[id] == nil, state.connection.isPending(id) {
                        state.cancelledEarly.insert(id)
                        return false
                    }
                    return true
                }
                if waiting { finish(id, with: CancellationError()) }
            }
        }

        /// Resumes the waiter of command `id` with `error`, if it is still waiting.
        private func finish(_ id: UInt64, with error: any Swift.Error) {
            let waiter: Waiter? = state.withLock { state in
                guard let waiter = state.waiters.removeValue(forKey: id) else { return nil }
                state.connection.abandon(id)
                return waiter
            }
            guard let waiter else { return }
            waiter.timer.cancel()
            waiter.continuation.resume(throwing: error)
        }

        private func send(_ bytes: [UInt8], fileDescriptors fds: [Int32], deadline: ContinuousClock.Instant) throws(QMP.Error) {
            try sendLock.withLock { _ throws(QMP.Error) in
                try UnixSocket.send(bytes, fileDescriptors: fds, on: fd, deadline: deadline)
            }
        }

        // MARK: reading

        private func readLoop() {
            let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 64 << 10, alignment: 1)
            defer { buffer.deallocate() }
            while true {
                let count = UnixSocket.receive(buffer, on: fd)
                guard count > 0 else { break }
                let bytes = UnsafeRawBufferPointer(rebasing: buffer[0..<count])
                let (effects, keepReading) = state.withLock { state in
                    Transport.handle(bytes, state: &state)
                }
                perform(effects)
                if !keepReading { break }
            }
            let (effects, doneWaiter) = state.withLock { state in
                let effects = Transport.fail(with: .disconnected, state: &state)
                state.readerDone = true
                defer { state.readerDoneWaiter = nil }
                return (effects, state.readerDoneWaiter)
            }
            perform(effects)
            doneWaiter?.resume()
        }

        private static func handle(_ bytes: UnsafeRawBufferPointer, state: inout State) -> ([Effect], Bool) {
            guard state.failure == nil else { return ([], false) }
            let lines: [[UInt8]]
            do {
                lines = try state.framer.append(bytes)
            } catch {
                _ = state.connection.close()
                return (fail(with: error, state: &state), false)
            }
            var effects: [Effect] = []
            for line in lines {
                guard let action = state.connection.receive(line: line) else { continue }
                switch action {
                case .send(let bytes):
                    effects.append(.send(bytes))
                case .ready(let greeting):
                    state.greeting = greeting
                    state.negotiationTimer?.cancel()
                    if let waiter = state.negotiationWaiter {
                        state.negotiationWaiter = nil
                        effects.append(.resumeNegotiation(waiter, .success(greeting)))
                    }
                case .reply(let id, let result):
                    if let waiter = state.waiters.removeValue(forKey: id) {
                        waiter.timer.cancel()
                        effects.append(.resume(waiter.continuation, result.mapError { $0 }))
                    }
                case .event(let event):
                    effects.append(.event(event))
                case .close(let error, _):
                    effects += fail(with: error, state: &state)
                    return (effects, false)
                }
            }
            return (effects, true)
        }

        /// Marks the connection failed and collects the resumption of everyone waiting.
        private static func fail(with error: QMP.Error, state: inout State) -> [Effect] {
            guard state.failure == nil else { return [] }
            state.failure = error
            _ = state.connection.close()
            var effects: [Effect] = []
            for (_, waiter) in state.waiters.sorted(by: { $0.key < $1.key }) {
                waiter.timer.cancel()
                effects.append(.resume(waiter.continuation, .failure(error)))
            }
            state.waiters.removeAll()
            state.cancelledEarly.removeAll()
            state.negotiationTimer?.cancel()
            if let waiter = state.negotiationWaiter {
                state.negotiationWaiter = nil
                effects.append(.resumeNegotiation(waiter, .failure(error)))
            }
            effects.append(.finishEvents)
            return effects
        }

        private func perform(_ effects: [Effect]) {
            for effect in effects {
                switch effect {
                case .resume(let continuation, let result):
                    continuation.resume(with: result)
                case .resumeNegotiation(let continuation, let result):
                    continuation.resume(with: result)
                case .event(let event):
                    eventSink.yield(event)
                case .finishEvents:
                    eventSink.finish()
                case .send(let bytes):
                    // A failed write shows up as end of stream on the reader a moment later.
                    try? send(bytes, fileDescriptors: [], deadline: .now + .seconds(10))
                }
            }
        }

        // MARK: shutdown

        /// Fails everything still waiting with `.disconnected`, stops the reader and closes the
        /// socket. Idempotent.
        func shutdown() async {
            let effects: [Effect]? = state.withLock { state in
                guard !state.shutDown else { return nil }
                state.shutDown = true
                return Transport.fail(with: .disconnected, state: &state)
            }
            guard let effects else { return }
            perform(effects)
            UnixSocket.wake(fd)
            await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
                let done = state.withLock { state in
                    if state.readerDone { return true }
                    state.readerDoneWaiter = continuation
                    return false
                }
                if done { continuation.resume() }
            }
            UnixSocket.release(fd)
        }
    }
}

/// Starts a detached POSIX thread (Foundation's Thread would pull Foundation into every process
/// that talks QMP).
enum ReaderThread {
    final class Body: Sendable {
        let run: @Sendable () -> Void
        init(_ run: @escaping @Sendable () -> Void) { self.run = run }
    }

    static func start(_ run: @escaping @Sendable () -> Void) {
        let body = Unmanaged.passRetained(Body(run)).toOpaque()
        var thread = pthread_t()
        let started = pthread_create(&thread, nil, { argument in
            guard let argument else { return nil }
            Unmanaged<Body>.fromOpaque(argument).takeRetainedValue().run()
            return nil
        }, body)
        if started == 0 {
            pthread_detach(thread)
        } else {
            // No thread: run inline on a Dispatch worker rather than not at all.
            let owned = Unmanaged<Body>.fromOpaque(body).takeRetainedValue()
            DispatchQueue.global().async { owned.run() }
        }
    }
}
