import Foundation
import PlasmaVMM

/// A VM the session should have removed and could not.
public struct CleanupFailure: Sendable, Equatable {
    public var name: String
    public var reason: String
    /// The address of the VM's host when it is not local (nil: this machine).
    public var host: String?

    public init(name: String, reason: String, host: String? = nil) {
        self.name = name
        self.reason = reason
        self.host = host
    }

    /// The line for stderr: the VM, why, and how to remove it by hand.
    public var message: String {
        let on = host.map { " on \($0)" } ?? ""
        let option = host.map { " --host \($0)" } ?? ""
        return "could not remove vm '\(name)'\(on) at the end: \(reason); remove it with: plasmavmc delete \(name) --force\(option)"
    }
}

/// Cleanup at the end of a session: ephemeral VMs and deferred `<close>` deletions are
/// removed, each on its own host, and each one that cannot be is reported (never silently
/// left running).
extension LuaSession {
    /// VMs the session must remove, each once: ephemeral VMs, `<close>` VMs, and VMs whose
    /// create finished after the plan stopped waiting for it (it never got them).
    var doomed: [VMRef] {
        var seen = Set<VMRef>()
        return (ephemeral.all + deferredDeletes.all + unclaimed.all).filter { seen.insert($0).inserted }
    }

    /// Removes ephemeral VMs and those whose `<close>` deletion was deferred. Returns those
    /// that could not be removed, with the reason.
    func removeDoomedVMs() -> [CleanupFailure] {
        let refs = doomed
        guard !refs.isEmpty else { return [] }
        let box = ResultBox<[CleanupFailure]>()
        let removal = Removal(hosts: hosts, lists: [ephemeral, deferredDeletes, unclaimed])
        Task { box.set(await removal.remove(refs)) }
        return box.wait()
    }

    /// The last resort of a second Ctrl-C or SIGTERM, from any thread while the Lua thread
    /// may be stuck: kills the QEMU of every local VM this session would remove (no lock
    /// needed), then tries to delete each, on its host, within `deadline`. Returns those not
    /// removed.
    public func abandon(within deadline: Duration) -> [CleanupFailure] {
        let refs = doomed
        guard !refs.isEmpty else { return [] }
        let hosts = self.hosts
        let box = ResultBox<[CleanupFailure]>()
        let task = Task {
            var left = Set(refs)
            await withTaskGroup(of: VMRef?.self) { group in
                for ref in refs {
                    group.addTask {
                        guard let entry = hosts.entry(ref.host), !entry.released, let vm = try? VMName(ref.name) else { return nil }
                        let host = entry.host
                        // A pid means something only on this machine.
                        if host.isLocal, let pid = (try? await host.status(vm))?.pid, isQEMU(pid, named: ref.name) {
                            kill(pid, SIGKILL)
                        }
                        do {
                            try await host.delete(vm, force: true)
                            return ref
                        } catch let e as PlasmaError where e.code == .notFound {
                            return ref
                        } catch {
                            return nil
                        }
                    }
                }
                for await done in group { if let done { left.remove(done) } }
            }
            box.set(refs.filter { left.contains($0) }.map { ref in
                let where_ = hosts.entry(ref.host).flatMap { $0.host.isLocal ? nil : $0.host.address }
                let reason = where_ == nil
                    ? "its QEMU was killed, but its folder is still there (the process ended before the VM's lock was free)"
                    : "the process ended before its host removed it"
                return CleanupFailure(name: ref.name, reason: reason, host: where_)
            })
        }
        let secs = Double(deadline.components.seconds) + Double(deadline.components.attoseconds) / 1e18
        if let done = box.wait(timeout: secs) { return done }
        task.cancel()
        return refs.map { ref in
            let where_ = hosts.entry(ref.host).flatMap { $0.host.isLocal ? nil : $0.host.address }
            return CleanupFailure(name: ref.name, reason: where_ == nil
                ? "the process ended before it could be removed (its QEMU was sent SIGKILL)"
                : "the process ended before its host could remove it", host: where_)
        }
    }
}

/// Removes doomed VMs on their hosts (the session's end, and `h:close()` for one host's VMs);
/// each VM removed (or gone already) is dropped from the session's lists.
struct Removal: Sendable {
    let hosts: HostTable
    let lists: [RefList]

    /// Returns the VMs that could not be removed, with the reason.
    func remove(_ refs: [VMRef]) async -> [CleanupFailure] {
        var failed: [CleanupFailure] = []
        for ref in refs {
            guard let entry = hosts.entry(ref.host) else { continue }
            let address = entry.host.isLocal ? nil : entry.host.address
            guard !entry.released else {
                failed.append(CleanupFailure(name: ref.name, reason: "its host \(entry.host.address) was closed (h:close()) before it could be removed", host: address))
                continue
            }
            do {
                try await entry.host.delete(try VMName(ref.name), force: true)
                forget(ref)
            } catch let e as PlasmaError where e.code == .notFound {
                forget(ref)  // deleted already (by the plan, or a `<close>` that got to it)
            } catch let e as PlasmaError {
                failed.append(CleanupFailure(name: ref.name, reason: e.description, host: address))
            } catch {
                failed.append(CleanupFailure(name: ref.name, reason: "\(error)", host: address))
            }
        }
        return failed
    }

    private func forget(_ ref: VMRef) {
        for list in lists { list.remove(ref) }
    }
}

/// One value handed from a task to a waiting thread.
final class ResultBox<T: Sendable>: @unchecked Sendable {
    private let condition = NSCondition()
    private var value: T?

    func set(_ v: T) {
        condition.lock()
        value = v
        condition.signal()
        condition.unlock()
    }

    func wait() -> T {
        condition.lock()
        defer { condition.unlock() }
        while value == nil { condition.wait() }
        return value!
    }

    func wait(timeout seconds: Double) -> T? {
        let deadline = Date().addingTimeInterval(seconds)
        condition.lock()
        defer { condition.unlock() }
        while value == nil { if !condition.wait(until: deadline) { break } }
        return value
    }
}

/// Whether `pid` is a QEMU process of VM `name` (so a stale or fake pid is never signalled).
func isQEMU(_ pid: Int32, named name: String) -> Bool {
    guard pid > 1, let data = FileManager.default.contents(atPath: "/proc/\(pid)/cmdline") else { return false }
    let cmd = String(decoding: data.map { $0 == 0 ? 32 : $0 }, as: UTF8.self)
    return cmd.contains("qemu") && cmd.contains(name)
}
