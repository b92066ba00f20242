-- atom.report.events: the `--events PATH` NDJSON writer (SPEC §8). One JSON
-- object per line, flushed at once so a crashed run keeps what it logged.
-- Private `_` fields are dropped; errors become {kind, message, file, line, task}.
local common = require("atom.report.common")
local json = require("atom.json")

local M = {}
M.__index = M

--- An NDJSON event writer on `opts.path` (truncated). Raises a string error
--- naming the path when it cannot be opened.
---@param opts table {path = string}
function M.new(opts)
  local path = opts and opts.path
  if type(path) ~= "string" then error("atom.report.events.new: opts.path must be a string", 2) end
  local f, msg = io.open(path, "w")
  if not f then error(("cannot open events file: %s"):format(msg or path), 0) end
  return setmetatable({ path = path, file = f, last_t = 0, saw_run_end = false }, M)
end

-- A JSON-safe copy of a value: strings repaired to UTF-8 (the encoder
-- rejects invalid UTF-8), `_` keys dropped, functions and other non-data
-- turned into their tostring, cycles cut.
local function clean(v, seen)
  local ty = type(v)
  if ty == "string" then return common.utf8_repair(v) end
  if ty == "number" then
    if v ~= v or v == math.huge or v == -math.huge then return tostring(v) end
    return v
  end
  if ty == "boolean" or v == json.null then return v end
  if ty ~= "table" then return tostring(v) end
  if seen[v] then return "(cycle)" end
  seen[v] = true
  local out = {}
  for k, x in pairs(v) do
    if not (type(k) == "string" and k:sub(1, 1) == "_") then
      out[type(k) == "string" and common.utf8_repair(k) or k] = clean(x, seen)
    end
  end
  seen[v] = nil
  return out
end

-- Fields that SPEC §8 lists but whose nil must still appear, as null.
local NULLABLE = { http = { "status" }, process_exit = { "code", "signal" } }
-- Fields that are lists and must encode as [] even when empty.
local LISTS = { "argv" }

--- The public record of one event, as written.
---@param ev table
function M.record(ev)
  local rec = clean(ev, {})
  if ev.error ~= nil or ev._error ~= nil then rec.error = clean(common.error_of(ev), {}) end
  for _, k in ipairs(NULLABLE[ev.type] or {}) do
    if rec[k] == nil then rec[k] = json.null end
  end
  for _, k in ipairs(LISTS) do
    if type(rec[k]) == "table" and json.array then rec[k] = json.array(rec[k]) end
  end
  -- A stopped file whose running tests took the failure: no (scenario) error
  -- of its own in the reports (the console and JUnit read _quiet).
  if ev.type == "scenario_end" and ev._quiet then rec.tests_failed_instead = true end
  -- What a report shows of a failure (traceback frames, forensics, log
  -- tails, last RPC), so a saved log renders the same HTML page.
  if (ev.type == "test_end" and ev.status == "failed") or (ev.type == "scenario_end" and ev.status == "error") then
    local d = common.failure(ev)
    d.error = nil
    rec.details = clean(d, {})
  end
  return rec
end

--- The line for one event (no newline), as --events writes it; `state`
--- ({last_t =, saw_run_end =}) keeps `t` non-decreasing across calls.
---@param state table
---@param ev table
---@return string
function M.line(state, ev)
  local rec = M.record(ev)
  local t = tonumber(rec.t) or state.last_t
  if t < state.last_t then t = state.last_t end
  rec.t, state.last_t = t, t
  if rec.type == "run_end" then state.saw_run_end = true end
  local ok, line = pcall(json.encode, rec)
  if not ok then
    -- Never lose the line: record what could not be encoded, and why.
    line = json.encode({ t = t, type = tostring(rec.type),
      encode_error = common.utf8_repair(tostring(line)) })
  end
  return line
end

--- The run_end event from the summary, for reporters when the runner did not
--- emit one.
function M.run_end_from(summary, t)
  return { type = "run_end", t = summary.t or t, passed = summary.passed, failed = summary.failed,
    skipped = summary.skipped, exit = summary.exit, reason = summary.reason }
end

--- Write one event as a line (flushed). `t` is clamped to be non-decreasing.
--- The first failed write or flush is kept in `write_error` (and writing stops).
---@param ev table
function M:on_event(ev)
  if not self.file or self.write_error then return end
  local ok, err = self.file:write(M.line(self, ev), "\n")
  if ok then ok, err = self.file:flush() end
  if not ok then self.write_error = ("cannot write events file %s: %s"):format(self.path, tostring(err)) end
end

--- Write `run_end` from the summary unless the runner emitted it, then close.
--- Raises a string error naming the file when any write, flush or the close
--- failed (a full disk).
---@param summary table {passed=, failed=, skipped=, exit=, reason=}
function M:finish(summary)
  if not self.file then return end
  if not self.saw_run_end and summary then self:on_event(M.run_end_from(summary, self.last_t)) end
  local ok, err = self.file:close()
  self.file = nil
  if not ok and not self.write_error then
    self.write_error = ("cannot write events file %s: %s"):format(self.path, tostring(err))
  end
  if self.write_error then error(self.write_error, 0) end
end

return M
