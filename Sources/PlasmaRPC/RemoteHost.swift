import CPlasmaSys
import Foundation
import GRPCCore
import GRPCNIOTransportHTTP2
import PlasmaVMM
import Synchronization

/// A `VMHost` on another `plasmavmc serve`: every operation is one call of the VmService, with a
/// deadline, and failures come back as the PlasmaError the server raised (same code, same
/// message). This is what `--host`, `PLASMAVMC_HOST` and Lua's `vm.connect` use.
public final class RemoteHost: VMHost {
    public let address: String
    public var isLocal: Bool { false }
    let client: GRPCClient<HTTP2ClientTransport.Posix>
    let stub: Plasmavmc_V1_VmService.Client<HTTP2ClientTransport.Posix>
    private let runner: Task<Void, Never>
    private let closed = Atomic<Bool>(false)

    /// Deadline of a call that does not wait on the guest.
    public static let callTimeout: Duration = .seconds(30)
    /// Deadline of create and start (a launch waits for QEMU).
    public static let launchTimeout: Duration = .seconds(120)

    /// Connects and checks the server answers (within `timeout`).
    /// - Throws: `unavailable` naming the address when nothing answers there.
    public static func connect(_ address: HostAddress, tls: HostTLS? = nil, timeout: Duration = .seconds(5)) async throws -> RemoteHost {
        let host = try RemoteHost(address, tls: tls)
        do {
            try await host.ping(timeout: timeout)
        } catch {
            await host.close()
            throw error
        }
        return host
    }

    init(_ address: HostAddress, tls: HostTLS?) throws {
        self.address = address.description
        let security: HTTP2ClientTransport.Posix.TransportSecurity
        if let tls {
            if (tls.certFile == nil) != (tls.keyFile == nil) {
                throw PlasmaError(.invalidArgument, "\(address): a client certificate and its key go together")
            }
            for file in [tls.caFile, tls.certFile, tls.keyFile].compactMap({ $0 }) where !FileManager.default.isReadableFile(atPath: file) {
                throw PlasmaError(.invalidArgument, "\(address): cannot read \(file)")
            }
            security = .tls { c in
                if let ca = tls.caFile { c.trustRoots = .certificates([.file(path: ca, format: .pem)]) }
                if let cert = tls.certFile, let key = tls.keyFile {
                    c.certificateChain = [.file(path: cert, format: .pem)]
                    c.privateKey = .file(path: key, format: .pem)
                }
            }
        } else {
            security = .plaintext
        }
        // The name the server's certificate must carry (and the TLS SNI): --tls-server-name,
        // else the address's host.
        let config = HTTP2ClientTransport.Posix.Config.defaults { c in
            if let name = tls?.serverName { c.http2.authority = name }
        }
        let transport: HTTP2ClientTransport.Posix
        do {
            switch address {
            case .unix(let path):
                transport = try HTTP2ClientTransport.Posix(target: .unixDomainSocket(path: path), transportSecurity: security, config: config)
            case .tcp(let host, let port):
                // An IP address is never sent as the TLS server name (SNI forbids it); the
                // certificate is then checked against the address (an IP SAN).
                if host.contains(":") {
                    transport = try HTTP2ClientTransport.Posix(target: .ipv6(address: host, port: port), transportSecurity: security, config: config)
                } else if host.split(separator: ".").count == 4, host.split(separator: ".").allSatisfy({ UInt8($0) != nil }) {
                    transport = try HTTP2ClientTransport.Posix(target: .ipv4(address: host, port: port), transportSecurity: security, config: config)
                } else {
                    transport = try HTTP2ClientTransport.Posix(target: .dns(host: host, port: port), transportSecurity: security, config: config)
                }
            }
        } catch {
            throw PlasmaError(.invalidArgument, "\(address): cannot set up the connection", cause: "\(error)")
        }
        client = GRPCClient(transport: transport)
        stub = Plasmavmc_V1_VmService.Client(wrapping: client)
        let c = client
        runner = Task { try? await c.runConnections() }
    }

    deinit {
        client.beginGracefulShutdown()
        runner.cancel()
    }

    public func close() async {
        guard !closed.exchange(true, ordering: .acquiringAndReleasing) else { return }
        client.beginGracefulShutdown()
        runner.cancel()
    }

    private func options(_ timeout: Duration) -> CallOptions {
        var o = CallOptions.defaults
        o.timeout = timeout
        // A server that is not there fails the call now instead of waiting for it.
        o.waitForReady = false
        o.maxResponseMessageBytes = 8 << 20
        return o
    }

    /// Runs one call; errors become the PlasmaError the server raised.
    private func call<T>(_ body: () async throws -> T) async throws -> T {
        guard !closed.load(ordering: .acquiring) else {
            throw PlasmaError(.invalidState, "\(address): this host connection was closed")
        }
        do {
            return try await body()
        } catch {
            throw ErrorMapping.plasmaError(error, address: address)
        }
    }

    func ping(timeout: Duration) async throws {
        var ref = Plasmavmc_V1_VmRef()
        ref.name = ""
        do {
            _ = try await stub.getVm(ref, options: options(timeout))
        } catch let e as RPCError where e.code == .invalidArgument {
            return  // the server answered (an empty name is not a VM)
        } catch {
            let p = ErrorMapping.plasmaError(error, address: address)
            throw PlasmaError(.unavailable, "no plasmavmc server answers at \(address): \(p.message)")
        }
    }

    private func ref(_ name: VMName) -> Plasmavmc_V1_VmRef {
        var r = Plasmavmc_V1_VmRef()
        r.name = name.rawValue
        return r
    }

    public func create(_ spec: VMSpec) async throws -> VMStatus {
        try spec.validate()
        var request = Plasmavmc_V1_CreateVmRequest()
        request.spec = Convert.spec(spec)
        let vm = try await call { try await stub.createVm(request, options: options(Self.launchTimeout)) }
        return try Convert.status(vm, address: address)
    }

    public func start(_ name: VMName) async throws -> VMStatus {
        let vm = try await call { try await stub.startVm(ref(name), options: options(Self.launchTimeout)) }
        return try Convert.status(vm, address: address)
    }

    public func status(_ name: VMName) async throws -> VMStatus {
        let vm = try await call { try await stub.getVm(ref(name), options: options(Self.callTimeout)) }
        return try Convert.status(vm, address: address)
    }

    public func info(_ name: VMName) async throws -> VMInfo {
        let vm = try await call { try await stub.getVm(ref(name), options: options(Self.callTimeout)) }
        let spec = try Convert.spec(vm.spec)
        return VMInfo(spec: spec, status: try Convert.status(vm, address: address),
                      runtimeDirectory: vm.runtimeDirectory.isEmpty ? nil : vm.runtimeDirectory)
    }

    public func stop(_ name: VMName, timeout: Duration) async throws -> StopOutcome {
        guard timeout >= .zero else { throw PlasmaError(.invalidArgument, "stop timeout must not be negative") }
        var request = Plasmavmc_V1_StopVmRequest()
        request.name = name.rawValue
        let seconds = VmService.seconds(timeout)
        // 0 on the wire means the default; the smallest positive time asks for "at once".
        request.timeoutSeconds = seconds == 0 ? 1e-9 : seconds
        let response = try await call { try await stub.stopVm(request, options: options(timeout + Self.callTimeout)) }
        guard let step = StopStep(rawValue: response.step) else {
            throw PlasmaError(.internal, "\(address): unknown stop step \"\(response.step)\"")
        }
        let elapsed = response.elapsedSeconds.isFinite && response.elapsedSeconds >= 0 && response.elapsedSeconds < 1e9
            ? Duration.nanoseconds(Int64(response.elapsedSeconds * 1e9)) : .zero
        return StopOutcome(step: step, elapsed: elapsed)
    }

    public func kill(_ name: VMName) async throws {
        _ = try await call { try await stub.killVm(ref(name), options: options(Self.callTimeout)) }
    }

    public func pause(_ name: VMName) async throws {
        _ = try await call { try await stub.pauseVm(ref(name), options: options(Self.callTimeout)) }
    }

    public func resume(_ name: VMName) async throws {
        _ = try await call { try await stub.resumeVm(ref(name), options: options(Self.callTimeout)) }
    }

    public func delete(_ name: VMName, force: Bool) async throws {
        var request = Plasmavmc_V1_DeleteVmRequest()
        request.name = name.rawValue
        request.force = force
        _ = try await call { try await stub.deleteVm(request, options: options(Self.callTimeout)) }
    }

    public func list() async throws -> [VMListEntry] {
        let response = try await call { try await stub.listVms(Plasmavmc_V1_ListVmsRequest(), options: options(Self.callTimeout)) }
        var out: [VMListEntry] = []
        for vm in response.vms {
            let name = try VMName(vm.spec.name)
            do {
                out.append((name, .success(try Convert.status(vm, address: address))))
            } catch let e as PlasmaError {
                out.append((name, .failure(e)))
            }
        }
        for e in response.errors {
            guard let name = try? VMName(e.name) else { continue }
            out.append((name, .failure(PlasmaError(.internal, e.message))))
        }
        return out.sorted { $0.name.rawValue < $1.name.rawValue }
    }

    /// Reads console output from `offset` (or the last `tail` bytes) without following.
    private func readConsole(_ name: VMName, offset: Int, tail: Int) async throws -> (data: Data, next: Int) {
        var request = Plasmavmc_V1_ReadConsoleRequest()
        request.name = name.rawValue
        request.offset = Int64(offset)
        request.tailBytes = Int64(tail)
        return try await call {
            try await stub.readConsole(request, options: options(Self.callTimeout)) { response in
                var data = Data()
                var next = offset
                for try await chunk in response.messages {
                    data.append(chunk.data)
                    guard chunk.nextOffset >= 0 else { throw PlasmaError(.internal, "negative console offset") }
                    next = Int(chunk.nextOffset)
                    // Bounded like the local read.
                    if data.count >= 4 << 20 { break }
                }
                return (data, next)
            }
        }
    }

    public func consoleLog(_ name: VMName, maxBytes: Int?) async throws -> String {
        if let maxBytes, maxBytes <= 0 { return "" }
        let (data, _) = try await readConsole(name, offset: 0, tail: maxBytes ?? (64 << 20))
        return String(decoding: data, as: UTF8.self)
    }

    public func consoleRead(_ name: VMName, from offset: Int) async throws -> (text: String, next: Int) {
        guard offset >= 0 else { throw PlasmaError(.invalidArgument, "console offset must not be negative") }
        let (data, next) = try await readConsole(name, offset: offset, tail: 0)
        return (String(decoding: data, as: UTF8.self), next)
    }

    public func sendConsole(_ name: VMName, _ text: String) async throws {
        var request = Plasmavmc_V1_SendConsoleRequest()
        request.name = name.rawValue
        request.data = Data(text.utf8)
        _ = try await call { try await stub.sendConsole(request, options: options(Self.callTimeout)) }
    }

    public func events(_ name: VMName, from offset: Int) async throws -> (events: [VMEvent], next: Int) {
        guard offset >= 0 else { throw PlasmaError(.invalidArgument, "event log offset must not be negative") }
        var request = Plasmavmc_V1_ListEventsRequest()
        request.name = name.rawValue
        request.offset = Int64(offset)
        let response = try await call { try await stub.listEvents(request, options: options(Self.callTimeout)) }
        guard response.nextOffset >= 0 else { throw PlasmaError(.internal, "\(address): negative event offset") }
        return (response.events.map(Convert.event), Int(response.nextOffset))
    }

    public func monitorCommand(_ name: VMName, _ command: String, argumentsJSON: String?) async throws -> String {
        var request = Plasmavmc_V1_MonitorCommandRequest()
        request.name = name.rawValue
        request.command = command
        request.argumentsJson = argumentsJSON ?? ""
        return try await call { try await stub.monitorCommand(request, options: options(Self.callTimeout)) }.replyJson
    }

    public func statusProbe(_ name: VMName) -> (any VMStatusProbe)? { nil }

    /// A socket pair bridged to the remote console: what the guest prints (from now on) is
    /// written to it, what the caller writes is typed with SendConsole. Ends when the caller
    /// closes its end or the VM goes away.
    public func consoleConnection(_ name: VMName) async throws -> Int32 {
        _ = try await status(name)
        var fds: [Int32] = [-1, -1]
        guard socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0, &fds) == 0 else {
            throw PlasmaError(.unavailable, "cannot make a socket pair for the console", cause: String(cString: strerror(errno)))
        }
        let mine = fds[1]
        let host = self
        let outputDone = DispatchSemaphore(value: 0)
        let output = Task {
            defer { outputDone.signal() }
            var request = Plasmavmc_V1_ReadConsoleRequest()
            request.name = name.rawValue
            request.follow = true
            request.fromEnd = true
            var o = CallOptions.defaults
            o.waitForReady = false
            _ = try? await host.stub.readConsole(request, options: o) { response in
                for try await chunk in response.messages where !chunk.data.isEmpty {
                    let ok = chunk.data.withUnsafeBytes { buf -> Bool in
                        var done = 0
                        while done < buf.count {
                            let n = send(mine, buf.baseAddress! + done, buf.count - done, Int32(MSG_NOSIGNAL))
                            if n < 0 && errno == EINTR { continue }
                            if n <= 0 { return false }
                            done += n
                        }
                        return true
                    }
                    if !ok { break }
                }
            }
            shutdown(mine, Int32(SHUT_WR))
        }
        // Input: a thread blocks on the socket and forwards what the caller types.
        let thread = Thread {
            var buf = [UInt8](repeating: 0, count: 4096)
            while true {
                let n = read(mine, &buf, buf.count)
                if n < 0 && errno == EINTR { continue }
                if n <= 0 { break }
                let text = String(decoding: buf[0..<n], as: UTF8.self)
                let sent = DispatchSemaphore(value: 0)
                let failed = Atomic<Bool>(false)
                Task {
                    do { try await host.sendConsole(name, text) } catch { failed.store(true, ordering: .relaxed) }
                    sent.signal()
                }
                sent.wait()
                if failed.load(ordering: .relaxed) { break }
            }
            // The output task writes to `mine` until it ends: only then is it closed.
            output.cancel()
            outputDone.wait()
            Glibc.close(mine)
        }
        thread.start()
        return fds[0]
    }
}
