-- atom.rpc.connect (SPEC §10 "JSON-RPC over a WebSocket") against the
-- CometBFT-shaped /websocket endpoint of spec/fixtures/ws_server.py.
package.cpath = (os.getenv("ATOMLUA_CPATH") or "./build/?.so") .. ";" .. package.cpath
local atom = require "atom"
local netfix = require "fixtures.netfix"

local srv, url
local run = atom.run

local function err_of(f, ...)
  local ok, err = pcall(f, ...)
  assert(not ok, "expected an error")
  return err
end

local function stats()
  return atom.json.decode(atom.http.get((srv.url .. "/stats"):gsub("^ws", "http")).body)
end

setup(function()
  srv = netfix.ws()
  url = srv.url .. "/websocket"
end)
teardown(function() if srv then srv.stop() end end)

describe("atom.rpc.connect", function()
  it("matches concurrent calls by id, whatever order the replies come in", function()
    run(function()
      local c <close> = atom.rpc.connect(url)
      local r = atom.gather{
        function() return c:call("sleep", { secs = 0.3 }) end,
        function() return c:call("sleep", { secs = 0.1 }) end,
        function() return c:call("echo", { n = 3 }).n end,
      }
      assert.same({ "slept", "slept", 3, n = 3 }, r)
      local err = err_of(c.call, c, "nope")
      assert.equal("rpc", err.kind)
      assert.equal(-32601, err.code)
      assert.matches("rpc_ws_spec.lua:%d+: ", tostring(err))
      assert.equal("timeout", err_of(c.call, c, "sleep", { secs = 1 }, 0.05).kind)
      assert.equal("slept", c:call("sleep", { secs = 0.01 })) -- the late reply was dropped
    end)
  end)

  it("routes the events of two subscriptions to each", function()
    run(function()
      local c <close> = atom.rpc.connect(url)
      local blocks = c:subscribe("tm.event='NewBlock'")
      local txs = c:subscribe("tm.event='Tx'")
      atom.gather(
        function() c:call("publish", { query = "tm.event='Tx'", n = 3 }) end,
        function() c:call("publish", { query = "tm.event='NewBlock'", n = 2 }) end)
      local got = {}
      for i = 1, 3 do
        local ev = txs:next(5)
        assert.equal("tm.event='Tx'", ev.query)
        assert.same({ "tm.event='Tx'" }, ev.events["tm.event"])
        got[#got + 1] = ev.data.value.i
      end
      for ev in blocks:events(5) do
        got[#got + 1] = ev.data.value.i
        if #got == 5 then break end
      end
      assert.same({ 1, 2, 3, 1, 2 }, got)
      assert.equal("timeout", err_of(txs.next, txs, 0.05).kind)
      local err = err_of(c.subscribe, c, "bad")
      assert.equal("rpc", err.kind)
      assert.equal(-32603, err.code)
      blocks:close()
      assert.is_nil(blocks:next())
      assert.equal(1, stats().unsubscribed)
    end)
  end)

  it("raises the server's lagging error (-32000) from sub:next", function()
    run(function()
      local c <close> = atom.rpc.connect(url)
      local sub = c:subscribe("lag")
      c:call("publish", { query = "lag", n = 3000, size = 20000 })
      atom.sleep(1) -- not pulling: the server's buffer for us fills
      local n = 0
      local err
      while true do
        local ok, ev = pcall(sub.next, sub, 10)
        if not ok then err = ev break end
        n = n + 1
        assert.equal(n, ev.data.value.i)
      end
      assert.equal("rpc", err.kind)
      assert.equal(-32000, err.code)
      assert.matches("not pulling messages fast enough", err.data)
      assert.is_true(n > 0 and n < 3000)
      assert.equal("slept", c:call("sleep", { secs = 0 })) -- the connection lives on
    end)
  end)

  it("cancelling a task blocked in sub:next removes its subscription", function()
    run(function()
      local c <close> = atom.rpc.connect(url)
      local before = stats().unsubscribed
      local t = atom.go(function()
        local sub = c:subscribe("tm.event='Cancel'")
        sub:next()
      end)
      atom.wait_until(function() return stats().subs >= 1 end, 5)
      t:cancel()
      assert.equal("cancelled", err_of(t.join, t).kind)
      assert.equal(before + 1, stats().unsubscribed)
      assert.equal("slept", c:call("sleep", { secs = 0 }))
    end)
  end)

  it("a dropped connection fails pending calls and subscriptions with io", function()
    run(function()
      local c = atom.rpc.connect(url)
      local sub = c:subscribe("tm.event='Drop'")
      local r = atom.gather{
        function() return err_of(c.call, c, "sleep", { secs = 30 }) end,
        function() return err_of(sub.next, sub) end,
        function() atom.sleep(0.2); c.ws._c:abort() end,
      }
      assert.equal("io", r[1].kind)
      assert.equal("io", r[2].kind)
      assert.equal("io", err_of(c.call, c, "echo").kind)
      c:close()
    end)
  end)
end)
