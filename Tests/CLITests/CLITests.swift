import Foundation
import PlasmaTestSupport
import Testing

/// The `plasmavmc` executable as a user runs it: exit codes, first lines, one-line errors.
@Suite("plasmavmc CLI", .serialized)
struct CLITests {
    /// Runs `body` with a runner over a private runtime dir; checks nothing is left behind.
    func withCLI(env: [String: String] = [:], _ body: (CLIRunner, TestRuntime) async throws -> Void) async throws {
        let left = try await TestRuntime.around { runtime in
            try await body(CLIRunner(runtimeDir: runtime.root, environment: env), runtime)
        }
        #expect(left.folders.isEmpty, "VM folders left behind: \(left.folders)")
        #expect(left.processes.isEmpty, "processes left behind: \(left.processes)")
    }

    func expectError(_ r: CLIRunner.Result, status: Int32, _ text: String,
                     sourceLocation: SourceLocation = #_sourceLocation) {
        #expect(r.status == status, "exit \(r.status), stderr: \(r.stderr)", sourceLocation: sourceLocation)
        #expect(r.errorLine.contains(text), "stderr: \(r.stderr)", sourceLocation: sourceLocation)
        #expect(r.stdout.isEmpty, "stdout: \(r.stdout)", sourceLocation: sourceLocation)
    }

    var guestArgs: [String] {
        ["--kernel", TestGuest.kernel, "--initrd", TestGuest.initrd, "--append", "quiet", "--accel", "tcg"]
    }

    // MARK: usage and bad input (no QEMU needed)

    @Test func helpListsEveryVerbAndTheExitCodes() async throws {
        try await withCLI { (cli: CLIRunner, _: TestRuntime) async throws in
            let r = try await cli.run("--help")
            #expect(r.status == 0)
            for verb in ["create", "start", "status", "stop", "kill", "pause", "resume", "delete", "ls", "logs"] {
                #expect(r.stdout.contains("  \(verb)"), "missing \(verb)")
            }
            #expect(r.stdout.contains("2 bad usage or invalid input"))
        }
    }

    @Test func unknownVerbAndMissingArgumentAreUsageErrors() async throws {
        try await withCLI { (cli: CLIRunner, _: TestRuntime) async throws in
            #expect(try await cli.run("frobnicate").status == 2)
            #expect(try await cli.run("status").status == 2)
            #expect(try await cli.run("create", "x", "--cpus", "many").status == 2)
        }
    }

    @Test(arguments: [
        (["create", "a/b", "--kernel", "/k"], "contains '/'"),
        (["create", "..", "--kernel", "/k"], "contains '..'"),
        (["create", "my vm", "--kernel", "/k"], "contains a space"),
        (["create", String(repeating: "n", count: 64), "--kernel", "/k"], "64 characters long"),
        (["create", "m", "--kernel", "/k", "--memory", "abc"], "memory must be a size like \"256M\" or \"1G\", got \"abc\""),
        (["create", "m", "--kernel", "/k", "--memory", "0"], "got \"0\""),
        (["create", "m", "--kernel", "/k", "--memory", "-1M"], "got \"-1M\""),
        (["create", "m", "--kernel", "/k", "--cpus", "0"], "cpus must be between 1 and 255, got 0"),
        (["create", "m", "--kernel", "/nonexistent/vmlinuz"], "kernel /nonexistent/vmlinuz does not exist"),
        (["create", "m"], "nothing to boot"),
        (["create", "m", "--kernel", "/k", "--accel", "hvf"], "accel must be auto, kvm or tcg"),
        (["create", "m", "--kernel", "/k", "--net", "user,hostfwd=bogus"], "hostfwd must look like"),
        (["stop", "m", "--timeout", "-1"], "--timeout must be"),
        (["status", "bad/name"], "invalid vm name"),
    ])
    func badInputIsExit2WithOneLine(_ args: [String], _ message: String) async throws {
        try await withCLI { (cli: CLIRunner, _: TestRuntime) async throws in
            let r = try await cli.run(args)
            expectError(r, status: 2, message)
            #expect(r.stderr.split(separator: "\n").count == 1, "one line: \(r.stderr)")
        }
    }

    @Test func memoryBeyondTheHostIsExit2() async throws {
        try await withCLI { (cli: CLIRunner, _: TestRuntime) async throws in
            expectError(try await cli.run(["create", "big", "--memory", "64T"] + guestArgs), status: 2,
                        "is more than this host has")
        }
    }

    @Test(arguments: ["status", "start", "stop", "kill", "pause", "resume", "delete", "logs"])
    func unknownVMIsExit3(_ verb: String) async throws {
        try await withCLI { (cli: CLIRunner, _: TestRuntime) async throws in
            expectError(try await cli.run(verb, "ghost"), status: 3, "vm 'ghost' does not exist; see plasmavmc ls")
        }
    }

    @Test func runtimeDirTooLongForASocketIsExit2() async throws {
        try await withCLI { (cli: CLIRunner, runtime: TestRuntime) async throws in
            let deep = runtime.root + "/" + String(repeating: "d", count: 90)
            let r = try await cli.run(["create", "x", "--runtime-dir", deep] + guestArgs)
            expectError(r, status: 2, "longer than a unix socket path may be")
        }
    }

    @Test func missingQEMUIsExit6() async throws {
        try await withCLI(env: ["PLASMAVMC_QEMU": "/nonexistent/qemu"]) { (cli: CLIRunner, _: TestRuntime) async throws in
            expectError(try await cli.run(["create", "x"] + guestArgs), status: 6,
                        "QEMU binary /nonexistent/qemu is missing or not executable")
        }
    }

    @Test func emptyListPrintsOnlyTheHeader() async throws {
        try await withCLI { (cli: CLIRunner, _: TestRuntime) async throws in
            let r = try await cli.run("ls")
            #expect(r.status == 0)
            #expect(r.stdout == "NAME  STATE  PID  ACCEL  REASON\n")
            #expect(try await cli.run("ls", "--json").stdout == "[]\n")
        }
    }
}

/// The CLI against real QEMU and the test guest.
@Suite("plasmavmc CLI with real QEMU", .serialized, .enabled(if: TestGuest.isAvailable, "needs QEMU and the test guest"))
struct CLIIntegrationTests {
    let base = CLITests()

    @Test func lifecycleThroughTheCLI() async throws {
        try await base.withCLI { (cli: CLIRunner, runtime: TestRuntime) async throws in
            let created = try await cli.run(["create", "web"] + base.guestArgs)
            #expect(created.status == 0, "\(created.stderr)")
            #expect(created.stdout.hasPrefix("web created (pid "))
            #expect(try await cli.run("status", "web").firstLine == "created")

            #expect(try await cli.run("start", "web").stdout == "web running\n")
            _ = try await waitForConsole(runtime.root + "/web/console.log", contains: TestGuest.readyLine)
            let status = try await cli.run("status", "web")
            #expect(status.firstLine == "running")
            #expect(status.stdout.contains("accel: tcg"))
            let json = try JSONSerialization.jsonObject(with: Data(try await cli.run("status", "web", "--json").stdout.utf8)) as? [String: Any]
            #expect(json?["state"] as? String == "running")
            #expect(json?["name"] as? String == "web")
            #expect(json?["pid"] is Int)

            let ls = try await cli.run("ls")
            #expect(ls.stdout.split(separator: "\n").last?.hasPrefix("web   running") == true, "\(ls.stdout)")
            let lsJSON = try JSONSerialization.jsonObject(with: Data(try await cli.run("ls", "--json").stdout.utf8)) as? [[String: Any]]
            #expect(lsJSON?.first?["state"] as? String == "running")

            #expect(try await cli.run("logs", "web").stdout.contains(TestGuest.readyLine))

            expectConflict(try await cli.run("start", "web"), "cannot start vm 'web': it is already running")
            expectConflict(try await cli.run("delete", "web"), "cannot delete vm 'web': it is running; stop it first, or delete with force")
            expectConflict(try await cli.run(["create", "web"] + base.guestArgs), "vm 'web' already exists")

            #expect(try await cli.run("pause", "web").stdout == "web paused\n")
            #expect(try await cli.run("status", "web").firstLine == "paused")
            #expect(try await cli.run("resume", "web").stdout == "web running\n")

            let stop = try await cli.run("stop", "web")
            #expect(stop.status == 0)
            #expect(stop.stdout.hasPrefix("web stopped by powerdown in "))
            let stopped = try await cli.run("status", "web")
            #expect(stopped.firstLine == "stopped")
            #expect(stopped.stdout.contains("reason_code: stop\n"), "\(stopped.stdout)")
            #expect(stopped.stdout.contains("reason: stopped by plasmavmc stop (step: powerdown)"), "\(stopped.stdout)")
            expectConflict(try await cli.run("stop", "web"), "cannot stop vm 'web': it is already stopped")

            #expect(try await cli.run("delete", "web").stdout == "web deleted\n")
            #expect(try await cli.run("ls", "--json").stdout == "[]\n")
        }
    }

    func expectConflict(_ r: CLIRunner.Result, _ text: String, sourceLocation: SourceLocation = #_sourceLocation) {
        base.expectError(r, status: 4, text, sourceLocation: sourceLocation)
    }

    @Test func killedFromOutsideReadsCrashedThenDeletes() async throws {
        try await base.withCLI { (cli: CLIRunner, _: TestRuntime) async throws in
            #expect(try await cli.run(["create", "k"] + base.guestArgs).status == 0)
            #expect(try await cli.run("start", "k").status == 0)
            let json = try JSONSerialization.jsonObject(with: Data(try await cli.run("status", "k", "--json").stdout.utf8)) as? [String: Any]
            let pid = try #require(json?["pid"] as? Int)
            kill(Int32(pid), SIGKILL)
            var state = ""
            for _ in 0..<100 {
                state = try await cli.run("status", "k").firstLine
                if state != "running" { break }
                try await Task.sleep(for: .milliseconds(50))
            }
            #expect(state == "crashed")
            #expect(try await cli.run("delete", "k").status == 0)
        }
    }

    @Test func killVerbAndForcedDelete() async throws {
        try await base.withCLI { (cli: CLIRunner, _: TestRuntime) async throws in
            #expect(try await cli.run(["create", "f"] + base.guestArgs).status == 0)
            #expect(try await cli.run("kill", "f").stdout == "f killed\n")
            let s = try await cli.run("status", "f")
            #expect(s.firstLine == "stopped")
            #expect(s.stdout.contains("reason: killed"))
            #expect(try await cli.run(["create", "g"] + base.guestArgs).status == 0)
            #expect(try await cli.run("delete", "g", "--force").stdout == "g deleted\n")
            #expect(try await cli.run("delete", "f").status == 0)
        }
    }

    @Test func stopFallsBackWhenTheGuestIgnoresPowerdown() async throws {
        try await base.withCLI { (cli: CLIRunner, runtime: TestRuntime) async throws in
            var args = base.guestArgs
            args[5] = "quiet plasma.powerdown=ignore"
            #expect(try await cli.run(["create", "deaf"] + args).status == 0)
            #expect(try await cli.run("start", "deaf").status == 0)
            _ = try await waitForConsole(runtime.root + "/deaf/console.log", contains: TestGuest.readyLine)
            let r = try await cli.run("stop", "deaf", "--timeout", "4")
            #expect(r.stdout.hasPrefix("deaf stopped by quit in "), "\(r.stdout)\(r.stderr)")
            #expect(try await cli.run("delete", "deaf").status == 0)
        }
    }

    @Test func twoProcessesStoppingOneVMTakeTurns() async throws {
        try await base.withCLI { (cli: CLIRunner, runtime: TestRuntime) async throws in
            #expect(try await cli.run(["create", "twice"] + base.guestArgs).status == 0)
            #expect(try await cli.run("start", "twice").status == 0)
            _ = try await waitForConsole(runtime.root + "/twice/console.log", contains: TestGuest.readyLine)
            async let a = cli.run("stop", "twice")
            async let b = cli.run("stop", "twice")
            let results = try await [a, b]
            #expect(results.filter { $0.status == 0 && $0.stdout.hasPrefix("twice stopped by powerdown") }.count == 1,
                    "\(results.map(\.stdout)) \(results.map(\.stderr))")
            let loser = try #require(results.first { $0.status != 0 })
            base.expectError(loser, status: 4, "cannot stop vm 'twice': it is already stopped")
            #expect(try await cli.run("delete", "twice").status == 0)
        }
    }

    @Test func qemuExitingAtOnceIsExit1WithItsStatusAndLog() async throws {
        let tmp = try TempDir(prefix: "bq")
        defer { tmp.remove() }
        let wrapper = try writeScript(tmp.path, "qemu", "#!/bin/sh\nexec /usr/bin/qemu-system-x86_64 -no-such-option \"$@\"\n")
        try await base.withCLI(env: ["PLASMAVMC_QEMU": wrapper]) { (cli: CLIRunner, _: TestRuntime) async throws in
            let r = try await cli.run(["create", "bad"] + base.guestArgs)
            #expect(r.status == 1)
            #expect(r.errorLine.hasPrefix("plasmavmc: error: vm 'bad': QEMU exited while starting (exit status 1)"), "\(r.stderr)")
            #expect(r.errorLine.contains("-no-such-option"))
            #expect(r.stderr.contains("command: \(wrapper) -name guest=bad"))
        }
    }

    @Test func monitorThatNeverGreetsIsExit1AndLeavesNothing() async throws {
        let tmp = try TempDir(prefix: "sq")
        defer { tmp.remove() }
        let fake = try writeScript(tmp.path, "qemu", silentQMPScript)
        try await base.withCLI(env: ["PLASMAVMC_QEMU": fake]) { (cli: CLIRunner, _: TestRuntime) async throws in
            let r = try await cli.run(["create", "mute"] + base.guestArgs)
            #expect(r.status == 1)
            #expect(r.errorLine.contains("QEMU's monitor did not greet within 5 s"), "\(r.stderr)")
            #expect(r.stderr.contains("command: \(fake)"), "\(r.stderr)")
        }
    }
}
