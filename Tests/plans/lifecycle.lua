-- The whole lifecycle through the vm API, both call styles.
local guest = require "guest"
local v = vm.create(guest.spec("plan-life"))
assert(v.name == "plan-life" and v.id == "plan-life")
assert(tostring(v) == "vm<plan-life: created>", tostring(v))
assert(v:status() == "created")
vm.start(v)
assert(vm.status("plan-life") == "running")
v:wait_for_console(guest.ready, { timeout = 90 })
local code, out = v:exec("uname -s; echo second line; exit_code() { return 3; }; exit_code")
assert(code == 3, "exit code " .. tostring(code))
assert(out == "Linux\nsecond line\n", ("output %q"):format(out))
local info = v:info()
assert(info.state == "running" and info.pid > 0 and info.accel == "tcg" and info.spec.memory == "256M", info.state)
assert(v:qmp("query-status").status == "running")
v:pause()
assert(v:status() == "paused")
v:resume()
v:wait_for("running", { timeout = 5 })
assert(v:console_log():find("PLASMAVMC-GUEST-READY", 1, true))
local step = v:stop { timeout = 30 }
assert(step == "powerdown", step)
local state, code, reason = v:status()
assert(state == "stopped" and code == "stop" and reason == "stopped by plasmavmc stop (step: powerdown)",
  state .. " " .. tostring(code) .. " " .. tostring(reason))
local info = v:info()
assert(info.reason_code == "stop" and info.reason == reason, tostring(info.reason_code))
v:start()
v:kill()
local killed, kcode, kreason = v:status()
assert(killed == "stopped" and kcode == "killed" and kreason == "killed by plasmavmc kill (SIGKILL)", tostring(kreason))
-- The event log, oldest first: the whole life of the VM.
local kinds = {}
for _, e in ipairs(v:events()) do
  assert(type(e.time) == "string" and math.type(e.unix_nanos) == "integer" and type(e.state) == "string")
  kinds[#kinds + 1] = e.kind
end
local seen = table.concat(kinds, ",")
assert(seen:find("^create,launch,greeting,resume,") and seen:find("stop%-requested,stop%-step")
  and seen:find("relaunch,launch,greeting,resume,kill%-requested,exit$"), seen)
local names = {}
for _, x in ipairs(vm.list()) do names[#names + 1] = x.name end
assert(table.concat(names, ",") == "plan-life", table.concat(names, ","))
assert(vm.get("plan-life") == v)
v:delete()
local ok, err = pcall(v.status, v)
assert(not ok and err:find("vm.status: vm 'plan%-life' was deleted"), err)
local none, msg = vm.get("plan-life")
assert(none == nil and msg == "vm 'plan-life' does not exist; see plasmavmc ls", msg)
print("lifecycle ok")
