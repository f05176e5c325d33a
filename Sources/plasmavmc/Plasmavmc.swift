import ArgumentParser
import Foundation
import PlasmaKVM
import PlasmaVMM

/// Exit codes, as documented in the README.
enum ExitCode32: Int32 {
    case success = 0
    case failed = 1
    case usage = 2
    case notFound = 3
    case conflict = 4
    case timeout = 5
    case unavailable = 6

    static func of(_ error: PlasmaError) -> ExitCode32 {
        switch error.code {
        case .invalidArgument: return .usage
        case .notFound: return .notFound
        case .alreadyExists, .invalidState: return .conflict
        case .timeout: return .timeout
        case .unavailable: return .unavailable
        default: return .failed
        }
    }
}

@main
struct Main {
    static func main() async {
        do {
            var command = try Plasmavmc.parseAsRoot()
            _ = try GlobalOptions.consoleLogMax()
            if var command = command as? any AsyncParsableCommand {
                try await command.run()
            } else {
                try command.run()
            }
            fflush(nil)
        } catch let error as PlasmaError {
            fflush(nil)
            var text = "plasmavmc: error: \(error.message)\n"
            if let cause = error.cause, !cause.isEmpty { text += "  \(cause)\n" }
            FileHandle.standardError.write(Data(text.utf8))
            exit(ExitCode32.of(error).rawValue)
        } catch let error as ExitCode {
            fflush(nil)
            exit(error.rawValue)
        } catch {
            fflush(nil)
            let code = Plasmavmc.exitCode(for: error)
            if code == .success { Plasmavmc.exit(withError: error) }
            FileHandle.standardError.write(Data((Plasmavmc.fullMessage(for: error) + "\n").utf8))
            // ArgumentParser says 64 (EX_USAGE) for bad usage; ours is 2 throughout.
            exit(code.rawValue == 64 ? ExitCode32.usage.rawValue : code.rawValue)
        }
    }
}

/// The release of plasmavmc, the one place it is written down (`plasmavmc --version`).
enum PlasmavmcVersion {
    static let number = "0.3.0"
    static var line: String { "plasmavmc \(number)" }
}

struct Plasmavmc: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "plasmavmc",
        abstract: "Scriptable QEMU/KVM virtual machines.",
        discussion: """
            Exit codes: 0 success, 1 operation failed, 2 bad usage or invalid input, \
            3 no such VM, 4 the VM exists or its state forbids the operation, 5 timed out, \
            6 unavailable (QEMU missing, VM busy). `run` has its own (see plasmavmc run --help).
            """,
        version: PlasmavmcVersion.line,
        subcommands: [Run.self, TestCommand.self, ReplCommand.self, Console.self, Create.self, Start.self, Status.self, Stop.self, Kill.self, Pause.self,
                      Resume.self, Delete.self, List.self, Logs.self, Events.self, Serve.self, Version.self, Completion.self])
}

struct Version: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "version", abstract: "Print the version (as plasmavmc --version does).")
    func run() {
        print(PlasmavmcVersion.line)
    }
}

struct Completion: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "completion",
        abstract: "Print a shell completion script: plasmavmc completion bash|zsh|fish.",
        discussion: """
            bash: plasmavmc completion bash > ~/.local/share/bash-completion/completions/plasmavmc; \
            zsh: plasmavmc completion zsh > DIR/_plasmavmc with DIR in $fpath; \
            fish: plasmavmc completion fish > ~/.config/fish/completions/plasmavmc.fish. \
            scripts/install.sh installs all three.
            """)

    @Argument(help: "The shell: bash, zsh or fish.", completion: .list(["bash", "zsh", "fish"]))
    var shell: String

    func run() throws {
        guard let kind = CompletionShell(rawValue: shell) else {
            throw PlasmaError(.invalidArgument, "completion shell must be bash, zsh or fish, got \"\(shell)\"")
        }
        print(Plasmavmc.completionScript(for: kind), terminator: "")
    }
}

struct GlobalOptions: ParsableArguments {
    @Option(name: .customLong("runtime-dir"),
            help: "Folder holding one folder per VM (default: $PLASMAVMC_RUNTIME_DIR, /run/plasmavmc for root, else $XDG_RUNTIME_DIR/plasmavmc).")
    var runtimeDir: String?

    @Option(name: .customLong("host"),
            help: "Act on the VMs of a plasmavmc service elsewhere: unix:PATH or tcp:HOST:PORT (default: $PLASMAVMC_HOST; none: this machine's VMs).")
    var host: String?

    @Option(name: .customLong("tls-ca"), help: "With --host: PEM file of the CA that signed the server's certificate (default: $PLASMAVMC_TLS_CA).")
    var tlsCA: String?

    @Option(name: .customLong("tls-cert"), help: "With --host: PEM file of this client's certificate, for mutual TLS; needs --tls-key (default: $PLASMAVMC_TLS_CERT).")
    var tlsCert: String?

    @Option(name: .customLong("tls-key"), help: "With --host: PEM file of the client certificate's key (default: $PLASMAVMC_TLS_KEY).")
    var tlsKey: String?

    @Option(name: .customLong("tls-server-name"), help: "With --host: the name the server's certificate must carry (default: the address's host).")
    var tlsServerName: String?

    var root: RuntimeRoot { RuntimeRoot.resolve(explicit: runtimeDir) }

    /// A remote host to act on (`--host`, else `PLASMAVMC_HOST` unless `--runtime-dir` names a
    /// local folder) with its TLS settings, or nil for this machine's VMs. Bad combinations
    /// and a malformed address are usage errors (exit 2).
    func remote(_ env: [String: String] = ProcessInfo.processInfo.environment) throws -> (address: HostAddress, tls: HostTLS?)? {
        func given(_ v: String?) -> String? { v.flatMap { $0.isEmpty ? nil : $0 } }
        if host != nil, runtimeDir != nil {
            throw PlasmaError(.invalidArgument, "--host and --runtime-dir cannot be used together: --runtime-dir is a folder of VMs on this machine, --host another host's service; drop one")
        }
        let address: HostAddress
        if let text = host {
            address = try HostAddress(parsing: text)
        } else if runtimeDir == nil, let text = given(env["PLASMAVMC_HOST"]) {
            do {
                address = try HostAddress(parsing: text)
            } catch let e as PlasmaError {
                throw PlasmaError(e.code, "PLASMAVMC_HOST: \(e.message)")
            }
        } else {
            let flags: [(String, String?)] = [("--tls-ca", tlsCA), ("--tls-cert", tlsCert), ("--tls-key", tlsKey),
                                              ("--tls-server-name", tlsServerName)]
            if let flag = flags.first(where: { $0.1 != nil })?.0 {
                throw PlasmaError(.invalidArgument, "\(flag) is for a remote host: give --host ADDRESS (or PLASMAVMC_HOST) too")
            }
            return nil
        }
        let ca = tlsCA ?? given(env["PLASMAVMC_TLS_CA"])
        let cert = tlsCert ?? given(env["PLASMAVMC_TLS_CERT"])
        let key = tlsKey ?? given(env["PLASMAVMC_TLS_KEY"])
        guard (cert == nil) == (key == nil) else {
            throw PlasmaError(.invalidArgument, cert != nil
                ? "--tls-cert needs --tls-key (or PLASMAVMC_TLS_KEY): a client certificate goes with its key"
                : "--tls-key needs --tls-cert (or PLASMAVMC_TLS_CERT): a client key goes with its certificate")
        }
        if [ca, cert, key, tlsServerName].allSatisfy({ $0 == nil }) { return (address, nil) }
        return (address, HostTLS(caFile: ca.map(absolutePath), certFile: cert.map(absolutePath),
                                 keyFile: key.map(absolutePath), serverName: tlsServerName))
    }

    /// The VMs the command acts on: this machine's (the local VM manager over QEMU), or those of
    /// the remote host. The caller closes it.
    func connect() async throws -> any VMHost {
        guard let (address, tls) = try remote() else {
            // PLASMAVMC_CONSOLE_LOG_MAX is checked in main before any command runs.
            return VMManager(hypervisor: KVMHypervisor(root: root, consoleLogMax: try? Self.consoleLogMax()))
        }
        return try await address.connect(with: remoteConnector, tls: tls)
    }

    /// Runs `body` on the command's host and closes it afterwards.
    func withHost<T>(_ body: (any VMHost) async throws -> T) async throws -> T {
        let host = try await connect()
        do {
            let result = try await body(host)
            await host.close()
            return result
        } catch {
            await host.close()
            throw error
        }
    }

    /// `PLASMAVMC_CONSOLE_LOG_MAX`: bytes per console log file (default 8 MiB, two are kept).
    static func consoleLogMax(_ env: [String: String] = ProcessInfo.processInfo.environment) throws -> Int? {
        guard let text = env["PLASMAVMC_CONSOLE_LOG_MAX"], !text.isEmpty else { return nil }
        let limit = 1 << 40
        guard text.count <= 13, text.allSatisfy(\.isASCII), text.allSatisfy(\.isNumber),
              let value = Int(text), value >= KVMHypervisor.consoleLogMinimum, value <= limit else {
            throw PlasmaError(.invalidArgument, "PLASMAVMC_CONSOLE_LOG_MAX must be a whole number of bytes from \(KVMHypervisor.consoleLogMinimum) to \(limit), got \"\(text)\"")
        }
        return value
    }
}

func parseName(_ raw: String) throws -> VMName { try VMName(raw) }

/// The runtime options and the VM name every single-VM verb takes.
struct VMTarget: ParsableArguments {
    @OptionGroup var global: GlobalOptions
    @Argument(help: "The VM's name.") var name: String

    /// Runs `body` on the named VM (on its host) and prints "NAME <what body returns>".
    func act(_ body: (any VMHost, VMName) async throws -> String) async throws {
        let vm = try parseName(name)
        let what = try await global.withHost { try await body($0, vm) }
        print("\(vm) \(what)")
    }
}

func absolutePath(_ p: String) -> String {
    if p.hasPrefix("/") { return p }
    let cwd = FileManager.default.currentDirectoryPath
    return URL(fileURLWithPath: p, relativeTo: URL(fileURLWithPath: cwd + "/")).standardizedFileURL.path
}

struct Create: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "create",
        abstract: "Create a VM: QEMU starts paused (state created). It boots from --kernel, or from its first --disk.")

    @OptionGroup var global: GlobalOptions
    @Argument(help: "VM name: 1-63 letters, digits, '.', '_' or '-'.") var name: String
    @Option(help: "Kernel image to boot directly.") var kernel: String?
    @Option(help: "Initial ramdisk (needs --kernel).") var initrd: String?
    @Option(help: "Kernel command line (needs --kernel); console=ttyS0 is added if no console= is given.") var append: String?
    @Option(parsing: .unconditional, help: "Memory size, e.g. 256M or 1G.") var memory: String = "256M"
    @Option(help: "Number of virtual CPUs.") var cpus: Int = 1
    @Option(help: "Disk image (qcow2 or raw); repeat for more disks.") var disk: [String] = []
    @Option(help: "Network: user, or user,hostfwd=tcp:127.0.0.1:8080-:80[,hostfwd=…]; repeatable.") var net: [String] = []
    @Option(help: "Accelerator: auto (KVM where it really works, else TCG), kvm or tcg.") var accel: String = "auto"

    func run() async throws {
        let spec = VMSpec(name: try parseName(name),
                          kernel: kernel.map(absolutePath), initrd: initrd.map(absolutePath), append: append,
                          memory: try MemorySize(parsing: memory), cpus: cpus, disks: disk.map(absolutePath),
                          networks: try net.map { try NetworkSpec(parsing: $0) },
                          accel: try Accelerator(parsing: accel))
        let status = try await global.withHost { try await $0.create(spec) }
        print("\(spec.name) created (pid \(status.pid.map(String.init) ?? "?"), accel \(status.accel ?? "?"))")
    }
}

struct Start: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "start", abstract: "Run a created VM, or boot a stopped or crashed one again.")
    @OptionGroup var target: VMTarget
    func run() async throws {
        try await target.act { try await $0.start($1).state.rawValue }
    }
}

struct StatusJSON: Encodable {
    var name: String
    var state: String?
    var reason: String?
    var reason_code: String?
    var pid: Int32?
    var accel: String?
    var error: String?

    init(_ name: VMName, _ result: Result<VMStatus, PlasmaError>) {
        self.name = name.rawValue
        switch result {
        case .success(let s):
            state = s.state.rawValue
            reason = s.reason
            reason_code = s.reasonCode.rawValue
            pid = s.pid
            accel = s.accel
        case .failure(let e):
            error = e.message
        }
    }
}

func printJSON<T: Encodable>(_ value: T) throws {
    let enc = JSONEncoder()
    enc.outputFormatting = [.sortedKeys]
    print(String(decoding: try enc.encode(value), as: UTF8.self))
}

struct Status: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "status",
        abstract: "Show a VM's state. The first line is the state word: created, running, paused, stopped or crashed.")
    @OptionGroup var target: VMTarget
    @Flag(help: "Print one JSON object.") var json = false
    func run() async throws {
        let n = try parseName(target.name)
        let s = try await target.global.withHost { try await $0.status(n) }
        if json { return try printJSON(StatusJSON(n, .success(s))) }
        print(s.state.rawValue)
        print("reason_code: \(s.reasonCode)")
        if let r = s.reason { print("reason: \(r)") }
        if let p = s.pid { print("pid: \(p)") }
        if let a = s.accel { print("accel: \(a)") }
    }
}

struct Stop: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "stop",
        abstract: "Stop a VM: ACPI powerdown (resent until the guest reacts), then quit, SIGTERM, SIGKILL, all within --timeout.")
    @OptionGroup var target: VMTarget
    @Option(parsing: .unconditional, help: "Seconds for the whole stop; the forced steps get the last part of it.") var timeout: String = "30"
    func run() async throws {
        guard let seconds = Double(timeout), seconds >= 0, seconds.isFinite, seconds < 1e6 else {
            throw PlasmaError(.invalidArgument, "--timeout must be a number of seconds >= 0, got \"\(timeout)\"")
        }
        try await target.act {
            let outcome = try await $0.stop($1, timeout: .milliseconds(Int64(seconds * 1000)))
            let ms = outcome.elapsed.components.seconds * 1000 + outcome.elapsed.components.attoseconds / 1_000_000_000_000_000
            return "stopped by \(outcome.step) in \(ms) ms"
        }
    }
}

struct Kill: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "kill", abstract: "End a VM's QEMU at once (SIGKILL).")
    @OptionGroup var target: VMTarget
    func run() async throws {
        try await target.act { try await $0.kill($1); return "killed" }
    }
}

struct Pause: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "pause", abstract: "Halt a running VM's CPUs.")
    @OptionGroup var target: VMTarget
    func run() async throws {
        try await target.act { try await $0.pause($1); return "paused" }
    }
}

struct Resume: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "resume", abstract: "Continue a paused VM.")
    @OptionGroup var target: VMTarget
    func run() async throws {
        try await target.act { try await $0.resume($1); return "running" }
    }
}

struct Delete: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "delete", abstract: "Remove a stopped or crashed VM and its folder; --force kills it first.")
    @OptionGroup var target: VMTarget
    @Flag(help: "Kill the VM first if it is up.") var force = false
    func run() async throws {
        try await target.act { try await $0.delete($1, force: force); return "deleted" }
    }
}

struct List: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "ls", abstract: "List every VM under the runtime dir (or of the --host).")
    @OptionGroup var global: GlobalOptions
    @Flag(help: "Print a JSON array.") var json = false
    func run() async throws {
        let vms = try await global.withHost { try await $0.list() }
        if json { return try printJSON(vms.map { StatusJSON($0.name, $0.status) }) }
        var rows = [["NAME", "STATE", "PID", "ACCEL", "REASON"]]
        for vm in vms {
            switch vm.status {
            case .success(let s):
                rows.append([vm.name.rawValue, s.state.rawValue, s.pid.map(String.init) ?? "-", s.accel ?? "-", s.reason ?? ""])
            case .failure(let e):
                rows.append([vm.name.rawValue, "unknown", "-", "-", e.message])
            }
        }
        let widths = (0..<4).map { c in rows.map { $0[c].count }.max() ?? 0 }
        for r in rows {
            var line = ""
            for c in 0..<4 { line += r[c].padding(toLength: widths[c] + 2, withPad: " ", startingAt: 0) }
            print((line + r[4]).trimmingCharacters(in: .whitespaces))
        }
    }
}

struct Events: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "events",
        abstract: "Print a VM's event log: QEMU's lifecycle events and plasmavmc's own steps.",
        discussion: """
            One line an event: time, kind, state and details. With --json, each line is one JSON \
            object with time, unix_nanos, kind, state and the event's details. With --follow, \
            new events are printed as they happen until the VM is deleted.
            """)
    @OptionGroup var target: VMTarget
    @Flag(help: "Print one JSON object a line.") var json = false
    @Flag(help: "Keep printing new events until the VM is deleted (Ctrl-C ends it).") var follow = false

    func run() async throws {
        let n = try parseName(target.name)
        try await target.global.withHost { host in
            var offset = 0
            while true {
                let page: (events: [VMEvent], next: Int)
                do {
                    page = try await host.events(n, from: offset)
                } catch let e as PlasmaError where e.code == .notFound && offset > 0 {
                    return  // deleted while followed
                }
                for e in page.events { print(json ? e.json : Self.text(e)) }
                fflush(nil)
                offset = page.next
                if !follow { return }
                try await Task.sleep(for: .milliseconds(100))
            }
        }
    }

    /// "TIME KIND STATE key=value…" from the JSON entry.
    static func text(_ e: VMEvent) -> String {
        guard let obj = (try? JSONSerialization.jsonObject(with: Data(e.json.utf8))) as? [String: Any] else { return e.json }
        let time = obj["time"] as? String ?? "\(e.unixNanos)"
        var parts = [time, e.kind, e.state?.rawValue ?? "-"]
        for key in obj.keys.sorted() where !["time", "unix_nanos", "kind", "state"].contains(key) {
            let v = obj[key]!
            if let s = v as? String { parts.append("\(key)=\(s)") }
            else if let d = try? JSONSerialization.data(withJSONObject: v, options: [.sortedKeys, .fragmentsAllowed]) {
                parts.append("\(key)=\(String(decoding: d, as: UTF8.self))")
            }
        }
        return parts.joined(separator: " ")
    }
}

struct Logs: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "logs", abstract: "Print a VM's serial console log.")
    @OptionGroup var target: VMTarget
    @Option(help: "Only the last N bytes.") var tail: Int?
    func run() async throws {
        let n = try parseName(target.name)
        if let tail, tail < 0 { throw PlasmaError(.invalidArgument, "--tail must be >= 0") }
        let text = try await target.global.withHost { try await $0.consoleLog(n, maxBytes: tail) }
        FileHandle.standardOutput.write(Data(text.utf8))
    }
}
