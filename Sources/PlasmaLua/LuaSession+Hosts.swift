import Foundation
import PlasmaVMM
import Synchronization

/// A VM of one of the session's hosts: host 0 is the session's own (`vm`), the others were
/// made by `vm.connect`. Two VMs of one name on two hosts are two refs.
struct VMRef: Hashable, Sendable {
    var host: Int
    var name: String
}

/// A VM and where it lives, for messages: `host` is nil for a local host, else the address of
/// the remote host (what `--host` takes).
public struct HostedVM: Sendable, Equatable {
    public var name: String
    public var host: String?
    public init(name: String, host: String?) {
        self.name = name
        self.host = host
    }

    /// The `--host ADDRESS` a CLI command needs to reach this VM ("" for a local one).
    public var hostOption: String { host.map { " --host " + $0 } ?? "" }
}

/// The session's hosts by id, shared between the Lua thread, operation tasks and the emergency
/// exit. Host 0 is the session's own and is never closed by the session (its caller owns it).
final class HostTable: Sendable {
    struct Entry: Sendable {
        var host: any VMHost
        /// The address and TLS settings `vm.connect` was given, so connecting again to the same
        /// place reuses the handle; nil for host 0.
        var key: String?
        /// The plan closed it (`h:close()`): calls through it raise.
        var closed = false
        /// Its connection was released: nothing can reach its VMs any more.
        var released = false
    }

    private struct State {
        var entries: [Int: Entry]
        var next = 1
    }

    private let state: Mutex<State>

    init(_ host: any VMHost) {
        state = Mutex(State(entries: [0: Entry(host: host, key: nil)]))
    }

    func entry(_ id: Int) -> Entry? { state.withLock { $0.entries[id] } }

    /// The host for an operation of `place` (e.g. "vm.start"); a closed one raises.
    func host(_ id: Int, for place: String) throws(PlasmaError) -> any VMHost {
        guard let e = entry(id) else { throw PlasmaError(.internal, "\(place): no host \(id) in this session") }
        guard !e.closed else {
            throw PlasmaError(.invalidState, "\(place): host \(e.host.address) is closed (h:close()); connect again with vm.connect")
        }
        return e.host
    }

    /// The open host connected with `key`, if any.
    func open(key: String) -> Int? {
        state.withLock { st in st.entries.first { $0.value.key == key && !$0.value.closed }?.key }
    }

    /// Adds a connected host; when an open one of the same key appeared meanwhile (two branches
    /// connecting at once), returns that one's id instead and `added` false.
    func add(_ host: any VMHost, key: String) -> (id: Int, added: Bool) {
        state.withLock { st in
            if let existing = st.entries.first(where: { $0.value.key == key && !$0.value.closed })?.key {
                return (existing, false)
            }
            let id = st.next
            st.next += 1
            st.entries[id] = Entry(host: host, key: key)
            return (id, true)
        }
    }

    /// Marks a connected host closed for the plan. Returns false when it was closed already
    /// (or is host 0, which the plan cannot close).
    func markClosed(_ id: Int) -> Bool {
        state.withLock { st in
            guard id != 0, let e = st.entries[id], !e.closed else { return false }
            st.entries[id]?.closed = true
            return true
        }
    }

    func markReleased(_ id: Int) {
        state.withLock { $0.entries[id]?.released = true }
    }

    /// The hosts `vm.connect` made (not host 0), by id.
    var connected: [(id: Int, entry: Entry)] {
        state.withLock { st in st.entries.filter { $0.key != 0 }.sorted { $0.key < $1.key }.map { ($0.key, $0.value) } }
    }
}

extension LuaSession {
    /// Where a VM lives, for messages and the CLI.
    func hosted(_ ref: VMRef) -> HostedVM {
        HostedVM(name: ref.name, host: hosts.entry(ref.host).flatMap { $0.host.isLocal ? nil : $0.host.address })
    }

    /// Closes every host `vm.connect` made that is still connected (the session's end).
    func releaseHosts() {
        let open = hosts.connected.filter { !$0.entry.released }
        guard !open.isEmpty else { return }
        let hosts = self.hosts
        let box = ResultBox<Bool>()
        Task {
            for (id, entry) in open {
                await entry.host.close()
                hosts.markReleased(id)
            }
            box.set(true)
        }
        _ = box.wait()
    }
}
