-- atom.trace: the replay engine behind `atomlua trace --reactor R.lua TRACE...`
-- (SPEC §6). It finds and decodes the traces, validates the reactor table, and
-- replays each trace as one atom.test. The CLI owns argument parsing, loading
-- the reactor file, exit statuses and reporting; atom.itf owns decoding.
--
-- Reading the action name and the variables. Quint (`quint run --mbt`) records
-- the action in the variable "mbt::actionTaken" and the initial action as "init";
-- the default `action` path reads exactly that. Apalache traces have no such
-- variable: specs keep their own, e.g. a record `action` with a `tag` field, and
-- the reactor says `action = "action.tag"` (a dot-separated key path; a segment
-- is looked up in records and, for ITF maps, with m:get). Name the initial step
-- after what the trace writes ("init" for Quint, whatever the spec puts in its
-- Init for Apalache). A reactor may also give `action = function(state) ... end`
-- returning the name, to accept traces from both tools (an extension of §6).
-- Quint qualifies the variables of an instantiated module (`import bank(..).*`
-- in bank3 writes `bank3::bank::balances`): read them by that name, or
-- normalise once in setup (ctx.trace is yours). docs/traces.md has the rest.
-- A library on the public `atom` API only, as a user's own module would be.
local atom = require("atom")

local function raise(kind, message, fields) error(atom.error(kind, message, fields), 0) end

local M = {}

M.DEFAULT_ACTION = "mbt::actionTaken"

--{==================================================================
-- Finding and decoding traces
--===================================================================

local SUFFIX = ".itf.json"

local function walk(uv, dir, out, visited)
  local real = uv.fs_realpath(dir)
  if real then
    if visited[real] then return end -- a symlink loop
    visited[real] = true
  end
  local req, err = uv.fs_scandir(dir)
  if not req then
    local why = tostring(err):match("^%u+: ([^:]+)") or tostring(err)
    raise("itf", ("cannot read directory %s: %s"):format(dir, why))
  end
  while true do
    local name, kind = uv.fs_scandir_next(req)
    if not name then break end
    local path = dir .. "/" .. name
    if kind == "link" or kind == "unknown" or kind == nil then
      local st = uv.fs_stat(path)
      kind = st and st.type or "missing"
    end
    if kind == "directory" then
      walk(uv, path, out, visited)
    elseif kind == "file" and name:sub(-#SUFFIX) == SUFFIX then
      out[#out + 1] = path
    end
  end
end

--- The trace files named by the TRACE arguments: a file as given, a directory
--- searched recursively for *.itf.json, each directory's files sorted by path
--- (a directory holding none raises `itf`: exit 2 before anything runs).
--- Returns the list and, in parallel, the argument each file came from.
---@param paths string[] the TRACE arguments, in order
---@return string[] files, string[] from
function M.collect(paths)
  if type(paths) ~= "table" then
    raise("usage", "bad argument #1 to 'collect' (table expected, got " .. type(paths) .. ")")
  end
  local uv = require("luv")
  local files, from = {}, {}
  for _, arg in ipairs(paths) do
    local st, err = uv.fs_stat(arg)
    if not st then
      -- luv says "ENOENT: no such file or directory: <path>"
      local why = tostring(err):match("^%u+: ([^:]+)") or tostring(err)
      raise("itf", ("cannot read trace %s: %s"):format(arg, why), { trace_file = arg })
    end
    if st.type == "directory" then
      local found = {}
      walk(uv, (arg:gsub("(.)/+$", "%1")), found, {})
      table.sort(found)
      if #found == 0 then
        raise("itf", ("no trace (*%s) in directory %s"):format(SUFFIX, arg), { trace_file = arg })
      end
      for _, f in ipairs(found) do
        files[#files + 1], from[#from + 1] = f, arg
      end
    else
      files[#files + 1], from[#from + 1] = arg, arg
    end
  end
  return files, from
end

--- Decode every trace before anything runs. Raises the first `itf` error, whose
--- message starts with the file's path.
---@param paths string[]
---@return table[] list of {path =, trace =}
function M.decode_all(paths)
  local itf = atom.itf
  local out = {}
  for i, path in ipairs(paths) do
    out[i] = { path = path, trace = itf.load(path) }
  end
  return out
end

--{==================================================================
-- The reactor
--===================================================================

local function sorted_steps(steps)
  local names = {}
  for k in pairs(steps) do names[#names + 1] = tostring(k) end
  table.sort(names)
  return names
end

--- Check what a reactor file returned (SPEC §6); raises `usage` with a message
--- naming the file when it is not a table with a `steps` table of functions.
---@param r any the reactor file's result
---@param path string the reactor file, for messages
function M.check_reactor(r, path)
  local function bad(msg) raise("usage", ("reactor %s: %s"):format(path, msg)) end
  if type(r) ~= "table" then
    bad("must return a table with a 'steps' table, got " .. (r == nil and "nothing" or type(r)))
  end
  if type(r.steps) ~= "table" then
    bad("must return a table with a 'steps' table ('steps' is " .. type(r.steps) .. ")")
  end
  for k, v in pairs(r.steps) do
    if type(k) ~= "string" then bad("step names must be strings, got " .. type(k)) end
    if type(v) ~= "function" then bad(("step %q must be a function, got %s"):format(k, type(v))) end
  end
  for _, field in ipairs({ "setup", "check" }) do
    if r[field] ~= nil and type(r[field]) ~= "function" then
      bad(("'%s' must be a function, got %s"):format(field, type(r[field])))
    end
  end
  local a = r.action
  if a ~= nil and type(a) ~= "function" and (type(a) ~= "string" or a == "") then
    bad("'action' must be a key path such as \"action.tag\", got " .. type(a))
  end
  local t = r.timeout
  if t ~= nil and (type(t) ~= "number" or t ~= t or t <= 0 or t == math.huge) then
    bad("'timeout' must be a positive number of seconds")
  end
  return r
end

-- The value at a dot-separated key path inside a state.
local function at_path(state, path)
  local v = state
  for seg in path:gmatch("[^.]+") do
    if type(v) ~= "table" then return nil end
    local mt = getmetatable(v)
    if mt and mt.__name == "atom.itf.map" then
      local m = v
      v = m:get(seg)
      if v == nil and tonumber(seg) then v = m:get(tonumber(seg)) end
    else
      local got = rawget(v, seg)
      if got == nil and tonumber(seg) then got = rawget(v, math.tointeger(tonumber(seg)) or tonumber(seg)) end
      v = got
    end
  end
  return v
end

local function state_label(i, state)
  local k = type(state) == "table" and type(state.meta) == "table" and state.meta.index
  if k ~= nil and k ~= false then return ("%d (#meta.index %s)"):format(i, tostring(k)) end
  return tostring(i)
end

--- The action name of every state, or raises naming the first state without a
--- usable one and listing the known steps.
function M.actions(reactor, trace, path)
  local spec = reactor.action or M.DEFAULT_ACTION
  local known = table.concat(sorted_steps(reactor.steps), ", ")
  local names = {}
  for i, state in ipairs(trace.states) do
    local where = ("trace %s, state %s"):format(path, state_label(i, state))
    local name
    if type(spec) == "function" then
      -- Name the state when the reactor's own function fails on it, as for
      -- any other reason the trace cannot start.
      local ok, got = pcall(spec, state)
      if not ok then
        if atom.is_error(got, "cancelled") then error(got, 0) end
        local text = atom.is_error(got) and got.message or tostring(got)
        raise("usage", ("%s: the reactor's action function failed: %s"):format(where, text))
      end
      name = got
    else
      name = at_path(state, spec)
    end
    if name == nil then
      raise("itf", ("%s: no action name at %s; known steps: %s"):format(
        where, type(spec) == "function" and "the reactor's action function" or ("%q"):format(spec), known))
    end
    if type(name) ~= "string" then
      raise("itf", ("%s: the action name must be a string, got %s; known steps: %s"):format(
        where, atom.repr(name, 80), known))
    end
    if reactor.steps[name] == nil then
      raise("usage", ("%s: no step for action %q; known steps: %s"):format(where, name, known))
    end
    names[i] = name
  end
  return names
end

--{==================================================================
-- Replay
--===================================================================

local STATE_LIMIT = 2000

local function model_state(state)
  local copy = {}
  for k, v in pairs(state) do
    if k ~= "meta" then copy[k] = v end
  end
  return atom.repr(copy, STATE_LIMIT)
end

-- Run fn(...) and, if it fails, raise its error with `prefix` in front and the
-- model state after it. Cancellation passes through untouched. Atom error
-- tables keep their identity (kind, traceback); anything else becomes a string.
local function guarded(prefix, state, fn, ...)
  local ok, err = pcall(fn, ...)
  if ok then return end
  if atom.is_error(err, "cancelled") then error(err, 0) end
  local suffix = state and ("\nmodel state: " .. model_state(state)) or ""
  if atom.is_error(err) then
    err.message = prefix .. tostring(err.message) .. suffix
    error(err, 0)
  end
  local text = type(err) == "string" and err or atom.repr(err, 200)
  error(prefix .. text .. suffix, 0)
end

--- Replay one trace in the current (test) task: resolve every action first,
--- then setup, then each step followed by check.
---@param reactor table checked by check_reactor
---@param ctx table {trace =, path =, index =}
function M.replay(reactor, ctx)
  local trace, path = ctx.trace, ctx.path
  local names = M.actions(reactor, trace, path)
  if reactor.setup then
    guarded(("trace %s, setup: "):format(path), nil, reactor.setup, ctx)
  end
  local prev
  for i, state in ipairs(trace.states) do
    local name = names[i]
    local k = state.meta and state.meta.index
    local prefix = k ~= nil
      and ("trace %s, step %d (#meta.index %s), action %s: "):format(path, i, tostring(k), name)
      or ("trace %s, step %d, action %s: "):format(path, i, name)
    atom.emit("trace_step", { trace = path, index = i, meta_index = k, action = name })
    guarded(prefix, state, reactor.steps[name], ctx, state, prev)
    if reactor.check then guarded(prefix .. "check: ", state, reactor.check, ctx, state) end
    prev = state
  end
end

--- Replay each trace as one test named by its path (SPEC §6), one after another.
--- Returns the list of atom.test results (true, false, or nil when --filter left
--- the trace out).
---@param reactor table checked by check_reactor
---@param traces table[] from decode_all
---@param index integer|nil the first trace's position in the run (default 1)
function M.run(reactor, traces, index)
  local results = {}
  for i, t in ipairs(traces) do
    local function body()
      M.replay(reactor, { trace = t.trace, path = t.path, index = (index or 1) + i - 1 })
    end
    if reactor.timeout then
      results[i] = atom.test(t.path, body, reactor.timeout)
    else
      results[i] = atom.test(t.path, body)
    end
  end
  return results
end

return M
