-- atom.work (SPEC §12 "Work off the loop"): fn runs in a Lua state of its own
-- on libuv's thread pool while the loop keeps serving; arguments and results
-- are copied; cancelling the caller interrupts fn. Module mode.
local support = require "support.atom_loader"
local atom, run = support.atom, support.run
local _atom = require "_atom"

local function kind(e) return type(e) == "table" and e.kind or nil end

-- Wait (bounded) until every job has freed itself: a cancelled job's thread
-- notices within microseconds, then the loop collects it.
local function settle()
  atom.wait_until(function() return _atom.work_jobs() == 0 end, 5)
end

describe("atom.work", function()
  it("returns fn's results, copied (tables, strings, nil, booleans, json.null)", function()
    run(function()
      local a, b, c, d, e = atom.work(function(x, t)
        return x * 2, { t[1], nested = { t.s .. "!" } }, nil, true, require("atom").json.null
      end, 21, { 5, s = "hi" })
      assert.equal(42, a)
      assert.are.same({ 5, nested = { "hi!" } }, b)
      assert.is_nil(c)
      assert.is_true(d)
      assert.equal(atom.json.null, e)
    end)
  end)

  it("the loop keeps ticking during a 2 s computation #timing", function()
    run(function()
      local ticks, busy = 0, true
      local ticker = atom.go(function()
        while busy do atom.sleep(0.01); ticks = ticks + 1 end
      end)
      local t0 = atom.now()
      local n = atom.work(function()
        local t, i = os.clock(), 0
        -- 2 s of CPU (os.clock counts the whole process: at least 1 s of wall time)
        while os.clock() - t < 2 do i = i + 1 end
        return i
      end)
      local elapsed = atom.now() - t0
      busy = false
      ticker:join()
      assert.is_true(n > 0)
      -- a 10 ms ticker over 1-2 s: 100-200 ticks when the loop is free. The
      -- machine is shared, so only a frozen loop (a handful) fails this.
      assert.is_true(elapsed >= 1)
      assert.is_true(ticks >= 0.5 * elapsed / 0.01, ("only %d ticks in %.2fs"):format(ticks, elapsed))
    end)
  end)

  it("cancelling the caller stops a busy `while true do end` promptly", function()
    run(function()
      local started = atom.event()
      local t = atom.go(function()
        started:set()
        atom.work(function() while true do end end)
      end)
      started:wait()
      atom.sleep(0.05) -- the worker is spinning now
      local t0 = atom.now()
      t:cancel()
      local ok, e = pcall(t.join, t)
      assert.is_false(ok)
      assert.equal("cancelled", kind(e))
      settle()
      -- the hook looks every 1000 instructions; a wide bound for a loaded machine
      assert.is_true(atom.now() - t0 < 1, "the worker did not stop")
    end)
    assert.equal(0, _atom.work_jobs())
  end)

  it("a timeout around it cancels the job", function()
    run(function()
      local ok, e = pcall(atom.timeout, 0.1, atom.work, function() while true do end end)
      assert.is_false(ok)
      assert.equal("timeout", kind(e))
      settle()
    end)
  end)

  it("upvalues other than _ENV are a usage error naming the upvalue", function()
    run(function()
      local secret = 3
      local ok, e = pcall(atom.work, function() return secret end)
      assert.is_false(ok)
      assert.equal("usage", kind(e))
      assert.matches("upvalue 'secret'", e.message, 1, true)
      assert.matches("^spec/work_spec.lua:%d+: ", tostring(e))
      -- globals are fine: _ENV becomes the worker's globals
      assert.equal("table", atom.work(function() return type(string) end))
    end)
  end)

  it("usage errors: C functions, functions, cycles and userdata in arguments or results", function()
    run(function()
      local ok, e = pcall(atom.work, print)
      assert.is_false(ok)
      assert.equal("usage", kind(e))
      ok, e = pcall(atom.work, function() end, function() end)
      assert.equal("usage", kind(e))
      assert.matches("argument #2 contains a function", e.message, 1, true)
      local cyc = {}
      cyc.self = cyc
      ok, e = pcall(atom.work, function() end, cyc)
      assert.equal("usage", kind(e))
      assert.matches("a cycle", e.message, 1, true)
      ok, e = pcall(atom.work, function() end, io.stdout)
      assert.matches("a userdata", e.message, 1, true)
      ok, e = pcall(atom.work, function() return print end)
      assert.is_false(ok)
      assert.equal("usage", kind(e))
      assert.matches("result #1 contains a function", e.message, 1, true)
      ok, e = pcall(atom.work, 42)
      assert.equal("usage", kind(e))
      -- shared (not cyclic) tables are copied twice, which is fine
      local s = { 1 }
      local r = atom.work(function(t) return t.a[1] + t.b[1] end, { a = s, b = s })
      assert.equal(2, r)
    end)
    local ok, e = pcall(atom.work, function() end)
    assert.is_false(ok)
    assert.matches("outside a task", e.message, 1, true)
  end)

  it("an error in fn raises kind work with fn's message and traceback", function()
    run(function()
      local ok, e = pcall(atom.work, function(x)
        local function inner() error("bad input " .. x) end
        inner()
      end, 7)
      assert.is_false(ok)
      assert.equal("work", kind(e))
      assert.matches("bad input 7", e.message, 1, true)
      assert.matches("^spec/work_spec.lua:%d+: ", tostring(e))
      assert.matches("in %a+ 'inner'", e.traceback) -- fn's own frames
      assert.matches("(in the worker started by atom.work)", e.traceback, 1, true)
      -- other atom functions are not there; atom.json is
      ok, e = pcall(atom.work, function() require("atom").sleep(1) end)
      assert.equal("work", kind(e))
      assert.matches("atom.sleep is not available in a worker", e.message, 1, true)
      assert.equal('{"a":1}', atom.work(function() return _G.atom.json.encode { a = 1 } end))
      assert.equal(3, atom.work(function() return require("atom").json.decode("[1,2,3]")[3] end))
    end)
  end)

  it("100 jobs over 4 threads all return, each with its own state", function()
    run(function()
      local list = {}
      for i = 1, 100 do list[i] = i end
      local out = atom.map(list, function(i)
        return atom.work(function(n)
          assert(X == nil) -- a fresh state: no global left by another job
          X = n
          local s = 0
          for k = 1, 20000 do s = s + k % n end
          return n, s
        end, i)
      end, { concurrency = 100 })
      for i = 1, 100 do assert.equal(i, out[i]) end
    end)
    assert.equal(0, _atom.work_jobs())
  end)
end)
