import Foundation

/// Decides whether KVM really works here. /dev/kvm existing is not enough: under nested
/// virtualisation QEMU can open it and still fail to run a guest. The probe asks QEMU to
/// start a KVM machine with a CPU model it must fully support (`enforce`); where KVM is
/// unusable QEMU refuses at once, where it works QEMU starts and obeys `quit` on stdin.
/// The answer is cached per boot in the runtime root.
struct AcceleratorProbe: Sendable {
    var qemuBinary: String
    var cacheFile: String

    /// - Throws: `CancellationError` when the calling task is cancelled (nothing is cached).
    func kvmUsable() async throws -> Bool {
        let bootID = (try? String(contentsOfFile: "/proc/sys/kernel/random/boot_id", encoding: .utf8))?
            .trimmingCharacters(in: .whitespacesAndNewlines) ?? "unknown"
        let key = "\(bootID) \(qemuBinary)"
        if let cached = try? String(contentsOfFile: cacheFile, encoding: .utf8) {
            let lines = cached.split(separator: "\n")
            if lines.count == 2, lines[0] == key { return lines[1] == "kvm" }
        }
        let usable = try await runProbe()
        try? "\(key)\n\(usable ? "kvm" : "tcg")\n".write(toFile: cacheFile, atomically: true, encoding: .utf8)
        return usable
    }

    private func runProbe() async throws -> Bool {
        let kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC)
        guard kvm >= 0 else { return false }
        close(kvm)
        var fds: [Int32] = [0, 0]
        guard pipe(&fds) == 0 else { return false }
        _ = fcntl(fds[0], F_SETFD, FD_CLOEXEC)
        _ = fcntl(fds[1], F_SETFD, FD_CLOEXEC)
        _ = "quit\n".withCString { write(fds[1], $0, 5) }
        close(fds[1])
        defer { close(fds[0]) }
        let argv = [qemuBinary, "-accel", "kvm", "-cpu", "qemu64,enforce", "-machine", "pc", "-nodefaults",
                    "-display", "none", "-S", "-monitor", "stdio"]
        guard let pid = try? ChildProcesses.shared.spawn(argv, logPath: "/dev/null", stdinFD: fds[0]) else {
            return false
        }
        let clock = ContinuousClock()
        let deadline = clock.now + .seconds(5)
        while clock.now < deadline {
            if let exit = ChildProcesses.shared.exitRecord(of: pid) {
                return exit.exited && exit.code == 0
            }
            do {
                try await Task.sleep(for: .milliseconds(2))
            } catch {
                _ = Glibc.kill(pid, SIGKILL)
                throw error
            }
        }
        _ = Glibc.kill(pid, SIGKILL)
        return false
    }
}
