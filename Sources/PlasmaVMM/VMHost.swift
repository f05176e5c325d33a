import Foundation

/// One entry of `VMHost.list`: a VM and its status, or the error that kept it from being known.
public typealias VMListEntry = (name: VMName, status: Result<VMStatus, PlasmaError>)

/// The operations every front end (the Lua session, the REPL, the CLI) drives VMs with. The
/// local `VMManager` is one implementation; a gRPC client of `plasmavmc serve` (PlasmaRPC's
/// `RemoteHost`) is the other, so a plan, the CLI and the REPL work the same on this machine
/// and on another host. Every method throws `PlasmaError`; the messages are the CLI's.
public protocol VMHost: Sendable {
    /// Where the VMs live, for messages: "local", or the address a client connected to.
    var address: String { get }
    /// True when the VMs' processes are on this machine (pids may be signalled here).
    var isLocal: Bool { get }

    func create(_ spec: VMSpec) async throws -> VMStatus
    func start(_ name: VMName) async throws -> VMStatus
    func status(_ name: VMName) async throws -> VMStatus
    func info(_ name: VMName) async throws -> VMInfo
    func stop(_ name: VMName, timeout: Duration) async throws -> StopOutcome
    func kill(_ name: VMName) async throws
    func pause(_ name: VMName) async throws
    func resume(_ name: VMName) async throws
    func delete(_ name: VMName, force: Bool) async throws
    func list() async throws -> [VMListEntry]
    /// The console output so far, at most the last `maxBytes`.
    func consoleLog(_ name: VMName, maxBytes: Int?) async throws -> String
    /// Console output from byte `offset` on, and where to read next.
    func consoleRead(_ name: VMName, from offset: Int) async throws -> (text: String, next: Int)
    func sendConsole(_ name: VMName, _ text: String) async throws
    /// A connected stream socket to the VM's serial console (read: what the guest prints;
    /// write: typed). The caller closes it.
    func consoleConnection(_ name: VMName) async throws -> Int32
    /// The VM's event log from byte `offset` on (0: all of it), and where to read next.
    func events(_ name: VMName, from offset: Int) async throws -> (events: [VMEvent], next: Int)
    /// A raw QMP command; JSON text in and out.
    func monitorCommand(_ name: VMName, _ command: String, argumentsJSON: String?) async throws -> String
    /// A cheap blocking status source for one VM, or nil (remote hosts have none).
    func statusProbe(_ name: VMName) -> (any VMStatusProbe)?
    /// Releases connections. Calls after it fail.
    func close() async
}

extension VMHost {
    public func stop(_ name: VMName) async throws -> StopOutcome { try await stop(name, timeout: .seconds(30)) }
    public func delete(_ name: VMName) async throws { try await delete(name, force: false) }
    public func consoleLog(_ name: VMName) async throws -> String { try await consoleLog(name, maxBytes: nil) }
}

extension VMManager: VMHost {
    public var address: String { "local" }
    public var isLocal: Bool { true }
    public func close() async {}
}

/// Where a `plasmavmc serve` listens or a client connects: `unix:PATH` or `tcp:HOST:PORT`
/// (`tcp:[::1]:PORT` for IPv6).
public enum HostAddress: Sendable, Hashable, CustomStringConvertible {
    case unix(path: String)
    case tcp(host: String, port: Int)

    public init(parsing text: String) throws {
        func bad(_ why: String) -> PlasmaError {
            PlasmaError(.invalidArgument, "bad address \"\(text)\": \(why); use unix:PATH or tcp:HOST:PORT")
        }
        guard text.utf8.count <= 4096, !text.contains("\0") else { throw bad("too long or contains NUL") }
        if text.hasPrefix("unix:") {
            let path = String(text.dropFirst(5))
            guard !path.isEmpty else { throw bad("empty path") }
            // sun_path holds 107 bytes and a NUL.
            guard path.utf8.count <= 107 else { throw bad("a unix socket path is at most 107 bytes") }
            self = .unix(path: path.hasPrefix("/") ? path : FileManager.default.currentDirectoryPath + "/" + path)
            return
        }
        guard text.hasPrefix("tcp:") else { throw bad("unknown scheme") }
        let rest = text.dropFirst(4)
        guard let colon = rest.lastIndex(of: ":") else { throw bad("no port") }
        var host = String(rest[..<colon])
        let portText = rest[rest.index(after: colon)...]
        if host.hasPrefix("[") && host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }
        guard !host.isEmpty else { throw bad("empty host") }
        guard host.allSatisfy({ $0.isASCII && ($0.isLetter || $0.isNumber || ".-:_".contains($0)) }) else {
            throw bad("host has characters a host name or IP address cannot have")
        }
        guard portText.count <= 5, !portText.isEmpty, portText.allSatisfy(\.isASCII), portText.allSatisfy(\.isNumber),
              let port = Int(portText), port <= 65535 else {
            throw bad("port must be a whole number from 0 to 65535")
        }
        self = .tcp(host: host, port: port)
    }

    /// True for unix sockets and TCP on a loopback address (127.0.0.0/8, ::1, localhost).
    public var isLoopback: Bool {
        switch self {
        case .unix: return true
        case .tcp(let host, _):
            if host == "localhost" || host == "::1" { return true }
            let parts = host.split(separator: ".", omittingEmptySubsequences: false)
            return parts.count == 4 && parts[0] == "127" && parts.allSatisfy { UInt8($0) != nil }
        }
    }

    public var description: String {
        switch self {
        case .unix(let path): return "unix:" + path
        case .tcp(let host, let port): return host.contains(":") ? "tcp:[\(host)]:\(port)" : "tcp:\(host):\(port)"
        }
    }
}

/// TLS for a client: the CA that signed the server's certificate, and, for mutual TLS, the
/// client's own certificate and key (PEM files).
public struct HostTLS: Sendable, Hashable {
    public var caFile: String?
    public var certFile: String?
    public var keyFile: String?
    /// The name the server's certificate must carry (default: the address's host).
    public var serverName: String?
    public init(caFile: String? = nil, certFile: String? = nil, keyFile: String? = nil, serverName: String? = nil) {
        self.caFile = caFile
        self.certFile = certFile
        self.keyFile = keyFile
        self.serverName = serverName
    }
}

/// Makes a host handle for an address: the front ends call it for `--host`, `PLASMAVMC_HOST`
/// and Lua's `vm.connect`. The plasmavmc binary passes PlasmaRPC's gRPC client; tests pass fakes.
public typealias HostConnector = @Sendable (_ address: HostAddress, _ tls: HostTLS?) async throws -> any VMHost

extension HostAddress {
    /// Connects through `connector`. Its error names this address (prefixed when the
    /// connector's own message does not), keeps its code, and any other error becomes
    /// `unavailable`; a cancellation stays a `CancellationError`.
    public func connect(with connector: HostConnector, tls: HostTLS?) async throws -> any VMHost {
        do {
            return try await connector(self, tls)
        } catch let e as PlasmaError {
            if e.message.contains(description) { throw e }
            throw PlasmaError(e.code, "cannot connect to \(description): \(e.message)", cause: e.cause)
        } catch is CancellationError {
            throw CancellationError()
        } catch {
            throw PlasmaError(.unavailable, "cannot connect to \(description): \(error)")
        }
    }
}
