import Foundation
import PlasmaCore
@testable import PlasmaKVM
import Testing

/// spec.json keeps the disk formats create decided, beside the spec's own fields.
@Suite("Spec record")
struct SpecRecordTests {
    let spec = VMSpec(name: try! VMName("web"), kernel: "/k", disks: ["/d1.qcow2", "/d2.img"])

    @Test func recordedFormatsRoundTripAndTheFileStillReadsAsASpec() throws {
        let data = try JSONEncoder().encode(SpecRecord(spec: spec, diskFormats: [.qcow2, .raw]))
        let record = try JSONDecoder().decode(SpecRecord.self, from: data)
        #expect(record.spec == spec)
        #expect(record.diskFormats == [.qcow2, .raw])
        #expect(try JSONDecoder().decode(VMSpec.self, from: data) == spec)
        #expect(try KVMHypervisor.recordedDiskFormats(record) == [.qcow2, .raw])
    }

    @Test func aRecordWithoutFormatsIsNotProbedAgain() throws {
        let old = try JSONDecoder().decode(SpecRecord.self, from: JSONEncoder().encode(spec))
        #expect(old.diskFormats == nil)
        let error = #expect(throws: PlasmaError.self) { try KVMHypervisor.recordedDiskFormats(old) }
        #expect(error?.code == .invalidState)
        #expect(error?.message.contains("delete the vm and create it again") == true)
        let diskless = VMSpec(name: try VMName("k"), kernel: "/k")
        let oldDiskless = try JSONDecoder().decode(SpecRecord.self, from: JSONEncoder().encode(diskless))
        #expect(try KVMHypervisor.recordedDiskFormats(oldDiskless) == [])
    }

    @Test func formatsThatDoNotMatchTheDisksAreAnError() throws {
        #expect(throws: PlasmaError.self) {
            try KVMHypervisor.recordedDiskFormats(SpecRecord(spec: spec, diskFormats: [.raw]))
        }
        let text = String(decoding: try JSONEncoder().encode(SpecRecord(spec: spec, diskFormats: [.raw, .raw])), as: UTF8.self)
            .replacingOccurrences(of: "\"raw\"", with: "\"vmdk\"")
        #expect(throws: DecodingError.self) { try JSONDecoder().decode(SpecRecord.self, from: Data(text.utf8)) }
    }

    @Test func probeSeesQcow2ByItsMagicAndAnythingElseAsRaw() throws {
        let dir = NSTemporaryDirectory() + "spec-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        #expect(FileManager.default.createFile(atPath: dir + "/q", contents: Data([0x51, 0x46, 0x49, 0xFB, 0, 0, 0, 3])))
        #expect(FileManager.default.createFile(atPath: dir + "/r", contents: Data(repeating: 0, count: 512)))
        #expect(KVMHypervisor.diskFormat(dir + "/q") == .qcow2)
        #expect(KVMHypervisor.diskFormat(dir + "/r") == .raw)
    }
}
