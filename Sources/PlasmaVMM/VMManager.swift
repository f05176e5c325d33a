@_exported import PlasmaHypervisor

/// The one internal API every front end (CLI, Lua, REPL, gRPC) calls. It checks each
/// operation against the transition table under the VM's lock, so two processes acting on
/// one VM take turns and neither acts on a stale state.
public struct VMManager: Sendable {
    public let hypervisor: any Hypervisor
    /// How long to wait for another process that holds a VM's lock.
    public var lockTimeout: Duration

    public init(hypervisor: any Hypervisor, lockTimeout: Duration = .seconds(10)) {
        self.hypervisor = hypervisor
        self.lockTimeout = lockTimeout
    }

    /// Validates `spec` and launches the VM paused. Legal when no VM has that name.
    /// - Throws: `invalidArgument`, `alreadyExists`, `unavailable`, `launchFailed`.
    public func create(_ spec: VMSpec) async throws -> VMStatus {
        try spec.validate()
        return try await guarded { try await hypervisor.create(spec) }
    }

    /// Runs a created VM, or boots a stopped or crashed one again. Legal in created, stopped, crashed.
    public func start(_ name: VMName) async throws -> VMStatus {
        try await act(name, .start) { _ in try await hypervisor.start(name) }
    }

    /// The VM's state, derived now from the process and QMP. Takes no lock.
    public func status(_ name: VMName) async throws -> VMStatus {
        try await guarded { try await hypervisor.status(name) }
    }

    public func info(_ name: VMName) async throws -> VMInfo {
        try await guarded { try await hypervisor.info(name) }
    }

    /// Graceful powerdown, then quit, SIGTERM and SIGKILL, all within `timeout`.
    /// Legal in created, running, paused, crashed.
    public func stop(_ name: VMName, timeout: Duration = .seconds(30)) async throws -> StopOutcome {
        guard timeout >= .zero else {
            throw PlasmaError(.invalidArgument, "stop timeout must not be negative")
        }
        return try await act(name, .stop) { _ in try await hypervisor.stop(name, timeout: timeout) }
    }

    /// Ends the VM at once. Legal in created, running, paused, crashed.
    public func kill(_ name: VMName) async throws {
        try await act(name, .kill) { _ in try await hypervisor.kill(name) }
    }

    /// Halts a running guest. Legal in running.
    public func pause(_ name: VMName) async throws {
        try await act(name, .pause) { _ in try await hypervisor.pause(name) }
    }

    /// Continues a paused guest. Legal in paused.
    public func resume(_ name: VMName) async throws {
        try await act(name, .resume) { _ in try await hypervisor.resume(name) }
    }

    /// Removes the VM. Legal in stopped and crashed; with `force` in any state (it is killed first).
    public func delete(_ name: VMName, force: Bool = false) async throws {
        try await guarded {
            try await hypervisor.withExclusiveAccess(to: name, timeout: lockTimeout) {
                let status = try await hypervisor.status(name)
                let live = status.state.hasLiveProcess || status.pid != nil
                if live || !VMOperation.delete.isLegal(in: status.state) {
                    guard force else {
                        if status.state == .crashed {
                            throw PlasmaError(.invalidState, "cannot delete vm '\(name)': it is crashed but its QEMU (pid \(status.pid ?? 0)) is still up; stop it first, or delete with force")
                        }
                        throw VMOperation.delete.refusal(vm: name, state: status.state)
                    }
                    if live { try await hypervisor.kill(name) }
                }
                try await hypervisor.delete(name)
            }
        }
    }

    /// Every VM with its status (or the error that kept its status from being known).
    public func list() async throws -> [(name: VMName, status: Result<VMStatus, PlasmaError>)] {
        let names = try await guarded { try await hypervisor.list() }
        var out: [(name: VMName, status: Result<VMStatus, PlasmaError>)] = []
        for name in names {
            do {
                out.append((name, .success(try await hypervisor.status(name))))
            } catch {
                out.append((name, .failure(Self.plasmaError(error))))
            }
        }
        return out
    }

    /// The console output so far, at most the last `maxBytes`.
    public func consoleLog(_ name: VMName, maxBytes: Int? = nil) async throws -> String {
        try await guarded { try await hypervisor.consoleLog(name, maxBytes: maxBytes) }
    }

    /// Console output from byte `offset` on, and where to read next.
    public func consoleRead(_ name: VMName, from offset: Int) async throws -> (text: String, next: Int) {
        try await guarded { try await hypervisor.consoleRead(name, from: offset) }
    }

    /// Types `text` on the VM's serial console. Legal while its QEMU is up.
    public func sendConsole(_ name: VMName, _ text: String) async throws {
        try await guarded { try await hypervisor.sendConsole(name, text) }
    }

    /// A stream socket attached to the VM's serial console (see `Hypervisor.consoleConnection`).
    /// Legal while its QEMU is up. The caller closes it.
    public func consoleConnection(_ name: VMName) async throws -> Int32 {
        try await guarded { try await hypervisor.consoleConnection(name) }
    }

    /// The VM's event log from byte `offset` on (0: all of it), and where to read next.
    public func events(_ name: VMName, from offset: Int = 0) async throws -> (events: [VMEvent], next: Int) {
        guard offset >= 0 else { throw PlasmaError(.invalidArgument, "event log offset must not be negative") }
        return try await guarded { try await hypervisor.events(name, from: offset) }
    }

    /// The VM's event log held open, so a follower still reads the events logged just before
    /// the VM is deleted (nil when the backend cannot). Takes no lock.
    public func openEventLog(_ name: VMName) async throws -> (any VMEventLogHandle)? {
        try await guarded { try await hypervisor.openEventLog(name) }
    }

    /// A raw QMP command; JSON text in and out. Legal while its QEMU is up.
    public func monitorCommand(_ name: VMName, _ command: String, argumentsJSON: String? = nil) async throws -> String {
        try await guarded { try await hypervisor.monitorCommand(name, command, argumentsJSON: argumentsJSON) }
    }

    /// A cheap blocking status source for one VM (see `VMStatusProbe`), or nil.
    public func statusProbe(_ name: VMName) -> (any VMStatusProbe)? {
        hypervisor.statusProbe(name)
    }

    // MARK: internals

    private func act<T: Sendable>(_ name: VMName, _ op: VMOperation,
                                  _ body: @escaping @Sendable (VMStatus) async throws -> T) async throws -> T {
        try await guarded {
            try await hypervisor.withExclusiveAccess(to: name, timeout: lockTimeout) {
                let status = try await hypervisor.status(name)
                guard op.isLegal(in: status.state) else { throw op.refusal(vm: name, state: status.state) }
                return try await body(status)
            }
        }
    }

    /// Every error leaving the manager is a PlasmaError.
    private func guarded<T>(_ body: () async throws -> T) async throws -> T {
        do {
            return try await body()
        } catch {
            throw Self.plasmaError(error)
        }
    }

    static func plasmaError(_ error: any Error) -> PlasmaError {
        if let p = error as? PlasmaError { return p }
        if error is CancellationError { return PlasmaError(.timeout, "cancelled") }
        return PlasmaError(.internal, "unexpected error: \(error)")
    }
}
