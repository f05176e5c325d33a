import Foundation
import PlasmaCore
@testable import PlasmaKVM
import Testing

@Suite("Event log follower")
struct EventLogFollowerTests {
    func line(_ kind: String) -> String {
        #"{"kind":"\#(kind)","state":"running","unix_nanos":1}"# + "\n"
    }

    func append(_ path: String, _ text: String) throws {
        let h = try FileHandle(forWritingTo: URL(fileURLWithPath: path))
        try h.seekToEnd()
        try h.write(contentsOf: Data(text.utf8))
        try h.close()
    }

    @Test("Reads what is appended, whole lines only; follows a rotation; after the folder is removed it reads the last lines, then ends")
    func followsToTheEnd() async throws {
        let root = FileManager.default.temporaryDirectory.appendingPathComponent("pvfollow-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: root, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: root) }
        let paths = RuntimeRoot(path: root).paths(try VMName("f1"))
        try FileManager.default.createDirectory(atPath: paths.directory, withIntermediateDirectories: true)
        FileManager.default.createFile(atPath: paths.events, contents: Data(line("create").utf8))

        let fromNow = try EventLogFollower(paths: paths, replay: false)
        let all = try EventLogFollower(paths: paths, replay: true)
        #expect(try await all.read().events.map(\.kind) == ["create"])
        #expect(try await fromNow.read().events.isEmpty)

        try append(paths.events, line("start") + #"{"kind":"par"#)
        #expect(try await fromNow.read().events.map(\.kind) == ["start"])
        try append(paths.events, #"tial","unix_nanos":2}"# + "\nnot json\n")
        #expect(try await fromNow.read().events.map(\.kind) == ["partial"])

        // Rotation: the old file is drained, the new one read from its start.
        try append(paths.events, line("before-rotate"))
        try FileManager.default.moveItem(atPath: paths.events, toPath: paths.events + ".1")
        FileManager.default.createFile(atPath: paths.events, contents: Data(line("after-rotate").utf8))
        #expect(try await fromNow.read().events.map(\.kind) == ["before-rotate", "after-rotate"])

        // The last line before a delete is not lost; then the end.
        try append(paths.events, line("exit"))
        try FileManager.default.removeItem(atPath: paths.directory)
        let last = try await fromNow.read()
        #expect(last.events.map(\.kind) == ["exit"] && last.ended)
        #expect(try await fromNow.read().ended)
        fromNow.close()
        all.close()
    }

    @Test("A symlink in place of the log is refused")
    func symlinkRefused() throws {
        let root = FileManager.default.temporaryDirectory.appendingPathComponent("pvfollow-\(UUID().uuidString)").path
        defer { try? FileManager.default.removeItem(atPath: root) }
        let paths = RuntimeRoot(path: root).paths(try VMName("f2"))
        try FileManager.default.createDirectory(atPath: paths.directory, withIntermediateDirectories: true)
        try FileManager.default.createSymbolicLink(atPath: paths.events, withDestinationPath: "/etc/passwd")
        #expect(throws: PlasmaError.self) { try EventLogFollower(paths: paths, replay: true) }
    }
}
