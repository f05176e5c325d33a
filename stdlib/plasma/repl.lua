local repl = {}
local MAXDEPTH, MAXITEMS, WIDTH = 4, 100, 72

local function quote(s)
  return '"' .. s:gsub('[%c"\\]', function(c)
    local named = { ["\n"] = "\\n", ["\t"] = "\\t", ["\r"] = "\\r", ['"'] = '\\"', ["\\"] = "\\\\" }
    return named[c] or ("\\%03d"):format(c:byte())
  end) .. '"'
end

local KEYWORDS = {}
for w in ("and break do else elseif end false for function goto if in local nil not or repeat return then true until while"):gmatch("%a+") do
  KEYWORDS[w] = true
end

local function key_text(k)
  if type(k) == "string" and k:match("^[%a_][%w_]*$") and not KEYWORDS[k] then return k end
  if type(k) == "string" then return "[" .. quote(k) .. "]" end
  return "[" .. tostring(k) .. "]"
end

local function sorted_keys(t)
  local n = #t
  local keys = {}
  for k in pairs(t) do
    if not (math.type(k) == "integer" and k >= 1 and k <= n) then keys[#keys + 1] = k end
  end
  table.sort(keys, function(a, b)
    local ta, tb = type(a), type(b)
    if ta ~= tb then return ta < tb end
    if ta == "number" or ta == "string" then return a < b end
    return tostring(a) < tostring(b)
  end)
  return n, keys
end

local function render(v, depth, seen, indent)
  if type(v) == "string" then return quote(v) end
  if type(v) ~= "table" then return tostring(v) end
  if getmetatable(v) and getmetatable(v).__tostring then return tostring(v) end
  if seen[v] then return "<cycle>" end
  if depth >= MAXDEPTH then return "{...}" end
  seen[v] = true
  local n, keys = sorted_keys(v)
  local items, shown = {}, 0
  for i = 1, n do
    if shown >= MAXITEMS then break end
    items[#items + 1] = render(v[i], depth + 1, seen, indent .. "  ")
    shown = shown + 1
  end
  for _, k in ipairs(keys) do
    if shown >= MAXITEMS then break end
    items[#items + 1] = key_text(k) .. " = " .. render(v[k], depth + 1, seen, indent .. "  ")
    shown = shown + 1
  end
  local total = n + #keys
  if total > shown then items[#items + 1] = ("... (%d more)"):format(total - shown) end
  seen[v] = nil
  if #items == 0 then return "{}" end
  local one = "{ " .. table.concat(items, ", ") .. " }"
  if #one <= WIDTH and not one:find("\n") then return one end
  if not table.concat(items):find("\n") then
    -- Short items (a long list of numbers, say) fill lines instead of one per line.
    local lines, line = {}, ""
    for i, item in ipairs(items) do
      local piece = item .. (i < #items and "," or "")
      if #line > 0 and #indent + 2 + #line + 1 + #piece > WIDTH then
        lines[#lines + 1] = line
        line = piece
      else
        line = #line > 0 and (line .. " " .. piece) or piece
      end
    end
    lines[#lines + 1] = line
    return "{\n" .. indent .. "  " .. table.concat(lines, "\n" .. indent .. "  ") .. "\n" .. indent .. "}"
  end
  return "{\n" .. indent .. "  " .. table.concat(items, ",\n" .. indent .. "  ") .. "\n" .. indent .. "}"
end

function repl.render(v) return render(v, 0, {}, "") end

function repl.show(...)
  local n = select("#", ...)
  if n == 0 then return end
  local out = {}
  for i = 1, n do out[i] = render((select(i, ...)), 0, {}, "") end
  print(table.concat(out, "\t"))
end

-- f's results, printed.
function repl.wrap(f)
  return function() repl.show(f()) end
end

local function methods_of(v)
  if type(v) == "string" then return string end
  local mt = getmetatable(v)
  if mt and type(mt.__index) == "table" then return mt.__index end
  if mt and mt.__name == "plasmavmc.vm" then return vm end
  if type(v) == "table" then return v end
  return nil
end

-- Candidates for `word` (what precedes the cursor, e.g. "vm.cr" or "v:st"), full words, sorted.
function repl.complete(word)
  local path, sep, part = word:match("^(.-)([%.:])([%w_]*)$")
  local source, out, seen = nil, {}, {}
  if not path then
    part = word
    source = _G
    for k in pairs(KEYWORDS) do
      if k:sub(1, #part) == part then out[#out + 1] = k; seen[k] = true end
    end
  else
    local ok, value = pcall(function()
      local v = _G
      for name in path:gmatch("[^%.]+") do
        if type(v) ~= "table" then return nil end
        v = rawget(v, name)
      end
      return v
    end)
    if not ok or value == nil then return {} end
    if sep == ":" then
      source = methods_of(value)
    elseif type(value) == "table" then
      source = value
    elseif type(value) == "userdata" and getmetatable(value) and getmetatable(value).__name == "plasmavmc.vm" then
      source = { name = true, id = true }
      for k, f in pairs(vm) do
        if type(f) == "function" and k ~= "create" and k ~= "list" and k ~= "get" and k ~= "parallel"
          and k ~= "connect" then source[k] = f end
      end
    end
  end
  if type(source) ~= "table" then return {} end
  for k, v in pairs(source) do
    if type(k) == "string" and k:sub(1, #part) == part and not seen[k] and not k:match("^__") then
      if sep ~= ":" or type(v) == "function" then
        out[#out + 1] = (path and (path .. sep) or "") .. k
        seen[k] = true
      end
    end
  end
  table.sort(out)
  return out
end

-- help() lists the API from its one definition (Swift's VMAPI, given as __plasma_api).
local API = __plasma_api
__plasma_api = nil

function help()
  local out = {
    "plasmavmc repl: Lua 5.4 with the vm API. Expressions print their values; Tab completes;",
    "Ctrl-C stops a running call; Ctrl-D leaves (VMs stay unless created with ephemeral=true).",
    "Methods are called as v:name(...), vm.name(v, ...) or vm.name(\"vm name\", ...).",
    "",
  }
  local width = 0
  for _, op in ipairs(API) do width = math.max(width, #op.signature) end
  width = math.min(width, 44)
  for _, op in ipairs(API) do
    local sig = op.signature
    if #sig > width then
      out[#out + 1] = "  " .. sig
      out[#out + 1] = "  " .. (" "):rep(width) .. "  " .. op.summary
    else
      out[#out + 1] = "  " .. sig .. (" "):rep(width - #sig) .. "  " .. op.summary
    end
  end
  out[#out + 1] = ""
  out[#out + 1] = "Numbers: NaN, negative and huge values are errors; a wait's timeout = math.huge waits without limit."
  out[#out + 1] = "Full reference: stdlib/meta/plasmavmc.lua"
  print(table.concat(out, "\n"))
end

__repl = repl
