import PlasmaRPC
import PlasmaVMM

/// How this binary reaches a remote host: `--host`, `PLASMAVMC_HOST`, and Lua's `vm.connect`
/// in `run`, `test` and `repl` all come here, and nowhere else: the gRPC client of
/// `plasmavmc serve` (PlasmaRPC's `RemoteHost`), which checks the server answers before it
/// returns.
let remoteConnector: HostConnector = { address, tls in
    try await RemoteHost.connect(address, tls: tls)
}
