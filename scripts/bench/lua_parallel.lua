-- Targets 3 and 4: one guest booting alone vs four booting at once through vm.parallel, in
-- ROUNDS rounds (order alternated: one→four, four→one, …). "Boot" is the wall time from
-- vm.create to the readiness line on the console. With all four up, the plan holds them for
-- HOLD seconds, polling their status, while the driver samples this process's memory.
--   plasmavmc run lua_parallel.lua KERNEL INITRD [ROUNDS] [HOLD_SECONDS] [PREFIX]
local C = require "lua_common"
local kernel = assert(arg[1], "usage: lua_parallel.lua KERNEL INITRD [ROUNDS] [HOLD] [PREFIX]")
local initrd = assert(arg[2], "usage: lua_parallel.lua KERNEL INITRD [ROUNDS] [HOLD] [PREFIX]")
local ROUNDS = C.int_arg(3, 3)
local HOLD = tonumber(arg[4] or "") or 3
local PREFIX = arg[5] or "lb"
local READY = "PLASMAVMC%-GUEST%-READY"
local now = __plasma_now

-- Boots one guest; returns the vm and its timings (seconds, from `t0`, the phase start).
local function boot(name, t0)
  local v = vm.create { name = name, kernel = kernel, initrd = initrd, append = "quiet",
                        memory = "256M", accel = "tcg", ephemeral = true }
  local created = now()
  v:start()
  local started = now()
  v:wait_for_console(READY, { timeout = 120 })
  local ready = now()
  return v, { create = created - t0, start = started - t0, ready = ready - t0 }
end

local function one(round)
  C.phase("one-boot")
  local t0 = now()
  local v, t = boot(("%s-one-%d"):format(PREFIX, round), t0)
  t.wall = now() - t0
  C.phase("one-up")
  v:delete { force = true }
  C.phase("idle")
  return t
end

local function four(round)
  C.phase("four-boot")
  local t0 = now()
  -- Branch results cross the scheduler as plain values, so the VM objects stay in `vms`.
  local fns, vms, times = {}, {}, {}
  for i = 1, 4 do
    fns[i] = function()
      vms[i], times[i] = boot(("%s-par%d-%d"):format(PREFIX, round, i), t0)
    end
  end
  vm.parallel(table.unpack(fns))
  local wall = now() - t0
  C.phase("four-up")
  -- All four up: hold them, polling each one's status (as a watching plan would).
  local polls, hold_end = 0, now() + HOLD
  while now() < hold_end do
    vm.parallel(function() return vms[1]:status() end, function() return vms[2]:status() end,
                function() return vms[3]:status() end, function() return vms[4]:status() end)
    polls = polls + 4
    sleep(0.2)
  end
  C.phase("four-down")
  for i = 1, 4 do vms[i]:delete { force = true } end
  C.phase("idle")
  return { wall = wall, each = times, polls = polls }
end

local rounds = {}
C.phase("idle")
sleep(0.5)   -- an idle sample for the driver's memory baseline
for round = 1, ROUNDS do
  local rec = { round = round }
  if round % 2 == 1 then
    rec.one = one(round)
    rec.four = four(round)
    rec.order = "one,four"
  else
    rec.four = four(round)
    rec.one = one(round)
    rec.order = "four,one"
  end
  C.emit("parallel-round", rec)
  rounds[#rounds + 1] = rec
end
C.emit("parallel", { rounds = ROUNDS, hold = HOLD, n = #rounds })
