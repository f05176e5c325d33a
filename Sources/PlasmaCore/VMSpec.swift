/// Which accelerator a VM asks for. `auto` picks KVM where it really works, else TCG.
public enum Accelerator: String, Sendable, Codable, CaseIterable {
    case auto, kvm, tcg

    public init(parsing text: String) throws {
        guard let a = Accelerator(rawValue: text.lowercased()) else {
            throw PlasmaError(.invalidArgument, "accel must be auto, kvm or tcg, got \"\(text)\"")
        }
        self = a
    }
}

/// A host-to-guest port forward on user-mode networking.
public struct PortForward: Hashable, Sendable, Codable, CustomStringConvertible {
    public enum Proto: String, Sendable, Codable { case tcp, udp }
    public var proto: Proto
    public var hostAddress: String
    public var hostPort: UInt16
    public var guestAddress: String
    public var guestPort: UInt16

    public init(proto: Proto = .tcp, hostAddress: String = "", hostPort: UInt16,
                guestAddress: String = "", guestPort: UInt16) {
        self.proto = proto
        self.hostAddress = hostAddress
        self.hostPort = hostPort
        self.guestAddress = guestAddress
        self.guestPort = guestPort
    }

    /// Parses QEMU's form `[tcp|udp]:[hostaddr]:hostport-[guestaddr]:guestport`.
    public init(parsing text: String) throws {
        let bad = PlasmaError(.invalidArgument,
                              "hostfwd must look like tcp:127.0.0.1:8080-:80, got \"\(text)\"")
        let halves = text.split(separator: "-", omittingEmptySubsequences: false)
        guard halves.count == 2 else { throw bad }
        let host = halves[0].split(separator: ":", omittingEmptySubsequences: false).map(String.init)
        let guest = halves[1].split(separator: ":", omittingEmptySubsequences: false).map(String.init)
        guard host.count == 3, guest.count == 2 else { throw bad }
        let proto = host[0].isEmpty ? Proto.tcp : Proto(rawValue: host[0])
        guard let proto, let hp = UInt16(host[2]), let gp = UInt16(guest[1]), gp != 0 else { throw bad }
        for addr in [host[1], guest[0]] where !addr.isEmpty {
            guard isIPv4(addr) else { throw bad }
        }
        self.init(proto: proto, hostAddress: host[1], hostPort: hp, guestAddress: guest[0], guestPort: gp)
    }

    /// QEMU's hostfwd value.
    public var description: String {
        "\(proto.rawValue):\(hostAddress):\(hostPort)-\(guestAddress):\(guestPort)"
    }
}

private func isIPv4(_ s: String) -> Bool {
    let parts = s.split(separator: ".", omittingEmptySubsequences: false)
    return parts.count == 4 && parts.allSatisfy { p in
        !p.isEmpty && p.count <= 3 && p.allSatisfy(\.isASCII) && (UInt8(p) != nil)
    }
}

/// A VM's network. Only user-mode (slirp) networking today.
public struct NetworkSpec: Hashable, Sendable, Codable, CustomStringConvertible {
    public enum Mode: String, Sendable, Codable { case user }
    public var mode: Mode
    public var forwards: [PortForward]

    public init(mode: Mode = .user, forwards: [PortForward] = []) {
        self.mode = mode
        self.forwards = forwards
    }

    /// Parses `user` or `user,hostfwd=tcp::8080-:80[,hostfwd=…]`.
    public init(parsing text: String) throws {
        let items = text.split(separator: ",", omittingEmptySubsequences: false).map(String.init)
        guard items.first == "user" else {
            throw PlasmaError(.invalidArgument,
                              "net must be \"user\" or \"user,hostfwd=tcp::8080-:80\", got \"\(text)\"")
        }
        var fwds: [PortForward] = []
        for item in items.dropFirst() {
            guard item.hasPrefix("hostfwd=") else {
                throw PlasmaError(.invalidArgument,
                                  "net: unknown option \"\(item)\"; only hostfwd=… is supported")
            }
            fwds.append(try PortForward(parsing: String(item.dropFirst("hostfwd=".count))))
        }
        self.init(mode: .user, forwards: fwds)
    }

    public var description: String {
        ([mode.rawValue] + forwards.map { "hostfwd=\($0)" }).joined(separator: ",")
    }
}

/// Everything needed to launch a VM. Paths are absolute once a front end has resolved them.
public struct VMSpec: Hashable, Sendable, Codable {
    public var name: VMName
    public var kernel: String?
    public var initrd: String?
    public var append: String?
    public var memory: MemorySize
    public var cpus: Int
    public var disks: [String]
    public var networks: [NetworkSpec]
    public var accel: Accelerator

    public static let maxCPUs = 255

    public init(name: VMName, kernel: String? = nil, initrd: String? = nil, append: String? = nil,
                memory: MemorySize = MemorySize(mebibytes: 256), cpus: Int = 1, disks: [String] = [],
                networks: [NetworkSpec] = [], accel: Accelerator = .auto) {
        self.name = name
        self.kernel = kernel
        self.initrd = initrd
        self.append = append
        self.memory = memory
        self.cpus = cpus
        self.disks = disks
        self.networks = networks
        self.accel = accel
    }

    /// Checks the spec on its own terms (no file system access).
    /// - Throws: `PlasmaError.invalidArgument` naming the VM and the field.
    public func validate() throws {
        func bad(_ m: String) -> PlasmaError { PlasmaError(.invalidArgument, "vm '\(name)': \(m)") }
        guard cpus >= 1, cpus <= VMSpec.maxCPUs else {
            throw bad("cpus must be between 1 and \(VMSpec.maxCPUs), got \(cpus)")
        }
        if kernel == nil {
            if initrd != nil { throw bad("an initrd needs a kernel; pass kernel too") }
            if append != nil { throw bad("a kernel command line (append) needs a kernel; pass kernel too") }
            if disks.isEmpty { throw bad("nothing to boot: give a kernel or at least one disk") }
        }
        for (label, path) in [("kernel", kernel), ("initrd", initrd)] {
            if let path, path.isEmpty { throw bad("\(label) path is empty") }
        }
        for d in disks where d.isEmpty { throw bad("a disk path is empty") }
        if let append, append.contains("\n") { throw bad("append must be a single line") }
        var ports = Set<String>()
        for f in networks.flatMap(\.forwards) where f.hostPort != 0 {
            guard ports.insert("\(f.proto):\(f.hostPort)").inserted else {
                throw bad("host port \(f.proto.rawValue)/\(f.hostPort) is forwarded twice")
            }
        }
    }
}
