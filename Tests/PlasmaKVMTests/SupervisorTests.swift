import CPlasmaSys
import Foundation
import PlasmaKVM
import PlasmaQMP
import PlasmaTestSupport
import PlasmaVMM
import Testing

/// The per-VM supervisor with real QEMU and the real guest: exact exit reasons, the event
/// log, the shared console, the capped log, and every fault that used to leak or hang.
@Suite("Supervisor with real QEMU", .serialized, .enabled(if: TestGuest.isAvailable, "needs QEMU and the test guest (scripts/build-guest.sh)"))
struct SupervisorTests {
    func withManager(consoleLogMax: Int? = nil, rootBelow: String? = nil,
                     _ body: (VMManager, RuntimeRoot) async throws -> Void) async throws {
        let left = try await TestRuntime.around { runtime in
            let root = RuntimeRoot(path: rootBelow ?? runtime.root)
            try await body(VMManager(hypervisor: KVMHypervisor(root: root, consoleLogMax: consoleLogMax)), root)
        }
        #expect(left.folders.isEmpty, "VM folders left behind: \(left.folders)")
        #expect(left.processes.isEmpty, "processes left behind: \(left.processes)")
        if let rootBelow {
            let stray = TestRuntime.processes(mentioning: rootBelow)
            stray.forEach { kill($0, SIGKILL) }
            #expect(stray.isEmpty, "processes left behind: \(stray)")
            let folders = (try? FileManager.default.contentsOfDirectory(atPath: rootBelow))?.filter { !$0.hasPrefix(".") } ?? []
            #expect(folders.isEmpty, "VM folders left behind: \(folders)")
        }
    }

    func spec(_ name: String, append: String = "quiet") throws -> VMSpec {
        VMSpec(name: try VMName(name), kernel: TestGuest.kernel, initrd: TestGuest.initrd, append: append,
               memory: MemorySize(mebibytes: 256), cpus: 1, accel: .tcg)
    }

    /// Boots a VM and waits for the guest's ready line.
    func boot(_ m: VMManager, _ root: RuntimeRoot, _ name: String, append: String = "quiet") async throws -> VMName {
        let n = try VMName(name)
        _ = try await m.create(try spec(name, append: append))
        _ = try await m.start(n)
        _ = try await waitForConsole(root.paths(n).consoleLog, contains: TestGuest.readyLine)
        return n
    }

    func waitFor(_ m: VMManager, _ n: VMName, timeout: Duration = .seconds(60),
                 _ done: (VMStatus) -> Bool) async throws -> VMStatus {
        let deadline = ContinuousClock.now + timeout
        while true {
            let s = try await m.status(n)
            if done(s) { return s }
            if ContinuousClock.now >= deadline { throw PlasmaError(.timeout, "vm '\(n)' is \(s.state) (\(s.reasonCode): \(s.reason ?? "")) after \(timeout)") }
            try await Task.sleep(for: .milliseconds(50))
        }
    }

    func supervisorPID(_ root: RuntimeRoot, _ n: VMName) throws -> Int32 {
        let data = try #require(FileManager.default.contents(atPath: root.paths(n).launch))
        let obj = try #require(try JSONSerialization.jsonObject(with: data) as? [String: Any])
        let sup = try #require(obj["supervisor"] as? [String: Any])
        return Int32(try #require(sup["pid"] as? Int))
    }

    func kinds(_ m: VMManager, _ n: VMName) async throws -> [String] {
        try await m.events(n).events.map(\.kind)
    }

    // MARK: exact reasons

    @Test func guestPoweroffIsGuestShutdown() async throws {
        try await withManager { m, root in
            let n = try VMName("off")
            _ = try await m.create(try spec("off", append: "quiet plasma.poweroff=now"))
            _ = try await m.start(n)
            let s = try await waitFor(m, n) { $0.pid == nil }
            #expect(s.state == .stopped)
            #expect(s.reasonCode == .guestShutdown, "\(s)")
            let kinds = try await kinds(m, n)
            #expect(kinds.starts(with: ["create", "launch", "greeting", "resume"]), "\(kinds)")
            #expect(kinds.suffix(2) == ["shutdown", "exit"], "\(kinds)")
            try await m.delete(n)
        }
    }

    @Test func sigkillFromOutsideIsKilledNamingTheSignal() async throws {
        try await withManager { m, root in
            let n = try await boot(m, root, "sk")
            let pid = try #require(try await m.status(n).pid)
            var t0 = timespec()
            clock_gettime(CLOCK_REALTIME, &t0)
            kill(pid, SIGKILL)
            let s = try await waitFor(m, n, timeout: .seconds(30)) { $0.pid == nil }
            #expect(s.state == .crashed)
            #expect(s.reasonCode == .killed)
            #expect(s.reason == "killed by SIGKILL from outside plasmavmc")
            // Under 2 s by the supervisor's own clock (the exit event's time), whatever the load
            // on this test process.
            let exit = try #require(try await m.events(n).events.last)
            #expect(exit.kind == "exit")
            let sent = Int64(t0.tv_sec) * 1_000_000_000 + Int64(t0.tv_nsec)
            #expect(exit.unixNanos - sent < 2_000_000_000, "recorded \(Double(exit.unixNanos - sent) / 1e9) s after the signal")
            try await m.delete(n)
        }
    }

    @Test func quitFromAnotherQMPClientIsHostQuit() async throws {
        try await withManager { m, root in
            let n = try await boot(m, root, "hq")
            let client = try await QMPClient.connect(path: root.paths(n).qmpSocket)
            _ = try? await client.execute("quit")
            client.close()
            let s = try await waitFor(m, n) { $0.pid == nil }
            #expect(s.state == .stopped)
            #expect(s.reasonCode == .hostQuit, "\(s)")
            try await m.delete(n)
        }
    }

    @Test func sigtermFromOutsideIsHostSignalNamingIt() async throws {
        try await withManager { m, root in
            let n = try await boot(m, root, "ht")
            let pid = try #require(try await m.status(n).pid)
            kill(pid, SIGTERM)
            let s = try await waitFor(m, n) { $0.pid == nil }
            #expect(s.state == .stopped)
            #expect(s.reasonCode == .hostSignal, "\(s)")
            #expect(s.reason?.contains("SIGTERM") == true, "\(s)")
            try await m.delete(n)
        }
    }

    @Test func relaunchThatFailsReadsLaunchFailed() async throws {
        let tmp = try TempDir(prefix: "rl")
        defer { tmp.remove() }
        let broken = try writeScript(tmp.path, "qemu", "#!/bin/sh\necho 'qemu: cannot start today' >&2\nexit 1\n")
        try await withManager { m, root in
            let n = try VMName("again")
            _ = try await m.create(try spec("again"))
            try await m.kill(n)
            // The same VM, started by a process whose QEMU no longer starts.
            let other = VMManager(hypervisor: KVMHypervisor(root: root, qemuBinary: broken))
            await #expect {
                _ = try await other.start(n)
            } throws: { ($0 as! PlasmaError).code == .launchFailed }
            let s = try await m.status(n)
            #expect(s.state == .crashed && s.reasonCode == .launchFailed, "\(s)")
            #expect(s.reason?.contains("QEMU exited while starting") == true, "\(s)")
            #expect(try await kinds(m, n).last == "launch-failed")
            try await m.delete(n)
        }
    }

    @Test func qemuAbortingIsQemuCrashed() async throws {
        try await withManager { m, root in
            let n = try await boot(m, root, "abrt")
            kill(try #require(try await m.status(n).pid), SIGABRT)
            let s = try await waitFor(m, n) { $0.pid == nil }
            #expect(s.state == .crashed && s.reasonCode == .qemuCrashed && s.reason == "QEMU crashed (SIGABRT)", "\(s)")
            try await m.delete(n)
        }
    }

    @Test func stoppedSupervisorDoesNotHoldUpStopOrKill() async throws {
        try await withManager { m, root in
            let n = try await boot(m, root, "frozen")
            let sup = try supervisorPID(root, n)
            kill(sup, SIGSTOP)
            defer { kill(sup, SIGKILL) }
            let clock = ContinuousClock()
            let t0 = clock.now
            #expect(try await m.status(n).state == .running)
            #expect(try await m.stop(n, timeout: .seconds(10)).step == .powerdown)
            #expect(clock.now - t0 < .seconds(60))
            let requested = try await m.events(n).events.last { $0.kind == "stop-requested" }
            #expect(requested?.json.contains("\"supervisor\":\"lost\"") == true,
                    "stop went by pid, not through the frozen supervisor: \(requested?.json ?? "no stop-requested event")")
            kill(sup, SIGKILL)
            try await m.delete(n)
        }
    }

    @Test func stopAndKillByPlasmavmcAreStopAndKilledWithTheirSteps() async throws {
        try await withManager { m, root in
            let n = try await boot(m, root, "sp")
            #expect(try await m.stop(n).step == .powerdown)
            let s = try await m.status(n)
            #expect(s.reasonCode == .stop && s.reason == "stopped by plasmavmc stop (step: powerdown)", "\(s)")
            let kinds = try await kinds(m, n)
            #expect(kinds.contains("stop-requested") && kinds.contains("stop-step") && kinds.contains("powerdown"), "\(kinds)")
            _ = try await m.start(n)
            try await m.kill(n)
            let k = try await m.status(n)
            #expect(k.state == .stopped && k.reasonCode == .killed && k.reason == "killed by plasmavmc kill (SIGKILL)", "\(k)")
            try await m.delete(n)
        }
    }

    // MARK: supervisor loss and bad records

    @Test func supervisorKilledLeavesQEMURunningAndStopStillWorks() async throws {
        try await withManager { m, root in
            let n = try await boot(m, root, "orphan")
            let qemu = try #require(try await m.status(n).pid)
            kill(try supervisorPID(root, n), SIGKILL)
            let lost = try await waitFor(m, n, timeout: .seconds(5)) { $0.reasonCode == .supervisorLost }
            #expect(lost.state == .running, "\(lost)")
            #expect(lost.pid == qemu)
            #expect(isLive(qemu), "QEMU runs on")
            let outcome = try await m.stop(n, timeout: .seconds(20))
            #expect(outcome.step == .powerdown)
            let s = try await m.status(n)
            #expect(s.state == .stopped && s.reasonCode == .stop, "\(s)")
            try await m.delete(n)
        }
    }

    @Test func garbageLaunchRecordNeverOrphansALiveQEMU() async throws {
        try await withManager { m, root in
            let n = try await boot(m, root, "garbage")
            let qemu = try #require(try await m.status(n).pid)
            let paths = root.paths(n)
            // A bad record, then also no supervisor: the pidfile (checked against the command
            // line) still finds QEMU.
            try "{not json".write(toFile: paths.launch, atomically: false, encoding: .utf8)
            #expect(try await m.status(n).pid == qemu)
            let sup = try #require(TestRuntime.processes(mentioning: paths.directory).first { $0 != qemu })
            kill(sup, SIGKILL)
            let s = try await waitFor(m, n, timeout: .seconds(5)) { $0.reasonCode == .supervisorLost }
            #expect(s.pid == qemu)
            await #expect {
                try await m.delete(n)
            } throws: { ($0 as! PlasmaError).code == .invalidState }
            #expect(isLive(qemu), "a refused delete leaves QEMU and its folder alone")
            #expect(try await m.stop(n, timeout: .seconds(10)).step != .alreadyGone)
            #expect(!isLive(qemu))
            try await m.delete(n)
        }
    }

    @Test func createKilledBeforeTheLaunchRecordStillKnowsItsQEMU() async throws {
        try await withManager { m, root in
            let n = try await boot(m, root, "half")
            let qemu = try #require(try await m.status(n).pid)
            // What a create killed ~20 ms in left: a temp file and no record.
            let paths = root.paths(n)
            try FileManager.default.moveItem(atPath: paths.launch, toPath: paths.launch + ".tmp")
            let s = try await m.status(n)
            #expect(s.state == .running && s.pid == qemu, "\(s)")
            try await m.delete(n, force: true)
            #expect(!isLive(qemu))
        }
    }

    // MARK: hung QEMU

    @Test func hungQEMUIsMarkedAndKilledAndListAnswers() async throws {
        try await withManager { m, root in
            let n = try await boot(m, root, "hung")
            let pid = try #require(try await m.status(n).pid)
            kill(pid, SIGSTOP)
            // Fill the monitor's backlog as a pile of clients would.
            var fds: [Int32] = []
            for _ in 0..<20 {
                let fd = root.paths(n).qmpSocket.withCString { plasma_unix_connect_timeout($0, 100) }
                if fd >= 0 { fds.append(fd) }
            }
            defer { fds.forEach { close($0) } }
            let clock = ContinuousClock()
            let t0 = clock.now
            let all = try await m.list()
            // It takes milliseconds (it used to block for ever); the bound leaves room for a
            // loaded machine running the whole suite.
            #expect(clock.now - t0 < .seconds(5), "ls answers at once beside a hung VM")
            let entry = try #require(all.first)
            let s = try entry.status.get()
            #expect(s.reason?.contains("stopped by a signal") == true, "\(s)")
            try await m.kill(n)
            #expect(try await m.status(n).reasonCode == .killed)
            try await m.delete(n)
        }
    }

    @Test func hungQEMUIsStoppedWithinTheTimeoutAndForceDeleted() async throws {
        try await withManager { m, root in
            let a = try await boot(m, root, "hung-a")
            kill(try #require(try await m.status(a).pid), SIGSTOP)
            let clock = ContinuousClock()
            let t0 = clock.now
            let outcome = try await m.stop(a, timeout: .seconds(4))
            #expect(outcome.step == .sigkill)
            #expect(clock.now - t0 < .seconds(4 + 10), "within the timeout plus the SIGKILL wait")
            try await m.delete(a)

            let b = try await boot(m, root, "hung-b")
            kill(try #require(try await m.status(b).pid), SIGSTOP)
            try await m.delete(b, force: true)
        }
    }

    // MARK: console

    @Test func consoleServesManyClientsAtOnce() async throws {
        try await withManager { m, root in
            let n = try await boot(m, root, "share")
            // An attached reader that keeps reading, as `plasmavmc console` does.
            let reader = try await m.consoleConnection(n)
            let seen = ConsoleReader(fd: reader)
            defer { seen.stop() }
            for i in 0..<20 {
                try await m.sendConsole(n, "echo mark-\(i)-$((\(i) * 2))\n")
            }
            _ = try await waitForConsole(root.paths(n).consoleLog, contains: "mark-19-38", timeout: .seconds(60))
            let deadline = ContinuousClock.now + .seconds(10)
            while !seen.text.contains("mark-19-38"), ContinuousClock.now < deadline {
                try await Task.sleep(for: .milliseconds(50))
            }
            #expect(seen.text.contains("mark-0-0") && seen.text.contains("mark-19-38"),
                    "the attached reader sees what the writers caused")
            try await m.delete(n, force: true)
        }
    }

    @Test func consoleLogIsCappedAndRotatedAndStopWorksOnAFullDisk() async throws {
        let mount = try TempDir(prefix: "tmpfs")
        defer { mount.remove() }
        #expect(runTool("/bin/mount", ["-t", "tmpfs", "-o", "size=3m,mode=0700", "tmpfs", mount.path]) == 0)
        defer { _ = runTool("/bin/umount", ["-l", mount.path]) }
        let cap = 64 * 1024
        try await withManager(consoleLogMax: cap, rootBelow: mount.path + "/rt") { m, root in
            let n = try await boot(m, root, "chatty")
            try await m.sendConsole(n, "while true; do echo 0123456789012345678901234567890123456789; done\n")
            let paths = root.paths(n)
            let deadline = ContinuousClock.now + .seconds(90)
            while (try? FileManager.default.attributesOfItem(atPath: paths.consoleLog + ".1")) == nil {
                if ContinuousClock.now >= deadline { Issue.record("the console log never rotated"); break }
                try await Task.sleep(for: .milliseconds(100))
            }
            // Fill the disk: what the guest prints and plasmavmc's records now hit ENOSPC.
            _ = runTool("/bin/dd", ["if=/dev/zero", "of=\(mount.path)/filler", "bs=64k", "count=100"])
            var st = statvfs()
            #expect(statvfs(mount.path, &st) == 0 && st.f_bavail == 0, "the disk is full")
            try await Task.sleep(for: .seconds(1))
            for file in [paths.consoleLog, paths.consoleLog + ".1"] {
                let size = try #require(try FileManager.default.attributesOfItem(atPath: file)[.size] as? Int)
                #expect(size <= cap, "\(file) is \(size) bytes, over the cap")
            }
            let outcome = try await m.stop(n, timeout: .seconds(10))
            #expect(outcome.step != .alreadyGone)
            let s = try await m.status(n)
            #expect(s.state == .stopped && s.reasonCode == .stop, "how it ended is recorded on a full disk: \(s)")
            try await m.delete(n)
        }
    }

    // MARK: deadlines and cancellation

    @Test func connectToAServerThatNeverAcceptsTimesOut() async throws {
        let tmp = try TempDir(prefix: "bl")
        defer { tmp.remove() }
        let path = tmp.path + "/full.sock"
        let listener = path.withCString { plasma_unix_listen($0, 0) }
        #expect(listener >= 0)
        defer { close(listener) }
        var fds: [Int32] = []
        var last: Int32 = 0
        for _ in 0..<10 {
            last = path.withCString { plasma_unix_connect_timeout($0, 200) }
            if last < 0 { break }
            fds.append(last)
        }
        fds.forEach { close($0) }
        #expect(last == -ETIMEDOUT, "a full backlog ends in a timeout, never a hang")
    }

    @Test func cancelledStopEndsAtOnceAndReleasesTheLock() async throws {
        try await withManager { m, root in
            let n = try await boot(m, root, "cancel", append: "quiet plasma.powerdown=ignore")
            let stop = Task { try await m.stop(n, timeout: .seconds(60)) }
            try await Task.sleep(for: .milliseconds(500))
            let clock = ContinuousClock()
            let t0 = clock.now
            stop.cancel()
            _ = await stop.result
            // A stop that ignored cancellation would run its 60 s; the bound leaves room for load.
            #expect(clock.now - t0 < .seconds(20), "a cancelled stop returns at once")
            // The lock is free: another operation goes through.
            try await m.kill(n)
            try await m.delete(n)
        }
    }

    @Test func manyCreatesFromManyProcessesAtOnce() async throws {
        let runtime = try TestRuntime()
        defer { runtime.finish() }
        let cli = CLIRunner(runtimeDir: runtime.root)
        let results = try await withThrowingTaskGroup(of: CLIRunner.Result.self) { group in
            for i in 0..<8 {
                group.addTask {
                    try await cli.run(["create", "m\(i)", "--kernel", TestGuest.kernel, "--initrd", TestGuest.initrd, "--accel", "tcg"])
                }
            }
            return try await group.reduce(into: []) { $0.append($1) }
        }
        #expect(results.allSatisfy { $0.status == 0 }, "\(results.map(\.stderr))")
        let ls = try await cli.run("ls", "--json")
        #expect((try JSONSerialization.jsonObject(with: Data(ls.stdout.utf8)) as? [[String: Any]])?
            .filter { $0["state"] as? String == "created" }.count == 8, "\(ls.stdout)")
        for i in 0..<8 { #expect(try await cli.run("delete", "m\(i)", "--force").status == 0) }
        #expect(runtime.processes.isEmpty)
        #expect(runtime.vmFolders.isEmpty)
    }
}

/// Reads a console socket on a thread of its own until stopped.
final class ConsoleReader: @unchecked Sendable {
    private let lock = NSLock()
    private var buffer = ""
    private let fd: Int32
    private var running = true

    init(fd: Int32) {
        self.fd = fd
        let t = Thread { [self] in
            var chunk = [UInt8](repeating: 0, count: 4096)
            while lock.withLock({ running }) {
                var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
                guard poll(&p, 1, 100) >= 0 else { break }
                if p.revents == 0 { continue }
                let n = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
                if n <= 0 { break }
                let s = String(decoding: chunk[..<n], as: UTF8.self)
                lock.withLock { buffer += s }
            }
        }
        t.start()
    }

    var text: String { lock.withLock { buffer } }

    func stop() {
        lock.withLock { running = false }
        usleep(150_000)
        close(fd)
    }
}

/// Alive and not a zombie (an orphan's zombie lingers until init reaps it).
func isLive(_ pid: Int32) -> Bool {
    var start: UInt64 = 0
    var state: CChar = 0
    return plasma_proc_stat(pid, &start, &state) == 0 && state != CChar(UInt8(ascii: "Z"))
}

@discardableResult
func runTool(_ tool: String, _ args: [String]) -> Int32 {
    let p = Process()
    p.executableURL = URL(fileURLWithPath: tool)
    p.arguments = args
    p.standardOutput = FileHandle.nullDevice
    p.standardError = FileHandle.nullDevice
    do { try p.run() } catch { return -1 }
    p.waitUntilExit()
    return p.terminationStatus
}
