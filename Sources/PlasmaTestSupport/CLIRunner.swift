import Foundation

/// Runs the built `plasmavmc` executable as a user would, capturing its output.
public struct CLIRunner: Sendable {
    public struct Result: Sendable {
        public var status: Int32
        public var stdout: String
        public var stderr: String
        /// The first line of stdout.
        public var firstLine: String { stdout.split(separator: "\n", omittingEmptySubsequences: false).first.map(String.init) ?? "" }
        /// The error line: the first line of stderr.
        public var errorLine: String { stderr.split(separator: "\n").first.map(String.init) ?? "" }
    }

    public let runtimeDir: String
    public var environment: [String: String] = [:]

    public init(runtimeDir: String, environment: [String: String] = [:]) {
        self.runtimeDir = runtimeDir
        self.environment = environment
    }

    /// The executable next to the test bundle (swift build puts both in one folder).
    public static var executable: String {
        if let p = ProcessInfo.processInfo.environment["PLASMAVMC_BIN"] { return p }
        var dir = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent()
        while dir.path != "/" {
            let candidate = dir.appendingPathComponent("plasmavmc").path
            if FileManager.default.isExecutableFile(atPath: candidate) { return candidate }
            dir.deleteLastPathComponent()
        }
        return TestGuest.repoRoot + "/.build/debug/plasmavmc"
    }

    /// A `plasmavmc` process still running.
    public final class Running: @unchecked Sendable {
        let process: Process
        let tmp: TempDir
        init(process: Process, tmp: TempDir) {
            self.process = process
            self.tmp = tmp
        }

        /// Sends SIGINT, as Ctrl-C in a terminal would.
        public func interrupt() { process.interrupt() }

        /// Sends `signal` (SIGTERM, as timeout(1) or a service manager would).
        public func signal(_ signal: Int32) { kill(process.processIdentifier, signal) }

        /// Whether it is still running.
        public var isRunning: Bool { process.isRunning }

        /// What it has printed so far.
        public var stdout: String { String(decoding: FileManager.default.contents(atPath: tmp.path + "/out") ?? Data(), as: UTF8.self) }

        /// Waits for it to end and returns what it printed.
        public func wait() async throws -> Result {
            while process.isRunning { try await Task.sleep(for: .milliseconds(5)) }
            defer { tmp.remove() }
            let err = String(decoding: FileManager.default.contents(atPath: tmp.path + "/err") ?? Data(), as: UTF8.self)
            return Result(status: process.terminationStatus, stdout: stdout, stderr: err)
        }
    }

    /// Runs `plasmavmc ARGS` with PLASMAVMC_RUNTIME_DIR set to this runner's root, `stdin`
    /// as its input; `closeStdout` gives it a pipe nobody reads (a broken pipe).
    public func run(_ args: [String], stdin: String? = nil, closeStdout: Bool = false) async throws -> Result {
        try await start(args, stdin: stdin, closeStdout: closeStdout).wait()
    }

    /// Starts `plasmavmc ARGS` (in the repository root) without waiting for it.
    public func start(_ args: [String], stdin: String? = nil, closeStdout: Bool = false) throws -> Running {
        let tmp = try TempDir(prefix: "cli")
        let outPath = tmp.path + "/out", errPath = tmp.path + "/err"
        _ = FileManager.default.createFile(atPath: outPath, contents: nil)
        _ = FileManager.default.createFile(atPath: errPath, contents: nil)
        let p = Process()
        p.currentDirectoryURL = URL(fileURLWithPath: TestGuest.repoRoot)
        p.executableURL = URL(fileURLWithPath: Self.executable)
        p.arguments = args
        var env = ProcessInfo.processInfo.environment
        env["PLASMAVMC_RUNTIME_DIR"] = runtimeDir
        for (k, v) in environment { env[k] = v }
        p.environment = env
        if let stdin {
            let inPath = tmp.path + "/in"
            _ = FileManager.default.createFile(atPath: inPath, contents: Data(stdin.utf8))
            p.standardInput = FileHandle(forReadingAtPath: inPath)
        } else {
            p.standardInput = FileHandle.nullDevice
        }
        if closeStdout {
            let pipe = Pipe()
            p.standardOutput = pipe
            try? pipe.fileHandleForReading.close()
        } else {
            p.standardOutput = FileHandle(forWritingAtPath: outPath)
        }
        p.standardError = FileHandle(forWritingAtPath: errPath)
        do {
            try p.run()
        } catch {
            tmp.remove()
            throw error
        }
        return Running(process: p, tmp: tmp)
    }

    public func run(_ args: String...) async throws -> Result { try await run(args) }
}
