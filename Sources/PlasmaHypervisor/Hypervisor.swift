@_exported import PlasmaCore

/// Which step of a stop ended the VM.
public enum StopStep: String, Sendable, Codable, CustomStringConvertible {
    /// The guest powered off after an ACPI powerdown.
    case powerdown
    /// QEMU obeyed QMP `quit`.
    case quit
    /// QEMU exited on SIGTERM.
    case sigterm
    /// QEMU had to be killed with SIGKILL.
    case sigkill
    /// QEMU was already gone (e.g. a crashed VM); only the record was updated.
    case alreadyGone = "already-gone"

    public var description: String { rawValue }
}

/// The outcome of a stop: which step worked and how long the whole stop took.
public struct StopOutcome: Sendable, Hashable {
    public var step: StopStep
    public var elapsed: Duration
    public init(step: StopStep, elapsed: Duration) {
        self.step = step
        self.elapsed = elapsed
    }
}

/// What a front end shows about one VM.
public struct VMInfo: Sendable, Hashable {
    public var spec: VMSpec
    public var status: VMStatus
    /// Where the backend keeps the VM's files, if it has such a place.
    public var runtimeDirectory: String?
    public init(spec: VMSpec, status: VMStatus, runtimeDirectory: String?) {
        self.spec = spec
        self.status = status
        self.runtimeDirectory = runtimeDirectory
    }
}

/// A VM backend. Implementations derive state each time from the real world; they do not
/// check the transition table (the VM manager does) but must never report a dead process as
/// live. Every method throws `PlasmaError`.
public protocol Hypervisor: Sendable {
    /// A short name for messages, e.g. "qemu".
    var name: String { get }

    /// Launches the VM paused. Legal when no VM of that name exists. Leaves nothing behind on
    /// failure.
    func create(_ spec: VMSpec) async throws -> VMStatus
    /// Runs a created VM, or relaunches a stopped or crashed one and runs it.
    func start(_ name: VMName) async throws -> VMStatus
    /// The VM's state, derived now.
    func status(_ name: VMName) async throws -> VMStatus
    /// The VM's spec, status and files.
    func info(_ name: VMName) async throws -> VMInfo
    /// Graceful powerdown until `timeout` is nearly spent, then forced steps.
    func stop(_ name: VMName, timeout: Duration) async throws -> StopOutcome
    /// Ends the VM at once.
    func kill(_ name: VMName) async throws
    func pause(_ name: VMName) async throws
    func resume(_ name: VMName) async throws
    /// Removes every trace of a VM whose process is gone.
    func delete(_ name: VMName) async throws
    /// Every VM this backend knows, from any process.
    func list() async throws -> [VMName]
    /// The VM's console output so far (at most the last `maxBytes`).
    func consoleLog(_ name: VMName, maxBytes: Int?) async throws -> String
    /// Console output from byte `offset` on, and the offset to read from next.
    func consoleRead(_ name: VMName, from offset: Int) async throws -> (text: String, next: Int)
    /// Types `text` on the VM's serial console.
    func sendConsole(_ name: VMName, _ text: String) async throws
    /// A connected stream socket to the VM's serial console: what the guest prints can be
    /// read from it, what is written to it is typed. Other clients may be attached at the
    /// same time. The caller closes it; a client that stops reading is dropped.
    func consoleConnection(_ name: VMName) async throws -> Int32
    /// Entries of the VM's event log from byte `offset` on, and the offset to read from next.
    func events(_ name: VMName, from offset: Int) async throws -> (events: [VMEvent], next: Int)
    /// The VM's event log held open, for a follower: once the VM is deleted, `events` says
    /// `notFound`, but the handle still reads what was logged up to the delete. Nil when the
    /// backend cannot hold its log open (or the VM has no log yet).
    func openEventLog(_ name: VMName) async throws -> (any VMEventLogHandle)?
    /// Runs a raw monitor (QMP) command; arguments and reply are JSON text.
    func monitorCommand(_ name: VMName, _ command: String, argumentsJSON: String?) async throws -> String
    /// A status probe for `name`, or nil when the backend has none or the VM is not up.
    func statusProbe(_ name: VMName) -> (any VMStatusProbe)?
    /// Runs `body` while holding the VM's lock, shared with every other process.
    func withExclusiveAccess<T: Sendable>(to name: VMName, timeout: Duration,
                                          _ body: @Sendable () async throws -> T) async throws -> T
}

/// A cheap, blocking source of one VM's status, for a caller on a thread of its own that asks
/// often (a plan's scheduler). It answers only while the QEMU it was made for lives.
public protocol VMStatusProbe: AnyObject {
    /// The VM's status now, or nil when the probe no longer applies (the process is gone or
    /// the monitor broke): then ask `Hypervisor.status`, which derives the full answer.
    func status() -> VMStatus?
    func close()
}

/// One VM's event log held open (`Hypervisor.openEventLog`). It reads the same entries and
/// offsets as `Hypervisor.events`, and goes on reading them after the VM is deleted.
public protocol VMEventLogHandle: AnyObject, Sendable {
    /// Entries from byte `offset` on, and the offset to read from next (as `Hypervisor.events`).
    func read(from offset: Int) -> (events: [VMEvent], next: Int)
    /// False once the log the handle holds is no longer the VM's current log (it was rotated,
    /// or the VM deleted): a follower opens it again.
    var isCurrent: Bool { get }
}

extension Hypervisor {
    /// A status probe for `name`, or nil when the backend has none or the VM is not up.
    public func statusProbe(_ name: VMName) -> (any VMStatusProbe)? { nil }
    /// No held log: followers of such a backend may miss the events logged just before a delete.
    public func openEventLog(_ name: VMName) async throws -> (any VMEventLogHandle)? { nil }
}
