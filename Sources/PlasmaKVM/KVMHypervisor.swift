import CPlasmaSys
import Foundation
import PlasmaHypervisor
import PlasmaQMP

/// The QEMU backend: KVM where it works, TCG elsewhere. One runtime folder per VM is the
/// whole record, so any process can act on any VM.
public struct KVMHypervisor: Hypervisor {
    public let root: RuntimeRoot
    /// Explicit QEMU binary; nil means `PLASMAVMC_QEMU`, else `qemu-system-x86_64` on PATH.
    public let qemuBinary: String?

    public var name: String { "qemu" }

    /// How long to wait for QEMU's QMP socket after spawning it.
    var launchTimeout: Duration = .seconds(15)
    /// How long a QMP peer may take to greet.
    var greetingTimeout: Duration = .seconds(5)
    /// How often an ignored ACPI powerdown is sent again.
    var powerdownInterval: Duration = .seconds(2)

    public init(root: RuntimeRoot, qemuBinary: String? = nil) {
        self.root = root
        self.qemuBinary = qemuBinary
    }

    /// Whether a QEMU binary can be found (the backend's availability probe).
    public static func isAvailable(environment: [String: String] = ProcessInfo.processInfo.environment) -> Bool {
        (try? findQEMU(explicit: nil, environment: environment)) != nil
    }

    // MARK: records

    struct LaunchRecord: Codable {
        var process: ProcessIdentity
        var accel: String
        var argv: [String]
        var launchedAt: Double
    }

    /// What plasmavmc last asked of the VM; lets a later process tell a requested stop or
    /// kill from a crash.
    struct RequestRecord: Codable {
        var action: String
        var step: String?
        var at: Double
    }

    // MARK: Hypervisor

    public func create(_ spec: VMSpec) async throws -> VMStatus {
        try spec.validate()
        try checkHost(spec)
        let qemu = try Self.findQEMU(explicit: qemuBinary)
        let paths = root.paths(spec.name)
        try paths.checkSocketPathLength(vm: spec.name)
        try root.ensureExists()
        if mkdir(paths.directory, 0o700) != 0 {
            if errno == EEXIST {
                throw PlasmaError(.alreadyExists, "vm '\(spec.name)' already exists; delete it first or pick another name")
            }
            throw PlasmaError(.unavailable, "cannot create \(paths.directory); check the runtime dir is writable",
                              cause: String(cString: strerror(errno)))
        }
        do {
            let lock = try await VMLock.acquire(path: paths.lock, vm: spec.name, timeout: .seconds(1))
            try RecordFile.write(spec, to: paths.spec)
            let status = try await launch(spec, paths: paths, qemu: qemu)
            withExtendedLifetime(lock) {}
            return status
        } catch {
            try? FileManager.default.removeItem(atPath: paths.directory)
            throw error
        }
    }

    public func start(_ name: VMName) async throws -> VMStatus {
        let paths = try existing(name)
        if let launch = RecordFile.read(LaunchRecord.self, from: paths.launch), launch.process.isAlive {
            let client = try await connect(name, paths, launch)
            defer { client.close() }
            let state = try await qmp(name, client, "query-status")["status"]?.stringValue
            guard state == "prelaunch" else {
                throw PlasmaError(.invalidState, "cannot start vm '\(name)': its QEMU is already up (\(state ?? "unknown")); stop it first")
            }
            _ = try await qmp(name, client, "cont")
            return VMStatus(state: .running, pid: launch.process.pid, accel: launch.accel)
        }
        guard let spec = RecordFile.read(VMSpec.self, from: paths.spec) else {
            throw PlasmaError(.internal, "vm '\(name)': its spec.json is unreadable; delete the vm and create it again")
        }
        try checkHost(spec)
        let created = try await launch(spec, paths: paths, qemu: try Self.findQEMU(explicit: qemuBinary))
        guard let launch = RecordFile.read(LaunchRecord.self, from: paths.launch) else {
            throw PlasmaError(.internal, "vm '\(name)': launch record missing after relaunch")
        }
        let client = try await connect(name, paths, launch)
        defer { client.close() }
        _ = try await qmp(name, client, "cont")
        return VMStatus(state: .running, pid: created.pid, accel: created.accel)
    }

    public func status(_ name: VMName) async throws -> VMStatus {
        let paths = try existing(name)
        guard let launch = RecordFile.read(LaunchRecord.self, from: paths.launch) else {
            return VMStatus(state: .crashed, reason: "no QEMU was ever launched for it")
        }
        if launch.process.isAlive {
            do {
                let client = try await QMPClient.connect(path: paths.qmpSocket, timeout: greetingTimeout)
                defer { client.close() }
                let reply = try await client.execute("query-status", timeout: greetingTimeout)
                return Self.map(runState: reply["status"]?.stringValue ?? "", launch: launch)
            } catch {
                if launch.process.isAlive {
                    throw PlasmaError(.unavailable,
                                      "vm '\(name)': QEMU (pid \(launch.process.pid)) is alive but its monitor did not answer; try again, or end it with plasmavmc kill \(name)",
                                      cause: "\(error)")
                }
            }
        }
        return deadStatus(paths, launch)
    }

    public func info(_ name: VMName) async throws -> VMInfo {
        let paths = try existing(name)
        guard let spec = RecordFile.read(VMSpec.self, from: paths.spec) else {
            throw PlasmaError(.internal, "vm '\(name)': its spec.json is unreadable; delete the vm and create it again")
        }
        return VMInfo(spec: spec, status: try await status(name), runtimeDirectory: paths.directory)
    }

    public func stop(_ name: VMName, timeout: Duration) async throws -> StopOutcome {
        let clock = ContinuousClock()
        let begin = clock.now
        let paths = try existing(name)
        guard let launch = RecordFile.read(LaunchRecord.self, from: paths.launch), launch.process.isAlive else {
            try record(paths, "stop", step: .alreadyGone)
            return StopOutcome(step: .alreadyGone, elapsed: clock.now - begin)
        }
        let process = launch.process
        try record(paths, "stop", step: nil)
        let current = try await status(name)
        // The layers get disjoint slices of the timeout: graceful first, then quit, SIGTERM.
        let forceBudget = min(.seconds(6), timeout / 2)
        let gracefulEnd = begin + (timeout - forceBudget)
        var step: StopStep?
        if current.state == .running {
            // A cancelled stop (Ctrl-C on a plan) skips the rest of the graceful wait and goes
            // on to the forced steps, which take seconds, so the VM's lock is soon free.
            while step == nil, clock.now < gracefulEnd, !Task.isCancelled {
                if let client = try? await QMPClient.connect(path: paths.qmpSocket, timeout: greetingTimeout) {
                    _ = try? await client.execute("system_powerdown", timeout: greetingTimeout)
                    client.close()
                }
                let wait = min(powerdownInterval, gracefulEnd - clock.now)
                if await process.waitForExit(timeout: wait) { step = .powerdown }
            }
        }
        if step == nil {
            if let client = try? await QMPClient.connect(path: paths.qmpSocket, timeout: min(greetingTimeout, forceBudget / 2)) {
                _ = try? await client.execute("quit", timeout: forceBudget / 2)
                client.close()
            }
            if await process.waitForExit(timeout: forceBudget / 2) { step = .quit }
        }
        if step == nil {
            process.signal(SIGTERM)
            if await process.waitForExit(timeout: forceBudget / 4) { step = .sigterm }
        }
        if step == nil {
            process.signal(SIGKILL)
            guard await process.waitForExit(timeout: .seconds(5)) else {
                throw PlasmaError(.internal, "vm '\(name)': QEMU (pid \(process.pid)) survived SIGKILL; it may be stuck in the kernel")
            }
            step = .sigkill
        }
        try record(paths, "stop", step: step)
        return StopOutcome(step: step!, elapsed: clock.now - begin)
    }

    public func kill(_ name: VMName) async throws {
        let paths = try existing(name)
        try record(paths, "kill", step: nil)
        guard let launch = RecordFile.read(LaunchRecord.self, from: paths.launch) else { return }
        launch.process.signal(SIGKILL)
        guard await launch.process.waitForExit(timeout: .seconds(5)) else {
            throw PlasmaError(.internal, "vm '\(name)': QEMU (pid \(launch.process.pid)) survived SIGKILL; it may be stuck in the kernel")
        }
    }

    public func pause(_ name: VMName) async throws {
        try await simpleCommand(name, "stop")
    }

    public func resume(_ name: VMName) async throws {
        try await simpleCommand(name, "cont")
    }

    public func delete(_ name: VMName) async throws {
        let paths = try existing(name)
        if let launch = RecordFile.read(LaunchRecord.self, from: paths.launch) {
            if launch.process.isAlive {
                throw PlasmaError(.invalidState, "cannot delete vm '\(name)': its QEMU (pid \(launch.process.pid)) is still running; stop it first, or delete with force")
            }
            // If this process spawned it, let the reaper record its exit first: it writes
            // into the folder we are about to remove.
            _ = await launch.process.waitForExit(timeout: .seconds(2))
        }
        var lastError: (any Error)?
        for _ in 0..<5 {
            do {
                try FileManager.default.removeItem(atPath: paths.directory)
                return
            } catch {
                lastError = error
                try? await Task.sleep(for: .milliseconds(20))
            }
        }
        throw PlasmaError(.internal, "vm '\(name)': cannot remove \(paths.directory)", cause: "\(lastError!)")
    }

    public func list() async throws -> [VMName] {
        root.vmNames()
    }

    public func consoleLog(_ name: VMName, maxBytes: Int?) async throws -> String {
        let paths = try existing(name)
        return RecordFile.tail(paths.consoleLog, maxBytes: maxBytes) ?? ""
    }

    public func consoleRead(_ name: VMName, from offset: Int) async throws -> (text: String, next: Int) {
        let paths = try existing(name)
        guard let h = FileHandle(forReadingAtPath: paths.consoleLog) else { return ("", offset) }
        defer { try? h.close() }
        let size = Int((try? h.seekToEnd()) ?? 0)
        // A relaunch appends; a smaller file means it was replaced: start over.
        let from = offset > size ? 0 : offset
        try? h.seek(toOffset: UInt64(from))
        let data = (try? h.readToEnd()) ?? Data()
        return (String(decoding: data, as: UTF8.self), from + data.count)
    }

    public func sendConsole(_ name: VMName, _ text: String) async throws {
        let paths = try existing(name)
        guard let launch = RecordFile.read(LaunchRecord.self, from: paths.launch), launch.process.isAlive else {
            throw PlasmaError(.invalidState, "vm '\(name)': QEMU is not running, so its console cannot be written; start it first")
        }
        // Connect, write, wait until QEMU has taken every byte, close. QEMU drops what is
        // still queued when a client hangs up, and it reads only as fast as the guest's UART
        // accepts. Whatever the guest prints meanwhile is read and dropped: a console client
        // that does not read stalls the guest.
        let fd = paths.consoleSocket.withCString { plasma_unix_connect($0) }
        guard fd >= 0 else {
            throw PlasmaError(.unavailable, "vm '\(name)': cannot connect to its console",
                              cause: String(cString: strerror(-fd)))
        }
        defer { close(fd) }
        _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK)
        var bytes = Array(text.utf8)
        var off = 0
        var sink = [UInt8](repeating: 0, count: 4096)
        let clock = ContinuousClock()
        let deadline = clock.now + .seconds(30)
        while true {
            if off < bytes.count {
                let n = bytes.withUnsafeMutableBytes { send(fd, $0.baseAddress! + off, $0.count - off, Int32(MSG_NOSIGNAL)) }
                if n > 0 { off += n } else if n < 0, errno != EAGAIN, errno != EINTR {
                    throw PlasmaError(.unavailable, "vm '\(name)': writing to its console failed", cause: String(cString: strerror(errno)))
                }
            }
            while sink.withUnsafeMutableBytes({ recv(fd, $0.baseAddress, $0.count, 0) }) > 0 {}
            if off == bytes.count, plasma_unix_outq(fd) <= 0 { return }
            if clock.now >= deadline {
                throw PlasmaError(.timeout, "vm '\(name)': the guest did not read its console input within 30 s (\(bytes.count - off + Int(max(0, plasma_unix_outq(fd)))) bytes left)")
            }
            try await Task.sleep(for: .milliseconds(2))
        }
    }

    public func monitorCommand(_ name: VMName, _ command: String, argumentsJSON: String?) async throws -> String {
        let paths = try existing(name)
        guard let launch = RecordFile.read(LaunchRecord.self, from: paths.launch), launch.process.isAlive else {
            throw PlasmaError(.invalidState, "vm '\(name)': QEMU is not running; start it first")
        }
        var args: JSONValue?
        if let argumentsJSON {
            do {
                args = try JSONDecoder().decode(JSONValue.self, from: Data(argumentsJSON.utf8))
            } catch {
                throw PlasmaError(.invalidArgument, "vm '\(name)': QMP arguments are not valid JSON", cause: "\(error)")
            }
        }
        let client = try await connect(name, paths, launch)
        defer { client.close() }
        return try await qmp(name, client, command, args).description
    }

    public func statusProbe(_ name: VMName) -> (any VMStatusProbe)? {
        guard let paths = try? existing(name),
              let launch = RecordFile.read(LaunchRecord.self, from: paths.launch), launch.process.isAlive,
              let conn = try? QMPConnection(path: paths.qmpHoldSocket, timeout: .milliseconds(200)) else { return nil }
        return StatusProbe(launch: launch, connection: conn)
    }

    /// Holds the VM's second monitor and asks it `query-status`.
    final class StatusProbe: VMStatusProbe {
        let launch: LaunchRecord
        let connection: QMPConnection

        init(launch: LaunchRecord, connection: QMPConnection) {
            self.launch = launch
            self.connection = connection
        }

        func status() -> VMStatus? {
            guard !connection.isClosed, launch.process.isAlive,
                  let reply = try? connection.execute("query-status", timeout: .seconds(2)) else {
                connection.close()
                return nil
            }
            return KVMHypervisor.map(runState: reply["status"]?.stringValue ?? "", launch: launch)
        }

        func close() { connection.close() }
    }

    public func withExclusiveAccess<T: Sendable>(to name: VMName, timeout: Duration,
                                                 _ body: @Sendable () async throws -> T) async throws -> T {
        let paths = try existing(name)
        let lock = try await VMLock.acquire(path: paths.lock, vm: name, timeout: timeout)
        // Another process may have deleted the VM while we waited for its lock.
        _ = try existing(name)
        let result = try await body()
        withExtendedLifetime(lock) {}
        return result
    }

    // MARK: internals

    func existing(_ name: VMName) throws -> RuntimePaths {
        let paths = root.paths(name)
        guard FileManager.default.fileExists(atPath: paths.spec) else {
            throw PlasmaError(.notFound, "vm '\(name)' does not exist; see plasmavmc ls")
        }
        return paths
    }

    private func record(_ paths: RuntimePaths, _ action: String, step: StopStep?) throws {
        try RecordFile.write(RequestRecord(action: action, step: step?.rawValue, at: Date().timeIntervalSince1970),
                             to: paths.record)
    }

    private func simpleCommand(_ name: VMName, _ command: String) async throws {
        let paths = try existing(name)
        guard let launch = RecordFile.read(LaunchRecord.self, from: paths.launch), launch.process.isAlive else {
            throw PlasmaError(.invalidState, "vm '\(name)': QEMU is not running; start it first")
        }
        let client = try await connect(name, paths, launch)
        defer { client.close() }
        _ = try await qmp(name, client, command)
    }

    private func connect(_ name: VMName, _ paths: RuntimePaths, _ launch: LaunchRecord) async throws -> QMPClient {
        do {
            return try await QMPClient.connect(path: paths.qmpSocket, timeout: greetingTimeout)
        } catch {
            throw PlasmaError(.qmp, "vm '\(name)': cannot reach QEMU's monitor (pid \(launch.process.pid)); check plasmavmc status \(name)",
                              cause: "\(error)")
        }
    }

    private func qmp(_ name: VMName, _ client: QMPClient, _ command: String, _ args: JSONValue? = nil) async throws -> JSONValue {
        do {
            return try await client.execute(command, arguments: args, timeout: .seconds(10))
        } catch {
            throw PlasmaError(.qmp, "vm '\(name)': QMP '\(command)' failed", cause: "\(error)")
        }
    }

    static func map(runState: String, launch: LaunchRecord) -> VMStatus {
        let pid = launch.process.pid
        switch runState {
        case "prelaunch": return VMStatus(state: .created, pid: pid, accel: launch.accel)
        case "running": return VMStatus(state: .running, pid: pid, accel: launch.accel)
        case "guest-panicked", "internal-error":
            return VMStatus(state: .crashed, reason: runState, pid: pid, accel: launch.accel)
        case "shutdown":
            return VMStatus(state: .stopped, reason: "shutting down", pid: pid, accel: launch.accel)
        case "paused":
            return VMStatus(state: .paused, reason: "paused by request", pid: pid, accel: launch.accel)
        default:
            return VMStatus(state: .paused, reason: runState, pid: pid, accel: launch.accel)
        }
    }

    /// The state of a VM whose QEMU is gone. QEMU removes its pidfile on a clean exit and
    /// leaves it on SIGKILL or abort; our own records say what plasmavmc asked for.
    func deadStatus(_ paths: RuntimePaths, _ launch: LaunchRecord) -> VMStatus {
        let request = RecordFile.read(RequestRecord.self, from: paths.record)
        let exit = RecordFile.read(ExitRecord.self, from: paths.exit)
            ?? ChildProcesses.shared.exitRecord(of: launch.process.pid)
        let accel = launch.accel
        switch request?.action {
        case "kill": return VMStatus(state: .stopped, reason: "killed", accel: accel)
        case "stop": return VMStatus(state: .stopped, reason: "stopped (\(request?.step ?? "stop"))", accel: accel)
        default: break
        }
        if let exit, !exit.exited || exit.code != 0 {
            return VMStatus(state: .crashed, reason: "QEMU ended with \(exit.summary)", accel: accel)
        }
        if exit == nil, FileManager.default.fileExists(atPath: paths.pidFile) {
            return VMStatus(state: .crashed, reason: "QEMU died without shutting down (killed or aborted)", accel: accel)
        }
        return VMStatus(state: .stopped, reason: "QEMU exited cleanly (guest powered off, or quit from outside plasmavmc)", accel: accel)
    }
}
