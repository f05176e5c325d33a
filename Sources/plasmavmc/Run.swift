import ArgumentParser
import Foundation
import PlasmaLua
import PlasmaVMM
import Synchronization

struct Run: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "run",
        abstract: "Run a Lua plan: plasmavmc run PLAN.lua [ARGS…], or plasmavmc run -e CODE.",
        discussion: """
            Plan arguments are in `arg` (arg[0] is the plan) and in `...`. Exit status: 0 when the \
            plan ends normally, 1 on an uncaught error or when the plan returns false, the integer \
            a plan returns, 2 for a missing plan or a syntax error (reported before anything runs), \
            5 when --timeout ends it, 130 on Ctrl-C, 143 on SIGTERM (a second Ctrl-C or SIGTERM ends \
            it at once). Ephemeral VMs are removed however the plan ends; one that cannot be is named \
            on stderr and the plan exits 1.
            """)

    @OptionGroup var global: GlobalOptions
    @Option(name: .short, help: "Run CODE instead of a plan file.") var e: String?
    @Option(parsing: .unconditional, help: "Seconds the whole plan may take.") var timeout: String?
    @Flag(help: "When the plan fails, keep its VMs (ephemeral ones too) and say how to reach them.")
    var keepOnFailure = false
    @Argument(parsing: .captureForPassthrough, help: "The plan file and its arguments.") var plan: [String] = []
    /// Folders `require` also searches (set by `plasmavmc test`).
    var searchFolders: [String] = []

    enum CodingKeys: String, CodingKey { case global, e, timeout, keepOnFailure, plan }

    /// The plan's arguments are captured as they come, so `run --help` would name a plan
    /// called "--help": in the plan's place it asks for help (after the plan it is the plan's).
    func validate() throws {
        if e == nil, let first = plan.first, first == "--help" || first == "-h" {
            throw CleanExit.helpRequest(Run.self)
        }
    }

    func run() async throws {
        var limit: Duration?
        if let timeout { limit = try NumberCheck.commandLineSeconds(timeout, option: "--timeout") }
        let options: PlanOptions
        let cwd = FileManager.default.currentDirectoryPath
        if let code = e {
            options = PlanOptions(source: code, chunkName: "=(command line)", planDirectory: cwd,
                                  scriptName: "-e", arguments: plan, timeout: limit,
                                  keepOnFailure: keepOnFailure, stdlibPath: Stdlib.path)
        } else {
            guard let file = plan.first else {
                throw PlasmaError(.invalidArgument, "run needs a plan file (plasmavmc run PLAN.lua) or -e CODE")
            }
            var isDir: ObjCBool = false
            guard FileManager.default.fileExists(atPath: file, isDirectory: &isDir), !isDir.boolValue,
                  let data = FileManager.default.contents(atPath: file) else {
                throw PlasmaError(.invalidArgument, "plan file \(file) does not exist or is not readable")
            }
            let dir = (absolutePath(file) as NSString).deletingLastPathComponent
            options = PlanOptions(source: String(decoding: data, as: UTF8.self), chunkName: "@" + file,
                                  planDirectory: dir, scriptName: file, arguments: Array(plan.dropFirst()),
                                  timeout: limit, keepOnFailure: keepOnFailure, stdlibPath: Stdlib.path)
        }
        var opts = options
        opts.searchFolders = searchFolders
        let host = try await global.connect()
        let runner = PlanRunner(host: host, connector: remoteConnector, options: opts)
        let signals = SignalForwarder(
            first: { signal in
                runner.interrupt("interrupted (\(signal.name))", as: signal.number == SIGTERM ? .terminated : .interrupted)
            },
            again: { signal in
                // The plan did not end after the first signal (stuck in C code, say): kill its
                // ephemeral VMs as well as we can and end the process now.
                fflush(nil)
                Self.report("second \(signal.name): ending at once; killing the plan's ephemeral VMs")
                for failure in runner.abandon(within: .seconds(3)) { Self.report(failure.message) }
                Foundation.exit(128 + signal.number)
            })
        let outcome = await runner.run()
        withExtendedLifetime(signals) {}
        await host.close()
        fflush(nil)
        if let message = outcome.message { Self.report(message) }
        if !outcome.kept.isEmpty {
            let local = outcome.kept.contains { $0.host == nil }
            var text = "plasmavmc: kept for inspection" + (local ? " (runtime dir \(global.root.path))" : "") + ":\n"
            for vm in outcome.kept {
                let n = vm.name, on = vm.hostOption
                let place = vm.host.map { " on \($0)" } ?? ""
                text += "  \(n)\(place): plasmavmc status \(n)\(on); plasmavmc logs \(n)\(on); plasmavmc delete \(n) --force\(on)\n"
            }
            FileHandle.standardError.write(Data(text.utf8))
        }
        for failure in outcome.cleanupFailures { Self.report(failure.message) }
        let cleanupFailed = !outcome.cleanupFailures.isEmpty
        switch outcome.kind {
        case .success: if cleanupFailed { throw ExitCode(1) }
        case .returnedFalse, .runtimeError: throw ExitCode(1)
        case .exitStatus(let code): throw ExitCode(code)
        case .syntaxError: throw ExitCode(2)
        case .timedOut: throw ExitCode(5)
        case .interrupted: throw ExitCode(130)
        case .terminated: throw ExitCode(143)
        }
    }

    static func report(_ message: String) {
        FileHandle.standardError.write(Data("plasmavmc: error: \(message)\n".utf8))
    }
}

/// Turns SIGINT and SIGTERM into calls, so a plan can clean up instead of dying: the first
/// signal interrupts the plan, a second one (of either kind) ends the process at once.
final class SignalForwarder {
    struct Signal: Sendable {
        var number: Int32
        var name: String
    }

    private let sources: [any DispatchSourceSignal]

    init(first: @escaping @Sendable (Signal) -> Void, again: @escaping @Sendable (Signal) -> Void) {
        let count = Mutex(0)
        var made: [any DispatchSourceSignal] = []
        for sig in [Signal(number: SIGINT, name: "SIGINT"), Signal(number: SIGTERM, name: "SIGTERM")] {
            signal(sig.number, SIG_IGN)
            let s = DispatchSource.makeSignalSource(signal: sig.number, queue: .global())
            s.setEventHandler {
                let n = count.withLock { c -> Int in
                    c += 1
                    return c
                }
                if n == 1 { first(sig) } else { again(sig) }
            }
            s.resume()
            made.append(s)
        }
        sources = made
    }

    /// Every signal calls `handler` (the REPL: each Ctrl-C stops the running call).
    convenience init(_ handler: @escaping @Sendable (String) -> Void) {
        self.init(first: { handler($0.name) }, again: { handler($0.name) })
    }

    deinit {
        for s in sources { s.cancel() }
    }
}

/// Where the Lua standard library (stdlib/) is: PLASMAVMC_STDLIB; else, from the folder of
/// the real executable (symlinks resolved), `../share/plasmavmc/stdlib` (scripts/install.sh's
/// layout: PREFIX/bin/plasmavmc, PREFIX/share/plasmavmc/stdlib), or a stdlib/ folder beside it
/// or up to five folders above it (a build tree, .build/debug/plasmavmc); else the system's.
enum Stdlib {
    static var path: String? {
        let fm = FileManager.default
        if let env = ProcessInfo.processInfo.environment["PLASMAVMC_STDLIB"], !env.isEmpty { return env }
        func holdsStdlib(_ dir: URL) -> Bool {
            fm.fileExists(atPath: dir.appendingPathComponent("plasma/test.lua").path)
        }
        let exeDir = executable.deletingLastPathComponent()
        let installed = exeDir.deletingLastPathComponent().appendingPathComponent("share/plasmavmc/stdlib")
        if holdsStdlib(installed) { return installed.standardizedFileURL.path }
        var dir = exeDir
        for _ in 0..<6 {
            let candidate = dir.appendingPathComponent("stdlib")
            if holdsStdlib(candidate) { return candidate.path }
            dir.deleteLastPathComponent()
        }
        let system = "/usr/share/plasmavmc/stdlib"
        return fm.fileExists(atPath: system) ? system : nil
    }

    /// The running executable: /proc/self/exe, else argv[0] with its symlinks resolved.
    private static var executable: URL {
        if let exe = try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe") {
            return URL(fileURLWithPath: exe)
        }
        return URL(fileURLWithPath: absolutePath(CommandLine.arguments[0])).resolvingSymlinksInPath()
    }
}

struct TestCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "test",
        abstract: "Run Lua test files (plasma.test); a folder stands for its *_test.lua files.",
        discussion: """
            Prints TAP with a closing "N passed, N failed" line; exits 1 when a case failed, \
            2 when a path does not exist. VMs created in a case are removed when it ends; the \
            console logs of a failed case's VMs are saved under plasmavmc-test-artifacts/. \
            With --shard K/N (for CI jobs fanned out over machines) it runs the K-th of N \
            disjoint, stable parts of the test files, split by file and balanced by count; a \
            part with no files runs nothing and exits 0.
            """)

    @OptionGroup var global: GlobalOptions
    @Option(help: "Also write JUnit XML to this file; {shard} in it becomes K of --shard K/N.") var junit: String?
    @Option(help: "Run only cases whose name matches this Lua pattern.") var filter: String?
    @Option(parsing: .unconditional, help: "Seconds the whole run may take.") var timeout: String?
    @Option(parsing: .unconditional, help: "Run only the K-th of N parts of the test files, e.g. 2/3.") var shard: String?
    @Argument(help: "Test files or folders.") var paths: [String]

    func run() async throws {
        let part = try shard.map(TestShard.init(parsing:)) ?? .whole
        var files: [String] = []
        let fm = FileManager.default
        for path in paths {
            var isDir: ObjCBool = false
            guard fm.fileExists(atPath: path, isDirectory: &isDir) else {
                throw PlasmaError(.invalidArgument, "test path \(path) does not exist")
            }
            if !isDir.boolValue {
                files.append(path)
                continue
            }
            let found = (fm.enumerator(atPath: path)?.compactMap { $0 as? String } ?? [])
                .filter { $0.hasSuffix("_test.lua") }.sorted()
            if found.isEmpty { throw PlasmaError(.invalidArgument, "no *_test.lua files under \(path)") }
            files += found.map { (path as NSString).appendingPathComponent($0) }
        }
        guard let stdlib = Stdlib.path else {
            throw PlasmaError(.unavailable, "cannot find the Lua stdlib (PREFIX/share/plasmavmc/stdlib beside PREFIX/bin/plasmavmc); install with scripts/install.sh or set PLASMAVMC_STDLIB")
        }
        if let junit {
            let file = junit.replacingOccurrences(of: "{shard}", with: String(part.index))
            setenv("PLASMAVMC_JUNIT", absolutePath(file), 1)
        }
        if let filter { setenv("PLASMAVMC_TEST_FILTER", filter, 1) }
        // testmain reports the shard; it never reads a shard from the caller's environment.
        unsetenv("PLASMAVMC_TEST_SHARD")
        if shard != nil {
            setenv("PLASMAVMC_TEST_SHARD", "\(part.description) \(files.count)", 1)
            files = part.select(files)
        }
        var run = try Run.parse([stdlib + "/plasma/testmain.lua"] + files)
        run.global = global
        run.timeout = timeout
        run.searchFolders = files.map { (absolutePath($0) as NSString).deletingLastPathComponent }
        try await run.run()
    }
}
