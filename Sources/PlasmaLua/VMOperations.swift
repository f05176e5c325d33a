import Foundation
import PlasmaVMM
import Synchronization

/// The native operations behind the `vm` API. Each checks its arguments at once (so a bad
/// call fails before anything starts) and returns the work to run as a task.
struct VMOperations: Sendable {
    let manager: VMManager
    /// VMs the plan made ephemeral (removed when it ends), and every VM it created.
    let ephemeral: NameList
    let created: NameList

    typealias Work = @Sendable () async -> Result<[LuaValue], PlasmaError>

    func make(_ op: String, _ args: [LuaValue]) throws(PlasmaError) -> Work {
        let m = manager
        func arg(_ i: Int) -> LuaValue { i < args.count ? args[i] : .nil }
        func vmName(_ i: Int = 0) throws(PlasmaError) -> VMName {
            guard let s = arg(i).string else { throw PlasmaError(.invalidArgument, "vm.\(op): a vm name is required") }
            return try wrap { try VMName(s) }
        }
        func run(_ body: @escaping @Sendable () async throws -> [LuaValue]) -> Work {
            return {
                do {
                    return .success(try await body())
                } catch let e as PlasmaError {
                    return .failure(e)
                } catch is CancellationError {
                    return .failure(PlasmaError(.timeout, "vm.\(op): cancelled"))
                } catch {
                    return .failure(PlasmaError(.internal, "vm.\(op): \(error)"))
                }
            }
        }
        switch op {
        case "create":
            let spec = try createSpec(args)
            let isEphemeral = arg(9).bool == true
            let ephemeral = self.ephemeral, created = self.created
            return run {
                let name = spec.name.rawValue
                _ = try await m.create(spec)
                created.append(name)
                if isEphemeral { ephemeral.append(name) }
                return [.string(name)]
            }
        case "start":
            let n = try vmName()
            return run { _ = try await m.start(n); return [] }
        case "status":
            let n = try vmName()
            return run {
                let s = try await m.status(n)
                return [.string(s.state.rawValue), s.reason.map(LuaValue.string) ?? .nil]
            }
        case "stop":
            let n = try vmName()
            let seconds = arg(1).number ?? 30
            guard seconds >= 0, seconds.isFinite else {
                throw PlasmaError(.invalidArgument, "vm.stop: 'timeout' must be a number of seconds >= 0")
            }
            return run {
                let outcome = try await m.stop(n, timeout: .milliseconds(Int64(seconds * 1000)))
                return [.string(outcome.step.rawValue)]
            }
        case "kill":
            let n = try vmName()
            return run { try await m.kill(n); return [] }
        case "pause":
            let n = try vmName()
            return run { try await m.pause(n); return [] }
        case "resume":
            let n = try vmName()
            return run { try await m.resume(n); return [] }
        case "delete":
            let n = try vmName()
            let force = arg(1).bool == true
            let ephemeral = self.ephemeral
            return run {
                try await m.delete(n, force: force)
                ephemeral.remove(n.rawValue)
                return []
            }
        case "info":
            let n = try vmName()
            return run {
                let info = try await m.info(n)
                return [Self.infoTable(info)]
            }
        case "list":
            return run { [.array(try await m.list().map { .vm($0.name.rawValue) })] }
        case "exists":
            let raw = arg(0).string ?? ""
            return run {
                do {
                    let n = try VMName(raw)
                    _ = try await m.status(n)
                    return [.bool(true)]
                } catch let e as PlasmaError {
                    return [.bool(false), .string(e.message)]
                }
            }
        case "console_log":
            let n = try vmName()
            return run { [.string(try await m.consoleLog(n))] }
        case "console_tail":
            let n = try vmName()
            let bytes = Int(arg(1).int ?? 600)
            return run { [.string(try await m.consoleLog(n, maxBytes: bytes))] }
        case "console_read":
            let n = try vmName()
            let offset = Int(arg(1).int ?? 0)
            return run {
                let (text, next) = try await m.consoleRead(n, from: offset)
                return [.string(text), .int(Int64(next))]
            }
        case "send_console":
            let n = try vmName()
            let text = arg(1).string ?? ""
            return run { try await m.sendConsole(n, text); return [] }
        case "qmp":
            let n = try vmName()
            let command = arg(1).string ?? ""
            let argsJSON: String? = arg(2).isNil ? nil : arg(2).json
            return run {
                let reply = try await m.monitorCommand(n, command, argumentsJSON: argsJSON)
                let any = try? JSONSerialization.jsonObject(with: Data(reply.utf8), options: [.fragmentsAllowed])
                return [any.map(LuaValue.fromJSON) ?? .nil]
            }
        case "wait_for":
            let n = try vmName()
            guard let wanted = arg(1).string.flatMap(VMState.init(rawValue:)) else {
                throw PlasmaError(.invalidArgument, "vm.wait_for: unknown state")
            }
            let seconds = arg(2).number ?? 60
            return run {
                let clock = ContinuousClock()
                let deadline = clock.now + .milliseconds(Int64(seconds * 1000))
                while true {
                    let s = try await m.status(n)
                    if s.state == wanted { return [.string(s.state.rawValue)] }
                    if clock.now >= deadline {
                        let tail = (try? await m.consoleLog(n, maxBytes: 400)) ?? ""
                        let lines = tail.replacingOccurrences(of: "\r", with: "").split(separator: "\n").suffix(5)
                            .map { "  | " + $0 }.joined(separator: "\n")
                        throw PlasmaError(.timeout, "vm '\(n)': timed out after \(formatSeconds(seconds)) waiting for state \(wanted) (it is \(s.state)\(s.reason.map { ": " + $0 } ?? "")); last console lines:\n\(lines)")
                    }
                    try await Task.sleep(for: .milliseconds(100))
                }
            }
        case "sleep":
            let seconds = arg(0).number ?? 0
            return run {
                try await Task.sleep(for: .milliseconds(Int64(seconds * 1000)))
                return []
            }
        default:
            throw PlasmaError(.internal, "unknown operation \(op)")
        }
    }

    /// vm.create's arguments in the prelude's order: name, kernel, initrd, append, memory,
    /// cpus, disks, net, accel, ephemeral.
    private func createSpec(_ args: [LuaValue]) throws(PlasmaError) -> VMSpec {
        func arg(_ i: Int) -> LuaValue { i < args.count ? args[i] : .nil }
        func bad(_ m: String) -> PlasmaError { PlasmaError(.invalidArgument, "vm.create: \(m)") }
        guard let rawName = arg(0).string else { throw bad("'name' must be a string") }
        let name = try wrap(prefix: "vm.create: ") { try VMName(rawName) }
        func path(_ v: LuaValue) -> String? { v.string.map(absolutePath) }
        var memory = MemorySize(mebibytes: 256)
        if let text = arg(4).string {
            memory = try wrap(prefix: "vm.create: ") { try MemorySize(parsing: text, field: "'memory'") }
        }
        let cpus = Int(arg(5).int ?? 1)
        var disks: [String] = []
        if case .array(let a) = arg(6) { disks = a.compactMap { path($0) } }
        var nets: [NetworkSpec] = []
        if case .array(let a) = arg(7) {
            for n in a {
                guard let text = n.string else { continue }
                nets.append(try wrap(prefix: "vm.create: 'net' ") { try NetworkSpec(parsing: text) })
            }
        }
        var accel = Accelerator.auto
        if let text = arg(8).string { accel = try wrap(prefix: "vm.create: ") { try Accelerator(parsing: text) } }
        return VMSpec(name: name, kernel: path(arg(1)), initrd: path(arg(2)), append: arg(3).string,
                      memory: memory, cpus: cpus, disks: disks, networks: nets, accel: accel)
    }

    static func infoTable(_ info: VMInfo) -> LuaValue {
        var spec: [String: LuaValue] = [
            "memory": .string(info.spec.memory.description),
            "cpus": .int(Int64(info.spec.cpus)),
            "accel": .string(info.spec.accel.rawValue),
            "disks": .array(info.spec.disks.map(LuaValue.string)),
            "net": .array(info.spec.networks.map { .string($0.description) }),
        ]
        if let k = info.spec.kernel { spec["kernel"] = .string(k) }
        if let i = info.spec.initrd { spec["initrd"] = .string(i) }
        if let a = info.spec.append { spec["append"] = .string(a) }
        var t: [String: LuaValue] = [
            "name": .string(info.spec.name.rawValue),
            "id": .string(info.spec.name.rawValue),
            "state": .string(info.status.state.rawValue),
            "spec": .table(spec),
        ]
        if let r = info.status.reason { t["reason"] = .string(r) }
        if let p = info.status.pid { t["pid"] = .int(Int64(p)) }
        if let a = info.status.accel { t["accel"] = .string(a) }
        if let d = info.runtimeDirectory { t["dir"] = .string(d) }
        return .table(t)
    }
}

/// A list of VM names shared between the Lua thread and operation tasks.
final class NameList: Sendable {
    private let names = Mutex<[String]>([])
    func append(_ n: String) { names.withLock { $0.append(n) } }
    func remove(_ n: String) { names.withLock { $0.removeAll { $0 == n } } }
    var all: [String] { names.withLock { $0 } }
}

func wrap<T>(prefix: String = "", _ body: () throws -> T) throws(PlasmaError) -> T {
    do {
        return try body()
    } catch let e as PlasmaError {
        var e = e
        if !prefix.isEmpty, !e.message.hasPrefix(prefix) { e.message = prefix + e.message }
        throw e
    } catch {
        throw PlasmaError(.internal, "\(error)")
    }
}

func absolutePath(_ p: String) -> String {
    if p.hasPrefix("/") { return p }
    return URL(fileURLWithPath: p, relativeTo: URL(fileURLWithPath: FileManager.default.currentDirectoryPath + "/"))
        .standardizedFileURL.path
}
