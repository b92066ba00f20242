-- atom.report.console: the console reporter (SPEC §1 "Console"). It turns
-- events into test lines and failure blocks, draws the live status line on a
-- terminal, and ends every run with the reason, seed and closing lines. The
-- runner decides colour, verbosity and when to tick; this module only writes.
local common = require("atom.report.common")

local M = {}
M.__index = M

-- ANSI SGR codes; used only when the caller asked for colour.
local SGR = { green = "\27[32m", red = "\27[31m", yellow = "\27[33m", dim = "\27[2m",
              reset = "\27[0m" }
local CLEAR_LINE = "\r\27[K"
local RPC_MAX = 4096 -- bytes of an RPC request/response shown before cutting

--- True when stdout is a terminal and NO_COLOR is unset or empty (no-color.org).
function M.want_color()
  local nc = os.getenv("NO_COLOR")
  if nc and nc ~= "" then return false end
  local ok, _atom = pcall(require, "_atom")
  if ok and _atom.isatty then return _atom.isatty(1) end
  local okuv, uv = pcall(require, "luv")
  return okuv and uv.guess_handle(1) == "tty"
end

--- A console reporter.
---@param opts table|nil {out = file-like with :write (io.stdout), color = boolean,
---  verbose = -1|0|1, live = boolean (default: color), width = columns of the live line (80),
---  headers = boolean (a "▸▸ FILE" line as each scenario file starts; -v always has it)}
function M.new(opts)
  opts = opts or {}
  local self = setmetatable({}, M)
  self.out = opts.out or io.stdout
  self.color = opts.color and true or false
  self.live = opts.live == nil and self.color or (opts.live and true or false)
  self.verbose = opts.verbose or 0
  self.width = opts.width or 80
  self.headers = opts.headers and true or false -- a header line per scenario file
  self._live_shown = false -- the status line is on screen and must be cleared
  self._partial = false    -- user output ended without "\n"
  return self
end

function M:_paint(color, s)
  if not self.color then return s end
  return SGR[color] .. s .. SGR.reset
end

-- Every write goes through here, so the live line is cleared first and a
-- user's unfinished line is not glued to ours.
function M:_raw(s)
  local out = self.out
  if self._live_shown then out:write(CLEAR_LINE); self._live_shown = false end
  if self._partial then out:write("\n"); self._partial = false end
  out:write(s)
end

function M:_flush()
  if self.out.flush then self.out:flush() end
end

function M:_lines(lines)
  self:_raw(table.concat(lines, "\n") .. "\n")
  self:_flush()
end

-- Append `text` to `lines`, each of its lines prefixed with `indent`.
local function indented(lines, indent, text)
  for l in (tostring(text) .. "\n"):gmatch("(.-)\r?\n") do lines[#lines + 1] = indent .. l end
end

local function cut(s)
  s = tostring(s)
  if #s <= RPC_MAX then return s end
  return s:sub(1, RPC_MAX) .. ("… (%d more bytes)"):format(#s - RPC_MAX)
end

--- The failure block of a failed test_end or error scenario_end, as lines.
---@param ev table
---@return string[]
function M.failure_block(ev)
  local f, lines = common.failure(ev), {}
  indented(lines, "  ", common.error_line(f))
  if f.task then lines[#lines + 1] = "  task: " .. f.task end
  if #f.frames > 0 then
    lines[#lines + 1] = "  traceback:"
    for _, fr in ipairs(f.frames) do lines[#lines + 1] = "    " .. fr end
  end
  for _, c in ipairs(f.cleanup) do indented(lines, "  ", "cleanup error: " .. c) end
  for _, a in ipairs(f.also) do indented(lines, "  ", "also: " .. a) end
  for _, n in ipairs(f.forensics) do indented(lines, "  ", "note: " .. n) end
  if f.rpc then
    if f.rpc.request then indented(lines, "  ", "last RPC request: " .. cut(f.rpc.request)) end
    if f.rpc.response then indented(lines, "  ", "last RPC response: " .. cut(f.rpc.response)) end
  end
  for _, t in ipairs(f.tails) do
    local tl = type(t.lines) == "table" and t.lines or {}
    local head = ("  %s: last %d lines"):format(tostring(t.name), #tl)
    if #tl == 0 then head = ("  %s: no output"):format(tostring(t.name)) end
    if t.log then head = head .. " (full log: " .. tostring(t.log) .. ")" end
    lines[#lines + 1] = head
    for _, l in ipairs(tl) do lines[#lines + 1] = "    | " .. tostring(l) end
  end
  return lines
end

function M:_test_end(ev)
  local name, v = tostring(ev.name), self.verbose
  if ev.status == "passed" then
    if v < 0 then return end
    self:_lines({ self:_paint("green", "✓") .. " " .. name .. " "
      .. self:_paint("dim", "(" .. common.secs(ev.duration) .. ")") })
  elseif ev.status == "skipped" then
    if v < 0 then return end
    local why = ev.reason and (": " .. tostring(ev.reason)) or ""
    self:_lines({ self:_paint("yellow", "-") .. " " .. name .. " (skipped" .. why .. ")" })
  else
    local lines = { self:_paint("red", "✗") .. " " .. name .. " "
      .. self:_paint("dim", "(" .. common.secs(ev.duration) .. ")") }
    for _, l in ipairs(M.failure_block(ev)) do lines[#lines + 1] = l end
    self:_lines(lines)
  end
end

local function argv_text(argv)
  if type(argv) ~= "table" then return "" end
  local parts = {}
  for _, a in ipairs(argv) do parts[#parts + 1] = tostring(a) end
  return table.concat(parts, " ")
end

--- Consume one SPEC §8 event (private `_` fields included).
---@param ev table
function M:on_event(ev)
  local ty, v = ev.type, self.verbose
  if ty == "test_end" then
    self:_test_end(ev)
  elseif ty == "scenario_end" and ev.status == "error" and not ev._quiet then
    local lines = { self:_paint("red", "✗") .. " (scenario) " .. tostring(ev.file) }
    for _, l in ipairs(M.failure_block(ev)) do lines[#lines + 1] = l end
    self:_lines(lines)
  elseif ty == "scenario_start" and (v >= 1 or (self.headers and v >= 0)) then
    self:_lines({ self:_paint("dim", "▸▸ " .. tostring(ev.file)) })
  elseif v >= 1 then
    if ty == "test_start" then
      self:_lines({ self:_paint("dim", "▸ " .. tostring(ev.name)) })
    elseif ty == "process_spawn" then
      self:_lines({ self:_paint("dim", ("  [%s] spawned pid %s: %s"):format(
        tostring(ev.name), tostring(ev.pid), argv_text(ev.argv))) })
    elseif ty == "process_exit" then
      -- a missing code or signal arrives as JSON null (a light userdata)
      local how = type(ev.signal) == "string" and ev.signal ~= "" and ("signal " .. ev.signal)
        or ("code " .. (math.type(ev.code) and tostring(ev.code) or "?"))
      self:_lines({ self:_paint("dim", ("  [%s] pid %s exited: %s%s"):format(tostring(ev.name),
        tostring(ev.pid), how, ev.expected == false and " (unexpected)" or "")) })
    end
  end
end

--- Output of `print` / io.write from scenarios: clears the live line first.
---@param s string
function M:write_user(s)
  s = tostring(s)
  if s == "" then return end
  if self._live_shown then self.out:write(CLEAR_LINE); self._live_shown = false end
  self.out:write(s)
  self._partial = s:sub(-1) ~= "\n"
  self:_flush()
end

-- Characters (not bytes) of a valid UTF-8 string, for fitting the live line.
local function ulen(s) return utf8.len(s) end

--- Redraw the live status line (a no-op unless live). Called by the runner
--- about once a second.
---@param status table {elapsed = seconds, tests = {names running}, procs = integer, hide = true: clear it}
function M:tick(status)
  -- A user's unfinished line would be erased by "\r\27[K"; wait for its "\n".
  if not self.live then return end
  if status and status.hide then -- a child writes to the terminal (os.execute, io.popen)
    if self._live_shown then
      self.out:write(CLEAR_LINE)
      self._live_shown = false
      self:_flush()
    end
    return
  end
  if self._partial then return end
  status = status or {}
  local tail = ""
  local n = status.procs or 0
  if n > 0 then tail = (" (%d process%s)"):format(n, n == 1 and "" or "es") end
  local line = ("⋯ %.1fs"):format(tonumber(status.elapsed) or 0)
  local tests = status.tests or {}
  if #tests > 0 then
    local names = common.utf8_repair(table.concat(tests, ", "))
    local room = self.width - 1 - ulen(line) - #" running: " - ulen(tail)
    if ulen(names) > room then
      names = names:sub(1, utf8.offset(names, math.max(room, 1)) - 1) .. "…"
    end
    line = line .. " running: " .. names
  end
  self.out:write(CLEAR_LINE .. line .. tail)
  self._live_shown = true
  self:_flush()
end

--- The command that re-runs with `seed` (see atom.report.common).
M.rerun_command = common.rerun_command

local REASONS = { timeout = "timed out", SIGINT = "interrupted by SIGINT",
  SIGTERM = "interrupted by SIGTERM", SIGHUP = "interrupted by SIGHUP",
  ["fail-fast"] = "stopped by --fail-fast", ["scenario-error"] = "scenario error" }

--- Print the closing lines: run directory, reason (when the run stopped
--- early), seed line, and "N passed, M failed" — always the last line.
---@param summary table {passed=, failed=, skipped=, reason=, reason_text=, seed=, argv=, run_dir=}
function M:finish(summary)
  local lines = {}
  if summary.run_dir then lines[#lines + 1] = "run directory: " .. tostring(summary.run_dir) end
  if summary.reason_text or (summary.reason and summary.reason ~= "done") then
    local text = summary.reason_text or REASONS[summary.reason] or tostring(summary.reason)
    lines[#lines + 1] = self:_paint("red", text)
  end
  if summary.seed ~= nil then
    local seed = math.type(summary.seed) == "float" and ("%.0f"):format(summary.seed)
      or tostring(summary.seed)
    lines[#lines + 1] = ("seed %s: %s"):format(seed, common.rerun_command(summary.argv, seed))
  end
  local failed, skipped = summary.failed or 0, summary.skipped or 0
  local close = ("%d passed, %d failed"):format(summary.passed or 0, failed)
  if skipped > 0 then close = close .. (", %d skipped"):format(skipped) end
  if summary.shard then close = close .. (" (shard %d/%d)"):format(summary.shard[1], summary.shard[2]) end
  lines[#lines + 1] = self:_paint(failed > 0 and "red" or "green", close)
  self:_lines(lines)
end

return M
