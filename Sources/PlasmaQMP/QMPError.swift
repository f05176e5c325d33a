/// What can go wrong talking QMP. Each case says what was attempted.
public enum QMPError: Error, Sendable, Equatable, CustomStringConvertible {
    /// The socket could not be reached (missing, refused, path too long…).
    case connect(path: String, reason: String)
    /// The peer accepted but sent no greeting in time, or sent something that is not one.
    case greeting(path: String, reason: String)
    /// `qmp_capabilities` failed.
    case negotiation(reason: String)
    /// QEMU answered the command with an error of class `errorClass`.
    case execute(command: String, errorClass: String, description: String)
    /// The connection ended (EOF or reset) before the command's reply arrived.
    case interrupted(command: String)
    /// No reply arrived within the command's timeout.
    case timeout(command: String, seconds: Double)
    /// The client was closed; no more commands can be sent.
    case closed
    /// The peer sent something QMP does not allow.
    case protocolViolation(String)

    public var description: String {
        switch self {
        case .connect(let path, let reason): return "cannot connect to QMP socket \(path): \(reason)"
        case .greeting(let path, let reason): return "no QMP greeting on \(path): \(reason)"
        case .negotiation(let reason): return "QMP capabilities negotiation failed: \(reason)"
        case .execute(let command, let cls, let desc): return "QMP '\(command)' failed: \(cls): \(desc)"
        case .interrupted(let command):
            return "QMP connection closed while waiting for the reply to '\(command)' (QEMU went away)"
        case .timeout(let command, let seconds):
            return "QMP '\(command)' got no reply within \(formatSeconds(seconds))"
        case .closed: return "QMP connection is closed"
        case .protocolViolation(let what): return "QMP protocol violation: \(what)"
        }
    }
}

func formatSeconds(_ s: Double) -> String {
    if s == s.rounded() { return "\(Int(s)) s" }
    return "\((s * 1000).rounded() / 1000) s"
}

extension Duration {
    var seconds: Double {
        let c = components
        return Double(c.seconds) + Double(c.attoseconds) / 1e18
    }
}
