import Foundation
import PlasmaTestSupport
import Testing

/// `plasmavmc repl` with piped stdin: the semantics, no terminal needed.
@Suite("REPL, piped")
struct ReplPipedTests {
    let base = CLITests()

    func repl(_ input: String, args: [String] = [], env: [String: String] = [:]) async throws -> CLIRunner.Result {
        var result: CLIRunner.Result?
        try await base.withCLI(env: env) { (cli: CLIRunner, _: TestRuntime) async throws in
            result = try await cli.run(["repl"] + args, stdin: input)
        }
        return result!
    }

    @Test func expressionsPrintWithoutReturnAndSeveralResults() async throws {
        let r = try await repl("1 + 1\nreturn 'a', 2\n1, 'two', nil, true\nx = 5\nx * 2\n")
        #expect(r.stdout == "2\n\"a\"\t2\n1\t\"two\"\tnil\ttrue\n10\n")
        #expect(r.status == 0)
        #expect(r.stderr.isEmpty)
    }

    @Test func tablesPrintNestedSortedWithCyclesAndDepthLimit() async throws {
        let r = try await repl("""
            {3, 1, b = {c = true}, a = "x\\ny", [10] = 1.5}
            t = {} t.me = t
            t
            {a = {b = {c = {d = {e = 1}}}}}
            """ + "\n")
        #expect(r.stdout == """
            { 3, 1, [10] = 1.5, a = "x\\ny", b = { c = true } }
            { me = <cycle> }
            { a = { b = { c = { d = {...} } } } }

            """)
    }

    @Test func hugeTablePrintsTruncatedAndQuickly() async throws {
        let r = try await repl("big = {} for i = 1, 100000 do big[i] = i end\nbig\n")
        #expect(r.status == 0)
        #expect(r.stdout.contains("100, ... (99900 more)"))
        #expect(r.stdout.split(separator: "\n").count < 12)
    }

    @Test func multiLineInputContinues() async throws {
        let r = try await repl("function f(n)\n  return n * 3\nend\nf(14)\nfor i = 1, 2 do\nprint(i)\nend\n")
        #expect(r.stdout == "42\n1\n2\n")
    }

    @Test func errorsAreReportedAndTheSessionGoesOn() async throws {
        let r = try await repl("x = = 1\nerror('boom')\n('text'):nope()\nnothing.field\n7\n")
        #expect(r.stdout == "7\n", "the session went on after each error")
        let errors = r.stderr.split(separator: "\n").map(String.init)
        #expect(errors == [
            "error: stdin:1: unexpected symbol near '='",
            "error: stdin:1: boom",
            "error: stdin:1: attempt to call a nil value (method 'nope')",
            "error: stdin:1: attempt to index a nil value (global 'nothing')",
        ])
        #expect(r.status == 1, "piped mode reports failed inputs in the exit status")
    }

    @Test func incompleteInputAtEndIsAnError() async throws {
        let r = try await repl("for i = 1, 2 do\n")
        #expect(r.status == 1)
        #expect(r.stderr.contains("incomplete input at end"))
    }

    @Test func completionCandidatesIncludingOnNilValues() async throws {
        let r = try await repl("""
            __repl.complete("vm.cr")
            __repl.complete("nothing.fi")
            __repl.complete("string.up")
            s = "x"
            __repl.complete("s:up")
            __repl.complete("whil")
            """ + "\n")
        #expect(r.stdout == """
            { "vm.create" }
            {}
            { "string.upper" }
            { "s:upper" }
            { "while" }

            """, "\(r.stderr)")
    }

    @Test func dashEEvaluatesAndExits() async throws {
        let r = try await repl("", args: ["-e", "vm.list(), #vm.list()"])
        #expect(r.stdout == "{}\t0\n")
        #expect(r.status == 0)
        let bad = try await repl("", args: ["-e", "error('no')"])
        #expect(bad.status == 1)
        #expect(bad.stderr == "error: (command line):1: no\n")
    }

    @Test func helpListsTheAPI() async throws {
        let r = try await repl("help()\n")
        for name in ["vm.create", "v:exec", "vm.parallel", "wait_for_console"] {
            #expect(r.stdout.contains(name))
        }
    }

    @Test func brokenPipeOnStdoutDoesNotStopTheSession() async throws {
        try await base.withCLI { (cli: CLIRunner, runtime: TestRuntime) async throws in
            let r = try await cli.run(["repl"], stdin: "for i = 1, 200000 do print(i) end\nio.stderr:write('still here\\n')\n",
                                      closeStdout: true)
            #expect(r.stderr.contains("still here"), "\(r.stderr)")
        }
    }
}

/// The REPL driving the real guest, piped.
@Suite("REPL with real QEMU", .serialized, .enabled(if: TestGuest.isAvailable, "needs QEMU and the test guest"))
struct ReplVMTests {
    let base = CLITests()

    @Test func fullLifecycleFromTheREPLAndWhatOutlivesIt() async throws {
        try await base.withCLI { (cli: CLIRunner, runtime: TestRuntime) async throws in
            let k = TestGuest.kernel, i = TestGuest.initrd
            let input = """
                v = vm.create{name = "rl", kernel = "\(k)", initrd = "\(i)", append = "quiet", accel = "tcg"}
                v
                v:start()
                (v:wait_for_console("PLASMAVMC%-GUEST%-READY", {timeout = 90}))
                v:exec("echo $((40 + 2))")
                v:stop()
                v:status()
                e = vm.create{name = "rl-eph", kernel = "\(k)", initrd = "\(i)", accel = "tcg", ephemeral = true}
                vm.list()

                """
            let r = try await cli.run(["repl"], stdin: input)
            #expect(r.status == 0, "\(r.stderr)")
            #expect(r.stdout == """
                vm<rl: created>
                vm<rl: running>
                "PLASMAVMC-GUEST-READY"
                0\t"42\\n"
                "powerdown"
                "stopped"\t"stop"\t"stopped by plasmavmc stop (step: powerdown)"
                { vm<rl: stopped>, vm<rl-eph: created> }

                """ , "\(r.stdout)")
            #expect(runtime.vmFolders == ["rl"], "the plain VM outlives the session; the ephemeral one does not")
            #expect(try await cli.run("delete", "rl").status == 0)
        }
    }
}
