-- Stands in for `plasmavmc run PLAN [ARGS...]` under plain lua5.4, for the self-tests:
--
--   lua5.4 Tests/LuaRunnerTests/host.lua [--no-vm] PLAN [ARGS...]
--
-- Puts stdlib/ on package.path, installs the fake vm API (unless --no-vm: then there is no
-- `vm`, no `sleep` and no `__plasma_now`, as in bare Lua), sets `arg` like the real host and
-- maps the plan's result to the exit status as the real host does: `false` or an error -> 1.
-- Like the real host, it runs the plan in a coroutine that yields on every vm operation; this
-- scheduler just resumes it.

local here = arg[0]:match("^(.*)/[^/]*$") or "."
package.path = here .. "/../../stdlib/?.lua;" .. package.path

local first = 1
if arg[1] == "--no-vm" then
  first = 2
else
  dofile(here .. "/fake_vm.lua")
end

local plan = arg[first]
if not plan then
  io.stderr:write("usage: host.lua [--no-vm] PLAN [ARGS...]\n")
  os.exit(2)
end
local args = { [0] = plan }
for i = first + 1, #arg do args[#args + 1] = arg[i] end
arg = args

local chunk, err = loadfile(plan)
if not chunk then
  io.stderr:write("plasmavmc: error: ", err, "\n")
  os.exit(1)
end
local plan_co = coroutine.create(chunk)
local ok, result = coroutine.resume(plan_co, table.unpack(args))
while ok and coroutine.status(plan_co) == "suspended" do
  ok, result = coroutine.resume(plan_co)
end
io.stdout:flush()
if not ok then
  io.stderr:write("plasmavmc: error: ", debug.traceback(plan_co, tostring(result)), "\n")
  os.exit(1)
end
os.exit(result == false and 1 or 0)
