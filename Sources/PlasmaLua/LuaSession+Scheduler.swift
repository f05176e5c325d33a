import CLua
import CLuaShim
import Foundation
import PlasmaVMM
import Synchronization

/// The scheduler: coroutines it created run until they yield an operation (the prelude's
/// private token and an operation id this coroutine started) or a `vm.parallel` group; it
/// resumes them with the results. Anything else yielded to it is an error of that coroutine.
/// A plan's own coroutines (coroutine.create/wrap) are not the scheduler's: `vm` calls inside
/// them run synchronously (see the prelude), and their yields go to the plan's own resume.
extension LuaSession {
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

    /// A new coroutine on `L`'s stack, marked as the scheduler's.
    func newCoroutine() -> OpaquePointer {
        let co = lua_newthread(L)!
        lua_rawgeti(L, plasma_registryindex(), lua_Integer(scheduledRef))
        lua_pushvalue(L, -2)
        lua_pushboolean(L, 1)
        lua_rawset(L, -3)
        plasma_pop(L, 1)
        return co
    }

    /// Runs coroutines until the plan ends or is interrupted. Returns the interrupt reason.
    func schedule() -> String? {
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
            for (op, result) in done { complete(op, result) }
        }
        return nil
    }

    func complete(_ op: UInt64, _ result: Result<[LuaValue], PlasmaError>) {
        tasks[op] = nil
        owners[op] = nil
        guard let co = waiting.removeValue(forKey: op) else { return }
        switch result {
        case .success(let values): runnable.append((co, .values(values)))
        case .failure(let e): runnable.append((co, .failure(e.description)))
        }
    }

    func step(_ id: Int, _ how: Resume) {
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
        var nres: Int32 = 0
        current = id
        let status = plasma_resume(co, L, nargs, &nres)
        current = nil
        switch status {
        case LUA_YIELD:
            yielded(id, co, nres)
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

    /// A scheduler coroutine yielded `nres` values: the token and an operation id it started,
    /// or the token, "parallel" and a table of functions. Anything else ends it with an error.
    private func yielded(_ id: Int, _ co: OpaquePointer, _ nres: Int32) {
        let base = lua_gettop(co) - nres + 1
        var isToken = false
        if nres >= 2 {
            lua_rawgeti(co, plasma_registryindex(), lua_Integer(tokenRef))
            isToken = lua_rawequal(co, base, -1) != 0
            plasma_pop(co, 1)
        }
        if isToken, nres == 2, lua_isinteger(co, base + 1) != 0 {
            var isnum: Int32 = 0
            let op = UInt64(bitPattern: Int64(plasma_tointeger(co, base + 1, &isnum)))
            plasma_pop(co, nres)
            if owners[op] == id, tasks[op] != nil {
                waiting[op] = id
                return
            }
            let msg = "internal: a coroutine waited for operation \(op), which it did not start"
            end(id, .failure(msg, traceback: msg))
            return
        }
        if isToken, nres == 3, LuaStack.string(co, base + 1) == "parallel", lua_type(co, base + 2) == LUA_TTABLE {
            startParallel(parent: id, tableAt: base + 2, on: co)
            plasma_pop(co, nres)
            return
        }
        plasma_pop(co, nres)
        var msg = "coroutine.yield: the plan's own code cannot yield to the scheduler; yield only inside coroutines the plan creates"
        if let place = where_(co) { msg = place + msg }
        plasma_traceback(L, co, msg)
        let text = LuaStack.string(L, -1) ?? msg
        plasma_pop(L, 1)
        end(id, .failure(msg, traceback: text))
    }

    /// "file:line: " of the innermost Lua function of a suspended coroutine.
    private func where_(_ co: OpaquePointer) -> String? {
        plasma_where(L, co)
        defer { plasma_pop(L, 1) }
        let s = LuaStack.string(L, -1) ?? ""
        return s.isEmpty ? nil : s
    }

    /// `vm.parallel`'s functions (a sequence with field n, made by the prelude) become coroutines.
    private func startParallel(parent: Int, tableAt index: Int32, on co: OpaquePointer) {
        LuaStack.pushString(co, "n")
        lua_rawget(co, index)
        var isnum: Int32 = 0
        let n = max(0, min(Int(plasma_tointeger(co, -1, &isnum)), 100_000))
        plasma_pop(co, 1)
        if n == 0 {
            runnable.append((parent, .references([])))
            return
        }
        var members: [Int] = []
        for slot in 0..<n {
            let child = newCoroutine()
            let ref = luaL_ref(L, plasma_registryindex())
            lua_rawgeti(co, index, lua_Integer(slot + 1))
            lua_xmove(co, child, 1)
            let cid = nextCoroutine
            nextCoroutine += 1
            coroutines[cid] = Coroutine(thread: child, ref: ref, parent: (parent, slot))
            members.append(cid)
            runnable.append((cid, .start(nargs: 0)))
        }
        groups[parent] = Group(results: Array(repeating: LUA_REFNIL, count: n), members: members, remaining: n)
    }

    func end(_ id: Int, _ result: Ending) {
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
    func cancel(_ id: Int) {
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
    /// here, so a VM's __close leaves its deletion to cleanup.
    func closeVariables(_ co: OpaquePointer) {
        plasma_control_closing(control, 1)
        _ = lua_resetthread(co)
        plasma_control_closing(control, 0)
    }

    func finish(interruptedBy reason: String?) -> ChunkOutcome {
        inbox.lock()
        let kind = interruptKind
        let pending = interruptReason
        inbox.unlock()
        if let reason {
            for id in Array(coroutines.keys) { cancel(id) }
            return ChunkOutcome(kind: kind, message: "plan \(reason)")
        }
        switch mainResult {
        case .success(let values)?:
            switch values.first {
            case .bool(false)?: return ChunkOutcome(kind: .returnedFalse, message: nil)
            case .int(let code)?: return exitStatus(Double(code), shown: String(code))
            case .number(let d)?: return exitStatus(d, shown: NumberCheck.show(d))
            default: return ChunkOutcome(kind: .success, message: nil)
            }
        case .failure(_, let message)?:
            if let pending {
                // The interrupt ended the plan from inside Lua: say so plainly, then where it was.
                let trace = message.range(of: "\nstack traceback:").map { String(message[$0.lowerBound...]) } ?? ""
                return ChunkOutcome(kind: kind, message: "plan \(pending)" + trace)
            }
            return ChunkOutcome(kind: .runtimeError, message: message)
        case nil, .branch?:
            return ChunkOutcome(kind: .runtimeError, message: "internal: the chunk ended without a result")
        }
    }

    /// A plan's returned number as its exit status: a whole number 0…255, else an error.
    private func exitStatus(_ d: Double, shown: String) -> ChunkOutcome {
        guard d == d.rounded(), d >= 0, d <= 255 else {
            return ChunkOutcome(kind: .runtimeError, message: "plan returned \(shown); an exit status is a whole number 0–255 (return nothing or true for success, false for failure)")
        }
        return d == 0 ? ChunkOutcome(kind: .success, message: nil) : ChunkOutcome(kind: .exitStatus(Int32(d)), message: nil)
    }

    /// Cancels what still runs and waits (bounded) for it to settle.
    func settle() {
        for (_, task) in tasks { task.cancel() }
        for id in Array(coroutines.keys) { cancel(id) }
        // Wait (bounded) for cancelled operations to settle before deleting their VMs: a
        // create still running could otherwise finish after cleanup. Cancelled operations end
        // in about a second (a stop goes to its forced steps); the bound is for a starved or
        // stuck one, and a second Ctrl-C ends the wait.
        let deadline = Date().addingTimeInterval(30)
        inbox.lock()
        while !tasks.isEmpty {
            for (op, _) in completions { tasks[op] = nil }
            completions = []
            if tasks.isEmpty || !inbox.wait(until: deadline) { break }
        }
        waiting = [:]
        owners = [:]
        inbox.unlock()
    }

    // MARK: operations

    /// Starts the operation described by the arguments on `L`'s stack as a task; returns its id.
    func startOperation(_ L: OpaquePointer) -> Result<UInt64, PlasmaError> {
        let work: VMAPI.Work
        do {
            work = try makeOperation(L)
        } catch {
            return .failure(error)
        }
        let op = nextOp
        nextOp += 1
        if let current { owners[op] = current }
        tasks[op] = Task { [self] in
            deliver(op, await work())
        }
        return .success(op)
    }

    /// Hands an operation's result to the Lua thread (from any thread).
    func deliver(_ op: UInt64, _ result: Result<[LuaValue], PlasmaError>) {
        inbox.lock()
        completions.append((op, result))
        inbox.signal()
        inbox.unlock()
    }

    /// For calls where the coroutine cannot yield to the scheduler (a plan's own coroutine, a
    /// metamethod such as __tostring): the Lua thread is ours, so blocking it is allowed; an
    /// interrupt cancels the operation and ends the wait at once.
    func runSynchronously(_ L: OpaquePointer) -> Result<[LuaValue], PlasmaError> {
        let work: VMAPI.Work
        do {
            work = try makeOperation(L)
        } catch {
            return .failure(error)
        }
        let op = nextOp
        nextOp += 1
        let task = Task { [self] in deliver(op, await work()) }
        // Listed with the scheduler's tasks, so an interrupted one is settled before cleanup.
        tasks[op] = task
        inbox.lock()
        defer { inbox.unlock() }
        while true {
            if let i = completions.firstIndex(where: { $0.op == op }) {
                tasks[op] = nil
                return completions.remove(at: i).result
            }
            if let reason = interruptReason {
                task.cancel()
                return .failure(PlasmaError(.timeout, "plan \(reason)"))
            }
            inbox.wait()
        }
    }

    /// The operation's name, the id of the host it goes to, then its arguments.
    private func makeOperation(_ L: OpaquePointer) throws(PlasmaError) -> VMAPI.Work {
        guard let name = LuaStack.string(L, 1) else { throw PlasmaError(.internal, "operation name expected") }
        guard let host = Self.hostID(L, 2) else { throw PlasmaError(.internal, "\(name): host id expected") }
        let top = lua_gettop(L)
        let args = top >= 3 ? (3...top).map { LuaStack.value(L, $0) } : []
        let api = VMAPI(hosts: hosts, hostID: host, connector: connector, ephemeral: ephemeral, created: created,
                        unclaimed: unclaimed, deferredDeletes: deferredDeletes)
        return try api.make(name, args)
    }
}
