import CPlasmaSys
import Foundation
import GRPCCore
import GRPCNIOTransportHTTP2
@testable import PlasmaRPC
import PlasmaTestSupport
import PlasmaVMM
import Synchronization
import Testing

/// A real server (PlasmaServer, HTTP/2 over a unix socket) over a fake hypervisor, and a real
/// client: RemoteHost, or the generated stub for raw status codes.
final class Harness: Sendable {
    let fake: FakeHypervisor
    let dir: String
    let address: HostAddress
    let server: PlasmaServer
    let task: Task<Void, any Error>

    init(operationDelay: Duration = .zero, blockingCreate: Duration = .zero) async throws {
        fake = FakeHypervisor(operationDelay: operationDelay, blockingCreate: blockingCreate)
        var template = Array("/tmp/pvrpc.XXXXXX".utf8CString)
        guard mkdtemp(&template) != nil else { throw PlasmaError(.internal, "mkdtemp failed") }
        dir = String(cString: template)
        address = .unix(path: dir + "/s.sock")
        server = PlasmaServer(manager: VMManager(hypervisor: fake, lockTimeout: .seconds(2)), options: ServeOptions(listen: [address]))
        let ready = AsyncStream<[HostAddress]>.makeStream()
        let server = self.server
        task = Task { try await server.run { ready.continuation.yield($0); ready.continuation.finish() } }
        var bound: [HostAddress]?
        for await b in ready.stream { bound = b }
        guard bound == [address] else {
            _ = try await task.value
            throw PlasmaError(.internal, "server did not start")
        }
    }

    /// Stops the server and waits for it; removes the folder.
    func stop() async throws {
        server.shutdown()
        try await task.value
        try? FileManager.default.removeItem(atPath: dir)
    }

    /// A generous deadline for the first call: the whole test process shares two threads
    /// with suites that block theirs.
    func client() async throws -> RemoteHost { try await RemoteHost.connect(address, timeout: .seconds(120)) }

    /// The generated stub on a connection of its own, for raw status codes.
    func withStub<T: Sendable>(_ body: (Plasmavmc_V1_VmService.Client<HTTP2ClientTransport.Posix>) async throws -> T) async throws -> T {
        guard case .unix(let path) = address else { fatalError() }
        let transport = try HTTP2ClientTransport.Posix(target: .unixDomainSocket(path: path), transportSecurity: .plaintext)
        return try await withGRPCClient(transport: transport) { client in
            try await body(Plasmavmc_V1_VmService.Client(wrapping: client))
        }
    }

    static func with(operationDelay: Duration = .zero, blockingCreate: Duration = .zero,
                     _ body: (Harness) async throws -> Void) async throws {
        let h = try await Harness(operationDelay: operationDelay, blockingCreate: blockingCreate)
        do {
            try await body(h)
        } catch {
            try? await h.stop()
            throw error
        }
        try await h.stop()
    }
}

final class Counter: Sendable {
    private let m = Mutex(0)
    func add() { m.withLock { $0 += 1 } }
    var value: Int { m.withLock { $0 } }
}

func spec(_ name: String) throws -> VMSpec { VMSpec(name: try VMName(name), kernel: "/k") }

func pbSpec(_ name: String) -> Plasmavmc_V1_VmSpec {
    var s = Plasmavmc_V1_VmSpec()
    s.name = name
    s.kernel = "/k"
    return s
}

/// The status code a call fails with (nil when it succeeds).
func code<T>(_ body: () async throws -> T) async -> RPCError.Code? {
    do {
        _ = try await body()
        return nil
    } catch let e as RPCError {
        return e.code
    } catch {
        Issue.record("not an RPCError: \(error)")
        return nil
    }
}

@Suite("gRPC VmService over the fake hypervisor")
struct VmServiceTests {
    @Test("The whole life of a VM through RemoteHost: every state, as the local manager reports it")
    func lifecycleThroughRemoteHost() async throws {
        try await Harness.with { h in
            let host = try await h.client()
            let n = try VMName("t1")
            #expect(try await host.create(try spec("t1")).state == .created)
            #expect(try await host.start(n).state == .running)
            try await host.pause(n)
            #expect(try await host.status(n).state == .paused)
            try await host.resume(n)
            #expect(try await host.status(n).state == .running)
            let info = try await host.info(n)
            #expect(info.spec.kernel == "/k" && info.spec.cpus == 1 && info.spec.memory.mebibytes == 256)
            #expect(try await host.list().map(\.name) == [n])
            let outcome = try await host.stop(n, timeout: .seconds(5))
            #expect(outcome.step == .powerdown)
            let stopped = try await host.status(n)
            #expect(stopped.state == .stopped && stopped.reasonCode == .stop)
            try await host.delete(n, force: false)
            do {
                _ = try await host.status(n)
                Issue.record("status of a deleted VM answered")
            } catch let e as PlasmaError {
                #expect(e.code == .notFound)
                // The CLI's message, unchanged by the trip over the wire.
                #expect(e.message == "vm 't1' does not exist; see plasmavmc ls")
            }
            #expect(h.fake.calls == ["create t1", "start t1", "pause t1", "resume t1", "stop t1", "delete t1"])
            await host.close()
        }
    }

    @Test("Every error code: NOT_FOUND, INVALID_ARGUMENT, ALREADY_EXISTS, FAILED_PRECONDITION, and the plasmavmc code in metadata")
    func errorCodes() async throws {
        try await Harness.with { h in
            try await h.withStub { stub in
                var ref = Plasmavmc_V1_VmRef()
                ref.name = "nope"
                #expect(await code { try await stub.getVm(ref) } == .notFound)
                ref.name = "bad name/"
                #expect(await code { try await stub.getVm(ref) } == .invalidArgument)
                #expect(await code { try await stub.createVm(Plasmavmc_V1_CreateVmRequest()) } == .invalidArgument)

                var create = Plasmavmc_V1_CreateVmRequest()
                create.spec = pbSpec("a")
                create.spec.memoryMib = UInt64.max
                #expect(await code { try await stub.createVm(create) } == .invalidArgument)
                create.spec = pbSpec("a")
                create.spec.cpus = UInt32.max
                #expect(await code { try await stub.createVm(create) } == .invalidArgument)
                create.spec = pbSpec("a")
                create.spec.kernel = "relative/bzImage"
                #expect(await code { try await stub.createVm(create) } == .invalidArgument)
                create.spec = pbSpec("a")
                create.spec.networks = ["user,hostfwd=tcp::99999-:22"]
                #expect(await code { try await stub.createVm(create) } == .invalidArgument)
                create.spec = pbSpec("a")
                create.spec.accel = "warp"
                #expect(await code { try await stub.createVm(create) } == .invalidArgument)
                #expect(h.fake.calls.isEmpty, "no bad spec reached the backend")

                create.spec = pbSpec("a")
                _ = try await stub.createVm(create)
                do {
                    _ = try await stub.createVm(create)
                    Issue.record("a second create of 'a' succeeded")
                } catch let e as RPCError {
                    #expect(e.code == .alreadyExists)
                    #expect(e.metadata[stringValues: ErrorMapping.codeKey].map { $0 } == ["alreadyExists"])
                    #expect(e.message == "vm 'a' already exists; delete it first or pick another name")
                }
                ref.name = "a"
                #expect(await code { try await stub.pauseVm(ref) } == .failedPrecondition)
                #expect(await code { try await stub.resumeVm(ref) } == .failedPrecondition)
                var del = Plasmavmc_V1_DeleteVmRequest()
                del.name = "a"
                #expect(await code { try await stub.deleteVm(del) } == .failedPrecondition)

                for bad in [Double.nan, .infinity, -1, 1e300] {
                    var stop = Plasmavmc_V1_StopVmRequest()
                    stop.name = "a"
                    stop.timeoutSeconds = bad
                    #expect(await code { try await stub.stopVm(stop) } == .invalidArgument, "timeout \(bad)")
                }
                var read = Plasmavmc_V1_ReadConsoleRequest()
                read.name = "a"
                read.offset = -1
                #expect(await code { try await stub.readConsole(read) { r in for try await _ in r.messages {} } } == .invalidArgument)
                var events = Plasmavmc_V1_ListEventsRequest()
                events.name = "a"
                events.offset = -5
                #expect(await code { try await stub.listEvents(events) } == .invalidArgument)
                var mon = Plasmavmc_V1_MonitorCommandRequest()
                mon.name = "a"
                #expect(await code { try await stub.monitorCommand(mon) } == .invalidArgument)
                del.force = true
                _ = try await stub.deleteVm(del)
                #expect(await code { try await stub.deleteVm(del) } == .notFound)
            }
        }
    }

    @Test("The mapping table: each plasmavmc code to its status code and back")
    func mappingTable() {
        let table: [(PlasmaError.Code, RPCError.Code)] = [
            (.notFound, .notFound), (.invalidArgument, .invalidArgument), (.alreadyExists, .alreadyExists),
            (.invalidState, .failedPrecondition), (.timeout, .deadlineExceeded), (.unavailable, .unavailable),
            (.launchFailed, .internalError), (.qmp, .internalError), (.internal, .internalError),
        ]
        for (p, r) in table {
            let e = ErrorMapping.rpcError(PlasmaError(p, "m", cause: "c"))
            #expect(e.code == r)
            #expect(e.message == "m (c)")
            let back = ErrorMapping.plasmaError(e, address: "unix:/x")
            #expect(back.code == p && back.message == "m (c)")
        }
        // A failure of the transport itself names the host.
        let lost = ErrorMapping.plasmaError(RPCError(code: .unavailable, message: "connection refused"), address: "unix:/x")
        #expect(lost.code == .unavailable && lost.message.contains("unix:/x"))
    }

    @Test("A deadline shorter than the operation: DEADLINE_EXCEEDED, the handler is cancelled, and the server keeps serving")
    func deadline() async throws {
        try await Harness.with(operationDelay: .seconds(120)) { h in
            try await h.withStub { stub in
                var create = Plasmavmc_V1_CreateVmRequest()
                create.spec = pbSpec("slow")
                var options = CallOptions.defaults
                options.timeout = .seconds(2)
                #expect(await code { try await stub.createVm(create, options: options) } == .deadlineExceeded)
                #expect(await code { try await stub.listVms(Plasmavmc_V1_ListVmsRequest()) } == nil)
                // The handler was cancelled at the deadline: the fake's create (120 s) was cut
                // short. (On a starved test process the call can expire before its handler
                // began; then it must never begin.)
                var cancelled = false
                for _ in 0..<600 where !cancelled {
                    try await Task.sleep(for: .milliseconds(100))
                    cancelled = h.fake.cancelledOperations.contains("create slow")
                }
                if h.fake.calls.contains("create slow") {
                    #expect(cancelled, "the handler ran on past the client's deadline")
                }
            }
        }
    }

    @Test("Calls whose backend blocks its thread do not hold up other calls")
    func blockedBackendDoesNotStallOthers() async throws {
        try await Harness.with(blockingCreate: .seconds(20)) { h in
            let host = try await h.client()
            let finished = Counter()
            let creates = (0..<4).map { i in
                Task {
                    _ = try await host.create(try spec("b\(i)"))
                    finished.add()
                }
            }
            // Until every create is in the backend (blocking a thread each), then a list. Dispatch
            // adds threads while others are blocked, but may take a moment on a loaded machine:
            // hence creates that block for 20 s.
            for _ in 0..<600 where h.fake.enteredCreates < 4 {
                try await Task.sleep(for: .milliseconds(20))
            }
            let listed = try await host.list()
            #expect(finished.value == 0, "the list waited for blocked creates")
            #expect(listed.isEmpty, "the blocked creates had not made their VMs yet")
            for t in creates { try await t.value }
            for i in 0..<4 { try await host.delete(try VMName("b\(i)"), force: true) }
            await host.close()
        }
    }

    @Test("WatchVm of one VM: its events in order, then 'deleted', then the stream ends")
    func watchOne() async throws {
        try await Harness.with { h in
            let host = try await h.client()
            let n = try VMName("w1")
            _ = try await host.create(try spec("w1"))
            let started = AsyncStream<Void>.makeStream()
            let watcher = Task {
                try await h.withStub { stub in
                    var request = Plasmavmc_V1_WatchVmRequest()
                    request.name = "w1"
                    request.replay = true
                    return try await stub.watchVm(request) { response in
                        var kinds: [String] = []
                        for try await e in response.messages {
                            #expect(e.name == "w1")
                            kinds.append(e.kind)
                            if kinds.count == 1 { started.continuation.yield() }
                        }
                        return kinds
                    }
                }
            }
            for await _ in started.stream { break }
            _ = try await host.start(n)
            try await host.pause(n)
            try await host.resume(n)
            _ = try await host.stop(n, timeout: .seconds(1))
            try await host.delete(n, force: false)
            let kinds = try await watcher.value
            #expect(kinds.first == "create")
            #expect(kinds.last == "deleted")
            let lifecycle = kinds.filter { ["start", "pause", "resume", "stop"].contains($0) }
            #expect(lifecycle == ["start", "pause", "resume", "stop"])
            await host.close()
        }
    }

    @Test("WatchVm: events logged just before a delete still come before 'deleted' (one VM and every VM)")
    func watchKeepsTheLastEventsBeforeADelete() async throws {
        try await Harness.with { h in
            let host = try await h.client()
            let n = try VMName("quick")
            _ = try await host.create(try spec("quick"))
            let started = AsyncStream<Void>.makeStream()
            func watch(_ name: String) -> Task<[String], any Error> {
                Task {
                    try await h.withStub { stub in
                        var request = Plasmavmc_V1_WatchVmRequest()
                        request.name = name
                        request.replay = true
                        return try await stub.watchVm(request) { response in
                            var kinds: [String] = []
                            for try await e in response.messages where e.name == "quick" {
                                kinds.append(e.kind)
                                if kinds.count == 1 { started.continuation.yield() }
                                if e.kind == "deleted" && name.isEmpty { break }
                            }
                            return kinds
                        }
                    }
                }
            }
            let one = watch("quick"), every = watch("")
            var ready = 0
            for await _ in started.stream {
                ready += 1
                if ready == 2 { break }
            }
            // Start, stop and delete within one poll interval of the watches (20 ms): the
            // events are logged, then the VM is gone before the watches look again.
            _ = try await h.fake.start(n)
            _ = try await h.fake.stop(n, timeout: .seconds(1))
            try await h.fake.delete(n)
            for (label, task) in [("one VM", one), ("every VM", every)] {
                let kinds = try await task.value
                #expect(kinds == ["create", "start", "stop", "delete", "deleted"], "\(label)")
            }
            await host.close()
        }
    }

    @Test("WatchVm of every VM sees VMs created after it began, from their first event")
    func watchAll() async throws {
        try await Harness.with { h in
            let host = try await h.client()
            let seen = AsyncStream<String>.makeStream()
            let watcher = Task {
                try await h.withStub { stub in
                    try await stub.watchVm(Plasmavmc_V1_WatchVmRequest()) { response in
                        for try await e in response.messages {
                            seen.continuation.yield("\(e.name) \(e.kind)")
                        }
                    }
                }
            }
            // Until the watch is live (it has seen an event of "early"), nudge "early".
            _ = try await host.create(try spec("early"))
            let early = try VMName("early")
            _ = try await host.start(early)
            var got: [String] = []
            var live = false
            let nudger = Task {
                while !Task.isCancelled {
                    try? await host.pause(early)
                    try? await host.resume(early)
                    try? await Task.sleep(for: .milliseconds(50))
                }
            }
            for await line in seen.stream {
                if line.hasPrefix("early ") {
                    if !live {
                        live = true
                        nudger.cancel()
                        _ = await nudger.result
                        _ = try await host.create(try spec("late"))
                        _ = try await host.start(try VMName("late"))
                    }
                    continue
                }
                got.append(line)
                if line == "late start" { break }
            }
            #expect(got == ["late create", "late start"])
            watcher.cancel()
            _ = try? await watcher.value
            try await host.delete(try VMName("late"), force: true)
            try await host.delete(early, force: true)
            await host.close()
        }
    }

    @Test("A cancelled watch ends on the server too: shutdown does not wait for it")
    func cancelledWatch() async throws {
        let h = try await Harness()
        let host = try await h.client()
        _ = try await host.create(try spec("c1"))
        let watcher = Task {
            try await h.withStub { stub in
                var request = Plasmavmc_V1_WatchVmRequest()
                request.name = "c1"
                return try await stub.watchVm(request) { response in
                    for try await _ in response.messages {}
                }
            }
        }
        try await Task.sleep(for: .milliseconds(200))
        watcher.cancel()
        _ = try? await watcher.value
        await host.close()
        try await h.stop()  // returns: no handler is left running
    }

    @Test("Shutdown ends open streams normally (watch and followed console) and run returns")
    func shutdownEndsStreams() async throws {
        let h = try await Harness()
        let host = try await h.client()
        let n = try VMName("s1")
        _ = try await host.create(try spec("s1"))
        _ = try await host.start(n)
        let live = Counter()
        let watch = Task {
            try await h.withStub { stub in
                var request = Plasmavmc_V1_WatchVmRequest()
                request.name = "s1"
                return try await stub.watchVm(request) { response in
                    var first = true
                    for try await _ in response.messages where first {
                        first = false
                        live.add()
                    }
                    return "ended"
                }
            }
        }
        let follow = Task {
            try await h.withStub { stub in
                var request = Plasmavmc_V1_ReadConsoleRequest()
                request.name = "s1"
                request.follow = true
                return try await stub.readConsole(request) { response in
                    var first = true
                    for try await chunk in response.messages where first && !chunk.data.isEmpty {
                        first = false
                        live.add()
                    }
                    return "ended"
                }
            }
        }
        // Until both streams have delivered something.
        for _ in 0..<1200 where live.value < 2 {
            try? await host.pause(n)
            try? await host.resume(n)
            h.fake.appendConsole(n, "x")
            try await Task.sleep(for: .milliseconds(50))
        }
        #expect(live.value == 2)
        h.server.shutdown()
        #expect(try await watch.value == "ended")
        #expect(try await follow.value == "ended")
        try await h.task.value
        await host.close()
        try? FileManager.default.removeItem(atPath: h.dir)
    }

    @Test("Console: read from an offset, the tail, follow as the guest prints, and typing")
    func console() async throws {
        try await Harness.with { h in
            let host = try await h.client()
            let n = try VMName("k1")
            _ = try await host.create(try spec("k1"))
            h.fake.appendConsole(n, "hello\nworld\n")
            #expect(try await host.consoleLog(n) == "hello\nworld\n")
            #expect(try await host.consoleLog(n, maxBytes: 6) == "world\n")
            let (text, next) = try await host.consoleRead(n, from: 6)
            #expect(text == "world\n" && next == 12)
            try await host.sendConsole(n, "ls\n")
            #expect(h.fake.typed(n) == "ls\n")
            let followed = Task {
                try await h.withStub { stub in
                    var request = Plasmavmc_V1_ReadConsoleRequest()
                    request.name = "k1"
                    request.offset = 12
                    request.follow = true
                    return try await stub.readConsole(request) { response in
                        var got = Data()
                        for try await chunk in response.messages {
                            got.append(chunk.data)
                            if got.count >= 5 { break }
                        }
                        return String(decoding: got, as: UTF8.self)
                    }
                }
            }
            try await Task.sleep(for: .milliseconds(100))
            h.fake.appendConsole(n, "later")
            #expect(try await followed.value == "later")
            try await host.delete(n, force: true)
            await host.close()
        }
    }

    @Test("A remote console connection: what the guest prints from now on comes out, what is written is typed; closing it ends the bridge")
    func remoteConsoleConnection() async throws {
        try await Harness.with { h in
            let host = try await h.client()
            let n = try VMName("rc1")
            _ = try await host.create(try spec("rc1"))
            h.fake.appendConsole(n, "old output\n")
            let fd = try await host.consoleConnection(n)
            #expect("ls\n".withCString { write(fd, $0, 3) } == 3)
            var typed = ""
            for _ in 0..<100 where typed.isEmpty {
                try await Task.sleep(for: .milliseconds(50))
                typed = h.fake.typed(n)
            }
            #expect(typed == "ls\n")
            // The output stream starts at the end as it is when the server gets the call:
            // print until something arrives.
            let printer = Task {
                while !Task.isCancelled {
                    h.fake.appendConsole(n, "new output\n")
                    try? await Task.sleep(for: .milliseconds(100))
                }
            }
            var got = Data()
            var buf = [UInt8](repeating: 0, count: 256)
            var tv = timeval(tv_sec: 20, tv_usec: 0)
            setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
            while !String(decoding: got, as: UTF8.self).contains("\n") {
                let r = read(fd, &buf, buf.count)
                if r <= 0 { break }
                got.append(contentsOf: buf[0..<r])
            }
            printer.cancel()
            _ = await printer.result
            #expect(String(decoding: got, as: UTF8.self).hasPrefix("new output\n"))
            #expect(!String(decoding: got, as: UTF8.self).contains("old"))
            close(fd)
            try await host.delete(n, force: true)
            await host.close()
        }
    }

    @Test("Events page and raw QMP through the service")
    func eventsAndMonitor() async throws {
        try await Harness.with { h in
            let host = try await h.client()
            let n = try VMName("e1")
            _ = try await host.create(try spec("e1"))
            _ = try await host.start(n)
            let page = try await host.events(n, from: 0)
            #expect(page.events.map(\.kind) == ["create", "start"])
            #expect(try await host.events(n, from: page.next).events.isEmpty)
            #expect(try await host.monitorCommand(n, "query-status", argumentsJSON: nil).contains("running"))
            try await host.delete(n, force: true)
            await host.close()
        }
    }

    @Test("A request over the size limit is refused and the server keeps serving")
    func oversizedRequest() async throws {
        try await Harness.with { h in
            let host = try await h.client()
            _ = try await host.create(try spec("big"))
            try await h.withStub { stub in
                var request = Plasmavmc_V1_SendConsoleRequest()
                request.name = "big"
                request.data = Data(repeating: 0x61, count: 2 << 20)
                let c = await code { try await stub.sendConsole(request) }
                #expect(c != nil, "a 2 MiB request was accepted")
            }
            #expect(h.fake.typed(try VMName("big")).isEmpty)
            #expect(try await host.list().count == 1)
            try await host.delete(try VMName("big"), force: true)
            await host.close()
        }
    }

    @Test("The unix socket is mode 0600; a second server on its path fails and the first keeps serving")
    func socketRules() async throws {
        try await Harness.with { h in
            guard case .unix(let path) = h.address else { return }
            var st = stat()
            #expect(lstat(path, &st) == 0)
            #expect(st.st_mode & 0o777 == 0o600)
            let second = PlasmaServer(manager: VMManager(hypervisor: FakeHypervisor()), options: ServeOptions(listen: [h.address]))
            do {
                try await second.run { _ in Issue.record("second server listened") }
                Issue.record("second server ran")
            } catch let e as PlasmaError {
                #expect(e.code == .alreadyExists)
                #expect(e.message.contains("another server is already listening on unix:\(path)"))
            }
            let host = try await h.client()
            #expect(try await host.list().isEmpty)
            await host.close()
        }
    }

    @Test("A stale socket file of a killed server is replaced; the socket is removed at shutdown")
    func staleSocket() async throws {
        var template = Array("/tmp/pvrpc.XXXXXX".utf8CString)
        _ = mkdtemp(&template)
        let dir = String(cString: template)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let path = dir + "/s.sock"
        let fd = path.withCString { plasma_unix_listen($0, 1) }
        close(fd)  // a socket file no one listens on
        let server = PlasmaServer(manager: VMManager(hypervisor: FakeHypervisor()), options: ServeOptions(listen: [.unix(path: path)]))
        let ready = AsyncStream<Void>.makeStream()
        let task = Task { try await server.run { _ in ready.continuation.yield() } }
        for await _ in ready.stream { break }
        let host = try await RemoteHost.connect(.unix(path: path), timeout: .seconds(120))
        #expect(try await host.list().isEmpty)
        await host.close()
        server.shutdown()
        try await task.value
        #expect(!FileManager.default.fileExists(atPath: path))
    }

    @Test("The security rules are checked before anything listens")
    func securityRules() throws {
        func refused(_ o: ServeOptions, _ text: String) {
            do {
                try o.validate()
                Issue.record("accepted: \(o.listen)")
            } catch let e as PlasmaError {
                #expect(e.code == .invalidArgument)
                #expect(e.message.contains(text), "\(e.message)")
            } catch {
                Issue.record("\(error)")
            }
        }
        refused(ServeOptions(listen: [.tcp(host: "0.0.0.0", port: 7000)]), "refusing plaintext on tcp:0.0.0.0:7000")
        refused(ServeOptions(listen: [.tcp(host: "192.168.1.5", port: 7000)]), "refusing plaintext")
        refused(ServeOptions(listen: [.tcp(host: "127.0.0.1", port: 7000)], tlsCert: "/etc/hostname"), "go together")
        refused(ServeOptions(listen: [.tcp(host: "127.0.0.1", port: 7000)], tlsClientCA: "/etc/hostname"), "needs --tls-cert")
        refused(ServeOptions(listen: [.tcp(host: "0.0.0.0", port: 7000)], tlsCert: "/nonexistent", tlsKey: "/nonexistent"), "cannot read /nonexistent")
        refused(ServeOptions(listen: []), "nothing to listen on")
        refused(ServeOptions(listen: [.unix(path: "/tmp/a"), .unix(path: "/tmp/a")]), "given twice")
        try ServeOptions(listen: [.tcp(host: "127.0.0.1", port: 0), .tcp(host: "::1", port: 0), .tcp(host: "localhost", port: 0)]).validate()
    }

    @Test("Addresses: unix:PATH and tcp:HOST:PORT parsed, everything else refused with the reason")
    func addresses() throws {
        #expect(try HostAddress(parsing: "unix:/run/x.sock") == .unix(path: "/run/x.sock"))
        #expect(try HostAddress(parsing: "tcp:127.0.0.1:7000") == .tcp(host: "127.0.0.1", port: 7000))
        #expect(try HostAddress(parsing: "tcp:[::1]:7000") == .tcp(host: "::1", port: 7000))
        #expect(try HostAddress(parsing: "tcp:[::1]:7000").description == "tcp:[::1]:7000")
        for bad in ["", "unix:", "http://x", "tcp:host", "tcp::80", "tcp:h:99999", "tcp:h:-1", "tcp:h:1e3", "tcp:a b:80",
                    "unix:/" + String(repeating: "a", count: 200), "tcp:h:80\0"] {
            #expect(throws: PlasmaError.self, "\(bad)") { try HostAddress(parsing: bad) }
        }
        #expect(HostAddress.tcp(host: "127.0.0.2", port: 1).isLoopback)
        #expect(!HostAddress.tcp(host: "127.0.0.256", port: 1).isLoopback)
        #expect(!HostAddress.tcp(host: "10.0.0.1", port: 1).isLoopback)
    }

    /// Records the request metadata of every call.
    final class MetadataRecorder: ServerInterceptor {
        let seen = Mutex<[Metadata]>([])
        func intercept<Input: Sendable, Output: Sendable>(
            request: StreamingServerRequest<Input>, context: ServerContext,
            next: @Sendable (StreamingServerRequest<Input>, ServerContext) async throws -> StreamingServerResponse<Output>
        ) async throws -> StreamingServerResponse<Output> {
            seen.withLock { $0.append(request.metadata) }
            return try await next(request, context)
        }
    }

    @Test("The server's transport drops the clients' grpc-timeout (gRPC's deadline timer held memory until it)",
          arguments: [false, true])
    func deadlineHeaderIsDropped(stripping: Bool) async throws {
        var template = Array("/tmp/pvrpc.XXXXXX".utf8CString)
        guard mkdtemp(&template) != nil else { throw PlasmaError(.internal, "mkdtemp failed") }
        let dir = String(cString: template)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let fd = (dir + "/s.sock").withCString { plasma_unix_listen($0, 16) }
        try #require(fd >= 0)
        let posix = HTTP2ServerTransport.Posix(listeningSocketDescriptor: Int(fd), transportSecurity: .plaintext)
        let recorder = MetadataRecorder()
        let service = VmService(manager: VMManager(hypervisor: FakeHypervisor()))
        @Sendable func serve<T: ListeningServerTransport>(_ transport: T) async throws {
            try await withGRPCServer(transport: transport, services: [service], interceptors: [recorder]) { server in
                let client = HTTP2ClientTransport.Posix.self
                let transport = try client.init(target: .unixDomainSocket(path: dir + "/s.sock"), transportSecurity: .plaintext)
                try await withGRPCClient(transport: transport) { c in
                    var options = CallOptions.defaults
                    options.timeout = .seconds(120)   // sent as grpc-timeout; generous: the test process may be starved
                    var ref = Plasmavmc_V1_VmRef()
                    ref.name = "nope"
                    let stub = Plasmavmc_V1_VmService.Client(wrapping: c)
                    #expect(await code { try await stub.getVm(ref, options: options) } == .notFound)
                }
                server.beginGracefulShutdown()
            }
        }
        if stripping {
            try await serve(DeadlineStrippingTransport(posix))
        } else {
            try await serve(posix)
        }
        let seen = recorder.seen.withLock { $0 }
        #expect(seen.count == 1)
        // Without the wrapper the header arrives (so the check below is not vacuous).
        #expect(seen.first?[stringValues: "grpc-timeout"].contains(where: { _ in true }) == !stripping)
    }

    @Test("Connecting where no server answers fails at once, naming the address")
    func noServer() async throws {
        do {
            _ = try await RemoteHost.connect(.unix(path: "/tmp/plasmavmc-no-such-server.sock"), timeout: .seconds(5))
            Issue.record("connected to nothing")
        } catch let e as PlasmaError {
            #expect(e.code == .unavailable)
            #expect(e.message.contains("unix:/tmp/plasmavmc-no-such-server.sock"))
        }
    }
}
