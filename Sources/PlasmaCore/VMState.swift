/// The states a VM can be in, libvirt-style. Derived each time from the process and QMP.
public enum VMState: String, Sendable, Codable, CaseIterable, CustomStringConvertible {
    /// QEMU is up but the guest has not run yet (QMP `prelaunch`).
    case created
    case running
    /// QEMU is up and the guest is halted (by request, an I/O error, a watchdog…).
    case paused
    /// QEMU is gone after a clean shutdown, or after being killed on request.
    case stopped
    /// The guest panicked, or QEMU died without shutting down.
    case crashed

    public var description: String { rawValue }

    /// Whether a QEMU process exists for a VM in this state (crashed may go either way).
    public var hasLiveProcess: Bool { self == .created || self == .running || self == .paused }

    /// The one transition table: which state changes can happen at all.
    public static func validTransition(from: VMState, to: VMState) -> Bool {
        switch (from, to) {
        case (.created, .running), (.created, .stopped), (.created, .crashed):
            return true
        case (.running, .paused), (.running, .stopped), (.running, .crashed):
            return true
        case (.paused, .running), (.paused, .stopped), (.paused, .crashed):
            return true
        // A stopped or crashed VM can be booted again: QEMU is relaunched paused (created)
        // or straight into running by `start`.
        case (.stopped, .created), (.stopped, .running):
            return true
        case (.crashed, .stopped), (.crashed, .created), (.crashed, .running):
            return true
        default:
            return false
        }
    }
}

/// Why a VM is in its state, machine-readable. The message beside it says the same for a person.
public enum ReasonCode: String, Sendable, Codable, CaseIterable, CustomStringConvertible {
    /// The guest shut itself down (poweroff, or a reboot under -no-reboot).
    case guestShutdown = "guest-shutdown"
    /// `plasmavmc stop` ended it; the message names the step.
    case stop
    /// QEMU quit on a QMP `quit` from outside plasmavmc.
    case hostQuit = "host-quit"
    /// A signal from outside plasmavmc (SIGTERM, SIGINT, SIGHUP) ended QEMU.
    case hostSignal = "host-signal"
    /// SIGKILL: `plasmavmc kill`, or from outside (the message says which).
    case killed
    /// QEMU died of a fault signal (SIGSEGV, SIGABRT…) or exited non-zero.
    case qemuCrashed = "qemu-crashed"
    case guestPanicked = "guest-panicked"
    /// QEMU could not be started, or did not come up.
    case launchFailed = "launch-failed"
    /// The VM's supervisor process is gone; QEMU may still run and is acted on by pid.
    case supervisorLost = "supervisor-lost"
    case created, running, paused

    public var description: String { rawValue }

    /// The code a state has when nothing more specific is known.
    public static func `default`(for state: VMState) -> ReasonCode {
        switch state {
        case .created: return .created
        case .running: return .running
        case .paused: return .paused
        case .stopped: return .stop
        case .crashed: return .qemuCrashed
        }
    }
}

/// A state with the reason for it where one is known (e.g. stopped: guest-shutdown).
public struct VMStatus: Sendable, Hashable, Codable {
    public var state: VMState
    public var reason: String?
    /// Why, machine-readable (see `ReasonCode`).
    public var reasonCode: ReasonCode
    /// QEMU's pid while its process lives.
    public var pid: Int32?
    /// The accelerator actually in use (kvm or tcg) once launched.
    public var accel: String?

    public init(state: VMState, reason: String? = nil, reasonCode: ReasonCode? = nil,
                pid: Int32? = nil, accel: String? = nil) {
        self.state = state
        self.reason = reason
        self.reasonCode = reasonCode ?? .default(for: state)
        self.pid = pid
        self.accel = accel
    }
}

/// One entry of a VM's event log: a QMP lifecycle event or one of plasmavmc's own steps.
public struct VMEvent: Sendable, Hashable {
    /// Wall-clock time, nanoseconds since the Unix epoch.
    public var unixNanos: Int64
    /// e.g. create, launch, greeting, resume, stop, powerdown, shutdown, reset,
    /// guest-panicked, stop-requested, stop-step, kill-requested, exit.
    public var kind: String
    /// The VM's state right after the event.
    public var state: VMState?
    public var reasonCode: ReasonCode?
    /// The whole entry as one JSON object (time, kind, state and the event's details).
    public var json: String

    public init(unixNanos: Int64, kind: String, state: VMState?, reasonCode: ReasonCode?, json: String) {
        self.unixNanos = unixNanos
        self.kind = kind
        self.state = state
        self.reasonCode = reasonCode
        self.json = json
    }
}

/// The lifecycle operations, each legal in some states only.
public enum VMOperation: String, Sendable, CaseIterable, CustomStringConvertible {
    case start, stop, kill, pause, resume, delete

    public var description: String { rawValue }

    /// Where a legal operation leads.
    public var target: VMState? {
        switch self {
        case .start, .resume: return .running
        case .stop, .kill: return .stopped
        case .pause: return .paused
        case .delete: return nil
        }
    }

    /// Whether the operation may be applied to a VM in `state` (delete: without force).
    public func isLegal(in state: VMState) -> Bool {
        switch self {
        case .start: return state == .created || state == .stopped || state == .crashed
        case .stop: return state == .created || state == .running || state == .paused || state == .crashed
        case .kill: return state == .created || state == .running || state == .paused || state == .crashed
        case .pause: return state == .running
        case .resume: return state == .paused
        case .delete: return state == .stopped || state == .crashed
        }
    }

    /// A user-facing reason and way out for an illegal operation.
    public func refusal(vm: VMName, state: VMState) -> PlasmaError {
        let why: String
        switch (self, state) {
        case (.start, .running), (.resume, .running): why = "it is already running"
        case (.start, .paused): why = "it is paused; use resume"
        case (.stop, .stopped), (.kill, .stopped): why = "it is already stopped"
        case (.pause, .paused): why = "it is already paused"
        case (.pause, _): why = "it is \(state); only a running vm can be paused"
        case (.resume, _): why = "it is \(state); only a paused vm can be resumed"
        case (.delete, _): why = "it is \(state); stop it first, or delete with force"
        default: why = "it is \(state)"
        }
        return PlasmaError(.invalidState, "cannot \(self) vm '\(vm)': \(why)")
    }
}
