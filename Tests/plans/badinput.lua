-- Wrong arguments and illegal operations raise catchable errors that name the problem.
local guest = require "guest"
local function fails(pattern, f, ...)
  local ok, err = pcall(f, ...)
  assert(not ok, "expected an error matching " .. pattern)
  assert(tostring(err):find(pattern), ("error %q does not match %q"):format(tostring(err), pattern))
  assert(tostring(err):find("^badinput%.lua:%d+:") or tostring(err):find("/badinput%.lua:%d+:"),
    "error without the plan's position: " .. tostring(err))
end
fails([[vm.create: 'memory' must be a size like "256M"]], vm.create, guest.spec("bad", nil, { memory = "abc" }))
fails("vm.create: unknown option 'colour'", vm.create, guest.spec("bad", nil, { colour = "red" }))
fails("vm.create: 'cpus' must be a number, got string", vm.create, guest.spec("bad", nil, { cpus = "2" }))
fails("vm.create: invalid vm name \"a/b\"", vm.create, guest.spec("a/b"))
fails("kernel /nonexistent does not exist", vm.create, guest.spec("bad", nil, { kernel = "/nonexistent" }))
fails("vm 'ghost' does not exist", vm.start, "ghost")
local v = vm.create(guest.spec("plan-bad"))
v:start()
fails("cannot start vm 'plan%-bad': it is already running", v.start, v)
fails("timed out after 0.5s waiting for console pattern \"NEVER\" %(vm is running%)", v.wait_for_console, v, "NEVER", { timeout = 0.5 })
v:wait_for_console(guest.ready, { timeout = 90 })
local t0 = __plasma_now()
fails("console showed failure pattern \"GUEST%%%-READY\"", v.wait_for_console, v, "NEVER", { timeout = 30, fail = { "GUEST%-READY" } })
assert(__plasma_now() - t0 < 20, "a fail pattern ends the wait long before its 30 s timeout")
fails("timed out after 0.2s waiting for state stopped %(it is running", v.wait_for, v, "stopped", { timeout = 0.2 })
fails("vm.stop: unknown option 'grace'", v.stop, v, { grace = 1 })
v:delete { force = true }
fails("vm.start: vm 'plan%-bad' was deleted", v.start, v)
do
  local c <close> = vm.create(guest.spec("plan-close", nil, { ephemeral = false }))
  assert(vm.get("plan-close"))
end
assert(vm.get("plan-close") == nil, "a <close> vm is deleted at the end of its scope")
print("badinput ok")
