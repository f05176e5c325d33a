import Foundation
import PlasmaHypervisor
import PlasmaQMP

extension KVMHypervisor {
    /// `explicit`, else `PLASMAVMC_QEMU`, else `qemu-system-x86_64` on PATH.
    static func findQEMU(explicit: String?,
                         environment: [String: String] = ProcessInfo.processInfo.environment) throws -> String {
        let fm = FileManager.default
        if let given = explicit ?? environment["PLASMAVMC_QEMU"], !given.isEmpty {
            guard fm.isExecutableFile(atPath: given) else {
                throw PlasmaError(.unavailable, "QEMU binary \(given) is missing or not executable; fix PLASMAVMC_QEMU or install qemu-system-x86")
            }
            return given
        }
        for dir in (environment["PATH"] ?? "/usr/bin:/bin").split(separator: ":") {
            let candidate = "\(dir)/qemu-system-x86_64"
            if fm.isExecutableFile(atPath: candidate) { return candidate }
        }
        throw PlasmaError(.unavailable, "qemu-system-x86_64 was not found on PATH; install it (apt-get install qemu-system-x86) or set PLASMAVMC_QEMU")
    }

    /// Checks what the spec names on this host: files present and readable, memory available.
    func checkHost(_ spec: VMSpec) throws {
        func bad(_ m: String) -> PlasmaError { PlasmaError(.invalidArgument, "vm '\(spec.name)': \(m)") }
        let files = [("kernel", spec.kernel), ("initrd", spec.initrd)].compactMap { l, p in p.map { (l, $0) } }
            + spec.disks.map { ("disk", $0) }
        for (label, path) in files {
            guard path.hasPrefix("/") else { throw bad("\(label) path \(path) must be absolute") }
            var isDir: ObjCBool = false
            guard FileManager.default.fileExists(atPath: path, isDirectory: &isDir) else {
                throw bad("\(label) \(path) does not exist")
            }
            guard !isDir.boolValue else { throw bad("\(label) \(path) is a folder, not a file") }
            guard access(path, R_OK) == 0 else { throw bad("\(label) \(path) is not readable") }
        }
        if let total = Self.hostMemoryMiB(), spec.memory.mebibytes > total {
            throw bad("memory \(spec.memory) is more than this host has (\(total)M); ask for less")
        }
    }

    static func hostMemoryMiB() -> UInt64? {
        guard let text = try? String(contentsOfFile: "/proc/meminfo", encoding: .utf8) else { return nil }
        for line in text.split(separator: "\n") where line.hasPrefix("MemTotal:") {
            let kb = line.split(separator: " ").dropFirst().first.flatMap { UInt64($0) }
            return kb.map { $0 / 1024 }
        }
        return nil
    }

    func resolveAccel(_ accel: Accelerator, qemu: String) async throws -> String {
        switch accel {
        case .kvm: return "kvm"
        case .tcg: return "tcg"
        case .auto:
            let probe = AcceleratorProbe(qemuBinary: qemu, cacheFile: root.path + "/.accel-probe")
            return try await probe.kvmUsable() ? "kvm" : "tcg"
        }
    }

    /// Starts the VM's supervisor, which spawns QEMU paused, connects its monitor and serial
    /// port, and says "ready PID" or "error MESSAGE" on a pipe. On failure nothing of that
    /// launch runs any more, and the error carries the reason, QEMU's command line and the
    /// tail of its log.
    /// `diskFormats` are the ones recorded at create, never probed here.
    /// `meanwhile` runs while QEMU starts; if it throws, the launch is undone.
    func launch(_ spec: VMSpec, diskFormats: [DiskFormat], paths: RuntimePaths, qemu: String,
                supervisor: String, meanwhile: () throws -> Void = {}) async throws -> VMStatus {
        let accel = try await resolveAccel(spec.accel, qemu: qemu)
        for stale in [paths.qmpSocket, paths.qmpSupervisorSocket, paths.serialSocket, paths.consoleSocket,
                      paths.supervisorSocket, paths.pidFile, paths.exit, paths.record, paths.launch] {
            unlink(stale)
        }
        let argv = QEMUCommandLine(binary: qemu, spec: spec, paths: paths, accel: accel,
                                   diskFormats: diskFormats).arguments
        var pipeFDs: [Int32] = [-1, -1]
        // Children get only fds 0-2 (plasma_spawn closes the rest), so no CLOEXEC race here.
        guard pipe(&pipeFDs) == 0 else {
            throw PlasmaError(.launchFailed, "vm '\(spec.name)': cannot make a pipe", cause: String(cString: strerror(errno)))
        }
        let readFD = pipeFDs[0]
        defer { close(readFD) }
        let supervisorPID: Int32
        do {
            defer { close(pipeFDs[1]) }
            var supervisorArgv = [supervisor, paths.directory, accel,
                                  "--launch-timeout-ms", String(launchTimeout.milliseconds)]
            if let consoleLogMax { supervisorArgv += ["--console-log-max", String(consoleLogMax)] }
            supervisorPID = try ChildProcesses.shared.spawn(supervisorArgv + ["--"] + argv,
                                                            logPath: paths.supervisorLog, stdoutFD: pipeFDs[1])
        } catch {
            throw PlasmaError(.launchFailed, "vm '\(spec.name)': cannot start \(supervisor)", cause: "\(error)")
        }
        let sup = ProcessIdentity.of(pid: supervisorPID) ?? ProcessIdentity(pid: supervisorPID, startTime: 0)

        func failure(_ what: String) async -> PlasmaError {
            // SIGTERM makes a starting supervisor kill QEMU before it exits.
            sup.signal(SIGTERM)
            if await !sup.waitForExitEvenIfCancelled(timeout: .seconds(5)) { sup.signal(SIGKILL) }
            let log = (RecordFile.tail(paths.qemuLog, maxBytes: 2048) ?? "")
                .split(separator: "\n").suffix(5).joined(separator: "\n    ")
            let supLog = (RecordFile.tail(paths.supervisorLog, maxBytes: 1024) ?? "").trimmingCharacters(in: .whitespacesAndNewlines)
            let last = log.split(separator: "\n").last.map { ": " + $0.trimmingCharacters(in: .whitespaces) } ?? ""
            return PlasmaError(.launchFailed, "vm '\(spec.name)': \(what)\(last)",
                               cause: "command: \(argv.joined(separator: " "))\n  qemu log:\n    \(log.isEmpty ? "(empty)" : log)"
                                   + (supLog.isEmpty ? "" : "\n  supervisor log:\n    \(supLog)"))
        }

        do {
            try meanwhile()
        } catch {
            _ = await failure("launch undone")
            throw error
        }
        let line: String
        do {
            line = try await Self.readLine(readFD, timeout: launchTimeout + .seconds(5))
        } catch is CancellationError {
            _ = await failure("launch cancelled")
            throw CancellationError()
        } catch {
            throw await failure("the supervisor did not report within \(launchTimeout + .seconds(5)): \(error)")
        }
        if line.hasPrefix("ready ") {
            let pid = Int32(line.dropFirst(6).trimmingCharacters(in: .whitespaces)) ?? 0
            return VMStatus(state: .created, pid: pid, accel: accel)
        }
        if line.hasPrefix("error ") { throw await failure(String(line.dropFirst(6))) }
        throw await failure("the supervisor ended before QEMU was up" + (line.isEmpty ? "" : " (\(line))"))
    }

    /// One line from a pipe within `timeout` ("" at end of file), read on a thread of its own
    /// (the line comes as soon as it is written). Cancellation ends the wait.
    static func readLine(_ fd: Int32, timeout: Duration) async throws -> String {
        let cancelled = CancelFlag()
        return try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { (c: CheckedContinuation<String, any Error>) in
                let t = Thread {
                    c.resume(with: Result { try readLineBlocking(fd, timeout: timeout, cancelled: cancelled) })
                }
                t.name = "supervisor-ready"
                t.start()
            }
        } onCancel: {
            cancelled.set()
        }
    }

    private static func readLineBlocking(_ fd: Int32, timeout: Duration, cancelled: CancelFlag) throws -> String {
        let deadline = ContinuousClock.now + timeout
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 512)
        while true {
            if cancelled.isSet { throw CancellationError() }
            let left = deadline - ContinuousClock.now
            if left <= .zero { throw SysError("no answer", ETIMEDOUT) }
            var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            let r = poll(&p, 1, Int32(clamping: min(left.milliseconds + 1, 50)))
            if r < 0, errno != EINTR { throw SysError("waiting for the supervisor's pipe", errno) }
            if r <= 0 { continue }
            let n = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if n == 0 { return String(decoding: bytes, as: UTF8.self) }
            if n < 0 {
                if errno == EAGAIN || errno == EINTR { continue }
                throw SysError("reading the supervisor's pipe", errno)
            }
            bytes.append(contentsOf: chunk[..<n])
            if let nl = bytes.firstIndex(of: 0x0a) { return String(decoding: bytes[..<nl], as: UTF8.self) }
        }
    }
}
