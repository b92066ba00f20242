-- atom.trace: collecting and decoding traces, checking reactors and replaying
-- traces (SPEC §6), with a stand-in for the atom module (atom.test and
-- atom.defer), so it runs under stock busted before the runtime exists.
-- Not ./lua/?/init.lua: other specs load the real `atom` from build/atom.so.
package.path = "./lua/?.lua;" .. package.path

-- atom.json is the real C module: spec/support/helper.lua loads build/atom.so
-- before any spec, and its package.preload has every embedded module.

local errors = require("atom.errors")
local events = require("atom.events")
local itf = require("atom.itf")
local uv = require("luv")

-- A stand-in for the runtime: atom.test runs fn at once and records the outcome;
-- atom.defer runs its functions when that test ends.
local tests, defers
local real_atom = require("atom")
local fake = setmetatable({
  test = function(name, fn, timeout)
    local my = {}
    defers = my
    local ok, err = pcall(fn)
    for i = #my, 1, -1 do my[i]() end
    tests[#tests + 1] = { name = name, ok = ok, err = err, timeout = timeout }
    return ok
  end,
  defer = function(fn) defers[#defers + 1] = fn end,
}, { __index = real_atom })

-- atom.trace is a library on the public API: it takes `atom` when loaded.
package.loaded.atom, package.loaded["atom.trace"] = fake, nil
local trace = require("atom.trace")
package.loaded.atom = real_atom

local seen_events
before_each(function()
  tests = {}
  seen_events = {}
  events.subscribe(function(ev) seen_events[#seen_events + 1] = ev end)
end)
after_each(function() events.unsubscribe_all() end)

-- A Quint-like trace of the given actions (one state each).
local function quint_trace(actions)
  local states = {}
  for i, a in ipairs(actions) do
    states[i] = ('{"#meta":{"index":%d},"x":{"#bigint":"%d"},"mbt::actionTaken":"%s"}'):format(
      i - 1, i * 10, a)
  end
  return itf.decode('{"vars":["x","mbt::actionTaken"],"states":[' .. table.concat(states, ",") .. "]}")
end

-- A reactor that logs every call into `log`.
local function logging_reactor(log, over)
  local r = {
    setup = function(ctx) log[#log + 1] = "setup " .. ctx.path .. " #" .. ctx.index end,
    steps = {
      init = function(_, state, prev)
        log[#log + 1] = ("init %d prev=%s"):format(state.x, prev and prev.x or "nil")
      end,
      Step = function(_, state, prev)
        log[#log + 1] = ("Step %d prev=%s"):format(state.x, prev and prev.x or "nil")
      end,
    },
    check = function(_, state) log[#log + 1] = "check " .. state.x end,
  }
  for k, v in pairs(over or {}) do r[k] = v end
  return trace.check_reactor(r, "r.lua")
end

describe("atom.trace.collect", function()
  local root
  before_each(function()
    root = os.tmpname()
    os.remove(root)
    assert(uv.fs_mkdir(root, tonumber("755", 8)))
    for _, d in ipairs({ "/b", "/a", "/a/deep" }) do assert(uv.fs_mkdir(root .. d, tonumber("755", 8))) end
    for _, f in ipairs({ "/z.itf.json", "/b/2.itf.json", "/b/1.itf.json", "/a/deep/x.itf.json",
      "/a/notes.txt", "/a/y.json", "/m.itf.json" }) do
      local h = assert(io.open(root .. f, "w"))
      h:write("{}")
      h:close()
    end
    assert(uv.fs_symlink(root, root .. "/a/loop"))
  end)
  after_each(function() os.execute("rm -rf '" .. root .. "'") end)

  it("searches directories recursively for *.itf.json, sorted by path", function()
    local files, from = trace.collect({ root .. "/" })
    assert.same({ root .. "/a/deep/x.itf.json", root .. "/b/1.itf.json", root .. "/b/2.itf.json",
      root .. "/m.itf.json", root .. "/z.itf.json" }, files)
    for _, f in ipairs(from) do assert.equal(root .. "/", f) end
  end)

  it("keeps files as given and the order of the arguments", function()
    local files, from = trace.collect({ root .. "/a/notes.txt", root .. "/b" })
    assert.same({ root .. "/a/notes.txt", root .. "/b/1.itf.json", root .. "/b/2.itf.json" }, files)
    assert.same({ root .. "/a/notes.txt", root .. "/b", root .. "/b" }, from)
  end)

  it("raises itf naming a missing path", function()
    local ok, err = pcall(trace.collect, { root .. "/nope" })
    assert.is_false(ok)
    assert.is_true(errors.is(err, "itf"))
    assert.matches(root .. "/nope", err.message, 1, true)
  end)
end)

describe("atom.trace.decode_all", function()
  it("decodes every file and names the malformed one", function()
    local all = trace.decode_all({ "scenarios/bank/traces/quint_1.itf.json" })
    assert.equal("scenarios/bank/traces/quint_1.itf.json", all[1].path)
    assert.equal(6, #all[1].trace.states)
    local bad = os.tmpname()
    local h = assert(io.open(bad, "w"))
    h:write('{"vars":[],"states":[{"x":{"#bigint":"1.5"}}]}')
    h:close()
    local ok, err = pcall(trace.decode_all, { "scenarios/bank/traces/quint_1.itf.json", bad })
    os.remove(bad)
    assert.is_false(ok)
    assert.is_true(errors.is(err, "itf"))
    assert.equal(bad .. ': states[1].x.#bigint: #bigint "1.5" is not a decimal integer', err.message)
  end)
end)

describe("atom.trace.check_reactor", function()
  local function rejects(r, needle)
    local ok, err = pcall(trace.check_reactor, r, "r.lua")
    assert.is_false(ok)
    assert.is_true(errors.is(err, "usage"))
    assert.matches(needle, err.message, 1, true)
    assert.matches("^reactor r.lua: ", err.message)
  end

  it("wants a table with a steps table of functions", function()
    rejects(nil, "must return a table with a 'steps' table, got nothing")
    rejects(5, "got number")
    rejects({}, "('steps' is nil)")
    rejects({ steps = { init = 1 } }, 'step "init" must be a function, got number')
    rejects({ steps = { [1] = function() end } }, "step names must be strings")
    rejects({ steps = {}, setup = "x" }, "'setup' must be a function")
    rejects({ steps = {}, check = {} }, "'check' must be a function")
    rejects({ steps = {}, action = 5 }, "'action' must be a key path")
    rejects({ steps = {}, action = "" }, "'action' must be a key path")
    rejects({ steps = {}, timeout = 0 }, "'timeout' must be a positive number")
    rejects({ steps = {}, timeout = "5" }, "'timeout' must be a positive number")
  end)

  it("returns a good reactor", function()
    local r = { steps = { init = function() end }, timeout = 5, action = "a.b" }
    assert.equal(r, trace.check_reactor(r, "r.lua"))
  end)
end)

describe("atom.trace.run", function()
  it("replays each trace as one test: setup, then step and check per state", function()
    local log = {}
    local r = logging_reactor(log)
    local t1 = quint_trace({ "init", "Step", "Step" })
    local t2 = quint_trace({ "init" })
    local results = trace.run(r, { { path = "t1.itf.json", trace = t1 }, { path = "t2.itf.json", trace = t2 } })
    assert.same({ true, true }, results)
    assert.same({
      "setup t1.itf.json #1", "init 10 prev=nil", "check 10", "Step 20 prev=10", "check 20",
      "Step 30 prev=20", "check 30",
      "setup t2.itf.json #2", "init 10 prev=nil", "check 10",
    }, log)
    assert.same({ "t1.itf.json", "t2.itf.json" }, { tests[1].name, tests[2].name })
    assert.is_nil(tests[1].timeout)
  end)

  it("hands ctx with trace, path and index to every call", function()
    local got = {}
    local t = quint_trace({ "init", "Step" })
    local r = trace.check_reactor({
      setup = function(ctx) ctx.mine = 1 end,
      steps = {
        init = function(ctx) got[#got + 1] = ctx end,
        Step = function(ctx) got[#got + 1] = ctx end,
      },
      check = function(ctx) got[#got + 1] = ctx end,
    }, "r.lua")
    trace.run(r, { { path = "a.itf.json", trace = t } })
    assert.equal(4, #got)
    for _, ctx in ipairs(got) do assert.equal(got[1], ctx) end
    assert.equal(t, got[1].trace)
    assert.equal("a.itf.json", got[1].path)
    assert.equal(1, got[1].index)
    assert.equal(1, got[1].mine)
  end)

  it("emits a trace_step event before each step", function()
    local order = {}
    events.subscribe(function(ev) order[#order + 1] = "event " .. ev.index end)
    local r = trace.check_reactor({ steps = {
      init = function() order[#order + 1] = "init" end,
      Step = function() order[#order + 1] = "Step" end,
    } }, "r.lua")
    trace.run(r, { { path = "a.itf.json", trace = quint_trace({ "init", "Step" }) } })
    assert.same({ "event 1", "init", "event 2", "Step" }, order)
    assert.equal(2, #seen_events)
    local ev = seen_events[2]
    assert.equal("trace_step", ev.type)
    assert.equal("a.itf.json", ev.trace)
    assert.equal(2, ev.index)
    assert.equal(1, ev.meta_index)
    assert.equal("Step", ev.action)
  end)

  it("passes the reactor's timeout to atom.test", function()
    local r = logging_reactor({}, { timeout = 7 })
    trace.run(r, { { path = "a.itf.json", trace = quint_trace({ "init" }) } })
    assert.equal(7, tests[1].timeout)
  end)

  it("reads the action at a dot-separated key path", function()
    local t = itf.decode([=[{"vars":["action","n"],"states":[
      {"#meta":{"index":0},"action":{"tag":"init"},"n":1},
      {"#meta":{"index":1},"action":{"tag":"Step","amount":5},"n":2}]}]=])
    local names = {}
    local r = trace.check_reactor({ action = "action.tag", steps = {
      init = function(_, s) names[#names + 1] = "init" .. s.n end,
      Step = function(_, s) names[#names + 1] = "Step" .. s.action.amount end,
    } }, "r.lua")
    assert.same({ true }, trace.run(r, { { path = "a", trace = t } }))
    assert.same({ "init1", "Step5" }, names)
    -- through an ITF map and a tuple too
    t = itf.decode([=[{"vars":["m"],"states":[{"m":{"#map":[["k",{"#tup":["x","init"]}]]}}]}]=])
    r = trace.check_reactor({ action = "m.k.2", steps = { init = function() end } }, "r.lua")
    assert.same({ true }, trace.run(r, { { path = "b", trace = t } }))
  end)

  it("accepts an action function", function()
    local t = quint_trace({ "init", "Step" })
    local r = logging_reactor({}, { action = function(state) return state.x == 10 and "init" or "Step" end })
    assert.same({ true }, trace.run(r, { { path = "a", trace = t } }))
  end)

  it("fails a trace before setup when the action function raises, naming the state", function()
    local log = {}
    local r = logging_reactor(log, { action = function(state)
      if state.x == 20 then error("no idea", 0) end
      return "init"
    end })
    assert.same({ false }, trace.run(r, { { path = "a", trace = quint_trace({ "init", "Step" }) } }))
    assert.same({}, log)
    assert.is_true(errors.is(tests[1].err, "usage"))
    assert.equal("trace a, state 2 (#meta.index 1): the reactor's action function failed: no idea",
      tests[1].err.message)
  end)

  it("fails a trace before setup when a state has no action", function()
    local log = {}
    local t = itf.decode([=[{"vars":["x"],"states":[
      {"#meta":{"index":0},"x":1,"mbt::actionTaken":"init"},{"#meta":{"index":1},"x":2}]}]=])
    local results = trace.run(logging_reactor(log), { { path = "a.itf.json", trace = t } })
    assert.same({ false }, results)
    assert.same({}, log)
    local err = tests[1].err
    assert.is_true(errors.is(err, "itf"))
    assert.equal('trace a.itf.json, state 2 (#meta.index 1): no action name at "mbt::actionTaken";'
      .. " known steps: Step, init", err.message)
  end)

  it("fails a trace before setup on an unknown action", function()
    local log = {}
    local results = trace.run(logging_reactor(log),
      { { path = "a.itf.json", trace = quint_trace({ "init", "Step", "Deposit" }) } })
    assert.same({ false }, results)
    assert.same({}, log)
    assert.is_true(errors.is(tests[1].err, "usage"))
    assert.equal('trace a.itf.json, state 3 (#meta.index 2): no step for action "Deposit";'
      .. " known steps: Step, init", tests[1].err.message)
  end)

  it("rejects an action name that is not a string", function()
    local t = itf.decode('{"vars":[],"states":[{"mbt::actionTaken":{"tag":"init"}}]}')
    trace.run(logging_reactor({}), { { path = "a", trace = t } })
    assert.matches('trace a, state 1: the action name must be a string, got {tag = "init"}',
      tests[1].err.message, 1, true)
  end)

  it("names trace, step, #meta.index and action on a step failure, with the model state", function()
    local r = logging_reactor({}, {})
    r.steps.Step = function(_, state) if state.x == 30 then error("boom", 0) end end
    local results = trace.run(r, {
      { path = "t1.itf.json", trace = quint_trace({ "init", "Step", "Step" }) },
      { path = "t2.itf.json", trace = quint_trace({ "init", "Step" }) },
    })
    assert.same({ false, true }, results)
    assert.equal('trace t1.itf.json, step 3 (#meta.index 2), action Step: boom\n'
      .. 'model state: {["mbt::actionTaken"] = "Step", x = 30}', tests[1].err)
  end)

  it("keeps atom error tables and their kind, prefixing the message", function()
    local r = logging_reactor({}, {
      check = function(_, state) require("atom.assert").assert_eq(state.x + 1, state.x, "x") end,
    })
    trace.run(r, { { path = "t.itf.json", trace = quint_trace({ "init" }) } })
    local err = tests[1].err
    assert.is_true(errors.is(err, "assert"))
    assert.equal('trace t.itf.json, step 1 (#meta.index 0), action init: check: x: expected 10, got 11\n'
      .. 'model state: {["mbt::actionTaken"] = "init", x = 10}', err.message)
  end)

  it("reports setup failures", function()
    local r = logging_reactor({}, { setup = function() error("no server", 0) end })
    trace.run(r, { { path = "t.itf.json", trace = quint_trace({ "init" }) } })
    assert.equal("trace t.itf.json, setup: no server", tests[1].err)
  end)

  it("lets cancellation through untouched", function()
    local cancel = errors.new("cancelled", "cancelled: run timed out after 1s")
    local r = logging_reactor({}, {})
    r.steps.init = function() error(cancel, 0) end
    trace.run(r, { { path = "t.itf.json", trace = quint_trace({ "init" }) } })
    assert.equal(cancel, tests[1].err)
    assert.equal("cancelled: run timed out after 1s", cancel.message)
  end)

  it("runs defers registered in setup and steps when the trace ends", function()
    local log = {}
    local r = trace.check_reactor({
      setup = function() fake.defer(function() log[#log + 1] = "setup defer" end) end,
      steps = { init = function() fake.defer(function() log[#log + 1] = "step defer" end) end },
    }, "r.lua")
    trace.run(r, { { path = "t", trace = quint_trace({ "init" }) } })
    assert.same({ "step defer", "setup defer" }, log)
  end)

  it("replays the bank traces with an in-memory bank", function()
    local bank
    local function args(state)
      local picks = state["mbt::nondetPicks"]
      if picks then return picks.sender.value, picks.receiver.value, picks.amount.value end
      return state.action.sender, state.action.receiver, state.action.amount
    end
    -- Quint's traces come from an instance: the variable is qualified.
    local function balances(state) return state.balances or state["bank3::bank::balances"] end
    local r = trace.check_reactor({
      action = function(state) return state["mbt::actionTaken"] or (state.action and state.action.tag) end,
      setup = function() bank = {} end,
      steps = {
        init = function(_, state) for k, v in balances(state):iter() do bank[k] = v end end,
        Transfer = function(_, state)
          local from, to, amount = args(state)
          assert(bank[from] >= amount, "insufficient")
          bank[from], bank[to] = bank[from] - amount, bank[to] + amount
        end,
      },
      check = function(_, state)
        local expected = {}
        for k, v in pairs(balances(state)) do expected[k] = v end
        fake.assert_eq(bank, expected, "balances")
      end,
    }, "bank.lua")
    local files = trace.collect({ "scenarios/bank/traces" })
    assert.equal(4, #files)
    local results = trace.run(r, trace.decode_all(files))
    for i, ok in ipairs(results) do assert.is_true(ok, tostring(tests[i].err)) end
  end)
end)
