import Foundation
import PlasmaLua
import PlasmaTestSupport
import PlasmaVMM
import Testing

/// The Lua layer over a fake hypervisor: API semantics, errors, scheduling and cleanup, fast
/// and without QEMU. The same plans run against real QEMU in CLITests/PlanTests.
@Suite("Lua plans over a fake hypervisor")
struct PlanRunnerTests {
    let fake = FakeHypervisor()

    func run(_ source: String, timeout: Duration? = nil, keep: Bool = false,
             runner: ((PlanRunner) -> Void)? = nil) async -> PlanOutcome {
        let options = PlanOptions(source: source, chunkName: "=plan", planDirectory: "/nonexistent",
                                  scriptName: "plan", timeout: timeout, keepOnFailure: keep)
        let r = PlanRunner(manager: VMManager(hypervisor: fake), options: options)
        runner?(r)
        return await r.run()
    }

    @Test func bothCallStylesReachTheManager() async {
        let outcome = await run("""
            local v = vm.create{name = "a", kernel = "/k"}
            assert(v.name == "a" and v.id == "a")
            v:start()
            vm.pause("a")
            vm.resume(v)
            assert(v:status() == "running")
            assert(vm.status("a") == "running")
            assert(v:stop() == "powerdown")
            v:delete()
            """)
        #expect(outcome.kind == .success, "\(outcome.message ?? "")")
        #expect(fake.calls == ["create a", "start a", "pause a", "resume a", "stop a", "delete a"])
    }

    @Test func illegalOperationRaisesAtThePlansLine() async {
        let outcome = await run("""
            local v = vm.create{name = "b", kernel = "/k"}
            v:start()
            local ok, err = pcall(v.start, v)
            assert(not ok)
            assert(err == "plan:3: cannot start vm 'b': it is already running", err)
            v:start()
            """)
        #expect(outcome.kind == .runtimeError)
        #expect(outcome.message?.hasPrefix("plan:6: cannot start vm 'b': it is already running") == true, "\(outcome.message ?? "")")
    }

    @Test func wrongArgumentsReadLikeTheAPI() async {
        let outcome = await run("""
            -- Errors point at the caller's line: here msg's, line 2.
            local function msg(f, ...) local ok, e = pcall(f, ...) assert(not ok) return e end
            assert(msg(vm.create, {name = "c", memory = "abc"}) == [[plan:2: vm.create: 'memory' must be a size like "256M" or "1G", got "abc"]])
            assert(msg(vm.create, {name = "c", colour = 1}) == "plan:2: vm.create: unknown option 'colour'")
            assert(msg(vm.create, "c") == "plan:2: vm.create: expected a table like {name=…, kernel=…}, got string")
            assert(msg(vm.start, 42) == "plan:2: vm.start: expected a vm or a vm name, got number")
            assert(msg(sleep, -1) == "plan:2: sleep: seconds must be a number >= 0, got -1")
            assert(select(2, vm.get("ghost")) == "vm 'ghost' does not exist; see plasmavmc ls")
            """)
        #expect(outcome.kind == .success, "\(outcome.message ?? "")")
    }

    @Test func parallelRunsBranchesTogetherAndCancelsTheRestOnFailure() async {
        let clock = ContinuousClock()
        let start = clock.now
        let outcome = await run("""
            local log = {}
            local function branch(name, result)
              return function() log[#log + 1] = name .. "+" sleep(0.2) log[#log + 1] = name .. "-" return result end
            end
            local a, b = vm.parallel(branch("a", "A"), branch("b", {b = true}))
            assert(a == "A" and b.b == true)
            -- Both branches started before either finished: they overlapped.
            assert(log[1]:sub(-1) == "+" and log[2]:sub(-1) == "+", table.concat(log, " "))
            vm.parallel(function() sleep(300) end, function() sleep(0.05) error("branch broke") end)
            """)
        #expect(outcome.kind == .runtimeError)
        #expect(outcome.message?.contains("vm.parallel: branch 2 failed: plan:9: branch broke") == true, "\(outcome.message ?? "")")
        #expect(clock.now - start < .seconds(60), "the 300 s branch was cancelled, not waited for")
    }

    @Test func ephemeralAndClosedVMsAreRemovedWhenThePlanFails() async throws {
        let outcome = await run("""
            vm.create{name = "keep", kernel = "/k"}
            vm.create{name = "eph", kernel = "/k", ephemeral = true}:start()
            local c <close> = vm.create{name = "scoped", kernel = "/k"}
            error("fail")
            """)
        #expect(outcome.kind == .runtimeError)
        #expect(try await fake.list().map(\.rawValue) == ["keep"])
    }

    @Test func keepOnFailureKeepsEverythingAndNamesIt() async throws {
        let outcome = await run("""
            vm.create{name = "eph", kernel = "/k", ephemeral = true}
            error("fail")
            """, keep: true)
        #expect(outcome.keptVMs == ["eph"])
        #expect(try await fake.list().map(\.rawValue) == ["eph"])
    }

    @Test func timeoutStopsASpinningPlanAndCleansUp() async throws {
        let outcome = await run("""
            vm.create{name = "eph", kernel = "/k", ephemeral = true}
            while true do end
            """, timeout: .milliseconds(300))
        #expect(outcome.kind == .timedOut)
        #expect(outcome.message?.hasPrefix("plan timed out after 0.3s (--timeout)") == true, "\(outcome.message ?? "")")
        #expect(try await fake.list().isEmpty)
    }

    @Test func interruptStopsAWaitingPlan() async throws {
        let outcome = await run("""
            vm.create{name = "eph", kernel = "/k", ephemeral = true}
            sleep(30)
            """) { runner in
            DispatchQueue.global().asyncAfter(deadline: .now() + 0.3) { runner.interrupt("interrupted (SIGINT)") }
        }
        #expect(outcome.kind == .interrupted)
        #expect(try await fake.list().isEmpty)
    }

    @Test func syntaxErrorRunsNothing() async {
        let outcome = await run("vm.create{name = 'x', kernel = '/k'} x = = 1")
        #expect(outcome.kind == .syntaxError)
        #expect(fake.calls.isEmpty)
    }

    @Test func waitsTimeOutWithStateAndConsole() async throws {
        let outcome = await run("""
            local v = vm.create{name = "w", kernel = "/k"}
            v:start()
            local ok, e = pcall(v.wait_for, v, "stopped", {timeout = 0.2})
            assert(not ok and e:find("timed out after 0.2s waiting for state stopped %(it is running%)"), e)
            ok, e = pcall(v.wait_for_console, v, "NEVER", {timeout = 0.2})
            assert(not ok and e:find([[timed out after 0.2s waiting for console pattern "NEVER" %(vm is running%)]]), e)
            v:delete{force = true}
            """)
        #expect(outcome.kind == .success, "\(outcome.message ?? "")")
    }
}
