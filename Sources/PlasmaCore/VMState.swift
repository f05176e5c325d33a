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

/// A state with the reason for it where one is known (e.g. stopped: guest-shutdown).
public struct VMStatus: Sendable, Hashable, Codable {
    public var state: VMState
    public var reason: String?
    /// QEMU's pid while its process lives.
    public var pid: Int32?
    /// The accelerator actually in use (kvm or tcg) once launched.
    public var accel: String?

    public init(state: VMState, reason: String? = nil, pid: Int32? = nil, accel: String? = nil) {
        self.state = state
        self.reason = reason
        self.pid = pid
        self.accel = accel
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
