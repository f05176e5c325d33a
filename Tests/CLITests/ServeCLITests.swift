import Foundation
import PlasmaTestSupport
import Testing

/// A `plasmavmc serve` process on a runtime folder of its own, stopped (SIGTERM, then SIGKILL)
/// by `stop()`, which the tests call pass or fail.
final class ServerProcess: Sendable {
    let running: CLIRunner.Running
    let address: String

    /// Starts `plasmavmc serve ARGS` on `runtime` and waits for its "listening on" line.
    init(runtime: TestRuntime, _ args: [String]) async throws {
        running = try CLIRunner(runtimeDir: runtime.root).start(["serve"] + args)
        var found: String?
        for _ in 0..<600 where found == nil && running.isRunning {
            try await Task.sleep(for: .milliseconds(50))
            found = running.stdout.split(separator: "\n").first { $0.hasPrefix("plasmavmc serve: listening on ") }
                .map { String($0.dropFirst("plasmavmc serve: listening on ".count)) }
        }
        guard let found else {
            running.signal(SIGKILL)
            let r = try await running.wait()
            throw CLITestError("serve did not start: exit \(r.status) \(r.stderr)")
        }
        address = found
    }

    /// SIGTERM, and the result; SIGKILL when it has not ended within 30 s.
    func stop() async throws -> CLIRunner.Result {
        running.signal(SIGTERM)
        for _ in 0..<300 where running.isRunning { try await Task.sleep(for: .milliseconds(100)) }
        if running.isRunning { running.signal(SIGKILL) }
        return try await running.wait()
    }
}

struct CLITestError: Error, CustomStringConvertible {
    let description: String
    init(_ d: String) { description = d }
}

@Suite("plasmavmc serve with the CLI and plans as clients", .serialized,
       .enabled(if: TestGuest.isAvailable, "needs QEMU and the test guest (scripts/build-guest.sh)"))
struct ServeCLITests {
    let base = CLITests()

    /// A server on a runtime of its own; stopped and checked (exit 0, nothing left) after `body`.
    func withServer(_ args: (TestRuntime) -> [String] = { ["--listen", "unix:" + $0.root + "/_s.sock"] },
                    _ body: (ServerProcess, TestRuntime) async throws -> Void) async throws {
        let left = try await TestRuntime.around { runtime in
            let server = try await ServerProcess(runtime: runtime, args(runtime))
            do {
                try await body(server, runtime)
            } catch {
                _ = try? await server.stop()
                throw error
            }
            let r = try await server.stop()
            #expect(r.status == 0, "serve exit \(r.status): \(r.stderr)")
            #expect(r.stdout.hasSuffix("plasmavmc serve: stopped\n"), "\(r.stdout)")
        }
        #expect(left.folders.isEmpty, "VM folders left behind: \(left.folders)")
        #expect(left.processes.isEmpty, "processes left behind: \(left.processes)")
    }

    @Test func theCLIDrivesAVMOnAServerWithHostAndTheServerSeesWhatTheLocalCLIMakes() async throws {
        try await withServer { server, runtime in
            try await base.withCLI { (cli: CLIRunner, _: TestRuntime) async throws in
                let host = ["--host", server.address]
                // The server's runtime folder, used directly by a local CLI.
                let local = CLIRunner(runtimeDir: runtime.root)
                #expect(try await cli.run(["create", "rweb"] + host + base.guestArgs).status == 0)
                #expect(try await local.run("status", "rweb").firstLine == "created")
                let ls = try await cli.run(["ls"] + host)
                #expect(ls.status == 0 && ls.stdout.contains("rweb") && ls.stdout.contains("created"), "\(ls.stdout)")
                #expect(try await cli.run(["start", "rweb"] + host).status == 0)
                #expect(try await cli.run(["status", "rweb"] + host).firstLine == "running")
                // Made locally, seen through the server at once.
                #expect(try await local.run(["create", "lweb"] + base.guestArgs).status == 0)
                #expect(try await cli.run(["status", "lweb"] + host).firstLine == "created")
                #expect(try await cli.run(["delete", "lweb", "--force"] + host).status == 0)

                let stop = try await cli.run(["stop", "rweb", "--timeout", "30"] + host)
                #expect(stop.status == 0 && stop.stdout.hasPrefix("rweb stopped by"), "\(stop.stdout) \(stop.stderr)")
                let events = try await cli.run(["events", "rweb"] + host)
                #expect(events.stdout.contains(" exit stopped"), "\(events.stdout)")
                // Errors keep their exit codes across the wire.
                base.expectError(try await cli.run(["pause", "rweb"] + host), status: 4, "cannot pause vm 'rweb'")
                base.expectError(try await cli.run(["status", "nope"] + host), status: 3, "vm 'nope' does not exist")
                base.expectError(try await cli.run(["create", "rweb"] + host + base.guestArgs), status: 4, "already exists")
                #expect(try await cli.run(["delete", "rweb"] + host).status == 0)
                base.expectError(try await local.run("status", "rweb"), status: 3, "does not exist")
                // The client's own runtime folder was never used.
                #expect(!FileManager.default.fileExists(atPath: cli.runtimeDir + "/rweb"))
            }
        }
    }

    @Test func onePlanDrivesTwoServersWithTwoRuntimeFoldersAtOnce() async throws {
        try await withServer { one, _ in
            try await withServer({ _ in ["--listen", "tcp:127.0.0.1:0"] }) { two, _ in
                try await base.withCLI(env: ["HOST1": one.address, "HOST2": two.address]) { (cli: CLIRunner, _: TestRuntime) async throws in
                    let r = try await cli.run("run", "Tests/plans/two_hosts.lua")
                    #expect(r.status == 0, "\(r.stdout)\n\(r.stderr)")
                    #expect(r.stdout.hasSuffix("two hosts ok\n"), "\(r.stdout)")
                }
            }
        }
    }

    @Test func aSIGKILLedServerLeavesItsVMsRunningAndANewServerFindsThem() async throws {
        let left = try await TestRuntime.around { runtime in
            let sock = "unix:" + runtime.root + "/_s.sock"
            let first = try await ServerProcess(runtime: runtime, ["--listen", sock])
            let cli = CLIRunner(runtimeDir: runtime.root)
            do {
                #expect(try await cli.run(["create", "survivor", "--host", sock] + base.guestArgs).status == 0)
                #expect(try await cli.run(["start", "survivor", "--host", sock]).status == 0)
                first.running.signal(SIGKILL)
                let killed = try await first.running.wait()
                #expect(killed.status != 0)
                // The VM runs on without its server; a new server replaces the stale socket.
                #expect(try await cli.run("status", "survivor").firstLine == "running")
                let second = try await ServerProcess(runtime: runtime, ["--listen", sock])
                #expect(try await cli.run(["status", "survivor", "--host", sock]).firstLine == "running")
                #expect(try await cli.run(["delete", "survivor", "--force", "--host", sock]).status == 0)
                let r = try await second.stop()
                #expect(r.status == 0, "\(r.stderr)")
                #expect(!FileManager.default.fileExists(atPath: runtime.root + "/_s.sock"), "the socket is removed at exit")
            } catch {
                _ = try? await first.stop()
                throw error
            }
        }
        #expect(left.folders.isEmpty, "VM folders left behind: \(left.folders)")
        #expect(left.processes.isEmpty, "processes left behind: \(left.processes)")
    }

    @Test func aSecondServerOnTheSamePathFailsAndTheFirstKeepsServing() async throws {
        try await withServer { server, runtime in
            let r = try await CLIRunner(runtimeDir: runtime.root).run(["serve", "--listen", server.address])
            base.expectError(r, status: 4, "another server is already listening on \(server.address)")
            #expect(try await CLIRunner(runtimeDir: runtime.root).run(["ls", "--host", server.address]).status == 0)
        }
    }

    /// A CA, a server certificate for 127.0.0.1/localhost and a client certificate, made with
    /// openssl in `dir`.
    func makeCertificates(_ dir: String) throws {
        let script = """
            set -e
            cd '\(dir)'
            openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.pem -days 2 -subj /CN=plasmavmc-test-ca
            openssl req -newkey rsa:2048 -nodes -keyout srv.key -out srv.csr -subj /CN=localhost
            printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\\n' > srv.ext
            openssl x509 -req -in srv.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out srv.pem -days 2 -extfile srv.ext
            openssl req -newkey rsa:2048 -nodes -keyout cli.key -out cli.csr -subj /CN=client
            openssl x509 -req -in cli.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out cli.pem -days 2
            openssl req -x509 -newkey rsa:2048 -nodes -keyout other-ca.key -out other-ca.pem -days 2 -subj /CN=another-ca
            """
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/bin/sh")
        p.arguments = ["-c", script]
        p.standardOutput = FileHandle.nullDevice
        p.standardError = FileHandle.nullDevice
        try p.run()
        p.waitUntilExit()
        guard p.terminationStatus == 0 else { throw CLITestError("openssl failed (\(p.terminationStatus))") }
    }

    @Test func mutualTLSFromTheCLIAndAPlan() async throws {
        let certs = try TempDir(prefix: "tls")
        defer { certs.remove() }
        try makeCertificates(certs.path)
        let c = certs.path
        try await withServer({ _ in ["--listen", "tcp:127.0.0.1:0", "--tls-cert", c + "/srv.pem", "--tls-key", c + "/srv.key",
                                     "--tls-client-ca", c + "/ca.pem"] }) { server, runtime in
            let cli = CLIRunner(runtimeDir: runtime.root)
            let tls = ["--tls-ca", c + "/ca.pem", "--tls-cert", c + "/cli.pem", "--tls-key", c + "/cli.key"]
            let ok = try await cli.run(["ls", "--host", server.address] + tls)
            #expect(ok.status == 0, "\(ok.stderr)")
            // The same through localhost (the certificate's DNS name) and from the environment.
            let byName = server.address.replacingOccurrences(of: "127.0.0.1", with: "localhost")
            let env = CLIRunner(runtimeDir: runtime.root, environment: [
                "PLASMAVMC_HOST": byName, "PLASMAVMC_TLS_CA": c + "/ca.pem",
                "PLASMAVMC_TLS_CERT": c + "/cli.pem", "PLASMAVMC_TLS_KEY": c + "/cli.key"])
            #expect(try await env.run("ls").status == 0)
            // Without a client certificate, in plaintext, or trusting another CA: refused.
            for args in [["--tls-ca", c + "/ca.pem"], [], ["--tls-ca", c + "/other-ca.pem", "--tls-cert", c + "/cli.pem", "--tls-key", c + "/cli.key"]] {
                let r = try await cli.run(["ls", "--host", server.address] + args)
                #expect(r.status == 6 && r.stderr.contains(server.address), "\(args): exit \(r.status) \(r.stderr)")
            }
            let plan = """
                local h = vm.connect("\(server.address)", { ca = "\(c)/ca.pem", cert = "\(c)/cli.pem", key = "\(c)/cli.key" })
                assert(#h.list() == 0)
                print("tls plan ok")
                """
            let r = try await cli.run(["run", "-e", plan])
            #expect(r.status == 0 && r.stdout == "tls plan ok\n", "\(r.stdout) \(r.stderr)")
        }
    }

    @Test func plaintextOffLoopbackIsRefusedAtStart() async throws {
        let runtime = try TestRuntime()
        defer { runtime.finish() }
        let r = try await CLIRunner(runtimeDir: runtime.root).run(["serve", "--listen", "tcp:0.0.0.0:0"])
        base.expectError(r, status: 2, "refusing plaintext on tcp:0.0.0.0:0")
        let t = try await CLIRunner(runtimeDir: runtime.root).run(["serve", "--listen", "tcp:127.0.0.1:0", "--tls-cert", "/etc/hostname"])
        base.expectError(t, status: 2, "--tls-cert and --tls-key go together")
    }
}
