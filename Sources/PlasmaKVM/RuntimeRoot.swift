import Foundation
import PlasmaHypervisor

/// The runtime root: one folder per VM, found the same way by every process.
public struct RuntimeRoot: Sendable {
    public let path: String

    public init(path: String) {
        self.path = path
    }

    /// `--runtime-dir`, else `PLASMAVMC_RUNTIME_DIR`, else `/run/plasmavmc` for root,
    /// else `$XDG_RUNTIME_DIR/plasmavmc`, else `/tmp/plasmavmc-UID`.
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

    /// Creates the root (0700 for the last component) if needed.
    func ensureExists() throws {
        var isDir: ObjCBool = false
        if FileManager.default.fileExists(atPath: path, isDirectory: &isDir) {
            guard isDir.boolValue else {
                throw PlasmaError(.invalidArgument, "runtime dir \(path) exists and is not a folder; pass another --runtime-dir")
            }
            return
        }
        do {
            try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true,
                                                    attributes: [.posixPermissions: 0o700])
        } catch {
            throw PlasmaError(.unavailable, "cannot create runtime dir \(path); pass a writable --runtime-dir",
                              cause: "\(error)")
        }
    }

    /// Every VM folder under the root, by name.
    func vmNames() -> [VMName] {
        guard let entries = try? FileManager.default.contentsOfDirectory(atPath: path) else { return [] }
        return entries.compactMap { e in
            guard let n = try? VMName(e) else { return nil }
            return FileManager.default.fileExists(atPath: paths(n).spec) ? n : nil
        }.sorted()
    }
}

/// Small JSON files in a VM folder, written atomically (write to a temp file, rename).
enum RecordFile {
    static let encoder: JSONEncoder = {
        let e = JSONEncoder()
        e.outputFormatting = [.prettyPrinted, .sortedKeys]
        return e
    }()

    static func write<T: Encodable>(_ value: T, to path: String) throws {
        let data = try encoder.encode(value)
        let tmp = path + ".tmp"
        guard FileManager.default.createFile(atPath: tmp, contents: data, attributes: [.posixPermissions: 0o600]) else {
            throw SysError("cannot write \(tmp)", errno)
        }
        guard rename(tmp, path) == 0 else {
            let e = errno
            unlink(tmp)
            throw SysError("cannot rename \(tmp)", e)
        }
    }

    static func read<T: Decodable>(_ type: T.Type, from path: String) -> T? {
        guard let data = FileManager.default.contents(atPath: path) else { return nil }
        return try? JSONDecoder().decode(type, from: data)
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
        let fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0o600)
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
