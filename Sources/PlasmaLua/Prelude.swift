/// The friendly Lua API, compiled into the binary (the wrk pattern): a small native surface
/// (`__plasma`) and this prelude on top of it. Blocking-looking calls yield the running
/// coroutine to the Swift scheduler with an operation id; the scheduler resumes it with
/// `true, results…` or `false, message`.
let preludeSource = #"""
local native = __plasma
__plasma = nil
local yield, isyieldable = coroutine.yield, coroutine.isyieldable
local getinfo, getuservalue = debug.getinfo, debug.getuservalue
local PRELUDE = "=plasma.vm"

-- Raise `msg` at the first frame outside this prelude, so errors point at the plan's line.
local function raise(msg)
  local level = 2
  while true do
    local info = getinfo(level, "S")
    if not info then level = 1; break end
    if info.source ~= PRELUDE and info.what ~= "C" then break end
    level = level + 1
  end
  error(msg, level)
end

-- Run native operation `name`: yields to the scheduler, returns its results or raises.
local function call(name, ...)
  if not isyieldable() then
    local r = table.pack(native.sync(name, ...))
    if r[1] then return table.unpack(r, 2, r.n) end
    raise(r[2])
  end
  local started, id = pcall(native.op, name, ...)
  if not started then raise(id) end
  local r = table.pack(yield(id))
  if r[1] then return table.unpack(r, 2, r.n) end
  raise(r[2])
end

local VM = {}          -- methods
local MT = { __name = "plasmavmc.vm" }
debug.getregistry()["plasmavmc.vm"] = MT

local function fields(v)
  if type(v) ~= "userdata" or getmetatable(v) ~= MT then return nil end
  return getuservalue(v, 1)
end

-- Accept a VM object or a name, as in vm.start(v) and vm.start("web1").
local function target(v, fname)
  local f = fields(v)
  if f then
    if f.deleted then raise(("vm.%s: vm '%s' was deleted"):format(fname, f.name)) end
    return f.name
  end
  if type(v) == "string" then return v end
  raise(("vm.%s: expected a vm or a vm name, got %s"):format(fname, type(v)))
end

local function options(opts, fname, allowed)
  if opts == nil then return {} end
  if type(opts) ~= "table" then
    raise(("vm.%s: options must be a table, got %s"):format(fname, type(opts)))
  end
  for k, v in pairs(opts) do
    local want = allowed[k]
    if not want then
      raise(("vm.%s: unknown option '%s'"):format(fname, tostring(k)))
    end
    if want ~= "any" and type(v) ~= want then
      raise(("vm.%s: '%s' must be a %s, got %s"):format(fname, k, want, type(v)))
    end
  end
  return opts
end

local function wrap(name)
  return native.newvm(name)
end

local vm = {}

local CREATE_KEYS = {
  name = "string", kernel = "string", initrd = "string", append = "string", memory = "any",
  cpus = "number", disks = "table", net = "any", accel = "string", ephemeral = "boolean",
}

function vm.create(spec)
  if type(spec) ~= "table" then raise("vm.create: expected a table like {name=…, kernel=…}, got " .. type(spec)) end
  options(spec, "create", CREATE_KEYS)
  if spec.name == nil then raise("vm.create: 'name' is required") end
  if spec.memory ~= nil and type(spec.memory) ~= "string" and math.type(spec.memory) ~= "integer" then
    raise(("vm.create: 'memory' must be a size like \"256M\", got %s"):format(type(spec.memory)))
  end
  if spec.cpus ~= nil and math.type(spec.cpus) ~= "integer" then
    raise(("vm.create: 'cpus' must be a whole number, got %s"):format(tostring(spec.cpus)))
  end
  local net = spec.net
  if type(net) == "string" then net = { net } end
  if net ~= nil and type(net) ~= "table" then
    raise(("vm.create: 'net' must be a string or a list of strings, got %s"):format(type(net)))
  end
  for i, d in ipairs(spec.disks or {}) do
    if type(d) ~= "string" then raise(("vm.create: disks[%d] must be a path string, got %s"):format(i, type(d))) end
  end
  for i, n in ipairs(net or {}) do
    if type(n) ~= "string" then raise(("vm.create: net[%d] must be a string like \"user\", got %s"):format(i, type(n))) end
  end
  local name = call("create", spec.name, spec.kernel, spec.initrd, spec.append,
    spec.memory ~= nil and tostring(spec.memory) or nil, spec.cpus, spec.disks or {}, net or {},
    spec.accel, spec.ephemeral == true)
  return wrap(name)
end

function VM.start(v) call("start", target(v, "start")); return v end
function VM.status(v)
  local name = target(v, "status")
  local state, reason = native.status_fast(name)
  if state then return state, reason end
  return call("status", name)
end
function VM.stop(v, opts)
  opts = options(opts, "stop", { timeout = "number" })
  local step = call("stop", target(v, "stop"), opts.timeout or 30)
  return step
end
function VM.kill(v) call("kill", target(v, "kill")) end
function VM.pause(v) call("pause", target(v, "pause")) end
function VM.resume(v) call("resume", target(v, "resume")) end
function VM.delete(v, opts)
  opts = options(opts, "delete", { force = "boolean" })
  call("delete", target(v, "delete"), opts.force == true)
  local f = fields(v)
  if f then f.deleted = true end
end
function VM.info(v) return call("info", target(v, "info")) end
function VM.console_log(v) return call("console_log", target(v, "console_log")) end
function VM.send_console(v, text)
  if type(text) ~= "string" then raise("vm.send_console: text must be a string, got " .. type(text)) end
  call("send_console", target(v, "send_console"), text)
end
function VM.qmp(v, command, args)
  if type(command) ~= "string" then raise("vm.qmp: command must be a string, got " .. type(command)) end
  if args ~= nil and type(args) ~= "table" then raise("vm.qmp: arguments must be a table, got " .. type(args)) end
  return call("qmp", target(v, "qmp"), command, args)
end

local STATES = { created = true, running = true, paused = true, stopped = true, crashed = true }

function VM.wait_for(v, state, opts)
  local name = target(v, "wait_for")
  if not STATES[state] then
    raise(("vm.wait_for: state must be created, running, paused, stopped or crashed, got %s"):format(tostring(state)))
  end
  opts = options(opts, "wait_for", { timeout = "number" })
  return call("wait_for", name, state, opts.timeout or 60)
end

local function lines_of(text)
  local out = {}
  for line in (text:gsub("\r", ""):gsub("\27%[6n", "")):gmatch("([^\n]*)\n") do out[#out + 1] = line end
  return out
end

-- Wait for a console line matching `pattern`; lines already logged before the call count too
-- unless opts.since is given (a byte offset from a previous read).
function VM.wait_for_console(v, pattern, opts)
  local name = target(v, "wait_for_console")
  if type(pattern) ~= "string" then raise("vm.wait_for_console: pattern must be a string, got " .. type(pattern)) end
  opts = options(opts, "wait_for_console", { timeout = "number", fail = "table", since = "number" })
  local timeout = opts.timeout or 60
  local deadline = native.now() + timeout
  local offset = opts.since or 0
  local partial = ""
  while true do
    local text, nextoff = call("console_read", name, offset)
    offset = nextoff
    local chunk = partial .. text
    local complete, rest = chunk:match("^(.*\n)(.*)$")
    if not complete then complete, rest = "", chunk end
    partial = rest
    for _, line in ipairs(lines_of(complete)) do
      for _, bad in ipairs(opts.fail or {}) do
        if line:find(bad) then
          raise(("vm '%s': console showed failure pattern %q: %s"):format(name, bad, line))
        end
      end
      if line:find(pattern) then return line, offset end
    end
    if native.now() >= deadline then
      local state = call("status", name)
      local tail = lines_of(call("console_tail", name, 600) .. "\n")
      local shown = {}
      for i = math.max(1, #tail - 5), #tail do shown[#shown + 1] = "  | " .. tail[i] end
      raise(("vm '%s': timed out after %gs waiting for console pattern %q (vm is %s); last console lines:\n%s")
        :format(name, timeout, pattern, state, table.concat(shown, "\n")))
    end
    call("sleep", 0.05)
  end
end

local exec_seq = 0
local function unique_tag()
  exec_seq = exec_seq + 1
  return ("%x%x%x"):format(os.time(), math.random(0, 0xffff), exec_seq)
end

-- The serial shell drops input that arrives while it (re)opens the port, so exec first
-- makes sure a shell answers: a marker echoed back on a line of its own. The same line turns
-- terminal echo and the prompt off, so neither the line editor's echo and redraws nor prompts
-- mix with the command's output; exec restores both afterwards.
local function await_shell(v, name, deadline)
  while true do
    local tag = "__PLASMA_R_" .. unique_tag() .. "__"
    local _, offset = call("console_read", name, 0)
    -- The leading newline runs (harmlessly) whatever fragment a lost write left behind.
    call("send_console", name, "\nstty -echo; __plasma_ps1=$PS1; PS1=''; echo " .. tag .. "\n")
    local remaining = deadline - native.now()
    if remaining <= 0 then return false end
    local ok = pcall(VM.wait_for_console, v, "^" .. tag .. "$", { timeout = math.min(2, remaining), since = offset })
    if ok then return true end
  end
end

-- What precedes `mark` at the end of `line`, or nil when the line does not end with it.
local function before_mark(line, mark)
  if #line >= #mark and line:sub(-#mark) == mark then return line:sub(1, #line - #mark) end
  return nil
end

function VM.exec(v, cmd, opts)
  local name = target(v, "exec")
  if type(cmd) ~= "string" then raise("vm.exec: command must be a string, got " .. type(cmd)) end
  opts = options(opts, "exec", { timeout = "number" })
  local timeout = opts.timeout or 60
  local deadline = native.now() + timeout
  if not await_shell(v, name, deadline) then
    raise(("vm '%s': exec: no shell answered on the serial console within %gs (vm is %s)"):format(
      name, timeout, (call("status", name))))
  end
  local tag = unique_tag()
  local start_mark, end_mark = "__PLASMA_S_" .. tag .. "__", "__PLASMA_E_" .. tag .. "__"
  local _, offset = call("console_read", name, 0)
  call("send_console", name, ("echo %s; %s\necho %s=$?\n"):format(start_mark, cmd, end_mark))
  local line = VM.wait_for_console(v, end_mark .. "=%d+$",
    { timeout = math.max(0.1, deadline - native.now()), since = offset })
  local code = tonumber(line:match("=(%d+)$"))
  local text = call("console_read", name, offset)
  -- With echo and prompt off the console shows: START\n output… [partial line]END=rc\n.
  local out, started = {}, false
  for _, l in ipairs(lines_of(text)) do
    if not started then
      started = before_mark(l, start_mark) ~= nil
    else
      local last = l:match("^(.-)" .. end_mark .. "=%d+$")
      if last then
        if last ~= "" then out[#out + 1] = last; out.partial = true end
        break
      end
      out[#out + 1] = l
    end
  end
  call("send_console", name, "PS1=$__plasma_ps1; stty echo\n")
  local result = table.concat(out, "\n")
  if #out > 0 and not out.partial then result = result .. "\n" end
  return code, result
end

MT.__index = function(v, k)
  local f = getuservalue(v, 1)
  if k == "name" or k == "id" then return f.name end
  return VM[k]
end
MT.__tostring = function(v)
  local f = getuservalue(v, 1)
  if f.deleted then return ("vm<%s: deleted>"):format(f.name) end
  local ok, state = pcall(call, "status", f.name)
  return ("vm<%s: %s>"):format(f.name, ok and state or "unknown")
end
MT.__eq = function(a, b) return getuservalue(a, 1).name == getuservalue(b, 1).name end
MT.__close = function(v)
  local f = getuservalue(v, 1)
  if f.deleted then return end
  f.deleted = true
  if isyieldable() then
    pcall(call, "delete", f.name, true)
  else
    native.defer_delete(f.name)
  end
end

for k, fn in pairs(VM) do vm[k] = fn end

function vm.list()
  return call("list")
end

function vm.get(name)
  if type(name) ~= "string" then raise("vm.get: name must be a string, got " .. type(name)) end
  local ok, err = call("exists", name)
  if ok then return wrap(name) end
  return nil, err
end

function vm.parallel(...)
  local fns = table.pack(...)
  for i = 1, fns.n do
    if type(fns[i]) ~= "function" then raise(("vm.parallel: argument %d must be a function, got %s"):format(i, type(fns[i]))) end
  end
  if fns.n == 0 then return end
  if not isyieldable() then raise("vm.parallel: cannot run here (not inside the plan's scheduler)") end
  local r = table.pack(yield({ parallel = fns }))
  if not r[1] then raise(r[2]) end
  return table.unpack(r, 2, r.n)
end

function sleep(seconds)
  if type(seconds) ~= "number" or seconds < 0 then raise("sleep: seconds must be a number >= 0, got " .. tostring(seconds)) end
  call("sleep", seconds)
end

_G.vm = vm
_G.__plasma_now = native.now
"""#
