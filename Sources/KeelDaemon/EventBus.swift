import NIOConcurrencyHelpers

/// Hands every published event to the subscribers that want it, without ever waiting for one.
///
/// Each subscriber has a bounded buffer (`bufferLimit` events). When a subscriber does not
/// keep up, the oldest buffered events are dropped: publishing never blocks a job, and a slow
/// client costs at most its buffer. Events are numbered per subscriber, so the reader of a
/// subscription sees exactly where events went missing and how many (`Subscription.next`
/// returns the gap before each event, written as an `overflow` line).
final class EventBus: Sendable {
    /// One subscriber's view: its events in order, with the number lost before each.
    struct Subscription: Sendable {
        let id: Int
        fileprivate let events: AsyncStream<(sequence: Int, event: DomainEvent)>
    }

    private struct Subscriber {
        var domain: String?
        var continuation: AsyncStream<(sequence: Int, event: DomainEvent)>.Continuation
        /// Events matched so far; the next one gets this number.
        var sequence = 0
    }

    private struct State {
        var subscribers: [Int: Subscriber] = [:]
        var nextID = 0
        var closed = false
        var published = 0
        var dropped = 0
    }

    let bufferLimit: Int
    private let state = NIOLockedValueBox(State())

    init(bufferLimit: Int = 1024) {
        self.bufferLimit = max(1, bufferLimit)
    }

    /// Subscribes to the events of one domain, or of all when `domain` is nil.
    ///
    /// - Returns: nil once the bus is closed (the daemon is shutting down).
    func subscribe(domain: String?) -> Subscription? {
        let (stream, continuation) = AsyncStream.makeStream(
            of: (sequence: Int, event: DomainEvent).self, bufferingPolicy: .bufferingNewest(bufferLimit)
        )
        let id: Int? = state.withLockedValue { state in
            guard !state.closed else { return nil }
            let id = state.nextID
            state.nextID += 1
            state.subscribers[id] = Subscriber(domain: domain, continuation: continuation)
            return id
        }
        guard let id else {
            continuation.finish()
            return nil
        }
        return Subscription(id: id, events: stream)
    }

    /// Ends a subscription; its reader sees the end of its events.
    func unsubscribe(_ subscription: Subscription) {
        let subscriber = state.withLockedValue { $0.subscribers.removeValue(forKey: subscription.id) }
        subscriber?.continuation.finish()
    }

    /// Hands `event` to every subscriber of its domain and of all domains.
    func publish(_ event: DomainEvent) {
        state.withLockedValue { state in
            state.published += 1
            for (id, var subscriber) in state.subscribers where subscriber.domain == nil || subscriber.domain == event.domain {
                let sequence = subscriber.sequence
                subscriber.sequence += 1
                state.subscribers[id] = subscriber
                // Never blocks: a full buffer drops its oldest event.
                if case .dropped = subscriber.continuation.yield((sequence, event)) {
                    state.dropped += 1
                }
            }
        }
    }

    /// Ends every subscription and refuses new ones (graceful shutdown).
    func close() {
        let subscribers = state.withLockedValue { state in
            state.closed = true
            defer { state.subscribers = [:] }
            return Array(state.subscribers.values)
        }
        for subscriber in subscribers { subscriber.continuation.finish() }
    }

    var subscriberCount: Int { state.withLockedValue { $0.subscribers.count } }

    /// Events published and events dropped for slow subscribers, since start.
    var counts: (published: Int, dropped: Int) { state.withLockedValue { ($0.published, $0.dropped) } }
}

extension EventBus.Subscription {
    /// Reads a subscription: each event with the number of events lost just before it.
    struct Reader {
        fileprivate var iterator: AsyncStream<(sequence: Int, event: DomainEvent)>.Iterator
        private var expected = 0

        fileprivate init(_ iterator: AsyncStream<(sequence: Int, event: DomainEvent)>.Iterator) {
            self.iterator = iterator
        }

        /// The next event and how many were dropped before it; nil once the subscription ended.
        mutating func next() async -> (dropped: Int, event: DomainEvent)? {
            guard let (sequence, event) = await iterator.next() else { return nil }
            defer { expected = sequence + 1 }
            return (sequence - expected, event)
        }
    }

    func makeReader() -> Reader { Reader(events.makeAsyncIterator()) }
}
