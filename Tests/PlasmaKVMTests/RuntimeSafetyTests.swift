import Foundation
import PlasmaCore
@testable import PlasmaKVM
import PlasmaTestSupport
import Testing

/// CPU time used by this whole process so far, in seconds.
func processCPUSeconds() -> Double {
    var ts = timespec()
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts)
    return Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9
}

/// How many file descriptors of this process are open on `path`.
func openDescriptors(of path: String) -> Int {
    let dir = "/proc/self/fd"
    return ((try? FileManager.default.contentsOfDirectory(atPath: dir)) ?? []).filter {
        (try? FileManager.default.destinationOfSymbolicLink(atPath: dir + "/" + $0)) == path
    }.count
}

let nobodyUID: uid_t = 65534

/// Runs `body(i)` for i in 0..<count, each on a thread of its own; returns the errors thrown.
func onThreads(_ count: Int, _ body: @escaping @Sendable (Int) throws -> Void) async -> [String] {
    await withTaskGroup(of: String?.self) { group in
        for i in 0..<count {
            group.addTask {
                await withCheckedContinuation { (c: CheckedContinuation<String?, Never>) in
                    Thread {
                        do {
                            try body(i)
                            c.resume(returning: nil)
                        } catch {
                            c.resume(returning: "\(error)")
                        }
                    }.start()
                }
            }
        }
        var errors: [String] = []
        for await e in group { if let e { errors.append(e) } }
        return errors
    }
}

/// Runtime folders and records that are not plainly ours are refused, never trusted; records
/// are written atomically; cancelled waits end at once and give back what they held.
@Suite("Runtime folder safety and cancellation")
struct RuntimeSafetyTests {
    struct Sample: Codable, Equatable {
        var n: Int
        var text: String
    }

    // MARK: records

    @Test(.enabled(if: getuid() == 0, "giving a file to another user needs root"))
    func recordOwnedByAnotherUserIsRefusedNotIgnored() throws {
        let tmp = try TempDir(prefix: "rec")
        defer { tmp.remove() }
        let path = tmp.path + "/launch.json"
        try RecordFile.write(Sample(n: 1, text: "a"), to: path)
        #expect(try RecordFile.read(Sample.self, from: path) == Sample(n: 1, text: "a"))
        #expect(chown(path, nobodyUID, nobodyUID) == 0)
        let error = #expect(throws: PlasmaError.self) { try RecordFile.read(Sample.self, from: path) }
        #expect(error?.message.contains("\(path) is owned by uid \(nobodyUID)") == true, "\(error?.message ?? "")")
    }

    @Test func groupOrOtherWritableRecordIsRefused() throws {
        let tmp = try TempDir(prefix: "rec")
        defer { tmp.remove() }
        let path = tmp.path + "/launch.json"
        try RecordFile.write(Sample(n: 1, text: "a"), to: path)
        for mode: mode_t in [0o620, 0o602] {
            #expect(chmod(path, mode) == 0)
            let error = #expect(throws: PlasmaError.self) { try RecordFile.read(Sample.self, from: path) }
            #expect(error?.message.contains("writable by others") == true, "\(error?.message ?? "")")
        }
    }

    @Test func symlinkedRecordIsRefused() throws {
        let tmp = try TempDir(prefix: "rec")
        defer { tmp.remove() }
        try RecordFile.write(Sample(n: 1, text: "a"), to: tmp.path + "/real.json")
        #expect(symlink(tmp.path + "/real.json", tmp.path + "/launch.json") == 0)
        let error = #expect(throws: PlasmaError.self) { try RecordFile.read(Sample.self, from: tmp.path + "/launch.json") }
        #expect(error?.message.contains("is a symlink") == true, "\(error?.message ?? "")")
    }

    @Test func missingRecordIsNilAndAGarbledOneIsAnError() throws {
        let tmp = try TempDir(prefix: "rec")
        defer { tmp.remove() }
        #expect(try RecordFile.read(Sample.self, from: tmp.path + "/none.json") == nil)
        let path = tmp.path + "/bad.json"
        #expect(FileManager.default.createFile(atPath: path, contents: Data("{\"n\": ".utf8), attributes: [.posixPermissions: 0o600]))
        let error = #expect(throws: PlasmaError.self) { try RecordFile.read(Sample.self, from: path) }
        #expect(error?.message.contains("\(path) is unreadable") == true, "\(error?.message ?? "")")
    }

    @Test func concurrentWritersOfOneRecordNeverClashAndLeaveNoTempFiles() async throws {
        let tmp = try TempDir(prefix: "rec")
        defer { tmp.remove() }
        let path = tmp.path + "/record.json"
        // Threads of their own: each write fsyncs, which must not hold the cooperative pool.
        let failures = await onThreads(3) { writer in
            for i in 0..<100 {
                try RecordFile.write(Sample(n: i, text: String(repeating: "w\(writer)", count: 200)), to: path)
            }
        }
        #expect(failures.isEmpty, "\(failures)")
        let last = try #require(try RecordFile.read(Sample.self, from: path))
        #expect(last.n == 99)
        #expect(try FileManager.default.contentsOfDirectory(atPath: tmp.path) == ["record.json"])
        var st = stat()
        #expect(lstat(path, &st) == 0 && st.st_mode & 0o777 == 0o600)
    }

    // MARK: runtime folder

    @Test func runtimeRootIsCreatedPrivate() throws {
        let tmp = try TempDir(prefix: "rr")
        defer { tmp.remove() }
        let root = RuntimeRoot(path: tmp.path + "/a/plasmavmc")
        try root.ensureExists()
        var st = stat()
        #expect(lstat(root.path, &st) == 0 && st.st_mode & 0o777 == 0o700)
        try root.ensureExists()
    }

    @Test(.enabled(if: getuid() == 0, "giving a folder to another user needs root"))
    func runtimeRootOfAnotherUserIsRefused() throws {
        let tmp = try TempDir(prefix: "rr")
        defer { tmp.remove() }
        let path = tmp.path + "/plasmavmc"
        #expect(mkdir(path, 0o700) == 0 && chown(path, nobodyUID, nobodyUID) == 0)
        let error = #expect(throws: PlasmaError.self) { try RuntimeRoot(path: path).ensureExists() }
        #expect(error?.message.contains("runtime dir \(path) is owned by uid \(nobodyUID)") == true, "\(error?.message ?? "")")
    }

    @Test func writableOrSymlinkedRuntimeRootIsRefused() throws {
        let tmp = try TempDir(prefix: "rr")
        defer { tmp.remove() }
        let open = tmp.path + "/open"
        #expect(mkdir(open, 0o700) == 0 && chmod(open, 0o777) == 0)
        let e1 = #expect(throws: PlasmaError.self) { try RuntimeRoot(path: open).ensureExists() }
        #expect(e1?.message.contains("writable by others") == true, "\(e1?.message ?? "")")
        let link = tmp.path + "/link"
        let real = tmp.path + "/real"
        #expect(mkdir(real, 0o700) == 0 && symlink(real, link) == 0)
        let e2 = #expect(throws: PlasmaError.self) { try RuntimeRoot(path: link).ensureExists() }
        #expect(e2?.message.contains("is a symlink") == true, "\(e2?.message ?? "")")
    }

    // MARK: cancelled waits

    @Test func cancelledProcessWaitEndsAtOnceWithoutBurningCPU() async throws {
        let me = try #require(ProcessIdentity.of(pid: getpid()))
        let wait = Task { () async throws -> Bool in try await me.waitForExit(timeout: .seconds(60)) }
        try await Task.sleep(for: .milliseconds(200))
        let clock = ContinuousClock()
        let begin = clock.now
        let cpu = processCPUSeconds()
        wait.cancel()
        let result = await wait.result
        let spent = processCPUSeconds() - cpu
        #expect(throws: CancellationError.self) { try result.get() }
        // Bounds far from a prompt end and far from the hot loop this replaced (a core for
        // the whole 60 s), as other tests share this process's CPU and threads.
        #expect(clock.now - begin < .seconds(30), "the cancelled wait went on for \(clock.now - begin)")
        #expect(spent < 15, "the cancelled wait burnt \(spent) s of CPU")
    }

    @Test func cancelledLockWaitEndsAtOnceAndGivesTheLockFileBack() async throws {
        let tmp = try TempDir(prefix: "lk")
        defer { tmp.remove() }
        let path = tmp.path + "/lock"
        let holder = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0o600)
        #expect(holder >= 0 && flock(holder, LOCK_EX) == 0)
        let vm = try VMName("busy")
        let wait = Task { try await VMLock.acquire(path: path, vm: vm, timeout: .seconds(60)) }
        try await Task.sleep(for: .milliseconds(200))
        let clock = ContinuousClock()
        let begin = clock.now
        let cpu = processCPUSeconds()
        wait.cancel()
        let result = await wait.result
        let spent = processCPUSeconds() - cpu
        #expect(throws: CancellationError.self) { _ = try result.get() }
        #expect(clock.now - begin < .seconds(30), "the cancelled lock wait went on for \(clock.now - begin)")
        #expect(spent < 15, "the cancelled lock wait burnt \(spent) s of CPU")
        #expect(openDescriptors(of: path) == 1, "the cancelled lock wait kept its lock file open")
        close(holder)
        let lock = try await VMLock.acquire(path: path, vm: vm, timeout: .seconds(5))
        withExtendedLifetime(lock) {}
    }

    /// A QEMU stand-in that never opens its monitor, so `create` waits in its launch loop.
    static let neverListeningQEMU = """
        #!/usr/bin/env python3
        import time
        time.sleep(120)
        """

    @Test func cancelledLaunchEndsAtOnceKillsQEMUAndRemovesTheFolder() async throws {
        let tmp = try TempDir(prefix: "cl")
        defer { tmp.remove() }
        let fake = try writeScript(tmp.path, "qemu", Self.neverListeningQEMU)
        let kernel = tmp.path + "/vmlinuz"
        #expect(FileManager.default.createFile(atPath: kernel, contents: Data("k".utf8)))
        let left = try await TestRuntime.around { runtime in
            var kvm = KVMHypervisor(root: RuntimeRoot(path: runtime.root), qemuBinary: fake)
            kvm.launchTimeout = .seconds(60)
            let spec = VMSpec(name: try VMName("slow"), kernel: kernel, accel: .tcg)
            let create = Task { try await kvm.create(spec) }
            // The supervisor spawns the stand-in and waits for its monitor.
            let clock = ContinuousClock()
            let deadline = clock.now + .seconds(10)
            while TestRuntime.processes(mentioning: fake).isEmpty, clock.now < deadline {
                try await Task.sleep(for: .milliseconds(20))
            }
            #expect(!TestRuntime.processes(mentioning: fake).isEmpty, "QEMU was never spawned")
            let begin = clock.now
            create.cancel()
            let result = await create.result
            #expect(throws: CancellationError.self) { _ = try result.get() }
            #expect(clock.now - begin < .seconds(30), "the cancelled launch went on for \(clock.now - begin)")
            #expect(runtime.processes.isEmpty, "QEMU outlived the cancelled launch")
        }
        #expect(left.folders.isEmpty, "VM folders left behind: \(left.folders)")
        #expect(left.processes.isEmpty, "processes left behind: \(left.processes)")
    }

    /// Sets or clears the immutable attribute (which even root cannot delete through).
    static func chattr(_ flag: String, _ path: String) -> Int32 {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/chattr")
        p.arguments = [flag, path]
        guard (try? p.run()) != nil else { return -1 }
        p.waitUntilExit()
        return p.terminationStatus
    }

    @Test(.enabled(if: getuid() == 0 && FileManager.default.isExecutableFile(atPath: "/usr/bin/chattr"),
                   "a folder even root cannot remove needs root and chattr"))
    func cancelledDeleteStopsRetryingAtOnce() async throws {
        let left = try await TestRuntime.around { runtime in
            let kvm = KVMHypervisor(root: RuntimeRoot(path: runtime.root))
            let name = try VMName("stuck")
            let dir = runtime.root + "/stuck"
            #expect(mkdir(dir, 0o700) == 0)
            try RecordFile.write(VMSpec(name: name, kernel: "/k"), to: dir + "/spec.json")
            let pinned = dir + "/pinned"
            #expect(FileManager.default.createFile(atPath: pinned, contents: nil))
            #expect(Self.chattr("+i", pinned) == 0)
            defer {
                _ = Self.chattr("-i", pinned)
                try? FileManager.default.removeItem(atPath: dir)
            }
            let delete = Task {
                while !Task.isCancelled { await Task.yield() }
                try await kvm.delete(name)
            }
            delete.cancel()
            let result = await delete.result
            // Not five retries and "cannot remove": the cancellation, at the first wait.
            #expect(throws: CancellationError.self) { try result.get() }
        }
        #expect(left.folders.isEmpty, "VM folders left behind: \(left.folders)")
    }
}
