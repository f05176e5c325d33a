-- A pure-Lua stand-in for the `vm` API that plasmavmc gives plans, so plasma.test can be tested
-- with plain lua5.4 and no QEMU. It keeps VMs in memory, follows the real API's shapes (VM
-- objects with name/id, methods callable as v:m() or vm.m(v or name), errors naming the VM and
-- pointing at the plan's line) and records what happened, for the tests to look at:
--
--   vm._deleted          names of deleted VMs, in order
--   vm._broken[name]     = "console_log" | "delete": that operation fails for that VM
--   vm._reset()          forget everything
--
-- Also defines `sleep` and `__plasma_now` on a virtual clock: sleep(s) advances it at once, so
-- tests of timeouts take no real time.
--
-- Like the real API, every operation yields to the host's scheduler when it can (host.lua runs
-- plans in a coroutine), so the runner is tested across yields: pcall, xpcall, hooks.
--
-- Boot output: start() appends to the console "booting <name>" and "PLASMAVMC-GUEST-READY";
-- send_console(text) appends text as if the guest echoed it.

local SOURCE = debug.getinfo(1, "S").source

-- Raise at the first frame outside this file and not a C function, as the real prelude does.
local function raise(msg)
  local level = 2
  while true do
    local info = debug.getinfo(level, "S")
    if not info then level = 1 break end
    if info.source ~= SOURCE and info.what ~= "C" then break end
    level = level + 1
  end
  error(msg, level)
end

local clock = os.time()

local vm = {}
local VM = {}
local MT = { __name = "plasmavmc.vm" }
local vms, order, next_id  -- name -> record; names in creation order; id counter

function vm._reset()
  vms, order, next_id = {}, {}, 1
  vm._deleted, vm._broken = {}, {}
end
vm._reset()

-- Every operation starts here: yield to the scheduler (as the real API does for each native
-- call), then find the VM.
local function record_of(v, fname)
  if coroutine.isyieldable() then coroutine.yield(fname) end
  if getmetatable(v) == MT then
    local f = rawget(v, "_f")
    if f.deleted then raise(("vm.%s: vm '%s' was deleted"):format(fname, f.name)) end
    return vms[f.name] or raise(("vm.%s: no such vm '%s'"):format(fname, f.name))
  end
  if type(v) == "string" then
    return vms[v] or raise(("vm.%s: no such vm '%s'"):format(fname, v))
  end
  raise(("vm.%s: expected a vm or a vm name, got %s"):format(fname, type(v)))
end

local function wrap(rec)
  return setmetatable({ _f = { name = rec.name } }, MT)
end

MT.__index = function(v, k)
  if k == "name" then return rawget(v, "_f").name end
  if k == "id" then
    local rec = vms[rawget(v, "_f").name]
    return rec and rec.id
  end
  return VM[k]
end
MT.__tostring = function(v)
  local f = rawget(v, "_f")
  if f.deleted or not vms[f.name] then return ("vm<%s: deleted>"):format(f.name) end
  return ("vm<%s: %s>"):format(f.name, vms[f.name].state)
end
MT.__eq = function(a, b) return rawget(a, "_f").name == rawget(b, "_f").name end

local CREATE_KEYS = {
  name = true, kernel = true, initrd = true, append = true, memory = true, cpus = true,
  disks = true, net = true, accel = true, ephemeral = true,
}

function vm.create(spec)
  if coroutine.isyieldable() then coroutine.yield("create") end
  if type(spec) ~= "table" then raise("vm.create: expected a table like {name=…, kernel=…}, got " .. type(spec)) end
  for k in pairs(spec) do
    if not CREATE_KEYS[k] then raise(("vm.create: unknown option '%s'"):format(tostring(k))) end
  end
  if spec.name == nil then raise("vm.create: 'name' is required") end
  if vms[spec.name] then raise(("vm.create: vm '%s' already exists"):format(spec.name)) end
  local rec = {
    name = spec.name, id = ("fake-%d"):format(next_id), state = "created", reason = "",
    console = "", spec = spec,
  }
  next_id = next_id + 1
  vms[rec.name] = rec
  order[#order + 1] = rec.name
  return wrap(rec)
end

local function transition(rec, from, to, fname)
  if not from[rec.state] then
    raise(("vm.%s: vm '%s' is %s"):format(fname, rec.name, rec.state))
  end
  rec.state = to
end

function VM.start(v)
  local rec = record_of(v, "start")
  transition(rec, { created = true, stopped = true, crashed = true }, "running", "start")
  rec.console = rec.console .. ("booting %s\nPLASMAVMC-GUEST-READY\n"):format(rec.name)
  return v
end
function VM.status(v)
  local rec = record_of(v, "status")
  return rec.state, rec.reason
end
function VM.stop(v)
  transition(record_of(v, "stop"), { running = true, paused = true }, "stopped", "stop")
  return "powerdown"
end
function VM.kill(v) transition(record_of(v, "kill"), { running = true, paused = true }, "stopped", "kill") end
function VM.pause(v) transition(record_of(v, "pause"), { running = true }, "paused", "pause") end
function VM.resume(v) transition(record_of(v, "resume"), { paused = true }, "running", "resume") end

function VM.delete(v, opts)
  local rec = record_of(v, "delete")
  if vm._broken[rec.name] == "delete" then raise(("vm.delete: vm '%s': device busy"):format(rec.name)) end
  local up = rec.state == "running" or rec.state == "paused"
  if up and not (opts and opts.force) then
    raise(("vm.delete: vm '%s' is %s; stop it first or use force"):format(rec.name, rec.state))
  end
  vms[rec.name] = nil
  for i, name in ipairs(order) do
    if name == rec.name then table.remove(order, i) break end
  end
  vm._deleted[#vm._deleted + 1] = rec.name
  if getmetatable(v) == MT then rawget(v, "_f").deleted = true end
end

function VM.info(v)
  local rec = record_of(v, "info")
  return {
    name = rec.name, id = rec.id, state = rec.state, reason = rec.reason,
    pid = rec.state == "running" and 4242 or nil, accel = "tcg", spec = rec.spec,
  }
end

function VM.console_log(v)
  local rec = record_of(v, "console_log")
  if vm._broken[rec.name] == "console_log" then raise(("vm.console_log: vm '%s': log unreadable"):format(rec.name)) end
  return rec.console
end

function VM.send_console(v, text)
  local rec = record_of(v, "send_console")
  rec.console = rec.console .. text
end

function VM.wait_for(v, state, opts)
  local rec = record_of(v, "wait_for")
  if rec.state ~= state then
    raise(("vm '%s': timed out after %gs waiting for state %s (vm is %s)")
      :format(rec.name, opts and opts.timeout or 60, state, rec.state))
  end
  return true
end

function VM.wait_for_console(v, pattern, opts)
  local rec = record_of(v, "wait_for_console")
  opts = opts or {}
  local offset = 0
  for line in rec.console:gmatch("([^\n]*)\n") do
    offset = offset + #line + 1
    for _, bad in ipairs(opts.fail or {}) do
      if line:find(bad) then
        raise(("vm '%s': console showed failure pattern %q: %s"):format(rec.name, bad, line))
      end
    end
    if line:find(pattern) then return line, offset end
  end
  raise(("vm '%s': timed out after %gs waiting for console pattern %q (vm is %s)")
    :format(rec.name, opts.timeout or 60, pattern, rec.state))
end

function VM.exec(v, cmd)
  local rec = record_of(v, "exec")
  rec.console = rec.console .. "# " .. cmd .. "\n"
  return 0, ""
end

function VM.qmp(v, command)
  local rec = record_of(v, "qmp")
  if command == "query-status" then return { status = rec.state, running = rec.state == "running" } end
  return {}
end

for k, fn in pairs(VM) do vm[k] = fn end

function vm.list()
  if coroutine.isyieldable() then coroutine.yield("list") end
  local out = {}
  for i, name in ipairs(order) do out[i] = wrap(vms[name]) end
  return out
end

function vm.get(name)
  if coroutine.isyieldable() then coroutine.yield("get") end
  if type(name) ~= "string" then raise("vm.get: name must be a string, got " .. type(name)) end
  if vms[name] then return wrap(vms[name]) end
  return nil, ("no such vm '%s'"):format(name)
end

-- Runs the functions one after another (the real one runs them concurrently) and returns
-- their first results in order.
function vm.parallel(...)
  local results = table.pack(...)
  for i = 1, results.n do
    if type(results[i]) ~= "function" then
      raise(("vm.parallel: argument %d must be a function, got %s"):format(i, type(results[i])))
    end
    results[i] = (results[i]())
  end
  return table.unpack(results, 1, results.n)
end

_G.sleep = function(seconds)
  if type(seconds) ~= "number" or seconds < 0 then
    raise("sleep: seconds must be a number >= 0, got " .. tostring(seconds))
  end
  if coroutine.isyieldable() then coroutine.yield("sleep") end
  clock = clock + seconds
end

_G.__plasma_now = function()
  return clock
end

_G.vm = vm
