import Foundation
import FoundationXML
import PlasmaTestSupport
import Testing

/// What a program printed and how it ended.
struct Ran {
    var status: Int32
    var stdout: String
    var stderr: String
}

struct ProgramTimedOut: Error, CustomStringConvertible {
    var description: String
}

/// Runs `program ARGS` in `directory` with the test's environment plus `env`, minus `unset`;
/// output goes to files (a pipe nobody drains could block it). Fails after `timeout`.
func runProgram(_ program: String, _ args: [String], in directory: String, env: [String: String] = [:],
                unset: [String] = [], timeout: Duration = .seconds(120)) async throws -> Ran {
    let tmp = try TempDir(prefix: "prog")
    defer { tmp.remove() }
    let outPath = tmp.path + "/out", errPath = tmp.path + "/err"
    _ = FileManager.default.createFile(atPath: outPath, contents: nil)
    _ = FileManager.default.createFile(atPath: errPath, contents: nil)
    let p = Process()
    p.executableURL = URL(fileURLWithPath: program)
    p.arguments = args
    p.currentDirectoryURL = URL(fileURLWithPath: directory)
    var environment = ProcessInfo.processInfo.environment
    for name in unset { environment[name] = nil }
    for (k, v) in env { environment[k] = v }
    p.environment = environment
    p.standardInput = FileHandle.nullDevice
    p.standardOutput = FileHandle(forWritingAtPath: outPath)
    p.standardError = FileHandle(forWritingAtPath: errPath)
    try p.run()
    let clock = ContinuousClock()
    let deadline = clock.now + timeout
    while p.isRunning {
        if clock.now >= deadline {
            kill(p.processIdentifier, SIGKILL)
            p.waitUntilExit()
            throw ProgramTimedOut(description: "\(program) \(args) did not end within \(timeout)")
        }
        try await Task.sleep(for: .milliseconds(10))
    }
    func text(_ path: String) -> String {
        String(decoding: FileManager.default.contents(atPath: path) ?? Data(), as: UTF8.self)
    }
    return Ran(status: p.terminationStatus, stdout: text(outPath), stderr: text(errPath))
}

/// The conventions users expect of a CLI: version, help, shell completions, installation.
@Suite("CLI conventions", .serialized)
struct ConventionsTests {
    let base = CLITests()

    @Test func versionFlagAndVerbPrintTheSameVersion() async throws {
        try await base.withCLI { (cli: CLIRunner, _: TestRuntime) async throws in
            let flag = try await cli.run("--version")
            #expect(flag.status == 0, "\(flag.stderr)")
            #expect(flag.stdout.wholeMatch(of: /plasmavmc \d+\.\d+\.\d+\S*\n/) != nil, "\(flag.stdout)")
            let verb = try await cli.run("version")
            #expect(verb.status == 0, "\(verb.stderr)")
            #expect(verb.stdout == flag.stdout)
        }
    }

    @Test(arguments: [["run", "--help"], ["run", "-h"], ["run", "--timeout", "5", "--help"],
                      ["test", "--help"], ["test", "-h"]])
    func helpOfRunAndTest(_ args: [String]) async throws {
        try await base.withCLI { (cli: CLIRunner, _: TestRuntime) async throws in
            let r = try await cli.run(args)
            #expect(r.status == 0, "\(r.stderr)")
            #expect(r.stderr.isEmpty, "\(r.stderr)")
            #expect(r.stdout.contains("USAGE: plasmavmc \(args[0])"), "\(r.stdout)")
            #expect(r.stdout.contains("--timeout"))
        }
    }

    @Test func helpAfterThePlanFileIsThePlansArgument() async throws {
        let dir = try TempDir(prefix: "hlp")
        defer { dir.remove() }
        try "print(select('#', ...), ...)\n".write(toFile: dir.path + "/args.lua", atomically: true, encoding: .utf8)
        try await base.withCLI { (cli: CLIRunner, _: TestRuntime) async throws in
            let r = try await cli.run(["run", dir.path + "/args.lua", "--help", "-h"])
            #expect(r.status == 0, "\(r.stderr)")
            #expect(r.stdout == "2\t--help\t-h\n")
            let e = try await cli.run(["run", "-e", "print(...)", "--help"])
            #expect(e.status == 0, "\(e.stderr)")
            #expect(e.stdout == "--help\n")
        }
    }

    // MARK: completions

    @Test func completionScriptsForEveryShell() async throws {
        try await base.withCLI { (cli: CLIRunner, _: TestRuntime) async throws in
            let bash = try await cli.run("completion", "bash")
            #expect(bash.status == 0, "\(bash.stderr)")
            #expect(bash.stdout.contains("complete -o filenames -F _plasmavmc plasmavmc"), "\(bash.stdout.prefix(300))")
            let zsh = try await cli.run("completion", "zsh")
            #expect(zsh.status == 0, "\(zsh.stderr)")
            #expect(zsh.stdout.hasPrefix("#compdef plasmavmc"), "\(zsh.stdout.prefix(300))")
            let fish = try await cli.run("completion", "fish")
            #expect(fish.status == 0, "\(fish.stderr)")
            #expect(fish.stdout.contains("complete -c 'plasmavmc'") || fish.stdout.contains("complete -c plasmavmc"),
                    "\(fish.stdout.prefix(300))")
            for script in [bash.stdout, zsh.stdout, fish.stdout] {
                for verb in ["run", "test", "console", "completion", "version", "status"] {
                    #expect(script.contains(verb), "completion script lacks \(verb)")
                }
            }
        }
    }

    /// Sources the bash script in a real bash and asks it to complete partial command lines.
    @Test func bashCompletionCompletesVerbsAndShells() async throws {
        let dir = try TempDir(prefix: "cmp")
        defer { dir.remove() }
        try await base.withCLI { (cli: CLIRunner, _: TestRuntime) async throws in
            let script = try await cli.run("completion", "bash")
            try script.stdout.write(toFile: dir.path + "/plasmavmc.bash", atomically: true, encoding: .utf8)
        }
        func complete(_ words: [String]) async throws -> [String] {
            let quoted = words.map { "'\($0)'" }.joined(separator: " ")
            let line = words.joined(separator: " ")
            let program = """
                source plasmavmc.bash
                COMP_WORDS=(\(quoted)); COMP_CWORD=\(words.count - 1)
                COMP_LINE='\(line)'; COMP_POINT=${#COMP_LINE}
                _plasmavmc plasmavmc '\(words.last!)' '\(words[words.count - 2])'
                printf '%s\\n' "${COMPREPLY[@]}"
                """
            let r = try await runProgram("/bin/bash", ["-c", program], in: dir.path,
                                         env: ["PATH": URL(fileURLWithPath: CLIRunner.executable).deletingLastPathComponent().path
                                               + ":" + (ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin")])
            #expect(r.status == 0, "\(r.stderr)")
            return r.stdout.split(separator: "\n").map(String.init).sorted()
        }
        #expect(try await complete(["plasmavmc", "st"]) == ["start", "status", "stop"])
        #expect(try await complete(["plasmavmc", "comp"]) == ["completion"])
        #expect(try await complete(["plasmavmc", "completion", ""]) == ["bash", "fish", "zsh"])
        #expect(try await complete(["plasmavmc", "test", "--sh"]) == ["--shard"])
    }

    @Test(arguments: [["completion", "tcsh"], ["completion"], ["completion", "bash", "zsh"]])
    func badCompletionShellIsExit2(_ args: [String]) async throws {
        try await base.withCLI { (cli: CLIRunner, _: TestRuntime) async throws in
            let r = try await cli.run(args)
            #expect(r.status == 2, "\(r.stderr)")
            #expect(r.stdout.isEmpty)
            if args.count == 2 {
                #expect(r.errorLine == "plasmavmc: error: completion shell must be bash, zsh or fish, got \"tcsh\"", "\(r.stderr)")
            }
        }
    }

    // MARK: test sharding

    /// A folder of `count` test files, each with one passing case and no VM.
    func testFolder(_ count: Int) throws -> TempDir {
        let dir = try TempDir(prefix: "shd")
        for i in 0..<count {
            let name = String(UnicodeScalar(UInt8(97 + i))) + "_test.lua"
            try "local test = require \"plasma.test\"\ntest.case(\"passes\", function(t) t:ok(true) end)\n"
                .write(toFile: dir.path + "/" + name, atomically: true, encoding: .utf8)
        }
        // Not a test file: a folder stands only for its *_test.lua files.
        try "error('helper must not run')\n".write(toFile: dir.path + "/helper.lua", atomically: true, encoding: .utf8)
        return dir
    }

    /// The files a `plasmavmc test` run ran, from its TAP lines.
    func filesRun(_ tap: String) -> [String] {
        tap.split(separator: "\n").compactMap { line in
            line.wholeMatch(of: /ok \d+ - ([a-z]_test\.lua): passes/).map { String($0.1) }
        }
    }

    @Test func shardsPartitionAFolderDisjointStableAndBalanced() async throws {
        let dir = try testFolder(7)
        defer { dir.remove() }
        let reports = try TempDir(prefix: "jun")
        defer { reports.remove() }
        try await base.withCLI { (cli: CLIRunner, _: TestRuntime) async throws in
            var shards: [[String]] = []
            for k in 1...3 {
                let r = try await cli.run(["test", "--shard", "\(k)/3", "--junit", reports.path + "/junit-{shard}.xml", dir.path])
                #expect(r.status == 0, "\(r.stdout)\(r.stderr)")
                let files = filesRun(r.stdout)
                #expect(r.stdout.hasPrefix("TAP version 14\n# shard \(k)/3: \(files.count) of 7 test files\n"), "\(r.stdout)")
                #expect(r.stdout.hasSuffix("1..\(files.count)\n\(files.count) passed, 0 failed\n"), "\(r.stdout)")
                let again = try await cli.run(["test", "--shard", "\(k)/3", dir.path])
                #expect(filesRun(again.stdout) == files, "shard \(k)/3 is stable across runs")
                let xml = try XMLDocument(contentsOf: URL(fileURLWithPath: reports.path + "/junit-\(k).xml"))
                #expect(try xml.nodes(forXPath: "//testcase").count == files.count)
                shards.append(files)
            }
            let all = shards.flatMap { $0 }
            #expect(all.sorted() == ["a", "b", "c", "d", "e", "f", "g"].map { $0 + "_test.lua" }, "union is every file, once: \(shards)")
            #expect(Set(all).count == all.count, "disjoint: \(shards)")
            let sizes = shards.map(\.count)
            #expect(sizes.max()! - sizes.min()! <= 1, "balanced by count: \(sizes)")
            let whole = try await cli.run(["test", "--shard", "1/1", dir.path])
            #expect(filesRun(whole.stdout).count == 7)
        }
    }

    @Test func anEmptyShardRunsNothingAndSaysSo() async throws {
        let dir = try testFolder(2)
        defer { dir.remove() }
        try await base.withCLI { (cli: CLIRunner, _: TestRuntime) async throws in
            var ran: [String] = []
            for k in 1...3 {
                let junit = dir.path + "/shard\(k).xml"
                let r = try await cli.run(["test", "--shard", "\(k)/3", "--junit", junit, dir.path])
                #expect(r.status == 0, "\(r.stdout)\(r.stderr)")
                ran += filesRun(r.stdout)
                #expect(FileManager.default.fileExists(atPath: junit))
                if k == 3 {
                    #expect(r.stdout == "TAP version 14\n# shard 3/3: no test files (2 test files in 3 shards)\n1..0\n0 passed, 0 failed\n")
                    let xml = try XMLDocument(contentsOf: URL(fileURLWithPath: junit))
                    #expect(try xml.nodes(forXPath: "/testsuites").count == 1)
                    #expect(try xml.nodes(forXPath: "//testcase").isEmpty)
                }
            }
            #expect(ran.sorted() == ["a_test.lua", "b_test.lua"])
        }
    }

    @Test(arguments: ["0/3", "4/3", "3/0", "-1/2", "a/b", "1/1e300", "", "1/99999999999999999999", "1", "1/2/3", " 1/2", "1/-2", "+1/2"])
    func badShardIsExit2BeforeAnythingRuns(_ shard: String) async throws {
        let dir = try testFolder(2)
        defer { dir.remove() }
        try await base.withCLI { (cli: CLIRunner, _: TestRuntime) async throws in
            let r = try await cli.run(["test", "--shard", shard, dir.path])
            #expect(r.status == 2, "\(r.stdout)\(r.stderr)")
            #expect(r.stdout.isEmpty, "\(r.stdout)")
            #expect(r.errorLine.hasPrefix("plasmavmc: error: --shard must be K/N"), "\(r.stderr)")
            #expect(r.errorLine.hasSuffix("got \"\(shard)\""), "\(r.stderr)")
        }
    }

    // MARK: installation

    /// scripts/install.sh over an existing build: the installed binary runs from elsewhere,
    /// finds its stdlib under PREFIX/share and installs the helper executables it finds.
    @Test func installScriptInstallsARunnableBinaryAndItsStdlib() async throws {
        let work = try TempDir(prefix: "ins")
        defer { work.remove() }
        let prefix = work.path + "/prefix", bin = work.path + "/bin", elsewhere = work.path + "/elsewhere"
        for d in [bin, elsewhere] { try FileManager.default.createDirectory(atPath: d, withIntermediateDirectories: true) }
        try FileManager.default.createSymbolicLink(atPath: bin + "/plasmavmc", withDestinationPath: CLIRunner.executable)
        _ = try writeScript(bin, "plasmavmc-supervisor", "#!/bin/sh\necho supervisor\n")
        let install = TestGuest.repoRoot + "/scripts/install.sh"

        let r = try await runProgram(install, ["--prefix", prefix, "--bin-dir", bin], in: TestGuest.repoRoot)
        #expect(r.status == 0, "\(r.stdout)\(r.stderr)")
        let fm = FileManager.default
        #expect(fm.isExecutableFile(atPath: prefix + "/bin/plasmavmc"))
        #expect(try fm.attributesOfItem(atPath: prefix + "/bin/plasmavmc")[.type] as? FileAttributeType == .typeRegular,
                "a copy, not a link into the build tree")
        #expect(fm.isExecutableFile(atPath: prefix + "/bin/plasmavmc-supervisor"))
        #expect(fm.fileExists(atPath: prefix + "/share/plasmavmc/stdlib/plasma/test.lua"))
        #expect(fm.fileExists(atPath: prefix + "/share/plasmavmc/stdlib/plasma/testmain.lua"))
        #expect(fm.fileExists(atPath: prefix + "/share/bash-completion/completions/plasmavmc"))
        #expect(fm.fileExists(atPath: prefix + "/share/zsh/site-functions/_plasmavmc"))
        #expect(fm.fileExists(atPath: prefix + "/share/fish/vendor_completions.d/plasmavmc.fish"))

        let installed = prefix + "/bin/plasmavmc"
        let env = ["PLASMAVMC_RUNTIME_DIR": work.path + "/rt"]
        let version = try await runProgram(installed, ["--version"], in: elsewhere, env: env, unset: ["PLASMAVMC_STDLIB"])
        #expect(version.status == 0, "\(version.stderr)")
        #expect(version.stdout.hasPrefix("plasmavmc "))

        try """
            local test = require "plasma.test"
            test.case("installed", function(t) t:eq(1 + 1, 2) end)
            return test.run()
            """.write(toFile: elsewhere + "/plan.lua", atomically: true, encoding: .utf8)
        try FileManager.default.copyItem(atPath: elsewhere + "/plan.lua", toPath: elsewhere + "/x_test.lua")
        let plan = try await runProgram(installed, ["run", "plan.lua"], in: elsewhere, env: env, unset: ["PLASMAVMC_STDLIB"])
        #expect(plan.status == 0, "\(plan.stdout)\(plan.stderr)")
        #expect(plan.stdout.hasSuffix("1 passed, 0 failed\n"), "\(plan.stdout)")
        let test = try await runProgram(installed, ["test", "."], in: elsewhere, env: env, unset: ["PLASMAVMC_STDLIB"])
        #expect(test.status == 0, "\(test.stdout)\(test.stderr)")
        #expect(test.stdout.contains("ok 1 - x_test.lua: installed"), "\(test.stdout)")

        // Installing again over the first install works; without the supervisor nothing goes in:
        // plasmavmc cannot create a VM without it.
        let again = try await runProgram(install, ["--prefix", prefix, "--bin-dir", bin], in: TestGuest.repoRoot)
        #expect(again.status == 0, "\(again.stdout)\(again.stderr)")
        try fm.removeItem(atPath: bin + "/plasmavmc-supervisor")
        let without = try await runProgram(install, ["--prefix", prefix + "-2", "--bin-dir", bin], in: TestGuest.repoRoot)
        #expect(without.status == 2, "\(without.stdout)\(without.stderr)")
        #expect(without.stderr.contains("no plasmavmc-supervisor in"), "\(without.stderr)")
        #expect(!fm.fileExists(atPath: prefix + "-2/bin/plasmavmc"))
    }

    @Test(arguments: [
        (["--prefix"], "--prefix needs a folder"),
        (["--frobnicate"], "unknown option --frobnicate"),
        (["--bin-dir", "/nonexistent/bin"], "no plasmavmc in /nonexistent/bin"),
    ])
    func installScriptRejectsBadUsage(_ args: [String], _ message: String) async throws {
        let work = try TempDir(prefix: "ins")
        defer { work.remove() }
        let r = try await runProgram(TestGuest.repoRoot + "/scripts/install.sh", ["--prefix", work.path + "/p"] + args,
                                     in: TestGuest.repoRoot)
        #expect(r.status == 2, "\(r.stdout)\(r.stderr)")
        #expect(r.stderr.contains(message), "\(r.stderr)")
        #expect(!FileManager.default.fileExists(atPath: work.path + "/p/bin"), "nothing installed")
    }
}
