import Foundation
import PlasmaHypervisor
import Synchronization

/// The runtime root: one folder per VM, found the same way by every process.
public struct RuntimeRoot: Sendable {
    public let path: String

    public init(path: String) {
        self.path = path
    }

    /// `--runtime-dir`, else `PLASMAVMC_RUNTIME_DIR`, else `/run/plasmavmc` for root,
    /// else `$XDG_RUNTIME_DIR/plasmavmc`, else `/tmp/plasmavmc-UID`. Another local user can
    /// create that last one first; every operation refuses a root it cannot trust
    /// (`checkTrusted`), so that is an error, never a hijack.
    public static func resolve(explicit: String?, environment: [String: String] = ProcessInfo.processInfo.environment) -> RuntimeRoot {
        if let explicit, !explicit.isEmpty { return RuntimeRoot(path: absolute(explicit)) }
        if let env = environment["PLASMAVMC_RUNTIME_DIR"], !env.isEmpty { return RuntimeRoot(path: absolute(env)) }
        if getuid() == 0 { return RuntimeRoot(path: "/run/plasmavmc") }
        if let xdg = environment["XDG_RUNTIME_DIR"], !xdg.isEmpty { return RuntimeRoot(path: xdg + "/plasmavmc") }
        return RuntimeRoot(path: "/tmp/plasmavmc-\(getuid())")
    }

    static func absolute(_ p: String) -> String {
        if p.hasPrefix("/") { return p }
        return FileManager.default.currentDirectoryPath + "/" + p
    }

    public func paths(_ name: VMName) -> RuntimePaths { RuntimePaths(root: path, name: name) }

    /// The way out named when the root is refused.
    private var refusalAdvice: String {
        "plasmavmc trusts only a folder of yours that no one else can write; remove it, or pass another --runtime-dir (or PLASMAVMC_RUNTIME_DIR)"
    }

    /// Creates the root (mode 0700; missing parents too) if needed, and checks it can be
    /// trusted (see `checkTrusted`).
    /// - Throws: `unavailable` for a root that cannot be made or cannot be trusted,
    ///   `invalidArgument` when it is not a folder.
    public func ensureExists() throws {
        if try checkTrusted() { return }
        let parent = (path as NSString).deletingLastPathComponent
        do {
            try FileManager.default.createDirectory(atPath: parent, withIntermediateDirectories: true)
        } catch {
            throw PlasmaError(.unavailable, "cannot create runtime dir \(path); pass a writable --runtime-dir",
                              cause: "\(error)")
        }
        if mkdir(path, 0o700) != 0, errno != EEXIST {
            throw PlasmaError(.unavailable, "cannot create runtime dir \(path); pass a writable --runtime-dir",
                              cause: String(cString: strerror(errno)))
        }
        // Made by us just now, or by someone else in between: checked either way.
        guard try checkTrusted() else {
            throw PlasmaError(.unavailable, "runtime dir \(path) vanished while it was being created; try again")
        }
    }

    /// Whether the root exists; when it does, it must be a folder (not a symlink) owned by
    /// this user and writable by no one else. Anyone who can write into it could plant VM
    /// records that make plasmavmc signal or follow what they name, so the check is made by
    /// every operation, as ssh-agent and tmux check their socket folders.
    /// - Throws: `unavailable` naming the path and what is wrong with it.
    @discardableResult
    func checkTrusted() throws -> Bool {
        try Ownership.checkFolder(path, what: "runtime dir", advice: refusalAdvice)
    }

    /// Every VM folder under the root, by name; none when the root does not exist.
    /// - Throws: `unavailable` when the root cannot be trusted or listed.
    func vmNames() throws -> [VMName] {
        guard try checkTrusted() else { return [] }
        let entries: [String]
        do {
            entries = try FileManager.default.contentsOfDirectory(atPath: path)
        } catch {
            throw PlasmaError(.unavailable, "cannot list runtime dir \(path); check its permissions or pass another --runtime-dir",
                              cause: "\(error)")
        }
        return entries.compactMap { e in
            guard let n = try? VMName(e) else { return nil }
            return FileManager.default.fileExists(atPath: paths(n).spec) ? n : nil
        }.sorted()
    }
}

extension RuntimePaths {
    /// Whether the VM's folder exists; when it does, it must pass the checks the root does.
    /// - Throws: `unavailable` naming the folder and what is wrong with it.
    func checkTrusted() throws -> Bool {
        try Ownership.checkFolder(directory, what: "vm folder",
                                  advice: "plasmavmc cannot tell who made it; remove it (rm -r \(directory))")
    }
}

/// What plasmavmc trusts on disk: only files and folders of this user (the effective uid)
/// that are not symlinks and that no one else can write.
enum Ownership {
    /// lstat's view of `path` checked as a folder. False when it does not exist.
    static func checkFolder(_ path: String, what: String, advice: String) throws -> Bool {
        var st = stat()
        guard lstat(path, &st) == 0 else {
            if errno == ENOENT || errno == ENOTDIR { return false }
            throw PlasmaError(.unavailable, "cannot inspect \(what) \(path); \(advice)",
                              cause: String(cString: strerror(errno)))
        }
        try check(st, path: path, what: what, type: S_IFDIR, advice: advice)
        return true
    }

    /// Refuses a symlink, the wrong file type, another owner, or group/other write permission.
    static func check(_ st: stat, path: String, what: String, type: mode_t, advice: String) throws {
        let kind = st.st_mode & S_IFMT
        if kind == S_IFLNK {
            throw PlasmaError(.unavailable, "\(what) \(path) is a symlink; \(advice)")
        }
        guard kind == type else {
            throw PlasmaError(.invalidArgument,
                              "\(what) \(path) exists and is not \(type == S_IFDIR ? "a folder" : "a regular file"); \(advice)")
        }
        let me = geteuid()
        guard st.st_uid == me else {
            throw PlasmaError(.unavailable, "\(what) \(path) is owned by uid \(st.st_uid), not by you (uid \(me)); \(advice)")
        }
        guard st.st_mode & 0o022 == 0 else {
            let mode = String(st.st_mode & 0o7777, radix: 8)
            throw PlasmaError(.unavailable,
                              "\(what) \(path) is writable by others (mode \(String(repeating: "0", count: max(0, 4 - mode.count)) + mode)); \(advice)")
        }
    }
}

/// Small JSON files in a VM folder. Written atomically: a temp file of a name no other
/// writer uses, fsync, rename. Read only when they pass `Ownership`'s checks.
enum RecordFile {
    static let encoder: JSONEncoder = {
        let e = JSONEncoder()
        e.outputFormatting = [.prettyPrinted, .sortedKeys]
        return e
    }()

    private static let tempCounter = Atomic<UInt64>(0)

    /// Records are small; anything bigger was not written by plasmavmc.
    static let maxSize = 1 << 20

    /// - Throws: `SysError` when the file cannot be written or renamed into place.
    static func write<T: Encodable>(_ value: T, to path: String) throws {
        let data = try encoder.encode(value)
        let n = tempCounter.wrappingAdd(1, ordering: .relaxed).oldValue
        let tmp = "\(path).\(getpid()).\(n).tmp"
        let fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw SysError("cannot write \(tmp)", errno) }
        var failure: Int32 = 0
        data.withUnsafeBytes { buf in
            var off = 0
            while off < buf.count {
                let w = Glibc.write(fd, buf.baseAddress! + off, buf.count - off)
                if w < 0 {
                    if errno == EINTR { continue }
                    failure = errno
                    return
                }
                off += w
            }
        }
        if failure == 0, fsync(fd) != 0 { failure = errno }
        if close(fd) != 0, failure == 0 { failure = errno }
        if failure == 0, rename(tmp, path) != 0 { failure = errno }
        if failure != 0 {
            unlink(tmp)
            throw SysError("cannot write \(path)", failure)
        }
    }

    /// The record at `path`, or nil when there is none.
    /// - Throws: `unavailable` for a record that is a symlink, not a regular file, owned by
    ///   another user or writable by others; `internal` for one that cannot be read or decoded.
    static func read<T: Decodable>(_ type: T.Type, from path: String) throws -> T? {
        let advice = "plasmavmc cannot tell who wrote it; remove it, or the VM's folder"
        let fd = open(path, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC)
        guard fd >= 0 else {
            let e = errno
            if e == ENOENT { return nil }
            if e == ELOOP { throw PlasmaError(.unavailable, "record \(path) is a symlink; \(advice)") }
            throw PlasmaError(.internal, "cannot read record \(path)", cause: String(cString: strerror(e)))
        }
        defer { close(fd) }
        var st = stat()
        guard fstat(fd, &st) == 0 else {
            throw PlasmaError(.internal, "cannot read record \(path)", cause: String(cString: strerror(errno)))
        }
        try Ownership.check(st, path: path, what: "record", type: S_IFREG, advice: advice)
        guard st.st_size <= maxSize else {
            throw PlasmaError(.internal, "record \(path) is unreadable: \(st.st_size) bytes is too big for a record; \(advice)")
        }
        var data = Data()
        var chunk = [UInt8](repeating: 0, count: 16384)
        while true {
            let n = chunk.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress, $0.count) }
            if n < 0 {
                if errno == EINTR { continue }
                throw PlasmaError(.internal, "cannot read record \(path)", cause: String(cString: strerror(errno)))
            }
            if n == 0 { break }
            data.append(contentsOf: chunk[0..<n])
            if data.count > maxSize {
                throw PlasmaError(.internal, "record \(path) is unreadable: too big for a record; \(advice)")
            }
        }
        do {
            return try JSONDecoder().decode(type, from: data)
        } catch {
            throw PlasmaError(.internal, "record \(path) is unreadable (not what plasmavmc writes); delete the vm with --force and create it again",
                              cause: "\(error)")
        }
    }

    /// The last `maxBytes` of a file (all of it when nil), as text.
    static func tail(_ path: String, maxBytes: Int?) -> String? {
        guard let h = FileHandle(forReadingAtPath: path) else { return nil }
        defer { try? h.close() }
        if let maxBytes, let size = try? h.seekToEnd(), size > UInt64(maxBytes) {
            try? h.seek(toOffset: size - UInt64(maxBytes))
        } else {
            try? h.seek(toOffset: 0)
        }
        let data = (try? h.readToEnd()) ?? Data()
        return String(decoding: data, as: UTF8.self)
    }
}

/// An exclusive flock on a VM's lock file, shared by every process (and every task of this
/// one, since each acquisition opens the file anew).
final class VMLock: Sendable {
    private let fd: Int32

    private init(fd: Int32) { self.fd = fd }

    deinit { close(fd) }

    /// Polls a non-blocking flock so no thread of the cooperative pool blocks in the kernel.
    /// - Throws: `notFound`, `unavailable` when another process holds the lock past `timeout`,
    ///   `CancellationError` at once (the lock file closed) when the calling task is cancelled.
    static func acquire(path: String, vm: VMName, timeout: Duration) async throws -> VMLock {
        let fd = open(path, O_RDWR | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0o600)
        guard fd >= 0 else {
            if errno == ENOENT { throw PlasmaError(.notFound, "vm '\(vm)' does not exist; see plasmavmc ls") }
            throw PlasmaError(.internal, "cannot open lock of vm '\(vm)'", cause: String(cString: strerror(errno)))
        }
        let clock = ContinuousClock()
        let deadline = clock.now + timeout
        while flock(fd, LOCK_EX | LOCK_NB) != 0 {
            guard errno == EWOULDBLOCK || errno == EINTR else {
                let e = errno
                close(fd)
                throw PlasmaError(.internal, "cannot lock vm '\(vm)'", cause: String(cString: strerror(e)))
            }
            if clock.now >= deadline {
                let holder = (RecordFile.tail(path, maxBytes: 64) ?? "").trimmingCharacters(in: .whitespacesAndNewlines)
                close(fd)
                throw PlasmaError(.unavailable,
                                  "vm '\(vm)' is busy: another plasmavmc process\(holder.isEmpty ? "" : " (pid \(holder))") is acting on it; try again when it is done")
            }
            do {
                try await Task.sleep(for: .milliseconds(10))
            } catch {
                close(fd)
                throw error
            }
        }
        let me = "\(getpid())\n"
        _ = ftruncate(fd, 0)
        _ = me.withCString { pwrite(fd, $0, strlen($0), 0) }
        return VMLock(fd: fd)
    }
}
