import Foundation
import PlasmaHypervisor
import Synchronization

/// An in-memory hypervisor for testing the layers above the backend. It follows the same
/// rules as a real one (state derived from a fake process, per-VM lock) and records every
/// call, so tests can check what reached the backend.
public final class FakeHypervisor: Hypervisor, Sendable {
    public struct VM: Sendable {
        public var spec: VMSpec
        public var status: VMStatus
        public var console: String = ""
    }

    struct State {
        var vms: [VMName: VM] = [:]
        var calls: [String] = []
        var locked: Set<VMName> = []
        var lockWaiters: [VMName: [CheckedContinuation<Void, Never>]] = [:]
        var nextPid: Int32 = 1000
        var typed: [VMName: String] = [:]
        var events: [VMName: [VMEvent]] = [:]
        var cancelled: [String] = []
    }

    fileprivate let state = Mutex(State())
    /// How long each backend operation takes, to widen race windows in tests.
    public let operationDelay: Duration

    public init(operationDelay: Duration = .zero) {
        self.operationDelay = operationDelay
    }

    public var name: String { "fake" }

    /// Every backend call so far, as "op name".
    public var calls: [String] { state.withLock { $0.calls } }

    /// Makes the VM's fake process die as if killed from outside.
    public func crash(_ name: VMName, reason: String = "QEMU died without shutting down (killed or aborted)") {
        state.withLock { $0.vms[name]?.status = VMStatus(state: .crashed, reason: reason) }
    }

    public func appendConsole(_ name: VMName, _ text: String) {
        state.withLock { $0.vms[name]?.console += text }
    }

    private func record(_ op: String, _ name: VMName) async throws {
        state.withLock { $0.calls.append("\(op) \(name)") }
        note(op, name)
        if operationDelay > .zero {
            do {
                try await Task.sleep(for: operationDelay)
            } catch {
                state.withLock { $0.cancelled.append("\(op) \(name)") }
                throw error
            }
        }
    }

    /// Operations whose delay was cut short by cancellation, as "op name".
    public var cancelledOperations: [String] { state.withLock { $0.cancelled } }

    private func vm(_ name: VMName) throws -> VM {
        guard let vm = state.withLock({ $0.vms[name] }) else {
            throw PlasmaError(.notFound, "vm '\(name)' does not exist; see plasmavmc ls")
        }
        return vm
    }

    private func set(_ name: VMName, _ status: VMStatus) {
        state.withLock { $0.vms[name]?.status = status }
    }

    /// Adds an event-log entry, as the real backend's supervisor would.
    private func note(_ kind: String, _ name: VMName) {
        state.withLock { st in
            let nanos = Int64(Date().timeIntervalSince1970 * 1e9)
            let vmState = st.vms[name]?.status.state
            let json = #"{"kind":"\#(kind)","state":"\#(vmState?.rawValue ?? "")","unix_nanos":\#(nanos)}"#
            st.events[name, default: []].append(VMEvent(unixNanos: nanos, kind: kind, state: vmState, reasonCode: nil, json: json))
        }
    }

    public func create(_ spec: VMSpec) async throws -> VMStatus {
        let status = try state.withLock { st -> VMStatus in
            guard st.vms[spec.name] == nil else {
                throw PlasmaError(.alreadyExists, "vm '\(spec.name)' already exists; delete it first or pick another name")
            }
            st.nextPid += 1
            let s = VMStatus(state: .created, pid: st.nextPid, accel: "tcg")
            st.vms[spec.name] = VM(spec: spec, status: s)
            return s
        }
        try await record("create", spec.name)
        return status
    }

    public func start(_ name: VMName) async throws -> VMStatus {
        var s = try vm(name).status
        try await record("start", name)
        s.state = .running
        s.reason = nil
        if s.pid == nil { s.pid = state.withLock { st in st.nextPid += 1; return st.nextPid } }
        set(name, s)
        return s
    }

    public func status(_ name: VMName) async throws -> VMStatus { try vm(name).status }

    public func info(_ name: VMName) async throws -> VMInfo {
        let v = try vm(name)
        return VMInfo(spec: v.spec, status: v.status, runtimeDirectory: nil)
    }

    public func stop(_ name: VMName, timeout: Duration) async throws -> StopOutcome {
        let s = try vm(name).status
        try await record("stop", name)
        set(name, VMStatus(state: .stopped, reason: "stopped by plasmavmc stop (step: powerdown)", reasonCode: .stop, accel: s.accel))
        return StopOutcome(step: s.state == .running ? .powerdown : .quit, elapsed: operationDelay)
    }

    public func kill(_ name: VMName) async throws {
        let s = try vm(name).status
        try await record("kill", name)
        set(name, VMStatus(state: .stopped, reason: "killed by plasmavmc kill (SIGKILL)", reasonCode: .killed, accel: s.accel))
    }

    public func pause(_ name: VMName) async throws {
        var s = try vm(name).status
        try await record("pause", name)
        s.state = .paused
        s.reason = "paused by request"
        set(name, s)
    }

    public func resume(_ name: VMName) async throws {
        var s = try vm(name).status
        try await record("resume", name)
        s.state = .running
        s.reason = nil
        set(name, s)
    }

    public func delete(_ name: VMName) async throws {
        let s = try vm(name).status
        guard s.pid == nil else {
            throw PlasmaError(.invalidState, "cannot delete vm '\(name)': its process is still running")
        }
        try await record("delete", name)
        _ = state.withLock { $0.vms.removeValue(forKey: name) }
    }

    public func list() async throws -> [VMName] {
        state.withLock { $0.vms.keys.sorted() }
    }

    public func consoleLog(_ name: VMName, maxBytes: Int?) async throws -> String {
        let text = try vm(name).console
        guard let maxBytes, text.utf8.count > maxBytes else { return text }
        return String(decoding: Array(text.utf8).suffix(maxBytes), as: UTF8.self)
    }

    public func consoleRead(_ name: VMName, from offset: Int) async throws -> (text: String, next: Int) {
        let bytes = Array(try vm(name).console.utf8)
        let from = min(offset, bytes.count)
        return (String(decoding: bytes[from...], as: UTF8.self), bytes.count)
    }

    /// What was typed on each VM's console.
    public func typed(_ name: VMName) -> String { state.withLock { $0.typed[name] ?? "" } }

    public func sendConsole(_ name: VMName, _ text: String) async throws {
        _ = try vm(name)
        state.withLock { $0.typed[name, default: ""] += text }
    }

    /// A socket that yields the console so far, then end of file.
    public func consoleConnection(_ name: VMName) async throws -> Int32 {
        let text = try vm(name).console
        var fds: [Int32] = [-1, -1]
        guard socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0, &fds) == 0 else {
            throw PlasmaError(.internal, "socketpair failed")
        }
        _ = text.withCString { send(fds[1], $0, strlen($0), Int32(MSG_NOSIGNAL)) }
        close(fds[1])
        return fds[0]
    }

    public func events(_ name: VMName, from offset: Int) async throws -> (events: [VMEvent], next: Int) {
        _ = try vm(name)
        let all = state.withLock { $0.events[name] ?? [] }
        return (Array(all.dropFirst(min(offset, all.count))), all.count)
    }

    /// The log held open: it reads the VM's events even after the VM is deleted (the fake keeps them).
    public func openEventLog(_ name: VMName) async throws -> (any VMEventLogHandle)? {
        _ = try vm(name)
        return EventLogHandle(fake: self, name: name)
    }

    final class EventLogHandle: VMEventLogHandle {
        let fake: FakeHypervisor
        let name: VMName
        init(fake: FakeHypervisor, name: VMName) {
            self.fake = fake
            self.name = name
        }
        func read(from offset: Int) -> (events: [VMEvent], next: Int) {
            let all = fake.state.withLock { $0.events[name] ?? [] }
            return (Array(all.dropFirst(min(offset, all.count))), all.count)
        }
        var isCurrent: Bool { true }
    }

    public func monitorCommand(_ name: VMName, _ command: String, argumentsJSON: String?) async throws -> String {
        _ = try vm(name)
        try await record("qmp \(command)", name)
        return command == "query-status" ? #"{"running":true,"status":"running"}"# : "{}"
    }

    public func withExclusiveAccess<T: Sendable>(to name: VMName, timeout: Duration,
                                                 _ body: @Sendable () async throws -> T) async throws -> T {
        _ = try vm(name)
        await withCheckedContinuation { (c: CheckedContinuation<Void, Never>) in
            let acquired = state.withLock { st -> Bool in
                if st.locked.insert(name).inserted { return true }
                st.lockWaiters[name, default: []].append(c)
                return false
            }
            if acquired { c.resume() }
        }
        defer {
            let next = state.withLock { st -> CheckedContinuation<Void, Never>? in
                if var w = st.lockWaiters[name], !w.isEmpty {
                    let n = w.removeFirst()
                    st.lockWaiters[name] = w
                    return n
                }
                st.locked.remove(name)
                return nil
            }
            next?.resume()
        }
        _ = try vm(name)
        return try await body()
    }
}
