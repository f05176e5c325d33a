import Foundation
@testable import PlasmaLua
import PlasmaTestSupport
import PlasmaVMM
import Synchronization
import Testing

/// A host reached over the network, as PlasmaRPC's gRPC client is: a VM manager over a fake
/// hypervisor that says it is elsewhere (not local, its own address) and fails once closed.
final class FakeRemoteHost: VMHost {
    let manager: VMManager
    let address: String
    var isLocal: Bool { false }
    private let closed = Mutex(false)
    let tls: HostTLS?

    init(_ hypervisor: FakeHypervisor, address: String, tls: HostTLS? = nil) {
        manager = VMManager(hypervisor: hypervisor)
        self.address = address
        self.tls = tls
    }

    var isClosed: Bool { closed.withLock { $0 } }

    private func m() throws -> VMManager {
        guard !isClosed else { throw PlasmaError(.unavailable, "\(address): the connection is closed") }
        return manager
    }

    func create(_ spec: VMSpec) async throws -> VMStatus { try await m().create(spec) }
    func start(_ name: VMName) async throws -> VMStatus { try await m().start(name) }
    func status(_ name: VMName) async throws -> VMStatus { try await m().status(name) }
    func info(_ name: VMName) async throws -> VMInfo { try await m().info(name) }
    func stop(_ name: VMName, timeout: Duration) async throws -> StopOutcome { try await m().stop(name, timeout: timeout) }
    func kill(_ name: VMName) async throws { try await m().kill(name) }
    func pause(_ name: VMName) async throws { try await m().pause(name) }
    func resume(_ name: VMName) async throws { try await m().resume(name) }
    func delete(_ name: VMName, force: Bool) async throws { try await m().delete(name, force: force) }
    func list() async throws -> [VMListEntry] { try await m().list() }
    func consoleLog(_ name: VMName, maxBytes: Int?) async throws -> String { try await m().consoleLog(name, maxBytes: maxBytes) }
    func consoleRead(_ name: VMName, from offset: Int) async throws -> (text: String, next: Int) {
        try await m().consoleRead(name, from: offset)
    }
    func sendConsole(_ name: VMName, _ text: String) async throws { try await m().sendConsole(name, text) }
    func consoleConnection(_ name: VMName) async throws -> Int32 { try await m().consoleConnection(name) }
    func events(_ name: VMName, from offset: Int) async throws -> (events: [VMEvent], next: Int) {
        try await m().events(name, from: offset)
    }
    func monitorCommand(_ name: VMName, _ command: String, argumentsJSON: String?) async throws -> String {
        try await m().monitorCommand(name, command, argumentsJSON: argumentsJSON)
    }
    func statusProbe(_ name: VMName) -> (any VMStatusProbe)? { nil }
    func close() async { closed.withLock { $0 = true } }
}

/// Hosts by address, and every connection made to them.
final class FakeNetwork: Sendable {
    let hypervisors: [String: FakeHypervisor]
    private let made = Mutex<[FakeRemoteHost]>([])

    init(_ addresses: [String]) {
        hypervisors = Dictionary(uniqueKeysWithValues: addresses.map { ($0, FakeHypervisor()) })
    }

    subscript(_ address: String) -> FakeHypervisor { hypervisors[address]! }

    var connections: [FakeRemoteHost] { made.withLock { $0 } }

    var connector: HostConnector {
        { [self] address, tls in
            guard let fake = hypervisors[address.description] else {
                throw PlasmaError(.unavailable, "connection refused")
            }
            let host = FakeRemoteHost(fake, address: address.description, tls: tls)
            made.withLock { $0.append(host) }
            return host
        }
    }
}

/// `vm.connect`: one plan driving VMs on several hosts, each VM bound to its host.
@Suite("Lua plans over several hosts")
struct RemoteHostTests {
    static let h1 = "unix:/run/plasmavmc-test/h1.sock"
    static let h2 = "tcp:10.0.0.2:7443"
    let local = FakeHypervisor()
    let net = FakeNetwork([h1, h2])

    func run(_ source: String, host: (any VMHost)? = nil, connector: HostConnector?? = nil,
             timeout: Duration? = nil) async -> PlanOutcome {
        let options = PlanOptions(source: "local H1, H2 = \"\(Self.h1)\", \"\(Self.h2)\"\n" + source, chunkName: "=plan",
                                  planDirectory: "/nonexistent", scriptName: "plan", timeout: timeout)
        let r = PlanRunner(host: host ?? VMManager(hypervisor: local), connector: connector ?? net.connector, options: options)
        return await r.run()
    }

    func names(_ fake: FakeHypervisor) async throws -> [String] { try await fake.list().map(\.rawValue) }

    @Test func twoHostsEachSeeOnlyTheirOwnVM() async throws {
        let outcome = await run("""
            local a = vm.connect(H1)
            local b = vm.connect(H2)
            assert(a.address == H1 and b.address == H2, a.address)
            local va = a.create{name = "web", kernel = "/k"}
            local vb = b.create{name = "web", kernel = "/k"}
            assert(va ~= vb, "same name, two hosts: two VMs")
            assert(va == a.get("web") and vb == b.get("web"))
            local sa, sb = vm.parallel(
              function() va:start() return va:status() end,
              function() b.start(vb) b.pause("web") return vm.status(vb) end)
            assert(sa == "running" and sb == "paused", tostring(sa) .. " " .. tostring(sb))
            assert(va:info().host == H1 and vb:info().host == H2)
            assert(tostring(va) == "vm<web@" .. H1 .. ": running>", tostring(va))
            assert(#a.list() == 1 and a.list()[1] == va and #vm.list() == 0)
            local here = vm.create{name = "web", kernel = "/k"}
            assert(here:info().host == "local" and tostring(here) == "vm<web: created>", tostring(here))
            assert(here ~= va and here ~= vb)
            vm.parallel(function() va:delete{force = true} end, function() b.delete(vb, {force = true}) end)
            here:delete{force = true}
            assert(a.get("web") == nil and #b.list() == 0)
            """)
        #expect(outcome.kind == .success, "\(outcome.message ?? "")")
        #expect(net[Self.h1].calls == ["create web", "start web", "kill web", "delete web"])
        #expect(net[Self.h2].calls == ["create web", "start web", "pause web", "kill web", "delete web"])
        #expect(local.calls == ["create web", "kill web", "delete web"])
        #expect(net.connections.count == 2)
        #expect(net.connections.allSatisfy { $0.isClosed }, "the session closes the hosts it connected")
    }

    @Test(arguments: [true, false])
    func ephemeralAndClosedVMsAreRemovedOnTheirHostWhenThePlanEnds(_ fails: Bool) async throws {
        let outcome = await run("""
            local h = vm.connect(H1)
            h.create{name = "eph", kernel = "/k", ephemeral = true}:start()
            local c <close> = h.create{name = "scoped", kernel = "/k"}
            c:start()
            h.create{name = "keep", kernel = "/k"}
            vm.create{name = "eph", kernel = "/k", ephemeral = true}
            vm.create{name = "keep-local", kernel = "/k"}
            \(fails ? "error('fail')" : "")
            """)
        #expect(outcome.kind == (fails ? .runtimeError : .success), "\(outcome.message ?? "")")
        #expect(outcome.cleanupFailures.isEmpty)
        #expect(try await names(net[Self.h1]) == ["keep"])
        #expect(try await names(local) == ["keep-local"])
        #expect(net.connections.count == 1 && net.connections.allSatisfy { $0.isClosed })
    }

    @Test func anInterruptedPlansRemoteVMsAreRemovedToo() async throws {
        let outcome = await run("""
            local h = vm.connect(H1)
            local c <close> = h.create{name = "scoped", kernel = "/k"}
            h.create{name = "eph", kernel = "/k", ephemeral = true}
            vm.parallel(function() while true do end end, function() sleep(60) end)
            """, timeout: .milliseconds(300))
        #expect(outcome.kind == .timedOut)
        #expect(try await names(net[Self.h1]).isEmpty)
    }

    @Test func keptVMsNameTheirHost() async throws {
        let options = PlanOptions(source: """
            vm.connect("\(Self.h1)").create{name = "eph", kernel = "/k", ephemeral = true}
            vm.create{name = "here", kernel = "/k", ephemeral = true}
            error("fail")
            """, chunkName: "=plan", planDirectory: "/nonexistent", scriptName: "plan", keepOnFailure: true)
        let outcome = await PlanRunner(host: VMManager(hypervisor: local), connector: net.connector, options: options).run()
        #expect(outcome.kept == [HostedVM(name: "eph", host: Self.h1), HostedVM(name: "here", host: nil)])
        #expect(try await names(net[Self.h1]) == ["eph"])
    }

    @Test func connectErrorsReadAtThePlansLine() async throws {
        let outcome = await run("""
            -- Errors point at the caller's line: here msg's, line 2.
            local function msg(f, ...) local ok, e = pcall(f, ...) assert(not ok) return e end
            local e = msg(vm.connect, "http://example.org")
            assert(e == [[plan:3: vm.connect: bad address "http://example.org": unknown scheme; use unix:PATH or tcp:HOST:PORT]], e)
            e = msg(vm.connect, "tcp:host:99999")
            assert(e:find("^plan:3: vm.connect: bad address"), e)
            e = msg(vm.connect, 42)
            assert(e == "plan:3: vm.connect: address must be a string, got number", e)
            e = msg(vm.connect, H1, {colour = "red"})
            assert(e == "plan:3: vm.connect: unknown option 'colour'", e)
            e = msg(vm.connect, H1, {ca = 1})
            assert(e == "plan:3: vm.connect: 'ca' must be a string, got number", e)
            e = msg(vm.connect, H1, {cert = "c.pem"})
            assert(e == "plan:3: vm.connect: 'cert' and 'key' go together (a client certificate needs its key)", e)
            e = msg(vm.connect, H1, "tls")
            assert(e == "plan:3: vm.connect: options must be a table, got string", e)
            e = msg(vm.connect, "unix:/nowhere/plasmavmc.sock")
            assert(e == "plan:3: cannot connect to unix:/nowhere/plasmavmc.sock: connection refused", e)
            """)
        #expect(outcome.kind == .success, "\(outcome.message ?? "")")
        #expect(net.connections.isEmpty)
    }

    @Test func withoutAConnectorConnectSaysSo() async {
        let outcome = await run("vm.connect(H1)", connector: .some(nil))
        #expect(outcome.kind == .runtimeError)
        #expect(outcome.message?.hasPrefix("plan:2: vm.connect: cannot connect to \(Self.h1): this session has no connector for other hosts") == true,
                "\(outcome.message ?? "")")
    }

    @Test func tlsOptionsReachTheConnector() async throws {
        let outcome = await run("""
            local h = vm.connect(H2, {ca = "/etc/ca.pem", cert = "/etc/c.pem", key = "/etc/c.key", server_name = "vmhost"})
            assert(#h.list() == 0)
            """)
        #expect(outcome.kind == .success, "\(outcome.message ?? "")")
        #expect(net.connections.first?.tls == HostTLS(caFile: "/etc/ca.pem", certFile: "/etc/c.pem", keyFile: "/etc/c.key", serverName: "vmhost"))
    }

    @Test func aClosedHostsVMsRaiseAndItsEphemeralVMsAreGone() async throws {
        let outcome = await run("""
            local h = vm.connect(H1)
            assert(vm.connect(H1) == h, "the same address twice: one handle")
            local v = h.create{name = "x", kernel = "/k", ephemeral = true}
            local kept = h.create{name = "kept", kernel = "/k"}
            h:close()
            h:close()
            local ok, e = pcall(v.status, v)
            assert(not ok and e == "plan:8: vm.status: host " .. H1 .. " is closed (h:close()); connect again with vm.connect", e)
            ok, e = pcall(h.list)
            assert(not ok and e:find("^plan:10: vm.list: host .* is closed"), e)
            ok, e = pcall(kept.info, kept)
            assert(not ok and e:find("is closed"), e)
            local again = vm.connect(H1)
            assert(again ~= h)
            local names = {}
            for _, x in ipairs(again.list()) do names[#names + 1] = x.name end
            assert(table.concat(names, ",") == "kept", table.concat(names, ","))
            assert(again.get("kept") ~= kept, "a VM of a closed handle is not the new handle's")
            do
              local scoped <close> = vm.connect(H2)
              scoped.create{name = "s", kernel = "/k", ephemeral = true}
            end
            """)
        #expect(outcome.kind == .success, "\(outcome.message ?? "")")
        #expect(net.connections.count == 3)
        #expect(net.connections.allSatisfy { $0.isClosed })
        #expect(try await names(net[Self.h1]) == ["kept"])
        #expect(try await names(net[Self.h2]).isEmpty, "closing the handle removed its ephemeral VM")
    }

    @Test func theSessionsOwnHostMayBeRemote() async throws {
        let own = FakeRemoteHost(net[Self.h2], address: Self.h2)
        let outcome = await run("""
            local v = vm.create{name = "r", kernel = "/k", ephemeral = true}
            v:start()
            assert(tostring(v) == "vm<r@" .. H2 .. ": running>", tostring(v))
            assert(v:info().host == H2)
            local other = vm.connect(H1)
            assert(other.create{name = "r", kernel = "/k", ephemeral = true} ~= v)
            error("fail")
            """, host: own)
        #expect(outcome.kind == .runtimeError)
        #expect(try await names(net[Self.h2]).isEmpty)
        #expect(try await names(net[Self.h1]).isEmpty)
        #expect(!own.isClosed, "the caller's host is the caller's to close")
    }

    @Test func waitsOnARemoteVMNameItsHost() async {
        let outcome = await run("""
            local v = vm.connect(H1).create{name = "w", kernel = "/k", ephemeral = true}
            v:start()
            local ok, e = pcall(v.wait_for, v, "stopped", {timeout = 0.2})
            assert(not ok and e:find("vm 'w' on " .. H1 .. ": timed out after 0.2s waiting for state stopped", 1, true), e)
            ok, e = pcall(v.wait_for_console, v, "NEVER", {timeout = 0.2})
            assert(not ok and e:find("vm 'w' on " .. H1 .. ": timed out after 0.2s waiting for console pattern", 1, true), e)
            """)
        #expect(outcome.kind == .success, "\(outcome.message ?? "")")
    }

    @Test func aVMThatCannotBeRemovedNamesItsHost() {
        let f = CleanupFailure(name: "web", reason: "busy", host: Self.h1)
        #expect(f.message == "could not remove vm 'web' on \(Self.h1) at the end: busy; remove it with: plasmavmc delete web --force --host \(Self.h1)")
        #expect(CleanupFailure(name: "web", reason: "busy").message == "could not remove vm 'web' at the end: busy; remove it with: plasmavmc delete web --force")
    }
}
