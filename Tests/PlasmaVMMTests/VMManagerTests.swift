import PlasmaTestSupport
import PlasmaVMM
import Testing

@Suite("VM manager over a fake hypervisor")
struct VMManagerTests {
    let fake = FakeHypervisor()
    var manager: VMManager { VMManager(hypervisor: fake) }

    func spec(_ name: String = "t1") throws -> VMSpec {
        VMSpec(name: try VMName(name), kernel: "/k")
    }

    /// Brings a fresh VM into `state` through the manager.
    func vm(in state: VMState, name: String = "t1") async throws -> VMName {
        let m = manager
        let n = try VMName(name)
        _ = try await m.create(try spec(name))
        switch state {
        case .created: break
        case .running: _ = try await m.start(n)
        case .paused: _ = try await m.start(n); try await m.pause(n)
        case .stopped: _ = try await m.stop(n)
        case .crashed: _ = try await m.start(n); fake.crash(n)
        }
        #expect(try await m.status(n).state == state)
        return n
    }

    func perform(_ op: VMOperation, _ n: VMName) async throws {
        let m = manager
        switch op {
        case .start: _ = try await m.start(n)
        case .stop: _ = try await m.stop(n, timeout: .seconds(1))
        case .kill: try await m.kill(n)
        case .pause: try await m.pause(n)
        case .resume: try await m.resume(n)
        case .delete: try await m.delete(n)
        }
    }

    @Test(arguments: VMOperation.allCases, VMState.allCases)
    func operationIsAppliedExactlyWhenTheTableAllowsIt(_ op: VMOperation, _ state: VMState) async throws {
        let n = try await vm(in: state)
        let before = fake.calls.count
        if op.isLegal(in: state) {
            try await perform(op, n)
            #expect(fake.calls.count == before + 1)
            #expect(fake.calls.last == "\(op) \(n)")
            if let target = op.target {
                #expect(try await manager.status(n).state == target)
            } else {
                await #expect(throws: PlasmaError.self) { try await manager.status(n) }
            }
        } else {
            await #expect {
                try await perform(op, n)
            } throws: { error in
                let e = error as! PlasmaError
                return e.code == .invalidState && e.message.contains("vm '\(n)'")
            }
            #expect(fake.calls.count == before, "an illegal \(op) must not reach the backend")
        }
    }

    @Test func forcedDeleteKillsALiveVMFirst() async throws {
        let n = try await vm(in: .running)
        try await manager.delete(n, force: true)
        #expect(fake.calls.suffix(2) == ["kill t1", "delete t1"])
        #expect(try await manager.list().isEmpty)
    }

    @Test func unknownVMIsNotFoundNamingIt() async throws {
        await #expect(throws: PlasmaError(.notFound, "vm 'ghost' does not exist; see plasmavmc ls")) {
            try await manager.start(try VMName("ghost"))
        }
    }

    @Test func duplicateNameIsRefused() async throws {
        _ = try await vm(in: .created)
        await #expect {
            try await manager.create(try spec())
        } throws: { ($0 as! PlasmaError).code == .alreadyExists }
    }

    @Test func invalidSpecNeverReachesTheBackend() async throws {
        var s = try spec()
        s.cpus = 0
        await #expect(throws: PlasmaError.self) { try await manager.create(s) }
        #expect(fake.calls.isEmpty)
    }

    @Test func negativeStopTimeoutIsInvalid() async throws {
        let n = try await vm(in: .running)
        await #expect {
            try await manager.stop(n, timeout: .seconds(-1))
        } throws: { ($0 as! PlasmaError).code == .invalidArgument }
    }

    @Test func concurrentStopsOfOneVMTakeTurns() async throws {
        let slow = FakeHypervisor(operationDelay: .milliseconds(100))
        let m = VMManager(hypervisor: slow)
        let n = try VMName("race")
        _ = try await m.create(VMSpec(name: n, kernel: "/k"))
        _ = try await m.start(n)
        async let a: Result<StopOutcome, PlasmaError> = { do { return .success(try await m.stop(n)) } catch { return .failure(error as! PlasmaError) } }()
        async let b: Result<StopOutcome, PlasmaError> = { do { return .success(try await m.stop(n)) } catch { return .failure(error as! PlasmaError) } }()
        let results = await [a, b]
        let successes = results.filter { if case .success = $0 { return true } else { return false } }
        #expect(successes.count == 1, "exactly one stop acts; the other sees the stopped VM")
        #expect(slow.calls.filter { $0 == "stop race" }.count == 1)
        for case .failure(let e) in results {
            #expect(e.message == "cannot stop vm 'race': it is already stopped")
        }
    }

    @Test func listReportsEveryVMWithItsState() async throws {
        _ = try await vm(in: .running, name: "b")
        _ = try await vm(in: .stopped, name: "a")
        let list = try await manager.list()
        #expect(list.map(\.name.rawValue) == ["a", "b"])
        #expect(list.map { try? $0.status.get().state } == [.stopped, .running])
    }

    @Test func consoleLogTail() async throws {
        let n = try await vm(in: .running)
        fake.appendConsole(n, "line one\nline two\n")
        #expect(try await manager.consoleLog(n) == "line one\nline two\n")
        #expect(try await manager.consoleLog(n, maxBytes: 9) == "line two\n")
    }
}
