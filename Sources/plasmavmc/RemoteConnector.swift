import PlasmaVMM

/// How this binary reaches a remote host: `--host`, `PLASMAVMC_HOST`, and Lua's `vm.connect`
/// in `run`, `test` and `repl` all come here, and nowhere else. The gRPC client (PlasmaRPC's
/// `RemoteHost`) replaces this one definition; until then every remote host is unavailable.
let remoteConnector: HostConnector = { _, _ in
    throw PlasmaError(.unavailable, "remote hosts: the gRPC client is not built into this binary yet")
}
