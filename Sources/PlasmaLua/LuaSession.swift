import CLua
import CLuaShim
import Foundation
import PlasmaVMM
import Synchronization

/// A Lua state with the `vm` API and its scheduler. One thread alone (the caller of `open`,
/// `compile`, `run` and `close`) touches the lua_State. Operations that take time run as Swift
/// tasks; the chunk's coroutine yields meanwhile and the scheduler resumes it with the result
/// (the cosocket pattern), so `vm.parallel` branches overlap and every wait can be bounded.
/// A plan runs one chunk in a session; the REPL runs one per input.
public final class LuaSession: @unchecked Sendable {
    let manager: VMManager
    let options: PlanOptions

    // Shared with tasks and timers: guarded by `inbox`.
    private let inbox = NSCondition()
    private var completions: [(op: UInt64, result: Result<[LuaValue], PlasmaError>)] = []
    private var interruptReason: String?
    private var running: OpaquePointer?
    /// True while a chunk runs; interrupts outside of one are ignored.
    private var active = false

    private let ephemeral = NameList()
    private let created = NameList()

    // Lua thread only.
    /// The state; valid between `open` and `close`, on the session's thread only.
    public private(set) var L: OpaquePointer!
    private var nextOp: UInt64 = 1
    private var tasks: [UInt64: Task<Void, Never>] = [:]
    private var waiting: [UInt64: Int] = [:]
    private var coroutines: [Int: Coroutine] = [:]
    private var groups: [Int: Group] = [:]
    private var runnable: [(Int, Resume)] = []
    private var nextCoroutine = 1
    private var hostFunctions: [HostFunction] = []
    private var deferredDeletes: [String] = []
    /// Status probes by VM name, and when a VM last had none (to retry only now and then).
    private var probes: [String: any VMStatusProbe] = [:]
    private var noProbeSince: [String: ContinuousClock.Instant] = [:]
    private var mainResult: Ending?

    struct Coroutine {
        var thread: OpaquePointer
        var ref: Int32
        /// For a branch of vm.parallel: its parent coroutine and its position.
        var parent: (id: Int, slot: Int)?
    }

    struct Group {
        /// Registry references of the branches' results (LUA_REFNIL for nil).
        var results: [Int32]
        var members: [Int]
        var remaining: Int
    }

    /// How a coroutine ended.
    enum Ending {
        case success([LuaValue])
        /// A parallel branch's first result, as a registry reference.
        case branch(Int32)
        /// The error message, and the same with the coroutine's traceback.
        case failure(String, traceback: String)
    }

    enum Resume {
        case start(nargs: Int32)
        case values([LuaValue])
        /// true, then the values parked in the registry (released as they are pushed).
        case references([Int32])
        case failure(String)
    }

    public init(manager: VMManager, options: PlanOptions) {
        self.manager = manager
        self.options = options
    }

    /// What one chunk did.
    public struct ChunkOutcome {
        public var kind: PlanOutcome.Kind
        public var message: String?
    }

    /// Makes the state: natives, globals, the prelude. Returns an error message on failure.
    public func open() -> String? {
        guard let state = plasma_lua_new() else { return "cannot create a Lua state" }
        L = state
        installNatives()
        setupGlobals()
        if let error = loadChunk(preludeSource, "=plasma.vm") {
            return "internal: the vm prelude failed: \(error)"
        }
        return nil
    }

    /// Runs a library chunk (no yields) at once; returns an error message on failure.
    public func load(library source: String, name: String) -> String? {
        loadChunk(source, name)
    }

    /// Compiles `source`; on success the function is left on the stack, else the message is
    /// returned (and the stack is as before).
    public func compile(_ source: String, chunkName: String) -> String? {
        let status = source.withCString { luaL_loadbufferx(L, $0, strlen($0), chunkName, "t") }
        if status != LUA_OK {
            let msg = LuaStack.describe(L, -1)
            plasma_pop(L, 1)
            return msg
        }
        return nil
    }

    /// Runs the function on top of the stack as the main coroutine, with `arguments` as `...`,
    /// until it ends or is interrupted. Cancelled operations are settled before it returns.
    public func run(arguments: [String] = []) -> ChunkOutcome {
        let co = lua_newthread(L)!
        let ref = luaL_ref(L, plasma_registryindex())
        lua_xmove(L, co, 1)
        for a in arguments { LuaStack.pushString(co, a) }
        mainResult = nil
        coroutines[0] = Coroutine(thread: co, ref: ref, parent: nil)
        runnable.append((0, .start(nargs: Int32(arguments.count))))
        inbox.lock()
        active = true
        inbox.unlock()
        let interruptedBy = schedule()
        let outcome = finish(interruptedBy: interruptedBy)
        settle()
        inbox.lock()
        active = false
        interruptReason = nil
        inbox.unlock()
        return outcome
    }

    /// Ends the session: removes ephemeral VMs and deferred `<close>` deletions (unless
    /// `keep`), closes the state. Returns every VM the session created.
    @discardableResult
    public func close(keep: Bool = false) -> [String] {
        for p in probes.values { p.close() }
        probes = [:]
        if !keep { removeDoomedVMs() }
        lua_close(L)
        L = nil
        return created.all
    }

    /// Stops the running chunk: its Lua code fails at its next instruction and its pending
    /// operations are cancelled. Safe from any thread (Ctrl-C handler, timer). Ignored when no
    /// chunk runs. Returns whether a chunk was running.
    @discardableResult
    public func interrupt(_ why: String) -> Bool {
        inbox.lock()
        defer { inbox.unlock() }
        guard active else { return false }
        if interruptReason == nil {
            interruptReason = why
            if let running { why.withCString { plasma_interrupt(running, strdup($0)) } }
        }
        inbox.signal()
        return true
    }

    /// Runs coroutines until the plan ends or is interrupted. Returns the interrupt reason.
    private func schedule() -> String? {
        while mainResult == nil {
            inbox.lock()
            let reason = interruptReason
            inbox.unlock()
            if let reason { return reason }
            if !runnable.isEmpty {
                let (id, how) = runnable.removeFirst()
                step(id, how)
                continue
            }
            inbox.lock()
            while completions.isEmpty && interruptReason == nil { inbox.wait() }
            let done = completions
            completions = []
            inbox.unlock()
            for (op, result) in done {
                tasks[op] = nil
                guard let co = waiting.removeValue(forKey: op) else { continue }
                switch result {
                case .success(let values): runnable.append((co, .values(values)))
                case .failure(let e): runnable.append((co, .failure(e.description)))
                }
            }
        }
        return nil
    }

    private func step(_ id: Int, _ how: Resume) {
        guard let co = coroutines[id]?.thread else { return }
        var nargs: Int32
        switch how {
        case .start(let n): nargs = n
        case .values(let vs):
            lua_pushboolean(co, 1)
            for v in vs { push(co, v) }
            nargs = Int32(vs.count + 1)
        case .failure(let msg):
            lua_pushboolean(co, 0)
            LuaStack.pushString(co, msg)
            nargs = 2
        case .references(let refs):
            lua_pushboolean(co, 1)
            for ref in refs {
                lua_rawgeti(L, plasma_registryindex(), lua_Integer(ref))
                luaL_unref(L, plasma_registryindex(), ref)
                lua_xmove(L, co, 1)
            }
            nargs = Int32(refs.count + 1)
        }
        inbox.lock()
        running = co
        let pending = interruptReason
        inbox.unlock()
        if let pending { pending.withCString { plasma_interrupt(co, strdup($0)) } }
        var nres: Int32 = 0
        let status = plasma_resume(co, L, nargs, &nres)
        inbox.lock()
        running = nil
        inbox.unlock()
        switch status {
        case LUA_YIELD:
            if nres == 1, lua_isinteger(co, -1) != 0 {
                var isnum: Int32 = 0
                let op = UInt64(plasma_tointeger(co, -1, &isnum))
                plasma_pop(co, 1)
                waiting[op] = id
            } else if nres == 1, lua_type(co, -1) == LUA_TTABLE {
                startParallel(parent: id, tableOn: co)
            } else {
                plasma_pop(co, nres)
                let msg = "coroutine.yield is not allowed in a plan outside vm calls (plans run in the scheduler's coroutines)"
                end(id, .failure(msg, traceback: msg))
            }
        case LUA_OK:
            let base = lua_gettop(co) - nres
            if coroutines[id]?.parent != nil {
                // A branch's first result goes to its parent as the Lua value itself (tables
                // and VM objects intact), parked in the registry until every branch is done.
                if nres > 0 { lua_pushvalue(co, base + 1) } else { lua_pushnil(co) }
                lua_xmove(co, L, 1)
                let ref = luaL_ref(L, plasma_registryindex())
                plasma_pop(co, nres)
                end(id, .branch(ref))
                return
            }
            var values: [LuaValue] = []
            for i in 0..<nres { values.append(LuaStack.value(co, base + 1 + i)) }
            plasma_pop(co, nres)
            end(id, .success(values))
        default:
            let msg = LuaStack.describe(co, -1)
            plasma_traceback(L, co, msg)
            let text = LuaStack.string(L, -1) ?? msg
            plasma_pop(L, 1)
            end(id, .failure(msg, traceback: text))
        }
    }

    /// `yield({parallel = {f1, f2, …, n = N}})`: each function becomes a coroutine.
    private func startParallel(parent: Int, tableOn co: OpaquePointer) {
        lua_getfield(co, -1, "parallel")  // a plain table made by the prelude: no metamethods
        lua_getfield(co, -1, "n")
        var isnum: Int32 = 0
        let n = Int(plasma_tointeger(co, -1, &isnum))
        plasma_pop(co, 1)
        var members: [Int] = []
        for slot in 0..<n {
            let child = lua_newthread(L)!
            let ref = luaL_ref(L, plasma_registryindex())
            lua_rawgeti(co, -1, lua_Integer(slot + 1))
            lua_xmove(co, child, 1)
            let cid = nextCoroutine
            nextCoroutine += 1
            coroutines[cid] = Coroutine(thread: child, ref: ref, parent: (parent, slot))
            members.append(cid)
            runnable.append((cid, .start(nargs: 0)))
        }
        plasma_pop(co, 2)
        groups[parent] = Group(results: Array(repeating: LUA_REFNIL, count: n), members: members, remaining: n)
    }

    private func end(_ id: Int, _ result: Ending) {
        guard let co = coroutines.removeValue(forKey: id) else { return }
        if case .failure = result { closeVariables(co.thread) }
        luaL_unref(L, plasma_registryindex(), co.ref)
        guard let (parentID, slot) = co.parent else {
            mainResult = result
            return
        }
        guard var group = groups[parentID] else { return }
        switch result {
        case .success, .branch:
            if case .branch(let ref) = result { group.results[slot] = ref }
            group.remaining -= 1
            if group.remaining == 0 {
                groups[parentID] = nil
                runnable.append((parentID, .references(group.results)))
            } else {
                groups[parentID] = group
            }
        case .failure(let message, _):
            groups[parentID] = nil
            for ref in group.results { luaL_unref(L, plasma_registryindex(), ref) }
            for m in group.members where m != id { cancel(m) }
            runnable.append((parentID, .failure("vm.parallel: branch \(slot + 1) failed: \(message)")))
        }
    }

    /// Ends a coroutine that has not finished: its operation is cancelled, its branches too,
    /// and its to-be-closed variables are closed.
    private func cancel(_ id: Int) {
        if let group = groups.removeValue(forKey: id) {
            for m in group.members { cancel(m) }
        }
        for (op, co) in waiting where co == id {
            waiting[op] = nil
            tasks[op]?.cancel()
        }
        runnable.removeAll { $0.0 == id }
        guard let co = coroutines.removeValue(forKey: id) else { return }
        closeVariables(co.thread)
        luaL_unref(L, plasma_registryindex(), co.ref)
    }

    /// Runs pending `<close>` handlers of a dead or abandoned coroutine. They cannot yield
    /// here, so a VM's __close defers its deletion to cleanup.
    private func closeVariables(_ co: OpaquePointer) {
        _ = lua_resetthread(co)
    }

    private func finish(interruptedBy reason: String?) -> ChunkOutcome {
        if let reason {
            for id in Array(coroutines.keys) { cancel(id) }
            let kind: PlanOutcome.Kind = reason.hasPrefix("timed out") ? .timedOut : .interrupted
            return ChunkOutcome(kind: kind, message: "plan \(reason)")
        }
        switch mainResult {
        case .success(let values)?:
            switch values.first {
            case .bool(false)?: return ChunkOutcome(kind: .returnedFalse, message: nil)
            case .int(let code)? where code != 0:
                return ChunkOutcome(kind: .exitStatus(Int32(truncatingIfNeeded: code)), message: nil)
            default: return ChunkOutcome(kind: .success, message: nil)
            }
        case .failure(_, let message)?:
            inbox.lock()
            let reason = interruptReason
            inbox.unlock()
            if let reason {
                let kind: PlanOutcome.Kind = reason.hasPrefix("timed out") ? .timedOut : .interrupted
                return ChunkOutcome(kind: kind, message: message)
            }
            return ChunkOutcome(kind: .runtimeError, message: message)
        case nil, .branch?:
            return ChunkOutcome(kind: .runtimeError, message: "internal: the chunk ended without a result")
        }
    }

    /// Cancels what still runs and waits (bounded) for it to settle.
    private func settle() {
        for (_, task) in tasks { task.cancel() }
        for id in Array(coroutines.keys) { cancel(id) }
        // Wait (bounded) for cancelled operations to settle before deleting their VMs.
        let deadline = Date().addingTimeInterval(10)
        inbox.lock()
        while !tasks.isEmpty {
            for (op, _) in completions { tasks[op] = nil }
            completions = []
            if tasks.isEmpty || !inbox.wait(until: deadline) { break }
        }
        waiting = [:]
        inbox.unlock()
    }

    /// Removes ephemeral VMs and those whose `<close>` deletion was deferred.
    private func removeDoomedVMs() {
        var doomed = ephemeral.all + deferredDeletes
        var seen = Set<String>()
        doomed = doomed.filter { seen.insert($0).inserted }
        guard !doomed.isEmpty else { return }
        let manager = self.manager
        let done = DispatchSemaphore(value: 0)
        Task {
            for name in doomed {
                if let vm = try? VMName(name) { try? await manager.delete(vm, force: true) }
            }
            done.signal()
        }
        done.wait()
    }

    // MARK: natives

    final class HostFunction {
        let body: (OpaquePointer) -> HostResult
        init(_ body: @escaping (OpaquePointer) -> HostResult) { self.body = body }
    }

    enum HostResult {
        case results(Int32)
        case error(String)
    }

    private func register(_ name: String, _ body: @escaping (OpaquePointer) -> HostResult) {
        let f = HostFunction(body)
        hostFunctions.append(f)
        plasma_push_host(L, hostDispatch, Unmanaged.passUnretained(f).toOpaque())
        lua_setfield(L, -2, name)
    }

    private func installNatives() {
        lua_createtable(L, 0, 8)
        register("op") { [unowned self] L in
            switch self.startOperation(L) {
            case .success(let op):
                lua_pushinteger(L, lua_Integer(op))
                return .results(1)
            case .failure(let e): return .error(e.description)
            }
        }
        register("sync") { [unowned self] L in
            let result = self.runSynchronously(L)
            switch result {
            case .success(let values):
                lua_pushboolean(L, 1)
                for v in values { self.push(L, v) }
                return .results(Int32(values.count + 1))
            case .failure(let e):
                lua_pushboolean(L, 0)
                LuaStack.pushString(L, e.description)
                return .results(2)
            }
        }
        register("newvm") { [unowned self] L in
            guard let name = LuaStack.string(L, 1) else { return .error("newvm: name expected") }
            self.push(L, .vm(name))
            return .results(1)
        }
        register("now") { L in
            var ts = timespec()
            clock_gettime(CLOCK_MONOTONIC, &ts)
            lua_pushnumber(L, Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9)
            return .results(1)
        }
        // v:status() without a yield: the VM's held monitor answers on this thread. Returns
        // nothing when no probe applies; the prelude then asks through the scheduler.
        register("status_fast") { [unowned self] L in
            guard let name = LuaStack.string(L, 1), let s = self.fastStatus(name) else { return .results(0) }
            LuaStack.pushString(L, s.state.rawValue)
            if let r = s.reason { LuaStack.pushString(L, r) } else { lua_pushnil(L) }
            return .results(2)
        }
        register("defer_delete") { [unowned self] L in
            if let name = LuaStack.string(L, 1) { self.deferredDeletes.append(name) }
            return .results(0)
        }
        lua_setglobal(L, "__plasma")
    }

    private func fastStatus(_ name: String) -> VMStatus? {
        if let probe = probes[name] {
            if let s = probe.status() { return s }
            probe.close()
            probes[name] = nil
        }
        if let since = noProbeSince[name], ContinuousClock.now - since < .seconds(2) { return nil }
        guard let vm = try? VMName(name), let probe = manager.statusProbe(vm), let s = probe.status() else {
            noProbeSince[name] = ContinuousClock.now
            return nil
        }
        noProbeSince[name] = nil
        probes[name] = probe
        return s
    }

    /// Pushes a value; VM objects are built as userdata with the prelude's metatable.
    func push(_ L: OpaquePointer, _ v: LuaValue) {
        switch v {
        case .vm(let name):
            lua_createtable(L, 0, 2)
            LuaStack.pushString(L, name)
            lua_setfield(L, -2, "name")
            plasma_new_object(L, -1, "plasmavmc.vm")
            plasma_remove(L, -2)
        case .array(let a) where a.contains(where: { if case .vm = $0 { return true } else { return false } }):
            lua_createtable(L, Int32(a.count), 0)
            for (i, e) in a.enumerated() {
                push(L, e)
                lua_rawseti(L, -2, lua_Integer(i + 1))
            }
        default:
            LuaStack.push(L, v)
        }
    }

    private func setupGlobals() {
        var path: [String] = []
        for dir in [options.planDirectory] + options.searchFolders where !path.contains(dir + "/?.lua") {
            path += [dir + "/?.lua", dir + "/?/init.lua"]
        }
        if let stdlib = options.stdlibPath { path += [stdlib + "/?.lua", stdlib + "/?/init.lua"] }
        lua_getglobal(L, "package")
        LuaStack.pushString(L, path.joined(separator: ";"))
        lua_setfield(L, -2, "path")
        // Plans load Lua text only: no C modules.
        LuaStack.pushString(L, "")
        lua_setfield(L, -2, "cpath")
        plasma_pop(L, 1)
        lua_createtable(L, Int32(options.arguments.count), 1)
        LuaStack.pushString(L, options.scriptName)
        lua_rawseti(L, -2, 0)
        for (i, a) in options.arguments.enumerated() {
            LuaStack.pushString(L, a)
            lua_rawseti(L, -2, lua_Integer(i + 1))
        }
        lua_setglobal(L, "arg")
    }

    private func loadChunk(_ source: String, _ name: String) -> String? {
        let status = source.withCString { plasma_load(L, $0, strlen($0), name) }
        if status != LUA_OK {
            let msg = LuaStack.describe(L, -1)
            plasma_pop(L, 1)
            return msg
        }
        lua_settop(L, 0)
        return nil
    }

    // MARK: operations

    private func startOperation(_ L: OpaquePointer) -> Result<UInt64, PlasmaError> {
        let operation: Operation
        do {
            operation = try makeOperation(L)
        } catch {
            return .failure(error)
        }
        let op = nextOp
        nextOp += 1
        tasks[op] = Task { [self] in
            deliver(op, await operation())
        }
        return .success(op)
    }

    /// Hands an operation's result to the Lua thread (from any thread).
    private func deliver(_ op: UInt64, _ result: Result<[LuaValue], PlasmaError>) {
        inbox.lock()
        completions.append((op, result))
        inbox.signal()
        inbox.unlock()
    }

    /// For calls where the coroutine cannot yield (inside a metamethod such as __tostring):
    /// the Lua thread is ours, so blocking it is allowed.
    private func runSynchronously(_ L: OpaquePointer) -> Result<[LuaValue], PlasmaError> {
        let operation: Operation
        do {
            operation = try makeOperation(L)
        } catch {
            return .failure(error)
        }
        let box = Mutex<Result<[LuaValue], PlasmaError>?>(nil)
        let done = DispatchSemaphore(value: 0)
        Task {
            let r = await operation()
            box.withLock { $0 = r }
            done.signal()
        }
        done.wait()
        return box.withLock { $0! }
    }

    typealias Operation = @Sendable () async -> Result<[LuaValue], PlasmaError>

    private func makeOperation(_ L: OpaquePointer) throws(PlasmaError) -> Operation {
        guard let name = LuaStack.string(L, 1) else { throw PlasmaError(.internal, "operation name expected") }
        let top = lua_gettop(L)
        let args = top >= 2 ? (2...top).map { LuaStack.value(L, $0) } : []
        return try VMOperations(manager: manager, ephemeral: ephemeral, created: created).make(name, args)
    }
}

private let hostDispatch: plasma_host_fn = { L, ctx in
    let f = Unmanaged<LuaSession.HostFunction>.fromOpaque(ctx!).takeUnretainedValue()
    switch f.body(L!) {
    case .results(let n): return n
    case .error(let message):
        LuaStack.pushString(L!, message)
        return -1
    }
}

func formatSeconds(_ s: Double) -> String {
    s == s.rounded() ? "\(Int(s))s" : "\((s * 1000).rounded() / 1000)s"
}

/// Runs `body` on a new thread with a large stack (the only thread that will touch its Lua
/// state) and returns its result to the awaiting task.
func onLuaThread<T: Sendable>(named name: String, _ body: @escaping @Sendable () -> T) async -> T {
    await withCheckedContinuation { (c: CheckedContinuation<T, Never>) in
        let thread = Thread { c.resume(returning: body()) }
        thread.name = name
        thread.stackSize = 16 << 20
        thread.start()
    }
}
