#include "CLuaShim.h"

#include <lua5.4/lauxlib.h>
#include <lua5.4/lualib.h>
#include <stdatomic.h>
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

void plasma_where(lua_State *L, lua_State *co) {
    lua_Debug ar;
    for (int level = 0; lua_getstack(co, level, &ar); level++) {
        if (lua_getinfo(co, "Sl", &ar) && ar.currentline > 0) {
            lua_pushfstring(L, "%s:%d: ", ar.short_src, ar.currentline);
            return;
        }
    }
    lua_pushliteral(L, "");
}

/* A session's interrupt flag. Swift sets it from any thread (timer, signal handler thread);
   the count hook reads it on the Lua thread. The reason is written once, before the flag is
   published (release), and read after the flag is seen (acquire). */
struct plasma_control {
    atomic_int claimed;
    atomic_int interrupted;
    /* Set (Lua thread only) while the `<close>` handlers of abandoned coroutines run. */
    int closing;
    char reason[256];
};

plasma_control *plasma_control_new(void) {
    plasma_control *c = calloc(1, sizeof *c);
    if (c == NULL) {
        fputs("plasmavmc: out of memory\n", stderr);
        abort();
    }
    return c;
}

void plasma_control_free(plasma_control *c) { free(c); }

int plasma_control_interrupt(plasma_control *c, const char *why) {
    int expected = 0;
    if (!atomic_compare_exchange_strong(&c->claimed, &expected, 1)) return 0;
    snprintf(c->reason, sizeof c->reason, "%s", why);
    atomic_store_explicit(&c->interrupted, 1, memory_order_release);
    return 1;
}

int plasma_control_is_interrupted(plasma_control *c) {
    return atomic_load_explicit(&c->interrupted, memory_order_acquire);
}

void plasma_control_clear(plasma_control *c) {
    atomic_store_explicit(&c->interrupted, 0, memory_order_release);
    atomic_store(&c->claimed, 0);
    c->reason[0] = 0;
}

static plasma_control *control_of(lua_State *L) {
    /* The main state's extra space holds the control; lua_newthread copies it to every
       coroutine, so each sees the same flag. */
    return *(plasma_control **)lua_getextraspace(L);
}

static int raise_interrupt(lua_State *L) {
    plasma_control *c = control_of(L);
    return luaL_error(L, "plan %s", c->reason[0] ? c->reason : "interrupted");
}

static void count_hook(lua_State *L, lua_Debug *ar) {
    (void)ar;
    plasma_control *c = control_of(L);
    /* Raised again at every check once set, so a pcall that swallows it only gets to run
       another PLASMA_HOOK_COUNT instructions. */
    if (c != NULL && !c->closing && plasma_control_is_interrupted(c)) raise_interrupt(L);
}

void plasma_control_closing(plasma_control *c, int closing) { c->closing = closing; }

enum { PLASMA_HOOK_COUNT = 1000 };

void plasma_install_interrupts(lua_State *L, plasma_control *control) {
    *(plasma_control **)lua_getextraspace(L) = control;
    lua_sethook(L, count_hook, LUA_MASKCOUNT, PLASMA_HOOK_COUNT);
}

static int check_interrupt(lua_State *L) {
    plasma_control *c = control_of(L);
    if (c != NULL && !c->closing && plasma_control_is_interrupted(c)) return raise_interrupt(L);
    return 0;
}

void plasma_push_interrupt_check(lua_State *L) { lua_pushcfunction(L, check_interrupt); }

/* restore_hook([co]): puts the count hook back on coroutine co (or the running one). */
static int restore_hook(lua_State *L) {
    lua_State *co = lua_isthread(L, 1) ? lua_tothread(L, 1) : L;
    lua_sethook(co, count_hook, LUA_MASKCOUNT, PLASMA_HOOK_COUNT);
    return 0;
}

void plasma_push_restore_hook(lua_State *L) { lua_pushcfunction(L, restore_hook); }

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
