import CPlasmaSys
import Foundation
import PlasmaQMP
import Synchronization

/// A scripted QMP peer on a unix socket, for testing clients without QEMU. Each accepted
/// connection is handed to `script` on a thread of its own, with blocking I/O.
public final class FakeQMPServer: @unchecked Sendable {
    /// One accepted connection, driven by the script.
    public final class Connection: @unchecked Sendable {
        let fd: Int32
        private var buffer: [UInt8] = []

        init(fd: Int32) { self.fd = fd }

        /// Sends raw text (no newline added).
        public func sendRaw(_ text: String) {
            var bytes = Array(text.utf8)
            var off = 0
            while off < bytes.count {
                let n = bytes.withUnsafeMutableBytes { Glibc.send(fd, $0.baseAddress! + off, $0.count - off, Int32(MSG_NOSIGNAL)) }
                if n <= 0 { return }
                off += n
            }
        }

        /// Sends one JSON message followed by CRLF, as QEMU does.
        public func send(_ json: String) { sendRaw(json + "\r\n") }

        public func sendGreeting() {
            send(#"{"QMP": {"version": {"qemu": {"micro": 0, "minor": 2, "major": 7}, "package": "fake"}, "capabilities": ["oob"]}}"#)
        }

        /// Reads one line; nil at EOF.
        public func readLine() -> String? {
            while true {
                if let nl = buffer.firstIndex(of: 10) {
                    let line = String(decoding: buffer[..<nl], as: UTF8.self)
                    buffer.removeFirst(nl + 1)
                    return line
                }
                var chunk = [UInt8](repeating: 0, count: 4096)
                let n = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
                if n <= 0 { return nil }
                buffer.append(contentsOf: chunk[0..<n])
            }
        }

        /// Reads one command and returns its name and id (as JSON text).
        public func readCommand() -> (name: String, id: String)? {
            guard let line = readLine(),
                  let v = try? JSONDecoder().decode(JSONValue.self, from: Data(line.utf8)),
                  let name = v["execute"]?.stringValue else { return nil }
            return (name, v["id"]?.description ?? "null")
        }

        /// Reads `qmp_capabilities` and answers it.
        public func negotiate() {
            guard let c = readCommand() else { return }
            send(#"{"return": {}, "id": \#(c.id)}"#)
        }

        /// Greets and negotiates.
        public func handshake() {
            sendGreeting()
            negotiate()
        }

        /// Closes the connection with a reset (RST) instead of an orderly EOF.
        public func reset() {
            var l = linger(l_onoff: 1, l_linger: 0)
            _ = setsockopt(fd, SOL_SOCKET, SO_LINGER, &l, socklen_t(MemoryLayout<linger>.size))
            close()
        }

        public func close() { _ = Glibc.close(fd) }
    }

    public let path: String
    private let listenFD: Int32
    private let script: @Sendable (Connection) -> Void

    /// Listens at a fresh path under a new temporary folder.
    public init(script: @escaping @Sendable (Connection) -> Void) throws {
        let dir = try TempDir(prefix: "fq")
        path = dir.path + "/qmp.sock"
        let fd = path.withCString { plasma_unix_listen($0, 8) }
        guard fd >= 0 else { throw SupportError("cannot listen on \(path): errno \(-fd)") }
        listenFD = fd
        self.script = script
        self.tempDir = dir
        let thread = Thread { [self] in self.acceptLoop() }
        thread.start()
    }

    private let tempDir: TempDir
    private let stopped = Mutex(false)

    private func acceptLoop() {
        while true {
            let c = accept(listenFD, nil, nil)
            if c < 0 {
                if errno == EINTR { continue }
                return
            }
            let conn = Connection(fd: c)
            let t = Thread { [script] in script(conn) }
            t.start()
        }
    }

    /// Stops accepting and removes the socket and its folder.
    public func shutdown() {
        guard stopped.withLock({ s in defer { s = true }; return !s }) else { return }
        _ = Glibc.shutdown(listenFD, Int32(SHUT_RDWR))
        _ = Glibc.close(listenFD)
        tempDir.remove()
    }

    deinit { shutdown() }
}

struct SupportError: Error, CustomStringConvertible {
    var description: String
    init(_ d: String) { description = d }
}

/// A temporary folder with a short path (unix socket paths are limited to 107 bytes).
public final class TempDir: Sendable {
    public let path: String

    public init(prefix: String = "pv") throws {
        var template = Array("/tmp/\(prefix)-XXXXXX".utf8CString)
        guard let p = template.withUnsafeMutableBufferPointer({ mkdtemp($0.baseAddress!) }) else {
            throw SupportError("mkdtemp failed: errno \(errno)")
        }
        path = String(cString: p)
    }

    public func remove() { try? FileManager.default.removeItem(atPath: path) }
}
