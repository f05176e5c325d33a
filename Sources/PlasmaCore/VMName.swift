/// A validated VM name: 1–63 characters of letters, digits, `.`, `_` and `-`, starting with a
/// letter or digit. Names become folder names, so nothing that could escape a folder is allowed.
public struct VMName: Hashable, Sendable, Comparable, CustomStringConvertible, Codable {
    public let rawValue: String

    public static let maxLength = 63

    /// - Throws: `PlasmaError.invalidArgument` naming what is wrong with `raw`.
    public init(_ raw: String) throws {
        func bad(_ why: String) -> PlasmaError {
            PlasmaError(.invalidArgument,
                        "invalid vm name \"\(raw)\": \(why); use 1-\(VMName.maxLength) letters, digits, '.', '_' or '-', starting with a letter or digit")
        }
        if raw.isEmpty { throw bad("it is empty") }
        if raw.utf8.count > VMName.maxLength { throw bad("it is \(raw.utf8.count) characters long") }
        if raw.contains("..") { throw bad("it contains '..'") }
        for (i, c) in raw.unicodeScalars.enumerated() {
            let ok = (c >= "a" && c <= "z") || (c >= "A" && c <= "Z") || (c >= "0" && c <= "9")
                || (i > 0 && (c == "." || c == "_" || c == "-"))
            if !ok {
                let shown = c == " " ? "a space" : c == "/" ? "'/'" : "'\(c)'"
                throw bad(i == 0 && (c == "." || c == "_" || c == "-")
                          ? "it starts with \(shown)" : "it contains \(shown)")
            }
        }
        rawValue = raw
    }

    public var description: String { rawValue }
    public static func < (a: VMName, b: VMName) -> Bool { a.rawValue < b.rawValue }

    public init(from decoder: any Decoder) throws {
        try self.init(try decoder.singleValueContainer().decode(String.self))
    }
    public func encode(to encoder: any Encoder) throws {
        var c = encoder.singleValueContainer()
        try c.encode(rawValue)
    }
}
