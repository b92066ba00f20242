-- atom.task: how every task's body ends, SPEC §3 "How a task ends" steps
-- 2–4. src/sched.c's task_body runs the task's function under `handler`
-- *inside* the coroutine (so its <close> variables unwind where they may
-- still wait, Lua 5.4.4: step 1), then calls `finish`; step 5 (settling the
-- outcome and waking joiners) is the scheduler's.
local _atom = require "_atom"
local errors = require "atom.errors"

local M = {}

-- The current task's name for errors made outside the scheduler's C side.
errors.task_name = function() return _atom.in_task_thread() and _atom.task_name() or nil end

-- Functions called with the task when a test or root task ends (step 4):
-- the process module stops the processes the task owns.
M.owner_end = {}

local getmetatable, xpcall, select, traceback, rawget = getmetatable, xpcall, select, debug.traceback, rawget
local error_mt = errors.mt

-- Message handler: capture the traceback while the stack is still there,
-- cheaply for cancellations (they carry their file:line already).
local function handler(e)
  if getmetatable(e) == error_mt then
    -- cancellations (_t set) compute theirs lazily, on first read
    if rawget(e, "traceback") == nil and rawget(e, "_t") == nil then e.traceback = traceback(tostring(e), 2) end
    -- A task whose outcome a child's or a critical process's error replaces
    -- (x.override): keep where it was waiting, and how it got there.
    if rawget(e, "child_error") ~= nil then
      local x = _atom.extra(false)
      if x and x.override ~= nil and x.waiting_where == nil then
        x.waiting_where, x.waiting_traceback = e.where or false, traceback(tostring(e), 2)
      end
    end
  else
    local x = _atom.extra(true)
    if x then x.traceback = traceback(tostring(e), 2) end
  end
  return e
end
M.handler = handler

local function add_cleanup_error(res, e, x)
  if res[1] then -- the task was succeeding: the cleanup error becomes its error
    res[1], res[2], res.n = false, e, 2
    return
  end
  local orig = res[2]
  if getmetatable(orig) == error_mt then
    local list = orig.cleanup_errors or {}
    list[#list + 1] = e
    orig.cleanup_errors = list
  end
  local list = x.cleanup_errors or {}
  list[#list + 1] = e
  x.cleanup_errors = list
end

-- src/sched.c's body_finish_k does not call finish when steps 2-4 have
-- nothing to do (no child, no notes table, not an owner): keep both in step.
local function finish(ok, ...)
  local x, owner = _atom.end_children()                 -- step 2
  local defers = x and x.defers
  owner = owner and #M.owner_end > 0
  if not defers and not owner and not (x and x.grace_error) then return ok, ... end
  local res = { n = select("#", ...) + 1, ok, ... }
  x = x or _atom.extra(true)
  _atom.begin_cleanup()
  if defers then                                         -- step 3
    for i = #defers, 1, -1 do
      local d = defers[i]
      defers[i] = nil
      local ok2, e2 = xpcall(d[1], handler, table.unpack(d, 2, d.n))
      if not ok2 then add_cleanup_error(res, e2, x) end
    end
  end
  if owner then                                          -- step 4
    local me = _atom.current()
    for _, stop in ipairs(M.owner_end) do
      local ok2, e2 = xpcall(stop, handler, me)
      if not ok2 then add_cleanup_error(res, e2, x) end
    end
  end
  if x.grace_error then add_cleanup_error(res, x.grace_error, x); x.grace_error = nil end
  return table.unpack(res, 1, res.n)
end

-- src/sched.c's task_body calls fn under handler, then finish(ok, ...).
_atom.set_trampoline(handler, finish)

return M
