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
///
/// The parts live in files of their own: the scheduler (`LuaSession+Scheduler`), the native
/// functions (`LuaSession+Natives`), VM objects (`LuaSession+VMObjects`), cleanup at the end
/// (`LuaSession+Cleanup`), the hosts it talks to (`LuaSession+Hosts`); the API's operations
/// are defined once in `VMAPI`.
public final class LuaSession: @unchecked Sendable {
    /// Host 0 is the session's own (`vm`): the local VM manager, or a remote host given with
    /// --host; `vm.connect` adds more. Shared with tasks and the emergency exit.
    let hosts: HostTable
    /// Makes host handles for `vm.connect`; nil: the session reaches no other host.
    let connector: HostConnector?
    let options: PlanOptions
    /// The interrupt flag the state's count hook reads; set from any thread.
    let control: OpaquePointer

    // Shared with tasks, timers and signal handlers: guarded by `inbox`.
    let inbox = NSCondition()
    var completions: [(op: UInt64, result: Result<[LuaValue], PlasmaError>)] = []
    var interruptReason: String?
    var interruptKind: PlanOutcome.Kind = .interrupted
    /// True while a chunk runs; interrupts outside of one are ignored.
    var active = false
    /// Set when a run has ended (under `inbox`): an interrupt that came before the run began
    /// is retried until the run is active or has ended.
    var runEnded = false

    /// VMs the session made ephemeral (removed at the end), those whose `<close>` deletion is
    /// left to cleanup, and every VM it created, each with its host. Shared with tasks and the
    /// emergency exit.
    let ephemeral = RefList()
    let deferredDeletes = RefList()
    let created = RefList()
    /// VMs created by an operation whose result no Lua code received yet (see VMAPI.unclaimed).
    let unclaimed = RefList()

    // Lua thread only.
    /// The state; valid between `open` and `close`, on the session's thread only.
    public private(set) var L: OpaquePointer!
    var nextOp: UInt64 = 1
    var tasks: [UInt64: Task<Void, Never>] = [:]
    /// The coroutine that started each operation (only it may wait for the result).
    var owners: [UInt64: Int] = [:]
    var waiting: [UInt64: Int] = [:]
    var coroutines: [Int: Coroutine] = [:]
    var groups: [Int: Group] = [:]
    var runnable: [(Int, Resume)] = []
    var nextCoroutine = 1
    /// The scheduler coroutine being resumed, if any.
    var current: Int?
    var hostFunctions: [HostFunction] = []
    /// Registry references: the token operations yield, and the weak set of the scheduler's
    /// coroutines (the prelude tells them from a plan's own coroutines with it).
    var tokenRef: Int32 = LUA_REFNIL
    var scheduledRef: Int32 = LUA_REFNIL
    /// Status probes of local VMs, and when a VM last had none (to retry only now and then).
    var probes: [VMRef: any VMStatusProbe] = [:]
    var noProbeSince: [VMRef: ContinuousClock.Instant] = [:]
    var mainResult: Ending?
    /// VMs that could not be removed by `close`, with the reason.
    public private(set) var cleanupFailures: [CleanupFailure] = []

    /// A session whose `vm` drives `host`; `connector` lets plans reach other hosts with
    /// `vm.connect` (without one, `vm.connect` raises). The caller keeps `host` (and closes it);
    /// the session closes the hosts `vm.connect` made when it ends.
    public init(host: any VMHost, connector: HostConnector? = nil, options: PlanOptions) {
        self.hosts = HostTable(host)
        self.connector = connector
        self.options = options
        self.control = plasma_control_new()
    }

    /// A session on the local VM manager, reaching no other host.
    public convenience init(manager: VMManager, options: PlanOptions) {
        self.init(host: manager, options: options)
    }

    deinit {
        plasma_control_free(control)
    }

    /// What one chunk did.
    public struct ChunkOutcome {
        public var kind: PlanOutcome.Kind
        public var message: String?
    }

    /// Makes the state: the interrupt hook (before any coroutine exists, so all inherit it),
    /// natives, globals, the prelude. Returns an error message on failure.
    public func open() -> String? {
        guard let state = plasma_lua_new() else { return "cannot create a Lua state" }
        L = state
        plasma_install_interrupts(L, control)
        installNatives()
        setupGlobals()
        if let error = loadChunk(EmbeddedLua.vm, "=plasma.vm") {
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
        let co = newCoroutine()
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
        runEnded = true
        interruptReason = nil
        plasma_control_clear(control)
        inbox.unlock()
        return outcome
    }

    /// Ends the session: removes ephemeral VMs and deferred `<close>` deletions (unless
    /// `keep`), each on its own host, closes the hosts `vm.connect` made, closes the state.
    /// Returns every VM the session created; VMs that could not be removed are in
    /// `cleanupFailures`.
    @discardableResult
    public func close(keep: Bool = false) -> [HostedVM] {
        for p in probes.values { p.close() }
        probes = [:]
        if !keep { cleanupFailures = removeDoomedVMs() }
        releaseHosts()
        lua_close(L)
        L = nil
        return created.all.map(hosted)
    }

    /// Stops the running chunk: its Lua code fails at its next instruction count check (and
    /// again at every later one, so a pcall cannot swallow it), and its pending operations are
    /// cancelled. Safe from any thread (signal handler, timer). Ignored when no chunk runs.
    /// Returns whether a chunk was running.
    /// Whether a run has ended.
    public var hasEnded: Bool {
        inbox.lock()
        defer { inbox.unlock() }
        return runEnded
    }

    @discardableResult
    public func interrupt(_ why: String, as kind: PlanOutcome.Kind = .interrupted) -> Bool {
        inbox.lock()
        defer { inbox.unlock() }
        guard active else { return false }
        if interruptReason == nil {
            interruptReason = why
            interruptKind = kind
            _ = why.withCString { plasma_control_interrupt(control, $0) }
        }
        inbox.signal()
        return true
    }

    func setupGlobals() {
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

    func loadChunk(_ source: String, _ name: String) -> String? {
        let status = source.withCString { plasma_load(L, $0, strlen($0), name) }
        if status != LUA_OK {
            let msg = LuaStack.describe(L, -1)
            plasma_pop(L, 1)
            return msg
        }
        lua_settop(L, 0)
        return nil
    }
}

/// A list of VMs (each with its host) shared between the Lua thread and operation tasks.
final class RefList: Sendable {
    private let refs = Mutex<[VMRef]>([])
    func append(_ r: VMRef) { refs.withLock { $0.append(r) } }
    func remove(_ r: VMRef) { refs.withLock { $0.removeAll { $0 == r } } }
    func contains(_ r: VMRef) -> Bool { refs.withLock { $0.contains(r) } }
    var all: [VMRef] { refs.withLock { $0 } }
}

func formatSeconds(_ s: Double) -> String {
    s == s.rounded() && abs(s) < 1e15 ? "\(Int64(s))s" : "\((s * 1000).rounded() / 1000)s"
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
