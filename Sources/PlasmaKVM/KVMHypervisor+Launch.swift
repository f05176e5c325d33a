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

    /// Spawns QEMU paused and waits for its monitor. On failure the process is gone and the
    /// error carries QEMU's exit status, its command line and the tail of its log.
    /// `diskFormats` are the ones recorded at create, never probed here.
    func launch(_ spec: VMSpec, diskFormats: [DiskFormat], paths: RuntimePaths, qemu: String) async throws -> VMStatus {
        let accel = try await resolveAccel(spec.accel, qemu: qemu)
        for stale in [paths.qmpSocket, paths.consoleSocket, paths.pidFile, paths.exit, paths.record, paths.launch] {
            unlink(stale)
        }
        let argv = QEMUCommandLine(binary: qemu, spec: spec, paths: paths, accel: accel,
                                   diskFormats: diskFormats).arguments
        let exitPath = paths.exit
        let directory = paths.directory
        let pid: Int32
        do {
            pid = try ChildProcesses.shared.spawn(argv, logPath: paths.qemuLog) { exit in
                // Record how QEMU ended, unless the VM was deleted meanwhile.
                if FileManager.default.fileExists(atPath: directory) {
                    try? RecordFile.write(exit, to: exitPath)
                }
            }
        } catch {
            throw PlasmaError(.launchFailed, "vm '\(spec.name)': cannot start QEMU", cause: "\(error)")
        }
        let process = ProcessIdentity.of(pid: pid) ?? ProcessIdentity(pid: pid, startTime: 0)
        try RecordFile.write(LaunchRecord(process: process, accel: accel, argv: argv,
                                          launchedAt: Date().timeIntervalSince1970), to: paths.launch)

        func failure(_ what: String) async -> PlasmaError {
            process.signal(SIGKILL)
            _ = await process.waitForExitEvenIfCancelled(timeout: .seconds(5))
            let exitText = ChildProcesses.shared.exitRecord(of: pid).map { " (\($0.summary))" } ?? ""
            let log = (RecordFile.tail(paths.qemuLog, maxBytes: 2048) ?? "")
                .split(separator: "\n").suffix(5).joined(separator: "\n    ")
            return PlasmaError(.launchFailed,
                               "vm '\(spec.name)': \(what)\(exitText)\(log.isEmpty ? "" : ": " + (log.split(separator: "\n").last.map(String.init) ?? ""))",
                               cause: "command: \(argv.joined(separator: " "))\n  qemu log:\n    \(log.isEmpty ? "(empty)" : log)")
        }

        /// Cancelled: QEMU goes too, so no VM is left half made.
        func abandon(_ error: any Error) async -> any Error {
            process.signal(SIGKILL)
            _ = await process.waitForExitEvenIfCancelled(timeout: .seconds(5))
            return error
        }

        let clock = ContinuousClock()
        let deadline = clock.now + launchTimeout
        while true {
            if !process.isAlive || ChildProcesses.shared.exitRecord(of: pid) != nil {
                throw await failure("QEMU exited while starting")
            }
            if FileManager.default.fileExists(atPath: paths.qmpSocket) {
                do {
                    let client = try await QMPClient.connect(path: paths.qmpSocket, timeout: greetingTimeout)
                    defer { client.close() }
                    let state = try await client.execute("query-status", timeout: greetingTimeout)["status"]?.stringValue
                    guard state == "prelaunch" else {
                        throw await failure("QEMU came up in state \(state ?? "unknown") instead of prelaunch")
                    }
                    return VMStatus(state: .created, pid: pid, accel: accel)
                } catch QMPError.connect {
                    // The socket file exists a moment before QEMU listens on it.
                } catch let error as PlasmaError {
                    throw error
                } catch let error as CancellationError {
                    throw await abandon(error)
                } catch {
                    throw await failure("QEMU's monitor did not work: \(error)")
                }
            }
            if clock.now >= deadline {
                throw await failure("QEMU did not open its monitor within \(launchTimeout)")
            }
            do {
                try await Task.sleep(for: .milliseconds(2))
            } catch {
                throw await abandon(error)
            }
        }
    }
}
