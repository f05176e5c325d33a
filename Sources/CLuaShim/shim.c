#include "CLuaShim.h"

#include <lua5.4/lauxlib.h>
#include <lua5.4/lualib.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void *plasma_alloc(void *ud, void *ptr, size_t osize, size_t nsize) {
    (void)ud; (void)osize;
    if (nsize == 0) {
        free(ptr);
        return NULL;
    }
    void *p = realloc(ptr, nsize);
    if (p == NULL) {
        fputs("plasmavmc: out of memory in the Lua interpreter\n", stderr);
        abort();
    }
    return p;
}

static int panic_handler(lua_State *L) {
    const char *msg = lua_tostring(L, -1);
    fprintf(stderr, "plasmavmc: unprotected Lua error: %s\n", msg ? msg : "(not a string)");
    abort();
}

lua_State *plasma_lua_new(void) {
    lua_State *L = lua_newstate(plasma_alloc, NULL);
    if (L == NULL) return NULL;
    lua_atpanic(L, panic_handler);
    luaL_openlibs(L);
    return L;
}

static int trampoline(lua_State *L) {
    plasma_host_fn fn = (plasma_host_fn)lua_touserdata(L, lua_upvalueindex(1));
    void *ctx = lua_touserdata(L, lua_upvalueindex(2));
    int n = fn(L, ctx);
    if (n < 0) return lua_error(L);
    return n;
}

void plasma_push_host(lua_State *L, plasma_host_fn fn, void *ctx) {
    lua_pushlightuserdata(L, (void *)fn);
    lua_pushlightuserdata(L, ctx);
    lua_pushcclosure(L, trampoline, 2);
}

static int msgh(lua_State *L) {
    const char *msg = lua_tostring(L, 1);
    if (msg == NULL) {
        if (luaL_callmeta(L, 1, "__tostring") && lua_type(L, -1) == LUA_TSTRING) return 1;
        msg = lua_pushfstring(L, "(error object is a %s value)", luaL_typename(L, 1));
    }
    luaL_traceback(L, L, msg, 1);
    return 1;
}

int plasma_pcall_traceback(lua_State *L, int nargs, int nresults) {
    int base = lua_gettop(L) - nargs;
    lua_pushcfunction(L, msgh);
    lua_insert(L, base);
    int status = lua_pcall(L, nargs, nresults, base);
    lua_remove(L, base);
    return status;
}

int plasma_load(lua_State *L, const char *code, size_t len, const char *chunkname) {
    int status = luaL_loadbufferx(L, code, len, chunkname, "t");
    if (status != LUA_OK) return status;
    return plasma_pcall_traceback(L, 0, LUA_MULTRET);
}

int plasma_resume(lua_State *co, lua_State *from, int nargs, int *nresults) {
    return lua_resume(co, from, nargs, nresults);
}

void plasma_traceback(lua_State *L, lua_State *co, const char *msg) {
    luaL_traceback(L, co, msg, 0);
}

static const char *volatile interrupt_reason = NULL;

static void interrupt_hook(lua_State *L, lua_Debug *ar) {
    (void)ar;
    lua_sethook(L, NULL, 0, 0);
    luaL_error(L, "plan %s", interrupt_reason ? interrupt_reason : "interrupted");
}

void plasma_interrupt(lua_State *L, const char *why) {
    interrupt_reason = why;
    /* lua_sethook is the one API call documented as safe from a signal handler or another
       thread; the hook then raises inside the running coroutine. */
    lua_sethook(L, interrupt_hook, LUA_MASKCALL | LUA_MASKRET | LUA_MASKCOUNT, 1);
}

void plasma_new_object(lua_State *L, int table_index, const char *metatable_name) {
    table_index = lua_absindex(L, table_index);
    lua_newuserdatauv(L, 0, 1);
    lua_pushvalue(L, table_index);
    lua_setiuservalue(L, -2, 1);
    luaL_setmetatable(L, metatable_name);
}

int plasma_check_object(lua_State *L, int index, const char *metatable_name) {
    if (luaL_testudata(L, index, metatable_name) == NULL) return 0;
    lua_getiuservalue(L, index, 1);
    return 1;
}
