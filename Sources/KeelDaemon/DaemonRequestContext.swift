import Hummingbird
import NIOCore

/// The request context: Hummingbird's core storage plus the connection, whose peer credentials
/// decide who may use the API.
struct DaemonRequestContext: RequestContext {
    var coreContext: CoreRequestContextStorage
    let channel: any Channel

    init(source: ApplicationRequestContextSource) {
        coreContext = CoreRequestContextStorage(source: source)
        channel = source.channel
    }
}
