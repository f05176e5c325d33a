import CLua
import CLuaShim
import Foundation

/// A Lua value that can cross threads: results of operations, arguments of host calls.
public enum LuaValue: Sendable, Equatable {
    case `nil`
    case bool(Bool)
    case int(Int64)
    case number(Double)
    case string(String)
    /// A sequence (1…n).
    case array([LuaValue])
    /// A table with string keys.
    case table([String: LuaValue])
    /// A VM object for the named VM on one of the session's hosts (0: its own).
    case vm(String, host: Int)

    public var string: String? {
        if case .string(let s) = self { return s }
        return nil
    }

    public var number: Double? {
        switch self {
        case .int(let i): return Double(i)
        case .number(let d): return d
        default: return nil
        }
    }

    public var int: Int64? {
        switch self {
        case .int(let i): return i
        case .number(let d): return d == d.rounded() ? Int64(exactly: d) : nil
        default: return nil
        }
    }

    public var bool: Bool? {
        if case .bool(let b) = self { return b }
        return nil
    }

    public var isNil: Bool { self == .nil }

    /// A Lua value from parsed JSON (JSONSerialization output).
    static func fromJSON(_ any: Any) -> LuaValue {
        switch any {
        case let n as NSNumber:
            // JSONSerialization boxes true/false as NSNumbers of C type char.
            if String(cString: n.objCType) == "c" { return .bool(n.boolValue) }
            let d = n.doubleValue
            if d == d.rounded(), let i = Int64(exactly: d) { return .int(i) }
            return .number(d)
        case let s as String: return .string(s)
        case let a as [Any]: return .array(a.map(fromJSON))
        case let o as [String: Any]: return .table(o.mapValues(fromJSON))
        default: return .nil
        }
    }

    /// JSON text for this value (tables become objects, sequences arrays).
    var json: String {
        switch self {
        case .nil, .vm: return "null"
        case .bool(let b): return b ? "true" : "false"
        case .int(let i): return String(i)
        case .number(let d): return d.isFinite ? String(d) : "null"
        case .string(let s):
            let data = (try? JSONSerialization.data(withJSONObject: [s], options: [.fragmentsAllowed])) ?? Data("[\"\"]".utf8)
            let t = String(decoding: data, as: UTF8.self)
            return String(t.dropFirst().dropLast())
        case .array(let a): return "[" + a.map(\.json).joined(separator: ",") + "]"
        case .table(let o):
            if o.isEmpty { return "{}" }
            return "{" + o.keys.sorted().map { LuaValue.string($0).json + ":" + o[$0]!.json }.joined(separator: ",") + "}"
        }
    }
}

/// Stack helpers. None of these can raise a Lua error: they only use API functions that
/// cannot fail except on memory, and the allocator aborts instead.
enum LuaStack {
    static func push(_ L: OpaquePointer, _ v: LuaValue) {
        switch v {
        case .nil: lua_pushnil(L)
        case .bool(let b): lua_pushboolean(L, b ? 1 : 0)
        case .int(let i): lua_pushinteger(L, lua_Integer(i))
        case .number(let d): lua_pushnumber(L, d)
        case .string(let s): pushString(L, s)
        case .array(let a):
            lua_createtable(L, Int32(a.count), 0)
            for (i, e) in a.enumerated() {
                push(L, e)
                lua_rawseti(L, -2, lua_Integer(i + 1))
            }
        case .table(let t):
            lua_createtable(L, 0, Int32(t.count))
            for (k, e) in t {
                pushString(L, k)
                push(L, e)
                lua_rawset(L, -3)
            }
        case .vm:
            // VM objects need the session's metatable: LuaSession.push builds them.
            lua_pushnil(L)
        }
    }

    static func pushString(_ L: OpaquePointer, _ s: String) {
        var s = s
        s.withUTF8 { buf in
            _ = buf.withMemoryRebound(to: CChar.self) { lua_pushlstring(L, $0.baseAddress, $0.count) }
        }
    }

    /// The string at `index` without conversion of numbers in place.
    static func string(_ L: OpaquePointer, _ index: Int32) -> String? {
        guard lua_type(L, index) == LUA_TSTRING else { return nil }
        var len = 0
        guard let p = plasma_tostring(L, index, &len) else { return nil }
        return String(decoding: UnsafeRawBufferPointer(start: p, count: len), as: UTF8.self)
    }

    /// Any value rendered as text, for messages (numbers, booleans, nil; tables by type).
    static func describe(_ L: OpaquePointer, _ index: Int32) -> String {
        switch lua_type(L, index) {
        case LUA_TSTRING: return string(L, index) ?? ""
        case LUA_TNUMBER:
            var isnum: Int32 = 0
            let i = plasma_tointeger(L, index, &isnum)
            if isnum != 0 { return String(i) }
            return String(plasma_tonumber(L, index, &isnum))
        case LUA_TBOOLEAN: return lua_toboolean(L, index) != 0 ? "true" : "false"
        case LUA_TNIL, LUA_TNONE: return "nil"
        default: return String(cString: lua_typename(L, lua_type(L, index)))
        }
    }

    /// Reads the value at `index` (tables recursively, at most `depth` deep).
    static func value(_ L: OpaquePointer, _ index: Int32, depth: Int = 16) -> LuaValue {
        let index = lua_absindex(L, index)
        switch lua_type(L, index) {
        case LUA_TNIL, LUA_TNONE: return .nil
        case LUA_TBOOLEAN: return .bool(lua_toboolean(L, index) != 0)
        case LUA_TNUMBER:
            var isnum: Int32 = 0
            if lua_isinteger(L, index) != 0 { return .int(Int64(plasma_tointeger(L, index, &isnum))) }
            return .number(plasma_tonumber(L, index, &isnum))
        case LUA_TSTRING: return .string(string(L, index) ?? "")
        case LUA_TTABLE:
            guard depth > 0 else { return .nil }
            var dict: [String: LuaValue] = [:]
            var seq: [Int64: LuaValue] = [:]
            lua_pushnil(L)
            while lua_next(L, index) != 0 {
                let v = value(L, -1, depth: depth - 1)
                if lua_type(L, -2) == LUA_TNUMBER, lua_isinteger(L, -2) != 0 {
                    var isnum: Int32 = 0
                    seq[Int64(plasma_tointeger(L, -2, &isnum))] = v
                } else if let k = string(L, -2) {
                    dict[k] = v
                }
                plasma_pop(L, 1)
            }
            if dict.isEmpty, !seq.isEmpty, seq.keys.min() == 1, seq.keys.max() == Int64(seq.count) {
                return .array((1...Int64(seq.count)).map { seq[$0]! })
            }
            for (k, v) in seq { dict[String(k)] = v }
            return dict.isEmpty && seq.isEmpty ? .array([]) : .table(dict)
        default:
            return .nil
        }
    }
}
