import GRPCCore
import PlasmaVMM

/// The one place where plasmavmc's errors become gRPC status codes and back. The status message
/// is the message the CLI prints; the exact plasmavmc code travels in metadata so a client
/// (RemoteHost) raises the same PlasmaError the local VM manager would.
public enum ErrorMapping {
    /// The metadata key carrying PlasmaError.Code's name ("launchFailed", "qmp", …).
    public static let codeKey = "plasmavmc-error-code"

    public static func rpcCode(for code: PlasmaError.Code) -> RPCError.Code {
        switch code {
        case .notFound: return .notFound
        case .invalidArgument: return .invalidArgument
        case .alreadyExists: return .alreadyExists
        case .invalidState: return .failedPrecondition
        case .timeout: return .deadlineExceeded
        case .unavailable: return .unavailable
        default: return .internalError
        }
    }

    /// What a handler throws for `error`.
    public static func rpcError(_ error: any Error) -> RPCError {
        if let e = error as? RPCError { return e }
        let p: PlasmaError
        if let e = error as? PlasmaError {
            p = e
        } else if error is CancellationError {
            return RPCError(code: .cancelled, message: "cancelled")
        } else {
            p = PlasmaError(.internal, "unexpected error: \(error)")
        }
        var metadata = Metadata()
        metadata.addString(p.code.name, forKey: codeKey)
        return RPCError(code: rpcCode(for: p.code), message: p.description, metadata: metadata)
    }

    static let plasmaCodes: [String: PlasmaError.Code] = Dictionary(uniqueKeysWithValues:
        [PlasmaError.Code.notFound, .invalidArgument, .alreadyExists, .invalidState, .launchFailed,
         .qmp, .timeout, .unavailable, .internal].map { ($0.name, $0) })

    /// The PlasmaError a client raises for a failed call to `address`.
    public static func plasmaError(_ error: any Error, address: String) -> PlasmaError {
        if let p = error as? PlasmaError { return p }
        if error is CancellationError { return PlasmaError(.timeout, "cancelled") }
        guard let rpc = error as? RPCError else {
            return PlasmaError(.internal, "\(address): \(error)")
        }
        if let name = rpc.metadata[stringValues: codeKey].first(where: { _ in true }),
           let code = plasmaCodes[name] {
            return PlasmaError(code, rpc.message)
        }
        // Not from a plasmavmc handler: the transport's own failures say which host.
        let code: PlasmaError.Code
        switch rpc.code {
        case .notFound: code = .notFound
        case .invalidArgument, .outOfRange: code = .invalidArgument
        case .alreadyExists: code = .alreadyExists
        case .failedPrecondition: code = .invalidState
        case .deadlineExceeded, .cancelled: code = .timeout
        case .unavailable, .resourceExhausted: code = .unavailable
        default: code = .internal
        }
        var message = rpc.message
        if let cause = rpc.cause { message += " (\(cause))" }
        return PlasmaError(code, "\(address): \(rpc.code): \(message)")
    }
}
