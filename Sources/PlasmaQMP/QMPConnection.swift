import CPlasmaSys
import Foundation

/// A blocking QMP connection for one thread that asks and waits: no reader thread, no task
/// hops, so a round trip costs what the socket costs. For a caller on a thread of its own (a
/// plan's scheduler thread, a benchmark); async code uses `QMPClient`. Events that arrive
/// while waiting for a reply are kept in `events` (at most the last 256).
public final class QMPConnection {
    private var fd: Int32
    private var buffer: [UInt8] = []
    private var scanned = 0
    private var nextID: UInt64 = 1
    private let decoder = JSONDecoder()
    public let path: String
    /// The greeting QEMU sent.
    public private(set) var greeting: JSONValue = .null
    /// Events seen so far, oldest first.
    public private(set) var events: [QMPEvent] = []

    /// Connects, reads the greeting and negotiates, each within `timeout`.
    /// - Throws: `QMPError.connect`, `.greeting`, `.negotiation`.
    public init(path: String, timeout: Duration = .seconds(5)) throws {
        self.path = path
        fd = path.withCString { plasma_unix_connect($0) }
        if fd < 0 {
            let reason = fd == -ENAMETOOLONG
                ? "the path is \(path.utf8.count) bytes; a unix socket path can have at most \(plasma_unix_path_max())"
                : String(cString: strerror(-fd))
            throw QMPError.connect(path: path, reason: reason)
        }
        do {
            greeting = try readGreeting(deadline: ContinuousClock.now + timeout, timeout: timeout)
            _ = try execute("qmp_capabilities", timeout: timeout)
        } catch let e as QMPError {
            close()
            if case .greeting = e { throw e }
            throw QMPError.negotiation(reason: e.description)
        }
    }

    deinit { close() }

    public var isClosed: Bool { fd < 0 }

    public func close() {
        if fd >= 0 {
            Glibc.close(fd)
            fd = -1
        }
    }

    /// Sends `command` and waits for its reply.
    /// - Throws: `QMPError.execute`, `.interrupted` (the peer went away), `.timeout`, `.closed`.
    public func execute(_ command: String, arguments: JSONValue? = nil, timeout: Duration = .seconds(30)) throws -> JSONValue {
        guard fd >= 0 else { throw QMPError.closed }
        let id = nextID
        nextID += 1
        var bytes = Array(QMPWire.encode(command, arguments: arguments, id: id).utf8)
        var off = 0
        while off < bytes.count {
            let n = bytes.withUnsafeMutableBytes { send(fd, $0.baseAddress! + off, $0.count - off, Int32(MSG_NOSIGNAL)) }
            if n < 0 {
                if errno == EINTR { continue }
                close()
                throw QMPError.interrupted(command: command)
            }
            off += n
        }
        let deadline = ContinuousClock.now + timeout
        while true {
            while let message = nextMessage() {
                switch message {
                case .event(let e):
                    events.append(e)
                    if events.count > 256 { events.removeFirst(events.count - 256) }
                case .reply(let rid, let result) where rid == Int64(id) || rid == nil:
                    return try result.mapError { $0.naming(command) }.get()
                default:
                    continue
                }
            }
            try fill(deadline: deadline, onTimeout: .timeout(command: command, seconds: timeout.seconds),
                     onEnd: .interrupted(command: command))
        }
    }

    /// Forgets the events seen so far.
    public func clearEvents() { events.removeAll() }

    private func readGreeting(deadline: ContinuousClock.Instant, timeout: Duration) throws -> JSONValue {
        while true {
            while let message = nextMessage() {
                if case .greeting(let g) = message { return g }
            }
            try fill(deadline: deadline,
                     onTimeout: .greeting(path: path, reason: "the socket accepted the connection but sent nothing within \(formatSeconds(timeout.seconds)); is another client holding the monitor?"),
                     onEnd: .greeting(path: path, reason: "the connection closed before a greeting"))
        }
    }

    private var pendingLines: [ArraySlice<UInt8>] = []

    private func nextMessage() -> QMPWire.Message? {
        if pendingLines.isEmpty {
            QMPWire.takeLines(&buffer, scanned: &scanned) { pendingLines.append(Array($0)[...]) }
        }
        while !pendingLines.isEmpty {
            let line = pendingLines.removeFirst()
            if let m = QMPWire.decode(line, decoder) { return m }
        }
        return nil
    }

    /// Reads what the socket has, waiting at most until `deadline`.
    private func fill(deadline: ContinuousClock.Instant, onTimeout: QMPError, onEnd: QMPError) throws {
        let remaining = deadline - ContinuousClock.now
        let ms = remaining <= .zero ? 0 : Int32(min(remaining.seconds * 1000, 3_600_000).rounded(.up))
        var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        let r = poll(&p, 1, ms)
        if r < 0 {
            if errno == EINTR { return }
            close()
            throw onEnd
        }
        if r == 0 { throw onTimeout }
        var chunk = [UInt8](repeating: 0, count: 1 << 16)
        let n = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
        if n <= 0 {
            if n < 0, errno == EINTR { return }
            close()
            throw onEnd
        }
        buffer.append(contentsOf: chunk[0..<n])
    }
}
