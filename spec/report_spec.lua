-- Specs for the reporters (atom.report.console, .events, .junit): synthetic
-- event streams in, text / NDJSON / JUnit XML out. Pure Lua; the JUnit output
-- is validated with xmllint against spec/fixtures/junit.xsd.
package.path = "./lua/?.lua;./lua/?/init.lua;" .. package.path

local cjson = require("cjson")

-- atom.json is C code in the binary; outside it, stand in with a small encoder
-- that keeps atom.json's rules that matter here: json.array marks, json.null,
-- and an error on invalid UTF-8.
if not package.preload["atom.json"] and not pcall(require, "atom.json") then
  package.preload["atom.json"] = function()
    local J, arrays = { null = cjson.null }, setmetatable({}, { __mode = "k" })
    function J.array(t) arrays[t] = true; return t end
    local function enc(v, path)
      local ty = type(v)
      if v == cjson.null or v == nil then return "null" end
      if ty == "string" then
        if not utf8.len(v) then error("encode: invalid UTF-8 at " .. path) end
        return cjson.encode(v)
      elseif ty == "number" or ty == "boolean" then
        return math.type(v) == "integer" and ("%d"):format(v) or tostring(v)
      elseif ty == "table" then
        local n = 0
        for k in pairs(v) do
          if math.type(k) ~= "integer" or k < 1 then n = -1; break end
          n = math.max(n, k)
        end
        local parts = {}
        if arrays[v] or n > 0 then
          for i = 1, math.max(n, 0) do parts[i] = enc(v[i], path .. "[" .. i .. "]") end
          return "[" .. table.concat(parts, ",") .. "]"
        end
        for k, x in pairs(v) do
          parts[#parts + 1] = cjson.encode(tostring(k)) .. ":" .. enc(x, path .. "." .. tostring(k))
        end
        table.sort(parts)
        return "{" .. table.concat(parts, ",") .. "}"
      end
      error("encode: cannot encode " .. ty .. " at " .. path)
    end
    function J.encode(v) return enc(v, "") end
    J.decode = cjson.decode
    return J
  end
end

local console = require("atom.report.console")
local ndjson = require("atom.report.events")
local junit = require("atom.report.junit")
local errors = require("atom.errors")

-- A file-like sink that collects what is written.
local function sink()
  local s = { buf = {}, flushes = 0 }
  function s:write(...) for _, x in ipairs({ ... }) do self.buf[#self.buf + 1] = x end; return self end
  function s:flush() self.flushes = self.flushes + 1 end
  function s:text() return table.concat(self.buf) end
  function s:lines()
    local out = {}
    for l in self:text():gmatch("([^\n]*)\n") do out[#out + 1] = l end
    return out
  end
  return s
end

local function read(path)
  local f = assert(io.open(path, "rb"))
  local s = f:read("a")
  f:close()
  return s
end

local function sh(cmd)
  local p = assert(io.popen(cmd .. " 2>&1"))
  local out = p:read("a")
  local ok, _, code = p:close()
  return ok and 0 or code, out
end

-- {====================================================================
-- A failing test with every private field the runner may attach.

local function failed_test()
  local err = errors.new("assert", "at .height: expected 5, got 4",
    { where = "scen.lua:12", task = "commits" })
  err.traceback = table.concat({
    "stack traceback:",
    "\t[C]: in function 'error'",
    "\tlua/atom/assert.lua:40: in function 'atom.assert_eq'",
    "\tscen.lua:12: in function <scen.lua:10>",
    "\t(...tail calls...)",
    "\tlua/atom/test.lua:88: in function <lua/atom/test.lua:70>",
    "\tscen.lua:30: in main chunk",
  }, "\n")
  return {
    type = "test_end", t = 2.5, name = "commits", file = "scen.lua", status = "failed",
    duration = 1.2,
    _error = err, _where = "scen.lua:12", _task = "commits", _traceback = err.traceback,
    _tails = { { name = "n1", lines = { "starting", "listening on 26657" },
                 log = ".atomlua/runs/x/logs/n1.log" } },
    _forensics = { 'n2/1 cancelled while waiting for n2 to print "committed" (1.2s)' },
    _cleanup_errors = { "scen.lua:20: cleanup went wrong" },
    _last_rpc = { request = '{"method":"status"}', response = '{"result":{"height":4}}' },
  }
end

local function stream()
  return {
    { type = "run_start", t = 0, version = "0.1.0", argv = { "run", "scen.lua" }, seed = 42 },
    { type = "scenario_start", t = 0.01, file = "scen.lua" },
    { type = "process_spawn", t = 0.02, name = "n1", pid = 4242, argv = { "mynode", "--port", "1" } },
    { type = "test_start", t = 0.1, name = "status answers", file = "scen.lua" },
    { type = "test_end", t = 0.52, name = "status answers", file = "scen.lua",
      status = "passed", duration = 0.42 },
    { type = "test_start", t = 1.3, name = "commits", file = "scen.lua" },
    failed_test(),
    { type = "test_end", t = 2.6, name = "later", file = "scen.lua", status = "skipped",
      reason = "needs docker" },
    { type = "process_exit", t = 2.7, name = "n1", pid = 4242, code = 0, expected = true },
    { type = "scenario_end", t = 2.8, file = "scen.lua", status = "ok" },
  }
end

local SUMMARY = { passed = 1, failed = 1, skipped = 1, exit = 1, reason = "done", seed = 42,
  argv = { "run", "--timeout", "60", "scen.lua" }, run_dir = ".atomlua/runs/x" }

-- }====================================================================

describe("console reporter", function()
  local function run(opts, events, summary)
    local out = sink()
    opts = opts or {}
    opts.out = out
    local c = console.new(opts)
    for _, ev in ipairs(events or stream()) do c:on_event(ev) end
    c:finish(summary or SUMMARY)
    return out, c
  end

  it("prints one line per test with its glyph and duration", function()
    local text = run():text()
    assert.truthy(text:find("✓ status answers (0.42s)\n", 1, true))
    assert.truthy(text:find("✗ commits (1.20s)\n", 1, true))
    assert.truthy(text:find("- later (skipped: needs docker)\n", 1, true))
    assert.is_nil(text:find("\27", 1, true))
  end)

  it("prints the failure block after the failed test's line", function()
    local lines = run():lines()
    local i
    for k, l in ipairs(lines) do if l == "✗ commits (1.20s)" then i = k end end
    assert.truthy(i)
    local block = table.concat(lines, "\n", i + 1)
    assert.equal("  scen.lua:12: at .height: expected 5, got 4", lines[i + 1])
    assert.equal("  task: commits", lines[i + 2])
    assert.truthy(block:find("  traceback:\n    scen.lua:12: in function <scen.lua:10>\n"
      .. "    scen.lua:30: in main chunk\n", 1, true))
    assert.is_nil(block:find("lua/atom/", 1, true))
    assert.is_nil(block:find("[C]", 1, true))
    assert.truthy(block:find("cleanup error: scen.lua:20: cleanup went wrong", 1, true))
    assert.truthy(block:find('note: n2/1 cancelled while waiting for n2 to print "committed" (1.2s)', 1, true))
    assert.truthy(block:find('last RPC request: {"method":"status"}', 1, true))
    assert.truthy(block:find('last RPC response: {"result":{"height":4}}', 1, true))
    assert.truthy(block:find("n1: last 2 lines (full log: .atomlua/runs/x/logs/n1.log)\n"
      .. "    | starting\n    | listening on 26657\n", 1, true))
  end)

  it("strips a string error's own position when it repeats where", function()
    local ev = { type = "test_end", name = "s", file = "a.lua", status = "failed", duration = 0,
      _error = "a.lua:3: plain boom", _where = "a.lua:3", _task = "s" }
    local lines = run({}, { ev }):lines()
    assert.equal("  a.lua:3: plain boom", lines[2])
  end)

  it("indents every line of a multi-line message", function()
    local ev = { type = "test_end", name = "d", file = "a.lua", status = "failed", duration = 0,
      _error = errors.new("deadlock", "deadlock:\nt3 waiting in ev:wait() at s.lua:12",
        { where = "a.lua:9" }) }
    local lines = run({}, { ev }):lines()
    assert.equal("  a.lua:9: deadlock:", lines[2])
    assert.equal("  t3 waiting in ev:wait() at s.lua:12", lines[3])
  end)

  it("heads a scenario error block with (scenario) and the file", function()
    local ev = { type = "scenario_end", t = 1, file = "a.lua", status = "error",
      _error = errors.new("process", "process n1 (pid 9) exited unexpectedly: code 1",
        { where = "a.lua:4", task = "main", traceback = "stack traceback:\n\t[C]: in ?" }),
      _tails = { { name = "n1", lines = { "panic" }, log = "r/logs/n1.log" } } }
    local lines = run({}, { ev }, { passed = 0, failed = 0, skipped = 0, reason = "scenario-error",
      reason_text = "scenario error in a.lua", seed = 7, argv = { "run", "a.lua" } }):lines()
    assert.equal("✗ (scenario) a.lua", lines[1])
    assert.equal("  a.lua:4: process n1 (pid 9) exited unexpectedly: code 1", lines[2])
    assert.equal("  task: main", lines[3])
    assert.equal("    | panic", lines[5])
    assert.equal("scenario error in a.lua", lines[#lines - 2])
  end)

  it("ends with the reason, the seed line and the closing line, last", function()
    local lines = run({}, stream(), { passed = 1, failed = 1, skipped = 1, exit = 124,
      reason = "timeout", reason_text = "timed out after 60s", seed = 42,
      argv = { "run", "--seed", "9", "--timeout", "60", "scen.lua" }, run_dir = "r/x" }):lines()
    local n = #lines
    assert.equal("1 passed, 1 failed, 1 skipped", lines[n])
    assert.equal("seed 42: atomlua run --seed 42 --timeout 60 scen.lua", lines[n - 1])
    assert.equal("timed out after 60s", lines[n - 2])
    assert.equal("run directory: r/x", lines[n - 3])
  end)

  it("prints the reason text of a run that went on to the end (a scenario error)", function()
    local lines = run({}, {}, { passed = 0, failed = 0, skipped = 0, reason = "done",
      reason_text = "scenario error in a.lua", seed = 1, argv = { "run", "a.lua" } }):lines()
    assert.equal("scenario error in a.lua", lines[#lines - 2])
  end)

  it("shows traceback frames only, not the message debug.traceback starts with", function()
    local common = require("atom.report.common")
    assert.same({ "s.lua:3: in function <s.lua:1>" },
      common.script_frames("s.lua:3: boom\nsecond line\nstack traceback:\n\t[C]: in ?\n"
        .. "\tlua/atom/task.lua:9: in function <lua/atom/task.lua:8>\n\ts.lua:3: in function <s.lua:1>"))
    -- a cancellation's cheap traceback is only its position: no frame
    assert.same({}, common.script_frames("s.lua:7"))
  end)

  it("omits skipped from the closing line when none were, and the reason when done", function()
    local lines = run({}, {}, { passed = 3, failed = 0, skipped = 0, reason = "done", seed = 1,
      argv = { "run", "a.lua" } }):lines()
    assert.same({ "seed 1: atomlua run --seed 1 a.lua", "3 passed, 0 failed" }, lines)
  end)

  it("re-inserts --seed in the re-run command", function()
    local rc = console.rerun_command
    assert.equal("atomlua run --seed 5 a.lua", rc({ "run", "--seed=3", "a.lua" }, 5))
    assert.equal("atomlua trace --seed 5 --reactor r.lua t", rc({ "trace", "--reactor", "r.lua",
      "--seed", "3", "t" }, 5))
    assert.equal("atomlua run --seed 5 --filter --seed a.lua -- --seed 1",
      rc({ "run", "--filter", "--seed", "a.lua", "--", "--seed", "1" }, 5))
    assert.equal("atomlua run --seed 5 --filter 'two words' 'it'\\''s.lua'",
      rc({ "run", "--filter", "two words", "it's.lua" }, 5))
  end)

  it("colours glyphs and dims durations only with color", function()
    local text = run({ color = true }):text()
    assert.truthy(text:find("\27[32m✓\27[0m status answers \27[2m(0.42s)\27[0m", 1, true))
    assert.truthy(text:find("\27[31m✗\27[0m commits", 1, true))
    assert.truthy(text:find("\27[33m-\27[0m later", 1, true))
  end)

  it("in quiet mode prints only failures and the closing lines", function()
    local lines = run({ verbose = -1 }):lines()
    local text = table.concat(lines, "\n")
    assert.is_nil(text:find("status answers", 1, true))
    assert.is_nil(text:find("later", 1, true))
    assert.truthy(text:find("✗ commits", 1, true))
    assert.equal("1 passed, 1 failed, 1 skipped", lines[#lines])
  end)

  it("in verbose mode also prints test starts and processes", function()
    local text = run({ verbose = 1 }):text()
    assert.truthy(text:find("▸ status answers\n", 1, true))
    assert.truthy(text:find("[n1] spawned pid 4242: mynode --port 1", 1, true))
    assert.truthy(text:find("[n1] pid 4242 exited: code 0\n", 1, true))
  end)

  it("draws the live line only when live, and clears it before other output", function()
    local out = sink()
    local c = console.new({ out = out, color = false })
    c:tick({ elapsed = 1, tests = { "a" }, procs = 1 })
    assert.equal("", out:text())

    out = sink()
    c = console.new({ out = out, color = true })
    c:tick({ elapsed = 3, tests = { "a", "b" }, procs = 2 })
    assert.equal("\r\27[K⋯ 3.0s running: a, b (2 processes)", out:text())
    c:write_user("hello\n")
    assert.equal("\r\27[K⋯ 3.0s running: a, b (2 processes)\r\27[Khello\n", out:text())
    c:tick({ elapsed = 4, tests = {}, procs = 1 })
    c:on_event({ type = "test_end", name = "a", status = "passed", duration = 1 })
    assert.truthy(out:text():find("⋯ 4.0s (1 process)\r\27[K\27[32m✓", 1, true))
  end)

  it("cuts a long live line to the width", function()
    local out = sink()
    local c = console.new({ out = out, color = true, width = 40 })
    c:tick({ elapsed = 1, tests = { string.rep("é", 50) }, procs = 0 })
    local line = out:text():sub(#"\r\27[K" + 1)
    assert.equal(39, utf8.len(line))
    assert.truthy(line:find("…$"))
  end)

  it("does not erase a user's unfinished line", function()
    local out = sink()
    local c = console.new({ out = out, color = true })
    c:write_user("progress: ")
    c:tick({ elapsed = 1, tests = { "a" }, procs = 0 })
    assert.equal("progress: ", out:text())
    c:on_event({ type = "test_end", name = "a", status = "passed", duration = 1 })
    assert.truthy(out:text():find("^progress: \n"))
  end)

  it("flushes its output", function()
    local out = run()
    assert.truthy(out.flushes > 0)
  end)
end)

describe("NDJSON events writer", function()
  local path
  before_each(function() path = os.tmpname() end)
  after_each(function() os.remove(path) end)

  local function parsed()
    local recs = {}
    for line in read(path):gmatch("([^\n]*)\n") do recs[#recs + 1] = cjson.decode(line) end
    return recs
  end

  local function no_private(v)
    if type(v) ~= "table" then return true end
    for k, x in pairs(v) do
      if type(k) == "string" and k:sub(1, 1) == "_" then return false end
      if not no_private(x) then return false end
    end
    return true
  end

  it("writes one parseable object per line with t and type, no private fields", function()
    local w = ndjson.new({ path = path })
    local evs = stream()
    evs[5].t = 0.05 -- goes back in time: must be clamped
    for _, ev in ipairs(evs) do w:on_event(ev) end
    w:finish(SUMMARY)
    local recs = parsed()
    assert.equal(#evs + 1, #recs) -- + run_end from the summary
    local last = 0
    for _, r in ipairs(recs) do
      assert.is_string(r.type)
      assert.is_number(r.t)
      assert.truthy(r.t >= last)
      last = r.t
      assert.truthy(no_private(r))
    end
    assert.equal(0.1, recs[5].t)
    local f = recs[7]
    assert.equal("failed", f.status)
    assert.same({ kind = "assert", message = "at .height: expected 5, got 4", file = "scen.lua",
      line = 12, task = "commits" }, f.error)
    assert.equal("needs docker", recs[8].reason)
    assert.same({ "run", "scen.lua" }, recs[1].argv)
    assert.equal(cjson.null, recs[9].signal)
    local e = recs[#recs]
    assert.equal("run_end", e.type)
    assert.equal(1, e.exit)
    assert.equal("done", e.reason)
  end)

  it("flushes each line as it is written", function()
    local w = ndjson.new({ path = path })
    w:on_event({ type = "run_start", t = 0, version = "x", argv = {}, seed = 1 })
    local s = read(path)
    assert.equal('run_start', cjson.decode(s:match("^[^\n]*")).type)
    assert.equal("[]", s:match('"argv":(%b[])'))
    w:finish({ passed = 0, failed = 0, skipped = 0, exit = 0, reason = "done" })
  end)

  it("does not repeat run_end", function()
    local w = ndjson.new({ path = path })
    w:on_event({ type = "run_end", t = 1, passed = 0, failed = 0, skipped = 0, exit = 0,
      reason = "done" })
    w:finish(SUMMARY)
    assert.equal(1, #parsed())
  end)

  it("repairs invalid UTF-8 and builds errors from strings", function()
    local w = ndjson.new({ path = path })
    w:on_event({ type = "test_end", t = 1, name = "bad\255name", file = "a.lua",
      status = "failed", duration = 0.1, _error = "a.lua:3: bytes \200\201", _where = "a.lua:3",
      _task = "bad" })
    w:on_event({ type = "http", t = 1, method = "GET", url = "http://x", duration = 0.1,
      error = errors.new("http", "GET http://x: connection refused", { where = "a.lua:5" }) })
    w:finish(SUMMARY)
    local recs = parsed()
    assert.equal("bad\u{FFFD}name", recs[1].name)
    assert.same({ kind = "error", message = "bytes \u{FFFD}\u{FFFD}", file = "a.lua", line = 3,
      task = "bad" }, recs[1].error)
    assert.equal(cjson.null, recs[2].status)
    assert.equal("http", recs[2].error.kind)
    assert.equal(5, recs[2].error.line)
  end)

  it("raises a clear error when the file cannot be opened", function()
    local ok, err = pcall(ndjson.new, { path = "/nonexistent-dir/ev.ndjson" })
    assert.is_false(ok)
    assert.truthy(tostring(err):find("cannot open events file: /nonexistent%-dir/ev.ndjson"))
  end)
end)

describe("JUnit reporter", function()
  local path, xsd = nil, "spec/fixtures/junit.xsd"
  before_each(function() path = os.tmpname() end)
  after_each(function() os.remove(path) end)

  local function write(events, summary)
    local j = junit.new({ path = path, start_time = 1700000000 })
    for _, ev in ipairs(events) do j:on_event(ev) end
    j:finish(summary or SUMMARY)
    return read(path)
  end

  local function validate()
    local code, out = sh(("xmllint --noout --schema %s %s"):format(xsd, path))
    assert.equal(0, code, out)
  end

  local function xpath(expr)
    local _, out = sh(("xmllint --xpath %q %s"):format(expr, path))
    return (out:gsub("\n$", "")) -- xmllint ends its answer with a newline
  end

  it("writes one valid testsuite per file with the right counts", function()
    local evs = stream()
    evs[#evs + 1] = { type = "scenario_start", t = 3, file = "b.lua" }
    evs[#evs + 1] = { type = "test_end", t = 4, name = "slow", file = "b.lua", status = "failed",
      duration = 1, _error = errors.new("timeout", 'test "slow" timed out after 1s',
        { where = "b.lua:2" }) }
    evs[#evs + 1] = { type = "scenario_end", t = 5, file = "b.lua", status = "error",
      _error = "b.lua:9: top-level boom", _where = "b.lua:9", _task = "main" }
    local xml = write(evs)
    validate()
    assert.truthy(xml:find('<testsuite name="scen.lua" tests="3" failures="1" errors="0" skipped="1"', 1, true))
    assert.truthy(xml:find('<testsuite name="b.lua" tests="2" failures="0" errors="2" skipped="0"', 1, true))
    assert.truthy(xml:find('<testsuites name="atomlua" tests="5" failures="1" errors="2"', 1, true))
    assert.equal("5", xpath("count(//testcase)"):match("%d+"))
    assert.truthy(xml:find('<testcase name="status answers" classname="scen.lua" time="0.420"/>', 1, true))
    assert.truthy(xml:find('<failure message="at .height: expected 5, got 4" type="assert">', 1, true))
    assert.truthy(xml:find('<error message="test &quot;slow&quot; timed out after 1s" type="timeout">', 1, true))
    assert.truthy(xml:find('<testcase name="(scenario)" classname="b.lua" time="2.000">', 1, true))
    assert.truthy(xml:find('<error message="top-level boom" type="error">b.lua:9: top-level boom', 1, true))
    assert.truthy(xml:find('<skipped message="needs docker"/>', 1, true))
    assert.truthy(xml:find('<property name="seed" value="42"/>', 1, true))
    local out = xpath('string(//testcase[@name="commits"]/system-out)')
    assert.truthy(out:find("== n1: last 2 lines (full log: .atomlua/runs/x/logs/n1.log)\nstarting\n", 1, true))
    assert.truthy(out:find("note: n2/1 cancelled", 1, true))
    local body = xpath('string(//testcase[@name="commits"]/failure)')
    assert.truthy(body:find("task: commits\ntraceback:\n  scen.lua:12:", 1, true))
    assert.is_nil(io.open(path .. ".tmp", "r"))
  end)

  it("groups traces by suite", function()
    local evs = {
      { type = "test_end", t = 1, name = "traces/a/1.itf.json", file = "reactor.lua",
        suite = "traces/a", status = "passed", duration = 0.5 },
      { type = "test_end", t = 2, name = "traces/b.itf.json", file = "reactor.lua",
        suite = "traces/b.itf.json", status = "passed", duration = 0.5 },
      { type = "test_end", t = 3, name = "traces/a/2.itf.json", file = "reactor.lua",
        suite = "traces/a", status = "passed", duration = 0.5 },
    }
    local xml = write(evs)
    validate()
    assert.truthy(xml:find('<testsuite name="traces/a" tests="2"', 1, true))
    assert.truthy(xml:find('<testsuite name="traces/b.itf.json" tests="1"', 1, true))
    assert.truthy(xml:find('classname="reactor.lua"', 1, true))
  end)

  it("escapes special characters, control bytes and invalid UTF-8", function()
    local nasty = "a<b & c>d \"q\" 'x' ]]> \27[31mred\0 \1 bad\255\254 \239\191\191 end"
    local evs = {
      { type = "test_end", t = 1, name = nasty, file = "e&<.lua", status = "failed",
        duration = 0.1, _error = errors.new("assert", nasty .. "\nsecond line",
          { where = "e.lua:1" }),
        _tails = { { name = "n<1>", lines = { nasty, "]]>" }, log = "l&.log" } } },
      { type = "test_end", t = 1, name = "skip]]>", file = "e&<.lua", status = "skipped",
        reason = nasty },
    }
    local xml = write(evs)
    validate()
    assert.is_nil(xml:find("]]>", 1, true))
    assert.is_nil(xml:find("[%z\1-\8\11\12\14-\31]"))
    assert.truthy(utf8.len(xml))
    -- The message attribute reads back as the message, repaired.
    local want = "a<b & c>d \"q\" 'x' ]]> \\x1B[31mred\\x00 \\x01 bad\u{FFFD}\u{FFFD} \u{FFFD} end"
    local got = xpath('string(//failure/@message)')
    assert.equal(want .. "\nsecond line", got)
    assert.truthy(xpath("string(//system-out)"):find(want, 1, true))
  end)

  it("writes a valid empty report", function()
    write({}, { passed = 0, failed = 0, skipped = 0, reason = "done" })
    validate()
  end)

  it("raises a clear error for a path it cannot write", function()
    local ok, err = pcall(junit.new, { path = "/nonexistent-dir/r.xml" })
    assert.is_false(ok)
    assert.truthy(tostring(err):find("cannot write JUnit report", 1, true))
  end)
end)
