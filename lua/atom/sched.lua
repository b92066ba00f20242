-- atom.sched: the public structured-concurrency API of SPEC §3 (gather, race,
-- map, timeout, shield, go, wait_until, defer, sleep, name) composed from the
-- C scheduler's mechanisms (src/sched.c): spawn into a group, take finished
-- members with group_next, cancel a group. No task table lives here.
local _atom = require "_atom"
local errors = require "atom.errors"
require "atom.task"

local M = {}
-- Task flags of _atom.spawn: a shield; an owner scope (the runner's tests
-- own their processes; the scheduler knows them only as owner scopes).
local SHIELD, OWNER = 1, 2
M.SHIELD, M.OWNER = SHIELD, OWNER

local spawn, group, group_next, group_cancel = _atom.spawn, _atom.group, _atom.group_next, _atom.group_cancel
local checkpoint, task_name, result = _atom.checkpoint, _atom.task_name, _atom.result
local select, type, error = select, type, error
local argerror, is_error = errors.argerror, errors.is

M.sleep = _atom.sleep
M.now = _atom.now

--- Rename the current task; without an argument, return its name (nil
--- outside a task).
---@param str string|nil the current task's new name
---@return string|nil
function M.name(str)
  if str == nil then return errors.task_name() end
  _atom.rename(str)
end

--- Collect the functions of `gather(f1, ..., fn)` or `gather{f1, ..., fn}`.
local function functions(fname, ...)
  local n = select("#", ...)
  local first = ...
  local list, packed
  if n == 1 and type(first) == "table" and not (getmetatable(first) or {}).__call then
    list, packed = first, true
    n = first.n or #first
  else
    list = { ... }
  end
  for i = 1, n do
    local f = list[i]
    if type(f) ~= "function" and not (type(f) == "table" and (getmetatable(f) or {}).__call) then
      argerror(packed and 1 or i, fname, (packed and ("element " .. i .. ": ") or "") ..
        "function expected, got " .. (f == nil and "nil" or type(f)))
    end
  end
  return list, n, packed
end

-- After the first error: cancel the rest, wait until they unwound, keep
-- their later non-cancel errors in err.also (rule "Cleanup errors").
-- The runner sets this to note, before the siblings are cancelled, what each
-- of them was waiting for (failure forensics); prefix = "<caller>/".
M.on_unwind = nil

local function unwind(g, err)
  if err ~= nil and M.on_unwind then M.on_unwind(task_name() .. "/") end
  group_cancel(g)
  while true do
    local i, st, e = group_next(g, true) -- cancelled members' errors are not wanted
    if not i then break end
    if st == "failed" and e ~= err and not is_error(e, "cancelled") and is_error(err) then
      local also = err.also or {}
      also[#also + 1] = e
      err.also = also
    end
  end
end

---@return any ... the first result of each function
function M.gather(...)
  local fns, n, packed = functions("gather", ...)
  checkpoint("gather")
  local g = group()
  for i = 1, n do spawn(g, nil, 0, nil, fns[i]) end -- named "<caller>/<i>"
  local results = { n = n }
  while true do
    local i, st, v = group_next(g)
    if not i then break end
    if st == "done" then
      results[i] = v
    else
      unwind(g, v)
      checkpoint("gather") -- the caller's own cancellation wins over its children's
      error(v, 0)
    end
  end
  if packed then return results end
  return table.unpack(results, 1, n)
end

---@return integer i, any value the index and first result of the first function to succeed
function M.race(...)
  local fns, n = functions("race", ...)
  checkpoint("race")
  if n == 0 then argerror(1, "race", "at least one function expected") end
  local g = group()
  for i = 1, n do spawn(g, nil, 0, nil, fns[i]) end
  local first_err
  while true do
    local i, st, v = group_next(g)
    if not i then break end
    if st == "done" then
      unwind(g, nil)
      checkpoint("race")
      return i, v
    elseif first_err == nil then
      first_err = v
    end
  end
  checkpoint("race")
  error(first_err, 0)
end

---@param list table items
---@param fn function called as fn(item, i)
---@param opts table|nil {concurrency = n}
function M.map(list, fn, opts)
  errors.checktype(1, "map", list, "table")
  errors.checktype(2, "map", fn, "function")
  errors.checktype(3, "map", opts, "table", true)
  local limit = opts and opts.concurrency or math.huge
  if type(limit) ~= "number" or limit < 1 then argerror(3, "map", "concurrency must be a number >= 1") end
  checkpoint("map")
  local n = list.n or #list
  local results = { n = n }
  local g = group()
  local started, running = 0, 0
  -- group indexes count spawn order, which is item order here
  while started < n or running > 0 do
    while started < n and running < limit do
      started = started + 1
      running = running + 1
      spawn(g, nil, 0, nil, fn, list[started], started)
    end
    local i, st, v = group_next(g)
    running = running - 1
    if st == "done" then
      results[i] = v
    else
      unwind(g, v)
      checkpoint("map")
      error(v, 0)
    end
  end
  return results
end

--- Run fn(...) in a child task; cancel it and raise `timeout` after secs.
function M.timeout(secs, fn, ...)
  if type(secs) ~= "number" then errors.checktype(1, "timeout", secs, "number") end
  if not (secs >= 0) then argerror(1, "timeout", "non-negative number expected") end
  errors.checktype(2, "timeout", fn, "function")
  checkpoint("timeout")
  local g = group()
  local t = spawn(g, task_name() .. "/timeout", 0, secs, fn, ...)
  group_next(g)
  checkpoint("timeout") -- an outer deadline or cancel passes through unchanged
  if _atom.deadline_expired(t) then
    errors.raise("timeout", errors.timed_out("", secs))
  end
  return result(t)
end

--- Run fn(...) unaffected by the caller's cancellation and enclosing deadlines.
function M.shield(fn, ...)
  errors.checktype(1, "shield", fn, "function")
  local g = group()
  local t = spawn(g, task_name() .. "/shield", SHIELD, nil, fn, ...)
  group_next(g)
  return result(t)
end

--- Start a background child task.
function M.go(fn, ...)
  errors.checktype(1, "go", fn, "function")
  return spawn(nil, nil, 0, nil, fn, ...)
end

--- Call fn(...) when the current task ends (last registered first).
function M.defer(fn, ...)
  local grace
  local d
  if type(fn) == "table" and not (getmetatable(fn) or {}).__call then
    local spec = fn
    errors.checktype(1, "defer", spec[1], "function")
    grace = spec.grace
    if grace ~= nil and type(grace) ~= "number" then argerror(1, "defer", "field 'grace' must be a number") end
    d = { n = (spec.n or #spec) }
    for i = 1, d.n do d[i] = spec[i] end
  else
    errors.checktype(1, "defer", fn, "function")
    d = { n = select("#", ...) + 1, fn, ... }
  end
  local x = _atom.extra(true)
  if not x then errors.raise("usage", "atom.defer called outside a task") end
  local list = x.defers or {}
  list[#list + 1] = d
  x.defers = list
  if grace then _atom.raise_grace(grace) end
end

local function describe(v)
  if type(v) == "string" then return ("%q"):format(v) end
  return tostring(v)
end

--- Poll fn until its first result is truthy and return it.
function M.wait_until(fn, opts)
  errors.checktype(1, "wait_until", fn, "function")
  local timeout, interval = 30, 0.1
  if type(opts) == "number" then
    timeout = opts
  elseif type(opts) == "table" then
    timeout = opts.timeout or timeout
    interval = opts.interval or interval
  elseif opts ~= nil then
    errors.checktype(2, "wait_until", opts, "number|table")
  end
  checkpoint("wait_until")
  local deadline = _atom.now() + timeout
  local last_err, last_value, why, have_value
  local name = task_name() .. "/wait_until"
  while true do
    local left = deadline - _atom.now()
    if left < 0 then left = 0 end
    local g = group()
    local t = spawn(g, name, 0, left, function() return fn() end)
    local _, st = group_next(g)
    checkpoint("wait_until")
    if st == "done" and not _atom.deadline_expired(t) then
      local ok, v, reason = pcall(result, t)
      if v then return v end
      last_value, why, have_value, last_err = v, reason, true, nil
    elseif not _atom.deadline_expired(t) then
      local e = _atom.error_of(t)
      if is_error(e, "cancelled") or is_error(e, "usage") then error(e, 0) end
      last_err, have_value = e, false
    end
    if _atom.deadline_expired(t) or _atom.now() >= deadline then
      local tail
      if last_err ~= nil then
        tail = "last error: " .. tostring(last_err)
      elseif have_value then
        tail = "last value: " .. describe(last_value) .. (why and (" (" .. tostring(why) .. ")") or "")
      else
        tail = "no call finished"
      end
      local fields = { last_error = last_err }
      if have_value then fields.last_value = last_value end
      errors.raise("timeout", errors.timed_out("wait_until", timeout) .. "; " .. tail, fields)
    end
    local pause = math.min(interval, deadline - _atom.now())
    if pause > 0 then _atom.sleep(pause) end
  end
end

-- The CLI's file state sets on_unwind as this loads (atom.scenario).
local on_load = require("atom.state").on_load["atom.sched"]
if on_load then on_load(M) end

return M
