-- The README's sample plan: boot the test guest, run a command in it, stop it; the VM is
-- ephemeral, so it vanishes when the plan ends, however it ends.
--   plasmavmc run scripts/demo.lua [GUEST_DIR]
local dir = arg[1] or ".cache/guest"

local v = vm.create{
  name = "demo",
  kernel = dir .. "/vmlinuz",
  initrd = dir .. "/initrd.img",
  append = "quiet",
  memory = "256M",
  ephemeral = true,
}
print("created", v)
v:start()
local t0 = __plasma_now()
v:wait_for_console("PLASMAVMC%-GUEST%-READY", { timeout = 120 })
print(("booted in %.1fs"):format(__plasma_now() - t0), v)

local code, out = v:exec("uname -sr; cat /proc/meminfo | head -1")
io.write("exec exit ", code, ":\n", out)

print("stopped by", v:stop { timeout = 30 }, v)
