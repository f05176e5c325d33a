-- Self-tests of plasma.test and testmain (stdlib/plasma/) under plain lua5.4, with the fake vm
-- API instead of QEMU. Each check writes a small plan into a scratch folder, runs it in a child
-- process through host.lua (a stand-in for `plasmavmc run`) and looks at its stdout, stderr,
-- exit status and files. The checks use their own small harness, not plasma.test, so a broken
-- runner cannot hide its own failures.
--
--   lua5.4 Tests/LuaRunnerTests/run.lua [PATTERN]
--
-- PATTERN (a Lua pattern) selects checks by name. Output: one "ok"/"not ok" line per check,
-- then "N passed, N failed" as the last line; exit status 1 if any check failed.

-- Absolute paths: the plans run in scratch folders.
local SCRIPT = arg[0]:sub(1, 1) == "/" and arg[0] or (os.getenv("PWD") or ".") .. "/" .. arg[0]
local HERE = SCRIPT:match("^(.*)/[^/]*$")
local ROOT = HERE .. "/../.."
local HOST = HERE .. "/host.lua"
local TESTMAIN = ROOT .. "/stdlib/plasma/testmain.lua"

local function q(s)
  return "'" .. s:gsub("'", [['\'']]) .. "'"
end

local function read(path)
  local f = io.open(path, "rb")
  if not f then return nil end
  local s = f:read("a")
  f:close()
  return s
end

local function write(path, text)
  local f = assert(io.open(path, "wb"))
  f:write(text)
  f:close()
end

local function exists(path)
  return os.execute("test -e " .. q(path)) == true
end

local scratch = io.popen("mktemp -d"):read("l")
assert(scratch and scratch ~= "", "mktemp -d failed")

---------------------------------------------------------------------------------------------
-- Running plans

local runs = 0

-- Runs a plan in a fresh folder. opts: files = {name = text} written beside it, args = {...}
-- for the plan, env = {NAME = value}, no_vm = true (bare Lua), plan = name of the plan file
-- (default "plan.lua"; may name a file outside the folder, e.g. testmain).
-- Returns {out=, err=, code=, dir=}.
local function run(source, opts)
  opts = opts or {}
  runs = runs + 1
  local dir = ("%s/run%d"):format(scratch, runs)
  assert(os.execute("mkdir -p " .. q(dir)))
  local plan = opts.plan or "plan.lua"
  if source then write(dir .. "/" .. plan, source) end
  for name, text in pairs(opts.files or {}) do
    os.execute("mkdir -p " .. q((dir .. "/" .. name):match("^(.*)/")))
    write(dir .. "/" .. name, text)
  end
  -- The caller's own settings must not leak into the child.
  local env = { "env -u PLASMAVMC_JUNIT -u PLASMAVMC_TEST_FILTER -u PLASMAVMC_TEST_ARTIFACTS"
    .. " -u PLASMAVMC_TEST_SHARD" }
  for k, v in pairs(opts.env or {}) do env[#env + 1] = k .. "=" .. q(v) end
  local args = {}
  for i, a in ipairs(opts.args or {}) do args[i] = q(a) end
  local cmd = ("cd %s && %s lua5.4 %s %s %s %s >stdout 2>stderr"):format(
    q(dir), table.concat(env, " "), q(HOST), opts.no_vm and "--no-vm" or "", q(plan),
    table.concat(args, " "))
  local _, how, code = os.execute(cmd)
  return {
    out = read(dir .. "/stdout"), err = read(dir .. "/stderr"), dir = dir,
    code = how == "exit" and code or 128 + code,
  }
end

-- Runs testmain over the given files ({name = text}, in the order of `order`).
local function run_testmain(files, order, env)
  return run(nil, { plan = TESTMAIN, files = files, args = order, env = env })
end

---------------------------------------------------------------------------------------------
-- Expectations: each raises with a message showing what differed

local function fail(msg, level)
  error(msg, (level or 1) + 2)
end

local function expect(cond, msg)
  if not cond then fail(msg or "expectation failed") end
end

local function expect_eq(got, want, what)
  if got ~= want then
    fail(("%s\n--- want:\n%s\n--- got:\n%s"):format(what or "values differ", tostring(want),
      tostring(got)))
  end
end

local function expect_has(text, needle, what)
  if not (text or ""):find(needle, 1, true) then
    fail(("%s: %q not found in:\n%s"):format(what or "missing text", needle, tostring(text)))
  end
end

local function expect_lacks(text, needle, what)
  if (text or ""):find(needle, 1, true) then
    fail(("%s: %q found in:\n%s"):format(what or "unexpected text", needle, tostring(text)))
  end
end

local function last_line(text)
  return (text or ""):match("([^\n]*)\n?$")
end

-- The exact stdout and exit status of a run.
local function expect_run(r, want_out, want_code)
  expect_eq(r.out, want_out, "stdout")
  expect_eq(r.code, want_code, "exit status (stderr: " .. tostring(r.err) .. ")")
end

-- Parses a JUnit file with Python's XML parser (the well-formedness check) and returns a
-- summary: one line for the root, each suite, each case and its failure/skipped/system-out.
local function junit_summary(path)
  local script = [[
import sys, xml.dom.minidom
d = xml.dom.minidom.parse(sys.argv[1])
root = d.documentElement
attrs = lambda e, names: " ".join("%s=%s" % (n, e.getAttribute(n)) for n in names)
counts = ["tests", "failures", "skipped"]
print(root.tagName, attrs(root, counts))  # ascii(): non-ASCII shown as \u escapes
for s in root.getElementsByTagName("testsuite"):
    print(" suite", attrs(s, ["name"] + counts), "time" if s.getAttribute("time") else "")
    for c in s.getElementsByTagName("testcase"):
        print("  case", attrs(c, ["name", "classname"]), "time" if c.getAttribute("time") else "")
        for e in c.childNodes:
            if e.nodeType != e.ELEMENT_NODE: continue
            text = "".join(t.data for t in e.childNodes)
            print("   ", e.tagName, ascii(e.getAttribute("message")), e.getAttribute("type"), ascii(text))
]]
  write(scratch .. "/junit.py", script)
  local p = io.popen(("python3 %s %s 2>&1"):format(q(scratch .. "/junit.py"), q(path)))
  local text = p:read("a")
  local ok = p:close()
  if not ok then fail("JUnit XML does not parse:\n" .. text .. "\n" .. tostring(read(path))) end
  return text
end

---------------------------------------------------------------------------------------------
-- The checks

local checks = {}
local function check(name, fn) checks[#checks + 1] = { name = name, fn = fn } end

check("TAP output, summary as last line, exit status 1 when a case fails", function()
  local r = run [[
local test = require "plasma.test"
test.case("passes", function(t) t:eq(1 + 1, 2) end)
test.case("fails", function(t) t:eq("stopped", "running") end)
test.case("also passes", function(t) t:ok(true) end)
return test.run()
]]
  expect_run(r, [[
TAP version 14
1..3
ok 1 - passes
not ok 2 - fails
# plan.lua:3: values differ
# expected: "running"
# got: "stopped"
ok 3 - also passes
2 passed, 1 failed
]], 1)
  expect_eq(r.err, "", "stderr")
end)

check("all cases passing: exit status 0; no cases: 1..0", function()
  local r = run [[
local test = require "plasma.test"
test.case("a", function(t) end)
test.case("b", function(t) t:ok(1) end)
return test.run()
]]
  expect_run(r, "TAP version 14\n1..2\nok 1 - a\nok 2 - b\n2 passed, 0 failed\n", 0)
  r = run 'return require("plasma.test").run()'
  expect_run(r, "TAP version 14\n1..0\n0 passed, 0 failed\n", 0)
end)

check("t:eq messages: scalars, custom message, floats, tables with the first difference", function()
  local r = run [[
local test = require "plasma.test"
test.case("numbers", function(t) t:eq(1, 1.0); t:eq(41, 42) end)
test.case("message", function(t) t:eq(nil, false, "state after stop") end)
test.case("floats", function(t) t:eq(0.1 + 0.2, 0.3) end)
test.case("escapes", function(t) t:eq("a\nb\t\"c\"", "a\\nb") end)
test.case("tables", function(t)
  t:eq({1, {b = 2, c = "x"}, name = "a"}, {1, {b = 2, c = "x"}, name = "a"})
  t:eq({1, {b = 2, c = "x"}, name = "a"}, {1, {b = 3, c = "x"}, name = "a"})
end)
test.case("missing key", function(t) t:eq({a = 1}, {a = 1, b = 2}) end)
test.case("extra item", function(t) t:eq({1, 2, 3}, {1, 2}) end)
test.case("key order", function(t)
  t:eq({z = 1, [2] = "two", [1] = "one", ["not ident"] = 0, [true] = 1, ["end"] = 2, [1.5] = 3}, {})
end)
test.case("type", function(t) t:eq("1", 1) end)
return test.run()
]]
  expect_run(r, [[
TAP version 14
1..9
not ok 1 - numbers
# plan.lua:2: values differ
# expected: 42
# got: 41
not ok 2 - message
# plan.lua:3: state after stop
# expected: false
# got: nil
not ok 3 - floats
# plan.lua:4: values differ
# expected: 0.3
# got: 0.30000000000000004
not ok 4 - escapes
# plan.lua:5: values differ
# expected: "a\\nb"
# got: "a\nb\9\"c\""
not ok 5 - tables
# plan.lua:8: values differ
# expected: {1, {b = 3, c = "x"}, name = "a"}
# got: {1, {b = 2, c = "x"}, name = "a"}
# at [2].b: expected 3, got 2
not ok 6 - missing key
# plan.lua:10: values differ
# expected: {a = 1, b = 2}
# got: {a = 1}
# at b: expected 2, got nil
not ok 7 - extra item
# plan.lua:11: values differ
# expected: {1, 2}
# got: {1, 2, 3}
# at [3]: expected nil, got 3
not ok 8 - key order
# plan.lua:13: values differ
# expected: {}
# got: {"one", "two", [1.5] = 3, ["end"] = 2, ["not ident"] = 0, z = 1, [true] = 1}
# at [1]: expected nil, got "one"
not ok 9 - type
# plan.lua:15: values differ
# expected: 1
# got: "1"
0 passed, 9 failed
]], 1)
end)

check("t:eq: depth limit, cycles, long strings, many items, VM handles", function()
  local r = run [[
local test = require "plasma.test"
test.case("deep", function(t) t:eq({a = {b = {c = {d = 1}}}}, {a = {b = {c = {d = 2}}}}) end)
test.case("cycle", function(t)
  local a, b = {n = 1}, {n = 1}
  a.self, b.self = a, b
  t:eq(a, b)
  b.n = 2
  t:eq(a, b)
end)
test.case("long", function(t)
  t:eq(("a"):rep(300) .. "X" .. ("b"):rep(100), ("a"):rep(300) .. "Y" .. ("b"):rep(100))
end)
test.case("many", function(t)
  local big = {}
  for i = 1, 25 do big[i] = i end
  t:eq(big, {})
end)
test.case("vm handles", function(t)
  local v = vm.create{name = "h1"}
  t:eq(vm.get("h1"), v)
  t:eq({vm.get("h1")}, {v})
  t:eq(vm.create{name = "h2"}, v)
end)
return test.run()
]]
  local a40, b40 = ("a"):rep(40), ("b"):rep(40)
  expect_run(r, ([[
TAP version 14
1..5
not ok 1 - deep
# plan.lua:2: values differ
# expected: {a = {b = {c = {...}}}}
# got: {a = {b = {c = {...}}}}
# at a.b.c.d: expected 2, got 1
not ok 2 - cycle
# plan.lua:8: values differ
# expected: {n = 2, self = <cycle>}
# got: {n = 1, self = <cycle>}
# at n: expected 2, got 1
not ok 3 - long
# plan.lua:11: values differ
# expected: ..."A40Y%s"...
# got: ..."A40X%s"...
# at byte 301 (lengths: expected 401, got 401)
not ok 4 - many
# plan.lua:16: values differ
# expected: {}
# got: {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, ... 5 more}
# at [1]: expected nil, got 1
not ok 5 - vm handles
# plan.lua:22: values differ
# expected: vm<h1: created>
# got: vm<h2: created>
# console log of VM h1: plasmavmc-test-artifacts/vm_handles-h1.console.log
# console log of VM h2: plasmavmc-test-artifacts/vm_handles-h2.console.log
0 passed, 5 failed
]]):gsub("A40", a40):format(b40, b40), 1)
end)

check("t:ok and t:fail messages; t:ok returns its value", function()
  local r = run [[
local test = require "plasma.test"
test.case("plain", function(t) t:ok(false) end)
test.case("message", function(t) t:ok(nil, "no console output") end)
test.case("get", function(t) t:ok(vm.get("missing")) end)
test.case("returns", function(t) t:eq(t:ok(vm.create{name = "r1"}).name, "r1") end)
test.case("fail", function(t) t:fail("gave up") end)
test.case("fail without message", function(t) t:fail() end)
return test.run()
]]
  expect_run(r, [[
TAP version 14
1..6
not ok 1 - plain
# plan.lua:2: expected a true value
# got: false
not ok 2 - message
# plan.lua:3: no console output
# got: nil
not ok 3 - get
# plan.lua:4: no such vm 'missing'
# got: nil
ok 4 - returns
not ok 5 - fail
# plan.lua:6: gave up
not ok 6 - fail without message
# plan.lua:7: failed
1 passed, 5 failed
]], 1)
end)

check("t:match: captures, mismatch, non-string, long text clipped, bad pattern", function()
  local r = run [[
local test = require "plasma.test"
test.case("captures", function(t)
  local v = vm.create{name = "m1"}
  v:start()
  t:match(v:wait_for_console("READY"), "READY")
  local a, b = t:match("inet 10.0.2.15/24", "inet ([%d.]+)/(%d+)")
  t:eq({a, b}, {"10.0.2.15", "24"})
  t:eq(t:match("hello", "l+"), "ll")
end)
test.case("mismatch", function(t) t:match("booting\nlogin: ", "READY") end)
test.case("message", function(t) t:match("x", "^y", "prompt shown") end)
test.case("not a string", function(t) t:match(nil, "READY") end)
test.case("long", function(t) t:match(("0123456789"):rep(30), "READY") end)
test.case("bad pattern", function(t) t:match("x", "[a") end)
return test.run()
]]
  local digits = ("0123456789"):rep(10)
  expect_run(r, ([[
TAP version 14
1..6
ok 1 - captures
not ok 2 - mismatch
# plan.lua:10: text does not match pattern
# text: "booting\nlogin: "
# pattern: "READY"
not ok 3 - message
# plan.lua:11: prompt shown
# text: "x"
# pattern: "^y"
not ok 4 - not a string
# plan.lua:12: expected a string to match, got nil
# text: nil
# pattern: "READY"
not ok 5 - long
# plan.lua:13: text does not match pattern
# text: "<DIGITS>" ... (100 bytes omitted) ... "<DIGITS>"
# pattern: "READY"
not ok 6 - bad pattern
# plan.lua:14: invalid pattern "[a": malformed pattern (missing ']')
1 passed, 5 failed
]]):gsub("<DIGITS>", digits), 1)
end)

check("t:raises: returns the error; fails when nothing is raised or the message differs", function()
  local r = run [[
local test = require "plasma.test"
test.case("returns", function(t)
  local err = t:raises(function() error("disk full") end, "disk")
  t:eq(err, "plan.lua:3: disk full")
  t:raises(function() vm.create{} end, "'name' is required")
  t:eq(t:raises(function() error({code = 7}) end), {code = 7})
end)
test.case("none raised", function(t) t:raises(function() return 1, "x" end) end)
test.case("none raised, no values", function(t) t:raises(function() end, "x") end)
test.case("other message", function(t) t:raises(function() error("boom", 0) end, "bang") end)
test.case("assertion inside", function(t)
  local err = t:raises(function() t:eq(1, 2) end, "values differ")
  t:match(err, "^plan.lua:12: values differ\n")
end)
test.case("not a function", function(t) t:raises(42) end)
return test.run()
]]
  expect_eq(r.code, 1, "exit status")
  local out = r.out:gsub("\n#   [^\n]*", "")  -- tracebacks: checked elsewhere
  expect_eq(out, [[
TAP version 14
1..6
ok 1 - returns
not ok 2 - none raised
# plan.lua:8: expected an error, but none was raised
# returned: 1, "x"
not ok 3 - none raised, no values
# plan.lua:9: expected an error, but none was raised
not ok 4 - other message
# plan.lua:10: error does not match pattern
# error: "boom"
# pattern: "bang"
ok 5 - assertion inside
not ok 6 - not a function
# plan.lua:15: t:raises: expected a function, got number
# stack traceback:
2 passed, 4 failed
]], "stdout")
end)

check("runtime errors fail the case with message and traceback, not the run", function()
  local r = run [[
local test = require "plasma.test"
local function helper(x)
  return x.field
end
test.case("index nil", function(t) helper(nil) end)
test.case("error object", function(t) error({code = 42}) end)
test.case("after a caught assertion", function(t)
  pcall(t.eq, t, 1, 2)
  error("real problem")
end)
test.case("still runs", function(t) end)
return test.run()
]]
  expect_eq(r.code, 1, "exit status")
  expect_eq(last_line(r.out), "1 passed, 3 failed", "summary")
  expect_has(r.out, [[
not ok 1 - index nil
# plan.lua:3: attempt to index a nil value (local 'x')
# stack traceback:
#   plan.lua:3: in ]])
  expect_has(r.out, "#   plan.lua:5: in function <plan.lua:5>\nnot ok 2 - error object\n")
  expect_has(r.out, "not ok 2 - error object\n# error object: {code = 42}\n# stack traceback:\n")
  expect_has(r.out, "not ok 3 - after a caught assertion\n# plan.lua:9: real problem\n# stack traceback:\n")
  expect_has(r.out, "ok 4 - still runs\n")
  -- The runner's own frames are left out of tracebacks.
  expect_lacks(r.out, "test.lua")
  expect_lacks(r.out, "xpcall")
  expect_lacks(r.out, "in function 'error'")
end)

check("VMs a case created are deleted, pass or fail; console logs saved on failure", function()
  local r = run [[
local test = require "plasma.test"
local create = vm.create
test.case("pass", function(t)
  vm.create{name = "p1"}:start()
  vm.create{name = "p2"}
end)
test.case("fail", function(t)
  local v = vm.create{name = "f1"}
  v:start()
  v:send_console("hello\n")
  t:eq(1, 2)
end)
test.case("crash", function(t)
  vm.create{name = "c1"}
  error("boom")
end)
test.case("deletes its VM", function(t)
  vm.create{name = "d1"}:delete()
  t:fail("after delete")
end)
test.case("same name twice", function(t)
  vm.create{name = "s1"}:delete()
  vm.create{name = "s1"}:start()
end)
test.case("parallel", function(t)
  vm.parallel(function() vm.create{name = "x1"} end, function() vm.create{name = "x2"} end)
end)
local ok = test.run()
print("deleted: " .. table.concat(vm._deleted, " "))
print("left: " .. #vm.list())
print("vm.create restored: " .. tostring(vm.create == create))
print("in a coroutine, as under plasmavmc: " .. tostring(coroutine.isyieldable()))
return ok
]]
  expect_eq(r.code, 1, "exit status")
  expect_has(r.out, [[
not ok 2 - fail
# plan.lua:11: values differ
# expected: 2
# got: 1
# console log of VM f1: plasmavmc-test-artifacts/fail-f1.console.log
not ok 3 - crash
# plan.lua:15: boom
# stack traceback:
#   plan.lua:15: in function <plan.lua:13>
# console log of VM c1: plasmavmc-test-artifacts/crash-c1.console.log
not ok 4 - deletes its VM
# plan.lua:19: after delete
ok 5 - same name twice
ok 6 - parallel
3 passed, 3 failed
deleted: p2 p1 f1 c1 d1 s1 s1 x2 x1
left: 0
vm.create restored: true
in a coroutine, as under plasmavmc: true
]])
  local dir = r.dir .. "/plasmavmc-test-artifacts/"
  expect_eq(read(dir .. "fail-f1.console.log"), "booting f1\nPLASMAVMC-GUEST-READY\nhello\n",
    "saved console log")
  expect_eq(read(dir .. "crash-c1.console.log"), "", "console log of a VM never started")
  local listing = io.popen("ls " .. q(dir)):read("a")
  expect_eq(listing, "crash-c1.console.log\nfail-f1.console.log\n", "artifacts")
end)

check("artifacts: no folder when nothing failed; option and env choose it; names sanitized", function()
  local r = run [[
local test = require "plasma.test"
test.case("ok", function(t) vm.create{name = "a1"} end)
return test.run()
]]
  expect_eq(r.code, 0, "exit status")
  expect(not exists(r.dir .. "/plasmavmc-test-artifacts"), "artifacts folder made for a pass")

  r = run([[
local test = require "plasma.test"
test.case("web: serves / (port 80)", function(t) vm.create{name = "w1"}; t:fail() end)
return test.run()
]], { env = { PLASMAVMC_TEST_ARTIFACTS = "out/logs dir" } })
  expect_has(r.out, "# console log of VM w1: out/logs dir/web_serves_port_80_-w1.console.log\n")
  expect(exists(r.dir .. "/out/logs dir/web_serves_port_80_-w1.console.log"), "file saved")

  r = run [[
local test = require "plasma.test"
test.case(".hidden", function(t) vm.create{name = "o1"}; t:fail() end)
return test.run{artifacts = "mine"}
]]
  expect_has(r.out, "# console log of VM o1: mine/_hidden-o1.console.log\n")
  expect(exists(r.dir .. "/mine/_hidden-o1.console.log"), "file saved")
end)

check("cleanup problems are reported, not fatal", function()
  local r = run [[
local test = require "plasma.test"
test.case("broken", function(t)
  vm.create{name = "b1"}
  vm.create{name = "b2"}:start()
  vm._broken.b1 = "console_log"
  vm._broken.b2 = "delete"
  t:fail("stop")
end)
test.case("next", function(t) end)
return test.run()
]]
  expect_eq(r.code, 1, "exit status")
  expect_eq(r.out, [[
TAP version 14
1..2
not ok 1 - broken
# plan.lua:7: stop
# could not read the console log of VM b1: vm.console_log: vm 'b1': log unreadable
# console log of VM b2: plasmavmc-test-artifacts/broken-b2.console.log
# could not delete VM b2: vm.delete: vm 'b2': device busy
ok 2 - next
1 passed, 1 failed
]], "stdout")
end)

check("vm.create errors point at the plan's line, not the runner", function()
  local r = run [[
local test = require "plasma.test"
test.case("bad spec", function(t)
  vm.create{name = "x", bogus = 1}
end)
test.case("duplicate", function(t)
  vm.create{name = "d"}
  local ok, err = pcall(vm.create, {name = "d"})
  t:eq(err, "vm.create: vm 'd' already exists")
  t:raises(function() vm.create{name = "d"} end, "^plan.lua:9: vm.create: vm 'd' already exists$")
end)
return test.run()
]]
  expect_has(r.out, "not ok 1 - bad spec\n# plan.lua:3: vm.create: unknown option 'bogus'\n")
  expect_has(r.out, "ok 2 - duplicate\n")
end)

check("skipping: skip option, t:skip, summary counts skipped", function()
  local r = run [[
local test = require "plasma.test"
test.case("no kvm", {skip = "needs /dev/kvm"}, function(t) error("not run") end)
test.case("no reason", {skip = true}, function(t) error("not run") end)
test.case("not skipped", {skip = false}, function(t) end)
test.case("at run time", function(t)
  vm.create{name = "k1"}
  t:skip("guest has no network")
end)
test.case("bare t:skip", function(t) t:skip() end)
local ok = test.run()
print("deleted: " .. table.concat(vm._deleted, " "))
return ok
]]
  expect_run(r, [[
TAP version 14
1..5
ok 1 - no kvm # SKIP needs /dev/kvm
ok 2 - no reason # SKIP
ok 3 - not skipped
ok 4 - at run time # SKIP guest has no network
ok 5 - bare t:skip # SKIP
1 passed, 0 failed, 4 skipped
deleted: k1
]], 0)
end)

check("registration errors: duplicate name, bad arguments, case inside a case", function()
  local function registration(line)
    return run("local test = require 'plasma.test'\n" .. line .. "\nreturn test.run()\n")
  end
  local r = registration('test.case("a", function() end)\ntest.case("a", function() end)')
  expect_eq(r.code, 1, "exit status")
  expect_eq(r.out, "", "stdout")
  expect_has(r.err, 'plan.lua:3: test.case: duplicate case name "a"')
  r = registration('test.case("a")')
  expect_has(r.err, 'plan.lua:2: test.case "a": expected a function, got nil')
  r = registration('test.case(nil, function() end)')
  expect_has(r.err, "plan.lua:2: test.case: name must be a non-empty string, got nil")
  r = registration('test.case("a", {retries = 2}, function() end)')
  expect_has(r.err, 'plan.lua:2: test.case "a": unknown option "retries"')
  r = registration('test.case("a", {timeout = "soon"}, function() end)')
  expect_has(r.err, 'plan.lua:2: test.case "a": timeout must be a number of seconds > 0')
  r = registration('test.case("outer", function(t) test.case("inner", function() end) end)')
  expect_eq(r.code, 1, "exit status")
  expect_has(r.out, 'not ok 1 - outer\n# plan.lua:2: test.case "inner": cannot register a case while a case runs\n')
end)

check("t:log prints diagnostics; t.name; TAP escapes # in names", function()
  local r = run [[
local test = require "plasma.test"
test.case("issue #12", function(t)
  t:log("booted", 3, {a = 1}, nil)
  t:log("two\nlines")
  t:eq(t.name, "issue #12")
end)
return test.run()
]]
  expect_run(r, [[
TAP version 14
1..1
# booted 3 {a = 1} nil
# two
# lines
ok 1 - issue \#12
1 passed, 0 failed
]], 0)
end)

check("filter: option and PLASMAVMC_TEST_FILTER; others are neither run nor counted", function()
  local plan = [[
local test = require "plasma.test"
test.case("boot: kernel", function(t) end)
test.case("boot: disk", function(t) t:fail() end)
test.case("network", function(t) error("must not run") end)
return test.run(...)
]]
  local r = run(plan:gsub("%(%.%.%.%)", '{filter = "^boot"}'), {})
  expect_eq(r.out, [[
TAP version 14
1..2
# filter "^boot" selects 2 of 3 cases
ok 1 - boot: kernel
not ok 2 - boot: disk
# plan.lua:3: failed
1 passed, 1 failed
]], "stdout with filter option")
  r = run(plan:gsub("%(%.%.%.%)", "()"), { env = { PLASMAVMC_TEST_FILTER = "kernel" } })
  expect_run(r, [[
TAP version 14
1..1
# filter "kernel" selects 1 of 3 cases
ok 1 - boot: kernel
1 passed, 0 failed
]], 0)
  r = run(plan:gsub("%(%.%.%.%)", "()"), { env = { PLASMAVMC_TEST_FILTER = "[" } })
  expect_eq(r.code, 1, "exit status for a bad filter")
  expect_has(r.err, 'test.run: invalid filter pattern "["')
end)

check("JUnit XML: well-formed, counts, failures, skips, escaping, option and env", function()
  local plan = [[
local test = require "plasma.test"
test.case("passes", function(t) t:log("note <1>") end)
test.case("odd <&\"'> text", function(t) t:fail("red\27[0m\255 & <b>") end)
test.case("crashes", function(t) local x; x.y = 1 end)
test.case("skipped", {skip = "why & how"}, function(t) end)
return test.run(...)
]]
  local r = run(plan:gsub("%(%.%.%.%)", '{junit = "report.xml"}'), {})
  expect_eq(r.code, 1, "exit status")
  expect_eq(last_line(r.out), "1 passed, 2 failed, 1 skipped", "summary")
  local summary = junit_summary(r.dir .. "/report.xml")
  expect_eq(summary, [[
testsuites tests=4 failures=2 skipped=1
 suite name=plan.lua tests=4 failures=2 skipped=1 time
  case name=passes classname=plan.lua time
    system-out ''  'note <1>'
  case name=odd <&"'> text classname=plan.lua time
    failure 'plan.lua:3: red\\27[0m\ufffd & <b>' assertion 'plan.lua:3: red\\27[0m\ufffd & <b>'
  case name=crashes classname=plan.lua time
    failure "plan.lua:4: attempt to index a nil value (local 'x')" error "plan.lua:4: attempt to index a nil value (local 'x')\nstack traceback:\n  plan.lua:4: in function <plan.lua:4>"
  case name=skipped classname=plan.lua time
    skipped 'why & how'  ''
]], "JUnit content")
  r = run(plan:gsub("%(%.%.%.%)", "()"), { env = { PLASMAVMC_JUNIT = "env.xml" } })
  junit_summary(r.dir .. "/env.xml")
  r = run(plan:gsub("%(%.%.%.%)", "()"), { env = { PLASMAVMC_JUNIT = "no/such/dir/x.xml" } })
  expect_eq(r.code, 1, "exit status when the report cannot be written")
  expect_has(r.err, "plasma.test: cannot write the JUnit report: no/such/dir/x.xml")
end)

check("case timeout: the case fails, the next one runs, no hook is left", function()
  local r = run [[
local test = require "plasma.test"
test.case("hangs", {timeout = 2}, function(t)
  while true do sleep(0.5) end
end)
test.case("quick", {timeout = 2}, function(t) sleep(1) end)
test.case("after", function(t) sleep(10) end)
local ok = test.run()
print("hook: " .. tostring(debug.gethook()))
return ok
]]
  expect_eq(r.code, 1, "exit status")
  expect_has(r.out, "not ok 1 - hangs\n# case timed out after 2s\n# stack traceback:\n")
  expect_has(r.out, "#   plan.lua:3: in function <plan.lua:2>\n")
  expect_has(r.out, "ok 2 - quick\nok 3 - after\n2 passed, 1 failed\nhook: nil\n")
end)

check("bare Lua: no vm global, os.time clock", function()
  local r = run([[
local test = require "plasma.test"
test.case("a", function(t) t:eq(vm, nil); t:eq(rawget(_G, "__plasma_now"), nil) end)
test.case("b", function(t) t:ok(false) end)
return test.run{junit = "j.xml"}
]], { no_vm = true })
  expect_run(r, [[
TAP version 14
1..2
ok 1 - a
not ok 2 - b
# plan.lua:3: expected a true value
# got: false
1 passed, 1 failed
]], 1)
  junit_summary(r.dir .. "/j.xml")
end)

check("module: require returns one registry; reset clears it; no globals added", function()
  local r = run [[
local before = {}
for k in pairs(_G) do before[k] = true end
local test = require "plasma.test"
test.case("a", function(t) end)
test.reset()
test.case("a", function(t) end)
assert(require("plasma.test") == test)
for k in pairs(_G) do assert(before[k], "new global " .. k) end
local ok = test.run()
for k in pairs(_G) do assert(before[k], "new global " .. k) end
return ok
]]
  expect_run(r, "TAP version 14\n1..1\nok 1 - a\n1 passed, 0 failed\n", 0)
end)

local TM_A = [[
local test = require "plasma.test"
test.case("boots", function(t)
  local v = vm.create{name = "a1"}
  v:start()
  t:match(v:wait_for_console("READY"), "READY")
end)
test.case("fails", function(t) vm.create{name = "a2"}; t:eq(1, 2) end)
return test.run()
]]
local TM_B = [[
local test = require "plasma.test"
test.case("boots", function(t)
]]
local TM_C = [[
local test = require "plasma.test"
test.case("boots", function(t) end)
test.case("fails", {skip = "later"}, function(t) end)
]]
local TM_D = [[
local test = require "plasma.test"
test.case("never runs", function(t) end)
local cfg = nil
print(cfg.kernel)
]]

check("testmain: several files, syntax and load errors as failures, one report", function()
  local files = {
    ["tests/a_test.lua"] = TM_A, ["tests/b_test.lua"] = TM_B, ["tests/c_test.lua"] = TM_C,
    ["tests/d_test.lua"] = TM_D,
  }
  local order = { "tests/a_test.lua", "tests/b_test.lua", "tests/c_test.lua",
    "tests/d_test.lua", "tests/e_test.lua" }
  local r = run_testmain(files, order, { PLASMAVMC_JUNIT = "all.xml" })
  expect_run(r, [[
TAP version 14
ok 1 - a_test.lua: boots
not ok 2 - a_test.lua: fails
# tests/a_test.lua:7: values differ
# expected: 2
# got: 1
# console log of VM a2: plasmavmc-test-artifacts/a_test.lua_fails-a2.console.log
not ok 3 - b_test.lua
# tests/b_test.lua:3: 'end' expected (to close 'function' at line 2) near <eof>
ok 4 - c_test.lua: boots
ok 5 - c_test.lua: fails # SKIP later
not ok 6 - d_test.lua
# tests/d_test.lua:4: attempt to index a nil value (local 'cfg')
# stack traceback:
#   tests/d_test.lua:4: in main chunk
not ok 7 - e_test.lua
# cannot open tests/e_test.lua: No such file or directory
1..7
2 passed, 4 failed, 1 skipped
]], 1)
  expect_eq(junit_summary(r.dir .. "/all.xml"):gsub("\n    [^\n]*", ""), [[
testsuites tests=7 failures=4 skipped=1
 suite name=a_test.lua tests=2 failures=1 skipped=0 time
  case name=boots classname=a_test.lua time
  case name=fails classname=a_test.lua time
 suite name=b_test.lua tests=1 failures=1 skipped=0 time
  case name=b_test.lua classname=b_test.lua time
 suite name=c_test.lua tests=2 failures=0 skipped=1 time
  case name=boots classname=c_test.lua time
  case name=fails classname=c_test.lua time
 suite name=d_test.lua tests=1 failures=1 skipped=0 time
  case name=d_test.lua classname=d_test.lua time
 suite name=e_test.lua tests=1 failures=1 skipped=0 time
  case name=e_test.lua classname=e_test.lua time
]], "JUnit suites")
end)

check("testmain: all passing exits 0; filter; same base names; files isolated", function()
  local files = {
    ["x/c_test.lua"] = [[
local test = require "plasma.test"
shared = (shared or 0) + 1
test.case("boots", function(t) t:eq(shared, 1) end)
test.case("fails", {skip = "later"}, function(t) end)
]],
    ["y/c_test.lua"] = [[
local test = require "plasma.test"
shared = (shared or 0) + 1
test.case("boots", function(t) t:eq(shared, 1) end)
test.case("sees its own arg", function(t) t:match(arg[0], "y/c_test.lua$") end)
return test.run{junit = "ignored.xml"}
]],
  }
  local r = run_testmain(files, { "x/c_test.lua", "y/c_test.lua" })
  expect_run(r, [[
TAP version 14
ok 1 - x/c_test.lua: boots
ok 2 - x/c_test.lua: fails # SKIP later
ok 3 - y/c_test.lua: boots
ok 4 - y/c_test.lua: sees its own arg
1..4
3 passed, 0 failed, 1 skipped
]], 0)
  expect(not exists(r.dir .. "/ignored.xml"), "a file's own test.run options are not used")
  r = run_testmain(files, { "x/c_test.lua", "y/c_test.lua" }, { PLASMAVMC_TEST_FILTER = "y/.*boots" })
  expect_run(r, [[
TAP version 14
# filter "y/.*boots"
ok 1 - y/c_test.lua: boots
1..1
1 passed, 0 failed
]], 0)
end)

check("testmain: no files is a usage error", function()
  local r = run_testmain({}, {})
  expect_eq(r.code, 1, "exit status")
  expect_eq(r.out, "", "stdout")
  expect_has(r.err, "usage: plasmavmc test PATH...")
end)

check("testmain: a shard says which it is; an empty shard passes with plan 0 and JUnit", function()
  local files = { ["t/a_test.lua"] = [[
local test = require "plasma.test"
test.case("boots", function(t) t:ok(true) end)
]] }
  local r = run_testmain(files, { "t/a_test.lua" }, { PLASMAVMC_TEST_SHARD = "1/2 1" })
  expect_run(r, [[
TAP version 14
# shard 1/2: 1 of 1 test files
ok 1 - a_test.lua: boots
1..1
1 passed, 0 failed
]], 0)
  r = run_testmain({}, {}, { PLASMAVMC_TEST_SHARD = "2/2 1", PLASMAVMC_JUNIT = "empty.xml" })
  expect_run(r, [[
TAP version 14
# shard 2/2: no test files (1 test files in 2 shards)
1..0
0 passed, 0 failed
]], 0)
  expect_eq(junit_summary(r.dir .. "/empty.xml"), "testsuites tests=0 failures=0 skipped=0\n",
    "JUnit of an empty shard")
  r = run_testmain({}, {}, { PLASMAVMC_TEST_SHARD = "2/x" })
  expect_eq(r.code, 1, "exit status")
  expect_has(r.err, 'PLASMAVMC_TEST_SHARD must be "K/N TOTAL", got "2/x"')
end)

check("stdlib and stubs load; stubs are a ---@meta file covering the API", function()
  for _, f in ipairs{ "stdlib/plasma/test.lua", "stdlib/plasma/testmain.lua",
    "stdlib/meta/plasmavmc.lua", "Tests/LuaRunnerTests/fake_vm.lua" } do
    local chunk, err = loadfile(ROOT .. "/" .. f)
    expect(chunk, err)
  end
  local meta = read(ROOT .. "/stdlib/meta/plasmavmc.lua")
  expect(meta:match("^%-%-%-@meta"), "first line is ---@meta")
  for _, name in ipairs{ "create", "start", "status", "stop", "kill", "pause", "resume", "delete",
    "info", "wait_for", "wait_for_console", "send_console", "console_log", "exec", "qmp" } do
    expect_has(meta, "function vm." .. name .. "(", "vm function stub")
  end
  for _, name in ipairs{ "start", "status", "stop", "kill", "pause", "resume", "delete", "info",
    "wait_for", "wait_for_console", "send_console", "console_log", "exec", "qmp" } do
    expect_has(meta, "function VM:" .. name .. "(", "VM method stub")
  end
  for _, s in ipairs{ "function vm.list(", "function vm.get(", "function vm.parallel(",
    "function sleep(", "function test.case(", "function test.run(", "function T:eq(",
    "function T:ok(", "function T:match(", "function T:raises(", "function T:log(" } do
    expect_has(meta, s, "stub")
  end
end)

---------------------------------------------------------------------------------------------

local filter = arg[1]
io.stdout:setvbuf("line")
local passed, failed, n = 0, 0, 0
for _, c in ipairs(checks) do
  if not filter or c.name:find(filter) then
    n = n + 1
    local ok, err = xpcall(c.fn, debug.traceback)
    if ok then
      passed = passed + 1
      print(("ok %d - %s"):format(n, c.name))
    else
      failed = failed + 1
      print(("not ok %d - %s"):format(n, c.name))
      for line in (tostring(err) .. "\n"):gmatch("(.-)\n") do print("# " .. line) end
    end
  end
end
if failed == 0 then os.execute("rm -rf " .. q(scratch)) else print("# scratch: " .. scratch) end
print(("%d passed, %d failed"):format(passed, failed))
os.exit(failed == 0 and 0 or 1)
