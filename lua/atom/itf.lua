-- atom.itf: decode ITF traces (Apalache's Informal Trace Format, ADR-015; SPEC §6)
-- into Lua values: read-only sets and maps that compare by value, integers from
-- #bigint, lists from #tup. JSON parsing is atom.json's job; replaying traces
-- through a reactor is atom.trace's.
-- Written on the public `atom` API only (docs/API.md "Writing a library").
local atom = require("atom")

local function raise(kind, message, fields) error(atom.error(kind, message, fields), 0) end

-- Lua-style argument errors: "bad argument #1 to 'decode' (string expected, got nil)".
local function checktype(n, fname, v, want)
  if type(v) ~= want then
    raise("usage", ("bad argument #%d to '%s' (%s expected, got %s)"):format(n, fname, want,
      v == nil and "no value" or type(v)))
  end
end

local M = {}

local json_null -- atom.json.null, fetched with atom.json on first decode

local function null()
  if json_null == nil then json_null = atom.json.null end
  return json_null
end

--{==================================================================
-- Canonical keys: one string per value, equal exactly when the values are
-- equal by value (SPEC §6), so sets and maps can index their members.
--===================================================================

local set_mt, map_mt = {}, {}
-- Private state of sets and maps, keyed by the (empty, read-only) object:
-- { items = {...}, values = {...} (maps), index = {[canon] = position}, n = count }
local data = setmetatable({}, { __mode = "k" })

local function num_key(x)
  if math.type(x) == "integer" then return "i" .. x end
  local i = math.tointeger(x)
  if i then return "i" .. i end -- 1.0 and 1 are the same key; so are -0.0 and 0
  if x ~= x then return "fnan" end
  return ("f%.17g"):format(x)
end

local canon

-- Sorted keys of a plain table with their canonical strings.
local function sorted_entries(t, seen)
  local entries = {}
  for k, v in next, t do
    entries[#entries + 1] = { canon(k, seen), v }
  end
  table.sort(entries, function(a, b) return a[1] < b[1] end)
  return entries
end

-- The canonical string of v. `seen` guards against cyclic probe tables (values
-- decoded from ITF are never cyclic, but has/get accept any Lua value).
canon = function(v, seen)
  local t = type(v)
  if t == "number" then return num_key(v) end
  if t == "string" then return "s" .. #v .. ":" .. v end
  if t == "boolean" then return v and "T" or "F" end
  if t == "table" then
    local mt = getmetatable(v)
    if mt == set_mt or mt == map_mt then
      local d = data[v]
      if d.canon then return d.canon end
      local parts = {}
      for key in pairs(d.index) do parts[#parts + 1] = key end
      if mt == set_mt then
        table.sort(parts)
        d.canon = "S{" .. table.concat(parts, ",") .. "}"
      else
        table.sort(parts)
        for j, key in ipairs(parts) do parts[j] = key .. "=" .. canon(d.values[d.index[key]]) end
        d.canon = "M{" .. table.concat(parts, ",") .. "}"
      end
      return d.canon
    end
    seen = seen or {}
    if seen[v] then raise("usage", "cannot compare a cyclic table by value") end
    seen[v] = true
    local parts = {}
    for _, e in ipairs(sorted_entries(v, seen)) do
      parts[#parts + 1] = e[1] .. "=" .. canon(e[2], seen)
    end
    seen[v] = nil
    return "{" .. table.concat(parts, ",") .. "}"
  end
  if v == nil then return "nil" end
  if v == null() then return "N" end
  return ("u%p"):format(v) -- functions, other userdata: by identity
end

--- True when a and b are equal by value (SPEC §6): records and lists
--- structurally, sets and maps as sets and maps, integers equal to floats of the
--- same value. This is what `==` between two sets or maps, s:has and m:get use.
function M.equal(a, b)
  if rawequal(a, b) then return true end
  local ta, tb = type(a), type(b)
  if ta ~= tb then return false end
  if ta == "number" then return a == b end
  if ta ~= "table" then return a == b end
  local ma, mb = getmetatable(a), getmetatable(b)
  local sa = ma == set_mt or ma == map_mt
  local sb = mb == set_mt or mb == map_mt
  if sa or sb then
    if ma ~= mb then return false end
    local da, db = data[a], data[b]
    if da.n ~= db.n then return false end
    for key, i in pairs(da.index) do
      local j = db.index[key]
      if not j then return false end
      if ma == map_mt and not M.equal(da.values[i], db.values[j]) then return false end
    end
    return true
  end
  return canon(a) == canon(b)
end

--{==================================================================
-- Sets and maps
--===================================================================

local function readonly(self)
  raise("usage", ("%s is read-only"):format(getmetatable(self) == set_mt and "an ITF set" or "an ITF map"))
end

local function render(v, budget)
  return atom.repr(v, budget)
end

local set_methods = {}

--- True when v is a member (compared by value).
function set_methods:has(v)
  return data[self].index[canon(v)] ~= nil
end

--- Number of members.
function set_methods:size() return data[self].n end

--- Iterator over members in document order: `for v in s:iter() do`.
function set_methods:iter()
  local items, i = data[self].items, 0
  return function()
    i = i + 1
    return items[i]
  end
end

--- A plain list of the members in document order (a fresh table).
function set_methods:list()
  return table.move(data[self].items, 1, data[self].n, 1, {})
end

set_mt.__name = "atom.itf.set"
set_mt.__index = set_methods
set_mt.__newindex = readonly
set_mt.__len = function(self) return data[self].n end
set_mt.__eq = M.equal
-- pairs(s) gives member, true (the usual Lua set idiom), so `for v in pairs(s)`
-- walks the members in document order like s:iter().
set_mt.__pairs = function(self)
  local d, i = data[self], 0
  return function()
    i = i + 1
    if i <= d.n then return d.items[i], true end
  end, self, nil
end
set_mt.__tostring = function(self) return render(self) end

local map_methods = {}

--- The value at key k (compared by value), or nil.
function map_methods:get(k)
  local d = data[self]
  local i = d.index[canon(k)]
  if i then return d.values[i] end
  return nil
end

--- True when k is a key.
function map_methods:has(k)
  return data[self].index[canon(k)] ~= nil
end

--- Number of entries.
function map_methods:size() return data[self].n end

--- Iterator over entries in document order: `for k, v in m:iter() do`.
function map_methods:iter()
  local d, i = data[self], 0
  return function()
    i = i + 1
    if i <= d.n then return d.items[i], d.values[i] end
  end
end

map_mt.__name = "atom.itf.map"
map_mt.__index = map_methods
map_mt.__newindex = readonly
map_mt.__len = function(self) return data[self].n end
map_mt.__eq = M.equal
map_mt.__pairs = function(self)
  local d, i = data[self], 0
  return function()
    i = i + 1
    if i <= d.n then return d.items[i], d.values[i] end
  end, self, nil
end
map_mt.__tostring = function(self) return render(self) end

local function new_set(items, index, n)
  local s = setmetatable({}, set_mt)
  data[s] = { items = items, index = index, n = n }
  return s
end

local function new_map(keys, values, index, n)
  local m = setmetatable({}, map_mt)
  data[m] = { items = keys, values = values, index = index, n = n }
  return m
end

--- A read-only ITF set of the given members (duplicates by value dropped).
---@param list table members in order
function M.set(list)
  checktype(1, "set", list, "table")
  local items, index, n = {}, {}, 0
  for _, v in ipairs(list) do
    local key = canon(v)
    if not index[key] then
      n = n + 1
      items[n], index[key] = v, n
    end
  end
  return new_set(items, index, n)
end

--- A read-only ITF map of {key, value} pairs (a later duplicate key wins).
---@param pairs_list table list of {k, v}
function M.map(pairs_list)
  checktype(1, "map", pairs_list, "table")
  local keys, values, index, n = {}, {}, {}, 0
  for _, kv in ipairs(pairs_list) do
    local key = canon(kv[1])
    local i = index[key]
    if not i then
      n = n + 1
      i = n
      index[key] = i
    end
    keys[i], values[i] = kv[1], kv[2]
  end
  return new_map(keys, values, index, n)
end

function M.is_set(v) return type(v) == "table" and getmetatable(v) == set_mt end
function M.is_map(v) return type(v) == "table" and getmetatable(v) == map_mt end

--{==================================================================
-- Decoding
--===================================================================

local function fail(where, msg)
  raise("itf", (where ~= "" and where .. ": " or "") .. msg, { location = where })
end

-- The JSON decoder gives objects and arrays both as tables: an array is a table
-- whose keys are exactly 1..n (an empty table passes as both).
local function is_array(t)
  if type(t) ~= "table" then return false end
  local n = 0
  for k in next, t do
    if math.type(k) ~= "integer" or k < 1 then return false end
    n = n + 1
  end
  for i = 1, n do
    if rawget(t, i) == nil then return false end
  end
  return true
end

local function is_object(t)
  if type(t) ~= "table" or t == null() then return false end
  for k in next, t do
    if type(k) ~= "string" then return false end
  end
  return true
end

-- Object keys in order, so the first error reported does not depend on hashing.
local function sorted_keys(t)
  local keys = {}
  for k in next, t do keys[#keys + 1] = k end
  table.sort(keys)
  return keys
end

local function field_path(where, name)
  if name:match("^[%a_][%w_:]*$") then
    return where == "" and name or where .. "." .. name
  end
  return ("%s[%q]"):format(where, name)
end

local function describe(v)
  if v == null() then return "null" end
  if type(v) == "table" then return is_array(v) and "an array" or "an object" end
  return "a " .. type(v)
end

local INT64_MAX = "9223372036854775807"
local INT64_MIN = "9223372036854775808" -- its magnitude

--- A #bigint string as a Lua integer when it fits in 64 bits, else as its
--- normalized decimal string ("-0012" → -12; leading zeros dropped).
local function bigint(s, where)
  if type(s) ~= "string" then fail(where, "#bigint must be a string, got " .. describe(s)) end
  local sign, digits = s:match("^(%-?)(%d+)$")
  if not digits then fail(where, ("#bigint %q is not a decimal integer"):format(s)) end
  digits = digits:gsub("^0+", "")
  if digits == "" then return 0 end
  local limit = sign == "-" and INT64_MIN or INT64_MAX
  if #digits < #limit or (#digits == #limit and digits <= limit) then
    if sign == "-" and digits == INT64_MIN then return math.mininteger end
    local v = math.tointeger(tonumber(digits))
    return sign == "-" and -v or v
  end
  return sign .. digits
end

local value

local function list_of(raw, where, what)
  if not is_array(raw) then fail(where, what .. " must be an array, got " .. describe(raw)) end
  return raw
end

local function decode_set(raw, where)
  list_of(raw, where, "#set")
  local items, index, n = {}, {}, 0
  for i = 1, #raw do
    local at = where .. "[" .. i .. "]"
    local v = value(raw[i], at)
    local key = canon(v)
    if index[key] then fail(at, "duplicate set member " .. render(v, 60)) end
    n = n + 1
    items[n], index[key] = v, n
  end
  return new_set(items, index, n)
end

local function decode_map(raw, where)
  list_of(raw, where, "#map")
  local keys, values, index, n = {}, {}, {}, 0
  for i = 1, #raw do
    local at = where .. "[" .. i .. "]"
    local entry = raw[i]
    if not is_array(entry) or #entry ~= 2 then
      fail(at, "#map entry must be a [key, value] pair, got " .. describe(entry)
        .. (is_array(entry) and (" of " .. #entry) or ""))
    end
    local k = value(entry[1], at .. "[1]")
    local v = value(entry[2], at .. "[2]")
    local key = canon(k)
    if index[key] then fail(at, "duplicate map key " .. render(k, 60)) end
    n = n + 1
    keys[n], values[n], index[key] = k, v, n
  end
  return new_map(keys, values, index, n)
end

local encodings = {
  ["#bigint"] = function(raw, where) return bigint(raw, where) end,
  ["#set"] = decode_set,
  ["#map"] = decode_map,
  ["#tup"] = function(raw, where)
    list_of(raw, where, "#tup")
    local out = {}
    for i = 1, #raw do out[i] = value(raw[i], where .. "[" .. i .. "]") end
    return out
  end,
  ["#unserializable"] = function(raw, where)
    if type(raw) ~= "string" then fail(where, "#unserializable must be a string, got " .. describe(raw)) end
    return raw
  end,
}

-- Decode one ITF value found at `where` (a path like states[3].balances).
value = function(raw, where)
  local t = type(raw)
  if t ~= "table" then
    if t == "number" or t == "string" or t == "boolean" then return raw end
    if raw == null() then fail(where, "null is not an ITF value") end
    fail(where, "unexpected " .. t)
  end
  if is_array(raw) and next(raw) ~= nil then
    local out = {}
    for i = 1, #raw do out[i] = value(raw[i], where .. "[" .. i .. "]") end
    return out
  end
  if not is_object(raw) then fail(where, "object has non-string keys") end
  -- An object with a "#" key is an encoding, and then it must be alone.
  local tag
  for k in next, raw do
    if k:sub(1, 1) == "#" then
      if tag or not encodings[k] then
        fail(where, encodings[k] and "more than one #-encoding in one object"
          or ("unknown encoding %q"):format(k))
      end
      tag = k
    end
  end
  if tag then
    if next(raw, next(raw)) ~= nil then
      fail(where, tag .. " object must have no other fields")
    end
    return encodings[tag](raw[tag], where .. "." .. tag)
  end
  local out = {}
  for _, k in ipairs(sorted_keys(raw)) do out[k] = value(raw[k], field_path(where, k)) end
  return out
end

local function plain(raw) -- #meta content: JSON as decoded, in a fresh table
  if type(raw) ~= "table" then return raw end
  local out = {}
  for k, v in next, raw do out[k] = plain(v) end
  return out
end

local function string_list(raw, where)
  if not is_array(raw) then fail(where, "must be a list of strings, got " .. describe(raw)) end
  local out = {}
  for i = 1, #raw do
    if type(raw[i]) ~= "string" then
      fail(where .. "[" .. i .. "]", "must be a string, got " .. describe(raw[i]))
    end
    out[i] = raw[i]
  end
  return out
end

local function decode_state(raw, i)
  local where = "states[" .. i .. "]"
  if not is_object(raw) then fail(where, "a state must be an object, got " .. describe(raw)) end
  local state = {}
  local meta = raw["#meta"]
  if meta ~= nil and not is_object(meta) then
    fail(where .. ".#meta", "must be an object, got " .. describe(meta))
  end
  for _, k in ipairs(sorted_keys(raw)) do
    local v = raw[k]
    if k == "meta" then
      fail(where, 'a model variable named "meta" clashes with state.meta (the state\'s #meta)')
    elseif k ~= "#meta" then
      if k:sub(1, 1) == "#" then fail(where, ("unknown field %q"):format(k)) end
      state[k] = value(v, field_path(where, k))
    end
  end
  state.meta = plain(meta) or {}
  return state
end

--- Decode an ITF trace from a JSON string (SPEC §6).
---@param str string the document
---@return table trace {meta, vars, params, loop, states}
function M.decode(str)
  checktype(1, "decode", str, "string")
  local ok, doc = pcall(atom.json.decode, str)
  if not ok then
    local msg = atom.is_error(doc) and doc.message or tostring(doc)
    raise("itf", "invalid JSON: " .. msg, { cause = doc })
  end
  if not is_object(doc) then
    fail("", "a trace must be a JSON object, got " .. describe(doc))
  end
  local trace = {}
  for k in next, doc do
    if k ~= "#meta" and k ~= "vars" and k ~= "params" and k ~= "loop" and k ~= "states" then
      if k:sub(1, 1) == "#" then fail("", ("unknown field %q"):format(k)) end
      -- Other top-level fields are tolerated (ADR-015 allows extensions).
    end
  end
  local meta = doc["#meta"]
  if meta ~= nil and not is_object(meta) then
    fail("#meta", "must be an object, got " .. describe(meta))
  end
  trace.meta = plain(meta) or {}
  if doc.vars == nil then fail("", 'missing "vars"') end
  trace.vars = string_list(doc.vars, "vars")
  for i, name in ipairs(trace.vars) do
    if name == "meta" then
      fail("vars[" .. i .. "]", 'a model variable named "meta" clashes with state.meta (the state\'s #meta)')
    end
  end
  if doc.params ~= nil then trace.params = string_list(doc.params, "params") end
  if doc.loop ~= nil then
    if math.type(doc.loop) ~= "integer" or doc.loop < 0 then
      fail("loop", "must be a non-negative integer, got " .. (type(doc.loop) == "number"
        and tostring(doc.loop) or describe(doc.loop)))
    end
    trace.loop = doc.loop
  end
  if doc.states == nil then fail("", 'missing "states"') end
  if not is_array(doc.states) then fail("states", "must be an array, got " .. describe(doc.states)) end
  local states = {}
  for i = 1, #doc.states do states[i] = decode_state(doc.states[i], i) end
  trace.states = states
  return trace
end

--- Read and decode an ITF trace file. Errors (kind `itf`) start with the path.
---@param path string
function M.load(path)
  checktype(1, "load", path, "string")
  local f, err = io.open(path, "rb")
  if not f then raise("itf", "cannot read trace " .. err, { trace_file = path }) end
  local text, rerr = f:read("a")
  f:close()
  if not text then
    raise("itf", "cannot read trace " .. path .. ": " .. tostring(rerr), { trace_file = path })
  end
  local ok, trace = pcall(M.decode, text)
  if not ok then
    if atom.is_error(trace, "itf") then
      trace.message = path .. ": " .. trace.message
      trace.trace_file = path
    end
    error(trace, 0)
  end
  return trace
end

return M
