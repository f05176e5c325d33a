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
