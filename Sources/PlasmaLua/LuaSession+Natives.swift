import CLua
import CLuaShim
import Foundation
import PlasmaVMM

/// The native surface under the prelude (`__plasma`, taken and hidden by the prelude). Host
/// functions never raise: they return `.error` and the C trampoline raises once the Swift
/// frame is gone.
extension LuaSession {
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

    func installNatives() {
        lua_createtable(L, 0, 16)
        // The token operations yield: a table only the prelude holds.
        lua_createtable(L, 0, 0)
        lua_pushvalue(L, -1)
        tokenRef = luaL_ref(L, plasma_registryindex())
        lua_setfield(L, -2, "token")
        // The scheduler's coroutines, weakly keyed.
        lua_createtable(L, 0, 0)
        lua_createtable(L, 0, 1)
        LuaStack.pushString(L, "k")
        lua_setfield(L, -2, "__mode")
        lua_setmetatable(L, -2)
        lua_pushvalue(L, -1)
        scheduledRef = luaL_ref(L, plasma_registryindex())
        lua_setfield(L, -2, "scheduled")
        plasma_push_interrupt_check(L)
        lua_setfield(L, -2, "check_interrupt")
        plasma_push_restore_hook(L)
        lua_setfield(L, -2, "restore_hook")
        push(L, VMAPI.reference)
        lua_setfield(L, -2, "api")
        // The session's own host (id 0), for VM objects' tostring and info.
        if let own = hosts.entry(0)?.host {
            push(L, .table(["address": .string(own.address), "is_local": .bool(own.isLocal)]))
            lua_setfield(L, -2, "host0")
        }

        register("op") { [unowned self] L in
            switch self.startOperation(L) {
            case .success(let op):
                lua_pushinteger(L, lua_Integer(Int64(bitPattern: op)))
                return .results(1)
            case .failure(let e): return .error(e.description)
            }
        }
        register("sync") { [unowned self] L in
            switch self.runSynchronously(L) {
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
        // newvm(host, name): the VM object; the plan has claimed the VM.
        register("newvm") { [unowned self] L in
            guard let host = Self.hostID(L, 1), let name = LuaStack.string(L, 2) else { return .error("newvm: host and name expected") }
            self.unclaimed.remove(VMRef(host: host, name: name))
            self.push(L, .vm(name, host: host))
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
            guard let host = Self.hostID(L, 1), let name = LuaStack.string(L, 2),
                  let s = self.fastStatus(VMRef(host: host, name: name)) else { return .results(0) }
            let values = VMAPI.statusValues(s)
            for v in values { self.push(L, v) }
            return .results(Int32(values.count))
        }
        register("defer_delete") { [unowned self] L in
            if let host = Self.hostID(L, 1), let name = LuaStack.string(L, 2) {
                self.deferredDeletes.append(VMRef(host: host, name: name))
            }
            return .results(0)
        }
        // mark_closed(host): h's __close where it cannot yield (an error path): later calls
        // through it raise; its VMs are removed and its connection closed when the session ends.
        register("mark_closed") { [unowned self] L in
            if let host = Self.hostID(L, 1) { _ = self.hosts.markClosed(host) }
            return .results(0)
        }
        // seconds(value, place, field, fallback, unlimited): the checked number of seconds,
        // math.huge for "no limit" where allowed; raises otherwise.
        register("seconds") { L in
            let place = LuaStack.string(L, 2) ?? "?", field = LuaStack.string(L, 3) ?? "?"
            if let typeError = Self.typeError(L, 1, place, field) { return .error(typeError) }
            do throws(PlasmaError) {
                let s = try NumberCheck.seconds(LuaStack.value(L, 1), place, field, fallback: LuaStack.value(L, 4).number ?? 0,
                                                unlimited: lua_toboolean(L, 5) != 0)
                lua_pushnumber(L, s ?? .infinity)
                return .results(1)
            } catch {
                return .error(error.message)
            }
        }
        // whole(value, place, field, fallback): a checked whole number >= 0 (offsets, sizes).
        register("whole") { L in
            let place = LuaStack.string(L, 2) ?? "?", field = LuaStack.string(L, 3) ?? "?"
            if let typeError = Self.typeError(L, 1, place, field) { return .error(typeError) }
            do throws(PlasmaError) {
                let n = try NumberCheck.whole(LuaStack.value(L, 1), place, field, fallback: Int(LuaStack.value(L, 4).int ?? 0))
                lua_pushinteger(L, lua_Integer(n))
                return .results(1)
            } catch {
                return .error(error.message)
            }
        }
        lua_setglobal(L, "__plasma")
    }

    /// nil when the value at `index` is a number or nil, else the type error's message.
    private static func typeError(_ L: OpaquePointer, _ index: Int32, _ place: String, _ field: String) -> String? {
        let t = lua_type(L, index)
        if t == LUA_TNUMBER || t == LUA_TNIL || t == LUA_TNONE { return nil }
        return "\(place): '\(field)' must be a number, got \(String(cString: lua_typename(L, t)))"
    }

    /// A host id argument (an integer the prelude passes).
    static func hostID(_ L: OpaquePointer, _ index: Int32) -> Int? {
        guard lua_isinteger(L, index) != 0 else { return nil }
        var isnum: Int32 = 0
        return Int(plasma_tointeger(L, index, &isnum))
    }

    /// The status of a local VM from a held monitor, or nil (remote hosts have no probes).
    func fastStatus(_ ref: VMRef) -> VMStatus? {
        guard let entry = hosts.entry(ref.host), entry.host.isLocal, !entry.closed else { return nil }
        if let probe = probes[ref] {
            if let s = probe.status() { return s }
            probe.close()
            probes[ref] = nil
        }
        if let since = noProbeSince[ref], ContinuousClock.now - since < .seconds(2) { return nil }
        guard let vm = try? VMName(ref.name), let probe = entry.host.statusProbe(vm), let s = probe.status() else {
            noProbeSince[ref] = ContinuousClock.now
            return nil
        }
        noProbeSince[ref] = nil
        probes[ref] = probe
        return s
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
