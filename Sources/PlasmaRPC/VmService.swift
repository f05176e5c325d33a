import Foundation
import GRPCCore
import PlasmaVMM

/// The VmService over the local VM manager: what `plasmavmc serve` offers. It keeps no state of
/// its own: every call goes to the manager, which derives state from the runtime folder, so the
/// server sees VMs any plasmavmc process made and the CLI sees the server's at once.
public struct VmService: Plasmavmc_V1_VmService.SimpleServiceProtocol {
    let manager: VMManager
    /// How often watches and followed console reads look for news.
    let pollInterval: Duration
    /// How often a watch of every VM looks for new VMs.
    let listInterval: Duration
    /// Largest console chunk sent in one message.
    static let chunkLimit = 256 << 10
    /// Set when the server shuts down: streams end.
    let shutdown = ShutdownFlag()

    public init(manager: VMManager, pollInterval: Duration = .milliseconds(20), listInterval: Duration = .milliseconds(250)) {
        self.manager = manager
        self.pollInterval = pollInterval
        self.listInterval = listInterval
    }

    /// Runs a handler's body with errors mapped to status codes. The body runs as a task of
    /// its own that is cancelled when the RPC is: the client cancelled, its deadline passed, or
    /// the connection broke (gRPC signals these apart from Task cancellation).
    private func handle<T: Sendable>(_ body: @escaping @Sendable () async throws -> T) async throws -> T {
        let task = Task { try await body() }
        do {
            return try await withTaskCancellationHandler {
                try await withRPCCancellationHandler {
                    try await task.value
                } onCancelRPC: { [shutdown] in
                    // While the server shuts down gRPC cancels calls in flight; they are let
                    // finish instead (streams end by the shutdown flag), within the grace period.
                    if !shutdown.isEnded { task.cancel() }
                }
            } onCancel: {
                task.cancel()
            }
        } catch {
            throw ErrorMapping.rpcError(error)
        }
    }

    private func vm(_ name: VMName) async throws -> Plasmavmc_V1_Vm {
        Convert.vm(try await manager.info(name))
    }

    public func createVm(request: Plasmavmc_V1_CreateVmRequest, context: ServerContext) async throws -> Plasmavmc_V1_Vm {
        try await handle {
            guard request.hasSpec else { throw PlasmaError(.invalidArgument, "CreateVm: spec is required") }
            let spec = try Convert.spec(request.spec)
            _ = try await manager.create(spec)
            return try await vm(spec.name)
        }
    }

    public func startVm(request: Plasmavmc_V1_VmRef, context: ServerContext) async throws -> Plasmavmc_V1_Vm {
        try await handle {
            let name = try VMName(request.name)
            _ = try await manager.start(name)
            return try await vm(name)
        }
    }

    public func stopVm(request: Plasmavmc_V1_StopVmRequest, context: ServerContext) async throws -> Plasmavmc_V1_StopVmResponse {
        try await handle {
            let name = try VMName(request.name)
            let timeout = try Convert.seconds(request.timeoutSeconds, field: "timeout_seconds", fallback: 30)
            var response = Plasmavmc_V1_StopVmResponse()
            if request.force {
                let start = ContinuousClock.now
                try await manager.kill(name)
                response.step = StopStep.sigkill.rawValue
                response.elapsedSeconds = Self.seconds(ContinuousClock.now - start)
            } else {
                let outcome = try await manager.stop(name, timeout: timeout)
                response.step = outcome.step.rawValue
                response.elapsedSeconds = Self.seconds(outcome.elapsed)
            }
            response.vm = try await vm(name)
            return response
        }
    }

    static func seconds(_ d: Duration) -> Double {
        Double(d.components.seconds) + Double(d.components.attoseconds) / 1e18
    }

    public func killVm(request: Plasmavmc_V1_VmRef, context: ServerContext) async throws -> Plasmavmc_V1_Vm {
        try await handle {
            let name = try VMName(request.name)
            try await manager.kill(name)
            return try await vm(name)
        }
    }

    public func pauseVm(request: Plasmavmc_V1_VmRef, context: ServerContext) async throws -> Plasmavmc_V1_Vm {
        try await handle {
            let name = try VMName(request.name)
            try await manager.pause(name)
            return try await vm(name)
        }
    }

    public func resumeVm(request: Plasmavmc_V1_VmRef, context: ServerContext) async throws -> Plasmavmc_V1_Vm {
        try await handle {
            let name = try VMName(request.name)
            try await manager.resume(name)
            return try await vm(name)
        }
    }

    public func deleteVm(request: Plasmavmc_V1_DeleteVmRequest, context: ServerContext) async throws -> Plasmavmc_V1_DeleteVmResponse {
        try await handle {
            try await manager.delete(try VMName(request.name), force: request.force)
            return Plasmavmc_V1_DeleteVmResponse()
        }
    }

    public func getVm(request: Plasmavmc_V1_VmRef, context: ServerContext) async throws -> Plasmavmc_V1_Vm {
        try await handle { try await vm(try VMName(request.name)) }
    }

    public func listVms(request: Plasmavmc_V1_ListVmsRequest, context: ServerContext) async throws -> Plasmavmc_V1_ListVmsResponse {
        try await handle {
            var response = Plasmavmc_V1_ListVmsResponse()
            for entry in try await manager.list() {
                switch entry.status {
                case .success(let status):
                    do {
                        response.vms.append(Convert.vm(try await manager.info(entry.name)))
                    } catch let e as PlasmaError where e.code == .notFound {
                        continue  // deleted meanwhile
                    } catch {
                        response.vms.append(Convert.vm(name: entry.name, status))
                    }
                case .failure(let error):
                    if error.code == .notFound { continue }
                    var e = Plasmavmc_V1_VmError()
                    e.name = entry.name.rawValue
                    e.code = "\(ErrorMapping.rpcCode(for: error.code))"
                    e.message = error.description
                    response.errors.append(e)
                }
            }
            return response
        }
    }

    public func watchVm(request: Plasmavmc_V1_WatchVmRequest, response: RPCWriter<Plasmavmc_V1_VmEvent>,
                        context: ServerContext) async throws {
        try await handle {
            if request.name.isEmpty {
                try await watchAll(replay: request.replay, response: response)
            } else {
                let name = try VMName(request.name)
                var follower = try await EventFollower(manager: manager, name: name, replay: request.replay)
                try await follow(&follower, response: response)
            }
        }
    }

    /// Streams one VM's events until it is deleted (then a last "deleted" event) or the call ends.
    private func follow(_ follower: inout EventFollower, response: RPCWriter<Plasmavmc_V1_VmEvent>) async throws {
        while true {
            let (events, gone) = try await follower.poll()
            for e in events { try await response.write(Convert.event(e, name: follower.name)) }
            if gone {
                try await response.write(Self.deleted(follower.name))
                return
            }
            if shutdown.isEnded { return }
            try await Task.sleep(for: pollInterval)
        }
    }

    static func deleted(_ name: VMName) -> Plasmavmc_V1_VmEvent {
        var e = Plasmavmc_V1_VmEvent()
        e.name = name.rawValue
        e.kind = "deleted"
        var ts = timespec()
        clock_gettime(CLOCK_REALTIME, &ts)
        e.timeUnixNanos = Int64(ts.tv_sec) * 1_000_000_000 + Int64(ts.tv_nsec)
        e.json = "{\"kind\":\"deleted\",\"unix_nanos\":\(e.timeUnixNanos)}"
        return e
    }

    /// Every VM's events: the VMs there now (replayed if asked), and every VM created later
    /// from its first event on. Runs until the call ends.
    private func watchAll(replay: Bool, response: RPCWriter<Plasmavmc_V1_VmEvent>) async throws {
        var followers: [VMName: EventFollower] = [:]
        var first = true
        var lastList = ContinuousClock.now - listInterval
        while true {
            if ContinuousClock.now - lastList >= listInterval {
                lastList = ContinuousClock.now
                for name in try await manager.hypervisor.list() where followers[name] == nil {
                    do {
                        followers[name] = try await EventFollower(manager: manager, name: name, replay: replay || !first)
                    } catch let e as PlasmaError where e.code == .notFound {
                        continue
                    }
                }
                first = false
            }
            for name in followers.keys.sorted(by: { $0.rawValue < $1.rawValue }) {
                guard var f = followers[name] else { continue }
                let (events, gone) = try await f.poll()
                for e in events { try await response.write(Convert.event(e, name: name)) }
                if gone {
                    try await response.write(Self.deleted(name))
                    followers[name] = nil
                } else {
                    followers[name] = f
                }
            }
            if shutdown.isEnded { return }
            try await Task.sleep(for: pollInterval)
        }
    }

    public func readConsole(request: Plasmavmc_V1_ReadConsoleRequest, response: RPCWriter<Plasmavmc_V1_ConsoleChunk>,
                            context: ServerContext) async throws {
        try await handle {
            let name = try VMName(request.name)
            var offset = try Convert.offset(request.offset, field: "offset")
            let tail = try Convert.offset(request.tailBytes, field: "tail_bytes")
            if tail > 0 || request.fromEnd {
                // Where the kept output ends, minus the tail.
                var end = offset
                while true {
                    let (text, next) = try await manager.consoleRead(name, from: end)
                    if text.isEmpty || next == end { break }
                    end = next
                }
                offset = max(0, end - tail)
            }
            while true {
                let (text, next) = try await manager.consoleRead(name, from: offset)
                if !text.isEmpty || next != offset {
                    var bytes = Array(text.utf8)[...]
                    var at = offset
                    while !bytes.isEmpty {
                        let piece = bytes.prefix(Self.chunkLimit)
                        bytes = bytes.dropFirst(piece.count)
                        var chunk = Plasmavmc_V1_ConsoleChunk()
                        chunk.data = Data(piece)
                        at += piece.count
                        chunk.nextOffset = Int64(bytes.isEmpty ? next : at)
                        try await response.write(chunk)
                    }
                    if text.isEmpty {
                        var chunk = Plasmavmc_V1_ConsoleChunk()
                        chunk.nextOffset = Int64(next)
                        try await response.write(chunk)
                    }
                    offset = next
                    continue
                }
                guard request.follow, !shutdown.isEnded else { return }
                do {
                    _ = try await manager.status(name)
                } catch let e as PlasmaError where e.code == .notFound {
                    return
                }
                try await Task.sleep(for: pollInterval)
            }
        }
    }

    /// Most bytes one SendConsole may type.
    static let sendLimit = 64 << 10

    public func sendConsole(request: Plasmavmc_V1_SendConsoleRequest, context: ServerContext) async throws -> Plasmavmc_V1_SendConsoleResponse {
        try await handle {
            let name = try VMName(request.name)
            guard request.data.count <= Self.sendLimit else {
                throw PlasmaError(.invalidArgument, "SendConsole: at most \(Self.sendLimit) bytes per call, got \(request.data.count)")
            }
            guard let text = String(data: request.data, encoding: .utf8) else {
                throw PlasmaError(.invalidArgument, "SendConsole: data must be UTF-8 text")
            }
            try await manager.sendConsole(name, text)
            return Plasmavmc_V1_SendConsoleResponse()
        }
    }

    public func listEvents(request: Plasmavmc_V1_ListEventsRequest, context: ServerContext) async throws -> Plasmavmc_V1_ListEventsResponse {
        try await handle {
            let name = try VMName(request.name)
            let page = try await manager.events(name, from: try Convert.offset(request.offset, field: "offset"))
            var response = Plasmavmc_V1_ListEventsResponse()
            response.events = page.events.map { Convert.event($0, name: name) }
            response.nextOffset = Int64(page.next)
            return response
        }
    }

    public func monitorCommand(request: Plasmavmc_V1_MonitorCommandRequest, context: ServerContext) async throws -> Plasmavmc_V1_MonitorCommandResponse {
        try await handle {
            let name = try VMName(request.name)
            guard !request.command.isEmpty else { throw PlasmaError(.invalidArgument, "MonitorCommand: command is required") }
            var response = Plasmavmc_V1_MonitorCommandResponse()
            response.replyJson = try await manager.monitorCommand(name, request.command,
                                                                  argumentsJSON: request.argumentsJson.isEmpty ? nil : request.argumentsJson)
            return response
        }
    }
}

/// Reads one VM's event log as it grows. The log is also held open (where the backend can, as
/// KVM does): when the VM is deleted between two polls, the events logged up to the delete (a
/// stop's last steps, the exit) are read from the held log before the stream says "deleted".
struct EventFollower {
    let name: VMName
    let manager: VMManager
    var offset: Int
    /// The log held open; opened again when it is no longer the VM's current log (rotated).
    var log: (any VMEventLogHandle)?

    init(manager: VMManager, name: VMName, replay: Bool) async throws {
        self.manager = manager
        self.name = name
        offset = 0
        // Opened before the first read, so the held log is never older than what was read.
        log = try await manager.openEventLog(name)
        if !replay {
            // Skip what is logged now.
            while true {
                let page = try await manager.events(name, from: offset)
                if page.events.isEmpty || page.next == offset { break }
                offset = page.next
            }
        }
    }

    /// New events, and whether the VM is gone.
    mutating func poll() async throws -> ([VMEvent], Bool) {
        do {
            var out: [VMEvent] = []
            while true {
                let page = try await manager.events(name, from: offset)
                out += page.events
                if page.events.isEmpty || page.next == offset { break }
                offset = page.next
            }
            if log?.isCurrent != true {
                log = try await manager.openEventLog(name)
            }
            return (out, false)
        } catch let e as PlasmaError where e.code == .notFound {
            // Gone: what was logged since the last poll is still in the held log.
            var out: [VMEvent] = []
            if let log {
                while true {
                    let page = log.read(from: offset)
                    out += page.events
                    if page.events.isEmpty || page.next == offset { break }
                    offset = page.next
                }
            }
            log = nil
            return (out, true)
        }
    }
}
