import PlasmaCore
import PlasmaKVM
import Testing

@Suite("QEMU command line")
struct QEMUCommandLineTests {
    let paths = RuntimePaths(root: "/run/p,v", name: try! VMName("web"))

    func argv(_ spec: VMSpec, formats: [DiskFormat] = []) -> [String] {
        QEMUCommandLine(binary: "/usr/bin/qemu-system-x86_64", spec: spec, paths: paths, accel: "tcg",
                        diskFormats: formats).arguments
    }

    /// The value that follows `flag` (the first occurrence, or the n-th).
    func value(_ a: [String], _ flag: String, _ nth: Int = 0) -> String? {
        let idx = a.indices.filter { a[$0] == flag }
        return nth < idx.count ? a[idx[nth] + 1] : nil
    }

    @Test func kernelBootWithConsoleAddedAndPausedStart() throws {
        let a = argv(VMSpec(name: try VMName("web"), kernel: "/k,1", initrd: "/i", append: "quiet",
                            memory: try MemorySize(parsing: "1G"), cpus: 2))
        #expect(a.first == "/usr/bin/qemu-system-x86_64")
        #expect(a.last == "-S")
        #expect(value(a, "-kernel") == "/k,1", "a plain argument, not an option string")
        #expect(value(a, "-append") == "console=ttyS0 quiet")
        #expect(value(a, "-m") == "1024")
        #expect(value(a, "-smp") == "2")
        #expect(value(a, "-accel") == "tcg")
        #expect(value(a, "-chardev") == "socket,id=qmp,path=/run/p,,v/web/qmp.sock,server=on,wait=off")
        #expect(value(a, "-chardev", 1) == "socket,id=qmpsup,path=/run/p,,v/web/qmp-sup.sock,server=on,wait=off")
        #expect(value(a, "-chardev", 2) == "socket,id=serial0,path=/run/p,,v/web/serial.sock,server=on,wait=off",
                "no logfile: the supervisor writes the capped console log")
        #expect(value(a, "-pidfile") == "/run/p,v/web/qemu.pid")
        #expect(value(a, "-action") == "panic=pause")
        #expect(!a.contains("-daemonize") && !a.contains("-no-shutdown"))
    }

    @Test func explicitConsoleIsKept() throws {
        let a = argv(VMSpec(name: try VMName("web"), kernel: "/k", append: "console=hvc0 ro"))
        #expect(value(a, "-append") == "console=hvc0 ro")
    }

    @Test func disksWithCommasBootFromTheFirstWithoutAKernel() throws {
        let a = argv(VMSpec(name: try VMName("web"), disks: ["/d,1.qcow2", "/d2.raw"]), formats: [.qcow2, .raw])
        #expect(!a.contains("-kernel") && !a.contains("-append"))
        #expect(value(a, "-blockdev") == "driver=file,filename=/d,,1.qcow2,node-name=file0")
        #expect(value(a, "-blockdev", 1) == "driver=qcow2,file=file0,node-name=disk0")
        #expect(value(a, "-blockdev", 3) == "driver=raw,file=file1,node-name=disk1")
        #expect(value(a, "-device", 1) == "virtio-blk-pci,drive=disk0,bootindex=0")
        #expect(value(a, "-device", 2) == "virtio-blk-pci,drive=disk1")
    }

    @Test func userNetworkWithForwards() throws {
        let net = try NetworkSpec(parsing: "user,hostfwd=tcp:127.0.0.1:8080-:80")
        let a = argv(VMSpec(name: try VMName("web"), kernel: "/k", networks: [net]))
        #expect(value(a, "-netdev") == "user,id=net0,hostfwd=tcp:127.0.0.1:8080-:80")
        #expect(a.contains("virtio-net-pci,netdev=net0,romfile="))
    }

    @Test func escapeDoublesEveryComma() {
        #expect(QEMUCommandLine.escape("a,b,,c") == "a,,b,,,,c")
    }
}
