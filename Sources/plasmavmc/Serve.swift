import ArgumentParser
import Dispatch
import Foundation
import PlasmaKVM
import PlasmaRPC
import PlasmaVMM

struct Serve: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "serve",
        abstract: "Serve the VM service over gRPC (proto/plasmavmc/v1/vm.proto) for other programs and hosts.",
        discussion: """
            By default it listens on a unix socket in the runtime folder (RUNTIME_DIR/_serve.sock, \
            mode 0600). It serves every VM under the runtime folder, whichever plasmavmc process \
            made it. Plaintext TCP is allowed on loopback only; any other address needs \
            --tls-cert and --tls-key, and --tls-client-ca requires client certificates (mutual \
            TLS). SIGTERM or SIGINT: stop accepting, end streams, let calls finish, exit 0. VMs \
            keep running when the server stops or dies. One line per address is printed when \
            it listens: "plasmavmc serve: listening on ADDRESS".
            """)

    @Option(name: .customLong("runtime-dir"),
            help: "Folder holding one folder per VM (default: as for every verb).")
    var runtimeDir: String?

    @Option(name: .customLong("listen"), help: "unix:PATH or tcp:HOST:PORT (port 0: any free port). Repeatable.")
    var listen: [String] = []

    @Option(name: .customLong("tls-cert"), help: "The server's certificate chain (PEM).")
    var tlsCert: String?
    @Option(name: .customLong("tls-key"), help: "The certificate's private key (PEM).")
    var tlsKey: String?
    @Option(name: .customLong("tls-client-ca"), help: "Require client certificates signed by this CA (PEM): mutual TLS.")
    var tlsClientCA: String?

    func run() async throws {
        let root = RuntimeRoot.resolve(explicit: runtimeDir)
        let addresses = try listen.isEmpty
            ? [HostAddress.unix(path: root.path + "/_serve.sock")]
            : listen.map(HostAddress.init(parsing:))
        var options = ServeOptions(listen: addresses, tlsCert: tlsCert.map(absolutePath), tlsKey: tlsKey.map(absolutePath),
                                   tlsClientCA: tlsClientCA.map(absolutePath))
        options.shutdownGrace = .seconds(30)
        try options.validate()
        if listen.isEmpty { try root.ensureExists() }
        let manager = VMManager(hypervisor: KVMHypervisor(root: root, consoleLogMax: try GlobalOptions.consoleLogMax()))
        let server = PlasmaServer(manager: manager, options: options)

        // SIGTERM/SIGINT: a graceful stop; a second one, or calls still running after the
        // grace period, end the process.
        signal(SIGTERM, SIG_IGN)
        signal(SIGINT, SIG_IGN)
        let signalled = Atomic(false)
        let grace = options.shutdownGrace
        var sources: [any DispatchSourceSignal] = []
        for sig in [SIGTERM, SIGINT] {
            let source = DispatchSource.makeSignalSource(signal: sig, queue: .global())
            source.setEventHandler {
                if signalled.exchange(true) {
                    FileHandle.standardError.write(Data("plasmavmc serve: second signal, exiting now\n".utf8))
                    Glibc.exit(0)
                }
                FileHandle.standardError.write(Data("plasmavmc serve: stopping (calls in flight may finish; signal again to exit now)\n".utf8))
                server.shutdown()
                DispatchQueue.global().asyncAfter(deadline: .now() + Double(grace.components.seconds)) {
                    FileHandle.standardError.write(Data("plasmavmc serve: calls still running after \(grace.components.seconds)s; exiting\n".utf8))
                    Glibc.exit(1)
                }
            }
            source.resume()
            sources.append(source)
        }
        try await server.run { bound in
            for a in bound { print("plasmavmc serve: listening on \(a)") }
            fflush(nil)
        }
        withExtendedLifetime(sources) {}
        print("plasmavmc serve: stopped")
    }
}

/// A flag set from a signal handler's queue.
final class Atomic: @unchecked Sendable {
    private var value: Bool
    private let lock = NSLock()
    init(_ value: Bool) { self.value = value }
    func exchange(_ new: Bool) -> Bool {
        lock.lock()
        defer { lock.unlock() }
        let old = value
        value = new
        return old
    }
}
