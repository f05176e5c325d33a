import PlasmaCore
import Testing

@Suite("VM names")
struct VMNameTests {
    @Test(arguments: ["web1", "a", "A.b_c-d", String(repeating: "x", count: 63), "9lives"])
    func acceptsValidNames(_ raw: String) throws {
        #expect(try VMName(raw).rawValue == raw)
    }

    @Test(arguments: [
        ("", "empty"), ("a/b", "'/'"), ("..", "'..'"), (".x", "starts with '.'"), ("a..b", "'..'"),
        ("my vm", "a space"), (String(repeating: "x", count: 64), "64 characters"),
        ("-x", "starts with '-'"), ("é", "'é'"),
    ])
    func rejectsInvalidNamesSayingWhy(_ raw: String, _ why: String) {
        #expect {
            try VMName(raw)
        } throws: { error in
            let e = error as! PlasmaError
            return e.code == .invalidArgument && e.message.contains(why) && e.message.contains("use 1-63")
        }
    }
}

@Suite("Memory sizes")
struct MemorySizeTests {
    @Test(arguments: [("256M", 256), ("1G", 1024), ("512MiB", 512), ("2048K", 2), ("128", 128), ("1T", 1 << 20), (" 64m ", 64)])
    func parses(_ text: String, _ mib: UInt64) throws {
        #expect(try MemorySize(parsing: text).mebibytes == mib)
    }

    @Test(arguments: ["abc", "0", "-1M", "", "1.5G", "M", "12X", "1000K", "99999999999999999999G"])
    func rejects(_ text: String) {
        #expect {
            try MemorySize(parsing: text)
        } throws: { error in
            let e = error as! PlasmaError
            return e.code == .invalidArgument && e.message.hasPrefix("memory must be") && e.message.contains("\"\(text)\"")
        }
    }
}

@Suite("VM spec validation")
struct VMSpecTests {
    func spec(_ f: (inout VMSpec) -> Void) throws -> VMSpec {
        var s = VMSpec(name: try VMName("t"), kernel: "/k")
        f(&s)
        return s
    }

    @Test func acceptsAKernelOrADisk() throws {
        try spec { _ in }.validate()
        try spec { $0.kernel = nil; $0.disks = ["/d.qcow2"] }.validate()
    }

    @Test(arguments: [
        ("cpus 0", "cpus must be between 1 and 255, got 0"),
        ("cpus 256", "cpus must be between 1 and 255, got 256"),
        ("nothing", "nothing to boot"),
        ("initrd only", "an initrd needs a kernel"),
        ("append only", "needs a kernel"),
        ("dup port", "forwarded twice"),
        ("newline", "single line"),
    ])
    func rejects(_ label: String, _ message: String) throws {
        let s = try spec { s in
            switch label {
            case "cpus 0": s.cpus = 0
            case "cpus 256": s.cpus = 256
            case "nothing": s.kernel = nil
            case "initrd only": s.kernel = nil; s.initrd = "/i"; s.disks = ["/d"]
            case "append only": s.kernel = nil; s.append = "quiet"; s.disks = ["/d"]
            case "dup port": s.networks = [NetworkSpec(forwards: [PortForward(hostPort: 8080, guestPort: 80),
                                                                   PortForward(hostPort: 8080, guestPort: 81)])]
            default: s.append = "a\nb"
            }
        }
        #expect {
            try s.validate()
        } throws: { error in
            let e = error as! PlasmaError
            return e.code == .invalidArgument && e.message.hasPrefix("vm 't': ") && e.message.contains(message)
        }
    }

    @Test func parsesUserNetworkWithForwards() throws {
        let n = try NetworkSpec(parsing: "user,hostfwd=tcp:127.0.0.1:8080-:80,hostfwd=udp::5353-10.0.2.15:53")
        #expect(n.forwards == [PortForward(proto: .tcp, hostAddress: "127.0.0.1", hostPort: 8080, guestPort: 80),
                               PortForward(proto: .udp, hostPort: 5353, guestAddress: "10.0.2.15", guestPort: 53)])
        #expect(n.description == "user,hostfwd=tcp:127.0.0.1:8080-:80,hostfwd=udp::5353-10.0.2.15:53")
    }

    @Test(arguments: ["tap", "user,foo=1", "user,hostfwd=tcp:8080-80", "user,hostfwd=sctp::1-:2",
                      "user,hostfwd=tcp::70000-:80", "user,hostfwd=tcp:a.b.c.d:1-:2", "user,hostfwd=tcp::1-:0"])
    func rejectsBadNetworks(_ text: String) {
        #expect(throws: PlasmaError.self) { try NetworkSpec(parsing: text) }
    }

    @Test func acceleratorParsing() throws {
        #expect(try Accelerator(parsing: "KVM") == .kvm)
        #expect(throws: PlasmaError(.invalidArgument, "accel must be auto, kvm or tcg, got \"hvf\"")) {
            try Accelerator(parsing: "hvf")
        }
    }
}

@Suite("State transitions")
struct TransitionTests {
    /// Every pair, spelled out: the table in VMState must match this one exactly.
    static let expected: Set<String> = [
        "created>running", "created>stopped", "created>crashed",
        "running>paused", "running>stopped", "running>crashed",
        "paused>running", "paused>stopped", "paused>crashed",
        "stopped>created", "stopped>running",
        "crashed>stopped", "crashed>created", "crashed>running",
    ]

    @Test(arguments: VMState.allCases)
    func everyPairFrom(_ from: VMState) {
        for to in VMState.allCases {
            #expect(VMState.validTransition(from: from, to: to) == Self.expected.contains("\(from)>\(to)"),
                    "\(from) -> \(to)")
        }
    }

    static let legal: [VMOperation: Set<VMState>] = [
        .start: [.created, .stopped, .crashed],
        .stop: [.created, .running, .paused, .crashed],
        .kill: [.created, .running, .paused, .crashed],
        .pause: [.running],
        .resume: [.paused],
        .delete: [.stopped, .crashed],
    ]

    @Test(arguments: VMOperation.allCases)
    func everyOperationInEveryState(_ op: VMOperation) {
        for state in VMState.allCases {
            #expect(op.isLegal(in: state) == Self.legal[op]!.contains(state), "\(op) in \(state)")
            if op.isLegal(in: state), let target = op.target, target != state {
                #expect(VMState.validTransition(from: state, to: target),
                        "\(op) leads \(state) -> \(target), which the table forbids")
            }
        }
    }

    @Test func refusalsNameTheVMAndTheWayOut() throws {
        let vm = try VMName("web1")
        #expect(VMOperation.start.refusal(vm: vm, state: .running).message == "cannot start vm 'web1': it is already running")
        #expect(VMOperation.delete.refusal(vm: vm, state: .running).message
                == "cannot delete vm 'web1': it is running; stop it first, or delete with force")
        #expect(VMOperation.resume.refusal(vm: vm, state: .stopped).code == .invalidState)
    }
}
