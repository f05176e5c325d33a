import Foundation
import PlasmaVMM

/// Conversions between the wire messages and plasmavmc's types. Every number from the wire is
/// checked before Swift converts it.
typealias PBSpec = Plasmavmc_V1_VmSpec
typealias PBVm = Plasmavmc_V1_Vm
typealias PBState = Plasmavmc_V1_VmState
typealias PBEvent = Plasmavmc_V1_VmEvent

enum Convert {
    /// The most memory a spec may ask for: 16 TiB.
    static let maxMemoryMiB: UInt64 = 1 << 24

    static func spec(_ m: PBSpec) throws -> VMSpec {
        let name = try VMName(m.name)
        func bad(_ why: String) -> PlasmaError { PlasmaError(.invalidArgument, "vm '\(name)': \(why)") }
        let memory = m.memoryMib == 0 ? 256 : m.memoryMib
        guard memory <= maxMemoryMiB else { throw bad("memory_mib must be at most \(maxMemoryMiB), got \(m.memoryMib)") }
        guard m.cpus <= UInt32(VMSpec.maxCPUs) else { throw bad("cpus must be between 1 and \(VMSpec.maxCPUs), got \(m.cpus)") }
        let cpus = m.cpus == 0 ? 1 : Int(m.cpus)
        let networks = try m.networks.map { text in
            do { return try NetworkSpec(parsing: text) } catch let e as PlasmaError {
                throw PlasmaError(.invalidArgument, "vm '\(name)': network \"\(text)\": \(e.message)")
            }
        }
        let accel = m.accel.isEmpty ? Accelerator.auto : try Accelerator(parsing: m.accel)
        for path in [m.kernel, m.initrd] + m.disks where !path.isEmpty && !path.hasPrefix("/") {
            throw bad("paths must be absolute on the server's host, got \"\(path)\"")
        }
        return VMSpec(name: name, kernel: m.kernel.isEmpty ? nil : m.kernel,
                      initrd: m.initrd.isEmpty ? nil : m.initrd, append: m.append.isEmpty ? nil : m.append,
                      memory: MemorySize(mebibytes: memory), cpus: cpus, disks: m.disks,
                      networks: networks, accel: accel)
    }

    static func spec(_ s: VMSpec) -> PBSpec {
        var m = PBSpec()
        m.name = s.name.rawValue
        m.kernel = s.kernel ?? ""
        m.initrd = s.initrd ?? ""
        m.append = s.append ?? ""
        m.memoryMib = s.memory.mebibytes
        m.cpus = UInt32(clamping: s.cpus)
        m.disks = s.disks
        m.networks = s.networks.map(\.description)
        m.accel = s.accel.rawValue
        return m
    }

    static func state(_ s: VMState) -> PBState {
        switch s {
        case .created: return .created
        case .running: return .running
        case .paused: return .paused
        case .stopped: return .stopped
        case .crashed: return .crashed
        }
    }

    static func state(_ s: PBState) -> VMState? {
        switch s {
        case .created: return .created
        case .running: return .running
        case .paused: return .paused
        case .stopped: return .stopped
        case .crashed: return .crashed
        default: return nil
        }
    }

    static func vm(_ info: VMInfo) -> PBVm {
        var m = vm(name: info.spec.name, info.status)
        m.spec = spec(info.spec)
        m.runtimeDirectory = info.runtimeDirectory ?? ""
        return m
    }

    static func vm(name: VMName, _ s: VMStatus) -> PBVm {
        var m = PBVm()
        m.spec.name = name.rawValue
        m.state = state(s.state)
        m.reason = s.reason ?? ""
        m.reasonCode = s.reasonCode.rawValue
        m.pid = Int64(s.pid ?? 0)
        m.accel = s.accel ?? ""
        return m
    }

    /// A status from the wire; a state or pid it cannot be is the server's fault.
    static func status(_ m: PBVm, address: String) throws -> VMStatus {
        guard let st = state(m.state) else {
            throw PlasmaError(.internal, "\(address): vm '\(m.spec.name)' has no valid state (\(m.state.rawValue))")
        }
        guard m.pid >= 0, m.pid <= Int64(Int32.max) else {
            throw PlasmaError(.internal, "\(address): vm '\(m.spec.name)' has an impossible pid \(m.pid)")
        }
        return VMStatus(state: st, reason: m.reason.isEmpty ? nil : m.reason,
                        reasonCode: ReasonCode(rawValue: m.reasonCode),
                        pid: m.pid == 0 ? nil : Int32(m.pid), accel: m.accel.isEmpty ? nil : m.accel)
    }

    static func event(_ e: VMEvent, name: VMName) -> PBEvent {
        var m = PBEvent()
        m.name = name.rawValue
        m.kind = e.kind
        m.state = e.state.map(state) ?? .unspecified
        m.reasonCode = e.reasonCode?.rawValue ?? ""
        m.timeUnixNanos = e.unixNanos
        m.json = e.json
        return m
    }

    static func event(_ m: PBEvent) -> VMEvent {
        VMEvent(unixNanos: m.timeUnixNanos, kind: m.kind, state: state(m.state),
                reasonCode: ReasonCode(rawValue: m.reasonCode), json: m.json)
    }

    /// Seconds from the wire as a Duration: finite, not negative, at most a day.
    static func seconds(_ value: Double, field: String, fallback: Double) throws -> Duration {
        guard value.isFinite, value >= 0 else {
            throw PlasmaError(.invalidArgument, "\(field) must be a finite number of seconds >= 0, got \(value)")
        }
        guard value <= 86_400 else {
            throw PlasmaError(.invalidArgument, "\(field) must be at most 86400 seconds, got \(value)")
        }
        let s = value == 0 ? fallback : value
        return .nanoseconds(Int64((s * 1e9).rounded()))
    }

    static func offset(_ value: Int64, field: String) throws -> Int {
        guard value >= 0 else { throw PlasmaError(.invalidArgument, "\(field) must not be negative, got \(value)") }
        return Int(value)
    }
}
