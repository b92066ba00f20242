-- atom.rpc and atom.rpc_batch (SPEC §5 "JSON-RPC") against
-- spec/fixtures/server.py (which answers batches in reverse order) and nginx
-- (a fixed reply, as in benchmark W5), both started here.
package.cpath = (os.getenv("ATOMLUA_CPATH") or "./build/?.so") .. ";" .. package.cpath
local atom = require "atom"
local netfix = require "fixtures.netfix"

local py, ngx, RPC

-- Local on purpose: errors name the script frame that called atom, and
-- these specs check that it is the spec file's own line.
local function err_of(f, ...)
  local ok, err = pcall(f, ...)
  assert(not ok, "expected an error")
  return err
end

local run = atom.run

setup(function()
  py = netfix.python()
  RPC = py.url .. "/rpc"
  local port = run(function() return atom.free_port() end)
  ngx = netfix.nginx(port)
  run(function() atom.wait_port("127.0.0.1", port, 5) end)
end)

teardown(function()
  if py then py.stop() end
  if ngx then ngx.stop() end
end)

describe("atom.rpc", function()
  it("returns the result", function()
    run(function()
      assert.equal(5, atom.rpc(RPC, "add", { 2, 3 }))
      assert.same({ a = { 1, 2 }, s = "x" }, atom.rpc(RPC, "echo", { a = { 1, 2 }, s = "x" }))
      assert.equal("ok", atom.rpc(ngx.url .. "/rpc", "status"))
    end)
  end)

  it("returns atom.json.null for a null result", function()
    run(function()
      assert.equal(atom.json.null, atom.rpc(RPC, "null"))
    end)
  end)

  it("leaves nil and empty params out, and sends atom.json.array({})", function()
    run(function()
      local r = atom.rpc(RPC, "params")
      assert.is_false(r.present)
      r = atom.rpc(RPC, "params", {})
      assert.is_false(r.present)
      r = atom.rpc(RPC, "params", atom.json.array({}))
      assert.is_true(r.present)
      assert.equal("[]", r.json)
      r = atom.rpc(RPC, "params", { height = 5 })
      assert.equal('{"height":5}', r.json)
    end)
  end)

  it("accepts a reply whose id is not ours (the HTTP exchange pairs them)", function()
    run(function()
      assert.equal("ok", atom.rpc(py.url .. "/rpc_fixed_id", "anything"))
    end)
  end)

  it("raises rpc with the server's code, message and data", function()
    run(function()
      local err = err_of(atom.rpc, RPC, "fail")
      assert.equal("rpc", err.kind)
      assert.equal(-32000, err.code)
      assert.equal("boom", err.message)
      assert.same({ x = 1 }, err.data)
      assert.equal(RPC, err.url)
      assert.equal("fail", err.method)
      local s = tostring(err)
      assert.matches("rpc_spec.lua:%d+: ", s)
      for _, part in ipairs{ RPC, "fail", "-32000", "boom" } do
        assert.matches(part, s, 1, true)
      end
      err = err_of(atom.rpc, RPC, "no_such_method")
      assert.equal(-32601, err.code)
      assert.equal("Method not found", err.message)
    end)
  end)

  it("raises rpc quoting a reply that is not JSON or not JSON-RPC", function()
    run(function()
      local err = err_of(atom.rpc, py.url .. "/rpc_text", "x")
      assert.equal("rpc", err.kind)
      assert.matches("not JSON", err.message, 1, true)
      assert.matches("<html>oops</html>", err.message, 1, true)
      -- The decoder's reason is given.
      assert.matches("reply is not JSON (decode: expected a value at position 1, got '<')", err.message, 1, true)
      err = err_of(atom.rpc, py.url .. "/rpc_deep", "x")
      assert.matches("reply is not JSON (decode: nesting deeper than 1000 at position 1001)", err.message, 1, true)
      err = err_of(atom.rpc_batch, py.url .. "/rpc_deep", { { "x" } })
      assert.matches("reply is not JSON (decode: nesting deeper than 1000 at position 1001)", err.message, 1, true)
      err = err_of(atom.rpc, py.url .. "/rpc_plain", "x")
      assert.equal("rpc", err.kind)
      assert.matches("not JSON-RPC", err.message, 1, true)
      assert.matches('{\\"foo\\": 1}', err.message, 1, true)
      -- An HTTP error page is not JSON-RPC either.
      err = err_of(atom.rpc, py.url .. "/nowhere", "x")
      assert.equal("rpc", err.kind)
      assert.matches("HTTP 404", err.message, 1, true)
    end)
  end)

  it("raises http on transport failures and timeout when slow", function()
    run(function()
      local url = "http://127.0.0.1:" .. atom.free_port() .. "/"
      local err = err_of(atom.rpc, url, "status")
      assert.equal("http", err.kind)
      assert.equal("refused", err.cause)
      err = err_of(atom.rpc, RPC, "sleep", { 2 }, 0.2)
      assert.equal("timeout", err.kind)
      assert.equal("rpc sleep at " .. RPC .. " timed out after 0.2s", err.message)
      err = err_of(atom.rpc, RPC, "sleep", { 2 }, { timeout = 0.1 })
      assert.equal("timeout", err.kind)
    end)
  end)

  it("raises usage for bad arguments", function()
    run(function()
      assert.matches("bad argument #1 to 'rpc'", err_of(atom.rpc, nil, "x").message, 1, true)
      assert.matches("bad argument #2 to 'rpc'", err_of(atom.rpc, RPC, 5).message, 1, true)
      assert.matches("bad argument #3 to 'rpc'", err_of(atom.rpc, RPC, "x", 5).message, 1, true)
      assert.matches("bad argument #4 to 'rpc'", err_of(atom.rpc, RPC, "x", nil, "y").message, 1, true)
      assert.matches("unknown field", err_of(atom.rpc, RPC, "x", nil, { tmeout = 1 }).message, 1, true)
    end)
  end)

  it("keeps 64 concurrent calls apart", function()
    run(function()
      local items = {}
      for i = 1, 640 do items[i] = i end
      local r = atom.map(items, function(i) return atom.rpc(RPC, "add", { i, 1000 }) end, { concurrency = 64 })
      for i = 1, 640 do assert.equal(i + 1000, r[i]) end
    end)
  end)
end)

describe("atom.rpc_batch", function()
  it("returns answers in request order whatever the server's order", function()
    run(function()
      local r = atom.rpc_batch(RPC, {
        { "add", { 1, 2 } }, { "fail" }, { "echo", { "e" } }, { "null" }, { method = "add", params = { 5, 5 } },
      })
      assert.equal(5, #r)
      assert.same({ result = 3 }, r[1])
      assert.same({ error = { code = -32000, message = "boom", data = { x = 1 } } }, r[2])
      assert.same({ result = { "e" } }, r[3])
      assert.equal(atom.json.null, r[4].result)
      assert.same({ result = 10 }, r[5])
    end)
  end)

  it("raises rpc when an answer is missing or the reply is not a batch", function()
    run(function()
      local err = err_of(atom.rpc_batch, py.url .. "/rpc_drop", { { "add", { 1, 1 } }, { "null" } })
      assert.equal("rpc", err.kind)
      assert.matches("lacks the answer to call 2 (null)", err.message, 1, true)
      err = err_of(atom.rpc_batch, py.url .. "/rpc_text", { { "x" } })
      assert.equal("rpc", err.kind)
      err = err_of(atom.rpc_batch, py.url .. "/rpc_plain", { { "x" } })
      assert.matches("not a JSON-RPC batch", err.message, 1, true)
    end)
  end)

  it("raises usage for an empty or malformed batch", function()
    run(function()
      assert.matches("the batch is empty", err_of(atom.rpc_batch, RPC, {}).message, 1, true)
      assert.matches("call 2 has no method", err_of(atom.rpc_batch, RPC, { { "a" }, { 5 } }).message, 1, true)
      assert.matches("bad argument #2 to 'rpc_batch'", err_of(atom.rpc_batch, RPC, "x").message, 1, true)
    end)
  end)
end)

describe("rpc events", function()
  it("reports url, method, duration and error", function()
    local events = require "atom.events"
    local seen = {}
    events.subscribe(function(ev) seen[#seen + 1] = ev end)
    local ok, err = pcall(run, function()
      atom.rpc(RPC, "add", { 1, 1 })
      pcall(atom.rpc, RPC, "fail")
      atom.rpc_batch(RPC, { { "null" } })
    end)
    events.unsubscribe_all()
    assert(ok, tostring(err))
    local rpcs = {}
    for _, ev in ipairs(seen) do
      assert.is_not.equal("http", ev.type) -- rpc calls report only as rpc
      if ev.type == "rpc" then rpcs[#rpcs + 1] = ev end
    end
    assert.equal(3, #rpcs)
    assert.equal("add", rpcs[1].method)
    assert.equal(RPC, rpcs[1].url)
    assert.is_true(rpcs[1].duration > 0)
    assert.is_nil(rpcs[1].error)
    assert.equal("fail", rpcs[2].method)
    assert.equal("rpc", rpcs[2].error.kind)
    assert.equal("batch", rpcs[3].method)
  end)
end)
