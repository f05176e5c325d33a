/// A memory size given as text: `256M`, `1G`, `512MiB`, `2048K`; a bare number means MiB,
/// as on QEMU's `-m`.
public struct MemorySize: Hashable, Sendable, Codable, CustomStringConvertible {
    public let mebibytes: UInt64

    public init(mebibytes: UInt64) { self.mebibytes = mebibytes }

    /// - Throws: `PlasmaError.invalidArgument` for anything that is not a positive whole size
    ///   of at least 1 MiB.
    public init(parsing text: String, field: String = "memory") throws {
        let bad = PlasmaError(.invalidArgument,
                              "\(field) must be a size like \"256M\" or \"1G\", got \"\(text)\"")
        var s = text.trimmingWhitespace()
        guard !s.isEmpty else { throw bad }
        let upper = s.uppercased()
        var unitMiB: (num: UInt64, den: UInt64) = (1, 1)
        for (suffixes, unit) in [(["KIB", "KB", "K"], (UInt64(1), UInt64(1024))),
                                 (["MIB", "MB", "M"], (1, 1)),
                                 (["GIB", "GB", "G"], (1024, 1)),
                                 (["TIB", "TB", "T"], (1024 * 1024, 1))] {
            if let suf = suffixes.first(where: { upper.hasSuffix($0) }) {
                s = String(s.dropLast(suf.count))
                unitMiB = unit
                break
            }
        }
        guard !s.isEmpty, s.utf8.allSatisfy({ $0 >= 48 && $0 <= 57 }), let n = UInt64(s) else { throw bad }
        let (product, overflow) = n.multipliedReportingOverflow(by: unitMiB.num)
        guard !overflow else { throw bad }
        let mib = product / unitMiB.den
        guard mib >= 1, product % unitMiB.den == 0 else {
            throw PlasmaError(.invalidArgument,
                              "\(field) must be a whole number of MiB and at least 1M, got \"\(text)\"")
        }
        mebibytes = mib
    }

    public var description: String {
        if mebibytes % 1024 == 0 { return "\(mebibytes / 1024)G" }
        return "\(mebibytes)M"
    }
}

extension String {
    func trimmingWhitespace() -> String {
        var s = Substring(self)
        while let f = s.first, f.isWhitespace { s.removeFirst() }
        while let l = s.last, l.isWhitespace { s.removeLast() }
        return String(s)
    }
}
