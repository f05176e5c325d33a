-- Target 2: v:status() on a live VM, next to v:qmp("query-status") and sleep(0) (one
-- operation through the scheduler with no I/O: Swift task + coroutine yield/resume).
-- Calls are interleaved (status, qmp, sleep0, status, …) so drift hits all alike.
--   plasmavmc run lua_status.lua VMNAME [K] [WARMUP]
local C = require "lua_common"
local name = assert(arg[1], "usage: lua_status.lua VMNAME [K] [WARMUP]")
local K = C.int_arg(2, 300)
local WARMUP = C.int_arg(3, 20)

local now = __plasma_now
local v = assert(vm.get(name))
local state = v:status()
assert(state == "running", ("vm %s is %s, expected running"):format(name, tostring(state)))

local kinds = {
  status = function() assert(v:status() == "running") end,
  qmp = function() assert(v:qmp("query-status").status == "running") end,
  sleep0 = function() sleep(0) end,
}
local order = { "status", "qmp", "sleep0" }
for _ = 1, WARMUP do
  for _, k in ipairs(order) do kinds[k]() end
end

local samples = {}
for _, k in ipairs(order) do samples[k] = {} end
for i = 1, K do
  for j = 0, #order - 1 do
    local k = order[(i + j - 1) % #order + 1]
    local f = kinds[k]
    local t0 = now()
    f()
    local dt = now() - t0
    local s = samples[k]
    s[#s + 1] = dt * 1e6
  end
end

C.emit("status", { vm = name, k = K, warmup = WARMUP, samples_us = samples })
