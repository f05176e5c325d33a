-- Shared by the end-to-end plans: the test guest and a VM factory.
local M = {}
local dir = os.getenv("PLASMAVMC_GUEST_DIR") or ".cache/guest"
M.kernel, M.initrd = dir .. "/vmlinuz", dir .. "/initrd.img"
M.ready = "PLASMAVMC%-GUEST%-READY"

--- A test-guest spec; `extra` is appended to the kernel command line.
function M.spec(name, extra, opts)
  local s = { name = name, kernel = M.kernel, initrd = M.initrd, append = "quiet " .. (extra or ""),
              memory = "256M", accel = "tcg", ephemeral = true }
  for k, v in pairs(opts or {}) do s[k] = v end
  return s
end

function M.boot(name, extra, opts)
  local v = vm.create(M.spec(name, extra, opts))
  v:start()
  v:wait_for_console(M.ready, { timeout = 90 })
  return v
end

return M
