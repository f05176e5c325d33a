import CPlasmaSys
import Foundation
import PlasmaHypervisor
import Synchronization

/// The per-VM supervisor process (Sources/plasmavmc-supervisor): where its binary is, what it
/// records, and a client for its control socket.
enum Supervisor {
    static let binaryName = "plasmavmc-supervisor"

    /// `PLASMAVMC_SUPERVISOR`, else beside the running executable (an installed or built
    /// plasmavmc, or a test binary in the build folder), else on PATH.
    static func find(environment: [String: String] = ProcessInfo.processInfo.environment) throws -> String {
        let fm = FileManager.default
        if let given = environment["PLASMAVMC_SUPERVISOR"], !given.isEmpty {
            guard fm.isExecutableFile(atPath: given) else {
                throw PlasmaError(.unavailable, "supervisor binary \(given) (PLASMAVMC_SUPERVISOR) is missing or not executable")
            }
            return given
        }
        var candidates: [String] = []
        if let exe = try? fm.destinationOfSymbolicLink(atPath: "/proc/self/exe") {
            candidates.append((exe as NSString).deletingLastPathComponent + "/" + binaryName)
        }
        for dir in (environment["PATH"] ?? "/usr/bin:/bin").split(separator: ":") {
            candidates.append("\(dir)/\(binaryName)")
        }
        if let found = candidates.first(where: { fm.isExecutableFile(atPath: $0) }) { return found }
        throw PlasmaError(.unavailable, "\(binaryName) was not found beside plasmavmc or on PATH; reinstall plasmavmc (scripts/install.sh) or set PLASMAVMC_SUPERVISOR")
    }

    /// How QEMU ended, as the supervisor recorded it (exit.json).
    struct ExitRecord: Codable {
        var exited: Bool
        var code: Int32
        var reasonCode: String
        var message: String
        var state: String
        var request: String?
        var step: String?

        var status: VMStatus {
            VMStatus(state: VMState(rawValue: state) ?? .crashed, reason: message,
                     reasonCode: ReasonCode(rawValue: reasonCode) ?? .qemuCrashed)
        }
    }

    /// The supervisor's answer to `status`.
    struct StatusReply: Codable {
        var runstate: String
        var qemu: ProcessIdentity
        var supervisor: ProcessIdentity
        var accel: String
        var stopping: String?
    }

    /// The supervisor's answer to `cont`.
    struct ContReply: Codable {
        var ok: Bool?
        var error: String?
        var runstate: String?
    }

    /// The supervisor's answer to `stop MS` and `kill`, sent once QEMU has exited.
    struct StopReply: Codable {
        var step: String?
        var elapsed_ms: Int64?
        var reasonCode: String?
        var error: String?
    }

    /// Sends one request line and waits for one reply line, on a thread of its own (the wait
    /// can be long: a stop). Ends at once when the task is cancelled.
    static func request(_ socket: String, _ line: String, timeout: Duration) async throws -> String {
        let box = CancelFlag()
        return try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { (c: CheckedContinuation<String, any Error>) in
                let t = Thread {
                    c.resume(with: Result { try ControlConnection.once(socket, line, timeout: timeout, cancelled: box) })
                }
                t.name = "supervisor-request"
                t.start()
            }
        } onCancel: {
            box.set()
        }
    }
}

/// A cancellation flag shared with a blocking thread.
final class CancelFlag: Sendable {
    private let flag = Atomic<Bool>(false)
    func set() { flag.store(true, ordering: .relaxed) }
    var isSet: Bool { flag.load(ordering: .relaxed) }
}

/// A blocking line connection to a supervisor's control socket. Every connect, write and read
/// has a deadline.
final class ControlConnection {
    private var fd: Int32
    private var buffer: [UInt8] = []

    init(_ socket: String, timeout: Duration) throws {
        let ms = Int32(clamping: max(1, timeout.milliseconds))
        fd = socket.withCString { plasma_unix_connect_timeout($0, ms) }
        if fd < 0 { throw SysError("cannot connect to \(socket)", -fd) }
    }

    deinit { close() }

    func close() {
        if fd >= 0 { Glibc.close(fd); fd = -1 }
    }

    var isClosed: Bool { fd < 0 }

    /// One request, one reply line (without its newline).
    func ask(_ line: String, timeout: Duration, cancelled: CancelFlag? = nil) throws -> String {
        guard fd >= 0 else { throw SysError("supervisor connection is closed", EBADF) }
        let deadline = ContinuousClock.now + timeout
        let bytes = Array((line + "\n").utf8)
        var off = 0
        while off < bytes.count {
            let n = bytes.withUnsafeBytes { send(fd, $0.baseAddress! + off, $0.count - off, Int32(MSG_NOSIGNAL | MSG_DONTWAIT)) }
            if n > 0 { off += n; continue }
            if n < 0, errno != EAGAIN, errno != EINTR { throw SysError("writing to the supervisor failed", errno) }
            try waitReadable(pollOut: true, deadline: deadline, cancelled: cancelled)
        }
        while true {
            if let nl = buffer.firstIndex(of: UInt8(ascii: "\n")) {
                let text = String(decoding: buffer[..<nl], as: UTF8.self)
                buffer.removeSubrange(...nl)
                return text
            }
            try waitReadable(pollOut: false, deadline: deadline, cancelled: cancelled)
            var chunk = [UInt8](repeating: 0, count: 4096)
            let n = chunk.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, Int32(MSG_DONTWAIT)) }
            if n == 0 { throw SysError("the supervisor hung up", EPIPE) }
            if n < 0 {
                if errno == EAGAIN || errno == EINTR { continue }
                throw SysError("reading from the supervisor failed", errno)
            }
            buffer.append(contentsOf: chunk[..<n])
            if buffer.count > 1 << 20 { throw SysError("the supervisor's reply is too long", EPROTO) }
        }
    }

    private func waitReadable(pollOut: Bool, deadline: ContinuousClock.Instant, cancelled: CancelFlag?) throws {
        while true {
            if cancelled?.isSet == true { throw CancellationError() }
            let left = deadline - ContinuousClock.now
            if left <= .zero { throw SysError("the supervisor did not answer in time", ETIMEDOUT) }
            var p = pollfd(fd: fd, events: Int16(pollOut ? POLLOUT : POLLIN), revents: 0)
            let r = poll(&p, 1, Int32(clamping: min(left.milliseconds + 1, 50)))
            if r > 0 { return }
            if r < 0, errno != EINTR { throw SysError("poll failed", errno) }
        }
    }

    static func once(_ socket: String, _ line: String, timeout: Duration, cancelled: CancelFlag?) throws -> String {
        let start = ContinuousClock.now
        let c = try ControlConnection(socket, timeout: min(timeout, .seconds(1)))
        defer { c.close() }
        return try c.ask(line, timeout: timeout - (ContinuousClock.now - start), cancelled: cancelled)
    }
}

extension Duration {
    /// Whole milliseconds, saturating.
    var milliseconds: Int64 {
        let (s, atto) = components
        let (ms, overflow) = s.multipliedReportingOverflow(by: 1000)
        if overflow { return s < 0 ? .min : .max }
        return ms.addingReportingOverflow(atto / 1_000_000_000_000_000).partialValue
    }
}

/// Appends one JSON line to a VM's event log (the supervisor is the main writer; plasmavmc
/// writes only while no supervisor runs: before launch, or once it is lost). One write, so
/// lines never interleave; a full disk loses the line, never the operation.
enum EventLog {
    static func append(_ path: String, kind: String, state: VMState, details: [String: String] = [:]) {
        var ts = timespec()
        clock_gettime(CLOCK_REALTIME, &ts)
        let nanos = Int64(ts.tv_sec) * 1_000_000_000 + Int64(ts.tv_nsec)
        var object: [String: Any] = ["time": isoTime(ts), "unix_nanos": nanos, "kind": kind, "state": state.rawValue]
        for (k, v) in details { object[k] = v }
        guard var data = try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys]) else { return }
        data.append(0x0a)
        let fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC | O_NOFOLLOW, 0o600)
        guard fd >= 0 else { return }
        _ = data.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
        Glibc.close(fd)
    }

    /// "2026-12-02T01:18:47.190Z", as the supervisor writes it.
    static func isoTime(_ ts: timespec) -> String {
        var t = ts.tv_sec
        var tm = Glibc.tm()
        gmtime_r(&t, &tm)
        return String(format: "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", Int(tm.tm_year) + 1900, Int(tm.tm_mon) + 1,
                      Int(tm.tm_mday), Int(tm.tm_hour), Int(tm.tm_min), Int(tm.tm_sec), Int(ts.tv_nsec / 1_000_000))
    }

    /// Entries from byte `offset` on (whole lines only), and where to read next. An offset
    /// past the end (the log was rotated) starts over.
    static func read(_ path: String, from offset: Int) -> (events: [VMEvent], next: Int) {
        guard let h = FileHandle(forReadingAtPath: path) else { return ([], offset) }
        defer { try? h.close() }
        let size = Int((try? h.seekToEnd()) ?? 0)
        let from = offset > size || offset < 0 ? 0 : offset
        try? h.seek(toOffset: UInt64(from))
        return parse((try? h.read(upToCount: 4 << 20)) ?? Data(), at: from)
    }

    /// The whole lines of `data`, read from byte `from` of a log, and the offset after them.
    static func parse(_ data: Data, at from: Int) -> (events: [VMEvent], next: Int) {
        guard let lastNewline = data.lastIndex(of: 0x0a) else { return ([], from) }
        let whole = data[data.startIndex...lastNewline]
        var events: [VMEvent] = []
        for line in whole.split(separator: 0x0a) {
            guard let obj = (try? JSONSerialization.jsonObject(with: Data(line))) as? [String: Any],
                  let kind = obj["kind"] as? String else { continue }
            let nanos = (obj["unix_nanos"] as? NSNumber)?.int64Value ?? 0
            events.append(VMEvent(unixNanos: nanos, kind: kind,
                                  state: (obj["state"] as? String).flatMap(VMState.init(rawValue:)),
                                  reasonCode: (obj["reason_code"] as? String).flatMap(ReasonCode.init(rawValue:)),
                                  json: String(decoding: line, as: UTF8.self)))
        }
        return (events, from + whole.count)
    }

    /// events.log held open (read-only, not following a symlink). The file outlives the VM's
    /// folder while it is open, so a follower reads the entries logged up to a delete.
    final class Handle: VMEventLogHandle {
        let path: String
        let fd: Int32
        let device: UInt64
        let inode: UInt64

        init?(path: String) {
            let fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW)
            guard fd >= 0 else { return nil }
            var st = stat()
            guard fstat(fd, &st) == 0, (st.st_mode & S_IFMT) == S_IFREG else {
                Glibc.close(fd)
                return nil
            }
            self.path = path
            self.fd = fd
            device = UInt64(st.st_dev)
            inode = UInt64(st.st_ino)
        }

        deinit { Glibc.close(fd) }

        func read(from offset: Int) -> (events: [VMEvent], next: Int) {
            var st = stat()
            guard fstat(fd, &st) == 0 else { return ([], offset) }
            let size = Int(st.st_size)
            let from = offset > size || offset < 0 ? 0 : offset
            let count = min(size - from, 4 << 20)
            guard count > 0 else { return ([], from) }
            var data = Data(count: count)
            let got = data.withUnsafeMutableBytes { pread(fd, $0.baseAddress, count, off_t(from)) }
            guard got > 0 else { return ([], from) }
            return EventLog.parse(data.prefix(got), at: from)
        }

        var isCurrent: Bool {
            var st = stat()
            return lstat(path, &st) == 0 && UInt64(st.st_dev) == device && UInt64(st.st_ino) == inode
        }
    }
}
