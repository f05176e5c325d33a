-- Creates an ephemeral VM, then never ends: for --timeout and Ctrl-C.
local guest = require "guest"
vm.create(guest.spec(arg[1] or "plan-forever")):start()
print("created")
io.stdout:flush()
if arg[2] == "spin" then while true do end end
while true do sleep(0.1) end
