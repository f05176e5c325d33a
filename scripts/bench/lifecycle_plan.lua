-- Benchmark plan (scripts/bench/lifecycle.sh): N in-process lifecycles, one line each:
--   lc CREATE_MS START_MS KILL_MS DELETE_MS
-- Arguments: KERNEL INITRD N PREFIX
local kernel, initrd, n, prefix = arg[1], arg[2], tonumber(arg[3]), arg[4]
local now = __plasma_now
for i = 1, n do
  local t0 = now()
  local v = vm.create { name = string.format("%s%02d", prefix, i), kernel = kernel, initrd = initrd, accel = "tcg" }
  local t1 = now()
  v:start()
  local t2 = now()
  v:kill()
  local t3 = now()
  v:delete()
  local t4 = now()
  print(string.format("lc %.3f %.3f %.3f %.3f", (t1 - t0) * 1e3, (t2 - t1) * 1e3, (t3 - t2) * 1e3, (t4 - t3) * 1e3))
  io.stdout:flush()
end
