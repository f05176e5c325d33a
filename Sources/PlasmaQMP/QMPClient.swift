import CPlasmaSys
import Foundation
import Synchronization

/// An asynchronous QMP event, e.g. `SHUTDOWN` with `{"guest": true, "reason": "guest-shutdown"}`.
public struct QMPEvent: Sendable, Hashable {
    public var name: String
    public var data: JSONValue
    /// QEMU's timestamp, seconds since the epoch.
    public var timestamp: Double

    public init(name: String, data: JSONValue = .object([:]), timestamp: Double = 0) {
        self.name = name
        self.data = data
        self.timestamp = timestamp
    }
}

/// A QMP client on a unix socket.
///
/// `connect` reads the greeting and negotiates capabilities. Commands get increasing ids and
/// may run concurrently; replies are matched by id. Events go to every stream made by
/// `events()`, in arrival order, also when they arrive before the reply of the command that
/// caused them. When the socket ends (EOF or reset) every pending command fails with
/// `QMPError.interrupted`. A dedicated thread reads the socket, so no blocking call ever
/// occupies Swift's cooperative pool.
public final class QMPClient: Sendable {
    private let core: Core

    /// The greeting QEMU sent (`{"QMP": {"version": …, "capabilities": […]}}`).
    public let greeting: JSONValue
    /// The socket path this client is connected to.
    public var path: String { core.path }

    private init(core: Core, greeting: JSONValue) {
        self.core = core
        self.greeting = greeting
    }

    deinit { core.shutdown() }

    /// Connects to the monitor at `path`, waits for the greeting and negotiates capabilities.
    /// - Parameter timeout: bound for the greeting and for the negotiation each.
    /// - Throws: `QMPError.connect`, `.greeting`, `.negotiation`.
    public static func connect(path: String, timeout: Duration = .seconds(5)) async throws -> QMPClient {
        let fd = path.withCString { plasma_unix_connect($0) }
        if fd < 0 {
            let reason = fd == -ENAMETOOLONG
                ? "the path is \(path.utf8.count) bytes; a unix socket path can have at most \(plasma_unix_path_max())"
                : String(cString: strerror(-fd))
            throw QMPError.connect(path: path, reason: reason)
        }
        let core = Core(fd: fd, path: path)
        core.startReader()
        let greeting: JSONValue
        do {
            greeting = try await core.awaitGreeting(timeout: timeout)
        } catch {
            core.shutdown()
            throw error
        }
        let client = QMPClient(core: core, greeting: greeting)
        do {
            _ = try await client.execute("qmp_capabilities", timeout: timeout)
        } catch let error as QMPError {
            client.close()
            throw QMPError.negotiation(reason: error.description)
        }
        return client
    }

    /// Sends `command` and returns its `return` value.
    /// - Throws: `QMPError.execute` for an error reply, `.interrupted` if the connection ends
    ///   first, `.timeout` after `timeout`, `.closed` after `close()`, `CancellationError`.
    public func execute(_ command: String, arguments: JSONValue? = nil,
                        timeout: Duration = .seconds(30)) async throws -> JSONValue {
        try await core.execute(command, arguments: arguments, timeout: timeout)
    }

    /// A new stream of every event from now on. It ends when the connection ends.
    public func events() -> AsyncStream<QMPEvent> { core.subscribe() }

    /// Whether the connection has ended.
    public var isClosed: Bool { core.isClosed }

    /// Closes the connection; pending commands fail with `.interrupted`.
    public func close() { core.shutdown() }

    /// Waits until the connection ends (e.g. QEMU exits after `quit`).
    public func waitClosed() async { await core.waitClosed() }
}

private struct Pending {
    var command: String
    var continuation: CheckedContinuation<JSONValue, any Error>
    var deadline: ContinuousClock.Instant
    var timeout: Duration
}

private struct State {
    var nextID: UInt64 = 1
    var pending: [UInt64: Pending] = [:]
    var nextListener: UInt64 = 0
    var listeners: [UInt64: AsyncStream<QMPEvent>.Continuation] = [:]
    var greeting: JSONValue?
    var greetingWaiter: CheckedContinuation<JSONValue, any Error>?
    /// When the reader fails a greeting still awaited.
    var greetingDeadline: ContinuousClock.Instant?
    var greetingTimeout: Duration = .zero
    var greetingFailure: QMPError?
    var closeWaiters: [CheckedContinuation<Void, Never>] = []
    /// Set once; after it the fd is closed or about to be.
    var closed = false
    var shutdownRequested = false
    var fd: Int32
    /// Wakes the reader thread; closed with `fd` when the reader ends, so a closed connection
    /// holds no descriptor. Signalled only under the lock, never after it is closed.
    var wakeFD: Int32
    /// When the reader thread will next wake by itself to check deadlines.
    var readerWakeAt: ContinuousClock.Instant?
}

/// Everything the reader thread and callers share. The public client holds the core; the
/// reader thread holds it too, so dropping the client shuts the socket down.
///
/// Command and greeting timeouts are kept by the reader thread itself: it polls the socket
/// with the nearest deadline (at most a second ahead) as its timeout, so a wait costs no timer
/// of its own (and nothing outlives the connection); a deadline nearer than the reader's next
/// wake signals an eventfd. The socket and the eventfd are closed when the reader ends, which
/// `close()` makes happen at once.
private final class Core: Sendable {
    let path: String
    let state: Mutex<State>

    init(fd: Int32, path: String) {
        self.path = path
        self.state = Mutex(State(fd: fd, wakeFD: plasma_eventfd()))
    }

    var isClosed: Bool { state.withLock { $0.closed } }

    func startReader() {
        let (fd, wakeFD) = state.withLock { ($0.fd, $0.wakeFD) }
        let thread = Thread { [self] in self.readLoop(fd: fd, wakeFD: wakeFD) }
        thread.name = "qmp-reader"
        thread.start()
    }

    /// Wakes the reader (which then fails everything and closes the fd).
    func shutdown() {
        state.withLock { st in
            guard !st.closed, !st.shutdownRequested else { return }
            st.shutdownRequested = true
            _ = Glibc.shutdown(st.fd, Int32(SHUT_RDWR))
        }
    }

    func waitClosed() async {
        await withCheckedContinuation { (c: CheckedContinuation<Void, Never>) in
            let done = state.withLock { st -> Bool in
                if st.closed { return true }
                st.closeWaiters.append(c)
                return false
            }
            if done { c.resume() }
        }
    }

    /// - Throws: `QMPError.greeting` after `timeout` or when the connection ends first,
    ///   `CancellationError` at once when the calling task is cancelled.
    func awaitGreeting(timeout: Duration) async throws -> JSONValue {
        let deadline = ContinuousClock.now + timeout
        return try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { (c: CheckedContinuation<JSONValue, any Error>) in
                let ready = state.withLock { st -> Result<JSONValue, any Error>? in
                    if let g = st.greeting { return .success(g) }
                    if let f = st.greetingFailure { return .failure(f) }
                    if Task.isCancelled { return .failure(CancellationError()) }
                    st.greetingWaiter = c
                    st.greetingDeadline = deadline
                    st.greetingTimeout = timeout
                    if st.readerWakeAt.map({ deadline < $0 }) ?? true, st.wakeFD >= 0 {
                        plasma_eventfd_signal(st.wakeFD)
                    }
                    return nil
                }
                if let ready { c.resume(with: ready) }
            }
        } onCancel: {
            let waiter = state.withLock { st -> CheckedContinuation<JSONValue, any Error>? in
                defer { st.greetingWaiter = nil }
                return st.greetingWaiter
            }
            waiter?.resume(throwing: CancellationError())
        }
    }

    func subscribe() -> AsyncStream<QMPEvent> {
        let (stream, continuation) = AsyncStream.makeStream(of: QMPEvent.self)
        let key: UInt64? = state.withLock { st in
            if st.closed { return nil }
            st.nextListener += 1
            st.listeners[st.nextListener] = continuation
            return st.nextListener
        }
        guard let key else {
            continuation.finish()
            return stream
        }
        continuation.onTermination = { [weak self] _ in
            _ = self?.state.withLock { $0.listeners.removeValue(forKey: key) }
        }
        return stream
    }

    func execute(_ command: String, arguments: JSONValue?, timeout: Duration) async throws -> JSONValue {
        let id = state.withLock { st -> UInt64 in
            defer { st.nextID += 1 }
            return st.nextID
        }
        let deadline = ContinuousClock.now + timeout
        let message = QMPWire.encode(command, arguments: arguments, id: id)
        return try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { (c: CheckedContinuation<JSONValue, any Error>) in
                let failure = state.withLock { st -> (any Error)? in
                    if st.closed || st.shutdownRequested { return QMPError.closed }
                    if Task.isCancelled { return CancellationError() }
                    st.pending[id] = Pending(command: command, continuation: c, deadline: deadline, timeout: timeout)
                    if !Core.sendAll(fd: st.fd, message) {
                        st.pending[id] = nil
                        return QMPError.interrupted(command: command)
                    }
                    if st.readerWakeAt.map({ deadline < $0 }) ?? true, st.wakeFD >= 0 {
                        plasma_eventfd_signal(st.wakeFD)
                    }
                    return nil
                }
                if let failure { c.resume(throwing: failure) }
            }
        } onCancel: {
            self.fail(id: id, with: CancellationError())
        }
    }

    private func fail(id: UInt64, with error: any Error) {
        let p = state.withLock { $0.pending.removeValue(forKey: id) }
        p?.continuation.resume(throwing: error)
    }

    private static func sendAll(fd: Int32, _ text: String) -> Bool {
        var bytes = Array(text.utf8)
        var off = 0
        while off < bytes.count {
            let n = bytes.withUnsafeMutableBytes { buf in
                send(fd, buf.baseAddress! + off, buf.count - off, Int32(MSG_NOSIGNAL))
            }
            if n < 0 {
                if errno == EINTR { continue }
                return false
            }
            off += n
        }
        return true
    }

    // MARK: reader thread

    private func readLoop(fd: Int32, wakeFD: Int32) {
        let decoder = JSONDecoder()
        var buffer: [UInt8] = []
        buffer.reserveCapacity(1 << 16)
        var chunk = [UInt8](repeating: 0, count: 1 << 16)
        var scanned = 0
        var endReason = "end of stream"
        while true {
            let timeoutMS = state.withLock { st -> Int32 in
                let now = ContinuousClock.now
                var wake = min(st.pending.values.map(\.deadline).min() ?? now + .seconds(1), now + .seconds(1))
                if st.greetingWaiter != nil, let g = st.greetingDeadline { wake = min(wake, g) }
                st.readerWakeAt = wake
                let ms = (wake - now).seconds * 1000
                return ms <= 0 ? 0 : Int32(ms.rounded(.up))
            }
            let ready = plasma_poll2(fd, wakeFD, timeoutMS)
            if ready < 0 && ready != -EINTR {
                endReason = String(cString: strerror(-ready))
                break
            }
            expireDeadlines()
            if ready <= 0 || ready & 1 == 0 { continue }
            let n = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if n < 0 {
                if errno == EINTR { continue }
                endReason = String(cString: strerror(errno))
                break
            }
            if n == 0 { break }
            buffer.append(contentsOf: chunk[0..<n])
            QMPWire.takeLines(&buffer, scanned: &scanned) { handle(line: $0, decoder: decoder) }
        }
        finish(reason: endReason)
    }

    private func expireDeadlines() {
        let now = ContinuousClock.now
        let (expired, greetingWaiter, greetingTimeout) = state.withLock { st in
            let ids = st.pending.filter { $0.value.deadline <= now }.map(\.key)
            var waiter: CheckedContinuation<JSONValue, any Error>?
            if let g = st.greetingDeadline, g <= now {
                waiter = st.greetingWaiter
                st.greetingWaiter = nil
                st.greetingDeadline = nil
            }
            return (ids.compactMap { st.pending.removeValue(forKey: $0) }, waiter, st.greetingTimeout)
        }
        for p in expired {
            p.continuation.resume(throwing: QMPError.timeout(command: p.command, seconds: p.timeout.seconds))
        }
        greetingWaiter?.resume(throwing: QMPError.greeting(
            path: path, reason: "the socket accepted the connection but sent nothing within \(formatSeconds(greetingTimeout.seconds)); is another client holding the monitor?"))
    }

    private func handle(line: ArraySlice<UInt8>, decoder: JSONDecoder) {
        // QMP never sends non-JSON; a garbled line is dropped rather than fatal.
        switch QMPWire.decode(line, decoder) {
        case nil:
            return
        case .event(let e)?:
            let listeners = state.withLock { Array($0.listeners.values) }
            for l in listeners { l.yield(e) }
        case .greeting(let g)?:
            let waiter = state.withLock { st -> CheckedContinuation<JSONValue, any Error>? in
                if st.greeting == nil { st.greeting = g }
                defer { st.greetingWaiter = nil }
                return st.greetingWaiter
            }
            waiter?.resume(returning: g)
        case .reply(let id, let result)?:
            let pending = state.withLock { st -> Pending? in
                if let id, id >= 0 { return st.pending.removeValue(forKey: UInt64(id)) }
                // QMP answers in-band commands in order, so an error without an id (QEMU could
                // not parse a request) belongs to the oldest command still waiting.
                guard case .failure = result, let oldest = st.pending.keys.min() else { return nil }
                return st.pending.removeValue(forKey: oldest)
            }
            guard let pending else { return }
            pending.continuation.resume(with: result.mapError { $0.naming(pending.command) })
        }
    }

    private func finish(reason: String) {
        let (pending, listeners, greetingWaiter, closeWaiters) = state.withLock { st in
            st.closed = true
            Glibc.close(st.fd)
            st.fd = -1
            if st.wakeFD >= 0 { Glibc.close(st.wakeFD) }
            st.wakeFD = -1
            let out = (Array(st.pending.values), Array(st.listeners.values), st.greetingWaiter, st.closeWaiters)
            st.pending = [:]
            st.listeners = [:]
            st.greetingWaiter = nil
            st.closeWaiters = []
            if st.greeting == nil {
                st.greetingFailure = .greeting(path: path, reason: "the connection closed (\(reason)) before a greeting")
            }
            return out
        }
        for p in pending { p.continuation.resume(throwing: QMPError.interrupted(command: p.command)) }
        for l in listeners { l.finish() }
        if let greetingWaiter {
            greetingWaiter.resume(throwing: QMPError.greeting(path: path, reason: "the connection closed (\(reason)) before a greeting"))
        }
        for w in closeWaiters { w.resume() }
    }
}
