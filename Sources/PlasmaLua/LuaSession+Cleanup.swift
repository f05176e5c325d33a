import Foundation
import PlasmaVMM

/// A VM the session should have removed and could not.
public struct CleanupFailure: Sendable, Equatable {
    public var name: String
    public var reason: String

    /// The line for stderr: the VM, why, and how to remove it by hand.
    public var message: String {
        "could not remove vm '\(name)' at the end: \(reason); remove it with: plasmavmc delete \(name) --force"
    }
}

/// Cleanup at the end of a session: ephemeral VMs and deferred `<close>` deletions are
/// removed, and each one that cannot be is reported (never silently left running).
extension LuaSession {
    /// Names the session must remove, each once: ephemeral VMs, `<close>` VMs, and VMs whose
    /// create finished after the plan stopped waiting for it (it never got them).
    var doomed: [String] {
        var seen = Set<String>()
        return (ephemeral.all + deferredDeletes.all + unclaimed.all).filter { seen.insert($0).inserted }
    }

    /// Removes ephemeral VMs and those whose `<close>` deletion was deferred. Returns those
    /// that could not be removed, with the reason.
    func removeDoomedVMs() -> [CleanupFailure] {
        let names = doomed
        guard !names.isEmpty else { return [] }
        let manager = self.manager
        let box = ResultBox<[CleanupFailure]>()
        Task {
            var failed: [CleanupFailure] = []
            for name in names {
                do {
                    try await manager.delete(try VMName(name), force: true)
                } catch let e as PlasmaError where e.code == .notFound {
                    continue  // deleted already (by the plan, or a `<close>` that got to it)
                } catch let e as PlasmaError {
                    failed.append(CleanupFailure(name: name, reason: e.description))
                } catch {
                    failed.append(CleanupFailure(name: name, reason: "\(error)"))
                }
            }
            box.set(failed)
        }
        return box.wait()
    }

    /// The last resort of a second Ctrl-C or SIGTERM, from any thread while the Lua thread
    /// may be stuck: kills the QEMU of every VM this session would remove (no lock needed),
    /// then tries to delete each within `deadline`. Returns those not removed.
    public func abandon(within deadline: Duration) -> [CleanupFailure] {
        let names = doomed
        guard !names.isEmpty else { return [] }
        let manager = self.manager
        let box = ResultBox<[CleanupFailure]>()
        let task = Task {
            var left = Set(names)
            await withTaskGroup(of: String?.self) { group in
                for name in names {
                    group.addTask {
                        guard let vm = try? VMName(name) else { return nil }
                        if let pid = (try? await manager.status(vm))?.pid, isQEMU(pid, named: name) { kill(pid, SIGKILL) }
                        do {
                            try await manager.delete(vm, force: true)
                            return name
                        } catch let e as PlasmaError where e.code == .notFound {
                            return name
                        } catch {
                            return nil
                        }
                    }
                }
                for await done in group { if let done { left.remove(done) } }
            }
            box.set(names.filter { left.contains($0) }.map {
                CleanupFailure(name: $0, reason: "its QEMU was killed, but its folder is still there (the process ended before the VM's lock was free)")
            })
        }
        let secs = Double(deadline.components.seconds) + Double(deadline.components.attoseconds) / 1e18
        if let done = box.wait(timeout: secs) { return done }
        task.cancel()
        return names.map {
            CleanupFailure(name: $0, reason: "the process ended before it could be removed (its QEMU was sent SIGKILL)")
        }
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
