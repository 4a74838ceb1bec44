import KeelQEMU
import NIOCore
import NIOHTTP1

/// `GET /v1/events` and the events of the API's own jobs.
///
/// | job | events (detail) |
/// |---|---|
/// | define | `defined` (`added`, `updated`) |
/// | undefine | `undefined` |
/// | start | `started` (`booted`), or `restored` (the managed-save image) when it restored one; then `paused` (`start`/`restore`) when left paused |
/// | suspend, resume | `paused`, `resumed` (`user`) |
/// | save, managedsave | `job-progress` while it runs, then `saved` (the image) |
/// | restore | `job-progress` while it runs, then `restored` (the image); then `paused` (`restore`) when left paused |
/// | destroy | `stopped` (`destroyed`) |
/// | shutdown | `shutdown` (`guest`), from the watcher once QEMU is gone |
///
/// Exits nobody asked this daemon for come from `DomainWatcher`: `shutdown` (`guest`),
/// `stopped` (QEMU's reason: `host-qmp-quit`, `host-signal`, `host-ui`) and `crashed`.
extension API {
    /// Streams events as NDJSON until the client goes away or keeld shuts down.
    ///
    /// The subscription is registered before the reply's head is sent, so every event after the
    /// client has read the head reaches it. A client that reads too slowly loses the oldest of
    /// its buffered events (`overflow` lines say how many and where); it never slows a job.
    func events(_ request: APIRequest) throws -> APIResponse {
        let domain: String? = request.query("domain")
        if let domain {
            try DomainStore.validate(name: domain)
        }
        guard let subscription = bus.subscribe(domain: domain) else {
            throw APIError(status: .serviceUnavailable, code: "unavailable", message: "keeld is shutting down")
        }
        let bus = self.bus
        // A client that hangs up while no event comes would otherwise be noticed only at the
        // next write.
        request.channel.closeFuture.whenComplete { _ in bus.unsubscribe(subscription) }
        logger.debug("events subscribed", metadata: ["subscription": "\(subscription.id)", "domain": "\(domain ?? "*")"])
        return APIResponse(
            status: .ok,
            headers: ["content-type": "application/x-ndjson", "cache-control": "no-store"],
            body: .stream { writer in
                defer { bus.unsubscribe(subscription) }
                var reader = subscription.makeReader()
                while let (dropped, event) = await reader.next() {
                    var buffer = ByteBuffer()
                    if dropped > 0 {
                        buffer.writeBytes(DomainEvent.overflow(dropped: dropped).line)
                    }
                    buffer.writeBytes(event.line)
                    try await writer.write(buffer)
                }
            }
        )
    }

    /// The events of a job that left the domain running or paused: `kind`, then `paused` when it
    /// is paused. Also starts following the new QEMU process.
    func startedEvents(_ status: DomainStatus, _ kind: DomainEvent.Kind, detail: String, pausedDetail: String) -> [DomainEvent] {
        watcher.watch(status)
        let name = status.live.name
        var events = [DomainEvent(kind, domain: name, detail: detail)]
        if status.state == .paused {
            events.append(DomainEvent(.paused, domain: name, detail: pausedDetail))
        }
        return events
    }
}
