-- End-to-end: `atomlua trace --reactor R.lua TRACE|DIR...` (SPEC §6, §8;
-- issue 6). The bank example replays against a real redis-server; the counter
-- fixtures (spec/fixtures/trace/) keep the rest fast. Their reactor appends
-- what ran to $TRACE_LOG, so a spec can prove what did not run.
local cli = require "support.cli"
local cjson = require "cjson"
local S, q = cli.scenario, cli.q
local lines, last_line, slurp, plain = cli.lines, cli.last_line, cli.slurp, cli.plain

local FIX = "spec/fixtures/trace/"
local BANK = "scenarios/bank/"


-- The names of the tests the console reported, in order, with their glyph.
local function outcomes(out)
  local list = {}
  for l in out:gmatch("[^\n]+") do
    -- not a [✓✗] class: Lua patterns work on bytes, the glyphs are UTF-8
    for _, glyph in ipairs({ "✓", "✗" }) do
      local name = l:match("^" .. glyph .. " (%S+) %(")
      if name then list[#list + 1] = glyph .. " " .. name end
    end
  end
  return list
end

local function events(path)
  local list = {}
  for _, l in ipairs(lines(slurp(path) or "")) do list[#list + 1] = cjson.decode(l) end
  return list
end

-- A fresh work directory per test: run directories, reports and the log.
local work, log
before_each(function()
  work = os.tmpname()
  os.remove(work)
  assert(os.execute("mkdir -p " .. q(work)))
  log = work .. "/log"
end)
after_each(function() os.execute("rm -rf " .. q(work)) end)

local function trace(args)
  local full = { "trace", "--workdir", work .. "/runs" }
  for _, a in ipairs(args) do full[#full + 1] = a end
  return cli.run(full, { env = "TRACE_LOG=" .. q(log) })
end

describe("atomlua trace, the bank example against redis-server", function()
  it("passes every trace (Quint's qualified names, Apalache's action record) and stops redis", function()
    local ev = work .. "/e.ndjson"
    local r = trace({ "--reactor", BANK .. "reactor.lua", "--events", ev, BANK .. "traces" })
    assert.equals(0, r.code, r.out .. r.err)
    assert.same({
      "✓ scenarios/bank/traces/apalache_1.itf.json",
      "✓ scenarios/bank/traces/quint_0.itf.json",
      "✓ scenarios/bank/traces/quint_1.itf.json",
      "✓ scenarios/bank/traces/quint_2.itf.json",
    }, outcomes(r.out))
    assert.equals("4 passed, 0 failed", last_line(r.out))
    -- One redis for the whole run, on 127.0.0.1, stopped by atomlua when it ended.
    local spawned, exited = {}, {}
    for _, e in ipairs(events(ev)) do
      if e.type == "process_spawn" then spawned[#spawned + 1] = e end
      if e.type == "process_exit" then exited[#exited + 1] = e end
    end
    assert.equals(1, #spawned)
    assert.equals("redis-server", spawned[1].argv[1])
    assert.truthy(table.concat(spawned[1].argv, " "):find("--bind 127.0.0.1", 1, true))
    assert.equals(1, #exited)
    assert.is_true(exited[1].expected)
    assert.is_falsy(os.execute("kill -0 " .. math.tointeger(spawned[1].pid) .. " 2>/dev/null"))
  end)

  it("a wrong step fails its trace at that step, 1-based and by #meta.index, with the model state", function()
    local ev = work .. "/e.ndjson"
    local r = trace({ "--reactor", FIX .. "bank_buggy.lua", "--events", ev, BANK .. "traces" })
    assert.equals(1, r.code, r.out .. r.err)
    assert.equals("0 passed, 4 failed", last_line(r.out))
    -- The first transfer to charlie in each trace is where redis disagrees.
    for _, want in ipairs({
      "apalache_1.itf.json, step 3 (#meta.index 2), action Transfer: check: balances: at .charlie: expected 90, got 89",
      "quint_0.itf.json, step 4 (#meta.index 3), action Transfer: check: balances: at .charlie: expected 66, got 65",
      "quint_1.itf.json, step 5 (#meta.index 4), action Transfer: check: balances: at .charlie: expected 66, got 65",
      "quint_2.itf.json, step 6 (#meta.index 5), action Transfer: check: balances: at .charlie: expected 17, got 16",
    }) do
      assert.matches("trace scenarios/bank/traces/" .. plain(want), r.out)
    end
    -- The model state of the failing step, as the model has it.
    assert.truthy(r.out:find('model state: {["bank3::bank::balances"] = Map("alice" -> 77, "bob" -> 7, '
      .. '"charlie" -> 66)', 1, true))
    assert.truthy(r.out:find('model state: {action = {amount = 90, receiver = "charlie", sender = "bob", '
      .. 'tag = "Transfer"}', 1, true))
    local pid
    for _, e in ipairs(events(ev)) do if e.type == "process_spawn" then pid = e.pid end end
    assert.is_falsy(os.execute("kill -0 " .. math.tointeger(pid) .. " 2>/dev/null"))
  end)
end)

describe("atomlua trace", function()
  it("names the failing step by its 1-based position and its own #meta.index", function()
    local r = trace({ "--reactor", FIX .. "counter_buggy.lua", FIX .. "offset.itf.json" })
    assert.equals(1, r.code, r.out .. r.err)
    assert.matches("trace spec/fixtures/trace/offset.itf.json, step 3 %(#meta.index 12%), action Add: "
      .. "check: n: expected 4, got 3\n", r.out)
    assert.matches("model state: {%[\"mbt::actionTaken\"%] = \"Add\", .*n = 4}", r.out)
  end)

  it("fails a trace whose action has no step before setup runs, listing the known steps", function()
    local r = trace({ "--reactor", FIX .. "counter_init_only.lua", FIX .. "offset.itf.json", FIX .. "counter" })
    assert.equals(1, r.code, r.out .. r.err)
    assert.equals("0 passed, 3 failed", last_line(r.out))
    assert.matches('trace spec/fixtures/trace/offset.itf.json, state 2 %(#meta.index 11%): '
      .. 'no step for action "Add"; known steps: init', r.out)
    assert.equals("top\n", slurp(log)) -- no setup, no step
  end)

  it("exits 2 on a malformed trace among good ones, naming it, before anything runs", function()
    local r = trace({ "--reactor", FIX .. "counter.lua", FIX .. "counter", FIX .. "malformed" })
    assert.equals(2, r.code, r.out .. r.err)
    assert.matches("spec/fixtures/trace/malformed/b%.itf%.json: states%[2%]%.n", r.err)
    assert.same({}, outcomes(r.out))
    assert.is_nil(slurp(log)) -- not even the reactor's top-level code ran
  end)

  it("searches a directory recursively for *.itf.json, sorted by path", function()
    local r = trace({ "--reactor", FIX .. "counter.lua", FIX .. "nested/" })
    assert.equals(0, r.code, r.out .. r.err)
    assert.same({
      "✓ spec/fixtures/trace/nested/a/b/c.itf.json",
      "✓ spec/fixtures/trace/nested/a/z.itf.json",
      "✓ spec/fixtures/trace/nested/b.itf.json",
    }, outcomes(r.out))
    -- ctx.index counts the traces of the whole run; setup's defer runs when each ends.
    assert.equals(table.concat({ "top",
      "setup 1 spec/fixtures/trace/nested/a/b/c.itf.json", "init", "Add",
      "defer spec/fixtures/trace/nested/a/b/c.itf.json",
      "setup 2 spec/fixtures/trace/nested/a/z.itf.json", "init", "Add",
      "defer spec/fixtures/trace/nested/a/z.itf.json",
      "setup 3 spec/fixtures/trace/nested/b.itf.json", "init", "Add",
      "defer spec/fixtures/trace/nested/b.itf.json", "" }, "\n"), slurp(log))
  end)

  it("exits 2 when the reactor does not return a table with steps (after its top-level code)", function()
    local r = trace({ "--reactor", FIX .. "no_steps.lua", FIX .. "counter" })
    assert.equals(2, r.code, r.out .. r.err)
    assert.matches("reactor spec/fixtures/trace/no_steps%.lua: must return a table with a 'steps' table", r.err)
    assert.same({}, outcomes(r.out))
    assert.equals("top\n", slurp(log))
    assert.equals(2, trace({ "--reactor", S "return 42", FIX .. "counter" }).code)
    local bad = trace({ "--reactor", S "return { steps = { init = 1 } }", FIX .. "counter" })
    assert.equals(2, bad.code)
    assert.matches('step "init" must be a function', bad.err)
  end)

  it("an error in the reactor's top-level code is a scenario error: exit 3", function()
    local r = trace({ "--reactor", S "error('no system to test')", FIX .. "counter" })
    assert.equals(3, r.code, r.out .. r.err)
    assert.matches("no system to test", r.out)
    assert.same({}, outcomes(r.out))
  end)

  it("--junit has one testsuite per TRACE argument; --events has trace_step events", function()
    local junit, ev = work .. "/j.xml", work .. "/e.ndjson"
    local r = trace({ "--reactor", FIX .. "counter_buggy.lua", "--junit", junit, "--events", ev,
      FIX .. "counter", FIX .. "offset.itf.json" })
    assert.equals(1, r.code, r.out .. r.err)
    local xml = slurp(junit)
    local suites = {}
    for a in xml:gmatch("<testsuite%s([^>]*)>") do
      suites[#suites + 1] = { a:match('name="([^"]*)"'), a:match('tests="(%d+)"'), a:match('failures="(%d+)"') }
    end
    assert.same({ { FIX .. "counter", "2", "1" }, { FIX .. "offset.itf.json", "1", "1" } }, suites)
    assert.matches('<testcase name="spec/fixtures/trace/offset.itf.json" classname="spec/fixtures/trace/'
      .. 'counter_buggy.lua"[^>]*>%s*<failure message="trace [^"]*step 3 %(#meta.index 12%)', xml)
    -- Each trace: test_start, one trace_step per state reached, test_end.
    local seen = {}
    for _, e in ipairs(events(ev)) do
      if e.type == "test_start" or e.type == "test_end" then
        seen[#seen + 1] = e.type .. " " .. e.name
      elseif e.type == "trace_step" then
        seen[#seen + 1] = ("step %s %d %d %s"):format(e.trace, e.index, e.meta_index, e.action)
      end
    end
    local one, two, off = FIX .. "counter/one.itf.json", FIX .. "counter/two.itf.json", FIX .. "offset.itf.json"
    assert.same({
      "test_start " .. one, "step " .. one .. " 1 0 init", "step " .. one .. " 2 1 Add",
      "step " .. one .. " 3 2 Add", "test_end " .. one,
      "test_start " .. two, "step " .. two .. " 1 0 init", "step " .. two .. " 2 1 Add", "test_end " .. two,
      "test_start " .. off, "step " .. off .. " 1 10 init", "step " .. off .. " 2 11 Add",
      "step " .. off .. " 3 12 Add", "test_end " .. off,
    }, seen)
  end)

  it("--filter matches trace paths; no match exits 2", function()
    local r = trace({ "--reactor", FIX .. "counter.lua", "--filter", "two",
      FIX .. "counter", FIX .. "offset.itf.json" })
    assert.equals(0, r.code, r.out .. r.err)
    assert.same({ "✓ spec/fixtures/trace/counter/two.itf.json" }, outcomes(r.out))
    -- ctx.index is the position among all traces, filtered out or not
    assert.equals("top\nsetup 2 spec/fixtures/trace/counter/two.itf.json\ninit\nAdd\n"
      .. "defer spec/fixtures/trace/counter/two.itf.json\n", slurp(log))
    local none = trace({ "--reactor", FIX .. "counter.lua", "--filter", "nomatch", FIX .. "counter" })
    assert.equals(2, none.code)
    assert.matches('no test matched %-%-filter "nomatch"', none.err)
  end)

  it("the reactor's timeout bounds each trace; its cleanups run and the next trace goes on", function()
    local r = trace({ "--reactor", FIX .. "counter_slow.lua", FIX .. "counter" })
    assert.equals(1, r.code, r.out .. r.err)
    assert.same({ "✗ spec/fixtures/trace/counter/one.itf.json", "✓ spec/fixtures/trace/counter/two.itf.json" },
      outcomes(r.out))
    assert.matches('test "spec/fixtures/trace/counter/one.itf.json" timed out after 0.5s', r.out)
    assert.matches("\ndefer spec/fixtures/trace/counter/one.itf.json\nsetup 2 ", slurp(log))
  end)

  it("--fail-fast replays no trace after the first failure", function()
    local r = trace({ "--reactor", FIX .. "counter_buggy.lua", "--fail-fast",
      FIX .. "counter", FIX .. "offset.itf.json" })
    assert.equals(1, r.code, r.out .. r.err)
    assert.same({ "✗ spec/fixtures/trace/counter/one.itf.json" }, outcomes(r.out))
    assert.matches("stopped by %-%-fail%-fast", r.out)
  end)
end)
