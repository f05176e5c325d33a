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

    /// The console log's cap per file (two files are kept); nil: the supervisor's 8 MiB.
    public let consoleLogMax: Int?

    /// The smallest console log cap the supervisor accepts.
    public static let consoleLogMinimum = 4096

    /// - Parameter consoleLogMax: bytes per console log file, at least `consoleLogMinimum`.
    public init(root: RuntimeRoot, qemuBinary: String? = nil, consoleLogMax: Int? = nil) {
        self.root = root
        self.qemuBinary = qemuBinary
        self.consoleLogMax = consoleLogMax.map { max($0, Self.consoleLogMinimum) }
    }

    /// Whether a QEMU binary can be found (the backend's availability probe).
    public static func isAvailable(environment: [String: String] = ProcessInfo.processInfo.environment) -> Bool {
        (try? findQEMU(explicit: nil, environment: environment)) != nil
    }

    // MARK: records

    /// Which QEMU (and which supervisor) is this VM's. Written by the supervisor once QEMU is up.
    struct LaunchRecord: Codable {
        var process: ProcessIdentity
        var supervisor: ProcessIdentity?
        var accel: String
        var argv: [String]
        var launchedAt: Double
    }

    /// What plasmavmc did to a VM whose supervisor was gone (with a supervisor, exit.json says it).
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
        let supervisor = try Supervisor.find()
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
            // The one time disk formats are probed (see SpecRecord). The spec is written while
            // QEMU starts.
            let formats = spec.disks.map(Self.diskFormat)
            EventLog.append(paths.events, kind: "create", state: .created)
            let status = try await launch(spec, diskFormats: formats, paths: paths, qemu: qemu, supervisor: supervisor) {
                try RecordFile.write(SpecRecord(spec: spec, diskFormats: formats), to: paths.spec)
            }
            withExtendedLifetime(lock) {}
            return status
        } catch {
            try? FileManager.default.removeItem(atPath: paths.directory)
            throw error
        }
    }

    public func start(_ name: VMName) async throws -> VMStatus {
        let paths = try existing(name)
        if let id = try await identify(paths), id.qemu.isAlive {
            if id.supervisorAnswers {
                try await cont(name, paths)
                return VMStatus(state: .running, pid: id.qemu.pid, accel: id.accel)
            }
            let client = try await connect(name, paths, id.qemu)
            defer { client.close() }
            let state = try await qmp(name, client, "query-status")["status"]?.stringValue
            guard state == "prelaunch" else {
                throw PlasmaError(.invalidState, "cannot start vm '\(name)': its QEMU is already up (\(state ?? "unknown")); stop it first")
            }
            _ = try await qmp(name, client, "cont")
            return VMStatus(state: .running, pid: id.qemu.pid, accel: id.accel)
        }
        guard let record = try RecordFile.read(SpecRecord.self, from: paths.spec) else {
            throw PlasmaError(.internal, "vm '\(name)': its spec.json is missing; delete the vm and create it again")
        }
        let spec = record.spec
        try checkHost(spec)
        let formats = try Self.recordedDiskFormats(record)
        EventLog.append(paths.events, kind: "relaunch", state: .created)
        let created = try await launch(spec, diskFormats: formats, paths: paths,
                                       qemu: try Self.findQEMU(explicit: qemuBinary), supervisor: try Supervisor.find())
        guard let pid = created.pid, ProcessIdentity.of(pid: pid) != nil else {
            throw PlasmaError(.launchFailed, "vm '\(name)': QEMU ended right after its relaunch; see plasmavmc events \(name)")
        }
        try await cont(name, paths)
        return VMStatus(state: .running, pid: created.pid, accel: created.accel)
    }

    /// Runs a created VM through its supervisor (whose monitor is already negotiated).
    private func cont(_ name: VMName, _ paths: RuntimePaths) async throws {
        let text: String
        do {
            text = try await Supervisor.request(paths.supervisorSocket, "cont", timeout: .seconds(10))
        } catch is CancellationError {
            throw CancellationError()
        } catch {
            throw PlasmaError(.unavailable, "vm '\(name)': its supervisor did not run it; check plasmavmc status \(name)",
                              cause: "\(error)")
        }
        let reply = try JSONDecoder().decode(Supervisor.ContReply.self, from: Data(text.utf8))
        if reply.ok == true { return }
        if let state = reply.runstate {
            throw PlasmaError(.invalidState, "cannot start vm '\(name)': its QEMU is already up (\(state)); stop it first")
        }
        throw PlasmaError(.qmp, "vm '\(name)': QMP 'cont' failed", cause: reply.error)
    }

    public func status(_ name: VMName) async throws -> VMStatus {
        let paths = try existing(name)
        guard let id = try await identify(paths) else {
            if let exit = try readExit(paths) { return exit.status }
            if let request = try requestStatus(paths, accel: nil) { return request }
            if FileManager.default.fileExists(atPath: paths.launch) {
                return VMStatus(state: .crashed, reason: "its launch record is unreadable and no QEMU of this vm is running",
                                reasonCode: .supervisorLost)
            }
            return VMStatus(state: .crashed, reason: "no QEMU was ever launched for it", reasonCode: .launchFailed)
        }
        if id.qemu.isAlive {
            var status: VMStatus
            if id.supervisorAnswers,
               let reply = try? await askStatus(paths, timeout: .milliseconds(800)) {
                status = Self.map(runState: reply.runstate, pid: id.qemu.pid, accel: id.accel)
            } else if id.supervisor?.isAlive == true {
                if !FileManager.default.fileExists(atPath: paths.launch) {
                    status = VMStatus(state: .created, reason: "QEMU is starting", pid: id.qemu.pid, accel: id.accel)
                } else {
                    status = VMStatus(state: .running, reason: "state unknown: its supervisor (pid \(id.supervisor!.pid)) does not answer",
                                      reasonCode: .running, pid: id.qemu.pid, accel: id.accel)
                }
            } else {
                status = await lostSupervisorStatus(paths, id)
            }
            if id.qemu.isStopped {
                status.reason = "QEMU (pid \(id.qemu.pid)) is stopped by a signal and runs no guest; plasmavmc kill \(name) ends it"
            }
            return status
        }
        // QEMU is gone. Its supervisor writes exit.json right after reaping it.
        if let sup = id.supervisor {
            let deadline = ContinuousClock.now + .seconds(1)
            while sup.isAlive, try readExit(paths) == nil, ContinuousClock.now < deadline {
                try await Task.sleep(for: .milliseconds(5))
            }
        }
        if let exit = try readExit(paths) {
            var s = exit.status
            s.accel = id.accel
            return s
        }
        return try deadWithoutSupervisor(paths, id)
    }

    public func info(_ name: VMName) async throws -> VMInfo {
        let paths = try existing(name)
        guard let spec = try RecordFile.read(VMSpec.self, from: paths.spec) else {
            throw PlasmaError(.internal, "vm '\(name)': its spec.json is missing; delete the vm and create it again")
        }
        return VMInfo(spec: spec, status: try await status(name), runtimeDirectory: paths.directory)
    }

    public func stop(_ name: VMName, timeout: Duration) async throws -> StopOutcome {
        let clock = ContinuousClock()
        let begin = clock.now
        let paths = try existing(name)
        guard let id = try await identify(paths), id.qemu.isAlive else {
            recordBestEffort(paths, "stop", step: .alreadyGone)
            return StopOutcome(step: .alreadyGone, elapsed: clock.now - begin)
        }
        if id.supervisorAnswers {
            do {
                let text = try await Supervisor.request(paths.supervisorSocket, "stop \(timeout.milliseconds)",
                                                        timeout: timeout + .seconds(8))
                let reply = try JSONDecoder().decode(Supervisor.StopReply.self, from: Data(text.utf8))
                if let error = reply.error { throw PlasmaError(.internal, "vm '\(name)': the supervisor refused the stop: \(error)") }
                let step = reply.step.flatMap(StopStep.init(rawValue:)) ?? .alreadyGone
                return StopOutcome(step: step, elapsed: clock.now - begin)
            } catch is CancellationError {
                throw CancellationError()
            } catch let e as PlasmaError {
                throw e
            } catch {
                // The supervisor went away meanwhile: finish the stop from here.
                if !id.qemu.isAlive { return StopOutcome(step: .alreadyGone, elapsed: clock.now - begin) }
            }
        }
        let left = timeout - (clock.now - begin)
        let step = try await stopWithoutSupervisor(name, paths, id, timeout: max(left, .zero))
        return StopOutcome(step: step, elapsed: clock.now - begin)
    }

    public func kill(_ name: VMName) async throws {
        let paths = try existing(name)
        guard let id = try await identify(paths), id.qemu.isAlive else {
            recordBestEffort(paths, "kill", step: nil)
            return
        }
        if id.supervisorAnswers {
            do {
                _ = try await Supervisor.request(paths.supervisorSocket, "kill", timeout: .seconds(6))
                if try await id.qemu.waitForExit(timeout: .seconds(1)) { return }
            } catch is CancellationError {
                throw CancellationError()
            } catch {
                // Fall through: kill it by pid.
            }
        }
        recordBestEffort(paths, "kill", step: nil)
        EventLog.append(paths.events, kind: "kill-requested", state: .running, details: ["supervisor": "lost"])
        id.qemu.signal(SIGKILL)
        guard try await id.qemu.waitForExit(timeout: .seconds(5)) else {
            throw PlasmaError(.internal, "vm '\(name)': QEMU (pid \(id.qemu.pid)) survived SIGKILL; it may be stuck in the kernel")
        }
        EventLog.append(paths.events, kind: "exit", state: .stopped,
                        details: ["reason_code": ReasonCode.killed.rawValue, "message": "killed by plasmavmc kill (SIGKILL)"])
    }

    public func pause(_ name: VMName) async throws {
        try await simpleCommand(name, "stop")
    }

    public func resume(_ name: VMName) async throws {
        try await simpleCommand(name, "cont")
    }

    public func delete(_ name: VMName) async throws {
        let paths = try existing(name)
        if let id = try await identify(paths) {
            if id.qemu.isAlive {
                throw PlasmaError(.invalidState, "cannot delete vm '\(name)': its QEMU (pid \(id.qemu.pid)) is still running; stop it first, or delete with force")
            }
            // Let the supervisor (and a reaper of this process) finish writing into the folder.
            _ = try await id.qemu.waitForExit(timeout: .seconds(2))
            if let sup = id.supervisor { _ = try await sup.waitForExit(timeout: .seconds(2)) }
        }
        var lastError: (any Error)?
        for _ in 0..<5 {
            do {
                try FileManager.default.removeItem(atPath: paths.directory)
                return
            } catch {
                lastError = error
                try await Task.sleep(for: .milliseconds(20))
            }
        }
        throw PlasmaError(.internal, "vm '\(name)': cannot remove \(paths.directory)", cause: "\(lastError!)")
    }

    public func list() async throws -> [VMName] {
        try root.vmNames()
    }

    public func consoleLog(_ name: VMName, maxBytes: Int?) async throws -> String {
        let paths = try existing(name)
        return ConsoleLogFiles(paths: paths).tail(maxBytes: maxBytes)
    }

    public func consoleRead(_ name: VMName, from offset: Int) async throws -> (text: String, next: Int) {
        let paths = try existing(name)
        let (data, next) = ConsoleLogFiles(paths: paths).read(from: offset, limit: 4 << 20)
        return (String(decoding: data, as: UTF8.self), next)
    }

    public func consoleConnection(_ name: VMName) async throws -> Int32 {
        let paths = try existing(name)
        guard let id = try await identify(paths), id.qemu.isAlive else {
            throw PlasmaError(.invalidState, "vm '\(name)': QEMU is not running, so it has no console; start it first")
        }
        // The supervisor's console takes any number of clients; without a supervisor, QEMU's
        // own serial socket takes one.
        let socket = id.supervisor?.isAlive == true ? paths.consoleSocket : paths.serialSocket
        let fd = socket.withCString { plasma_unix_connect_timeout($0, 2000) }
        guard fd >= 0 else {
            throw PlasmaError(.unavailable, "vm '\(name)': cannot connect to its console", cause: String(cString: strerror(-fd)))
        }
        return fd
    }

    public func sendConsole(_ name: VMName, _ text: String) async throws {
        let fd = try await consoleConnection(name)
        defer { close(fd) }
        // Write, wait until the supervisor (or QEMU) has taken every byte, close. Whatever the
        // guest prints meanwhile is read and dropped: an unread console client is dropped.
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
        guard let id = try await identify(paths), id.qemu.isAlive else {
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
        let client = try await connect(name, paths, id.qemu)
        defer { client.close() }
        return try await qmp(name, client, command, args).description
    }

    public func events(_ name: VMName, from offset: Int) async throws -> (events: [VMEvent], next: Int) {
        let paths = try existing(name)
        return EventLog.read(paths.events, from: offset)
    }

    public func openEventLog(_ name: VMName) async throws -> (any VMEventLogHandle)? {
        let paths = try existing(name)
        return EventLog.Handle(path: paths.events)
    }

    public func statusProbe(_ name: VMName) -> (any VMStatusProbe)? {
        guard let paths = try? existing(name),
              let launch = (try? RecordFile.read(LaunchRecord.self, from: paths.launch)) ?? nil, launch.process.isAlive,
              launch.supervisor?.isAlive == true,
              let conn = try? ControlConnection(paths.supervisorSocket, timeout: .milliseconds(200)) else { return nil }
        return StatusProbe(launch: launch, connection: conn)
    }

    /// Holds a connection to the VM's supervisor and asks it `status`: no QMP round trip.
    final class StatusProbe: VMStatusProbe {
        let launch: LaunchRecord
        let connection: ControlConnection
        let decoder = JSONDecoder()

        init(launch: LaunchRecord, connection: ControlConnection) {
            self.launch = launch
            self.connection = connection
        }

        func status() -> VMStatus? {
            guard !connection.isClosed, launch.process.isAlive,
                  let text = try? connection.ask("status", timeout: .seconds(2)),
                  let reply = try? decoder.decode(Supervisor.StatusReply.self, from: Data(text.utf8)) else {
                connection.close()
                return nil
            }
            return KVMHypervisor.map(runState: reply.runstate, pid: launch.process.pid, accel: launch.accel)
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
        guard try root.checkTrusted(), try paths.checkTrusted(),
              FileManager.default.fileExists(atPath: paths.spec) else {
            throw PlasmaError(.notFound, "vm '\(name)' does not exist; see plasmavmc ls")
        }
        return paths
    }

    /// The processes of a VM.
    struct Identity {
        var qemu: ProcessIdentity
        var supervisor: ProcessIdentity?
        var accel: String?

        /// The supervisor lives and is not stopped by a signal (then it would answer nothing,
        /// and stop and kill act on QEMU by pid instead of waiting for it).
        var supervisorAnswers: Bool {
            guard let supervisor else { return false }
            return supervisor.isAlive && !supervisor.isStopped
        }
    }

    /// Which QEMU and supervisor are this VM's: from launch.json; when that is missing or
    /// unreadable, from the supervisor itself; else from QEMU's pidfile, believed only when
    /// that process's command line names this VM's monitor socket. A bad record never makes
    /// plasmavmc forget a live QEMU.
    /// - Throws: `unavailable` for a record plasmavmc must not trust (see `Ownership`).
    func identify(_ paths: RuntimePaths) async throws -> Identity? {
        if let launch = try Self.readUnlessGarbled(LaunchRecord.self, from: paths.launch) {
            return Identity(qemu: launch.process, supervisor: launch.supervisor, accel: launch.accel)
        }
        if let reply = try? await askStatus(paths, timeout: .milliseconds(500)), reply.qemu.isAlive {
            return Identity(qemu: reply.qemu, supervisor: reply.supervisor, accel: reply.accel)
        }
        guard let text = try? String(contentsOfFile: paths.pidFile, encoding: .utf8),
              let pid = Int32(text.trimmingCharacters(in: .whitespacesAndNewlines)), pid > 0,
              let process = ProcessIdentity.of(pid: pid),
              let cmdline = FileManager.default.contents(atPath: "/proc/\(pid)/cmdline") else { return nil }
        let args = cmdline.split(separator: 0).map { String(decoding: $0, as: UTF8.self) }
        let monitor = "socket,id=qmp,path=\(QEMUCommandLine.escape(paths.qmpSocket)),"
        guard args.contains(where: { $0.hasPrefix(monitor) }) else { return nil }
        let accel = args.firstIndex(of: "-accel").flatMap { $0 + 1 < args.count ? args[$0 + 1] : nil }
        return Identity(qemu: process, supervisor: Self.supervisorParent(of: pid, paths), accel: accel)
    }

    /// QEMU's parent, when that is this VM's supervisor (e.g. while it starts, before it has
    /// written launch.json).
    static func supervisorParent(of pid: Int32, _ paths: RuntimePaths) -> ProcessIdentity? {
        guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
              let close = stat.lastIndex(of: ")") else { return nil }
        let fields = stat[stat.index(after: close)...].split(separator: " ")
        guard fields.count > 1, let ppid = Int32(fields[1]), ppid > 1,
              let cmdline = FileManager.default.contents(atPath: "/proc/\(ppid)/cmdline") else { return nil }
        let args = cmdline.split(separator: 0).map { String(decoding: $0, as: UTF8.self) }
        guard args.count > 1, args[0].hasSuffix("/" + Supervisor.binaryName), args[1] == paths.directory else { return nil }
        return ProcessIdentity.of(pid: ppid)
    }

    func askStatus(_ paths: RuntimePaths, timeout: Duration) async throws -> Supervisor.StatusReply {
        let text = try await Supervisor.request(paths.supervisorSocket, "status", timeout: timeout)
        return try JSONDecoder().decode(Supervisor.StatusReply.self, from: Data(text.utf8))
    }

    func readExit(_ paths: RuntimePaths) throws -> Supervisor.ExitRecord? {
        try Self.readUnlessGarbled(Supervisor.ExitRecord.self, from: paths.exit)
    }

    /// A record, or nil when it is missing or garbled (then the caller falls back to what
    /// else it knows). A record that must not be trusted at all is still an error.
    static func readUnlessGarbled<T: Decodable>(_ type: T.Type, from path: String) throws -> T? {
        do {
            return try RecordFile.read(type, from: path)
        } catch let e as PlasmaError where e.code == .internal {
            return nil
        }
    }

    /// QEMU runs but its supervisor is gone: ask QEMU itself, briefly.
    private func lostSupervisorStatus(_ paths: RuntimePaths, _ id: Identity) async -> VMStatus {
        let why = "its supervisor is gone; QEMU (pid \(id.qemu.pid)) runs on and plasmavmc acts on it by pid"
        if !id.qemu.isStopped,
           let client = try? await QMPClient.connect(path: paths.qmpSocket, timeout: .milliseconds(500)) {
            defer { client.close() }
            if let reply = try? await client.execute("query-status", timeout: .milliseconds(500)) {
                var s = Self.map(runState: reply["status"]?.stringValue ?? "", pid: id.qemu.pid, accel: id.accel)
                s.reason = "\(s.state): " + why
                s.reasonCode = .supervisorLost
                return s
            }
        }
        return VMStatus(state: .running, reason: "state unknown: \(why), and its monitor does not answer",
                        reasonCode: .supervisorLost, pid: id.qemu.pid, accel: id.accel)
    }

    /// QEMU is gone and no supervisor recorded how.
    private func deadWithoutSupervisor(_ paths: RuntimePaths, _ id: Identity) throws -> VMStatus {
        if let request = try requestStatus(paths, accel: id.accel) { return request }
        if FileManager.default.fileExists(atPath: paths.pidFile) {
            return VMStatus(state: .crashed, reason: "QEMU died without shutting down while its supervisor was gone", reasonCode: .supervisorLost, accel: id.accel)
        }
        return VMStatus(state: .stopped, reason: "QEMU exited cleanly while its supervisor was gone", reasonCode: .supervisorLost, accel: id.accel)
    }

    /// What plasmavmc did to the VM while its supervisor was gone, if anything.
    private func requestStatus(_ paths: RuntimePaths, accel: String?) throws -> VMStatus? {
        let request = try Self.readUnlessGarbled(RequestRecord.self, from: paths.record)
        switch request?.action {
        case "kill": return VMStatus(state: .stopped, reason: "killed by plasmavmc kill (SIGKILL)", reasonCode: .killed, accel: accel)
        case "stop": return VMStatus(state: .stopped, reason: "stopped by plasmavmc stop (step: \(request?.step ?? "stop"))", reasonCode: .stop, accel: accel)
        default: return nil
        }
    }

    /// The stop ladder run from here, by pid and start time, when no supervisor does it.
    private func stopWithoutSupervisor(_ name: VMName, _ paths: RuntimePaths, _ id: Identity, timeout: Duration) async throws -> StopStep {
        let clock = ContinuousClock()
        let begin = clock.now
        let process = id.qemu
        recordBestEffort(paths, "stop", step: nil)
        EventLog.append(paths.events, kind: "stop-requested", state: .running, details: ["supervisor": "lost", "timeout_ms": String(timeout.milliseconds)])
        let forceBudget = min(.seconds(6), timeout / 2)
        let gracefulEnd = begin + (timeout - forceBudget)
        var step: StopStep?
        func note(_ s: StopStep) { EventLog.append(paths.events, kind: "stop-step", state: .running, details: ["step": s.rawValue]) }
        if !process.isStopped, clock.now < gracefulEnd {
            note(.powerdown)
            while step == nil, clock.now < gracefulEnd {
                let budget = min(greetingTimeout, max(gracefulEnd - clock.now, .milliseconds(1)))
                if let client = try? await QMPClient.connect(path: paths.qmpSocket, timeout: budget) {
                    _ = try? await client.execute("system_powerdown", timeout: budget)
                    client.close()
                }
                let wait = min(powerdownInterval, max(gracefulEnd - clock.now, .zero))
                if try await process.waitForExit(timeout: wait) { step = .powerdown }
            }
        }
        if step == nil, !process.isStopped {
            note(.quit)
            let budget = max(forceBudget / 2, .milliseconds(1))
            if let client = try? await QMPClient.connect(path: paths.qmpSocket, timeout: budget) {
                _ = try? await client.execute("quit", timeout: budget)
                client.close()
            }
            if try await process.waitForExit(timeout: forceBudget / 2) { step = .quit }
        }
        if step == nil, !process.isStopped {
            note(.sigterm)
            process.signal(SIGTERM)
            if try await process.waitForExit(timeout: forceBudget / 4) { step = .sigterm }
        }
        if step == nil {
            note(.sigkill)
            process.signal(SIGKILL)
            guard try await process.waitForExit(timeout: .seconds(5)) else {
                throw PlasmaError(.internal, "vm '\(name)': QEMU (pid \(process.pid)) survived SIGKILL; it may be stuck in the kernel")
            }
            step = .sigkill
        }
        recordBestEffort(paths, "stop", step: step)
        EventLog.append(paths.events, kind: "exit", state: .stopped,
                        details: ["reason_code": ReasonCode.stop.rawValue, "message": "stopped by plasmavmc stop (step: \(step!))"])
        return step!
    }

    /// Notes what plasmavmc did, for a later process. Never blocks the action itself: on a
    /// full disk the note is lost and the VM still stops.
    private func recordBestEffort(_ paths: RuntimePaths, _ action: String, step: StopStep?) {
        do {
            try RecordFile.write(RequestRecord(action: action, step: step?.rawValue, at: Date().timeIntervalSince1970),
                                 to: paths.record)
        } catch {
            FileHandle.standardError.write(Data("plasmavmc: warning: could not write \(paths.record): \(error)\n".utf8))
        }
    }

    private func simpleCommand(_ name: VMName, _ command: String) async throws {
        let paths = try existing(name)
        guard let id = try await identify(paths), id.qemu.isAlive else {
            throw PlasmaError(.invalidState, "vm '\(name)': QEMU is not running; start it first")
        }
        let client = try await connect(name, paths, id.qemu)
        defer { client.close() }
        _ = try await qmp(name, client, command)
    }

    private func connect(_ name: VMName, _ paths: RuntimePaths, _ qemu: ProcessIdentity) async throws -> QMPClient {
        do {
            return try await QMPClient.connect(path: paths.qmpSocket, timeout: greetingTimeout)
        } catch {
            throw PlasmaError(.qmp, "vm '\(name)': cannot reach QEMU's monitor (pid \(qemu.pid)); check plasmavmc status \(name)",
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

    static func map(runState: String, pid: Int32, accel: String?) -> VMStatus {
        switch runState {
        case "prelaunch": return VMStatus(state: .created, pid: pid, accel: accel)
        case "running": return VMStatus(state: .running, pid: pid, accel: accel)
        case "guest-panicked":
            return VMStatus(state: .crashed, reason: "the guest panicked", reasonCode: .guestPanicked, pid: pid, accel: accel)
        case "internal-error":
            return VMStatus(state: .crashed, reason: "QEMU hit an internal error", reasonCode: .qemuCrashed, pid: pid, accel: accel)
        case "shutdown":
            return VMStatus(state: .stopped, reason: "shutting down", reasonCode: .guestShutdown, pid: pid, accel: accel)
        case "paused":
            return VMStatus(state: .paused, reason: "paused by request", pid: pid, accel: accel)
        default:
            return VMStatus(state: .paused, reason: runState, pid: pid, accel: accel)
        }
    }
}
