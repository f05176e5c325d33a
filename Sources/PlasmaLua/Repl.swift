import CLua
import CLuaShim
import CPlasmaEdit
import Foundation
import PlasmaVMM

/// The interactive loop: the plan session's `vm` API, expressions printed, multi-line input,
/// libedit line editing with history and completion when stdin is a terminal, plain lines
/// (no prompt) otherwise. Runs on a thread of its own, which alone touches the Lua state and
/// libedit.
public final class Repl: Sendable {
    public struct Options: Sendable {
        /// Code to evaluate instead of reading stdin (-e).
        public var code: String?
        /// Line editing, prompts, history: stdin is a terminal.
        public var interactive: Bool
        public var historyPath: String?

        public init(code: String? = nil, interactive: Bool, historyPath: String?) {
            self.code = code
            self.interactive = interactive
            self.historyPath = historyPath
        }
    }

    let session: LuaSession
    let options: Options

    /// A REPL whose `vm` drives `host` (the caller keeps and closes it); `connector` lets it
    /// reach other hosts with `vm.connect`, which are closed when it ends.
    public init(host: any VMHost, connector: HostConnector? = nil, plan: PlanOptions, options: Options) {
        session = LuaSession(host: host, connector: connector, options: plan)
        self.options = options
    }

    /// A REPL on the local VM manager, reaching no other host.
    public convenience init(manager: VMManager, plan: PlanOptions, options: Options) {
        self.init(host: manager, plan: plan, options: options)
    }

    /// Ctrl-C: stops the running call, if any; at the prompt, abandons the line being typed.
    /// The REPL goes on either way.
    public func interrupt() {
        if !session.interrupt("interrupted (Ctrl-C)"), options.interactive { plasma_edit_cancel_line() }
    }

    /// Runs until end of input. Returns the exit status: 0, or 1 when an input failed while
    /// not interactive.
    public func run() async -> Int32 {
        await onLuaThread(named: "lua-repl") { [self] in loop() }
    }

    private func loop() -> Int32 {
        if let error = session.open() ?? session.load(library: EmbeddedLua.repl, name: "=plasma.repl") {
            FileHandle.standardError.write(Data("plasmavmc: error: \(error)\n".utf8))
            return 1
        }
        let status = session_loop()
        session.close()
        // Ephemeral VMs that could not be removed are named, and the session fails.
        for failure in session.cleanupFailures { report(failure.message) }
        return session.cleanupFailures.isEmpty ? status : 1
    }

    private func session_loop() -> Int32 {
        var failed = false
        if let code = options.code {
            return evaluate(code) == .failed ? 1 : 0
        }
        if options.interactive {
            plasma_edit_init("plasmavmc", completeCallback, Unmanaged.passUnretained(self).toOpaque())
            if let h = options.historyPath { _ = plasma_edit_read_history(h) }
            print("plasmavmc repl: Lua 5.4 with the vm API; help() lists it, Ctrl-D leaves.")
            fflush(nil)
        }
        var buffer = ""
        while true {
            let prompt = buffer.isEmpty ? "plasmavmc> " : ">> "
            guard let line = readLine(prompt: prompt) else { break }
            if options.interactive, plasma_edit_take_cancel() != 0 {
                buffer = ""
                continue
            }
            buffer = buffer.isEmpty ? line : buffer + "\n" + line
            if buffer.trimmingCharacters(in: .whitespaces).isEmpty {
                buffer = ""
                continue
            }
            let result = evaluate(buffer)
            if result == .incomplete { continue }
            if options.interactive, let h = options.historyPath {
                plasma_edit_add_history(buffer)
                _ = plasma_edit_write_history(h, 1000)
            }
            if result == .failed { failed = true }
            buffer = ""
        }
        if !buffer.isEmpty {
            report("incomplete input at end: \(buffer.split(separator: "\n").last ?? "")")
            failed = true
        }
        if options.interactive { print("") }
        return failed && !options.interactive ? 1 : 0
    }

    private func readLine(prompt: String) -> String? {
        if options.interactive {
            guard let p = plasma_edit_readline(prompt) else { return nil }
            defer { free(p) }
            return String(cString: p)
        }
        return Swift.readLine(strippingNewline: true)
    }

    enum Evaluation { case done, failed, incomplete }

    /// Compiles `source` as an expression (`return …`, as lua.c does) or else as statements,
    /// and runs it through the scheduler, printing what it returns.
    private func evaluate(_ source: String) -> Evaluation {
        let chunk = options.code == nil ? "=stdin" : "=(command line)"
        if session.compile("return " + source, chunkName: chunk) != nil {
            if let error = session.compile(source, chunkName: chunk) {
                if error.hasSuffix("<eof>") && options.code == nil { return .incomplete }
                report(error)
                return .failed
            }
        }
        let L = session.L!
        lua_getglobal(L, "__repl")
        lua_getfield(L, -1, "wrap")
        plasma_remove(L, -2)
        plasma_insert(L, -2)
        guard plasma_pcall_traceback(L, 1, 1) == LUA_OK else {
            report(LuaStack.describe(L, -1))
            plasma_pop(L, 1)
            return .failed
        }
        let outcome = session.run()
        fflush(nil)
        if outcome.kind == .success || outcome.kind == .returnedFalse { return .done }
        var message = Self.withoutTraceback(outcome.message ?? "failed")
        if outcome.kind == .interrupted { message = "interrupted (Ctrl-C); the session goes on" }
        report(message)
        return .failed
    }

    private func report(_ message: String) {
        fflush(nil)
        FileHandle.standardError.write(Data("error: \(message)\n".utf8))
    }

    static func withoutTraceback(_ message: String) -> String {
        guard let r = message.range(of: "\nstack traceback:") else { return message }
        return String(message[..<r.lowerBound])
    }

    /// Completion candidates from the Lua side, as libedit wants them.
    fileprivate func complete(_ text: String) -> [String] {
        let L = session.L!
        lua_getglobal(L, "__repl")
        lua_getfield(L, -1, "complete")
        plasma_remove(L, -2)
        LuaStack.pushString(L, text)
        guard plasma_pcall_traceback(L, 1, 1) == LUA_OK else {
            plasma_pop(L, 1)
            return []
        }
        defer { plasma_pop(L, 1) }
        guard case .array(let items) = LuaStack.value(L, -1) else { return [] }
        return items.compactMap(\.string)
    }
}

private let completeCallback: plasma_complete_fn = { text, _, ctx in
    let repl = Unmanaged<Repl>.fromOpaque(ctx!).takeUnretainedValue()
    let candidates = repl.complete(String(cString: text!))
    guard let first = candidates.first else { return nil }
    var prefix = first
    for c in candidates.dropFirst() {
        while !c.hasPrefix(prefix) { prefix.removeLast() }
    }
    // libedit reads matches[0] (the replacement) and matches[1], matches[2]: a single match is
    // given as [match, match, NULL] so it is taken as complete.
    let entries = [candidates.count == 1 ? first : prefix] + candidates
    let array = UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>.allocate(capacity: entries.count + 1)
    for (i, e) in entries.enumerated() { array[i] = strdup(e) }
    array[entries.count] = nil
    return array
}
