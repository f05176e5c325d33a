import Foundation
import PlasmaVMM

/// The one definition of the `vm` API. Each operation is one entry: its Lua name, how it is
/// called, its arguments and options with their kinds (the prelude checks calls against them;
/// the signature `help()` shows is derived from them), a summary and, for operations backed by
/// Swift, how its checked arguments become the work to run as a task. The prelude (stdlib/plasma/vm.lua) builds the Lua functions on top: plain
/// methods straight from this table, composed ones (exec, wait_for_console…) by hand.
/// Adding a method is one entry here, plus its stub in stdlib/meta/plasmavmc.lua and its row
/// in the README (a test checks that those three agree).
struct VMAPI: Sendable {
    /// The session's hosts, and the one this call goes to (0: the session's own, `vm`; others
    /// from `vm.connect`).
    let hosts: HostTable
    let hostID: Int
    /// Makes host handles for `vm.connect`; nil: this session reaches no other host.
    let connector: HostConnector?
    /// VMs the plan made ephemeral (removed when it ends), and every VM it created.
    let ephemeral: RefList
    let created: RefList
    /// VMs created whose object the plan has not received yet (an interrupt can come between):
    /// removed at the end unless the plan got them.
    let unclaimed: RefList
    /// VMs whose `<close>` deletion is left to cleanup.
    let deferredDeletes: RefList

    typealias Work = @Sendable () async -> Result<[LuaValue], PlasmaError>

    enum Style: String, Sendable {
        /// `v:name(…)`, also `vm.name(v, …)` and `vm.name("vm name", …)`.
        case method
        /// `vm.name(…)`.
        case function
        /// A global function (`sleep`).
        case global
        /// Used by the prelude only, not part of the API.
        case `internal`
    }

    /// How the prelude exposes a method backed by a native operation.
    enum Binding: Sendable {
        /// The prelude writes the Lua function by hand (options, composition).
        case prelude
        /// `v:name()`: the target only, results passed through.
        case plain
        /// `v:name()`: the target only, returns `v` (for chaining).
        case plainReturningSelf
    }

    /// One key of an operation's options table (`v:stop{timeout=30}`): the prelude checks
    /// options against these (unknown keys, types, the number check) and fills in defaults.
    struct Option: Sendable {
        enum Kind: String, Sendable {
            /// Finite seconds >= 0 (NumberCheck).
            case seconds
            /// Seconds >= 0, or math.huge for no limit.
            case secondsOrNoLimit = "seconds_or_no_limit"
            /// A whole number >= 0 (a byte offset).
            case offset
            case boolean
            /// A list of Lua patterns, each checked before use.
            case patterns
            /// A string (a file path, a name).
            case string
        }
        var name: String
        var kind: Kind
        var fallback: LuaValue = .nil
    }

    /// One positional argument (after the VM for methods). The prelude checks arguments
    /// against these before anything runs.
    struct Parameter: Sendable {
        enum Kind: String, Sendable {
            case string
            /// A Lua pattern, checked before use.
            case pattern
            /// A VM state name.
            case state
            /// A table or nil.
            case table
            /// Seconds (the one number check).
            case seconds
            /// Any number of functions (the rest of the arguments).
            case functions
        }
        var name: String
        var kind: Kind

        init(_ name: String, _ kind: Kind) {
            self.name = name
            self.kind = kind
        }
    }

    struct Operation: Sendable {
        var name: String
        var style: Style
        var binding: Binding = .prelude
        /// Positional arguments (after the VM for methods).
        var parameters: [Parameter] = []
        /// Its options table, if it takes one (the last argument).
        var options: [Option] = []
        /// How a user calls it when that is not derived from the parameters (vm.create's spec).
        var signatureOverride: String?
        var summary: String
        /// Builds the work from the arguments (after the target's name, which is argument 0
        /// for methods); nil for operations written in Lua alone.
        var make: (@Sendable (Call) throws(PlasmaError) -> Work)?
    }

    /// Every operation, in the order help lists them.
    static let operations: [Operation] = [
        Operation(name: "create", style: .function,
                  signatureOverride: #"vm.create{name=, kernel=, initrd=, append=, memory="256M", cpus=1, disks={}, net={}, accel="auto", ephemeral=false}"#,
                  summary: "a VM object (v.name, v.id); state created") { c throws(PlasmaError) in
            let spec = try createSpec(c.args)
            let isEphemeral = c.arg(9).bool == true
            let ephemeral = c.api.ephemeral, created = c.api.created, unclaimed = c.api.unclaimed, m = try c.host()
            // Marked now, on the Lua thread, before the task can run: cleanup then knows the
            // VM even when the plan is interrupted before or while the create runs; the plan
            // claims it when Lua gets its object.
            let ref = c.ref(spec.name)
            let listed = ephemeral.contains(ref)
            if isEphemeral && !listed { ephemeral.append(ref) }
            unclaimed.append(ref)
            let unmark: @Sendable () -> Void = {
                unclaimed.remove(ref)
                if isEphemeral && !listed { ephemeral.remove(ref) }
            }
            return c.run {
                guard !Task.isCancelled else {
                    unmark()  // cancelled before it began: nothing was made
                    throw CancellationError()
                }
                do {
                    _ = try await m.create(spec)
                } catch {
                    // A refused create made nothing (and a VM of that name may be someone
                    // else's); a cancelled one may have made part of a VM: cleanup removes it.
                    let cancelled = Task.isCancelled && (error as? PlasmaError)?.code != .alreadyExists
                    if !cancelled { unmark() }
                    throw error
                }
                created.append(ref)
                return [.string(ref.name)]
            }
        },
        Operation(name: "start", style: .method, binding: .plainReturningSelf,
                  summary: "boot (created, stopped or crashed -> running); returns v") { c throws(PlasmaError) in
            let n = try c.vm(), m = try c.host()
            return c.run { _ = try await m.start(n); return [] }
        },
        Operation(name: "status", style: .method,
                  summary: "state, reason code and message") { c throws(PlasmaError) in
            let n = try c.vm(), m = try c.host()
            return c.run { statusValues(try await m.status(n)) }
        },
        Operation(name: "events", style: .method, binding: .plain,
                  summary: "the VM's event log: a list of {time, unix_nanos, kind, state, …}") { c throws(PlasmaError) in
            let n = try c.vm(), m = try c.host()
            return c.run {
                var events: [LuaValue] = []
                var offset = 0
                while true {
                    let page = try await m.events(n, from: offset)
                    for e in page.events { events.append(try LuaValue(json: e.json)) }
                    if page.events.isEmpty || page.next == offset { break }
                    offset = page.next
                }
                return [.array(events)]
            }
        },
        Operation(name: "stop", style: .method, options: [Option(name: "timeout", kind: .seconds, fallback: .int(30))],
                  summary: "powerdown, then quit, SIGTERM, SIGKILL; returns the step that stopped it") { c throws(PlasmaError) in
            let n = try c.vm(), m = try c.host()
            let seconds = try NumberCheck.seconds(c.arg(1), "vm.stop", "timeout", fallback: 30)!
            return c.run {
                let outcome = try await m.stop(n, timeout: NumberCheck.duration(seconds))
                return [.string(outcome.step.rawValue)]
            }
        },
        Operation(name: "kill", style: .method, binding: .plain,
                  summary: "kill QEMU at once") { c throws(PlasmaError) in
            let n = try c.vm(), m = try c.host()
            return c.run { try await m.kill(n); return [] }
        },
        Operation(name: "pause", style: .method, binding: .plain,
                  summary: "pause the guest's CPUs") { c throws(PlasmaError) in
            let n = try c.vm(), m = try c.host()
            return c.run { try await m.pause(n); return [] }
        },
        Operation(name: "resume", style: .method, binding: .plain,
                  summary: "resume a paused VM") { c throws(PlasmaError) in
            let n = try c.vm(), m = try c.host()
            return c.run { try await m.resume(n); return [] }
        },
        Operation(name: "delete", style: .method, options: [Option(name: "force", kind: .boolean, fallback: .bool(false))],
                  summary: "remove the VM; later calls on v raise") { c throws(PlasmaError) in
            let n = try c.vm(), m = try c.host()
            let force = c.arg(1).bool == true
            let ephemeral = c.api.ephemeral, ref = c.ref(n)
            return c.run {
                try await m.delete(n, force: force)
                ephemeral.remove(ref)
                return []
            }
        },
        Operation(name: "info", style: .method, binding: .plain,
                  summary: "{name, id, host, state, reason_code, reason, pid, accel, dir, spec}") { c throws(PlasmaError) in
            let n = try c.vm(), m = try c.host()
            return c.run { [infoTable(try await m.info(n), host: m.address)] }
        },
        Operation(name: "wait_for", style: .method, parameters: [Parameter("state", .state)],
                  options: [Option(name: "timeout", kind: .secondsOrNoLimit, fallback: .int(60))],
                  summary: "wait for a state (math.huge: no limit)") { c throws(PlasmaError) in
            let n = try c.vm(), m = try c.host()
            guard let wanted = c.arg(1).string.flatMap(VMState.init(rawValue:)) else {
                throw PlasmaError(.invalidArgument, "vm.wait_for: unknown state")
            }
            let limit = try NumberCheck.seconds(c.arg(2), "vm.wait_for", "timeout", fallback: 60, unlimited: true)
            return c.run {
                let clock = ContinuousClock()
                let deadline = limit.map { clock.now + NumberCheck.duration($0) }
                while true {
                    let s = try await m.status(n)
                    if s.state == wanted { return [.string(s.state.rawValue)] }
                    if let deadline, let limit, clock.now >= deadline {
                        let tail = (try? await m.consoleLog(n, maxBytes: 400)) ?? ""
                        let lines = tail.replacingOccurrences(of: "\r", with: "").split(separator: "\n").suffix(5)
                            .map { "  | " + $0 }.joined(separator: "\n")
                        let shown = m.isLocal ? "'\(n)'" : "'\(n)' on \(m.address)"
                        throw PlasmaError(.timeout, "vm \(shown): timed out after \(formatSeconds(limit)) waiting for state \(wanted) (it is \(s.state)\(s.reason.map { ": " + $0 } ?? "")); last console lines:\n\(lines)")
                    }
                    try await Task.sleep(for: .milliseconds(100))
                }
            }
        },
        Operation(name: "wait_for_console", style: .method, parameters: [Parameter("pattern", .pattern)],
                  options: [Option(name: "timeout", kind: .secondsOrNoLimit, fallback: .int(60)),
                            Option(name: "fail", kind: .patterns), Option(name: "since", kind: .offset, fallback: .int(0))],
                  summary: "the first console line matching a Lua pattern, and the offset after it"),
        Operation(name: "send_console", style: .method, parameters: [Parameter("text", .string)],
                  summary: "type on the serial console") { c throws(PlasmaError) in
            let n = try c.vm(), m = try c.host()
            let text = c.arg(1).string ?? ""
            return c.run { try await m.sendConsole(n, text); return [] }
        },
        Operation(name: "console_log", style: .method, binding: .plain,
                  summary: "the serial console log so far") { c throws(PlasmaError) in
            let n = try c.vm(), m = try c.host()
            return c.run { [.string(try await m.consoleLog(n))] }
        },
        Operation(name: "exec", style: .method, parameters: [Parameter("command", .string)],
                  options: [Option(name: "timeout", kind: .secondsOrNoLimit, fallback: .int(60))],
                  summary: "exit code and output of the command in the guest's serial shell"),
        Operation(name: "qmp", style: .method, parameters: [Parameter("command", .string), Parameter("arguments", .table)],
                  summary: "a raw QMP reply as a table") { c throws(PlasmaError) in
            let n = try c.vm(), m = try c.host()
            let command = c.arg(1).string ?? ""
            let argsJSON: String?
            switch c.arg(2) {
            case .nil: argsJSON = nil
            case .array([]): argsJSON = "{}"  // an empty Lua table is an empty object here
            case .table: argsJSON = c.arg(2).json
            default: throw PlasmaError(.invalidArgument, "vm.qmp: arguments must be a table with string keys")
            }
            return c.run {
                let reply = try await m.monitorCommand(n, command, argumentsJSON: argsJSON)
                return [try LuaValue(json: reply)]
            }
        },
        Operation(name: "list", style: .function,
                  summary: "VM objects for every VM under the runtime dir") { c throws(PlasmaError) in
            let m = try c.host(), host = c.api.hostID
            return c.run { [.array(try await m.list().map { .vm($0.name.rawValue, host: host) })] }
        },
        Operation(name: "get", style: .function, parameters: [Parameter("name", .string)],
                  summary: "the VM object, or nil and a message when absent"),
        Operation(name: "parallel", style: .function, parameters: [Parameter("functions", .functions)],
                  summary: "run functions concurrently; their first results in order"),
        Operation(name: "connect", style: .function, parameters: [Parameter("address", .string)],
                  options: [Option(name: "ca", kind: .string), Option(name: "cert", kind: .string),
                            Option(name: "key", kind: .string), Option(name: "server_name", kind: .string)],
                  summary: "a handle h on another host (unix:PATH, tcp:HOST:PORT) with the functions of vm; h.address, h:close()") { c throws(PlasmaError) in
            let address = try wrap(prefix: "vm.connect: ") { try HostAddress(parsing: c.arg(0).string ?? "") }
            let ca = c.arg(1).string, cert = c.arg(2).string, key = c.arg(3).string, serverName = c.arg(4).string
            guard (cert == nil) == (key == nil) else {
                throw PlasmaError(.invalidArgument, "vm.connect: 'cert' and 'key' go together (a client certificate needs its key)")
            }
            let tls = [ca, cert, key, serverName].allSatisfy({ $0 == nil }) ? nil
                : HostTLS(caFile: ca.map(absolutePath), certFile: cert.map(absolutePath), keyFile: key.map(absolutePath),
                          serverName: serverName)
            guard let connector = c.api.connector else {
                throw PlasmaError(.unavailable, "vm.connect: cannot connect to \(address): this session has no connector for other hosts (it was made without one)")
            }
            let hosts = c.api.hosts
            let handleKey = [address.description, tls?.caFile ?? "", tls?.certFile ?? "", tls?.keyFile ?? "", tls?.serverName ?? ""]
                .joined(separator: "\0")
            @Sendable func handle(_ id: Int) -> [LuaValue] {
                let h = hosts.entry(id)?.host
                return [.int(Int64(id)), .string(h?.address ?? address.description), .bool(h?.isLocal ?? false)]
            }
            // The same place connected twice: one handle.
            if let id = hosts.open(key: handleKey) { return c.run { handle(id) } }
            return c.run {
                let host = try await address.connect(with: connector, tls: tls)
                let (id, added) = hosts.add(host, key: handleKey)
                if !added { await host.close() }
                return handle(id)
            }
        },
        Operation(name: "sleep", style: .global, parameters: [Parameter("seconds", .seconds)],
                  summary: "wait; other branches run meanwhile") { c throws(PlasmaError) in
            let seconds = try NumberCheck.seconds(c.arg(0), "sleep", "seconds", fallback: 0)!
            return c.run {
                try await Task.sleep(for: NumberCheck.duration(seconds))
                return []
            }
        },
        // Natives of the prelude's composed operations.
        Operation(name: "exists", style: .internal, summary: "") { c throws(PlasmaError) in
            let raw = c.arg(0).string ?? "", m = try c.host()
            return c.run {
                do {
                    _ = try await m.status(try VMName(raw))
                    return [.bool(true)]
                } catch let e as PlasmaError {
                    return [.bool(false), .string(e.message)]
                }
            }
        },
        Operation(name: "console_tail", style: .internal, summary: "") { c throws(PlasmaError) in
            let n = try c.vm(), m = try c.host()
            let bytes = try NumberCheck.whole(c.arg(1), "vm.console_tail", "bytes", fallback: 600, max: 1 << 20)
            return c.run { [.string(try await m.consoleLog(n, maxBytes: bytes))] }
        },
        Operation(name: "console_read", style: .internal, summary: "") { c throws(PlasmaError) in
            let n = try c.vm(), m = try c.host()
            let offset = try NumberCheck.whole(c.arg(1), "vm.console_read", "offset", fallback: 0, max: Int(Int64.max / 2))
            return c.run {
                let (text, next) = try await m.consoleRead(n, from: offset)
                return [.string(text), .int(Int64(next))]
            }
        },
        // h:close(): later calls through h raise at once; h's ephemeral VMs (and `<close>`
        // deletions left to cleanup) are removed on that host, then its connection is closed.
        Operation(name: "close_host", style: .internal, summary: "") { c throws(PlasmaError) in
            let id = c.api.hostID, hosts = c.api.hosts
            guard id != 0 else { throw PlasmaError(.invalidArgument, "vm: the session's own host cannot be closed") }
            guard let host = hosts.entry(id)?.host, hosts.markClosed(id) else { return c.run { [] } }
            let api = c.api
            var seen = Set<VMRef>()
            let refs = (api.ephemeral.all + api.deferredDeletes.all + api.unclaimed.all)
                .filter { $0.host == id && seen.insert($0).inserted }
            let removal = Removal(hosts: hosts, lists: [api.ephemeral, api.deferredDeletes, api.unclaimed])
            return c.run {
                let failed = await removal.remove(refs)
                // A VM that could not be removed keeps the connection for the session's end,
                // which tries again and reports it.
                if failed.isEmpty {
                    await host.close()
                    hosts.markReleased(id)
                }
                return []
            }
        },
    ]

    static let byName: [String: Operation] = Dictionary(uniqueKeysWithValues: operations.map { ($0.name, $0) })

    /// The public operations, for the Lua side: `{name=, style=, binding=, signature=, summary=,
    /// params={{name=, kind=}…}, options={key={kind=, default=}}}`.
    static var reference: LuaValue {
        .array(operations.filter { $0.style != .internal }.map { op in
            let binding: String
            switch op.binding {
            case .prelude: binding = "prelude"
            case .plain: binding = "plain"
            case .plainReturningSelf: binding = "self"
            }
            let options: [String: LuaValue] = Dictionary(uniqueKeysWithValues: op.options.map { o in
                (o.name, .table(["kind": .string(o.kind.rawValue), "default": o.fallback]))
            })
            let params: [LuaValue] = op.parameters.map { .table(["name": .string($0.name), "kind": .string($0.kind.rawValue)]) }
            return .table(["name": .string(op.name), "style": .string(op.style.rawValue), "binding": .string(binding),
                           "signature": .string(op.signature), "summary": .string(op.summary),
                           "options": options.isEmpty ? .nil : .table(options), "params": .array(params)])
        })
    }

    /// One call's arguments and context.
    struct Call: Sendable {
        let op: String
        let args: [LuaValue]
        let api: VMAPI

        func arg(_ i: Int) -> LuaValue { i < args.count ? args[i] : .nil }

        func vm(_ i: Int = 0) throws(PlasmaError) -> VMName {
            guard let s = arg(i).string else { throw PlasmaError(.invalidArgument, "vm.\(op): a vm name is required") }
            return try wrap { try VMName(s) }
        }

        /// The host this call goes to; raises when the plan closed it.
        func host() throws(PlasmaError) -> any VMHost { try api.hosts.host(api.hostID, for: "vm.\(op)") }

        /// The VM `name` on this call's host.
        func ref(_ name: VMName) -> VMRef { VMRef(host: api.hostID, name: name.rawValue) }

        func run(_ body: @escaping @Sendable () async throws -> [LuaValue]) -> Work {
            let op = self.op
            return {
                do {
                    // A task cancelled before it ran (the plan ended meanwhile) does nothing.
                    try Task.checkCancellation()
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
    }

    func make(_ op: String, _ args: [LuaValue]) throws(PlasmaError) -> Work {
        guard let make = Self.byName[op]?.make else { throw PlasmaError(.internal, "unknown operation \(op)") }
        return try make(Call(op: op, args: args, api: self))
    }

    /// vm.create's arguments in the prelude's order: name, kernel, initrd, append, memory,
    /// cpus, disks, net, accel, ephemeral.
    private static func createSpec(_ args: [LuaValue]) throws(PlasmaError) -> VMSpec {
        func arg(_ i: Int) -> LuaValue { i < args.count ? args[i] : .nil }
        func bad(_ m: String) -> PlasmaError { PlasmaError(.invalidArgument, "vm.create: \(m)") }
        guard let rawName = arg(0).string else { throw bad("'name' must be a string") }
        let name = try wrap(prefix: "vm.create: ") { try VMName(rawName) }
        func path(_ v: LuaValue) -> String? { v.string.map(absolutePath) }
        var memory = MemorySize(mebibytes: 256)
        if let text = arg(4).string {
            memory = try wrap(prefix: "vm.create: ") { try MemorySize(parsing: text, field: "'memory'") }
        }
        let cpus = try NumberCheck.whole(arg(5), "vm.create", "cpus", fallback: 1, max: 1 << 16)
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

    /// What `v:status()` returns: the state, the reason code and the message.
    static func statusValues(_ s: VMStatus) -> [LuaValue] {
        [.string(s.state.rawValue), .string(s.reasonCode.rawValue), s.reason.map(LuaValue.string) ?? .nil]
    }

    /// What `v:info()` returns; `host` is the host's address ("local" for this machine).
    static func infoTable(_ info: VMInfo, host: String) -> LuaValue {
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
            "host": .string(host),
            "state": .string(info.status.state.rawValue),
            "reason_code": .string(info.status.reasonCode.rawValue),
            "spec": .table(spec),
        ]
        if let r = info.status.reason { t["reason"] = .string(r) }
        if let p = info.status.pid { t["pid"] = .int(Int64(p)) }
        if let a = info.status.accel { t["accel"] = .string(a) }
        if let d = info.runtimeDirectory { t["dir"] = .string(d) }
        return .table(t)
    }
}

extension VMAPI.Operation {
    /// How a user calls it, derived from the definition: `v:wait_for(state, {timeout=60})`,
    /// `v:stop{timeout=30}`, `vm.parallel(f1, f2, ...)`.
    var signature: String {
        if let signatureOverride { return signatureOverride }
        let prefix: String
        switch style {
        case .method: prefix = "v:" + name
        case .function: prefix = "vm." + name
        case .global, .internal: prefix = name
        }
        let opts = options.map { "\($0.name)=\($0.shownDefault)" }.joined(separator: ", ")
        var parts = parameters.map { $0.kind == .functions ? "f1, f2, ..." : $0.name }
        if parts.isEmpty && !opts.isEmpty { return prefix + "{" + opts + "}" }
        if !opts.isEmpty { parts.append("{" + opts + "}") }
        return prefix + "(" + parts.joined(separator: ", ") + ")"
    }
}

extension VMAPI.Option {
    /// The default as help shows it.
    var shownDefault: String {
        switch fallback {
        case .int(let i): return String(i)
        case .bool(let b): return String(b)
        case .number(let d): return NumberCheck.show(d)
        case .string(let t): return "\"" + t + "\""
        default: return kind == .patterns ? "{}" : "nil"
        }
    }
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
