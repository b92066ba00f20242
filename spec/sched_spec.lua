-- The scheduler and structured concurrency of SPEC §3, in module mode.
-- Each test runs a root task with atom.run and then checks that no task,
-- handle, registry ref or child is left (support.atom_loader).
local support = require "support.atom_loader"
local atom, run = support.atom, support.run

local U = 0.02 -- time unit: tests check order and causality, not durations

local function kind(e) return type(e) == "table" and e.kind or nil end

describe("tasks", function()
  it("invariant 1: sleep suspends only the caller (resumed from the ready queue); now advances", function()
    local order = {}
    run(function()
      local t0 = atom.now()
      atom.gather(function() atom.sleep(2 * U); order[#order + 1] = "slow" end,
                  function() atom.sleep(U); order[#order + 1] = "fast" end)
      assert.is_true(atom.now() - t0 >= 2 * U)
    end)
    assert.are.same({ "fast", "slow" }, order)
  end)

  it("sleep(0) lets other tasks run first", function()
    local order = {}
    run(function()
      atom.go(function() order[#order + 1] = "child" end)
      atom.sleep(0)
      order[#order + 1] = "parent"
    end)
    assert.are.same({ "child", "parent" }, order)
  end)

  it("gather returns first results, in argument order, vararg and list forms", function()
    run(function()
      local a, b, c = atom.gather(function() atom.sleep(U) return 1, "x" end,
                                  function() return nil end,
                                  function() return 3 end)
      assert.are.same({ 1, nil, 3 }, { a, b, c })
      local r = atom.gather { function() return "p" end, function() return nil end }
      assert.equals(2, r.n)
      assert.equals("p", r[1])
      assert.is_nil(r[2])
    end)
  end)

  it("the seed case: first error cancels siblings at once and the script goes on", function()
    local log = {}
    run(function()
      local function run_test() atom.sleep(10 * U); log[#log + 1] = "test error raised"; error("test error") end
      local function run_node(i)
        atom.sleep(i * U)
        log[#log + 1] = "node " .. i .. " first sleep done"
        if i == 5 then error("node error: id " .. i) end
        atom.sleep(i * U)
      end
      local fns = { run_test }
      for i = 1, 6 do fns[#fns + 1] = function() run_node(i) end end
      local ok, err = pcall(atom.gather, fns)
      assert.is_false(ok)
      assert.matches("node error: id 5", tostring(err))
      log[#log + 1] = "all good"
    end)
    local pos = {}
    for i, l in ipairs(log) do pos[l] = i end
    assert.is_truthy(pos["node 4 first sleep done"])
    assert.is_nil(pos["node 6 first sleep done"])      -- error arrived before node 6's first sleep ended
    assert.is_nil(pos["test error raised"])            -- and long before run_test's error
    assert.is_true(pos["all good"] > pos["node 5 first sleep done"])
  end)

  it("invariant 4: gather waits until cancelled siblings have unwound before raising", function()
    local cleaned = false
    run(function()
      local ok = pcall(atom.gather,
        function() atom.defer(function() atom.sleep(U); cleaned = true end); atom.sleep(10) end,
        function() atom.sleep(U); error("boom") end)
      assert.is_false(ok)
      assert.is_true(cleaned)
    end)
  end)

  it("race returns the first success and cancels the rest", function()
    local cancelled = false
    run(function()
      local i, v = atom.race(function() atom.defer(function() cancelled = true end); atom.sleep(10) end,
                             function() error("ignored failure") end,
                             function() atom.sleep(U) return "won" end)
      assert.equals(3, i)
      assert.equals("won", v)
      assert.is_true(cancelled)
      local ok, err = pcall(atom.race, function() error("first") end, function() atom.sleep(U) error("second") end)
      assert.is_false(ok)
      assert.matches("first", tostring(err))
    end)
  end)

  it("map keeps order and bounds concurrency", function()
    run(function()
      local running, peak = 0, 0
      local r = atom.map({ 5, 4, 3, 2, 1 }, function(x, i)
        running = running + 1
        peak = math.max(peak, running)
        atom.sleep(x * U / 5)
        running = running - 1
        return x * 10 + i
      end, { concurrency = 2 })
      assert.are.same({ 51, 42, 33, 24, 15 }, { r[1], r[2], r[3], r[4], r[5] })
      assert.equals(5, r.n)
      assert.equals(2, peak)
      local ok, err = pcall(atom.map, { 1, 2, 3 }, function(x) if x == 2 then error("item 2") end atom.sleep(10) end)
      assert.is_false(ok)
      assert.matches("item 2", tostring(err))
    end)
  end)

  it("a group anchors every finished member until popped, whatever the order and the window", function()
    run(function()
      math.randomseed(7)
      local fns = {}
      for i = 1, 300 do
        local d = math.random() * U
        fns[i] = function() atom.sleep(d) collectgarbage() return i end
      end
      local r = atom.gather(fns)
      for i = 1, 300 do assert.equals(i, r[i]) end
      local items = {}
      for i = 1, 500 do items[i] = i end
      local m = atom.map(items, function(x) atom.sleep(math.random() * U / 4) collectgarbage("step") return x * 2 end,
                         { concurrency = 7 })
      for i = 1, 500 do assert.equals(2 * i, m[i]) end
    end)
  end)

  it("a burst of tasks raises the collector's pause for its duration only; the program's pause and mode stay", function()
    local before = collectgarbage("setpause", 150)
    local during, after
    run(function()
      local fns = {}
      for i = 1, 2000 do fns[i] = function() atom.sleep(0) end end
      fns[1] = function() during = collectgarbage("setpause", 150); collectgarbage("setpause", during) end
      atom.gather(fns)
      after = collectgarbage("setpause", before)
    end)
    assert.is_true(during >= 400)
    assert.is_true(math.abs(after - 150) <= 4)
  end)

  it("timeout raises kind timeout and does not cancel the caller", function()
    run(function()
      local ok, err = pcall(atom.timeout, U, function() atom.sleep(10) end)
      assert.is_false(ok)
      assert.equals("timeout", kind(err))
      assert.matches("timed out after", err.message)
      atom.sleep(0) -- the caller is not cancelled
      assert.are.same({ 1, 2 }, { atom.timeout(1, function() return 1, 2 end) })
    end)
  end)

  it("a function that swallows its cancellation still times out", function()
    run(function()
      local ok, err = pcall(atom.timeout, U, function()
        pcall(atom.sleep, 10)
        return "swallowed"
      end)
      assert.is_false(ok)
      assert.equals("timeout", kind(err))
    end)
  end)

  it("nested deadlines all hold; an outer expiry passes through the inner timeout", function()
    run(function()
      local inner_kind
      local ok, err = pcall(atom.timeout, U, function()
        local ok2, e2 = pcall(atom.timeout, 10, function() atom.sleep(10) end)
        inner_kind = kind(e2)
        error(e2, 0)
      end)
      assert.is_false(ok)
      assert.equals("cancelled", inner_kind) -- not turned into the inner timeout's error
      assert.equals("timeout", kind(err))
      local ok3, e3 = pcall(atom.timeout, 10, function() atom.timeout(U, function() atom.sleep(10) end) end)
      assert.is_false(ok3)
      assert.equals("timeout", kind(e3))
    end)
  end)

  it("invariant 6: shield is not reached by the caller's cancellation; it is raised afterwards", function()
    local done, after = false, false
    run(function()
      local ok, err = pcall(atom.timeout, U, function()
        atom.shield(function() atom.sleep(3 * U); done = true end)
        after = true
        atom.sleep(10)
      end)
      assert.is_false(ok)
      assert.equals("timeout", kind(err))
    end)
    assert.is_true(done)
    assert.is_true(after) -- entering/leaving a shield is not a checkpoint
  end)

  it("go, join, cancel and status", function()
    run(function()
      local t = atom.go(function(a) atom.sleep(U) return a, a + 1 end, 41)
      assert.equals("running", t:status())
      assert.matches("^main/go1$", t.name)
      assert.are.same({ 41, 42 }, { t:join() })
      assert.equals("done", t:status())
      local c = atom.go(function() atom.sleep(10) end)
      c:cancel()
      local ok, err = pcall(c.join, c)
      assert.is_false(ok)
      assert.equals("cancelled", kind(err))
      assert.equals("cancelled", c:status())
      c:cancel() -- on a finished task: nothing
      local slow = atom.go(function() atom.sleep(10) end)
      local ok2, e2 = pcall(slow.join, slow, U)
      assert.is_false(ok2)
      assert.equals("timeout", kind(e2))
      slow:cancel()
    end)
  end)

  -- A cancelled task whose unwind nobody could observe ends without being
  -- resumed (sched.c end_unresumed); its error is made on first read. These
  -- check that it ends as a resumed one would, and that anything able to
  -- observe the unwind still gets it.
  it("a plain sleeping task ends at once when cancelled, with the error a resume would give", function()
    local get, co, after
    run(function()
      local c = atom.go(function()
        local kept = { "still here" }
        get = function() return kept[1] end
        co = coroutine.running()
        atom.sleep(10)
        after = true
      end)
      atom.sleep(0)
      c:cancel()
      assert.equals("cancelled", c:status()) -- nothing to unwind: ended at once
      local e = require("_atom").error_of(c)
      assert.equals("cancelled", e.kind)
      assert.equals("cancelled: by t:cancel()", e.message)
      assert.matches("sched_spec%.lua:%d+$", e.where)
      assert.equals(c.name, e.task)
      assert.equals(e, require("_atom").error_of(c)) -- made once
      local ok, je = pcall(c.join, c)
      assert.is_false(ok)
      assert.equals("cancelled", kind(je))
      coroutine.resume(co) -- by hand: refused, the code after the wait never runs
      assert.is_nil(after)
    end)
    co = nil
    collectgarbage()
    assert.equals("still here", get()) -- its upvalues were closed, not lost
  end)

  it("a cancelled task that could observe its unwind is resumed: pcall, <close>, defer, children", function()
    local log = {}
    run(function()
      local closer = setmetatable({}, { __close = function(_, e) log[#log + 1] = "close " .. kind(e) end })
      local ts = {
        atom.go(function()
          local ok, e = pcall(atom.sleep, 10)
          log[#log + 1] = "caught " .. kind(e) .. " " .. tostring(ok)
        end),
        atom.go(function()
          local c <close> = closer
          atom.sleep(10)
        end),
        atom.go(function()
          atom.defer(function() log[#log + 1] = "deferred" end)
          atom.sleep(10)
        end),
        atom.go(function()
          atom.go(function() atom.defer(function() log[#log + 1] = "child deferred" end); atom.sleep(10) end)
          atom.sleep(10)
        end),
      }
      atom.sleep(0)
      for _, t in ipairs(ts) do t:cancel() end
      for _, t in ipairs(ts) do assert.equals("running", t:status()) end -- they unwind when resumed
      for _, t in ipairs(ts) do pcall(t.join, t) end
      assert.equals("done", ts[1]:status()) -- it caught its cancellation and returned
      for i = 2, #ts do assert.equals("cancelled", ts[i]:status()) end
    end)
    table.sort(log)
    assert.are.same({ "caught cancelled false", "child deferred", "close cancelled", "deferred" }, log)
  end)

  it("gather's cancelled siblings end at once, and a gather cancelled from outside raises its own cancellation", function()
    run(function()
      local ok, err = pcall(atom.gather, function() atom.sleep(10) end, function() atom.sleep(U); error("boom") end,
                            function() atom.sleep(10) end)
      assert.is_false(ok)
      assert.matches("boom", tostring(err))
      local g = atom.go(function() return atom.gather(function() atom.sleep(10) end, function() atom.sleep(10) end) end)
      atom.sleep(U)
      g:cancel()
      local ok2, e2 = pcall(g.join, g)
      assert.is_false(ok2)
      assert.equals("cancelled", kind(e2))
      assert.equals("cancelled", g:status())
      local r = atom.go(function() return atom.race(function() atom.sleep(10) end, function() atom.sleep(10) end) end)
      atom.sleep(U)
      r:cancel()
      assert.is_false(pcall(r.join, r))
      assert.equals("cancelled", r:status())
    end)
  end)

  it("invariant 7: a task cancelled before it starts never runs", function()
    local ran = false
    run(function()
      local t = atom.go(function() ran = true end)
      t:cancel()
      assert.is_false(pcall(t.join, t))
      assert.equals("cancelled", t:status())
    end)
    assert.is_false(ran)
  end)

  it("an unjoined child's failure cancels the parent, which ends with the child's error", function()
    local reached = false
    local ok, err = pcall(run, function()
      atom.go(function() atom.sleep(U); error("child failed") end)
      local ok2, e2 = pcall(atom.sleep, 10)
      assert.is_false(ok2)
      assert.equals("cancelled", e2.kind)
      assert.matches("child failed", tostring(e2.child_error))
      reached = true
      return "normal return"
    end)
    assert.is_true(reached)
    assert.is_false(ok)
    assert.matches("child failed", tostring(err))
  end)

  it("invariant 8: a later join of a failed child raises the same error", function()
    local ok0, e0 = pcall(run, function()
      local t = atom.go(function() error("same") end)
      local ok = pcall(atom.sleep, 1) -- cancelled by the child's failure
      assert.is_false(ok)
      local ok2, e2 = pcall(t.join, t)
      assert.is_false(ok2)
      assert.matches("same", tostring(e2))
    end)
    assert.is_false(ok0)
    assert.matches("same", tostring(e0))
  end)

  it("invariant 5: cancellation is level-triggered: the next suspension raises it again", function()
    local raised = 0
    run(function()
      local t = atom.go(function()
        for _ = 1, 3 do
          local ok, e = pcall(atom.sleep, 10)
          if not ok and e.kind == "cancelled" then raised = raised + 1 end
        end
        atom.sleep(10) -- unprotected: ends the task
      end)
      atom.sleep(U)
      t:cancel()
      pcall(t.join, t)
      assert.equals("cancelled", t:status())
    end)
    assert.equals(3, raised)
  end)

  it("a task ending by someone else's cancelled error has failed, not been cancelled", function()
    run(function()
      local victim = atom.go(function() atom.sleep(10) end)
      victim:cancel()
      local t = atom.go(function() victim:join() end)
      local ok = pcall(t.join, t)
      assert.is_false(ok)
      assert.equals("failed", t:status())
    end)
  end)

  it("defer runs last registered first, on success, error and cancellation", function()
    local log = {}
    run(function()
      atom.timeout(1, function()
        atom.defer(function() log[#log + 1] = "first" end)
        atom.defer(function(x) log[#log + 1] = x end, "second")
      end)
      pcall(atom.timeout, 1, function()
        atom.defer(function() log[#log + 1] = "on error" end)
        error("x")
      end)
      pcall(atom.timeout, U, function()
        atom.defer(function() atom.sleep(U); log[#log + 1] = "on cancel, waited" end)
        atom.sleep(10)
      end)
    end)
    assert.are.same({ "second", "first", "on error", "on cancel, waited" }, log)
  end)

  it("a cleanup error fails a succeeding task and is kept beside an original error", function()
    run(function()
      local ok, err = pcall(atom.timeout, 1, function()
        atom.defer(function() error("cleanup broke") end)
        return "fine"
      end)
      assert.is_false(ok)
      assert.matches("cleanup broke", tostring(err))
      local ok2, e2 = pcall(atom.timeout, U, function()
        atom.defer(function() error("cleanup broke too") end)
        atom.sleep(10)
      end)
      assert.is_false(ok2)
      assert.equals("timeout", e2.kind) -- the original outcome wins
      local ok3, e3 = pcall(atom.gather, function()
        atom.defer(function() error("later") end)
        atom.sleep(U)
        error(setmetatable({ kind = "x" }, getmetatable(e2)))
      end)
      assert.is_false(ok3)
      assert.matches("later", tostring(e3.cleanup_errors[1]))
    end)
  end)

  it("a task that swallows cancellation in a bounded loop ends at its next unprotected suspension", function()
    local swallowed = 0
    run(function()
      local t = atom.go(function()
        for _ = 1, 5 do if not pcall(atom.sleep, 10) then swallowed = swallowed + 1 end end
        atom.sleep(10)
      end)
      atom.sleep(U)
      t:cancel()
      pcall(t.join, t)
    end)
    assert.equals(5, swallowed)
  end)

  it("invariant 2: a task that swallows cancellation forever is abandoned after its grace, its wait ended once", function()
    local ok, err = pcall(run, function()
      local t = atom.go(function()
        atom.defer { function() end, grace = 0.05 }
        while true do pcall(atom.sleep, 10) end
      end)
      atom.sleep(U)
      t:cancel()
      pcall(t.join, t)
      assert.equals("cancelled", t:status())
      return "root done"
    end)
    assert.is_true(ok, tostring(err))
  end)

  it("channels: unbuffered hand-over, buffering, close, iter, errors", function()
    run(function()
      local ch = atom.channel()
      atom.go(function() for i = 1, 3 do ch:send(i) end ch:close() end)
      local got = {}
      for v in ch:iter() do got[#got + 1] = v end
      assert.are.same({ 1, 2, 3 }, got)
      assert.is_nil(ch:recv())
      local ok, err = pcall(ch.send, ch, 4)
      assert.is_false(ok)
      assert.equals("io", err.kind)
      local ok2, e2 = pcall(ch.send, ch, nil)
      assert.is_false(ok2)
      assert.equals("usage", e2.kind)
      local b = atom.channel(2)
      b:send("a"); b:send("b") -- never blocks below capacity
      assert.equals("a", b:recv())
      local ok3, e3 = pcall(b.recv, atom.channel(), U)
      assert.is_false(ok3)
      assert.equals("timeout", e3.kind)
      local u = atom.channel(math.huge)
      for i = 1, 100 do u:send(i) end
      assert.equals(1, u:recv())
    end)
  end)

  it("events and semaphores", function()
    run(function()
      local ev = atom.event()
      assert.is_false(ev:is_set())
      atom.go(function() atom.sleep(U) ev:set() end)
      ev:wait()
      assert.is_true(ev:is_set())
      ev:wait() -- already set
      local s = atom.semaphore(1)
      local ok, err = pcall(s.release, s)
      assert.is_false(ok)
      assert.equals("usage", err.kind)
      s:acquire()
      local ok2, e2 = pcall(s.acquire, s, U)
      assert.is_false(ok2)
      assert.equals("timeout", e2.kind)
      s:release()
      assert.equals(7, s:with(function(x) return x end, 7))
      assert.is_false(pcall(s.with, s, function() error("x") end))
      s:acquire() -- released by with() although fn failed
      s:release()
    end)
  end)

  it("wait_until returns the value, keeps why and last errors, and times out", function()
    run(function()
      local n = 0
      assert.equals(3, atom.wait_until(function() n = n + 1 return n >= 3 and n end, { interval = 0.001 }))
      local ok, err = pcall(atom.wait_until, function() return false, "not ready" end, { timeout = U, interval = 0.005 })
      assert.is_false(ok)
      assert.equals("timeout", err.kind)
      assert.matches("last value: false %(not ready%)", err.message)
      assert.is_false(err.last_value)
      local ok2, e2 = pcall(atom.wait_until, function() error("flaky") end, { timeout = U, interval = 0.005 })
      assert.is_false(ok2)
      assert.matches("last error: .*flaky", e2.message)
      assert.matches("flaky", tostring(e2.last_error))
      local ok3, e3 = pcall(atom.wait_until, function() atom.sleep(10) end, U)
      assert.is_false(ok3)
      assert.equals("timeout", e3.kind)
      local ok4, e4 = pcall(atom.wait_until, function() atom.sleep("x") end, 1)
      assert.is_false(ok4)
      assert.equals("usage", e4.kind) -- usage errors propagate at once
    end)
  end)

  it("names tasks as SPEC §3 says", function()
    local names = {}
    run(function()
      names.root = atom.go(function() end).name:match("^(.-)/go1$")
      atom.gather(function() names.g = select(1, atom._task_name and atom._task_name() or nil) end)
      local t = atom.go(function() atom.name("renamed") atom.sleep(U) end)
      atom.sleep(0)
      names.renamed = t.name
      t:join()
    end)
    assert.equals("main", names.root)
    assert.equals("renamed", names.renamed)
  end)

  it("a deadlock fails the root with kind deadlock listing who waits for what", function()
    local ok, err = pcall(run, function()
      local ev = atom.event()
      atom.go(function() ev:wait() end)
      atom.channel():recv()
    end)
    assert.is_false(ok)
    assert.equals("deadlock", err.kind)
    assert.matches("main/go1 waiting in ev:wait%(%) at .*sched_spec.lua:%d+", err.message)
    assert.matches("main waiting in ch:recv%(%)", err.message)
  end)

  it("raises usage errors worded like Lua's, outside tasks and in plain coroutines", function()
    local ok, err = pcall(atom.sleep, 1)
    assert.is_false(ok)
    assert.equals("usage", err.kind)
    run(function()
      local ok2, e2 = pcall(atom.sleep, "x")
      assert.equals("bad argument #1 to 'sleep' (number expected, got string)", e2.message)
      local co = coroutine.wrap(function() return pcall(atom.sleep, 1) end)
      local ok3, e3 = co()
      assert.is_false(ok3)
      assert.matches("atom.sleep called inside a plain coroutine", e3.message)
      assert.is_false(ok2)
      local ok4, e4 = pcall(atom.run, function() end)
      assert.is_false(ok4)
      assert.equals("usage", e4.kind)
    end)
  end)

  it("errors are tables whose tostring starts with the script's file:line", function()
    run(function()
      local ok, err = pcall(atom.timeout, 0.001, function() atom.sleep(1) end)
      assert.is_false(ok)
      assert.matches("^.*sched_spec%.lua:%d+: timed out after 0%.001s$", tostring(err))
      assert.equals("main", err.task)
      assert.is_string(err.traceback)
    end)
  end)

  it("invariant 3: 10,000 tasks with random sleeps and cancels all complete and leave no ref, task or handle #stress", function()
    run(function()
      math.randomseed(42)
      local tasks = {}
      for i = 1, 10000 do
        tasks[i] = atom.go(function() atom.sleep(math.random() * 0.05) return i end)
      end
      for i = 1, 10000, 3 do tasks[i]:cancel() end
      local done, cancelled = 0, 0
      for i = 1, 10000 do
        local ok = pcall(tasks[i].join, tasks[i])
        if ok then done = done + 1 else cancelled = cancelled + 1 end
      end
      assert.equals(10000, done + cancelled)
      assert.equals(3334, cancelled)
    end)
  end)
end)
