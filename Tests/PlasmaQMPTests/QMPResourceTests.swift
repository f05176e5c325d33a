import Foundation
import PlasmaQMP
import PlasmaTestSupport
import Testing

/// What a connection holds is given back when it ends, not seconds later.
@Suite("QMP client resources")
struct QMPResourceTests {
    /// This process's open descriptors that are sockets or eventfds (what a connection
    /// holds), by number and target.
    static func connectionDescriptors() -> Set<String> {
        let dir = "/proc/self/fd"
        return Set(((try? FileManager.default.contentsOfDirectory(atPath: dir)) ?? []).compactMap { fd in
            guard let target = try? FileManager.default.destinationOfSymbolicLink(atPath: dir + "/" + fd),
                  target.hasPrefix("socket:") || target == "anon_inode:[eventfd]" else { return nil }
            return fd + " " + target
        })
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
        let before = Self.connectionDescriptors()
        let cycles = 200
        for _ in 0..<cycles {
            let client = try await QMPClient.connect(path: server.path, timeout: .seconds(30))
            client.close()
        }
        // Other tests in this process (supervisor connections, console readers, servers) open
        // sockets meanwhile, a handful at a time: count what is new and still open after a
        // short settle, and allow that handful. A leak keeps one or two per connection (the
        // old client held 1-1.5 per cycle), far above it.
        let allowance = 20
        let clock = ContinuousClock()
        let deadline = clock.now + .seconds(3)
        var kept = Self.connectionDescriptors().subtracting(before)
        while kept.count > allowance, clock.now < deadline {
            try await Task.sleep(for: .milliseconds(50))
            kept = Self.connectionDescriptors().subtracting(before)
        }
        #expect(kept.count <= allowance, "\(cycles) closed connections left \(kept.count) descriptors open: \(kept.sorted().prefix(8))")
    }

    @Test func cancelledConnectEndsAtOnceWhileTheMonitorIsSilent() async throws {
        let server = try FakeQMPServer { c in
            while c.readLine() != nil {}
            c.close()
        }
        defer { server.shutdown() }
        // A connect that ignored cancellation would run its whole 120 s; one that honours it
        // returns at once. The bound is wide because the whole suite runs in parallel on two
        // cores and a busy cooperative pool delays any task's resumption by seconds.
        let connect = Task { try await QMPClient.connect(path: server.path, timeout: .seconds(120)) }
        try await Task.sleep(for: .milliseconds(200))
        let clock = ContinuousClock()
        let begin = clock.now
        connect.cancel()
        let result = await connect.result
        #expect(throws: CancellationError.self) { _ = try result.get() }
        #expect(clock.now - begin < .seconds(60), "the cancelled connect went on for \(clock.now - begin)")
    }
}
