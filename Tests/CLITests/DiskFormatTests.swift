import Foundation
import PlasmaTestSupport
import Testing

/// A guest can write anything into a raw disk, a qcow2 header included; its format is decided
/// once, at create, and a later start never reads it from the disk again.
@Suite("Disk formats are fixed at create", .serialized, .enabled(if: TestGuest.isAvailable, "needs QEMU and the test guest"))
struct DiskFormatTests {
    let base = CLITests()

    /// Paths of the files QEMU (pid) has open.
    func openFiles(_ pid: Int32) -> [String] {
        let dir = "/proc/\(pid)/fd"
        return ((try? FileManager.default.contentsOfDirectory(atPath: dir)) ?? []).compactMap {
            try? FileManager.default.destinationOfSymbolicLink(atPath: dir + "/" + $0)
        }
    }

    @Test func qcow2HeaderWrittenIntoARawDiskIsNotFollowedOnTheNextStart() async throws {
        try await base.withCLI { (cli: CLIRunner, _: TestRuntime) async throws in
            let tmp = try TempDir(prefix: "qh")
            defer { tmp.remove() }
            let disk = tmp.path + "/disk.raw"
            let secret = tmp.path + "/host-secret"
            #expect(FileManager.default.createFile(atPath: secret, contents: Data("not for the guest\n".utf8)))
            #expect(FileManager.default.createFile(atPath: disk, contents: nil))
            #expect(truncate(disk, 16 << 20) == 0)

            var r = try await cli.run(["create", "d", "--disk", disk] + base.guestArgs)
            #expect(r.status == 0, "\(r.stderr)")
            r = try await cli.run("start", "d")
            #expect(r.status == 0, "\(r.stderr)")
            r = try await cli.run("stop", "d", "--timeout", "10")
            #expect(r.status == 0, "\(r.stderr)")

            // What a guest could do: write a qcow2 header naming a host file as backing file.
            let header = tmp.path + "/header.qcow2"
            #expect(try await runTool("/usr/bin/qemu-img", ["create", "-q", "-f", "qcow2", "-F", "raw", "-b", secret, header, "16M"]) == 0)
            let bytes = try #require(FileManager.default.contents(atPath: header))
            let h = try #require(FileHandle(forUpdatingAtPath: disk))
            try h.seek(toOffset: 0)
            try h.write(contentsOf: bytes)
            try h.close()

            r = try await cli.run("start", "d")
            #expect(r.status == 0, "\(r.stderr)")
            r = try await cli.run("status", "d", "--json")
            let status = try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any]
            let pid = try #require(status?["pid"] as? Int)
            let files = openFiles(Int32(pid))
            #expect(files.contains(disk), "QEMU does not have the disk open: \(files)")
            #expect(!files.contains(secret), "QEMU opened the host file the planted header names: \(files)")

            let lua = """
                for _, b in ipairs(vm.get("d"):qmp("query-block")) do
                  if b.inserted then print(b.inserted.drv, b.inserted.file, b.inserted.backing_file or "-") end
                end
                """
            r = try await cli.run("run", "-e", lua)
            #expect(r.status == 0, "\(r.stderr)")
            #expect(r.stdout == "raw\t\(disk)\t-\n")

            r = try await cli.run("delete", "d", "--force")
            #expect(r.status == 0, "\(r.stderr)")
        }
    }
}
