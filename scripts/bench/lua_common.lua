-- Shared by the lua_*.lua benchmark plans (scripts/bench/lua.sh): a tiny JSON encoder and
-- the one way results leave a plan: a stdout line "LUABENCH <json>" (print flushes stdout).
local M = {}

local function encode(v)
  local t = type(v)
  if t == "nil" then return "null" end
  if t == "boolean" then return tostring(v) end
  if t == "number" then
    if v ~= v or v == math.huge or v == -math.huge then return "null" end
    if math.type(v) == "integer" then return tostring(v) end
    return string.format("%.17g", v)
  end
  if t == "string" then
    return '"' .. v:gsub('[%c"\\]', function(c) return string.format("\\u%04x", c:byte()) end) .. '"'
  end
  if t == "table" then
    local out = {}
    if #v > 0 or next(v) == nil then
      for i = 1, #v do out[i] = encode(v[i]) end
      return "[" .. table.concat(out, ",") .. "]"
    end
    for k, x in pairs(v) do out[#out + 1] = encode(tostring(k)) .. ":" .. encode(x) end
    table.sort(out)
    return "{" .. table.concat(out, ",") .. "}"
  end
  error("cannot encode a " .. t)
end
M.encode = encode

--- Emits one result record for the driver (scripts/bench/lua_bench.py).
function M.emit(kind, data)
  data.kind = kind
  print("LUABENCH " .. encode(data))
end

--- Tells the driver which phase the plan is in (it samples this process's memory by phase).
function M.phase(name)
  print("LUABENCH-PHASE " .. name)
end

function M.median(xs)
  local s = {}
  for i = 1, #xs do s[i] = xs[i] end
  table.sort(s)
  local n = #s
  if n == 0 then return 0 / 0 end
  if n % 2 == 1 then return s[(n + 1) // 2] end
  return (s[n // 2] + s[n // 2 + 1]) / 2
end

function M.int_arg(i, default)
  local v = arg[i]
  if v == nil or v == "" then return default end
  local n = math.tointeger(tonumber(v))
  if not n then error(("argument %d must be an integer, got %q"):format(i, v)) end
  return n
end

return M
