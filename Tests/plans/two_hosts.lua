-- One plan, two plasmavmc servers (two runtime folders, given as HOST1 and HOST2): a VM of the
-- same name on each, booted and driven at once with vm.parallel; each answers exec with its own
-- output and each host sees only its own VM.
local guest = require "guest"
local h1 = vm.connect((assert(os.getenv("HOST1"), "HOST1 is not set")))
local h2 = vm.connect((assert(os.getenv("HOST2"), "HOST2 is not set")))
assert(h1.address ~= h2.address)

local function boot(h, tag)
  local v = h.create(guest.spec("twin"))
  v:start()
  v:wait_for_console(guest.ready, { timeout = 120 })
  local code, out = v:exec("echo from-" .. tag)
  assert(code == 0, out)
  return { vm = v, out = out }
end

local a, b = vm.parallel(function() return boot(h1, "one") end, function() return boot(h2, "two") end)
assert(a.out == "from-one\n" and b.out == "from-two\n", ("%q %q"):format(a.out, b.out))
assert(a.vm ~= b.vm, "same name on two hosts: two VMs")
assert(a.vm:info().host == h1.address and b.vm:info().host == h2.address)
assert(#h1.list() == 1 and #h2.list() == 1)
assert(#vm.list() == 0, "the plan's own host has none")
print(a.vm:stop{ timeout = 30 }, b.vm:stop{ timeout = 30 })
a.vm:delete()
b.vm:delete()
assert(#h1.list() == 0 and #h2.list() == 0)
print("two hosts ok")
