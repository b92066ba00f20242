-- atom.runner: tests (atom.test, atom.skip) and module mode's atom.run,
-- SPEC §2. Reporting is done by subscribers of atom.events
-- (lua/atom/report/); the evidence a failure report shows is gathered by
-- atom.report.evidence and attached to test_end here.
local _atom = require "_atom"
local errors = require "atom.errors"
local events = require "atom.events"
local state = require "atom.state"
local sched = require "atom.sched"
local evidence = require "atom.report.evidence"

local M = {}

-- Outcome of the tests of this Lua state.
local counts = { passed = 0, failed = 0, skipped = 0 }
local failed_names = {}
M.counts = counts
M.filter = nil       -- --filter PATTERN (plain substring)
M.on_test_end = nil  -- called with the test_end event (fail-fast, module mode)
M.stop_reason = nil  -- the CLI's: () -> reason, message once --timeout or a signal stops the run
-- Errors that cancelled failed tests from outside (a scenario-owned critical
-- process, say), so the scenario ending with the same error is no scenario
-- error of its own (SPEC §4: exit 1 when a test was running).
M.failed_causes = setmetatable({}, { __mode = "k" })

-- When the first error of a gather or map is about to cancel the other
-- children, atom.sched may call this with their name prefix, so a report can
-- say what each was waiting for (see atom.report.evidence).
sched.on_unwind = evidence.note_cancelling

--- Log tails of the processes a failed test owned (atom.proc keeps them).
---@param task userdata the test's task
M.collect_tails = evidence.tails


-- Fields a reporter needs about a failure; `_` fields stay out of NDJSON.
local function failure_fields(ev, err, task)
  ev._error = err
  ev._where = errors.is(err) and err.where or nil
  local x = task and _atom.extra(false, task)
  -- an unjoined child's string error: the child is the task that failed
  ev._task = errors.is(err) and err.task or (x and x.child_task) or (task and _atom.task_name(task)) or nil
  ev._traceback = errors.is(err) and err.traceback or (x and (x.child_traceback or x.traceback)) or nil
  -- An error that came from elsewhere (a critical process died) and has no
  -- position of its own: name where the task was waiting when it hit it.
  if x and x.waiting_where and errors.is(err) and not err.where then
    ev._where = x.waiting_where
    ev._traceback = x.waiting_traceback or ev._traceback
  end
  ev._cleanup_errors = x and x.cleanup_errors or nil
  if task then ev._tails = M.collect_tails(task) end
  local kind = errors.is(err) and err.kind or "error"
  local message = errors.is(err) and err.message or tostring(err)
  local file, line
  if ev._where then file, line = ev._where:match("^(.*):(%d+)$") end
  if not file and type(err) == "string" then
    file, line, message = err:match("^([^:\n]+):(%d+): (.*)$")
    if file then ev._where = file .. ":" .. line else message = err end
  end
  ev.error = { kind = kind, message = message, file = file, line = tonumber(line), task = ev._task }
end
M.failure_fields = failure_fields

-- Run fn as the test's task and wait for it. Its timeout is a deadline on
-- the task, like atom.timeout's: the scheduler's preemption reaches a test
-- that never yields, then its grace, then abandonment. Right before the
-- deadline cancels it, its on_deadline notes what the test's tasks were
-- waiting for (the cancellation ends those waits) and words the reason.
-- Returns the task's status and first value, whether it timed out, the task.
local function run_test_task(name, fn, timeout)
  local g = _atom.group()
  local t = _atom.spawn(g, name, sched.OWNER, timeout, fn)
  if timeout then
    _atom.extra(true, t).on_deadline = function()
      evidence.note_waiting(name)
      return "cancelled: " .. errors.timed_out(("test %q"):format(name), timeout)
    end
  end
  local _, status, value = _atom.group_next(g)
  return status, value, timeout ~= nil and _atom.deadline_expired(t), t
end

---@param name string
---@param fn function
---@param opts number|table|nil timeout, or {timeout = secs}
---@return boolean|nil passed true/false, nil when --filter left it out
function M.test(name, fn, opts)
  errors.checktype(1, "test", name, "string")
  errors.checktype(2, "test", fn, "function")
  local timeout
  if type(opts) == "number" then timeout = opts
  elseif type(opts) == "table" then timeout = opts.timeout
  elseif opts ~= nil then errors.checktype(3, "test", opts, "number|table") end
  local outer = _atom.owner_scope()
  if outer then errors.raise("usage", ("atom.test cannot be nested (inside test %q)"):format(outer)) end
  if M.filter and not name:find(M.filter, 1, true) then return nil end
  M.matched = true
  _atom.checkpoint("test")
  local file = state.file
  events.emit("test_start", { name = name, file = file, suite = state.suite })
  local start = _atom.now()
  evidence.test_started(name, start)
  local status, value, timed_out, t = run_test_task(name, fn, timeout)
  local ev = { name = name, file = file, suite = state.suite, duration = _atom.now() - start }
  local notes, rpc = evidence.test_ended(name)
  local err
  if timed_out then
    err = errors.new("timeout", errors.timed_out(("test %q"):format(name), timeout),
      { task = name, traceback = false })
  elseif status ~= "done" then
    err = value
  elseif M.stop_reason and M.stop_reason() then
    -- It ended after --timeout or a signal cancelled it, without reaching
    -- a checkpoint: it was stopped all the same (SPEC §2 cancelled tests).
    local _, message = M.stop_reason()
    err = errors.new("cancelled", message, { task = name, traceback = false })
  end
  if err == nil then
    ev.status = "passed"
    counts.passed = counts.passed + 1
  else
    ev.status = "failed"
    counts.failed = counts.failed + 1
    failed_names[#failed_names + 1] = name
    failure_fields(ev, err, t)
    ev._forensics, ev._last_rpc = notes, rpc
    if type(err) == "table" and err.child_error ~= nil then M.failed_causes[err.child_error] = true end
  end
  events.emit("test_end", ev)
  if M.on_test_end then M.on_test_end(ev) end
  if not _atom.cli and err ~= nil then -- module mode: the failure goes to stderr
    local lines = require("atom.report.console").failure_block(ev)
    io.stderr:write("✗ ", name, "\n", table.concat(lines, "\n"), "\n")
  end
  _atom.checkpoint("test") -- a test cancelled from outside does not return
  return err == nil
end

--- Fail the tests still running when the scenario's root has ended: they
--- were abandoned with it (they kept running past the cleanup grace), so
--- atom.test never returned for them. Returns how many there were.
---@param message string why, e.g. "cancelled: run timed out after 2s"
function M.fail_abandoned(message)
  local now, list = _atom.now(), {}
  for name, r in pairs(evidence.running) do
    for _ = 1, r.n do list[#list + 1] = { name = name, start = r.start } end
  end
  table.sort(list, function(a, b) return a.start < b.start end)
  for _, r in ipairs(list) do
    local notes = evidence.test_ended(r.name)
    counts.failed = counts.failed + 1
    failed_names[#failed_names + 1] = r.name
    local ev = { name = r.name, file = state.file, suite = state.suite, duration = now - r.start,
      status = "failed", _forensics = notes }
    failure_fields(ev, errors.new("cancelled", message .. " (abandoned: the test kept running"
      .. " past its cleanup grace)", { task = r.name, traceback = false }))
    events.emit("test_end", ev)
  end
  return #list
end

---@param name string
---@param reason string|nil
function M.skip(name, reason)
  errors.checktype(1, "skip", name, "string")
  errors.checktype(2, "skip", reason, "string", true)
  if _atom.owner_scope() then errors.raise("usage", "atom.skip cannot be called inside a running test") end
  if M.filter and not name:find(M.filter, 1, true) then return nil end
  M.matched = true
  counts.skipped = counts.skipped + 1
  events.emit("test_end", { name = name, file = state.file, suite = state.suite, status = "skipped",
    duration = 0, reason = reason or "skipped" })
end

-- Close what luv left open once the root has ended (SPEC §3 "Outside tasks").
function M.close_luv_handles()
  local list = _atom.luv_handles()
  if #list == 0 then return end
  for _, h in ipairs(list) do
    if not h:is_closing() then h:close() end
  end
  require("luv").run("nowait")
end
local close_luv_handles = M.close_luv_handles

-- Module mode's run directory (SPEC §2): a fresh temporary directory.
local function make_temp_dir()
  local base = (os.getenv("TMPDIR") or "/tmp"):gsub("/+$", "")
  local dir, err = require("luv").fs_mkdtemp(base .. "/atomlua-run-XXXXXX")
  if not dir then errors.raise("io", "cannot create a run directory in " .. base .. ": " .. tostring(err)) end
  return dir
end

-- The error escaping atom.run, with the kept run directory's path in its
-- message (an atom error's or a string's; other values cannot carry it).
-- A directory nothing was written to is removed all the same: it holds no
-- evidence, and module-mode specs that test errors would litter $TMPDIR.
local function with_dir(err, dir)
  local uv = require("luv")
  local scan = uv.fs_scandir(dir)
  local empty = not (scan and uv.fs_scandir_next(scan))
  while scan and uv.fs_scandir_next(scan) do end -- read to the end: frees the listing
  if empty then
    _atom.rm_rf(dir)
    return err
  end
  local note = "(run directory kept: " .. dir .. ")"
  if errors.is(err) then
    err.message = tostring(err.message) .. " " .. note
    err.run_dir = dir
  elseif type(err) == "string" then
    err = err .. " " .. note
  end
  return err
end

--- Module mode: run fn(...) as a root task and return its results. Its run
--- directory is removed when it returns, kept when an error escapes.
---@param fn function
---@return any ... fn's results
function M.run(fn, ...)
  errors.checktype(1, "run", fn, "function")
  if _atom.in_task_thread() then errors.raise("usage", "atom.run cannot be called inside a task") end
  local before = { passed = counts.passed, failed = counts.failed }
  local first_failed = #failed_names + 1
  local dir = make_temp_dir()
  local saved = { state.run_dir, state.file_dir, state._logs_made, state._dir_made }
  state.run_dir, state.file_dir, state._logs_made, state._dir_made = dir, dir, false, false
  local res = table.pack(_atom.run(fn, ...))
  state.run_dir, state.file_dir, state._logs_made, state._dir_made = saved[1], saved[2], saved[3], saved[4]
  close_luv_handles()
  local ok = res[1]
  if not ok then error(with_dir(res[4], dir), 0) end
  if counts.failed > before.failed then
    local names = {}
    for i = first_failed, #failed_names do names[#names + 1] = failed_names[i] end
    error(with_dir(errors.new("assert", ("%d test(s) failed: %s"):format(#names,
      table.concat(names, ", "))), dir), 0)
  end
  _atom.rm_rf(dir)
  return table.unpack(res, 4, res.n)
end

-- The CLI's file state configures the runner as it loads (atom.scenario:
-- --filter, --fail-fast, the stop reason); it loads at the first atom.test.
if state.on_load["atom.runner"] then state.on_load["atom.runner"](M) end

return M
