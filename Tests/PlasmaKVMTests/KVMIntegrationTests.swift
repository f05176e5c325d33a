import Foundation
import PlasmaKVM
import PlasmaQMP
import PlasmaTestSupport
import PlasmaVMM
import Testing

/// Real QEMU booting the real test guest under TCG. Serialized: two cores, and each boot
/// takes seconds of emulated CPU.
@Suite("KVM backend with real QEMU", .serialized, .enabled(if: TestGuest.isAvailable, "needs QEMU and the test guest (scripts/build-guest.sh)"))
struct KVMIntegrationTests {
    /// Runs `body` with a manager over a private runtime root, then checks that no QEMU
    /// process, socket or folder was left behind, pass or fail.
    func withManager(qemu: String? = nil, _ body: (VMManager, RuntimeRoot) async throws -> Void) async throws {
        let left = try await TestRuntime.around { runtime in
            let root = RuntimeRoot(path: runtime.root)
            try await body(VMManager(hypervisor: KVMHypervisor(root: root, qemuBinary: qemu)), root)
        }
        #expect(left.folders.isEmpty, "VM folders left behind: \(left.folders)")
        #expect(left.processes.isEmpty, "processes left behind: \(left.processes)")
    }

    func guestSpec(_ name: String, append: String = "quiet", networks: [NetworkSpec] = [],
                   disks: [String] = [], kernel: String = TestGuest.kernel) throws -> VMSpec {
        VMSpec(name: try VMName(name), kernel: kernel, initrd: TestGuest.initrd, append: append,
               memory: MemorySize(mebibytes: 256), cpus: 1, disks: disks, networks: networks, accel: .tcg)
    }

    func waitReady(_ root: RuntimeRoot, _ name: String) async throws {
        _ = try await waitForConsole(root.paths(try VMName(name)).consoleLog, contains: TestGuest.readyLine)
    }

    func waitForState(_ m: VMManager, _ n: VMName, _ state: VMState, timeout: Duration = .seconds(60)) async throws -> VMStatus {
        let clock = ContinuousClock()
        let deadline = clock.now + timeout
        while true {
            let s = try await m.status(n)
            if s.state == state { return s }
            if clock.now >= deadline { throw PlasmaError(.timeout, "vm '\(n)' stayed \(s.state) (\(s.reason ?? "")), wanted \(state)") }
            try await Task.sleep(for: .milliseconds(100))
        }
    }

    @Test func fullLifecycleBootsPausesStopsRestartsKillsAndDeletes() async throws {
        try await withManager { (m: VMManager, root: RuntimeRoot) async throws in
            let n = try VMName("life")
            let created = try await m.create(try guestSpec("life"))
            #expect(created.state == .created)
            #expect(created.accel == "tcg")
            #expect(try await m.status(n).state == .created)
            let paths = root.paths(n)
            var mode = stat()
            #expect(stat(paths.directory, &mode) == 0 && mode.st_mode & 0o777 == 0o700)

            #expect(try await m.start(n).state == .running)
            try await waitReady(root, "life")
            #expect(try await m.status(n).state == .running)

            try await m.pause(n)
            #expect(try await m.status(n).state == .paused)
            try await m.resume(n)
            #expect(try await m.status(n).state == .running)

            let outcome = try await m.stop(n, timeout: .seconds(30))
            #expect(outcome.step == .powerdown)
            let stopped = try await m.status(n)
            #expect(stopped.state == .stopped)
            #expect(stopped.pid == nil)

            // A stopped VM boots again from its recorded spec.
            #expect(try await m.start(n).state == .running)
            #expect(try await m.status(n).state == .running)
            try await m.kill(n)
            #expect(try await m.status(n) == VMStatus(state: .stopped, reason: "killed by plasmavmc kill (SIGKILL)",
                                                      reasonCode: .killed, accel: "tcg"))

            try await m.delete(n)
            #expect(!FileManager.default.fileExists(atPath: paths.directory))
            await #expect(throws: PlasmaError(.notFound, "vm 'life' does not exist; see plasmavmc ls")) {
                try await m.status(n)
            }
        }
    }

    @Test func guestThatIgnoresPowerdownIsStoppedByQuit() async throws {
        try await withManager { (m: VMManager, root: RuntimeRoot) async throws in
            let n = try VMName("deaf")
            _ = try await m.create(try guestSpec("deaf", append: "quiet plasma.powerdown=ignore"))
            _ = try await m.start(n)
            try await waitReady(root, "deaf")
            let outcome = try await m.stop(n, timeout: .seconds(6))
            #expect(outcome.step == .quit)
            // A hang guard, not a speed check: with the machine loaded by parallel builds and two
            // test processes of 10 GB, a 6 s stop was measured at 14.6 s (see the stop-12 note).
            #expect(outcome.elapsed < .seconds(24), "a 6 s stop ends within its timeout plus the SIGKILL wait, with room for a loaded machine")
            #expect(try await m.status(n).state == .stopped)
            try await m.delete(n)
        }
    }

    @Test func panickingGuestIsCrashedAndNeedsForceToDelete() async throws {
        try await withManager { (m: VMManager, root: RuntimeRoot) async throws in
            let n = try VMName("panic")
            _ = try await m.create(try guestSpec("panic", append: "quiet plasma.panic=now"))
            _ = try await m.start(n)
            let s = try await waitForState(m, n, .crashed)
            #expect(s.reasonCode == .guestPanicked)
            #expect(s.reason == "the guest panicked")
            #expect(s.pid != nil)
            await #expect {
                try await m.delete(n)
            } throws: { ($0 as! PlasmaError).code == .invalidState }
            try await m.delete(n, force: true)
        }
    }

    @Test func guestPoweroffReadsStoppedFromAnotherProcessView() async throws {
        try await withManager { (m: VMManager, root: RuntimeRoot) async throws in
            let n = try VMName("off")
            _ = try await m.create(try guestSpec("off", append: "quiet plasma.poweroff=now"))
            _ = try await m.start(n)
            var s = try await waitForState(m, n, .stopped)
            // "stopped" comes with QEMU's shutdown run state, a moment before it exits.
            while s.pid != nil {
                try await Task.sleep(for: .milliseconds(20))
                s = try await m.status(n)
            }
            #expect(s.reasonCode == .guestShutdown, "\(s)")
            #expect(s.reason?.contains("the guest shut down") == true, "\(s)")
            // A second manager (as another process would) derives the same state from the folder.
            let other = VMManager(hypervisor: KVMHypervisor(root: root))
            #expect(try await other.status(n).state == .stopped)
            try await m.delete(n)
        }
    }

    @Test func qemuKilledFromOutsideIsCrashedNeverRunning() async throws {
        try await withManager { (m: VMManager, root: RuntimeRoot) async throws in
            let n = try VMName("victim")
            _ = try await m.create(try guestSpec("victim"))
            let running = try await m.start(n)
            kill(running.pid!, SIGKILL)
            let s = try await waitForState(m, n, .crashed, timeout: .seconds(10))
            #expect(s.pid == nil)
            #expect(s.reasonCode == .killed)
            #expect(s.reason == "killed by SIGKILL from outside plasmavmc")
            try await m.delete(n)
        }
    }

    @Test func userNetworkForwardsAPortAndDisksAreAttached() async throws {
        try await withManager { (m: VMManager, root: RuntimeRoot) async throws in
            let tmp = try TempDir(prefix: "dsk")
            defer { tmp.remove() }
            let disk = tmp.path + "/with,comma.qcow2"
            let img = Process()
            img.executableURL = URL(fileURLWithPath: "/usr/bin/qemu-img")
            img.arguments = ["create", "-q", "-f", "qcow2", disk, "16M"]
            try img.run()
            img.waitUntilExit()
            #expect(img.terminationStatus == 0)
            let port = UInt16.random(in: 20000...40000)
            let n = try VMName("net")
            _ = try await m.create(try guestSpec("net", networks: [NetworkSpec(forwards: [
                PortForward(hostAddress: "127.0.0.1", hostPort: port, guestPort: 80)])], disks: [disk]))
            _ = try await m.start(n)
            try await waitReady(root, "net")
            let client = try await QMPClient.connect(path: root.paths(n).qmpSocket)
            let blocks = try await client.execute("query-block")
            client.close()
            #expect(blocks.description.contains("with,comma.qcow2"))
            var body = ""
            for _ in 0..<50 where !body.contains("plasmavmc test guest") {
                body = httpGet(port: port)
                if body.isEmpty { try await Task.sleep(for: .milliseconds(200)) }
            }
            #expect(body.contains("plasmavmc test guest"))
            try await m.delete(n, force: true)
        }
    }

    @Test func kernelPathWithACommaBoots() async throws {
        try await withManager { (m: VMManager, root: RuntimeRoot) async throws in
            let tmp = try TempDir(prefix: "k,c")
            defer { tmp.remove() }
            let kernel = tmp.path + "/vm,linuz"
            try FileManager.default.copyItem(atPath: TestGuest.kernel, toPath: kernel)
            let n = try VMName("comma")
            _ = try await m.create(try guestSpec("comma", kernel: kernel))
            _ = try await m.start(n)
            try await waitReady(root, "comma")
            try await m.delete(n, force: true)
        }
    }

    @Test func twoStopsOfOneRealVMTakeTurns() async throws {
        try await withManager { (m: VMManager, root: RuntimeRoot) async throws in
            let n = try VMName("race")
            _ = try await m.create(try guestSpec("race"))
            _ = try await m.start(n)
            try await waitReady(root, "race")
            let other = VMManager(hypervisor: KVMHypervisor(root: root))
            async let a: PlasmaError? = { do { _ = try await m.stop(n); return nil } catch { return error as? PlasmaError } }()
            async let b: PlasmaError? = { do { _ = try await other.stop(n); return nil } catch { return error as? PlasmaError } }()
            let errors = await [a, b].compactMap { $0 }
            #expect(errors.map(\.message) == ["cannot stop vm 'race': it is already stopped"])
            try await m.delete(n)
        }
    }

    // MARK: faults

    func expectFailure(_ code: PlasmaError.Code, containing text: String,
                       _ body: () async throws -> Void) async {
        do {
            try await body()
            Issue.record("expected a \(code) error containing '\(text)'")
        } catch let e as PlasmaError {
            #expect(e.code == code, "\(e)")
            #expect(e.message.contains(text), "\(e.message)")
        } catch {
            Issue.record("unexpected \(error)")
        }
    }

    @Test func missingKernelIsInvalidInput() async throws {
        try await withManager { (m: VMManager, _: RuntimeRoot) async throws in
            await expectFailure(.invalidArgument, containing: "kernel /nonexistent/vmlinuz does not exist") {
                _ = try await m.create(try guestSpec("nok", kernel: "/nonexistent/vmlinuz"))
            }
        }
    }

    @Test func memoryBeyondTheHostIsRefused() async throws {
        try await withManager { (m: VMManager, _: RuntimeRoot) async throws in
            var spec = try guestSpec("huge")
            spec.memory = MemorySize(mebibytes: 64 << 20)
            await expectFailure(.invalidArgument, containing: "is more than this host has") {
                _ = try await m.create(spec)
            }
        }
    }

    @Test func duplicateNameIsRefusedAndTheFirstVMSurvives() async throws {
        try await withManager { (m: VMManager, _: RuntimeRoot) async throws in
            _ = try await m.create(try guestSpec("dup"))
            await expectFailure(.alreadyExists, containing: "vm 'dup' already exists") {
                _ = try await m.create(try guestSpec("dup"))
            }
            #expect(try await m.status(try VMName("dup")).state == .created)
            try await m.delete(try VMName("dup"), force: true)
        }
    }

    @Test func runtimePathTooLongForASocketIsRefused() async throws {
        let runtime = try TestRuntime()
        defer { runtime.finish() }
        let deep = runtime.root + "/" + String(repeating: "d", count: 90)
        let m = VMManager(hypervisor: KVMHypervisor(root: RuntimeRoot(path: deep)))
        await expectFailure(.invalidArgument, containing: "longer than a unix socket path may be") {
            _ = try await m.create(try guestSpec("long"))
        }
        #expect(!FileManager.default.fileExists(atPath: deep + "/long"))
    }

    @Test func missingQEMUBinaryIsUnavailable() async throws {
        try await withManager(qemu: "/nonexistent/qemu-system-x86_64") { (m: VMManager, _: RuntimeRoot) async throws in
            await expectFailure(.unavailable, containing: "/nonexistent/qemu-system-x86_64 is missing") {
                _ = try await m.create(try guestSpec("noqemu"))
            }
        }
    }

    @Test func qemuExitingAtOnceReportsStatusAndLog() async throws {
        let tmp = try TempDir(prefix: "bad")
        defer { tmp.remove() }
        let wrapper = try writeScript(tmp.path, "qemu", "#!/bin/sh\nexec /usr/bin/qemu-system-x86_64 -no-such-option \"$@\"\n")
        try await withManager(qemu: wrapper) { (m: VMManager, _: RuntimeRoot) async throws in
            do {
                _ = try await m.create(try guestSpec("badopt"))
                Issue.record("create should fail")
            } catch let e as PlasmaError {
                #expect(e.code == .launchFailed)
                #expect(e.message.contains("exit status 1"), "\(e.message)")
                #expect(e.message.contains("-no-such-option"), "\(e.message)")
                #expect(e.cause?.contains("command: \(wrapper) -name guest=badopt") == true)
            }
        }
    }

    @Test func monitorThatNeverGreetsFailsTheLaunchAndCleansUp() async throws {
        let tmp = try TempDir(prefix: "mute")
        defer { tmp.remove() }
        let fake = try writeScript(tmp.path, "qemu", silentQMPScript)
        try await withManager(qemu: fake) { (m: VMManager, _: RuntimeRoot) async throws in
            await expectFailure(.launchFailed, containing: "QEMU's monitor did not greet within 5 s") {
                _ = try await m.create(try guestSpec("mute"))
            }
        }
    }
}
