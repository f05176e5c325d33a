import Foundation
@testable import PlasmaLua
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
            assert(msg(sleep, -1) == "plan:2: sleep: 'seconds' must be >= 0, got -1")
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

    // MARK: issue 8

    @Test(.timeLimit(.minutes(1)), arguments: [
        "coroutine.wrap(function() while true do end end)()",
        "while true do pcall(function() while true do end end) end",
        "while true do xpcall(function() while true do end end, debug.traceback) end",
        "local co = coroutine.wrap(function() while true do pcall(coroutine.yield) end end) while true do pcall(co) end",
        "while true do pcall(sleep, 60) end",
        "debug.sethook() while true do end",
        "debug.sethook(function() end, 'r') while true do end",
        "local n = 0 debug.sethook(function(e) n = n + 1 end, 'c', 1000000) while true do end",
        "local co = coroutine.create(function() debug.sethook() while true do end end) coroutine.resume(co)",
        "local v = vm.create{name = 'x', kernel = '/k', ephemeral = true} while true do pcall(function() coroutine.wrap(function() v:info() end)() end) end",
    ])
    func timeoutLandsWhereverThePlanHides(_ code: String) async throws {
        let outcome = await run("vm.create{name = 'eph', kernel = '/k', ephemeral = true}\n" + code, timeout: .milliseconds(300))
        #expect(outcome.kind == .timedOut, "\(outcome.kind) \(outcome.message ?? "")")
        #expect(try await fake.list().isEmpty)
    }

    // Time limits here catch hangs, not slowness: a loaded two-core machine took 91 s.
    @Test(.timeLimit(.minutes(4)))
    func anInterruptedPlansCloseVariablesAreRemovedEveryTime() async throws {
        // The hook must not fire inside the <close> handlers that run after an interrupt.
        for i in 0..<20 {
            let outcome = await run("""
                local c <close> = vm.create{name = "scoped\(i)", kernel = "/k"}
                local function spin() local d <close> = vm.create{name = "inner\(i)", kernel = "/k"} while true do end end
                vm.parallel(spin, function() sleep(60) end)
                """, timeout: .milliseconds(100))
            #expect(outcome.kind == .timedOut)
        }
        let left = try await fake.list()
        #expect(left.isEmpty, "left \(left); calls \(fake.calls)")
    }

    @Test func aVMWhoseCreateWasInterruptedIsRemoved() async throws {
        // The plan never received these VMs (the interrupt came while they were being made),
        // so nothing else could remove them.
        let slow = FakeHypervisor(operationDelay: .seconds(2))
        let options = PlanOptions(source: """
            local d <close> = vm.create{name = "slow", kernel = "/k"}
            """, chunkName: "=plan", planDirectory: "/nonexistent", scriptName: "plan", timeout: .milliseconds(200))
        let outcome = await PlanRunner(manager: VMManager(hypervisor: slow), options: options).run()
        #expect(outcome.kind == .timedOut)
        #expect(try await slow.list().isEmpty)
        // The same from a plan's own coroutine, where the create runs synchronously.
        var inWrap = options
        inWrap.source = "coroutine.wrap(function() vm.create{name = 'wrapped', kernel = '/k'} end)()"
        let wrapped = await PlanRunner(manager: VMManager(hypervisor: slow), options: inWrap).run()
        #expect(wrapped.kind == .timedOut)
        #expect(try await slow.list().isEmpty)
        _ = try await fake.create(VMSpec(name: VMName("mine"), kernel: "/k"))
        let refused = await run("vm.create{name = 'mine', kernel = '/k'}")
        #expect(refused.kind == .runtimeError)
        #expect(try await fake.list().map(\.rawValue) == ["mine"], "a refused create does not remove the VM that was there")
    }

    @Test func theREPLSessionGoesOnAfterAnInterrupt() async throws {
        // An interrupted chunk leaves the flag cleared for the next one (as the REPL needs).
        let options = PlanOptions(source: "", chunkName: "=stdin", planDirectory: "/nonexistent", scriptName: "repl")
        let session = LuaSession(manager: VMManager(hypervisor: fake), options: options)
        #expect(session.open() == nil)
        #expect(session.compile("while true do end", chunkName: "=stdin") == nil)
        DispatchQueue.global().asyncAfter(deadline: .now() + 0.2) { session.interrupt("interrupted (Ctrl-C)") }
        #expect(session.run().kind == .interrupted)
        #expect(session.compile("local n = 0 for i = 1, 100000 do n = n + i end return n == 5000050000", chunkName: "=stdin") == nil)
        #expect(session.run().kind == .success)
        session.close()
    }

    /// Every `vm` function and VM method with every Lua type and the special numbers in each
    /// argument and option: each call returns or raises a Lua error at the plan's line, and
    /// every special number where a number is expected raises. Never a crash.
    // A hang guard: a loaded two-core machine took 264 s, a quiet one about 6.
    @Test(.timeLimit(.minutes(8)))
    func fuzzEveryFunctionWithEveryType() async throws {
        let fz = try VMName("fz")
        _ = try await fake.create(VMSpec(name: fz, kernel: "/k"))
        _ = try await fake.start(fz)
        fake.appendConsole(fz, "READY\n")
        let outcome = await run(#"""
            local values = table.pack(nil, true, false, 0, -1, 1.5, 0/0, math.huge, -math.huge, 1e300, -1e300,
              math.mininteger, math.maxinteger, 2^63, "", "nope", "[", "%", {}, {1, 2}, {x = 0/0}, print,
              coroutine.create(function() end), io.stdout)
            local special = { [-1] = true, [math.huge] = true, [-math.huge] = true, [1e300] = true, [-1e300] = true,
              [math.mininteger] = true, [2^63] = true }
            local function isspecial(x) return type(x) == "number" and (x ~= x or special[x] or false) end
            local seq = 0
            local function fresh()
              seq = seq + 1
              local v = vm.create{name = "f" .. seq, kernel = "/k"}
              v:start()
              return v
            end
            local fz = vm.get("fz")
            local calls, errors = 0, 0
            local function try(label, mustfail, f, ...)
              calls = calls + 1
              local ok, e = pcall(f, ...)
              if not ok then
                errors = errors + 1
                assert(type(e) == "string", label .. ": error is a " .. type(e))
                assert(e:match("^plan:%d+: "), label .. ": error not at the plan's line: " .. e)
                assert(not e:find("internal"), label .. ": " .. e)
              else
                assert(not mustfail, label .. ": special number accepted")
              end
            end
            -- The arguments of each call, the last ones options; "T" is the target.
            local api = {
              start = {"T"}, status = {"T"}, kill = {"T"}, pause = {"T"}, resume = {"T"}, info = {"T"},
              console_log = {"T"}, stop = {"T", {timeout = 1}}, delete = {"T", {force = true}},
              wait_for = {"T", "running", {timeout = 1}}, wait_for_console = {"T", "READY", {timeout = 1, since = 0, fail = {"NEVER"}}},
              send_console = {"T", "x"}, exec = {"T", "true", {timeout = 0.2}}, qmp = {"T", "query-status", {}},
            }
            -- math.huge means "no limit" for these waits: fuzzed apart, where they return at once.
            local nolimit = { wait_for = true, wait_for_console = true, exec = true }
            for name, args in pairs(api) do
              assert(vm[name] and getmetatable(fz).__index(fz, name), name)
              for pos = 1, #args do
                for i = 1, values.n do
                  local bad = values[i]
                  local a = {}
                  for j = 1, #args do a[j] = args[j] end
                  local target = (name == "start" or name == "stop" or name == "delete" or name == "kill"
                    or name == "pause" or name == "resume") and fresh() or fz
                  local mustfail = false
                  if type(args[pos]) == "table" then
                    for key, good in pairs(args[pos]) do
                      local opts = {}
                      for k2, v2 in pairs(args[pos]) do opts[k2] = v2 end
                      opts[key] = bad
                      a[pos] = opts
                      for j = 1, #a do if a[j] == "T" then a[j] = target end end
                      local nf = type(good) == "number" and isspecial(bad)
                        and not (bad == math.huge and key == "timeout" and nolimit[name])
                      -- exec without a shell waits its whole timeout: no limit and the default are left out.
                      if not ((bad == math.huge or bad == nil) and key == "timeout" and name == "exec") then
                        try(name .. "." .. key .. "=" .. tostring(bad), nf, vm[name], table.unpack(a, 1, #args))
                      end
                    end
                  else
                    a[pos] = bad
                    for j = 1, #a do if a[j] == "T" then a[j] = target end end
                    try(name .. "#" .. pos .. "=" .. tostring(bad), false, vm[name], table.unpack(a, 1, #args))
                    try(name .. ":#" .. pos .. "=" .. tostring(bad), false, function(...) return target[name](...) end, table.unpack(a, 1, #args))
                  end
                end
              end
            end
            for i = 1, values.n do
              local bad = values[i]
              try("create=" .. tostring(bad), false, vm.create, bad)
              for _, key in ipairs{"name", "kernel", "initrd", "append", "memory", "cpus", "disks", "net", "accel", "ephemeral"} do
                try("create." .. key .. "=" .. tostring(bad), key == "cpus" and isspecial(bad), vm.create, {name = "c" .. i, kernel = "/k", [key] = bad})
                pcall(vm.delete, "c" .. i, {force = true})
              end
              try("get=" .. tostring(bad), false, vm.get, bad)
              try("list=" .. tostring(bad), false, vm.list, bad)
              try("parallel=" .. tostring(bad), type(bad) ~= "function", vm.parallel, bad)
              local arg = bad
              if bad == 1.5 then arg = 0.01 end
              try("sleep=" .. tostring(bad), type(bad) ~= "number" or isspecial(bad) or bad > 10, sleep, arg)
            end
            print(calls .. " calls, " .. errors .. " errors")
            assert(calls > 800, calls)
            """#)
        #expect(outcome.kind == .success, "\(outcome.message ?? "")")
    }

    @Test func qmpRepliesKeep64BitIntegers() throws {
        #expect(try LuaValue(json: #"{"a": 9007199254740993, "b": -9223372036854775808, "c": 18446744073709551615, "d": 1.5, "e": [true, null]}"#)
                == .table(["a": .int(9007199254740993), "b": .int(Int64.min), "c": .number(18446744073709551616.0),
                           "d": .number(1.5), "e": .array([.bool(true), .nil])]))
    }

    @Test func anInvalidPatternOrAnExecTimeoutReadsAtThePlansLine() async {
        let outcome = await run("""
            local v = vm.create{name = "p", kernel = "/k"}
            v:start()
            local ok, e = pcall(v.wait_for_console, v, "[", {timeout = 1})
            assert(not ok and e:match("^plan:3: vm.wait_for_console: invalid pattern"), e)
            ok, e = pcall(v.exec, v, "true", {timeout = 0.3})
            assert(not ok and e:match("^plan:5: vm 'p': exec: no shell answered on the serial console within 0.3s"), e)
            v:delete{force = true}
            """)
        #expect(outcome.kind == .success, "\(outcome.message ?? "")")
    }

    @Test func aPlansOwnCoroutineCanYieldAndCallTheAPI() async {
        let outcome = await run("""
            local v = vm.create{name = "co", kernel = "/k"}
            local gen = coroutine.wrap(function() for i = 1, 3 do coroutine.yield(i, v:info().state) end end)
            local a, s = gen()
            assert(a == 1 and s == "created", tostring(s))
            assert(gen() == 2)
            local r = { vm.parallel() }
            assert(#r == 0)
            local ok, e = pcall(coroutine.yield, 7)
            assert(not ok and e:match("^plan:8: coroutine.yield"), e)
            """)
        #expect(outcome.kind == .success, "\(outcome.message ?? "")")
    }
}
