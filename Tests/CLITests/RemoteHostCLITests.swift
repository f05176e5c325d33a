import Foundation
import PlasmaTestSupport
import Testing

/// `--host ADDRESS` / `PLASMAVMC_HOST`: every verb, `run`, `test` and `repl` act on a remote
/// host's VMs. No service is running here, so these check the usage rules and that a host
/// that cannot be reached is a clear error naming it; nothing is done to local VMs meanwhile.
@Suite("plasmavmc --host", .serialized)
struct RemoteHostCLITests {
    let base = CLITests()

    /// A unix socket path where nothing listens.
    static let nowhere = "unix:/tmp/plasmavmc-test-no-service-\(getpid()).sock"

    @Test(arguments: [
        (["ls", "--host", "example.org:7443"], "bad address \"example.org:7443\": unknown scheme; use unix:PATH or tcp:HOST:PORT"),
        (["status", "web", "--host", "tcp:example.org"], "bad address \"tcp:example.org\": no port"),
        (["ls", "--host", "tcp:example.org:65536"], "port must be a whole number from 0 to 65535"),
        (["ls", "--host", "unix:"], "bad address \"unix:\": empty path"),
        (["ls", "--host", nowhere, "--runtime-dir", "/tmp"], "--host and --runtime-dir cannot be used together"),
        (["create", "web", "--kernel", "/k", "--host", nowhere, "--runtime-dir", "/tmp"], "--host and --runtime-dir cannot be used together"),
        (["ls", "--host", nowhere, "--tls-cert", "/etc/c.pem"], "--tls-cert needs --tls-key"),
        (["ls", "--host", nowhere, "--tls-key", "/etc/c.key"], "--tls-key needs --tls-cert"),
        (["ls", "--tls-ca", "/etc/ca.pem"], "--tls-ca is for a remote host: give --host ADDRESS (or PLASMAVMC_HOST) too"),
        (["run", "-e", "print(1)", "--host", "ftp:x"], "bad address \"ftp:x\""),
        (["repl", "-e", "1", "--host", "ftp:x"], "bad address \"ftp:x\""),
    ])
    func badHostUsageIsExit2(_ args: [String], _ message: String) async throws {
        try await base.withCLI { (cli: CLIRunner, _: TestRuntime) async throws in
            base.expectError(try await cli.run(args), status: 2, message)
        }
    }

    @Test func aMalformedPLASMAVMC_HOSTIsExit2() async throws {
        try await base.withCLI(env: ["PLASMAVMC_HOST": "bogus"]) { (cli: CLIRunner, _: TestRuntime) async throws in
            base.expectError(try await cli.run("ls"), status: 2, "PLASMAVMC_HOST: bad address \"bogus\": unknown scheme")
            base.expectError(try await cli.run("status", "web"), status: 2, "PLASMAVMC_HOST: bad address")
        }
        // A client key without its certificate, from the environment.
        try await base.withCLI(env: ["PLASMAVMC_HOST": Self.nowhere, "PLASMAVMC_TLS_KEY": "/etc/c.key"]) { (cli: CLIRunner, _: TestRuntime) async throws in
            base.expectError(try await cli.run("ls"), status: 2, "--tls-key needs --tls-cert (or PLASMAVMC_TLS_CERT)")
        }
    }

    /// With the placeholder connector (no gRPC client in the binary yet) the message is
    /// "cannot connect to ADDRESS: remote hosts: the gRPC client is not built into this binary
    /// yet" (exit 6); with the gRPC client it is the client's, which must name the address too.
    @Test(arguments: [
        ["ls"], ["status", "web"], ["start", "web"], ["stop", "web"], ["kill", "web"], ["pause", "web"],
        ["resume", "web"], ["delete", "web", "--force"], ["logs", "web"], ["events", "web"], ["console", "web"],
        ["create", "web", "--kernel", "/k"], ["run", "-e", "vm.create{name = 'web', kernel = '/k'}"], ["repl", "-e", "vm.list()"],
        ["test", "Tests/plans/guest_test.lua"],
    ])
    func aHostWhereNothingListensIsAClearError(_ args: [String]) async throws {
        try await base.withCLI { (cli: CLIRunner, runtime: TestRuntime) async throws in
            let r = try await cli.run(args + ["--host", Self.nowhere])
            #expect(r.status != 0 && r.status != 2, "exit \(r.status): \(r.stderr)")
            #expect(r.errorLine.contains("plasmavmc: error: ") && r.errorLine.contains(Self.nowhere), "stderr: \(r.stderr)")
            #expect(runtime.vmFolders.isEmpty, "nothing was made locally")
        }
    }

    @Test func PLASMAVMC_HOSTIsUsedWhenThereIsNoHostOption() async throws {
        try await base.withCLI(env: ["PLASMAVMC_HOST": Self.nowhere]) { (cli: CLIRunner, _: TestRuntime) async throws in
            let r = try await cli.run("ls")
            #expect(r.status != 0 && r.errorLine.contains(Self.nowhere), "exit \(r.status): \(r.stderr)")
            // --host wins over the environment.
            let other = "unix:/tmp/plasmavmc-test-other-\(getpid()).sock"
            let o = try await cli.run("ls", "--host", other)
            #expect(o.status != 0 && o.errorLine.contains(other), "exit \(o.status): \(o.stderr)")
            // An explicit --runtime-dir means this machine's VMs: PLASMAVMC_HOST is not used.
            let l = try await cli.run("ls", "--runtime-dir", cli.runtimeDir)
            #expect(l.status == 0 && l.firstLine.hasPrefix("NAME"), "exit \(l.status): \(l.stderr)")
        }
    }

    @Test func aPlansConnectToAHostWhereNothingListensFailsAtItsLine() async throws {
        try await base.withCLI { (cli: CLIRunner, _: TestRuntime) async throws in
            let r = try await cli.run("run", "-e", """
                local ok, e = pcall(vm.connect, "\(Self.nowhere)")
                assert(not ok and e:find("(command line):1: ", 1, true) and e:find("\(Self.nowhere)", 1, true), e)
                vm.connect("\(Self.nowhere)", {ca = 1})
                """)
            #expect(r.status == 1)
            #expect(r.errorLine == "plasmavmc: error: (command line):3: vm.connect: 'ca' must be a string, got number", "\(r.stderr)")
        }
    }
}
