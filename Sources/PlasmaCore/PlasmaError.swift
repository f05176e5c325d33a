/// The error every module boundary speaks: a code a program can branch on and a message a
/// person can act on. Messages name the thing and the way out.
public struct PlasmaError: Error, Sendable, Equatable, CustomStringConvertible {
    /// What kind of failure this is. Extensible: new codes can be added without breaking callers.
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        public let name: String
        private init(_ name: String) { self.name = name }
        /// The VM (or file) named does not exist.
        public static let notFound = Code("notFound")
        /// The input is malformed or out of range.
        public static let invalidArgument = Code("invalidArgument")
        /// The thing exists already.
        public static let alreadyExists = Code("alreadyExists")
        /// The operation is not legal in the VM's current state.
        public static let invalidState = Code("invalidState")
        /// The hypervisor process could not be started or died while starting.
        public static let launchFailed = Code("launchFailed")
        /// QMP answered with an error or broke down.
        public static let qmp = Code("qmp")
        /// Something did not happen within its deadline.
        public static let timeout = Code("timeout")
        /// A needed resource (QEMU binary, KVM, a lock) is not available.
        public static let unavailable = Code("unavailable")
        /// A bug or an unexpected system failure.
        public static let `internal` = Code("internal")
        public var description: String { name }
    }

    public var code: Code
    public var message: String
    /// The lower-level error's description, when there was one.
    public var cause: String?

    public init(_ code: Code, _ message: String, cause: String? = nil) {
        self.code = code
        self.message = message
        self.cause = cause
    }

    public var description: String {
        if let cause, !cause.isEmpty { return "\(message) (\(cause))" }
        return message
    }
}
