-- atom.report.junit: the `--junit PATH` report (SPEC §8) in the Jenkins/Ant
-- JUnit schema. It collects test outcomes from events and writes the whole
-- file once, at finish, through PATH.tmp and a rename so readers never see
-- half a report. All text is escaped; no CDATA, so "]]>" needs no care.
local common = require("atom.report.common")

local M = {}
M.__index = M
-- The CLI writes this report before it emits run_end, so that run_end's
-- exit status includes a failure to write it.
M.before_run_end = true

-- {====================================================================
-- XML text

-- Bytes XML 1.0 forbids (C0 controls other than \t \n \r), shown as "\xNN"
-- so an ANSI colour code in a process log stays readable.
local function control(c) return ("\\x%02X"):format(c:byte()) end

local TEXT = { ["&"] = "&amp;", ["<"] = "&lt;", [">"] = "&gt;", ["\r"] = "&#13;" }
local ATTR = { ["&"] = "&amp;", ["<"] = "&lt;", [">"] = "&gt;", ['"'] = "&quot;",
  ["'"] = "&apos;", ["\t"] = "&#9;", ["\n"] = "&#10;", ["\r"] = "&#13;" }

-- Valid UTF-8 without the characters XML 1.0 excludes.
local function xml_chars(s)
  s = common.utf8_repair(tostring(s))
  s = s:gsub("[%z\1-\8\11\12\14-\31]", control)
  return (s:gsub("\239\191[\190\191]", "\u{FFFD}")) -- U+FFFE, U+FFFF
end

--- Escape `s` for XML character data.
---@param s any
function M.text(s) return (xml_chars(s):gsub("[&<>\r]", TEXT)) end

--- Escape `s` for a double-quoted XML attribute (whitespace kept as references).
---@param s any
function M.attr(s) return (xml_chars(s):gsub("[&<>\"'\t\n\r]", ATTR)) end

-- }====================================================================

-- Where the report goes: PATH itself, or the file a symlink at PATH points
-- to (written through, the link stays), and that file's type ("file", a
-- device...; nil when it does not exist yet). Without luv (a stock Lua
-- loading this module alone) PATH is taken as it is.
local function resolve(path)
  local ok, uv = pcall(require, "luv")
  if not ok then return path, nil end
  local st = uv.fs_stat(path) -- follows symlinks
  if st then
    if st.type == "file" then return uv.fs_realpath(path) or path, "file" end
    return path, st.type
  end
  local target = uv.fs_readlink(path) -- a dangling symlink: create what it names
  if not target then return path, nil end
  if target:sub(1, 1) ~= "/" then target = (path:match("^(.*/)") or "") .. target end
  return target, nil
end

-- Write `text` to an open file, checking the write, the flush and the close
-- (a full disk often shows only at the last two). Returns true or nil, why.
local function write_all(f, text)
  local ok, err = f:write(text)
  if ok then ok, err = f:flush() end
  local cok, cerr = f:close()
  if not ok then return nil, err end
  if not cok then return nil, cerr end
  return true
end

--- A JUnit reporter writing `opts.path` at finish. Fails at once (raising a
--- string error) when PATH.tmp cannot be created, so a bad path is found before
--- the run rather than after it.
---@param opts table {path = string, start_time = epoch seconds of t = 0 (now),
---  name = name of <testsuites> ("atomlua")}
function M.new(opts)
  local path = opts and opts.path
  if type(path) ~= "string" then error("atom.report.junit.new: opts.path must be a string", 2) end
  local target, kind = resolve(path)
  if kind == "directory" then error(("cannot write JUnit report %s: Is a directory"):format(path), 0) end
  if kind == nil or kind == "file" then
    local f, msg = io.open(target .. ".tmp", "w")
    if not f then error(("cannot write JUnit report: %s"):format(msg or path), 0) end
    f:close()
    os.remove(target .. ".tmp")
  end
  return setmetatable({ path = path, start_time = opts.start_time or os.time(),
    name = opts.name or "atomlua", suites = {}, by_key = {}, file_t0 = {} }, M)
end

function M:_suite(key, t)
  local s = self.by_key[key]
  if not s then
    t = self.file_t0[key] or t or 0
    s = { name = key, cases = {}, tests = 0, failures = 0, errors = 0, skipped = 0,
          t0 = t, t1 = t }
    self.by_key[key] = s
    self.suites[#self.suites + 1] = s
  end
  return s
end

-- <failure> for assertions and the script's own errors, <error> for what the
-- runtime raised (timeouts, cancellations, deadlock, processes, ...).
local function is_failure(kind) return kind == "assert" or kind == "error" end

-- The body of <failure>/<error> and the <system-out> of a failed test.
local function failure_texts(ev)
  local f = common.failure(ev)
  local body = { common.error_line(f) }
  if f.task then body[#body + 1] = "task: " .. f.task end
  if #f.frames > 0 then
    body[#body + 1] = "traceback:"
    for _, fr in ipairs(f.frames) do body[#body + 1] = "  " .. fr end
  end
  for _, c in ipairs(f.cleanup) do body[#body + 1] = "cleanup error: " .. c end
  for _, a in ipairs(f.also) do body[#body + 1] = "also: " .. a end
  if f.rpc then
    if f.rpc.request then body[#body + 1] = "last RPC request: " .. tostring(f.rpc.request) end
    if f.rpc.response then body[#body + 1] = "last RPC response: " .. tostring(f.rpc.response) end
  end
  local out = {}
  for _, n in ipairs(f.forensics) do out[#out + 1] = "note: " .. n end
  for _, t in ipairs(f.tails) do
    local tl = type(t.lines) == "table" and t.lines or {}
    out[#out + 1] = ("== %s: last %d lines%s"):format(tostring(t.name), #tl,
      t.log and (" (full log: " .. tostring(t.log) .. ")") or "")
    for _, l in ipairs(tl) do out[#out + 1] = tostring(l) end
  end
  return f.error, table.concat(body, "\n"), #out > 0 and table.concat(out, "\n") or nil
end

local function add(suite, case, t)
  suite.cases[#suite.cases + 1] = case
  suite.tests = suite.tests + 1
  if case.kind == "failure" then suite.failures = suite.failures + 1
  elseif case.kind == "error" then suite.errors = suite.errors + 1
  elseif case.kind == "skipped" then suite.skipped = suite.skipped + 1 end
  if t and t > suite.t1 then suite.t1 = t end
end

--- Record test outcomes and scenario errors; other events only set times.
---@param ev table a SPEC §8 event with the runner's `_` fields
function M:on_event(ev)
  local ty, t = ev.type, tonumber(ev.t)
  if ty == "scenario_start" then
    self.file_t0[ev.file] = self.file_t0[ev.file] or t
  elseif ty == "test_end" then
    local suite = self:_suite(ev.suite or ev.file or "?", t and (t - (tonumber(ev.duration) or 0)))
    local case = { name = ev.name, classname = ev.file, time = tonumber(ev.duration) or 0 }
    if ev.status == "skipped" then
      case.kind, case.message = "skipped", ev.reason
    elseif ev.status == "failed" then
      local err
      err, case.body, case.out = failure_texts(ev)
      case.kind = is_failure(err.kind) and "failure" or "error"
      case.type, case.message = err.kind, err.message
    end
    add(suite, case, t)
  elseif ty == "scenario_end" then
    local key = ev.file or "?"
    if ev.status == "error" and not ev._quiet then
      local suite = self:_suite(key, t)
      local err, body, out = failure_texts(ev)
      local t0 = self.file_t0[key]
      add(suite, { name = "(scenario)", classname = ev.file, kind = "error",
        time = (t and t0) and (t - t0) or 0, type = err.kind, message = err.message,
        body = body, out = out }, t)
    elseif self.by_key[key] and t and t > self.by_key[key].t1 then
      self.by_key[key].t1 = t
    end
  end
end

local function secs(x) return ("%.3f"):format(tonumber(x) or 0) end

local function case_xml(buf, c)
  local open = ('    <testcase name="%s" classname="%s" time="%s"'):format(
    M.attr(c.name), M.attr(c.classname or ""), secs(c.time))
  if not c.kind then buf[#buf + 1] = open .. "/>"; return end
  buf[#buf + 1] = open .. ">"
  if c.kind == "skipped" then
    buf[#buf + 1] = c.message and ('      <skipped message="%s"/>'):format(M.attr(c.message))
      or "      <skipped/>"
  else
    buf[#buf + 1] = ('      <%s message="%s" type="%s">%s</%s>'):format(c.kind,
      M.attr(c.message), M.attr(c.type), M.text(c.body), c.kind)
    if c.out then buf[#buf + 1] = "      <system-out>" .. M.text(c.out) .. "</system-out>" end
  end
  buf[#buf + 1] = "    </testcase>"
end

--- The report as a string.
---@param summary table|nil {seed=, argv=} (for the properties)
function M:render(summary)
  summary = summary or {}
  local tot = { tests = 0, failures = 0, errors = 0, time = 0 }
  for _, s in ipairs(self.suites) do
    tot.tests, tot.failures = tot.tests + s.tests, tot.failures + s.failures
    tot.errors, tot.time = tot.errors + s.errors, math.max(tot.time, s.t1)
  end
  local buf = { '<?xml version="1.0" encoding="UTF-8"?>',
    ('<testsuites name="%s" tests="%d" failures="%d" errors="%d" time="%s">'):format(
      M.attr(self.name), tot.tests, tot.failures, tot.errors, secs(tot.time)) }
  local props = {}
  if summary.seed ~= nil then
    props[#props + 1] = { "seed", tostring(summary.seed) }
    props[#props + 1] = { "rerun", common.rerun_command(summary.argv, summary.seed) }
  end
  for i, s in ipairs(self.suites) do
    local stamp = os.date("%Y-%m-%dT%H:%M:%S", self.start_time + math.floor(s.t0))
    buf[#buf + 1] = ('  <testsuite name="%s" tests="%d" failures="%d" errors="%d" skipped="%d"'
      .. ' time="%s" timestamp="%s" id="%d">'):format(M.attr(s.name), s.tests, s.failures,
      s.errors, s.skipped, secs(math.max(s.t1 - s.t0, 0)), stamp, i - 1)
    if #props > 0 then
      buf[#buf + 1] = "    <properties>"
      for _, p in ipairs(props) do
        buf[#buf + 1] = ('      <property name="%s" value="%s"/>'):format(p[1], M.attr(p[2]))
      end
      buf[#buf + 1] = "    </properties>"
    end
    for _, c in ipairs(s.cases) do case_xml(buf, c) end
    buf[#buf + 1] = "  </testsuite>"
  end
  buf[#buf + 1] = "</testsuites>"
  return table.concat(buf, "\n") .. "\n"
end

--- Write the report: a regular file (or none yet) through PATH.tmp and a
--- rename, so readers never see half a report — next to the symlink's target
--- when PATH is a symlink, which stays. Anything else (a device, a FIFO) is
--- written in place and never replaced. Raises a string error naming PATH
--- when any write, flush, close or the rename fails.
---@param summary table the run summary (seed and argv are used)
function M:finish(summary)
  local target, kind = resolve(self.path)
  local function fail(why)
    error(("cannot write JUnit report %s: %s"):format(self.path, tostring(why)), 0)
  end
  if kind == "directory" then fail("Is a directory") end
  local text = self:render(summary)
  if kind ~= nil and kind ~= "file" then
    local f, msg = io.open(target, "w")
    if not f then fail(msg) end
    local ok, werr = write_all(f, text)
    if not ok then fail(werr) end
    return
  end
  local tmp = target .. ".tmp"
  local f, msg = io.open(tmp, "w")
  if not f then fail(msg) end
  local ok, werr = write_all(f, text)
  if ok then ok, werr = os.rename(tmp, target) end
  if not ok then
    os.remove(tmp)
    fail(werr)
  end
end

return M
