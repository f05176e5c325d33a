import ArgumentParser
import CPlasmaSys
import Foundation
import PlasmaKVM
import PlasmaLua
import PlasmaVMM

struct ReplCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "repl",
        abstract: "Interactive Lua with the vm API (line editing, history, Tab completion).",
        discussion: """
            Expressions print their values; an incomplete statement continues on the next line; \
            Ctrl-C stops a running call; Ctrl-D leaves. VMs created here outlive the session \
            unless created with ephemeral=true. When stdin is not a terminal, lines are read \
            without prompts and the exit status is 1 if any input failed. History: \
            $PLASMAVMC_HISTORY, else $XDG_STATE_HOME/plasmavmc/history, else \
            ~/.local/state/plasmavmc/history.
            """)

    @OptionGroup var global: GlobalOptions
    @Option(name: .short, help: "Evaluate CODE, print its values and exit.") var e: String?

    func run() async throws {
        signal(SIGPIPE, SIG_IGN)
        let interactive = e == nil && isatty(0) != 0
        let plan = PlanOptions(source: "", chunkName: "=stdin", planDirectory: FileManager.default.currentDirectoryPath,
                               scriptName: "repl", stdlibPath: Stdlib.path)
        let host = try await global.connect()
        let repl = Repl(host: host, connector: remoteConnector, plan: plan,
                        options: .init(code: e, interactive: interactive, historyPath: interactive ? Self.historyPath() : nil))
        let signals = SignalForwarder { _ in repl.interrupt() }
        let status = await repl.run()
        withExtendedLifetime(signals) {}
        await host.close()
        if status != 0 { throw ExitCode(status) }
    }

    static func historyPath() -> String? {
        let env = ProcessInfo.processInfo.environment
        if let p = env["PLASMAVMC_HISTORY"], !p.isEmpty { return p }
        let state = env["XDG_STATE_HOME"].flatMap { $0.isEmpty ? nil : $0 }
            ?? (env["HOME"].map { $0 + "/.local/state" } ?? NSHomeDirectory() + "/.local/state")
        let dir = state + "/plasmavmc"
        try? FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        return dir + "/history"
    }
}

struct Console: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "console",
        abstract: "Attach the terminal to a VM's serial console; Ctrl-] detaches.",
        discussion: """
            The recent console log is shown first. One terminal can be attached at a time; \
            anyone can read the log meanwhile (plasmavmc logs).
            """)

    @OptionGroup var target: VMTarget
    @Option(help: "Bytes of the console log to replay first.") var replay: Int = 2048

    func run() async throws {
        let name = try parseName(target.name)
        try await target.global.withHost { try await attach(name, on: $0) }
    }

    private func attach(_ name: VMName, on host: any VMHost) async throws {
        let status = try await host.status(name)
        guard status.pid != nil, status.state != .stopped else {
            throw PlasmaError(.invalidState, "vm '\(name)' is \(status.state): its console is not there; start it first")
        }
        // The log holds the shell's cursor-position queries (ESC[6n); replayed, they would make
        // the terminal answer into the guest's input.
        let recent = try await host.consoleLog(name, maxBytes: max(0, replay))
            .replacingOccurrences(of: "\u{1b}[6n", with: "")
        FileHandle.standardOutput.write(Data(recent.utf8))
        let fd = try await host.consoleConnection(name)
        FileHandle.standardError.write(Data("\r\n[attached to vm '\(name)' serial console; detach with Ctrl-]]\r\n".utf8))
        let outcome = await withCheckedContinuation { (c: CheckedContinuation<String?, Never>) in
            let t = Thread { c.resume(returning: ConsoleAttachment(fd: fd).run()) }
            t.name = "console"
            t.start()
        }
        if let error = outcome {
            throw PlasmaError(.unavailable, "vm '\(name)': \(error)")
        }
    }
}

/// Copies stdin to the console socket and the socket to stdout until Ctrl-], end of input
/// or the VM going away. The socket is read all the time: an unread console stalls the guest.
struct ConsoleAttachment {
    /// A connected console socket (from `VMHost.consoleConnection`); closed by `run`.
    let fd: Int32
    static let detachKey: UInt8 = 0x1d

    /// nil when detached normally, else what went wrong.
    func run() -> String? {
        defer { close(fd) }
        let tty = isatty(0) != 0
        var saved = termios()
        if tty {
            tcgetattr(0, &saved)
            var raw = saved
            cfmakeraw(&raw)
            tcsetattr(0, TCSANOW, &raw)
        }
        defer {
            if tty { tcsetattr(0, TCSANOW, &saved) }
            FileHandle.standardError.write(Data("\r\n[detached]\r\n".utf8))
        }
        var buf = [UInt8](repeating: 0, count: 4096)
        var stdinOpen = true
        var drainUntil: ContinuousClock.Instant?
        while true {
            var fds = [pollfd(fd: fd, events: Int16(POLLIN), revents: 0),
                       pollfd(fd: stdinOpen ? 0 : -1, events: Int16(POLLIN), revents: 0)]
            let r = poll(&fds, 2, 100)
            if r < 0 && errno != EINTR { return "poll failed: \(String(cString: strerror(errno)))" }
            if fds[0].revents != 0 {
                let n = buf.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
                if n <= 0 { return nil }  // QEMU went away: the VM stopped
                _ = buf.withUnsafeBytes { write(1, $0.baseAddress, n) }
            }
            if stdinOpen, fds[1].revents != 0 {
                let n = buf.withUnsafeMutableBytes { read(0, $0.baseAddress, $0.count) }
                if n <= 0 {
                    // End of input (not a terminal): show what the guest still answers, then leave.
                    stdinOpen = false
                    drainUntil = ContinuousClock.now + .milliseconds(500)
                } else if let k = buf[0..<n].firstIndex(of: Self.detachKey) {
                    if k > 0 { _ = buf.withUnsafeBytes { send(fd, $0.baseAddress, k, Int32(MSG_NOSIGNAL)) } }
                    return nil
                } else {
                    _ = buf.withUnsafeBytes { send(fd, $0.baseAddress, n, Int32(MSG_NOSIGNAL)) }
                }
            }
            if let drainUntil, ContinuousClock.now >= drainUntil { return nil }
        }
    }
}
