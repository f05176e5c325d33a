-- Target 1: the cost of a call from Lua into a trivial Swift binding (__plasma_now), next to
-- a trivial Lua function, a pure C function (math.abs) and os.clock (a C function that makes
-- a clock_gettime(CLOCK_PROCESS_CPUTIME_ID) system call). Each loop of N calls is timed and
-- an empty loop of the same N is subtracted; REPS repetitions with the order rotated.
--   plasmavmc run lua_calls.lua [N] [REPS]
local C = require "lua_common"
local N = C.int_arg(1, 2000000)
local REPS = C.int_arg(2, 5)

local now = __plasma_now
assert(type(now) == "function", "__plasma_now is missing")
local abs, clock = math.abs, os.clock
local function lua_fn() return 1.0 end

-- Every body calls through a local (upvalue), so only the call itself differs.
local loops = {
  empty = function(n) for _ = 1, n do end end,
  swift = function(n) for _ = 1, n do now() end end,
  lua = function(n) for _ = 1, n do lua_fn() end end,
  c_abs = function(n) for _ = 1, n do abs(-1.5) end end,
  os_clock = function(n) for _ = 1, n do clock() end end,
}
local order = { "empty", "swift", "lua", "c_abs", "os_clock" }

local function time(f, n)
  local t0 = now()
  f(n)
  return now() - t0
end

for _, k in ipairs(order) do loops[k](N // 20) end   -- warm up

local ns = {}          -- per kind: list of ns per call, empty loop subtracted (per rep)
local raw = {}         -- per kind: list of total seconds
for _, k in ipairs(order) do ns[k], raw[k] = {}, {} end
for rep = 1, REPS do
  local rotated = {}
  for i = 1, #order do rotated[i] = order[(i + rep - 2) % #order + 1] end
  local secs = {}
  for _, k in ipairs(rotated) do
    collectgarbage("collect")
    secs[k] = time(loops[k], N)
  end
  for _, k in ipairs(order) do
    raw[k][#raw[k] + 1] = secs[k]
    ns[k][#ns[k] + 1] = (secs[k] - secs.empty) / N * 1e9
  end
end

-- Smallest nonzero step between two back-to-back now() calls (clock resolution + one call).
local res = math.huge
for _ = 1, 1000 do
  local a, b = now(), now()
  while b == a do b = now() end
  if b - a < res then res = b - a end
end

local out = { n = N, reps = REPS, min_step_ns = res * 1e9, ns_per_call = {}, seconds = {}, median_ns = {} }
for _, k in ipairs(order) do
  out.ns_per_call[k] = ns[k]
  out.seconds[k] = raw[k]
  out.median_ns[k] = C.median(ns[k])
end
out.median_ns.empty = C.median(raw.empty) / N * 1e9   -- the loop itself, per iteration
C.emit("calls", out)
