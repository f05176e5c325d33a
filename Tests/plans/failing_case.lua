-- A case that fails after booting a VM: its console log is saved and the VM removed.
local test = require "plasma.test"
local guest = require "guest"

test.case("fails with a vm", function(t)
  local v = vm.create(guest.spec("tcase-fail", nil, { ephemeral = false }))
  v:start()
  v:wait_for_console(guest.ready, { timeout = 90 })
  t:eq(v:status(), "stopped")
end)

test.case("passes", function(t) t:ok(true) end)

return test.run()
