-- A guest that ignores powerdown is stopped by quit; a panicking one reads crashed.
local guest = require "guest"
vm.parallel(function()
  local deaf = guest.boot("plan-deaf", "plasma.powerdown=ignore")
  local step = deaf:stop { timeout = 5 }
  assert(step == "quit", step)
end, function()
  local p = vm.create(guest.spec("plan-panic", "plasma.panic=now"))
  p:start()
  p:wait_for("crashed", { timeout = 90 })
  local state, code, reason = p:status()
  assert(state == "crashed" and code == "guest-panicked" and reason == "the guest panicked", tostring(reason))
end)
print("faults ok")
