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

/// Cancelled waits end at once and give back what they held.
@Suite("Runtime folder safety and cancellation")
struct RuntimeSafetyTests {
    // MARK: cancelled waits

    @Test func cancelledProcessWaitEndsAtOnceWithoutBurningCPU() async throws {
        let me = try #require(ProcessIdentity.of(pid: getpid()))
        let wait = Task { () async throws -> Bool in try await me.waitForExit(timeout: .seconds(8)) }
        try await Task.sleep(for: .milliseconds(200))
        let clock = ContinuousClock()
        let begin = clock.now
        let cpu = processCPUSeconds()
        wait.cancel()
        let result = await wait.result
        let spent = processCPUSeconds() - cpu
        #expect(throws: CancellationError.self) { try result.get() }
        #expect(clock.now - begin < .seconds(4), "the cancelled wait went on for \(clock.now - begin)")
        #expect(spent < 1.5, "the cancelled wait burnt \(spent) s of CPU")
    }

    @Test func cancelledLockWaitEndsAtOnceAndGivesTheLockFileBack() async throws {
        let tmp = try TempDir(prefix: "lk")
        defer { tmp.remove() }
        let path = tmp.path + "/lock"
        let holder = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0o600)
        #expect(holder >= 0 && flock(holder, LOCK_EX) == 0)
        let vm = try VMName("busy")
        let wait = Task { try await VMLock.acquire(path: path, vm: vm, timeout: .seconds(8)) }
        try await Task.sleep(for: .milliseconds(200))
        let clock = ContinuousClock()
        let begin = clock.now
        let cpu = processCPUSeconds()
        wait.cancel()
        let result = await wait.result
        let spent = processCPUSeconds() - cpu
        #expect(throws: CancellationError.self) { _ = try result.get() }
        #expect(clock.now - begin < .seconds(4), "the cancelled lock wait went on for \(clock.now - begin)")
        #expect(spent < 1.5, "the cancelled lock wait burnt \(spent) s of CPU")
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
            let kvm = KVMHypervisor(root: RuntimeRoot(path: runtime.root), qemuBinary: fake)
            let spec = VMSpec(name: try VMName("slow"), kernel: kernel, accel: .tcg)
            let create = Task { try await kvm.create(spec) }
            let launchRecord = runtime.root + "/slow/launch.json"
            let clock = ContinuousClock()
            let deadline = clock.now + .seconds(10)
            while !FileManager.default.fileExists(atPath: launchRecord), clock.now < deadline {
                try await Task.sleep(for: .milliseconds(20))
            }
            #expect(FileManager.default.fileExists(atPath: launchRecord), "QEMU was never spawned")
            let begin = clock.now
            create.cancel()
            let result = await create.result
            #expect(throws: CancellationError.self) { _ = try result.get() }
            #expect(clock.now - begin < .seconds(5), "the cancelled launch went on for \(clock.now - begin)")
            #expect(runtime.processes.isEmpty, "QEMU outlived the cancelled launch")
        }
        #expect(left.folders.isEmpty, "VM folders left behind: \(left.folders)")
        #expect(left.processes.isEmpty, "processes left behind: \(left.processes)")
    }
}
