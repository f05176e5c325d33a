-- The test runner driving the real guest: VMs made in a case are removed when it ends.
local test = require "plasma.test"
local guest = require "guest"

test.case("boots and runs a command", function(t)
  local v = vm.create(guest.spec("tcase-boot", nil, { ephemeral = false }))
  v:start()
  t:match(v:wait_for_console(guest.ready, { timeout = 90 }), "READY")
  local code, out = v:exec("echo hello from $(uname -s)")
  t:eq(code, 0)
  t:eq(out, "hello from Linux\n")
  t:eq(v:status(), "running")
end)

test.case("the previous case's VM is gone", function(t)
  t:eq(vm.get("tcase-boot"), nil)
  t:eq(#vm.list(), 0)
end)

test.case("bad input raises", function(t)
  t:raises(function() vm.create{ name = "x", memory = "abc" } end, "'memory' must be a size")
  t:raises(function() vm.start("no-such-vm") end, "does not exist")
end)

return test.run()
