import CPlasmaSys
import PlasmaHypervisor

/// The files of one VM's runtime folder. Each process finds VMs by reading these.
public struct RuntimePaths: Sendable, Hashable {
    public let directory: String
    public init(root: String, name: VMName) {
        directory = root.hasSuffix("/") ? root + name.rawValue : root + "/" + name.rawValue
    }

    public var spec: String { directory + "/spec.json" }
    /// Written by QEMU; QEMU removes it on a clean exit and leaves it on SIGKILL or abort.
    public var pidFile: String { directory + "/qemu.pid" }
    public var qmpSocket: String { directory + "/qmp.sock" }
    /// A second monitor, held by the supervisor for events and stop requests.
    public var qmpSupervisorSocket: String { directory + "/qmp-sup.sock" }
    /// QEMU's serial port; its one client is the supervisor.
    public var serialSocket: String { directory + "/serial.sock" }
    /// The supervisor's console: any number of readers and writers.
    public var consoleSocket: String { directory + "/console.sock" }
    /// The supervisor's control socket: `status`, `stop MS`, `kill`.
    public var supervisorSocket: String { directory + "/supervisor.sock" }
    /// The supervisor's own stderr.
    public var supervisorLog: String { directory + "/supervisor.log" }
    /// The console log the supervisor writes, at most `cap` bytes; the previous one is `.1`.
    public var consoleLog: String { directory + "/console.log" }
    /// "GENERATION CAP": how many times the console log was rotated, and its cap.
    public var consoleGeneration: String { directory + "/console.gen" }
    /// The event log: one JSON object a line (README: "Events").
    public var events: String { directory + "/events.log" }
    /// QEMU's stderr.
    public var qemuLog: String { directory + "/qemu.log" }
    public var lock: String { directory + "/lock" }
    /// Ours: pid, start time and command line of the current QEMU.
    public var launch: String { directory + "/launch.json" }
    /// Ours: what plasmavmc last asked of the VM (stop, kill), so a later process can tell
    /// a requested stop from a crash.
    public var record: String { directory + "/record.json" }
    /// Ours: QEMU's exit status, when the process that spawned it saw it exit.
    public var exit: String { directory + "/exit.json" }

    /// The longest socket path this folder needs.
    public var longestSocketPath: String { supervisorSocket }

    /// - Throws: `invalidArgument` when the socket paths would not fit a unix socket address.
    public func checkSocketPathLength(vm: VMName) throws {
        let max = Int(plasma_unix_path_max())
        let len = longestSocketPath.utf8.count
        if len > max {
            throw PlasmaError(.invalidArgument,
                              "vm '\(vm)': runtime path \(longestSocketPath) is \(len) bytes, longer than a unix socket path may be (\(max)); use a shorter --runtime-dir or PLASMAVMC_RUNTIME_DIR")
        }
    }
}
