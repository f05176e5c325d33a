-- Two guests boot at once; each runs a command.
local guest = require "guest"
local a, b = vm.parallel(function()
  local v = guest.boot("plan-par-a")
  return select(2, v:exec("echo from-a"))
end, function()
  local v = guest.boot("plan-par-b")
  return select(2, v:exec("echo from-b"))
end)
assert(a == "from-a\n" and b == "from-b\n", ("%q %q"):format(a, b))
print("parallel ok")
