import Foundation
import PlasmaTestSupport
import Testing

/// What the supervisor gives a CLI user: reason codes, the event log, a console shared by a
/// terminal and a plan.
@Suite("plasmavmc CLI: events, reasons, shared console", .serialized,
       .enabled(if: TestGuest.isAvailable, "needs QEMU and the test guest (scripts/build-guest.sh)"))
struct SupervisorCLITests {
    let base = CLITests()

    func json(_ text: String) throws -> [String: Any] {
        try #require(try JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Any])
    }

    @Test func statusJSONHasReasonCodeAndEventsPrintTheLifecycle() async throws {
        try await base.withCLI { (cli: CLIRunner, _: TestRuntime) async throws in
            #expect(try await cli.run(["create", "ev"] + base.guestArgs).status == 0)
            #expect(try json(try await cli.run("status", "ev", "--json").stdout)["reason_code"] as? String == "created")
            let follow = try cli.start(["events", "ev", "--follow", "--json"])
            #expect(try await cli.run("start", "ev").status == 0)
            #expect(try await cli.run("kill", "ev").status == 0)
            let s = try json(try await cli.run("status", "ev", "--json").stdout)
            #expect(s["state"] as? String == "stopped" && s["reason_code"] as? String == "killed", "\(s)")

            let text = try await cli.run("events", "ev")
            #expect(text.status == 0)
            let kinds = text.stdout.split(separator: "\n").map { $0.split(separator: " ")[1] }
            #expect(kinds == ["create", "launch", "greeting", "resume", "kill-requested", "exit"], "\(text.stdout)")

            let lines = try await cli.run("events", "ev", "--json").stdout.split(separator: "\n")
            for line in lines {
                let e = try json(String(line))
                #expect(e["time"] is String && e["kind"] is String && e["state"] is String && e["unix_nanos"] is Int, "\(line)")
            }
            let exit = try json(String(try #require(lines.last)))
            #expect(exit["reason_code"] as? String == "killed" && exit["signal"] as? Int == 9, "\(exit)")

            // --follow saw the same events as they happened, and ends when the VM is deleted.
            #expect(try await cli.run("delete", "ev").status == 0)
            let followed = try await follow.wait()
            #expect(followed.status == 0, "\(followed.stderr)")
            #expect(followed.stdout.split(separator: "\n").count == lines.count, "\(followed.stdout)")
        }
    }

    @Test func eventsOfAnUnknownVMIsExit3() async throws {
        try await base.withCLI { (cli: CLIRunner, _: TestRuntime) async throws in
            let r = try await cli.run("events", "nope")
            base.expectError(r, status: 3, "vm 'nope' does not exist")
        }
    }

    @Test func badConsoleLogCapIsAUsageError() async throws {
        let runtime = try TestRuntime()
        defer { runtime.finish() }
        for bad in ["-1", "nan", "1e300", "12", "99999999999999999999"] {
            let cli = CLIRunner(runtimeDir: runtime.root, environment: ["PLASMAVMC_CONSOLE_LOG_MAX": bad])
            let r = try await cli.run(["create", "cap"] + base.guestArgs)
            #expect(r.status == 2, "\(bad): \(r.stderr)")
            #expect(r.errorLine.contains("PLASMAVMC_CONSOLE_LOG_MAX must be a whole number of bytes"), "\(bad): \(r.stderr)")
        }
        #expect(runtime.vmFolders.isEmpty)
    }

    @Test func consoleAttachedWhileAPlanRunsExecTwentyTimes() async throws {
        try await base.withCLI { (cli: CLIRunner, runtime: TestRuntime) async throws in
            #expect(try await cli.run(["create", "sh"] + base.guestArgs).status == 0)
            #expect(try await cli.run("start", "sh").status == 0)
            let ready = try await cli.run(["run", "-e", "assert(vm.get('sh'):wait_for_console('PLASMAVMC%-GUEST%-READY', {timeout = 90}))"])
            #expect(ready.status == 0, "\(ready.stderr)")

            // A terminal-less `plasmavmc console` that stays attached: its stdin is a pipe we hold.
            let console = Process()
            console.executableURL = URL(fileURLWithPath: CLIRunner.executable)
            console.arguments = ["console", "sh", "--runtime-dir", runtime.root]
            let input = Pipe(), output = Pipe()
            console.standardInput = input
            console.standardOutput = output
            console.standardError = FileHandle.nullDevice
            try console.run()
            let seen = PipeCollector(output.fileHandleForReading)

            let plan = """
                local v = vm.get("sh")
                for i = 1, 20 do
                  local code, out = v:exec("echo exec-$((" .. i .. " * 3))", {timeout = 60})
                  assert(code == 0 and out == "exec-" .. (i * 3) .. "\\n", tostring(code) .. " " .. tostring(out))
                end
                print("twenty ok")
                """
            let r = try await cli.run(["run", "-e", plan])
            #expect(r.status == 0, "\(r.stderr)")
            #expect(r.stdout == "twenty ok\n")
            // The attached console saw the plan's commands run.
            let deadline = ContinuousClock.now + .seconds(10)
            while !seen.text.contains("exec-60"), ContinuousClock.now < deadline {
                try await Task.sleep(for: .milliseconds(50))
            }
            #expect(seen.text.contains("exec-3") && seen.text.contains("exec-60"), "console saw: \(seen.text.suffix(400))")
            // Ctrl-] detaches.
            input.fileHandleForWriting.write(Data([0x1d]))
            let gone = ContinuousClock.now + .seconds(10)
            while console.isRunning, ContinuousClock.now < gone { try await Task.sleep(for: .milliseconds(20)) }
            #expect(!console.isRunning)
            if console.isRunning { console.terminate() }
            #expect(try await cli.run("delete", "sh", "--force").status == 0)
        }
    }
}

/// Collects what a pipe yields, on a thread of its own.
final class PipeCollector: @unchecked Sendable {
    private let lock = NSLock()
    private var data = Data()

    init(_ handle: FileHandle) {
        let t = Thread { [self] in
            while true {
                let chunk = handle.availableData
                if chunk.isEmpty { break }
                lock.withLock { data.append(chunk) }
            }
        }
        t.start()
    }

    var text: String { lock.withLock { String(decoding: data, as: UTF8.self) } }
}
