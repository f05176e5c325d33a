import Foundation
import PlasmaQMP
import PlasmaTestSupport
import Testing

/// What a connection holds is given back when it ends, not seconds later.
@Suite("QMP client resources")
struct QMPResourceTests {
    static func openFDCount() -> Int {
        ((try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/fd")) ?? []).count
    }

    @Test func closedConnectionsGiveBackEveryFileDescriptor() async throws {
        let server = try FakeQMPServer { c in
            c.handshake()
            while c.readLine() != nil {}
            c.close()
        }
        defer { server.shutdown() }
        // A long greeting timeout: nothing of a connection may wait for it after close().
        let warm = try await QMPClient.connect(path: server.path, timeout: .seconds(30))
        warm.close()
        await warm.waitClosed()
        try await Task.sleep(for: .milliseconds(200))
        let before = Self.openFDCount()
        for _ in 0..<50 {
            let client = try await QMPClient.connect(path: server.path, timeout: .seconds(30))
            client.close()
        }
        let clock = ContinuousClock()
        let deadline = clock.now + .seconds(3)
        var after = Self.openFDCount()
        while after > before + 2, clock.now < deadline {
            try await Task.sleep(for: .milliseconds(50))
            after = Self.openFDCount()
        }
        #expect(after <= before + 2, "50 closed connections left \(after - before) file descriptors open")
    }

    @Test func cancelledConnectEndsAtOnceWhileTheMonitorIsSilent() async throws {
        let server = try FakeQMPServer { c in
            while c.readLine() != nil {}
            c.close()
        }
        defer { server.shutdown() }
        let connect = Task { try await QMPClient.connect(path: server.path, timeout: .seconds(30)) }
        try await Task.sleep(for: .milliseconds(200))
        let clock = ContinuousClock()
        let begin = clock.now
        connect.cancel()
        let result = await connect.result
        #expect(throws: CancellationError.self) { _ = try result.get() }
        #expect(clock.now - begin < .seconds(10), "the cancelled connect went on for \(clock.now - begin)")
    }
}
