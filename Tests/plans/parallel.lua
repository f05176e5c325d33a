-- Two guests boot at once; each runs a command. Branches hand back tables holding VM objects.
local guest = require "guest"
local a, b = vm.parallel(function()
  local v = guest.boot("plan-par-a")
  return { vm = v, out = select(2, v:exec("echo from-a")) }
end, function()
  local v = guest.boot("plan-par-b")
  return { vm = v, out = select(2, v:exec("echo from-b")) }
end)
assert(a.out == "from-a\n" and b.out == "from-b\n", ("%q %q"):format(a.out, b.out))
assert(a.vm.name == "plan-par-a" and b.vm:status() == "running", "VM objects come back intact")
print("parallel ok")
