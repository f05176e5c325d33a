-- testmain: the plan behind `plasmavmc test PATH...`. `arg` holds the test files (the host
-- expands folders to their *_test.lua files). Each file runs in turn with a fresh case registry;
-- its cases run where it calls test.run() (or after it returns, if it never does), numbered on
-- from the previous file and shown as "<file>: <case>". One report covers every file: TAP
-- version 14 whose plan line comes after the test points, then "N passed, N failed" as the last
-- line; JUnit (PLASMAVMC_JUNIT) gets one test suite per file. A file that does not load, or
-- raises outside its cases, counts as one failed test named after the file.
--
-- With `--shard K/N` the host passes only that shard's files and sets PLASMAVMC_TEST_SHARD to
-- "K/N TOTAL" (TOTAL: the files of all shards); the report then says which shard it is, and a
-- shard without files is an empty, passing run (plan 1..0), not a usage error.
--
-- Returns true when nothing failed, so the host exits 0; else false (exit status 1).

local test = require "plasma.test"

local files = {}
for i = 1, #arg do files[i] = arg[i] end

local shard, shard_count, total
do
  local s = os.getenv("PLASMAVMC_TEST_SHARD")
  if s and s ~= "" then
    shard, shard_count, total = s:match("^(%d+/(%d+)) (%d+)$")
    if not shard then
      io.stderr:write(("testmain: PLASMAVMC_TEST_SHARD must be \"K/N TOTAL\", got %q\n"):format(s))
      return false
    end
  end
end

if #files == 0 and not shard then
  io.stderr:write("usage: plasmavmc test PATH...\n",
    "  runs the test cases of each file (a folder stands for its *_test.lua files)\n")
  return false
end

-- Files are shown by their base name, or by the path given when two share a base name.
local function display_names(paths)
  local count, names = {}, {}
  for _, p in ipairs(paths) do
    local base = p:match("[^/]*$")
    count[base] = (count[base] or 0) + 1
  end
  for i, p in ipairs(paths) do
    local base = p:match("[^/]*$")
    names[i] = count[base] > 1 and p:gsub("^%./", "") or base
  end
  return names
end

-- An error raised by a file outside its cases, with the traceback down to the file's chunk.
local function file_error(err)
  local lines = {}
  for line in debug.traceback(tostring(err), 2):gmatch("[^\n]+") do
    if line:find("in function 'xpcall'", 1, true) then break end
    lines[#lines + 1] = (line:gsub("^\t", "  "))
  end
  return table.concat(lines, "\n")
end

local runner = test._runner()
runner:start()
if shard and #files == 0 then
  io.stdout:write(("# shard %s: no test files (%s test files in %s shards)\n"):format(
    shard, total, shard_count))
elseif shard then
  io.stdout:write(("# shard %s: %d of %s test files\n"):format(shard, #files, total))
end
if runner.filter then io.stdout:write(("# filter %q\n"):format(runner.filter)) end

for i, path in ipairs(display_names(files)) do
  local file, prefix = files[i], path .. ": "
  runner:suite(path)
  test.reset()
  -- The file sees plasma.test with `run` replaced: the report is testmain's, not the file's.
  local ran = false
  local proxy = setmetatable({
    run = function()
      ran = true
      return runner:run_pending(prefix)
    end,
  }, { __index = test })
  local env = setmetatable({
    arg = { [0] = file },
    require = function(name)
      if name == "plasma.test" then return proxy end
      return require(name)
    end,
  }, { __index = _G })
  local chunk, err = loadfile(file, "t", env)
  if not chunk then
    runner:failure(path, err)
  else
    local ok, msg = xpcall(chunk, file_error)
    if not ok then
      runner:failure(path, msg)
    elseif not ran then
      runner:run_pending(prefix)  -- a file need not end with `return test.run()`
    end
  end
end

test.reset()
return runner:finish()
