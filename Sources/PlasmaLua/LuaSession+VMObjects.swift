import CLua
import CLuaShim
import Foundation

/// VM objects: full userdata with the prelude's metatable (`plasmavmc.vm`) and a user value
/// table holding the VM's name, its host's id (0: the session's own) and `deleted` once deleted.
extension LuaSession {
    /// Pushes a value; VM objects are built as userdata with the prelude's metatable.
    func push(_ L: OpaquePointer, _ v: LuaValue) {
        switch v {
        case .vm(let name, let host):
            lua_createtable(L, 0, 3)
            LuaStack.pushString(L, name)
            lua_setfield(L, -2, "name")
            lua_pushinteger(L, lua_Integer(host))
            lua_setfield(L, -2, "host")
            plasma_new_object(L, -1, "plasmavmc.vm")
            plasma_remove(L, -2)
        case .array(let a) where a.contains(where: { if case .vm = $0 { return true } else { return false } }):
            lua_createtable(L, Int32(a.count), 0)
            for (i, e) in a.enumerated() {
                push(L, e)
                lua_rawseti(L, -2, lua_Integer(i + 1))
            }
        default:
            LuaStack.push(L, v)
        }
    }
}
