-- atom.errors: the runtime's error values (SPEC §3 rule 5).
-- An error is a table {kind, message, task, traceback, where, ...} whose
-- tostring is one line "file:line: message". The C host (util.c) builds the
-- same tables through the metatable this module registers as "atom.error".
local M = {}

local mt = {}
mt.__name = "atom.error"

-- Cancellation errors are made by the scheduler for thousands of tasks at
-- once; their where/task/traceback are computed on first read from the raw
-- fields _src, _line and _t (the task), then cached.
local lazy = {
  where = function(e)
    local src, line = rawget(e, "_src"), rawget(e, "_line")
    return src and (src .. ":" .. line) or nil
  end,
  task = function(e)
    local t = rawget(e, "_t")
    return t and t.name or nil
  end,
  traceback = function(e) return e.where end,
}
mt.__index = function(e, k)
  local f = lazy[k]
  if f and rawget(e, "_t") ~= nil then
    local v = f(e)
    rawset(e, k, v)
    return v
  end
  return nil
end
-- `summary` lets an error keep a peer's message verbatim in `message` while
-- tostring gives more context (rpc errors: URL, method, code and message).
-- One line, always (a log line, a JUnit attribute, `print(err)`): the
-- message's first line, and how many more it has. The rest — a process's
-- log tail, a deadlock's list of waiting tasks, a model state — stays in
-- `message` for the reports' failure blocks, which print it whole.
mt.__tostring = function(e)
  local text = tostring(rawget(e, "summary") or e.message)
  local first, rest = text:match("^([^\n]*)\n(.*)$")
  if first then
    local n = 1
    for _ in rest:gmatch("\n") do n = n + 1 end
    text = ("%s [+%d line%s in .message]"):format(first, n, n == 1 and "" or "s")
  end
  if e.where then return e.where .. ": " .. text end
  return text
end
debug.getregistry()["atom.error"] = mt
M.mt = mt

-- Set by atom.sched once the scheduler is loaded: returns the current task's name.
M.task_name = function() return nil end

local c_where = require("_atom").where

--- "file:line" of the innermost frame that is not atom's own code (the
--- walk is util.c's, shared with the C side).
---@param level integer|nil stack level to start from (default 2: the caller of where())
function M.where(level)
  local w = c_where((level or 2) + 1) -- not a tail call: that would move the levels
  return w
end

--- The optional timeout argument of a stream method: a number or
--- {timeout =}; -1 means none (math.huge too).
---@param fname string
---@param argn integer
function M.opt_timeout(fname, argn, v)
  if v == nil then return -1 end
  local t = v
  if type(v) == "table" then t = v.timeout end
  if t == nil then return -1 end
  if type(t) ~= "number" then M.argerror(argn, fname, "number or table expected, got " .. type(v)) end
  if not (t >= 0) then M.argerror(argn, fname, "timeout must be a non-negative number") end
  return t == math.huge and -1 or t
end

--- Seconds as every message writes them: "2.5s" (src/sched.c: "%.14gs").
function M.secs(s) return ("%.14gs"):format(s) end

--- The one wording of a timeout: "<what> timed out after 2.5s".
---@param what string e.g. 'expect n1 "ready"', 'test "x"', "" for a bare deadline
---@param secs number
function M.timed_out(what, secs)
  return (what == "" and "" or (what .. " ")) .. "timed out after " .. M.secs(secs)
end

--- A new error table of `kind` (no position when `where` is false).
---@param kind string  one of SPEC §3 rule 5's kinds
---@param message string
---@param fields table|nil extra fields copied into the error (cause, code, ...)
function M.new(kind, message, fields)
  local e = setmetatable({ kind = kind, message = message }, mt)
  if fields then for k, v in pairs(fields) do e[k] = v end end
  if e.where == nil then e.where = M.where(2) end
  if e.task == nil then e.task = M.task_name() end
  if e.traceback == nil then e.traceback = debug.traceback(tostring(e), 2) end
  return e
end

--- Raise a new error of `kind`.
function M.raise(kind, message, fields)
  local e = M.new(kind, message, fields)
  error(e, 0)
end

--- True when `e` is an atom error (of `kind`, when given).
function M.is(e, kind)
  return getmetatable(e) == mt and (kind == nil or e.kind == kind)
end

--- Raise a `usage` error worded like Lua's own argument errors:
--- "bad argument #1 to 'sleep' (number expected, got string)".
function M.argerror(n, fname, msg)
  M.raise("usage", ("bad argument #%d to '%s' (%s)"):format(n, fname, msg))
end

--- Check that argument n has type `want` (a type name, or names joined by "|").
function M.checktype(n, fname, value, want, optional)
  local t = type(value)
  if optional and value == nil then return value end
  for w in want:gmatch("[^|]+") do
    if t == w then return value end
  end
  M.argerror(n, fname, want:gsub("|", " or ") .. " expected, got " .. (value == nil and "no value" or t))
end

return M
