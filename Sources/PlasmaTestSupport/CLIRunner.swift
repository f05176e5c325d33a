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

    /// Runs `plasmavmc ARGS` with PLASMAVMC_RUNTIME_DIR set to this runner's root.
    public func run(_ args: [String]) async throws -> Result {
        let tmp = try TempDir(prefix: "cli")
        defer { tmp.remove() }
        let outPath = tmp.path + "/out", errPath = tmp.path + "/err"
        _ = FileManager.default.createFile(atPath: outPath, contents: nil)
        _ = FileManager.default.createFile(atPath: errPath, contents: nil)
        let p = Process()
        p.executableURL = URL(fileURLWithPath: Self.executable)
        p.arguments = args
        var env = ProcessInfo.processInfo.environment
        env["PLASMAVMC_RUNTIME_DIR"] = runtimeDir
        for (k, v) in environment { env[k] = v }
        p.environment = env
        p.standardInput = FileHandle.nullDevice
        p.standardOutput = FileHandle(forWritingAtPath: outPath)
        p.standardError = FileHandle(forWritingAtPath: errPath)
        try p.run()
        while p.isRunning { try await Task.sleep(for: .milliseconds(5)) }
        let out = String(decoding: FileManager.default.contents(atPath: outPath) ?? Data(), as: UTF8.self)
        let err = String(decoding: FileManager.default.contents(atPath: errPath) ?? Data(), as: UTF8.self)
        return Result(status: p.terminationStatus, stdout: out, stderr: err)
    }

    public func run(_ args: String...) async throws -> Result { try await run(args) }
}
