import CLua
import CLuaShim
import Foundation
import PlasmaVMM

/// Runs one plan in a session of its own, on a thread of its own.
public final class PlanRunner: Sendable {
    let session: LuaSession
    let options: PlanOptions

    public init(manager: VMManager, options: PlanOptions) {
        self.options = options
        self.session = LuaSession(manager: manager, options: options)
    }

    /// Stops the plan (Ctrl-C, --timeout); cleanup still runs.
    public func interrupt(_ why: String) { session.interrupt(why) }

    /// Runs the plan to its end and cleans up: ephemeral VMs (and VMs deleted by `<close>` on
    /// an error path) are removed on every exit path unless --keep-on-failure keeps them.
    public func run() async -> PlanOutcome {
        await withCheckedContinuation { (c: CheckedContinuation<PlanOutcome, Never>) in
            let thread = Thread { [self] in c.resume(returning: self.runHere()) }
            thread.name = "lua-plan"
            thread.stackSize = 16 << 20
            thread.start()
        }
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
                session.interrupt("timed out after \(formatSeconds(seconds)) (--timeout)")
            }
        }
        let outcome = session.run(arguments: options.arguments)
        let keep = options.keepOnFailure && outcome.kind != .success
        let created = session.close(keep: keep)
        return PlanOutcome(kind: outcome.kind, message: outcome.message, keptVMs: keep ? created : [])
    }
}
