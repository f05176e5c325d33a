import Foundation
import PlasmaQMP
import PlasmaTestSupport
import Testing

@Suite("Blocking QMP connection against a scripted server")
struct QMPConnectionTests {
    @Test func repliesEventsErrorsAndPartialLines() throws {
        let server = try FakeQMPServer { c in
            c.handshake()
            guard let a = c.readCommand() else { return }
            c.send(#"{"event": "STOP", "timestamp": {"seconds": 1, "microseconds": 0}}"#)
            c.sendRaw(#"{"return": {"status": "#)
            usleep(10_000)
            c.sendRaw(#""paused"}, "id": \#(a.id)}"# + "\r\n")
            guard let b = c.readCommand() else { return }
            c.send(#"{"error": {"class": "DeviceNotFound", "desc": "no such device"}, "id": \#(b.id)}"#)
            _ = c.readLine()
        }
        defer { server.shutdown() }
        let conn = try QMPConnection(path: server.path)
        defer { conn.close() }
        #expect(conn.greeting["QMP"] != nil)
        #expect(try conn.execute("query-status")["status"] == "paused")
        #expect(conn.events.map(\.name) == ["STOP"])
        #expect(throws: QMPError.execute(command: "device_del", errorClass: "DeviceNotFound", description: "no such device")) {
            try conn.execute("device_del")
        }
    }

    @Test func eofMidCommandIsInterruptedAndClosesTheConnection() throws {
        let server = try FakeQMPServer { c in
            c.handshake()
            _ = c.readCommand()
            c.close()
        }
        defer { server.shutdown() }
        let conn = try QMPConnection(path: server.path)
        #expect(throws: QMPError.interrupted(command: "quit")) { try conn.execute("quit") }
        #expect(conn.isClosed)
        #expect(throws: QMPError.closed) { try conn.execute("query-status") }
    }

    @Test func noReplyTimesOutAndNoGreetingFailsConnect() throws {
        let silent = try FakeQMPServer { c in _ = c.readLine() }
        defer { silent.shutdown() }
        #expect {
            try QMPConnection(path: silent.path, timeout: .milliseconds(200))
        } throws: { error in
            if case QMPError.greeting(_, let reason) = error { return reason.contains("sent nothing") }
            return false
        }
        let slow = try FakeQMPServer { c in
            c.handshake()
            _ = c.readCommand()
            _ = c.readLine()
        }
        defer { slow.shutdown() }
        let conn = try QMPConnection(path: slow.path)
        #expect(throws: QMPError.timeout(command: "query-status", seconds: 0.2)) {
            try conn.execute("query-status", timeout: .milliseconds(200))
        }
    }
}
