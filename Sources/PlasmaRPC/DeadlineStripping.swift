import GRPCCore
import GRPCNIOTransportHTTP2

/// The server's transport with each request's `grpc-timeout` removed before gRPC's server
/// executor sees it.
///
/// Why: the executor enforces a client's deadline with one `Task.sleep` per RPC, cancelled when
/// the call ends, and a cancelled `Task.sleep` keeps its memory until the deadline would have
/// passed (swiftlang/swift#60441, open). So every call held about 1.8 KB for as long as its
/// client's deadline: Python clients polling GetVm with 60 s deadlines made the server grow from
/// 38 to 79 MB in a minute (scripts/bench/grpc.sh), and a client with hour-long deadlines could
/// grow it without bound. Nothing is lost: every gRPC client enforces its own deadline and
/// resets the stream when it passes (DEADLINE_EXCEEDED on its side), and the reset cancels the
/// handler here as before.
struct DeadlineStrippingTransport<Inner: ListeningServerTransport>: ListeningServerTransport {
    typealias Bytes = Inner.Bytes
    let inner: Inner

    init(_ inner: Inner) { self.inner = inner }

    func configure(context: GRPCServerContext) { inner.configure(context: context) }

    func listen(streamHandler: @escaping @Sendable (_ stream: RPCStream<Inbound, Outbound>,
                                                    _ context: ServerContext) async -> Void) async throws {
        try await inner.listen { stream, context in
            let inbound = stream.inbound.map { @Sendable (part: RPCRequestPart<Bytes>) -> RPCRequestPart<Bytes> in
                guard case .metadata(var metadata) = part else { return part }
                metadata.removeAllValues(forKey: "grpc-timeout")
                return .metadata(metadata)
            }
            await streamHandler(RPCStream(descriptor: stream.descriptor, inbound: RPCAsyncSequence(wrapping: inbound),
                                          outbound: stream.outbound), context)
        }
    }

    func beginGracefulShutdown() { inner.beginGracefulShutdown() }

    var listeningAddress: GRPCNIOTransportHTTP2.SocketAddress {
        get async throws { try await inner.listeningAddress }
    }
}
