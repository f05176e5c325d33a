import Foundation
import PlasmaTestSupport
import Testing

/// The REPL and the console in a real pseudo-terminal (tmux), as a person types.
@Suite("REPL and console in a terminal", .serialized,
       .enabled(if: FileManager.default.isExecutableFile(atPath: "/usr/bin/tmux"), "needs tmux"))
struct TerminalTests {
    let base = CLITests()

    func replSession(_ runtime: TestRuntime, history: String) throws -> TmuxSession {
        try TmuxSession("\(CLIRunner.executable) repl", environment: [
            "PLASMAVMC_RUNTIME_DIR": runtime.root, "PLASMAVMC_HISTORY": history,
        ])
    }

    /// Types `line` and Enter, then waits for the next prompt, so nothing is typed ahead while
    /// the REPL is busy (type-ahead is echoed by the terminal out of place).
    func enter(_ t: TmuxSession, _ line: String) async throws {
        let before = try t.screen().components(separatedBy: "plasmavmc>").count
        try t.type(line + "\n")
        for _ in 0..<400 {
            let screen = try t.screen()
            if screen.components(separatedBy: "plasmavmc>").count > before, screen.hasSuffix("plasmavmc>") { return }
            try await Task.sleep(for: .milliseconds(50))
        }
        throw PlasmaTestError("no prompt after \(line)")
    }

    @Test func lineEditingCompletionHistoryAndCtrlC() async throws {
        try await base.withCLI { (cli: CLIRunner, runtime: TestRuntime) async throws in
            let history = runtime.root + "/.history"
            let t = try replSession(runtime, history: history)
            defer { t.kill() }
            try await t.waitFor("plasmavmc>")
            // Completion of a table field.
            try t.type("vm.cr")
            try t.send("Tab")
            try await t.waitFor("plasmavmc> vm.create")
            try t.send("C-u")
            // Line editing: type, move left, insert.
            try t.type("1 + 4")
            try t.send("Left", "Left", "Left", "Left")
            try t.type("3")
            try t.send("Enter")
            try await t.waitFor("plasmavmc> 13 + 4\n17")
            // Methods of a VM object: v:st<Tab><Tab> lists start, status, stop.
            try await enter(t, "v = vm.get")
            try await enter(t, "s = 'x'")
            try t.type("s:up")
            try t.send("Tab")
            try await t.waitFor("plasmavmc> s:upper")
            try t.send("C-u")
            // A completion on a nil value offers nothing and breaks nothing.
            try t.type("nothing.fi")
            try t.send("Tab")
            try t.send("C-u")
            // Ctrl-C stops a long call and the prompt comes back.
            try t.type("sleep(60)\n")
            // A Ctrl-C that lands before the call starts is ignored at the prompt: repeat it
            // until the call reports the interruption.
            for _ in 0..<40 where try !t.screen().contains("error: interrupted") {
                try await Task.sleep(for: .milliseconds(250))
                try t.send("C-c")
            }
            try await t.waitFor("error: interrupted (Ctrl-C); the session goes on")
            try await enter(t, "'after' .. '!'")
            try await t.waitFor("\"after!\"")
            // Ctrl-C at the prompt abandons the half-typed line, also inside a multi-line statement.
            try t.type("half typed")
            try t.send("C-c")
            try t.type("for i = 1, 2 do\n")
            try t.send("C-c")
            try t.type("6 * 7\n")
            let afterCancel = try await t.waitFor("\n42")
            #expect(!afterCancel.contains("error: stdin"), "\(afterCancel)")
            // History: Up brings back the last line.
            try t.send("Up")
            try await t.waitFor("plasmavmc> 6 * 7")
            try t.send("C-u", "C-d")
            for _ in 0..<100 where t.isRunning { try await Task.sleep(for: .milliseconds(50)) }
            #expect(!t.isRunning, "Ctrl-D leaves")
            let saved = String(decoding: FileManager.default.contents(atPath: history) ?? Data(), as: UTF8.self)
            #expect(saved.contains("sleep(60)"))
        }
    }

    @Test(.enabled(if: TestGuest.isAvailable, "needs QEMU and the test guest"))
    func vmMethodsCompleteOnAVMObject() async throws {
        try await base.withCLI { (cli: CLIRunner, runtime: TestRuntime) async throws in
            #expect(try await cli.run(["create", "tc", "--kernel", TestGuest.kernel, "--initrd", TestGuest.initrd, "--accel", "tcg"]).status == 0)
            let t = try replSession(runtime, history: runtime.root + "/.history")
            defer { t.kill() }
            try await t.waitFor("plasmavmc>")
            try await enter(t, "v = vm.get('tc')")
            try t.type("v:st")
            try t.send("Tab", "Tab")
            let screen = try await t.waitFor("stop")
            #expect(screen.contains("start") && screen.contains("status") && screen.contains("stop"), "\(screen)")
            try t.send("C-u", "C-d")
            for _ in 0..<100 where t.isRunning { try await Task.sleep(for: .milliseconds(50)) }
            #expect(try await cli.run("delete", "tc", "--force").status == 0)
        }
    }

    @Test(.enabled(if: TestGuest.isAvailable, "needs QEMU and the test guest"))
    func consoleAttachesRunsACommandAndDetaches() async throws {
        try await base.withCLI { (cli: CLIRunner, runtime: TestRuntime) async throws in
            #expect(try await cli.run(["create", "con", "--kernel", TestGuest.kernel, "--initrd", TestGuest.initrd,
                                       "--append", "quiet", "--accel", "tcg"]).status == 0)
            #expect(try await cli.run("start", "con").status == 0)
            _ = try await waitForConsole(runtime.root + "/con/console.log", contains: TestGuest.readyLine)
            let t = try TmuxSession("\(CLIRunner.executable) console con", environment: ["PLASMAVMC_RUNTIME_DIR": runtime.root])
            defer { t.kill() }
            let attached = try await t.waitFor("detach with Ctrl-]")
            #expect(attached.contains(TestGuest.readyLine), "the recent log is replayed first")
            try t.type("echo console-says-$((6 * 7))\n")
            try await t.waitFor("console-says-42")
            try t.send("C-]")
            for _ in 0..<100 where t.isRunning { try await Task.sleep(for: .milliseconds(50)) }
            #expect(!t.isRunning, "Ctrl-] detaches")
            // The VM runs on, and its log has what was typed.
            #expect(try await cli.run("status", "con").firstLine == "running")
            #expect(try await cli.run("logs", "con").stdout.contains("console-says-42"))
            #expect(try await cli.run("stop", "con").status == 0)
            let stopped = try await cli.run("console", "con")
            base.expectError(stopped, status: 4, "vm 'con' is stopped: its console is not there; start it first")
            #expect(try await cli.run("delete", "con").status == 0)
            base.expectError(try await cli.run("console", "con"), status: 3, "vm 'con' does not exist")
        }
    }
}

struct PlasmaTestError: Error, CustomStringConvertible {
    var description: String
    init(_ d: String) { description = d }
}
