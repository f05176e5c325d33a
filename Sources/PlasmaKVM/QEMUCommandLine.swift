import PlasmaHypervisor

/// Builds QEMU's argv for a VM. Pure: no file system access, never a shell string.
public struct QEMUCommandLine: Sendable {
    public var binary: String
    public var spec: VMSpec
    public var paths: RuntimePaths
    /// `kvm` or `tcg`: already resolved from `auto`.
    public var accel: String
    /// Disk formats by index, as recorded at create (never probed from the images here: a
    /// guest can rewrite a raw disk's first bytes). A missing one means raw.
    public var diskFormats: [DiskFormat]

    public init(binary: String, spec: VMSpec, paths: RuntimePaths, accel: String, diskFormats: [DiskFormat]) {
        self.binary = binary
        self.spec = spec
        self.paths = paths
        self.accel = accel
        self.diskFormats = diskFormats
    }

    /// A value inside a QEMU option string (`key=value,…`): commas are doubled.
    public static func escape(_ value: String) -> String {
        value.replacingOccurrences(of: ",", with: ",,")
    }

    public var arguments: [String] {
        let e = QEMUCommandLine.escape
        var a: [String] = [
            binary,
            "-name", "guest=\(e(spec.name.rawValue))",
            "-nodefaults", "-no-user-config",
            "-machine", "q35",
            "-accel", accel,
            "-cpu", "max",
            "-smp", String(spec.cpus),
            "-m", String(spec.memory.mebibytes),
            "-display", "none", "-vga", "none",
            "-sandbox", "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny",
            "-chardev", "socket,id=qmp,path=\(e(paths.qmpSocket)),server=on,wait=off",
            "-mon", "chardev=qmp,mode=control",
            "-chardev", "socket,id=qmpsup,path=\(e(paths.qmpSupervisorSocket)),server=on,wait=off",
            "-mon", "chardev=qmpsup,mode=control",
            // The supervisor is the serial port's only client and writes the (capped) log.
            "-chardev", "socket,id=serial0,path=\(e(paths.serialSocket)),server=on,wait=off",
            "-serial", "chardev:serial0",
            "-pidfile", paths.pidFile,
            "-device", "pvpanic-pci",
            "-action", "panic=pause",
        ]
        if let kernel = spec.kernel {
            a += ["-kernel", kernel]
            if let initrd = spec.initrd { a += ["-initrd", initrd] }
            var append = spec.append ?? ""
            if !append.split(separator: " ").contains(where: { $0.hasPrefix("console=") }) {
                append = append.isEmpty ? "console=ttyS0" : "console=ttyS0 " + append
            }
            a += ["-append", append]
        }
        for (i, disk) in spec.disks.enumerated() {
            let format = i < diskFormats.count ? diskFormats[i] : .raw
            a += ["-blockdev", "driver=file,filename=\(e(disk)),node-name=file\(i)",
                  "-blockdev", "driver=\(format.rawValue),file=file\(i),node-name=disk\(i)",
                  "-device", "virtio-blk-pci,drive=disk\(i)" + (spec.kernel == nil && i == 0 ? ",bootindex=0" : "")]
        }
        for (i, net) in spec.networks.enumerated() {
            var netdev = "user,id=net\(i)"
            for f in net.forwards { netdev += ",hostfwd=\(f)" }
            a += ["-netdev", netdev, "-device", "virtio-net-pci,netdev=net\(i),romfile="]
        }
        a.append("-S")
        return a
    }
}
