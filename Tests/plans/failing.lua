-- Fails after creating an ephemeral VM and a persistent one inside a <close> scope.
local guest = require "guest"
local v = vm.create(guest.spec("plan-fail"))
v:start()
local w <close> = vm.create(guest.spec("plan-fail-close", nil, { ephemeral = false }))
error("deliberate failure")
