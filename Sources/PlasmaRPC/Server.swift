import CPlasmaSys
import Foundation
import GRPCCore
import GRPCNIOTransportHTTP2
import PlasmaVMM
import Synchronization

/// What `plasmavmc serve` was asked for, checked before anything listens.
public struct ServeOptions: Sendable {
    public var listen: [HostAddress]
    public var tlsCert: String?
    public var tlsKey: String?
    public var tlsClientCA: String?
    /// Largest request message accepted.
    public var maxRequestBytes = 1 << 20
    /// How long in-flight calls may take to finish after SIGTERM/SIGINT before they are cancelled.
    public var shutdownGrace: Duration = .seconds(10)

    public init(listen: [HostAddress], tlsCert: String? = nil, tlsKey: String? = nil, tlsClientCA: String? = nil) {
        self.listen = listen
        self.tlsCert = tlsCert
        self.tlsKey = tlsKey
        self.tlsClientCA = tlsClientCA
    }

    public var usesTLS: Bool { tlsCert != nil }

    /// The security rules: TLS needs a certificate and its key; client certificates need TLS;
    /// plaintext TCP only on loopback; TLS is for TCP (a unix socket is guarded by its mode).
    public func validate() throws {
        func bad(_ m: String) -> PlasmaError { PlasmaError(.invalidArgument, m) }
        guard !listen.isEmpty else { throw bad("serve: nothing to listen on") }
        if (tlsCert == nil) != (tlsKey == nil) {
            throw bad("serve: --tls-cert and --tls-key go together (the certificate and its private key)")
        }
        if tlsClientCA != nil && tlsCert == nil {
            throw bad("serve: --tls-client-ca needs --tls-cert and --tls-key (client certificates are checked over TLS)")
        }
        for file in [tlsCert, tlsKey, tlsClientCA].compactMap({ $0 }) where !FileManager.default.isReadableFile(atPath: file) {
            throw bad("serve: cannot read \(file)")
        }
        var seen = Set<HostAddress>()
        for a in listen {
            guard seen.insert(a).inserted else { throw bad("serve: \(a) is given twice") }
            if case .tcp = a, !a.isLoopback, !usesTLS {
                throw bad("serve: refusing plaintext on \(a): anyone who can reach it could run VMs as you. Listen on loopback (tcp:127.0.0.1:PORT), on a unix socket, or give --tls-cert and --tls-key (and --tls-client-ca to require client certificates)")
            }
        }
    }
}

/// One `plasmavmc serve`: a gRPC server per listen address, all serving one VmService.
public final class PlasmaServer: Sendable {
    let service: VmService
    let options: ServeOptions
    private let servers = Mutex<[GRPCServer<Transport>]>([])
    /// HTTP/2 over POSIX sockets, without the clients' grpc-timeout (see DeadlineStrippingTransport).
    typealias Transport = DeadlineStrippingTransport<HTTP2ServerTransport.Posix>
    private let unixSockets = Mutex<[(path: String, device: UInt64, inode: UInt64)]>([])

    public init(manager: VMManager, options: ServeOptions) {
        self.service = VmService(manager: manager)
        self.options = options
    }

    /// Listens on every address and calls `ready` with the addresses actually bound (a TCP port
    /// 0 replaced by the port given), then serves until `shutdown()`; returns when every
    /// server has stopped.
    /// - Throws: `invalidArgument` for options that break the rules, `alreadyExists` when
    ///   another server answers on a unix socket path, `unavailable` when an address cannot be bound.
    public func run(ready: @escaping @Sendable ([HostAddress]) -> Void) async throws {
        try options.validate()
        let security = try transportSecurity()
        var made: [GRPCServer<Transport>] = []
        defer { removeUnixSockets() }
        let config = HTTP2ServerTransport.Posix.Config.defaults { c in
            c.rpc.maxRequestPayloadSize = options.maxRequestBytes
        }
        for address in options.listen {
            let transport: HTTP2ServerTransport.Posix
            switch address {
            case .unix(let path):
                let fd = try listenUnix(path)
                // TLS is for TCP: a unix socket is guarded by its mode (0600) and folder.
                transport = HTTP2ServerTransport.Posix(listeningSocketDescriptor: Int(fd), transportSecurity: .plaintext, config: config)
            case .tcp(let host, let port):
                let ip = host == "localhost" ? "127.0.0.1" : host
                let bind: GRPCNIOTransportHTTP2.SocketAddress
                if ip.contains(":") {
                    bind = .ipv6(host: ip, port: port)
                } else if ip.split(separator: ".").count == 4, ip.split(separator: ".").allSatisfy({ UInt8($0) != nil }) {
                    bind = .ipv4(host: ip, port: port)
                } else {
                    throw PlasmaError(.invalidArgument, "serve: listen on an IP address (or localhost), got \(address)")
                }
                transport = HTTP2ServerTransport.Posix(address: bind, transportSecurity: security, config: config)
            }
            made.append(GRPCServer(transport: DeadlineStrippingTransport(transport), services: [service]))
        }
        servers.withLock { $0 = made }
        try await withThrowingTaskGroup(of: Void.self) { group in
            for server in made {
                group.addTask { try await server.serve() }
            }
            var bound: [HostAddress] = []
            for (server, address) in zip(made, options.listen) {
                guard let actual = try await server.listeningAddress else {
                    throw PlasmaError(.unavailable, "serve: could not listen on \(address)")
                }
                if let ip = actual.ipv4 {
                    bound.append(.tcp(host: ip.host, port: ip.port))
                } else if let ip = actual.ipv6 {
                    bound.append(.tcp(host: ip.host, port: ip.port))
                } else {
                    bound.append(address)
                }
            }
            ready(bound)
            do {
                try await group.waitForAll()
            } catch {
                for s in made { s.beginGracefulShutdown() }
                throw error
            }
        }
    }

    /// Stops accepting, ends every stream (watches and followed console reads end normally)
    /// and lets unary calls finish; `run` returns once they have.
    public func shutdown() {
        service.shutdown.end()
        for s in servers.withLock({ $0 }) { s.beginGracefulShutdown() }
    }

    private func transportSecurity() throws -> HTTP2ServerTransport.Posix.TransportSecurity {
        guard let cert = options.tlsCert, let key = options.tlsKey else { return .plaintext }
        let chain: [TLSConfig.CertificateSource] = [.file(path: cert, format: .pem)]
        let privateKey: TLSConfig.PrivateKeySource = .file(path: key, format: .pem)
        if let ca = options.tlsClientCA {
            return .mTLS(certificateChain: chain, privateKey: privateKey) { c in
                c.trustRoots = .certificates([.file(path: ca, format: .pem)])
                c.clientCertificateVerification = .noHostnameVerification
            }
        }
        return .tls(certificateChain: chain, privateKey: privateKey)
    }

    /// A listening unix socket at `path`, mode 0600. A live server there is an error (it keeps
    /// serving); a stale socket file left by a killed server is replaced; anything else at the
    /// path is left alone and reported.
    private func listenUnix(_ path: String) throws -> Int32 {
        var st = stat()
        if lstat(path, &st) == 0 {
            guard (st.st_mode & S_IFMT) == S_IFSOCK else {
                throw PlasmaError(.alreadyExists, "serve: \(path) exists and is not a socket; remove it or listen elsewhere")
            }
            let probe = path.withCString { plasma_unix_connect_timeout($0, 1000) }
            if probe >= 0 {
                close(probe)
                throw PlasmaError(.alreadyExists, "serve: another server is already listening on unix:\(path); stop it first, or listen elsewhere")
            }
            guard st.st_uid == geteuid() else {
                throw PlasmaError(.unavailable, "serve: \(path) is a stale socket of another user (uid \(st.st_uid)); remove it or listen elsewhere")
            }
            unlink(path)
        }
        let old = umask(0o177)
        let fd = path.withCString { plasma_unix_listen($0, 128) }
        umask(old)
        guard fd >= 0 else {
            throw PlasmaError(.unavailable, "serve: cannot listen on unix:\(path)", cause: String(cString: strerror(-fd)))
        }
        if lstat(path, &st) == 0 {
            unixSockets.withLock { $0.append((path, UInt64(st.st_dev), UInt64(st.st_ino))) }
        }
        return fd
    }

    /// Removes the socket files this server made, unless another server has replaced them.
    private func removeUnixSockets() {
        for s in unixSockets.withLock({ $0 }) {
            var st = stat()
            if lstat(s.path, &st) == 0, UInt64(st.st_dev) == s.device, UInt64(st.st_ino) == s.inode {
                unlink(s.path)
            }
        }
    }
}

/// Set once when the server shuts down; streaming handlers poll it and end their streams.
final class ShutdownFlag: Sendable {
    private let ended = Atomic<Bool>(false)
    func end() { ended.store(true, ordering: .releasing) }
    var isEnded: Bool { ended.load(ordering: .acquiring) }
}
