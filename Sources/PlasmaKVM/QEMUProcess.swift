import CPlasmaSys
import Foundation
import Synchronization

/// How a QEMU process ended, as waitpid saw it.
struct ExitRecord: Codable, Sendable, Equatable {
    /// true: exited with `code`; false: killed by signal `code`.
    var exited: Bool
    var code: Int32

    var summary: String {
        exited ? "exit status \(code)" : "signal \(code)\(code == SIGKILL ? " (SIGKILL)" : code == SIGTERM ? " (SIGTERM)" : code == SIGABRT ? " (SIGABRT)" : code == SIGSEGV ? " (SIGSEGV)" : "")"
    }
}

/// One live QEMU process identified by pid and kernel start time (guards against pid reuse).
struct ProcessIdentity: Codable, Sendable, Hashable {
    var pid: Int32
    var startTime: UInt64

    /// Alive and not a zombie. A zombie has exited; its parent just has not reaped it yet.
    var isAlive: Bool {
        var st: UInt64 = 0
        var state: CChar = 0
        guard plasma_proc_stat(pid, &st, &state) == 0 else { return false }
        return st == startTime && state != CChar(UInt8(ascii: "Z")) && state != CChar(UInt8(ascii: "X"))
    }

    /// Alive but stopped by a signal (SIGSTOP, a debugger): it will not answer anything.
    var isStopped: Bool {
        var st: UInt64 = 0
        var state: CChar = 0
        guard plasma_proc_stat(pid, &st, &state) == 0, st == startTime else { return false }
        return state == CChar(UInt8(ascii: "T")) || state == CChar(UInt8(ascii: "t"))
    }

    static func of(pid: Int32) -> ProcessIdentity? {
        var st: UInt64 = 0
        var state: CChar = 0
        guard plasma_proc_stat(pid, &st, &state) == 0 else { return nil }
        return ProcessIdentity(pid: pid, startTime: st)
    }

    func signal(_ sig: Int32) {
        if isAlive { _ = Glibc.kill(pid, sig) }
    }

    /// Polls until the process is gone or `timeout` passes. Returns whether it is gone.
    /// For a child of this process, "gone" also means reaped and its exit recorded, so that
    /// nothing writes into the VM's folder afterwards.
    /// - Throws: `CancellationError` at once when the calling task is cancelled.
    func waitForExit(timeout: Duration) async throws -> Bool {
        let clock = ContinuousClock()
        let deadline = clock.now + timeout
        var interval = Duration.milliseconds(1)
        while isAlive || !ChildProcesses.shared.isSettled(pid) {
            if clock.now >= deadline { return false }
            try await Task.sleep(for: interval)
            interval = min(interval * 2, .milliseconds(10))
        }
        return true
    }

    /// `waitForExit` for cleanup that must finish even when the caller is cancelled (after a
    /// SIGKILL, so the wait is short): it runs in a task of its own, which the caller's
    /// cancellation does not reach.
    func waitForExitEvenIfCancelled(timeout: Duration) async -> Bool {
        let wait = Task { try await waitForExit(timeout: timeout) }
        switch await wait.result {
        case .success(let gone): return gone
        case .failure: return false
        }
    }
}

/// Spawns children and reaps every one of them on a thread of its own (waitpid blocks, and
/// the cooperative pool has only as many threads as cores).
final class ChildProcesses: Sendable {
    static let shared = ChildProcesses()

    private let exits = Mutex<[Int32: ExitRecord]>([:])
    /// Children spawned here whose exit has not been fully handled yet.
    private let unsettled = Mutex<Set<Int32>>([])

    /// Spawns `argv` in a new session with stdout and stderr appended to `logPath`.
    /// `onExit` runs on the reaper thread when the child exits.
    func spawn(_ argv: [String], logPath: String, stdinFD: Int32 = -1, stdoutFD: Int32? = nil,
               onExit: @escaping @Sendable (ExitRecord) -> Void = { _ in }) throws -> Int32 {
        let logFD = open(logPath, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0o600)
        guard logFD >= 0 else {
            throw SysError("cannot open \(logPath)", errno)
        }
        defer { close(logFD) }
        var pid: pid_t = 0
        let cArgs = argv.map { strdup($0) } + [nil]
        defer { cArgs.forEach { free($0) } }
        let rc = cArgs.withUnsafeBufferPointer { buf in
            plasma_spawn(argv[0], buf.baseAddress, stdinFD, stdoutFD ?? logFD, logFD, 1, &pid)
        }
        guard rc == 0 else { throw SysError("cannot run \(argv[0])", rc) }
        let child = pid
        unsettled.withLock { _ = $0.insert(child) }
        let thread = Thread { [self] in
            var exited: Int32 = 0
            var code: Int32 = 0
            let r = plasma_waitpid(child, 0, &exited, &code)
            guard r > 0 else { return }
            let rec = ExitRecord(exited: exited != 0, code: code)
            exits.withLock { $0[child] = rec }
            onExit(rec)
            unsettled.withLock { _ = $0.remove(child) }
        }
        thread.name = "reap-\(child)"
        thread.start()
        return child
    }

    /// False while `pid` is a child of this process whose exit is not yet reaped and recorded.
    func isSettled(_ pid: Int32) -> Bool {
        !unsettled.withLock { $0.contains(pid) }
    }

    /// The exit of a child this process spawned, once reaped.
    func exitRecord(of pid: Int32) -> ExitRecord? {
        exits.withLock { $0[pid] }
    }
}

struct SysError: Error, CustomStringConvertible {
    var what: String
    var code: Int32
    init(_ what: String, _ code: Int32) {
        self.what = what
        self.code = code
    }
    var description: String { "\(what): \(String(cString: strerror(code)))" }
}
