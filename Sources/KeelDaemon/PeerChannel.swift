import Glibc
import KeelMigration
import KeelQEMU
import NIOCore
import NIOPosix
import NIOSSL
import NIOTLS

/// Where a peer `keeld` listens: `tls://HOST:PORT` (mutual TLS) or `tcp://HOST:PORT`
/// (plaintext, only with `--insecure`).
public struct PeerEndpoint: Sendable, Hashable, CustomStringConvertible {
    public enum Scheme: String, Sendable {
        case tls, tcp
    }

    public var scheme: Scheme
    public var host: String
    public var port: Int

    /// Parses `tls://HOST:PORT` or `tcp://HOST:PORT` (`[ADDR]` for IPv6).
    ///
    /// - Throws: `QEMUError` `.invalidArgument` naming what is wrong.
    public init(parsing text: String) throws {
        guard let range = text.firstRange(of: "://"), let scheme = Scheme(rawValue: String(text[..<range.lowerBound])) else {
            throw QEMUError(.invalidArgument, "'\(text)' is not a peer address: use tls://HOST:PORT or tcp://HOST:PORT")
        }
        var rest = Substring(text[range.upperBound...])
        if rest.hasSuffix("/") { rest = rest.dropLast() }
        let host: Substring
        let portText: Substring
        if rest.hasPrefix("["), let close = rest.firstIndex(of: "]") {
            host = rest[rest.index(after: rest.startIndex)..<close]
            portText = rest[rest.index(after: close)...].drop { $0 == ":" }
        } else if let colon = rest.lastIndex(of: ":") {
            host = rest[..<colon]
            portText = rest[rest.index(after: colon)...]
        } else {
            throw QEMUError(.invalidArgument, "'\(text)' has no port: use \(scheme.rawValue)://HOST:PORT")
        }
        guard !host.isEmpty, let port = Int(portText), (1...65535).contains(port) else {
            throw QEMUError(.invalidArgument, "'\(text)' is not a peer address: use \(scheme.rawValue)://HOST:PORT with a port from 1 to 65535")
        }
        self.scheme = scheme
        self.host = String(host)
        self.port = port
    }

    public var description: String {
        "\(scheme.rawValue)://\(host.contains(":") ? "[\(host)]" : host):\(port)"
    }
}

/// The TLS identity of a `keeld` among its peers, from a directory holding `ca.pem` (the
/// fleet's CA), `cert.pem` (this host's certificate, signed by the CA) and `key.pem`.
///
/// Both directions are mutual: a peer's certificate must chain to the CA, whichever side
/// connects. Host names are not checked: membership of the fleet is the CA's signature.
public struct PeerTLS: Sendable {
    let server: NIOSSLContext
    let client: NIOSSLContext
    /// The directory the identity was read from (QEMU's TLS for the stream reads it too).
    let directory: String

    /// - Throws: `QEMUError` naming the file that is missing or unusable.
    public init(directory: String) throws {
        self.directory = directory
        func certificates(_ file: String) throws -> [NIOSSLCertificate] {
            let path = directory + "/" + file
            do {
                let certificates = try NIOSSLCertificate.fromPEMFile(path)
                guard !certificates.isEmpty else { throw QEMUError(.invalidArgument, "\(path) holds no certificate") }
                return certificates
            } catch let error as QEMUError {
                throw error
            } catch {
                throw QEMUError(.invalidArgument, "cannot read \(path): \(error)")
            }
        }
        let ca = try certificates("ca.pem")
        let chain = try certificates("cert.pem")
        let key: NIOSSLPrivateKey
        do {
            key = try NIOSSLPrivateKey(file: directory + "/key.pem", format: .pem)
        } catch {
            throw QEMUError(.invalidArgument, "cannot read \(directory)/key.pem: \(error)")
        }
        var server = TLSConfiguration.makeServerConfiguration(certificateChain: chain.map { .certificate($0) }, privateKey: .privateKey(key))
        server.trustRoots = .certificates(ca)
        server.certificateVerification = .noHostnameVerification
        server.minimumTLSVersion = .tlsv12
        var client = TLSConfiguration.makeClientConfiguration()
        client.certificateChain = chain.map { .certificate($0) }
        client.privateKey = .privateKey(key)
        client.trustRoots = .certificates(ca)
        client.certificateVerification = .noHostnameVerification
        client.minimumTLSVersion = .tlsv12
        do {
            self.server = try NIOSSLContext(configuration: server)
            self.client = try NIOSSLContext(configuration: client)
        } catch {
            throw QEMUError(.invalidArgument, "the TLS files in \(directory) do not fit together: \(error)")
        }
    }
}

/// A channel to a peer: raw bytes in and out; frames are `MigrationFrame`s.
typealias PeerConnection = NIOAsyncChannel<ByteBuffer, ByteBuffer>

enum PeerChannel {
    /// TCP keepalive on every peer channel: a peer behind a cut link is lost after about
    /// idle + interval × count seconds, even while neither side has anything to say (the
    /// destination waiting for `finish` while the stream runs).
    static let keepalive = (idle: 5, interval: 2, count: 3)

    /// `TCP_USER_TIMEOUT` in milliseconds: keepalive probes only an idle channel, so a frame
    /// written into a cut link (`prepare`, `prepare-reply`) would be retransmitted for many
    /// minutes; with this bound unacknowledged data also loses the peer after the keepalive's
    /// time.
    static let userTimeout = (keepalive.idle + keepalive.interval * keepalive.count) * 1000

    /// Connects to a peer and completes the TLS handshake (for `tls://`) before returning, so
    /// that a refused certificate is reported as such, before any migration state moves.
    ///
    /// - Throws: `QEMUError` `.io` naming the peer and why.
    static func connect(to endpoint: PeerEndpoint, tls: PeerTLS?, timeout: Duration = .seconds(10)) async throws -> PeerConnection {
        if endpoint.scheme == .tls && tls == nil {
            throw QEMUError(.invalidArgument, "cannot reach \(endpoint): this keeld has no TLS identity (start it with --tls-dir DIR)")
        }
        let context = endpoint.scheme == .tls ? tls?.client : nil
        do {
            let (connection, handshake) = try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
                .connectTimeout(.seconds(timeout.components.seconds))
                .channelOption(.socketOption(.so_keepalive), value: 1)
                .channelOption(.tcpOption(.init(rawValue: TCP_KEEPIDLE)), value: keepalive.idle)
                .channelOption(.tcpOption(.init(rawValue: TCP_KEEPINTVL)), value: keepalive.interval)
                .channelOption(.tcpOption(.init(rawValue: TCP_KEEPCNT)), value: keepalive.count)
                .channelOption(.tcpOption(.init(rawValue: TCP_USER_TIMEOUT)), value: userTimeout)
                .connect(host: endpoint.host, port: endpoint.port) { channel in
                    channel.eventLoop.makeCompletedFuture {
                        let promise = channel.eventLoop.makePromise(of: Void.self)
                        if let context {
                            try channel.pipeline.syncOperations.addHandler(NIOSSLClientHandler(context: context, serverHostname: nil))
                            try channel.pipeline.syncOperations.addHandler(HandshakeWaiter(promise: promise))
                        } else {
                            promise.succeed()
                        }
                        let wrapped = try PeerConnection(wrappingChannelSynchronously: channel)
                        return (wrapped, promise.futureResult)
                    }
                }
            do {
                try await handshake.get()
            } catch {
                try? await connection.channel.close()
                throw QEMUError(.io, "the TLS handshake with \(endpoint) failed: \(error)")
            }
            return connection
        } catch let error as QEMUError {
            throw error
        } catch {
            throw QEMUError(.io, "cannot reach \(endpoint): \(error)")
        }
    }

    /// Binds the listener for peers.
    static func listen(on endpoint: PeerEndpoint, tls: PeerTLS?) async throws -> NIOAsyncChannel<PeerConnection, Never> {
        let context = endpoint.scheme == .tls ? tls?.server : nil
        return try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelOption(.socketOption(.so_keepalive), value: 1)
            .childChannelOption(.tcpOption(.init(rawValue: TCP_KEEPIDLE)), value: keepalive.idle)
            .childChannelOption(.tcpOption(.init(rawValue: TCP_KEEPINTVL)), value: keepalive.interval)
            .childChannelOption(.tcpOption(.init(rawValue: TCP_KEEPCNT)), value: keepalive.count)
            .childChannelOption(.tcpOption(.init(rawValue: TCP_USER_TIMEOUT)), value: userTimeout)
            .bind(host: endpoint.host, port: endpoint.port) { channel in
                channel.eventLoop.makeCompletedFuture {
                    if let context {
                        try channel.pipeline.syncOperations.addHandler(NIOSSLServerHandler(context: context))
                    }
                    return try PeerConnection(wrappingChannelSynchronously: channel)
                }
            }
    }

    static func frame(_ message: MigrationMessage) throws -> ByteBuffer {
        ByteBuffer(bytes: try MigrationFrame.encode(message))
    }
}

/// Completes a promise when the TLS handshake succeeds, fails it on an error or close.
private final class HandshakeWaiter: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = ByteBuffer

    private let promise: EventLoopPromise<Void>
    private var done = false

    init(promise: EventLoopPromise<Void>) {
        self.promise = promise
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if let event = event as? TLSUserEvent, case .handshakeCompleted = event, !done {
            done = true
            promise.succeed()
        }
        context.fireUserInboundEventTriggered(event)
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        if !done {
            done = true
            promise.fail(error)
        }
        context.fireErrorCaught(error)
    }

    func channelInactive(context: ChannelHandlerContext) {
        if !done {
            done = true
            promise.fail(ChannelError.eof)
        }
        context.fireChannelInactive()
    }

    /// A connection that never came up (refused) closes without `channelInactive`.
    func handlerRemoved(context: ChannelHandlerContext) {
        if !done {
            done = true
            promise.fail(ChannelError.ioOnClosedChannel)
        }
    }
}
