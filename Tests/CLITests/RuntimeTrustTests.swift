import Foundation
import PlasmaTestSupport
import Testing

/// Runs `/bin/sh -c script` as the user `nobody` (the other local user of these tests).
/// Returns its exit status; gives up after 30 s.
func runAsNobody(_ script: String) async throws -> Int32 {
    let p = Process()
    p.executableURL = URL(fileURLWithPath: "/usr/sbin/runuser")
    p.arguments = ["-u", "nobody", "--", "/bin/sh", "-c", script]
    p.standardInput = FileHandle.nullDevice
    try p.run()
    let clock = ContinuousClock()
    let deadline = clock.now + .seconds(30)
    while p.isRunning {
        if clock.now >= deadline {
            p.terminate()
            throw TrustTestError("runuser did not finish within 30 s: \(script)")
        }
        try await Task.sleep(for: .milliseconds(10))
    }
    return p.terminationStatus
}

struct TrustTestError: Error, CustomStringConvertible {
    var description: String
    init(_ d: String) { description = d }
}

/// Runs a program to its end (at most 60 s) and returns its exit status.
func runTool(_ path: String, _ args: [String]) async throws -> Int32 {
    let p = Process()
    p.executableURL = URL(fileURLWithPath: path)
    p.arguments = args
    p.standardInput = FileHandle.nullDevice
    try p.run()
    let clock = ContinuousClock()
    let deadline = clock.now + .seconds(60)
    while p.isRunning {
        if clock.now >= deadline {
            p.terminate()
            throw TrustTestError("\(path) did not finish within 60 s")
        }
        try await Task.sleep(for: .milliseconds(10))
    }
    return p.terminationStatus
}

/// The kernel start time of `pid` (field 22 of /proc/PID/stat).
func procStartTime(_ pid: Int32) -> UInt64? {
    guard let data = FileManager.default.contents(atPath: "/proc/\(pid)/stat") else { return nil }
    let text = String(decoding: data, as: UTF8.self)
    guard let close = text.lastIndex(of: ")") else { return nil }
    let fields = text[text.index(after: close)...].split(separator: " ")
    // fields[0] is the state (field 3), so field 22 is fields[19].
    return fields.count > 19 ? UInt64(fields[19]) : nil
}

/// A runtime folder or record planted by another local user is refused with a clear error,
/// and nothing its records name is ever signalled.
@Suite("plasmavmc refuses a runtime folder it cannot trust", .serialized,
       .enabled(if: getuid() == 0 && FileManager.default.isExecutableFile(atPath: "/usr/sbin/runuser"),
                "needs root and runuser to act as another local user"))
struct RuntimeTrustTests {
    let base = CLITests()

    /// `CLITests.withCLI`, removing afterwards the folders the test made on purpose (the
    /// harness still checks that no process was left behind).
    func withRuntime(_ body: (TestRuntime) async throws -> Void) async throws {
        try await base.withCLI { (_: CLIRunner, runtime: TestRuntime) async throws in
            defer {
                for f in runtime.vmFolders { try? FileManager.default.removeItem(atPath: runtime.root + "/" + f) }
            }
            try await body(runtime)
        }
    }

    /// Ends a process this test started, at once.
    func stop(_ p: Process) {
        if p.isRunning { kill(p.processIdentifier, SIGKILL) }
        p.waitUntilExit()
    }

    /// A monitor `nobody` serves at `socket`: it greets and says every VM is running, as an
    /// attacker's would, so that plasmavmc goes on to powerdown, quit and signals.
    func startPlantedMonitor(_ socket: String) async throws -> Process {
        let script = """
            import json, socket, sys
            s = socket.socket(socket.AF_UNIX)
            s.bind(sys.argv[1])
            s.listen(8)
            while True:
                c, _ = s.accept()
                f = c.makefile("rw")
                f.write(json.dumps({"QMP": {"version": {"qemu": {"micro": 0, "minor": 2, "major": 7}, "package": ""}, "capabilities": []}}) + "\\r\\n")
                f.flush()
                for line in f:
                    try:
                        m = json.loads(line)
                    except ValueError:
                        break
                    r = {"status": "running", "running": True, "singlestep": False} if m.get("execute") == "query-status" else {}
                    f.write(json.dumps({"return": r, "id": m.get("id")}) + "\\r\\n")
                    f.flush()
                c.close()
            """
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/sbin/runuser")
        p.arguments = ["-u", "nobody", "--", "/usr/bin/python3", "-c", script, socket]
        p.standardInput = FileHandle.nullDevice
        try p.run()
        let clock = ContinuousClock()
        let deadline = clock.now + .seconds(20)
        while !FileManager.default.fileExists(atPath: socket) {
            if clock.now >= deadline || !p.isRunning {
                endPlantedMonitor(p, socket)
                throw TrustTestError("the planted monitor did not come up at \(socket)")
            }
            try await Task.sleep(for: .milliseconds(20))
        }
        return p
    }

    func endPlantedMonitor(_ p: Process, _ socket: String) {
        for pid in TestRuntime.processes(mentioning: socket) { kill(pid, SIGKILL) }
        stop(p)
    }

    /// A process of the victim's that planted records point at.
    func startVictimProcess(_ runtime: TestRuntime) throws -> Process {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/python3")
        // The root on its command line lets the harness find and end it, pass or fail.
        p.arguments = ["-c", "import time; time.sleep(120)", runtime.root]
        p.standardInput = FileHandle.nullDevice
        try p.run()
        return p
    }

    func specJSON(_ name: String) -> String {
        #"{"accel":"tcg","cpus":1,"disks":[],"kernel":"/bin/true","memory":{"mebibytes":64},"name":"\#(name)","networks":[]}"#
    }

    func launchJSON(_ victim: Process) throws -> String {
        let start = try #require(procStartTime(victim.processIdentifier))
        return #"{"accel":"tcg","argv":["qemu"],"launchedAt":0,"process":{"pid":\#(victim.processIdentifier),"startTime":\#(start)}}"#
    }

    /// Every verb that reads the VM's records fails with `text` in its error; the victim lives.
    func expectRefused(_ cli: CLIRunner, _ victim: Process, _ text: String,
                       sourceLocation: SourceLocation = #_sourceLocation) async throws {
        for args in [["kill", "web"], ["stop", "web", "--timeout", "5"], ["delete", "web", "--force"],
                     ["status", "web"], ["start", "web"], ["ls"],
                     ["create", "other", "--kernel", "/bin/true", "--accel", "tcg"]] {
            let r = try await cli.run(args)
            #expect(r.status != 0, "\(args) succeeded: \(r.stdout)", sourceLocation: sourceLocation)
            #expect(r.errorLine.contains(text), "\(args): \(r.stderr)", sourceLocation: sourceLocation)
            #expect(!r.errorLine.contains("internal"), "\(args): \(r.stderr)", sourceLocation: sourceLocation)
        }
        try await Task.sleep(for: .milliseconds(100))
        #expect(victim.isRunning, "a process named by planted records was signalled", sourceLocation: sourceLocation)
    }

    /// A world-writable sticky folder (like /tmp) inside the test's runtime, where `nobody`
    /// can create things.
    func publicFolder(_ runtime: TestRuntime) throws -> String {
        #expect(chmod(runtime.root, 0o711) == 0)
        let pub = runtime.root + "/pub"
        #expect(mkdir(pub, 0o700) == 0 && chmod(pub, 0o1777) == 0)
        return pub
    }

    @Test func runtimeDirPreCreatedByAnotherUserIsRefusedAndNothingIsSignalled() async throws {
        try await withRuntime { (runtime: TestRuntime) async throws in
            let victim = try startVictimProcess(runtime)
            defer { stop(victim) }
            let hostile = try publicFolder(runtime) + "/plasmavmc-0"
            let planted = """
                mkdir -m 0700 \(hostile) && mkdir -m 0700 \(hostile)/web \
                && printf '%s' '\(specJSON("web"))' > \(hostile)/web/spec.json \
                && printf '%s' '\(try launchJSON(victim))' > \(hostile)/web/launch.json
                """
            #expect(try await runAsNobody(planted) == 0)
            let monitor = try await startPlantedMonitor(hostile + "/web/qmp.sock")
            defer { endPlantedMonitor(monitor, hostile + "/web/qmp.sock") }
            let cli = CLIRunner(runtimeDir: hostile)
            try await expectRefused(cli, victim, "runtime dir \(hostile) is owned by uid 65534, not by you (uid 0)")
        }
    }

    @Test func runtimeDirOthersCanWriteIsRefusedEvenWhenItIsOurs() async throws {
        try await withRuntime { (runtime: TestRuntime) async throws in
            let victim = try startVictimProcess(runtime)
            defer { stop(victim) }
            let open = try publicFolder(runtime) + "/open"
            #expect(mkdir(open, 0o700) == 0 && chmod(open, 0o777) == 0)
            let planted = """
                mkdir -m 0700 \(open)/web \
                && printf '%s' '\(specJSON("web"))' > \(open)/web/spec.json \
                && printf '%s' '\(try launchJSON(victim))' > \(open)/web/launch.json
                """
            #expect(try await runAsNobody(planted) == 0)
            let monitor = try await startPlantedMonitor(open + "/web/qmp.sock")
            defer { endPlantedMonitor(monitor, open + "/web/qmp.sock") }
            try await expectRefused(CLIRunner(runtimeDir: open), victim,
                                    "runtime dir \(open) is writable by others (mode 0777)")
        }
    }

    @Test func runtimeDirThatIsASymlinkIsRefused() async throws {
        try await withRuntime { (runtime: TestRuntime) async throws in
            let victim = try startVictimProcess(runtime)
            defer { stop(victim) }
            let pub = try publicFolder(runtime)
            let planted = """
                mkdir -m 0700 \(pub)/real && mkdir -m 0700 \(pub)/real/web \
                && printf '%s' '\(specJSON("web"))' > \(pub)/real/web/spec.json \
                && printf '%s' '\(try launchJSON(victim))' > \(pub)/real/web/launch.json \
                && ln -s \(pub)/real \(pub)/link
                """
            #expect(try await runAsNobody(planted) == 0)
            let monitor = try await startPlantedMonitor(pub + "/real/web/qmp.sock")
            defer { endPlantedMonitor(monitor, pub + "/real/web/qmp.sock") }
            try await expectRefused(CLIRunner(runtimeDir: pub + "/link"), victim,
                                    "runtime dir \(pub)/link is a symlink")
        }
    }

    @Test func vmFolderOrRecordOfAnotherUserIsRefused() async throws {
        try await withRuntime { (runtime: TestRuntime) async throws in
            let victim = try startVictimProcess(runtime)
            defer { stop(victim) }
            // The runtime dir is ours and private; what is inside it is not.
            let root = runtime.root + "/rt"
            #expect(mkdir(root, 0o700) == 0)
            let web = root + "/web"
            #expect(mkdir(web, 0o700) == 0)
            #expect(FileManager.default.createFile(atPath: web + "/spec.json", contents: Data(specJSON("web").utf8),
                                                   attributes: [.posixPermissions: 0o600]))
            #expect(FileManager.default.createFile(atPath: web + "/launch.json", contents: Data(try launchJSON(victim).utf8),
                                                   attributes: [.posixPermissions: 0o600]))
            let cli = CLIRunner(runtimeDir: root)
            #expect(chown(web + "/launch.json", 65534, 65534) == 0)
            for args in [["kill", "web"], ["stop", "web", "--timeout", "5"], ["delete", "web", "--force"]] {
                let r = try await cli.run(args)
                #expect(r.status != 0, "\(args) succeeded")
                #expect(r.errorLine.contains("\(web)/launch.json is owned by uid 65534"), "\(args): \(r.stderr)")
            }
            #expect(chown(web + "/launch.json", 0, 0) == 0 && chown(web, 65534, 65534) == 0)
            for args in [["kill", "web"], ["stop", "web", "--timeout", "5"], ["delete", "web", "--force"]] {
                let r = try await cli.run(args)
                #expect(r.status != 0, "\(args) succeeded")
                #expect(r.errorLine.contains("vm folder \(web) is owned by uid 65534"), "\(args): \(r.stderr)")
            }
            try await Task.sleep(for: .milliseconds(100))
            #expect(victim.isRunning, "a process named by planted records was signalled")
        }
    }
}
