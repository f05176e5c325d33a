import Foundation

/// The test guest built by scripts/build-guest.sh, if present.
public enum TestGuest {
    /// The repository root (found from this file's location).
    public static let repoRoot: String = {
        var url = URL(fileURLWithPath: #filePath)
        for _ in 0..<3 { url.deleteLastPathComponent() }
        return url.path
    }()

    public static var directory: String {
        ProcessInfo.processInfo.environment["PLASMAVMC_GUEST_DIR"] ?? repoRoot + "/.cache/guest"
    }
    public static var kernel: String { directory + "/vmlinuz" }
    public static var initrd: String { directory + "/initrd.img" }

    /// The line the guest prints on its console once booted.
    public static let readyLine = "PLASMAVMC-GUEST-READY"

    /// Whether integration tests can run: QEMU and the guest are both installed.
    /// CI always installs both, so there these tests never skip.
    public static var isAvailable: Bool {
        let fm = FileManager.default
        return fm.fileExists(atPath: kernel) && fm.fileExists(atPath: initrd)
            && fm.isExecutableFile(atPath: "/usr/bin/qemu-system-x86_64")
    }
}

/// A private runtime root for one test. `finish()` kills whatever QEMU is still up under it,
/// removes it, and reports anything that was left behind, so a test can assert that nothing was.
public final class TestRuntime: Sendable {
    public let root: String

    public init() throws {
        root = try TempDir(prefix: "pvt").path
    }

    /// VM folders still present under the root.
    public var vmFolders: [String] {
        ((try? FileManager.default.contentsOfDirectory(atPath: root)) ?? []).filter { !$0.hasPrefix(".") }.sorted()
    }

    /// Live (non-zombie) processes whose command line mentions the root.
    public var processes: [Int32] { Self.processes(mentioning: root) }

    public static func processes(mentioning text: String) -> [Int32] {
        let me = getpid()
        let entries = (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? []
        return entries.compactMap { Int32($0) }.filter { pid in
            guard pid != me,
                  let data = FileManager.default.contents(atPath: "/proc/\(pid)/cmdline"), !data.isEmpty else { return false }
            let cmd = String(decoding: data.map { $0 == 0 ? 32 : $0 }, as: UTF8.self)
            return cmd.contains(text)
        }
    }

    /// Runs `body` with a fresh runtime, then kills leftovers and removes it, pass or fail.
    /// Returns what the body had left behind (a test expects both lists to be empty).
    public static func around(_ body: (TestRuntime) async throws -> Void) async throws -> (folders: [String], processes: [Int32]) {
        let runtime = try TestRuntime()
        do {
            try await body(runtime)
        } catch {
            runtime.finish()
            throw error
        }
        return runtime.finish()
    }

    /// Kills leftovers and removes the root. Returns what had been left behind.
    @discardableResult
    public func finish() -> (folders: [String], processes: [Int32]) {
        let left = (vmFolders, processes)
        for pid in left.1 { kill(pid, SIGKILL) }
        for _ in 0..<200 where !processes.isEmpty { usleep(10_000) }
        try? FileManager.default.removeItem(atPath: root)
        return left
    }
}

/// Polls a console log until `text` appears; returns the log. Throws after `timeout`.
public func waitForConsole(_ logPath: String, contains text: String, timeout: Duration = .seconds(90)) async throws -> String {
    let clock = ContinuousClock()
    let deadline = clock.now + timeout
    while true {
        let log = (FileManager.default.contents(atPath: logPath)).map { String(decoding: $0, as: UTF8.self) } ?? ""
        if log.contains(text) { return log }
        if clock.now >= deadline {
            throw SupportError("'\(text)' did not appear in \(logPath) within \(timeout); log tail:\n\(log.suffix(800))")
        }
        try await Task.sleep(for: .milliseconds(50))
    }
}

/// Writes an executable script into `dir` and returns its path.
public func writeScript(_ dir: String, _ name: String, _ body: String) throws -> String {
    let path = dir + "/" + name
    try body.write(toFile: path, atomically: true, encoding: .utf8)
    chmod(path, 0o755)
    return path
}

/// A stand-in for QEMU that opens every socket named on its command line (monitors, serial),
/// accepts clients and never greets them (the "socket that accepts but never greets" fault).
public let silentQMPScript = """
    #!/usr/bin/env python3
    import socket, sys, time, os
    args = sys.argv[1:]
    paths = []
    for i, a in enumerate(args):
        if a == "-chardev" and args[i + 1].startswith("socket,"):
            for kv in args[i + 1].replace(",,", "\\0").split(","):
                if kv.startswith("path="):
                    paths.append(kv[5:].replace("\\0", ","))
        if a == "-pidfile":
            open(args[i + 1], "w").write("%d\\n" % os.getpid())
    socks = []
    for path in paths:
        s = socket.socket(socket.AF_UNIX)
        s.bind(path)
        s.listen(1)
        s.setblocking(False)
        socks.append(s)
    conns = []
    deadline = time.time() + 120
    while time.time() < deadline:
        for s in socks:
            try:
                conns.append(s.accept()[0])
            except BlockingIOError:
                pass
        time.sleep(0.05)
    """

/// A plain HTTP GET on 127.0.0.1:`port`; the whole response, or "" when nothing answered.
public func httpGet(port: UInt16, path: String = "/") -> String {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    guard fd >= 0 else { return "" }
    defer { close(fd) }
    var tv = timeval(tv_sec: 3, tv_usec: 0)
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
    var addr = sockaddr_in()
    addr.sin_family = sa_family_t(AF_INET)
    addr.sin_port = port.bigEndian
    addr.sin_addr.s_addr = UInt32(0x7f000001).bigEndian
    let ok = withUnsafePointer(to: &addr) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
    }
    guard ok == 0 else { return "" }
    let req = "GET \(path) HTTP/1.0\r\nHost: localhost\r\n\r\n"
    _ = req.withCString { send(fd, $0, strlen($0), Int32(MSG_NOSIGNAL)) }
    var out: [UInt8] = []
    var buf = [UInt8](repeating: 0, count: 4096)
    while true {
        let n = buf.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
        if n <= 0 { break }
        out.append(contentsOf: buf[0..<n])
    }
    return String(decoding: out, as: UTF8.self)
}
