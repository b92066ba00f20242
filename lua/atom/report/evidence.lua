-- atom.report.evidence: the failure evidence of SPEC §1's failure block,
-- gathered in the scenario's own Lua state while tests run: what each
-- cancelled task was waiting for when a failure cancelled it (forensics),
-- the last RPC exchange of each test, and the log tails of a test's
-- processes. The runner attaches it to test_end; reporters only format it.
local _atom = require "_atom"

local M = {}

local MAX_NOTES = 20 -- per test: enough to see the pattern, not a wall

-- Running tests: name -> how many run under that name (concurrent tests
-- may share one), for mapping a task name to the test it belongs to.
local running = {}
local notes = {}    -- test name -> forensics lines not yet reported
local last_rpc = {} -- test name -> {request=, response=}
M.running = running

---@param name string a test that starts
---@param start number its atom.now() at start
function M.test_started(name, start)
  local r = running[name]
  if r then r.n = r.n + 1 else running[name] = { n = 1, start = start } end
end

--- Forget a test that ended and hand over its evidence.
---@param name string
---@return string[]|nil notes, table|nil last_rpc
function M.test_ended(name)
  local r = running[name]
  if r then
    r.n = r.n - 1
    if r.n <= 0 then running[name] = nil end
  end
  local n, rpc = notes[name], last_rpc[name]
  notes[name], last_rpc[name] = nil, nil
  return n, rpc
end

-- The running test a task belongs to, by name: a test's task carries the
-- test's name and its children extend it ("t/1", "t/go2", "t/1/timeout").
-- A task renamed with atom.name escapes this; its notes are then lost.
local function test_of(task_name, only)
  if only then
    if task_name == only or task_name:sub(1, #only + 1) == only .. "/" then return only end
    return nil
  end
  local best
  for name in pairs(running) do
    if (task_name == name or task_name:sub(1, #name + 1) == name .. "/")
      and (not best or #name > #best) then best = name end
  end
  return best
end

local function note(key, t, now)
  local list = notes[key] or {}
  notes[key] = list
  if #list < MAX_NOTES then
    list[#list + 1] = ("%s cancelled while waiting for %s (%.1fs)%s"):format(t.name, t.waiting,
      now - (t.since or now), t.where and (" at " .. t.where) or "")
  elseif #list == MAX_NOTES then
    list[#list + 1] = "… more tasks were cancelled"
  end
end

-- Waiting tasks, oldest first, without those that only wait for their own
-- children (that says nothing the children's notes do not): all of them, or
-- at most `limit` descendants of task `under`.
local function waiting_tasks(under, limit)
  local out, tasks = {}, _atom.tasks(under, limit)
  for i = #tasks, 1, -1 do out[#out + 1] = tasks[i] end -- the scheduler lists the newest first
  return out
end

--- Note what every waiting task of test `only` (or of every running test)
--- waits for, right before a cancellation reaches them: afterwards the
--- waits are gone.
---@param only string|nil a test name; nil for all running tests
function M.note_waiting(only)
  if not only and next(running) == nil then return end
  local now = _atom.now()
  for _, t in ipairs(waiting_tasks()) do
    local test = test_of(t.name, only)
    if test then note(test, t, now) end
  end
end

--- The same for the tasks whose names start with `prefix` (the children of
--- a gather or map whose first error is about to cancel them), noted for
--- the test the caller runs in, or for the scenario outside tests.
---@param prefix string e.g. "t/" for the children of task "t"
function M.note_cancelling(prefix)
  local key = _atom.owner_scope() or M.SCENARIO
  local now = _atom.now()
  -- the caller's descendants, and only as many as can be noted: a gather of
  -- 10,000 tasks must not pay for 10,000 names and places
  for _, t in ipairs(waiting_tasks(_atom.current(), MAX_NOTES + 1)) do
    if t.name:sub(1, #prefix) == prefix then note(key, t, now) end
  end
end

--- Key of the notes taken outside tests (reported with a scenario error).
M.SCENARIO = "\0scenario"

--- Take the notes taken outside tests.
function M.take_scenario_notes()
  local n = notes[M.SCENARIO]
  notes[M.SCENARIO] = nil
  return n
end

--- Record an `rpc` event as the last exchange of the test it ran in. The
--- event may carry the raw bodies in private `_request` / `_response` fields
--- (atom.rpc decides); otherwise the method, URL and outcome are shown.
---@param ev table an rpc event
function M.on_rpc(ev)
  local test = _atom.owner_scope()
  if not test then return end
  local response = ev._response
  if response == nil then
    response = ev.error ~= nil and ("error: " .. tostring(ev.error))
      or ("ok (%.2fs)"):format(tonumber(ev.duration) or 0)
  end
  last_rpc[test] = { request = ev._request or ("%s at %s"):format(tostring(ev.method), tostring(ev.url)),
    response = response }
end

--- The last 20 lines of each process the test task owned, when processes
--- were used at all (atom.proc keeps them per owner).
---@param task userdata the test's task
function M.tails(task)
  local proc = package.loaded["atom.proc"]
  if type(proc) ~= "table" or not proc.collect_tails then return nil end
  local ok, list = pcall(proc.collect_tails, task)
  if ok and type(list) == "table" and #list > 0 then return list end
  return nil
end

return M
