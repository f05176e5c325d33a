import CLua
import CLuaShim
import Foundation
import PlasmaVMM

/// How to run one plan.
public struct PlanOptions: Sendable {
    /// Lua source of the plan.
    public var source: String
    /// Chunk name for messages: "@path/plan.lua" for a file, "=(command line)" for -e.
    public var chunkName: String
    /// Folder searched first by `require` (the plan's folder).
    public var planDirectory: String
    /// `arg[0]`.
    public var scriptName: String
    /// `arg[1…]`, also passed as `...` to the plan.
    public var arguments: [String]
    /// Bound on the whole plan.
    public var timeout: Duration?
    /// Leave the VMs of a failed plan (ephemeral ones included) for inspection.
    public var keepOnFailure: Bool
    /// Folder of the Lua standard library (stdlib/), if found.
    public var stdlibPath: String?
    /// More folders for `require`, after the plan's (e.g. the folders of test files).
    public var searchFolders: [String] = []

    public init(source: String, chunkName: String, planDirectory: String, scriptName: String,
                arguments: [String] = [], timeout: Duration? = nil, keepOnFailure: Bool = false,
                stdlibPath: String? = nil) {
        self.source = source
        self.chunkName = chunkName
        self.planDirectory = planDirectory
        self.scriptName = scriptName
        self.arguments = arguments
        self.timeout = timeout
        self.keepOnFailure = keepOnFailure
        self.stdlibPath = stdlibPath
    }
}

/// How a plan ended.
public struct PlanOutcome: Sendable {
    public enum Kind: Sendable, Equatable {
        case success
        /// The plan returned false (e.g. a test run with failures).
        case returnedFalse
        /// The plan returned an integer exit status.
        case exitStatus(Int32)
        case syntaxError
        case runtimeError
        /// --timeout ended it (exit 5).
        case timedOut
        /// SIGINT, Ctrl-C (exit 130).
        case interrupted
        /// SIGTERM (exit 143).
        case terminated
    }
    public var kind: Kind
    /// The error and its traceback, for stderr.
    public var message: String?
    /// VMs left for inspection after a failure (--keep-on-failure): their names, and the same
    /// with their hosts in `kept`.
    public var keptVMs: [String]
    public var kept: [HostedVM] = []
    /// Ephemeral and `<close>` VMs that could not be removed at the end, with the reason.
    public var cleanupFailures: [CleanupFailure] = []
}

/// Runs one plan in a session of its own, on a thread of its own.
public final class PlanRunner: Sendable {
    let session: LuaSession
    let options: PlanOptions

    /// A plan whose `vm` drives `host` (the caller keeps and closes it); `connector` lets it
    /// reach other hosts with `vm.connect`, which are closed when the plan ends.
    public init(host: any VMHost, connector: HostConnector? = nil, options: PlanOptions) {
        self.options = options
        self.session = LuaSession(host: host, connector: connector, options: options)
    }

    /// A plan on the local VM manager, reaching no other host.
    public convenience init(manager: VMManager, options: PlanOptions) {
        self.init(host: manager, options: options)
    }

    /// Stops the plan (Ctrl-C, --timeout); cleanup still runs.
    public func interrupt(_ why: String, as kind: PlanOutcome.Kind = .interrupted) { session.interrupt(why, as: kind) }

    /// The last resort when the plan does not end (a second Ctrl-C or SIGTERM): kills the
    /// QEMU of the plan's ephemeral VMs and tries to remove them within `deadline`, from any
    /// thread. Returns the VMs that are left. The caller then exits.
    public func abandon(within deadline: Duration) -> [CleanupFailure] { session.abandon(within: deadline) }

    /// Runs the plan to its end and cleans up: ephemeral VMs (and VMs deleted by `<close>` on
    /// an error path) are removed on every exit path unless --keep-on-failure keeps them.
    public func run() async -> PlanOutcome {
        await onLuaThread(named: "lua-plan") { [self] in runHere() }
    }

    private func runHere() -> PlanOutcome {
        if let error = session.open() {
            return PlanOutcome(kind: .runtimeError, message: error, keptVMs: [])
        }
        // Compile before anything runs: a syntax error creates no VM.
        if let error = session.compile(options.source, chunkName: options.chunkName) {
            session.close()
            return PlanOutcome(kind: .syntaxError, message: error, keptVMs: [])
        }
        if let timeout = options.timeout {
            let seconds = Double(timeout.components.seconds) + Double(timeout.components.attoseconds) / 1e18
            DispatchQueue.global().asyncAfter(deadline: .now() + seconds) { [session] in
                // The timer can fire before the run has begun (a loaded machine): retry until
                // the interrupt lands or the run has ended, so a timeout is never lost.
                while !session.interrupt("timed out after \(formatSeconds(seconds)) (--timeout)", as: .timedOut),
                      !session.hasEnded {
                    usleep(5_000)
                }
            }
        }
        let outcome = session.run(arguments: options.arguments)
        let keep = options.keepOnFailure && outcome.kind != .success
        let created = session.close(keep: keep)
        return PlanOutcome(kind: outcome.kind, message: outcome.message, keptVMs: keep ? created.map(\.name) : [],
                           kept: keep ? created : [], cleanupFailures: session.cleanupFailures)
    }
}
