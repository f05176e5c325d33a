import CPlasmaSys
import Foundation

/// A program running in a real pseudo-terminal (a private tmux server), for testing line
/// editing, completion, Ctrl-C and raw-mode consoles as a person at a terminal meets them.
public final class TmuxSession: Sendable {
    public let socket: String
    let name = "t"

    /// Starts `command` (a shell command line) in a 120x40 terminal with `environment` added.
    public init(_ command: String, environment: [String: String] = [:]) throws {
        socket = "plasmavmc-test-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        let env = environment.map { "\($0.key)=\(Self.shellQuote($0.value))" }.joined(separator: " ")
        try tmux(["new-session", "-d", "-s", name, "-x", "120", "-y", "40", "env \(env) \(command)"])
    }

    /// Runs the tmux client with posix_spawn (Foundation's Process would wait for the tmux
    /// server, which inherits its descriptors) and returns what it printed.
    @discardableResult
    func tmux(_ args: [String]) throws -> String {
        let tmp = try TempDir(prefix: "tmx")
        defer { tmp.remove() }
        let outPath = tmp.path + "/out"
        let fd = open(outPath, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw SupportError("cannot open \(outPath)") }
        let argv = ["/usr/bin/tmux", "-L", socket] + args
        let cArgs = argv.map { strdup($0) } + [nil]
        defer { cArgs.forEach { free($0) } }
        var pid: pid_t = 0
        let rc = cArgs.withUnsafeBufferPointer { plasma_spawn(argv[0], $0.baseAddress, -1, fd, -1, 0, &pid) }
        close(fd)
        guard rc == 0 else { throw SupportError("cannot run tmux: \(rc)") }
        var exited: Int32 = 0, code: Int32 = 0
        _ = plasma_waitpid(pid, 0, &exited, &code)
        return String(decoding: FileManager.default.contents(atPath: outPath) ?? Data(), as: UTF8.self)
    }

    /// tmux key names ("Tab", "C-c", "Enter", "Left") or literal text.
    public func send(_ keys: String...) throws { try tmux(["send-keys", "-t", name] + keys) }

    /// Literal text, no key-name lookup.
    public func type(_ text: String) throws { try tmux(["send-keys", "-t", name, "-l", text]) }

    /// The visible screen, trailing blank lines removed.
    public func screen() throws -> String {
        let s = try tmux(["capture-pane", "-t", name, "-p"])
        return s.split(separator: "\n", omittingEmptySubsequences: false)
            .map { String($0) }.reversed().drop { $0.trimmingCharacters(in: .whitespaces).isEmpty }
            .reversed().joined(separator: "\n")
    }

    /// Waits until the screen contains `text`; returns the screen.
    @discardableResult
    public func waitFor(_ text: String, timeout: Duration = .seconds(20)) async throws -> String {
        let clock = ContinuousClock()
        let deadline = clock.now + timeout
        while true {
            let s = try screen()
            if s.contains(text) { return s }
            if clock.now >= deadline { throw SupportError("'\(text)' did not appear on the terminal; screen:\n\(s)") }
            try await Task.sleep(for: .milliseconds(50))
        }
    }

    /// Whether the program is still running.
    public var isRunning: Bool {
        ((try? tmux(["list-sessions"])) ?? "").contains("\(name):")
    }

    public func kill() { _ = try? tmux(["kill-server"]) }

    deinit { kill() }

    static func shellQuote(_ s: String) -> String { "'" + s.replacingOccurrences(of: "'", with: "'\\''") + "'" }
}
