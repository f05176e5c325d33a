import Foundation
import FoundationXML
import PlasmaTestSupport
import Testing

/// Lua plans run by `plasmavmc run` against real QEMU and the test guest.
@Suite("Lua plans end to end", .serialized, .enabled(if: TestGuest.isAvailable, "needs QEMU and the test guest"))
struct PlanTests {
    let base = CLITests()
    var env: [String: String] { ["PLASMAVMC_GUEST_DIR": TestGuest.directory] }

    func plan(_ name: String, _ args: [String] = [], options: [String] = [],
              sourceLocation: SourceLocation = #_sourceLocation) async throws -> CLIRunner.Result {
        var result: CLIRunner.Result?
        try await base.withCLI(env: env) { (cli: CLIRunner, _: TestRuntime) async throws in
            result = try await cli.run(["run"] + options + ["Tests/plans/\(name).lua"] + args)
        }
        return result!
    }

    func expectOK(_ r: CLIRunner.Result, _ line: String, sourceLocation: SourceLocation = #_sourceLocation) {
        #expect(r.status == 0, "exit \(r.status): \(r.stderr)", sourceLocation: sourceLocation)
        #expect(r.stdout.contains(line), "\(r.stdout)", sourceLocation: sourceLocation)
    }

    @Test func lifecycle() async throws { expectOK(try await plan("lifecycle"), "lifecycle ok") }
    @Test func powerdownFallbackAndPanic() async throws { expectOK(try await plan("faults"), "faults ok") }
    @Test func twoGuestsInParallel() async throws { expectOK(try await plan("parallel"), "parallel ok") }
    @Test func badInputRaisesCatchableErrors() async throws { expectOK(try await plan("badinput"), "badinput ok") }

    @Test func uncaughtErrorExits1WithPositionAndTracebackAndCleansUp() async throws {
        let r = try await plan("failing")
        #expect(r.status == 1)
        #expect(r.errorLine == "plasmavmc: error: Tests/plans/failing.lua:6: deliberate failure", "\(r.stderr)")
        #expect(r.stderr.contains("stack traceback:"))
    }

    @Test func keepOnFailureLeavesTheVMsAndSaysHowToReachThem() async throws {
        try await base.withCLI(env: env) { (cli: CLIRunner, runtime: TestRuntime) async throws in
            let r = try await cli.run(["run", "--keep-on-failure", "Tests/plans/failing.lua"])
            #expect(r.status == 1)
            #expect(r.stderr.contains("kept for inspection"), "\(r.stderr)")
            #expect(r.stderr.contains("plan-fail: plasmavmc status plan-fail"))
            #expect(r.stderr.contains("plan-fail-close: plasmavmc status plan-fail-close"))
            #expect(runtime.vmFolders == ["plan-fail", "plan-fail-close"], "the ephemeral and the <close> VM both stay")
            #expect(try await cli.run("delete", "plan-fail", "--force").status == 0)
            #expect(try await cli.run("delete", "plan-fail-close", "--force").status == 0)
        }
    }

    @Test func syntaxErrorIsReportedBeforeAnythingRuns() async throws {
        try await base.withCLI(env: env) { (cli: CLIRunner, runtime: TestRuntime) async throws in
            let r = try await cli.run(["run", "-e", "vm.create{name='never'} x = = 1"])
            #expect(r.status == 2)
            #expect(r.errorLine.contains("(command line):1:"), "\(r.stderr)")
            #expect(runtime.vmFolders.isEmpty)
        }
    }

    @Test func missingPlanFileIsExit2() async throws {
        try await base.withCLI { (cli: CLIRunner, _: TestRuntime) async throws in
            let r = try await cli.run(["run", "Tests/plans/nope.lua"])
            #expect(r.status == 2)
            #expect(r.errorLine == "plasmavmc: error: plan file Tests/plans/nope.lua does not exist or is not readable")
        }
    }

    @Test(arguments: ["sleep", "spin"])
    func timeoutEndsThePlanAndRemovesEphemeralVMs(_ mode: String) async throws {
        let r = try await plan("forever", ["plan-timeout", mode], options: ["--timeout", "4"])
        #expect(r.status == 5, "\(r.stderr)")
        #expect(r.errorLine == "plasmavmc: error: plan timed out after 4s (--timeout)", "\(r.stderr)")
    }

    @Test func ctrlCStopsThePlanAndRemovesEphemeralVMs() async throws {
        try await base.withCLI(env: env) { (cli: CLIRunner, runtime: TestRuntime) async throws in
            let running = try cli.start(["run", "Tests/plans/forever.lua", "plan-sigint"])
            for _ in 0..<600 where !running.stdout.contains("created") {
                try await Task.sleep(for: .milliseconds(50))
            }
            #expect(runtime.vmFolders == ["plan-sigint"])
            running.interrupt()
            let r = try await running.wait()
            #expect(r.status == 130, "\(r.stderr)")
            #expect(r.errorLine.contains("interrupted (SIGINT)"), "\(r.stderr)")
        }
    }

    @Test func planReturningFalseExits1AndAnIntegerIsTheStatus() async throws {
        try await base.withCLI { (cli: CLIRunner, _: TestRuntime) async throws in
            #expect(try await cli.run(["run", "-e", "return false"]).status == 1)
            #expect(try await cli.run(["run", "-e", "return 7"]).status == 7)
            let r = try await cli.run(["run", "-e", "print(select('#', ...), arg[0], ...)", "a", "b"])
            #expect(r.stdout == "2\t-e\ta\tb\n")
        }
    }

    @Test func testVerbRunsAFolderOfTestFiles() async throws {
        try await base.withCLI(env: env) { (cli: CLIRunner, _: TestRuntime) async throws in
            let r = try await cli.run(["test", "Tests/plans"])
            #expect(r.status == 0, "\(r.stdout)\(r.stderr)")
            #expect(r.stdout.hasPrefix("TAP version 14\n"))
            #expect(r.stdout.contains("ok 1 - guest_test.lua: boots and runs a command"))
            #expect(r.stdout.hasSuffix("1..3\n3 passed, 0 failed\n"), "\(r.stdout)")
        }
    }

    @Test func failedCaseSavesTheConsoleLogRemovesItsVMAndExits1() async throws {
        let artifacts = try TempDir(prefix: "art")
        defer { artifacts.remove() }
        var env = self.env
        env["PLASMAVMC_TEST_ARTIFACTS"] = artifacts.path
        try await base.withCLI(env: env) { (cli: CLIRunner, runtime: TestRuntime) async throws in
            let junit = artifacts.path + "/junit.xml"
            let r = try await cli.run(["test", "--junit", junit, "Tests/plans/failing_case.lua"])
            #expect(r.status == 1)
            #expect(r.stdout.contains("not ok 1 - failing_case.lua: fails with a vm"), "\(r.stdout)")
            #expect(r.stdout.contains("# expected: \"stopped\""))
            #expect(r.stdout.contains("# got: \"running\""))
            #expect(r.stdout.hasSuffix("1 passed, 1 failed\n"))
            #expect(runtime.vmFolders.isEmpty, "the failed case's VM is removed")
            let saved = try FileManager.default.contentsOfDirectory(atPath: artifacts.path).filter { $0.hasSuffix(".console.log") }
            #expect(saved.count == 1)
            let log = saved.first.flatMap { FileManager.default.contents(atPath: artifacts.path + "/" + $0) } ?? Data()
            #expect(String(decoding: log, as: UTF8.self).contains(TestGuest.readyLine))
            let xml = try XMLDocument(contentsOf: URL(fileURLWithPath: junit))
            #expect(try xml.nodes(forXPath: "//testcase").count == 2)
            #expect(try xml.nodes(forXPath: "//failure").count == 1)
        }
    }
}

/// Hostile plans (issue 8): every one must end with a clear error and the right exit status,
/// never a trap, a hang or a leaked VM. Each runs as a real `plasmavmc run` with an ephemeral
/// VM created first (QEMU up, paused), so a crash would leave that VM behind.
@Suite("Hostile plans end cleanly", .serialized, .enabled(if: TestGuest.isAvailable, "needs QEMU and the test guest"))
struct HostilePlanTests {
    let base = CLITests()
    var env: [String: String] { ["PLASMAVMC_GUEST_DIR": TestGuest.directory] }
    static let prelude = "package.path = 'Tests/plans/?.lua;' .. package.path; local v = vm.create(require('guest').spec('hostile')); "

    /// Runs `code` after creating an ephemeral VM `hostile` in a fresh runtime dir; checks that
    /// no VM folder or process is left behind.
    func hostile(_ code: String, options: [String] = [], sourceLocation: SourceLocation = #_sourceLocation) async throws -> CLIRunner.Result {
        var result: CLIRunner.Result?
        try await base.withCLI(env: env) { (cli: CLIRunner, runtime: TestRuntime) async throws in
            result = try await cli.run(["run"] + options + ["-e", Self.prelude + code])
            #expect(runtime.vmFolders.isEmpty, "left: \(runtime.vmFolders)", sourceLocation: sourceLocation)
        }
        return result!
    }

    func expectError(_ r: CLIRunner.Result, _ status: Int32, _ text: String, sourceLocation: SourceLocation = #_sourceLocation) {
        #expect(r.status == status, "exit \(r.status): \(r.stderr)", sourceLocation: sourceLocation)
        #expect(r.errorLine.contains(text), "\(r.stderr)", sourceLocation: sourceLocation)
    }

    // MARK: numbers (SIGILL before)

    @Test(arguments: [
        ("sleep(0/0)", "(command line):1: sleep: 'seconds' must be a number, got NaN"),
        ("sleep(math.huge)", "(command line):1: sleep: 'seconds' must be finite"),
        ("sleep(1e300)", "(command line):1: sleep: 'seconds' must be at most"),
        ("sleep(-1)", "(command line):1: sleep: 'seconds' must be >= 0, got -1"),
        ("v:stop{timeout = 1e300}", "(command line):1: vm.stop: 'timeout' must be at most"),
        ("v:stop{timeout = 0/0}", "(command line):1: vm.stop: 'timeout' must be a number, got NaN"),
        ("v:wait_for('running', {timeout = 0/0})", "(command line):1: vm.wait_for: 'timeout' must be a number, got NaN"),
        ("v:wait_for_console('x', {since = -1})", "(command line):1: vm.wait_for_console: 'since' must be >= 0, got -1"),
        ("v:wait_for_console('x', {since = 1.5})", "(command line):1: vm.wait_for_console: 'since' must be a whole number"),
        ("v:exec('true', {timeout = -math.huge})", "(command line):1: vm.exec: 'timeout' must be >= 0"),
    ])
    func specialNumbersAreErrorsNotTraps(_ code: String, _ message: String) async throws {
        expectError(try await hostile(code), 1, "plasmavmc: error: " + message)
    }

    @Test func mathHugeMeansNoLimitForAWait() async throws {
        let r = try await hostile("v:start() print(v:wait_for('running', {timeout = math.huge}))")
        #expect(r.status == 0, "\(r.stderr)")
        #expect(r.stdout == "running\n")
    }

    @Test(arguments: ["1e300", "inf", "nan", "-1", "0"])
    func runTimeoutIsCheckedBeforeAnythingRuns(_ value: String) async throws {
        try await base.withCLI { (cli: CLIRunner, runtime: TestRuntime) async throws in
            let r = try await cli.run(["run", "--timeout", value, "-e", "vm.create{name = 'never', kernel = '/k'}"])
            #expect(r.status == 2, "\(r.stderr)")
            #expect(r.errorLine.contains("--timeout"), "\(r.stderr)")
            #expect(runtime.vmFolders.isEmpty)
        }
    }

    // MARK: the scheduler

    @Test(arguments: ["coroutine.yield({})", "coroutine.yield({parallel = {}})", "coroutine.yield(1)",
                      "coroutine.yield()", "coroutine.yield(v)"])
    func yieldingToTheSchedulerIsAnErrorAtThePlansLine(_ code: String) async throws {
        let r = try await hostile("\n" + code)
        expectError(r, 1, "plasmavmc: error: (command line):2: coroutine.yield")
    }

    @Test func vmCallsWorkInsideAPlansOwnCoroutines() async throws {
        let r = try await hostile("""
            local f = coroutine.wrap(function() coroutine.yield(v:info().state) return vm.get('hostile'):info().state end)
            print(f(), f())
            local co = coroutine.create(function() v:start() return (v:status()) end)
            print(coroutine.resume(co))
            print(select('#', vm.parallel()))
            """)
        #expect(r.status == 0, "\(r.stderr)")
        #expect(r.stdout == "created\tcreated\ntrue\trunning\n0\n", "\(r.stdout)")
    }

    // MARK: interrupts

    @Test(.timeLimit(.minutes(1)), arguments: [
        "coroutine.wrap(function() while true do end end)()",
        "while true do pcall(function() while true do end end) end",
        "while true do xpcall(function() while true do end end, debug.traceback) end",
        "while true do pcall(sleep, 60) end",
        "local co = coroutine.create(function() while true do pcall(error, 'x') end end) while true do coroutine.resume(co) end",
    ])
    func timeoutEndsAPlanThatHidesFromIt(_ code: String) async throws {
        let r = try await hostile(code, options: ["--timeout", "2"])
        expectError(r, 5, "plan timed out after 2s (--timeout)")
    }

    /// Starts `code` (after the ephemeral VM), waits until it printed `ready`, then `poke`s it.
    func startAndSignal(_ code: String, ready: String = "ready", _ poke: @escaping (CLIRunner.Running) async throws -> Void)
        async throws -> (CLIRunner.Result, Duration) {
        var out: (CLIRunner.Result, Duration)?
        try await base.withCLI(env: env) { (cli: CLIRunner, runtime: TestRuntime) async throws in
            let running = try cli.start(["run", "-e", Self.prelude + code])
            for _ in 0..<2400 where !running.stdout.contains(ready) && running.isRunning {
                try await Task.sleep(for: .milliseconds(50))
            }
            #expect(running.stdout.contains(ready), "never got ready")
            let clock = ContinuousClock()
            let start = clock.now
            try await poke(running)
            let r = try await running.wait()
            out = (r, clock.now - start)
            #expect(runtime.vmFolders.isEmpty, "left: \(runtime.vmFolders)")
        }
        return out!
    }

    @Test(.timeLimit(.minutes(1)))
    func sigtermEndsThePlanWith143AndCleansUp() async throws {
        let (r, took) = try await startAndSignal("print('ready') io.stdout:flush() while true do pcall(sleep, 60) end") {
            $0.signal(SIGTERM)
        }
        expectError(r, 143, "plan interrupted (SIGTERM)")
        #expect(took < .seconds(20))
    }

    @Test(.timeLimit(.minutes(1)))
    func secondCtrlCEndsAPlanStuckInCAtOnce() async throws {
        // string.find below runs for hours inside C, where no hook can land.
        let (r, took) = try await startAndSignal("print('ready') io.stdout:flush() string.find(string.rep('a', 50000), '.-.-.-.-b')") {
            $0.interrupt()
            try await Task.sleep(for: .milliseconds(500))
            $0.interrupt()
        }
        #expect(r.status == 130, "\(r.stderr)")
        #expect(r.stderr.contains("second SIGINT"), "\(r.stderr)")
        #expect(took < .seconds(20))
    }

    @Test(.timeLimit(.minutes(3)))
    func ctrlCDuringAStopOfADeafGuestEndsWithinSeconds() async throws {
        try await base.withCLI(env: env) { (cli: CLIRunner, runtime: TestRuntime) async throws in
            let code = """
                package.path = 'Tests/plans/?.lua;' .. package.path
                local v = require('guest').boot('deaf', 'plasma.powerdown=ignore')
                print('stopping') io.stdout:flush()
                v:stop{timeout = 120}
                """
            let running = try cli.start(["run", "-e", code])
            for _ in 0..<2400 where !running.stdout.contains("stopping") && running.isRunning {
                try await Task.sleep(for: .milliseconds(50))
            }
            #expect(running.stdout.contains("stopping"))
            try await Task.sleep(for: .seconds(1))
            let clock = ContinuousClock()
            let start = clock.now
            running.interrupt()
            let r = try await running.wait()
            #expect(r.status == 130, "\(r.stderr)")
            #expect(clock.now - start < .seconds(15), "took \(clock.now - start)")
            #expect(runtime.vmFolders.isEmpty, "left: \(runtime.vmFolders)")
        }
    }

    // MARK: cleanup and exit statuses

    @Test func aVMThatCannotBeRemovedIsNamedAndThePlanFails() async throws {
        try await base.withCLI(env: env) { (cli: CLIRunner, runtime: TestRuntime) async throws in
            let code = Self.prelude + """
                print('ready') io.stdout:flush()
                local go = os.getenv('PLASMAVMC_RUNTIME_DIR') .. '/.go'
                while not io.open(go) do sleep(0.05) end
                """
            let running = try cli.start(["run", "-e", code])
            for _ in 0..<2400 where !running.stdout.contains("ready") && running.isRunning {
                try await Task.sleep(for: .milliseconds(50))
            }
            // Hold the VM's lock as another plasmavmc process would.
            let fd = open(runtime.root + "/hostile/lock", O_RDWR)
            #expect(fd >= 0)
            #expect(flock(fd, LOCK_EX) == 0)
            #expect(FileManager.default.createFile(atPath: runtime.root + "/.go", contents: nil))
            let r = try await running.wait()
            close(fd)
            #expect(r.status == 1, "\(r.stderr)")
            #expect(r.stderr.contains("could not remove vm 'hostile'"), "\(r.stderr)")
            #expect(r.stderr.contains("plasmavmc delete hostile --force"), "\(r.stderr)")
            #expect(try await cli.run("delete", "hostile", "--force").status == 0)
        }
    }

    @Test(arguments: [("return 256", "256"), ("return -1", "-1"), ("return 2^40", "1099511627776")])
    func aPlanReturningAnImpossibleStatusFails(_ code: String, _ shown: String) async throws {
        try await base.withCLI { (cli: CLIRunner, _: TestRuntime) async throws in
            let r = try await cli.run(["run", "-e", code])
            #expect(r.status == 1, "\(r.stderr)")
            #expect(r.errorLine.contains("plan returned \(shown)"), "\(r.stderr)")
        }
    }

    // MARK: smaller

    @Test func qmpWithAnEmptyTableSendsNoArguments() async throws {
        let r = try await hostile("print(v:qmp('query-status', {}).status)")
        #expect(r.status == 0, "\(r.stderr)")
        #expect(r.stdout == "prelaunch\n", "\(r.stdout)")
    }

    @Test func anExecTimeoutReportsTheTimeoutAskedFor() async throws {
        try await base.withCLI(env: env) { (cli: CLIRunner, runtime: TestRuntime) async throws in
            let code = """
                package.path = 'Tests/plans/?.lua;' .. package.path
                local v = require('guest').boot('slow-exec')
                assert(v:exec('true') == 0)
                v:exec('sleep 30', {timeout = 3})
                """
            let r = try await cli.run(["run", "-e", code])
            #expect(r.status == 1, "\(r.stderr)")
            #expect(r.errorLine.contains(#"(command line):4: vm 'slow-exec': exec: timed out after 3s waiting for "sleep 30" to finish"#), "\(r.stderr)")
            #expect(runtime.vmFolders.isEmpty)
        }
    }

    @Test func execReadsOnlyTheNewConsoleOutput() async throws {
        try await base.withCLI(env: env) { (cli: CLIRunner, runtime: TestRuntime) async throws in
            // 10 MB in the console log, then five execs: each used to read the whole log twice.
            let code = """
                package.path = 'Tests/plans/?.lua;' .. package.path
                local v = require('guest').boot('big-log')
                local function rchar() return tonumber(io.open('/proc/self/io'):read('a'):match('rchar: (%d+)')) end
                local f = assert(io.open(v:info().dir .. '/console.log', 'a'))
                f:write(string.rep(string.rep('x', 99) .. '\\n', 100000))
                f:close()
                assert(v:exec('true') == 0)
                local before = rchar()
                for i = 1, 5 do assert(select(2, v:exec('echo hi')) == 'hi\\n') end
                print(rchar() - before)
                """
            let r = try await cli.run(["run", "-e", code])
            #expect(r.status == 0, "\(r.stderr)")
            let bytes = Int(r.stdout.trimmingCharacters(in: .whitespacesAndNewlines)) ?? Int.max
            #expect(bytes < 3_000_000, "five execs read \(bytes) bytes")
            #expect(runtime.vmFolders.isEmpty)
        }
    }

    @Test func anInvalidPatternIsReportedAtThePlansLine() async throws {
        let r = try await hostile("\nv:start() v:wait_for_console('[', {timeout = 5})")
        expectError(r, 1, "plasmavmc: error: (command line):2: vm.wait_for_console: invalid pattern")
    }
}
