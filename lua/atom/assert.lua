-- atom.assert: atom.assert_eq (SPEC §2), a deep comparison that reports the first
-- differing key path, and the compact value renderer that failure messages use
-- (also atom.trace's model-state dumps). ITF value semantics live in atom.itf.
local errors = require("atom.errors")

local M = {}

local json_null
local function is_null(v)
  if json_null == nil then
    local ok, json = pcall(require, "atom.json")
    json_null = ok and json.null or false
  end
  return json_null ~= false and rawequal(v, json_null)
end

--{==================================================================
-- Rendering
--===================================================================

local function fmt_number(x)
  if math.type(x) == "integer" then return tostring(x) end
  if x ~= x then return "nan" end
  if x == math.huge then return "inf" end
  if x == -math.huge then return "-inf" end
  -- Enough digits to tell two different floats apart ("0.3" vs
  -- "0.30000000000000004"), and a ".0" so 1.0 does not read as the integer 1.
  local s = ("%.14g"):format(x)
  if tonumber(s) ~= x then s = ("%.17g"):format(x) end
  if not s:find("[%.eEn]") then s = s .. ".0" end
  return s
end

local function fmt_string(s)
  return '"' .. s:gsub('[%c"\\]', function(c)
    if c == "\n" then return "\\n" end
    if c == "\t" then return "\\t" end
    if c == "\r" then return "\\r" end
    if c == '"' or c == "\\" then return "\\" .. c end
    return ("\\%d"):format(c:byte())
  end) .. '"'
end

-- Total order on keys for deterministic output: numbers, strings, booleans, rest.
local rank = { number = 1, string = 2, boolean = 3 }
local function key_less(a, b)
  local ta, tb = type(a), type(b)
  local ra, rb = rank[ta] or 4, rank[tb] or 4
  if ra ~= rb then return ra < rb end
  if ra == 1 or ra == 2 then return a < b end
  if ra == 3 then return (not a) and b end
  return tostring(a) < tostring(b)
end
M.key_less = key_less

local function sorted_keys(...)
  local keys, seen = {}, {}
  for i = 1, select("#", ...) do
    local t = select(i, ...)
    for k in next, t do
      if not seen[k] then
        seen[k] = true
        keys[#keys + 1] = k
      end
    end
  end
  table.sort(keys, key_less)
  return keys
end

local function itf()
  local ok, mod = pcall(require, "atom.itf")
  return ok and mod or nil
end

local function has_tostring(v)
  local mt = debug.getmetatable(v)
  return type(mt) == "table" and rawget(mt, "__tostring") ~= nil
end

-- Writes v into buf, spending at most `left.n` characters; sets left.cut when
-- something was left out.
local function write(v, buf, left, seen, depth)
  if left.n <= 0 then
    left.cut = true
    return
  end
  local function put(s)
    if #s > left.n then
      buf[#buf + 1] = s:sub(1, math.max(left.n, 0))
      left.n = 0
      left.cut = true
    else
      buf[#buf + 1] = s
      left.n = left.n - #s
    end
  end
  local t = type(v)
  if t == "string" then return put(fmt_string(v)) end
  if t == "number" then return put(fmt_number(v)) end
  if t ~= "table" then
    if is_null(v) then return put("null") end
    return put(tostring(v))
  end
  local m = itf()
  if m and (m.is_set(v) or m.is_map(v)) then
    local is_set = m.is_set(v)
    put(is_set and "Set(" or "Map(")
    local first = true
    for a, b in v:iter() do
      if left.n <= 0 then left.cut = true; break end
      if not first then put(", ") end
      first = false
      write(a, buf, left, seen, depth + 1)
      if not is_set then
        put(" -> ")
        write(b, buf, left, seen, depth + 1)
      end
    end
    return put(")")
  end
  if has_tostring(v) then
    local ok, s = pcall(tostring, v)
    return put(ok and s or "<table>")
  end
  if seen[v] then return put("<cycle>") end
  if depth >= 6 then return put("{...}") end
  seen[v] = true
  put("{")
  local n = #v
  local first = true
  for i = 1, n do
    if left.n <= 0 then left.cut = true; break end
    if not first then put(", ") end
    first = false
    write(rawget(v, i), buf, left, seen, depth + 1)
  end
  for _, k in ipairs(sorted_keys(v)) do
    if not (math.type(k) == "integer" and k >= 1 and k <= n) then
      if left.n <= 0 then left.cut = true; break end
      if not first then put(", ") end
      first = false
      if type(k) == "string" and k:match("^[%a_][%w_]*$") then
        put(k)
      else
        put("[")
        write(k, buf, left, seen, depth + 1)
        put("]")
      end
      put(" = ")
      write(rawget(v, k), buf, left, seen, depth + 1)
    end
  end
  put("}")
  seen[v] = nil
end

--- A short, readable rendering of v: strings quoted, tables compact with sorted
--- keys, ITF sets and maps as Set(...) and Map(k -> v), json null as null.
---@param v any
---@param limit integer|nil at most about this many characters (default 200)
function M.render(v, limit)
  local left = { n = limit or 200 }
  local buf = {}
  write(v, buf, left, {}, 0)
  local s = table.concat(buf)
  if left.cut then s = s .. "..." end
  return s
end

--{==================================================================
-- Deep comparison
--===================================================================

local function key_path(path, k)
  if type(k) == "string" then
    if k:match("^[%a_][%w_]*$") then return path .. "." .. k end
    return path .. "[" .. fmt_string(k) .. "]"
  end
  if type(k) == "number" then return path .. "[" .. fmt_number(k) .. "]" end
  return path .. "[" .. M.render(k, 40) .. "]"
end

local function has_eq(v)
  local mt = debug.getmetatable(v)
  return type(mt) == "table" and rawget(mt, "__eq") ~= nil
end

-- For two ITF maps that differ, the first key (expected's order, then actual's
-- extra keys) whose values differ, to point the message at it.
local function map_detail(m, a, e, path)
  for k, ev in e:iter() do
    local av = a:get(k)
    if not m.equal(av, ev) then return path .. ":get(" .. M.render(k, 60) .. ")", av, ev end
  end
  for k, av in a:iter() do
    if not e:has(k) then return path .. ":get(" .. M.render(k, 60) .. ")", av, nil end
  end
  return path, a, e
end

-- Returns nil when equal, else the path of the first difference and the
-- actual and expected values there.
local function diff(a, e, path, seen)
  if rawequal(a, e) then return nil end
  local ta, te = type(a), type(e)
  if ta == "number" and te == "number" then
    if a == e then return nil end
    return path, a, e
  end
  if ta ~= "table" or te ~= "table" then
    if ta == te and a == e then return nil end
    return path, a, e
  end
  if has_eq(a) or has_eq(e) then
    if a == e then return nil end
    local m = itf()
    if m and m.is_map(a) and m.is_map(e) then return map_detail(m, a, e, path) end
    return path, a, e
  end
  -- Two plain tables: a pair already being compared further up is assumed
  -- equal (its other keys are checked there), which makes cycles terminate.
  local pairs_of_a = seen[a]
  if not pairs_of_a then
    pairs_of_a = {}
    seen[a] = pairs_of_a
  end
  if pairs_of_a[e] then return nil end
  pairs_of_a[e] = true
  for _, k in ipairs(sorted_keys(a, e)) do
    local p, av, ev = diff(rawget(a, k), rawget(e, k), key_path(path, k), seen)
    if p then return p, av, ev end
  end
  return nil
end

--- Deep equality as atom.assert_eq sees it (no error, just true or false).
function M.deep_equal(a, e)
  return diff(a, e, "", {}) == nil
end

--- atom.assert_eq(actual, expected [, message]) (SPEC §2): raise an `assert`
--- error naming the first differing key path and both values.
---@param actual any
---@param expected any
---@param message string|nil prefixed to the failure message
function M.assert_eq(...)
  local n = select("#", ...)
  local actual, expected, message = ...
  if n < 2 then errors.argerror(2, "assert_eq", "value expected") end
  errors.checktype(3, "assert_eq", message, "string", true)
  local path, av, ev = diff(actual, expected, "", {})
  if not path then return end
  local msg = ("expected %s, got %s"):format(M.render(ev), M.render(av))
  if path ~= "" then msg = "at " .. path .. ": " .. msg end
  if message then msg = message .. ": " .. msg end
  errors.raise("assert", msg, { path = path, actual = av, expected = ev })
end

return M
