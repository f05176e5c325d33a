#ifndef CLUASHIM_H
#define CLUASHIM_H

#include <lua5.4/lua.h>
#include <stdint.h>

/// A host function written in Swift. It must never raise a Lua error itself: it returns the
/// number of results it pushed, or -1 after pushing an error value, and the C trampoline
/// raises that error once the Swift frame is gone (longjmp must never cross Swift frames).
typedef int (*plasma_host_fn)(lua_State *L, void *ctx);

/// A new state whose allocator aborts on out-of-memory (so memory errors never longjmp), with
/// the standard libraries open.
lua_State *plasma_lua_new(void);

/// Pushes a Lua function that calls `fn(L, ctx)` through the error trampoline.
void plasma_push_host(lua_State *L, plasma_host_fn fn, void *ctx);

/// Loads `code` as a text chunk named `chunkname` (e.g. "@plan.lua") and calls it protected,
/// with debug.traceback as message handler. Returns a LUA_* status; on error the message with
/// traceback is on top of the stack. On success the results (LUA_MULTRET) are on the stack.
int plasma_load(lua_State *L, const char *code, size_t len, const char *chunkname);

/// lua_pcall with debug.traceback as the message handler.
int plasma_pcall_traceback(lua_State *L, int nargs, int nresults);

/// Resumes coroutine `co` with `nargs` arguments. Returns the status and the number of results.
int plasma_resume(lua_State *co, lua_State *from, int nargs, int *nresults);

/// A traceback of coroutine `co` after a failed resume, with `msg` first; pushed on `L`.
void plasma_traceback(lua_State *L, lua_State *co, const char *msg);

/// Pushes on `L` "chunk:line: " of the innermost Lua function of suspended coroutine `co`
/// (or "" when it has none).
void plasma_where(lua_State *L, lua_State *co);

/// A session's interrupt flag (opaque). Made before the state, freed after `lua_close`.
typedef struct plasma_control plasma_control;
plasma_control *plasma_control_new(void);
void plasma_control_free(plasma_control *c);
/// Sets the flag with `why` (e.g. "timed out after 2s (--timeout)"); safe from any thread.
/// Returns 1 if this call set it, 0 if it was set already (the first reason stays).
int plasma_control_interrupt(plasma_control *c, const char *why);
int plasma_control_is_interrupted(plasma_control *c);
/// Clears the flag (Lua thread, between chunks: the REPL goes on after Ctrl-C).
void plasma_control_clear(plasma_control *c);
/// While set (Lua thread), the hook does not raise: the `<close>` handlers of coroutines the
/// scheduler abandons run to their end (a VM's handler hands its deletion to cleanup).
void plasma_control_closing(plasma_control *c, int closing);

/// Installs the one permanent count hook on the main state, before any coroutine exists (so
/// every coroutine inherits it): while `control` is set, Lua code fails with "plan <why>" at
/// every check, so a pcall cannot swallow the interrupt for good.
void plasma_install_interrupts(lua_State *L, plasma_control *control);

/// Pushes a C function that raises the interrupt error when the flag is set, else returns
/// nothing (the prelude calls it after pcall, xpcall and coroutine.resume catch an error).
void plasma_push_interrupt_check(lua_State *L);

/// Pushes a C function `restore_hook([co])` that puts the interrupt hook back on a coroutine
/// (the prelude's debug.sethook calls it when a plan clears its own hook).
void plasma_push_restore_hook(lua_State *L);

/// Makes a full userdata with one user value slot holding the table at `table_index`, with
/// the metatable registered under `metatable_name`.
void plasma_new_object(lua_State *L, int table_index, const char *metatable_name);

/// The user value table of the userdata at `index` if its metatable is `metatable_name`,
/// pushed; else pushes nothing and returns 0.
int plasma_check_object(lua_State *L, int index, const char *metatable_name);

/* Macro wrappers (function-like macros are invisible to Swift). */
static inline void plasma_pop(lua_State *L, int n) { lua_pop(L, n); }
static inline void plasma_newtable(lua_State *L) { lua_newtable(L); }
static inline const char *plasma_tostring(lua_State *L, int i, size_t *len) { return lua_tolstring(L, i, len); }
static inline int plasma_isnil(lua_State *L, int i) { return lua_isnil(L, i); }
static inline int plasma_isnoneornil(lua_State *L, int i) { return lua_isnoneornil(L, i); }
static inline int plasma_istable(lua_State *L, int i) { return lua_istable(L, i); }
static inline int plasma_registryindex(void) { return LUA_REGISTRYINDEX; }
static inline int plasma_upvalueindex(int i) { return lua_upvalueindex(i); }
static inline lua_Integer plasma_tointeger(lua_State *L, int i, int *isnum) { return lua_tointegerx(L, i, isnum); }
static inline lua_Number plasma_tonumber(lua_State *L, int i, int *isnum) { return lua_tonumberx(L, i, isnum); }
static inline void plasma_remove(lua_State *L, int i) { lua_remove(L, i); }
static inline void plasma_insert(lua_State *L, int i) { lua_insert(L, i); }
static inline lua_State *plasma_tothread(lua_State *L, int i) { return lua_tothread(L, i); }

#endif
