import Foundation
import PlasmaQMP
import PlasmaTestSupport
import Testing

@Suite("QMP client against a scripted server")
struct QMPClientTests {
    @Test func readsGreetingAndNegotiates() async throws {
        let server = try FakeQMPServer { c in
            c.sendGreeting()
            let cmd = c.readCommand()
            guard cmd?.name == "qmp_capabilities" else { return c.close() }
            c.send(#"{"return": {}, "id": \#(cmd!.id)}"#)
            if let q = c.readCommand() {
                c.send(#"{"return": {"status": "running", "singlestep": false, "running": true}, "id": \#(q.id)}"#)
            }
        }
        defer { server.shutdown() }
        let client = try await QMPClient.connect(path: server.path)
        defer { client.close() }
        #expect(client.greeting["QMP"]?["version"]?["qemu"]?["major"] == .int(7))
        let status = try await client.execute("query-status")
        #expect(status["status"] == "running")
    }

    @Test func deliversEventsThatArriveBeforeTheReplyToEveryListener() async throws {
        let server = try FakeQMPServer { c in
            c.handshake()
            guard let cmd = c.readCommand() else { return }
            c.send(#"{"timestamp": {"seconds": 1700000000, "microseconds": 500000}, "event": "RESUME"}"#)
            c.send(#"{"event": "SHUTDOWN", "data": {"guest": true, "reason": "guest-shutdown"}, "timestamp": {"seconds": 1, "microseconds": 0}}"#)
            c.send(#"{"return": {}, "id": \#(cmd.id)}"#)
            _ = c.readLine()
        }
        defer { server.shutdown() }
        let client = try await QMPClient.connect(path: server.path)
        let a = client.events()
        let b = client.events()
        _ = try await client.execute("cont")
        client.close()
        for stream in [a, b] {
            var names: [String] = []
            for await e in stream { names.append(e.name) }
            #expect(names == ["RESUME", "SHUTDOWN"])
        }
        var first: QMPEvent?
        for await e in client.events() { first = e }
        #expect(first == nil, "a stream made after close ends at once")
    }

    @Test func eventCarriesDataAndTimestamp() async throws {
        let server = try FakeQMPServer { c in
            c.handshake()
            guard let cmd = c.readCommand() else { return }
            c.send(#"{"timestamp": {"seconds": 1700000000, "microseconds": 250000}, "event": "SHUTDOWN", "data": {"guest": true, "reason": "guest-shutdown"}}"#)
            c.send(#"{"return": {}, "id": \#(cmd.id)}"#)
            _ = c.readLine()
        }
        defer { server.shutdown() }
        let client = try await QMPClient.connect(path: server.path)
        defer { client.close() }
        var it = client.events().makeAsyncIterator()
        _ = try await client.execute("system_powerdown")
        let e = await it.next()
        #expect(e?.name == "SHUTDOWN")
        #expect(e?.data["reason"] == "guest-shutdown")
        #expect(e?.data["guest"] == .bool(true))
        #expect(e?.timestamp == 1_700_000_000.25)
    }

    @Test func mapsErrorRepliesToClassAndDescription() async throws {
        let server = try FakeQMPServer { c in
            c.handshake()
            guard let cmd = c.readCommand() else { return }
            c.send(#"{"error": {"class": "CommandNotFound", "desc": "The command nope has not been found"}, "id": \#(cmd.id)}"#)
            _ = c.readLine()
        }
        defer { server.shutdown() }
        let client = try await QMPClient.connect(path: server.path)
        defer { client.close() }
        await #expect(throws: QMPError.execute(command: "nope", errorClass: "CommandNotFound",
                                               description: "The command nope has not been found")) {
            try await client.execute("nope")
        }
    }

    @Test func errorWithoutIdFailsTheOldestPendingCommand() async throws {
        let server = try FakeQMPServer { c in
            c.handshake()
            guard let first = c.readCommand(), let second = c.readCommand() else { return }
            c.send(#"{"error": {"class": "GenericError", "desc": "JSON parse error, invalid literal"}}"#)
            c.send(#"{"return": {"second": true}, "id": \#(second.id)}"#)
            _ = first
            _ = c.readLine()
        }
        defer { server.shutdown() }
        let client = try await QMPClient.connect(path: server.path)
        defer { client.close() }
        let one = Task { try await client.execute("first") }
        try await Task.sleep(for: .milliseconds(50))
        let two = Task { try await client.execute("second") }
        let (r1, r2) = (await one.result, await two.result)
        #expect(throws: QMPError.execute(command: "first", errorClass: "GenericError",
                                         description: "JSON parse error, invalid literal")) { try r1.get() }
        #expect(try r2.get()["second"] == JSONValue.bool(true))
    }

    @Test func reassemblesPartialLines() async throws {
        let server = try FakeQMPServer { c in
            c.sendRaw(#"{"QMP": {"version": {"qemu": {"mic"#)
            usleep(20_000)
            c.sendRaw(#"ro": 0, "minor": 2, "major": 7}}, "capabilities": []}}"# + "\r")
            usleep(20_000)
            c.sendRaw("\n")
            c.negotiate()
            guard let cmd = c.readCommand() else { return }
            let reply = #"{"return": {"status": "paused"}, "id": \#(cmd.id)}"# + "\r\n"
            for ch in reply { c.sendRaw(String(ch)) }
            _ = c.readLine()
        }
        defer { server.shutdown() }
        let client = try await QMPClient.connect(path: server.path)
        defer { client.close() }
        #expect(try await client.execute("query-status")["status"] == "paused")
    }

    @Test func readsA200KilobyteReply() async throws {
        let big = String(repeating: "x", count: 200 * 1024)
        let server = try FakeQMPServer { c in
            c.handshake()
            guard let cmd = c.readCommand() else { return }
            c.send(#"{"return": [{"name": "\#(big)"}, {"name": "end"}], "id": \#(cmd.id)}"#)
            _ = c.readLine()
        }
        defer { server.shutdown() }
        let client = try await QMPClient.connect(path: server.path)
        defer { client.close() }
        let reply = try await client.execute("query-qmp-schema")
        #expect(reply.arrayValue?.first?["name"]?.stringValue?.count == 200 * 1024)
        #expect(reply.arrayValue?.last?["name"] == "end")
    }

    @Test func eofMidCommandFailsEveryPendingCallAsInterrupted() async throws {
        let server = try FakeQMPServer { c in
            c.handshake()
            _ = c.readCommand()
            _ = c.readCommand()
            c.close()
        }
        defer { server.shutdown() }
        let client = try await QMPClient.connect(path: server.path)
        let a = Task { try await client.execute("query-status") }
        let b = Task { try await client.execute("query-cpus-fast") }
        let (ra, rb) = (await a.result, await b.result)
        #expect(throws: QMPError.interrupted(command: "query-status")) { try ra.get() }
        #expect(throws: QMPError.interrupted(command: "query-cpus-fast")) { try rb.get() }
        await client.waitClosed()
        #expect(client.isClosed)
        await #expect(throws: QMPError.closed) { try await client.execute("query-status") }
    }

    @Test func connectionResetAfterQuitIsInterruptedNotACrash() async throws {
        let server = try FakeQMPServer { c in
            c.handshake()
            _ = c.readCommand()
            c.send(#"{"event": "SHUTDOWN", "data": {"guest": false, "reason": "host-qmp-quit"}, "timestamp": {"seconds": 1, "microseconds": 0}}"#)
            c.reset()
        }
        defer { server.shutdown() }
        let client = try await QMPClient.connect(path: server.path)
        let events = client.events()
        await #expect(throws: QMPError.interrupted(command: "quit")) { try await client.execute("quit") }
        var names: [String] = []
        for await e in events { names.append(e.name) }
        #expect(names == ["SHUTDOWN"])
    }

    @Test func commandWithoutReplyTimesOut() async throws {
        let server = try FakeQMPServer { c in
            c.handshake()
            _ = c.readCommand()
            _ = c.readLine()
        }
        defer { server.shutdown() }
        let client = try await QMPClient.connect(path: server.path)
        defer { client.close() }
        await #expect(throws: QMPError.timeout(command: "query-status", seconds: 0.2)) {
            try await client.execute("query-status", timeout: .milliseconds(200))
        }
    }

    @Test func socketThatAcceptsButNeverGreetsFailsWithinTheTimeout() async throws {
        let server = try FakeQMPServer { c in
            _ = c.readLine()
        }
        defer { server.shutdown() }
        do {
            _ = try await QMPClient.connect(path: server.path, timeout: .milliseconds(300))
            Issue.record("connect should have failed")
        } catch let QMPError.greeting(path, reason) {
            #expect(path == server.path)
            #expect(reason.contains("sent nothing"))
        }
    }

    @Test func missingSocketIsAConnectError() async throws {
        await #expect(throws: QMPError.connect(path: "/nonexistent/qmp.sock", reason: "No such file or directory")) {
            try await QMPClient.connect(path: "/nonexistent/qmp.sock")
        }
    }

    @Test func tooLongSocketPathIsAConnectErrorSayingSo() async throws {
        let path = "/tmp/" + String(repeating: "a", count: 120) + "/qmp.sock"
        do {
            _ = try await QMPClient.connect(path: path)
            Issue.record("connect should have failed")
        } catch let QMPError.connect(_, reason) {
            #expect(reason.contains("at most 107"))
        }
    }

    @Test func cancellingAWaitingCallEndsIt() async throws {
        let server = try FakeQMPServer { c in
            c.handshake()
            _ = c.readCommand()
            _ = c.readLine()
        }
        defer { server.shutdown() }
        let client = try await QMPClient.connect(path: server.path)
        defer { client.close() }
        let task = Task { try await client.execute("query-status") }
        try await Task.sleep(for: .milliseconds(50))
        task.cancel()
        await #expect(throws: CancellationError.self) { try await task.value }
    }

    @Test func encodesArgumentsAsJSON() async throws {
        let seen = ReceivedLines()
        let server = try FakeQMPServer { c in
            c.handshake()
            guard let line = c.readLine() else { return }
            seen.append(line)
            let id = (try? JSONDecoder().decode(JSONValue.self, from: Data(line.utf8)))?["id"]?.description ?? "null"
            c.send(#"{"return": {}, "id": \#(id)}"#)
            _ = c.readLine()
        }
        defer { server.shutdown() }
        let client = try await QMPClient.connect(path: server.path)
        defer { client.close() }
        _ = try await client.execute("human-monitor-command", arguments: ["command-line": "info \"usernet\"\n"])
        let sent = try JSONDecoder().decode(JSONValue.self, from: Data(seen.lines.first!.utf8))
        #expect(sent["execute"] == "human-monitor-command")
        #expect(sent["arguments"]?["command-line"] == "info \"usernet\"\n")
    }
}

final class ReceivedLines: @unchecked Sendable {
    private let lock = NSLock()
    private var _lines: [String] = []
    func append(_ l: String) { lock.withLock { _lines.append(l) } }
    var lines: [String] { lock.withLock { _lines } }
}

@Suite("JSONValue")
struct JSONValueTests {
    @Test func keepsLargeUnsignedIntegersExact() throws {
        let v = try JSONDecoder().decode(JSONValue.self, from: Data(#"{"a": 18446744073709551615, "b": -5, "c": 1.5, "d": [true, null, "x"]}"#.utf8))
        #expect(v["a"] == .uint(UInt64.max))
        #expect(v["b"] == .int(-5))
        #expect(v["c"] == .double(1.5))
        #expect(v["d"] == [true, nil, "x"])
        #expect(v.description == #"{"a":18446744073709551615,"b":-5,"c":1.5,"d":[true,null,"x"]}"#)
    }

    @Test func escapesControlCharactersInStrings() {
        #expect(JSONValue.string("a\"b\\c\n\u{1}").description == #""a\"b\\c\n\u0001""#)
    }
}
