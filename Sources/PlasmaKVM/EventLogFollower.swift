import Foundation
import PlasmaHypervisor

/// Follows a VM's events.log by holding it open: what was written before the VM's folder was
/// removed is still read, and a rotation (events.log renamed to events.log.1, a new one begun)
/// is followed by draining the old file, then reading the new one from its start.
final class EventLogFollower: VMEventFollower, @unchecked Sendable {
    private let path: String
    private let directory: String
    // One watcher uses a follower at a time; the lock guards against misuse.
    private let lock = NSLock()
    private var fd: Int32 = -1
    private var partial = Data()

    init(paths: RuntimePaths, replay: Bool) throws {
        path = paths.events
        directory = paths.directory
        try open()
        if !replay, fd >= 0 {
            // From now on: skip to the end.
            lseek(fd, 0, SEEK_END)
        }
    }

    deinit { if fd >= 0 { Glibc.close(fd) } }

    private func open() throws {
        let f = Glibc.open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW)
        if f < 0 {
            // Not written yet is fine; anything else is reported.
            guard errno == ENOENT else {
                throw PlasmaError(.unavailable, "cannot read the event log \(path)", cause: String(cString: strerror(errno)))
            }
            return
        }
        var st = stat()
        guard fstat(f, &st) == 0, (st.st_mode & S_IFMT) == S_IFREG, st.st_uid == geteuid() else {
            Glibc.close(f)
            throw PlasmaError(.unavailable, "the event log \(path) is not a regular file of this user; not reading it")
        }
        fd = f
        partial = Data()
    }

    /// Everything readable from the open file now.
    private func drain() -> [VMEvent] {
        guard fd >= 0 else { return [] }
        var out: [VMEvent] = []
        var buf = [UInt8](repeating: 0, count: 64 << 10)
        while true {
            let n = Glibc.read(fd, &buf, buf.count)
            if n < 0 && errno == EINTR { continue }
            if n <= 0 { break }
            partial.append(contentsOf: buf[0..<n])
            // A bound on one line: a log line is small; garbage without newlines is dropped.
            if partial.count > 1 << 20, partial.firstIndex(of: 0x0a) == nil { partial.removeAll() }
        }
        guard let last = partial.lastIndex(of: 0x0a) else { return [] }
        let whole = partial[partial.startIndex...last]
        out = EventLog.parse(whole)
        partial = Data(partial[partial.index(after: last)...])
        return out
    }

    func read() async throws -> (events: [VMEvent], ended: Bool) {
        try lock.withLock { try readLocked() }
    }

    private func readLocked() throws -> (events: [VMEvent], ended: Bool) {
        var events = drain()
        var st = stat()
        if lstat(path, &st) == 0 {
            var mine = stat()
            if fd < 0 || fstat(fd, &mine) != 0 || mine.st_ino != st.st_ino || mine.st_dev != st.st_dev {
                // Rotated (or first written): the old file is drained above; read the new one.
                if fd >= 0 { Glibc.close(fd); fd = -1 }
                try open()
                events += drain()
            }
            return (events, false)
        }
        // No events.log: gone with its folder (deleted), or not written yet.
        var dst = stat()
        if lstat(directory, &dst) != 0 && errno == ENOENT {
            return (events, true)
        }
        return (events, false)
    }

    func close() {
        lock.withLock {
            if fd >= 0 { Glibc.close(fd); fd = -1 }
        }
    }
}
