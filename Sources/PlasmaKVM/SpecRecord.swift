import Foundation
import PlasmaHypervisor

/// A disk image format, always named to QEMU so that QEMU never guesses one from the image.
public enum DiskFormat: String, Sendable, Codable, CaseIterable {
    case raw, qcow2
}

/// `spec.json`: the VM's spec, plus what create decided about its disks. A guest can write
/// anything into a raw disk, a qcow2 header naming a host file as its backing file included;
/// so the format is probed once, at create, recorded here, and every later launch uses the
/// record. The extra key sits beside the spec's own, so the file still reads as a `VMSpec`.
struct SpecRecord: Codable {
    var spec: VMSpec
    /// One per disk of `spec`. Nil in a record written before formats were recorded.
    var diskFormats: [DiskFormat]?

    init(spec: VMSpec, diskFormats: [DiskFormat]?) {
        self.spec = spec
        self.diskFormats = diskFormats
    }

    private enum Keys: String, CodingKey { case diskFormats }

    init(from decoder: any Decoder) throws {
        spec = try VMSpec(from: decoder)
        diskFormats = try decoder.container(keyedBy: Keys.self).decodeIfPresent([DiskFormat].self, forKey: .diskFormats)
    }

    func encode(to encoder: any Encoder) throws {
        try spec.encode(to: encoder)
        var c = encoder.container(keyedBy: Keys.self)
        try c.encodeIfPresent(diskFormats, forKey: .diskFormats)
    }
}

extension KVMHypervisor {
    /// qcow2 by its magic, raw otherwise. Only for create: what a disk holds later is the
    /// guest's to write.
    static func diskFormat(_ path: String) -> DiskFormat {
        guard let h = FileHandle(forReadingAtPath: path) else { return .raw }
        defer { try? h.close() }
        let magic = (try? h.read(upToCount: 4)) ?? Data()
        return magic == Data([0x51, 0x46, 0x49, 0xFB]) ? .qcow2 : .raw
    }

    /// The disk formats create recorded for `record`'s disks; never probed again.
    /// - Throws: `invalidState` for a VM with disks whose record predates recorded formats
    ///   (probing now would trust what the guest wrote), `internal` when the formats do not
    ///   match the disks.
    static func recordedDiskFormats(_ record: SpecRecord) throws -> [DiskFormat] {
        let spec = record.spec
        guard let formats = record.diskFormats ?? (spec.disks.isEmpty ? [] : nil) else {
            throw PlasmaError(.invalidState,
                              "vm '\(spec.name)' was created by an older plasmavmc that did not record its disk formats, and they are not probed again (a guest can rewrite a disk's header); delete the vm and create it again")
        }
        guard formats.count == spec.disks.count else {
            throw PlasmaError(.internal,
                              "vm '\(spec.name)': spec.json records \(formats.count) disk formats for \(spec.disks.count) disks; delete the vm and create it again")
        }
        return formats
    }
}
