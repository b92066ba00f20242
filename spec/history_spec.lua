-- Histories and the linearizability checker (SPEC §12): recording, JSON
-- lines, the built-in models on hand-made histories, a custom Lua model, and
-- a differential test of the C checker against a brute-force search written
-- here on thousands of small random histories. Module mode.
local support = require "support.atom_loader"
local atom, run = support.atom, support.run

local function kind(e) return type(e) == "table" and e.kind or nil end

local function tmpname()
  local p = os.tmpname()
  os.remove(p)
  return p .. ".jsonl"
end

-- Build a history from a compact script: each step is
-- { "i", p, f, v } invoke, { "ok", p, v } / { "fail", p } / { "info", p } complete.
local function hist(steps)
  local h = atom.history()
  local open = {}
  for _, s in ipairs(steps) do
    if s[1] == "i" then
      open[s[2]] = h:invoke(s[2], s[3], s[4])
    elseif s[1] == "ok" then
      if #s >= 3 then open[s[2]]:ok(s[3]) else open[s[2]]:ok() end
    else
      open[s[2]][s[1]](open[s[2]])
    end
  end
  return h
end

local function check(steps, model, opts)
  local o = { model = model }
  for k, v in pairs(opts or {}) do o[k] = v end
  return run(function() return hist(steps):check(o) end)
end

describe("recording", function()
  it("invoke/ok/fail/info record events with index, type, process, f, value, time", function()
    run(function()
      local h = atom.history("t")
      local w = h:invoke(1, "write", 3)
      local r = h:invoke("reader", "read")
      w:ok()
      r:ok(3)
      h:invoke(1, "cas", { 3, 4 }):fail("mismatch")
      h:invoke(1, "write", 5):info("timeout")
      local ev = h:ops()
      assert.equal(8, #ev)
      assert.are.same({ 0, "invoke", 1, "write", 3 }, { ev[1].index, ev[1].type, ev[1].process, ev[1].f, ev[1].value })
      assert.are.same({ "ok", 3 }, { ev[3].type, ev[3].value }) -- ok() keeps the invocation's value
      assert.are.same({ "ok", "reader", 3 }, { ev[4].type, ev[4].process, ev[4].value })
      assert.are.same({ "fail", "mismatch" }, { ev[6].type, ev[6].error })
      assert.are.same({ "info", "timeout" }, { ev[8].type, ev[8].error })
      for i = 2, #ev do
        assert.equal("integer", math.type(ev[i].time))
        assert.is_true(ev[i].time >= ev[i - 1].time)
      end
    end)
  end)

  it("one open operation per process, none after info; completing twice is usage", function()
    run(function()
      local h = atom.history()
      local op = h:invoke(1, "read")
      local ok, e = pcall(h.invoke, h, 1, "read")
      assert.equal("usage", kind(e))
      assert.matches("already has an open operation", e.message, 1, true)
      op:info()
      ok, e = pcall(h.invoke, h, 1, "read")
      assert.is_false(ok)
      assert.matches("ended with info", e.message, 1, true)
      ok, e = pcall(op.ok, op, 1)
      assert.equal("usage", kind(e))
      h:invoke(2, "read"):ok(nil) -- a new process id is fine
      ok, e = pcall(h.invoke, h, {}, "read")
      assert.equal("usage", kind(e))
    end)
  end)

  it("h:run records ok with fn's first result, or info and re-raises", function()
    run(function()
      local h = atom.history()
      local a, b = h:run(1, "read", nil, function() return 7, "x" end)
      assert.are.same({ 7, "x" }, { a, b })
      h:run(2, "write", 1, function(op) op:fail("refused") end)
      local ok, e = pcall(h.run, h, 3, "write", 2, function() error("conn reset") end)
      assert.is_false(ok)
      assert.matches("conn reset", tostring(e), 1, true)
      -- a cancellation inside fn is recorded as info too
      local t = atom.go(function() h:run(4, "write", 9, function() atom.sleep(10) end) end)
      atom.sleep(0.01)
      t:cancel()
      pcall(t.join, t)
      local ev = h:ops()
      assert.are.same({ "ok", 7 }, { ev[2].type, ev[2].value })
      assert.are.same({ "fail", "refused" }, { ev[4].type, ev[4].error })
      assert.equal("info", ev[6].type)
      assert.matches("conn reset", ev[6].error, 1, true)
      assert.equal("info", ev[8].type)
    end)
  end)

  it("save writes JSON lines in elle-cli field names; load reads them back", function()
    run(function()
      local h = atom.history()
      h:invoke(0, "write", 3):ok()
      h:invoke(1, "read"):ok(nil)
      h:invoke(2, "cas", { 1, 2 }):fail("no")
      h:invoke(3, "read", { "k", nil }):info()
      local path = tmpname()
      h:save(path)
      local f = io.open(path)
      local first = f:read("l")
      f:close()
      assert.matches('^{"index":0,"type":"invoke","process":0,"f":"write","value":3,"time":%d+}$', first)
      local g = atom.history.load(path)
      local a, b = h:ops(), g:ops()
      assert.equal(#a, #b)
      for i = 1, #a do
        assert.are.same({ a[i].index, a[i].type, a[i].process, a[i].f, a[i].value, a[i].time, a[i].error },
          { b[i].index, b[i].type, b[i].process, b[i].f, b[i].value, b[i].time, b[i].error })
      end
      assert.is_nil(b[4].value) -- JSON null reads as nil
      os.remove(path)
      -- a line without "value" loads as nil; a bad line names file and line
      f = io.open(path, "w")
      f:write('{"type":"invoke","process":1,"f":"read"}\n{"type":"ok","process":1,"f":"read","value":null}\nnope\n')
      f:close()
      local ok, e = pcall(atom.history.load, path)
      assert.is_false(ok)
      assert.matches(":3: not a JSON object", e.message, 1, true)
      os.remove(path)
    end)
  end)
end)

describe("register", function()
  it("empty history: valid, no operations, no keys", function()
    local r = check({}, "register")
    assert.is_true(r.valid)
    assert.are.same({ 0, 0 }, { r.ops, r.keys })
  end)

  it("sequential: valid, and a wrong read is invalid", function()
    assert.is_true(check({ { "i", 1, "read" }, { "ok", 1, nil }, { "i", 1, "write", 1 }, { "ok", 1 },
      { "i", 2, "read" }, { "ok", 2, 1 } }, "register").valid)
    local r = check({ { "i", 1, "write", 1 }, { "ok", 1 }, { "i", 2, "read" }, { "ok", 2, 2 } }, "register")
    assert.is_false(r.valid)
    assert.equal(2, r.ops)
    assert.equal("read", r.counterexample.op.f)
    assert.equal(2, r.counterexample.op.output)
  end)

  it("a read concurrent with a write may see either value", function()
    for _, v in ipairs { 0, 1 } do
      local r = check({ { "i", 1, "write", 0 }, { "ok", 1 }, { "i", 1, "write", 1 }, { "i", 2, "read" },
        { "ok", 2, v }, { "ok", 1 } }, "register")
      assert.is_true(r.valid, "read " .. v)
    end
  end)

  it("overlapping writes and reads: valid when an order exists", function()
    assert.is_true(check({ { "i", 1, "write", 1 }, { "i", 2, "write", 2 }, { "i", 3, "read" },
      { "ok", 3, 1 }, { "ok", 1 }, { "i", 3, "read" }, { "ok", 2 }, { "ok", 3, 2 } }, "register").valid)
    -- both reads after both writes, seeing different values: no single order
    local r = check({ { "i", 1, "write", 1 }, { "i", 2, "write", 2 }, { "ok", 1 }, { "ok", 2 },
      { "i", 3, "read" }, { "ok", 3, 1 }, { "i", 4, "read" }, { "ok", 4, 2 } }, "register")
    assert.is_false(r.valid)
  end)

  it("a stale read is invalid; the counterexample names it and what is concurrent", function()
    local r = check({ { "i", 1, "write", 1 }, { "ok", 1 }, { "i", 1, "write", 2 }, { "ok", 1 },
      { "i", 2, "read" }, { "i", 3, "read" }, { "ok", 3, 2 }, { "ok", 2, 1 } }, "register")
    assert.is_false(r.valid)
    local ce = r.counterexample
    assert.equal(1, ce.op.output)
    assert.equal(2, ce.op.process)
    assert.equal(3, #ce.prefix) -- write 1, write 2, process 3's read
    assert.equal(1, #ce.concurrent)
    assert.equal(3, ce.concurrent[1].process)
    assert.matches("not linearizable", tostring(r), 1, true)
    assert.is_nil(tostring(r):find("\n"))
  end)

  it("info writes may take effect late, or never", function()
    -- took effect (seen after the client gave up)
    assert.is_true(check({ { "i", 1, "write", 1 }, { "info", 1 }, { "i", 2, "read" }, { "ok", 2, 1 } },
      "register").valid)
    -- never took effect
    assert.is_true(check({ { "i", 1, "write", 1 }, { "info", 1 }, { "i", 2, "read" }, { "ok", 2, nil } },
      "register").valid)
    -- took effect much later than its invocation
    assert.is_true(check({ { "i", 1, "write", 1 }, { "info", 1 }, { "i", 2, "read" }, { "ok", 2, nil },
      { "i", 2, "read" }, { "ok", 2, 1 } }, "register").valid)
    -- but once seen it cannot be unseen
    assert.is_false(check({ { "i", 1, "write", 1 }, { "info", 1 }, { "i", 2, "read" }, { "ok", 2, 1 },
      { "i", 2, "read" }, { "ok", 2, nil } }, "register").valid)
    -- not before its invocation
    assert.is_false(check({ { "i", 2, "read" }, { "ok", 2, 1 }, { "i", 1, "write", 1 }, { "info", 1 } },
      "register").valid)
  end)

  it("failed writes never happened; pending operations at the end count as info", function()
    assert.is_false(check({ { "i", 1, "write", 1 }, { "fail", 1 }, { "i", 2, "read" }, { "ok", 2, 1 } },
      "register").valid)
    local r = check({ { "i", 1, "write", 1 }, { "i", 2, "read" }, { "ok", 2, 1 } }, "register")
    assert.is_true(r.valid)
    assert.equal(2, r.ops)
    assert.is_true(check({ { "i", 1, "write", 1 }, { "i", 2, "read" }, { "ok", 2, nil } }, "register").valid)
  end)
end)

describe("the HTML page", function()
  it("is self-contained, marks the op that cannot follow and its concurrent ops", function()
    local path = tmpname():gsub("jsonl$", "html")
    run(function()
      local h = hist { { "i", 1, "write", 1 }, { "ok", 1 }, { "i", 1, "write", 2 }, { "ok", 1 },
        { "i", 2, "read" }, { "i", 3, "read" }, { "ok", 3, 2 }, { "ok", 2, 1 } }
      local r = h:check { model = "register" }
      assert.equal(path, r:html(path))
    end)
    local f = io.open(path)
    local page = f:read("a")
    f:close()
    os.remove(path)
    assert.matches("^<!doctype html>", page)
    assert.is_nil(page:find("<script src", 1, true)) -- nothing fetched
    assert.is_nil(page:find("<link", 1, true))
    assert.matches('"r":"bad"', page, 1, true)
    assert.matches('"r":"concurrent"', page, 1, true)
    assert.matches("not linearizable", page, 1, true)
    -- the script parses (node is one of the test dependencies)
    local js = page:match("<script>(.-)</script>")
    local jpath = path .. ".js"
    f = io.open(jpath, "w")
    f:write(js)
    f:close()
    local ok = os.execute("node --check " .. jpath .. " 2>/dev/null")
    os.remove(jpath)
    assert.is_true(ok == true or ok == 0)
  end)
end)

describe("cas-register", function()
  it("cas swaps when the value matches; a failed cas saw another value", function()
    assert.is_true(check({ { "i", 1, "write", 1 }, { "ok", 1 }, { "i", 1, "cas", { 1, 2 } }, { "ok", 1 },
      { "i", 2, "read" }, { "ok", 2, 2 } }, "cas-register").valid)
    assert.is_false(check({ { "i", 1, "write", 1 }, { "ok", 1 }, { "i", 1, "cas", { 3, 2 } }, { "ok", 1 } },
      "cas-register").valid)
    -- compare failed while the value was 5: fine
    assert.is_true(check({ { "i", 1, "write", 5 }, { "ok", 1 }, { "i", 1, "cas", { 1, 2 } }, { "fail", 1 },
      { "i", 2, "read" }, { "ok", 2, 5 } }, "cas-register").valid)
    -- compare failed although the value surely was 1: invalid
    assert.is_false(check({ { "i", 1, "write", 1 }, { "ok", 1 }, { "i", 1, "cas", { 1, 2 } }, { "fail", 1 } },
      "cas-register").valid)
    -- an info cas may have swapped, or not
    for _, v in ipairs { 1, 2 } do
      assert.is_true(check({ { "i", 1, "write", 1 }, { "ok", 1 }, { "i", 1, "cas", { 1, 2 } }, { "info", 1 },
        { "i", 2, "read" }, { "ok", 2, v } }, "cas-register").valid)
    end
  end)

  it("independent = true checks each key on its own", function()
    local r = check({ { "i", 1, "write", { "a", 1 } }, { "ok", 1 }, { "i", 2, "write", { "b", 2 } }, { "ok", 2 },
      { "i", 1, "read", { "a", nil } }, { "ok", 1, { "a", 1 } }, { "i", 2, "read", { "b" } }, { "ok", 2, { "b", 2 } } },
      "cas-register", { independent = true })
    assert.is_true(r.valid)
    assert.equal(2, r.keys)
    r = check({ { "i", 1, "write", { "a", 1 } }, { "ok", 1 }, { "i", 2, "write", { "b", 2 } }, { "ok", 2 },
      { "i", 1, "read", { "b", nil } }, { "ok", 1, { "b", 1 } } }, "cas-register", { independent = true })
    assert.is_false(r.valid)
    assert.equal("b", r.counterexample.key)
    local ok, e = pcall(check, { { "i", 1, "write", 3 }, { "ok", 1 } }, "cas-register", { independent = true })
    assert.is_false(ok)
    assert.equal("usage", kind(e))
    assert.matches("pairs {key, v}", e.message, 1, true)
  end)
end)

describe("kv", function()
  it("get/put/append per key; a missing key reads as the empty string", function()
    local r = check({ { "i", 1, "get", { key = "x" } }, { "ok", 1, "" },
      { "i", 1, "put", { key = "x", value = "a" } }, { "ok", 1 },
      { "i", 2, "append", { key = "x", value = "b" } }, { "i", 3, "append", { key = "y", value = "c" } },
      { "ok", 2 }, { "ok", 3 },
      { "i", 1, "get", { key = "x" } }, { "ok", 1, "ab" }, { "i", 3, "get", { key = "y" } },
      { "ok", 3, { key = "y", value = "c" } } }, "kv")
    assert.is_true(r.valid)
    assert.equal(2, r.keys)
    -- a nil result reads as "" (Porcupine's convention)
    assert.is_true(check({ { "i", 1, "put", { key = "z", value = "q" } }, { "ok", 1 },
      { "i", 1, "get", { key = "y" } }, { "ok", 1, nil } }, "kv").valid)
    assert.is_false(check({ { "i", 1, "put", { key = "y", value = "q" } }, { "ok", 1 },
      { "i", 1, "get", { key = "y" } }, { "ok", 1, nil } }, "kv").valid)
    r = check({ { "i", 1, "append", { key = "x", value = "a" } }, { "ok", 1 },
      { "i", 1, "append", { key = "x", value = "b" } }, { "ok", 1 },
      { "i", 1, "get", { key = "x" } }, { "ok", 1, "ba" } }, "kv")
    assert.is_false(r.valid)
    assert.equal("x", r.counterexample.key)
  end)

  it("bad operations and models are usage errors", function()
    local ok, e = pcall(check, { { "i", 1, "frob", { key = "x" } }, { "ok", 1 } }, "kv")
    assert.matches("not 'frob'", e.message, 1, true)
    ok, e = pcall(check, {}, "nonsense")
    assert.equal("usage", kind(e))
    ok, e = pcall(check, { { "i", 1, "write", 1 } }, "register", { timeout = "x" })
    assert.is_false(ok)
  end)
end)

-- A FIFO queue: enqueue(v), dequeue -> the head, or nil when empty.
local queue = {
  init = function() return {} end,
  step = function(q, op)
    if op.f == "enqueue" then
      local n = { table.unpack(q) }
      n[#n + 1] = op.value
      return true, n
    end
    if op.type == "info" then return true, { table.unpack(q, 2) } end
    if op.output == nil then return #q == 0, q end
    if q[1] ~= op.output then return false end
    return true, { table.unpack(q, 2) }
  end,
}

describe("a custom Lua model (FIFO queue)", function()
  local function q(steps) return check(steps, queue).valid end
  it("agrees with hand-checked histories", function()
    assert.is_true(q { { "i", 1, "enqueue", 1 }, { "ok", 1 }, { "i", 1, "enqueue", 2 }, { "ok", 1 },
      { "i", 2, "dequeue" }, { "ok", 2, 1 }, { "i", 2, "dequeue" }, { "ok", 2, 2 } })
    assert.is_false(q { { "i", 1, "enqueue", 1 }, { "ok", 1 }, { "i", 1, "enqueue", 2 }, { "ok", 1 },
      { "i", 2, "dequeue" }, { "ok", 2, 2 } })
    -- concurrent enqueues: either order
    assert.is_true(q { { "i", 1, "enqueue", 1 }, { "i", 3, "enqueue", 2 }, { "ok", 1 }, { "ok", 3 },
      { "i", 2, "dequeue" }, { "ok", 2, 2 }, { "i", 2, "dequeue" }, { "ok", 2, 1 } })
    assert.is_true(q { { "i", 2, "dequeue" }, { "ok", 2, nil } })
    assert.is_false(q { { "i", 1, "enqueue", 1 }, { "ok", 1 }, { "i", 2, "dequeue" }, { "ok", 2, nil } })
    assert.is_false(q { { "i", 2, "dequeue" }, { "ok", 2, 1 } })
    -- an info enqueue may or may not have happened
    assert.is_true(q { { "i", 1, "enqueue", 1 }, { "info", 1 }, { "i", 2, "dequeue" }, { "ok", 2, 1 } })
    assert.is_true(q { { "i", 1, "enqueue", 1 }, { "info", 1 }, { "i", 2, "dequeue" }, { "ok", 2, nil } })
    -- a dequeue concurrent with an enqueue may see it
    assert.is_true(q { { "i", 1, "enqueue", 7 }, { "i", 2, "dequeue" }, { "ok", 2, 7 }, { "ok", 1 } })
  end)

  it("a check past its timeout is unknown; cancelling the caller stops it", function()
    local slow = { step = function(s, op)
      local x = 0
      for i = 1, 2e5 do x = x + i end -- a costly step
      return true, op.value
    end }
    local steps = {}
    for i = 1, 400 do
      steps[#steps + 1] = { "i", 1, "write", i }
      steps[#steps + 1] = { "ok", 1 }
    end
    local r = check(steps, slow, { timeout = 0.05 })
    assert.equal("unknown", r.valid)
    assert.matches("^unknown", tostring(r))
    run(function()
      local h = hist(steps)
      local t = atom.go(function() return h:check { model = slow } end)
      atom.sleep(0.05)
      t:cancel()
      local ok, e = pcall(t.join, t)
      assert.is_false(ok)
      assert.equal("cancelled", kind(e))
      atom.wait_until(function() return require("_atom").work_jobs() == 0 end, 5)
    end)
  end)

  it("splits by the model's key; upvalues and errors are reported", function()
    local keyed = { init = queue.init, step = queue.step, key = function(op) return op.value and op.value % 2 end }
    local r = run(function()
      return hist { { "i", 1, "enqueue", 1 }, { "ok", 1 }, { "i", 1, "enqueue", 2 }, { "ok", 1 } }
        :check { model = keyed }
    end)
    assert.is_true(r.valid)
    assert.equal(2, r.keys)
    local limit = 3
    local ok, e = pcall(check, {}, { step = function(s) return s < limit end })
    assert.equal("usage", kind(e))
    assert.matches("upvalue 'limit'", e.message, 1, true)
    ok, e = pcall(check, { { "i", 1, "x" }, { "ok", 1 } }, { step = function() error("model bug") end })
    assert.is_false(ok)
    assert.equal("work", kind(e))
    assert.matches("model bug", e.message, 1, true)
  end)
end)

describe("a recorded etcd history", function()
  local path = "spec/fixtures/history/etcd-6s.jsonl"
  it("is linearizable; with one read altered it is not, and the counterexample names that read", function()
    run(function()
      local h = atom.history.load(path)
      local res = h:check { model = "cas-register", independent = true }
      assert.is_true(res.valid, tostring(res))
      assert.is_true(res.ops > 1000)
      assert.equal(3, res.keys)
      -- alter a read in the middle that saw a value: to one never written
      local events = h:ops()
      local altered
      for i = #events // 2, #events do
        local ev = events[i]
        if ev.type == "ok" and ev.f == "read" and ev.value[2] ~= nil then altered = ev; break end
      end
      altered.value = { altered.value[1], altered.value[2] + 1000 }
      res = h:check { model = "cas-register", independent = true }
      assert.is_false(res.valid)
      local ce = res.counterexample
      assert.equal(altered.value[1], ce.key)
      assert.equal(altered.index, ce.op.completion)
      assert.are.same(altered.value, ce.op.output)
      assert.is_true(#ce.prefix > 0)
      assert.matches("cannot follow", tostring(res), 1, true)
    end)
  end)
end)

-- {==== differential testing against a brute-force search ====

-- Every order of the operations that respects real time is tried; info ops
-- may be placed anywhere after their invocation or left out; failed ops are
-- left out, except a cas whose compare failed (a read of another value).
local function brute(ops, stepf, init)
  local n = #ops
  local used = {}
  local function go(state, left)
    if left == 0 then return true end
    -- the earliest completion among required ops still to place
    local horizon = math.huge
    for i = 1, n do
      if not used[i] and ops[i].required and ops[i].ret < horizon then horizon = ops[i].ret end
    end
    for i = 1, n do
      local o = ops[i]
      if not used[i] and o.call < horizon then
        local ok, ns = stepf(state, o)
        if ok then
          used[i] = true
          local r = go(ns, left - (o.required and 1 or 0))
          used[i] = false
          if r then return true end
        end
      end
    end
    return false
  end
  local req = 0
  for _, o in ipairs(ops) do if o.required then req = req + 1 end end
  return go(init, req)
end

local function reg_step(s, o)
  if o.f == "read" then return o.type ~= "ok" or s == o.output, s end
  if o.f == "write" then return true, o.value end
  local from, to = o.value[1], o.value[2]
  if o.type == "ok" then return s == from, to end
  if o.type == "fail" then return s ~= from, s end
  return true, s == from and to or s
end

local function kv_step(s, o)
  if o.f == "get" then return o.type ~= "ok" or s == o.output, s end
  if o.f == "put" then return true, o.value end
  return true, s .. o.value
end

-- Operations per key from a list of events.
local function operations(events, keyof, part)
  local open, byk = {}, {}
  local function add(inv, c, pos)
    local ty = c and c.type or "info"
    if ty == "fail" and inv.f ~= "cas" then return end
    local k = keyof(inv.value)
    local o = { call = inv.pos, ret = (ty == "info") and math.huge or pos, f = inv.f, type = ty,
      value = part(inv.value), output = c and ty == "ok" and part(c.value) or nil,
      required = ty == "ok" or ty == "fail" }
    byk[k] = byk[k] or {}
    table.insert(byk[k], o)
  end
  for pos, ev in ipairs(events) do
    if ev.type == "invoke" then
      open[ev.process] = { pos = pos, f = ev.f, value = ev.value }
    else
      add(open[ev.process], ev, pos)
      open[ev.process] = nil
    end
  end
  for _, inv in pairs(open) do add(inv, nil, nil) end
  return byk
end

-- A random small history: processes apply operations to a real register (or
-- kv map) at random moments while open, complete them as ok, fail (not
-- applied) or info, and some reads are corrupted.
local function random_history(rnd, kindof)
  local h = atom.history()
  local nproc, nops = rnd(2, 4), rnd(1, 8)
  local pid, openop, applied, result = {}, {}, {}, {}
  for p = 1, nproc do pid[p] = p end
  local nextpid = nproc + 1
  local state = {}
  local keys = kindof == "single" and { 1 } or { "a", "b" }
  local values = { 1, 2, 3 }
  local started = 0
  local function rk() return keys[rnd(1, #keys)] end
  for _ = 1, 60 do
    local p = rnd(1, nproc)
    local o = openop[p]
    if not o then
      if started < nops then
        started = started + 1
        local k = rk()
        if kindof == "kv" then
          local f = ({ "get", "put", "append" })[rnd(1, 3)]
          local s = ({ "x", "y", "xy" })[rnd(1, 3)]
          openop[p] = h:invoke(pid[p], f, f == "get" and { key = k } or { key = k, value = s })
        else
          local f = ({ "read", "write", "cas" })[rnd(1, 3)]
          local v = f == "write" and values[rnd(1, 3)] or f == "cas" and { values[rnd(1, 3)], values[rnd(1, 3)] }
            or nil
          if kindof == "single" then openop[p] = h:invoke(pid[p], f, v)
          else openop[p] = h:invoke(pid[p], f, { k, v }) end
        end
        applied[p], result[p] = false, nil
      end
    elseif not applied[p] and rnd(1, 3) > 1 then
      applied[p] = true
      local f, v = o.f, o.value
      if kindof == "kv" then
        local k, cur = v.key, state[v.key] or ""
        if f == "get" then result[p] = cur
        elseif f == "put" then state[k] = v.value
        else state[k] = cur .. v.value end
      else
        local k, x = 1, v
        if kindof ~= "single" then k, x = v[1], v[2] end
        if f == "read" then result[p] = state[k]
        elseif f == "write" then state[k] = x
        else
          if state[k] == x[1] then state[k] = x[2]; result[p] = true else result[p] = false end
        end
      end
    else
      local r = rnd(1, 10)
      if applied[p] then
        if r == 1 then
          o:info()
          pid[p] = nextpid
          nextpid = nextpid + 1
        elseif o.f == "cas" and result[p] == false then
          o:fail()
        elseif o.f == "read" or o.f == "get" then
          local v = result[p]
          if rnd(1, kindof == "kv" and 3 or 6) == 1 then v = kindof == "kv" and ({ "", "x", "y" })[rnd(1, 3)] or values[rnd(1, 3)] end
          if kindof == "kv" then o:ok(v)
          elseif kindof == "single" then o:ok(v)
          else o:ok({ o.value[1], v }) end
        else
          o:ok()
        end
      else
        if r <= 2 then
          o:info()
          pid[p] = nextpid
          nextpid = nextpid + 1
        elseif r <= 4 and o.f ~= "read" and o.f ~= "get" then
          o:fail()
        else
          goto continue -- wait until applied
        end
      end
      openop[p] = nil
    end
    ::continue::
  end
  return h
end

describe("differential: the C checker agrees with a brute-force search", function()
  local configs = {
    { name = "register", kindof = "single", model = "cas-register" },
    { name = "independent cas-register", kindof = "pairs", model = "cas-register", independent = true },
    { name = "kv", kindof = "kv", model = "kv" },
    { name = "Lua model", kindof = "single", lua = true },
  }
  -- the Lua model is the register with cas, written as a user would
  local lua_model = {
    step = function(s, op)
      if op.f == "read" then return op.type ~= "ok" or s == op.output, s end
      if op.f == "write" then return true, op.value end
      if op.type == "ok" then return s == op.value[1], op.value[2] end
      return true, s == op.value[1] and op.value[2] or s
    end,
  }
  for _, cfg in ipairs(configs) do
    it(cfg.name .. ": identical verdicts on 3000 random histories", function()
      math.randomseed(12345)
      local rnd = math.random
      local counts = { [true] = 0, [false] = 0 }
      run(function()
        for i = 1, 3000 do
          local h = random_history(rnd, cfg.kindof)
          local ev = h:ops()
          local keyof, part = function() return 1 end, function(v) return v end
          if cfg.kindof == "pairs" then
            keyof = function(v) return v[1] end
            part = function(v) if type(v) == "table" then return v[2] end return v end
          elseif cfg.kindof == "kv" then
            keyof = function(v) return v.key end
            part = function(v) if type(v) == "table" then return v.value or "" end return v or "" end
          end
          local want = true
          for _, ops in pairs(operations(ev, keyof, part)) do
            if cfg.lua then
              -- failed cas ops are left out of a custom model's history
              local kept = {}
              for _, o in ipairs(ops) do if not (o.type == "fail") then kept[#kept + 1] = o end end
              ops = kept
            end
            if not brute(ops, cfg.kindof == "kv" and kv_step or reg_step, cfg.kindof == "kv" and "" or nil) then
              want = false
            end
          end
          local res = h:check { model = cfg.lua and lua_model or cfg.model, independent = cfg.independent }
          if res.valid ~= want then
            local path = tmpname()
            h:save(path)
            error(("history %d: checker says %s, brute force %s (saved in %s)"):format(i, tostring(res.valid),
              tostring(want), path))
          end
          counts[want] = counts[want] + 1
          if res.valid == false then
            -- the counterexample's op belongs to the history and is not in its own prefix
            local ce = res.counterexample
            assert.is_table(ce.op)
            for _, p in ipairs(ce.prefix) do assert.are_not.equal(ce.op.index, p.index) end
          end
        end
      end)
      -- both verdicts are well represented
      assert.is_true(counts[true] > 300 and counts[false] > 300,
        ("valid %d, invalid %d"):format(counts[true], counts[false]))
    end)
  end
end)

-- }====
