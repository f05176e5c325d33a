import Foundation
import PlasmaVMM

/// The one check for every duration, offset, size and count that comes from Lua or the
/// command line, made before Swift converts it (`Int64(x)` on NaN, an infinity or 1e300
/// traps). NaN, negative and out-of-range values are errors naming the call and the field;
/// `math.huge` means "no limit" only where a caller allows it.
public enum NumberCheck {
    /// The longest duration accepted, in seconds (about 31 years).
    public static let maxSeconds: Double = 1_000_000_000

    /// A number of seconds: `nil` for "no limit" (`math.huge`, only when `unlimited` allows
    /// it). `value` nil gives `fallback`.
    static func seconds(_ value: LuaValue, _ place: String, _ field: String, fallback: Double,
                        unlimited: Bool = false) throws(PlasmaError) -> Double? {
        if value.isNil { return fallback }
        guard let d = value.number else { throw bad(place, field, "must be a number of seconds, got \(value.typeName)") }
        return try seconds(d, place, field, unlimited: unlimited)
    }

    static func seconds(_ d: Double, _ place: String, _ field: String, unlimited: Bool) throws(PlasmaError) -> Double? {
        guard !d.isNaN else { throw bad(place, field, "must be a number, got NaN") }
        guard d >= 0 else { throw bad(place, field, "must be >= 0, got \(show(d))") }
        if d == .infinity {
            if unlimited { return nil }
            throw bad(place, field, "must be finite (math.huge means no limit only for waits), got inf")
        }
        guard d <= maxSeconds else {
            throw bad(place, field, "must be at most \(show(maxSeconds)) seconds\(unlimited ? " (math.huge for no limit)" : ""), got \(show(d))")
        }
        return d
    }

    /// A whole number in `0...max` (a byte offset, a size, a count).
    static func whole(_ value: LuaValue, _ place: String, _ field: String, fallback: Int,
                      max: Int = Int(Int32.max) * 1024) throws(PlasmaError) -> Int {
        if value.isNil { return fallback }
        let d: Double
        switch value {
        case .int(let i):
            guard i >= 0 else { throw bad(place, field, "must be >= 0, got \(i)") }
            guard i <= Int64(max) else { throw bad(place, field, "must be at most \(max), got \(i)") }
            return Int(i)
        case .number(let n): d = n
        default: throw bad(place, field, "must be a whole number, got \(value.typeName)")
        }
        guard !d.isNaN else { throw bad(place, field, "must be a number, got NaN") }
        guard d >= 0 else { throw bad(place, field, "must be >= 0, got \(show(d))") }
        guard d == d.rounded(), d.isFinite else { throw bad(place, field, "must be a whole number, got \(show(d))") }
        guard d <= Double(max) else { throw bad(place, field, "must be at most \(max), got \(show(d))") }
        return Int(d)
    }

    /// `--timeout S` of the CLI: seconds > 0, finite, at most `maxSeconds`.
    public static func commandLineSeconds(_ text: String, option: String) throws(PlasmaError) -> Duration {
        guard let d = Double(text.trimmingCharacters(in: .whitespaces)) else {
            throw PlasmaError(.invalidArgument, "\(option) must be a number of seconds > 0, got \"\(text)\"")
        }
        guard d > 0 else { throw PlasmaError(.invalidArgument, "\(option) must be a number of seconds > 0, got \"\(text)\"") }
        let checked: Double?
        do {
            checked = try seconds(d, option, "", unlimited: false)
        } catch {
            throw PlasmaError(.invalidArgument, "\(option) must be a finite number of seconds > 0, at most \(show(maxSeconds)), got \"\(text)\"")
        }
        return duration(checked!)
    }

    /// A checked number of seconds as a Duration (milliseconds; cannot overflow after the check).
    static func duration(_ seconds: Double) -> Duration { .milliseconds(Int64((seconds * 1000).rounded())) }

    static func bad(_ place: String, _ field: String, _ what: String) -> PlasmaError {
        PlasmaError(.invalidArgument, "\(place): '\(field)' \(what)")
    }

    /// A number as Lua would print it: integers without ".0", others with %.14g.
    static func show(_ d: Double) -> String {
        if d.isNaN { return "NaN" }
        if d.isInfinite { return d > 0 ? "inf" : "-inf" }
        if d == d.rounded(), abs(d) < 1e15 { return String(Int64(d)) }
        return String(format: "%.14g", d)
    }
}

extension LuaValue {
    /// The Lua type name, for messages.
    var typeName: String {
        switch self {
        case .nil: return "nil"
        case .bool: return "boolean"
        case .int, .number: return "number"
        case .string: return "string"
        case .array, .table: return "table"
        case .vm: return "userdata"
        }
    }
}
