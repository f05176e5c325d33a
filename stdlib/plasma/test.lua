--- plasma.test: a test runner for plasmavmc plans.
--
--   local test = require "plasma.test"
--   test.case("boots", function(t)
--     local v = vm.create{name = "t1", kernel = K, initrd = I}
--     v:start()
--     t:match(v:wait_for_console("READY"), "READY")
--   end)
--   return test.run()
--
-- Output is TAP version 14 on stdout; its last line is "N passed, N failed" (", N skipped" when
-- any were). Every VM a case creates through vm.create is deleted when the case ends; when the
-- case failed, its console log is saved first, under PLASMAVMC_TEST_ARTIFACTS (default
-- ./plasmavmc-test-artifacts). test.run returns false when a case failed, which the host turns
-- into exit status 1. JUnit XML: test.run{junit = PATH} or PLASMAVMC_JUNIT. Case filter (a Lua
-- pattern on the name): test.run{filter = PAT} or PLASMAVMC_TEST_FILTER.
--
-- Module state (the registered cases) lives here; test.reset() clears it, which testmain does
-- between files. Nothing is added to the globals.

local M = {}

local DEFAULT_ARTIFACTS = "plasmavmc-test-artifacts"
local STRING_LIMIT = 200        -- strings longer than this are shown as head ... tail
local NESTED_STRING_LIMIT = 60  -- the same for strings inside tables, to keep tables compact
local TABLE_DEPTH = 3           -- deeper tables are shown as {...}
local TABLE_ITEMS = 20          -- entries shown per table
local DIFF_CONTEXT = 40         -- bytes shown either side of the first difference of long strings
local HOOK_COUNT = 1000         -- instructions between two checks of a case's timeout

-- This file's source: assertion failures and errors are reported at the first frame outside it.
local OWN_SOURCE = debug.getinfo(1, "S").source
local OWN_SHORT_SRC = debug.getinfo(1, "S").short_src
-- The position an error raised at a line of this file starts with.
local OWN_POSITION = "^" .. OWN_SHORT_SRC:gsub("%p", "%%%0") .. ":%d+: "

local cases    -- registered cases in order: {name=, fn=, timeout=, skip=, done=}
local by_name  -- name -> case, to refuse duplicates
local running = false  -- a case is running: registering more then is a mistake

---------------------------------------------------------------------------------------------
-- Small helpers

-- Wall clock: the host's __plasma_now gives fractional seconds; plain Lua only has os.time()
-- (os.clock is CPU time, which stands still while a VM boots).
local function now()
  local f = rawget(_G, "__plasma_now")
  if type(f) == "function" then return f() end
  return os.time()
end

local function getenv(name)
  local v = os.getenv(name)
  if v == "" then return nil end
  return v
end

local function out(line)
  io.stdout:write(line, "\n")
end

-- Print text as TAP diagnostic lines, one "# " per line.
local function diag(text)
  for line in (text .. "\n"):gmatch("(.-)\r?\n") do
    out(line == "" and "#" or "# " .. line)
  end
end

local function shell_quote(s)
  return "'" .. s:gsub("'", [['\'']]) .. "'"
end

-- The level, for error(), of the first caller outside this file and not a C function, so a
-- failure points at the plan's line even through helpers here or pcall.
local function caller_level()
  local level = 2
  while true do
    local info = debug.getinfo(level + 1, "S")
    if not info then return 0 end
    if info.source ~= OWN_SOURCE and info.what ~= "C" then return level end
    level = level + 1
  end
end

---------------------------------------------------------------------------------------------
-- Rendering values: strings quoted, tables compact with sorted keys

local KEYWORDS = {}
for word in ([[and break do else elseif end false for function goto if in local nil not or
  repeat return then true until while]]):gmatch("%a+") do
  KEYWORDS[word] = true
end

local function quote(s)
  -- %q continues a string on the next line after a backslash; keep reprs on one line.
  return (("%q"):format(s):gsub("\\\n", "\\n"))
end

local function clip(s, limit)
  if #s <= limit then return quote(s) end
  local half = limit // 2
  return ("%s ... (%d bytes omitted) ... %s"):format(
    quote(s:sub(1, half)), #s - 2 * half, quote(s:sub(-half)))
end

local function number_repr(n)
  if math.type(n) == "float" then
    if n ~= n then return "nan" end
    local s = tostring(n)
    -- tostring rounds to 14 digits: 0.1 + 0.2 would read as 0.3.
    if tonumber(s) ~= n then s = ("%.17g"):format(n) end
    return s
  end
  return tostring(n)
end

local TYPE_ORDER = { number = 1, string = 2, boolean = 3 }

local function key_before(a, b)
  local ta, tb = type(a), type(b)
  if ta ~= tb then
    local oa, ob = TYPE_ORDER[ta] or 9, TYPE_ORDER[tb] or 9
    if oa ~= ob then return oa < ob end
    return ta < tb
  end
  if ta == "number" or ta == "string" then return a < b end
  return tostring(a) < tostring(b)
end

-- The length n of the array part 1..n, and the other keys sorted.
local function sorted_keys(t)
  local n = 0
  while rawget(t, n + 1) ~= nil do n = n + 1 end
  local rest = {}
  for k in next, t do
    if not (math.type(k) == "integer" and k >= 1 and k <= n) then rest[#rest + 1] = k end
  end
  table.sort(rest, key_before)
  return n, rest
end

local function safe_tostring(v)
  local ok, s = pcall(tostring, v)
  if ok and type(s) == "string" then return s end
  return "<" .. type(v) .. ">"
end

local repr

local function key_repr(k)
  if type(k) == "string" and k:match("^[%a_][%w_]*$") and not KEYWORDS[k] then return k end
  return "[" .. repr(k, TABLE_DEPTH, {}, NESTED_STRING_LIMIT) .. "]"
end

-- `ancestors` holds the tables being rendered above this one, to mark cycles.
function repr(v, depth, ancestors, limit)
  local tv = type(v)
  if tv == "string" then return clip(v, limit or STRING_LIMIT) end
  if tv == "number" then return number_repr(v) end
  if tv ~= "table" then return safe_tostring(v) end  -- VM objects render as vm<name: state>
  local mt = getmetatable(v)
  if type(mt) == "table" and rawget(mt, "__tostring") then return safe_tostring(v) end
  depth, ancestors = depth or 0, ancestors or {}
  if ancestors[v] then return "<cycle>" end
  if next(v) == nil then return "{}" end
  if depth >= TABLE_DEPTH then return "{...}" end
  ancestors[v] = true
  local n, rest = sorted_keys(v)
  local parts, total = {}, n + #rest
  for i = 1, math.min(n, TABLE_ITEMS) do
    parts[#parts + 1] = repr(v[i], depth + 1, ancestors, NESTED_STRING_LIMIT)
  end
  for i = 1, math.min(#rest, TABLE_ITEMS - #parts) do
    local k = rest[i]
    parts[#parts + 1] = key_repr(k) .. " = "
      .. repr(rawget(v, k), depth + 1, ancestors, NESTED_STRING_LIMIT)
  end
  if total > #parts then parts[#parts + 1] = ("... %d more"):format(total - #parts) end
  ancestors[v] = nil
  return "{" .. table.concat(parts, ", ") .. "}"
end

--- Renders a value as the assertion messages do (strings quoted, tables compact).
---@param value any
---@return string
function M.repr(value)
  return repr(value)
end

---------------------------------------------------------------------------------------------
-- Deep equality

local function path_part(k)
  if type(k) == "string" and k:match("^[%a_][%w_]*$") and not KEYWORDS[k] then return "." .. k end
  return "[" .. repr(k, TABLE_DEPTH, {}, NESTED_STRING_LIMIT) .. "]"
end

-- Returns true, or false and the path of the first difference with the two values there.
-- Keys are visited in sorted order so the reported difference is the same on every run.
-- `visiting` pairs tables already being compared, so cyclic structures terminate.
local function same(a, b, path, visiting)
  if a == b then return true end  -- also honours __eq: two handles on one VM are equal
  if type(a) == "number" and type(b) == "number" and a ~= a and b ~= b then return true end
  if type(a) ~= "table" or type(b) ~= "table" then return false, path, a, b end
  local mt = getmetatable(a) or getmetatable(b)
  if type(mt) == "table" and mt.__eq then return false, path, a, b end  -- its own verdict
  visiting[a] = visiting[a] or {}
  if visiting[a][b] then return true end
  visiting[a][b] = true
  local n, rest = sorted_keys(a)
  for i = 1, n + #rest do
    local k = i <= n and i or rest[i - n]
    local ok, p, x, y = same(rawget(a, k), rawget(b, k), path .. path_part(k), visiting)
    if not ok then return false, p, x, y end
  end
  n, rest = sorted_keys(b)
  for i = 1, n + #rest do
    local k = i <= n and i or rest[i - n]
    if rawget(a, k) == nil then return false, path .. path_part(k), nil, rawget(b, k) end
  end
  return true
end

local function first_difference(a, b)
  local i = 1
  while i <= #a and a:byte(i) == b:byte(i) do i = i + 1 end
  return i
end

local function window(s, i)
  local from, to = math.max(1, i - DIFF_CONTEXT), i + DIFF_CONTEXT
  return (from > 1 and "..." or "") .. quote(s:sub(from, to)) .. (to < #s and "..." or "")
end

---------------------------------------------------------------------------------------------
-- The assertion object `t`

local T = {}
T.__index = T

-- End the case: `status` is "fail" or "skip". The message is raised at the plan's line; it is
-- remembered so the runner tells it from a runtime error, even after a pcall re-raised it.
local function raise(t, status, lines, reason)
  local text = table.concat(lines, "\n")
  t._raised = { status = status, text = text, reason = reason }
  error(text, caller_level())
end

local function new_t(name)
  return setmetatable({ name = name, _logs = {} }, T)
end

--- Deep equality: tables compare by contents. Fails with the expected and got values.
function T:eq(got, expected, msg)
  local ok, path, x, y = same(got, expected, "", {})
  if ok then return end
  local lines = { msg ~= nil and tostring(msg) or "values differ" }
  if type(got) == "string" and type(expected) == "string"
    and math.max(#got, #expected) > STRING_LIMIT then
    local i = first_difference(got, expected)
    lines[2] = "expected: " .. window(expected, i)
    lines[3] = "got: " .. window(got, i)
    lines[4] = ("at byte %d (lengths: expected %d, got %d)"):format(i, #expected, #got)
  else
    lines[2] = "expected: " .. repr(expected)
    lines[3] = "got: " .. repr(got)
    if path ~= "" then
      lines[4] = ("at %s: expected %s, got %s"):format(path:gsub("^%.", ""), repr(y), repr(x))
    end
  end
  raise(self, "fail", lines)
end

--- Fails unless value is true-ish. Returns value, so `local v = t:ok(vm.get("x"))` works.
function T:ok(value, message)
  if value then return value end
  raise(self, "fail", {
    message ~= nil and tostring(message) or "expected a true value",
    "got: " .. repr(value),
  })
end

--- Fails unless text matches the Lua pattern. Returns the captures (or the whole match).
function T:match(text, pattern, msg)
  if type(pattern) ~= "string" then
    error("t:match: pattern must be a string, got " .. type(pattern), 2)
  end
  if type(text) ~= "string" then
    raise(self, "fail", {
      msg ~= nil and tostring(msg) or "expected a string to match, got " .. type(text),
      "text: " .. repr(text),
      "pattern: " .. quote(pattern),
    })
  end
  local found = table.pack(pcall(string.match, text, pattern))
  if not found[1] then
    raise(self, "fail", { ("invalid pattern %s: %s"):format(quote(pattern), found[2]) })
  end
  if found[2] == nil then
    raise(self, "fail", {
      msg ~= nil and tostring(msg) or "text does not match pattern",
      "text: " .. clip(text, STRING_LIMIT),
      "pattern: " .. quote(pattern),
    })
  end
  return table.unpack(found, 2, found.n)
end

local function error_text(err)
  if type(err) == "string" then return err end
  if type(err) == "table" and not (getmetatable(err) or {}).__tostring then
    return "error object: " .. repr(err)
  end
  return safe_tostring(err)
end

--- Fails unless fn raises; if pattern is given, the message must match it. Returns the error.
function T:raises(fn, pattern)
  local mt = getmetatable(fn)
  if type(fn) ~= "function" and not (type(mt) == "table" and mt.__call) then
    error("t:raises: expected a function, got " .. type(fn), 2)
  end
  if pattern ~= nil and type(pattern) ~= "string" then
    error("t:raises: pattern must be a string, got " .. type(pattern), 2)
  end
  local r = table.pack(pcall(fn))
  if r[1] then
    local lines = { "expected an error, but none was raised" }
    if r.n > 1 then
      local shown = {}
      for i = 2, r.n do shown[#shown + 1] = repr(r[i]) end
      lines[2] = "returned: " .. table.concat(shown, ", ")
    end
    raise(self, "fail", lines)
  end
  local err = r[2]
  -- An assertion failing inside fn was expected here: it no longer ends the case.
  if self._raised and type(err) == "string" and err:find(self._raised.text, 1, true) then
    self._raised = nil
  end
  if pattern ~= nil then
    local text = error_text(err)
    local ok, found = pcall(string.find, text, pattern)
    if not ok then
      raise(self, "fail", { ("invalid pattern %s: %s"):format(quote(pattern), found) })
    end
    if not found then
      raise(self, "fail", {
        "error does not match pattern",
        "error: " .. clip(text, STRING_LIMIT),
        "pattern: " .. quote(pattern),
      })
    end
  end
  return err
end

--- Fails the case now.
function T:fail(msg)
  msg = msg ~= nil and tostring(msg) or ""
  raise(self, "fail", { msg ~= "" and msg or "failed" })
end

--- Ends the case now as skipped (e.g. a host without KVM); its VMs are still cleaned up.
function T:skip(reason)
  reason = reason ~= nil and tostring(reason) or ""
  -- The raised text is never empty: an empty text would match any later error.
  raise(self, "skip", { "case skipped" .. (reason ~= "" and ": " .. reason or "") }, reason)
end

--- Prints a diagnostic line ("# ..."); also kept for the JUnit report.
function T:log(...)
  local parts = {}
  for i = 1, select("#", ...) do
    local v = select(i, ...)
    parts[i] = type(v) == "string" and v or repr(v)
  end
  local text = table.concat(parts, " ")
  self._logs[#self._logs + 1] = text
  diag(text)
end

---------------------------------------------------------------------------------------------
-- Registering cases

local CASE_OPTIONS = { timeout = true, skip = true }

--- test.case(name, fn) or test.case(name, {timeout = seconds, skip = "why"}, fn)
---@param name string
---@param opts plasma.test.CaseOptions
---@param fn fun(t: plasma.test.T)
---@overload fun(name: string, fn: fun(t: plasma.test.T))
function M.case(name, opts, fn)
  if fn == nil and type(opts) == "function" then opts, fn = {}, opts end
  if opts == nil then opts = {} end
  if type(name) ~= "string" or name == "" then
    error("test.case: name must be a non-empty string, got " .. repr(name), 2)
  end
  if running then
    error(("test.case %q: cannot register a case while a case runs"):format(name), 2)
  end
  if type(opts) ~= "table" then
    error(("test.case %q: options must be a table, got %s"):format(name, type(opts)), 2)
  end
  for k in pairs(opts) do
    if not CASE_OPTIONS[k] then
      error(("test.case %q: unknown option %s"):format(name, repr(k)), 2)
    end
  end
  if opts.timeout ~= nil and (type(opts.timeout) ~= "number" or opts.timeout <= 0) then
    error(("test.case %q: timeout must be a number of seconds > 0"):format(name), 2)
  end
  local skip = opts.skip
  if skip ~= nil and skip ~= false and skip ~= true and type(skip) ~= "string" then
    error(("test.case %q: skip must be a string (the reason) or a boolean"):format(name), 2)
  end
  if type(fn) ~= "function" then
    error(("test.case %q: expected a function, got %s"):format(name, type(fn)), 2)
  end
  if by_name[name] then error(("test.case: duplicate case name %q"):format(name), 2) end
  local case = {
    name = name, fn = fn, timeout = opts.timeout,
    skip = skip == true and "" or (skip or nil),
  }
  cases[#cases + 1] = case
  by_name[name] = case
end

--- Forgets every registered case.
function M.reset()
  cases, by_name = {}, {}
end

M.reset()

---------------------------------------------------------------------------------------------
-- Running one case: VM tracking, protection, timeout, cleanup

-- While a case runs, vm.create records every VM it returns. Returns the list and a function
-- that puts the original vm.create back.
local function track_vms()
  local api = rawget(_G, "vm")
  if type(api) ~= "table" or type(api.create) ~= "function" then
    return {}, function() end
  end
  local created, original = {}, api.create
  api.create = function(...)
    local r = table.pack(pcall(original, ...))
    if not r[1] then
      -- vm.create raised at its caller, which is this wrapper: move the error to the plan.
      local err = r[2]
      if type(err) == "string" and err:find(OWN_POSITION) then
        error(err:gsub(OWN_POSITION, "", 1), caller_level())
      end
      error(err, 0)
    end
    if r[2] ~= nil then created[#created + 1] = r[2] end
    return table.unpack(r, 2, r.n)
  end
  return created, function() api.create = original end
end

local function vm_name(v, i)
  local ok, name = pcall(function() return v.name end)
  if ok and type(name) == "string" then return name end
  return "vm" .. i
end

-- Whether the VM still exists (a case may have deleted it itself); true when unknown.
local function exists(name)
  local api = rawget(_G, "vm")
  if type(api) ~= "table" or type(api.get) ~= "function" then return true end
  local ok, v = pcall(api.get, name)
  return not ok or v ~= nil
end

-- The VMs to clean up: the last object per name, since a case may delete a VM and create
-- another one with the same name.
local function distinct(created)
  local list, seen = {}, {}
  for i = #created, 1, -1 do
    local name = vm_name(created[i], i)
    if not seen[name] then
      seen[name] = true
      table.insert(list, 1, { vm = created[i], name = name })
    end
  end
  return list
end

local function sanitize(s)
  return (s:gsub("[^%w%.%-]+", "_"):gsub("^%.", "_"):sub(1, 100))
end

-- An error of a vm call made by the cleanup: raised at this file's line, which says nothing.
local function cleanup_error(err)
  return (error_text(err):gsub(OWN_POSITION, "", 1))
end

local function save_consoles(dir, case_name, vms, notes)
  local made = false
  for _, e in ipairs(vms) do
    local ok, text = pcall(function() return e.vm:console_log() end)
    if not ok then
      if exists(e.name) then
        notes[#notes + 1] = ("could not read the console log of VM %s: %s")
          :format(e.name, cleanup_error(text))
      end
    elseif type(text) == "string" then
      if not made then
        made = true
        if not os.execute("mkdir -p " .. shell_quote(dir)) then
          notes[#notes + 1] = "could not create the artifacts folder " .. dir
          return
        end
      end
      local path = ("%s/%s-%s.console.log"):format(dir, sanitize(case_name), sanitize(e.name))
      local f, err = io.open(path, "wb")
      if f then
        f:write(text)
        f:close()
        notes[#notes + 1] = ("console log of VM %s: %s"):format(e.name, path)
      else
        notes[#notes + 1] = ("could not save the console log of VM %s: %s"):format(e.name, err)
      end
    end
  end
end

local function delete_vms(vms, notes)
  for i = #vms, 1, -1 do
    local e = vms[i]
    local ok, err = pcall(function() return e.vm:delete{ force = true } end)
    if not ok and exists(e.name) then
      notes[#notes + 1] = ("could not delete VM %s: %s"):format(e.name, cleanup_error(err))
    end
  end
end

-- A traceback without this runner's frames: from the failing line down to the case function.
local function traceback()
  local kept = {}
  for line in debug.traceback("", 3):gmatch("[^\n]+") do
    local frame = line:gsub("^%s+", "")
    if frame:find("in function 'xpcall'", 1, true) then break end
    if frame ~= "" and frame:sub(1, #OWN_SHORT_SRC + 1) ~= OWN_SHORT_SRC .. ":"
      and frame ~= "[C]: in function 'error'" then
      kept[#kept + 1] = frame == "stack traceback:" and frame or "  " .. frame
    end
  end
  return table.concat(kept, "\n")
end

-- Runs fn(t) protected. Returns {status = "pass"|"fail"|"skip"}, with for a failure its kind
-- ("assertion" or "error"), message and for an error the traceback; for a skip the reason.
local function protected_call(fn, t, timeout)
  local hook
  if timeout then
    local deadline = now() + timeout
    hook = function()
      if now() <= deadline then return end
      -- Not inside this runner's own code (an assertion, or the runner once the case has
      -- returned): the next check in the plan's code raises. The hook stays armed so that a
      -- pcall in the case cannot swallow the timeout for good.
      if debug.getinfo(2, "S").source == OWN_SOURCE then return end
      error(("case timed out after %gs"):format(timeout), 0)
    end
    debug.sethook(hook, "", HOOK_COUNT)
  end
  local ok, res = xpcall(fn, function(err)
    local raised = t._raised
    if raised and type(err) == "string" and err:find(raised.text, 1, true) then
      return { status = raised.status, kind = "assertion", message = err, reason = raised.reason }
    end
    return { status = "fail", kind = "error", message = error_text(err), traceback = traceback() }
  end, t)
  -- Only remove our own hook: the host may have set one (e.g. to interrupt on Ctrl-C).
  if hook and debug.gethook() == hook then debug.sethook() end
  if ok then return { status = "pass" } end
  if type(res) ~= "table" then  -- the handler itself failed (e.g. out of memory)
    return { status = "fail", kind = "error", message = error_text(res) }
  end
  return res
end

---------------------------------------------------------------------------------------------
-- The runner: numbering, TAP output, counts, JUnit

local Runner = {}
Runner.__index = Runner

local function new_runner(opts)
  opts = opts or {}
  if type(opts) ~= "table" then
    error("test.run: options must be a table, got " .. type(opts), 3)
  end
  local filter = opts.filter or getenv("PLASMAVMC_TEST_FILTER")
  if filter ~= nil then
    if type(filter) ~= "string" then
      error("test.run: filter must be a string (a Lua pattern), got " .. type(filter), 3)
    end
    local ok, err = pcall(string.find, "", filter)
    if not ok then
      error(("test.run: invalid filter pattern %s: %s"):format(quote(filter), err), 3)
    end
  end
  return setmetatable({
    filter = filter,
    junit = opts.junit or getenv("PLASMAVMC_JUNIT"),
    artifacts = opts.artifacts or getenv("PLASMAVMC_TEST_ARTIFACTS") or DEFAULT_ARTIFACTS,
    count = 0, passed = 0, failed = 0, skipped = 0,
    suites = {},  -- for JUnit: {name=, results={...}}
    planned = false,
  }, Runner)
end

function Runner.start()
  io.stdout:setvbuf("line")  -- each line shows at once, also through a pipe
  out("TAP version 14")
end

function Runner:plan(n)
  self.planned = true
  out("1.." .. n)
end

-- Starts a JUnit test suite (a plan file).
function Runner:suite(name)
  self.current = { name = name, results = {} }
  self.suites[#self.suites + 1] = self.current
end

function Runner:selects(name)
  return self.filter == nil or name:find(self.filter) ~= nil
end

-- TAP descriptions must not contain an unescaped "#" (it starts a directive).
local function tap_escape(s)
  return (s:gsub("[\\#]", "\\%0"):gsub("[\r\n]+", " "))
end

-- Prints one test point with its diagnostics and records it for JUnit.
function Runner:record(name, display, res, notes, logs)
  self.count = self.count + 1
  local line = ("ok %d - %s"):format(self.count, tap_escape(display))
  if res.status == "skip" then
    self.skipped = self.skipped + 1
    line = line .. " # SKIP" .. (res.reason ~= "" and " " .. res.reason or "")
  elseif res.status == "pass" then
    self.passed = self.passed + 1
  else
    self.failed = self.failed + 1
    line = "not " .. line
  end
  out(line)
  if res.status == "fail" then
    diag(res.message)
    if res.traceback and res.traceback ~= "" then diag(res.traceback) end
  end
  for _, note in ipairs(notes or {}) do diag(note) end
  if not self.current then self:suite("plasmavmc") end
  local r = self.current.results
  r[#r + 1] = { name = name, res = res, notes = notes or {}, logs = logs or {} }
end

-- Runs one registered case; `prefix` goes before its name in the output (testmain's file).
function Runner:run_case(case, prefix)
  case.done = true
  local display = prefix .. case.name
  if case.skip then
    self:record(case.name, display, { status = "skip", reason = case.skip, time = 0 })
    return true
  end
  local t = new_t(display)
  local started = now()
  local created, restore = track_vms()
  running = true
  local res = protected_call(case.fn, t, case.timeout)
  running = false
  restore()
  local notes = {}
  local vms = distinct(created)
  if res.status == "fail" and #vms > 0 then save_consoles(self.artifacts, display, vms, notes) end
  delete_vms(vms, notes)
  res.time = now() - started
  self:record(case.name, display, res, notes, t._logs)
  return res.status ~= "fail"
end

-- Runs the registered cases not run yet that pass the filter. Returns false if one failed.
function Runner:run_pending(prefix)
  local ok = true
  for _, case in ipairs(self:pending(prefix)) do
    if not self:run_case(case, prefix) then ok = false end
  end
  return ok
end

function Runner:pending(prefix)
  local list = {}
  for _, case in ipairs(cases) do
    if not case.done and self:selects(prefix .. case.name) then list[#list + 1] = case end
  end
  return list
end

-- A failure that is not a case, e.g. a test file that does not load (testmain).
function Runner:failure(name, message)
  self:record(name, name, { status = "fail", kind = "error", message = message, time = 0 })
end

-- XML 1.0 allows neither invalid UTF-8 nor most control characters, even as references;
-- console output may hold both.
local function utf8_clean(s)
  if utf8.len(s) then return s end
  local parts, i = {}, 1
  while i <= #s do
    local n, bad = utf8.len(s, i)
    if n then
      parts[#parts + 1] = s:sub(i)
      break
    end
    parts[#parts + 1] = s:sub(i, bad - 1) .. "\u{FFFD}"
    i = bad + 1
  end
  return table.concat(parts)
end

local XML_ENTITIES = {
  ["&"] = "&amp;", ["<"] = "&lt;", [">"] = "&gt;", ['"'] = "&quot;", ["'"] = "&apos;",
  ["\n"] = "&#10;", ["\r"] = "&#13;", ["\t"] = "&#9;",
}

local function xml(s, attribute)
  s = utf8_clean(tostring(s)):gsub("[\0-\8\11\12\14-\31]", function(c)
    return ("\\%d"):format(c:byte())
  end)
  return (s:gsub(attribute and "[&<>\"'\n\r\t]" or "[&<>\r]", XML_ENTITIES))
end

local function attrs(list)
  local parts = {}
  for i = 1, #list, 2 do
    parts[#parts + 1] = ('%s="%s"'):format(list[i], xml(list[i + 1], true))
  end
  return table.concat(parts, " ")
end

local function seconds(t) return ("%.3f"):format(t or 0) end

local function suite_counts(results)
  local c = { tests = #results, failures = 0, skipped = 0, time = 0 }
  for _, r in ipairs(results) do
    if r.res.status == "fail" then c.failures = c.failures + 1 end
    if r.res.status == "skip" then c.skipped = c.skipped + 1 end
    c.time = c.time + (r.res.time or 0)
  end
  return c
end

function Runner:junit_xml()
  local total = suite_counts({})
  local body = {}
  for _, suite in ipairs(self.suites) do
    local c = suite_counts(suite.results)
    for k in pairs(total) do total[k] = total[k] + c[k] end
    body[#body + 1] = ("  <testsuite %s>"):format(attrs{
      "name", suite.name, "tests", c.tests, "failures", c.failures, "errors", 0,
      "skipped", c.skipped, "time", seconds(c.time),
      "timestamp", os.date("!%Y-%m-%dT%H:%M:%S"),
    })
    for _, r in ipairs(suite.results) do
      local head = ("    <testcase %s"):format(attrs{
        "name", r.name, "classname", suite.name, "time", seconds(r.res.time),
      })
      local inner = {}
      if r.res.status == "fail" then
        local details = r.res.message .. (r.res.traceback and "\n" .. r.res.traceback or "")
        inner[#inner + 1] = ("      <failure %s>%s</failure>"):format(attrs{
          "message", r.res.message:match("[^\n]*"),
          "type", r.res.kind,
        }, xml(details))
      elseif r.res.status == "skip" then
        inner[#inner + 1] = ("      <skipped %s/>"):format(attrs{ "message", r.res.reason })
      end
      local output = {}
      for _, line in ipairs(r.logs) do output[#output + 1] = line end
      for _, line in ipairs(r.notes) do output[#output + 1] = line end
      if #output > 0 then
        inner[#inner + 1] = ("      <system-out>%s</system-out>")
          :format(xml(table.concat(output, "\n")))
      end
      if #inner == 0 then
        body[#body + 1] = head .. "/>"
      else
        body[#body + 1] = head .. ">\n" .. table.concat(inner, "\n") .. "\n    </testcase>"
      end
    end
    body[#body + 1] = "  </testsuite>"
  end
  return ('<?xml version="1.0" encoding="UTF-8"?>\n<testsuites %s>\n%s\n</testsuites>\n'):format(
    attrs{ "name", "plasmavmc", "tests", total.tests, "failures", total.failures, "errors", 0,
      "skipped", total.skipped, "time", seconds(total.time) },
    table.concat(body, "\n"))
end

-- Prints the plan (if not printed first) and the summary, writes JUnit. True if none failed.
function Runner:finish()
  if not self.planned then self:plan(self.count) end
  local ok = self.failed == 0
  if self.junit then
    local f, err = io.open(self.junit, "w")
    if f then
      f:write(self:junit_xml())
      f:close()
    else
      io.stderr:write("plasma.test: cannot write the JUnit report: ", err, "\n")
      ok = false
    end
  end
  local summary = ("%d passed, %d failed"):format(self.passed, self.failed)
  if self.skipped > 0 then summary = summary .. (", %d skipped"):format(self.skipped) end
  out(summary)
  io.stdout:flush()
  return ok
end

---------------------------------------------------------------------------------------------
-- Entry points

local function plan_name()
  local a = rawget(_G, "arg")
  local path = type(a) == "table" and a[0]
  if type(path) == "string" then return path:match("[^/]*$") end
  return "plasmavmc"
end

--- Runs every registered case in order and prints the report. Returns true if none failed.
---@param opts? plasma.test.RunOptions {filter = pattern, junit = path, artifacts = folder}
---@return boolean
function M.run(opts)
  if running then error("test.run: cannot run inside a case", 2) end
  local r = new_runner(opts)
  r:start()
  r:suite(plan_name())
  local list = r:pending("")
  r:plan(#list)
  if r.filter then
    diag(("filter %s selects %d of %d cases"):format(quote(r.filter), #list, #cases))
  end
  for _, case in ipairs(list) do r:run_case(case, "") end
  return r:finish()
end

--- For testmain: a runner over several files (start, suite, run_pending, failure, finish).
function M._runner(opts)
  return new_runner(opts)
end

return M
