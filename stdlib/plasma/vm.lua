-- The plan prelude: the friendly `vm` API on a small native surface (`__plasma`), compiled
-- into the plasmavmc binary at build time (the wrk pattern). The operations themselves are
-- defined once, in Swift (Sources/PlasmaLua/VMAPI.swift); `native.api` lists them.
--
-- Blocking-looking calls in the scheduler's coroutines yield the private token and an
-- operation id; the scheduler resumes them with `true, results…` or `false, message`. In a
-- plan's own coroutines (coroutine.create/wrap) and in metamethods they run synchronously.
--
-- Every operation goes to a host, named by an id: 0 is the session's own (`vm`: this machine,
-- or the host given with --host); `vm.connect` makes the others. A VM object carries its
-- host's id, so all its methods go there; a VM name goes to the host of the table it was
-- given to (`vm.start("web")` to host 0, `h.start("web")` to h's).
local native = assert(__plasma, "plasma.vm is the plan prelude, loaded by plasmavmc itself; it cannot be required")
__plasma = nil
local TOKEN, scheduled, check_interrupt = native.token, native.scheduled, native.check_interrupt
local rawyield, isyieldable, running = coroutine.yield, coroutine.isyieldable, coroutine.running
local rawresume, rawclose = coroutine.resume, coroutine.close
local rawpcall, rawxpcall = pcall, xpcall
local getinfo, getuservalue = debug.getinfo, debug.getuservalue
local pack, unpack = table.pack, table.unpack
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

-- An interrupt (--timeout, Ctrl-C, SIGTERM) caught by pcall, xpcall or coroutine.resume is
-- raised again at once, so no plan can swallow it.
local function after(ok, ...)
  if not ok then check_interrupt() end
  return ok, ...
end
function pcall(f, ...) return after(rawpcall(f, ...)) end
function xpcall(f, handler, ...) return after(rawxpcall(f, handler, ...)) end
function coroutine.resume(co, ...) return after(rawresume(co, ...)) end
function coroutine.close(co) return after(rawclose(co)) end

-- A plan's own debug hook must not remove the interrupt hook: clearing a hook puts the
-- interrupt hook back, and a plan's hook is wrapped to check for interrupts first (and gets a
-- count event every 1000 instructions if it asked for none; those are not passed on). The
-- plan's hook is called by a tail call, so debug.getinfo levels inside it are as usual.
local rawsethook, restore_hook = debug.sethook, native.restore_hook
function debug.sethook(...)
  local co, f, mask, count = ...
  if type(co) ~= "thread" then co, f, mask, count = nil, ... end
  if f == nil then return restore_hook(co) end
  if type(f) ~= "function" then raise("debug.sethook: hook must be a function, got " .. type(f)) end
  mask = type(mask) == "string" and mask or ""
  local counted = math.type(count) == "integer" and count > 0
  local function hook(event, line)
    check_interrupt()
    if event ~= "count" or counted then return f(event, line) end
  end
  if co then return rawsethook(co, hook, mask, counted and count or 1000) end
  return rawsethook(hook, mask, counted and count or 1000)
end

-- Whether the running coroutine is one of the scheduler's (else: a plan's own coroutine).
local function in_scheduler()
  return scheduled[running()] == true and isyieldable()
end

function coroutine.yield(...)
  if scheduled[running()] then
    raise("coroutine.yield: the plan's own code cannot yield to the scheduler; yield only inside coroutines the plan creates (coroutine.create/wrap)")
  end
  return rawyield(...)
end

-- Run native operation `name` on host `host`: through the scheduler when it can, else
-- synchronously.
local function call(host, name, ...)
  if not in_scheduler() then
    local r = pack(native.sync(name, host, ...))
    if r[1] then return unpack(r, 2, r.n) end
    raise(r[2])
  end
  local started, id = rawpcall(native.op, name, host, ...)
  if not started then raise(id) end
  local r = pack(rawyield(TOKEN, id))
  if r[1] then return unpack(r, 2, r.n) end
  raise(r[2])
end

-- The one number check (Swift's NumberCheck): seconds, math.huge for "no limit" where
-- `unlimited`; whole numbers >= 0 for offsets.
local function seconds(value, place, field, fallback, unlimited)
  local ok, s = rawpcall(native.seconds, value, place, field, fallback, unlimited)
  if not ok then raise(s) end
  return s
end
local function whole(value, place, field, fallback)
  local ok, n = rawpcall(native.whole, value, place, field, fallback)
  if not ok then raise(n) end
  return n
end

local MT = { __name = "plasmavmc.vm" }
debug.getregistry()["plasmavmc.vm"] = MT

-- What the prelude knows of each host: {address=, is_local=, closed=}.
local HOSTS = { [0] = { address = native.host0.address, is_local = native.host0.is_local } }

local function fields(v)
  if type(v) ~= "userdata" or getmetatable(v) ~= MT then return nil end
  return getuservalue(v, 1)
end

-- Accept a VM object or a name, as in vm.start(v) and vm.start("web1"): the VM's host and
-- name. A VM object goes to its own host; a name to `host`, the host of the table used.
local function target(host, v, fname)
  local f = fields(v)
  if f then
    if f.deleted then raise(("vm.%s: vm '%s' was deleted"):format(fname, f.name)) end
    return f.host, f.name
  end
  if type(v) == "string" then return host, v end
  raise(("vm.%s: expected a vm or a vm name, got %s"):format(fname, type(v)))
end

-- "'web'", or "'web' on ADDRESS" for a VM on a host that is not this machine.
local function label(host, name)
  local h = HOSTS[host]
  if h and not h.is_local then return ("'%s' on %s"):format(name, h.address) end
  return ("'%s'"):format(name)
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

-- A Lua pattern checked before use, so a malformed one is reported at the plan's line.
local function pattern_ok(p, fname, what)
  if type(p) ~= "string" then raise(("vm.%s: %s must be a string, got %s"):format(fname, what, type(p))) end
  local ok, err = rawpcall(string.find, "", p)
  if not ok then raise(("vm.%s: invalid pattern %q: %s"):format(fname, p, tostring(err):gsub("^.-:%d+: ", ""))) end
  return p
end

local STATES = { created = true, running = true, paused = true, stopped = true, crashed = true }

-- Positional arguments checked against the API definition (VMAPI's parameters of each
-- operation); returns them unchanged.
local PARAMS = {}
for _, op in ipairs(native.api) do PARAMS[op.name] = { params = op.params, global = op.style == "global" } end

local function arguments(fname, ...)
  local def = PARAMS[fname]
  local place = def.global and fname or "vm." .. fname
  for i, p in ipairs(def.params) do
    local x, kind = (select(i, ...)), p.kind
    if kind == "string" then
      if type(x) ~= "string" then raise(("%s: %s must be a string, got %s"):format(place, p.name, type(x))) end
    elseif kind == "pattern" then
      pattern_ok(x, fname, p.name)
    elseif kind == "state" then
      if not STATES[x] then
        raise(("%s: %s must be created, running, paused, stopped or crashed, got %s"):format(place, p.name, tostring(x)))
      end
    elseif kind == "table" then
      if x ~= nil and type(x) ~= "table" then raise(("%s: %s must be a table, got %s"):format(place, p.name, type(x))) end
    elseif kind == "seconds" then
      if type(x) ~= "number" then raise(("%s: '%s' must be a number, got %s"):format(place, p.name, type(x))) end
    elseif kind == "functions" then
      for j = i, select("#", ...) do
        local f = (select(j, ...))
        if type(f) ~= "function" then raise(("%s: argument %d must be a function, got %s"):format(place, j, type(f))) end
      end
    else
      raise(("internal: parameter kind %s of %s"):format(tostring(kind), place))
    end
  end
  return ...
end

-- Options tables checked against the API definition (VMAPI's options of each operation):
-- unknown keys and wrong types are errors, numbers go through the one number check, and
-- missing keys get their defaults.
local OPTIONS = {}
for _, op in ipairs(native.api) do OPTIONS[op.name] = op.options end

local function checked_options(fname, opts)
  local schema = OPTIONS[fname] or {}
  local place = "vm." .. fname
  if opts == nil then opts = {} end
  if type(opts) ~= "table" then raise(("%s: options must be a table, got %s"):format(place, type(opts))) end
  for k in pairs(opts) do
    if schema[k] == nil then raise(("%s: unknown option '%s'"):format(place, tostring(k))) end
  end
  local out = {}
  for key, o in pairs(schema) do
    local v, kind = opts[key], o.kind
    if kind == "seconds" or kind == "seconds_or_no_limit" then
      if v ~= nil and type(v) ~= "number" then raise(("%s: '%s' must be a number, got %s"):format(place, key, type(v))) end
      out[key] = seconds(v, place, key, o.default, kind == "seconds_or_no_limit")
    elseif kind == "offset" then
      if v ~= nil and type(v) ~= "number" then raise(("%s: '%s' must be a number, got %s"):format(place, key, type(v))) end
      out[key] = whole(v, place, key, o.default)
    elseif kind == "boolean" then
      if v ~= nil and type(v) ~= "boolean" then raise(("%s: '%s' must be a boolean, got %s"):format(place, key, type(v))) end
      if v == nil then v = o.default end
      out[key] = v
    elseif kind == "string" then
      if v ~= nil and type(v) ~= "string" then raise(("%s: '%s' must be a string, got %s"):format(place, key, type(v))) end
      out[key] = v
    elseif kind == "patterns" then
      if v ~= nil and type(v) ~= "table" then raise(("%s: '%s' must be a table, got %s"):format(place, key, type(v))) end
      for i, p in ipairs(v or {}) do pattern_ok(p, fname, ("%s[%d]"):format(key, i)) end
      out[key] = v or {}
    else
      raise(("internal: option kind %s of %s"):format(tostring(kind), place))
    end
  end
  return out
end

local function wrap(host, name)
  return native.newvm(host, name)
end

-- Every operation below takes the host of the table it was called through first; the `vm`
-- table and each host handle pass their own (see api_for).
local IMPL = {}

local CREATE_KEYS = {
  name = "string", kernel = "string", initrd = "string", append = "string", memory = "any",
  cpus = "number", disks = "table", net = "any", accel = "string", ephemeral = "boolean",
}

local function create(host, spec)
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
  local name = call(host, "create", spec.name, spec.kernel, spec.initrd, spec.append,
    spec.memory ~= nil and tostring(spec.memory) or nil, spec.cpus, spec.disks or {}, net or {},
    spec.accel, spec.ephemeral == true)
  return wrap(host, name)
end

-- Plain methods come straight from the API definition.
for _, op in ipairs(native.api) do
  if op.style == "method" and op.binding ~= "prelude" then
    local name, returns_self = op.name, op.binding == "self"
    IMPL[name] = function(host, v)
      local h, n = target(host, v, name)
      local r = pack(call(h, name, n))
      if returns_self then return v end
      return unpack(r, 1, r.n)
    end
  end
end

function IMPL.status(host, v)
  local h, name = target(host, v, "status")
  local state, code, reason = native.status_fast(h, name)
  if state then return state, code, reason end
  return call(h, "status", name)
end
function IMPL.stop(host, v, opts)
  local h, name = target(host, v, "stop")
  opts = checked_options("stop", opts)
  return call(h, "stop", name, opts.timeout)
end
function IMPL.delete(host, v, opts)
  local h, name = target(host, v, "delete")
  opts = checked_options("delete", opts)
  call(h, "delete", name, opts.force)
  local f = fields(v)
  if f then f.deleted = true end
end
function IMPL.send_console(host, v, text)
  local h, name = target(host, v, "send_console")
  call(h, "send_console", name, arguments("send_console", text))
end
function IMPL.qmp(host, v, command, args)
  local h, name = target(host, v, "qmp")
  return call(h, "qmp", name, arguments("qmp", command, args))
end

function IMPL.wait_for(host, v, state, opts)
  local h, name = target(host, v, "wait_for")
  arguments("wait_for", state)
  opts = checked_options("wait_for", opts)
  return call(h, "wait_for", name, state, opts.timeout)
end

local function lines_of(text)
  local out = {}
  for line in (text:gsub("\r", ""):gsub("\27%[6n", "")):gmatch("([^\n]*)\n") do out[#out + 1] = line end
  return out
end

-- Where each VM's console log ended when last read (by host and name), so exec reads only
-- what is new instead of the whole log on every call.
local console_ends = {}

local function console_read(h, name, offset)
  local text, nextoff = call(h, "console_read", name, offset)
  console_ends[h .. "/" .. name] = nextoff
  return text, nextoff
end

-- The console's current end: reads only what was logged since the last read.
local function console_tail_offset(h, name)
  local _, offset = console_read(h, name, console_ends[h .. "/" .. name] or 0)
  return offset
end

-- The last console lines, for timeout messages.
local function last_lines(h, name)
  local tail = lines_of(call(h, "console_tail", name, 600) .. "\n")
  local shown = {}
  for i = math.max(1, #tail - 5), #tail do shown[#shown + 1] = "  | " .. tail[i] end
  return table.concat(shown, "\n")
end

-- Waits until `deadline` (native.now() time; math.huge: none) for a console line matching
-- `pattern` from byte `offset` on; returns the line and the offset after it, or nil.
local function await_line(h, name, pattern, offset, deadline, fail)
  local partial = ""
  while true do
    local text, nextoff = console_read(h, name, offset)
    offset = nextoff
    local chunk = partial .. text
    local complete, rest = chunk:match("^(.*\n)(.*)$")
    if not complete then complete, rest = "", chunk end
    partial = rest
    for _, line in ipairs(lines_of(complete)) do
      for _, bad in ipairs(fail or {}) do
        if line:find(bad) then
          raise(("vm %s: console showed failure pattern %q: %s"):format(label(h, name), bad, line))
        end
      end
      if line:find(pattern) then return line, offset end
    end
    if native.now() >= deadline then return nil end
    call(h, "sleep", 0.05)
  end
end

-- Wait for a console line matching `pattern`; lines already logged before the call count too
-- unless opts.since is given (a byte offset from a previous read).
function IMPL.wait_for_console(host, v, pattern, opts)
  local h, name = target(host, v, "wait_for_console")
  arguments("wait_for_console", pattern)
  opts = checked_options("wait_for_console", opts)
  local timeout = opts.timeout
  local line, offset = await_line(h, name, pattern, opts.since, native.now() + timeout, opts.fail)
  if line then return line, offset end
  raise(("vm %s: timed out after %gs waiting for console pattern %q (vm is %s); last console lines:\n%s")
    :format(label(h, name), timeout, pattern, (call(h, "status", name)), last_lines(h, name)))
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
local function await_shell(h, name, deadline)
  while true do
    local tag = "__PLASMA_R_" .. unique_tag() .. "__"
    local offset = console_tail_offset(h, name)
    -- The leading newline runs (harmlessly) whatever fragment a lost write left behind.
    call(h, "send_console", name, "\nstty -echo; __plasma_ps1=$PS1; PS1=''; echo " .. tag .. "\n")
    local now = native.now()
    if now >= deadline then return false end
    if await_line(h, name, "^" .. tag .. "$", offset, math.min(now + 2, deadline)) then return true end
  end
end

-- What precedes `mark` at the end of `line`, or nil when the line does not end with it.
local function before_mark(line, mark)
  if #line >= #mark and line:sub(-#mark) == mark then return line:sub(1, #line - #mark) end
  return nil
end

function IMPL.exec(host, v, cmd, opts)
  local h, name = target(host, v, "exec")
  arguments("exec", cmd)
  opts = checked_options("exec", opts)
  local timeout = opts.timeout
  local deadline = native.now() + timeout
  if not await_shell(h, name, deadline) then
    raise(("vm %s: exec: no shell answered on the serial console within %gs (vm is %s)"):format(
      label(h, name), timeout, (call(h, "status", name))))
  end
  local tag = unique_tag()
  local start_mark, end_mark = "__PLASMA_S_" .. tag .. "__", "__PLASMA_E_" .. tag .. "__"
  local offset = console_tail_offset(h, name)
  call(h, "send_console", name, ("echo %s; %s\necho %s=$?\n"):format(start_mark, cmd, end_mark))
  local line = await_line(h, name, end_mark .. "=%d+$", offset, deadline)
  if not line then
    raise(("vm %s: exec: timed out after %gs waiting for %q to finish (vm is %s); last console lines:\n%s")
      :format(label(h, name), timeout, cmd, (call(h, "status", name)), last_lines(h, name)))
  end
  local code = tonumber(line:match("=(%d+)$"))
  local text = console_read(h, name, offset)
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
  call(h, "send_console", name, "PS1=$__plasma_ps1; stty echo\n")
  local result = table.concat(out, "\n")
  if #out > 0 and not out.partial then result = result .. "\n" end
  return code, result
end

-- A VM object's methods: its own host comes from the object.
local VM = {}
for k, impl in pairs(IMPL) do VM[k] = function(v, ...) return impl(0, v, ...) end end

MT.__index = function(v, k)
  local f = getuservalue(v, 1)
  if k == "name" or k == "id" then return f.name end
  return VM[k]
end
MT.__tostring = function(v)
  local f = getuservalue(v, 1)
  local h = HOSTS[f.host]
  local shown = (h and not h.is_local) and (f.name .. "@" .. h.address) or f.name
  if f.deleted then return ("vm<%s: deleted>"):format(shown) end
  local ok, state = pcall(call, f.host, "status", f.name)
  return ("vm<%s: %s>"):format(shown, ok and state or "unknown")
end
MT.__eq = function(a, b)
  local fa, fb = getuservalue(a, 1), getuservalue(b, 1)
  return fa.name == fb.name and fa.host == fb.host
end
-- Scope exit deletes the VM (on its host). Cleanup at the end of the session deletes it again
-- if this failed (or could not run here), and reports it if that fails too.
MT.__close = function(v)
  local f = getuservalue(v, 1)
  if f.deleted then return end
  f.deleted = true
  native.defer_delete(f.host, f.name)
  if in_scheduler() then pcall(call, f.host, "delete", f.name, true) end
end

local function list(host)
  return call(host, "list")
end

local function get(host, name)
  arguments("get", name)
  local ok, err = call(host, "exists", name)
  if ok then return wrap(host, name) end
  return nil, err
end

-- In the scheduler the branches run concurrently; in a plan's own coroutine they run one
-- after another (nothing there can wait for two things at once).
local function parallel(...)
  arguments("parallel", ...)
  local fns = pack(...)
  if fns.n == 0 then return end
  if not in_scheduler() then
    local results = {}
    for i = 1, fns.n do
      local r = pack(pcall(fns[i]))
      if not r[1] then raise(("vm.parallel: branch %d failed: %s"):format(i, tostring(r[2]))) end
      results[i] = r[2]
    end
    return unpack(results, 1, fns.n)
  end
  local r = pack(rawyield(TOKEN, "parallel", fns))
  if not r[1] then raise(r[2]) end
  return unpack(r, 2, r.n)
end

-- Host handles: `vm.connect` returns one per host (the same one when connected twice).
local HANDLES = {}
local HANDLE_IDS = setmetatable({}, { __mode = "k" })
local HOST_MT = { __name = "plasmavmc.host" }

-- h:close(): later calls through h (and its VMs) raise; its ephemeral VMs are removed on it
-- and the connection closed. Where the caller cannot yield (an error path), that is left to
-- the session's end.
local function close_host(id)
  local info = HOSTS[id]
  if not info or info.closed then return end
  info.closed = true
  HANDLES[id] = nil
  if in_scheduler() then
    call(id, "close_host")
  else
    native.mark_closed(id)
  end
end

HOST_MT.__tostring = function(h) return ("host<%s>"):format(rawget(h, "address")) end
HOST_MT.__close = function(h)
  local id = HANDLE_IDS[h]
  if id then pcall(close_host, id) end
end

local connect

-- The API on one host: the `vm` table (host 0) and each host handle have the same functions.
local function api_for(host)
  local api = {}
  for k, impl in pairs(IMPL) do api[k] = function(v, ...) return impl(host, v, ...) end end
  api.create = function(spec) return create(host, spec) end
  api.list = function() return list(host) end
  api.get = function(name) return get(host, name) end
  api.parallel = parallel
  api.connect = function(...) return connect(...) end
  return api
end

connect = function(address, opts)
  arguments("connect", address)
  opts = checked_options("connect", opts)
  local id, addr, is_local = call(0, "connect", address, opts.ca, opts.cert, opts.key, opts.server_name)
  local h = HANDLES[id]
  if h then return h end
  HOSTS[id] = { address = addr, is_local = is_local }
  h = api_for(id)
  h.address = addr
  h.close = function() close_host(id) end
  HANDLE_IDS[h] = id
  HANDLES[id] = setmetatable(h, HOST_MT)
  return h
end

local vm = api_for(0)

function sleep(s)
  arguments("sleep", s)
  call(0, "sleep", seconds(s, "sleep", "seconds", 0, false))
end

_G.vm = vm
_G.__plasma_now = native.now
_G.__plasma_api = native.api
